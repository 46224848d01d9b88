// Stage 1 (CPU): routing, using the per-token math shared with the GPU.
#include <algorithm>

#include "common/routing_math.h"
#include "cpu/parallel.h"
#include "cpu/stages.h"

namespace jax_moe::cpu {

void Route(const MoeProblem& p, const MoeBuffers& b) {
  const int64_t K = p.routing.top_k;
  if (p.routed) {
    std::copy(b.in_ids, b.in_ids + p.expanded(), b.topk_ids);
    std::copy(b.in_weights, b.in_weights + p.expanded(), b.topk_weights);
    return;
  }
  const int64_t E = p.routing.num_experts;
  ParallelFor(p.num_tokens, [&](int64_t t) {
    RouteToken(b.logits + t * E, b.routing_bias, p.routing, b.topk_ids + t * K,
               b.topk_weights + t * K);
  });
}

}  // namespace jax_moe::cpu
