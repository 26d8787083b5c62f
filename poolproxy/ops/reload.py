"""
Reloading the configuration (SIGHUP) without dropping client connections.

What can change in place: the backends of an existing cluster (added; removed,
after they drain; re-weighted; those DNS brought in are DNS's to change), and what the running configuration reads
from files: the password files, the admin token, the certificates and keys
of ssl: listeners, the CAs and client certificates of backend_tls, and the
postgres users file (auth_file); and each listener's Python hooks, whose
modules are imported afresh (a listener whose hooks do not all import keeps
its running ones).  Those files are read again from the files the
running configuration names, with one line for each that changed (never a
secret).  What needs a restart (new or removed clusters, listener changes,
a backend's address, and any other setting, top level or per cluster, a
file's path included) is logged, by name, and left as it was.  A
configuration that does not load, a file it names that does not read
included (as nginx and HAProxy refuse such a reload), is logged and the
running one kept; a file that breaks between that check and its re-read
(or one the check does not read: the users file) keeps what was in use,
with a line saying why.
"""

from __future__ import annotations

from functools import partial
from typing import (Any, Callable, Container, Dict, List, Mapping, Optional, Protocol, Sequence,
                    Tuple, Type)

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from poolproxy.backends.cluster import Backend, Cluster
from poolproxy.config import SETTINGS, BackendConfig, ClusterConfig, ConfigError, ProxyConfig
from poolproxy.hooks.calling import ListenerHooks
from poolproxy.hooks.loading import HookLoadError
from poolproxy.ops.view import ListenerView

#: Top-level settings that reload applies or compares by itself (the flat
#: topology keys become listeners and the default cluster's backends; the
#: hooks are imported again).
_TOPOLOGY = ("listen", "backend", "hooks", "hook_timeout")
#: A cluster's own fields, besides its per-cluster overrides.
_CLUSTER_FIELDS = ("protocol", "balance", "hash_key")


class Rereadable(Protocol):
    """
    Something read from files that a reload reads again in place: a secret
    (L{poolproxy.config.secrets.SecretFile}), a certificate
    (L{poolproxy.config.tls.ServerTLS}, L{poolproxy.config.tls.ClientTLS}),
    a users file (L{poolproxy.proxy.transaction.auth.Users}).
    """

    @property
    def where(self) -> str:
        """How logs name it: its setting, or its listener or cluster."""

    def reload(self) -> Optional[str]:
        """
        Read the files again: what changed, never a secret itself (L{None}
        if nothing did).

        @raise ConfigError: a file does not read; what was in use is kept.
        """


class Reloadable(Protocol):
    """What a reload changes in a running proxy (L{ProxyService} provides it)."""

    @property
    def config(self) -> ProxyConfig:
        """The configuration it runs with."""

    @property
    def clusters(self) -> Mapping[str, Cluster]: ...

    @property
    def listeners(self) -> Sequence[ListenerView]: ...

    def add_backend(self, cluster: str, spec: BackendConfig) -> Backend:
        """A new backend joins a cluster."""

    def retire_backend(self, cluster: str, backend: Backend) -> "Deferred[None]":
        """A backend leaves a cluster once its requests in flight are done."""

    @property
    def hooks(self) -> Mapping[str, ListenerHooks]:
        """Each listener's hooks, by listener name."""

    def rereadable(self) -> Sequence[Rereadable]:
        """What the running configuration reads from files, to read again."""

    def discovered(self, cluster: str) -> Container[str]:
        """The names of the backends DNS brought into a cluster (a reload leaves them)."""


