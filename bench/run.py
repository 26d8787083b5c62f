#!/usr/bin/env python3
"""
Benchmark poolproxy: requests per second and latency through each codec,
next to the same load sent straight to the backend.

    .venv/bin/python bench/run.py                 # everything, 5 s per run
    .venv/bin/python bench/run.py --only redis --duration 10
    .venv/bin/python bench/run.py --python /usr/bin/pypy3   # proxy on PyPy

Needs the Debian packages redis-server, redis-tools (redis-benchmark),
memcached, libmemcached-tools (memaslap), nginx-light and wrk.  The proxy
under test is pinned to CPU 0; backends and load generators share CPU 1, so
that the proxy's figure is what one core of it can do.  Progress goes to
stderr; the table (markdown) to stdout; every figure also to
bench/results/<timestamp>.json.  Traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STARTED = time.monotonic()
PROXY_CPU, LOAD_CPU = "0", "1"


def progress(message: str) -> None:
    print(f"[bench {time.monotonic() - STARTED:6.1f}s] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def need(tool: str) -> str:
    found = shutil.which(tool) or next(
        (p for p in (f"/usr/sbin/{tool}",) if os.access(p, os.X_OK)), None)
    if not found:
        sys.exit(f"bench: {tool} is not installed (see the docstring of bench/run.py)")
    return found


def pinned(cpu: str, args: List[str]) -> List[str]:
    if shutil.which("taskset") and (os.cpu_count() or 1) > 1:
        return ["taskset", "-c", cpu, *args]
    return args


class Processes:
    """Every process the run starts, stopped at the end."""

    def __init__(self, workdir: str) -> None:
        self.workdir = workdir
        self.running: List[subprocess.Popen] = []

    def start(self, name: str, args: List[str], cpu: str, port: int,
              env: Optional[Dict[str, str]] = None) -> subprocess.Popen:
        log = open(os.path.join(self.workdir, f"{name}.log"), "wb")
        proc = subprocess.Popen(pinned(cpu, args), stdout=log, stderr=subprocess.STDOUT,
                                cwd=ROOT, env=env)
        self.running.append(proc)
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return proc
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    with open(log.name, errors="replace") as f:
                        sys.exit(f"bench: {name} did not start:\n{f.read()[-2000:]}")
                try:
                    proc.wait(0.05)
                except subprocess.TimeoutExpired:
                    pass

    def stop(self, proc: subprocess.Popen) -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def stop_all(self) -> None:
        for proc in reversed(self.running):
            self.stop(proc)


# -- backends ------------------------------------------------------------------

def start_redis(procs: Processes) -> int:
    port = free_port()
    procs.start("redis", [need("redis-server"), "--port", str(port), "--bind", "127.0.0.1",
                          "--save", "", "--appendonly", "no", "--dir", procs.workdir],
                LOAD_CPU, port)
    return port


def start_memcached(procs: Processes) -> int:
    port = free_port()
    args = [need("memcached"), "-l", "127.0.0.1", "-p", str(port), "-U", "0", "-t", "1"]
    if os.geteuid() == 0:
        args += ["-u", "root"]
    procs.start("memcached", args, LOAD_CPU, port)
    return port


def start_nginx(procs: Processes) -> int:
    port = free_port()
    d = procs.workdir
    user = "user root;" if os.geteuid() == 0 else ""
    conf = os.path.join(d, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"""{user}
