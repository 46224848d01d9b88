"""Reference MoE routing (expert selection and routing weights) in plain JAX.

These functions are the fp32 oracle that the C++ CPU and CUDA routing kernels
are tested against, so every formula below is written out operation by
operation in the order the kernels are expected to follow.

Tie rule used by every top-k selection: scores are ranked in descending order
and, among equal scores, the smaller expert index wins and comes first.
``-0.0`` and ``+0.0`` are equal (a tie) and NaN ranks below every number.

Routing methods and the models that use them:

* ``DEFAULT``: softmax over all experts, top-k of the probabilities, weights
  are the probabilities themselves (no renormalisation), e.g. Switch-style
  and Qwen-MoE models with ``norm_topk_prob=False``.
* ``RENORMALIZE``: top-k of the logits, weights are a softmax over the k
  selected logits. Used by Mixtral, Qwen3-MoE (``norm_topk_prob=True``) and
  gpt-oss.
* ``DEEPSEEK_V3``: sigmoid scores plus a per-expert correction bias, grouped
  selection (DeepSeek-V3/R1 use 256 experts, ``n_group=8``, ``topk_group=4``,
  ``top_k=8``), weights are the un-biased sigmoid scores renormalised over the
  chosen k and multiplied by ``routed_scaling_factor`` (2.5 in DeepSeek-V3).
* ``LLAMA4``: top-1 of the logits with weight ``sigmoid(logit)``. Llama 4
  applies this weight to the expert *input* (the token's hidden state is
  scaled before the expert MLP), not to the expert output; callers of the
  fused MoE must follow that convention.
* ``TOPK``: top-k of the logits, weights are the raw logits (for callers that
  post-process the weights themselves).
"""

from __future__ import annotations

import enum
import operator
from typing import Any, Optional, Tuple

import jax
import jax.numpy as jnp

from jax_moe._enums import parse_enum

__all__ = [
    "RoutingMethod",
    "as_routing_method",
    "topk_desc",
    "softmax_fp32",
    "route",
    "expert_mask",
]

# Added to the DeepSeek-V3 weight denominator so an all-zero selection
# (sigmoid underflow for very negative logits) does not divide by zero.
_DEEPSEEK_EPS = 1e-20


class RoutingMethod(enum.IntEnum):
    """Routing methods; values are mirrored by ``ffi_src/common/enums.h``."""

    DEFAULT = 0
    RENORMALIZE = 1
    DEEPSEEK_V3 = 2
    LLAMA4 = 3
    TOPK = 4

    @classmethod
    def parse(cls, value: Any) -> "RoutingMethod":
        """Accepts a member, its int, or a case-insensitive name.

        Besides the member names, ``"deepseekv3"`` and ``"deepseek"`` are
        accepted for ``DEEPSEEK_V3`` and ``"top_k"`` for ``TOPK``.

        Args:
          value: The routing method in any accepted form.

        Returns:
          The matching ``RoutingMethod``.

        Raises:
          ValueError: If ``value`` names no routing method.
        """
        aliases = {
            "deepseekv3": cls.DEEPSEEK_V3,
            "deepseek": cls.DEEPSEEK_V3,
            "top_k": cls.TOPK,
        }
        return parse_enum(cls, value, aliases)


def as_routing_method(value: Any) -> RoutingMethod:
    """Function form of :meth:`RoutingMethod.parse`."""
    return RoutingMethod.parse(value)


