"""
Raw TCP: no framing at all.  A client session leases one backend connection
and bytes flow unchanged both ways (see L{poolproxy.proxy.session}).
"""

from __future__ import annotations

from typing import Any, List, Optional

from zope.interface import implementer

from poolproxy.codec import Frame, ICodec


@implementer(ICodec)
class TcpCodec:
    name = "tcp"
    mode = "session"

    def request_framer(self, config: Any) -> Any:
        raise NotImplementedError("tcp sessions are not framed")

    def response_framer(self) -> Any:
        raise NotImplementedError("tcp sessions are not framed")

    def error_reply(self, kind: str, message: str) -> bytes:
        return b""  # a tcp client learns of errors by being disconnected

    def setup_frames(self, config: Any) -> List[Frame]:
        return []

    def check_setup_reply(self, frame: Frame, response: bytes) -> Optional[str]:
        return None

    def probe(self) -> Optional[Frame]:
        return None


codec = TcpCodec()
