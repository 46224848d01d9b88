// Dynamic shared memory above the 48 KB default for a kernel (the staged
// family's weight ring, the warp-specialised ring).
#pragma once

#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>

namespace jax_moe::cuda {

// Opting a kernel in to more than 48 KB of dynamic shared memory is an
// attribute of the kernel per device, set once per device and kernel (not a
// stream operation, so graph capture is unaffected).
template <auto kKernel>
cudaError_t EnsureDynamicSmem(int bytes) {
  static std::atomic<uint64_t> opted_in{0};
  int device = 0;
  if (const cudaError_t e = cudaGetDevice(&device); e != cudaSuccess) return e;
  const uint64_t bit = device < 64 ? (uint64_t{1} << device) : 0;
  if (bit != 0 && (opted_in.load(std::memory_order_acquire) & bit)) return cudaSuccess;
  if (const cudaError_t e = cudaFuncSetAttribute(kKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
      e != cudaSuccess)
    return e;
  opted_in.fetch_or(bit, std::memory_order_release);
  return cudaSuccess;
}

}  // namespace jax_moe::cuda
