"""
The operator's status page: C{/status.json} (a machine-readable snapshot)
and C{/status} (a self-refreshing HTML page in the spirit of HAProxy's stats
page: one table per cluster, one row per backend).

Both are read on the reactor thread from the same plain counters that
C{/metrics} reads (see L{poolproxy.stats}), so one page is a consistent
snapshot.  Request and error rates are computed here, per resource, from the
difference to the previous snapshot that resource took: see L{RateSampler};
latency percentiles from the bucket counts of the last interval: see
L{poolproxy.ops.quantiles}.
"""

from __future__ import annotations

import json
import platform
from html import escape
from typing import Any, Dict, List, Optional, Tuple

from twisted.web.resource import Resource
from twisted.web.server import Request

from poolproxy import __version__
from poolproxy.backends.cluster import BACKEND_STATES, Backend, Cluster
from poolproxy.backends.discovery import DnsName
from poolproxy.ops.pools import ServingPool, keyed_pools, pinned_clients
from poolproxy.ops.quantiles import IntervalQuantiles
from poolproxy.ops.view import ProxyView

#: Seconds between two reloads of the HTML page (its meta refresh).
REFRESH_SECONDS = 5



def backend_address(backend: Backend) -> str:
    """
    Where a backend's connections go, as C{HOST:PORT} (IPv6 hosts in
    brackets) or a UNIX socket path.

    Twisted's client endpoints expose no public address, so this reads the
    private attributes of the common ones (C{TCP4ClientEndpoint},
    C{TCP6ClientEndpoint}, C{HostnameEndpoint}, C{UNIXClientEndpoint}); for
    any other endpoint it falls back to the backend's name, which defaults
    to C{HOST:PORT} (see L{poolproxy.config.endpoints.backend_name}).
    """
    endpoint = getattr(backend.pool, "endpoint", None)
    port = getattr(endpoint, "_port", None)
    host = None
    for attribute in ("_host", "_hostText", "_hostStr"):
        value = getattr(endpoint, attribute, None)
        if isinstance(value, bytes):
            value = value.decode("ascii", "replace")
        if isinstance(value, str) and value:
            host = value
            break
    if host is not None and isinstance(port, int):
        if ":" in host:
            host = f"[{host}]"
        return f"{host}:{port}"
    path = getattr(endpoint, "_path", None)
    if isinstance(path, bytes):
        path = path.decode("utf-8", "replace")
    if isinstance(path, str) and path:
        return f"unix:{path}"
    return backend.name


class RateSampler:
    """
    Per-second rates of monotonic counters, from the difference to the
    previous sample of the same key.

    The first sample of a key gives rates of 0.  A sample taken at the same
    clock time as the previous one (two fetches in one reactor turn) gives
    the previous rates again rather than dividing by zero.  A counter that
    went down (it cannot, short of a restart) counts as 0.

    @ivar samples: key -> (time, counter values, rates).
    """

    def __init__(self, clock: Any) -> None:
        self.clock = clock
        self.samples: Dict[Any, Tuple[float, Tuple[int, ...], Tuple[float, ...]]] = {}

    def rates(self, key: Any, values: Tuple[int, ...]) -> Tuple[float, ...]:
        now = self.clock.seconds()
        previous = self.samples.get(key)
        if previous is None:
            rates = tuple(0.0 for _ in values)
        else:
            then, old, old_rates = previous
            elapsed = now - then
            if elapsed <= 0:
                return old_rates
            rates = tuple(max(0, new - before) / elapsed for new, before in zip(values, old))
        self.samples[key] = (now, values, rates)
        return rates


def _pool_counts(backend: Backend, keyed: Optional[List[ServingPool]]) -> Dict[str, int]:
    """
    A backend's connections: its pool's, or in transaction mode the sums
    over its (database, user) pools (size: the most they may open together).
    """
    pools = [backend.pool] if keyed is None else [serving.pool for serving in keyed]
    return {
        "idle": sum(pool.idle for pool in pools),
        "active": sum(pool.leased for pool in pools),
        "connecting": sum(pool.connecting for pool in pools),
        "waiters": sum(pool.waiters for pool in pools),
        "size": sum(pool.size for pool in pools),
    }


