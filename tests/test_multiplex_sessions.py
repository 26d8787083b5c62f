"""
Multiplexed mode's long-lived and unusual sessions, in memory on a Clock
(L{poolproxy.testing.MultiplexHarness} with the redis codec and a model
redis): pub/sub as a raw pipe, blocking commands timed by their own timeout,
RESP3 pushes that answer no request, a backend whose replies disagree with
what it was sent; and a hypothesis state machine of clients sending what
would desynchronise a shared connection, checked against the one rule that
matters: a client never gets another client's reply.
"""

from __future__ import annotations

import re
from typing import Any, Dict, List

from hypothesis import settings, strategies as st
from hypothesis.stateful import (RuleBasedStateMachine, initialize, invariant, rule,
                                 run_state_machine_as_test)
from twisted.trial.unittest import SynchronousTestCase

from poolproxy.codecs.redis import codec as redis_codec, encode_command
from poolproxy.testing import MultiplexHarness
from tests.redis_model import ModelRedis


def cmd(*args: str) -> bytes:
    return encode_command([a.encode() for a in args])


class Setup(SynchronousTestCase):
    def harness(self, **settings: Any) -> MultiplexHarness:
        settings.setdefault("mux_connections", 1)
        harness = MultiplexHarness(redis_codec, **settings)
        self.model = ModelRedis()
        return harness

    def serve(self, harness: MultiplexHarness) -> None:
        harness.serve(self.model)

    def assertNothingLeft(self, harness: MultiplexHarness) -> None:
        """No client, lease, admission slot or timer is left behind."""
        harness.deliver_losses()
        self.assertEqual(len(harness.factory.clients), 0)
        self.assertEqual(harness.admission.in_flight, 0)
        pool = harness.cluster.backends[0].pool
        self.assertEqual(pool.leased, len(harness.cluster.backends[0].shared.connections))


class PubSubTests(Setup):
    def test_unsubscribe_of_several_channels_in_a_transaction(self) -> None:
        """
        MULTI, ECHO, UNSUBSCRIBE a b, EXEC: redis answers EXEC with its array
        and one more reply beside it, all of which reach the client (found
        by SharingMachine: the extra reply used to close the connection).
        """
        h = self.harness()
        c = h.client()
        c.send(cmd("MULTI") + cmd("ECHO", "x") + cmd("UNSUBSCRIBE", "a", "b"))
        self.serve(h)
        c.send(cmd("EXEC") + cmd("PING"))
        self.serve(h)
        got = c.received()
        # The model answers queued commands at once (no QUEUED), as many
        # replies as redis would: all of them are the client's.
        self.assertIn(b"$1\r\na\r\n:0\r\n*3\r\n$11\r\nunsubscribe\r\n$1\r\nb\r\n:0\r\n", got)
        self.assertTrue(got.endswith(b"+PONG\r\n"), got)
        self.assertNotIn(b"disagree", c.received())

    def test_two_subscribes(self) -> None:
        """SUBSCRIBE a then SUBSCRIBE b: both reach redis, both confirmations come back."""
        h = self.harness()
        c = h.client()
        c.send(cmd("SUBSCRIBE", "a") + cmd("SUBSCRIBE", "b"))
        self.serve(h)
        self.assertEqual(c.received().count(b"subscribe"), 2)
        self.assertIn(b"$1\r\nb\r\n:2\r\n", c.received())

    def test_subscribe_ping_unsubscribe_close(self) -> None:
        """
        A subscribed client's commands go through raw and are answered as
        redis answers them; when it leaves, its pinned connection is closed
        (its subscriptions are its own) and nothing is left counted.
        """
        h = self.harness()
        c = h.client()
        c.send(cmd("SUBSCRIBE", "a"))
        self.serve(h)
        c.send(cmd("PING") + cmd("UNSUBSCRIBE"))
        self.serve(h)
        self.assertIn(b"*2\r\n$4\r\npong\r\n$0\r\n\r\n", c.received())
        self.assertTrue(c.received().endswith(b"$11\r\nunsubscribe\r\n$1\r\na\r\n:0\r\n"))
        self.assertEqual(h.admission.in_flight, 0)
        pinned = [t for t in h.connections() if t is not c.protocol.pin.conn.protocol.transport]
        c.close()
        self.assertNothingLeft(h)
        self.assertEqual(len(h.connections()), len(pinned))  # the pinned one is gone

    def test_client_leaves_mid_subscription(self) -> None:
        """A client that sends more after SUBSCRIBE and leaves frees everything."""
        h = self.harness()
        clients = [h.client() for _ in range(5)]
        for c in clients:
            c.send(cmd("SUBSCRIBE", "x") + cmd("PING") + cmd("SUBSCRIBE", "y"))
        self.serve(h)
        for c in clients:
            self.assertIn(b"$1\r\ny\r\n:2\r\n", c.received())
            c.close()
        self.assertNothingLeft(h)
        self.assertEqual(h.connections(), [])  # every pinned connection closed

    def test_subscriber_half_closes(self) -> None:
        """
        A subscriber that shuts down its sending side is done, as redis sees
        it: closed, its pinned connection with it.  (Twisted stops reading a
        half-closed socket, so a subscriber whose peer then vanished would
        otherwise hold its connection until a message came.)
        """
        h = self.harness()
        c = h.client()
        c.send(cmd("SUBSCRIBE", "a"))
        self.serve(h)
        c.half_close()
        self.assertTrue(c.closed)
        self.assertNothingLeft(h)
        self.assertEqual(h.connections(), [])  # its pinned connection closed

    def test_half_closed_while_waiting_for_a_connection(self) -> None:
        """
        A client that sends SUBSCRIBE and half-closes while the pool is busy
        is closed once its subscription starts, not left subscribed.
        """
        h = self.harness(pool_size=1)
        first, second = h.client(), h.client()
        first.send(cmd("SUBSCRIBE", "a"))
        self.serve(h)
        second.send(cmd("SUBSCRIBE", "b"))
        second.half_close()
        self.serve(h)
        self.assertFalse(second.closed)  # still waiting for a connection
        first.close()
        self.serve(h)
        self.assertTrue(second.closed)
        self.assertNothingLeft(h)
        self.assertEqual(h.connections(), [])

    def test_subscriber_outlives_request_timeout(self) -> None:
        """A raw pipe owes nothing: no request timeout runs, however long it lasts."""
        h = self.harness(request_timeout=2.0)
        c = h.client()
        c.send(cmd("SUBSCRIBE", "news"))
        self.serve(h)
        h.clock.advance(3600)
        self.assertFalse(c.closed)
        self.assertEqual(h.cluster.backends[0].failures, 0)
        self.assertEqual(h.clock.getDelayedCalls(), [])


