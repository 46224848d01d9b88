"""The public ops: `fp4_moe` (routing inside) and `fp4_moe_routed` (precomputed top-k).

Each call validates every argument at trace time (ValueError/TypeError naming
the argument, the expected and the actual shape/dtype/format), chooses a
tactic, and lowers to ONE XLA FFI custom call (see `_primitive.py`). The math
is exactly `jax_moe.reference` (DESIGN.md section 4):

    ids, w  = route(router_logits)                      (or given: fp4_moe_routed)
    g       = x @ W13[e]^T  (* w if routing_weight_on_input)  (+ b13[e])
    h       = act(g[:I], g[I:])  rounded to bf16 (or re-quantized to act format)
    y       = bf16(h @ W2[e]^T (+ b2[e]))
    out[t]  = bf16(sum_k w[t,k] * y[t,k])   (fp32 accumulation; w = 1 on input)

Experts outside [local_expert_offset, local_expert_offset + E_local) contribute 0.
"""

from __future__ import annotations

import importlib
import logging
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jax_moe import _primitive, tactics
from jax_moe.activation import GPT_OSS_ALPHA, GPT_OSS_BETA, GPT_OSS_LIMIT, Activation
from jax_moe.formats import Format, QTensor
from jax_moe.problem import MoEProblem
from jax_moe.routing import RoutingMethod

logger = logging.getLogger("jax_moe")

# The module (`jax_moe.autotune` the attribute is the public context manager).
_autotune = importlib.import_module("jax_moe.autotune")

ArrayLike = Any


def _shape_str(x: Any) -> str:
    return str(tuple(x.shape)) if hasattr(x, "shape") else type(x).__name__


def _fail(name: str, expected: str, actual: str, exc: type = ValueError) -> None:
    raise exc(f"{name}: expected {expected}, got {actual}")


def _check_weights(w13: Any, w2: Any) -> tuple[int, int, int, Format]:
    """Validates the expert weights; returns (E_local, H, I, weight format)."""
    for name, w in (("w13", w13), ("w2", w2)):
        if not isinstance(w, QTensor):
            _fail(name, "a jax_moe.formats.QTensor (quantize with jax_moe.formats.quantize_nvfp4 / "
                  "quantize_mxfp4, or convert a checkpoint with formats.from_gpt_oss_mxfp4)",
                  type(w).__name__, TypeError)
        if w.fmt not in (Format.NVFP4, Format.MXFP4):
            _fail(name, "NVFP4 or MXFP4 weights", w.fmt.name)
        if w.layout != "linear":
            _fail(name, "layout 'linear' (the layout quantize_* produce)", repr(w.layout))
        if w.ndim != 3:
            _fail(name, "logical rank 3 ([E_local, N, K])", f"shape {w.shape}")
    if w13.fmt != w2.fmt:
        _fail("w2", f"the same format as w13 ({w13.fmt.name})", w2.fmt.name)
    E_local, two_i, H = w13.shape
    if two_i % 2:
        _fail("w13", "an even number of rows (gate rows then up rows: [E, 2*I, H])", f"shape {w13.shape}")
    I = two_i // 2
    if w2.shape != (E_local, H, I):
        _fail("w2", f"logical shape {(E_local, H, I)} (from w13 {w13.shape})", f"{w2.shape}")
    return E_local, H, I, w13.fmt


def _check_hidden(hidden_states: Any, H: int) -> tuple[Format, tuple[int, ...]]:
    """Validates the activations; returns (act format, leading dims)."""
    if isinstance(hidden_states, QTensor):
        if hidden_states.fmt not in (Format.MXFP8, Format.NVFP4):
            _fail("hidden_states", "bf16 data or a QTensor in MXFP8 or NVFP4", hidden_states.fmt.name)
        if hidden_states.global_scale is not None and hidden_states.global_scale.ndim != 0:
            _fail("hidden_states.global_scale", "a scalar (one per-tensor scale)",
                  f"shape {_shape_str(hidden_states.global_scale)}")
        shape, fmt = hidden_states.shape, hidden_states.fmt
    else:
        if not hasattr(hidden_states, "dtype") or not jnp.issubdtype(hidden_states.dtype, jnp.floating):
            _fail("hidden_states", "a floating-point array [..., H] or a QTensor",
                  getattr(hidden_states, "dtype", type(hidden_states).__name__), TypeError)
        shape, fmt = tuple(hidden_states.shape), Format.BF16
    if len(shape) < 1 or shape[-1] != H:
        _fail("hidden_states", f"shape [..., {H}] (H from w13)", str(shape))
    return fmt, shape[:-1]


