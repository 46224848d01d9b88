// What the grouped-GEMM kernel families share: the argument block, the
// operand loaders and decoders (FP4 weights in registers, activations in the
// MMA's K order) and the fused epilogue (global scales, bias, gated
// activation, h re-quantization / y store).
//
// K order: an MMA sums over its 16 k slots in any order, as long as A and B
// agree. Lane q (= lane % 4) of a quad takes 32 consecutive K elements of a
// 128-wide K block (one 16-byte load of FP4), and the register pairs it
// feeds the MMA are (element i, element i+4) of each 8-element group, which
// is what DecodeE2m1x8 produces. Activations are delivered in that same
// order (DecodeActGroup), so both operands agree without shuffles.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "common/activation_math.h"
#include "common/enums.h"
#include "common/fp_formats.h"
#include "cuda/fp4_decode.cuh"
#include "cuda/wgmma.cuh"

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
  // Split-K across blocks (cuda/split_k.cuh): at most split_k_limit splits
  // (1: never), their fp32 partials and the zeroed per-block tickets.
  int split_k_limit;
  float* partials;
  int32_t* tickets;
  // Staged family: L2 prefetch distance in K blocks beyond the loads in
  // flight (0, the default: none; JAX_MOE_L2_PREFETCH, cuda/gemm_mma.cuh).
  int l2_prefetch_kb;
  // Staged family: bf16 activations of the next K chunk copied with
  // cp.async during this one (JAX_MOE_ACT_PREFETCH=0: off; the launcher
  // also clears it when rows are not 16-byte aligned).
  bool act_prefetch;
  // Register-A wgmma family: MXFP8 activations on its own path (the
  // default; JAX_MOE_RS_MXFP8=0: its warp-specialised fallback runs them).
  bool rs_mxfp8;
};

