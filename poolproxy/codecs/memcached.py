"""
The memcached text protocol: classic commands and meta commands.

Requests are cut by line (C{\\n}, with an optional C{\\r} before it, as
memcached accepts) and, for C{set}-like commands and C{ms}, by the data block
whose length the line gives; a data block must end with C{\\r\\n}.  Responses
are cut according to what each request expects (L{VALUES}, L{LINE}, L{STATS}
or L{META}), so the proxy calls L{MemcachedResponseFramer.expect} for every
frame it sends that has C{replies > 0}.

How many responses a request gets follows memcached's own rules
(C{proto_text.c}): a classic command whose last token is C{noreply} gets none,
not even an error; a malformed token count gets C{ERROR}.  Lines memcached
would misread (control characters, over-long keys) are answered here and never
sent, and a data block is swallowed here when its line is well formed enough
to know its length: a client cannot smuggle a command inside a data block.

A L{LOCAL} frame has C{replies=0}: nothing goes to a backend, the proxy writes
C{Frame.reply}, which is C{b""} where memcached itself would say nothing.
C{quit} is L{LOCAL} and L{CLOSE}, and nothing after it is framed, as memcached
runs nothing after it.  Every frame's C{data} is exactly the bytes it was cut
from, so the frames' data, joined, is the client's stream.

L{RETRY_SAFE} marks reads: get, gets, version, stats, mn, me, and mg without
a flag that changes the item or hands out a token (T, N, R).

Meta commands with the C{q} (quiet) flag are refused: a quiet command's
response may never come, which breaks pairing responses with requests.
"""

from __future__ import annotations

import binascii
from collections import deque
from typing import Any, Deque, Dict, List, Optional, Sequence, Tuple

from zope.interface import implementer

from poolproxy.codec import (CLOSE, LOCAL, REFUSED, RETRY_SAFE, BaseCodec, Frame, FramingError,
                             IBoundedFramer, IDescribingCodec, IProbingCodec, IRequestFramer,
                             IResponseFramer, IShardedCodec)
from poolproxy.codecs._buffer import Unparsed

#: Response kinds (C{Frame.expect}): C{VALUE} blocks then C{END}; one line;
#: C{STAT} lines then C{END}; one meta line, with a data block after C{VA}.
VALUES = "values"
LINE = "line"
STATS = "stats"
META = "meta"

#: memcached's KEY_MAX_LENGTH.
MAX_KEY_LENGTH = 250
#: Longest command line accepted, and longest response line.
MAX_LINE = 8192
#: max_request_size unless configured: memcached's own item size (-I 1m).
DEFAULT_MAX_REQUEST = 1024 * 1024
#: Largest data block memcached can read (INT_MAX - 2).
_MAX_BLOCK = 2 ** 31 - 3
#: memcached refuses meta commands with this many tokens (MFLAG_MAX_OPT_LENGTH).
_MAX_META_TOKENS = 19

ERROR_LINE = b"ERROR\r\n"
BAD_FORMAT = b"CLIENT_ERROR bad command line format\r\n"
QUIET_UNSUPPORTED = b"CLIENT_ERROR poolproxy: meta quiet mode is not supported\r\n"
_FLAGS_TOO_LONG = b"CLIENT_ERROR options flags too long\r\n"

_CTRL = bytes(range(32)) + b"\x7f"
_NOREPLY = b"noreply"
_RESPONSE_ERRORS = (b"ERROR", b"CLIENT_ERROR", b"SERVER_ERROR")

# Command classes.
(_GET, _GAT, _STORE, _CAS, _DELETE, _ARITH, _TOUCH, _VERSION, _VERBOSITY, _FLUSH,
 _STATS, _QUIT, _MG, _MS, _MD, _MA, _MN, _ME, _ADMIN, _DENIED) = range(20)

