"""
The redis codec, with plain bytes: request framing (multibulk and inline),
routing keys, the flags every connection-state rule gives, response framing
of every RESP2/RESP3 type, the codec's own replies and setup frames, and
property tests over random chunkings, random values and random garbage.
"""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any, List, Optional, Sequence, Tuple

from hypothesis import HealthCheck, given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from poolproxy.codec import (
    AUTH_FAILED,
    BLOCKING,
    CLOSE,
    DIRTY,
    REFUSED,
    VARIANT,
    LOCAL,
    PASSTHROUGH,
    PIN,
    RETRY_SAFE,
    UNPIN,
    Frame,
    ICodec,
    IRequestFramer,
    IResponseFramer,
)
from poolproxy.codecs import redis
from poolproxy.codecs.redis import (
    MAX_DEPTH,
    CommandPolicy,
    RedisCodec,
    RespRequestFramer,
    RespResponseFramer,
    encode_command,
)

MAX = 1024 * 1024
PROPERTY = settings(max_examples=200, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])


def cmd(*args: Any) -> bytes:
    """A RESP multibulk request; str arguments are encoded."""
    return encode_command([a.encode() if isinstance(a, str) else a for a in args])


def as_tuple(frame: Frame) -> Tuple[Any, ...]:
    return (frame.data, frame.replies, frame.key, frame.flags, frame.expect, frame.reply)


#: A policy that refuses nothing, for tests of what each command does; and
#: one that also pins unknown commands rather than refusing them.
ALLOW_ALL = CommandPolicy(deny=())
PIN_ALL = CommandPolicy(deny=(), unknown="pin")


def framer(password: Optional[bytes] = None, max_size: int = MAX,
           policy: Optional[CommandPolicy] = None) -> RespRequestFramer:
    if policy is None:
        return RespRequestFramer(max_size, password)
    return RespRequestFramer(max_size, password, policy)


def flags_of(f: RespRequestFramer, *commands: Sequence[str]) -> List[int]:
    """Feed each command (a sequence of args) and return each frame's flags."""
    out = []
    for args in commands:
        frames = f.feed(cmd(*args))
        assert len(frames) == 1, (args, frames)
        out.append(frames[0].flags)
    return out


def feed_chunks(f: Any, data: bytes, cuts: Sequence[int]) -> List[Any]:
    out: List[Any] = []
    last = 0
    for cut in sorted(set(cuts)) + [len(data)]:
        if cut > last:
            out.extend(f.feed(data[last:cut]))
            last = cut
    return out


def bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


PIPELINE = b"".join([
    cmd("SET", "key:1", "value"),
    cmd("GET", "key:1"),
    b"PING\r\n",
    cmd("MULTI"),
    cmd("INCR", "n"),
    cmd("EXEC"),
    cmd("HSET", "h", "f", b"\x00\r\n\xff"),
    b"get 'a b'\n",
    cmd("DEL", "key:1", "key:2"),
])


class RequestFramingTests(SynchronousTestCase):
    """Cutting a client's bytes into frames."""

    def test_interface(self) -> None:
        """The request framer provides IRequestFramer and starts without error."""
        f = framer()
        self.assertTrue(verifyObject(IRequestFramer, f))
        self.assertIsNone(f.error)
        self.assertEqual(f.pending(), 0)

    def test_get_and_set(self) -> None:
        """GET and SET become one frame each: exact bytes, key, one reply."""
        get = cmd("GET", "key:1")
        setc = cmd("SET", "key:1", "value")
        frames = framer().feed(get + setc)
        self.assertEqual([as_tuple(x) for x in frames], [
            (get, 1, b"key:1", RETRY_SAFE, None, b""),
            (setc, 1, b"key:1", 0, None, b""),
        ])

    def test_data_is_the_input(self) -> None:
        """Frame data for a multibulk request is exactly the bytes the client sent."""
        raw = b"*3\r\n$3\r\nset\r\n$1\r\nk\r\n$4\r\n\r\n\r\n\r\n"
        frames = framer().feed(raw)
        self.assertEqual(len(frames), 1)
        self.assertEqual(frames[0].data, raw)
        self.assertEqual(frames[0].key, b"k")

    def test_pipeline_in_one_feed(self) -> None:
        """Every command of a pipeline fed at once comes out, in order."""
        frames = framer().feed(PIPELINE)
        self.assertEqual([x.key for x in frames],
                         [b"key:1", b"key:1", None, None, b"n", None, b"h", b"a b", b"key:1"])
        self.assertEqual(frames[2].data, cmd("PING"))
        self.assertEqual(frames[7].data, cmd("get", "a b"))

    def test_every_split_point(self) -> None:
        """A pipeline cut in two at any byte yields the same frames as one feed."""
        whole = [as_tuple(x) for x in framer().feed(PIPELINE)]
        for cut in range(len(PIPELINE) + 1):
            f = framer()
            got = f.feed(PIPELINE[:cut]) + f.feed(PIPELINE[cut:])
            self.assertEqual([as_tuple(x) for x in got], whole, cut)
            self.assertEqual(f.pending(), 0)
            self.assertIsNone(f.error)

    def test_byte_by_byte(self) -> None:
        """A pipeline fed one byte at a time yields the same frames as one feed."""
        whole = [as_tuple(x) for x in framer().feed(PIPELINE)]
        f = framer()
        got: List[Frame] = []
        for i in range(len(PIPELINE)):
            got.extend(f.feed(PIPELINE[i:i + 1]))
        self.assertEqual([as_tuple(x) for x in got], whole)

    def test_pending(self) -> None:
        """pending() counts the bytes held for an incomplete frame."""
        f = framer()
        raw = cmd("SET", "k", "v" * 100)
        self.assertEqual(f.feed(raw[:50]), [])
        self.assertEqual(f.pending(), 50)
        self.assertEqual(f.feed(raw[50:90]), [])
        self.assertEqual(f.pending(), 90)
        self.assertEqual(len(f.feed(raw[90:])), 1)
        self.assertEqual(f.pending(), 0)

    def test_empty_feed(self) -> None:
        """Feeding no bytes yields nothing and changes nothing."""
        f = framer()
        self.assertEqual(f.feed(b""), [])
        self.assertEqual(f.feed(b"*1\r\n"), [])
        self.assertEqual(f.feed(b""), [])
        self.assertEqual(len(f.feed(b"$4\r\nPING\r\n")), 1)

    def test_empty_multibulk(self) -> None:
        """*0 and *-1 produce no frame, as in redis, and framing carries on."""
        frames = framer().feed(b"*0\r\n*-1\r\n" + cmd("PING"))
        self.assertEqual([x.data for x in frames], [cmd("PING")])

    def test_empty_argument(self) -> None:
        """A zero-length bulk is a valid (empty) argument."""
        frames = framer().feed(cmd("SET", "", ""))
        self.assertEqual(frames[0].key, b"")

    def test_large_bulk_in_small_chunks(self) -> None:
        """
        An 8 MB value arriving in 1 KB chunks is framed in linear time: the
        framer remembers how many bytes it waits for instead of re-joining and
        re-scanning on every chunk.
        """
        raw = cmd("SET", "big", b"x" * (8 * 1024 * 1024))
        f = framer(max_size=16 * MAX)
        started = time.perf_counter()
        frames = []
        for i in range(0, len(raw), 1024):
            frames.extend(f.feed(raw[i:i + 1024]))
        elapsed = time.perf_counter() - started
        self.assertEqual(len(frames), 1)
        self.assertEqual(frames[0].data, raw)
        self.assertLess(elapsed, 2.0)

    def test_many_arguments_in_small_chunks(self) -> None:
        """
        A request of 200,000 small arguments arriving in 100-byte chunks is
        framed in linear time: checked arguments are not scanned again.
        """
        args = [b"MSET"] + [b"k%d" % i for i in range(200000)]
        raw = encode_command(args)
        f = framer(max_size=16 * MAX)
        started = time.perf_counter()
        frames = []
        for i in range(0, len(raw), 100):
            frames.extend(f.feed(raw[i:i + 100]))
        elapsed = time.perf_counter() - started
        self.assertEqual(len(frames), 1)
        self.assertEqual(frames[0].data, raw)
        self.assertEqual(frames[0].key, b"k0")
        self.assertLess(elapsed, 5.0)

    def test_command_case(self) -> None:
        """Command names are case-insensitive, whatever the mix of cases."""
        for name in ("GET", "get", "GeT"):
            frame = framer().feed(cmd(name, "k"))[0]
            self.assertEqual((frame.key, frame.flags), (b"k", RETRY_SAFE), name)
        for name in ("MULTI", "multi", "mUlTi"):
            self.assertEqual(framer().feed(cmd(name))[0].flags, PIN, name)

    def test_unknown_command(self) -> None:
        """
        An unknown command is refused (its replies could not be counted on
        a shared connection), counted as "(unknown)"; with unknown_commands
        pin it goes on a connection of its own, as a raw pipe.
        """
        frame = framer().feed(cmd("MODULE.THING", "k", "x"))[0]
        self.assertEqual((frame.key, frame.flags, frame.reply), (
            b"(unknown)", LOCAL | REFUSED, b"-ERR poolproxy: unknown command 'MODULE.THING'\r\n"))
        f = framer(policy=CommandPolicy(unknown="pin"))
        frame = f.feed(cmd("MODULE.THING", "k", "x"))[0]
        self.assertEqual((frame.key, frame.flags), (b"k", PIN | PASSTHROUGH))
        self.assertTrue(f.pinned)


