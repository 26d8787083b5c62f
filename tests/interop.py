"""
Real servers and a real proxy process for interoperability tests.

Servers (redis-server, memcached, nginx from Debian's packages) run on
ephemeral loopback ports in a test's temporary directory; the proxy runs as
C{twistd -n poolproxy}, exactly as a user starts it.  Clients are the real
ones (redis-py, pymemcache, http.client, redis-benchmark, wrk), blocking,
which is fine since everything they talk to is another process.

A missing binary skips the test with the reason, unless
C{POOLPROXY_REQUIRE_INTEROP=1} (as C{.ci/run} sets), which fails it instead.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import urllib.request
from typing import Any, Callable, Dict, List, Optional, Sequence

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


def module(name: str) -> Any:
    try:
        return __import__(name)
    except ImportError:
        why = f"the Python package {name} is not installed (pip install -e '.[test]')"
        if REQUIRED:
            raise AssertionError(f"POOLPROXY_REQUIRE_INTEROP=1 but {why}")
        raise SkipTest(why)


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
                 preexec_fn: Optional[Callable[[], Any]] = None) -> None:
        """@param preexec_fn: run in the child before it starts (e.g. setrlimit)."""
        self.log = os.path.join(os.path.abspath(testcase.mktemp()) + f"-{name}.log")
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                                         env=env, preexec_fn=preexec_fn)
        testcase.addCleanup(self.stop)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
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
