"""
Bounded memory in multiplexed mode, in memory (MultiplexHarness, a model
redis): a client that does not read is closed past client_output_limit, one
large reply on a small backlog is never refused, the proxy-wide cap closes
the clients past their soft mark, max_pipeline stops reading a client, and
nothing stays counted once a client reads or goes.
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from poolproxy.codecs.redis import codec as redis_codec, encode_command
from poolproxy.proxy.output import TRANSPORT_BUFFER, OutputBudget, unsent_bytes
from poolproxy.testing import MultiplexHarness
from tests.redis_model import ModelRedis

KIB = 1024


def cmd(*args: bytes) -> bytes:
    return encode_command(list(args))


class Setup(SynchronousTestCase):
    def harness(self, **settings: Any) -> MultiplexHarness:
        settings.setdefault("mux_connections", 1)
        self.h = MultiplexHarness(redis_codec, **settings)
        self.model = ModelRedis()
        self.model.store[b"big"] = b"x" * (300 * KIB)
        return self.h

    def serve(self) -> None:
        self.h.serve(self.model)

    @property
    def output(self) -> OutputBudget:
        return self.h.factory.output


class ClientLimitTests(Setup):
    def test_replies_in_one_read(self) -> None:
        """
        Replies that come in one read are one reply and a backlog: six of
        300 KiB at once pass a 1 MiB limit.
        """
        self.harness(client_output_limit=1024 * KIB)
        slow = self.h.client()
        slow.stop_reading()
        slow.send(cmd(b"GET", b"big") * 6)
        self.serve()
        self.assertTrue(slow.closed)

    def test_closed_past_its_limit(self) -> None:
        """
        A client that stops reading is closed once it holds more than
        client_output_limit (1 MiB here: the fourth 300 KiB reply); the other
        client on the same shared connection is served throughout.
        """
        self.harness(client_output_limit=1024 * KIB)
        slow, other = self.h.client(), self.h.client()
        slow.stop_reading()
        for i in range(3):
            slow.send(cmd(b"GET", b"big"))
            other.send(cmd(b"PING"))
            self.serve()
            self.assertFalse(slow.closed, i)
        self.assertEqual(other.received(), b"+PONG\r\n" * 3)
        # Held so far: the transport's buffer and three replies.
        self.assertEqual(self.output.held, TRANSPORT_BUFFER + 3 * (300 * KIB + 11))
        slow.send(cmd(b"GET", b"big"))
        other.send(cmd(b"PING"))
        self.serve()
        self.assertTrue(slow.closed)
        self.assertTrue(slow.transport.aborted)
        self.assertEqual(other.received(), b"+PONG\r\n" * 4)
        self.assertEqual(self.h.factory.stats.output_closed["client"], 1)
        self.h.deliver_losses()
        self.assertEqual(self.output.held, 0)
        self.assertEqual(self.h.admission.in_flight, 0)
        self.assertEqual(self.h.factory.clients, {other.protocol})

    def test_late_replies_to_a_closed_client_are_dropped(self) -> None:
        """
        Replies still owed to a client closed over its limit are read and
        dropped (never written, never another client's); the shared
        connection goes on serving.
        """
        self.harness(client_output_limit=1024 * KIB)
        slow, other = self.h.client(), self.h.client()
        slow.stop_reading()
        slow.send(cmd(b"GET", b"big") * 6)
        other.send(cmd(b"GET", b"nothing"))
        self.h.connect()
        [connection] = self.h.connections()
        replies = self.model(connection, connection.value())
        connection.clear()
        for i in range(0, len(replies), 100 * KIB):  # as reads of 100 KiB bring them
            connection.protocol.dataReceived(replies[i:i + 100 * KIB])
        self.assertTrue(slow.closed)
        self.assertEqual(slow.received().count(b"$%d\r\n" % (300 * KIB)), 4)
        self.assertEqual(other.received(), b"$-1\r\n")
        self.assertEqual(len(self.h.connections()), 1)

    def test_one_large_reply_is_kept(self) -> None:
        """
        A reply larger than the limit, to a client whose backlog is under
        the soft mark, is written (max_reply_size bounds a reply, not this).
        """
        self.harness(client_output_limit=256 * KIB)
        client = self.h.client()
        client.stop_reading()
        client.send(cmd(b"GET", b"big"))
        self.serve()
        self.assertFalse(client.closed)
        self.assertEqual(client.read(), b"$%d\r\n%s\r\n" % (300 * KIB, b"x" * 300 * KIB))
        self.assertEqual(self.output.held, 0)

    def test_reading_releases_what_was_held(self) -> None:
        """A client that reads its backlog holds nothing, and may fill it again."""
        self.harness(client_output_limit=1024 * KIB)
        client = self.h.client()
        for _ in range(3):
            client.stop_reading()
            client.send(cmd(b"GET", b"big") * 3)
            self.serve()
            self.assertGreater(self.output.held, 900 * KIB)
            self.assertEqual(len(client.read()), 3 * (300 * KIB + 11))
            self.assertEqual(self.output.held, 0)
        self.assertFalse(client.closed)
        self.assertEqual(self.output.peak, TRANSPORT_BUFFER + 3 * (300 * KIB + 11))


class ProxyLimitTests(Setup):
    def test_cap_closes_the_clients_past_their_soft_mark(self) -> None:
        """
        Two clients that do not read, each under its own limit (4 MiB, soft
        mark 1 MiB): once together they hold more than proxy_output_limit
        (1 MiB), the one past its soft mark is closed, the other kept.
        """
        self.harness(client_output_limit=4096 * KIB, proxy_output_limit=1024 * KIB)
        a, b = self.h.client(), self.h.client()
        a.stop_reading()
        b.stop_reading()
        b.send(cmd(b"GET", b"big") * 2)
        self.serve()
        for i in range(4):
            a.send(cmd(b"GET", b"big"))
            self.serve()
            self.assertFalse(a.closed, i)
        self.assertGreater(self.output.held, 1024 * KIB)
        a.send(cmd(b"GET", b"big"))  # past its soft mark, with the cap passed
        self.serve()
        self.assertTrue(a.closed)
        self.assertFalse(b.closed)
        self.assertEqual(self.h.factory.stats.output_closed["proxy"], 1)
        self.assertEqual(self.h.factory.stats.output_closed["client"], 0)


class PipelineLimitTests(Setup):
    def test_max_pipeline_stops_reading(self) -> None:
        """
        A client with more than max_pipeline requests waiting or owed is
        not read from until replies bring it back under.
        """
        self.harness(max_pipeline=4)
        client = self.h.client()
        client.send(cmd(b"PING") * 5)
        self.assertEqual(client.transport.producerState, "paused")
        self.serve()
        self.assertEqual(client.received(), b"+PONG\r\n" * 5)
        self.assertEqual(client.transport.producerState, "producing")

    def test_default_is_1024(self) -> None:
        self.harness()
        client = self.h.client()
        client.send(cmd(b"PING") * 1024)
        self.assertEqual(client.transport.producerState, "producing")
        client.send(cmd(b"PING"))
        self.assertEqual(client.transport.producerState, "paused")


class UnsentBytesTests(SynchronousTestCase):
    def test_twisted_tcp_transport(self) -> None:
        """Read from a FileDescriptor's own buffer fields."""
        class Transport:
            dataBuffer = b"abcdef"
            offset = 2
            _tempDataLen = 10

        self.assertEqual(unsent_bytes(Transport()), 14)

    def test_tls_reads_the_transport_beneath(self) -> None:
        class Tcp:
            dataBuffer = b""
            offset = 0
            _tempDataLen = 7

        class Tls:
            transport = Tcp()

        self.assertEqual(unsent_bytes(Tls()), 7)

    def test_unknown_transport(self) -> None:
        self.assertIsNone(unsent_bytes(object()))
