"""
The backend side of transaction pooling: one protocol per server
connection, and the pools of each backend, one per (database, user).

A L{ServerConnection} logs in (L{poolproxy.codecs.postgres_login}), then
passes the server's replies through its L{Replies} to the client that holds
it, and tells that client when a reply ends its transaction.  A connection
given up in the middle of something (the client left during a transaction,
or ran a statement whose effect outlives it) is reset first: ROLLBACK if
anything is open, DISCARD ALL if the client changed its session; only
then does it go back to the pool.  A reset that does not finish in time
closes the connection.

L{KeyedPools} is what the mode keeps beside each backend: a
L{BackendPool} per (database, user), made on first use with the backend's
own pool settings, so a pool_size of 4 means at most 4 server connections
per (database, user) per backend, as PgBouncer's default_pool_size does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Dict, Optional, Tuple

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHandshakeListener, IOpenSSLClientConnectionCreator
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from poolproxy.backends.pool import BackendPool, BackendProtocol
from poolproxy.codecs import postgres as pg
from poolproxy.codecs.postgres_login import LoginCredentials, ServerLogin
from poolproxy.codecs.postgres_replies import QUERY, SWALLOW, Replies
from poolproxy.codecs.postgres_statements import ServerStatements
from poolproxy.proxy.transaction.stats import RESET_KINDS
from poolproxy.stats import Tally
from poolproxy.util.factories import OneProtocolFactory
from poolproxy.util.tlsclient import TLSHandshakeFailed, handshake_error

if TYPE_CHECKING:
    from poolproxy.backends.cluster import Backend

#: (database, user), as bytes from the client's start-up packet.
PoolKey = Tuple[bytes, bytes]

# The steps of a server connection's TLS (ServerConnection._tls_step).
ASKED, HANDSHAKE = "asked", "handshake"


def no_delay(transport: Any) -> None:
    """
    Small replies go out at once: a request-reply protocol waits on every
    one (Nagle's algorithm would hold a reply back behind the peer's
    delayed ACK, 40 ms).  PostgreSQL and libpq set it on their sockets too.
    """
    set_no_delay = getattr(transport, "setTcpNoDelay", None)
    if set_no_delay is not None:
        try:
            set_no_delay(True)
        except OSError:
            pass  # not TCP (a unix socket)



class LoginFailed(Exception):
    """
    A server refused a login.  C{failure} is its ErrorResponse, which the
    client that asked for the connection gets (C{3D000}, C{28P01}...).
    """

    def __init__(self, why: str, failure: Optional[bytes], sqlstate: bytes) -> None:
        super().__init__(why)
        self.failure = failure
        self.sqlstate = sqlstate


@implementer(IHandshakeListener)
class ServerConnection(BackendProtocol):
    """
    One server connection.

    @ivar peer: the client holding it, or L{None}.
    @ivar replies: its L{Replies}.
    @ivar statements: what is prepared on it.
    @ivar dirty: a client changed its session: DISCARD ALL before reuse.
    """

    log = Logger()
    peer: Any = None

    def __init__(self, keyed: "KeyedPool", login: ServerLogin, clock: Any,
                 reset_timeout: float, max_statements: int,
                 tls: Optional[IOpenSSLClientConnectionCreator] = None) -> None:
        """
        @param tls: what makes the connection's TLS (backend_tls), which it
            asks the server for before it logs in; L{None} for none.
        """
        self.keyed = keyed
        self.tls = tls
        # With TLS: ASKED once the SSLRequest is sent, HANDSHAKE once the
        # server said S, None once the handshake is done (or without TLS).
        self._tls_step: Optional[str] = None
        self._login: Optional[ServerLogin] = login
        self._ready: "Optional[Deferred[Any]]" = Deferred(self._cancel_login)
        self.clock = clock
        self.reset_timeout = reset_timeout
        self.replies = Replies()
        self.statements = ServerStatements(max_statements)
        self.dirty = False
        #: Values the proxy SET for parameters the server does not report.
        self.applied: Dict[bytes, bytes] = {}
        #: Cancel requests sent for this connection and not yet done: it
        #: goes to no other client before they are (PgBouncer #717).
        self.cancelling = 0
        self._after_cancels: Any = None
        self.pid = 0
        self.key = b""
        self._resetting: Any = None  # the reset's timer while one runs

    # -- login -------------------------------------------------------------------

    def connectionMade(self) -> None:
        assert self._login is not None
        no_delay(self.transport)
        if self.tls is not None:
            # TLS first, and the StartupMessage only once it is up.
            self._tls_step = ASKED
            self.transport.write(pg.ssl_request())
            return
        self.transport.write(self._login.start())

    def _tls_answer(self, data: bytes) -> None:
        """
        The server's answer to the SSLRequest: C{S}, then TLS; anything
        else fails the connection, which never goes on in plain text.
        """
        if data == b"S":
            self._tls_step = HANDSHAKE
            self.transport.startTLS(self.tls)
            return
        if data[:1] == b"S":
            # Bytes the server sent before the handshake are not under TLS:
            # perhaps a man in the middle's (CVE-2021-23222).
            self._login_failed(LoginFailed("the server sent unencrypted data after its TLS "
                                           "answer", None, pg.PROTOCOL_VIOLATION))
        elif data[:1] == b"N":
            self._login_failed(TLSHandshakeFailed("the server does not accept TLS (it answered "
                                                  "SSLRequest with N); backend_tls is set"))
        else:
            self._login_failed(LoginFailed(f"protocol error: the server answered SSLRequest with "
                                           f"{data[:1]!r}, neither S nor N", None,
                                           pg.PROTOCOL_VIOLATION))

    def handshakeCompleted(self) -> None:
        """The TLS handshake is done, the server's certificate verified: log in."""
        if self._tls_step != HANDSHAKE or self._login is None:
            return
        self._tls_step = None
        self.transport.write(self._login.start())

    def _login_failed(self, error: Exception) -> None:
        """Fail the connection before its login began, with C{error}."""
        self._login = None
        ready, self._ready = self._ready, None
        self.transport.abortConnection()
        if ready is not None:
            ready.errback(error)

    def when_ready(self) -> "Optional[Deferred[Any]]":
        return self._ready

    def _cancel_login(self, d: "Deferred[Any]") -> None:
        # Cancelled (the connect timed out): the loss that follows has no
        # one left to tell, and must not fire the Deferred a second time.
        self._ready = None
        self.transport.abortConnection()

    def _login_data(self, data: bytes) -> None:
        if self._tls_step == ASKED:
            self._tls_answer(data)
            return
        login = self._login
        assert login is not None
        reply = login.receive(data)
        if reply:
            self.transport.write(reply)
        if login.error is not None:
            self._login = None
            self.keyed.login_failed(login)
            ready, self._ready = self._ready, None
            self.transport.loseConnection()
            if ready is not None:
                ready.errback(LoginFailed(login.error, login.failure, login.sqlstate))
            return
        if login.done:
            self._login = None
            self.pid, self.key = login.pid, login.key
            self.replies.parameters.update(login.parameters)
            self.keyed.logged_in(login)
            ready, self._ready = self._ready, None
            if ready is not None:
                ready.callback(self)
            rest = login.leftover()
            if rest:
                self.dataReceived(rest)

    # -- replies -----------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._login is not None:
            self._login_data(data)
            return
        replies = self.replies
        out = replies.feed(data)
        peer = self.peer
        if replies.error is not None:
            self.log.warn("server connection to {backend}: {why}; closed",
                          backend=self.keyed.name, why=replies.error.message)
            self.transport.abortConnection()
            return
        if peer is not None:
            if out:
                peer.from_server(out)
            peer.replied(self)
        elif self._resetting is not None and replies.idle:
            self._reset_done()

    def connectionLost(self, reason: Optional[Failure] = None) -> None:
        BackendProtocol.connectionLost(self, reason)
        ready, self._ready = self._ready, None
        if ready is not None:
            if self._tls_step is not None:
                # The TLS asked for never came up: a certificate not trusted
                # or not for the server's name, a server that closed.
                tls_why = handshake_error(reason or Failure(ConnectionDone()))
                ready.errback(TLSHandshakeFailed(f"TLS handshake failed: {tls_why}"))
            else:
                why = self._login.error if self._login is not None else None
                ready.errback(LoginFailed(why or "the server closed the connection during login",
                                          None, pg.SQLSTATES["unavailable"]))
        if self._resetting is not None:
            self.keyed.resets.add("failed")
            if self._resetting.active():
                self._resetting.cancel()
            self._resetting = None
            entry = self.pool_entry
            if entry is not None and entry.leased:
                entry.discard("reset_failed")
        peer, self.peer = self.peer, None
        if peer is not None:
            peer.server_lost(self)

    # -- giving the connection back ----------------------------------------------

    # -- cancel -------------------------------------------------------------------

    def cancel(self) -> None:
        """
        Ask the server to cancel what runs on this connection: a
        CancelRequest on a connection of its own, with the server's key.
        """
        request = pg.cancel_request(self.pid, self.key)
        self.cancelling += 1
        d = self.keyed.pool.endpoint.connect(
            OneProtocolFactory(CancelSender(request, self._cancel_done, self.tls)))
        d.addErrback(lambda f: self._cancel_done())

    def _cancel_done(self) -> None:
        self.cancelling -= 1
        if self.cancelling == 0 and self._after_cancels is not None:
            conn, changed = self._after_cancels
            self._after_cancels = None
            self.give_back(conn, changed)

    # -- giving the connection back ----------------------------------------------

    def give_back(self, conn: Any, client_changed_session: bool) -> None:
        """
        The holder is done with it (lease C{conn}): back to the pool, reset
        first if it must be.
        """
        self.peer = None
        if self.cancelling:
            # A cancel on its way must not hit the next client's query.
            self._after_cancels = (conn, client_changed_session)
            return
        replies = self.replies
        if client_changed_session:
            self.dirty = True
        if replies.copy_in or replies.error is not None:
            conn.discard("copy_abandoned" if replies.copy_in else "broken")
            return
        if replies.idle and not self.dirty:
            conn.release()
            return
        reset = b""
        if not replies.idle:
            reset += pg.query(b"ROLLBACK")
            replies.sent(QUERY | SWALLOW)
            self.keyed.resets.add("rollback")
        if self.dirty:
            self.keyed.resets.add("discard")
            reset += pg.query(b"DISCARD ALL")
            replies.sent(QUERY | SWALLOW)
            self.statements.clear()
            self.applied.clear()
            self.dirty = False
        self.transport.write(reset)
        self._resetting = self.clock.callLater(self.reset_timeout, self._reset_timed_out)

    def _reset_done(self) -> None:
        timer, self._resetting = self._resetting, None
        if timer is not None and timer.active():
            timer.cancel()
        entry = self.pool_entry
        if entry is not None and entry.leased:
            entry.release()

    def _reset_timed_out(self) -> None:
        self._resetting = None
        self.keyed.resets.add("failed")
        entry = self.pool_entry
        if entry is not None and entry.leased:
            entry.discard("reset_timeout", abort=True)


