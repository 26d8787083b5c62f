"""
The PostgreSQL wire format (poolproxy.codecs.postgres), the pairing of a
server connection's replies with what was sent (postgres_replies), the
server login conversation (postgres_login) and prepared-statement
bookkeeping (postgres_statements): pure code, plain bytes, no server.
"""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from poolproxy.codec import FramingError
from poolproxy.codecs import postgres as pg
from poolproxy.codecs.postgres_auth import ScramSecret, ScramServerExchange
from poolproxy.codecs.postgres_login import LoginCredentials, ServerLogin
from poolproxy.codecs.postgres_replies import (BIND, CLOSE, DESCRIBE, EXECUTE, PARSE, QUERY,
                                               SWALLOW, SYNC, ParseSent, Replies)
from poolproxy.codecs.postgres_statements import (ClientStatements, ServerStatements,
                                                  StatementLimit, StatementNames,
                                                  bind_statement, make_parse, parse_fields,
                                                  rename_bind)


def msg(kind: bytes, body: bytes = b"") -> bytes:
    return pg.message(kind, body)


PARSE_OK = msg(b"1")
BIND_OK = msg(b"2")
CLOSE_OK = msg(b"3")
NO_DATA = msg(b"n")
ROW_DESC = msg(b"T", b"\x00\x01a\x00" + b"\x00" * 18)
DATA_ROW = msg(b"D", b"\x00\x01\x00\x00\x00\x011")
SELECT_1 = msg(b"C", b"SELECT 1\x00")
NOTICE = msg(b"N", b"SNOTICE\x00Mhello\x00\x00")
PARAM = msg(b"S", b"application_name\x00x\x00")


def z(status: bytes = b"I") -> bytes:
    return pg.ready_for_query(status)


def error(code: bytes = b"42601") -> bytes:
    return msg(b"E", b"SERROR\x00C" + code + b"\x00Mboom\x00\x00")


class StartupTests(SynchronousTestCase):
    def test_startup_message(self) -> None:
        packet = pg.startup_message({b"user": b"app", b"database": b"db",
                                     b"application_name": b"x"})
        startup, used = pg.read_startup(packet + b"rest")
        assert startup is not None
        self.assertEqual(used, len(packet))
        self.assertTrue(startup.is_startup)
        self.assertEqual((startup.user, startup.database), (b"app", b"db"))
        self.assertEqual(startup.params[b"application_name"], b"x")

    def test_database_defaults_to_user(self) -> None:
        startup, _ = pg.read_startup(pg.startup_message({b"user": b"app"}))
        assert startup is not None
        self.assertEqual(startup.database, b"app")

    def test_incomplete(self) -> None:
        packet = pg.startup_message({b"user": b"app"})
        for n in range(len(packet)):
            self.assertEqual(pg.read_startup(packet[:n]), (None, 0))

    def test_ssl_gss_cancel(self) -> None:
        ssl = struct.pack("!II", 8, pg.SSL_REQUEST)
        startup, used = pg.read_startup(ssl)
        assert startup is not None
        self.assertEqual((startup.code, used), (pg.SSL_REQUEST, 8))
        cancel = pg.cancel_request(1234, b"k" * 32)  # protocol 3.2: a longer key
        startup, used = pg.read_startup(cancel)
        assert startup is not None
        self.assertEqual((startup.code, startup.pid, startup.key), (pg.CANCEL_REQUEST, 1234,
                                                                    b"k" * 32))

    def test_bad_packets(self) -> None:
        for bad in (struct.pack("!II", 4, 0), struct.pack("!II", 100000, pg.PROTOCOL_3_0),
                    struct.pack("!II", 8, 0x00020000),  # protocol 2
                    struct.pack("!II", 9, pg.SSL_REQUEST) + b"x",
                    pg.startup_message({b"database": b"x"}),  # no user
                    struct.pack("!II", 12, pg.PROTOCOL_3_0) + b"user"):  # no terminator
            self.assertRaises(FramingError, pg.read_startup, bad)

    def test_protocol_3_2(self) -> None:
        startup, _ = pg.read_startup(pg.startup_message({b"user": b"u"}, pg.PROTOCOL_3_2))
        assert startup is not None
        self.assertTrue(startup.is_startup)
        self.assertEqual(startup.code & 0xffff, 2)


