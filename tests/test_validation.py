"""Every trace-time check of fp4_moe / fp4_moe_routed raises a clear error
naming the argument, and handler-level errors surface as Python exceptions."""

import jax
import numpy as np
import jax.numpy as jnp
import pytest

import jax_moe
from jax_moe import formats
from jax_moe.formats import Format
from jax_moe.routing import RoutingMethod
from moe_cases import make_case


@pytest.fixture(scope="module")
def case():
    return make_case(T=8, H=64, I=32, E=4, top_k=2)


def call(case, **over):
    args = dict(hidden_states=case.hidden, router_logits=case.logits, w13=case.w13, w2=case.w2)
    kw = {**case.kwargs}
    for k, v in over.items():
        (args if k in args else kw)[k] = v
    return jax_moe.fp4_moe(args.pop("hidden_states"), args.pop("router_logits"), args.pop("w13"),
                           args.pop("w2"), **kw)


@pytest.mark.parametrize("over,exc,match", [
    (dict(w13="nope"), TypeError, r"w13: expected a jax_moe.formats.QTensor"),
    (dict(hidden_states=jnp.zeros((8, 65))), ValueError, r"hidden_states: expected shape \[\.\.\., 64\]"),
    (dict(hidden_states=jnp.zeros((8, 64), jnp.int32)), TypeError, r"hidden_states: expected a floating"),
    (dict(router_logits=jnp.zeros((7, 4))), ValueError, r"router_logits: expected shape \(8, 'E'\)"),
    (dict(router_logits=jnp.zeros((8, 4), jnp.int32)), TypeError, r"router_logits"),
    (dict(top_k=0), ValueError, r"top_k: expected an int >= 1"),
    (dict(top_k=5), ValueError, r"top_k must be in"),
    (dict(top_k=2.0), TypeError, r"top_k: expected a Python int"),
    (dict(routing="softmaxx"), ValueError, r"softmaxx"),
    (dict(activation="relu"), ValueError, r"relu"),
    (dict(routing=RoutingMethod.LLAMA4), ValueError, r"LLAMA4 routing needs top_k == 1"),
    (dict(routing_bias=jnp.zeros((4,))), ValueError, r"routing_bias: expected None"),
    (dict(routing=RoutingMethod.DEEPSEEK_V3, routing_bias=jnp.zeros((5,))), ValueError, r"routing_bias: expected shape \(4,\)"),
    (dict(routing=RoutingMethod.DEEPSEEK_V3, n_group=3), ValueError, r"n_group \(3\) must divide"),
    (dict(routing=RoutingMethod.DEEPSEEK_V3, n_group=2, topk_group=3), ValueError, r"topk_group"),
    (dict(b13=jnp.zeros((4, 63))), ValueError, r"b13: expected shape \(4, 64\)"),
    (dict(b2=jnp.zeros((4, 64), jnp.int32)), TypeError, r"b2: expected a floating"),
    (dict(local_expert_offset=-1), ValueError, r"local_expert_offset: expected an int >= 0"),
    (dict(local_expert_offset=1), ValueError, r"local experts \[1, 5\) must lie inside \[0, 4\)"),
    (dict(tactic=99), ValueError, r"tactic: tactic 99 is not in the table"),
    (dict(swiglu_limit=float("inf")), ValueError, r"swiglu_limit: expected a finite float"),
    (dict(do_finalize=1), TypeError, r"do_finalize: expected a bool"),
    (dict(h_global_scale=jnp.float32(2.0)), ValueError, r"h_global_scale: expected None unless"),
])
def test_bad_arguments(case, over, exc, match):
    with pytest.raises(exc, match=match):
        call(case, **over)


def test_weights_must_agree(case):
    w2_mx = formats.quantize_mxfp4(jnp.ones((4, 64, 32)))
    with pytest.raises(ValueError, match=r"w2: expected the same format as w13 \(NVFP4\)"):
        call(case, w2=w2_mx)
    w2_bad = formats.quantize_nvfp4(jax.random.normal(jax.random.key(0), (4, 64, 48)))
    with pytest.raises(ValueError, match=r"w2: expected logical shape \(4, 64, 32\)"):
        call(case, w2=w2_bad)
    w13_odd = formats.quantize_nvfp4(jax.random.normal(jax.random.key(0), (4, 3, 64)))
    with pytest.raises(ValueError, match=r"w13: expected an even number of rows"):
        call(case, w13=w13_odd)
    with pytest.raises(ValueError, match=r"w13: expected NVFP4 or MXFP4 weights, got MXFP8"):
        call(case, w13=formats.quantize_mxfp8(jnp.ones((4, 64, 64))))


def test_wrong_layout_is_rejected(case):
    relaid = formats.QTensor(case.w13.data, case.w13.scale, case.w13.global_scale, Format.NVFP4,
                             layout="interleaved_gate_up")
    with pytest.raises(ValueError, match=r"w13: expected layout 'linear'"):
        call(case, w13=relaid)


