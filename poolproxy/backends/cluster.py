"""
Clusters: the backends a listener routes to.

A L{Backend} is one server: its pool, its weight, whether active health
checks pass, its circuit breaker (passive health), and how many requests it
has in flight.  A L{Cluster} picks a backend for each request (or client
session) with a balancing policy from L{poolproxy.backends.balancing}, among the
backends that are available, and keeps a cluster from ejecting too many of
its backends at once.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any, Callable, List, Optional, Protocol, Sequence

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator

from poolproxy.backends.pool import BackendPool
from poolproxy.backends.retry import RetryBudget
from poolproxy.stats import Histogram, Histograms

if TYPE_CHECKING:
    from poolproxy.backends.breaker import CircuitBreaker
    from poolproxy.backends.health import HealthCheck


#: The values of L{Backend.state}.
BACKEND_STATES = ("up", "down", "draining", "ejected", "disabled")


class SharedConnections(Protocol):
    """
    Connections to one backend that many clients share, which a mode keeps
    beside the backend's pool (multiplexed mode's
    L{poolproxy.proxy.multiplexed.server.Multiplexer}): closed with the backend.
    """

    def close(self) -> None:
        """Give every shared connection back to the pool, to be closed."""


class Backend:
    """
    One backend server of a cluster.

    @ivar outstanding: requests (or sessions) in flight to it, kept by the
        proxy modes for least-outstanding balancing.
    @ivar disabled: taken out of rotation by an operator.
    @ivar draining: gets no new requests; those in flight finish (an operator
        is taking it out gracefully).
    @ivar requests: requests sent to it; C{failures}: those that failed.
    @ivar durations: seconds from a request written to it to its reply's
        end read (tcp: a session's lease), by outcome; C{duration_ok} is
        C{durations["ok"]}.  C{first_byte}: written to the first byte back.
    @ivar health: its active L{HealthCheck}, if checks are on.
    @ivar breaker: its L{CircuitBreaker} (passive health), if on.
    @ivar shared: the connections to it that clients share, in a mode that
        shares them (multiplexed); else L{None}.
    @ivar tls: what makes the TLS of its connections in a mode whose
        connections ask for TLS themselves (postgres: SSLRequest), with
        C{backend_tls}; else L{None} (other modes' TLS is in the endpoint).
    """

    def __init__(self, name: str, pool: BackendPool, weight: int = 1) -> None:
        self.name = name
        self.pool = pool
        # The pool reports failed connects to its backend: passive health.
        pool.backend = self
        self.weight = weight
        self.outstanding = 0
        self.disabled = False
        self.draining = False
        # Set once the backend is built: their callbacks name the backend.
        self.health: Optional[HealthCheck] = None
        self.breaker: Optional[CircuitBreaker] = None
        self.shared: Optional[SharedConnections] = None
        self.tls: Optional[IOpenSSLClientConnectionCreator] = None
        self.requests = 0
        self.failures = 0
        self.retries = 0
        #: Messages it sent unasked on a shared connection (RESP3 pushes), dropped.
        self.unsolicited = 0
        #: Replies larger than max_reply_size: answered with an error, skipped.
        self.replies_too_large = 0
        self.durations = Histograms("ok")
        self.duration_ok = self.durations["ok"]
        self.first_byte = Histogram()

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"<Backend {self.name}>"

    @property
    def healthy(self) -> bool:
        """Active checks pass (or are off)."""
        return self.health is None or self.health.healthy

    @property
    def ejected(self) -> bool:
        """
        Out of rotation: failed health checks, or a breaker not closed (a
        half-open backend gets one trial request at most).
        """
        if not self.healthy:
            return True
        breaker = self.breaker
        return breaker is not None and breaker.state != "closed"

    @property
    def available(self) -> bool:
        """May get a new request now (a draining backend only finishes its own)."""
        if self.disabled or self.draining or not self.healthy:
            return False
        breaker = self.breaker
        if breaker is None or breaker.state == "closed":
            return True
        return breaker.state == "half_open" and not breaker.trial_in_flight

    @property
    def state(self) -> str:
        """One word for status pages: up, down, draining, disabled, ejected."""
        if self.disabled:
            return "disabled"
        if self.draining:
            return "draining"
        if not self.healthy:
            return "down"
        if self.ejected:
            return "ejected"
        return "up"

    def claim(self) -> bool:
        """
        A request is going to this backend (after L{Cluster.pick}).

        @return: whether it is a half-open breaker's one trial request (so
            the backend takes no more until the trial's outcome is known).
        """
        self.requests += 1
        breaker = self.breaker
        if breaker is not None and breaker.state == "half_open":
            breaker.allow()  # this request is the trial
            return True
        return False

    def succeeded(self) -> None:
        """A request to this backend got its answer."""
        breaker = self.breaker
        # The common case, a closed breaker with no failure counted, needs no
        # trip through its state machine (a few microseconds).
        if breaker is not None and (breaker.consecutive_failures or breaker.state != "closed"):
            breaker.success()

    def begin(self) -> None:
        """
        A request (or tcp session) starts on this backend: L{claim} it and
        count it in flight until L{end}.
        """
        self.claim()
        self.outstanding += 1

    def end(self, reported: bool) -> None:
        """
        A request counted by L{begin} is over.  If no outcome was reported
        (its client left first) and it was the half-open breaker's trial,
        another trial may go.
        """
        self.outstanding -= 1
        if not reported:
            breaker = self.breaker
            if breaker is not None and breaker.trial_in_flight:
                breaker.cancel_trial()

    def failed(self, why: str) -> None:
        """
        A request to this backend failed (connect error, timeout, broken
        response): passive health.
        """
        self.failures += 1
        breaker = self.breaker
        if breaker is not None:
            breaker.failure()

    def start(self) -> None:
        """Start the pool's maintenance and the active health checks."""
        self.pool.start()
        if self.health is not None:
            self.health.start()

    def close(self) -> "Deferred[None]":
        """
        Stop checking it and close its connections, shared and pooled (at
        shutdown, or once a backend a reload removed has drained).

        @return: L{BackendPool.close}'s L{Deferred}.
        """
        if self.health is not None:
            self.health.stop()
        if self.breaker is not None:
            self.breaker.stop()
        if self.shared is not None:
            self.shared.close()
        return self.pool.close()


class Cluster:
    """
    A named set of backends and the policy that picks among them.

    @ivar max_ejected_share: the largest fraction of backends that circuit
        breakers may take out of rotation at once (a failing active health
        check takes its backend out regardless).
    @ivar hash_tag: two bytes, e.g. C{b"{}"}: a key holding them is routed by
        what is between them (hash tags, as twemproxy's C{hash_tag}); L{None}: off.
    @ivar retry_budget: what retries of this cluster's requests may spend;
        L{None}: requests are never retried.
    @ivar remap_on_eject: with consistent hashing, whether an unavailable
        backend's keys go to the next backend on the ring (else their
        requests find no backend).
    """

    def __init__(self, name: str, backends: Sequence[Backend], policy: str = "round_robin",
                 max_ejected_share: float = 0.5, rng: Optional[random.Random] = None,
                 make_policy: Optional[Callable[..., Any]] = None, *,
                 hash_tag: Optional[bytes] = None,
                 retry_budget: Optional[RetryBudget] = None,
                 remap_on_eject: bool = True, discovered: bool = False) -> None:
        """
        @param discovered: its backends come from DNS, so it may start with
            none (it is not ready until some are found).
        """
        if not backends and not discovered:
            raise ValueError("a cluster needs at least one backend")
        from poolproxy.backends.balancing import make_policy as default_make_policy

        self.name = name
        self.backends: List[Backend] = list(backends)
        self.policy_name = policy
        self.max_ejected_share = max_ejected_share
        self.hash_tag = hash_tag
        self.retry_budget = retry_budget
        self.policy = (make_policy or default_make_policy)(
            policy, [(b, b.weight) for b in self.backends],
            outstanding=lambda b: b.outstanding, rng=rng or random.Random(),
            name_of=lambda b: b.name, remap=remap_on_eject)
        self.remap_on_eject = remap_on_eject
        self._update_sharded()

    def _update_sharded(self) -> None:
        #: Whether requests are routed by key to one of several backends, each
        #: holding part of the keys (so no backend holds them all).
        self.sharded = self.policy_name == "consistent_hash" and len(self.backends) > 1

    def pick(self, key: Optional[bytes] = None) -> Optional[Backend]:
        """
        The backend for a request with routing key C{key}, or L{None} if no
        backend is available.  The caller then calls L{Backend.claim}.
        """
        tag = self.hash_tag
        if tag is not None and key:
            start = key.find(tag[:1])
            if start >= 0:
                end = key.find(tag[1:], start + 1)
                if end > start + 1:
                    key = key[start + 1:end]
        return self.policy.pick(key, _available)

    def may_eject(self) -> bool:
        """
        Whether one more backend may be taken out of rotation without
        passing C{max_ejected_share}.
        """
        ejected = sum(1 for b in self.backends if b.ejected)
        return (ejected + 1) <= self.max_ejected_share * len(self.backends)

    def add(self, backend: Backend) -> None:
        """A new backend joins (reload)."""
        self.policy.add(backend, backend.weight)
        self.backends.append(backend)
        self._update_sharded()

    def remove(self, backend: Backend) -> None:
        """A backend leaves (reload): no new request is picked for it."""
        self.policy.remove(backend)
        self.backends.remove(backend)
        self._update_sharded()

    def set_weight(self, backend: Backend, weight: int) -> None:
        self.policy.set_weight(backend, weight)  # raises on a bad weight: change nothing
        backend.weight = weight

    @property
    def ready(self) -> bool:
        """Whether some backend connection can be had."""
        return any(b.available and b.pool.available for b in self.backends)



def _available(backend: Backend) -> bool:
    return backend.available
