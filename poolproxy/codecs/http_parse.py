"""
HTTP/1.1 message parsing for request mode: pure, incremental, streaming.

Bytes go in, events come out; nothing here sees a transport, a reactor or a
clock.  A parser never holds a whole body: body bytes are emitted as soon as
they arrive, so the proxy can forward them with backpressure.  Only an
incomplete head, chunk-size line or trailer line is buffered, and those are
bounded by the limits.

Events, in order, for each message::

    RequestHead | ResponseHead      the parsed head
    bytes, bytes, ...               body pieces (never empty)
    END                             the message (head and body) is complete

Body pieces are the raw wire bytes: for a chunked body that is the chunked
encoding itself (chunk-size lines, extensions and trailers included,
unchanged) so the proxy forwards it verbatim next to the re-serialised head,
which keeps C{Transfer-Encoding} / C{Content-Length}.  A L{ResponseParser}
with C{decode_chunked=True} emits the decoded payload instead (for relaying
to an HTTP/1.0 client).

After a request head that upgrades the connection (C{Connection: upgrade}
with C{Upgrade:}, or CONNECT; never one with a body), the request is whole
(END follows the head) and framing stops: C{tunnel} becomes true and every
byte after it, now and in later feeds, is returned as a raw C{bytes} event,
which the proxy holds until the backend answers.  If the backend refuses
the upgrade, C{resume_http(held)} parses those bytes (and what follows) as
requests again.  After a 101 response (or a 2xx answer to CONNECT) the
response parser stops framing the same way, without an END.

Errors never raise: the parser sets C{error} to an L{HttpError} (whose
C{status} is the reply the proxy should give: 400/413/414/431/501/505 for a
client's request, 502 for a backend's response) and returns the events
before the error; after that C{feed} returns nothing more.

Strictness (anti request smuggling): only CRLF ends a line (a bare CR or LF
in a head, chunk-size line or trailer is an error, so is NUL, and in a
request any other control character but HTAB); no obs-fold; no whitespace
before a header's colon; Content-Length and Transfer-Encoding together are
refused; repeated Content-Length must agree; the chunk data must be
followed by exactly CRLF; chunk sizes are plain hex, below 2^63.  An
HTTP/1.1 request must have exactly one Host header (RFC 9112 3.2).  A
request body larger than C{max_body} is refused with 413: at its head when
Content-Length says so, else when the chunks pass it.

How the proxy uses it, per request: write
C{serialize_request_head(head, extra)} to a leased backend connection, call
C{expect(head.method)} on that connection's L{ResponseParser}, then forward
the request's body pieces as they come.  On the response side, write
C{serialize_response_head(rhead)} and the body pieces to the client; at the
L{END} of a final (not informational) response, the backend connection can
go back to the pool if C{rhead.keep_alive}, no error is set and nothing else
is outstanding (C{expected == 0}); close the client afterwards unless the
request's C{keep_alive}.  An L{UNTIL_CLOSE} body ends with C{eof()}.  If a
client's upgrade request (its parser now a tunnel) is answered with anything
but 101 (or 2xx to CONNECT), that response is framed normally and both
connections should be closed after it.
"""

from __future__ import annotations

from collections import deque
from string import ascii_letters, digits, hexdigits
from typing import Any, Deque, Iterable, List, Optional, Set, Tuple, Union

from poolproxy.codecs._buffer import Unparsed

__all__ = [
    "NONE", "LENGTH", "CHUNKED", "UNTIL_CLOSE", "END",
    "HttpError", "RequestHead", "ResponseHead",
    "RequestParser", "ResponseParser",
    "hop_by_hop_names", "serialize_request_head", "serialize_response_head",
    "status_response",
]

# -- Body kinds ---------------------------------------------------------------

#: No body (a GET without framing headers, HEAD/1xx/204/304 responses...).
NONE = "none"
#: C{Content-Length} bytes (C{head.length}).
LENGTH = "length"
#: Chunked transfer coding.
CHUNKED = "chunked"
#: Responses only: the body runs until the backend closes the connection.
UNTIL_CLOSE = "until-close"


class _End:
    """The type of L{END}."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "END"

    def __reduce__(self) -> str:
        return "END"


#: Event: the current message's body is complete.
END = _End()


class HttpError(Exception):
    """
    Why a stream cannot be parsed.

    @ivar status: the HTTP status the proxy should answer with (400, 414,
        431, 501, 505 for requests; 502 for responses).
    @ivar message: a short human-readable reason.
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(status, message)
        self.status = status
        self.message = message

    def __repr__(self) -> str:
        return f"HttpError({self.status}, {self.message!r})"

    def __str__(self) -> str:
        return f"{self.status} {self.message}"


# -- Character classes (for bytes.translate(None, delete): empty == valid) -----

_TCHAR = (ascii_letters + digits + "!#$%&'*+-.^_`|~").encode("ascii")
_HEX = hexdigits.encode("ascii")
#: request-target: visible ASCII, plus obs-text (lenient, as most servers).
_TARGET = bytes(range(0x21, 0x7F)) + bytes(range(0x80, 0x100))
#: chunk extensions: anything but CTLs (HTAB allowed).
_EXT = b"\t" + bytes(range(0x20, 0x7F)) + bytes(range(0x80, 0x100))
#: What may not be in a head but in its CRLFs: in a response, NUL (bare CR
#: and LF are counted apart); in a request, every control character but HTAB.
_RESPONSE_HEAD_CTL = b"\r\n\x00"
_REQUEST_HEAD_CTL = bytes(range(0x00, 0x09)) + bytes(range(0x0A, 0x20)) + b"\x7f"
#: Chunk sizes from here on are refused (as an int64 they would be negative).
_CHUNK_SIZE_LIMIT = 1 << 63

_METHODS = frozenset([b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS",
                      b"PATCH", b"TRACE", b"CONNECT"])
#: b"200" -> 200 for every 3-digit status 100..999.
_STATUS = {b"%d" % i: i for i in range(100, 1000)}

