"""
Reloading the configuration (SIGHUP) without dropping client connections.

What can change in place: the backends of an existing cluster (added; removed,
after they drain; re-weighted).  What needs a restart (new or removed
clusters, listeners, a backend's address, pool sizes) is logged and left as
it was.  A configuration that does not load is logged and the running one
kept.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from twisted.logger import Logger

from poolproxy.assemble import ClusterAssembly
from poolproxy.backends.cluster import Backend, Cluster
from poolproxy.config import ClusterConfig, ProxyConfig
from poolproxy.util.waiting import wait_until

if TYPE_CHECKING:
    from poolproxy.service import ProxyService


class Reloader:
    """
    @ivar reloads: reloads applied; C{failures}: reloads refused.
    """

    log = Logger()

    def __init__(self, service: "ProxyService", load: Callable[[], ProxyConfig]) -> None:
        self.service = service
        self.load = load
        self.reloads = 0
        self.failures = 0

    def reload(self) -> bool:
        """Load the configuration again and apply what can change in place."""
        try:
            config = self.load()
        except Exception as e:
            self.failures += 1
            self.log.error("reload: the new configuration is broken, keeping the running "
                           "one: {why}", why=str(e).splitlines()[0] if str(e) else repr(e))
            return False
        self.reloads += 1
        service = self.service
        for spec in config.clusters:
            cluster = service.clusters.get(spec.name)
            if cluster is None:
                self.log.warn("reload: new cluster {cluster} needs a restart", cluster=spec.name)
            else:
                self._reconcile(cluster, spec, config)
        wanted = {spec.name for spec in config.clusters}
        for name in service.clusters:
            if name not in wanted:
                self.log.warn("reload: removing cluster {cluster} needs a restart", cluster=name)
        running = {(l.name, l.endpoint, l.factory.cluster.name) for l in service.listeners}
        if running != {(l.name, l.endpoint, l.cluster) for l in config.listeners}:
            self.log.warn("reload: listener changes need a restart")
        self.log.info("reload: done")
        return True

    def _reconcile(self, cluster: Cluster, spec: ClusterConfig, config: ProxyConfig) -> None:
        service = self.service
        assembly = ClusterAssembly(spec, config, service.reactor, service.admission,
                                   service.codec_options, cluster.codec)  # type: ignore[attr-defined]
        assembly.cluster = cluster
        current = {b.name: b for b in cluster.backends}
        for wanted in spec.backends:
            backend = current.get(wanted.name)
            if backend is None:
                backend = assembly.new_backend(wanted.name, wanted.address, wanted.weight)
                cluster.add(backend)
                service.pools.append(backend.pool)
                if service.running:
                    backend.start()
                self.log.info("reload: backend {backend} added to cluster {cluster}",
                              backend=wanted.name, cluster=cluster.name)
            elif backend.weight != wanted.weight:
                self.log.info("reload: backend {backend} of cluster {cluster}: weight "
                              "{old} -> {new}", backend=wanted.name, cluster=cluster.name,
                              old=backend.weight, new=wanted.weight)
                cluster.set_weight(backend, wanted.weight)
        names = {b.name for b in spec.backends}
        for name, backend in current.items():
            if name not in names:
                self._retire(cluster, backend)

    def _retire(self, cluster: Cluster, backend: Backend) -> None:
        """No new requests; close once those in flight are done (or the shutdown timeout)."""
        backend.draining = True
        cluster.remove(backend)
        self.log.info("reload: backend {backend} leaves cluster {cluster}; draining",
                      backend=backend.name, cluster=cluster.name)
        service = self.service

        def close(_: bool) -> None:
            multiplexer = cluster.multiplexers.pop(backend, None)  # type: ignore[attr-defined]
            if multiplexer is not None:
                multiplexer.close()
            backend.stop()
            backend.pool.close()
            if backend.pool in service.pools:
                service.pools.remove(backend.pool)
            self.log.info("reload: backend {backend} closed", backend=backend.name)

        wait_until(service.reactor, lambda: backend.outstanding == 0,
                   service.config.shutdown_timeout).addCallback(close)

__all__ = ["Reloader"]
