"""
Tests for L{poolproxy.codecs.postgres_sql}: which statement of a query
outlives its transaction (L{session_effect}), which drops every prepared
statement (L{deallocates_all}), PostgreSQL's lexical rules that decide what
is a statement at all, and property tests: any bytes, any interleaving of
SQL fragments, statements with known labels joined with comments and
whitespace anywhere, and the fast filter letting through everything the
lexer labels.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

from hypothesis import given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from poolproxy.codecs.postgres_sql import (ADVISORY_LOCK, CURSOR_WITH_HOLD, DEALLOCATE, DISCARD,
                                           LABELS, LISTEN, LOAD, PREPARE, RESET, SET, TEMP_TABLE,
                                           deallocates_all, session_effect)
# The two steps apart, to hold the fast filter to the lexer.
from poolproxy.codecs.postgres_sql import _fold, _may_outlive, _statement_effect, _statements

PROPERTY = settings(max_examples=300, deadline=None, database=None)

Cases = Sequence[Tuple[bytes, Optional[str]]]


def lexed_effect(sql: bytes) -> Optional[str]:
    """What the lexer alone says of C{sql}, without the fast filter."""
    for tokens in _statements(sql):
        label = _statement_effect(tokens)
        if label is not None:
            return label
    return None


class EffectCase(SynchronousTestCase):
    def assertEffects(self, cases: Cases) -> None:
        """Every query of C{cases} gets its label; all mismatches are reported at once."""
        wrong = [(sql, expected, session_effect(sql)) for sql, expected in cases
                 if session_effect(sql) != expected]
        self.assertEqual(wrong, [])


class SetTests(EffectCase):
    def test_session_set(self) -> None:
        """SET in all its session forms is C{set}."""
        self.assertEffects([
            (b"SET search_path TO app, public", SET),
            (b"SET statement_timeout = 0", SET),
            (b"set datestyle to 'ISO'", SET),
            (b"SET SESSION work_mem = '64MB'", SET),
            (b"SET TIME ZONE 'UTC'", SET),
            (b"SET ROLE app_reader", SET),
            (b"SET SESSION ROLE app_reader", SET),
            (b"SET SESSION AUTHORIZATION bob", SET),
            (b"SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE", SET),
            (b"SET app.user_id = 42", SET),
            (b'SET "search_path" TO x', SET),
            (b'SET "local" TO x', SET),
            (b"SET", SET),
            # Parameters whose names begin like the keywords.
            (b"SET local.x = 1", SET),
            (b"SET transaction.x = 1", SET),
            (b"SET constraints . x = 1", SET),
        ])

    def test_transaction_scoped_set(self) -> None:
        """SET LOCAL, SET TRANSACTION and SET CONSTRAINTS end with their transaction."""
        self.assertEffects([
            (b"SET LOCAL search_path TO app", None),
            (b"set local statement_timeout = '5s'", None),
            (b"SET LOCAL ROLE app_reader", None),
            (b"SET TRANSACTION ISOLATION LEVEL REPEATABLE READ", None),
            (b"SET TRANSACTION SNAPSHOT '00000003-0000001B-1'", None),
            (b"SET CONSTRAINTS ALL DEFERRED", None),
            (b"BEGIN; SET LOCAL x.y = 1; SELECT 1; COMMIT;", None),
        ])

    def test_set_not_first(self) -> None:
        """SET counts only as a statement's first keyword: UPDATE ... SET, ALTER ...
        SET, and EXPLAIN or WITH before it are other statements."""
        self.assertEffects([
            (b"UPDATE pgbench_accounts SET abalance = abalance + -1234 WHERE aid = 5;", None),
            (b"UPDATE t\nSET a = 1", None),
            (b"INSERT INTO t VALUES (1) ON CONFLICT (id) DO UPDATE SET a = 2", None),
            (b"ALTER TABLE t ALTER COLUMN a SET DEFAULT 1", None),
            (b"ALTER ROLE bob SET search_path = x", None),
            (b"EXPLAIN SET x = 1", None),
            (b"WITH u AS (UPDATE t SET a = 1 RETURNING *) SELECT * FROM u", None),
            (b"SELECT 1 AS set", None),
            (b"SELECT settings FROM t", None),
            (b"SELECT 1; SELECT set_name FROM t", None),
        ])

    def test_set_hidden(self) -> None:
        """SET inside a string, a comment, a quoted identifier or a dollar
        quote is no statement."""
        self.assertEffects([
            (b"SELECT 'SET x = 1'", None),
            (b"SELECT '; SET x = 1'", None),
            (b"SELECT 'it''s; SET x = 1'", None),
            (b"SELECT E'\\'; SET x = 1'", None),
            (b"SELECT E'\\\\'';SET x = 1'", None),
            (b"SELECT U&'d\\0061t; SET x'", None),
            (b'SELECT "; SET x = 1" FROM t', None),
            (b'SELECT "a"";SET x" FROM t', None),
            (b'SELECT U&"; SET x" FROM t', None),
            (b"SELECT $$; SET x = 1$$", None),
            (b"SELECT $fn$ $$; SET x = 1 $$ $fn$", None),
            (b"DO $body$ BEGIN SET x = 1; END $body$", None),
            (b"SELECT 1 /* ; SET x = 1 */", None),
            (b"SELECT 1 /* /* */ ; SET x = 1 */", None),
            (b"SELECT 1 -- ; SET x = 1", None),
            (b"SELECT 1 -- \r; SET x = 1", SET),
        ])

    def test_backslash_is_plain_in_standard_strings(self) -> None:
        """In '...' a backslash is a plain character (standard_conforming_strings),
        so the quote after it ends the string and what follows is SQL."""
        self.assertEffects([
            (b"SELECT 'a\\'; SET x = 1; --'", SET),
            (b"SELECT e'a\\'; SET x = 1; --'", None),
        ])

    def test_later_statement(self) -> None:
        """The SET may be any statement of a simple Query, after any mix of
        whitespace, comments and empty statements."""
        self.assertEffects([
            (b"SELECT 1; SET x = 1", SET),
            (b"BEGIN;SET x = 1;COMMIT", SET),
            (b"SELECT 'a;b'; SET x = 1", SET),
            (b"SELECT 1;\n\t  set x = 1", SET),
            (b"SELECT 1; /* why */ SET x = 1", SET),
            (b"SELECT 1;/* a *//* b */SET x = 1", SET),
            (b"SELECT 1; -- why\n  SET x = 1", SET),
            (b"SELECT 1; -- a\n -- b\r\nSET x = 1", SET),
            (b";;; SET x = 1", SET),
            (b"SELECT $$a$$; SET x = 1", SET),
            (b'SELECT "a;b"; SET x = 1', SET),
            (b"SELECT 1 /* a */; SET x = 1", SET),
        ])

    def test_leading_comments_and_case(self) -> None:
        """Comments and whitespace before the first keyword, and keywords in any case."""
        self.assertEffects([
            (b"/* app=web */ SET x = 1", SET),
            (b"/* a /* nested */ b */SET x = 1", SET),
            (b"-- note\nSET x = 1", SET),
            (b"\n\t \r\f\vSET x = 1", SET),
            (b"sEt x = 1", SET),
            (b"Set LoCaL x = 1", None),
            (b"/* SET LOCAL */ SET x = 1", SET),
            (b"-- SET x\nSELECT 1", None),
        ])

    def test_set_config(self) -> None:
        """set_config(name, value, false) is a session SET; with is_local true
        it ends with the transaction."""
        self.assertEffects([
            (b"SELECT set_config('search_path', 'app', false)", SET),
            (b"SELECT SET_CONFIG('a.b', 'c', FALSE)", SET),
            (b"SELECT set_config('a.b', 'c', $3)", SET),
            (b'SELECT "set_config"(\'a.b\', \'c\', false)', SET),
            (b"SELECT set_config /* c */ ('a.b', 'c', false)", SET),
            (b"SELECT set_config('a.b', 'c', true)", None),
            (b"select set_config('a.b', 'c', TRUE), set_config('d.e', 'f', 't')", None),
            (b"SELECT set_config('a.b', lower('X'), true)", None),
            (b"SELECT set_config('a.b', concat('x', 'y'), true)", None),
            (b"SELECT set_config('a.b', concat('x', 'y'), false)", SET),
            (b"SELECT set_config('a.b', 'c', true::boolean)", SET),
            (b"SELECT set_config('a.b', 'c', true), set_config('d.e', 'f', false)", SET),
            (b"SELECT 'set_config(1, 2, false)'", None),
            (b"SELECT current_setting('a.b')", None),
        ])


class OtherLabelTests(EffectCase):
    def test_reset(self) -> None:
        """RESET of a parameter or of all is C{reset}."""
        self.assertEffects([
            (b"RESET ALL", RESET),
            (b"reset search_path", RESET),
            (b"RESET ROLE", RESET),
            (b"RESET SESSION AUTHORIZATION", RESET),
            (b"SELECT 'RESET ALL'", None),
        ])

    def test_prepare(self) -> None:
        """SQL PREPARE is C{prepare}; two-phase commit's PREPARE TRANSACTION is not."""
        self.assertEffects([
            (b"PREPARE q (int) AS SELECT $1", PREPARE),
            (b"prepare q as select 1", PREPARE),
            (b"PREPARE transaction AS SELECT 1", PREPARE),
            (b"PREPARE TRANSACTION 'gid-1'", None),
            (b"prepare transaction $$gid$$", None),
            (b"COMMIT PREPARED 'gid-1'", None),
        ])

    def test_deallocate(self) -> None:
        """DEALLOCATE of one statement or all is C{deallocate}."""
        self.assertEffects([
            (b"DEALLOCATE q", DEALLOCATE),
            (b"DEALLOCATE PREPARE q", DEALLOCATE),
            (b"deallocate all", DEALLOCATE),
            (b"SELECT 1; DEALLOCATE ALL", DEALLOCATE),
        ])

    def test_listen(self) -> None:
        """LISTEN is C{listen}; UNLISTEN and NOTIFY change nothing that lasts."""
        self.assertEffects([
            (b"LISTEN jobs", LISTEN),
            (b'listen "Jobs"', LISTEN),
            (b"UNLISTEN jobs", None),
            (b"UNLISTEN *", None),
            (b"NOTIFY jobs, 'x'", None),
        ])

    def test_cursor_with_hold(self) -> None:
        """DECLARE ... WITH HOLD is C{cursor_with_hold}; without HOLD the cursor ends
        with its transaction."""
        self.assertEffects([
            (b"DECLARE c CURSOR WITH HOLD FOR SELECT 1", CURSOR_WITH_HOLD),
            (b"declare c binary no scroll cursor with hold for select 1", CURSOR_WITH_HOLD),
            (b"DECLARE c CURSOR /* x */ WITH\nHOLD FOR SELECT 1", CURSOR_WITH_HOLD),
            (b"DECLARE c CURSOR FOR SELECT 1", None),
            (b"DECLARE c CURSOR WITHOUT HOLD FOR SELECT 1", None),
            (b"DECLARE c CURSOR FOR WITH hold AS (SELECT 1) SELECT * FROM hold", None),
            (b"DECLARE c SCROLL CURSOR FOR SELECT 'WITH HOLD'", None),
        ])

    def test_temp_table(self) -> None:
        """Temporary tables, sequences and views, by CREATE, SELECT INTO or in
        pg_temp, are C{temp_table}."""
        self.assertEffects([
            (b"CREATE TEMP TABLE t (a int)", TEMP_TABLE),
            (b"CREATE TEMPORARY TABLE t (a int)", TEMP_TABLE),
            (b"create local temp table t (a int)", TEMP_TABLE),
            (b"CREATE GLOBAL TEMPORARY TABLE t (a int)", TEMP_TABLE),
            (b"CREATE TEMP TABLE t AS SELECT 1", TEMP_TABLE),
            (b"CREATE TEMP TABLE t (a int) ON COMMIT PRESERVE ROWS", TEMP_TABLE),
            (b"CREATE TEMP TABLE t (a int) ON COMMIT DELETE ROWS", TEMP_TABLE),
            (b"CREATE TEMP SEQUENCE s", TEMP_TABLE),
            (b"CREATE TEMP VIEW v AS SELECT 1", TEMP_TABLE),
            (b"CREATE OR REPLACE TEMP VIEW v AS SELECT 1", TEMP_TABLE),
            (b"CREATE TEMP RECURSIVE VIEW v (n) AS SELECT 1", TEMP_TABLE),
            (b"CREATE /* c */ TEMP TABLE t (a int)", TEMP_TABLE),
            (b"CREATE -- c\n TEMP TABLE t (a int)", TEMP_TABLE),
            (b"CREATE TABLE pg_temp.t (a int)", TEMP_TABLE),
            (b'CREATE TABLE "pg_temp".t (a int)', TEMP_TABLE),
            (b"CREATE VIEW PG_TEMP.v AS SELECT 1", TEMP_TABLE),
            (b"CREATE TABLE pg_temp_3.t (a int)", TEMP_TABLE),
            (b"SELECT 1 AS a INTO TEMP t", TEMP_TABLE),
            (b"SELECT * INTO TEMPORARY TABLE t FROM s", TEMP_TABLE),
            (b"SELECT * INTO LOCAL TEMP t FROM s", TEMP_TABLE),
            (b"WITH q AS (SELECT 1 AS a) SELECT * INTO TEMP t FROM q", TEMP_TABLE),
            (b"SELECT * INTO pg_temp.t FROM s", TEMP_TABLE),
            (b"SELECT * INTO TEMP _t FROM s", TEMP_TABLE),
            (b'SELECT * INTO TEMP "T" FROM s', TEMP_TABLE),
            (b"SELECT * INTO TEMP TABLE t FROM s", TEMP_TABLE),
            (b"EXPLAIN ANALYZE CREATE TEMP TABLE t AS SELECT 1", TEMP_TABLE),
            (b"EXPLAIN (ANALYZE, BUFFERS) CREATE TEMP TABLE t AS SELECT 1", TEMP_TABLE),
        ])

    def test_not_temp_table(self) -> None:
        """ON COMMIT DROP ends with the transaction; a table named temp, or temp
        as a column, string or identifier, is no temporary table."""
        self.assertEffects([
            (b"CREATE TEMP TABLE t (a int) ON COMMIT DROP", None),
            (b"CREATE TEMP TABLE t ON COMMIT DROP AS SELECT 1", None),
            (b"CREATE TABLE t (a int)", None),
            (b"CREATE TABLE temp (a int)", None),
            (b"CREATE UNLOGGED TABLE t (a int)", None),
            (b"SELECT 1 INTO temp FROM t", None),
            (b"SELECT 1 INTO temp", None),
            (b"SELECT 1 INTO temp UNION SELECT 2", None),
            (b"SELECT 1 INTO t FROM temp", None),
            (b"INSERT INTO temp VALUES (1)", None),
            (b"MERGE INTO temp USING s ON true WHEN MATCHED THEN DO NOTHING", None),
            (b"SELECT temp, temperature, attempts FROM readings", None),
            (b"SELECT 'CREATE TEMP TABLE t (a int)'", None),
            (b'SELECT "pg_temp.t" FROM x', None),
            (b"SELECT * FROM pg_temp.t", None),
            (b"DROP TABLE temp", None),
        ])

    def test_advisory_lock(self) -> None:
        """A call of a session advisory lock function, anywhere in a statement,
        is C{advisory_lock}; the transaction-scoped ones are not."""
        self.assertEffects([
            (b"SELECT pg_advisory_lock(1)", ADVISORY_LOCK),
            (b"SELECT pg_advisory_lock_shared(1, 2)", ADVISORY_LOCK),
            (b"SELECT pg_try_advisory_lock(hashtext('job'))", ADVISORY_LOCK),
            (b"select PG_TRY_ADVISORY_LOCK_SHARED(7)", ADVISORY_LOCK),
            (b"SELECT pg_catalog.pg_advisory_lock(1)", ADVISORY_LOCK),
            (b'SELECT "pg_advisory_lock"(1)', ADVISORY_LOCK),
            (b"SELECT pg_advisory_lock /* c */ (1)", ADVISORY_LOCK),
            (b"WITH x AS (SELECT 1) SELECT pg_advisory_lock(1)", ADVISORY_LOCK),
            (b"SELECT id FROM jobs WHERE pg_try_advisory_lock(id) LIMIT 1", ADVISORY_LOCK),
            (b"SELECT 1; SELECT (SELECT pg_advisory_lock(1))", ADVISORY_LOCK),
            (b"SELECT pg_advisory_xact_lock(1)", None),
            (b"SELECT pg_try_advisory_xact_lock_shared(1)", None),
            (b"SELECT pg_advisory_unlock(1)", None),
            (b"SELECT pg_advisory_unlock_all()", None),
            (b"SELECT 'pg_advisory_lock(1)'", None),
            (b"SELECT 1 /* pg_advisory_lock(1) */", None),
            (b'SELECT "pg_advisory_lock(1)" FROM t', None),
            (b"SELECT $$pg_advisory_lock(1)$$", None),
            (b"SELECT pg_advisory_lock FROM t", None),
        ])

    def test_load_and_discard(self) -> None:
        """LOAD and every DISCARD have their labels."""
        self.assertEffects([
            (b"LOAD 'auto_explain'", LOAD),
            (b"load '$libdir/plugins/x'", LOAD),
            (b"DISCARD ALL", DISCARD),
            (b"DISCARD PLANS", DISCARD),
            (b"DISCARD SEQUENCES", DISCARD),
            (b"discard temp", DISCARD),
            (b"DISCARD TEMPORARY", DISCARD),
        ])

    def test_ordinary(self) -> None:
        """Everyday statements have no label."""
        self.assertEffects([
            (b"SELECT abalance FROM pgbench_accounts WHERE aid = 123;", None),
            (b"BEGIN;", None),
            (b"END;", None),
            (b"COMMIT", None),
            (b"ROLLBACK", None),
            (b"START TRANSACTION ISOLATION LEVEL SERIALIZABLE", None),
            (b"INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) "
             b"VALUES (1, 2, 3, -4, CURRENT_TIMESTAMP);", None),
            (b"DELETE FROM t WHERE id = $1", None),
            (b"SELECT nextval('s')", None),
            (b"", None),
            (b"   ", None),
            (b";", None),
        ])

    def test_first_label_wins(self) -> None:
        """Of several statements with labels, the first one's is returned."""
        self.assertEffects([
            (b"LISTEN a; SET x = 1", LISTEN),
            (b"SET LOCAL x = 1; RESET x; SET y = 2", RESET),
            (b"SELECT pg_advisory_lock(1); DISCARD ALL", ADVISORY_LOCK),
            (b"CREATE TEMP TABLE t AS SELECT pg_advisory_lock(1)", TEMP_TABLE),
        ])

    def test_labels(self) -> None:
        """L{LABELS} is the documented, bounded set."""
        self.assertEqual(sorted(LABELS),
                         sorted(["set", "reset", "prepare", "deallocate", "listen",
                                 "cursor_with_hold", "temp_table", "advisory_lock", "load",
                                 "discard"]))


