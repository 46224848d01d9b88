// Asynchronous global -> shared copies (cp.async, sm_80+), the pieces the
// weight ring of the staged family (gemm_mma.cuh) uses: a copy of 4 or 16
// bytes that reads only `src_bytes` of them and zero-fills the rest, so a
// ragged K tail never reads past its row, and the per-thread group counters.
// The groups count per thread: a thread that reads back only what it copied
// itself needs no barrier, just WaitGroups.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace jax_moe::cuda {

// 16 bytes, bypassing L1 (weights are read once). `src` must be 16-byte
// aligned and readable for src_bytes (0..16) bytes.
// (The destination as a shared-window address, for kernels that keep
// addresses of a dynamic ring rather than pointers.)
__device__ __forceinline__ void CpAsync16Shared(uint32_t dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes) : "memory");
}
__device__ __forceinline__ void CpAsync16(void* dst, const void* src, int src_bytes) {
  CpAsync16Shared(static_cast<uint32_t>(__cvta_generic_to_shared(dst)), src, src_bytes);
}

// 4 bytes through L1 (block scales: neighbouring lanes read the same words).
// `src` must be 4-byte aligned and readable for src_bytes (0..4) bytes.
__device__ __forceinline__ void CpAsync4(void* dst, const void* src, int src_bytes) {
  const uint32_t d = static_cast<uint32_t>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(d), "l"(src), "r"(src_bytes) : "memory");
}

__device__ __forceinline__ void CpAsyncCommit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }

// Waits until at most `kPending` of this thread's committed groups are in flight.
template <int kPending>
__device__ __forceinline__ void CpAsyncWait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
}

// A hint: fetch the 128-byte line holding `p` into L2 (no register, no
// completion to wait for, never faults on a valid address). The staged
// family runs it some K blocks ahead of its loads so the DRAM requests of a
// warp's next blocks are in flight while it decodes (gemm_mma.cuh).
__device__ __forceinline__ void PrefetchL2(const void* p) {
  asm volatile("prefetch.global.L2 [%0];\n" ::"l"(p));
}

// Bulk shared -> global copies (cp.async.bulk, sm_90): one thread hands the
// copy of `bytes` (a multiple of 16; both addresses 16-byte aligned) to the
// TMA unit and goes on; its bulk groups count per thread like cp.async's.
// The register-A wgmma epilogue stages an item's output rows in shared
// memory and writes each with one of these.
__device__ __forceinline__ void BulkCopySharedToGlobal(void* dst, uint32_t src, uint32_t bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("cp.async.bulk.global.shared::cta.bulk_group [%0], [%1], %2;\n" ::"l"(dst), "r"(src), "r"(bytes)
               : "memory");
#endif
}
__device__ __forceinline__ void BulkCommit() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("cp.async.bulk.commit_group;\n" ::: "memory");
#endif
}
// Waits until at most `kPending` of this thread's bulk groups still read
// their shared-memory source (the buffer may then be written again).
template <int kPending>
__device__ __forceinline__ void BulkWaitRead() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("cp.async.bulk.wait_group.read %0;\n" ::"n"(kPending) : "memory");
#endif
}

// Waits until every bulk group of this thread has completed (before exit).
__device__ __forceinline__ void BulkWaitAll() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("cp.async.bulk.wait_group 0;\n" ::: "memory");
#endif
}

}  // namespace jax_moe::cuda
