"""
The client side of transaction pooling (PostgreSQL): a client holds a
server connection only while it has a transaction under way.

A L{TransactionFrontend} answers the client's start-up itself (TLS refused
or offered, authentication against the users file, the server's parameters
and a cancel key of the proxy's own), then reads the client's messages.
The first message of a transaction asks for admission and a server
connection of the client's (database, user) pool; messages are sent on it
as they come.  The connection goes back when its L{Replies} says the
transaction is over (ReadyForQuery C{I}, nothing owed, no COPY) and the
client has no partial batch (messages after its last Sync) -- never on a
Flush.  In session pool mode, and once a client has run a statement whose
effect outlives its transaction (see L{session_effect}), it keeps its
connection until it leaves; the connection is reset before anyone else
gets it.

Prepared statements are renamed per server connection
(L{poolproxy.codecs.postgres_statements}): a client's statements follow it
from connection to connection.
"""

from __future__ import annotations

import itertools
import json
import os
import secrets
import struct
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

from twisted.internet.defer import CancelledError
from twisted.internet.address import UNIXAddress
from twisted.internet.interfaces import (IOpenSSLServerConnectionCreator, IPushProducer,
                                         ISSLTransport)
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from poolproxy.backends.pool import (AcquireTimeout, BackendUnavailable, PoolClosed,
                                     PooledConnection, PoolExhausted)
from poolproxy.codec import FramingError
from poolproxy.codecs import postgres as pg
from poolproxy.codecs.postgres_auth import Credential
from poolproxy.codecs.postgres_replies import (BIND, DESCRIBE, EXECUTE, FUNCTION, PARSE, QUERY,
                                               SWALLOW, SYNC, CLOSE, ParseSent)
from poolproxy.codecs.postgres_sql import deallocated, deallocates_all, session_effect
from poolproxy.codecs.postgres_statements import (ClientStatements, StatementLimit, StatementNames,
                                                  bind_statement, make_close, make_parse,
                                                  named_target, parse_fields, parse_query,
                                                  rename_bind)
from poolproxy.hooks.calling import NO_HOOKS, Hook, HookFailure, ListenerHooks
from poolproxy.hooks.subjects import HookClient, HookRequest
from poolproxy.proxy.admission import Admission, Overloaded
from poolproxy.proxy.hooked import HOOK_FAILED, HookSubject, identity_of, routed_cluster
from poolproxy.proxy.output import unsent_bytes
from poolproxy.proxy.sending import SendTimeouts
from poolproxy.proxy.transaction.auth import ClientAuth, Users
from poolproxy.proxy.transaction.cancel import CancelRelay
from poolproxy.proxy.transaction.server import (KeyedPool, KeyedPools, LoginFailed, ServerConnection,
                                              no_delay)
from poolproxy.proxy.transaction.stats import ClientCounts, TransactionStats
from poolproxy.util.reactors import default_reactor
from poolproxy.util.writethrough import write_through

if TYPE_CHECKING:
    from poolproxy.backends.cluster import Backend, Cluster

_INT32 = struct.Struct("!I")

#: Start-up parameters a client may set that the proxy applies with SET on
#: every server connection it gets (PgBouncer's track_extra_parameters and
#: its defaults), so that one client's settings never reach another.
TRACKED_PARAMETERS = (b"application_name", b"client_encoding", b"DateStyle", b"TimeZone",
                      b"IntervalStyle", b"search_path", b"standard_conforming_strings")
#: Parameters the server reports (ParameterStatus), whose value on a server
#: connection is known without asking.
_REPORTED = frozenset(TRACKED_PARAMETERS) - {b"search_path"}

#: The most bytes of a batch kept to run again after a stale cached plan.
_RETRY_BATCH_LIMIT = 256 * 1024
#: Messages after which a batch is not run again: it changed something.
_NO_RETRY = frozenset((QUERY, FUNCTION, PARSE, 0x64, 0x63, 0x66, 0x48))

#: Effects that take session state away rather than leave it: they pin nobody.
_RESETTING = frozenset(("reset", "discard", "deallocate"))

# Client states.
STARTUP, AUTH, WELCOME, READY, CLOSED = range(5)

#: SQLSTATE classes of a refused login that say the server is unwell, not
#: the client wrong: 53 insufficient resources (too many connections), 57
#: operator intervention (starting up, shutting down), 08 connection.
_UNWELL = (b"53", b"57", b"08")

#: In a client's negotiated codes: TLS from its first byte (PostgreSQL 17's direct TLS).
DIRECT_TLS = 0

_EXTENDED = frozenset(b"PBDECH")

#: Numbers the listeners' server-side statement names apart: a client routed
#: to another cluster prepares its statements on that cluster's connections,
#: where a name of its listener must not mean another listener's statement.
_LISTENER_NUMBERS = itertools.count()

#: What a client refused by the authenticate hook is told (SQLSTATE 28000).
AUTH_REFUSED = "poolproxy: authentication refused"
#: A client whose route hook chose nothing it may use (SQLSTATE 08004).
SQLCLIENT_UNABLE_TO_CONNECT = b"08004"


def _worker_number() -> int:
    """
    This process's worker number under C{--workers N} (the supervisor's
    handoff, poolproxy.workers.worker.HANDOFF_ENV), else 0.
    """
    raw = os.environ.get("POOLPROXY_WORKER")
    if not raw:
        return 0
    try:
        return int(json.loads(raw)["worker"])
    except (ValueError, KeyError, TypeError):
        return 0


def _set_statement(name: bytes, value: bytes) -> bytes:
    return b"SET " + name + b" TO '" + value.replace(b"'", b"''") + b"'"


