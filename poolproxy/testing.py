"""
Test helpers for poolproxy and for people extending it, in the spirit of
L{treq.testing}: fakes of Twisted's interfaces, never of poolproxy's own code.

L{FakeEndpoint} is an L{IStreamClientEndpoint} whose connection attempts the
test completes or fails by hand; connected protocols get a
L{FakeTransport}, a L{StringTransport} that records the request to close and
delivers C{connectionLost} when the test says so, as a reactor would later.
"""

from __future__ import annotations

from typing import Any, Callable, List, Mapping, Optional

from twisted.internet.defer import Deferred
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectingCancelledError, ConnectionDone, ConnectionRefusedError
from twisted.internet.interfaces import IProtocolFactory, IStreamClientEndpoint
from twisted.internet.protocol import Protocol
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from zope.interface import implementer

from poolproxy.hooks.calling import Hook, ListenerHooks
from poolproxy.hooks.subjects import HookClient, HookRequest


class FakeTransport(StringTransport):
    """
    A L{StringTransport} for one protocol; L{loseConnection} only marks it,
    and L{FakeEndpoint.deliver_losses} (or L{lose}) tells the protocol.
    """

    def __init__(self, protocol: Protocol) -> None:
        super().__init__()
        self.protocol = protocol
        self.lost = False
        self.aborted = False

    def abortConnection(self) -> None:
        self.aborted = True
        super().abortConnection()

    def lose(self, reason: Optional[Failure] = None) -> None:
        """
        The connection is gone: tell the protocol once.
        """
        if not self.lost:
            self.lost = True
            self.disconnecting = True
            self.protocol.connectionLost(reason or Failure(ConnectionDone()))


class _Attempt:
    def __init__(self, factory: IProtocolFactory, deferred: "Deferred[Any]") -> None:
        self.factory = factory
        self.deferred = deferred


@implementer(IStreamClientEndpoint)
class FakeEndpoint:
    """
    A client endpoint whose connection attempts wait for the test.

    @ivar attempts: attempts not yet completed, oldest first.
    @ivar transports: the transport of every connection made.
    @ivar cancelled: how many attempts were cancelled (connect timeouts).
    """

    address = IPv4Address("TCP", "127.0.0.1", 1)

    def __init__(self) -> None:
        self.attempts: List[_Attempt] = []
        self.transports: List[FakeTransport] = []
        self.cancelled = 0

    def connect(self, factory: IProtocolFactory) -> "Deferred[Any]":
        def cancel(d: "Deferred[Any]") -> None:
            # As Twisted's TCP endpoints do: not a CancelledError.
            self.cancelled += 1
            self.attempts[:] = [a for a in self.attempts if a.deferred is not d]
            d.errback(ConnectingCancelledError(self.address))

        d: "Deferred[Any]" = Deferred(cancel)
        self.attempts.append(_Attempt(factory, d))
        return d

    def succeed(self, count: int = 1) -> List[FakeTransport]:
        """
        Complete the oldest C{count} attempts.

        @return: the new transports.
        """
        made = []
        for _ in range(count):
            attempt = self.attempts.pop(0)
            protocol = attempt.factory.buildProtocol(self.address)
            assert protocol is not None, "the factory refused the connection"
            transport = FakeTransport(protocol)  # type: ignore[arg-type]
            protocol.makeConnection(transport)
            self.transports.append(transport)
            made.append(transport)
            attempt.deferred.callback(protocol)
        return made

    def fail(self, count: int = 1, reason: Optional[Exception] = None) -> None:
        """
        Fail the oldest C{count} attempts (connection refused by default).
        """
        for _ in range(count):
            attempt = self.attempts.pop(0)
            attempt.deferred.errback(reason or ConnectionRefusedError("fake refusal"))

    def open_transports(self) -> List[FakeTransport]:
        """The transports whose connection is not lost yet."""
        return [t for t in self.transports if not t.lost]

    def deliver_losses(self) -> int:
        """
        Deliver C{connectionLost} to every protocol whose transport was
        asked to close.

        @return: how many were delivered.
        """
        closing = [t for t in self.transports if t.disconnecting and not t.lost]
        for t in closing:
            t.lose()
        return len(closing)


