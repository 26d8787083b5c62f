"""
PostgreSQL authentication, the computations only: SCRAM-SHA-256 (RFC 5802,
RFC 7677) as server and as client, MD5, and PgBouncer's users file.

Pure: bytes in, bytes out; no I/O and no reactor.  The postgres codec frames
the wire messages (AuthenticationSASL, SASLInitialResponse, ...) and hands
their SASL data to the exchanges here.

The proxy terminates authentication on both sides:
  - as SCRAM server (L{ScramServerExchange}) it verifies a client from a
    L{ScramSecret} alone, the form PostgreSQL keeps in
    C{pg_authid.rolpassword}, and recovers the client's ClientKey on the way;
  - as SCRAM client (L{ScramClientExchange}) it logs into the server with the
    plaintext password, or by pass-through with that recovered ClientKey:
    this works when the proxy's secret for the user is the server's (same
    salt and iteration count), PgBouncer's "SCRAM pass-through"
    (src/scram.c), which spares the proxy any plaintext password.
  - MD5 (L{md5_response}, L{md5_check}) works from the stored C{md5...} hash.

scramp does the SASLprep and is the oracle of the tests, but its exchanges
do not fit here: its server drops the ClientKey and refuses the empty user
name PostgreSQL clients send (C{n=,}), its client wants a password, and
both refuse salts and iteration counts that PostgreSQL accepts.  So the
exchanges are written on C{hmac}/C{hashlib}; every comparison of a secret
is constant-time (C{hmac.compare_digest}).

Every failure a peer can cause is an L{AuthFailed} (whose C{str} is fit for a
log line and never holds a secret): malformed messages, messages out of
order, a wrong proof.  Programming errors (wrong arguments) are C{TypeError}
or C{ValueError}.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass, field
from typing import ClassVar, Dict, List, Optional, Tuple

from scramp import ScramException  # type: ignore[import-untyped]
from scramp.core import saslprep  # type: ignore[import-untyped]

SCRAM_SHA_256 = "SCRAM-SHA-256"
#: SHA-256's digest length: ClientKey, StoredKey, ServerKey, proofs, signatures.
KEY_LENGTH = 32
#: PostgreSQL's defaults (SCRAM_DEFAULT_ITERATIONS, SCRAM_DEFAULT_SALT_LEN).
DEFAULT_ITERATIONS = 4096
SALT_LENGTH = 16
#: Random bytes in a nonce: libpq's and the server's SCRAM_RAW_NONCE_LEN.
NONCE_BYTES = 18
#: The longest SASL message accepted.  libpq's are under 150 bytes; the bound
#: keeps a hostile peer's cost to one small parse.
MAX_MESSAGE = 4096
#: The largest iteration count this client derives keys with (scramp's
#: bound too): PBKDF2 runs on the caller's thread, 2-3 ms at PostgreSQL's
#: 4096 on CPython or PyPy, so a server asking for more is refused.
MAX_ITERATIONS = 10_000_000
_INT_MAX = 2 ** 31 - 1

_MD5_HASH = re.compile(r"md5[0-9a-f]{32}\Z")
_ALPHA = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


class AuthFailed(Exception):
    """Authentication failed; str(e) is a reason fit for a log line (never a secret)."""

    #: The SQLSTATE PostgreSQL answers a client with for this failure.
    sqlstate: ClassVar[str] = "28P01"  # invalid_password


class AuthProtocolViolation(AuthFailed):
    """
    A peer's SASL message was malformed or came out of order (as opposed to a
    wrong password): PostgreSQL answers these with SQLSTATE 08P01.
    """

    sqlstate: ClassVar[str] = "08P01"  # protocol_violation


def _b64(data: bytes) -> bytes:
    return base64.b64encode(data)


def _unb64(text: bytes, what: str) -> bytes:
    """Strict base64: the canonical encoding only (alphabet, padding, nothing after)."""
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise AuthProtocolViolation(f"malformed SCRAM message ({what} is not base64)")
    if base64.b64encode(data) != text:
        raise AuthProtocolViolation(f"malformed SCRAM message ({what} is not base64)")
    return data


def _hmac(key: bytes, message: bytes) -> bytes:
    # The one-shot form: OpenSSL's HMAC in one call on CPython, no HMAC object.
    return hmac.digest(key, message, "sha256")


def _xor(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(len(a), "big")


def _password_bytes(password: str) -> bytes:
    """
    The bytes SCRAM derives keys from, as PostgreSQL's pg_saslprep makes them:
    the SASLprep'd password in UTF-8, or, where SASLprep refuses it
    (prohibited characters, bad bidi, not valid UTF-8), the raw password.
    A str from bytes decoded with C{surrogateescape} gives its bytes back.
    """
    try:
        prepared: str = saslprep(password)
        return prepared.encode("utf-8")
    except ScramException:
        return password.encode("utf-8", "surrogateescape")


def _keys(password: str, salt: bytes, iterations: int) -> Tuple[bytes, bytes]:
    """(ClientKey, ServerKey) of a password, salt and iteration count."""
    salted = hashlib.pbkdf2_hmac("sha256", _password_bytes(password), salt, iterations)
    return _hmac(salted, b"Client Key"), _hmac(salted, b"Server Key")


def _make_nonce(nonce: Optional[str]) -> bytes:
    if nonce is None:
        return _b64(secrets.token_bytes(NONCE_BYTES))
    data = nonce.encode("utf-8")
    if not data or not _printable(data):
        raise ValueError("a SCRAM nonce is printable ASCII without ','")
    return data


#: RFC 5802's printable: %x21-2B / %x2D-7E (printable ASCII but ',').
_PRINTABLE = bytes(c for c in range(0x21, 0x7F) if c != 0x2C)


def _printable(data: bytes) -> bool:
    """Whether every byte of C{data} is RFC 5802's printable."""
    # translate deletes the printable bytes in C: whatever is left is not.
    return not data.translate(None, _PRINTABLE)