daemon off; worker_processes 1; pid {d}/nginx.pid; error_log {d}/nginx-error.log;
events {{ worker_connections 4096; }}
http {{
  access_log off; keepalive_requests 1000000;
  client_body_temp_path {d}/b; proxy_temp_path {d}/p; fastcgi_temp_path {d}/f;
  uwsgi_temp_path {d}/u; scgi_temp_path {d}/s;
  server {{ listen 127.0.0.1:{port} backlog=4096; location / {{ return 200 "hello from nginx\\n"; }} }}
}}
""")
    procs.start("nginx", [need("nginx"), "-c", conf, "-p", d, "-e", f"{d}/nginx-error.log"],
                LOAD_CPU, port)
    return port


def start_poolproxy(procs: Processes, python: str, protocol: str, backend: int,
                    *extra: str) -> int:
    port, metrics = free_port(), free_port()
    args = [python, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=",
            "--logfile", os.path.join(procs.workdir, f"poolproxy-{protocol}-twistd.log"),
            "poolproxy", "--protocol", protocol,
            "--listen", f"tcp:{port}:interface=127.0.0.1:backlog=4096",
            "--metrics", f"tcp:{metrics}:interface=127.0.0.1",
            "--backend", f"127.0.0.1:{backend}", "--pool-size", "16", "--pool-min-idle", "2",
            "--max-concurrency", "100000", "--queue-size", "100000", *extra]
    procs.start(f"poolproxy-{protocol}", args, PROXY_CPU, port,
                env=dict(os.environ, PYTHONPATH=ROOT))
    return port


# -- load generators -------------------------------------------------------------

def redis_benchmark(port: int, pipeline: int, duration: float) -> Dict[str, Dict[str, float]]:
    # redis-benchmark has no duration flag: size -n for roughly `duration`.
    requests = int(max(20000, duration * (40000 if pipeline == 1 else 250000)))
    out = subprocess.run(pinned(LOAD_CPU, [
        need("redis-benchmark"), "-h", "127.0.0.1", "-p", str(port), "-t", "get,set",
        "-c", "50", "-P", str(pipeline), "-n", str(requests), "-r", "100000", "-d", "32",
        "--csv", "--precision", "3"]), capture_output=True, text=True, timeout=600)
    results = {}
    for line in out.stdout.splitlines():
        fields = [f.strip('"') for f in line.split(",")]
        if fields and fields[0] in ("SET", "GET"):
            results[fields[0]] = {"rps": float(fields[1]), "p50_ms": float(fields[4]),
                                  "p99_ms": float(fields[6])}
    if set(results) != {"SET", "GET"}:
        raise RuntimeError(f"redis-benchmark said: {out.stdout}{out.stderr}")
    return results


def memaslap(port: int, duration: float) -> Dict[str, Dict[str, float]]:
    out = subprocess.run(pinned(LOAD_CPU, [
        need("memcaslap"), "-s", f"127.0.0.1:{port}", "-T", "1", "-c", "50",
        "-t", f"{int(duration)}s", "-X", "32"]), capture_output=True, text=True, timeout=600)
    m = re.search(r"TPS: (\d+)", out.stdout)
    if not m:
        raise RuntimeError(f"memaslap said: {out.stdout[-1000:]}{out.stderr[-1000:]}")
    return {"GET/SET 9:1": {"rps": float(m.group(1)), "p50_ms": float("nan"),
                            "p99_ms": float("nan")}}


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def wrk(port: int, duration: float, close: bool) -> Dict[str, Dict[str, float]]:
    args = [need("wrk"), "-t1", "-c50", f"-d{int(duration)}s", "--latency"]
    if close:
        args += ["-H", "Connection: close"]
    out = subprocess.run(pinned(LOAD_CPU, args + [f"http://127.0.0.1:{port}/"]),
                         capture_output=True, text=True, timeout=600)
    rps = re.search(r"Requests/sec:\s+([0-9.]+)", out.stdout)
    p50 = re.search(r"50%\s+([0-9.]+)(us|ms|s)", out.stdout)
    p99 = re.search(r"99%\s+([0-9.]+)(us|ms|s)", out.stdout)
    if not (rps and p50 and p99):
        raise RuntimeError(f"wrk said: {out.stdout}{out.stderr}")
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)", out.stdout)
    name = "GET close" if close else "GET keep-alive"
    return {name: {"rps": float(rps.group(1)), "p50_ms": _ms(*p50.groups()),
                   "p99_ms": _ms(*p99.groups()), "errors": errors.group(0) if errors else ""}}


# -- the run ---------------------------------------------------------------------------

def run(args: argparse.Namespace) -> List[Dict[str, Any]]:
    rows: List[Dict[str, Any]] = []
    workdir = tempfile.mkdtemp(prefix="poolproxy-bench-")
    procs = Processes(workdir)
    only = set(args.only.split(",")) if args.only else {"redis", "memcached", "http", "tcp"}

    def measure(workload: str, target: str, fn: Callable[[], Dict[str, Dict[str, float]]]) -> None:
        progress(f"{workload}: {target} ...")
        for test, figures in fn().items():
            rows.append({"workload": workload, "test": test, "target": target, **figures})
            progress(f"  {test}: {figures['rps']:,.0f} req/s")

    try:
        if "redis" in only:
            backend = start_redis(procs)
            proxy = start_poolproxy(procs, args.python, "redis", backend)
            for pipeline in (1, 16):
                workload = f"redis -c 50 -P {pipeline}"
                measure(workload, "redis-server direct",
                        lambda: redis_benchmark(backend, pipeline, args.duration))
                measure(workload, "poolproxy",
                        lambda: redis_benchmark(proxy, pipeline, args.duration))
        if "memcached" in only:
            backend = start_memcached(procs)
            proxy = start_poolproxy(procs, args.python, "memcached", backend)
            measure("memcached -c 50", "memcached direct", lambda: memaslap(backend, args.duration))
            measure("memcached -c 50", "poolproxy", lambda: memaslap(proxy, args.duration))
        if only & {"http", "tcp"}:
            backend = start_nginx(procs)
            for close in (False, True):
                workload = "http -c 50 " + ("Connection: close" if close else "keep-alive")
                measure(workload, "nginx direct", lambda: wrk(backend, args.duration, close))
                if "http" in only:
                    proxy = start_poolproxy(procs, args.python, "http", backend)
                    measure(workload, "poolproxy http", lambda: wrk(proxy, args.duration, close))
                if "tcp" in only:
                    proxy = start_poolproxy(procs, args.python, "tcp", backend)
                    measure(workload, "poolproxy tcp", lambda: wrk(proxy, args.duration, close))
    finally:
        procs.stop_all()
    return rows


def table(rows: List[Dict[str, Any]]) -> str:
    direct = {(r["workload"], r["test"]): r["rps"] for r in rows if "direct" in r["target"]}
    lines = ["| workload | test | target | req/s | p50 ms | p99 ms | vs direct |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: |"]
    for r in rows:
        base = direct.get((r["workload"], r["test"]))
        ratio = f"{r['rps'] / base:.2f}×" if base and "direct" not in r["target"] else ""
        lines.append(f"| {r['workload']} | {r['test']} | {r['target']} | {r['rps']:,.0f} | "
                     f"{r['p50_ms']:.3f} | {r['p99_ms']:.3f} | {ratio} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per run")
    parser.add_argument("--only", default="", help="comma-separated: redis,memcached,http,tcp")
    parser.add_argument("--python", default=sys.executable,
                        help="interpreter that runs the proxy (e.g. /usr/bin/pypy3)")
    args = parser.parse_args()
    progress(f"proxy on CPU {PROXY_CPU} with {args.python}; backends and load on CPU {LOAD_CPU}")
    rows = run(args)
    machine = (f"{platform.machine()}, {os.cpu_count()} cores, "
               f"{platform.python_implementation()} proxy via {os.path.basename(args.python)}")
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    with open(os.path.join(ROOT, "bench", "results", f"{stamp}.json"), "w") as f:
        json.dump({"machine": machine, "python": args.python, "duration": args.duration,
                   "rows": rows}, f, indent=1)
    print(f"Machine: {machine}; {args.duration:g} s per run.\n")
    print(table(rows))


if __name__ == "__main__":
    main()
