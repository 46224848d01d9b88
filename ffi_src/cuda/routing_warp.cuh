// Routing of one token by one warp, in registers (the body of the routing
// kernel, and of the fused routing + permute kernel of permute.cu).
// Lane l holds experts l*S .. l*S + S - 1 (S = the power of two >= E / 32,
// a template argument), scores them, and the warp takes the top k with
// cuda/warp_select.cuh (a sort per lane, then k rounds of two redux.sync)
// under the CPU's tie rule (higher score, then smaller index). Lane k < K
// then computes the weight of the k-th choice with the CPU's own expressions
// in the CPU's order (routing_math.h), so CPU and GPU pick the same experts
// and agree on weights to the last few ulps.
//
// Why this shape (ncu, H200, T = 1, NOTES v8): the kernel it replaced scanned
// scores in shared memory per round, let one lane per group scan its group
// and lane 0 compute all k weights; DeepSeek-V3 took 20.3 us for one token,
// 4884 instructions of one warp at ~8 cycles each (a dependency chain; only
// 18 KB read). This one: 4.4 us, 1127 instructions.
#pragma once

#include <cmath>
#include <cstdint>

#include "common/enums.h"
#include "common/routing_math.h"
#include "cuda/warp_select.cuh"

namespace jax_moe::cuda {
namespace routing_detail {

constexpr unsigned kFull = 0xffffffffu;

__device__ __forceinline__ float WarpSum(float v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(kFull, v, off);
  return v;
}
__device__ __forceinline__ float WarpMax(float v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v = fmaxf(v, __shfl_xor_sync(kFull, v, off));
  return v;
}

// The sum of the two best scores of group g (one lane per group, scores in
// shared memory), with the CPU's TopKList(2) semantics. The generic path of
// MaskToBestGroups, for groups that do not fall on lane boundaries.
__device__ __forceinline__ float GroupScore(const float* score, int g, int per_group) {
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
__device__ __forceinline__ void MaskToBestGroups(float (&sc)[S], const RoutingParams& rp, int E, int base,
                                                 int lane, float* s_score) {
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

}  // namespace routing_detail

// Routes the token whose E logits are `x`: writes its K ids and weights to
// ids[0..K) and weights[0..K). Every lane of the warp calls it; `s_score`
// holds 32 * S floats of this warp's shared memory (used only by the generic
// DeepSeek-V3 grouping path). `ids` / `weights` may be read back by the block
// after a barrier (no __restrict__ / read-only path on them).
template <RoutingMethod kMethod, int S>
__device__ __forceinline__ void RouteTokenWarp(const float* __restrict__ x, const float* __restrict__ bias,
                                               const RoutingParams& rp, int lane, float* s_score, int32_t* ids,
                                               float* weights) {
  using namespace routing_detail;
  const int E = rp.num_experts, K = rp.top_k, base = lane * S;
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
    if (rp.n_group > 1) MaskToBestGroups<S>(sc, rp, E, base, lane, s_score);
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
    ids[lane] = idx;
    weights[lane] = w;
  }
}

// Pick::Get<kMethod, S>() for a routing method and expert count: S is the
// smallest power of two with 32 * S >= E. The one place that knows the
// warp's limits: nullptr for an unknown method, E > 32 * 16 (= kMaxExperts)
// or top_k > 32 (one choice per lane); the launchers turn that into an error.
template <typename Pick, RoutingMethod kMethod>
auto PickRoutingSlots(int num_experts) {
  if (num_experts <= 32) return Pick::template Get<kMethod, 1>();
  if (num_experts <= 64) return Pick::template Get<kMethod, 2>();
  if (num_experts <= 128) return Pick::template Get<kMethod, 4>();
  if (num_experts <= 256) return Pick::template Get<kMethod, 8>();
  return Pick::template Get<kMethod, 16>();
}
constexpr const char* kUnsupportedRouting = "routing: unknown method, more than 512 experts or top_k > 32";
template <typename Pick>
auto PickRouting(const RoutingParams& rp) -> decltype(Pick::template Get<RoutingMethod::kDEFAULT, 1>()) {
  static_assert(kMaxExperts <= 32 * 16 && kMaxTopK <= 32, "the routing warp's limits");
  if (rp.num_experts > kMaxExperts || rp.top_k > 32) return nullptr;
  switch (rp.method) {
#define JAX_MOE_PICK_ROUTING(name, value) \
  case RoutingMethod::k##name:             \
    return PickRoutingSlots<Pick, RoutingMethod::k##name>(rp.num_experts);
    JAX_MOE_ROUTING_METHODS(JAX_MOE_PICK_ROUTING)
#undef JAX_MOE_PICK_ROUTING
  }
  return nullptr;
}

}  // namespace jax_moe::cuda
