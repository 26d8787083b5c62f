"""
The codec seam (L{poolproxy.codec}): every shipped codec, and the example
third-party one, provides what it declares, method by method
(C{zope.interface.verify}), and answers every error kind the proxy passes.
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from poolproxy.codec import (
    ERROR_KINDS,
    BaseCodec,
    ICodec,
    IProbingCodec,
    IRequestFramer,
    IResponseFramer,
    IShardAwareFramer,
    IShardedCodec,
    IVariantCodec,
)
from poolproxy.codecs.http import codec as http_codec
from poolproxy.codecs.memcached import LINE, VALUES
from poolproxy.codecs.memcached import codec as memcached_codec
from poolproxy.codecs.redis import codec as redis_codec
from poolproxy.codecs.tcp import codec as tcp_codec
from tests.support import line_codec

CAPABILITIES = (IShardedCodec, IVariantCodec, IProbingCodec)


class DeclaredTests(SynchronousTestCase):
    def assertCapabilities(self, codec: Any, *declared: Any) -> None:
        verifyObject(ICodec, codec)
        for capability in declared:
            verifyObject(capability, codec)
        for capability in set(CAPABILITIES) - set(declared):
            self.assertFalse(capability.providedBy(codec), capability.__name__)

    def test_redis(self) -> None:
        """redis splits, has the RESP3 variant, checks its PING; its framer is shard-aware."""
        self.assertCapabilities(redis_codec, IShardedCodec, IVariantCodec, IProbingCodec)
        verifyObject(IShardAwareFramer, redis_codec.request_framer(None))
        verifyObject(IResponseFramer, redis_codec.response_framer())

    def test_memcached(self) -> None:
        """memcached splits multi-key gets and checks its version probe; no variants."""
        self.assertCapabilities(memcached_codec, IShardedCodec, IProbingCodec)
        verifyObject(IRequestFramer, memcached_codec.request_framer(None))
        self.assertFalse(IShardAwareFramer.providedBy(memcached_codec.request_framer(None)))
        verifyObject(IResponseFramer, memcached_codec.response_framer())

    def test_tcp_and_http(self) -> None:
        """tcp and http take BaseCodec's defaults: no setup, no probe frame, no capability."""
        for codec in (tcp_codec, http_codec):
            self.assertIsInstance(codec, BaseCodec)
            self.assertCapabilities(codec)
            self.assertEqual(codec.setup_frames(None), [])
            self.assertIsNone(codec.check_setup_reply(None, b""))
            self.assertIsNone(codec.probe())
        self.assertRaises(NotImplementedError, tcp_codec.request_framer, None)

    def test_line_example(self) -> None:
        """The example plugin is a whole codec on BaseCodec, with complete framers."""
        codec = line_codec()
        self.assertCapabilities(codec)
        verifyObject(IRequestFramer, codec.request_framer(None))
        verifyObject(IResponseFramer, codec.response_framer())


class ErrorKindTests(SynchronousTestCase):
    def test_every_kind_answered(self) -> None:
        """
        Every kind the proxy passes, crossslot included, gets a non-empty,
        well-formed error from each framed codec.
        """
        self.assertIn("crossslot", ERROR_KINDS)
        for kind in ERROR_KINDS:
            redis = redis_codec.error_reply(kind, "why")
            self.assertTrue(redis.startswith(b"-") and redis.endswith(b"\r\n"), (kind, redis))
            memcached = memcached_codec.error_reply(kind, "why")
            self.assertTrue(memcached.endswith(b"\r\n") and b"ERROR" in memcached, (kind, memcached))
            http = http_codec.error_reply(kind, "why")
            self.assertTrue(http.startswith(b"HTTP/1.1 "), (kind, http))
        self.assertTrue(redis_codec.error_reply("crossslot", "x").startswith(b"-CROSSSLOT "))


class ResponsePendingTests(SynchronousTestCase):
    def test_memcached_pending(self) -> None:
        """
        A memcached response framer says how much of the next response it
        holds: 0 before any byte (so a request in flight may be retried),
        then what arrived, then 0 again once the response is complete.
        """
        framer = memcached_codec.response_framer()
        framer.expect(VALUES)
        framer.expect(LINE)
        self.assertEqual(framer.pending(), 0)
        self.assertEqual(framer.feed(b"VALUE k 0 5\r\nab"), [])
        self.assertEqual(framer.pending(), len(b"VALUE k 0 5\r\nab"))
        self.assertEqual(framer.feed(b"cde\r\nEND\r\nSTO"), [b"VALUE k 0 5\r\nabcde\r\nEND\r\n"])
        self.assertEqual(framer.pending(), 3)
        self.assertEqual(framer.feed(b"RED\r\n"), [b"STORED\r\n"])
        self.assertEqual(framer.pending(), 0)
