"""Expert-parallel MoE on several GPUs vs one GPU (issue "Expert parallelism").

  python3 benchmarks/ep.py --tokens-per-device 64,512,4096 --out benchmarks/results/ep

DeepSeek-V3 shape (E=256, K=8, H=7168, I=2048, grouped routing), MXFP4 weights.
For D = all visible GPUs and each mode ("replicated", "all_to_all"): the median
time of one layer over D*T tokens with the experts sharded over D devices,
tokens/s per GPU, and the same for one GPU holding all experts on D*T tokens
(where it fits), so scaling = (EP tokens/s per GPU) / (single-GPU tokens/s).
Runs on one GPU too (D = 1: a dry run of the script).
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # noqa: E402

import jax_moe  # noqa: E402
from benchmarks import run_info  # noqa: E402
from jax_moe import sharding  # noqa: E402
from jax_moe.formats import Format  # noqa: E402
from jax_moe.models import MODELS  # noqa: E402
from moe_cases import random_expert_weights  # noqa: E402

_autotune = importlib.import_module("jax_moe.autotune")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="deepseek-v3")
    ap.add_argument("--weights", default="mxfp4")
    ap.add_argument("--tokens-per-device", default="64,512,4096")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--out", default="benchmarks/results/ep")
    a = ap.parse_args()
    m = MODELS[a.model]
    devices = jax.devices()
    D = len(devices)
    mesh = Mesh(np.array(devices), ("ep",))
    fmt = Format[a.weights.upper()]
    key = jax.random.key(0)
    ep = NamedSharding(mesh, P("ep"))
    w13 = random_expert_weights(key, m.num_experts, 2 * m.intermediate_size, m.hidden_size, fmt)
    w2 = random_expert_weights(jax.random.fold_in(key, 1), m.num_experts, m.hidden_size, m.intermediate_size, fmt)
    w13_sh, w2_sh = (jax.tree.map(lambda x: jax.device_put(x, ep) if x.ndim else x, w) for w in (w13, w2))
    kw = m.routing_kwargs()
    rows = []
    for t in [int(x) for x in a.tokens_per_device.split(",")]:
        T = t * D
        x = jax.random.normal(jax.random.fold_in(key, T), (T, m.hidden_size), jnp.bfloat16)
        logits = 2.0 * jax.random.normal(jax.random.fold_in(key, T + 1), (T, m.num_experts), jnp.float32)
        row = dict(tokens_per_device=t, devices=D)
        for mode in sharding.MODES:
            f = jax.jit(lambda x, l, a, b: sharding.expert_parallel_moe(x, l, a, b, mesh=mesh, mode=mode, **kw))
            try:
                sec, _ = _autotune.median_time(f, (x, logits, w13_sh, w2_sh), a.reps, warmup=True)
                row[f"{mode}_us"] = sec * 1e6
                row[f"{mode}_tok_s_per_gpu"] = T / sec / D
            except Exception as exc:  # e.g. out of memory for the all-to-all buffers
                row[f"{mode}_error"] = str(exc).splitlines()[0][:200]
        try:
            single = jax.jit(lambda x, l, a, b: jax_moe.fp4_moe(x, l, a, b, **kw))
            one = jax.device_put((x, logits, w13, w2), devices[0])
            sec, _ = _autotune.median_time(single, one, a.reps, warmup=True)
            row["single_gpu_us"] = sec * 1e6
            row["single_gpu_tok_s"] = T / sec
            for mode in sharding.MODES:
                if f"{mode}_tok_s_per_gpu" in row:
                    row[f"{mode}_scaling"] = row[f"{mode}_tok_s_per_gpu"] / row["single_gpu_tok_s"]
        except Exception as exc:
            row["single_gpu_error"] = str(exc).splitlines()[0][:200]
        rows.append(row)
        print(json.dumps(row), flush=True)
    commit = run_info.commit()
    result = dict(device=devices[0].device_kind, devices=D, date=datetime.date.today().isoformat(),
                  commit=commit, jax=jax.__version__, model=a.model, weights=a.weights, rows=rows)
    with open(a.out + ".json", "w") as f:
        json.dump(result, f, indent=1)
    with open(a.out + ".md", "w") as f:
        f.write(f"# Expert parallelism: {a.model}, {a.weights} ({D} x {result['device']}, {result['date']}, "
                f"commit {commit[:9]})\n\n| T per GPU | mode | time (us) | tokens/s per GPU | scaling vs 1 GPU |\n"
                "|---|---|---|---|---|\n")
        for r in rows:
            for mode in sharding.MODES:
                f.write(f"| {r['tokens_per_device']} | {mode} | {r.get(f'{mode}_us', float('nan')):.1f} | "
                        f"{r.get(f'{mode}_tok_s_per_gpu', float('nan')):.0f} | "
                        f"{r.get(f'{mode}_scaling', float('nan')):.2f} |\n")


if __name__ == "__main__":
    main()
