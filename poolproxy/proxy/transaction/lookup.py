"""
auth_query: looking up on the server a user who is not in the users file.

As PgBouncer's C{auth_user}/C{auth_query}: the proxy runs C{auth_query}
on a server connection logged in as C{auth_user} to the client's
database, leased from that (database, auth_user)'s pool like any other
(L{KeyedPools}), with the user name as its one parameter (C{$1}, sent in
a Bind: never put into the SQL text), and takes the row's secret (a SCRAM
secret or an md5 hash, as C{pg_authid.rolpassword} holds them) to
authenticate the client with, and, for SCRAM, to log into the server as
the client by pass-through.

Nothing is cached: every login of such a user runs the query, so a
password changed, a role dropped or expired (C{rolvaliduntil}) on the
server counts from the next login, as it does for a client of the server
itself, and user names a client makes up cost no memory.  A pooled
connection makes the query cheap (one round trip); logins of one (database,
user) under way at the same time share one query (a client pool that
starts opens its connections together).

A lookup is bounded by C{timeout}, waiting for the auth_user's pool,
connecting and logging in included.  Whatever fails (no server, the
auth_user's login refused, the query's error, a malformed row, the
timeout) fails the client's authentication, and is logged at most once
per interval; a server connection left in the middle of the query is
closed, never reused.
"""

from __future__ import annotations

import struct
from typing import Any, Callable, Dict, List, Optional, Tuple

from twisted.internet.defer import CancelledError
from twisted.logger import Logger
from twisted.python.failure import Failure

from poolproxy.codecs import postgres as pg
from poolproxy.codecs.postgres_auth import Credential
from poolproxy.codecs.postgres_replies import BIND, EXECUTE, PARSE, SYNC
from poolproxy.proxy.transaction.server import KeyedPool, KeyedPools, PoolKey, ServerConnection
from poolproxy.util.throttled import ThrottledLog

#: Told the outcome: C{(credential, None)} found (a credential that no
#: password matches if the row's password is NULL), C{(None, None)} no such
#: user, C{(None, why)} the lookup failed.
Done = Callable[[Optional[Credential], Optional[str]], None]

_INT16 = struct.Struct("!h")
_INT32 = struct.Struct("!i")


def lookup_messages(query: bytes, user: bytes) -> bytes:
    """
    Parse, Bind (C{user} as the text value of C{$1}), Execute and Sync of
    C{query} on the unnamed statement and portal.
    """
    parse = pg.message(b"P", b"\0" + query + b"\0" + _INT16.pack(0))
    bind = pg.message(b"B", b"\0\0" + _INT16.pack(0) + _INT16.pack(1)
                      + _INT32.pack(len(user)) + user + _INT16.pack(0))
    execute = pg.message(b"E", b"\0" + _INT32.pack(0))
    return parse + bind + execute + pg.SYNC


def data_row(body: bytes) -> List[Optional[bytes]]:
    """
    The values of a DataRow (L{None} for NULL).

    @raise ValueError: a malformed row.
    """
    try:
        (count,) = _INT16.unpack_from(body)
        pos = 2
        values: List[Optional[bytes]] = []
        for _ in range(count):
            (length,) = _INT32.unpack_from(body, pos)
            pos += 4
            if length < 0:
                values.append(None)
                continue
            if pos + length > len(body):
                raise ValueError("a value runs past the end of the row")
            values.append(body[pos:pos + length])
            pos += length
    except struct.error:
        raise ValueError("a truncated row") from None
    if pos != len(body) or count < 0:
        raise ValueError("bytes after the last value")
    return values


def credential_of(user: str, rows: List[List[Optional[bytes]]]) -> Optional[Credential]:
    """
    The credential auth_query's C{rows} give C{user}: L{None} if there is
    no such user (no row, or a NULL user name), a credential that no
    password matches if the password is NULL.

    @raise ValueError: rows auth_query should not return (never quoting a
        password).
    """
    if not rows:
        return None
    if len(rows) > 1:
        raise ValueError(f"auth_query returned {len(rows)} rows for one user")
    row = rows[0]
    if len(row) != 2:
        raise ValueError(f"auth_query returned {len(row)} columns, not two "
                         "(user name, password)")
    name, secret = row
    if name is None:
        return None
    if secret is None:
        return Credential(user, "plain", "")  # disabled: nothing matches it
    try:
        text = secret.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("the password auth_query returned is not UTF-8") from None
    try:
        return Credential.of(user, text)
    except ValueError:
        raise ValueError("the password auth_query returned is neither an md5 hash, a SCRAM "
                         "secret nor a plain password") from None


