"""
Pairing a PostgreSQL server connection's replies with what was sent on it.

Transaction pooling gives a server connection back to the pool when the
*response* says the transaction is over: the last ReadyForQuery said C{I}
and everything sent on it has been answered.  L{Replies} knows both: the
proxy tells it every message it sends (L{Replies.sent}) and feeds it every
byte the server sends (L{Replies.feed}), which it passes on, in order,
with the proxy's own replies put where they belong and the replies to
messages the proxy sent for itself taken out.

What each message gets back (PostgreSQL's protocol-flow.html):

    Parse P -> ParseComplete 1      Bind B -> BindComplete 2
    Describe D -> [ParameterDescription t] RowDescription T | NoData n
    Execute E -> DataRow* then CommandComplete C | PortalSuspended s | EmptyQuery I
    Close C -> CloseComplete 3      Sync S, Query Q, FunctionCall F -> ... ReadyForQuery Z
    Flush H -> nothing

After an ErrorResponse to an extended-query message the server discards
every message until Sync: those get no reply, and the proxy's own replies
among them are dropped too (a client must not see a ParseComplete after
the error that skipped its Parse).  NoticeResponse, NotificationResponse
and ParameterStatus may come at any time and belong to nothing.  In
copy-in mode the server ignores Sync and Flush.

DataRow and CopyData messages are passed on as they arrive, without
waiting for their end; every other message is read whole first.
"""

from __future__ import annotations

import struct
from collections import deque
from typing import Any, Callable, Deque, Dict, List, Optional

from zope.interface import implementer

from poolproxy.codec import FramingError, ITransactionReplies
from poolproxy.codecs.postgres import error_sqlstate

_INT32 = struct.Struct("!I")

# Request kinds, by the type byte of the message sent.
PARSE, BIND, DESCRIBE, EXECUTE, CLOSE, SYNC, QUERY, FUNCTION = b"PBDECSQF"
#: A message the proxy sent for itself: its replies are not the client's.
SWALLOW = 0x100
#: The kinds answered by ReadyForQuery.
_SYNCS = frozenset((SYNC, QUERY, FUNCTION))
# Reply types.
_READY = ord("Z")
_ERROR = ord("E")
_DATA_ROW = ord("D")
_COPY_DATA = ord("d")
_COPY_IN = ord("G")
_COPY_OUT = ord("H")
_COPY_BOTH = ord("W")
_PARAMETER = ord("S")
_ASYNC = frozenset(b"NAS")
#: The reply that ends each extended-query request's answer.
_ENDS = {
    PARSE: frozenset(b"1"), BIND: frozenset(b"2"), CLOSE: frozenset(b"3"),
    DESCRIBE: frozenset(b"Tn"), EXECUTE: frozenset(b"CsI"),
}
#: Messages streamed as they come rather than read whole.
_STREAMED = frozenset((_DATA_ROW, _COPY_DATA))


class ParseSent:
    """
    A Parse of a named statement the proxy manages: if it fails,
    C{on_failed(name)} is told, so that the statement is not taken for
    prepared on the connection; if it works, C{on_parsed(name)}.
    """

    __slots__ = ("kind", "name", "on_failed", "on_parsed")

    def __init__(self, name: bytes, swallow: bool, on_failed: Callable[[bytes], None],
                 on_parsed: Optional[Callable[[bytes], None]] = None) -> None:
        self.kind = PARSE | (SWALLOW if swallow else 0)
        self.name = name
        self.on_failed = on_failed
        self.on_parsed = on_parsed


