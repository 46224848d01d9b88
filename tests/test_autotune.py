"""The autotuner (jax_moe/autotune.py) on the CPU handlers: buckets, keys,
the tuning loop, the cache file and its failure modes."""

import dataclasses
import importlib
import json
import logging
import os
import re
import subprocess
import sys
import textwrap

import jax
import pytest

import jax_moe
from jax_moe import tactics
from jax_moe.activation import Activation
from jax_moe.formats import Format
from jax_moe.routing import RoutingMethod
from moe_cases import assert_close, make_case, run_op_and_reference

at = importlib.import_module("jax_moe.autotune")

SHAPE = dict(H=64, I=32, E=4, top_k=2)
ATTRS = dict(routed_scaling_factor=1.0, swiglu_alpha=1.702, swiglu_beta=1.0, swiglu_limit=7.0)


@pytest.fixture(autouse=True)
def fresh_cache(monkeypatch):
    monkeypatch.delenv("JAX_MOE_TUNING_CACHE", raising=False)
    monkeypatch.delenv("JAX_MOE_AUTOTUNE", raising=False)
    at.clear_cache()
    yield
    at.clear_cache()


def _tactic_in_hlo(f, *args) -> int:
    text = f.lower(*args).as_text()
    return int(re.search(r"(?<!\w)tactic = (-?\d+)", text).group(1))  # not gemm2_tactic


def _op(case, T=None, **extra):
    kw = {**case.kwargs, **extra}
    return jax.jit(lambda h, l: jax_moe.fp4_moe(h, l, case.w13, case.w2, **kw))


# ---- buckets ---------------------------------------------------------------

def test_bucket_table():
    expected = {1: 1, 2: 2, 3: 4, 5: 8, 200: 256, 256: 256, 257: 512, 511: 512, 513: 768, 2048: 2048,
                2049: 2560, 4000: 4096, 4097: 8192, 9000: 16384, 16384: 16384}
    assert {t: jax_moe.bucket_of(t) for t in expected} == expected
    buckets = at.all_buckets()
    assert buckets[:9] == (1, 2, 4, 8, 16, 32, 64, 128, 256)
    assert buckets[-3:] == (4096, 8192, 16384) and 2560 in buckets and 768 in buckets


def test_every_token_count_hits_a_bucket_at_or_above_it():
    buckets = set(at.all_buckets())
    for t in list(range(1, 3000)) + [5000, 12345, 16383]:
        b = jax_moe.bucket_of(t)
        assert b in buckets and b >= t, t


def test_tokens_beyond_the_largest_bucket_clamp_with_one_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="jax_moe"):
        assert jax_moe.bucket_of(20000) == 16384
        assert jax_moe.bucket_of(30000) == 16384
        assert jax_moe.bucket_of(100, max_tokens=64) == 64
    assert sum("exceed the largest tuning bucket" in r.message for r in caplog.records) == 2


def test_explicit_bucket_list():
    assert jax_moe.bucket_of(5, buckets=[4, 16, 64]) == 16
    assert jax_moe.bucket_of(16, buckets=[4, 16, 64]) == 16


# ---- keys ------------------------------------------------------------------

def _problem(**kw):
    base = dict(num_tokens=20, hidden_size=64, intermediate_size=32, num_experts=4, num_local_experts=4, top_k=2)
    return jax_moe.MoEProblem(**{**base, **kw})


def test_cache_key_changes_with_every_static_attribute_but_not_t():
    base = at.cache_key("fp4_moe", _problem(), ATTRS, 32, "cpu")
    assert at.cache_key("fp4_moe", _problem(num_tokens=25), ATTRS, 32, "cpu") == base
    changed = dict(hidden_size=128, intermediate_size=64, num_experts=8, num_local_experts=2, top_k=1,
                   weight_format=Format.MXFP4, act_format=Format.MXFP8,
                   routing_method=RoutingMethod.DEEPSEEK_V3, n_group=2, topk_group=1,
                   activation=Activation.GEGLU, local_expert_offset=2, routed=True,
                   has_routing_bias=True, has_b13=True, has_b2=True, routing_weight_on_input=True,
                   do_finalize=False)
    assert set(changed) == {f.name for f in dataclasses.fields(jax_moe.MoEProblem)} - {"num_tokens"}
    keys = {base}
    for field, value in changed.items():
        keys.add(at.cache_key("fp4_moe", _problem(**{field: value}), ATTRS, 32, "cpu"))
    for attr in ATTRS:
        keys.add(at.cache_key("fp4_moe", _problem(), {**ATTRS, attr: 0.5}, 32, "cpu"))
    keys.add(at.cache_key("fp4_moe_routed", _problem(), ATTRS, 32, "cpu"))
    keys.add(at.cache_key("fp4_moe", _problem(), ATTRS, 64, "cpu"))
    keys.add(at.cache_key("fp4_moe", _problem(), ATTRS, 32, "NVIDIA H100 80GB HBM3"))
    assert len(keys) == 1 + len(changed) + len(ATTRS) + 3
    assert tactics.tactic_table_hash() in base