#: Always hop-by-hop (RFC 9110 7.6.1, plus the common non-standard ones).
_HOP_BY_HOP = frozenset([b"connection", b"keep-alive", b"proxy-connection", b"te",
                         b"trailer", b"upgrade", b"proxy-authenticate",
                         b"proxy-authorization"])
#: Never dropped even when a Connection header names them: dropping framing
#: headers (or Host) on a client's say-so would desynchronise the backend.
_PROTECTED = frozenset([b"content-length", b"transfer-encoding", b"host"])


# -- Heads --------------------------------------------------------------------

def _lower_name(name: Any) -> bytes:
    if isinstance(name, str):
        name = name.encode("latin-1")
    return name.lower()


def _find_header(headers: List[Tuple[bytes, bytes]], name: Any) -> Optional[bytes]:
    name = _lower_name(name)
    size = len(name)
    for n, v in headers:
        if len(n) == size and n.lower() == name:
            return v
    return None


class _Head:
    """What request and response heads share: header lookup and equality."""

    __slots__: Tuple[str, ...] = ()
    headers: List[Tuple[bytes, bytes]]
    #: Set by the parsers: the head's bytes as received (without the blank
    #: line), and its hop-by-hop headers: 0 for none, N > 0 when the only one
    #: is a single Connection header on line N, -1 otherwise.  Without any
    #: (or with just that line, taken out) the head is relayed as received
    #: (see L{_serialize}); L{raw} is L{None} for heads built by hand.
    raw: Optional[bytes]
    hop: int
    #: Also set by the parsers: the header names lower-cased, in order, for
    #: lookups without a loop in Python; L{None} for heads built by hand.
    #: Whoever changes a parsed head's C{headers} sets C{raw} and C{names}
    #: to L{None} (and C{connection}, see below).
    names: Optional[List[bytes]]

    def header(self, name: Any) -> Optional[bytes]:
        """The first value of header C{name} (case-insensitive), or L{None}."""
        names = self.names
        if names is None:
            return _find_header(self.headers, name)
        name = _lower_name(name)
        if name in names:
            return self.headers[names.index(name)][1]
        return None

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return all(getattr(self, s) == getattr(other, s) for s in self.__slots__
                   if s not in ("raw", "hop", "names"))

    __hash__ = None  # type: ignore[assignment]


class RequestHead(_Head):
    """
    A parsed request head.

    @ivar method: e.g. C{b"GET"}.
    @ivar target: the request-target, as sent.
    @ivar version: C{b"HTTP/1.1"} or C{b"HTTP/1.0"} (a higher 1.x minor
        version is recorded as C{b"HTTP/1.1"}).
    @ivar headers: C{[(name, value), ...]}, original case and order, values
        without surrounding whitespace.
    @ivar body: L{NONE}, L{LENGTH} or L{CHUNKED}.
    @ivar length: the Content-Length for L{LENGTH}, 0 for L{NONE}, L{None}
        for L{CHUNKED}.
    @ivar keep_alive: whether the client wants the connection kept open
        (HTTP/1.1 unless C{Connection: close}; HTTP/1.0 only with
        C{Connection: keep-alive}).
    @ivar upgrade: CONNECT, or an HTTP/1.1 C{Connection: upgrade} request
        with an C{Upgrade} header: the connection becomes a tunnel.
    @ivar expect_continue: an HTTP/1.1 request with content and
        C{Expect: 100-continue}.
    @ivar connection: the C{Connection} header's tokens, lower-cased, as
        parsed; L{None} (the default for a head built by hand, and what to
        set after changing its C{Connection} headers) means "read them from
        C{headers}".
    """

    __slots__ = ("method", "target", "version", "headers", "body", "length",
                 "keep_alive", "upgrade", "expect_continue", "connection", "raw", "hop",
                 "names")

    def __init__(self, method: bytes, target: bytes, version: bytes = b"HTTP/1.1",
                 headers: Optional[List[Tuple[bytes, bytes]]] = None,
                 body: str = NONE, length: Optional[int] = 0,
                 keep_alive: bool = True, upgrade: bool = False,
                 expect_continue: bool = False,
                 connection: Optional[Tuple[bytes, ...]] = None) -> None:
        self.method = method
        self.target = target
        self.version = version
        self.headers = [] if headers is None else headers
        self.body = body
        self.length = length
        self.keep_alive = keep_alive
        self.upgrade = upgrade
        self.expect_continue = expect_continue
        self.connection = connection
        self.raw = None
        self.hop = -1
        self.names = None

    def __repr__(self) -> str:
        return (f"RequestHead({self.method!r}, {self.target!r}, {self.version!r}, "
                f"body={self.body}, length={self.length}, keep_alive={self.keep_alive}, "
                f"upgrade={self.upgrade}, expect_continue={self.expect_continue}, "
                f"headers={self.headers!r})")


class ResponseHead(_Head):
    """
    A parsed response head.

    @ivar version: C{b"HTTP/1.1"} or C{b"HTTP/1.0"}.
    @ivar status: e.g. 200.
    @ivar reason: the reason phrase, possibly empty.
    @ivar headers: C{[(name, value), ...]}, original case and order.
    @ivar body: L{NONE}, L{LENGTH}, L{CHUNKED} or L{UNTIL_CLOSE}.
    @ivar length: the Content-Length for L{LENGTH}, 0 for L{NONE}, L{None}
        otherwise.
    @ivar keep_alive: whether the backend connection can be reused after
        this response (false for L{UNTIL_CLOSE} bodies and upgrades).
    @ivar upgrade: 101 Switching Protocols (or a 2xx answer to CONNECT): the
        connection is now a tunnel.
    @ivar informational: a 1xx other than 101 (100 Continue, 103 Early
        Hints): the final response is still to come.
    @ivar connection: as for L{RequestHead}.
    """

    __slots__ = ("version", "status", "reason", "headers", "body", "length",
                 "keep_alive", "upgrade", "informational", "connection", "raw", "hop",
                 "names")

    def __init__(self, version: bytes = b"HTTP/1.1", status: int = 200, reason: bytes = b"OK",
                 headers: Optional[List[Tuple[bytes, bytes]]] = None,
                 body: str = NONE, length: Optional[int] = 0,
                 keep_alive: bool = True, upgrade: bool = False,
                 informational: bool = False,
                 connection: Optional[Tuple[bytes, ...]] = None) -> None:
        self.version = version
        self.status = status
        self.reason = reason
        self.headers = [] if headers is None else headers
        self.body = body
        self.length = length
        self.keep_alive = keep_alive
        self.upgrade = upgrade
        self.informational = informational
        self.connection = connection
        self.raw = None
        self.hop = -1
        self.names = None

    def __repr__(self) -> str:
        return (f"ResponseHead({self.version!r}, {self.status}, {self.reason!r}, "
                f"body={self.body}, length={self.length}, keep_alive={self.keep_alive}, "
                f"upgrade={self.upgrade}, informational={self.informational}, "
                f"headers={self.headers!r})")


