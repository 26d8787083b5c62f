"""
The operator's admin API: take backends out of rotation and back, change
their weights, and pause or resume a listener, at run time.

Every request is a C{POST} carrying C{Authorization: Bearer TOKEN} (the first
line of C{admin_token_file}); paths are relative to where the resource is
mounted (C{/admin} on the metrics endpoint)::

    POST /admin/backends/{cluster}/{backend}/drain      no new requests; in-flight finish
    POST /admin/backends/{cluster}/{backend}/disable    out of rotation
    POST /admin/backends/{cluster}/{backend}/enable     back in rotation
    POST /admin/backends/{cluster}/{backend}/weight?value=N
    POST /admin/listeners/{name}/pause                  stop accepting new connections
    POST /admin/listeners/{name}/resume                 accept again

Names are percent-decoded path segments (C{127.0.0.1%3A6379} or
C{127.0.0.1:6379}; a C{/} inside a name is C{%2F}).  Answers are JSON:
C{{"ok": true, "backend": {...}}} (or C{"listener"}), or
C{{"ok": false, "error": "one line"}} with 400 (bad weight), 401 (no or wrong
token; nothing changes), 404 (unknown cluster, backend, listener or action),
405 (not a POST), 409 (listener not listening) or 501 (the listener's port
cannot pause).  Every action and every refused attempt is logged, with the
client's address.

Pausing a listener holds its L{AcceptGate}, which calls C{stopReading()} on
its listening port: Twisted's TCP (and UNIX) ports are file descriptors the
reactor watches for readable (= a connection is waiting to be accepted), so
while paused the reactor never calls C{accept()}.  Existing connections are
separate descriptors and go on as before.  New connections still complete
the kernel's handshake and wait in the listen backlog (or are refused once it
is full); C{resume} releases the gate and they are accepted then, unless a
connection limit holds it too (then as clients leave).  A port without these
methods (not a file descriptor the reactor reads) answers 501.
"""

from __future__ import annotations

import hmac
import json
import re
from typing import Any, Callable, Dict, List, Optional, Set, Tuple, Union

from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Request

from poolproxy.backends.cluster import Backend, Cluster
from poolproxy.ops.view import ListenerView, ProxyView


#: The largest weight the API sets: a consistent-hash ring holds 160 points
#: per unit of weight, and rebuilding it runs in the reactor thread.
MAX_WEIGHT = 1000

_DIGITS = re.compile(r"[0-9]{1,9}\Z")


def bearer_ok(request: Request, token: bytes) -> bool:
    """Whether C{request} carries C{Authorization: Bearer TOKEN} (compared in constant time)."""
    header = request.getHeader(b"authorization")
    if header is None:
        return False
    if isinstance(header, str):
        header = header.encode("latin-1")
    scheme, _, given = header.strip().partition(b" ")
    if scheme.lower() != b"bearer":
        return False
    # Compare bytes: compare_digest refuses non-ASCII str.
    return hmac.compare_digest(given.strip(), token)


class AdminError(Exception):
    """
    A refused request: an HTTP status and a one-line reason.
    """

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def _client(request: Request) -> str:
    """The client's address as HOST:PORT (or what the transport calls it)."""
    address = request.getClientAddress()
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    if host is not None and port is not None:
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return str(address)


def _text(segment: bytes) -> str:
    """A decoded path segment as text (bytes that are not UTF-8 are escaped)."""
    return segment.decode("utf-8", "backslashreplace")


