"""
What the micro-benchmarks share: client connections on StringTransports,
and counting CPU instructions with valgrind's callgrind, which gives the
same figure from run to run for the same code and input, where times on a
shared virtual machine move by 10-50%.  Their --instructions options run
themselves twice through it (with work and without) and divide the
difference by the requests served.
"""

import os
import re
import subprocess
import sys
from typing import Any, List, Tuple

from twisted.internet.testing import StringTransport


def connect_clients(factory: Any, count: int) -> List[Tuple[Any, StringTransport]]:
    """C{count} client connections of a listener's factory: (protocol, transport) each."""
    clients = []
    for _ in range(count):
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        clients.append((protocol, transport))
    return clients


def instructions(argv: List[str]) -> int:
    """Instructions callgrind collects running C{python argv...} (hash seed fixed)."""
    command = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
               sys.executable, *argv]
    env = dict(os.environ, PYTHONHASHSEED="0")  # the same dict layouts in every run
    err = subprocess.run(command, capture_output=True, text=True, check=True, env=env).stderr
    found = re.search(r"Collected : (\d+)", err)
    if found is None:
        raise RuntimeError(f"no instruction count from valgrind: {err[-500:]}")
    return int(found.group(1))
