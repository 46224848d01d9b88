"""Reference gated activations for the MoE expert MLP in plain JAX.

The first expert GEMM produces ``[..., 2I]`` with the gate projection in the
first half and the up projection in the second half; the gated activation
reduces it to ``[..., I]`` before the second GEMM. These fp32 functions are
the oracle for the C++ CPU and CUDA epilogues, so each formula is written out
in the order the kernels are expected to follow.

gpt-oss checkpoints store gate and up *interleaved* (even and odd columns);
weight loaders must de-interleave them into the half/half layout used here.
"""

from __future__ import annotations

import enum
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jax_moe._enums import parse_enum

__all__ = [
    "Activation",
    "as_activation",
    "GPT_OSS_ALPHA",
    "GPT_OSS_BETA",
    "GPT_OSS_LIMIT",
    "sigmoid",
    "silu",
    "gelu_erf",
    "swiglu_oai",
    "gated_activation",
]

# gpt-oss SwiGLU constants (sigmoid sharpness, up offset, clamp limit).
GPT_OSS_ALPHA = 1.702
GPT_OSS_BETA = 1.0
GPT_OSS_LIMIT = 7.0

# sqrt(2) rounded once to fp32 so that gate / sqrt(2) is a single fp32 divide.
_SQRT2 = np.float32(math.sqrt(2.0))


class Activation(enum.IntEnum):
    """Gated activations; values are mirrored by ``ffi_src/common/enums.h``."""

    SWIGLU = 0
    GEGLU = 1
    SWIGLU_OAI = 2

    @classmethod
    def parse(cls, value: Any) -> "Activation":
        """Accepts a member, its int, or a case-insensitive name.

        Besides the member names, ``"gpt_oss"`` (or ``"gpt-oss"``, ``"gptoss"``)
        and ``"swigluoai"`` are accepted for ``SWIGLU_OAI``.

        Args:
          value: The activation in any accepted form.

        Returns:
          The matching ``Activation``.

        Raises:
          ValueError: If ``value`` names no activation.
        """
        return parse_enum(cls, value, dict(gpt_oss=cls.SWIGLU_OAI, gptoss=cls.SWIGLU_OAI,
                                           swigluoai=cls.SWIGLU_OAI))


def as_activation(value: Any) -> Activation:
    """Function form of :meth:`Activation.parse`."""
    return Activation.parse(value)


def sigmoid(x: jax.Array) -> jax.Array:
    """``1 / (1 + exp(-x))``, spelled out so the formula is pinned.

    ``jax.nn.sigmoid`` lowers to XLA's logistic op, whose implementation is
    backend-defined; the kernels use this exact expression instead.
    """
    return 1.0 / (1.0 + jnp.exp(-x))


def silu(x: jax.Array) -> jax.Array:
    """``x * sigmoid(x)``."""
    return x * sigmoid(x)


def gelu_erf(x: jax.Array) -> jax.Array:
    """Exact (erf) GELU: ``0.5 * x * (1 + erf(x / sqrt(2)))``."""
    return 0.5 * x * (1.0 + jax.lax.erf(x / _SQRT2))


def swiglu_oai(gate: jax.Array, up: jax.Array, *, alpha: Any = GPT_OSS_ALPHA,
               beta: Any = GPT_OSS_BETA,
               limit: Any = GPT_OSS_LIMIT) -> jax.Array:
    """gpt-oss clamped SwiGLU.

    The gate is clamped only from above (its negative tail is already damped
    by the sigmoid) while the up projection is clamped on both sides.

    Args:
      gate: Gate half, fp32.
      up: Up half, fp32, same shape as ``gate``.
      alpha: Sigmoid sharpness.
      beta: Offset added to the clamped up projection.
      limit: Clamp limit.

    Returns:
      ``gate * sigmoid(alpha * gate) * (up + beta)`` after clamping.
    """
    gate = jnp.minimum(gate, limit)
    up = jnp.clip(up, -limit, limit)
    return gate * sigmoid(alpha * gate) * (up + beta)


def gated_activation(g: jax.Array, activation: Any, *,
                     alpha: Any = GPT_OSS_ALPHA, beta: Any = GPT_OSS_BETA,
                     limit: Any = GPT_OSS_LIMIT) -> jax.Array:
    """Applies a gated activation to a fused ``[gate | up]`` projection.

    ``activation`` must be static under ``jax.jit``; ``alpha``, ``beta`` and
    ``limit`` may be traced.

    Args:
      g: ``[..., 2I]`` array (cast to fp32); ``g[..., :I]`` is the gate and
        ``g[..., I:]`` the up projection.
      activation: An ``Activation`` or anything ``Activation.parse`` accepts.
      alpha: ``SWIGLU_OAI`` only: sigmoid sharpness.
      beta: ``SWIGLU_OAI`` only: offset added to ``up``.
      limit: ``SWIGLU_OAI`` only: clamp limit.

    Returns:
      fp32 ``[..., I]``.

    Raises:
      ValueError: For an unknown activation, a scalar ``g`` or an odd last
        dimension.
    """
    activation = Activation.parse(activation)
    g = jnp.asarray(g)
    if g.ndim < 1 or g.shape[-1] % 2:
        raise ValueError(f"g must have an even last dimension [..., 2I], got "
                         f"shape {g.shape}")
    g = g.astype(jnp.float32)
    half = g.shape[-1] // 2
    gate, up = g[..., :half], g[..., half:]
    if activation == Activation.SWIGLU:
        return silu(gate) * up
    if activation == Activation.GEGLU:
        return gelu_erf(gate) * up
    # Rounded to fp32 up front so a float64 constant cannot promote the math.
    return swiglu_oai(gate, up, alpha=jnp.float32(alpha),
                      beta=jnp.float32(beta), limit=jnp.float32(limit))
