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
// The sign must move 6 bits further than the magnitude: one multiply of the
// isolated nibble pair by 2^a + 2^(a-6) places both copies at once (they do
// not overlap, so the sum is their OR; the multiply runs on the FMA pipe,
// not the integer ALU that the masks need), and a mask keeps the sign of
// one copy and the magnitude of the other. Pairs 2 and 3 start from the
// codes shifted down a byte, so every multiplier is a left shift.
__device__ __forceinline__ void DecodeE2m1x8(uint32_t codes, uint32_t (&out)[4]) {
  const uint32_t high = codes >> 8;  // nibbles 2, 3, 6, 7 -> positions of 0, 1, 4, 5
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const uint32_t x = i < 2 ? codes : high;
    const int s = 4 * (i & 1);  // nibble i's offset in x (and i + 4's, 16 bits up)
    const uint32_t pair = x & (0x000f000fu << s);
    out[i] = (pair * ((1u << (12 - s)) + (1u << (6 - s)))) & 0x81c081c0u;
  }
}

// Byte q of `word` (elements 2q and 2q + 1 in natural K order: the low nibble
// first) -> one bf16x2 word (element 2q, element 2q + 1), each equal to value
// * 2^-126 as in DecodeE2m1x8. `sel` = E2m1ByteSelector(q): one PRMT brings
// the byte's low nibble to bits 0..3 and (from word >> 4) its high nibble to
// bits 16..19, the pair form DecodeE2m1x8's multiply places in one step. The
// register-A wgmma family uses it: its token tile is copied into shared
// memory raw, so the weight fragments must follow the natural K order.
__device__ __forceinline__ uint32_t E2m1ByteSelector(int q) { return static_cast<uint32_t>(q) | ((4u + q) << 8); }
__device__ __forceinline__ uint32_t DecodeE2m1Byte(uint32_t word, uint32_t sel) {
  uint32_t x;
  asm("prmt.b32 %0, %1, %2, %3;" : "=r"(x) : "r"(word), "r"(word >> 4), "r"(sel));
  return ((x & 0x000f000fu) * ((1u << 12) + (1u << 6))) & 0x81c081c0u;
}

// The register-A prepared word (candidate layout, NOTES v15): one 32-bit word
// holds a lane's 8 codes of two k16 steps of one weight row, with each code's
// four bits placed so that its bf16x2 pair comes out of at most a shift, an
// isolating mask, one multiply and the bf16 mask 0x81c0 (sign to bit 15, e1
// e0 m to bits 8..6: the value * 2^-126, as DecodeE2m1x8). Bits of code
// (pair p, element e: 0 = low half, 1 = high half) for sign / e1 / e0 / m:
//   p = 0: 15 / 8 / 7 / 6        (+16 for e = 1)   w & M
//   p = 1: 12 / 5 / 4 / 3        (+16)             (w << 3) & M
//   p = 2: 14 / 2 / 1 / 0        (+16)             ((w & 0x40074007) * (2^6 + 2^1)) & M
//   p = 3: 13 / 11 / 10 / 9      (+16)             (((w >> 3) & 0x05c005c0) * (2^0 + 2^5)) & M
// Pairs 0 and 1 are the even step's fragment words, 2 and 3 the odd step's.
// The multiplies place the magnitude and the sign copies of both halves at
// once and their copies never overlap (no carries); every bit lands once.
// Per pair: 1.75 integer-ALU instructions and 0.75 multiplies on average,
// against DecodeE2m1Byte's 4 and 1 (SHF, PRMT, LOP3, IMAD, LOP3).
constexpr uint32_t kBf16x2E2m1Mask = 0x81c081c0u;
__device__ __forceinline__ void DecodePreparedEven(uint32_t w, uint32_t& p0, uint32_t& p1) {
  p0 = w & kBf16x2E2m1Mask;
  p1 = (w << 3) & kBf16x2E2m1Mask;
}
__device__ __forceinline__ void DecodePreparedOdd(uint32_t w, uint32_t& p2, uint32_t& p3) {
  p2 = ((w & 0x40074007u) * ((1u << 6) + (1u << 1))) & kBf16x2E2m1Mask;
  p3 = (((w >> 3) & 0x05c005c0u) * ((1u << 0) + (1u << 5))) & kBf16x2E2m1Mask;
}

