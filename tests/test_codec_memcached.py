"""
Tests for L{poolproxy.codecs.memcached}: the memcached text protocol codec.
"""

from __future__ import annotations

import base64
from typing import List, Optional, Sequence, Tuple

from hypothesis import given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from poolproxy.codec import (CLOSE, ERROR_KINDS, LOCAL, REFUSED, RETRY_SAFE, Frame,
                             FramingError, ICodec, IRequestFramer, IResponseFramer)
from poolproxy.codecs.memcached import (BAD_FORMAT, ERROR_LINE, LINE, MAX_LINE, META,
                                        QUIET_UNSUPPORTED, STATS, VALUES, CommandPolicy,
                                        MemcachedCodec, MemcachedRequestFramer,
                                        MemcachedResponseFramer, codec)

PROPERTY = settings(max_examples=200, deadline=None)
MAX = 4096

Shape = Tuple[bytes, int, object, int, object, bytes]


def shape(frame: Frame) -> Shape:
    return (frame.data, frame.replies, frame.key, frame.flags, frame.expect, frame.reply)


def feed_chunks(framer: MemcachedRequestFramer, chunks: Sequence[bytes]) -> List[Frame]:
    frames: List[Frame] = []
    for chunk in chunks:
        frames.extend(framer.feed(chunk))
    return frames


#: A policy that refuses nothing: the framing tests see every command's own frame.
ALLOW_ALL = CommandPolicy(deny=())


def frames_of(data: bytes, max_request_size: int = MAX,
              policy: Optional[CommandPolicy] = None) -> List[Frame]:
    framer = MemcachedRequestFramer(max_request_size, policy or ALLOW_ALL)
    frames = framer.feed(data)
    assert framer.error is None, framer.error
    assert framer.pending() == 0
    return frames


def one(data: bytes) -> Frame:
    [frame] = frames_of(data)
    return frame


def _error(error: Optional[FramingError]) -> Optional[Tuple[str, str]]:
    return None if error is None else (error.kind, error.message)


def _kind(error: Optional[FramingError]) -> Optional[str]:
    return None if error is None else error.kind


def bytewise(data: bytes) -> List[bytes]:
    return [data[i:i + 1] for i in range(len(data))]


def split_at(data: bytes, cuts: Sequence[int]) -> List[bytes]:
    points = [0] + sorted(cuts) + [len(data)]
    return [data[a:b] for a, b in zip(points, points[1:])]


class RetrievalTests(SynchronousTestCase):
    """
    get, gets, gat and gats: one line, a values response, the first key.
    """

    def test_get(self) -> None:
        """
        A get is one frame: the line, one reply, its key, retry-safe, a
        values response.
        """
        self.assertEqual(shape(one(b"get foo\r\n")),
                         (b"get foo\r\n", 1, b"foo", RETRY_SAFE, VALUES, b""))

    def test_multi_key_get(self) -> None:
        """
        A multi-key get is still one frame (one response, ending in END), keyed
        by its first key; repeated spaces are allowed as memcached allows them.
        """
        frame = one(b"get a  b c\r\n")
        self.assertEqual((frame.key, frame.replies, frame.expect), (b"a", 1, VALUES))

    def test_gets(self) -> None:
        """
        gets frames like get.
        """
        self.assertEqual(shape(one(b"gets a b\r\n")),
                         (b"gets a b\r\n", 1, b"a", RETRY_SAFE, VALUES, b""))

    def test_gat_and_gats(self) -> None:
        """
        gat and gats take an exptime first: the key is the first token after
        it, and, since they touch, they are not retry-safe.
        """
        for cmd in (b"gat", b"gats"):
            frame = one(cmd + b" 300 k1 k2\r\n")
            self.assertEqual((frame.key, frame.replies, frame.flags, frame.expect),
                             (b"k1", 1, 0, VALUES))

    def test_get_without_key(self) -> None:
        """
        get with no key, or gat with no key after the exptime, is answered
        locally with ERROR, as memcached answers it.
        """
        for line in (b"get\r\n", b"gat 10\r\n", b"gets \r\n"):
            self.assertEqual(shape(one(line)), (line, 0, None, LOCAL, None, ERROR_LINE))

    def test_bare_newline(self) -> None:
        """
        A command line may end with a bare newline, as memcached accepts; the
        frame keeps the client's bytes unchanged.
        """
        frames = frames_of(b"get a\nget b\r\n")
        self.assertEqual([(f.data, f.key) for f in frames],
                         [(b"get a\n", b"a"), (b"get b\r\n", b"b")])


