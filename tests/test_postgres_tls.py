"""
TLS in transaction mode (postgres), byte by byte, on fake transports:

  - the client side (L{TransactionFrontend}): SSLRequest answered C{S} and
    TLS started with a certificate configured, C{N} without; bytes sent
    after the request before the answer refused (the CVE-2021-23214 class)
    and counted; C{client_tls_mode = require};
  - the server side (L{ServerConnection}): SSLRequest first with
    C{backend_tls}, the StartupMessage only once the handshake is done;
    C{N}, anything else, bytes after C{S} (CVE-2021-23222), a failed
    handshake: each a failed connect with its reason, never plain text;
  - the wiring: the backend endpoint is not wrapped in TLS for postgres.

The handshakes themselves are real in tests/test_interop_postgres_tls.py.
"""

from __future__ import annotations

import os
import struct
from types import SimpleNamespace
from typing import Any, List, Tuple

from OpenSSL import SSL
from twisted.internet.address import UNIXAddress
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import ISSLTransport, ITLSTransport
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogLevel, capturedLogs
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import alsoProvides, implementer

from poolproxy.assemble import ClusterAssembly
from poolproxy.backends.pool import BackendUnavailable
from poolproxy.codecs import postgres as pg
from poolproxy.config import ConfigError, ProxyConfig, codec_options
from poolproxy.config.settings import BackendTLS
from poolproxy.config.tls import UpgradeTLS
from poolproxy.ops.rejections import RejectionSummary
from poolproxy.proxy.admission import Admission
from poolproxy.service import ProxyService
from poolproxy.proxy.transaction.server import KeyedPools
from poolproxy.util.tlsclient import TLSClientEndpoint
from tests.certs import TestCA, serial
from tests.test_config import BASE, ConfigTestCase, parse
from tests.test_tls_material import handshake, peer_serial

STARTUP = pg.startup_message({b"user": b"app", b"database": b"app"})
GSSENC_REQUEST = struct.pack("!II", 8, pg.GSSENC_REQUEST)


@implementer(ITLSTransport)
class StartTLSTransport(StringTransport):
    """
    A StringTransport with startTLS as Twisted's TCP transports have it:
    what is written after it goes under TLS (kept apart here, in
    C{encrypted}), and the transport then provides L{ISSLTransport}.

    @ivar tls: what startTLS was given, or L{None}.
    """

    def __init__(self, unix: bool = False) -> None:
        super().__init__(hostAddress=UNIXAddress("/tmp/.s.PGSQL.6432") if unix else None)
        self.tls: Any = None
        self.encrypted = b""

    def startTLS(self, contextFactory: Any, normal: bool = True) -> None:
        assert self.tls is None, "TLS started twice"
        self.tls = contextFactory
        alsoProvides(self, ISSLTransport)

    def write(self, data: bytes) -> None:
        if self.tls is not None:
            self.encrypted += data
        else:
            super().write(data)

    def abortConnection(self) -> None:
        self.loseConnection()


def error_of(data: bytes) -> Tuple[str, str, str]:
    """(severity, SQLSTATE, message) of the ErrorResponse C{data} holds."""
    reader = pg.MessageReader()
    [(kind, body)] = reader.feed(data)
    assert kind == b"E", data
    fields = pg.error_fields(body)
    return fields["S"], fields["C"], fields["M"]


