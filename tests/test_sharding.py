"""
redis and memcached on a sharded cluster (consistent hashing over several
backends): multi-key requests are split per backend and their replies
merged (MGET, DEL, EXISTS, MSET; memcached get/gets), other multi-key
commands whose keys live on different backends are refused with CROSSSLOT
rather than answered from one shard, and commands that would tie a client
to one backend connection are refused.  End to end with two real servers
and redis-py / pymemcache; key extraction, splitting and the framer's
refusals as unit tests.
"""

from __future__ import annotations

from typing import Any, List, Tuple

from twisted.trial.unittest import SynchronousTestCase

from poolproxy.codec import LOCAL, PIN
from poolproxy.codecs.redis import RedisCodec, RespRequestFramer, command_keys, encode_command
from poolproxy.config import ConfigError
from tests.interop import ProxyProcess, memcached_server, module, redis_server
from tests.test_config import BASE, parse


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
    def test_multi_key_commands_across_shards(self) -> None:
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

        # Split per shard and merged, as twemproxy does: values in key order.
        mixed = [on_a[0], on_b[0], "missing", on_a[1], on_b[1]]
        self.assertEqual(client.mget(mixed), [on_a[0].encode(), on_b[0].encode(), None,
                                              on_a[1].encode(), on_b[1].encode()])
        self.assertEqual(client.exists(on_a[0], on_b[0], "missing"), 2)
        client.mset({on_a[2]: "x", on_b[2]: "y"})
        self.assertEqual((client.get(on_a[2]), client.get(on_b[2])), (b"x", b"y"))
        self.assertEqual(direct_a.get(on_a[2]), b"x")  # on its own shard
        self.assertEqual(client.delete(on_a[0], on_b[0], "missing"), 2)
        self.assertEqual(client.mget([on_a[0], on_b[0]]), [None, None])
        # Pipelined with other commands: every reply in its place.
        pipe = client.pipeline(transaction=False)
        pipe.get(on_a[3]).mget([on_b[3], on_a[3]]).get(on_b[3])
        self.assertEqual(pipe.execute(), [on_a[3].encode(), [on_b[3].encode(), on_a[3].encode()],
                                          on_b[3].encode()])

        # Multi-key commands that cannot be split are refused, not half done.
        with self.assertRaises(redis.ResponseError) as e:
            client.rename(on_a[4], on_b[4])
        self.assertIn("don't hash to the same backend", str(e.exception))
        self.assertEqual(client.get(on_a[4]), on_a[4].encode())
        self.assertEqual(proxy.metric("poolproxy_requests_total", outcome="cross_shard"), 1)

        # A transaction is refused; the connection goes on working.
        with self.assertRaises(redis.ResponseError) as e:
            client.execute_command("MULTI")
        self.assertIn("sharded", str(e.exception))
        self.assertEqual(client.get(on_b[5]), on_b[5].encode())


class ShardedMemcachedTests(SynchronousTestCase):
    def test_multi_get_across_shards(self) -> None:
        pymemcache = module("pymemcache")
        from pymemcache.client.base import Client as MemcacheClient

        a, b = memcached_server(self), memcached_server(self)
        proxy = ProxyProcess(self, "memcached", [a, b])
        client = MemcacheClient(("127.0.0.1", proxy.port), timeout=10)
        self.addCleanup(client.close)
        direct_a = MemcacheClient(("127.0.0.1", a), timeout=10)
        self.addCleanup(direct_a.close)
        keys = [f"k{i}" for i in range(40)]
        for key in keys:
            client.set(key, key.encode(), noreply=False)
        on_a = [k for k in keys if direct_a.get(k) is not None]
        on_b = [k for k in keys if k not in on_a]
        self.assertTrue(on_a and on_b, "consistent hashing spreads keys over both")
        del pymemcache

        wanted = [on_a[0], on_b[0], "missing", on_b[1], on_a[1]]
        got = client.get_many(wanted)
        self.assertEqual(got, {k: k.encode() for k in wanted if k != "missing"})
        # gets too (each value with its cas token), and one key per shard.
        values = client.gets_many([on_a[2], on_b[2]])
        self.assertEqual({k: v[0] for k, v in values.items()},
                         {on_a[2]: on_a[2].encode(), on_b[2]: on_b[2].encode()})
        self.assertEqual(proxy.metric("poolproxy_requests_total", outcome="cross_shard"), 0)


