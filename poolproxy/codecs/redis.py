"""
The redis codec: RESP request and response framing, routing keys and the
connection state a client's commands create.

Pure: bytes in, frames and responses out (see L{poolproxy.codec}).

Request side (L{RespRequestFramer}, one per client connection):
  - RESP multibulk requests are passed on as the exact bytes the client sent;
    inline commands (C{PING\\r\\n}) are re-encoded as multibulk, so backends
    always get RESP.
  - The framer is as strict as redis's own parser (no leading zeros, no signs,
    no spaces in lengths; CRLF after every bulk): whatever it accepts, redis
    parses the same way, so one client cannot desynchronise a connection that
    other clients share.
  - Each frame gets a routing key and flags: L{RETRY_SAFE} for reads,
    L{PIN}/L{UNPIN} for transactions, WATCH, blocking commands and sticky
    connection state (SELECT, HELLO 3, CLIENT SETNAME...), L{PASSTHROUGH} for
    pub/sub and MONITOR, L{LOCAL} replies for QUIT and AUTH (which must never
    reach a shared connection).

Response side (L{RespResponseFramer}, one per backend connection): cuts every
RESP2 and RESP3 reply, nested to any depth up to L{MAX_DEPTH}, attributes
included, into its exact bytes.

Both framers keep the state of an incomplete frame between feeds: a large bulk
arriving in many small chunks is collected in a list and joined once, and the
already-checked part of a large aggregate is not scanned again.
"""

from __future__ import annotations

import hmac
import platform
from collections import deque
from typing import Any, Deque, Dict, List, Optional, Sequence, Tuple

from zope.interface import implementer

from poolproxy.codec import (
    AUTH_FAILED,
    AUTHENTICATE,
    BLOCKING,
    CLOSE,
    DIRTY,
    REFUSED,
    VARIANT,
    LOCAL,
    PASSTHROUGH,
    PIN,
    RETRY_SAFE,
    UNPIN,
    Frame,
    FramingError,
    IBlockingCodec,
    IBoundedFramer,
    IDescribingCodec,
    IHookableFramer,
    IProbingCodec,
    IShardAwareFramer,
    IShardedCodec,
    IUnsolicitedFramer,
    IVariantCodec,
)
from poolproxy.codecs._buffer import Unparsed

__all__ = [
    "RespRequestFramer",
    "RespResponseFramer",
    "RedisCodec",
    "codec",
    "encode_command",
    "MAX_DEPTH",
]

#: Longest inline command line, as in redis (PROTO_INLINE_MAX_SIZE).
MAX_INLINE = 64 * 1024
#: Most arguments in one multibulk request (redis's historical limit).
MAX_MULTIBULK = 1024 * 1024
#: Limits redis applies before a client has authenticated.
NOAUTH_MAX_ARGS = 10
NOAUTH_MAX_BULK = 16384
#: max_request_size unless configured.
DEFAULT_MAX_REQUEST = 64 * 1024 * 1024
#: Longest "*N" / "$N" header line: a sign and 20 digits fit well within it.
MAX_HEADER = 32
#: Deepest nesting of aggregates accepted in a response.
MAX_DEPTH = 1000
#: Longest simple (+ - : , ( # _) response line.
MAX_RESPONSE_LINE = 16 * 1024 * 1024

#: Strict decimal numbers as redis's string2ll accepts them, for the common
#: small ones: a dict hit is cheaper than isdigit() + int().
_INTS: Dict[bytes, int] = {b"%d" % i: i for i in range(10000)}


#: Largest buffer the split fast path (RespRequestFramer._plain) takes on:
#: beyond it, the general loop avoids copying a large value line by line.
#: The split path pays on CPython (SET 1.7 -> 1.4 us a frame) but not on
#: PyPy, whose JIT runs the general loop faster than it allocates the lines
#: (SET 0.35 -> 0.50 us): there it is off.
_SPLIT_MAX = 64 * 1024 if platform.python_implementation() == "CPython" else -1

#: The same two tables with the line's leading "*" or "$" (the fast path).
_DOLLAR_LENGTHS: Dict[bytes, int] = {b"$%d" % i: i for i in range(10000)}
_STAR_COUNTS: Dict[bytes, int] = {b"*%d" % i: i for i in range(1, NOAUTH_MAX_ARGS + 1)}

#: Multibulk counts that need no further checks.
_COUNTS: Dict[bytes, int] = {b"%d" % i: i for i in range(1, NOAUTH_MAX_ARGS + 1)}


def _expected_dollar(c: int) -> FramingError:
    return FramingError("malformed", "Protocol error: expected '$', got '%s'" % chr(c))


def _strict_int(s: bytes) -> Optional[int]:
    """
    C{s} as a signed decimal in redis's strict form (no sign but '-', no
    leading zeros, no spaces, fits in 64 bits), or L{None}.
    """
    neg = s[:1] == b"-"
    digits = s[1:] if neg else s
    if not digits.isdigit() or len(digits) > 19:
        return None
    if digits[0] == 48 and (len(digits) > 1 or neg):  # "01", "-0"
        return None
    value = int(digits)
    if value > 0x7FFFFFFFFFFFFFFF:
        return None
    return -value if neg else value


def encode_command(args: Sequence[bytes]) -> bytes:
    """C{args} as a RESP multibulk request."""
    return b"*%d\r\n" % len(args) + b"".join(
        [b"$%d\r\n%s\r\n" % (len(a), a) for a in args])


def _resp_args(data: bytes) -> List[bytes]:
    """The arguments of one multibulk request that the framer already checked."""
    eol = data.find(b"\r\n")
    n = int(data[1:eol])
    p = eol + 2
    args = []
    for _ in range(n):
        eol = data.find(b"\r\n", p)
        start = eol + 2
        end = start + int(data[p + 1:eol])
        args.append(data[start:end])
        p = end + 2
    return args


# -- inline commands -----------------------------------------------------------

_ISSPACE = frozenset(b" \t\n\r\x0b\x0c")
_TOKEN_END = frozenset(b" \t\n\r\x00")
_ESCAPES = {ord("n"): 10, ord("r"): 13, ord("t"): 9, ord("b"): 8, ord("a"): 7}
_HEX = frozenset(b"0123456789abcdefABCDEF")
_UNBALANCED = "Protocol error: unbalanced quotes in request"


def _split_inline(line: bytes) -> List[bytes]:
    """An inline command line split into arguments as redis's sdssplitargs does."""
    if 34 not in line and 39 not in line:  # no '"' nor "'"
        return line.split()
    return _split_quoted(line)


def _split_quoted(line: bytes) -> List[bytes]:
    # A port of sdssplitargs(): "..." with \xHH, \n \r \t \b \a and \<c>
    # escapes; '...' with \' only; a closing quote must end the argument.
    args: List[bytes] = []
    n = len(line)
    i = 0
    while True:
        while i < n and line[i] in _ISSPACE:
            i += 1
        if i >= n:
            return args
        cur = bytearray()
        inq = insq = False
        while True:
            if i >= n:
                if inq or insq:
                    raise FramingError("malformed", _UNBALANCED)
                break
            c = line[i]
            if inq:
                if (c == 92 and i + 3 < n and line[i + 1] == 120
                        and line[i + 2] in _HEX and line[i + 3] in _HEX):
                    cur.append(int(line[i + 2:i + 4], 16))
                    i += 4
                elif c == 92 and i + 1 < n:
                    e = line[i + 1]
                    cur.append(_ESCAPES.get(e, e))
                    i += 2
                elif c == 34:
                    if i + 1 < n and line[i + 1] not in _ISSPACE:
                        raise FramingError("malformed", _UNBALANCED)
                    i += 1
                    break
                else:
                    cur.append(c)
                    i += 1
            elif insq:
                if c == 92 and i + 1 < n and line[i + 1] == 39:
                    cur.append(39)
                    i += 2
                elif c == 39:
                    if i + 1 < n and line[i + 1] not in _ISSPACE:
                        raise FramingError("malformed", _UNBALANCED)
                    i += 1
                    break
                else:
                    cur.append(c)
                    i += 1
            elif c in _TOKEN_END:
                i += 1
                break
            elif c == 34:
                inq = True
                i += 1
            elif c == 39:
                insq = True
                i += 1
            else:
                cur.append(c)
                i += 1
        args.append(bytes(cur))