class ClientSideTests(SynchronousTestCase):
    """SSLRequest, GSSENCRequest and require mode at a client's start-up."""

    def setUp(self) -> None:
        self.ca = TestCA(self)
        cert, key = self.ca.issue("localhost")
        self.tls = UpgradeTLS(cert, key, "client_tls_cert_file")

    def client(self, tls: bool = True, mode: str = "allow",
               unix: bool = False) -> Tuple[Any, StartTLSTransport]:
        self.reactor = MemoryReactorClock()
        config = ProxyConfig(protocol="postgres", listen=("tcp:0",), backend=("127.0.0.1:5432",),
                             auth_type="trust", client_tls_mode=mode)
        assembly = ClusterAssembly(config.clusters[0], config, self.reactor,
                                   Admission(10, 10, 1.0, clock=self.reactor),
                                   codec_options(config), client_tls=self.tls if tls else None)
        self.factory = assembly.frontend("l")
        client = self.factory.buildProtocol(None)
        transport = StartTLSTransport(unix=unix)
        client.makeConnection(transport)
        return client, transport

    def started(self) -> bool:
        """Whether the client's start-up went on: its first server connection is being made."""
        return len(self.reactor.tcpClients) == 1

    def refused(self) -> List[Tuple[str, int]]:
        return [(reason, n) for reason, n in self.factory.stats.refused.items() if n]

    def test_ssl_request_answered_s(self) -> None:
        """
        With a certificate: S in plain text, then TLS with the certificate;
        the StartupMessage comes under it.
        """
        client, transport = self.client()
        client.dataReceived(pg.ssl_request())
        self.assertEqual(transport.value(), b"S")
        self.assertIs(transport.tls, self.tls)
        self.assertFalse(self.started())
        client.dataReceived(STARTUP)
        self.assertTrue(self.started())
        self.assertFalse(transport.disconnecting)

    def test_refused_client_that_never_closes_is_aborted(self) -> None:
        """
        A client refused under TLS whose close never comes (a TLS close waits
        for the client's close_notify) is aborted at header_timeout.
        """
        client, transport = self.client()
        client.dataReceived(pg.ssl_request())
        client.dataReceived(struct.pack("!II", 8, 1234))  # no start-up packet
        self.assertEqual(error_of(transport.encrypted)[1], "08P01")
        aborted: List[bool] = []
        transport.abortConnection = lambda: aborted.append(True)  # type: ignore[method-assign]
        transport.connected = True
        self.reactor.advance(self.factory.login_timeout - 0.1)
        self.assertEqual(aborted, [])
        self.reactor.advance(0.1)
        self.assertEqual(aborted, [True])

    def test_ssl_request_in_pieces(self) -> None:
        """An SSLRequest that comes a byte at a time is answered once it is whole."""
        client, transport = self.client()
        for byte in pg.ssl_request():
            self.assertEqual(transport.value(), b"")
            client.dataReceived(bytes([byte]))
        self.assertEqual(transport.value(), b"S")
        self.assertIsNotNone(transport.tls)

    def test_no_certificate_answers_n(self) -> None:
        """Without a certificate: N, and the client goes on in plain text."""
        client, transport = self.client(tls=False)
        client.dataReceived(pg.ssl_request())
        self.assertEqual(transport.value(), b"N")
        self.assertIsNone(transport.tls)
        client.dataReceived(STARTUP)
        self.assertTrue(self.started())

    def test_gssenc_request_answered_n(self) -> None:
        """GSSENCRequest: N even with a certificate; an SSLRequest may follow (libpq's order)."""
        client, transport = self.client()
        client.dataReceived(GSSENC_REQUEST)
        self.assertEqual(transport.value(), b"N")
        self.assertIsNone(transport.tls)
        client.dataReceived(pg.ssl_request())
        self.assertEqual(transport.value(), b"NS")
        self.assertIsNotNone(transport.tls)

    def test_bytes_after_ssl_request_refused(self) -> None:
        """
        A StartupMessage sent with the SSLRequest, before the answer (what
        a man in the middle injects, CVE-2021-23214): no S, no TLS, the
        StartupMessage never read; FATAL 08P01 and the connection closed,
        counted for the per-interval log line.
        """
        client, transport = self.client()
        client.dataReceived(pg.ssl_request() + STARTUP)
        self.assertIsNone(transport.tls)
        self.assertEqual(error_of(transport.value()),
                         ("FATAL", "08P01", "received unencrypted data after SSL request"))
        self.assertTrue(transport.disconnecting)
        self.assertFalse(self.started())
        self.assertEqual(self.refused(), [("unencrypted_after_request", 1)])
        client.dataReceived(STARTUP)  # nothing more is read
        self.assertFalse(self.started())

    def test_one_byte_after_ssl_request_refused(self) -> None:
        """One byte is enough, even when the request itself came in pieces."""
        client, transport = self.client()
        request = pg.ssl_request()
        client.dataReceived(request[:5])
        client.dataReceived(request[5:] + b"\x16")
        self.assertIsNone(transport.tls)
        self.assertEqual(error_of(transport.value())[1], "08P01")
        self.assertTrue(transport.disconnecting)

    def test_refusals_logged_once_per_interval(self) -> None:
        """
        A hundred such clients (an attack, a broken driver) log nothing
        each: the rejection summary says, in one line per interval, how
        many were refused and why.
        """
        with capturedLogs() as events:
            self.client()
            listener = SimpleNamespace(name="pg", stats=self.factory.stats)
            summary = RejectionSummary(Admission(1, 0, 1.0, clock=self.reactor), lambda: [],
                                       self.reactor, interval=10.0, listeners=lambda: [listener])
            summary.start()
            self.addCleanup(summary.stop)
            for _ in range(100):
                client = self.factory.buildProtocol(None)
                client.makeConnection(StartTLSTransport())
                client.dataReceived(pg.ssl_request() + STARTUP)
            self.assertEqual([e for e in events if e.get("log_level") == LogLevel.warn], [])
            self.reactor.advance(10.0)
            self.reactor.advance(10.0)
        lines = [e["counts"] for e in events if e.get("log_format", "").startswith("rejected")]
        # (The first client, which never sends its start-up, is closed at
        # header_timeout: counted in the same line.)
        self.assertEqual(lines, [{"pg connections refused (bytes sent after SSLRequest before "
                                  "its answer)": 100, "pg head timeouts": 1}])

    def test_bytes_after_ssl_request_refused_without_certificate(self) -> None:
        """Without a certificate too (as PostgreSQL and PgBouncer): no N, closed."""
        client, transport = self.client(tls=False)
        client.dataReceived(pg.ssl_request() + STARTUP)
        self.assertEqual(error_of(transport.value())[1], "08P01")
        self.assertFalse(self.started())

    def test_bytes_after_gssenc_request_refused(self) -> None:
        """The same for a GSSENCRequest (PgBouncer's rule too)."""
        client, transport = self.client()
        client.dataReceived(GSSENC_REQUEST + pg.ssl_request())
        self.assertEqual(error_of(transport.value()),
                         ("FATAL", "08P01", "received unencrypted data after GSSAPI "
                                            "encryption request"))
        self.assertIsNone(transport.tls)

    def test_ssl_request_inside_tls_refused(self) -> None:
        """An SSLRequest under TLS is refused: TLS is never started twice."""
        client, transport = self.client()
        client.dataReceived(pg.ssl_request())
        client.dataReceived(pg.ssl_request())
        self.assertEqual(error_of(transport.encrypted)[1], "08P01")
        self.assertTrue(transport.disconnecting)

    def test_requests_repeated_refused(self) -> None:
        """Each request once (PostgreSQL's rule): a client cannot loop on N."""
        client, transport = self.client(tls=False)
        client.dataReceived(pg.ssl_request())
        client.dataReceived(pg.ssl_request())
        self.assertEqual(transport.value()[:1], b"N")
        self.assertEqual(error_of(transport.value()[1:])[1], "08P01")
        self.assertTrue(transport.disconnecting)

    def test_require_refuses_plain_text(self) -> None:
        """require: a StartupMessage without TLS gets FATAL 28000 "SSL required"."""
        client, transport = self.client(mode="require")
        client.dataReceived(STARTUP)
        self.assertEqual(error_of(transport.value()), ("FATAL", "28000", "SSL required"))
        self.assertTrue(transport.disconnecting)
        self.assertFalse(self.started())
        self.assertEqual(self.refused(), [("tls_required", 1)])

    def test_require_refuses_after_n(self) -> None:
        """require: a client that asked for GSS encryption only (N) is refused too."""
        client, transport = self.client(mode="require")
        client.dataReceived(GSSENC_REQUEST)
        client.dataReceived(STARTUP)
        self.assertEqual(error_of(transport.value()[1:])[:2], ("FATAL", "28000"))

    def test_require_takes_tls(self) -> None:
        """require: a client that asked for TLS goes on."""
        client, transport = self.client(mode="require")
        client.dataReceived(pg.ssl_request())
        client.dataReceived(STARTUP)
        self.assertTrue(self.started())
        self.assertEqual(self.refused(), [])

    def test_require_takes_cancel_requests_in_plain_text(self) -> None:
        """
        require: a CancelRequest in plain text is still taken (libpq before
        17 sends its cancels unencrypted); it only closes the connection.
        """
        client, transport = self.client(mode="require")
        client.dataReceived(pg.cancel_request(1234, b"abcd"))
        self.assertEqual(transport.value(), b"")
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.refused(), [])

    def test_unix_socket(self) -> None:
        """On a unix socket, as PostgreSQL: N, and require does not apply."""
        client, transport = self.client(mode="require", unix=True)
        client.dataReceived(pg.ssl_request())
        self.assertEqual(transport.value(), b"N")
        client.dataReceived(STARTUP)
        self.assertTrue(self.started())

    def test_require_without_certificate_is_not_required(self) -> None:
        """The factory never requires what it cannot serve (the configuration refuses it too)."""
        client, transport = self.client(tls=False, mode="require")
        client.dataReceived(STARTUP)
        self.assertTrue(self.started())