def _check_message(data: bytes, what: str) -> bytes:
    if isinstance(data, (bytearray, memoryview)):
        data = bytes(data)
    elif not isinstance(data, bytes):
        raise TypeError(f"{what} must be bytes")
    if len(data) > MAX_MESSAGE:
        raise AuthProtocolViolation(f"malformed SCRAM message ({what} is over {MAX_MESSAGE} bytes)")
    if b"\0" in data:
        raise AuthProtocolViolation(f"malformed SCRAM message ({what} holds a NUL byte)")
    return data


def _attribute(part: bytes, name: bytes, what: str) -> bytes:
    """The value of C{part} if it is C{name=value}."""
    if part[:2] != name + b"=":
        raise AuthProtocolViolation(
            f"malformed SCRAM message ({what}: attribute {name.decode()!r} expected)")
    return part[2:]


def _check_extensions(parts: List[bytes], what: str) -> None:
    """Optional extensions (C{x=value}): allowed, and ignored, as PostgreSQL does."""
    for part in parts:
        if len(part) < 2 or part[0] not in _ALPHA or part[1:2] != b"=":
            raise AuthProtocolViolation(f"malformed SCRAM message ({what}: attribute expected)")


def _iterations(text: bytes, what: str) -> int:
    if not text.isdigit() or text.startswith(b"0") or len(text) > 10:
        raise AuthProtocolViolation(f"malformed SCRAM message ({what}: bad iteration count)")
    return int(text)