_COMMANDS = {
    b"get": _GET, b"gets": _GET, b"gat": _GAT, b"gats": _GAT,
    b"set": _STORE, b"add": _STORE, b"replace": _STORE, b"append": _STORE,
    b"prepend": _STORE, b"cas": _CAS,
    b"delete": _DELETE, b"incr": _ARITH, b"decr": _ARITH, b"touch": _TOUCH,
    b"version": _VERSION, b"verbosity": _VERBOSITY, b"flush_all": _FLUSH,
    b"stats": _STATS, b"quit": _QUIT, b"shutdown": _ADMIN, b"cache_memlimit": _ADMIN,
    b"mg": _MG, b"ms": _MS, b"md": _MD, b"ma": _MA, b"mn": _MN, b"me": _ME,
}

#: Legal token counts (command included) of classic line commands, as
#: memcached's WANT_TOKENS checks: others get C{ERROR}.
_TOKENS = {_DELETE: (2, 4), _ARITH: (3, 4), _TOUCH: (3, 4), _VERBOSITY: (2, 3),
           _FLUSH: (1, 3)}

#: mg flags that change the item or hand out a token: not safe to repeat.
_MG_UNSAFE = frozenset(b"NTR")

#: What deny_commands is unless configured: the commands that administer the
#: server rather than the data (docs/security.md).
DEFAULT_DENY = ("shutdown", "verbosity", "flush_all", "cache_memlimit")
#: Commands followed by a data block: denied ones are still read whole.
_BLOCKS = frozenset((b"set", b"add", b"replace", b"append", b"prepend", b"cas", b"ms"))


class CommandPolicy:
    """
    What a client may send: the commands refused (L{DEFAULT_DENY} unless
    configured, less those allowed back).  C{commands} is the command table
    with the refused ones marked, so the framer decides with its lookup.
    """

    def __init__(self, deny: Sequence[str] = DEFAULT_DENY, allow: Sequence[str] = ()) -> None:
        allowed = {a.strip().lower().encode("ascii") for a in allow}
        self.deny = frozenset(d.strip().lower().encode("ascii") for d in deny) - allowed
        # Commands with a data block are framed whole, then refused.
        self.deny_blocks = self.deny & _BLOCKS
        self.commands = {name: (_DENIED if name in self.deny and name not in _BLOCKS else cmd)
                         for name, cmd in _COMMANDS.items()}
        for name in self.deny - set(_COMMANDS):
            self.commands[name] = _DENIED


_DEFAULT_POLICY = CommandPolicy()
_POLICIES: Dict[Tuple[Any, Any], CommandPolicy] = {}


def command_policy(options: Any) -> CommandPolicy:
    """The L{CommandPolicy} of codec options (cached: every client's framer shares it)."""
    deny = getattr(options, "deny_commands", None)
    allow = tuple(getattr(options, "allow_commands", ()) or ())
    key = (tuple(deny) if deny is not None else None, allow)
    policy = _POLICIES.get(key)
    if policy is None:
        policy = _POLICIES[key] = CommandPolicy(DEFAULT_DENY if deny is None else deny, allow)
    return policy


def _refused(data: bytes, name: bytes, noreply: bool) -> Frame:
    """The proxy's refusal of a denied command (silent for noreply, as memcached is)."""
    reply = b"" if noreply else (b"CLIENT_ERROR poolproxy: the '%s' command is refused by "
                                 b"this proxy\r\n" % name[:100])
    return Frame(data, 0, name, LOCAL | REFUSED, None, reply)


def _number(token: bytes, signed: bool, limit: int) -> Optional[int]:
    """
    What memcached's C{safe_strtol}/C{safe_strtoul} make of C{token}.

    @return: the value, or L{None} where memcached rejects the token.
    """
    negative = False
    if token[:1] == b"+":
        token = token[1:]
    elif signed and token[:1] == b"-":
        token, negative = token[1:], True
    if not token.isdigit():
        return None
    token = token.lstrip(b"0") or b"0"
    if len(token) > 20:  # also keeps int() clear of the digit limit
        return None
    value = int(token)
    if value > limit or (negative and value > 2 ** 63):
        return None
    return -value if negative else value


