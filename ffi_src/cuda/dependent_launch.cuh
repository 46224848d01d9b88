// Programmatic dependent launch (sm_90) between the pipeline's stages.
//
// Why: at decode sizes a stage runs a few microseconds, and between two
// kernels on one stream the GPU drains the first grid, flushes its memory and
// only then starts the next one's blocks. Launched as a programmatic
// dependent, the next stage's blocks become resident as soon as every block
// of the previous one has called AllowDependents (or exited), run what does
// not need the previous stage's results, and block in WaitForPredecessor
// until that grid has completed and its writes are visible.
//
// The contract every stage keeps (see each kernel):
//   * a kernel launched with LaunchDependent calls WaitForPredecessor before
//     it reads anything the previous kernel writes, or writes anything the
//     previous kernel reads;
//   * a kernel calls AllowDependents only after its own WaitForPredecessor,
//     so when a dependent starts, every grid before the previous one has
//     completed (GEMM2 reads permute's maps and streams its weights before
//     its wait: permute finished before GEMM1 passed its wait);
//   * the first stage (routing) launches normally: it must not overlap
//     whatever XLA ran before the custom call.
// Without the launch attribute (the default: JAX_MOE_DEPENDENT_LAUNCH unset,
// or a predecessor that is not a kernel) both device calls are no-ops and the stream
// serializes as usual. CUDA graphs capture the programmatic edges.
#pragma once

#include <cuda_runtime.h>

#include <utility>

#include "common/ffi_glue.h"

namespace jax_moe::cuda {

// JAX_MOE_DEPENDENT_LAUNCH=1 launches the stages after routing as
// programmatic dependents; off by default: on an H200 it was within +-4% of
// normal launches at T = 1-64 (better for Qwen3, worse for gpt-oss-120b,
// DeepSeek-V3 and Mixtral at T = 1; benchmarks/NOTES.md v7). Read per call,
// host-side, so one process can time both.
inline bool DependentLaunchEnabled() { return EnvFlag("JAX_MOE_DEPENDENT_LAUNCH", false); }

// Blocks until the previous grid on the stream has completed and its memory
// is visible (a no-op for a normal launch).
__device__ __forceinline__ void WaitForPredecessor() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}

// Lets the next grid on the stream (if launched as a dependent) start its
// blocks now; call after this kernel's own WaitForPredecessor.
__device__ __forceinline__ void AllowDependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}

// kernel<<<grid, block, smem, stream>>>(args...), as a programmatic dependent
// of the previous kernel on the stream when `dependent` and the environment
// allow it. Returns the launch's status.
template <typename... Params, typename... Args>
cudaError_t LaunchDependent(bool dependent, void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem,
                            cudaStream_t stream, Args&&... args) {
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  config.attrs = attr;
  config.numAttrs = dependent && DependentLaunchEnabled() ? 1 : 0;
  return cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...);
}

}  // namespace jax_moe::cuda
