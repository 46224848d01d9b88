// The wgmma swap-AB grouped GEMM (KernelFamily::kCudaWgmmaSwapAB): the
// prefill family (large token tiles), used for both GEMM1 (+ activation)
// and GEMM2 with the staged family's epilogue.
//
// Why: mma.sync m16n8k16 cannot keep Hopper's tensor cores busy (the staged
// family reached ~10% of the bf16 matmul rate at T = 4096), and each decoded
// FP4 word there feeds at most 32 tokens. Here one warpgroup (4 warps)
// issues wgmma.mma_async m64nNk16 with N = 64 or 128 tokens per instruction:
//   - A = weights, in registers: each warp decodes its own 16 rows per
//     m-tile exactly as the staged kernel does (16-byte FP4 loads from
//     global, DecodeE2m1x8, block scale in bf16), so the decode is paid once
//     per 64-128 tokens;
//   - B = the token tile, staged by the block as bf16 in shared memory in
//     the core-matrix layout wgmma.cuh describes, in the same K order as the
//     A fragments (lane q's 32 consecutive elements, pairs (i, i+4)), so the
//     staging is the staged family's LoadActivationGroup with another address;
//   - one commit group (kMT MMAs) per k16 step, drained before the next
//     step's decode (registers: see the loop); two resident blocks per SM
//     (t64) overlap one warpgroup's decode with the other's MMAs.
// Work split: blockIdx.x = token tile, blockIdx.y = 128 output features (one
// warpgroup's: 4 warps x 32 features, the staged family's per-warp share).
// GEMM1 (4 m-tiles per warp: 2 gate + 2 up) runs N = 64 per warpgroup and
// puts TT / 64 warpgroups along tokens; GEMM2 (2 m-tiles) runs N = 128 when
// the tile has 128 tokens. Both keep 128 fp32 accumulators per thread.
#pragma once

#include <string_view>

#include "cuda/gemm_common.cuh"
#include "cuda/wgmma.cuh"

