"""
A retry budget: retries may add at most a fixed share of the requests a
cluster serves (plus a small reserve), so that retrying cannot multiply the
load on backends that are already failing (Envoy and Finagle do the same).
"""

from __future__ import annotations


class RetryBudget:
    """
    A token bucket: every request deposits C{ratio} of a token, every retry
    takes a whole one.

    @ivar retries: retries allowed so far; C{refused}: retries the budget
        refused.
    """

    __slots__ = ("ratio", "cap", "tokens", "retries", "refused")

    def __init__(self, ratio: float = 0.2, reserve: float = 10.0, cap: float = 100.0) -> None:
        self.ratio = ratio
        self.cap = cap
        self.tokens = reserve
        self.retries = 0
        self.refused = 0

    def deposit(self, requests: int = 1) -> None:
        """C{requests} were sent."""
        tokens = self.tokens + self.ratio * requests
        self.tokens = tokens if tokens < self.cap else self.cap

    def withdraw(self) -> bool:
        """May one request be retried now?"""
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            self.retries += 1
            return True
        self.refused += 1
        return False
