"""
What in a PostgreSQL query outlives its transaction: a light SQL lexer.

In transaction pooling a client's server connection goes back to the pool
when its transaction ends.  A statement whose effect outlives the transaction
(a session SET, LISTEN, a temporary table, a session advisory lock...) would
leave that state on the connection for the next client, so the proxy pins
the client that sends one to its server connection for the rest of its
session.  L{session_effect} names the first such statement of a query (a
simple Query's string, or a Parse's) with a label from L{LABELS};
L{deallocates_all} says whether the query drops every prepared statement of
the connection (C{DEALLOCATE ALL}, C{DISCARD ALL}).

This runs on every query, so it is two steps:

  - a filter (L{_FILTER}): one regular-expression search over the text,
    ASCII-lowercased, for every place a label could start: one of
    L{_OPENING_WORDS} at the start of a statement (after the text's start,
    a C{;}, whitespace, a block comment or a line comment), the word TEMP or
    TEMPORARY after CREATE, REPLACE, GLOBAL, LOCAL or INTO, and C{pg_temp},
    C{advisory_lock} or C{set_config} anywhere.  Ordinary statements stop
    there, in about half a microsecond for a short one on CPython
    (docs/performance.md).  What passes the filter is a superset of what the
    lexer labels (a string holding "; SET" passes); a property test holds
    the two together.
  - the lexer (L{_statements}), with PostgreSQL's lexical rules: keywords in
    any case; C{--} and nested C{/* */} comments; C{'...'} (quote doubled),
    C{E'...'} (backslash escapes), C{U&'...'} and dollar-quoted strings;
    C{"..."} identifiers; C{;} between statements outside all of those.
    Each statement's tokens then go through the rules below.

Labels, per statement:
  - C{set}: C{SET} (C{SESSION}, C{ROLE}, C{SESSION AUTHORIZATION},
    C{SESSION CHARACTERISTICS AS TRANSACTION} ...), but not C{SET LOCAL},
    C{SET TRANSACTION} or C{SET CONSTRAINTS}; and a call of C{set_config}
    whose third argument is not literally true (C{set_config(name, value,
    false)} is a session SET).
  - C{reset}, C{deallocate}, C{listen}, C{load}, C{discard}: the statement of
    that name.  C{UNLISTEN} is harmless.
  - C{prepare}: SQL C{PREPARE name AS ...}, not C{PREPARE TRANSACTION 'gid'}.
  - C{cursor_with_hold}: C{DECLARE ... CURSOR WITH HOLD FOR ...}; a cursor
    without HOLD ends with its transaction.
  - C{temp_table}: C{CREATE [OR REPLACE] [GLOBAL|LOCAL] TEMP|TEMPORARY
    TABLE|SEQUENCE|VIEW} (after C{EXPLAIN} too: C{EXPLAIN ANALYZE} runs it),
    C{SELECT ... INTO [GLOBAL|LOCAL] TEMP name}, and anything created in
    C{pg_temp}; but not a temporary table C{ON COMMIT DROP}, which ends with
    its transaction (PgBouncer's feature map supports those).
  - C{advisory_lock}: a call of C{pg_advisory_lock}, C{pg_try_advisory_lock}
    or their C{_shared} forms anywhere in the statement; the C{_xact_} forms
    end with the transaction.

Where the text is not what PostgreSQL would run, the answer is the careful
one: an unterminated string or comment ends the scan with what was found
before it, and a statement the server would reject may still get a label
(pinning a client without need costs only pooling, never correctness).
What no lexer sees is not found: a SET inside a function, a DO block or a
procedure.  Strings are read with C{standard_conforming_strings} on, the
default since PostgreSQL 9.1 (a backslash in C{'...'} is a plain character).

Pure: bytes in, a label out; never raises.
"""

from __future__ import annotations

import re
from typing import Callable, Container, Dict, Iterator, List, Optional, Sequence, Tuple

SET = "set"
RESET = "reset"
PREPARE = "prepare"
DEALLOCATE = "deallocate"
LISTEN = "listen"
CURSOR_WITH_HOLD = "cursor_with_hold"
TEMP_TABLE = "temp_table"
ADVISORY_LOCK = "advisory_lock"
LOAD = "load"
DISCARD = "discard"

#: Every label L{session_effect} returns: a bounded set, fit for a metric label.
LABELS: Tuple[str, ...] = (SET, RESET, PREPARE, DEALLOCATE, LISTEN, CURSOR_WITH_HOLD,
                           TEMP_TABLE, ADVISORY_LOCK, LOAD, DISCARD)