# -- the command table ---------------------------------------------------------
#
# A command's entry is an int.  Below 2 it is the frame's flags (0 or
# RETRY_SAFE) for a plain command whose key is args[1]: the fast path.  Every
# other value sends the frame through RespRequestFramer._dispatch.  Every
# command of redis 7.0 (COMMAND), and the later ones listed below, has an
# entry: one that has none is unknown, and never reaches a shared connection
# (its replies could not be counted).

_KEYLESS = 64          # | flags: no key
_KEY2 = 256            # | flags: key is args[2] (BITOP op dest, ZUNION numkeys key...)
_KEYNUM = 512          # | flags: EVAL script numkeys key...: args[3] if numkeys > 0
_BLOCK = 1024          # blocking, key args[1]
_BLOCK3 = 2048         # blocking, key args[3] (BLMPOP timeout numkeys key)
_SPECIAL = 4096        # dispatch by name
_UNKNOWN = 8192        # not a command redis has: refused, or pinned (unknown_commands)
_DENIED = 16384        # refused by the command policy (deny_commands)
_SUBPOLICY = 32768     # some of its subcommands are denied: look at args[1]

_READ_KEYED = """
GET MGET EXISTS TTL PTTL EXPIRETIME PEXPIRETIME TYPE STRLEN GETRANGE SUBSTR GETBIT
BITCOUNT BITPOS BITFIELD_RO LCS HGET HMGET HGETALL HEXISTS HLEN HKEYS HVALS HSTRLEN
HRANDFIELD HSCAN LRANGE LLEN LINDEX LPOS SCARD SMEMBERS SISMEMBER SMISMEMBER
SRANDMEMBER SINTER SUNION SDIFF SSCAN ZRANGE ZRANGEBYSCORE ZRANGEBYLEX ZREVRANGE
ZREVRANGEBYSCORE ZREVRANGEBYLEX ZSCORE ZMSCORE ZCARD ZRANK ZREVRANK ZCOUNT ZLEXCOUNT
ZRANDMEMBER ZSCAN PFCOUNT GEOPOS GEODIST GEOHASH GEOSEARCH GEORADIUS_RO
GEORADIUSBYMEMBER_RO XRANGE XREVRANGE XLEN XPENDING DUMP SORT_RO
""".split()

_READ_KEYLESS = """
PING ECHO DBSIZE TIME INFO LASTSAVE RANDOMKEY KEYS SCAN ROLE LOLWUT COMMAND
""".split()

_PLAIN_KEYLESS = """
CONFIG FLUSHALL FLUSHDB SCRIPT FUNCTION SAVE BGSAVE BGREWRITEAOF SHUTDOWN SLOWLOG
CLUSTER REPLICAOF SLAVEOF DEBUG LATENCY MODULE ACL SWAPDB PUBSUB FAILOVER
MIGRATE PFSELFTEST
""".split()

#: Writes whose key is args[1]: the fast path's plain commands (redis 7.0's
#: COMMAND, and the hash-field expiry of 7.4 and the hash commands of 8.0).
#: PUBLISH's channel is its key: a sharded cluster sends it where SUBSCRIBE
#: to that channel went.
_WRITES = """
APPEND BITFIELD COPY DECR DECRBY DEL EXPIRE EXPIREAT GEOADD GEORADIUS
GEORADIUSBYMEMBER GEOSEARCHSTORE GETDEL GETEX GETSET HDEL HINCRBY HINCRBYFLOAT HMSET
HSET HSETNX INCR INCRBY INCRBYFLOAT LINSERT LMOVE LPOP LPUSH LPUSHX LREM LSET LTRIM
MOVE MSET MSETNX PERSIST PEXPIRE PEXPIREAT PFADD PFMERGE PSETEX RENAME RENAMENX
RESTORE RESTORE-ASKING RPOP RPOPLPUSH RPUSH RPUSHX SADD SDIFFSTORE SET SETBIT SETEX
SETNX SETRANGE SINTERSTORE SMOVE SORT SPOP PUBLISH SPUBLISH SREM SUNIONSTORE TOUCH UNLINK XACK
XADD XAUTOCLAIM XCLAIM XDEL XSETID XTRIM ZADD ZDIFFSTORE ZINCRBY ZINTERSTORE ZPOPMAX
ZPOPMIN ZRANGESTORE ZREM ZREMRANGEBYLEX ZREMRANGEBYRANK ZREMRANGEBYSCORE ZUNIONSTORE
HEXPIRE HPEXPIRE HEXPIREAT HPEXPIREAT HPERSIST HGETDEL HGETEX HSETEX
""".split()

_READS_LATER = "HTTL HPTTL HEXPIRETIME HPEXPIRETIME".split()

_KEY2_COMMANDS = {
    "BITOP": 0, "OBJECT": RETRY_SAFE, "MEMORY": 0, "XINFO": RETRY_SAFE, "XGROUP": 0,
    "PFDEBUG": 0,
    "ZUNION": RETRY_SAFE, "ZINTER": RETRY_SAFE, "ZDIFF": RETRY_SAFE,
    "ZINTERCARD": RETRY_SAFE, "SINTERCARD": RETRY_SAFE, "LMPOP": 0, "ZMPOP": 0,
}

_KEYNUM_COMMANDS = {
    "EVAL": 0, "EVALSHA": 0, "FCALL": 0,
    "EVAL_RO": RETRY_SAFE, "EVALSHA_RO": RETRY_SAFE, "FCALL_RO": RETRY_SAFE,
}

_BLOCKING = "BLPOP BRPOP BRPOPLPUSH BLMOVE BZPOPMIN BZPOPMAX".split()
_BLOCKING3 = "BLMPOP BZMPOP".split()
_BLOCKING_KEYLESS = "WAIT WAITAOF".split()

_SPECIAL_COMMANDS = """
QUIT AUTH HELLO RESET MULTI EXEC DISCARD WATCH UNWATCH SELECT CLIENT READONLY
READWRITE ASKING SUBSCRIBE PSUBSCRIBE SSUBSCRIBE MONITOR SYNC PSYNC XREAD XREADGROUP
UNSUBSCRIBE PUNSUBSCRIBE SUNSUBSCRIBE REPLCONF
""".split()

#: What deny_commands is unless configured: the commands that administer the
#: server rather than the data (docs/security.md).  "A B" is subcommand B of A.
DEFAULT_DENY = (
    "SHUTDOWN", "DEBUG", "CONFIG", "REPLICAOF", "SLAVEOF", "SYNC", "PSYNC", "REPLCONF",
    "FAILOVER", "MODULE", "ACL", "SAVE", "BGSAVE", "BGREWRITEAOF", "MONITOR", "FLUSHALL",
    "FLUSHDB", "SWAPDB", "MIGRATE", "PFDEBUG", "PFSELFTEST",
    "CLIENT KILL", "CLIENT PAUSE", "CLIENT UNPAUSE",
    "CLUSTER ADDSLOTS", "CLUSTER ADDSLOTSRANGE", "CLUSTER BUMPEPOCH", "CLUSTER DELSLOTS",
    "CLUSTER DELSLOTSRANGE", "CLUSTER FAILOVER", "CLUSTER FLUSHSLOTS", "CLUSTER FORGET",
    "CLUSTER MEET", "CLUSTER REPLICATE", "CLUSTER RESET", "CLUSTER SAVECONFIG",
    "CLUSTER SET-CONFIG-EPOCH", "CLUSTER SETSLOT",
)


