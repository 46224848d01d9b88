#include "common/tactics.h"

#include <cmath>
#include "common/str_cat.h"

namespace jax_moe {

const std::vector<Tactic>& TacticTable() {
  static const std::vector<Tactic> table = {
      {"cpu_t4_n32", Platform::kCpu, KernelFamily::kCpuBlocked, 4, 32, 0, 0},
      {"cpu_t16_n64", Platform::kCpu, KernelFamily::kCpuBlocked, 16, 64, 0, 0},
      {"cpu_t64_n64", Platform::kCpu, KernelFamily::kCpuBlocked, 64, 64, 0, 0},
#define JAX_MOE_CUDA_ROW(name, tt, tw, wn, kc) \
  {#name, Platform::kCuda, KernelFamily::kCudaMmaSwapAB, tt, 32 * wn, tw, kc},
      JAX_MOE_CUDA_TACTICS(JAX_MOE_CUDA_ROW)
#undef JAX_MOE_CUDA_ROW
#define JAX_MOE_CUDA_STREAM_ROW(name, tt, tw) \
  {#name, Platform::kCuda, KernelFamily::kCudaStreamSplitK, tt, 32, tw, 0},
      JAX_MOE_CUDA_STREAM_TACTICS(JAX_MOE_CUDA_STREAM_ROW)
#undef JAX_MOE_CUDA_STREAM_ROW
  };
  return table;
}

int64_t FirstCudaTactic() {
  const auto& table = TacticTable();
  for (size_t i = 0; i < table.size(); ++i)
    if (table[i].platform == Platform::kCuda) return static_cast<int64_t>(i);
  return static_cast<int64_t>(table.size());
}

uint64_t TacticTableHash() {
  uint64_t h = 1469598103934665603ull;
  auto mix = [&h](const std::string& s) {
    for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
    h = (h ^ 0xff) * 1099511628211ull;
  };
  for (const Tactic& t : TacticTable()) {
    mix(StrCat(t.name, '|', static_cast<int64_t>(t.platform), '|', static_cast<int64_t>(t.family),
               '|', t.tile_tokens, '|', t.tile_n, '|', t.tokens_per_warp, '|', t.k_chunk));
  }
  return h;
}

std::string TacticInvalidReason(const MoeProblem& p, Platform platform, int64_t id) {
  const auto& table = TacticTable();
  if (id < 0 || id >= static_cast<int64_t>(table.size()))
    return StrCat("tactic ", id, " is not in the table (0..", table.size() - 1, ")");
  const Tactic& t = table[id];
  if (t.platform != platform)
    return StrCat("tactic ", id, " (", t.name, ") is for another platform");
  (void)p;  // Every tactic runs every supported problem: the kernels guard
            // partial tiles along tokens, features and K.
  return "";
}

int64_t DefaultTactic(const MoeProblem& p, Platform platform) {
  // Seed heuristic: the token tile that the average expert load fills,
  // with 30% headroom for imbalance.
  const double avg = 1.3 * static_cast<double>(p.expanded()) / p.num_local_experts;
  // CUDA: the staged family. The streaming family is a tuning candidate only:
  // on an H200 (2026-12-01, benchmarks/NOTES.md v2) it measured up to 2.5x
  // slower than the staged kernels of the same tile except at T = 1.
  const KernelFamily cuda_family = KernelFamily::kCudaMmaSwapAB;
  // CUDA tiles stop at 32 tokens: the tuner (benchmarks/results/autotune.md,
  // gpt-oss-120b on an H200) chose cuda_mma_t32_n128 for every bucket from
  // 768 to 16384 tokens, 1.1-1.75x faster than the t64/t128 this heuristic
  // gave there.
  const double target = platform == Platform::kCuda && avg > 32.0 ? 32.0 : avg;
  int64_t best = -1;
  double best_gap = 0;
  const auto& table = TacticTable();
  for (int64_t i = 0; i < static_cast<int64_t>(table.size()); ++i) {
    if (!TacticInvalidReason(p, platform, i).empty()) continue;
    if (platform == Platform::kCuda && table[i].family != cuda_family) continue;
    const double gap = std::fabs(std::log2(static_cast<double>(table[i].tile_tokens)) -
                                 std::log2(target > 1.0 ? target : 1.0));
    if (best < 0 || gap < best_gap) {
      best = i;
      best_gap = gap;
    }
  }
  return best;
}

}  // namespace jax_moe
