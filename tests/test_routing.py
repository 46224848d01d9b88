"""Tests for jax_moe.routing: hand-computed cases, a numpy oracle, errors."""

from __future__ import annotations

import functools
import zlib
from typing import List, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_moe.routing import (RoutingMethod, as_routing_method, expert_mask,
                             route, topk_desc)

M = RoutingMethod
STATIC = ("method", "top_k", "n_group", "topk_group")
jit_route = jax.jit(route, static_argnames=STATIC)


def _f32(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float32)


def _logit(s) -> np.ndarray:
    """Inverse sigmoid, so tests can state the sigmoid scores they want."""
    s = np.asarray(s, np.float64)
    return _f32(np.log(s / (1.0 - s)))


def _check(got: Tuple[jax.Array, jax.Array], ids, weights,
           atol: float = 1e-6) -> None:
    got_ids, got_w = got
    assert got_ids.dtype == jnp.int32
    assert got_w.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(got_ids), np.asarray(ids))
    np.testing.assert_allclose(np.asarray(got_w), np.asarray(weights),
                               rtol=1e-6, atol=atol)


# ---------------------------------------------------------------------------
# Enum and parsing.
# ---------------------------------------------------------------------------


def test_enum_values_match_cpp_header():
    # ffi_src/common/enums.h mirrors these numbers; they must never change.
    assert [(m.name, int(m)) for m in M] == [
        ("DEFAULT", 0), ("RENORMALIZE", 1), ("DEEPSEEK_V3", 2), ("LLAMA4", 3),
        ("TOPK", 4)]


@pytest.mark.parametrize("value, expected", [
    (M.LLAMA4, M.LLAMA4),
    (1, M.RENORMALIZE),
    (np.int64(2), M.DEEPSEEK_V3),
    ("renormalize", M.RENORMALIZE),
    ("RENORMALIZE", M.RENORMALIZE),
    ("Default", M.DEFAULT),
    ("deepseek_v3", M.DEEPSEEK_V3),
    ("deepseekv3", M.DEEPSEEK_V3),
    ("DeepSeek-V3", M.DEEPSEEK_V3),
    ("llama4", M.LLAMA4),
    ("topk", M.TOPK),
])
def test_parse_accepts(value, expected):
    assert M.parse(value) is expected
    assert as_routing_method(value) is expected


@pytest.mark.parametrize("value", ["softmax", "", 5, -1, True, 1.0, None])
def test_parse_rejects_and_lists_choices(value):
    with pytest.raises(ValueError, match="renormalize.*deepseek_v3.*topk"):
        M.parse(value)


# ---------------------------------------------------------------------------
# topk_desc: the tie rule everything else relies on.
# ---------------------------------------------------------------------------


def test_topk_desc_ties_smaller_index_first():
    x = jnp.array([2.0, 5.0, 5.0, 1.0, 5.0, 5.0])
    values, idx = topk_desc(x, 4)
    np.testing.assert_array_equal(idx, [1, 2, 4, 5])
    np.testing.assert_array_equal(values, [5.0, 5.0, 5.0, 5.0])
    _, idx = topk_desc(x, 6)
    np.testing.assert_array_equal(idx, [1, 2, 4, 5, 0, 3])


@pytest.mark.parametrize("row, expected", [
    ([-0.0, 0.0, -1.0], [0, 1, 2]),
    ([0.0, -0.0, -1.0], [0, 1, 2]),
    ([-1.0, -0.0, 0.0, -0.0], [1, 2, 3, 0]),
])
def test_topk_desc_signed_zeros_tie(row, expected):
    # A total-order sort would put +0.0 before -0.0; they must tie instead.
    values, idx = jax.jit(topk_desc, static_argnums=1)(jnp.array(row), len(row))
    np.testing.assert_array_equal(idx, expected)
    # The returned values are the original ones, zero sign included.
    np.testing.assert_array_equal(np.signbit(values),
                                  np.signbit(np.array(row)[expected]))


