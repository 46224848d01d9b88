// Stage 2 (CUDA): group the (token, k) pairs by local expert in one block:
// count (shared-memory atomics) -> scan of per-expert tile counts -> tile
// offsets, tile -> expert map and the live tile count -> scatter; it also
// zeroes the GEMMs' split-K tickets. A pair's
// slot inside its expert comes from an atomic, so the permuted order varies
// run to run; the outputs do not, because every output row depends only on
// its own token and expert (no cross-row reduction anywhere).
#include "cuda/cuda_check.h"
#include "cuda/dependent_launch.cuh"
#include "cuda/stages.cuh"

namespace jax_moe::cuda {
namespace {

constexpr int kThreads = 1024;

__global__ void __launch_bounds__(kThreads)
    PermuteKernel(const int32_t* __restrict__ ids, int64_t num_expanded, int num_local,
                  int local_offset, int tile, int64_t max_rows, int64_t max_tiles, Workspace ws) {
  __shared__ int s_count[kMaxExperts];
  __shared__ int s_cursor[kMaxExperts];
  __shared__ int s_tile_start[kMaxExperts + 1];  // exclusive prefix sum of tiles
  __shared__ int s_warp_sum[kThreads / 32];
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  // A dependent of routing: nothing of the workspace or the ids before it
  // has finished; then GEMM1's blocks may become resident (they wait for us).
  WaitForPredecessor();
  AllowDependents();

  for (int e = tid; e < num_local; e += kThreads) s_count[e] = s_cursor[e] = 0;
  for (int64_t r = tid; r < max_rows; r += kThreads) ws.permuted_to_expanded[r] = -1;
  // The GEMMs' split-K tickets start every call at zero (they leave them zero).
  for (int64_t i = tid; i < ws.layout.num_tickets; i += kThreads) ws.tickets[i] = 0;
  __syncthreads();
  for (int64_t ex = tid; ex < num_expanded; ex += kThreads) {
    const int e = ids[ex] - local_offset;
    if (e >= 0 && e < num_local) atomicAdd(&s_count[e], 1);
  }
  __syncthreads();

  // Block-wide inclusive scan of tiles per expert (one expert per thread).
  const int my_tiles = tid < num_local ? (s_count[tid] + tile - 1) / tile : 0;
  int incl = my_tiles;
#pragma unroll
  for (int off = 1; off < 32; off <<= 1) {
    const int v = __shfl_up_sync(0xffffffffu, incl, off);
    if (lane >= off) incl += v;
  }
  if (lane == 31) s_warp_sum[warp] = incl;
  __syncthreads();
  if (warp == 0) {
    int w = s_warp_sum[lane];
#pragma unroll
    for (int off = 1; off < 32; off <<= 1) {
      const int v = __shfl_up_sync(0xffffffffu, w, off);
      if (lane >= off) w += v;
    }
    s_warp_sum[lane] = w;  // inclusive over warps
  }
  __syncthreads();
  incl += warp > 0 ? s_warp_sum[warp - 1] : 0;
  if (tid < num_local) {
    s_tile_start[tid] = incl - my_tiles;
    ws.counts[tid] = s_count[tid];
    ws.offsets[tid + 1] = incl * tile;
  }
  if (tid == 0) {
    ws.offsets[0] = 0;
    s_tile_start[num_local] = s_warp_sum[31];
    *ws.num_tiles = s_warp_sum[31];
  }
  __syncthreads();

  // tile -> expert: binary search of the tile starts (the last start <= tile).
  const int live = s_tile_start[num_local];
  for (int64_t t = tid; t < max_tiles; t += kThreads) {
    int e = -1;
    if (t < live) {
      int lo = 0, hi = num_local - 1;
      while (lo < hi) {
        const int mid = (lo + hi + 1) / 2;
        if (s_tile_start[mid] <= t) lo = mid; else hi = mid - 1;
      }
      e = lo;
    }
    ws.tile_expert[t] = e;
  }
  // Scatter (the -1 fill above is ordered before these writes by the barrier).
  for (int64_t ex = tid; ex < num_expanded; ex += kThreads) {
    const int e = ids[ex] - local_offset;
    int row = -1;
    if (e >= 0 && e < num_local) {
      row = s_tile_start[e] * tile + atomicAdd(&s_cursor[e], 1);
      ws.permuted_to_expanded[row] = static_cast<int32_t>(ex);
    }
    ws.expanded_to_permuted[ex] = row;
  }
}

}  // namespace

ffi::Error LaunchPermute(const MoeProblem& p, const int32_t* topk_ids, const Workspace& ws,
                         cudaStream_t stream) {
  // The routed op's ids arrive by a copy, not a kernel: a normal launch then.
  return CudaError(LaunchDependent(!p.routed, PermuteKernel, dim3(1), dim3(kThreads), 0, stream, topk_ids,
                                   p.expanded(), static_cast<int>(p.num_local_experts),
                                   static_cast<int>(p.local_expert_offset), static_cast<int>(ws.layout.tile),
                                   ws.layout.max_rows, ws.layout.max_tiles, ws),
                   "permute kernel");
}

}  // namespace jax_moe::cuda
