// The streaming split-K grouped GEMM (KernelFamily::kCudaStreamSplitK): the
// bandwidth family for small token tiles (decode and the middle range), used
// for both GEMM1 (+ activation) and GEMM2 with the same epilogue as the
// staged family.
//
// Why a second family: at small T the layer is a weight stream (each active
// expert's FP4 rows are read once), and what limits it is the bytes in
// flight, not arithmetic. The staged kernel gives one warp a whole K row,
// loads 8 quads, waits, computes, and stages activations behind block
// barriers: at T=1 on Qwen3 only 48 blocks exist and the weight stream runs
// at ~5% of the copy bandwidth. Here:
//   - one block = one token tile x 32 output features (blockIdx.y): 24-64x
//     more blocks than experts x feature groups of 128;
//   - the block's warps split K (split_k, chosen at launch from K: every warp
//     gets >= ~3 K blocks of 128) and reduce their fp32 partial sums through
//     shared memory in a fixed order (deterministic);
//   - no shared-memory staging and no barrier in the K loop: each lane loads
//     its B fragments (activation rows, hot in L1/L2) straight from global
//     memory next to its 16-byte FP4 weight loads, and the next K block's
//     loads are issued before the current one is decoded (two register
//     stages), so ~2 x 8 x 16 bytes per lane are always in flight.
// Token tiles wider than one warp (TT > TW) put TT / TW warps side by side on
// the same features; they read the same weight bytes at the same time, which
// L1 serves once.
#pragma once

#include "cuda/gemm_common.cuh"

namespace jax_moe::cuda {

namespace gemm_detail {

constexpr int kStreamMaxWarps = 8;  // warps per block (token warps x split_k)

// One register stage of a lane's operands for one 128-wide K block.
template <int kMT, int kNT>
struct StreamStage {
  WeightQuad w[kMT][2];
  RawActGroup x[kNT][4];
};

}  // namespace gemm_detail

template <int TT, int TW, Format WF, GemmStage ST>
__global__ void __launch_bounds__(32 * gemm_detail::kStreamMaxWarps)
    StreamGemmKernel(const GemmArgs a, int split_k) {
  using namespace gemm_detail;
  constexpr int kWarpsT = TT / TW, kNT = TW / 8;
  constexpr int kMT = WarpMTiles<ST>();
  constexpr int kAcc = kMT * kNT * 4;
  static_assert(TT % TW == 0 && TW % 8 == 0 && kWarpsT <= kStreamMaxWarps, "bad tactic");
  extern __shared__ float s_partial[];  // [(split_k - 1) * kWarpsT][kAcc][32]
  __shared__ int32_t s_expanded[TT];

  const int tile = blockIdx.x;
  if (tile >= *a.num_tiles) return;  // beyond the live tiles (device-side count); whole block
  const int expert = a.tile_expert[tile];
  for (int i = threadIdx.x; i < TT; i += blockDim.x) s_expanded[i] = a.permuted_to_expanded[tile * TT + i];
  __syncthreads();

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, q = lane % 4;
  const int wt = warp % kWarpsT, ks = warp / kWarpsT;
  const int feat0 = blockIdx.y * 32;

  const LaneWeights<kMT, WF, ST> lw(a, expert, feat0, g);
  const auto& mt_valid = lw.valid;
  int64_t src_row[kNT];
  bool row_live[kNT];
#pragma unroll
  for (int nt = 0; nt < kNT; ++nt) {
    const int col = wt * TW + nt * 8 + g;
    const int ex = s_expanded[col];
    row_live[nt] = ex >= 0;
    src_row[nt] = a.gather_tokens ? (ex >= 0 ? ex / a.top_k : 0) : static_cast<int64_t>(tile) * TT + col;
  }

  auto load = [&](StreamStage<kMT, kNT>& st, int kb) {
    const int k = kb + 32 * q;
    lw.Load(k, a.k_dim, st.w);
#pragma unroll
    for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
      for (int j = 0; j < 4; ++j)
        st.x[nt][j] = (row_live[nt] && k + 8 * j < a.k_dim) ? LoadRawActGroup(a, src_row[nt], k + 8 * j)
                                                            : RawActGroup{make_uint4(0, 0, 0, 0), 0};
  };

  float acc[kMT][kNT][4];
  ZeroAccumulators(acc);

  auto compute = [&](const StreamStage<kMT, kNT>& st) {
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      uint32_t af[kMT][2][4];
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
        for (int r = 0; r < 2; ++r) DecodeWordRawScales<WF>(st.w[mt][r], j, af[mt][r]);
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt) {
        const uint4 bv = DecodeActGroup(st.x[nt][j], a.act_format);
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt) {
          if (!mt_valid[mt]) continue;
          MmaDecodedWord(acc[mt][nt], af[mt], bv);
        }
      }
    }
  };

  // K blocks ks, ks + split_k, ...: two register stages, the next block's
  // loads in flight while the current one is decoded and multiplied.
  const int step = split_k * kKBlock;
  StreamStage<kMT, kNT> s0, s1;
  int kb = ks * kKBlock;
  if (kb < a.k_dim) load(s0, kb);
  for (; kb < a.k_dim; kb += 2 * step) {
    const bool has1 = kb + step < a.k_dim;
    if (has1) load(s1, kb + step);
    compute(s0);
    if (kb + 2 * step < a.k_dim) load(s0, kb + 2 * step);
    if (has1) compute(s1);
  }

  // Split-K reduction: warps ks > 0 park their partial sums, warp ks == 0
  // adds them in ks order (fixed: bitwise-reproducible) and runs the epilogue.
  if (split_k > 1) {
    if (ks > 0) {
      float* dst = s_partial + ((ks - 1) * kWarpsT + wt) * kAcc * 32;
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
        for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
          for (int i = 0; i < 4; ++i) dst[((mt * kNT + nt) * 4 + i) * 32 + lane] = acc[mt][nt][i];
    }
    __syncthreads();
    if (ks > 0) return;
    for (int s = 1; s < split_k; ++s) {
      const float* src = s_partial + ((s - 1) * kWarpsT + wt) * kAcc * 32;
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
        for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
          for (int i = 0; i < 4; ++i) acc[mt][nt][i] += src[((mt * kNT + nt) * 4 + i) * 32 + lane];
    }
  }
  GemmEpilogue<kMT, kNT, WF, ST>(a, acc, mt_valid, s_expanded, wt * TW, static_cast<int64_t>(tile) * TT,
                                 feat0, expert);
}