def test_topk_desc_nan_ranks_last_and_inf_ordered():
    x = jnp.array([jnp.nan, -jnp.inf, 1.0, -jnp.nan, jnp.inf])
    _, idx = topk_desc(x, 5)
    np.testing.assert_array_equal(idx, [4, 2, 1, 0, 3])


def test_topk_desc_random_ties_against_python_sort():
    # Few distinct values, so almost every row is full of ties.
    rng = np.random.default_rng(0)
    x = _f32(rng.integers(-3, 4, size=(3, 50, 40)))
    values, idx = topk_desc(jnp.asarray(x), 9)
    for row, got in zip(x.reshape(-1, 40), np.asarray(idx).reshape(-1, 9)):
        want = sorted(range(40), key=lambda i: (-row[i], i))[:9]
        assert list(got) == want
    np.testing.assert_array_equal(values, np.take_along_axis(x, idx, -1))


@pytest.mark.parametrize("k", [0, 5, -1])
def test_topk_desc_rejects_bad_k(k):
    with pytest.raises(ValueError, match="k must satisfy 1 <= k <= 4"):
        topk_desc(jnp.zeros(4), k)


# ---------------------------------------------------------------------------
# Hand-computed cases.
# ---------------------------------------------------------------------------

# Token 0: x = [1, 3, 2, 3, 0]; experts 1 and 3 tie at 3, so 1 comes first.
# Token 1: five equal logits; the first k experts win, in index order.
TWO_TOKENS = _f32([[1.0, 3.0, 2.0, 3.0, 0.0],
                   [0.5, 0.5, 0.5, 0.5, 0.5]])


def test_default_hand():
    # exp(x - 3) = [e^-2, 1, e^-1, 1, e^-3], sum S = 2.5530018
    # p = [.., 1/S, e^-1/S, 1/S, ..] = 0.39169577, 0.14409682; top-3 = 1, 3, 2
    # Token 1: p = 1/5 each. Weights are p, not renormalised over the k.
    _check(jit_route(TWO_TOKENS, method=M.DEFAULT, top_k=3),
           [[1, 3, 2], [0, 1, 2]],
           [[0.39169577, 0.39169577, 0.14409682], [0.2, 0.2, 0.2]])


def test_renormalize_hand():
    # Selected logits [3, 3, 2]: exp(x - 3) = [1, 1, e^-1], sum 2.3678794
    # -> 0.42231880, 0.42231880, 0.15536240. Token 1: 1/3 each.
    _check(jit_route(TWO_TOKENS, method=M.RENORMALIZE, top_k=3),
           [[1, 3, 2], [0, 1, 2]],
           [[0.4223188, 0.4223188, 0.1553624], [1 / 3, 1 / 3, 1 / 3]])


def test_topk_weights_are_raw_logits():
    x = _f32([[-1.5, 0.25, -0.75, 3.0], [-4.0, -2.0, -3.0, -1.0]])
    # Row 0 sorted: 3.0 (3), 0.25 (1), -0.75 (2); row 1: -1 (3), -2 (1), -3 (2)
    _check(jit_route(x, method="topk", top_k=3),
           [[3, 1, 2], [3, 1, 2]],
           [[3.0, 0.25, -0.75], [-1.0, -2.0, -3.0]], atol=0)


def test_default_vs_renormalize():
    # x = log([1, 2, 3, 4]) -> full softmax p = [0.1, 0.2, 0.3, 0.4].
    x = _f32(np.log([[1.0, 2.0, 3.0, 4.0]]))
    # DEFAULT keeps p for experts 3, 2: [0.4, 0.3], summing to 0.7.
    _check(jit_route(x, method=M.DEFAULT, top_k=2), [[3, 2]], [[0.4, 0.3]])
    # RENORMALIZE: softmax over the two selected: [4, 3] / 7.
    _check(jit_route(x, method=M.RENORMALIZE, top_k=2), [[3, 2]],
           [[4 / 7, 3 / 7]])