class InlineTests(SynchronousTestCase):
    """Inline commands: split like redis, re-encoded as multibulk."""

    def feed_one(self, line: bytes) -> Frame:
        frames = framer().feed(line)
        self.assertEqual(len(frames), 1, frames)
        return frames[0]

    def test_simple(self) -> None:
        """An inline command is split on spaces and re-encoded as RESP."""
        frame = self.feed_one(b"SET  key\tvalue\r\n")
        self.assertEqual(frame.data, cmd("SET", "key", "value"))
        self.assertEqual(frame.key, b"key")

    def test_lf_only(self) -> None:
        """A line ending in LF alone is a command too."""
        self.assertEqual(self.feed_one(b"PING\n").data, cmd("PING"))

    def test_empty_lines(self) -> None:
        """Empty and blank inline lines produce no frame."""
        frames = framer().feed(b"\r\n\n   \r\nPING\r\n")
        self.assertEqual([x.data for x in frames], [cmd("PING")])

    def test_double_quotes(self) -> None:
        """Double-quoted arguments keep spaces and understand redis's escapes."""
        frame = self.feed_one(b'SET "a key" "x\\ny\\x41\\"\\\\"\r\n')
        self.assertEqual(frame.data, cmd("SET", "a key", b'x\nyA"\\'))

    def test_single_quotes(self) -> None:
        """Single-quoted arguments take only \\' as an escape."""
        frame = self.feed_one(b"SET 'it\\'s' 'a\\nb'\r\n")
        self.assertEqual(frame.data, cmd("SET", "it's", b"a\\nb"))

    def test_empty_quoted(self) -> None:
        """"" is an empty argument."""
        self.assertEqual(self.feed_one(b'SET k ""\r\n').data, cmd("SET", "k", ""))

    def test_unbalanced_quotes(self) -> None:
        """An unterminated quote is redis's 'unbalanced quotes' protocol error."""
        for line in (b'SET "abc\r\n', b"SET 'abc\r\n", b'SET "a"b\r\n'):
            f = framer()
            frames = f.feed(cmd("PING") + line)
            self.assertEqual(len(frames), 1)
            self.assertEqual(f.error.kind, "malformed")
            self.assertEqual(f.error.message, "Protocol error: unbalanced quotes in request")

    def test_too_long_without_newline(self) -> None:
        """More than 64 KiB without a newline is too_large, before the line ends."""
        f = framer()
        self.assertEqual(f.feed(b"SET k " + b"x" * 65536), [])
        self.assertEqual(f.error.kind, "too_large")

    def test_too_long_line(self) -> None:
        """A complete inline line over 64 KiB is too_large."""
        f = framer()
        f.feed(b"SET k " + b"x" * 70000 + b"\r\n")
        self.assertEqual(f.error.kind, "too_large")

    def test_inline_state(self) -> None:
        """Inline commands get the same flags and local replies as multibulk ones."""
        f = framer()
        frames = f.feed(b"MULTI\r\nGET k\r\nEXEC\r\nQUIT\r\n")
        self.assertEqual([x.flags for x in frames], [PIN, PIN, PIN | UNPIN, LOCAL | CLOSE])


class KeyTests(SynchronousTestCase):
    """The routing key of each kind of command."""

    def key(self, *args: str) -> Optional[bytes]:
        frames = framer().feed(cmd(*args))
        self.assertEqual(len(frames), 1)
        return frames[0].key

    def test_first_argument(self) -> None:
        """Most commands route on args[1]."""
        self.assertEqual(self.key("SET", "a", "1"), b"a")
        self.assertEqual(self.key("MGET", "a", "b"), b"a")
        self.assertEqual(self.key("HSET", "h", "f", "v"), b"h")
        self.assertEqual(self.key("PUBLISH", "chan", "m"), b"chan")

    def test_keyless(self) -> None:
        """Commands without keys (or with patterns, not keys) route on nothing."""
        for args in (("PING",), ("PING", "hello"), ("ECHO", "x"), ("INFO", "memory"),
                     ("DBSIZE",), ("TIME",), ("KEYS", "*"), ("SCAN", "0"),
                     ("RANDOMKEY",), ("CONFIG", "GET", "x"), ("FLUSHALL",),
                     ("FLUSHDB",), ("SCRIPT", "LOAD", "x"), ("CLIENT", "LIST"),
                     ("MULTI",), ("SELECT", "1"), ("HELLO", "2")):
            frames = framer(policy=ALLOW_ALL).feed(cmd(*args))
            self.assertIsNone(frames[0].key, args)

    def test_script_keys(self) -> None:
        """EVAL/EVALSHA/FCALL route on the first key when numkeys > 0."""
        self.assertEqual(self.key("EVAL", "return 1", "2", "k1", "k2"), b"k1")
        self.assertIsNone(self.key("EVAL", "return 1", "0", "arg"))
        self.assertEqual(self.key("evalsha", "abc", "1", "k"), b"k")
        self.assertEqual(self.key("FCALL_RO", "f", "1", "k"), b"k")
        self.assertIsNone(self.key("EVAL", "return 1", "x", "arg"))

    def test_streams(self) -> None:
        """XREAD and XREADGROUP route on the first key after STREAMS."""
        self.assertEqual(self.key("XREAD", "COUNT", "2", "STREAMS", "s1", "s2", "0", "0"), b"s1")
        self.assertEqual(self.key("XREADGROUP", "GROUP", "g", "c", "streams", "s", ">"), b"s")
        self.assertEqual(self.key("XREAD", "BLOCK", "0", "STREAMS", "s", "$"), b"s")

    def test_later_keys(self) -> None:
        """Commands whose first key is not args[1] route on it."""
        self.assertEqual(self.key("BITOP", "AND", "dest", "a", "b"), b"dest")
        self.assertEqual(self.key("ZUNION", "2", "a", "b"), b"a")
        self.assertEqual(self.key("OBJECT", "ENCODING", "k"), b"k")
        self.assertEqual(self.key("BLMPOP", "0", "2", "a", "b", "LEFT"), b"a")
        self.assertIsNone(self.key("MEMORY", "STATS"))


