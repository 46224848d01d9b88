// The tactic table: every kernel configuration the handlers can run, one row
// each. A tactic id is the row's index; it reaches the handlers as a static
// attribute, so changing it changes the compiled program, never a runtime
// branch on device data. Python mirrors this table through the module
// (jax_moe/tactics.py) and the autotuner keys its cache on TacticTableHash().
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/problem.h"

namespace jax_moe {

enum class Platform : int64_t { kCpu = 0, kCuda = 1 };

enum class KernelFamily : int64_t {
  kCpuBlocked = 0,  // CPU: tiles of tokens share each decoded weight row
};

struct Tactic {
  const char* name;
  Platform platform;
  KernelFamily family;
  int64_t tile_tokens;  // rows of a token tile (also the per-expert padding)
  int64_t tile_n;       // output columns per work item
};

const std::vector<Tactic>& TacticTable();

// FNV-1a over every field of every row: a cache entry tuned against another
// table is never trusted.
uint64_t TacticTableHash();

// "" if tactic `id` can run `p` on `platform`, else the reason it cannot.
std::string TacticInvalidReason(const MoeProblem& p, Platform platform, int64_t id);

// The heuristic default: always valid for any supported problem.
int64_t DefaultTactic(const MoeProblem& p, Platform platform);

}  // namespace jax_moe
