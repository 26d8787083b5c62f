"""
The codec seam: what a protocol tells the proxy, and nothing about I/O.

A codec is pure.  Bytes go in; frames, responses and decisions come out; it
never sees a transport, a reactor or a clock, so it is tested with plain
bytes.  The proxy owns every connection and every timer.

A codec provides L{ICodec} and is found as a Twisted plugin (see
L{poolproxy.plugins}); C{--protocol NAME} picks it by C{name}.  What only
some codecs can do is declared by interfaces of its own, which the proxy
asks with C{providedBy}: L{IShardedCodec} (split multi-key requests across
shards), L{IVariantCodec} (connection variants, e.g. RESP3), L{IProbingCodec}
(check a health probe's answer), and, on the request side,
L{IShardAwareFramer}.  L{BaseCodec} gives the defaults of a codec with no
connection setup and no probe.

Multiplexed codecs (redis, memcached) work with two framers:
  - an L{IRequestFramer} per client connection cuts the client's byte stream
    into L{Frame}s; each frame says how many responses it expects, its routing
    key, and whether it needs connection state (L{PIN}, L{UNPIN}, ...);
  - an L{IResponseFramer} per backend connection cuts the backend's byte stream
    into complete responses, which the proxy pairs, oldest first, with the
    frames it sent on that connection.
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Tuple

from zope.interface import Attribute, Interface, implementer

# -- Frame flags ---------------------------------------------------------------

#: Safe to send again if the connection died before any response byte arrived
#: (reads, idempotent commands).
RETRY_SAFE = 1
#: Needs or creates backend connection state (MULTI, SELECT, WATCH, a blocking
#: command...): it must go on the client's own pinned connection, which the
#: proxy leases for it if it has none yet.
PIN = 2
#: Once this frame's response has arrived, the client's connection state is
#: clear again: its pinned connection may go back to the pool.
UNPIN = 4
#: From this frame on, backend responses are no longer one per request
#: (SUBSCRIBE, MONITOR): the pinned connection passes bytes through unchanged
#: until the session ends.
PASSTHROUGH = 8
#: The proxy answers this frame itself with C{Frame.reply}; nothing is sent.
LOCAL = 16
#: Close the client connection once the replies so far are written (QUIT).
CLOSE = 32
#: This frame undoes the connection's setup (redis RESET drops AUTH and
#: SELECT): when the client's pinned connection is given up after it, it is
#: closed instead of going back to the pool.
DIRTY = 64
#: From this frame on the client needs backend connections of another
#: variant, named by C{Frame.expect} (redis: the RESP version chosen with
#: HELLO).  The proxy moves the client, once its earlier replies are in, to
#: shared connections switched to that variant with the codec's
#: L{IVariantCodec.variant_setup} frames; L{None} is the pool's own.  A codec
#: that uses VARIANT must provide L{IVariantCodec}.
VARIANT = 128
#: May wait at the backend for data that is not there yet (redis BLPOP, XREAD
#: BLOCK, WAIT): its reply is due within L{IBlockingCodec.wait_time} plus the
#: request timeout, and one that times out is the client's wait, not a
#: failure of the backend.  Goes with L{PIN}.
BLOCKING = 256
#: A L{LOCAL} frame that refuses the request: by the command policy (a
#: denied or unknown command), counted by C{Frame.key}, the command's name
#: (or C{b"(unknown)"}, which keeps the count's labels bounded); with no
#: key, by the listener's hooks (L{poolproxy.hooks}), counted as refused only.
REFUSED = 512
#: A L{LOCAL} frame that answers a failed authentication: counted, and
#: summarised in the log.
AUTH_FAILED = 1024
#: The client gave credentials (redis AUTH, HELLO AUTH) that an
#: C{authenticate} hook decides on: only from a framer made with
#: C{authenticate_hook} set in its options.  The framer has taken them as
#: good and queued them in its C{credentials}, (user, password, whether
#: the password file matched or L{None} without one); RESET, which drops
#: them, is flagged too, with L{None} queued.  The proxy answers
#: L{IHookableFramer.refused_reply} for credentials the hook refuses, and
#: once none are left to decide calls C{set_authenticated} with what the
#: hook decided.
AUTHENTICATE = 2048

#: Kinds of errors the proxy itself answers with, via L{ICodec.error_reply}:
#: no admission (C{overloaded}), no backend connection or a broken one
#: (C{unavailable}), no answer in time (C{timeout}), a request over the size
#: limit (C{too_large}) or not in the protocol (C{malformed}), and a request
#: whose keys live on several backends of a sharded cluster that cannot be
#: split (C{crossslot}, see L{IShardedCodec}); a request an C{allow} hook
#: refused (C{denied}), and one sent by a client that is not authenticated
#: (C{unauthenticated}).
ERROR_KINDS = ("overloaded", "unavailable", "timeout", "too_large", "malformed", "crossslot",
               "denied", "unauthenticated")


class Frame:
    """
    One request, as cut from a client's byte stream.

    @ivar data: the exact bytes to send to the backend (usually a slice of
        what the client sent).
    @ivar replies: responses the backend will send for it: 1, or 0 for a
        request that asks for none (memcached C{noreply}).
    @ivar key: the routing key, or L{None}.
    @ivar flags: a bitwise OR of L{RETRY_SAFE}, L{PIN}, L{UNPIN},
        L{PASSTHROUGH}, L{LOCAL}, L{CLOSE}.
    @ivar expect: what kind of response to expect, for codecs whose response
        framing depends on the request (memcached); opaque to the proxy.
    @ivar reply: the proxy's own answer for a L{LOCAL} frame.
    """

    __slots__ = ("data", "replies", "key", "flags", "expect", "reply")

    def __init__(self, data: bytes, replies: int = 1, key: Optional[bytes] = None,
                 flags: int = 0, expect: Any = None, reply: bytes = b"") -> None:
        self.data = data
        self.replies = replies
        self.key = key
        self.flags = flags
        self.expect = expect
        self.reply = reply

    def __repr__(self) -> str:
        return (f"Frame({self.data[:40]!r}, replies={self.replies}, key={self.key!r}, "
                f"flags={self.flags}, expect={self.expect!r})")


class FramingError(Exception):
    """
    The byte stream cannot be framed.

    @ivar kind: C{"malformed"} or C{"too_large"} (see L{ERROR_KINDS}).
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


