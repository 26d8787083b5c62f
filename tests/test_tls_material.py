"""
What SIGHUP re-reads, file by file: an ssl: listener's certificate and key
(poolproxy.config.tls.ServerTLS), a cluster's backend_tls CAs and client
certificate (ClientTLS), the secret files (poolproxy.config.secrets), and the
reload's one line per change (poolproxy.ops.reload).  Handshakes run in
memory (iosim) with certificates made by the test.
"""

from __future__ import annotations

import os
from typing import Any, List, Optional, Tuple

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs, formatEvent
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.test.iosim import ConnectionCompleter
from twisted.trial.unittest import SynchronousTestCase

from poolproxy.config import ConfigError, ProxyConfig
from poolproxy.config.secrets import SecretFile, Secrets
from poolproxy.config.settings import BackendTLS
from poolproxy.config.tls import ClientTLS, ServerTLS
from poolproxy.ops.reload import Reloader
from poolproxy.util.tlsclient import TLSClientEndpoint, TLSHandshakeFailed
from tests.certs import TestCA, serial


class Echo(Protocol):
    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)


def handshake(server_creator: Any, client_creator: Any) -> Tuple["Deferred[Any]", Any]:
    """
    One connection in memory: a TLS server made by C{server_creator}, a
    TLSClientEndpoint made by C{client_creator}; the handshake run to its end.

    @return: the connect's Deferred, and the pump.
    """
    reactor = MemoryReactorClock()
    reactor.listenTCP(4321, TLSMemoryBIOFactory(server_creator, False, Factory.forProtocol(Echo),
                                                clock=reactor))
    endpoint = TLSClientEndpoint(TCP4ClientEndpoint(reactor, "10.0.0.1", 4321), client_creator,
                                 clock=reactor)
    d = endpoint.connect(Factory.forProtocol(Protocol))
    pump = ConnectionCompleter(reactor).succeedOnce(greet=False)
    assert pump is not None
    pump.flush()
    return d, pump


def peer_serial(protocol: Any) -> int:
    return protocol.transport.getPeerCertificate().get_serial_number()


class ServerTLSTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.ca = TestCA(self)
        self.cert, self.key = self.ca.issue("localhost")
        self.tls = ServerTLS(f"ssl:6380:privateKey={self.key}:certKey={self.cert}", "--listen x")
        self.trust = Certificate.loadPEM(self.ca.ca.cert_pem.bytes())

    def served(self, **kwargs: Any) -> Any:
        d, _ = handshake(self.tls, optionsForClientTLS("localhost", self.trust, **kwargs))
        return self.successResultOf(d)

    def test_serves_its_certificate(self) -> None:
        """Connections get the certificate of the files the ssl: string names."""
        self.assertEqual(peer_serial(self.served()), serial(self.cert))

    def test_clients_offering_alpn(self) -> None:
        """
        A client that offers ALPN protocols (curl, browsers: h2, http/1.1)
        completes the handshake, and none is chosen.  Twisted's own callback
        answered b"", which pyOpenSSL 24 and later turn into a fatal alert.
        """
        protocol = self.served(acceptableProtocols=[b"h2", b"http/1.1"])
        self.assertIsNone(protocol.transport.negotiatedProtocol)

    def test_reload(self) -> None:
        """
        The same files: nothing to say.  New files: new connections get the
        new certificate, and the line names both.  Files that do not load:
        an error, and the certificate in use is kept.
        """
        self.assertIsNone(self.tls.reload())
        old = serial(self.cert)
        self.ca.issue("localhost", cert_file=self.cert, key_file=self.key)
        changed = self.tls.reload()
        assert changed is not None
        self.assertIn(f"serial {serial(self.cert):x}", changed)
        self.assertIn("(was O=", changed)
        self.assertIn(f"serial {old:x}", changed)
        self.assertEqual(peer_serial(self.served()), serial(self.cert))

        _, other_key = self.ca.issue("other")
        with open(other_key, "rb") as f, open(self.key, "wb") as out:
            out.write(f.read())  # a key that is not the certificate's
        e = self.assertRaises(ConfigError, self.tls.reload)
        self.assertIn("--listen x: cannot load its certificate and key", str(e))
        self.assertEqual(peer_serial(self.served()), serial(self.cert))


class ClientTLSTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.ca = TestCA(self)
        self.other = TestCA(self, "another CA")
        self.ca_file = os.path.abspath(self.mktemp())
        self.write_ca(self.ca)

    def write_ca(self, *authorities: TestCA) -> None:
        with open(self.ca_file, "wb") as out:
            for authority in authorities:
                out.write(authority.ca.cert_pem.bytes())

    def server(self, authority: TestCA, name: str = "backend.example") -> ServerTLS:
        cert, key = authority.issue(name)
        return ServerTLS(f"ssl:1:privateKey={key}:certKey={cert}", "test")

    def test_verifies_against_the_ca_file(self) -> None:
        """Trusted CA and right name: connected; another CA: refused."""
        tls = ClientTLS(BackendTLS(ca_file=self.ca_file), "cluster c: backend_tls")
        d, _ = handshake(self.server(self.ca), tls.creator("backend.example"))
        self.successResultOf(d)
        d, _ = handshake(self.server(self.other), tls.creator("backend.example"))
        self.failureResultOf(d, TLSHandshakeFailed)

    def test_ca_rotation(self) -> None:
        """
        The backend moves to a certificate of another CA; the CA file gets
        that CA too and is reloaded: new connections to the backend verify.
        A CA file then broken keeps the CAs in use.
        """
        tls = ClientTLS(BackendTLS(ca_file=self.ca_file), "cluster c: backend_tls")
        creator = tls.creator("backend.example")
        d, _ = handshake(self.server(self.other), creator)
        self.failureResultOf(d, TLSHandshakeFailed)
        self.assertIsNone(tls.reload())
        self.write_ca(self.ca, self.other)
        self.assertEqual(tls.reload(), f"trusting the 2 CA certificates of {self.ca_file}")
        d, _ = handshake(self.server(self.other), creator)
        self.successResultOf(d)

        with open(self.ca_file, "w") as f:
            f.write("nothing here\n")
        e = self.assertRaises(ConfigError, tls.reload)
        self.assertEqual(str(e), f"cluster c: backend_tls: ca_file {self.ca_file} holds no "
                                 "PEM certificate")
        d, _ = handshake(self.server(self.other), creator)
        self.successResultOf(d)

    def test_client_certificate_rotation(self) -> None:
        """A new client certificate in the files is named by the reload."""
        cert, key = self.ca.issue("client.example")
        tls = ClientTLS(BackendTLS(ca_file=self.ca_file, cert_file=cert, key_file=key), "c")
        self.assertIsNone(tls.reload())
        self.ca.issue("client.example", cert_file=cert, key_file=key)
        changed = tls.reload()
        assert changed is not None
        self.assertTrue(changed.startswith("client certificate O="), changed)
        self.assertIn(f"serial {serial(cert):x}", changed)

    def test_unverified(self) -> None:
        """verify = false: any certificate, any name, is accepted."""
        tls = ClientTLS(BackendTLS(verify=False), "c")
        d, _ = handshake(self.server(self.other, "else.example"), tls.creator("backend.example"))
        self.successResultOf(d)


class SecretFileTests(SynchronousTestCase):
    def write(self, path: str, text: str) -> None:
        with open(path, "w") as f:
            f.write(text)

    def test_reload(self) -> None:
        """
        Unchanged: nothing to say; changed: the new one is in use and the
        line does not quote it; unreadable or empty: an error, the old kept.
        """
        path = os.path.abspath(self.mktemp())
        self.write(path, "s3cret\n")
        secret = SecretFile("client_password_file", path, "--client-password-file")
        self.assertEqual(secret.value, "s3cret")
        self.assertIsNone(secret.reload())
        self.write(path, "n3w\n")
        changed = secret.reload()
        self.assertEqual(changed, f"a new secret from {path} is in use")
        self.assertEqual(secret.value, "n3w")
        self.write(path, "\n")
        e = self.assertRaises(ConfigError, secret.reload)
        self.assertIn("holds no password", str(e))
        os.remove(path)
        self.assertRaises(ConfigError, secret.reload)
        self.assertEqual(secret.value, "n3w")

    def test_secrets_of_a_config(self) -> None:
        """Secrets.read reads the files a configuration names, and only those."""
        path = os.path.abspath(self.mktemp())
        self.write(path, "tok\n")
        secrets = Secrets.read(ProxyConfig(admin_token_file=path))
        self.assertEqual((secrets.admin_token, secrets.client_password), ("tok", None))
        self.assertEqual(list(secrets.files), ["admin_token_file"])


class FakeItem:
    """Something re-read: what its reloads say, one after the other."""

    def __init__(self, where: str, outcomes: List[Any]) -> None:
        self.where = where
        self.outcomes = outcomes

    def reload(self) -> Optional[str]:
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome


class FakeTarget:
    config = ProxyConfig()
    clusters: dict = {}
    listeners: list = []

    def __init__(self, items: List[FakeItem]) -> None:
        self.items = items

    def rereadable(self) -> List[FakeItem]:
        return self.items


class ReloaderRereadTests(SynchronousTestCase):
    def test_one_line_per_change(self) -> None:
        """
        Each reload re-reads every item: a line for each that changed, an
        error line for each that could not be read (kept), none otherwise.
        """
        items = [FakeItem("--client-password-file", [None, "a new secret from /p is in use"]),
                 FakeItem("listener x", [ConfigError("listener x: cannot load it"), None])]
        reloader = Reloader(FakeTarget(items), ProxyConfig)  # type: ignore[arg-type]
        with capturedLogs() as events:
            self.assertTrue(reloader.reload())
            self.assertTrue(reloader.reload())
        said = [formatEvent(e) for e in events]
        self.assertEqual(said, [
            "reload: listener x: cannot load it; keeping the one in use",
            "reload: done",
            "reload: --client-password-file: a new secret from /p is in use",
            "reload: done",
        ])
        self.assertEqual(reloader.files_kept, 1)