@dataclass(frozen=True)
class ScramSecret:
    """
    What a SCRAM-SHA-256 server keeps of a password: enough to verify a
    client, not enough to log in as one.
    """

    iterations: int
    salt: bytes
    stored_key: bytes = field(repr=False)
    server_key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not 0 < self.iterations <= _INT_MAX:
            raise ValueError("SCRAM iteration count out of range")
        if not self.salt:
            raise ValueError("SCRAM salt is empty")
        if len(self.stored_key) != KEY_LENGTH or len(self.server_key) != KEY_LENGTH:
            raise ValueError(f"SCRAM keys are {KEY_LENGTH} bytes")

    @classmethod
    def parse(cls, text: str) -> "ScramSecret":
        """
        Read C{SCRAM-SHA-256$<iter>:<b64 salt>$<b64 StoredKey>:<b64 ServerKey>},
        the form of C{pg_authid.rolpassword}.

        @raise ValueError: if C{text} is not one (the message never quotes it).
        """
        bad = ValueError("not a SCRAM-SHA-256 secret "
                         "(SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>)")
        match = re.match(r"SCRAM-SHA-256\$([1-9][0-9]{0,9}):([A-Za-z0-9+/=]+)"
                         r"\$([A-Za-z0-9+/=]+):([A-Za-z0-9+/=]+)\Z", text)
        if match is None:
            raise bad
        try:
            salt, stored_key, server_key = (_unb64(match.group(n).encode("ascii"), "secret")
                                            for n in (2, 3, 4))
            return cls(int(match.group(1)), salt, stored_key, server_key)
        except (AuthFailed, ValueError):
            raise bad from None

    @classmethod
    def from_password(cls, password: str, salt: Optional[bytes] = None,
                      iterations: int = DEFAULT_ITERATIONS) -> "ScramSecret":
        """
        The secret PostgreSQL would store for C{password} (SASLprep included),
        with a random 16-byte salt unless one is given.
        """
        if salt is None:
            salt = secrets.token_bytes(SALT_LENGTH)
        if not 0 < iterations <= _INT_MAX:
            raise ValueError("SCRAM iteration count out of range")
        client_key, server_key = _keys(password, salt, iterations)
        return cls(iterations, salt, hashlib.sha256(client_key).digest(), server_key)

    @classmethod
    def mock(cls, user: str, key: bytes, iterations: int = DEFAULT_ITERATIONS) -> "ScramSecret":
        """
        A secret for a user that does not exist, that no proof matches: its
        salt is the same for every attempt at C{user} (derived from C{key},
        one random value per process), so that a client cannot tell unknown
        users from known ones by their salt, as PostgreSQL and PgBouncer do.
        """
        salt = hashlib.sha256(user.encode("utf-8", "surrogateescape") + key).digest()[:SALT_LENGTH]
        return cls(iterations, salt, secrets.token_bytes(KEY_LENGTH), secrets.token_bytes(KEY_LENGTH))

    def format(self) -> str:
        """The C{pg_authid.rolpassword} form L{parse} reads."""
        return "SCRAM-SHA-256${}:{}${}:{}".format(
            self.iterations, *(_b64(b).decode("ascii")
                               for b in (self.salt, self.stored_key, self.server_key)))


def md5_hash(password: str, user: str) -> str:
    """PostgreSQL's stored MD5 form: C{"md5" + hex(md5(password + user))}."""
    data = password.encode("utf-8", "surrogateescape") + user.encode("utf-8", "surrogateescape")
    return "md5" + hashlib.md5(data).hexdigest()


def md5_response(md5_hash: str, salt: bytes) -> bytes:
    """
    What a client answers AuthenticationMD5Password (4-byte C{salt}) with,
    without the string's NUL terminator: C{b"md5" + hex(md5(hash[3:] + salt))}.
    Works from the stored hash alone, so the proxy can log in with it.
    """
    if not _MD5_HASH.match(md5_hash):
        raise ValueError("not an MD5 password hash (md5 and 32 lowercase hex digits)")
    return b"md5" + hashlib.md5(md5_hash[3:].encode("ascii") + salt).hexdigest().encode("ascii")


def md5_check(response: bytes, md5_hash: str, salt: bytes) -> bool:
    """Whether a client's PasswordMessage C{response} (no NUL) answers C{salt}; constant-time."""
    return hmac.compare_digest(response, md5_response(md5_hash, salt))


KINDS = ("plain", "md5", "scram")