class FlagTests(SynchronousTestCase):
    """RETRY_SAFE, and every pinning rule."""

    def test_reads_are_retry_safe(self) -> None:
        """Reads are RETRY_SAFE; writes are not."""
        f = framer()
        self.assertEqual(flags_of(f, ("GET", "k"), ("HGETALL", "h"), ("PING",),
                                  ("ZRANGE", "z", "0", "-1"), ("XREAD", "STREAMS", "s", "0")),
                         [RETRY_SAFE] * 5)
        self.assertEqual(flags_of(f, ("SET", "k", "v"), ("INCR", "k"), ("DEL", "k"),
                                  ("XREADGROUP", "GROUP", "g", "c", "STREAMS", "s", ">")),
                         [0] * 4)

    def test_transaction(self) -> None:
        """MULTI pins; every frame in it is PIN (never RETRY_SAFE); EXEC unpins."""
        f = framer()
        self.assertEqual(flags_of(f, ("MULTI",), ("GET", "k"), ("SET", "k", "v"), ("EXEC",),
                                  ("GET", "k")),
                         [PIN, PIN, PIN, PIN | UNPIN, RETRY_SAFE])
        self.assertFalse(f.pinned)

    def test_discard(self) -> None:
        """DISCARD ends a transaction like EXEC."""
        f = framer()
        self.assertEqual(flags_of(f, ("MULTI",), ("INCR", "k"), ("DISCARD",), ("INCR", "k")),
                         [PIN, PIN, PIN | UNPIN, 0])

    def test_exec_without_multi(self) -> None:
        """EXEC or DISCARD without MULTI is a plain (error-returning) command."""
        f = framer()
        self.assertEqual(flags_of(f, ("EXEC",), ("DISCARD",)), [0, 0])

    def test_watch(self) -> None:
        """WATCH pins; the transaction's EXEC ends the watch too and unpins."""
        f = framer()
        self.assertEqual(flags_of(f, ("WATCH", "k"), ("GET", "k"), ("MULTI",),
                                  ("SET", "k", "v"), ("EXEC",), ("GET", "k")),
                         [PIN, PIN, PIN, PIN, PIN | UNPIN, RETRY_SAFE])

    def test_unwatch(self) -> None:
        """UNWATCH unpins a watching client; without state it is a plain command."""
        f = framer()
        self.assertEqual(flags_of(f, ("WATCH", "k"), ("UNWATCH",), ("UNWATCH",)),
                         [PIN, PIN | UNPIN, 0])

    def test_watch_then_discard(self) -> None:
        """DISCARD after WATCH and MULTI clears both and unpins."""
        f = framer()
        self.assertEqual(flags_of(f, ("WATCH", "k"), ("MULTI",), ("DISCARD",)),
                         [PIN, PIN, PIN | UNPIN])

    def test_sticky(self) -> None:
        """
        SELECT, CLIENT SETNAME/REPLY ON/NO-EVICT/NO-TOUCH, READONLY, READWRITE
        and HELLO with SETNAME pin for the rest of the session: even a
        transaction's end does not unpin.
        """
        for first in (("SELECT", "0"), ("SELECT", "2"), ("CLIENT", "SETNAME", "x"),
                      ("client", "reply", "on"), ("CLIENT", "NO-EVICT", "on"),
                      ("CLIENT", "NO-TOUCH", "on"), ("CLIENT", "TRACKING", "off"),
                      ("READONLY",), ("READWRITE",), ("HELLO", "2", "SETNAME", "x")):
            f = framer()
            first_flags = PIN | VARIANT if first[0] == "HELLO" else PIN
            self.assertEqual(
                flags_of(f, first, ("GET", "k"), ("MULTI",), ("EXEC",), ("BLPOP", "q", "0"),
                         ("WATCH", "k"), ("UNWATCH",), ("GET", "k")),
                [first_flags] + [PIN] * 3 + [PIN | BLOCKING] + [PIN] * 3, first)
            self.assertTrue(f.pinned)

    def test_not_sticky(self) -> None:
        """
        HELLO 2, HELLO 3, bare HELLO and other CLIENT subcommands leave the
        client unpinned; HELLO with a version is a VARIANT frame naming the
        RESP version (None for the pool's own RESP2).
        """
        f = framer()
        frames = f.feed(b"".join(cmd(*c) for c in (("HELLO", "3"), ("HELLO", "2"), ("HELLO",),
                                                   ("CLIENT", "ID"), ("CLIENT", "GETNAME"))))
        self.assertEqual([fr.flags for fr in frames], [VARIANT, VARIANT, 0, 0, 0])
        self.assertEqual([fr.expect for fr in frames[:2]], [3, None])
        self.assertFalse(f.pinned)

    def test_reset_returns_to_resp2(self) -> None:
        """RESET, answered locally or not, puts the client back on RESP2."""
        frame = framer().feed(cmd("RESET"))[0]
        self.assertEqual((frame.flags & VARIANT, frame.expect), (VARIANT, None))
        f = framer()
        flags_of(f, ("MULTI",))
        frame = f.feed(cmd("RESET"))[0]
        self.assertEqual(frame.flags, PIN | UNPIN | DIRTY | VARIANT)

    def test_variant_setup(self) -> None:
        """RESP3 connections are pool connections after HELLO 3, whose map reply is accepted."""
        [hello] = redis.codec.variant_setup(None, 3)
        self.assertEqual(hello.data, cmd("HELLO", "3"))
        self.assertIsNone(redis.codec.check_setup_reply(hello, b"%1\r\n+proto\r\n:3\r\n"))
        self.assertIsNotNone(redis.codec.check_setup_reply(hello, b"-NOPROTO x\r\n"))
        self.assertEqual(redis.codec.variant_setup(None, None), [])

    def test_client_setinfo(self) -> None:
        """CLIENT SETINFO (sent by client libraries on connect) is answered +OK locally."""
        frame = framer().feed(cmd("CLIENT", "SETINFO", "LIB-NAME", "redis-py"))[0]
        self.assertEqual((frame.flags, frame.reply), (LOCAL, b"+OK\r\n"))

    def test_passthrough(self) -> None:
        """
        SUBSCRIBE, PSUBSCRIBE, SSUBSCRIBE, MONITOR, SYNC, PSYNC and REPLCONF
        (the last four when the policy allows them) pin and pass through for good.
        """
        for first in (("SUBSCRIBE", "a", "b"), ("PSUBSCRIBE", "a*"), ("SSUBSCRIBE", "a"),
                      ("MONITOR",), ("SYNC",), ("PSYNC", "?", "-1"), ("REPLCONF", "ACK", "0")):
            f = framer(policy=ALLOW_ALL)
            self.assertEqual(flags_of(f, first, ("PING",), ("UNSUBSCRIBE",), ("RESET",)),
                             [PIN | PASSTHROUGH, PIN, PIN, PIN], first)
            self.assertTrue(f.pinned)

    def test_reply_off_and_tracking(self) -> None:
        """
        CLIENT REPLY OFF/SKIP and CLIENT TRACKING ON also pass through: replies
        stop coming one per request.
        """
        for first in (("CLIENT", "REPLY", "OFF"), ("CLIENT", "REPLY", "skip"),
                      ("CLIENT", "TRACKING", "on")):
            f = framer()
            self.assertEqual(flags_of(f, first, ("GET", "k")), [PIN | PASSTHROUGH, PIN], first)

    def test_blocking(self) -> None:
        """A blocking command gets an exclusive connection for itself: PIN | UNPIN."""
        for args in (("BLPOP", "q", "0"), ("BRPOP", "q", "0"), ("BRPOPLPUSH", "a", "b", "0"),
                     ("BLMOVE", "a", "b", "LEFT", "RIGHT", "0"), ("BZPOPMIN", "z", "0"),
                     ("BZPOPMAX", "z", "0"), ("BLMPOP", "0", "1", "q", "LEFT"),
                     ("BZMPOP", "0", "1", "z", "MIN"), ("WAIT", "1", "0"),
                     ("WAITAOF", "1", "0", "0"), ("XREAD", "BLOCK", "0", "STREAMS", "s", "$"),
                     ("XREADGROUP", "GROUP", "g", "c", "BLOCK", "10", "STREAMS", "s", ">")):
            f = framer()
            self.assertEqual(flags_of(f, args, ("GET", "k")),
                             [PIN | UNPIN | BLOCKING, RETRY_SAFE], args)

    def test_blocking_in_transaction(self) -> None:
        """Inside a transaction (or pinned) a blocking command just rides the pin."""
        f = framer()
        self.assertEqual(flags_of(f, ("MULTI",), ("BLPOP", "q", "0"), ("EXEC",),
                                  ("BLPOP", "q", "0")),
                         [PIN, PIN | BLOCKING, PIN | UNPIN, PIN | UNPIN | BLOCKING])
        f = framer()
        self.assertEqual(flags_of(f, ("WATCH", "k"), ("BLPOP", "q", "0")), [PIN, PIN | BLOCKING])

    def test_reset_clears_everything(self) -> None:
        """RESET unpins and clears transaction, watch and sticky state alike."""
        for setup in ((("MULTI",),), (("WATCH", "k"),), (("SELECT", "3"),),
                      (("HELLO", "3"), ("MULTI",), ("WATCH", "k"))):
            f = framer()
            flags_of(f, *setup)
            self.assertEqual(flags_of(f, ("RESET",), ("GET", "k")),
                             [PIN | UNPIN | DIRTY | VARIANT, RETRY_SAFE])
            self.assertFalse(f.pinned)

    def test_reset_without_state(self) -> None:
        """RESET from a client without state is answered by the proxy itself."""
        frame = framer().feed(cmd("RESET"))[0]
        self.assertEqual((frame.flags, frame.reply), (LOCAL | VARIANT, b"+RESET\r\n"))

    def test_quit(self) -> None:
        """QUIT is answered +OK by the proxy, which then closes the client."""
        frame = framer().feed(cmd("QUIT"))[0]
        self.assertEqual((frame.flags, frame.reply), (LOCAL | CLOSE, b"+OK\r\n"))
        frame = framer(b"pw").feed(b"quit\r\n")[0]
        self.assertEqual((frame.flags, frame.reply), (LOCAL | CLOSE, b"+OK\r\n"))

    def test_replies_always_one(self) -> None:
        """Every redis frame expects one reply."""
        frames = framer().feed(PIPELINE + cmd("SUBSCRIBE", "c") + cmd("QUIT"))
        self.assertEqual({x.replies for x in frames}, {1})