def _check_optional(name: str, x: Any, shape: tuple[int, ...]) -> jax.Array | None:
    if x is None:
        return None
    if not hasattr(x, "shape") or tuple(x.shape) != shape:
        _fail(name, f"shape {shape}", _shape_str(x))
    if not jnp.issubdtype(x.dtype, jnp.floating):
        _fail(name, "a floating-point dtype", str(x.dtype), TypeError)
    return jnp.asarray(x, jnp.float32)


def _static_int(name: str, v: Any, lo: int | None = None) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        _fail(name, "a Python int (static)", repr(v), TypeError)
    if lo is not None and v < lo:
        _fail(name, f"an int >= {lo}", repr(v))
    return int(v)


def _static_float(name: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)):
        _fail(name, "a Python float (static)", repr(v), TypeError)
    if not math.isfinite(float(v)):
        _fail(name, "a finite float", repr(v))
    return float(v)


def _activation_operands(hidden_states: Any, T: int, H: int, fmt: Format):
    """(hidden, hidden_scale, hidden_global) operands in the handler's dtypes."""
    if fmt == Format.BF16:
        return (hidden_states.reshape(T, H).astype(jnp.bfloat16), jnp.zeros((0,), jnp.uint8),
                jnp.ones((1,), jnp.float32))
    q = hidden_states
    data = q.data.reshape(T, q.data.shape[-1])
    scale = jax.lax.bitcast_convert_type(q.scale, jnp.uint8).reshape(T, -1)
    g = q.global_scale.reshape(1) if q.global_scale is not None else jnp.ones((1,), jnp.float32)
    return data, scale, g.astype(jnp.float32)


def _weight_operands(w: QTensor):
    """(data, scale bytes, global scale [E] or [1]) of FP4 weights."""
    scale = jax.lax.bitcast_convert_type(w.scale, jnp.uint8)
    if w.global_scale is None:
        g = jnp.ones((1,), jnp.float32)
    else:
        g = jnp.asarray(w.global_scale, jnp.float32).reshape(-1)
    return w.data, scale, g


def _moe(hidden_states, routing_operands, w13, w2, *, routed, top_k, num_experts, routing,
         n_group, topk_group, routed_scaling_factor, has_routing_bias, activation, swiglu_alpha,
         swiglu_beta, swiglu_limit, b13, b2, local_expert_offset, routing_weight_on_input,
         h_global_scale, do_finalize, tactic, gemm2_tactic, leading, act_fmt, E_local, H, I, w_fmt):
    T = math.prod(leading)
    K = top_k
    problem = MoEProblem(
        num_tokens=T, hidden_size=H, intermediate_size=I, num_experts=num_experts,
        num_local_experts=E_local, top_k=K, weight_format=w_fmt, act_format=act_fmt,
        routing_method=routing, n_group=n_group, topk_group=topk_group, activation=activation,
        local_expert_offset=local_expert_offset, routed=routed, has_routing_bias=has_routing_bias,
        has_b13=b13 is not None, has_b2=b2 is not None,
        routing_weight_on_input=routing_weight_on_input, do_finalize=do_finalize)
    tactics.check_problem(problem)
    float_attrs = dict(routed_scaling_factor=routed_scaling_factor, swiglu_alpha=swiglu_alpha,
                       swiglu_beta=swiglu_beta, swiglu_limit=swiglu_limit)
    tactic_is_hint = tactic is None
    if tactic is None:
        # The autotuner's choice (cached or tuned now), else AUTO: the heuristic
        # default of the platform the computation lowers to.
        tactic = _autotune.choose("fp4_moe_routed" if routed else "fp4_moe", problem, float_attrs)
    else:
        tactic = _static_int("tactic", tactic, 0)
        reason = tactics.invalid_reason(problem, tactic, tactics.tactic_platform(tactic))
        if reason:
            names = ", ".join(f"{t.id} ({t.name})" for t in tactics.valid_tactics(problem))
            raise ValueError(f"tactic: {reason}; valid tactics for this problem: {names}")
    if gemm2_tactic is not None:  # (None: GEMM2 runs GEMM1's row)
        if tactic_is_hint:
            _fail("gemm2_tactic", "None unless tactic is given too", repr(gemm2_tactic))
        gemm2_tactic = _static_int("gemm2_tactic", gemm2_tactic, 0)
        reason = tactics.gemm2_invalid_reason(problem, tactic, gemm2_tactic, tactics.tactic_platform(tactic))
        if reason:
            raise ValueError(reason)
    if T == 0:  # nothing to compute; XLA handles empty arrays without a call
        empty = jnp.zeros(leading + ((H,) if do_finalize else (K, H)), jnp.bfloat16)
        return empty if do_finalize else (empty, jnp.zeros(leading + (K,), jnp.float32),
                                          jnp.zeros(leading + (K,), jnp.int32))
    x, xs, xg = _activation_operands(hidden_states, T, H, act_fmt)
    w13_ops, w2_ops = _weight_operands(w13), _weight_operands(w2)
    empty = jnp.zeros((0,), jnp.float32)
    h_global = jnp.asarray(1.0 if h_global_scale is None else h_global_scale, jnp.float32).reshape(1)
    operands = (x, xs, xg, *routing_operands, *w13_ops, empty if b13 is None else b13,
                *w2_ops, empty if b2 is None else b2, h_global)
    attrs = _primitive.ffi_attributes(problem, **float_attrs, tactic=tactic, gemm2_tactic=gemm2_tactic)
    out, ids, weights = _primitive.bind(operands, problem, attrs, tactic_is_hint=tactic_is_hint)
    if do_finalize:
        return out.reshape(leading + (H,))
    return (out.reshape(leading + (K, H)), weights.reshape(leading + (K,)), ids.reshape(leading + (K,)))


