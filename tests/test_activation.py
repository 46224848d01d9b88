"""Tests for jax_moe.activation against math/numpy references."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_moe.activation import (GPT_OSS_ALPHA, GPT_OSS_BETA, GPT_OSS_LIMIT,
                                Activation, as_activation, gated_activation)

A = Activation
jit_act = jax.jit(gated_activation, static_argnames=("activation",))

# Results are ~1 fp32 ulp from the float64 reference; ATOL only covers values
# that underflow (e.g. silu(-100) = -3.7e-42 comes out as -0.0).
RTOL, ATOL = 1e-6, 1e-12
# fp32 1 + erf(x) cancels for x << 0, so GEGLU may also be off by a few ulps
# of 1 in erf, scaled by 0.5 * |gate| * |up|.
ERF_ABS = 2.5e-7

_erf = np.vectorize(math.erf, otypes=[np.float64])


def _sigmoid64(x: np.ndarray) -> np.ndarray:
    # exp(-x) overflows to inf for x << 0, giving the correct limit 0.
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-x))


def _reference(gate: np.ndarray, up: np.ndarray, act: Activation,
               alpha: float = GPT_OSS_ALPHA, beta: float = GPT_OSS_BETA,
               limit: float = GPT_OSS_LIMIT) -> np.ndarray:
    """float64 reference computed from the (fp32) inputs."""
    gate = gate.astype(np.float64)
    up = up.astype(np.float64)
    if act == A.SWIGLU:
        return gate * _sigmoid64(gate) * up
    if act == A.GEGLU:
        return 0.5 * gate * (1.0 + _erf(gate / math.sqrt(2.0))) * up
    gate = np.minimum(gate, limit)
    up = np.clip(up, -limit, limit)
    return gate * _sigmoid64(alpha * gate) * (up + beta)


def _assert_close(got: np.ndarray, gate: np.ndarray, up: np.ndarray,
                  act: Activation, **kw) -> None:
    """Compares with the reference, allowing GEGLU's erf cancellation."""
    want = _reference(gate, up, act, **kw)
    tol = RTOL * np.abs(want) + ATOL
    if act == A.GEGLU:
        tol = tol + ERF_ABS * np.abs(gate.astype(np.float64) * up)
    bad = np.abs(got - want) > tol
    assert not bad.any(), (
        f"{act.name}: {bad.sum()} mismatches, e.g. gate={gate[bad][:3]} "
        f"up={up[bad][:3]} got={got[bad][:3]} want={want[bad][:3]}")


