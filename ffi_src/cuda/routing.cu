// Stage 1 (CUDA): routing, one warp per token, everything in registers.
// Lane l holds experts l*S .. l*S + S - 1 (S = the power of two >= E / 32,
// a template argument), scores them, and the warp takes the top k with
// cuda/warp_select.cuh (a sort per lane, then k rounds of two redux.sync)
// under the CPU's tie rule (higher score, then smaller index). Lane k < K
// then computes the weight of the k-th choice with the CPU's own expressions
// in the CPU's order (routing_math.h), so CPU and GPU pick the same experts
// and agree on weights to the last few ulps.
//
// Why this shape (ncu, H200, T = 1, NOTES v8): the kernel it replaces scanned
// scores in shared memory per round, let one lane per group scan its group
// and lane 0 compute all k weights; DeepSeek-V3 took 20.3 us for one token,
// 4884 instructions of one warp at ~8 cycles each (a dependency chain; only
// 18 KB read).
#include <cmath>

#include "common/routing_math.h"
#include "cuda/cuda_check.h"
#include "cuda/dependent_launch.cuh"
#include "cuda/stages.cuh"
#include "cuda/warp_select.cuh"

namespace jax_moe::cuda {
namespace {

constexpr int kWarpsPerBlock = 4;
constexpr unsigned kFull = 0xffffffffu;

__device__ float WarpSum(float v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(kFull, v, off);
  return v;
}
__device__ float WarpMax(float v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v = fmaxf(v, __shfl_xor_sync(kFull, v, off));
  return v;
}

// The sum of the two best scores of group g (one lane per group, scores in
// shared memory), with the CPU's TopKList(2) semantics. The generic path of
// MaskToBestGroups, for groups that do not fall on lane boundaries.
__device__ float GroupScore(const float* score, int g, int per_group) {
  float best = score[g * per_group], second = 0.0f;
  bool two = false;
  for (int j = 1; j < per_group; ++j) {
    const float s = score[g * per_group + j];
    if (!two || s > second) {
      second = s > best ? best : s;
      best = s > best ? s : best;
      two = true;
    }
  }
  return two ? best + second : best;
}

// DeepSeek-V3 grouping: scores of experts outside the topk_group best groups
// (group score = its two best scores summed; ties: smaller group) become
// -inf, as the CPU does. When every group is a power-of-two run of whole
// lanes (DeepSeek-V3: 8 groups of 32 = 4 lanes of 8) the group's top two come
// from a per-lane pass and xor shuffles; otherwise through shared memory.
template <int S>
__device__ void MaskToBestGroups(float (&sc)[S], const RoutingParams& rp, int E, int base, int lane,
                                 float* s_score) {
  const int groups = rp.n_group, per_group = E / groups;
  const int lanes_per_group = per_group / S;
  const bool on_lanes = per_group % S == 0 && (lanes_per_group & (lanes_per_group - 1)) == 0;
  float gs = 0.0f;  // lane g < groups: the score of group g
  if (on_lanes) {
    float b1 = -INFINITY, b2 = -INFINITY;  // the lane's two best (one group per lane)
#pragma unroll
    for (int j = 0; j < S; ++j) {
      const float s = sc[j];
      if (s > b1) {
        b2 = b1;
        b1 = s;
      } else if (s > b2) {
        b2 = s;
      }
    }
    for (int off = 1; off < lanes_per_group; off <<= 1) {  // the group's two best
      const float o1 = __shfl_xor_sync(kFull, b1, off), o2 = __shfl_xor_sync(kFull, b2, off);
      const float low = fminf(b1, o1);
      b1 = fmaxf(b1, o1);
      b2 = fmaxf(low, fmaxf(b2, o2));
    }
    const float mine = per_group >= 2 ? b1 + b2 : b1;
    gs = __shfl_sync(kFull, mine, (lane * lanes_per_group) & 31);
  } else {
#pragma unroll
    for (int j = 0; j < S; ++j)
      if (base + j < E) s_score[base + j] = sc[j];
    __syncwarp();
    if (lane < groups) gs = GroupScore(s_score, lane, per_group);
  }
  // Group g is kept when fewer than topk_group groups beat it.
  int beaten_by = 0;
  for (int h = 0; h < groups; ++h) {
    const float o = __shfl_sync(kFull, gs, h);
    beaten_by += o > gs || (o == gs && h < lane);
  }
  const uint32_t kept = __ballot_sync(kFull, lane < groups && beaten_by < rp.topk_group);
  if (on_lanes) {
    const bool keep = kept >> min(base / per_group, 31) & 1u;
#pragma unroll
    for (int j = 0; j < S; ++j)
      if (!keep) sc[j] = -INFINITY;
  } else {
#pragma unroll
    for (int j = 0; j < S; ++j)
      if (base + j < E && !(kept >> ((base + j) / per_group) & 1u)) sc[j] = -INFINITY;
  }
}

// One instantiation per routing method and lane width S (experts per lane).
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
  const int E = rp.num_experts, K = rp.top_k, base = lane * S;
  const float* x = logits + static_cast<int64_t>(t) * E;

