"""
A multiplexed client's frames through its listener's hooks
(L{poolproxy.hooks}) before they are held to be sent: C{authenticate} for
credentials (L{AUTHENTICATE} frames), then per request C{route} and
C{allow}.

Frames keep their order: while a hook's Deferred is pending, the frames
after it wait here (and count against the client's pipeline limit), and
nothing of them reaches a backend.  A frame routed to another cluster
becomes a L{RoutedFrame}, which carries its cluster through resends,
pinning and splits.  A refusal is a L{LOCAL} frame in the request's place.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any, Deque, List, Optional

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from poolproxy.codec import (AUTH_FAILED, AUTHENTICATE, CLOSE, DIRTY, LOCAL, PASSTHROUGH, PIN,
                             REFUSED, UNPIN, VARIANT, Frame, IDescribingCodec, IHookableFramer)
from poolproxy.hooks.subjects import HookRequest
from poolproxy.proxy.hooked import identity_of, refusal, routed_cluster

if TYPE_CHECKING:
    from poolproxy.proxy.multiplexed.client import MultiplexFrontend

#: A hook's answer is not in yet.
_WAIT: Any = object()
_NOTHING: Any = object()
#: Refusing a frame with these flags would leave the client's connection
#: state (the framer's idea of it) unlike the backend's: the client is
#: closed after the refusal instead.
_STATEFUL = PIN | UNPIN | PASSTHROUGH | DIRTY | VARIANT
#: Frames checked by neither route nor allow (credentials go to authenticate).
_UNCHECKED = AUTHENTICATE | LOCAL
#: What the check of the frame at the head has done so far.
_ROUTE, _ALLOW = 0, 1


class RoutedFrame(Frame):
    """A frame a C{route} hook sent to a cluster other than its listener's."""

    __slots__ = ("cluster",)

    def __init__(self, frame: Frame, cluster: Any) -> None:
        super().__init__(frame.data, frame.replies, frame.key, frame.flags, frame.expect,
                         frame.reply)
        self.cluster = cluster


