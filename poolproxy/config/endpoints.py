"""
Endpoint strings: checking them when the configuration is read, and turning
them into Twisted endpoints when the service starts.

Listeners use Twisted server endpoint strings (C{tcp:6380:interface=127.0.0.1});
an C{ssl:} one serves its certificate through a L{ServerTLS}, which SIGHUP
reloads.  Backends use client endpoint strings (C{tcp:host=127.0.0.1:port=6379})
or the shorthand C{HOST:PORT} / C{[V6ADDR]:PORT}; TLS to them is the
C{backend_tls} setting's, never an C{ssl:} or C{tls:} string.
"""

from __future__ import annotations

import re
import socket
from typing import Any, NamedTuple, Optional

from twisted.internet.endpoints import (
    TCP4ServerEndpoint,
    TCP6ServerEndpoint,
    clientFromString,
    serverFromString,
)
from twisted.internet.interfaces import IStreamClientEndpoint, IStreamServerEndpoint
from twisted.internet.testing import MemoryReactor

from poolproxy.backends.discovery import DISCOVERY_KINDS, parse_discovery
from poolproxy.config.settings import ConfigError
from poolproxy.config.tls import ServerTLS, is_tls_listener

_SHORTHAND = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9._-]+)):(?P<port>\d{1,5})$")
_ENDPOINT_TYPES = {"tcp", "tcp6", "ssl", "tls", "unix", "systemd"}
_TCP_CLIENT = re.compile(r"^tcp6?:(?=.*\bhost=(?P<host>(?:\\:|[^:])+))(?=.*\bport=(?P<port>\d+))")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:")


def expand_backend(description: str) -> str:
    """
    Turn the C{HOST:PORT} shorthand into a client endpoint string; return any
    other description unchanged.
    """
    m = _SHORTHAND.match(description)
    if m is None or (m.group("host") or "").lower() in _ENDPOINT_TYPES:
        return description
    port = int(m.group("port"))
    if m.group("v6"):
        # Twisted has no tcp6 client endpoint: tcp connects to IPv6 literals.
        return f"tcp:host={_escape(m.group('v6'))}:port={port}"
    return f"tcp:host={m.group('host')}:port={port}"


def backend_name(description: str) -> str:
    """
    A short name for a backend: C{HOST:PORT} for TCP, else the description.
    """
    m = _SHORTHAND.match(description)
    if m is not None and (m.group("host") or "").lower() not in _ENDPOINT_TYPES:
        return description
    m2 = _TCP_CLIENT.match(description)
    if m2 is not None:
        host = m2.group("host").replace(chr(92), "")
        if ":" in host:
            host = f"[{host}]"
        return f"{host}:{m2.group('port')}"
    return description


def backend_host(description: str) -> Optional[str]:
    """
    The host (a name, or an IP address without brackets) a backend's TCP
    address connects to, or L{None} for any other kind (unix).
    """
    m = _SHORTHAND.match(description)
    if m is not None and (m.group("host") or "").lower() not in _ENDPOINT_TYPES:
        return m.group("v6") or m.group("host")
    m2 = _TCP_CLIENT.match(description)
    if m2 is not None:
        return m2.group("host").replace(chr(92), "")
    return None


def client_endpoint(reactor: Any, description: str) -> IStreamClientEndpoint:
    """
    Build the client endpoint for a backend description (shorthand allowed).
    """
    return clientFromString(reactor, expand_backend(description))


#: Listen backlog for tcp listeners that do not set one: Twisted's default
#: of 50 drops connection bursts that a proxy is there to absorb.
DEFAULT_BACKLOG = 1024


def with_backlog(description: str, backlog: int = DEFAULT_BACKLOG) -> str:
    """
    A tcp/tcp6/ssl server endpoint description with C{backlog} (the
    C{listen_backlog} setting) added unless it has one.
    """
    kind = description.split(":", 1)[0].lower()
    if kind in ("tcp", "tcp6", "ssl") and "backlog=" not in description:
        return f"{description}:backlog={backlog}"
    return description


def server_endpoint(reactor: Any, description: str,
                    backlog: int = DEFAULT_BACKLOG,
                    tls: Optional[ServerTLS] = None) -> IStreamServerEndpoint:
    """
    Build the server endpoint for a listener description.  An C{ssl:} one
    makes each connection's TLS with C{tls} (one made from the description
    if not given: keep it to reload its certificate).
    """
    description = with_backlog(description, backlog)
    if is_tls_listener(description):
        return (tls or ServerTLS(description, description)).endpoint(reactor, description)
    return serverFromString(reactor, description)


class TcpListenAddress(NamedTuple):
    """Where a tcp or tcp6 listener binds (see L{tcp_listen_address})."""

    family: int
    host: str
    port: int
    backlog: int


def tcp_listen_address(description: str,
                       backlog: int = DEFAULT_BACKLOG) -> Optional[TcpListenAddress]:
    """
    The address a C{tcp:} or C{tcp6:} listener description binds, or L{None}
    for any other kind (unix, ssl, systemd): multi-process workers bind such
    addresses themselves, with SO_REUSEPORT.
    """
    endpoint = server_endpoint(MemoryReactor(), description, backlog)
    if isinstance(endpoint, TCP6ServerEndpoint):
        family = socket.AF_INET6
    elif isinstance(endpoint, TCP4ServerEndpoint):
        family = socket.AF_INET
    else:
        return None
    host = endpoint._interface or ("::" if family == socket.AF_INET6 else "0.0.0.0")
    return TcpListenAddress(family, host, endpoint._port, endpoint._backlog)


