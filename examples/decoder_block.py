"""A small decoder block (attention stub + FP4 MoE) with jax_moe.nn.MoE, run end
to end under nnx.jit with the fused op ("ffi") and with the pure-jnp reference
backend, checking they agree and timing both.

  python examples/decoder_block.py                 # small shapes (CPU-friendly)
  python examples/decoder_block.py --model qwen3   # Qwen3-30B-A3B MoE shape (use a GPU)

On a GPU the "ffi" backend runs the CUDA handler; the speedup printed at the
end is the point of the library.
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jax_moe import nn

SHAPES = {  # E, K, H, I
    "small": (16, 2, 256, 128),
    "qwen3": (128, 8, 2048, 768),
}


class DecoderBlock(nnx.Module):
    """RMSNorm -> (stub) attention -> residual -> RMSNorm -> MoE -> residual."""

    def __init__(self, E, K, H, I, *, backend, rngs):
        self.norm1 = nnx.RMSNorm(H, rngs=rngs)
        self.attn = nnx.Linear(H, H, use_bias=False, dtype=jnp.bfloat16, rngs=rngs)  # attention stub
        self.norm2 = nnx.RMSNorm(H, rngs=rngs)
        self.moe = nn.MoE(num_experts=E, top_k=K, hidden_size=H, intermediate_size=I,
                          backend=backend, rngs=rngs)

    def __call__(self, x):
        x = x + self.attn(self.norm1(x)).astype(x.dtype)
        return x + self.moe(self.norm2(x).astype(jnp.bfloat16)).astype(x.dtype)


def timed(fn, *args, reps=10):
    jax.block_until_ready(fn(*args))
    t = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        t.append(time.perf_counter() - t0)
    return float(np.median(t))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="small", choices=sorted(SHAPES))
    ap.add_argument("--tokens", type=int, default=64)
    a = ap.parse_args()
    E, K, H, I = SHAPES[a.model]
    fused = DecoderBlock(E, K, H, I, backend="ffi", rngs=nnx.Rngs(0))
    ref = DecoderBlock(E, K, H, I, backend="reference", rngs=nnx.Rngs(0))  # same weights (same seed)
    x = jax.random.normal(jax.random.key(1), (a.tokens, H), jnp.float32)
    step = nnx.jit(lambda m, x: m(x))
    y, y_ref = step(fused, x), step(ref, x)
    err = float(jnp.linalg.norm(y - y_ref) / jnp.linalg.norm(y_ref))
    t_fused, t_ref = timed(step, fused, x), timed(step, ref, x)
    print(f"{jax.devices()[0].device_kind}: T={a.tokens} E={E} K={K} H={H} I={I}")
    print(f"  relative difference fused vs reference: {err:.2e}")
    print(f"  fused (jax_moe.fp4_moe): {t_fused * 1e3:8.3f} ms")
    print(f"  reference (pure jnp):    {t_ref * 1e3:8.3f} ms   speedup x{t_ref / t_fused:.1f}")


if __name__ == "__main__":
    main()
