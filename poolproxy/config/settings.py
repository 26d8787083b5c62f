"""
The settings table (L{SETTINGS}) that the command line, the TOML file and
docs/configuration.md all follow, and the checks every value goes through:
L{coerce} turns a raw flag or TOML value into its kind, or raises a
L{ConfigError} whose message is one line naming the flag or key.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from ipaddress import ip_network
from typing import Any, Callable, Container, Dict, List, Optional, Sequence, Tuple

from twisted.python.usage import UsageError

from poolproxy.backends.balancing import POLICIES
from poolproxy.backends.discovery import parse_resolver
from poolproxy.hooks.loading import HookLoadError, check_spec
from poolproxy.hooks.points import HOOK_POINTS, points_help

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
    @ivar kind: C{"int"}, C{"float"}, C{"str"}, C{"bool"}, C{"list"} (a repeatable flag),
        C{"names"} (a TOML list of strings, or one flag of comma-separated names;
        an empty one is an empty list) or C{"tls"} (a L{BackendTLS} table).
    @ivar minimum: the smallest accepted number, for C{int} and C{float}.
    @ivar exclusive: whether C{minimum} itself is refused (durations > 0).
    @ivar maximum: the largest accepted number, for C{int} and C{float}.
    @ivar choices: the accepted values, for C{str}.
    @ivar check: for C{str}, C{check(value, where)} raises a L{ConfigError}
        for a value of the right type that still makes no sense.
    @ivar doc: one line for C{--help} and docs/configuration.md.
    """

    name: str
    kind: str
    default: Any
    doc: str
    minimum: Optional[float] = None
    exclusive: bool = False
    maximum: Optional[float] = None
    choices: Optional[Tuple[str, ...]] = None
    check: Optional[Callable[[str, str], None]] = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


def _check_hash_tag(hash_tag: Optional[str], where: str) -> None:
    if hash_tag is not None and (len(hash_tag) != 2 or hash_tag[0] == hash_tag[1]
                                 or not hash_tag.isascii()):
        raise ConfigError(f"{where}: expected two different ASCII characters, e.g. '{{}}', "
                          f"got {hash_tag!r}")


def _check_hash_key(hash_key: Optional[str], where: str) -> None:
    if hash_key is not None and not (hash_key == "path" or (
            hash_key.startswith("header:") and len(hash_key) > len("header:"))):
        raise ConfigError(f"{where}: expected 'path' or 'header:NAME', got {hash_key!r}")


def _check_names(name: str, where: str) -> None:
    """One command name: visible ASCII words (a command, or a command and a subcommand)."""
    words = name.replace("|", " ").split()
    if not 1 <= len(words) <= 2 or not all(w.isascii() and w.isprintable() for w in words):
        raise ConfigError(f"{where}: expected command names such as CONFIG or 'CLIENT KILL', "
                          f"got {name!r}")


def _check_resolver(server: str, where: str) -> None:
    """A dns_resolvers entry: an IP address and port."""
    try:
        parse_resolver(server)
    except ValueError as e:
        raise ConfigError(f"{where}: {e}") from None


#: PgBouncer's default auth_query (its doc/config.md): no row for a role
#: that does not exist or may not log in, a NULL password for one whose
#: password has expired.
AUTH_QUERY = ("SELECT rolname, CASE WHEN rolvaliduntil < now() THEN NULL ELSE rolpassword END "
              "FROM pg_authid WHERE rolname=$1 AND rolcanlogin")


def _check_auth_query(query: Optional[str], where: str) -> None:
    if query is not None and "$1" not in query:
        raise ConfigError(f"{where}: the query must take the user name as $1, got {query!r}")


@dataclass(frozen=True)
class BackendTLS:
    """
    How a cluster's backends are connected with TLS: the C{backend_tls}
    table.  The certificate and its name are verified unless C{verify} is
    written false.

    @ivar ca_file: PEM file of the CA certificates trusted, or L{None} for
        the system's trust store.
    @ivar server_name: the name the backends' certificates must hold (also
        sent as SNI), or L{None} for each backend's own host.
    @ivar cert_file: the client certificate (PEM, chain after it) presented
        for mutual TLS, or L{None}.
    @ivar key_file: its private key, or L{None} when C{cert_file} holds it.
    @ivar verify: whether certificates and names are checked.
    """

    ca_file: Optional[str] = None
    server_name: Optional[str] = None
    cert_file: Optional[str] = None
    key_file: Optional[str] = None
    verify: bool = True