class AuthTests(SynchronousTestCase):
    """AUTH is always answered by the proxy, never sent to a backend."""

    def one(self, f: RespRequestFramer, *args: str) -> Frame:
        frames = f.feed(cmd(*args))
        self.assertEqual(len(frames), 1)
        return frames[0]

    def test_no_password_configured(self) -> None:
        """Without a proxy password, AUTH <pw> gets redis's own error, locally."""
        frame = self.one(framer(), "AUTH", "secret")
        self.assertEqual(frame.flags, LOCAL)
        self.assertEqual(frame.reply,
                         b"-ERR AUTH <password> called without any password configured "
                         b"for the default user. Are you sure your configuration is "
                         b"correct?\r\n")
        self.assertNotIn(b"secret", frame.data)

    def test_no_password_default_user(self) -> None:
        """Without a proxy password the default user takes any password; others none."""
        f = framer()
        self.assertEqual(self.one(f, "AUTH", "default", "x").reply, b"+OK\r\n")
        self.assertEqual(self.one(f, "AUTH", "alice", "x").reply,
                         b"-WRONGPASS invalid username-password pair or user is disabled.\r\n")

    def test_arity(self) -> None:
        """AUTH with no or too many arguments gets redis's arity error."""
        for args in (("AUTH",), ("AUTH", "a", "b", "c")):
            frame = self.one(framer(b"pw"), *args)
            self.assertEqual((frame.flags, frame.reply),
                             (LOCAL, b"-ERR wrong number of arguments for 'auth' command\r\n"))

    def test_noauth_until_authenticated(self) -> None:
        """With a proxy password, commands get NOAUTH until AUTH succeeds."""
        f = framer(b"pw")
        noauth = b"-NOAUTH Authentication required.\r\n"
        for args in (("GET", "k"), ("PING",), ("MULTI",), ("SELECT", "1"), ("SUBSCRIBE", "c")):
            frame = self.one(f, *args)
            self.assertEqual((frame.flags, frame.reply), (LOCAL, noauth), args)
        self.assertFalse(f.pinned)
        wrong = self.one(f, "AUTH", "nope")
        self.assertEqual((wrong.flags, wrong.reply), (
            LOCAL | AUTH_FAILED,
            b"-WRONGPASS invalid username-password pair or user is disabled.\r\n"))
        self.assertEqual(self.one(f, "GET", "k").reply, noauth)
        ok = self.one(f, "AUTH", "pw")
        self.assertEqual((ok.flags, ok.reply, ok.data), (LOCAL, b"+OK\r\n", b""))
        self.assertEqual(self.one(f, "GET", "k").flags, RETRY_SAFE)

    def test_auth_with_username(self) -> None:
        """AUTH default <pw> authenticates; another user does not."""
        f = framer(b"pw")
        self.assertEqual(self.one(f, "AUTH", "bob", "pw").reply[:10], b"-WRONGPASS")
        self.assertEqual(self.one(f, "AUTH", "default", "pw").reply, b"+OK\r\n")
        self.assertEqual(self.one(f, "SET", "k", "v").flags, 0)

    def test_auth_inside_pipeline(self) -> None:
        """Frames after a successful AUTH in the same feed are no longer refused."""
        f = framer(b"pw")
        frames = f.feed(cmd("GET", "a") + cmd("AUTH", "pw") + cmd("GET", "a"))
        self.assertEqual([x.flags for x in frames], [LOCAL, LOCAL, RETRY_SAFE])

    def test_hello_without_auth(self) -> None:
        """HELLO from an unauthenticated client gets redis's HELLO NOAUTH error."""
        frame = self.one(framer(b"pw"), "HELLO", "3")
        self.assertEqual(frame.flags, LOCAL)
        self.assertTrue(frame.reply.startswith(b"-NOAUTH HELLO must be called"))

    def test_hello_with_auth(self) -> None:
        """
        HELLO 3 AUTH default <pw> SETNAME authenticates, pins (a name is
        connection state) on RESP3, and reaches the backend without the
        credentials.
        """
        f = framer(b"pw")
        frame = self.one(f, "HELLO", "3", "AUTH", "default", "pw", "SETNAME", "me")
        self.assertEqual((frame.flags, frame.expect), (PIN | VARIANT, 3))
        self.assertEqual(frame.data, cmd("HELLO", "3", "SETNAME", "me"))
        self.assertTrue(f.authenticated)
        frame = self.one(framer(b"pw"), "HELLO", "2", "AUTH", "default", "pw")
        self.assertEqual((frame.flags, frame.data), (VARIANT, cmd("HELLO", "2")))

    def test_hello_wrong_password(self) -> None:
        """HELLO with wrong credentials gets WRONGPASS locally and no credentials leak."""
        f = framer(b"pw")
        frame = self.one(f, "HELLO", "3", "AUTH", "default", "bad")
        self.assertEqual(frame.flags, LOCAL | AUTH_FAILED)
        self.assertTrue(frame.reply.startswith(b"-WRONGPASS"))
        self.assertEqual(frame.data, b"")
        self.assertFalse(f.authenticated)
        self.assertFalse(f.pinned)

    def test_hello_errors(self) -> None:
        """HELLO with a bad version or option is answered locally."""
        self.assertEqual(self.one(framer(), "HELLO", "4").reply,
                         b"-NOPROTO unsupported protocol version\r\n")
        frame = self.one(framer(), "HELLO", "3", "AUTH", "default")
        self.assertEqual(frame.flags, LOCAL)
        self.assertTrue(frame.reply.startswith(b"-ERR Syntax error in HELLO option"))

    def test_reset_deauthenticates(self) -> None:
        """RESET (allowed before AUTH) leaves a password-protected client unauthenticated."""
        f = framer(b"pw")
        self.assertEqual(self.one(f, "RESET").reply, b"+RESET\r\n")
        self.one(f, "AUTH", "pw")
        self.assertEqual(self.one(f, "RESET").reply, b"+RESET\r\n")
        self.assertEqual(self.one(f, "GET", "k").reply, b"-NOAUTH Authentication required.\r\n")

    def test_unauthenticated_limits(self) -> None:
        """Before AUTH, redis's small limits on argument count and size apply."""
        f = framer(b"pw")
        f.feed(encode_command([b"SET"] * 11))
        self.assertEqual(f.error.message, "Protocol error: unauthenticated multibulk length")
        f = framer(b"pw")
        f.feed(b"*2\r\n$3\r\nGET\r\n$16385\r\n")
        self.assertEqual(f.error.message, "Protocol error: unauthenticated bulk length")
        f = framer(b"pw")
        self.assertEqual(len(f.feed(encode_command([b"AUTH", b"pw"])
                                    + encode_command([b"SET"] * 11))), 2)
        self.assertIsNone(f.error)


class RequestErrorTests(SynchronousTestCase):
    """Requests that cannot be framed set error; frames before it stay valid."""

    def error(self, data: bytes, max_size: int = MAX) -> Tuple[str, str, int]:
        f = framer(max_size=max_size)
        frames = f.feed(cmd("PING") + data)
        self.assertIsNotNone(f.error)
        self.assertEqual(f.feed(cmd("PING")), [])
        return f.error.kind, f.error.message, len(frames)

    def test_malformed(self) -> None:
        """Bad multibulk syntax is 'malformed', in redis's wording."""
        cases = {
            b"*abc\r\n": "Protocol error: invalid multibulk length",
            b"*\r\n": "Protocol error: invalid multibulk length",
            b"*01\r\n": "Protocol error: invalid multibulk length",
            b"* 1\r\n": "Protocol error: invalid multibulk length",
            b"*+1\r\n": "Protocol error: invalid multibulk length",
            b"*1048577\r\n": "Protocol error: invalid multibulk length",
            b"*1\r\nPING\r\n": "Protocol error: expected '$', got 'P'",
            b"*1\r\n$4\r\nPINGxx": "Protocol error: expected CRLF after bulk data",
            b"*1\r\n$-1\r\n": "Protocol error: invalid bulk length",
            b"*1\r\n$04\r\nPING\r\n": "Protocol error: invalid bulk length",
            b"*1\r\n$\r\n": "Protocol error: invalid bulk length",
            b"*1\r\n$4 \r\nPING\r\n": "Protocol error: invalid bulk length",
            b"*1" + b"1" * 40: "Protocol error: too big mbulk count string",
            b"*1\r\n$" + b"1" * 40: "Protocol error: too big bulk count string",
        }
        for data, message in cases.items():
            self.assertEqual(self.error(data), ("malformed", message, 1), data)

    def test_bulk_too_large(self) -> None:
        """A bulk longer than the limit is too_large as soon as its header arrives."""
        kind, message, count = self.error(b"*2\r\n$3\r\nSET\r\n$2000000\r\n")
        self.assertEqual((kind, count), ("too_large", 1))

    def test_frame_too_large(self) -> None:
        """Many bulks that together pass the limit are too_large, before all arrive."""
        f = framer(max_size=1000)
        f.feed(b"*20\r\n" + bulk(b"x" * 100) * 9)
        self.assertIsNone(f.error)
        f.feed(bulk(b"x" * 100)[:10])
        self.assertEqual(f.error.kind, "too_large")

    def test_count_too_large(self) -> None:
        """An argument count that cannot fit in the limit is too_large at once."""
        kind, _, _ = self.error(b"*1000\r\n", max_size=1000)
        self.assertEqual(kind, "too_large")

    def test_limit_is_inclusive(self) -> None:
        """A request of exactly max_request_size bytes is accepted."""
        raw = cmd("SET", "k", "v" * 100)
        f = framer(max_size=len(raw))
        self.assertEqual(len(f.feed(raw)), 1)
        f = framer(max_size=len(raw) - 1)
        self.assertEqual(f.feed(raw), [])
        self.assertEqual(f.error.kind, "too_large")


# -- responses -------------------------------------------------------------------

