"""
redis on a sharded cluster (consistent hashing over several backends): a
multi-key command whose keys live on different backends is refused with
CROSSSLOT rather than answered from one shard, and commands that would tie
a client to one backend connection are refused; everything else is routed
by key.  End to end with two real redis-servers and redis-py; the key
extraction and the framer's refusals as unit tests.
"""

from __future__ import annotations

from typing import Any, List, Tuple

from twisted.trial.unittest import SynchronousTestCase

from poolproxy.codec import LOCAL, PIN
from poolproxy.codecs.redis import RedisCodec, RespRequestFramer, command_keys, encode_command
from tests.interop import ProxyProcess, module, redis_server


class CommandKeysTests(SynchronousTestCase):
    def test_key_positions(self) -> None:
        cases: List[Tuple[List[bytes], Any]] = [
            ([b"MGET", b"a", b"b", b"c"], [b"a", b"b", b"c"]),
            ([b"del", b"a"], [b"a"]),
            ([b"MSET", b"a", b"1", b"b", b"2"], [b"a", b"b"]),
            ([b"RENAME", b"a", b"b"], [b"a", b"b"]),
            ([b"BLPOP", b"a", b"b", b"0"], [b"a", b"b"]),
            ([b"BITOP", b"AND", b"dest", b"a", b"b"], [b"dest", b"a", b"b"]),
            ([b"EVAL", b"return 1", b"2", b"k1", b"k2", b"arg"], [b"k1", b"k2"]),
            ([b"EVAL", b"return 1", b"0", b"arg"], []),
            ([b"ZUNIONSTORE", b"d", b"2", b"a", b"b", b"WEIGHTS", b"1", b"2"],
             [b"d", b"a", b"b"]),
            ([b"ZUNION", b"2", b"a", b"b", b"WITHSCORES"], [b"a", b"b"]),
            ([b"GET", b"a"], None),
            ([b"PING"], None),
        ]
        for args, keys in cases:
            self.assertEqual(command_keys(args), keys, args)

    def test_codec_keys_from_a_frame(self) -> None:
        codec = RedisCodec()
        [frame] = RespRequestFramer(1 << 20).feed(encode_command([b"mget", b"x", b"y"]))
        self.assertEqual(codec.keys(frame), [b"x", b"y"])
        [frame] = RespRequestFramer(1 << 20).feed(encode_command([b"GET", b"x"]))
        self.assertIsNone(codec.keys(frame))


class ShardedFramerTests(SynchronousTestCase):
    def feed(self, framer: RespRequestFramer, *commands: List[bytes]) -> List[Any]:
        return framer.feed(b"".join(encode_command(c) for c in commands))

    def test_stateful_commands_refused_and_state_untouched(self) -> None:
        framer = RespRequestFramer(1 << 20)
        framer.sharded = True
        for command in ([b"MULTI"], [b"WATCH", b"k"], [b"SELECT", b"1"], [b"SUBSCRIBE", b"c"],
                        [b"CLIENT", b"SETNAME", b"me"], [b"CLIENT", b"TRACKING", b"on"]):
            [frame] = self.feed(framer, command)
            self.assertEqual(frame.flags, LOCAL, command)
            self.assertIn(b"not supported while the cluster is sharded", frame.reply)
            self.assertFalse(framer.pinned)
        # Plain commands stay on the fast path afterwards.
        [frame] = self.feed(framer, [b"SET", b"k", b"v"])
        self.assertEqual((frame.flags, frame.key), (0, b"k"))

    def test_unsharded_framer_pins_as_before(self) -> None:
        framer = RespRequestFramer(1 << 20)
        [frame] = self.feed(framer, [b"MULTI"])
        self.assertEqual(frame.flags, PIN)
        self.assertTrue(framer.pinned)


class ShardedRedisTests(SynchronousTestCase):
    def test_cross_shard_refused_same_shard_served(self) -> None:
        redis = module("redis")
        a, b = redis_server(self), redis_server(self)
        proxy = ProxyProcess(self, "redis", [a, b])
        client = redis.Redis(host="127.0.0.1", port=proxy.port, socket_timeout=10, protocol=2)
        self.addCleanup(client.close)
        direct_a = redis.Redis(host="127.0.0.1", port=a, socket_timeout=10, protocol=2)
        self.addCleanup(direct_a.close)

        keys = [f"k{i}" for i in range(40)]
        for key in keys:
            client.set(key, key)
        on_a = [k for k in keys if direct_a.get(k) is not None]
        on_b = [k for k in keys if k not in on_a]
        self.assertTrue(on_a and on_b, "consistent hashing spreads keys over both")

        # Keys of one shard: served, from that shard.
        self.assertEqual(client.mget(on_a[:3]), [k.encode() for k in on_a[:3]])
        self.assertEqual(client.mget(on_b[:3]), [k.encode() for k in on_b[:3]])
        # Keys of both: refused, and nothing is deleted anywhere.
        with self.assertRaises(redis.ResponseError) as e:
            client.delete(on_a[0], on_b[0])
        self.assertIn("don't hash to the same backend", str(e.exception))
        with self.assertRaises(redis.ResponseError):
            client.mget([on_a[0], on_b[0]])
        self.assertEqual(client.get(on_a[0]), on_a[0].encode())
        self.assertEqual(client.get(on_b[0]), on_b[0].encode())

        # A transaction is refused; the connection goes on working.
        with self.assertRaises(redis.ResponseError) as e:
            client.execute_command("MULTI")
        self.assertIn("sharded", str(e.exception))
        self.assertEqual(client.get(on_b[1]), on_b[1].encode())
        self.assertEqual(proxy.metric("poolproxy_requests_total", outcome="cross_shard"), 2)
