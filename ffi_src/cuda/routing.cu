// Stage 1 (CUDA): routing, one warp per token. Lanes score the experts
// (lane, lane+32, ...) into shared memory, then top-k is k rounds of a warp
// arg-max with the CPU's tie rule (higher score, then smaller index). The
// per-token weights come from RoutingWeights (routing_math.h), the CPU's own
// code, so CPU and GPU agree to the last few ulps.
#include <cmath>

#include "common/routing_math.h"
#include "cuda/cuda_check.h"
#include "cuda/stages.cuh"

namespace jax_moe::cuda {
namespace {

constexpr int kWarpsPerBlock = 4;
constexpr int kSlots = kMaxExperts / 32;  // experts per lane

struct Best {
  float score;
  int index;
};

// Better = higher score; equal scores: smaller index. -inf entries are real
// candidates (masked DeepSeek groups), `taken` ones never are.
__device__ __forceinline__ bool Better(float s, int i, const Best& b) {
  return b.index < 0 || s > b.score || (s == b.score && i < b.index);
}

__device__ Best WarpArgMax(Best b) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    Best o{__shfl_xor_sync(0xffffffffu, b.score, off), __shfl_xor_sync(0xffffffffu, b.index, off)};
    if (o.index >= 0 && Better(o.score, o.index, b)) b = o;
  }
  return b;
}

__device__ float WarpSum(float v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}
__device__ float WarpMax(float v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, off));
  return v;
}

// k rounds of arg-max over score[0..n) (in shared memory); writes the chosen
// indices and scores (identical on every lane).
__device__ void WarpTopK(const float* score, int n, int k, int lane, int32_t* idx, float* val) {
  uint32_t taken = 0;  // bit s: expert lane + 32 s already chosen
  for (int r = 0; r < k; ++r) {
    Best b{0.0f, -1};
    for (int s = 0; s < kSlots; ++s) {
      const int e = lane + 32 * s;
      if (e < n && !(taken >> s & 1u) && Better(score[e], e, b)) b = Best{score[e], e};
    }
    b = WarpArgMax(b);
    if ((b.index & 31) == lane) taken |= 1u << (b.index >> 5);
    idx[r] = b.index;
    val[r] = b.score;
  }
}

__global__ void RoutingKernel(const float* __restrict__ logits, const float* __restrict__ bias,
                              RoutingParams rp, int num_tokens, int32_t* __restrict__ ids,
                              float* __restrict__ weights) {
  __shared__ float s_score[kWarpsPerBlock][kMaxExperts];
  __shared__ float s_group[kWarpsPerBlock][kMaxGroups];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int t = blockIdx.x * kWarpsPerBlock + warp;
  if (t >= num_tokens) return;
  const int E = rp.num_experts, K = rp.top_k;
  const float* x = logits + static_cast<int64_t>(t) * E;
  float* score = s_score[warp];
  int32_t idx[kMaxTopK];
  float val[kMaxTopK];

  switch (rp.method) {
    case RoutingMethod::kDEFAULT: {
      float m = -INFINITY;
      for (int e = lane; e < E; e += 32) m = fmaxf(m, x[e]);
      m = WarpMax(m);
      float s = 0.0f;
      for (int e = lane; e < E; e += 32) s += expf(x[e] - m);
      s = WarpSum(s);
      for (int e = lane; e < E; e += 32) score[e] = expf(x[e] - m) / s;
      __syncwarp();
      WarpTopK(score, E, K, lane, idx, val);
      break;
    }
    case RoutingMethod::kRENORMALIZE:
    case RoutingMethod::kTOPK:
    case RoutingMethod::kLLAMA4: {
      for (int e = lane; e < E; e += 32) score[e] = x[e];
      __syncwarp();
      WarpTopK(score, E, K, lane, idx, val);
      break;
    }
    case RoutingMethod::kDEEPSEEK_V3: {
      const int groups = rp.n_group > 1 ? rp.n_group : 1;
      const int per_group = E / groups;
      for (int e = lane; e < E; e += 32) score[e] = Sigmoid(x[e]) + (bias ? bias[e] : 0.0f);
      __syncwarp();
      if (groups > 1) {
        // Group score = sum of its two best biased scores (lane g scans group g).
        if (lane < groups) {
          TopKList two(per_group >= 2 ? 2 : 1);
          for (int j = 0; j < per_group; ++j) two.Offer(score[lane * per_group + j], lane * per_group + j);
          s_group[warp][lane] = two.size == 2 ? two.score[0] + two.score[1] : two.score[0];
        }
        __syncwarp();
        int32_t gidx[kMaxGroups];
        float gval[kMaxGroups];
        WarpTopK(s_group[warp], groups, rp.topk_group, lane, gidx, gval);
        uint32_t kept = 0;
        for (int i = 0; i < rp.topk_group; ++i) kept |= 1u << gidx[i];
        for (int e = lane; e < E; e += 32)
          if (!(kept >> (e / per_group) & 1u)) score[e] = -INFINITY;
        __syncwarp();
      }
      WarpTopK(score, E, K, lane, idx, val);
      break;
    }
  }
  float w[kMaxTopK];
  RoutingWeights(rp, x, val, idx, w);
  if (lane < K) {
    // Registers indexed by lane: select through a loop to stay in registers.
    int my_id = 0;
    float my_w = 0.0f;
    for (int k = 0; k < K; ++k)
      if (k == lane) {
        my_id = idx[k];
        my_w = w[k];
      }
    ids[static_cast<int64_t>(t) * K + lane] = my_id;
    weights[static_cast<int64_t>(t) * K + lane] = my_w;
  }
}

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
  RoutingKernel<<<blocks, 32 * kWarpsPerBlock, 0, stream>>>(b.logits, b.routing_bias, p.routing,
                                                            static_cast<int>(p.num_tokens),
                                                            b.topk_ids, b.topk_weights);
  return LaunchError("routing kernel");
}

}  // namespace jax_moe::cuda