def _build_table() -> Dict[bytes, int]:
    table: Dict[str, int] = {}
    for name in _READ_KEYED:
        table[name] = RETRY_SAFE
    for name in _READ_KEYLESS:
        table[name] = _KEYLESS | RETRY_SAFE
    for name in _PLAIN_KEYLESS:
        table[name] = _KEYLESS
    for name in _WRITES:
        table[name] = 0
    for name in _READS_LATER:
        table[name] = RETRY_SAFE
    for name, flags in _KEY2_COMMANDS.items():
        table[name] = _KEY2 | flags
    for name, flags in _KEYNUM_COMMANDS.items():
        table[name] = _KEYNUM | flags
    for name in _BLOCKING:
        table[name] = _BLOCK
    for name in _BLOCKING3:
        table[name] = _BLOCK3
    for name in _BLOCKING_KEYLESS:
        table[name] = _BLOCK | _KEYLESS
    for name in _SPECIAL_COMMANDS:
        table[name] = _SPECIAL
    out: Dict[bytes, int] = {}
    for name, value in table.items():
        out[name.encode()] = value
        out[name.lower().encode()] = value
    return out


#: Command name (as upper or lower case bytes) -> entry; see above.  A
#: name that is not here (in neither case) is _UNKNOWN.
COMMANDS: Dict[bytes, int] = _build_table()


class CommandPolicy:
    """
    What a client may send, from the configuration: the commands refused
    (L{DEFAULT_DENY} unless configured, less those allowed back), and what
    an unknown command gets.  Its C{table} is L{COMMANDS} with the refused
    ones marked, so the framer's fast path decides with the lookup it makes
    anyway.
    """

    def __init__(self, deny: Sequence[str] = DEFAULT_DENY, allow: Sequence[str] = (),
                 unknown: str = "refuse") -> None:
        allowed = {_command_name(a) for a in allow}
        self.deny = frozenset(_command_name(d) for d in deny) - allowed
        self.pin_unknown = unknown == "pin"
        table = dict(COMMANDS)
        for entry in self.deny:
            name, _, sub = entry.partition(b" ")
            bit = _SUBPOLICY if sub else _DENIED
            for spelled in (name, name.lower()):
                table[spelled] = table.get(spelled, _UNKNOWN) | bit
        self.table = table


def _command_name(text: str) -> bytes:
    """A configured name as the policy keys it: upper case, subcommand after one space."""
    return b" ".join(text.replace("|", " ").upper().encode("ascii").split())


_DEFAULT_POLICY = CommandPolicy()
_POLICIES: Dict[Tuple[Any, Any, str], CommandPolicy] = {}


def command_policy(options: Any) -> CommandPolicy:
    """The L{CommandPolicy} of codec options (cached: every client's framer shares it)."""
    deny = getattr(options, "deny_commands", None)
    allow = tuple(getattr(options, "allow_commands", ()) or ())
    unknown = getattr(options, "unknown_commands", "refuse") or "refuse"
    key = (tuple(deny) if deny is not None else None, allow, unknown)
    policy = _POLICIES.get(key)
    if policy is None:
        policy = _POLICIES[key] = CommandPolicy(DEFAULT_DENY if deny is None else deny,
                                                allow, unknown)
    return policy


# -- every key of a multi-key command (for sharded clusters) ---------------------
#
# (first, last, step) over the arguments as in redis's COMMAND key specs: last
# -1 is the last argument, -2 the one before it.  Commands whose keys follow a
# numkeys argument are in _NUMKEYS: (index of numkeys, keys before it).

_KEY_RANGES: Dict[bytes, Tuple[int, int, int]] = {
    name.encode(): spec for names, spec in (
        ("MGET DEL UNLINK EXISTS TOUCH WATCH SINTER SUNION SDIFF SINTERSTORE SUNIONSTORE "
         "SDIFFSTORE PFCOUNT PFMERGE", (1, -1, 1)),
        ("MSET MSETNX", (1, -1, 2)),
        ("RENAME RENAMENX SMOVE RPOPLPUSH LMOVE BRPOPLPUSH BLMOVE COPY LCS ZRANGESTORE "
         "GEOSEARCHSTORE", (1, 2, 1)),
        ("BLPOP BRPOP BZPOPMIN BZPOPMAX", (1, -2, 1)),
        ("BITOP", (2, -1, 1)),
    ) for name in names.split()
}

_NUMKEYS: Dict[bytes, Tuple[int, int]] = {
    name.encode(): spec for names, spec in (
        ("EVAL EVALSHA EVAL_RO EVALSHA_RO FCALL FCALL_RO BLMPOP BZMPOP", (2, 0)),
        ("ZUNION ZINTER ZDIFF ZINTERCARD SINTERCARD LMPOP ZMPOP", (1, 0)),
        ("ZUNIONSTORE ZINTERSTORE ZDIFFSTORE", (2, 1)),
    ) for name in names.split()
}


def _first_error(replies: List[bytes]) -> Optional[bytes]:
    for reply in replies:
        if reply[:1] in (b"-", b"!"):
            return reply
    return None


def _merge_arrays(replies: List[bytes], groups: List[List[int]]) -> bytes:
    """MGET: each part's elements back in the place of their keys."""
    error = _first_error(replies)
    if error is not None:
        return error
    count = sum(len(group) for group in groups)
    elements: List[bytes] = [b""] * count
    for reply, group in zip(replies, groups):
        body = reply[reply.find(b"\r\n") + 2:]
        items = RespResponseFramer().feed(body)
        if reply[:1] not in (b"*", b">") or len(items) != len(group):
            return b"-ERR poolproxy: a shard's reply to a split MGET was not an array\r\n"
        for i, item in zip(group, items):
            elements[i] = item
    return b"*%d\r\n" % count + b"".join(elements)


def _merge_counts(replies: List[bytes], groups: List[List[int]]) -> bytes:
    """DEL, UNLINK, EXISTS, TOUCH: the parts' counts added up."""
    error = _first_error(replies)
    if error is not None:
        return error
    total = 0
    for reply in replies:
        n = _strict_int(reply[1:-2]) if reply[:1] == b":" else None
        if n is None:
            return b"-ERR poolproxy: a shard's reply to a split command was not an integer\r\n"
        total += n
    return b":%d\r\n" % total


def _merge_ok(replies: List[bytes], groups: List[List[int]]) -> bytes:
    """MSET: OK when every part is."""
    return _first_error(replies) or _OK


_MERGES = {b"MGET": _merge_arrays, b"DEL": _merge_counts, b"UNLINK": _merge_counts,
           b"EXISTS": _merge_counts, b"TOUCH": _merge_counts, b"MSET": _merge_ok}


def command_keys(args: Sequence[bytes]) -> Optional[List[bytes]]:
    """
    Every key the command C{args} names, if it may name more than one;
    L{None} for the others (their key, if any, is the frame's routing key).
    """
    if not args:
        return None
    name = args[0].upper()
    spec = _KEY_RANGES.get(name)
    if spec is not None:
        first, last, step = spec
        stop = len(args) + last + 1 if last < 0 else min(last + 1, len(args))
        return list(args[first:stop:step])
    numkeys = _NUMKEYS.get(name)
    if numkeys is not None:
        at, before = numkeys
        count = _strict_int(args[at]) if len(args) > at else None
        if not count or count < 0:
            return list(args[1:1 + before])
        return list(args[1:1 + before]) + list(args[at + 1:at + 1 + count])
    return None

_OK = b"+OK\r\n"
_NOAUTH = b"-NOAUTH Authentication required.\r\n"
_HELLO_3 = b"*2\r\n$5\r\nHELLO\r\n$1\r\n3\r\n"
_NOAUTH_HELLO = (
    b"-NOAUTH HELLO must be called with the client already authenticated, "
    b"otherwise the HELLO <proto> AUTH <user> <pass> option can be used to "
    b"authenticate the client and select the RESP protocol version at the same "
    b"time\r\n")
_WRONGPASS = b"-WRONGPASS invalid username-password pair or user is disabled.\r\n"
_NOPASS = (
    b"-ERR AUTH <password> called without any password configured for the "
    b"default user. Are you sure your configuration is correct?\r\n")
_AUTH_ARITY = b"-ERR wrong number of arguments for 'auth' command\r\n"
_NOPROTO = b"-NOPROTO unsupported protocol version\r\n"


