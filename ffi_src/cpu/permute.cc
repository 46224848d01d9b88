// Stage 2 (CPU): group the (token, k) pairs by local expert. Each expert's
// rows are numbered in token order and padded to the token tile, exactly the
// layout the CUDA permutation kernel builds.
#include <algorithm>
#include <vector>

#include "cpu/stages.h"

namespace jax_moe::cpu {

void Permute(const MoeProblem& p, const int32_t* ids, const Workspace& ws) {
  const int64_t El = p.num_local_experts, TK = p.expanded(), tile = ws.layout.tile;
  auto local = [&](int64_t ex) { return ids[ex] - p.local_expert_offset; };
  std::fill(ws.counts, ws.counts + El, 0);
  for (int64_t ex = 0; ex < TK; ++ex) {
    const int64_t e = local(ex);
    if (e >= 0 && e < El) ++ws.counts[e];
  }
  ws.offsets[0] = 0;
  int32_t tiles = 0;
  for (int64_t e = 0; e < El; ++e) {
    const int32_t t = (ws.counts[e] + tile - 1) / tile;
    std::fill(ws.tile_expert + tiles, ws.tile_expert + tiles + t, static_cast<int32_t>(e));
    tiles += t;
    ws.offsets[e + 1] = tiles * static_cast<int32_t>(tile);
  }
  *ws.num_tiles = tiles;
  std::fill(ws.permuted_to_expanded, ws.permuted_to_expanded + ws.layout.max_rows, -1);
  std::vector<int32_t> cursor(ws.offsets, ws.offsets + El);
  for (int64_t ex = 0; ex < TK; ++ex) {
    const int64_t e = local(ex);
    if (e >= 0 && e < El) {
      const int32_t row = cursor[e]++;
      ws.expanded_to_permuted[ex] = row;
      ws.permuted_to_expanded[row] = static_cast<int32_t>(ex);
    } else {
      ws.expanded_to_permuted[ex] = -1;
    }
  }
}

}  // namespace jax_moe::cpu