def test_llama4_hand():
    x = _f32([[-1.0, 2.0, 0.5, 2.0], [-3.0, -2.0, -5.0, -4.0]])
    # Row 0: experts 1 and 3 tie at 2 -> 1; sigmoid(2) = 0.88079708.
    # Row 1: max is -2 at expert 1; sigmoid(-2) = 0.11920292.
    _check(jit_route(x, method=M.LLAMA4, top_k=1), [[1], [1]],
           [[0.88079708], [0.11920292]])
    # Token 0 of TWO_TOKENS: argmax 1 (tie with 3); sigmoid(3) = 0.95257413.
    _check(jit_route(TWO_TOKENS[:1], method="llama4", top_k=1), [[1]],
           [[0.95257413]])


def test_deepseek_ungrouped_hand():
    # s = sigmoid([1, 3, 2, 3, 0]) = [.731, .95257413, .88079708, .95257413, .5]
    # top-3 of s: 1, 3, 2; sum = 2.78594533
    # weights = s / sum = 0.34192133, 0.34192133, 0.31615734 (scale 1).
    _check(jit_route(TWO_TOKENS[:1], method=M.DEEPSEEK_V3, top_k=3),
           [[1, 3, 2]], [[0.34192133, 0.34192133, 0.31615734]])


# Sigmoid scores for the grouped example (E = 8, groups of 2 experts):
#   group:  g0         g1         g2         g3
#   s:      .9  .1     .6  .6     .8  .2     .55 .5
#   sum2:   1.0        1.2        1.0        1.05
# The best two groups are g1 and g3, while the plain top-2 is {0, 4}.
GROUPED_S = [0.9, 0.1, 0.6, 0.6, 0.8, 0.2, 0.55, 0.5]


def test_deepseek_grouped_differs_from_plain_topk():
    x = _logit([GROUPED_S])
    kw = dict(method=M.DEEPSEEK_V3, n_group=4, topk_group=2)
    # Candidates {2: .6, 3: .6, 6: .55, 7: .5}; 2 and 3 tie -> [2, 3].
    # weights = .6 / 1.2 = 0.5 each.
    _check(jit_route(x, top_k=2, **kw), [[2, 3]], [[0.5, 0.5]])
    # top-3 adds expert 6: sum = 1.75
    # -> .6/1.75 = .34285714, .55/1.75 = .31428571
    _check(jit_route(x, top_k=3, **kw), [[2, 3, 6]],
           [[0.34285714, 0.34285714, 0.31428571]])
    # Without groups: experts 0 (.9) and 4 (.8); .9/1.7, .8/1.7.
    _check(jit_route(x, method=M.DEEPSEEK_V3, top_k=2), [[0, 4]],
           [[0.52941176, 0.47058824]])
    # n_group = 1 also means no grouping.
    _check(jit_route(x, method=M.DEEPSEEK_V3, top_k=2, n_group=1, topk_group=1),
           [[0, 4]], [[0.52941176, 0.47058824]])


def test_deepseek_negative_bias_masks_with_minus_inf():
    # s    = [.8,  .2,  .75,  .25,  .5,  .5,  .6,  .4]
    # bias = [-1, -.5,  -2,   -2,   -1,  -1,  -.5, -.25]
    # b    = [-.2, -.3, -1.25, -1.75, -.5, -.5, .1, .15]
    # group sums: g0 = -.5, g1 = -3, g2 = -1, g3 = .25 -> keep g3, g0.
    # Kept experts by b: 7 (.15), 6 (.1), 0 (-.2), 1 (-.3). Had the masked
    # experts been set to 0 instead of -inf, 2 and 3 would beat 0 and 1.
    # weights = s * 2.5 / (.4 + .6 + .8 + .2 = 2.0) = [.5, .75, 1.0, .25]
    x = _logit([[0.8, 0.2, 0.75, 0.25, 0.5, 0.5, 0.6, 0.4]])
    bias = _f32([-1.0, -0.5, -2.0, -2.0, -1.0, -1.0, -0.5, -0.25])
    kw = dict(method=M.DEEPSEEK_V3, n_group=4, topk_group=2, bias=bias,
              routed_scaling_factor=2.5)
    _check(jit_route(x, top_k=4, **kw), [[7, 6, 0, 1]],
           [[0.5, 0.75, 1.0, 0.25]])
    # top-3: sum = 1.8 -> .4*2.5/1.8, .6*2.5/1.8, .8*2.5/1.8
    _check(jit_route(x, top_k=3, **kw), [[7, 6, 0]],
           [[0.55555556, 0.83333333, 1.11111111]])


