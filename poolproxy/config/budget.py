"""
The file-descriptor budget: how many client connections fit in the
process's open file limit once what the rest of the proxy needs is set
aside.

Client connections, backend connections, health probes, the web
endpoint's connections and listening sockets are all descriptors, and at
the limit C{accept()} and C{connect()} fail alike (EMFILE): clients that
took every descriptor would cut the proxy off from its backends and from
its operator.  So the limit is split::

    reserved = pools + health checks + web endpoint + listeners + margin
      pools          the sum of pool_size over every backend of every cluster
      health checks  one per backend whose cluster runs them (check_interval > 0)
      web endpoint   WEB_CONNECTIONS + 1 (its listening socket)
      listeners      one listening socket each
      margin         MARGIN: the process's own (standard streams, the log,
                     the reactor's poller and waker, Twisted's spare EMFILE
                     descriptor, files a reload or a scrape reads, backends
                     a reload adds)
    clients = limit - reserved

C{max_client_connections} defaults to C{clients}; an explicit cap that
exceeds it (that one, or a listener's C{max_connections}) is a
configuration error naming the numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from poolproxy.config.settings import ConfigError

if TYPE_CHECKING:
    from poolproxy.config import ProxyConfig

#: Descriptors kept for the process's own use.
MARGIN = 64
#: Connections the web endpoint (/metrics, /readyz, /status, /admin) serves at
#: once; more wait in its backlog.
WEB_CONNECTIONS = 32


@dataclass(frozen=True)
class DescriptorBudget:
    """The open file limit, and the descriptors set aside from it (see the module)."""

    limit: int
    pools: int
    health_checks: int
    web: int
    listeners: int
    margin: int = MARGIN

    @property
    def reserved(self) -> int:
        return self.pools + self.health_checks + self.web + self.listeners + self.margin

    @property
    def clients(self) -> int:
        """Descriptors left for client connections (may be 0 or less)."""
        return self.limit - self.reserved

    def describe(self) -> str:
        return (f"the open file limit ({self.limit}) less {self.pools} for backend pools, "
                f"{self.health_checks} for health checks, {self.web} for the web endpoint, "
                f"{self.listeners} for listeners and a margin of {self.margin} leaves "
                f"{self.clients}")


def descriptor_budget(config: "ProxyConfig", limit: int) -> DescriptorBudget:
    """What C{config} needs besides client connections, within C{limit} descriptors."""
    pools = checks = 0
    for cluster in config.clusters:
        backends = len(cluster.backends)
        pools += backends * cluster.setting("pool_size", config)
        if cluster.setting("check_interval", config):
            checks += backends
    return DescriptorBudget(limit, pools, checks, WEB_CONNECTIONS + 1, len(config.listeners))


def client_cap(config: "ProxyConfig", budget: DescriptorBudget) -> int:
    """
    The process's cap on client connections: C{max_client_connections},
    else all that C{budget} leaves.

    @raise ConfigError: if the caps configured, or even one client
        connection, do not fit.
    """
    room = budget.clients
    advice = "raise the limit (ulimit -n, systemd LimitNOFILE=) or lower pool_size"
    given = config.max_client_connections
    if given is not None and given > room:
        where = config.sources.get("max_client_connections", "--max-client-connections")
        raise ConfigError(f"{where}: {given} client connections do not fit: "
                          f"{budget.describe()}; {advice} or this")
    for listener in config.listeners:
        if listener.max_connections is not None and listener.max_connections > room:
            raise ConfigError(f"listener {listener.name!r} max_connections: "
                              f"{listener.max_connections} client connections do not fit: "
                              f"{budget.describe()}; {advice} or this")
    if room < 1:
        raise ConfigError(f"open file limit: no descriptor is left for client connections: "
                          f"{budget.describe()}; {advice}")
    return given if given is not None else room


__all__ = ["DescriptorBudget", "MARGIN", "WEB_CONNECTIONS", "client_cap", "descriptor_budget"]
