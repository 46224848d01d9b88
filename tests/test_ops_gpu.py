"""The CUDA handlers against the jnp reference (issue "GPU pipeline").

Marked `gpu`: skipped without a GPU. Outputs are poisoned (NaN) before the
kernels run (conftest sets JAX_MOE_POISON_OUTPUTS=1), so an element no stage
writes fails `assert_close`.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_moe
from jax_moe import _extension, reference, tactics
from jax_moe.activation import Activation
from jax_moe.formats import Format
from jax_moe.models import MODELS
from jax_moe.routing import RoutingMethod
from moe_cases import assert_close, make_case, run_op_and_reference

# The CPU suite's edge cases, re-run here on the GPU (collected as GPU tests).
from test_ops_cpu import (  # noqa: F401
    test_all_tokens_to_one_expert_and_empty_experts,
    test_compiles_once_per_shape,
    test_deepseek_v3_model_routing,
    test_do_finalize_false,
    test_eager_call_works,
    test_float32_hidden_states_are_rounded_to_bf16,
    test_leading_batch_dims,
    test_llama4_weight_on_input,
    test_local_expert_range,
    test_no_token_routed_here_gives_zeros,
    test_routed_variant,
    test_tokens_routed_to_all_experts,
    test_vmap_folds_tokens,
)

pytestmark = pytest.mark.gpu

REL_TOL = 1e-2  # bf16 tensor-core MMAs (exact bf16 operands, fp32 accumulation) vs the fp32 oracle

COMBOS = list(itertools.product(RoutingMethod, Activation, (Format.NVFP4, Format.MXFP4),
                                (Format.BF16, Format.MXFP8, Format.NVFP4)))


def _check(case, **extra):
    out, ref = run_op_and_reference(case, **extra)
    assert_close(out, ref, rel=REL_TOL)
    return out


def _cuda_tactics(T, H, I, E, top_k):
    return jax_moe.valid_tactics(jax_moe.MoEProblem(T, H, I, E, E, top_k), "cuda")


@pytest.mark.parametrize("method,act,wfmt,afmt", COMBOS,
                         ids=lambda v: v.name.lower() if hasattr(v, "name") else str(v))
def test_every_combination(method, act, wfmt, afmt):
    _check(make_case(T=64, H=2048, I=768, E=32, top_k=4, routing=method, activation=act,
                     weight_format=wfmt, act_format=afmt, biases=act == Activation.SWIGLU_OAI))


@pytest.mark.parametrize("T", [1, 3, 64, 1000, 4096])
@pytest.mark.parametrize("H,I", [(2048, 768), (2880, 2880), (7168, 2048), (1056, 352)])
def test_token_counts_and_sizes(T, H, I):
    _check(make_case(T=T, H=H, I=I, E=16, top_k=4))


@pytest.mark.parametrize("afmt", [Format.BF16, Format.NVFP4])
def test_sizes_that_are_only_multiples_of_16(afmt):
    """NVFP4 weights allow H, I = 16 * odd: rows of 8*odd bytes (no 16-byte loads),
    K tails inside a lane's 32 elements and a partial 16-feature m-tile."""
    _check(make_case(T=45, H=1040, I=400, E=8, top_k=2, act_format=afmt))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_model_shapes(name):
    m = MODELS[name]
    case = make_case(T=128, H=m.hidden_size, I=m.intermediate_size, E=m.num_experts,
                     top_k=m.top_k, routing=m.routing, activation=m.activation, biases=m.biases)
    case.kwargs.update(m.routing_kwargs())
    _check(case)


SHAPES_FOR_TACTICS = [dict(T=7, H=2048, I=768, E=16, top_k=4), dict(T=1000, H=2880, I=2880, E=32, top_k=4)]


def test_table_has_six_cuda_tactics_covering_tiles_8_to_128():
    tactics = _cuda_tactics(**SHAPES_FOR_TACTICS[0])
    assert len(tactics) >= 6
    assert {8, 128} <= {t.tile_tokens for t in tactics}


@pytest.mark.parametrize("shape", SHAPES_FOR_TACTICS, ids=["T7", "T1000"])
@pytest.mark.parametrize("tactic", [t.id for t in _cuda_tactics(**SHAPES_FOR_TACTICS[0])])
def test_every_cuda_tactic(shape, tactic):
    _check(make_case(**shape), tactic=tactic)