class ErrorResponseTests(SynchronousTestCase):
    def test_fields(self) -> None:
        data = pg.error_response(b"53300", "too many", detail="d", hint="h")
        reader = pg.MessageReader()
        [(kind, body)] = reader.feed(data)
        self.assertEqual(kind, b"E")
        fields = pg.error_fields(body)
        self.assertEqual(fields, {"S": "ERROR", "V": "ERROR", "C": "53300", "M": "too many",
                                  "D": "d", "H": "h"})
        self.assertEqual(pg.error_sqlstate(body), b"53300")

    def test_kinds_have_their_own_sqlstates(self) -> None:
        codec = pg.codec
        seen = {}
        for kind in ("overloaded", "unavailable", "timeout", "too_large", "malformed"):
            [(_, body)] = pg.MessageReader().feed(codec.error_reply(kind, "x"))
            seen[kind] = pg.error_fields(body)["C"]
        self.assertEqual(seen, {"overloaded": "53300", "unavailable": "57P03",
                                "timeout": "57014", "too_large": "54000",
                                "malformed": "08P01"})
        [(_, body)] = pg.MessageReader().feed(codec.fatal_reply("overloaded", "x"))
        self.assertEqual(pg.error_fields(body)["S"], "FATAL")


class MessageReaderTests(SynchronousTestCase):
    def test_bounds(self) -> None:
        reader = pg.MessageReader(max_size=100)
        self.assertEqual(reader.feed(b"Q" + struct.pack("!I", 101)), [])
        assert reader.error is not None
        self.assertEqual(reader.error.kind, "too_large")
        reader = pg.MessageReader()
        reader.feed(b"Q" + struct.pack("!I", 3))
        assert reader.error is not None
        self.assertEqual(reader.error.kind, "malformed")

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.tuples(st.sampled_from(b"QPBDESCdcfXH"), st.binary(max_size=40)),
                    max_size=8), st.lists(st.integers(1, 50), max_size=20))
    def test_chunks_reserialise(self, messages, cuts) -> None:
        """Cut anywhere, the messages come out whole, and join back to the stream."""
        stream = b"".join(msg(bytes([k]), body) for k, body in messages)
        reader = pg.MessageReader()
        out = []
        pos = 0
        for cut in cuts + [len(stream)]:
            out += reader.feed(stream[pos:pos + cut])
            pos += cut
        out += reader.feed(stream[pos:])
        self.assertEqual(b"".join(msg(k, b) for k, b in out), stream)
        self.assertEqual(reader.pending(), 0)

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=300))
    def test_garbage(self, data) -> None:
        """Garbage never raises, and what is held stays under the bound."""
        reader = pg.MessageReader(max_size=1000)
        reader.feed(data)
        self.assertLessEqual(reader.pending(), 1000 + 5)
        try:
            pg.read_startup(data)
        except FramingError:
            pass


