// The five stages of the CUDA pipeline and their launchers, one file each:
//   routing.cu -> permute.cu (or both in one kernel) -> gemm1.cu (+ activation) -> gemm2.cu -> finalize.cu
// moe_handler.cu runs them in order on the FFI stream. Every grid is sized
// from static shapes (the worst case); blocks past the live work read the
// device-side tile count and exit, so nothing ever waits on the host.
#pragma once

#include <cuda_runtime.h>

#include "common/ffi_glue.h"
#include "common/problem.h"
#include "common/tactics.h"
#include "common/workspace.h"

namespace jax_moe::cuda {

// routing.cu: top-k ids and fp32 weights per token (one warp per token), or
// a copy of the caller's ids/weights for the routed op.
ffi::Error LaunchRouting(const MoeProblem& p, const MoeBuffers& b, cudaStream_t stream);

// permute.cu: counts, tile-padded offsets, expanded<->permuted maps,
// tile -> expert map and the live tile count, in one single-block kernel.
ffi::Error LaunchPermute(const MoeProblem& p, const int32_t* topk_ids, const Workspace& ws,
                         cudaStream_t stream);

// permute.cu: stages 1 and 2; one fused kernel when RoutingFusesPermute(p)
// (T <= 8, not routed, unless JAX_MOE_FUSED_ROUTING=0), else LaunchRouting
// then LaunchPermute. On by default since the H200 timed it (NOTES v9: the
// pipeline 1.3-3.3 us faster at T = 1, bit-identical outputs); read per
// call, host-side.
inline bool FusedRoutingEnabled() { return EnvFlag("JAX_MOE_FUSED_ROUTING", true); }
bool RoutingFusesPermute(const MoeProblem& p);
ffi::Error LaunchRoutingAndPermute(const MoeProblem& p, const MoeBuffers& b, const Workspace& ws,
                                   cudaStream_t stream);

// gemm1.cu: h = act(x @ W13^T (+ b13)), re-quantized to the activation format.
ffi::Error LaunchGemm1(const MoeProblem& p, const MoeBuffers& b, const Workspace& ws,
                       int64_t tactic_id, cudaStream_t stream);

// gemm2.cu: y = h @ W2^T (+ b2), into ws.y or straight to the per-(token,k) output.
ffi::Error LaunchGemm2(const MoeProblem& p, const MoeBuffers& b, const Workspace& ws,
                       int64_t tactic_id, cudaStream_t stream);

// finalize.cu: out[t] = sum_k w[t,k] * y[perm(t,k)] (fp32), or zero rows of
// non-local experts in the per-(token,k) output when the caller finalizes.
ffi::Error LaunchFinalize(const MoeProblem& p, const MoeBuffers& b, const Workspace& ws,
                          cudaStream_t stream);

// The finalize kernels on their own (the benchmarks time them separately).
enum class FinalizeKernel { kAuto, kVectorized, kScalar };
ffi::Error LaunchFinalizeKernel(const MoeProblem& p, const MoeBuffers& b, const Workspace& ws,
                                FinalizeKernel kind, cudaStream_t stream);

}  // namespace jax_moe::cuda
