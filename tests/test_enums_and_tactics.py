"""The Python enums mirror ffi_src/common/enums.h value by value, and the
tactic table as Python sees it is the C++ one."""

import pytest

import jax_moe
from jax_moe import _extension, tactics
from jax_moe.activation import Activation
from jax_moe.formats import Format
from jax_moe.routing import RoutingMethod


@pytest.mark.parametrize("py_enum", [RoutingMethod, Activation, Format])
def test_enum_mirrors_cpp(py_enum):
    cpp = _extension.module().enums()[py_enum.__name__]
    assert {m.name: int(m) for m in py_enum} == dict(cpp)


def test_tactic_table_is_read_from_cpp():
    rows = _extension.module().tactic_table()
    table = tactics.tactic_table()
    assert [t.id for t in table] == list(range(len(rows)))
    assert [t.name for t in table] == [r["name"] for r in rows]
    assert len({t.name for t in table}) == len(table), "tactic names must be unique"
    assert len(tactics.tactic_table_hash()) == 16


def test_cpu_tactics_have_different_blockings():
    cpu = [t for t in tactics.tactic_table() if t.platform == "cpu"]
    assert len({(t.tile_tokens, t.tile_n) for t in cpu}) >= 2


@pytest.mark.parametrize("T", [1, 7, 64, 300, 5000])
def test_default_tactic_is_valid(T):
    problem = jax_moe.MoEProblem(T, 256, 128, 16, 16, 4)
    t = jax_moe.default_tactic(problem, "cpu")
    assert t in [v.id for v in jax_moe.valid_tactics(problem, "cpu")]


def test_workspace_grows_with_tokens_and_tile():
    small = jax_moe.MoEProblem(8, 256, 128, 16, 16, 4)
    big = small.with_tokens(800)
    assert tactics.workspace_bytes(big, 0) > tactics.workspace_bytes(small, 0)


def test_build_info():
    info = _extension.build_info()
    assert info["ffi_api"].startswith("0.")
    assert isinstance(info["cuda"], bool)


@pytest.mark.parametrize("T,family,tile", [(1, "cuda_mma_swap_ab", 8), (64, "cuda_mma_swap_ab", 8),
                                           (512, "cuda_mma_swap_ab", 16), (960, "cuda_mma_swap_ab", 32),
                                           (1024, "cuda_wgmma_rs_persistent", 128),
                                           (2048, "cuda_wgmma_rs_persistent", 128),
                                           (4096, "cuda_wgmma_rs_persistent", 128),
                                           (16384, "cuda_wgmma_rs_persistent", 128)])
def test_cuda_default_follows_the_tuning_tables(T, family, tile):
    """The CUDA heuristic follows the measured tuner tables (benchmarks/results/autotune.md):
    the staged family with the token tile from the average expert load, capped at 32,
    and the register-A cp.async wgmma t128 once the load target reaches 40 (1.3x the mean load: T >= 985 here)."""
    problem = jax_moe.MoEProblem(T, 2880, 2880, 128, 128, 4)
    t = jax_moe.tactics.tactic_table()[jax_moe.default_tactic(problem, "cuda")]
    assert (t.platform, t.family, t.tile_tokens) == ("cuda", tactics.kernel_families()[family], tile)


@pytest.mark.parametrize("T,ring", [(1, True), (32, True), (33, False), (512, False)])
def test_weight_ring_rows_replace_their_twins_at_decode_loads(T, ring):
    """At most one token per expert on average (gpt-oss-120b: T <= 32) the
    default and the tuning candidates use the staged family's cp.async
    weight-ring rows instead of their ring-less twins; above, the reverse.
    The exhaustive candidate list keeps both."""
    problem = jax_moe.MoEProblem(T, 2880, 2880, 128, 128, 4)
    table = tactics.tactic_table()
    default = table[jax_moe.default_tactic(problem, "cuda")]
    assert (default.weight_stages > 0) == ring, default
    staged = tactics.kernel_families()["cuda_mma_swap_ab"]
    shape = lambda t: (t.tile_tokens, t.tile_n, t.tokens_per_warp, t.k_chunk, t.warps_k)
    ring_shapes = {shape(t) for t in table if t.weight_stages > 0}
    kept = [table[i] for i in tactics.tuning_candidates(problem, "cuda")]
    for t in kept:
        if t.family == staged and shape(t) in ring_shapes:
            assert (t.weight_stages > 0) == ring, t.name
    every = {table[i].name for i in tactics.tuning_candidates(problem, "cuda", exhaustive=True)}
    assert {t.name for t in table if t.weight_stages > 0} <= every