namespace gemm_detail {

// The m-tiles (16 weight rows each) behind one warp's 32 output features:
// GEMM1 runs 2 gate + 2 up m-tiles (the up row of feature f sits n_dim rows
// after its gate row), GEMM2 2 m-tiles of output features. Every GEMM
// family and GemmEpilogue share this layout.
template <GemmStage ST>
constexpr int WarpMTiles() {
  return ST == GemmStage::kGemm1 ? 4 : 2;
}
// First output feature of m-tile mt for a warp whose features start at feat0.
template <GemmStage ST>
__device__ __forceinline__ int MTileFeature(int feat0, int mt) {
  return feat0 + 16 * (ST == GemmStage::kGemm1 ? (mt & 1) : mt);
}
// The expert-local weight row of `feature` in m-tile mt.
template <GemmStage ST>
__device__ __forceinline__ int MTileWeightRow(int feature, int mt, int n_dim) {
  return (ST == GemmStage::kGemm1 && mt >= 2) ? n_dim + feature : feature;
}

// Tokens per warpgroup (the wgmma N) of the wgmma families for a token tile
// of TT rows: GEMM1's 4 m-tiles keep N at 64 (128 accumulators per thread).
template <int TT, GemmStage ST>
constexpr int WgmmaN() {
  return ST == GemmStage::kGemm1 ? 64 : (TT >= 128 ? 128 : 64);
}

// The two m16n8k16 MMAs of one decoded weight word: af[r] = the 4 bf16x2
// pairs (DecodeWord order) of the lane's rows g (r = 0) and g + 8 (r = 1),
// bv = the token group in the same K order.
__device__ __forceinline__ void MmaDecodedWord(float (&d)[4], const uint32_t (&af)[2][4], const uint4& bv) {
  MmaBf16(d, af[0][0], af[1][0], af[0][1], af[1][1], bv.x, bv.y);
  MmaBf16(d, af[0][2], af[1][2], af[0][3], af[1][3], bv.z, bv.w);
}

constexpr int kKBlock = 128;  // K elements covered by one quad's 4 x 32-element loads

// Shared-memory slot (16 bytes = 8 bf16) of the 8-element group `grp` of a
// staged chunk: group r of K block b belongs to lane q = r / 4, word j = r % 4.
__device__ __forceinline__ int StagedSlot(int grp) {
  const int b = grp >> 4, r = grp & 15;
  return b * 16 + (r & 3) * 4 + (r >> 2);
}

// The raw bytes of 8 activation elements at K offset k of one source row
// (bf16: 16 bytes; MXFP8: 8 bytes + the block's scale byte; NVFP4: 4 bytes +
// scale byte). Split from the decode so loads can be issued ahead of use.
struct RawActGroup {
  uint4 v;
  uint32_t s;
};

// The same with the format known at compile time and the row's data and
// scale pointers already formed (the warp-specialised producer's hot loop:
// no per-group switch or row arithmetic).
template <Format AF>
__device__ __forceinline__ RawActGroup LoadRawActGroupAt(const uint8_t* row, const uint8_t* srow, int k) {
  RawActGroup r{make_uint4(0, 0, 0, 0), 0};
  if constexpr (AF == Format::kMXFP8) {
    const uint2 v = __ldg(reinterpret_cast<const uint2*>(row + k));
    r.v.x = v.x;
    r.v.y = v.y;
    r.s = __ldg(srow + k / 32);
  } else if constexpr (AF == Format::kNVFP4) {
    r.v.x = __ldg(reinterpret_cast<const uint32_t*>(row + k / 2));
    r.s = __ldg(srow + k / 16);
  } else {
    r.v = __ldg(reinterpret_cast<const uint4*>(row + 2 * k));
  }
  return r;
}

__device__ __forceinline__ RawActGroup LoadRawActGroup(const GemmArgs& a, int64_t src_row, int k) {
  const uint8_t* row = a.a_data + src_row * a.a_row_bytes;
  switch (a.act_format) {
    case Format::kMXFP8:
      return LoadRawActGroupAt<Format::kMXFP8>(row, a.a_scale + src_row * a.a_scale_row_bytes, k);
    case Format::kNVFP4:
      return LoadRawActGroupAt<Format::kNVFP4>(row, a.a_scale + src_row * a.a_scale_row_bytes, k);
    default: return LoadRawActGroupAt<Format::kBF16>(row, nullptr, k);  // no scales
  }
}

// Raw group -> 4 bf16x2 words (element i, element i+4), exact. An all-zero
// raw group decodes to zeros in every format (padding rows, K tails).
template <Format AF>
__device__ __forceinline__ uint4 DecodeActGroupAs(const RawActGroup& r) {
  if constexpr (AF == Format::kMXFP8) {
    const float s = Ue8m0ToF32(r.s);
    float x[8];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      x[i] = E4m3ToF32((r.v.x >> (8 * i)) & 0xffu) * s;
      x[i + 4] = E4m3ToF32((r.v.y >> (8 * i)) & 0xffu) * s;
    }
    return make_uint4(PackBf16x2(x[0], x[4]), PackBf16x2(x[1], x[5]), PackBf16x2(x[2], x[6]),
                      PackBf16x2(x[3], x[7]));
  } else if constexpr (AF == Format::kNVFP4) {
    const float s = E4m3ToF32(r.s);
    float x[8];
#pragma unroll
    for (int i = 0; i < 8; ++i) x[i] = E2m1ToF32((r.v.x >> (4 * i)) & 0xfu) * s;
    return make_uint4(PackBf16x2(x[0], x[4]), PackBf16x2(x[1], x[5]), PackBf16x2(x[2], x[6]),
                      PackBf16x2(x[3], x[7]));
  } else {  // bf16: reorder (x0..x7) into (x0,x4) (x1,x5) (x2,x6) (x3,x7)
    return make_uint4(__byte_perm(r.v.x, r.v.z, 0x5410), __byte_perm(r.v.x, r.v.z, 0x7632),
                      __byte_perm(r.v.y, r.v.w, 0x5410), __byte_perm(r.v.y, r.v.w, 0x7632));
  }
}

__device__ __forceinline__ uint4 DecodeActGroup(const RawActGroup& r, Format fmt) {
  switch (fmt) {
    case Format::kMXFP8: return DecodeActGroupAs<Format::kMXFP8>(r);
    case Format::kNVFP4: return DecodeActGroupAs<Format::kNVFP4>(r);
    default: return DecodeActGroupAs<Format::kBF16>(r);
  }
}

__device__ __forceinline__ uint4 LoadActivationGroup(const GemmArgs& a, int64_t src_row, int k) {
  return DecodeActGroup(LoadRawActGroup(a, src_row, k), a.act_format);
}

// One weight row's share for a lane: 32 FP4 elements (16 bytes) and their
// raw block-scale bytes (NVFP4: two e4m3 bytes, the low one for elements
// 0..15; MXFP4: one ue8m0 byte) in the low bytes of `scales` (the staged
// family's ring keeps the aligned word holding them, and a per-row
// QuadScaleSelector picks them out). Scales stay raw until QuadScalePair so
// a register stage holds 5 words per quad.
struct WeightQuad {
  uint4 codes;
  uint32_t scales;
};

