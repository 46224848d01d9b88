// The CUDA handlers: decode and check the call, then run the five stages on
// the FFI stream. Graph-safe by construction: no host synchronisation, no
// host reads of device data, no allocation (scratch is the workspace
// output), grids from static shapes; hence declared command-buffer
// compatible (tests/test_ops_gpu.py replays the op inside XLA's CUDA graph).
#include <cuda_runtime.h>

#include <atomic>
#include <string>

#include "common/ffi_glue.h"
#include "common/str_cat.h"
#include "common/tactics.h"
#include "common/workspace.h"
#include "cuda/cuda_check.h"
#include "cuda/launch_counters.h"
#include "cuda/stages.cuh"
#include "handlers.h"

namespace jax_moe::cuda {
namespace {

std::atomic<int64_t> g_calls{0};
std::atomic<int64_t> g_captured_calls{0};

// Counts the call, and whether XLA is recording this stream into a CUDA graph
// (a host query of the stream's state: allowed during capture).
void CountCall(cudaStream_t stream) {
  g_calls.fetch_add(1, std::memory_order_relaxed);
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  if (cudaStreamIsCapturing(stream, &status) == cudaSuccess && status == cudaStreamCaptureStatusActive)
    g_captured_calls.fetch_add(1, std::memory_order_relaxed);
}

// Test mode (JAX_MOE_POISON_OUTPUTS=1): fill every output and the workspace
// with 0xff bytes (NaN for bf16/f32, -1 ids) so an element no stage writes
// shows up as NaN. Stream-ordered memsets: still capturable.
ffi::Error Poison(const MoeProblem& p, const MoeBuffers& b, const WorkspaceLayout& layout,
                  cudaStream_t stream) {
  JM_RETURN_IF_ERROR(
      CudaError(cudaMemsetAsync(b.out, 0xff, p.output_elements() * 2, stream), "poison out"));
  JM_RETURN_IF_ERROR(CudaError(cudaMemsetAsync(b.topk_ids, 0xff, p.expanded() * 4, stream), "poison ids"));
  JM_RETURN_IF_ERROR(
      CudaError(cudaMemsetAsync(b.topk_weights, 0xff, p.expanded() * 4, stream), "poison weights"));
  return CudaError(cudaMemsetAsync(b.workspace, 0xff, layout.total, stream), "poison workspace");
}

template <bool kRouted>
ffi::Error MoeCuda(cudaStream_t stream, ffi::RemainingArgs args, ffi::RemainingRets rets,
                   MoeAttrs attrs) {
  const char* target = kRouted ? "jax_moe_fp4_moe_routed (cuda)" : "jax_moe_fp4_moe (cuda)";
  return GuardHandler(target, [&]() -> ffi::Error {
    PreparedCall call;
    ffi::Error prepared = PrepareCall(target, kRouted, Platform::kCuda, args, rets, attrs, &call);
    if (prepared.failure()) return prepared;
    const MoeProblem& p = call.problem;
    const MoeBuffers& b = call.buffers;
    const Workspace ws = ViewWorkspace(call.layout, b.workspace);
    CountCall(stream);
    if (PoisonOutputs()) JM_RETURN_IF_ERROR(Poison(p, b, call.layout, stream));
    JM_RETURN_IF_ERROR(LaunchRoutingAndPermute(p, b, ws, stream));
    JM_RETURN_IF_ERROR(LaunchGemm1(p, b, ws, p.tactic, stream));
    JM_RETURN_IF_ERROR(LaunchGemm2(p, b, ws, Gemm2Tactic(p), stream));
    return LaunchFinalize(p, b, ws, stream);
  });
}

}  // namespace

HandlerStats GetHandlerStats() {
  return HandlerStats{g_calls.load(), g_captured_calls.load(), g_split_k_launches.load(), g_max_k_splits.load(),
                      g_wgmma_rs_launches.load()};
}

}  // namespace jax_moe::cuda

namespace jax_moe::cuda {
namespace {
// Both CUDA targets: stream, the 14 operands and 4 results, the attributes.
auto MoeBinding() {
  return xla::ffi::Ffi::Bind()
      .Ctx<xla::ffi::PlatformStream<cudaStream_t>>()
      .RemainingArgs()
      .RemainingRets()
      .Attrs<MoeAttrs>();
}
}  // namespace
}  // namespace jax_moe::cuda

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxMoeFp4MoeCuda, jax_moe::cuda::MoeCuda<false>, jax_moe::cuda::MoeBinding(),
                              {xla::ffi::Traits::kCmdBufferCompatible});
XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxMoeFp4MoeRoutedCuda, jax_moe::cuda::MoeCuda<true>,
                              jax_moe::cuda::MoeBinding(), {xla::ffi::Traits::kCmdBufferCompatible});
