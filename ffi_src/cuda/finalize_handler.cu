// A standalone FFI target for the finalize stage alone (benchmarks and tests
// only: `jax_moe._finalize.finalize`), so the vectorized and scalar kernels
// can be timed and checked on their own bytes.
//   operands: y bf16 [R, H], expanded_to_permuted s32 [T*K], weights f32 [T, K]
//   result:   out bf16 [T, H]
//   attrs:    kind (0 auto, 1 vectorized, 2 scalar), weight_on_input (bool)
#include <cuda_runtime.h>

#include "common/ffi_glue.h"
#include "common/str_cat.h"
#include "common/workspace.h"
#include "cuda/stages.cuh"
#include "handlers.h"

namespace jax_moe::cuda {
namespace {

ffi::Error FinalizeOnly(cudaStream_t stream, ffi::AnyBuffer y, ffi::Buffer<ffi::S32> e2p,
                        ffi::Buffer<ffi::F32> weights, ffi::Result<ffi::AnyBuffer> out, int64_t kind,
                        bool weight_on_input) {
  const auto wd = weights.dimensions(), yd = y.dimensions();
  if (wd.size() != 2 || yd.size() != 2 || y.element_type() != ffi::DataType::BF16)
    return ffi::Error::InvalidArgument("finalize: weights [T, K] f32 and y [R, H] bf16 expected");
  const int64_t T = wd[0], K = wd[1], H = yd[1];
  if (e2p.element_count() != static_cast<size_t>(T * K) || K > kMaxTopK || H % 8 || kind < 0 || kind > 2)
    return ffi::Error::InvalidArgument(
        StrCat("finalize: bad shapes or kind (T=", T, ", K=", K, ", H=", H, ", kind=", kind, ")"));
  MoeProblem p;
  p.num_tokens = T;
  p.hidden_size = H;
  p.routing.top_k = static_cast<int>(K);
  p.routing_weight_on_input = weight_on_input;
  MoeBuffers b{};
  b.topk_weights = weights.typed_data();
  b.out = static_cast<uint16_t*>(out->untyped_data());
  Workspace ws{};
  ws.y = static_cast<uint16_t*>(y.untyped_data());
  ws.expanded_to_permuted = e2p.typed_data();
  return LaunchFinalizeKernel(p, b, ws, static_cast<FinalizeKernel>(kind), stream);
}

}  // namespace
}  // namespace jax_moe::cuda

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxMoeFinalizeCuda, jax_moe::cuda::FinalizeOnly,
                              xla::ffi::Ffi::Bind()
                                  .Ctx<xla::ffi::PlatformStream<cudaStream_t>>()
                                  .Arg<xla::ffi::AnyBuffer>()
                                  .Arg<xla::ffi::Buffer<xla::ffi::S32>>()
                                  .Arg<xla::ffi::Buffer<xla::ffi::F32>>()
                                  .Ret<xla::ffi::AnyBuffer>()
                                  .Attr<int64_t>("kind")
                                  .Attr<bool>("weight_on_input"),
                              {xla::ffi::Traits::kCmdBufferCompatible});
