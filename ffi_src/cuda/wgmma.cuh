// Hopper warpgroup MMA (wgmma.mma_async, sm_90a) building blocks for the
// register-sourced swap-AB GEMM (gemm_wgmma.cuh): the shared-memory matrix
// descriptor, the B-operand layout it describes, the fences and the
// m64nNk16 bf16 MMA with A (decoded weights) in registers.
//
// B layout ("K-major, no swizzle" in the PTX ISA's terms): the operand is
// built from core matrices of 8 rows (tokens) x 16 bytes (8 bf16 along K),
// each stored as 128 contiguous bytes. Core matrix (nc, kc) -- tokens
// 8nc..8nc+7, K slots 8kc..8kc+7 of a staged chunk -- sits at
//   kc * BLeadingBytes(N_total) + nc * 128.
// The descriptor's leading byte offset is the stride between K-adjacent core
// matrices (the two halves of one k16 step), its stride byte offset the one
// between N-adjacent ones (128 here).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace jax_moe::cuda::wgmma {

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define JAX_MOE_HAS_WGMMA 1
#else
#define JAX_MOE_HAS_WGMMA 0
#endif

// Bytes between K-adjacent core matrices for a staged tile of `rows` tokens:
// every token's core matrices of one K column are contiguous.
__host__ __device__ constexpr uint32_t BLeadingBytes(int rows) { return static_cast<uint32_t>(rows) * 16u; }
constexpr uint32_t kBStrideBytes = 128;  // N-adjacent core matrices

// Byte offset of K slots (2c, 2c+1) [c = 0..3] of token `n` in core-matrix
// column `kc`: the 4-byte word one lane's bf16x2 pair occupies.
__device__ __forceinline__ uint32_t BWordOffset(int rows, int n, int kc, int c) {
  return static_cast<uint32_t>(kc) * BLeadingBytes(rows) + static_cast<uint32_t>(n >> 3) * 128u +
         static_cast<uint32_t>(n & 7) * 16u + static_cast<uint32_t>(c) * 4u;
}

// Shared-memory matrix descriptor: start address, leading and stride byte
// offsets (all >> 4, 14 bits each), no swizzle (bits 62-63 = 0), base offset 0.
__device__ __forceinline__ uint64_t Descriptor(uint32_t smem_addr, uint32_t leading, uint32_t stride) {
  return static_cast<uint64_t>((smem_addr & 0x3ffffu) >> 4) |
         (static_cast<uint64_t>((leading >> 4) & 0x3fffu) << 16) |
         (static_cast<uint64_t>((stride >> 4) & 0x3fffu) << 32);
}

// The 128-byte-swizzled K-major layout (what CUTLASS calls SW128): each
// operand row holds 64 bf16 of K (128 bytes) and 8 rows form a 1024-byte
// atom in which row r's 16-byte chunk c sits at chunk c ^ r. Unlike the
// core-matrix layout above, the rows the tensor core fetches together land
// on different banks. Atoms must start 1024-byte aligned; a k16 step
// inside the atom moves the start address by 32 bytes (the hardware applies
// the XOR to the address bits), the stride between 8-row atoms is 1024 and
// the leading byte offset is unused (1 by convention).
__device__ __forceinline__ uint32_t Sw128Offset(int row, int chunk) {
  return static_cast<uint32_t>(row) * 128u + (static_cast<uint32_t>(chunk ^ (row & 7)) << 4);
}
__device__ __forceinline__ uint64_t DescriptorSw128(uint32_t smem_addr) {
  return static_cast<uint64_t>((smem_addr & 0x3ffffu) >> 4) | (uint64_t{1} << 16) |
         (static_cast<uint64_t>(1024u >> 4) << 32) | (uint64_t{1} << 62);
}

