"""
Client connection limits: per listener (its C{[[listener]]}
C{max_connections}), for the whole process (C{max_client_connections}) and
per source address (C{max_connections_per_source}).

A listener at its limit, or every listener when the process is at its own,
stops accepting: its L{AcceptGate} is held, so new clients wait in the
kernel's listen backlog, and it accepts again as clients leave (HAProxy's
C{maxconn}).  Nothing the proxy can wait out is refused.  A source address
over its own limit is refused at once (its connection closed before any
protocol is built, counted, summed in the log per interval): waiting would
hold everyone queued behind it.

Counting costs nothing per request: every mode's frontend adds itself to
its factory's C{clients} when it connects and discards itself when it goes
(L{poolproxy.proxy.modes.FrontendFactory}); L{ListenerClients} is that
collection, and counts as it goes.
"""

from __future__ import annotations

from typing import Any, Dict, Iterator, List, Optional, Set

from twisted.internet.protocol import Factory

from poolproxy.stats import ListenerStats
from poolproxy.util.accepting import AcceptGate

#: Why a gate is held: the listener's own limit, the process's.
LISTENER_LIMIT = "listener_limit"
PROXY_LIMIT = "proxy_limit"


def _source(address: Any) -> Optional[str]:
    """The host of an IPv4 or IPv6 peer address; None for others (UNIX sockets)."""
    host = getattr(address, "host", None)
    return host if isinstance(host, str) else None


class ConnectionLimits:
    """
    The process's client connections against C{cap}, and, if
    C{per_source}, against that many per source address.

    @ivar open: client connections open now, every listener together.
    @ivar listeners: every listener's L{ListenerClients}.
    """

    def __init__(self, cap: int, per_source: int = 0) -> None:
        self.cap = cap
        self.per_source = per_source
        self.open = 0
        self.listeners: List[ListenerClients] = []
        self._sources: Dict[str, int] = {}
        self._full = False

    def listener(self, stats: ListenerStats, gate: AcceptGate,
                 cap: Optional[int] = None) -> "ListenerClients":
        """The collection of one more listener's clients, with its own C{cap} if any."""
        clients = ListenerClients(self, stats, gate, cap if cap is not None else self.cap)
        self.listeners.append(clients)
        return clients

    def set_cap(self, cap: int) -> None:
        """
        A new cap for the process (a reload added backends, which need
        descriptors): listeners stop or start accepting at once by it.
        """
        self.cap = cap
        full = self.open >= cap
        if full and not self._full:
            self._full = True
            for each in self.listeners:
                if each.gate.hold(PROXY_LIMIT):
                    each.stats.limit_pauses += 1
        elif not full and self._full:
            self._full = False
            for each in self.listeners:
                each.gate.release(PROXY_LIMIT)

    def from_source(self, source: str) -> int:
        """Client connections open now from C{source}, if sources are counted."""
        return self._sources.get(source, 0)

    def _opened(self, clients: "ListenerClients", client: Any) -> None:
        self.open += 1
        if self.per_source:
            source = _source(client.transport.getPeer())
            if source is not None:
                clients.sources[client] = source
                self._sources[source] = self._sources.get(source, 0) + 1
        if len(clients) >= clients.cap and clients.gate.hold(LISTENER_LIMIT):
            clients.stats.limit_pauses += 1
        if self.open >= self.cap and not self._full:
            self._full = True
            for each in self.listeners:
                if each.gate.hold(PROXY_LIMIT):
                    each.stats.limit_pauses += 1

    def _closed(self, clients: "ListenerClients", client: Any) -> None:
        self.open -= 1
        source = clients.sources.pop(client, None)
        if source is not None:
            left = self._sources[source] - 1
            if left:
                self._sources[source] = left
            else:
                del self._sources[source]
        if len(clients) < clients.cap:
            clients.gate.release(LISTENER_LIMIT)
        if self._full and self.open < self.cap:
            self._full = False
            for each in self.listeners:
                each.gate.release(PROXY_LIMIT)


class ListenerClients:
    """
    One listener's open client connections (a mode's C{factory.clients}):
    frontends C{add} and C{discard} themselves; iterating and C{len} work
    as on a set.  Counted against the listener's C{cap} and the process's
    L{ConnectionLimits}.

    @ivar sources: client -> its source address, while sources are counted.
    """

    def __init__(self, limits: ConnectionLimits, stats: ListenerStats, gate: AcceptGate,
                 cap: int) -> None:
        self.limits = limits
        self.stats = stats
        self.gate = gate
        self.cap = cap
        self.sources: Dict[Any, str] = {}
        self._clients: Set[Any] = set()

    @property
    def limit(self) -> int:
        """The most client connections this listener may have: its cap or the process's."""
        return min(self.cap, self.limits.cap)

    def add(self, client: Any) -> None:
        if client not in self._clients:
            self._clients.add(client)
            self.limits._opened(self, client)

    def discard(self, client: Any) -> None:
        if client in self._clients:
            self._clients.remove(client)
            self.limits._closed(self, client)

    def __contains__(self, client: object) -> bool:
        return client in self._clients

    def __iter__(self) -> Iterator[Any]:
        return iter(self._clients)

    def __len__(self) -> int:
        return len(self._clients)

    def room(self) -> int:
        """How many more connections this listener may accept now."""
        limits = self.limits
        return min(self.cap - len(self._clients), limits.cap - limits.open)

    def refusal(self, address: Any) -> Optional[str]:
        """
        Why a connection from C{address} must be refused now
        (C{"per_source"}, or C{"limit"} for one a port accepted past the
        room), or L{None}.
        """
        if self.room() <= 0:
            return "limit"
        limits = self.limits
        if limits.per_source:
            source = _source(address)
            if source is not None and limits.from_source(source) >= limits.per_source:
                return "per_source"
        return None


class LimitedFactory(Factory):
    """
    What a listener's port builds protocols with: a connection that
    C{clients} refuses is closed before any protocol is built (counted in
    the listener's C{refused}); the others are C{wrapped}'s.
    """

    noisy = False

    def __init__(self, wrapped: Any, clients: ListenerClients) -> None:
        self.wrapped = wrapped
        self.clients = clients

    def buildProtocol(self, addr: Any) -> Any:
        reason = self.clients.refusal(addr)
        if reason is not None:
            self.clients.stats.refused.add(reason)
            return None  # the port closes the socket
        return self.wrapped.buildProtocol(addr)

    def startFactory(self) -> None:
        self.wrapped.doStart()

    def stopFactory(self) -> None:
        self.wrapped.doStop()

    def logPrefix(self) -> str:
        return self.wrapped.__class__.__name__


__all__ = ["ConnectionLimits", "LISTENER_LIMIT", "LimitedFactory", "ListenerClients",
           "PROXY_LIMIT"]
