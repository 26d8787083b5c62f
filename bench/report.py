"""
What a run prints and draws: the markdown tables (requests per second and
latency, poolproxy against the reference proxies, connection churn, idle
clients, the saturated proxy), the benchmark issue's targets, each met or not
with what was measured, and the plot (matplotlib, log scale).
"""

from __future__ import annotations

import math
import os
import time
from typing import TYPE_CHECKING, Any, Dict, Iterable, List, Sequence, Tuple

from common import (IDLE_CLIENTS, LOAD_CPU, NAN, NOISY, PG_CLIENTS, PG_SCALE,
                    PG_SELECT, PG_THREADS, PG_TPCB, PROXY_CPU, ROOT, SATURATED_REQUESTS, ms,
                    progress)
from servers import PYPY_GC_NURSERY

if TYPE_CHECKING:
    from run import Bench


def table(columns: Sequence[str], align: str, rows: Iterable[Sequence[str]]) -> str:
    """A markdown table; `align` has a letter a column: l(eft) or r(ight)."""
    lines = ["| " + " | ".join(columns) + " |",
             "| " + " | ".join("---:" if a == "r" else "---" for a in align) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def ratio(a: float, b: float) -> float:
    """a / b; NaN where either was not measured, or b is 0."""
    return a / b if b and not math.isnan(b) else NAN


def is_pgbench(row: Dict[str, Any]) -> bool:
    return row["workload"].startswith("pgbench")


def is_reference(target: str) -> bool:
    return not target.startswith("poolproxy") and not target.endswith("direct")


def results_table(rows: List[Dict[str, Any]]) -> str:
    direct = {(r["workload"], r["test"]): r["rps"] for r in rows if r["target"].endswith("direct")}
    lines = []
    for r in rows:
        vs = NAN if r["target"].endswith("direct") else \
            ratio(r["rps"], direct.get((r["workload"], r["test"]), NAN))
        lines.append([r["workload"], r["test"], r["target"],
                      "failed" if math.isnan(r["rps"]) else f"{r['rps']:,.0f}",
                      ms(r["p50_ms"]), ms(r["p99_ms"]), "" if math.isnan(vs) else f"{vs:.2f}×",
                      r.get("notes", "")])
    return table(["workload", "test", "target", "req/s", "p50 ms", "p99 ms", "vs direct",
                  "notes"], "lllrrrrl", lines)


def ratio_table(rows: List[Dict[str, Any]]) -> str:
    lines = []
    for r in rows:
        if not r["target"].startswith("poolproxy"):
            continue
        for ref in rows:
            vs = ratio(r["rps"], ref["rps"])
            if (ref["workload"], ref["test"]) == (r["workload"], r["test"]) \
                    and is_reference(ref["target"]) and not math.isnan(vs):
                lines.append([r["workload"], r["test"], r["target"], ref["target"],
                              f"{r['rps']:,.0f}", f"{ref['rps']:,.0f}", f"{vs:.2f}×"])
    if not lines:
        return "(no reference proxy measured)"
    return table(["workload", "test", "poolproxy", "reference", "poolproxy req/s",
                  "reference req/s", "ratio"], "llllrrr", lines)


def pgbench_table(rows: List[Dict[str, Any]]) -> str:
    """The postgres part's rows: transactions per second and what pgbench said of them."""
    def number(value: Any, fmt: str) -> str:
        return "–" if value is None or (isinstance(value, float) and math.isnan(value)) \
            else format(value, fmt)

    return table(["workload", "test", "target", "TPS", "failed tx", "SQL errors",
                  "aborted clients", "latency avg ms", "p50 ms", "p99 ms", "connect ms",
                  "CPU µs/tx: pgbench", "PostgreSQL", "proxy", "proxy's core busy",
                  "notes"], "lllrrrrrrrrrrrrl",
                 ([r["workload"], r["test"], r["target"],
                   "failed" if math.isnan(r["rps"]) else f"{r['rps']:,.0f}",
                   number(r.get("failed"), ","), number(r.get("errors"), ","),
                   number(r.get("aborted_clients"), ","), number(r.get("latency_avg_ms"), ".2f"),
                   ms(r["p50_ms"]), ms(r["p99_ms"]), number(r.get("connection_ms"), ".2f"),
                   number(r.get("pgbench_cpu_us"), ",.0f"),
                   number(r.get("postgres_cpu_us"), ",.0f"),
                   number(r.get("proxy_cpu_us"), ",.0f"), number(r.get("proxy_cpu_share"), ".0%"),
                   r.get("notes", "")] for r in rows))


def pgbench_ratio_table(rows: List[Dict[str, Any]]) -> str:
    """The ratios the postgres targets are stated in, for each poolproxy, and PgBouncer's
    own for comparison."""
    def rps(workload: str, test: str, target: str) -> float:
        return next((r["rps"] for r in rows if (r["workload"], r["test"], r["target"])
                     == (workload, test, target)), NAN)

    ours = [t for t in dict.fromkeys(r["target"] for r in rows) if t.startswith("poolproxy")]
    comparisons = [
        ("-S -M simple / PgBouncer -S -M simple", PG_SELECT, "-M simple", "PgBouncer", "-M simple"),
        ("-S -M extended / PgBouncer -S -M extended", PG_SELECT, "-M extended", "PgBouncer",
         "-M extended"),
        ("-S -M prepared / PgBouncer -S -M simple", PG_SELECT, "-M prepared", "PgBouncer",
         "-M simple"),
        ("TPC-B -M simple / PgBouncer TPC-B -M simple", PG_TPCB, "-M simple", "PgBouncer",
         "-M simple"),
        ("TPC-B -M prepared / PgBouncer TPC-B -M simple", PG_TPCB, "-M prepared", "PgBouncer",
         "-M simple"),
        ("-S -C / direct -S -C", PG_SELECT, "-C -M simple", "PostgreSQL direct", "-C -M simple"),
        ("-S -M simple / direct -S -M simple", PG_SELECT, "-M simple", "PostgreSQL direct",
         "-M simple"),
    ]
    lines = []
    for name, workload, test, ref, ref_test in comparisons:
        base = rps(workload, ref_test, ref)
        cells = [NAN if (target, test) == (ref, ref_test)   # not a row against itself
                 else ratio(rps(workload, test, target), base) for target in ["PgBouncer", *ours]]
        lines.append([name, *("" if math.isnan(c) else f"{c:.2f}×" for c in cells)])
    return table(["ratio", "PgBouncer", *ours], "l" + "r" * (1 + len(ours)), lines)


def churn_table(churn: List[Dict[str, Any]]) -> str:
    lines = []
    for c in churn:
        closes = ", ".join(f"{n:,} {reason}" for reason, n in sorted(c["closes"].items()))
        lines.append([c["workload"].split(": ", 1)[1], c["interpreter"], f"{c['sessions']:,}",
                      f"{c['opened']:,}", f"{c['per_10k']:.2f}", f"{100 * c['reused']:.3f}%",
                      closes or "none", f"{c['warm_sessions']:,}, {c['warm_opened']:,}"])
    return table(["workload", "poolproxy", "client sessions", "backend connections opened",
                  "opened per 10,000 sessions", "reused", "backend closes",
                  "warm-up before it: sessions, opened"], "llrrrrlr", lines)


def idle_table(idle: List[Dict[str, Any]]) -> str:
    return table(["poolproxy --protocol redis", "idle clients", "open (proxy's count)",
                  "RSS before", "RSS with the clients", "per client"], "lrrrrr",
                 ([i["interpreter"], f"{i['clients']:,}", f"{i['open']:,}",
                   f"{i['rss_before_mb']:.1f} MB", f"{i['rss_mb']:.1f} MB",
                   f"{i['per_client_kb']:.1f} kB"] for i in idle))


def saturated_table(saturated: List[Dict[str, Any]]) -> str:
    lines = []
    for s in saturated:
        replies = ", ".join(f"{n:,}× {code}" for code, n in sorted(s["statuses"].items()))
        notes = [] if s["slot_still_held"] else ["the held request had left its slot"]
        notes += [s["notes"]] if s["notes"] else []
        lines.append([s["interpreter"], f"{s['requests']:,}", replies, ms(s["p50_ms"]),
                      ms(s["p99_ms"]), ms(s["max_ms"]), "; ".join(notes)])
    return table(["poolproxy --protocol http", "requests", "replies", "p50 ms", "p99 ms",
                  "max ms", "notes"], "lrlrrrl", lines)


def targets(bench: Bench) -> List[Dict[str, Any]]:
    """The benchmark issue's floors, each met or not with what was measured."""
    rows = bench.rows
    pypy_missing = "not measured" + ("" if len(bench.interpreters) > 1
                                     else f" (PyPy skipped: {bench.pypy_note})")
    out: List[Dict[str, Any]] = []

    def row(workload: str, test: str, target: str) -> Dict[str, Any]:
        return next((r for r in rows if (r["workload"], r["test"], r["target"])
                     == (workload, test, target)), {"rps": NAN})

    def ratio_target(name: str, floor: float, workload: str, test: str, ours: str, ref: str,
                     ref_test: str = "") -> None:
        a, b = row(workload, test, ours), row(workload, ref_test or test, ref)
        value = ratio(a["rps"], b["rps"])
        out.append({"target": name, "floor": f"≥ {floor:g}× {ref}" + (f" {ref_test}" if ref_test
                                                                      else ""),
                    "measured": "" if math.isnan(value) else f"{value:.2f}×",
                    "met": None if math.isnan(value) else value >= floor,
                    "missing": pypy_missing if "PyPy" in ours else "not measured",
                    "disturbed": max(a.get("other_load", 0), b.get("other_load", 0)) > NOISY})

    for interpreter, floors in (("CPython", {1: 0.5, 16: 0.5}), ("PyPy", {1: 0.8, 16: 1.0})):
        for pipeline, floor in floors.items():
            for test in ("GET", "SET"):
                ratio_target(f"redis {test} -P {pipeline}, poolproxy {interpreter}", floor,
                             f"redis -c 50 -P {pipeline}", test, f"poolproxy {interpreter}",
                             "twemproxy")
    ratio_target("http keep-alive, poolproxy CPython", 5, "http -c 50 keep-alive",
                 "GET keep-alive", "poolproxy CPython", "ReverseProxyResource")
    ratio_target("http keep-alive, poolproxy PyPy", 0.4, "http -c 50 keep-alive",
                 "GET keep-alive", "poolproxy PyPy", "HAProxy http")
    for c in bench.churn or [None]:
        reused = c["reused"] if c else NAN   # NaN too when the run saw no client session
        out.append({"target": f"connection churn, {c['workload'].split(': ', 1)[1]}, poolproxy "
                              f"{c['interpreter']}" if c else "connection churn",
                    "floor": "≥ 99.9% of sessions on reused backend connections",
                    "measured": "" if math.isnan(reused) else f"{100 * reused:.3f}%",
                    "met": None if math.isnan(reused) else reused >= 0.999,
                    "missing": "not measured"})
    cpython_idle = next((i for i in bench.idle if i["interpreter"] == "CPython"), None)
    out.append({"target": f"{IDLE_CLIENTS:,} idle clients, poolproxy CPython RSS",
                "floor": "≤ 150 MB",
                "measured": f"{cpython_idle['rss_mb']:.1f} MB" if cpython_idle else "",
                "met": (cpython_idle["rss_mb"] <= 150 and cpython_idle["clients"] >= IDLE_CLIENTS)
                if cpython_idle else None, "missing": "not measured"})
    for s in bench.saturated or [None]:
        errors = sum(n for code, n in s["statuses"].items() if code == "503") if s else 0
        all_errors = bool(s) and errors == SATURATED_REQUESTS and s["slot_still_held"]
        out.append({"target": "saturated proxy, error reply time" +
                              (f", poolproxy {s['interpreter']}" if s else ""),
                    "floor": "p99 ≤ 5 ms (every reply a 503)",
                    "measured": f"p99 {ms(s['p99_ms'])} ms, {errors:,}/{SATURATED_REQUESTS:,} "
                                f"503" if s else "",
                    "met": (s["p99_ms"] <= 5 and all_errors) if s else None,
                    "missing": "not measured",
                    "disturbed": bool(s) and s["other_load"] > NOISY})
    for interpreter, floor in (("CPython", 0.5), ("PyPy", 0.9)):
        ratio_target(f"pgbench -S -M simple, poolproxy {interpreter}", floor,
                     PG_SELECT, "-M simple", f"poolproxy {interpreter}", "PgBouncer")
    for interpreter in ("CPython", "PyPy"):
        for workload in (PG_SELECT, PG_TPCB):
            ratio_target(f"{workload.split(' -c')[0]} -M prepared, poolproxy {interpreter}", 0.5,
                         workload, "-M prepared", f"poolproxy {interpreter}", "PgBouncer",
                         "-M simple")
    for interpreter in ("CPython", "PyPy"):
        ratio_target(f"pgbench -S -C, poolproxy {interpreter}", 1.5, PG_SELECT, "-C -M simple",
                     f"poolproxy {interpreter}", "PostgreSQL direct")
    return out


def targets_table(rows: List[Dict[str, Any]]) -> str:
    lines = []
    for t in rows:
        status = t["missing"] if t["met"] is None else ("met" if t["met"] else "**not met**")
        if t["met"] is not None and t.get("disturbed"):
            status += " (other processes were busy: see the notes above)"
        lines.append([t["target"], t["floor"], t["measured"], status])
    return table(["target", "floor", "measured", "status"], "llrl", lines)


def print_report(bench: Bench, info: Dict[str, str], title: str, checked: List[Dict[str, Any]],
                 elapsed: float) -> None:
    """The whole report, in markdown, to stdout."""
    args = bench.args
    print(f"# poolproxy benchmark, {time.strftime('%Y-%m-%d %H:%M')}\n")
    print(f"* Machine: {title}; {info['distro']}")
    print(f"* CPython: {info['cpython']}; PyPy: {info['pypy']}")
    print(f"* redis-server {info['redis-server']}, memcached {info['memcached']}, "
          f"nginx {info['nginx']}, nutcracker (twemproxy) {info['nutcracker']}, "
          f"HAProxy {info['haproxy']}, wrk {info['wrk']}, PostgreSQL {info['postgresql']}, "
          f"PgBouncer {info['pgbouncer']}, pgbench {info['pgbench']}")
    print(f"* Proxy under test pinned to CPU {PROXY_CPU}, backends and load generators to "
          f"CPU {LOAD_CPU}; {args.duration:g} s per measured run after {args.warmup:g} s of "
          f"the same load unmeasured; poolproxy on twistd's --reactor={args.reactor} (on "
          f"PyPy with PYPY_GC_NURSERY={os.environ.get('PYPY_GC_NURSERY', PYPY_GC_NURSERY)}), "
          f"the reference Twisted proxies on Twisted's default reactor; throughput targets "
          f"measured in {args.rounds} "
          f"interleaved rounds, each row its median round; the whole run took "
          f"{elapsed / 60:.1f} min.")
    print(f"* Other processes on the machine used {info['other load at start']} as the run "
          f"started; a run during which they used more than {100 * NOISY:.0f}% of a core is "
          "marked in the notes.")
    others = [r for r in bench.rows if not is_pgbench(r)]
    pgbench_rows = [r for r in bench.rows if is_pgbench(r)]
    if others:
        print(f"\n## Requests per second and latency\n\n{results_table(others)}")
        print(f"\n## poolproxy vs the reference proxies\n\n{ratio_table(others)}")
    if pgbench_rows:
        print(f"\n## PostgreSQL: pgbench, {PG_CLIENTS} clients, {PG_THREADS} threads, scale "
              f"{PG_SCALE}, proxies with {args.pg_pool_size} server connections\n\n"
              f"{pgbench_table(pgbench_rows)}")
        print(f"\n### Ratios\n\n{pgbench_ratio_table(pgbench_rows)}")
    if bench.churn:
        print(f"\n## Connection churn (connect, one request, close)\n\n{churn_table(bench.churn)}")
    if bench.idle:
        print(f"\n## Idle client connections\n\n{idle_table(bench.idle)}")
    if bench.saturated:
        print("\n## Saturated proxy (--max-concurrency 1 --queue-size 0, its slot held)\n\n"
              f"{saturated_table(bench.saturated)}")
    print(f"\n## Targets\n\n{targets_table(checked)}")
    if bench.failed:
        print("\n## Parts that failed\n\n" + "\n".join(f"* {f}" for f in bench.failed))


def plot(rows: List[Dict[str, Any]], title: str, paths: List[str]) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        progress("matplotlib is not installed, so no plot: .venv/bin/pip install matplotlib")
        return
    rows = [r for r in rows if not math.isnan(r["rps"]) and r["rps"] > 0]
    if not rows:
        progress("no run measured anything, so no plot")
        return
    groups: List[Tuple[str, str]] = []
    for r in rows:
        if (r["workload"], r["test"]) not in groups:
            groups.append((r["workload"], r["test"]))
    names = list(dict.fromkeys(r["target"] for r in rows))
    cmap = plt.get_cmap("tab10")
    colors = {name: cmap(i % 10) for i, name in enumerate(names)}
    fig, ax = plt.subplots(figsize=(max(10, 1.2 * len(groups)), 6.5))
    labelled = set()
    for g, group in enumerate(groups):
        bars = [r for r in rows if (r["workload"], r["test"]) == group]
        width = 0.84 / len(bars)
        for k, r in enumerate(bars):
            rounds = r.get("rounds_rps") or []
            # The bar is the median round; the whisker spans the rounds.
            spread = ([[r["rps"] - min(rounds)], [max(rounds) - r["rps"]]]
                      if len(rounds) > 1 else None)
            ax.bar(g - 0.42 + width * (k + 0.5), r["rps"], width * 0.95,
                   color=colors[r["target"]], yerr=spread, capsize=1.5,
                   error_kw={"elinewidth": 0.7, "ecolor": "#333"},
                   label=None if r["target"] in labelled else r["target"])
            labelled.add(r["target"])
    ax.set_yscale("log")
    ax.set_ylim(top=max(r["rps"] for r in rows) * 8)   # room for the legend
    ax.set_ylabel("requests per second (log scale)")
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([f"{w.replace('churn: ', 'churn ')}\n{t}" for w, t in groups],
                       fontsize=7, rotation=30, ha="right")
    ax.grid(axis="y", which="both", alpha=0.3)
    ax.legend(fontsize=8, ncol=3, loc="upper right")
    ax.set_title(f"poolproxy benchmark, {time.strftime('%Y-%m-%d')}\n{title}", fontsize=10)
    fig.tight_layout()
    for path in paths:
        fig.savefig(path, dpi=110)
        progress(f"plot written to {os.path.relpath(path, ROOT)}")
    plt.close(fig)