#: The first words of the statements that may outlive their transaction.
_OPENING_WORDS = (b"set", b"reset", b"prepare", b"deallocate", b"listen", b"declare",
                  b"load", b"discard")

# PostgreSQL's whitespace, and what continues an identifier (lowercased).
_SPACE = rb"[ \t\n\r\f\v]"
_NOT_IDENT = rb"(?![a-z0-9_$\x80-\xff])"

# The filter.  re looks for one literal byte in a plain loop, but for any of
# a set of bytes at the cost of a call per byte (five times slower), and
# each place it stops costs more again.  So the text is translated first
# (_FOLD): ASCII lowercased, and the bytes a label can be anchored on
# (_ANCHORS) all made "\0"; the pattern looks for "\0" and each branch checks
# what surrounds it.  The anchors are bytes the places a label can start hold
# and ordinary SQL seldom does; a branch may fire on another anchor than its
# own (";set" and "mset" read the same), which lets through more, never less.
_ANCHORS = b";*-myg"


def _fold_table() -> bytes:
    table = bytearray(bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ",
                                      b"abcdefghijklmnopqrstuvwxyz"))
    table[0] = 1  # a NUL byte (never in a query) does not pass for an anchor
    for index, byte in enumerate(table):
        if byte in _ANCHORS:
            table[index] = 0
    return bytes(table)


_FOLD = _fold_table()


def _folded(word: bytes) -> bytes:
    return re.escape(word.translate(_FOLD))


_OPENING_WORD = rb"(?:" + b"|".join(map(_folded, _OPENING_WORDS)) + rb")" + _NOT_IDENT
assert b"\0" not in _OPENING_WORD  # no anchor in an opening word: they are read as they are

# What follows the "\0" of (b";" + sql).translate(_FOLD) where a label can
# start.  The ";" put before the text makes its own start one more ";".
# Each branch begins with a literal byte or a set, which re checks before it
# tries the branch.
_FILTER = re.compile(rb"\0(?:" + b"|".join([
    # An opening word right after ";" (or, rarely, after another anchor).
    *(_folded(word) + _NOT_IDENT for word in _OPENING_WORDS),
    # ... after whitespace.
    _SPACE + rb"+" + _OPENING_WORD,
    # ... after a block comment ("*/").
    rb"/" + _SPACE + rb"*" + _OPENING_WORD,
    # ... on a line after a line comment ("--"): only a comment other than a
    # block comment can stand between a ";" and an opening word.
    rb"\0[^\n\r]*[\n\r]" + _SPACE + rb"*" + _OPENING_WORD,
    # pg_temp, anchored on its "m".
    rb"p(?<=" + _folded(b"pg_temp") + rb")",
    # TEMP or TEMPORARY as a word (whether it makes something temporary:
    # _temp_in_context), anchored on its "m".
    rb"p(?<=" + _folded(b"temp") + rb")(?<![a-z0-9_\x80-\xff]" + _folded(b"temp")
    + rb")(?P<temp>)(?:" + _folded(b"orary") + rb")?" + _NOT_IDENT,
    # advisory_lock, anchored on its "y".
    rb"_lock(?<=" + _folded(b"advisory_lock") + rb")",
    # set_config, anchored on its "g", then what may come before its "(":
    # whitespace, a comment, the quote of "set_config".
    rb"[(\s/\"\0](?<=" + _folded(b"set_config") + rb".)",
]) + rb")", re.S)

#: What TEMP follows when it makes a temporary object (CREATE, CREATE OR
#: REPLACE, GLOBAL/LOCAL TEMP, SELECT INTO TEMP), or a comment it may follow.
_BEFORE_TEMP = tuple(word.translate(_FOLD)
                     for word in (b"create", b"replace", b"global", b"local", b"into", b"*/"))


def _temp_in_context(text: bytes, start: int) -> bool:
    """Whether the TEMP word at C{start} of the folded C{text} follows a word that
    makes it a keyword, or may (a line comment, "--", is somewhere)."""
    return (text[:start].rstrip(b" \t\n\r\f\v").endswith(_BEFORE_TEMP)
            or text.find(b"\0\0") >= 0)


def _fold(sql: bytes) -> bytes:
    """The text the filter reads: C{sql} after a C{;}, translated by L{_FOLD}."""
    return (b";" + sql).translate(_FOLD)


def _may_outlive(text: bytes) -> bool:
    """Whether the folded C{text} may hold a statement with a label."""
    found = _FILTER.search(text)
    while found is not None:
        # Only the TEMP branch has a group: the word's "m" is 2 bytes in.
        if found.lastgroup is None or _temp_in_context(text, found.start() - 2):
            return True
        found = _FILTER.search(text, found.end())
    return False