VALUES = [
    b"+OK\r\n",
    b"-ERR wrong type\r\n",
    b":-42\r\n",
    b"$5\r\nhello\r\n",
    b"$0\r\n\r\n",
    b"$-1\r\n",
    b"$6\r\na\r\nb\r\n\r\n",
    b"*-1\r\n",
    b"*0\r\n",
    b"*2\r\n$1\r\na\r\n:1\r\n",
    b"*3\r\n*1\r\n*0\r\n*-1\r\n*2\r\n+a\r\n-b\r\n",
    b"_\r\n",
    b",3.14\r\n",
    b",inf\r\n",
    b"#t\r\n",
    b"#f\r\n",
    b"(3492890328409238509324850943850943825024385\r\n",
    b"!21\r\nSYNTAX invalid syntax\r\n",
    b"=15\r\ntxt:Some string\r\n",
    b"%2\r\n+first\r\n:1\r\n+second\r\n*1\r\n_\r\n",
    b"%0\r\n",
    b"~2\r\n+a\r\n#f\r\n",
    b">3\r\n$7\r\nmessage\r\n$4\r\nchan\r\n$2\r\nhi\r\n",
    b"|1\r\n+key-popularity\r\n%1\r\n$1\r\na\r\n,0.19\r\n*1\r\n:2\r\n",
    b"*2\r\n|1\r\n+ttl\r\n:3600\r\n:1\r\n:2\r\n",
]
STREAM = b"".join(VALUES)
#: What a response framer returns of VALUES, and what it sets apart (a push
#: answers no request).
REPLIES = [v for v in VALUES if not v.startswith(b">")]
PUSHES = [v for v in VALUES if v.startswith(b">")]


class ResponseFramingTests(SynchronousTestCase):
    """Cutting a backend's bytes into complete replies."""

    def test_interface(self) -> None:
        """The response framer provides IResponseFramer and needs no expect()."""
        r = RespResponseFramer()
        self.assertTrue(verifyObject(IResponseFramer, r))
        self.assertFalse(r.needs_expect)
        r.expect(None)
        self.assertIsNone(r.error)

    def test_every_type(self) -> None:
        """Each RESP2 and RESP3 type, fed alone, is one response of its exact bytes."""
        for value in VALUES:
            r = RespResponseFramer()
            push = value in PUSHES
            self.assertEqual(r.feed(value), [] if push else [value], value)
            self.assertEqual(r.unsolicited, [value] if push else [], value)
            self.assertIsNone(r.error)
            self.assertEqual(r.pending(), 0)

    def test_stream_in_one_feed(self) -> None:
        """Back-to-back replies of every type come out one by one, in order; pushes apart."""
        r = RespResponseFramer()
        self.assertEqual(r.feed(STREAM), REPLIES)
        self.assertEqual(r.unsolicited, PUSHES)

    def test_every_split_point(self) -> None:
        """Replies (and pushes) cut in two at any byte come out the same."""
        for cut in range(len(STREAM) + 1):
            r = RespResponseFramer()
            self.assertEqual(r.feed(STREAM[:cut]) + r.feed(STREAM[cut:]), REPLIES, cut)
            self.assertEqual(r.unsolicited, PUSHES, cut)
            self.assertEqual(r.pending(), 0)

    def test_byte_by_byte(self) -> None:
        """Replies fed one byte at a time come out the same."""
        r = RespResponseFramer()
        got: List[bytes] = []
        for i in range(len(STREAM)):
            got.extend(r.feed(STREAM[i:i + 1]))
        self.assertEqual(got, REPLIES)
        self.assertEqual(r.unsolicited, PUSHES)

    def test_pushes_between_replies(self) -> None:
        """
        A push between two replies, or inside a pipeline's replies, is never
        one of them: RESP3 invalidation or pub/sub messages on a connection
        cannot be paired with a request.
        """
        push = b">2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nk\r\n"
        r = RespResponseFramer()
        self.assertEqual(r.feed(b"+OK\r\n" + push + b":1\r\n" + push[:7]), [b"+OK\r\n", b":1\r\n"])
        self.assertEqual(r.feed(push[7:] + b"$1\r\nx\r\n"), [b"$1\r\nx\r\n"])
        self.assertEqual(r.unsolicited, [push, push])

    def test_attribute_is_part_of_reply(self) -> None:
        """An attribute and the reply it decorates are one response, not two."""
        value = b"|1\r\n+a\r\n+b\r\n$1\r\nx\r\n"
        r = RespResponseFramer()
        self.assertEqual(r.feed(value[:-3]), [])
        self.assertEqual(r.feed(value[-3:]), [value])

    def test_deep_nesting(self) -> None:
        """Nesting up to MAX_DEPTH is framed; deeper is malformed, without recursion."""
        ok = b"*1\r\n" * MAX_DEPTH + b":1\r\n"
        self.assertEqual(RespResponseFramer().feed(ok), [ok])
        r = RespResponseFramer()
        self.assertEqual(r.feed(b"*1\r\n" * (MAX_DEPTH + 1) + b":1\r\n"), [])
        self.assertEqual(r.error.kind, "malformed")

    def test_large_bulk_in_chunks(self) -> None:
        """A 32 MB bulk reply in 64 KiB chunks is collected in linear time."""
        value = b"$%d\r\n" % (32 << 20) + b"v" * (32 << 20) + b"\r\n"
        r = RespResponseFramer()
        started = time.perf_counter()
        got: List[bytes] = []
        for i in range(0, len(value), 65536):
            got.extend(r.feed(value[i:i + 65536]))
            if not got:
                self.assertEqual(r.pending(), min(len(value), i + 65536))
        self.assertLess(time.perf_counter() - started, 2.0)
        self.assertEqual(len(got), 1)
        self.assertTrue(got[0] == value)

    def test_large_array_in_chunks(self) -> None:
        """An array of 300,000 elements in 100-byte chunks is framed in linear time."""
        value = b"*300000\r\n" + b":12345\r\n" * 300000
        r = RespResponseFramer()
        started = time.perf_counter()
        got: List[bytes] = []
        for i in range(0, len(value), 100):
            got.extend(r.feed(value[i:i + 100]))
        self.assertLess(time.perf_counter() - started, 5.0)
        self.assertTrue(got == [value])
        self.assertEqual(r.feed(b"+OK\r\n"), [b"+OK\r\n"])

    def test_garbage(self) -> None:
        """Bytes that are not RESP set error (malformed) and never raise."""
        for data in (b"hello\r\n", b"$abc\r\n", b"$5\r\nhelloXX", b"$-2\r\n", b"*-2\r\n",
                     b"$?\r\n;4\r\nabcd\r\n;0\r\n", b"*?\r\n:1\r\n.\r\n", b"#x\r\n",
                     b"_x\r\n", b"~-1\r\n", b"!-1\r\n", b"%-1\r\n", b"$01\r\nx\r\n",
                     b"x" * 10, b"$" + b"9" * 40, b"+" + b"a" * 10):
            r = RespResponseFramer()
            frames = r.feed(b"+OK\r\n" + data)
            self.assertEqual(frames, [b"+OK\r\n"], data)
            if data in (b"+" + b"a" * 10,):
                self.assertIsNone(r.error)  # just incomplete
                continue
            self.assertEqual(r.error.kind, "malformed", data)
            self.assertEqual(r.feed(b"+OK\r\n"), [])


# -- the codec -------------------------------------------------------------------

