// Tactic id -> compiled GEMM instantiation. The table of function pointers is
// expanded from JAX_MOE_CUDA_TACTICS, JAX_MOE_CUDA_STREAM_TACTICS then
// JAX_MOE_CUDA_WGMMA_TACTICS, JAX_MOE_CUDA_WGMMA_WS_TACTICS,
// JAX_MOE_CUDA_WGMMA_RS_TACTICS, the
// same lists in the same order the tactic table is built from, so ids and
// kernels cannot drift apart.
#pragma once

#include <cstdlib>

#include "common/ffi_glue.h"
#include "common/str_cat.h"
#include "common/workspace.h"
#include "common/tactics.h"
#include "cuda/cuda_check.h"
#include "cuda/gemm_mma.cuh"
#include "cuda/gemm_stream.cuh"
#include "cuda/gemm_wgmma.cuh"
#include "cuda/gemm_wgmma_rs.cuh"
#include "cuda/gemm_wgmma_ws.cuh"

namespace jax_moe::cuda {

using GemmLaunchFn = cudaError_t (*)(const GemmArgs&, int64_t, cudaStream_t);

template <GemmStage ST>
ffi::Error DispatchGemm(const GemmArgs& args, Format weight_format, int64_t tactic_id,
                        int64_t max_tiles, cudaStream_t stream, const char* what) {
#define JAX_MOE_GEMM_ENTRY(name, tt, tw, wn, kc, ws, wk) &LaunchMmaSwapAbGemm<tt, tw, wn, kc, ws, wk, WF, ST>,
#define JAX_MOE_STREAM_ENTRY(name, tt, tw) &LaunchStreamGemm<tt, tw, WF, ST>,
#define JAX_MOE_WGMMA_ENTRY(name, tt, kc) &LaunchWgmmaGemm<tt, kc, WF, ST>,
#define JAX_MOE_WGMMA_WS_ENTRY(name, tt, stages, producers) &LaunchWgmmaWsGemm<tt, stages, producers, WF, ST>,
#define JAX_MOE_WGMMA_RS_ENTRY(name, tt, stages, persistent) &LaunchWgmmaRsGemm<tt, stages, persistent, WF, ST>,
  static constexpr GemmLaunchFn kNvfp4[] = {
#define WF Format::kNVFP4
      JAX_MOE_CUDA_TACTICS(JAX_MOE_GEMM_ENTRY) JAX_MOE_CUDA_STREAM_TACTICS(JAX_MOE_STREAM_ENTRY)
          JAX_MOE_CUDA_WGMMA_TACTICS(JAX_MOE_WGMMA_ENTRY) JAX_MOE_CUDA_WGMMA_WS_TACTICS(JAX_MOE_WGMMA_WS_ENTRY)
              JAX_MOE_CUDA_WGMMA_RS_TACTICS(JAX_MOE_WGMMA_RS_ENTRY)
#undef WF
  };
  static constexpr GemmLaunchFn kMxfp4[] = {
#define WF Format::kMXFP4
      JAX_MOE_CUDA_TACTICS(JAX_MOE_GEMM_ENTRY) JAX_MOE_CUDA_STREAM_TACTICS(JAX_MOE_STREAM_ENTRY)
          JAX_MOE_CUDA_WGMMA_TACTICS(JAX_MOE_WGMMA_ENTRY) JAX_MOE_CUDA_WGMMA_WS_TACTICS(JAX_MOE_WGMMA_WS_ENTRY)
              JAX_MOE_CUDA_WGMMA_RS_TACTICS(JAX_MOE_WGMMA_RS_ENTRY)
#undef WF
  };
#undef JAX_MOE_WGMMA_RS_ENTRY
#undef JAX_MOE_WGMMA_WS_ENTRY
#undef JAX_MOE_WGMMA_ENTRY
#undef JAX_MOE_STREAM_ENTRY
#undef JAX_MOE_GEMM_ENTRY
  constexpr int64_t kCount = sizeof(kNvfp4) / sizeof(kNvfp4[0]);
  const int64_t index = tactic_id - FirstCudaTactic();
  if (index < 0 || index >= kCount)
    return ffi::Error::InvalidArgument(StrCat(what, ": tactic ", tactic_id, " is not a CUDA tactic"));
  if (max_tiles <= 0) return ffi::Error::Success();
  const GemmLaunchFn fn = weight_format == Format::kNVFP4 ? kNvfp4[index] : kMxfp4[index];
  return CudaError(fn(args, max_tiles, stream), what);
}

// JAX_MOE_L2_PREFETCH=n: the staged family's L2 prefetch distance in K
// blocks (default 0: off). Measured on an H200 (benchmarks/NOTES.md v7):
// 8 and 2 blocks ahead both made the decode GEMMs 5-50% slower, so it is an
// experiment knob. Read per call, host-side, so one process can time both.
inline int L2PrefetchFromEnv() {
  const char* v = std::getenv("JAX_MOE_L2_PREFETCH");
  if (v == nullptr || v[0] == '\0') return 0;
  const int n = std::atoi(v);
  return n < 0 ? 0 : (n > 64 ? 64 : n);
}

// The fields both GEMMs share: tiles, routing weights, activation.
inline GemmArgs CommonGemmArgs(const MoeProblem& p, const MoeBuffers& b, const Workspace& ws) {
  GemmArgs a{};
  a.top_k = static_cast<int>(p.routing.top_k);
  a.act_format = p.act_format;
  a.permuted_to_expanded = ws.permuted_to_expanded;
  a.tile_expert = ws.tile_expert;
  a.num_tiles = ws.num_tiles;
  a.topk_weights = b.topk_weights;
  a.weight_on_input = p.routing_weight_on_input;
  a.activation = p.activation;
  a.split_k_limit = static_cast<int>(ws.layout.split_k_limit);
  a.partials = ws.partials;
  a.tickets = ws.tickets;
  a.l2_prefetch_kb = L2PrefetchFromEnv();
  a.act_prefetch = EnvFlag("JAX_MOE_ACT_PREFETCH", true);
  a.rs_mxfp8 = EnvFlag("JAX_MOE_RS_MXFP8", true);
  return a;
}

}  // namespace jax_moe::cuda