class IRequestFramer(Interface):
    """
    Cuts one client connection's byte stream into frames.  Stateful: it keeps
    an incomplete frame's bytes until the rest arrives.
    """

    error = Attribute(
        "None, or the FramingError that broke the stream.  Once set, feed() "
        "returns nothing more; frames returned before it are valid.")

    def feed(data: bytes) -> List[Frame]:
        """
        Add bytes; return every frame now complete, in order.  Never raises
        for bad input: it sets C{error} and returns the frames before it.
        """

    def pending() -> int:
        """Bytes held for an incomplete frame."""


class IShardAwareFramer(IRequestFramer):
    """
    A request framer that refuses, on a sharded cluster, the commands that
    would tie a client to one backend connection (the redis framer refuses
    MULTI, WATCH, SELECT and pub/sub then) without changing its state.
    """

    sharded = Attribute(
        "Set by the proxy before every feed(): whether the client's cluster "
        "is sharded (consistent hashing over several backends).")


class IResponseFramer(Interface):
    """
    Cuts one backend connection's byte stream into complete responses.
    """

    error = Attribute("None, or the FramingError that broke the stream.")
    needs_expect = Attribute(
        "Whether the proxy must call expect() for every frame it sends, in "
        "order (memcached: response framing depends on the request).")

    def expect(kind: Any) -> None:
        """
        A frame with C{replies > 0} and C{Frame.expect == kind} was sent.
        """

    def feed(data: bytes) -> List[bytes]:
        """
        Add bytes; return every response now complete, in order, each as the
        exact bytes to pass to the client.
        """

    def pending() -> int:
        """
        Bytes held of a response not yet complete: 0 means no byte of the
        next response has arrived, so its request may still be retried.
        """