// `aligned16`: rows start on 16-byte boundaries (K % 32 == 0); `scale_pairs`:
// NVFP4 scale rows have an even length, so a quad's two scale bytes are one
// aligned 2-byte load.
template <Format WF>
__device__ __forceinline__ WeightQuad LoadWeightQuad(const uint8_t* row, const uint8_t* srow,
                                                     int k, int k_dim, bool aligned16, bool scale_pairs) {
  WeightQuad w{make_uint4(0, 0, 0, 0), 0u};
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
    const uint8_t* sp = srow + k / 16;
    if (valid >= 32 && scale_pairs) {
      w.scales = __ldg(reinterpret_cast<const uint16_t*>(sp));
    } else {
      w.scales = __ldg(sp);
      if (valid >= 32) w.scales |= static_cast<uint32_t>(__ldg(sp + 1)) << 8;
    }
  } else {
    w.scales = __ldg(srow + k / 32);
  }
  return w;
}

// The fp32 accumulators of every GEMM kernel, acc[m-tile][n8 tile][4], zeroed.
template <int kMT, int kNT>
__device__ __forceinline__ void ZeroAccumulators(float (&acc)[kMT][kNT][4]) {
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
    for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[mt][nt][i] = 0.0f;
}

// One lane's weight rows for a warp whose kMT m-tiles start at feature
// feat0: rows g and g + 8 of each m-tile (GEMM1: m-tiles 0, 1 gate rows,
// 2, 3 the up rows n_dim further), kept as 32-bit row indices into the
// expert's weights and scales (pointers would cost twice the registers).
// M-tiles past n_dim are invalid: they point at row 0 and load zeros.
template <int kMT, Format WF, GemmStage ST>
struct LaneWeights {
  const uint8_t* w;
  const uint8_t* s;
  int k_bytes, scale_cols;
  bool aligned16, scale_pairs;
  int row[kMT][2];
  bool valid[kMT];

  __device__ __forceinline__ LaneWeights(const GemmArgs& a, int expert, int feat0, int g) {
    k_bytes = a.k_dim / 2;
    scale_cols = a.k_dim / BlockSize(WF);
    aligned16 = (k_bytes % 16) == 0;
    scale_pairs = (scale_cols % 2) == 0;
    w = a.w + static_cast<int64_t>(expert) * a.w_rows_per_expert * k_bytes;
    s = a.w_scale + static_cast<int64_t>(expert) * a.w_rows_per_expert * scale_cols;
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt) {
      const int feature = MTileFeature<ST>(feat0, mt);
      valid[mt] = feature < a.n_dim;
      const int base = MTileWeightRow<ST>(feature, mt, a.n_dim);
#pragma unroll
      for (int r = 0; r < 2; ++r) row[mt][r] = valid[mt] ? base + g + 8 * r : 0;
    }
  }

  // The lane's quads at K offset k (k = K block start + 32 * q).
  __device__ __forceinline__ void Load(int k, int k_dim, WeightQuad (&out)[kMT][2]) const {
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
      for (int r = 0; r < 2; ++r)
        out[mt][r] = valid[mt] ? LoadWeightQuad<WF>(w + row[mt][r] * k_bytes, s + row[mt][r] * scale_cols, k,
                                                    k_dim, aligned16, scale_pairs)
                               : WeightQuad{make_uint4(0, 0, 0, 0), 0u};
  }
};

// PRMT selector that moves a quad's scale byte(s) at byte offset `o` of a
// word into QuadScalePair's input form (NVFP4: both bytes, sign-spread;
// MXFP4: the byte alone, zeros above).
template <Format WF>
__device__ __forceinline__ uint32_t QuadScaleSelector(uint32_t o) {
  return WF == Format::kNVFP4 ? Nvfp4ScaleSelector(o) : 0x4440u + o;
}

// A quad's block scales as one bf16x2 word, from the word holding their
// raw bytes and the QuadScaleSelector of their offset. NVFP4: (s0, s1) *
// 2^kNvfp4ScaleFold, s0 for elements 0..15, s1 for 16..31 (the fold is
// undone in GemmEpilogue); MXFP4: s in the low half.
template <Format WF>
__device__ __forceinline__ uint32_t QuadScalePair(uint32_t word, uint32_t sel) {
  const uint32_t x = Prmt(word, 0u, sel);
  if constexpr (WF == Format::kNVFP4) {
    return E4m3PairToFoldedBf16x2(x);
  } else {
    return Ue8m0ToBf16Bits(x);
  }
}
template <Format WF>
__device__ __forceinline__ uint32_t QuadScalePair(const WeightQuad& w) {
  return QuadScalePair<WF>(w.scales, QuadScaleSelector<WF>(0));
}