class LexingTests(EffectCase):
    def test_unterminated(self) -> None:
        """An unterminated string, identifier, dollar quote or comment ends the
        scan: what came before it counts, what comes after it does not."""
        self.assertEffects([
            (b"SET x = 'abc", SET),
            (b"SELECT 1; SET x /* never closed", SET),
            (b"SELECT 'abc; SET x = 1", None),
            (b"SELECT 'abc''; SET x = 1", None),
            (b"SELECT E'abc\\'; SET x = 1", None),
            (b'SELECT "abc; SET x = 1', None),
            (b"SELECT $$abc; SET x = 1", None),
            (b"SELECT $a$abc $$; SET x = 1", None),
            (b"SELECT 1 /* /* */ ; SET x = 1", None),
            (b"SELECT U&'x; SET x", None),
        ])

    def test_comment_rules(self) -> None:
        """Block comments nest, "/*/" opens one, "--" inside a block comment is
        text, and "/*" inside a line comment is text."""
        self.assertEffects([
            (b"/* -- */ SET x = 1", SET),
            (b"-- /*\nSET x = 1", SET),
            (b"/*/ */ SET x = 1", SET),
            (b"SELECT 1 /*/ ; SET x = 1 */ SELECT 2", None),
            (b"SELECT 1 /*/ ; SET x = 1 */ ; SET y = 2", SET),
            (b"SELECT 1 /* a /*/ ; SET x = 1 */ ; SET y = 2 */ SELECT 3", None),
            (b"SELECT 1 /* a /*/ ; SET x = 1 */ */ ; SET y = 2", SET),
            (b"/* /* */ */ SET x = 1", SET),
            (b"/* /* */ SET x = 1", None),
            (b"SELECT 1 +/* x */ 2; SET x = 1", SET),
            (b"SELECT 2 --1\n; SET x = 1", SET),
        ])

    def test_dollar_quotes(self) -> None:
        """Dollar quotes end at the same tag, case and all; $1 is a parameter;
        a $ inside an identifier starts nothing."""
        self.assertEffects([
            (b"SELECT $Tag$ $tag$; SET x = 1 $Tag$", None),
            (b"SELECT $Tag$ x $Tag$; SET x = 1", SET),
            (b"SELECT $1; SET x = 1", SET),
            (b"SELECT a$b$; SET x = 1", SET),
            (b"SELECT $_x1$ ; $_x1$; SET x = 1", SET),
        ])

    def test_statements(self) -> None:
        """The lexer's tokens: words lowercased, strings marked, identifiers and
        parameters as written, comments and empty statements left out."""
        self.assertEqual(
            list(_statements(b"SELECT $a$x$a$, E'\\'', U&'x', \"A\"\"b\", 1e5, $1 -- c\n;;"
                             b" /* c */ SET x")),
            [[b"select", b"'$a$x$a$", b",", b"'E'\\''", b",", b"'U&'x'", b",",
              b'"A""b"', b",", b"1e5", b",", b"$1"],
             [b"set", b"x"]])

    def test_fast_path(self) -> None:
        """Ordinary statements, long ones included, stop at the filter."""
        orm = (b"SELECT " + b", ".join(b'"shop_order"."field_%02d"' % i for i in range(62))
               + b' FROM "shop_order" WHERE "shop_order"."status" = \'paid\' ORDER BY 1 '
               b"LIMIT 21")
        for sql in [b"SELECT abalance FROM pgbench_accounts WHERE aid = 123;",
                    b"UPDATE pgbench_accounts SET abalance = abalance + -1234 WHERE aid = 5;",
                    b"BEGIN;", b"END;", orm,
                    b"SELECT temperature, attempts, summary, comment FROM t -- note",
                    b"SELECT my_config FROM settings_log"]:
            self.assertFalse(_may_outlive(_fold(sql)), sql)