class ICodec(Interface):
    """
    A protocol poolproxy can speak.
    """

    name = Attribute("The --protocol name, e.g. 'redis'.")
    mode = Attribute("'session' (tcp), 'request' (http) or 'multiplexed'.")

    def request_framer(options: Any) -> IRequestFramer:
        """
        A new framer for one client connection.  C{options} is a
        L{poolproxy.config.CodecOptions} (C{max_request_size},
        C{client_password}...); read it with C{getattr} and a default.
        """

    def response_framer() -> IResponseFramer:
        """A new framer for one backend connection."""

    def error_reply(kind: str, message: str) -> bytes:
        """
        The protocol's own error reply, well-formed, for C{kind} in
        L{ERROR_KINDS}.
        """

    def setup_frames(options: Any) -> List[Frame]:
        """
        Frames sent on every new backend connection, answered before any
        client frame is written on it (AUTH, SELECT, HELLO).  C{options} is
        the proxy's configuration.
        """

    def check_setup_reply(frame: Frame, response: bytes) -> Optional[str]:
        """
        L{None} if C{response} is a good answer to setup C{frame}, else why
        not (the backend connection is then closed and counted as failed).
        """

    def probe() -> Optional[Frame]:
        """
        A cheap health probe (PING, version) expecting one response, or None
        for a TCP connect.  Its answer is checked only by an
        L{IProbingCodec}; any other codec's probe is a TCP connect.
        """


class IShardedCodec(ICodec):
    """
    A codec whose requests may name several keys, which a sharded cluster
    (consistent hashing over several backends) may hold on different
    backends.  Such a request is split into one part per backend, or, if
    it cannot be, answered with C{error_reply("crossslot", ...)}.
    """

    def keys(frame: Frame) -> Optional[List[bytes]]:
        """
        Every key of C{frame} when it names several (redis C{MGET}, C{DEL};
        memcached C{get k1 k2}), or L{None} when C{frame.key} tells all.
        """

    def split(frame: Frame, groups: List[List[int]]
              ) -> Optional[Tuple[List[Frame], Callable[[List[bytes]], bytes]]]:
        """
        C{frame} cut into one request per group, C{groups} listing per
        backend the indexes (into L{keys}) of the keys it holds; and
        C{merge(replies)}, which makes the client's one reply from the
        parts' replies in group order.  L{None} if it cannot be split.
        """


class IVariantCodec(ICodec):
    """
    A codec whose clients may need backend connections of another variant
    (redis: the RESP version chosen with HELLO), announced by L{VARIANT}.
    """

    def variant_setup(options: Any, variant: Any) -> List[Frame]:
        """
        The frames that switch a set-up pooled connection to C{variant},
        answered and checked with C{check_setup_reply} before any client
        frame uses the connection.
        """


class IDescribingCodec(ICodec):
    """
    A codec that tells hooks (L{poolproxy.hooks}) what a request asks: its
    command, arguments and keys.  Only called when a hook asks.
    """

    def describe(frame: Frame) -> Tuple[Optional[str], List[bytes], Optional[List[bytes]]]:
        """
        (command name, arguments after it, every key it names or L{None}
        when C{frame.key} tells all).
        """


class IHookableFramer(IRequestFramer):
    """
    A request framer whose credentials an C{authenticate} hook decides on
    (see L{AUTHENTICATE}).
    """

    credentials = Attribute("With an authenticate hook, a deque with one entry per "
                            "AUTHENTICATE frame, oldest first: (user, password, password_ok), "
                            "or None for a frame that drops the client's authentication "
                            "(RESET); without the hook, None.")

    def set_authenticated(authenticated: bool) -> None:
        """The client's authentication as the hook decided (framing goes on from it)."""

    def refused_reply(frame: Frame) -> bytes:
        """The protocol's answer to C{frame}'s credentials refused (redis WRONGPASS)."""


class IUnsolicitedFramer(IResponseFramer):
    """
    A response framer that sets apart what the backend sends unasked (redis
    RESP3 push messages): never paired with a request.  On a connection
    pinned to one client it is that client's; on a shared one it is dropped
    (and counted).
    """

    unsolicited = Attribute(
        "The unsolicited messages the last feed() found, in order; the proxy "
        "takes them (replacing the list) after each feed.")


