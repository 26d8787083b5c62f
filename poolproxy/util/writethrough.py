"""
Writing to a socket at once when nothing is queued on it.

Twisted's C{transport.write} only queues: the bytes go out on the reactor's
next iteration, after registering the socket for writability with the
poller (an C{epoll_ctl} system call) and unregistering it once sent
(another).  For a proxy's client-bound replies, one per request at
pipeline depth 1, that is two system calls and a pass through C{doWrite}
per reply.  L{write_through} sends straight away when the transport has
nothing queued, and queues only what the socket does not take.

Writes to a shared backend connection keep Twisted's queueing on purpose:
the requests of many clients read in one reactor iteration then go out in
one C{send}.
"""

from __future__ import annotations

from typing import Any


def write_through(transport: Any, data: bytes) -> None:
    """
    Send C{data} on C{transport} now if nothing is queued before it;
    otherwise, or for a transport without Twisted's TCP internals (TLS,
    test transports), C{transport.write(data)}.
    """
    try:
        idle = (not transport._tempDataLen and transport.offset == len(transport.dataBuffer)
                and transport.connected and not transport._writeDisconnected)
    except AttributeError:
        idle = False
    if idle and data:
        sent = transport.writeSomeData(data)
        if sent.__class__ is int:
            if sent == len(data):
                return
            data = data[sent:]
        # An error: write() queues it, and the reactor's doWrite meets the
        # error and closes the connection the usual way.
    transport.write(data)