class Reloader:
    """
    @ivar reloads: reloads applied; C{failures}: reloads refused.
    @ivar files_kept: files that did not read, whose contents in use were kept.
    """

    log = Logger()

    def __init__(self, target: Reloadable, load: Callable[[], ProxyConfig]) -> None:
        self.target = target
        self.load = load
        self.reloads = 0
        self.failures = 0
        self.files_kept = 0
        # The address of every backend running, by (cluster, name): the
        # configuration's, and those of backends a reload added.
        self._addresses: Dict[Tuple[str, str], str] = {
            (spec.name, b.name): b.address for spec in target.config.clusters for b in spec.backends}

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
        target = self.target
        running = target.config
        self._reread()
        self._hooks(config)
        for spec in config.clusters:
            cluster = target.clusters.get(spec.name)
            if cluster is None:
                self.log.warn("reload: new cluster {cluster} needs a restart", cluster=spec.name)
                continue
            self._settings(f"cluster {spec.name}", _cluster_changes(running.cluster(spec.name), spec))
            self._reconcile(cluster, spec)
        wanted = {spec.name for spec in config.clusters}
        for name in target.clusters:
            if name not in wanted:
                self.log.warn("reload: removing cluster {cluster} needs a restart", cluster=name)
        listening = {(l.name, l.endpoint, l.cluster.name) for l in target.listeners}
        capped = {(l.name, l.max_connections) for l in running.listeners}
        if (listening != {(l.name, l.endpoint, l.cluster) for l in config.listeners}
                or capped != {(l.name, l.max_connections) for l in config.listeners}):
            self.log.warn("reload: listener changes need a restart")
        self._settings("top level", [s.name for s in SETTINGS if s.name not in _TOPOLOGY
                                     and getattr(running, s.name) != getattr(config, s.name)])
        self.log.info("reload: done")
        return True

    def _reread(self) -> None:
        for item in self.target.rereadable():
            # A ConfigError names the file and its setting.
            if not self._read_again(item.where, item.reload, ConfigError, "the one in use"):
                self.files_kept += 1

    def _hooks(self, config: ProxyConfig) -> None:
        """
        Each listener's hooks imported again (their modules too, so edited
        code takes effect), with the new hooks table; a listener whose hooks
        do not all import keeps its running ones.
        """
        for spec in config.listeners:
            hooks = self.target.hooks.get(spec.name)
            if hooks is not None:
                self._read_again(hooks.where, partial(hooks.load, config.listener_hooks(spec),
                                                      config.hook_timeout, fresh=True),
                                 HookLoadError, "the running hooks")

    def _read_again(self, where: str, read: Callable[[], Optional[str]],
                    errors: Type[Exception], kept: str) -> bool:
        """
        C{read()} what changed, logged by C{where}; False, with a line
        saying why and what is C{kept}, if it raises one of C{errors}.
        """
        try:
            changed = read()
        except errors as e:
            self.log.error("reload: {why}; keeping {kept}", why=str(e), kept=kept)
            return False
        if changed:
            self.log.info("reload: {where}: {changed}", where=where, changed=changed)
        return True

    def _settings(self, where: str, changed: List[str]) -> None:
        if changed:
            self.log.warn("reload: {where}: {settings} changed; changes to settings need a "
                          "restart", where=where, settings=", ".join(changed))

    def _reconcile(self, cluster: Cluster, spec: ClusterConfig) -> None:
        target = self.target
        # DNS changes the backends of dns: and srv: entries; the entries
        # themselves are read at start.
        discovered = target.discovered(cluster.name)
        current = {b.name: b for b in cluster.backends if b.name not in discovered}
        running = self.target.config.cluster(cluster.name).discovered
        if {b.address for b in running} != {b.address for b in spec.discovered}:
            self.log.warn("reload: cluster {cluster}: changes to its dns: and srv: backends "
                          "need a restart", cluster=cluster.name)
        for wanted in spec.backends:
            backend = current.get(wanted.name)
            key = (cluster.name, wanted.name)
            if backend is None:
                target.add_backend(cluster.name, wanted)
                self._addresses[key] = wanted.address
                self.log.info("reload: backend {backend} added to cluster {cluster}",
                              backend=wanted.name, cluster=cluster.name)
                continue
            if self._addresses.get(key, wanted.address) != wanted.address:
                self.log.warn("reload: backend {backend} of cluster {cluster}: a new address "
                              "({old} -> {new}) needs a restart", backend=wanted.name,
                              cluster=cluster.name, old=self._addresses[key], new=wanted.address)
            if backend.weight != wanted.weight:
                self.log.info("reload: backend {backend} of cluster {cluster}: weight "
                              "{old} -> {new}", backend=wanted.name, cluster=cluster.name,
                              old=backend.weight, new=wanted.weight)
                cluster.set_weight(backend, wanted.weight)
        names = {b.name for b in spec.backends}
        for name, backend in current.items():
            if name not in names:
                self._retire(cluster, backend)

    def _retire(self, cluster: Cluster, backend: Backend) -> None:
        self.log.info("reload: backend {backend} leaves cluster {cluster}; draining",
                      backend=backend.name, cluster=cluster.name)
        self._addresses.pop((cluster.name, backend.name), None)

        def closed(_: Any) -> None:
            self.log.info("reload: backend {backend} closed", backend=backend.name)

        self.target.retire_backend(cluster.name, backend).addCallback(closed)


def _cluster_changes(old: ClusterConfig, new: ClusterConfig) -> List[str]:
    """The settings of a cluster (its fields and overrides) that differ."""
    changed = [key for key in _CLUSTER_FIELDS if getattr(old, key) != getattr(new, key)]
    for key in sorted(set(old.overrides) | set(new.overrides)):
        if old.overrides.get(key) != new.overrides.get(key):
            changed.append(key)
    return changed


__all__ = ["Reloadable", "Reloader", "Rereadable"]
