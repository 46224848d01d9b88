// Per-token routing math (DESIGN.md section 4), shared by the CPU handler and
// the CUDA routing kernel so both select the same experts with the same
// tie rule: higher score first, and on equal scores the smaller index wins.
#pragma once

#include <cmath>
#include <cstdint>

#include "common/enums.h"
#include "common/host_device.h"

namespace jax_moe {

struct RoutingParams {
  RoutingMethod method;
  int num_experts;  // E (global)
  int top_k;
  int n_group;      // DeepSeek-V3 groups (<= 1: no grouping)
  int topk_group;   // groups kept
  float routed_scaling_factor;
};

// A descending list of at most kMaxTopK (score, index) pairs. Entries arrive in
// increasing index order, so inserting after every entry with a score >= the
// new one keeps the smaller index first among equal scores.
struct TopKList {
  float score[kMaxTopK];
  int32_t index[kMaxTopK];
  int size = 0;
  int capacity;

  JM_HD explicit TopKList(int k) : capacity(k) {}

  JM_HD void Offer(float s, int32_t idx) {
    if (size == capacity && !(s > score[size - 1])) return;
    int pos = size < capacity ? size : capacity - 1;
    while (pos > 0 && s > score[pos - 1]) {
      score[pos] = score[pos - 1];
      index[pos] = index[pos - 1];
      --pos;
    }
    score[pos] = s;
    index[pos] = idx;
    if (size < capacity) ++size;
  }
};

JM_HD float Sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

// The routing weights of one token's chosen experts, from their selection
// scores (descending, as selected) and the raw logits `x`. Shared by the CPU
// and CUDA routing so both compute the same expressions in the same k order.
JM_HD void RoutingWeights(const RoutingParams& p, const float* x, const float* score,
                          const int32_t* index, float* weights) {
  const int K = p.top_k;
  switch (p.method) {
    case RoutingMethod::kDEFAULT:  // the softmax probabilities themselves
    case RoutingMethod::kTOPK:     // the raw logits
      for (int k = 0; k < K; ++k) weights[k] = score[k];
      return;
    case RoutingMethod::kRENORMALIZE: {  // softmax over the k selected logits
      float s = 0.0f;
      for (int k = 0; k < K; ++k) s += expf(score[k] - score[0]);
      for (int k = 0; k < K; ++k) weights[k] = expf(score[k] - score[0]) / s;
      return;
    }
    case RoutingMethod::kLLAMA4:
      for (int k = 0; k < K; ++k) weights[k] = Sigmoid(score[k]);
      return;
    case RoutingMethod::kDEEPSEEK_V3: {  // unbiased sigmoid, normalized and scaled
      float s = 0.0f;
      for (int k = 0; k < K; ++k) s += Sigmoid(x[index[k]]);
      for (int k = 0; k < K; ++k)
        weights[k] = Sigmoid(x[index[k]]) * p.routed_scaling_factor / (s + 1e-20f);
      return;
    }
  }
}

// Routes one token. `x` holds the E logits (fp32), `bias` the DeepSeek-V3
// correction bias or nullptr. Writes top_k ids and fp32 weights.
JM_HD void RouteToken(const float* x, const float* bias, const RoutingParams& p, int32_t* ids,
                      float* weights) {
  const int E = p.num_experts, K = p.top_k;
  TopKList top(K);
  switch (p.method) {
    case RoutingMethod::kDEFAULT: {
      float m = -INFINITY, s = 0.0f;
      for (int e = 0; e < E; ++e) m = fmaxf(m, x[e]);
      for (int e = 0; e < E; ++e) s += expf(x[e] - m);
      for (int e = 0; e < E; ++e) top.Offer(expf(x[e] - m) / s, e);
      break;
    }
    case RoutingMethod::kRENORMALIZE:
    case RoutingMethod::kTOPK:
    case RoutingMethod::kLLAMA4:
      for (int e = 0; e < E; ++e) top.Offer(x[e], e);
      break;
    case RoutingMethod::kDEEPSEEK_V3: {
      // Selection uses the biased score b = sigmoid(x) + bias; weights use the
      // unbiased sigmoid. Groups outside the kept ones are masked to -inf.
      bool kept[kMaxGroups];
      const int groups = p.n_group > 1 ? p.n_group : 1;
      const int per_group = E / groups;
      if (groups > 1) {
        TopKList best_groups(p.topk_group);
        for (int g = 0; g < groups; ++g) {
          TopKList two(per_group >= 2 ? 2 : 1);
          for (int j = 0; j < per_group; ++j) {
            const int e = g * per_group + j;
            two.Offer(Sigmoid(x[e]) + (bias ? bias[e] : 0.0f), e);
          }
          best_groups.Offer(two.size == 2 ? two.score[0] + two.score[1] : two.score[0], g);
          kept[g] = false;
        }
        for (int i = 0; i < best_groups.size; ++i) kept[best_groups.index[i]] = true;
      } else {
        kept[0] = true;
      }
      for (int e = 0; e < E; ++e) {
        const float b = Sigmoid(x[e]) + (bias ? bias[e] : 0.0f);
        top.Offer(kept[e / per_group] ? b : -INFINITY, e);
      }
      break;
    }
  }
  RoutingWeights(p, x, top.score, top.index, weights);
  for (int k = 0; k < K; ++k) ids[k] = top.index[k];
}

}  // namespace jax_moe
