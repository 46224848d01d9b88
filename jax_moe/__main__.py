"""`python -m jax_moe`: run one MoE layer of a real model shape and check it.

Runs `fp4_moe` inside `jax.jit` on the best backend present (the GPU when the
CUDA handlers are built and a GPU is visible, else the CPU handler at a
reduced token count), compares it with `jax_moe.reference`, and prints the
relative error, the median time and the tactic used.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from jax_moe import _extension, formats, reference, tactics
from jax_moe.formats import Format
from jax_moe.models import MODELS
from jax_moe.ops import fp4_moe


def _parse(argv):
    p = argparse.ArgumentParser(prog="python -m jax_moe", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="gpt-oss-120b", choices=sorted(MODELS))
    p.add_argument("--tokens", type=int, default=None,
                   help="token count (default: 256 on GPU, 4 on CPU)")
    p.add_argument("--weights", default=None, choices=["nvfp4", "mxfp4"],
                   help="weight format (default: mxfp4 for gpt-oss, else nvfp4)")
    p.add_argument("--experts", type=int, default=None,
                   help="override the expert count (the CPU default keeps every expert)")
    p.add_argument("--repeats", type=int, default=5)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = _parse(argv)
    model = MODELS[args.model]
    on_gpu = tactics.current_platform() == "cuda" and _extension.has_cuda()
    if tactics.current_platform() == "cuda" and not on_gpu:
        print("jax_moe: a GPU is visible but this build has no CUDA handlers; running on the CPU.")
    device = jax.devices("gpu" if on_gpu else "cpu")[0]
    T = args.tokens or (256 if on_gpu else 4)
    E = args.experts or model.num_experts
    H, I = model.hidden_size, model.intermediate_size
    wfmt = Format.parse(args.weights or ("mxfp4" if "gpt-oss" in model.name else "nvfp4"))
    print(f"jax_moe: {model.name} layer (E={E}, K={model.top_k}, H={H}, I={I}), T={T}, "
          f"{wfmt.name} weights, bf16 activations, on {device.device_kind}")

    with jax.default_device(device):
        k = jax.random.split(jax.random.key(0), 6)
        quant = (lambda w: formats.quantize_nvfp4(w)) if wfmt == Format.NVFP4 \
            else formats.quantize_mxfp4

        def experts(key, rows, cols):
            # One expert at a time keeps the fp32 staging to one expert's weights.
            one = lambda e: quant(jax.random.normal(jax.random.fold_in(key, e), (rows, cols),
                                                    jnp.float32) / np.sqrt(cols))
            return jax.jit(lambda: jax.lax.map(one, jnp.arange(E)))()

        w13, w2 = experts(k[0], 2 * I, H), experts(k[1], H, I)
        x = jax.random.normal(k[2], (T, H), jnp.bfloat16)
        logits = jax.random.normal(k[3], (T, E), jnp.float32)
        kw = model.routing_kwargs()
        if model.biases:
            kw.update(b13=0.1 * jax.random.normal(k[4], (E, 2 * I)),
                      b2=0.1 * jax.random.normal(k[5], (E, H)))
        layer = jax.jit(lambda x, l, a, b: fp4_moe(x, l, a, b, **kw))
        out = layer(x, logits, w13, w2).block_until_ready()
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            layer(x, logits, w13, w2).block_until_ready()
            times.append(time.perf_counter() - t0)
        hlo = layer.lower(x, logits, w13, w2).as_text()
        problem_tactic = int(hlo.split("tactic = ")[1].split(" ")[0].rstrip(":,}")) if "tactic = " in hlo else None
        ref = jax.jit(lambda x, l, a, b: reference.moe_reference(x, l, a, b, **kw))(x, logits, w13, w2)
    o = np.asarray(out, np.float64)
    r = np.asarray(ref, np.float64)
    err = float(np.linalg.norm(o - r) / np.linalg.norm(r))
    name = tactics.tactic_table()[problem_tactic].name if problem_tactic is not None else "?"
    print(f"  relative L2 error vs jax_moe.reference: {err:.2e}  (finite: {bool(np.isfinite(o).all())})")
    print(f"  median time: {statistics.median(times) * 1e3:.3f} ms over {args.repeats} runs "
          f"(wall clock, {'GPU' if on_gpu else 'CPU handler: correctness path, not tuned'})")
    print(f"  tactic: {problem_tactic} ({name})")
    ok = err < 1e-2 and np.isfinite(o).all()
    print("  OK" if ok else "  MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
