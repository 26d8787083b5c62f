"""
Real servers and a real proxy process for interoperability tests.

Servers (redis-server, memcached, nginx, PostgreSQL from Debian's packages)
run on ephemeral loopback ports in a test's temporary directory; the proxy
runs as C{twistd -n poolproxy}, exactly as a user starts it.  Clients are
the real ones (redis-py, pymemcache, http.client, redis-benchmark, wrk,
psql, pgbench, psycopg, pg8000, asyncpg...), blocking, which is fine since
everything they talk to is another process.

A missing binary or Python package skips the test with the reason, unless
C{POOLPROXY_REQUIRE_INTEROP=1} (as C{.ci/run} sets), which fails it instead;
C{module(name, cpython_only=True)} skips on PyPy even then.

PostgreSQL (see the section below): L{shared_postgres} is the test
process's server, with fresh databases for each test class, for tests that
only need a server; L{postgres_server} starts one of the test's own (md5
authentication, other roles or settings, a server the test stops):

    server = shared_postgres(self)
    proxy = ProxyProcess(self, "postgres", [server.port], ...)
    with psycopg.connect(server.dsn(port=proxy.port)) as connection: ...
    server.wait_backend_connections(1, database="app")
    pgbench_init(server)
    result = pgbench(server, "-S", "-T", "2", "-c", "50", port=proxy.port)
"""

from __future__ import annotations

import atexit
import ctypes
import glob
import hashlib
import importlib
import os
import platform
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from prometheus_client.parser import text_string_to_metric_families
from twisted.trial.unittest import SkipTest

from tests.support import ROOT, free_port, twistd_command

REQUIRED = os.environ.get("POOLPROXY_REQUIRE_INTEROP") == "1"
SBIN = ("/usr/sbin", "/usr/local/sbin", "/sbin")


def binary(name: str) -> str:
    """
    The path of an executable, or skip (fail under POOLPROXY_REQUIRE_INTEROP=1).
    """
    found = shutil.which(name) or next(
        (os.path.join(d, name) for d in SBIN if os.access(os.path.join(d, name), os.X_OK)), None)
    if found:
        return found
    why = f"{name} is not installed (apt-get install it, or run .ci/run)"
    if REQUIRED:
        raise AssertionError(f"POOLPROXY_REQUIRE_INTEROP=1 but {why}")
    raise SkipTest(why)


def module(name: str, cpython_only: bool = False) -> Any:
    """
    Import C{name}, or skip (fail under POOLPROXY_REQUIRE_INTEROP=1).

    @param cpython_only: the package has no PyPy build (asyncpg and
        psycopg2 are C extensions without PyPy 3.9 wheels, so setup.cfg
        installs them on CPython only): on PyPy the test skips even under
        POOLPROXY_REQUIRE_INTEROP=1, since no setup could provide it.
    """
    if cpython_only and platform.python_implementation() != "CPython":
        raise SkipTest(f"{name} runs on CPython only (no {platform.python_implementation()} "
                       f"build; setup.cfg installs it on CPython only)")
    if name.partition(".")[0] == "psycopg":
        _allow_py_object_of_weakref()
    try:
        return importlib.import_module(name)
    except ImportError:
        why = f"the Python package {name} is not installed (pip install -e '.[test]')"
        if REQUIRED:
            raise AssertionError(f"POOLPROXY_REQUIRE_INTEROP=1 but {why}")
        raise SkipTest(why)


def _allow_py_object_of_weakref() -> None:
    """
    psycopg 3's pure-Python libpq binding (the one PyPy uses) makes a
    C{ctypes.py_object(weakref.ref(...))}, which PyPy before 7.3.12 refuses:
    "cannot create weak reference to 'weakref' object" on every connect
    (pypy/pypy#3883; Debian 12's pypy3 is 7.3.11).  Backport PyPy 7.3.12's
    fix into this process: keep a weakref as it is rather than weakref it.
    psycopg reads either form back (pq_ctypes.notice_receiver).
    """
    try:
        ctypes.py_object(weakref.ref(_allow_py_object_of_weakref))
        return
    except TypeError:
        pass
    from _ctypes import primitive  # PyPy's pure-Python ctypes

    container = type(primitive.pyobj_container)
    add = container.add

    def add_keeping_weakrefs(self: Any, obj: Any) -> int:
        if isinstance(obj, weakref.ReferenceType):
            self.objs.append(obj)
            return len(self.objs) - 1
        return add(self, obj)

    container.add = add_keeping_weakrefs