def test_deepseek_scaling_factor_and_group_ties():
    # All logits 0: s = .5 everywhere, all four groups tie at 1.0, so the
    # smaller group index wins: g0 -> experts [0, 1].
    # weights = .5 * 2.5 / (.5 + .5) = 1.25 each.
    x = jnp.zeros((2, 8))
    _check(jit_route(x, method=M.DEEPSEEK_V3, top_k=2, n_group=4, topk_group=1,
                 routed_scaling_factor=2.5),
           [[0, 1], [0, 1]], [[1.25, 1.25], [1.25, 1.25]])


def test_deepseek_single_expert_groups():
    # n_group = E: each group's score is its single biased score.
    # s = [.3, .9, .7, .8]; best two groups = experts 1, 3 -> .9/1.7, .8/1.7
    x = _logit([[0.3, 0.9, 0.7, 0.8]])
    _check(jit_route(x, method=M.DEEPSEEK_V3, top_k=2, n_group=4, topk_group=2),
           [[1, 3]], [[0.52941176, 0.47058824]])


def test_bf16_logits_are_cast_to_fp32():
    x = jnp.array([[1.0, 3.0, 2.0, 3.0, 0.0]], jnp.bfloat16)
    _check(jit_route(x, method=M.RENORMALIZE, top_k=3), [[1, 3, 2]],
           [[0.4223188, 0.4223188, 0.1553624]])


# ---------------------------------------------------------------------------
# Independent numpy oracle on random data.
# ---------------------------------------------------------------------------


def _ranked(scores, candidates) -> List[int]:
    """Candidates sorted by (-score, index), using Python's sort."""
    return sorted(candidates, key=lambda i: (-float(scores[i]), i))


def _np_sigmoid(x: np.ndarray) -> np.ndarray:
    one = np.float32(1.0)
    return one / (one + np.exp(-x))


def _oracle_token(x: np.ndarray, method: M, k: int, n_group: int,
                  topk_group: int, scale: float,
                  bias: Optional[np.ndarray]) -> Tuple[List[int], List[float]]:
    """Routes one token with plain numpy/Python, one method at a time."""
    e = len(x)
    if method == M.DEFAULT:
        ex = np.exp(x - x.max())
        p = ex / np.float32(sum(ex.tolist()))
        ids = _ranked(p, range(e))[:k]
        return ids, [p[i] for i in ids]
    if method in (M.RENORMALIZE, M.TOPK, M.LLAMA4):
        ids = _ranked(x, range(e))[:k]
        sel = x[ids]
        if method == M.TOPK:
            return ids, list(sel)
        if method == M.LLAMA4:
            return ids, list(_np_sigmoid(sel))
        ex = np.exp(sel - sel[0])  # sel[0] is the largest selected logit.
        return ids, list(ex / np.float32(sum(ex.tolist())))
    s = _np_sigmoid(x)
    b = s + (np.zeros(e, np.float32) if bias is None else bias)
    candidates = range(e)
    if n_group > 1:
        size = e // n_group
        gscore = []
        for g in range(n_group):
            top = sorted(b[g * size:(g + 1) * size].tolist(), reverse=True)
            gscore.append(np.float32(top[0]) + np.float32(top[1])
                          if size > 1 else np.float32(top[0]))
        kept = _ranked(gscore, range(n_group))[:topk_group]
        candidates = [i for g in sorted(kept)
                      for i in range(g * size, (g + 1) * size)]
    ids = _ranked(b, candidates)[:k]
    total = np.float32(0.0)
    for i in ids:
        total = np.float32(total + s[i])
    denom = np.float32(total + np.float32(1e-20))
    return ids, [np.float32(s[i] * np.float32(scale)) / denom for i in ids]


