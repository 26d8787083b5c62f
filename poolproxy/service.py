"""
The proxy as a Twisted service: listeners, the admission gate, the clusters
of backends (one L{ClusterAssembly} each), the operator's web endpoint and,
for the demo, an embedded backend.  L{poolproxy.tap} builds it from a
L{ProxyConfig}.

Client connections are capped within the open file limit
(L{poolproxy.config.budget}): each listener's port accepts through its
L{ListenerClients}, which pauses it at its limit or the process's.
"""

from __future__ import annotations

import signal
from dataclasses import replace
from functools import partial
from typing import Any, Callable, Dict, Iterator, List, Optional, Set

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, DeferredList, gatherResults, maybeDeferred, succeed
from twisted.internet.interfaces import IListeningPort
from twisted.internet.task import deferLater
from twisted.logger import Logger

from poolproxy.assemble import ClusterAssembly
from poolproxy.backends.cluster import Backend, Cluster
from poolproxy.backends.discovery import (ClusterMembers, DnsName, Target, make_resolver,
                                          parse_discovery)
from poolproxy.backends.pool import BackendPool
from poolproxy.codec import ICodec
from poolproxy.config import (SETTINGS_BY_NAME, BackendConfig, ConfigError, ListenerConfig,
                              ProxyConfig, codec_options)
from poolproxy.config.budget import WEB_CONNECTIONS, client_cap, descriptor_budget
from poolproxy.config.endpoints import DEFAULT_BACKLOG, server_endpoint
from poolproxy.config.secrets import Secrets
from poolproxy.config.tls import ServerTLS, UpgradeTLS, client_tls, is_tls_listener
from poolproxy.demo import demo_site
from poolproxy.hooks.calling import ListenerHooks
from poolproxy.hooks.loading import HookLoadError
from poolproxy.listening import endpoint_service, fail_startup, listen_reason
from poolproxy.ops.rejections import RejectionSummary
from poolproxy.ops.reload import Rereadable, Reloader
from poolproxy.ops.web import build_site
from poolproxy.proxy.admission import Admission
from poolproxy.proxy.idle import IdleSweeper
from poolproxy.proxy.limits import ConnectionLimits, LimitedFactory, ListenerClients
from poolproxy.proxy.output import OutputBudget
from poolproxy.stats import ListenerStats, Tally
from poolproxy.util.accepting import AcceptGate, AcceptingReactor, CappedFactory
from poolproxy.util.descriptors import open_file_limit
from poolproxy.util.throttled import ThrottledLog
from poolproxy.util.reactors import default_reactor
from poolproxy.util.shutdown_delay import ShutdownDelay
from poolproxy.util.waiting import wait_until
from poolproxy.workers.worker import AdoptedPortService, Handoff, WorkerControl


#: Seconds, once the listeners are closed, before clients with nothing in
#: flight are closed: the last ones accepted get their first request read.
ACCEPT_SETTLE = 0.2


def _settled(chain: "Deferred[Any]") -> "Deferred[Any]":
    """
    A Deferred that fires with C{chain}'s final result: C{chain} itself
    counts as called while it waits on a Deferred one of its callbacks gave.
    """
    done: "Deferred[Any]" = Deferred()
    chain.chainDeferred(done)
    return done


class Listener:
    """
    One client-facing endpoint, the service that listens on it, the factory
    behind it and the cluster it routes to.
    """

    def __init__(self, name: str, factory: Any, service: Any, cluster: Cluster,
                 endpoint: str = "") -> None:
        self.name = name
        self.factory = factory
        self.service = service
        self.cluster = cluster
        self.endpoint = endpoint or name

    @property
    def stats(self) -> ListenerStats:
        return self.factory.stats

    @property
    def port(self) -> Optional[IListeningPort]:
        """The listening port while it listens, else L{None}."""
        return self.service.port

    @property
    def gate(self) -> AcceptGate:
        """What pauses its accepting: its connection limit, the process's, an operator."""
        gate: AcceptGate = self.service.gate
        return gate

    @property
    def connection_limit(self) -> int:
        """The most client connections it may have open: its own cap or the process's."""
        clients: ListenerClients = self.factory.clients
        return clients.limit


def _rename(backend: Backend, name: str) -> None:
    """A draining backend's new name in metrics and logs (its successor has its old one)."""
    backend.name = backend.pool.name = name