def _common_checks(hidden_states, w13, w2, *, top_k, activation, b13, b2, local_expert_offset,
                   swiglu_alpha, swiglu_beta, swiglu_limit, h_global_scale, do_finalize):
    E_local, H, I, w_fmt = _check_weights(w13, w2)
    act_fmt, leading = _check_hidden(hidden_states, H)
    act = Activation.parse(activation)
    if h_global_scale is not None:
        if act_fmt != Format.NVFP4:
            _fail("h_global_scale", "None unless hidden_states are NVFP4", repr(h_global_scale))
        if jnp.ndim(h_global_scale) != 0:
            _fail("h_global_scale", "a scalar", _shape_str(h_global_scale))
    if not isinstance(do_finalize, bool):
        _fail("do_finalize", "a bool", repr(do_finalize), TypeError)
    return dict(
        top_k=_static_int("top_k", top_k, 1), activation=act,
        swiglu_alpha=_static_float("swiglu_alpha", swiglu_alpha),
        swiglu_beta=_static_float("swiglu_beta", swiglu_beta),
        swiglu_limit=_static_float("swiglu_limit", swiglu_limit),
        b13=_check_optional("b13", b13, (E_local, 2 * I)),
        b2=_check_optional("b2", b2, (E_local, H)),
        local_expert_offset=_static_int("local_expert_offset", local_expert_offset, 0),
        h_global_scale=h_global_scale, do_finalize=do_finalize, leading=leading, act_fmt=act_fmt,
        E_local=E_local, H=H, I=I, w_fmt=w_fmt)


