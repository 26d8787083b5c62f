"""
Backends from DNS (poolproxy.backends.discovery) on a Clock with a fake
resolver: refresh at the TTL, clamping, failures and empty answers held,
the ejection cap, SRV weights and priorities, ring names that survive an
address change, and the whole path through a ProxyService (added backends
take traffic, removed ones drain).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs
from twisted.names import dns
from twisted.names.error import DNSNameError, DNSQueryTimeoutError, DNSServerError
from twisted.trial.unittest import SynchronousTestCase

from poolproxy.backends.cluster import Backend, Cluster
from poolproxy.backends.discovery import (
    ClusterMembers,
    Discovered,
    DnsName,
    Target,
    parse_discovery,
    parse_resolver,
)
from poolproxy.backends.pool import BackendPool
from poolproxy.config import build_config
from poolproxy.config.settings import ConfigError
from poolproxy.ops.metrics import build_registry
from poolproxy.ops.status import RateSampler, status_snapshot
from poolproxy.proxy.multiplexed.server import PipelineBackend as BackendProtocol
from poolproxy.service import ProxyService
from poolproxy.testing import FakeEndpoint, MultiplexHarness
from poolproxy.plugins import load_codec

KEYS = [f"key:{i}".encode() for i in range(10_000)]


class FakeResolver:
    """
    The IResolver lookups discovery calls, answering from records the test
    edits: C{a[name]} = [(address, ttl)], C{srv[name]} = [(priority,
    weight, port, target, ttl)]; C{error} (an exception) fails every
    lookup; a name in neither table is NXDOMAIN.
    """

    def __init__(self) -> None:
        self.a: Dict[str, List[Tuple[str, int]]] = {}
        self.srv: Dict[str, List[Tuple[int, int, int, str, int]]] = {}
        self.error: Optional[Exception] = None
        self.errors: Dict[str, Exception] = {}  # by kind: "A", "AAAA", "SRV"
        self.lookups: List[Tuple[str, str]] = []
        self.held: List[Deferred[Any]] = []
        self.hold = False

    def _answer(self, kind: str, name: str, records: Optional[List[dns.RRHeader]]) -> "Deferred[Any]":
        self.lookups.append((kind, name))
        if self.error is not None or kind in self.errors:
            return fail(self.error or self.errors[kind])
        if records is None:
            return fail(DNSNameError(name))
        if self.hold:
            held: Deferred[Any] = Deferred()
            held.addCallback(lambda _: (records, [], []))
            self.held.append(held)
            return held
        return succeed((records, [], []))

    def lookupAddress(self, name: str, timeout: Any = None) -> "Deferred[Any]":
        if name not in self.a:
            return self._answer("A", name, [] if name in self.srv_targets() else None)
        return self._answer("A", name, [
            dns.RRHeader(name, dns.A, ttl=ttl, payload=dns.Record_A(address, ttl))
            for address, ttl in self.a[name] if ":" not in address])

    def lookupIPV6Address(self, name: str, timeout: Any = None) -> "Deferred[Any]":
        if name not in self.a:
            return self._answer("AAAA", name, [] if name in self.srv_targets() else None)
        return self._answer("AAAA", name, [
            dns.RRHeader(name, dns.AAAA, ttl=ttl, payload=dns.Record_AAAA(address, ttl))
            for address, ttl in self.a[name] if ":" in address])

    def lookupService(self, name: str, timeout: Any = None) -> "Deferred[Any]":
        records = self.srv.get(name)
        return self._answer("SRV", name, None if records is None else [
            dns.RRHeader(name, dns.SRV, ttl=ttl,
                         payload=dns.Record_SRV(priority, weight, port, target, ttl))
            for priority, weight, port, target, ttl in records])

    def srv_targets(self) -> List[str]:
        return [r[3] for records in self.srv.values() for r in records]


class RecordingMembers:
    """Members that record each set applied."""

    def __init__(self) -> None:
        self.applied: List[List[Tuple[str, str, int]]] = []

    def names(self) -> List[str]:
        return [m for m, _, _ in self.applied[-1]] if self.applied else []

    def apply(self, targets: Sequence[Target]) -> None:
        self.applied.append([(t.member, t.address, t.weight) for t in targets])

    @property
    def current(self) -> List[Tuple[str, str, int]]:
        return self.applied[-1] if self.applied else []


def watch(resolver: FakeResolver, address: str, clock: Clock, **kwargs: Any,
          ) -> Tuple[DnsName, RecordingMembers]:
    members = RecordingMembers()
    entry = parse_discovery(address)
    assert entry is not None
    name = DnsName("cache", entry, resolver, clock, members, **kwargs)
    return name, members


class ParseTests(SynchronousTestCase):
    def test_entries(self) -> None:
        """dns:NAME:PORT and srv:_service._proto.NAME parse; others are not entries."""
        self.assertEqual(parse_discovery("dns:redis.example.com:6379"),
                         Discovered("dns", "redis.example.com", 6379))
        self.assertEqual(parse_discovery("srv:_redis._tcp.example.com."),
                         Discovered("srv", "_redis._tcp.example.com", 0))
        self.assertIsNone(parse_discovery("127.0.0.1:6379"))
        self.assertIsNone(parse_discovery("tcp:host=a:port=1"))
        for bad in ("dns:redis", "dns:redis:0", "dns::6379", "dns:redis:port",
                    "srv:redis.example.com", "srv:_redis.example"):
            self.assertRaises(ValueError, parse_discovery, bad)

    def test_resolvers(self) -> None:
        """dns_resolvers entries: an IP address, its port 53 unless given."""
        self.assertEqual(parse_resolver("127.0.0.1:5353"), ("127.0.0.1", 5353))
        self.assertEqual(parse_resolver("10.0.0.2"), ("10.0.0.2", 53))
        self.assertEqual(parse_resolver("[::1]:5353"), ("::1", 5353))
        for bad in ("dns.example:53", "127.0.0.1:0", "[::1", "1.2.3.4:x"):
            self.assertRaises(ValueError, parse_resolver, bad)

    def test_config(self) -> None:
        """Entries go to ClusterConfig.discovered; a bad one is a one-line error."""
        config = build_config({"listen": ["tcp:0"], "protocol": "redis",
                               "backend": ["127.0.0.1:7000", "dns:cache.example:6379"]}, {})
        cluster = config.clusters[0]
        self.assertEqual([b.address for b in cluster.backends], ["127.0.0.1:7000"])
        self.assertEqual([b.address for b in cluster.discovered], ["dns:cache.example:6379"])
        from poolproxy.tap import ProxyOptions
        options = ProxyOptions()
        with self.assertRaises(Exception) as caught:
            options.parseOptions(["--listen", "tcp:0", "--backend", "dns:cache.example"])
        self.assertIn("expected dns:NAME:PORT", str(caught.exception))
        self.assertRaises(ConfigError, build_config,
                          {"listen": ["tcp:0"], "backend": ["dns:a.example:1"],
                           "dns_resolvers": ["resolver.example:53"]}, {})
        self.assertRaises(ConfigError, build_config,
                          {"listen": ["tcp:0"], "backend": ["dns:a.example:1"],
                           "dns_min_ttl": 10.0, "dns_max_ttl": 5.0}, {})


class RefreshTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.resolver = FakeResolver()

    def test_refresh_at_ttl(self) -> None:
        """
        One backend per A and AAAA address; the next lookup comes at the
        answer's least TTL, and an address added there joins then.
        """
        self.resolver.a["cache.example"] = [("10.0.0.1", 30), ("10.0.0.2", 20), ("fd00::1", 40)]
        name, members = watch(self.resolver, "dns:cache.example:6379", self.clock)
        name.start()
        self.assertEqual(members.current, [("10.0.0.1:6379", "10.0.0.1:6379", 1),
                                           ("10.0.0.2:6379", "10.0.0.2:6379", 1),
                                           ("[fd00::1]:6379", "[fd00::1]:6379", 1)])
        self.assertEqual(name.ttl, 20)
        lookups = len(self.resolver.lookups)
        self.resolver.a["cache.example"].append(("10.0.0.3", 20))
        self.clock.advance(19.9)
        self.assertEqual(len(self.resolver.lookups), lookups)
        self.clock.advance(0.1)
        self.assertEqual(len(self.resolver.lookups), lookups + 2)  # A and AAAA
        self.assertIn(("10.0.0.3:6379", "10.0.0.3:6379", 1), members.current)
        self.assertEqual(name.last_refresh, 20.0)
        # The same answer again applies nothing.
        applied = len(members.applied)
        self.clock.advance(20)
        self.assertEqual(len(members.applied), applied)
        name.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_ttl_clamped(self) -> None:
        """A TTL below dns_min_ttl waits dns_min_ttl; above dns_max_ttl, dns_max_ttl."""
        self.resolver.a["cache.example"] = [("10.0.0.1", 1)]
        name, _ = watch(self.resolver, "dns:cache.example:6379", self.clock,
                        min_ttl=5, max_ttl=300)
        name.start()
        self.assertEqual(name.ttl, 5)
        self.assertEqual([c.getTime() for c in self.clock.getDelayedCalls()], [5.0])
        self.resolver.a["cache.example"] = [("10.0.0.1", 86400)]
        self.clock.advance(5)
        self.assertEqual(name.ttl, 300)
        self.assertEqual([c.getTime() for c in self.clock.getDelayedCalls()], [305.0])
        name.stop()

    def test_one_lookup_at_a_time(self) -> None:
        """The next lookup is scheduled only once the last is answered."""
        self.resolver.a["cache.example"] = [("10.0.0.1", 1)]
        self.resolver.hold = True
        name, members = watch(self.resolver, "dns:cache.example:6379", self.clock, min_ttl=1)
        name.start()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(100)
        self.assertEqual(members.applied, [])
        self.resolver.hold = False
        for held in self.resolver.held:
            held.callback(None)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        name.stop()

    def test_failure_keeps_the_set(self) -> None:
        """
        Timeouts, SERVFAIL and refused lookups keep the last good set, are
        counted, retried at dns_min_ttl, and logged once per interval.
        """
        self.resolver.a["cache.example"] = [("10.0.0.1", 60), ("10.0.0.2", 60)]
        name, members = watch(self.resolver, "dns:cache.example:6379", self.clock, min_ttl=2)
        name.start()
        good = members.current
        errors = [DNSQueryTimeoutError(5), DNSServerError("SERVFAIL"),
                  ConnectionRefusedError("refused")]
        with capturedLogs() as events:
            self.resolver.error = errors[0]
            self.clock.advance(60)
            for error in errors[1:] + errors:
                self.resolver.error = error
                self.clock.advance(2)
        self.assertEqual(name.failures, 6)
        self.assertEqual(members.current, good)
        self.assertEqual(len(members.applied), 1)
        self.assertIn("ConnectionRefusedError", name.last_error or "")
        lines = [e for e in events if "lookup failed" in e.get("log_format", "")]
        # 10 seconds of failures every 2 seconds: the first line and one more.
        self.assertEqual(len(lines), 2)
        self.resolver.error = None
        self.clock.advance(2)
        self.assertIsNone(name.last_error)
        name.stop()

    def test_empty_answer_held(self) -> None:
        """
        An empty answer or NXDOMAIN keeps the set for dns_empty_hold
        seconds; then (with max_ejected_percent 100) it empties; an answer
        within the hold cancels it.
        """
        self.resolver.srv["_redis._tcp.example"] = [(10, 1, 6379, "a.example", 10)]
        self.resolver.a["a.example"] = [("10.0.0.1", 10)]
        name, members = watch(self.resolver, "srv:_redis._tcp.example", self.clock,
                              min_ttl=1, empty_hold=30, max_ejected_share=1.0)
        name.start()
        self.assertEqual(members.names(), ["a.example:6379"])
        self.resolver.srv["_redis._tcp.example"] = []  # empty
        self.clock.advance(10)
        self.clock.pump([1] * 20)
        self.assertEqual(members.names(), ["a.example:6379"])
        self.resolver.srv["_redis._tcp.example"] = [(10, 1, 6379, "a.example", 10)]
        self.clock.advance(1)
        self.assertIsNone(name.empty_since)
        del self.resolver.srv["_redis._tcp.example"]  # NXDOMAIN
        self.clock.advance(10)
        self.clock.pump([1] * 29)
        self.assertEqual(members.names(), ["a.example:6379"])
        self.assertEqual(name.failures, 0)
        self.clock.pump([1] * 2)
        self.assertEqual(members.names(), [])
        name.stop()

    def test_empty_answer_capped(self) -> None:
        """
        After the hold, an empty answer drains no more than
        max_ejected_percent of the backends, and empty answers after it
        drain no more.
        """
        self.resolver.a["cache.example"] = [(f"10.0.0.{i}", 10) for i in range(1, 6)]
        name, members = watch(self.resolver, "dns:cache.example:6379", self.clock,
                              min_ttl=1, empty_hold=5, max_ejected_share=0.5)
        name.start()
        self.resolver.a["cache.example"] = []
        self.clock.advance(10)
        self.clock.pump([1] * 20)
        self.assertEqual(len(members.current), 3)  # 5 - floor(2.5)
        self.assertEqual(len(members.applied), 2)
        # A single backend is never drained by empty answers at 50%.
        self.resolver.a["cache.example"] = [("10.0.0.9", 10)]
        self.clock.advance(1)
        self.resolver.a["cache.example"] = []
        self.clock.pump([1] * 40)
        self.assertEqual(members.names(), ["10.0.0.9:6379"])
        name.stop()

    def test_srv_priority_and_weights(self) -> None:
        """
        Only the lowest priority is used; SRV weights become balancing
        weights (0 becomes 1; large ones scaled to at most 100); targets are
        resolved and named TARGET:PORT.
        """
        self.resolver.srv["_redis._tcp.example"] = [
            (10, 60, 6379, "a.example", 30), (10, 0, 6380, "b.example", 30),
            (20, 100, 6379, "c.example", 30)]
        for target, address in (("a.example", "10.0.0.1"), ("b.example", "10.0.0.2"),
                                ("c.example", "10.0.0.3")):
            self.resolver.a[target] = [(address, 30)]
        name, members = watch(self.resolver, "srv:_redis._tcp.example", self.clock)
        name.start()
        self.assertEqual(members.current, [("a.example:6379", "10.0.0.1:6379", 60),
                                           ("b.example:6380", "10.0.0.2:6380", 1)])
        self.resolver.srv["_redis._tcp.example"] = [
            (1, 65535, 6379, "a.example", 30), (1, 6553, 6379, "c.example", 30)]
        self.clock.advance(30)
        self.assertEqual(members.current, [("a.example:6379", "10.0.0.1:6379", 100),
                                           ("c.example:6379", "10.0.0.3:6379", 10)])
        # The priority-10 group is gone: its own fallback is no longer asked for.
        name.stop()

    def test_one_family_fails(self) -> None:
        """
        A answered, AAAA failed: the IPv4 answer is applied, the IPv6
        backends known are kept, and the failure counted; with nothing
        known and nothing answered, the set is kept (not an empty answer).
        """
        self.resolver.a["cache.example"] = [("10.0.0.1", 10), ("fd00::1", 10)]
        name, members = watch(self.resolver, "dns:cache.example:6379", self.clock, min_ttl=1)
        name.start()
        self.resolver.a["cache.example"] = [("10.0.0.2", 10)]
        self.resolver.errors["AAAA"] = DNSServerError("SERVFAIL")
        self.clock.advance(10)
        self.assertEqual([m for m, _, _ in members.current], ["10.0.0.2:6379", "[fd00::1]:6379"])
        self.assertEqual(name.failures, 1)
        self.assertIn("DNSServerError", name.last_error or "")
        self.resolver.a["cache.example"] = []
        self.clock.advance(10)
        self.assertEqual([m for m, _, _ in members.current], ["[fd00::1]:6379"])
        self.assertIsNone(name.empty_since)
        name.stop()

    def test_stopped_while_asking(self) -> None:
        """An answer that comes after stop (shutdown) changes nothing and schedules nothing."""
        self.resolver.a["cache.example"] = [("10.0.0.1", 1)]
        self.resolver.hold = True
        name, members = watch(self.resolver, "dns:cache.example:6379", self.clock)
        name.start()
        name.stop()
        for held in self.resolver.held:
            held.callback(None)
        self.assertEqual(members.applied, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_backend_that_cannot_join(self) -> None:
        """A target the proxy refuses to add (logged) does not keep the others out."""
        added: List[str] = []

        def add(target: Target) -> str:
            if target.host == "10.0.0.2":
                raise ValueError("no certificate name for it")
            added.append(target.member)
            return target.member

        members = ClusterMembers("cache", add, lambda b: None, lambda b, w: None)
        with capturedLogs() as events:
            members.apply([Target(f"10.0.0.{i}:1", f"10.0.0.{i}", 1) for i in (1, 2, 3)])
        self.assertEqual(added, ["10.0.0.1:1", "10.0.0.3:1"])
        self.assertEqual(members.names(), ["10.0.0.1:1", "10.0.0.3:1"])
        self.assertTrue(any("cannot join" in e.get("log_format", "") for e in events))

    def test_refreshes_survive_a_broken_apply(self) -> None:
        """An exception while applying an answer is logged; lookups go on."""
        self.resolver.a["cache.example"] = [("10.0.0.1", 10)]
        name, members = watch(self.resolver, "dns:cache.example:6379", self.clock, min_ttl=1)

        def broken(targets: Sequence[Target]) -> None:
            raise ValueError("bug")

        members.apply = broken  # type: ignore[method-assign]
        name.start()
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        name.stop()


def ring_cluster(remap: bool = True) -> Tuple[Cluster, ClusterMembers, Clock]:
    """A consistent_hash cluster whose members a ClusterMembers changes."""
    clock = Clock()
    cluster = Cluster("cache", [], "consistent_hash", discovered=True, remap_on_eject=remap)

    def add(target: Target) -> Backend:
        backend = Backend(target.member, BackendPool(target.member, FakeEndpoint(),
                                                     BackendProtocol, clock=clock),
                          target.weight)
        backend.address = target.address  # type: ignore[attr-defined]
        cluster.add(backend)
        return backend

    members = ClusterMembers("cache", add, cluster.remove, cluster.set_weight)
    return cluster, members, clock


class RingTests(SynchronousTestCase):
    def mapping(self, cluster: Cluster) -> Dict[bytes, Optional[str]]:
        out = {}
        for key in KEYS:
            backend = cluster.pick(key)
            out[key] = None if backend is None else backend.name
        return out

    def test_address_change_keeps_keys(self) -> None:
        """
        An SRV target whose address changes is a new backend under the same
        name: the mapping of 10,000 keys is unchanged, and the keys of that
        target go to the backend at its new address.
        """
        cluster, members, clock = ring_cluster()
        resolver = FakeResolver()
        resolver.srv["_redis._tcp.example"] = [(1, 1, 6379, t, 5) for t in
                                               ("a.example", "b.example", "c.example")]
        for i, target in enumerate(("a.example", "b.example", "c.example")):
            resolver.a[target] = [(f"10.0.0.{i + 1}", 5)]
        name = DnsName("cache", Discovered("srv", "_redis._tcp.example", 0), resolver, clock,
                       members, min_ttl=1)
        name.start()
        before = self.mapping(cluster)
        self.assertEqual(sorted(set(before.values())),  # type: ignore[type-var]
                         ["a.example:6379", "b.example:6379", "c.example:6379"])
        old = next(b for b in cluster.backends if b.name == "b.example:6379")
        resolver.a["b.example"] = [("10.0.0.22", 5)]
        clock.advance(5)
        new = next(b for b in cluster.backends if b.name == "b.example:6379")
        self.assertIsNot(new, old)
        self.assertEqual(new.address, "10.0.0.22:6379")  # type: ignore[attr-defined]
        self.assertEqual(self.mapping(cluster), before)
        name.stop()

    def test_dns_members_named_by_address(self) -> None:
        """A dns: entry's members are its addresses: a new address is a new member."""
        cluster, members, clock = ring_cluster()
        members.apply([Target("10.0.0.1:6379", "10.0.0.1", 6379),
                       Target("10.0.0.2:6379", "10.0.0.2", 6379)])
        self.assertEqual(sorted(b.name for b in cluster.backends),
                         ["10.0.0.1:6379", "10.0.0.2:6379"])

    def test_remap_on_eject(self) -> None:
        """
        shard_on_eject = remap (the default, as before): an unavailable
        backend's keys go to the others, and only its keys move.
        """
        cluster, members, _ = ring_cluster(remap=True)
        members.apply([Target(f"s{i}:6379", f"10.0.0.{i}", 6379) for i in range(1, 4)])
        before = self.mapping(cluster)
        cluster.backends[0].disabled = True
        after = self.mapping(cluster)
        gone = cluster.backends[0].name
        for key in KEYS:
            if before[key] == gone:
                self.assertNotIn(after[key], (gone, None))
            else:
                self.assertEqual(after[key], before[key])

    def test_keep_on_eject(self) -> None:
        """
        shard_on_eject = keep: an unavailable backend's keys find no
        backend (the caller answers with the protocol's error); no other
        key moves.
        """
        cluster, members, _ = ring_cluster(remap=False)
        members.apply([Target(f"s{i}:6379", f"10.0.0.{i}", 6379) for i in range(1, 4)])
        before = self.mapping(cluster)
        cluster.backends[0].disabled = True
        after = self.mapping(cluster)
        gone = cluster.backends[0].name
        self.assertTrue(any(v == gone for v in before.values()))
        for key in KEYS:
            self.assertEqual(after[key], None if before[key] == gone else before[key])


