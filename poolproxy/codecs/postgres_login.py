"""
Logging a new server connection in: a conversation, not fixed frames.

The proxy sends a StartupMessage, then answers whatever authentication the
server asks for (cleartext, md5 with the server's salt, or SCRAM-SHA-256
over two round trips), then reads ParameterStatus and BackendKeyData up to
the first ReadyForQuery.  L{ServerLogin} is that conversation as a pure
state machine (L{poolproxy.codec.ISetupConversation}): bytes from the
server in, bytes to send back out.

What it logs in with (L{LoginCredentials}): a password (the configured
backend password or a users-file plaintext), an md5 hash (md5
pass-through: the server's md5 challenge needs only the hash), or a SCRAM
ClientKey recovered while the proxy verified a client with the same secret
the server holds (SCRAM pass-through: no application password stored
anywhere).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

from zope.interface import implementer

from poolproxy.codec import ISetupConversation
from poolproxy.codecs import postgres as pg
from poolproxy.codecs.postgres_auth import (
    AuthFailed,
    ScramClientExchange,
    ScramSecret,
    md5_hash,
    md5_response,
)


@dataclass(frozen=True)
class LoginCredentials:
    """
    What a server login may answer authentication with; any may be
    missing, and the server's request decides which is used.
    """

    password: Optional[str] = None
    md5: Optional[str] = None
    client_key: Optional[bytes] = None
    secret: Optional[ScramSecret] = None
    #: Log in as this user rather than the client's (backend_username).
    user: Optional[bytes] = None


@implementer(ISetupConversation)
class ServerLogin:
    """
    One server connection's login as C{user} to C{database}.

    @ivar done: the server said ReadyForQuery: the connection is ready.
    @ivar error: L{None}, or why the login failed (for the log).
    @ivar failure: the server's own ErrorResponse message, if it sent one
        (a client is better told C{3D000} by the server than by us).
    @ivar sqlstate: that error's SQLSTATE, or the proxy's choice.
    @ivar parameters: the server's ParameterStatus values.
    @ivar pid: the server process id, C{key} its cancel key (BackendKeyData).
    """

    def __init__(self, user: bytes, database: bytes, credentials: LoginCredentials,
                 parameters: Optional[Dict[bytes, bytes]] = None) -> None:
        self.user = user
        self.database = database
        self.credentials = credentials
        self._startup = {b"user": user, b"database": database}
        if parameters:
            self._startup.update(parameters)
        self._reader = pg.MessageReader()
        self._scram: Optional[ScramClientExchange] = None
        self.done = False
        self.error: Optional[str] = None
        self.failure: Optional[bytes] = None
        self.sqlstate = b""
        self.parameters: Dict[bytes, bytes] = {}
        self.pid = 0
        self.key = b""

    def start(self) -> bytes:
        return pg.startup_message(self._startup)

    def leftover(self) -> bytes:
        """Bytes the server sent after its ReadyForQuery (none, if it is well behaved)."""
        return self._reader.take_rest()

    def receive(self, data: bytes) -> bytes:
        """Bytes from the server; what to send it now (maybe nothing)."""
        out = b""
        for kind, body in self._reader.feed(data):
            if self.done or self.error is not None:
                break
            if kind == b"R":
                out += self._authenticate(body)
            elif kind == b"S":
                name, _, value = body.partition(b"\0")
                self.parameters[name] = value.rstrip(b"\0")
            elif kind == b"K":
                if len(body) >= 8:
                    self.pid, self.key = pg.int32(body), body[4:]
            elif kind == b"Z":
                self.done = True
            elif kind == b"E":
                fields = pg.error_fields(body)
                self.failure = pg.message(b"E", body)
                self.sqlstate = fields.get("C", "").encode("ascii", "replace")
                self.error = f"{fields.get('C', '?')}: {fields.get('M', 'login failed')}"
            elif kind in (b"N", b"v"):
                pass  # a notice; NegotiateProtocolVersion (3.0 is what we asked)
            else:
                self._fail(f"unexpected message {kind!r} during login")
        if self._reader.error is not None and self.error is None:
            self._fail(f"server login: {self._reader.error.message}")
        return out

    def _fail(self, why: str, sqlstate: bytes = pg.PROTOCOL_VIOLATION) -> bytes:
        if self.error is None:
            self.error = why
            self.sqlstate = sqlstate
        return b""

    def _authenticate(self, body: bytes) -> bytes:
        if len(body) < 4:
            return self._fail("short authentication message")
        code = pg.int32(body)
        data = body[4:]
        creds = self.credentials
        if code == pg.AUTH_OK:
            return b""
        if code == pg.AUTH_CLEARTEXT:
            if creds.password is None:
                return self._no_credential("a cleartext password")
            return pg.password_message(creds.password.encode("utf-8") + b"\0")
        if code == pg.AUTH_MD5:
            hashed = creds.md5
            if hashed is None and creds.password is not None:
                hashed = md5_hash(creds.password, self.user.decode("utf-8", "replace"))
            if hashed is None or len(data) != 4:
                return self._no_credential("an md5 password")
            return pg.password_message(md5_response(hashed, data) + b"\0")
        try:
            if code == pg.AUTH_SASL:
                mechanisms = data.split(b"\0")
                if b"SCRAM-SHA-256" not in mechanisms:
                    return self._no_credential("SASL mechanisms " + repr(mechanisms))
                if creds.password is not None:
                    self._scram = ScramClientExchange(password=creds.password)
                elif creds.client_key is not None and creds.secret is not None:
                    self._scram = ScramClientExchange(client_key=creds.client_key,
                                                      secret=creds.secret)
                else:
                    return self._no_credential("SCRAM-SHA-256")
                return pg.sasl_initial_response(b"SCRAM-SHA-256", self._scram.first())
            if code == pg.AUTH_SASL_CONTINUE and self._scram is not None:
                return pg.password_message(self._scram.final(data))
            if code == pg.AUTH_SASL_FINAL and self._scram is not None:
                self._scram.verify(data)
                return b""
        except AuthFailed as e:
            return self._fail(f"SCRAM login to the server failed: {e}", pg.INVALID_PASSWORD)
        return self._fail(f"the server asks for authentication method {code}, "
                          f"which poolproxy does not speak", pg.FEATURE_NOT_SUPPORTED)

    def _no_credential(self, what: str) -> bytes:
        return self._fail(f"the server asks for {what} for user "
                          f"{self.user.decode('utf-8', 'replace')!r} and poolproxy has none "
                          f"(backend_password_file, auth_file, or a SCRAM client for "
                          f"pass-through)", pg.INVALID_PASSWORD)


__all__ = ["LoginCredentials", "ServerLogin"]