def _oracle(x, method, k, n_group=0, topk_group=0, scale=1.0, bias=None):
    ids, weights = zip(*(_oracle_token(row, method, k, n_group, topk_group,
                                       scale, bias) for row in x))
    return np.array(ids, np.int32), np.array(weights, np.float32)


TOKENS = (1, 7, 64)
TOP_KS = (1, 2, 4, 8)

# (n_group, topk_group) per E for grouped DeepSeek-V3; each K uses the first
# one whose capacity topk_group * E / n_group fits K. E = 8 exercises
# two-expert groups, single-expert groups and all-groups-kept.
_GROUPS = {
    8: [(4, 2), (8, 4), (2, 2)],
    128: [(8, 4)],
    256: [(8, 4)],  # DeepSeek-V3 / R1.
}


def _cases():
    """Yields (method, E, n_group, topk_group, top_ks) oracle cases."""
    for e in sorted(_GROUPS):
        for method in (M.DEFAULT, M.RENORMALIZE, M.TOPK, M.DEEPSEEK_V3):
            yield method, e, 0, 0, TOP_KS
        yield M.LLAMA4, e, 0, 0, (1,)
        by_group = {}
        for k in TOP_KS:
            ng, tg = next(g for g in _GROUPS[e] if k <= g[1] * e // g[0])
            by_group.setdefault((ng, tg), []).append(k)
        for (ng, tg), ks in by_group.items():
            yield M.DEEPSEEK_V3, e, ng, tg, tuple(ks)


def _case_id(case) -> str:
    method, e, ng, tg, ks = case
    groups = f"-g{ng}x{tg}" if ng else ""
    return f"{method.name}-E{e}{groups}-K{'.'.join(map(str, ks))}"


@functools.partial(jax.jit, static_argnames=("method", "top_ks", "n_group",
                                             "topk_group"))
def _route_all(x, bias, scale, *, method, top_ks, n_group, topk_group):
    """Routes the first T tokens for every (K, T), as one jit compilation.

    Compiling one program per case instead of one per (K, T) pair keeps this
    file fast; every route call is still traced at its own static shape.
    """
    return {(k, t): route(x[:t], method=method, top_k=k, n_group=n_group,
                          topk_group=topk_group, bias=bias,
                          routed_scaling_factor=scale)
            for k in top_ks for t in TOKENS}


@pytest.mark.parametrize("case", list(_cases()), ids=_case_id)
def test_matches_numpy_oracle(case):
    method, e, ng, tg, ks = case
    # crc32, unlike hash(), gives the same seed in every process.
    rng = np.random.default_rng(zlib.crc32(_case_id(case).encode()))
    t_max = max(TOKENS)
    # Continuous data, then a coarse grid where ties are everywhere.
    datasets = [
        (_f32(rng.normal(0.0, 2.0, (t_max, e))),
         _f32(rng.normal(0.0, 0.5, e))),
        (_f32(rng.integers(-8, 8, (t_max, e)) / 4),
         _f32(rng.integers(-4, 4, e) / 8)),
    ]
    # Only DeepSeek-V3 reads the bias and scale; the others must ignore them.
    deepseek = method == M.DEEPSEEK_V3
    scale = 2.5 if deepseek else 1.0
    for x, bias in datasets:
        got = _route_all(jnp.asarray(x), jnp.asarray(bias), scale,
                         method=method, top_ks=ks, n_group=ng, topk_group=tg)
        for (k, t), (ids, weights) in got.items():
            where = f"K={k} T={t}"
            assert ids.shape == weights.shape == (t, k), where
            want_ids, want_w = _oracle(x[:t], method, k, ng, tg, scale,
                                       bias if deepseek else None)
            np.testing.assert_array_equal(np.asarray(ids), want_ids,
                                          err_msg=where)
            np.testing.assert_allclose(np.asarray(weights), want_w, rtol=1e-6,
                                       atol=0, err_msg=where)


# ---------------------------------------------------------------------------
# Validation.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("shape, kw, message", [
    ((8,), dict(method=M.TOPK, top_k=2), r"logits must be 2-D.*\(8,\)"),
    ((2, 3, 8), dict(method=M.TOPK, top_k=2), r"logits must be 2-D"),
    ((2, 8), dict(method=M.TOPK, top_k=0), r"top_k must satisfy 1 <= top_k "
     r"<= E \(=8\), got 0"),
    ((2, 8), dict(method=M.RENORMALIZE, top_k=9), r"top_k .*E \(=8\), got 9"),
    ((2, 8), dict(method=M.TOPK, top_k=2.0), r"top_k must be a static "
     r"Python int"),
    ((2, 8), dict(method=M.LLAMA4, top_k=2), r"top_k must be 1 for LLAMA4.*"
     r"got 2"),
    ((2, 10), dict(method=M.DEEPSEEK_V3, top_k=2, n_group=4, topk_group=2),
     r"n_group must divide.*E=10, n_group=4"),
    ((2, 8), dict(method=M.DEEPSEEK_V3, top_k=2, n_group=4, topk_group=0),
     r"topk_group must satisfy 1 <= topk_group <= n_group \(=4\), got 0"),
    ((2, 8), dict(method=M.DEEPSEEK_V3, top_k=2, n_group=4, topk_group=5),
     r"topk_group .* got 5"),
    ((2, 8), dict(method=M.DEEPSEEK_V3, top_k=5, n_group=4, topk_group=2),
     r"top_k must be <= topk_group \* \(E // n_group\) = 2 \* 2 = 4, got 5"),
    ((2, 8), dict(method=M.DEEPSEEK_V3, top_k=2, bias=np.zeros(7)),
     r"bias must have shape \(E,\) = \(8,\), got \(7,\)"),
    ((2, 8), dict(method=M.DEEPSEEK_V3, top_k=2, bias=np.zeros((1, 8))),
     r"bias must have shape .* got \(1, 8\)"),
    ((2, 8), dict(method="sparsemixer", top_k=2), r"invalid RoutingMethod"),
])
def test_validation_errors(shape, kw, message):
    with pytest.raises(ValueError, match=message):
        route(jnp.zeros(shape), **kw)