@implementer(IPushProducer)
class TransactionFrontend(HookSubject, Protocol):
    """
    One PostgreSQL client.

    @ivar pinned: why the client keeps its server connection for the rest
        of its session (a L{session_effect} label, or C{"session"} in
        session pool mode), or L{None}.
    """

    hook_protocol = "postgres"

    transport: Any
    log = Logger()
    # Its attributes in slots: CPython 3.11 keeps at most 30 of an instance's
    # attributes in the fast shared-key layout and a client had 29; one more
    # made every attribute of every client dearer (+6% instructions per
    # transaction).  An attribute not named here still works (in the
    # instance dict, as transport and connected are), only slower.
    __slots__ = ("factory", "stats", "state", "_buffer", "user", "database", "params",
                 "wanted", "auth", "key", "statements", "minor", "_conn", "_server",
                 "_backend", "_admitted", "_tally", "_waiting", "_held", "_out", "partial",
                 "pinned", "_discarding", "_copy_streaming", "_paused", "_gone", "last_active",
                 "send_deadline", "_batch", "_batch_size", "_retry_error", "_retried",
                 "_login_timer", "_negotiated", "_began", "_first_byte_due", "cluster",
                 "hook_client", "_unread")

    def __init__(self, factory: "TransactionFactory") -> None:
        self.factory = factory
        self.stats = factory.stats
        self.state = STARTUP
        self._buffer = b""
        self.user = b""
        self.database = b""
        self.params: Dict[bytes, bytes] = {}
        self.wanted: Dict[bytes, bytes] = {}
        self.auth: Optional[ClientAuth] = None
        self.key: Tuple[int, bytes] = (0, b"")
        self._negotiated: List[int] = []  # SSLRequest, GSSENCRequest answered
        self.statements = ClientStatements()
        # The lease, and how it is being had.
        self._conn: "Optional[PooledConnection[ServerConnection]]" = None
        self._server: Optional[ServerConnection] = None
        self._backend: "Optional[Backend]" = None
        self._admitted = False
        self._tally = ClientCounts()
        self._waiting: Any = None  # admission Deferred or pool waiter
        self._held: List[Tuple[int, bytes]] = []  # messages waiting for a connection
        self._out: List[bytes] = []  # bytes for the server, written once per read
        self.partial = False  # extended-query messages sent since the last Sync
        self.pinned: Optional[str] = None
        self._discarding = False  # after a local error: drop messages until Sync
        # The batch being answered, as [kind, message, kind, message...], if
        # it may be run again; the error taken back from it, while it is.
        self._batch: Optional[List[Any]] = None
        self._batch_size = 0
        self._retry_error: Optional[bytes] = None
        self._retried = False
        self._copy_streaming = 0  # bytes of a CopyData still to pass on
        self._paused = False
        self._gone = False
        self.last_active = 0.0
        self.send_deadline: Optional[List[Any]] = None
        # For the duration histograms: the read that brought a transaction's
        # first message, and whether its server has answered since the lease.
        self._began = 0.0
        self._first_byte_due = False
        # The cluster of its servers: the listener's, or the route hook's choice.
        self.cluster = factory.cluster
        # What the listener's hooks see of this client (only with hooks configured).
        self.hook_client: Optional[HookClient] = None
        self._unread = False  # reading paused before the welcome

    # -- connection ----------------------------------------------------------------

    def connectionMade(self) -> None:
        self.last_active = self.factory.clock.seconds()
        self.stats.connections_total += 1
        self.stats.connections_open += 1
        self.factory.clients.add(self)
        self.transport.registerProducer(self, True)
        no_delay(self.transport)
        if self.factory.hooks.specs:
            self.hook_subject()  # made now: the login's hooks are asked for it
        self.hook_connected()
        # Start-up and authentication are the request head of this protocol:
        # a client that never finishes them is closed (PgBouncer's
        # client_login_timeout), not kept for client_idle_timeout.
        if self.factory.login_timeout > 0:
            self._login_timer: Any = self.factory.clock.callLater(
                self.factory.login_timeout, self._login_timed_out)
        else:
            self._login_timer = None

    def _login_timed_out(self) -> None:
        self._login_timer = None
        if self.state == CLOSED and getattr(self.transport, "connected", False):
            # Refused at start-up and told why, yet still here: under TLS a
            # close waits for the client's close_notify, which a client that
            # never closes never sends.
            self.transport.abortConnection()
            return
        if self.state in (STARTUP, AUTH):
            self.stats.timeouts.add("head")
            if self.state == STARTUP:
                self.transport.abortConnection()  # no protocol spoken yet
                self.state = CLOSED
            else:
                self._fatal("timeout", "authentication took too long (header_timeout)")

    def _cancel_login_timer(self) -> None:
        timer, self._login_timer = self._login_timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def connectionLost(self, reason: Optional[Failure] = None) -> None:
        self._cancel_login_timer()
        self._gone = True
        self.state = CLOSED
        self.stats.connections_open -= 1
        self.factory.clients.discard(self)
        self.factory.sends.resumed(self)
        self.factory.cancel_keys.pop(self.key, None)
        self._stop_waiting()
        self._give_back(abandoned=True)
        self.hook_disconnected()

    def dataReceived(self, data: bytes) -> None:
        self.last_active = self.factory.clock.seconds()
        if self.state == READY:
            self._messages(data)
        elif self.state == STARTUP:
            self._startup(data)
        elif self.state in (AUTH, WELCOME):
            self._buffer += data
            if self.state == AUTH:
                self._auth_messages()
            elif len(self._buffer) > self.AUTH_MESSAGE_MAX and not self._unread:
                # Sent before its welcome (while the login hooks or the first
                # server login run): kept, within a bound, by reading no more.
                self._unread = True
                self.transport.pauseProducing()

    # -- start-up and authentication ----------------------------------------------------

    def _startup(self, data: bytes) -> None:
        buffer = self._buffer + data
        if not self._negotiated and buffer[:1] == b"\x16" and not self._encrypted():
            # A TLS handshake record where a start-up packet's length would
            # be (0x16...: over 369 MB, never a real one): PostgreSQL 17's
            # direct TLS (sslnegotiation=direct), with no SSLRequest first.
            self._direct_tls(buffer)
            return
        if self._negotiated and self._negotiated[-1] == DIRECT_TLS and not self._alpn_checked():
            return
        while True:
            try:
                startup, used = pg.read_startup(buffer)
            except FramingError as e:
                self._fatal("malformed", e.message)
                return
            if startup is None:
                self._buffer = buffer
                return
            buffer = buffer[used:]
            if startup.code in (pg.SSL_REQUEST, pg.GSSENC_REQUEST):
                if not self._negotiate(startup.code, buffer):
                    return
                continue
            if startup.code == pg.CANCEL_REQUEST:
                # Allowed in plain text even when TLS is required: libpq
                # before 17 sends its cancels unencrypted, as PostgreSQL
                # and PgBouncer take them.
                self.factory.cancel(startup.pid, startup.key)
                self.transport.loseConnection()
                self.state = CLOSED
                return
            if self.factory.tls_required and not self._encrypted() and not self._on_unix():
                self.stats.refused.add("tls_required")
                self._fatal_as(pg.INVALID_AUTHORIZATION, "SSL required")
                return
            self._buffer = buffer
            self._started(startup)
            return

    def _negotiate(self, code: int, rest: bytes) -> bool:
        """
        Answer an SSLRequest (C{S} and TLS with a certificate configured,
        else C{N}) or a GSSENCRequest (always C{N}), as PostgreSQL does:
        each once, and neither once TLS is on.

        @param rest: what the client sent after the request.
        @return: whether the connection goes on.
        """
        if rest:
            # Sent before our answer: not under the TLS the client asked
            # for; perhaps a man in the middle's (CVE-2021-23214), and
            # never read as part of the session.
            self.stats.refused.add("unencrypted_after_request")
            what = "SSL request" if code == pg.SSL_REQUEST else "GSSAPI encryption request"
            self._fatal_as(pg.PROTOCOL_VIOLATION, f"received unencrypted data after {what}",
                           detail="This could be either a client-software bug or evidence "
                                  "of an attempted man-in-the-middle attack.")
            return False
        if self._encrypted() or code in self._negotiated:
            self._fatal_as(pg.PROTOCOL_VIOLATION, "encryption was negotiated already on this "
                                                  "connection")
            return False
        self._negotiated.append(code)
        tls = self.factory.tls
        if code == pg.SSL_REQUEST and tls is not None and not self._on_unix():
            self.transport.write(b"S")
            self.transport.startTLS(tls)
        else:
            self.transport.write(b"N")
        return True

    def _direct_tls(self, hello: bytes) -> None:
        """
        TLS from the client's first byte: started with the bytes read so far
        (its ClientHello) given to the TLS layer, as PostgreSQL 17 does.
        Without a certificate (or on a unix socket) there is nothing to
        answer a handshake with: closed, as PostgreSQL closes it.
        """
        self._buffer = b""
        tls = self.factory.tls
        if tls is None or self._on_unix():
            self.stats.refused.add("direct_tls_unavailable")
            self.state = CLOSED
            self.transport.loseConnection()
            return
        self._negotiated.append(DIRECT_TLS)
        self.transport.startTLS(tls)
        # startTLS put the TLS layer between the socket and this protocol:
        # what was read before it is the layer's to read.
        self.transport.protocol.dataReceived(hello)

    def _alpn_checked(self) -> bool:
        """
        Direct TLS must have chosen ALPN C{postgresql} (PostgreSQL 17 insists,
        against cross-protocol attacks); if not, the connection is refused.
        """
        try:
            chosen = self.transport.getHandle().get_alpn_proto_negotiated()
        except Exception:
            chosen = None
        if chosen == b"postgresql":
            return True
        self.stats.refused.add("direct_tls_without_alpn")
        self._fatal_as(pg.PROTOCOL_VIOLATION, "received direct SSL connection request without "
                                              "ALPN protocol negotiation extension")
        return False

    def _encrypted(self) -> bool:
        return ISSLTransport.providedBy(self.transport)

    def _on_unix(self) -> bool:
        # As PostgreSQL: a unix socket is neither offered TLS nor required to use it.
        return isinstance(self.transport.getHost(), UNIXAddress)

    def _fatal_as(self, sqlstate: bytes, text: str, detail: Optional[str] = None) -> None:
        """A FATAL error with its own SQLSTATE at start-up, and the connection closed."""
        self.transport.write(pg.error_response(sqlstate, text, b"FATAL", detail=detail))
        self.transport.loseConnection()
        self.state = CLOSED

    def _started(self, startup: pg.Startup) -> None:
        self.user, self.database = startup.user, startup.database
        self.params = startup.params
        self.wanted = {k: v for k, v in startup.params.items() if k in TRACKED_PARAMETERS}
        minor = startup.code & 0xffff
        options = [k for k in startup.params if k.startswith(b"_pq_.")]
        self.minor = min(minor, 2)
        if minor > 2 or options:
            # Newer than we speak, or protocol options we do not know: say
            # which version we take and which options we ignore.
            body = _INT32.pack(self.minor) + _INT32.pack(len(options)) + b"".join(
                o + b"\0" for o in options)
            self.transport.write(pg.message(b"v", body))
        self.state = AUTH
        users = self.factory.users
        if users.needs_lookup(self.user):
            self._look_up(users)
        else:
            self._authenticate(users.authenticator(self.user))

    def _look_up(self, users: Users) -> None:
        """
        A user not in the users file: auth_query tells its credential, and
        authentication starts then (L{_looked_up}); what the client sends
        meanwhile waits in the buffer.
        """
        backend = self.factory.cluster.pick(None)
        pools = backend.shared if backend is not None else None
        users.look_up(pools if isinstance(pools, KeyedPools) else None, self.database,
                      self.user, self._looked_up)

    def _looked_up(self, credential: Optional[Credential], why: Optional[str]) -> None:
        if self.state != AUTH:
            return  # the client left meanwhile
        if why is not None:
            # AuthQuery logged it, once per interval: not a line per client.
            self._auth_failed(why, log=False)
            return
        self._authenticate(self.factory.users.looked_up(self.user, credential))

    def _authenticate(self, auth: ClientAuth) -> None:
        self.auth = auth
        first = auth.start()
        if first:
            write_through(self.transport, first)
        self._auth_messages()

    def _auth_failed(self, why: str, log: bool = True) -> None:
        self.stats.auth_failures += 1
        if log:
            self.factory.auth_failed(self.user, why)
        self.transport.write(pg.error_response(
            pg.INVALID_PASSWORD, "password authentication failed for user "
            f"\"{self.user.decode('utf-8', 'replace')}\"", b"FATAL"))
        self.transport.loseConnection()
        self.state = CLOSED

    #: The largest authentication message (PasswordMessage, SASL) a client may send.
    AUTH_MESSAGE_MAX = 64 * 1024

    def _auth_messages(self) -> None:
        auth = self.auth
        if auth is None:
            # Its credential is being looked up: nothing is asked of the
            # client yet, so what it sends waits, within a message's bound.
            if len(self._buffer) > self.AUTH_MESSAGE_MAX:
                self._fatal("malformed", "unexpected messages during authentication")
            return
        replies: List[bytes] = []
        while self.state == AUTH and not auth.done and auth.error is None:
            if len(self._buffer) < 5:
                break
            length = _INT32.unpack_from(self._buffer, 1)[0]
            if length < 4 or length > self.AUTH_MESSAGE_MAX:
                self._fatal("malformed", "invalid authentication message length")
                return
            if len(self._buffer) < 1 + length:
                break
            kind, body = self._buffer[:1], self._buffer[5:1 + length]
            self._buffer = self._buffer[1 + length:]
            if kind != b"p":
                self._fatal("malformed", f"expected a password message, got {kind!r}")
                return
            reply = auth.receive(body)
            if reply:
                replies.append(reply)
        if auth.error is not None:
            self._auth_failed(auth.error)
            return
        if auth.done:
            self.factory.users.remember(self.user, auth)
            self.state = WELCOME
            if self.hook_client is not None:
                self._hooked_login(replies)
                return
            self._login(replies)
            return
        if replies:
            write_through(self.transport, b"".join(replies))

    def _login(self, replies: List[bytes]) -> None:
        """
        Authenticated (and let in by the hooks): the welcome, once the
        client's pool knows its server's parameters.
        """
        if self.state != WELCOME:
            return
        keyed = self._keyed()
        if keyed is None:
            return
        if keyed.parameters is not None:
            # SASLFinal and the welcome in one send.
            self._welcome(keyed.parameters, replies)
            return
        # The first client of this (database, user): a server login
        # tells what to say (and whether the database exists).
        self._need_connection()
        if replies:
            write_through(self.transport, b"".join(replies))

    # -- the hooks at login: authenticate, then route ---------------------------------

    def _hooked_login(self, replies: List[bytes]) -> None:
        """
        The proxy's own check passed: the authenticate hook, then the route
        hook, each if configured, before the welcome.  What the client sends
        meanwhile waits in the buffer (state WELCOME); a client that leaves
        meanwhile is not waited for (its hook's answer is ignored).
        """
        client = self.hook_client
        assert client is not None
        client.username = self.user.decode("utf-8", "replace")
        client.database = self.database.decode("utf-8", "replace")
        client.parameters = {k.decode("utf-8", "replace"): v.decode("utf-8", "replace")
                             for k, v in self.params.items()}
        client.tls = self._encrypted()
        # SCRAM and md5 reveal no password; trust checks none.
        client.password = None
        client.password_ok = None if self.factory.users.auth_type == "trust" else True
        hooks = self.factory.hooks
        authenticate = hooks.authenticate
        if authenticate is None:
            self._route(replies)
            return
        authenticate.then(client, self._authenticated, authenticate, replies)

    def _authenticated(self, result: Any, hook: Hook, replies: List[bytes]) -> None:
        if self.state != WELCOME:
            return  # gone meanwhile
        client = self.hook_client
        assert client is not None
        accepted, identity = identity_of(result, client)
        if not accepted:
            self.stats.auth_failures += 1
            failed = isinstance(result, HookFailure)
            self._refuse_login(hook, result, replies, pg.INVALID_AUTHORIZATION,
                               HOOK_FAILED.format(point="authenticate") if failed
                               else AUTH_REFUSED)
            return
        client.identity = identity
        self._route(replies)

    def _route(self, replies: List[bytes]) -> None:
        hooks = self.factory.hooks
        route = hooks.route
        if route is None or self.hook_client is None:
            self._login(replies)
            return
        route.then(HookRequest(self.hook_client, self.factory.cluster.name), self._routed, route,
                   replies)

    def _routed(self, result: Any, hook: Hook, replies: List[bytes]) -> None:
        if self.state != WELCOME:
            return
        cluster, why = routed_cluster(result, self.factory.routes, self.factory.cluster)
        if cluster is None:
            self._refuse_login(hook, result, replies, SQLCLIENT_UNABLE_TO_CONNECT, why or "",
                               why)
            return
        self.cluster = cluster
        self._login(replies)

    def _refuse_login(self, hook: Hook, result: Any, replies: List[bytes], code: bytes,
                      text: str, why: Optional[str] = None) -> None:
        """
        A hook said no (or failed): counted, logged once per interval (a
        failure is, by the hook), and the client told with a FATAL C{code}
        (after its SASLFinal, if any) and closed.
        """
        hook.refused += 1
        if not isinstance(result, HookFailure):
            self.factory.hook_refused(hook.point, self.hook_client, why)
        replies.append(pg.error_response(code, text, b"FATAL"))
        self.transport.write(b"".join(replies))
        self.state = CLOSED
        self.transport.loseConnection()

    def _welcome(self, parameters: Dict[bytes, bytes], before: Optional[List[bytes]] = None) -> None:
        if self.state != WELCOME:
            return
        out = before if before is not None else []
        out.append(pg.AUTHENTICATION_OK)
        shown = dict(parameters)
        shown.update(self.wanted)
        for name, value in shown.items():
            out.append(pg.parameter_status(name, value))
        pid = self.factory.new_pid()
        key = secrets.token_bytes(32 if self.minor >= 2 else 4)
        self.key = (pid, key)
        self.factory.cancel_keys[self.key] = self
        out.append(pg.backend_key_data(pid, key))
        out.append(pg.READY_IDLE)
        write_through(self.transport, b"".join(out))
        self.state = READY
        self._cancel_login_timer()
        if self.factory.session_pooling:
            self.pinned = "session"
            self.stats.pinned.add("session")
        if self._buffer:
            data, self._buffer = self._buffer, b""
            self._messages(data)
        if self._unread:
            self._unread = False
            self.transport.resumeProducing()

    # -- the client's messages ----------------------------------------------------------

    def _messages(self, data: bytes) -> None:
        if self._copy_streaming:
            data = self._stream_copy(data)
            if not data:
                return
        buffer = self._buffer + data if self._buffer else data
        pos, end = 0, len(buffer)
        limit = self.factory.max_message
        while end - pos >= 5 and self.state == READY:
            kind = buffer[pos]
            length = _INT32.unpack_from(buffer, pos + 1)[0]
            if length < 4 or length > limit:
                self._buffer = b""
                self._fatal("too_large" if length > limit else "malformed",
                            f"message length {length} out of bounds")
                return
            stop = pos + 1 + length
            if stop > end:
                if kind == 0x64 and self._server is not None:  # CopyData: pass it on
                    self._out.append(buffer[pos:end])
                    self._copy_streaming = stop - end
                    pos = end
                break
            self._message(kind, buffer[pos:stop])
            pos = stop
        self._buffer = buffer[pos:] if pos < end else b""
        self._flush()

    def _stream_copy(self, data: bytes) -> bytes:
        n = self._copy_streaming
        if n >= len(data):
            self._copy_streaming = n - len(data)
            self._out.append(data)
            self._flush()
            return b""
        self._copy_streaming = 0
        self._out.append(data[:n])
        return data[n:]

    def _message(self, kind: int, msg: bytes) -> None:
        if self._discarding:
            # A local error earlier in this batch: as the server does, skip
            # to the Sync, which gets the error's ReadyForQuery.
            if kind != SYNC:
                return
            self._discarding = False
        if kind == 0x58:  # Terminate
            self._give_back(abandoned=False)
            self.transport.loseConnection()
            self.state = CLOSED
            return
        server = self._server
        if server is None:
            if not self._held and self._answer_alone(kind, msg):
                return
            self._held.append((kind, msg))
            self._need_connection()
            return
        self._send(server, kind, msg)

    def _answer_alone(self, kind: int, msg: bytes) -> bool:
        """
        Answer a message that needs no server (nothing held, nothing open):
        a Sync with nothing before it, a Flush, a Close of a statement, a
        Parse of a statement some server has parsed already.  A client
        preparing statements holds no connection for it (pgbench -M
        prepared prepares synchronously, one client of a thread after
        another: with every connection held by its thread's clients in
        their transactions, a Parse that waited for one would wait forever).
        """
        if kind == SYNC and not self.partial:
            self.transport.write(pg.ready_for_query())
            return True
        if kind == QUERY:
            return self._deallocate(msg[5:-1])
        if kind == 0x48:  # Flush
            return True
        if kind == CLOSE and msg[5:6] == b"S" and msg[6:7] != b"\0":
            try:
                target, name = named_target(msg[5:])
            except ValueError:
                return False
            self.statements.forget(name)
            self.transport.write(pg.CLOSE_COMPLETE)
            return True
        if kind == PARSE and msg[5:6] != b"\0" and self.pinned is None:
            try:
                name, definition = parse_fields(msg[5:])
            except ValueError:
                return False
            names = self.factory.statement_names
            global_name = names.known(definition)
            if global_name is None or name in self.statements.named:
                return False
            self._check_session_effect(parse_query(definition))
            if self.pinned is not None:
                return False  # a statement that pins goes to the server
            try:
                self.statements.add(name, definition)
            except StatementLimit:
                return False  # refused in order, with the server's replies (_parse)
            self.transport.write(pg.PARSE_COMPLETE)
            return True
        return False

    def _send(self, server: ServerConnection, kind: int, msg: bytes) -> None:
        """Send one message on the held connection, rewritten as it must be."""
        replies = server.replies
        out = self._out
        batch = self._batch
        if batch is None:
            if kind not in _NO_RETRY and not replies.owed and replies.status == b"I":
                # A batch that starts outside a transaction: kept (whole, as
                # the client sent it) until its ReadyForQuery, to run again
                # if a cached plan went stale (see _server_error).
                self._batch = batch = [kind, msg]
                self._batch_size = len(msg)
        else:
            if self._batch_size >= _RETRY_BATCH_LIMIT or batch[-2] == SYNC or kind in _NO_RETRY:
                self._batch = None  # pipelined, too big, or not to be run twice
            else:
                batch += (kind, msg)
                self._batch_size += len(msg)
        if kind == QUERY:
            if self._deallocate(msg[5:-1]):
                local = replies.take_locals()
                if local:
                    self._flush()
                    self.transport.write(local)
                return
            self._check_session_effect(msg[5:-1])
            server.statements.unnamed_owner = None
            out.append(msg)
            replies.sent(QUERY)
            self._tally.queries += 1
        elif kind == PARSE:
            self._parse(server, msg)
            self.partial = True
        elif kind == BIND:
            self._bind(server, msg)
            self.partial = True
        elif kind == DESCRIBE or kind == CLOSE:
            self._describe_or_close(server, kind, msg)
            self.partial = True
        elif kind == EXECUTE:
            out.append(msg)
            replies.sent(EXECUTE)
            self.partial = True
            self._tally.queries += 1
        elif kind == SYNC:
            out.append(msg)
            replies.sent(SYNC)
            self.partial = False
        elif kind == 0x48:  # Flush
            out.append(msg)
            self.partial = True
        elif kind == 0x64:  # CopyData
            out.append(msg)
        elif kind == 0x63 or kind == 0x66:  # CopyDone, CopyFail
            out.append(msg)
            replies.copy_ended()
        elif kind == FUNCTION:
            out.append(msg)
            replies.sent(FUNCTION)
        else:
            self._fatal("malformed", f"unexpected message type {chr(kind)!r}")
            return
        local = replies.take_locals()
        if local:
            self._flush()
            self.transport.write(local)

    def _parse(self, server: ServerConnection, msg: bytes) -> None:
        replies = server.replies
        try:
            name, definition = parse_fields(msg[5:])
        except ValueError:
            self._fatal("malformed", "invalid Parse message")
            return
        self._check_session_effect(parse_query(definition))
        if not name:
            self.statements.unnamed = msg
            server.statements.unnamed_owner = self
            self._out.append(msg)
            replies.sent(PARSE)
            return
        if name in self.statements.named:
            self._local_error(server, pg.DUPLICATE_STATEMENT,
                              f"prepared statement \"{name.decode('utf-8', 'replace')}\" "
                              "already exists")
            return
        try:
            self.statements.add(name, definition)
        except StatementLimit as e:
            self._local_error(server, pg.PROGRAM_LIMIT_EXCEEDED, str(e))
            return
        global_name = self.factory.statement_names.name_for(definition)
        if global_name in server.statements:
            server.statements.use(global_name)
            replies.local(pg.PARSE_COMPLETE)
            return
        self._prepare(server, global_name, definition, swallow=False, client_name=name)

    def _prepare(self, server: ServerConnection, global_name: bytes, definition: bytes,
                 swallow: bool, client_name: Optional[bytes] = None) -> None:
        """Parse C{global_name} on C{server} (closing what falls out of its bound)."""
        for old in server.statements.add(global_name):
            self._out.append(make_close(old))
            server.replies.sent(CLOSE | SWALLOW)
        self._out.append(make_parse(global_name, definition))
        statements = self.statements

        def failed(name: bytes) -> None:
            server.statements.discard(name)
            if client_name is not None and statements.named.get(client_name) == definition:
                statements.forget(client_name)
        server.replies.sent_parse(ParseSent(global_name, swallow, failed,
                                            self.factory.statement_names.parsed))

    def _ensure(self, server: ServerConnection, name: bytes) -> Optional[bytes]:
        """The server name of the client's statement C{name}, prepared on C{server}."""
        if not name:
            unnamed = self.statements.unnamed
            if unnamed is not None and server.statements.unnamed_owner is not self:
                # Its unnamed statement is on another connection (or was
                # replaced): parse it again here, silently.
                self._out.append(unnamed)
                server.replies.sent(PARSE | SWALLOW)
                server.statements.unnamed_owner = self
            return None
        definition = self.statements.named.get(name)
        if definition is None:
            return None  # the server says 26000 itself
        # Looked up each time: a stale plan renews a definition's name.
        global_name = self.factory.statement_names.name_for(definition)
        if global_name in server.statements:
            server.statements.use(global_name)
        else:
            self._prepare(server, global_name, definition, swallow=True)
        return global_name

    def _bind(self, server: ServerConnection, msg: bytes) -> None:
        body = msg[5:]
        try:
            start, end = bind_statement(body)
        except ValueError:
            self._fatal("malformed", "invalid Bind message")
            return
        global_name = self._ensure(server, body[start:end])
        if global_name is not None:
            msg = rename_bind(body, start, end, global_name)
        self._out.append(msg)
        server.replies.sent(BIND)

    def _describe_or_close(self, server: ServerConnection, kind: int, msg: bytes) -> None:
        try:
            target, name = named_target(msg[5:])
        except ValueError:
            self._fatal("malformed", "invalid Describe or Close message")
            return
        if target == b"S":
            if kind == CLOSE and name:
                self.statements.forget(name)
                server.replies.local(pg.CLOSE_COMPLETE)
                return
            global_name = self._ensure(server, name)
            if global_name is not None:
                msg = pg.message(msg[:1], b"S" + global_name + b"\0")
        self._out.append(msg)
        server.replies.sent(kind)

    def _local_error(self, server: ServerConnection, sqlstate: bytes, text: str) -> None:
        """An error the proxy finds in an extended-query batch: skip to its Sync."""
        server.replies.local(pg.error_response(sqlstate, text))
        self._discarding = True

    def _check_session_effect(self, sql: bytes) -> None:
        effect = session_effect(sql)
        if effect is None:
            return
        if effect in _RESETTING:
            # Statements that take state away pin nobody (asyncpg resets each
            # connection it releases with RESET ALL, UNLISTEN *...); but the
            # statements they drop are gone from the server connection.
            if deallocates_all(sql):
                self.statements.clear()
                server = self._server
                if server is not None:
                    server.statements.clear()
            effect = session_effect(sql, ignore=_RESETTING)
        if effect is not None and self.pinned is None:
            self.pinned = effect
            self.factory.pinned(self, effect)

    def _deallocate(self, sql: bytes) -> bool:
        """
        C{DEALLOCATE name} of one of the client's protocol-level statements
        (psycopg evicts its statement cache so): the server knows it by
        another name, so the proxy forgets it and answers.
        """
        name = deallocated(sql) if b"llocate" in sql or b"LLOCATE" in sql else None
        if name is None or name not in self.statements.named:
            return False
        self.statements.forget(name)
        server = self._server
        done = pg.message(b"C", b"DEALLOCATE\0")
        if server is None:
            self.transport.write(done + pg.ready_for_query())
        else:
            server.replies.local(done + pg.ready_for_query(server.replies.status))
        return True

    def _flush(self) -> None:
        out = self._out
        if out and self._server is not None:
            # The connection is this client's alone: nothing is gained by
            # waiting for the reactor to send what one read of it brought.
            data = out[0] if len(out) == 1 else b"".join(out)
            write_through(self._server.transport, data)
            self.stats.bytes_upstream += len(data)
            out.clear()

    # -- getting a server connection -------------------------------------------------

    def _keyed(self) -> Optional[KeyedPool]:
        backend = self.cluster.pick(None)
        if backend is None or not isinstance(backend.shared, KeyedPools):
            self._fatal("unavailable", "no server is available")
            return None
        return backend.shared.get((self.database, self.user))

    def _need_connection(self) -> None:
        if self._waiting is not None or self._server is not None:
            return
        self._tally.since = self._began = self.last_active  # the read that brought the message
        if self._admitted or self.factory.admission.try_acquire():
            self._admitted = True
            self._lease()
            return
        d = self.factory.admission.acquire()
        self._waiting = d
        d.addCallbacks(self._on_admitted, self._on_not_admitted)

    def _on_admitted(self, _: object) -> None:
        self._waiting = None
        self._admitted = True
        self._lease()

    def _on_not_admitted(self, failure: Failure) -> None:
        self._waiting = None
        if failure.check(CancelledError):
            return
        failure.trap(Overloaded)
        self._failed("rejected")
        self._refuse("overloaded", "too many clients are waiting: try again later")

    def _lease(self) -> None:
        backend = self.cluster.pick(None)
        if backend is None or not isinstance(backend.shared, KeyedPools):
            self._refuse("unavailable", "no server is available")
            return
        backend.begin()
        self._backend = backend
        keyed = backend.shared.get((self.database, self.user))
        self._waiting = keyed.pool.wait(self._on_leased, lambda f: self._on_no_lease(f, keyed))

    def _on_leased(self, conn: "PooledConnection[ServerConnection]") -> None:
        self._waiting = None
        if self._gone or self.state == CLOSED:
            conn.release()
            return
        if self._backend is not None:
            self._backend.succeeded()
        self._tally.leased(self.factory.clock.seconds(), self.stats, self.database, self.user)
        self._first_byte_due = True
        server = conn.protocol
        self._conn, self._server = conn, server
        server.peer = self
        server.replies.on_error = self._server_error
        server.transport.registerProducer(self.transport, True)
        if self._paused:
            server.transport.pauseProducing()
        if self.state == WELCOME:
            self._welcome(server.replies.parameters)
        self._apply_parameters(server)
        held, self._held = self._held, []
        for kind, msg in held:
            if self._server is None:
                break
            self._message(kind, msg)
        self._flush()
        if self._server is server and server.replies.idle:
            self.transaction_over(server)

    def _server_error(self, sqlstate: bytes, body: bytes) -> bool:
        """
        An error answers the client's batch.  If it is a cached plan that
        went stale (DDL changed a prepared statement's result type) in a
        batch begun outside a transaction, take it back: the statements get
        new server names and the batch runs again (once).
        """
        batch = self._batch
        if (sqlstate != b"0A000" or batch is None or batch[-2] != SYNC or self._retried
                or b"cached plan must not change result type" not in body):
            return False
        self._retry_error = pg.message(b"E", body)
        return True

    def _retry(self, server: ServerConnection) -> None:
        error, self._retry_error = self._retry_error, None
        batch, self._batch = self._batch, None
        status = server.replies.status
        if status != b"I" or batch is None:
            assert error is not None
            self.transport.write(error + pg.ready_for_query(status))
            return
        names = self.factory.statement_names
        for kind, msg in zip(batch[::2], batch[1::2]):
            name = None
            if kind == BIND:
                start, end = bind_statement(msg[5:])
                name = msg[5 + start:5 + end]
            elif kind == DESCRIBE and msg[5:6] == b"S":
                name = named_target(msg[5:])[1]
            definition = self.statements.named.get(name) if name else None
            if definition is not None:
                names.renew(definition)
        self.factory.retries += 1
        self._retried = True
        for kind, msg in zip(batch[::2], batch[1::2]):
            self._send(server, kind, msg)
        self._retried = False
        self._flush()

    def _apply_parameters(self, server: ServerConnection) -> None:
        """SET what the client's start-up asked for and the connection has otherwise."""
        have = server.replies.parameters
        sets = [_set_statement(name, value) for name, value in self.wanted.items()
                if (have.get(name) if name in _REPORTED else server.applied.get(name)) != value]
        if sets:
            for name, value in self.wanted.items():
                if name not in _REPORTED:
                    server.applied[name] = value
            self._out.append(pg.query(b"; ".join(sets)))
            server.replies.sent(QUERY | SWALLOW)

    def _on_no_lease(self, failure: Failure, keyed: KeyedPool) -> None:
        self._waiting = None
        backend = self._backend
        self._end_admission(reported=True)
        if failure.check(CancelledError):
            return
        login = keyed.last_failure
        if backend is not None and failure.check(BackendUnavailable, LoginFailed) and (
                login is None or login.failure is None or login.sqlstate[:2] in _UNWELL):
            # The server could not be reached or logged in to (refused,
            # timed out, a failed TLS handshake, too many connections,
            # starting up): passive health, as other modes' failed connects.
            # Its refusal of this user or database (28P01, 3D000) says
            # nothing of its health.
            backend.failed(failure.getErrorMessage())
        if self._gone:
            return
        if login is not None and login.failure is not None:
            # The server's own word: unknown database, wrong password...
            self.transport.write(login.failure)
            self.transport.loseConnection()
            self.state = CLOSED
            return
        if failure.check(AcquireTimeout):
            self._failed("pool_exhausted")
            self._refuse("timeout", "no server connection became free in time "
                         "(query_wait_timeout)")
        elif failure.check(PoolExhausted):
            self._failed("pool_exhausted")
            self._refuse("overloaded", "too many clients are waiting for a server connection")
        elif failure.check(BackendUnavailable, PoolClosed, LoginFailed):
            self._failed("backend_unavailable")
            self._refuse("unavailable", f"server unavailable: {failure.getErrorMessage()}")
        else:
            failure.raiseException()

    def _failed(self, outcome: str) -> None:
        """Count the transaction as ended by C{outcome}, and how long it waited."""
        self.stats.requests.add(outcome)
        self.stats.durations.observe(outcome, self.factory.clock.seconds() - self._began)

    def _refuse(self, kind: str, text: str) -> None:
        """
        No connection for what the client sent: an error in place of its
        answer, its held messages dropped; at start-up, the connection ends.
        """
        held, self._held = self._held, []
        if self.state != READY:
            self._fatal(kind, text)
            return
        codec = self.factory.codec
        # Each Query and Sync held is owed a ReadyForQuery; the error answers
        # the first, and what follows the last Sync is skipped to the next.
        syncs = sum(1 for kind_, _ in held if kind_ in (SYNC, QUERY, FUNCTION))
        self.partial = False
        out = codec.error_reply(kind, text) + pg.ready_for_query() * syncs
        self._discarding = bool(held) and held[-1][0] in _EXTENDED
        self.transport.write(out)

    def _stop_waiting(self) -> None:
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.cancel()

    # -- the server's side ----------------------------------------------------------------

    def from_server(self, data: bytes) -> None:
        self.stats.bytes_downstream += len(data)
        if self._first_byte_due:
            self._first_byte_due = False
            if self._backend is not None:
                # The lease began as its first message was written.
                self._backend.first_byte.observe(self.factory.clock.seconds() - self._tally.since)
        write_through(self.transport, data)

    def replied(self, server: ServerConnection) -> None:
        """The server's replies so far are passed on."""
        replies = server.replies
        if self._retry_error is not None and not replies.owed:
            self._retry(server)
        if replies.idle:
            self.transaction_over(server)

    def transaction_over(self, server: ServerConnection) -> None:
        """The server says the transaction is over: give the connection back if we may."""
        self._batch = None
        if server is not self._server or self.partial or self._held:
            return
        self._tally.transaction_over()
        if self.pinned:
            return
        stats = self.stats
        stats.requests_ok += 1
        # The ReadyForQuery that ends it was just written to the client.
        now = self.factory.clock.seconds()
        stats.duration_ok.observe(now - self._began)
        if self._backend is not None:
            self._backend.duration_ok.observe(now - self._tally.since)
        self._give_back(abandoned=False, now=now)

    def server_lost(self, server: ServerConnection) -> None:
        if server is not self._server:
            return
        conn = self._conn
        self._conn = self._server = None
        self._tally.lease_over(self.factory.clock.seconds())
        if conn is not None and conn.leased:
            conn.discard("backend_closed")
        self._end_admission(reported=False)
        if self._backend is not None:
            self._backend.failed("server connection lost")
        self._fatal("unavailable", "the server connection was lost")

    def _give_back(self, abandoned: bool, now: Optional[float] = None) -> None:
        conn, server = self._conn, self._server
        self._conn = self._server = None
        self._batch = None
        if conn is not None and server is not None:
            server.replies.on_error = None
            self._tally.lease_over(self.factory.clock.seconds() if now is None else now)
            if server.transport is not None:
                server.transport.unregisterProducer()
                if self._paused:
                    server.transport.resumeProducing()
            # A session pooled or pinned client may have changed anything.
            server.give_back(conn, client_changed_session=self.pinned is not None)
        self._end_admission(reported=True)

    def _end_admission(self, reported: bool) -> None:
        if self._admitted:
            self._admitted = False
            self.factory.admission.release()
        backend, self._backend = self._backend, None
        if backend is not None:
            backend.end(reported=reported)

    def _fatal(self, kind: str, text: str) -> None:
        if self.state == CLOSED:
            return
        self.transport.write(self.factory.codec.fatal_reply(kind, text))
        self.state = CLOSED
        self._give_back(abandoned=True)
        self.transport.loseConnection()

    # -- a client that does not read ----------------------------------------------------

    def pauseProducing(self) -> None:
        self._paused = True
        if self._server is not None:
            self._server.transport.pauseProducing()
        self.factory.sends.paused(self)

    def resumeProducing(self) -> None:
        self._paused = False
        self.factory.sends.resumed(self)
        if self._server is not None:
            self._server.transport.resumeProducing()

    def stopProducing(self) -> None:
        pass

    def sent_mark(self) -> Optional[int]:
        unsent = unsent_bytes(self.transport)
        return None if unsent is None else -unsent

    def send_timed_out(self) -> None:
        self.transport.abortConnection()

    # -- cancel -----------------------------------------------------------------------

    def cancel_requested(self) -> str:
        """
        A CancelRequest with this client's key: cancel its query if one
        runs on its server connection now; if it waits for a connection,
        it waits no more (57014); otherwise there is nothing to cancel.

        @return: what it did, a L{CANCEL_OUTCOMES} value.
        """
        server = self._server
        if server is not None:
            if server.replies.running:
                server.cancel()
                return "forwarded"
            return "nothing_running"
        if self._waiting is not None and self._held:
            self._stop_waiting()
            self._end_admission(reported=False)
            self._refuse("timeout", "canceling statement due to user request")
            return "dequeued"
        return "nothing_running"

    # -- the idle sweep -----------------------------------------------------------------

    @property
    def busy(self) -> bool:
        return self._server is not None or self._waiting is not None

    def close_idle(self) -> None:
        self._fatal("timeout", "closing an idle client connection (client_idle_timeout)")

    def finish_up(self) -> None:
        if self._server is None:
            if self.state == READY:
                self.transport.write(pg.error_response(
                    pg.ADMIN_SHUTDOWN, "the proxy is shutting down", b"FATAL"))
            self.transport.loseConnection()


