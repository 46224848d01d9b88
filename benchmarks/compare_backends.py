"""Cross-checks one MoE case four ways: the GPU handler, the CPU handler, and
the jnp reference evaluated on the GPU and on the CPU. Prints pairwise
relative L2 errors (per-(token,k) rows, so a bad stage shows up per row).

  python3 benchmarks/compare_backends.py --act mxfp8 --weights nvfp4 --T 64 --H 2048 --I 768
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

import jax  # noqa: E402
import numpy as np  # noqa: E402

import jax_moe  # noqa: E402
from jax_moe import reference  # noqa: E402
from jax_moe.formats import Format  # noqa: E402
from moe_cases import make_case, rel_l2  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--act", default="bf16")
    ap.add_argument("--weights", default="nvfp4")
    for name, default in (("T", 64), ("H", 2048), ("I", 768), ("E", 32), ("K", 4)):
        ap.add_argument(f"--{name}", type=int, default=default)
    args = ap.parse_args()
    case = make_case(T=args.T, H=args.H, I=args.I, E=args.E, top_k=args.K,
                     weight_format=Format[args.weights.upper()], act_format=Format[args.act.upper()])
    kw = dict(case.kwargs, do_finalize=False)
    ops = (case.hidden, case.logits, case.w13, case.w2)
    ref = lambda *a: reference.moe_reference(*a, **kw)
    results = {}
    for dev in ("gpu", "cpu"):
        d = jax.devices(dev)[0]
        a = jax.device_put(ops, d)
        op = lambda *x: jax_moe.fp4_moe(*x, **kw)  # tactic: the lowering platform's default
        results[f"op_{dev}"] = np.asarray(jax.jit(op)(*a)[0], np.float32)
        results[f"ref_{dev}"] = np.asarray(jax.jit(ref)(*a)[0], np.float32)
    names = list(results)
    for i, x in enumerate(names):
        for y in names[i + 1:]:
            a, b = results[x], results[y]
            rows = np.linalg.norm((a - b).reshape(-1, args.H), axis=1) / np.maximum(
                np.linalg.norm(b.reshape(-1, args.H), axis=1), 1e-30)
            print(f"{x:8s} vs {y:8s}: rel L2 {rel_l2(a, b):.3e}  worst row {rows.max():.3e}  "
                  f"rows > 1e-2: {(rows > 1e-2).sum()}/{rows.size}")


if __name__ == "__main__":
    main()
