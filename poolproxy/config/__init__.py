"""
The validated configuration (L{ProxyConfig}) and how it is built
(L{build_config}) from built-in defaults, the TOML file and the flags, with
the settings table in L{poolproxy.config.settings} and listeners and clusters in
L{poolproxy.config.topology}.

Precedence: built-in defaults < the TOML file given by C{--config} < flags.
Every error is a L{ConfigError} whose message is one line naming the flag or
key and what is wrong with it.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

# The settings table and the topology live in their own modules; their names
# are re-exported here, where the rest of poolproxy has always found them.
from poolproxy.config.settings import (  # noqa: F401 (re-exported)
    AUTH_QUERY,
    BALANCE_POLICIES,
    BackendTLS,
    CLUSTER_OVERRIDES,
    SETTINGS,
    SETTINGS_BY_NAME,
    ConfigError,
    _check_choice,
    _located,
    check_ordered,
    coerce,
    protocol_names,
    read_secret,
    shares_connections,
)
from poolproxy.config.secrets import Secrets
from poolproxy.config.tls import client_tls
from poolproxy.config.topology import (  # noqa: F401 (re-exported)
    BackendConfig,
    ClusterConfig,
    ListenerConfig,
    _clusters_from_tables,
    _flat_listeners,
    _flat_topology,
    _listeners_from_tables,
    check_backend_tls,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on PyPy 3.9
    import tomli as tomllib


@dataclass(frozen=True)
class ProxyConfig:
    """
    A validated configuration.  Field names are the TOML keys, except
    C{listeners} and C{clusters}: what to listen on and proxy to, computed by
    L{build_config} from the C{[[listener]]} and C{[[cluster]]} tables or else
    from the flat C{listen}, C{backend} and C{demo} keys (which keep the values
    given, and are empty when the tables are used).

    Constructed directly (embedding, tests) with neither C{listeners} nor
    C{clusters}, both are derived from the flat keys as L{build_config} does.
    """

    listen: Tuple[str, ...] = ()
    backend: Tuple[str, ...] = ()
    protocol: str = "tcp"
    metrics: str = "tcp:9090:interface=127.0.0.1"
    pool_size: int = 10
    pool_min_idle: int = 0
    pool_max_waiters: int = 1000
    pool_acquire_timeout: float = 5.0
    max_concurrency: int = 1000
    queue_size: int = 1000
    queue_timeout: float = 5.0
    max_client_connections: Optional[int] = None
    max_connections_per_source: int = 0
    listen_backlog: int = 1024
    session_idle_timeout: float = 3600.0
    connect_timeout: float = 5.0
    idle_timeout: float = 60.0
    max_lifetime: float = 3600.0
    max_uses: int = 0
    health_interval: float = 2.0
    demo: Optional[str] = None
    request_timeout: float = 30.0
    max_request_size: Optional[int] = None
    max_reply_size: int = 64 * 1024 * 1024
    max_pipeline: int = 1024
    client_output_limit: int = 32 * 1024 * 1024
    proxy_output_limit: int = 512 * 1024 * 1024
    mux_connections: int = 2
    backend_password_file: Optional[str] = None
    backend_username: Optional[str] = None
    backend_db: int = 0
    client_password_file: Optional[str] = None
    pool_mode: str = "transaction"
    auth_type: str = "scram-sha-256"
    auth_file: Optional[str] = None
    max_prepared_statements: int = 200
    server_reset_timeout: float = 10.0
    auth_user: Optional[str] = None
    auth_query: str = AUTH_QUERY
    auth_query_timeout: float = 5.0
    check_database: str = "postgres"
    admin_token_file: Optional[str] = None
    backend_tls: Optional[BackendTLS] = None
    client_tls_cert_file: Optional[str] = None
    client_tls_key_file: Optional[str] = None
    client_tls_mode: str = "allow"
    balance: Optional[str] = None
    hash_key: Optional[str] = None
    check_interval: float = 2.0
    check_timeout: float = 1.0
    check_rise: int = 2
    check_fall: int = 3
    check_path: str = "/"
    breaker_failures: int = 5
    breaker_reset_timeout: float = 5.0
    breaker_max_reset_timeout: float = 60.0
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    body_total_timeout: float = 300.0
    client_idle_timeout: float = 600.0
    send_timeout: float = 60.0
    retry_budget_percent: float = 20.0
    access_log_sample: float = 0.0
    tunnel_idle_timeout: float = 300.0
    request_buffer_size: int = 64 * 1024
    response_buffer_size: int = 1024 * 1024
    trusted_proxies: Tuple[str, ...] = ()
    shutdown_delay: float = 0.0
    shutdown_timeout: float = 10.0
    watch_config: bool = False
    max_ejected_percent: float = 50.0
    http_failures: str = "5xx"
    hash_tag: Optional[str] = None
    shard_on_eject: str = "remap"
    dns_resolvers: Tuple[str, ...] = ()
    dns_min_ttl: float = 5.0
    dns_max_ttl: float = 300.0
    dns_empty_hold: float = 30.0
    deny_commands: Optional[Tuple[str, ...]] = None
    allow_commands: Tuple[str, ...] = ()
    unknown_commands: str = "refuse"
    workers: int = 1
    hooks: Tuple[Tuple[str, str], ...] = ()
    hook_timeout: float = 1.0
    listeners: Tuple[ListenerConfig, ...] = ()
    clusters: Tuple[ClusterConfig, ...] = ()
    # Where each value came from, for error messages: name -> "--flag" or "key (in FILE)";
    # also "listeners" and "clusters" -> e.g. "--listen", "[[cluster]] (in FILE)".
    sources: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not self.listeners and not self.clusters:
            listeners, clusters = _flat_topology(self.listen, self.backend, self.demo,
                                                 self.protocol, self.balance, self.hash_key)
            object.__setattr__(self, "listeners", listeners)
            object.__setattr__(self, "clusters", clusters)

    def listener_hooks(self, listener: ListenerConfig) -> Dict[str, str]:
        """A listener's hooks, point -> C{module:callable}: its own over the top level's."""
        hooks = dict(self.hooks)
        hooks.update(listener.hooks)
        return {point: spec for point, spec in hooks.items() if spec}

    def cluster(self, name: str) -> ClusterConfig:
        """
        The cluster called C{name}.

        @raise KeyError: if there is none.
        """
        for cluster in self.clusters:
            if cluster.name == name:
                return cluster
        raise KeyError(name)


def _check_table_matches_dataclass() -> None:
    computed = ("listeners", "clusters", "sources")
    declared = [(f.name, f.default) for f in fields(ProxyConfig) if f.name not in computed]
    assert declared == [(s.name, s.default) for s in SETTINGS], "SETTINGS and ProxyConfig disagree"


_check_table_matches_dataclass()


def load_toml(path: str) -> Dict[str, Any]:
    """
    Read a TOML configuration file.

    @return: the top-level table.
    @raise ConfigError: if the file cannot be read or parsed.
    """
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"--config: cannot read {path}: {e.strerror or e}") from None
    except tomllib.TOMLDecodeError as e:
        reason = (str(e).strip().splitlines() or ["parse error"])[0]
        raise ConfigError(f"--config: {path} is not valid TOML: {reason}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"--config: {path} is not valid TOML: not UTF-8 text "
                          f"(byte {e.object[e.start]:#04x} at offset {e.start})") from None


def build_config(
    file_values: Mapping[str, Any],
    flag_values: Mapping[str, Any],
    file_name: str = "",
    endpoint_checks: Optional[Mapping[str, Callable[[str, str], None]]] = None,
) -> ProxyConfig:
    """
    Merge defaults, file values and flag values into a validated L{ProxyConfig}.

    @param file_values: the TOML table (keys with underscores), which may hold
        C{[[listener]]} and C{[[cluster]]} tables.
    @param flag_values: values given on the command line, keyed by setting
        name; a value of L{None} means "not given".
    @param file_name: the TOML file's name, for messages.
    @param endpoint_checks: setting name -> function(value, where) raising
        L{ConfigError} for a bad endpoint; see L{poolproxy.config.endpoints}.  The
        C{listen} check also applies to C{[[listener]]} endpoints and the
        C{backend} check to C{[[cluster.backend]]} addresses.
    """
    checks = endpoint_checks or {}
    file_values = dict(file_values)
    listener_tables = file_values.pop("listener", None)
    cluster_tables = file_values.pop("cluster", None)
    values: Dict[str, Any] = {}
    sources: Dict[str, str] = {}
    for key, raw in file_values.items():
        location = _located(key, file_name)
        setting = SETTINGS_BY_NAME.get(key)
        if setting is None:
            raise ConfigError(f"{location}: unknown key; known keys are "
                              f"{', '.join(SETTINGS_BY_NAME)}, [[listener]], [[cluster]]")
        values[key] = coerce(setting, raw, location, text_ok=False)
        sources[key] = location
    for key, raw in flag_values.items():
        if raw is None or (SETTINGS_BY_NAME[key].kind in ("list", "hooks") and not raw):
            continue
        setting = SETTINGS_BY_NAME[key]
        values[key] = coerce(setting, raw, setting.flag)
        sources[key] = setting.flag

    def where(key: str) -> str:
        return sources.get(key, SETTINGS_BY_NAME[key].flag)

    protocols = protocol_names()
    protocol = values.get("protocol", ProxyConfig.protocol)
    _check_choice("protocol", protocol, protocols, where("protocol"))
    if cluster_tables is not None and "backend" in file_values:
        raise ConfigError(f"{_located('backend', file_name)}: use either backend or "
                          "[[cluster]], not both")
    if cluster_tables is not None and sources.get("backend") == "--backend":
        raise ConfigError(f"--backend: use either backend or [[cluster]], not both "
                          f"({file_name or 'the file'} has [[cluster]] tables)")
    if listener_tables is not None and "listen" in file_values:
        raise ConfigError(f"{_located('listen', file_name)}: use either listen or "
                          "[[listener]], not both")
    if not values.get("listen") and listener_tables is None:
        raise ConfigError(f"{where('listen')}: at least one listener is required")
    if cluster_tables is None and not values.get("backend") and not values.get("demo"):
        raise ConfigError(f"{where('backend')}: at least one backend is required")
    _check_choice("policy", values.get("balance"), BALANCE_POLICIES, where("balance"))
    # Every setting's value: given, else its default.
    top = {s.name: values.get(s.name, s.default) for s in SETTINGS}
    # A flat configuration has one protocol; with [[cluster]] tables each
    # cluster checks its own, and the top level stays strict for them.
    check_ordered(top.__getitem__, values, where,
                  multiplexed=cluster_tables is not None or shares_connections(protocol))
    for key in ("backend_password_file", "client_password_file", "admin_token_file"):
        if values.get(key):
            read_secret(values[key], where(key))
    for key, check in checks.items():
        raw_value = values.get(key, SETTINGS_BY_NAME[key].default)
        for one in _as_sequence(raw_value):
            check(one, where(key))

    if cluster_tables is not None:
        clusters = _clusters_from_tables(cluster_tables, top, file_name, protocols,
                                         checks.get("backend"))
        sources["clusters"] = _located("[[cluster]]", file_name)
    else:
        _, clusters = _flat_topology((), top["backend"], top["demo"], protocol,
                                     top["balance"], top["hash_key"])
        if not clusters:
            raise ConfigError(f"{where('demo')}: the demo backend needs "
                              f"tcp:PORT[:interface=HOST], got {top['demo']!r}")
        sources["clusters"] = where("backend") if top["backend"] else where("demo")
        seen = set()
        for backend in clusters[0].backends:
            if backend.name in seen:
                raise ConfigError(f"{where('backend')}: duplicate backend name {backend.name!r}")
            seen.add(backend.name)
    for cluster in clusters:
        if "backend_tls" not in cluster.overrides:  # a cluster's own table is checked with it
            check_backend_tls(top["backend_tls"], cluster.backends, where("backend_tls"))
    client_tls(top["client_tls_cert_file"], top["client_tls_key_file"], top["client_tls_mode"],
               where)  # its files load
    listeners: Tuple[ListenerConfig, ...] = ()
    if listener_tables is not None:
        listeners = _listeners_from_tables(listener_tables, clusters, file_name, checks.get("listen"))
        sources["listeners"] = _located("[[listener]]", file_name)
    if values.get("listen"):  # the flat key, or --listen flags overriding [[listener]]
        listeners = _flat_listeners(values["listen"], clusters, where("listen"))
        sources["listeners"] = where("listen")
    return ProxyConfig(sources=sources, listeners=listeners, clusters=clusters, **values)


@dataclass(frozen=True)
class CodecOptions:
    """
    What codecs read from the configuration (see L{poolproxy.codec.ICodec}):
    the settings they use, and the passwords, read through C{secrets}, which
    SIGHUP refreshes in place: a client connecting or a backend connection
    being set up after it gets the new one.
    """

    #: Unless configured, the codec's C{default_max_request_size}, else this.
    max_request_size: int = 64 * 1024 * 1024
    backend_username: Optional[str] = None
    backend_db: int = 0
    #: Command names refused (None: the codec's own list), those taken out
    #: of it, and what an unknown command gets (refuse or pin).
    deny_commands: Optional[Tuple[str, ...]] = None
    allow_commands: Tuple[str, ...] = ()
    unknown_commands: str = "refuse"
    #: Whether an authenticate hook decides on client credentials (AUTHENTICATE frames).
    authenticate_hook: bool = False
    #: The password files' contents (client_password_file, backend_password_file).
    secrets: Secrets = field(default_factory=Secrets, compare=False, repr=False)

    @property
    def client_password(self) -> Optional[str]:
        return self.secrets.client_password

    @property
    def backend_password(self) -> Optional[str]:
        return self.secrets.backend_password


def codec_options(config: ProxyConfig, secrets: Optional[Secrets] = None) -> CodecOptions:
    """
    Codec options for C{config}, with the passwords of C{secrets} (read from
    C{config}'s password files if not given).

    @raise ConfigError: if a password file cannot be read.
    """
    return CodecOptions(
        max_request_size=config.max_request_size or CodecOptions.max_request_size,
        backend_username=config.backend_username,
        backend_db=config.backend_db,
        deny_commands=config.deny_commands,
        allow_commands=config.allow_commands,
        unknown_commands=config.unknown_commands,
        secrets=secrets if secrets is not None else Secrets.read(config),
    )


def _as_sequence(value: Any) -> Sequence[str]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    return list(value)


__all__ = [
    # settings (poolproxy.config.settings)
    "BALANCE_POLICIES", "CLUSTER_OVERRIDES", "SETTINGS", "SETTINGS_BY_NAME",
    "ConfigError", "read_secret",
    # topology (poolproxy.config.topology)
    "BackendConfig", "ClusterConfig", "ListenerConfig",
    # this module
    "ProxyConfig", "build_config", "load_toml", "CodecOptions", "codec_options",
]