class KeepMappingProtocolTests(SynchronousTestCase):
    def owner_and_other(self, harness: MultiplexHarness) -> Tuple[bytes, bytes]:
        """A key of the first backend, and one of another."""
        first = harness.assembly.cluster.backends[0]
        mine = next(k for k in KEYS if harness.assembly.cluster.pick(k) is first)
        other = next(k for k in KEYS if harness.assembly.cluster.pick(k) is not first)
        return mine, other

    def test_redis_error(self) -> None:
        """
        With shard_on_eject = keep, a redis request for a disabled backend's
        key gets an -ERR reply, and requests for other keys are served.
        """
        harness = MultiplexHarness(load_codec("redis"), backends=3, balance="consistent_hash",
                                   shard_on_eject="keep", mux_connections=1)
        mine, other = self.owner_and_other(harness)
        harness.assembly.cluster.backends[0].disabled = True
        client = harness.client()
        client.send(b"*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n" % (len(mine), mine))
        client.send(b"*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n" % (len(other), other))
        harness.connect()
        harness.serve(lambda connection, data: b"$1\r\nv\r\n" * data.count(b"GET"))
        reply = client.received()
        self.assertTrue(reply.startswith(b"-ERR "), reply)
        self.assertTrue(reply.endswith(b"\r\n$1\r\nv\r\n"), reply)

    def test_split_request_error(self) -> None:
        """
        With shard_on_eject = keep, an MGET with a key of the disabled
        backend and one of another gets the error (its part's), never a
        value read from the wrong backend.
        """
        harness = MultiplexHarness(load_codec("redis"), backends=3, balance="consistent_hash",
                                   shard_on_eject="keep", mux_connections=1)
        mine, other = self.owner_and_other(harness)
        harness.assembly.cluster.backends[0].disabled = True
        client = harness.client()
        client.send(b"*3\r\n$4\r\nMGET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n"
                    % (len(mine), mine, len(other), other))
        harness.connect()
        harness.serve(lambda connection, data: b"*1\r\n$1\r\nv\r\n")
        self.assertTrue(client.received().startswith(b"-ERR "), client.received())

    def test_memcached_error(self) -> None:
        """The same in memcached: SERVER_ERROR for the disabled backend's key."""
        harness = MultiplexHarness(load_codec("memcached"), backends=3,
                                   balance="consistent_hash", shard_on_eject="keep")
        mine, _ = self.owner_and_other(harness)
        harness.assembly.cluster.backends[0].disabled = True
        client = harness.client()
        client.send(b"get " + mine + b"\r\n")
        harness.connect()
        self.assertTrue(client.received().startswith(b"SERVER_ERROR "), client.received())


