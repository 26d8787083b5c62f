"""
TLS material read from files, and what makes each connection's TLS from it:

  - L{ServerTLS}: an C{ssl:} listener's certificate and key (Twisted's
    C{ssl:} endpoint string, parsed by Twisted);
  - L{UpgradeTLS}: the certificate and key served to PostgreSQL clients
    that ask for TLS on their plain connection (C{client_tls_cert_file},
    C{client_tls_key_file});
  - L{ClientTLS}: a cluster's C{backend_tls}, the CAs its backends'
    certificates are checked against and the client certificate it
    presents, with one connection creator per backend (its server name).

All read their files when made (a bad file is a L{ConfigError} at startup)
and again on L{reload} (SIGHUP): handshakes after it use what it read,
connections already made keep theirs, and a file that does not load leaves
the material in use as it was.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, Callable, List, Optional, Tuple

from OpenSSL import SSL, crypto
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint, serverFromString
from twisted.internet.interfaces import (
    IListeningPort,
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
    IProtocolFactory,
    IStreamServerEndpoint,
)
from twisted.internet.ssl import (
    Certificate,
    CertificateOptions,
    KeyPair,
    PrivateCertificate,
    optionsForClientTLS,
    platformTrust,
    trustRootFromCertificates,
)
from twisted.internet.testing import MemoryReactor
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import implementer

from poolproxy.config.settings import BackendTLS, ConfigError

_PEM_CERTIFICATE = re.compile(
    rb"-----BEGIN CERTIFICATE-----\r?\n.+?\r?\n-----END CERTIFICATE-----", re.DOTALL)


def describe(certificate: crypto.X509) -> str:
    """A certificate in one line for logs: subject, serial, expiry."""
    subject = ",".join(f"{k.decode()}={v.decode('utf-8', 'replace')}"
                       for k, v in certificate.get_subject().get_components()) or "(no subject)"
    expires = (certificate.get_notAfter() or b"?").decode("ascii", "replace")
    return f"{subject} serial {certificate.get_serial_number():x} expires {expires}"


def _fingerprint(certificate: crypto.X509) -> bytes:
    return hashlib.sha256(crypto.dump_certificate(crypto.FILETYPE_ASN1, certificate)).digest()


def _no_alpn(connection: SSL.Connection, offered: List[bytes]) -> Any:
    # The proxy chooses no application protocol: the client goes on without
    # one (HTTP/1.1, RESP).  Twisted's own callback answers b"" instead,
    # which newer pyOpenSSL turns into a fatal internal_error alert: curl
    # and browsers, which always offer ALPN, could not connect.
    return SSL.NO_OVERLAPPING_PROTOCOLS


class _ServingTLS:
    """
    A certificate and key that connections are served with, read from
    files: each connection's TLS is made from what the last read gave.
    Subclasses say how the files are read (L{_load}).

    @ivar certificate: the certificate served (OpenSSL's X509).
    """

    def __init__(self, where: str) -> None:
        """
        @param where: how logs and errors name it (its setting, its endpoint).
        @raise ConfigError: the certificate or key does not load.
        """
        self.where = where
        self._context, self.certificate = self._load()

    def _load(self) -> Tuple[SSL.Context, Any]:
        """
        A context and the certificate it serves, from the files.

        @raise ConfigError: they do not load.
        """
        raise NotImplementedError

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        return SSL.Connection(self._context, None)

    def reload(self) -> Optional[str]:
        """
        Load the certificate and key again; new connections get them.

        @return: what changed, or L{None} for the same certificate.
        @raise ConfigError: they do not load; the ones in use are kept.
        """
        context, certificate = self._load()
        if _fingerprint(certificate) == _fingerprint(self.certificate):
            return None
        old, self._context, self.certificate = self.certificate, context, certificate
        return f"serving certificate {describe(certificate)} (was {describe(old)})"


@implementer(IOpenSSLServerConnectionCreator)
class ServerTLS(_ServingTLS):
    """
    The certificate and key of one C{ssl:} listener, and its endpoint.
    """

    def __init__(self, description: str, where: str) -> None:
        """
        @param description: the listener's C{ssl:} server endpoint string.
        @param where: how logs and errors name it (its setting and endpoint).
        @raise ConfigError: the certificate or key does not load.
        """
        self.description = description
        self._endpoint: Any = None
        super().__init__(where)

    def _load(self) -> Tuple[SSL.Context, Any]:
        try:
            # Twisted's parser reads privateKey, certKey, extraCertChain,
            # dhParameters... from the files the string names.
            endpoint = serverFromString(MemoryReactor(), self.description)
            options: CertificateOptions = endpoint._sslContextFactory
            context = options.getContext()  # checks that the key is the certificate's
        except Exception as e:
            raise ConfigError(f"{self.where}: cannot load its certificate and key: "
                              f"{_reason(e)}") from None
        context.set_alpn_select_callback(_no_alpn)
        if self._endpoint is None:
            self._endpoint = endpoint
        return context, options.certificate

    def endpoint(self, reactor: Any, description: Optional[str] = None) -> "TLSServerEndpoint":
        """
        Where the listener listens (the port, interface and backlog of
        C{description}, its own if not given), each connection's TLS made
        by this.  The port is C{reactor}'s C{listenTCP}'s, as a tcp
        listener's is (and so gated by the connection limits alike).
        """
        parsed = (self._endpoint if description is None
                  else serverFromString(MemoryReactor(), description))
        tcp = TCP4ServerEndpoint(reactor, parsed._port, parsed._backlog, parsed._interface)
        return TLSServerEndpoint(tcp, self, reactor)


@implementer(IOpenSSLServerConnectionCreator)
class UpgradeTLS(_ServingTLS):
    """
    The certificate and key served to clients that ask for TLS on their
    plain connection (PostgreSQL's SSLRequest): C{client_tls_cert_file}
    (the certificate, intermediates after it) and C{client_tls_key_file}.
    A client offering ALPN C{postgresql} (libpq 17 and later) gets it
    chosen, as PostgreSQL chooses it.
    """

    def __init__(self, cert_file: str, key_file: str, where: str,
                 alpn: bytes = b"postgresql") -> None:
        self.cert_file = cert_file
        self.key_file = key_file
        self.alpn = alpn
        super().__init__(where)

    def _load(self) -> Tuple[SSL.Context, Any]:
        data = _read(self.cert_file, self.where, "client_tls_cert_file")
        blocks = _PEM_CERTIFICATE.findall(data)
        if not blocks:
            raise ConfigError(f"{self.where}: {self.cert_file} holds no PEM certificate")
        key_data = _read(self.key_file, self.where, "client_tls_key_file")
        try:
            key = KeyPair.load(key_data, crypto.FILETYPE_PEM)
        except Exception as e:
            raise ConfigError(f"{self.where}: client_tls_key_file {self.key_file}: no private "
                              f"key: {_reason(e)}") from None
        try:
            certificate = Certificate.loadPEM(blocks[0]).original
            options = CertificateOptions(
                privateKey=key.original, certificate=certificate,
                extraCertChain=[Certificate.loadPEM(b).original for b in blocks[1:]] or None)
            context = options.getContext()  # refuses a key that is not the certificate's
        except Exception as e:
            raise ConfigError(f"{self.where}: {self.cert_file} with client_tls_key_file "
                              f"{self.key_file}: {_reason(e)}") from None
        alpn = self.alpn

        def select(connection: SSL.Connection, offered: List[bytes]) -> Any:
            return alpn if alpn in offered else SSL.NO_OVERLAPPING_PROTOCOLS

        context.set_alpn_select_callback(select)
        return context, certificate


def client_tls(cert_file: Optional[str], key_file: Optional[str], mode: str,
               where: Callable[[str], str]) -> Optional[UpgradeTLS]:
    """
    The L{UpgradeTLS} of the C{client_tls_*} settings, or L{None} without a
    certificate.

    @param where: how errors name a setting (its flag, or key and file).
    @raise ConfigError: one of the two files is named without the other,
        C{require} without a certificate, or the files do not load.
    """
    if (cert_file is None) != (key_file is None):
        missing = "client_tls_key_file" if key_file is None else "client_tls_cert_file"
        given = "client_tls_cert_file" if key_file is None else "client_tls_key_file"
        raise ConfigError(f"{where(given)}: needs {missing} too (a certificate and its key)")
    if cert_file is None or key_file is None:
        if mode == "require":
            raise ConfigError(f"{where('client_tls_mode')}: require needs a certificate: "
                              "client_tls_cert_file and client_tls_key_file")
        return None
    return UpgradeTLS(cert_file, key_file, where("client_tls_cert_file"))


@implementer(IStreamServerEndpoint)
class TLSServerEndpoint:
    """
    TLS over a TCP server endpoint, each connection's TLS made by a
    L{ServerTLS}.
    """

    def __init__(self, tcp: IStreamServerEndpoint, tls: ServerTLS, clock: Any) -> None:
        self.tcp = tcp
        self.tls = tls
        self._clock = clock

    def listen(self, protocolFactory: IProtocolFactory) -> "Deferred[IListeningPort]":
        return self.tcp.listen(_RefusingTLSFactory(self.tls, False, protocolFactory,
                                                   clock=self._clock))


class _RefusingTLSFactory(TLSMemoryBIOFactory):
    """
    Twisted's TLS factory, except that a connection the factory it wraps
    refuses (L{None}: a connection limit) is closed by the port before any
    TLS, as a tcp listener's is; Twisted's would wrap L{None} and fail.
    """

    def buildProtocol(self, addr: Any) -> Any:
        protocol = self.wrappedFactory.buildProtocol(addr)
        if protocol is None:
            return None
        return self.protocol(self, protocol)


def is_tls_listener(description: str) -> bool:
    """Whether a server endpoint string is an C{ssl:} listener's."""
    return description.split(":", 1)[0].strip().lower() == "ssl"


class _ClientMaterial:
    """What one read of a C{backend_tls} table's files gave."""

    def __init__(self, trust: Any, client: Optional[PrivateCertificate],
                 chain: List[crypto.X509], ca_digest: bytes, ca_count: int) -> None:
        self.trust = trust
        self.client = client
        self.chain = chain
        self.ca_digest = ca_digest
        self.ca_count = ca_count


class ClientTLS:
    """
    A cluster's C{backend_tls}: the CAs trusted, the client certificate,
    and a connection creator per backend (L{creator}).

    @ivar spec: the table.
    @ivar generation: counts the reloads that changed something; creators
        remake their options when it moves.
    """

    def __init__(self, spec: BackendTLS, where: str) -> None:
        """
        @raise ConfigError: a file does not load.
        """
        self.spec = spec
        self.where = where
        self.generation = 0
        self.material = self._load()

    def _load(self) -> _ClientMaterial:
        spec = self.spec
        trust: Any = None
        digest, count = b"", 0
        if spec.verify and spec.ca_file is None:
            trust = platformTrust()
        elif spec.ca_file is not None:
            data = _read(spec.ca_file, self.where, "ca_file")
            blocks = _PEM_CERTIFICATE.findall(data)
            if not blocks:
                raise ConfigError(f"{self.where}: ca_file {spec.ca_file} holds no PEM certificate")
            try:
                authorities = [Certificate.loadPEM(block) for block in blocks]
            except Exception as e:
                raise ConfigError(f"{self.where}: ca_file {spec.ca_file}: {_reason(e)}") from None
            trust = trustRootFromCertificates(authorities)
            digest, count = hashlib.sha256(b"".join(blocks)).digest(), len(blocks)
        client: Optional[PrivateCertificate] = None
        chain: List[crypto.X509] = []
        if spec.cert_file is not None:
            client, chain = self._client_certificate(spec.cert_file, spec.key_file or spec.cert_file)
        return _ClientMaterial(trust, client, chain, digest, count)

    def _client_certificate(self, cert_file: str, key_file: str,
                            ) -> Tuple[PrivateCertificate, List[crypto.X509]]:
        data = _read(cert_file, self.where, "cert_file")
        blocks = _PEM_CERTIFICATE.findall(data)
        if not blocks:
            raise ConfigError(f"{self.where}: cert_file {cert_file} holds no PEM certificate")
        key_data = data if key_file == cert_file else _read(key_file, self.where, "key_file")
        try:
            key = KeyPair.load(key_data, crypto.FILETYPE_PEM)
        except Exception as e:
            raise ConfigError(f"{self.where}: key_file {key_file}: no private key: "
                              f"{_reason(e)}") from None
        try:
            leaf = Certificate.loadPEM(blocks[0])
            client = PrivateCertificate.fromCertificateAndKeyPair(leaf, key)
            chain = [Certificate.loadPEM(b).original for b in blocks[1:]]
            # Builds a context: refuses a key that is not the certificate's.
            CertificateOptions(privateKey=key.original, certificate=leaf.original).getContext()
        except Exception as e:
            raise ConfigError(f"{self.where}: cert_file {cert_file} with key_file {key_file}: "
                              f"{_reason(e)}") from None
        return client, chain

    def creator(self, server_name: Optional[str]) -> IOpenSSLClientConnectionCreator:
        """
        What makes the TLS of each connection to one backend, whose
        certificate must hold C{server_name} (sent as SNI too, unless it is
        an IP address).
        """
        return _BackendCreator(self, server_name)

    def reload(self) -> Optional[str]:
        """
        Read the files again; connections made after it use them.

        @return: what changed, or L{None}.
        @raise ConfigError: a file does not load; the material in use is kept.
        """
        new, old = self._load(), self.material
        changes = []
        if new.ca_digest != old.ca_digest:
            changes.append(f"trusting the {new.ca_count} CA certificates of {self.spec.ca_file}")
        if _client_fingerprint(new) != _client_fingerprint(old):
            assert new.client is not None
            changes.append(f"client certificate {describe(new.client.original)}")
        if not changes:
            return None
        self.material = new
        self.generation += 1
        return "; ".join(changes)


def _client_fingerprint(material: _ClientMaterial) -> Optional[bytes]:
    if material.client is None:
        return None
    return _fingerprint(material.client.original) + b"".join(_fingerprint(c) for c in material.chain)


@implementer(IOpenSSLClientConnectionCreator)
class _BackendCreator:
    """The TLS of the connections to one backend, remade after a reload."""

    def __init__(self, tls: ClientTLS, server_name: Optional[str]) -> None:
        self.tls = tls
        self.server_name = server_name
        self._generation = -1
        self._options: Any = None

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        if self._generation != self.tls.generation:
            self._options = self._make()
            self._generation = self.tls.generation
        return self._options.clientConnectionForTLS(tlsProtocol)

    def _make(self) -> Any:
        material, spec = self.tls.material, self.tls.spec
        if spec.verify:
            assert self.server_name is not None, "checked when the configuration was read"
            extra = {"extraCertChain": material.chain} if material.chain else None
            return optionsForClientTLS(self.server_name, material.trust, material.client,
                                       extraCertificateOptions=extra)
        client = material.client
        options = CertificateOptions(
            privateKey=client.privateKey.original if client is not None else None,
            certificate=client.original if client is not None else None,
            extraCertChain=material.chain or None)
        return _Unverified(options, self.server_name)


class _Unverified:
    """C{verify = false}: TLS that checks nothing, with SNI if there is a name."""

    def __init__(self, options: CertificateOptions, server_name: Optional[str]) -> None:
        self._context = options.getContext()
        self._sni = (server_name.encode("idna")
                     if server_name and not _is_ip(server_name) else None)

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        connection = SSL.Connection(self._context, None)
        if self._sni is not None:
            connection.set_tlsext_host_name(self._sni)
        return connection


def check_server_name(spec: BackendTLS, host: Optional[str], address: str, where: str) -> Optional[str]:
    """
    The name a backend's certificate must hold: the table's C{server_name},
    else the backend's host.

    @raise ConfigError: there is none to check (a unix socket's backend)
        and verification is on, or it is not a name a certificate can hold.
    """
    name = spec.server_name or host
    if name is None:
        if spec.verify:
            raise ConfigError(f"{where}: backend {address!r} has no host name for its "
                              "certificate to match: set server_name in backend_tls")
        return None
    if not _is_ip(name):
        try:
            name.encode("idna")
        except UnicodeError:
            raise ConfigError(f"{where}: {name!r} is not a host name a certificate can hold") from None
    return name


def _is_ip(name: str) -> bool:
    return isIPAddress(name) or isIPv6Address(name)


def _read(path: str, where: str, key: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ConfigError(f"{where}: {key}: cannot read {path}: {e.strerror or e}") from None


def _reason(e: Exception) -> str:
    args = getattr(e, "args", ())
    if args and isinstance(args[0], list) and args[0] and isinstance(args[0][0], tuple):
        return "; ".join(str(entry[-1]) for entry in args[0])  # OpenSSL's errors
    if isinstance(e, OSError) and e.strerror:
        return f"{e.strerror}: {e.filename}" if e.filename else e.strerror
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


__all__ = ["ServerTLS", "UpgradeTLS", "client_tls", "ClientTLS", "TLSServerEndpoint", "describe",
           "is_tls_listener", "check_server_name"]
