"""
Client connection limits: the gate that pauses a listening port, the
per-listener, per-process and per-source counts, the TCP port that accepts
within its room and counts accept errors, and the file-descriptor budget
the caps must fit in.  On fakes (a memory reactor, StringTransports), except
where a real listening socket is the point (L{GatedPortTests}).
"""

from __future__ import annotations

import errno
import resource
import socket
from typing import Any, List

from twisted.internet.address import IPv4Address, UNIXAddress
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from poolproxy.config import ConfigError, ProxyConfig, build_config
from poolproxy.config.budget import MARGIN, WEB_CONNECTIONS, client_cap, descriptor_budget
from poolproxy.proxy.limits import (
    LISTENER_LIMIT,
    PROXY_LIMIT,
    ConnectionLimits,
    LimitedFactory,
    ListenerClients,
)
from poolproxy.service import ProxyService
from poolproxy.stats import ListenerStats
from poolproxy.util.accepting import AcceptGate, AcceptingReactor, CappedFactory, GatedPort
from poolproxy.util.descriptors import raise_open_file_limit


class FakePort:
    """What a gate needs of a listening port: whether it reads."""

    def __init__(self) -> None:
        self.reading = True
        self.disconnecting = False

    def stopReading(self) -> None:
        self.reading = False

    def startReading(self) -> None:
        self.reading = True


class Client(Protocol):
    """A client connection as a frontend is: it adds and discards itself."""

    def __init__(self, clients: ListenerClients) -> None:
        self.clients = clients

    def connectionMade(self) -> None:
        self.clients.add(self)

    def connectionLost(self, reason: Any = None) -> None:
        self.clients.discard(self)


def connect(clients: ListenerClients, host: str = "10.0.0.1") -> Client:
    client = Client(clients)
    client.makeConnection(StringTransport(peerAddress=IPv4Address("TCP", host, 5000)))
    return client


class GateTests(SynchronousTestCase):
    def test_reasons_add_up(self) -> None:
        """
        The port stops reading at the first reason and reads again only once
        the last is released; a reason held twice is released once.
        """
        port = FakePort()
        gate = AcceptGate()
        gate.attach(port)
        self.assertTrue(gate.hold("admin"))
        self.assertFalse(gate.hold("admin"))
        self.assertFalse(port.reading)
        self.assertTrue(gate.hold(LISTENER_LIMIT))
        gate.release("admin")
        self.assertFalse(port.reading)  # the limit still holds it
        gate.release(LISTENER_LIMIT)
        self.assertTrue(port.reading)
        gate.release("admin")  # not held: nothing happens
        self.assertTrue(port.reading)

    def test_attached_while_held(self) -> None:
        """A port attached to a held gate (bound while full) never reads."""
        gate = AcceptGate()
        gate.hold("admin")
        port = FakePort()
        gate.attach(port)
        self.assertFalse(port.reading)

    def test_detached_port_is_not_read_again(self) -> None:
        """
        After the port stops listening (detached), or while it is closing,
        releasing the gate does not read it: its socket is closed.
        """
        gate = AcceptGate()
        port = FakePort()
        gate.attach(port)
        gate.hold("admin")
        gate.detach()
        gate.release("admin")
        self.assertFalse(port.reading)
        gate.attach(port)
        gate.hold("admin")
        port.disconnecting = True
        gate.release("admin")
        self.assertFalse(port.reading)


class LimitTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.limits = ConnectionLimits(cap=5)
        self.ports = [FakePort(), FakePort()]
        self.gates = [AcceptGate(), AcceptGate()]
        for gate, port in zip(self.gates, self.ports):
            gate.attach(port)
        self.stats = [ListenerStats(), ListenerStats()]
        self.a = self.limits.listener(self.stats[0], self.gates[0], cap=2)
        self.b = self.limits.listener(self.stats[1], self.gates[1])

    def test_listener_limit_pauses_and_resumes(self) -> None:
        """
        A listener at its own cap stops accepting (the other goes on) and
        accepts again once a client leaves; each stop is counted.
        """
        first, second = connect(self.a), connect(self.a)
        self.assertEqual(self.a.room(), 0)
        self.assertFalse(self.ports[0].reading)
        self.assertEqual(self.gates[0].reasons, {LISTENER_LIMIT})
        self.assertTrue(self.ports[1].reading)
        self.assertEqual(self.stats[0].limit_pauses, 1)
        first.connectionLost()
        self.assertTrue(self.ports[0].reading)
        self.assertEqual(self.a.room(), 1)
        self.assertEqual(len(self.a), 1)
        self.assertIn(second, self.a)
        self.assertEqual(list(self.a), [second])

    def test_process_limit_pauses_every_listener(self) -> None:
        """
        At the process's cap every listener stops accepting, and all accept
        again once one client leaves, wherever it was.
        """
        clients = [connect(self.b) for _ in range(4)]
        self.assertTrue(self.ports[0].reading)
        last = connect(self.a)
        self.assertEqual(self.limits.open, 5)
        self.assertEqual([p.reading for p in self.ports], [False, False])
        self.assertEqual(self.gates[1].reasons, {PROXY_LIMIT})
        self.assertEqual((self.a.room(), self.b.room()), (0, 0))
        self.assertEqual([s.limit_pauses for s in self.stats], [1, 1])
        clients[0].connectionLost()
        self.assertEqual([p.reading for p in self.ports], [True, True])
        self.assertEqual((self.a.room(), self.b.room()), (1, 1))
        last.connectionLost()
        self.assertEqual(self.limits.open, 3)

    def test_cap_lowered_under_the_open_ones(self) -> None:
        """
        A cap lowered below the connections open (a reload added backends)
        stops every listener at once; raised again, they accept.
        """
        clients = [connect(self.b) for _ in range(3)]
        self.limits.set_cap(3)
        self.assertEqual([p.reading for p in self.ports], [False, False])
        self.assertEqual(self.b.room(), 0)
        self.limits.set_cap(4)
        self.assertEqual([p.reading for p in self.ports], [True, True])
        clients[0].connectionLost()
        self.assertEqual(self.limits.open, 2)

    def test_a_client_counts_once(self) -> None:
        """Adding or discarding a client twice changes nothing more."""
        client = connect(self.b)
        self.b.add(client)
        self.assertEqual(self.limits.open, 1)
        client.connectionLost()
        client.connectionLost()
        self.assertEqual(self.limits.open, 0)

    def test_limit(self) -> None:
        """A listener's limit is its own cap, or the process's if lower."""
        self.assertEqual((self.a.limit, self.b.limit), (2, 5))


class PerSourceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.limits = ConnectionLimits(cap=100, per_source=2)
        self.stats = ListenerStats()
        self.clients = self.limits.listener(self.stats, AcceptGate())
        self.built: List[Any] = []
        inner = Factory.forProtocol(Protocol)
        self.factory = LimitedFactory(inner, self.clients)

    def accept(self, host: str) -> Any:
        """What a port does: build a protocol for the address, connect it if any."""
        address = IPv4Address("TCP", host, 4000 + len(self.built))
        protocol = self.factory.buildProtocol(address)
        if protocol is None:
            return None
        client = Client(self.clients)
        client.makeConnection(StringTransport(peerAddress=address))
        self.built.append(client)
        return client

    def test_source_over_its_limit_is_refused(self) -> None:
        """
        A third connection from one address is refused before any protocol
        is built, and counted; other addresses are not affected; once one
        of the first two leaves, the address may connect again.
        """
        first = self.accept("10.0.0.1")
        self.assertIsNotNone(self.accept("10.0.0.1"))
        self.assertIsNone(self.accept("10.0.0.1"))
        self.assertEqual(self.stats.refused["per_source"], 1)
        self.assertIsNotNone(self.accept("10.0.0.2"))
        first.connectionLost()
        self.assertIsNotNone(self.accept("10.0.0.1"))
        self.assertEqual(self.limits.from_source("10.0.0.1"), 2)
        for client in self.built:
            client.connectionLost()
        self.assertEqual(self.limits.from_source("10.0.0.1"), 0)
        self.assertEqual(self.limits.open, 0)

    def test_unix_clients_are_not_limited(self) -> None:
        """A UNIX-socket client has no source address to limit."""
        for _ in range(3):
            self.assertIsNotNone(self.factory.buildProtocol(UNIXAddress(None)))
            client = Client(self.clients)
            client.makeConnection(StringTransport(peerAddress=UNIXAddress(None)))
        self.assertEqual(self.stats.refused["per_source"], 0)

    def test_past_the_room_is_refused(self) -> None:
        """
        A connection a port accepted with no room left (a batch past the
        limit) is refused, counted as "limit".
        """
        limits = ConnectionLimits(cap=1)
        stats = ListenerStats()
        clients = limits.listener(stats, AcceptGate())
        factory = LimitedFactory(Factory.forProtocol(Protocol), clients)
        connect(clients)
        self.assertIsNone(factory.buildProtocol(IPv4Address("TCP", "10.0.0.9", 1)))
        self.assertEqual(stats.refused["limit"], 1)


