"""
The loads a part sends and the figures they give: redis-benchmark, memaslap,
wrk and pgbench (each pinned to the load CPU, each parsed into Figures: req/s
(pgbench: transactions/s), p50 and p99 ms, notes), the unmeasured warm-up
before a measured run, idle redis clients (the idle part), requests a
saturated proxy must reject (the saturated part), and percentiles.
"""

from __future__ import annotations

import glob
import math
import os
import re
import resource
import shutil
import socket
import subprocess
import tempfile
import time
from typing import Any, Dict, List, Optional, Tuple

from common import (LOAD_CPU, NAN, PG_CLIENTS, PG_THREADS, Figures, Load, need, need_pg, pinned,
                    progress)
from machine import cpu_seconds, family_cpu_seconds
from servers import Postgres, pg_env


def percentile(values: List[float], q: float) -> float:
    if not values:
        return NAN
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def redis_benchmark(port: int, pipeline: int, requests: int, tests: str = "get,set",
                    keepalive: bool = True) -> Figures:
    out = subprocess.run(pinned(LOAD_CPU, [
        need("redis-benchmark"), "-h", "127.0.0.1", "-p", str(port), "-t", tests,
        "-c", "50", "-P", str(pipeline), "-n", str(requests), "-r", "100000", "-d", "32",
        "-k", "1" if keepalive else "0", "--csv", "--precision", "3"]),
        capture_output=True, text=True, timeout=600)
    results = {}
    for line in out.stdout.splitlines():
        fields = [f.strip('"') for f in line.split(",")]
        if fields and fields[0] in ("SET", "GET"):
            results[fields[0]] = {"rps": float(fields[1]), "p50_ms": float(fields[4]),
                                  "p99_ms": float(fields[6]), "requests": requests}
    if set(results) != set(tests.upper().split(",")):
        raise RuntimeError(f"redis-benchmark said: {out.stdout[-1000:]}{out.stderr[-1000:]}")
    return results


def redis_load(port: int, pipeline: int, tests: str = "get,set", keepalive: bool = True) -> Load:
    """redis-benchmark has no duration flag: size -n from the rate of the last run."""
    rate = [5000.0 * pipeline]

    def load(seconds: float) -> Figures:
        results = redis_benchmark(port, pipeline, int(max(1000, rate[0] * seconds)), tests,
                                  keepalive)
        rate[0] = min(r["rps"] for r in results.values())
        return results
    return load


def log2_percentile(buckets: Dict[int, int], q: float) -> float:
    """From memaslap's histogram (bucket k: latencies in [2^k, 2^(k+1)) us), in ms,
    interpolated linearly inside the bucket."""
    total = sum(buckets.values())
    if not total:
        return NAN
    rank, seen = q / 100 * total, 0
    for k in sorted(buckets):
        if buckets[k] and seen + buckets[k] >= rank:
            low = 2.0 ** k
            return (low + low * (rank - seen) / buckets[k]) / 1000
        seen += buckets[k]
    return 2.0 ** (max(buckets) + 1) / 1000


def memaslap(port: int, seconds: float) -> Figures:
    secs = max(1, round(seconds))
    out = subprocess.run(pinned(LOAD_CPU, [
        need("memaslap", "memcaslap"), "-s", f"127.0.0.1:{port}", "-T", "1", "-c", "50",
        "-t", f"{secs}s", "-S", f"{secs}s", "-X", "32"]),
        capture_output=True, text=True, timeout=600)
    m = re.search(r"TPS: (\d+)", out.stdout)
    if not m:
        raise RuntimeError(f"memaslap said: {out.stdout[-1000:]}{out.stderr[-1000:]}")
    buckets: Dict[int, int] = {}
    total = out.stdout.rfind("Total Statistics (")
    dist = out.stdout.find("Log2 Dist:", total) if total >= 0 else -1
    if dist >= 0:
        for line in out.stdout[dist:].splitlines()[1:]:
            row = re.match(r"\s+(\d+):((?:\s+\d+)+)\s*$", line)
            if not row:
                break
            for i, count in enumerate(row.group(2).split()):
                buckets[int(row.group(1)) + i] = int(count)
    return {"GET/SET 9:1": {"rps": float(m.group(1)), "p50_ms": log2_percentile(buckets, 50),
                            "p99_ms": log2_percentile(buckets, 99),
                            "notes": "p50/p99 from memaslap's log2 histogram"}}


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def wrk(port: int, seconds: float, close: bool) -> Figures:
    args = [need("wrk"), "-t1", "-c50", f"-d{max(1, round(seconds))}s", "--latency"]
    if close:
        args += ["-H", "Connection: close"]
    out = subprocess.run(pinned(LOAD_CPU, args + [f"http://127.0.0.1:{port}/"]),
                         capture_output=True, text=True, timeout=600)
    rps = re.search(r"Requests/sec:\s+([0-9.]+)", out.stdout)
    p50 = re.search(r"50%\s+([0-9.]+)(us|ms|s)", out.stdout)
    p99 = re.search(r"99%\s+([0-9.]+)(us|ms|s)", out.stdout)
    if not (rps and p50 and p99):
        raise RuntimeError(f"wrk said: {out.stdout}{out.stderr}")
    errors = re.findall(r"Non-2xx or 3xx responses: \d+|Socket errors: [^\n]*", out.stdout)
    name = "GET close" if close else "GET keep-alive"
    return {name: {"rps": float(rps.group(1)), "p50_ms": _ms(*p50.groups()),
                   "p99_ms": _ms(*p99.groups()), "notes": "; ".join(errors)}}


