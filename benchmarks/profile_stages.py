"""Per-kernel device times of one fp4_moe layer, for ncu (no timing of its own).

  ncu --clock-control none --metrics gpu__time_duration.sum --csv \\
      python3 benchmarks/profile_stages.py --model qwen3-30b-a3b --tokens 1,64

Runs each (model, T) layer `--calls` times after one warm-up call, so the ncu
report holds every stage kernel (routing, permute, GEMM1, GEMM2, finalize) of
the pipeline with its duration; benchmarks/gpu_check.sh `profile` summarises it.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import jax_moe  # noqa: E402
from benchmarks.moe import layer_kwargs  # noqa: E402
from jax_moe import tactics  # noqa: E402
from jax_moe.formats import Format  # noqa: E402
from jax_moe.models import MODELS  # noqa: E402
from moe_cases import random_expert_weights  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="qwen3-30b-a3b", help="model shape(s), comma-separated")
    ap.add_argument("--tokens", default="1,64")
    ap.add_argument("--weights", default="nvfp4")
    ap.add_argument("--calls", type=int, default=2)
    ap.add_argument("--tactics", default="default",
                    help="comma-separated tactic names to run each T with ('default' = the heuristic's)")
    a = ap.parse_args()
    for model in a.model.split(","):
        run_model(model, a)


def run_model(model: str, a: argparse.Namespace) -> None:
    m = MODELS[model]
    E, H, I = m.num_experts, m.hidden_size, m.intermediate_size
    wf = Format[a.weights.upper()]
    key = jax.random.key(0)
    w13 = random_expert_weights(jax.random.fold_in(key, 1), E, 2 * I, H, wf)
    w2 = random_expert_weights(jax.random.fold_in(key, 2), E, H, I, wf)
    kw = layer_kwargs(m)
    for T in (int(t) for t in a.tokens.split(",")):
        x = jax.random.normal(jax.random.fold_in(key, 10 + T), (T, H), jnp.bfloat16)
        logits = 2.0 * jax.random.normal(jax.random.fold_in(key, 20 + T), (T, E), jnp.float32)
        for name in a.tactics.split(","):
            tactic = None if name == "default" else tactics.tactic_id(name)
            f = jax.jit(lambda x, l, w13, w2: jax_moe.fp4_moe(x, l, w13, w2, **kw, tactic=tactic))
            for _ in range(1 + a.calls):
                out = jax.block_until_ready(f(x, logits, w13, w2))
            print(f"{model} T={T} tactic {name}: ran {1 + a.calls} calls, "
                  f"finite={bool(jnp.isfinite(out.astype(jnp.float32)).all())}", flush=True)


if __name__ == "__main__":
    main()