def _unshardable(name: bytes) -> bytes:
    return (b"-ERR poolproxy: " + name + b" keeps per-connection state, which is not "
            b"supported while the cluster is sharded over several backends\r\n")


def _clean(text: bytes) -> bytes:
    return text.replace(b"\r", b" ").replace(b"\n", b" ")


#: A command entry the policy must look at (see CommandPolicy).
_POLICY = _DENIED | _SUBPOLICY | _UNKNOWN


def _refused(command: bytes) -> Frame:
    """The proxy's refusal of a denied C{command} (a name, or name and subcommand)."""
    return Frame(b"", 1, command, LOCAL | REFUSED,
                 reply=b"-ERR poolproxy: the '%s' command is refused by this proxy "
                       b"(deny_commands)\r\n" % _clean(command.lower()[:100]))


def _unsubscribed(kind: bytes, channels: List[bytes], resp3: bool) -> bytes:
    """
    What redis answers C{kind} (unsubscribe, punsubscribe, sunsubscribe) from
    a client subscribed to nothing: one reply per channel named, or one with
    a null channel; pushes in RESP3.
    """
    head = b">3\r\n" if resp3 else b"*3\r\n"
    kind = b"$%d\r\n%s\r\n" % (len(kind), kind)
    if not channels:
        return head + kind + (b"_\r\n" if resp3 else b"$-1\r\n") + b":0\r\n"
    return b"".join(head + kind + b"$%d\r\n%s\r\n:0\r\n" % (len(c), c) for c in channels)