def test_wgmma_candidates_survive_pruning_at_large_loads():
    """Loads far above the largest wgmma tile still time the wgmma families (the
    2026-12-01 tuning run had pruned them away at T >= 8192), except the first
    register-A rows, which every other wgmma family beat (NOTES v3, v12)."""
    problem = jax_moe.MoEProblem(16384, 7168, 2048, 256, 256, 8)
    names = {tactics.tactic_table()[i].name for i in tactics.tuning_candidates(problem, "cuda")}
    assert {"cuda_wgmma_rs_t128", "cuda_wgmma_rsp_t128", "cuda_wgmma_ws_t128", "cuda_wgmma_ws_t64"} <= names, names
    assert not names & {"cuda_wgmma_t64", "cuda_wgmma_t128"}, names


@pytest.mark.parametrize("T", [1024, 4096, 16384])
def test_rs256_is_never_the_default_nor_a_candidate(T):
    """The 256-token register-A row measured slower than the 128-token one at
    every prefill row (benchmarks/NOTES.md v14): named explicitly only."""
    problem = jax_moe.MoEProblem(T, 4096, 14336, 8, 8, 2)
    t256 = next(t for t in tactics.tactic_table() if t.name == "cuda_wgmma_rsp_t256")
    assert not tactics.invalid_reason(problem, t256.id, "cuda")
    assert tactics.default_tactic(problem, "cuda") != t256.id
    assert t256.id not in tactics.tuning_candidates(problem, "cuda")
    assert t256.id in tactics.tuning_candidates(problem, "cuda", exhaustive=True)


@pytest.mark.parametrize("kw,needle", [(dict(act_format=jax_moe.Format.MXFP8), "bf16 activations only"),
                                       (dict(hidden_size=1056), "multiples of 64"),
                                       (dict(intermediate_size=352), "multiples of 64")])
def test_rs256_names_what_it_cannot_run(kw, needle):
    """It has no fallback kernel, so problems outside its scope make it an invalid
    tactic whose reason names the row and the cause."""
    base = dict(num_tokens=64, hidden_size=1024, intermediate_size=256, num_experts=8, num_local_experts=8, top_k=2)
    problem = jax_moe.MoEProblem(**{**base, **kw})
    t256 = next(t for t in tactics.tactic_table() if t.name == "cuda_wgmma_rsp_t256")
    reason = tactics.invalid_reason(problem, t256.id, "cuda")
    assert "cuda_wgmma_rsp_t256" in reason and needle in reason, reason


def test_every_tactic_names_a_known_family():
    families = tactics.kernel_families()
    assert set(families) >= {"cpu_blocked", "cuda_mma_swap_ab", "cuda_stream_split_k", "cuda_wgmma_swap_ab",
                             "cuda_wgmma_warp_specialized"}
    assert len(set(families.values())) == len(families)
    assert {t.family for t in tactics.tactic_table()} <= set(families.values())


@pytest.mark.parametrize("T", [1, 64, 4096, 16384])
def test_experimental_tactics_are_never_chosen_automatically(T):
    """An unproven family (the warp-specialised wgmma rows until the GPU suite
    passes) is only reachable with an explicit tactic: never the default,
    never tuned. Once no family is experimental this checks nothing but the
    defaults, which is the intended end state."""
    experimental = {t.id for t in tactics.tactic_table() if t.experimental}
    problem = jax_moe.MoEProblem(T, 2880, 2880, 128, 128, 4)
    for plat in ("cpu", "cuda"):
        assert tactics.default_tactic(problem, plat) not in experimental
        for exhaustive in (False, True):
            assert not experimental & set(tactics.tuning_candidates(problem, plat, exhaustive=exhaustive))
    # ...but they are valid tactics: an explicit tactic= runs them.
    assert all(not tactics.invalid_reason(problem, t, "cuda") for t in experimental)


# The split-K rule against the H200 measurements it was fitted to
# (benchmarks/stage_timer.cu, 2026-12-01, benchmarks/NOTES.md v5): grid blocks
# before splitting, K blocks of 128, the splits that measured fastest.
_SPLIT_K_MEASURED = [
    ("mixtral gemm2 T=1", 64, 112, 4),     # 114.8 -> 58.0 us
    ("mixtral gemm2 T=8", 288, 112, 2),    # 234.9 -> 172.6 us
    ("deepseek gemm1 T=1", 128, 56, 2),    # 105.3 -> 94.3 us
    ("mixtral gemm1 T=1", 224, 32, 1),     # no split measured faster
    ("deepseek gemm2 T=1", 448, 16, 1),
    ("gpt-oss gemm1 T=1", 92, 23, 1),      # 5 splits: 49.9 -> 65.5 us
    ("qwen3 gemm1 T=1", 48, 16, 1),        # 4 splits: 37.8 -> 47.3 us
    ("qwen3 gemm2 T=1", 128, 6, 1),        # 3 splits: 13.6 -> 18.8 us
    ("deepseek gemm1 T=8", 1024, 56, 1),   # grid already fills the device
]


