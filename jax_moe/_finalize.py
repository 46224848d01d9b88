"""The finalize stage alone, on the GPU (benchmarks and tests; not public API).

`finalize(y, expanded_to_permuted, weights)` computes
out[t] = sum_k w[t, k] * y[expanded_to_permuted[t*K + k]] (rows < 0 skipped,
fp32 accumulation in k order, bf16 out) with the vectorized or the scalar
CUDA kernel, so each can be timed and checked on its own bytes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jax_moe import _extension

KINDS = {"auto": 0, "vectorized": 1, "scalar": 2}


def finalize(y: jax.Array, expanded_to_permuted: jax.Array, weights: jax.Array, *, kind: str = "auto",
             weight_on_input: bool = False) -> jax.Array:
    """bf16 [T, H] from y bf16 [R, H], int32 [T*K] row map and fp32 [T, K] weights (CUDA only)."""
    if kind not in KINDS:
        raise ValueError(f"kind: expected one of {sorted(KINDS)}, got {kind!r}")
    if y.dtype != jnp.bfloat16 or y.ndim != 2 or y.shape[1] % 8:
        raise ValueError(f"y: expected bf16 [R, H] with H % 8 == 0, got {y.dtype} {y.shape}")
    T, K = weights.shape
    if expanded_to_permuted.shape != (T * K,):
        raise ValueError(f"expanded_to_permuted: expected shape {(T * K,)}, got {expanded_to_permuted.shape}")
    _extension.register_targets()
    call = jax.ffi.ffi_call("jax_moe_finalize", jax.ShapeDtypeStruct((T, y.shape[1]), jnp.bfloat16))
    return call(y, expanded_to_permuted.astype(jnp.int32), weights.astype(jnp.float32),
                kind=np.int64(KINDS[kind]), weight_on_input=bool(weight_on_input))


def finalize_reference(y, expanded_to_permuted, weights, *, weight_on_input: bool = False) -> jax.Array:
    T, K = weights.shape
    rows = expanded_to_permuted.reshape(T, K)
    picked = jnp.where((rows >= 0)[..., None], y[jnp.maximum(rows, 0)].astype(jnp.float32), 0.0)
    w = jnp.ones_like(weights) if weight_on_input else weights
    out = jnp.zeros((T, y.shape[1]), jnp.float32)
    for k in range(K):
        out = out + w[:, k:k + 1] * picked[:, k]
    return out.astype(jnp.bfloat16)