# -- Shared parsing helpers ---------------------------------------------------

def _tokens(values: List[bytes]) -> List[bytes]:
    """Lower-cased, stripped, non-empty elements of comma-separated values."""
    out = []
    for value in values:
        for t in value.lower().split(b","):
            t = t.strip(b" \t")
            if t:
                out.append(t)
    return out


def _values(headers: List[Tuple[bytes, bytes]], lnames: List[bytes], name: bytes) -> List[bytes]:
    """The values of header C{name} (lower-case; C{lnames} are the lower-cased names)."""
    if lnames.count(name) == 1:
        return [headers[lnames.index(name)][1]]
    return [headers[i][1] for i, n in enumerate(lnames) if n == name]


def _connection_tokens(headers: List[Tuple[bytes, bytes]], lnames: List[bytes]) -> Tuple[bytes, ...]:
    """The lower-cased tokens of the Connection headers."""
    values = _values(headers, lnames, b"connection")
    if len(values) == 1:
        v = values[0].lower()
        if v == b"keep-alive" or v == b"close":
            return (v,)
    return tuple(_tokens(values))


def _content_length(values: List[bytes]) -> Optional[int]:
    """The agreed Content-Length, or L{None} if invalid or conflicting."""
    if len(values) == 1:
        v = values[0]
        if v.isdigit() and len(v) <= 18:
            return int(v)
    length = None
    for value in values:
        for v in value.split(b","):
            v = v.strip(b" \t")
            if not v.isdigit() or len(v) > 18:
                return None
            n = int(v)
            if length is None:
                length = n
            elif n != length:
                return None
    return length


def _codings(values: List[bytes]) -> Optional[List[bytes]]:
    """Transfer codings (names lower-cased, parameters kept), or None if garbage."""
    codings = _tokens(values)
    for c in codings:
        name = c.split(b";", 1)[0].rstrip(b" \t")
        if not name or name.translate(None, _TCHAR):
            return None
    return codings or None


# Parser states.
_HEAD = 0
_LENGTH = 1
_CHUNK_SIZE = 2
_CHUNK_DATA = 3
_CHUNK_CRLF = 4
_TRAILER = 5
_UNTIL_CLOSE = 6
_TUNNEL = 7
_DEAD = 8


