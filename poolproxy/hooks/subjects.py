"""
What hooks receive: a L{HookClient} per client connection, a
L{HookRequest} per request.  Attributes a protocol does not have are
L{None}; what costs work to know (a request's command, arguments and
keys) is worked out only when a hook reads it.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional


class HookClient:
    """
    One client connection, as hooks see it; the same object for its
    whole connection.

    @ivar listener: the listener's name.
    @ivar protocol: the listener's protocol (C{redis}, C{http}...).
    @ivar host: the client's address (C{None} for a unix socket).
    @ivar port: the client's port, or L{None}.
    @ivar tls: whether it connected with TLS.
    @ivar username: the user it authenticates as (redis AUTH, http
        Authorization, postgres user), or L{None}.
    @ivar password: the password it gave, only while C{authenticate} runs;
        L{None} at other times and when the protocol gives none (postgres:
        SCRAM never reveals one).
    @ivar password_ok: whether that password matched the password file,
        L{None} when no password file is configured.
    @ivar identity: what C{authenticate} returned (its C{username} for
        C{True}), L{None} until it has.
    @ivar database: the postgres database asked for, else L{None}.
    @ivar parameters: the postgres startup parameters, else an empty dict.
    @ivar headers: the http request's headers when C{authenticate} is
        called for it (lower-case str names), else L{None}.
    @ivar state: a dict of the hooks' own, kept for the connection.
    """

    __slots__ = ("listener", "protocol", "host", "port", "tls", "username", "password",
                 "password_ok", "identity", "database", "parameters", "headers", "state")

    def __init__(self, listener: str, protocol: str, peer: Any = None,
                 tls: bool = False) -> None:
        self.listener = listener
        self.protocol = protocol
        self.host: Optional[str] = getattr(peer, "host", None)
        self.port: Optional[int] = getattr(peer, "port", None)
        self.tls = tls
        self.username: Optional[str] = None
        self.password: Optional[str] = None
        self.password_ok: Optional[bool] = None
        self.identity: Any = None
        self.database: Optional[str] = None
        self.parameters: Dict[str, str] = {}
        self.headers: Optional[Dict[str, str]] = None
        self.state: Dict[str, Any] = {}

    def __repr__(self) -> str:
        return (f"<HookClient {self.listener} {self.host}:{self.port} "
                f"user={self.username!r} identity={self.identity!r}>")


class _HttpParts:
    """What only an http request has: L{None} for the others (set per http request)."""

    method: Optional[str] = None
    path: Optional[str] = None
    host: Optional[str] = None
    headers: Optional[Dict[str, str]] = None


class HookRequest(_HttpParts):
    """
    One request, as hooks see it.

    @ivar client: the L{HookClient} that sent it.
    @ivar cluster: the cluster it goes to: the listener's, or what
        C{route} chose (C{allow} runs after C{route}).
    @ivar key: its routing key (bytes), or L{None}.
    @ivar data: its bytes as the client sent them (redis, memcached).
    @ivar method, path, host, headers: an http request's (lower-case str
        header names); L{None} in other protocols.
    """

    # Few attributes set per request: this is made for every request a
    # route or allow hook sees (the http ones are set only for http).
    __slots__ = ("client", "cluster", "key", "data", "_describe", "_frame", "_facts")

    def __init__(self, client: HookClient, cluster: str, key: Optional[bytes] = None,
                 data: bytes = b"",
                 describe: Optional[Callable[[Any], Any]] = None, frame: Any = None) -> None:
        self.client = client
        self.cluster = cluster
        self.key = key
        self.data = data
        # How to tell the command, args and keys, until a hook asks.
        self._describe = describe
        self._frame = frame
        self._facts: Any = None

    def _described(self) -> Any:
        facts = self._facts
        if facts is None:
            describe = self._describe
            facts = self._facts = (describe(self._frame) if describe is not None
                                   else (None, None, None))
        return facts

    @property
    def command(self) -> Optional[str]:
        """The command's name, upper case for redis (C{GET}), as sent for memcached (C{get})."""
        command: Optional[str] = self._described()[0]
        return command

    @property
    def args(self) -> List[bytes]:
        """Its arguments after the command name."""
        args = self._described()[1]
        return args if args is not None else []

    @property
    def keys(self) -> List[bytes]:
        """Every key it names (MGET, MSET, DEL... name several; PING none)."""
        keys = self._described()[2]
        if keys is not None:
            return keys
        return [self.key] if self.key is not None else []

    def __repr__(self) -> str:
        return f"<HookRequest {self.command or self.method} key={self.key!r} -> {self.cluster}>"


__all__ = ["HookClient", "HookRequest"]
