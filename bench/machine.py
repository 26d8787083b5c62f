"""
The machine a benchmark runs on: what it is (CPU, memory, kernel, distribution,
the versions of the interpreters and of every tool), the PyPy that runs
poolproxy when there is one, the open files limit, a process's RSS, and how
much CPU processes outside the run use while it measures (OtherLoad): a run
during which they used more than NOISY of a core says so in its notes.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import resource
import subprocess
import time
from typing import Dict, List, Optional, Tuple

from common import IDLE_CLIENTS, NOISY, ROOT, pg_binary, which

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def command_output(args: List[str]) -> str:
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=30, cwd=ROOT)
        return out.stdout + out.stderr
    except (OSError, subprocess.TimeoutExpired):
        return ""


def tool_version(tools: Tuple[str, ...], flag: str, pattern: str) -> str:
    path = which(*tools)
    if not path:
        return "not installed"
    m = re.search(pattern, command_output([path, flag]))
    return m.group(1) if m else "unknown"


def pg_version(name: str, pattern: str) -> str:
    path = pg_binary(name)
    if not path:
        return "not installed"
    m = re.search(pattern, command_output([path, "--version"]))
    return m.group(1) if m else "unknown"


def interpreter_version(python: str) -> str:
    out = command_output([python, "-c",
                          "import platform, sys; from twisted.copyright import version; "
                          "pypy = getattr(sys, 'pypy_version_info', None); "
                          "print(platform.python_implementation(), "
                          "'%d.%d.%d' % tuple(pypy[:3]) if pypy else '', "
                          "'(Python %s)' % platform.python_version() if pypy "
                          "else platform.python_version(), '/ Twisted', version)"])
    return " ".join(out.split()) or "unknown"


def machine_info(args: argparse.Namespace, pypy: Optional[str], pypy_note: str) -> Dict[str, str]:
    cpu = "unknown CPU"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kb = int(re.search(r"MemTotal:\s+(\d+)", f.read()).group(1))
    distro = ""
    if os.path.exists("/etc/os-release"):
        with open("/etc/os-release") as f:
            m = re.search(r'PRETTY_NAME="?([^"\n]*)', f.read())
            distro = m.group(1) if m else ""
    return {
        "cpu": cpu, "cores": str(os.cpu_count()), "memory": f"{mem_kb / 1024 / 1024:.0f} GiB",
        "kernel": f"{platform.system()} {platform.release()}", "distro": distro,
        "cpython": interpreter_version(args.python),
        "pypy": interpreter_version(pypy) if pypy else f"skipped: {pypy_note}",
        "redis-server": tool_version(("redis-server",), "--version", r"v=(\S+)"),
        "memcached": tool_version(("memcached",), "-V", r"memcached (\S+)"),
        "nginx": tool_version(("nginx",), "-v", r"nginx/(\S+)"),
        "nutcracker": tool_version(("nutcracker",), "--version", r"nutcracker-(\S+)"),
        "haproxy": tool_version(("haproxy",), "-v", r"version (\S+)"),
        "wrk": tool_version(("wrk",), "--version", r"wrk (\S+)"),
        "postgresql": pg_version("postgres", r"\(PostgreSQL\) (\S+)"),
        "pgbench": pg_version("pgbench", r"\(PostgreSQL\) (\S+)"),
        "pgbouncer": tool_version(("pgbouncer",), "--version", r"PgBouncer (\S+)"),
    }


def machine_title(info: Dict[str, str]) -> str:
    return f"{info['cpu']}, {info['cores']} cores, {info['memory']}, {info['kernel']}"


def find_pypy(args: argparse.Namespace) -> Tuple[Optional[str], str]:
    if args.no_pypy:
        return None, "--no-pypy given"
    if not os.access(args.pypy, os.X_OK):
        return None, f"{args.pypy} does not exist (`make venv-pypy` creates it)"
    out = subprocess.run([args.pypy, "-c", "import poolproxy, twisted.scripts.twistd"],
                         capture_output=True, text=True, cwd=ROOT,
                         env=dict(os.environ, PYTHONPATH=ROOT))
    if out.returncode:
        last = (out.stderr.strip().splitlines() or ["?"])[-1]
        return None, f"{args.pypy} cannot import poolproxy ({last})"
    return args.pypy, ""


def raise_fd_limit() -> int:
    """The proxy (a child) inherits it: raise it before anything starts."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = IDLE_CLIENTS * 2 + 1000
    if hard != resource.RLIM_INFINITY and hard < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))   # root may raise it
            return want
        except (ValueError, OSError):
            pass
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))


def _stat(text: str) -> Tuple[str, List[str]]:
    """A /proc/PID/stat line: the command name, and the fields after it (ppid first)."""
    comm, _, rest = text.partition(" (")[2].rpartition(") ")
    return comm, rest.split()


def _cpu(fields: List[str]) -> float:
    """User + system CPU seconds, from the fields _stat returns."""
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has spent, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        return _cpu(_stat(f.read())[1])


def family_cpu_seconds(pid: int) -> float:
    """
    User + system CPU time of a process and its children: those it reaped
    (cutime, cstime) and those still running.  A PostgreSQL postmaster's,
    for its backends: new ones with each client direct, a pool's few
    long-lived ones through a proxy.
    """
    with open(f"/proc/{pid}/stat") as f:
        fields = _stat(f.read())[1]
    reaped = (int(fields[13]) + int(fields[14])) / CLOCK_TICKS
    return _cpu(fields) + reaped + sum(cpu for ppid, cpu, _ in cpu_snapshot().values()
                                       if ppid == pid)


def cpu_snapshot() -> Dict[int, Tuple[int, float, str]]:
    """pid -> (ppid, CPU seconds, command name) for every process.  Reaped children's CPU
    is left out (it may have been spent long before), so a process that starts and ends
    between two snapshots is missed: OtherLoad is a lower bound."""
    out = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    comm, fields = _stat(f.read())
            except OSError:
                continue
            if len(fields) > 12:
                out[int(name)] = (int(fields[1]), _cpu(fields), comm)
    return out


class OtherLoad:
    """The CPU that processes outside this run (not descendants of this process) use
    from now until share(): other work on the machine disturbs the figures."""

    def __init__(self) -> None:
        self.before, self.started = cpu_snapshot(), time.monotonic()

    def share(self) -> Tuple[float, str]:
        """(cores used on average, the biggest users as "name 40%, ...")."""
        after = cpu_snapshot()
        elapsed = max(time.monotonic() - self.started, 1e-3)
        parents = {pid: v[0] for snap in (self.before, after) for pid, v in snap.items()}

        def ours(pid: int) -> bool:
            for _ in range(64):
                if pid == os.getpid():
                    return True
                if pid not in parents or pid <= 1:
                    return False
                pid = parents[pid]
            return False

        by_name: Dict[str, float] = {}
        for pid, (_, cpu, comm) in after.items():
            used = cpu - self.before.get(pid, (0, 0.0, ""))[1]
            if used > 0 and not ours(pid):
                by_name[comm] = by_name.get(comm, 0.0) + used / elapsed
        top = sorted(by_name.items(), key=lambda kv: -kv[1])[:3]
        return sum(by_name.values()), ", ".join(f"{n} {100 * v:.0f}%" for n, v in top if v > 0.01)


def noise_note(share: float, top: str) -> str:
    return f"other processes used ≥ {100 * share:.0f}% of a core ({top})" if share > NOISY else ""
