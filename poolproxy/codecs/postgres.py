"""
The PostgreSQL wire protocol (version 3.0 and 3.2): what the transaction
pooling mode frames, builds and reads.  Pure: bytes in, messages out.

After start-up every message is a type byte, an Int32 length (counting
itself, not the type byte) and a body.  Type bytes depend on the direction
(C{D} is Describe from a client, DataRow from a server), so the two sides
have their own readers.  Start-up packets have no type byte: an Int32
length, an Int32 code (the protocol version, or SSLRequest, GSSENCRequest,
CancelRequest) and a body.

This module holds the wire format and the codec; the pieces of transaction
pooling that are protocol logic (pairing replies with what was sent, the
server login conversation, prepared statements) are their own modules
beside it: L{poolproxy.codecs.postgres_replies},
L{poolproxy.codecs.postgres_login}, L{poolproxy.codecs.postgres_statements}.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from zope.interface import implementer

from poolproxy.codec import BaseCodec, FramingError, ITransactionCodec

_INT32 = struct.Struct("!I")
_INT32_PAIR = struct.Struct("!II")
_HEADER = struct.Struct("!cI")

#: Protocol codes of start-up packets.
PROTOCOL_3_0 = 196608
PROTOCOL_3_2 = 196610
SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104
CANCEL_REQUEST = 80877102
#: PostgreSQL's own bound on a start-up packet (MAX_STARTUP_PACKET_LENGTH).
MAX_STARTUP_PACKET = 10000

#: Authentication request codes (the Int32 of an C{R} message).
AUTH_OK = 0
AUTH_CLEARTEXT = 3
AUTH_MD5 = 5
AUTH_SASL = 10
AUTH_SASL_CONTINUE = 11
AUTH_SASL_FINAL = 12

#: SQLSTATEs of the errors the proxy makes, by L{poolproxy.codec.ERROR_KINDS}
#: kind: not 08P01 for everything (PgBouncer's send_pooler_error).
SQLSTATES: Dict[str, bytes] = {
    "overloaded": b"53300",   # too_many_connections
    "unavailable": b"57P03",  # cannot_connect_now
    "timeout": b"57014",      # query_canceled
    "too_large": b"54000",    # program_limit_exceeded
    "malformed": b"08P01",    # protocol_violation
    "crossslot": b"0A000",    # feature_not_supported
}
INVALID_PASSWORD = b"28P01"
INVALID_AUTHORIZATION = b"28000"
UNKNOWN_DATABASE = b"3D000"
ADMIN_SHUTDOWN = b"57P01"
PROTOCOL_VIOLATION = b"08P01"
FEATURE_NOT_SUPPORTED = b"0A000"
DUPLICATE_STATEMENT = b"42P05"
PROGRAM_LIMIT_EXCEEDED = b"54000"


# -- building messages ---------------------------------------------------------

def message(kind: bytes, body: bytes = b"") -> bytes:
    """A typed message: C{kind} (one byte), the length, C{body}."""
    return kind + _INT32.pack(len(body) + 4) + body


def cstring(text: bytes) -> bytes:
    return text + b"\0"


def error_response(sqlstate: bytes, text: str, severity: bytes = b"ERROR",
                   detail: Optional[str] = None, hint: Optional[str] = None) -> bytes:
    """
    An ErrorResponse with the fields every client reads: severity (S, and
    the untranslated V), SQLSTATE (C), message (M), and D/H when given.
    """
    body = (b"S" + severity + b"\0V" + severity + b"\0C" + sqlstate + b"\0M"
            + text.encode("utf-8", "replace") + b"\0")
    if detail:
        body += b"D" + detail.encode("utf-8", "replace") + b"\0"
    if hint:
        body += b"H" + hint.encode("utf-8", "replace") + b"\0"
    return message(b"E", body + b"\0")


def ready_for_query(status: bytes = b"I") -> bytes:
    return b"Z\x00\x00\x00\x05" + status


def authentication(code: int, data: bytes = b"") -> bytes:
    return message(b"R", _INT32.pack(code) + data)


def auth_sasl(mechanisms: Tuple[str, ...]) -> bytes:
    names = b"".join(m.encode("ascii") + b"\0" for m in mechanisms)
    return authentication(AUTH_SASL, names + b"\0")


def parameter_status(name: bytes, value: bytes) -> bytes:
    return message(b"S", name + b"\0" + value + b"\0")


def backend_key_data(pid: int, key: bytes) -> bytes:
    return message(b"K", _INT32.pack(pid) + key)


def query(sql: bytes) -> bytes:
    return message(b"Q", sql + b"\0")


def ssl_request() -> bytes:
    """An SSLRequest: asks the server for TLS, answered with one byte, S or N."""
    return _INT32_PAIR.pack(8, SSL_REQUEST)


def password_message(data: bytes) -> bytes:
    return message(b"p", data)


def sasl_initial_response(mechanism: bytes, data: bytes) -> bytes:
    return message(b"p", mechanism + b"\0" + _INT32.pack(len(data)) + data)


def startup_message(params: Dict[bytes, bytes], version: int = PROTOCOL_3_0) -> bytes:
    body = _INT32.pack(version) + b"".join(k + b"\0" + v + b"\0" for k, v in params.items())
    body += b"\0"
    return _INT32.pack(len(body) + 4) + body


def cancel_request(pid: int, key: bytes) -> bytes:
    body = _INT32_PAIR.pack(CANCEL_REQUEST, pid) + key
    return _INT32.pack(len(body) + 4) + body


TERMINATE = b"X\x00\x00\x00\x04"
SYNC = b"S\x00\x00\x00\x04"
PARSE_COMPLETE = b"1\x00\x00\x00\x04"
AUTHENTICATION_OK = b"R\x00\x00\x00\x08\x00\x00\x00\x00"
READY_IDLE = b"Z\x00\x00\x00\x05I"
BIND_COMPLETE = b"2\x00\x00\x00\x04"
CLOSE_COMPLETE = b"3\x00\x00\x00\x04"


# -- reading messages ------------------------------------------------------------

def int32(data: bytes, offset: int = 0) -> int:
    value: int = _INT32.unpack_from(data, offset)[0]
    return value


def error_fields(body: bytes) -> Dict[str, str]:
    """The fields of an ErrorResponse or NoticeResponse body, by field letter."""
    fields: Dict[str, str] = {}
    for part in body.split(b"\0"):
        if part:
            fields[chr(part[0])] = part[1:].decode("utf-8", "replace")
    return fields


def error_sqlstate(body: bytes) -> bytes:
    """The SQLSTATE of an ErrorResponse body, or C{b""}."""
    start = body.find(b"\0C")
    if start < 0:
        if body.startswith(b"C"):
            return body[1:6]
        return b""
    return body[start + 2:start + 7]


class MessageReader:
    """
    Cuts a byte stream of typed messages into (type, body) pairs: for the
    conversations before pooling starts (login, authentication), where every
    message is read whole.

    @ivar error: L{None}, or the L{FramingError} that broke the stream.
    """

    def __init__(self, max_size: int = 1024 * 1024) -> None:
        self.max_size = max_size
        self._buffer = b""
        self.error: Optional[FramingError] = None

    def feed(self, data: bytes) -> List[Tuple[bytes, bytes]]:
        if self.error is not None:
            return []
        buffer = self._buffer + data if self._buffer else data
        out: List[Tuple[bytes, bytes]] = []
        pos, end = 0, len(buffer)
        while end - pos >= 5:
            length = _INT32.unpack_from(buffer, pos + 1)[0]
            if length < 4 or length > self.max_size:
                self.error = FramingError(
                    "malformed" if length < 4 else "too_large",
                    f"message length {length} out of bounds")
                self._buffer = b""
                return out
            stop = pos + 1 + length
            if stop > end:
                break
            out.append((buffer[pos:pos + 1], buffer[pos + 5:stop]))
            pos = stop
        self._buffer = buffer[pos:]
        return out

    def pending(self) -> int:
        return len(self._buffer)

    def take_rest(self) -> bytes:
        """The bytes not yet framed, handed over to the next reader."""
        rest, self._buffer = self._buffer, b""
        return rest


# -- start-up packets --------------------------------------------------------------

@dataclass
class Startup:
    """
    One start-up packet.

    @ivar code: the protocol version (L{PROTOCOL_3_0}, L{PROTOCOL_3_2}...) or
        L{SSL_REQUEST}, L{GSSENC_REQUEST}, L{CANCEL_REQUEST}.
    @ivar params: a StartupMessage's parameters (C{user}, C{database}...).
    @ivar pid: a CancelRequest's process id; C{key} its secret key.
    """

    code: int
    params: Dict[bytes, bytes] = field(default_factory=dict)
    pid: int = 0
    key: bytes = b""

    @property
    def is_startup(self) -> bool:
        return self.code >> 16 == 3

    @property
    def user(self) -> bytes:
        return self.params.get(b"user", b"")

    @property
    def database(self) -> bytes:
        return self.params.get(b"database") or self.user


def read_startup(buffer: bytes) -> Tuple[Optional[Startup], int]:
    """
    The start-up packet at the head of C{buffer}, and how many bytes it
    took; (L{None}, 0) while it is incomplete.

    @raise FramingError: not a start-up packet PostgreSQL would take.
    """
    if len(buffer) < 8:
        return None, 0
    length, code = _INT32_PAIR.unpack_from(buffer)
    if length < 8 or length > MAX_STARTUP_PACKET:
        raise FramingError("malformed", f"invalid start-up packet length {length}")
    if len(buffer) < length:
        return None, 0
    body = buffer[8:length]
    if code in (SSL_REQUEST, GSSENC_REQUEST):
        if body:
            raise FramingError("malformed", "SSL or GSS request with a body")
        return Startup(code), length
    if code == CANCEL_REQUEST:
        if not 8 <= len(body) <= 260:
            raise FramingError("malformed", "invalid cancel request length")
        return Startup(code, pid=int32(body), key=body[4:]), length
    if code >> 16 != 3:
        raise FramingError("malformed", f"unsupported frontend protocol "
                           f"{code >> 16}.{code & 0xffff}: server supports 3.0 to 3.2")
    parts = body.split(b"\0")
    # name, value, name, value, ..., "" (the terminator), "" (after it).
    if len(parts) < 2 or parts[-1] != b"" or parts[-2] != b"" or len(parts) % 2:
        raise FramingError("malformed", "invalid start-up packet layout")
    params = dict(zip(parts[0:-2:2], parts[1:-2:2]))
    if b"user" not in params or not params[b"user"]:
        raise FramingError("malformed", "no PostgreSQL user name specified in start-up packet")
    return Startup(code, params), length


# -- the codec ---------------------------------------------------------------------

@implementer(ITransactionCodec)
class PostgresCodec(BaseCodec):
    """
    PostgreSQL, pooled by transaction (or by session): see
    L{poolproxy.proxy.transaction}.
    """

    name = "postgres"
    mode = "transaction"
    #: A Bind carries its parameters: PostgreSQL takes messages up to 1 GB;
    #: 64 MiB unless max_request_size says otherwise.
    default_max_request_size = 64 * 1024 * 1024

    def error_reply(self, kind: str, message: str) -> bytes:
        return error_response(SQLSTATES.get(kind, PROTOCOL_VIOLATION), message)

    def fatal_reply(self, kind: str, message: str) -> bytes:
        """The error that ends a client's connection (FATAL severity)."""
        return error_response(SQLSTATES.get(kind, PROTOCOL_VIOLATION), message, b"FATAL")


codec = PostgresCodec()

__all__ = [
    "codec", "PostgresCodec", "MessageReader", "Startup", "read_startup", "message", "error_response",
    "ready_for_query", "authentication", "auth_sasl", "parameter_status", "backend_key_data",
    "query", "password_message", "sasl_initial_response", "startup_message", "cancel_request",
    "error_fields", "error_sqlstate", "SQLSTATES",
    "ssl_request",
]