#: The keys of a backend_tls table.
BACKEND_TLS_KEYS: Tuple[str, ...] = ("ca_file", "server_name", "cert_file", "key_file", "verify")


def _coerce_tls(raw: Any, where: str, text_ok: bool) -> Optional[BackendTLS]:
    """
    A C{backend_tls} value: a table of L{BACKEND_TLS_KEYS}; C{true} (TLS
    with every default) or C{false} (no TLS: a cluster's way out of the
    top-level table).  A flag gives C{on}, C{off} or C{KEY=VALUE,...}.
    """
    if text_ok and isinstance(raw, str):
        word = raw.strip().lower()
        if word in ("on", "off"):
            raw = word == "on"
        else:
            pairs = [part.partition("=") for part in raw.split(",") if part.strip()]
            bad = [key for key, eq, _ in pairs if not eq]
            if bad or not pairs:
                raise ConfigError(f"{where}: expected on, off or KEY=VALUE,... with keys "
                                  f"{', '.join(BACKEND_TLS_KEYS)}, got {raw!r}")
            raw = {key.strip(): value.strip() for key, _, value in pairs}
    if raw is True:
        return BackendTLS()
    if raw is False:
        return None
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a table (keys {', '.join(BACKEND_TLS_KEYS)}), "
                          f"true or false, got {raw!r}")
    values: Dict[str, Any] = {}
    for key, value in raw.items():
        if key not in BACKEND_TLS_KEYS:
            raise ConfigError(f"{where}: unknown key {key!r}; known keys are "
                              f"{', '.join(BACKEND_TLS_KEYS)}")
        if key == "verify":
            if text_ok and value in ("true", "false"):
                value = value == "true"
            if not isinstance(value, bool):
                raise ConfigError(f"{where}: verify: expected true or false, got {value!r}")
        elif not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{where}: {key}: expected a non-empty string, got {value!r}")
        else:
            value = value.strip()
        values[key] = value
    if "key_file" in values and "cert_file" not in values:
        raise ConfigError(f"{where}: key_file without cert_file: the client certificate "
                          "is missing")
    return BackendTLS(**values)


def _check_network(network: str, where: str) -> None:
    """One network: an IPv4 or IPv6 address, or a CIDR block."""
    try:
        ip_network(network, strict=False)
    except ValueError:
        raise ConfigError(f"{where}: expected IP addresses or CIDR blocks such as 10.0.0.0/8, "
                          f"got {network!r}") from None


#: The statuses of an http response that count as a backend failure, by
#: the http_failures setting (gateway: as Envoy's consecutive_gateway_failure).
HTTP_FAILURE_STATUSES: Dict[str, "frozenset[int]"] = {
    "5xx": frozenset(range(500, 600)),
    "gateway": frozenset((502, 503, 504)),
    "none": frozenset(),
}