@implementer(IHandshakeListener)
class CancelSender(Protocol):
    """
    Sends one CancelRequest; the server closes the connection when done.
    With TLS (backend_tls) the request goes under it, as libpq 17 sends
    it: the server's cancel key is never sent in plain text.
    """

    transport: Any

    def __init__(self, request: bytes, done: Callable[[], None],
                 tls: Optional[IOpenSSLClientConnectionCreator] = None) -> None:
        self.request = request
        self.done = done
        self.tls = tls

    def connectionMade(self) -> None:
        if self.tls is not None:
            self.transport.write(pg.ssl_request())
            return
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        if self.tls is None:
            return  # the server says nothing to a cancel
        if data == b"S":
            self.transport.startTLS(self.tls)
        else:
            self.transport.abortConnection()  # no TLS: no cancel
        self.tls = None

    def handshakeCompleted(self) -> None:
        self.transport.write(self.request)

    def connectionLost(self, reason: Optional[Failure] = None) -> None:
        self.done()


class KeyedPool:
    """
    The server connections of one backend for one (database, user).

    @ivar parameters: the server's ParameterStatus values at the last
        login: what a new client of this key is told.
    @ivar last_failure: the last failed login, or L{None} since one worked.
    @ivar resets: its connections' resets before reuse, by kind (L{RESET_KINDS}).
    """

    def __init__(self, backend: "Backend", key: PoolKey, pool: BackendPool,
                 forget: Callable[["KeyedPool"], None] = lambda keyed: None) -> None:
        self.backend = backend
        self._forget = forget
        self.key = key
        self.pool = pool
        self.name = pool.name
        self.parameters: Optional[Dict[bytes, bytes]] = None
        self.last_failure: Optional[LoginFailed] = None
        self.resets = Tally(*RESET_KINDS)

    def logged_in(self, login: ServerLogin) -> None:
        self.parameters = dict(login.parameters)
        self.last_failure = None

    def login_failed(self, login: ServerLogin) -> None:
        self.last_failure = LoginFailed(login.error or "login failed", login.failure,
                                        login.sqlstate)
        if self.parameters is None:
            # Never logged in (a database that does not exist...): not kept,
            # so that names clients make up cost nothing once they are gone.
            self._forget(self)


