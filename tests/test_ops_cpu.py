"""The C++ CPU handler against the jnp reference, over every routing method x
activation x weight format x activation format, odd shapes and loads."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_moe
from jax_moe import formats, reference
from jax_moe.activation import Activation
from jax_moe.formats import Format
from jax_moe.routing import RoutingMethod
from moe_cases import assert_close, make_case, run_op_and_reference as _run_both

# fp32 accumulation on both sides; differences come from summation order and,
# rarely, a bf16 / e2m1 rounding of h that lands on the other side of a tie.
REL_TOL = 5e-3

ALL_COMBOS = list(itertools.product(RoutingMethod, Activation, (Format.NVFP4, Format.MXFP4),
                                    (Format.BF16, Format.MXFP8, Format.NVFP4)))


@pytest.mark.parametrize("method,act,wfmt,afmt", ALL_COMBOS,
                         ids=lambda v: v.name.lower() if hasattr(v, "name") else str(v))
def test_every_combination(method, act, wfmt, afmt):
    # H, I > 128 and not powers of two; E does not divide T*K.
    case = make_case(T=37, H=288, I=160, E=12, top_k=3, routing=method, activation=act,
                     weight_format=wfmt, act_format=afmt, biases=act == Activation.SWIGLU_OAI)
    out, ref = _run_both(case)
    assert out.dtype == jnp.bfloat16 and out.shape == (37, 288)
    assert_close(out, ref, rel=REL_TOL)


@pytest.mark.parametrize("T", [1, 7, 64, 300])
@pytest.mark.parametrize("wfmt", [Format.NVFP4, Format.MXFP4])
def test_token_counts(T, wfmt):
    case = make_case(T=T, H=256, I=96, E=16, top_k=4, weight_format=wfmt)
    out, ref = _run_both(case)
    assert_close(out, ref, rel=REL_TOL)


def test_deepseek_v3_model_routing():
    """DeepSeek-V3 routing as the model uses it: 8 groups, keep 4, top-8, scale 2.5."""
    case = make_case(T=64, H=128, I=64, E=64, top_k=8, routing=RoutingMethod.DEEPSEEK_V3)
    case.kwargs.update(n_group=8, topk_group=4, top_k=8)
    out, ref = _run_both(case)
    assert_close(out, ref, rel=REL_TOL)


def test_all_tokens_to_one_expert_and_empty_experts():
    """Every token picks expert 5 (others empty): one expert spans many tiles."""
    T, E = 70, 8
    logits = jnp.zeros((T, E)).at[:, 5].set(10.0) + 0.01 * jax.random.normal(jax.random.key(3), (T, E))
    case = make_case(T=T, H=128, I=64, E=E, top_k=1, routing=RoutingMethod.TOPK, logits=logits)
    out, ref = _run_both(case)
    assert_close(out, ref, rel=REL_TOL)


def test_tokens_routed_to_all_experts():
    case = make_case(T=5, H=128, I=64, E=8, top_k=8)
    out, ref = _run_both(case)
    assert_close(out, ref, rel=REL_TOL)


@pytest.mark.parametrize("offset,E_local", [(0, 4), (4, 4), (3, 2), (7, 1)])
def test_local_expert_range(offset, E_local):
    """Expert parallelism: only [offset, offset + E_local) contributes."""
    case = make_case(T=40, H=128, I=64, E=8, top_k=2, E_local=E_local, local_expert_offset=offset)
    out, ref = _run_both(case)
    assert_close(out, ref, rel=REL_TOL)


def test_no_token_routed_here_gives_zeros():
    T, E = 9, 8
    logits = jnp.zeros((T, E)).at[:, 0].set(5.0).at[:, 1].set(4.0)
    case = make_case(T=T, H=64, I=32, E=E, top_k=2, E_local=4, local_expert_offset=4, logits=logits)
    out, _ = _run_both(case)
    np.testing.assert_array_equal(np.asarray(out, np.float32), 0.0)


@pytest.mark.parametrize("afmt", [Format.BF16, Format.MXFP8])
def test_do_finalize_false(afmt):
    case = make_case(T=33, H=128, I=64, E=8, top_k=3, E_local=6, local_expert_offset=1, act_format=afmt)
    (y, w, ids), (ry, rw, rids) = _run_both(case, do_finalize=False)
    assert y.shape == (33, 3, 128) and w.dtype == jnp.float32 and ids.dtype == jnp.int32
    np.testing.assert_array_equal(ids, rids)
    np.testing.assert_allclose(w, rw, rtol=1e-6)
    assert_close(y, ry, rel=REL_TOL)
    # Rows of non-local experts are exactly zero.
    nonlocal_rows = np.asarray((ids < 1) | (ids >= 7))
    assert nonlocal_rows.any()
    np.testing.assert_array_equal(np.asarray(y, np.float32)[nonlocal_rows], 0.0)


def test_llama4_weight_on_input():
    case = make_case(T=21, H=128, I=64, E=16, top_k=1, routing=RoutingMethod.LLAMA4)
    out, ref = _run_both(case)  # routing_weight_on_input defaults to True for LLAMA4
    assert_close(out, ref, rel=REL_TOL)
    out_in, _ = _run_both(case, routing_weight_on_input=False)
    assert float(jnp.abs(out.astype(jnp.float32) - out_in.astype(jnp.float32)).max()) > 0


@pytest.mark.parametrize("on_input", [False, True])
def test_routed_variant(on_input):
    case = make_case(T=50, H=128, I=64, E=8, top_k=2, E_local=6, local_expert_offset=2)
    k = jax.random.split(jax.random.key(11), 2)
    ids = jax.random.randint(k[0], (50, 2), 0, 8)
    weights = jax.random.uniform(k[1], (50, 2), minval=0.1, maxval=1.0)
    kw = dict(local_expert_offset=2, routing_weight_on_input=on_input)
    out = jax.jit(lambda *a: jax_moe.fp4_moe_routed(*a, **kw))(case.hidden, ids, weights, case.w13, case.w2)
    ref = reference.moe_reference_routed(case.hidden, ids, weights, case.w13, case.w2, **kw)
    assert_close(out, ref, rel=REL_TOL)


@pytest.mark.parametrize("tactic", [t.id for t in jax_moe.valid_tactics(jax_moe.MoEProblem(64, 128, 64, 8, 8, 2), "cpu")])
def test_every_cpu_tactic(tactic):
    case = make_case(T=64, H=128, I=64, E=8, top_k=2)
    out, ref = _run_both(case, tactic=tactic)
    assert_close(out, ref, rel=REL_TOL)


def test_tactics_agree_bitwise_and_runs_are_deterministic():
    case = make_case(T=80, H=128, I=64, E=8, top_k=2)
    outs = [_run_both(case, tactic=t.id)[0] for t in jax_moe.valid_tactics(
        jax_moe.MoEProblem(80, 128, 64, 8, 8, 2), "cpu")]
    again = _run_both(case, tactic=outs and 0)[0]
    np.testing.assert_array_equal(np.asarray(outs[0], np.float32), np.asarray(again, np.float32))
    for o in outs[1:]:  # the same per-row fp32 math whatever the blocking
        np.testing.assert_array_equal(np.asarray(o, np.float32), np.asarray(outs[0], np.float32))


def test_leading_batch_dims():
    case = make_case(T=0, H=128, I=64, E=8, top_k=2, leading=(3, 5))
    out, ref = _run_both(case)
    assert out.shape == (3, 5, 128)
    assert_close(out, ref, rel=REL_TOL)


def test_vmap_folds_tokens():
    case = make_case(T=0, H=128, I=64, E=8, top_k=2, leading=(4, 6))
    kw = case.kwargs
    f = lambda h, l: jax_moe.fp4_moe(h, l, case.w13, case.w2, **kw)
    out = jax.jit(jax.vmap(f))(case.hidden, case.logits)
    ref = reference.moe_reference(case.hidden, case.logits, case.w13, case.w2, **kw)
    assert_close(out, ref, rel=REL_TOL)
    # Only one custom call: the batch is folded into the token dimension.
    hlo = jax.jit(jax.vmap(f)).lower(case.hidden, case.logits).as_text()
    assert hlo.count("jax_moe_fp4_moe") == 1


def test_vmap_over_expert_weights_maps_sequentially():
    """Batched weights (e.g. two layers' experts) fall back to a sequential map."""
    case = make_case(T=6, H=64, I=32, E=4, top_k=2)
    leaves = [jnp.stack([a, 2 * a if a.dtype == jnp.float32 else a])
              for w in (case.w13, case.w2) for a in (w.data, w.scale, w.global_scale)]

    def f(d13, s13, g13, d2, s2, g2):
        w13 = formats.QTensor(d13, s13, g13, Format.NVFP4)
        w2 = formats.QTensor(d2, s2, g2, Format.NVFP4)
        return jax_moe.fp4_moe(case.hidden, case.logits, w13, w2, **case.kwargs)

    out = jax.vmap(f)(*leaves)
    for i in range(2):
        w13, w2 = (formats.QTensor(*(a[i] for a in leaves[j:j + 3]), Format.NVFP4) for j in (0, 3))
        ref = reference.moe_reference(case.hidden, case.logits, w13, w2, **case.kwargs)
        assert_close(out[i], ref, rel=REL_TOL)


def test_lowers_to_one_custom_call_with_static_attributes():
    case = make_case(T=8, H=64, I=32, E=4, top_k=2, routing=RoutingMethod.DEEPSEEK_V3)
    f = jax.jit(lambda h, l: jax_moe.fp4_moe(h, l, case.w13, case.w2, **case.kwargs, tactic=1))
    text = f.lower(case.hidden, case.logits).as_text()
    assert text.count("stablehlo.custom_call @jax_moe_fp4_moe") == 1
    for attr in ("routing_method = 2", "tactic = 1", "top_k = 2", "n_group = 4", "weight_format = 1"):
        assert attr in text.replace(" : i64", ""), attr


def test_compiles_once_per_shape():
    case = make_case(T=16, H=64, I=32, E=4, top_k=2)
    traces = []

    @jax.jit
    def f(h, l):
        traces.append(1)
        return jax_moe.fp4_moe(h, l, case.w13, case.w2, **case.kwargs)

    for _ in range(3):
        f(case.hidden, case.logits).block_until_ready()
    f(case.hidden * 2, case.logits + 1).block_until_ready()
    assert len(traces) == 1
    f(case.hidden[:8], case.logits[:8])
    assert len(traces) == 2


def test_grad_raises_clear_error():
    case = make_case(T=4, H=64, I=32, E=4, top_k=2)
    loss = lambda h: jax_moe.fp4_moe(h, case.logits, case.w13, case.w2, **case.kwargs).astype(jnp.float32).sum()
    with pytest.raises(TypeError, match="cannot be differentiated"):
        jax.grad(loss)(case.hidden.astype(jnp.float32))


def test_float32_hidden_states_are_rounded_to_bf16():
    case = make_case(T=8, H=64, I=32, E=4, top_k=2)
    x32 = jax.random.normal(jax.random.key(5), (8, 64))
    a = jax_moe.fp4_moe(x32, case.logits, case.w13, case.w2, **case.kwargs)
    b = jax_moe.fp4_moe(x32.astype(jnp.bfloat16), case.logits, case.w13, case.w2, **case.kwargs)
    np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))


def test_eager_call_works():
    case = make_case(T=3, H=64, I=32, E=4, top_k=2)
    out = jax_moe.fp4_moe(case.hidden, case.logits, case.w13, case.w2, **case.kwargs)
    ref = reference.moe_reference(case.hidden, case.logits, case.w13, case.w2, **case.kwargs)
    assert_close(out, ref, rel=REL_TOL)