@implementer(ITransactionReplies)
class Replies:
    """
    One server connection's replies.

    @ivar status: what the last ReadyForQuery said: C{b"I"} idle, C{b"T"}
        in a transaction block, C{b"E"} in a failed one.
    @ivar copy_in: the server is in copy-in mode (it ignores Sync and
        Flush until the client's CopyDone or CopyFail).
    @ivar parameters: the server's parameters, from ParameterStatus.
    @ivar error: L{None}, or the L{FramingError} that broke the stream.
    @ivar errors: ErrorResponses passed on since the counter was reset.
    @ivar on_error: L{None}, or called with the SQLSTATE and the body of
        each ErrorResponse that answers a client's extended-query message;
        if it returns true, the error and the rest of its batch, up to and
        with its ReadyForQuery, are not passed on (the proxy retries it).
    """

    def __init__(self, max_message: int = 64 * 1024 * 1024) -> None:
        self.max_message = max_message
        # What is owed: an int (a request kind, maybe | SWALLOW), a
        # ParseSent, or bytes (the proxy's own reply, written in its turn).
        self._owed: Deque[Any] = deque()
        self.status = b"I"
        self.copy_in = False
        # After an extended-query error: what is sent is skipped until Sync.
        self._discarding = False
        self.parameters: Dict[bytes, bytes] = {}
        self.error: Optional[FramingError] = None
        self._buffer = b""
        # Bytes still to come of a streamed message, and whether to pass them.
        self._streaming = 0
        self._stream_out = True
        self.on_error: Optional[Callable[[bytes, bytes], bool]] = None
        # An error the proxy takes back: drop what comes up to its ReadyForQuery.
        self._hiding = False

    # -- what was sent -----------------------------------------------------------

    @property
    def idle(self) -> bool:
        """Between transactions: the last ReadyForQuery said I, nothing is owed."""
        return not self._owed and self.status == b"I" and not self.copy_in

    @property
    def owed(self) -> int:
        """Requests sent whose answer has not ended."""
        return len(self._owed)

    @property
    def running(self) -> bool:
        """Whether anything sent is still being answered (a cancel may hit it)."""
        return bool(self._owed)

    def sent(self, kind: int) -> None:
        """A message of type C{kind} (an int, maybe | L{SWALLOW}) went to the server."""
        if kind & 0xff == SYNC:
            if self.copy_in:
                return  # ignored by a server in copy-in mode
            self._discarding = False
        elif self._discarding:
            return
        self._owed.append(kind)

    def sent_parse(self, parse: ParseSent) -> None:
        if not self._discarding:
            self._owed.append(parse)

    def local(self, reply: bytes) -> None:
        """
        The proxy answers a message itself with C{reply}: written once what
        was sent before it has been answered (dropped if an error skips it).
        """
        if not self._discarding:
            self._owed.append(reply)

    def copy_ended(self) -> None:
        """The client sent CopyDone or CopyFail."""
        self.copy_in = False

    def take_locals(self) -> bytes:
        """The proxy's own replies now at the head (nothing owed before them)."""
        owed = self._owed
        out = b""
        while owed and type(owed[0]) is bytes:
            out += owed.popleft()
        return out

    # -- what came back --------------------------------------------------------------

    def feed(self, data: bytes) -> bytes:
        """
        Add bytes from the server; return what the client is to get of
        them, in order, with the proxy's replies in their place.
        """
        if self.error is not None:
            return b""
        out: List[bytes] = []
        if self._streaming:
            n = self._streaming
            if n >= len(data):
                self._streaming = n - len(data)
                return data if self._stream_out else b""
            if self._stream_out:
                out.append(data[:n])
            data = data[n:]
            self._streaming = 0
        buffer = self._buffer + data if self._buffer else data
        owed = self._owed
        pos, end = 0, len(buffer)
        start = 0  # of the bytes not yet put in out
        while end - pos >= 5:
            kind = buffer[pos]
            length = _INT32.unpack_from(buffer, pos + 1)[0]
            stop = pos + 1 + length
            if length < 4 or length > self.max_message:
                self.error = FramingError("malformed", f"server message length {length}")
                self._buffer = b""
                return b""
            head = owed[0] if owed else None
            head_kind = head if type(head) is int else getattr(head, "kind", 0)
            if stop > end:
                if kind in _STREAMED:
                    # Pass on what there is; the rest follows as it comes.
                    keep = not head_kind & SWALLOW
                    if not keep:
                        if pos > start:
                            out.append(buffer[start:pos])
                        start = end
                    self._streaming = stop - end
                    self._stream_out = keep
                    pos = end
                break
            # A whole message: who is it for?
            swallow = head_kind & SWALLOW
            if kind in _ASYNC:
                if kind == _PARAMETER:
                    self._parameter(buffer[pos + 5:stop])
                swallow = 0
            elif kind == _READY:
                self.status = buffer[pos + 5:pos + 6]
                if head is not None and head_kind & 0xff in _SYNCS:
                    owed.popleft()
                else:
                    self.error = FramingError("malformed", "ReadyForQuery owed to no Sync")
                    self._buffer = b""
                    return b""
            elif kind == _ERROR:
                swallow = self._error(head, head_kind, buffer[pos + 5:stop])
            elif kind in (_COPY_IN, _COPY_OUT, _COPY_BOTH):
                self._copy(kind)
            else:
                ends = _ENDS.get(head_kind & 0xff)
                if ends is not None and kind in ends:
                    owed.popleft()
                    if type(head) is ParseSent and head.on_parsed is not None:
                        head.on_parsed(head.name)
            if self._hiding:
                swallow = SWALLOW
                if kind == _READY:
                    self._hiding = False
            if swallow:
                if pos > start:
                    out.append(buffer[start:pos])
                start = stop
            pos = stop
            if owed and type(owed[0]) is bytes:
                # The proxy's own replies whose turn it is now.
                if pos > start:
                    out.append(buffer[start:pos])
                start = pos
                out.append(self.take_locals())
        if pos > start:
            out.append(buffer[start:pos])
        self._buffer = buffer[pos:] if pos < end else b""
        if not out:
            return b""
        return out[0] if len(out) == 1 else b"".join(out)

    def _error(self, head: Any, head_kind: int, body: bytes) -> int:
        """
        An ErrorResponse: whose it is, and what it ends.  Returns whether
        the client must not see it.
        """
        owed = self._owed
        if head is None:
            return 0  # a FATAL from an idle connection: the server is closing it
        base = head_kind & 0xff
        swallow = head_kind & SWALLOW
        if base in _SYNCS:
            # Simple Query, FunctionCall: its ReadyForQuery still follows.
            return swallow
        # An extended-query message failed: the server skips to the Sync.
        if isinstance(head, ParseSent):
            head.on_failed(head.name)
        owed.popleft()
        while owed:
            entry = owed[0]
            kind = entry if type(entry) is int else getattr(entry, "kind", None)
            if kind is not None and kind & 0xff == SYNC:
                break
            owed.popleft()
            if isinstance(entry, ParseSent):
                entry.on_failed(entry.name)
        else:
            self._discarding = True
        if self.on_error is not None and self.on_error(error_sqlstate(body), body):
            self._hiding = True
            return SWALLOW
        # A Parse the proxy added for a statement the client uses fails as
        # the client's own would have: it sees the error.
        return 0

    def _copy(self, kind: int) -> None:
        if kind == _COPY_IN or kind == _COPY_BOTH:
            self.copy_in = True
            # What was sent after the command that started the copy reaches
            # a server in copy-in mode: its Syncs and Flushes are ignored.
            owed = self._owed
            if owed:
                head = owed.popleft()
                owed.clear()
                owed.append(head)

    def _parameter(self, body: bytes) -> None:
        name, _, rest = body.partition(b"\0")
        self.parameters[name] = rest.rstrip(b"\0")


__all__ = ["Replies", "ParseSent", "SWALLOW"]
