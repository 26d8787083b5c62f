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
    Setting("max_ejected_percent", "float", 50.0, "Most backends of a cluster, in percent, "
            "that health checks and breakers may take out at once.", minimum=0),
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


@dataclass(frozen=True)
class ProxyConfig:
    """
    A validated configuration.  Field names are the TOML keys.
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
    max_ejected_percent: float = 50.0
    # Where each value came from, for error messages: name -> "--flag" or "key (in FILE)".
    sources: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)


def _check_table_matches_dataclass() -> None:
    declared = [(f.name, f.default) for f in fields(ProxyConfig) if f.name != "sources"]
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


def build_config(
    file_values: Mapping[str, Any],
    flag_values: Mapping[str, Any],
    file_name: str = "",
    endpoint_checks: Optional[Mapping[str, Callable[[str, str], None]]] = None,
) -> ProxyConfig:
    """
    Merge defaults, file values and flag values into a validated L{ProxyConfig}.

    @param file_values: the TOML table (keys with underscores).
    @param flag_values: values given on the command line, keyed by setting
        name; a value of L{None} means "not given".
    @param file_name: the TOML file's name, for messages.
    @param endpoint_checks: setting name -> function(value, where) raising
        L{ConfigError} for a bad endpoint; see L{poolproxy.endpoints}.
    """
    values: Dict[str, Any] = {}
    sources: Dict[str, str] = {}
    for key, raw in file_values.items():
        where = f"{key} (in {file_name})" if file_name else key
        setting = SETTINGS_BY_NAME.get(key)
        if setting is None:
            raise ConfigError(f"{where}: unknown key; known keys are {', '.join(SETTINGS_BY_NAME)}")
        values[key] = coerce(setting, raw, where, text_ok=False)
        sources[key] = where
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
    if protocol not in protocols:
        raise ConfigError(
            f"{where('protocol')}: unknown protocol {protocol!r}; "
            f"available: {', '.join(protocols)}"
        )
    if not values.get("listen"):
        raise ConfigError(f"{where('listen')}: at least one listener is required")
    if not values.get("backend") and not values.get("demo"):
        raise ConfigError(f"{where('backend')}: at least one backend is required")
    pool_size = values.get("pool_size", ProxyConfig.pool_size)
    if values.get("pool_min_idle", 0) > pool_size:
        raise ConfigError(
            f"{where('pool_min_idle')}: must not exceed pool-size ({pool_size}), "
            f"got {values['pool_min_idle']}"
        )
    balance = values.get("balance")
    if balance is not None and balance not in BALANCE_POLICIES:
        raise ConfigError(f"{where('balance')}: unknown policy {balance!r}; "
                          f"available: {', '.join(BALANCE_POLICIES)}")
    hash_key = values.get("hash_key")
    if hash_key is not None and not (hash_key == "path" or (
            hash_key.startswith("header:") and len(hash_key) > len("header:"))):
        raise ConfigError(f"{where('hash_key')}: expected 'path' or 'header:NAME', "
                          f"got {hash_key!r}")
    if values.get("breaker_max_reset_timeout", 60.0) < values.get("breaker_reset_timeout", 5.0):
        raise ConfigError(f"{where('breaker_max_reset_timeout')}: must be at least "
                          f"breaker-reset-timeout ({values.get('breaker_reset_timeout', 5.0):g})")
    if values.get("max_ejected_percent", 0) > 100:
        raise ConfigError(f"{where('max_ejected_percent')}: must be at most 100, "
                          f"got {values['max_ejected_percent']!r}")
    mux = values.get("mux_connections", ProxyConfig.mux_connections)
    if mux > pool_size:
        raise ConfigError(f"{where('mux_connections')}: must not exceed pool-size "
                          f"({pool_size}), got {mux}")
    for key in ("backend_password_file", "client_password_file"):
        if values.get(key):
            read_secret(values[key], where(key))
    for key, check in (endpoint_checks or {}).items():
        raw_value = values.get(key, SETTINGS_BY_NAME[key].default)
        for one in _as_sequence(raw_value):
            check(one, where(key))
    return ProxyConfig(sources=sources, **values)


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
