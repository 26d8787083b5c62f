"""
Sharing backend connections safely, against a real redis-server through a
real poolproxy process: every reply reaches the client that asked (whatever
another client sends), pub/sub and blocking sessions outlive
request_timeout without counting as failures, and the server's admin
commands are refused unless configured.  Raw sockets where the exact bytes
matter; redis-py elsewhere.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any, List

from twisted.trial.unittest import SynchronousTestCase

from tests.interop import ProxyProcess, module, recv_until, redis_server, wait_until


def resp(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


class RawClient:
    """A client on a plain socket: send RESP, read what comes."""

    def __init__(self, testcase: Any, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        testcase.addCleanup(self.sock.close)

    def send(self, *args: bytes) -> None:
        self.sock.sendall(resp(*args))

    def until(self, suffix: bytes) -> bytes:
        return recv_until(self.sock, suffix)

    def pending(self, wait: float = 0.3) -> bytes:
        """Whatever arrives within C{wait} seconds (b'' if nothing does)."""
        self.sock.settimeout(wait)
        data = b""
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        except socket.timeout:
            pass
        finally:
            self.sock.settimeout(10.0)
        return data


class SharingTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.redis = module("redis")
        self.backend = redis_server(self)

    def proxy(self, *extra: str) -> ProxyProcess:
        self.pp = ProxyProcess(self, "redis", [self.backend], *extra)
        return self.pp

    def test_replconf_cannot_take_another_clients_reply(self) -> None:
        """
        One shared connection: X sends REPLCONF ACK 0 (redis answers it with
        nothing) between V's SET and GET.  V gets its own reply; X never sees
        V's data.
        """
        self.proxy("--mux-connections", "1")
        victim, other = RawClient(self, self.pp.port), RawClient(self, self.pp.port)
        victim.send(b"SET", b"secret", b"victim-data")
        self.assertEqual(victim.until(b"\r\n"), b"+OK\r\n")
        other.send(b"REPLCONF", b"ACK", b"0")
        victim.send(b"GET", b"secret")
        self.assertEqual(victim.until(b"victim-data\r\n"), b"$11\r\nvictim-data\r\n")
        self.assertNotIn(b"victim-data", other.pending())
        victim.send(b"PING")
        self.assertEqual(victim.until(b"\r\n"), b"+PONG\r\n")

    def test_unsubscribe_without_subscriptions(self) -> None:
        """
        UNSUBSCRIBE a b c from a client that never subscribed gets its three
        replies, as from redis, and the next client's reply is its own.
        """
        self.proxy("--mux-connections", "1")
        other, victim = RawClient(self, self.pp.port), RawClient(self, self.pp.port)
        other.send(b"UNSUBSCRIBE", b"a", b"b", b"c")
        expected = b"".join(b"*3\r\n$11\r\nunsubscribe\r\n$1\r\n%s\r\n:0\r\n" % c
                            for c in (b"a", b"b", b"c"))
        self.assertEqual(other.until(b"$1\r\nc\r\n:0\r\n"), expected)
        victim.send(b"SET", b"k", b"mine")
        victim.send(b"GET", b"k")
        self.assertEqual(victim.until(b"mine\r\n"), b"+OK\r\n$4\r\nmine\r\n")
        other.send(b"PING")
        self.assertEqual(other.until(b"\r\n"), b"+PONG\r\n")

    def test_unsubscribe_of_several_channels_in_a_transaction(self) -> None:
        """
        Queued in MULTI, UNSUBSCRIBE a b makes redis answer EXEC with its
        array and one reply beside it: the client gets exactly what redis
        sends, and its connection is not closed for the extra reply.
        """
        self.proxy()
        c = RawClient(self, self.pp.port)
        c.sock.sendall(resp(b"MULTI") + resp(b"ECHO", b"x") + resp(b"UNSUBSCRIBE", b"a", b"b")
                       + resp(b"EXEC") + resp(b"PING"))
        self.assertEqual(c.until(b"+PONG\r\n"),
                         b"+OK\r\n+QUEUED\r\n+QUEUED\r\n*2\r\n$1\r\nx\r\n"
                         b"*3\r\n$11\r\nunsubscribe\r\n$1\r\na\r\n:0\r\n"
                         b"*3\r\n$11\r\nunsubscribe\r\n$1\r\nb\r\n:0\r\n+PONG\r\n")

    def test_two_subscribes_and_commands_after(self) -> None:
        """
        SUBSCRIBE a then SUBSCRIBE b gets two confirmations, PING in
        subscribed mode is answered, and messages to both channels arrive.
        """
        self.proxy()
        sub = RawClient(self, self.pp.port)
        sub.sock.sendall(resp(b"SUBSCRIBE", b"a") + resp(b"SUBSCRIBE", b"b") + resp(b"PING"))
        got = sub.until(b"$0\r\n\r\n")  # the subscribed PING's reply: ["pong", ""]
        self.assertIn(b"$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n", got)
        self.assertIn(b"$9\r\nsubscribe\r\n$1\r\nb\r\n:2\r\n", got)
        publisher = self.redis.Redis(host="127.0.0.1", port=self.pp.port)
        self.addCleanup(publisher.close)
        self.assertEqual(publisher.publish("b", "hello"), 1)
        self.assertIn(b"$5\r\nhello\r\n", sub.until(b"hello\r\n"))

    def test_resp3_tracking_on_off_on(self) -> None:
        """HELLO 3, CLIENT TRACKING ON, OFF, ON and PING: five answers."""
        self.proxy()
        c = RawClient(self, self.pp.port)
        c.sock.sendall(resp(b"HELLO", b"3") + resp(b"CLIENT", b"TRACKING", b"ON")
                       + resp(b"CLIENT", b"TRACKING", b"OFF")
                       + resp(b"CLIENT", b"TRACKING", b"ON") + resp(b"PING"))
        got = c.until(b"+PONG\r\n")
        self.assertEqual(got.count(b"+OK\r\n"), 3, got)

    def test_subscriber_that_leaves_frees_everything(self) -> None:
        """
        Clients that subscribe, send more and close leave no client, pinned
        connection or admission slot behind.
        """
        pp = self.proxy()
        for _ in range(5):
            c = RawClient(self, pp.port)
            c.sock.sendall(resp(b"SUBSCRIBE", b"x") + resp(b"PING") + resp(b"SUBSCRIBE", b"y"))
            c.until(b"$1\r\ny\r\n:2\r\n")
            c.sock.close()
        wait_until(lambda: (pp.metric("poolproxy_client_connections_open") == 0
                            and pp.metric("poolproxy_admission_in_flight") == 0
                            and pp.metric("poolproxy_pool_connections", state="active") == 0),
                   pp.process.proc, "everything freed", timeout=10, log=pp.process.log)
        self.assertEqual(pp.metric("poolproxy_client_connections_open"), 0)
        self.assertEqual(pp.metric("poolproxy_admission_in_flight"), 0)
        self.assertEqual(pp.metric("poolproxy_pool_connections", state="active"), 0)


class LongSessionTests(SynchronousTestCase):
    """Sessions longer than request_timeout (2 s here), in real time."""

    def setUp(self) -> None:
        self.redis = module("redis")
        self.backend = redis_server(self)
        # 10 blocked clients take 10 pinned connections from the pinned share:
        # 16 less 2 shared connections for RESP2 and 2 for RESP3 (redis-py's
        # HELLO 3) leaves 12.
        self.pp = ProxyProcess(self, "redis", [self.backend], "--request-timeout", "2",
                               "--breaker-failures", "2", "--pool-size", "16")

    def assertBackendHealthy(self) -> None:
        self.assertEqual(self.pp.metric("poolproxy_backend_failures"), 0)
        self.assertEqual(self.pp.metric("poolproxy_backend_breaker_state", state="closed"), 1)

    def test_subscriber_outlives_request_timeout(self) -> None:
        """
        A subscriber (a plain socket: no client library reconnecting behind
        the test's back) gets messages for 3x request_timeout on one
        connection; the backend stays healthy.
        """
        sub = RawClient(self, self.pp.port)
        sub.send(b"SUBSCRIBE", b"news")
        self.assertEqual(sub.until(b":1\r\n"), b"*3\r\n$9\r\nsubscribe\r\n$4\r\nnews\r\n:1\r\n")
        publisher = self.redis.Redis(host="127.0.0.1", port=self.pp.port)
        self.addCleanup(publisher.close)
        started = time.monotonic()
        received = 0
        while time.monotonic() - started < 6.0:
            self.assertEqual(publisher.publish("news", "tick %d" % received), 1)
            expected = b"tick %d\r\n" % received
            self.assertTrue(sub.until(expected).endswith(expected), "the subscriber was cut off")
            received += 1
            sub.pending(0.3)  # paces the loop: nothing else comes
        self.assertGreater(received, 5)
        self.assertBackendHealthy()

    def test_blocking_commands_outlive_request_timeout(self) -> None:
        """10 clients in BLPOP k 0 for 3x request_timeout get their values; no failure counted."""
        got: List[Any] = []
        lock = threading.Lock()

        def wait() -> None:
            r = self.redis.Redis(host="127.0.0.1", port=self.pp.port, socket_timeout=30)
            try:
                value = r.blpop("queue", 0)
                with lock:
                    got.append(value)
            finally:
                r.close()

        threads = [threading.Thread(target=wait) for _ in range(10)]
        for t in threads:
            t.start()
        direct = self.redis.Redis(host="127.0.0.1", port=self.backend)
        self.addCleanup(direct.close)
        started = time.monotonic()
        wait_until(lambda: direct.info("clients").get("blocked_clients") == 10,
                   self.pp.process.proc, "10 blocked clients", timeout=20)
        # 3x request_timeout, the shared connections serving another client meanwhile.
        other = self.redis.Redis(host="127.0.0.1", port=self.pp.port)
        self.addCleanup(other.close)
        while time.monotonic() - started < 6.0:
            self.assertTrue(other.ping())
        direct.rpush("queue", *range(10))
        for t in threads:
            t.join(30)
        self.assertEqual(len(got), 10)
        self.assertBackendHealthy()


class CommandPolicyTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.redis = module("redis")

    def test_admin_commands_refused_by_default(self) -> None:
        """
        SHUTDOWN, CONFIG GET, DEBUG, FLUSHALL and REPLICAOF get the proxy's
        error without reaching redis (which keeps running, its data intact).
        """
        backend = redis_server(self, extra=("--enable-debug-command", "yes"))
        pp = ProxyProcess(self, "redis", [backend])
        r = self.redis.Redis(host="127.0.0.1", port=pp.port)
        self.addCleanup(r.close)
        r.set("keep", "me")
        for command in (["SHUTDOWN", "NOSAVE"], ["CONFIG", "GET", "requirepass"],
                        ["DEBUG", "SLEEP", "0"], ["FLUSHALL"], ["REPLICAOF", "NO", "ONE"]):
            with self.assertRaises(self.redis.ResponseError) as e:
                r.execute_command(*command)
            self.assertIn("poolproxy", str(e.exception))
            self.assertIn(command[0].lower(), str(e.exception).lower())
        self.assertEqual(r.get("keep"), b"me")
        self.assertEqual(pp.metric("poolproxy_commands_refused_total", command="SHUTDOWN"), 1)

    def test_allowed_when_configured(self) -> None:
        """--allow-commands CONFIG,DEBUG lets those through (DEBUG needs redis's own permission)."""
        backend = redis_server(self, extra=("--enable-debug-command", "yes"))
        pp = ProxyProcess(self, "redis", [backend], "--allow-commands", "CONFIG,DEBUG")
        r = self.redis.Redis(host="127.0.0.1", port=pp.port)
        self.addCleanup(r.close)
        self.assertEqual(r.config_get("maxmemory"), {"maxmemory": "0"})
        self.assertEqual(r.execute_command("DEBUG", "SLEEP", "0"), b"OK")
        with self.assertRaises(self.redis.ResponseError):
            r.execute_command("SHUTDOWN", "NOSAVE")  # still refused

    def test_unknown_command_refused(self) -> None:
        """A command the proxy does not know never reaches a shared connection."""
        backend = redis_server(self)
        pp = ProxyProcess(self, "redis", [backend])
        r = self.redis.Redis(host="127.0.0.1", port=pp.port)
        self.addCleanup(r.close)
        with self.assertRaises(self.redis.ResponseError) as e:
            r.execute_command("NOSUCHCOMMAND", "x")
        self.assertIn("poolproxy: unknown command 'NOSUCHCOMMAND'", str(e.exception))


class BoundedMemoryTests(SynchronousTestCase):
    def test_unread_large_replies_keep_memory_bounded(self) -> None:
        """
        One client sets an 8 MB value, sends GET for it 100 times and reads
        nothing: the proxy closes it past client_output_limit, its RSS stays
        under +100 MB, and another client's PINGs are answered throughout
        (their latency is printed).
        """
        self.redis = module("redis")
        backend = redis_server(self)
        # Default settings: two shared connections, which clients get in
        # turn: the slow client's is not the pinger's.  (A client on the slow
        # one's connection waits behind the replies it asked for.)
        pp = ProxyProcess(self, "redis", [backend])
        r = self.redis.Redis(host="127.0.0.1", port=pp.port, protocol=2)
        self.addCleanup(r.close)
        r.set("big", b"v" * 8_000_000)
        # The second client to pick opens the second shared connection; the
        # third gets it.
        pinger = RawClient(self, pp.port)
        pinger.send(b"PING")
        self.assertEqual(pinger.until(b"\r\n"), b"+PONG\r\n")
        wait_until(lambda: pp.metric("poolproxy_pool_connections") == 2,
                   pp.process.proc, "both shared connections")
        rss_before = pp.metric("process_resident_memory_bytes")

        slow = socket.socket()
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow.connect(("127.0.0.1", pp.port))
        self.addCleanup(slow.close)
        slow.sendall(resp(b"GET", b"big") * 100)

        latencies: List[float] = []
        peak = rss_before
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            started = time.monotonic()
            pinger.send(b"PING")
            self.assertEqual(pinger.until(b"\r\n"), b"+PONG\r\n")
            latencies.append(time.monotonic() - started)
            peak = max(peak, pp.metric("process_resident_memory_bytes"))
            if pp.metric("poolproxy_client_output_closed_total", limit="client") and (
                    pp.metric("poolproxy_admission_in_flight") == 0):
                break
        self.assertEqual(pp.metric("poolproxy_client_output_closed_total", limit="client"), 1)
        self.assertEqual(pp.metric("poolproxy_admission_in_flight"), 0)
        growth = (peak - rss_before) / 1e6
        latencies.sort()
        print(f"\n    RSS {rss_before / 1e6:.0f} MB -> peak {peak / 1e6:.0f} MB (+{growth:.0f} MB); "
              f"{len(latencies)} PINGs meanwhile: median {latencies[len(latencies) // 2] * 1e3:.1f}"
              f" ms, max {latencies[-1] * 1e3:.1f} ms")
        self.assertLess(growth, 100)
        self.assertEqual(r.strlen("big"), 8_000_000)

    def test_reply_past_max_reply_size(self) -> None:
        """
        A 2 MB value with --max-reply-size 1000000: the client gets the
        proxy's error, the shared connection stays in step (the same
        client's next GET and another client's are answered), counted.
        """
        self.redis = module("redis")
        backend = redis_server(self)
        pp = ProxyProcess(self, "redis", [backend], "--mux-connections", "1",
                          "--max-reply-size", "1000000")
        r = self.redis.Redis(host="127.0.0.1", port=pp.port, protocol=2)
        self.addCleanup(r.close)
        r.set("big", b"b" * 2_000_000)
        r.set("small", b"s")
        with self.assertRaises(self.redis.ResponseError) as e:
            r.get("big")
        self.assertIn("reply too large (more than max_reply_size, 1000000 bytes)",
                      str(e.exception))
        self.assertEqual(r.get("small"), b"s")
        other = RawClient(self, pp.port)
        other.send(b"GET", b"small")
        self.assertEqual(other.until(b"s\r\n"), b"$1\r\ns\r\n")
        self.assertEqual(pp.metric("poolproxy_backend_replies_too_large_total"), 1)
        self.assertEqual(r.strlen("big"), 2_000_000)