def check_server(description: str, where: str) -> None:
    """
    Parse a server endpoint string without listening on it.

    @raise ConfigError: naming C{where} if the string is not a valid endpoint,
        or if an C{ssl:} one's certificate and key do not load.
    """
    if description.split(":", 1)[0].strip().lower() == "tls":
        # Twisted's directory-of-PEMs endpoint: its ALPN answer is a fatal
        # alert for every client that offers ALPN (curl, browsers).
        raise ConfigError(f"{where}: {description!r}: tls: listeners are not supported; use "
                          "ssl:PORT:privateKey=KEY.pem:certKey=CERT.pem, which SIGHUP reloads "
                          "(docs/tls.md)")
    if is_tls_listener(description):
        ServerTLS(description, f"{where} {description}")  # reads the files: a bad one is named here
    try:
        endpoint = server_endpoint(MemoryReactor(), description)
    except (KeyError, IndexError) as e:
        if description.split(":", 1)[0].strip().lower() != "systemd":
            raise ConfigError(f"{where}: bad server endpoint {description!r}: {_reason(e)}") from None
        # Twisted looks the socket up among those systemd passed (LISTEN_FDS).
        which = f"named {e.args[0]!r}" if isinstance(e, KeyError) else "at that index"
        raise ConfigError(f"{where}: bad server endpoint {description!r}: systemd passed no "
                          f"socket {which} (start it through its .socket unit, "
                          "docs/deployment.md#socket-activation)") from None
    except Exception as e:
        raise ConfigError(f"{where}: bad server endpoint {description!r}: {_reason(e)}") from None
    _check_port(endpoint, 0, description, where, "server")


def check_client(description: str, where: str) -> None:
    """
    Parse a client endpoint string (or shorthand) without connecting.

    @raise ConfigError: naming C{where} if the string is not a valid endpoint,
        or if it is an C{ssl:} or C{tls:} one: TLS to backends is set with
        C{backend_tls}, where it is verified, counted and reloaded.
    """
    kind = description.split(":", 1)[0].strip().lower()
    if kind in DISCOVERY_KINDS:  # dns:NAME:PORT, srv:_SERVICE._PROTO.NAME
        try:
            parse_discovery(description)
        except ValueError as e:
            raise ConfigError(f"{where}: {e}") from None
        return
    if kind in ("ssl", "tls"):
        raise ConfigError(f"{where}: {description!r}: {kind}: endpoints are not used for "
                          "backends; give the address (HOST:PORT or tcp:host=...:port=...) and "
                          "set backend_tls, which verifies the certificate and host name "
                          "(docs/tls.md)")
    try:
        endpoint = client_endpoint(MemoryReactor(), description)
    except Exception as e:
        reason = _reason(e)
        if reason.startswith("missing parameter"):
            reason += " (use tcp:host=HOST:port=PORT or HOST:PORT)"
        raise ConfigError(f"{where}: bad backend endpoint {description!r}: {reason}") from None
    _check_port(endpoint, 1, description, where, "backend")


def check_demo(description: str, where: str) -> None:
    """
    The demo backend must be a plain C{tcp:PORT[:interface=HOST]} listener,
    since the proxy connects to it by that address.
    """
    check_server(description, where)
    if demo_address(description) is None:
        raise ConfigError(f"{where}: the demo backend needs tcp:PORT[:interface=HOST], got {description!r}")


def demo_address(description: str) -> "tuple[str, int] | None":
    """
    The (host, port) the demo backend listens on, or L{None} if the
    description is not a plain TCP listener with a fixed port.
    """
    m = re.match(r"^tcp:(?:port=)?(\d+)(?::interface=([0-9.]+))?$", description)
    if m is None or int(m.group(1)) == 0:
        return None
    return (m.group(2) or "127.0.0.1", int(m.group(1)))


def _check_port(endpoint: Any, lowest: int, description: str, where: str, kind: str) -> None:
    # Twisted's parsers accept any integer; the socket call would fail later.
    port = getattr(endpoint, "_port", None)
    if isinstance(port, int) and not lowest <= port <= 65535:
        raise ConfigError(f"{where}: bad {kind} endpoint {description!r}: "
                          f"port {port} is not in {lowest}-65535")


# Twisted's parsers report mistakes as Python errors; say them in endpoint terms.
_REASONS = (
    (re.compile(r"invalid literal for int\(\) with base 10: (.*)"), "{0} is not a number"),
    (re.compile(r"got an unexpected keyword argument (.*)"), "unknown parameter {0}"),
    (re.compile(r"missing 1 required positional argument: (.*)"), "missing parameter {0}"),
    (re.compile(r"missing \d+ required positional arguments: (.*)"), "missing parameters {0}"),
)


def _reason(e: Exception) -> str:
    text = str(e).strip().splitlines()
    if not text:
        return type(e).__name__
    for pattern, template in _REASONS:
        m = pattern.search(text[0])
        if m is not None:
            return template.format(m.group(1))
    return text[0]
