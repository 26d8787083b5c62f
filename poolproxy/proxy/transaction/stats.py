"""
What transaction pooling counts: plain attributes, as L{poolproxy.stats}
keeps them, read by L{poolproxy.ops.metrics} when /metrics is scraped.

A listener's L{TransactionStats} is its L{ListenerStats} plus, per
(database, user) that has logged in through it, a L{KeyCounts}: a client
finds its own once, at its first lease, and from then on counts with
attribute increments and one clock read at each end of a lease.  Keys
come only from server logins that worked (a client is leased a connection
only once its (database, user) has logged in), so names that clients make
up never become series.
"""

from __future__ import annotations

from typing import Dict, Tuple

from poolproxy.codecs.postgres_sql import LABELS
from poolproxy.stats import Histogram, ListenerStats, Tally

#: Why a client keeps its server connection until it leaves: a statement
#: whose effect outlives its transaction (L{session_effect}'s labels), or
#: C{session}: C{pool_mode = session}.
PIN_REASONS: Tuple[str, ...] = LABELS + ("session",)

#: What became of a CancelRequest: sent on to the server running the
#: client's query (C{forwarded}); the client was waiting for a server
#: connection and waits no more (C{dequeued}); the client had nothing
#: running (C{nothing_running}); no client has that key (C{unknown_key}:
#: a stale or forged key, or one of another worker's clients).
CANCEL_OUTCOMES = ("forwarded", "dequeued", "nothing_running", "unknown_key")

#: How server connections were reset before another client got them:
#: C{rollback} (a client left mid-transaction), C{discard} (DISCARD ALL
#: after a client changed its session), C{failed} (the reset did not
#: finish: closed).  A reset may be both a rollback and a discard.
RESET_KINDS = ("rollback", "discard", "failed")


class KeyCounts:
    """
    What one listener's clients of one (database, user) did.

    @ivar transactions: transactions completed: the client's work that
        ended with its server connection idle (ReadyForQuery C{I}, nothing
        owed), having run at least one Query or Execute.
    @ivar queries: Query and Execute messages sent to servers.
    @ivar wait: seconds from a client needing a server connection (its
        transaction's first message) to getting one, admission included.
    @ivar held: seconds each lease of a server connection lasted (a pinned
        client's is its whole session).
    """

    __slots__ = ("transactions", "queries", "wait", "held")

    def __init__(self) -> None:
        self.transactions = 0
        self.queries = 0
        self.wait = Histogram()
        self.held = Histogram()


class TransactionStats(ListenerStats):
    """
    A transaction-mode listener's counters.

    @ivar keys: a L{KeyCounts} per (database, user), as bytes from the
        clients' start-up packets.
    @ivar pinned: clients pinned to their server connection, by reason
        (L{PIN_REASONS}).
    @ivar cancels: CancelRequests received, by outcome (L{CANCEL_OUTCOMES}).
    """

    __slots__ = ("keys", "pinned", "cancels")

    def __init__(self) -> None:
        super().__init__()
        self.keys: Dict[Tuple[bytes, bytes], KeyCounts] = {}
        self.pinned = Tally(*PIN_REASONS)
        self.cancels = Tally(*CANCEL_OUTCOMES)

    def key(self, database: bytes, user: bytes) -> KeyCounts:
        """The counts of (C{database}, C{user}), made on first use."""
        counts = self.keys.get((database, user))
        if counts is None:
            counts = self.keys[(database, user)] = KeyCounts()
        return counts


__all__ = ["CANCEL_OUTCOMES", "KeyCounts", "PIN_REASONS", "RESET_KINDS", "TransactionStats"]