class IBoundedFramer(IResponseFramer):
    """
    A response framer that never holds more than C{max_reply_size} bytes of
    one response: a larger one is answered with the codec's error as soon
    as it is known to be too large, and the rest of it is read and
    discarded as it comes (not held), so the stream stays in step.
    """

    max_reply_size = Attribute(
        "The most bytes of one response to hold (the proxy sets it), or None.")
    on_too_large = Attribute(
        "None, or a callable the framer calls (with no argument) for each "
        "response it replaced with an error (the proxy counts them).")


class IBlockingCodec(ICodec):
    """A codec with commands that wait at the backend (L{BLOCKING} frames)."""

    def wait_time(frame: Frame) -> Optional[float]:
        """
        Seconds a L{BLOCKING} frame may wait at the backend by its own
        arguments (redis BLPOP's timeout), or L{None} for no limit.
        """


class IProbingCodec(ICodec):
    """A codec whose health probe's answer is checked, not only its framing."""

    def probe_ok(response: bytes) -> bool:
        """Whether C{response}, the one answer to L{ICodec.probe}, is healthy."""


class ISetupConversation(Interface):
    """
    Setting up a new backend connection when it takes several round trips
    (PostgreSQL's login: md5 needs the server's salt, SCRAM two exchanges),
    which L{ICodec.setup_frames} cannot express.  The proxy writes
    L{start}'s bytes, then feeds everything the backend sends to
    L{receive} and writes what it returns, until C{done} or C{error}.
    """

    done = Attribute("Whether the connection is set up and ready for requests.")
    error = Attribute("None, or why setup failed (the connection is then closed).")

    def start() -> bytes:
        """The first bytes to send."""

    def receive(data: bytes) -> bytes:
        """Bytes from the backend; the bytes to send it now (maybe none)."""

    def leftover() -> bytes:
        """Bytes the backend sent after setup ended."""


class ITransactionReplies(Interface):
    """
    One backend connection's replies in transaction pooling: the response
    framer of a connection leased per transaction.  Told what was sent, fed
    what came back, it reports the trailing transaction state, which is
    what gives the connection back to the pool: the response says the
    transaction is over, not the request.
    """

    error = Attribute("None, or the FramingError that broke the stream.")
    status = Attribute("The transaction state the last reply left the connection in "
                       "(PostgreSQL: b'I' idle, b'T' in a transaction, b'E' failed).")
    idle = Attribute("Whether the connection is between transactions: the state is "
                     "idle and every request sent on it has been answered.")

    def sent(kind: int) -> None:
        """A request of C{kind} (the codec's own numbering) was sent."""

    def local(reply: bytes) -> None:
        """The proxy answered a request itself: C{reply} goes out in its turn."""

    def feed(data: bytes) -> bytes:
        """Bytes from the backend; what the client gets of them, in order."""


class ITransactionCodec(ICodec):
    """
    A codec pooled by transaction (mode C{"transaction"}): a client holds a
    backend connection from the first message of a transaction until its
    L{ITransactionReplies} says the transaction is over.  Setup is a
    conversation (L{ISetupConversation}), and pools are kept per (database,
    user) inside each backend.
    """

    def fatal_reply(kind: str, message: str) -> bytes:
        """The error that ends a client connection, for C{kind} in L{ERROR_KINDS}."""


@implementer(ICodec)
class BaseCodec:
    """
    Defaults for a codec: no connection setup, and a TCP connect as the
    health probe.  Subclasses set C{name} and C{mode} and implement
    C{request_framer}, C{response_framer} and C{error_reply}.
    """

    name: str
    mode: str

    def request_framer(self, options: Any) -> Any:
        raise NotImplementedError(f"{self.name} requests are not framed")

    def response_framer(self) -> Any:
        raise NotImplementedError(f"{self.name} responses are not framed")

    def error_reply(self, kind: str, message: str) -> bytes:
        raise NotImplementedError

    def setup_frames(self, options: Any) -> List[Frame]:
        return []

    def check_setup_reply(self, frame: Frame, response: bytes) -> Optional[str]:
        return None

    def probe(self) -> Optional[Frame]:
        return None