class CodecTests(SynchronousTestCase):
    """RedisCodec: framers, the proxy's own replies, setup and probe."""

    def test_interface(self) -> None:
        """RedisCodec provides ICodec; the module exposes an instance as 'codec'."""
        self.assertTrue(verifyObject(ICodec, redis.codec))
        self.assertEqual((redis.codec.name, redis.codec.mode), ("redis", "multiplexed"))

    def test_request_framer_from_config(self) -> None:
        """request_framer() takes the size limit and client password from the config."""
        config = SimpleNamespace(max_request_size=100, client_password="sécret")
        f = RedisCodec().request_framer(config)
        self.assertEqual(f.feed(cmd("GET", "k"))[0].flags, LOCAL)
        self.assertEqual(f.feed(encode_command([b"AUTH", "sécret".encode()]))[0].reply,
                         b"+OK\r\n")
        f.feed(cmd("SET", "k", "x" * 100))
        self.assertEqual(f.error.kind, "too_large")
        f = RedisCodec().request_framer(SimpleNamespace())
        self.assertEqual(len(f.feed(cmd("SET", "k", "x" * 100000))), 1)
        f = RedisCodec().request_framer(50)
        f.feed(cmd("SET", "k", "x" * 100))
        self.assertEqual(f.error.kind, "too_large")

    def test_response_framer(self) -> None:
        """response_framer() gives a new, independent framer each time."""
        c = RedisCodec()
        a, b = c.response_framer(), c.response_framer()
        self.assertIsNot(a, b)
        self.assertEqual(a.feed(b"+OK\r\n"), [b"+OK\r\n"])

    def test_error_replies(self) -> None:
        """Every error kind is one well-formed RESP error, with CR and LF removed."""
        c = RedisCodec()
        expected = {
            "overloaded": b"-ERR poolproxy: overloaded, try again later\r\n",
            "unavailable": b"-ERR poolproxy: backend unavailable: conn  refused\r\n",
            "timeout": b"-ERR poolproxy: backend timed out\r\n",
            "too_large": b"-ERR Protocol error: conn  refused\r\n",
            "malformed": b"-ERR Protocol error: conn  refused\r\n",
        }
        for kind, reply in expected.items():
            got = c.error_reply(kind, "conn\r\nrefused")
            self.assertEqual(got, reply)
            r = RespResponseFramer()
            self.assertEqual(r.feed(got), [got])
            self.assertIsNone(r.error)

    def test_error_reply_from_framing_error(self) -> None:
        """A framer's error message becomes redis's own protocol error line."""
        f = framer()
        f.feed(b"*x\r\n")
        self.assertEqual(RedisCodec().error_reply(f.error.kind, f.error.message),
                         b"-ERR Protocol error: invalid multibulk length\r\n")

    def test_setup_frames(self) -> None:
        """AUTH (with username when set) then SELECT, only when configured."""
        c = RedisCodec()
        self.assertEqual(c.setup_frames(SimpleNamespace()), [])
        self.assertEqual(c.setup_frames(SimpleNamespace(backend_password=None, backend_db=0)), [])
        frames = c.setup_frames(SimpleNamespace(backend_password="pw", backend_db=3))
        self.assertEqual([x.data for x in frames], [cmd("AUTH", "pw"), cmd("SELECT", "3")])
        frames = c.setup_frames(SimpleNamespace(backend_password="pw", backend_username="u"))
        self.assertEqual([x.data for x in frames], [cmd("AUTH", "u", "pw")])
        self.assertEqual({x.replies for x in frames}, {1})

    def test_check_setup_reply(self) -> None:
        """+OK is good; anything else is the reason the connection failed."""
        c = RedisCodec()
        frame = c.setup_frames(SimpleNamespace(backend_password="pw"))[0]
        self.assertIsNone(c.check_setup_reply(frame, b"+OK\r\n"))
        why = c.check_setup_reply(frame, b"-WRONGPASS invalid username-password pair\r\n")
        self.assertIn("WRONGPASS invalid username-password pair", why)
        self.assertIn("AUTH", why)
        self.assertIsNotNone(c.check_setup_reply(frame, b":1\r\n"))

    def test_probe(self) -> None:
        """The probe is a PING; +PONG is healthy, anything else is not."""
        c = RedisCodec()
        self.assertEqual(c.probe().data, cmd("PING"))
        self.assertTrue(c.probe_ok(b"+PONG\r\n"))
        self.assertFalse(c.probe_ok(b"-LOADING Redis is loading\r\n"))


# -- properties ------------------------------------------------------------------

names = st.one_of(
    st.sampled_from([b"GET", b"SET", b"del", b"MULTI", b"EXEC", b"SELECT", b"WATCH",
                     b"BLPOP", b"SUBSCRIBE", b"PING", b"CLIENT", b"EVAL", b"XREAD", b"QUIT",
                     b"RESET", b"UNWATCH", b"HELLO", b"DISCARD"]),
    st.binary(min_size=1, max_size=8),
).filter(lambda n: n.upper() not in (b"AUTH", b"HELLO") or n == b"HELLO")
arg_lists = st.lists(st.tuples(names, st.lists(st.binary(max_size=20), max_size=4)).map(
    lambda t: [t[0]] + t[1]), min_size=1, max_size=12)
inline_tokens = st.lists(st.text("abcXYZ019:_-", min_size=1, max_size=6), min_size=1,
                         max_size=4)


@st.composite
def request_streams(draw: Any) -> bytes:
    parts = []
    for args in draw(arg_lists):
        if draw(st.booleans()) and draw(st.booleans()):
            tokens = draw(inline_tokens)
            parts.append(" ".join(tokens).encode() + draw(st.sampled_from([b"\r\n", b"\n"])))
        else:
            parts.append(encode_command(args))
    return b"".join(parts)


simple_text = st.text(st.characters(blacklist_characters="\r\n", max_codepoint=500),
                      max_size=10).map(lambda s: s.encode())
scalars = st.one_of(
    st.binary(max_size=30).map(bulk),
    simple_text.map(lambda s: b"+" + s + b"\r\n"),
    simple_text.map(lambda s: b"-ERR " + s + b"\r\n"),
    st.integers().map(lambda i: b":%d\r\n" % i),
    st.integers().map(lambda i: b"(%d\r\n" % i),
    st.floats(allow_nan=False).map(lambda x: b",%r\r\n" % x),
    st.sampled_from([b"$-1\r\n", b"*-1\r\n", b"_\r\n", b"#t\r\n", b"#f\r\n"]),
    st.binary(max_size=20).map(lambda b: b"!%d\r\n%s\r\n" % (len(b), b)),
    st.binary(max_size=20).map(lambda b: b"=%d\r\ntxt:%s\r\n" % (len(b) + 4, b)),
)


def aggregate(prefix: bytes, items: List[bytes]) -> bytes:
    return prefix + b"%d\r\n" % len(items) + b"".join(items)


def pairs(prefix: bytes, items: List[Tuple[bytes, bytes]]) -> bytes:
    return prefix + b"%d\r\n" % len(items) + b"".join(k + v for k, v in items)


values = st.recursive(scalars, lambda children: st.one_of(
    st.lists(children, max_size=4).map(lambda xs: aggregate(b"*", xs)),
    st.lists(children, max_size=4).map(lambda xs: aggregate(b"~", xs)),
    st.lists(children, min_size=1, max_size=4).map(lambda xs: aggregate(b">", xs)),
    st.lists(st.tuples(children, children), max_size=3).map(lambda xs: pairs(b"%", xs)),
    st.tuples(st.lists(st.tuples(children, children), min_size=1, max_size=2), children).map(
        lambda t: pairs(b"|", t[0]) + t[1]),
), max_leaves=25)


@st.composite
def cut_points(draw: Any, data: bytes) -> List[int]:
    return draw(st.lists(st.integers(0, len(data)), max_size=30))


class PropertyTests(SynchronousTestCase):
    """Property tests over random streams, chunkings and garbage."""

    @PROPERTY
    @given(st.data())
    def test_request_chunking(self, data: Any) -> None:
        """Any chunking of a valid request stream yields the same frames as one feed."""
        stream = data.draw(request_streams())
        cuts = data.draw(cut_points(stream))
        whole = framer()
        expected = [as_tuple(x) for x in whole.feed(stream)]
        self.assertIsNone(whole.error)
        f = framer()
        self.assertEqual([as_tuple(x) for x in feed_chunks(f, stream, cuts)], expected)
        self.assertIsNone(f.error)
        self.assertEqual(f.pending(), 0)

    @PROPERTY
    @given(st.lists(values, min_size=1, max_size=8), st.data())
    def test_response_chunking(self, replies: List[bytes], data: Any) -> None:
        """Any chunking of a valid stream of nested replies yields each reply exactly."""
        stream = b"".join(replies)
        answers = [x for x in replies if not x.startswith(b">")]
        self.assertEqual(RespResponseFramer().feed(stream), answers)
        r = RespResponseFramer()
        self.assertEqual(feed_chunks(r, stream, data.draw(cut_points(stream))), answers)
        self.assertEqual(r.unsolicited, [x for x in replies if x.startswith(b">")])
        self.assertIsNone(r.error)
        self.assertEqual(r.pending(), 0)

    @PROPERTY
    @given(st.binary(max_size=300), st.data())
    def test_request_garbage(self, garbage: bytes, data: Any) -> None:
        """
        Random bytes in random chunks never raise and give the same frames and
        the same outcome as one feed; after an error nothing more comes out.
        """
        prefix = data.draw(st.sampled_from([b"", b"*", b"*2\r\n", b"*1\r\n$"]))
        stream = prefix + garbage
        whole = framer(max_size=1000)
        expected = [as_tuple(x) for x in whole.feed(stream)]
        f = framer(max_size=1000)
        got = [as_tuple(x) for x in feed_chunks(f, stream, data.draw(cut_points(stream)))]
        self.assertEqual(got, expected)
        self.assertEqual(f.error is None, whole.error is None)
        if f.error is not None:
            self.assertIn(f.error.kind, ("malformed", "too_large"))
            self.assertEqual(f.feed(b"PING\r\n"), [])
        else:
            self.assertLessEqual(f.pending(), len(stream))

    @PROPERTY
    @given(st.binary(max_size=300), st.data())
    def test_response_garbage(self, garbage: bytes, data: Any) -> None:
        """Random bytes in random chunks never raise and match one feed's outcome."""
        prefix = data.draw(st.sampled_from([b"", b"*2\r\n", b"%1\r\n", b"|1\r\n", b"$"]))
        stream = prefix + garbage
        whole = RespResponseFramer()
        expected = whole.feed(stream)
        r = RespResponseFramer()
        self.assertEqual(feed_chunks(r, stream, data.draw(cut_points(stream))), expected)
        self.assertEqual(r.error is None, whole.error is None)
        if r.error is not None:
            self.assertEqual(r.feed(b"+OK\r\n"), [])

    @PROPERTY
    @given(st.lists(st.lists(st.binary(max_size=40), min_size=1, max_size=6), min_size=1,
                    max_size=10))
    def test_round_trip(self, commands: List[List[bytes]]) -> None:
        """Arg lists encoded as RESP come back as frames whose data is the input."""
        commands = [c for c in commands if c[0].upper() not in (b"AUTH", b"HELLO")]
        stream = b"".join(encode_command(c) for c in commands)
        frames = framer(policy=PIN_ALL).feed(stream)
        self.assertEqual(len(frames), len(commands))
        self.assertEqual(b"".join(x.data for x in frames), stream)
        for frame, args in zip(frames, commands):
            if not frame.flags & LOCAL and args[0].upper() not in redis.COMMANDS:
                self.assertEqual(frame.key, args[1] if len(args) > 1 else None)