_FAMILIES = {"staged": "cuda_mma_swap_ab", "stream": "cuda_stream_split_k"}
_WGMMA_FAMILIES = ["cuda_wgmma_swap_ab", "cuda_wgmma_warp_specialized", "cuda_wgmma_ws_two_producers",
                   "cuda_wgmma_rs", "cuda_wgmma_rs_persistent"]


def _family_tactics(family: str, tactic_list=None):
    """The tactics (of `tactic_list`, default the whole table) of the kernel family named `family`."""
    fid = tactics.kernel_families()[family]
    return [t for t in (tactic_list if tactic_list is not None else tactics.tactic_table()) if t.family == fid]


def _runs(t, T, H, I, E, top_k, afmt=Format.BF16):
    """Whether tactic `t` is valid for the problem (the 256-token register-A row
    is not for activations other than bf16 or H, I not multiples of 64)."""
    problem = jax_moe.MoEProblem(T, H, I, E, E, top_k, act_format=afmt)
    return not tactics.invalid_reason(problem, t.id, "cuda")


@pytest.mark.parametrize("wfmt,afmt", list(itertools.product((Format.NVFP4, Format.MXFP4),
                                                             (Format.BF16, Format.MXFP8, Format.NVFP4))),
                         ids=lambda v: v.name.lower())
@pytest.mark.parametrize("family", sorted(_FAMILIES))
def test_both_kernel_families_every_format(family, wfmt, afmt):
    """Each GEMM family with every weight x activation format, biases and the
    gpt-oss activation, K tails (H = 1056 = 8 * 128 + 32) and 16-token tiles."""
    case = make_case(T=40, H=1056, I=352, E=8, top_k=2, weight_format=wfmt, act_format=afmt,
                     activation=Activation.SWIGLU_OAI, biases=True)
    tactic = next(t for t in _family_tactics(_FAMILIES[family], _cuda_tactics(T=40, H=1056, I=352, E=8, top_k=2))
                  if t.tile_tokens == 16)
    _check(case, tactic=tactic.id)


_RING_TACTICS = [t for t in tactics.tactic_table() if t.weight_stages > 0]
# (H, I, weights, acts): every format with K tails inside the ring (H = 1056 =
# 8 * 128 + 32, I = 352 = 2 * 128 + 96); then K = 1040 / 336, multiples of 16
# only (NVFP4 weights, bf16 / NVFP4 activations), where the launcher falls
# back to the ring-less kernel of the same tile.
_RING_CASES = ([(1056, 352, w, a) for w in (Format.NVFP4, Format.MXFP4)
                for a in (Format.BF16, Format.MXFP8, Format.NVFP4)]
               + [(1040, 336, Format.NVFP4, a) for a in (Format.BF16, Format.NVFP4)])


@pytest.mark.parametrize("H,I,wfmt,afmt", _RING_CASES,
                         ids=[f"H{h}_{w.name.lower()}_{a.name.lower()}" for h, _, w, a in _RING_CASES])
@pytest.mark.parametrize("tactic", [t.id for t in _RING_TACTICS], ids=[t.name for t in _RING_TACTICS])
def test_weight_ring_tactics(tactic, H, I, wfmt, afmt):
    """The cp.async weight-ring rows of the staged family, 1 to several tokens
    per expert across tiles, biases and the gpt-oss activation."""
    case = make_case(T=37, H=H, I=I, E=8, top_k=2, weight_format=wfmt, act_format=afmt,
                     activation=Activation.SWIGLU_OAI, biases=True)
    _check(case, tactic=tactic)


# The staged rows that split K across blocks (rows with warps along K reduce
# inside the block instead and never split: test_warps_along_k_tactics).
_STAGED_TACTICS = [t for t in _family_tactics("cuda_mma_swap_ab") if t.warps_k == 1]
_WARPS_K_TACTICS = [t for t in _family_tactics("cuda_mma_swap_ab") if t.warps_k > 1]
_FORMAT_PAIRS = list(itertools.product((Format.NVFP4, Format.MXFP4), (Format.BF16, Format.MXFP8, Format.NVFP4)))


def _split_k_stats():
    s = _extension.module().cuda_handler_stats()
    return s["split_k_launches"], s["max_k_splits"]