#: The smallest output limit: Twisted's transports hold this much before
#: they say a client is not reading.
TRANSPORT_BUFFER_MIN = 65536

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
    Setting("max_client_connections", "int", None, "Most client connections open at once, "
            "all listeners together (per worker process); at the limit listeners stop "
            "accepting and new clients wait in the listen backlog [default: the open file "
            "limit less what backend pools, health checks, the web endpoint and a margin "
            "need].", minimum=1),
    Setting("max_connections_per_source", "int", 0, "Most client connections open at once "
            "from one address (per worker process); more are closed at once. 0 for no "
            "limit.", minimum=0),
    Setting("listen_backlog", "int", 1024, "Connections waiting to be accepted that a tcp "
            "listener's kernel queue holds, unless its endpoint sets backlog= (the kernel "
            "caps it at net.core.somaxconn).", minimum=1),
    Setting("session_idle_timeout", "float", 3600.0, "tcp: seconds a session may pass no byte "
            "either way before both its connections are closed; 0 keeps idle sessions.",
            minimum=0),
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
    Setting("max_request_size", "int", None, "Largest request, in bytes, a client may "
            "send; larger ones get the protocol's error. Default: the codec's (64 MiB; "
            "memcached: 1 MiB of data, its item size).", minimum=1),
    Setting("max_reply_size", "int", 64 * 1024 * 1024, "redis, memcached: largest reply, "
            "in bytes, the proxy holds for a client; a larger one gets the protocol's error "
            "and is skipped. 0 for no limit.", minimum=0),
    Setting("max_pipeline", "int", 1024, "redis, memcached: requests a client may have "
            "waiting or unanswered before the proxy stops reading from it.", minimum=1),
    Setting("client_output_limit", "int", 32 * 1024 * 1024, "redis, memcached: bytes of "
            "replies a client that does not read may make the proxy hold before it is "
            "closed.", minimum=TRANSPORT_BUFFER_MIN),
    Setting("proxy_output_limit", "int", 512 * 1024 * 1024, "redis, memcached: bytes of "
            "replies all such clients together may make the proxy hold; past it, those "
            "holding over a quarter of client-output-limit are closed.",
            minimum=TRANSPORT_BUFFER_MIN),
    Setting("mux_connections", "int", 2, "Backend connections per backend shared by "
            "all clients (redis, memcached); the rest of the pool serves pinned "
            "sessions.", minimum=1),
    Setting("backend_password_file", "str", None, "File holding the password that "
            "pooled redis connections AUTH with."),
    Setting("backend_username", "str", None, "ACL user name for that AUTH (redis 6+)."),
    Setting("backend_db", "int", 0, "Redis database pooled connections SELECT.", minimum=0),
    Setting("client_password_file", "str", None, "File holding the password redis "
            "clients must AUTH with to use the proxy."),
    Setting("pool_mode", "str", "transaction", "postgres: when a client gives its server "
            "connection back: at the end of each transaction, or when it leaves (session).",
            choices=("transaction", "session")),
    Setting("auth_type", "str", "scram-sha-256", "postgres: how clients authenticate to the "
            "proxy, against auth_file: scram-sha-256, md5 or trust.",
            choices=("scram-sha-256", "md5", "trust")),
    Setting("auth_file", "str", None, "postgres: the users file, PgBouncer's userlist.txt "
            "format (\"user\" \"SCRAM secret, md5 hash or password\" per line); SIGHUP "
            "re-reads it."),
    Setting("max_prepared_statements", "int", 200, "postgres: protocol-level prepared "
            "statements kept per server connection (least recently used closed first).",
            minimum=1),
    Setting("server_reset_timeout", "float", 10.0, "postgres: seconds a server connection may "
            "take to reset (ROLLBACK, DISCARD ALL) before it is closed instead.", minimum=0,
            exclusive=True),
    Setting("auth_user", "str", None, "postgres: the user that runs auth_query for clients "
            "not in auth_file (its password in auth_file, or it logs in by trust); also the "
            "user health checks log in as."),
    Setting("auth_query", "str", AUTH_QUERY, "postgres: the query that finds a user's SCRAM "
            "secret or md5 hash: two columns (user name, password), the user name as $1.",
            check=_check_auth_query),
    Setting("auth_query_timeout", "float", 5.0, "postgres: seconds an auth_query lookup may "
            "take (a connection, its login and the query); then the client's authentication "
            "fails.", minimum=0, exclusive=True),
    Setting("check_database", "str", "postgres", "postgres: the database health checks log "
            "into to run SELECT 1."),
    Setting("admin_token_file", "str", None, "File whose first line is the bearer token "
            "for the admin API; without it the API is off."),
    Setting("backend_tls", "tls", None, "TLS to the backends, certificate and name verified: "
            "on (the system's CAs, each backend's host), or comma-separated KEY=VALUE of "
            "ca_file, server_name, cert_file, key_file (mutual TLS), verify=false (no check); "
            "off for none."),
    Setting("client_tls_cert_file", "str", None, "postgres: PEM certificate (intermediates "
            "after it) served to clients that ask for TLS (SSLRequest); with "
            "client_tls_key_file. Without it clients are told TLS is off. SIGHUP re-reads it."),
    Setting("client_tls_key_file", "str", None, "postgres: the private key (PEM) of "
            "client_tls_cert_file."),
    Setting("client_tls_mode", "str", "allow", "postgres, with a certificate: allow (TLS for "
            "clients that ask, plain text for the others) or require (a client that does not "
            "ask is refused: FATAL 28000; unix sockets and cancel requests excepted).",
            choices=("allow", "require")),
    Setting("balance", "str", None, "How the cluster picks a backend: round_robin, "
            "least_outstanding, consistent_hash or random [default: consistent_hash for "
            "redis and memcached, least_outstanding for http, round_robin for tcp]."),
    Setting("hash_key", "str", None, "http with consistent_hash: what to hash, 'path' or "
            "'header:NAME'.", check=_check_hash_key),
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
    Setting("body_timeout", "float", 30.0, "http: seconds a client may pause while sending a "
            "request body (then 408, or the close if the response has begun); 0 for no limit.",
            minimum=0),
    Setting("body_total_timeout", "float", 300.0, "http: seconds a client may take to send a "
            "whole request body, however steadily; 0 for no limit.", minimum=0),
    Setting("client_idle_timeout", "float", 600.0, "Seconds a redis, memcached or http client "
            "connection may stay idle (nothing sent, nothing in flight) before it is "
            "closed; 0 keeps idle clients.", minimum=0),
    Setting("send_timeout", "float", 60.0, "Seconds a client may leave what the proxy wrote to it unread (its socket full) before it is closed; 0 = no limit.", minimum=0),
    Setting("retry_budget_percent", "float", 20.0, "Retries (of safe requests on a stale "
            "connection) may add at most this share of a cluster's requests.", minimum=0),
    Setting("access_log_sample", "float", 0.0, "http: the share of requests (0 to 1) "
            "logged in an access log line; 0 logs none.", minimum=0, maximum=1),
    Setting("tunnel_idle_timeout", "float", 300.0, "http: seconds an Upgrade or CONNECT "
            "tunnel may carry no byte either way before both sides are closed; 0 for no limit.",
            minimum=0),
    Setting("request_buffer_size", "int", 64 * 1024, "http: bytes of a request body read "
            "before a backend connection is asked for; a body that fits is sent whole, so a "
            "client that trickles one holds no connection meanwhile. 0 asks at the head.",
            minimum=0),
    Setting("response_buffer_size", "int", 1024 * 1024, "http: bytes of a response read from "
            "the backend for a client that is not reading, so that a response that fits "
            "frees its backend connection at once; past it the backend is paused.", minimum=0),
    Setting("trusted_proxies", "names", (), "http: addresses or CIDR blocks of proxies in "
            "front of this one, comma-separated; only their X-Forwarded-For, -Proto and -Host "
            "are kept (the proxy's own are appended), anyone else's are replaced.",
            check=_check_network),
    Setting("shutdown_delay", "float", 0.0, "Seconds a stopping proxy (SIGTERM) keeps "
            "accepting and serving while /readyz answers 503, so that load balancers take it "
            "out first; then the drain (shutdown-timeout). A second SIGTERM ends it early.",
            minimum=0),
    Setting("shutdown_timeout", "float", 10.0, "Seconds a stopping proxy (SIGTERM) lets "
            "clients finish what is in flight before closing them.", minimum=0),
    Setting("watch_config", "bool", False, "Reload (as SIGHUP does) when the --config "
            "file changes, including a Kubernetes ConfigMap's symlink swap: true or false."),
    Setting("max_ejected_percent", "float", 50.0, "Most backends of a cluster, in percent, "
            "that circuit breakers may take out at once (a backend failing its active health "
            "checks is out regardless).", minimum=0, maximum=100),
    Setting("http_failures", "str", "5xx", "http: the responses that count as a backend "
            "failure for its breaker: 5xx (500-599), gateway (502, 503 and 504) or none "
            "(only connection errors, broken responses and timeouts count).",
            choices=tuple(HTTP_FAILURE_STATUSES)),
    Setting("hash_tag", "str", None, "redis and memcached with consistent_hash: two "
            "characters, e.g. '{}'; a key holding them is hashed by what is between them "
            "only, so keys with the same tag live on the same backend.", check=_check_hash_tag),
    Setting("shard_on_eject", "str", "remap", "consistent_hash: where the keys of a backend "
            "taken out of rotation (health checks, breaker, disabled) go: remap (to the next "
            "backend on the ring) or keep (their requests get the protocol's error, so proxies "
            "that disagree about its health never disagree about where a key lives).",
            choices=("remap", "keep")),
    Setting("dns_resolvers", "names", (), "DNS servers that resolve dns: and srv: backends, "
            "HOST:PORT, comma-separated [default: those of /etc/resolv.conf].",
            check=_check_resolver),
    Setting("dns_min_ttl", "float", 5.0, "Fewest seconds between two lookups of a dns: or "
            "srv: backend, whatever the TTL (also the retry after a failed lookup).",
            minimum=0, exclusive=True),
    Setting("dns_max_ttl", "float", 300.0, "Most seconds between two lookups of a dns: or "
            "srv: backend, whatever the TTL.", minimum=0, exclusive=True),
    Setting("dns_empty_hold", "float", 30.0, "Seconds a dns: or srv: backend's addresses are "
            "kept while its answers are empty or NXDOMAIN, before they drain (never more than "
            "max_ejected_percent of them).", minimum=0),
    Setting("deny_commands", "names", None, "Commands refused with the protocol's error "
            "instead of being sent, comma-separated (redis: a command, or a command and "
            "subcommand such as 'CLIENT KILL') [default: the codec's commands that administer "
            "the server rather than the data: docs/security.md].", check=_check_names),
    Setting("allow_commands", "names", (), "Commands taken out of deny-commands, "
            "comma-separated (e.g. CONFIG,MONITOR).", check=_check_names),
    Setting("unknown_commands", "str", "refuse", "redis: what a command the proxy does not "
            "know gets: refuse (the protocol's error, as twemproxy does) or pin (a backend "
            "connection of the client's own, so that however many replies it gets none can "
            "reach another client).", choices=("refuse", "pin")),
    Setting("workers", "int", 1, "Processes serving clients. Above 1, a supervisor "
            "process spawns that many workers sharing tcp listeners (SO_REUSEPORT) and "
            "sums their /metrics.", minimum=1),
    Setting("hooks", "hooks", (), "Python hooks, a [hooks] table of point = "
            "'module:callable' (flag: --hook POINT=module:callable, repeatable): "
            + points_help() + ". docs/hooks.md."),
    Setting("hook_timeout", "float", 1.0, "Seconds a hook that returns a Deferred or "
            "coroutine has to answer; past it the request (or client) is refused as if the "
            "hook had raised.", minimum=0, exclusive=True),
)

