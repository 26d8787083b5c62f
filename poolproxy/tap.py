"""
The C{twistd poolproxy} command line: flags, the TOML file, validation, and
the service they configure.
"""

from __future__ import annotations

import os
import platform
import sys
from typing import Any, Dict, List, Mapping, Optional, Sequence

from twisted.application.service import Service
from twisted.logger import Logger
from twisted.python import usage

from poolproxy.config import SETTINGS, ConfigError, ProxyConfig, build_config, load_toml
from poolproxy.config.budget import client_cap, descriptor_budget
from poolproxy.config.endpoints import check_client, check_demo, check_server, tcp_listen_address
from poolproxy.hooks.points import points_help
from poolproxy.service import ProxyService
from poolproxy.util.descriptors import open_file_limit, raise_open_file_limit
from poolproxy.util.file_watch import FileWatcher
from poolproxy.workers.supervisor import Supervisor
from poolproxy.workers.worker import Handoff, worker_config

_ENDPOINT_CHECKS = {
    "listen": check_server,
    "metrics": check_server,
    "backend": check_client,
    "demo": check_demo,
}


class ProxyOptions(usage.Options):
    """
    Options for C{twistd poolproxy}; errors raise L{ConfigError}.  Flags override the keys of the TOML file
    given with C{--config}; docs/configuration.md describes every setting.
    """

    synopsis = "[options]"
    longdesc = (
        "A protocol-aware, connection-pooling reverse proxy. Durations are in "
        "seconds (floats allowed). Example: twistd -n poolproxy --listen "
        "tcp:6380:interface=127.0.0.1 --backend 127.0.0.1:6379"
    )
    optParameters = [["config", "c", None, "TOML file holding these settings; flags override it."]] + [
        [s.flag[2:], None, None, f"{s.doc} [default: {s.default!r}]"]
        for s in SETTINGS if s.kind not in ("list", "hooks")
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["backend"] = []
        self["hooks"] = []
        self.config: ProxyConfig = ProxyConfig()

    def opt_listen(self, description: str) -> None:
        """Server endpoint to accept clients on, e.g. tcp:6380:interface=127.0.0.1 (repeatable)."""
        self["listen"].append(description)

    def opt_backend(self, description: str) -> None:
        """Client endpoint of a backend, e.g. tcp:host=127.0.0.1:port=6379, or HOST:PORT (repeatable)."""
        self["backend"].append(description)

    def opt_hook(self, description: str) -> None:
        self["hooks"].append(description)

    def opt_hooks(self, description: str) -> None:
        """The same as --hook."""
        self.opt_hook(description)

    opt_hook.__doc__ = (
        "A Python hook, POINT=module:callable (repeatable; docs/hooks.md). Hook points: "
        + points_help() + ".")

    def parseOptions(self, options: Optional[Sequence[str]] = None) -> None:
        # Kept so that --workers can start each worker with the same arguments.
        self.argv: List[str] = list(sys.argv[1:] if options is None else options)
        super().parseOptions(options)

    def postOptions(self) -> None:
        self.config = self.reload()

    def reload(self) -> ProxyConfig:
        """
        The configuration from the same flags and a fresh read of the file
        (SIGHUP).

        @raise ConfigError: if the file is now unreadable or invalid.
        """
        file_values: Dict[str, Any] = {}
        if self["config"]:
            file_values = load_toml(self["config"])
        flags = {s.name: self[s.flag[2:]] for s in SETTINGS}
        config = build_config(file_values, flags, self["config"] or "", _ENDPOINT_CHECKS)
        if config.workers > 1:
            _check_worker_listeners(config)
        if config.watch_config and not self["config"]:
            raise ConfigError(f"{config.sources.get('watch_config', '--watch-config')}: "
                              "needs a file to watch (--config)")
        return config


def _check_worker_listeners(config: ProxyConfig) -> None:
    """Workers bind tcp listeners with SO_REUSEPORT: no other kind will do."""
    for spec in config.listeners:
        if tcp_listen_address(spec.endpoint) is None:
            where = config.sources.get("workers", "--workers")
            raise ConfigError(f"{where}: workers need tcp or tcp6 listeners; "
                              f"listener {spec.name} is {spec.endpoint!r}")


class Options(ProxyOptions):
    """
    What twistd uses: a configuration error becomes one line on stderr and
    exit status 1, instead of twistd's whole usage text.
    """

    def postOptions(self) -> None:
        try:
            super().postOptions()
        except ConfigError as e:
            raise SystemExit(f"poolproxy: error: {e}")


log = Logger()


def pypy_gc_hint(implementation: str, environ: Mapping[str, str]) -> Optional[str]:
    """
    On PyPy without C{PYPY_GC_NURSERY}, the advice of docs/operations.md:
    PyPy's default young generation (half the L2 cache) costs poolproxy a
    third more CPU per request.
    """
    if implementation != "PyPy" or environ.get("PYPY_GC_NURSERY"):
        return None
    return ("PyPy runs with its default GC nursery (half the L2 cache); "
            "PYPY_GC_NURSERY=8MB in the environment took about a third off the CPU "
            "of an http request in poolproxy's benchmark (docs/operations.md#on-pypy)")


def makeService(options: ProxyOptions) -> Service:
    try:
        return _make_service(options)
    except ConfigError as e:  # the caps do not fit the open file limit
        raise SystemExit(f"poolproxy: error: {e}")


def _make_service(options: ProxyOptions) -> Service:
    # The soft open file limit goes up to the hard one; workers inherit it.
    before, after = raise_open_file_limit()
    if after > before:
        log.info("raised the open file limit from {before} to {after} (its hard limit)",
                 before=before, after=after)
    # Under twistd, SIGHUP reloads the file given with --config.
    handoff = Handoff.from_env(os.environ)
    if handoff is not None:  # a worker spawned by a supervisor
        return ProxyService(worker_config(options.config),
                            reload_config=lambda: worker_config(options.reload()),
                            handle_sighup=True, handoff=handoff)
    hint = pypy_gc_hint(platform.python_implementation(), os.environ)
    if hint is not None:
        log.info(hint)
    if options.config.workers > 1:
        # Each worker fits its clients in the limit it inherits: check now,
        # not in every worker (each would fail, and be restarted, for ever).
        client_cap(options.config, descriptor_budget(options.config, open_file_limit()))
        return _watched(options, Supervisor(options.config, options.argv))
    return _watched(options, ProxyService(options.config, reload_config=options.reload,
                                          handle_sighup=True))


def _watched(options: ProxyOptions, service: Any) -> Service:
    """
    With watch_config, C{service} reloads (as on SIGHUP) when the --config
    file changes; a supervisor's reload reaches its workers.
    """
    if options.config.watch_config:
        FileWatcher(options["config"], service.reload, service.reactor).setServiceParent(service)
    result: Service = service
    return result


__all__: List[str] = ["ProxyOptions", "Options", "makeService"]