# ---- tuning ----------------------------------------------------------------

def test_tune_inside_autotune_then_reuse_without_tuning(tmp_path, caplog):
    path = tmp_path / "moe.json"
    case = make_case(T=20, **SHAPE)
    with caplog.at_level(logging.INFO, logger="jax_moe"):
        with jax_moe.autotune(cache=path):
            f = _op(case)
            out = f(case.hidden, case.logits)
            assert at.stats()["tuned"] == 1
            # Another T of the same bucket (32): no second tuning.
            case25 = make_case(T=25, **SHAPE)
            case25.w13, case25.w2, case25.kwargs = case.w13, case.w2, case.kwargs
            _op(case25)(case25.hidden, case25.logits)
            assert at.stats()["tuned"] == 1 and at.stats()["memory_hits"] >= 1
    assert any("autotune" in r.message for r in caplog.records)  # progress lines
    ref = jax.jit(lambda h, l: jax_moe.reference.moe_reference(h, l, case.w13, case.w2, **case.kwargs))
    assert_close(out, ref(case.hidden, case.logits), rel=5e-3)
    data = json.loads(path.read_text())
    assert data["metadata"]["tactic_table"] == tactics.tactic_table_hash()
    (key, entry), = data["entries"].items()
    assert json.loads(key)["bucket"] == 32
    assert tactics.tactic_table()[entry["tactic"]].platform == "cpu"
    assert entry["name"] == tactics.tactic_table()[entry["tactic"]].name


def test_cached_tactic_is_the_static_attribute(tmp_path):
    case = make_case(T=20, **SHAPE)
    problem = _problem()
    key = at.cache_key("fp4_moe", problem, ATTRS, 32, jax.devices("cpu")[0].device_kind)
    default = tactics.default_tactic(problem, "cpu")
    other = next(t.id for t in tactics.valid_tactics(problem, "cpu") if t.id != default)
    path = tmp_path / "c.json"
    at._state.entries[key] = dict(tactic=other, name=tactics.tactic_table()[other].name)
    at.save(str(path))
    at.clear_cache()
    os.environ["JAX_MOE_TUNING_CACHE"] = str(path)
    try:
        assert _tactic_in_hlo(_op(case), case.hidden, case.logits) == other
        assert at.stats()["tuned"] == 0 and at.stats()["file_loads"] == 1
    finally:
        del os.environ["JAX_MOE_TUNING_CACHE"]


def test_explicit_tactic_overrides_the_tuner():
    case = make_case(T=20, **SHAPE)
    with jax_moe.autotune():
        assert _tactic_in_hlo(_op(case, tactic=2), case.hidden, case.logits) == 2
    assert at.stats()["tuned"] == 0


def test_without_tuning_the_default_is_resolved_when_lowering():
    case = make_case(T=20, **SHAPE)
    expected = tactics.default_tactic(_problem(), "cpu")
    assert _tactic_in_hlo(_op(case), case.hidden, case.logits) == expected
    assert at.stats()["tuned"] == 0


def test_tune_ahead_of_time_returns_a_table():
    rows = jax_moe.tune(_problem(), buckets=[1, 8, 64], reps=3)
    assert [r["bucket"] for r in rows] == [1, 8, 64]
    cpu = {t.name for t in tactics.valid_tactics(_problem(), "cpu")}
    for r in rows:
        assert set(r["times_us"]) == cpu  # every valid tactic timed, the default included
        assert r["time_us"] > 0 and r["default_time_us"] > 0
        # A challenger only replaces the default when it is faster.
        assert r["tactic"] == r["default"] or r["time_us"] < r["default_time_us"]
    assert at.stats()["tuned"] == 3


