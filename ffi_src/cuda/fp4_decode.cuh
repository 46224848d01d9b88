// Register-level conversions the GEMM inner loops use (sm_90). Each one is
// exact: e2m1 * e4m3 and e2m1 * 2^k products fit in bf16, so decoding and
// block-scaling in bf16 before the MMA loses nothing; only the NVFP4 global
// scale is left for the fp32 epilogue. fp_formats.h holds the scalar
// reference definitions these must agree with (tests compare the results).
#pragma once

#include <cstdint>

namespace jax_moe::cuda {

// 8 e2m1 codes (low nibble = element 0) -> 4 bf16x2 words, word i holding
// (element i, element i+4), each equal to value * 2^-126: the nibble's
// exponent and mantissa bits land on the low bits of the bf16 exponent and
// the top mantissa bit, so code 1 (0.5) becomes the bf16 subnormal 2^-127.
// Two integer ops per word; the 2^126 is restored by MulBf16x2 below.
__device__ __forceinline__ void DecodeE2m1x8(uint32_t codes, uint32_t (&out)[4]) {
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const uint32_t t = codes << (12 - 4 * i);  // nibble i -> bits 12..15, nibble i+4 -> 28..31
    out[i] = (t & 0x80008000u) | ((t >> 6) & 0x01c001c0u);
  }
}

// bf16x2 multiply, round to nearest (subnormals kept: no flush on bf16 ops).
__device__ __forceinline__ uint32_t MulBf16x2(uint32_t a, uint32_t b) {
  uint32_t d;
  asm("mul.rn.bf16x2 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(b));
  return d;
}

constexpr uint32_t kBf16x2Pow2_126 = 0x7e807e80u;  // (2^126, 2^126)

// e4m3 byte -> bf16 bits (exact; 0x7f/0xff -> NaN). The 7 magnitude bits go
// to the top of an fp32 mantissa/exponent (value * 2^-120, subnormal for
// e4m3 subnormals), one fp32 multiply restores the exponent.
__device__ __forceinline__ uint16_t E4m3ToBf16Bits(uint32_t b) {
  if ((b & 0x7fu) == 0x7fu) return 0x7fc0;
  const float mag = __uint_as_float((b & 0x7fu) << 20) * 0x1p120f;
  return static_cast<uint16_t>((__float_as_uint(mag) >> 16) | ((b & 0x80u) << 8));
}
__device__ __forceinline__ float E4m3ToF32(uint32_t b) {
  return __uint_as_float(static_cast<uint32_t>(E4m3ToBf16Bits(b)) << 16);
}

// ue8m0 byte -> bf16 bits of 2^(b-127) (exact; 0 is the subnormal 2^-127, 255 NaN).
__device__ __forceinline__ uint16_t Ue8m0ToBf16Bits(uint32_t b) {
  return b == 255u ? uint16_t{0x7fc0} : (b == 0u ? uint16_t{0x0040} : static_cast<uint16_t>(b << 7));
}
__device__ __forceinline__ float Ue8m0ToF32(uint32_t b) {
  return __uint_as_float(static_cast<uint32_t>(Ue8m0ToBf16Bits(b)) << 16);
}

// e2m1 nibble -> fp32 (used where throughput does not matter: staging).
__device__ __forceinline__ float E2m1ToF32(uint32_t c) {
  const uint32_t e = (c >> 1) & 3u, m = c & 1u;
  const float mag = e ? __uint_as_float(((e + 126u) << 23) | (m << 22)) : 0.5f * static_cast<float>(m);
  return (c & 8u) ? -mag : mag;
}

__device__ __forceinline__ uint32_t PackBf16x2(float lo, float hi) {
  uint32_t d;
  asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(d) : "f"(hi), "f"(lo));
  return d;
}

// D += A * B, m16n8k16, bf16 inputs, fp32 accumulators (row.col fragments).
__device__ __forceinline__ void MmaBf16(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2,
                                        uint32_t a3, uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

}  // namespace jax_moe::cuda
