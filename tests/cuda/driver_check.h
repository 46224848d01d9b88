// CHECK_CUDA for the standalone CUDA drivers (tests/cuda/sanitizer_harness.cu,
// benchmarks/stage_timer.cu): print the failing call and exit. Handlers use
// ffi_src/cuda/cuda_check.h instead (errors become FFI errors, never exits).
#pragma once

#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>

#define CHECK_CUDA(x)                                                                      \
  do {                                                                                     \
    cudaError_t e_ = (x);                                                                  \
    if (e_ != cudaSuccess) {                                                               \
      std::printf("CUDA error %s at %s:%d\n", cudaGetErrorString(e_), __FILE__, __LINE__); \
      std::exit(2);                                                                        \
    }                                                                                      \
  } while (0)
