"""
Tests for L{poolproxy.codecs.postgres_auth}: SCRAM-SHA-256 as server and as
client (pass-through included), MD5, and the users file.

scramp, an independent implementation, is the oracle of the round trips;
RFC 7677's example pins the arithmetic; a real PostgreSQL 15 (when
installed) checks the secret format, SASLprep, and logins over its wire.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import pwd
import shutil
import socket
import struct
import subprocess
import tempfile
from typing import Any, Callable, Dict, List, Optional, Tuple

import scramp  # type: ignore[import-untyped]
from hypothesis import given, settings, strategies as st
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from poolproxy.codecs.postgres_auth import (MAX_ITERATIONS, MAX_MESSAGE, AuthFailed,
                                            AuthProtocolViolation, Credential,
                                            ScramClientExchange, ScramSecret,
                                            ScramServerExchange, md5_check, md5_hash,
                                            md5_response, parse_userlist)
from tests.interop import REQUIRED, Process, wait_until
from tests.support import free_port

PROPERTY = settings(max_examples=300, deadline=None)
SALT = bytes(range(16))


def scramp_server(secret: ScramSecret) -> Any:
    """scramp's SCRAM-SHA-256 server, knowing C{secret}."""
    return scramp.ScramMechanism("SCRAM-SHA-256").make_server(
        lambda user: (secret.salt, secret.stored_key, secret.server_key, secret.iterations))


def login_scramp_client(server: ScramServerExchange, password: str, user: str = "app") -> Any:
    """Run scramp's client with C{password} against our C{server}; return the client."""
    client = scramp.ScramClient(["SCRAM-SHA-256"], user, password)
    server_first = server.first(client.get_client_first().encode())
    client.set_server_first(server_first.decode())
    server_final = server.final(client.get_client_final().encode())
    client.set_server_final(server_final.decode())  # scramp checks our signature
    return client


def login_to_scramp(client: ScramClientExchange, secret: ScramSecret) -> None:
    """Run our C{client} against scramp's server knowing C{secret}."""
    server = scramp_server(secret)
    server.set_client_first(client.first().decode())
    client_final = client.final(server.get_server_first().encode())
    server.set_client_final(client_final.decode())
    client.verify(server.get_server_final().encode())


def client_key_of(password: bytes, secret: ScramSecret) -> bytes:
    """RFC 5802's ClientKey, from the definitions."""
    salted = hashlib.pbkdf2_hmac("sha256", password, secret.salt, secret.iterations)
    return hmac.new(salted, b"Client Key", hashlib.sha256).digest()


class ScramSecretTests(SynchronousTestCase):
    def test_round_trip(self) -> None:
        """format() writes what parse() reads, and parse() reads what format() wrote."""
        secret = ScramSecret.from_password("pencil", salt=SALT)
        text = secret.format()
        self.assertTrue(text.startswith("SCRAM-SHA-256$4096:AAECAwQFBgcICQoLDA0ODw==$"))
        self.assertEqual(ScramSecret.parse(text), secret)
        self.assertEqual(ScramSecret.parse(text).format(), text)

    def test_matches_scramp(self) -> None:
        """from_password derives what scramp derives, for ASCII and non-ASCII passwords."""
        for password in ("pencil", "", "pässwörd", "\u2168 x"):
            salt, stored_key, server_key, _ = scramp.ScramMechanism("SCRAM-SHA-256").make_auth_info(
                password, iteration_count=4096, salt=SALT)
            self.assertEqual(ScramSecret.from_password(password, salt=SALT),
                             ScramSecret(4096, salt, stored_key, server_key), password)

    def test_saslprep(self) -> None:
        """
        Passwords are SASLprep'd as PostgreSQL does (soft hyphen dropped,
        NFKC), and one that SASLprep refuses is used raw rather than refused.
        """
        self.assertEqual(ScramSecret.from_password("I\u00adX", salt=SALT),
                         ScramSecret.from_password("IX", salt=SALT))
        self.assertEqual(ScramSecret.from_password("\u2168", salt=SALT),
                         ScramSecret.from_password("IX", salt=SALT))
        refused = ScramSecret.from_password("a\u0080b", salt=SALT)  # a C.2.2 control character
        self.assertEqual(hashlib.sha256(client_key_of("a\u0080b".encode(), refused)).digest(),
                         refused.stored_key)

    def test_random_salt(self) -> None:
        """Without a salt, each secret gets a random 16-byte one."""
        one, two = ScramSecret.from_password("x", iterations=4096), ScramSecret.from_password("x")
        self.assertEqual((len(one.salt), one.iterations), (16, 4096))
        self.assertNotEqual(one.salt, two.salt)

    def test_parse_refuses(self) -> None:
        """parse() refuses whatever is not a secret, without quoting it."""
        good = ScramSecret.from_password("pencil", salt=SALT).format()
        scheme, rest = good.split("$", 1)
        salt_part, keys = rest.split("$")
        stored, server = keys.split(":")
        for bad in ["", "pencil", "md5" + "0" * 32, good.replace("SHA-256", "SHA-1"),
                    good + "$", good + "x", "SCRAM-SHA-256$0:" + salt_part.split(":")[1] + "$" + keys,
                    f"{scheme}$4096:$${keys}", f"{scheme}${salt_part}${stored}",
                    f"{scheme}${salt_part}${stored}:{server[:-4]}",  # a short ServerKey
                    f"{scheme}${salt_part}${stored}:{server[:-1]}",  # bad padding
                    f"{scheme}$99999999999:{salt_part.split(':')[1]}${keys}",
                    good.replace("4096", "04096"), good.replace("$", "$ ")]:
            with self.assertRaises(ValueError) as raised:
                ScramSecret.parse(bad)
            self.assertIn("not a SCRAM-SHA-256 secret", str(raised.exception))
            if bad:
                self.assertNotIn(bad, str(raised.exception))

    def test_repr_hides_keys(self) -> None:
        """A secret's repr, as a log line might show it, holds neither key."""
        secret = ScramSecret.from_password("pencil", salt=SALT)
        self.assertNotIn(repr(secret.stored_key), repr(secret))
        self.assertNotIn(repr(secret.server_key), repr(secret))

    def test_mock(self) -> None:
        """
        A mock secret has the same salt for every attempt at one user (and
        another for another user), and no password passes it.
        """
        key = os.urandom(32)
        self.assertEqual(ScramSecret.mock("ghost", key).salt, ScramSecret.mock("ghost", key).salt)
        self.assertNotEqual(ScramSecret.mock("ghost", key).salt, ScramSecret.mock("other", key).salt)
        self.assertNotEqual(ScramSecret.mock("ghost", key).salt,
                            ScramSecret.mock("ghost", os.urandom(32)).salt)
        with self.assertRaises(AuthFailed):
            login_scramp_client(ScramServerExchange(ScramSecret.mock("ghost", key)), "")


