"""
The supervisor's web endpoint (C{--workers N}): the configured C{metrics}
address, served by the supervisor from what its workers report.

  - C{/metrics}: every worker's /metrics, summed sample by sample
    (L{poolproxy.workers.metrics_merge}), plus C{poolproxy_workers},
    C{poolproxy_worker_up} and C{poolproxy_worker_restarts};
  - C{/healthz}: the supervisor answers;
  - C{/readyz}: 200 when every worker is ready, else 503 saying which is not;
  - C{/status.json}: the workers (pid, web address, restarts) with each
    one's own status document; C{/status}: an HTML list of the workers,
    linking each one's status page (on a loopback port);
  - C{/admin/...} (when C{admin_token_file} is set): the request is checked
    and then made to every worker, so that a drain or a weight change
    applies to the whole proxy.

Each worker's web endpoint listens on an ephemeral loopback port that it
reports to the supervisor when it starts.
"""

from __future__ import annotations

import json
from html import escape
from typing import TYPE_CHECKING, Any, Callable, Iterator, List, Optional, Tuple

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CollectorRegistry, CounterMetricFamily, GaugeMetricFamily, Metric
from twisted.internet.defer import Deferred, gatherResults
from twisted.logger import Logger
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from poolproxy import __version__
from poolproxy.ops.admin import bearer_ok
from poolproxy.ops.web import HealthzResource, QuietSite
from poolproxy.workers.metrics_merge import SummedMetrics

if TYPE_CHECKING:
    from poolproxy.workers.supervisor import Supervisor, WorkerProcess

log = Logger("poolproxy.workers.supervisor")

#: Seconds a worker gets to answer the supervisor's request.
WORKER_TIMEOUT = 5.0

#: (worker, HTTP status or None if it did not answer, body)
Answer = Tuple["WorkerProcess", Optional[int], bytes]


class WorkerClient:
    """Requests to the workers' web endpoints, over kept-alive connections."""

    def __init__(self, supervisor: "Supervisor") -> None:
        self.supervisor = supervisor
        reactor = supervisor.reactor
        self.reactor = reactor
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.pool._factory.noisy = False
        self.agent = Agent(reactor, pool=self.pool)

    def close(self) -> "Deferred[None]":
        return self.pool.closeCachedConnections()

    def serving(self) -> "List[WorkerProcess]":
        return [w for w in self.supervisor.workers
                if w is not None and w.running and w.web_port is not None]

    def ask_all(self, method: bytes, path: bytes,
                headers: Optional[Headers] = None) -> "Deferred[List[Answer]]":
        """Make the request to every serving worker; one L{Answer} each."""
        return gatherResults([self.ask(w, method, path, headers) for w in self.serving()])

    def ask(self, worker: "WorkerProcess", method: bytes, path: bytes,
            headers: Optional[Headers] = None) -> "Deferred[Answer]":
        # serving() yields only workers whose web port is known.
        url = b"http://127.0.0.1:%d%s" % (worker.web_port, path)  # type: ignore[str-format]

        def body(response: Any) -> "Deferred[Answer]":
            return readBody(response).addCallback(lambda b: (worker, response.code, b))

        def failed(failure: Any) -> Answer:
            log.warn("worker {worker} did not answer {path}: {why}", worker=worker.number,
                     path=path.decode("ascii", "replace"), why=failure.getErrorMessage())
            return (worker, None, b"")

        d = self.agent.request(method, url, headers).addCallback(body)
        d.addTimeout(WORKER_TIMEOUT, self.reactor)
        return d.addErrback(failed)


def _finish(request: Request, code: int, content_type: bytes, body: bytes) -> None:
    if request._disconnected:
        return
    request.setResponseCode(code)
    request.setHeader(b"Content-Type", content_type)
    request.setHeader(b"Cache-Control", b"no-store")
    request.write(body)
    request.finish()


class _WorkersResource(Resource):
    isLeaf = True

    def __init__(self, supervisor: "Supervisor", client: WorkerClient) -> None:
        super().__init__()
        self.supervisor = supervisor
        self.client = client


