"""The `jax_moe_fp4_moe` primitive: abstract eval, lowering, batching, no AD.

Both public ops (`fp4_moe`, `fp4_moe_routed`) bind this one primitive; it
lowers to exactly one XLA FFI custom call whose static attributes carry the
routing method, formats, activation, local expert range and the tactic.
Operand and result order are documented in ffi_src/common/ffi_glue.h.

Parameters of the primitive that are not FFI attributes: `target` (the FFI
target name) and `problem` (the MoEProblem, used for shapes and batching).
"""

from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jex_core
from jax.interpreters import ad, batching, mlir

from jax_moe import _extension, tactics
from jax_moe.problem import MoEProblem

fp4_moe_p = jex_core.Primitive("jax_moe_fp4_moe")
fp4_moe_p.multiple_results = True

# Operands whose leading dimension is the token dimension.
_TOKEN_OPERANDS_LOGITS = (0, 1, 3)
_TOKEN_OPERANDS_ROUTED = (0, 1, 3, 4)


def _workspace_bytes(problem: MoEProblem, tactic: int, gemm2_tactic: int, tactic_is_hint: bool) -> int:
    """A hinted tactic may be replaced by a platform default when lowering: size for both."""
    need = tactics.workspace_bytes(problem, tactic, gemm2_tactic)
    return max(need, tactics.workspace_bytes(problem, tactics.AUTO)) if tactic_is_hint else need


def _result_avals(problem: MoEProblem, tactic: int, gemm2_tactic: int,
                  tactic_is_hint: bool = False) -> tuple[jax.core.ShapedArray, ...]:
    T, H, K = problem.num_tokens, problem.hidden_size, problem.top_k
    out_shape = (T, H) if problem.do_finalize else (T, K, H)
    return (
        jax.core.ShapedArray(out_shape, jnp.bfloat16),
        jax.core.ShapedArray((T, K), jnp.int32),
        jax.core.ShapedArray((T, K), jnp.float32),
        jax.core.ShapedArray((_workspace_bytes(problem, tactic, gemm2_tactic, tactic_is_hint),), jnp.uint8),
    )


def _abstract_eval(*avals, target: str, problem: MoEProblem, tactic_is_hint: bool, **attrs):
    del avals, target
    return _result_avals(problem, attrs["tactic"], attrs["gemm2_tactic"], tactic_is_hint)


def _impl(*args, **params):
    return jax.jit(lambda *a: fp4_moe_p.bind(*a, **params))(*args)


def _lowering(platform: str):
    def rule(ctx, *args, target: str, problem: MoEProblem, tactic_is_hint: bool, **attrs):
        if platform == "cuda" and not _extension.has_cuda():
            raise RuntimeError(
                "jax_moe was built without its CUDA handlers (no CUDA compiler at build time, or "
                "this version has none): run on the CPU or use jax_moe.reference."
            )
        tactic = tactics.resolve(problem, attrs["tactic"], platform)
        gemm2 = attrs["gemm2_tactic"]  # -1: the same row as GEMM1
        if tactic_is_hint and tactics.invalid_reason(problem, tactic, platform):
            tactic, gemm2 = tactics.default_tactic(problem, platform), -1  # tuned for another platform
        reason = tactics.invalid_reason(problem, tactic, platform)
        if reason:
            raise ValueError(
                f"fp4_moe: {reason}, but the computation lowers for {platform!r}. Pass a "
                f"{platform} tactic (see jax_moe.valid_tactics(problem, {platform!r})) or "
                f"tactic=None for the platform's default."
            )
        reason = tactics.gemm2_invalid_reason(problem, tactic, gemm2, platform) if gemm2 >= 0 else ""
        if reason:
            raise ValueError(f"fp4_moe: {reason} (lowering for {platform!r})")
        return jax.ffi.ffi_lowering(target)(ctx, *args, **{**attrs, "tactic": tactic, "gemm2_tactic": gemm2})

    return rule


def _no_differentiation(primals, tangents, **params):
    raise TypeError(
        "jax_moe.fp4_moe is an inference-only op and cannot be differentiated: its expert weights "
        "are FP4 constants. Wrap its inputs in jax.lax.stop_gradient if the surrounding model is "
        "differentiated, or use jax_moe.reference for a differentiable jnp formulation."
    )


