"""
A complete poolproxy codec for a newline-delimited protocol: every request is
one line, every response is one line.  See docs/custom-protocols.md.
"""

from typing import Any, List, Optional

from zope.interface import implementer

from poolproxy.codec import (CLOSE, LOCAL, RETRY_SAFE, BaseCodec, Frame, FramingError,
                             IRequestFramer, IResponseFramer)


class LineCodec(BaseCodec):  # BaseCodec: no connection setup, a TCP connect as probe
    name = "line"
    mode = "multiplexed"  # many clients share each backend connection

    def request_framer(self, config: Any) -> "LineFramer":
        return LineFramer(getattr(config, "max_request_size", 64 * 1024), requests=True)

    def response_framer(self) -> "LineFramer":
        return LineFramer(64 * 1024 * 1024, requests=False)

    def error_reply(self, kind: str, message: str) -> bytes:
        return b"ERR %s %s\n" % (kind.encode(), message.replace("\n", " ").encode())


@implementer(IRequestFramer, IResponseFramer)
class LineFramer:
    """Cuts lines; as a request framer it also reads the command and key."""

    needs_expect = False
    error: Optional[FramingError] = None

    def __init__(self, limit: int, requests: bool) -> None:
        self.limit, self.requests, self.buffer = limit, requests, b""

    def feed(self, data: bytes) -> List[Any]:
        if self.error:
            return []
        buffer, out, start = self.buffer + data, [], 0
        end = buffer.find(b"\n")
        while end >= 0:
            line = buffer[start:end + 1]
            out.append(self.frame(line) if self.requests else line)
            start = end + 1
            end = buffer.find(b"\n", start)
        self.buffer = buffer[start:]
        if len(self.buffer) > self.limit:
            self.error = FramingError("too_large", "line too long")
        return out

    def frame(self, line: bytes) -> Frame:
        words = line.split()
        command = words[0].upper() if words else b""
        if command == b"QUIT":
            return Frame(line, flags=LOCAL | CLOSE, reply=b"BYE\n")
        flags = RETRY_SAFE if command in (b"GET", b"PING") else 0
        return Frame(line, key=words[1] if len(words) > 1 else None, flags=flags)

    def pending(self) -> int:
        return len(self.buffer)

    def expect(self, kind: Any) -> None:
        pass


codec = LineCodec()