class _Families:
    """A prometheus-client collector over a list of families."""

    def __init__(self, families: List[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


class SummedMetricsResource(_WorkersResource):
    def render_GET(self, request: Request) -> Any:
        def render(answers: List[Answer]) -> None:
            summed = SummedMetrics()
            up = GaugeMetricFamily("poolproxy_worker_up",
                                   "1 if the worker answered this scrape.", labels=["worker"])
            answered = {}
            for worker, code, body in answers:
                ok = code == 200
                if ok:
                    try:
                        summed.add_text(body.decode("utf-8"))
                    except ValueError as e:
                        log.warn("worker {worker}: unreadable /metrics: {e}",
                                 worker=worker.number, e=e)
                        ok = False
                answered[worker.number] = ok
            for number in range(1, self.supervisor.count + 1):
                up.add_metric([str(number)], 1 if answered.get(number) else 0)
            restarts = CounterMetricFamily("poolproxy_worker_restarts",
                                           "Times the worker was restarted after dying.",
                                           labels=["worker"])
            for slot, n in enumerate(self.supervisor.restarts):
                restarts.add_metric([str(slot + 1)], n)
            replacements = CounterMetricFamily(
                "poolproxy_worker_replacements",
                "Times the worker was replaced by a new process (SIGUSR2, admin action).",
                labels=["worker"])
            for slot, n in enumerate(self.supervisor.replacements):
                replacements.add_metric([str(slot + 1)], n)
            workers = GaugeMetricFamily("poolproxy_workers", "Configured worker processes.",
                                        value=self.supervisor.count)
            registry = CollectorRegistry(auto_describe=False)
            registry.register(_Families([workers, up, restarts, replacements,
                                         *summed.collect()]))
            _finish(request, 200, CONTENT_TYPE_LATEST.encode("ascii"), generate_latest(registry))

        self.client.ask_all(b"GET", b"/metrics").addCallback(render)
        return NOT_DONE_YET


class SupervisorReadyzResource(_WorkersResource):
    """200 when every worker is serving and ready, else 503 with the reasons."""

    def render_GET(self, request: Request) -> Any:
        def render(answers: List[Answer]) -> None:
            problems = []
            answered = {worker.number: (code, body) for worker, code, body in answers}
            for number in range(1, self.supervisor.count + 1):
                code, body = answered.get(number, (None, b""))
                if code is None:
                    problems.append(f"worker {number}: not serving")
                elif code != 200:
                    problems.append(f"worker {number}: {body.decode('utf-8', 'replace').strip()}")
            if problems:
                text = "not ready:\n" + "\n".join(problems) + "\n"
                _finish(request, 503, b"text/plain; charset=utf-8", text.encode("utf-8"))
            else:
                _finish(request, 200, b"text/plain; charset=utf-8", b"ready\n")

        if self.supervisor.stopping:  # shutdown_delay: out of the balancers at once
            request.setResponseCode(503)
            request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
            request.setHeader(b"Cache-Control", b"no-store")
            return b"not ready: shutting down\n"
        self.client.ask_all(b"GET", b"/readyz").addCallback(render)
        return NOT_DONE_YET


def _worker_entry(worker: "Optional[WorkerProcess]", number: int, restarts: int) -> dict:
    return {
        "worker": number,
        "pid": worker.pid if worker is not None and worker.running else None,
        "state": ("serving" if worker is not None and worker.web_port is not None
                  else "starting" if worker is not None and worker.running else "down"),
        "web": (f"http://127.0.0.1:{worker.web_port}/"
                if worker is not None and worker.web_port is not None else None),
        "restarts": restarts,
    }


class SupervisorStatusJson(_WorkersResource):
    def render_GET(self, request: Request) -> Any:
        def render(answers: List[Answer]) -> None:
            statuses = {}
            for worker, code, body in answers:
                if code == 200:
                    try:
                        statuses[worker.number] = json.loads(body)
                    except ValueError:
                        pass
            entries = []
            for slot, process in enumerate(self.supervisor.workers):
                entry = _worker_entry(process, slot + 1, self.supervisor.restarts[slot])
                entry["status"] = statuses.get(slot + 1)
                entries.append(entry)
            text = json.dumps({"version": __version__, "workers": entries}, indent=1)
            _finish(request, 200, b"application/json", text.encode("utf-8"))

        self.client.ask_all(b"GET", b"/status.json").addCallback(render)
        return NOT_DONE_YET


class SupervisorStatusPage(_WorkersResource):
    def render_GET(self, request: Request) -> bytes:
        rows = []
        for slot, worker in enumerate(self.supervisor.workers):
            e = _worker_entry(worker, slot + 1, self.supervisor.restarts[slot])
            link = (f'<a href="{escape(e["web"])}status">{escape(e["web"])}status</a>'
                    if e["web"] else "")
            rows.append(f"<tr><td>{e['worker']}</td><td>{e['pid'] or ''}</td>"
                        f"<td>{escape(e['state'])}</td><td>{e['restarts']}</td><td>{link}</td></tr>")
        request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-store")
        return ("<!doctype html><meta http-equiv=refresh content=5>"
                f"<title>poolproxy workers</title><h1>poolproxy {escape(__version__)}: "
                f"{self.supervisor.count} workers</h1>"
                "<p>Each worker has its own status page (loopback only); "
                '<a href="/metrics">/metrics</a> sums them.</p>'
                "<table border=1><tr><th>worker</th><th>pid</th><th>state</th>"
                f"<th>restarts</th><th>status page</th></tr>{''.join(rows)}</table>"
                ).encode("utf-8")


class SupervisorAdmin(_WorkersResource):
    """
    Checks the bearer token, then makes the same request of every worker;
    answers with the highest status any worker gave and each one's reply.
    """

    def __init__(self, supervisor: "Supervisor", client: WorkerClient,
                 token: Callable[[], Optional[str]]) -> None:
        """
        @param token: gives the bearer token in use when a request comes
            (SIGHUP re-reads C{admin_token_file}).
        """
        super().__init__(supervisor, client)
        self._token = token

    def render(self, request: Request) -> Any:
        if request.method != b"POST":
            request.setHeader(b"Allow", b"POST")
            return self._refuse(request, 405, "use POST")
        token = self._token()
        if not token or not bearer_ok(request, token.encode("utf-8")):
            request.setHeader(b"WWW-Authenticate", b"Bearer")
            return self._refuse(request, 401, "missing or wrong bearer token")
        if request.postpath == [b"workers", b"replace"]:
            return self._replace(request)
        headers = Headers({b"Authorization": [request.getHeader(b"authorization") or b""]})

        def render(answers: List[Answer]) -> None:
            codes = [code if code is not None else 502 for _, code, _ in answers] or [503]
            replies = []
            for worker, code, body in answers:
                try:
                    reply: Any = json.loads(body) if body else None
                except ValueError:
                    reply = body.decode("utf-8", "replace")
                replies.append({"worker": worker.number, "code": code, "reply": reply})
            log.info("admin: {method} {uri} sent to {n} workers: {codes}",
                     method=request.method.decode("ascii", "replace"),
                     uri=request.uri.decode("ascii", "replace"), n=len(answers), codes=codes)
            body = json.dumps({"workers": replies}).encode("utf-8")
            _finish(request, max(codes), b"application/json", body)

        self.client.ask_all(b"POST", request.uri, headers).addCallback(render)
        return NOT_DONE_YET

    def _replace(self, request: Request) -> bytes:
        """The supervisor's own action: replace the workers (as SIGUSR2 does)."""
        if not self.supervisor.replace_workers():
            return self._refuse(request, 409, "a worker replacement is under way, "
                                              "or the proxy is stopping")
        log.info("admin: worker replacement started")
        request.setResponseCode(202)
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Cache-Control", b"no-store")
        return json.dumps({"ok": True, "replacing": self.supervisor.count}).encode("utf-8")

    def _refuse(self, request: Request, code: int, reason: str) -> bytes:
        log.warn("admin: refused {method} {uri}: {reason}",
                 method=request.method.decode("ascii", "replace"),
                 uri=request.uri.decode("ascii", "replace"), reason=reason)
        request.setResponseCode(code)
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Cache-Control", b"no-store")
        return json.dumps({"ok": False, "error": reason}).encode("utf-8")


def build_supervisor_site(supervisor: "Supervisor", client: WorkerClient) -> Site:
    root = Resource()
    root.putChild(b"", SupervisorStatusPage(supervisor, client))
    root.putChild(b"metrics", SummedMetricsResource(supervisor, client))
    root.putChild(b"healthz", HealthzResource())
    root.putChild(b"readyz", SupervisorReadyzResource(supervisor, client))
    root.putChild(b"status", SupervisorStatusPage(supervisor, client))
    root.putChild(b"status.json", SupervisorStatusJson(supervisor, client))
    secrets = supervisor.secrets
    if secrets.admin_token:
        root.putChild(b"admin", SupervisorAdmin(supervisor, client, lambda: secrets.admin_token))
    site = QuietSite(root)
    site.displayTracebacks = False
    return site
