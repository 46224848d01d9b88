// Typed views of the workspace regions (see WorkspaceLayout in problem.h),
// shared by the CPU and CUDA handlers: both read and write the same layout.
#pragma once

#include <cstdint>

#include "common/problem.h"

namespace jax_moe {

struct Workspace {
  WorkspaceLayout layout;
  int32_t* counts;
  int32_t* offsets;
  int32_t* expanded_to_permuted;
  int32_t* permuted_to_expanded;
  int32_t* tile_expert;
  int32_t* num_tiles;
  uint8_t* h;
  uint8_t* h_scale;
  uint16_t* y;  // bf16 bits
  float* partials;   // split-K partial sums (null without split-K)
  int32_t* tickets;  // split-K tickets (null without split-K)
};

// Pointer arithmetic only (never dereferences): valid for host or device memory.
inline Workspace ViewWorkspace(const WorkspaceLayout& l, uint8_t* base) {
  auto i32 = [base](size_t off) { return reinterpret_cast<int32_t*>(base + off); };
  return Workspace{l,
                   i32(l.counts),
                   i32(l.offsets),
                   i32(l.expanded_to_permuted),
                   i32(l.permuted_to_expanded),
                   i32(l.tile_expert),
                   i32(l.num_tiles),
                   base + l.h,
                   base + l.h_scale,
                   reinterpret_cast<uint16_t*>(base + l.y),
                   l.split_k_limit > 1 ? reinterpret_cast<float*>(base + l.partials) : nullptr,
                   l.split_k_limit > 1 ? i32(l.tickets) : nullptr};
}

}  // namespace jax_moe
