"""The hardware floors, measured in the same run as the layer timings:
copy bandwidth (a large device-to-device copy, bytes read + written) and the
bf16 matmul rate (an 8192^3 matmul)."""

from __future__ import annotations

import importlib

import jax
import jax.numpy as jnp

_autotune = importlib.import_module("jax_moe.autotune")


def copy_bandwidth(reps: int = 20, nbytes: int = 4 << 30) -> float:
    """Bytes/s of x + 1 over `nbytes` of fp32 (read + write counted)."""
    x = jnp.ones((nbytes // 4,), jnp.float32)
    t, _ = _autotune.median_time(jax.jit(lambda a: a + 1.0), (x,), reps, warmup=True)
    return 2 * x.nbytes / t


def bf16_matmul_rate(reps: int = 20, n: int = 8192) -> float:
    """FLOP/s of an n^3 bf16 matmul (bf16 out, fp32 accumulation inside the library)."""
    k = jax.random.split(jax.random.key(0), 2)
    a = jax.random.normal(k[0], (n, n), jnp.bfloat16)
    b = jax.random.normal(k[1], (n, n), jnp.bfloat16)
    f = jax.jit(lambda a, b: jnp.dot(a, b))
    t, _ = _autotune.median_time(f, (a, b), reps, warmup=True)
    return 2 * n**3 / t


def floors_us(*, touched_expert_bytes: float, T: int, K: int, H: int, I: int, copy_bw: float,
              matmul_rate: float) -> tuple[float, float]:
    """(memory floor, compute floor) in microseconds (DESIGN.md section 8)."""
    return touched_expert_bytes / copy_bw * 1e6, 2.0 * T * K * 3 * H * I / matmul_rate * 1e6
