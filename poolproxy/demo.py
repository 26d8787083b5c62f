"""
A small HTTP backend for the demo (C{make run}): it says which of its
connections served each request, so that pooling is visible with curl.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.web.resource import Resource
from twisted.web.server import Request, Site


class DemoResource(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests = 0

    def render(self, request: Request) -> bytes:
        self.requests += 1
        channel: Any = request.channel
        number: Optional[int] = getattr(channel, "demo_number", None)
        if number is None:
            self.connections = getattr(self, "connections", 0) + 1
            number = channel.demo_number = self.connections
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        body = (
            "Hello from the poolproxy demo backend.\n"
            f"{request.method.decode('ascii', 'replace')} {request.uri.decode('ascii', 'replace')}"
            f" served on backend connection #{number}; request #{self.requests} in all.\n"
        )
        return body.encode("utf-8")


def demo_site() -> Site:
    return Site(DemoResource())
