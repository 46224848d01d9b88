"""The pure-jnp MoE: the test oracle and the portable fallback.

Computes exactly the function `jax_moe.ops` documents, in fp32 from the
dequantized inputs, rounding where the kernels round:
  * hidden states: bf16 (or their MXFP8/NVFP4 dequantized values);
  * h = act(g): rounded to bf16, or quantized to the activation format and
    dequantized (MXFP8, or NVFP4 with `h_global_scale`), before GEMM2;
  * y = h @ W2^T + b2: rounded to bf16 before the weighted sum;
  * out = sum_k w * y in fp32, rounded to bf16.

Expert weights are dequantized per (token, k) pair inside a batched
`lax.map`, so memory stays at a few experts' worth of fp32 weights whatever
the model size. Differentiable (it is plain jnp), unlike the FFI op.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from jax_moe import formats, routing as routing_lib
from jax_moe.activation import GPT_OSS_ALPHA, GPT_OSS_BETA, GPT_OSS_LIMIT, Activation, gated_activation
from jax_moe.formats import Format, QTensor

_HIGHEST = jax.lax.Precision.HIGHEST


def dequantize_activations(hidden_states: Any) -> jax.Array:
    """fp32 values the kernels see: bf16-rounded floats, or dequantized QTensor."""
    if isinstance(hidden_states, QTensor):
        return formats.dequantize(hidden_states)
    return jnp.asarray(hidden_states).astype(jnp.bfloat16).astype(jnp.float32)


def round_h(h: jax.Array, act_format: Format, h_global_scale: Any = None) -> jax.Array:
    """h as GEMM2 reads it: bf16, or a quantize -> dequantize round trip."""
    if act_format == Format.MXFP8:
        return formats.dequantize(formats.quantize_mxfp8(h))
    if act_format == Format.NVFP4:
        g = jnp.asarray(1.0 if h_global_scale is None else h_global_scale, jnp.float32)
        return formats.dequantize(formats.quantize_nvfp4(h, g))
    return h.astype(jnp.bfloat16).astype(jnp.float32)


def _expert_slice(w: QTensor, e: jax.Array) -> QTensor:
    """Expert e of stacked weights, as a rank-2 QTensor."""
    g = w.global_scale
    if g is not None and g.ndim == 1:
        g = g[e]
    return QTensor(w.data[e], w.scale[e], g, w.fmt, w.layout)


def expert_rows(x: jax.Array, ids: jax.Array, weights: jax.Array, w13: QTensor, w2: QTensor, *,
                activation: Activation, swiglu_alpha: float, swiglu_beta: float, swiglu_limit: float,
                b13: Any, b2: Any, local_expert_offset: int, routing_weight_on_input: bool,
                act_format: Format, h_global_scale: Any, pairs_per_step: int = 8) -> jax.Array:
    """y[t, k] (bf16-rounded fp32, zero for non-local experts) for every pair.

    Args:
      x: fp32 [T, H] dequantized activations.
      ids, weights: [T, K] routing result (global ids, fp32 weights).
    Returns:
      fp32 [T, K, H].
    """
    T, K = ids.shape
    E_local = w13.shape[0]
    local = ids.astype(jnp.int32) - local_expert_offset
    valid = (local >= 0) & (local < E_local)
    e_all = jnp.where(valid, local, 0).reshape(-1)
    tok_all = jnp.repeat(jnp.arange(T), K)
    w_all = weights.reshape(-1).astype(jnp.float32)

    def pair(args):
        e, t, rw = args
        w13_e = formats.dequantize(_expert_slice(w13, e))  # [2I, H]
        g = jnp.dot(w13_e, x[t], precision=_HIGHEST)
        if routing_weight_on_input:
            g = g * rw
        if b13 is not None:
            g = g + b13[e]
        h = gated_activation(g, activation, alpha=swiglu_alpha, beta=swiglu_beta, limit=swiglu_limit)
        h = round_h(h[None], act_format, h_global_scale)[0]
        y = jnp.dot(formats.dequantize(_expert_slice(w2, e)), h, precision=_HIGHEST)
        if b2 is not None:
            y = y + b2[e]
        return y.astype(jnp.bfloat16).astype(jnp.float32)

    y = jax.lax.map(pair, (e_all, tok_all, w_all), batch_size=pairs_per_step)
    return jnp.where(valid.reshape(-1, 1), y, 0.0).reshape(T, K, -1)


def finalize(y: jax.Array, weights: jax.Array, routing_weight_on_input: bool) -> jax.Array:
    """out[t] = bf16(sum_k w[t,k] * y[t,k]) with fp32 accumulation in k order."""
    w = jnp.ones_like(weights) if routing_weight_on_input else weights.astype(jnp.float32)
    acc = jnp.zeros(y.shape[:1] + y.shape[2:], jnp.float32)
    for k in range(y.shape[1]):
        acc = acc + w[:, k, None] * y[:, k]
    return acc.astype(jnp.bfloat16)


def _run(hidden_states, ids, weights, w13, w2, *, activation, swiglu_alpha, swiglu_beta,
         swiglu_limit, b13, b2, local_expert_offset, routing_weight_on_input, h_global_scale,
         do_finalize, leading):
    x = dequantize_activations(hidden_states)
    H = x.shape[-1]
    x = x.reshape(-1, H)
    act_format = hidden_states.fmt if isinstance(hidden_states, QTensor) else Format.BF16
    y = expert_rows(x, ids, weights, w13, w2, activation=Activation.parse(activation),
                    swiglu_alpha=swiglu_alpha, swiglu_beta=swiglu_beta, swiglu_limit=swiglu_limit,
                    b13=b13, b2=b2, local_expert_offset=local_expert_offset,
                    routing_weight_on_input=routing_weight_on_input, act_format=act_format,
                    h_global_scale=h_global_scale)
    K = ids.shape[-1]
    if do_finalize:
        return finalize(y, weights, routing_weight_on_input).reshape(leading + (H,))
    return (y.astype(jnp.bfloat16).reshape(leading + (K, H)),
            weights.astype(jnp.float32).reshape(leading + (K,)),
            ids.astype(jnp.int32).reshape(leading + (K,)))


def moe_reference(hidden_states, router_logits, w13: QTensor, w2: QTensor, *, top_k: int,
                  routing: Any = routing_lib.RoutingMethod.RENORMALIZE, n_group: int = 0,
                  topk_group: int = 0, routed_scaling_factor: float = 1.0, routing_bias=None,
                  activation: Any = Activation.SWIGLU, swiglu_alpha: float = GPT_OSS_ALPHA,
                  swiglu_beta: float = GPT_OSS_BETA, swiglu_limit: float = GPT_OSS_LIMIT,
                  b13=None, b2=None, local_expert_offset: int = 0,
                  routing_weight_on_input: bool | None = None, h_global_scale=None,
                  do_finalize: bool = True, tactic: Any = None, gemm2_tactic: Any = None):
    """Pure-jnp `jax_moe.fp4_moe` (same arguments; the tactics are ignored)."""
    del tactic, gemm2_tactic
    method = routing_lib.RoutingMethod.parse(routing)
    leading = tuple(router_logits.shape[:-1])
    logits = jnp.asarray(router_logits, jnp.float32).reshape(math.prod(leading), -1)
    ids, weights = routing_lib.route(logits, method=method, top_k=top_k, n_group=n_group,
                                     topk_group=topk_group,
                                     routed_scaling_factor=routed_scaling_factor, bias=routing_bias)
    if routing_weight_on_input is None:
        routing_weight_on_input = method == routing_lib.RoutingMethod.LLAMA4
    return _run(hidden_states, ids, weights, w13, w2, activation=activation,
                swiglu_alpha=swiglu_alpha, swiglu_beta=swiglu_beta, swiglu_limit=swiglu_limit,
                b13=b13, b2=b2, local_expert_offset=local_expert_offset,
                routing_weight_on_input=routing_weight_on_input, h_global_scale=h_global_scale,
                do_finalize=do_finalize, leading=leading)


def moe_reference_routed(hidden_states, topk_ids, topk_weights, w13: QTensor, w2: QTensor, *,
                         num_experts: int | None = None, activation: Any = Activation.SWIGLU,
                         swiglu_alpha: float = GPT_OSS_ALPHA, swiglu_beta: float = GPT_OSS_BETA,
                         swiglu_limit: float = GPT_OSS_LIMIT, b13=None, b2=None,
                         local_expert_offset: int = 0, routing_weight_on_input: bool = False,
                         h_global_scale=None, do_finalize: bool = True, tactic: Any = None,
                         gemm2_tactic: Any = None):
    """Pure-jnp `jax_moe.fp4_moe_routed` (same arguments; the tactics are ignored)."""
    del tactic, gemm2_tactic, num_experts
    leading = tuple(topk_ids.shape[:-1])
    K = topk_ids.shape[-1]
    ids = jnp.asarray(topk_ids, jnp.int32).reshape(-1, K)
    weights = jnp.asarray(topk_weights, jnp.float32).reshape(-1, K)
    return _run(hidden_states, ids, weights, w13, w2, activation=activation,
                swiglu_alpha=swiglu_alpha, swiglu_beta=swiglu_beta, swiglu_limit=swiglu_limit,
                b13=b13, b2=b2, local_expert_offset=local_expert_offset,
                routing_weight_on_input=routing_weight_on_input, h_global_scale=h_global_scale,
                do_finalize=do_finalize, leading=leading)