# One token, after any whitespace.  Strings end at a quote not followed by
# another (a doubled quote is part of the string), so an unterminated string
# is never read as a shorter one: it fails, and "unterminated" matches.
_DOLLAR_TAG = rb"\$(?:[a-zA-Z_\x80-\xff][a-zA-Z0-9_\x80-\xff]*)?\$"
_TOKEN = re.compile(
    _SPACE + rb"*(?:"
    # Words first, the most common token; not the E of E'...' or the U of U&'...'.
    rb"(?P<word>(?![eE]'|[uU]&['\"])[a-zA-Z_\x80-\xff][a-zA-Z0-9_$\x80-\xff]*)"
    rb"|(?P<string>"
    rb"'[^']*(?:''[^']*)*'(?!')"
    rb"|[eE]'[^'\\]*(?:(?:\\.|'')[^'\\]*)*'(?!')"
    rb"|[uU]&'[^']*(?:''[^']*)*'(?!')"
    rb"|\$(?P<tag>(?:[a-zA-Z_\x80-\xff][a-zA-Z0-9_\x80-\xff]*)?)\$.*?\$(?P=tag)\$)"
    rb"|(?P<quoted>\"[^\"]*(?:\"\"[^\"]*)*\"(?!\")|[uU]&\"[^\"]*(?:\"\"[^\"]*)*\"(?!\"))"
    rb"|(?P<comment>--[^\n\r]*)"
    rb"|(?P<block>/\*)"
    rb"|(?P<unterminated>['\"]|[eE]'|[uU]&['\"]|" + _DOLLAR_TAG + rb")"
    # Numbers and $1 parameters, with what would stick to them (1e5, 0x1F).
    rb"|(?P<number>[0-9][a-zA-Z0-9_$\x80-\xff]*|\$[0-9][a-zA-Z0-9_$\x80-\xff]*)"
    rb"|(?P<end>\Z)"
    rb"|(?P<other>.)"
    rb")", re.S)


def _comment_end(sql: bytes, pos: int) -> int:
    """Where the block comment whose body starts at C{pos} ends (comments
    nest), or -1 if it does not."""
    depth = 1
    while True:
        close = sql.find(b"*/", pos)
        if close < 0:
            return -1
        # "/*/" opens: an opener overlapping the closer comes first.
        opened = sql.find(b"/*", pos, close + 1)
        if opened >= 0:
            depth += 1
            pos = opened + 2
        else:
            depth -= 1
            pos = close + 2
            if depth == 0:
                return pos


def _statements(sql: bytes) -> Iterator[List[bytes]]:
    """The tokens of each statement of C{sql}, comments left out: words
    lowercased, quoted identifiers as written (C{b'"x"'}), strings as C{b"'"}
    and their text (C{b"''x'"}, C{b"'$$x$$"}), other characters one by one.
    Stops at an unterminated string, identifier or comment."""
    tokens: List[bytes] = []
    pos = 0
    while pos >= 0:
        restart = -1
        for found in _TOKEN.finditer(sql, pos):
            kind = found.lastgroup
            if kind == "word":
                tokens.append(found.group(kind).lower())
            elif kind == "other":
                token = found.group(kind)
                if token != b";":
                    tokens.append(token)
                elif tokens:
                    yield tokens
                    tokens = []
            elif kind == "string":
                tokens.append(b"'" + found.group(kind))
            elif kind == "quoted" or kind == "number":
                tokens.append(found.group(kind))
            elif kind == "block":
                # Comments nest, which no regular expression follows.
                restart = _comment_end(sql, found.end())
                break
            elif kind != "comment":  # the end, or an unterminated string
                break
        pos = restart
    if tokens:
        yield tokens


def _at(tokens: Sequence[bytes], index: int) -> bytes:
    """The token at C{index}, or C{b""} past the end."""
    return tokens[index] if index < len(tokens) else b""


def _set(tokens: List[bytes]) -> Optional[str]:
    # SET local.x = 1 sets the session's "local.x", a parameter of that name.
    if _at(tokens, 1) in (b"local", b"transaction", b"constraints") and _at(tokens, 2) != b".":
        return None
    return SET


def _prepare(tokens: List[bytes]) -> Optional[str]:
    # Two-phase commit's PREPARE TRANSACTION 'gid' ends the transaction; a
    # statement may itself be named "transaction" (PREPARE transaction AS ...).
    if _at(tokens, 1) == b"transaction" and _at(tokens, 2)[:1] == b"'":
        return None
    return PREPARE