@pytest.mark.parametrize("T", [1, 3])
@pytest.mark.parametrize("index", range(len(_STAGED_TACTICS)), ids=[t.name for t in _STAGED_TACTICS])
def test_split_k_at_decode_sizes(index, T):
    """A few token tiles leave the device under-filled, so the staged rows
    split K across blocks (cuda/split_k.cuh; KSplits keeps >= 24 K blocks per
    split): GEMM1 K = 6208 = 48 * 128 + 64 (2 splits, a K tail in the last),
    GEMM2 K = 3104 (24 K blocks and a tail: unsplit). Every row, formats
    cycled over the rows, biases and the gpt-oss activation; the handler's
    counters prove the split path ran."""
    wfmt, afmt = _FORMAT_PAIRS[(index + T) % len(_FORMAT_PAIRS)]
    case = make_case(T=T, H=6208, I=3104, E=4, top_k=2, weight_format=wfmt, act_format=afmt,
                     activation=Activation.SWIGLU_OAI, biases=True)
    launches, _ = _split_k_stats()
    _check(case, tactic=_STAGED_TACTICS[index].id)
    assert _split_k_stats()[0] > launches, "no GEMM launch split K"


# (T, H, I): K blocks per GEMM not a multiple of the groups (H = 1056: 9 K
# blocks, the last 32 wide; I = 352: 3), so groups run unequal counts and
# some none in the last chunk; one token (one live row in an 8-row tile);
# the Qwen3 shape at decode; several tiles per expert.
_WARPS_K_SHAPES = [(1, 1056, 352), (3, 2048, 768), (37, 1056, 352), (2, 7168, 2048)]


def test_warps_along_k_rows_exist():
    assert {t.warps_k for t in _WARPS_K_TACTICS} >= {2, 4}
    assert any(t.weight_stages == 0 for t in _WARPS_K_TACTICS) and any(t.weight_stages > 0 for t in _WARPS_K_TACTICS)


@pytest.mark.parametrize("T,H,I", _WARPS_K_SHAPES, ids=[f"T{t}_H{h}" for t, h, _ in _WARPS_K_SHAPES])
@pytest.mark.parametrize("index", range(len(_WARPS_K_TACTICS)), ids=[t.name for t in _WARPS_K_TACTICS])
def test_warps_along_k_tactics(index, T, H, I):
    """The staged rows with warps along K (partial sums added in shared memory):
    formats cycled over rows and shapes, biases and the gpt-oss activation;
    they never split K across blocks (K = 7168 at T = 2 would)."""
    wfmt, afmt = _FORMAT_PAIRS[(index + T) % len(_FORMAT_PAIRS)]
    case = make_case(T=T, H=H, I=I, E=8, top_k=2, weight_format=wfmt, act_format=afmt,
                     activation=Activation.SWIGLU_OAI, biases=True)
    launches, _ = _split_k_stats()
    _check(case, tactic=_WARPS_K_TACTICS[index].id)
    assert _split_k_stats()[0] == launches, "a warps-along-K row split K across blocks"


def test_warps_along_k_is_bitwise_deterministic():
    """The groups' sums are added in group order: repeated runs agree bitwise."""
    case = make_case(T=2, H=4096, I=512, E=4, top_k=2)
    tactic = _WARPS_K_TACTICS[0].id
    f = jax.jit(lambda *a: jax_moe.fp4_moe(*a, **case.kwargs, tactic=tactic))
    args = (case.hidden, case.logits, case.w13, case.w2)
    first = np.asarray(f(*args), np.float32)
    for _ in range(5):
        np.testing.assert_array_equal(np.asarray(f(*args), np.float32), first)
    assert_close(first, run_op_and_reference(case)[1], rel=REL_TOL)


_GEMM2_PAIRS = [  # (GEMM1 row, GEMM2 row, T, H, I): each pair's shape makes the non-KW row split K
    ("cuda_mma_t8_n128_r3_k2", "cuda_mma_t8_n128_r4", 1, 1056, 6208),
    ("cuda_mma_t8_n128_r4", "cuda_mma_t8_n128_r2_k4", 3, 6208, 352),
    ("cuda_mma_t8_n128", "cuda_stream_t8", 5, 1056, 352),
    ("cuda_mma_t64_n128", "cuda_wgmma_ws_t64", 300, 1056, 352),
]