class RFC7677Tests(SynchronousTestCase):
    """RFC 7677's SCRAM-SHA-256 example (section 3): user 'user', password 'pencil'."""

    CLIENT_FIRST = b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
    SERVER_FIRST = (b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                    b"s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")
    CLIENT_FINAL = (b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                    b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
    SERVER_FINAL = b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
    SECRET = ScramSecret.from_password(
        "pencil", salt=base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ=="), iterations=4096)

    def test_server(self) -> None:
        """The server answers the example's messages with the example's, and recovers ClientKey."""
        server = ScramServerExchange(self.SECRET, nonce="%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0")
        self.assertEqual(server.first(self.CLIENT_FIRST), self.SERVER_FIRST)
        self.assertEqual(server.final(self.CLIENT_FINAL), self.SERVER_FINAL)
        self.assertEqual(server.client_key, client_key_of(b"pencil", self.SECRET))

    def test_client(self) -> None:
        """The client, with the password, sends the example's messages."""
        client = ScramClientExchange(password="pencil", user="user", nonce="rOprNGfwEbeRWgbNEkqO")
        self.assertEqual(client.first(), self.CLIENT_FIRST)
        self.assertEqual(client.final(self.SERVER_FIRST), self.CLIENT_FINAL)
        client.verify(self.SERVER_FINAL)

    def test_pass_through_client(self) -> None:
        """The client, with the ClientKey and the secret but no password, sends the same proof."""
        client = ScramClientExchange(client_key=client_key_of(b"pencil", self.SECRET),
                                     secret=self.SECRET, user="user", nonce="rOprNGfwEbeRWgbNEkqO")
        self.assertEqual(client.first(), self.CLIENT_FIRST)
        self.assertEqual(client.final(self.SERVER_FIRST), self.CLIENT_FINAL)
        client.verify(self.SERVER_FINAL)


class ScramServerTests(SynchronousTestCase):
    secret = ScramSecret.from_password("pencil", salt=SALT)

    def test_scramp_client(self) -> None:
        """scramp's client logs in with the right password, checks our signature, and
        the exchange recovers its ClientKey."""
        server = ScramServerExchange(self.secret)
        self.assertIsNone(server.client_key)
        login_scramp_client(server, "pencil")
        self.assertEqual(server.client_key, client_key_of(b"pencil", self.secret))
        self.assertIs(server.secret, self.secret)

    def test_wrong_password(self) -> None:
        """A wrong password fails with 28P01's reason; no ClientKey; the exchange stays failed."""
        server = ScramServerExchange(self.secret)
        with self.assertRaises(AuthFailed) as raised:
            login_scramp_client(server, "pencil2")
        self.assertEqual(str(raised.exception), "password authentication failed")
        self.assertNotIsInstance(raised.exception, AuthProtocolViolation)
        self.assertEqual(raised.exception.sqlstate, "28P01")
        self.assertIsNone(server.client_key)
        self.assertRaises(AuthProtocolViolation, server.final, b"c=biws,r=x,p=x")

    def test_empty_user_name(self) -> None:
        """PostgreSQL clients send n= empty; any other name is accepted and ignored too."""
        for user in ("", "someone", "a=2Cb"):
            server = ScramServerExchange(self.secret)
            client = ScramClientExchange(password="pencil", user=user)
            first = client.first()
            if user == "":
                self.assertTrue(first.startswith(b"n,,n=,r="))
            client.verify(server.final(client.final(server.first(first))))
            self.assertIsNotNone(server.client_key)

    def test_y_flag(self) -> None:
        """
        A client that supports channel binding but saw no -PLUS offer (y) is
        accepted; its client-final must then carry y's header (eSws).
        """
        server = ScramServerExchange(self.secret, nonce="S")
        client = ScramClientExchange(password="pencil", nonce="C")
        client.first()
        server_first = server.first(b"y,,n=,r=C")
        client_final = client.final(server_first)
        with self.assertRaises(AuthProtocolViolation):  # c=biws: n's header, not y's
            server.final(client_final)

    def test_nonces(self) -> None:
        """The server nonce extends the client's with 24 printable characters, new each time."""
        nonces = set()
        for _ in range(2):
            server_first = ScramServerExchange(self.secret).first(b"n,,n=,r=abc")
            nonce = server_first.split(b",")[0][2:]
            self.assertTrue(nonce.startswith(b"abc"))
            self.assertEqual(len(nonce), 3 + 24)
            self.assertTrue(all(0x21 <= c <= 0x7E and c != ord(",") for c in nonce))
            nonces.add(nonce)
        self.assertEqual(len(nonces), 2)
        client_first = ScramClientExchange(password="x").first()
        self.assertEqual(len(client_first), len(b"n,,n=,r=") + 24)

    def test_mechanisms(self) -> None:
        """Only SCRAM-SHA-256 is offered (no -PLUS: no channel binding yet)."""
        self.assertEqual(ScramServerExchange.mechanisms, ("SCRAM-SHA-256",))

    def test_bytes_like(self) -> None:
        """bytearray and memoryview work as bytes do."""
        server = ScramServerExchange(self.secret)
        client = ScramClientExchange(password="pencil")
        server_first = server.first(bytearray(client.first()))  # type: ignore[arg-type]
        client.verify(server.final(memoryview(client.final(server_first))))  # type: ignore[arg-type]


class ScramClientTests(SynchronousTestCase):
    secret = ScramSecret.from_password("pencil", salt=SALT)

    def test_password_against_scramp(self) -> None:
        """With the password, the client logs into scramp's server and checks its signature."""
        login_to_scramp(ScramClientExchange(password="pencil", user="app"), self.secret)

    def test_wrong_password_against_scramp(self) -> None:
        """With a wrong password scramp refuses the proof; its e= answer is an AuthFailed."""
        client = ScramClientExchange(password="crayon", user="app")
        server = scramp_server(self.secret)
        server.set_client_first(client.first().decode())
        client_final = client.final(server.get_server_first().encode())
        self.assertRaises(scramp.ScramException, server.set_client_final, client_final.decode())
        with self.assertRaises(AuthFailed):
            client.verify(server.get_server_final().encode())

    def test_pass_through(self) -> None:
        """
        The ClientKey our server recovers from a scramp client logs into a
        scramp server that has the same secret, with no password.
        """
        server = ScramServerExchange(self.secret)
        login_scramp_client(server, "pencil")
        assert server.client_key is not None
        login_to_scramp(ScramClientExchange(client_key=server.client_key, secret=server.secret,
                                            user="app"), self.secret)

    def test_pass_through_other_salt(self) -> None:
        """Against a server whose secret has another salt (same password), pass-through
        fails before any proof is sent, saying why."""
        server = ScramServerExchange(self.secret)
        login_scramp_client(server, "pencil")
        assert server.client_key is not None
        client = ScramClientExchange(client_key=server.client_key, secret=self.secret, user="app")
        other = scramp_server(ScramSecret.from_password("pencil", salt=b"another salt!!!!"))
        other.set_client_first(client.first().decode())
        with self.assertRaises(AuthFailed) as raised:
            client.final(other.get_server_first().encode())
        self.assertIn("the server's SCRAM secret for this user differs from the users file's",
                      str(raised.exception))
        other_iterations = scramp_server(ScramSecret.from_password("pencil", salt=SALT,
                                                                   iterations=5000))
        client = ScramClientExchange(client_key=server.client_key, secret=self.secret, user="app")
        other_iterations.set_client_first(client.first().decode())
        self.assertRaises(AuthFailed, client.final, other_iterations.get_server_first().encode())

    def test_keys_kept_from_password_login(self) -> None:
        """After a password login the client holds the server's ClientKey and secret,
        which log in again by pass-through."""
        client = ScramClientExchange(password="pencil", user="app")
        self.assertIsNone(client.client_key)
        login_to_scramp(client, self.secret)
        self.assertEqual(client.secret, self.secret)
        assert client.client_key is not None and client.secret is not None
        login_to_scramp(ScramClientExchange(client_key=client.client_key, secret=client.secret,
                                            user="app"), self.secret)

    def test_arguments(self) -> None:
        """Exactly one of a password or (ClientKey and secret); a ClientKey of another
        secret is an AuthFailed (the users file changed since the client logged in)."""
        key = client_key_of(b"pencil", self.secret)
        self.assertRaises(TypeError, ScramClientExchange)
        self.assertRaises(TypeError, ScramClientExchange, client_key=key)
        self.assertRaises(TypeError, ScramClientExchange, secret=self.secret)
        self.assertRaises(TypeError, ScramClientExchange, password="p", client_key=key,
                          secret=self.secret)
        with self.assertRaises(AuthFailed):
            ScramClientExchange(client_key=key, secret=ScramSecret.from_password("other"))
        self.assertRaises(ValueError, ScramClientExchange, password="p", nonce="a,b")

    def first_of(self, client: ScramClientExchange) -> bytes:
        return client.first().split(b"r=")[1]

    def test_bad_server_first(self) -> None:
        """A server-first-message that is malformed, or whose nonce does not extend ours,
        or that asks for absurd work, is an AuthFailed."""
        for make in [lambda n: b"r=other" + n + b"x,s=AAAA,i=4096",
                     lambda n: b"r=" + n + b",s=AAAA,i=4096",   # not longer than ours
                     lambda n: b"r=" + n + b"x,s=,i=4096",
                     lambda n: b"r=" + n + b"x,s=AAA,i=4096",
                     lambda n: b"r=" + n + b"x,s=AAAA,i=0",
                     lambda n: b"r=" + n + b"x,s=AAAA,i=-1",
                     lambda n: b"r=" + n + b"x,s=AAAA,i=4096x",
                     lambda n: b"r=" + n + b"x,s=AAAA",
                     lambda n: b"r=" + n + b"x,i=4096,s=AAAA",
                     lambda n: b"m=ext,r=" + n + b"x,s=AAAA,i=4096",
                     lambda n: b"e=other-error",
                     lambda n: b"r=" + n + b"x,s=AAAA,i=%d" % (MAX_ITERATIONS + 1),
                     lambda n: b"r=" + n + b"x,s=AAAA,i=99999999999",
                     lambda n: b"r=" + n + b"\x7fx,s=AAAA,i=4096"]:
            client = ScramClientExchange(password="pencil")
            message = make(self.first_of(client))
            self.assertRaises(AuthFailed, client.final, message)
        client = ScramClientExchange(password="pencil")
        nonce = self.first_of(client)
        client.final(b"r=" + nonce + b"x,s=AAAA,i=1,x=extension")  # extensions are allowed

    def test_bad_server_final(self) -> None:
        """A wrong signature, an error, or a malformed server-final-message is an AuthFailed."""
        for message in [b"v=" + base64.b64encode(b"\0" * 32), b"e=invalid-proof", b"v=",
                        b"v=!!!!", b"x=1", b""]:
            server = ScramServerExchange(self.secret)
            client = ScramClientExchange(password="pencil")
            server.final(client.final(server.first(client.first())))
            with self.assertRaises(AuthFailed):
                client.verify(message)

    def test_order(self) -> None:
        """Calls out of order are AuthFailed, and a failed exchange stays failed."""
        client = ScramClientExchange(password="pencil")
        self.assertRaises(AuthProtocolViolation, client.verify, b"v=AAAA")
        self.assertRaises(AuthProtocolViolation, client.first)
        client = ScramClientExchange(password="pencil")
        client.first()
        self.assertRaises(AuthProtocolViolation, client.first)


def valid_first(server: ScramServerExchange) -> bytes:
    """Start C{server} with a well-formed client-first; return the full nonce."""
    return server.first(b"n,,n=,r=client").split(b",")[0][2:]


class HostileInputTests(SynchronousTestCase):
    secret = ScramSecret.from_password("pencil", salt=SALT)

    def test_bad_client_first(self) -> None:
        """Every malformed client-first-message is an AuthProtocolViolation (08P01)."""
        for message in [b"", b"n", b"n,", b"n,,", b"n,,n=", b"n,,r=abc", b"n,,n=,r=",
                        b"n,,n=,r=a,b", b"n,,n=,x=abc", b"n,,n=,r=ab\x7f", b"n,,n=,r=\xff",
                        b"x,,n=,r=abc", b"p=tls-server-end-point,,n=,r=abc", b"p,,n=,r=abc",
                        b"n,a=admin,n=,r=abc", b"n,junk,n=,r=abc", b"n,,m=ext,n=,r=abc",
                        b"n,,n,r=abc", b"n,,nx,r=abc", b"n,,n=,rxabc", b"n,,n=,r",
                        b"n,,n=,r=abc\0", b"n,,n=,r=abc,", b"n,,n=,r=abc,=x", b"n,,n=,r=abc,1=x",
                        b"n,,n=,r=" + b"a" * MAX_MESSAGE, b"n,,n=,r=" + b"a" * 10 ** 6]:
            with self.assertRaises(AuthProtocolViolation, msg=repr(message[:40])) as raised:
                ScramServerExchange(self.secret).first(message)
            self.assertEqual(raised.exception.sqlstate, "08P01")

    def test_client_nonce_bytes(self) -> None:
        """A client nonce of any one byte is taken exactly when RFC 5802 calls it printable."""
        for byte in range(256):
            message = b"n,,n=,r=ab" + bytes([byte])
            if 0x21 <= byte <= 0x7E and byte != 0x2C:
                self.assertTrue(ScramServerExchange(self.secret).first(message))
            else:
                with self.assertRaises(AuthProtocolViolation, msg=repr(message)):
                    ScramServerExchange(self.secret).first(message)

    def test_channel_binding_refused(self) -> None:
        """A client that requires channel binding (p=) is told it is not offered."""
        with self.assertRaises(AuthProtocolViolation) as raised:
            ScramServerExchange(self.secret).first(b"p=tls-server-end-point,,n=,r=abc")
        self.assertIn("channel binding", str(raised.exception))

    def test_bad_client_final(self) -> None:
        """Every malformed client-final-message is an AuthFailed, and never sets client_key."""
        proof = base64.b64encode(b"\1" * 32)
        for make in [lambda n: b"",
                     lambda n: b"c=biws,r=" + n,
                     lambda n: b"c=biws,r=" + n + b",p=",
                     lambda n: b"c=biws,r=" + n + b",p=" + base64.b64encode(b"\1" * 31),
                     lambda n: b"c=biws,r=" + n + b",p=" + proof[:-1],    # bad base64
                     lambda n: b"c=biws,r=" + n + b",p=" + proof + b"=",
                     lambda n: b"c=biws,r=" + n + b"x,p=" + proof,         # wrong nonce
                     lambda n: b"c=biws,r=" + n[:-1] + b",p=" + proof,
                     lambda n: b"c=biws,r=client,p=" + proof,              # only the client's part
                     lambda n: b"c=eSws,r=" + n + b",p=" + proof,          # y's header after n
                     lambda n: b"c=cD10bHMtc2VydmVyLWVuZC1wb2ludCws,r=" + n + b",p=" + proof,
                     lambda n: b"c=bi,r=" + n + b",p=" + proof,
                     lambda n: b"r=" + n + b",c=biws,p=" + proof,
                     lambda n: b"c=biws,r=" + n + b",p=" + proof + b",x=1",
                     lambda n: b"c=biws,r=" + n + b",p=" + proof + b",p=" + proof,
                     lambda n: b"c=biws,r=" + n + b",1=x,p=" + proof,
                     lambda n: b"c=biws,r=" + n + b",p=" + proof + b"\0",
                     lambda n: b"c=biws,r=" + n + b",x=" + b"a" * MAX_MESSAGE + b",p=" + proof,
                     lambda n: b"c=biws,r=" + n + b",p=" + proof]:         # right form, wrong proof
            server = ScramServerExchange(self.secret)
            with self.assertRaises(AuthFailed):
                server.final(make(valid_first(server)))
            self.assertIsNone(server.client_key)

    def test_nonce_checked_with_a_right_proof(self) -> None:
        """
        A client-final-message whose nonce is not this exchange's is refused
        even when its proof is right for what it says (a client that
        confuses two exchanges).
        """
        for nonce in (b"CX", b"C", b"XS"):
            server = ScramServerExchange(self.secret, nonce="S")
            server_first = server.first(b"n,,n=,r=C")
            without_proof = b"c=biws,r=" + nonce
            signature = hmac.new(self.secret.stored_key, b"n=,r=C," + server_first + b"," +
                                 without_proof, hashlib.sha256).digest()
            key = client_key_of(b"pencil", self.secret)
            proof = bytes(a ^ b for a, b in zip(key, signature))
            with self.assertRaises(AuthProtocolViolation):
                server.final(without_proof + b",p=" + base64.b64encode(proof))
            self.assertIsNone(server.client_key)

    def test_order(self) -> None:
        """Messages out of order (final first, first twice, anything after the end) are
        AuthProtocolViolations, and a failed exchange stays failed."""
        self.assertRaises(AuthProtocolViolation, ScramServerExchange(self.secret).final, b"c=biws")
        server = ScramServerExchange(self.secret)
        valid_first(server)
        self.assertRaises(AuthProtocolViolation, server.first, b"n,,n=,r=again")
        self.assertRaises(AuthProtocolViolation, server.final, b"c=biws")  # failed: stays failed
        server = ScramServerExchange(self.secret)
        login_scramp_client(server, "pencil")
        self.assertRaises(AuthProtocolViolation, server.final, b"c=biws")
        server = ScramServerExchange(self.secret)
        self.assertRaises(AuthFailed, server.first, b"garbage")
        self.assertRaises(AuthProtocolViolation, server.first, b"n,,n=,r=abc")

    @PROPERTY
    @given(st.binary(max_size=300), st.binary(max_size=300))
    def test_any_bytes_server(self, first: bytes, final: bytes) -> None:
        """Whatever bytes a client sends, only AuthFailed escapes the server exchange."""
        server = ScramServerExchange(self.secret)
        for step, message in ((server.first, first), (server.final, final)):
            try:
                step(message)
            except AuthFailed:
                pass
        self.assertIsNone(server.client_key)

    PARTS = st.sampled_from([b"n", b"y", b"p=tls-server-end-point", b"a=x", b"", b"m=x",
                             b"n=", b"n=user", b"r=client", b"r=", b"r=a\x7f", b"c=biws",
                             b"c=eSws", b"c=", b"p=" + base64.b64encode(b"\1" * 32), b"p=AAAA",
                             b"p=", b"x=1", b"=", b"1=x", b"\xff", b"i=4096", b"s=AAAA", b"v=AAAA"])

    @PROPERTY
    @given(st.lists(PARTS, max_size=8), st.lists(PARTS, max_size=8), st.booleans())
    def test_near_messages_server(self, first: List[bytes], final: List[bytes], nonce: bool) -> None:
        """Messages made of plausible attributes, in any order (the full nonce among them
        or not): only AuthFailed escapes."""
        server = ScramServerExchange(self.secret, nonce="S")
        try:
            server.first(b",".join(first))
        except AuthFailed:
            return
        if nonce:
            final = [b"r=" + b",".join(first).split(b"r=")[1].split(b",")[0] + b"S"] + final
        try:
            server.final(b",".join(final))
        except AuthFailed:
            pass
        self.assertIsNone(server.client_key)  # no proof among these parts is right

    @PROPERTY
    @given(st.binary(max_size=300), st.binary(max_size=300), st.booleans())
    def test_any_bytes_client(self, first: bytes, final: bytes, prefix: bool) -> None:
        """Whatever bytes a server sends, only AuthFailed escapes the client exchange."""
        client = ScramClientExchange(password="pencil", nonce="C")
        client.first()
        try:
            client.final((b"r=C" if prefix else b"") + first)
        except AuthFailed:
            return
        try:
            client.verify(final)
        except AuthFailed:
            pass


class MD5Tests(SynchronousTestCase):
    def test_hash(self) -> None:
        """md5_hash is PostgreSQL's md5 + md5(password + user), PgBouncer's documented example."""
        self.assertEqual(md5_hash("secret", "app"), "md5" + hashlib.md5(b"secretapp").hexdigest())
        self.assertEqual(md5_hash("1234", "admin"), "md545f2603610af569b6155c45067268c6b")
        self.assertEqual(md5_hash("pässword", "app"),
                         "md5" + hashlib.md5("pässwordapp".encode()).hexdigest())

    def test_response(self) -> None:
        """md5_response answers a salt from the stored hash; md5_check accepts exactly it."""
        stored = md5_hash("secret", "app")
        salt = b"\x01\x02\x03\x04"
        expected = b"md5" + hashlib.md5(stored[3:].encode() + salt).hexdigest().encode()
        self.assertEqual(md5_response(stored, salt), expected)
        self.assertTrue(md5_check(expected, stored, salt))
        self.assertFalse(md5_check(expected, stored, b"\x01\x02\x03\x05"))
        self.assertFalse(md5_check(expected, md5_hash("secreT", "app"), salt))
        self.assertFalse(md5_check(expected[:-1], stored, salt))
        self.assertFalse(md5_check(b"", stored, salt))

    def test_not_a_hash(self) -> None:
        """md5_response refuses what is not an md5 hash (a plaintext password by mistake)."""
        for bad in ("secret", "md5" + "A" * 32, "md5" + "0" * 31):
            self.assertRaises(ValueError, md5_response, bad, b"salt")


USERLIST = '''\
; a comment
"plain" "secret"

  ;an indented comment
"hashed" "md5%s"  the rest of the line is ignored
"scrammed" "%s"
"quo""ted" "pass""word"
"blank" ""
"crlf" "x"\r
''' % (md5_hash("secret", "hashed")[3:], ScramSecret.from_password("s", salt=SALT).format())


class UserlistTests(SynchronousTestCase):
    def test_kinds(self) -> None:
        """A password field's form decides its kind; "" inside a field is a quote."""
        users = parse_userlist(USERLIST)
        self.assertEqual(sorted(users), ["blank", "crlf", "hashed", "plain", "quo\"ted", "scrammed"])
        self.assertEqual({name: c.kind for name, c in users.items()},
                         {"plain": "plain", "hashed": "md5", "scrammed": "scram",
                          "quo\"ted": "plain", "blank": "plain", "crlf": "plain"})
        self.assertEqual(users["quo\"ted"].secret, "pass\"word")
        self.assertEqual(users["crlf"].secret, "x")
        self.assertEqual(users["plain"].user, "plain")

    def test_plain(self) -> None:
        """A plaintext password gives its md5 hash, and a SCRAM secret made once, that
        verifies the password."""
        plain = parse_userlist(USERLIST)["plain"]
        self.assertEqual(plain.password(), "secret")
        self.assertEqual(plain.md5(), md5_hash("secret", "plain"))
        secret = plain.scram()
        self.assertIs(plain.scram(), secret)
        assert secret is not None
        self.assertEqual(len(secret.salt), 16)
        login_scramp_client(ScramServerExchange(secret), "secret")

    def test_md5(self) -> None:
        """An md5 hash is its own md5(), with no SCRAM secret and no password."""
        hashed = parse_userlist(USERLIST)["hashed"]
        self.assertEqual(hashed.md5(), md5_hash("secret", "hashed"))
        self.assertIsNone(hashed.scram())
        self.assertIsNone(hashed.password())

    def test_scram(self) -> None:
        """A SCRAM secret is its own scram(), with no md5 hash and no password."""
        scrammed = parse_userlist(USERLIST)["scrammed"]
        self.assertEqual(scrammed.scram(), ScramSecret.from_password("s", salt=SALT))
        self.assertIsNone(scrammed.md5())
        self.assertIsNone(scrammed.password())

    def test_empty_password(self) -> None:
        """An empty password (PgBouncer: no password login) is kept, and gives nothing to
        check a client against."""
        blank = parse_userlist(USERLIST)["blank"]
        self.assertTrue(blank.disabled)
        self.assertEqual((blank.scram(), blank.md5(), blank.password()), (None, None, None))
        self.assertFalse(parse_userlist(USERLIST)["plain"].disabled)

    def test_check_password(self) -> None:
        """A cleartext password checks against every kind; an empty one, or any against a
        disabled user, never passes."""
        users = parse_userlist(USERLIST)
        for name, right in [("plain", "secret"), ("hashed", "secret"), ("scrammed", "s"),
                            ("quo\"ted", "pass\"word")]:
            self.assertTrue(users[name].check_password(right), name)
            self.assertFalse(users[name].check_password(right + "x"), name)
            self.assertFalse(users[name].check_password(""), name)
        self.assertFalse(users["blank"].check_password(""))
        self.assertFalse(users["blank"].check_password("x"))

    def test_not_md5(self) -> None:
        """Upper-case hex or a wrong length is not an md5 hash (as in PostgreSQL): plaintext."""
        for password in ("md5" + "A" * 32, "md5" + "a" * 31, "md5" + "a" * 33):
            self.assertEqual(Credential.of("u", password).kind, "plain")

    def test_later_entry_wins(self) -> None:
        """A user listed twice gets the later entry, as in PgBouncer."""
        self.assertEqual(parse_userlist('"a" "one"\n"a" "two"\n')["a"].secret, "two")

    def test_bad_lines(self) -> None:
        """A bad line is a ValueError naming its line number, never the password."""
        for text, line in [('"a" "pw1"\nb "pw2"\n', 2),
                           ('"a" "pw1"\n\n"b"\n', 3),
                           ('"a pw1"\n', 1),
                           ('"a" pw1\n', 1),
                           ('"a" "pw1\n"\n', 1),
                           ('# comment\n"a" "pw1"\n', 1),
                           ('"" "pw1"\n', 1),
                           ('"a" "pw\0x"\n', 1),
                           ('"a" "x"\n"b" "SCRAM-SHA-256$4096:pw1"\n', 2)]:
            with self.assertRaises(ValueError, msg=text) as raised:
                parse_userlist(text)
            self.assertIn(f"line {line}:", str(raised.exception))
            self.assertNotIn("pw", str(raised.exception))

    def test_credential_checks(self) -> None:
        """Credential refuses an unknown kind or a secret of the wrong form."""
        self.assertRaises(ValueError, Credential, "u", "cleartext", "x")
        self.assertRaises(ValueError, Credential, "u", "md5", "secret")
        self.assertRaises(ValueError, Credential, "u", "scram", "secret")

    def test_repr_hides_secret(self) -> None:
        """A credential's repr, as a log line might show it, holds no password."""
        self.assertNotIn("secret", repr(parse_userlist(USERLIST)["plain"]).replace("secret=", ""))
        self.assertIn("plain", repr(parse_userlist(USERLIST)["plain"]))


# A real PostgreSQL 15 -------------------------------------------------------

PG_BIN = "/usr/lib/postgresql/15/bin"
#: Passwords PostgreSQL SASLprep's (Roman numeral nine, a soft hyphen) and
#: one SASLprep refuses, which PostgreSQL then uses raw (U+0080).
PASSWORDS = {"app": "pencil", "app_prep": "\u2168\u00ad x", "app_raw": "a\u0080b"}


class PostgresError(Exception):
    """An ErrorResponse: its fields by code (C, M, ...)."""

    def __init__(self, fields: Dict[str, str]) -> None:
        super().__init__(f"{fields.get('C')}: {fields.get('M')}")
        self.fields = fields


class Wire:
    """The few messages of PostgreSQL's protocol a login needs, on a blocking socket."""

    def __init__(self, testcase: SynchronousTestCase, port: int, user: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        testcase.addCleanup(self.sock.close)
        params = b"user\0%s\0database\0postgres\0\0" % user.encode()
        self.sock.sendall(struct.pack("!ii", 8 + len(params), 196608) + params)

    def send(self, kind: bytes, body: bytes) -> None:
        self.sock.sendall(kind + struct.pack("!i", 4 + len(body)) + body)

    def _exactly(self, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = self.sock.recv(size - len(data))
            if not chunk:
                raise AssertionError("the server closed the connection")
            data += chunk
        return data

    def read(self) -> Tuple[bytes, bytes]:
        kind, size = struct.unpack("!ci", self._exactly(5))
        return kind, self._exactly(size - 4)

    def auth(self) -> Tuple[int, bytes]:
        """The next Authentication message: (its code, the rest); an ErrorResponse raises."""
        kind, body = self.read()
        if kind == b"E":
            raise PostgresError({chr(f[0]): f[1:].decode() for f in body.split(b"\0") if f})
        assert kind == b"R", kind
        return struct.unpack("!i", body[:4])[0], body[4:]

    def ready(self) -> None:
        """After AuthenticationOk: read up to ReadyForQuery, and say goodbye."""
        while self.read()[0] != b"Z":
            pass
        self.send(b"X", b"")


def scram_login(testcase: SynchronousTestCase, port: int, user: str,
                client: ScramClientExchange) -> None:
    """Log C{user} in with C{client}: AuthenticationSASL ... AuthenticationOk."""
    wire = Wire(testcase, port, user)
    code, mechanisms = wire.auth()
    testcase.assertEqual((code, mechanisms), (10, b"SCRAM-SHA-256\0\0"))
    first = client.first()
    wire.send(b"p", b"SCRAM-SHA-256\0" + struct.pack("!i", len(first)) + first)
    code, server_first = wire.auth()
    testcase.assertEqual(code, 11)
    wire.send(b"p", client.final(server_first))
    code, server_final = wire.auth()
    testcase.assertEqual(code, 12)
    client.verify(server_final)
    testcase.assertEqual(wire.auth(), (0, b""))
    wire.ready()


def md5_login(testcase: SynchronousTestCase, port: int, user: str, stored: str) -> None:
    """Log C{user} in by MD5 from the stored hash alone."""
    wire = Wire(testcase, port, user)
    code, salt = wire.auth()
    testcase.assertEqual(code, 5)
    wire.send(b"p", md5_response(stored, salt) + b"\0")
    testcase.assertEqual(wire.auth(), (0, b""))
    wire.ready()


def as_user(account: pwd.struct_passwd) -> Callable[[], None]:
    """A preexec_fn that makes the child C{account}'s user (we are root)."""
    def demote() -> None:
        os.setgroups([])
        os.setgid(account.pw_gid)
        os.setuid(account.pw_uid)
    return demote


def postgres_15(testcase: SynchronousTestCase) -> Tuple[int, Callable[[str], str]]:
    """
    Start a PostgreSQL 15 on a loopback port (as the postgres user when we
    are root), stopped and removed by the test's cleanup; password logins
    over TCP (method md5: SCRAM for a SCRAM secret), trust over its socket.

    @return: its port, and a function that runs SQL through psql (as
        superuser, over the socket) and returns psql's unaligned output.
    """
    initdb = os.path.join(PG_BIN, "initdb")
    if not os.access(initdb, os.X_OK):
        why = f"{initdb} is not installed (apt-get install postgresql-15, or run .ci/run)"
        if REQUIRED:
            raise AssertionError(f"POOLPROXY_REQUIRE_INTEROP=1 but {why}")
        raise SkipTest(why)
    base = tempfile.mkdtemp(prefix="poolproxy-pg-")
    testcase.addCleanup(shutil.rmtree, base, True)
    demote: Optional[Callable[[], None]] = None
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        account = pwd.getpwnam("postgres")
        os.chown(base, account.pw_uid, account.pw_gid)
        demote = as_user(account)
    data = os.path.join(base, "data")
    subprocess.run([initdb, "-D", data, "-N", "-A", "trust", "-U", "postgres", "-E", "UTF8",
                    "--locale=C", "--no-instructions"], cwd=base, preexec_fn=demote, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    with open(os.path.join(data, "pg_hba.conf"), "w") as hba:
        hba.write("local all all trust\nhost all all 127.0.0.1/32 md5\n")
    port = free_port()
    server = Process(testcase, [os.path.join(PG_BIN, "postgres"), "-D", data, "-k", base,
                                "-h", "127.0.0.1", "-p", str(port), "-c", "fsync=off"],
                     "postgres", preexec_fn=demote)

    def ready() -> bool:
        with open(server.log, errors="replace") as log:
            return "ready to accept connections" in log.read()
    wait_until(ready, server.proc, "postgres ready", log=server.log)

    def psql(sql: str) -> str:
        return subprocess.run(
            [os.path.join(PG_BIN, "psql"), "-h", base, "-p", str(port), "-U", "postgres",
             "-d", "postgres", "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql],
            check=True, capture_output=True, env=dict(os.environ, PGCLIENTENCODING="UTF8"),
        ).stdout.decode()
    return port, psql


class RealServerTests(SynchronousTestCase):
    def test_postgres_15(self) -> None:
        """
        Against a real PostgreSQL 15: its rolpassword parses, and is what
        from_password derives (SASLprep as PostgreSQL does it); a client
        with the password passes our server with that secret; our client
        logs in with the password, and by pass-through with the ClientKey
        our server recovered, but not with a secret of another salt; MD5
        logs in from the stored hash alone; wrong proofs are refused.
        """
        port, psql = postgres_15(self)
        roles = "".join(f"CREATE ROLE {user} LOGIN PASSWORD '{password}';"
                        for user, password in PASSWORDS.items())
        psql("SET password_encryption = 'scram-sha-256';" + roles +
             "SET password_encryption = 'md5'; CREATE ROLE app_md5 LOGIN PASSWORD 'secret';")
        stored = dict(line.split("|", 1) for line in psql(
            "SELECT rolname, rolpassword FROM pg_authid WHERE rolname LIKE 'app%'").split())

        secrets = {user: ScramSecret.parse(stored[user]) for user in PASSWORDS}
        for user, password in PASSWORDS.items():
            secret = secrets[user]
            self.assertEqual(secret.format(), stored[user])
            self.assertEqual(ScramSecret.from_password(password, secret.salt, secret.iterations),
                             secret, user)

            # Our server, with the server's secret, verifies a client with the password
            # (ours: scramp refuses the password SASLprep refuses)...
            server = ScramServerExchange(secret)
            client = ScramClientExchange(password=password)
            client.verify(server.final(client.final(server.first(client.first()))))
            assert server.client_key is not None
            # ...whose ClientKey logs into the real server without the password.
            scram_login(self, port, user, ScramClientExchange(client_key=server.client_key,
                                                              secret=server.secret))
            scram_login(self, port, user, ScramClientExchange(password=password))

        other = ScramSecret.from_password("pencil")  # same password, another salt
        other_key = client_key_of(b"pencil", other)
        with self.assertRaises(AuthFailed) as raised:
            scram_login(self, port, "app", ScramClientExchange(client_key=other_key, secret=other))
        self.assertIn("differs from the users file's", str(raised.exception))
        with self.assertRaises(PostgresError) as refused:
            scram_login(self, port, "app", ScramClientExchange(password="crayon"))
        self.assertEqual(refused.exception.fields["C"], "28P01")

        self.assertEqual(stored["app_md5"], md5_hash("secret", "app_md5"))
        md5_login(self, port, "app_md5", stored["app_md5"])
        with self.assertRaises(PostgresError) as refused:
            md5_login(self, port, "app_md5", md5_hash("secreT", "app_md5"))
        self.assertEqual(refused.exception.fields["C"], "28P01")