class StorageTests(SynchronousTestCase):
    """
    set, add, replace, append, prepend and cas: a line and a data block.
    """

    def test_storage_commands(self) -> None:
        """
        Each storage command is one frame of its line and its data block, even
        when the data holds CR LF and command-like bytes.
        """
        block = b"a\r\nget x\r\n\r\n"
        for cmd in (b"set", b"add", b"replace", b"append", b"prepend"):
            data = cmd + b" k 5 0 %d\r\n" % (len(block),) + block + b"\r\n"
            self.assertEqual(shape(one(data)), (data, 1, b"k", 0, LINE, b""))

    def test_empty_block(self) -> None:
        """
        A zero-length data block is still followed by CR LF.
        """
        self.assertEqual(one(b"set k 0 0 0\r\n\r\n").data, b"set k 0 0 0\r\n\r\n")

    def test_noreply(self) -> None:
        """
        noreply as the last token means memcached sends no response: replies=0.
        """
        frame = one(b"set k 0 0 1 noreply\r\nx\r\n")
        self.assertEqual((frame.replies, frame.key), (0, b"k"))

    def test_cas(self) -> None:
        """
        cas carries a unique value before the optional noreply.
        """
        frame = one(b"cas k 1 2 3 99\r\nabc\r\n")
        self.assertEqual(shape(frame), (b"cas k 1 2 3 99\r\nabc\r\n", 1, b"k", 0, LINE, b""))
        self.assertEqual(one(b"cas k 1 2 3 99 noreply\r\nabc\r\n").replies, 0)

    def test_numbers_as_memcached_reads_them(self) -> None:
        """
        A negative exptime and a leading plus sign are accepted, as strtol
        accepts them.
        """
        self.assertEqual(one(b"set k 0 -1 +2\r\nab\r\n").key, b"k")

    def test_block_waits(self) -> None:
        """
        Nothing is returned until the whole block and its CR LF have arrived;
        pending() counts what is held.
        """
        framer = MemcachedRequestFramer(MAX)
        self.assertEqual(framer.feed(b"set k 0 0 10\r\n01234"), [])
        self.assertEqual(framer.pending(), 19)
        self.assertEqual(framer.feed(b"56789\r"), [])
        [frame] = framer.feed(b"\nget a\r\n"[:1])
        self.assertEqual(frame.data, b"set k 0 0 10\r\n0123456789\r\n")
        self.assertEqual(framer.pending(), 0)

    def test_large_block_in_small_chunks(self) -> None:
        """
        A block fed in many small chunks is framed once, whole; the chunks are
        held, not joined on every feed.
        """
        block = bytes(range(256)) * 1024
        data = b"set big 0 0 %d\r\n" % (len(block),) + block + b"\r\n"
        framer = MemcachedRequestFramer(len(block))
        frames = feed_chunks(framer, [data[i:i + 1000] for i in range(0, len(data), 1000)])
        self.assertEqual([f.data for f in frames], [data])

    def test_bad_data_chunk(self) -> None:
        """
        A block not followed by CR LF at exactly <bytes> is malformed: the
        stream cannot be trusted any further.  A bare newline does not do.
        """
        for data in (b"set k 0 0 3\r\nabcd\r\n", b"set k 0 0 3\r\nabc\nget x\r\n"):
            framer = MemcachedRequestFramer(MAX)
            self.assertEqual(framer.feed(b"get a\r\n" + data)[0].key, b"a")
            self.assertEqual(_error(framer.error), ("malformed", "bad data chunk"))
            self.assertEqual(framer.feed(b"get b\r\n"), [])

    def test_bad_numbers(self) -> None:
        """
        A storage line whose numbers or token count are wrong is malformed,
        since where its block ends is unknown.
        """
        for line in (b"set k 0 0 x\r\n", b"set k 0 0 -1\r\n", b"set k a 0 1\r\n",
                     b"set k 0 z 1\r\n", b"set k 0 0\r\n", b"set k 0 0 1 noreply x\r\n",
                     b"cas k 0 0 1\r\n", b"cas k 0 0 1 x\r\n", b"set k 0 0 2147483646\r\n",
                     b"set k 0 0 " + b"9" * 5000 + b"\r\n", b"set\r\n"):
            framer = MemcachedRequestFramer(2 ** 40)
            self.assertEqual(framer.feed(line), [])
            self.assertEqual(_error(framer.error), ("malformed", "bad command line format"), line)

    def test_too_large(self) -> None:
        """
        A block larger than max_request_size is refused as soon as the line is
        read, without waiting for (or holding) the block.
        """
        self.assertEqual(len(frames_of(b"set k 0 0 100\r\n" + b"x" * 100 + b"\r\n", 100)), 1)
        framer = MemcachedRequestFramer(100)
        self.assertEqual(framer.feed(b"set k 0 0 101\r\n"), [])
        self.assertEqual(_kind(framer.error), "too_large")
        self.assertEqual(framer.pending(), 0)

    def test_bad_key_swallows_block(self) -> None:
        """
        A storage command with a bad key but a readable size is answered
        locally, its block swallowed, and the stream goes on; with noreply
        the local answer is empty, as memcached says nothing.
        """
        data = b"set " + b"k" * 251 + b" 0 0 3\r\nabc\r\nget a\r\n"
        local, get = frames_of(data)
        self.assertEqual(shape(local), (data[:-7], 0, None, LOCAL, None, BAD_FORMAT))
        self.assertEqual(get.key, b"a")
        [quiet] = frames_of(b"set k\x01 0 0 3 noreply\r\nabc\r\n")
        self.assertEqual((quiet.flags, quiet.reply), (LOCAL, b""))


