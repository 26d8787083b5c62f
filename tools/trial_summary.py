"""
Print trial's result as one plain line, "N passed, N failed, N skipped", so
that CI logs state the count in words any reader (or tool) understands.
"""

from __future__ import annotations

import re
import sys


def summarize(text: str) -> str:
    lines = [line for line in text.splitlines() if line.startswith(("PASSED", "FAILED"))]
    if not lines:
        return "0 passed, 1 failed (trial printed no result line)"
    counts = dict((k, int(v)) for k, v in re.findall(r"(\w+)=(\d+)", lines[-1]))
    passed = counts.get("successes", 0) + counts.get("expectedFailures", 0)
    failed = counts.get("failures", 0) + counts.get("errors", 0) + counts.get("unexpectedSuccesses", 0)
    return f"{passed} passed, {failed} failed, {counts.get('skips', 0)} skipped"


if __name__ == "__main__":
    with open(sys.argv[1], encoding="utf-8", errors="replace") as f:
        print(summarize(f.read()))
