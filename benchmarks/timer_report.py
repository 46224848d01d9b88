"""Turn stage_timer output (and optionally an ncu --counters summary) into
benchmarks/results JSON + markdown.

  python3 -m benchmarks.timer_report timer.txt [--counters counters.txt] \\
      --commit <sha> --device "NVIDIA H200" --gpu-tests "130 passed ..." \\
      --out benchmarks/results/decode_profile_<date>

Rows: one per (model, weights, T, tactic, split cap) with the pipeline time
and each stage's time (us, medians); the access-pattern probe rows; the
finalize kernels alone (`stage_timer --finalize`); the ncu counters of the
launches in the summary.
"""

from __future__ import annotations

import argparse
import datetime
import json
import re

_HEADER = re.compile(r"stage_timer: median of (\d+), .*JAX_MOE_MAX_K_SPLITS=(\S+)"
                     r"(?: JAX_MOE_L2_PREFETCH=(\S+) JAX_MOE_DEPENDENT_LAUNCH=(\S+))?"
                     r"(?: JAX_MOE_ACT_PREFETCH=(\S+))?(?: JAX_MOE_FUSED_ROUTING=(\S+))?")
_ROW = re.compile(r"(\S+)\s+(nvfp4|mxfp4) T=(\d+)\s+(\S+)\s+splits<=(\d+) pipeline\s+([\d.]+) us \|(.*)")
_STAGE = re.compile(r"(routing|permute|gemm1|gemm2|finalize)\s+([\d.]+)")
_FINALIZE = re.compile(r"finalize (\S+)\s+T=(\d+)\s+K=(\d+) H=(\d+) ([\d.]+) MB \| vectorized\s+([\d.]+) us\s+(\d+) GB/s"
                       r" scalar\s+([\d.]+) us\s+(\d+) GB/s")
_PATTERN = re.compile(r"pattern (.+?)\s+(linear|tiled)\s+spin\s+(\d+)\s+(\d+) warps\s+([\d.]+) MB\s+([\d.]+) us\s+(\d+) GB/s")


def parse_timer(text: str) -> tuple[list[dict], list[dict]]:
    rows, patterns = [], []
    cap, l2, dep, act, fused = "unset", "n/a", "n/a", "n/a", "n/a"  # older headers lack the later knobs
    for line in text.splitlines():
        if m := _HEADER.search(line):
            cap = m.group(2)
            l2, dep, act, fused = (m.group(i) or "n/a" for i in (3, 4, 5, 6))
        elif m := _ROW.match(line.strip()):
            row = dict(model=m.group(1), weights=m.group(2), T=int(m.group(3)), tactic=m.group(4),
                       split_cap=cap, l2_prefetch=l2, dependent_launch=dep, act_prefetch=act, fused_routing=fused,
                       max_splits_used=int(m.group(5)), pipeline_us=float(m.group(6)))
            row.update({k + "_us": float(v) for k, v in _STAGE.findall(m.group(7))})
            rows.append(row)
        elif m := _PATTERN.match(line.strip()):
            patterns.append(dict(shape=m.group(1).strip(), layout=m.group(2), spin=int(m.group(3)),
                                 warps=int(m.group(4)), mb=float(m.group(5)), us=float(m.group(6)),
                                 gb_per_s=int(m.group(7))))
    return rows, patterns


def parse_finalize(text: str) -> list[dict]:
    """The `finalize ...` rows of `stage_timer --finalize` (each kernel alone, L2 flushed)."""
    rows = []
    for line in text.splitlines():
        if m := _FINALIZE.match(line.strip()):
            vec, scalar = float(m.group(6)), float(m.group(8))
            rows.append(dict(model=m.group(1), T=int(m.group(2)), K=int(m.group(3)), H=int(m.group(4)),
                             mb=float(m.group(5)), vectorized_us=vec, vectorized_gb_per_s=int(m.group(7)),
                             scalar_us=scalar, scalar_gb_per_s=int(m.group(9)), speedup=scalar / vec))
    return rows


def parse_counters(text: str) -> list[dict]:
    launches, cur = [], None
    for line in text.splitlines():
        if line.startswith("["):
            cur = dict(launch=line.split("]")[0][1:], kernel=line.split("] ", 1)[1], metrics={})
            launches.append(cur)
        elif cur is not None and line.strip().startswith("stalls"):
            cur["stalls"] = line.split(":", 1)[1].strip()
        elif cur is not None and line.strip():
            parts = line.split()
            cur["metrics"][parts[0]] = float(parts[1])
    return launches


