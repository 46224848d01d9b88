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
  kCudaMmaSwapAB = 1,  // CUDA: mma.sync m16n8k16 bf16, weights on M (decoded FP4 in
                       // registers), tokens on N (staged bf16 in shared memory)
  kCudaStreamSplitK = 2,  // CUDA: the same MMAs, one block per token tile x 32 features,
                          // warps split K, operands streamed from global memory
                          // through a two-stage register pipeline (small T)
  kCudaWgmmaSwapAB = 3,  // CUDA (sm_90a): wgmma m64nNk16, decoded FP4 weights as the
                         // register A operand, the token tile (N = 64/128) staged in
                         // shared memory (prefill)
  kCudaWgmmaWarpSpecialized = 4,  // CUDA (sm_90a): wgmma m64nNk16 with both operands in
                                  // shared memory; a producer warpgroup decodes the FP4
                                  // weights once per block for the consumer warpgroups
  kCudaWgmmaWsTwoProducers = 5,  // CUDA (sm_90a): the same kernel with two producer
                                 // warpgroups sharing each stage's decode, registers moved
                                 // to the consumers with setmaxnreg
  kCudaWgmmaRs = 6,  // CUDA (sm_90a): wgmma m64n128k16 with A = FP4 weights decoded in the
                     // consumers' registers; a producer warpgroup only issues cp.async of
                     // the packed weights and the raw bf16 token tile (prefill)
  kCudaWgmmaRsPersistent = 7,  // CUDA (sm_90a): the same kernel on a persistent grid (one
                               // block per SM over the (tile, feature block) items)
};

// The CUDA rows, once: the table (tactics.cc) and the kernel instantiations
// (cuda/gemm1.cu, cuda/gemm2.cu) both expand this list, so a tactic id always
// names the kernel that was compiled for it.
//   X(name, tile_tokens, tokens_per_warp, warps_n, k_chunk, weight_stages, warps_k)
// tile_tokens: token rows per block (= per-expert padding); tokens_per_warp:
// the N extent of one warp's MMAs; warps_n: warps along the output features
// (32 features each, so tile_n = 32 * warps_n); k_chunk: K elements staged in
// shared memory at a time; weight_stages: depth of the cp.async weight ring
// in K blocks of 128 (0: weights loaded straight into registers, one K block
// in flight; cuda/gemm_mma.cuh); warps_k: warps along K inside one block
// (each takes every warps_k-th K block of a chunk; their partial sums meet in
// shared memory before the epilogue), so a decode GEMM with few blocks runs
// more warps per SM without paying more blocks' prologues. A ring row and its
// ring-less twin (same other columns) are never both in the default's choice
// or among the tuning candidates: RingPreferred (tactics.cc) keeps one of the
// two per problem.
// clang-format off
#define JAX_MOE_CUDA_TACTICS(X)                      \
  X(cuda_mma_t8_n128,    8,  8, 4, 512, 0, 1)        \
  X(cuda_mma_t8_n64,     8,  8, 2, 512, 0, 1)        \
  X(cuda_mma_t16_n128,  16, 16, 4, 512, 0, 1)        \
  X(cuda_mma_t16_n256,  16, 16, 8, 512, 0, 1)        \
  X(cuda_mma_t32_n128,  32, 32, 4, 512, 0, 1)        \
  X(cuda_mma_t64_n128,  64, 32, 4, 256, 0, 1)        \
  X(cuda_mma_t128_n64, 128, 32, 2, 128, 0, 1)        \
  X(cuda_mma_t8_n128_r4,   8,  8, 4, 512, 4, 1)      \
  X(cuda_mma_t8_n64_r6,    8,  8, 2, 512, 6, 1)      \
  X(cuda_mma_t16_n128_r4, 16, 16, 4, 512, 4, 1)      \
  X(cuda_mma_t32_n128_r3, 32, 32, 4, 512, 3, 1)      \
  X(cuda_mma_t8_n128_k4,   8,  8, 4, 512, 0, 4)      \
  X(cuda_mma_t8_n128_r2_k4, 8, 8, 4, 512, 2, 4)      \
  X(cuda_mma_t8_n128_r3_k2, 8, 8, 4, 512, 3, 2)

// The streaming split-K rows (cuda/gemm_stream.cuh), after the rows above:
//   X(name, tile_tokens, tokens_per_warp)
// Each block covers 32 features; the number of warps along K is picked per
// GEMM at launch from its K (StreamSplitK), so one row serves both GEMMs.
#define JAX_MOE_CUDA_STREAM_TACTICS(X) \
  X(cuda_stream_t8,   8,  8)           \
  X(cuda_stream_t16, 16, 16)           \
  X(cuda_stream_t32, 32, 16)           \
  X(cuda_stream_t64, 64, 16)

// The wgmma rows (cuda/gemm_wgmma.cuh), after the streaming rows:
//   X(name, tile_tokens, k_chunk)
// One block covers 128 features; GEMM1 runs 64 tokens per warpgroup
// (tile_tokens / 64 warpgroups), GEMM2 up to 128.
#define JAX_MOE_CUDA_WGMMA_TACTICS(X) \
  X(cuda_wgmma_t64,   64, 256)        \
  X(cuda_wgmma_t128, 128, 128)