class RepliesTests(SynchronousTestCase):
    def test_simple_query(self) -> None:
        r = Replies()
        r.sent(QUERY)
        self.assertFalse(r.idle)
        stream = ROW_DESC + DATA_ROW + SELECT_1 + z()
        self.assertEqual(r.feed(stream), stream)
        self.assertTrue(r.idle)

    def test_transaction_status(self) -> None:
        r = Replies()
        r.sent(QUERY)
        r.feed(msg(b"C", b"BEGIN\x00") + z(b"T"))
        self.assertEqual(r.status, b"T")
        self.assertFalse(r.idle)
        r.sent(QUERY)
        r.feed(error() + z(b"E"))
        self.assertEqual(r.status, b"E")
        r.sent(QUERY)
        r.feed(msg(b"C", b"ROLLBACK\x00") + z())
        self.assertTrue(r.idle)

    def test_pipelined_syncs(self) -> None:
        """Every Sync sent is answered before the connection is idle."""
        r = Replies()
        for _ in range(3):
            for kind in (BIND, EXECUTE, SYNC):
                r.sent(kind)
        r.feed(BIND_OK + SELECT_1 + z())
        self.assertFalse(r.idle)
        r.feed(BIND_OK + SELECT_1 + z() + BIND_OK)
        self.assertFalse(r.idle)
        r.feed(SELECT_1 + z())
        self.assertTrue(r.idle)

    def test_flush_is_not_the_end(self) -> None:
        r = Replies()
        r.sent(PARSE)
        r.sent(DESCRIBE)  # then Flush, which owes nothing
        r.feed(PARSE_OK + msg(b"t", b"\x00\x00") + NO_DATA)
        self.assertEqual(r.owed, 0)
        # idle by the server's word; the client's partial batch keeps the
        # lease (the frontend's business).
        self.assertTrue(r.idle)

    def test_locals_in_order(self) -> None:
        """The proxy's ParseComplete goes after what was owed before it."""
        r = Replies()
        r.sent(QUERY)
        r.local(PARSE_OK)
        r.sent(BIND)
        r.sent(SYNC)
        self.assertEqual(r.take_locals(), b"")
        out = r.feed(SELECT_1 + z() + BIND_OK + z())
        self.assertEqual(out, SELECT_1 + z() + PARSE_OK + BIND_OK + z())

    def test_locals_at_once_when_nothing_owed(self) -> None:
        r = Replies()
        r.local(PARSE_OK)
        self.assertEqual(r.take_locals(), PARSE_OK)

    def test_error_skips_to_sync(self) -> None:
        """After an error the server skips to Sync: so do the proxy's replies."""
        r = Replies()
        r.sent(BIND)
        r.local(PARSE_OK)
        r.sent(EXECUTE)
        r.sent(SYNC)
        out = r.feed(error() + z())
        self.assertEqual(out, error() + z())
        self.assertTrue(r.idle)

    def test_error_before_sync_sent(self) -> None:
        """Messages sent after the error, before the Sync, owe nothing."""
        r = Replies()
        r.sent(BIND)
        r.feed(error())
        r.sent(EXECUTE)
        r.local(CLOSE_OK)
        self.assertEqual(r.take_locals(), b"")
        r.sent(SYNC)
        self.assertEqual(r.owed, 1)
        self.assertEqual(r.feed(z()), z())
        self.assertTrue(r.idle)

    def test_swallowed_parse(self) -> None:
        r = Replies()
        parsed = []
        r.sent_parse(ParseSent(b"s1", True, lambda n: None, parsed.append))
        r.sent(BIND)
        r.sent(EXECUTE)
        r.sent(SYNC)
        out = r.feed(PARSE_OK + BIND_OK + SELECT_1 + z())
        self.assertEqual(out, BIND_OK + SELECT_1 + z())
        self.assertEqual(parsed, [b"s1"])

    def test_failed_parse_told(self) -> None:
        r = Replies()
        failed = []
        r.sent_parse(ParseSent(b"s1", True, failed.append))
        r.sent(BIND)
        r.sent(SYNC)
        out = r.feed(error() + z())
        self.assertEqual(out, error() + z())  # the client sees why
        self.assertEqual(failed, [b"s1"])

    def test_swallowed_query(self) -> None:
        r = Replies()
        r.sent(QUERY | SWALLOW)
        r.sent(QUERY)
        out = r.feed(PARAM + msg(b"C", b"SET\x00") + z() + SELECT_1 + z())
        self.assertEqual(out, PARAM + SELECT_1 + z())
        self.assertEqual(r.parameters[b"application_name"], b"x")

    def test_async_messages_belong_to_nothing(self) -> None:
        r = Replies()
        r.sent(QUERY)
        out = r.feed(NOTICE + SELECT_1 + msg(b"A", b"\x00\x00\x00\x01c\x00p\x00") + z())
        self.assertTrue(r.idle)
        self.assertIn(NOTICE, out)

    def test_copy_in_ignores_sync(self) -> None:
        """In copy-in mode Syncs are ignored: the lease waits for CopyDone."""
        r = Replies()
        r.sent(BIND)
        r.sent(EXECUTE)
        r.sent(SYNC)  # libpq's, sent with the Execute: ignored in copy-in
        r.feed(BIND_OK + msg(b"G", b"\x00\x00\x00"))
        self.assertTrue(r.copy_in)
        self.assertFalse(r.idle)
        r.sent(SYNC)  # during copy-in: ignored too
        r.copy_ended()
        r.sent(SYNC)
        r.feed(msg(b"C", b"COPY 3\x00") + z())
        self.assertTrue(r.idle)

    def test_copy_in_error_mid_stream(self) -> None:
        r = Replies()
        r.sent(QUERY)
        r.feed(msg(b"G", b"\x00\x00\x00"))
        # The server fails the COPY while the client still streams data.
        r.feed(error(b"22P02") + z())
        self.assertFalse(r.idle)  # the client's CopyDone is yet to come
        r.copy_ended()
        self.assertTrue(r.idle)

    def test_streamed_data_rows(self) -> None:
        r = Replies()
        r.sent(QUERY)
        big = msg(b"D", b"\x00\x01\x00\x01\x00\x00" + b"x" * 65536)
        stream = ROW_DESC + big + SELECT_1 + z()
        out = b""
        for i in range(0, len(stream), 1000):
            out += r.feed(stream[i:i + 1000])
            # Never more held than one small message.
            self.assertLess(len(r._buffer), 1000)
        self.assertEqual(out, stream)
        self.assertTrue(r.idle)

    def test_ready_owed_to_nothing_breaks(self) -> None:
        r = Replies()
        r.feed(z())
        self.assertIsNotNone(r.error)

    @settings(max_examples=150, deadline=None)
    @given(st.lists(st.integers(1, 64), max_size=40))
    def test_any_cut(self, cuts) -> None:
        """However the stream is cut, the same bytes come out."""
        r = Replies()
        for _ in range(3):
            r.sent(PARSE)
            r.sent(BIND)
            r.sent(EXECUTE)
            r.sent(SYNC)
        one = PARSE_OK + BIND_OK + DATA_ROW + msg(b"D", b"y" * 100) + SELECT_1 + z()
        stream = one * 3
        out, pos = b"", 0
        for cut in cuts:
            out += r.feed(stream[pos:pos + cut])
            pos += cut
        out += r.feed(stream[pos:])
        self.assertEqual(out, stream)
        self.assertTrue(r.idle)

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=400), st.lists(st.sampled_from(
        [PARSE, BIND, DESCRIBE, EXECUTE, CLOSE, SYNC, QUERY]), max_size=10))
    def test_garbage_never_raises(self, data, sent) -> None:
        r = Replies(max_message=1000)
        for kind in sent:
            r.sent(kind)
        r.feed(data)
        self.assertLessEqual(len(r._buffer), 1000 + 5)