def pgbench(pg: Postgres, port: int, test: str, args: List[str], seconds: float,
            proxy_pid: Optional[int] = None) -> Figures:
    """
    `pgbench -c 50 -j 2 -T seconds ARGS` as pg's role on its database,
    through `port`: transactions per second, failed transactions (pgbench 15
    counts serialization and deadlock failures), SQL errors pgbench logged
    and clients they aborted, the average latency, p50 and p99 from
    pgbench's per-transaction log (-l), and with -C the average connection
    time.  A run with any SQL error is a failure (rps NaN; what pgbench
    reported is kept in tps_reported), not an exception: PgBouncer 1.18 has
    no prepared statements in transaction mode, and that is a result.

    Where the CPU goes, per transaction (logins and pgbench's vacuum
    included): pgbench's, PostgreSQL's (the postmaster and its backends)
    and, with proxy_pid, the proxy's, which is also given as a share of its
    core over the run (user + system time, from /proc and getrusage).
    """
    logs = tempfile.mkdtemp(prefix="pgbench-log-", dir=pg.directory)   # tmpfs
    started, client_before = time.monotonic(), _children_cpu()
    server_before = family_cpu_seconds(pg.pid)
    proxy_before = cpu_seconds(proxy_pid) if proxy_pid else 0.0
    try:
        out = subprocess.run(pinned(LOAD_CPU, [
            need_pg("pgbench"), "-h", "127.0.0.1", "-p", str(port), "-U", pg.user,
            "-c", str(PG_CLIENTS), "-j", str(PG_THREADS), "-T", str(max(1, round(seconds))),
            "-l", "--log-prefix", os.path.join(logs, "log"), *args, pg.database]),
            capture_output=True, text=True, env=pg_env(pg.password), timeout=600)
        elapsed = time.monotonic() - started
        proxy = cpu_seconds(proxy_pid) - proxy_before if proxy_pid else NAN
        server = family_cpu_seconds(pg.pid) - server_before
        client = _children_cpu() - client_before   # pgbench: taskset execs it
        latencies = _pgbench_latencies(logs)
    finally:
        shutil.rmtree(logs, ignore_errors=True)

    def number(pattern: str) -> Optional[float]:
        found = re.search(pattern, out.stdout, re.MULTILINE)
        return float(found.group(1)) if found else None

    transactions = number(r"^number of transactions actually processed: (\d+)")
    if transactions is None:   # it did not get to run
        raise RuntimeError(f"pgbench exited with {out.returncode}: {out.stdout[-1000:]}"
                           f"{out.stderr[-1000:]}")
    tps = number(r"^tps = ([\d.]+)") or 0.0   # none when no transaction completed
    # Threads' lines can interleave on stderr: count the errors, not the lines.
    errors = out.stderr.count("ERROR:")
    aborted = set(re.findall(r"client (\d+) (?:script \d+ )?aborted", out.stderr))
    failed = int(number(r"^number of failed transactions: (\d+)") or 0)
    figures: Dict[str, Any] = {
        "rps": NAN if errors or aborted else tps, "tps_reported": tps,
        "transactions": int(transactions),
        "failed": failed, "errors": errors, "aborted_clients": len(aborted),
        "latency_avg_ms": number(r"^latency average = ([\d.]+) ms"),
        "connection_ms": number(r"^average connection time = ([\d.]+) ms"),
        "p50_ms": percentile(latencies, 50), "p99_ms": percentile(latencies, 99),
        "pgbench_cpu_us": 1e6 * client / transactions if transactions else NAN,
        "postgres_cpu_us": 1e6 * server / transactions if transactions else NAN,
        "proxy_cpu_us": 1e6 * proxy / transactions if transactions else NAN,
        "proxy_cpu_share": proxy / elapsed}
    notes = []
    if errors or aborted:
        kinds = dict.fromkeys(' '.join(e.split()) for e in re.findall(r"ERROR:(.*)", out.stderr))
        notes.append(f"failed: {errors:,} SQL errors ({'; '.join(list(kinds)[:2])[:160]}), "
                     f"{len(aborted)} of {PG_CLIENTS} clients aborted; pgbench reported "
                     f"{tps:,.0f} tps")
    if failed:
        notes.append(f"{failed:,} failed transactions")
    figures["notes"] = "; ".join(notes)
    return {test: figures}


