"""Random MoE problems for tests: fresh keys, realistic magnitudes, never zeros.

Shared by the CPU handler tests and (later) the GPU tests so both check the
same cases against `jax_moe.reference`.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jax_moe import formats
from jax_moe.activation import Activation
from jax_moe.formats import Format
from jax_moe.routing import RoutingMethod

_counter = itertools.count()


def fresh_key() -> jax.Array:
    """A new key per call: every test case sees different data."""
    return jax.random.key(np.random.SeedSequence().entropy % (2**31) + next(_counter))


@dataclasses.dataclass
class Case:
    hidden: Any
    logits: jax.Array
    w13: formats.QTensor
    w2: formats.QTensor
    kwargs: dict


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4))
def random_expert_weights(key, E: int, N: int, K: int, fmt: Format) -> formats.QTensor:
    """[E, N, K] weights ~ N(0, 1/K), quantized one expert at a time (NVFP4 with a
    per-expert global scale), so model-sized stacks (DeepSeek-V3: 256 experts of
    4096 x 7168) never exist in fp32 all at once."""
    quant = {Format.NVFP4: formats.quantize_nvfp4, Format.MXFP4: formats.quantize_mxfp4}[fmt]
    one = lambda k: quant(jax.random.normal(k, (N, K), jnp.float32) / np.sqrt(K))
    return jax.lax.map(one, jax.random.split(key, E))


def routing_kwargs(method: RoutingMethod, E: int, top_k: int, key) -> dict:
    """Static routing arguments that are valid for `method` (and a bias for DeepSeek)."""
    kw: dict = {"routing": method, "top_k": 1 if method == RoutingMethod.LLAMA4 else top_k}
    if method == RoutingMethod.DEEPSEEK_V3:
        groups = 4 if E % 4 == 0 else 1
        kw.update(n_group=groups, topk_group=2 if groups > 1 else 0, routed_scaling_factor=2.5,
                  routing_bias=0.1 * jax.random.normal(key, (E,), jnp.float32))
        kw["top_k"] = min(kw["top_k"], 2 * (E // groups) if groups > 1 else E)
    return kw


def make_case(*, T: int, H: int, I: int, E: int, top_k: int,
              routing: RoutingMethod = RoutingMethod.RENORMALIZE,
              activation: Activation = Activation.SWIGLU,
              weight_format: Format = Format.NVFP4, act_format: Format = Format.BF16,
              E_local: int | None = None, local_expert_offset: int = 0, biases: bool = False,
              logits: jax.Array | None = None, leading: tuple[int, ...] | None = None) -> Case:
    """Random inputs; weights scaled so h and y stay O(1) (values ~ N(0, 1/K))."""
    k = jax.random.split(fresh_key(), 8)
    E_local = E if E_local is None else E_local
    leading = (T,) if leading is None else leading
    x = jax.random.normal(k[0], leading + (H,), jnp.float32)
    if logits is None:
        logits = 2.0 * jax.random.normal(k[1], leading + (E,), jnp.float32)
    w13 = random_expert_weights(k[2], E_local, 2 * I, H, weight_format)
    w2 = random_expert_weights(k[3], E_local, H, I, weight_format)
    if act_format == Format.MXFP8:
        hidden = formats.quantize_mxfp8(x)
    elif act_format == Format.NVFP4:
        hidden = formats.quantize_nvfp4(x)
    else:
        hidden = x.astype(jnp.bfloat16)
    kw = routing_kwargs(routing, E, top_k, k[4])
    kw.update(activation=activation, local_expert_offset=local_expert_offset)
    if act_format == Format.NVFP4:
        kw["h_global_scale"] = jnp.float32(448.0 * 6.0 / 4.0)  # h amax ~ 4
    if biases:
        kw["b13"] = 0.1 * jax.random.normal(k[5], (E_local, 2 * I), jnp.float32)
        kw["b2"] = 0.1 * jax.random.normal(k[6], (E_local, H), jnp.float32)
    return Case(hidden, logits, w13, w2, kw)


def rel_l2(actual, expected) -> float:
    a = np.asarray(actual, np.float64)
    e = np.asarray(expected, np.float64)
    return float(np.linalg.norm(a - e) / max(np.linalg.norm(e), 1e-30))


def assert_close(actual, expected, *, rel: float) -> None:
    """Finite everywhere, relative L2 error below `rel`, max error bounded."""
    a = np.asarray(actual, np.float32)
    e = np.asarray(expected, np.float32)
    assert a.shape == e.shape, (a.shape, e.shape)
    assert np.isfinite(a).all(), "NaN/Inf in the output"
    err = rel_l2(a, e)
    assert err < rel, f"relative L2 error {err:.3e} >= {rel:.0e}"
    scale = max(float(np.abs(e).max()), 1e-6)
    assert np.abs(a - e).max() <= 50 * rel * scale, "max elementwise error too large"


def run_op_and_reference(case: Case, **extra):
    """(fp4_moe, reference.moe_reference) on the case, both jitted, same arguments."""
    import jax_moe
    from jax_moe import reference

    kw = {**case.kwargs, **extra}
    op = jax.jit(lambda h, l, a, b: jax_moe.fp4_moe(h, l, a, b, **kw))
    ref = jax.jit(lambda h, l, a, b: reference.moe_reference(h, l, a, b, **kw))
    args = (case.hidden, case.logits, case.w13, case.w2)
    return op(*args), ref(*args)
