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
"""

from __future__ import annotations

import secrets
from typing import Callable, Dict, Optional

from poolproxy.codecs import postgres as pg
from poolproxy.codecs.postgres_auth import (AuthFailed, Credential, ScramSecret,
                                            ScramServerExchange, md5_check, parse_userlist)
from poolproxy.codecs.postgres_login import LoginCredentials
from poolproxy.config.settings import ConfigError

AUTH_TYPES = ("scram-sha-256", "md5", "trust")


class ClientAuth:
    """
    One client's authentication: a conversation of C{p} messages.

    @ivar done: the client proved who it is.
    @ivar error: L{None}, or why it did not (for the log, never a secret).
    @ivar client_key: after SCRAM, the client's ClientKey (for pass-through).
    """

    def __init__(self, method: str, credential: Optional[Credential],
                 fake: Callable[[], ScramSecret]) -> None:
        self.method = method
        self.credential = credential
        self.done = False
        self.error: Optional[str] = None
        self.client_key: Optional[bytes] = None
        self._fake = fake
        self._scram: Optional[ScramServerExchange] = None
        self._salt = b""
        self._step = 0
        if method == "scram-sha-256" and credential is not None and credential.scram() is None:
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
        hashed = self.credential.md5() if self.credential is not None else None
        if hashed is None:
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
            secret = self.credential.scram() if self.credential is not None else None
            # An unknown user gets an exchange that cannot succeed, as a
            # known one with a wrong password does: no telling them apart.
            self._scram = ScramServerExchange(secret if secret is not None else self._fake())
            return pg.authentication(pg.AUTH_SASL_CONTINUE, self._scram.first(data))
        if self._step == 1 and self._scram is not None:
            self._step = 2
            final = self._scram.final(body)
            if self.credential is None:
                raise AuthFailed("no such user in the users file")
            self.client_key = self._scram.client_key
            self.done = True
            return pg.authentication(pg.AUTH_SASL_FINAL, final)
        raise AuthFailed("unexpected SASL message")


class Users:
    """
    The users file and how clients authenticate.

    @ivar entries: the users file's entries, by user name.
    """

    def __init__(self, auth_type: str, auth_file: Optional[str],
                 backend_user: Optional[str] = None,
                 backend_password: Callable[[], Optional[str]] = lambda: None) -> None:
        if auth_type not in AUTH_TYPES:
            raise ConfigError(f"auth_type must be one of {', '.join(AUTH_TYPES)}, "
                              f"not {auth_type!r}")
        self.auth_type = auth_type
        self.auth_file = auth_file
        self.backend_user = backend_user.encode("utf-8") if backend_user else None
        self.backend_password = backend_password
        self.entries: Dict[str, Credential] = {}
        self._client_keys: Dict[str, bytes] = {}
        # Unknown users get a made-up secret, the same each time for a user.
        self._mock_key = secrets.token_bytes(32)
        if auth_file:
            self.entries = self._read()
        elif auth_type != "trust":
            raise ConfigError(f"auth_type {auth_type} needs an auth_file (PgBouncer's "
                              "userlist.txt format)")

    def _read(self) -> Dict[str, Credential]:
        assert self.auth_file is not None
        try:
            with open(self.auth_file, encoding="utf-8") as f:
                text = f.read()
            return parse_userlist(text)
        except (OSError, ValueError) as e:
            raise ConfigError(f"auth_file {self.auth_file}: {e}")

    def reload(self) -> Optional[str]:
        """Read the users file again (SIGHUP); what changed, in words."""
        if not self.auth_file:
            return None
        entries = self._read()
        if entries == self.entries:
            return None
        self.entries = entries
        return f"{len(entries)} users from {self.auth_file}"

    def authenticator(self, user: bytes) -> ClientAuth:
        name = user.decode("utf-8", "replace")
        return ClientAuth(self.auth_type, self.entries.get(name),
                          lambda: ScramSecret.mock(name, self._mock_key))

    def remember(self, user: bytes, auth: ClientAuth) -> None:
        """A client logged in: keep its ClientKey for SCRAM pass-through."""
        if auth.client_key is not None:
            self._client_keys[user.decode("utf-8", "replace")] = auth.client_key

    def credentials(self, user: bytes) -> LoginCredentials:
        """What a server login as (the client) C{user} may answer with."""
        login_user = self.backend_user
        password = self.backend_password()
        if password is not None:
            return LoginCredentials(password=password, user=login_user)
        name = user.decode("utf-8", "replace")
        entry = self.entries.get(name)
        if entry is None:
            return LoginCredentials(user=login_user)
        return LoginCredentials(password=entry.password(), md5=entry.md5(),
                                client_key=self._client_keys.get(name),
                                secret=entry.scram() if entry.kind == "scram" else None,
                                user=login_user)


__all__ = ["AUTH_TYPES", "ClientAuth", "Users"]