class SettingsTests(ConfigTestCase):
    """client_tls_* as flags and TOML keys: checked, files loaded, before anything starts."""

    def setUp(self) -> None:
        self.ca = TestCA(self)
        self.cert, self.key = self.ca.issue("localhost")
        self.argv = BASE + ["--protocol", "postgres", "--auth-type", "trust"]

    def test_default(self) -> None:
        """No certificate, allow: TLS off until configured."""
        config = parse(self.argv)
        self.assertEqual((config.client_tls_cert_file, config.client_tls_key_file,
                          config.client_tls_mode), (None, None, "allow"))

    def test_flags_and_file(self) -> None:
        """Flags and TOML keys, PgBouncer's names."""
        config = parse(self.argv + ["--client-tls-cert-file", self.cert,
                                    "--client-tls-key-file", self.key,
                                    "--client-tls-mode", "require"])
        self.assertEqual((config.client_tls_cert_file, config.client_tls_key_file,
                          config.client_tls_mode), (self.cert, self.key, "require"))
        path = self.write_toml(f'client_tls_cert_file = "{self.cert}"\n'
                               f'client_tls_key_file = "{self.key}"\n')
        config = parse(["--config", path] + self.argv)
        self.assertEqual(config.client_tls_key_file, self.key)

    def test_both_or_neither(self) -> None:
        """A certificate without its key, or a key alone, is refused, naming what is missing."""
        self.assertConfigError(self.argv + ["--client-tls-cert-file", self.cert],
                               "--client-tls-cert-file: needs client_tls_key_file too")
        self.assertConfigError(self.argv + ["--client-tls-key-file", self.key],
                               "--client-tls-key-file: needs client_tls_cert_file too")

    def test_require_needs_a_certificate(self) -> None:
        """require without a certificate would refuse every client: refused at startup."""
        self.assertConfigError(self.argv + ["--client-tls-mode", "require"],
                               "--client-tls-mode: require needs a certificate")

    def test_unknown_mode(self) -> None:
        """Only allow and require (PgBouncer's prefer, verify-ca... are not taken)."""
        self.assertFlagError("--client-tls-mode", "prefer", "allow", "require")

    def test_files_that_do_not_load(self) -> None:
        """Missing, not PEM, a key not the certificate's: one line naming the file, at startup."""
        missing = os.path.abspath(self.mktemp())
        _, other_key = self.ca.issue("other")
        for cert, key, fragment in [
                (missing, self.key, f"client_tls_cert_file: cannot read {missing}"),
                (self.cert, missing, f"client_tls_key_file: cannot read {missing}"),
                (self.key, self.key, "holds no PEM certificate"),
                (self.cert, self.cert, "no private key"),
                (self.cert, other_key, f"{self.cert} with client_tls_key_file {other_key}")]:
            self.assertConfigError(self.argv + ["--client-tls-cert-file", cert,
                                                "--client-tls-key-file", key],
                                   "--client-tls-cert-file: ", fragment)