class _Parser(Unparsed):
    """The incremental machinery shared by both parsers."""

    #: HttpError statuses: bad syntax, start line too long, head too large.
    _BAD = 400
    _LONG_LINE = 414
    _TOO_LARGE = 431
    _what = "request"
    _head_ctl = _RESPONSE_HEAD_CTL

    def __init__(self, max_line: int = 8190, max_headers_size: int = 65536,
                 max_headers: int = 100) -> None:
        self.max_line = max_line
        self.max_headers_size = max_headers_size
        self.max_headers = max_headers
        #: The largest body (chunked: the sum of its chunk sizes), or None.
        self.max_body: Optional[int] = None
        self._body_size = 0
        #: None, or the L{HttpError} that broke the stream.
        self.error: Optional[HttpError] = None
        #: True once the connection is a tunnel: feed() returns raw bytes.
        self.tunnel = False
        self._decode = False
        # An incomplete head, chunk-size line or trailer (poolproxy.codecs._buffer).
        self._init_unparsed()
        # What an incomplete head waits for (_head_need): while its start line
        # is not whole, and after.
        self._start_line_need = -(max_line + 1)
        self._head_limit_need = -(max_line + max_headers_size + 4)
        self._state = _HEAD
        self._remaining = 0
        self._scan = 0
        self._trailer_size = 0
        # The last head's bytes, hop-by-hop flag and names (see _Head.raw).
        self._raw: Any = None
        self._hop = -1
        self._names: List[bytes] = []

    def pending(self) -> int:
        """Bytes held for an incomplete head, chunk-size line or trailer."""
        return self._have

    def _fail(self, status: int, message: str) -> Any:
        """Set C{error} (the first one stays) and stop; returns L{None}."""
        if self.error is None:
            self.error = HttpError(status, message)
        self._state = _DEAD
        self._drop()
        return None

    def _may_end(self, data: bytes, have: int) -> bool:
        """
        Whether C{data}, which holds a LF, may end the head held, or break
        it (L{Unparsed._may_end}): the empty line after it, or a bare LF, which
        the parse refuses at once; in C{data} or across its edge with what
        is held.  Only then is the head joined and parsed again, so a head
        sent a line at a time is copied once, not once per line.  (Held
        body bytes wait for any byte: C{need} 0.)

        While it holds on, and once the start line is whole (the limit is
        the header section's), the search for the head's end resumes after
        these bytes when the head is parsed (C{_scan}); the start line's
        own limit is checked from the start.
        """
        if b"\n\r\n" in data:
            return True
        # Every LF must follow a CR; LF LF (an end in bare LFs) has a bare one.
        lf = data.count(b"\n")
        crlf = data.count(b"\r\n")
        first = data[0] if data else 0
        if first == 10 or first == 13:
            last = self._last(2)
            if b"\n\r\n" in last + data[:2]:
                return True
            if first == 10:
                if last[-1:] != b"\r":
                    return True
                lf -= 1  # it ends a CRLF begun in what is held
        if lf != crlf:
            return True
        if self._need != self._start_line_need:
            self._scan = have - 3 if have > 3 else 0
        return False

    def _head_need(self, buf: bytes, pos: int) -> int:
        """
        What an incomplete head held from C{pos} waits for: its end (see
        L{_may_end}), or as many bytes as would break a limit (the start
        line's until it ends, then the header section's), so that the
        limits are checked again.
        """
        if buf.find(b"\r\n", pos, pos + self.max_line + 2) < 0:
            return self._start_line_need
        return self._head_limit_need

    def _incomplete_head(self, buf: Any, pos: int, n: int) -> None:
        """No complete head yet at C{pos}: enforce the limits, reject bare LF early."""
        size = n - pos
        max_line = self.max_line
        if size > max_line + 1:
            # The start line is checked once, when the head grows past it;
            # the exact header-section size is checked once the head is whole.
            if self._scan + 3 <= max_line + 1 and buf.find(b"\r\n", pos, pos + max_line + 2) < 0:
                return self._fail(self._LONG_LINE, f"{self._what} line too long")
            if size > max_line + self.max_headers_size + 4:
                return self._fail(self._TOO_LARGE, "header section too large")
        s = pos + self._scan
        if buf.count(b"\n", s) != buf.count(b"\r\n", s - 1 if s > pos else s):
            return self._fail(self._BAD, "bare LF in head")
        self._scan = size - 3 if size > 3 else 0

    def _split_head(self, buf: bytes, pos: int, end: int) -> Any:
        """
        Check and split the head block C{buf[pos:end]}: return
        C{(start_line, headers, lower-cased names)} or L{None} (error set).
        """
        head = buf[pos:end]
        lines = head.split(b"\r\n")
        line = lines[0]
        if len(line) > self.max_line:
            return self._fail(self._LONG_LINE, f"{self._what} line too long")
        nh = len(lines) - 1
        # Each of CR, LF, NUL (and for a request every other control
        # character but HTAB) counted: exactly nh CRs and nh LFs (all in the
        # CRLFs split on) and nothing else.  (bytes.find/count, never "in": on
        # CPython "sub in bytes" first tries sub as an int, raising inside.)
        if len(head) - len(head.translate(None, self._head_ctl)) != nh + nh:
            if head.find(b"\x00") >= 0:
                return self._fail(self._BAD, "NUL in head")
            if head.count(b"\r") + head.count(b"\n") != nh + nh:
                return self._fail(self._BAD, "bare CR or LF in head")
            return self._fail(self._BAD, "control character in head")
        if not nh:
            self._raw = head
            self._hop = 0
            self._names = []
            return line, [], self._names
        if nh > self.max_headers:
            return self._fail(self._TOO_LARGE, "too many header fields")
        if end - pos - len(line) > self.max_headers_size:
            return self._fail(self._TOO_LARGE, "header section too large")
        del lines[0]
        headers = [(n, v.strip(b" \t")) for x in lines for n, c, v in [x.partition(b":")] if c]
        # Lower-cased names: validated (lower() keeps non-token bytes
        # non-token), then searched for the few headers that matter.
        lnames = [h[0].lower() for h in headers]
        if len(headers) != nh or head.find(b"\n:") >= 0 or \
                b"".join(lnames).translate(None, _TCHAR):
            return self._fail(self._BAD, self._why_bad_names(lines))
        self._raw = head
        self._names = lnames
        if _HOP_BY_HOP.isdisjoint(lnames):
            self._hop = 0
        else:
            hops = [i for i, name in enumerate(lnames) if name in _HOP_BY_HOP]
            self._hop = hops[0] + 1 if len(hops) == 1 and lnames[hops[0]] == b"connection" else -1
        return line, headers, lnames

    @staticmethod
    def _why_bad_names(lines: List[bytes]) -> str:
        for x in lines:
            n, c, _ = x.partition(b":")
            if n[:1] in (b" ", b"\t"):
                return "obsolete line folding"
            if not c:
                return "header line without a colon"
            if not n:
                return "empty header name"
            if n[-1:] in (b" ", b"\t"):
                return "whitespace before colon"
            if n.translate(None, _TCHAR):
                return "invalid header name"
        return "invalid header name"  # pragma: no cover

    def _chunked(self, buf: bytes, pos: int, n: int, events: List[Any]) -> int:
        """
        Walk a chunked body from C{pos}, chunk header by chunk header.
        Append its bytes (raw, or decoded) and, at its end, L{END}.  Return
        the position reached: the message's end, or where more bytes are
        needed (the state is then still a chunked one), or -1 on error.
        """
        decode = self._decode
        start = pos
        pieces: List[bytes] = []
        state = self._state
        max_line = self.max_line
        err = None
        while True:
            if state == _CHUNK_DATA:
                r = self._remaining
                avail = n - pos
                if avail < r:
                    if decode and avail:
                        pieces.append(buf[pos:])
                    self._remaining = r - avail
                    pos = n
                    break
                if decode:
                    pieces.append(buf[pos:pos + r])
                pos += r
                state = _CHUNK_CRLF
            if state == _CHUNK_CRLF:
                if n - pos < 2:
                    if n > pos and buf[pos] != 13:
                        err = "chunk data not followed by CRLF"
                    break
                if buf[pos] != 13 or buf[pos + 1] != 10:
                    err = "chunk data not followed by CRLF"
                    break
                pos += 2
                state = _CHUNK_SIZE
            if state == _CHUNK_SIZE:
                le = buf.find(b"\r\n", pos, pos + max_line + 2)
                if le < 0:
                    if n - pos > max_line + 1:
                        err = "chunk size line too long"
                    elif b"\n" in buf[pos:]:
                        err = "bare LF in chunk size line"
                    break
                semi = buf.find(b";", pos, le)
                if semi < 0:
                    size = buf[pos:le]
                else:
                    size = buf[pos:semi].rstrip(b" \t")
                    if buf[semi:le].translate(None, _EXT):
                        err = "invalid chunk extension"
                        break
                if not size or len(size) > 16 or size.translate(None, _HEX):
                    err = "invalid chunk size"
                    break
                r = int(size, 16)
                if r >= _CHUNK_SIZE_LIMIT:
                    err = "invalid chunk size (2^63 or more)"
                    break
                if self.max_body is not None:
                    self._body_size += r
                    if self._body_size > self.max_body:
                        err = f"request body larger than {self.max_body} bytes"
                        break
                pos = le + 2
                if r:
                    self._remaining = r
                    state = _CHUNK_DATA
                    continue
                state = _TRAILER
                self._trailer_size = 0
            # _TRAILER: field lines until the empty line.
            if buf.startswith(b"\r\n", pos):
                pos += 2
                if decode:
                    if pieces:
                        events.append(b"".join(pieces))
                elif pos > start:
                    events.append(buf[start:pos])
                events.append(END)
                self._state = _HEAD
                return pos
            le = buf.find(b"\r\n", pos)
            if le < 0:
                if self._trailer_size + n - pos > self.max_headers_size:
                    err = "trailer section too large"
                elif b"\n" in buf[pos:]:
                    err = "bare LF in trailer"
                break
            line = buf[pos:le]
            self._trailer_size += le + 2 - pos
            if self._trailer_size > self.max_headers_size:
                err = "trailer section too large"
                break
            name, colon, _ = line.partition(b":")
            if not colon or not name or name.translate(None, _TCHAR) or \
                    b"\r" in line or b"\n" in line or b"\x00" in line:
                err = "invalid trailer field"
                break
            pos = le + 2
        # Out of bytes (or an error): emit what is complete.
        self._state = state
        if decode:
            if pieces:
                events.append(b"".join(pieces))
        elif pos > start:
            events.append(buf[start:pos])
        if err is not None:
            self._fail(413 if err.startswith("request body") else
                       self._TOO_LARGE if "too large" in err else self._BAD, err)
            return -1
        return pos

    def _body(self, buf: bytes, pos: int, n: int, events: List[Any]) -> int:
        """Continue the current body from C{pos}; return the new position or -1."""
        state = self._state
        if state == _LENGTH:
            r = self._remaining
            avail = n - pos
            if avail < r:
                events.append(buf[pos:] if pos else buf)
                self._remaining = r - avail
                return n
            events.append(buf[pos:pos + r])
            events.append(END)
            self._state = _HEAD
            return pos + r
        if state == _UNTIL_CLOSE:
            events.append(buf[pos:] if pos else buf)
            return n
        return self._chunked(buf, pos, n, events)

    def _eof_incomplete(self) -> bool:
        """Whether the stream stops inside a message (not between messages)."""
        state = self._state
        if state == _HEAD:
            return self._have > 0
        return state != _TUNNEL and state != _DEAD and state != _UNTIL_CLOSE