class ProxyService(MultiService):
    """
    Everything one C{twistd poolproxy} runs.

    @ivar listeners: the client-facing L{Listener}s.
    @ivar clusters: the L{Cluster}s by name, in the configuration's order.
    @ivar assemblies: what built each cluster, by name (reload asks them
        for new backends).
    @ivar cluster: the first cluster: the only one when configured by flags.
    @ivar descriptors: the open file limit and what is set aside from it.
    @ivar limits: the client connections, against the process's caps.
    @ivar secrets: the passwords and the admin token, as read from their files.
    @ivar server_tls: the certificate and key of each C{ssl:} endpoint
        (listeners, metrics), by endpoint string.
    @ivar client_tls: the certificate and key served to clients that ask
        for TLS on a plain connection (postgres), or L{None}.
    """

    log = Logger()

    def __init__(self, config: ProxyConfig, reactor: Optional[Any] = None,
                 codec: Optional[ICodec] = None,
                 reload_config: Optional[Callable[[], ProxyConfig]] = None,
                 handle_sighup: bool = False, handoff: Optional[Handoff] = None,
                 open_files: Optional[int] = None, resolver: Optional[Any] = None) -> None:
        """
        @param open_files: the open file limit to fit client connections
            in; by default the process's soft limit.
        @param resolver: what resolves C{dns:} and C{srv:} backends (the
            L{twisted.names} lookups L{poolproxy.backends.discovery} calls);
            by default one asking C{dns_resolvers}.
        @raise ConfigError: if the configured caps, or any client
            connection at all, do not fit (L{poolproxy.config.budget}).
        """
        super().__init__()
        reactor = default_reactor(reactor)
        self.config = config
        self.reactor: Any = reactor
        self.descriptors = descriptor_budget(
            config, open_files if open_files is not None else open_file_limit(reactor))
        self.limits = ConnectionLimits(client_cap(config, self.descriptors),
                                       config.max_connections_per_source)
        self.web_accept_errors = Tally()

        if config.demo and handoff is None:  # a worker's supervisor serves the demo
            endpoint_service(server_endpoint(reactor, config.demo), demo_site(),
                             "demo-backend").setServiceParent(self)

        self.admission = Admission(config.max_concurrency, config.queue_size,
                                   config.queue_timeout, clock=reactor)
        self.secrets = Secrets.read(config)
        self.codec_options = codec_options(config, self.secrets)
        self.server_tls: Dict[str, ServerTLS] = {}
        self.client_tls: Optional[UpgradeTLS] = client_tls(
            config.client_tls_cert_file, config.client_tls_key_file, config.client_tls_mode,
            lambda key: config.sources.get(key, SETTINGS_BY_NAME[key].flag))
        # Bytes held for clients that do not read: bounded per client and in all.
        self.output = OutputBudget(config.client_output_limit, config.proxy_output_limit)
        # One cluster per [[cluster]] (or the "default" one built from
        # --backend).  A codec object may be given directly (embedding,
        # tests); else each cluster's protocol plugin is loaded.
        self.assemblies: Dict[str, ClusterAssembly] = {
            spec.name: ClusterAssembly(spec, config, reactor, self.admission,
                                       self.codec_options, codec, output=self.output,
                                       client_tls=self.client_tls)
            for spec in config.clusters}
        self.clusters: Dict[str, Cluster] = {
            name: assembly.cluster for name, assembly in self.assemblies.items()}
        self.cluster = next(iter(self.clusters.values()))
        # Backends a reload removed, draining until their requests are done.
        self._retiring: List[Backend] = []
        # The dns: and srv: entries of every cluster, resolved while running.
        self.dns_names: List[DnsName] = self._dns_names(resolver)

        self.listeners: List[Listener] = []
        self.rejections = RejectionSummary(self.admission, lambda: self.pools, reactor,
                                           listeners=lambda: self.listeners,
                                           web_accept_errors=lambda: self.web_accept_errors)
        self.reloader = Reloader(self, reload_config) if reload_config is not None else None
        self._handle_sighup = handle_sighup and self.reloader is not None
        # On SIGTERM: readiness fails at once, serving goes on for the delay.
        self.stopping = False
        self.shutdown_delay = ShutdownDelay(reactor, config.shutdown_delay,
                                            catch_signals=handle_sighup)
        self.sweepers: List[IdleSweeper] = []
        # Each listener's Python hooks, by listener name (reload imports them again).
        self.hooks: Dict[str, ListenerHooks] = {}
        for spec in config.listeners:
            self.listeners.append(self._listener(spec, handoff))

        # The web endpoint serves WEB_CONNECTIONS at once, within the budget.
        web_gate = AcceptGate()
        site = CappedFactory(build_site(self), WEB_CONNECTIONS, web_gate)
        self.web = endpoint_service(
            self._server_endpoint(AcceptingReactor(reactor, site.room, self.web_accept_errors.add),
                                  config.metrics), site, "metrics", web_gate)
        self.web.setServiceParent(self)
        if handoff is not None:
            WorkerControl(reactor, handoff, lambda: self.web.port).setServiceParent(self)

    def _listener(self, spec: ListenerConfig, handoff: Optional[Handoff]) -> Listener:
        """
        One listener: its mode's factory, whose clients are counted against
        the connection limits, and the service that accepts them (on an
        inherited socket in a worker), paused by its gate at a limit.
        """
        config, reactor = self.config, self.reactor
        assembly = self.assemblies[spec.cluster]
        factory: Any = assembly.frontend(spec.name)
        factory.hooks = self.hooks[spec.name] = self._hooks(spec)
        # The clusters a route hook may choose: those of the listener's protocol.
        factory.routes = {name: other.cluster for name, other in self.assemblies.items()
                          if other.spec.protocol == assembly.spec.protocol}
        gate = AcceptGate()
        # Every mode's frontends add and discard themselves in
        # factory.clients: counting them there costs nothing per request.
        clients = self.limits.listener(factory.stats, gate, spec.max_connections)
        factory.clients = clients
        accepting = LimitedFactory(factory, clients)
        ports = AcceptingReactor(reactor, clients.room, factory.stats.accept_errors.add)
        svc: Any
        if handoff is not None and spec.name in handoff.listeners:
            fd, family = handoff.listeners[spec.name]
            svc = AdoptedPortService(ports, fd, family, accepting, gate)
        else:
            svc = endpoint_service(self._server_endpoint(ports, spec.endpoint,
                                                         config.listen_backlog),
                                   accepting, f"listener {spec.name}", gate)
        svc.setServiceParent(self)
        idle = getattr(config, assembly.mode.idle_timeout)
        if idle:
            self.sweepers.append(IdleSweeper(clients, idle, reactor, factory.stats))
        return Listener(spec.name, factory, svc, assembly.cluster, spec.endpoint)

    def _hooks(self, spec: ListenerConfig) -> ListenerHooks:
        """A listener's hooks, imported; one that does not import stops the start."""
        hooks = ListenerHooks(spec.name, self.reactor, self.config.hook_timeout)
        try:
            hooks.load(self.config.listener_hooks(spec))
        except HookLoadError as e:
            raise ConfigError(str(e)) from None
        return hooks

    def _server_endpoint(self, ports: Any, description: str,
                         backlog: int = DEFAULT_BACKLOG) -> Any:
        """
        An endpoint to listen on, its ports made by C{ports} (a reactor); an
        C{ssl:} one's certificate kept for reloads.
        """
        tls = None
        if is_tls_listener(description):
            tls = self.server_tls.get(description)
            if tls is None:
                tls = self.server_tls[description] = ServerTLS(description, description)
        return server_endpoint(ports, description, backlog, tls)

    def _dns_names(self, resolver: Optional[Any]) -> List[DnsName]:
        """
        One L{DnsName} per C{dns:}/C{srv:} entry, whose answers add and
        retire backends as a reload does; one resolver for them all.
        """
        config = self.config
        if not any(spec.discovered for spec in config.clusters):
            return []
        if resolver is None:
            resolver = make_resolver(config.dns_resolvers, self.reactor)
        throttled = ThrottledLog(DnsName.log, self.reactor)
        names = []
        for spec in config.clusters:
            for entry in spec.discovered:
                found = parse_discovery(entry.address)
                assert found is not None
                members = ClusterMembers(spec.name, self._dns_adder(spec.name, entry),
                                         partial(self.retire_backend, spec.name),
                                         self.clusters[spec.name].set_weight, _rename)
                names.append(DnsName(
                    spec.name, found, resolver, self.reactor, members,
                    min_ttl=config.dns_min_ttl, max_ttl=config.dns_max_ttl,
                    empty_hold=config.dns_empty_hold,
                    max_ejected_share=spec.setting("max_ejected_percent", config) / 100.0,
                    throttled=throttled))
        return names

    def discovered(self, cluster: str) -> Set[str]:
        """The names of the backends DNS brought into C{cluster}."""
        return {member for name in self.dns_names if name.cluster == cluster
                for member in name.members.names()}

    def _dns_adder(self, cluster: str, entry: BackendConfig) -> Callable[[Target], Optional[Backend]]:
        """
        How a DNS answer's target joins C{cluster}: a backend named by the
        target, weighted by SRV (else by the entry's weight); not if a
        backend of that name is there already (another entry, or given by
        address), which is logged.
        """
        def add(target: Target) -> Optional[Backend]:
            if any(b.name == target.member for b in self.clusters[cluster].backends):
                self.log.warn("cluster {cluster}: {entry} names {backend}, which the cluster "
                              "has already; not added twice", cluster=cluster,
                              entry=entry.address, backend=target.member)
                return None
            weight = target.weight if entry.address.lower().startswith("srv:") else entry.weight
            return self.add_backend(cluster, BackendConfig(target.member, target.address, weight))

        return add

    def rereadable(self) -> List[Rereadable]:
        """What SIGHUP reads again from its files: secrets, certificates, CAs, users files."""
        items: List[Rereadable] = list(self.secrets.files.values())
        items += self.server_tls.values()
        if self.client_tls is not None:
            items.append(self.client_tls)
        items += [assembly.tls for assembly in self.assemblies.values() if assembly.tls is not None]
        items += [item for assembly in self.assemblies.values()
                  for item in assembly.context.rereadable]
        return items

    # -- backends ------------------------------------------------------------

    def backends(self) -> Iterator[Backend]:
        """Every backend: those of the clusters, then those still draining."""
        for cluster in self.clusters.values():
            yield from cluster.backends
        yield from self._retiring

    @property
    def pools(self) -> List[BackendPool]:
        """One L{BackendPool} per backend (draining ones included)."""
        return [backend.pool for backend in self.backends()]

    def add_backend(self, cluster: str, spec: BackendConfig) -> Backend:
        """A new backend joins cluster C{cluster} (reload), started if the proxy runs."""
        backend = self.assemblies[cluster].new_backend(spec)
        self.clusters[cluster].add(backend)
        self._reserve_descriptors(backend)
        if self.running:
            backend.start()
        return backend

    def _reserve_descriptors(self, backend: Backend) -> None:
        """
        A backend added at run time needs descriptors for its pool and its
        health checks: they come out of the client connections' share, so
        the cap shrinks if it no longer fits (logged).
        """
        budget = self.descriptors = replace(
            self.descriptors, pools=self.descriptors.pools + backend.pool.size,
            health_checks=self.descriptors.health_checks + (backend.health is not None))
        if budget.clients < self.limits.cap:
            self.limits.set_cap(max(1, budget.clients))
            self.log.warn("backend {backend} added: client connections now capped at {cap} "
                          "({how})", backend=backend.name, cap=self.limits.cap,
                          how=budget.describe())

    def _release_descriptors(self, backend: Backend) -> None:
        """
        A retired backend gives its descriptors back, and the client cap
        grows back within the budget, so that backends that come and go
        (DNS) do not shrink it for good.
        """
        budget = self.descriptors = replace(
            self.descriptors, pools=self.descriptors.pools - backend.pool.size,
            health_checks=self.descriptors.health_checks - (backend.health is not None))
        given = self.config.max_client_connections
        cap = budget.clients if given is None else min(given, budget.clients)
        if cap > self.limits.cap:
            self.limits.set_cap(cap)
            self.log.info("backend {backend} closed: client connections now capped at {cap} "
                          "({how})", backend=backend.name, cap=cap, how=budget.describe())

    def retire_backend(self, cluster: str, backend: Backend) -> "Deferred[None]":
        """
        C{backend} leaves cluster C{cluster} (reload): it gets no new request,
        and is closed once those in flight are done, or after
        C{shutdown_timeout} seconds.

        @return: a L{Deferred} that fires once it is closed.
        """
        backend.draining = True
        self.clusters[cluster].remove(backend)
        self._retiring.append(backend)

        def close(_: bool) -> "Deferred[None]":
            if backend in self._retiring:
                self._retiring.remove(backend)
                self._release_descriptors(backend)
            return backend.close()

        return wait_until(self.reactor, lambda: backend.outstanding == 0,
                          self.config.shutdown_timeout).addCallback(close)

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
                                       f"cannot listen: {listen_reason(e)}")
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
        """
        Whether every cluster can get a backend connection, and the proxy is
        not stopping (for /readyz).
        """
        return not self.stopping and all(cluster.ready for cluster in self.clusters.values())

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
        for backend in self.backends():
            backend.start()
        for name in self.dns_names:
            name.start()
        for listener in self.listeners:
            cluster = listener.cluster
            self.log.info(
                "poolproxy listening on {listen} ({protocol}) for cluster {cluster}: "
                "{backends} ({policy})", listen=listener.endpoint,
                protocol=self.assemblies[cluster.name].codec.name, cluster=cluster.name,
                policy=cluster.policy_name, backends=", ".join(b.name for b in cluster.backends))
        self.log.info("metrics on {metrics}", metrics=self.config.metrics)
        how = ("max_client_connections; " if self.config.max_client_connections is not None
               else "") + self.descriptors.describe()
        self.log.info("client connections: at most {cap} at once ({how})",
                      cap=self.limits.cap, how=how)

    def stopService(self) -> "Deferred[Any]":
        """
        Graceful shutdown (SIGTERM): /readyz fails at once; after
        shutdown_delay seconds of serving as usual, stop accepting, let
        clients finish what is in flight for up to shutdown_timeout seconds,
        then close what is left, the backends (checks, shared connections,
        pools) and the web endpoint.
        """
        if not self.running or self.stopping:
            return succeed(None)  # stopping already (or never started)
        self.stopping = True
        if self.config.shutdown_delay <= 0:
            return self._drain()
        return _settled(self.shutdown_delay.start().addCallback(lambda _: self._drain()))

    def _drain(self) -> "Deferred[Any]":
        """Stop accepting, let what is in flight finish, then close everything."""
        if self._handle_sighup:
            signal.signal(signal.SIGHUP, signal.SIG_DFL)
        Service.stopService(self)
        listening = [listener.service for listener in self.listeners]
        stopping = [maybeDeferred(svc.stopService) for svc in listening]
        self.rejections.stop()
        for name in self.dns_names:
            name.stop()
        for sweeper in self.sweepers:
            sweeper.stop()
        # A client accepted just before the listener closed has likely not
        # had its first request read yet: finishing it now would close it
        # unanswered (a worker replaced on a shared socket sees this).
        settle = min(ACCEPT_SETTLE, self.config.shutdown_timeout)

        def finish_up(_: object = None) -> "Deferred[None]":
            for listener in self.listeners:
                for client in list(listener.factory.clients):
                    client.finish_up()
            return self._clients_done(self.config.shutdown_timeout - settle)

        waited = (deferLater(self.reactor, settle, lambda: None).addCallback(finish_up)
                  if settle > 0 else finish_up())

        def close(_: object) -> "Deferred[Any]":
            for listener in self.listeners:
                for client in list(listener.factory.clients):
                    client.transport.loseConnection()
            closed = gatherResults([backend.close() for backend in list(self.backends())])
            others = [maybeDeferred(svc.stopService)
                      for svc in reversed(list(self)) if svc not in listening]
            return DeferredList(stopping + others + [closed])

        return _settled(waited.addCallback(close))

    def _clients_done(self, timeout: float) -> "Deferred[None]":
        """Fires once no client connection is left, or after C{timeout} seconds."""
        def left() -> int:
            return sum(len(listener.factory.clients) for listener in self.listeners)

        def report(done: bool) -> None:
            if not done:
                self.log.warn("shutdown: {n} client connections still busy after "
                              "{timeout}s; closing them", n=left(), timeout=timeout)

        return wait_until(self.reactor, lambda: not left(), timeout).addCallback(report)