@pytest.mark.parametrize("first,second,T,H,I", _GEMM2_PAIRS, ids=[f"{a}+{b}" for a, b, *_ in _GEMM2_PAIRS])
def test_gemm2_runs_its_own_row(first, second, T, H, I):
    """GEMM2 under another row of the same token tile than GEMM1 (gemm2_tactic):
    the split-K workspace sized for the row that splits, another family for
    GEMM2; every weight format, biases, the gpt-oss activation."""
    for i, wfmt in enumerate((Format.NVFP4, Format.MXFP4)):
        case = make_case(T=T, H=H, I=I, E=8, top_k=2, weight_format=wfmt,
                         act_format=_FORMAT_PAIRS[(T + i) % len(_FORMAT_PAIRS)][1],
                         activation=Activation.SWIGLU_OAI, biases=True)
        _check(case, tactic=tactics.tactic_id(first), gemm2_tactic=tactics.tactic_id(second))


def test_split_k_is_bitwise_deterministic():
    """The last split adds the partials in split order: repeated runs agree
    bitwise whichever split finishes last, and match the reference."""
    case = make_case(T=2, H=12288, I=512, E=4, top_k=2)  # GEMM1: 96 K blocks, 4 splits
    f = jax.jit(lambda *a: jax_moe.fp4_moe(*a, **case.kwargs))
    args = (case.hidden, case.logits, case.w13, case.w2)
    launches, _ = _split_k_stats()
    first = np.asarray(f(*args), np.float32)
    assert _split_k_stats()[0] > launches
    assert _split_k_stats()[1] >= 4, "K = 12288 (96 K blocks) on a few tiles should split 4 ways"
    for _ in range(5):
        np.testing.assert_array_equal(np.asarray(f(*args), np.float32), first)
    assert_close(first, run_op_and_reference(case)[1], rel=REL_TOL)


@pytest.mark.parametrize("wfmt,afmt", _FORMAT_PAIRS, ids=lambda v: v.name.lower())
@pytest.mark.parametrize("tactic", [t.id for f in _WGMMA_FAMILIES for t in _family_tactics(f)],
                         ids=[t.name for f in _WGMMA_FAMILIES for t in _family_tactics(f)])
def test_wgmma_family_every_format(tactic, wfmt, afmt):
    """Every tactic of the wgmma families (each family experimental until this
    passes): every weight x activation format, biases and the gpt-oss
    activation, K tails in both GEMMs (H = 1056 = 16 * 64 + 32, I = 352 =
    5 * 64 + 32), feature blocks of 128 with idle warps (352 and 1056 are not
    multiples of 128), partial and several tiles per expert. (The 256-token
    register-A row is invalid for these K tails: test_wgmma_rs256_refuses_*.)"""
    if not _runs(tactics.tactic_table()[tactic], 300, 1056, 352, 8, 2, afmt):
        pytest.skip("the row does not take this problem (its own test checks the error)")
    case = make_case(T=300, H=1056, I=352, E=8, top_k=2, weight_format=wfmt, act_format=afmt,
                     activation=Activation.SWIGLU_OAI, biases=True)
    _check(case, tactic=tactic)


_RS_TACTICS = _family_tactics("cuda_wgmma_rs") + _family_tactics("cuda_wgmma_rs_persistent")


def _wgmma_rs_launches():
    return _extension.module().cuda_handler_stats()["wgmma_rs_launches"]


# (T, H, I): H and I multiples of 64 (the register-A kernel's own path, not its
# fallback). H = 1088: 17 K stages of GEMM1, 4.25 feature blocks of 256 in
# GEMM2; I = 320: 2.5 feature blocks of 128 in GEMM1 (the second consumer of
# the last block idle), 5 K stages in GEMM2 (fewer than the ring's 6);
# I = 192: 3 stages, fewer than the 4 the producer keeps in flight; T = 1:
# one live token in a 128-row tile; T = 900 with 8 experts: several tiles
# per expert. The 256-token row: T = 300 leaves every tile's second half
# empty (its N = 128 loop), T = 900 fills a first tile (N = 256) and leaves a
# partial second one; I = 320 is 5 feature blocks of 64 in GEMM1, H = 1088
# 8.5 blocks of 128 in GEMM2 (the last block's second consumer idle).
_RS_SHAPES = [(300, 1088, 320), (37, 1024, 192), (1, 2048, 768), (900, 512, 256)]


