// Scalar encoders/decoders for the number formats of DESIGN.md section 3.
//
// Shared by the CPU handlers and the CUDA kernels (JM_HD), so the exact
// rounding rules live in one place. These are the reference definitions; the
// GPU GEMM inner loops use faster bit tricks that must agree with them.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "common/host_device.h"

namespace jax_moe {

JM_HD uint32_t FloatBits(float x) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(x);
#else
  uint32_t u;
  std::memcpy(&u, &x, sizeof(u));
  return u;
#endif
}

JM_HD float BitsToFloat(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float x;
  std::memcpy(&x, &u, sizeof(x));
  return x;
#endif
}

// Exact 2^e for e in [-149, 127].
JM_HD float Pow2(int e) { return ldexpf(1.0f, e); }

// ---- bf16 -----------------------------------------------------------------

// fp32 -> bf16 bits, round to nearest even (NaN stays NaN).
JM_HD uint16_t Bf16Bits(float x) {
  uint32_t u = FloatBits(x);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}
JM_HD float Bf16ToFloat(uint16_t b) { return BitsToFloat(static_cast<uint32_t>(b) << 16); }
JM_HD float RoundBf16(float x) { return Bf16ToFloat(Bf16Bits(x)); }

// ---- e2m1 (FP4) -----------------------------------------------------------

// Code -> value. Bit 3 is the sign; magnitudes 0, .5, 1, 1.5, 2, 3, 4, 6.
JM_HD float E2m1ToFloat(uint8_t code) {
  const int e = (code >> 1) & 3, m = code & 1;
  const float mag = e == 0 ? 0.5f * m : (1.0f + 0.5f * m) * Pow2(e - 1);
  return (code & 8) ? -mag : mag;
}

// Value -> code: round to nearest, ties to the even code, saturate at 6; the
// sign bit follows signbit(x) so -0.0 and tiny negatives give code 8. NaN
// saturates to +-6 (Hopper has no e2m1 NaN to carry it).
JM_HD uint8_t FloatToE2m1(float x) {
  const uint8_t sign = (FloatBits(x) >> 28) & 8;
  const float a = fabsf(x);
  if (a != a) return sign | 7;
  const uint8_t mag = (a > 0.25f) + (a >= 0.75f) + (a > 1.25f) + (a >= 1.75f) + (a > 2.5f) +
                      (a >= 3.5f) + (a > 5.0f);
  return sign | mag;
}

// ---- e4m3 (float8_e4m3fn) -------------------------------------------------

JM_HD float E4m3ToFloat(uint8_t code) {
  const int e = (code >> 3) & 15, m = code & 7;
  if (e == 15 && m == 7) return NAN;
  const float mag = e == 0 ? m * Pow2(-9) : (1.0f + m * 0.125f) * Pow2(e - 7);
  return (code & 0x80) ? -mag : mag;
}

// Round to nearest even, saturating to +-448 (the `satfinite` conversion).
JM_HD uint8_t FloatToE4m3(float x) {
  const uint8_t sign = (FloatBits(x) >> 24) & 0x80;
  const float a = fabsf(x);
  if (a != a) return 0x7f;
  if (a >= 448.0f) return sign | 0x7e;
  if (a < Pow2(-6)) {  // subnormal: multiples of 2^-9 (code 8 is the first normal)
    return sign | static_cast<uint8_t>(rintf(a * Pow2(9)));
  }
  int e;
  const float m = frexpf(a, &e) * 2.0f;  // a = m * 2^(e-1), m in [1, 2)
  e -= 1;
  int q = static_cast<int>(rintf((m - 1.0f) * 8.0f));
  if (q == 8) {
    q = 0;
    e += 1;
  }
  const int code = ((e + 7) << 3) | q;
  return sign | static_cast<uint8_t>(code > 0x7e ? 0x7e : code);
}

// ---- ue8m0 (float8_e8m0fnu) ----------------------------------------------

// Byte b means 2^(b-127); 255 is NaN.
JM_HD float Ue8m0ToFloat(uint8_t b) {
  if (b == 255) return NAN;
  return b == 0 ? BitsToFloat(0x00400000u) : BitsToFloat(static_cast<uint32_t>(b) << 23);
}

// ceil(log2(r)) for finite r > 0, exact (frexp, never a float log2).
JM_HD int CeilLog2(float r) {
  int e;
  const float m = frexpf(r, &e);  // r = m * 2^e, m in [0.5, 1)
  return m == 0.5f ? e - 1 : e;
}

// Scale exponent of an MX block: 2^ceil(log2(amax / max_code)), clamped to the
// e8m0 range; amax == 0 gives the smallest scale (byte 0).
JM_HD uint8_t MxScaleByte(float amax, float max_code) {
  if (!(amax > 0.0f)) return 0;
  int e = CeilLog2(amax / max_code);
  e = e < -127 ? -127 : (e > 127 ? 127 : e);
  return static_cast<uint8_t>(e + 127);
}

// ---- block quantizers (used to re-quantize h before GEMM2) -----------------

// NVFP4 block of 16: writes 16 codes and returns the e4m3 scale byte.
JM_HD uint8_t QuantizeNvfp4Block(const float* x, float global_scale, uint8_t* codes) {
  float amax = 0.0f;
  for (int i = 0; i < 16; ++i) amax = fmaxf(amax, fabsf(x[i]));
  const uint8_t sf = FloatToE4m3((global_scale * amax) / 6.0f);
  const float sf_value = E4m3ToFloat(sf);
  const float r = sf_value == 0.0f ? 0.0f : global_scale / sf_value;
  for (int i = 0; i < 16; ++i) codes[i] = FloatToE2m1(x[i] * r);
  return sf;
}

// MXFP8 block of 32: codes are e4m3.
JM_HD uint8_t QuantizeMxfp8Block(const float* x, uint8_t* codes) {
  float amax = 0.0f;
  for (int i = 0; i < 32; ++i) amax = fmaxf(amax, fabsf(x[i]));
  const uint8_t sf = MxScaleByte(amax, 448.0f);
  const float inv = amax > 0.0f ? Pow2(127 - sf) : 0.0f;
  for (int i = 0; i < 32; ++i) codes[i] = FloatToE4m3(x[i] * inv);  // saturates at +-448
  return sf;
}

}  // namespace jax_moe