def fp4_moe(
    hidden_states: ArrayLike | QTensor,
    router_logits: ArrayLike,
    w13: QTensor,
    w2: QTensor,
    *,
    top_k: int,
    routing: RoutingMethod | str | int = RoutingMethod.RENORMALIZE,
    n_group: int = 0,
    topk_group: int = 0,
    routed_scaling_factor: float = 1.0,
    routing_bias: ArrayLike | None = None,
    activation: Activation | str | int = Activation.SWIGLU,
    swiglu_alpha: float = GPT_OSS_ALPHA,
    swiglu_beta: float = GPT_OSS_BETA,
    swiglu_limit: float = GPT_OSS_LIMIT,
    b13: ArrayLike | None = None,
    b2: ArrayLike | None = None,
    local_expert_offset: int = 0,
    routing_weight_on_input: bool | None = None,
    h_global_scale: ArrayLike | None = None,
    do_finalize: bool = True,
    tactic: int | None = None,
    gemm2_tactic: int | None = None,
):
    """One fused FP4 MoE layer: routing, permutation, GEMM1 + gated activation, GEMM2, finalize.

    Usable inside `jax.jit` (one XLA custom call); runs the CUDA handler on
    Hopper GPUs and the C++ CPU handler on the CPU backend.

    Args:
      hidden_states: activations [..., H]: a float array (rounded to bf16) or a
        QTensor in MXFP8 or NVFP4 (`formats.quantize_mxfp8`/`quantize_nvfp4`,
        NVFP4 with one per-tensor global scale).
      router_logits: [..., E] router logits (any float dtype, used in fp32).
      w13: QTensor (NVFP4 or MXFP4) of logical shape [E_local, 2*I, H]; rows
        0..I-1 are the gate projection, I..2I-1 the up projection (use
        `formats.w13_from_up_first` / `w13_from_interleaved` for other orders).
      w2: QTensor of logical shape [E_local, H, I], the same format as w13.
      top_k: experts per token (static).
      routing: RoutingMethod or its name: "default", "renormalize",
        "deepseek_v3", "llama4", "topk".
      n_group, topk_group: DeepSeek-V3 grouped routing (n_group <= 1: none).
      routed_scaling_factor: DeepSeek-V3 weight scale.
      routing_bias: DeepSeek-V3 score-correction bias [E] (fp32), optional.
      activation: "swiglu", "geglu" or "swiglu_oai" (gpt-oss).
      swiglu_alpha, swiglu_beta, swiglu_limit: SWIGLU_OAI constants (gpt-oss
        defaults 1.702, 1.0, 7.0); ignored by the other activations.
      b13: optional GEMM1 bias [E_local, 2*I]; b2: optional GEMM2 bias [E_local, H].
      local_expert_offset: global id of w13[0] (expert parallelism); experts
        outside [offset, offset + E_local) contribute 0 here.
      routing_weight_on_input: scale GEMM1 by the routing weight and finalize
        with weight 1 (Llama-4). None means True for LLAMA4 routing, else False.
        Applied to the fp32 GEMM1 accumulator before the bias, which equals
        scaling the input row.
      h_global_scale: NVFP4 activations only: fp32 global encode scale used to
        re-quantize h before GEMM2 (default 1.0; a calibrated 448*6/amax(h)
        keeps small blocks out of e4m3's subnormal range).
      do_finalize: True returns out [..., H]; False returns the per-(token, k)
        rows (y [..., K, H] bf16, weights [..., K] fp32, ids [..., K] int32),
        with y = 0 for non-local experts.
      tactic: kernel configuration id (static; see `jax_moe.valid_tactics`).
        None: the autotuner's tactic for this problem and token bucket (from
        its cache, or tuned now inside `jax_moe.autotune()`), else the
        heuristic default of the platform the computation lowers to.
      gemm2_tactic: the row GEMM2 runs (static; needs an explicit `tactic`
        of the same token tile). None: the same row as GEMM1.

    Returns:
      bf16 [..., H] (do_finalize) or the tuple described above.

    Raises:
      ValueError / TypeError at trace time for any invalid argument.
    """
    c = _common_checks(hidden_states, w13, w2, top_k=top_k, activation=activation, b13=b13, b2=b2,
                       local_expert_offset=local_expert_offset, swiglu_alpha=swiglu_alpha,
                       swiglu_beta=swiglu_beta, swiglu_limit=swiglu_limit,
                       h_global_scale=h_global_scale, do_finalize=do_finalize)
    method = RoutingMethod.parse(routing)
    if not hasattr(router_logits, "shape") or not jnp.issubdtype(router_logits.dtype, jnp.floating):
        _fail("router_logits", "a floating-point array [..., E]", _shape_str(router_logits), TypeError)
    if tuple(router_logits.shape[:-1]) != c["leading"] or router_logits.ndim < 1:
        _fail("router_logits", f"shape {c['leading'] + ('E',)} (leading dims of hidden_states)",
              _shape_str(router_logits))
    E = int(router_logits.shape[-1])
    bias = _check_optional("routing_bias", routing_bias, (E,))
    if bias is not None and method != RoutingMethod.DEEPSEEK_V3:
        _fail("routing_bias", "None (only DEEPSEEK_V3 routing uses a bias)", "an array")
    if routing_weight_on_input is None:
        routing_weight_on_input = method == RoutingMethod.LLAMA4
    T = math.prod(c["leading"])
    logits = jnp.asarray(router_logits, jnp.float32).reshape(T, E)
    return _moe(hidden_states, (logits, jnp.zeros((0,), jnp.float32) if bias is None else bias),
                w13, w2, routed=False, num_experts=E, routing=method,
                n_group=_static_int("n_group", n_group, 0),
                topk_group=_static_int("topk_group", topk_group, 0),
                routed_scaling_factor=_static_float("routed_scaling_factor", routed_scaling_factor),
                has_routing_bias=bias is not None,
                routing_weight_on_input=bool(routing_weight_on_input), tactic=tactic, gemm2_tactic=gemm2_tactic, **c)


