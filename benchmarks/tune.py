"""Tuned vs default tactic per token bucket (issue "Autotuner", GPU evidence).

  python3 benchmarks/tune.py --models gpt-oss-120b,deepseek-v3 --out benchmarks/results/autotune

For each model shape: `jax_moe.tune` over every bucket up to --max-tokens,
timing the default and the pruned candidates of `tactics.tuning_candidates`
(every valid tactic with --exhaustive); prints and saves per bucket the
default time, the tuned time, the gain and how many tactics were timed, plus
the wall time of tuning the whole layer configuration (target: < 60 s for
gpt-oss-120b on an H100).
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import sys
import time

import jax

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import jax_moe  # noqa: E402
from benchmarks import run_info  # noqa: E402
from jax_moe.models import MODELS
from jax_moe.formats import Format

autotune = importlib.import_module("jax_moe.autotune")  # the module; jax_moe.autotune is the context manager


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="gpt-oss-120b,deepseek-v3")
    ap.add_argument("--weights", default="nvfp4")
    ap.add_argument("--max-tokens", type=int, default=16384)
    ap.add_argument("--out", default="benchmarks/results/autotune")
    ap.add_argument("--exhaustive", action="store_true", help="time every valid tactic per bucket")
    a = ap.parse_args()
    commit = run_info.commit()
    result = dict(device=jax.devices()[0].device_kind, date=datetime.date.today().isoformat(),
                  commit=commit, jax=jax.__version__, models={})
    for name in a.models.split(","):
        m = MODELS[name]
        problem = jax_moe.MoEProblem(1, m.hidden_size, m.intermediate_size, m.num_experts, m.num_experts,
                                     m.top_k, weight_format=Format[a.weights.upper()],
                                     routing_method=m.routing, n_group=m.n_group, topk_group=m.topk_group,
                                     activation=m.activation, has_b13=m.biases, has_b2=m.biases)
        t0 = time.perf_counter()
        rows = jax_moe.tune(problem, buckets=autotune.all_buckets(a.max_tokens),
                            routed_scaling_factor=m.routed_scaling_factor, exhaustive=a.exhaustive)
        seconds = time.perf_counter() - t0
        result["models"][name] = dict(tuning_s=seconds, exhaustive=a.exhaustive, rows=rows)
        print(f"{name}: tuned {len(rows)} buckets in {seconds:.1f} s")
        for r in rows:
            print(f"  T<={r['bucket']:6d} default {r['default_time_us']:9.1f} us  tuned {r['time_us']:9.1f} us "
                  f"x{r['gain']:.2f}  {r['name']}  ({len(r['times_us'])} timed)")
    with open(a.out + ".json", "w") as f:
        json.dump(result, f, indent=1)
    with open(a.out + ".md", "w") as f:
        f.write(f"# Tuned vs default tactic ({result['device']}, {result['date']}, commit {commit[:9]})\n\n")
        for name, d in result["models"].items():
            which = "every valid tactic" if d["exhaustive"] else "pruned candidates"
            f.write(f"## {name} ({a.weights}, bf16 activations, {which}): tuning took {d['tuning_s']:.1f} s\n\n")
            f.write("| bucket | default (us) | tuned (us) | gain | tuned tactic | tactics timed |\n"
                    "|---|---|---|---|---|---|\n")
            for r in d["rows"]:
                f.write(f"| {r['bucket']} | {r['default_time_us']:.1f} | {r['time_us']:.1f} | "
                        f"{r['gain']:.2f} | {r['name']} | {len(r['times_us'])} |\n")
            f.write("\n")


if __name__ == "__main__":
    main()
