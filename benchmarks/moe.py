"""MoE layer timings on the GPU against the memory floor (first version: the
issue "Performance" extends it with peers, tuning and the compute floor).

  python3 benchmarks/moe.py --tokens 1,64,512 --out benchmarks/results/gpu_pipeline

Per (model, T): median time of `fp4_moe` (default tactic) inside one jitted
executable that runs the layer on `copies` different weight copies in turn
(so the touched experts are not served from the 50 MB L2), the bytes of the
experts actually touched, and the memory floor = bytes / measured copy
bandwidth (a 4 GiB device-to-device copy: bytes read + written).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import jax_moe  # noqa: E402
import importlib  # noqa: E402
from jax_moe import tactics  # noqa: E402
from jax_moe.formats import Format  # noqa: E402
from jax_moe.models import MODELS  # noqa: E402
from moe_cases import random_expert_weights  # noqa: E402

_autotune = importlib.import_module("jax_moe.autotune")


def median_time(fn, args, reps: int) -> tuple[float, float]:
    """(median, IQR) seconds of fn(*args) after a warm-up (the autotuner's timer)."""
    return _autotune.median_time(fn, args, reps, warmup=True)


def copy_bandwidth(reps: int) -> float:
    x = jnp.ones((1 << 30,), jnp.float32)  # 4 GiB
    f = jax.jit(lambda a: a + 1.0)
    t, _ = median_time(f, (x,), reps)
    return 2 * x.nbytes / t


def expert_bytes(w) -> int:
    return int(w.data[0].nbytes + w.scale[0].nbytes)


def bench_model(name: str, tokens: list[int], wfmt: Format, reps: int, copy_bw: float) -> list[dict]:
    m = MODELS[name]
    E, K, H, I = m.num_experts, m.top_k, m.hidden_size, m.intermediate_size
    rows = []
    key = jax.random.key(0)
    probe13 = random_expert_weights(key, 1, 2 * I, H, wfmt)
    probe2 = random_expert_weights(key, 1, H, I, wfmt)
    per_expert = expert_bytes(probe13) + expert_bytes(probe2)
    copies = int(min(8, max(1, math.ceil(2e9 / (per_expert * E)))))
    ws = [(random_expert_weights(jax.random.fold_in(key, 2 * c), E, 2 * I, H, wfmt),
           random_expert_weights(jax.random.fold_in(key, 2 * c + 1), E, H, I, wfmt)) for c in range(copies)]
    kw = m.routing_kwargs()
    if m.biases:
        kw["b13"] = 0.1 * jnp.ones((E, 2 * I), jnp.float32)
        kw["b2"] = 0.1 * jnp.ones((E, H), jnp.float32)
    for T in tokens:
        x = jax.random.normal(jax.random.fold_in(key, 1000 + T), (copies, T, H), jnp.bfloat16)
        logits = 2.0 * jax.random.normal(jax.random.fold_in(key, 2000 + T), (copies, T, E), jnp.float32)

        @jax.jit
        def layer(x, logits, ws):
            acc = jnp.zeros((T, H), jnp.float32)
            for c in range(copies):
                acc = acc + jax_moe.fp4_moe(x[c], logits[c], ws[c][0], ws[c][1], **kw).astype(jnp.float32)
            return acc

        t, iqr = median_time(layer, (x, logits, ws), reps)
        t /= copies
        ids = [np.asarray(jax.jit(lambda l: jax_moe.fp4_moe(x[c], l, ws[c][0], ws[c][1], **kw,
                                                             do_finalize=False)[2])(logits[c]))
               for c in range(copies)]
        touched = float(np.mean([len(np.unique(i)) for i in ids]))
        floor = touched * per_expert / copy_bw
        problem = jax_moe.MoEProblem(T, H, I, E, E, K, weight_format=wfmt)
        tactic = tactics.tactic_table()[tactics.default_tactic(problem, "cuda")].name
        rows.append(dict(model=name, T=T, weights=wfmt.name.lower(), acts="bf16", time_us=t * 1e6,
                         iqr_us=iqr / copies * 1e6, tactic=tactic, experts_touched=touched,
                         mem_floor_us=floor * 1e6, time_over_mem_floor=t / floor, copies=copies))
        print(f"{name:14s} T={T:6d} {t * 1e6:10.1f} us  floor {floor * 1e6:8.1f} us  "
              f"x{t / floor:6.2f}  experts {touched:6.1f}  {tactic}", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default=",".join(sorted(MODELS)))
    ap.add_argument("--tokens", default="1,64,512")
    ap.add_argument("--weights", default="nvfp4")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--out", default="benchmarks/results/gpu_pipeline")
    ap.add_argument("--gpu-tests", default=None, help="pytest summary line to record")
    a = ap.parse_args()
    copy_bw = copy_bandwidth(a.reps)
    print(f"copy bandwidth {copy_bw / 1e9:.0f} GB/s", flush=True)
    rows = []
    for name in a.models.split(","):
        rows += bench_model(name, [int(t) for t in a.tokens.split(",")], Format[a.weights.upper()], a.reps, copy_bw)
        write_results(a, rows, copy_bw)  # after each model: a later crash keeps what was measured


def write_results(a, rows: list[dict], copy_bw: float) -> None:
    # The device copy of the tree may carry stale git metadata: the caller can pin the commit.
    commit = os.environ.get("JAX_MOE_COMMIT") or subprocess.run(
        ["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    result = dict(device=jax.devices()[0].device_kind, date=datetime.date.today().isoformat(), commit=commit,
                  jax=jax.__version__, copy_bw_GBs=copy_bw / 1e9, rows=rows, gpu_tests=a.gpu_tests)
    with open(a.out + ".json", "w") as f:
        json.dump(result, f, indent=1)
    with open(a.out + ".md", "w") as f:
        f.write(f"# fp4_moe timings ({result['device']}, {result['date']}, commit {commit[:9]}, jax {jax.__version__})\n\n")
        f.write(f"Copy bandwidth {copy_bw / 1e9:.0f} GB/s. Median of {a.reps} runs, default tactic, bf16 activations.\n\n")
        f.write("| model | T | weights | time (us) | memory floor (us) | time / floor | experts touched | tactic |\n")
        f.write("|---|---|---|---|---|---|---|---|\n")
        for r in rows:
            f.write(f"| {r['model']} | {r['T']} | {r['weights']} | {r['time_us']:.1f} | {r['mem_floor_us']:.1f} | "
                    f"{r['time_over_mem_floor']:.2f} | {r['experts_touched']:.1f} | {r['tactic']} |\n")
        if a.gpu_tests:
            f.write(f"\nGPU tests (`pytest -m gpu`, same machine): {a.gpu_tests}\n")

if __name__ == "__main__":
    main()