class Accepted(Protocol):
    def __init__(self, built: List["Accepted"]) -> None:
        built.append(self)


class GatedPortTests(SynchronousTestCase):
    """A real listening socket on loopback; the reactor is a memory one, never run."""

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.built: List[Accepted] = []
        factory = Factory.forProtocol(lambda: Accepted(self.built))
        self.room = 2
        self.errors: List[str] = []
        self.port = GatedPort(0, factory, 50, "127.0.0.1", self.reactor)
        self.port.room = lambda: self.room  # type: ignore[method-assign]
        self.port.on_accept_error = self.errors.append  # type: ignore[method-assign]
        self.port.startListening()
        self.addCleanup(self.port.connectionLost, None)
        self.socks: List[socket.socket] = []
        self.addCleanup(lambda: [s.close() for s in self.socks])

    def test_reactor_makes_gated_ports(self) -> None:
        """
        An AcceptingReactor over Twisted's own reactor makes GatedPorts with
        its room; over a fake (a memory reactor) it leaves listening to it.
        """
        from twisted.internet import reactor

        port = AcceptingReactor(reactor, lambda: 7).listenTCP(0, Factory.forProtocol(Protocol),
                                                              50, "127.0.0.1")
        self.addCleanup(port.connectionLost, None)
        self.assertIsInstance(port, GatedPort)
        self.assertEqual(port.room(), 7)
        fake = AcceptingReactor(self.reactor).listenTCP(0, Factory.forProtocol(Protocol))
        self.assertNotIsInstance(fake, GatedPort)
        self.assertEqual(len(self.reactor.tcpServers), 1)

    def test_accepts_at_most_the_room(self) -> None:
        """
        With five connections waiting and room for two, one readable event
        accepts two; the rest wait in the backlog for the next.
        """
        port_number = self.port.getHost().port
        for _ in range(5):
            self.socks.append(socket.create_connection(("127.0.0.1", port_number), timeout=5))
        self.port.doRead()
        self.assertEqual(len(self.built), 2)
        self.room = 10
        self.port.doRead()
        self.assertEqual(len(self.built), 5)
        for accepted in self.built:
            accepted.transport.connectionLost(Failure(ConnectionDone()))

    def test_accept_errors_are_counted_not_logged(self) -> None:
        """
        EMFILE on accept (the process is out of descriptors) is counted by
        name, with nothing logged; Twisted would log a line per attempt.
        """
        class Exhausted:
            def accept(self) -> Any:
                raise OSError(errno.EMFILE, "Too many open files")

        real, self.port.socket = self.port.socket, Exhausted()
        self.addCleanup(setattr, self.port, "socket", real)
        with capturedLogs() as events:
            for _ in range(3):
                self.port.doRead()
        self.assertEqual(self.errors, ["EMFILE"] * 3)
        self.assertEqual([e for e in events if "EMFILE" in str(e.get("log_format", ""))
                          or "acceptError" in e], [])


class CappedFactoryTests(SynchronousTestCase):
    def test_web_connections_capped(self) -> None:
        """
        At the cap the gate is held (more wait in the backlog) and a batch
        past it is refused; a connection closing releases the gate.
        """
        gate = AcceptGate()
        port = FakePort()
        gate.attach(port)
        factory = CappedFactory(Factory.forProtocol(Protocol), 2, gate)
        opened = []
        for _ in range(2):
            p = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
            p.makeConnection(StringTransport())
            opened.append(p)
        self.assertFalse(port.reading)
        self.assertEqual(factory.room(), 0)
        self.assertIsNone(factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1)))
        opened[0].connectionLost(None)
        self.assertTrue(port.reading)


def config(**values: Any) -> ProxyConfig:
    return build_config(values, {}, "proxy.toml")


CLUSTERS = {
    "listener": [{"listen": "tcp:7001", "cluster": "cache"},
                 {"listen": "tcp:7002", "cluster": "web", "max_connections": 50}],
    "cluster": [
        {"name": "cache", "protocol": "redis", "pool_size": 20,
         "backend": [{"address": "10.0.0.1:6379"}, {"address": "10.0.0.2:6379"}]},
        {"name": "web", "protocol": "http", "check_interval": 0,
         "backend": [{"address": "10.0.1.1:80"}]},
    ],
}


