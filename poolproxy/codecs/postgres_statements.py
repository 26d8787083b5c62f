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

    Bounded (C{max_definitions}, C{max_bytes}): an application that prepares
    statements with their literals inlined makes a new definition per
    query, and clients come and go for months.  Past a bound the oldest
    definitions are forgotten; one still in use gets a new name on its next
    use, and is parsed again on each connection (which closes the old name
    when it falls out of that connection's bound).
    """

    def __init__(self, prefix: bytes = b"poolproxy_", max_definitions: int = 10_000,
                 max_bytes: int = 64 * 1024 * 1024) -> None:
        self.prefix = prefix
        self.max_definitions = max_definitions
        self.max_bytes = max_bytes
        # Oldest first (a dict keeps insertion order): what a bound forgets.
        self._names: Dict[bytes, bytes] = {}
        self._bytes = 0
        self._count = 0
        # Names whose Parse a server has accepted: a client's Parse of one
        # is answered by the proxy without a server connection (the server
        # that lacks it gets the Parse when the client first uses it).
        self._parsed: Set[bytes] = set()
        #: Definitions forgotten to stay within the bounds.
        self.forgotten = 0

    def renew(self, definition: bytes) -> bytes:
        """
        A new server name for C{definition}: its plans went stale (DDL
        changed what it returns), so every connection parses it afresh.
        """
        old = self._names.pop(definition, None)
        if old is not None:
            self._bytes -= len(definition)
            self._parsed.discard(old)
        return self._add(definition)

    def parsed(self, name: bytes) -> None:
        self._parsed.add(name)

    def known(self, definition: bytes) -> Optional[bytes]:
        """The name of C{definition} if a server has parsed it, else L{None}."""
        name = self._names.get(definition)
        return name if name is not None and name in self._parsed else None

    def name_for(self, definition: bytes) -> bytes:
        name = self._names.get(definition)
        if name is None:
            name = self._add(definition)
        return name

    def _add(self, definition: bytes) -> bytes:
        self._count += 1
        name = self._names[definition] = self.prefix + str(self._count).encode()
        self._bytes += len(definition)
        names = self._names
        while len(names) > self.max_definitions or (self._bytes > self.max_bytes
                                                    and len(names) > 1):
            oldest = next(iter(names))
            self._parsed.discard(names.pop(oldest))
            self._bytes -= len(oldest)
            self.forgotten += 1
        return name

    def __len__(self) -> int:
        return len(self._names)

    @property
    def size(self) -> int:
        """The bytes of the definitions kept."""
        return self._bytes


class StatementLimit(Exception):
    """A client holds as many named statements as it may."""


class ClientStatements:
    """
    One client's named statements: its name -> definition (whose server
    name L{StatementNames} keeps), within C{max_statements} and
    C{max_bytes} so that one client cannot make the proxy hold without end
    what it parses (PostgreSQL's own limit is the server's memory, which a
    pool shares).
    """

    def __init__(self, max_statements: int = 10_000, max_bytes: int = 16 * 1024 * 1024) -> None:
        self.max_statements = max_statements
        self.max_bytes = max_bytes
        self.named: Dict[bytes, bytes] = {}
        self._bytes = 0
        #: The client's last Parse of the unnamed statement, whole: sent again
        #: on a connection that has another unnamed statement (lib/pq sends
        #: Parse+Describe+Sync, then Bind+Execute+Sync).
        self.unnamed: Optional[bytes] = None

    def add(self, name: bytes, definition: bytes) -> None:
        """Keep C{name}; L{StatementLimit} if that would pass a bound."""
        if (len(self.named) >= self.max_statements
                or self._bytes + len(name) + len(definition) > self.max_bytes):
            raise StatementLimit(
                f"too many prepared statements for one client (at most {self.max_statements}, "
                f"{self.max_bytes // (1024 * 1024)} MiB of their text): close some")
        self.named[name] = definition
        self._bytes += len(name) + len(definition)

    def forget(self, name: bytes) -> None:
        definition = self.named.pop(name, None)
        if definition is not None:
            self._bytes -= len(name) + len(definition)

    def clear(self) -> None:
        self.named.clear()
        self._bytes = 0
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


__all__ = ["StatementNames", "StatementLimit", "ClientStatements", "ServerStatements", "parse_fields",
           "make_parse", "bind_statement", "rename_bind", "make_close", "named_target"]