class LineCommandTests(SynchronousTestCase):
    """
    delete, incr, decr, touch and the keyless line commands.
    """

    def test_delete(self) -> None:
        """
        delete takes a key, an optional legacy 0 and an optional noreply.
        """
        self.assertEqual(shape(one(b"delete k\r\n")), (b"delete k\r\n", 1, b"k", 0, LINE, b""))
        self.assertEqual(one(b"delete k 0\r\n").replies, 1)
        self.assertEqual(one(b"delete k noreply\r\n").replies, 0)
        self.assertEqual(one(b"delete k 0 noreply\r\n").replies, 0)
        self.assertEqual(one(b"delete noreply\r\n").replies, 1)  # the key is "noreply"

    def test_arithmetic_and_touch(self) -> None:
        """
        incr, decr and touch take a key and a number, and an optional noreply.
        """
        for cmd in (b"incr", b"decr", b"touch"):
            frame = one(cmd + b" n 5\r\n")
            self.assertEqual((frame.key, frame.replies, frame.expect), (b"n", 1, LINE))
            self.assertEqual(one(cmd + b" n 5 noreply\r\n").replies, 0)

    def test_wrong_token_count(self) -> None:
        """
        A line command with the wrong number of tokens gets memcached's own
        answer, ERROR, locally; the stream goes on.
        """
        for line in (b"delete\r\n", b"delete a b c d\r\n", b"incr k\r\n",
                     b"touch k 1 2 3\r\n", b"verbosity\r\n", b"flush_all 1 2 3\r\n"):
            self.assertEqual(shape(one(line)), (line, 0, None, LOCAL, None, ERROR_LINE))

    def test_keyless(self) -> None:
        """
        version, verbosity and flush_all have no key; version is retry-safe.
        """
        self.assertEqual(shape(one(b"version\r\n")),
                         (b"version\r\n", 1, None, RETRY_SAFE, LINE, b""))
        self.assertEqual(shape(one(b"verbosity 1\r\n")),
                         (b"verbosity 1\r\n", 1, None, 0, LINE, b""))
        self.assertEqual(one(b"verbosity 1 noreply\r\n").replies, 0)
        for line, replies in ((b"flush_all\r\n", 1), (b"flush_all 10\r\n", 1),
                              (b"flush_all noreply\r\n", 0), (b"flush_all 10 noreply\r\n", 0)):
            frame = one(line)
            self.assertEqual((frame.key, frame.replies, frame.expect), (None, replies, LINE))

    def test_stats(self) -> None:
        """
        stats expects STAT lines then END, except stats reset and stats detail
        on|off, which answer one line.
        """
        self.assertEqual(shape(one(b"stats\r\n")), (b"stats\r\n", 1, None, RETRY_SAFE, STATS, b""))
        self.assertEqual(one(b"stats slabs\r\n").expect, STATS)
        self.assertEqual(one(b"stats detail dump\r\n").expect, STATS)
        self.assertEqual(one(b"stats reset\r\n").expect, LINE)
        self.assertEqual(one(b"stats detail on\r\n").expect, LINE)

    def test_quit(self) -> None:
        """
        quit is answered locally by closing, with nothing to write; nothing
        after it is framed, as memcached runs nothing after it.
        """
        framer = MemcachedRequestFramer(MAX)
        frames = framer.feed(b"get a\r\nquit\r\nget b\r\n")
        self.assertEqual([shape(f) for f in frames[1:]],
                         [(b"quit\r\n", 0, None, LOCAL | CLOSE, None, b"")])
        self.assertEqual(framer.feed(b"get c\r\n"), [])
        self.assertEqual(framer.pending(), 0)

    def test_unknown_command(self) -> None:
        """
        An unknown command, an upper-case one or an empty line gets ERROR,
        locally, and the stream goes on.
        """
        frames = frames_of(b"bogus 1 2\r\nGET a\r\n\r\n\nget a\r\n")
        self.assertEqual([(f.flags, f.reply) for f in frames[:4]], [(LOCAL, ERROR_LINE)] * 4)
        self.assertEqual(frames[4].key, b"a")

    def test_line_too_long(self) -> None:
        """
        A command line longer than 8 KiB is too large, whether or not its end
        has arrived.
        """
        framer = MemcachedRequestFramer(MAX)
        self.assertEqual(framer.feed(b"get " + b"k" * MAX_LINE), [])
        self.assertEqual(_kind(framer.error), "too_large")
        framer = MemcachedRequestFramer(MAX)
        framer.feed(b"get a\r\nget " + b"k " * MAX_LINE + b"\r\n")
        self.assertEqual(_kind(framer.error), "too_large")
        # A long multi-get within the limit is fine.
        self.assertEqual(one(b"get " + b"k " * 4000 + b"\r\n").key, b"k")


class KeyTests(SynchronousTestCase):
    """
    Keys are at most 250 bytes, without spaces or control characters.
    """

    def test_length(self) -> None:
        """
        A 250-byte key is accepted; 251 bytes is answered locally with
        CLIENT_ERROR, for any key of a multi-get too.
        """
        self.assertEqual(one(b"get " + b"k" * 250 + b"\r\n").key, b"k" * 250)
        for line in (b"get " + b"k" * 251 + b"\r\n", b"get a b " + b"k" * 251 + b"\r\n",
                     b"gat 1 a " + b"k" * 251 + b"\r\n",
                     b"delete " + b"k" * 251 + b"\r\n", b"mg " + b"k" * 251 + b" v\r\n"):
            self.assertEqual(shape(one(line)), (line, 0, None, LOCAL, None, BAD_FORMAT))

    def test_control_characters(self) -> None:
        """
        A key with a control character (tab, NUL, DEL...) is answered locally
        and never sent: memcached would read it differently (a NUL ends its
        line).
        """
        for line in (b"get a\tb\r\n", b"get a\x00\r\n", b"touch a\x7f 1\r\n", b"mg a\x1b v\r\n"):
            self.assertEqual(shape(one(line)), (line, 0, None, LOCAL, None, BAD_FORMAT))

    def test_noreply_bad_key(self) -> None:
        """
        With noreply, a bad key gets the silence memcached would give.
        """
        self.assertEqual(one(b"delete " + b"k" * 251 + b" noreply\r\n").reply, b"")
        self.assertEqual(one(b"incr a\tb 1 noreply\r\n").reply, b"")

    def test_high_bytes(self) -> None:
        """
        Bytes above 127 (UTF-8 keys) are allowed.
        """
        key = "clé".encode("utf-8")
        self.assertEqual(one(b"get " + key + b"\r\n").key, key)