SETTINGS_BY_NAME: Dict[str, Setting] = {s.name: s for s in SETTINGS}

BALANCE_POLICIES = tuple(POLICIES)  # the names poolproxy.backends.balancing implements


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
    "breaker_reset_timeout", "breaker_max_reset_timeout", "max_ejected_percent", "hash_tag",
    "http_failures", "deny_commands", "allow_commands", "unknown_commands",
    "backend_tls", "pool_mode", "max_prepared_statements",
    "shard_on_eject",
)

LISTENER_KEYS: Tuple[str, ...] = ("name", "listen", "cluster", "max_connections", "hooks")
CLUSTER_KEYS: Tuple[str, ...] = ("name", "protocol", "balance", "hash_key", "backend") + CLUSTER_OVERRIDES
BACKEND_KEYS: Tuple[str, ...] = ("address", "name", "weight")

#: The name of the cluster built from the flat C{backend} key (or C{demo}).
DEFAULT_CLUSTER = "default"


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
    if setting.maximum is not None and value > setting.maximum:
        raise ConfigError(f"{where}: must be at most {setting.maximum:g}, got {raw!r}")
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
    if setting.kind == "names":
        return _coerce_names(setting, raw, where, text_ok)
    if setting.kind == "tls":
        return _coerce_tls(raw, where, text_ok)
    if setting.kind == "bool":
        return _coerce_bool(raw, where, text_ok)
    if setting.kind == "hooks":
        return coerce_hooks(raw, where, text_ok)
    if setting.kind == "str":
        if not isinstance(raw, str) or not raw.strip():
            raise ConfigError(f"{where}: expected a non-empty string, got {raw!r}")
        value = raw.strip()
        if setting.choices is not None:
            _check_choice("value", value, setting.choices, where)
        if setting.check is not None:
            setting.check(value, where)
        return value
    # list
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, (list, tuple)) or not all(isinstance(x, str) and x.strip() for x in raw):
        raise ConfigError(f"{where}: expected a list of non-empty strings, got {raw!r}")
    return tuple(x.strip() for x in raw)


