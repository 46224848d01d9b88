// The register-A wgmma family's epilogue for bf16 outputs (GEMM1's h with
// bf16 activations, GEMM2's y): each consumer warpgroup stages its item's
// output rows in shared memory and writes every row with one bulk copy.
//
// Why: the shared GemmEpilogue is straight-line code (every accumulator
// unrolled, the activation chosen per value, a 2-byte global store with
// its own 64-bit address per value: ~4000 instructions a thread for h).
// It runs once per work item, so its code is never in the instruction
// cache: the stamps of NOTES v13 measured ~94k cycles an item for GEMM1
// (as long as gpt-oss-120b's whole main loop) and ~23k for GEMM2, and ncu
// put 58% of those warps' samples on "no instruction". Here:
//   - the activation is picked once per item (a template per kind), and the
//     16 token columns run a rolled loop whose body (one column block: 4 h
//     values or 8 y values a thread, taken from the accumulators by a jump
//     table) stays in the instruction cache;
//   - values go to shared memory (2-byte stores; a row pitch of features
//     * 2 + 16 bytes puts the 4 token rows one warp store touches on
//     distinct banks), then thread t of the warpgroup writes token row t
//     with one cp.async.bulk (128 or 256 bytes), so no warp waits on global
//     stores and the next item's main loop starts at once;
//   - bias and the global scale are loaded once per item; weight-on-input
//     factors once per row (1 where unused, so the loop has no branch).
// MXFP8 h (the kMx kernels) keeps GemmEpilogue: its warp-pair amax exchange.
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "common/activation_math.h"
#include "cuda/cp_async.cuh"
#include "cuda/gemm_common.cuh"
#include "cuda/wgmma.cuh"