class MetaTests(SynchronousTestCase):
    """
    Meta commands, without quiet mode.
    """

    def test_mg(self) -> None:
        """
        mg is keyed, expects a meta response, and is retry-safe unless a flag
        changes the item (T, N, R).
        """
        self.assertEqual(shape(one(b"mg foo v t f\r\n")),
                         (b"mg foo v t f\r\n", 1, b"foo", RETRY_SAFE, META, b""))
        for flag in (b"T30", b"N30", b"R30"):
            self.assertEqual(one(b"mg foo v " + flag + b"\r\n").flags, 0)

    def test_base64_key(self) -> None:
        """
        With the b flag, the key routes as the binary key it encodes.
        """
        encoded = base64.b64encode(b"\x00bin key")
        self.assertEqual(one(b"mg " + encoded + b" b v\r\n").key, b"\x00bin key")
        self.assertEqual(one(b"md !!! b\r\n").key, b"")  # as a lenient decoder reads it
        self.assertEqual(one(b"md abc b\r\n").key, b"abc")  # undecodable: kept as sent

    def test_ms(self) -> None:
        """
        ms carries a data block of <datalen> bytes, CR LF inside included.
        """
        data = b"ms foo 4 T90 F5\r\n\r\n\r\n\r\n"
        self.assertEqual(shape(one(data)), (data, 1, b"foo", 0, META, b""))

    def test_ms_malformed(self) -> None:
        """
        ms without a readable datalen is malformed; too large a datalen is
        too large.
        """
        for line, kind in ((b"ms foo\r\n", "malformed"), (b"ms foo x\r\n", "malformed"),
                           (b"ms foo -1\r\n", "malformed"), (b"ms\r\n", "malformed"),
                           (b"ms foo %d\r\n" % (MAX + 1,), "too_large")):
            framer = MemcachedRequestFramer(MAX)
            self.assertEqual(framer.feed(line), [])
            self.assertEqual(_kind(framer.error), kind)

    def test_md_ma_mn_me(self) -> None:
        """
        md, ma and me are keyed meta commands; mn has no key.
        """
        self.assertEqual(shape(one(b"md foo\r\n")), (b"md foo\r\n", 1, b"foo", 0, META, b""))
        self.assertEqual(shape(one(b"ma foo MD D5 v\r\n")),
                         (b"ma foo MD D5 v\r\n", 1, b"foo", 0, META, b""))
        self.assertEqual(shape(one(b"mn\r\n")), (b"mn\r\n", 1, None, RETRY_SAFE, META, b""))
        self.assertEqual(shape(one(b"me foo\r\n")),
                         (b"me foo\r\n", 1, b"foo", RETRY_SAFE, META, b""))

    def test_quiet(self) -> None:
        """
        The q flag is refused locally (it breaks one response per request);
        an ms block is swallowed with it and the stream goes on.
        """
        for line in (b"mg foo v q\r\n", b"md foo q\r\n", b"ma foo q\r\n", b"ms foo 2 q\r\nhi\r\n"):
            frame, after = frames_of(line + b"mn\r\n")
            self.assertEqual(shape(frame), (line, 0, None, LOCAL, None, QUIET_UNSUPPORTED))
            self.assertEqual(after.data, b"mn\r\n")

    def test_key_q_is_not_quiet(self) -> None:
        """
        Only flags are looked at for q: a key or an opaque starting with q is
        fine.
        """
        self.assertEqual(one(b"mg quux Oq v\r\n").key, b"quux")

    def test_bad_key_and_too_many_flags(self) -> None:
        """
        A bad key or more flags than memcached takes is answered locally; an
        ms block is swallowed with it (memcached would not swallow it, and
        would run it as a command).
        """
        flags = b" v" * 18
        too_long = b"CLIENT_ERROR options flags too long\r\n"
        for line, reply in ((b"ms " + b"k" * 251 + b" 3\r\nabc\r\n", BAD_FORMAT),
                            (b"ms k 3" + flags + b"\r\nabc\r\n", too_long),
                            (b"mg k" + flags + b" v\r\n", too_long),
                            (b"ms k\x00 3\r\nabc\r\n", BAD_FORMAT)):
            frame, after = frames_of(line + b"mn\r\n")
            self.assertEqual(shape(frame), (line, 0, None, LOCAL, None, reply))
            self.assertEqual(after.data, b"mn\r\n")
        self.assertEqual(one(b"mg k" + b" v" * 17 + b"\r\n").key, b"k")  # 19 tokens: fine

    def test_no_key(self) -> None:
        """
        A keyed meta command without a key gets memcached's answer locally.
        """
        self.assertEqual(one(b"mg\r\n").reply, ERROR_LINE)
        self.assertEqual(one(b"me\r\n").reply, BAD_FORMAT)


class PipelineTests(SynchronousTestCase):
    """
    Streams of commands, however they are cut.
    """

    PIPELINE = (b"get a b\r\nset k 0 0 6\r\n\r\nab\r\n\r\nincr n 1 noreply\r\n"
                b"ms m 3 T1\r\n\n\r\n\r\nbogus\r\nmg m v\nstats\r\ndelete k\r\n")

    def test_bytewise(self) -> None:
        """
        Fed one byte at a time, a pipeline gives the frames one feed gives,
        and their data is the stream.
        """
        whole = frames_of(self.PIPELINE)
        framer = MemcachedRequestFramer(MAX)
        pieces = feed_chunks(framer, bytewise(self.PIPELINE))
        self.assertEqual([shape(f) for f in pieces], [shape(f) for f in whole])
        self.assertEqual(len(whole), 8)
        self.assertEqual(b"".join(f.data for f in whole), self.PIPELINE)
        self.assertIsNone(framer.error)

    def test_frames_before_error(self) -> None:
        """
        Frames before an error are returned; feed returns nothing afterwards.
        """
        framer = MemcachedRequestFramer(MAX)
        frames = framer.feed(b"get a\r\nset k 0 0 x\r\nget b\r\n")
        self.assertEqual([f.key for f in frames], [b"a"])
        self.assertEqual(_kind(framer.error), "malformed")
        self.assertEqual(framer.feed(b"get c\r\n"), [])

    def test_interfaces(self) -> None:
        """
        The framers provide their interfaces.
        """
        self.assertTrue(verifyObject(IRequestFramer, MemcachedRequestFramer(MAX)))
        self.assertTrue(verifyObject(IResponseFramer, MemcachedResponseFramer()))


def responses(kinds: Sequence[object],
              chunks: Sequence[bytes]) -> Tuple[List[bytes], Optional[FramingError]]:
    framer = MemcachedResponseFramer()
    for kind in kinds:
        framer.expect(kind)
    out: List[bytes] = []
    for chunk in chunks:
        out.extend(framer.feed(chunk))
    return out, framer.error