class DeallocatesAllTests(SynchronousTestCase):
    def test_all(self) -> None:
        """DEALLOCATE [PREPARE] ALL and DISCARD ALL, as any statement, drop every
        prepared statement."""
        for sql in [b"DEALLOCATE ALL", b"deallocate prepare all", b"DISCARD ALL",
                    b"SELECT 1; DISCARD ALL", b"/* c */ discard\nall;",
                    b"SET x = 1; DEALLOCATE ALL; SELECT 1"]:
            self.assertTrue(deallocates_all(sql), sql)

    def test_not_all(self) -> None:
        """One statement, other DISCARDs, and ALL in strings or comments do not."""
        for sql in [b"DEALLOCATE q", b"DEALLOCATE PREPARE q", b'DEALLOCATE "all"',
                    b"DISCARD PLANS", b"DISCARD TEMP", b"DISCARD SEQUENCES",
                    b"SELECT 'DISCARD ALL'", b"-- DEALLOCATE ALL", b"SELECT 1",
                    b"UPDATE t SET discard = 'all'", b""]:
            self.assertFalse(deallocates_all(sql), sql)


# Statements with known labels, as tokens: the property tests put whitespace
# and comments between the tokens and change their case.
ATOMS: List[Tuple[List[bytes], Optional[str]]] = [
    ([b"SET", b"x", b"=", b"1"], SET),
    ([b"SET", b"SESSION", b"x", b"TO", b"'y'"], SET),
    ([b"SET", b"LOCAL", b"x", b"=", b"1"], None),
    ([b"SET", b"TRANSACTION", b"READ", b"ONLY"], None),
    ([b"SET", b"SESSION", b"CHARACTERISTICS", b"AS", b"TRANSACTION", b"READ", b"ONLY"], SET),
    ([b"SET", b"CONSTRAINTS", b"ALL", b"DEFERRED"], None),
    ([b"RESET", b"ALL"], RESET),
    ([b"PREPARE", b"p", b"AS", b"SELECT", b"1"], PREPARE),
    ([b"PREPARE", b"TRANSACTION", b"'g'"], None),
    ([b"DEALLOCATE", b"p"], DEALLOCATE),
    ([b"LISTEN", b"ch"], LISTEN),
    ([b"UNLISTEN", b"ch"], None),
    ([b"DECLARE", b"c", b"CURSOR", b"WITH", b"HOLD", b"FOR", b"SELECT", b"1"], CURSOR_WITH_HOLD),
    ([b"DECLARE", b"c", b"CURSOR", b"FOR", b"SELECT", b"1"], None),
    ([b"CREATE", b"TEMP", b"TABLE", b"t", b"(", b"a", b"int", b")"], TEMP_TABLE),
    ([b"CREATE", b"TEMPORARY", b"TABLE", b"t", b"(", b"a", b"int", b")", b"ON", b"COMMIT",
      b"DROP"], None),
    ([b"CREATE", b"TABLE", b"temp", b"(", b"a", b"int", b")"], None),
    ([b"SELECT", b"1", b"INTO", b"TEMP", b"t"], TEMP_TABLE),
    ([b"INSERT", b"INTO", b"temp", b"VALUES", b"(", b"1", b")"], None),
    ([b"SELECT", b"pg_advisory_lock", b"(", b"1", b")"], ADVISORY_LOCK),
    ([b"SELECT", b"pg_advisory_xact_lock", b"(", b"1", b")"], None),
    ([b"SELECT", b"set_config", b"(", b"'a'", b",", b"'b'", b",", b"false", b")"], SET),
    ([b"SELECT", b"set_config", b"(", b"'a'", b",", b"'b'", b",", b"true", b")"], None),
    ([b"LOAD", b"'x'"], LOAD),
    ([b"DISCARD", b"ALL"], DISCARD),
    ([b"SELECT", b"1"], None),
    ([b"UPDATE", b"t", b"SET", b"a", b"=", b"1"], None),
    ([b"BEGIN"], None),
    ([b"COMMIT"], None),
]