class ServiceTests(SynchronousTestCase):
    def test_one_certificate_for_every_listener_reread_by_sighup(self) -> None:
        """
        The service reads the certificate once; every postgres listener's
        clients get that one, and SIGHUP re-reads it (it is rereadable).
        """
        ca = TestCA(self)
        cert, key = ca.issue("localhost")
        config = ProxyConfig(protocol="postgres", listen=("tcp:0", "tcp:0:interface=127.0.0.2"),
                             backend=("127.0.0.1:5432",), auth_type="trust",
                             client_tls_cert_file=cert, client_tls_key_file=key)
        service = ProxyService(config, reactor=MemoryReactorClock(), open_files=1024)
        self.assertIsInstance(service.client_tls, UpgradeTLS)
        self.assertEqual([listener.factory.tls for listener in service.listeners],
                         [service.client_tls] * 2)
        self.assertIn(service.client_tls, service.rereadable())
        self.assertEqual(service.client_tls.where, "--client-tls-cert-file")  # type: ignore

    def test_none_without_a_certificate(self) -> None:
        """No certificate: nothing to serve, nothing to re-read."""
        config = ProxyConfig(protocol="postgres", listen=("tcp:0",),
                             backend=("127.0.0.1:5432",), auth_type="trust")
        service = ProxyService(config, reactor=MemoryReactorClock(), open_files=1024)
        self.assertIsNone(service.client_tls)
        self.assertIsNone(service.listeners[0].factory.tls)