class ResponseTests(SynchronousTestCase):
    """
    L{MemcachedResponseFramer} cuts responses by the kind expected.
    """

    def test_values(self) -> None:
        """
        A values response is any number of VALUE blocks, then END; data may
        hold CR LF and even END lines; gets responses carry a cas.
        """
        hit = b"VALUE k 0 12\r\nEND\r\nEND\r\n\r\n\r\nVALUE j 5 1 77\r\nx\r\nEND\r\n"
        for stream in (b"END\r\n", hit):
            self.assertEqual(responses([VALUES], [stream]), ([stream], None))
            self.assertEqual(responses([VALUES], bytewise(stream)), ([stream], None))

    def test_values_incomplete(self) -> None:
        """
        Nothing is returned before END.
        """
        self.assertEqual(responses([VALUES], [b"VALUE k 0 1\r\nx\r\nEN"]), ([], None))

    def test_line_and_stats(self) -> None:
        """
        A line response is one line; a stats response runs to END.
        """
        stream = b"STORED\r\nSTAT pid 1\r\nSTAT version 1.6\r\nEND\r\n42\r\n"
        expected = [b"STORED\r\n", b"STAT pid 1\r\nSTAT version 1.6\r\nEND\r\n", b"42\r\n"]
        self.assertEqual(responses([LINE, STATS, LINE], [stream]), (expected, None))
        self.assertEqual(responses([LINE, STATS, LINE], bytewise(stream)), (expected, None))

    def test_meta(self) -> None:
        """
        A meta response is one line, and after VA <size> a data block.
        """
        stream = b"HD c5\r\nEN\r\nVA 4 t-1\r\n\r\n\r\n\r\nMN\r\nVA 0\r\n\r\n"
        expected = [b"HD c5\r\n", b"EN\r\n", b"VA 4 t-1\r\n\r\n\r\n\r\n", b"MN\r\n",
                    b"VA 0\r\n\r\n"]
        self.assertEqual(responses([META] * 5, [stream]), (expected, None))
        self.assertEqual(responses([META] * 5, bytewise(stream)), (expected, None))

    def test_errors_end_any_kind(self) -> None:
        """
        ERROR, CLIENT_ERROR and SERVER_ERROR lines end a response of any kind,
        even after VALUE blocks.
        """
        for line in (b"ERROR\r\n", b"CLIENT_ERROR bad data chunk\r\n",
                     b"SERVER_ERROR out of memory\r\n"):
            for kind in (VALUES, LINE, STATS, META):
                self.assertEqual(responses([kind, LINE], [line + b"OK\r\n"]),
                                 ([line, b"OK\r\n"], None))
            partial = b"VALUE a 0 1\r\nx\r\n" + line
            self.assertEqual(responses([VALUES], [partial]), ([partial], None))

    def test_unexpected_data(self) -> None:
        """
        Bytes with no response expected are malformed; no exception escapes
        and nothing more is returned.
        """
        framer = MemcachedResponseFramer()
        self.assertEqual(framer.feed(b"STORED\r\n"), [])
        self.assertEqual(_kind(framer.error), "malformed")
        framer.expect(LINE)
        self.assertEqual(framer.feed(b"STORED\r\n"), [])
        out, error = responses([LINE], [b"STORED\r\nEXTRA\r\n"])
        self.assertEqual((out, _kind(error)), ([b"STORED\r\n"], "malformed"))

    def test_garbage(self) -> None:
        """
        A line that a values response cannot hold, a bad VALUE line, a data
        block without CR LF, a bare newline or an endless line set the error.
        """
        for kind, stream in ((VALUES, b"STORED\r\n"), (VALUES, b"VALUE k 0\r\n"),
                             (VALUES, b"VALUE k 0 x\r\n"), (VALUES, b"VALUE k 0 1\r\nxy\r\n"),
                             (META, b"VA x\r\n"), (META, b"VA 1\r\nxyz"), (LINE, b"OK\n"),
                             (LINE, b"\r\n"), (STATS, b"STAT " + b"x" * MAX_LINE)):
            out, error = responses([kind], [stream])
            self.assertEqual((out, _kind(error)), ([], "malformed"), stream)

    def test_unknown_kind(self) -> None:
        """
        An expectation this codec never gives is malformed, not an exception.
        """
        out, error = responses(["bogus"], [b"OK\r\n"])
        self.assertEqual((out, _kind(error)), ([], "malformed"))

    def test_value_not_rescanned(self) -> None:
        """
        While a large VALUE block arrives, the framer only counts bytes: it
        neither joins nor scans what it holds until the block is complete, and
        the blocks already checked are not joined again for the next one.
        """
        framer = MemcachedResponseFramer()
        framer.expect(VALUES)
        block = b"\n" * 1000000
        header = b"VALUE k 0 %d\r\n" % (len(block),)
        framer.feed(header)
        self.assertEqual(framer.feed(block[:1000]), [])
        for i in range(1000, len(block), 1000):
            framer.feed(block[i:i + 1000])
        self.assertEqual(len(framer._chunks), 1001)
        # Once a block is checked, it is set aside: the next one is held alone.
        self.assertEqual(framer.feed(b"\r\n" + header), [])
        self.assertEqual(framer._have, len(header))
        framer.feed(block)
        [response] = framer.feed(b"\r\nEND\r\n")
        self.assertEqual(response, (header + block + b"\r\n") * 2 + b"END\r\n")


