// The static description of one MoE call, its validation, and the layout of
// the workspace buffer. Everything here depends on shapes and attributes only
// (never on device data), which is what makes the handlers graph-safe: grids
// and buffers are sized for the worst case the static shapes allow.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "common/activation_math.h"
#include "common/enums.h"
#include "common/routing_math.h"

namespace jax_moe {

struct MoeProblem {
  int64_t num_tokens = 0;         // T
  int64_t hidden_size = 0;        // H
  int64_t intermediate_size = 0;  // I
  int64_t num_local_experts = 0;  // E_local (leading dim of the weights)
  int64_t local_expert_offset = 0;
  Format weight_format = Format::kNVFP4;
  Format act_format = Format::kBF16;
  RoutingParams routing{};
  ActivationParams activation{};
  bool routed = false;  // precomputed top-k ids/weights instead of logits
  bool has_routing_bias = false;
  bool has_b13 = false;
  bool has_b2 = false;
  bool per_expert_w13_global = false;  // NVFP4 global scale shape [E_local] vs []
  bool per_expert_w2_global = false;
  bool routing_weight_on_input = false;
  bool do_finalize = true;
  int64_t tactic = 0;         // the tactic table row GEMM1 (and routing's tile) runs
  int64_t gemm2_tactic = -1;  // the row GEMM2 runs (-1: the same as `tactic`); same token tile

  int64_t expanded() const { return num_tokens * routing.top_k; }
  // Elements of the `out` result: [T, H] finalized, or [T, K, H] per-(token, k) rows.
  int64_t output_elements() const { return (do_finalize ? num_tokens : expanded()) * hidden_size; }
};

// Returns "" when the problem is supported, else a message naming what is not.
std::string ValidateProblem(const MoeProblem& p);

// Upper bound on the number of token tiles: every active expert can leave one
// partial tile, all other rows fill whole tiles.
inline int64_t MaxTiles(const MoeProblem& p, int64_t tile) {
  const int64_t tk = p.expanded();
  const int64_t m = tk < p.num_local_experts ? tk : p.num_local_experts;
  return m + (tk - m) / tile;
}

// Byte offsets of the regions inside the workspace output. The same layout is
// used by the CPU and CUDA handlers.
struct WorkspaceLayout {
  int64_t tile = 0;
  int64_t max_tiles = 0;
  int64_t max_rows = 0;          // max_tiles * tile (permuted, padded rows)
  int64_t h_row_bytes = 0;       // bytes of one row of h (bf16, e4m3 or packed e2m1)
  int64_t h_scale_row_bytes = 0; // bytes of one row of h's block scales
  size_t counts = 0;             // int32 [E_local]         tokens per local expert
  size_t offsets = 0;            // int32 [E_local + 1]     padded prefix sum (rows)
  size_t expanded_to_permuted = 0;  // int32 [T*K]        -1 for non-local experts
  size_t permuted_to_expanded = 0;  // int32 [max_rows]   -1 for padding rows
  size_t tile_expert = 0;        // int32 [max_tiles]       local expert of each tile
  size_t num_tiles = 0;          // int32 [1]               live tiles (device-side count)
  size_t h = 0;                  // [max_rows, h_row_bytes]
  size_t h_scale = 0;            // [max_rows, h_scale_row_bytes]
  size_t y = 0;                  // bf16 [max_rows, H] (only when do_finalize)
  // Split-K across blocks (staged CUDA family; split_k_limit > 1 only): fp32
  // partial sums of every split of a block's tile, and one ticket per
  // (feature block, tile) that the last split to finish takes. Both GEMMs
  // share them (one after the other); the tickets are zeroed by the permute
  // stage of every call and left zero by the GEMMs.
  int64_t split_k_limit = 1;
  int64_t num_tickets = 0;
  size_t partials = 0;           // fp32 [split_k_limit, max_rows, SplitKPartialColumns(p)]
  size_t tickets = 0;            // int32 [num_tickets]
  size_t total = 0;
};

// Columns of one split's partial sums per token row: GEMM1's gate + up
// features or GEMM2's outputs, each rounded up to whole feature blocks (of at
// most 256 features).
inline int64_t SplitKPartialColumns(const MoeProblem& p) {
  const int64_t g1 = 2 * (p.intermediate_size + 256), g2 = p.hidden_size + 256;
  return g1 > g2 ? g1 : g2;
}

// `split_k_limit`: the most K splits a GEMM of the call's tactic may launch
// (SplitKLimit in tactics.h; 1 = none).
WorkspaceLayout PlanWorkspace(const MoeProblem& p, int64_t tile, int64_t split_k_limit = 1);

}  // namespace jax_moe
