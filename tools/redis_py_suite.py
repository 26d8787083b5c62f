"""
redis-py's own test suite, run against redis-server directly and then through
poolproxy, compared test by test (make test-redis-py; docs/security.md).

The redis-py installed in the venv names the version: its source release is
fetched from PyPI (once, into .cache/) for its tests/.  Five files run:
test_commands, test_pipeline, test_pubsub, test_connection, test_encoding.
Each run gets a fresh redis-server on a free port; the proxy runs with its
default settings but for FLUSHDB and FLUSHALL, which the suite's fixtures
call after every test.

Every test that passes directly must pass through the proxy.  The only
accepted difference is by design: a test that fails because the proxy
refused one of the commands its default policy denies (the failure says
"refused by this proxy (deny_commands)").  Anything else fails the run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import time
import xml.etree.ElementTree as ET
from typing import Dict, List, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.path.join(ROOT, ".cache", "redis-py")
FILES = ["tests/test_commands.py", "tests/test_pipeline.py", "tests/test_pubsub.py",
         "tests/test_connection.py", "tests/test_encoding.py"]
#: What pytest and the suite's conftest need beside redis itself.
PYTEST_DEPS = ["pytest", "pytest-timeout", "packaging"]
#: The failure text of a test the proxy's default policy refused: by design.
BY_DESIGN = "refused by this proxy (deny_commands)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            try:
                proc.wait(0.05)
            except subprocess.TimeoutExpired:
                pass
    raise SystemExit(f"{what} did not listen on {port} within {timeout:g}s")


def suite_source(version: str) -> str:
    """The directory of redis-py's source release C{version}, fetched if needed."""
    target = os.path.join(CACHE, f"redis-{version}")
    if os.path.isdir(os.path.join(target, "tests")):
        return target
    os.makedirs(CACHE, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet",
                    "--disable-pip-version-check", "--no-deps", "--no-binary", ":all:",
                    f"redis=={version}", "-d", CACHE], check=True)
    with tarfile.open(os.path.join(CACHE, f"redis-{version}.tar.gz")) as archive:
        members = [m for m in archive.getmembers()
                   if m.name.startswith(f"redis-{version}/tests/") and m.isfile()]
        archive.extractall(CACHE, members=members)  # tests/ only: redis is the venv's
    return target


class Server:
    """A process on a free port, stopped on exit."""

    def __init__(self, args: List[str], port: int, what: str, log: str) -> None:
        self.log = open(log, "wb")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT)
        self.port = port
        wait_port(port, self.proc, what)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def redis_server(workdir: str) -> Server:
    port = free_port()
    return Server([shutil.which("redis-server") or "redis-server", "--port", str(port),
                   "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                   "--dir", workdir], port, "redis-server",
                  os.path.join(workdir, f"redis-{port}.log"))


def proxy(backend: int, workdir: str) -> Server:
    port = free_port()
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    return Server([twistd, "--nodaemon", "--pidfile=", "poolproxy", "--protocol", "redis",
                   "--listen", f"tcp:{port}:interface=127.0.0.1",
                   "--metrics", f"tcp:{free_port()}:interface=127.0.0.1",
                   "--backend", f"127.0.0.1:{backend}", "--check-interval", "0",
                   "--allow-commands", "FLUSHDB,FLUSHALL"],
                  port, "poolproxy", os.path.join(workdir, "poolproxy.log"))


def run_pytest(source: str, port: int, junit: str) -> str:
    """Run the files against C{port}; pytest's last line."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--timeout", "60",
         "--redis-url", f"redis://127.0.0.1:{port}/0", f"--junitxml={junit}", *FILES],
        cwd=source, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


def outcomes(junit: str) -> Dict[str, Tuple[str, str]]:
    """Each test's outcome (passed, failed, skipped) and failure message."""
    out: Dict[str, Tuple[str, str]] = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        state, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error"):
                state, message = "failed", child.get("message") or child.text or ""
                break
            if child.tag == "skipped":
                state = "skipped"
        # A test that passed but failed at teardown is reported twice: failed wins.
        if out.get(name, ("",))[0] != "failed":
            out[name] = (state, message)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default=os.path.join(ROOT, "_redis_py_suite"))
    args = parser.parse_args()
    if shutil.which("redis-server") is None:
        if os.environ.get("POOLPROXY_REQUIRE_INTEROP"):
            print("redis-py suite: redis-server is not installed")
            return 1
        print("redis-py suite skipped: redis-server is not installed")
        return 0
    import redis

    version = redis.__version__
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet",
                    "--disable-pip-version-check", *PYTEST_DEPS], check=True)
    source = suite_source(version)
    os.makedirs(args.workdir, exist_ok=True)
    junit_direct = os.path.join(args.workdir, "direct.xml")
    junit_proxy = os.path.join(args.workdir, "proxy.xml")

    server = redis_server(args.workdir)
    try:
        print(f"redis-py {version} suite, directly:      {run_pytest(source, server.port, junit_direct)}")
    finally:
        server.stop()
    server = redis_server(args.workdir)
    front = proxy(server.port, args.workdir)
    try:
        print(f"redis-py {version} suite, through proxy: {run_pytest(source, front.port, junit_proxy)}")
    finally:
        front.stop()
        server.stop()

    direct, through = outcomes(junit_direct), outcomes(junit_proxy)
    passed = [name for name, (state, _) in direct.items() if state == "passed"]
    by_design: Dict[str, List[str]] = {}
    unexpected = []
    for name in passed:
        state, message = through.get(name, ("missing", ""))
        if state == "passed":
            continue
        if BY_DESIGN in message:
            command = message.split("the '", 1)[-1].split("'", 1)[0].upper()
            by_design.setdefault(command, []).append(name)
        else:
            unexpected.append((name, state, message))
    kept = len(passed) - sum(map(len, by_design.values())) - len(unexpected)
    print(f"{len(passed)} tests pass directly: {kept} pass through the proxy, "
          f"{sum(map(len, by_design.values()))} differ by design (refused by the default "
          f"deny_commands: {', '.join(f'{c} {len(n)}' for c, n in sorted(by_design.items()))}), "
          f"{len(unexpected)} differ otherwise")
    for name, state, message in unexpected:
        print(f"  {name}: {state}: {message.splitlines()[0][:200] if message else ''}")
    return 1 if unexpected else 0


if __name__ == "__main__":
    sys.exit(main())