class CodecTests(SynchronousTestCase):
    """
    L{MemcachedCodec}: names, framers, error replies and probes.
    """

    def test_provides(self) -> None:
        """
        The module's codec provides L{ICodec} as memcached, multiplexed.
        """
        self.assertTrue(verifyObject(ICodec, codec))
        self.assertEqual((codec.name, codec.mode), ("memcached", "multiplexed"))

    def test_request_framer_size(self) -> None:
        """
        The request framer takes max_request_size from the configuration,
        1 MiB by default.
        """
        class Config:
            max_request_size = 10

        self.assertEqual(codec.request_framer(Config()).max_request_size, 10)
        self.assertEqual(codec.request_framer(object()).max_request_size, 1024 * 1024)
        self.assertEqual(codec.request_framer(5).max_request_size, 5)
        self.assertIsInstance(codec.response_framer(), MemcachedResponseFramer)

    def test_error_replies(self) -> None:
        """
        Each error kind has its line.
        """
        self.assertEqual(codec.error_reply("overloaded", ""),
                         b"SERVER_ERROR poolproxy: overloaded, try again later\r\n")
        self.assertEqual(codec.error_reply("unavailable", "x"),
                         b"SERVER_ERROR poolproxy: backend unavailable\r\n")
        self.assertEqual(codec.error_reply("timeout", "x"),
                         b"SERVER_ERROR poolproxy: backend timed out\r\n")
        self.assertEqual(codec.error_reply("too_large", "x"),
                         b"SERVER_ERROR object too large for cache\r\n")
        self.assertEqual(codec.error_reply("malformed", "bad data chunk"),
                         b"CLIENT_ERROR bad data chunk\r\n")

    def test_malformed_sanitised(self) -> None:
        """
        A malformed reply's message cannot break the line: CR, LF and other
        control characters become spaces, a CLIENT_ERROR prefix is not
        doubled, non-ASCII is replaced.
        """
        self.assertEqual(codec.error_reply("malformed", "CLIENT_ERROR a\r\nEND\r\nb\x00é"),
                         b"CLIENT_ERROR a  END  b ?\r\n")
        self.assertEqual(codec.error_reply("malformed", ""),
                         b"CLIENT_ERROR bad command line format\r\n")
        self.assertEqual(codec.error_reply("other", "a\nb"), b"SERVER_ERROR poolproxy: a b\r\n")
        self.assertEqual(codec.error_reply("other", ""), b"SERVER_ERROR poolproxy: other\r\n")

    def test_error_reply_answers_any_request(self) -> None:
        """
        Every error reply is one complete response whatever the request was,
        a get included (memcached clients such as pymemcache raise on these
        lines wherever a response starts).
        """
        for kind in ERROR_KINDS:
            reply = codec.error_reply(kind, "why\r\n")
            self.assertTrue(reply.startswith((b"SERVER_ERROR ", b"CLIENT_ERROR ")))
            self.assertEqual(reply.count(b"\n"), 1)
            for expect in (VALUES, LINE, STATS, META):
                self.assertEqual(responses([expect], [reply]), ([reply], None))

    def test_setup_and_probe(self) -> None:
        """
        No setup frames; the probe is version, answered by VERSION.
        """
        self.assertEqual(codec.setup_frames(object()), [])
        probe = codec.probe()
        assert probe is not None
        self.assertEqual((probe.data, probe.replies, probe.expect), (b"version\r\n", 1, LINE))
        self.assertIsNone(codec.check_setup_reply(probe, b"VERSION 1.6.21\r\n"))
        [response] = responses([probe.expect], [b"VERSION 1.6.21\r\n"])[0]
        self.assertTrue(codec.probe_ok(response))
        self.assertFalse(codec.probe_ok(b"ERROR\r\n"))
        self.assertIsInstance(codec, MemcachedCodec)


# -- property tests -----------------------------------------------------------

def _clean(raw: bytes) -> bytes:
    return bytes(c if c > 32 and c != 127 else 0x5f for c in raw)


keys = st.binary(min_size=1, max_size=40).map(_clean)
blocks = st.binary(max_size=64) | st.sampled_from([b"\r\n", b"get a\r\n", b"END\r\n", b""])
numbers = st.integers(0, 2 ** 32 - 1).map(lambda i: b"%d" % i)
noreply = st.sampled_from([b"", b" noreply"])
eol = st.sampled_from([b"\r\n", b"\r\n", b"\n"])


def _storage(cmd: bytes, key: bytes, flags: bytes, exptime: int, data: bytes,
             cas: bytes, nr: bytes, end: bytes) -> bytes:
    if cmd == b"cas":
        return b"cas %s %s %d %d %s%s%s%s\r\n" % (
            key, flags, exptime, len(data), cas, nr, end, data)
    return b"%s %s %s %d %d%s%s%s\r\n" % (cmd, key, flags, exptime, len(data), nr, end, data)


requests = st.one_of(
    st.builds(lambda c, ks, e: c + b" " + b" ".join(ks) + e,
              st.sampled_from([b"get", b"gets"]), st.lists(keys, min_size=1, max_size=5), eol),
    st.builds(lambda c, t, ks, e: b"%s %d %s%s" % (c, t, b" ".join(ks), e),
              st.sampled_from([b"gat", b"gats"]), st.integers(-1, 10 ** 6),
              st.lists(keys, min_size=1, max_size=3), eol),
    st.builds(_storage,
              st.sampled_from([b"set", b"add", b"replace", b"append", b"prepend", b"cas"]),
              keys, numbers, st.integers(-1, 10 ** 6), blocks, numbers, noreply, eol),
    st.builds(lambda c, k, n, nr, e: b"%s %s %s%s%s" % (c, k, n, nr, e),
              st.sampled_from([b"incr", b"decr", b"touch"]), keys, numbers, noreply, eol),
    st.builds(lambda k, z, nr, e: b"delete " + k + z + nr + e,
              keys, st.sampled_from([b"", b" 0"]), noreply, eol),
    st.builds(lambda k, fl, e: b"mg " + k + b"".join(b" " + f for f in fl) + e,
              keys, st.lists(st.sampled_from([b"v", b"t", b"f", b"s", b"k", b"c", b"O12", b"T9",
                                              b"q"]),
                             max_size=4, unique=True), eol),
    st.builds(lambda k, d, e: b"ms %s %d T0 F1%s%s\r\n" % (k, len(d), e, d), keys, blocks, eol),
    st.builds(lambda c, k, e: c + b" " + k + e, st.sampled_from([b"md", b"ma", b"me"]), keys, eol),
    st.sampled_from([b"mn\r\n", b"version\r\n", b"stats\r\n", b"stats slabs\r\n",
                     b"stats reset\r\n",
                     b"verbosity 1\r\n", b"flush_all 0 noreply\r\n", b"bogus\r\n",
                     b"get " + b"k" * 251 + b"\r\n", b"mg x\x01 v\r\n", b"\r\n"]),
)