class BlockingTests(Setup):
    def blocked(self, timeout: str, **settings: Any) -> Any:
        h = self.harness(request_timeout=30.0, **settings)
        c = h.client()
        c.send(cmd("BLPOP", "q", timeout))
        h.connect()
        return h, c

    def test_timed_by_its_own_timeout_plus_request_timeout(self) -> None:
        """
        BLPOP q 5 may take 5 + 30 s; past that the client gets the timeout
        error, and the backend's breaker hears nothing of it.
        """
        h, c = self.blocked("5")
        h.clock.advance(34)
        self.assertEqual(c.received(), b"")
        h.clock.advance(2)
        self.assertIn(b"timed out", c.received())
        self.assertEqual(h.cluster.backends[0].failures, 0)

    def test_zero_waits_forever(self) -> None:
        """BLPOP q 0 waits as long as the client does; its reply still arrives."""
        h, c = self.blocked("0")
        h.clock.advance(24 * 3600)
        self.assertEqual(c.received(), b"")
        self.assertEqual(h.clock.getDelayedCalls(), [])
        self.serve(h)  # the model answers (an empty list: nil)
        self.assertEqual(c.received(), b"*-1\r\n")
        self.assertEqual(h.admission.in_flight, 0)

    def test_ordinary_requests_still_timed(self) -> None:
        """A GET on a hung shared connection still times out at request_timeout, as a failure."""
        h = self.harness(request_timeout=30.0)
        c = h.client()
        c.send(cmd("GET", "k"))
        h.connect()
        h.clock.advance(31)
        self.assertIn(b"timed out", c.received())
        self.assertEqual(h.cluster.backends[0].failures, 1)


    def test_half_closed_while_blocked(self) -> None:
        """
        A client blocked in BLPOP k 0 that half-closes is closed (redis frees
        a client at EOF), and its blocked connection with it.
        """
        h, c = self.blocked("0")
        c.half_close()
        self.assertTrue(c.closed)
        self.assertNothingLeft(h)
        self.assertEqual(h.connections(), [])

    def test_blocking_sent_after_eof(self) -> None:
        """BLPOP k 0 then EOF before a connection is had: closed once it is sent."""
        h = self.harness(request_timeout=30.0)
        c = h.client()
        c.send(cmd("BLPOP", "q", "0"))
        c.half_close()
        self.assertFalse(c.closed)
        h.connect()
        self.assertTrue(c.closed)
        self.assertNothingLeft(h)


