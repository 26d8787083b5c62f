"""
What to listen on and proxy to: the listener, cluster and backend
configurations, built from the flat C{listen}/C{backend} keys or from the
TOML file's C{[[listener]]}, C{[[cluster]]} and C{[[cluster.backend]]}
tables, each checked with a one-line L{ConfigError} naming the table and key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import (TYPE_CHECKING, Any, Callable, Dict, Iterable, List, Mapping, Optional,
                    Sequence, Tuple)

from poolproxy.backends.discovery import parse_discovery
from poolproxy.config.endpoints import backend_host, backend_name, demo_address
from poolproxy.config.settings import (
    BACKEND_KEYS,
    BALANCE_POLICIES,
    CLUSTER_KEYS,
    CLUSTER_OVERRIDES,
    DEFAULT_CLUSTER,
    LISTENER_KEYS,
    SETTINGS_BY_NAME,
    ConfigError,
    Setting,
    _check_choice,
    _check_hash_key,
    _located,
    check_ordered,
    coerce,
    coerce_hooks,
    shares_connections,
)
from poolproxy.config.tls import ClientTLS, check_server_name

if TYPE_CHECKING:
    from poolproxy.config import ProxyConfig

@dataclass(frozen=True)
class BackendConfig:
    """
    One backend of a cluster.

    @ivar name: its name in metrics and logs, unique within the cluster.
    @ivar address: a client endpoint string or C{HOST:PORT}; see
        L{poolproxy.config.endpoints.client_endpoint}.
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
        default (L{poolproxy.proxy.modes.Mode.balance}).
    @ivar hash_key: for http with C{consistent_hash}, or L{None}.
    @ivar overrides: the L{CLUSTER_OVERRIDES} keys this cluster sets, already
        validated; read them with L{setting}.
    @ivar discovered: its C{dns:} and C{srv:} entries, whose backends DNS
        names at run time (L{poolproxy.backends.discovery}); C{backends}
        holds the others.
    """

    name: str
    protocol: str
    balance: Optional[str]
    hash_key: Optional[str]
    backends: Tuple[BackendConfig, ...]
    overrides: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}), hash=False)
    discovered: Tuple[BackendConfig, ...] = ()

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
    @ivar max_connections: the most client connections it may have open at
        once, or L{None} for the process's C{max_client_connections} only.
    @ivar hooks: its own C{hooks} table, (point, C{module:callable}) pairs
        over the top level's; an empty spec turns one of those off
        (L{ProxyConfig.listener_hooks} merges them).
    """

    name: str
    endpoint: str
    cluster: str
    max_connections: Optional[int] = None
    hooks: Tuple[Tuple[str, str], ...] = ()


_WEIGHT = Setting("weight", "int", 1, "A backend's share of requests.", minimum=1)
_MAX_CONNECTIONS = Setting("max_connections", "int", None, "A listener's connection limit.",
                           minimum=1)


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
    addresses = list(backend)
    if not addresses and demo:
        host_port = demo_address(demo)
        if host_port is not None:
            addresses.append(f"{host_port[0]}:{host_port[1]}")
    if not addresses:
        return (), ()
    static, discovered = _split_discovered(
        BackendConfig(backend_name(a), a, 1) for a in addresses)
    cluster = ClusterConfig(DEFAULT_CLUSTER, protocol, balance, hash_key, static,
                            discovered=discovered)
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
        # The checks between settings, on this cluster's values (its
        # overrides, else the top-level ones); an error names a key it sets.
        check_ordered(lambda key: overrides.get(key, top[key]), overrides, table.at,
                      multiplexed=shares_connections(protocol))
        backends = _backends_from_tables(values.get("backend"), table, name, check)
        if "backend_tls" in overrides:
            check_backend_tls(overrides["backend_tls"], backends, table.at("backend_tls"))
        static, discovered = _split_discovered(backends)
        clusters.append(ClusterConfig(name, protocol, balance, hash_key, static,
                                      MappingProxyType(overrides), discovered))
    return tuple(clusters)


def _split_discovered(backends: Iterable[BackendConfig],
                      ) -> Tuple[Tuple[BackendConfig, ...], Tuple[BackendConfig, ...]]:
    """The backends given by address, and the C{dns:} and C{srv:} entries."""
    static: List[BackendConfig] = []
    discovered: List[BackendConfig] = []
    for backend in backends:
        (discovered if parse_discovery(backend.address) else static).append(backend)
    return tuple(static), tuple(discovered)


def check_backend_tls(tls: Any, backends: Sequence[BackendConfig], where: str) -> None:
    """
    A cluster's C{backend_tls} (or L{None}): its files load, and each
    backend has a name for its certificate to match.

    @raise ConfigError: naming C{where}.
    """
    if tls is None:
        return
    ClientTLS(tls, where)
    for backend in backends:
        check_server_name(tls, backend_host(backend.address), backend.address, where)


def _backends_from_tables(raw: Any, cluster: _Table, cluster_name: str,
                          check: Optional[Callable[[str, str], None]]) -> Tuple[BackendConfig, ...]:
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
        cap = values.get("max_connections")
        if cap is not None:
            cap = coerce(_MAX_CONNECTIONS, cap, table.at("max_connections"), text_ok=False)
        hooks = values.get("hooks")
        if hooks is not None:
            hooks = coerce_hooks(hooks, table.at("hooks"), keep_empty=True)
        listeners.append(ListenerConfig(name, endpoint, cluster, cap, hooks or ()))
    return tuple(listeners)