// bf16x2 multiply, round to nearest (subnormals kept: no flush on bf16 ops).
__device__ __forceinline__ uint32_t MulBf16x2(uint32_t a, uint32_t b) {
  uint32_t d;
  asm("mul.rn.bf16x2 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(b));
  return d;
}

// a * (half h of s, broadcast to both halves). ptxas folds the broadcast
// into the HMUL2 operand (.H0_H0 / .H1_H1), so a scale pair costs nothing
// to unpack.
template <int kHalf>
__device__ __forceinline__ uint32_t MulBf16x2ByHalf(uint32_t a, uint32_t s) {
  uint32_t d;
  if constexpr (kHalf == 0)
    asm("{ .reg .b16 lo, hi; .reg .b32 b; mov.b32 {lo, hi}, %2; mov.b32 b, {lo, lo}; mul.rn.bf16x2 %0, %1, b; }"
        : "=r"(d) : "r"(a), "r"(s));
  else
    asm("{ .reg .b16 lo, hi; .reg .b32 b; mov.b32 {lo, hi}, %2; mov.b32 b, {hi, hi}; mul.rn.bf16x2 %0, %1, b; }"
        : "=r"(d) : "r"(a), "r"(s));
  return d;
}

// Byte permute (PRMT): selector nibble n picks output byte n from the 8
// bytes {b, a} (bits 0..2; a = bytes 0..3), bit 3 replicates the picked
// byte's sign bit over the output byte.
__device__ __forceinline__ uint32_t Prmt(uint32_t a, uint32_t b, uint32_t sel) {
  uint32_t d;
  asm("prmt.b32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(sel));
  return d;
}

constexpr uint32_t kBf16x2Pow2_126 = 0x7e807e80u;  // (2^126, 2^126)

// NVFP4 block scales enter the decode already multiplied by 2^119: the
// decoded e2m1 carries 2^-126 (DecodeE2m1x8), so one bf16 multiply gives
// value * scale * 2^-7, exact (at most 6 significant bits, >= 2^-17), and
// the fp32 epilogue multiplies by 2^7. 2^119 is the largest factor that
// keeps the largest e4m3 (448) finite in bf16.
constexpr int kNvfp4ScaleFold = 119;
constexpr float kNvfp4EpilogueGain = 0x1p7f;  // 2^(126 - kNvfp4ScaleFold)

// PRMT selector that turns the two NVFP4 scale bytes at byte offset `o`
// (0..2) of a word into (b0, sign(b0) x 8, b1, sign(b1) x 8).
__device__ __forceinline__ uint32_t Nvfp4ScaleSelector(uint32_t o) { return 0x9180u + 0x1111u * o; }

// Two e4m3 bytes, spread by Nvfp4ScaleSelector -> bf16x2 (s0 * 2^119,
// s1 * 2^119), exact. The 7 magnitude bits go to bf16 bits 4..10 (the value
// * 2^-120, subnormal for e4m3 subnormals), the replicated sign to bit 15;
// two multiplies restore 2^120 and add the fold. The e4m3 NaN (magnitude
// 0x7f) would decode to 480: its all-ones magnitude carries into bit 11,
// and 15x that carry sets exponent bits 11..14, making the pair NaN.
__device__ __forceinline__ uint32_t E4m3PairToFoldedBf16x2(uint32_t spread) {
  const uint32_t y = (spread << 4) & 0x87f087f0u;
  const uint32_t nan_carry = (y + 0x00100010u) & 0x08000800u;
  const uint32_t bits = nan_carry * 15u + y;
  return MulBf16x2(MulBf16x2(bits, 0x7b807b80u /* (2^120, 2^120) */), 0x7b007b00u /* (2^119, 2^119) */);
}

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
