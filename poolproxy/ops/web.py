"""
The operator's resource tree: C{/metrics} (Prometheus text), C{/healthz}
(the process answers), C{/readyz} (a backend connection can be had) and
C{/status} and C{/status.json} (see L{poolproxy.ops.status}).
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from poolproxy import __version__
from poolproxy.ops.admin import build_admin
from poolproxy.ops.metrics import build_registry
from poolproxy.ops.status import StatusJsonResource, StatusPageResource
from poolproxy.ops.view import ProxyView



class MetricsResource(Resource):
    isLeaf = True

    def __init__(self, service: ProxyView) -> None:
        super().__init__()
        self.registry = build_registry(service)

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode("ascii"))
        return generate_latest(self.registry)


class HealthzResource(Resource):
    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        return b"ok\n"


class ReadyzResource(Resource):
    """
    200 while some backend connection can be had, else 503 with the reason;
    503 from the moment the proxy starts stopping (shutdown_delay).
    """

    isLeaf = True

    def __init__(self, service: ProxyView) -> None:
        super().__init__()
        self.service = service

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        if self.service.ready:
            return b"ready\n"
        request.setResponseCode(503)
        if self.service.stopping:
            return b"not ready: shutting down\n"
        lines = ["not ready: no backend connection can be had"]
        for pool in self.service.pools:
            why = pool.last_error or "not connected yet"
            lines.append(f"{pool.name}: {pool.state} ({why})")
        return ("\n".join(lines) + "\n").encode("utf-8")


class IndexResource(Resource):
    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
        links = "".join(f'<li><a href="/{p}">/{p}</a></li>'
                        for p in ("status", "status.json", "metrics", "healthz", "readyz"))
        return (f"<!doctype html><title>poolproxy</title><h1>poolproxy {__version__}</h1>"
                f"<ul>{links}</ul>").encode("utf-8")


class QuietSite(Site):
    """
    A Site without an access log: scrapes every few seconds are not news.
    """

    noisy = False

    def log(self, request: Any) -> None:
        pass


def build_site(service: ProxyView) -> Site:
    """
    The resource tree for one proxy service.
    """
    root = IndexResource()
    root.putChild(b"", root)
    root.putChild(b"metrics", MetricsResource(service))
    root.putChild(b"healthz", HealthzResource())
    root.putChild(b"readyz", ReadyzResource(service))
    root.putChild(b"status", StatusPageResource(service))
    root.putChild(b"status.json", StatusJsonResource(service))
    secrets = service.secrets
    if secrets.admin_token:
        # Off unless a token is configured; the token never goes on a command
        # line.  Read at each request: SIGHUP may have replaced it.
        root.putChild(b"admin", build_admin(service, lambda: secrets.admin_token))
    site = QuietSite(root)
    site.displayTracebacks = False
    return site
