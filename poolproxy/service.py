"""
The proxy as a Twisted service: listeners, the admission gate, the backend
pools (one cluster for now), the operator's web endpoint and, for the demo,
an embedded backend.  L{poolproxy.tap} builds it from a L{ProxyConfig}.
"""

from __future__ import annotations

import sys
import signal
from typing import Any, Callable, Dict, List, NoReturn, Optional

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService, Service
from twisted.internet.defer import (
    Deferred,
    DeferredList,
    gatherResults,
    maybeDeferred,
    succeed,
)
from twisted.logger import Logger, LoggingFile

from poolproxy.proxy.admission import Admission
from poolproxy.backends.cluster import Cluster
from poolproxy.codec import ICodec
from poolproxy.config import ProxyConfig, codec_options
from poolproxy.demo import demo_site
from poolproxy.config.endpoints import server_endpoint
from poolproxy.assemble import ClusterAssembly
from poolproxy.proxy.request import HttpFactory, route_key
from poolproxy.proxy.idle import IdleSweeper
from poolproxy.ops.reload import Reloader
from poolproxy.ops.rejections import RejectionSummary
from poolproxy.proxy.multiplexed.client import MultiplexFactory
from poolproxy.backends.pool import BackendPool
from poolproxy.proxy.session import SessionFactory
from poolproxy.config.settings import HTTP_FAILURE_STATUSES
from poolproxy.stats import ListenerStats
from poolproxy.util.waiting import wait_until
from poolproxy.ops.web import build_site
from poolproxy.workers.worker import AdoptedPortService, Handoff, WorkerControl
from poolproxy.util.reactors import default_reactor


class Listener:
    """
    One client-facing endpoint and the factory behind it.
    """

    def __init__(self, name: str, factory: Any, service: BoundService,
                 endpoint: str = "") -> None:
        self.name = name
        self.factory = factory
        self.service = service
        self.endpoint = endpoint or name

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


def fail_startup(log: Logger, message: str) -> NoReturn:
    """Log C{message} and exit twistd with it (see L{StartupError})."""
    # Log it now: a daemonizing twistd reports the failure to its parent
    # (which then exits) before SystemExit is printed.
    log.error("{line}", line=message)
    if isinstance(sys.stderr, LoggingFile) and sys.__stderr__ is not None:
        # twistd points sys.stderr at the log, which has the line now; let
        # SystemExit print it on the real stderr instead.
        sys.stderr = sys.__stderr__
    raise StartupError(message) from None