class UpgradeTLSTests(SynchronousTestCase):
    """The certificate served after an SSLRequest: real handshakes in memory, reloads."""

    def setUp(self) -> None:
        self.ca = TestCA(self)
        self.cert, self.key = self.ca.issue("localhost")
        self.tls = UpgradeTLS(self.cert, self.key, "--client-tls-cert-file")
        self.trust = Certificate.loadPEM(self.ca.ca.cert_pem.bytes())

    def served(self, **kwargs: Any) -> Any:
        d, _ = handshake(self.tls, optionsForClientTLS("localhost", self.trust, **kwargs))
        return self.successResultOf(d)

    def test_serves_its_certificate(self) -> None:
        """The handshake after an SSLRequest serves client_tls_cert_file."""
        self.assertEqual(peer_serial(self.served()), serial(self.cert))

    def test_alpn_postgresql_chosen(self) -> None:
        """A client offering postgresql (libpq 17+) gets it; one offering others gets none."""
        chosen = self.served(acceptableProtocols=[b"h2", b"postgresql"])
        self.assertEqual(chosen.transport.negotiatedProtocol, b"postgresql")
        other = self.served(acceptableProtocols=[b"h2", b"http/1.1"])
        self.assertIsNone(other.transport.negotiatedProtocol)

    def test_reload(self) -> None:
        """
        New files, then reload: later handshakes get the new certificate,
        and what changed is said; the same files again: nothing changed;
        files that do not load: the certificate in use is kept.
        """
        self.assertIsNone(self.tls.reload())
        old = serial(self.cert)
        self.ca.issue("localhost", cert_file=self.cert, key_file=self.key)
        changed = self.tls.reload()
        assert changed is not None
        self.assertIn("serving certificate O=", changed)
        self.assertIn(f"serial {serial(self.cert):x}", changed)
        self.assertIn(f"serial {old:x}", changed)
        self.assertEqual(peer_serial(self.served()), serial(self.cert))
        with open(self.key, "w") as f:
            f.write("not a key\n")
        self.assertRaises(ConfigError, self.tls.reload)
        self.assertEqual(peer_serial(self.served()), serial(self.cert))


def login_messages() -> bytes:
    """What a server sends for a login that needs no password, up to ReadyForQuery."""
    return (pg.authentication(pg.AUTH_OK) + pg.parameter_status(b"server_version", b"15")
            + pg.backend_key_data(77, b"\x00\x00\x00\x01") + pg.ready_for_query())


