#include "common/tactics.h"

#include <cmath>
#include <cstdlib>
#include "common/str_cat.h"

namespace jax_moe {

const std::vector<Tactic>& TacticTable() {
  static const std::vector<Tactic> table = {
      {"cpu_t4_n32", Platform::kCpu, KernelFamily::kCpuBlocked, 4, 32, 0, 0, 0},
      {"cpu_t16_n64", Platform::kCpu, KernelFamily::kCpuBlocked, 16, 64, 0, 0, 0},
      {"cpu_t64_n64", Platform::kCpu, KernelFamily::kCpuBlocked, 64, 64, 0, 0, 0},
#define JAX_MOE_CUDA_ROW(name, tt, tw, wn, kc, ws, wk) \
  {#name, Platform::kCuda, KernelFamily::kCudaMmaSwapAB, tt, 32 * wn, tw, kc, ws, wk},
      JAX_MOE_CUDA_TACTICS(JAX_MOE_CUDA_ROW)
#undef JAX_MOE_CUDA_ROW
#define JAX_MOE_CUDA_STREAM_ROW(name, tt, tw) \
  {#name, Platform::kCuda, KernelFamily::kCudaStreamSplitK, tt, 32, tw, 0, 0},
      JAX_MOE_CUDA_STREAM_TACTICS(JAX_MOE_CUDA_STREAM_ROW)
#undef JAX_MOE_CUDA_STREAM_ROW
#define JAX_MOE_CUDA_WGMMA_ROW(name, tt, kc) \
  {#name, Platform::kCuda, KernelFamily::kCudaWgmmaSwapAB, tt, 128, 64, kc, 0},
      JAX_MOE_CUDA_WGMMA_TACTICS(JAX_MOE_CUDA_WGMMA_ROW)
#undef JAX_MOE_CUDA_WGMMA_ROW
#define JAX_MOE_CUDA_WGMMA_WS_ROW(name, tt, stages, producers)                                               \
  {#name, Platform::kCuda,                                                                                  \
   producers > 1 ? KernelFamily::kCudaWgmmaWsTwoProducers : KernelFamily::kCudaWgmmaWarpSpecialized, tt, 128, \
   64, 64 * stages, 0},
      JAX_MOE_CUDA_WGMMA_WS_TACTICS(JAX_MOE_CUDA_WGMMA_WS_ROW)
#undef JAX_MOE_CUDA_WGMMA_WS_ROW
#define JAX_MOE_CUDA_WGMMA_RS_ROW(name, tt, stages, persistent)                                        \
  {#name, Platform::kCuda, persistent ? KernelFamily::kCudaWgmmaRsPersistent : KernelFamily::kCudaWgmmaRs, tt, \
   128, tt, 64 * stages, 0},
      JAX_MOE_CUDA_WGMMA_RS_TACTICS(JAX_MOE_CUDA_WGMMA_RS_ROW)
#undef JAX_MOE_CUDA_WGMMA_RS_ROW
  };
  return table;
}

bool IsExperimental(KernelFamily family) {
  // A family joins the default and the tuner only once `pytest -m gpu`
  // passes with it on a device. Both wgmma families did on 2026-12-01
  // (H200, tests/test_ops_gpu.py::test_wgmma_family*); a new family starts
  // here. The two-producer rows (2026-12-01, session 7) passed the GPU
  // tests on 2026-12-01 (session 8, 513acc3) but stay out until their speed
  // is measured: the tuner's time budget has no room for a candidate that
  // may not win (benchmarks/NOTES.md v5).
  // The register-A cp.async rows (plain and persistent) passed theirs on
  // 2026-12-03 (H200, session 15: test_wgmma_rs_kernel, test_wgmma_family*).
  return family == KernelFamily::kCudaWgmmaWsTwoProducers;
}

const char* FamilyName(KernelFamily family) {
  switch (family) {
    case KernelFamily::kCpuBlocked: return "cpu_blocked";
    case KernelFamily::kCudaMmaSwapAB: return "cuda_mma_swap_ab";
    case KernelFamily::kCudaStreamSplitK: return "cuda_stream_split_k";
    case KernelFamily::kCudaWgmmaSwapAB: return "cuda_wgmma_swap_ab";
    case KernelFamily::kCudaWgmmaWarpSpecialized: return "cuda_wgmma_warp_specialized";
    case KernelFamily::kCudaWgmmaWsTwoProducers: return "cuda_wgmma_ws_two_producers";
    case KernelFamily::kCudaWgmmaRs: return "cuda_wgmma_rs";
    case KernelFamily::kCudaWgmmaRsPersistent: return "cuda_wgmma_rs_persistent";
  }
  return "unknown";
}

int64_t FirstCudaTactic() {
  const auto& table = TacticTable();
  for (size_t i = 0; i < table.size(); ++i)
    if (table[i].platform == Platform::kCuda) return static_cast<int64_t>(i);
  return static_cast<int64_t>(table.size());
}

// Bumped whenever a kernel changes how fast a row runs without changing the
// row (e.g. split-K launches): tuned caches from before are then ignored.
constexpr const char* kKernelRevision = "2026-12-02 warps along K: the decode default";

uint64_t TacticTableHash() {
  uint64_t h = 1469598103934665603ull;
  auto mix = [&h](const std::string& s) {
    for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
    h = (h ^ 0xff) * 1099511628211ull;
  };
  mix(kKernelRevision);
  for (const Tactic& t : TacticTable()) {
    mix(StrCat(t.name, '|', static_cast<int64_t>(t.platform), '|', static_cast<int64_t>(t.family),
               '|', t.tile_tokens, '|', t.tile_n, '|', t.tokens_per_warp, '|', t.k_chunk, '|', t.weight_stages, '|', t.warps_k));
  }
  return h;
}

namespace {
// The 256-token register-A row: it has no fallback kernel (TacticInvalidReason
// refuses problems outside its scope), and it is never the default nor a
// tuning candidate: on an H200 (stage timer, 8970f29, benchmarks/NOTES.md v14)
// it ran 1.4-2.1x slower than the 128-token tile at every prefill row measured
// (T = 1024 - 16384, all four model shapes; Mixtral-8x7B T = 16384, where
// padding is negligible, 41.6 vs 30.3 ms), against the 15% the halved decode
// predicted. It stays a row (named explicitly) for the work v14 lists next.
bool IsRs256Row(const Tactic& t) { return t.family == KernelFamily::kCudaWgmmaRsPersistent && t.tile_tokens == 256; }
}  // namespace

std::string TacticInvalidReason(const MoeProblem& p, Platform platform, int64_t id) {
  const auto& table = TacticTable();
  if (id < 0 || id >= static_cast<int64_t>(table.size()))
    return StrCat("tactic ", id, " is not in the table (0..", table.size() - 1, ")");
  const Tactic& t = table[id];
  if (t.platform != platform)
    return StrCat("tactic ", id, " (", t.name, ") is for another platform");
  // Every other tactic runs every supported problem: the kernels guard partial
  // tiles along tokens, features and K, and fall back where they cannot.
  if (IsRs256Row(t)) {
    if (p.act_format != Format::kBF16)
      return StrCat("tactic ", id, " (", t.name, ") runs bf16 activations only (got format ",
                    static_cast<int64_t>(p.act_format), ")");
    if (p.hidden_size % 64 != 0 || p.intermediate_size % 64 != 0)
      return StrCat("tactic ", id, " (", t.name, ") needs hidden and intermediate sizes that are multiples of 64 (got ",
                    p.hidden_size, ", ", p.intermediate_size, ")");
  }
  return "";
}

// Why these bounds (benchmarks/stage_timer.cu on an H200, 2026-12-01,
// benchmarks/NOTES.md v5): the staged kernel runs a few warps per SM (not
// issue-bound, v6 found, as v5 had thought), and every block pays a
// latency-bound prologue (tile lookup, activation staging, ring fill) and
// epilogue, so a split pays only when it keeps many K blocks. Measured wins:
// Mixtral GEMM2 at T = 1 (64 blocks, 112 K blocks) 114.8 -> 58.0 us with 4
// splits, at T = 8 (288 blocks, 4.4 per SM once split) 234.9 -> 172.6 us
// with 2; DeepSeek-V3 GEMM1 at T = 1 (128 blocks, 56 K blocks) 105.3 -> 94.3
// us with 2. Measured losses: splits of
// 2-6 K blocks (Qwen3 GEMM1 37.8 -> 47.3 us with 4, GEMM2 13.6 -> 18.8 us
// with 3; gpt-oss-120b GEMM1 49.9 -> 65.5 us with 5). These bounds pick
// every winning split and none of the losing ones (tests/test_enums_and_tactics.py).
// JAX_MOE_MIN_KB_PER_SPLIT=n (an experiment knob, 1-64) replaces the 24; read
// once per process, since the workspace (SplitKLimit) and the launch
// (KSplits) must agree on it.
constexpr int64_t kMinKBlocksPerSplitDefault = 24;
constexpr int64_t kMaxBlocksPerSm = 5;

int64_t MinKBlocksPerSplit() {
  static const int64_t value = [] {
    const char* v = std::getenv("JAX_MOE_MIN_KB_PER_SPLIT");
    const long n = v != nullptr ? std::strtol(v, nullptr, 10) : 0;
    return n >= 1 && n <= 64 ? static_cast<int64_t>(n) : kMinKBlocksPerSplitDefault;
  }();
  return value;
}

int64_t KSplits(int64_t blocks, int64_t sms, int64_t limit, int64_t num_kb) {
  int64_t s = 1;
  while (s < limit && num_kb / (s + 1) >= MinKBlocksPerSplit() && blocks * (s + 1) <= kMaxBlocksPerSm * sms) ++s;
  return s;
}

namespace {
constexpr int64_t kMaxSplitK = 8;
constexpr int64_t kSplitKBudgetBytes = int64_t{64} << 20;  // fp32 partials of all splits
}  // namespace

int64_t SplitKLimit(const MoeProblem& p, const Tactic& t) {
  // Rows with warps along K spread K inside the block and never split it
  // across blocks (cuda/gemm_mma.cuh says why).
  if (t.family != KernelFamily::kCudaMmaSwapAB || t.warps_k > 1) return 1;
  // KSplits never gives a GEMM more splits than its K holds (>= MinKBlocksPerSplit()
  // each): no workspace or ticket zeroing for splits that cannot happen.
  const int64_t longest_k = p.hidden_size > p.intermediate_size ? p.hidden_size : p.intermediate_size;
  const int64_t by_k = (longest_k + 127) / 128 / MinKBlocksPerSplit();
  const int64_t per_split = static_cast<int64_t>(sizeof(float)) * MaxTiles(p, t.tile_tokens) * t.tile_tokens *
                            SplitKPartialColumns(p);
  const int64_t by_budget = per_split > 0 ? kSplitKBudgetBytes / per_split : 1;
  const int64_t fit = by_k < by_budget ? by_k : by_budget;
  return fit < 1 ? 1 : (fit > kMaxSplitK ? kMaxSplitK : fit);
}

WorkspaceLayout PlanWorkspaceFor(const MoeProblem& p, const Tactic& t) { return PlanWorkspaceFor(p, t, t); }

WorkspaceLayout PlanWorkspaceFor(const MoeProblem& p, const Tactic& t, const Tactic& t2) {
  // One split-K region serves both GEMMs: sized for the row that may split more.
  const int64_t l1 = SplitKLimit(p, t), l2 = SplitKLimit(p, t2);
  return PlanWorkspace(p, t.tile_tokens, l1 > l2 ? l1 : l2);
}

std::string Gemm2TacticInvalidReason(const MoeProblem& p, Platform platform) {
  if (p.gemm2_tactic < 0) return "";
  const std::string bad = TacticInvalidReason(p, platform, p.gemm2_tactic);
  if (!bad.empty()) return StrCat("gemm2_tactic: ", bad);
  const auto& table = TacticTable();
  const Tactic& a = table[p.tactic];
  const Tactic& b = table[p.gemm2_tactic];
  if (a.tile_tokens != b.tile_tokens)
    return StrCat("gemm2_tactic ", p.gemm2_tactic, " (", b.name, ") has a token tile of ", b.tile_tokens,
                  ", tactic ", p.tactic, " (", a.name, ") one of ", a.tile_tokens,
                  ": both GEMMs read one permuted layout, so their tiles must match");
  return "";
}

namespace {

// The token tile the average expert load fills, with 30% headroom for
// imbalance (DESIGN.md section 5).
double LoadTarget(const MoeProblem& p) {
  return 1.3 * static_cast<double>(p.expanded()) / p.num_local_experts;
}

// The tile the heuristic aims at, at least 1. CUDA tiles stop at 32 tokens:
// the tuner (benchmarks/results/autotune.md, gpt-oss-120b on an H200) chose
// cuda_mma_t32_n128 for every bucket from 768 to 16384 tokens, 1.1-1.75x
// faster than the t64/t128 the uncapped load gave there.
double HeuristicTile(const MoeProblem& p, Platform platform) {
  const double avg = LoadTarget(p);
  if (platform == Platform::kCuda && avg > 32.0) return 32.0;
  return avg > 1.0 ? avg : 1.0;
}

// Load target (tokens per expert) from which the CUDA default is the
// prefill family's 128-token tile (see DefaultTactic): with its staged
// epilogue it beat the staged rows at every load measured from 32 tokens per
// expert up (1.2-2.4x at gpt-oss-120b / DeepSeek-V3 T = 1024, Qwen3 T = 1024,
// Mixtral T = 128, stage timer, benchmarks/NOTES.md v13).
// (A load target is 1.3x the mean load: 32 tokens per expert is 41.6.)
constexpr double kWgmmaDefaultLoad = 40.0;
// The prefill family. Rows it cannot run (activations not bf16, K % 64 != 0)
// run the warp-specialised kernel of the same tile, the default before it.
constexpr KernelFamily kPrefillFamily = KernelFamily::kCudaWgmmaRsPersistent;

bool IsWgmmaFamily(KernelFamily f) {
  return f == KernelFamily::kCudaWgmmaSwapAB || f == KernelFamily::kCudaWgmmaWarpSpecialized ||
         f == KernelFamily::kCudaWgmmaWsTwoProducers || f == KernelFamily::kCudaWgmmaRs ||
         f == KernelFamily::kCudaWgmmaRsPersistent;
}

// The tile the wgmma families aim at: the load itself (no cap at 32), held
// to their largest tile (a load of 300 tokens per expert still wants t128).
double WgmmaLoadTarget(const MoeProblem& p) {
  double largest = 1;
  for (const Tactic& t : TacticTable())
    if (IsWgmmaFamily(t.family) && !IsRs256Row(t) && t.tile_tokens > largest)
      largest = static_cast<double>(t.tile_tokens);
  return std::fmin(LoadTarget(p), largest);
}

// Average expert load of at most one token (decode): the staged family's
// cp.async weight-ring rows replace their ring-less twins there, in the
// default and among the tuning candidates. Measured on an H200 (2026-12-01,
// benchmarks/results/ring_2026-12-01.md, NVFP4, T = 1): 1.13x (gpt-oss-120b),
// 1.29x (DeepSeek-V3), 1.13-1.66x (Qwen3-30B-A3B) over the ring-less t8_n128;
// at T = 8 1.04x / 1.09x / 0.91x; from T = 64 within +-10% either way, so
// the ring-less rows stay above one token per expert.
bool RingPreferred(const MoeProblem& p) { return p.expanded() <= p.num_local_experts; }

// Same family, token tile, feature tile, warp tile and staged chunk: rows that
// differ only in how they stream weights (ring depth) or split K (warps_k).
bool SameTile(const Tactic& a, const Tactic& b) {
  return a.family == b.family && a.tile_tokens == b.tile_tokens && a.tile_n == b.tile_n &&
         a.tokens_per_warp == b.tokens_per_warp && a.k_chunk == b.k_chunk;
}
// A staged row whose twin (same kernel shape, the other weight_stages) is
// the one RingPreferred picks for this problem: left out of the default and
// of the tuning candidates, so the ring adds no tuning time.
bool ReplacedByTwin(const MoeProblem& p, const Tactic& t) {
  if (t.family != KernelFamily::kCudaMmaSwapAB || (t.weight_stages > 0) == RingPreferred(p)) return false;
  for (const Tactic& o : TacticTable())
    if (SameTile(o, t) && o.warps_k == t.warps_k && (o.weight_stages > 0) != (t.weight_stages > 0)) return true;
  return false;
}

// Rows the pruned candidate list leaves out, to hold the tuning time (gpt-oss-120b
// over all buckets took 57.5 s of the 60 s budget, benchmarks/results/autotune.md):
// the rows with warps along K unless one is the default (PreferWarpsK picks the
// measured winner among them; the others lost or tied it at every T = 1 / 8
// row, NOTES v10).
// Also the first register-A wgmma rows (kCudaWgmmaSwapAB): 14% of the matmul
// rate at T = 4096 (v3), below the warp-specialised rows, which the
// register-A cp.async rows beat 1.5-2x at every prefill row (v12).
bool PrunedByMeasurement(const Tactic& t) {
  return t.warps_k > 1 || t.family == KernelFamily::kCudaWgmmaSwapAB || IsRs256Row(t);
}
// The decode default (average expert load <= 1 token): the staged row `best`
// becomes its twin with two warps along K and a 3-deep ring (same tile) while
// the smaller GEMM grid stays within 3 blocks per SM, unless `best` would
// split a GEMM's K 4 or more ways across blocks, which the warps-along-K rows
// cannot. Measured on an H200 (stage timer, benchmarks/NOTES.md v10, b2a3f56,
// NVFP4 pipeline): T = 1 Qwen3-30B-A3B 55.8 -> 44.6 us, gpt-oss-120b 79.9 ->
// 66.9, DeepSeek-V3 147.2 -> 125.2 (whose GEMM1 the ring row splits 2 ways);
// Mixtral-8x7B (GEMM2: 64 blocks, 112 K blocks, split 4 ways) 150.7 -> 185.2;
// T = 8 Qwen3 134.7 -> 114.8 (GEMM1 ~300 blocks), but gpt-oss-120b 256 -> 268
// and DeepSeek-V3 566 -> 573 (MXFP4: +10%, +9%) with 650-900 blocks. The SM
// count is not known here: grids are estimated for 132 SMs (H100 / H200) and
// the experts a call touches for uniform routing.
constexpr double kNominalSms = 132;
constexpr double kWarpsKMaxBlocksPerSm = 3;
constexpr int64_t kSplitsWarpsKCannotReplace = 4;
int64_t PreferWarpsK(const MoeProblem& p, int64_t best) {
  const auto& table = TacticTable();
  const Tactic& b = table[best];
  if (b.family != KernelFamily::kCudaMmaSwapAB || b.warps_k > 1 || !RingPreferred(p)) return best;
  const double e = static_cast<double>(p.num_local_experts);
  const double touched = e * (1.0 - std::pow(1.0 - 1.0 / e, static_cast<double>(p.expanded())));
  const int64_t limit = SplitKLimit(p, b);
  // GEMM1: I features (gate and up of each in one block) over K = H; GEMM2: H over K = I.
  const int64_t gemms[2][2] = {{p.intermediate_size, p.hidden_size}, {p.hidden_size, p.intermediate_size}};
  double smallest_grid = 0;
  for (const auto& g : gemms) {
    const double blocks = std::ceil(touched * static_cast<double>((g[0] + b.tile_n - 1) / b.tile_n));
    if (smallest_grid == 0 || blocks < smallest_grid) smallest_grid = blocks;
    if (KSplits(static_cast<int64_t>(blocks), static_cast<int64_t>(kNominalSms), limit, (g[1] + 127) / 128) >=
        kSplitsWarpsKCannotReplace)
      return best;
  }
  if (smallest_grid > kWarpsKMaxBlocksPerSm * kNominalSms) return best;
  for (int64_t i = 0; i < static_cast<int64_t>(table.size()); ++i)
    if (SameTile(table[i], b) && table[i].warps_k == 2 && table[i].weight_stages == 3) return i;
  return best;
}
// Distance in octaves between a tactic's tile and a target tile.
double TileGap(const Tactic& t, double target) {
  return std::fabs(std::log2(static_cast<double>(t.tile_tokens)) - std::log2(target));
}

}  // namespace

int64_t DefaultTactic(const MoeProblem& p, Platform platform) {
  // CUDA: the staged family, except at prefill-sized loads. The streaming
  // family is a tuning candidate only: on an H200 (2026-12-01,
  // benchmarks/NOTES.md v2) it measured up to 2.5x slower than the staged
  // kernels of the same tile except at T = 1. The warp-specialised wgmma
  // t128 won every tuned bucket whose load target reached 120 tokens per
  // expert (T >= 3072 for both gpt-oss-120b and DeepSeek-V3: 1.13-1.34x over
  // the staged t32; 1.30x at gpt-oss T = 16384 in benchmarks.moe); below,
  // at a load of 104 (T = 2560), it won for DeepSeek-V3 and lost for
  // gpt-oss-120b: benchmarks/results/autotune.md. The register-A cp.async
  // rows (kPrefillFamily) replaced it there on 2026-12-03: 1.5-2.0x faster
  // at T = 4096 / 16384 for all four model shapes, and at Mixtral-8x7B
  // T = 512 (load 128), stage timer (benchmarks/NOTES.md v12).
  const bool prefill = platform == Platform::kCuda && LoadTarget(p) >= kWgmmaDefaultLoad;
  const KernelFamily cuda_family = prefill ? kPrefillFamily : KernelFamily::kCudaMmaSwapAB;
  const double target = prefill ? WgmmaLoadTarget(p) : HeuristicTile(p, platform);
  int64_t best = -1;
  double best_gap = 0;
  const auto& table = TacticTable();
  for (int64_t i = 0; i < static_cast<int64_t>(table.size()); ++i) {
    if (!TacticInvalidReason(p, platform, i).empty()) continue;
    // (Rows with warps along K are the default only through PreferWarpsK.)
    if (platform == Platform::kCuda &&
        (table[i].family != cuda_family || ReplacedByTwin(p, table[i]) || table[i].warps_k > 1))
      continue;
    if (platform == Platform::kCuda && IsRs256Row(table[i])) continue;
    const double gap = TileGap(table[i], target);
    if (best < 0 || gap < best_gap) {
      best = i;
      best_gap = gap;
    }
  }
  if (platform == Platform::kCuda && !prefill && best >= 0) best = PreferWarpsK(p, best);
  return best;
}

std::vector<int64_t> TuningCandidates(const MoeProblem& p, Platform platform, bool exhaustive) {
  const int64_t def = DefaultTactic(p, platform);
  std::vector<int64_t> out;
  if (def < 0) return out;
  out.push_back(def);
  const auto& table = TacticTable();
  // The pruning rule, from the 22-bucket gpt-oss-120b table of 2026-12-01
  // (benchmarks/results/autotune.json; tests/test_autotune.py replays it):
  // every bucket's winner had a tile within one octave of the heuristic tile
  // (raised to the smallest tile when the load is below it), and the
  // streaming family only came near the best (1.01x) while the average
  // expert load was below one token. That keeps 3-6 compiles per CUDA bucket
  // instead of all 11. The CPU table is small and stays exhaustive, so the
  // CPU tests exercise a real choice between blockings.
  const bool prune = !exhaustive && platform == Platform::kCuda;
  double smallest = 0;
  for (const Tactic& t : table)
    if (t.platform == platform && (smallest == 0 || t.tile_tokens < smallest))
      smallest = static_cast<double>(t.tile_tokens);
  const double heuristic = HeuristicTile(p, platform);
  const double target = heuristic > smallest ? heuristic : smallest;
  // The wgmma families exist for tiles beyond the staged family's cap of 32
  // (the 2026-12-01 tuning run, which capped them like the others, had
  // dropped both at T >= 8192).
  const double wgmma_target = std::fmax(WgmmaLoadTarget(p), smallest);
  const bool above_one_token = p.expanded() > p.num_local_experts;  // average expert load
  for (int64_t i = 0; i < static_cast<int64_t>(table.size()); ++i) {
    if (i == def || !TacticInvalidReason(p, platform, i).empty()) continue;
    if (IsExperimental(table[i].family)) continue;
    if (prune && (ReplacedByTwin(p, table[i]) || PrunedByMeasurement(table[i]))) continue;
    if (prune) {
      if (TileGap(table[i], IsWgmmaFamily(table[i].family) ? wgmma_target : target) > 1.0) continue;
      if (table[i].family == KernelFamily::kCudaStreamSplitK && above_one_token) continue;
    }
    out.push_back(i);
  }
  return out;
}

}  // namespace jax_moe