@pytest.mark.parametrize("wfmt", (Format.NVFP4, Format.MXFP4), ids=lambda v: v.name.lower())
@pytest.mark.parametrize("T,H,I", _RS_SHAPES, ids=[f"T{t}_H{h}_I{i}" for t, h, i in _RS_SHAPES])
def test_wgmma_rs_kernel(T, H, I, wfmt):
    """The register-A cp.async wgmma rows on their own path (bf16 activations,
    K % 64 == 0; the handler's counter proves it ran): biases and the gpt-oss
    activation, partial feature blocks, short K rings."""
    _check_rs_own_path(T, H, I, wfmt, Format.BF16)


def _check_rs_own_path(T, H, I, wfmt, afmt):
    """Every register-A row on the problem, biases and the gpt-oss activation;
    the launch counter proves both GEMMs ran the register-A kernel itself."""
    case = make_case(T=T, H=H, I=I, E=8, top_k=2, weight_format=wfmt, act_format=afmt,
                     activation=Activation.SWIGLU_OAI, biases=True)
    ran = 0
    for t in _RS_TACTICS:
        if not _runs(t, T, H, I, 8, 2, afmt):
            continue
        launches = _wgmma_rs_launches()
        _check(case, tactic=t.id)
        assert _wgmma_rs_launches() >= launches + 2, "both GEMMs should run the register-A kernel"
        ran += 1
    assert ran >= (3 if afmt == Format.BF16 else 2), ran


@pytest.mark.parametrize("T", [300, 1200])
@pytest.mark.parametrize("activation", [Activation.SWIGLU, Activation.GEGLU], ids=lambda v: v.name.lower())
def test_wgmma_rs_staged_epilogue(activation, T):
    """The register-A rows' staged epilogue (output rows through shared memory,
    one bulk copy each): the plain activations (the gpt-oss one is in
    test_wgmma_rs_kernel), routing weights on the input (GEMM1 scales each row
    before the activation) and per-(token, k) outputs (do_finalize=False: GEMM2
    writes its rows by expanded index). T = 1200 (~300 rows an expert): the
    256-token row stages full tiles in two halves and partial ones in one."""
    case = make_case(T=T, H=1088, I=320, E=8, top_k=2, activation=activation)
    for t in _RS_TACTICS:
        launches = _wgmma_rs_launches()
        _check(case, tactic=t.id)
        _check(case, tactic=t.id, routing_weight_on_input=True)
        (y, _, _), (ry, _, _) = run_op_and_reference(case, tactic=t.id, do_finalize=False)
        assert y.shape == (T, 2, 1088)
        assert_close(y, ry, rel=REL_TOL)
        assert _wgmma_rs_launches() >= launches + 6, "every GEMM should run the register-A kernel"


@pytest.mark.parametrize("wfmt", (Format.NVFP4, Format.MXFP4), ids=lambda v: v.name.lower())
@pytest.mark.parametrize("T,H,I", _RS_SHAPES[:2] + _RS_SHAPES[3:],
                         ids=[f"T{t}_H{h}_I{i}" for t, h, i in _RS_SHAPES[:2] + _RS_SHAPES[3:]])
def test_wgmma_rs_mxfp8_activations(T, H, I, wfmt, monkeypatch):
    """MXFP8 activations on the register-A kernel's own path (the default)
    (the producer converts the raw token rows; GEMM1 re-quantizes h to MXFP8
    with the amaxes of warp pairs meeting in shared memory; I = 320 leaves the
    last feature block's second consumer idle but at the barrier)."""
    monkeypatch.delenv("JAX_MOE_RS_MXFP8", raising=False)
    _check_rs_own_path(T, H, I, wfmt, Format.MXFP8)


def test_wgmma_rs_falls_back_outside_its_scope(monkeypatch):
    """MXFP8 activations with JAX_MOE_RS_MXFP8=0, or K % 64 != 0: the rows
    run the warp-specialised kernel of the same tile (and still match the
    reference)."""
    monkeypatch.setenv("JAX_MOE_RS_MXFP8", "0")
    for afmt, H in ((Format.MXFP8, 1024), (Format.BF16, 1056)):
        case = make_case(T=150, H=H, I=352, E=8, top_k=2, act_format=afmt)
        for t in _RS_TACTICS:
            if t.tile_tokens == 256:  # no fallback kernel: refused (test_wgmma_rs256_refuses_*)
                continue
            launches = _wgmma_rs_launches()
            _check(case, tactic=t.id)
            assert _wgmma_rs_launches() == launches


