// The mma.sync swap-AB grouped GEMM (KernelFamily::kCudaMmaSwapAB), used for
// both GEMM1 (with the gated activation and h re-quantization fused in its
// epilogue) and GEMM2.
//
// Work split: one block = one token tile of one expert (blockIdx.x, a row of
// the permuted layout) x (32 * WN) output features (blockIdx.y). Warps are
// arranged (TT / TW) along tokens x WN along features. Each warp owns 32
// features (GEMM1: their 32 gate rows and 32 up rows) and TW tokens.
//
// Swap-AB: the weights are the MMA's M side (the A operand, 16 rows per
// m-tile) and the tokens its N side (B operand, 8 per n-tile), so a tile of 8
// tokens is not mostly padding. Weights stream from global memory straight
// into registers with 16-byte loads and are decoded there (DecodeE2m1x8 +
// block scale in bf16); activations are decoded once per block into shared
// memory as bf16 (MXFP8 / NVFP4 activations are decoded here, in the A path,
// never by a separate pass).
//
// K order: an MMA sums over its 16 k slots in any order, as long as A and B
// agree. Lane q (= lane % 4) of a quad takes 32 consecutive K elements of a
// 128-wide K block (one 16-byte load of FP4), and the register pairs it
// feeds the MMA are (element i, element i+4) of each 8-element group, which
// is what DecodeE2m1x8 produces. Staging writes activations in that same
// order, so both operands agree without any shuffles in the inner loop.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "common/activation_math.h"
#include "common/enums.h"
#include "common/fp_formats.h"
#include "cuda/fp4_decode.cuh"

