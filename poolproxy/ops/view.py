"""
What the operator's views read of a running proxy: a small declared
interface, which L{poolproxy.service.ProxyService} provides, so that the web
tree, the status page, the metrics collector and the admin API depend on
these few names and not on the service, and their tests can pass a fake.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Protocol, Sequence

from twisted.internet.interfaces import IListeningPort

from poolproxy.backends.cluster import Cluster
from poolproxy.backends.discovery import DnsName
from poolproxy.backends.pool import BackendPool
from poolproxy.config import ProxyConfig
from poolproxy.config.secrets import Secrets
from poolproxy.hooks.calling import ListenerHooks
from poolproxy.proxy.admission import Admission
from poolproxy.proxy.limits import ConnectionLimits
from poolproxy.proxy.output import OutputBudget
from poolproxy.stats import ListenerStats
from poolproxy.util.accepting import AcceptGate


class ListenerView(Protocol):
    """
    One listener: its name, endpoint, counters, cluster and port, the gate
    that pauses its accepting, and its connection limit.
    """

    @property
    def name(self) -> str: ...

    @property
    def endpoint(self) -> str: ...

    @property
    def stats(self) -> ListenerStats: ...

    @property
    def cluster(self) -> Cluster: ...

    @property
    def port(self) -> Optional[IListeningPort]:
        """The listening port while it listens, else L{None}."""

    @property
    def gate(self) -> AcceptGate: ...

    @property
    def connection_limit(self) -> int:
        """The most client connections it may have open (its own cap or the process's)."""


class ProxyView(Protocol):
    """A running proxy as its operator's views see it."""

    @property
    def config(self) -> ProxyConfig: ...

    @property
    def secrets(self) -> Secrets:
        """The secrets read from files (the admin token), as SIGHUP left them."""

    @property
    def reactor(self) -> Any:
        """Its clock (rates), and its type, for the status page."""

    @property
    def admission(self) -> Admission: ...

    @property
    def output(self) -> OutputBudget:
        """The bytes held for clients that do not read, and the limits."""

    @property
    def limits(self) -> ConnectionLimits:
        """The client connections open, against the process's caps."""

    @property
    def listeners(self) -> Sequence[ListenerView]: ...

    @property
    def clusters(self) -> Mapping[str, Cluster]: ...

    @property
    def hooks(self) -> Mapping[str, ListenerHooks]:
        """Each listener's hooks, by listener name."""

    @property
    def pools(self) -> Sequence[BackendPool]:
        """One pool per backend, backends a reload is draining included."""

    @property
    def dns_names(self) -> Sequence[DnsName]:
        """The C{dns:} and C{srv:} entries of every cluster, as resolved."""

    @property
    def ready(self) -> bool:
        """Whether a backend connection can be had (for /readyz)."""

    @property
    def stopping(self) -> bool:
        """Whether it is shutting down (SIGTERM): /readyz says so, whatever the backends."""


__all__ = ["ListenerView", "ProxyView"]