def wait_until(predicate: Callable[[], Any], proc: subprocess.Popen, what: str,
               timeout: float = 30.0, log: str = "") -> Any:
    """
    Block until C{predicate()} is true (no fixed sleeps: each poll waits for
    C{proc} to exit, up to 20 ms); fail if C{proc} exits first.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if proc.poll() is not None:
            raise AssertionError(f"process exited with {proc.returncode}: {_tail(log)}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} after {timeout}s: {_tail(log)}")
        try:
            proc.wait(0.02)  # returns at once if it exits; else the poll interval
        except subprocess.TimeoutExpired:
            pass


def accepts(port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:port."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 30.0, log: str = "") -> None:
    """Block until something accepts on 127.0.0.1:port (no fixed sleeps)."""
    wait_until(lambda: accepts(port), proc, f"listener on {port}", timeout, log)


def _tail(path: str) -> str:
    if path and os.path.exists(path):
        with open(path, errors="replace") as f:
            return f.read()[-3000:]
    return ""


class Process:
    """A subprocess with its log, stopped by the test's cleanup."""

    def __init__(self, testcase: Any, args: List[str], name: str,
                 env: Optional[Dict[str, str]] = None,
                 preexec_fn: Optional[Callable[[], Any]] = None,
                 log: Optional[str] = None,
                 stop_signal: int = signal.SIGTERM) -> None:
        """
        @param testcase: its cleanup stops the process; L{None} leaves that
            to the caller (a server shared by several tests), who names C{log}.
        @param preexec_fn: run in the child before it starts (e.g. setrlimit).
        @param log: the file for its output; by default one in the test's
            temporary directory.
        @param stop_signal: what L{stop} sends first (SIGKILL 20 s later).
        """
        self.log = log or os.path.join(os.path.abspath(testcase.mktemp()) + f"-{name}.log")
        self.stop_signal = stop_signal
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                                         env=env, preexec_fn=preexec_fn)
        if testcase is not None:
            testcase.addCleanup(self.stop)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(self.stop_signal)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(20)