def coerce_hooks(raw: Any, where: str, text_ok: bool = False,
                 keep_empty: bool = False) -> Tuple[Tuple[str, str], ...]:
    """
    A C{[hooks]} table (point -> C{'module:callable'}), or (flags) a list of
    C{POINT=module:callable}, as (point, spec) pairs in hook point order.

    @param keep_empty: keep C{point = ""} (a listener turning off a hook
        of the top level's); else it is left out.
    """
    if text_ok and isinstance(raw, (list, tuple, str)):
        pairs = {}
        for item in [raw] if isinstance(raw, str) else raw:
            point, equals, spec = str(item).partition("=")
            if not equals:
                raise ConfigError(f"{where}: expected POINT=module:callable, got {item!r}")
            pairs[point.strip()] = spec.strip()
        raw = pairs
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a [hooks] table of point = 'module:callable', "
                          f"got {raw!r}")
    for point, spec in raw.items():
        if not (spec == "" and keep_empty):
            try:
                check_spec(point, spec, f"{where}.{point}")
            except HookLoadError as e:
                raise ConfigError(str(e)) from None
    return tuple((p.name, raw[p.name]) for p in HOOK_POINTS
                 if p.name in raw and (raw[p.name] or keep_empty))


#: How a flag may say yes or no (TOML has its own true and false).
_BOOL_WORDS = {"true": True, "yes": True, "on": True, "1": True,
               "false": False, "no": False, "off": False, "0": False}


