"""
Unit and property tests of L{poolproxy.codecs.http_parse}: request and
response framing, keep-alive, tunnels, every rejection, head serialisation,
and arbitrary chunkings of valid and random streams.
"""

from __future__ import annotations

from typing import Any, List, Optional, Sequence, Tuple

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from poolproxy.codecs.http_parse import (
    CHUNKED,
    END,
    LENGTH,
    NONE,
    UNTIL_CLOSE,
    HttpError,
    RequestHead,
    RequestParser,
    ResponseHead,
    ResponseParser,
    hop_by_hop_names,
    serialize_request_head,
    serialize_response_head,
    status_response,
)

Message = Tuple[Any, bytes, bool]


def messages(events: Sequence[Any]) -> List[Message]:
    """
    Group events into C{(head, concatenated body bytes, ended)} per message;
    raw bytes before any head (tunnel bytes after an upgrade) go to the last
    message.
    """
    out: List[List[Any]] = []
    for event in events:
        if isinstance(event, (RequestHead, ResponseHead)):
            out.append([event, b"", False])
        elif event is END:
            assert out and not out[-1][2], "END outside a message"
            out[-1][2] = True
        else:
            assert type(event) is bytes and event, f"bad event {event!r}"
            out[-1][1] += event
    return [(h, b, e) for h, b, e in out]


def err(parser: Any) -> HttpError:
    """The parser's error, which must be set."""
    assert isinstance(parser.error, HttpError), parser.error
    return parser.error


def feed_in(parser: Any, data: bytes, cuts: Sequence[int] = ()) -> List[Any]:
    """Feed C{data} cut at C{cuts}; return all events."""
    events: List[Any] = []
    last = 0
    for cut in sorted(set(cuts)) + [len(data)]:
        events += parser.feed(data[last:cut])
        last = cut
    return events