class PinnedShareTests(Setup):
    """Pinned sessions take at most pool_size - mux_connections connections."""

    def subscribers(self, h: MultiplexHarness, n: int) -> List[Any]:
        clients = [h.client() for _ in range(n)]
        for i, c in enumerate(clients):
            c.send(cmd("SUBSCRIBE", "ch%d" % i))
        self.serve(h)
        return clients

    def test_subscribers_cannot_starve_shared_clients(self) -> None:
        """
        pool_size 4, one shared connection: three subscribers get theirs, the
        fourth waits, and a GET is still served on the shared connection.
        """
        h = self.harness(pool_size=4)
        subs = self.subscribers(h, 4)
        share = h.cluster.backends[0].shared
        self.assertEqual((share.pinned, share.pinned_limit), (3, 3))
        self.assertEqual(subs[3].received(), b"")
        getter = h.client()
        getter.send(cmd("GET", "k"))
        self.serve(h)
        self.assertEqual(getter.received(), b"$-1\r\n")
        self.assertEqual(h.cluster.backends[0].pool.total, 4)

    def test_waiting_session_starts_when_one_ends(self) -> None:
        h = self.harness(pool_size=4)
        subs = self.subscribers(h, 4)
        subs[0].close()
        h.deliver_losses()
        self.serve(h)
        self.assertIn(b"ch3", subs[3].received())
        self.assertEqual(h.cluster.backends[0].shared.pinned, 3)

    def test_waiting_session_times_out(self) -> None:
        """It waits pool_acquire_timeout on the Clock, then gets the error and is closed."""
        h = self.harness(pool_size=4, pool_acquire_timeout=5.0)
        subs = self.subscribers(h, 4)
        h.clock.advance(4.9)
        self.assertEqual(subs[3].received(), b"")
        h.clock.advance(0.2)
        self.assertIn(b"-ERR poolproxy: backend unavailable: no pinned connection",
                      subs[3].received())
        self.assertTrue(subs[3].closed)
        pool = h.cluster.backends[0].pool
        self.assertEqual(pool.acquire_failures["timeout"], 1)
        h.deliver_losses()
        self.assertEqual(h.cluster.backends[0].shared.pinned, 3)

    def test_waiting_session_leaves(self) -> None:
        """A waiting session that leaves takes nothing; the share counts right after."""
        h = self.harness(pool_size=4)
        subs = self.subscribers(h, 5)
        subs[4].close()
        subs[3].close()
        h.deliver_losses()
        share = h.cluster.backends[0].shared
        self.assertEqual(share.pinned, 3)
        for c in subs[:3]:
            c.close()
        h.deliver_losses()
        self.assertEqual(share.pinned, 0)
        self.assertEqual(h.clock.getDelayedCalls(), [])
        self.assertNothingLeft(h)

    def test_resp3_shared_connections_come_out_of_the_share(self) -> None:
        """A client on RESP3 adds shared connections of that variant: the share shrinks."""
        h = self.harness(pool_size=4)
        c = h.client()
        c.send(cmd("HELLO", "3") + cmd("PING"))
        self.serve(h)
        self.assertEqual(h.cluster.backends[0].shared.pinned_limit, 2)


class UnaskedTests(Setup):
    def test_push_on_shared_connection_dropped(self) -> None:
        """
        A RESP3 push arriving on a shared connection (invalidations a
        CLIENT TRACKING REDIRECT aimed at it) is nobody's reply: dropped,
        counted, and the replies around it go to their own clients.
        """
        h = self.harness()
        a, b = h.client(), h.client()
        a.send(cmd("GET", "k"))
        b.send(cmd("ECHO", "mine"))
        h.connect()
        [shared] = h.connections()
        shared.clear()
        push = b">2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nk\r\n"
        shared.protocol.dataReceived(b"$-1\r\n" + push + b"$4\r\nmine\r\n")
        self.assertEqual(a.received(), b"$-1\r\n")
        self.assertEqual(b.received(), b"$4\r\nmine\r\n")
        self.assertEqual(h.cluster.backends[0].unsolicited, 1)

    def test_extra_reply_fails_everything_in_flight(self) -> None:
        """
        A connection that sends more replies than it was asked for is out of
        step: its clients get the error, not replies that may be others',
        and the connection is closed.
        """
        h = self.harness()
        a, b = h.client(), h.client()
        a.send(cmd("GET", "k"))
        b.send(cmd("GET", "j"))
        h.connect()
        [shared] = h.connections()
        shared.protocol.dataReceived(b"$1\r\nx\r\n$1\r\ny\r\n$1\r\nz\r\n")
        for client in (a, b):
            self.assertTrue(client.received().startswith(b"-ERR poolproxy: backend unavailable"))
        self.assertTrue(shared.disconnecting)


