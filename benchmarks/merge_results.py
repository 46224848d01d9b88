"""Merge several `benchmarks.moe` result files (one per device call: the full
table does not fit one 10-minute call) into one table, with every row checked
against the targets of the "Performance" issue:

  python3 -m benchmarks.merge_results --out benchmarks/results/latest \\
      part_a.json part_b.json [--finalize-log fin.log | --finalize-timer timer.txt]

Each row keeps the floors of its own run (copy bandwidth and matmul rate are
measured per call and recorded per part). A row (model, T, weights, acts) that a
later part measures again is replaced by the later one, so re-measured rows
(e.g. the decode rows after a decode change) can be laid over an older whole
table; each row names its part, and so its commit. Targets (T: tokens):
  decode  T <= 64:    time <= 1.25 x memory floor + 5 us
  middle  T = 512:    time <= 1.5 x max(memory floor, compute floor)
  prefill T = 4096:   compute floor / time >= 50% (of the measured bf16 matmul rate)
          T = 16384:  >= 60%
  peers   every T:    >= 3x faster than bf16 ragged_dot; faster than the jnp reference
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from benchmarks import report  # noqa: E402


def target(row: dict) -> tuple[str, float]:
    """(description, the largest time in us that meets the row's speed target)."""
    T, mem, comp = row["T"], row["mem_floor_us"], row["compute_floor_us"]
    if T <= 64:
        return "<= 1.25 x mem + 5 us", 1.25 * mem + 5.0
    if T <= 512:
        return "<= 1.5 x max floor", 1.5 * max(mem, comp)
    share = 0.5 if T <= 4096 else 0.6
    return f">= {share:.0%} of matmul rate", comp / share


def parse_finalize_log(path: str) -> list[dict]:
    """Finalize rows from the console log of `benchmarks.moe` (for a run whose
    result file was not written)."""
    pat = re.compile(r"finalize T=(\d+) H=(\d+) K=(\d+): vectorized ([\d.]+) us \((\d+)% of copy BW\), "
                     r"scalar ([\d.]+) us")
    rows = []
    for line in open(path):
        m = pat.search(line)
        if m:
            T, H, K, vec, frac, scalar = m.groups()
            rows.append(dict(T=int(T), H=int(H), K=int(K), vec_us=float(vec), scalar_us=float(scalar),
                             vec_fraction_of_copy_bw=int(frac) / 100,
                             vec_speedup_vs_scalar=float(scalar) / float(vec)))
    return rows


def finalize_from_timer(path: str, copy_bw_gbs: float) -> list[dict]:
    """Finalize rows from `stage_timer --finalize` output (each kernel alone, L2
    flushed), as fractions of `copy_bw_gbs` (the merged run's copy bandwidth)."""
    from benchmarks import timer_report

    return [dict(model=f["model"], T=f["T"], H=f["H"], K=f["K"], vec_us=f["vectorized_us"], scalar_us=f["scalar_us"],
                 vec_fraction_of_copy_bw=f["vectorized_gb_per_s"] / copy_bw_gbs, vec_speedup_vs_scalar=f["speedup"],
                 source="stage_timer")
            for f in timer_report.parse_finalize(open(path).read())]


def merge(paths: list[str]) -> dict:
    parts, rows = [], {}  # rows keyed by (model, T, weights, acts): a later part replaces the row
    for p in paths:
        d = json.load(open(p))
        parts.append({k: d.get(k) for k in ("device", "date", "commit", "jax", "copy_bw_GBs", "bf16_matmul_TFLOPs",
                                            "gpu_tests")} | {"file": p, "rows": len(d["rows"])})
        for r in d["rows"]:
            desc, limit = target(r)
            r = dict(r, part=len(parts) - 1, target=desc, target_time_us=limit, target_met=r["time_us"] <= limit)
            if r.get("ragged_dot_bf16_us"):
                r["vs_ragged_dot"] = r["ragged_dot_bf16_us"] / r["time_us"]
            if r.get("reference_us"):
                r["vs_reference"] = r["reference_us"] / r["time_us"]
            rows[(r["model"], r["T"], r["weights"], r["acts"])] = r
    return dict(parts=parts, rows=list(rows.values()), finalize=[])


def write_markdown(result: dict, path: str) -> None:
    fmt = lambda v, p=1: "-" if v is None else f"{v:.{p}f}"
    with open(path, "w") as f:
        first = result["parts"][0]
        dates = sorted({str(p["date"]) for p in result["parts"] if p.get("date")})
        span = dates[0] if len(dates) <= 1 else f"{dates[0]} to {dates[-1]}"
        f.write(f"# fp4_moe vs floors, targets and peers ({first['device']}, {span})\n\n")
        f.write("Merged from one `benchmarks.moe` run per part; each row's floors come from its own run.\n\n"
                "| part | file | commit | jax | copy BW (GB/s) | bf16 matmul (TFLOP/s) | rows |\n"
                "|---|---|---|---|---|---|---|\n")
        for i, p in enumerate(result["parts"]):
            f.write(f"| {i} | {p['file']} | {p['commit'][:9]} | {p['jax']} | {p['copy_bw_GBs']:.0f} | "
                    f"{p['bf16_matmul_TFLOPs']:.0f} | {p['rows']} |\n")
        f.write("\n| model | T | weights | acts | time (us) | tactic | mem floor | compute floor | target | "
                "target time (us) | met | time / target | ragged_dot bf16 (us) | vs ragged_dot | reference (us) | "
                "vs reference |\n" + "|---" * 16 + "|\n")
        for r in result["rows"]:
            rd, err = r.get("ragged_dot_bf16_us"), r.get("ragged_dot_error", "")
            rd_cell = fmt(rd) if rd else ("OOM" if "RESOURCE_EXHAUSTED" in err or "Out of memory" in err else "-")
            f.write(f"| {r['model']} | {r['T']} | {r['weights']} | {r['acts']} | {r['time_us']:.1f} | "
                    f"{r['tactic'].replace('cuda_', '')} | {r['mem_floor_us']:.1f} | {r['compute_floor_us']:.1f} | "
                    f"{r['target']} | {r['target_time_us']:.1f} | {'yes' if r['target_met'] else 'no'} | "
                    f"{r['time_us'] / r['target_time_us']:.2f} | {rd_cell} | {fmt(r.get('vs_ragged_dot'), 2)} | "
                    f"{fmt(r.get('reference_us'))} | {fmt(r.get('vs_reference'), 2)} |\n")
        f.write(report.finalize_table_md(result["finalize"]))
        tests = result.get("gpu_tests")
        if tests:
            f.write(f"\nGPU tests (`pytest -m gpu`, same machine, commit {tests['commit']}): {tests['summary']}\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("parts", nargs="+", help="benchmarks.moe result JSON files")
    ap.add_argument("--out", default="benchmarks/results/latest")
    ap.add_argument("--finalize-log", default=None, help="console log holding the finalize rows")
    ap.add_argument("--finalize-timer", default=None,
                    help="stage_timer --finalize output holding the finalize rows (instead of --finalize-log)")
    ap.add_argument("--gpu-tests", default=None, help="pytest summary of the GPU suite for these parts")
    ap.add_argument("--gpu-tests-commit", default=None, help="commit the GPU suite ran at (default: part 0's)")
    a = ap.parse_args()
    result = merge(a.parts)
    if a.finalize_log:
        result["finalize"] = parse_finalize_log(a.finalize_log)
    if a.finalize_timer:
        result["finalize"] = finalize_from_timer(a.finalize_timer, result["parts"][0]["copy_bw_GBs"])
    tests = [p["gpu_tests"] for p in result["parts"] if p.get("gpu_tests")]
    if a.gpu_tests:
        tests = [a.gpu_tests]
    if tests:
        result["gpu_tests"] = dict(commit=a.gpu_tests_commit or result["parts"][0]["commit"], summary="; ".join(tests))
    with open(a.out + ".json", "w") as f:
        json.dump(result, f, indent=1)
    write_markdown(result, a.out + ".md")
    report.plot_time_vs_tokens(result["rows"], a.out + ".png")


if __name__ == "__main__":
    main()