def _coerce_bool(raw: Any, where: str, text_ok: bool) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and text_ok and raw.strip().lower() in _BOOL_WORDS:
        return _BOOL_WORDS[raw.strip().lower()]
    raise ConfigError(f"{where}: expected true or false, got {raw!r}")


def _coerce_names(setting: Setting, raw: Any, where: str, text_ok: bool) -> Tuple[str, ...]:
    """A list of names: a TOML list, or (a flag) one string of comma-separated names."""
    if isinstance(raw, str) and text_ok:
        raw = [part for part in raw.split(",") if part.strip()]
    if not isinstance(raw, (list, tuple)) or not all(isinstance(x, str) and x.strip() for x in raw):
        raise ConfigError(f"{where}: expected a list of names, got {raw!r}")
    names = tuple(" ".join(x.replace("|", " ").split()) for x in raw)
    if setting.check is not None:
        for name in names:
            setting.check(name, where)
    return names


def _located(path: str, file_name: str) -> str:
    """How an error names C{path} (a key or a table's key) of the TOML file."""
    return f"{path} (in {file_name})" if file_name else path


def _dash(key: str) -> str:
    return key.replace("_", "-")


def _check_choice(kind: str, value: Optional[str], choices: Sequence[str], where: str) -> None:
    if value is not None and value not in choices:
        raise ConfigError(f"{where}: unknown {kind} {value!r}; available: {', '.join(choices)}")


#: Settings that must be ordered, (lower, upper, whether an error names the
#: lower key when both are set); checked on the top level and on each
#: cluster's own values alike.
ORDERED_PAIRS: Tuple[Tuple[str, str, bool], ...] = (
    ("pool_min_idle", "pool_size", True),
    ("mux_connections", "pool_size", True),
    ("breaker_reset_timeout", "breaker_max_reset_timeout", False),
    ("dns_min_ttl", "dns_max_ttl", False),
)


#: Pairs that only protocols whose clients share backend connections have
#: (mux_connections is a share of pool_size for redis and memcached only).
MULTIPLEXED_PAIRS = frozenset({("mux_connections", "pool_size")})


def shares_connections(protocol: str) -> bool:
    """Whether C{protocol}'s clients share backend connections (its mode is multiplexed)."""
    from poolproxy.plugins import codec_plugins
    plugin = codec_plugins().get(protocol)
    if plugin is None:
        return True  # unknown: checked as strictly as any; the protocol's own check says why
    return bool(plugin.load().mode == "multiplexed")


def check_ordered(value: Callable[[str], Any], given: Container[str],
                  where: Callable[[str], str], multiplexed: bool = True) -> None:
    """
    Each pair of L{ORDERED_PAIRS} in order, with the values C{value(key)};
    a pair neither of whose keys is in C{given} (set by the user, here) is
    not checked, nor one of L{MULTIPLEXED_PAIRS} unless C{multiplexed};
    an error names a key that is given, located by C{where(key)}.
    """
    for low, high, name_low in ORDERED_PAIRS:
        if low not in given and high not in given:
            continue
        if not multiplexed and (low, high) in MULTIPLEXED_PAIRS:
            continue
        low_value, high_value = value(low), value(high)
        if low_value <= high_value:
            continue
        if (low in given) if name_low else (high not in given):
            raise ConfigError(f"{where(low)}: must not exceed {_dash(high)} "
                              f"({high_value:g}), got {low_value:g}")
        raise ConfigError(f"{where(high)}: must be at least {_dash(low)} "
                          f"({low_value:g}), got {high_value:g}")