# What may stand between two tokens.
GAPS = [b" ", b"\n", b"\t", b"  \r\n ", b"/* c */", b" /* a /* b */ c */ ", b"-- c\n",
        b" --\r", b"/**/"]


def hide(sql: bytes) -> List[bytes]:
    """C{sql} as text no statement can be read from: in each kind of string,
    identifier and comment."""
    return [b"'" + sql.replace(b"'", b"''") + b"'",
            b"E'" + sql.replace(b"\\", b"\\\\").replace(b"'", b"\\'") + b"'",
            b"$q$" + sql + b"$q$",
            b'"' + sql.replace(b'"', b'""') + b'"',
            b"/* " + sql + b" */",
            b"-- " + sql.replace(b"\n", b" ").replace(b"\r", b" ") + b"\n"]


@st.composite
def written(draw: st.DrawFn, tokens: List[bytes]) -> bytes:
    """C{tokens} with gaps between them and keywords in random case."""
    out = []
    for index, token in enumerate(tokens):
        if index:
            out.append(draw(st.sampled_from(GAPS)))
        if token[:1].isalpha():
            token = bytes(draw(st.sampled_from([c, c ^ 0x20])) if chr(c).isalpha() else c
                          for c in token)
        out.append(token)
    return b"".join(out)


@st.composite
def scripts(draw: st.DrawFn) -> Tuple[bytes, Optional[str]]:
    """Several statements with known labels joined by ';' (and gaps), and the
    label expected of the whole: the first statement's that has one."""
    atoms = draw(st.lists(st.sampled_from(ATOMS), min_size=1, max_size=5))
    parts = [draw(st.sampled_from([b"", b" ", b"/* x */", b"-- x\n"]))]
    expected: Optional[str] = None
    for tokens, label in atoms:
        text = draw(written(tokens))
        if draw(st.booleans()) and tokens[0] not in (b"SET", b"RESET"):
            # The same statement hidden inside a SELECT's literal or a comment.
            text = b"SELECT 1, " + draw(st.sampled_from(hide(text)))
            label = None
        if expected is None:
            expected = label
        parts.append(text)
        parts.append(draw(st.sampled_from([b";", b" ;", b";\n", b"; /* y */ ", b";;"])))
    return b"".join(parts), expected