namespace jax_moe::cuda {

namespace gemm_detail {

// Pairs 2h and 2h+1 of word j's decode (the half of DecodeWord one k16 step
// uses). The block scale is rebuilt from the raw bytes rather than kept
// decoded for the whole K block: 16 registers GEMM1 does not have.
template <Format WF>
__device__ __forceinline__ void DecodeWordHalf(const WeightQuad& w, int j, int h, uint32_t (&out)[2]) {
  uint32_t all[4];
  DecodeWordRawScales<WF>(w, j, all);
  out[0] = all[2 * h];
  out[1] = all[2 * h + 1];
}

}  // namespace gemm_detail

template <int TT, int KC, Format WF, GemmStage ST>
__global__ void __launch_bounds__(128 * (TT / gemm_detail::WgmmaN<TT, ST>()))
    WgmmaSwapAbGemmKernel(const GemmArgs a) {
  using namespace gemm_detail;
  constexpr int kN = WgmmaN<TT, ST>();
  constexpr int kThreads = 128 * (TT / kN);
  constexpr int kNT = kN / 8;
  constexpr int kMT = WarpMTiles<ST>();
  constexpr int kBlocksPerChunk = KC / kKBlock;
  static_assert(TT % kN == 0 && KC % kKBlock == 0, "bad wgmma tactic");
  static_assert(TT * KC * 2 + TT * 4 <= 48 * 1024, "staging must fit static shared memory");

  __shared__ __align__(128) uint32_t s_act[TT * KC / 2];  // bf16x2 words, core-matrix layout
  __shared__ int32_t s_expanded[TT];

  const int tile = blockIdx.x;
  if (tile >= *a.num_tiles) return;  // beyond the live tiles (device-side count); whole block
  const int expert = a.tile_expert[tile];
  for (int i = threadIdx.x; i < TT; i += kThreads) s_expanded[i] = a.permuted_to_expanded[tile * TT + i];

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, q = lane % 4;
  const int wg = warp / 4;  // warpgroup: token columns wg * kN ..
  const int feat0 = blockIdx.y * 128 + (warp % 4) * 32;

  const LaneWeights<kMT, WF, ST> lw(a, expert, feat0, g);
  const auto& mt_valid = lw.valid;

  float acc[kMT][kNT][4];
  ZeroAccumulators(acc);

  const uint32_t s_base = wgmma::SmemAddress(s_act);
  constexpr uint32_t kLead = wgmma::BLeadingBytes(TT);
  uint8_t* const s_bytes = reinterpret_cast<uint8_t*>(s_act);

  for (int k0 = 0; k0 < a.k_dim; k0 += KC) {
    __syncthreads();  // the previous chunk's MMAs are complete (waited below); s_expanded is visible
    // Stage [TT tokens x KC] as bf16. Group `it`: token n, K block b, lane
    // q's word j; its 4 bf16x2 pairs feed steps 8b + 2j (.x, .y) and
    // 8b + 2j + 1 (.z, .w), core-matrix columns 16b + 4j .. + 3, at slot
    // pair q. The low 5 bits of `it` walk (n & 7, q): a warp's 4-byte stores
    // cover all 32 banks.
    for (int it = threadIdx.x; it < TT * (KC / 8); it += kThreads) {
      const int n_lo = it & 7, lq = (it >> 3) & 3, j = (it >> 5) & 3, rest = it >> 7;
      const int b = rest % kBlocksPerChunk, n = (rest / kBlocksPerChunk) * 8 + n_lo;
      const int k = k0 + kKBlock * b + 32 * lq + 8 * j;
      const int ex = s_expanded[n];
      uint4 v = make_uint4(0, 0, 0, 0);  // padding rows and K tails stay zero
      if (ex >= 0 && k < a.k_dim) {
        const int64_t src = a.gather_tokens ? ex / a.top_k : static_cast<int64_t>(tile) * TT + n;
        v = LoadActivationGroup(a, src, k);
      }
      const int kc0 = 16 * b + 4 * j;
      *reinterpret_cast<uint32_t*>(s_bytes + wgmma::BWordOffset(TT, n, kc0 + 0, lq)) = v.x;
      *reinterpret_cast<uint32_t*>(s_bytes + wgmma::BWordOffset(TT, n, kc0 + 1, lq)) = v.y;
      *reinterpret_cast<uint32_t*>(s_bytes + wgmma::BWordOffset(TT, n, kc0 + 2, lq)) = v.z;
      *reinterpret_cast<uint32_t*>(s_bytes + wgmma::BWordOffset(TT, n, kc0 + 3, lq)) = v.w;
    }
    wgmma::FenceSharedForAsync();
    __syncthreads();

    const int kend = min(k0 + KC, a.k_dim);
    for (int kb = k0; kb < kend; kb += kKBlock) {
      const int k = kb + 32 * q;
      WeightQuad wq[kMT][2];
      lw.Load(k, a.k_dim, wq);
      const int step0 = ((kb - k0) / kKBlock) * 8;
#pragma unroll
      for (int j = 0; j < 4; ++j)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          uint32_t af[kMT][2][2];
#pragma unroll
          for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
            for (int r = 0; r < 2; ++r) DecodeWordHalf<WF>(wq[mt][r], j, h, af[mt][r]);
          const int step = step0 + 2 * j + h;
          const uint64_t desc =
              wgmma::Descriptor(s_base + 2u * step * kLead + wg * (kN / 8) * 128u, kLead, wgmma::kBStrideBytes);
          wgmma::Fence();
#pragma unroll
          for (int mt = 0; mt < kMT; ++mt)
            wgmma::MmaRs<kN>(acc[mt], af[mt][0][0], af[mt][1][0], af[mt][0][1], af[mt][1][1], desc);
          wgmma::Commit();
          // Drain before the next step: keeping a second group in flight
          // (wait_group 1) holds its A fragments live too, and GEMM1 then
          // spills (ptxas, 255 registers). The warpgroups of the other
          // resident block fill the tensor pipe meanwhile.
          wgmma::Wait<0>();
        }
    }
    wgmma::Wait<0>();
  }
  // Every warp took part in every MMA (wgmma is warpgroup-wide); only warps
  // with live features write.
  if (feat0 >= a.n_dim) return;
  GemmEpilogue<kMT, kNT, WF, ST>(a, acc, mt_valid, s_expanded, wg * kN, static_cast<int64_t>(tile) * TT, feat0,
                                 expert);
}

// Grid: x = token tiles (worst case from static shapes), y = groups of 128 features.
template <int TT, int KC, Format WF, GemmStage ST>
cudaError_t LaunchWgmmaGemm(const GemmArgs& a, int64_t max_tiles, cudaStream_t stream) {
#ifdef JAX_MOE_CUDA_ARCH
  // wgmma exists on sm_90a only; other builds compile the kernel as a trap.
  if (std::string_view(JAX_MOE_CUDA_ARCH) != "sm_90a") return cudaErrorNotSupported;
#endif
  constexpr int kThreads = 128 * (TT / gemm_detail::WgmmaN<TT, ST>());
  const dim3 grid(static_cast<unsigned>(max_tiles), static_cast<unsigned>((a.n_dim + 127) / 128));
  WgmmaSwapAbGemmKernel<TT, KC, WF, ST><<<grid, kThreads, 0, stream>>>(a);
  return cudaGetLastError();
}

}  // namespace jax_moe::cuda