def _keyed_status(serving: ServingPool) -> Dict[str, Any]:
    """One (database, user) pool of a transaction-mode backend."""
    pool, keyed = serving.pool, serving.keyed
    return {
        "backend": pool.name,
        "database": serving.database,
        "user": serving.user,
        "clients_active": pool.leased,
        "clients_waiting": pool.waiters,
        "longest_wait": round(pool.longest_wait, 3),
        "pinned": pinned_clients(keyed) if keyed is not None else 0,
        "idle": pool.idle,
        "connecting": pool.connecting,
        "total": pool.total,
        "size": pool.size,
        # A login that failed since one worked (a password changed...).
        "last_error": pool.last_error or None,
    }


def _backend_status(backend: Backend, cluster: Cluster, sampler: RateSampler,
                    keyed: Optional[List[ServingPool]] = None,
                    latency: Optional[IntervalQuantiles] = None) -> Dict[str, Any]:
    pool = backend.pool
    health = backend.health
    breaker = backend.breaker
    request_rate, error_rate = sampler.rates((cluster.name, backend.name),
                                             (backend.requests, backend.failures))
    last_error = (health.last_error if health is not None and health.last_error else "") \
        or pool.last_error or ""
    return {
        "name": backend.name,
        "address": backend_address(backend),
        "state": backend.state,
        "weight": backend.weight,
        "health": health.state if health is not None else None,
        "breaker": breaker.state if breaker is not None else None,
        "in_flight": backend.outstanding,
        "pool": _pool_counts(backend, keyed),
        "requests": backend.requests,
        "failures": backend.failures,
        "retries": backend.retries,
        "request_rate": round(request_rate, 3),
        "error_rate": round(error_rate, 3),
        "last_error": last_error or None,
        # Requests answered (outcome ok) in the last interval.
        "latency": latency.summary((cluster.name, backend.name), backend.duration_ok)
        if latency is not None else None,
    }


def status_snapshot(service: ProxyView, sampler: RateSampler,
                    latency: Optional[IntervalQuantiles] = None) -> Dict[str, Any]:
    """
    Everything C{/status.json} shows, as plain JSON-able values; see
    docs/operations.md for the schema.
    """
    listeners: List[Dict[str, Any]] = []
    for listener in service.listeners:
        stats = listener.stats
        requests = dict(stats.requests.items())
        # Framed modes count answered requests in a plain int (as /metrics does).
        requests["ok"] = requests.get("ok", 0) + stats.requests_ok
        listeners.append({
            "name": listener.name,
            "endpoint": listener.endpoint,
            "cluster": listener.cluster.name,
            "connections_open": stats.connections_open,
            "connections_total": stats.connections_total,
            "connections_limit": listener.connection_limit,
            "paused": sorted(listener.gate.reasons),
            "requests": requests,
            "latency": latency.summary(listener.name, stats.duration_ok)
            if latency is not None else None,
        })
    admission = service.admission
    clusters = []
    for cluster in service.clusters.values():
        backends, pools = [], []
        for backend in cluster.backends:
            keyed = keyed_pools(backend.pool)
            backends.append(_backend_status(backend, cluster, sampler, keyed, latency))
            pools += [_keyed_status(serving) for serving in keyed or ()]
        clusters.append({
            "name": cluster.name,
            "policy": cluster.policy_name,
            "backends": backends,
            # Transaction mode (postgres): the pool of each (database, user).
            "pools": pools,
        })
    snapshot = {
        "version": __version__,
        "runtime": {
            "python": f"{platform.python_implementation()} {platform.python_version()}",
            "reactor": type(service.reactor).__name__,
        },
        "listeners": listeners,
        "admission": {
            "in_flight": admission.in_flight,
            "queued": admission.queued,
            "max_concurrency": admission.max_concurrency,
            "queue_size": admission.queue_size,
            "admitted": admission.admitted,
            "rejected": dict(admission.rejected.items()),
        },
        "clusters": clusters,
    }
    if service.dns_names:
        snapshot["dns"] = [_dns_status(name, service.reactor) for name in service.dns_names]
    return snapshot


def _dns_status(name: DnsName, clock: Any) -> Dict[str, Any]:
    """A dns: or srv: entry: its backends, last answer (seconds ago), TTL, failures, last error."""
    last = name.last_refresh
    return {
        "cluster": name.cluster,
        "name": name.name,
        "backends": [t.member for t in name.targets],
        "refreshed_seconds_ago": None if last is None else round(clock.seconds() - last, 3),
        "ttl": name.ttl,
        "failures": name.failures,
        "last_error": name.last_error,
        "empty_since_seconds_ago": (None if name.empty_since is None
                                    else round(clock.seconds() - name.empty_since, 3)),
    }