class RequestProperties(SynchronousTestCase):
    """
    Request framing does not depend on how the stream is cut.
    """

    @PROPERTY
    @given(st.lists(requests, min_size=1, max_size=12), st.data())
    def test_any_chunking(self, commands: List[bytes], data: st.DataObject) -> None:
        """
        Any chunking of a valid request stream gives the frames one feed
        gives, one per command, and their data joined is the stream.
        """
        stream = b"".join(commands)
        whole = MemcachedRequestFramer(MAX).feed(stream)
        cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=30))
        framer = MemcachedRequestFramer(MAX)
        pieces = feed_chunks(framer, split_at(stream, cuts))
        self.assertIsNone(framer.error)
        self.assertEqual(framer.pending(), 0)
        self.assertEqual([shape(f) for f in pieces], [shape(f) for f in whole])
        self.assertEqual([f.data for f in whole], commands)

    @PROPERTY
    @given(st.lists(st.binary(max_size=40) | st.sampled_from(
        [b"get ", b"set ", b"ms ", b"mg ", b"k ", b"0 ", b"3 ", b"noreply", b"\r\n", b"\n", b" q",
         b"quit", b"cas ", b"1", b"-", b"\x00", b" " * 300]), max_size=40), st.data())
    def test_garbage(self, parts: List[bytes], data: st.DataObject) -> None:
        """
        Random bytes in random chunks never raise and never stall: every
        byte becomes a frame (sent or answered locally), is held for an
        incomplete frame, or lies past an error or a quit; and the result
        does not depend on the chunking.
        """
        stream = b"".join(parts)
        one_feed = MemcachedRequestFramer(64)
        whole = one_feed.feed(stream)
        cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=30))
        framer = MemcachedRequestFramer(64)
        pieces = feed_chunks(framer, split_at(stream, cuts))
        self.assertEqual([shape(f) for f in pieces], [shape(f) for f in whole])
        self.assertEqual(_error(framer.error), _error(one_feed.error))
        framed = b"".join(f.data for f in whole)
        self.assertTrue(stream.startswith(framed))
        if framer.error is None and not (whole and whole[-1].flags & CLOSE):
            self.assertEqual(len(framed) + framer.pending(), len(stream))
            self.assertLessEqual(framer.pending(), MAX_LINE + 64 + 2)


value_items = st.lists(st.tuples(keys, numbers, blocks, st.none() | numbers), max_size=4)
error_lines = st.sampled_from([b"ERROR\r\n", b"CLIENT_ERROR bad\r\n",
                               b"SERVER_ERROR out of memory\r\n"])


def _values(items: List[Tuple[bytes, bytes, bytes, Optional[bytes]]]) -> bytes:
    out = b""
    for key, flags, block, cas in items:
        tail = b" %s" % (cas,) if cas is not None else b""
        out += b"VALUE %s %s %d%s\r\n%s\r\n" % (key, flags, len(block), tail, block)
    return out + b"END\r\n"


response_items = st.one_of(
    st.tuples(st.just(VALUES), value_items.map(_values)),
    st.tuples(st.just(VALUES),
              st.builds(lambda items, e: _values(items)[:-5] + e, value_items, error_lines)),
    st.tuples(st.just(LINE), st.sampled_from([b"STORED\r\n", b"NOT_FOUND\r\n", b"DELETED\r\n",
                                              b"VERSION 1.6.21\r\n", b"12345\r\n",
                                              b"TOUCHED\r\n"])),
    st.tuples(st.just(STATS), st.lists(st.tuples(keys, keys), max_size=5).map(
        lambda kv: b"".join(b"STAT %s %s\r\n" % p for p in kv) + b"END\r\n")),
    st.tuples(st.just(META), st.sampled_from([b"HD\r\n", b"EN\r\n", b"NF\r\n", b"HD c123 Oab\r\n",
                                              b"MN\r\n"])),
    st.tuples(st.just(META), st.builds(lambda d: b"VA %d t-1 f0\r\n%s\r\n" % (len(d), d), blocks)),
    st.tuples(st.sampled_from([VALUES, LINE, STATS, META]), error_lines),
)


class ResponseProperties(SynchronousTestCase):
    """
    Response framing does not depend on how the stream is cut.
    """

    @PROPERTY
    @given(st.lists(response_items, min_size=1, max_size=12), st.data())
    def test_any_chunking(self, items: List[Tuple[str, bytes]], data: st.DataObject) -> None:
        """
        Any chunking of a valid response stream, with the matching expect
        sequence, gives each response whole and in order.
        """
        kinds = [kind for kind, _ in items]
        expected = [response for _, response in items]
        stream = b"".join(expected)
        cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=30))
        self.assertEqual(responses(kinds, [stream]), (expected, None))
        self.assertEqual(responses(kinds, split_at(stream, cuts)), (expected, None))

    @PROPERTY
    @given(st.lists(st.sampled_from([VALUES, LINE, STATS, META]), max_size=8),
           st.lists(st.binary(max_size=30) | st.sampled_from(
               [b"VALUE k 0 3\r\n", b"END\r\n", b"\r\n", b"VA 2 t\r\n", b"STAT a b\r\n",
                b"SERVER_ERROR x\r\n", b"HD\r\n"]), max_size=20), st.data())
    def test_garbage(self, kinds: List[str], parts: List[bytes], data: st.DataObject) -> None:
        """
        Random bytes in random chunks never raise: they give responses or
        set the error, the same whatever the chunking.
        """
        stream = b"".join(parts)
        cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=30))
        whole, error = responses(kinds, [stream])
        pieces, chunked_error = responses(kinds, split_at(stream, cuts))
        self.assertEqual(pieces, whole)
        self.assertEqual(_error(chunked_error), _error(error))
        self.assertTrue(stream.startswith(b"".join(whole)))
        self.assertLessEqual(len(whole), len(kinds))


