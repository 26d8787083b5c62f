"""
Raw TCP: no framing at all.  A client session leases one backend connection
and bytes flow unchanged both ways (see L{poolproxy.proxy.session}).
"""

from __future__ import annotations

from poolproxy.codec import BaseCodec


class TcpCodec(BaseCodec):
    """Bytes are not framed in either direction (BaseCodec's framers refuse)."""

    name = "tcp"
    mode = "session"

    def error_reply(self, kind: str, message: str) -> bytes:
        return b""  # a tcp client learns of errors by being disconnected


codec = TcpCodec()
