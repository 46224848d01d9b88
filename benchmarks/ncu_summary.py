"""Summarise an `ncu --csv --metrics gpu__time_duration.sum` report: one line per
kernel launch in order (short name, grid, duration in us)."""

import csv
import sys

_US_PER_UNIT = {"nsecond": 1e-3, "ns": 1e-3, "usecond": 1.0, "us": 1.0, "msecond": 1e3, "ms": 1e3}


def main(path: str) -> None:
    with open(path) as f:
        lines = [l for l in f if l.startswith('"')]
    rows = list(csv.DictReader(lines))
    for r in rows:
        if r.get("Metric Name") != "gpu__time_duration.sum":
            continue
        name = r["Kernel Name"].split("(")[0][:70]
        unit = r.get("Metric Unit", "")
        v = float(r["Metric Value"].replace(",", ""))
        if unit not in _US_PER_UNIT:
            raise SystemExit(f"ncu_summary: unknown time unit {unit!r} (row {r['ID']})")
        us = _US_PER_UNIT[unit] * v
        print(f"{r['ID']:>5} {name:70s} grid {r.get('Grid Size', ''):>14s} block {r.get('Block Size', ''):>12s} {us:9.2f} us")


if __name__ == "__main__":
    main(sys.argv[1])