// Warps along K for one GEMM: enough K blocks per warp (>= 3) to keep two
// stages busy, no more warps than the block allows.
template <int TT, int TW>
int StreamSplitK(int k_dim) {
  constexpr int kMaxSplit = gemm_detail::kStreamMaxWarps / (TT / TW);
  const int k_blocks = (k_dim + gemm_detail::kKBlock - 1) / gemm_detail::kKBlock;
  const int split = k_blocks / 3;
  return split < 1 ? 1 : (split > kMaxSplit ? kMaxSplit : split);
}

// Grid: x = token tiles (worst case from static shapes), y = groups of 32 features.
// `TW` is GEMM2's tokens per warp; GEMM1 (gate + up: twice the weight rows
// per warp) always uses 8, since two stages of 16 tokens do not fit in 255
// registers next to its 8 weight quads per stage (ptxas spills).
template <int TT, int TW, Format WF, GemmStage ST>
cudaError_t LaunchStreamGemm(const GemmArgs& a, int64_t max_tiles, cudaStream_t stream) {
  constexpr int kTW = ST == GemmStage::kGemm1 ? 8 : TW;
  constexpr int kWarpsT = TT / kTW, kNT = kTW / 8, kMT = gemm_detail::WarpMTiles<ST>();
  const int split_k = StreamSplitK<TT, kTW>(a.k_dim);
  const size_t smem = static_cast<size_t>(split_k - 1) * kWarpsT * kMT * kNT * 4 * 32 * sizeof(float);
  const dim3 grid(static_cast<unsigned>(max_tiles), static_cast<unsigned>((a.n_dim + 31) / 32));
  StreamGemmKernel<TT, kTW, WF, ST><<<grid, 32 * kWarpsT * split_k, smem, stream>>>(a, split_k);
  return cudaGetLastError();
}

}  // namespace jax_moe::cuda
