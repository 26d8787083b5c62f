"""
Who may use the proxy, and what it logs into the servers with.

L{Users} holds the users file (PgBouncer's userlist.txt format: SCRAM
secrets, md5 hashes or plaintext) and the C{auth_type}; it makes a
L{ClientAuth} per client, and knows the credentials of each server login:
the configured backend password, else the users file's password or md5
hash, else the ClientKey recovered from the user's last SCRAM login to the
proxy (SCRAM pass-through: the proxy logs into the server as the client,
and no application password is stored anywhere).  SIGHUP reads the file
again (L{Users.reload}).

With C{auth_user}, a user who is not in the file is looked up on the
server (L{poolproxy.proxy.transaction.lookup.AuthQuery}): the secret found
authenticates the client, then serves its server logins as the file's
would.  The C{auth_user} logs in as itself, with its own entry of the file
(a password, or an md5 hash for an md5 server) or by trust, whatever
C{backend_username} says.
"""

from __future__ import annotations

import secrets
from typing import Callable, Dict, Optional

from poolproxy.codecs import postgres as pg
from poolproxy.codecs.postgres_auth import (AuthFailed, AuthProtocolViolation, Credential,
                                            ScramSecret, ScramServerExchange, md5_check,
                                            parse_userlist)
from poolproxy.codecs.postgres_login import LoginCredentials
from poolproxy.config.settings import ConfigError
from poolproxy.proxy.transaction.lookup import AuthQuery, Done
from poolproxy.proxy.transaction.server import KeyedPools

AUTH_TYPES = ("scram-sha-256", "md5", "trust")


class ClientAuth:
    """
    One client's authentication: a conversation of C{p} messages.

    @ivar done: the client proved who it is.
    @ivar error: L{None}, or why it did not (for the log, never a secret).
    @ivar client_key: after SCRAM, the client's ClientKey (for pass-through).
    """

    def __init__(self, method: str, credential: Optional[Credential],
                 fake: Callable[[], ScramSecret],
                 missing: str = "no such user in the users file") -> None:
        """
        @param credential: the user's, or L{None} for a user not known.
        @param missing: why a client with no credential fails (for the log).
        """
        self.method = method
        self.credential = credential
        self.done = False
        self.error: Optional[str] = None
        self.client_key: Optional[bytes] = None
        self._fake = fake
        self._scram: Optional[ScramServerExchange] = None
        self._salt = b""
        self._step = 0
        # A user who may not log in with a password (an empty one in the
        # file, a NULL or expired one from auth_query) is failed exactly as
        # an unknown one, after the same exchange.
        self._usable = credential if credential is not None and not credential.disabled else None
        self._missing = missing if credential is None else "no password for this user"
        if method == "scram-sha-256" and self._usable is not None and self._usable.scram() is None:
            # Only an md5 hash is known: md5 is what can be checked.
            self.method = "md5"

    def start(self) -> bytes:
        if self.method == "trust":
            self.done = True
            return b""
        if self.method == "md5":
            self._salt = secrets.token_bytes(4)
            return pg.authentication(pg.AUTH_MD5, self._salt)
        return pg.auth_sasl(ScramServerExchange.mechanisms)

    def receive(self, body: bytes) -> bytes:
        if self.method == "md5":
            return self._md5(body)
        try:
            return self._scram_step(body)
        except AuthFailed as e:
            self.error = str(e)
            return b""
        except (ValueError, IndexError):
            self.error = "malformed SASL message"
            return b""

    def _md5(self, body: bytes) -> bytes:
        hashed = self._usable.md5() if self._usable is not None else None
        if self._usable is None:
            self.error = self._missing
        elif hashed is None:
            self.error = "no md5 password for this user in the users file"
        elif not md5_check(body.rstrip(b"\0"), hashed, self._salt):
            self.error = "wrong md5 password"
        else:
            self.done = True
        return b""

    def _scram_step(self, body: bytes) -> bytes:
        if self._step == 0:
            self._step = 1
            mechanism, _, rest = body.partition(b"\0")
            if mechanism != b"SCRAM-SHA-256":
                raise AuthFailed(f"unsupported SASL mechanism {mechanism[:40]!r}")
            length = pg.int32(rest)
            data = rest[4:]
            if length != len(data):
                raise AuthFailed("malformed SASLInitialResponse")
            secret = self._usable.scram() if self._usable is not None else None
            # An unknown user gets an exchange that cannot succeed, as a
            # known one with a wrong password does: no telling them apart.
            self._scram = ScramServerExchange(secret if secret is not None else self._fake())
            return pg.authentication(pg.AUTH_SASL_CONTINUE, self._scram.first(data))
        if self._step == 1 and self._scram is not None:
            self._step = 2
            try:
                final = self._scram.final(body)
            except AuthProtocolViolation:
                raise
            except AuthFailed:
                if self._usable is None:
                    # The made-up secret's proof: the log says why.
                    raise AuthFailed(self._missing) from None
                raise
            if self._usable is None:
                raise AuthFailed(self._missing)  # a proof matched a made-up secret
            self.client_key = self._scram.client_key
            self.done = True
            return pg.authentication(pg.AUTH_SASL_FINAL, final)
        raise AuthFailed("unexpected SASL message")