class FastPathTests(SynchronousTestCase):
    """
    The split fast path (on for CPython, off for PyPy) and the general loop
    frame every stream alike: same frames, flags, keys, errors and leftovers.
    """

    def frames_both_ways(self, stream: bytes, cuts: List[int]) -> Any:
        outcomes = []
        for split_max in (64 * 1024, -1):
            self.patch(redis, "_SPLIT_MAX", split_max)
            f = framer(max_size=1000)
            frames = [as_tuple(x) for x in feed_chunks(f, stream, cuts)]
            outcomes.append((frames, f.error and (f.error.kind, f.error.message), f.pending()))
        return outcomes

    @PROPERTY
    @given(st.data())
    def test_valid_streams(self, data: Any) -> None:
        stream = data.draw(request_streams())
        fast, general = self.frames_both_ways(stream, data.draw(cut_points(stream)))
        self.assertEqual(fast, general)

    @PROPERTY
    @given(st.binary(max_size=300), st.data())
    def test_garbage_after_valid_requests(self, garbage: bytes, data: Any) -> None:
        prefix = data.draw(st.sampled_from([b"", encode_command([b"GET", b"k"]),
                                            encode_command([b"SET", b"k", b"v\r\nv"]),
                                            b"*2\r\n$3\r\nGET\r\n$1\r\n"]))
        stream = prefix + garbage
        fast, general = self.frames_both_ways(stream, data.draw(cut_points(stream)))
        self.assertEqual(fast, general)

    def test_fast_path_edges(self) -> None:
        for stream in (
            b"*1\r\n$4\r\nPING\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n",   # two plain
            b"*2\r\n$3\r\nGET\r\n$3\r\na\r\nb\r\n",                   # CRLF inside a value
            b"*2\r\n$3\r\nGET\r\n$01\r\nk\r\n",                       # leading zero
            b"*01\r\n$4\r\nPING\r\n",                                 # leading zero count
            b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2000\r\n" + b"v" * 2000 + b"\r\n",  # too large
            b"*1\r\n$5\r\nMULTI\r\n*1\r\n$4\r\nPING\r\n",             # a special command
            b"PING\r\n*1\r\n$4\r\nPING\r\n",                          # inline first
            b"*2\r\n$3\r\nGET\r\n$1\r\nk",                            # cut short
        ):
            fast, general = self.frames_both_ways(stream, [])
            self.assertEqual(fast, general, stream)


class CommandPolicyTests(SynchronousTestCase):
    """deny_commands, allow_commands and unknown_commands, in the framer."""

    def one(self, f: RespRequestFramer, *args: str) -> Frame:
        [frame] = f.feed(cmd(*args))
        return frame

    def test_default_denies_server_administration(self) -> None:
        """
        By default SHUTDOWN, CONFIG, DEBUG, FLUSHALL, MONITOR, SYNC, REPLCONF
        and CLIENT KILL are answered by the proxy, counted by name, never sent.
        """
        f = framer()
        for args in (("SHUTDOWN", "NOSAVE"), ("config", "get", "requirepass"), ("DEBUG", "SLEEP", "0"),
                     ("FLUSHALL",), ("MONITOR",), ("SYNC",), ("REPLCONF", "ACK", "0"),
                     ("CLIENT", "KILL", "ID", "1"), ("client", "pause", "10")):
            frame = self.one(f, *args)
            self.assertEqual(frame.flags, LOCAL | REFUSED, args)
            name = " ".join(args[:2] if args[0].upper() == "CLIENT" else args[:1]).upper()
            self.assertEqual(frame.key, name.encode(), args)
            self.assertTrue(frame.reply.startswith(b"-ERR poolproxy: the '%s' command is refused"
                                                   % name.lower().encode()), frame.reply)
        self.assertFalse(f.pinned)  # MONITOR and SYNC were refused: no pass-through
        self.assertEqual(self.one(f, "CLIENT", "LIST").flags, 0)  # other subcommands pass
        self.assertEqual(self.one(f, "GET", "k").flags, RETRY_SAFE)

    def test_allow_takes_out_of_the_default(self) -> None:
        """allow_commands lets a denied command through, and only it."""
        f = framer(policy=CommandPolicy(allow=("CONFIG", "client|kill")))
        self.assertEqual(self.one(f, "CONFIG", "GET", "x").flags, 0)
        self.assertEqual(self.one(f, "CLIENT", "KILL", "ID", "1").flags, 0)
        self.assertEqual(self.one(f, "SHUTDOWN").flags, LOCAL | REFUSED)

    def test_deny_replaces_the_default(self) -> None:
        """A configured deny list is the whole list: others pass, those named are refused."""
        f = framer(policy=CommandPolicy(deny=("KEYS", "SCRIPT FLUSH", "GET")))
        self.assertEqual(self.one(f, "KEYS", "*").flags, LOCAL | REFUSED)
        self.assertEqual(self.one(f, "get", "k").flags, LOCAL | REFUSED)  # the fast path too
        self.assertEqual(self.one(f, "SCRIPT", "FLUSH").key, b"SCRIPT FLUSH")
        self.assertEqual(self.one(f, "SCRIPT", "LOAD", "x").flags, 0)
        self.assertEqual(self.one(f, "CONFIG", "GET", "x").flags, 0)

    def test_unauthenticated_clients_get_noauth(self) -> None:
        """Before AUTH every command, denied or not, gets NOAUTH: nothing is counted."""
        frame = self.one(framer(b"pw"), "SHUTDOWN")
        self.assertEqual((frame.flags, frame.reply[:7]), (LOCAL, b"-NOAUTH"))

    def test_every_redis_70_command_is_known(self) -> None:
        """The table knows all 240 commands redis 7.0's COMMAND lists (none is 'unknown')."""
        names = """ACL APPEND ASKING AUTH BGREWRITEAOF BGSAVE BITCOUNT BITFIELD BITFIELD_RO
        BITOP BITPOS BLMOVE BLMPOP BLPOP BRPOP BRPOPLPUSH BZMPOP BZPOPMAX BZPOPMIN CLIENT CLUSTER
        COMMAND CONFIG COPY DBSIZE DEBUG DECR DECRBY DEL DISCARD DUMP ECHO EVAL EVALSHA EVALSHA_RO
        EVAL_RO EXEC EXISTS EXPIRE EXPIREAT EXPIRETIME FAILOVER FCALL FCALL_RO FLUSHALL FLUSHDB
        FUNCTION GEOADD GEODIST GEOHASH GEOPOS GEORADIUS GEORADIUSBYMEMBER GEORADIUSBYMEMBER_RO
        GEORADIUS_RO GEOSEARCH GEOSEARCHSTORE GET GETBIT GETDEL GETEX GETRANGE GETSET HDEL HELLO
        HEXISTS HGET HGETALL HINCRBY HINCRBYFLOAT HKEYS HLEN HMGET HMSET HRANDFIELD HSCAN HSET
        HSETNX HSTRLEN HVALS INCR INCRBY INCRBYFLOAT INFO KEYS LASTSAVE LATENCY LCS LINDEX LINSERT
        LLEN LMOVE LMPOP LOLWUT LPOP LPOS LPUSH LPUSHX LRANGE LREM LSET LTRIM MEMORY MGET MIGRATE
        MODULE MONITOR MOVE MSET MSETNX MULTI OBJECT PERSIST PEXPIRE PEXPIREAT PEXPIRETIME PFADD
        PFCOUNT PFDEBUG PFMERGE PFSELFTEST PING PSETEX PSUBSCRIBE PSYNC PTTL PUBLISH PUBSUB
        PUNSUBSCRIBE QUIT RANDOMKEY READONLY READWRITE RENAME RENAMENX REPLCONF REPLICAOF RESET
        RESTORE RESTORE-ASKING ROLE RPOP RPOPLPUSH RPUSH RPUSHX SADD SAVE SCAN SCARD SCRIPT SDIFF
        SDIFFSTORE SELECT SET SETBIT SETEX SETNX SETRANGE SHUTDOWN SINTER SINTERCARD SINTERSTORE
        SISMEMBER SLAVEOF SLOWLOG SMEMBERS SMISMEMBER SMOVE SORT SORT_RO SPOP SPUBLISH SRANDMEMBER
        SREM SSCAN SSUBSCRIBE STRLEN SUBSCRIBE SUBSTR SUNION SUNIONSTORE SUNSUBSCRIBE SWAPDB SYNC
        TIME TOUCH TTL TYPE UNLINK UNSUBSCRIBE UNWATCH WAIT WATCH XACK XADD XAUTOCLAIM XCLAIM XDEL
        XGROUP XINFO XLEN XPENDING XRANGE XREAD XREADGROUP XREVRANGE XSETID XTRIM ZADD ZCARD ZCOUNT
        ZDIFF ZDIFFSTORE ZINCRBY ZINTER ZINTERCARD ZINTERSTORE ZLEXCOUNT ZMPOP ZMSCORE ZPOPMAX
        ZPOPMIN ZRANDMEMBER ZRANGE ZRANGEBYLEX ZRANGEBYSCORE ZRANGESTORE ZRANK ZREM ZREMRANGEBYLEX
        ZREMRANGEBYRANK ZREMRANGEBYSCORE ZREVRANGE ZREVRANGEBYLEX ZREVRANGEBYSCORE ZREVRANK ZSCAN
        ZSCORE ZUNION ZUNIONSTORE""".split()
        self.assertEqual(len(names), 240)
        self.assertEqual([n for n in names if n.encode() not in redis.COMMANDS], [])


