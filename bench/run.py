#!/usr/bin/env python3
"""
Benchmark poolproxy against the backends direct and against reference proxies
(twemproxy, HAProxy, Twisted's ReverseProxyResource and portforward), on
CPython and on PyPy, and check the benchmark issue's targets.

    .venv/bin/python bench/run.py                      # everything, 5 s per run
    .venv/bin/python bench/run.py --only redis,churn --duration 10
    .venv/bin/python bench/run.py --no-pypy            # poolproxy on CPython only
    .venv/bin/python bench/run.py --only postgres --quick   # a short run, to try it

Parts (--only takes a comma-separated list of them):

  redis      redis-benchmark GET/SET, 50 clients, pipeline 1 and 16: direct,
             twemproxy, HAProxy (tcp mode), poolproxy --protocol redis
  memcached  memaslap 9:1 get/set, 50 connections: direct, twemproxy, poolproxy
  http       wrk, 50 connections, keep-alive and `Connection: close`: nginx
             direct, HAProxy (http mode, http-reuse always),
             ReverseProxyResource (bench/reverse_proxy.py), poolproxy --protocol http
  tcp        wrk keep-alive through HAProxy (tcp mode), `twistd portforward`
             and poolproxy --protocol tcp
  churn      connect, one request, close (wrk `Connection: close`,
             redis-benchmark -k 0) through poolproxy: backend connections
             opened per 10,000 client sessions, from poolproxy's /metrics
  idle       poolproxy's RSS with 10,000 idle redis clients (each sent one PING)
  saturated  poolproxy --protocol http --max-concurrency 1 --queue-size 0 with
             its one slot held by a request that never gets an answer: time to
             the 503 of each of 2,000 requests that cannot be admitted
  postgres   pgbench, 50 clients, 2 threads, on a PostgreSQL of its own (scale
             1): -S (select only) in -M simple, extended and prepared, -S -C
             (a new connection per transaction), and the default TPC-B-like
             script in -M simple and prepared: direct, PgBouncer (transaction
             mode) and poolproxy --protocol postgres, the proxies with a pool
             of 4 server connections

poolproxy runs on CPython (--python, by default this interpreter) and on PyPy
(--pypy, by default .venv-pypy/bin/python, made by `make venv-pypy`); PyPy is
skipped, with a progress line saying why, when that interpreter is missing.
Every measured run is preceded by --warmup seconds of the same load,
unmeasured (PyPy's JIT needs it; every target gets it, for fairness).  The
throughput parts measure their targets in --rounds turns (A B C, A B C, ...),
so that a slow stretch of the machine falls on every target alike, and
report each target's median round: ratios between proxies measured minutes
apart moved by ±10% on this machine otherwise.  poolproxy runs under
`twistd --reactor=poolproxy-epoll` (--reactor; docs/operations.md), the
Twisted reference proxies on Twisted's default reactor, as their users run
them.

Needs the Debian packages redis-server, redis-tools (redis-benchmark),
memcached, libmemcached-tools (memaslap, installed as memcaslap), nginx-light,
wrk, nutcracker, haproxy, postgresql-15 (with pgbench), pgbouncer and pypy3;
matplotlib (`make bench` installs it) for the plot.  The proxy under test (poolproxy or a reference
proxy) is pinned to CPU 0; backends and load generators share CPU 1, so that a
proxy's figure is what one core of it can do.  Progress goes to stderr; the
tables (markdown) to stdout; every figure also to bench/results/<stamp>.json,
the plot to bench/results/<stamp>.png and, for a run of every part, to
docs/performance.png.  Traffic goes
to 127.0.0.1 only.

The figures are only as good as the machine is quiet: the CPU that processes
outside the run use while it measures is read from /proc, and a run during
which they used more than 5% of a core says so (and who) in the notes column.

The postgres part runs PostgreSQL (from /usr/lib/postgresql/N/bin, the newest
N) and PgBouncer as the postgres user when we are root, as they require; the
cluster lives in /dev/shm with fsync off and is removed at the end of the part.
PgBouncer (transaction mode, default_pool_size 4, no log line per connection)
and poolproxy (--pool-size 4) open at most the same number of server
connections (--pg-pool-size), authenticate pgbench by SCRAM against the same
userlist.txt of SCRAM secrets, and log in to the server with the client's
SCRAM keys.  The proxy's CPU, PostgreSQL's and pgbench's are read from /proc
around each run and given per transaction.

Reference proxies: twemproxy (nutcracker) with one pool of one server,
server_connections 1; HAProxy with nbthread 1 and maxconn 20000 (or what the
open files limit allows: it needs two per connection), http mode with
`option http-keep-alive` and `http-reuse always`; ReverseProxyResource (one
backend connection per request, by design) and `twistd portforward` on CPython.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

# Sibling modules: bench/ is sys.path[0] when this file runs as a script.
from common import (IDLE_CLIENTS, LOAD_CPU, NAN, PG_POOL_SIZE, PG_SCALE, PG_SELECT, PG_TPCB,
                    PROXY_CPU, ROOT, SATURATED_REQUESTS, STARTED, Figures, Load, ms, pg_binary,
                    progress, which)
from loads import (memaslap, percentile, pgbench, ping_clients, redis_load, rejections,
                   warm_up, wrk)
from machine import (OtherLoad, find_pypy, machine_info, machine_title, noise_note,
                     raise_fd_limit, rss_kb)
from report import plot, print_report, targets
from servers import (REACTOR, BlackHole, Processes, churn_figures, metric_sum, scrape,
                     start_haproxy, start_memcached, start_nginx, start_pgbouncer,
                     start_poolproxy, start_portforward, start_postgres, start_redis,
                     start_reverse_proxy, start_twemproxy)

PARTS = ("redis", "memcached", "http", "tcp", "churn", "idle", "saturated", "postgres")
TOOLS: Dict[str, List[Tuple[str, ...]]] = {   # what each part runs
    "redis": [("redis-server",), ("redis-benchmark",), ("nutcracker",), ("haproxy",)],
    "memcached": [("memcached",), ("memaslap", "memcaslap"), ("nutcracker",)],
    "http": [("nginx",), ("wrk",), ("haproxy",)],
    "tcp": [("nginx",), ("wrk",), ("haproxy",)],
    "churn": [("nginx",), ("wrk",), ("redis-server",), ("redis-benchmark",)],
    "idle": [("redis-server",)],
    "saturated": [],
    "postgres": [("initdb",), ("postgres",), ("psql",), ("pgbench",), ("pgbouncer",)],
}

#: The postgres part's loads, (workload, test, pgbench's arguments): the
#: select-only and TPC-B-like builtin scripts in the query modes a proxy has
#: to handle, and a new connection per transaction (-C).
PGBENCH_LOADS = [
    (PG_SELECT, "-M simple", ["-S", "-M", "simple"]),
    (PG_SELECT, "-M extended", ["-S", "-M", "extended"]),
    (PG_SELECT, "-M prepared", ["-S", "-M", "prepared"]),
    (PG_SELECT, "-C -M simple", ["-S", "-C", "-M", "simple"]),
    (PG_TPCB, "-M simple", ["-M", "simple"]),
    (PG_TPCB, "-M prepared", ["-M", "prepared"]),
]


# -- the parts ---------------------------------------------------------------------------

class Bench:
    """Runs the parts --only names, in the order of PARTS, and keeps what they measured:
    rows (req/s and latency), churn, idle, saturated, and the parts that failed."""

    def __init__(self, args: argparse.Namespace, pypy: Optional[str], pypy_note: str) -> None:
        self.args = args
        self.procs = Processes(tempfile.mkdtemp(prefix="poolproxy-bench-"))
        progress(f"logs of every process this run starts: {self.procs.workdir}")
        self.interpreters = [("CPython", args.python)] + ([("PyPy", pypy)] if pypy else [])
        self.pypy_note = pypy_note
        self.rows: List[Dict[str, Any]] = []
        self.churn: List[Dict[str, Any]] = []
        self.idle: List[Dict[str, Any]] = []
        self.saturated: List[Dict[str, Any]] = []
        self.failed: List[str] = []

    def compare(self, workload: str, targets: List[Tuple[str, Load]]) -> None:
        """
        Each target under the same load, in turns: --rounds rounds of every
        target one after the other, so that the machine's own drift (seen
        here at ±10% over minutes) falls on all of them alike rather than on
        whichever ran in a slow stretch.  A target's row is its round of
        median req/s; the notes give the range.
        """
        runs: Dict[str, List[Figures]] = {target: [] for target, _ in targets}
        rounds = self.args.rounds
        for n in range(rounds):
            for target, load in targets:
                # Warmed up in full before its first round, briefly before the others.
                warm = self.args.warmup if n == 0 else min(self.args.warmup, 1.0)
                label = f"{target} (round {n + 1}/{rounds})" if rounds > 1 else target
                runs[target].append(self.run_once(workload, label, load, warm))
        for target, _ in targets:
            tests = dict.fromkeys(test for figures in runs[target] for test in figures)
            for test in tests:
                got = [f[test] for f in runs[target] if test in f]
                got.sort(key=lambda f: -1.0 if f["rps"] != f["rps"] else f["rps"])
                row = dict(got[(len(got) - 1) // 2])  # of an even count, the lower
                if len(got) > 1:
                    spread = f"median of {len(got)} rounds ({got[0]['rps']:,.0f}–" \
                             f"{got[-1]['rps']:,.0f} req/s)"
                    row["notes"] = "; ".join(filter(None, [spread, row.get("notes")]))
                    row["rounds_rps"] = [f["rps"] for f in got]
                self.rows.append({"workload": workload, "test": test, "target": target, **row})

    def measure(self, workload: str, target: str, load: Load) -> None:
        """One run of C{load}, without warm-up (the caller warmed it up), kept as rows."""
        for test, f in self.run_once(workload, target, load, 0.0).items():
            self.rows.append({"workload": workload, "test": test, "target": target, **f})

    def run_once(self, workload: str, target: str, load: Load, warm: float) -> Figures:
        progress(f"{workload}: {target} ...")
        try:
            if warm > 0:
                warm_up(load, warm)
            other = OtherLoad()
            figures = load(self.args.duration)
            share, top = other.share()
            for f in figures.values():
                f["other_load"] = round(share, 3)
                f["notes"] = "; ".join(filter(None, [f.get("notes"), noise_note(share, top)]))
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
            progress(f"  FAILED: {str(e).strip()[-500:]}")
            figures = {"(failed)": {"rps": NAN, "p50_ms": NAN, "p99_ms": NAN,
                                    "notes": f"failed: {str(e).strip()[:120]}"}}
        for test, f in figures.items():
            note = f"  ({f['notes']})" if f.get("notes") else ""
            progress(f"  {test}: {f['rps']:,.0f} req/s, p50 {ms(f['p50_ms'])} ms, "
                     f"p99 {ms(f['p99_ms'])} ms{note}")
        return figures

    def poolproxies(self, protocol: str, backend: int, **settings: Any) -> List[Tuple[str, int]]:
        return [(f"poolproxy {label}",
                 start_poolproxy(self.procs, python, protocol, backend, self.args.reactor,
                                 **settings).port)
                for label, python in self.interpreters]

    def part(self, name: str, fn: Callable[[], None]) -> None:
        progress(f"== {name}")
        try:
            fn()
        except (RuntimeError, OSError, subprocess.SubprocessError) as e:
            progress(f"part {name} FAILED, going on with the others: {e}")
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            self.failed.append(f"{name}: {first[:200]}")
        finally:
            self.procs.stop_all()

    def redis(self) -> None:
        backend = start_redis(self.procs)
        targets = [("redis-server direct", backend),
                   ("twemproxy", start_twemproxy(self.procs, backend, redis=True)),
                   ("HAProxy tcp", start_haproxy(self.procs, "tcp", backend)),
                   *self.poolproxies("redis", backend)]
        for pipeline in (1, 16):
            self.compare(f"redis -c 50 -P {pipeline}",
                         [(target, redis_load(port, pipeline)) for target, port in targets])

    def memcached(self) -> None:
        backend = start_memcached(self.procs)
        targets = [("memcached direct", backend),
                   ("twemproxy", start_twemproxy(self.procs, backend, redis=False)),
                   *self.poolproxies("memcached", backend)]
        self.compare("memcached -c 50",
                     [(target, lambda s, p=port: memaslap(p, s)) for target, port in targets])

    def http(self) -> None:
        backend = start_nginx(self.procs)
        targets = [("nginx direct", backend),
                   ("HAProxy http", start_haproxy(self.procs, "http", backend)),
                   ("ReverseProxyResource", start_reverse_proxy(self.procs, self.args.python,
                                                                backend)),
                   *self.poolproxies("http", backend)]
        for close in (False, True):
            workload = "http -c 50 " + ("Connection: close" if close else "keep-alive")
            self.compare(workload, [(target, lambda s, p=port, c=close: wrk(p, s, c))
                                    for target, port in targets])

    def tcp(self) -> None:
        backend = start_nginx(self.procs)
        targets = [("nginx direct", backend),
                   ("HAProxy tcp", start_haproxy(self.procs, "tcp", backend)),
                   ("portforward", start_portforward(self.procs, self.args.python, backend)),
                   # A tcp session holds its backend connection while it lasts:
                   # 50 clients need 50 (with 16, 34 would wait out the acquire
                   # timeout and be closed).
                   *self.poolproxies("tcp", backend, pool_size=64)]
        self.compare("tcp: http -c 50 keep-alive",
                     [(target, lambda s, p=port: wrk(p, s, False)) for target, port in targets])

    def churn_part(self) -> None:
        nginx, redis = start_nginx(self.procs), start_redis(self.procs)
        for label, python in self.interpreters:
            for protocol, backend, workload, load in (
                    ("http", nginx, "churn: http -c 50 Connection: close",
                     lambda port: (lambda s: wrk(port, s, True))),
                    ("redis", redis, "churn: redis -c 50 -k 0 (reconnect per request)",
                     lambda port: redis_load(port, 1, "get", keepalive=False))):
                proxy = start_poolproxy(self.procs, python, protocol, backend, self.args.reactor)
                start = scrape(proxy.metrics)
                run = load(proxy.port)
                progress(f"{workload}: poolproxy {label}: warm-up ...")
                warm_up(run, max(self.args.warmup, 0.5))   # also sizes redis-benchmark's -n
                before = scrape(proxy.metrics)
                self.measure(workload, f"poolproxy {label}", run)
                after = scrape(proxy.metrics)
                self.churn.append(churn_figures(workload, label, start, before, after))
                c = self.churn[-1]
                progress(f"  {c['sessions']:,} client sessions, {c['opened']} backend "
                         f"connections opened: {c['per_10k']:.2f} per 10,000 sessions, "
                         f"{100 * c['reused']:.3f}% reused (warm-up: {c['warm_sessions']:,} "
                         f"sessions, {c['warm_opened']} opened; closes: {c['closes'] or 'none'})")
                self.procs.stop(self.procs.running.pop())

    def idle_part(self) -> None:
        backend = start_redis(self.procs)
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        count = min(IDLE_CLIENTS, soft - 200)
        for label, python in self.interpreters:
            proxy = start_poolproxy(self.procs, python, "redis", backend, self.args.reactor)
            before = rss_kb(proxy.pid)
            progress(f"idle: poolproxy {label}: RSS {before / 1024:.1f} MB before; "
                     f"opening {count:,} clients ...")
            clients: List[socket.socket] = []
            try:
                ping_clients(proxy.port, count, clients)
                after = rss_kb(proxy.pid)
                open_now = metric_sum(scrape(proxy.metrics), "poolproxy_client_connections_open")
            finally:
                for s in clients:
                    s.close()
            row = {"interpreter": label, "clients": count, "open": int(open_now),
                   "rss_before_mb": before / 1024, "rss_mb": after / 1024,
                   "per_client_kb": (after - before) / count}
            self.idle.append(row)
            progress(f"  RSS {row['rss_mb']:.1f} MB with {count:,} idle clients "
                     f"({row['per_client_kb']:.1f} kB per client; proxy counts {row['open']:,} open)")
            self.procs.stop(self.procs.running.pop())

    def saturated_part(self) -> None:
        hole = BlackHole()
        request = b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
        try:
            for label, python in self.interpreters:
                proxy = start_poolproxy(self.procs, python, "http", hole.port, self.args.reactor,
                                        max_concurrency=1, queue_size=0, pool_min_idle=0,
                                        check_interval=0, request_timeout=0,
                                        shutdown_timeout=1)
                progress(f"saturated: poolproxy {label}: holding its one slot ...")
                hanging = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
                try:
                    hanging.sendall(b"GET /hang HTTP/1.1\r\nHost: bench\r\n\r\n")
                    deadline = time.monotonic() + 10
                    while metric_sum(scrape(proxy.metrics), "poolproxy_admission_in_flight") < 1:
                        if time.monotonic() > deadline:
                            raise RuntimeError("the hanging request was never admitted")
                        time.sleep(0.01)
                    # warm-up, unmeasured: the same requests for --warmup seconds
                    rejections(proxy.port, request, 10 ** 9,
                               until=time.monotonic() + max(self.args.warmup, 0.5))
                    other = OtherLoad()
                    times, statuses = rejections(proxy.port, request, SATURATED_REQUESTS)
                    share, top = other.share()
                    still = metric_sum(scrape(proxy.metrics), "poolproxy_admission_in_flight")
                finally:
                    hanging.close()
                row = {"interpreter": label, "requests": len(times), "statuses": statuses,
                       "slot_still_held": still >= 1,
                       "p50_ms": percentile(times, 50), "p99_ms": percentile(times, 99),
                       "max_ms": max(times) if times else NAN, "other_load": round(share, 3),
                       "notes": noise_note(share, top)}
                self.saturated.append(row)
                progress(f"  {row['requests']:,} requests: p50 {ms(row['p50_ms'])} ms, p99 "
                         f"{ms(row['p99_ms'])} ms, max {ms(row['max_ms'])} ms; replies {statuses}"
                         f"{'; ' + row['notes'] if row['notes'] else ''}")
                self.procs.stop(self.procs.running.pop())
        finally:
            hole.close()

    def postgres(self) -> None:
        """
        pgbench against PostgreSQL direct, PgBouncer and poolproxy, each load
        in interleaved rounds as the other throughput parts.  A run in which
        pgbench logged errors (PgBouncer's -M prepared) is a failed row, not
        a failed part.
        """
        pg = start_postgres(self.procs, PG_SCALE)
        progress(f"postgres: PostgreSQL on port {pg.port}, pgbench tables at scale {pg.scale}")
        # (target, port, the proxy's pid, whose CPU is measured; pgbench and
        # PostgreSQL share the load CPU, and "direct" has no proxy).
        targets: List[Tuple[str, int, Optional[int]]] = [("PostgreSQL direct", pg.port, None)]
        bouncer = start_pgbouncer(self.procs, pg, self.args.pg_pool_size)
        targets.append(("PgBouncer", bouncer.port, bouncer.pid))
        for label, python in self.interpreters:
            proxy = start_poolproxy(self.procs, python, "postgres", pg.port, self.args.reactor,
                                    pool_size=self.args.pg_pool_size, pool_min_idle=0,
                                    auth_file=pg.userlist)
            targets.append((f"poolproxy {label}", proxy.port, proxy.pid))
        for workload, test, args in PGBENCH_LOADS:
            self.compare(workload, [
                (target, lambda s, p=port, t=test, a=args, pid=pid: pgbench(pg, p, t, a, s, pid))
                for target, port, pid in targets])

    def run(self) -> None:
        parts = {"redis": self.redis, "memcached": self.memcached, "http": self.http,
                 "tcp": self.tcp, "churn": self.churn_part, "idle": self.idle_part,
                 "saturated": self.saturated_part, "postgres": self.postgres}
        try:
            for name in PARTS:
                if name in self.args.parts:
                    self.part(name, parts[name])
        finally:
            self.procs.stop_all()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 2)[2])
    parser.add_argument("--duration", type=float, default=5.0,
                        help="seconds per measured run (default 5)")
    parser.add_argument("--warmup", type=float, default=3.0,
                        help="seconds of unmeasured load before each measured run (default 3)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="turns of every target in the throughput parts; each row is "
                             "the median round (default 3)")
    parser.add_argument("--reactor", default=REACTOR,
                        help=f"twistd --reactor for poolproxy (default {REACTOR}, which it "
                             "ships; 'default' for Twisted's)")
    parser.add_argument("--only", default="", help=f"comma-separated: {','.join(PARTS)}")
    parser.add_argument("--python", default=sys.executable,
                        help="the CPython that runs poolproxy and the Twisted reference proxies")
    parser.add_argument("--pypy", default=os.path.join(ROOT, ".venv-pypy", "bin", "python"),
                        help="the PyPy that runs poolproxy too (default .venv-pypy/bin/python)")
    parser.add_argument("--no-pypy", action="store_true", help="poolproxy on CPython only")
    parser.add_argument("--pg-pool-size", type=int, default=PG_POOL_SIZE,
                        help="postgres: server connections for PgBouncer (default_pool_size) "
                             f"and poolproxy (--pool-size) alike (default {PG_POOL_SIZE})")
    parser.add_argument("--quick", action="store_true",
                        help="a short run, to try the bench: --duration 2 --warmup 1 --rounds 1")
    args = parser.parse_args()
    if args.quick:
        args.duration, args.warmup, args.rounds = 2.0, 1.0, 1
    if args.rounds < 1:
        parser.error("--rounds: at least 1")
    args.parts = set(args.only.split(",")) if args.only else set(PARTS)
    if args.parts - set(PARTS):
        parser.error(f"--only: unknown {','.join(sorted(args.parts - set(PARTS)))}; "
                     f"choose from {','.join(PARTS)}")

    missing = sorted({" or ".join(tools) for part, needs in TOOLS.items() if part in args.parts
                      for tools in needs if not (which(*tools) or pg_binary(tools[0]))})
    if missing:
        sys.exit(f"bench: not installed: {', '.join(missing)} (see the docstring of bench/run.py)")
    limit = raise_fd_limit()
    pypy, pypy_note = find_pypy(args)
    if not pypy:
        progress(f"PyPy skipped: {pypy_note}")
    other = OtherLoad()
    info = machine_info(args, pypy, pypy_note)
    share, top = other.share()
    info["other load at start"] = f"≥ {100 * share:.0f}% of a core" + (f" ({top})" if top else "")
    if share > 0.25:   # a short sample: only a clearly busy machine is worth a warning
        progress(f"other processes are using {info['other load at start']}: the figures will "
                 "be noisy (runs so disturbed are marked in the notes column)")
    title = machine_title(info)
    progress(f"machine: {title}; {info['distro']}")
    progress(f"CPython: {info['cpython']}; PyPy: {info['pypy']}")
    progress(f"proxies on CPU {PROXY_CPU}; backends and load on CPU {LOAD_CPU}; "
             f"{args.duration:g} s per run after {args.warmup:g} s warm-up, "
             f"{args.rounds} rounds; poolproxy on the {args.reactor} reactor; "
             f"open files limit {limit}")
    bench = Bench(args, pypy, pypy_note)
    bench.run()
    elapsed = time.monotonic() - STARTED
    checked = targets(bench)

    out_dir = os.path.join(ROOT, "bench", "results")
    os.makedirs(out_dir, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    with open(os.path.join(out_dir, f"{stamp}.json"), "w") as f:
        json.dump({"machine": info, "duration": args.duration, "warmup": args.warmup,
                   "rounds": args.rounds,
                   "parts": sorted(args.parts), "pypy": pypy or f"skipped: {pypy_note}",
                   "elapsed_s": round(elapsed, 1), "rows": bench.rows, "churn": bench.churn,
                   "idle": bench.idle, "saturated": bench.saturated, "targets": checked,
                   "failed": bench.failed},
                  f, indent=1)
    if bench.rows:
        # docs/performance.png shows a whole run: a partial one (--only) does not replace it.
        whole = {"redis", "memcached", "http", "tcp"} <= args.parts
        if not whole:
            progress("--only: the plot goes to bench/results/ only, not docs/performance.png")
        plot(bench.rows, f"{title}; {args.duration:g} s per run, median of {args.rounds} rounds "
             "(whiskers: the rounds' range)",
             ([os.path.join(ROOT, "docs", "performance.png")] if whole else [])
             + [os.path.join(out_dir, f"{stamp}.png")])

    print_report(bench, info, title, checked, elapsed)
    progress(f"done in {elapsed / 60:.1f} min; figures in bench/results/{stamp}.json")


if __name__ == "__main__":
    main()
