"""
A model redis server for in-memory tests: enough of redis's behaviour per
connection, written independently of poolproxy's codec, to answer what the
proxy forwards the way redis 7 does, including the commands whose replies
are not one per request (SUBSCRIBE, UNSUBSCRIBE, REPLCONF, CLIENT REPLY,
MONITOR) and RESP3 pushes.  Used with L{poolproxy.testing.MultiplexHarness}.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Set


def bulk(value: Optional[bytes]) -> bytes:
    return b"$-1\r\n" if value is None else b"$%d\r\n%s\r\n" % (len(value), value)


def parse_commands(buf: bytearray) -> List[List[bytes]]:
    """Cut complete RESP multibulk requests from the front of C{buf}."""
    commands = []
    while buf[:1] == b"*":
        eol = buf.find(b"\r\n")
        if eol < 0:
            break
        n = int(buf[1:eol])
        pos = eol + 2
        args = []
        for _ in range(n):
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                return commands
            size = int(buf[pos + 1:eol])
            start = eol + 2
            if len(buf) < start + size + 2:
                return commands
            args.append(bytes(buf[start:start + size]))
            pos = start + size + 2
        else:
            del buf[:pos]
            commands.append(args)
            continue
        break
    return commands


class ModelConnection:
    """One backend connection's state: its buffer, subscriptions, protocol, reply mode."""

    def __init__(self, server: "ModelRedis") -> None:
        self.server = server
        self.buf = bytearray()
        self.channels: Set[bytes] = set()
        self.resp3 = False
        self.reply = b"ON"  # CLIENT REPLY: ON, OFF, or SKIP (the next reply only)
        self.monitoring = False
        self.commands: List[List[bytes]] = []

    def feed(self, data: bytes) -> bytes:
        self.buf += data
        out = []
        for args in parse_commands(self.buf):
            self.commands.append(args)
            self.server.log.append(args)
            skip = self.reply == b"SKIP_NEXT"
            answer = self.answer(args)
            if self.reply == b"SKIP_ARMED":  # CLIENT REPLY SKIP: no reply, nor to the next
                self.reply = b"SKIP_NEXT"
                continue
            if skip:
                if self.reply == b"SKIP_NEXT":
                    self.reply = b"ON"
                continue
            if self.reply == b"OFF":
                continue
            out.append(answer)
        return b"".join(out)

    def answer(self, args: List[bytes]) -> bytes:
        name = args[0].upper()
        store = self.server.store
        if self.channels and not self.resp3 and name not in (
                b"SUBSCRIBE", b"UNSUBSCRIBE", b"PSUBSCRIBE", b"PUNSUBSCRIBE", b"PING", b"QUIT",
                b"RESET", b"SSUBSCRIBE", b"SUNSUBSCRIBE"):
            return (b"-ERR Can't execute '%s': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / "
                    b"QUIT / RESET are allowed in this context\r\n" % name.lower())
        if name == b"PING":
            if self.channels and not self.resp3:
                return b"*2\r\n$4\r\npong\r\n" + bulk(args[1] if len(args) > 1 else b"")
            return b"+PONG\r\n" if len(args) == 1 else bulk(args[1])
        if name == b"ECHO":
            return bulk(args[1])
        if name == b"SET":
            store[args[1]] = args[2]
            return b"+OK\r\n"
        if name == b"GET":
            return bulk(store.get(args[1]))
        if name in (b"SUBSCRIBE", b"SSUBSCRIBE", b"PSUBSCRIBE"):
            head = b">3\r\n" if self.resp3 else b"*3\r\n"
            out = []
            for channel in args[1:]:
                self.channels.add(channel)
                out.append(head + bulk(name.lower()) + bulk(channel) + b":%d\r\n" % len(self.channels))
            return b"".join(out)
        if name in (b"UNSUBSCRIBE", b"SUNSUBSCRIBE", b"PUNSUBSCRIBE"):
            head = b">3\r\n" if self.resp3 else b"*3\r\n"
            targets = args[1:] or sorted(self.channels) or [None]
            out = []
            for channel in targets:
                self.channels.discard(channel)  # type: ignore[arg-type]
                null = b"_\r\n" if self.resp3 else b"$-1\r\n"
                out.append(head + bulk(name.lower()) + (null if channel is None else bulk(channel))
                           + b":%d\r\n" % len(self.channels))
            return b"".join(out)
        if name == b"REPLCONF":
            return b"" if len(args) > 1 and args[1].upper() == b"ACK" else b"+OK\r\n"
        if name == b"CLIENT" and len(args) > 2 and args[1].upper() == b"REPLY":
            mode = args[2].upper()
            if mode == b"ON":
                self.reply = b"ON"
                return b"+OK\r\n"
            if mode == b"OFF":
                self.reply = b"OFF"
                return b""
            self.reply = b"SKIP_ARMED"
            return b""
        if name == b"HELLO":
            self.resp3 = len(args) > 1 and args[1] == b"3"
            return b"%1\r\n+proto\r\n:3\r\n" if self.resp3 else b"*2\r\n$5\r\nproto\r\n:2\r\n"
        if name == b"MONITOR":
            self.monitoring = True
            return b"+OK\r\n"
        if name in (b"AUTH", b"SELECT", b"MULTI", b"WATCH", b"UNWATCH", b"DISCARD"):
            return b"+OK\r\n"
        if name == b"EXEC":
            return b"*0\r\n"
        if name in (b"BLPOP", b"BRPOP"):
            return b"*-1\r\n"  # timed out at once: nothing in the list
        return b"-ERR unknown command '%s'\r\n" % args[0]


class ModelRedis:
    """
    The model server: one L{ModelConnection} per backend connection, one
    shared keyspace, a log of every command received.  Call it as a
    L{poolproxy.testing.MultiplexHarness.serve} answer.
    """

    def __init__(self) -> None:
        self.store: Dict[bytes, bytes] = {}
        self.log: List[List[bytes]] = []
        self.connections: Dict[Any, ModelConnection] = {}

    def __call__(self, transport: Any, data: bytes) -> bytes:
        connection = self.connections.get(transport)
        if connection is None:
            connection = self.connections[transport] = ModelConnection(self)
        return connection.feed(data)