def redis_server(testcase: Any, password: Optional[str] = None, port: int = 0,
                 extra: Sequence[str] = ()) -> int:
    """Start a redis-server (on C{port}, or a free one; C{extra} arguments
    added); its Process is kept in C{testcase.redis_processes[port]}."""
    port = port or free_port()
    args = [binary("redis-server"), "--port", str(port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--daemonize", "no",
            "--dir", os.path.abspath(testcase.mktemp())]
    os.makedirs(args[-1], exist_ok=True)
    if password:
        args += ["--requirepass", password]
    args += list(extra)
    p = Process(testcase, args, "redis")
    wait_port(port, p.proc, log=p.log)
    if not hasattr(testcase, "redis_processes"):
        testcase.redis_processes = {}
    testcase.redis_processes[port] = p
    return port


def memcached_server(testcase: Any) -> int:
    port = free_port()
    args = [binary("memcached"), "-l", "127.0.0.1", "-p", str(port), "-U", "0", "-m", "64"]
    if os.geteuid() == 0:
        args += ["-u", "root"]
    p = Process(testcase, args, "memcached")
    wait_port(port, p.proc, log=p.log)
    return port


NGINX_CONF = """
{user}
daemon off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    log_format conn '$connection $request_uri $status';
    access_log {dir}/access.log conn;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_requests 100000;
    server {{
        listen 127.0.0.1:{port};
        location / {{ return 200 "nginx says $request_uri\\n"; }}
        location /big {{ alias {dir}/big; }}
        location /echo {{ client_max_body_size 100m; return 200 "$content_length\\n"; }}
        location /xff {{ return 200 "$http_x_forwarded_for\\n"; }}
        location /files/ {{ alias {dir}/; }}
    }}
}}
"""


def nginx_server(testcase: Any, template: str = NGINX_CONF, name: str = "nginx",
                 **fields: str) -> Any:
    """
    Start nginx with C{template} (formatted with C{dir}, C{port}, C{user}
    and C{fields}); return (port, directory).  The default configuration's
    access.log records $connection.
    """
    nginx = binary("nginx")
    port = free_port()
    directory = os.path.abspath(testcase.mktemp())
    os.makedirs(directory)
    with open(os.path.join(directory, "big"), "wb") as f:
        f.write(os.urandom(1024 * 1024))
    conf = os.path.join(directory, "nginx.conf")
    with open(conf, "w") as f:
        # As root, nginx's workers would run as nobody, who cannot read the
        # test's temporary directory.
        user = "user root;" if os.geteuid() == 0 else ""
        f.write(template.format(dir=directory, port=port, user=user, **fields))
    p = Process(testcase, [nginx, "-c", conf, "-p", directory, "-e", os.path.join(directory, "error.log")],
                name)
    wait_port(port, p.proc, log=os.path.join(directory, "error.log"))
    return port, directory


class ProxyProcess:
    """
    C{twistd -n poolproxy} in front of C{backends}; C{port} is its listener.
    C{reactor} is twistd's --reactor (its default if L{None}); C{listen} the
    listener's endpoint, C{{port}} standing for the port (tcp if L{None}).
    """

    def __init__(self, testcase: Any, protocol: str, backends: List[int], *extra: str,
                 reactor: Optional[str] = None,
                 preexec_fn: Optional[Callable[[], Any]] = None,
                 listen: Optional[str] = None) -> None:
        self.port = free_port()
        self.metrics_port = free_port()
        listen = (listen or "tcp:{port}:interface=127.0.0.1:backlog=1024").format(port=self.port)
        # Active health checks open connections of their own; tests that count
        # backend connections are about pooling, so checks are off unless asked.
        args = [f"--reactor={reactor}"] if reactor else []
        args += ["poolproxy", "--protocol", protocol,
                "--listen", listen,
                "--metrics", f"tcp:{self.metrics_port}:interface=127.0.0.1",
                "--check-interval", "0", *extra]
        for b in backends:
            args += ["--backend", f"127.0.0.1:{b}"]
        self.process = Process(testcase, twistd_command(*args), "proxy", preexec_fn=preexec_fn)
        wait_port(self.port, self.process.proc, log=self.process.log)
        wait_port(self.metrics_port, self.process.proc, log=self.process.log)

    def metrics(self) -> Dict[str, float]:
        """Samples from /metrics, by name plus sorted labels."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as r:
            text = r.read().decode()
        out = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
                out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
        return out

    def metric(self, name: str, **labels: str) -> float:
        """The sum of samples called C{name} whose labels include C{labels}."""
        total = 0.0
        for key, value in self.metrics().items():
            base, _, rest = key.partition("{")
            if base != name:
                continue
            have = dict(kv.split("=", 1) for kv in rest.rstrip("}").split(",") if kv)
            if all(have.get(k) == v for k, v in labels.items()):
                total += value
        return total

    def log(self) -> str:
        return _tail(self.process.log)


def recv_until(s: socket.socket, suffix: bytes) -> bytes:
    """Read until the bytes end with C{suffix} (or the peer closes)."""
    data = b""
    while not data.endswith(suffix):
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


# PostgreSQL ------------------------------------------------------------------
#
# A real PostgreSQL per test (postgres_server) or per test process
# (shared_postgres), for the postgres codec's interop tests.  PostgreSQL
# refuses to run as root, and the suite runs as root (in CI too), so the
# server runs as the postgres system user, in a temporary directory it owns
# in /dev/shm (else /tmp; a unix socket's path must stay under 108 bytes,
# which a trial temporary directory can exceed).  Clients connect over TCP
# to 127.0.0.1.
#
# Measured on the two-core machine, busy: initdb takes 0.8-1.3 s, so it runs
# once per process; each server then starts from a copy of that cluster
# (cp -a to tmpfs 0.1-0.15 s; to disk up to 1 s), its postmaster is ready
# 0.07-0.12 s after exec, and its roles and databases take 0.2 s: 0.5 s a
# server, 1.5 s for the first.  Fresh databases on the shared server: 0.1 s.

PG_BIN_DIRS = "/usr/lib/postgresql/*/bin"  # Debian keeps the server programs off PATH
SUPERUSER = "admin"
SUPERUSER_PASSWORD = "admin-secret"
DEFAULT_USERS: Mapping[str, str] = {"app": "app-secret", "other": "other-secret"}

# Throwaway clusters: durability off; room for a 50-client pgbench through a
# proxy plus the test's own connections; little memory, as a test process
# may run two servers and trial -j2 two processes.
POSTGRES_SETTINGS: Mapping[str, str] = {
    "listen_addresses": "127.0.0.1",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "200",
    "shared_buffers": "16MB",
    # Background work that only costs CPU on two shared cores; pgbench -i vacuums itself.
    "autovacuum": "off",
    "log_line_prefix": "%m [%p] %q%u@%d ",
}


def pg_binary(name: str) -> str:
    """
    A PostgreSQL program (initdb, postgres, pgbench, psql): from Debian's
    /usr/lib/postgresql/VERSION/bin (the newest version; its psql skips the
    perl wrapper on PATH), else from PATH; if missing, as L{binary}.
    """
    def version(directory: str) -> int:
        number = os.path.basename(os.path.dirname(directory))
        return int(number) if number.isdigit() else 0

    for directory in sorted(glob.glob(PG_BIN_DIRS), key=version, reverse=True):
        path = os.path.join(directory, name)
        if os.access(path, os.X_OK):
            return path
    return binary(name)


def _postgres_account() -> Optional[Tuple[int, int]]:
    """
    The (uid, gid) the server runs as when we are root; L{None} when we are
    not (it then runs as us).
    """
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam("postgres")
    except KeyError:
        why = ("PostgreSQL refuses to run as root and there is no postgres user "
               "(Debian's postgresql package creates it)")
        if REQUIRED:
            raise AssertionError(f"POOLPROXY_REQUIRE_INTEROP=1 but {why}")
        raise SkipTest(why)
    return entry.pw_uid, entry.pw_gid


try:
    _prctl: Optional[Callable[..., int]] = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux
    _prctl = None
_PR_SET_PDEATHSIG = 1


def _become(account: Optional[Tuple[int, int]], die_with_parent: bool = False) -> Callable[[], None]:
    """
    A preexec_fn running the child as C{account}; with C{die_with_parent},
    the child gets SIGINT (PostgreSQL's fast shutdown) if the test process
    dies without cleaning up (SIGKILL, a trial -j worker killed).  The
    death signal is set after setuid, which clears it, and belongs to the
    forking thread: start servers from the main thread.
    """
    def preexec() -> None:
        if account is not None:
            os.setgroups([])
            os.setgid(account[1])
            os.setuid(account[0])
        if die_with_parent and _prctl is not None:
            _prctl(_PR_SET_PDEATHSIG, int(signal.SIGINT))
    return preexec


def _postgres_env(password: Optional[str] = None) -> Dict[str, str]:
    """Our environment without the caller's PG* settings (PGHOST, PGSSLMODE...)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PGCONNECT_TIMEOUT"] = "10"
    if password is not None:
        env["PGPASSWORD"] = password
    return env


def _private_directory(account: Optional[Tuple[int, int]], prefix: str) -> str:
    """
    A new directory owned by C{account}, in memory when possible: copying a
    40 MB cluster to disk takes a second on a busy CI machine, to tmpfs 0.1 s.
    It records our pid, so that a later run can remove it if we are killed
    before our cleanup (L{_sweep}).
    """
    memory = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    _sweep(memory or tempfile.gettempdir())
    directory = tempfile.mkdtemp(prefix=prefix, dir=memory)
    with open(os.path.join(directory, "owner.pid"), "w") as f:
        f.write(str(os.getpid()))
    if account is not None:
        os.chown(directory, *account)
    return directory


_swept = False


def _sweep(parent: str) -> None:
    """
    Once per process, remove the directories of test processes (and their
    postmasters) that died without cleaning up: in tmpfs they hold memory.
    """
    global _swept
    if _swept:
        return
    _swept = True

    def alive(pid_file: str) -> bool:
        try:
            with open(pid_file) as f:
                os.kill(int(f.readline()), 0)
        except (FileNotFoundError, ValueError, ProcessLookupError):
            return False
        except PermissionError:  # someone else's live process
            return True
        return True

    for directory in glob.glob(os.path.join(parent, "poolproxy-pg-*")):
        owner = os.path.join(directory, "owner.pid")
        if (os.path.exists(owner) and not alive(owner)
                and not alive(os.path.join(directory, "data", "postmaster.pid"))):
            shutil.rmtree(directory, ignore_errors=True)


_pristine: Optional[str] = None


def _pristine_cluster(account: Optional[Tuple[int, int]]) -> str:
    """
    A data directory fresh from initdb, made once per process and removed
    at exit; servers start from copies of it.  Its superuser's password is
    SCRAM-hashed; L{PostgresServer.provision} sets it again under the
    server's own password_encryption.
    """
    global _pristine
    if _pristine is None:
        initdb = pg_binary("initdb")
        directory = _private_directory(account, "poolproxy-pg-initdb-")
        atexit.register(shutil.rmtree, directory, True)
        pwfile = os.path.join(directory, "pwfile")
        with open(pwfile, "w") as f:
            f.write(SUPERUSER_PASSWORD + "\n")
        if account is not None:
            os.chown(pwfile, *account)
        data = os.path.join(directory, "data")
        run = subprocess.run(
            [initdb, "-D", data, "--no-sync", "--encoding=UTF8", "--locale=C",
             f"--username={SUPERUSER}", f"--pwfile={pwfile}",
             "--auth-local=trust", "--auth-host=scram-sha-256"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=directory,
            env=_postgres_env(), preexec_fn=_become(account), timeout=120)
        if run.returncode:
            raise AssertionError(f"initdb failed ({run.returncode}): {run.stdout}")
        _pristine = data
    return _pristine


def _literal(value: str) -> str:
    """An SQL string literal (standard_conforming_strings is on)."""
    return "'" + value.replace("'", "''") + "'"


def _identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _dsn_value(value: Any) -> str:
    """A libpq keyword value, quoted when it has to be."""
    text = str(value)
    if text and not re.search(r"[\s'\\]", text):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


class PostgresServer:
    """
    A PostgreSQL server started by L{postgres_server} or L{shared_postgres},
    listening on C{host}:C{port} (TCP only; the unix socket, in
    C{directory}, is for nobody), authenticating TCP clients with its
    C{hba_method}.

    Roles: C{superuser} (password L{SUPERUSER_PASSWORD}) and C{users}, a
    role name -> plaintext password mapping of LOGIN roles.  C{databases}
    are owned by the first of C{users}; any role may create in their public
    schema, and what any of these roles creates is open to all of them (so
    a table made by one user for C{pgbench} is usable by the others).

    Clients default to C{user}, the first of C{users} (else the superuser),
    on C{database}, the first of C{databases} (else postgres); C{port}
    arguments aim them elsewhere, at a proxy in front of the server.

    @ivar directory: the server's temporary directory (C{data} holds the
        cluster), removed with the server.
    @ivar log: the server's log file.
    @ivar process: the running postmaster's L{Process} (L{None} when stopped).
    """

    host = "127.0.0.1"

    def __init__(self, directory: str, port: int, users: Mapping[str, str],
                 databases: Sequence[str], hba_method: str, log: str,
                 account: Optional[Tuple[int, int]]) -> None:
        self.directory = directory
        self.data = os.path.join(directory, "data")
        self.port = port
        self.superuser = SUPERUSER
        self.users: Dict[str, str] = dict(users)
        self.user = next(iter(self.users), SUPERUSER)
        self.databases: List[str] = list(databases)
        self.database = self.databases[0] if self.databases else "postgres"
        self.hba_method = hba_method
        self.log = log
        self.process: Optional[Process] = None
        self._account = account

    # The server process

    def configure(self, settings: Mapping[str, str]) -> None:
        """
        Write pg_hba.conf for C{hba_method} and append C{settings} (over
        L{POSTGRES_SETTINGS}) to postgresql.conf, where ALTER SYSTEM can
        still override them.
        """
        encryption = "md5" if self.hba_method == "md5" else "scram-sha-256"
        merged = {**POSTGRES_SETTINGS, "port": str(self.port),
                  "unix_socket_directories": self.directory,
                  "password_encryption": encryption, **settings}
        with open(os.path.join(self.data, "postgresql.conf"), "a") as f:
            f.write("\n# tests/interop.py\n")
            for name, value in merged.items():
                f.write(f"{name} = {_literal(str(value))}\n")
        with open(os.path.join(self.data, "pg_hba.conf"), "w") as f:
            f.write("local all all trust\n"
                    f"host all all 127.0.0.1/32 {self.hba_method}\n")

    def start(self) -> None:
        """
        Start the postmaster (again, after L{stop}: same port and data) and
        wait until it accepts connections.
        """
        self.process = Process(None, [pg_binary("postgres"), "-D", self.data], "postgres",
                               env=_postgres_env(), log=self.log, stop_signal=signal.SIGINT,
                               preexec_fn=_become(self._account, die_with_parent=True))
        wait_until(self._ready, self.process.proc, "PostgreSQL ready", log=self.log)

    def _ready(self) -> bool:
        """Whether postmaster.pid says our postmaster accepts connections (what pg_ctl -w reads)."""
        assert self.process is not None
        try:
            with open(os.path.join(self.data, "postmaster.pid")) as f:
                lines = f.read().split("\n")
        except FileNotFoundError:
            return False
        return len(lines) > 7 and lines[0] == str(self.process.proc.pid) and lines[7].strip() == "ready"

    def running(self) -> bool:
        return self.process is not None and self.process.proc.poll() is None

    def stop(self) -> None:
        """Fast shutdown (SIGINT: open sessions are disconnected), waiting for it."""
        if self.process is not None:
            self.process.stop()
            self.process = None

    def remove(self) -> None:
        """Stop the server and remove its directory."""
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

    def provision(self) -> None:
        """Create the roles and databases; set the superuser's password under password_encryption."""
        roles = [self.superuser, *self.users]
        sql = [f"ALTER ROLE {_identifier(self.superuser)} PASSWORD {_literal(SUPERUSER_PASSWORD)};"]
        sql += [f"CREATE ROLE {_identifier(name)} LOGIN PASSWORD {_literal(password)};"
                for name, password in self.users.items()]
        # template1, so that every database created later gets the same rights.
        grantors = ", ".join(_identifier(name) for name in roles)
        sql += ["\\c template1",
                "GRANT CREATE ON SCHEMA public TO PUBLIC;",
                f"ALTER DEFAULT PRIVILEGES FOR ROLE {grantors} GRANT ALL ON TABLES TO PUBLIC;",
                f"ALTER DEFAULT PRIVILEGES FOR ROLE {grantors} GRANT ALL ON SEQUENCES TO PUBLIC;",
                "\\c postgres"]
        sql += [self._create_database(name) for name in self.databases]
        self.psql("\n".join(sql), self.superuser, "template1")

    def _create_database(self, name: str) -> str:
        return f"CREATE DATABASE {_identifier(name)} OWNER {_identifier(self.user)};"

    def recreate_databases(self) -> None:
        """Drop C{databases} (disconnecting their sessions) and create them empty again."""
        self.psql("\n".join(f"DROP DATABASE IF EXISTS {_identifier(name)} WITH (FORCE);\n"
                            + self._create_database(name) for name in self.databases),
                  self.superuser, "postgres")

    # Clients

    def password(self, user: str) -> str:
        if user == self.superuser:
            return SUPERUSER_PASSWORD
        try:
            return self.users[user]
        except KeyError:
            raise KeyError(f"{user} is not a role of this server (add it to users with its password)")

    def params(self, user: Optional[str] = None, database: Optional[str] = None,
               port: Optional[int] = None) -> Dict[str, Any]:
        """
        Keyword arguments for pg8000 and asyncpg: host, port, user,
        password, database.
        """
        user = user or self.user
        return {"host": self.host, "port": port or self.port, "user": user,
                "password": self.password(user), "database": database or self.database}

    def dsn(self, user: Optional[str] = None, database: Optional[str] = None,
            port: Optional[int] = None, **keywords: Any) -> str:
        """
        A libpq keyword DSN (psycopg, psycopg2), with a 10 s connect_timeout
        so that a client cannot hang a test; C{keywords} are added
        (sslmode="disable", application_name=...).
        """
        params = self.params(user, database, port)
        params["dbname"] = params.pop("database")
        params = {"connect_timeout": 10, **params, **keywords}
        return " ".join(f"{name}={_dsn_value(value)}" for name, value in params.items())

    def url(self, user: Optional[str] = None, database: Optional[str] = None,
            port: Optional[int] = None, scheme: str = "postgresql") -> str:
        """A postgresql:// URL (asyncpg; SQLAlchemy with scheme="postgresql+psycopg")."""
        p = self.params(user, database, port)
        return (f"{scheme}://{urllib.parse.quote(p['user'], safe='')}:"
                f"{urllib.parse.quote(p['password'], safe='')}@{p['host']}:{p['port']}/"
                f"{urllib.parse.quote(p['database'], safe='')}")

    def psql(self, sql: str, user: Optional[str] = None, database: Optional[str] = None,
             port: Optional[int] = None) -> str:
        """
        Run C{sql} (any number of statements; psql meta-commands such as
        C{\\c} too) with C{psql -X -q -A -t -v ON_ERROR_STOP=1}, as C{user}
        (default: the superuser) on C{database} (default: C{self.database}).

        @return: the rows, one a line, columns separated by C{|}, without
            command tags or the last newline.
        @raise AssertionError: with psql's stderr, if any statement fails.
        """
        user = user or self.superuser
        database = database or self.database
        args = [pg_binary("psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                "-h", self.host, "-p", str(port or self.port), "-U", user, "-d", database, "-f", "-"]
        run = subprocess.run(args, input=sql, capture_output=True, text=True,
                             env=_postgres_env(self.password(user)), timeout=60)
        if run.returncode:
            raise AssertionError(f"psql as {user} on {database} exited with {run.returncode}: "
                                 f"{run.stderr.strip()}\nSQL: {sql}")
        return run.stdout.rstrip("\n")

    # What the server knows

    def secrets(self, users: Iterable[str]) -> Dict[str, str]:
        """Each role's rolpassword from pg_authid (SCRAM-SHA-256$... or md5...)."""
        names = list(users)
        rows = self.psql("SELECT rolname, rolpassword FROM pg_authid WHERE rolname IN ("
                         + ", ".join(_literal(name) for name in names) + ")",
                         self.superuser, "postgres")
        found = dict(row.split("|", 1) for row in rows.splitlines())
        missing = [name for name in names if not found.get(name)]
        if missing:
            raise AssertionError(f"no password for {missing} in pg_authid")
        return found

    def scram_secret(self, user: str) -> str:
        """C{user}'s SCRAM secret: C{SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>}."""
        secret = self.secrets([user])[user]
        if not secret.startswith("SCRAM-SHA-256$"):
            raise AssertionError(f"{user}'s password is not stored as SCRAM but {secret[:3]}... "
                                 f"(password_encryption follows hba_method={self.hba_method})")
        return secret

    def backend_connections(self, database: Optional[str] = None, user: Optional[str] = None) -> int:
        """Client backends in pg_stat_activity, but the one asking; on C{database}, of C{user}."""
        where = ["backend_type = 'client backend'", "pid <> pg_backend_pid()"]
        if database is not None:
            where.append(f"datname = {_literal(database)}")
        if user is not None:
            where.append(f"usename = {_literal(user)}")
        return int(self.psql("SELECT count(*) FROM pg_stat_activity WHERE " + " AND ".join(where),
                             self.superuser, "postgres"))

    def wait_backend_connections(self, expected: int, database: Optional[str] = None,
                                 user: Optional[str] = None, timeout: float = 10.0) -> None:
        """
        Block until L{backend_connections} is C{expected}: a backend leaves
        pg_stat_activity a moment after its client disconnects.
        """
        seen: List[int] = []

        def settled() -> bool:
            seen.append(self.backend_connections(database, user))
            return seen[-1] == expected

        assert self.process is not None, "the server is stopped"
        try:
            wait_until(settled, self.process.proc, f"{expected} backend connections", timeout)
        except AssertionError as e:
            raise AssertionError(f"{e} (the last count was {seen[-1] if seen else None})")

    def userlist(self, path: str, users: Optional[Iterable[str]] = None, kind: str = "scram") -> str:
        """
        Write a PgBouncer userlist.txt (C{"user" "secret"} lines) for
        C{users} (default: all of C{users}) with each role's SCRAM secret
        (C{kind="scram"}), C{"md5" + md5(password + user)} (C{"md5"}) or
        plaintext password (C{"plain"}).

        @return: C{path}
        """
        names = list(self.users if users is None else users)
        if kind == "scram":
            secrets = {name: self.scram_secret(name) for name in names}
        elif kind == "md5":
            secrets = {name: "md5" + hashlib.md5((self.password(name) + name).encode()).hexdigest()
                       for name in names}
        elif kind == "plain":
            secrets = {name: self.password(name) for name in names}
        else:
            raise ValueError(f"kind is scram, md5 or plain, not {kind!r}")

        def quoted(text: str) -> str:
            return '"' + text.replace('"', '""') + '"'

        with open(path, "w") as f:
            f.writelines(f"{quoted(name)} {quoted(secret)}\n" for name, secret in secrets.items())
        return path


def _new_postgres(users: Mapping[str, str], databases: Sequence[str], hba_method: str,
                  settings: Mapping[str, str], log: Optional[str]) -> PostgresServer:
    """A configured, stopped server on a free port, in a copy of the pristine cluster."""
    pg_binary("postgres")  # skip before doing anything if PostgreSQL is not installed
    account = _postgres_account()
    pristine = _pristine_cluster(account)
    directory = _private_directory(account, "poolproxy-pg-")
    subprocess.run(["cp", "-a", pristine, os.path.join(directory, "data")], check=True)
    server = PostgresServer(directory, free_port(), users, databases, hba_method,
                            log or os.path.join(directory, "postgres.log"), account)
    server.configure(settings)
    return server


def postgres_server(testcase: Any, *, users: Mapping[str, str] = DEFAULT_USERS,
                    databases: Sequence[str] = ("app",), hba_method: str = "scram-sha-256",
                    settings: Mapping[str, str] = {}) -> PostgresServer:
    """
    Start a PostgreSQL server of the test's own, removed by its cleanup
    (its log stays in the test's temporary directory).  For tests that need
    their own: other roles or hba_method, C{settings} (postgresql.conf
    names and values), or a server they stop, restart or break.

    @param hba_method: how TCP clients authenticate (pg_hba.conf): scram-sha-256,
        md5 (roles' passwords are then stored as md5 hashes), password, trust...
    """
    server = _new_postgres(users, databases, hba_method, settings,
                           os.path.abspath(testcase.mktemp()) + "-postgres.log")
    testcase.addCleanup(server.remove)
    server.start()
    server.provision()
    return server


_shared: Optional[PostgresServer] = None
_shared_class: Optional[type] = None


def _remove_shared() -> None:
    if _shared is not None:
        _shared.remove()


atexit.register(_remove_shared)


def shared_postgres(testcase: Any) -> PostgresServer:
    """
    The test process's PostgreSQL server (the defaults of L{postgres_server}),
    started on first use and removed at interpreter exit.  Each test class
    gets fresh, empty C{databases} (dropped and created again, 0.1 s, when a
    test of another class asks); roles and settings are shared, so tests
    that change them, or stop the server, use L{postgres_server}.
    """
    global _shared, _shared_class
    if _shared is not None and not _shared.running():
        _shared.remove()  # stopped by a test: start a new one
        _shared = None
    if _shared is None:
        server = _new_postgres(DEFAULT_USERS, ("app",), "scram-sha-256", {}, None)
        try:
            server.start()
            server.provision()
        except BaseException:
            server.remove()
            raise
        _shared = server
    elif type(testcase) is not _shared_class:
        _shared.recreate_databases()
    _shared_class = type(testcase)
    return _shared


@dataclass
class PgbenchResult:
    """
    What a pgbench run reported: C{tps} (without initial connection time),
    C{transactions} (actually processed), C{failed} (PostgreSQL 15's
    pgbench reports failed transactions; L{None} from older ones),
    C{latency_ms} (average), and its whole C{output}.
    """

    tps: float
    transactions: int
    failed: Optional[int]
    latency_ms: Optional[float]
    output: str


def _run_pgbench(server: PostgresServer, args: Sequence[str], user: Optional[str],
                 database: Optional[str], port: Optional[int], timeout: float) -> str:
    p = server.params(user, database, port)
    command = [pg_binary("pgbench"), "-h", p["host"], "-p", str(p["port"]), "-U", p["user"],
               *args, p["database"]]
    run = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         env=_postgres_env(p["password"]), timeout=timeout)
    if run.returncode:
        raise AssertionError(f"{' '.join(command)} exited with {run.returncode}:\n{run.stdout}")
    return run.stdout


def pgbench(server: PostgresServer, *args: str, user: Optional[str] = None,
            database: Optional[str] = None, port: Optional[int] = None,
            timeout: float = 120.0) -> PgbenchResult:
    """
    Run C{pgbench ARGS} (e.g. C{"-S", "-T", "2", "-c", "10"}) as C{user} on
    C{database} of C{server} (or of what listens on C{port}: a proxy).

    @raise AssertionError: with the output, if pgbench exits non-zero
        (a client aborted) or reports no tps.
    """
    output = _run_pgbench(server, args, user, database, port, timeout)

    def number(pattern: str) -> Optional[str]:
        found = re.search(pattern, output, re.MULTILINE)
        return found.group(1) if found else None

    tps = number(r"^tps = ([\d.]+)")
    transactions = number(r"^number of transactions actually processed: (\d+)")
    if tps is None or transactions is None:
        raise AssertionError(f"no tps in pgbench's output:\n{output}")
    failed = number(r"^number of failed transactions: (\d+)")
    latency = number(r"^latency average = ([\d.]+) ms")
    return PgbenchResult(float(tps), int(transactions), None if failed is None else int(failed),
                         None if latency is None else float(latency), output)


def pgbench_init(server: PostgresServer, scale: int = 1, *args: str, user: Optional[str] = None,
                 database: Optional[str] = None, port: Optional[int] = None,
                 timeout: float = 120.0) -> str:
    """
    C{pgbench -i -q -s SCALE ARGS}: create and fill pgbench's tables (as
    C{user}, so they are its own) on C{database}.

    @return: pgbench's output.
    """
    return _run_pgbench(server, ["-i", "-q", "-s", str(scale), *args], user, database, port, timeout)
