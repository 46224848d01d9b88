// CUDA error handling for the handlers: every runtime call and every kernel
// launch is checked, and a failure becomes an ffi::Error that reaches Python
// as an exception (never an abort, never a silently wrong result).
#pragma once

#include <cuda_runtime.h>

#include <string>

#include "xla/ffi/api/ffi.h"

namespace jax_moe::cuda {

inline ::xla::ffi::Error CudaError(cudaError_t status, const char* what) {
  if (status == cudaSuccess) return ::xla::ffi::Error::Success();
  return ::xla::ffi::Error::Internal(std::string(what) + ": " + cudaGetErrorName(status) + " (" +
                                     cudaGetErrorString(status) + ")");
}

// After a <<<>>> launch: configuration errors surface here, at the launch.
inline ::xla::ffi::Error LaunchError(const char* kernel) {
  return CudaError(cudaGetLastError(), kernel);
}

}  // namespace jax_moe::cuda

// Returns from the enclosing function with the error if `expr` fails.
#define JM_RETURN_IF_ERROR(expr)                    \
  do {                                              \
    ::xla::ffi::Error jm_err_ = (expr);             \
    if (jm_err_.failure()) return jm_err_;          \
  } while (0)
