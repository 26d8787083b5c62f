"""
L{poolproxy.proxy.multiplexed.pinning}: the table itself, and a client's
state through the sessions that drive it (in memory, on a Clock, with the
redis codec and a model redis).
"""

from __future__ import annotations

from typing import Any, List

from twisted.trial.unittest import SynchronousTestCase

from poolproxy.codecs.redis import codec as redis_codec, encode_command
from poolproxy.proxy.multiplexed.pinning import (ENDED, LEASING, PINNED, RAW, SHARED,
                                                 TRANSITIONS, UNPINNING, Pinning, PinningError)
from poolproxy.testing import MultiplexHarness
from tests.redis_model import ModelRedis

STATES = (SHARED, LEASING, PINNED, UNPINNING, RAW, ENDED)
CONN: Any = object()
SHARE: Any = object()


def cmd(*args: str) -> bytes:
    return encode_command([a.encode() for a in args])


def in_state(state: str, dirty: bool = False) -> Pinning:
    """A Pinning driven into C{state} by its own inputs."""
    pin = Pinning()
    if state is ENDED:
        pin.end()
        return pin
    if state is not SHARED:
        pin.lease(SHARE)
    if state in (PINNED, UNPINNING, RAW):
        pin.leased(CONN)
    if dirty:
        pin.mark_dirty()
    if state is UNPINNING:
        pin.unpin()
    elif state is RAW:
        pin.raw()
    assert pin.state is state
    return pin


class TableTests(SynchronousTestCase):
    def test_every_input_outside_the_table_is_refused(self) -> None:
        """
        Each (state, input) pair the table does not name raises and leaves
        the state as it was; each it names moves to the state it says.
        """
        inputs = {
            "lease": lambda p: p.lease(SHARE), "leased": lambda p: p.leased(CONN),
            "lease_failed": Pinning.lease_failed, "unpin": Pinning.unpin,
            "release": Pinning.release, "raw": Pinning.raw, "lost": Pinning.lost,
        }
        self.assertEqual({event for _, event in TRANSITIONS}, set(inputs))
        for state in STATES:
            for event, apply in inputs.items():
                pin = in_state(state)
                following = TRANSITIONS.get((state, event))
                if following is None:
                    self.assertRaises(PinningError, apply, pin)
                    self.assertIs(pin.state, state)
                else:
                    apply(pin)
                    self.assertIs(pin.state, following, (state, event))

    def test_end_from_every_state(self) -> None:
        """end() is accepted anywhere and hands back the connection held, if any."""
        for state in STATES:
            pin = in_state(state)
            given = pin.end()
            self.assertIs(pin.state, ENDED)
            holds = state in (PINNED, UNPINNING, RAW)
            self.assertEqual(given, (CONN, SHARE, False) if holds else (None, None, False))

    def test_lease_on_its_way_keeps_its_share(self) -> None:
        """
        A client gone while its lease was on its way: the lease, when it
        ends, gets the share back to return its place.
        """
        pin = in_state(LEASING)
        pin.end()
        self.assertIs(pin.lease_failed(), SHARE)
        self.assertIs(pin.state, ENDED)

    def test_release_hands_back_dirty_and_clears_it(self) -> None:
        pin = in_state(UNPINNING, dirty=True)
        self.assertEqual(pin.release(), (CONN, SHARE, True))
        self.assertEqual((pin.state, pin.conn, pin.share, pin.dirty), (SHARED, None, None, False))

    def test_lost_hands_back(self) -> None:
        for state in (PINNED, UNPINNING, RAW):
            pin = in_state(state, dirty=True)
            self.assertEqual(pin.lost(), (CONN, SHARE, True))
            self.assertIs(pin.state, SHARED)

    def test_variant_outlives_leases(self) -> None:
        """The client's variant is its own, not the lease's."""
        pin = in_state(UNPINNING)
        pin.variant = 3
        pin.release()
        self.assertEqual(pin.variant, 3)

    def test_repr(self) -> None:
        self.assertEqual(repr(in_state(PINNED, dirty=True)), "<Pinning pinned dirty>")