namespace jax_moe::cuda::gemm_rs_detail {

// The register-A tiles: TT = 128 tokens with two m64 tiles (128 weight rows)
// a consumer warpgroup, or TT = 256 with one (64 rows): either way 128
// accumulators a thread. With one m-tile, GEMM1 holds gate and up of the
// same features in rows g and g + 8 of each warp's 16 (BlockWeightRow).
template <int TT>
constexpr int RsMTiles() {
  static_assert(TT == 128 || TT == 256, "register-A tiles: 128 or 256 tokens");
  return 256 / TT;
}
// Output features of one work item's feature block (both consumers), the
// blocks of a GEMM, one consumer warpgroup's share, and the staging of
// its rows: kStagedRows token rows of kPitch bytes, then their fp32 row
// factors. A 256-token item is staged and copied out in two halves.
template <int TT, GemmStage ST>
constexpr int ConsumerFeatures() {
  return (ST == GemmStage::kGemm1 ? 32 : 64) * RsMTiles<TT>();
}
template <int TT, GemmStage ST>
constexpr int FeaturesPerBlock() {
  return 2 * ConsumerFeatures<TT, ST>();
}
template <int TT, GemmStage ST>
__host__ __device__ constexpr int FeatureBlocks(int n_dim) {
  return (n_dim + FeaturesPerBlock<TT, ST>() - 1) / FeaturesPerBlock<TT, ST>();
}
template <int TT, GemmStage ST>
constexpr int StagePitch() {
  return 2 * ConsumerFeatures<TT, ST>() + 16;
}
constexpr int kStagedRows = 128;  // token rows staged at once: thread t copies row t
template <int TT, GemmStage ST>
constexpr int OutStageBytes() {
  return kStagedRows * StagePitch<TT, ST>() + kStagedRows * 4;
}
static_assert(StagePitch<128, GemmStage::kGemm1>() % 16 == 0 && StagePitch<128, GemmStage::kGemm2>() % 16 == 0 &&
                  StagePitch<256, GemmStage::kGemm1>() % 16 == 0 && StagePitch<256, GemmStage::kGemm2>() % 16 == 0,
              "bulk copies read 16-byte aligned rows");

__device__ __forceinline__ void StoreSharedBf16(uint32_t addr, float v) {
  uint16_t b;
  asm("cvt.rn.bf16.f32 %0, %1;\n" : "=h"(b) : "f"(v));  // round to nearest even, NaN stays NaN
  asm volatile("st.shared.u16 [%0], %1;\n" ::"r"(addr), "h"(b) : "memory");
}

// Column block nt of every m-tile (v[mt][i] = acc[mt][nt][i]) by a jump
// table: the caller's loop over nt stays rolled and the accumulators stay
// in registers (each case indexes them with constants).
template <int kMT, int kNT>
__device__ __forceinline__ void TakeColumnBlock(const float (&acc)[kMT][kNT][4], int nt, float (&v)[kMT][4]) {
  static_assert(kNT == 16 || kNT == 32, "16 or 32 column blocks");
#define JAX_MOE_RS_TAKE(n)                                                   \
  case n:                                                                    \
    if constexpr (n < kNT) {                                                 \
      _Pragma("unroll") for (int mt = 0; mt < kMT; ++mt)                     \
          _Pragma("unroll") for (int i = 0; i < 4; ++i) v[mt][i] = acc[mt][n][i]; \
    }                                                                        \
    break;
  switch (nt) {
    JAX_MOE_RS_TAKE(0) JAX_MOE_RS_TAKE(1) JAX_MOE_RS_TAKE(2) JAX_MOE_RS_TAKE(3)
    JAX_MOE_RS_TAKE(4) JAX_MOE_RS_TAKE(5) JAX_MOE_RS_TAKE(6) JAX_MOE_RS_TAKE(7)
    JAX_MOE_RS_TAKE(8) JAX_MOE_RS_TAKE(9) JAX_MOE_RS_TAKE(10) JAX_MOE_RS_TAKE(11)
    JAX_MOE_RS_TAKE(12) JAX_MOE_RS_TAKE(13) JAX_MOE_RS_TAKE(14) JAX_MOE_RS_TAKE(15)
    JAX_MOE_RS_TAKE(16) JAX_MOE_RS_TAKE(17) JAX_MOE_RS_TAKE(18) JAX_MOE_RS_TAKE(19)
    JAX_MOE_RS_TAKE(20) JAX_MOE_RS_TAKE(21) JAX_MOE_RS_TAKE(22) JAX_MOE_RS_TAKE(23)
    JAX_MOE_RS_TAKE(24) JAX_MOE_RS_TAKE(25) JAX_MOE_RS_TAKE(26) JAX_MOE_RS_TAKE(27)
    JAX_MOE_RS_TAKE(28) JAX_MOE_RS_TAKE(29) JAX_MOE_RS_TAKE(30) JAX_MOE_RS_TAKE(31)
    default:
      break;
  }
#undef JAX_MOE_RS_TAKE
}

// The staged rows of one column block -> shared memory (column block nt of
// the half being staged: token rows 8nt + 2q + (i & 1) of the staging).
// Two m-tiles (TT = 128): lane (g, q) of warp w holds features 16w + g +
// 8(i >> 1) (+ 64 mt for GEMM2); GEMM1's m-tile 0 is the gate, 1 the up
// projection. One m-tile (TT = 256): GEMM2 the same features; GEMM1 holds
// the gate of feature 8w + g in row g (i = 0, 1) and its up in row g + 8.
template <int TT, GemmStage ST, Activation kKind, int kMT = RsMTiles<TT>()>
__device__ __forceinline__ void StageColumnBlock(const GemmArgs& a, const float (&v)[kMT][4], const float (&bias)[kMT][2],
                                                 float scale, const float* s_rw, uint32_t stage, int nt, int warp,
                                                 int g, int q) {
  constexpr int kPitch = StagePitch<TT, ST>();
  if constexpr (ST == GemmStage::kGemm1 && kMT == 1) {
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int col = 8 * nt + 2 * q + i;
      const uint32_t row = stage + static_cast<uint32_t>(col * kPitch);
      const float rw = s_rw[col];
      const float gate = v[0][i] * scale * rw + bias[0][0];
      const float up = v[0][2 + i] * scale * rw + bias[0][1];
      StoreSharedBf16(row + 2u * (8 * warp + g), GatedActivationOf<kKind>(gate, up, a.activation));
    }
  } else {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int col = 8 * nt + 2 * q + (i & 1);
      const int f = 16 * warp + g + 8 * (i >> 1);
      const uint32_t row = stage + static_cast<uint32_t>(col * kPitch);
      if constexpr (ST == GemmStage::kGemm1) {
        const float rw = s_rw[col];
        const float gate = v[0][i] * scale * rw + bias[0][i >> 1];
        const float up = v[1][i] * scale * rw + bias[1][i >> 1];
        StoreSharedBf16(row + 2u * f, GatedActivationOf<kKind>(gate, up, a.activation));
      } else {
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt) StoreSharedBf16(row + 2u * (64 * mt + f), v[mt][i] * scale + bias[mt][i >> 1]);
      }
    }
  }
}