class KeyedPools:
    """
    What transaction mode keeps beside each backend's pool: a pool per
    (database, user), each with the backend pool's limits.
    """

    def __init__(self, backend: "Backend", credentials: Callable[[PoolKey], LoginCredentials],
                 clock: Any, reset_timeout: float, max_statements: int) -> None:
        self.backend = backend
        self.credentials = credentials
        self.clock = clock
        self.reset_timeout = reset_timeout
        self.max_statements = max_statements
        self.pools: Dict[PoolKey, KeyedPool] = {}

    def get(self, key: PoolKey) -> KeyedPool:
        keyed = self.pools.get(key)
        if keyed is None:
            base = self.backend.pool
            database, user = key
            pool: BackendPool = BackendPool(
                base.name, base.endpoint, BackendProtocol,  # set below
                size=base.size, min_idle=0, max_waiters=base.max_waiters,
                acquire_timeout=base.acquire_timeout, connect_timeout=base.connect_timeout,
                idle_timeout=base.idle_timeout, max_lifetime=base.max_lifetime,
                max_uses=base.max_uses, health_interval=base.health_interval,
                clock=self.clock, cluster=base.cluster, probe_when_down=False)
            keyed = KeyedPool(self.backend, key, pool, self._forget)
            pool.protocol_factory = lambda: self._connection(keyed)
            self.pools[key] = keyed
            pool.start()
        return keyed

    def _forget(self, keyed: KeyedPool) -> None:
        if self.pools.get(keyed.key) is not keyed:
            return
        pool = keyed.pool

        def forget() -> None:
            if pool.total == 0 and pool.waiters == 0 and self.pools.get(keyed.key) is keyed:
                del self.pools[keyed.key]
                pool.close()
        # Once the pool has failed what waits on the login.
        self.clock.callLater(0, forget)

    def _connection(self, keyed: KeyedPool) -> ServerConnection:
        database, user = keyed.key
        credentials = self.credentials(keyed.key)
        login = ServerLogin(credentials.user or user, database, credentials)
        return ServerConnection(keyed, login, self.clock, self.reset_timeout,
                                self.max_statements, tls=self.backend.tls)

    def close(self) -> None:
        for keyed in self.pools.values():
            keyed.pool.close()


__all__ = ["ServerConnection", "KeyedPool", "KeyedPools", "LoginFailed", "PoolKey"]