class RequestParser(_Parser):
    """
    Cuts a client connection's byte stream into requests (pipelining
    allowed): C{feed(data)} returns L{RequestHead}, body pieces, L{END}, ...

    Empty lines before a request line are ignored (RFC 9112 2.2), up to
    C{max_empty_lines} of them; more are an error (400).  C{blank} counts
    the bytes of those ignored since the last head, so that the proxy can
    time a head from its first byte, empty lines included: a client that
    sends a CRLF every few seconds has begun a head, not stayed idle.
    """

    _head_ctl = _REQUEST_HEAD_CTL

    def __init__(self, max_line: int = 8190, max_headers_size: int = 65536,
                 max_headers: int = 100, max_empty_lines: int = 8,
                 max_body: Optional[int] = None) -> None:
        super().__init__(max_line, max_headers_size, max_headers)
        self.max_body = max_body
        #: Bytes of empty lines ignored since the last head.
        self.blank = 0
        # Bytes: an empty line is CRLF (a bare LF, tolerated here, is shorter).
        self._max_blank = 2 * max_empty_lines

    def feed(self, data: bytes) -> List[Any]:
        """
        Add bytes; return the events now available.  Never raises for bad
        input: sets C{error} and returns the events before it.
        """
        if self.error is not None:
            return []
        if self.tunnel:
            return [data] if data else []
        if type(data) is not bytes:
            data = bytes(data)
        buf = self._take(data) if self._have else data  # codecs._buffer
        if buf is None:
            return []
        n = len(buf)
        pos = 0
        events: List[Any] = []
        while pos < n:
            if self._state != _HEAD:
                pos = self._body(buf, pos, n, events)
                if pos < 0:
                    return events
                if self._state != _HEAD:
                    break
                continue
            c = buf[pos]
            if c == 13 or c == 10:
                # RFC 9112 2.2: ignore empty lines before a request line, a few.
                start = pos
                pos = n - len(buf[pos:].lstrip(b"\r\n"))
                self.blank += pos - start
                if self.blank > self._max_blank:
                    self._fail(400, "too many empty lines before the request line")
                    return events
                if pos == n:
                    break
            end = buf.find(b"\r\n\r\n", pos + self._scan)
            if end < 0:
                self._incomplete_head(buf, pos, n)
                if self.error is not None:
                    return events
                break
            self._scan = 0
            self.blank = 0
            head = self._parse_head(buf, pos, end)
            if head is None:
                return events
            head.raw = self._raw
            head.hop = self._hop
            head.names = self._names
            events.append(head)
            pos = end + 4
            if head.upgrade:
                # Whole (it has no body); what follows waits for the answer.
                events.append(END)
                self.tunnel = True
                self._state = _TUNNEL
                if pos < n:
                    events.append(buf[pos:])
                return events
            body = head.body
            if body is NONE:
                events.append(END)
            elif body is LENGTH:
                if head.length:
                    self._state = _LENGTH
                    self._remaining = head.length
                else:
                    events.append(END)
            else:
                self._state = _CHUNK_SIZE
                self._body_size = 0
        if pos < n:
            self._keep(buf, pos, self._head_need(buf, pos) if self._state == _HEAD else 0)
        return events

    def resume_http(self, held: bytes) -> List[Any]:
        """
        The backend refused the upgrade the last head asked for: the bytes
        that followed it (C{held}, returned raw since) are requests after
        all.  Frame them, and what comes next, as usual.
        """
        if self._state == _TUNNEL:
            self.tunnel = False
            self._state = _HEAD
        return self.feed(held) if held else []

    def eof(self) -> List[Any]:
        """
        The client closed its side.  Returns C{[]}; sets C{error} (400) if
        the stream stopped inside a request.
        """
        if self.error is None and self._eof_incomplete():
            self._fail(400, "connection closed inside a request")
        return []

    def _parse_head(self, buf: bytes, pos: int, end: int) -> Optional[RequestHead]:
        split = self._split_head(buf, pos, end)
        if split is None:
            return None
        line, headers, lnames = split
        try:
            method, target, version = line.split(b" ")
        except ValueError:
            return self._fail(400, "bad request line")
        if version != b"HTTP/1.1":
            if version != b"HTTP/1.0":
                version = self._version(version)
                if version is None:
                    return None
        if method not in _METHODS and (not method or method.translate(None, _TCHAR)):
            return self._fail(400, "bad method")
        if not target or target.translate(None, _TARGET):
            return self._fail(400, "bad request target")
        http11 = version == b"HTTP/1.1"
        # RFC 9112 3.2: no request may have two Host headers (a backend and a
        # cache or a router in front of it could disagree on which one
        # counts), and an HTTP/1.1 request must have one.
        hosts = lnames.count(b"host")
        if hosts != 1 and (hosts or http11):
            return self._fail(400, "more than one Host header" if hosts else "no Host header")
        keep_alive = http11
        upgrade = method == b"CONNECT"
        expect = False
        body = NONE
        length: Optional[int] = 0
        tokens: Tuple[bytes, ...] = ()
        if lnames:
            if b"connection" in lnames:
                tokens = _connection_tokens(headers, lnames)
                if http11:
                    keep_alive = b"close" not in tokens
                    if b"upgrade" in tokens and b"upgrade" in lnames:
                        upgrade = True
                else:
                    keep_alive = b"keep-alive" in tokens and b"close" not in tokens
            te = b"transfer-encoding" in lnames
            if b"content-length" in lnames:
                if te:
                    return self._fail(400, "both Content-Length and Transfer-Encoding")
                length = _content_length(_values(headers, lnames, b"content-length"))
                if length is None:
                    return self._fail(400, "invalid Content-Length")
                body = LENGTH
            elif te:
                if not http11:
                    return self._fail(400, "Transfer-Encoding in an HTTP/1.0 request")
                codings = _codings(_values(headers, lnames, b"transfer-encoding"))
                if codings is None:
                    return self._fail(400, "invalid Transfer-Encoding")
                if codings[-1] != b"chunked":
                    return self._fail(501, "unsupported Transfer-Encoding")
                if codings.count(b"chunked") > 1:
                    return self._fail(400, "chunked applied more than once")
                body = CHUNKED
                length = None
            # RFC 9110 10.1.1: only a request with content may expect 100.
            if http11 and body is not NONE and b"expect" in lnames:
                expect = b"100-continue" in _tokens(_values(headers, lnames, b"expect"))
            if body is not NONE and upgrade:
                if method == b"CONNECT":
                    return self._fail(400, "CONNECT with content")
                # RFC 9110 7.8 lets a server switch after such a request's
                # content; simpler and safe: the offer is dropped (the Upgrade
                # header is hop-by-hop) and the request goes as a plain one.
                upgrade = False
            if length and self.max_body is not None and length > self.max_body:
                return self._fail(413, f"request body larger than {self.max_body} bytes")
        return RequestHead(method, target, version, headers, body, length,
                           keep_alive, upgrade, expect, tokens)

    def _version(self, version: bytes) -> Optional[bytes]:
        """Normalise an unusual HTTP-version, or fail (400 bad, 505 >= 2)."""
        if version[:5] == b"HTTP/" and version[5:6].isdigit():
            major = version[5]
            rest = version[6:]
            if rest[:1] == b"." and len(rest) == 2 and rest[1:].isdigit() or \
                    not rest and major >= 0x32:
                if major >= 0x32 or major == 0x30:
                    return self._fail(505, "HTTP version not supported")
                return b"HTTP/1.1"
        return self._fail(400, "bad HTTP version")


