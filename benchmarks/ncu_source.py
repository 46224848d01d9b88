"""Where a kernel's warps wait, per SASS instruction, from ncu's PC sampling.

  ncu --section SourceCounters --section WarpStateStats -o rep <program>   # (gpu_check.sh stalls)
  ncu -i rep.ncu-rep --page source --csv --print-source sass > source.csv
  python3 benchmarks/ncu_source.py source.csv [--top 30]

For each profiled kernel: the share of all warp-stall samples per instruction, largest first,
with the instruction's text, until --top rows; then the samples summed per opcode. The
sampling columns' names differ between ncu versions: any column whose name holds "Sampling"
counts, and the first of them ("All Samples" where it exists) orders the rows.
"""

import argparse
import csv
import io
from collections import Counter


def _blocks(path: str):
    """Yields (title, header, rows) per kernel: a header row starts each block."""
    title, header, rows = "", None, []
    with open(path, errors="replace") as f:
        for line in f:
            fields = next(csv.reader(io.StringIO(line)), [])
            if not fields:
                continue
            if any("Sampling" in c for c in fields) and any(c in ("Address", "Source", "# Address") for c in fields):
                if header is not None:
                    yield title, header, rows
                header, rows = fields, []
            elif header is not None and len(fields) == len(header):
                rows.append(dict(zip(header, fields)))
            else:
                title = line.strip()[:160]
    if header is not None:
        yield title, header, rows


def _num(s: str) -> float:
    try:
        return float(s.replace(",", ""))
    except (ValueError, AttributeError):
        return 0.0


def _regions(rows: list, key: str) -> None:
    """Samples and stall reasons per region, the regions told apart by how often an
    instruction ran relative to the kernel's MMAs: the K loop (>= 0.9x the MMA count),
    once per chunk (0.2-0.9x: activation staging) and once per block (prologue, epilogue)."""
    ex = "Instructions Executed"
    mma = [_num(r[ex]) for r in rows if ex in r and "MMA" in r.get("Source", "")]
    if not mma or max(mma) == 0:
        return
    top = max(mma)
    reasons = [c for c in rows[0] if c.startswith("stall_") and "(" not in c]
    total = sum(_num(r[key]) for r in rows) or 1.0
    regions = (("K loop", 0.9 * top, float("inf")), ("per chunk", 0.2 * top, 0.9 * top), ("per block", 1e-9, 0.2 * top))
    for name, lo, hi in regions:
        part = [r for r in rows if lo <= _num(r[ex]) < hi]
        samples = sum(_num(r[key]) for r in part)
        by_reason = Counter({c[6:]: sum(_num(r[c]) for r in part) for c in reasons})
        n = sum(by_reason.values()) or 1.0
        print(f"   {name:9s} {100 * samples / total:5.1f}% of samples, {len(part):5d} instructions; stalls: "
              + ", ".join(f"{c} {100 * v / n:.0f}%" for c, v in by_reason.most_common(5)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("csv")
    ap.add_argument("--top", type=int, default=30)
    args = ap.parse_args()
    found = False
    for title, header, rows in _blocks(args.csv):
        found = True
        cols = [c for c in header if "Sampling" in c]
        key = next((c for c in cols if "All" in c), cols[0])
        total = sum(_num(r[key]) for r in rows) or 1.0
        src = "Source" if "Source" in header else header[1]
        addr = next((c for c in header if "Address" in c), header[0])
        print(f"== {title}\n   {len(rows)} instructions, {total:.0f} samples ({key}); columns: {', '.join(cols)}")
        ranked = sorted(rows, key=lambda r: -_num(r[key]))
        cum = 0.0
        for r in ranked[: args.top]:
            share = _num(r[key]) / total
            cum += share
            extra = " ".join(f"{_num(r[c]):.0f}" for c in cols if c != key)
            print(f"   {100 * share:5.1f}% (cum {100 * cum:5.1f}%) {r[addr]:>8s} {extra:>8s}  {r[src].strip()[:90]}")
        _regions(rows, key)
        by_op = Counter()
        for r in rows:
            op = r[src].strip().split()
            op = [t for t in op if not t.startswith("@")]
            by_op[op[0] if op else "?"] += _num(r[key])
        print("   by opcode: " + ", ".join(f"{op} {100 * n / total:.1f}%" for op, n in by_op.most_common(12)))
    if not found:
        with open(args.csv, errors="replace") as f:
            print("ncu_source: no block with sampling columns; the file starts:\n" + "".join(f.readlines()[:15]))


if __name__ == "__main__":
    main()