// Word j (elements 8j..8j+7 of the lane's 32) -> 4 scaled bf16x2 pairs.
// NVFP4: one multiply per pair (the 2^126 of DecodeE2m1x8 is folded into
// the scale); MXFP4 keeps the 2^126 multiply, since 2^126 * 2^(e - 127)
// overflows bf16 for e > 128.
template <Format WF>
__device__ __forceinline__ void DecodeWord(const WeightQuad& w, int j, uint32_t scale, uint32_t (&out)[4]) {
  const uint32_t codes = j == 0 ? w.codes.x : j == 1 ? w.codes.y : j == 2 ? w.codes.z : w.codes.w;
  DecodeE2m1x8(codes, out);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    if constexpr (WF == Format::kNVFP4) {
      out[i] = j < 2 ? MulBf16x2ByHalf<0>(out[i], scale) : MulBf16x2ByHalf<1>(out[i], scale);
    } else {
      out[i] = MulBf16x2ByHalf<0>(MulBf16x2(out[i], kBf16x2Pow2_126), scale);
    }
  }
}

// DecodeWord with the block scales rebuilt from the quad's raw bytes, for
// kernels that cannot keep the decoded scales live for a whole K block.
template <Format WF>
__device__ __forceinline__ void DecodeWordRawScales(const WeightQuad& w, int j, uint32_t (&out)[4]) {
  DecodeWord<WF>(w, j, QuadScalePair<WF>(w), out);
}

__device__ __forceinline__ float WarpMaxOverRows(float v) {
  // Lanes with the same q hold the same token columns: reduce over g.
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 4));
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 8));
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 16));
  return v;
}

// The epilogue every GEMM kernel shares, for one warp's accumulators
// acc[m-tile][n-tile][4] (features feat0 + kMtStride*mt + g + 8*(i>>1), token
// columns col0 + 8*nt + 2q + (i&1) of the tile whose permuted rows start at
// row0): fp32 global scales, bias, weight-on-input, gated activation and the
// h re-quantization (GEMM1), or the bf16 y rows (GEMM2). GEMM1 pairs m-tile
// p (gate) with m-tile kMT/2 + p (up), features feat0 + 16*p + ...; kMT = 4
// (32 features a warp) is the layout of the mma.sync families, kMT = 2 (16
// features) the register-A wgmma family's. There an MXFP8 block of 32
// features spans warps w and w ^ 1 of a warpgroup, so their amaxes meet in
// shared memory: with kMxExchange, `mx` names this warpgroup's [4 warps][kNT
// * 8 tokens] floats, the named barrier over its 128 threads and the warp's
// index in it; every warp of the warpgroup must take part.
// The factor every accumulator of an expert's GEMM output is multiplied by:
// the NVFP4 activations' encode scale divided out, and for NVFP4 weights
// their fp32 global scale and the decode's 2^kNvfp4ScaleFold fold undone.
template <Format WF>
__device__ __forceinline__ float OutputScale(const GemmArgs& a, int expert) {
  float scale = 1.0f;
  if (a.a_global) scale /= a.a_global[0];
  if (WF == Format::kNVFP4) scale = scale / a.w_global[a.w_global_per_expert ? expert : 0] * kNvfp4EpilogueGain;
  return scale;
}