// One consumer warpgroup's epilogue of one item (features F = fb *
// FeaturesPerBlock + ConsumerFeatures * c ..): `stage` is its staging area
// (OutStageBytes), s_rw the same area's row factors, `barrier` a named
// barrier of its 128 threads. Every thread of the warpgroup calls it.
// `halves`: the 128-token halves of the tile that hold tokens (1 or 2 for
// TT = 256; 1 for TT = 128); a half is staged, then copied out, thread t
// writing its row t.
template <int TT, Format WF, GemmStage ST, int kMT>
__device__ __forceinline__ void RsStagedEpilogue(const GemmArgs& a, const float (&acc)[kMT][TT / 8][4], int tile,
                                                 int fb, int c, int expert, uint32_t stage, float* s_rw, int barrier,
                                                 int halves) {
  static_assert(kMT == RsMTiles<TT>(), "the register-A tiles: 128 accumulators a thread");
  constexpr int kF = ConsumerFeatures<TT, ST>();
  constexpr int kPitch = StagePitch<TT, ST>();
  const int t = threadIdx.x % 128, warp = t / 32, lane = t % 32, g = lane / 4, q = lane % 4;
  const int F = fb * FeaturesPerBlock<TT, ST>() + kF * c;
  const int valid = std::min(a.n_dim - F, kF);
  if (valid <= 0) return;  // the whole warpgroup

  const float scale = gemm_detail::OutputScale<WF>(a, expert);
  // Rows g and g + 8 of each m-tile: GEMM1 (gate, up) of features F + 16w + g (+ 8) with two
  // m-tiles, (gate, up) of feature F + 8w + g with one; GEMM2 output features F + 64mt + 16w + g
  // (+ 8). Missing features (past n_dim) get 0: their columns are never copied out.
  float bias[kMT][2];
  const int64_t b0 = static_cast<int64_t>(expert) * a.w_rows_per_expert;
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      int feature;
      int64_t row;
      if constexpr (ST == GemmStage::kGemm1 && kMT == 1) {
        feature = F + 8 * warp + g;
        row = r == 0 ? feature : a.n_dim + feature;
      } else {
        const int fl = 16 * warp + g + 8 * r;
        feature = ST == GemmStage::kGemm1 ? F + fl : F + 64 * mt + fl;
        row = ST == GemmStage::kGemm1 ? (mt == 0 ? feature : a.n_dim + feature) : feature;
      }
      bias[mt][r] = a.bias != nullptr && feature < a.n_dim ? a.bias[b0 + row] : 0.0f;
    }

  for (int h = 0; h < halves; ++h) {
    const int64_t prow = static_cast<int64_t>(tile) * TT + kStagedRows * h + t;  // this thread's token row
    const int ex = a.permuted_to_expanded[prow];
    BulkWaitRead<0>();  // this thread's copy of the previous half / item has read its row
    s_rw[t] = ST == GemmStage::kGemm1 && a.weight_on_input && ex >= 0 ? a.topk_weights[ex] : 1.0f;
    wgmma::BarrierSync(barrier, 128);  // the staged rows are free again and s_rw is written

    auto columns = [&](auto kind_constant) {
      constexpr Activation kKind = decltype(kind_constant)::value;
#pragma unroll 1
      for (int nt = 0; nt < kStagedRows / 8; ++nt) {
        float v[kMT][4];
        TakeColumnBlock<kMT, TT / 8>(acc, (kStagedRows / 8) * h + nt, v);
        StageColumnBlock<TT, ST, kKind>(a, v, bias, scale, s_rw, stage, nt, warp, g, q);
      }
    };
    if constexpr (ST == GemmStage::kGemm1) {
      switch (a.activation.kind) {
        case Activation::kSWIGLU:
          columns(std::integral_constant<Activation, Activation::kSWIGLU>{});
          break;
        case Activation::kGEGLU:
          columns(std::integral_constant<Activation, Activation::kGEGLU>{});
          break;
        case Activation::kSWIGLU_OAI:
          columns(std::integral_constant<Activation, Activation::kSWIGLU_OAI>{});
          break;
      }
    } else {
      columns(std::integral_constant<Activation, Activation::kSWIGLU>{});  // (no activation in GEMM2)
    }

    wgmma::FenceSharedForAsync();  // the staged rows, written through the generic proxy, are read by the bulk copies
    wgmma::BarrierSync(barrier, 128);
    if (ex >= 0) {  // padding rows are not written
      uint8_t* dst = ST == GemmStage::kGemm1
                         ? a.h + prow * a.h_row_bytes + 2 * static_cast<int64_t>(F)
                         : reinterpret_cast<uint8_t*>(a.y + (a.y_by_expanded ? ex : prow) * a.n_dim + F);
      BulkCopySharedToGlobal(dst, stage + static_cast<uint32_t>(t * kPitch), static_cast<uint32_t>(2 * valid));
      BulkCommit();
    }
  }
}

}  // namespace jax_moe::cuda::gemm_rs_detail