__device__ __forceinline__ uint32_t SmemAddress(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// Orders this thread's register writes (A fragments, accumulators) before
// the wgmma instructions that follow.
__device__ __forceinline__ void Fence() {
#if JAX_MOE_HAS_WGMMA
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void Commit() {
#if JAX_MOE_HAS_WGMMA
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}
template <int N>
__device__ __forceinline__ void Wait() {
#if JAX_MOE_HAS_WGMMA
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
#endif
}
// Generic-proxy shared-memory writes (st.shared) made visible to the async
// proxy that wgmma reads through; then a barrier publishes them.
__device__ __forceinline__ void FenceSharedForAsync() {
#if JAX_MOE_HAS_WGMMA
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}

// The accumulator operands of an m64n64 (32 registers) / m64n128 (64) MMA.
#define JAX_MOE_WG_ACC16(b)                                                                      \
  "%" #b "0,%" #b "1,%" #b "2,%" #b "3,%" #b "4,%" #b "5,%" #b "6,%" #b "7,%" #b "8,%" #b "9,"
#define JAX_MOE_WG_ACC32                                                                         \
  "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9," JAX_MOE_WG_ACC16(1) JAX_MOE_WG_ACC16(2) "%30,%31}, "
#define JAX_MOE_WG_ACC64                                                                         \
  "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9," JAX_MOE_WG_ACC16(1) JAX_MOE_WG_ACC16(2) JAX_MOE_WG_ACC16(3)    \
      JAX_MOE_WG_ACC16(4) JAX_MOE_WG_ACC16(5) "%60,%61,%62,%63}, "
// m64n256 (128 registers): operands 0 .. 127.
#define JAX_MOE_WG_ACC128                                                                        \
  "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9," JAX_MOE_WG_ACC16(1) JAX_MOE_WG_ACC16(2) JAX_MOE_WG_ACC16(3)    \
      JAX_MOE_WG_ACC16(4) JAX_MOE_WG_ACC16(5) JAX_MOE_WG_ACC16(6) JAX_MOE_WG_ACC16(7)              \
          JAX_MOE_WG_ACC16(8) JAX_MOE_WG_ACC16(9) JAX_MOE_WG_ACC16(10) JAX_MOE_WG_ACC16(11)        \
              "%120,%121,%122,%123,%124,%125,%126,%127}, "

// Accumulators as [N / 8][4] (n8 column group, register): two groups per macro.
#define JAX_MOE_WG_D8(c) "+f"(d[c][0]), "+f"(d[c][1]), "+f"(d[c][2]), "+f"(d[c][3]), \
                         "+f"(d[c + 1][0]), "+f"(d[c + 1][1]), "+f"(d[c + 1][2]), "+f"(d[c + 1][3])

// D[64 x N] += A[64 x 16] * B[16 x N] (scale-d = true: accumulate; the
// accumulators start at zero): A = this warp's 16 rows as the
// m16n8k16 A fragment (a0: row g, k 2q..2q+1; a1: row g+8; a2: row g,
// k 2q+8..; a3: row g+8, k 2q+8..), B from shared memory via `desc`.
// D fragment: for each n8 column group i, d[4i..4i+3] = (g, 8i+2q),
// (g, 8i+2q+1), (g+8, 8i+2q), (g+8, 8i+2q+1): the mma.sync accumulator order.
template <int kNT>
__device__ __forceinline__ void MmaRs64(float (&d)[kNT][4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                        uint64_t desc) {
#if JAX_MOE_HAS_WGMMA
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
      JAX_MOE_WG_ACC32
      "{%32,%33,%34,%35}, %36, p, 1, 1, 0;\n}\n"
      : JAX_MOE_WG_D8(0), JAX_MOE_WG_D8(2), JAX_MOE_WG_D8(4), JAX_MOE_WG_D8(6)
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "l"(desc));
#else
  (void)d, (void)a0, (void)a1, (void)a2, (void)a3, (void)desc;
  __trap();
#endif
}

template <int kNT>
__device__ __forceinline__ void MmaRs128(float (&d)[kNT][4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                         uint64_t desc) {
#if JAX_MOE_HAS_WGMMA
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
      JAX_MOE_WG_ACC64
      "{%64,%65,%66,%67}, %68, p, 1, 1, 0;\n}\n"
      : JAX_MOE_WG_D8(0), JAX_MOE_WG_D8(2), JAX_MOE_WG_D8(4), JAX_MOE_WG_D8(6),
        JAX_MOE_WG_D8(8), JAX_MOE_WG_D8(10), JAX_MOE_WG_D8(12), JAX_MOE_WG_D8(14)
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "l"(desc));
#else
  (void)d, (void)a0, (void)a1, (void)a2, (void)a3, (void)desc;
  __trap();
#endif
}

// The 256-token register-A tile's MMA (N = 256: each decoded A fragment
// feeds twice the tokens of m64n128, so the decode per multiply halves).
template <int kNT>
__device__ __forceinline__ void MmaRs256(float (&d)[kNT][4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                         uint64_t desc) {
#if JAX_MOE_HAS_WGMMA
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 "
      JAX_MOE_WG_ACC128
      "{%128,%129,%130,%131}, %132, p, 1, 1, 0;\n}\n"
      : JAX_MOE_WG_D8(0), JAX_MOE_WG_D8(2), JAX_MOE_WG_D8(4), JAX_MOE_WG_D8(6),
        JAX_MOE_WG_D8(8), JAX_MOE_WG_D8(10), JAX_MOE_WG_D8(12), JAX_MOE_WG_D8(14),
        JAX_MOE_WG_D8(16), JAX_MOE_WG_D8(18), JAX_MOE_WG_D8(20), JAX_MOE_WG_D8(22),
        JAX_MOE_WG_D8(24), JAX_MOE_WG_D8(26), JAX_MOE_WG_D8(28), JAX_MOE_WG_D8(30)
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "l"(desc));
#else
  (void)d, (void)a0, (void)a1, (void)a2, (void)a3, (void)desc;
  __trap();
#endif
}

// D[64 x N] += A[64 x 16] * B[16 x N] with both operands in shared memory
// (descriptors; both K-major, the core-matrix layout above): the
// warp-specialised family's MMA, where a producer warpgroup decodes the FP4
// weights once into shared memory for every consumer warpgroup.
__device__ __forceinline__ void MmaSs64(float (&d)[8][4], uint64_t desc_a, uint64_t desc_b) {
#if JAX_MOE_HAS_WGMMA
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
      JAX_MOE_WG_ACC32
      "%32, %33, p, 1, 1, 0, 0;\n}\n"
      : JAX_MOE_WG_D8(0), JAX_MOE_WG_D8(2), JAX_MOE_WG_D8(4), JAX_MOE_WG_D8(6)
      : "l"(desc_a), "l"(desc_b));
#else
  (void)d, (void)desc_a, (void)desc_b;
  __trap();
#endif
}

__device__ __forceinline__ void MmaSs128(float (&d)[16][4], uint64_t desc_a, uint64_t desc_b) {
#if JAX_MOE_HAS_WGMMA
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
      JAX_MOE_WG_ACC64
      "%64, %65, p, 1, 1, 0, 0;\n}\n"
      : JAX_MOE_WG_D8(0), JAX_MOE_WG_D8(2), JAX_MOE_WG_D8(4), JAX_MOE_WG_D8(6),
        JAX_MOE_WG_D8(8), JAX_MOE_WG_D8(10), JAX_MOE_WG_D8(12), JAX_MOE_WG_D8(14)
      : "l"(desc_a), "l"(desc_b));
#else
  (void)d, (void)desc_a, (void)desc_b;
  __trap();
#endif
}