class StatementTests(SynchronousTestCase):
    def test_one_name_per_definition(self) -> None:
        names = StatementNames()
        a = names.name_for(b"select 1\x00\x00\x00")
        self.assertEqual(names.name_for(b"select 1\x00\x00\x00"), a)
        self.assertNotEqual(names.name_for(b"select 2\x00\x00\x00"), a)
        self.assertIsNone(names.known(b"select 1\x00\x00\x00"))
        names.parsed(a)
        self.assertEqual(names.known(b"select 1\x00\x00\x00"), a)

    def test_definitions_bounded_by_count(self) -> None:
        """Past max_definitions the oldest is forgotten: renamed on its next use."""
        names = StatementNames(max_definitions=3)
        first = names.name_for(b"q0\0\0\0")
        names.parsed(first)
        for i in range(1, 4):
            names.name_for(b"q%d\0\0\0" % i)
        self.assertEqual(len(names), 3)
        self.assertEqual(names.forgotten, 1)
        self.assertIsNone(names.known(b"q0\0\0\0"))  # forgotten: not answered locally
        again = names.name_for(b"q0\0\0\0")
        self.assertNotEqual(again, first)
        self.assertEqual(len(names), 3)

    def test_definitions_bounded_by_bytes(self) -> None:
        """A million distinct 1 KiB definitions keep at most max_bytes of them."""
        names = StatementNames(max_bytes=64 * 1024)
        for i in range(10_000):
            names.name_for(b"%08d" % i + b"x" * 1016)
        self.assertLessEqual(names.size, 64 * 1024)
        self.assertEqual(len(names), 64)
        self.assertEqual(names.forgotten, 10_000 - 64)

    def test_renew_keeps_the_count(self) -> None:
        names = StatementNames(max_definitions=2)
        a = names.name_for(b"a")
        names.parsed(a)
        renewed = names.renew(b"a")
        self.assertNotEqual(renewed, a)
        self.assertEqual((len(names), names.size, names.forgotten), (1, 1, 0))
        self.assertIsNone(names.known(b"a"))  # the new name is not parsed anywhere yet

    def test_client_statements_bounded(self) -> None:
        statements = ClientStatements(max_statements=2, max_bytes=100)
        statements.add(b"s1", b"select 1\0\0\0")
        statements.add(b"s2", b"select 2\0\0\0")
        with self.assertRaises(StatementLimit):
            statements.add(b"s3", b"select 3\0\0\0")
        statements.forget(b"s1")
        statements.add(b"s3", b"select 3\0\0\0")
        with self.assertRaises(StatementLimit):
            ClientStatements(max_bytes=100).add(b"big", b"x" * 100)
        statements.clear()
        statements.add(b"s4", b"y" * 90)  # clear gave the bytes back

    def test_lru(self) -> None:
        s = ServerStatements(limit=2)
        self.assertEqual(s.add(b"a"), [])
        self.assertEqual(s.add(b"b"), [])
        s.use(b"a")
        self.assertEqual(s.add(b"c"), [b"b"])
        self.assertIn(b"a", s)
        self.assertNotIn(b"b", s)

    def test_rewriting(self) -> None:
        parse = make_parse(b"s1", b"select $1\x00\x00\x01\x00\x00\x00\x17")
        name, definition = parse_fields(parse[5:])
        self.assertEqual(name, b"s1")
        bind_body = b"portal\x00s1\x00\x00\x00\x00\x00\x00\x00"
        start, end = bind_statement(bind_body)
        self.assertEqual(bind_body[start:end], b"s1")
        renamed = rename_bind(bind_body, start, end, b"poolproxy_7")
        self.assertEqual(renamed[5:], b"portal\x00poolproxy_7\x00\x00\x00\x00\x00\x00\x00")