def _declare(tokens: List[bytes]) -> Optional[str]:
    # DECLARE name [options] CURSOR [WITH HOLD | WITHOUT HOLD] FOR query:
    # only up to FOR, since the query may say "WITH hold AS (...)".
    for index in range(1, len(tokens) - 1):
        token = tokens[index]
        if token == b"for":
            break
        if token == b"with" and tokens[index + 1] == b"hold":
            return CURSOR_WITH_HOLD
    return None


def _is_temp_schema(token: bytes) -> bool:
    """pg_temp, the session's own temporary schema (pg_temp_3: by its full name)."""
    return (token == b"pg_temp" or token == b'"pg_temp"'
            or (token[:8] == b"pg_temp_" and token[8:].isdigit()))


def _on_commit_drop(tokens: List[bytes]) -> bool:
    return any(token == b"on" and tokens[index + 1:index + 3] == [b"commit", b"drop"]
               for index, token in enumerate(tokens))


def _create(tokens: List[bytes]) -> Optional[str]:
    # CREATE [OR REPLACE] [GLOBAL | LOCAL] TEMP|TEMPORARY TABLE|SEQUENCE|VIEW|RECURSIVE VIEW
    index = 3 if tokens[1:3] == [b"or", b"replace"] else 1
    if _at(tokens, index) in (b"global", b"local"):
        index += 1
    temporary = (_at(tokens, index) in (b"temp", b"temporary")
                 and _at(tokens, index + 1) in (b"table", b"sequence", b"view", b"recursive"))
    if not temporary:
        # CREATE TABLE pg_temp.t, CREATE VIEW pg_temp.v...: temporary too.
        temporary = any(_is_temp_schema(token) and _at(tokens, at + 1) == b"."
                        for at, token in enumerate(tokens))
    if temporary and not _on_commit_drop(tokens):
        return TEMP_TABLE
    return None


def _explain(tokens: List[bytes]) -> Optional[str]:
    # EXPLAIN [(options)] | [ANALYZE] [VERBOSE] statement: EXPLAIN ANALYZE runs
    # a CREATE TABLE AS (SELECT INTO is found wherever it is).
    index = 1
    if _at(tokens, 1) == b"(":
        index = _closing(tokens, 2) + 1
    while _at(tokens, index) in (b"analyze", b"analyse", b"verbose"):
        index += 1
    if _at(tokens, index) == b"create":
        return _create(tokens[index:])
    return None


def _closing(tokens: List[bytes], index: int) -> int:
    """The index of the C{)} closing the C{(} before C{index} (C{len(tokens)} if none)."""
    depth = 0
    for index in range(index, len(tokens)):
        token = tokens[index]
        if token == b"(":
            depth += 1
        elif token == b")":
            if depth == 0:
                return index
            depth -= 1
    return len(tokens)


def _label(label: str) -> Callable[[List[bytes]], Optional[str]]:
    return lambda tokens: label


#: What a statement's first word decides.
_BY_FIRST_WORD: Dict[bytes, Callable[[List[bytes]], Optional[str]]] = {
    b"set": _set,
    b"reset": _label(RESET),
    b"prepare": _prepare,
    b"deallocate": _label(DEALLOCATE),
    b"listen": _label(LISTEN),
    b"declare": _declare,
    b"load": _label(LOAD),
    b"discard": _label(DISCARD),
    b"create": _create,
    b"explain": _explain,
}

#: Session advisory locks: held until unlocked or the session ends.
_SESSION_LOCKS = frozenset(
    form for name in (b"pg_advisory_lock", b"pg_advisory_lock_shared",
                      b"pg_try_advisory_lock", b"pg_try_advisory_lock_shared")
    for form in (name, b'"' + name + b'"'))
_SET_CONFIG = frozenset((b"set_config", b'"set_config"'))

#: Tokens that, anywhere in a statement, may make it outlive its transaction.
_ANYWHERE = _SESSION_LOCKS | _SET_CONFIG | {b"into"}

#: set_config's is_local, when it is true: the word, or a string the server
#: reads as true (a string token is "'" and the literal: b"''t'").
_TRUE = frozenset([b"true"] + [b"''" + word + b"'"
                               for word in (b"t", b"true", b"on", b"yes", b"y", b"1")])

#: How a word or a quoted identifier begins.
_NAME_STARTS = frozenset(bytes([byte]) for byte in
                         b'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_"'
                         + bytes(range(0x80, 0x100)))

#: Words after SELECT ... INTO TEMP that say TEMP was a table's name, not a keyword.
_CLAUSES = frozenset((b"from", b"where", b"group", b"having", b"window", b"order", b"limit",
                      b"offset", b"fetch", b"for", b"union", b"intersect", b"except"))


