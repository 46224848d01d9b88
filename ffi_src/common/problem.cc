#include "common/problem.h"

#include "common/str_cat.h"

namespace jax_moe {
namespace {

size_t AlignUp(size_t x, size_t a) { return (x + a - 1) / a * a; }

}  // namespace

std::string ValidateProblem(const MoeProblem& p) {
  std::string err;
  const auto& r = p.routing;
  const int64_t H = p.hidden_size, I = p.intermediate_size;
  if (p.num_tokens < 1) err += StrCat("num_tokens must be >= 1, got ", p.num_tokens, ". ");
  if (!IsFp4(p.weight_format))
    err += StrCat("weight_format must be NVFP4 or MXFP4, got ", static_cast<int64_t>(p.weight_format), ". ");
  const int wb = BlockSize(p.weight_format);
  if (wb && (H % wb || I % wb))
    err += StrCat("hidden_size (", H, ") and intermediate_size (", I, ") must be multiples of the weight block ", wb, ". ");
  const int ab = BlockSize(p.act_format);
  if (p.act_format == Format::kMXFP4) err += StrCat("act_format MXFP4 is not supported. ");
  if (ab && (H % ab || I % ab))
    err += StrCat("hidden_size (", H, ") and intermediate_size (", I, ") must be multiples of the activation block ", ab, ". ");
  if (r.num_experts < 1 || r.num_experts > kMaxExperts)
    err += StrCat("num_experts must be in [1, ", kMaxExperts, "], got ", r.num_experts, ". ");
  if (r.top_k < 1 || r.top_k > r.num_experts || r.top_k > kMaxTopK)
    err += StrCat("top_k must be in [1, min(num_experts, ", kMaxTopK, ")], got ", r.top_k, ". ");
  if (p.num_local_experts < 1 || p.local_expert_offset < 0 ||
      p.local_expert_offset + p.num_local_experts > r.num_experts)
    err += StrCat("local experts [", p.local_expert_offset, ", ", p.local_expert_offset + p.num_local_experts, ") must lie inside [0, ", r.num_experts, "). ");
  if (!p.routed) {
    if (r.method == RoutingMethod::kLLAMA4 && r.top_k != 1)
      err += StrCat("LLAMA4 routing needs top_k == 1, got ", r.top_k, ". ");
    if (r.method == RoutingMethod::kDEEPSEEK_V3) {
      if (r.top_k > kMaxTopKDeepSeek)
        err += StrCat("DEEPSEEK_V3 routing supports top_k <= ", kMaxTopKDeepSeek, ", got ", r.top_k, ". ");
      if (r.n_group > 1) {
        if (r.n_group > kMaxGroups || r.num_experts % r.n_group)
          err += StrCat("n_group (", r.n_group, ") must divide num_experts (", r.num_experts, ") and be <= ", kMaxGroups, ". ");
        else if (r.topk_group < 1 || r.topk_group > r.n_group ||
                 r.top_k > r.topk_group * (r.num_experts / r.n_group))
          err += StrCat("topk_group (", r.topk_group, ") must be in [1, n_group] and keep at least ", "top_k experts. ");
      }
    } else if (p.has_routing_bias) {
      err += StrCat("routing_bias is only used by DEEPSEEK_V3 routing. ");
    }
  }
  return err;
}

WorkspaceLayout PlanWorkspace(const MoeProblem& p, int64_t tile, int64_t split_k_limit) {
  WorkspaceLayout w;
  w.tile = tile;
  w.split_k_limit = split_k_limit > 1 ? split_k_limit : 1;
  w.max_tiles = MaxTiles(p, tile);
  w.max_rows = w.max_tiles * tile;
  const int64_t I = p.intermediate_size;
  switch (p.act_format) {
    case Format::kNVFP4:
      w.h_row_bytes = I / 2;
      w.h_scale_row_bytes = I / 16;
      break;
    case Format::kMXFP8:
      w.h_row_bytes = I;
      w.h_scale_row_bytes = I / 32;
      break;
    default:
      w.h_row_bytes = I * 2;
      w.h_scale_row_bytes = 0;
  }
  size_t at = 0;
  auto region = [&at](size_t bytes) {
    const size_t start = at;
    at = AlignUp(at + bytes, 256);  // keeps every region 16-byte-vector aligned
    return start;
  };
  const size_t i32 = sizeof(int32_t);
  w.counts = region(i32 * p.num_local_experts);
  w.offsets = region(i32 * (p.num_local_experts + 1));
  w.expanded_to_permuted = region(i32 * p.expanded());
  w.permuted_to_expanded = region(i32 * w.max_rows);
  w.tile_expert = region(i32 * w.max_tiles);
  w.num_tiles = region(i32);
  w.h = region(static_cast<size_t>(w.max_rows * w.h_row_bytes));
  w.h_scale = region(static_cast<size_t>(w.max_rows * w.h_scale_row_bytes));
  w.y = region(p.do_finalize ? static_cast<size_t>(w.max_rows * p.hidden_size * 2) : 0);
  if (w.split_k_limit > 1) {
    // One ticket per (tile, group of 32 features): enough for any feature block width.
    const int64_t widest = p.hidden_size > p.intermediate_size ? p.hidden_size : p.intermediate_size;
    w.num_tickets = w.max_tiles * ((widest + 31) / 32);
    w.partials = region(sizeof(float) * static_cast<size_t>(w.split_k_limit * w.max_rows * SplitKPartialColumns(p)));
    w.tickets = region(i32 * static_cast<size_t>(w.num_tickets));
  }
  w.total = at;
  return w;
}

}  // namespace jax_moe
