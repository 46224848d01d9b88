// The FFI handler symbols this module exports, per platform.
#pragma once

#include "xla/ffi/api/ffi.h"

// CPU (always built): ffi_src/cpu/moe_handler.cc
XLA_FFI_DECLARE_HANDLER_SYMBOL(JaxMoeFp4MoeCpu);
XLA_FFI_DECLARE_HANDLER_SYMBOL(JaxMoeFp4MoeRoutedCpu);

#ifdef JAX_MOE_WITH_CUDA
// CUDA (built when a CUDA compiler is found): ffi_src/cuda/moe_handler.cu
XLA_FFI_DECLARE_HANDLER_SYMBOL(JaxMoeFp4MoeCuda);
XLA_FFI_DECLARE_HANDLER_SYMBOL(JaxMoeFp4MoeRoutedCuda);
// The finalize stage alone (benchmarks/tests): ffi_src/cuda/finalize_handler.cu
XLA_FFI_DECLARE_HANDLER_SYMBOL(JaxMoeFinalizeCuda);

#include <cstdint>

namespace jax_moe::cuda {
// Host-side counters of the CUDA handlers (no device data): how many times
// they ran, and how many of those ran while XLA was capturing the stream into
// a CUDA graph. Tests use them to prove the op really went through a graph.
struct HandlerStats {
  int64_t calls;
  int64_t captured_calls;
  int64_t split_k_launches;  // GEMM launches with K split across blocks
  int64_t max_k_splits;      // the most splits any of them used
  int64_t wgmma_rs_launches; // GEMM launches of the register-A wgmma kernel (not its fallback)
};
HandlerStats GetHandlerStats();
}  // namespace jax_moe::cuda
#endif