#undef JAX_MOE_WG_D8
#undef JAX_MOE_WG_ACC128
#undef JAX_MOE_WG_ACC64
#undef JAX_MOE_WG_ACC32
#undef JAX_MOE_WG_ACC16

template <int N>
__device__ __forceinline__ void MmaSs(float (&d)[N / 8][4], uint64_t desc_a, uint64_t desc_b) {
  static_assert(N == 64 || N == 128, "wgmma N must be 64 or 128 here");
  if constexpr (N == 64) {
    MmaSs64(d, desc_a, desc_b);
  } else {
    MmaSs128(d, desc_a, desc_b);
  }
}

// Named barriers (bar.sync / bar.arrive with a thread count) for the
// producer/consumer hand-off of shared-memory stages: the side that waits
// syncs, the side that signals only arrives. id 0 is __syncthreads'.
__device__ __forceinline__ void BarrierSync(int id, int threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
__device__ __forceinline__ void BarrierArrive(int id, int threads) {
  asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

// setmaxnreg (sm_90a): a warpgroup gives registers back to the block's pool
// (kIncrease = false) or takes them (true), so warp-specialised roles with
// different needs share one register file. Every warp of the warpgroup must
// execute it; kRegs is a multiple of 8 in [24, 256].
template <bool kIncrease, int kRegs>
__device__ __forceinline__ void SetMaxRegisters() {
  static_assert(kRegs % 8 == 0 && kRegs >= 24 && kRegs <= 256, "setmaxnreg: multiple of 8 in [24, 256]");
#if JAX_MOE_HAS_WGMMA
  if constexpr (kIncrease) {
    asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(kRegs));
  } else {
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(kRegs));
  }
#endif
}

// D's first N / 8 column groups: an accumulator array of kNT >= N / 8 groups
// (the 256-token tile multiplies only its first half when the second is padding).
template <int N, int kNT>
__device__ __forceinline__ void MmaRs(float (&d)[kNT][4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                      uint64_t desc) {
  static_assert(N == 64 || N == 128 || N == 256, "wgmma N must be 64, 128 or 256 here");
  static_assert(kNT >= N / 8, "the accumulators hold N / 8 column groups");
  if constexpr (N == 64) {
    MmaRs64(d, a0, a1, a2, a3, desc);
  } else if constexpr (N == 128) {
    MmaRs128(d, a0, a1, a2, a3, desc);
  } else {
    MmaRs256(d, a0, a1, a2, a3, desc);
  }
}

}  // namespace jax_moe::cuda::wgmma
