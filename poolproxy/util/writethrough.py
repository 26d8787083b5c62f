"""
Writing to a socket at once when nothing is queued on it.

Twisted's C{transport.write} only queues: the bytes go out on the reactor's
next iteration, after registering the socket for writability with the
poller (an C{epoll_ctl} system call) and unregistering it once sent
(another).  For a proxy's client-bound replies, one per request at
pipeline depth 1, that is two system calls and a pass through C{doWrite}
per reply.  L{write_through} sends straight away when the transport has
nothing queued, and queues only what the socket does not take.

Only a socket of Twisted's own is written to directly: any other transport,
TLS's above all, gets C{transport.write}.

Writes to a shared backend connection keep Twisted's queueing on purpose:
the requests of many clients read in one reactor iteration then go out in
one C{send}.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.abstract import FileDescriptor


def write_through(transport: Any, data: bytes) -> None:
    """
    Send C{data} on C{transport} now if nothing is queued before it;
    otherwise, or for any transport but a socket of Twisted's own (TLS,
    test transports), C{transport.write(data)}.
    """
    # Only a FileDescriptor is a socket this may write to directly.  A TLS
    # transport (an ssl: listener's, TLSMemoryBIOProtocol) is not, yet looks
    # up what it lacks on the socket beneath it: every other check would
    # pass there, and the bytes would go out in plain text under the TLS
    # layer.  A socket that startTLS turned to TLS says so with C{TLS}.
    idle = False
    if isinstance(transport, FileDescriptor):
        socket: Any = transport
        try:
            idle = bool(not socket.TLS and not socket._tempDataLen
                        and socket.offset == len(socket.dataBuffer)
                        and socket.connected and not socket._writeDisconnected)
        except AttributeError:
            pass
    if idle and data:
        sent = transport.writeSomeData(data)
        if sent.__class__ is int:
            if sent == len(data):
                return
            data = data[sent:]
        # An error: write() queues it, and the reactor's doWrite meets the
        # error and closes the connection the usual way.
    transport.write(data)