# -- HTML -------------------------------------------------------------------------

_CSS = """
body{font:13px/1.4 sans-serif;margin:1em;color:#222;background:#fafafa}
h1{font-size:18px;margin:0 0 .3em}h2{font-size:15px;margin:1.2em 0 .3em}
table{border-collapse:collapse;background:#fff;margin-bottom:.5em}
th,td{border:1px solid #bbb;padding:2px 6px;text-align:left;white-space:nowrap}
th{background:#e4e4ec}td.n{text-align:right;font-variant-numeric:tabular-nums}
td.err{white-space:normal;max-width:30em;color:#900}
.s-up{background:#c8f0c0}.s-down{background:#f4a8a8}.s-draining{background:#f8e08c}
.s-disabled{background:#d0d0d0}.s-ejected{background:#f8c090}
p.meta{color:#666}h3{font-size:13px;margin:.6em 0 .2em}
"""


def h(value: Any) -> str:
    """Text for HTML: L{None} as an empty cell, everything else escaped."""
    if value is None:
        return ""
    return escape(str(value), quote=True)


def _cell(value: Any, numeric: bool = False, css: str = "") -> str:
    classes = " ".join(c for c in ("n" if numeric else "", css) if c)
    attribute = f' class="{h(classes)}"' if classes else ""
    return f"<td{attribute}>{h(value)}</td>"


def _rate(value: float) -> str:
    return f"{value:.2f}"


def _table(headers: List[str], rows: List[str]) -> str:
    head = "".join(f"<th>{h(title)}</th>" for title in headers)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


_BACKEND_HEADERS = ["Backend", "Address", "State", "Health", "Breaker", "Weight", "In flight",
                    "Idle", "Active", "Size", "Req/s", "Err/s", "Requests", "Failures",
                    "Retries", "p50 ms", "p99 ms", "Last error"]


def _latency_cells(latency: Optional[Dict[str, Any]]) -> List[str]:
    """p50 and p99 in milliseconds; "-" with no request in the interval."""
    cells = []
    for key in ("p50", "p99"):
        value = latency.get(key) if latency else None
        cells.append(_cell("-" if value is None else f"{value * 1000:.2f}", True))
    return cells


def _backend_row(b: Dict[str, Any]) -> str:
    state = b["state"]
    state_class = f"s-{state}" if state in BACKEND_STATES else ""
    pool = b["pool"]
    cells = [
        _cell(b["name"]), _cell(b["address"]), _cell(state, css=state_class),
        _cell(b["health"] if b["health"] is not None else "-"),
        _cell(b["breaker"] if b["breaker"] is not None else "-"),
        _cell(b["weight"], True), _cell(b["in_flight"], True),
        _cell(pool["idle"], True), _cell(pool["active"], True), _cell(pool["size"], True),
        _cell(_rate(b["request_rate"]), True), _cell(_rate(b["error_rate"]), True),
        _cell(b["requests"], True), _cell(b["failures"], True), _cell(b["retries"], True),
        *_latency_cells(b.get("latency")), _cell(b["last_error"], css="err"),
    ]
    return f'<tr class="{h(state_class)}">{"".join(cells)}</tr>'


_POOL_HEADERS = ["Backend", "Database", "User", "Active", "Waiting", "Longest wait (s)",
                 "Pinned", "Idle", "Connecting", "Total", "Size", "Last error"]


def _pool_row(p: Dict[str, Any]) -> str:
    cells = [
        _cell(p["backend"]), _cell(p["database"]), _cell(p["user"]),
        _cell(p["clients_active"], True), _cell(p["clients_waiting"], True),
        _cell(f"{p['longest_wait']:.3f}", True), _cell(p["pinned"], True),
        _cell(p["idle"], True), _cell(p["connecting"], True), _cell(p["total"], True),
        _cell(p["size"], True), _cell(p.get("last_error"), css="err"),
    ]
    return f"<tr>{''.join(cells)}</tr>"


_DNS_HEADERS = ["Cluster", "Name", "Backends", "Answered (s ago)", "Next in (s)", "Failures",
                "Empty for (s)", "Last error"]


def _dns_row(d: Dict[str, Any]) -> str:
    cells = [
        _cell(d["cluster"]), _cell(d["name"]), _cell(", ".join(d["backends"]) or "-"),
        _cell(d["refreshed_seconds_ago"], True), _cell(f"{d['ttl']:g}", True),
        _cell(d["failures"], True), _cell(d["empty_since_seconds_ago"], True),
        _cell(d["last_error"], css="err"),
    ]
    return f"<tr>{''.join(cells)}</tr>"