namespace jax_moe::cuda {

enum class GemmStage { kGemm1, kGemm2 };

struct GemmArgs {
  int k_dim;   // H (GEMM1) or I (GEMM2): the reduction
  int n_dim;   // I (GEMM1: gated features) or H (GEMM2): the output features
  int top_k;
  // A side: token rows. GEMM1 gathers hidden-state rows by token; GEMM2
  // reads the permuted rows of h in the workspace.
  bool gather_tokens;
  Format act_format;
  const uint8_t* a_data;
  const uint8_t* a_scale;
  int64_t a_row_bytes, a_scale_row_bytes;
  const float* a_global;  // NVFP4 activations: the encode scale (divided out); else null
  // Weights [El, rows_per_expert, k_dim] packed e2m1 + block scales.
  const uint8_t* w;
  const uint8_t* w_scale;
  int64_t w_rows_per_expert;
  const float* w_global;  // NVFP4: [El] or [1]; MXFP4: null
  bool w_global_per_expert;
  const float* bias;      // [El, rows_per_expert] fp32 or null
  // Tiles.
  const int32_t* permuted_to_expanded;
  const int32_t* tile_expert;
  const int32_t* num_tiles;
  const float* topk_weights;
  bool weight_on_input;
  ActivationParams activation;
  // GEMM1 output: h rows (permuted), in the activation format.
  uint8_t* h;
  uint8_t* h_scale;
  int64_t h_row_bytes, h_scale_row_bytes;
  const float* h_global;  // NVFP4 h: encode scale
  // GEMM2 output: bf16 rows, permuted (y) or by expanded index (per-(t,k) out).
  uint16_t* y;
  bool y_by_expanded;
};

namespace gemm_detail {

constexpr int kKBlock = 128;  // K elements covered by one quad's 4 x 32-element loads

// Shared-memory slot (16 bytes = 8 bf16) of the 8-element group `grp` of a
// staged chunk: group r of K block b belongs to lane q = r / 4, word j = r % 4.
__device__ __forceinline__ int StagedSlot(int grp) {
  const int b = grp >> 4, r = grp & 15;
  return b * 16 + (r & 3) * 4 + (r >> 2);
}

// 8 activation elements at K offset k of one source row -> 4 bf16x2 words
// (element i, element i+4), exact.
__device__ __forceinline__ uint4 LoadActivationGroup(const GemmArgs& a, int64_t src_row, int k) {
  uint4 out;
  switch (a.act_format) {
    case Format::kMXFP8: {
      const uint2 v = *reinterpret_cast<const uint2*>(a.a_data + src_row * a.a_row_bytes + k);
      const float s = Ue8m0ToF32(a.a_scale[src_row * a.a_scale_row_bytes + k / 32]);
      const uint32_t lo = v.x, hi = v.y;
      float x[8];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        x[i] = E4m3ToF32((lo >> (8 * i)) & 0xffu) * s;
        x[i + 4] = E4m3ToF32((hi >> (8 * i)) & 0xffu) * s;
      }
      out = make_uint4(PackBf16x2(x[0], x[4]), PackBf16x2(x[1], x[5]), PackBf16x2(x[2], x[6]),
                       PackBf16x2(x[3], x[7]));
      break;
    }
    case Format::kNVFP4: {
      const uint32_t v = *reinterpret_cast<const uint32_t*>(a.a_data + src_row * a.a_row_bytes + k / 2);
      const float s = E4m3ToF32(a.a_scale[src_row * a.a_scale_row_bytes + k / 16]);
      float x[8];
#pragma unroll
      for (int i = 0; i < 8; ++i) x[i] = E2m1ToF32((v >> (4 * i)) & 0xfu) * s;
      out = make_uint4(PackBf16x2(x[0], x[4]), PackBf16x2(x[1], x[5]), PackBf16x2(x[2], x[6]),
                       PackBf16x2(x[3], x[7]));
      break;
    }
    default: {  // bf16: reorder (x0..x7) into (x0,x4) (x1,x5) (x2,x6) (x3,x7)
      const uint4 v = *reinterpret_cast<const uint4*>(a.a_data + src_row * a.a_row_bytes + 2 * k);
      out = make_uint4(__byte_perm(v.x, v.z, 0x5410), __byte_perm(v.x, v.z, 0x7632),
                       __byte_perm(v.y, v.w, 0x5410), __byte_perm(v.y, v.w, 0x7632));
    }
  }
  return out;
}

// One weight row's share for a lane: 32 FP4 elements (16 bytes) + their scales
// as bf16x2 (NVFP4: two blocks of 16; MXFP4: one block of 32).
struct WeightQuad {
  uint4 codes;
  uint32_t scale[2];
};

template <Format WF>
__device__ __forceinline__ WeightQuad LoadWeightQuad(const uint8_t* row, const uint8_t* srow,
                                                     int k, int k_dim, bool aligned16) {
  WeightQuad w{make_uint4(0, 0, 0, 0), {0, 0}};
  const int valid = k_dim - k;  // multiple of 16
  if (valid <= 0) return w;
  const uint8_t* p = row + k / 2;
  if (valid >= 32 && aligned16) {
    w.codes = __ldg(reinterpret_cast<const uint4*>(p));
  } else {
    const uint2 lo = __ldg(reinterpret_cast<const uint2*>(p));
    w.codes.x = lo.x;
    w.codes.y = lo.y;
    if (valid >= 32) {
      const uint2 hi = __ldg(reinterpret_cast<const uint2*>(p + 8));
      w.codes.z = hi.x;
      w.codes.w = hi.y;
    }
  }
  if constexpr (WF == Format::kNVFP4) {
    const uint32_t s0 = E4m3ToBf16Bits(__ldg(srow + k / 16));
    const uint32_t s1 = valid >= 32 ? E4m3ToBf16Bits(__ldg(srow + k / 16 + 1)) : 0u;
    w.scale[0] = s0 | (s0 << 16);
    w.scale[1] = s1 | (s1 << 16);
  } else {
    const uint32_t s = Ue8m0ToBf16Bits(__ldg(srow + k / 32));
    w.scale[0] = w.scale[1] = s | (s << 16);
  }
  return w;
}

// Word j (elements 8j..8j+7 of the lane's 32) -> 4 scaled bf16x2 pairs.
__device__ __forceinline__ void DecodeWord(const WeightQuad& w, int j, uint32_t (&out)[4]) {
  const uint32_t codes = j == 0 ? w.codes.x : j == 1 ? w.codes.y : j == 2 ? w.codes.z : w.codes.w;
  DecodeE2m1x8(codes, out);
  const uint32_t s = w.scale[j >> 1];
#pragma unroll
  for (int i = 0; i < 4; ++i) out[i] = MulBf16x2(MulBf16x2(out[i], kBf16x2Pow2_126), s);
}

__device__ __forceinline__ float WarpMaxOverRows(float v) {
  // Lanes with the same q hold the same token columns: reduce over g.
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 4));
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 8));
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 16));
  return v;
}

}  // namespace gemm_detail