class ResponseParser(_Parser):
    """
    Cuts a backend connection's byte stream into responses.  The proxy calls
    C{expect(method)} for every request it sends on the connection, in
    order; C{feed(data)} returns L{ResponseHead}, body pieces, L{END}, ...

    A 1xx informational response is a head and L{END} of its own and does
    not use up the expectation.  C{eof()} ends an L{UNTIL_CLOSE} body.
    """

    _BAD = 502
    _LONG_LINE = 502
    _TOO_LARGE = 502
    _what = "status"

    def __init__(self, max_line: int = 8190, max_headers_size: int = 65536,
                 max_headers: int = 100, decode_chunked: bool = False) -> None:
        super().__init__(max_line, max_headers_size, max_headers)
        self._decode = decode_chunked
        self._expected: Deque[bytes] = deque()

    def expect(self, method: bytes) -> None:
        """A request with this method was sent on the connection."""
        self._expected.append(method)

    @property
    def decode_chunked(self) -> bool:
        """
        Whether chunked bodies are emitted decoded; may be changed between
        responses (the proxy sets it for a request from an HTTP/1.0 client).
        """
        return self._decode

    @decode_chunked.setter
    def decode_chunked(self, value: bool) -> None:
        self._decode = value

    @property
    def expected(self) -> int:
        """Responses still expected (including the one being received)."""
        return len(self._expected) + (self._state != _HEAD and self._state != _DEAD
                                      and self._state != _TUNNEL)

    def feed(self, data: bytes) -> List[Any]:
        """
        Add bytes; return the events now available.  Never raises for bad
        input: sets C{error} (502) and returns the events before it.
        """
        if self.error is not None:
            return []
        if self.tunnel:
            return [data] if data else []
        if type(data) is not bytes:
            data = bytes(data)
        buf = self._take(data) if self._have else data  # codecs._buffer
        if buf is None:
            return []
        n = len(buf)
        pos = 0
        events: List[Any] = []
        expected = self._expected
        while pos < n:
            if self._state != _HEAD:
                pos = self._body(buf, pos, n, events)
                if pos < 0:
                    return events
                if self._state != _HEAD:
                    break
                continue
            if not expected:
                self._fail(502, "response bytes with no request outstanding")
                return events
            c = buf[pos]
            if c == 13 or c == 10:
                pos = n - len(buf[pos:].lstrip(b"\r\n"))
                if pos == n:
                    break
            end = buf.find(b"\r\n\r\n", pos + self._scan)
            if end < 0:
                self._incomplete_head(buf, pos, n)
                if self.error is not None:
                    return events
                break
            self._scan = 0
            head = self._parse_head(buf, pos, end, expected[0])
            if head is None:
                return events
            head.raw = self._raw
            head.hop = self._hop
            head.names = self._names
            events.append(head)
            pos = end + 4
            if head.informational:
                events.append(END)
                continue
            expected.popleft()
            if head.upgrade:
                self.tunnel = True
                self._state = _TUNNEL
                if pos < n:
                    events.append(buf[pos:])
                return events
            body = head.body
            if body is NONE:
                events.append(END)
            elif body is LENGTH:
                if head.length:
                    self._state = _LENGTH
                    self._remaining = head.length
                else:
                    events.append(END)
            elif body is CHUNKED:
                self._state = _CHUNK_SIZE
            else:
                self._state = _UNTIL_CLOSE
        if pos < n:
            self._keep(buf, pos, self._head_need(buf, pos) if self._state == _HEAD else 0)
        return events

    def eof(self) -> List[Any]:
        """
        The backend closed the connection.  Returns C{[END]} if that ends an
        L{UNTIL_CLOSE} body; sets C{error} (502) and returns C{[]} if it
        stopped inside a response or before an expected one; else C{[]}.
        """
        if self.error is not None:
            return []
        if self._state == _UNTIL_CLOSE:
            self._state = _HEAD
            return [END]
        if self._eof_incomplete():
            self._fail(502, "connection closed inside a response")
        elif self._expected and self._state == _HEAD:
            self._fail(502, "connection closed before the response")
        return []

    def _parse_head(self, buf: bytes, pos: int, end: int, method: bytes) -> Optional[ResponseHead]:
        split = self._split_head(buf, pos, end)
        if split is None:
            return None
        line, headers, lnames = split
        parts = line.split(b" ", 2)
        if len(parts) < 2:
            return self._fail(502, "bad status line")
        version = parts[0]
        status = _STATUS.get(parts[1])
        if status is None:
            return self._fail(502, "bad status code")
        reason = parts[2] if len(parts) == 3 else b""
        if version != b"HTTP/1.1" and version != b"HTTP/1.0":
            if len(version) == 8 and version[:7] == b"HTTP/1." and version[7:].isdigit():
                version = b"HTTP/1.1"
            else:
                return self._fail(502, "bad HTTP version")
        http11 = version == b"HTTP/1.1"
        keep_alive = http11
        tokens: Tuple[bytes, ...] = ()
        if lnames:
            if b"connection" in lnames:
                tokens = _connection_tokens(headers, lnames)
                if http11:
                    keep_alive = b"close" not in tokens
                else:
                    keep_alive = b"keep-alive" in tokens and b"close" not in tokens
        if status < 200:
            if status == 101:
                return ResponseHead(version, 101, reason, headers, NONE, 0, False, True, False,
                                    tokens)
            return ResponseHead(version, status, reason, headers, NONE, 0, keep_alive, False,
                                True, tokens)
        if status < 300 and method == b"CONNECT":
            return ResponseHead(version, status, reason, headers, NONE, 0, False, True, False,
                                tokens)
        if status == 204 or status == 304 or method == b"HEAD":
            return ResponseHead(version, status, reason, headers, NONE, 0, keep_alive, False,
                                False, tokens)
        if lnames:
            te = b"transfer-encoding" in lnames
            if b"content-length" in lnames:
                if te:
                    return self._fail(502, "both Content-Length and Transfer-Encoding")
                length = _content_length(_values(headers, lnames, b"content-length"))
                if length is None:
                    return self._fail(502, "invalid Content-Length")
                return ResponseHead(version, status, reason, headers, LENGTH, length,
                                    keep_alive, False, False, tokens)
            if te:
                codings = _codings(_values(headers, lnames, b"transfer-encoding"))
                if codings is None:
                    return self._fail(502, "invalid Transfer-Encoding")
                if codings[-1] == b"chunked":
                    if codings.count(b"chunked") > 1:
                        return self._fail(502, "chunked applied more than once")
                    # RFC 9112 6.1: Transfer-Encoding in HTTP/1.0 is faulty framing.
                    return ResponseHead(version, status, reason, headers, CHUNKED, None,
                                        keep_alive and http11, False, False, tokens)
                # RFC 9112 6.3: another final coding: the body runs until close.
        return ResponseHead(version, status, reason, headers, UNTIL_CLOSE, None,
                            False, False, False, tokens)


