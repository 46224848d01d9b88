"""Tactics: the kernel configurations of the C++ tactic table, seen from Python.

A tactic is an index into the table in `ffi_src/common/tactics.cc`; this module
mirrors that table (it reads it from the extension, never restates it) and
answers which tactics can run a problem, and which one is the default.
"""

from __future__ import annotations

import dataclasses
import functools

import jax

from jax_moe import _extension
from jax_moe.problem import MoEProblem


@dataclasses.dataclass(frozen=True)
class Tactic:
    """One row of the C++ tactic table.

    Attributes:
      id: index in the table; the value of the `tactic` static attribute.
      name: readable name, e.g. "cpu_t16_n64".
      platform: "cpu" or "cuda".
      family: kernel family id (see KernelFamily in ffi_src/common/tactics.h).
      tile_tokens: rows of a token tile (also the per-expert padding).
      tile_n: output columns (features) per work item.
      tokens_per_warp: CUDA only: the token (N) extent of one warp's MMAs; 0 on the CPU.
      k_chunk: CUDA only: K elements staged in shared memory at a time; 0 on the CPU.
      weight_stages: CUDA staged family only: depth (K blocks of 128) of the
        cp.async weight ring; 0 where weights go straight to registers.
      warps_k: CUDA staged family only: warps along K inside one block (their
        partial sums are added in shared memory); 1 elsewhere.
      experimental: the family has not passed the GPU suite yet; only an
        explicit ``tactic=`` runs it (never the default or the tuner).
    """

    id: int
    name: str
    platform: str
    family: int
    tile_tokens: int
    tile_n: int
    tokens_per_warp: int = 0
    k_chunk: int = 0
    weight_stages: int = 0
    warps_k: int = 1
    experimental: bool = False


# The `tactic` attribute value meaning "the heuristic default of whichever
# platform the computation lowers to" (resolved in the lowering rule).
AUTO = -1


@functools.cache
def tactic_table() -> tuple[Tactic, ...]:
    """Every tactic the extension was built with, in id order."""
    return tuple(Tactic(**row) for row in _extension.module().tactic_table())


def tactic_id(name: str) -> int:
    """The id of the tactic called `name`; ValueError listing the names if none is."""
    table = tactic_table()
    for t in table:
        if t.name == name:
            return t.id
    raise ValueError(f"unknown tactic {name!r}; valid names: {', '.join(t.name for t in table)}")


def kernel_families() -> dict[str, int]:
    """Name -> id of every kernel family (`Tactic.family` values), from the extension."""
    return dict(_extension.module().enums()["KernelFamily"])


def tactic_table_hash() -> str:
    """Hex hash of the table: cache entries tuned against another table are ignored."""
    return f"{_extension.module().tactic_table_hash():016x}"


def current_platform() -> str:
    """The platform the op will lower to by default: 'cuda' or 'cpu'."""
    backend = jax.default_backend()
    return "cuda" if backend in ("gpu", "cuda") else backend


def _platform(platform: str | None) -> str:
    return current_platform() if platform is None else ("cuda" if platform == "gpu" else platform)


def tactic_platform(tactic: int) -> str:
    """The platform a tactic id belongs to (the current platform for ids outside the table)."""
    table = tactic_table()
    return table[tactic].platform if 0 <= tactic < len(table) else current_platform()


def built_platforms() -> tuple[str, ...]:
    """Platforms this build has handlers (and tactics) for."""
    return tuple(sorted({t.platform for t in tactic_table()} & ({"cpu", "cuda"} if _extension.has_cuda() else {"cpu"})))


def resolve(problem: MoEProblem, tactic: int, platform: str) -> int:
    """`tactic`, or the platform's default when it is AUTO."""
    return default_tactic(problem, platform) if tactic == AUTO else int(tactic)


def invalid_reason(problem: MoEProblem, tactic: int, platform: str | None = None) -> str:
    """'' if `tactic` can run `problem` on `platform`, else the reason it cannot."""
    return _extension.module().tactic_invalid_reason(problem.to_dict(), _platform(platform), int(tactic))


def valid_tactics(problem: MoEProblem, platform: str | None = None) -> list[Tactic]:
    """The tactics that can run `problem` on `platform` (default: the default backend)."""
    plat = _platform(platform)
    return [t for t in tactic_table() if t.platform == plat and not invalid_reason(problem, t.id, plat)]


def default_tactic(problem: MoEProblem, platform: str | None = None) -> int:
    """The heuristic default tactic id, valid for every supported problem."""
    plat = _platform(platform)
    tactic = _extension.module().default_tactic(problem.to_dict(), plat)
    if tactic < 0:
        raise RuntimeError(
            f"jax_moe has no tactic for platform {plat!r} in this build "
            f"(build info: {_extension.build_info()})"
        )
    return int(tactic)


def tuning_candidates(problem: MoEProblem, platform: str | None = None, *,
                      exhaustive: bool = False) -> list[int]:
    """Tactic ids the autotuner times for `problem`: the default first.

    On CUDA the rule in `TuningCandidates` (ffi_src/common/tactics.cc) keeps
    the tiles within an octave of the bucket's expert load (and the streaming
    family only below one token per expert); `exhaustive` keeps every valid
    tactic. The CPU table is always exhaustive.
    """
    plat = _platform(platform)
    ids = [int(i) for i in _extension.module().tuning_candidates(problem.to_dict(), plat, bool(exhaustive))]
    if not ids:
        raise RuntimeError(f"jax_moe has no tactic for platform {plat!r} in this build "
                           f"(build info: {_extension.build_info()})")
    return ids


def gemm2_invalid_reason(problem: MoEProblem, tactic: int, gemm2_tactic: int, platform: str | None = None) -> str:
    """'' if GEMM2 can run `gemm2_tactic` after GEMM1 ran `tactic` (same token tile), else why not."""
    return _extension.module().gemm2_tactic_invalid_reason(problem.to_dict(), _platform(platform), int(tactic),
                                                           int(gemm2_tactic))


def workspace_bytes(problem: MoEProblem, tactic: int, gemm2_tactic: int | None = None) -> int:
    """Bytes of the scratch output the handler needs for `problem` under `tactic`.

    `gemm2_tactic`: GEMM2's row (None or -1: the same as `tactic`). For
    tactic AUTO: the largest need over the built platforms' defaults, since
    the platform is only known when lowering (handlers accept a larger workspace).
    """
    if tactic == AUTO:
        return max(workspace_bytes(problem, default_tactic(problem, p)) for p in built_platforms())
    second = -1 if gemm2_tactic is None else int(gemm2_tactic)
    return int(_extension.module().workspace_bytes(problem.to_dict(), int(tactic), second))


def check_problem(problem: MoEProblem) -> None:
    """Raises ValueError if the handlers do not support `problem` (reason from C++)."""
    reason = _extension.module().validate_problem(problem.to_dict())
    if reason:
        raise ValueError(f"unsupported MoE problem: {reason.strip()}")
