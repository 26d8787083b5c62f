"""
What transaction pooling counts: plain attributes, as L{poolproxy.stats}
keeps them, read by L{poolproxy.ops.metrics} when /metrics is scraped.

A listener's L{TransactionStats} is its L{ListenerStats} plus, per
(database, user) that has logged in through it, a L{KeyCounts}: a client
(its L{ClientCounts}) finds its own once, at its first lease, and from then
on counts with attribute increments and one clock read at each end of a
lease.  Keys
come only from server logins that worked (a client is leased a connection
only once its (database, user) has logged in), so names that clients make
up never become series.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

from poolproxy.codecs.postgres_sql import LABELS
from poolproxy.codecs.postgres_statements import StatementNames
from poolproxy.stats import Histogram, ListenerStats, Tally

#: Why a client keeps its server connection until it leaves: a statement
#: whose effect outlives its transaction (L{session_effect}'s labels), or
#: C{session}: C{pool_mode = session}.
PIN_REASONS: Tuple[str, ...] = LABELS + ("session",)

#: What became of a CancelRequest: sent on to the server running the
#: client's query (C{forwarded}); the client was waiting for a server
#: connection and waits no more (C{dequeued}); the client had nothing
#: running (C{nothing_running}); no client has that key (C{unknown_key}:
#: a stale or forged key); sent on to the worker whose client it is
#: (C{forwarded_to_worker}, under --workers N).
CANCEL_OUTCOMES = ("forwarded", "dequeued", "nothing_running", "unknown_key",
                   "forwarded_to_worker")

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


class ClientCounts:
    """
    One client's part in its L{KeyCounts}: what it keeps between the two
    ends of a lease, in one attribute of the client.

    @ivar key: its (database, user)'s L{KeyCounts}, from its first lease.
    @ivar since: when it began to wait for a server connection, then when
        its lease began.
    @ivar queries: Query and Execute messages sent since its last
        transaction ended.
    """

    __slots__ = ("key", "since", "queries")

    def __init__(self) -> None:
        self.key: Optional[KeyCounts] = None
        self.since = 0.0
        self.queries = 0

    def leased(self, now: float, stats: "TransactionStats", database: bytes,
               user: bytes) -> None:
        """A lease begins at C{now}: the wait for it is over."""
        counts = self.key
        if counts is None:
            counts = self.key = stats.key(database, user)
        counts.wait.observe(now - self.since)
        self.since = now

    def transaction_over(self) -> None:
        """
        The server is idle again: a transaction, if the client ran a query
        since the last (else a login, or a notification to an idle client).
        """
        counts = self.key
        if self.queries and counts is not None:
            counts.transactions += 1
            counts.queries += self.queries
            self.queries = 0

    def lease_over(self, now: float) -> None:
        """The lease ends at C{now}: how long it was held, the queries it ran."""
        counts = self.key
        if counts is not None:
            counts.held.observe(now - self.since)
            counts.queries += self.queries
            self.queries = 0


class TransactionStats(ListenerStats):
    """
    A transaction-mode listener's counters.

    @ivar keys: a L{KeyCounts} per (database, user), as bytes from the
        clients' start-up packets.
    @ivar pinned: clients pinned to their server connection, by reason
        (L{PIN_REASONS}).
    @ivar cancels: CancelRequests received, by outcome (L{CANCEL_OUTCOMES}).
    @ivar statement_names: the listener's L{StatementNames}, whose size and
        count of forgotten definitions the collector reads; L{None} until
        the listener's factory sets it.
    """

    __slots__ = ("keys", "pinned", "cancels", "statement_names")

    def __init__(self) -> None:
        super().__init__()
        self.keys: Dict[Tuple[bytes, bytes], KeyCounts] = {}
        self.pinned = Tally(*PIN_REASONS)
        self.cancels = Tally(*CANCEL_OUTCOMES)
        self.statement_names: Optional[StatementNames] = None

    def key(self, database: bytes, user: bytes) -> KeyCounts:
        """The counts of (C{database}, C{user}), made on first use."""
        counts = self.keys.get((database, user))
        if counts is None:
            counts = self.keys[(database, user)] = KeyCounts()
        return counts


__all__ = ["CANCEL_OUTCOMES", "ClientCounts", "KeyCounts", "PIN_REASONS", "RESET_KINDS", "TransactionStats"]