FRAGMENTS = [b"SET", b"set", b"LOCAL", b"TRANSACTION", b"SESSION", b"RESET", b"PREPARE",
             b"DEALLOCATE", b"ALL", b"DISCARD", b"LISTEN", b"LOAD", b"DECLARE", b"CURSOR",
             b"WITH", b"HOLD", b"FOR", b"CREATE", b"TEMP", b"temporary", b"TABLE", b"INTO",
             b"INSERT", b"SELECT", b"ON COMMIT DROP", b"pg_temp", b".", b"pg_advisory_lock",
             b"pg_try_advisory_lock_shared", b"set_config", b"true", b"false", b"EXPLAIN",
             b"x", b"1", b"$1", b"(", b")", b",", b";", b" ", b"\n", b"\r", b"\t", b"'", b"''",
             b'"', b'""', b"E'", b"\\", b"U&", b"$$", b"$a$", b"$A$", b"/*", b"*/", b"--",
             b"-", b"*", b"/", b"m", b"\x00", b"\xff", b"\xc3\xa9"]


class PropertyTests(SynchronousTestCase):
    @PROPERTY
    @given(st.binary(max_size=400))
    def test_any_bytes(self, sql: bytes) -> None:
        """Any bytes: no exception, a documented label or None, and the filter
        lets through whatever the lexer labels."""
        label = session_effect(sql)
        self.assertIn(label, LABELS + (None,))
        self.assertEqual(label, lexed_effect(sql))
        self.assertIsInstance(deallocates_all(sql), bool)

    @PROPERTY
    @given(st.lists(st.sampled_from(FRAGMENTS), max_size=40))
    def test_fragments(self, fragments: List[bytes]) -> None:
        """Any interleaving of SQL fragments (quotes, comments, keywords, ';'):
        no exception, a documented label or None, the filter and the lexer
        agree, and a query that deallocates all has a label."""
        sql = b"".join(fragments)
        label = session_effect(sql)
        self.assertIn(label, LABELS + (None,))
        self.assertEqual(label, lexed_effect(sql))
        if deallocates_all(sql):
            self.assertIn(label, LABELS)

    @PROPERTY
    @given(scripts())
    def test_scripts(self, script: Tuple[bytes, Optional[str]]) -> None:
        """Statements with known labels, in any case, with whitespace and
        comments anywhere between their tokens, some hidden in strings,
        identifiers or comments: the first label is found."""
        sql, expected = script
        self.assertEqual(session_effect(sql), expected, sql)


class ResettingTests(SynchronousTestCase):
    def test_ignore(self) -> None:
        """asyncpg's reset query takes state away; a SET after it still counts."""
        reset = b"SELECT pg_advisory_unlock_all();\nCLOSE ALL;\nUNLISTEN *;\nRESET ALL;"
        self.assertEqual(session_effect(reset), "reset")
        self.assertIsNone(session_effect(reset, ignore=("reset",)))
        self.assertEqual(session_effect(b"RESET ALL; SET x = 1", ignore=("reset",)), "set")

    def test_deallocated(self) -> None:
        from poolproxy.codecs.postgres_sql import deallocated
        self.assertEqual(deallocated(b"DEALLOCATE _pg3_0"), b"_pg3_0")
        self.assertEqual(deallocated(b"deallocate prepare \"A\"\"b\";"), b'A"b')
        for sql in (b"DEALLOCATE ALL", b"DEALLOCATE a; SELECT 1", b"SELECT 'DEALLOCATE a'",
                    b"DEALLOCATE", b"-- DEALLOCATE a"):
            self.assertIsNone(deallocated(sql), sql)