  float xv[S], sc[S];  // the lane's logits (one round trip: independent loads) and scores
#pragma unroll
  for (int j = 0; j < S; ++j) xv[j] = base + j < E ? x[base + j] : 0.0f;
  if constexpr (kMethod == RoutingMethod::kDEFAULT) {  // softmax over all E
    float m = -INFINITY;
#pragma unroll
    for (int j = 0; j < S; ++j)
      if (base + j < E) m = fmaxf(m, xv[j]);
    m = WarpMax(m);
    float s = 0.0f;
#pragma unroll
    for (int j = 0; j < S; ++j)
      if (base + j < E) s += expf(xv[j] - m);
    s = WarpSum(s);
#pragma unroll
    for (int j = 0; j < S; ++j) sc[j] = expf(xv[j] - m) / s;
  } else if constexpr (kMethod == RoutingMethod::kDEEPSEEK_V3) {  // biased sigmoid, then groups
    float bv[S];
#pragma unroll
    for (int j = 0; j < S; ++j) bv[j] = bias != nullptr && base + j < E ? bias[base + j] : 0.0f;
#pragma unroll
    for (int j = 0; j < S; ++j) sc[j] = Sigmoid(xv[j]) + bv[j];
    if (rp.n_group > 1) MaskToBestGroups<S>(sc, rp, E, base, lane, s_score[warp]);
  } else {  // renormalize, top-k, Llama-4: select on the logits
#pragma unroll
    for (int j = 0; j < S; ++j) sc[j] = xv[j];
  }

  uint64_t cand[S];
#pragma unroll
  for (int j = 0; j < S; ++j) cand[j] = base + j < E ? Candidate(sc[j], base + j) : 0;
  SortLargestFirst<S>(cand);
  const uint64_t mine = WarpSelectTopK<S>(cand, K, lane);  // lane k < K: the k-th choice
  const int idx = CandidateIndex(mine);
  const float score = CandidateScore(mine);

  // RoutingWeights' expressions, lane k for choice k; sums in k order.
  float w = score;  // default (probabilities) and top-k (raw logits)
  if constexpr (kMethod == RoutingMethod::kLLAMA4) {
    w = Sigmoid(score);
  } else if constexpr (kMethod == RoutingMethod::kRENORMALIZE) {
    const float ex = expf(score - __shfl_sync(kFull, score, 0));
    float s = 0.0f;
    for (int k = 0; k < K; ++k) s += __shfl_sync(kFull, ex, k);
    w = ex / s;
  } else if constexpr (kMethod == RoutingMethod::kDEEPSEEK_V3) {
    // The unbiased logit of the chosen expert, from the lane that holds it.
    const int owner = (idx / S) & 31, slot = idx % S;
    float xe = 0.0f;
#pragma unroll
    for (int j = 0; j < S; ++j) {
      const float v = __shfl_sync(kFull, xv[j], owner);
      if (slot == j) xe = v;
    }
    const float sig = Sigmoid(xe);
    float s = 0.0f;
    for (int k = 0; k < K; ++k) s += __shfl_sync(kFull, sig, k);
    w = sig * rp.routed_scaling_factor / (s + 1e-20f);
  }
  if (lane < K) {
    ids[static_cast<int64_t>(t) * K + lane] = idx;
    weights[static_cast<int64_t>(t) * K + lane] = w;
  }
}

using RoutingFn = void (*)(const float*, const float*, RoutingParams, int, int32_t*, float*);

template <RoutingMethod kMethod>
RoutingFn RoutingKernelFor(int num_experts) {
  if (num_experts <= 32) return RoutingKernel<kMethod, 1>;
  if (num_experts <= 64) return RoutingKernel<kMethod, 2>;
  if (num_experts <= 128) return RoutingKernel<kMethod, 4>;
  if (num_experts <= 256) return RoutingKernel<kMethod, 8>;
  return RoutingKernel<kMethod, 16>;
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
  if (p.routing.num_experts > kMaxExperts || p.routing.top_k > 32)
    return ffi::Error::InvalidArgument("routing: more than 512 experts or top_k > 32");
  const int blocks = static_cast<int>((p.num_tokens + kWarpsPerBlock - 1) / kWarpsPerBlock);
  const int E = p.routing.num_experts;
  RoutingFn kernel = nullptr;
  switch (p.routing.method) {
    case RoutingMethod::kDEFAULT: kernel = RoutingKernelFor<RoutingMethod::kDEFAULT>(E); break;
    case RoutingMethod::kRENORMALIZE: kernel = RoutingKernelFor<RoutingMethod::kRENORMALIZE>(E); break;
    case RoutingMethod::kTOPK: kernel = RoutingKernelFor<RoutingMethod::kTOPK>(E); break;
    case RoutingMethod::kLLAMA4: kernel = RoutingKernelFor<RoutingMethod::kLLAMA4>(E); break;
    case RoutingMethod::kDEEPSEEK_V3: kernel = RoutingKernelFor<RoutingMethod::kDEEPSEEK_V3>(E); break;
  }
  if (kernel == nullptr) return ffi::Error::InvalidArgument("routing: unknown routing method");
  kernel<<<blocks, 32 * kWarpsPerBlock, 0, stream>>>(b.logits, b.routing_bias, p.routing,
                                                     static_cast<int>(p.num_tokens), b.topk_ids, b.topk_weights);
  return LaunchError("routing kernel");
}

}  // namespace jax_moe::cuda