@dataclass(frozen=True)
class Credential:
    """
    One users-file entry.

    An empty plaintext password is PgBouncer's way of listing a user who may
    not log in with a password: it is kept (L{disabled}), and L{scram},
    L{md5} and L{password} all return C{None} for it, so that no check
    passes with it.
    """

    user: str
    kind: str      # "plain", "md5" or "scram"
    secret: str = field(repr=False)    # the plaintext password, "md5<32 hex>", or the SCRAM secret text
    _scram: Optional[ScramSecret] = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.kind == "scram":
            object.__setattr__(self, "_scram", ScramSecret.parse(self.secret))
        elif self.kind == "md5":
            if not _MD5_HASH.match(self.secret):
                raise ValueError("not an MD5 password hash (md5 and 32 lowercase hex digits)")
        elif self.kind != "plain":
            raise ValueError(f"a credential's kind is one of {', '.join(KINDS)}")

    @classmethod
    def of(cls, user: str, password: str) -> "Credential":
        """
        The credential a users-file password field makes; its form decides
        the kind, as PgBouncer and PostgreSQL decide it: C{md5} and 32
        lowercase hex digits is an MD5 hash, C{SCRAM-SHA-256$...} a SCRAM
        secret, anything else a plaintext password.

        @raise ValueError: for a field that starts like a SCRAM secret but is
            not one (PgBouncer would take it for a plaintext password).
        """
        if _MD5_HASH.match(password):
            return cls(user, "md5", password)
        if password.startswith("SCRAM-SHA-256$"):
            return cls(user, "scram", password)
        return cls(user, "plain", password)

    @property
    def disabled(self) -> bool:
        """An empty password: this user cannot log in with a password."""
        return self.secret == ""

    def scram(self) -> Optional[ScramSecret]:
        """
        The SCRAM secret to verify clients with: the stored one, or, for a
        plaintext password, one derived on first use (random salt) and kept.
        C{None} for an MD5 hash, from which no SCRAM secret can be made.
        """
        if self._scram is None and self.kind == "plain" and not self.disabled:
            object.__setattr__(self, "_scram", ScramSecret.from_password(self.secret))
        return self._scram

    def md5(self) -> Optional[str]:
        """The C{md5...} hash: stored, or made from the plaintext; C{None} for SCRAM."""
        if self.kind == "md5":
            return self.secret
        if self.kind == "plain" and not self.disabled:
            return md5_hash(self.secret, self.user)
        return None

    def password(self) -> Optional[str]:
        """The plaintext password, for C{plain} only."""
        return self.secret if self.kind == "plain" and not self.disabled else None

    def check_password(self, password: str) -> bool:
        """
        Whether a cleartext password (AuthenticationCleartextPassword's
        answer) is this user's, whatever the kind, as PgBouncer checks it;
        constant-time.  Costs a PBKDF2 for a SCRAM secret.
        """
        if self.disabled or not password:
            return False
        if self.kind == "plain":
            return hmac.compare_digest(password.encode("utf-8", "surrogateescape"),
                                       self.secret.encode("utf-8", "surrogateescape"))
        if self.kind == "md5":
            return hmac.compare_digest(md5_hash(password, self.user), self.secret)
        secret = self.scram()
        assert secret is not None
        client_key, server_key = _keys(password, secret.salt, secret.iterations)
        return (hmac.compare_digest(hashlib.sha256(client_key).digest(), secret.stored_key)
                & hmac.compare_digest(server_key, secret.server_key))


_USERLIST_ENTRY = re.compile(r'"((?:[^"]|"")*)"[ \t]*"((?:[^"]|"")*)"')


def parse_userlist(text: str) -> Dict[str, Credential]:
    """
    Read a users file in PgBouncer's C{auth_file} format: one C{"user"
    "password"} entry a line, a double quote inside a field written twice
    (C{""}), the rest of the line ignored; blank lines and lines starting
    with C{;} skipped.  A user listed twice gets the later entry, as in
    PgBouncer.

    @raise ValueError: naming the line of the first bad entry (never its password).
    """
    users: Dict[str, Credential] = {}
    for number, line in enumerate(text.split("\n"), 1):
        line = line.strip()
        if not line or line.startswith(";"):
            continue
        match = _USERLIST_ENTRY.match(line)
        if match is None:
            raise ValueError(f'users file line {number}: expected "user" "password"')
        user, password = (match.group(n).replace('""', '"') for n in (1, 2))
        if not user:
            raise ValueError(f"users file line {number}: empty user name")
        if "\0" in user or "\0" in password:
            raise ValueError(f"users file line {number}: a NUL character")
        try:
            users[user] = Credential.of(user, password)
        except ValueError as e:
            raise ValueError(f"users file line {number}: {e}") from None
    return users


# An exchange's states.
_FIRST, _FINAL, _VERIFY, _DONE, _FAILED = range(5)


