# -*- test-case-name: tests.test_pinning -*-
"""
One multiplexed client's connection state: which connection its next frame
may go to, as one explicit state machine.

A client starts on the shared connections.  A frame flagged L{PIN}
(MULTI, WATCH, SELECT, a blocking command...) leases it a connection of its
own from its backend's pinned share; L{UNPIN} gives that connection back once
the frame is answered; L{PASSTHROUGH} (SUBSCRIBE, MONITOR...) makes it a raw
byte pipe until the session ends::

    state       input          next        what happens
    ---------   ------------   ---------   ---------------------------------
    shared      lease          leasing     a lease asked of the pinned share
    leasing     leased         pinned      the connection is the client's
    leasing     lease_failed   shared      none came (or it broke on setup)
    pinned      unpin          unpinning   an UNPIN frame was sent on it
    unpinning   release        shared      its reply came: connection back
                                           (released, or discarded if dirty)
    pinned      raw            raw         a PASSTHROUGH frame was sent on it
    pinned      lost           shared      the connection died (the session
    unpinning   lost           shared        breaks: its state died with it)
    raw         lost           shared
    any         end            ended       the client is gone
    ended       lease_failed   ended       a lease on its way when it went

Any other input is a bug in the caller and raises L{PinningError}: a frame
is never sent on a connection the machine does not say the client holds.

The data that goes with the states: C{conn}, the leased connection (pinned,
unpinning, raw); C{share}, the L{Multiplexer} whose pinned share the lease
counts in (leasing to the end of the lease); C{dirty}, set by
L{Pinning.mark_dirty} when a frame left the connection unlike the pool's
(a RESP3 switch, RESET), so that it is discarded rather than released; and
C{variant}, the protocol variant the client speaks (C{None}: the pool's),
which outlives any one lease and picks its shared connections too.

Not built with Automat as L{poolproxy.backends.breaker} is: the hot path
reads C{state} for every frame, which must stay one attribute load; inputs
come only when a client changes connection, and check the table.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, Optional, Tuple

if TYPE_CHECKING:
    from poolproxy.backends.pool import PooledConnection
    from poolproxy.proxy.multiplexed.server import Multiplexer

__all__ = ["SHARED", "LEASING", "PINNED", "UNPINNING", "RAW", "ENDED", "Pinning",
           "PinningError", "TRANSITIONS"]

SHARED = "shared"
LEASING = "leasing"
PINNED = "pinned"
UNPINNING = "unpinning"
RAW = "raw"
ENDED = "ended"

#: (state, input) -> next state; "end" is accepted in every state.
TRANSITIONS: Dict[Tuple[str, str], str] = {
    (SHARED, "lease"): LEASING,
    (LEASING, "leased"): PINNED,
    (LEASING, "lease_failed"): SHARED,
    (ENDED, "lease_failed"): ENDED,
    (PINNED, "unpin"): UNPINNING,
    (UNPINNING, "release"): SHARED,
    (PINNED, "raw"): RAW,
    (PINNED, "lost"): SHARED,
    (UNPINNING, "lost"): SHARED,
    (RAW, "lost"): SHARED,
}

#: What a connection handed back comes with: the connection (or None), the
#: share its lease counted in (or None), and whether it is dirty.
GivenBack = Tuple[Optional["PooledConnection[Any]"], Optional["Multiplexer"], bool]


class PinningError(Exception):
    """An input the state machine does not accept in its current state."""


class Pinning:
    """
    The connection state of one client (see the module's table).

    @ivar state: one of L{SHARED}, L{LEASING}, L{PINNED}, L{UNPINNING},
        L{RAW}, L{ENDED}.
    """

    __slots__ = ("state", "conn", "share", "dirty", "variant")

    def __init__(self) -> None:
        self.state = SHARED
        self.conn: "Optional[PooledConnection[Any]]" = None
        self.share: "Optional[Multiplexer]" = None
        self.dirty = False
        self.variant: Any = None

    def __repr__(self) -> str:
        return f"<Pinning {self.state}{' dirty' if self.dirty else ''}>"

    def _move(self, event: str) -> None:
        following = TRANSITIONS.get((self.state, event))
        if following is None:
            raise PinningError(f"{event!r} in state {self.state!r}")
        self.state = following

    def _give_back(self) -> GivenBack:
        given = (self.conn, self.share, self.dirty)
        self.conn = self.share = None
        self.dirty = False
        return given

    # -- inputs ------------------------------------------------------------------

    def lease(self, share: "Multiplexer") -> None:
        """A lease was asked of C{share}'s pinned share."""
        self._move("lease")
        self.share = share

    def leased(self, conn: "PooledConnection[Any]") -> None:
        """The lease came (set up for the client's variant): frames go to C{conn}."""
        self._move("leased")
        self.conn = conn

    def lease_failed(self) -> Optional["Multiplexer"]:
        """
        No connection came, or the one that came failed its setup: the share
        is returned for the caller to hand its place back if the lease had
        taken one (L{None} if it is already back).
        """
        self._move("lease_failed")
        share, self.share = self.share, None
        if self.state is SHARED:
            self.dirty = False
        return share

    def unpin(self) -> None:
        """An UNPIN frame was sent on the pinned connection."""
        self._move("unpin")

    def release(self) -> GivenBack:
        """The UNPIN frame's reply came: the connection goes back."""
        self._move("release")
        return self._give_back()

    def raw(self) -> None:
        """A PASSTHROUGH frame was sent: the connection is a raw pipe from now on."""
        self._move("raw")

    def lost(self) -> GivenBack:
        """The pinned connection died."""
        self._move("lost")
        return self._give_back()

    def end(self) -> GivenBack:
        """
        The client is gone.  A lease still on its way keeps its share, for
        the lease to hand back when it ends (L{lease_failed}).
        """
        leasing = self.state is LEASING
        self.state = ENDED
        if leasing:
            return (None, None, False)
        return self._give_back()

    def mark_dirty(self) -> None:
        """A frame sent (or about to be) leaves the connection unlike the pool's."""
        self.dirty = True
