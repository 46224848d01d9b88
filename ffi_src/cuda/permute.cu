// Stage 2 (CUDA): the permute stage in one block (cuda/permute_block.cuh);
// and, for decode sizes, routing and permute fused into that one block.
#include "cuda/cuda_check.h"
#include "cuda/dependent_launch.cuh"
#include "cuda/permute_block.cuh"
#include "cuda/routing_warp.cuh"
#include "cuda/stages.cuh"

namespace jax_moe::cuda {
namespace {

__global__ void __launch_bounds__(kPermuteThreads)
    PermuteKernel(const int32_t* __restrict__ ids, int64_t num_expanded, int num_local,
                  int local_offset, int tile, int64_t max_rows, int64_t max_tiles, Workspace ws) {
  __shared__ PermuteShared sh;
  // A dependent of routing: nothing of the workspace or the ids before it
  // has finished; then GEMM1's blocks may become resident (they wait for us).
  WaitForPredecessor();
  AllowDependents();
  PermuteBlock(ids, num_expanded, num_local, local_offset, tile, max_rows, max_tiles, ws, sh);
}

// Routing + permute in one block, for T <= kFusedRoutingTokens: warp t routes
// token t into the op's topk outputs, then the whole block permutes them. One
// launch instead of two at decode sizes, where each stage is a few
// microseconds of mostly launch and latency. Launched normally (it is the
// first stage); GEMM1 may become resident early and waits for it.
constexpr int kFusedRoutingTokens = 8;

template <RoutingMethod kMethod, int S>
__global__ void __launch_bounds__(kPermuteThreads)
    RoutePermuteKernel(const float* __restrict__ logits, const float* __restrict__ bias, RoutingParams rp,
                       int num_tokens, int32_t* ids, float* weights, int num_local, int local_offset, int tile,
                       int64_t max_rows, int64_t max_tiles, Workspace ws) {
  __shared__ float s_score[kFusedRoutingTokens][32 * S];  // the generic grouping path only
  __shared__ PermuteShared sh;
  AllowDependents();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (warp < num_tokens) {  // whole warps
    const int64_t row = warp;
    RouteTokenWarp<kMethod, S>(logits + row * rp.num_experts, bias, rp, lane, s_score[warp],
                               ids + row * rp.top_k, weights + row * rp.top_k);
  }
  __syncthreads();  // the block's ids writes are visible to the whole block
  PermuteBlock(ids, static_cast<int64_t>(num_tokens) * rp.top_k, num_local, local_offset, tile, max_rows,
               max_tiles, ws, sh);
}

using RoutePermuteFn = void (*)(const float*, const float*, RoutingParams, int, int32_t*, float*, int, int, int,
                                int64_t, int64_t, Workspace);
struct PickRoutePermuteKernel {
  template <RoutingMethod kMethod, int S>
  static RoutePermuteFn Get() { return RoutePermuteKernel<kMethod, S>; }
};

}  // namespace

bool RoutingFusesPermute(const MoeProblem& p) {
  return !p.routed && p.num_tokens >= 1 && p.num_tokens <= kFusedRoutingTokens && FusedRoutingEnabled();
}

ffi::Error LaunchRoutingAndPermute(const MoeProblem& p, const MoeBuffers& b, const Workspace& ws,
                                   cudaStream_t stream) {
  if (!RoutingFusesPermute(p)) {
    JM_RETURN_IF_ERROR(LaunchRouting(p, b, stream));
    return LaunchPermute(p, b.topk_ids, ws, stream);
  }
  const RoutePermuteFn kernel = PickRouting<PickRoutePermuteKernel>(p.routing);
  if (kernel == nullptr) return ffi::Error::InvalidArgument(kUnsupportedRouting);
  kernel<<<1, kPermuteThreads, 0, stream>>>(b.logits, b.routing_bias, p.routing, static_cast<int>(p.num_tokens),
                                            b.topk_ids, b.topk_weights, static_cast<int>(p.num_local_experts),
                                            static_cast<int>(p.local_expert_offset),
                                            static_cast<int>(ws.layout.tile), ws.layout.max_rows,
                                            ws.layout.max_tiles, ws);
  return LaunchError("routing + permute kernel");
}

ffi::Error LaunchPermute(const MoeProblem& p, const int32_t* topk_ids, const Workspace& ws,
                         cudaStream_t stream) {
  // The routed op's ids arrive by a copy, not a kernel: a normal launch then.
  return CudaError(LaunchDependent(!p.routed, PermuteKernel, dim3(1), dim3(kPermuteThreads), 0, stream, topk_ids,
                                   p.expanded(), static_cast<int>(p.num_local_experts),
                                   static_cast<int>(p.local_expert_offset), static_cast<int>(ws.layout.tile),
                                   ws.layout.max_rows, ws.layout.max_tiles, ws),
                   "permute kernel");
}

}  // namespace jax_moe::cuda