@implementer(IShardAwareFramer, IHookableFramer)
class RespRequestFramer(Unparsed):
    """
    Cuts one redis client's byte stream into L{Frame}s, and tracks the
    connection state its commands create.

    @ivar error: L{None}, or the L{FramingError} that broke the stream.
    """

    def __init__(self, max_request_size: int, password: Optional[bytes] = None,
                 policy: CommandPolicy = _DEFAULT_POLICY, authenticate_hook: bool = False) -> None:
        self.error: Optional[FramingError] = None
        self._max = max_request_size
        self._password = password
        # With an authenticate hook, AUTH and HELLO AUTH are the hook's to
        # decide (AUTHENTICATE frames, their credentials queued here, oldest
        # first, RESETs too), and a client starts unauthenticated.
        self._authed = password is None and not authenticate_hook
        self.credentials: Optional[Deque[Optional[Tuple[bytes, bytes, Optional[bool]]]]] = (
            deque() if authenticate_hook else None)
        self._given: Optional[Tuple[bytes, bytes, Optional[bool]]] = None
        self._policy = policy
        self._cmds = policy.table
        # Whether the client chose RESP3 (HELLO 3): the proxy's own pub/sub
        # replies are then push messages.
        self._resp3 = False
        # Connection state (see _dispatch).
        self._multi = False
        self._watch = False
        self._sticky = False
        self._passthrough = False
        self._init_unparsed()  # bytes of a frame cut short (poolproxy.codecs._buffer)
        # A multibulk request cut short after some arguments:
        # (count, next argument index, name, key, checked prefix parts, prefix size).
        # (n, i, name, key, prefix, base) of a request the buffer cut short.
        self._mb: Any = None
        self._fast = True
        self._update()
        #: Set by the proxy while the client's cluster is sharded (consistent
        #: hashing over several backends): then commands that would tie the
        #: client to one backend connection (transactions, WATCH, SELECT,
        #: pub/sub...) are refused, since its keys live on several.
        self.sharded = False

    # -- state -----------------------------------------------------------------

    def _stateful(self) -> bool:
        return self._multi or self._watch or self._sticky or self._passthrough

    def _update(self) -> None:
        self._fast = self._authed and not self._stateful()

    @property
    def pinned(self) -> bool:
        """Whether the client currently has connection state."""
        return self._stateful()

    @property
    def authenticated(self) -> bool:
        return self._authed

    def set_authenticated(self, authenticated: bool) -> None:
        """The authenticate hook's verdict on the last credentials (IHookableFramer)."""
        self._authed = authenticated
        self._update()

    def refused_reply(self, frame: Frame) -> bytes:
        return _WRONGPASS

    def pending(self) -> int:
        """Bytes held for an incomplete frame."""
        held = self._have
        if self._mb is not None:
            held += self._mb[5]
        return held

    # -- framing ---------------------------------------------------------------

    def feed(self, data: bytes) -> List[Frame]:
        if self.error is not None or not data:
            return []
        buf = self._take(data) if self._have else data  # codecs._buffer
        if buf is None:
            return []
        frames: List[Frame] = []
        append = frames.append
        pos = 0
        if self._fast and self._mb is None and len(buf) <= _SPLIT_MAX:
            pos = self._plain(buf, append)
            if pos == len(buf):
                return frames
        # The general loop goes on from where the fast path stopped.
        find = buf.find
        ints = _INTS
        counts = _COUNTS
        cmds = self._cmds
        end = len(buf)
        maxsize = self._max
        fast = self._fast
        mb = self._mb
        self._mb = None
        need = 0
        try:
            while True:
                if mb is not None:
                    n, i, name, key, prefix, base = mb
                    mb = None
                    start = p = 0
                else:
                    if pos >= end:
                        break
                    if buf[pos] != 42:  # not '*': an inline command
                        nl = find(b"\n", pos)
                        if nl < 0:
                            if end - pos > MAX_INLINE:
                                raise FramingError(
                                    "too_large", "Protocol error: too big inline request")
                            need = -MAX_INLINE
                            break
                        if nl - pos > MAX_INLINE:
                            raise FramingError(
                                "too_large", "Protocol error: too big inline request")
                        line = buf[pos:nl]
                        pos = nl + 1
                        args = _split_inline(line)
                        if args:
                            frame = self._inline(args)
                            if frame is not None:
                                append(frame)
                            fast = self._fast
                        continue
                    eol = find(b"\r\n", pos + 1)
                    if eol < 0:
                        if end - pos > MAX_HEADER:
                            raise FramingError(
                                "malformed", "Protocol error: too big mbulk count string")
                        need = -MAX_HEADER
                        break
                    n = counts.get(buf[pos + 1:eol])
                    if n is None:
                        n = self._count(buf[pos + 1:eol], eol + 2 - pos)
                        if n <= 0:  # *0, *-1: nothing to do, as in redis
                            pos = eol + 2
                            continue
                    start = pos
                    p = eol + 2
                    i = 0
                    name = key = prefix = None
                    base = 0
                # The frame must end by `limit`; `stop` is where the bytes end.
                limit = start + maxsize - base
                stop = end if end < limit else limit
                for i in range(i, n):
                    eol = find(b"\r\n", p + 1)
                    if eol < 0:
                        if p >= end:
                            need = 1
                            break
                        if buf[p] != 36:
                            raise _expected_dollar(buf[p])
                        if end - p > MAX_HEADER:
                            raise FramingError(
                                "malformed", "Protocol error: too big bulk count string")
                        need = -MAX_HEADER
                        break
                    if buf[p] != 36:  # '$'
                        raise _expected_dollar(buf[p])
                    # Lengths up to 9999 come from the table; their frame's
                    # size is checked below like any other.
                    blen = ints.get(buf[p + 1:eol])
                    if blen is None:
                        blen = self._bulk_len(buf[p + 1:eol])
                    q = eol + 2 + blen
                    if q + 2 > stop:
                        if q + 2 > limit:
                            raise FramingError(
                                "too_large",
                                "Protocol error: request larger than %d bytes" % maxsize)
                        need = q + 2 - p
                        break
                    if buf[q] != 13 or buf[q + 1] != 10:
                        raise FramingError(
                            "malformed", "Protocol error: expected CRLF after bulk data")
                    if i == 0:
                        name = buf[eol + 2:q]
                    elif i == 1:
                        key = buf[eol + 2:q]
                    p = q + 2
                else:
                    pos = p
                    if prefix:
                        prefix.append(buf[start:p])
                        data = b"".join(prefix)
                    else:
                        data = buf[start:p]
                    info = cmds.get(name)
                    if info is None:
                        info = cmds.get(name.upper(), _UNKNOWN)
                    if info < 2 and fast:
                        append(Frame(data, 1, key, info))
                    else:
                        frame = self._dispatch(data, None, name, key, info)
                        if frame is not None:
                            append(frame)
                        fast = self._fast
                    continue
                # The request is cut short at p, after i arguments: keep what is
                # checked, and carry on from p next time.
                if p > start:
                    if prefix is None:
                        prefix = []
                    prefix.append(buf[start:p])
                    base += p - start
                self._mb = (n, i, name, key, prefix, base)
                pos = p
                break
        except FramingError as e:
            self.error = e
            self._drop()
            self._mb = None
            return frames
        if pos < end:
            self._keep(buf, pos, need)
        return frames

    def _plain(self, buf: bytes, append: Any) -> int:
        """
        The fast path, for what most clients send: complete multibulk
        requests of up to 10 arguments, each under 10,000 bytes and free of
        CRLF, for plain commands.  One C{split} cuts the buffer into lines;
        an argument is valid when its line is as long as its C{$} header
        says (an argument holding a CRLF, or cut short, is not, and ends the
        fast path there).  Frames are appended; returns where the general
        loop (L{feed}) must take over: at the first request this path does
        not handle, or at the end of C{buf}.
        """
        parts = buf.split(b"\r\n")
        last = len(parts) - 1  # the bytes after the last CRLF: never a whole line
        counts = _STAR_COUNTS
        lengths = _DOLLAR_LENGTHS
        cmds = self._cmds
        maxsize = self._max
        t = pos = 0
        while t < last:
            h = parts[t]
            n = counts.get(h)
            if n is None:
                break
            u = t + n + n + 1  # the line after the request's last
            if u > last:
                break
            start = pos
            end = pos + len(h) + 2 + 4 * n
            for v in range(t + 1, u, 2):
                h = parts[v]
                d = parts[v + 1]
                if lengths.get(h) != len(d):
                    return pos
                end += len(h) + len(d)
            name = parts[t + 2]
            info = cmds.get(name)
            if info is None:
                info = cmds.get(name.upper(), _UNKNOWN)
            if info >= 2 or end - start > maxsize:
                break  # commands with consequences, and limits, the general way
            append(Frame(buf[start:end], 1, parts[t + 4] if n > 1 else None, info))
            t = u
            pos = end
        return pos

    def _count(self, s: bytes, header: int) -> int:
        n = _strict_int(s)
        if n is None or n > MAX_MULTIBULK:
            raise FramingError("malformed", "Protocol error: invalid multibulk length")
        if n > NOAUTH_MAX_ARGS and not self._authed:
            raise FramingError("malformed", "Protocol error: unauthenticated multibulk length")
        if header + 6 * n > self._max:  # "$0\r\n\r\n" is the shortest argument
            raise FramingError(
                "too_large", "Protocol error: request larger than %d bytes" % self._max)
        return n

    def _bulk_len(self, s: bytes) -> int:
        n = _strict_int(s)
        if n is None or n < 0:
            raise FramingError("malformed", "Protocol error: invalid bulk length")
        if n > self._max:
            raise FramingError(
                "too_large", "Protocol error: request larger than %d bytes" % self._max)
        if n > NOAUTH_MAX_BULK and not self._authed:
            raise FramingError("malformed", "Protocol error: unauthenticated bulk length")
        return n

    def _inline(self, args: List[bytes]) -> Optional[Frame]:
        data = encode_command(args)
        if len(data) > self._max:
            raise FramingError(
                "too_large", "Protocol error: request larger than %d bytes" % self._max)
        name = args[0]
        key = args[1] if len(args) > 1 else None
        info = self._cmds.get(name)
        if info is None:
            info = self._cmds.get(name.upper(), _UNKNOWN)
        if info < 2 and self._fast:
            return Frame(data, 1, key, info)
        return self._dispatch(data, args, name, key, info)

    # -- commands with consequences ---------------------------------------------

    def _dispatch(self, data: bytes, args: Optional[List[bytes]], name: bytes,
                  key: Optional[bytes], info: int) -> Optional[Frame]:
        """
        The frame for every command but a plain one from a client without
        state: keys that are not args[1], local replies, and connection state.
        """
        if info & _SPECIAL:
            upper = name.upper()
            if upper == b"QUIT":
                return Frame(data, 1, None, LOCAL | CLOSE, reply=_OK)
            if upper == b"AUTH" or upper == b"HELLO":
                args = args if args is not None else _resp_args(data)
                if self.credentials is not None:
                    return self._hooked_credentials(upper, data, args)
                return self._auth(args) if upper == b"AUTH" else self._hello(data, args)
            if upper == b"RESET":  # allowed before AUTH, as in redis
                return self._special(data, args, upper, key, self._stateful())
        if not self._authed:
            return Frame(data, 1, None, LOCAL, reply=_NOAUTH)
        if info & _POLICY:
            if info & _DENIED:
                return _refused(name.upper())
            if info & _UNKNOWN:
                if self._policy.pin_unknown:
                    # Its replies cannot be counted: a raw pipe of its own.
                    return self._stick(data, key, passthrough=True)
                return Frame(data, 1, b"(unknown)", LOCAL | REFUSED,
                             reply=b"-ERR poolproxy: unknown command '%s'\r\n" % _clean(name[:100]))
            if args is None:
                args = _resp_args(data)
            if len(args) > 1:
                command = name.upper() + b" " + args[1].upper()
                if command in self._policy.deny:
                    return _refused(command)
            info &= ~_SUBPOLICY
        stateful = self._stateful()
        if info < 2:
            return Frame(data, 1, key, PIN if stateful else info)
        if info & _BLOCK:
            return Frame(data, 1, None if info & _KEYLESS else key,
                         PIN | BLOCKING if stateful else PIN | UNPIN | BLOCKING)
        if info & _KEYLESS:
            return Frame(data, 1, None, PIN if stateful else info & 3)
        if info & (_KEY2 | _KEYNUM | _BLOCK3):
            if args is None:
                args = _resp_args(data)
            key = None
            if info & _KEY2:
                if len(args) > 2:
                    key = args[2]
            elif info & _KEYNUM:
                if len(args) > 3 and (_strict_int(args[2]) or 0) > 0:
                    key = args[3]
            elif len(args) > 3:
                key = args[3]
            if info & _BLOCK3:
                return Frame(data, 1, key,
                             PIN | BLOCKING if stateful else PIN | UNPIN | BLOCKING)
            return Frame(data, 1, key, PIN if stateful else info & 3)
        return self._special(data, args, name.upper(), key, stateful)

    def _special(self, data: bytes, args: Optional[List[bytes]], upper: bytes,
                 key: Optional[bytes], stateful: bool) -> Optional[Frame]:
        if upper == b"MULTI":
            if self.sharded:
                return self._refuse_sharded(data)
            self._multi = True
            self._update()
            return Frame(data, 1, None, PIN)
        if upper == b"EXEC" or upper == b"DISCARD":
            if not self._multi:  # an error reply; no state changes
                return Frame(data, 1, None, PIN if stateful else 0)
            self._multi = self._watch = False
            return self._ended(data)
        if upper == b"WATCH":
            if self.sharded:
                return self._refuse_sharded(data)
            if not self._multi:  # WATCH inside MULTI is an error
                self._watch = True
                self._update()
            return Frame(data, 1, key, PIN)
        if upper == b"UNWATCH":
            if not stateful:
                return Frame(data, 1, None, 0)
            if self._multi or not self._watch:
                return Frame(data, 1, None, PIN)
            self._watch = False
            return self._ended(data)
        if upper == b"RESET":
            if self._passthrough:
                # The proxy passes bytes through until the session ends: it
                # cannot see RESET's reply, so the state stays.
                return Frame(data, 1, None, PIN)
            self._multi = self._watch = self._sticky = self._resp3 = False
            if self._password is not None or self.credentials is not None:
                self._authed = False  # RESET re-authenticates as "default"
            self._update()
            # RESET also puts the client back on RESP2 (VARIANT, expect None).
            if not stateful:
                # Nothing to reset on the proxy's side: answer here rather than
                # reset (and de-authenticate) a pooled connection.
                frame = Frame(data, 1, None, LOCAL | VARIANT, reply=b"+RESET\r\n")
            else:
                # RESET also drops the pooled connection's AUTH and SELECT.
                frame = Frame(data, 1, None, PIN | UNPIN | DIRTY | VARIANT)
            if self.credentials is not None:
                # The authenticate hook's verdict is undone too, in its turn.
                self.credentials.append(None)
                frame.flags |= AUTHENTICATE
            return frame
        if upper in (b"SUBSCRIBE", b"PSUBSCRIBE", b"SSUBSCRIBE", b"MONITOR",
                     b"SYNC", b"PSYNC", b"REPLCONF"):
            # From here on the backend speaks unasked (messages, a replication
            # stream, REPLCONF ACK's silence): a raw pipe of the client's own.
            channel = key if upper == b"SUBSCRIBE" or upper == b"SSUBSCRIBE" else None
            return self._stick(data, channel, passthrough=True)
        if upper in (b"UNSUBSCRIBE", b"PUNSUBSCRIBE", b"SUNSUBSCRIBE"):
            if self._passthrough:
                return Frame(data, 1, None, PIN)  # the client's own connection answers
            if args is None:
                args = _resp_args(data)
            if self._multi:
                if len(args) > 2:
                    # Queued, it is answered at EXEC by one element of EXEC's
                    # array and, for each channel past the first, a reply of
                    # its own beside the array: no reply count holds, so the
                    # client's own connection becomes a raw pipe.
                    return self._stick(data, None, passthrough=True)
                return Frame(data, 1, None, PIN)
            # Not subscribed to anything: redis would answer one reply per
            # channel named (or one), which no shared connection must see.
            return Frame(data, 1, None, LOCAL,
                         reply=_unsubscribed(upper.lower(), args[1:], self._resp3))
        if upper in (b"SELECT", b"READONLY", b"READWRITE", b"ASKING"):
            return self._stick(data, None)
        if upper == b"CLIENT":
            if args is None:
                args = _resp_args(data)
            sub = args[1].upper() if len(args) > 1 else b""
            value = args[2].upper() if len(args) > 2 else b""
            if sub in (b"SETNAME", b"NO-EVICT", b"NO-TOUCH", b"CACHING"):
                return self._stick(data, None)
            if sub == b"REPLY":
                # OFF and SKIP stop replies coming one per request.
                return self._stick(data, None, passthrough=value in (b"OFF", b"SKIP"))
            if sub == b"TRACKING":
                # With tracking on, invalidation pushes arrive between replies.
                return self._stick(data, None, passthrough=value == b"ON")
            if sub == b"SETINFO" and not self._multi:
                # Client libraries send it on every new connection (redis-py
                # 5+): it is cosmetic, and a shared connection must not carry
                # one client's name.
                return Frame(data, 1, None, LOCAL, reply=_OK)
            return Frame(data, 1, None, PIN if stateful else 0)
        if upper == b"XREAD" or upper == b"XREADGROUP":
            if args is None:
                args = _resp_args(data)
            key, blocking = _xread(args)
            if blocking:
                return Frame(data, 1, key,
                             PIN | BLOCKING if stateful else PIN | UNPIN | BLOCKING)
            flags = RETRY_SAFE if upper == b"XREAD" else 0
            return Frame(data, 1, key, PIN if stateful else flags)
        return Frame(data, 1, key, PIN if stateful else 0)  # pragma: no cover

    def _ended(self, data: bytes) -> Frame:
        self._update()
        return Frame(data, 1, None, PIN if self._stateful() else PIN | UNPIN)

    def _stick(self, data: bytes, key: Optional[bytes], passthrough: bool = False) -> Frame:
        if self.sharded:
            return self._refuse_sharded(data)
        self._sticky = True
        flags = PIN
        if passthrough:
            self._passthrough = True
            flags |= PASSTHROUGH
        self._update()
        return Frame(data, 1, key, flags)

    def _refuse_sharded(self, data: bytes) -> Frame:
        """
        Connection state on a sharded cluster (see L{sharded}): refused, and
        the framer's state left as it was.
        """
        return Frame(data, 1, None, LOCAL, reply=_unshardable(_resp_args(data)[0].upper()))

    def _hooked_credentials(self, upper: bytes, data: bytes, args: List[bytes]) -> Frame:
        """
        AUTH or HELLO with an authenticate hook: framed as if the
        credentials were good, flagged AUTHENTICATE with them queued, so
        that the proxy asks the hook before anything after them is sent.
        """
        self._given = None
        frame = self._auth(args) if upper == b"AUTH" else self._hello(data, args)
        given, self._given = self._given, None
        if given is not None:
            self.credentials.append(given)
            frame.flags |= AUTHENTICATE
        return frame

    def _credentials_ok(self, user: bytes, password: bytes) -> bool:
        if self.credentials is not None:
            # The hook decides; it is told whether the password file matched.
            matched = None if self._password is None else (
                user == b"default" and hmac.compare_digest(password, self._password))
            self._given = (user, password, matched)
            return True
        if user != b"default":
            return False
        if self._password is None:
            return True  # redis's default user is "nopass"
        return hmac.compare_digest(password, self._password)

    def _auth(self, args: List[bytes]) -> Frame:
        # Answered here whatever happens: AUTH on a shared connection would
        # change it for every client.
        if len(args) == 2:
            if self._password is None and self.credentials is None:
                return Frame(b"", 1, None, LOCAL, reply=_NOPASS)
            user, password = b"default", args[1]
        elif len(args) == 3:
            user, password = args[1], args[2]
        else:
            return Frame(b"", 1, None, LOCAL, reply=_AUTH_ARITY)
        if not self._credentials_ok(user, password):
            return Frame(b"", 1, None, LOCAL | AUTH_FAILED, reply=_WRONGPASS)
        self._authed = True
        self._update()
        return Frame(b"", 1, None, LOCAL, reply=_OK)

    def _hello(self, data: bytes, args: List[bytes]) -> Frame:
        proto = None
        auth = None
        setname = None
        if len(args) > 1:
            proto = args[1]
            if proto != b"2" and proto != b"3":
                return Frame(data, 1, None, LOCAL, reply=_NOPROTO)
            j = 2
            while j < len(args):
                opt = args[j].upper()
                more = len(args) - j - 1
                if opt == b"AUTH" and more >= 2:
                    auth = (args[j + 1], args[j + 2])
                    j += 3
                elif opt == b"SETNAME" and more >= 1:
                    setname = args[j + 1]
                    j += 2
                else:
                    return Frame(b"" if auth else data, 1, None, LOCAL,
                                 reply=b"-ERR Syntax error in HELLO option '%s'\r\n"
                                 % _clean(args[j][:100]))
        if auth is not None:
            if not self._credentials_ok(*auth):
                return Frame(b"", 1, None, LOCAL | AUTH_FAILED, reply=_WRONGPASS)
            self._authed = True
            self._update()
            # The backend must not see the client's credentials.
            assert proto is not None  # AUTH is only read after a protover
            rest = [b"HELLO", proto]
            if setname is not None:
                rest += [b"SETNAME", setname]
            data = encode_command(rest)
        elif not self._authed:
            return Frame(data, 1, None, LOCAL, reply=_NOAUTH_HELLO)
        variant = 3 if proto == b"3" else None  # the pool's connections speak RESP2
        if proto is not None:
            self._resp3 = variant == 3
        if setname is not None:
            # The name is connection state: a connection of its own, which this
            # HELLO also switches to the chosen protocol.
            frame = self._stick(data, None)
            if proto is not None and not frame.flags & LOCAL:
                frame.flags |= VARIANT
                frame.expect = variant
            return frame
        if proto is not None:
            # A protocol version is not a reason to pin: the client moves to
            # shared connections that speak it.
            return Frame(data, 1, None, VARIANT | (PIN if self._stateful() else 0),
                         expect=variant)
        return Frame(data, 1, None, PIN if self._stateful() else 0)


