"""Summarise an `ncu --csv` report.

  python3 benchmarks/ncu_summary.py report.csv             # one line per launch: name, grid, time
  python3 benchmarks/ncu_summary.py --counters report.csv  # every metric of every launch, one block each

The first form reads `--metrics gpu__time_duration.sum` reports (gpu_check.sh
`profile`); the second any metric list (gpu_check.sh `counters`): stall
reasons are printed as warps stalled per issued instruction, largest first.
"""

import argparse
import csv
from collections import OrderedDict

_US_PER_UNIT = {"nsecond": 1e-3, "ns": 1e-3, "usecond": 1.0, "us": 1.0, "msecond": 1e3, "ms": 1e3}
_STALL = "smsp__average_warps_issue_stalled_"


def _rows(path: str) -> list[dict]:
    with open(path) as f:
        lines = [l for l in f if l.startswith('"')]
    return list(csv.DictReader(lines))


def _value(r: dict) -> float:
    try:
        return float(r["Metric Value"].replace(",", ""))
    except ValueError:
        return float("nan")


def _micros(r: dict) -> float:
    unit = r.get("Metric Unit", "")
    if unit not in _US_PER_UNIT:
        raise SystemExit(f"ncu_summary: unknown time unit {unit!r} (row {r['ID']})")
    return _US_PER_UNIT[unit] * _value(r)


def durations(path: str) -> None:
    for r in _rows(path):
        if r.get("Metric Name") != "gpu__time_duration.sum":
            continue
        name = r["Kernel Name"].split("(")[0][:70]
        print(f"{r['ID']:>5} {name:70s} grid {r.get('Grid Size', ''):>14s} block {r.get('Block Size', ''):>12s}"
              f" {_micros(r):9.2f} us")


def counters(path: str) -> None:
    launches: "OrderedDict[str, dict]" = OrderedDict()
    for r in _rows(path):
        d = launches.setdefault(r["ID"], {"name": r["Kernel Name"], "metrics": {}})
        name = r["Metric Name"]
        if name == "gpu__time_duration.sum":
            d["metrics"][name] = (_micros(r), "us")
        else:
            d["metrics"][name] = (_value(r), r.get("Metric Unit", ""))
    for lid, d in launches.items():
        m = d["metrics"]
        print(f"[{lid}] {d['name'][:160]}")
        stalls = sorted(((v, k[len(_STALL):].replace("_per_issue_active.ratio", ""))
                         for k, (v, _) in m.items() if k.startswith(_STALL)), reverse=True)
        for k, (v, unit) in m.items():
            if not k.startswith(_STALL):
                print(f"    {k:60s} {v:14.2f} {unit}")
        print("    stalls (warps per issue): " + ", ".join(f"{n} {v:.2f}" for v, n in stalls if v >= 0.05))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--counters", action="store_true", help="print every metric of every launch")
    ap.add_argument("report")
    a = ap.parse_args()
    (counters if a.counters else durations)(a.report)


if __name__ == "__main__":
    main()
