"""
A cluster: the backends one listener routes to, each with its own pool.

For now it balances round-robin and skips backends known to be down while
another is not; weighted policies, consistent hashing and health checks build
on this seam (see docs/architecture.md).
"""

from __future__ import annotations

from typing import List, Sequence

from poolproxy.pool import BackendPool


class Cluster:
    """
    A named set of backend pools.
    """

    def __init__(self, name: str, pools: Sequence[BackendPool]) -> None:
        if not pools:
            raise ValueError("a cluster needs at least one backend")
        self.name = name
        self.pools: List[BackendPool] = list(pools)
        self._next = 0

    def pick(self) -> BackendPool:
        """
        The next pool in turn that is not known to be down; if all are down,
        the next in turn anyway, so that its error reaches the client.
        """
        pools = self.pools
        n = len(pools)
        start = self._next
        self._next = (start + 1) % n
        for i in range(n):
            pool = pools[(start + i) % n]
            if pool.state != "down":
                if i:
                    self._next = (start + i + 1) % n
                return pool
        return pools[start]

    @property
    def ready(self) -> bool:
        """Whether some backend connection can be had."""
        return any(pool.available for pool in self.pools)