def render_html(snapshot: Dict[str, Any]) -> str:
    """
    The HTML page for a L{status_snapshot}: inline CSS, no script, no
    external asset, every string from the snapshot escaped.
    """
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">',
        f"<title>poolproxy {h(snapshot['version'])} status</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>poolproxy {h(snapshot['version'])}</h1>",
        f'<p class="meta">{h(snapshot["runtime"]["python"])}, '
        f'{h(snapshot["runtime"]["reactor"])}. Refreshes every {REFRESH_SECONDS} s. '
        'Rates are per second since '
        'this page was last loaded; p50 and p99 of the requests answered over the last '
        '10 to 20 s. <a href="/status.json">JSON</a> · '
        '<a href="/metrics">metrics</a></p>',
    ]

    admission = snapshot["admission"]
    rejected = ", ".join(f"{k} {v}" for k, v in sorted(admission["rejected"].items()))
    parts.append("<h2>Admission</h2>")
    parts.append(_table(
        ["In flight", "Max concurrency", "Queued", "Queue size", "Admitted", "Rejected"],
        ["<tr>" + "".join([
            _cell(admission["in_flight"], True), _cell(admission["max_concurrency"], True),
            _cell(admission["queued"], True), _cell(admission["queue_size"], True),
            _cell(admission["admitted"], True), _cell(rejected),
        ]) + "</tr>"]))

    parts.append("<h2>Listeners</h2>")
    listener_rows = []
    for listener in snapshot["listeners"]:
        requests = ", ".join(f"{k} {v}" for k, v in sorted(listener["requests"].items()) if v)
        listener_rows.append("<tr>" + "".join([
            _cell(listener["name"]), _cell(listener["endpoint"]), _cell(listener["cluster"]),
            _cell(listener["connections_open"], True), _cell(listener["connections_limit"], True),
            _cell(", ".join(listener["paused"]) or "-"),
            _cell(listener["connections_total"], True), _cell(requests or "-"),
            *_latency_cells(listener.get("latency")),
        ]) + "</tr>")
    parts.append(_table(["Listener", "Endpoint", "Cluster", "Open", "Limit", "Paused", "Total",
                         "Requests", "p50 ms", "p99 ms"], listener_rows))

    for cluster in snapshot["clusters"]:
        up = sum(1 for b in cluster["backends"] if b["state"] == "up")
        parts.append(f"<h2>Cluster {h(cluster['name'])} <small>({h(cluster['policy'])}, "
                     f"{up}/{len(cluster['backends'])} up)</small></h2>")
        parts.append(_table(_BACKEND_HEADERS, [_backend_row(b) for b in cluster["backends"]]))
        if cluster.get("pools"):
            parts.append(f"<h3>Pools of cluster {h(cluster['name'])} <small>(one per database "
                         "and user)</small></h3>")
            parts.append(_table(_POOL_HEADERS, [_pool_row(p) for p in cluster["pools"]]))

    if snapshot.get("dns"):
        parts.append("<h2>Backends from DNS</h2>")
        parts.append(_table(_DNS_HEADERS, [_dns_row(d) for d in snapshot["dns"]]))

    parts.append("</body></html>\n")
    return "".join(parts)


# -- resources -------------------------------------------------------------------


class _StatusResource(Resource):
    isLeaf = True

    def __init__(self, service: ProxyView, clock: Optional[Any] = None) -> None:
        super().__init__()
        self.service = service
        clock = clock if clock is not None else service.reactor
        self.sampler = RateSampler(clock)
        self.latency = IntervalQuantiles(clock)

    def snapshot(self) -> Dict[str, Any]:
        return status_snapshot(self.service, self.sampler, self.latency)


class StatusJsonResource(_StatusResource):
    """
    C{/status.json}: L{status_snapshot} as JSON.  Its rates come from the
    previous fetch of this resource (by any client).
    """

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"Content-Type", b"application/json; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-store")
        return (json.dumps(self.snapshot(), indent=1, sort_keys=False) + "\n").encode("utf-8")


class StatusPageResource(_StatusResource):
    """
    C{/status}: the HTML page, reloading itself every L{REFRESH_SECONDS}.
    Its rates come from the previous fetch of this resource (by any client),
    independently of C{/status.json}.
    """

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-store")
        return render_html(self.snapshot()).encode("utf-8")