class CommandPolicyTests(SynchronousTestCase):
    """deny_commands and allow_commands in the memcached framer."""

    def test_default_denies_server_administration(self) -> None:
        """
        flush_all, verbosity, shutdown and cache_memlimit are refused by
        default (silently under noreply, as memcached answers), counted by
        name, never sent; the stream goes on.
        """
        frames = frames_of(b"flush_all\r\nverbosity 1 noreply\r\nshutdown\r\n"
                           b"cache_memlimit 100\r\nget k\r\n", policy=CommandPolicy())
        self.assertEqual([(f.key, f.flags, f.reply) for f in frames[:4]], [
            (b"flush_all", LOCAL | REFUSED,
             b"CLIENT_ERROR poolproxy: the 'flush_all' command is refused by this proxy\r\n"),
            (b"verbosity", LOCAL | REFUSED, b""),
            (b"shutdown", LOCAL | REFUSED,
             b"CLIENT_ERROR poolproxy: the 'shutdown' command is refused by this proxy\r\n"),
            (b"cache_memlimit", LOCAL | REFUSED,
             b"CLIENT_ERROR poolproxy: the 'cache_memlimit' command is refused by this proxy\r\n")])
        self.assertEqual((frames[4].key, frames[4].flags), (b"k", RETRY_SAFE))

    def test_allowed_back(self) -> None:
        """Taken out of the list, flush_all and shutdown go to the backend, one reply each."""
        frames = frames_of(b"flush_all\r\nshutdown\r\n",
                           policy=CommandPolicy(allow=("flush_all", "SHUTDOWN")))
        self.assertEqual([(f.flags, f.replies, f.expect) for f in frames],
                         [(0, 1, LINE), (0, 1, LINE)])

    def test_denied_storage_reads_its_block(self) -> None:
        """A denied set is read with its data block, so the next command is framed right."""
        frames = frames_of(b"set k 0 0 5\r\nhello\r\nget k\r\n",
                           policy=CommandPolicy(deny=("set", "get")))
        self.assertEqual([(f.key, f.flags) for f in frames],
                         [(b"set", LOCAL | REFUSED), (b"get", LOCAL | REFUSED)])
        self.assertEqual(frames[0].data, b"set k 0 0 5\r\nhello\r\n")


TOO_LARGE = b"SERVER_ERROR poolproxy: reply too large (more than max_reply_size)\r\n"


class ReplySizeLimitTests(SynchronousTestCase):
    """max_reply_size: what the response framer may hold of one response."""

    def framer(self, limit: int, *kinds: object) -> MemcachedResponseFramer:
        f = MemcachedResponseFramer()
        f.max_reply_size = limit
        for kind in kinds:
            f.expect(kind)
        return f

    def test_large_value_refused_and_skipped_unheld(self) -> None:
        """A get reply past the limit: the error at once, the block skipped unheld, END read."""
        f = self.framer(1000, VALUES, LINE)
        self.assertEqual(f.feed(b"VALUE k 0 5000\r\n" + b"x" * 100), [TOO_LARGE])
        for _ in range(48):
            self.assertEqual(f.feed(b"x" * 100), [])
            self.assertEqual(f.pending(), 0)
        self.assertEqual(f.feed(b"x" * 100 + b"\r\nEND\r\nSTORED\r\n"), [b"STORED\r\n"])
        self.assertIsNone(f.error)

    def test_many_values_past_the_limit(self) -> None:
        """A multi-get whose values together pass the limit is refused once."""
        f = self.framer(100, VALUES, LINE)
        out = []
        for i in range(20):
            out += f.feed(b"VALUE k%d 0 10\r\n%s\r\n" % (i, b"v" * 10))
            self.assertLessEqual(f.pending(), 100 + 40)
        out += f.feed(b"END\r\nSTORED\r\n")
        self.assertEqual(out, [TOO_LARGE, b"STORED\r\n"])

    def test_meta_value_past_the_limit(self) -> None:
        f = self.framer(50, META, META)
        out = f.feed(b"VA 200 f0\r\n" + b"y" * 100)
        out += f.feed(b"y" * 100 + b"\r\nHD\r\n")
        self.assertEqual(out, [TOO_LARGE, b"HD\r\n"])

    @PROPERTY
    @given(st.lists(response_items, min_size=1, max_size=10), st.integers(10, 120),
           st.integers(1, 16))
    def test_any_chunking_bounded(self, items: List[Tuple[str, bytes]], limit: int,
                                  chunk: int) -> None:
        """
        In chunks of C{chunk} bytes: responses within the limit come whole,
        those well past it become the error, one answer each, in order; the
        framer never holds much more than the limit.
        """
        f = self.framer(limit, *[kind for kind, _ in items])
        stream = b"".join(response for _, response in items)
        out: List[bytes] = []
        for i in range(0, len(stream), chunk):
            out += f.feed(stream[i:i + chunk])
            self.assertLessEqual(f.pending(), limit + chunk + MAX_LINE)
        self.assertIsNone(f.error)
        self.assertEqual(len(out), len(items))
        for (_, response), got in zip(items, out):
            if len(response) <= limit:
                self.assertEqual(got, response)
            elif len(response) > limit + chunk + 64:
                self.assertEqual(got, TOO_LARGE)
            else:
                self.assertIn(got, (response, TOO_LARGE))
