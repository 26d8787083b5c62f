"""
HTTP/1.1 in request mode: a backend connection is leased for each request
and goes back to the pool when its response has ended and it can be kept
alive.  Parsing lives in L{poolproxy.codecs.http_parse}; the proxying in
L{poolproxy.proxy.request}.
"""

from __future__ import annotations

from typing import Any

from poolproxy.codec import BaseCodec
from poolproxy.codecs.http_parse import RequestParser, ResponseParser, status_response

# kind -> (status, reason)
_ERRORS = {
    "overloaded": (503, "Service Unavailable"),
    "unavailable": (502, "Bad Gateway"),
    "timeout": (504, "Gateway Timeout"),
    "too_large": (413, "Content Too Large"),
    "malformed": (400, "Bad Request"),
}
REASONS = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
           413: "Content Too Large", 414: "URI Too Long",
           431: "Request Header Fields Too Large", 501: "Not Implemented",
           502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout",
           505: "HTTP Version Not Supported"}


class HttpCodec(BaseCodec):
    name = "http"
    mode = "request"

    # Request mode's framers are event parsers (poolproxy.proxy.request reads
    # their heads, body pieces and ENDs), not ICodec's frame-per-request ones.
    def request_framer(self, config: Any) -> RequestParser:
        """
        A request parser; C{config}'s C{max_request_size}, if any, bounds a
        request's body (413 past it).
        """
        return RequestParser(max_body=config.max_request_size if config is not None else None)

    def response_framer(self) -> ResponseParser:
        return ResponseParser()

    def error_reply(self, kind: str, message: str, close: bool = False) -> bytes:
        status, reason = _ERRORS.get(kind, (502, "Bad Gateway"))
        return self.status_reply(status, message, close)

    def status_reply(self, status: int, message: str, close: bool = False) -> bytes:
        """A complete response of the proxy's own, e.g. 400 for a bad request."""
        headers = []
        if status == 503:
            headers.append((b"Retry-After", b"1"))
        if close:
            headers.append((b"Connection", b"close"))
        text = " ".join(message.split()) or REASONS.get(status, "Error")
        return status_response(status, REASONS.get(status, "Error"), f"poolproxy: {text}\n", headers)


codec = HttpCodec()
