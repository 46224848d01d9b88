"""The benchmark peers compute the same layer (a peer that computes something
else would make every ratio meaningless)."""

import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from benchmarks import peers, roofline  # noqa: E402
from jax_moe.activation import gated_activation  # noqa: E402
from jax_moe.routing import route  # noqa: E402
from moe_cases import assert_close  # noqa: E402


@pytest.mark.parametrize("routing,activation", [("renormalize", "swiglu"), ("deepseek_v3", "swiglu_oai"),
                                                ("default", "geglu")])
def test_ragged_dot_layer_equals_dense_bf16_layer(routing, activation):
    E, H, I, T, K = 8, 64, 32, 21, 2
    w13, w2 = peers.random_bf16_experts(jax.random.key(0), E, H, I)
    x = jax.random.normal(jax.random.key(1), (T, H), jnp.bfloat16)
    logits = 2 * jax.random.normal(jax.random.key(2), (T, E))
    kw = dict(n_group=2, topk_group=1) if routing == "deepseek_v3" else {}
    out = peers.ragged_dot_layer(x, logits, w13, w2, top_k=K, routing=routing, activation=activation, **kw)
    ids, w = route(logits, method=routing, top_k=K, **kw)
    g = jnp.einsum("th,ehn->ten", x.astype(jnp.float32), w13.astype(jnp.float32))
    h = gated_activation(g, activation).astype(jnp.bfloat16).astype(jnp.float32)
    y = jnp.einsum("tei,eih->teh", h, w2.astype(jnp.float32))
    expected = (w[..., None] * jnp.take_along_axis(y, ids[..., None], axis=1)).sum(1)
    assert_close(out, expected, rel=1e-2)


def test_floors_arithmetic():
    mem, compute = roofline.floors_us(touched_expert_bytes=3e9, T=10, K=4, H=100, I=50, copy_bw=3e12,
                                      matmul_rate=1e15)
    assert np.isclose(mem, 1000.0) and np.isclose(compute, 2 * 10 * 4 * 3 * 100 * 50 / 1e15 * 1e6)


def test_timer_report_parses_the_stage_timer_output(tmp_path):
    """benchmarks/timer_report.py reads every row kind the stage timer prints
    (a row it skipped would silently drop a measurement from the results)."""
    from benchmarks import timer_report

    text = (
        "stage_timer: median of 20, L2 flushed before each, JAX_MOE_MAX_K_SPLITS=(unset)\n"
        "pattern deepseek-v3 gemm1 T=1          linear spin 200   512 warps   117.44 MB     58.3 us    2013 GB/s\n"
        "stage_timer: median of 30, L2 flushed before each, JAX_MOE_MAX_K_SPLITS=1\n"
        "mixtral-8x7b   nvfp4 T=1      cuda_mma_t8_n128_r4    splits<=1 pipeline     224.7 us | routing      6.7 "
        "permute      5.3 gemm1     98.8 gemm2    114.8 finalize      4.5\n"
        # The header since the L2-prefetch and dependent-launch knobs.
        "stage_timer: median of 30, L2 flushed before each, JAX_MOE_MAX_K_SPLITS=8 JAX_MOE_L2_PREFETCH=0 "
        "JAX_MOE_DEPENDENT_LAUNCH=(unset) JAX_MOE_ACT_PREFETCH=0\n"
        "mixtral-8x7b   nvfp4 T=1      cuda_mma_t8_n128_r4    splits<=4 pipeline     161.4 us | routing      5.9 "
        "permute      5.1 gemm1     93.8 gemm2     58.2 finalize      4.5\n"
        # Since the fused routing + permute knob.
        "stage_timer: median of 20, L2 flushed before each, JAX_MOE_MAX_K_SPLITS=8 JAX_MOE_L2_PREFETCH=(unset) "
        "JAX_MOE_DEPENDENT_LAUNCH=(unset) JAX_MOE_ACT_PREFETCH=(unset) JAX_MOE_FUSED_ROUTING=1\n"
        "qwen3-30b-a3b  nvfp4 T=1      cuda_mma_t8_n128_r4    splits<=1 pipeline      55.0 us | routing      4.5 "
        "permute      0.0 gemm1     35.2 gemm2     12.5 finalize      4.2\n")
    rows, patterns = timer_report.parse_timer(text)
    assert rows == [dict(model="mixtral-8x7b", weights="nvfp4", T=1, tactic="cuda_mma_t8_n128_r4", split_cap="1",
                         l2_prefetch="n/a", dependent_launch="n/a", act_prefetch="n/a", fused_routing="n/a",
                         max_splits_used=1, pipeline_us=224.7,
                         routing_us=6.7, permute_us=5.3, gemm1_us=98.8, gemm2_us=114.8, finalize_us=4.5),
                    dict(model="mixtral-8x7b", weights="nvfp4", T=1, tactic="cuda_mma_t8_n128_r4", split_cap="8",
                         l2_prefetch="0", dependent_launch="(unset)", act_prefetch="0", fused_routing="n/a",
                         max_splits_used=4, pipeline_us=161.4,
                         routing_us=5.9, permute_us=5.1, gemm1_us=93.8, gemm2_us=58.2, finalize_us=4.5),
                    dict(model="qwen3-30b-a3b", weights="nvfp4", T=1, tactic="cuda_mma_t8_n128_r4", split_cap="8",
                         l2_prefetch="(unset)", dependent_launch="(unset)", act_prefetch="(unset)", fused_routing="1",
                         max_splits_used=1, pipeline_us=55.0,
                         routing_us=4.5, permute_us=0.0, gemm1_us=35.2, gemm2_us=12.5, finalize_us=4.2)]
    assert patterns == [dict(shape="deepseek-v3 gemm1 T=1", layout="linear", spin=200, warps=512, mb=117.44,
                             us=58.3, gb_per_s=2013)]
    # The finalize-alone line (printf format of stage_timer --finalize).
    fin = timer_report.parse_finalize(
        "finalize deepseek-v3    T=256    K=8 H=7168 33.03 MB | vectorized     14.2 us   2326 GB/s"
        " scalar     21.3 us   1551 GB/s\n")
    assert fin == [dict(model="deepseek-v3", T=256, K=8, H=7168, mb=33.03, vectorized_us=14.2,
                        vectorized_gb_per_s=2326, scalar_us=21.3, scalar_gb_per_s=1551, speedup=21.3 / 14.2)]
    md = timer_report.markdown(dict(device="d", date="x", commit="c", command="cmd", gpu_tests="t", rows=rows,
                                    patterns=patterns, counters=[]))
    assert "| n/a | n/a | n/a | n/a | 1 | 224.7 | 6.7 | 5.3 | 98.8 | 114.8 | 4.5 |" in md
    assert "| 0 | (unset) | 0 | n/a | 4 | 161.4 | 5.9 | 5.1 | 93.8 | 58.2 | 4.5 |" in md
    assert "| (unset) | (unset) | (unset) | 1 | 1 | 55.0 | 4.5 | 0.0 | 35.2 | 12.5 | 4.2 |" in md
    md = timer_report.markdown(dict(device="d", date="x", commit="c", command="cmd", gpu_tests="t", rows=rows,
                                    patterns=patterns, finalize=fin, counters=[]))
    assert "| deepseek-v3 | 256 | 8 | 7168 | 33.03 | 14.2 | 2326 | 21.3 | 1551 | 1.50 |" in md