class MemcachedSplitTests(SynchronousTestCase):
    def test_split_and_merge(self) -> None:
        from poolproxy.codecs.memcached import VALUES, MemcachedCodec

        codec = MemcachedCodec()
        [frame] = codec.request_framer(1 << 20).feed(b"gat 10 a b c\r\n")
        self.assertEqual(codec.keys(frame), [b"a", b"b", b"c"])
        parts, merge = codec.split(frame, [[0, 2], [1]])
        self.assertEqual([p.data for p in parts], [b"gat 10 a c\r\n", b"gat 10 b\r\n"])
        self.assertEqual([(p.key, p.expect) for p in parts], [(b"a", VALUES), (b"b", VALUES)])
        self.assertEqual(merge([b"VALUE a 0 1\r\n1\r\nEND\r\n", b"END\r\n"]),
                         b"VALUE a 0 1\r\n1\r\nEND\r\n")
        self.assertEqual(merge([b"VALUE a 0 1\r\n1\r\nEND\r\n", b"SERVER_ERROR down\r\n"]),
                         b"SERVER_ERROR down\r\n")
        [single] = codec.request_framer(1 << 20).feed(b"get a\r\n")
        self.assertIsNone(codec.keys(single))


class HashTagTests(SynchronousTestCase):
    def cluster(self, tag: Any) -> Any:
        from twisted.internet.task import Clock

        from poolproxy.backends.cluster import Backend, Cluster
        from poolproxy.backends.pool import BackendPool
        from poolproxy.testing import FakeEndpoint

        backends = []
        for i in range(8):
            pool = BackendPool(f"b{i}", FakeEndpoint(), object, size=1, clock=Clock())
            backends.append(Backend(f"b{i}", pool))
        cluster = Cluster("c", backends, "consistent_hash")
        cluster.hash_tag = tag
        return cluster

    def test_keys_with_one_tag_share_a_backend(self) -> None:
        cluster = self.cluster(b"{}")
        for tag in range(50):
            names = [b"user:{%d}:%s" % (tag, field) for field in (b"name", b"mail", b"cart")]
            self.assertEqual(len({cluster.pick(name) for name in names}), 1)
            self.assertIs(cluster.pick(names[0]), cluster.pick(b"%d" % tag))

    def test_no_tag_or_an_empty_one_routes_the_whole_key(self) -> None:
        tagged, plain = self.cluster(b"{}"), self.cluster(None)
        for key in (b"user:42", b"user:{}:x", b"user:{42", b"}42{"):
            self.assertEqual(tagged.pick(key).name, plain.pick(key).name, key)
        spread = {tagged.pick(b"user:%d:{}" % i) for i in range(100)}
        self.assertGreater(len(spread), 1)

    def test_setting_checked(self) -> None:
        e = self.assertRaises(ConfigError, parse, BASE + ["--hash-tag", "{"])
        self.assertIn("--hash-tag: expected two different ASCII characters", str(e))
        self.assertEqual(parse(BASE + ["--hash-tag", "{}"]).hash_tag, "{}")

    def test_tagged_multi_key_commands_served_by_one_shard(self) -> None:
        redis = module("redis")
        a, b = redis_server(self), redis_server(self)
        proxy = ProxyProcess(self, "redis", [a, b], "--hash-tag", "{}")
        client = redis.Redis(host="127.0.0.1", port=proxy.port, socket_timeout=10, protocol=2)
        self.addCleanup(client.close)
        for tag in range(10):
            src, dst = f"{{t{tag}}}:src", f"{{t{tag}}}:dst"
            client.sadd(src, "x", "y")
            client.sadd(f"{{t{tag}}}:other", "y")
            self.assertEqual(client.sinter(src, f"{{t{tag}}}:other"), {b"y"})
            self.assertTrue(client.rename(src, dst))
            self.assertEqual(client.smembers(dst), {b"x", b"y"})
        self.assertEqual(proxy.metric("poolproxy_requests_total", outcome="cross_shard"), 0)


class ShardedHelloTests(SynchronousTestCase):
    def test_hello_setname_refused_protocol_kept(self) -> None:
        """HELLO with SETNAME would pin: refused on a sharded cluster; plain HELLO 3 is not."""
        framer = RespRequestFramer(1 << 20)
        framer.sharded = True
        [frame] = framer.feed(encode_command([b"HELLO", b"3", b"SETNAME", b"me"]))
        self.assertEqual((frame.flags, frame.expect), (LOCAL, None))
        self.assertIn(b"HELLO keeps per-connection state", frame.reply)
        self.assertFalse(framer.pinned)
        [frame] = framer.feed(encode_command([b"HELLO", b"3"]))
        self.assertFalse(frame.flags & LOCAL)
