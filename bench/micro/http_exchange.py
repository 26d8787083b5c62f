"""
The Python side of one http keep-alive request through poolproxy, without
sockets: 50 clients, a pool of 16 (as in the bench), wrk's request and
nginx's response, on StringTransports and a Clock.

    .venv/bin/python bench/micro/http_exchange.py                 # µs per request
    .venv/bin/python bench/micro/http_exchange.py --profile       # cProfile, top 25
    .venv/bin/python bench/micro/http_exchange.py --instructions  # callgrind, repeatable

What the kernel costs (about half of an http request's CPU in the bench)
is not here: this is the part Python changes can move.
"""
import argparse
import os
import sys
import time

import harness

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from twisted.internet.task import Clock  # noqa: E402

from poolproxy.backends.cluster import Backend, Cluster  # noqa: E402
from poolproxy.backends.pool import BackendPool  # noqa: E402
from poolproxy.codecs.http import codec as http_codec  # noqa: E402
from poolproxy.proxy.admission import Admission  # noqa: E402
from poolproxy.proxy.request import HttpBackend, HttpFactory, HttpLimits  # noqa: E402
from poolproxy.testing import FakeEndpoint  # noqa: E402

CLIENTS, POOL = 50, 16
REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n"
RESPONSE = (b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Tue, 24 Nov 2026 07:00:00 GMT\r\n"
            b"Content-Type: text/plain\r\nContent-Length: 17\r\nConnection: keep-alive\r\n\r\n"
            b"hello from nginx\n")


def setup():
    clock = Clock()
    endpoint = FakeEndpoint()
    pool = BackendPool("b", endpoint, lambda: HttpBackend(http_codec), size=POOL, clock=clock)
    backend = Backend("b", pool)
    pool.backend = backend
    factory = HttpFactory("l", http_codec, None, Admission(1000, 1000, 5.0, clock=clock),
                          Cluster("c", [backend]), clock, request_timeout=30.0,
                          limits=HttpLimits(header_timeout=5.0))
    clients = harness.connect_clients(factory, CLIENTS)
    for protocol, _ in clients:
        protocol.dataReceived(REQUEST)
    endpoint.succeed(len(endpoint.attempts))
    return clients, [t.protocol for t in endpoint.transports]


def run(clients, backends, rounds):
    """Each round: every leased backend connection answers; every answered client asks again."""
    served = 0
    for _ in range(rounds):
        answered = []
        for backend in backends:
            exchange = backend.exchange
            if exchange is not None:
                frontend = exchange.frontend
                backend.transport.clear()
                backend.dataReceived(RESPONSE)
                answered.append(frontend)
                served += 1
        for frontend in answered:
            frontend.transport.clear()
            frontend.dataReceived(REQUEST)
    return served


def instructions(rounds: int) -> int:
    """CPU instructions of this script serving C{rounds} rounds (see harness.py)."""
    return harness.instructions([os.path.abspath(__file__), "--rounds", str(rounds), "--once"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20000)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--instructions", action="store_true",
                        help="count CPU instructions per request with valgrind (slow, repeatable)")
    parser.add_argument("--once", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.instructions:
        rounds = min(args.rounds, 500)
        count = instructions(rounds) - instructions(0)
        print(f"http exchange (Python side, {CLIENTS} clients, pool {POOL}): "
              f"{count / (rounds * POOL):.0f} instructions per request")
        return
    clients, backends = setup()
    run(clients, backends, 500)  # warm up
    if args.once:
        served = run(clients, backends, args.rounds)
        assert served == args.rounds * POOL, served
        return
    if args.profile:
        import cProfile
        import pstats
        profiler = cProfile.Profile()
        profiler.enable()
        run(clients, backends, args.rounds // 4)
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
        return
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        served = run(clients, backends, args.rounds // 5)
        best = min(best, (time.perf_counter() - t) / served * 1e6)
    print(f"http exchange (Python side, {CLIENTS} clients, pool {POOL}): {best:.2f} us per request")


if __name__ == "__main__":
    main()