def _block_size(cmd: int, parts: List[bytes]) -> int:
    """
    The size of the data block of a storage command or C{ms}, read as
    memcached reads it.

    @raise FramingError: where memcached would reject the line (and then
        read the block as commands).
    """
    count = len(parts)
    size: Optional[int]
    if cmd == _MS:
        size = _number(parts[2], True, _MAX_BLOCK) if count >= 3 else None
    elif count - (5 if cmd == _STORE else 6) not in (0, 1):
        size = None
    elif (_number(parts[2], False, 2 ** 64 - 1) is None
          or _number(parts[3], True, 2 ** 31 - 1) is None
          or (cmd == _CAS and _number(parts[5], False, 2 ** 64 - 1) is None)):
        size = None
    else:
        size = _number(parts[4], True, _MAX_BLOCK)
    if size is None or size < 0:
        raise FramingError("malformed", "bad command line format")
    return size


def _bad_keys(keys: List[bytes]) -> bool:
    """Whether any key is longer than memcached accepts."""
    for key in keys:
        if len(key) > MAX_KEY_LENGTH:
            return True
    return False


def _local(data: bytes, reply: bytes, flags: int = 0) -> Frame:
    return Frame(data, 0, None, LOCAL | flags, None, reply)


@implementer(IRequestFramer)
class MemcachedRequestFramer(Unparsed):
    """
    Cuts one client's memcached stream into frames.

    @ivar max_request_size: the largest data block accepted; a larger one is a
        C{too_large} error as soon as its command line is read.
    """

    def __init__(self, max_request_size: int, policy: CommandPolicy = _DEFAULT_POLICY) -> None:
        self.max_request_size = max_request_size
        self._policy = policy
        self.error: Optional[FramingError] = None
        self._init_unparsed()           # bytes of a frame cut short (codecs._buffer)
        self._scan = 0                  # where to resume looking for a newline
        self._closed = False            # quit seen: the rest is never framed

    def pending(self) -> int:
        return self._have

    def feed(self, data: bytes) -> List[Frame]:
        if self.error is not None or self._closed or not data:
            return []
        buf = self._take(data) if self._have else data  # codecs._buffer
        if buf is None:
            return []
        frames: List[Frame] = []
        append = frames.append
        n = len(buf)
        pos = 0
        scan = self._scan
        need = 0
        # Locals, not globals, on the hot path (it matters on CPython 3.9).
        frame, local, commands, ctrl_chars = Frame, _local, self._policy.commands, _CTRL
        get, store, max_key, max_line = _GET, _STORE, MAX_KEY_LENGTH, MAX_LINE
        deny_blocks = self._policy.deny_blocks
        try:
            while pos < n:
                eol = buf.find(b"\n", pos + scan)
                if eol < 0:
                    if n - pos > max_line:
                        raise FramingError("too_large", "command line too long")
                    scan = n - pos
                    need = -max_line  # a newline, within the line's limit
                    break
                scan = 0
                if eol - pos > max_line:
                    raise FramingError("too_large", "command line too long")
                end = eol + 1
                if eol > pos and buf[eol - 1] == 13:
                    line = buf[pos:eol - 1]
                else:
                    line = buf[pos:eol]
                if len(line.translate(None, ctrl_chars)) == len(line):
                    ctrl = False
                    parts = line.split()
                else:
                    # memcached splits on spaces only; such a line is never sent.
                    ctrl = True
                    parts = [token for token in line.split(b" ") if token]
                cmd = commands.get(parts[0]) if parts else None

                if cmd == get:
                    if len(parts) < 2:
                        append(local(buf[pos:end], ERROR_LINE))
                    elif ctrl or (len(line) > max_key and _bad_keys(parts)):
                        append(local(buf[pos:end], BAD_FORMAT))
                    else:
                        append(frame(buf[pos:end], 1, parts[1], RETRY_SAFE, VALUES))
                    pos = end
                    continue

                if cmd == store or cmd == _CAS or cmd == _MS:
                    count = len(parts)
                    if cmd == store and (count == 5 or count == 6):
                        flags, exptime, size_token = parts[2], parts[3], parts[4]
                        if (size_token.isdigit() and flags.isdigit() and exptime.isdigit()
                                and len(size_token) < 10 and len(exptime) < 10
                                and len(flags) < 20):
                            size = int(size_token)
                        else:
                            size = _block_size(cmd, parts)
                    else:
                        size = _block_size(cmd, parts)
                    if size > self.max_request_size:
                        raise FramingError("too_large", "object too large for cache")
                    total = end + size + 2
                    if total > n:
                        need = total - pos
                        break
                    if buf[total - 2] != 13 or buf[total - 1] != 10:
                        raise FramingError("malformed", "bad data chunk")
                    key = parts[1]
                    if deny_blocks and parts[0] in deny_blocks:
                        append(_refused(buf[pos:total], parts[0], parts[-1] == _NOREPLY))
                    elif cmd == store and not ctrl and len(key) <= max_key:
                        replies = 1 if count == 5 or parts[5] != _NOREPLY else 0
                        append(frame(buf[pos:total], replies, key, 0, LINE))
                    else:
                        append(self._block_frame(cmd, parts, ctrl, buf[pos:total]))
                    pos = total
                    continue

                if cmd == _QUIT:
                    # memcached closes at once: what follows is never run.
                    append(local(buf[pos:end], b"", CLOSE))
                    self._closed = True
                    pos = n
                    break
                append(self._line_frame(cmd, parts, ctrl, buf[pos:end]))
                pos = end
        except FramingError as e:
            self.error = e
            self._drop()
            self._scan = 0
            return frames
        if pos < n:
            self._keep(buf, pos, need)
            self._scan = scan
        else:
            self._scan = 0
        return frames

    def _block_frame(self, cmd: int, parts: List[bytes], ctrl: bool, data: bytes) -> Frame:
        """
        The frame for a complete storage command or C{ms}, data block included.
        """
        key = parts[1]
        if cmd == _MS:
            if ctrl or len(key) > MAX_KEY_LENGTH:
                return _local(data, BAD_FORMAT)
            if len(parts) > _MAX_META_TOKENS:
                return _local(data, _FLAGS_TOO_LONG)
            quiet, key = _meta_flags(parts, 3)
            if quiet:
                return _local(data, QUIET_UNSUPPORTED)
            return Frame(data, 1, key, 0, META)
        noreply = parts[-1] == _NOREPLY
        if ctrl or len(key) > MAX_KEY_LENGTH:
            return _local(data, b"" if noreply else BAD_FORMAT)
        return Frame(data, 0 if noreply else 1, key, 0, LINE)

    def _line_frame(self, cmd: Optional[int], parts: List[bytes], ctrl: bool,
                    data: bytes) -> Frame:
        """
        The frame for a command without a data block, other than C{get}.
        """
        if cmd is None:
            return _local(data, ERROR_LINE)
        if cmd == _DENIED:
            return _refused(data, parts[0], parts[-1] == _NOREPLY)
        if ctrl:
            noreply = cmd in _TOKENS and parts[-1] == _NOREPLY
            return _local(data, b"" if noreply else BAD_FORMAT)
        count = len(parts)
        if cmd == _ADMIN:  # shutdown, cache_memlimit, when allowed: one line back
            return Frame(data, 1, None, 0, LINE)

        if cmd >= _MG:  # meta commands
            if cmd == _MN:
                return Frame(data, 1, None, RETRY_SAFE, META)
            if count < 2:
                return _local(data, BAD_FORMAT if cmd == _ME else ERROR_LINE)
            if len(parts[1]) > MAX_KEY_LENGTH:
                return _local(data, BAD_FORMAT)
            if cmd == _ME:
                return Frame(data, 1, parts[1], RETRY_SAFE, META)
            if count > _MAX_META_TOKENS:
                return _local(data, _FLAGS_TOO_LONG)
            quiet, key = _meta_flags(parts, 2)
            if quiet:
                return _local(data, QUIET_UNSUPPORTED)
            flags = 0
            if cmd == _MG:
                flags = RETRY_SAFE
                for token in parts[2:]:
                    if token[0] in _MG_UNSAFE:
                        flags = 0
                        break
            return Frame(data, 1, key, flags, META)

        if cmd == _VERSION:
            return Frame(data, 1, None, RETRY_SAFE, LINE)
        if cmd == _STATS:
            if count > 1 and (parts[1] == b"reset" or (
                    parts[1] == b"detail" and count > 2 and parts[2] in (b"on", b"off"))):
                return Frame(data, 1, None, 0, LINE)
            return Frame(data, 1, None, RETRY_SAFE, STATS)
        if cmd == _GAT:
            if count < 3:
                return _local(data, ERROR_LINE)
            if len(data) > MAX_KEY_LENGTH and _bad_keys(parts):
                return _local(data, BAD_FORMAT)
            return Frame(data, 1, parts[2], 0, VALUES)

        low, high = _TOKENS[cmd]
        if count < low or count > high:
            return _local(data, ERROR_LINE)
        # memcached reads noreply from the last token (delete: only past two).
        noreply = parts[-1] == _NOREPLY and (cmd != _DELETE or count > 2)
        replies = 0 if noreply else 1
        if cmd == _VERBOSITY or cmd == _FLUSH:
            return Frame(data, replies, None, 0, LINE)
        if len(parts[1]) > MAX_KEY_LENGTH:
            return _local(data, b"" if noreply else BAD_FORMAT)
        return Frame(data, replies, parts[1], 0, LINE)