def _run(gate, up, act, **kw) -> np.ndarray:
    g = jnp.concatenate([jnp.asarray(gate, jnp.float32),
                         jnp.asarray(up, jnp.float32)], axis=-1)
    out = jit_act(g, act, **kw)
    assert out.dtype == jnp.float32
    assert out.shape == g.shape[:-1] + (g.shape[-1] // 2,)
    return np.asarray(out)


# ---------------------------------------------------------------------------
# Enum, parsing and constants.
# ---------------------------------------------------------------------------


def test_enum_values_match_cpp_header():
    # ffi_src/common/enums.h mirrors these numbers; they must never change.
    assert [(m.name, int(m)) for m in A] == [
        ("SWIGLU", 0), ("GEGLU", 1), ("SWIGLU_OAI", 2)]


def test_gpt_oss_constants():
    assert (GPT_OSS_ALPHA, GPT_OSS_BETA, GPT_OSS_LIMIT) == (1.702, 1.0, 7.0)


@pytest.mark.parametrize("value, expected", [
    (A.GEGLU, A.GEGLU), (0, A.SWIGLU), (np.int32(2), A.SWIGLU_OAI),
    ("swiglu", A.SWIGLU), ("GeGLU", A.GEGLU), ("swiglu_oai", A.SWIGLU_OAI),
    ("SWIGLU-OAI", A.SWIGLU_OAI), ("gpt_oss", A.SWIGLU_OAI),
    ("gpt-oss", A.SWIGLU_OAI),
])
def test_parse_accepts(value, expected):
    assert A.parse(value) is expected
    assert as_activation(value) is expected


@pytest.mark.parametrize("value", ["relu", "gelu", 3, -1, False, 0.0, None])
def test_parse_rejects_and_lists_choices(value):
    with pytest.raises(ValueError, match="swiglu.*geglu.*swiglu_oai"):
        A.parse(value)


# ---------------------------------------------------------------------------
# Hand-computed values.
# ---------------------------------------------------------------------------


def test_swiglu_hand():
    # silu(0) * 2 = 0; silu(1) * 3 = 0.73105858 * 3 = 2.19317574;
    # silu(-1) * 4 = -0.26894142 * 4 = -1.07576569
    out = _run([0.0, 1.0, -1.0], [2.0, 3.0, 4.0], A.SWIGLU)
    np.testing.assert_allclose(out, [0.0, 2.19317574, -1.07576569],
                               rtol=RTOL, atol=ATOL)


def test_geglu_hand():
    # gelu(1) = 0.5 * (1 + erf(1/sqrt2)) = 0.84134475; gelu(-1) = -0.15865525
    # gelu(2) * 2 = 2 * (1 + erf(sqrt2)) = 2 * 1.95449974 = 3.90899947
    out = _run([1.0, -1.0, 2.0], [1.0, 1.0, 2.0], A.GEGLU)
    np.testing.assert_allclose(out, [0.84134475, -0.15865525, 3.90899947],
                               rtol=RTOL, atol=ATOL)


def test_swiglu_oai_hand_and_clamps():
    gate = [100.0, 7.0, -10.0, -7.0, 0.0, 1.0]
    up = [100.0, 7.0, -100.0, -7.0, 0.0, 0.5]
    # 100 -> 7 and 100 -> 7: 7 * sigmoid(1.702 * 7) * (7 + 1) = 55.99962503
    # (7, 7) is at the limit: unchanged, same value.
    # gate -10 is NOT clamped from below: -10 * sigmoid(-17.02) = -4.0580e-7;
    #   up -100 -> -7: (-7 + 1) = -6 -> 2.43477678e-6
    # (-7, -7): -7 * sigmoid(-11.914) * -6 = 2.81230180e-4
    # (1, .5): 1 * sigmoid(1.702) * 1.5 = 1.26869365
    out = _run(gate, up, A.SWIGLU_OAI)
    np.testing.assert_allclose(
        out, [55.99962503, 55.99962503, 2.43477678e-6, 2.81230180e-4, 0.0,
              1.26869365], rtol=RTOL, atol=1e-9)


def test_swiglu_oai_clamp_is_exact_beyond_limit():
    lim = GPT_OSS_LIMIT
    # Beyond the limit the result must equal the at-limit result bit for bit.
    at = _run([lim, 1.0, 1.0], [0.5, lim, -lim], A.SWIGLU_OAI)
    beyond = _run([lim + 0.5, 1.0, 1.0], [0.5, lim + 3.0, -lim - 3.0],
                  A.SWIGLU_OAI)
    np.testing.assert_array_equal(beyond, at)
    # Below -limit the gate is not clamped, so the result changes.
    low = _run([-lim, -lim - 1.0], [0.5, 0.5], A.SWIGLU_OAI)
    assert low[0] != low[1]


# ---------------------------------------------------------------------------
# Sweeps against the reference.
# ---------------------------------------------------------------------------


def _sweep(seed: int = 0):
    """Gates over a wide range (incl. +-limit and large magnitudes)."""
    rng = np.random.default_rng(seed)
    gate = np.concatenate([
        np.linspace(-100.0, 100.0, 2001),
        [-GPT_OSS_LIMIT, GPT_OSS_LIMIT, -1e4, 1e4, -0.0, 1e-30, -1e-30],
        rng.normal(0.0, 3.0, 1000),
    ]).astype(np.float32)
    up = rng.uniform(-20.0, 20.0, gate.shape).astype(np.float32)
    up[:7] = [-GPT_OSS_LIMIT, GPT_OSS_LIMIT, -7.5, 7.5, 0.0, -100.0, 100.0]
    return gate, up


@pytest.mark.parametrize("act", list(A), ids=lambda a: a.name)
def test_matches_reference_over_range(act):
    gate, up = _sweep()
    _assert_close(_run(gate, up, act), gate, up, act)


def test_swiglu_oai_custom_parameters():
    gate, up = _sweep(1)
    kw = dict(alpha=2.0, beta=0.5, limit=3.0)
    _assert_close(_run(gate, up, A.SWIGLU_OAI, **kw), gate, up, A.SWIGLU_OAI,
                  **kw)


@pytest.mark.parametrize("act", [A.SWIGLU, A.GEGLU], ids=lambda a: a.name)
def test_oai_parameters_ignored_by_other_activations(act):
    gate, up = _sweep(2)
    np.testing.assert_array_equal(
        _run(gate, up, act, alpha=2.0, beta=0.5, limit=3.0),
        _run(gate, up, act))


def test_traced_parameters_under_jit():
    gate, up = _sweep(3)
    g = jnp.concatenate([jnp.asarray(gate), jnp.asarray(up)])
    f = jax.jit(lambda g, a, b, l: gated_activation(
        g, "swiglu_oai", alpha=a, beta=b, limit=l))
    _assert_close(np.asarray(f(g, 2.0, 0.5, 3.0)), gate, up, A.SWIGLU_OAI,
                  alpha=2.0, beta=0.5, limit=3.0)


# ---------------------------------------------------------------------------
# Shapes, dtypes and errors.
# ---------------------------------------------------------------------------


def test_leading_dims_and_layout():
    # gate is the first half of the last axis, up the second half.
    rng = np.random.default_rng(4)
    g = rng.normal(size=(2, 3, 8)).astype(np.float32)
    out = np.asarray(gated_activation(jnp.asarray(g), A.SWIGLU))
    assert out.shape == (2, 3, 4)
    _assert_close(out, g[..., :4], g[..., 4:], A.SWIGLU)


def test_bf16_input_gives_fp32():
    g = jnp.array([[1.0, -1.0, 3.0, 4.0]], jnp.bfloat16)
    out = gated_activation(g, A.GEGLU)
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, [[0.84134475 * 3, -0.15865525 * 4]],
                               rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("shape", [(), (3,), (2, 5)])
def test_rejects_odd_or_scalar(shape):
    with pytest.raises(ValueError, match="g must have an even last dimension"):
        gated_activation(jnp.zeros(shape), A.SWIGLU)


def test_rejects_unknown_activation():
    with pytest.raises(ValueError, match="invalid Activation"):
        gated_activation(jnp.zeros((2, 4)), "relu")