class ScramServerExchange:
    """
    Verifies one client (the proxy as SCRAM server), from a ScramSecret only.

    Call L{first} with the SASLInitialResponse's data and L{final} with the
    SASLResponse's; each returns the data of the AuthenticationSASLContinue
    and AuthenticationSASLFinal to send.  Any failure is an L{AuthFailed}, and
    the exchange stays failed.

    PostgreSQL clients send an empty user name (C{n=,}): any name is accepted
    and ignored; the user is the startup packet's.
    """

    # No SCRAM-SHA-256-PLUS: channel binding (tls-server-end-point) is not
    # offered for now, so a client asking for it (p=) is refused, and one
    # that supports it but saw no offer (y) is accepted.
    mechanisms: ClassVar[Tuple[str, ...]] = (SCRAM_SHA_256,)

    def __init__(self, secret: ScramSecret, *, nonce: Optional[str] = None) -> None:
        """
        @param nonce: the server's part of the nonce; random unless given
            (known-answer tests only).
        """
        self.secret = secret
        #: After a successful L{final}: the client's ClientKey, for pass-through.
        self.client_key: Optional[bytes] = None
        self._server_nonce = _make_nonce(nonce)
        self._state = _FIRST
        self._gs2_header = b""
        self._nonce = b""
        self._first_bare = b""
        self._server_first = b""

    def first(self, client_first: bytes) -> bytes:
        """client-first-message -> server-first-message."""
        self._step(_FIRST, "client-first-message")
        data = _check_message(client_first, "client-first-message")
        flag, _, rest = data.partition(b",")
        if flag.startswith(b"p="):
            raise AuthProtocolViolation(
                "client requires SCRAM channel binding, which is not offered")
        if flag not in (b"n", b"y"):
            raise AuthProtocolViolation("malformed SCRAM message (unexpected channel-binding flag)")
        authzid, comma, bare = rest.partition(b",")
        if authzid.startswith(b"a="):
            raise AuthProtocolViolation(
                "client uses an authorization identity, which is not supported")
        if authzid or not comma:
            raise AuthProtocolViolation("malformed SCRAM message (bad gs2 header)")
        parts = bare.split(b",")
        if parts[0].startswith(b"m="):
            raise AuthProtocolViolation("client requires an unsupported SCRAM extension")
        _attribute(parts[0], b"n", "client-first-message")  # the user name: ignored
        if len(parts) < 2:
            raise AuthProtocolViolation("malformed SCRAM message (client-first-message has no nonce)")
        client_nonce = _attribute(parts[1], b"r", "client-first-message")
        if not client_nonce or not _printable(client_nonce):
            raise AuthProtocolViolation("malformed SCRAM message (bad client nonce)")
        _check_extensions(parts[2:], "client-first-message")
        self._gs2_header = flag + b",,"
        self._first_bare = bare
        self._nonce = client_nonce + self._server_nonce
        self._server_first = b"r=%s,s=%s,i=%d" % (
            self._nonce, _b64(self.secret.salt), self.secret.iterations)
        self._state = _FINAL
        return self._server_first

    def final(self, client_final: bytes) -> bytes:
        """client-final-message -> server-final-message (C{v=...})."""
        self._step(_FINAL, "client-final-message")
        data = _check_message(client_final, "client-final-message")
        parts = data.split(b",")
        if len(parts) < 3:
            raise AuthProtocolViolation("malformed SCRAM message (client-final-message is short)")
        binding = _unb64(_attribute(parts[0], b"c", "client-final-message"), "channel binding")
        if binding != self._gs2_header:
            raise AuthProtocolViolation(
                "malformed SCRAM message (channel binding differs from the client-first-message's)")
        if not hmac.compare_digest(_attribute(parts[1], b"r", "client-final-message"), self._nonce):
            raise AuthProtocolViolation("malformed SCRAM message (nonce mismatch)")
        _check_extensions(parts[2:-1], "client-final-message")
        proof = _unb64(_attribute(parts[-1], b"p", "client-final-message"), "proof")
        if len(proof) != KEY_LENGTH:
            raise AuthProtocolViolation("malformed SCRAM message (bad proof length)")
        without_proof = data[:len(data) - len(parts[-1]) - 1]
        auth_message = b",".join((self._first_bare, self._server_first, without_proof))
        client_key = _xor(proof, _hmac(self.secret.stored_key, auth_message))
        if not hmac.compare_digest(hashlib.sha256(client_key).digest(), self.secret.stored_key):
            raise AuthFailed("password authentication failed")
        self.client_key = client_key
        self._state = _DONE
        return b"v=" + _b64(_hmac(self.secret.server_key, auth_message))

    def _step(self, expected: int, what: str) -> None:
        if self._state != expected:
            self._state = _FAILED
            raise AuthProtocolViolation(f"unexpected SCRAM message ({what} out of order)")
        self._state = _FAILED  # until this step succeeds