@pytest.mark.parametrize("afmt,H,I", [(Format.MXFP8, 1024, 256), (Format.NVFP4, 1024, 256),
                                      (Format.BF16, 1056, 256), (Format.BF16, 1024, 352)],
                         ids=["mxfp8", "nvfp4", "H1056", "I352"])
def test_wgmma_rs256_refuses_problems_outside_its_scope(afmt, H, I):
    """The 256-token register-A row has no fallback kernel: for activations
    other than bf16 or H, I not multiples of 64 it is an invalid tactic, and
    asking for it is a ValueError naming the row and the reason."""
    t256 = next(t for t in _RS_TACTICS if t.tile_tokens == 256)
    case = make_case(T=64, H=H, I=I, E=8, top_k=2, act_format=afmt)
    with pytest.raises(ValueError, match="cuda_wgmma_rsp_t256"):
        run_op_and_reference(case, tactic=t256.id)


@pytest.mark.parametrize("T,routing", [(1, RoutingMethod.RENORMALIZE), (700, RoutingMethod.DEEPSEEK_V3)])
@pytest.mark.parametrize("family", _WGMMA_FAMILIES)
def test_wgmma_family_model_shapes(family, T, routing):
    """A DeepSeek-like shape (H = 7168: 112 K stages of 64, 28 chunks of 256) on
    both tiles of each wgmma family, T = 1 (one live token in a 64/128-row
    tile) and a prefill-sized T."""
    case = make_case(T=T, H=7168, I=256, E=32, top_k=4, routing=routing)
    if routing == RoutingMethod.DEEPSEEK_V3:
        case.kwargs.update(n_group=4, topk_group=2)
    for t in _family_tactics(family):
        _check(case, tactic=t.id)


@pytest.mark.parametrize("T", [5, 300])  # scalar and vectorized finalize kernels
def test_weight_on_input_with_top_k_above_one(T):
    """Routing weights applied on the input: every finalize weight lane is 1."""
    _check(make_case(T=T, H=512, I=256, E=16, top_k=4), routing_weight_on_input=True)


@pytest.mark.parametrize("top_k,E", [(10, 64), (1, 512), (16, 512)])
def test_routing_limits(top_k, E):
    _check(make_case(T=33, H=256, I=128, E=E, top_k=top_k))


def test_deepseek_v3_top8_of_256_grouped():
    case = make_case(T=70, H=512, I=256, E=256, top_k=8, routing=RoutingMethod.DEEPSEEK_V3)
    case.kwargs.update(n_group=8, topk_group=4, top_k=8)
    _check(case)


def test_gpu_routing_matches_cpu_routing():
    """Same experts chosen as the CPU handler (ties: smaller index), weights to fp32 ulps."""
    for method in RoutingMethod:
        case = make_case(T=200, H=128, I=64, E=64, top_k=6, routing=method)
        f = jax.jit(lambda *a: jax_moe.fp4_moe(*a, **case.kwargs, do_finalize=False))
        args = (case.hidden, case.logits, case.w13, case.w2)
        _, w_gpu, ids_gpu = f(*args)
        # tactic=None resolves to the CPU default when lowering for the CPU.
        _, w_cpu, ids_cpu = f(*jax.device_put(args, jax.devices("cpu")[0]))
        np.testing.assert_array_equal(np.asarray(ids_gpu), np.asarray(ids_cpu), err_msg=method.name)
        np.testing.assert_allclose(np.asarray(w_gpu), np.asarray(w_cpu), rtol=1e-5, err_msg=method.name)


def test_runs_are_bitwise_deterministic():
    case = make_case(T=1000, H=1024, I=512, E=16, top_k=4)
    f = jax.jit(lambda *a: jax_moe.fp4_moe(*a, **case.kwargs))
    args = (case.hidden, case.logits, case.w13, case.w2)
    first = np.asarray(f(*args), np.float32)
    for _ in range(3):
        np.testing.assert_array_equal(np.asarray(f(*args), np.float32), first)