class HarnessClient:
    """One client connection of a L{MultiplexHarness}: what it sends, what it got."""

    def __init__(self, factory: Any) -> None:
        self.protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 50000))
        self.transport = FakeTransport(self.protocol)
        self.protocol.makeConnection(self.transport)
        self._taken = b""

    def send(self, data: bytes) -> None:
        """The client writes C{data}."""
        self.protocol.dataReceived(data)

    def received(self) -> bytes:
        """Everything the proxy wrote to this client so far."""
        return self._taken + self.transport.value()

    def stop_reading(self) -> None:
        """
        The client stops reading: its socket's buffer is full, and the
        transport pauses the proxy's writes to it, as Twisted's do.
        """
        self.protocol.pauseProducing()

    def read(self) -> bytes:
        """
        The client reads everything written to it so far (and reads on:
        the transport resumes the proxy, as Twisted's do once drained).
        """
        data = self.transport.value()
        self._taken += data
        self.transport.clear()
        self.protocol.resumeProducing()
        return data

    @property
    def closed(self) -> bool:
        """Whether the proxy asked to close the connection."""
        return bool(self.transport.disconnecting)

    def close(self) -> None:
        """The client goes away."""
        self.transport.lose()

    def half_close(self) -> None:
        """The client shuts down its sending side (C{shutdown(SHUT_WR)}, C{nc -N})."""
        self.protocol.readConnectionLost()


class MultiplexHarness:
    """
    A listener of a multiplexed codec wired in memory exactly as the proxy
    wires it (the mode's frontend, each backend's pool, shared and pinned
    connections, admission) on a L{Clock}, for codec authors' tests and
    poolproxy's own: clients are protocols on L{FakeTransport}s, every
    backend a L{FakeEndpoint} whose connects L{connect} completes; the
    test plays the backends by reading what each connection was sent and
    writing replies into it (L{serve}).

        harness = MultiplexHarness(codec, mux_connections=1)
        client = harness.client()
        client.send(b"GET k\\n")
        harness.connect()
        harness.serve(lambda connection, data: b"v\\n")
        assert client.received() == b"v\\n"

    @param settings: L{poolproxy.config.ProxyConfig} fields (pool_size,
        mux_connections, request_timeout, deny_commands...); health checks
        are off unless C{check_interval} is given.
    @ivar clock: the L{Clock} every timer runs on.
    @ivar endpoints: each backend's L{FakeEndpoint}, by address.
    """

    def __init__(self, codec: Any, backends: int = 1,
                 hooks: Optional[Mapping[str, Callable[[Any], Any]]] = None,
                 **settings: Any) -> None:
        """
        @param hooks: the listener's hooks, point -> callable (as a
            C{[hooks]} table names them), timed by C{hook_timeout} on C{clock}.
        """
        from twisted.internet.task import Clock

        from poolproxy.assemble import ClusterAssembly
        from poolproxy.config import ProxyConfig, codec_options
        from poolproxy.proxy.admission import Admission

        self.clock = Clock()
        addresses = tuple(f"backend{i}:{6379 + i}" for i in range(backends))
        settings.setdefault("check_interval", 0.0)
        config = ProxyConfig(listen=("tcp:0",), backend=addresses,
                             protocol=getattr(codec, "name", "harness"), **settings)
        self.config = config
        self.admission = Admission(config.max_concurrency, config.queue_size,
                                   config.queue_timeout, clock=self.clock)
        self.endpoints = {address: FakeEndpoint() for address in addresses}
        self.assembly = ClusterAssembly(config.clusters[0], config, self.clock, self.admission,
                                        codec_options(config), codec,
                                        endpoint=self.endpoints.__getitem__)
        self.cluster = self.assembly.cluster
        self.factory = self.assembly.frontend("harness")
        self.factory.hooks = ListenerHooks("harness", self.clock, config.hook_timeout)
        self.factory.hooks.use(hooks or {})
        self.factory.routes = {self.cluster.name: self.cluster}
        self.clients: List[HarnessClient] = []

    def client(self) -> HarnessClient:
        """A new client connection."""
        client = HarnessClient(self.factory)
        self.clients.append(client)
        return client

    def connect(self) -> int:
        """Complete every connect attempt waiting, on every backend; how many."""
        made = 0
        for endpoint in self.endpoints.values():
            while endpoint.attempts:
                endpoint.succeed()
                made += 1
        return made

    def connections(self) -> List[FakeTransport]:
        """The proxy's open connections to the backends (the proxy's side of each)."""
        return [t for e in self.endpoints.values() for t in e.open_transports()]

    def serve(self, answer: Any) -> int:
        """
        Play the backends once: every open connection that was sent something
        gets C{answer(connection, data)} written back (C{b""}: nothing).
        Repeats while answers lead to more being sent; returns how many
        connections were answered in all.
        """
        answered = 0
        busy = True
        while busy:
            busy = False
            self.connect()
            for transport in self.connections():
                data = transport.value()
                if not data:
                    continue
                transport.clear()
                busy = True
                answered += 1
                reply = answer(transport, data)
                if reply and not transport.lost:
                    transport.protocol.dataReceived(reply)
            self.deliver_losses()
        return answered

    def deliver_losses(self) -> int:
        """
        Deliver the closes the proxy asked for, to clients and backends
        alike, until no more are asked for (a client's loss closes its
        pinned connection); how many.
        """
        delivered = 0
        while True:
            before = delivered
            for endpoint in self.endpoints.values():
                delivered += endpoint.deliver_losses()
            for client in self.clients:
                if client.transport.disconnecting and not client.transport.lost:
                    client.transport.lose()
                    delivered += 1
            if delivered == before:
                return delivered