class ServerSideTests(SynchronousTestCase):
    """A server connection's TLS with backend_tls, up to its login."""

    def setUp(self) -> None:
        self.ca = TestCA(self)
        self.reactor = MemoryReactorClock()
        config = ProxyConfig(protocol="postgres", listen=("tcp:0",), backend=("db.internal:5432",),
                             auth_type="trust", backend_tls=BackendTLS(ca_file=self.ca.ca_file))
        self.assembly = ClusterAssembly(config.clusters[0], config, self.reactor,
                                        Admission(10, 10, 1.0, clock=self.reactor),
                                        codec_options(config))
        [self.backend] = self.assembly.cluster.backends
        shared = self.backend.shared
        assert isinstance(shared, KeyedPools)
        self.keyed = shared.get((b"app", b"app"))
        self.pool = self.keyed.pool

    def connect(self) -> Tuple["Any", Any, StartTLSTransport]:
        """Ask the pool for a connection; its TCP connect succeeds."""
        d = self.pool.acquire()
        host, port, factory, _, _ = self.reactor.tcpClients[-1]
        self.assertEqual((host, port), ("db.internal", 5432))
        protocol = factory.buildProtocol(None)
        transport = StartTLSTransport()
        protocol.makeConnection(transport)
        return d, protocol, transport

    def failed(self, d: Any) -> str:
        failure = self.failureResultOf(d, BackendUnavailable)
        return failure.getErrorMessage()

    def test_endpoint_not_wrapped(self) -> None:
        """
        The backend's endpoint is plain TCP (the health probe connects
        there); its connections start TLS themselves with the cluster's
        backend_tls, for the backend's host name.
        """
        self.assertNotIsInstance(self.backend.pool.endpoint, TLSClientEndpoint)
        self.assertIsNotNone(self.backend.tls)
        self.assertEqual(self.backend.tls.server_name, "db.internal")  # type: ignore[union-attr]

    def test_ssl_request_then_startup_after_handshake(self) -> None:
        """
        SSLRequest first, nothing else; on S, TLS with the backend's
        creator; the StartupMessage only once the handshake is done, under
        TLS; the login then makes the connection.
        """
        d, protocol, transport = self.connect()
        self.assertEqual(transport.value(), pg.ssl_request())
        protocol.dataReceived(b"S")
        self.assertIs(transport.tls, self.backend.tls)
        self.assertEqual(transport.encrypted, b"")
        self.assertNoResult(d)
        protocol.handshakeCompleted()
        self.assertEqual(pg.read_startup(transport.encrypted)[0].params,  # type: ignore[union-attr]
                         {b"user": b"app", b"database": b"app"})
        protocol.dataReceived(login_messages())
        self.successResultOf(d).release()
        self.assertEqual(self.pool.connects["ok"], 1)
        self.assertEqual(transport.value(), pg.ssl_request())  # nothing else in plain text

    def test_n_fails_the_connect(self) -> None:
        """N: no login in plain text; a failed connect counted as tls_error, saying why."""
        d, protocol, transport = self.connect()
        protocol.dataReceived(b"N")
        self.assertIn("the server does not accept TLS", self.failed(d))
        self.assertEqual(transport.value(), pg.ssl_request())
        self.assertIsNone(transport.tls)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.pool.connects["tls_error"], 1)

    def test_other_answer_is_a_protocol_error(self) -> None:
        """Neither S nor N (an ErrorResponse, another protocol): a failed connect."""
        d, protocol, transport = self.connect()
        protocol.dataReceived(pg.error_response(b"08P01", "what?"))
        self.assertIn("protocol error: the server answered SSLRequest with b'E'", self.failed(d))
        self.assertEqual(self.pool.connects["failed"], 1)
        self.assertIsNone(transport.tls)

    def test_bytes_after_s_refused(self) -> None:
        """
        S with bytes after it, before any handshake (CVE-2021-23222): not
        read, not taken for TLS; the connect fails.
        """
        d, protocol, transport = self.connect()
        protocol.dataReceived(b"S" + login_messages())
        self.assertIn("unencrypted data after its TLS answer", self.failed(d))
        self.assertIsNone(transport.tls)
        self.assertEqual(self.pool.connects["failed"], 1)

    def test_handshake_failure(self) -> None:
        """A handshake that fails is a tls_error connect, with OpenSSL's reason."""
        d, protocol, transport = self.connect()
        protocol.dataReceived(b"S")
        error = SSL.Error([("SSL routines", "", "certificate verify failed")])
        protocol.connectionLost(Failure(error))
        self.assertEqual(self.failed(d), "backend db.internal:5432: TLS handshake failed: "
                                         "certificate verify failed")
        self.assertEqual(self.pool.connects["tls_error"], 1)
        self.assertEqual(transport.encrypted, b"")  # no StartupMessage went out

    def test_closed_before_answering(self) -> None:
        """A server that closes instead of answering: a tls_error connect."""
        d, protocol, transport = self.connect()
        protocol.connectionLost(Failure(ConnectionDone("closed")))
        self.assertIn("TLS handshake failed", self.failed(d))
        self.assertEqual(self.pool.connects["tls_error"], 1)

    def test_timeout_while_negotiating(self) -> None:
        """
        A server that never answers: the connect times out (connect_timeout
        covers the negotiation and the handshake), the connection is
        aborted, and its loss afterwards fires nothing twice.
        """
        d, protocol, transport = self.connect()
        self.reactor.advance(self.pool.connect_timeout)
        self.assertTrue(transport.disconnecting)
        protocol.connectionLost(Failure(ConnectionDone("aborted")))
        self.failureResultOf(d)  # the acquire's own timeout, as long, may come first
        self.assertEqual(self.pool.connects["timeout"], 1)

    def test_timeout_during_handshake(self) -> None:
        """The same once S was answered and the handshake does not finish."""
        d, protocol, transport = self.connect()
        protocol.dataReceived(b"S")
        self.reactor.advance(self.pool.connect_timeout)
        protocol.connectionLost(Failure(ConnectionDone("aborted")))
        self.failureResultOf(d)  # the acquire's own timeout, as long, may come first
        self.assertEqual(self.pool.connects["timeout"], 1)

    def cancelling(self) -> Tuple[Any, Any, StartTLSTransport]:
        """
        A connection logged in under TLS whose query is being cancelled: it,
        and the cancel's own connection (its sender protocol and transport).
        """
        d, protocol, transport = self.connect()
        protocol.dataReceived(b"S")
        protocol.handshakeCompleted()
        protocol.dataReceived(login_messages())
        conn = self.successResultOf(d)
        conn.protocol.cancel()
        _, _, factory, _, _ = self.reactor.tcpClients[-1]
        sender = factory.buildProtocol(None)
        cancel_transport = StartTLSTransport()
        sender.makeConnection(cancel_transport)
        return conn, sender, cancel_transport

    def test_cancel_under_tls(self) -> None:
        """
        A cancel goes on a connection of its own, under TLS as the session
        does: SSLRequest, then the CancelRequest once the handshake is done.
        """
        conn, sender, cancel_transport = self.cancelling()
        self.assertEqual(cancel_transport.value(), pg.ssl_request())
        sender.dataReceived(b"S")
        self.assertIs(cancel_transport.tls, self.backend.tls)
        sender.handshakeCompleted()
        self.assertEqual(cancel_transport.encrypted, pg.cancel_request(77, b"\x00\x00\x00\x01"))
        self.assertEqual(conn.protocol.cancelling, 1)
        sender.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(conn.protocol.cancelling, 0)

    def test_cancel_not_sent_without_tls(self) -> None:
        """A server that answers N to the cancel's SSLRequest gets no cancel key in plain text."""
        _, sender, cancel_transport = self.cancelling()
        sender.dataReceived(b"N")
        self.assertEqual(cancel_transport.value(), pg.ssl_request())
        self.assertTrue(cancel_transport.disconnecting)


