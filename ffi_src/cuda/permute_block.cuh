// The permute stage's work for one block of kPermuteThreads threads (the
// body of permute.cu's kernels): group the (token, k) pairs by local expert:
// count (shared-memory atomics) -> scan of per-expert tile counts -> tile
// offsets, tile -> expert map and the live tile count -> scatter; it also
// zeroes the GEMMs' split-K tickets. A pair's slot inside its expert comes
// from an atomic, so the permuted order varies run to run; the outputs do
// not, because every output row depends only on its own token and expert (no
// cross-row reduction anywhere).
#pragma once

#include <cstdint>

#include "common/enums.h"
#include "common/workspace.h"

namespace jax_moe::cuda {

constexpr int kPermuteThreads = 1024;  // the scan below assumes 32 full warps

struct PermuteShared {
  int count[kMaxExperts];
  int cursor[kMaxExperts];
  int tile_start[kMaxExperts + 1];  // exclusive prefix sum of tiles
  int warp_sum[kPermuteThreads / 32];
};

// `ids` may have been written by this block before a barrier (the fused
// routing kernel): plain loads, no read-only path.
__device__ __forceinline__ void PermuteBlock(const int32_t* ids, int64_t num_expanded, int num_local,
                                             int local_offset, int tile, int64_t max_rows, int64_t max_tiles,
                                             const Workspace& ws, PermuteShared& sh) {
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  for (int e = tid; e < num_local; e += kPermuteThreads) sh.count[e] = sh.cursor[e] = 0;
  for (int64_t r = tid; r < max_rows; r += kPermuteThreads) ws.permuted_to_expanded[r] = -1;
  // The GEMMs' split-K tickets start every call at zero (they leave them zero).
  for (int64_t i = tid; i < ws.layout.num_tickets; i += kPermuteThreads) ws.tickets[i] = 0;
  __syncthreads();
  for (int64_t ex = tid; ex < num_expanded; ex += kPermuteThreads) {
    const int e = ids[ex] - local_offset;
    if (e >= 0 && e < num_local) atomicAdd(&sh.count[e], 1);
  }
  __syncthreads();

  // Block-wide inclusive scan of tiles per expert (one expert per thread).
  const int my_tiles = tid < num_local ? (sh.count[tid] + tile - 1) / tile : 0;
  int incl = my_tiles;
#pragma unroll
  for (int off = 1; off < 32; off <<= 1) {
    const int v = __shfl_up_sync(0xffffffffu, incl, off);
    if (lane >= off) incl += v;
  }
  if (lane == 31) sh.warp_sum[warp] = incl;
  __syncthreads();
  if (warp == 0) {
    int w = sh.warp_sum[lane];
#pragma unroll
    for (int off = 1; off < 32; off <<= 1) {
      const int v = __shfl_up_sync(0xffffffffu, w, off);
      if (lane >= off) w += v;
    }
    sh.warp_sum[lane] = w;  // inclusive over warps
  }
  __syncthreads();
  incl += warp > 0 ? sh.warp_sum[warp - 1] : 0;
  if (tid < num_local) {
    sh.tile_start[tid] = incl - my_tiles;
    ws.counts[tid] = sh.count[tid];
    ws.offsets[tid + 1] = incl * tile;
  }
  if (tid == 0) {
    ws.offsets[0] = 0;
    sh.tile_start[num_local] = sh.warp_sum[31];
    *ws.num_tiles = sh.warp_sum[31];
  }
  __syncthreads();

  // tile -> expert: binary search of the tile starts (the last start <= tile).
  const int live = sh.tile_start[num_local];
  for (int64_t t = tid; t < max_tiles; t += kPermuteThreads) {
    int e = -1;
    if (t < live) {
      int lo = 0, hi = num_local - 1;
      while (lo < hi) {
        const int mid = (lo + hi + 1) / 2;
        if (sh.tile_start[mid] <= t) lo = mid; else hi = mid - 1;
      }
      e = lo;
    }
    ws.tile_expert[t] = e;
  }
  // Scatter (the -1 fill above is ordered before these writes by the barrier).
  for (int64_t ex = tid; ex < num_expanded; ex += kPermuteThreads) {
    const int e = ids[ex] - local_offset;
    int row = -1;
    if (e >= 0 && e < num_local) {
      row = sh.tile_start[e] * tile + atomicAdd(&sh.cursor[e], 1);
      ws.permuted_to_expanded[row] = static_cast<int32_t>(ex);
    }
    ws.expanded_to_permuted[ex] = row;
  }
}

}  // namespace jax_moe::cuda