def _meta_flags(parts: List[bytes], start: int) -> "tuple[bool, bytes]":
    """
    Whether a meta command has the C{q} flag, and its routing key: the key
    token, base64-decoded when the C{b} flag says it is encoded.
    """
    quiet = binary = False
    for token in parts[start:]:
        flag = token[0]
        if flag == 113:  # q
            quiet = True
        elif flag == 98:  # b
            binary = True
    key = parts[1]
    if binary:
        try:
            key = binascii.a2b_base64(key)
        except (binascii.Error, ValueError):
            pass
    return quiet, key


#: Marks C{_done} while the rest of a response too large to hold is discarded.
_DROPPED = b"(dropped)"
_TOO_LARGE_REPLY = b"SERVER_ERROR poolproxy: reply too large (more than max_reply_size)\r\n"


@implementer(IResponseFramer, IBoundedFramer)
class MemcachedResponseFramer(Unparsed):
    """
    Cuts one backend connection's memcached stream into responses, each of
    the kind the proxy said to expect, in order.  A response larger than
    C{max_reply_size} is answered with C{SERVER_ERROR} as soon as that is
    known and the rest of it skipped unheld (IBoundedFramer); the checks run
    only where bytes would be held for a later feed.
    """

    needs_expect = True

    def __init__(self) -> None:
        self.error: Optional[FramingError] = None
        self.max_reply_size: Optional[int] = None
        self.on_too_large: Optional[Any] = None
        self._skip = 0                  # bytes of a dropped data block still to skip
        self._skip_ends = False         # ...which ends its response (meta)
        self._expect: Deque[Any] = deque()
        self._done: List[bytes] = []    # checked bytes of the first response
        self._init_unparsed()           # the bytes held after them (codecs._buffer)

    def expect(self, kind: Any) -> None:
        self._expect.append(kind)

    def pending(self) -> int:
        """Bytes held of the next response (checked, and not yet parsed)."""
        return self._have + self._held()

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
        expect = self._expect
        popleft = expect.popleft
        n = len(buf)
        pos = 0
        scan = 0
        need = 0
        line_kind, values, meta, stats = LINE, VALUES, META, STATS
        max_line, errors = MAX_LINE, _RESPONSE_ERRORS
        try:
            while pos < n:
                if not expect:
                    raise FramingError("malformed", "unexpected data from the backend")
                kind = expect[0]
                done = -1
                while True:  # one line per turn; VALUES and STATS take several
                    eol = buf.find(b"\n", scan)
                    if eol < 0:
                        if n - scan > max_line:
                            raise FramingError("malformed", "response line too long")
                        need = -max_line  # a newline, within the line's limit
                        break
                    if eol - scan < 2 or buf[eol - 1] != 13 or eol - scan > max_line:
                        raise FramingError("malformed", "bad response line")
                    if kind == line_kind:
                        done = eol + 1
                        break
                    if kind == values:
                        if eol - scan == 4 and buf.startswith(b"END", scan):
                            done = eol + 1
                            break
                        if buf.startswith(b"VALUE ", scan):
                            header = buf[scan + 6:eol - 1].split()
                            size = header[2] if len(header) == 3 or len(header) == 4 else b""
                            if not size.isdigit() or len(size) > 10:
                                raise FramingError("malformed", "bad VALUE line")
                            end = eol + int(size) + 3
                        elif buf.startswith(errors, scan):
                            done = eol + 1
                            break
                        else:
                            raise FramingError("malformed", "unexpected response line")
                    elif kind == meta:
                        if not buf.startswith(b"VA ", scan):
                            done = eol + 1
                            break
                        header = buf[scan + 3:eol - 1].split()
                        size = header[0] if header else b""
                        if not size.isdigit() or len(size) > 10:
                            raise FramingError("malformed", "bad VA line")
                        end = eol + int(size) + 3
                    elif kind == stats:
                        if ((eol - scan == 4 and buf.startswith(b"END", scan))
                                or buf.startswith(errors, scan)):
                            done = eol + 1
                            break
                        scan = eol + 1
                        continue
                    else:
                        raise FramingError("malformed", "unknown response kind")
                    # A data block follows the line, and CR LF ends it at end.
                    if end > n:
                        need = end
                        limit = self.max_reply_size
                        if limit is not None and self._held() + end - pos > limit:
                            self._refuse_reply(out, end - n, kind)
                            pos = scan = n
                            need = 0
                        break
                    if buf[end - 2] != 13 or buf[end - 1] != 10:
                        raise FramingError("malformed", "bad data block")
                    if kind == meta:
                        done = end
                        break
                    scan = end
                if done < 0:
                    break
                if self._done:
                    if self._done[0] is not _DROPPED:  # else: answered already
                        self._done.append(buf[pos:done])
                        append(b"".join(self._done))
                    self._done = []
                else:
                    append(buf[pos:done])
                popleft()
                pos = scan = done
        except FramingError as e:
            self.error = e
            self._done = []
            self._drop()
            return out
        if pos < n:
            if scan > pos:
                # Set aside what is checked: never joined or scanned again
                # while the rest of a long response arrives (unless it is
                # being dropped, or too large to keep).
                if not self._done or self._done[0] is not _DROPPED:
                    limit = self.max_reply_size
                    if limit is not None and self._held() + scan - pos > limit:
                        self._refuse_reply(out, 0, None)
                    else:
                        self._done.append(buf[pos:scan])
                pos = scan
            # A data block's end counts from the first byte held.
            self._keep(buf, pos, need - pos if need > 0 else need)
        return out

    def _held(self) -> int:
        done = self._done
        return 0 if done and done[0] is _DROPPED else sum(map(len, done))

    def _refuse_reply(self, out: List[bytes], skip: int, kind: Any) -> None:
        """
        The response under way is too large to hold: answer it with the
        error now (once), drop what is held of it, and skip C{skip} bytes
        (the rest of a data block; a meta response ends with it).
        """
        if not self._done or self._done[0] is not _DROPPED:
            out.append(_TOO_LARGE_REPLY)
            if self.on_too_large is not None:
                self.on_too_large()
        self._done = [_DROPPED]
        self._skip = skip
        self._skip_ends = kind == META

    def _skip_some(self, data: bytes) -> bytes:
        """Skip what is left of a dropped data block; what follows it."""
        skip = self._skip
        if len(data) < skip:
            self._skip = skip - len(data)
            return b""
        self._skip = 0
        if self._skip_ends:  # a meta response is its one block
            self._expect.popleft()
            self._done = []
        return data[skip:]