template <int TT, int TW, int WN, int KC, Format WF, GemmStage ST>
__global__ void __launch_bounds__(32 * (TT / TW) * WN)
    MmaSwapAbGemmKernel(const GemmArgs a) {
  using namespace gemm_detail;
  constexpr int kWarpsT = TT / TW, kNT = TW / 8;
  constexpr int kMT = ST == GemmStage::kGemm1 ? 4 : 2;  // GEMM1: 2 gate + 2 up m-tiles
  constexpr int kThreads = 32 * kWarpsT * WN;
  constexpr int kRowVec = KC / 8 + 4;  // 16-byte slots per staged row; +64 B keeps LDS.128 conflict-free
  static_assert(TT % TW == 0 && TW % 8 == 0 && KC % kKBlock == 0, "bad tactic");
  static_assert(TT * kRowVec * 16 + TT * 4 <= 48 * 1024, "staging must fit static shared memory");

  __shared__ uint4 s_act[TT * kRowVec];
  __shared__ int32_t s_expanded[TT];

  const int tile = blockIdx.x;
  if (tile >= *a.num_tiles) return;  // beyond the live tiles (device-side count)
  const int expert = a.tile_expert[tile];
  for (int i = threadIdx.x; i < TT; i += kThreads) s_expanded[i] = a.permuted_to_expanded[tile * TT + i];

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, q = lane % 4;
  const int wt = warp % kWarpsT, wn = warp / kWarpsT;
  const int feat0 = (blockIdx.y * WN + wn) * 32;
  const bool warp_active = feat0 < a.n_dim;

  // Weight rows of this lane: m-tile mt covers 16 rows; the lane reads rows g and g+8.
  const int64_t k_bytes = a.k_dim / 2;
  const int64_t scale_cols = a.k_dim / BlockSize(WF);
  const bool aligned16 = (k_bytes % 16) == 0;
  const uint8_t* wrow[kMT][2];
  const uint8_t* srow[kMT][2];
  bool mt_valid[kMT];
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
    const int sub = ST == GemmStage::kGemm1 ? (mt & 1) : mt;
    const int feature = feat0 + 16 * sub;
    mt_valid[mt] = feature < a.n_dim;
    const int64_t base = (ST == GemmStage::kGemm1 && mt >= 2) ? a.n_dim + feature : feature;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int64_t row = static_cast<int64_t>(expert) * a.w_rows_per_expert + base + g + 8 * r;
      wrow[mt][r] = a.w + row * k_bytes;
      srow[mt][r] = a.w_scale + row * scale_cols;
    }
  }

  float acc[kMT][kNT][4];
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
    for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[mt][nt][i] = 0.0f;

  for (int k0 = 0; k0 < a.k_dim; k0 += KC) {
    __syncthreads();  // the previous chunk is consumed; s_expanded is visible
    // Stage activations [TT tokens x KC] as bf16 in MMA order (zeros past K
    // and for padding rows, so no garbage can reach an accumulator).
    for (int it = threadIdx.x; it < TT * (KC / 8); it += kThreads) {
      const int row = it / (KC / 8), grp = it % (KC / 8), k = k0 + 8 * grp;
      const int ex = s_expanded[row];
      uint4 v = make_uint4(0, 0, 0, 0);
      if (ex >= 0 && k < a.k_dim) {
        const int64_t src = a.gather_tokens ? ex / a.top_k : static_cast<int64_t>(tile) * TT + row;
        v = LoadActivationGroup(a, src, k);
      }
      s_act[row * kRowVec + StagedSlot(grp)] = v;
    }
    __syncthreads();
    if (!warp_active) continue;
    const int kend = min(k0 + KC, a.k_dim);
    for (int kb = k0; kb < kend; kb += kKBlock) {
      const int k = kb + 32 * q;
      WeightQuad wq[kMT][2];
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
        for (int r = 0; r < 2; ++r)
          wq[mt][r] = mt_valid[mt] ? LoadWeightQuad<WF>(wrow[mt][r], srow[mt][r], k, a.k_dim, aligned16)
                                   : WeightQuad{make_uint4(0, 0, 0, 0), {0, 0}};
      const int slot0 = ((kb - k0) / kKBlock) * 16 + q;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        uint32_t af[kMT][2][4];
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
          for (int r = 0; r < 2; ++r) DecodeWord(wq[mt][r], j, af[mt][r]);
#pragma unroll
        for (int nt = 0; nt < kNT; ++nt) {
          const uint4 bv = s_act[(wt * TW + nt * 8 + g) * kRowVec + slot0 + 4 * j];
#pragma unroll
          for (int mt = 0; mt < kMT; ++mt) {
            if (!mt_valid[mt]) continue;
            MmaBf16(acc[mt][nt], af[mt][0][0], af[mt][1][0], af[mt][0][1], af[mt][1][1], bv.x, bv.y);
            MmaBf16(acc[mt][nt], af[mt][0][2], af[mt][1][2], af[mt][0][3], af[mt][1][3], bv.z, bv.w);
          }
        }
      }
    }
  }
  if (!warp_active) return;

  // ---- epilogue: fp32 scale (global scales), bias, activation, store ----
  float scale = 1.0f;
  if (a.a_global) scale /= a.a_global[0];
  if (WF == Format::kNVFP4) scale /= a.w_global[a.w_global_per_expert ? expert : 0];

  if constexpr (ST == GemmStage::kGemm2) {
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt) {
      if (!mt_valid[mt]) continue;
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int col = wt * TW + nt * 8 + 2 * q + (i & 1);
          const int feature = feat0 + 16 * mt + g + 8 * (i >> 1);
          const int ex = s_expanded[col];
          if (ex < 0) continue;
          float v = acc[mt][nt][i] * scale;
          if (a.bias) v += a.bias[static_cast<int64_t>(expert) * a.w_rows_per_expert + feature];
          const int64_t out_row = a.y_by_expanded ? ex : static_cast<int64_t>(tile) * TT + col;
          a.y[out_row * a.n_dim + feature] = Bf16Bits(v);
        }
    }
  } else {
    // hv[pair][nt][i]: features feat0 + 16*pair + g + 8*(i>>1), token col 2q + (i&1).
    float hv[2][kNT][4];
#pragma unroll
    for (int pair = 0; pair < 2; ++pair)
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int col = wt * TW + nt * 8 + 2 * q + (i & 1);
          const int feature = feat0 + 16 * pair + g + 8 * (i >> 1);
          const int ex = s_expanded[col];
          float gate = acc[pair][nt][i] * scale, up = acc[2 + pair][nt][i] * scale;
          if (a.weight_on_input && ex >= 0) {
            const float rw = a.topk_weights[ex];
            gate *= rw;
            up *= rw;
          }
          if (a.bias && mt_valid[pair]) {
            const int64_t b0 = static_cast<int64_t>(expert) * a.w_rows_per_expert;
            gate += a.bias[b0 + feature];
            up += a.bias[b0 + a.n_dim + feature];
          }
          hv[pair][nt][i] = mt_valid[pair] ? GatedActivation(gate, up, a.activation) : 0.0f;
        }
    switch (a.act_format) {
      case Format::kMXFP8: {
        // One block of 32 features = this warp's 32 features (I % 32 == 0).
#pragma unroll
        for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
          for (int c = 0; c < 2; ++c) {
            float amax = 0.0f;
#pragma unroll
            for (int pair = 0; pair < 2; ++pair)
#pragma unroll
              for (int half = 0; half < 2; ++half) amax = fmaxf(amax, fabsf(hv[pair][nt][2 * half + c]));
            amax = WarpMaxOverRows(amax);
            const int col = wt * TW + nt * 8 + 2 * q + c;
            const int ex = s_expanded[col];
            if (ex < 0) continue;
            const uint8_t sf = MxScaleByte(amax, 448.0f);
            const float inv = amax > 0.0f ? Pow2(127 - sf) : 0.0f;
            const int64_t row = static_cast<int64_t>(tile) * TT + col;
            uint8_t* dst = a.h + row * a.h_row_bytes;
#pragma unroll
            for (int pair = 0; pair < 2; ++pair)
#pragma unroll
              for (int half = 0; half < 2; ++half)
                dst[feat0 + 16 * pair + g + 8 * half] = FloatToE4m3(hv[pair][nt][2 * half + c] * inv);
            if (g == 0) a.h_scale[row * a.h_scale_row_bytes + feat0 / 32] = sf;
          }
        break;
      }
      case Format::kNVFP4: {
        // One block of 16 features = one m-tile; nibble pairs (g, g+1) meet via a shuffle.
        const float G = a.h_global[0];
#pragma unroll
        for (int pair = 0; pair < 2; ++pair)
#pragma unroll
          for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
            for (int c = 0; c < 2; ++c) {
              const float v0 = hv[pair][nt][c], v1 = hv[pair][nt][2 + c];
              const float amax = WarpMaxOverRows(fmaxf(fabsf(v0), fabsf(v1)));
              const uint8_t sf = FloatToE4m3((G * amax) / 6.0f);
              const float sv = E4m3ToFloat(sf);
              const float r = sv == 0.0f ? 0.0f : G / sv;
              const uint32_t c0 = FloatToE2m1(v0 * r), c1 = FloatToE2m1(v1 * r);
              const uint32_t p0 = __shfl_xor_sync(0xffffffffu, c0, 4);
              const uint32_t p1 = __shfl_xor_sync(0xffffffffu, c1, 4);
              const int col = wt * TW + nt * 8 + 2 * q + c;
              const int ex = s_expanded[col];
              if (ex < 0 || !mt_valid[pair] || (g & 1)) continue;
              const int64_t row = static_cast<int64_t>(tile) * TT + col;
              uint8_t* dst = a.h + row * a.h_row_bytes;
              const int f = feat0 + 16 * pair + g;
              dst[f / 2] = static_cast<uint8_t>(c0 | (p0 << 4));
              dst[(f + 8) / 2] = static_cast<uint8_t>(c1 | (p1 << 4));
              if (g == 0) a.h_scale[row * a.h_scale_row_bytes + (feat0 + 16 * pair) / 16] = sf;
            }
        break;
      }
      default: {
#pragma unroll
        for (int pair = 0; pair < 2; ++pair) {
          if (!mt_valid[pair]) continue;
#pragma unroll
          for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
            for (int i = 0; i < 4; ++i) {
              const int col = wt * TW + nt * 8 + 2 * q + (i & 1);
              const int ex = s_expanded[col];
              if (ex < 0) continue;
              const int feature = feat0 + 16 * pair + g + 8 * (i >> 1);
              auto* dst = reinterpret_cast<uint16_t*>(a.h + (static_cast<int64_t>(tile) * TT + col) * a.h_row_bytes);
              dst[feature] = Bf16Bits(hv[pair][nt][i]);
            }
        }
      }
    }
  }
}

// Grid: x = token tiles (worst case from static shapes), y = feature blocks.
template <int TT, int TW, int WN, int KC, Format WF, GemmStage ST>
cudaError_t LaunchMmaSwapAbGemm(const GemmArgs& a, int64_t max_tiles, cudaStream_t stream) {
  constexpr int kThreads = 32 * (TT / TW) * WN;
  const dim3 grid(static_cast<unsigned>(max_tiles), static_cast<unsigned>((a.n_dim + 32 * WN - 1) / (32 * WN)));
  MmaSwapAbGemmKernel<TT, TW, WN, KC, WF, ST><<<grid, kThreads, 0, stream>>>(a);
  return cudaGetLastError();
}

}  // namespace jax_moe::cuda