// The warp-specialised wgmma rows (cuda/gemm_wgmma_ws.cuh), after the wgmma rows:
//   X(name, tile_tokens, stages, producers)
// One block covers 128 features: `producers` warpgroups decode 64-element K
// stages into a ring of `stages` shared-memory buffers, tile_tokens / 64
// consumer warpgroups (GEMM2 with 128 tokens: one of N = 128) run wgmma.
// Rows with two producers form their own family (kCudaWgmmaWsTwoProducers).
#define JAX_MOE_CUDA_WGMMA_WS_TACTICS(X) \
  X(cuda_wgmma_ws_t64,   64, 4, 1)        \
  X(cuda_wgmma_ws_t128, 128, 4, 1)        \
  X(cuda_wgmma_ws2_t128, 128, 4, 2)

// The register-A cp.async wgmma rows (cuda/gemm_wgmma_rs.cuh), after the
// warp-specialised rows:
//   X(name, tile_tokens, stages, persistent)
// A 128-token work item covers 128 (GEMM1) / 256 (GEMM2) output features,
// a 256-token one 64 / 128 (the same 128 accumulators a thread, half the
// FP4 decode per multiply); `stages` 64-element K stages of packed weights
// + raw tokens in the ring; persistent rows form their own family
// (kCudaWgmmaRsPersistent). Problems the 128-token kernel does not cover
// (activations other than bf16 / MXFP8, K % 64 != 0) run the
// warp-specialised kernel of the same tile; the 256-token row has no such
// fallback and is invalid for them (activations other than bf16, H or I %
// 64 != 0: TacticInvalidReason).
#define JAX_MOE_CUDA_WGMMA_RS_TACTICS(X) \
  X(cuda_wgmma_rs_t128,  128, 6, false)  \
  X(cuda_wgmma_rsp_t128, 128, 6, true)   \
  X(cuda_wgmma_rsp_t256, 256, 5, true)
// clang-format on

struct Tactic {
  const char* name;
  Platform platform;
  KernelFamily family;
  int64_t tile_tokens;      // rows of a token tile (also the per-expert padding)
  int64_t tile_n;           // output columns per work item
  int64_t tokens_per_warp;  // CUDA: N extent of one warp (0 on the CPU)
  int64_t k_chunk;          // CUDA staged family: K elements per shared-memory stage (0 elsewhere)
  int64_t weight_stages;    // CUDA staged family: cp.async weight ring depth in K blocks (0: none)
  int64_t warps_k = 1;      // CUDA staged family: warps along K in one block (1 elsewhere)
};

// Families whose kernels have not yet passed the GPU suite on a device: an
// explicit tactic runs them (that is how the tests reach them), but neither
// the default nor the autotuner ever picks them, so an unproven kernel
// cannot be chosen for speed while giving a wrong answer.
bool IsExperimental(KernelFamily family);

// Name of a family as Python sees it ("cuda_mma_swap_ab", ...).
const char* FamilyName(KernelFamily family);

// Index of the first CUDA row: CUDA rows follow the CPU rows in list order.
int64_t FirstCudaTactic();

const std::vector<Tactic>& TacticTable();

// FNV-1a over every field of every row: a cache entry tuned against another
// table is never trusted.
uint64_t TacticTableHash();

// "" if tactic `id` can run `p` on `platform`, else the reason it cannot.
std::string TacticInvalidReason(const MoeProblem& p, Platform platform, int64_t id);

// The heuristic default: always valid for any supported problem. On CUDA the
// token tile follows the average expert load (DESIGN.md section 5), in the
// staged family (the measured faster one; the autotuner weighs both).
int64_t DefaultTactic(const MoeProblem& p, Platform platform);

// The most K splits a GEMM of tactic `t` may run `p` with (1 = none). Only
// the staged family splits K across blocks (cuda/gemm_mma.cuh); how many
// splits it launches, up to this, is KSplits below. Capped by what K allows
// (KSplits' minimum K per split) and so the fp32 partial sums stay within a
// fixed workspace budget: at decode sizes (a few tiles) with long K the full
// limit, at prefill sizes or short K 1, so those pay no workspace for it.
int64_t SplitKLimit(const MoeProblem& p, const Tactic& t);

// K splits for a staged-family grid of `blocks` blocks (before splitting)
// over `num_kb` K blocks of 128 on a device of `sms` SMs: the largest
// S <= limit that keeps >= 24 K blocks per split and <= 5 blocks per SM
// (tactics.cc says which measurements these bounds come from).
int64_t KSplits(int64_t blocks, int64_t sms, int64_t limit, int64_t num_kb);

// The workspace layout a call of `p` under tactic `t` uses (for both GEMMs),
// or with GEMM1 under `t` and GEMM2 under `t2` (rows of one token tile).
WorkspaceLayout PlanWorkspaceFor(const MoeProblem& p, const Tactic& t);
WorkspaceLayout PlanWorkspaceFor(const MoeProblem& p, const Tactic& t, const Tactic& t2);

// The row GEMM2 of `p` runs: p.gemm2_tactic, or p.tactic when that is -1.
inline int64_t Gemm2Tactic(const MoeProblem& p) { return p.gemm2_tactic < 0 ? p.tactic : p.gemm2_tactic; }

// "" if Gemm2Tactic(p) can run GEMM2 of `p` on `platform` after GEMM1 ran
// p.tactic: a valid row of the platform with the same token tile (the
// permuted layout and the workspace are planned from GEMM1's tile), else why not.
std::string Gemm2TacticInvalidReason(const MoeProblem& p, Platform platform);

// The tactics the autotuner times for `p`: the default first, then the valid,
// non-experimental tactics the pruning rule (tactics.cc) keeps, or every one
// of those when `exhaustive`. Empty only if the platform has no tactic at all.
std::vector<int64_t> TuningCandidates(const MoeProblem& p, Platform platform, bool exhaustive);

}  // namespace jax_moe
