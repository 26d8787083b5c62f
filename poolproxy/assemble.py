"""
Building one cluster from its configuration: a codec and its pooling mode
(L{poolproxy.proxy.modes}), and for each backend a pool speaking the mode's
backend protocol, a circuit breaker, a health check with the mode's probe and
what the mode keeps beside the pool; then the cluster's listeners' factories.
L{ProxyService} keeps one assembly per C{[[cluster]]}, and asks it again for
a backend that a reload adds.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable, Optional

from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.logger import Logger

from poolproxy.backends.breaker import BreakerSettings, CircuitBreaker
from poolproxy.backends.cluster import Backend, Cluster
from poolproxy.backends.health import HealthCheck
from poolproxy.backends.pool import BackendPool, BackendProtocol
from poolproxy.backends.retry import RetryBudget
from poolproxy.codec import ICodec
from poolproxy.config import BackendConfig, ClusterConfig, CodecOptions, ProxyConfig
from poolproxy.config.endpoints import backend_host, client_endpoint
from poolproxy.config.tls import ClientTLS, UpgradeTLS, check_server_name
from poolproxy.plugins import load_codec
from poolproxy.proxy.admission import Admission
from poolproxy.proxy.modes import ClusterContext, FrontendFactory, Mode, mode_of
from poolproxy.proxy.output import OutputBudget
from poolproxy.util.tlsclient import TLSClientEndpoint

log = Logger(namespace="poolproxy.cluster")


class ClusterAssembly:
    """
    One L{Cluster}, built from C{spec} when the assembly is made.

    @ivar codec: the cluster's codec (its protocol plugin's, unless given).
    @ivar mode: the codec's pooling mode.
    @ivar tls: the cluster's C{backend_tls} material, or L{None} without TLS.
    @ivar cluster: the L{Cluster}.
    """

    def __init__(self, spec: ClusterConfig, config: ProxyConfig, reactor: Any,
                 admission: Admission, options: CodecOptions,
                 codec: Optional[ICodec] = None,
                 endpoint: Optional[Callable[[str], IStreamClientEndpoint]] = None,
                 output: Optional[OutputBudget] = None,
                 client_tls: Optional[UpgradeTLS] = None) -> None:
        """
        @param codec: the cluster's codec, if not its protocol plugin's.
        @param output: the process's output limits, shared by every cluster
            (a new one from C{config} if not given).
        @param endpoint: makes the client endpoint of a backend's address,
            if not Twisted's (L{poolproxy.testing.MultiplexHarness} gives
            fakes).
        @param client_tls: the certificate served to clients that ask for
            TLS on their plain connection (postgres), if any.
        """
        self.spec = spec
        self.config = config
        self.reactor = reactor
        self._endpoint = endpoint or (lambda address: client_endpoint(reactor, address))
        self.codec: ICodec = codec if codec is not None else load_codec(spec.protocol)
        self.mode: Mode = mode_of(self.codec)
        # The command policy may differ per cluster, and the codec may say
        # what max_request_size is unless configured (memcached: 1 MiB).
        size: int = (config.max_request_size if config.max_request_size is not None
                     else getattr(self.codec, "default_max_request_size", options.max_request_size))
        options = replace(options, max_request_size=size,
                          deny_commands=self.setting("deny_commands"),
                          allow_commands=self.setting("allow_commands"),
                          unknown_commands=self.setting("unknown_commands"))
        if output is None:
            output = OutputBudget(config.client_output_limit, config.proxy_output_limit)
        self.context = ClusterContext(self.codec, config, options, admission, reactor,
                                      self.setting, output, client_tls=client_tls)
        tls = self.setting("backend_tls")
        self.tls = ClientTLS(tls, f"cluster {spec.name}: backend_tls") if tls else None
        if tls is not None and not tls.verify:
            log.warn("cluster {cluster}: TLS to its backends checks no certificate and no "
                     "name (backend_tls verify = false)", cluster=spec.name)
        tag = self.setting("hash_tag")
        self.cluster = Cluster(
            spec.name, [self._backend(b) for b in spec.backends],
            spec.balance or self.mode.balance,
            max_ejected_share=self.setting("max_ejected_percent") / 100.0,
            hash_tag=tag.encode("ascii") if tag else None,
            retry_budget=RetryBudget(config.retry_budget_percent / 100.0),
            remap_on_eject=self.setting("shard_on_eject") == "remap",
            discovered=bool(spec.discovered))

    def setting(self, key: str) -> Any:
        """This cluster's value of setting C{key}."""
        return self.spec.setting(key, self.config)

    def frontend(self, listener: str) -> FrontendFactory:
        """The factory of listener C{listener}'s client connections."""
        return self.mode.frontend(listener, self.cluster, self.context)

    def new_backend(self, spec: BackendConfig) -> Backend:
        """A backend for the built cluster (a reload adds it)."""
        return self._backend(spec)

    def _backend(self, spec: BackendConfig) -> Backend:
        """A backend: its pool, and its breaker and health check if they are on."""
        s, config = self.setting, self.config
        endpoint = self._endpoint(spec.address)
        tls = None
        if self.tls is not None:
            name = check_server_name(self.tls.spec, backend_host(spec.address), spec.address,
                                     self.tls.where)
            tls = self.tls.creator(name)
            if not self.mode.starts_tls:
                # The pool and the health checks both connect through it.
                endpoint = TLSClientEndpoint(endpoint, tls, self.reactor)
                tls = None
        pool = BackendPool(
            spec.name, endpoint, BackendProtocol,  # the mode's protocol, set below
            size=s("pool_size"), min_idle=s("pool_min_idle"),
            max_waiters=config.pool_max_waiters, acquire_timeout=config.pool_acquire_timeout,
            connect_timeout=config.connect_timeout, idle_timeout=config.idle_timeout,
            max_lifetime=config.max_lifetime, max_uses=config.max_uses,
            health_interval=config.health_interval, clock=self.reactor, cluster=self.spec.name)
        backend = Backend(spec.name, pool, spec.weight)
        backend.tls = tls
        # The mode's backend protocol and shared connections name the backend.
        pool.protocol_factory = self.mode.backend_protocol(backend, self.context)
        if self.mode.shared is not None:
            backend.shared = self.mode.shared(backend, self.context)
        if s("breaker_failures"):
            reset = s("breaker_reset_timeout")
            backend.breaker = CircuitBreaker(
                BreakerSettings(s("breaker_failures"), reset,
                                max(s("breaker_max_reset_timeout"), reset)),
                clock=self.reactor,
                on_change=lambda old, new: _breaker_changed(backend, old, new),
                may_open=lambda: self.cluster.may_eject())
        if s("check_interval"):
            backend.health = HealthCheck(
                spec.name, self.mode.probe(endpoint, self.context, tls),
                interval=s("check_interval"), timeout=s("check_timeout"),
                rise=s("check_rise"), fall=s("check_fall"), clock=self.reactor,
                on_change=lambda old, new, why: _health_changed(backend, old, new, why))
        return backend


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