def markdown(d: dict) -> str:
    out = [f"# Decode pipeline per stage ({d['device']}, {d['date']}, commit {d['commit']})", "",
           f"Command: `{d['command']}`. GPU tests at this commit: {d['gpu_tests']}.", "",
           "| model | T | tactic | split cap | L2 prefetch | dependent launch | act prefetch | fused routing | splits used | "
           "pipeline (us) | routing | permute | gemm1 | gemm2 | finalize |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in d["rows"]:
        out.append(f"| {r['model']} {r['weights']} | {r['T']} | {r['tactic']} | {r['split_cap']} | "
                   f"{r.get('l2_prefetch', 'n/a')} | {r.get('dependent_launch', 'n/a')} | "
                   f"{r.get('act_prefetch', 'n/a')} | {r.get('fused_routing', 'n/a')} | "
                   f"{r['max_splits_used']} | {r['pipeline_us']:.1f} | " +
                   " | ".join(f"{r.get(s + '_us', float('nan')):.1f}"
                              for s in ("routing", "permute", "gemm1", "gemm2", "finalize")) + " |")
    if d["patterns"]:
        out += ["", "Access-pattern probe (same bytes and warps as GEMM1 at T = 1; linear rows vs "
                "4 KiB K-block chunks; spin = ALU ops between K blocks, 0 = 4 K blocks requested at once):", "",
                "| shape | layout | spin | warps | MB | us | GB/s |", "|---|---|---|---|---|---|---|"]
        out += [f"| {p['shape']} | {p['layout']} | {p['spin']} | {p['warps']} | {p['mb']:.2f} | {p['us']:.1f} | "
                f"{p['gb_per_s']} |" for p in d["patterns"]]
    if d.get("finalize"):
        out += ["", "Finalize kernels alone (L2 flushed; bytes = K bf16 rows read + one written per token):", "",
                "| model | T | K | H | MB | vectorized (us) | GB/s | scalar (us) | GB/s | vec / scalar speedup |",
                "|---|---|---|---|---|---|---|---|---|---|"]
        out += [f"| {f['model']} | {f['T']} | {f['K']} | {f['H']} | {f['mb']:.2f} | {f['vectorized_us']:.1f} | "
                f"{f['vectorized_gb_per_s']} | {f['scalar_us']:.1f} | {f['scalar_gb_per_s']} | {f['speedup']:.2f} |"
                for f in d["finalize"]]
    if d["counters"]:
        out += ["", "ncu counters (first launch of each kernel per model):", ""]
        seen = set()
        for c in d["counters"]:
            key = c["kernel"]
            m = c["metrics"]
            if (key, m.get("launch__grid_size")) in seen:
                continue
            seen.add((key, m.get("launch__grid_size")))
            out.append(f"- `{key}` grid {m.get('launch__grid_size', 0):.0f}: "
                       f"{m.get('gpu__time_duration.sum', 0):.1f} us, DRAM {m.get('dram__throughput.avg.pct_of_peak_sustained_elapsed', 0):.1f}%, "
                       f"issue active {m.get('smsp__issue_active.avg.pct_of_peak_sustained_active', 0):.1f}%, "
                       f"warps active {m.get('sm__warps_active.avg.pct_of_peak_sustained_active', 0):.1f}%, "
                       f"{m.get('smsp__inst_executed.sum', 0) / 1e6:.2f} M warp instructions, "
                       f"{m.get('dram__bytes_read.sum', 0) / 1e6:.1f} MB read; stalls: {c.get('stalls', '')}")
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("timer")
    ap.add_argument("--counters")
    ap.add_argument("--commit", required=True)
    ap.add_argument("--device", required=True)
    ap.add_argument("--gpu-tests", default="not run")
    ap.add_argument("--command", default="TIMER_CAPS='8 4 2 1' TIMER_ARGS='--tokens 1,8,64 --reps 30' "
                                         "bash benchmarks/gpu_check.sh timer")
    ap.add_argument("--date", default=datetime.date.today().isoformat())
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    text = open(a.timer).read()
    rows, patterns = parse_timer(text)
    finalize = parse_finalize(text)
    counters = parse_counters(open(a.counters).read()) if a.counters else []
    d = dict(device=a.device, date=a.date, commit=a.commit, command=a.command, gpu_tests=a.gpu_tests,
             rows=rows, patterns=patterns, finalize=finalize, counters=counters)
    with open(a.out + ".json", "w") as f:
        json.dump(d, f, indent=1)
    with open(a.out + ".md", "w") as f:
        f.write(markdown(d))
    print(f"wrote {a.out}.json / .md: {len(rows)} rows, {len(patterns)} probe rows, {len(finalize)} finalize rows, "
          f"{len(counters)} launches")


if __name__ == "__main__":
    main()