def _set_config_is_local(tokens: List[bytes], index: int) -> bool:
    """Whether the set_config call whose C{(} is at C{index} has a literal true is_local."""
    arguments: List[List[bytes]] = [[]]
    depth = 0
    for token in tokens[index + 1:]:
        if token == b"(" or token == b"[":
            depth += 1
        elif token == b")" or token == b"]":
            if depth == 0:
                break
            depth -= 1
        elif token == b"," and depth == 0:
            arguments.append([])
            continue
        arguments[-1].append(token)
    return (len(arguments) == 3 and len(arguments[2]) == 1
            and arguments[2][0].lower() in _TRUE)


def _into_temp(tokens: List[bytes], index: int) -> bool:
    """Whether the INTO at C{index} creates a temporary table (SELECT ... INTO TEMP t)."""
    if index and tokens[index - 1] in (b"insert", b"merge"):
        return False
    index += 1
    if _at(tokens, index) in (b"global", b"local"):
        index += 1
    if _at(tokens, index) in (b"temp", b"temporary"):
        index += 1
        if _at(tokens, index) == b"table":
            index += 1
        # "SELECT 1 INTO temp FROM t" makes a table named temp.
        name = _at(tokens, index)
        return name[:1] in _NAME_STARTS and name not in _CLAUSES
    if _at(tokens, index) == b"table":
        index += 1
    return _is_temp_schema(_at(tokens, index)) and _at(tokens, index + 1) == b"."


def _anywhere(tokens: List[bytes]) -> Optional[str]:
    """Session locks, session set_config and SELECT INTO TEMP, wherever they are."""
    for index, token in enumerate(tokens):
        if token not in _ANYWHERE:
            continue
        if token == b"into":
            if _into_temp(tokens, index):
                return TEMP_TABLE
        elif _at(tokens, index + 1) == b"(":
            if token in _SESSION_LOCKS:
                return ADVISORY_LOCK
            if not _set_config_is_local(tokens, index + 1):
                return SET
    return None


def _statement_effect(tokens: List[bytes]) -> Optional[str]:
    opening = _BY_FIRST_WORD.get(tokens[0])
    if opening is not None:
        label = opening(tokens)
        if label is not None:
            return label
    if _ANYWHERE.isdisjoint(tokens):
        return None
    return _anywhere(tokens)


def session_effect(sql: bytes, ignore: Container[str] = ()) -> Optional[str]:
    """
    The first statement of C{sql} (a simple-Query string: may hold several
    statements separated by C{;}) whose effect outlives its transaction, as
    a short label from L{LABELS} not in C{ignore}, or C{None}.
    """
    text = (b";" + sql).translate(_FOLD)
    # The common case first, inline: a call would cost a tenth of it.
    if _FILTER.search(text) is None or not _may_outlive(text):
        return None
    for tokens in _statements(sql):
        label = _statement_effect(tokens)
        if label is not None and label not in ignore:
            return label
    return None


def deallocated(sql: bytes) -> Optional[bytes]:
    """
    The name C{sql} deallocates, if it is one statement C{DEALLOCATE
    [PREPARE] name} (drivers deallocate their protocol-level statements
    so: psycopg), else L{None}.
    """
    if b";" in sql.rstrip().rstrip(b";") or not _may_outlive(_fold(sql)):
        return None
    for tokens in _statements(sql):
        if tokens[0] != b"deallocate":
            return None
        rest = tokens[2:] if tokens[1:2] == [b"prepare"] else tokens[1:]
        if len(rest) != 1 or rest[0] == b"all":
            return None
        name = rest[0]
        if name[:1] == b'"':
            return name[1:-1].replace(b'""', b'"')
        return name if name[:1].isalpha() or name[:1] == b"_" else None
    return None


def deallocates_all(sql: bytes) -> bool:
    """
    Whether C{sql} holds C{DEALLOCATE [PREPARE] ALL} or C{DISCARD ALL} as a
    statement: the server connection then has no prepared statement left.
    Only a query L{session_effect} gives a label can (both statements have
    one), so a caller asks this only of those.
    """
    if not _may_outlive(_fold(sql)):
        return False
    for tokens in _statements(sql):
        first = tokens[0]
        if first == b"deallocate":
            named = tokens[2:3] if tokens[1:2] == [b"prepare"] else tokens[1:2]
            if named == [b"all"]:
                return True
        elif first == b"discard" and tokens[1:2] == [b"all"]:
            return True
    return False