def test_validation_also_fires_under_jit():
    with pytest.raises(ValueError, match="top_k must be 1 for LLAMA4"):
        jit_route(jnp.zeros((2, 8)), method=M.LLAMA4, top_k=2)


# ---------------------------------------------------------------------------
# jit and expert_mask.
# ---------------------------------------------------------------------------


def test_jit_with_traced_scale_and_bias_matches_eager():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(5, 16)), jnp.float32)
    bias = jnp.asarray(rng.normal(size=16) * 0.3, jnp.float32)
    kw = dict(method="deepseek_v3", top_k=3, n_group=4, topk_group=2)
    eager = route(x, bias=bias, routed_scaling_factor=2.5, **kw)
    traced = jit_route(x, bias=bias, routed_scaling_factor=jnp.float32(2.5),
                       **kw)
    np.testing.assert_array_equal(traced[0], eager[0])
    np.testing.assert_allclose(traced[1], eager[1], rtol=1e-6)


def test_expert_mask():
    ids = jnp.array([[0, 3, 4], [7, 5, 2]], jnp.int32)
    np.testing.assert_array_equal(
        expert_mask(ids, 3, 3), [[False, True, True], [False, True, False]])
    # Offsets may be traced, e.g. derived from the device's axis index.
    traced = jax.jit(expert_mask)(ids, jnp.int32(4), jnp.int32(4))
    np.testing.assert_array_equal(
        traced, [[False, False, True], [True, True, False]])