struct MxAmaxExchange {
  float* amax = nullptr;
  int barrier = 0;
  int warp = 0;
};
template <int kMT, int kNT, Format WF, GemmStage ST, int kMtStride = 16, bool kMxExchange = false>
__device__ __forceinline__ void GemmEpilogue(const GemmArgs& a, const float (&acc)[kMT][kNT][4],
                                             const bool (&mt_valid)[kMT], const int32_t* s_expanded,
                                             int col0, int64_t row0, int feat0, int expert,
                                             const MxAmaxExchange& mx = MxAmaxExchange{}) {
  const int lane = threadIdx.x % 32, g = lane / 4, q = lane % 4;
  const float scale = OutputScale<WF>(a, expert);

  if constexpr (ST == GemmStage::kGemm2) {
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt) {
      if (!mt_valid[mt]) continue;
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int col = col0 + nt * 8 + 2 * q + (i & 1);
          const int feature = feat0 + kMtStride * mt + g + 8 * (i >> 1);
          const int ex = s_expanded[col];
          if (ex < 0) continue;
          float v = acc[mt][nt][i] * scale;
          if (a.bias) v += a.bias[static_cast<int64_t>(expert) * a.w_rows_per_expert + feature];
          const int64_t out_row = a.y_by_expanded ? ex : row0 + col;
          a.y[out_row * a.n_dim + feature] = Bf16Bits(v);
        }
    }
  } else {
    // hv[pair][nt][i]: features feat0 + 16*pair + g + 8*(i>>1), token col 2q + (i&1).
    constexpr int kPairs = kMT / 2;
    static_assert(kPairs == 1 || kPairs == 2, "GEMM1: one or two gate/up m-tile pairs per warp");
    float hv[kPairs][kNT][4];
#pragma unroll
    for (int pair = 0; pair < kPairs; ++pair)
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int col = col0 + nt * 8 + 2 * q + (i & 1);
          const int feature = feat0 + 16 * pair + g + 8 * (i >> 1);
          const int ex = s_expanded[col];
          float gate = acc[pair][nt][i] * scale, up = acc[kPairs + pair][nt][i] * scale;
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
        if constexpr (kPairs == 1 && !kMxExchange) {
          __trap();  // a launcher bug: 16-feature warps with MXFP8 h need the amax exchange (kMxExchange)
        } else {
        // kPairs = 1: a block of 32 features spans this warp and its partner
        // (w ^ 1); each posts the amax of its 16, then both read the other's.
        float own[kNT][2];
        if constexpr (kPairs == 1) {
#pragma unroll
          for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
            for (int c = 0; c < 2; ++c) {
              own[nt][c] = WarpMaxOverRows(fmaxf(fabsf(hv[0][nt][c]), fabsf(hv[0][nt][2 + c])));
              if (g == 0) mx.amax[mx.warp * kNT * 8 + nt * 8 + 2 * q + c] = own[nt][c];
            }
          wgmma::BarrierSync(mx.barrier, 128);
        }
        // One block of 32 features = this warp's 32 (kPairs = 2) or the warp pair's (I % 32 == 0).
#pragma unroll
        for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
          for (int c = 0; c < 2; ++c) {
            float amax = 0.0f;
            if constexpr (kPairs == 1) {
              amax = fmaxf(own[nt][c], mx.amax[(mx.warp ^ 1) * kNT * 8 + nt * 8 + 2 * q + c]);
            } else {
#pragma unroll
              for (int pair = 0; pair < kPairs; ++pair)
#pragma unroll
                for (int half = 0; half < 2; ++half) amax = fmaxf(amax, fabsf(hv[pair][nt][2 * half + c]));
              amax = WarpMaxOverRows(amax);
            }
            const int col = col0 + nt * 8 + 2 * q + c;
            const int ex = s_expanded[col];
            if (ex < 0 || (kPairs == 1 && !mt_valid[0])) continue;  // (kPairs = 1: warps past n_dim came for the barrier)
            const uint8_t sf = MxScaleByte(amax, 448.0f);
            const float inv = amax > 0.0f ? Pow2(127 - sf) : 0.0f;
            const int64_t row = row0 + col;
            uint8_t* dst = a.h + row * a.h_row_bytes;
#pragma unroll
            for (int pair = 0; pair < kPairs; ++pair)
#pragma unroll
              for (int half = 0; half < 2; ++half)
                dst[feat0 + 16 * pair + g + 8 * half] = FloatToE4m3(hv[pair][nt][2 * half + c] * inv);
            if (g == 0 && (kPairs == 2 || (mx.warp & 1) == 0)) a.h_scale[row * a.h_scale_row_bytes + feat0 / 32] = sf;
          }
        if constexpr (kPairs == 1) wgmma::BarrierSync(mx.barrier, 128);  // the buffer is free for the next item
        }
        break;
      }
      case Format::kNVFP4: {
        // One block of 16 features = one m-tile; nibble pairs (g, g+1) meet via a shuffle.
        const float G = a.h_global[0];
#pragma unroll
        for (int pair = 0; pair < kPairs; ++pair)
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
              const int col = col0 + nt * 8 + 2 * q + c;
              const int ex = s_expanded[col];
              if (ex < 0 || !mt_valid[pair] || (g & 1)) continue;
              const int64_t row = row0 + col;
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
        for (int pair = 0; pair < kPairs; ++pair) {
          if (!mt_valid[pair]) continue;
#pragma unroll
          for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
            for (int i = 0; i < 4; ++i) {
              const int col = col0 + nt * 8 + 2 * q + (i & 1);
              const int ex = s_expanded[col];
              if (ex < 0) continue;
              const int feature = feat0 + 16 * pair + g + 8 * (i >> 1);
              auto* dst = reinterpret_cast<uint16_t*>(a.h + (row0 + col) * a.h_row_bytes);
              dst[feature] = Bf16Bits(hv[pair][nt][i]);
            }
        }
      }
    }
  }
}

}  // namespace gemm_detail

}  // namespace jax_moe::cuda
