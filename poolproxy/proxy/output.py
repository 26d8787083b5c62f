"""
Bounds on the replies the proxy holds for clients that do not read them.

A shared backend connection is never paused for one client: its replies
are read as they come, and those of a client that does not read pile up in
that client's socket buffer.  The frontend stops reading a client's
requests as soon as its socket holds more than Twisted's buffer size
(64 KiB), so no new work is taken on; what was already asked still comes.
L{OutputBudget} bounds that:

  - per client, C{client_limit} (C{client_output_limit}): a client holding
    more is closed (aborted: it is not reading), counted and summarised in
    the log.  One reply is never refused for its own size: a client whose
    backlog was under the soft mark (a quarter of the limit) before a reply
    came keeps it, however large (C{max_reply_size} bounds a reply);
  - per process, C{cap} (C{proxy_output_limit}): when the clients that are
    not reading hold more than that together, any of them past the soft
    mark is closed, so that many slow clients at once cannot exhaust memory.

Redis's C{client-output-buffer-limit} is the model; its pub/sub class
(32 MiB hard, 8 MiB soft) gives the defaults.  The accounting runs only
while a client is not reading (Twisted has paused the frontend as a
producer): the hot path, a client that reads, pays nothing.

http mode holds bytes for slow clients too, each bounded by its own
buffer size: responses for a client that is not reading (counted in
C{held} with the rest: an http client past its own C{response_buffer_size}
pauses its backend rather than being closed), and request bodies read
before a backend connection is leased (C{bodies}).  Past C{cap}, all of
them together, http stops buffering more: request bodies go to a backend
connection as they come, responses pause their backend.
"""

from __future__ import annotations

from typing import Any, Optional

#: Twisted's FileDescriptor.bufferSize: past it a transport pauses its producer.
TRANSPORT_BUFFER = 65536


class OutputBudget:
    """
    The output limits, and the bytes held now for clients that are not
    reading, all listeners of the process together.

    @ivar held: bytes held now (an upper bound: each client's share is
        refreshed when a reply comes for it, and released when it reads
        its backlog or goes).
    @ivar peak: the largest C{held} seen.
    @ivar bodies: bytes of http request bodies held now before their
        backend connection is leased.
    """

    __slots__ = ("client_limit", "client_soft", "cap", "held", "peak", "bodies")

    def __init__(self, client_limit: int = 32 * 1024 * 1024,
                 cap: int = 512 * 1024 * 1024) -> None:
        self.client_limit = client_limit
        self.client_soft = client_limit // 4
        self.cap = cap
        self.held = 0
        self.peak = 0
        self.bodies = 0

    def verdict(self, held: int, before: int) -> Optional[str]:
        """
        Whether a client that holds C{held} bytes, C{before} of them before
        the latest reply, must be closed: L{None}, C{"client"} (over its own
        limit) or C{"proxy"} (over its share of the proxy-wide cap).
        """
        if before <= self.client_soft:
            return None  # one reply, however large, on a small backlog
        if held > self.client_limit:
            return "client"
        if self.held > self.cap:
            return "proxy"
        return None

    def full(self) -> bool:
        """Whether the proxy holds all it may for slow clients (http buffers no more)."""
        return self.held + self.bodies > self.cap

    def count(self, held: int, counted: int) -> int:
        """A client that counted C{counted} bytes now holds C{held}: returns C{held}."""
        self.held += held - counted
        if self.held > self.peak:
            self.peak = self.held
        return held


def unsent_bytes(transport: Any) -> Optional[int]:
    """
    The bytes C{transport} holds that the peer has not taken yet, read from
    Twisted's TCP and UNIX transports (under TLS, from the one beneath), or
    L{None} for a transport that does not say.
    """
    for candidate in (transport, getattr(transport, "transport", None)):
        try:
            return (len(candidate.dataBuffer) - candidate.offset  # type: ignore[union-attr]
                    + candidate._tempDataLen)  # type: ignore[union-attr]
        except AttributeError:
            continue
    return None