class ScramClientExchange:
    """
    Logs into a server (the proxy as SCRAM client): with a password, or by
    pass-through with a ClientKey recovered from the client plus the
    matching secret.

    L{first} makes the SASLInitialResponse data; L{final} answers the
    AuthenticationSASLContinue data; L{verify} checks the
    AuthenticationSASLFinal data.  Any failure is an L{AuthFailed}.

    After L{final}, C{client_key} and C{secret} are the server's: a caller
    may keep them and log in again by pass-through, sparing the PBKDF2 that
    password mode costs on every login (2-3 ms at 4096 iterations).
    """

    def __init__(self, *, password: Optional[str] = None, client_key: Optional[bytes] = None,
                 secret: Optional[ScramSecret] = None, user: str = "",
                 nonce: Optional[str] = None) -> None:
        """
        Give exactly one of C{password} or (C{client_key} and C{secret}).

        @param user: the SCRAM user name sent; PostgreSQL ignores it and libpq
            sends it empty, as this does by default.
        @param nonce: the client nonce; random unless given (known-answer
            tests only).
        @raise AuthFailed: if C{client_key} does not belong to C{secret} (for
            instance, the users file changed since the client logged in).
        """
        if password is not None:
            if client_key is not None or secret is not None:
                raise TypeError("give a password, or a client_key and a secret, not both")
        elif client_key is None or secret is None:
            raise TypeError("give a password, or a client_key and a secret")
        elif not hmac.compare_digest(hashlib.sha256(client_key).digest(), secret.stored_key):
            raise AuthFailed("the ClientKey does not belong to this SCRAM secret")
        self._password = password
        self.client_key = client_key
        self.secret = secret
        self._user = user.replace("=", "=3D").replace(",", "=2C").encode("utf-8")
        self._client_nonce = _make_nonce(nonce)
        self._state = _FIRST
        self._first_bare = b""
        self._server_signature = b""

    def first(self) -> bytes:
        """The client-first-message: C{n,,n=,r=<nonce>}, as libpq sends it."""
        self._step(_FIRST, "first")
        self._first_bare = b"n=%s,r=%s" % (self._user, self._client_nonce)
        self._state = _FINAL
        return b"n,," + self._first_bare

    def final(self, server_first: bytes) -> bytes:
        """server-first-message -> client-final-message."""
        self._step(_FINAL, "server-first-message")
        data = _check_message(server_first, "server-first-message")
        if data.startswith(b"e="):
            raise AuthFailed("the server refused the SCRAM exchange")
        parts = data.split(b",")
        if parts[0].startswith(b"m="):
            raise AuthProtocolViolation("server requires an unsupported SCRAM extension")
        if len(parts) < 3:
            raise AuthProtocolViolation("malformed SCRAM message (server-first-message is short)")
        nonce = _attribute(parts[0], b"r", "server-first-message")
        if (len(nonce) <= len(self._client_nonce) or not _printable(nonce)
                or not nonce.startswith(self._client_nonce)):
            raise AuthProtocolViolation("malformed SCRAM message (the server's nonce does not extend ours)")
        salt = _unb64(_attribute(parts[1], b"s", "server-first-message"), "salt")
        if not salt:
            raise AuthProtocolViolation("malformed SCRAM message (empty salt)")
        iterations = _iterations(_attribute(parts[2], b"i", "server-first-message"),
                                 "server-first-message")
        _check_extensions(parts[3:], "server-first-message")
        if self._password is not None:
            if iterations > MAX_ITERATIONS:
                raise AuthFailed(f"the server asks for {iterations} SCRAM iterations, "
                                 f"over the {MAX_ITERATIONS} this proxy computes")
            client_key, server_key = _keys(self._password, salt, iterations)
            self.client_key = client_key
            self.secret = ScramSecret(iterations, salt, hashlib.sha256(client_key).digest(), server_key)
        assert self.client_key is not None and self.secret is not None
        if not (hmac.compare_digest(salt, self.secret.salt) and iterations == self.secret.iterations):
            raise AuthFailed("the server's SCRAM secret for this user differs from the users "
                             "file's (salt or iteration count): pass-through needs the same secret")
        without_proof = b"c=biws,r=" + nonce
        auth_message = b",".join((self._first_bare, data, without_proof))
        proof = _xor(self.client_key, _hmac(self.secret.stored_key, auth_message))
        self._server_signature = _hmac(self.secret.server_key, auth_message)
        self._state = _VERIFY
        return without_proof + b",p=" + _b64(proof)

    def verify(self, server_final: bytes) -> None:
        """Check the server-final-message: the server proves it knows the secret."""
        self._step(_VERIFY, "server-final-message")
        data = _check_message(server_final, "server-final-message")
        if data.startswith(b"e="):
            raise AuthFailed("the server refused the SCRAM exchange")
        parts = data.split(b",")
        signature = _unb64(_attribute(parts[0], b"v", "server-final-message"), "server signature")
        _check_extensions(parts[1:], "server-final-message")
        if not hmac.compare_digest(signature, self._server_signature):
            raise AuthFailed("the server's SCRAM signature is wrong: it does not know this "
                             "user's secret")
        self._state = _DONE

    def _step(self, expected: int, what: str) -> None:
        if self._state != expected:
            self._state = _FAILED
            raise AuthProtocolViolation(f"unexpected SCRAM message ({what} out of order)")
        self._state = _FAILED  # until this step succeeds