class BudgetTests(SynchronousTestCase):
    def test_arithmetic(self) -> None:
        """
        Pools sum pool_size over every backend of every cluster (overrides
        included), health checks count the backends of clusters that check,
        the web endpoint its connections and socket; the rest is for clients.
        """
        budget = descriptor_budget(config(**CLUSTERS), 1024)
        self.assertEqual((budget.pools, budget.health_checks, budget.web, budget.listeners,
                          budget.margin), (2 * 20 + 10, 2, WEB_CONNECTIONS + 1, 2, MARGIN))
        self.assertEqual(budget.clients, 1024 - 50 - 2 - 33 - 2 - 64)
        self.assertEqual(client_cap(config(**CLUSTERS), budget), budget.clients)

    def test_explicit_cap_fits(self) -> None:
        """max_client_connections is the cap when it fits."""
        c = config(listen="tcp:7001", backend="10.0.0.1:6379", max_client_connections=100)
        self.assertEqual(client_cap(c, descriptor_budget(c, 1024)), 100)

    def test_cap_that_does_not_fit(self) -> None:
        """
        A cap above what the limit leaves is one line naming the key, the
        cap, the limit and every share of it.
        """
        c = config(listen="tcp:7001", backend="10.0.0.1:6379", max_client_connections=1000)
        e = self.assertRaises(ConfigError, client_cap, c, descriptor_budget(c, 256))
        self.assertEqual(str(e), (
            "max_client_connections (in proxy.toml): 1000 client connections do not fit: the "
            "open file limit (256) less 10 for backend pools, 1 for health checks, 33 for the "
            "web endpoint, 1 for listeners and a margin of 64 leaves 147; raise the limit "
            "(ulimit -n, systemd LimitNOFILE=) or lower pool_size or this"))

    def test_listener_cap_that_does_not_fit(self) -> None:
        """A listener's max_connections above what the limit leaves is an error too."""
        c = config(**CLUSTERS)
        e = self.assertRaises(ConfigError, client_cap, c, descriptor_budget(c, 200))
        self.assertTrue(str(e).startswith("listener 'tcp:7002' max_connections: 50 client "
                                          "connections do not fit: the open file limit (200)"),
                        str(e))

    def test_no_room_at_all(self) -> None:
        """Pools that take the whole limit leave no client: an error, not a cap of 0."""
        c = config(listen="tcp:7001", backend="10.0.0.1:6379", pool_size=500)
        e = self.assertRaises(ConfigError, client_cap, c, descriptor_budget(c, 512))
        self.assertIn("no descriptor is left for client connections", str(e))
        self.assertIn("500 for backend pools", str(e))

    def test_listener_key_checked(self) -> None:
        """max_connections in [[listener]] is an integer of at least 1."""
        tables = dict(CLUSTERS, listener=[{"listen": "tcp:7001", "cluster": "cache",
                                           "max_connections": 0}])
        e = self.assertRaises(ConfigError, config, **tables)
        self.assertIn("listener[0].max_connections (in proxy.toml): must be at least 1", str(e))

    def test_service_takes_the_derived_cap(self) -> None:
        """
        A service sized by a 256-descriptor limit caps its clients at what
        the budget leaves, each listener at its own cap if lower; one that
        cannot fit raises the same error.
        """
        c = config(**CLUSTERS)
        service = ProxyService(c, reactor=MemoryReactorClock(), open_files=1024)
        self.assertEqual(service.limits.cap, descriptor_budget(c, 1024).clients)
        self.assertEqual([l.connection_limit for l in service.listeners],
                         [service.limits.cap, 50])
        self.assertRaises(ConfigError, ProxyService, c, reactor=MemoryReactorClock(),
                          open_files=150)


class RaiseLimitTests(SynchronousTestCase):
    def test_soft_limit_raised_to_hard(self) -> None:
        """The soft open file limit goes up to the hard one; the old one is reported."""
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        self.addCleanup(resource.setrlimit, resource.RLIMIT_NOFILE, (soft, hard))
        lowered = min(soft, hard, 512)
        if hard == resource.RLIM_INFINITY or lowered >= hard:
            self.skipTest(f"needs a finite hard limit above {lowered}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (lowered, hard))
        self.assertEqual(raise_open_file_limit(), (lowered, hard))
        self.assertEqual(resource.getrlimit(resource.RLIMIT_NOFILE), (hard, hard))
        self.assertEqual(raise_open_file_limit(), (hard, hard))