def fp4_moe_routed(
    hidden_states: ArrayLike | QTensor,
    topk_ids: ArrayLike,
    topk_weights: ArrayLike,
    w13: QTensor,
    w2: QTensor,
    *,
    num_experts: int | None = None,
    activation: Activation | str | int = Activation.SWIGLU,
    swiglu_alpha: float = GPT_OSS_ALPHA,
    swiglu_beta: float = GPT_OSS_BETA,
    swiglu_limit: float = GPT_OSS_LIMIT,
    b13: ArrayLike | None = None,
    b2: ArrayLike | None = None,
    local_expert_offset: int = 0,
    routing_weight_on_input: bool = False,
    h_global_scale: ArrayLike | None = None,
    do_finalize: bool = True,
    tactic: int | None = None,
    gemm2_tactic: int | None = None,
):
    """`fp4_moe` with precomputed routing: top-k expert ids and their weights.

    Args:
      topk_ids: int [..., K] global expert ids (ids outside the local range,
        including out-of-range ones, contribute 0).
      topk_weights: float [..., K] routing weights (used in fp32).
      num_experts: global expert count E (default: local_expert_offset + E_local).
      Others: as in `fp4_moe`.
    """
    if not hasattr(topk_ids, "shape") or not jnp.issubdtype(topk_ids.dtype, jnp.integer):
        _fail("topk_ids", "an integer array [..., K]", getattr(topk_ids, "dtype", type(topk_ids).__name__), TypeError)
    if topk_ids.ndim < 1:
        _fail("topk_ids", "shape [..., K]", _shape_str(topk_ids))
    K = int(topk_ids.shape[-1])
    c = _common_checks(hidden_states, w13, w2, top_k=K, activation=activation, b13=b13, b2=b2,
                       local_expert_offset=local_expert_offset, swiglu_alpha=swiglu_alpha,
                       swiglu_beta=swiglu_beta, swiglu_limit=swiglu_limit,
                       h_global_scale=h_global_scale, do_finalize=do_finalize)
    if tuple(topk_ids.shape[:-1]) != c["leading"]:
        _fail("topk_ids", f"shape {c['leading'] + (K,)} (leading dims of hidden_states)", _shape_str(topk_ids))
    if not hasattr(topk_weights, "shape") or tuple(topk_weights.shape) != tuple(topk_ids.shape):
        _fail("topk_weights", f"shape {tuple(topk_ids.shape)} (as topk_ids)", _shape_str(topk_weights))
    if not jnp.issubdtype(topk_weights.dtype, jnp.floating):
        _fail("topk_weights", "a floating-point dtype", str(topk_weights.dtype), TypeError)
    E = c["local_expert_offset"] + c["E_local"] if num_experts is None else _static_int("num_experts", num_experts, 1)
    if not isinstance(routing_weight_on_input, bool):
        _fail("routing_weight_on_input", "a bool", repr(routing_weight_on_input), TypeError)
    T = math.prod(c["leading"])
    ids = jnp.asarray(topk_ids, jnp.int32).reshape(T, K)
    weights = jnp.asarray(topk_weights, jnp.float32).reshape(T, K)
    return _moe(hidden_states, (ids, weights), w13, w2, routed=True, num_experts=E,
                routing=RoutingMethod.TOPK, n_group=0, topk_group=0, routed_scaling_factor=1.0,
                has_routing_bias=False, routing_weight_on_input=routing_weight_on_input,
                tactic=tactic, gemm2_tactic=gemm2_tactic, **c)