TOKEN = re.compile(rb"c(\d+)n(\d+)")

#: What clients send besides their own ECHOs: whatever could put a shared
#: connection's replies out of step if the proxy counted them wrong.
TRICKS = [
    ("REPLCONF", "ACK", "0"), ("UNSUBSCRIBE", "a", "b"), ("PUNSUBSCRIBE",), ("SUNSUBSCRIBE",),
    ("CLIENT", "REPLY", "SKIP"), ("CLIENT", "REPLY", "OFF"), ("NOSUCHCOMMAND", "x"),
    ("SUBSCRIBE", "ch"), ("PING",), ("MONITOR",), ("HELLO", "3"), ("HELLO", "2"),
    ("SET", "k", "v"), ("GET", "k"), ("MULTI",), ("EXEC",), ("BLPOP", "q", "1"),
]


class SharingMachine(RuleBasedStateMachine):
    """
    Clients interleave ECHOs of their own tokens with the TRICKS on one
    shared connection; the model redis answers as redis does.  A client
    never receives a token another client sent; a client that never left
    the shared connections gets every one of its tokens, in order.
    """

    @initialize(count=st.integers(2, 4), pin_unknown=st.booleans())
    def start(self, count: int, pin_unknown: bool) -> None:
        self.harness = MultiplexHarness(redis_codec, mux_connections=1, pool_size=40,
                                        unknown_commands="pin" if pin_unknown else "refuse")
        self.model = ModelRedis()
        self.clients = [self.harness.client() for _ in range(count)]
        self.sent: Dict[int, List[bytes]] = {i: [] for i in range(count)}
        self.raw: Dict[int, bool] = {i: False for i in range(count)}
        self.gone: Dict[int, bool] = {i: False for i in range(count)}

    @rule(data=st.data())
    def echo(self, data: Any) -> None:
        i = data.draw(st.integers(0, len(self.clients) - 1))
        if self.gone[i]:
            return
        token = b"c%dn%d" % (i, len(self.sent[i]))
        self.sent[i].append(token)
        self.clients[i].send(encode_command([b"ECHO", token]))

    @rule(data=st.data())
    def trick(self, data: Any) -> None:
        i = data.draw(st.integers(0, len(self.clients) - 1))
        args = data.draw(st.sampled_from(TRICKS))
        if self.gone[i]:
            return
        if args[0] in ("SUBSCRIBE", "MONITOR", "NOSUCHCOMMAND") or args[:3] == (
                "CLIENT", "REPLY", "OFF") or args[:3] == ("CLIENT", "REPLY", "SKIP"):
            self.raw[i] = True  # its own pipe from here: its replies are redis's to give
        self.clients[i].send(cmd(*args))

    @rule()
    def serve(self) -> None:
        self.harness.serve(self.model)

    @rule(data=st.data())
    def leave(self, data: Any) -> None:
        i = data.draw(st.integers(0, len(self.clients) - 1))
        if not self.gone[i]:
            self.gone[i] = True
            self.clients[i].close()

    @invariant()
    def only_own_tokens(self) -> None:
        if not hasattr(self, "clients"):
            return
        for i, client in enumerate(self.clients):
            for owner, _ in TOKEN.findall(client.received()):
                assert int(owner) == i, (i, client.received())

    def teardown(self) -> None:
        if not hasattr(self, "clients"):
            return
        self.harness.serve(self.model)
        for i, client in enumerate(self.clients):
            if self.gone[i] or self.raw[i]:
                continue
            got = [b"c%sn%s" % m for m in TOKEN.findall(client.received())]
            assert got == self.sent[i], (i, got, self.sent[i], client.received())


class SharingStateMachineTests(SynchronousTestCase):
    def test_clients_only_get_their_own_replies(self) -> None:
        """
        Any interleaving of clients' ECHOs, TRICKS, backend turns and
        departures (bounded: 150 runs of up to 40 steps): no client ever sees
        another's token, and each gets all of its own in order.
        """
        run_state_machine_as_test(SharingMachine, settings=settings(
            max_examples=150, stateful_step_count=40, deadline=None, database=None))