class Users:
    """
    The users file, the users looked up on the server, and how clients
    authenticate.

    @ivar entries: the users file's entries, by user name.
    @ivar auth_query: looks up users not in the file, or L{None}.
    """

    #: How reload logs name it (L{poolproxy.ops.reload.Rereadable}).
    where = "auth_file"

    def __init__(self, auth_type: str, auth_file: Optional[str],
                 backend_user: Optional[str] = None,
                 backend_password: Callable[[], Optional[str]] = lambda: None,
                 auth_query: Optional[AuthQuery] = None) -> None:
        if auth_type not in AUTH_TYPES:
            raise ConfigError(f"auth_type must be one of {', '.join(AUTH_TYPES)}, "
                              f"not {auth_type!r}")
        self.auth_type = auth_type
        self.auth_file = auth_file
        self.backend_user = backend_user.encode("utf-8") if backend_user else None
        self.backend_password = backend_password
        self.auth_query = auth_query
        self.auth_user: Optional[str] = (auth_query.user.decode("utf-8")
                                         if auth_query is not None else None)
        self.entries: Dict[str, Credential] = {}
        self._client_keys: Dict[str, bytes] = {}
        # Credentials auth_query found for users who then logged in: what
        # their server logins use (md5 or SCRAM pass-through).  Each
        # lookup that lets a user in replaces that user's.
        self._looked_up: Dict[str, Credential] = {}
        # Unknown users get a made-up secret, the same each time for a user.
        self._mock_key = secrets.token_bytes(32)
        if auth_file:
            self.entries = self._read()
        elif auth_type != "trust" and auth_query is None:
            raise ConfigError(f"auth_type {auth_type} needs an auth_file (PgBouncer's "
                              "userlist.txt format) or an auth_user")

    def _read(self) -> Dict[str, Credential]:
        assert self.auth_file is not None
        try:
            with open(self.auth_file, encoding="utf-8") as f:
                text = f.read()
            return parse_userlist(text)
        except (OSError, ValueError) as e:
            raise ConfigError(f"auth_file {self.auth_file}: {e}")

    def reload(self) -> Optional[str]:
        """
        Read the users file again (SIGHUP); what changed, in words.

        @raise ConfigError: it does not read; the users in use are kept.
        """
        if not self.auth_file:
            return None
        entries = self._read()
        if entries == self.entries:
            return None
        self.entries = entries
        return f"{len(entries)} users from {self.auth_file}"

    def authenticator(self, user: bytes) -> ClientAuth:
        """The authentication of a client whose credential is known now (see L{needs_lookup})."""
        name = user.decode("utf-8", "replace")
        return ClientAuth(self.auth_type, self.entries.get(name),
                          lambda: ScramSecret.mock(name, self._mock_key))

    def needs_lookup(self, user: bytes) -> bool:
        """Whether C{user}'s credential is to be looked up on the server first."""
        return (self.auth_query is not None and self.auth_type != "trust"
                and user.decode("utf-8", "replace") not in self.entries)

    def look_up(self, pools: Optional[KeyedPools], database: bytes, user: bytes,
                done: Done) -> None:
        """
        Run auth_query for C{user} on C{database} of C{pools}' backend
        (L{None}: no backend is available).
        """
        assert self.auth_query is not None
        self.auth_query.look_up(pools, database, user, done)

    def looked_up(self, user: bytes, credential: Optional[Credential]) -> ClientAuth:
        """The authentication of a client with what auth_query found (L{None}: no such user)."""
        name = user.decode("utf-8", "replace")
        return ClientAuth(self.auth_type, credential,
                          lambda: ScramSecret.mock(name, self._mock_key),
                          missing="no such user (auth_query found none)")

    def remember(self, user: bytes, auth: ClientAuth) -> None:
        """
        A client logged in: keep its ClientKey for SCRAM pass-through, and
        what auth_query found for it, for its server logins.
        """
        name = user.decode("utf-8", "replace")
        if auth.client_key is not None:
            self._client_keys[name] = auth.client_key
        if auth.credential is not None and name not in self.entries:
            self._looked_up[name] = auth.credential

    def credentials(self, user: bytes) -> LoginCredentials:
        """What a server login as (the client) C{user} may answer with."""
        name = user.decode("utf-8", "replace")
        if name == self.auth_user:
            login_user = None  # as itself, with its own credential
        else:
            login_user = self.backend_user
            password = self.backend_password()
            if password is not None:
                return LoginCredentials(password=password, user=login_user)
        entry = self.entries.get(name)
        if entry is None:
            entry = self._looked_up.get(name)
        if entry is None:
            return LoginCredentials(user=login_user)
        return LoginCredentials(password=entry.password(), md5=entry.md5(),
                                client_key=self._client_keys.get(name),
                                secret=entry.scram() if entry.kind == "scram" else None,
                                user=login_user)


__all__ = ["AUTH_TYPES", "ClientAuth", "Users"]