def _children_cpu() -> float:
    """User + system CPU seconds of this process's children that have ended."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _pgbench_latencies(logs: str) -> List[float]:
    """Milliseconds per transaction from pgbench's -l files (one per thread): each line
    is `client transaction latency_us script epoch us`, latency "failed" or "skipped"
    for those that did not complete."""
    latencies: List[float] = []
    for path in glob.glob(os.path.join(logs, "log.*")):
        with open(path) as f:
            for line in f:
                field = line.split(" ", 3)[2]
                if field.isdigit():
                    latencies.append(int(field) / 1000)
    return latencies


def warm_up(load: Load, seconds: float) -> None:
    """The same load, unmeasured, for about `seconds` (the first chunk short, to size -n)."""
    deadline = time.monotonic() + seconds
    chunk = min(seconds, 1.0)
    while chunk > 0:
        load(chunk)
        left = deadline - time.monotonic()
        chunk = left if left >= 0.5 else 0


def ping_clients(port: int, count: int, clients: List[socket.socket]) -> None:
    """Opens redis clients to 127.0.0.1:port, 500 at a time, until `clients` holds
    `count`; each sends one PING and must get +PONG.  The caller closes them, also
    those opened before a failure."""
    ping = b"*1\r\n$4\r\nPING\r\n"
    while len(clients) < count:
        batch = [socket.create_connection(("127.0.0.1", port), timeout=30)
                 for _ in range(min(500, count - len(clients)))]
        clients += batch
        for s in batch:
            s.sendall(ping)
        for s in batch:
            reply = b""
            while len(reply) < 7:
                reply += received(s, 7 - len(reply), "the proxy closed a client")
            if reply != b"+PONG\r\n":
                raise RuntimeError(f"PING got {reply!r}")
        if len(clients) % 2500 == 0:
            progress(f"  {len(clients):,} clients connected and answered")


def rejections(port: int, request: bytes, count: int, until: float = math.inf
               ) -> Tuple[List[float], Dict[str, int]]:
    """Sends `request` on a new connection, one at a time, `count` times (or until
    `until`): the milliseconds from sending it to the whole reply, for each reply, and
    how many got each status ("timeout" and "error" for those that got none)."""
    times: List[float] = []
    statuses: Dict[str, int] = {}
    for _ in range(count):
        if time.monotonic() > until:
            break
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                t0 = time.perf_counter()
                s.sendall(request)
                status = read_http_status(s)
                times.append((time.perf_counter() - t0) * 1000)
        except (OSError, RuntimeError) as e:
            status = "timeout" if isinstance(e, socket.timeout) else "error"
        statuses[str(status)] = statuses.get(str(status), 0) + 1
        if statuses.get("timeout", 0) + statuses.get("error", 0) > 20:
            progress("  more than 20 requests got no reply: stopping")
            break
    return times, statuses


def received(sock: socket.socket, size: int, closed: str) -> bytes:
    """The next bytes from sock, at most size; RuntimeError(closed) if it was closed."""
    chunk = sock.recv(size)
    if not chunk:
        raise RuntimeError(closed)
    return chunk


def read_http_status(sock: socket.socket) -> int:
    """Reads one whole HTTP response; returns its status code."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += received(sock, 65536, "connection closed before a response head")
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (l.partition(b":") for l in lines[1:])}
    if b"content-length" in headers:
        while len(body) < int(headers[b"content-length"]):
            body += received(sock, 65536, "connection closed inside a response body")
    elif b"chunked" in headers.get(b"transfer-encoding", b"").lower():
        while not body.endswith(b"0\r\n\r\n"):
            body += received(sock, 65536, "connection closed inside a chunked body")
    else:
        while sock.recv(65536):
            pass
    return int(lines[0].split()[1])