def test_activation_format_constraints(case):
    with pytest.raises(ValueError, match=r"hidden_states: expected bf16 data or a QTensor in MXFP8 or NVFP4"):
        call(case, hidden_states=formats.quantize_mxfp4(jnp.ones((8, 64))))
    nv_per_row = formats.quantize_nvfp4(jax.random.normal(jax.random.key(1), (8, 64)), per_expert=True)
    with pytest.raises(ValueError, match=r"hidden_states.global_scale: expected a scalar"):
        call(case, hidden_states=nv_per_row)
    # MXFP8 needs I to be a multiple of 32 for the re-quantization of h.
    c2 = make_case(T=4, H=64, I=48, E=4, top_k=2)
    with pytest.raises(ValueError, match=r"multiples of the activation block 32"):
        call(c2, hidden_states=formats.quantize_mxfp8(jnp.ones((4, 64))))


def test_routed_validation(case):
    ids = jnp.zeros((8, 2), jnp.int32)
    w = jnp.ones((8, 2))
    with pytest.raises(TypeError, match=r"topk_ids: expected an integer array"):
        jax_moe.fp4_moe_routed(case.hidden, w, w, case.w13, case.w2)
    with pytest.raises(ValueError, match=r"topk_weights: expected shape \(8, 2\)"):
        jax_moe.fp4_moe_routed(case.hidden, ids, w[:, :1], case.w13, case.w2)
    with pytest.raises(ValueError, match=r"topk_ids: expected shape \(8, 2\)"):
        jax_moe.fp4_moe_routed(case.hidden, ids[:4], w[:4], case.w13, case.w2)
    with pytest.raises(TypeError, match=r"routing_weight_on_input: expected a bool"):
        jax_moe.fp4_moe_routed(case.hidden, ids, w, case.w13, case.w2, routing_weight_on_input=None)


def test_handler_errors_surface_as_exceptions(case):
    """A call that bypasses Python validation gets a clean error from C++, not a crash."""
    from jax_moe import _primitive

    problem = jax_moe.MoEProblem(8, 64, 32, 4, 4, 2)
    attrs = _primitive.ffi_attributes(problem, routed_scaling_factor=1.0, swiglu_alpha=1.0,
                                      swiglu_beta=0.0, swiglu_limit=1.0, tactic=0)
    attrs["weight_format"] = 3  # MXFP8 weights: refused by the handler's own checks
    w13 = case.w13
    ops = (case.hidden, jnp.zeros((0,), jnp.uint8), jnp.ones((1,)), case.logits, jnp.zeros((0,)),
           w13.data, jax.lax.bitcast_convert_type(w13.scale, jnp.uint8), w13.global_scale,
           jnp.zeros((0,)), case.w2.data, jax.lax.bitcast_convert_type(case.w2.scale, jnp.uint8),
           case.w2.global_scale, jnp.zeros((0,)), jnp.ones((1,)))
    with pytest.raises(Exception, match=r"weight_format must be NVFP4 or MXFP4"):
        jax.block_until_ready(_primitive.bind(ops, problem, attrs))


def test_tactic_of_another_platform_is_a_lowering_error():
    """tactic=None resolves per lowering platform; an explicit CUDA tactic on the CPU fails clearly."""
    import jax_moe
    from jax_moe import tactics

    cuda = [t for t in tactics.tactic_table() if t.platform == "cuda"]
    if not cuda or jax.default_backend() != "cpu":
        pytest.skip("needs a build with CUDA tactics, lowering for the CPU")
    case = make_case(T=4, H=64, I=32, E=4, top_k=2)
    f = jax.jit(lambda h, l: jax_moe.fp4_moe(h, l, case.w13, case.w2, **case.kwargs, tactic=cuda[0].id))
    with pytest.raises(ValueError, match="lowers for 'cpu'"):
        f(case.hidden, case.logits)


def test_gemm2_tactic_validation(case):
    """gemm2_tactic needs an explicit tactic of the same token tile and platform;
    naming GEMM1's own row runs the same program as leaving it out."""
    from jax_moe import tactics

    cpu = [t for t in tactics.tactic_table() if t.platform == "cpu"]
    with pytest.raises(ValueError, match="gemm2_tactic: expected None unless tactic is given too"):
        call(case, gemm2_tactic=cpu[0].id)
    with pytest.raises(ValueError, match="must match"):
        call(case, tactic=cpu[0].id, gemm2_tactic=cpu[1].id)  # CPU rows: 4, 16, 64-token tiles
    with pytest.raises(ValueError, match="not in the table"):
        call(case, tactic=cpu[0].id, gemm2_tactic=10_000)
    with pytest.raises(TypeError, match="gemm2_tactic"):
        call(case, tactic=cpu[0].id, gemm2_tactic=1.5)
    if jax.default_backend() == "cpu":
        out = call(case, tactic=cpu[1].id, gemm2_tactic=cpu[1].id)
        np.testing.assert_array_equal(np.asarray(out, np.float32),
                                      np.asarray(call(case, tactic=cpu[1].id), np.float32))
        assert not np.isnan(np.asarray(out, np.float32)).any()
