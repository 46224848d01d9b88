// Stage 5 (CPU): the weighted top-k reduction, fp32 accumulation in k order
// (no atomics anywhere, so results are deterministic).
#include <algorithm>
#include <vector>

#include "common/fp_formats.h"
#include "cpu/parallel.h"
#include "cpu/stages.h"

namespace jax_moe::cpu {

void Finalize(const MoeProblem& p, const MoeBuffers& b, const Workspace& ws) {
  const int64_t H = p.hidden_size, K = p.routing.top_k;
  if (!p.do_finalize) {
    // Rows of experts that live elsewhere contribute nothing on this device.
    for (int64_t ex = 0; ex < p.expanded(); ++ex)
      if (ws.expanded_to_permuted[ex] < 0) std::fill(b.out + ex * H, b.out + (ex + 1) * H, 0);
    return;
  }
  ParallelFor(p.num_tokens, [&](int64_t t) {
    std::vector<float> acc(H, 0.0f);
    for (int64_t k = 0; k < K; ++k) {
      const int32_t row = ws.expanded_to_permuted[t * K + k];
      if (row < 0) continue;
      // With the routing weight applied on the input, the finalize weight is 1.
      const float w = p.routing_weight_on_input ? 1.0f : b.topk_weights[t * K + k];
      const uint16_t* y = ws.y + static_cast<int64_t>(row) * H;
      for (int64_t c = 0; c < H; ++c) acc[c] += w * Bf16ToFloat(y[c]);
    }
    for (int64_t c = 0; c < H; ++c) b.out[t * H + c] = Bf16Bits(acc[c]);
  });
}

}  // namespace jax_moe::cpu
