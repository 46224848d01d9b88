// Split-K across blocks for the staged family (cuda/gemm_mma.cuh).
//
// Why: at decode sizes a GEMM has a handful of token tiles, so its grid
// (tiles x feature blocks) leaves most of the 132 SMs idle or gives each one
// a single warp per scheduler that walks all of K serially (the v2 profile:
// Qwen3 GEMM1 at T = 1 was 48 blocks, 6% of the copy bandwidth). Splitting K
// over grid.z multiplies the resident warps without changing any warp's
// inner loop.
//
// How: block z of a (tile, feature block) runs K blocks [z, z + 1) * K / S,
// stores its fp32 accumulators to the workspace, and takes a ticket; the
// block that takes the last ticket adds the S partials in split order (so
// the sum is bitwise the same whichever block finishes last), resets the
// ticket for the next GEMM, and runs the normal epilogue. No atomics on
// data, nothing for the host to wait on.
#pragma once

#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>

#include "cuda/gemm_common.cuh"

namespace jax_moe::cuda {

// GEMM launches that split K, and the most splits one used (host counters,
// reported by cuda_handler_stats(): the tests check the split path ran).
inline std::atomic<int64_t> g_split_k_launches{0};
inline std::atomic<int> g_max_k_splits{1};

namespace gemm_detail {

// K blocks [first, end) of split z of S over `num_kb` K blocks of 128.
struct KSplit {
  int first, end;
};
__device__ __forceinline__ KSplit KBlocksOfSplit(int num_kb, int z, int splits) {
  return KSplit{static_cast<int>(static_cast<int64_t>(num_kb) * z / splits),
                static_cast<int>(static_cast<int64_t>(num_kb) * (z + 1) / splits)};
}

// Combines the splits of one block's accumulators. Every thread of the block
// calls it (it holds barriers); `active` threads own accumulators. Returns
// true in the block that holds the full sums in `acc` afterwards (the last
// split to arrive); the other blocks must return.
template <int kMT, int kNT>
__device__ __forceinline__ bool CombineKSplits(const GemmArgs& a, float (&acc)[kMT][kNT][4], bool active) {
  constexpr int kAcc = kMT * kNT * 4;
  __shared__ int s_last;
  const int splits = gridDim.z, z = blockIdx.z, threads = blockDim.x;
  const int slot = blockIdx.y * gridDim.x + blockIdx.x;  // (feature block, tile)
  float* const part = a.partials + static_cast<int64_t>(slot) * splits * kAcc * threads + threadIdx.x;
  if (active) {
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
        for (int i = 0; i < 4; ++i)
          __stcg(part + (static_cast<int64_t>(z) * kAcc + (mt * kNT + nt) * 4 + i) * threads, acc[mt][nt][i]);
  }
  __threadfence();  // this block's partials are visible device-wide before its ticket
  __syncthreads();
  if (threadIdx.x == 0) {
    const int taken = atomicAdd(&a.tickets[slot], 1);
    s_last = taken == splits - 1;
    if (s_last) {
      a.tickets[slot] = 0;  // every split has arrived: ready for the next GEMM
      __threadfence();      // ... and the other splits' partials are read after their tickets
    }
  }
  __syncthreads();
  if (!s_last) return false;
  if (active) {
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          float sum = 0.0f;
          for (int s = 0; s < splits; ++s)
            sum += s == z ? acc[mt][nt][i]
                          : __ldcg(part + (static_cast<int64_t>(s) * kAcc + (mt * kNT + nt) * 4 + i) * threads);
          acc[mt][nt][i] = sum;
        }
  }
  return true;
}

}  // namespace gemm_detail

// Blocks of `kKernel` (with `threads` threads and `smem` bytes of dynamic
// shared memory) the device holds at once: SMs x blocks per SM. A host-side
// attribute query, cached per kernel (it does not touch the stream).
template <auto kKernel>
cudaError_t ResidentBlocks(int threads, int smem, int* out) {
  static std::atomic<int> cached{0};
  if (const int c = cached.load(std::memory_order_relaxed); c > 0) {
    *out = c;
    return cudaSuccess;
  }
  int device = 0, sms = 0, per_sm = 0;
  if (cudaError_t e = cudaGetDevice(&device); e != cudaSuccess) return e;
  if (cudaError_t e = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device); e != cudaSuccess)
    return e;
  if (cudaError_t e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kKernel, threads, smem);
      e != cudaSuccess)
    return e;
  const int c = sms * (per_sm > 0 ? per_sm : 1);
  cached.store(c, std::memory_order_relaxed);
  *out = c;
  return cudaSuccess;
}

// JAX_MOE_MAX_K_SPLITS=n caps the splits (1: never split), so a benchmark
// can time the same tactic with and without split-K in one run. Read per
// call (host-side, like JAX_MOE_POISON_OUTPUTS).
inline int MaxKSplitsFromEnv(int limit) {
  const char* v = std::getenv("JAX_MOE_MAX_K_SPLITS");
  if (v == nullptr || v[0] == '\0') return limit;
  const int cap = std::atoi(v);
  return cap >= 1 && cap < limit ? cap : limit;
}

inline void NoteKSplits(int splits) {
  g_split_k_launches.fetch_add(1, std::memory_order_relaxed);
  int seen = g_max_k_splits.load(std::memory_order_relaxed);
  while (splits > seen && !g_max_k_splits.compare_exchange_weak(seen, splits, std::memory_order_relaxed)) {
  }
}

// The number of K splits S <= limit for a grid of `blocks` blocks (before
// splitting) over `num_kb` K blocks of 128, on a device that holds
// `resident` blocks at once. Modelled time: waves x (K blocks per split + 1),
// the 1 standing for a split's own prologue (ring fill), epilogue and
// partial-sum traffic; a larger S is taken only when it models >= 10% faster
// than the best smaller one. Every split keeps >= 2 K blocks.
inline int ChooseKSplits(int64_t blocks, int resident, int limit, int num_kb) {
  auto cost = [&](int s) {
    return static_cast<double>((blocks * s + resident - 1) / resident) * (static_cast<double>(num_kb) / s + 1.0);
  };
  int best = 1;
  double best_cost = cost(1);
  for (int s = 2; s <= limit && num_kb / s >= 2; ++s) {
    const double cost_s = cost(s);
    if (cost_s < 0.9 * best_cost) {
      best = s;
      best_cost = cost_s;
    }
  }
  return best;
}

}  // namespace jax_moe::cuda