class UnsubscribeTests(SynchronousTestCase):
    """(P|S)UNSUBSCRIBE from a client subscribed to nothing: answered as redis would."""

    def test_one_reply_per_channel(self) -> None:
        [frame] = framer().feed(cmd("UNSUBSCRIBE", "a", "bc"))
        self.assertEqual(frame.flags, LOCAL)
        self.assertEqual(frame.reply, b"*3\r\n$11\r\nunsubscribe\r\n$1\r\na\r\n:0\r\n"
                                      b"*3\r\n$11\r\nunsubscribe\r\n$2\r\nbc\r\n:0\r\n")

    def test_without_channels(self) -> None:
        [frame] = framer().feed(cmd("PUNSUBSCRIBE"))
        self.assertEqual(frame.reply, b"*3\r\n$12\r\npunsubscribe\r\n$-1\r\n:0\r\n")

    def test_resp3_pushes(self) -> None:
        """After HELLO 3 they are push messages, with a null channel as RESP3's null."""
        f = framer()
        f.feed(cmd("HELLO", "3"))
        [frame] = f.feed(cmd("SUNSUBSCRIBE"))
        self.assertEqual(frame.reply, b">3\r\n$12\r\nsunsubscribe\r\n_\r\n:0\r\n")
        [frame] = f.feed(cmd("UNSUBSCRIBE", "x"))
        self.assertEqual(frame.reply, b">3\r\n$11\r\nunsubscribe\r\n$1\r\nx\r\n:0\r\n")

    def test_subscribed_or_in_a_transaction(self) -> None:
        """A subscribed client's UNSUBSCRIBE, and one inside MULTI, go to its own connection."""
        f = framer()
        f.feed(cmd("SUBSCRIBE", "a"))
        self.assertEqual(f.feed(cmd("UNSUBSCRIBE", "a"))[0].flags, PIN)
        f = framer()
        f.feed(cmd("MULTI"))
        self.assertEqual(f.feed(cmd("UNSUBSCRIBE"))[0].flags, PIN)

    def test_several_channels_in_a_transaction(self) -> None:
        """
        Queued, UNSUBSCRIBE a b is answered at EXEC by an element of EXEC's
        array and a reply of its own per channel past the first: the
        client's connection becomes a raw pipe, with no count to get wrong.
        """
        f = framer()
        f.feed(cmd("MULTI"))
        self.assertEqual(f.feed(cmd("UNSUBSCRIBE", "a"))[0].flags, PIN)
        [frame] = f.feed(cmd("PUNSUBSCRIBE", "a", "b"))
        self.assertEqual(frame.flags, PIN | PASSTHROUGH)
        self.assertTrue(f.pinned)


class WaitTimeTests(SynchronousTestCase):
    """How long each blocking command may wait by its own arguments."""

    def wait(self, *args: str) -> Optional[float]:
        [frame] = framer().feed(cmd(*args))
        self.assertTrue(frame.flags & BLOCKING, args)
        return redis.codec.wait_time(frame)

    def test_seconds_and_milliseconds(self) -> None:
        self.assertEqual(self.wait("BLPOP", "a", "b", "1.5"), 1.5)
        self.assertEqual(self.wait("BLMOVE", "a", "b", "LEFT", "RIGHT", "2"), 2.0)
        self.assertEqual(self.wait("BLMPOP", "3", "1", "q", "LEFT"), 3.0)
        self.assertEqual(self.wait("BZMPOP", "0.25", "1", "z", "MIN"), 0.25)
        self.assertEqual(self.wait("WAIT", "1", "500"), 0.5)
        self.assertEqual(self.wait("WAITAOF", "1", "0", "250"), 0.25)
        self.assertEqual(self.wait("XREAD", "COUNT", "1", "block", "100", "STREAMS", "s", "$"), 0.1)

    def test_zero_is_forever(self) -> None:
        self.assertIsNone(self.wait("BRPOP", "q", "0"))
        self.assertIsNone(self.wait("XREADGROUP", "GROUP", "g", "c", "BLOCK", "0", "STREAMS",
                                    "s", ">"))

    def test_bad_timeouts_are_instant(self) -> None:
        """What redis refuses at once waits for nothing."""
        self.assertEqual(self.wait("BLPOP", "q", "soon"), 0.0)
        self.assertEqual(self.wait("BLPOP", "q", "-1"), 0.0)
        self.assertEqual(self.wait("BLPOP", "q", "nan"), 0.0)


class ReplySizeLimitTests(SynchronousTestCase):
    """max_reply_size: what the response framer may hold of one reply."""

    def framer(self, limit: int) -> RespResponseFramer:
        f = RespResponseFramer()
        f.max_reply_size = limit
        return f

    def test_large_bulk_refused_and_skipped_unheld(self) -> None:
        """
        A bulk reply past the limit is answered with the error from its
        header on; its body is skipped as it comes, never held; the replies
        after it are framed as usual.
        """
        f = self.framer(1000)
        counted: List[int] = []
        f.on_too_large = lambda: counted.append(1)
        self.assertEqual(f.feed(b"+OK\r\n$5000\r\n" + b"x" * 100),
                         [b"+OK\r\n", b"-ERR poolproxy: reply too large (more than max_reply_size,"
                                      b" 1000 bytes)\r\n"])
        for _ in range(48):
            self.assertEqual(f.feed(b"x" * 100), [])
            self.assertEqual(f.pending(), 0)
        self.assertEqual(f.feed(b"x" * 100 + b"\r\n:1\r\n"), [b":1\r\n"])
        self.assertEqual(counted, [1])
        self.assertIsNone(f.error)

    def test_large_aggregate_of_small_elements(self) -> None:
        """An array growing past the limit feed by feed is refused once, the rest skipped."""
        f = self.framer(100)
        element = b"$10\r\n" + b"e" * 10 + b"\r\n"
        out = f.feed(b"*50\r\n")
        for _ in range(49):
            out += f.feed(element)
            self.assertLessEqual(f.pending(), 100 + len(element))
        out += f.feed(element + b"+NEXT\r\n")
        self.assertEqual(out, [_too_large_reply(100), b"+NEXT\r\n"])

    def test_under_the_limit_passes_whole(self) -> None:
        f = self.framer(100)
        reply = b"*2\r\n$40\r\n" + b"a" * 40 + b"\r\n$40\r\n" + b"b" * 40 + b"\r\n"
        self.assertEqual(feed_chunks(f, reply, range(0, len(reply), 7)), [reply])

    @PROPERTY
    @given(st.lists(values.filter(lambda v: not v.startswith(b">")), min_size=1, max_size=8),
           st.integers(5, 80), st.integers(1, 16))
    def test_any_chunking_bounded(self, replies: List[bytes], limit: int, chunk: int) -> None:
        """
        Fed in chunks of C{chunk} bytes: every reply within the limit comes
        whole, every reply well past it (by more than a chunk and a line)
        becomes the error, one answer per reply, in order; and the framer
        never holds much more than the limit.
        """
        f = self.framer(limit)
        stream = b"".join(replies)
        out: List[bytes] = []
        for i in range(0, len(stream), chunk):
            out += f.feed(stream[i:i + chunk])
            self.assertLessEqual(f.pending(), limit + chunk + 64)
        self.assertIsNone(f.error)
        self.assertEqual(len(out), len(replies))
        for reply, got in zip(replies, out):
            if len(reply) <= limit:
                self.assertEqual(got, reply)
            elif len(reply) > limit + chunk + 64:
                self.assertEqual(got, _too_large_reply(limit))
            else:
                self.assertIn(got, (reply, _too_large_reply(limit)))


def _too_large_reply(limit: int) -> bytes:
    return b"-ERR poolproxy: reply too large (more than max_reply_size, %d bytes)\r\n" % limit