CONFIG = {"listen": ["tcp:6390"], "protocol": "redis", "balance": "consistent_hash",
          "check_interval": 0.0, "dns_min_ttl": 1.0, "dns_empty_hold": 10.0,
          "shutdown_timeout": 30.0}


class ServiceTests(SynchronousTestCase):
    """The whole path: a ProxyService on a MemoryReactorClock with a fake resolver."""

    def service(self, backend: List[str], **settings: Any) -> Tuple[ProxyService, FakeResolver]:
        resolver = FakeResolver()
        config = build_config(dict(CONFIG, backend=backend, **settings), {})
        service = ProxyService(config, reactor=MemoryReactorClock(), resolver=resolver,
                               open_files=65536)
        return service, resolver

    def test_added_and_drained(self) -> None:
        """
        Answers add backends through add_backend (started, shown in
        /metrics and /status); a removed address drains: it gets no new
        request, stays until its requests in flight are done, then closes.
        """
        service, resolver = self.service(["dns:cache.example:6379"])
        resolver.a["cache.example"] = [("10.0.0.1", 5), ("10.0.0.2", 5)]
        reactor = service.reactor
        service.startService()
        cluster = service.clusters["default"]
        self.assertEqual(sorted(b.name for b in cluster.backends),
                         ["10.0.0.1:6379", "10.0.0.2:6379"])
        self.assertEqual(service.discovered("default"), {"10.0.0.1:6379", "10.0.0.2:6379"})
        leaving = next(b for b in cluster.backends if b.name == "10.0.0.2:6379")
        leaving.outstanding = 1  # a request in flight
        resolver.a["cache.example"] = [("10.0.0.1", 5), ("10.0.0.3", 5)]
        reactor.advance(5)
        self.assertEqual(sorted(b.name for b in cluster.backends),
                         ["10.0.0.1:6379", "10.0.0.3:6379"])
        self.assertTrue(leaving.draining)
        self.assertIn(leaving.pool, service.pools)
        reactor.advance(1)
        self.assertIn(leaving.pool, service.pools)
        leaving.outstanding = 0
        reactor.advance(1)
        self.assertNotIn(leaving.pool, service.pools)
        self.assertEqual(leaving.pool.total, 0)

        metrics = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for m in build_registry(service).collect() for s in m.samples}
        self.assertEqual(metrics[("poolproxy_dns_backends",
                                  (("cluster", "default"), ("name", "dns:cache.example:6379")))], 2)
        self.assertEqual(metrics[("poolproxy_dns_failures_total",
                                  (("cluster", "default"), ("name", "dns:cache.example:6379")))], 0)
        self.assertIn(("poolproxy_backend_requests_total",
                       (("backend", "10.0.0.3:6379"), ("cluster", "default"))), metrics)
        resolver.error = DNSServerError("SERVFAIL")
        reactor.advance(5)
        status = status_snapshot(service, RateSampler(reactor))
        self.assertEqual(status["dns"], [{
            "cluster": "default", "name": "dns:cache.example:6379",
            "backends": ["10.0.0.1:6379", "10.0.0.3:6379"], "refreshed_seconds_ago": 7.0,
            "ttl": 1.0, "failures": 1, "last_error": "DNSServerError: SERVFAIL",
            "empty_since_seconds_ago": None}])
        service.stopService()
        reactor.advance(60)

    def test_moved_target_drains_under_another_name(self) -> None:
        """
        An SRV target that moves: its successor joins under its name, and
        the old backend drains as NAME@OLD_ADDRESS, so /metrics never has
        two series with the same labels.
        """
        service, resolver = self.service(["srv:_redis._tcp.example"])
        resolver.srv["_redis._tcp.example"] = [(1, 1, 6379, "a.example", 5)]
        resolver.a["a.example"] = [("10.0.0.1", 5)]
        service.startService()
        old = service.clusters["default"].backends[0]
        old.outstanding = 1
        resolver.a["a.example"] = [("10.0.0.9", 5)]
        service.reactor.advance(5)
        new = service.clusters["default"].backends[0]
        self.assertEqual((new.name, old.name), ("a.example:6379", "a.example:6379@10.0.0.1:6379"))
        self.assertEqual(old.pool.name, old.name)
        self.assertIn(old.pool, service.pools)
        seen = set()
        for family in build_registry(service).collect():
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                self.assertNotIn(key, seen)
                seen.add(key)
        old.outstanding = 0
        service.stopService()
        service.reactor.advance(60)

    def test_churn_keeps_the_client_cap(self) -> None:
        """
        Each backend DNS adds reserves descriptors (lowering the client cap
        when they no longer fit), and gives them back once it has drained:
        addresses that come and go leave the cap where it was.
        """
        resolver = FakeResolver()
        resolver.a["cache.example"] = [("10.0.0.1", 5)]
        config = build_config(dict(CONFIG, backend=["dns:cache.example:6379"], pool_size=50), {})
        service = ProxyService(config, reactor=MemoryReactorClock(), resolver=resolver,
                               open_files=400)
        service.startService()
        cap = service.limits.cap
        for i in range(2, 12):
            resolver.a["cache.example"] = [("10.0.0.1", 5), (f"10.0.1.{i}", 5)]
            service.reactor.advance(5)
            self.assertLess(service.limits.cap, cap)
            resolver.a["cache.example"] = [("10.0.0.1", 5)]
            service.reactor.advance(5)
        self.assertEqual(service.limits.cap, cap)
        service.stopService()
        service.reactor.advance(60)

    def test_cluster_starts_empty(self) -> None:
        """
        A cluster of DNS entries only starts with no backend, not ready,
        and is ready once an answer brings one.
        """
        service, resolver = self.service(["srv:_redis._tcp.example"])
        resolver.hold = True
        resolver.srv["_redis._tcp.example"] = [(1, 1, 6379, "a.example", 5)]
        resolver.a["a.example"] = [("10.0.0.1", 5)]
        service.startService()
        self.assertEqual(service.clusters["default"].backends, [])
        self.assertFalse(service.ready)
        resolver.hold = False
        for held in resolver.held:
            held.callback(None)
        self.assertEqual([b.name for b in service.clusters["default"].backends],
                         ["a.example:6379"])
        service.stopService()
        service.reactor.advance(60)

    def test_reload_leaves_dns_backends(self) -> None:
        """A SIGHUP reload keeps the backends DNS brought in (they are not in the file)."""
        resolver = FakeResolver()
        resolver.a["cache.example"] = [("10.0.0.1", 5)]
        settings = dict(CONFIG, backend=["127.0.0.1:7000", "dns:cache.example:6379"])
        config = build_config(settings, {})
        service = ProxyService(config, reactor=MemoryReactorClock(), resolver=resolver,
                               open_files=65536, reload_config=lambda: build_config(settings, {}))
        service.startService()
        self.assertEqual(len(service.clusters["default"].backends), 2)
        self.assertTrue(service.reload())
        self.assertEqual(sorted(b.name for b in service.clusters["default"].backends),
                         ["10.0.0.1:6379", "127.0.0.1:7000"])
        self.assertFalse(any(b.draining for b in service.clusters["default"].backends))
        service.stopService()
        service.reactor.advance(60)