class TransactionFactory(Factory):
    """
    Builds a L{TransactionFrontend} per client of one listener.

    @ivar cancel_keys: the clients, by the (pid, key) the proxy gave them.
    """

    #: The listener's hooks and the clusters its route hook may choose, by
    #: name (set by the service; L{poolproxy.proxy.hooked}).
    hooks: ListenerHooks = NO_HOOKS
    routes: Dict[str, Any] = {}

    noisy = False
    log = Logger()

    def __init__(self, name: str, codec: Any, admission: Admission, cluster: "Cluster",
                 users: Users, clock: Any = None, session_pooling: bool = False,
                 max_message: int = 64 * 1024 * 1024, send_timeout: float = 0.0,
                 statement_names: Optional[StatementNames] = None,
                 stats: Optional[TransactionStats] = None, login_timeout: float = 10.0,
                 tls: Optional[IOpenSSLServerConnectionCreator] = None,
                 tls_required: bool = False) -> None:
        """
        @param login_timeout: seconds a client may take over its start-up
            and authentication (0: no limit).
        @param tls: what makes the TLS of clients that ask for it
            (SSLRequest); without it they are answered C{N}.
        @param tls_required: refuse clients that do not ask (with C{tls}).
        """
        self.name = name
        self.codec = codec
        self.admission = admission
        self.cluster = cluster
        self.users = users
        self.clock = default_reactor(clock)
        self.session_pooling = session_pooling
        self.login_timeout = login_timeout
        self.max_message = max_message
        self.tls = tls
        self.tls_required = tls_required and tls is not None
        self.stats = stats if stats is not None else TransactionStats()
        self.clients: "set[TransactionFrontend]" = set()
        self.sends = SendTimeouts(self.clock, send_timeout, self.stats)
        number = next(_LISTENER_NUMBERS)
        self.statement_names = statement_names or StatementNames(
            b"poolproxy_%d_" % number if number else b"poolproxy_")
        self.stats.statement_names = self.statement_names
        self.cancel_keys: Dict[Tuple[int, bytes], TransactionFrontend] = {}
        #: Batches run again after a stale cached plan.
        self.retries = 0
        self._worker = _worker_number()
        #: Under --workers N: cancels for other workers' clients go there.
        self.relay: Optional[CancelRelay] = None
        if self._worker:
            self.relay = CancelRelay(self.clock, name, self._worker, self._cancel_here)
            self.relay.start()

    def buildProtocol(self, addr: Any) -> TransactionFrontend:
        return TransactionFrontend(self)

    def new_pid(self) -> int:
        """
        A process id to show a client: random, never a server's; its low
        byte is the worker's number, so that a cancel can find its worker.
        """
        return ((secrets.randbits(23) or 1) << 8) | (self._worker & 0xff)

    def pinned(self, client: TransactionFrontend, effect: str) -> None:
        self.stats.pinned.add(effect)
        self.log.info("client {user}@{database} ran a statement whose effect outlives its "
                      "transaction ({effect}): it keeps its server connection until it leaves",
                      user=client.user.decode("utf-8", "replace"),
                      database=client.database.decode("utf-8", "replace"), effect=effect)

    def hook_refused(self, point: str, client: Optional[HookClient],
                     why: Optional[str] = None) -> None:
        """A login refused by a hook's answer: one line per interval."""
        hooks = self.hooks
        if client is not None:
            hooks.throttled.warn((self.name, point, "refused"),
                                 "listener {listener}: the {point} hook refused user "
                                 "{user} of database {database}{why}",
                                 listener=self.name, point=point, user=client.username,
                                 database=client.database, why=f" ({why})" if why else "")

    def auth_failed(self, user: bytes, why: str) -> None:
        self.log.info("authentication failed for user {user}: {why}",
                      user=user.decode("utf-8", "replace"), why=why)

    def cancel(self, pid: int, key: bytes) -> None:
        """A CancelRequest came: for a client here, or another worker's."""
        if self._cancel_here(pid, key):
            return
        if self.relay is not None and self.relay.forward(pid, key):
            self.stats.cancels.add("forwarded_to_worker")
        else:
            self.stats.cancels.add("unknown_key")

    def _cancel_here(self, pid: int, key: bytes) -> bool:
        client = self.cancel_keys.get((pid, key))
        if client is None:
            return False
        self.stats.cancels.add(client.cancel_requested())
        return True