def _batch(args, dims, *, target: str, problem: MoEProblem, tactic_is_hint: bool, **attrs):
    """vmap: fold the batch into the token dimension when only per-token
    operands are batched (one call over B*T tokens); otherwise map sequentially."""
    token_ops = _TOKEN_OPERANDS_ROUTED if problem.routed else _TOKEN_OPERANDS_LOGITS
    batched = [i for i, d in enumerate(dims) if d is not None]
    size = next(a.shape[d] for a, d in zip(args, dims) if d is not None)
    per_token = set(token_ops) - ({1} if args[1].size == 0 else set())
    if set(batched) <= per_token:
        moved = [jnp.moveaxis(a, d, 0) if d is not None else a for a, d in zip(args, dims)]
        flat = [
            a.reshape((-1,) + a.shape[2:]) if i in batched else a for i, a in enumerate(moved)
        ]
        unbatched_tokens = [i for i in per_token if i not in batched]
        flat = [
            jnp.broadcast_to(a, (size,) + a.shape).reshape((-1,) + a.shape[1:]) if i in unbatched_tokens else a
            for i, a in enumerate(flat)
        ]
        big = problem.with_tokens(size * problem.num_tokens)
        tactic, gemm2 = attrs["tactic"], attrs["gemm2_tactic"]
        if tactic != tactics.AUTO and tactics.invalid_reason(big, tactic, tactics.tactic_platform(tactic)):
            tactic, gemm2 = tactics.AUTO, -1
        outs = fp4_moe_p.bind(*flat, target=target, problem=big, tactic_is_hint=tactic_is_hint,
                              **{**attrs, "tactic": tactic, "gemm2_tactic": gemm2})
        out, ids, weights, ws = outs
        unflat = [o.reshape((size, problem.num_tokens) + o.shape[1:]) for o in (out, ids, weights)]
        return [*unflat, ws], [0, 0, 0, None]
    moved = [jnp.moveaxis(a, d, 0) if d is not None else None for a, d in zip(args, dims)]

    def one(xs):
        full = [x if x is not None else a for x, a in zip(xs, args)]
        return fp4_moe_p.bind(*full, target=target, problem=problem, tactic_is_hint=tactic_is_hint, **attrs)

    outs = jax.lax.map(one, moved)
    return list(outs), [0, 0, 0, 0]


fp4_moe_p.def_abstract_eval(_abstract_eval)
fp4_moe_p.def_impl(_impl)
mlir.register_lowering(fp4_moe_p, _lowering("cpu"), platform="cpu")
mlir.register_lowering(fp4_moe_p, _lowering("cuda"), platform="cuda")
ad.primitive_jvps[fp4_moe_p] = _no_differentiation
batching.primitive_batchers[fp4_moe_p] = _batch


def ffi_attributes(problem: MoEProblem, *, routed_scaling_factor: float, swiglu_alpha: float,
                   swiglu_beta: float, swiglu_limit: float, tactic: int,
                   gemm2_tactic: int | None = None) -> dict:
    """The typed static attributes of the custom call (see MoeAttrs in ffi_glue.h).

    `gemm2_tactic`: GEMM2's row; None: the same as `tactic` (whatever it
    resolves to when lowering), sent as -1.
    """
    return dict(
        routing_method=int(problem.routing_method),
        top_k=int(problem.top_k),
        n_group=int(problem.n_group),
        topk_group=int(problem.topk_group),
        routed_scaling_factor=np.float32(routed_scaling_factor),
        activation=int(problem.activation),
        swiglu_alpha=np.float32(swiglu_alpha),
        swiglu_beta=np.float32(swiglu_beta),
        swiglu_limit=np.float32(swiglu_limit),
        weight_format=int(problem.weight_format),
        act_format=int(problem.act_format),
        num_experts=int(problem.num_experts),
        local_expert_offset=int(problem.local_expert_offset),
        routing_weight_on_input=bool(problem.routing_weight_on_input),
        do_finalize=bool(problem.do_finalize),
        tactic=int(tactic),
        gemm2_tactic=-1 if gemm2_tactic is None else int(gemm2_tactic),
    )


def bind(operands, problem: MoEProblem, attrs: dict, *, tactic_is_hint: bool = False):
    """Binds the primitive; returns (out, topk_ids, topk_weights) without the workspace.

    `tactic_is_hint`: the tactic came from the autotuner, not the caller; if it
    does not fit the platform the computation lowers to, that platform's
    default replaces it (an explicit tactic that does not fit is an error).
    """
    _extension.register_targets()
    target = "jax_moe_fp4_moe_routed" if problem.routed else "jax_moe_fp4_moe"
    out, ids, weights, _ = fp4_moe_p.bind(*operands, target=target, problem=problem,
                                          tactic_is_hint=tactic_is_hint, **attrs)
    return out, ids, weights


__all__ = ["fp4_moe_p", "bind", "ffi_attributes"]