class RequestChecks:
    """
    One client's frames on their way through the hooks.

    @ivar waiting: frames not checked yet, oldest first; the first may be
        waiting on a hook.
    @ivar routed: whether any frame went to another cluster (the frontend
        then routes frame by frame).
    """

    def __init__(self, frontend: "MultiplexFrontend") -> None:
        self.frontend = frontend
        self.waiting: Deque[Frame] = deque()
        self.routed = False
        self._pending: "Optional[Deferred[Any]]" = None
        # The answer of a Deferred that fired, and the hook it came from: a
        # reload may have replaced the hook since, and then it is asked again.
        self._answer: Any = _NOTHING
        self._answered_by: Any = None
        self._calling = False
        self._request: Optional[HookRequest] = None
        self._current: Any = None  # the frame being checked, as routed so far
        self._stage = _ROUTE
        # Frames framed while refused credentials were taken as good, up to
        # the next credentials: answered NOAUTH (see _authenticate).
        self._unauthenticated = False
        # Whether the client is authenticated, as the hook decided: the
        # framer takes every AUTH as good until told.
        framer = frontend.framer
        self._authenticated = bool(getattr(framer, "authenticated", True))
        # The same for every request of the connection.
        self.client = frontend.hook_subject()
        self.cluster_name = frontend.factory.cluster.name
        codec = frontend.codec
        self._describe = (IDescribingCodec(codec).describe
                          if IDescribingCodec.providedBy(codec) else None)

    @property
    def busy(self) -> bool:
        return bool(self.waiting)

    def feed(self, frames: List[Frame]) -> None:
        """Frames just framed: checked in order, behind any still waiting."""
        if self.frontend._closing:
            return
        if self._pending is not None or self.waiting:
            self.waiting.extend(frames)
            if self._pending is None:
                self.run()
            return
        # Nothing waits: check them as they are, without queueing them; the
        # common case (an allow hook alone, answering None at once) inline.
        held = self.frontend.held
        hooks = self.frontend.factory.hooks
        allow = hooks.allow
        inline = allow is not None and hooks.route is None and not self._unauthenticated
        client, cluster, describe = self.client, self.cluster_name, self._describe
        fn = allow.fn if allow is not None else None
        for i in range(len(frames)):
            frame = frames[i]
            if inline and not frame.flags & _UNCHECKED:
                request = HookRequest(client, cluster, frame.key, frame.data, describe, frame)
                # Hook.__call__'s work, without its call.
                try:
                    answer = fn(request)  # type: ignore[misc]
                except Exception:
                    answer = allow.failed(Failure())
                else:
                    if answer is None:
                        allow.ok += 1
                        held.append(frame)
                        continue
                    answer = allow.settled(answer)
                answer = self._settle(answer, allow)
                if answer is _WAIT:
                    self._request, self._stage, self._current = request, _ALLOW, frame
                    checked = _WAIT
                else:
                    checked = self._allowed(frame, allow, answer)
            else:
                checked = self._one(frame)
                inline = inline and not self._unauthenticated
            if checked is _WAIT:
                self.waiting.extend(frames[i:])
                return
            held.append(checked)
        self._unauthenticated = False

    def run(self) -> None:
        """Check frames from the head until one waits on a hook; hold the checked."""
        waiting = self.waiting
        frontend = self.frontend
        held = frontend.held
        while waiting and not frontend._gone:
            if frontend._closing:
                # Refused and closing (or its session broken): nothing after
                # that is sent.
                waiting.clear()
                return
            checked = self._one(waiting[0])
            if checked is _WAIT:
                return
            waiting.popleft()
            held.append(checked)
        # Frames framed after this are framed with the hook's verdict.
        self._unauthenticated = False

    def _one(self, frame: Frame) -> Any:
        """The frame to hold in C{frame}'s place, or _WAIT."""
        flags = frame.flags
        if flags & AUTHENTICATE:
            return self._authenticate(frame)
        if flags & LOCAL:
            return frame  # the proxy answers it itself
        if self._unauthenticated:
            return self._refused(frame, "unauthenticated", "Authentication required.")
        return self._check(frame)

    # -- one hook's call ------------------------------------------------------

    def _call(self, hook: Any, subject: Any) -> Any:
        """The hook's answer for the head frame: at once, or _WAIT until it fires."""
        answer, self._answer = self._answer, _NOTHING
        if answer is not _NOTHING and self._answered_by is hook:
            return answer
        return self._settle(hook(subject), hook)

    def _settle(self, result: Any, hook: Any) -> Any:
        """C{hook}'s result: as it is, or _WAIT while its Deferred is pending."""
        if result.__class__ is not Deferred:  # Hook's Deferreds are its own, never subclasses
            return result
        self._answered_by = hook
        self._pending = result
        self._calling = True
        result.addCallback(self._answered)  # Hook's Deferreds are ours alone
        self._calling = False
        if self._pending is None:  # it had fired already
            answer, self._answer = self._answer, _NOTHING
            return answer
        return _WAIT

    def _answered(self, result: Any) -> None:
        self._pending = None
        self._answer = result
        if self._calling:
            return
        frontend = self.frontend
        if frontend._gone or frontend._closing:
            self.waiting.clear()
            return
        self.run()
        frontend._drain()
        frontend._update_reading()

    # -- what is checked ------------------------------------------------------

    def _authenticate(self, frame: Frame) -> Any:
        """
        Credentials (or RESET, which drops them): the hook's verdict, and
        the framer told the client's state once no other credentials of
        its are still to be decided.
        """
        frontend = self.frontend
        hook = frontend.factory.hooks.authenticate
        framer = IHookableFramer(frontend.framer)
        given = framer.credentials[0]
        client = frontend.hook_subject()
        if given is None:  # RESET: authenticated no more
            framer.credentials.popleft()
            self._authenticated = False
            self._settled_framer(framer)
            return frame
        user, password, matched = given
        if hook is None:  # a reload took the hook away: the password file decides
            accepted, identity = matched is not False, None
        else:
            client.username = user.decode("utf-8", "replace")
            client.password = password.decode("utf-8", "replace")
            client.password_ok = matched
            answer = self._call(hook, client)
            if answer is _WAIT:
                return _WAIT  # the password stays while the hook may read it
            accepted, identity = identity_of(answer, client)
        client.password = None
        framer.credentials.popleft()
        if accepted:
            client.identity = identity
            self._authenticated = True
            self._unauthenticated = False
            self._settled_framer(framer)
            return frame
        if hook is not None:
            hook.refused += 1
        # As redis: a failed AUTH leaves the client as it was before it.
        self._unauthenticated = not self._authenticated
        self._settled_framer(framer)
        # Counted as a failed authentication, as one by the password file
        # is; a refused HELLO 3 or SETNAME closes, as other refused state does.
        close = CLOSE if frame.flags & (CLOSE | _STATEFUL) else 0
        return Frame(b"", 1, None, LOCAL | AUTH_FAILED | close,
                     reply=framer.refused_reply(frame))

    def _settled_framer(self, framer: Any) -> None:
        """With no credentials left to decide, the framer frames from the hook's verdict."""
        if not framer.credentials:
            framer.set_authenticated(self._authenticated)

    def _check(self, frame: Frame) -> Any:
        """route, then allow, for one request."""
        frontend = self.frontend
        factory = frontend.factory
        hooks = factory.hooks
        request = self._request
        if request is None:
            request = HookRequest(self.client, self.cluster_name, frame.key, frame.data,
                                  self._describe, frame)
            self._stage = _ROUTE
        else:
            frame = self._current  # as routed so far
        if self._stage == _ROUTE:
            hook = hooks.route
            if hook is not None:
                answer = self._call(hook, request)
                if answer is _WAIT:
                    return self._wait(request, frame)
                cluster, why = routed_cluster(answer, factory.routes, factory.cluster)
                if cluster is None:
                    hook.refused += 1
                    return self._refused(frame, "unavailable", why or "")
                request.cluster = cluster.name
                if cluster is not factory.cluster:
                    frame = RoutedFrame(frame, cluster)
                    self.routed = True
            self._stage = _ALLOW
        hook = hooks.allow
        if hook is not None:
            answer = self._call(hook, request)
            if answer is _WAIT:
                return self._wait(request, frame)
            return self._allowed(frame, hook, answer)
        self._request = None
        return frame

    def _wait(self, request: HookRequest, frame: Frame) -> Any:
        """A hook's answer is pending: where the check of C{frame} goes on from."""
        self._request, self._current = request, frame
        return _WAIT

    def _allowed(self, frame: Frame, hook: Any, answer: Any) -> Frame:
        """The frame, or its refusal, by an allow hook's answer."""
        self._request = None
        why = refusal(answer)
        if why is None:
            return frame
        hook.refused += 1
        return self._refused(frame, "denied", why)

    def _refused(self, frame: Frame, kind: str, why: str) -> Frame:
        """The LOCAL frame answering C{frame} with the protocol's error."""
        self._request = None
        reply = self.frontend.codec.error_reply(kind, why) if frame.replies else b""
        close = CLOSE if frame.flags & _STATEFUL else 0
        return Frame(b"", frame.replies, None, LOCAL | REFUSED | close, reply=reply)


def split_parts(parts: List[Frame], parent: Frame) -> List[Frame]:
    """A routed frame's parts, split across its cluster's shards, keep its cluster."""
    if isinstance(parent, RoutedFrame):
        return [RoutedFrame(part, parent.cluster) for part in parts]
    return parts


__all__ = ["RequestChecks", "RoutedFrame", "split_parts"]
