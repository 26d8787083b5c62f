"""
The pools the operator's views show, each with the (database, user) it
serves: a backend's own pool, or in transaction mode (PostgreSQL) the pool
of each (database, user) kept beside it (L{KeyedPools}).

A transaction-mode backend's own pool leases nothing: it carries the
settings its (database, user) pools are made with, and probes with a bare
TCP connect whether the backend can be reached (what /readyz and
C{poolproxy_backend_up} read).  Shown as a pool, its probe's connection
would count as an idle server connection no client can have, and its size
would add to the capacity of the pools that do serve: so the views show
its (database, user) pools instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, List, Optional

from poolproxy.backends.pool import BackendPool
from poolproxy.proxy.transaction.server import KeyedPool, KeyedPools


@dataclass(frozen=True)
class ServingPool:
    """
    A pool whose connections clients lease.

    @ivar database: the (database, user) it serves, as text; empty for
        the modes whose pools serve every client of the backend.
    @ivar keyed: its L{KeyedPool} in transaction mode, else L{None}.
    """

    pool: "BackendPool[Any]"
    database: str = ""
    user: str = ""
    keyed: Optional[KeyedPool] = None

    @property
    def labels(self) -> List[str]:
        """Its metric labels: cluster, backend, database, user."""
        return [self.pool.cluster, self.pool.name, self.database, self.user]


def _text(name: bytes) -> str:
    return name.decode("utf-8", "replace")


def keyed_pools(pool: "BackendPool[Any]") -> Optional[List[ServingPool]]:
    """
    The (database, user) pools kept beside backend pool C{pool}, by
    database then user, or L{None} if its backend keeps none (it serves
    clients itself).
    """
    backend = pool.backend
    shared = backend.shared if backend is not None else None
    if not isinstance(shared, KeyedPools):
        return None
    return [ServingPool(keyed.pool, _text(key[0]), _text(key[1]), keyed)
            for key, keyed in sorted(shared.pools.items())]


def serving_pools(pools: Iterable["BackendPool[Any]"]) -> List[ServingPool]:
    """For each of the backends' pools C{pools}, the pools that serve its clients."""
    out: List[ServingPool] = []
    for pool in pools:
        keyed = keyed_pools(pool)
        out.extend(keyed if keyed is not None else [ServingPool(pool)])
    return out


def pinned_clients(keyed: KeyedPool) -> int:
    """
    The clients holding one of C{keyed}'s connections for the rest of
    their session (a statement that outlives its transaction, or
    C{pool_mode = session}).
    """
    count = 0
    for conn in keyed.pool.leases():
        peer = conn.protocol.peer
        if peer is not None and peer.pinned is not None:
            count += 1
    return count


__all__ = ["ServingPool", "keyed_pools", "pinned_clients", "serving_pools"]