def _check_int(name: str, value: Any) -> int:
    """Returns ``value`` as a Python int or raises a ValueError naming it."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an int, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise ValueError(
            f"{name} must be a static Python int, got {type(value).__name__} "
            f"{value!r}") from None


def _sort_key_desc(scores: jax.Array) -> jax.Array:
    """Builds an ascending sort key that ranks ``scores`` in descending order.

    The key is ``-scores`` with every zero made ``+0.0`` and every NaN made
    the canonical positive NaN. XLA's float sort comparator is a total order
    in which ``-0.0 < +0.0`` and the NaN sign matters, so without this the
    two zeros would not tie and a negative NaN would rank first. (``lax.sort``
    happens to canonicalise keys itself today, but does not document it.)
    """
    key = -scores
    key = jnp.where(key == 0, jnp.zeros_like(key), key)
    return jnp.where(jnp.isnan(key), jnp.full_like(key, jnp.nan), key)


def topk_desc(scores: jax.Array, k: int) -> Tuple[jax.Array, jax.Array]:
    """Top-k along the last axis with the smaller-index-wins tie rule.

    The rows are sorted lexicographically by ``(-score, index)``; because the
    index is an explicit second sort key the tie rule holds whether or not
    the underlying sort is stable (``jax.lax.top_k`` documents no tie rule,
    so it is not used).

    Args:
      scores: Float array ``[..., N]``.
      k: Static number of entries to keep, ``1 <= k <= N``.

    Returns:
      ``(values, indices)``, each ``[..., k]``: the original scores (sign of
      zero preserved) in descending order and their int32 indices.

    Raises:
      ValueError: If ``scores`` is a scalar or ``k`` is out of range.
    """
    scores = jnp.asarray(scores)
    k = _check_int("k", k)
    if scores.ndim < 1:
        raise ValueError(f"scores must have at least 1 dimension, got shape "
                         f"{scores.shape}")
    n = scores.shape[-1]
    if not 1 <= k <= n:
        raise ValueError(f"k must satisfy 1 <= k <= {n} (scores.shape[-1]), "
                         f"got {k}")
    axis = scores.ndim - 1
    index = jax.lax.broadcasted_iota(jnp.int32, scores.shape, axis)
    # The scores ride along as a third, non-key operand so no gather is needed.
    _, indices, values = jax.lax.sort(
        (_sort_key_desc(scores), index, scores), dimension=axis, num_keys=2)
    return values[..., :k], indices[..., :k]


def softmax_fp32(x: jax.Array) -> jax.Array:
    """Softmax over the last axis: ``exp(x - max) / sum(exp(x - max))``.

    Written out rather than using ``jax.nn.softmax`` so the operation order
    (a division, not a multiplication by a reciprocal) is pinned for the
    kernels.
    """
    x = jnp.asarray(x, jnp.float32)
    e = jnp.exp(x - jnp.max(x, axis=-1, keepdims=True))
    return e / jnp.sum(e, axis=-1, keepdims=True)


def _sigmoid(x: jax.Array) -> jax.Array:
    """``1 / (1 + exp(-x))``, spelled out so the formula is pinned."""
    return 1.0 / (1.0 + jnp.exp(-x))


def _take(x: jax.Array, ids: jax.Array) -> jax.Array:
    """Gathers ``x[t, ids[t, j]]`` for a ``[T, E]`` array."""
    return jnp.take_along_axis(x, ids, axis=-1)


def _route_default(x: jax.Array, top_k: int, **_: Any):
    """Top-k of the full softmax; weights are those probabilities."""
    weights, ids = topk_desc(softmax_fp32(x), top_k)
    return ids, weights


def _route_renormalize(x: jax.Array, top_k: int, **_: Any):
    """Top-k of the logits; weights are a softmax over the k selected."""
    selected, ids = topk_desc(x, top_k)
    return ids, softmax_fp32(selected)


def _route_topk(x: jax.Array, top_k: int, **_: Any):
    """Top-k of the logits; weights are the raw logits."""
    weights, ids = topk_desc(x, top_k)
    return ids, weights


def _route_llama4(x: jax.Array, top_k: int, **_: Any):
    """Top-1 of the logits; weight is the sigmoid of that logit."""
    selected, ids = topk_desc(x, top_k)
    return ids, _sigmoid(selected)


def _group_scores(biased: jax.Array, n_group: int) -> jax.Array:
    """DeepSeek-V3 group score: the sum of the two largest biased scores.

    Args:
      biased: ``[T, E]`` biased scores, ``E`` divisible by ``n_group``.
      n_group: Number of groups of consecutive experts.

    Returns:
      ``[T, n_group]``; a group of one expert scores that expert alone.
    """
    t, e = biased.shape
    grouped = biased.reshape(t, n_group, e // n_group)
    if grouped.shape[-1] == 1:
        return grouped[..., 0]
    top2, _ = topk_desc(grouped, 2)
    return top2[..., 0] + top2[..., 1]


def _mask_to_best_groups(biased: jax.Array, n_group: int,
                         topk_group: int) -> jax.Array:
    """Sets the biased scores of experts outside the best groups to -inf.

    -inf rather than 0 matters: biased scores can be negative, and a masked
    expert must never beat a kept one.
    """
    t, e = biased.shape
    _, best = topk_desc(_group_scores(biased, n_group), topk_group)
    group_ids = jnp.arange(n_group, dtype=jnp.int32)
    keep_group = jnp.any(best[:, :, None] == group_ids[None, None, :], axis=1)
    keep_expert = jnp.repeat(keep_group, e // n_group, axis=1)
    return jnp.where(keep_expert, biased, -jnp.inf)


def _route_deepseek_v3(x: jax.Array, top_k: int, *, n_group: int,
                       topk_group: int, routed_scaling_factor: Any,
                       bias: Optional[jax.Array]):
    """Grouped sigmoid routing with correction bias (DeepSeek-V3).

    The bias only steers which experts are chosen; the weights come from the
    un-biased sigmoid scores, renormalised over the chosen k and scaled.
    """
    s = _sigmoid(x)
    biased = s if bias is None else s + bias[None, :]
    if n_group > 1:
        biased = _mask_to_best_groups(biased, n_group, topk_group)
    _, ids = topk_desc(biased, top_k)
    chosen = _take(s, ids)
    denom = jnp.sum(chosen, axis=-1, keepdims=True) + _DEEPSEEK_EPS
    return ids, chosen * routed_scaling_factor / denom


_ROUTERS: dict = {
    RoutingMethod.DEFAULT: _route_default,
    RoutingMethod.RENORMALIZE: _route_renormalize,
    RoutingMethod.DEEPSEEK_V3: _route_deepseek_v3,
    RoutingMethod.LLAMA4: _route_llama4,
    RoutingMethod.TOPK: _route_topk,
}


def _validate_deepseek(num_experts: int, top_k: int, n_group: int,
                       topk_group: int) -> None:
    """Checks the DeepSeek-V3 group arguments (only when ``n_group > 1``)."""
    if n_group <= 1:
        return
    if num_experts % n_group:
        raise ValueError(f"n_group must divide the number of experts: "
                         f"expected E % n_group == 0, got E={num_experts}, "
                         f"n_group={n_group}")
    if not 1 <= topk_group <= n_group:
        raise ValueError(f"topk_group must satisfy 1 <= topk_group <= n_group "
                         f"(={n_group}), got {topk_group}")
    capacity = topk_group * (num_experts // n_group)
    if top_k > capacity:
        raise ValueError(f"top_k must be <= topk_group * (E // n_group) = "
                         f"{topk_group} * {num_experts // n_group} = "
                         f"{capacity}, got {top_k}")


def _validate(logits: jax.Array, method: RoutingMethod, top_k: int,
              n_group: int, topk_group: int,
              bias: Optional[jax.Array]) -> None:
    """Raises ValueError for any inconsistent ``route`` argument."""
    if logits.ndim != 2:
        raise ValueError(f"logits must be 2-D [T, E], got shape {logits.shape}")
    num_experts = logits.shape[1]
    if not 1 <= top_k <= num_experts:
        raise ValueError(f"top_k must satisfy 1 <= top_k <= E (={num_experts})"
                         f", got {top_k}")
    if method == RoutingMethod.LLAMA4 and top_k != 1:
        raise ValueError(f"top_k must be 1 for LLAMA4 routing, got {top_k}")
    if method == RoutingMethod.DEEPSEEK_V3:
        _validate_deepseek(num_experts, top_k, n_group, topk_group)
    if bias is not None and bias.shape != (num_experts,):
        raise ValueError(f"bias must have shape (E,) = ({num_experts},), got "
                         f"{bias.shape}")


def route(
    logits: jax.Array,
    *,
    method: Any,
    top_k: int,
    n_group: int = 0,
    topk_group: int = 0,
    routed_scaling_factor: Any = 1.0,
    bias: Optional[jax.Array] = None,
) -> Tuple[jax.Array, jax.Array]:
    """Selects experts and routing weights for each token.

    ``method``, ``top_k``, ``n_group`` and ``topk_group`` must be static under
    ``jax.jit``; ``routed_scaling_factor`` and ``bias`` may be traced.

    Args:
      logits: Router logits ``[T, E]`` of any float dtype; cast to fp32 first.
      method: A ``RoutingMethod`` or anything ``RoutingMethod.parse`` accepts.
      top_k: Experts per token, ``1 <= top_k <= E`` (1 for ``LLAMA4``).
      n_group: ``DEEPSEEK_V3`` only: number of expert groups; ``<= 1`` means
        no grouping.
      topk_group: ``DEEPSEEK_V3`` only: groups kept per token when
        ``n_group > 1``.
      routed_scaling_factor: ``DEEPSEEK_V3`` only: weight multiplier.
      bias: ``DEEPSEEK_V3`` only: fp32 ``[E]`` correction bias added to the
        sigmoid scores for selection; ``None`` means zeros. Its shape is
        checked whenever it is given; other methods ignore its values.

    Returns:
      ``(ids, weights)``: int32 ``[T, top_k]`` expert ids in descending score
      order (ties: smaller id first) and float32 ``[T, top_k]`` weights.

    Raises:
      ValueError: For an unknown method or inconsistent shapes/arguments.
    """
    method = RoutingMethod.parse(method)
    top_k = _check_int("top_k", top_k)
    n_group = _check_int("n_group", n_group)
    topk_group = _check_int("topk_group", topk_group)
    logits = jnp.asarray(logits)
    if bias is not None:
        bias = jnp.asarray(bias, jnp.float32)
    _validate(logits, method, top_k, n_group, topk_group, bias)
    ids, weights = _ROUTERS[method](
        logits.astype(jnp.float32),
        top_k,
        n_group=n_group,
        topk_group=topk_group,
        routed_scaling_factor=jnp.asarray(routed_scaling_factor, jnp.float32),
        bias=bias,
    )
    return ids.astype(jnp.int32), weights.astype(jnp.float32)


def expert_mask(ids: jax.Array, local_expert_offset: Any,
                local_num_experts: Any) -> jax.Array:
    """Marks the routed slots whose expert lives on this shard.

    Under expert parallelism each device owns the experts
    ``[local_expert_offset, local_expert_offset + local_num_experts)``.

    Args:
      ids: Integer expert ids ``[T, K]`` (any shape works).
      local_expert_offset: First global expert id owned locally.
      local_num_experts: Number of experts owned locally.

    Returns:
      Bool array shaped like ``ids``.
    """
    ids = jnp.asarray(ids)
    start = jnp.asarray(local_expert_offset, ids.dtype)
    stop = start + jnp.asarray(local_num_experts, ids.dtype)
    return (ids >= start) & (ids < stop)
