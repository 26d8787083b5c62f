"""
Request mode's hooks (L{poolproxy.hooks}): a request whose listener has an
C{authenticate}, C{route} or C{allow} hook goes through them, in that
order, after its head is read and before it is admitted or leases a
backend connection, so a slow hook holds no worker slot and no backend
connection.  Each may answer at once or later (a Deferred, a coroutine):
the request waits, its body timers running; the requests behind it on
its connection wait their turn, as they always do.

What a hook's result means (L{poolproxy.proxy.hooked}) and what the client
gets when it refuses:

  - C{authenticate}: no Authorization header, or a refusal (or failure):
    401 with C{WWW-Authenticate: Basic realm="poolproxy"}; Basic
    credentials that do not decode: 400.  An accepted Authorization value
    is remembered for the connection: the same value again is not asked
    about again (a different one, or a reloaded hook, is).
  - C{route}: a cluster the listener does not serve: 502 (the proxy has
    nowhere to send it, a retry will not help); the hook failed: 503 with
    C{Retry-After} (it could not decide now; it may next time).
  - C{allow}: a refusal text: 403 with that text; the hook failed: 503
    (the policy could not be asked: not the client's fault, nor a denial).
"""

from __future__ import annotations

import base64
import binascii
from typing import TYPE_CHECKING, Any, Dict, Optional, Tuple


from poolproxy.codecs.http_parse import RequestHead
from poolproxy.hooks.calling import Hook, HookFailure, ListenerHooks
from poolproxy.hooks.subjects import HookRequest
from poolproxy.proxy.hooked import identity_of, refusal, routed_cluster

if TYPE_CHECKING:
    from poolproxy.proxy.exchange import Exchange

#: What a 401 tells the client to send.
CHALLENGE = ((b"WWW-Authenticate", b'Basic realm="poolproxy"'),)


def headers_of(head: RequestHead) -> Dict[str, str]:
    """A head's headers for hooks: lower-case names; repeated ones joined with C{", "}."""
    headers: Dict[str, str] = {}
    for name, value in head.headers:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    return headers


def basic_credentials(value: bytes) -> Optional[Tuple[str, str]]:
    """
    The (user, password) of an Authorization header's value with the Basic
    scheme (RFC 7617; UTF-8, or Latin-1 when it is not); L{None} for
    another scheme.

    @raise ValueError: Basic credentials that are not base64 of C{user:password}.
    """
    scheme, _, token = value.strip().partition(b" ")
    if scheme.lower() != b"basic":
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not base64") from None
    user, colon, password = decoded.partition(b":")
    if not colon:
        raise ValueError("no colon")
    return _text(user), _text(password)


def _text(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


class RequestHooks:
    """
    One request on its way through the hooks: each step calls its hook, if
    the listener (still) has one, and goes on with the result, at once for
    a plain value, when it fires for a Deferred.  A result that comes after
    the exchange ended (its client left) is dropped.
    """

    __slots__ = ("exchange", "hooks", "_request")

    def __init__(self, exchange: "Exchange", hooks: ListenerHooks) -> None:
        self.exchange = exchange
        self.hooks = hooks
        self._request: Optional[HookRequest] = None

    # -- authenticate ----------------------------------------------------------

    def authenticate(self) -> None:
        hook = self.hooks.authenticate
        if hook is None:
            self.route()
            return
        exchange = self.exchange
        frontend = exchange.frontend
        value = exchange.head.header(b"authorization")
        if value is None:
            # The hook is not asked: there is nothing to ask it about.
            exchange.refuse(401, "authentication required", CHALLENGE)
            return
        if frontend.authorized == (hook, value):
            self.route()  # accepted before on this connection
            return
        try:
            credentials = basic_credentials(value)
        except ValueError:
            exchange.refuse(400, "malformed Basic credentials in the Authorization header")
            return
        client = frontend.hook_subject()
        client.username, client.password = credentials or (None, None)
        client.headers = headers_of(exchange.head)
        hook.then(client, self._authenticated, hook, value)

    def _authenticated(self, result: Any, hook: Hook, value: bytes) -> None:
        frontend = self.exchange.frontend
        client = frontend.hook_subject()
        client.password = None  # only while the hook runs
        if self.exchange.finished:
            return
        accepted, identity = identity_of(result, client)
        if not accepted:
            hook.refused += 1
            client.identity = None
            frontend.authorized = None
            self.exchange.refuse(401, "authentication failed", CHALLENGE)
            return
        client.identity = identity
        frontend.authorized = (hook, value)
        self.route()

    # -- route ---------------------------------------------------------------------

    def request(self, cluster: str) -> HookRequest:
        """The request as hooks see it (one for both route and allow)."""
        request = self._request
        if request is None:
            exchange = self.exchange
            frontend = exchange.frontend
            factory = frontend.factory
            head = exchange.head
            key = factory.route_key(head) if factory.route_key is not None else None
            self._request = request = HookRequest(frontend.hook_subject(), cluster, key)
            request.method = head.method.decode("latin-1")
            request.path = head.target.decode("latin-1")
            host = head.header(b"host")
            request.host = host.decode("latin-1") if host is not None else None
            request.headers = headers_of(head)
        request.cluster = cluster
        return request

    def route(self) -> None:
        hook = self.hooks.route
        own = self.exchange.frontend.factory.cluster
        if hook is None:
            self.allow(own)
            return
        hook.then(self.request(own.name), self._routed, hook)

    def _routed(self, result: Any, hook: Hook) -> None:
        exchange = self.exchange
        if exchange.finished:
            return
        factory = exchange.frontend.factory
        cluster, why = routed_cluster(result, factory.routes, factory.cluster)
        if cluster is None:
            hook.refused += 1
            if isinstance(result, HookFailure):
                exchange.refuse(503, "the route hook failed")  # logged by the hook
                return
            # One key, not one per name: the name may come from the client.
            factory.problems.warn(
                ("route", "unknown cluster"),
                "http {listener}: the route hook chose {result!r}, not a cluster of this "
                "listener's protocol; answered 502", listener=factory.name,
                result=str(result)[:100])
            exchange.refuse(502, (why or "").replace("poolproxy: ", "", 1))
            return
        self.allow(cluster)

    # -- allow -----------------------------------------------------------------------

    def allow(self, cluster: Any) -> None:
        hook = self.hooks.allow
        if hook is None:
            self.exchange.hooks_passed(cluster)
            return
        hook.then(self.request(cluster.name), self._allowed, hook, cluster)

    def _allowed(self, result: Any, hook: Hook, cluster: Any) -> None:
        exchange = self.exchange
        if exchange.finished:
            return
        text = refusal(result)
        if text is None:
            exchange.hooks_passed(cluster)
            return
        hook.refused += 1
        if isinstance(result, HookFailure):
            exchange.refuse(503, "the allow hook failed")  # logged by the hook
        else:
            exchange.refuse(403, text, prefixed=False)


__all__ = ["CHALLENGE", "RequestHooks", "basic_credentials", "headers_of"]
