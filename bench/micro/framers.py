"""
The codecs' framers, whole and in pieces: microseconds per message for the
redis, memcached and http parsers, each fed complete batches (the hot path)
and messages cut into pieces (what the incomplete-frame buffer holds).

    .venv/bin/python bench/micro/framers.py [--rounds 7] [--only redis]
    .venv/bin/python bench/micro/framers.py --instructions [--only http]

Each figure is the best of --rounds timed rounds (the least disturbed by the
rest of the machine), so two versions of the code compare by running this
on each, interleaved: PYTHONPATH=/path/to/other/checkout python framers.py.
On a shared virtual machine the times still move by 10-50% from run to run;
--instructions counts the CPU instructions each message costs instead
(valgrind's callgrind, the difference between a run of --runs messages and
a run of none), which is the same from run to run for the same code.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import harness
from typing import Callable, Dict, List, Tuple

if not os.environ.get("PYTHONPATH"):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from poolproxy.codecs.http_parse import RequestParser, ResponseParser  # noqa: E402
from poolproxy.codecs.memcached import VALUES  # noqa: E402
from poolproxy.codecs.memcached import codec as memcached  # noqa: E402
from poolproxy.codecs.redis import codec as redis, encode_command  # noqa: E402

MTU = 1460


def pieces(data: bytes, size: int) -> List[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


def lines_of(data: bytes) -> List[bytes]:
    """C{data} cut after every LF: a slow client sending one line at a time."""
    return [line + b"\n" for line in data.split(b"\n")[:-1]]


# Each case: (name, make a fresh framer and return feed + expect, the chunks, messages per run)
def redis_cases() -> List[Tuple[str, Callable[[], Callable[[bytes], list]], List[bytes], int]]:
    sets = b"".join(encode_command([b"SET", b"key:%012d" % i, b"x" * 32]) for i in range(16))
    big = encode_command([b"SET", b"big", b"v" * 65536])
    replies = b"+OK\r\n" * 16
    bulk = b"$65536\r\n" + b"v" * 65536 + b"\r\n"

    def request() -> Callable[[bytes], list]:
        return redis.request_framer(1 << 26).feed

    def response() -> Callable[[bytes], list]:
        return redis.response_framer().feed

    return [
        ("redis request: 16 SETs at once", request, [sets], 16),
        ("redis request: a 64 KiB SET in 1460-byte pieces", request, pieces(big, MTU), 1),
        ("redis request: 16 SETs in 7-byte pieces", request, pieces(sets, 7), 16),
        ("redis response: 16 +OK at once", response, [replies], 16),
        ("redis response: a 64 KiB bulk in 1460-byte pieces", response, pieces(bulk, MTU), 1),
    ]


def memcached_cases() -> List[Tuple[str, Callable[[], Callable[[bytes], list]], List[bytes], int]]:
    gets = b"".join(b"get key:%012d\r\n" % i for i in range(16))
    big = b"set big 0 0 65536\r\n" + b"v" * 65536 + b"\r\n"
    values = b"".join(b"VALUE key:%012d 0 32\r\n%s\r\nEND\r\n" % (i, b"x" * 32) for i in range(16))
    bulk = b"VALUE big 0 65536\r\n" + b"v" * 65536 + b"\r\nEND\r\n"

    def request() -> Callable[[bytes], list]:
        return memcached.request_framer(1 << 26).feed

    def response(kinds: int) -> Callable[[], Callable[[bytes], list]]:
        def make() -> Callable[[bytes], list]:
            framer = memcached.response_framer()

            def feed(data: bytes) -> list:
                while len(framer._expect) < kinds:
                    framer.expect(VALUES)
                return framer.feed(data)
            return feed
        return make

    return [
        ("memcached request: 16 gets at once", request, [gets], 16),
        ("memcached request: a 64 KiB set in 1460-byte pieces", request, pieces(big, MTU), 1),
        ("memcached request: 16 gets in 7-byte pieces", request, pieces(gets, 7), 16),
        ("memcached response: 16 VALUE/END at once", response(16), [values], 16),
        ("memcached response: a 64 KiB VALUE in 1460-byte pieces", response(1), pieces(bulk, MTU), 1),
    ]


def http_cases() -> List[Tuple[str, Callable[[], Callable[[bytes], list]], List[bytes], int]]:
    head = (b"GET /index.html?q=1 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: bench/1.0\r\n"
            b"Accept: */*\r\nAccept-Encoding: gzip\r\nCookie: a=1; b=2\r\n\r\n")
    large = b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(
        b"X-Header-%02d: %s\r\n" % (i, b"v" * 600) for i in range(90)) + b"\r\n"
    response = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n"
                b"Server: bench\r\n\r\nHello, world!")
    chunked = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
               + b"".join(b"%x\r\n%s\r\n" % (1000, b"c" * 1000) for _ in range(64)) + b"0\r\n\r\n")

    def request() -> Callable[[bytes], list]:
        return RequestParser().feed

    def response_parser(count: int) -> Callable[[], Callable[[bytes], list]]:
        def make() -> Callable[[bytes], list]:
            parser = ResponseParser()

            def feed(data: bytes) -> list:
                while parser.expected < count:
                    parser.expect(b"GET")
                return parser.feed(data)
            return feed
        return make

    return [
        ("http request: 16 heads at once", request, [head * 16], 16),
        ("http request: a head in two pieces", request, [head[:40], head[40:]], 1),
        ("http request: a 55 KiB head, one line at a time", request, lines_of(large), 1),
        ("http response: 16 small responses at once", response_parser(16), [response * 16], 16),
        ("http response: 64 KiB chunked in 1460-byte pieces", response_parser(1),
         pieces(chunked, MTU), 1),
    ]


def measure(make: Callable[[], Callable[[bytes], list]], chunks: List[bytes], per_run: int,
            rounds: int, budget: float = 0.2) -> float:
    """Best of C{rounds}: microseconds per message, a fresh framer per run."""
    # Check the case: every message comes out.
    feed = make()
    produced = sum(len(feed(c)) for c in chunks)
    assert produced >= per_run, (produced, per_run)
    runs = 1
    while True:
        start = time.perf_counter()
        for _ in range(runs):
            feed = make()
            for c in chunks:
                feed(c)
        if time.perf_counter() - start > budget / 4 or runs > 1 << 20:
            break
        runs *= 2
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(runs):
            feed = make()
            for c in chunks:
                feed(c)
        best = min(best, time.perf_counter() - start)
    return best / (runs * per_run) * 1e6


def run(make: Callable[[], Callable[[bytes], list]], chunks: List[bytes], runs: int) -> None:
    for _ in range(runs):
        feed = make()
        for c in chunks:
            feed(c)


def instructions(group: str, index: int, runs: int) -> int:
    """CPU instructions of this script running one case C{runs} times (see harness.py)."""
    return harness.instructions([os.path.abspath(__file__), "--only", group,
                                   "--case", str(index), "--runs", str(runs)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--only", choices=("redis", "memcached", "http"))
    parser.add_argument("--instructions", action="store_true",
                        help="count instructions per message with valgrind (slow, repeatable)")
    parser.add_argument("--runs", type=int, default=200, help="with --instructions")
    parser.add_argument("--case", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    groups: Dict[str, Callable[[], list]] = {
        "redis": redis_cases, "memcached": memcached_cases, "http": http_cases}
    for name, cases in groups.items():
        if args.only and name != args.only:
            continue
        for i, (title, make, chunks, per_run) in enumerate(cases()):
            if args.case is not None:
                if i == args.case:
                    run(make, chunks, args.runs)
                continue
            if args.instructions:
                count = instructions(name, i, args.runs) - instructions(name, i, 0)
                print(f"{title}: {count / (args.runs * per_run):.0f} instructions/message",
                      flush=True)
            else:
                print(f"{title}: {measure(make, chunks, per_run, args.rounds):.3f} us/message",
                      flush=True)


if __name__ == "__main__":
    main()
