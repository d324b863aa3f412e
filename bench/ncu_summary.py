#!/usr/bin/env python3
"""Totals of Nsight Compute's `--print-summary per-kernel` output, largest first.

    ncu --metrics gpu__time_duration.sum --print-summary per-kernel PROGRAM ... > ncu.txt
    bench/ncu_summary.py ncu.txt

ncu prints, per kernel (and launch configuration): a header line ending in `Invocations N`, then
the metric's unit, minimum, maximum and average. Each kernel's total is average × invocations;
kernels of the same function name are added together.
"""

import re
import sys
from collections import defaultdict

UNITS = {"ns": 1e-6, "us": 1e-3, "usecond": 1e-3, "nsecond": 1e-6, "ms": 1.0, "msecond": 1.0, "s": 1e3, "second": 1e3}


def function_name(header: str) -> str:
    name = header.strip()
    name = re.sub(r"^void\s+", "", name)
    # `name<templates>(args) (grid)x(block), Context …` → name
    return re.split(r"[(<]", name, maxsplit=1)[0].strip() or header.strip()


def main(path: str) -> None:
    totals, counts = defaultdict(float), defaultdict(int)
    current, invocations = None, 0
    for line in open(path, errors="replace"):
        m = re.search(r"Invocations\s+(\d+)", line)
        if m:
            current, invocations = function_name(line), int(m.group(1))
            continue
        m = re.match(r"\s*gpu__time_duration\.sum\s+(\S+)\s+([\d.,]+)\s+([\d.,]+)\s+([\d.,]+)", line)
        if m and current:
            average = float(m.group(4).replace(",", "")) * UNITS.get(m.group(1), float("nan"))
            totals[current] += average * invocations
            counts[current] += invocations
            current = None
    total = sum(totals.values())
    if not total:
        print(f"no kernel summaries found in {path}")
        return
    print(f"{sum(counts.values())} launches, {total:.1f} ms of kernel time")
    for name, ms in sorted(totals.items(), key=lambda kv: -kv[1]):
        print(f"{100 * ms / total:5.1f} %  {ms:8.2f} ms  {counts[name]:6d}×  {name}")


if __name__ == "__main__":
    main(sys.argv[1])