_KNOBS_ON = {"JAX_MOE_DEPENDENT_LAUNCH": "1", "JAX_MOE_L2_PREFETCH": "8", "JAX_MOE_ACT_PREFETCH": "1"}
_KNOBS_OFF = {"JAX_MOE_DEPENDENT_LAUNCH": "0", "JAX_MOE_L2_PREFETCH": "0", "JAX_MOE_ACT_PREFETCH": "0"}
# (T, H, I): GEMM1 K = 1184 = 2 chunks of 512 + a 160 tail, GEMM2 K = 704
# (512 + 192); and a split-K decode case (K = 6208: 2 splits of ~24 K blocks).
_KNOB_SHAPES = [(21, 1184, 704), (1, 6208, 3104)]


@pytest.mark.parametrize("T,H,I", _KNOB_SHAPES, ids=[f"T{t}_H{h}" for t, h, _ in _KNOB_SHAPES])
@pytest.mark.parametrize("index", range(len(_STAGED_TACTICS)), ids=[t.name for t in _STAGED_TACTICS])
def test_launch_and_prefetch_knobs_change_no_bit(index, T, H, I, monkeypatch):
    """Programmatic dependent launch, the L2 weight prefetch and the cp.async
    activation prefetch (cuda/dependent_launch.cuh, gemm_mma.cuh) only move
    work earlier: every staged tactic gives bitwise the same output with all
    three on and off (the default is act prefetch only), and both match the
    reference. Several K chunks with a ragged last one, bf16 activations (the
    prefetched format), biases, the gpt-oss activation, formats alternating
    over the rows."""
    wfmt = (Format.NVFP4, Format.MXFP4)[index % 2]
    case = make_case(T=T, H=H, I=I, E=5, top_k=2, weight_format=wfmt, act_format=Format.BF16,
                     activation=Activation.SWIGLU_OAI, biases=True)
    tactic = _STAGED_TACTICS[index].id
    f = jax.jit(lambda *a: jax_moe.fp4_moe(*a, **case.kwargs, tactic=tactic))
    args = (case.hidden, case.logits, case.w13, case.w2)
    for name, value in _KNOBS_ON.items():
        monkeypatch.setenv(name, value)  # read by the handler at every call: the same executable
    on = np.asarray(f(*args), np.float32)
    for name, value in _KNOBS_OFF.items():
        monkeypatch.setenv(name, value)
    off = np.asarray(f(*args), np.float32)
    np.testing.assert_array_equal(on, off)
    assert_close(on, run_op_and_reference(case, tactic=tactic)[1], rel=REL_TOL)


@pytest.mark.parametrize("T", [1, 5, 8])
@pytest.mark.parametrize("method", list(RoutingMethod), ids=[m.name for m in RoutingMethod])
def test_fused_routing_changes_no_bit(method, T, monkeypatch):
    """Routing and permute run as one kernel at T <= 8 (JAX_MOE_FUSED_ROUTING=0: two)
    (cuda/permute.cu): the same ids, weights and per-(token, k) rows bit for
    bit as the two kernels, every routing method, and both match the reference."""
    case = make_case(T=T, H=256, I=128, E=64, top_k=6, routing=method)
    if method == RoutingMethod.DEEPSEEK_V3:
        case.kwargs.update(n_group=8, topk_group=3)
    f = jax.jit(lambda *a: jax_moe.fp4_moe(*a, **case.kwargs, do_finalize=False))
    args = (case.hidden, case.logits, case.w13, case.w2)
    results = []
    for value in ("1", "0"):
        monkeypatch.setenv("JAX_MOE_FUSED_ROUTING", value)  # read by the handler at every call
        results.append([np.asarray(r) for r in f(*args)])
    for fused, separate in zip(*results):
        np.testing.assert_array_equal(fused.view(np.uint8), separate.view(np.uint8))
    monkeypatch.setenv("JAX_MOE_FUSED_ROUTING", "1")
    assert_close(*run_op_and_reference(case), rel=REL_TOL)


def _rms_norm(x):
    x = x.astype(jnp.float32)
    return (x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + 1e-6)).astype(jnp.bfloat16)