class ServerLoginTests(SynchronousTestCase):
    def server_says(self, *messages: bytes) -> bytes:
        return b"".join(messages)

    def test_trust(self) -> None:
        login = ServerLogin(b"app", b"db", LoginCredentials())
        self.assertEqual(pg.read_startup(login.start())[0].params,  # type: ignore[union-attr]
                         {b"user": b"app", b"database": b"db"})
        out = login.receive(pg.authentication(pg.AUTH_OK) + pg.parameter_status(b"a", b"b")
                            + pg.backend_key_data(7, b"kkkk") + z())
        self.assertEqual(out, b"")
        self.assertTrue(login.done)
        self.assertEqual((login.pid, login.key, login.parameters), (7, b"kkkk", {b"a": b"b"}))

    def test_md5_from_hash(self) -> None:
        from poolproxy.codecs.postgres_auth import md5_hash, md5_response
        hashed = md5_hash("pw", "app")
        login = ServerLogin(b"app", b"db", LoginCredentials(md5=hashed))
        out = login.receive(pg.authentication(pg.AUTH_MD5, b"salt"))
        self.assertEqual(out, pg.password_message(md5_response(hashed, b"salt") + b"\0"))

    def test_scram_with_password(self) -> None:
        secret = ScramSecret.from_password("pw")
        server = ScramServerExchange(secret)
        login = ServerLogin(b"app", b"db", LoginCredentials(password="pw"))
        first = login.receive(pg.auth_sasl(("SCRAM-SHA-256",)))
        [(kind, body)] = pg.MessageReader().feed(first)
        self.assertEqual(kind, b"p")
        mechanism, _, rest = body.partition(b"\0")
        self.assertEqual(mechanism, b"SCRAM-SHA-256")
        server_first = server.first(rest[4:])
        final = login.receive(pg.authentication(pg.AUTH_SASL_CONTINUE, server_first))
        [(_, final_body)] = pg.MessageReader().feed(final)
        server_final = server.final(final_body)
        login.receive(pg.authentication(pg.AUTH_SASL_FINAL, server_final)
                      + pg.authentication(pg.AUTH_OK) + z())
        self.assertTrue(login.done)
        self.assertIsNone(login.error)

    def test_no_credential(self) -> None:
        login = ServerLogin(b"app", b"db", LoginCredentials())
        login.receive(pg.auth_sasl(("SCRAM-SHA-256",)))
        self.assertIn("has none", login.error or "")
        self.assertEqual(login.sqlstate, b"28P01")

    def test_server_error_kept_for_the_client(self) -> None:
        login = ServerLogin(b"app", b"nodb", LoginCredentials())
        failure = pg.error_response(b"3D000", 'database "nodb" does not exist', b"FATAL")
        login.receive(failure)
        self.assertEqual(login.failure, failure)
        self.assertEqual(login.sqlstate, b"3D000")

    def test_unknown_auth_method(self) -> None:
        login = ServerLogin(b"app", b"db", LoginCredentials(password="x"))
        login.receive(pg.authentication(7))  # GSSAPI
        self.assertEqual(login.sqlstate, b"0A000")