def test_routed_op_tunes_with_valid_ids():
    rows = jax_moe.tune(_problem(routed=True), buckets=[16], reps=2)
    assert rows[0]["times_us"] and all(t > 0 for t in rows[0]["times_us"].values())


def test_failing_tactic_is_skipped_and_the_default_stands(monkeypatch, caplog):
    cuda = next(t for t in tactics.tactic_table() if t.platform == "cuda")
    real = tactics.tuning_candidates
    monkeypatch.setattr(tactics, "tuning_candidates",
                        lambda p, plat=None, exhaustive=False: real(p, plat, exhaustive=exhaustive) + [cuda.id])
    with caplog.at_level(logging.WARNING, logger="jax_moe"):
        rows = jax_moe.tune(_problem(), buckets=[4], reps=2)
    assert cuda.name not in rows[0]["times_us"]
    assert any(f"({cuda.name}) failed" in r.message for r in caplog.records)


# ---- the cache file ----------------------------------------------------------

def test_file_round_trip_across_processes(tmp_path):
    path = tmp_path / "shared.json"
    script = textwrap.dedent(f"""
        import importlib, json, re, sys
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        import jax, jax_moe
        from moe_cases import make_case
        at = importlib.import_module("jax_moe.autotune")
        case = make_case(T=20, H=64, I=32, E=4, top_k=2)
        f = jax.jit(lambda h, l: jax_moe.fp4_moe(h, l, case.w13, case.w2, **case.kwargs))
        with jax_moe.autotune(cache={str(path)!r}):
            text = f.lower(case.hidden, case.logits).as_text()
        print(json.dumps(dict(tactic=int(re.search(r"(?<!\\w)tactic = (-?\\d+)", text).group(1)), **at.stats())))
    """)
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    first = json.loads(subprocess.run([sys.executable, "-c", script], env=env, check=True,
                                      capture_output=True, text=True).stdout.strip().splitlines()[-1])
    second = json.loads(subprocess.run([sys.executable, "-c", script], env=env, check=True,
                                       capture_output=True, text=True).stdout.strip().splitlines()[-1])
    assert first["tuned"] == 1
    assert second["tuned"] == 0 and second["file_loads"] == 1 and second["memory_hits"] == 1
    assert second["tactic"] == first["tactic"]


@pytest.mark.parametrize("content", ["not json {", json.dumps({"entries": {}}), json.dumps([1, 2])])
def test_unreadable_file_is_ignored_with_a_warning(tmp_path, caplog, content):
    path = tmp_path / "bad.json"
    path.write_text(content)
    case = make_case(T=20, **SHAPE)
    with caplog.at_level(logging.WARNING, logger="jax_moe"):
        assert at.load(str(path)) == 0
        out, ref = run_op_and_reference(case)
    assert_close(out, ref, rel=5e-3)
    assert sum("ignoring cache file" in r.message for r in caplog.records) == 1


def test_file_from_another_tactic_table_is_ignored(tmp_path, caplog):
    path = tmp_path / "stale.json"
    meta = {**at._metadata(), "tactic_table": "0000000000000000"}
    path.write_text(json.dumps(dict(metadata=meta, entries={"k": {"tactic": 0}})))
    with caplog.at_level(logging.WARNING, logger="jax_moe"):
        assert at.load(str(path)) == 0
    assert any("another library/jax/tactic table" in r.message for r in caplog.records)


@pytest.mark.parametrize("bad", [999, "cuda", "wrong-name"])
def test_entry_naming_an_invalid_tactic_is_ignored(caplog, bad):
    case = make_case(T=20, **SHAPE)
    problem = _problem()
    key = at.cache_key("fp4_moe", problem, ATTRS, 32, jax.devices("cpu")[0].device_kind)
    if bad == "cuda":
        entry = dict(tactic=next(t.id for t in tactics.tactic_table() if t.platform == "cuda"))
    elif bad == "wrong-name":
        entry = dict(tactic=0, name="cpu_renamed_tactic")
    else:
        entry = dict(tactic=bad)
    at._state.entries[key] = entry
    with caplog.at_level(logging.WARNING, logger="jax_moe"):
        assert _tactic_in_hlo(_op(case), case.hidden, case.logits) == tactics.default_tactic(problem, "cpu")
    assert at.stats()["rejected"] == 1
    assert any("ignoring cached tactic" in r.message for r in caplog.records)


