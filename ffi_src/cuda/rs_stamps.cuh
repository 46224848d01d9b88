// Per-item clock stamps of the register-A wgmma kernels, for the stage
// timer's diagnostic build only (-DJAX_MOE_RS_STAMPS; the extension and the
// default drivers never define it, so their kernels carry none of this).
//
// Why: fitting the GEMM times as items x (stages x s + X) left 11-40 us a
// work item unexplained (NOTES v12). These stamps split an item's time into
// the wait for its first stage, the main loop (and its waits on FULL), the
// epilogue, and the producer's waits on EMPTY, per block and item, with the
// SM's clock (clock64: every stamp of one item comes from one SM).
#pragma once

#include <cstdint>

namespace jax_moe::cuda {

struct RsStamp {
  long long start;        // consumer 0, warp 0, lane 0: the item begins
  long long first_full;   // its first stage is there
  long long main_end;     // its last MMA has retired
  long long epi_end;      // its epilogue has issued every store
  long long full_wait;    // cycles spent in FULL waits during the item
  long long empty_wait;   // producer thread 0: cycles spent in EMPTY waits for the item's stages
  int stages;
};

constexpr int kRsStampBlocks = 264;
constexpr int kRsStampItems = 512;

#ifdef JAX_MOE_RS_STAMPS
// One table per translation unit (gemm1.cu: GEMM1's kernels, gemm2.cu:
// GEMM2's), read back through RsStampsGemm1 / RsStampsGemm2.
static __device__ RsStamp g_rs_stamps[kRsStampBlocks][kRsStampItems];

__device__ __forceinline__ RsStamp* RsStampSlot(int item) {
  return blockIdx.x < kRsStampBlocks && item < kRsStampItems ? &g_rs_stamps[blockIdx.x][item] : nullptr;
}

// Copies this unit's table to `host` (kRsStampBlocks x kRsStampItems) and zeroes it.
inline cudaError_t RsStampsFetchAndClear(RsStamp* host) {
  if (host != nullptr) {
    if (const cudaError_t e = cudaMemcpyFromSymbol(host, g_rs_stamps, sizeof(g_rs_stamps)); e != cudaSuccess) return e;
  }
  void* dev = nullptr;
  if (const cudaError_t e = cudaGetSymbolAddress(&dev, g_rs_stamps); e != cudaSuccess) return e;
  return cudaMemset(dev, 0, sizeof(g_rs_stamps));
}
#define JAX_MOE_RS_STAMP(...) __VA_ARGS__
#else
#define JAX_MOE_RS_STAMP(...)
#endif

// Defined in gemm1.cu / gemm2.cu when JAX_MOE_RS_STAMPS is set.
cudaError_t RsStampsGemm1(RsStamp* host);
cudaError_t RsStampsGemm2(RsStamp* host);

}  // namespace jax_moe::cuda
