"""Jit-time autotuning of the kernel tactic, per token-count bucket, with a persistent cache.

How a tactic is chosen when `fp4_moe(..., tactic=None)` is traced (T is static):

  1. explicit ``tactic=``                       (never reaches this module)
  2. the in-memory cache                        (entries tuned or loaded in this process)
  3. the persistent cache file                  (``autotune(cache=...)`` or ``JAX_MOE_TUNING_CACHE``)
  4. tune now                                   (inside ``with jax_moe.autotune():`` or ``JAX_MOE_AUTOTUNE=1``)
  5. the heuristic default                      (resolved when lowering, per platform)

T is rounded **up** to a bucket (`bucket_of`) so every T hits a tuned entry. A
cache key holds everything that can change the best kernel: the device kind,
the op, every static attribute and shape except T, the formats, the bucket and
a hash of the tactic table. Files carry metadata (library, jax, jaxlib, table
hash); a file that does not match, cannot be read, or names a tactic that is
not valid for the problem is ignored with one warning: never trusted, never a
crash.

Tuning runs on concrete synthetic inputs of the bucket's shape (realistic
spreads, never zeros) in a worker thread, outside the trace being built; each
valid tactic is compiled once, warmed up and timed (median of repeated runs of
a jitted loop over rotated weight copies). The default is always a candidate
and a challenger replaces it only when faster by more than the measured spread.
A tactic that fails or runs out of memory is skipped with one log line.

Public API: `autotune` (context manager), `tune` (ahead of time, returns a
table), `bucket_of`, `all_buckets`, `cache_key`, `clear_cache`, `stats`.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import json
import logging
import math
import os
import sys
import tempfile
import threading
import time
from typing import Any, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jax_moe import tactics
from jax_moe.problem import MoEProblem

logger = logging.getLogger("jax_moe")

FILE_FORMAT = 1
DEFAULT_MAX_TOKENS = 16384
_L2_BYTES = 50 << 20  # H100/H200 L2: weights of the timed calls must not fit in it


# ---------------------------------------------------------------------------
# Buckets
# ---------------------------------------------------------------------------


def _bucket_unclamped(num_tokens: int) -> int:
    """Powers of two to 256, steps of 256 to 2048, of 512 to 4096, then powers of two."""
    t = max(1, int(num_tokens))
    if t <= 256:
        return 1 << (t - 1).bit_length()
    if t <= 2048:
        return -(-t // 256) * 256
    if t <= 4096:
        return -(-t // 512) * 512
    return 1 << (t - 1).bit_length()


def all_buckets(max_tokens: int | None = None) -> tuple[int, ...]:
    """Every bucket up to (and including) the bucket of `max_tokens`."""
    top = _bucket_unclamped(_state.max_tokens if max_tokens is None else max_tokens)
    out, b = [], 1
    while b <= top:
        out.append(b)
        b = _bucket_unclamped(b + 1)
    return tuple(out)


def bucket_of(num_tokens: int, max_tokens: int | None = None,
              buckets: Sequence[int] | None = None) -> int:
    """The tuned bucket that serves `num_tokens`: T rounded up, clamped at the largest.

    With explicit `buckets` (as given to `autotune(buckets=...)`), the smallest
    bucket >= T. T above the largest bucket uses the largest, with a one-time
    warning (the kernels stay correct; only the tuning is extrapolated).
    """
    buckets = _state.buckets if buckets is None else tuple(sorted(buckets))
    max_tokens = _state.max_tokens if max_tokens is None else max_tokens
    if buckets:
        b = next((b for b in buckets if b >= num_tokens), buckets[-1])
        top = buckets[-1]
    else:
        b, top = _bucket_unclamped(num_tokens), _bucket_unclamped(max_tokens)
    if num_tokens > top:
        _warn_once(("clamp", top), f"jax_moe autotune: {num_tokens} tokens exceed the largest tuning "
                   f"bucket ({top}); using that bucket's tactic (raise max_tokens to tune larger).")
        return top
    return b


# ---------------------------------------------------------------------------
# State and cache keys
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class _State:
    entries: dict[str, dict] = dataclasses.field(default_factory=dict)
    enabled_depth: int = 0
    max_tokens: int = DEFAULT_MAX_TOKENS
    buckets: tuple[int, ...] | None = None
    cache_path: str | None = None
    env_loaded: bool = False
    warned: set = dataclasses.field(default_factory=set)
    counters: dict = dataclasses.field(default_factory=lambda: dict(tuned=0, memory_hits=0, file_loads=0,
                                                                     rejected=0))


_state = _State()
_lock = threading.RLock()


def _warn_once(tag: Any, message: str) -> None:
    with _lock:
        if tag in _state.warned:
            return
        _state.warned.add(tag)
    logger.warning(message)


def stats() -> dict[str, int]:
    """Counters of this process: buckets tuned, in-memory hits, files loaded, entries rejected."""
    with _lock:
        return dict(_state.counters)


def clear_cache() -> None:
    """Forgets every in-memory entry and warning (the files are untouched)."""
    with _lock:
        _state.entries.clear()
        _state.warned.clear()
        _state.env_loaded = False
        for k in _state.counters:
            _state.counters[k] = 0


def _device_kind(platform: str) -> str:
    devices = jax.devices("gpu" if platform == "cuda" else platform)
    return devices[0].device_kind


def cache_key(op: str, problem: MoEProblem, attrs: dict[str, Any], bucket: int,
              device_kind: str) -> str:
    """Canonical JSON of everything that can change the best tactic (T only via its bucket)."""
    key = dict(op=op, device=device_kind, bucket=int(bucket), table=tactics.tactic_table_hash(),
               **problem.key_fields(),
               **{k: (float(v) if isinstance(v, (float, np.floating)) else v) for k, v in attrs.items()})
    return json.dumps(key, sort_keys=True)


def _metadata() -> dict[str, Any]:
    import jaxlib

    from jax_moe import __version__

    return dict(format=FILE_FORMAT, jax_moe=__version__, jax=jax.__version__,
                jaxlib=jaxlib.__version__, tactic_table=tactics.tactic_table_hash())


# ---------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------


def _read_file(path: str) -> dict[str, dict] | None:
    """The entries of a cache file, or None (with one warning) if it cannot be trusted."""
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            data = json.load(f)
        meta, entries = data["metadata"], data["entries"]
        if not isinstance(entries, dict):
            raise ValueError("'entries' is not an object")
    except Exception as exc:  # unreadable or malformed: never a crash
        _warn_once(("bad-file", path), f"jax_moe autotune: ignoring cache file {path!r}: cannot read it ({exc})")
        return None
    expected = _metadata()
    diff = {k: (meta.get(k), v) for k, v in expected.items() if meta.get(k) != v}
    if diff:
        _warn_once(("stale-file", path), f"jax_moe autotune: ignoring cache file {path!r}: written by another "
                   f"library/jax/tactic table (file vs now: {diff})")
        return None
    return entries


def load(path: str) -> int:
    """Merges a cache file into the in-memory cache; returns the entries loaded (0 if ignored)."""
    entries = _read_file(path)
    if entries is None:
        return 0
    with _lock:
        for k, v in entries.items():
            _state.entries.setdefault(k, v)
        _state.counters["file_loads"] += 1
    logger.info("jax_moe autotune: loaded %d entries from %s", len(entries), path)
    return len(entries)


def save(path: str) -> None:
    """Writes the in-memory cache to `path` atomically, merged with what the file
    holds now (so several processes can share one file)."""
    with _lock:
        merged = dict(_read_file(path) or {})
        merged.update(_state.entries)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".jax_moe_tuning.", dir=directory)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(dict(metadata=_metadata(), entries=merged), f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    logger.info("jax_moe autotune: wrote %d entries to %s", len(merged), path)


def _load_env_file_once() -> None:
    with _lock:
        if _state.env_loaded:
            return
        _state.env_loaded = True
    path = os.environ.get("JAX_MOE_TUNING_CACHE")
    if path:
        load(path)


@contextlib.contextmanager
def autotune(cache: str | os.PathLike | None = None, *, buckets: Sequence[int] | None = None,
             max_tokens: int | None = None) -> Iterator[None]:
    """Tune (and remember) the tactic of every `fp4_moe` traced inside this block.

    Args:
      cache: JSON file loaded on entry and written (atomically, merged with
        its current content) on exit. Default: ``$JAX_MOE_TUNING_CACHE`` if set.
      buckets: the token-count buckets to tune (default: `all_buckets`).
      max_tokens: largest bucket (default 16384); larger T use it, with a warning.

    Example::

        with jax_moe.autotune(cache="moe.json"):
            y = jax.jit(model)(x)       # the first trace tunes T's bucket
    """
    path = os.fspath(cache) if cache is not None else os.environ.get("JAX_MOE_TUNING_CACHE")
    with _lock:
        saved = (_state.buckets, _state.max_tokens, _state.cache_path)
        if buckets is not None:
            _state.buckets = tuple(sorted(int(b) for b in buckets))
        if max_tokens is not None:
            _state.max_tokens = int(max_tokens)
        _state.cache_path = path
        _state.enabled_depth += 1
    try:
        if path:
            load(path)
        yield
    finally:
        with _lock:
            _state.enabled_depth -= 1
            _state.buckets, _state.max_tokens, _state.cache_path = saved
        if path:
            save(path)


def _tuning_enabled() -> bool:
    return _state.enabled_depth > 0 or os.environ.get("JAX_MOE_AUTOTUNE", "") == "1"


# ---------------------------------------------------------------------------
# Choice at trace time
# ---------------------------------------------------------------------------


def _valid_entry(entry: Any, problem: MoEProblem, platform: str) -> int | None:
    try:
        tactic = int(entry["tactic"])
    except Exception:
        return None
    table = tactics.tactic_table()
    if not 0 <= tactic < len(table) or table[tactic].platform != platform:
        return None
    if entry.get("name") not in (None, table[tactic].name):
        return None
    return None if tactics.invalid_reason(problem, tactic, platform) else tactic


def choose(op: str, problem: MoEProblem, attrs: dict[str, Any]) -> int:
    """The tactic for a trace with ``tactic=None``: cached, tuned now, or `tactics.AUTO`."""
    platform = tactics.current_platform()
    if platform not in tactics.built_platforms():
        return tactics.AUTO
    _load_env_file_once()
    bucket = bucket_of(problem.num_tokens)
    key = cache_key(op, problem, attrs, bucket, _device_kind(platform))
    with _lock:
        entry = _state.entries.get(key)
    if entry is not None:
        tactic = _valid_entry(entry, problem, platform)
        if tactic is not None:
            with _lock:
                _state.counters["memory_hits"] += 1
            return tactic
        with _lock:
            _state.entries.pop(key, None)
            _state.counters["rejected"] += 1
        _warn_once(("bad-entry", key), f"jax_moe autotune: ignoring cached tactic {entry!r}: not a valid "
                   f"{platform} tactic for this problem (T={problem.num_tokens})")
    if not _tuning_enabled():
        return tactics.AUTO
    # A worker thread has a clean trace state: the timed runs execute eagerly
    # instead of being staged into the computation being traced.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        rows = pool.submit(_tune_buckets, op, problem, attrs, [bucket], platform).result()
    path = _state.cache_path or os.environ.get("JAX_MOE_TUNING_CACHE")
    if path and _state.enabled_depth == 0:  # env-enabled tuning persists right away
        save(path)
    return rows[0]["tactic"]


def tune(problem: MoEProblem, *, buckets: Sequence[int] | None = None, op: str | None = None,
         routed_scaling_factor: float = 1.0, swiglu_alpha: float = 1.702, swiglu_beta: float = 1.0,
         swiglu_limit: float = 7.0, reps: int | None = None,
         exhaustive: bool = False) -> list[dict[str, Any]]:
    """Tunes `problem` (T ignored) for each bucket ahead of time, without tracing a model.

    The results go to the in-memory cache (save them with `save` or inside
    `autotune(cache=...)`). The static float attributes must match the ones the
    model will pass to `fp4_moe` (they are part of the cache key).

    Each bucket times the default and the candidates of
    `tactics.tuning_candidates` (on CUDA, the tiles near the bucket's expert
    load); ``exhaustive=True`` times every valid tactic instead.

    Returns:
      One row per bucket: bucket, tactic (chosen id), name, default (id),
      time_us, default_time_us, gain (default / chosen), times_us ({name: median}).
    """
    op = op or ("fp4_moe_routed" if problem.routed else "fp4_moe")
    attrs = dict(routed_scaling_factor=routed_scaling_factor, swiglu_alpha=swiglu_alpha,
                 swiglu_beta=swiglu_beta, swiglu_limit=swiglu_limit)
    platform = tactics.current_platform()
    if platform not in tactics.built_platforms():
        raise RuntimeError(f"jax_moe has no handlers for platform {platform!r} in this build")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(_tune_buckets, op, problem, attrs,
                           list(buckets or all_buckets()), platform, reps, exhaustive).result()


# ---------------------------------------------------------------------------
# Measurement
# ---------------------------------------------------------------------------


def _random_qtensor(key, E: int, N: int, K: int, fmt) -> Any:
    """Random FP4 codes with block scales in a sane range (never zero, never NaN)."""
    from jax_moe.formats import BLOCK_SIZE, Format, QTensor

    k1, k2, k3 = jax.random.split(key, 3)
    data = jax.random.bits(k1, (E, N, K // 2), jnp.uint8)
    nblocks = K // BLOCK_SIZE[fmt]
    if fmt == Format.NVFP4:
        codes = jax.random.randint(k2, (E, N, nblocks), 0x28, 0x38).astype(jnp.uint8)  # e4m3 ~0.06..0.9
        scale = jax.lax.bitcast_convert_type(codes, jnp.float8_e4m3fn)
        glob = jax.random.uniform(k3, (E,), jnp.float32, 100.0, 1000.0)
    else:
        codes = jax.random.randint(k2, (E, N, nblocks), 118, 124).astype(jnp.uint8)  # 2^-9 .. 2^-4
        scale = jax.lax.bitcast_convert_type(codes, jnp.float8_e8m0fnu)
        glob = None
    return QTensor(data, scale, glob, fmt)


def _synthetic_weights(problem: MoEProblem, key, copies: int) -> list[tuple[Any, Any]]:
    """`copies` random (w13, w2) sets; independent of T, so made once per tuning run."""
    El, H, I = problem.num_local_experts, problem.hidden_size, problem.intermediate_size
    keys = jax.random.split(key, 2 * copies)
    return [(_random_qtensor(keys[2 * c], El, 2 * I, H, problem.weight_format),
             _random_qtensor(keys[2 * c + 1], El, H, I, problem.weight_format)) for c in range(copies)]


def _synthetic_call(op: str, problem: MoEProblem, attrs: dict[str, Any], key, weights, variants: int = 1):
    """(make(tactic, repeats) -> jitted callable, args).

    The callable runs the layer `repeats` times per weight copy. Each repeat
    reads its own input variant (`variants` >= repeats random hidden states
    and routings): XLA merges custom calls with identical operands (CSE), so
    repeating one call on the same inputs would time a single call.
    `repeats=0` gives an executable with the same arguments and no layer call,
    whose time is the fixed per-invocation cost that `_tune_one` subtracts.
    """
    from jax_moe import formats
    from jax_moe.formats import Format
    from jax_moe.ops import fp4_moe, fp4_moe_routed

    if variants < 1:
        raise ValueError(f"variants must be >= 1, got {variants}")
    p = problem
    T, H, I, E, El, K = (p.num_tokens, p.hidden_size, p.intermediate_size, p.num_experts,
                         p.num_local_experts, p.top_k)
    ks = iter(jax.random.split(key, 16))
    vkeys = jax.random.split(next(ks), variants)
    x = jax.vmap(lambda k: jax.random.normal(k, (T, H), jnp.float32))(vkeys)  # [variants, T, H]
    to_act_format = {Format.MXFP8: formats.quantize_mxfp8, Format.NVFP4: formats.quantize_nvfp4}.get(
        p.act_format, lambda v: v.astype(jnp.bfloat16))
    hidden = [to_act_format(x[v]) for v in range(variants)]
    kw: dict[str, Any] = dict(local_expert_offset=p.local_expert_offset, activation=p.activation,
                              swiglu_alpha=attrs["swiglu_alpha"], swiglu_beta=attrs["swiglu_beta"],
                              swiglu_limit=attrs["swiglu_limit"], do_finalize=p.do_finalize,
                              routing_weight_on_input=p.routing_weight_on_input)
    if p.has_b13:
        kw["b13"] = 0.1 * jax.random.normal(next(ks), (El, 2 * I), jnp.float32)
    if p.has_b2:
        kw["b2"] = 0.1 * jax.random.normal(next(ks), (El, H), jnp.float32)
    if p.act_format == Format.NVFP4:
        kw["h_global_scale"] = jnp.float32(448.0 * 6.0 / 8.0)
    if p.routed:
        # Valid, distinct top-k ids per token and positive weights.
        ids = jnp.argsort(jax.random.uniform(next(ks), (variants, T, E)), axis=-1)[..., :K].astype(jnp.int32)
        rw = jax.random.uniform(next(ks), (variants, T, K), jnp.float32, 0.1, 1.0)
        route = [(ids[v], rw[v]) for v in range(variants)]
        kw["num_experts"] = E
        call = lambda h, r, w13, w2, t: fp4_moe_routed(h, r[0], r[1], w13, w2, **kw, tactic=t)
    else:
        logits = 2.0 * jax.random.normal(next(ks), (variants, T, E), jnp.float32)  # spread: realistic top-k
        route = [(logits[v],) for v in range(variants)]
        kw.update(top_k=K, routing=p.routing_method, n_group=p.n_group, topk_group=p.topk_group,
                  routed_scaling_factor=attrs["routed_scaling_factor"])
        if p.has_routing_bias:
            kw["routing_bias"] = 0.1 * jax.random.normal(next(ks), (E,), jnp.float32)
        call = lambda h, r, w13, w2, t: fp4_moe(h, r[0], w13, w2, **kw, tactic=t)

    def make(tactic: int, repeats: int = 1):
        if repeats > variants:
            raise ValueError(f"repeats={repeats} needs as many input variants, have {variants}")

        def run(hidden, route, weights):
            acc = jnp.zeros((), jnp.float32)
            for r in range(repeats):  # several calls per executable: launch overhead amortized
                for w13, w2 in weights:  # sequential on one stream: one call per weight copy
                    out = call(hidden[r], route[r], w13, w2, tactic)
                    out = out if p.do_finalize else out[0]
                    acc = acc + out[:1].astype(jnp.float32).sum()
            return acc
        return jax.jit(run, keep_unused=True)  # the empty executable takes the same arguments

    return make, (hidden, route, weights)


def _weight_bytes(problem: MoEProblem) -> int:
    H, I, El = problem.hidden_size, problem.intermediate_size, problem.num_local_experts
    return El * 3 * H * I // 2  # packed FP4 of w13 and w2 (scales add ~6%)


def median_time(fn, args, reps: int, warmup: bool = False) -> tuple[float, float]:
    """(median, interquartile range) in seconds of `reps` timed runs of fn(*args)."""
    if warmup:
        jax.block_until_ready(fn(*args))
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    q1, med, q3 = np.percentile(times, [25, 50, 75])
    return float(med), float(q3 - q1)


class _Progress:
    """A one-line bar on a terminal, log lines otherwise."""

    def __init__(self, total: int, what: str):
        self.total, self.what, self.done, self.t0 = total, what, 0, time.perf_counter()
        self.tty = sys.stderr.isatty()

    def step(self, message: str) -> None:
        self.done += 1
        elapsed = time.perf_counter() - self.t0
        if self.tty:
            bar = "#" * int(30 * self.done / self.total)
            sys.stderr.write(f"\rjax_moe autotune {self.what} [{bar:<30}] {self.done}/{self.total} "
                             f"{elapsed:5.1f}s {message[:60]:<60}")
            if self.done == self.total:
                sys.stderr.write("\n")
            sys.stderr.flush()
        elif logger.isEnabledFor(logging.INFO):
            logger.info("jax_moe autotune %s %d/%d (%.1fs): %s", self.what, self.done, self.total,
                        elapsed, message)
        else:  # logging not configured for INFO: progress must still be visible
            sys.stderr.write(f"jax_moe autotune {self.what} {self.done}/{self.total} "
                             f"({elapsed:.1f}s): {message}\n")
            sys.stderr.flush()


def _tune_buckets(op: str, problem: MoEProblem, attrs: dict[str, Any], buckets: list[int],
                  platform: str, reps: int | None = None, exhaustive: bool = False) -> list[dict[str, Any]]:
    device_kind = _device_kind(platform)
    reps = reps or (20 if platform == "cuda" else 5)
    copies = 1
    if platform == "cuda":  # rotate weight copies so the timed weights are not L2-resident
        copies = int(min(8, max(1, math.ceil(2 * _L2_BYTES / max(1, _weight_bytes(problem))))))
    progress = _Progress(len(buckets), f"{op} H={problem.hidden_size} I={problem.intermediate_size} "
                                       f"E={problem.num_experts}")
    rows = []
    with jax.default_device(jax.devices("gpu" if platform == "cuda" else platform)[0]):
        weights = _synthetic_weights(problem, jax.random.key(0), copies)
        for bucket in buckets:
            rows.append(_tune_one(op, problem.with_tokens(bucket), attrs, bucket, platform,
                                  device_kind, reps, weights, exhaustive))
            r = rows[-1]
            progress.step(f"T<={bucket}: {r['name']} {r['time_us']:.1f}us "
                          f"(default {r['default_time_us']:.1f}us)")
    return rows


def _tune_one(op: str, problem: MoEProblem, attrs: dict[str, Any], bucket: int, platform: str,
              device_kind: str, reps: int, weights, exhaustive: bool = False) -> dict[str, Any]:
    candidates = tactics.tuning_candidates(problem, platform, exhaustive=exhaustive)
    default = candidates[0]
    copies = len(weights)
    # On the GPU one timed executable runs >= 8 layer calls, so the host's
    # dispatch cost does not flatten the differences between tactics.
    p = problem
    est_s = (2.0 * p.num_tokens * p.top_k * 3 * p.hidden_size * p.intermediate_size / 1e14
             + _weight_bytes(p) / 2e12)  # a rough, pessimistic layer time
    repeats = max(1, -(-8 // copies)) if platform == "cuda" and est_s < 1e-3 else 1
    calls = copies * repeats
    make, args = _synthetic_call(op, problem, attrs, jax.random.key(bucket), weights, variants=repeats)
    table = tactics.tactic_table()
    failed: dict[int, str] = {}

    def compile_one(tactic: int):
        try:
            return make(tactic, repeats).lower(*args).compile()
        except Exception as exc:
            failed[tactic] = str(exc)
            return None

    # Compilation dominates tuning time: compile every candidate, and the
    # baseline executable below, concurrently.
    with concurrent.futures.ThreadPoolExecutor(min(8, len(candidates) + 1)) as pool:
        baseline = pool.submit(lambda: make(default, 0).lower(*args).compile())
        compiled = dict(zip(candidates, pool.map(compile_one, candidates)))
    # The fixed cost of one invocation (argument handling, dispatch, sync:
    # ~1 ms through `Compiled.__call__` on the GPU) is timed on an executable
    # with the same arguments and no layer call, and subtracted below.
    try:
        empty = baseline.result()  # re-raises a compile failure here
        jax.block_until_ready(empty(*args))
        overhead = median_time(empty, args, max(5, reps))[0]
    except Exception as exc:  # never fatal: times then include the fixed cost
        logger.warning("jax_moe autotune: baseline executable failed, times include dispatch: %s",
                       (str(exc).splitlines() or [""])[0][:200])
        overhead = 0.0
    timed: dict[int, tuple[float, float]] = {}
    for tactic in candidates:
        try:
            fn = compiled[tactic]
            if fn is None:
                raise RuntimeError(failed.get(tactic, "compilation failed"))
            jax.block_until_ready(fn(*args))  # warm up
            t0 = time.perf_counter()
            jax.block_until_ready(fn(*args))
            once = time.perf_counter() - t0
            # Enough repetitions for a stable median, at most ~0.25 s per tactic.
            n = max(5, min(reps, int(0.25 / max(once, 1e-6))))
            timed[tactic] = median_time(fn, args, n)
        except Exception as exc:  # a failing / OOM tactic is skipped, never fatal
            logger.warning("jax_moe autotune: tactic %d (%s) failed at T=%d, skipped: %s", tactic,
                           table[tactic].name, bucket, (str(exc).splitlines() or [""])[0][:200])
    chosen = default
    if timed:
        best = min(timed, key=lambda t: timed[t][0])
        if default not in timed:
            chosen = best
        elif best != default:
            spread = max(timed[default][1], timed[best][1])
            if timed[best][0] < timed[default][0] - spread:
                chosen = best
    per_call = lambda t: max(timed[t][0] - overhead, 0.0) / calls * 1e6 if t in timed else float("nan")
    row = dict(bucket=bucket, tactic=chosen, name=table[chosen].name, default=default,
               time_us=per_call(chosen), default_time_us=per_call(default),
               gain=per_call(default) / per_call(chosen) if chosen in timed else 1.0,
               times_us={table[t].name: per_call(t) for t in timed}, overhead_us=overhead * 1e6,
               calls_per_executable=calls)
    entry = dict(tactic=chosen, name=table[chosen].name, default=default, time_us=row["time_us"],
                 default_time_us=row["default_time_us"], device=device_kind)
    key = cache_key(op, problem, attrs, bucket, device_kind)
    with _lock:
        _state.entries[key] = entry
        _state.counters["tuned"] += 1
    return row


__all__ = ["all_buckets", "autotune", "bucket_of", "cache_key", "choose", "clear_cache", "load",
           "median_time", "save", "stats", "tune"]
