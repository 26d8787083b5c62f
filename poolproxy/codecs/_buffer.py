"""
The bytes of an incomplete frame, held between feeds: one buffer for every
codec's framers (redis, memcached and http, both directions).

A framer parses what a feed brings; if it stops inside a frame it keeps the
rest with L{Unparsed._keep} and says how much more is needed before parsing
again is worth it.  The next feeds only append to a list of chunks until
that much has come, and the chunks are joined once: a large value arriving
in many small reads is copied once, not at every read.

What a framer waits for:
  - C{need > 0}: at least C{need} bytes held (a data block of known length);
  - C{need < 0}: new bytes that may end what is awaited (a newline, for a
    line; L{Unparsed._may_end} says otherwise: the end of an http head), or more than
    C{-need} bytes held: a line or head at most C{-need} bytes long (past
    that the parser sees the bytes again and reports it as too long);
  - C{need == 0}: any new byte.
"""

from __future__ import annotations

from typing import Callable, List, Optional


class Unparsed:
    """
    A mixin for framers: C{_chunks} hold the unparsed bytes, C{_have} their
    total length and C{_need} what to wait for (see the module docstring).
    The framer's C{__init__} calls L{_init_unparsed}; its C{feed} starts with
    L{_take} when something is held and ends with L{_keep} when something is
    left.
    """

    _chunks: List[bytes]
    _have: int
    _need: int
    #: Whether C{data}, come while a line is awaited (C{need < 0}) and holding
    #: a newline, may end it, given C{have} bytes held with it: L{None} for
    #: yes (a line); a framer that awaits more than a newline sets a method
    #: (the http parsers: a head ends with an empty line).
    _may_end: Optional[Callable[[bytes, int], bool]] = None

    def _init_unparsed(self) -> None:
        self._chunks = []
        self._have = 0
        self._need = 0

    def _take(self, data: bytes) -> Optional[bytes]:
        """
        With something held (the caller checks C{_have}: on the hot path
        nothing is, and the feed's bytes are parsed as they are), add
        C{data}: the bytes to parse now, or L{None} if nothing can be
        complete yet.
        """
        have = self._have + len(data)
        if have < self._need:  # a block of known length, not all here yet
            self._chunks.append(data)
            self._have = have
            return None
        # A line, not too long yet: only a newline can end it (what a framer's
        # _may_end awaits ends with one too), so most feeds stop at `in`.
        need = self._need
        if need < 0 and have <= -need and (10 not in data or (
                self._may_end is not None and not self._may_end(data, have))):
            self._chunks.append(data)
            self._have = have
            return None
        self._chunks.append(data)
        buf = b"".join(self._chunks)
        self._chunks = []
        self._have = 0
        return buf

    def _keep(self, buf: bytes, pos: int, need: int) -> None:
        """
        Hold C{buf[pos:]}, which is not empty, until C{need} is met.  (The
        caller checks that something is left: on the hot path nothing is,
        and a method call per feed would show.)
        """
        self._chunks = [buf[pos:] if pos else buf]
        self._have = len(buf) - pos
        self._need = need

    def _last(self, n: int) -> bytes:
        """The last C{n} bytes held (fewer if fewer are held)."""
        chunks = self._chunks
        tail = chunks[-1][-n:]
        i = len(chunks) - 2
        while len(tail) < n and i >= 0:
            tail = chunks[i][len(tail) - n:] + tail
            i -= 1
        return tail

    def _drop(self) -> None:
        """Forget what is held (the stream is broken)."""
        self._chunks = []
        self._have = 0
        self._need = 0


__all__ = ["Unparsed"]