# -- Serialisation ------------------------------------------------------------

def _connection_of(head: Any) -> Tuple[bytes, ...]:
    tokens = head.connection
    if tokens is None:
        tokens = tuple(_tokens([v for n, v in head.headers
                                if len(n) == 10 and n.lower() == b"connection"]))
    return tokens


def hop_by_hop_names(head: Any) -> Set[bytes]:
    """
    The lower-cased names of C{head}'s hop-by-hop headers: the standard ones
    (Connection, Keep-Alive, Proxy-Connection, TE, Trailer, Upgrade,
    Proxy-Authenticate, Proxy-Authorization) and every name listed in a
    Connection header, except Content-Length, Transfer-Encoding and Host,
    which are never dropped (so a client cannot strip the framing on its
    way to the backend).
    """
    names = set(_HOP_BY_HOP)
    names.update(_connection_of(head))
    names -= _PROTECTED
    return names


#: Connection tokens that name no other header.
_KEEP_OR_CLOSE = frozenset([b"keep-alive", b"close"])

#: Connection tokens that name nothing beyond L{_HOP_BY_HOP}.
_PLAIN_TOKENS = _HOP_BY_HOP | {b"close"}
_HOP_BY_HOP_UPGRADE = _HOP_BY_HOP - {b"upgrade"}