class PlainServerTests(SynchronousTestCase):
    """Without backend_tls nothing changes: the StartupMessage is the first thing sent."""

    def test_startup_first(self) -> None:
        """No SSLRequest: the StartupMessage goes first, as before."""
        reactor = MemoryReactorClock()
        config = ProxyConfig(protocol="postgres", listen=("tcp:0",), backend=("127.0.0.1:5432",),
                             auth_type="trust")
        assembly = ClusterAssembly(config.clusters[0], config, reactor,
                                   Admission(10, 10, 1.0, clock=reactor), codec_options(config))
        [backend] = assembly.cluster.backends
        self.assertIsNone(backend.tls)
        shared = backend.shared
        assert isinstance(shared, KeyedPools)
        pool = shared.get((b"app", b"app")).pool
        d = pool.acquire()
        protocol = reactor.tcpClients[-1][2].buildProtocol(None)
        transport = StartTLSTransport()
        protocol.makeConnection(transport)
        self.assertEqual(pg.read_startup(transport.value())[0].params,  # type: ignore[union-attr]
                         {b"user": b"app", b"database": b"app"})
        protocol.dataReceived(login_messages())
        self.successResultOf(d)

    def test_timeout_during_login(self) -> None:
        """
        A login that does not finish in connect_timeout: aborted, and the
        connection's loss afterwards fires nothing a second time.
        """
        reactor = MemoryReactorClock()
        config = ProxyConfig(protocol="postgres", listen=("tcp:0",), backend=("127.0.0.1:5432",),
                             auth_type="trust")
        assembly = ClusterAssembly(config.clusters[0], config, reactor,
                                   Admission(10, 10, 1.0, clock=reactor), codec_options(config))
        [backend] = assembly.cluster.backends
        shared = backend.shared
        assert isinstance(shared, KeyedPools)
        pool = shared.get((b"app", b"app")).pool
        d = pool.acquire()
        protocol = reactor.tcpClients[-1][2].buildProtocol(None)
        transport = StartTLSTransport()
        protocol.makeConnection(transport)
        reactor.advance(pool.connect_timeout)
        protocol.connectionLost(Failure(ConnectionDone("aborted")))
        self.failureResultOf(d)
        self.assertEqual(pool.connects["timeout"], 1)