def test_merge_results_takes_finalize_rows_from_the_stage_timer(tmp_path):
    """merge_results --finalize-timer: the stage timer's finalize-alone lines
    become the table's finalize rows, as shares of the run's copy bandwidth."""
    from benchmarks import merge_results, report

    path = tmp_path / "timer.txt"
    path.write_text("finalize deepseek-v3    T=256    K=8 H=7168 33.03 MB | vectorized     14.8 us   2225 GB/s"
                    " scalar     23.8 us   1387 GB/s\n")
    rows = merge_results.finalize_from_timer(str(path), copy_bw_gbs=3600.0)
    assert rows == [dict(model="deepseek-v3", T=256, H=7168, K=8, vec_us=14.8, scalar_us=23.8,
                         vec_fraction_of_copy_bw=2225 / 3600.0, vec_speedup_vs_scalar=23.8 / 14.8,
                         source="stage_timer")]
    md = report.finalize_table_md(rows)
    assert "| 256 | deepseek-v3 | 7168 | 8 | 14.8 | 23.8 | 1.61 | 62% |" in md


def test_merge_results_later_parts_replace_rows_they_measure_again(tmp_path):
    """A row a later part measures again (same model, T, weights, acts) is the
    later part's; the other rows stay, each naming its part."""
    from benchmarks import merge_results

    def part(name, commit, rows):
        path = tmp_path / name
        path.write_text(json.dumps(dict(device="d", date="x", commit=commit, jax="j", copy_bw_GBs=3600.0,
                                        bf16_matmul_TFLOPs=600.0, rows=rows)))
        return str(path)

    def row(T, time_us):
        return dict(model="m", T=T, weights="nvfp4", acts="bf16", time_us=time_us, mem_floor_us=10.0,
                    compute_floor_us=1.0, ragged_dot_bf16_us=None, reference_us=None)

    old = part("old.json", "aaa", [row(1, 50.0), row(512, 900.0)])
    new = part("new.json", "bbb", [row(1, 40.0)])
    merged = merge_results.merge([old, new])
    by_t = {r["T"]: r for r in merged["rows"]}
    assert len(merged["rows"]) == 2
    assert (by_t[1]["time_us"], merged["parts"][by_t[1]["part"]]["commit"]) == (40.0, "bbb")
    assert (by_t[512]["time_us"], merged["parts"][by_t[512]["part"]]["commit"]) == (900.0, "aaa")


def test_call_plan_rotates_copies_and_never_repeats_an_input():
    """Decode rows time many calls per executable (rounds over the weight
    copies); every call must get its own input rows, or XLA may merge equal
    calls (the v2 tuner's 8x error), and consecutive calls other copies."""
    from benchmarks.moe import call_plan, rounds_for

    plan = call_plan(copies=3, rounds=4)
    assert len(plan) == 12
    assert len({i for i, _ in plan}) == 12
    assert [c for _, c in plan] == [0, 1, 2] * 4
    assert all(a[1] != b[1] for a, b in zip(plan, plan[1:]))
    assert rounds_for(1, 8) == 8 and rounds_for(64, 8) == 8 and rounds_for(65, 8) == 1 and rounds_for(8, 0) == 1