def test_save_merges_with_what_another_process_wrote(tmp_path):
    path = str(tmp_path / "merged.json")
    at._state.entries["a"] = dict(tactic=0)
    at.save(path)
    at.clear_cache()
    at._state.entries["b"] = dict(tactic=1)
    at.save(path)
    assert set(json.loads(open(path).read())["entries"]) == {"a", "b"}


def test_progress_is_visible_without_logging_configuration(capsys):
    logging.getLogger("jax_moe").setLevel(logging.WARNING)
    try:
        jax_moe.tune(_problem(), buckets=[2, 4], reps=2)
    finally:
        logging.getLogger("jax_moe").setLevel(logging.NOTSET)
    err = capsys.readouterr().err
    assert "jax_moe autotune" in err and "2/2" in err


def test_timed_executable_runs_every_call():
    """XLA merges custom calls with identical operands (CSE): the tuner's timed
    executable must hold one custom call per (repeat, weight copy), or it
    would time one call and divide by the repeat count."""
    problem = jax_moe.MoEProblem(8, 256, 128, 16, 16, 2)
    weights = at._synthetic_weights(problem, jax.random.key(0), 2)
    attrs = dict(swiglu_alpha=1.702, swiglu_beta=1.0, swiglu_limit=7.0, routed_scaling_factor=1.0)
    make, args = at._synthetic_call("fp4_moe", problem, attrs, jax.random.key(1), weights,
                                                 variants=3)
    for repeats in (0, 1, 3):
        hlo = make(0, repeats).lower(*args).compile().as_text()
        assert hlo.count('custom_call_target="jax_moe') == 2 * repeats, repeats
    with pytest.raises(ValueError, match="variants"):
        make(0, 4)


def _committed_tuning_table():
    # The exhaustive run (every valid tactic timed per bucket, H200, commit
    # ba7496b): the evidence the pruning rule was derived from. The current
    # benchmarks/results/autotune.json is a pruned run, which cannot show
    # what pruning dropped.
    path = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "results", "autotune_exhaustive_ba7496b.json")
    with open(path) as f:
        return json.load(f)


def test_pruned_cuda_candidates_keep_every_measured_winner():
    # Replays the committed H200 tuning table (timed over every valid tactic)
    # through the pruning rule: each bucket's measured winner must survive,
    # the default comes first, and pruning must actually drop candidates.
    from jax_moe.models import MODELS

    table = {t.name: t.id for t in tactics.tactic_table()}
    # A staged row and its weight-ring twin are one kernel shape; the pruning
    # rule keeps one of the two (the table predates the ring rows).
    shape = lambda t: (t.family, t.tile_tokens, t.tile_n, t.tokens_per_warp, t.k_chunk)
    twins = {t.id: {u.id for u in tactics.tactic_table() if shape(u) == shape(t)} for t in tactics.tactic_table()}
    replayed = 0
    for model, data in _committed_tuning_table()["models"].items():
        if data.get("exhaustive") is False:
            continue  # a pruned run cannot show what pruning dropped
        m = MODELS[model]
        problem = jax_moe.MoEProblem(1, m.hidden_size, m.intermediate_size, m.num_experts, m.num_experts,
                                     m.top_k, routing_method=m.routing, n_group=m.n_group,
                                     topk_group=m.topk_group, activation=m.activation,
                                     has_b13=m.biases, has_b2=m.biases)
        for row in data["rows"]:
            p = problem.with_tokens(row["bucket"])
            kept = tactics.tuning_candidates(p, "cuda")
            every = tactics.tuning_candidates(p, "cuda", exhaustive=True)
            assert kept[0] == every[0] == tactics.default_tactic(p, "cuda")
            assert set(kept) <= set(every) and len(kept) < len(every), (row["bucket"], kept, every)
            times = {n: t for n, t in row["times_us"].items() if n in table}
            winner = min(times, key=times.get)
            assert twins[table[winner]] & set(kept), (model, row["bucket"], winner, [tactics.tactic_table()[i].name for i in kept])
            replayed += 1
    assert replayed >= 20


def test_cpu_tuning_stays_exhaustive():
    p = jax_moe.MoEProblem(3, 64, 32, 8, 8, 2)
    assert sorted(tactics.tuning_candidates(p, "cpu")) == sorted(t.id for t in tactics.valid_tactics(p, "cpu"))
    assert len(tactics.tuning_candidates(p, "cpu")) >= 2
