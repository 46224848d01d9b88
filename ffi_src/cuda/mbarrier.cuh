// Shared-memory mbarriers (sm_80+ arrive / sm_90 try_wait), for the
// register-A wgmma family's stage hand-off: unlike a named barrier
// (bar.sync / bar.arrive), a wait on an mbarrier phase does not need the
// other waiters, so the two consumer warpgroups stop pacing each other at
// every stage (NOTES v14: 15% of GEMM1's warp samples sat on the per-stage
// named barrier, with the producer rarely late).
#pragma once

#include <cstdint>

namespace jax_moe::cuda::mbar {

// One thread initialises; a __syncthreads() must follow before any use.
__device__ __forceinline__ void Init(uint32_t addr, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(addr), "r"(count) : "memory");
}

// Arrives on the current phase (release at CTA scope: this thread's earlier
// shared-memory writes are visible to the threads its completion releases).
__device__ __forceinline__ void Arrive(uint32_t addr) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(addr) : "memory");
}

// Waits until the phase of parity `parity` has completed (acquire at CTA scope).
__device__ __forceinline__ void Wait(uint32_t addr, uint32_t parity) {
  asm volatile(
      "{\n"
      ".reg .pred done;\n"
      "WAIT_%=:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra WAIT_%=;\n"
      "}\n" ::"r"(addr),
      "r"(parity)
      : "memory");
}

}  // namespace jax_moe::cuda::mbar