#: Headers to add: (name, value) pairs (bytes or str), or header lines
#: already encoded, as one C{bytes} of CRLF-separated lines without the last CRLF.
ExtraHeaders = Union[bytes, Iterable[Tuple[Any, Any]]]


def _serialize(first: bytes, head: Any, upgrade: bool,
               extra_headers: ExtraHeaders, drop: Iterable[Any]) -> bytes:
    raw = head.raw
    hop = head.hop
    if (raw is not None and not upgrade and (hop == 0 or (
            hop > 0 and _KEEP_OR_CLOSE.issuperset(head.connection or ())))
            and (not drop or all(head.header(d) is None for d in drop))):
        # Nothing to take out but, at most, a plain "Connection: keep-alive"
        # line (nginx sends one with every response): the header lines go as
        # received (the common case, and the cheap one).
        if hop > 0:
            lines = raw.split(b"\r\n")
            del lines[hop]
            raw = b"\r\n".join(lines)
        eol = raw.find(b"\r\n")
        out = first + raw[eol:] if eol >= 0 else first
        if extra_headers:
            out += b"\r\n" + b"\r\n".join(_encode_extra(extra_headers))
        return out + b"\r\n\r\n"
    tokens = _connection_of(head)
    skip: Any = _HOP_BY_HOP_UPGRADE if upgrade else _HOP_BY_HOP
    if drop or not _PLAIN_TOKENS.issuperset(tokens):
        skip = set(skip)
        skip.update(tokens)
        skip -= _PROTECTED
        if drop:
            skip.update([_lower_name(d) for d in drop])
        if upgrade:
            skip.discard(b"upgrade")
    lines = [first]
    lines += [b": ".join(h) for h in head.headers if h[0].lower() not in skip]
    if upgrade:
        lines.append(b"Connection: upgrade")
    if extra_headers:
        lines += _encode_extra(extra_headers)
    lines.append(b"\r\n")
    return b"\r\n".join(lines)


def _encode_extra(extra_headers: Any) -> List[bytes]:
    if extra_headers.__class__ is bytes:
        return [extra_headers]  # header lines encoded already
    if type(extra_headers) is not list and type(extra_headers) is not tuple:
        extra_headers = list(extra_headers)
    try:
        return [b": ".join(h) for h in extra_headers]
    except TypeError:
        pass
    out = []
    for name, value in extra_headers:
        if isinstance(name, str):
            name = name.encode("latin-1")
        if isinstance(value, str):
            value = value.encode("latin-1")
        out.append(name + b": " + value)
    return out


def serialize_request_head(head: RequestHead, extra_headers: ExtraHeaders = (),
                           drop: Iterable[Any] = ()) -> bytes:
    """
    The head to send to a backend: C{METHOD target HTTP/1.1}, C{head}'s
    headers (original case and order) without the hop-by-hop ones (see
    L{hop_by_hop_names}) and without those named in C{drop}
    (case-insensitive), then C{extra_headers} (C{(name, value)} pairs,
    bytes or str; or header lines already encoded, as one C{bytes} of
    CRLF-separated lines without the last CRLF).  Content-Length and Transfer-Encoding stay: the body is
    forwarded verbatim.  For an upgrade request (not CONNECT) the C{Upgrade}
    header stays and C{Connection: upgrade} is sent.
    """
    return _serialize(head.method + b" " + head.target + b" HTTP/1.1", head,
                      head.upgrade and head.method != b"CONNECT", extra_headers, drop)


def serialize_response_head(head: ResponseHead, extra_headers: ExtraHeaders = (),
                            drop: Iterable[Any] = ()) -> bytes:
    """
    The head to send to a client: C{HTTP/1.1 status reason} (the proxy
    speaks its own version, RFC 9110 2.5), then headers as for
    L{serialize_request_head}.  To relay a chunked body decoded to an
    HTTP/1.0 client, pass C{drop=[b"transfer-encoding"]}.
    """
    return _serialize(b"HTTP/1.1 %d %s" % (head.status, head.reason), head,
                      head.upgrade and head.status == 101, extra_headers, drop)


def status_response(status: int, reason: str, body: str,
                    extra_headers: Iterable[Tuple[Any, Any]] = ()) -> bytes:
    """
    A complete response of the proxy's own (400, 431, 502, 503, 504...): a
    text/plain UTF-8 C{body} with its Content-Length.  No C{Connection}
    header is added; pass C{(b"Connection", b"close")} in C{extra_headers}
    to close.
    """
    payload = body.encode("utf-8")
    lines = [b"HTTP/1.1 %d %s" % (status, reason.encode("latin-1")),
             b"Content-Type: text/plain; charset=utf-8",
             b"Content-Length: %d" % (len(payload),)]
    if extra_headers:
        lines += _encode_extra(extra_headers)
    lines.append(b"")
    lines.append(payload)
    return b"\r\n".join(lines)