_ERROR_REPLIES = {
    "overloaded": b"SERVER_ERROR poolproxy: overloaded, try again later\r\n",
    "unavailable": b"SERVER_ERROR poolproxy: backend unavailable\r\n",
    "timeout": b"SERVER_ERROR poolproxy: backend timed out\r\n",
    "too_large": b"SERVER_ERROR object too large for cache\r\n",
}

_SANITISE = {i: " " for i in list(range(32)) + [127]}


def _retrieval(frame: Frame) -> Tuple[List[bytes], List[bytes]]:
    """A retrieval's command words (with gat's expiry) and its keys."""
    parts = frame.data.split()
    first = 2 if parts[0] in (b"gat", b"gats") else 1
    return parts[:first], parts[first:]


def _merge_values(replies: List[bytes]) -> bytes:
    """The parts of a split retrieval: their VALUE blocks, then one END."""
    for reply in replies:
        if not reply.endswith(b"END\r\n"):
            return reply  # an error line: the whole request failed
    return b"".join(reply[:-5] for reply in replies) + b"END\r\n"


@implementer(IShardedCodec, IProbingCodec, IDescribingCodec)
class MemcachedCodec(BaseCodec):
    """
    The memcached text protocol, multiplexed: frames from many clients share
    pooled backend connections.
    """

    name = "memcached"
    mode = "multiplexed"
    #: max_request_size unless configured (poolproxy.assemble).
    default_max_request_size = DEFAULT_MAX_REQUEST

    def request_framer(self, config: Any) -> MemcachedRequestFramer:
        """
        @param config: the proxy's configuration (its C{max_request_size} is
            used, 1 MiB by default), or that size itself.
        """
        if isinstance(config, int):
            return MemcachedRequestFramer(config)
        return MemcachedRequestFramer(getattr(config, "max_request_size", None)
                                      or DEFAULT_MAX_REQUEST,
                                      command_policy(config))

    def response_framer(self) -> MemcachedResponseFramer:
        return MemcachedResponseFramer()

    def describe(self, frame: Frame) -> Tuple[Optional[str], List[bytes], Optional[List[bytes]]]:
        """For hooks: the command as sent (C{get}), the words of its line after it, its keys."""
        line = frame.data.split(b"\r\n", 1)[0].split()
        if not line:
            return None, [], None
        return line[0].decode("ascii", "replace"), line[1:], self.keys(frame)

    def keys(self, frame: Frame) -> Optional[List[bytes]]:
        """
        For sharded clusters: every key of a retrieval (C{get}, C{gets},
        C{gat}, C{gats}) that names more than one; L{None} otherwise.
        """
        if frame.expect != VALUES:
            return None
        keys = _retrieval(frame)[1]
        return keys if len(keys) > 1 else None

    def split(self, frame: Frame, groups: List[List[int]]) -> Tuple[List[Frame], Any]:
        """
        A multi-key retrieval cut into one per backend (as twemproxy does);
        their C{VALUE} blocks are merged before one C{END}.  A part that
        failed makes the whole reply that error line.
        """
        head, keys = _retrieval(frame)
        frames = [Frame(b" ".join(head + [keys[i] for i in group]) + b"\r\n", 1,
                        keys[group[0]], frame.flags, VALUES) for group in groups]
        return frames, _merge_values


    def error_reply(self, kind: str, message: str) -> bytes:
        """
        One C{SERVER_ERROR} or C{CLIENT_ERROR} line: memcached clients read
        either as the complete (failed) answer to any request, a get included.
        """
        reply = _ERROR_REPLIES.get(kind)
        if reply is not None:
            return reply
        text = (message or "").translate(_SANITISE).strip()
        if kind == "denied":  # the client's request, refused by a hook: its own error
            prefix = b"CLIENT_ERROR "
        elif kind == "malformed":
            if text.startswith("CLIENT_ERROR "):
                text = text[len("CLIENT_ERROR "):].lstrip()
            prefix = b"CLIENT_ERROR "
            text = text or "bad command line format"
        else:
            prefix = b"SERVER_ERROR poolproxy: "
            text = text or kind.translate(_SANITISE)
        return prefix + text[:200].encode("ascii", "replace") + b"\r\n"

    def probe(self) -> Optional[Frame]:
        """A C{version} request: cheap, and answered even by a full cache."""
        return Frame(b"version\r\n", 1, None, RETRY_SAFE, LINE)

    def probe_ok(self, response: bytes) -> bool:
        return response.startswith(b"VERSION ")


codec = MemcachedCodec()
