"""
A factory for one connection whose protocol is built beforehand: what a
pool or a probe hands to a client endpoint's C{connect}, so that it holds
the protocol object (and can cancel or time out the attempt) before the
connection exists.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from twisted.internet.protocol import Factory, Protocol

P = TypeVar("P", bound=Protocol)


class OneProtocolFactory(Factory, Generic[P]):
    """
    Hands C{protocol} to the endpoint, quietly: a pool makes many
    connections, and Twisted's "Starting factory" line for each is noise.
    """

    noisy = False

    def __init__(self, protocol: P) -> None:
        self._protocol = protocol

    def buildProtocol(self, addr: Any) -> P:
        return self._protocol


__all__ = ["OneProtocolFactory"]
