"""
What a part starts and stops: the processes themselves (Processes, each pinned
to its CPU, stopped at the end of the part), the backends (redis-server,
memcached, nginx, PostgreSQL, and BlackHole for the saturated part), the
reference proxies (twemproxy, HAProxy, PgBouncer, ReverseProxyResource,
`twistd portforward`, configured as the docstring of bench/run.py says),
poolproxy itself, and what is read from poolproxy's /metrics.
"""

from __future__ import annotations

import os
import pwd
import re
import resource
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

from common import LOAD_CPU, NAN, PROXY_CPU, ROOT, free_port, need, need_pg, pinned

TWISTD = "from twisted.scripts.twistd import run; run()"


class Processes:
    """Every process a part starts, stopped at the end of the part, and the scratch
    directories it made (PostgreSQL's cluster), removed then."""

    def __init__(self, workdir: str) -> None:
        self.workdir = workdir
        self.running: List[subprocess.Popen] = []
        self.stop_signals: Dict[int, int] = {}   # pid -> signal, where not SIGTERM
        self.scratch: List[str] = []
        self.count = 0

    def start(self, name: str, args: List[str], cpu: str, port: int,
              env: Optional[Dict[str, str]] = None, user: Optional[str] = None,
              stop_signal: int = signal.SIGTERM) -> subprocess.Popen:
        """Starts args pinned to cpu (as `user` when we are root) and waits until
        it accepts connections on port."""
        self.count += 1
        with open(os.path.join(self.workdir, f"{self.count:02d}-{name}.log"), "wb") as log:
            proc = subprocess.Popen(pinned(cpu, args), stdout=log, stderr=subprocess.STDOUT,
                                    cwd=ROOT, env=env,   # the child keeps its own copy
                                    preexec_fn=become(user) if user else None)
        self.running.append(proc)
        if stop_signal != signal.SIGTERM:
            self.stop_signals[proc.pid] = stop_signal
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return proc
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    with open(log.name, errors="replace") as f:
                        raise RuntimeError(f"{name} did not start:\n{f.read()[-2000:]}")
                try:
                    proc.wait(0.05)
                except subprocess.TimeoutExpired:
                    pass

    def stop(self, proc: subprocess.Popen) -> None:
        if proc.poll() is None:
            proc.send_signal(self.stop_signals.pop(proc.pid, signal.SIGTERM))
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def stop_all(self) -> None:
        for proc in reversed(self.running):
            self.stop(proc)
        self.running.clear()
        for directory in self.scratch:
            shutil.rmtree(directory, ignore_errors=True)
        self.scratch.clear()


def account(user: str) -> Optional[Tuple[int, int]]:
    """(uid, gid) of `user` when we are root and must drop to it; None when we are not."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise RuntimeError(f"there is no {user} user to run as (we are root)") from None
    return entry.pw_uid, entry.pw_gid


def become(user: str) -> Callable[[], None]:
    """A preexec_fn that runs the child as `user` (PostgreSQL and PgBouncer refuse root)."""
    ids = account(user)

    def preexec() -> None:
        if ids is not None:
            os.setgroups([])
            os.setgid(ids[1])
            os.setuid(ids[0])
    return preexec


# -- backends ------------------------------------------------------------------

def start_redis(procs: Processes) -> int:
    port = free_port()
    procs.start("redis", [need("redis-server"), "--port", str(port), "--bind", "127.0.0.1",
                          "--save", "", "--appendonly", "no", "--dir", procs.workdir,
                          "--maxclients", "20000"],
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
events {{ worker_connections 16384; }}
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


#: PostgreSQL refuses to run as root; Debian's package creates this user.
PG_OS_USER = "postgres"

#: The throwaway cluster's postgresql.conf: durability off (it lives in
#: /dev/shm and is removed with the part), room for 50 direct clients, no
#: autovacuum (background CPU on the load core; pgbench vacuums its tables
#: before each run).
PG_SETTINGS = {"listen_addresses": "127.0.0.1", "fsync": "off", "synchronous_commit": "off",
               "full_page_writes": "off", "max_connections": "200", "autovacuum": "off"}


class Postgres(NamedTuple):
    """A PostgreSQL server started by start_postgres, with pgbench's tables."""
    port: int
    directory: str   # the cluster (data/), its unix socket and userlist.txt, owned by postgres
    user: str
    password: str
    database: str
    userlist: str    # PgBouncer's userlist.txt: the role and its SCRAM secret from pg_authid
    scale: int
    pid: int         # the postmaster's


