"""
The cost of L{poolproxy.codecs.postgres_sql.session_effect}, which the
postgres codec asks of every simple Query and every Parse: microseconds per
call for pgbench's statements, a 2 KB ORM SELECT, and statements that pass
the filter and go through the lexer.

    .venv/bin/python bench/micro/postgres_sql.py [--rounds 7]
    .venv-pypy/bin/python bench/micro/postgres_sql.py
    .venv/bin/python bench/micro/postgres_sql.py --instructions

Each figure is the best of --rounds timed rounds; on a shared virtual
machine times still move by 10-50%, so --instructions counts the CPU
instructions of one call instead (valgrind's callgrind, the difference
between a run of --runs calls and a run of none), which is the same from
run to run for the same code.
"""

from __future__ import annotations

import argparse
import os
import sys
import timeit
from typing import List, Tuple

import harness

if not os.environ.get("PYTHONPATH"):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from poolproxy.codecs.postgres_sql import session_effect  # noqa: E402


def orm_select() -> bytes:
    """A Django-style SELECT of 2 KB: quoted names, a join, a filter, an order."""
    columns = b", ".join(b'"shop_order"."field_%02d"' % i for i in range(62))
    return (b"SELECT " + columns + b' FROM "shop_order" INNER JOIN "shop_customer" ON '
            b'("shop_order"."customer_id" = "shop_customer"."id") WHERE ("shop_order"."status" = '
            b"'paid' AND \"shop_customer\".\"region\" IN ('eu', 'us')) ORDER BY "
            b'"shop_order"."created_at" DESC LIMIT 21')


def cases() -> List[Tuple[str, bytes]]:
    return [
        ("pgbench SELECT", b"SELECT abalance FROM pgbench_accounts WHERE aid = 123;"),
        ("pgbench UPDATE ... SET", b"UPDATE pgbench_accounts SET abalance = abalance + -1234 WHERE aid = 5;"),
        ("BEGIN;", b"BEGIN;"),
        ("END;", b"END;"),
        ("2 KB ORM SELECT", orm_select()),
        ("lexer: SET search_path", b"SET search_path TO app, public"),
        ("lexer: SET LOCAL", b"SET LOCAL statement_timeout = '5s'"),
        ("lexer: column named temp", b"SELECT id FROM readings WHERE temp > 30 ORDER BY id"),
    ]


def measure(sql: bytes, rounds: int) -> float:
    """Best of C{rounds}: microseconds per call."""
    timer = timeit.Timer(lambda: session_effect(sql))
    number, _ = timer.autorange()
    return min(timer.repeat(rounds, number)) / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--instructions", action="store_true",
                        help="count CPU instructions per call with valgrind instead of timing")
    parser.add_argument("--runs", type=int, default=20000, help="calls per --instructions run")
    parser.add_argument("--case", type=int, help=argparse.SUPPRESS)  # the child of --instructions
    parser.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.case is not None:
        sql = cases()[options.case][1]
        for _ in range(options.count):
            session_effect(sql)
        return
    unit = "instructions" if options.instructions else sys.implementation.name + " µs"
    print(f"{'statement':28} {'bytes':>6} {'label':>8} {unit:>12}")
    for index, (name, sql) in enumerate(cases()):
        label = session_effect(sql) or "-"
        if options.instructions:
            base = [os.path.abspath(__file__), "--case", str(index), "--count"]
            work = harness.instructions(base + [str(options.runs)])
            idle = harness.instructions(base + ["0"])
            print(f"{name:28} {len(sql):6} {label:>8} {(work - idle) / options.runs:12.0f}")
        else:
            print(f"{name:28} {len(sql):6} {label:>8} {measure(sql, options.rounds):12.3f}")


if __name__ == "__main__":
    main()
