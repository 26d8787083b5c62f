"""
The proxy as a Twisted service: listeners, the admission gate, the backend
pools (one cluster for now), the operator's web endpoint and, for the demo,
an embedded backend.  L{poolproxy.tap} builds it from a L{ProxyConfig}.
"""

from __future__ import annotations

import sys
from typing import Any, Callable, Dict, List, Optional

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, DeferredList, gatherResults
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.logger import Logger, LoggingFile

from poolproxy.admission import Admission
from poolproxy.cluster import Backend, Cluster
from poolproxy.codec import ICodec
from poolproxy.config import DEFAULT_BALANCE, ProxyConfig, codec_options
from poolproxy.demo import demo_site
from poolproxy.endpoints import backend_name, client_endpoint, demo_address, server_endpoint
from poolproxy.httpmode import HttpBackend, HttpFactory, route_key
from poolproxy.idle import IdleSweeper
from poolproxy.retry import RetryBudget
from poolproxy.multiplex import MultiplexFactory, Multiplexer, PipelineBackend
from poolproxy.plugins import load_codec
from poolproxy.pool import BackendPool, BackendProtocol
from poolproxy.session import SessionBackend, SessionFactory
from poolproxy.stats import ListenerStats
from poolproxy.web import build_site


class Listener:
    """
    One client-facing endpoint and the factory behind it.
    """

    def __init__(self, name: str, factory: SessionFactory, service: BoundService) -> None:
        self.name = name
        self.factory = factory
        self.service = service

    @property
    def stats(self) -> ListenerStats:
        return self.factory.stats


class BoundService(StreamServerEndpointService):
    """
    A server endpoint service that remembers its listening port, so that
    tests and the status page can tell the address of a C{tcp:0} listener.

    @ivar port: the L{IListeningPort} once listening, else L{None}.
    """

    port: Any = None

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._waitingForPort.addCallback(self._bound)

    def _bound(self, port: Any) -> Any:
        self.port = port
        return port

    def stopService(self) -> "Deferred[None]":
        self.port = None
        return super().stopService()


def _endpoint_service(endpoint: Any, factory: Any, name: str) -> BoundService:
    svc = BoundService(endpoint, factory)
    # Fail startup (and twistd) at once if the port cannot be bound, as
    # strports.service does.
    svc._raiseSynchronously = True
    svc.setName(name)
    return svc


class StartupError(SystemExit, Exception):
    """
    An endpoint could not be bound.  Its code is the one-line message: as a
    L{SystemExit}, twistd -n exits with status 1 printing just that line; as
    an L{Exception}, a daemonizing twistd still reports the failure to the
    launching process (which otherwise waits forever) and removes its pid file.
    """


def _listen_reason(e: Exception) -> str:
    """One line saying why an endpoint could not listen."""
    socket_error = getattr(e, "socketError", None)
    if isinstance(socket_error, OSError) and socket_error.strerror:
        return socket_error.strerror
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


