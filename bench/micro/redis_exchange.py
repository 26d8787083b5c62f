"""
The Python side of redis requests through poolproxy's multiplexed mode,
without sockets: 50 clients sharing the 2 connections of one backend, each
sending --pipeline GETs at a time, on StringTransports and a Clock.

    .venv/bin/python bench/micro/redis_exchange.py --pipeline 16     # µs per request
    .venv/bin/python bench/micro/redis_exchange.py --instructions    # callgrind: CPU instructions
    .venv/bin/python bench/micro/redis_exchange.py --instructions --hook allow   # with a hook

What the kernel costs is not here: this is the part Python changes can
move.  --instructions counts it with valgrind (a run of --rounds rounds
less a run of none), which gives the same figure from run to run for the
same code, where times on a shared machine move by 10-50%.  It also runs
against an older checkout (PYTHONPATH=...), before the package layout.
"""
import argparse
import os
import sys
import time

import harness

if not os.environ.get("PYTHONPATH"):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from twisted.internet.task import Clock  # noqa: E402

from poolproxy.codecs.redis import codec as redis_codec, encode_command  # noqa: E402
from poolproxy.testing import FakeEndpoint  # noqa: E402

try:
    from poolproxy.backends.cluster import Backend, Cluster
    from poolproxy.backends.pool import BackendPool
    from poolproxy.proxy.admission import Admission
    from poolproxy.proxy.multiplexed.client import MultiplexFactory
    from poolproxy.proxy.multiplexed.server import Multiplexer, PipelineBackend
    LAYOUT = "packages"
except ImportError:  # a checkout from before the package layout (issue 11)
    from poolproxy.admission import Admission  # type: ignore[no-redef]
    from poolproxy.cluster import Backend, Cluster  # type: ignore[no-redef]
    from poolproxy.multiplex import (  # type: ignore[no-redef]
        MultiplexFactory, Multiplexer, PipelineBackend)
    from poolproxy.pool import BackendPool  # type: ignore[no-redef]
    LAYOUT = "flat"

CLIENTS, CONNECTIONS = 50, 2
REPLY = b"$3\r\nbar\r\n"


def trivial_allow(request):
    """The least an allow hook can do: allow."""
    return None


def setup(pipeline: int, hook: str = ""):
    clock = Clock()
    endpoint = FakeEndpoint()
    admission = Admission(10000, 1000, 5.0, clock=clock)
    holder = []
    pool = BackendPool("b", endpoint, lambda: PipelineBackend(redis_codec, [], admission,
                                                              holder[0], clock, 30.0),
                       size=8, clock=clock)
    backend = Backend("b", pool)
    holder.append(backend)
    pool.backend = backend
    multiplexer = Multiplexer(pool, CONNECTIONS)
    cluster = Cluster("c", [backend])
    if LAYOUT == "packages":
        backend.shared = multiplexer
        factory = MultiplexFactory("l", redis_codec, None, admission, cluster, clock=clock)
    else:
        factory = MultiplexFactory("l", redis_codec, None, admission, cluster,
                                   {backend: multiplexer}, clock=clock)
    if hook:  # a synchronous hook of the listener's (poolproxy.hooks)
        from poolproxy.hooks.calling import ListenerHooks

        factory.hooks = ListenerHooks("l", clock)
        factory.hooks.use({hook: trivial_allow})
    batch = b"".join(encode_command([b"GET", b"key:%04d" % i]) for i in range(pipeline))
    clients = harness.connect_clients(factory, CLIENTS)
    clients[0][0].dataReceived(batch)
    endpoint.succeed(len(endpoint.attempts))
    connections = [t.protocol for t in endpoint.transports]
    for connection in connections:  # answer the first batch
        connection.dataReceived(REPLY * len(connection.pending))
    return clients, connections, batch


def run(clients, connections, batch: bytes, rounds: int) -> int:
    """Each round: every client sends its batch; each connection answers all it owes."""
    served = 0
    for _ in range(rounds):
        for protocol, transport in clients:
            transport.clear()
            protocol.dataReceived(batch)
        for connection in connections:
            owed = len(connection.pending)
            connection.transport.clear()
            connection.dataReceived(REPLY * owed)
            served += owed
    return served


def instructions(pipeline: int, rounds: int, hook: str = "") -> int:
    """CPU instructions of this script serving C{rounds} rounds (see harness.py)."""
    return harness.instructions([os.path.abspath(__file__), "--pipeline", str(pipeline),
                                   "--rounds", str(rounds), "--once"]
                                  + (["--hook", hook] if hook else []))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pipeline", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument("--instructions", action="store_true")
    parser.add_argument("--once", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--hook", choices=("allow", "route"), default="",
                        help="a synchronous hook that allows everything (route: to the "
                             "listener's own cluster)")
    args = parser.parse_args()
    if args.instructions:
        rounds = min(args.rounds, 200)
        count = (instructions(args.pipeline, rounds, args.hook)
                 - instructions(args.pipeline, 0, args.hook))
        print(f"redis exchange (Python side, {CLIENTS} clients, pipeline {args.pipeline}"
              f"{', hook ' + args.hook if args.hook else ''}): "
              f"{count / (rounds * CLIENTS * args.pipeline):.0f} instructions per request")
        return
    clients, connections, batch = setup(args.pipeline, args.hook)
    run(clients, connections, batch, 50)  # warm up
    if args.once:
        served = run(clients, connections, batch, args.rounds)
        assert served == args.rounds * CLIENTS * args.pipeline, served
        return
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        served = run(clients, connections, batch, args.rounds // 5)
        best = min(best, (time.perf_counter() - t) / served * 1e6)
    print(f"redis exchange (Python side, {CLIENTS} clients, pipeline {args.pipeline}"
          f"{', hook ' + args.hook if args.hook else ''}): {best:.2f} us per request")


if __name__ == "__main__":
    main()