@pytest.mark.parametrize("what,blocks,num_kb,best", _SPLIT_K_MEASURED, ids=[m[0] for m in _SPLIT_K_MEASURED])
def test_split_k_rule_picks_the_measured_best(what, blocks, num_kb, best):
    assert _extension.module().k_splits(blocks, 132, 8, num_kb) == best


def test_split_k_rule_respects_its_limit_and_small_k():
    k_splits = _extension.module().k_splits
    assert k_splits(1, 132, 1, 1000) == 1       # limit 1: never
    assert k_splits(1, 132, 8, 1000) == 8       # the limit caps it
    assert k_splits(1, 132, 8, 47) == 1         # two splits would hold < 24 K blocks each
    assert all(k_splits(b, 132, 8, kb) >= 1 for b in (1, 100, 10_000) for kb in (1, 24, 500))


def test_warps_along_k_rows_are_timed_only_as_the_default():
    """The pruned candidates hold a row with warps along K only when it is the
    default (decode loads, small grids); the exhaustive list holds them all."""
    table = tactics.tactic_table()
    warps_k = {t.name for t in table if t.warps_k > 1}
    assert warps_k
    for T in (1, 32, 33, 4096):
        problem = jax_moe.MoEProblem(T, 2880, 2880, 128, 128, 4)
        default = table[jax_moe.default_tactic(problem, "cuda")]
        names = {table[i].name for i in tactics.tuning_candidates(problem, "cuda")}
        assert names & warps_k <= {default.name}, (T, names)
        assert (default.warps_k > 1) == (T == 1), (T, default)
        every = {table[i].name for i in tactics.tuning_candidates(problem, "cuda", exhaustive=True)}
        assert warps_k <= every


@pytest.mark.parametrize("name,T,warps_k", [("qwen3-30b-a3b", 1, 2), ("gpt-oss-120b", 1, 2), ("deepseek-v3", 1, 2),
                                            ("qwen3-30b-a3b", 8, 2), ("deepseek-v3", 8, 1), ("gpt-oss-120b", 8, 1),
                                            ("mixtral-8x7b", 1, 1), ("gpt-oss-120b", 64, 1)])
def test_decode_default_has_warps_along_k_on_small_grids(name, T, warps_k):
    """At decode loads the default is the staged row with two warps along K
    while the smaller GEMM grid is within ~3 blocks per SM (benchmarks/NOTES.md
    v10: the measured winners), except where the ring row would split a GEMM's
    K 4 ways across blocks (Mixtral-8x7B's GEMM2 at T = 1), which it cannot."""
    from jax_moe.models import MODELS
    m = MODELS[name]
    problem = jax_moe.MoEProblem(T, m.hidden_size, m.intermediate_size, m.num_experts, m.num_experts, m.top_k)
    t = tactics.tactic_table()[jax_moe.default_tactic(problem, "cuda")]
    assert t.warps_k == warps_k, t
    if warps_k > 1:
        assert (t.tile_tokens, t.weight_stages) == (8, 3), t


def test_gemm2_tactic_must_share_the_token_tile():
    """GEMM2 reads GEMM1's permuted layout: a row of another token tile is refused
    (naming both rows), a same-tile row is accepted and sizes the workspace for both."""
    problem = jax_moe.MoEProblem(1, 2880, 2880, 128, 128, 4)
    r4, r3k2, t16 = (tactics.tactic_id(n) for n in ("cuda_mma_t8_n128_r4", "cuda_mma_t8_n128_r3_k2",
                                                     "cuda_mma_t16_n128"))
    assert tactics.gemm2_invalid_reason(problem, r3k2, r4, "cuda") == ""
    reason = tactics.gemm2_invalid_reason(problem, r4, t16, "cuda")
    assert "token tile of 16" in reason and "cuda_mma_t8_n128_r4" in reason, reason
    assert "another platform" in tactics.gemm2_invalid_reason(problem, r4, 0, "cuda")
    # K = 6208 lets the ring row split GEMM2's K (limit 2), never the warps-along-K row:
    # the pair's workspace is the ring row's, larger than the twin's alone.
    long_k = jax_moe.MoEProblem(1, 1056, 6208, 8, 8, 2)
    both = tactics.workspace_bytes(long_k, r3k2, r4)
    assert both == tactics.workspace_bytes(long_k, r4) > tactics.workspace_bytes(long_k, r3k2)