class ProxyService(MultiService):
    """
    Everything one C{twistd poolproxy} runs.

    @ivar listeners: the client-facing L{Listener}s.
    @ivar pools: one L{BackendPool} per backend.
    @ivar cluster: the L{Cluster} the listeners route to.
    """

    log = Logger()

    def __init__(self, config: ProxyConfig, reactor: Optional[Any] = None,
                 codec: Optional[ICodec] = None) -> None:
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor  # type: ignore[no-redef]
        self.config = config
        self.reactor = reactor

        if config.demo:
            _endpoint_service(server_endpoint(reactor, config.demo), demo_site(),
                              "demo-backend").setServiceParent(self)

        self.admission = Admission(config.max_concurrency, config.queue_size,
                                   config.queue_timeout, clock=reactor)
        # A codec object may be given directly (embedding, tests); else the
        # plugin named by --protocol.
        self.codec = codec if codec is not None else load_codec(config.protocol)
        self.codec_options = codec_options(config)
        addresses = [(backend_name(b), client_endpoint(reactor, b)) for b in config.backend]
        if config.demo and not config.backend:
            host, port = demo_address(config.demo)  # type: ignore[misc]
            addresses.append((f"{host}:{port}", TCP4ClientEndpoint(reactor, host, port)))
        backends = [self._make_backend(name, endpoint) for name, endpoint in addresses]
        self.cluster = Cluster("default", backends,
                               config.balance or DEFAULT_BALANCE.get(self.codec.mode, "round_robin"),
                               max_ejected_share=config.max_ejected_percent / 100.0)
        self.pools: List[BackendPool] = [b.pool for b in backends]
        self.multiplexers: Dict[Any, Multiplexer] = {}
        if self.codec.mode == "multiplexed":
            variant_setup = getattr(self.codec, "variant_setup", None)
            options = self.codec_options
            self.multiplexers = {
                b: Multiplexer(b.pool, config.mux_connections,
                               variant_setup=(lambda v: variant_setup(options, v))
                               if variant_setup is not None else None)
                for b in backends}

        self.retry_budget = RetryBudget(getattr(config, "retry_budget_percent", 20.0) / 100.0)
        self.listeners: List[Listener] = []
        for description in config.listen:
            factory = self._frontend_factory(description)
            svc = _endpoint_service(server_endpoint(reactor, description), factory,
                                    f"listener {description}")
            svc.setServiceParent(self)
            self.listeners.append(Listener(description, factory, svc))
        idle = getattr(config, "client_idle_timeout", 0.0)
        self.sweepers = [IdleSweeper(listener.factory.clients, idle, reactor)
                         for listener in self.listeners
                         if idle and self.codec.mode in ("multiplexed", "request")]

        self.web = _endpoint_service(server_endpoint(reactor, config.metrics),
                                     build_site(self), "metrics")
        self.web.setServiceParent(self)

    def _backend_protocol_factory(self, backend: Backend) -> Callable[[], BackendProtocol]:
        codec = self.codec
        if codec.mode == "session":
            return SessionBackend
        if codec.mode == "multiplexed":
            setup = codec.setup_frames(self.codec_options)
            admission, clock, timeout = self.admission, self.reactor, self.config.request_timeout
            return lambda: PipelineBackend(codec, setup, admission, backend, clock, timeout)
        if codec.mode == "request":
            return lambda: HttpBackend(codec)  # type: ignore[arg-type]
        raise ValueError(f"protocol {codec.name!r} has an unknown mode {codec.mode!r}")

    def _make_backend(self, name: str, endpoint: Any) -> Backend:
        """A backend: its pool, and its breaker and health check if they are on."""
        c = self.config
        pool = self._make_pool(name, endpoint)
        backend = Backend(name, pool)
        pool.backend = backend
        pool.protocol_factory = self._backend_protocol_factory(backend)
        if c.breaker_failures:
            from poolproxy.breaker import BreakerSettings, CircuitBreaker

            backend.breaker = CircuitBreaker(
                BreakerSettings(c.breaker_failures, c.breaker_reset_timeout,
                                max(c.breaker_max_reset_timeout, c.breaker_reset_timeout)),
                clock=self.reactor,
                on_change=lambda old, new: self._breaker_changed(backend, old, new),
                may_open=lambda: self.cluster.may_eject())
        if c.check_interval:
            from poolproxy.health import HealthCheck

            backend.health = HealthCheck(
                name, self._probe(endpoint), interval=c.check_interval, timeout=c.check_timeout,
                rise=c.check_rise, fall=c.check_fall, clock=self.reactor,
                on_change=lambda old, new, why: self._health_changed(backend, old, new, why))
        return backend

    def _probe(self, endpoint: Any) -> Callable[[], Any]:
        from poolproxy import health

        codec = self.codec
        if codec.mode == "request":
            path = self.config.check_path.encode("utf-8")
            return lambda: health.http_probe(endpoint, path)
        if codec.mode == "multiplexed" and codec.probe() is not None and hasattr(codec, "probe_ok"):
            if codec.setup_frames(self.codec_options):
                # A probe would need the setup (AUTH) too: a connect is what we can check.
                return lambda: health.tcp_probe(endpoint)
            return lambda: health.codec_probe(endpoint, codec)
        return lambda: health.tcp_probe(endpoint)

    def _breaker_changed(self, backend: Backend, old: str, new: str) -> None:
        self.log.warn("backend {backend}: circuit breaker {old} -> {new}",
                      backend=backend.name, old=old, new=new)
        if new == "open":
            backend.pool.evict("ejected")

    def _health_changed(self, backend: Backend, old: str, new: str, why: str) -> None:
        self.log.warn("backend {backend}: health {old} -> {new} ({why})",
                      backend=backend.name, old=old, new=new, why=why)
        if new == "unhealthy":
            backend.pool.evict("unhealthy")

    def _frontend_factory(self, name: str) -> Any:
        if self.codec.mode == "session":
            return SessionFactory(name, self.admission, self.cluster)
        if self.codec.mode == "request":
            return HttpFactory(name, self.codec, self.codec_options,  # type: ignore[arg-type]
                               self.admission, self.cluster, self.reactor,
                               self.config.request_timeout,
                               route_key=route_key(self.config.hash_key),
                               retry_budget=self.retry_budget,
                               header_timeout=getattr(self.config, "header_timeout", 10.0))
        return MultiplexFactory(name, self.codec, self.codec_options, self.admission,
                                self.cluster, self.multiplexers, clock=self.reactor)

    def _make_pool(self, name: str, endpoint: Any) -> BackendPool:
        c = self.config
        return BackendPool(
            name, endpoint, SessionBackend,  # replaced by _make_backend
            size=c.pool_size, min_idle=c.pool_min_idle, max_waiters=c.pool_max_waiters,
            acquire_timeout=c.pool_acquire_timeout, connect_timeout=c.connect_timeout,
            idle_timeout=c.idle_timeout, max_lifetime=c.max_lifetime, max_uses=c.max_uses,
            health_interval=c.health_interval, clock=self.reactor,
        )

    def privilegedStartService(self) -> None:
        # Bind every endpoint now, in order.  If one cannot be bound, stop the
        # ones already listening and exit with one line, not a traceback.
        Service.privilegedStartService(self)
        started: List[Any] = []
        for svc in self:
            try:
                svc.privilegedStartService()
            except Exception as e:
                for done in reversed(started):
                    done.stopService()
                message = (f"poolproxy: error: {self._describe(svc)}: "
                           f"cannot listen: {_listen_reason(e)}")
                # Log it now: a daemonizing twistd reports the failure to its
                # parent (which then exits) before SystemExit is printed.
                self.log.error("{line}", line=message)
                if isinstance(sys.stderr, LoggingFile) and sys.__stderr__ is not None:
                    # twistd points sys.stderr at the log, which has the line
                    # now; let SystemExit print it on the real stderr instead.
                    sys.stderr = sys.__stderr__
                raise StartupError(message) from None
            started.append(svc)

    def _describe(self, svc: Any) -> str:
        """The setting (flag, or key and file) and endpoint behind C{svc}."""
        key, description = "demo", self.config.demo
        if svc is self.web:
            key, description = "metrics", self.config.metrics
        for listener in self.listeners:
            if listener.service is svc:
                key, description = "listen", listener.name
        where = self.config.sources.get(key, "--" + key)
        return f"{where} {description}"

    @property
    def ready(self) -> bool:
        """Whether a backend connection can be had (for /readyz)."""
        return self.cluster.ready

    def startService(self) -> None:
        super().startService()
        for sweeper in self.sweepers:
            sweeper.start()
        for backend in self.cluster.backends:
            backend.pool.start()
            if backend.health is not None:
                backend.health.start()
        self.log.info(
            "poolproxy ({protocol}) listening on {listen}, backends {backends}, "
            "metrics on {metrics}",
            protocol=self.config.protocol, listen=", ".join(self.config.listen),
            backends=", ".join(p.name for p in self.pools), metrics=self.config.metrics,
        )

    def stopService(self) -> "Deferred[Any]":
        # Stop accepting first, then close the pools (which ends the sessions).
        stopped = super().stopService()
        for sweeper in self.sweepers:
            sweeper.stop()
        for listener in self.listeners:
            for client in list(listener.factory.clients):
                client.transport.loseConnection()
        for multiplexer in self.multiplexers.values():
            multiplexer.close()
        self.cluster.stop()
        closed = gatherResults([pool.close() for pool in self.pools])
        return DeferredList([stopped, closed])