def pg_env(password: Optional[str] = None) -> Dict[str, str]:
    """Our environment without the caller's PG* settings (PGHOST, PGSSLMODE, ...)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    if password is not None:
        env["PGPASSWORD"] = password
    return env


def _pg_run(args: List[str], what: str, user: Optional[str] = None, cwd: str = ROOT,
            timeout: float = 300) -> str:
    run = subprocess.run(args, capture_output=True, text=True, env=pg_env(), cwd=cwd,
                         preexec_fn=become(user) if user else None, timeout=timeout)
    if run.returncode:
        raise RuntimeError(f"{what} failed ({run.returncode}): {run.stdout}{run.stderr}")
    return run.stdout


def start_postgres(procs: Processes, scale: int, user: str = "bench",
                   password: str = "bench-secret") -> Postgres:
    """
    PostgreSQL on the load CPU, as the postgres user, in a new cluster in
    /dev/shm; a LOGIN role `user` with a SCRAM password, its database of the
    same name with pgbench's tables at `scale`, and a userlist.txt with its
    SCRAM secret for PgBouncer and poolproxy (which both log in to the server
    with the client's SCRAM keys: nobody needs the password but pgbench).
    """
    ids = account(PG_OS_USER)
    shm = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    directory = tempfile.mkdtemp(prefix="poolproxy-bench-pg-", dir=shm)
    procs.scratch.append(directory)
    if ids is not None:
        os.chown(directory, *ids)
    data, port = os.path.join(directory, "data"), free_port()
    _pg_run([need_pg("initdb"), "-D", data, "--no-sync", "--encoding=UTF8", "--locale=C",
             "--username=postgres", "--auth-local=trust", "--auth-host=scram-sha-256"],
            "initdb", PG_OS_USER, cwd=directory)
    with open(os.path.join(data, "postgresql.conf"), "a") as f:
        f.write("\n# bench/servers.py\n")
        for name, value in dict(PG_SETTINGS, port=port, unix_socket_directories=directory).items():
            f.write(f"{name} = '{value}'\n")
    postmaster = procs.start("postgres", [need_pg("postgres"), "-D", data], LOAD_CPU, port,
                             user=PG_OS_USER, stop_signal=signal.SIGINT)   # fast shutdown

    def admin(sql: str, database: str = "postgres") -> str:
        # Over the unix socket as the superuser (trust): set-up, not measured.
        return _pg_run([need_pg("psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                        "-h", directory, "-p", str(port), "-U", "postgres", "-d", database,
                        "-c", sql], "psql")

    deadline = time.monotonic() + 60
    while True:   # the port opens before the server takes connections
        try:
            admin("SELECT 1")
            break
        except RuntimeError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    admin(f"CREATE ROLE {user} LOGIN PASSWORD '{password}'")
    admin(f"CREATE DATABASE {user} OWNER {user}")
    _pg_run([need_pg("pgbench"), "-i", "-q", "-s", str(scale), "-h", directory, "-p", str(port),
             "-U", user, user], "pgbench -i")
    secret = admin(f"SELECT rolpassword FROM pg_authid WHERE rolname = '{user}'").strip()
    if not secret.startswith("SCRAM-SHA-256$"):
        raise RuntimeError(f"{user}'s password is not stored as a SCRAM secret: {secret[:14]}...")
    userlist = os.path.join(directory, "userlist.txt")
    with open(userlist, "w") as f:
        f.write(f'"{user}" "{secret}"\n')
    if ids is not None:
        os.chown(userlist, *ids)
    return Postgres(port, directory, user, password, user, userlist, scale, postmaster.pid)


class BlackHole:
    """A backend that accepts connections and never answers (for the saturated part)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self.held: List[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                self.held.append(self.sock.accept()[0])
            except OSError:
                return

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)   # wakes the accept() on Linux
        except OSError:
            pass
        self.sock.close()
        for conn in self.held:
            conn.close()


# -- proxies -------------------------------------------------------------------------

class Proxy(NamedTuple):
    port: int
    metrics: int   # poolproxy's /metrics port (0 for the reference proxies)
    pid: int


POOLPROXY_SETTINGS = {"pool-size": "16", "pool-min-idle": "2",
                      "max-concurrency": "100000", "queue-size": "100000"}


#: PyPy's young-generation size for poolproxy on PyPy (docs/operations.md).
PYPY_GC_NURSERY = "8MB"

#: twistd's --reactor for poolproxy: the one it ships and docs/operations.md
#: recommends (poolproxy.reactor); "default" for Twisted's own choice.
REACTOR = "poolproxy-epoll"


def start_poolproxy(procs: Processes, python: str, protocol: str, backend: int,
                    reactor: str = REACTOR, **settings: Any) -> Proxy:
    """twistd -n poolproxy; settings (pool_size=16, ...) override POOLPROXY_SETTINGS."""
    port, metrics = free_port(), free_port()
    flags = dict(POOLPROXY_SETTINGS, **{k.replace("_", "-"): str(v) for k, v in settings.items()})
    name = f"poolproxy-{protocol}-{'pypy' if 'pypy' in python else 'cpython'}"
    args = [python, "-c", TWISTD, "-n", "--pidfile=",
            "--logfile", os.path.join(procs.workdir, f"{procs.count + 1:02d}-{name}-twistd.log"),
            *([f"--reactor={reactor}"] if reactor != "default" else []),
            "poolproxy", "--protocol", protocol,
            "--listen", f"tcp:{port}:interface=127.0.0.1:backlog=4096",
            "--metrics", f"tcp:{metrics}:interface=127.0.0.1",
            "--backend", f"127.0.0.1:{backend}"]
    for flag, value in flags.items():
        args += [f"--{flag}", value]
    env = dict(os.environ, PYTHONPATH=ROOT)
    if "pypy" in python:
        # What docs/operations.md recommends for PyPy (PyPy's default nursery
        # is half the L2 cache: 512 kB here, and 32% more CPU per http request).
        env.setdefault("PYPY_GC_NURSERY", PYPY_GC_NURSERY)
    proc = procs.start(name, args, PROXY_CPU, port, env=env)
    return Proxy(port, metrics, proc.pid)


def start_twemproxy(procs: Processes, backend: int, redis: bool) -> int:
    port, stats = free_port(), free_port()
    d = procs.workdir
    conf = os.path.join(d, f"nutcracker-{port}.yml")
    with open(conf, "w") as f:
        f.write(f"""bench:
  listen: 127.0.0.1:{port}
  hash: fnv1a_64
  distribution: ketama
  redis: {'true' if redis else 'false'}
  auto_eject_hosts: false
  timeout: 2000
  backlog: 4096
  server_connections: 1
  servers:
   - 127.0.0.1:{backend}:1
""")
    procs.start("nutcracker", [need("nutcracker"), "-c", conf, "-o", f"{d}/nutcracker-{port}.log",
                               "-s", str(stats), "-a", "127.0.0.1",
                               "-p", f"{d}/nutcracker-{port}.pid"],
                PROXY_CPU, port)
    return port


def start_haproxy(procs: Processes, mode: str, backend: int) -> int:
    """HAProxy, one thread; mode "tcp", or "http" with keep-alive and reuse to the server."""
    port = free_port()
    # 20000, or what the open files limit allows: HAProxy wants 2 per connection.
    maxconn = min(20000, (resource.getrlimit(resource.RLIMIT_NOFILE)[0] - 100) // 2)
    http = """    option http-keep-alive
    http-reuse always
    timeout http-keep-alive 60s
    timeout http-request 10s
""" if mode == "http" else ""
    conf = os.path.join(procs.workdir, f"haproxy-{mode}-{port}.cfg")
    with open(conf, "w") as f:
        f.write(f"""global
    maxconn {maxconn}
    nbthread 1
defaults
    mode {mode}
    maxconn {maxconn}
    timeout connect 5s
    timeout client 60s
    timeout server 60s
{http}frontend fe
    bind 127.0.0.1:{port} backlog 4096
    default_backend be
backend be
    server s1 127.0.0.1:{backend}
""")
    procs.start(f"haproxy-{mode}", [need("haproxy"), "-f", conf, "-db"], PROXY_CPU, port)
    return port


def start_pgbouncer(procs: Processes, pg: Postgres, pool_size: int) -> Proxy:
    """
    PgBouncer in transaction mode, as the postgres user: default_pool_size
    server connections per (database, user), none kept open beyond what
    clients use (min_pool_size 0), clients authenticated by SCRAM against
    the same userlist.txt as poolproxy's, logged in to the server with their
    SCRAM keys.  No log line per connection (poolproxy logs none either).
    """
    port = free_port()
    conf = os.path.join(pg.directory, f"pgbouncer-{port}.ini")   # readable by postgres
    with open(conf, "w") as f:
        f.write(f"""[databases]
{pg.database} = host=127.0.0.1 port={pg.port} dbname={pg.database}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
listen_backlog = 4096
unix_socket_dir =
auth_type = scram-sha-256
auth_file = {pg.userlist}
pool_mode = transaction
default_pool_size = {pool_size}
min_pool_size = 0
reserve_pool_size = 0
max_client_conn = 1000
log_connections = 0
log_disconnections = 0
""")
    proc = procs.start("pgbouncer", [need("pgbouncer"), conf], PROXY_CPU, port, user=PG_OS_USER)
    return Proxy(port, 0, proc.pid)


def start_reverse_proxy(procs: Processes, python: str, backend: int) -> int:
    port = free_port()
    procs.start("reverse-proxy", [python, os.path.join(ROOT, "bench", "reverse_proxy.py"),
                                  str(port), str(backend)], PROXY_CPU, port)
    return port


def start_portforward(procs: Processes, python: str, backend: int) -> int:
    port = free_port()
    procs.start("portforward", [
        python, "-c", TWISTD, "-n", "--pidfile=",
        "--logfile", os.path.join(procs.workdir, f"portforward-{port}-twistd.log"),
        "portforward", "--port", f"tcp:{port}:interface=127.0.0.1:backlog=4096",
        "--host", "127.0.0.1", "--dest_port", str(backend)], PROXY_CPU, port)
    return port


# -- poolproxy's /metrics ---------------------------------------------------------------

def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return r.read().decode()


def metric_sum(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of one metric whose labels include these."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        m = re.match(r"([A-Za-z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)", line)
        if not m or m.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        if all(got.get(k) == v for k, v in labels.items()):
            total += float(m.group(3))
    return total


def metric_by_label(text: str, name: str, label: str) -> Dict[str, float]:
    values: Dict[str, float] = {}
    for value in set(re.findall(rf'^{name}{{[^}}]*{label}="([^"]*)"', text, re.M)):
        values[value] = metric_sum(text, name, **{label: value})
    return values


def churn_figures(workload: str, interpreter: str, start: str, before: str, after: str
                  ) -> Dict[str, Any]:
    """Client sessions and backend connects between scrapes: the measured run is between
    `before` and `after`; the warm-up (which fills the pool from cold) before that."""
    def delta(a: str, b: str, name: str, **labels: str) -> int:
        return int(metric_sum(b, name, **labels) - metric_sum(a, name, **labels))

    sessions = delta(before, after, "poolproxy_client_connections_total")
    opened = delta(before, after, "poolproxy_pool_connects_total", result="ok")
    closes_before = metric_by_label(before, "poolproxy_pool_closes_total", "reason")
    closes = {reason: int(n - closes_before.get(reason, 0)) for reason, n in
              metric_by_label(after, "poolproxy_pool_closes_total", "reason").items()
              if n - closes_before.get(reason, 0)}
    return {"workload": workload, "interpreter": interpreter, "sessions": sessions,
            "opened": opened, "per_10k": 10_000 * opened / sessions if sessions else NAN,
            "reused": 1 - opened / sessions if sessions else NAN, "closes": closes,
            "warm_sessions": delta(start, before, "poolproxy_client_connections_total"),
            "warm_opened": delta(start, before, "poolproxy_pool_connects_total", result="ok")}
