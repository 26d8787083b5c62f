"""
Protocol-level prepared statements under transaction pooling.

A client prepares a named statement on whatever server connection it holds
for that transaction, and uses it in later ones, on other connections.  So
statements are renamed: each distinct definition (query text and parameter
types) gets one name on every server connection (L{StatementNames}); each
client keeps its own names for them (L{ClientStatements}); each server
connection keeps which it has prepared, most recently used last, and closes
the least recently used past its bound (L{ServerStatements}).  When a
client uses a statement its connection lacks, the proxy sends the Parse
first and swallows its ParseComplete; a Parse of a statement the
connection has is answered by the proxy; a client's Close is answered by
the proxy (the statement stays prepared for others).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Dict, List, Optional, Set, Tuple

from poolproxy.codecs.postgres import message


class StatementNames:
    """
    The server-side name of each distinct statement definition: the same on
    every server connection, so a statement prepared for one client serves
    every client that prepares the same text.
    """

    def __init__(self, prefix: bytes = b"poolproxy_") -> None:
        self.prefix = prefix
        self._names: Dict[bytes, bytes] = {}
        self._count = 0
        # Names whose Parse a server has accepted: a client's Parse of one
        # is answered by the proxy without a server connection (the server
        # that lacks it gets the Parse when the client first uses it).
        self._parsed: Set[bytes] = set()

    def renew(self, definition: bytes) -> bytes:
        """
        A new server name for C{definition}: its plans went stale (DDL
        changed what it returns), so every connection parses it afresh.
        """
        self._count += 1
        name = self._names[definition] = self.prefix + str(self._count).encode()
        return name

    def parsed(self, name: bytes) -> None:
        self._parsed.add(name)

    def known(self, definition: bytes) -> Optional[bytes]:
        """The name of C{definition} if a server has parsed it, else L{None}."""
        name = self._names.get(definition)
        return name if name is not None and name in self._parsed else None

    def name_for(self, definition: bytes) -> bytes:
        name = self._names.get(definition)
        if name is None:
            self._count += 1
            name = self._names[definition] = self.prefix + str(self._count).encode()
        return name

    def __len__(self) -> int:
        return len(self._names)


class ClientStatements:
    """
    One client's named statements: its name -> definition (whose server
    name L{StatementNames} keeps).
    """

    def __init__(self) -> None:
        self.named: Dict[bytes, bytes] = {}
        #: The client's last Parse of the unnamed statement, whole: sent again
        #: on a connection that has another unnamed statement (lib/pq sends
        #: Parse+Describe+Sync, then Bind+Execute+Sync).
        self.unnamed: Optional[bytes] = None

    def clear(self) -> None:
        self.named.clear()
        self.unnamed = None


class ServerStatements:
    """
    The statements prepared on one server connection, least recently used
    first, at most C{limit}.

    @ivar unnamed_owner: who last parsed the unnamed statement here (an
        opaque token, the client), or L{None} if nobody or unknown.
    """

    def __init__(self, limit: int = 200) -> None:
        self.limit = limit
        self._prepared: "OrderedDict[bytes, None]" = OrderedDict()
        self.unnamed_owner: object = None

    def __contains__(self, name: bytes) -> bool:
        return name in self._prepared

    def __len__(self) -> int:
        return len(self._prepared)

    def use(self, name: bytes) -> None:
        self._prepared.move_to_end(name)

    def add(self, name: bytes) -> List[bytes]:
        """Record C{name} as prepared; return the names to close to stay in bounds."""
        self._prepared[name] = None
        evicted = []
        while len(self._prepared) > self.limit:
            old, _ = self._prepared.popitem(last=False)
            evicted.append(old)
        return evicted

    def discard(self, name: bytes) -> None:
        self._prepared.pop(name, None)

    def clear(self) -> None:
        self._prepared.clear()
        self.unnamed_owner = None


# -- reading and rewriting the messages that name statements ---------------------

def parse_fields(body: bytes) -> Tuple[bytes, bytes]:
    """A Parse body's statement name and definition (query and parameter types)."""
    end = body.index(b"\0")
    return body[:end], body[end + 1:]


def parse_query(definition: bytes) -> bytes:
    """The query text of a definition."""
    return definition[:definition.find(b"\0")]


def make_parse(name: bytes, definition: bytes) -> bytes:
    return message(b"P", name + b"\0" + definition)


def bind_statement(body: bytes) -> Tuple[int, int]:
    """Where a Bind body's statement name starts and ends (after the portal name)."""
    start = body.index(b"\0") + 1
    return start, body.index(b"\0", start)


def rename_bind(body: bytes, start: int, end: int, name: bytes) -> bytes:
    return message(b"B", body[:start] + name + body[end:])


def make_close(name: bytes) -> bytes:
    return message(b"C", b"S" + name + b"\0")


def named_target(body: bytes) -> Tuple[bytes, bytes]:
    """A Describe or Close body's kind (C{b"S"} or C{b"P"}) and name."""
    return body[:1], body[1:body.index(b"\0", 1)]


__all__ = ["StatementNames", "ClientStatements", "ServerStatements", "parse_fields",
           "make_parse", "bind_statement", "rename_bind", "make_close", "named_target"]
