"""
Settings: one table (L{SETTINGS}) that the command line, the TOML file and
docs/configuration.md all follow, and the validation that turns raw values
into a L{ProxyConfig}.

Precedence: built-in defaults < the TOML file given by C{--config} < flags.
Every error is a L{ConfigError} whose message is one line naming the flag or
key and what is wrong with it.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from twisted.python.usage import UsageError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on PyPy 3.9
    import tomli as tomllib


class ConfigError(UsageError):
    """
    A setting is missing, unknown or has a bad value.  The message is a single
    line that names the flag or key.
    """


@dataclass(frozen=True)
class Setting:
    """
    One configuration key.

    @ivar name: the TOML key; the flag is the same with dashes.
    @ivar kind: C{"int"}, C{"float"}, C{"str"} or C{"list"} (a repeatable flag).
    @ivar minimum: the smallest accepted number, for C{int} and C{float}.
    @ivar exclusive: whether C{minimum} itself is refused (durations > 0).
    @ivar doc: one line for C{--help} and docs/configuration.md.
    """

    name: str
    kind: str
    default: Any
    doc: str
    minimum: Optional[float] = None
    exclusive: bool = False

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


SETTINGS: Tuple[Setting, ...] = (
    Setting("listen", "list", (), "Server endpoint to accept clients on, e.g. "
            "tcp:6380:interface=127.0.0.1 (repeatable)."),
    Setting("backend", "list", (), "Client endpoint of a backend, e.g. "
            "tcp:host=127.0.0.1:port=6379, or HOST:PORT (repeatable)."),
    Setting("protocol", "str", "tcp", "Protocol codec spoken by clients and backends."),
    Setting("metrics", "str", "tcp:9090:interface=127.0.0.1",
            "Server endpoint for /metrics, /healthz and /readyz."),
    Setting("pool_size", "int", 10, "Most connections per backend (idle, busy and "
            "connecting together).", minimum=1),
    Setting("pool_min_idle", "int", 0, "Idle connections kept open and ready per "
            "backend.", minimum=0),
    Setting("pool_max_waiters", "int", 1000, "Most requests waiting for a backend "
            "connection per backend; more fail at once.", minimum=0),
    Setting("pool_acquire_timeout", "float", 5.0, "Seconds a request may wait for a "
            "backend connection.", minimum=0, exclusive=True),
    Setting("max_concurrency", "int", 1000, "Most requests (in tcp mode: sessions) "
            "being served at once.", minimum=1),
    Setting("queue_size", "int", 1000, "Most requests waiting for admission; 0 "
            "rejects at once when max-concurrency is reached.", minimum=0),
    Setting("queue_timeout", "float", 5.0, "Seconds a request may wait for "
            "admission before it is rejected.", minimum=0, exclusive=True),
    Setting("connect_timeout", "float", 5.0, "Seconds to establish a backend "
            "connection.", minimum=0, exclusive=True),
    Setting("idle_timeout", "float", 60.0, "Seconds an idle pooled connection is "
            "kept; 0 keeps it forever.", minimum=0),
    Setting("max_lifetime", "float", 3600.0, "Seconds after which a connection is "
            "retired once idle; 0 for no limit.", minimum=0),
    Setting("max_uses", "int", 0, "Leases after which a connection is retired; 0 "
            "for no limit.", minimum=0),
    Setting("health_interval", "float", 2.0, "Seconds between pool maintenance "
            "runs: reaping, refilling pool-min-idle, probing a down backend.",
            minimum=0, exclusive=True),
    Setting("demo", "str", None, "Also serve a small demo HTTP backend on this "
            "tcp server endpoint and use it as the backend (for make run)."),
    Setting("request_timeout", "float", 30.0, "Seconds a backend may take to start "
            "answering a request once it is sent (http: then 504); 0 for no limit.",
            minimum=0),
    Setting("max_request_size", "int", 64 * 1024 * 1024, "Largest request, in bytes, "
            "a client may send; larger ones get the protocol's error.", minimum=1),
    Setting("mux_connections", "int", 2, "Backend connections per backend shared by "
            "all clients (redis, memcached); the rest of the pool serves pinned "
            "sessions.", minimum=1),
    Setting("backend_password_file", "str", None, "File holding the password that "
            "pooled redis connections AUTH with."),
    Setting("backend_username", "str", None, "ACL user name for that AUTH (redis 6+)."),
    Setting("backend_db", "int", 0, "Redis database pooled connections SELECT.", minimum=0),
    Setting("client_password_file", "str", None, "File holding the password redis "
            "clients must AUTH with to use the proxy."),
    Setting("admin_token_file", "str", None, "File whose first line is the bearer token "
            "for the admin API; without it the API is off."),
    Setting("balance", "str", None, "How the cluster picks a backend: round_robin, "
            "least_outstanding, consistent_hash or random [default: consistent_hash for "
            "redis and memcached, least_outstanding for http, round_robin for tcp]."),
    Setting("hash_key", "str", None, "http with consistent_hash: what to hash, 'path' or "
            "'header:NAME'."),
    Setting("check_interval", "float", 2.0, "Seconds between active health checks of each "
            "backend (redis PING, memcached version, HTTP GET check-path, TCP connect); 0 "
            "turns them off.", minimum=0),
    Setting("check_timeout", "float", 1.0, "Seconds a health check may take.", minimum=0,
            exclusive=True),
    Setting("check_rise", "int", 2, "Consecutive good checks that bring a backend back.",
            minimum=1),
    Setting("check_fall", "int", 3, "Consecutive failed checks that take a backend out.",
            minimum=1),
    Setting("check_path", "str", "/", "http: the path health checks GET (2xx is healthy)."),
    Setting("breaker_failures", "int", 5, "Consecutive failed requests that open a "
            "backend's circuit breaker; 0 turns breakers off.", minimum=0),
    Setting("breaker_reset_timeout", "float", 5.0, "Seconds an open breaker waits before "
            "letting one trial request through; doubles after each failed trial.",
            minimum=0, exclusive=True),
    Setting("breaker_max_reset_timeout", "float", 60.0, "Longest wait of an open breaker.",
            minimum=0, exclusive=True),
    Setting("header_timeout", "float", 10.0, "http: seconds a client may take to send a "
            "request head once it has begun (then 408); 0 for no limit.", minimum=0),
    Setting("client_idle_timeout", "float", 0.0, "Seconds a redis, memcached or http client "
            "connection may stay idle (nothing sent, nothing in flight) before it is "
            "closed; 0 keeps idle clients.", minimum=0),
    Setting("retry_budget_percent", "float", 20.0, "Retries (of safe requests on a stale "
            "connection) may add at most this share of a cluster's requests.", minimum=0),
    Setting("access_log_sample", "float", 0.0, "http: the share of requests (0 to 1) "
            "logged in an access log line; 0 logs none.", minimum=0),
    Setting("shutdown_timeout", "float", 10.0, "Seconds a stopping proxy (SIGTERM) lets "
            "clients finish what is in flight before closing them.", minimum=0),
    Setting("max_ejected_percent", "float", 50.0, "Most backends of a cluster, in percent, "
            "that health checks and breakers may take out at once.", minimum=0),
    Setting("workers", "int", 1, "Processes serving clients. Above 1, a supervisor "
            "process spawns that many workers sharing tcp listeners (SO_REUSEPORT) and "
            "sums their /metrics.", minimum=1),
)

SETTINGS_BY_NAME: Dict[str, Setting] = {s.name: s for s in SETTINGS}

BALANCE_POLICIES = ("round_robin", "least_outstanding", "consistent_hash", "random")

#: The policy a cluster gets when --balance is not given, by codec mode.
DEFAULT_BALANCE = {"multiplexed": "consistent_hash", "request": "least_outstanding",
                   "session": "round_robin"}


def protocol_names() -> List[str]:
    """The names of the installed protocol codecs (Twisted plugins)."""
    from poolproxy.plugins import codec_plugins

    return sorted(codec_plugins())


def read_secret(path: str, where: str) -> str:
    """
    A password from a file: its first line, without the line ending.

    @raise ConfigError: if the file cannot be read or the line is empty.
    """
    try:
        with open(path, encoding="utf-8") as f:
            secret = f.readline().rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{where}: cannot read {path}: {getattr(e, 'strerror', None) or e}") from None
    if not secret:
        raise ConfigError(f"{where}: {path} holds no password on its first line")
    return secret


#: The top-level settings a [[cluster]] table may override for its own backends.
CLUSTER_OVERRIDES: Tuple[str, ...] = (
    "pool_size", "pool_min_idle", "mux_connections", "request_timeout", "check_interval",
    "check_timeout", "check_rise", "check_fall", "check_path", "breaker_failures",
    "breaker_reset_timeout", "breaker_max_reset_timeout", "max_ejected_percent",
)

LISTENER_KEYS: Tuple[str, ...] = ("name", "listen", "cluster")
CLUSTER_KEYS: Tuple[str, ...] = ("name", "protocol", "balance", "hash_key", "backend") + CLUSTER_OVERRIDES
BACKEND_KEYS: Tuple[str, ...] = ("address", "name", "weight")

#: The name of the cluster built from the flat C{backend} key (or C{demo}).
DEFAULT_CLUSTER = "default"


@dataclass(frozen=True)
class BackendConfig:
    """
    One backend of a cluster.

    @ivar name: its name in metrics and logs, unique within the cluster.
    @ivar address: a client endpoint string or C{HOST:PORT}; see
        L{poolproxy.endpoints.client_endpoint}.
    @ivar weight: its share of requests relative to the cluster's other backends.
    """

    name: str
    address: str
    weight: int = 1


@dataclass(frozen=True)
class ClusterConfig:
    """
    A named group of backends that listeners route to.

    @ivar protocol: the codec's name (the top-level C{protocol} unless the
        cluster sets its own).
    @ivar balance: the balancing policy, or L{None} for the codec mode's
        default (L{DEFAULT_BALANCE}).
    @ivar hash_key: for http with C{consistent_hash}, or L{None}.
    @ivar overrides: the L{CLUSTER_OVERRIDES} keys this cluster sets, already
        validated; read them with L{setting}.
    """

    name: str
    protocol: str
    balance: Optional[str]
    hash_key: Optional[str]
    backends: Tuple[BackendConfig, ...]
    overrides: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}), hash=False)

    def __post_init__(self) -> None:
        if not isinstance(self.overrides, MappingProxyType):
            object.__setattr__(self, "overrides", MappingProxyType(dict(self.overrides)))

    def setting(self, key: str, config: "ProxyConfig") -> Any:
        """
        The value of setting C{key} for this cluster: its own override, else
        C{config}'s top-level value.  C{protocol}, C{balance} and C{hash_key}
        give this cluster's fields.
        """
        if key in ("protocol", "balance", "hash_key"):
            return getattr(self, key)
        if key in self.overrides:
            return self.overrides[key]
        return getattr(config, key)


@dataclass(frozen=True)
class ListenerConfig:
    """
    A server endpoint and the cluster its clients are proxied to.

    @ivar name: unique among listeners; the endpoint string unless given.
    @ivar endpoint: a server endpoint string.
    @ivar cluster: the L{ClusterConfig.name} it routes to.
    """

    name: str
    endpoint: str
    cluster: str


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
    connect_timeout: float = 5.0
    idle_timeout: float = 60.0
    max_lifetime: float = 3600.0
    max_uses: int = 0
    health_interval: float = 2.0
    demo: Optional[str] = None
    request_timeout: float = 30.0
    max_request_size: int = 64 * 1024 * 1024
    mux_connections: int = 2
    backend_password_file: Optional[str] = None
    backend_username: Optional[str] = None
    backend_db: int = 0
    client_password_file: Optional[str] = None
    admin_token_file: Optional[str] = None
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
    client_idle_timeout: float = 0.0
    retry_budget_percent: float = 20.0
    access_log_sample: float = 0.0
    shutdown_timeout: float = 10.0
    max_ejected_percent: float = 50.0
    workers: int = 1
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


def _coerce_number(setting: Setting, raw: Any, where: str, text_ok: bool) -> Any:
    wanted = "an integer" if setting.kind == "int" else "a number"
    if isinstance(raw, bool) or (isinstance(raw, str) and not text_ok):
        raise ConfigError(f"{where}: expected {wanted}, got {raw!r}")
    try:
        if setting.kind == "int":
            if isinstance(raw, float):
                raise ValueError
            value: Any = int(raw)
        else:
            value = float(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: expected {wanted}, got {raw!r}") from None
    if setting.kind == "float" and not math.isfinite(value):
        raise ConfigError(f"{where}: expected a finite number, got {raw!r}")
    if setting.minimum is not None:
        if setting.exclusive and value <= setting.minimum:
            raise ConfigError(f"{where}: must be greater than {setting.minimum:g}, got {raw!r}")
        if value < setting.minimum:
            raise ConfigError(f"{where}: must be at least {setting.minimum:g}, got {raw!r}")
    return value


def coerce(setting: Setting, raw: Any, where: str, text_ok: bool = True) -> Any:
    """
    Convert one raw value (a flag's string or a TOML value) to the setting's type.

    @param where: how to name the value's origin in an error message.
    @param text_ok: whether a number may be given as a string (flags); a TOML
        file must use TOML numbers.
    @raise ConfigError: if the value has the wrong type or range.
    """
    if setting.kind in ("int", "float"):
        return _coerce_number(setting, raw, where, text_ok)
    if setting.kind == "str":
        if not isinstance(raw, str) or not raw.strip():
            raise ConfigError(f"{where}: expected a non-empty string, got {raw!r}")
        return raw.strip()
    # list
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, (list, tuple)) or not all(isinstance(x, str) and x.strip() for x in raw):
        raise ConfigError(f"{where}: expected a list of non-empty strings, got {raw!r}")
    return tuple(x.strip() for x in raw)


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


def _located(path: str, file_name: str) -> str:
    """How an error names C{path} (a key or a table's key) of the TOML file."""
    return f"{path} (in {file_name})" if file_name else path


def _dash(key: str) -> str:
    return key.replace("_", "-")


def _check_choice(kind: str, value: Optional[str], choices: Sequence[str], where: str) -> None:
    if value is not None and value not in choices:
        raise ConfigError(f"{where}: unknown {kind} {value!r}; available: {', '.join(choices)}")


def _check_hash_key(hash_key: Optional[str], where: str) -> None:
    if hash_key is not None and not (hash_key == "path" or (
            hash_key.startswith("header:") and len(hash_key) > len("header:"))):
        raise ConfigError(f"{where}: expected 'path' or 'header:NAME', got {hash_key!r}")


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
        L{ConfigError} for a bad endpoint; see L{poolproxy.endpoints}.  The
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
        if raw is None or (SETTINGS_BY_NAME[key].kind == "list" and not raw):
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
    pool_size = values.get("pool_size", ProxyConfig.pool_size)
    if values.get("pool_min_idle", 0) > pool_size:
        raise ConfigError(
            f"{where('pool_min_idle')}: must not exceed pool-size ({pool_size}), "
            f"got {values['pool_min_idle']}"
        )
    _check_choice("policy", values.get("balance"), BALANCE_POLICIES, where("balance"))
    _check_hash_key(values.get("hash_key"), where("hash_key"))
    if values.get("breaker_max_reset_timeout", 60.0) < values.get("breaker_reset_timeout", 5.0):
        raise ConfigError(f"{where('breaker_max_reset_timeout')}: must be at least "
                          f"breaker-reset-timeout ({values.get('breaker_reset_timeout', 5.0):g})")
    if values.get("access_log_sample", 0) > 1:
        raise ConfigError(f"{where('access_log_sample')}: must be at most 1, "
                          f"got {values['access_log_sample']!r}")
    if values.get("max_ejected_percent", 0) > 100:
        raise ConfigError(f"{where('max_ejected_percent')}: must be at most 100, "
                          f"got {values['max_ejected_percent']!r}")
    mux = values.get("mux_connections", ProxyConfig.mux_connections)
    if mux > pool_size:
        raise ConfigError(f"{where('mux_connections')}: must not exceed pool-size "
                          f"({pool_size}), got {mux}")
    for key in ("backend_password_file", "client_password_file", "admin_token_file"):
        if values.get(key):
            read_secret(values[key], where(key))
    for key, check in checks.items():
        raw_value = values.get(key, SETTINGS_BY_NAME[key].default)
        for one in _as_sequence(raw_value):
            check(one, where(key))

    top = {s.name: values.get(s.name, s.default) for s in SETTINGS}
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
    listeners: Tuple[ListenerConfig, ...] = ()
    if listener_tables is not None:
        listeners = _listeners_from_tables(listener_tables, clusters, file_name, checks.get("listen"))
        sources["listeners"] = _located("[[listener]]", file_name)
    if values.get("listen"):  # the flat key, or --listen flags overriding [[listener]]
        listeners = _flat_listeners(values["listen"], clusters, where("listen"))
        sources["listeners"] = where("listen")
    return ProxyConfig(sources=sources, listeners=listeners, clusters=clusters, **values)


_WEIGHT = Setting("weight", "int", 1, "A backend's share of requests.", minimum=1)


def _flat_topology(listen: Sequence[str], backend: Sequence[str], demo: Optional[str],
                   protocol: str, balance: Optional[str], hash_key: Optional[str],
                   ) -> Tuple[Tuple[ListenerConfig, ...], Tuple[ClusterConfig, ...]]:
    """
    The listeners and the one cluster, named L{DEFAULT_CLUSTER}, that the flat
    keys describe: the C{backend} addresses, or else the C{demo} backend.
    Nothing is checked; with no backend at all there is no cluster and no
    listener.
    """
    if not backend and not demo:
        return (), ()
    from poolproxy.endpoints import backend_name, demo_address

    addresses = list(backend)
    if not addresses and demo:
        host_port = demo_address(demo)
        if host_port is not None:
            addresses.append(f"{host_port[0]}:{host_port[1]}")
    if not addresses:
        return (), ()
    cluster = ClusterConfig(DEFAULT_CLUSTER, protocol, balance, hash_key,
                            tuple(BackendConfig(backend_name(a), a, 1) for a in addresses))
    return tuple(ListenerConfig(e, e, DEFAULT_CLUSTER) for e in listen), (cluster,)


def _flat_listeners(listen: Sequence[str], clusters: Sequence[ClusterConfig],
                    where: str) -> Tuple[ListenerConfig, ...]:
    if len(clusters) != 1:
        raise ConfigError(f"{where}: cannot tell which of the clusters "
                          f"{', '.join(c.name for c in clusters)} to route to; use "
                          "[[listener]] tables with cluster = NAME")
    if len(set(listen)) != len(listen):
        duplicate = next(e for e in listen if listen.count(e) > 1)
        raise ConfigError(f"{where}: duplicate listener {duplicate!r}")
    return tuple(ListenerConfig(e, e, clusters[0].name) for e in listen)


def _tables(raw: Any, header: str, where: str) -> List[Dict[str, Any]]:
    """C{raw} as a non-empty array of tables written C{[[header]]}."""
    if isinstance(raw, dict):
        raise ConfigError(f"{where}: expected [[{header}]] tables, got a single [{header}] table")
    if not isinstance(raw, list) or not all(isinstance(t, dict) for t in raw):
        raise ConfigError(f"{where}: expected [[{header}]] tables, got {raw!r}")
    if not raw:
        raise ConfigError(f"{where}: at least one [[{header}]] table is required")
    return raw


class _Table:
    """One C{[[header]]} table of the file, read key by key with its location."""

    def __init__(self, values: Dict[str, Any], path: str, header: str, known: Sequence[str],
                 file_name: str) -> None:
        self.values, self.path, self.header, self.file_name = values, path, header, file_name
        for key in values:
            if key in known:
                continue
            why = ("not a per-cluster setting (set it at the top level)"
                   if header == "cluster" and key in SETTINGS_BY_NAME else
                   f"unknown key in [[{header}]]")
            raise ConfigError(f"{self.at(key)}: {why}; known keys are {', '.join(known)}")

    def at(self, key: str) -> str:
        return _located(f"{self.path}.{key}", self.file_name)

    def text(self, key: str, required: bool = False) -> Optional[str]:
        if key not in self.values:
            if required:
                raise ConfigError(f"{self.at(key)}: missing; every [[{self.header}]] "
                                  f"table needs {key}")
            return None
        return coerce(Setting(key, "str", None, ""), self.values[key], self.at(key), text_ok=False)


def _clusters_from_tables(raw: Any, top: Mapping[str, Any], file_name: str,
                          protocols: Sequence[str], check: Optional[Callable[[str, str], None]],
                          ) -> Tuple[ClusterConfig, ...]:
    clusters: List[ClusterConfig] = []
    seen: Dict[str, str] = {}
    for i, values in enumerate(_tables(raw, "cluster", _located("cluster", file_name))):
        table = _Table(values, f"cluster[{i}]", "cluster", CLUSTER_KEYS, file_name)
        name = table.text("name", required=True)
        assert name is not None
        if name in seen:
            raise ConfigError(f"{table.at('name')}: duplicate cluster name {name!r} "
                              f"(also {seen[name]})")
        seen[name] = table.path
        protocol = table.text("protocol") or top["protocol"]
        _check_choice("protocol", protocol, protocols, table.at("protocol"))
        balance = table.text("balance") or top["balance"]
        _check_choice("policy", balance, BALANCE_POLICIES, table.at("balance"))
        hash_key = table.text("hash_key") or top["hash_key"]
        _check_hash_key(hash_key, table.at("hash_key"))
        overrides = {key: coerce(SETTINGS_BY_NAME[key], values[key], table.at(key), text_ok=False)
                     for key in CLUSTER_OVERRIDES if key in values}
        _check_overrides(overrides, top, table)
        backends = _backends_from_tables(values.get("backend"), table, name, check)
        clusters.append(ClusterConfig(name, protocol, balance, hash_key, backends,
                                      MappingProxyType(overrides)))
    return tuple(clusters)


# (lower, upper, whether an error names the lower key when the cluster sets both)
_ORDERED_PAIRS = (("pool_min_idle", "pool_size", True), ("mux_connections", "pool_size", True),
                  ("breaker_reset_timeout", "breaker_max_reset_timeout", False))


def _check_overrides(overrides: Mapping[str, Any], top: Mapping[str, Any], table: _Table) -> None:
    """
    The checks between settings, on a cluster's values (its overrides, else the
    top-level ones); an error names a key the cluster sets.
    """
    percent = overrides.get("max_ejected_percent", 0)
    if percent > 100:
        raise ConfigError(f"{table.at('max_ejected_percent')}: must be at most 100, got {percent!r}")
    for low, high, name_low in _ORDERED_PAIRS:
        if low not in overrides and high not in overrides:
            continue
        low_value, high_value = overrides.get(low, top[low]), overrides.get(high, top[high])
        if low_value <= high_value:
            continue
        if (low in overrides) if name_low else (high not in overrides):
            raise ConfigError(f"{table.at(low)}: must not exceed {_dash(high)} "
                              f"({high_value:g}), got {low_value:g}")
        raise ConfigError(f"{table.at(high)}: must be at least {_dash(low)} "
                          f"({low_value:g}), got {high_value:g}")


def _backends_from_tables(raw: Any, cluster: _Table, cluster_name: str,
                          check: Optional[Callable[[str, str], None]]) -> Tuple[BackendConfig, ...]:
    from poolproxy.endpoints import backend_name

    where = cluster.at("backend")
    if raw is None:
        raise ConfigError(f"{where}: at least one [[cluster.backend]] table is required")
    backends: List[BackendConfig] = []
    seen: Dict[str, str] = {}
    for j, values in enumerate(_tables(raw, "cluster.backend", where)):
        table = _Table(values, f"{cluster.path}.backend[{j}]", "cluster.backend", BACKEND_KEYS,
                       cluster.file_name)
        address = table.text("address", required=True)
        assert address is not None
        if check is not None:
            check(address, table.at("address"))
        name = table.text("name") or backend_name(address)
        if name in seen:
            raise ConfigError(f"{table.at('name' if 'name' in values else 'address')}: duplicate "
                              f"backend name {name!r} in cluster {cluster_name!r} (also {seen[name]})")
        seen[name] = table.path
        weight = coerce(_WEIGHT, values.get("weight", 1), table.at("weight"), text_ok=False)
        backends.append(BackendConfig(name, address, weight))
    return tuple(backends)


def _listeners_from_tables(raw: Any, clusters: Sequence[ClusterConfig], file_name: str,
                           check: Optional[Callable[[str, str], None]],
                           ) -> Tuple[ListenerConfig, ...]:
    names = [c.name for c in clusters]
    listeners: List[ListenerConfig] = []
    seen: Dict[str, str] = {}
    for i, values in enumerate(_tables(raw, "listener", _located("listener", file_name))):
        table = _Table(values, f"listener[{i}]", "listener", LISTENER_KEYS, file_name)
        endpoint = table.text("listen", required=True)
        assert endpoint is not None
        if check is not None:
            check(endpoint, table.at("listen"))
        name = table.text("name") or endpoint
        if name in seen:
            raise ConfigError(f"{table.at('name' if 'name' in values else 'listen')}: duplicate "
                              f"listener name {name!r} (also {seen[name]})")
        seen[name] = table.path
        cluster = table.text("cluster")
        if cluster is None:
            if len(names) != 1:
                raise ConfigError(f"{table.at('cluster')}: missing; required when there are "
                                  f"several clusters ({', '.join(names)})")
            cluster = names[0]
        elif cluster not in names:
            raise ConfigError(f"{table.at('cluster')}: unknown cluster {cluster!r}; "
                              f"clusters are {', '.join(names)}")
        listeners.append(ListenerConfig(name, endpoint, cluster))
    return tuple(listeners)


@dataclass(frozen=True)
class CodecOptions:
    """
    What codecs read from the configuration (see L{poolproxy.codec.ICodec}):
    the settings they use, with secrets read from their files.
    """

    max_request_size: int = ProxyConfig.max_request_size
    client_password: Optional[str] = None
    backend_password: Optional[str] = None
    backend_username: Optional[str] = None
    backend_db: int = 0


def codec_options(config: ProxyConfig) -> CodecOptions:
    """
    Codec options for C{config}, reading the password files.

    @raise ConfigError: if a password file cannot be read.
    """
    def secret(key: str) -> Optional[str]:
        path = getattr(config, key)
        return read_secret(path, config.sources.get(key, key)) if path else None

    return CodecOptions(
        max_request_size=config.max_request_size,
        client_password=secret("client_password_file"),
        backend_password=secret("backend_password_file"),
        backend_username=config.backend_username,
        backend_db=config.backend_db,
    )


def _as_sequence(value: Any) -> Sequence[str]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    return list(value)


def describe_defaults() -> List[Tuple[str, str, str, str]]:
    """
    Rows for the documentation: (TOML key, flag, default, description).
    """
    rows = []
    for s in SETTINGS:
        default = "(none)" if s.default in (None, ()) else repr(s.default)
        rows.append((s.name, s.flag, default, s.doc))
    return rows
