"""
The pooling modes, one record each.

A codec names its mode (L{ICodec.mode}); the record says how that mode is
served: what serves a client connection (the frontend factory), what speaks
on a pooled backend connection (the backend protocol), what the mode keeps
beside each backend's pool (multiplexed mode's shared connections), the
default balancing policy, the active health probe, and the setting that
times idle clients out.  Nothing else in poolproxy asks which mode a codec has: adding a
mode is adding a record to L{MODES}.

    mode         frontend            backend protocol   pooling
    session      SessionFrontend     SessionBackend     a lease per client session
    request      HttpFrontend        HttpBackend        a lease per request
    multiplexed  MultiplexFrontend   PipelineBackend    shared connections (Multiplexer)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Collection, Dict, List, Optional, Protocol, cast

from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, IStreamClientEndpoint
from twisted.logger import Logger

from poolproxy.backends import health
from poolproxy.backends.cluster import Backend, Cluster, SharedConnections
from poolproxy.backends.pool import BackendProtocol
from poolproxy.codec import ICodec, IProbingCodec, IVariantCodec
from poolproxy.codecs.http import HttpCodec
from poolproxy.codecs.postgres_login import ServerLogin
from poolproxy.config import CodecOptions, ProxyConfig
from poolproxy.config.settings import HTTP_FAILURE_STATUSES
from poolproxy.config.tls import UpgradeTLS
from poolproxy.hooks.calling import ListenerHooks
from poolproxy.proxy.admission import Admission
from poolproxy.proxy.multiplexed.client import MultiplexFactory
from poolproxy.proxy.multiplexed.server import Multiplexer, PipelineBackend
from poolproxy.proxy.output import OutputBudget
from poolproxy.proxy.forwarded import TrustedProxies
from poolproxy.proxy.request import HttpBackend, HttpFactory, HttpLimits, route_key
from poolproxy.proxy.session import SessionBackend, SessionFactory
from poolproxy.proxy.transaction.auth import Users
from poolproxy.proxy.transaction.client import TransactionFactory
from poolproxy.proxy.transaction.lookup import AuthQuery
from poolproxy.proxy.transaction.server import KeyedPools
from poolproxy.stats import ListenerStats

_log = Logger(namespace="poolproxy.cluster")


@dataclass(frozen=True)
class ClusterContext:
    """
    What a mode builds one cluster's parts with.

    @ivar setting: the cluster's value of a setting (its own override, else
        the top-level one).
    @ivar output: the process's limits on replies held for clients.
    """

    codec: ICodec
    config: ProxyConfig
    options: CodecOptions
    admission: Admission
    reactor: Any
    setting: Callable[[str], Any]
    output: OutputBudget
    #: What a mode keeps for the whole cluster, by name (transaction mode:
    #: its users file and statement names), made on first use.
    kept: Dict[str, Any] = field(default_factory=dict)
    #: What the mode reads from files (transaction mode: its users file),
    #: for SIGHUP to read again (L{poolproxy.ops.reload.Rereadable}).
    rereadable: List[Any] = field(default_factory=list)
    #: The certificate served to clients that ask for TLS on their plain
    #: connection (transaction mode's SSLRequest), if one is configured.
    client_tls: Optional[UpgradeTLS] = None


class FrontendFactory(Protocol):
    """
    What every mode's factory of client connections has (a Twisted protocol
    factory besides): its listener's counters and its open client
    connections, each with C{finish_up()} (the proxy is stopping) and, for
    the idle sweep, C{last_active}, C{busy} and C{close_idle()}.  Clients
    add and discard themselves in C{clients}, which the service replaces
    with one that counts them (L{poolproxy.proxy.limits.ListenerClients}).
    The service also gives it its listener's C{hooks} and the clusters its
    route hook may choose (C{routes}, by name).
    """

    hooks: ListenerHooks
    routes: Dict[str, Cluster]

    @property
    def stats(self) -> ListenerStats: ...

    @property
    def clients(self) -> Collection[Any]: ...

    def buildProtocol(self, addr: Any) -> Any: ...


#: A mode's frontend: the factory of one listener's client connections.
Frontend = Callable[[str, Cluster, ClusterContext], FrontendFactory]
#: A mode's backend protocol: what makes each new connection of a backend's pool.
BackendProtocolFactory = Callable[[Backend, ClusterContext], Callable[[], BackendProtocol]]
#: A mode's active health probe for one backend's endpoint, and the TLS its
#: connections ask for themselves (a mode that L{Mode.starts_tls}; else None).
ProbeFactory = Callable[[IStreamClientEndpoint, ClusterContext,
                         Optional[IOpenSSLClientConnectionCreator]], health.Probe]
#: What a mode keeps beside a backend's pool.
Shared = Callable[[Backend, ClusterContext], SharedConnections]


@dataclass(frozen=True)
class Mode:
    """
    How one pooling mode is served.

    @ivar name: the L{ICodec.mode} value.
    @ivar balance: the balancing policy of a cluster that names none.
    @ivar idle_timeout: the setting whose seconds close an idle client
        connection: C{client_idle_timeout} (nothing sent, nothing in flight),
        or for tcp C{session_idle_timeout} (no byte either way: a tcp
        session has no "between requests" to be idle in).
    @ivar shared: what the mode keeps beside each backend's pool, or L{None}.
    @ivar starts_tls: its backend connections ask for TLS themselves
        (PostgreSQL's SSLRequest): C{backend_tls} is given to them
        (L{Backend.tls}) rather than wrapped around the backend's endpoint,
        and to the health probe, which asks for it as they do.
    """

    name: str
    frontend: Frontend
    backend_protocol: BackendProtocolFactory
    probe: ProbeFactory
    balance: str
    idle_timeout: str
    shared: Optional[Shared] = None
    starts_tls: bool = False


# -- session (tcp) -------------------------------------------------------------

def _session_frontend(name: str, cluster: Cluster, context: ClusterContext) -> FrontendFactory:
    return SessionFactory(name, context.admission, cluster, clock=context.reactor,
                          send_timeout=context.config.send_timeout)


def _session_backend(backend: Backend, context: ClusterContext) -> Callable[[], BackendProtocol]:
    return SessionBackend


def _tcp_probe(endpoint: IStreamClientEndpoint, context: ClusterContext,
               tls: Optional[IOpenSSLClientConnectionCreator] = None) -> health.Probe:
    return health.tcp_probe(endpoint)


# -- request (http) ------------------------------------------------------------

def _request_frontend(name: str, cluster: Cluster, context: ClusterContext) -> FrontendFactory:
    setting, config = context.setting, context.config
    # Request mode's codec is http's: its framers are event parsers (HttpCodec).
    return HttpFactory(name, cast(HttpCodec, context.codec), context.options,
                       context.admission, cluster, context.reactor, setting("request_timeout"),
                       route_key=route_key(setting("hash_key")),
                       failure_statuses=HTTP_FAILURE_STATUSES[setting("http_failures")],
                       retry_budget=cluster.retry_budget,
                       limits=HttpLimits.from_config(config),
                       access_log_sample=config.access_log_sample,
                       trusted_proxies=TrustedProxies(config.trusted_proxies),
                       output=context.output)


def _request_backend(backend: Backend, context: ClusterContext) -> Callable[[], BackendProtocol]:
    codec = cast(HttpCodec, context.codec)
    return lambda: HttpBackend(codec)


def _http_probe(endpoint: IStreamClientEndpoint, context: ClusterContext,
                tls: Optional[IOpenSSLClientConnectionCreator] = None) -> health.Probe:
    return health.http_probe(endpoint, context.setting("check_path").encode("utf-8"))


# -- multiplexed (redis, memcached...) ---------------------------------------

def _multiplexed_frontend(name: str, cluster: Cluster,
                          context: ClusterContext) -> FrontendFactory:
    return MultiplexFactory(name, context.codec, context.options, context.admission, cluster,
                            clock=context.reactor, output=context.output,
                            max_pipeline=context.config.max_pipeline,
                            send_timeout=context.config.send_timeout)


def _multiplexed_backend(backend: Backend,
                         context: ClusterContext) -> Callable[[], BackendProtocol]:
    codec, admission, clock = context.codec, context.admission, context.reactor
    options = context.options
    timeout = context.setting("request_timeout")
    max_reply = context.config.max_reply_size or None
    # The setup (AUTH...) is made for each connection: SIGHUP may have
    # changed the backend password since the last one.
    return lambda: PipelineBackend(codec, codec.setup_frames(options), admission, backend,
                                   clock, timeout, max_reply)


def _multiplexer(backend: Backend, context: ClusterContext) -> SharedConnections:
    codec = context.codec
    # variant -> the frames that switch a pooled connection to it (RESP3).
    variant_setup = (partial(IVariantCodec(codec).variant_setup, context.options)
                     if IVariantCodec.providedBy(codec) else None)
    return Multiplexer(backend.pool, context.setting("mux_connections"),
                       variant_setup=variant_setup, clock=context.reactor)


def _codec_probe(endpoint: IStreamClientEndpoint, context: ClusterContext,
                 tls: Optional[IOpenSSLClientConnectionCreator] = None) -> health.Probe:
    codec = context.codec
    if not IProbingCodec.providedBy(codec) or codec.probe() is None:
        return health.tcp_probe(endpoint)
    if codec.setup_frames(context.options):
        # A probe would need the setup (AUTH) too: a connect is what we can check.
        return health.tcp_probe(endpoint)
    return health.codec_probe(endpoint, codec)


# -- transaction (postgres) ---------------------------------------------------

def _users(context: ClusterContext) -> Users:
    users = context.kept.get("users")
    if users is None:
        config, options = context.config, context.options
        auth_query = (AuthQuery(config.auth_user, config.auth_query, config.auth_query_timeout,
                                context.reactor) if config.auth_user else None)
        users = context.kept["users"] = Users(
            config.auth_type, config.auth_file, config.backend_username,
            lambda: options.backend_password, auth_query)
        context.rereadable.append(users)
    return cast(Users, users)


def _transaction_frontend(name: str, cluster: Cluster,
                          context: ClusterContext) -> FrontendFactory:
    config = context.config
    return TransactionFactory(name, context.codec, context.admission, cluster, _users(context),
                              clock=context.reactor,
                              session_pooling=context.setting("pool_mode") == "session",
                              max_message=context.options.max_request_size,
                              send_timeout=config.send_timeout,
                              login_timeout=config.header_timeout,
                              tls=context.client_tls,
                              tls_required=config.client_tls_mode == "require")


def _transaction_backend(backend: Backend,
                         context: ClusterContext) -> Callable[[], BackendProtocol]:
    # The backend's own pool only carries the settings its (database, user)
    # pools are made with (KeyedPools): it never connects.
    return BackendProtocol


def _keyed_pools(backend: Backend, context: ClusterContext) -> SharedConnections:
    users = _users(context)
    return KeyedPools(backend, lambda key: users.credentials(key[1]), context.reactor,
                      context.config.server_reset_timeout,
                      context.setting("max_prepared_statements"))


def _transaction_probe(endpoint: IStreamClientEndpoint, context: ClusterContext,
                       tls: Optional[IOpenSSLClientConnectionCreator] = None) -> health.Probe:
    """
    Log in as the check user (auth_user, else backend_username) to
    check_database and run SELECT 1; with neither user, a TCP connect,
    and one line per cluster saying why.
    """
    config = context.config
    user = config.auth_user or config.backend_username
    if user is None:
        if not context.kept.get("probe_said"):
            context.kept["probe_said"] = True
            _log.info("postgres health checks only connect (TCP): they log in and run "
                      "SELECT 1 as auth_user, else backend_username, and neither is set")
        return health.tcp_probe(endpoint)
    users = _users(context)
    name, database = user.encode("utf-8"), config.check_database.encode("utf-8")

    def login() -> ServerLogin:
        # Made for each probe: SIGHUP may have changed a password since.
        credentials = users.credentials(name)
        return ServerLogin(credentials.user or name, database, credentials)

    return health.postgres_probe(endpoint, login, tls=tls)


MODES: Dict[str, Mode] = {mode.name: mode for mode in (
    Mode("session", _session_frontend, _session_backend, _tcp_probe,
         balance="round_robin", idle_timeout="session_idle_timeout"),
    Mode("request", _request_frontend, _request_backend, _http_probe,
         balance="least_outstanding", idle_timeout="client_idle_timeout"),
    Mode("multiplexed", _multiplexed_frontend, _multiplexed_backend, _codec_probe,
         balance="consistent_hash", idle_timeout="client_idle_timeout",
         shared=_multiplexer),
    Mode("transaction", _transaction_frontend, _transaction_backend, _transaction_probe,
         balance="round_robin", idle_timeout="client_idle_timeout", shared=_keyed_pools,
         starts_tls=True),
)}


def mode_of(codec: ICodec) -> Mode:
    """
    The record of C{codec}'s mode.

    @raise ValueError: no such mode.
    """
    mode = MODES.get(codec.mode)
    if mode is None:
        raise ValueError(f"protocol {codec.name!r} has an unknown mode {codec.mode!r}; "
                         f"modes are {', '.join(MODES)}")
    return mode


__all__ = ["ClusterContext", "FrontendFactory", "Mode", "MODES", "mode_of"]