class AuthQuery:
    """
    Runs C{query} as C{user} for the users of one cluster.

    @ivar lookups: lookups run; C{failures}: those that failed.
    """

    log = Logger()

    def __init__(self, user: str, query: str, timeout: float, clock: Any) -> None:
        self.user = user.encode("utf-8")
        self.query = query.encode("utf-8")
        self.timeout = timeout
        self.clock = clock
        self.lookups = 0
        self.failures = 0
        self._log = ThrottledLog(self.log, clock)
        self._running: Dict[PoolKey, _Lookup] = {}

    def look_up(self, pools: Optional[KeyedPools], database: bytes, user: bytes,
                done: Done) -> None:
        """
        Look C{user} up in C{database} of C{pools}' backend (L{None}: no
        backend is available); C{done} is called with the outcome, now or
        later, at the latest after C{timeout} seconds.
        """
        key = (database, user)
        running = self._running.get(key)
        if running is not None:
            running.waiting.append(done)
            return
        self.lookups += 1
        if pools is None:
            self._failed(key, "no server is available")
            done(None, "no server is available")
            return
        lookup = self._running[key] = _Lookup(self, pools.get((database, self.user)), key)
        lookup.waiting.append(done)
        lookup.start()

    def finished(self, lookup: "_Lookup", credential: Optional[Credential],
                 why: Optional[str]) -> None:
        if self._running.get(lookup.key) is lookup:
            del self._running[lookup.key]
        if why is not None:
            self._failed(lookup.key, why)
        for done in lookup.waiting:
            try:
                done(credential, why)
            except Exception:
                # One client's trouble must not keep the others waiting.
                self.log.failure("auth_query: telling a client its lookup's outcome failed")

    def _failed(self, key: PoolKey, why: str) -> None:
        self.failures += 1
        database, user = key
        # One key for all: the user and the database are the client's choice.
        self._log.warn("auth_query", "auth_query for user {user!r} on database {database!r} "
                       "as {auth_user!r} failed: {why}",
                       user=user.decode("utf-8", "replace"),
                       database=database.decode("utf-8", "replace"),
                       auth_user=self.user.decode("utf-8", "replace"), why=why)


class _Lookup:
    """
    One run of the query: it leases a connection of the auth_user's pool,
    is that connection's peer (as a client would be) while the query
    runs, and gives it back once the server says ReadyForQuery.
    """

    def __init__(self, owner: AuthQuery, keyed: KeyedPool, key: Tuple[bytes, bytes]) -> None:
        self.owner = owner
        self.keyed = keyed
        self.key = key
        self.waiting: List[Done] = []
        self.done = False
        self._waiter: Any = None
        self._timer: Any = None
        self._conn: Any = None
        self._server: Optional[ServerConnection] = None
        self._reader = pg.MessageReader()
        self._rows: List[List[Optional[bytes]]] = []
        self._error: Optional[str] = None

    def start(self) -> None:
        self._timer = self.owner.clock.callLater(self.owner.timeout, self._timed_out)
        self._waiter = self.keyed.pool.wait(self._leased, self._not_leased)

    def _leased(self, conn: Any) -> None:
        self._waiter = None
        if self.done:
            conn.release()
            return
        server: ServerConnection = conn.protocol
        self._conn, self._server = conn, server
        server.peer = self
        # The unnamed statement is ours now: a client's is parsed again.
        server.statements.unnamed_owner = self
        server.transport.write(lookup_messages(self.owner.query, self.key[1]))
        replies = server.replies
        for kind in (PARSE, BIND, EXECUTE, SYNC):
            replies.sent(kind)

    def _not_leased(self, failure: Failure) -> None:
        self._waiter = None
        if failure.check(CancelledError):
            return
        self._finish(None, f"no connection as {self.owner.user.decode('utf-8', 'replace')}: "
                           f"{failure.getErrorMessage() or failure.type.__name__}")

    # -- the server connection's peer ------------------------------------------------

    def from_server(self, data: bytes) -> None:
        for kind, body in self._reader.feed(data):
            if kind == b"D":
                try:
                    self._rows.append(data_row(body))
                except ValueError as e:
                    self._error = self._error or f"malformed row: {e}"
            elif kind == b"E" and self._error is None:
                fields = pg.error_fields(body)
                self._error = f"{fields.get('C', '?')}: {fields.get('M', 'error')}"
        if self._reader.error is not None and self._error is None:
            self._error = f"malformed reply: {self._reader.error.message}"

    def replied(self, server: ServerConnection) -> None:
        if server is not self._server or not server.replies.idle:
            return
        conn, self._conn, self._server = self._conn, None, None
        server.give_back(conn, client_changed_session=False)
        if self._error is not None:
            self._finish(None, self._error)
            return
        try:
            credential = credential_of(self.key[1].decode("utf-8", "replace"), self._rows)
        except ValueError as e:
            self._finish(None, str(e))
            return
        self._finish(credential, None)

    def server_lost(self, server: ServerConnection) -> None:
        if server is not self._server:
            return
        conn, self._conn, self._server = self._conn, None, None
        if conn is not None and conn.leased:
            conn.discard("backend_closed")
        self._finish(None, "the server connection was lost")

    # -- the end ------------------------------------------------------------------

    def _timed_out(self) -> None:
        self._timer = None
        self._finish(None, f"no answer within {self.owner.timeout:g}s (auth_query_timeout)")

    def _finish(self, credential: Optional[Credential], why: Optional[str]) -> None:
        if self.done:
            return
        self.done = True
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            waiter.cancel()
        conn, server = self._conn, self._server
        self._conn = self._server = None
        if conn is not None and server is not None:
            # In the middle of the query: its state is unknown.
            server.peer = None
            if conn.leased:
                conn.discard("auth_query_failed", abort=True)
        self.owner.finished(self, credential, why)


__all__ = ["AuthQuery", "Done", "credential_of", "data_row",
           "lookup_messages"]