class AdminResource(Resource):
    """
    The whole admin API as one leaf: it routes on the path below it.
    """

    isLeaf = True
    log = Logger()

    def __init__(self, service: ProxyView, token: Union[str, Callable[[], Optional[str]]]) -> None:
        """
        @param token: the bearer token, or what gives the one in use when a
            request comes (SIGHUP re-reads C{admin_token_file}).
        """
        super().__init__()
        self._token = token if callable(token) else (lambda: token)
        if not self._token():
            raise ValueError("the admin API needs a non-empty token")
        self.service = service
        #: names of the listeners paused through this API
        self.paused: Set[str] = set()

    # -- request handling ---------------------------------------------------

    def render(self, request: Request) -> bytes:
        path = [_text(s) for s in request.postpath or []]
        while path and path[-1] == "":
            path.pop()  # a trailing slash
        target = "/" + "/".join(path)
        action = path[-1] if path else ""
        client = _client(request)
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Cache-Control", b"no-store")
        try:
            if request.method != b"POST":
                request.setHeader(b"Allow", b"POST")
                raise AdminError(405, f"method {_text(request.method)} not allowed; use POST")
            if not self._authorized(request):
                request.setHeader(b"WWW-Authenticate", b"Bearer")
                raise AdminError(401, "missing or wrong bearer token")
            body = self._dispatch(request, path)
        except AdminError as e:
            self.log.warn(
                "admin {action} {target} refused for {client}: {code} {reason}",
                action=action, target=target, client=client, code=e.code, reason=e.reason)
            request.setResponseCode(e.code)
            return _json({"ok": False, "error": e.reason})
        self.log.info("admin {action} {target} by {client}: done",
                      action=action, target=target, client=client)
        return _json(dict(ok=True, **body))

    def _authorized(self, request: Request) -> bool:
        token = self._token()
        if not token:
            return False
        return bearer_ok(request, token.encode("utf-8"))

    def _dispatch(self, request: Request, path: List[str]) -> Dict[str, Any]:
        if len(path) == 4 and path[0] == "backends":
            cluster, backend = self._backend(path[1], path[2])
            return {"backend": self._backend_action(request, cluster, backend, path[3])}
        if len(path) == 3 and path[0] == "listeners":
            listener = self._listener(path[1])
            return {"listener": self._listener_action(listener, path[2])}
        raise AdminError(404, "no such admin resource; see /admin/backends/CLUSTER/BACKEND/ACTION "
                              "and /admin/listeners/NAME/ACTION")

    # -- backends -------------------------------------------------------------

    def _backend(self, cluster_name: str, backend_name: str) -> Tuple[Cluster, Backend]:
        cluster = self.service.clusters.get(cluster_name)
        if cluster is None:
            raise AdminError(404, f"no cluster {cluster_name!r}")
        for backend in cluster.backends:
            if backend.name == backend_name:
                return cluster, backend
        raise AdminError(404, f"cluster {cluster_name!r} has no backend {backend_name!r}")

    def _backend_action(self, request: Request, cluster: Cluster, backend: Backend,
                        action: str) -> Dict[str, Any]:
        if action == "drain":
            backend.draining = True
        elif action == "disable":
            backend.disabled = True
            backend.draining = False
        elif action == "enable":
            backend.disabled = False
            backend.draining = False
        elif action == "weight":
            cluster.set_weight(backend, _weight(request))
        else:
            raise AdminError(404, f"no backend action {action!r}; use drain, disable, "
                                  f"enable or weight")
        return describe_backend(cluster, backend)

    # -- listeners ------------------------------------------------------------

    def _listener(self, name: str) -> ListenerView:
        for listener in self.service.listeners:
            if listener.name == name:
                return listener
        raise AdminError(404, f"no listener {name!r}")

    def _listener_action(self, listener: ListenerView, action: str) -> Dict[str, Any]:
        if action not in ("pause", "resume"):
            raise AdminError(404, f"no listener action {action!r}; use pause or resume")
        # Twisted's TCP and UNIX ports can stop reading; any other kind is checked for it.
        port: Any = listener.port
        if port is None:
            raise AdminError(409, f"listener {listener.name!r} is not listening")
        if not (callable(getattr(port, "stopReading", None))
                and callable(getattr(port, "startReading", None))):
            raise AdminError(501, f"listener {listener.name!r}: its port "
                                  f"({type(port).__name__}) cannot pause")
        if action == "pause":
            listener.gate.hold("admin")
            self.paused.add(listener.name)
        else:
            listener.gate.release("admin")
            self.paused.discard(listener.name)
        return {"name": listener.name, "paused": listener.name in self.paused}


def describe_backend(cluster: Cluster, backend: Backend) -> Dict[str, Any]:
    """A backend as the API shows it."""
    return {"cluster": cluster.name, "name": backend.name, "state": backend.state,
            "weight": backend.weight}


def _weight(request: Request) -> int:
    """
    The C{value} query argument as a weight.

    @raise AdminError: 400 if it is missing, repeated or not an int from 1 to
        L{MAX_WEIGHT}.
    """
    values: List[bytes] = request.args.get(b"value", []) if request.args else []
    if len(values) != 1:
        raise AdminError(400, "weight needs exactly one ?value=N (a positive integer)")
    text = _text(values[0])
    if not _DIGITS.match(text) or not 1 <= int(text) <= MAX_WEIGHT:
        raise AdminError(400, f"weight must be an integer from 1 to {MAX_WEIGHT}, "
                              f"not {text[:40]!r}")
    return int(text)


def _json(body: Dict[str, Any]) -> bytes:
    return (json.dumps(body, sort_keys=True) + "\n").encode("utf-8")


def build_admin(service: ProxyView, token: Union[str, Callable[[], Optional[str]]]) -> Resource:
    """
    The admin API for C{service}, guarded by bearer C{token} (or the one a
    callable gives at each request); mount it as the C{admin} child of the
    web root.
    """
    return AdminResource(service, token)
