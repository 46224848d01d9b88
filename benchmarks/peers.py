"""What a JAX user would run instead of jax_moe: the same layer in bf16 with
`jax.lax.ragged_dot` (sort tokens by expert, two grouped matmuls, unsort and
mix), and jax_moe's own jnp reference."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jax_moe import routing as routing_lib
from jax_moe.activation import gated_activation


def ragged_dot_layer(x, logits, w13_t, w2_t, *, top_k, routing, activation, n_group=0, topk_group=0,
                     routed_scaling_factor=1.0, b13=None, b2=None, **_):
    """bf16 MoE with ragged_dot. w13_t: [E, H, 2I] bf16 (gate;up columns), w2_t: [E, I, H] bf16."""
    T, H = x.shape
    E = w13_t.shape[0]
    ids, w = routing_lib.route(logits, method=routing, top_k=top_k, n_group=n_group, topk_group=topk_group,
                               routed_scaling_factor=routed_scaling_factor)
    flat = ids.reshape(-1)
    order = jnp.argsort(flat, stable=True)
    rows = x[order // top_k]
    sizes = jnp.bincount(flat, length=E).astype(jnp.int32)
    g = jax.lax.ragged_dot(rows, w13_t, sizes, preferred_element_type=jnp.float32)
    if b13 is not None:
        g = g + b13[flat[order]]
    h = gated_activation(g, activation).astype(jnp.bfloat16)
    y = jax.lax.ragged_dot(h, w2_t, sizes, preferred_element_type=jnp.float32)
    if b2 is not None:
        y = y + b2[flat[order]]
    y = jnp.zeros_like(y).at[order].set(y).reshape(T, top_k, H)
    return (w[..., None] * y).sum(1).astype(jnp.bfloat16)


def random_bf16_experts(key, E: int, H: int, I: int):
    """[E, H, 2I] and [E, I, H] bf16 weights ~ N(0, 1/fan_in), made on the device."""
    k1, k2 = jax.random.split(key)
    w13_t = (jax.random.normal(k1, (E, H, 2 * I), jnp.bfloat16) / jnp.sqrt(H)).astype(jnp.bfloat16)
    w2_t = (jax.random.normal(k2, (E, I, H), jnp.bfloat16) / jnp.sqrt(I)).astype(jnp.bfloat16)
    return w13_t, w2_t