def _xread(args: List[bytes]) -> Tuple[Optional[bytes], bool]:
    """XREAD / XREADGROUP: the first stream key, and whether BLOCK was given."""
    blocking = False
    j = 1
    n = len(args)
    while j < n:
        opt = args[j].upper()
        if opt == b"STREAMS":
            return (args[j + 1] if j + 1 < n else None), blocking
        if opt == b"BLOCK":
            blocking = True
            j += 2
        elif opt == b"COUNT":
            j += 2
        elif opt == b"GROUP":
            j += 3
        else:  # NOACK, or an error the backend will report
            j += 1
    return None, blocking


# -- responses -----------------------------------------------------------------

_SIMPLE = frozenset(b"+-:,(#_")
_BULK = frozenset(b"$!=")
_AGGREGATE = frozenset(b"*~>%|")
_TYPES = _SIMPLE | _BULK | _AGGREGATE


#: Marks C{_parts} while the rest of a reply too large to hold is discarded.
_DROPPED = b"(dropped)"


def _too_large(limit: int) -> bytes:
    return (b"-ERR poolproxy: reply too large (more than max_reply_size, %d bytes)\r\n"
            % limit)


@implementer(IUnsolicitedFramer, IBoundedFramer)
class RespResponseFramer(Unparsed):
    """
    Cuts one backend connection's byte stream into complete RESP2/RESP3
    replies, each as its exact bytes.  An attribute (C{|}) and the reply it
    decorates are one response.  Streamed strings and aggregates (C{$?},
    C{*?}), which redis does not send, are rejected.  RESP3 push messages
    (C{>}) answer no request: they go to C{unsolicited}, not among the
    replies.  A reply larger than C{max_reply_size} is answered with an
    error as soon as that is known, and the rest of it skipped unheld
    (IBoundedFramer); the checks run only where bytes would be held for a
    later feed, never per reply.
    """

    needs_expect = False

    def __init__(self) -> None:
        self.error: Optional[FramingError] = None
        self.max_reply_size: Optional[int] = None
        self.on_too_large: Optional[Any] = None
        # Bytes of a too-large bulk string still to skip, unheld.
        self._skip = 0
        #: Push messages the last feed found (IUnsolicitedFramer).
        self.unsolicited: List[bytes] = []
        # A push message began in an earlier feed and is not complete yet.
        self._push_open = False
        self._init_unparsed()
        # Elements still owed by each open aggregate, outermost first.
        self._stack: List[int] = []
        # The checked bytes of a response cut short inside an aggregate.
        self._parts: List[bytes] = []
        self._parts_size = 0

    def expect(self, kind: Any) -> None:
        pass

    def pending(self) -> int:
        """Bytes held for an incomplete response."""
        return self._have + self._parts_size

    def feed(self, data: bytes) -> List[bytes]:
        if self.error is not None or not data:
            return []
        if self._skip:
            data = self._skip_some(data)
            if not data:
                return []
        buf = self._take(data) if self._have else data  # codecs._buffer
        if buf is None:
            return []
        out: List[bytes] = []
        append = out.append
        find = buf.find
        ints = _INTS
        stack = self._stack
        parts = self._parts
        end = len(buf)
        pos = p = need = 0
        # Where push messages stand in `out` (set apart after the loop).
        pushed: List[int] = [0] if self._push_open else []
        try:
            while p < end:
                t = buf[p]
                eol = find(b"\r\n", p + 1)
                if eol < 0:
                    if t not in _TYPES:
                        raise FramingError("malformed", "unknown reply type %r" % chr(t))
                    need = -(MAX_RESPONSE_LINE if t in _SIMPLE else MAX_HEADER)
                    if end - p > -need:
                        raise FramingError("malformed", "reply line too long")
                    break
                if t == 36:  # '$'
                    n = ints.get(buf[p + 1:eol])
                    if n is None:
                        n = _length(buf[p + 1:eol], True)
                    if n < 0:  # $-1: null
                        p = eol + 2
                    else:
                        q = eol + 2 + n
                        if q + 2 > end:
                            need = q + 2 - p
                            limit = self.max_reply_size
                            if limit is not None and self._parts_size + q + 2 - pos > limit:
                                p = pos = self._refuse_reply(out, buf, pos, q + 2 - end)
                                need = 0
                            break
                        if buf[q] != 13 or buf[q + 1] != 10:
                            raise FramingError("malformed", "no CRLF after bulk reply")
                        p = q + 2
                elif t in _SIMPLE:
                    if (t == 95 and eol != p + 1) or (
                            t == 35 and (eol != p + 2 or buf[p + 1] not in b"tf")):
                        raise FramingError("malformed", "bad %r reply" % chr(t))
                    p = eol + 2
                elif t in _AGGREGATE:
                    if t == 62 and not stack:  # '>': a push message begins
                        pushed.append(len(out))
                    n = ints.get(buf[p + 1:eol])
                    if n is None:
                        n = _length(buf[p + 1:eol], t == 42)
                    if t == 37:  # '%': pairs
                        n *= 2
                    elif t == 124:  # '|': pairs, then the reply they decorate
                        n = n * 2 + 1
                    p = eol + 2
                    if n > 0:
                        stack.append(n)
                        if len(stack) > MAX_DEPTH:
                            raise FramingError("malformed", "replies nested too deep")
                        continue
                elif t in _BULK:  # '!' blob error, '=' verbatim string
                    n = ints.get(buf[p + 1:eol])
                    if n is None:
                        n = _length(buf[p + 1:eol], False)
                    q = eol + 2 + n
                    if q + 2 > end:
                        need = q + 2 - p
                        break
                    if buf[q] != 13 or buf[q + 1] != 10:
                        raise FramingError("malformed", "no CRLF after bulk reply")
                    p = q + 2
                else:
                    raise FramingError("malformed", "unknown reply type %r" % chr(t))
                # One element is complete: close the aggregates it completes.
                while stack:
                    left = stack[-1] - 1
                    if left:
                        stack[-1] = left
                        break
                    stack.pop()
                else:
                    if parts:
                        if parts[0] is not _DROPPED:  # else: answered already
                            parts.append(buf[pos:p])
                            append(b"".join(parts))
                        del parts[:]
                        self._parts_size = 0
                    else:
                        append(buf[pos:p])
                    pos = p
        except FramingError as e:
            self.error = e
            self._drop()
            del stack[:]
            del parts[:]
            self._parts_size = 0
            self._push_open = False
            return out
        if stack and p > pos:
            # Inside an aggregate: keep the checked part aside (unless it is
            # being dropped, or is too large to keep).
            if not parts or parts[0] is not _DROPPED:
                limit = self.max_reply_size
                if limit is not None and self._parts_size + p - pos > limit:
                    self._refuse_reply(out, buf, p, 0)
                else:
                    parts.append(buf[pos:p])
                    self._parts_size += p - pos
            pos = p
        if pos < end:
            self._keep(buf, pos, need)
        if pushed:
            return self._set_apart(out, pushed)
        return out

    def _refuse_reply(self, out: List[bytes], buf: bytes, pos: int, skip: int) -> int:
        """
        The reply under way is too large to hold: answer it with the error
        now (once), drop what is held of it, and skip C{skip} bytes past
        C{buf} (the rest of a bulk string); where parsing goes on.
        """
        parts = self._parts
        if not parts or parts[0] is not _DROPPED:
            out.append(_too_large(self.max_reply_size or 0))
            if self.on_too_large is not None:
                self.on_too_large()
        parts[:] = [_DROPPED]
        self._parts_size = 0
        self._skip = skip
        return len(buf) if skip else pos

    def _skip_some(self, data: bytes) -> bytes:
        """Skip what is left of a dropped bulk string; what follows it."""
        skip = self._skip
        if len(data) < skip:
            self._skip = skip - len(data)
            return b""
        self._skip = 0
        # The bulk string is over: close the aggregates it completes.
        stack = self._stack
        while stack:
            left = stack[-1] - 1
            if left:
                stack[-1] = left
                break
            stack.pop()
        else:
            del self._parts[:]  # the dropped reply is over
        return data[skip:]

    def _set_apart(self, out: List[bytes], pushed: List[int]) -> List[bytes]:
        """Move the push messages at indexes C{pushed} of C{out} to C{unsolicited}."""
        # The last one may have begun and not be complete yet.
        self._push_open = pushed[-1] == len(out)
        marks = set(pushed)
        self.unsolicited.extend(r for i, r in enumerate(out) if i in marks)
        return [r for i, r in enumerate(out) if i not in marks]