class RequestParserTests(SynchronousTestCase):
    """Framing of client requests."""

    def test_get_without_body(self) -> None:
        """
        A GET with no framing headers is a head with body NONE followed at
        once by END; method, target, version and headers (original case and
        order, values trimmed) are kept; header() is case-insensitive.
        """
        p = RequestParser()
        events = p.feed(b"GET /a?b=1 HTTP/1.1\r\nHost: example.com\r\n"
                        b"X-Thing:  some value \r\nx-thing: two\r\n\r\n")
        self.assertEqual(len(events), 2)
        head, end = events
        self.assertIs(end, END)
        self.assertEqual((head.method, head.target, head.version), (b"GET", b"/a?b=1", b"HTTP/1.1"))
        self.assertEqual(head.headers, [(b"Host", b"example.com"), (b"X-Thing", b"some value"),
                                        (b"x-thing", b"two")])
        self.assertEqual((head.body, head.length), (NONE, 0))
        self.assertTrue(head.keep_alive)
        self.assertFalse(head.upgrade)
        self.assertFalse(head.expect_continue)
        self.assertEqual(head.header(b"HOST"), b"example.com")
        self.assertEqual(head.header("x-thing"), b"some value")
        self.assertIsNone(head.header(b"Missing"))
        self.assertIsNone(p.error)
        self.assertEqual(p.pending(), 0)

    def test_head_without_headers(self) -> None:
        """An HTTP/1.0 request line followed directly by the empty line is valid."""
        head, end = RequestParser().feed(b"OPTIONS * HTTP/1.0\r\n\r\n")
        self.assertEqual((head.method, head.target, head.headers), (b"OPTIONS", b"*", []))
        self.assertIs(end, END)

    def test_post_content_length(self) -> None:
        """
        A Content-Length body is emitted as the bytes arrive, never held
        until complete; END comes once exactly Content-Length bytes passed.
        """
        p = RequestParser()
        events = p.feed(b"POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nhel")
        self.assertEqual(len(events), 2)
        self.assertEqual((events[0].body, events[0].length), (LENGTH, 10))
        self.assertEqual(events[1], b"hel")
        self.assertEqual(p.feed(b"lo w"), [b"lo w"])
        self.assertEqual(p.pending(), 0)
        self.assertEqual(p.feed(b"orl"), [b"orl", END])
        self.assertEqual(p.pending(), 0)

    def test_post_content_length_exact(self) -> None:
        """
        Body bytes are sliced: the remainder of a feed beyond the body
        starts the next request; Content-Length: 0 ends at once.
        """
        p = RequestParser()
        events = p.feed(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabcPUT / HTTP/1.1\r\nHost: h\r\n"
                        b"Content-Length: 0\r\n\r\n")
        self.assertEqual(messages(events)[0][1:], (b"abc", True))
        self.assertEqual(messages(events)[1][0].length, 0)
        self.assertEqual(messages(events)[1][1:], (b"", True))

    def test_chunked_with_extensions_and_trailers(self) -> None:
        """
        A chunked body is emitted as its raw wire bytes, chunk-size lines,
        extensions and trailers included, so it can be forwarded verbatim;
        END follows the empty line after the trailers.
        """
        body = (b"5;name=value;other=\"q s\"\r\nhello\r\n"
                b"6 ; ext\r\n world\r\n"
                b"0\r\nExpires: never\r\nX-Sum: 123\r\n\r\n")
        p = RequestParser()
        events = p.feed(b"POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n" + body)
        ((head, got, ended),) = messages(events)
        self.assertEqual((head.body, head.length), (CHUNKED, None))
        self.assertEqual(got, body)
        self.assertTrue(ended)
        self.assertEqual(p.pending(), 0)

    def test_chunked_streams_inside_a_chunk(self) -> None:
        """
        Bytes of a large chunk are emitted feed by feed; only an incomplete
        chunk-size line is held back.
        """
        p = RequestParser()
        p.feed(b"PUT / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n")
        self.assertEqual(p.feed(b"10000\r\nabc"), [b"10000\r\nabc"])
        self.assertEqual(p.feed(b"x" * 1000), [b"x" * 1000])
        self.assertEqual(p.pending(), 0)
        p.feed(b"y" * (0x10000 - 1003))
        self.assertEqual(p.feed(b"\r\n1"), [b"\r\n"])
        self.assertEqual(p.pending(), 1)
        self.assertEqual(p.feed(b"\r\nz\r\n0\r\n\r\n"), [b"1\r\nz\r\n0\r\n\r\n", END])

    def test_pipelined_requests(self) -> None:
        """
        Several requests in one feed, with and without bodies, come out in
        order, each head followed by its body and END.
        """
        stream = (b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n"
                  b"POST /2 HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nhi"
                  b"POST /3 HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n"
                  b"GET /4 HTTP/1.1\r\nHost: h\r\n\r\n")
        got = messages(RequestParser().feed(stream))
        self.assertEqual([m[0].target for m in got], [b"/1", b"/2", b"/3", b"/4"])
        self.assertEqual([m[1] for m in got], [b"", b"hi", b"1\r\nx\r\n0\r\n\r\n", b""])
        self.assertTrue(all(m[2] for m in got))

    def test_leading_empty_lines_ignored(self) -> None:
        """
        Empty lines before a request line (RFC 9112 2.2), even split across
        feeds and after a previous request's body, are skipped.
        """
        p = RequestParser()
        events = p.feed(b"\r\n\r")
        events += p.feed(b"\nGET / HTTP/1.1\r\nHost: h\r\n\r\nPOST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\n\r\nx\r\n")
        events += p.feed(b"\r\nGET /z HTTP/1.1\r\nHost: h\r\n\r\n")
        self.assertEqual([m[0].target for m in messages(events)], [b"/", b"/", b"/z"])
        self.assertIsNone(p.error)

    def test_keep_alive_http11(self) -> None:
        """
        HTTP/1.1 is persistent unless a Connection header lists close (in
        any case, among other tokens).
        """
        def ka(headers: bytes) -> bool:
            return RequestParser().feed(b"GET / HTTP/1.1\r\nHost: h\r\n" + headers + b"\r\n")[0].keep_alive
        self.assertTrue(ka(b""))
        self.assertTrue(ka(b"Connection: keep-alive\r\n"))
        self.assertFalse(ka(b"Connection: close\r\n"))
        self.assertFalse(ka(b"Connection: X-Foo, CLOSE\r\n"))
        self.assertFalse(ka(b"Connection: x-foo\r\nConnection: close\r\n"))

    def test_keep_alive_http10(self) -> None:
        """
        HTTP/1.0 is persistent only with Connection: keep-alive (and without
        close).
        """
        def ka(headers: bytes) -> bool:
            return RequestParser().feed(b"GET / HTTP/1.0\r\n" + headers + b"\r\n")[0].keep_alive
        self.assertFalse(ka(b""))
        self.assertTrue(ka(b"Connection: Keep-Alive\r\n"))
        self.assertFalse(ka(b"Connection: close\r\n"))
        self.assertFalse(ka(b"Connection: keep-alive, close\r\n"))

    def test_higher_minor_version(self) -> None:
        """An HTTP/1.x request with x > 1 is handled as HTTP/1.1 (RFC 9110 2.5)."""
        self.assertEqual(RequestParser().feed(b"GET / HTTP/1.7\r\nHost: h\r\n\r\n")[0].version, b"HTTP/1.1")

    def test_expect_continue(self) -> None:
        """
        expect_continue is set for an HTTP/1.1 request with content and
        Expect: 100-continue (any case), not for HTTP/1.0 or other values.
        """
        def exp(first: bytes, headers: bytes) -> bool:
            return RequestParser().feed(first + b"\r\nContent-Length: 4\r\n" + headers
                                        + b"\r\n")[0].expect_continue
        self.assertTrue(exp(b"POST / HTTP/1.1\r\nHost: h", b"Expect: 100-Continue\r\n"))
        self.assertFalse(exp(b"POST / HTTP/1.1\r\nHost: h", b""))
        self.assertFalse(exp(b"POST / HTTP/1.0", b"Expect: 100-continue\r\n"))
        self.assertFalse(exp(b"POST / HTTP/1.1\r\nHost: h", b"Expect: something-else\r\n"))

    def test_connect_tunnel(self) -> None:
        """
        After a CONNECT head (whole: END follows it) the parser stops
        framing: the rest of the feed is one raw bytes event, C{tunnel} is
        set and every later feed comes back unchanged, even bytes that look
        like HTTP.
        """
        p = RequestParser()
        events = p.feed(b"CONNECT db.internal:5432 HTTP/1.1\r\nHost: db.internal:5432\r\n\r\n"
                        b"\x16\x03\x01binary")
        self.assertEqual(len(events), 3)
        self.assertTrue(events[0].upgrade)
        self.assertEqual(events[0].target, b"db.internal:5432")
        self.assertIs(events[1], END)
        self.assertEqual(events[2], b"\x16\x03\x01binary")
        self.assertTrue(p.tunnel)
        self.assertEqual(p.feed(b"GET / HTTP/1.1\r\nHost: h\r\nbad header\r\n\r\n"),
                         [b"GET / HTTP/1.1\r\nHost: h\r\nbad header\r\n\r\n"])
        self.assertEqual(p.feed(b""), [])
        self.assertIsNone(p.error)

    def test_upgrade_tunnel(self) -> None:
        """
        Connection: upgrade with an Upgrade header (a WebSocket handshake)
        makes a tunnel just like CONNECT; nothing after the head is framed.
        """
        p = RequestParser()
        events = p.feed(b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\n"
                        b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\r\n")
        self.assertEqual(len(events), 2)
        self.assertTrue(events[0].upgrade)
        self.assertIs(events[1], END)
        self.assertTrue(p.tunnel)
        self.assertEqual(p.feed(b"\x81\x05hello"), [b"\x81\x05hello"])

    def test_refused_upgrade_resumes_http(self) -> None:
        """
        resume_http(held) after an upgrade the backend refused: the bytes
        held since the head, and later feeds, are framed as requests again.
        """
        p = RequestParser()
        events = p.feed(b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\n"
                        b"Upgrade: websocket\r\n\r\nGET /next HTTP/1.1\r\nHo")
        held = events[2]
        got = messages(p.resume_http(held) + p.feed(b"st: a\r\n\r\n"))
        self.assertEqual([(m[0].target, m[2]) for m in got], [(b"/next", True)])
        self.assertFalse(p.tunnel)

    def test_upgrade_with_a_body_is_a_plain_request(self) -> None:
        """
        An upgrade offer on a request with content is dropped (the request
        is framed as usual); CONNECT with content is refused.
        """
        p = RequestParser()
        events = p.feed(b"POST /ws HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\n"
                        b"Upgrade: h2c\r\nContent-Length: 2\r\n\r\nhi")
        ((head, body, ended),) = messages(events)
        self.assertEqual((head.upgrade, body, ended, p.tunnel), (False, b"hi", True, False))
        p = RequestParser()
        p.feed(b"CONNECT a:1 HTTP/1.1\r\nHost: a:1\r\nContent-Length: 2\r\n\r\nhi")
        self.assertEqual(p.error.status, 400)

    def test_not_an_upgrade(self) -> None:
        """
        Connection: upgrade without an Upgrade header, an Upgrade header not
        listed in Connection, or an HTTP/1.0 upgrade (RFC 9110 7.8) are
        ordinary requests.
        """
        for raw in [b"GET / HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\n\r\n",
                    b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\r\n",
                    b"GET / HTTP/1.0\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"]:
            p = RequestParser()
            head, end = p.feed(raw)
            self.assertFalse(head.upgrade, raw)
            self.assertFalse(p.tunnel)
            self.assertIs(end, END)

    def test_identical_repeated_content_length(self) -> None:
        """
        Repeated Content-Length headers, or a list, with identical values
        are accepted (RFC 9110 8.6).
        """
        head = RequestParser().feed(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n"
                                    b"Content-Length: 3, 3\r\n\r\n")[0]
        self.assertEqual((head.body, head.length), (LENGTH, 3))

    def test_gzip_then_chunked(self) -> None:
        """
        chunked as the final coding after another one frames the body as
        chunked (the codings are the backend's business).
        """
        head = RequestParser().feed(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n"
                                    b"Transfer-Encoding: Chunked\r\n\r\n")[0]
        self.assertEqual(head.body, CHUNKED)

    def test_head_byte_by_byte(self) -> None:
        """
        A large head fed one byte at a time is held (pending() counts it)
        and parsed once complete; bytearray and memoryview input work too.
        """
        raw = (b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X-Big: " + b"v" * 20000 + b"\r\n"
               + b"Content-Length: 2\r\n\r\nok")
        p = RequestParser()
        events: List[Any] = []
        for i in range(len(raw) - 3):
            events += p.feed(raw[i:i + 1])
        self.assertEqual(events, [])
        self.assertEqual(p.pending(), len(raw) - 3)
        events += p.feed(bytearray(raw[-3:-2])) + p.feed(memoryview(raw[-2:]))
        ((head, body, ended),) = messages(events)
        self.assertEqual((len(head.header(b"x-big")), body, ended), (20000, b"ok", True))
        self.assertEqual(p.pending(), 0)

    def test_eof(self) -> None:
        """
        eof() between requests is clean; inside a head or a body it sets a
        400 error.
        """
        p = RequestParser()
        p.feed(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n\r\n")
        self.assertEqual(p.eof(), [])
        self.assertIsNone(p.error)
        for partial in [b"GET / HTTP/1.1\r\nHost: h\r\nHost", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nab",
                        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n"]:
            p = RequestParser()
            p.feed(partial)
            self.assertEqual(p.eof(), [])
            self.assertEqual(err(p).status, 400, partial)


class RequestRejectionTests(SynchronousTestCase):
    """Every way a request is refused, with the status the proxy answers."""

    def assertRejects(self, data: bytes, status: int, fragment: Optional[str] = None,
                      parser: Optional[RequestParser] = None) -> HttpError:
        """
        Feeding C{data} sets C{error} with C{status} (message containing
        C{fragment}), returns no head, and the parser then stays silent.
        """
        p = parser or RequestParser()
        events = p.feed(data)
        self.assertFalse([e for e in events if isinstance(e, RequestHead)], data)
        error = err(p)
        self.assertEqual(error.status, status, (data, error))
        if fragment is not None:
            self.assertIn(fragment, error.message)
        self.assertEqual(p.feed(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"), [])
        self.assertEqual(p.pending(), 0)
        return error

    def test_host_required_in_http11(self) -> None:
        """HTTP/1.1 without Host is a 400 (RFC 9112 3.2); two Hosts are, in any version."""
        self.assertRejects(b"GET / HTTP/1.1\r\nX: y\r\n\r\n", 400, "no Host")
        self.assertRejects(b"GET / HTTP/1.0\r\nHost: a\r\nhost: b\r\n\r\n", 400, "more than one")
        self.assertIsNone(RequestParser().feed(b"GET / HTTP/1.0\r\n\r\n")[0].header(b"host"))

    def test_control_characters_in_values(self) -> None:
        """
        Any control character but HTAB in a request head is a 400 (a backend
        could read it otherwise than the proxy); HTAB and obs-text pass.
        """
        for ctl in list(range(1, 9)) + list(range(11, 13)) + list(range(14, 32)) + [127]:
            self.assertRejects(b"GET / HTTP/1.1\r\nHost: h\r\nX: a%cb\r\n\r\n" % ctl, 400,
                               "control character")
        head = RequestParser().feed(b"GET / HTTP/1.1\r\nHost: h\r\nX: a\tb\xe9\r\n\r\n")[0]
        self.assertEqual(head.header(b"x"), b"a\tb\xe9")

    def test_chunk_size_limit(self) -> None:
        """A chunk size of 2^63 or more is a 400; 2^63 - 1 is framed."""
        head = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
        p = RequestParser()
        events = p.feed(head + b"8000000000000000\r\n")
        self.assertEqual(err(p).status, 400)
        self.assertEqual(len(events), 1)  # the head: the error is inside its body
        p = RequestParser()
        p.feed(head + b"7fffffffffffffff\r\nabc")
        self.assertIsNone(p.error)

    def test_body_larger_than_max_body(self) -> None:
        """
        max_body: a larger Content-Length is a 413 at its head; a chunked
        body when its chunks pass it; at the limit exactly, fine.
        """
        self.assertRejects(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\n",
                           413, "larger than 10", parser=RequestParser(max_body=10))
        ((_, body, ended),) = messages(RequestParser(max_body=10).feed(
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\n0123456789"))
        self.assertEqual((body, ended), (b"0123456789", True))
        p = RequestParser(max_body=10)
        chunked = (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                   b"6\r\nabcdef\r\n4\r\nghij\r\n")
        p.feed(chunked)
        self.assertIsNone(p.error)
        p.feed(b"1\r\n")
        self.assertEqual(err(p).status, 413)
        p = RequestParser(max_body=10)  # counted per request
        p.feed(chunked + b"0\r\n\r\n" + chunked)
        self.assertIsNone(p.error)

    def test_empty_lines_bounded(self) -> None:
        """
        Up to 8 empty lines before a request line are skipped and counted
        in C{blank} (reset by the head); a ninth is a 400.
        """
        p = RequestParser()
        self.assertEqual(p.feed(b"\r\n" * 5), [])
        self.assertEqual(p.blank, 10)
        self.assertEqual(len(p.feed(b"\r\n" * 3 + b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")), 2)
        self.assertEqual(p.blank, 0)
        self.assertRejects(b"\r\n" * 9, 400, "empty lines")

    def test_bad_request_line(self) -> None:
        """A request line that is not METHOD SP target SP version is a 400."""
        for line in [b"GET /", b"GET  / HTTP/1.1", b"GET / HTTP/1.1 ", b"/ HTTP/1.1",
                     b"G(T / HTTP/1.1", b"GET /\x7f HTTP/1.1", b"GET /a\tb HTTP/1.1",
                     b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"]:
            self.assertRejects(line + b"\r\n\r\n", 400)

    def test_bad_version(self) -> None:
        """An unparsable HTTP-version is a 400."""
        for version in [b"HTTP/1", b"http/1.1", b"HTTP/1.x", b"HTTP/1.10", b"1.1", b"HTTP//1.1"]:
            self.assertRejects(b"GET / " + version + b"\r\n\r\n", 400, "version")

    def test_http2_and_later(self) -> None:
        """The HTTP/2 connection preface and versions 2 and above are a 505."""
        self.assertRejects(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505)
        for version in [b"HTTP/2.0", b"HTTP/2", b"HTTP/3", b"HTTP/9.9"]:
            self.assertRejects(b"GET / " + version + b"\r\n\r\n", 505)

    def test_invalid_header_name(self) -> None:
        """A header name with a non-token character, or an empty one, is a 400."""
        for line in [b"Bad@Name: x", b"Bad\"Name: x", b": empty", b"X-\x01: y", b"Na\xffme: v"]:
            self.assertRejects(b"GET / HTTP/1.1\r\nHost: h\r\n" + line + b"\r\n\r\n", 400)

    def test_header_without_colon(self) -> None:
        """A header line without a colon is a 400."""
        self.assertRejects(b"GET / HTTP/1.1\r\nHost: a\r\nNoColon\r\n\r\n", 400, "colon")

    def test_obs_fold(self) -> None:
        """A line starting with a space or tab (obsolete folding) is a 400."""
        self.assertRejects(b"GET / HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n  continued\r\n\r\n", 400, "folding")
        self.assertRejects(b"GET / HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n\tmore: 2\r\n\r\n", 400, "folding")
        self.assertRejects(b"GET / HTTP/1.1\r\nHost: h\r\n Host: a\r\n\r\n", 400, "folding")

    def test_space_before_colon(self) -> None:
        """Whitespace between a header name and its colon is a 400 (RFC 9112 5.1)."""
        self.assertRejects(b"GET / HTTP/1.1\r\nHost: h\r\nHost : a\r\n\r\n", 400, "before colon")
        self.assertRejects(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length\t: 5\r\n\r\nhello", 400)

    def test_bare_cr_lf_nul(self) -> None:
        """
        A bare LF or CR in a head, or a NUL, is a 400 (a backend splitting
        lines differently would see other headers).
        """
        self.assertRejects(b"GET / HTTP/1.1\r\nHost: h\r\nX: a\nTransfer-Encoding: chunked\r\n\r\n", 400)
        self.assertRejects(b"GET / HTTP/1.1\r\nHost: h\r\nX: a\rY: b\r\n\r\n", 400)
        self.assertRejects(b"GET / HTTP/1.1\r\nHost: h\r\nX: a\x00b\r\n\r\n", 400, "NUL")
        # LF-only heads are refused as soon as the bare LF is seen.
        self.assertRejects(b"GET / HTTP/1.1\nHost: a\n", 400, "bare LF")
        p = RequestParser()
        self.assertEqual(p.feed(b"GET / HTTP/1.1\r"), [])
        self.assertRejects(b"\nHost: a\nX", 400, parser=p)

    def test_content_length_and_transfer_encoding(self) -> None:
        """
        Content-Length together with Transfer-Encoding (the classic
        request-smuggling vector), in either order, is a 400.
        """
        self.assertRejects(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n"
                           b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, "both")
        self.assertRejects(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
                           b"content-length: 0\r\n\r\n", 400, "both")

    def test_differing_content_lengths(self) -> None:
        """Repeated Content-Length headers (or a list) that disagree are a 400."""
        self.assertRejects(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\n",
                           400, "Content-Length")
        self.assertRejects(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4, 5\r\n\r\n", 400)

    def test_two_host_headers(self) -> None:
        """Two Host headers (in any case) are a 400: backends could disagree on which counts."""
        self.assertRejects(b"GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n", 400, "Host")
        self.assertRejects(b"GET / HTTP/1.0\r\nHost: a\r\nHost: a\r\n\r\n", 400, "Host")

    def test_bad_content_length(self) -> None:
        """A negative, signed, empty, non-decimal or absurd Content-Length is a 400."""
        for value in [b"-1", b"+5", b"", b"0x10", b"1e3", b"5 5", b"1" * 19, "\u0665".encode()]:
            self.assertRejects(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: " + value + b"\r\n\r\n", 400)

    def test_bad_chunk_size(self) -> None:
        """
        A chunk-size that is not plain hex, has a bad extension or a bare
        LF, or chunk data not followed by CRLF, is a 400; the raw bytes of
        the chunks before it were emitted.
        """
        head = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
        for body in [b"zz\r\n", b"0x5\r\nhello\r\n", b" 5\r\nhello\r\n", b"-1\r\n",
                     b"\r\n", b"5\nhello\r\n", b"5;a\x01\r\nhello\r\n", b"5\r\nhelloXX",
                     b"11111111111111111\r\n", b"5\r\nhello\n0\r\n\r\n", b"5\r\nhello\r\n0\r\nX: \x00\r\n\r\n",
                     b"5\r\nhello\r\n0\r\nbad trailer\r\n\r\n"]:
            p = RequestParser()
            events = p.feed(head + body)
            self.assertEqual(err(p).status, 400, body)
            self.assertFalse(END in events)
            self.assertEqual(p.feed(b"0\r\n\r\n"), [])

    def test_chunk_size_line_too_long(self) -> None:
        """A chunk-size line longer than max_line is refused without waiting for its end."""
        p = RequestParser(max_line=100)
        p.feed(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n")
        p.feed(b"5;" + b"a" * 200)
        self.assertEqual(err(p).status, 400)

    def test_request_line_too_long(self) -> None:
        """
        A request line over max_line is a 414, whether the line is complete
        or still arriving.
        """
        self.assertRejects(b"GET /" + b"a" * 100 + b" HTTP/1.1\r\nHost: h\r\n\r\n", 414,
                           parser=RequestParser(max_line=100))
        p = RequestParser(max_line=100)
        self.assertEqual(p.feed(b"GET /" + b"a" * 50), [])
        self.assertRejects(b"a" * 50, 414, parser=p)

    def test_header_section_too_large(self) -> None:
        """A header section over max_headers_size is a 431, complete or not."""
        big = b"X-Big: " + b"b" * 2000 + b"\r\n"
        self.assertRejects(b"GET / HTTP/1.1\r\nHost: h\r\n" + big + b"\r\n", 431,
                           parser=RequestParser(max_headers_size=1000))
        p = RequestParser(max_line=100, max_headers_size=1000)
        self.assertEqual(p.feed(b"GET / HTTP/1.1\r\nHost: h\r\nX: " + b"x" * 500), [])
        self.assertRejects(b"x" * 600, 431, parser=p)

    def test_too_many_headers(self) -> None:
        """More than max_headers header lines is a 431."""
        headers = b"".join(b"X-%d: v\r\n" % i for i in range(10))
        self.assertRejects(b"GET / HTTP/1.1\r\nHost: h\r\n" + headers + b"\r\n", 431, "too many",
                           parser=RequestParser(max_headers=10))
        head = RequestParser(max_headers=11).feed(b"GET / HTTP/1.1\r\nHost: h\r\n" + headers + b"\r\n")[0]
        self.assertEqual(len(head.headers), 11)

    def test_trailers_too_large(self) -> None:
        """A trailer section over max_headers_size is a 431."""
        p = RequestParser(max_headers_size=100)
        p.feed(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n")
        for _ in range(10):
            p.feed(b"X-T: " + b"t" * 20 + b"\r\n")
        self.assertEqual(err(p).status, 431)

    def test_unsupported_transfer_encoding(self) -> None:
        """
        A Transfer-Encoding whose final coding is not chunked is a 501
        (RFC 9112 6.1); an unparsable one, or chunked applied twice, is a
        400.
        """
        for te in [b"gzip", b"chunked, gzip", b"identity", b"chunked;x=1"]:
            self.assertRejects(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: " + te + b"\r\n\r\n", 501)
        for te in [b"chu@nked", b"", b",", b"chunked, chunked", b"\"chunked\""]:
            self.assertRejects(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: " + te + b"\r\n\r\n", 400)

    def test_transfer_encoding_in_http10(self) -> None:
        """Transfer-Encoding in an HTTP/1.0 request is faulty framing: 400."""
        self.assertRejects(b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400)

    def test_events_before_error_are_valid(self) -> None:
        """
        A good request followed by a bad one in the same feed: the good
        request's events are returned, then the error is set.
        """
        p = RequestParser()
        events = p.feed(b"GET /ok HTTP/1.1\r\nHost: h\r\n\r\nGET /bad HTTP/1.1\r\nHost: h\r\nA : b\r\n\r\n")
        self.assertEqual(len(events), 2)
        self.assertEqual(events[0].target, b"/ok")
        self.assertEqual(err(p).status, 400)
        self.assertEqual(p.eof(), [])


class ResponseParserTests(SynchronousTestCase):
    """Framing of backend responses, paired with the requests sent."""

    def parse(self, data: bytes, *methods: bytes, decode: bool = False) -> Tuple[ResponseParser, List[Message]]:
        """Expect C{methods}, feed C{data}, group the events."""
        r = ResponseParser(decode_chunked=decode)
        for m in methods or (b"GET",):
            r.expect(m)
        return r, messages(r.feed(data))

    def test_content_length(self) -> None:
        """
        A Content-Length response: status, reason, version, headers,
        keep_alive; the body arrives as fed and END after its last byte.
        """
        r = ResponseParser()
        r.expect(b"GET")
        events = r.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nServer: x\r\n\r\nhe")
        head = events[0]
        self.assertEqual((head.version, head.status, head.reason), (b"HTTP/1.1", 200, b"OK"))
        self.assertEqual((head.body, head.length, head.keep_alive), (LENGTH, 5, True))
        self.assertEqual(head.header(b"server"), b"x")
        self.assertEqual(events[1:], [b"he"])
        self.assertEqual(r.feed(b"llo"), [b"llo", END])
        self.assertEqual(r.expected, 0)

    def test_reason_phrase(self) -> None:
        """A reason phrase may be empty, absent, or contain spaces."""
        r, got = self.parse(b"HTTP/1.1 404 Not Found Here\r\nContent-Length: 0\r\n\r\n"
                            b"HTTP/1.1 200 \r\nContent-Length: 0\r\n\r\n"
                            b"HTTP/1.1 204\r\n\r\n", b"GET", b"GET", b"GET")
        self.assertEqual([(m[0].status, m[0].reason) for m in got],
                         [(404, b"Not Found Here"), (200, b""), (204, b"")])

    def test_head_response_has_no_body(self) -> None:
        """
        The response to HEAD has no body whatever its Content-Length or
        Transfer-Encoding; the next response follows directly.
        """
        r, got = self.parse(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"
                            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
                            b"HEAD", b"HEAD", b"GET")
        self.assertEqual([(m[0].body, m[1], m[2]) for m in got],
                         [(NONE, b"", True), (NONE, b"", True), (LENGTH, b"ok", True)])
        self.assertTrue(all(m[0].keep_alive for m in got))

    def test_204_and_304_have_no_body(self) -> None:
        """204 and 304 responses end at their head, even with Content-Length."""
        r, got = self.parse(b"HTTP/1.1 204 No Content\r\nContent-Length: 7\r\n\r\n"
                            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 7\r\n\r\n"
                            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
                            b"DELETE", b"GET", b"GET")
        self.assertEqual([(m[0].status, m[0].body, m[1]) for m in got],
                         [(204, NONE, b""), (304, NONE, b""), (200, LENGTH, b"")])
        self.assertIsNone(r.error)

    def test_informational_responses(self) -> None:
        """
        A 1xx other than 101 (103 Early Hints, 100 Continue) is its own head
        and END, flagged informational, and does not use up the expected
        request: the final response follows and is paired with it.
        """
        r, got = self.parse(b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n"
                            b"HTTP/1.1 103 Early Hints\r\nLink: </t.js>\r\n\r\n"
                            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx", b"GET")
        self.assertEqual([(m[0].status, m[0].informational, m[1], m[2]) for m in got],
                         [(103, True, b"", True), (103, True, b"", True), (200, False, b"x", True)])
        self.assertEqual(r.expected, 0)

    def test_continue_then_response(self) -> None:
        """
        100 Continue, arriving alone, leaves the expectation; the real
        response that follows in a later feed is framed normally.
        """
        r = ResponseParser()
        r.expect(b"POST")
        events = r.feed(b"HTTP/1.1 100 Continue\r\n\r\n")
        self.assertEqual(len(events), 2)
        self.assertTrue(events[0].informational)
        self.assertIs(events[1], END)
        self.assertEqual(r.expected, 1)
        got = messages(r.feed(b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok"))
        self.assertEqual([(m[0].status, m[1], m[2]) for m in got], [(201, b"ok", True)])

    def test_switching_protocols(self) -> None:
        """
        101 Switching Protocols: head (upgrade, not reusable), then tunnel
        mode: bytes after the head and in later feeds are raw, no END.
        """
        r = ResponseParser()
        r.expect(b"GET")
        events = r.feed(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                        b"Connection: Upgrade\r\n\r\n\x81\x02hi")
        self.assertEqual(len(events), 2)
        self.assertTrue(events[0].upgrade)
        self.assertFalse(events[0].informational)
        self.assertFalse(events[0].keep_alive)
        self.assertEqual(events[1], b"\x81\x02hi")
        self.assertTrue(r.tunnel)
        self.assertEqual(r.feed(b"HTTP/1.1 200 OK\r\n"), [b"HTTP/1.1 200 OK\r\n"])
        self.assertEqual(r.eof(), [])
        self.assertIsNone(r.error)

    def test_connect_established(self) -> None:
        """A 2xx answer to CONNECT makes the connection a tunnel; a 4xx does not."""
        r, got = self.parse(b"HTTP/1.1 200 Connection established\r\n\r\nraw", b"CONNECT")
        self.assertTrue(r.tunnel)
        self.assertTrue(got[0][0].upgrade)
        self.assertEqual(got[0][1], b"raw")
        r, got = self.parse(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\nno", b"CONNECT")
        self.assertFalse(r.tunnel)
        self.assertEqual(got[0][1:], (b"no", True))

    def test_until_close(self) -> None:
        """
        Without Content-Length or chunked, the body runs until the backend
        closes: pieces are emitted as they come and eof() returns [END];
        such a connection is never kept alive.
        """
        r = ResponseParser()
        r.expect(b"GET")
        events = r.feed(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nsome")
        self.assertEqual((events[0].body, events[0].length, events[0].keep_alive),
                         (UNTIL_CLOSE, None, False))
        self.assertEqual(events[1:], [b"some"])
        self.assertEqual(r.feed(b" more\r\n\r\nHTTP/1.1 200 OK\r\n"), [b" more\r\n\r\nHTTP/1.1 200 OK\r\n"])
        self.assertEqual(r.eof(), [END])
        self.assertIsNone(r.error)

    def test_until_close_without_headers(self) -> None:
        """An HTTP/1.0 response with no headers at all reads until close."""
        r, got = self.parse(b"HTTP/1.0 200 OK\r\n\r\nbody")
        self.assertEqual((got[0][0].body, got[0][1], got[0][2]), (UNTIL_CLOSE, b"body", False))
        self.assertEqual(r.eof(), [END])

    def test_non_chunked_transfer_encoding(self) -> None:
        """
        A response whose final transfer coding is not chunked reads until
        close (RFC 9112 6.3).
        """
        r, got = self.parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n\x1f\x8b")
        self.assertEqual((got[0][0].body, got[0][1]), (UNTIL_CLOSE, b"\x1f\x8b"))

    def test_incomplete_body_at_eof(self) -> None:
        """
        eof() inside a Content-Length or chunked body, or inside a head,
        sets a 502 error and returns [].
        """
        for data in [b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
                     b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
                     b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n",
                     b"HTTP/1.1 200 OK\r\nContent-Le"]:
            r, _ = self.parse(data)
            self.assertEqual(r.eof(), [])
            self.assertIsInstance(r.error, HttpError)
            self.assertEqual(err(r).status, 502)

    def test_eof_before_response(self) -> None:
        """
        eof() while a response is expected is an error; eof() on an idle
        connection (every response complete) is not.
        """
        r = ResponseParser()
        self.assertEqual(r.eof(), [])
        self.assertIsNone(r.error)
        r.expect(b"GET")
        self.assertEqual(r.eof(), [])
        self.assertEqual(err(r).status, 502)

    def test_decode_chunked(self) -> None:
        """
        With decode_chunked, body pieces are the payload only: no chunk
        sizes, extensions or trailers.
        """
        r, got = self.parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                            b"5;x=y\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nX-T: 1\r\n\r\n",
                            decode=True)
        self.assertEqual(got[0][1:], (b"hello world", True))
        r = ResponseParser(decode_chunked=True)
        r.expect(b"GET")
        events = r.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\na\r\n01234")
        self.assertEqual(events[1:], [b"01234"])
        self.assertEqual(r.feed(b"56789\r\n0\r\n\r\n"), [b"56789", END])

    def test_keep_alive(self) -> None:
        """
        HTTP/1.1 responses are reusable unless Connection: close; HTTP/1.0
        only with Connection: keep-alive; chunked in HTTP/1.0 is not.
        """
        cases = [(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n", True),
                 (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n", False),
                 (b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n", False),
                 (b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n", True),
                 (b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n",
                  False)]
        for head, keep in cases:
            _, got = self.parse(head + b"\r\n")
            self.assertEqual(got[0][0].keep_alive, keep, head)

    def test_pipelined_responses(self) -> None:
        """
        Responses to pipelined requests are paired with the expected
        methods in order (HEAD's has no body).
        """
        r, got = self.parse(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc"
                            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n"
                            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nde\r\n0\r\n\r\n",
                            b"GET", b"HEAD", b"GET")
        self.assertEqual([m[1] for m in got], [b"abc", b"", b"2\r\nde\r\n0\r\n\r\n"])
        self.assertEqual(r.expected, 0)

    def test_unexpected_bytes(self) -> None:
        """
        Bytes when no response is expected, including after the last
        expected response ended, are a 502 error.
        """
        r = ResponseParser()
        self.assertEqual(r.feed(b"HTTP/1.1 200 OK\r\n\r\n"), [])
        self.assertEqual(err(r).status, 502)
        r, got = self.parse(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nxy")
        self.assertEqual(got[0][1:], (b"x", True))
        self.assertEqual(err(r).status, 502)

    def test_bad_responses(self) -> None:
        """
        A bad status line or version, CL with TE, conflicting or bad
        Content-Length, bad header syntax or chunking: 502.
        """
        for data in [b"HTTP/1.1 20 OK\r\n\r\n", b"HTTP/1.1 OK\r\n\r\n", b"HTTP/2 200 OK\r\n\r\n",
                     b"ICY 200 OK\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n",
                     b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                     b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
                     b"HTTP/1.1 200 OK\r\nBad Header: x\r\n\r\n",
                     b"HTTP/1.1 200 OK\r\nX: 1\r\n folded\r\n\r\n",
                     b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nxyz\r\n",
                     b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 101 + b"\r\n",
                     b"HTTP/1.1 200 " + b"x" * 9000 + b"\r\n\r\n",
                     b"HTTP/1.1 200 " + b"x" * 9000]:
            r, _ = self.parse(data)
            self.assertIsInstance(r.error, HttpError, data[:60])
            self.assertEqual(err(r).status, 502)


class SerialisationTests(SynchronousTestCase):
    """Re-serialising heads for the other side of the proxy."""

    def test_request_drops_hop_by_hop(self) -> None:
        """
        Connection, Keep-Alive, Proxy-Connection, TE, Trailer, Upgrade,
        Proxy-Authenticate, Proxy-Authorization and the headers a
        Connection header names are dropped; others keep their case and
        order; the version is always HTTP/1.1.
        """
        head = RequestParser().feed(
            b"GET /p?q HTTP/1.0\r\nHost: h\r\nConnection: keep-alive, X-Secret\r\n"
            b"Keep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nTE: trailers\r\n"
            b"Trailer: X-Sum\r\nUpgrade: h2c\r\nProxy-Authorization: Basic eA==\r\n"
            b"Proxy-Authenticate: Basic\r\nx-secret: 1\r\nAccept: */*\r\n\r\n")[0]
        self.assertEqual(serialize_request_head(head),
                         b"GET /p?q HTTP/1.1\r\nHost: h\r\nAccept: */*\r\n\r\n")

    def test_framing_headers_kept(self) -> None:
        """
        Content-Length and Transfer-Encoding are kept (bodies are forwarded
        verbatim), even when a Connection header names them; so is Host.
        """
        head = RequestParser().feed(
            b"POST / HTTP/1.1\r\nHost: h\r\nConnection: Content-Length, host, x-a\r\n"
            b"Content-Length: 2\r\nX-A: 1\r\n\r\nhi")[0]
        self.assertEqual(serialize_request_head(head),
                         b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\n")
        head = RequestParser().feed(
            b"POST / HTTP/1.1\r\nHost: h\r\nConnection: transfer-encoding\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")[0]
        self.assertEqual(serialize_request_head(head),
                         b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n")

    def test_drop_and_extra_headers(self) -> None:
        """
        Names in C{drop} are removed case-insensitively; C{extra_headers}
        (bytes or str) are appended in order.
        """
        head = RequestParser().feed(b"GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: spoof\r\n"
                                    b"Cookie: c\r\n\r\n")[0]
        out = serialize_request_head(head, [(b"X-Forwarded-For", b"10.0.0.1"), ("Via", "1.1 pp")],
                                     drop=[b"x-forwarded-for"])
        self.assertEqual(out, b"GET / HTTP/1.1\r\nHost: h\r\nCookie: c\r\n"
                              b"X-Forwarded-For: 10.0.0.1\r\nVia: 1.1 pp\r\n\r\n")
        self.assertEqual(serialize_request_head(head, drop=["COOKIE", "host"]),
                         b"GET / HTTP/1.1\r\nX-Forwarded-For: spoof\r\n\r\n")

    def test_upgrade_request(self) -> None:
        """
        An upgrade request keeps its Upgrade header and gets exactly
        Connection: upgrade; CONNECT gets no Connection header.
        """
        head = RequestParser().feed(b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, Upgrade\r\n"
                                    b"Upgrade: websocket\r\nSec-WebSocket-Key: k\r\n\r\n")[0]
        self.assertEqual(serialize_request_head(head),
                         b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nSec-WebSocket-Key: k\r\n"
                         b"Connection: upgrade\r\n\r\n")
        head = RequestParser().feed(b"CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n"
                                    b"Proxy-Authorization: x\r\n\r\n")[0]
        self.assertEqual(serialize_request_head(head), b"CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n")

    def test_response(self) -> None:
        """
        A response head is rebuilt as HTTP/1.1 with its status and reason,
        hop-by-hop headers dropped, framing headers kept; a 101 keeps
        Upgrade and Connection: upgrade.
        """
        r = ResponseParser()
        r.expect(b"GET")
        head = r.feed(b"HTTP/1.0 200 Fine\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n"
                      b"Content-Length: 0\r\nX-Y: z\r\n\r\n")[0]
        self.assertEqual(serialize_response_head(head, [(b"Via", b"pp")]),
                         b"HTTP/1.1 200 Fine\r\nContent-Length: 0\r\nX-Y: z\r\nVia: pp\r\n\r\n")
        r.expect(b"GET")
        head = r.feed(b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\n"
                      b"Upgrade: websocket\r\nSec-WebSocket-Accept: a\r\n\r\n")[0]
        self.assertEqual(serialize_response_head(head),
                         b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                         b"Sec-WebSocket-Accept: a\r\nConnection: upgrade\r\n\r\n")

    def test_decoded_for_http10(self) -> None:
        """
        For a decoded chunked body, dropping Transfer-Encoding gives a head
        a client reads until close.
        """
        r = ResponseParser(decode_chunked=True)
        r.expect(b"GET")
        head = r.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")[0]
        self.assertEqual(serialize_response_head(head, [(b"Connection", b"close")],
                                                 drop=[b"Transfer-Encoding"]),
                         b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")

    def test_hand_built_heads(self) -> None:
        """
        Heads built by hand (connection unknown) are serialised from their
        headers, Connection-listed names included.
        """
        head = RequestHead(b"GET", b"/", headers=[(b"Host", b"h"), (b"Connection", b"X-A"),
                                                  (b"X-A", b"1"), (b"X-B", b"2")])
        self.assertEqual(hop_by_hop_names(head) - hop_by_hop_names(RequestHead(b"GET", b"/")),
                         {b"x-a"})
        self.assertEqual(serialize_request_head(head), b"GET / HTTP/1.1\r\nHost: h\r\nX-B: 2\r\n\r\n")
        resp = ResponseHead(status=404, reason=b"Not Found", headers=[(b"Content-Length", b"0")])
        self.assertEqual(serialize_response_head(resp),
                         b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")

    def test_hop_by_hop_names(self) -> None:
        """
        hop_by_hop_names gives the standard names plus the Connection-listed
        ones, lower-cased, never the framing headers or Host.
        """
        head = RequestParser().feed(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: X-A, x-b , content-length,"
                                    b" Transfer-Encoding, Host\r\n\r\n")[0]
        self.assertEqual(hop_by_hop_names(head),
                         {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
                          b"upgrade", b"proxy-authenticate", b"proxy-authorization",
                          b"x-a", b"x-b"})

    def test_round_trip(self) -> None:
        """A serialised request head parses back to the same head."""
        raw = (b"PUT /x HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nExpect: 100-continue\r\n"
               b"X-List: a, b\r\n\r\n")
        head = RequestParser().feed(raw)[0]
        again = RequestParser().feed(serialize_request_head(head))[0]
        self.assertEqual(again, head)

    def test_status_response(self) -> None:
        """
        status_response builds a complete text/plain response with the
        right Content-Length and no Connection header, which parses back.
        """
        data = status_response(502, "Bad Gateway", "backend d\u00e9faillant\n",
                               [(b"Retry-After", b"1")])
        r = ResponseParser()
        r.expect(b"GET")
        ((head, body, ended),) = messages(r.feed(data))
        self.assertEqual((head.status, head.reason, ended), (502, b"Bad Gateway", True))
        self.assertEqual(body, "backend d\u00e9faillant\n".encode("utf-8"))
        self.assertEqual(head.header(b"content-type"), b"text/plain; charset=utf-8")
        self.assertEqual(head.header(b"retry-after"), b"1")
        self.assertIsNone(head.header(b"connection"))
        self.assertTrue(head.keep_alive)


# -- Property tests ------------------------------------------------------------

_TOKEN = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-!#$%&'*+.^_`|~"
_SPECIAL = {"content-length", "transfer-encoding", "connection", "upgrade", "expect", "host"}

names = st.text(_TOKEN, min_size=1, max_size=12).filter(lambda n: n.lower() not in _SPECIAL)
values = st.text("".join(map(chr, range(0x21, 0x7F))) + " \t", max_size=20).map(
    lambda v: v.strip(" \t").encode("ascii"))
headers = st.lists(st.tuples(names.map(lambda n: n.encode("ascii")), values), max_size=6)
payloads = st.binary(max_size=40)


@st.composite
def chunked_bodies(draw: Any) -> bytes:
    """A chunked encoding of random chunks, extensions and trailers."""
    out = b""
    for chunk in draw(st.lists(st.binary(min_size=1, max_size=30), max_size=4)):
        ext = draw(st.sampled_from([b"", b";a=b", b" ; x", b";q=\"s v\""]))
        hexsize = (b"%x" if draw(st.booleans()) else b"%X") % len(chunk)
        out += hexsize + ext + b"\r\n" + chunk + b"\r\n"
    out += b"0" + draw(st.sampled_from([b"", b";end"])) + b"\r\n"
    for name, value in draw(headers):
        out += name + b": " + value + b"\r\n"
    return out + b"\r\n"


@st.composite
def requests(draw: Any) -> Tuple[bytes, bytes]:
    """(raw request, its expected raw body bytes)."""
    method = draw(st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE", b"PATCH", b"X-CUSTOM"]))
    target = b"/" + draw(st.text("abc/?=&%-_.~0123456789", max_size=20)).encode("ascii")
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0"]))
    hs = draw(headers)
    conn = draw(st.sampled_from([b"", b"Connection: close\r\n", b"Connection: keep-alive\r\n"]))
    kind = draw(st.sampled_from(["none", "length", "chunked"] if version == b"HTTP/1.1"
                                else ["none", "length"]))
    body = b""
    framing = b""
    if kind == "length":
        body = draw(payloads)
        framing = b"Content-Length: %d\r\n" % len(body)
    elif kind == "chunked":
        body = draw(chunked_bodies())
        framing = b"Transfer-Encoding: chunked\r\n"
    pos = draw(st.integers(0, len(hs)))
    lines = [n + b": " + v for n, v in hs]
    lines.insert(pos, framing + conn + b"Host: h\r\n")
    head = method + b" " + target + b" " + version + b"\r\n" + b"".join(
        line if line.endswith(b"\r\n") or not line else line + b"\r\n" for line in lines)
    return head + b"\r\n" + body, body


@st.composite
def responses(draw: Any) -> Tuple[bytes, bytes, List[Tuple[bytes, bytes]]]:
    """
    (method, raw response (with any 1xx before it), [(expected raw body,
    expected decoded body)] per message).
    """
    method = draw(st.sampled_from([b"GET", b"HEAD", b"POST"]))
    raw = b""
    bodies = []
    for code in draw(st.lists(st.sampled_from([100, 102, 103]), max_size=2)):
        raw += b"HTTP/1.1 %d Info\r\nX-I: 1\r\n\r\n" % code
        bodies.append((b"", b""))
    status = draw(st.sampled_from([200, 201, 204, 304, 404, 500]))
    kind = draw(st.sampled_from(["length", "chunked"]))
    hs = draw(headers)
    head = b"HTTP/1.1 %d Whatever It Is\r\n" % status + b"".join(n + b": " + v + b"\r\n" for n, v in hs)
    no_body = method == b"HEAD" or status in (204, 304)
    if kind == "length":
        payload = draw(payloads)
        raw += head + b"Content-Length: %d\r\n\r\n" % len(payload)
        if not no_body:
            raw += payload
            bodies.append((payload, payload))
        else:
            bodies.append((b"", b""))
    else:
        raw += head + b"Transfer-Encoding: chunked\r\n\r\n"
        if no_body:
            bodies.append((b"", b""))
        else:
            chunks = draw(st.lists(st.binary(min_size=1, max_size=30), max_size=4))
            enc = b"".join(b"%x\r\n" % len(c) + c + b"\r\n" for c in chunks) + b"0\r\n\r\n"
            raw += enc
            bodies.append((enc, b"".join(chunks)))
    return method, raw, bodies


def cuts_for(data: Any, size: int) -> List[int]:
    return data.draw(st.lists(st.integers(0, size), max_size=12))


class PropertyTests(SynchronousTestCase):
    """Chunking never changes the outcome; garbage never breaks the parsers."""

    @settings(max_examples=200, deadline=None)
    @given(st.lists(requests(), min_size=1, max_size=4), st.data())
    def test_request_chunking(self, reqs: List[Tuple[bytes, bytes]], data: Any) -> None:
        """
        Any chunking of a valid stream of pipelined requests (random
        methods, headers, Content-Length and chunked bodies) yields the same
        heads and, per message, the same concatenated body bytes as one
        feed, and those are the bytes sent; every message ends.
        """
        stream = b"".join(r for r, _ in reqs)
        whole = RequestParser()
        expected = messages(whole.feed(stream))
        self.assertIsNone(whole.error)
        self.assertEqual([m[1] for m in expected], [b for _, b in reqs])
        self.assertTrue(all(m[2] for m in expected))
        cut = RequestParser()
        got = messages(feed_in(cut, stream, cuts_for(data, len(stream))))
        self.assertIsNone(cut.error)
        self.assertEqual(got, expected)
        self.assertEqual(cut.pending(), 0)

    @settings(max_examples=200, deadline=None)
    @given(st.lists(responses(), min_size=1, max_size=4), st.booleans(), st.booleans(), st.data())
    def test_response_chunking(self, resps: List[Tuple[bytes, bytes, List[Tuple[bytes, bytes]]]],
                               decode: bool, until_close: bool, data: Any) -> None:
        """
        Any chunking of a valid stream of responses, paired with expect()
        calls (HEAD, 1xx, 204, 304, Content-Length, chunked, optionally a
        last body read until close, optionally decoded), yields the same
        heads and per-message body bytes as one feed, equal to those sent.
        """
        stream = b"".join(raw for _, raw, _ in resps)
        want = [b[1] if decode else b[0] for _, _, bs in resps for b in bs]
        if until_close:
            tail = data.draw(payloads)
            stream += b"HTTP/1.1 200 OK\r\nX: y\r\n\r\n" + tail
            want.append(tail)
        results = []
        for cuts in ([], cuts_for(data, len(stream))):
            r = ResponseParser(decode_chunked=decode)
            for method, _, _ in resps:
                r.expect(method)
            if until_close:
                r.expect(b"GET")
            events = feed_in(r, stream, cuts)
            events += r.eof()
            self.assertIsNone(r.error)
            got = messages(events)
            self.assertEqual([m[1] for m in got], want)
            self.assertTrue(all(m[2] for m in got))
            results.append(got)
        self.assertEqual(results[0], results[1])

    @settings(max_examples=200, deadline=None)
    @given(st.binary(max_size=300), st.data())
    def test_random_bytes(self, garbage: bytes, data: Any) -> None:
        """
        Random bytes in random chunks, alone or after a valid request or
        response prefix, never raise and always return: events are heads,
        non-empty bytes or END, and once an error is set nothing more comes.
        """
        prefix = data.draw(st.sampled_from([
            b"", b"GET / HTTP/1.1\r\nHost: h\r\n", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\n", b"HTTP/1.1 200 OK\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"]))
        stream = prefix + garbage
        cuts = cuts_for(data, len(stream))
        for parser in (RequestParser(max_line=64, max_headers_size=128, max_headers=4),
                       ResponseParser(decode_chunked=data.draw(st.booleans())),
                       ResponseParser(max_line=64, max_headers_size=128)):
            if isinstance(parser, ResponseParser):
                for m in data.draw(st.lists(st.sampled_from([b"GET", b"HEAD", b"CONNECT"]),
                                            max_size=3)):
                    parser.expect(m)
            last = 0
            for cut in sorted(set(cuts)) + [len(stream)]:
                before = parser.error
                events = parser.feed(stream[last:cut])
                last = cut
                if before is not None:
                    self.assertEqual(events, [])
                for e in events:
                    self.assertTrue(e is END or isinstance(e, (RequestHead, ResponseHead))
                                    or (type(e) is bytes and e), e)
            self.assertIsInstance(parser.eof(), list)
            self.assertTrue(parser.error is None or isinstance(parser.error, HttpError))


class RawRelayTests(SynchronousTestCase):
    """
    A parsed head whose only hop-by-hop header is at most one plain
    Connection header is relayed from its received bytes: byte for byte what
    re-serialising it gives.
    """

    def both_ways(self, head_bytes: bytes) -> Tuple[bytes, bytes]:
        from poolproxy.codecs.http_parse import ResponseParser, serialize_response_head
        parser = ResponseParser()
        parser.expect(b"GET")
        head = parser.feed(head_bytes)[0]
        relayed = serialize_response_head(head, [(b"X-Extra", b"1")])
        head.raw = None  # as if built by hand: the general way
        return relayed, serialize_response_head(head, [(b"X-Extra", b"1")])

    def test_same_bytes_either_way(self) -> None:
        for head in (
            b"HTTP/1.1 200 OK\r\nServer: n\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nServer: n\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: keep-alive\r\n\r\n",
            # Connection naming another header, and Keep-Alive: the general way.
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\n"
            b"Content-Length: 0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n"
            b"Content-Length: 0\r\n\r\n",
        ):
            relayed, general = self.both_ways(head)
            self.assertEqual(relayed, general, head)
            self.assertNotIn(b"onnection", relayed)
            self.assertNotIn(b"X-Hop", relayed)
