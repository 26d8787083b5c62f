"""
What every mode's frontend does with a listener's hooks
(L{poolproxy.hooks}): the client object hooks see, and what each hook
point's result means (an identity, a cluster, a refusal).  A hook's failure
(L{HookFailure}: it raised or timed out) refuses, as its result would.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

from twisted.internet.interfaces import ISSLTransport

from poolproxy.hooks.calling import HookFailure
from poolproxy.hooks.subjects import HookClient

#: What a refusal's error says when the hook failed (never the exception itself).
HOOK_FAILED = "poolproxy: the {point} hook failed"


def hook_client(factory: Any, transport: Any, protocol: str) -> HookClient:
    """A client's L{HookClient}, from its listener (C{factory.name}) and transport."""
    try:
        peer = transport.getPeer()
    except Exception:
        peer = None
    return HookClient(factory.name, protocol, peer, ISSLTransport.providedBy(transport))


class HookSubject:
    """
    A frontend whose client hooks may see: its L{HookClient}, made when a
    hook first needs it (C{hook_protocol} names the listener's protocol).
    """

    hook_client: Optional[HookClient] = None
    hook_protocol = ""
    factory: Any
    transport: Any

    def hook_subject(self) -> HookClient:
        client = self.hook_client
        if client is None:
            client = self.hook_client = hook_client(self.factory, self.transport,
                                                    self.hook_protocol)
        return client

    def hook_connected(self) -> None:
        """The listener's on_connect hook, if it has one (its answer is not waited for)."""
        hook = self.factory.hooks.on_connect
        if hook is not None:
            hook(self.hook_subject())

    def hook_disconnected(self) -> None:
        """The listener's on_disconnect hook, if it has one."""
        hook = self.factory.hooks.on_disconnect
        if hook is not None:
            hook(self.hook_subject())


def identity_of(result: Any, client: HookClient) -> Tuple[bool, Any]:
    """
    An C{authenticate} result: (accepted, identity).  True means the
    client's own user name; False, L{None}, an empty value or a failure
    refuse.
    """
    if isinstance(result, HookFailure) or not result:
        return False, None
    if result is True:
        return True, client.username if client.username is not None else True
    return True, result


def routed_cluster(result: Any, routes: Dict[str, Any], own: Any) -> Tuple[Any, Optional[str]]:
    """
    A C{route} result: (cluster, None), with C{own} for L{None} or its own
    name; or (None, why) for a failure or a cluster the listener cannot
    reach (another protocol's, or none of that name).
    """
    if result is None:
        return own, None
    if isinstance(result, HookFailure):
        return None, HOOK_FAILED.format(point="route")
    if isinstance(result, bytes):
        result = result.decode("utf-8", "replace")
    cluster = routes.get(result) if isinstance(result, str) else None
    if cluster is None:
        return None, f"poolproxy: the route hook chose no cluster this listener serves " \
                     f"({str(result)[:100]!r})"
    return cluster, None


def refusal(result: Any) -> Optional[str]:
    """
    An C{allow} result: L{None} (or True) to serve the request, else the
    text to refuse it with.
    """
    if result is None or result is True:
        return None
    if isinstance(result, HookFailure):
        return HOOK_FAILED.format(point="allow")
    if result is False:
        return "poolproxy: refused by policy"
    if isinstance(result, bytes):
        result = result.decode("utf-8", "replace")
    return " ".join(str(result).split())[:500] or "poolproxy: refused by policy"


__all__ = ["HOOK_FAILED", "HookSubject", "hook_client", "identity_of",
           "refusal", "routed_cluster"]