def _length(s: bytes, null_ok: bool) -> int:
    n = _strict_int(s)
    if n is None or n < -1 or (n == -1 and not null_ok):
        if s[:1] == b"?":
            raise FramingError("malformed", "streamed replies are not supported")
        raise FramingError("malformed", "bad length %r in reply" % s[:30])
    return n


# -- the codec -----------------------------------------------------------------

def _as_bytes(value: Any) -> Optional[bytes]:
    if value is None or value == "" or value == b"":
        return None
    if isinstance(value, str):
        return value.encode("utf-8")
    return bytes(value)


_PING = b"*1\r\n$4\r\nPING\r\n"


@implementer(IShardedCodec, IVariantCodec, IProbingCodec, IBlockingCodec, IDescribingCodec)
class RedisCodec:
    """The redis protocol (RESP2, RESP3 on pinned connections)."""

    name = "redis"
    mode = "multiplexed"

    def request_framer(self, config: Any = None) -> RespRequestFramer:
        """
        A framer for one client connection.  C{config} is the proxy's
        configuration (C{max_request_size}, C{client_password}), or just a
        maximum request size as an int.
        """
        if isinstance(config, int):
            return RespRequestFramer(config)
        return RespRequestFramer(
            getattr(config, "max_request_size", None) or DEFAULT_MAX_REQUEST,
            _as_bytes(getattr(config, "client_password", None)), command_policy(config),
            bool(getattr(config, "authenticate_hook", False)))

    def response_framer(self) -> RespResponseFramer:
        return RespResponseFramer()

    def error_reply(self, kind: str, message: str) -> bytes:
        text = str(message or "").replace("\r", " ").replace("\n", " ")
        if kind == "overloaded":
            line = "ERR poolproxy: overloaded, try again later"
        elif kind == "unavailable":
            line = "ERR poolproxy: backend unavailable: " + text
        elif kind == "timeout":
            line = "ERR poolproxy: backend timed out"
        elif kind == "denied":
            # As redis's ACL refuses: clients map NOPERM to a permission error.
            line = "NOPERM " + text
        elif kind == "unauthenticated":
            return _NOAUTH
        elif kind == "crossslot":
            # As Redis Cluster says it, so clients and people recognise it.
            line = "CROSSSLOT Keys in request don't hash to the same backend (poolproxy)"
        elif kind in ("too_large", "malformed"):
            if text.startswith("Protocol error: "):
                text = text[len("Protocol error: "):]
            line = "ERR Protocol error: " + text
        else:
            line = "ERR poolproxy: %s: %s" % (kind, text)
        return b"-" + line.encode("utf-8", "replace") + b"\r\n"

    def setup_frames(self, config: Any) -> List[Frame]:
        frames = []
        password = _as_bytes(getattr(config, "backend_password", None))
        if password is not None:
            user = _as_bytes(getattr(config, "backend_username", None))
            args = [b"AUTH", user, password] if user else [b"AUTH", password]
            frames.append(Frame(encode_command(args), 1, None, 0))
        db = getattr(config, "backend_db", 0) or 0
        if db:
            frames.append(Frame(encode_command([b"SELECT", b"%d" % int(db)]), 1, None, 0))
        return frames

    def describe(self, frame: Frame) -> Tuple[Optional[str], List[bytes], Optional[List[bytes]]]:
        """For hooks: the command (upper case), its arguments, every key if it names several."""
        data = frame.data
        args = _resp_args(data) if data.startswith(b"*") else _split_inline(data.strip())
        if not args:
            return None, [], None
        return args[0].upper().decode("utf-8", "replace"), args[1:], command_keys(args)

    def keys(self, frame: Frame) -> Optional[List[bytes]]:
        """
        For sharded clusters: every key of a multi-key command (MGET, DEL,
        MSET, EVAL's keys...), which must all live on one backend; L{None}
        when the frame's routing key tells all.
        """
        data = frame.data
        if not data.startswith(b"*"):
            return None
        # Most commands have one key at most: look at the name before
        # parsing every argument.
        p = data.find(b"\r\n") + 2
        eol = data.find(b"\r\n", p)
        name = data[eol + 2:eol + 2 + int(data[p + 1:eol])].upper()
        if name not in _KEY_RANGES and name not in _NUMKEYS:
            return None
        return command_keys(_resp_args(data))

    def split(self, frame: Frame, groups: List[List[int]]) -> Optional[Tuple[List[Frame], Any]]:
        """
        For sharded clusters, as twemproxy does: cut a multi-key C{MGET},
        C{DEL}, C{UNLINK}, C{EXISTS}, C{TOUCH} or C{MSET} into one request
        per backend, C{groups} being the indexes (into L{keys}) of the keys
        each backend holds; and how to merge their replies into the one the
        client expects.  L{None} for any other command (it is refused).
        """
        args = _resp_args(frame.data)
        name = args[0].upper()
        merge = _MERGES.get(name)
        if merge is None:
            return None
        pairs = name in (b"MSET",)
        frames = []
        for group in groups:
            sub = [args[0]]
            for i in group:
                sub += args[1 + 2 * i:3 + 2 * i] if pairs else [args[1 + i]]
            frames.append(Frame(encode_command(sub), 1, sub[1], frame.flags))
        return frames, lambda replies: merge(replies, groups)

    def variant_setup(self, config: Any, variant: Any) -> List[Frame]:
        """RESP3 shared and pinned connections are pool connections after HELLO 3."""
        if variant == 3:
            return [Frame(encode_command([b"HELLO", b"3"]))]
        return []

    def check_setup_reply(self, frame: Frame, response: bytes) -> Optional[str]:
        if response == _OK:
            return None
        if frame.data.startswith(_HELLO_3) and response[:1] in (b"%", b"*"):
            return None  # HELLO answers with the server's details
        try:
            what = _resp_args(frame.data)[0].decode("ascii", "replace")
        except (ValueError, IndexError):
            what = "setup"
        text = response.decode("utf-8", "replace").strip()
        if text.startswith("-"):
            return "%s failed: %s" % (what, text[1:])
        return "%s: unexpected reply %r" % (what, text[:200])

    def wait_time(self, frame: Frame) -> Optional[float]:
        """
        How long a blocking command may wait by its own timeout (seconds;
        L{None}: 0, forever): BLPOP and the like's last argument, BLMPOP's
        and BZMPOP's first, XREAD's BLOCK and WAIT's, in milliseconds.
        """
        args = _resp_args(frame.data)
        name = args[0].upper()
        if name in (b"XREAD", b"XREADGROUP"):
            upper = [a.upper() for a in args]
            at = upper.index(b"BLOCK") + 1 if b"BLOCK" in upper else 0
            raw, scale = (args[at] if at and at < len(args) else b"0"), 0.001
        elif name == b"WAIT":
            raw, scale = (args[2] if len(args) > 2 else b"0"), 0.001
        elif name == b"WAITAOF":
            raw, scale = (args[3] if len(args) > 3 else b"0"), 0.001
        elif name in (b"BLMPOP", b"BZMPOP"):
            raw, scale = (args[1] if len(args) > 1 else b"0"), 1.0
        else:
            raw, scale = args[-1], 1.0
        try:
            seconds = float(raw) * scale
        except ValueError:
            return 0.0  # redis refuses it at once
        if seconds != seconds or seconds < 0:
            return 0.0
        return None if seconds == 0 else seconds

    def probe(self) -> Frame:
        return Frame(_PING, 1, None, RETRY_SAFE)

    def probe_ok(self, response: bytes) -> bool:
        return response == b"+PONG\r\n"


codec = RedisCodec()