# -- hooks (poolproxy.hooks): calling one in a unit test ----------------------


def hook_client(username: Optional[str] = None, password: Optional[str] = None,
                identity: Any = None, protocol: str = "redis", listener: str = "test",
                host: str = "127.0.0.1", port: int = 50000, **attributes: Any) -> HookClient:
    """
    A L{HookClient} as a listener would give hooks: C{attributes} sets any
    other of its attributes (C{database}, C{parameters}, C{headers}, C{tls}...).
    """
    client = HookClient(listener, protocol, IPv4Address("TCP", host, port))
    client.username, client.password, client.identity = username, password, identity
    for name, value in attributes.items():
        setattr(client, name, value)
    return client


def hook_request(*words: Any, client: Optional[HookClient] = None, codec: Any = None,
                 cluster: str = "default", **http: Any) -> HookRequest:
    """
    A L{HookRequest}: for redis or memcached, C{words} is the command as a
    client sends it (C{"SET", "k", "v"}), framed by C{codec} (the redis
    codec unless given) so that C{key}, C{command}, C{args} and C{keys}
    are what the proxy gives; for http, give C{method}, C{path}, C{host}
    and C{headers} instead.
    """
    client = client if client is not None else hook_client()
    if not words:
        request = HookRequest(client, cluster)
        for name, value in http.items():
            setattr(request, name, value)
        return request
    if codec is None:
        from poolproxy.codecs.redis import RedisCodec

        codec = RedisCodec()
    args = [w if isinstance(w, bytes) else str(w).encode() for w in words]
    if codec.name == "redis":
        from poolproxy.codecs.redis import encode_command

        data = encode_command(args)
    else:
        data = b" ".join(args) + b"\r\n"
    frames = codec.request_framer(None).feed(data)
    if len(frames) != 1:
        raise ValueError(f"{words!r} is not one complete request to {codec.name}")
    frame = frames[0]
    return HookRequest(client, cluster, frame.key, frame.data, codec.describe, frame)


def call_hook(fn: Callable[[Any], Any], subject: Any, clock: Any = None,
              timeout: float = 1.0) -> Any:
    """
    Call C{fn} on C{subject} as the proxy does: a plain function's result
    as it is; a Deferred's or coroutine's once it has fired, or, still
    pending, a Deferred that fires with it (advance C{clock}, a L{Clock}
    by default, past C{timeout} to see it time out).  A hook that raises
    or times out gives a L{poolproxy.hooks.calling.HookFailure}.
    """
    from twisted.internet.task import Clock
    from twisted.logger import Logger

    from poolproxy.util.throttled import ThrottledLog

    clock = clock if clock is not None else Clock()
    hook = Hook("test", getattr(fn, "__qualname__", repr(fn)), fn, timeout, clock, "test",
                ThrottledLog(Logger(namespace="poolproxy.testing"), clock))
    result = hook(subject)
    if isinstance(result, Deferred):
        fired: List[Any] = []

        def keep(value: Any) -> Any:
            fired.append(value)
            return value

        result.addCallback(keep)
        if fired:
            return fired[0]
    return result
