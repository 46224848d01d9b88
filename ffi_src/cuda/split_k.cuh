// Split-K across blocks for the staged family (cuda/gemm_mma.cuh).
//
// Why: at decode sizes a GEMM has a handful of token tiles, so its grid
// (tiles x feature blocks) leaves SMs idle or gives each a single warp per
// scheduler that walks all of K serially (Mixtral GEMM2 at T = 1: 64 blocks
// of 112 K blocks each). Splitting K over grid.z multiplies the resident
// warps without changing any warp's inner loop. KSplits (common/tactics.h:
// host arithmetic, tested on the CPU) says when that pays.
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

#include "common/tactics.h"
#include "cuda/gemm_common.cuh"
#include "cuda/launch_counters.h"

namespace jax_moe::cuda {

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

// SMs of the current device (a host-side attribute query, cached: it does
// not touch the stream).
inline cudaError_t DeviceSms(int* out) {
  static std::atomic<int> cached{0};
  if (const int c = cached.load(std::memory_order_relaxed); c > 0) {
    *out = c;
    return cudaSuccess;
  }
  int device = 0, sms = 0;
  if (cudaError_t e = cudaGetDevice(&device); e != cudaSuccess) return e;
  if (cudaError_t e = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device); e != cudaSuccess)
    return e;
  *out = sms > 0 ? sms : 1;
  cached.store(*out, std::memory_order_relaxed);
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

}  // namespace jax_moe::cuda