class ClientStateTests(SynchronousTestCase):
    """The states a real client goes through, with the redis codec."""

    def setUp(self) -> None:
        self.h = MultiplexHarness(redis_codec, mux_connections=1, pool_size=4)
        self.model = ModelRedis()

    def states(self, client: Any, *steps: bytes) -> List[str]:
        """Send each step, serve it, and note the state after."""
        seen = []
        for step in steps:
            client.send(step)
            self.h.serve(self.model)
            seen.append(client.protocol.pin.state)
        return seen

    def test_transaction(self) -> None:
        """MULTI pins, EXEC gives the connection back, released clean to the pool."""
        c = self.h.client()
        self.assertEqual(self.states(c, cmd("GET", "k"), cmd("MULTI"), cmd("SET", "k", "v"),
                                     cmd("EXEC"), cmd("GET", "k")),
                         [SHARED, PINNED, PINNED, SHARED, SHARED])
        self.assertTrue(c.received().endswith(b"$1\r\nv\r\n"))
        pool = self.h.cluster.backends[0].pool
        self.assertEqual((pool.leased, self.h.cluster.backends[0].shared.pinned), (1, 0))

    def test_unpin_waits_for_its_reply(self) -> None:
        """Until EXEC is answered the client is unpinning; what it sends next waits."""
        c = self.h.client()
        c.send(cmd("MULTI") + cmd("SET", "k", "v"))
        self.h.serve(self.model)
        c.send(cmd("EXEC") + cmd("GET", "k"))
        self.assertIs(c.protocol.pin.state, UNPINNING)
        self.assertEqual(len(c.protocol.held), 1)  # the GET
        self.h.serve(self.model)
        self.assertIs(c.protocol.pin.state, SHARED)
        self.assertTrue(c.received().endswith(b"$1\r\nv\r\n"))

    def test_dirty_connection_is_discarded(self) -> None:
        """HELLO 3 then RESET: the connection left the pool's variant, so it is not reused."""
        c = self.h.client()
        self.assertEqual(self.states(c, cmd("HELLO", "3")), [SHARED])
        self.assertEqual(self.states(c, cmd("MULTI")), [PINNED])
        self.assertTrue(c.protocol.pin.dirty)
        pinned = c.protocol.pin.conn
        self.assertEqual(self.states(c, cmd("EXEC")), [SHARED])
        self.assertFalse(pinned.protocol.alive)

    def test_subscribe_is_raw_and_ends_with_the_client(self) -> None:
        c = self.h.client()
        self.assertEqual(self.states(c, cmd("SUBSCRIBE", "a"), cmd("PING")), [RAW, RAW])
        c.close()
        self.h.deliver_losses()
        self.assertIs(c.protocol.pin.state, ENDED)
        self.assertEqual(self.h.cluster.backends[0].shared.pinned, 0)

    def test_lost_pinned_connection_breaks_the_session(self) -> None:
        """Its transaction died with the connection: the client is closed."""
        c = self.h.client()
        self.assertEqual(self.states(c, cmd("MULTI")), [PINNED])
        c.protocol.pin.conn.protocol.transport.loseConnection()
        self.h.deliver_losses()
        self.assertTrue(c.closed)
        self.assertIs(c.protocol.pin.state, ENDED)
        self.assertEqual(self.h.cluster.backends[0].shared.pinned, 0)

    def test_client_gone_while_leasing(self) -> None:
        """A lease still waiting for the share when its client leaves takes no place."""
        subscribers = [self.h.client() for _ in range(3)]
        for i, s in enumerate(subscribers):
            s.send(cmd("SUBSCRIBE", "c%d" % i))
        self.h.serve(self.model)
        c = self.h.client()
        c.send(cmd("MULTI"))
        self.h.serve(self.model)
        self.assertIs(c.protocol.pin.state, LEASING)
        c.close()
        self.h.deliver_losses()
        self.assertIs(c.protocol.pin.state, ENDED)
        share = self.h.cluster.backends[0].shared
        self.assertEqual(share.pinned, 3)
        subscribers[0].close()
        self.h.deliver_losses()
        self.assertEqual(share.pinned, 2)
