"""The MoE layer benchmark of DESIGN.md section 8: jax_moe vs its peers and the
H100's floors, all measured in one run.

  python3 -m benchmarks.moe --models gpt-oss-120b --tokens 1,8,64,512,4096,16384 \\
      --weights nvfp4,mxfp4 --acts bf16 [--tune] [--peers ragged_dot,reference]

Per (model, T, weights, acts): median time of `fp4_moe` (default tactic, and the
tuned one with --tune) inside one jitted executable that runs the layer on
`copies` weight copies in turn (so the touched experts are not L2-resident);
memory floor = bytes of the experts actually touched / copy bandwidth; compute
floor = 2*T*K*3*H*I / bf16 matmul rate; the same layer in bf16 with
`jax.lax.ragged_dot`; the jnp reference (T <= --reference-max-tokens).
Writes <out>.json / <out>.md (schema: DESIGN.md section 8) and <out>.png when
matplotlib is installed.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import math
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import jax_moe  # noqa: E402
from benchmarks import peers, report, roofline, run_info  # noqa: E402
from jax_moe import formats, reference, tactics  # noqa: E402
from jax_moe.formats import Format  # noqa: E402
from jax_moe.models import MODELS  # noqa: E402
from moe_cases import random_expert_weights  # noqa: E402

_autotune = importlib.import_module("jax_moe.autotune")


def median_time(fn, args, reps: int) -> tuple[float, float]:
    """(median, IQR) seconds of fn(*args) after a warm-up (the autotuner's timer)."""
    return _autotune.median_time(fn, args, reps, warmup=True)


def net_time(fn, args, reps: int) -> float:
    """Median seconds of fn(*args) less the fixed cost of invoking an executable
    with the same arguments that does nothing (dispatch, argument handling,
    sync): device time, for single-call executables (peers, finalize)."""
    empty = jax.jit(lambda *a: jnp.zeros((), jnp.float32), keep_unused=True)
    return max(median_time(fn, args, reps)[0] - median_time(empty, args, reps)[0], 0.0)


def layer_kwargs(m) -> dict:
    """The model's routing arguments, plus constant expert biases when it has them."""
    kw = m.routing_kwargs()
    if m.biases:
        kw["b13"] = 0.1 * jnp.ones((m.num_experts, 2 * m.intermediate_size), jnp.float32)
        kw["b2"] = 0.1 * jnp.ones((m.num_experts, m.hidden_size), jnp.float32)
    return kw


def expert_bytes(w) -> int:
    return int(w.data[0].nbytes + w.scale[0].nbytes)


def _hidden(x, acts: str):
    if acts == "mxfp8":
        return formats.quantize_mxfp8(x.astype(jnp.float32))
    if acts == "nvfp4":
        return formats.quantize_nvfp4(x.astype(jnp.float32))
    return x


def call_plan(copies: int, rounds: int) -> list[tuple[int, int]]:
    """(input index, weight copy) of each layer call in one timed executable:
    `rounds` passes over the `copies` weight copies (so consecutive calls never
    find their experts in L2), every call on its own input rows (so XLA cannot
    merge two calls with equal operands into one)."""
    return [(r * copies + c, c) for r in range(rounds) for c in range(copies)]


def rounds_for(T: int, decode_rounds: int) -> int:
    """Passes over the weight copies per timed executable: decode-sized calls
    (T <= 64, tens of us) are repeated so the fixed cost of invoking the
    executable (115-160 us, subtracted) is spread over many calls; larger T
    run one pass."""
    return max(1, decode_rounds) if T <= 64 else 1


# The bf16 ragged_dot peer does not depend on the FP4 weight format: timed
# once per (model, T) and reused by the other formats' rows of the same run.
_RAGGED_DOT_US: dict[tuple[str, int], float] = {}


def bench_model(name: str, tokens: list[int], wfmt: Format, acts: str, a, floors: dict) -> list[dict]:
    m = MODELS[name]
    E, K, H, I = m.num_experts, m.top_k, m.hidden_size, m.intermediate_size
    key = jax.random.key(0)
    per_expert = (expert_bytes(random_expert_weights(key, 1, 2 * I, H, wfmt))
                  + expert_bytes(random_expert_weights(key, 1, H, I, wfmt)))
    copies = int(min(8, max(1, math.ceil(2e9 / (per_expert * E)))))
    ws = [(random_expert_weights(jax.random.fold_in(key, 2 * c), E, 2 * I, H, wfmt),
           random_expert_weights(jax.random.fold_in(key, 2 * c + 1), E, H, I, wfmt)) for c in range(copies)]
    kw = layer_kwargs(m)
    if acts == "nvfp4":
        kw["h_global_scale"] = jnp.float32(448.0 * 6.0 / 8.0)
    problem = jax_moe.MoEProblem(1, H, I, E, E, K, weight_format=wfmt, act_format=Format[acts.upper()],
                                 routing_method=m.routing, n_group=m.n_group, topk_group=m.topk_group,
                                 activation=m.activation, has_b13=m.biases, has_b2=m.biases)
    bf16_w = None  # made on first use (DeepSeek-V3's are 22 GB), not at all when every T is cached
    rows = []
    for T in tokens:
        plan = call_plan(copies, rounds_for(T, a.decode_rounds))
        x = jax.random.normal(jax.random.fold_in(key, 1000 + T), (len(plan), T, H), jnp.bfloat16)
        logits = 2.0 * jax.random.normal(jax.random.fold_in(key, 2000 + T), (len(plan), T, E), jnp.float32)

        def layer_fn(tactic, calls=True):
            # calls=False: the same arguments and output, no layer: the fixed
            # cost of one invocation (dispatch, argument handling, sync), which
            # is subtracted so the rows are device time per layer call.
            def layer(x, logits, ws):
                acc = jnp.zeros((T, H), jnp.float32)
                for i, c in (plan if calls else []):
                    out = jax_moe.fp4_moe(_hidden(x[i], acts), logits[i], ws[c][0], ws[c][1], **kw, tactic=tactic)
                    acc = acc + out.astype(jnp.float32)
                return acc
            return jax.jit(layer, keep_unused=True)

        p = problem.with_tokens(T)
        default = tactics.default_tactic(p, tactics.current_platform())
        overhead = median_time(layer_fn(None, calls=False), (x, logits, ws), a.reps)[0]
        per_call = lambda t: max(t - overhead, 0.0) / len(plan)
        t_default, iqr = median_time(layer_fn(default), (x, logits, ws), a.reps)
        t_default = per_call(t_default)
        tuned, t_tuned = default, t_default
        if a.tune:
            choice = jax_moe.tune(p, buckets=[jax_moe.bucket_of(T)],
                                  routed_scaling_factor=m.routed_scaling_factor)[0]
            if choice["tactic"] != default:
                tuned = choice["tactic"]
                t_tuned = per_call(median_time(layer_fn(tuned), (x, logits, ws), a.reps)[0])
        # --tactics: named tactics timed side by side (e.g. an experimental
        # family the default and the tuner do not pick yet).
        forced = {}
        for tname in filter(None, a.tactics.split(",")):
            tid = tactics.tactic_id(tname)
            reason = tactics.invalid_reason(p, tid, tactics.current_platform())
            if reason:
                raise SystemExit(f"--tactics: {tname!r} cannot run here: {reason}")
            forced[tname] = per_call(median_time(layer_fn(tid), (x, logits, ws), a.reps)[0]) * 1e6
        # Arrays go in as arguments: a closed-over array becomes an HLO constant
        # (gigabytes of weights in the executable: the host runs out of memory).
        ids = np.asarray(jax.jit(lambda x, l, w: jax_moe.fp4_moe(_hidden(x, acts), l, w[0], w[1], **kw,
                                                                    do_finalize=False)[2])(x[0], logits[0], ws[0]))
        touched = float(len(np.unique(ids)))
        mem_floor, compute_floor = roofline.floors_us(touched_expert_bytes=touched * per_expert, T=T, K=K, H=H,
                                                      I=I, copy_bw=floors["copy_bw"],
                                                      matmul_rate=floors["matmul_rate"])
        row = dict(model=name, T=T, weights=wfmt.name.lower(), acts=acts, time_us=t_tuned * 1e6,
                   tactic=tactics.tactic_table()[tuned].name, default_time_us=t_default * 1e6,
                   default_tactic=tactics.tactic_table()[default].name, iqr_us=iqr / len(plan) * 1e6,
                   mem_floor_us=mem_floor, compute_floor_us=compute_floor, experts_touched=touched,
                   copies=copies, calls=len(plan), overhead_us=overhead * 1e6, ragged_dot_bf16_us=None,
                   reference_us=None,
                   tactics_us=forced)
        if "ragged_dot" in a.peers and acts == "bf16" and (name, T) in _RAGGED_DOT_US:
            row["ragged_dot_bf16_us"] = _RAGGED_DOT_US[(name, T)]  # same inputs: bf16 weights, same x/logits
        elif "ragged_dot" in a.peers and acts == "bf16":
            if bf16_w is None:
                bf16_w = peers.random_bf16_experts(jax.random.fold_in(key, 99), E, H, I)
            rd_kw = {k: v for k, v in kw.items() if k != "h_global_scale"}
            f = jax.jit(lambda x, l, a, b: peers.ragged_dot_layer(x, l, a, b, **rd_kw))
            try:
                row["ragged_dot_bf16_us"] = _RAGGED_DOT_US[(name, T)] = net_time(f, (x[0], logits[0], *bf16_w),
                                                                                  a.reps) * 1e6
            except Exception as exc:
                row["ragged_dot_error"] = str(exc).splitlines()[0][:200]
        if "reference" in a.peers and T <= a.reference_max_tokens:
            f = jax.jit(lambda x, l, w13, w2: reference.moe_reference(_hidden(x, acts), l, w13, w2, **kw))
            row["reference_us"] = net_time(f, (x[0], logits[0], *ws[0]), max(3, a.reps // 4)) * 1e6
        rows.append(row)
        print(f"{name:14s} {row['weights']}/{acts} T={T:6d} {row['time_us']:10.1f} us ({row['tactic']}) "
              f"default {row['default_time_us']:10.1f}  mem floor {mem_floor:8.1f}  compute floor "
              f"{compute_floor:8.1f}  ragged_dot {row['ragged_dot_bf16_us'] or float('nan'):10.1f}  "
              f"reference {row['reference_us'] or float('nan'):10.1f}"
              + "".join(f"  {n} {us:10.1f}" for n, us in forced.items()), flush=True)
    return rows


def bench_finalize(a, copy_bw: float) -> list[dict]:
    """The finalize kernels alone (vectorized vs scalar) on their own bytes.

    One executable runs the kernel on `copies` independent inputs (more bytes
    than the L2 holds), returning every output; the fixed cost of invoking an
    executable with the same arguments and no kernel is subtracted and the
    rest divided by `copies` (a single ~30 us call is within the dispatch
    noise of a lone executable)."""
    from jax_moe import _finalize

    rows = []
    for H, K in ((7168, 8), (2880, 4)):
        for T in (256, 512, 4096):
            nbytes = (T * K * H + T * H) * 2 + T * K * 8
            copies = int(min(16, max(2, math.ceil(256e6 / nbytes))))
            k = jax.random.split(jax.random.key(T + H), 3)
            y = jax.random.normal(k[0], (copies, T * K, H), jnp.bfloat16)
            e2p = jnp.stack([jax.random.permutation(jax.random.fold_in(k[1], c), T * K)
                             for c in range(copies)]).astype(jnp.int32)
            w = jax.random.uniform(k[2], (copies, T, K), jnp.float32)
            row = dict(T=T, H=H, K=K, bytes=nbytes, copies=copies)
            empty = jax.jit(lambda y, e, w: jnp.zeros((), jnp.float32), keep_unused=True)
            overhead = median_time(empty, (y, e2p, w), a.reps)[0]
            for kind, field in (("vectorized", "vec_us"), ("scalar", "scalar_us")):
                f = jax.jit(lambda y, e, w, kind=kind: tuple(_finalize.finalize(y[c], e[c], w[c], kind=kind)
                                                             for c in range(copies)))
                t = median_time(f, (y, e2p, w), a.reps)[0]
                row[field] = max(t - overhead, 1e-9) / copies * 1e6
            row["vec_fraction_of_copy_bw"] = nbytes / (row["vec_us"] * 1e-6) / copy_bw
            row["vec_speedup_vs_scalar"] = row["scalar_us"] / row["vec_us"]
            rows.append(row)
            print(f"finalize T={T} H={H} K={K}: vectorized {row['vec_us']:.1f} us "
                  f"({row['vec_fraction_of_copy_bw']:.0%} of copy BW), scalar {row['scalar_us']:.1f} us", flush=True)
    return rows


def write_results(a, result: dict) -> None:
    with open(a.out + ".json", "w") as f:
        json.dump(result, f, indent=1)
    with open(a.out + ".md", "w") as f:
        f.write(f"# fp4_moe vs floors and peers ({result['device']}, {result['date']}, commit "
                f"{result['commit'][:9]}, jax {result['jax']})\n\n")
        f.write(f"Copy bandwidth {result['copy_bw_GBs']:.0f} GB/s, bf16 matmul {result['bf16_matmul_TFLOPs']:.0f} "
                f"TFLOP/s (measured in this run). Medians of {a.reps} runs.\n\n")
        f.write("| model | T | weights | acts | time (us) | tactic | default (us) | mem floor (us) | compute floor (us) "
                "| time / max floor | ragged_dot bf16 (us) | reference (us) |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n")
        fmt = lambda v: "-" if v is None else f"{v:.1f}"
        for r in result["rows"]:
            ratio = r["time_us"] / max(r["mem_floor_us"], r["compute_floor_us"])
            f.write(f"| {r['model']} | {r['T']} | {r['weights']} | {r['acts']} | {r['time_us']:.1f} | {r['tactic']} | "
                    f"{r['default_time_us']:.1f} | {r['mem_floor_us']:.1f} | {r['compute_floor_us']:.1f} | "
                    f"{ratio:.2f} | {fmt(r['ragged_dot_bf16_us'])} | {fmt(r['reference_us'])} |\n")
        forced_rows = [r for r in result["rows"] if r.get("tactics_us")]
        if forced_rows:
            f.write("\n| model | T | weights | acts | tactic (--tactics) | time (us) | vs default |\n"
                    "|---|---|---|---|---|---|---|\n")
            for r in forced_rows:
                for n, us in r["tactics_us"].items():
                    f.write(f"| {r['model']} | {r['T']} | {r['weights']} | {r['acts']} | {n} | {us:.1f} | "
                            f"{r['default_time_us'] / us:.2f}x |\n")
        f.write(report.finalize_table_md(result["finalize"]))
        if result.get("gpu_tests"):
            f.write(f"\nGPU tests (`pytest -m gpu`, same machine): {result['gpu_tests']}\n")
    report.plot_time_vs_tokens(result["rows"], a.out + ".png")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(sorted(MODELS)))
    ap.add_argument("--tokens", default="1,8,64,512,4096,16384")
    ap.add_argument("--weights", default="nvfp4")
    ap.add_argument("--acts", default="bf16")
    ap.add_argument("--peers", default="ragged_dot,reference")
    ap.add_argument("--reference-max-tokens", type=int, default=64)
    ap.add_argument("--tune", action="store_true", help="tune each bucket and time the tuned tactic too")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--decode-rounds", type=int, default=8,
                    help="passes over the weight copies per timed executable at T <= 64 (1: one pass, as "
                         "before 2026-12-03)")
    ap.add_argument("--tactics", default="", help="comma-separated tactic names also timed per row "
                                                  "(e.g. cuda_wgmma_t64,cuda_wgmma_t128)")
    ap.add_argument("--out", default="benchmarks/results/latest")
    ap.add_argument("--gpu-tests", default=None, help="pytest summary line of the GPU suite to record")
    ap.add_argument("--no-finalize", action="store_true", help="skip the finalize kernel benchmark (GPU only)")
    a = ap.parse_args()
    a.peers = set(filter(None, a.peers.split(",")))
    floors = dict(copy_bw=roofline.copy_bandwidth(a.reps), matmul_rate=roofline.bf16_matmul_rate(a.reps))
    print(f"copy bandwidth {floors['copy_bw'] / 1e9:.0f} GB/s, bf16 matmul {floors['matmul_rate'] / 1e12:.0f} TFLOP/s",
          flush=True)
    commit = run_info.commit()
    result = dict(device=jax.devices()[0].device_kind, date=datetime.date.today().isoformat(), commit=commit,
                  jax=jax.__version__, copy_bw_GBs=floors["copy_bw"] / 1e9,
                  bf16_matmul_TFLOPs=floors["matmul_rate"] / 1e12, rows=[], finalize=[], tuning_s={},
                  gpu_tests=a.gpu_tests)
    if not a.no_finalize and jax.default_backend() == "gpu":
        result["finalize"] = bench_finalize(a, floors["copy_bw"])
        write_results(a, result)  # also when no model rows follow (--models '')
    for name in filter(None, a.models.split(",")):  # --models '': the finalize rows alone
        for w in a.weights.split(","):
            for acts in a.acts.split(","):
                result["rows"] += bench_model(name, [int(t) for t in a.tokens.split(",")], Format[w.upper()],
                                              acts, a, floors)
                write_results(a, result)  # after each group: a later crash keeps what was measured


if __name__ == "__main__":
    main()
