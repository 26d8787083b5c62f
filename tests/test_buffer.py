"""
The incomplete-frame buffer every codec's framers share
(L{poolproxy.codecs._buffer.Unparsed}): what it holds, when it gives the
bytes back, and, through the http parser, that a head held across feeds is
refused as soon as a bare LF comes and parsed once its empty line comes.
"""

from __future__ import annotations

from typing import Any, List

from hypothesis import given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from poolproxy.codecs._buffer import Unparsed
from poolproxy.codecs.http_parse import RequestHead, RequestParser


class Held(Unparsed):
    def __init__(self) -> None:
        self._init_unparsed()


def holding(data: bytes, need: int) -> Held:
    held = Held()
    held._keep(data, 0, need)
    return held


class UnparsedTests(SynchronousTestCase):
    def test_count(self) -> None:
        """need > 0: held until that many bytes, then joined once, and nothing is held."""
        held = holding(b"ab", 6)
        self.assertIsNone(held._take(b"cd"))
        self.assertEqual(held._have, 4)
        self.assertEqual(held._take(b"efg"), b"abcdefg")
        self.assertEqual((held._have, held._chunks), (0, []))

    def test_line(self) -> None:
        """need < 0: held until a newline comes, or more than -need bytes are held."""
        held = holding(b"GET k", -8)
        self.assertIsNone(held._take(b"e"))
        self.assertEqual(held._take(b"y\r\n"), b"GET key\r\n")
        held = holding(b"GET k", -8)
        self.assertIsNone(held._take(b"ey"))
        self.assertEqual(held._take(b"12"), b"GET key12")  # 9 bytes: past the line's limit

    def test_any_byte(self) -> None:
        """need == 0: any feed gives everything back."""
        held = holding(b"\r", 0)
        self.assertEqual(held._take(b"\n"), b"\r\n")
        self.assertEqual((held._have, held._chunks), (0, []))

    def test_last(self) -> None:
        """_last(n) reads across the chunks held."""
        held = holding(b"xyz", 100)
        held._take(b"a")
        held._take(b"b")
        self.assertEqual((held._last(2), held._last(4), held._last(9)), (b"ab", b"yzab", b"xyzab"))

    def test_drop(self) -> None:
        held = holding(b"abc", 10)
        held._drop()
        self.assertEqual((held._have, held._chunks, held._need), (0, [], 0))


HEAD = (b"GET /a HTTP/1.1\r\nHost: example\r\n" + b"".join(
    b"X-%d: %s\r\n" % (i, b"v" * (i * 7)) for i in range(12)) + b"\r\n")


def cut(data: bytes, cuts: List[int]) -> List[bytes]:
    points = sorted(set(c for c in cuts if 0 < c < len(data)))
    return [data[a:b] for a, b in zip([0] + points, points + [len(data)])]


class HeadsHeldTests(SynchronousTestCase):
    def test_limits_when_crossed(self) -> None:
        """
        A head held across feeds is refused by the feed that takes it past a
        limit: 414 for a start line over max_line (no newline ever comes),
        431 for a header section over its size, sent a line at a time.
        """
        parser = RequestParser(max_line=100, max_headers_size=1000)
        line = b"GET /" + b"a" * 200
        for i in range(0, len(line), 10):
            parser.feed(line[i:i + 10])
            if i + 10 <= 101:
                self.assertIsNone(parser.error, i)
        self.assertEqual(parser.error.status, 414)

        parser = RequestParser(max_line=100, max_headers_size=1000)
        parser.feed(b"GET / HTTP/1.1\r\n")
        sent = 0
        while parser.error is None and sent < 5000:
            parser.feed(b"X-Long: " + b"v" * 40 + b"\r\n")
            sent += 50
        self.assertEqual(parser.error.status, 431)
        self.assertLessEqual(sent, 100 + 1000 + 4 + 50)

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.integers(0, len(HEAD)), max_size=40))
    def test_head_in_pieces(self, cuts: List[int]) -> None:
        """However a head is cut, it comes out once, after its last piece, whole."""
        parser = RequestParser()
        pieces = cut(HEAD, cuts)
        for piece in pieces[:-1]:
            self.assertEqual(parser.feed(piece), [])
        events = parser.feed(pieces[-1])
        self.assertIsInstance(events[0], RequestHead)
        self.assertEqual(events[0].raw, HEAD[:-4])  # the head without its empty line
        self.assertEqual(parser.pending(), 0)

    @settings(max_examples=300, deadline=None)
    @given(st.integers(20, len(HEAD) - 3), st.lists(st.integers(0, len(HEAD)), max_size=40))
    def test_bare_lf_refused_when_it_comes(self, at: int, cuts: List[int]) -> None:
        """
        A bare LF anywhere in a head held across feeds is refused (400) by
        the feed that brings it, not later; no feed before it errs.
        """
        head = HEAD[:at] + b"\n" + HEAD[at:]
        if head[at - 1:at] == b"\r":
            head = head[:at - 1] + b"Z" + head[at:]  # the LF is bare
        parser = RequestParser()
        seen = 0
        for piece in cut(head, cuts):
            parser.feed(piece)
            seen += len(piece)
            if seen <= at:
                self.assertIsNone(parser.error, (seen, at))
            else:
                error: Any = parser.error
                self.assertIsNotNone(error, (seen, at))
                self.assertEqual(error.status, 400)
                break