def test_cuda_graph_capture_and_replay_with_new_inputs():
    """Default XLA flags, a transformer-style MoE block (norms, router and
    projection matmuls around the op): XLA records the block, our handler
    included, into a CUDA graph (the handler sees its stream capturing), and
    replays with new inputs still give the reference's answer."""
    T, H, I, E, K = 64, 512, 256, 16, 4
    kw = make_case(T=T, H=H, I=I, E=E, top_k=K).kwargs

    def block(moe, x, wr, wo, w13, w2):
        xn = _rms_norm(x)
        logits = jnp.dot(xn, wr, preferred_element_type=jnp.float32)
        y = x + moe(xn, logits, w13, w2, **kw)
        z = jnp.dot(_rms_norm(y), wo, preferred_element_type=jnp.float32)
        return _rms_norm(z + jnp.dot(y, wo.T, preferred_element_type=jnp.float32))

    op = jax.jit(lambda *a: block(jax_moe.fp4_moe, *a))
    ref = jax.jit(lambda *a: block(reference.moe_reference, *a))
    before = _extension.module().cuda_handler_stats()
    for i in range(4):  # new inputs (new buffers) each time, one executable
        case = make_case(T=T, H=H, I=I, E=E, top_k=K)
        keys = jax.random.split(jax.random.key(100 + i), 2)
        wr = (jax.random.normal(keys[0], (H, E)) / np.sqrt(H)).astype(jnp.bfloat16)
        wo = (jax.random.normal(keys[1], (H, H)) / np.sqrt(H)).astype(jnp.bfloat16)
        args = (case.hidden, wr, wo, case.w13, case.w2)
        assert_close(op(*args), ref(*args), rel=REL_TOL)
    after = _extension.module().cuda_handler_stats()
    assert after["calls"] > before["calls"]
    assert after["captured_calls"] > before["captured_calls"], (
        "the op never ran under CUDA-graph capture", before, after)


def test_format_functions_agree_between_gpu_and_cpu():
    """The jnp quantize/dequantize (used by the reference) give the same bits on
    both backends; XLA's GPU float8 -> fp32 convert did not (see e4m3_decode)."""
    from jax_moe import formats

    x = 3.0 * jax.random.normal(jax.random.key(0), (64, 768), jnp.float32)
    x = x * jnp.exp2(jax.random.randint(jax.random.key(1), (64, 24, 1), -8, 8)).repeat(32, -1).reshape(64, 768)
    fns = {
        "mxfp8": lambda a: formats.dequantize(formats.quantize_mxfp8(a)),
        "nvfp4": lambda a: formats.dequantize(formats.quantize_nvfp4(a, 200.0)),
        "mxfp4": lambda a: formats.dequantize(formats.quantize_mxfp4(a)),
    }
    for name, f in fns.items():
        on_gpu = np.asarray(jax.jit(f)(x))
        on_cpu = np.asarray(jax.jit(f)(jax.device_put(x, jax.devices("cpu")[0])))
        if name == "nvfp4":  # the final / global_scale: XLA GPU's fp32 division is within 1 ulp
            np.testing.assert_allclose(on_gpu, on_cpu, rtol=2.5e-7, atol=0, err_msg=name)
        else:
            np.testing.assert_array_equal(on_gpu, on_cpu, err_msg=name)


@pytest.mark.parametrize("kind", ["auto", "vectorized", "scalar"])
@pytest.mark.parametrize("T,K", [(1, 1), (5, 3), (256, 8), (512, 4), (300, 2)])
@pytest.mark.parametrize("on_input", [False, True])
def test_finalize_kernels_alone(kind, T, K, on_input):
    from jax_moe import _finalize

    H = 2880
    k = jax.random.split(jax.random.key(T * 31 + K), 3)
    R = T * K + 7
    y = jax.random.normal(k[0], (R, H), jnp.bfloat16)
    rows = jax.random.permutation(k[1], R)[: T * K].astype(jnp.int32)
    rows = jnp.where(jnp.arange(T * K) % 5 == 3, -1, rows)  # some (t, k) pairs live on other devices
    w = jax.random.uniform(k[2], (T, K), jnp.float32, 0.1, 1.0)
    out = _finalize.finalize(y, rows, w, kind=kind, weight_on_input=on_input)
    ref = _finalize.finalize_reference(y, rows, w, weight_on_input=on_input)
    assert_close(out, ref, rel=1e-3)