class ProxyService(MultiService):
    """
    Everything one C{twistd poolproxy} runs.

    @ivar listeners: the client-facing L{Listener}s.
    @ivar pools: one L{BackendPool} per backend.
    @ivar cluster: the L{Cluster} the listeners route to.
    """

    log = Logger()

    def __init__(self, config: ProxyConfig, reactor: Optional[Any] = None,
                 codec: Optional[ICodec] = None,
                 reload_config: Optional[Callable[[], ProxyConfig]] = None,
                 handle_sighup: bool = False, handoff: Optional[Handoff] = None) -> None:
        super().__init__()
        reactor = default_reactor(reactor)
        self.config = config
        self.reactor: Any = reactor

        if config.demo and handoff is None:  # a worker's supervisor serves the demo
            _endpoint_service(server_endpoint(reactor, config.demo), demo_site(),
                              "demo-backend").setServiceParent(self)

        self.admission = Admission(config.max_concurrency, config.queue_size,
                                   config.queue_timeout, clock=reactor)
        self.codec_options = codec_options(config)
        # One cluster per [[cluster]] (or the "default" one built from
        # --backend).  A codec object may be given directly (embedding,
        # tests); else each cluster's protocol plugin is loaded.
        self.clusters: Dict[str, Cluster] = {}
        for spec in config.clusters:
            self.clusters[spec.name] = ClusterAssembly(
                spec, config, reactor, self.admission, self.codec_options, codec).build()
        # The first cluster: the only one when configured by flags.
        self.cluster = next(iter(self.clusters.values()))
        self.pools: List[BackendPool] = [
            b.pool for cluster in self.clusters.values() for b in cluster.backends]

        self.rejections = RejectionSummary(self.admission, self.pools, reactor)
        self.reloader = Reloader(self, reload_config) if reload_config is not None else None
        self._handle_sighup = handle_sighup and self.reloader is not None
        self.listeners: List[Listener] = []
        self.sweepers: List[IdleSweeper] = []
        idle = config.client_idle_timeout
        for listener in config.listeners:
            cluster = self.clusters[listener.cluster]
            factory = self._frontend_factory(listener.name, cluster)
            svc: Any
            if handoff is not None and listener.name in handoff.listeners:
                fd, family = handoff.listeners[listener.name]
                svc = AdoptedPortService(reactor, fd, family, factory)
            else:
                svc = _endpoint_service(server_endpoint(reactor, listener.endpoint), factory,
                                        f"listener {listener.name}")
            svc.setServiceParent(self)
            self.listeners.append(Listener(listener.name, factory, svc, listener.endpoint))
            if idle and cluster.codec.mode in ("multiplexed", "request"):  # type: ignore[attr-defined]
                self.sweepers.append(IdleSweeper(factory.clients, idle, reactor))

        self.web = _endpoint_service(server_endpoint(reactor, config.metrics),
                                     build_site(self), "metrics")
        self.web.setServiceParent(self)
        if handoff is not None:
            WorkerControl(reactor, handoff, lambda: self.web.port).setServiceParent(self)

    def _frontend_factory(self, name: str, cluster: Cluster) -> Any:
        codec: Any = cluster.codec  # type: ignore[attr-defined]
        setting = cluster.setting  # type: ignore[attr-defined]
        if codec.mode == "session":
            return SessionFactory(name, self.admission, cluster)
        if codec.mode == "request":
            return HttpFactory(name, codec, self.codec_options, self.admission, cluster,
                               self.reactor, setting("request_timeout"),
                               route_key=route_key(setting("hash_key")),
                               failure_statuses=HTTP_FAILURE_STATUSES[setting("http_failures")],
                               retry_budget=cluster.retry_budget,  # type: ignore[attr-defined]
                               header_timeout=self.config.header_timeout,
                               access_log_sample=self.config.access_log_sample)
        return MultiplexFactory(name, codec, self.codec_options, self.admission, cluster,
                                cluster.multiplexers,  # type: ignore[attr-defined]
                                clock=self.reactor)

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
                fail_startup(self.log, f"poolproxy: error: {self._describe(svc)}: "
                                       f"cannot listen: {_listen_reason(e)}")
            started.append(svc)

    def _describe(self, svc: Any) -> str:
        """The setting (flag, or key and file) and endpoint behind C{svc}."""
        key, description = "demo", self.config.demo
        if svc is self.web:
            key, description = "metrics", self.config.metrics
        for listener in self.listeners:
            if listener.service is svc:
                where = self.config.sources.get("listeners") or self.config.sources.get(
                    "listen", "--listen")
                return f"{where} {listener.endpoint}"
        where = self.config.sources.get(key, "--" + key)
        return f"{where} {description}"

    @property
    def ready(self) -> bool:
        """Whether every cluster can get a backend connection (for /readyz)."""
        return all(cluster.ready for cluster in self.clusters.values())

    def reload(self) -> bool:
        """Reload the configuration file (what SIGHUP does)."""
        if self.reloader is None:
            self.log.warn("reload: no configuration to reload")
            return False
        return self.reloader.reload()

    def _sighup(self, signum: int, frame: Any) -> None:
        self.reactor.callFromThread(self.reload)

    def startService(self) -> None:
        super().startService()
        if self._handle_sighup:
            signal.signal(signal.SIGHUP, self._sighup)
        self.rejections.start()
        for sweeper in self.sweepers:
            sweeper.start()
        for cluster in self.clusters.values():
            for backend in cluster.backends:
                backend.start()
        for listener in self.listeners:
            cluster = listener.factory.cluster
            self.log.info(
                "poolproxy listening on {listen} ({protocol}) for cluster {cluster}: "
                "{backends} ({policy})", listen=listener.endpoint,
                protocol=cluster.codec.name, cluster=cluster.name, policy=cluster.policy_name,
                backends=", ".join(b.name for b in cluster.backends))
        self.log.info("metrics on {metrics}", metrics=self.config.metrics)

    def stopService(self) -> "Deferred[Any]":
        """
        Graceful shutdown (SIGTERM): stop accepting, let clients finish what
        is in flight for up to shutdown_timeout seconds, then close what is
        left, the pools and the web endpoint.
        """
        if not self.running:
            return succeed(None)  # stopped already (or never started)
        if self._handle_sighup:
            signal.signal(signal.SIGHUP, signal.SIG_DFL)
        Service.stopService(self)
        listening = [listener.service for listener in self.listeners]
        stopping = [maybeDeferred(svc.stopService) for svc in listening]
        self.rejections.stop()
        for sweeper in self.sweepers:
            sweeper.stop()
        for listener in self.listeners:
            for client in list(listener.factory.clients):
                client.finish_up()
        waited = self._clients_done(self.config.shutdown_timeout)

        def close(_: object) -> "Deferred[Any]":
            for listener in self.listeners:
                for client in list(listener.factory.clients):
                    client.transport.loseConnection()
            for cluster in self.clusters.values():
                for multiplexer in cluster.multiplexers.values():  # type: ignore[attr-defined]
                    multiplexer.close()
                cluster.stop()
            closed = gatherResults([pool.close() for pool in self.pools])
            others = [maybeDeferred(svc.stopService)
                      for svc in reversed(list(self)) if svc not in listening]
            return DeferredList(stopping + others + [closed])

        return waited.addCallback(close)

    def _clients_done(self, timeout: float) -> "Deferred[None]":
        """Fires once no client connection is left, or after C{timeout} seconds."""
        def left() -> int:
            return sum(len(listener.factory.clients) for listener in self.listeners)

        def report(done: bool) -> None:
            if not done:
                self.log.warn("shutdown: {n} client connections still busy after "
                              "{timeout}s; closing them", n=left(), timeout=timeout)

        return wait_until(self.reactor, lambda: not left(), timeout).addCallback(report)
