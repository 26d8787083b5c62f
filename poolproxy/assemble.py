"""
Building one cluster from its configuration: a codec, and for each backend a
pool, a circuit breaker and a health check, plus what the cluster's mode
needs (shared-connection multiplexers, a retry budget).  L{ProxyService}
builds one per C{[[cluster]]}.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.logger import Logger

from poolproxy.proxy.admission import Admission
from poolproxy.backends.cluster import Backend, Cluster
from poolproxy.codec import ICodec, IProbingCodec, IVariantCodec
from poolproxy.config import DEFAULT_BALANCE, ClusterConfig, CodecOptions, ProxyConfig
from poolproxy.config.endpoints import client_endpoint
from poolproxy.proxy.request import HttpBackend
from poolproxy.proxy.multiplexed.server import Multiplexer, PipelineBackend
from poolproxy.plugins import load_codec
from poolproxy.backends.pool import BackendPool, BackendProtocol
from poolproxy.backends.retry import RetryBudget
from poolproxy.proxy.session import SessionBackend

log = Logger(namespace="poolproxy.cluster")


class ClusterAssembly:
    """
    Builds the L{Cluster} for one L{ClusterConfig}.  The cluster gets extra
    attributes its listeners use: C{codec}, C{multiplexers} (backend ->
    L{Multiplexer}, multiplexed mode), C{retry_budget} and C{setting(key)}.
    """

    def __init__(self, spec: ClusterConfig, config: ProxyConfig, reactor: Any,
                 admission: Admission, options: CodecOptions,
                 codec: Optional[ICodec] = None) -> None:
        self.spec = spec
        self.config = config
        self.reactor = reactor
        self.admission = admission
        self.options = options
        self.codec = codec if codec is not None else load_codec(spec.protocol)

    def setting(self, key: str) -> Any:
        return self.spec.setting(key, self.config)

    def build(self) -> Cluster:
        codec = self.codec
        backends = [self._backend(b.name, client_endpoint(self.reactor, b.address), b.weight)
                    for b in self.spec.backends]
        cluster = Cluster(self.spec.name, backends,
                          self.spec.balance or DEFAULT_BALANCE.get(codec.mode, "round_robin"),
                          max_ejected_share=self.setting("max_ejected_percent") / 100.0)
        self.cluster = cluster
        tag = self.setting("hash_tag")
        cluster.hash_tag = tag.encode("ascii") if tag else None
        cluster.codec = codec  # type: ignore[attr-defined]
        cluster.setting = self.setting  # type: ignore[attr-defined]
        cluster.retry_budget = RetryBudget(  # type: ignore[attr-defined]
            self.config.retry_budget_percent / 100.0)
        cluster.multiplexers = {}  # type: ignore[attr-defined]
        for b in backends:
            self.add_multiplexer(b)
        return cluster

    def add_multiplexer(self, backend: Backend) -> None:
        """Multiplexed mode: the shared connections of one backend."""
        if self.codec.mode != "multiplexed":
            return
        codec, options = self.codec, self.options
        self.cluster.multiplexers[backend] = Multiplexer(  # type: ignore[attr-defined]
            backend.pool, self.setting("mux_connections"),
            variant_setup=(lambda v: codec.variant_setup(options, v))
            if IVariantCodec.providedBy(codec) else None)

    def new_backend(self, name: str, address: str, weight: int) -> Backend:
        """A backend added to the built cluster (reload)."""
        backend = self._backend(name, client_endpoint(self.reactor, address), weight)
        self.add_multiplexer(backend)
        return backend

    # -- one backend -------------------------------------------------------------

    def _backend(self, name: str, endpoint: Any, weight: int) -> Backend:
        """A backend: its pool, and its breaker and health check if they are on."""
        s = self.setting
        pool = BackendPool(
            name, endpoint, SessionBackend,  # the mode's protocol is set below
            size=s("pool_size"), min_idle=s("pool_min_idle"),
            max_waiters=self.config.pool_max_waiters,
            acquire_timeout=self.config.pool_acquire_timeout,
            connect_timeout=self.config.connect_timeout, idle_timeout=self.config.idle_timeout,
            max_lifetime=self.config.max_lifetime, max_uses=self.config.max_uses,
            health_interval=self.config.health_interval, clock=self.reactor)
        backend = Backend(name, pool, weight)
        pool.backend = backend
        pool.cluster = self.spec.name
        pool.protocol_factory = self._protocol_factory(backend)
        if s("breaker_failures"):
            from poolproxy.backends.breaker import BreakerSettings, CircuitBreaker

            reset = s("breaker_reset_timeout")
            backend.breaker = CircuitBreaker(
                BreakerSettings(s("breaker_failures"), reset,
                                max(s("breaker_max_reset_timeout"), reset)),
                clock=self.reactor,
                on_change=lambda old, new: _breaker_changed(backend, old, new),
                may_open=lambda: self.cluster.may_eject())
        if s("check_interval"):
            from poolproxy.backends.health import HealthCheck

            backend.health = HealthCheck(
                name, self._probe(endpoint), interval=s("check_interval"),
                timeout=s("check_timeout"), rise=s("check_rise"), fall=s("check_fall"),
                clock=self.reactor,
                on_change=lambda old, new, why: _health_changed(backend, old, new, why))
        return backend

    def _protocol_factory(self, backend: Backend) -> Callable[[], BackendProtocol]:
        codec = self.codec
        if codec.mode == "session":
            return SessionBackend
        if codec.mode == "multiplexed":
            setup = codec.setup_frames(self.options)
            admission, clock = self.admission, self.reactor
            timeout = self.setting("request_timeout")
            return lambda: PipelineBackend(codec, setup, admission, backend, clock, timeout)
        if codec.mode == "request":
            return lambda: HttpBackend(codec)  # type: ignore[arg-type]
        raise ValueError(f"protocol {codec.name!r} has an unknown mode {codec.mode!r}")

    def _probe(self, endpoint: Any) -> Callable[[], Any]:
        from poolproxy.backends import health

        # Each health.*_probe(...) builds the probe: a function that runs one check.
        codec = self.codec
        if codec.mode == "request":
            return health.http_probe(endpoint, self.setting("check_path").encode("utf-8"))
        if (codec.mode == "multiplexed" and codec.probe() is not None
                and IProbingCodec.providedBy(codec)):
            if codec.setup_frames(self.options):
                # A probe would need the setup (AUTH) too: a connect is what we can check.
                return health.tcp_probe(endpoint)
            return health.codec_probe(endpoint, codec)
        return health.tcp_probe(endpoint)


def _breaker_changed(backend: Backend, old: str, new: str) -> None:
    log.warn("backend {backend}: circuit breaker {old} -> {new}",
             backend=backend.name, old=old, new=new)
    if new == "open":
        backend.pool.evict("ejected")


def _health_changed(backend: Backend, old: str, new: str, why: str) -> None:
    log.warn("backend {backend}: health {old} -> {new} ({why})",
             backend=backend.name, old=old, new=new, why=why)
    if new == "unhealthy":
        backend.pool.evict("unhealthy")
