"""GPU handler vs the jnp reference (issue "GPU pipeline"). Marked `gpu`: skipped
without a GPU; on a GPU machine these fail until the CUDA handlers exist,
because `fp4_moe` then refuses to lower for CUDA (never a silent pass)."""

import itertools

import pytest

import jax_moe
from jax_moe.activation import Activation
from jax_moe.formats import Format
from jax_moe.models import MODELS
from jax_moe.routing import RoutingMethod
from moe_cases import assert_close, make_case, run_op_and_reference

pytestmark = pytest.mark.gpu

REL_TOL = 1e-2  # bf16 tensor-core MMAs vs the fp32 oracle

COMBOS = list(itertools.product(RoutingMethod, Activation, (Format.NVFP4, Format.MXFP4),
                                (Format.BF16, Format.MXFP8, Format.NVFP4)))


def _check(case, **extra):
    assert_close(*run_op_and_reference(case, **extra), rel=REL_TOL)


@pytest.mark.parametrize("method,act,wfmt,afmt", COMBOS,
                         ids=lambda v: v.name.lower() if hasattr(v, "name") else str(v))
def test_every_combination(method, act, wfmt, afmt):
    _check(make_case(T=64, H=2048, I=768, E=32, top_k=4, routing=method, activation=act,
                     weight_format=wfmt, act_format=afmt, biases=act == Activation.SWIGLU_OAI))


@pytest.mark.parametrize("T", [1, 3, 64, 1000, 4096])
@pytest.mark.parametrize("H,I", [(2048, 768), (2880, 2880), (7168, 2048), (1056, 352)])
def test_token_counts_and_sizes(T, H, I):
    _check(make_case(T=T, H=H, I=I, E=16, top_k=4))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_model_shapes(name):
    m = MODELS[name]
    case = make_case(T=128, H=m.hidden_size, I=m.intermediate_size, E=m.num_experts,
                     top_k=m.top_k, routing=m.routing, activation=m.activation, biases=m.biases)
    case.kwargs.update(m.routing_kwargs())
    _check(case)


def test_every_gpu_tactic():
    for shape in [dict(T=7, H=2048, I=768, E=16, top_k=4), dict(T=1000, H=2880, I=2880, E=32, top_k=4)]:
        case = make_case(**shape)
        problem = jax_moe.MoEProblem(shape["T"], shape["H"], shape["I"], shape["E"], shape["E"], shape["top_k"])
        tactics = jax_moe.valid_tactics(problem, "cuda")
        assert len(tactics) >= 6
        for t in tactics:
            _check(case, tactic=t.id)
