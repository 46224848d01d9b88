// Stage 1 (CUDA): routing, one warp per token (cuda/routing_warp.cuh), or a
// copy of the caller's ids and weights for the routed op.
#include "cuda/cuda_check.h"
#include "cuda/dependent_launch.cuh"
#include "cuda/routing_warp.cuh"
#include "cuda/stages.cuh"

namespace jax_moe::cuda {
namespace {

constexpr int kWarpsPerBlock = 4;

template <RoutingMethod kMethod, int S>
__global__ void __launch_bounds__(32 * kWarpsPerBlock)
    RoutingKernel(const float* __restrict__ logits, const float* __restrict__ bias, RoutingParams rp,
                  int num_tokens, int32_t* __restrict__ ids, float* __restrict__ weights) {
  __shared__ float s_score[kWarpsPerBlock][32 * S];  // the generic grouping path only
  // Launched normally (after whatever XLA ran), so permute, launched as our
  // dependent, may become resident now and wait for us.
  AllowDependents();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int t = blockIdx.x * kWarpsPerBlock + warp;
  if (t >= num_tokens) return;  // whole warps
  const int64_t row = static_cast<int64_t>(t);
  RouteTokenWarp<kMethod, S>(logits + row * rp.num_experts, bias, rp, lane, s_score[warp], ids + row * rp.top_k,
                             weights + row * rp.top_k);
}

using RoutingFn = void (*)(const float*, const float*, RoutingParams, int, int32_t*, float*);
struct PickRoutingKernel {
  template <RoutingMethod kMethod, int S>
  static RoutingFn Get() { return RoutingKernel<kMethod, S>; }
};

}  // namespace

ffi::Error LaunchRouting(const MoeProblem& p, const MoeBuffers& b, cudaStream_t stream) {
  const int64_t TK = p.expanded();
  if (p.routed) {
    JM_RETURN_IF_ERROR(CudaError(cudaMemcpyAsync(b.topk_ids, b.in_ids, TK * sizeof(int32_t),
                                                 cudaMemcpyDeviceToDevice, stream),
                                 "routing: copy topk_ids"));
    return CudaError(cudaMemcpyAsync(b.topk_weights, b.in_weights, TK * sizeof(float),
                                     cudaMemcpyDeviceToDevice, stream),
                     "routing: copy topk_weights");
  }
  const int blocks = static_cast<int>((p.num_tokens + kWarpsPerBlock - 1) / kWarpsPerBlock);
  const RoutingFn kernel = PickRouting<PickRoutingKernel>(p.routing);
  if (kernel == nullptr) return ffi::Error::InvalidArgument(kUnsupportedRouting);
  kernel<<<blocks, 32 * kWarpsPerBlock, 0, stream>>>(b.logits, b.routing_bias, p.routing,
                                                     static_cast<int>(p.num_tokens), b.topk_ids, b.topk_weights);
  return LaunchError("routing kernel");
}

}  // namespace jax_moe::cuda
