// The staged mma.sync swap-AB grouped GEMM (KernelFamily::kCudaMmaSwapAB),
// used for both GEMM1 (with the gated activation and h re-quantization fused
// in its epilogue) and GEMM2.
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
// never by a separate pass). Best for large token tiles, where the staged
// activations are reused by many MMAs; gemm_stream.cuh is the small-tile family.
#pragma once

#include "cuda/gemm_common.cuh"

namespace jax_moe::cuda {

template <int TT, int TW, int WN, int KC, Format WF, GemmStage ST>
__global__ void __launch_bounds__(32 * (TT / TW) * WN)
    MmaSwapAbGemmKernel(const GemmArgs a) {
  using namespace gemm_detail;
  constexpr int kWarpsT = TT / TW, kNT = TW / 8;
  constexpr int kMT = WarpMTiles<ST>();
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
  const bool aligned16 = (k_bytes % 16) == 0, scale_pairs = (scale_cols % 2) == 0;
  const uint8_t* wrow[kMT][2];
  const uint8_t* srow[kMT][2];
  bool mt_valid[kMT];
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
    const int feature = MTileFeature<ST>(feat0, mt);
    mt_valid[mt] = feature < a.n_dim;
    const int64_t base = MTileWeightRow<ST>(feature, mt, a.n_dim);
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int64_t row = static_cast<int64_t>(expert) * a.w_rows_per_expert + base + g + 8 * r;
      wrow[mt][r] = a.w + row * k_bytes;
      srow[mt][r] = a.w_scale + row * scale_cols;
    }
  }

  float acc[kMT][kNT][4];
  ZeroAccumulators(acc);

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
          wq[mt][r] = mt_valid[mt] ? LoadWeightQuad<WF>(wrow[mt][r], srow[mt][r], k, a.k_dim, aligned16, scale_pairs)
                                   : WeightQuad{make_uint4(0, 0, 0, 0), 0u};
      uint32_t sc[kMT][2][2];
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
        for (int r = 0; r < 2; ++r) QuadScales<WF>(wq[mt][r], sc[mt][r]);
      const int slot0 = ((kb - k0) / kKBlock) * 16 + q;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        uint32_t af[kMT][2][4];
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
          for (int r = 0; r < 2; ++r) DecodeWord(wq[mt][r], j, sc[mt][r], af[mt][r]);
#pragma unroll
        for (int nt = 0; nt < kNT; ++nt) {
          const uint4 bv = s_act[(wt * TW + nt * 8 + g) * kRowVec + slot0 + 4 * j];
#pragma unroll
          for (int mt = 0; mt < kMT; ++mt) {
            if (!mt_valid[mt]) continue;
            MmaDecodedWord(acc[mt][nt], af[mt], bv);
          }
        }
      }
    }
  }
  if (!warp_active) return;

  GemmEpilogue<kMT, kNT, WF, ST>(a, acc, mt_valid, s_expanded, wt * TW, static_cast<int64_t>(tile) * TT,
                                 feat0, expert);
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
