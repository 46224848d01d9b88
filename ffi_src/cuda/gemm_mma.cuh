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
//
// Weight ring (WS > 0 stages): at small token tiles the kernel is bound by
// the latency of its weight loads, not by decode or MMA issue: each warp's
// loads for one K block were issued and waited for before it decoded them
// (one K block in flight per warp). With the ring each thread copies its own
// quads (16 bytes of codes, the aligned word holding its block scales) with
// cp.async into private shared-memory slots WS - 1 K blocks ahead and reads
// them back itself, so WS - 1 blocks of weights are in flight while it
// decodes, at no register cost. A thread reads only what it copied: the
// per-thread cp.async groups order it, no barrier is needed. The copies of
// every K block but the last one or two are unchecked (each lane's source
// pointers advance by a constant per K block); only the tail pays for the
// bounds checks (~240 -> ~50 instructions per K block; benchmarks/NOTES.md
// v6 measured what that bought at T = 1: little, the loop is not issue-bound).
//
// Split-K (grid.z > 1, cuda/split_k.cuh): when the tiles x feature blocks
// grid leaves the device under-filled (decode), block z runs only its share
// of the K blocks and the last split of each block combines the partial
// sums before the epilogue.
//
// Warps along K (KW > 1): KW groups of warps share the block's tile and
// features; group wk takes K blocks wk, wk + KW, ... of every chunk, with its
// own ring slots, and the groups' partial sums are added in shared memory
// (in group order: deterministic) before group 0 runs the epilogue. At T = 1
// the per-block prologue and the staging are shared by KW times as many warps
// and each warp's K loop, which one warp's instruction stream bounds
// (benchmarks/NOTES.md v9), is KW times shorter. Such rows neither prefetch
// activations nor split K across blocks (SplitKLimit): a build whose KW
// kernels could also split ran them 10-30% slower even unsplit (NOTES v10).
#pragma once

#include "cuda/cp_async.cuh"
#include "cuda/dependent_launch.cuh"
#include "cuda/dynamic_smem.cuh"
#include "cuda/gemm_common.cuh"
#include "cuda/split_k.cuh"

namespace jax_moe::cuda {

namespace gemm_mma_detail {

// Bytes of the weight ring: per stage, m-tile, row half and thread, 16 bytes
// of codes and one 4-byte scale word.
template <int TT, int TW, int WN, int WS, int KW, GemmStage ST>
constexpr int RingSmemBytes() {
  return WS * gemm_detail::WarpMTiles<ST>() * 2 * 32 * (TT / TW) * WN * KW * (16 + 4);
}

// Bytes of the warps-along-K reduction: groups 1..KW-1 leave their
// accumulators there for group 0 (reusing the ring once every warp is done).
template <int TT, int TW, int WN, int KW, GemmStage ST>
constexpr int KReduceSmemBytes() {
  return (KW - 1) * gemm_detail::WarpMTiles<ST>() * (TW / 8) * 4 * 32 * (TT / TW) * WN * 4;
}

// The activation prefetch (MmaSwapAbGemmKernel): tiles of <= 16 tokens whose
// chunks hold >= WS K blocks, except GEMM1's ring kernels; and the bytes of
// one staged chunk buffer. Why not GEMM1 with a ring (measured, H200, NOTES
// v8): its ring is 4 m-tiles deep (80 KiB for t8_n128_r4), two blocks per SM
// then need ~182 KB of shared memory with one activation buffer and ~200 KB
// with two; our reading is that this moves the carveout from 196 to 228 KB,
// leaving L1 28 KB instead of 60 KB for the ring's cp.async.ca scale words.
// Measured: GEMM1 10-18% slower with the prefetch (DeepSeek-V3 T = 1 90.6 ->
// 106.1 us), while GEMM2's ring (2 m-tiles: 4 -> 3 blocks per SM, more L1)
// gains 6-14% at most shapes.
template <int TT, int KC, int WS, int KW, GemmStage ST>
constexpr bool ActPrefetchable() {
  return KW == 1 && TT <= 16 && WS <= KC / gemm_detail::kKBlock && !(ST == GemmStage::kGemm1 && WS > 0);
}
template <int TT, int KC>
constexpr int ActBufferBytes() {
  return TT * (KC / 8 + 4) * 16;
}

// The ring copies whole 16-byte code chunks and takes a quad's NVFP4 scale
// pair from one aligned 4-byte word: both hold when rows are 16-byte aligned
// (K % 32 == 0, weight base 16-byte aligned, scale rows an even number of
// bytes). Other problems run the ring-less kernel of the same tile.
inline bool RingFits(const GemmArgs& a) {
  return a.k_dim % 32 == 0 && reinterpret_cast<uintptr_t>(a.w) % 16 == 0 &&
         reinterpret_cast<uintptr_t>(a.w_scale) % 4 == 0;
}

}  // namespace gemm_mma_detail

template <int TT, int TW, int WN, int KC, int WS, int KW, Format WF, GemmStage ST>
__global__ void __launch_bounds__(32 * (TT / TW) * WN * KW)
    MmaSwapAbGemmKernel(const GemmArgs a) {
  using namespace gemm_detail;
  constexpr int kWarpsT = TT / TW, kNT = TW / 8;
  constexpr int kMT = WarpMTiles<ST>();
  constexpr int kGroupThreads = 32 * kWarpsT * WN;  // one K group: the whole tile x features
  constexpr int kThreads = kGroupThreads * KW;
  static_assert(KW >= 1 && (KC / kKBlock) % KW == 0, "each K group takes whole K blocks of every chunk");
  constexpr int kRowVec = KC / 8 + 4;  // 16-byte slots per staged row; +64 B keeps LDS.128 conflict-free
  static_assert(TT % TW == 0 && TW % 8 == 0 && KC % kKBlock == 0, "bad tactic");
  // Activation prefetch (bf16 activations): chunk c + 1 is copied with
  // cp.async into the second buffer while chunk c computes, instead of a
  // global round trip between two barriers at every chunk (DeepSeek-V3
  // GEMM1 has 14 chunks at T = 1). The copies join the weight ring's group
  // of the chunk's first K block; the ring's own waits complete that group
  // before the chunk ends when a chunk holds >= WS K blocks. Small tiles
  // only, and not GEMM1's ring kernels (ActPrefetchable: slower there). The
  // second buffer is static in the ring-less kernels; GEMM2's ring kernels
  // get it after the ring in the dynamic allocation, sized at launch only
  // when the prefetch runs, so with JAX_MOE_ACT_PREFETCH=0 they keep the
  // ring-only shared-memory footprint.
  constexpr bool kActPrefetch = gemm_mma_detail::ActPrefetchable<TT, KC, WS, KW, ST>();
  constexpr int kActStaticBufs = kActPrefetch && WS == 0 ? 2 : 1;
  static_assert(kActStaticBufs * TT * kRowVec * 16 + TT * 4 <= 48 * 1024, "staging must fit static shared memory");
  static_assert(gemm_mma_detail::ActBufferBytes<TT, KC>() == TT * kRowVec * 16, "one staged chunk");

  __shared__ uint4 s_act_static[kActStaticBufs][TT * kRowVec];
  __shared__ int32_t s_expanded[TT];
  extern __shared__ uint4 ring_smem[];
  uint4* const s_act0 = s_act_static[0];
  uint4* const s_act1 = kActStaticBufs == 2
                            ? s_act_static[kActStaticBufs - 1]
                            : ring_smem + gemm_mma_detail::RingSmemBytes<TT, TW, WN, WS, KW, ST>() / 16;
  auto s_act = [&](int b) { return b ? s_act1 : s_act0; };

  // Dependent launch (cuda/dependent_launch.cuh; no-ops unless enabled):
  // GEMM1 needs permute's maps at once; GEMM2 reads them (permute finished
  // before GEMM1 let it start), starts streaming its weights while GEMM1
  // finishes, and waits only before it reads h.
  constexpr bool kEarlyWeights = ST == GemmStage::kGemm2;
  if constexpr (!kEarlyWeights) {
    WaitForPredecessor();
    AllowDependents();
  }
  const int tile = blockIdx.x;
  if (tile >= *a.num_tiles) return;  // beyond the live tiles (device-side count)
  const int expert = a.tile_expert[tile];
  for (int i = threadIdx.x; i < TT; i += kThreads) s_expanded[i] = a.permuted_to_expanded[tile * TT + i];

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, q = lane % 4;
  const int wt = warp % kWarpsT, wn = (warp / kWarpsT) % WN, wk = warp / (kWarpsT * WN);
  const int feat0 = (blockIdx.y * WN + wn) * 32;
  const bool warp_active = feat0 < a.n_dim;

  // Weight rows of this lane: m-tile mt covers 16 rows; the lane reads rows g and g+8.
  const int64_t k_bytes = a.k_dim / 2;
  const int64_t scale_cols = a.k_dim / BlockSize(WF);
  const bool aligned16 = (k_bytes % 16) == 0, scale_pairs = (scale_cols % 2) == 0;
  // This block's K range: whole K blocks of 128, split z of gridDim.z.
  const int num_kb_total = (a.k_dim + kKBlock - 1) / kKBlock;
  const KSplit split = KBlocksOfSplit(num_kb_total, blockIdx.z, gridDim.z);
  const int k_begin = split.first * kKBlock, k_end = min(split.end * kKBlock, a.k_dim);
  const int num_kb = split.end - split.first;  // this split's K blocks; kbi counts from k_begin
  // This warp's K blocks: wk, wk + KW, ... (kbi), the i-th of them in ring stage i % WS.
  bool mt_valid[kMT];
  auto weight_row = [&](int mt, int r) {
    const int feature = MTileFeature<ST>(feat0, mt);
    return static_cast<int64_t>(expert) * a.w_rows_per_expert + MTileWeightRow<ST>(feature, mt, a.n_dim) + g + 8 * r;
  };
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) mt_valid[mt] = MTileFeature<ST>(feat0, mt) < a.n_dim;

  float acc[kMT][kNT][4];
  ZeroAccumulators(acc);

  // Where this lane's quads come from. Ring-less (WS == 0): each row's codes
  // and scales. Ring: the lane's quad of K block 0 of the split and the
  // aligned word holding its scale byte(s); block kbi is kbi * 64 (codes)
  // and kbi * kScaleStep (scales) bytes further, so the bytes' offset in
  // their word, and so the QuadScaleSelector, is the same for every K block
  // and for rows g and g + 8 (8 * scale_cols is a multiple of 4 when K % 32
  // == 0, which RingFits guarantees); only the up rows of GEMM1 (n_dim rows
  // on) may differ, hence one selector per m-tile.
  constexpr int kScaleStep = kKBlock / BlockSize(WF);
  const uint8_t* wsrc[kMT][2];
  const uint8_t* ssrc[kMT][2];
  uint32_t scale_sel[kMT];
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int64_t row = weight_row(mt, r);
      if constexpr (WS > 0) {
        const int k_lane = k_begin + 32 * q;
        wsrc[mt][r] = a.w + row * k_bytes + k_lane / 2;
        const uint8_t* sp = a.w_scale + row * scale_cols + k_lane / BlockSize(WF);
        ssrc[mt][r] = reinterpret_cast<const uint8_t*>(reinterpret_cast<uintptr_t>(sp) & ~uintptr_t{3});
        if (r == 0) scale_sel[mt] = QuadScaleSelector<WF>(static_cast<uint32_t>(reinterpret_cast<uintptr_t>(sp) & 3u));
      } else {
        wsrc[mt][r] = a.w + row * k_bytes;
        ssrc[mt][r] = a.w_scale + row * scale_cols;
      }
    }

  // The weight ring (WS > 0): slot (stage, mt, r) of this thread. Codes
  // first, then the scale words, each [WS][kMT][2][kThreads] so a warp's
  // accesses are consecutive 16- (4-) byte words.
  constexpr int kRing = WS > 0 ? WS : 1;  // (the ring-less kernel never touches it)
  constexpr int kStageSlots = kMT * 2 * kThreads;
  uint4* const ring_codes = ring_smem + threadIdx.x;
  uint32_t* const ring_scales = reinterpret_cast<uint32_t*>(ring_smem + kRing * kStageSlots) + threadIdx.x;
  // Blocks from this one on are "checked": a lane's quad may lie past K
  // (zero-filled, nothing read) or its 4-byte scale word may run past its
  // row's end (clamped). Before it every quad is inside K and every word
  // inside its row: NVFP4 words end <= 4 bytes after the quad's 2 scale
  // bytes and the next K block holds >= 2 more; MXFP4 words may end 3 bytes
  // after the quad's byte, which only a full next block (4 bytes) covers.
  const int first_checked =
      num_kb_total - 1 - ((WF == Format::kMXFP4 && a.k_dim % kKBlock != 0) ? 1 : 0) - split.first;
  // Copies K block kbi's quads into ring stage `stage`.
  auto ring_issue = [&](int kbi, int stage) {
    uint4* const codes = ring_codes + stage * kStageSlots;
    uint32_t* const scales = ring_scales + stage * kStageSlots;
    if (kbi < first_checked) {
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt) {
        if (!mt_valid[mt]) continue;
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          CpAsync16(&codes[(mt * 2 + r) * kThreads], wsrc[mt][r] + kbi * (kKBlock / 2), 16);
          CpAsync4(&scales[(mt * 2 + r) * kThreads], ssrc[mt][r] + kbi * kScaleStep, 4);
        }
      }
      return;
    }
    const bool valid = k_begin + kbi * kKBlock + 32 * q < a.k_dim;
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt) {
      if (!mt_valid[mt]) continue;
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const uint8_t* word = ssrc[mt][r] + kbi * kScaleStep;
        const uint8_t* row_end = a.w_scale + (weight_row(mt, r) + 1) * scale_cols;
        CpAsync16(&codes[(mt * 2 + r) * kThreads], valid ? wsrc[mt][r] + kbi * (kKBlock / 2) : a.w, valid ? 16 : 0);
        CpAsync4(&scales[(mt * 2 + r) * kThreads], valid ? word : a.w_scale,
                 valid ? min(4, static_cast<int>(row_end - word)) : 0);
      }
    }
  };
  // L2 prefetch (off by default): the lines of K block kbi's quads (codes
  // and scale words), issued a.l2_prefetch_kb blocks beyond the loads in
  // flight (the ring's WS - 1, or the ring-less kernel's current block), so
  // each warp keeps more DRAM requests outstanding at no register cost. The
  // idea: the decode GEMMs ran at 1.2 TB/s, half of a load-only probe of the
  // same warps (NOTES v5, v6). Measured (NOTES v7): 5-50% slower at 2 and 8
  // blocks ahead, so JAX_MOE_L2_PREFETCH=n is an experiment knob. Only
  // blocks before first_checked, whose every quad lies inside its row.
  constexpr int kInFlight = WS > 0 ? WS - 1 : 0;
  auto l2_prefetch = [&](int kb) {
    if (kb >= first_checked || kb >= num_kb) return;
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt) {
      if (!mt_valid[mt]) continue;
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        if constexpr (WS > 0) {
          PrefetchL2(wsrc[mt][r] + kb * (kKBlock / 2));
          PrefetchL2(ssrc[mt][r] + kb * kScaleStep);
        } else {
          const int k = k_begin + kb * kKBlock + 32 * q;
          PrefetchL2(wsrc[mt][r] + k / 2);
          PrefetchL2(ssrc[mt][r] + k / BlockSize(WF));
        }
      }
    }
  };
  const int l2_ahead = a.l2_prefetch_kb;
  if constexpr (WS > 0) {
    if (warp_active)
#pragma unroll
      for (int s = 0; s < WS - 1; ++s) {
        if (wk + KW * s < num_kb) ring_issue(wk + KW * s, s);
        CpAsyncCommit();  // empty groups too: the wait below counts groups
      }
  }
  if (warp_active)
    for (int d = 0; d < l2_ahead; ++d) l2_prefetch(wk + KW * (kInFlight + d));
  if constexpr (kEarlyWeights) {
    WaitForPredecessor();  // h (GEMM1's output) and the split-K tickets from here on
    AllowDependents();
  }
  int read_stage = 0;  // (this warp's K blocks so far) % kRing

  // act_async: this call prefetches activations (bf16 and the host allowed
  // it: 16-byte aligned rows); s_act then holds raw bf16 groups, put in MMA
  // order when read (DecodeActGroupAs<kBF16>: 4 byte permutes).
  const bool act_async = kActPrefetch && a.act_prefetch;  // the launcher checked format and alignment
  auto act_source = [&](int row, int k, bool* ok) {
    const int ex = s_expanded[row];
    *ok = ex >= 0 && k < k_end;
    const int64_t src = a.gather_tokens ? ex / a.top_k : static_cast<int64_t>(tile) * TT + row;
    return src;
  };
  int buf = 0;  // the s_act buffer of this chunk
  for (int k0 = k_begin; k0 < k_end; k0 += KC) {
    if (act_async && k0 != k_begin && (WS == 0 || !warp_active)) CpAsyncWait<0>();  // this chunk's copies
    __syncthreads();  // the previous chunk is consumed; s_expanded and this chunk's copies are visible
    if (!act_async || k0 == k_begin) {
      // Stage activations [TT tokens x KC] as bf16 in MMA order (zeros past K
      // and for padding rows, so no garbage can reach an accumulator).
      for (int it = threadIdx.x; it < TT * (KC / 8); it += kThreads) {
        const int row = it / (KC / 8), grp = it % (KC / 8), k = k0 + 8 * grp;
        bool ok = false;
        const int64_t src = act_source(row, k, &ok);
        uint4 v = make_uint4(0, 0, 0, 0);
        if (ok) v = act_async ? LoadRawActGroup(a, src, k).v : LoadActivationGroup(a, src, k);
        s_act(buf)[row * kRowVec + StagedSlot(grp)] = v;
      }
      __syncthreads();
    }
    if (act_async && k0 + KC < k_end) {
      // The next chunk's raw groups into the other buffer (every thread: the
      // loop is block-wide; zero-filled where the sync path stores zeros).
      for (int it = threadIdx.x; it < TT * (KC / 8); it += kThreads) {
        const int row = it / (KC / 8), grp = it % (KC / 8), k = k0 + KC + 8 * grp;
        bool ok = false;
        const int64_t src = act_source(row, k, &ok);
        CpAsync16(&s_act(buf ^ 1)[row * kRowVec + StagedSlot(grp)],
                  ok ? a.a_data + src * a.a_row_bytes + 2 * static_cast<int64_t>(k) : a.a_data, ok ? 16 : 0);
      }
      if (WS == 0 || !warp_active) CpAsyncCommit();  // else: with the ring's next group
    }
    const int cur = buf;
    if (act_async) buf ^= 1;
    if (!warp_active) continue;
    const int kend = min(k0 + KC, k_end);
    for (int kb = k0 + wk * kKBlock; kb < kend; kb += KW * kKBlock) {
      const int kbi = (kb - k_begin) / kKBlock;  // K block index within this split
      const int k = kb + 32 * q;
      if (l2_ahead > 0) l2_prefetch(kbi + KW * (kInFlight + l2_ahead));
      WeightQuad wq[kMT][2];
      uint32_t sc[kMT][2];  // QuadScalePair of each quad
      if constexpr (WS > 0) {
        // Refill the stage read one K block ago, then wait for this block's.
        const int refill_stage = read_stage == 0 ? kRing - 1 : read_stage - 1;
        if (kbi + KW * (WS - 1) < num_kb) ring_issue(kbi + KW * (WS - 1), refill_stage);
        CpAsyncCommit();
        CpAsyncWait<WS - 1>();
        const uint4* const codes = ring_codes + read_stage * kStageSlots;
        const uint32_t* const scales = ring_scales + read_stage * kStageSlots;
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
          for (int r = 0; r < 2; ++r) {
            wq[mt][r] = WeightQuad{make_uint4(0, 0, 0, 0), 0u};
            if (!mt_valid[mt]) continue;
            wq[mt][r].codes = codes[(mt * 2 + r) * kThreads];
            wq[mt][r].scales = scales[(mt * 2 + r) * kThreads];
          }
        // (Converted in a second pass, like the ring-less loads below.)
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
          for (int r = 0; r < 2; ++r) sc[mt][r] = QuadScalePair<WF>(wq[mt][r].scales, scale_sel[mt]);
        read_stage = read_stage == kRing - 1 ? 0 : read_stage + 1;
      } else {
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
          for (int r = 0; r < 2; ++r)
            wq[mt][r] = mt_valid[mt] ? LoadWeightQuad<WF>(wsrc[mt][r], ssrc[mt][r], k, a.k_dim, aligned16, scale_pairs)
                                     : WeightQuad{make_uint4(0, 0, 0, 0), 0u};
        // Every load is issued before any result is used: LoadWeightQuad's
        // branches keep the compiler from hoisting loads over code placed
        // between them, and converting each quad's scales right after its
        // load serialized the 8 load latencies (T = 64 GEMMs 1.6x slower).
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
          for (int r = 0; r < 2; ++r) sc[mt][r] = QuadScalePair<WF>(wq[mt][r]);
      }
      const int slot0 = ((kb - k0) / kKBlock) * 16 + q;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        uint32_t af[kMT][2][4];
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
          for (int r = 0; r < 2; ++r) DecodeWord<WF>(wq[mt][r], j, sc[mt][r], af[mt][r]);
#pragma unroll
        for (int nt = 0; nt < kNT; ++nt) {
          const uint4 raw = s_act(cur)[(wt * TW + nt * 8 + g) * kRowVec + slot0 + 4 * j];
          const uint4 bv = act_async ? DecodeActGroupAs<Format::kBF16>(RawActGroup{raw, 0u}) : raw;
#pragma unroll
          for (int mt = 0; mt < kMT; ++mt) {
            if (!mt_valid[mt]) continue;
            MmaDecodedWord(acc[mt][nt], af[mt], bv);
          }
        }
      }
    }
  }
  if constexpr (KW > 1) {
    // The K groups' sums meet in shared memory (the ring's, or the
    // launcher's allocation of KReduceSmemBytes): groups 1.. store, group 0
    // adds them in group order. Every copy was waited for (the last K
    // blocks' waits; later groups are empty) before the barrier lets the
    // ring be overwritten.
    if constexpr (WS > 0) CpAsyncWait<0>();
    __syncthreads();
    constexpr int kAcc = kMT * kNT * 4;
    float* const red = reinterpret_cast<float*>(ring_smem) + threadIdx.x % kGroupThreads;
    if (wk > 0 && warp_active) {
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
        for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
          for (int i = 0; i < 4; ++i)
            red[((wk - 1) * kAcc + (mt * kNT + nt) * 4 + i) * kGroupThreads] = acc[mt][nt][i];
    }
    __syncthreads();
    if (wk > 0 || !warp_active) return;
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
          for (int w = 1; w < KW; ++w) acc[mt][nt][i] += red[((w - 1) * kAcc + (mt * kNT + nt) * 4 + i) * kGroupThreads];
  } else {
    if (gridDim.z > 1 && !CombineKSplits<kMT, kNT>(a, acc, warp_active)) return;
    if (!warp_active) return;
  }

  GemmEpilogue<kMT, kNT, WF, ST>(a, acc, mt_valid, s_expanded, wt * TW, static_cast<int64_t>(tile) * TT,
                                 feat0, expert);
}

// Grid: x = token tiles (worst case from static shapes), y = feature blocks,
// z = K splits (KSplits, up to a.split_k_limit).
template <int TT, int TW, int WN, int KC, int WS, int KW, Format WF, GemmStage ST>
cudaError_t LaunchMmaSwapAbGemm(const GemmArgs& a, int64_t max_tiles, cudaStream_t stream) {
  constexpr int kThreads = 32 * (TT / TW) * WN * KW;
  constexpr auto kKernel = MmaSwapAbGemmKernel<TT, TW, WN, KC, WS, KW, WF, ST>;
  // Dynamic shared memory: the ring, and after it the prefetch's second
  // activation buffer when it runs (ring kernels only); the K groups'
  // reduction reuses the ring, or is all of it in ring-less rows.
  constexpr int kReduceBytes = KW > 1 ? gemm_mma_detail::KReduceSmemBytes<TT, TW, WN, KW, ST>() : 0;
  constexpr int kRingBytes = gemm_mma_detail::RingSmemBytes<TT, TW, WN, WS, KW, ST>();  // 0 without a ring
  constexpr int kActBytes = WS > 0 && gemm_mma_detail::ActPrefetchable<TT, KC, WS, KW, ST>()
                                ? gemm_mma_detail::ActBufferBytes<TT, KC>()
                                : 0;
  static_assert(WS == 0 || kRingBytes >= kReduceBytes, "the reduction fits in the ring");
  dim3 grid(static_cast<unsigned>(max_tiles), static_cast<unsigned>((a.n_dim + 32 * WN - 1) / (32 * WN)));
  GemmArgs args = a;  // the activation prefetch: bf16 rows, 16-byte aligned for cp.async
  args.act_prefetch = a.act_prefetch && a.act_format == Format::kBF16 && a.a_row_bytes % 16 == 0 &&
                      reinterpret_cast<uintptr_t>(a.a_data) % 16 == 0;
  int smem = kReduceBytes;
  if constexpr (WS > 0) {
    if (!gemm_mma_detail::RingFits(a)) return LaunchMmaSwapAbGemm<TT, TW, WN, KC, 0, KW, WF, ST>(a, max_tiles, stream);
    smem = kRingBytes + (args.act_prefetch ? kActBytes : 0);
  }
  // The opt-in covers the largest launch (it is set once per device and kernel).
  if (smem > 0) {
    if (const cudaError_t e = EnsureDynamicSmem<kKernel>(WS > 0 ? kRingBytes + kActBytes : kReduceBytes);
        e != cudaSuccess)
      return e;
  }
  if (const int limit = KW > 1 ? 1 : MaxKSplitsFromEnv(a.split_k_limit); limit > 1) {
    int sms = 0;
    if (const cudaError_t e = DeviceSms(&sms); e != cudaSuccess) return e;
    const int num_kb = (a.k_dim + gemm_detail::kKBlock - 1) / gemm_detail::kKBlock;
    grid.z = static_cast<unsigned>(KSplits(static_cast<int64_t>(grid.x) * grid.y, sms, limit, num_kb));
    if (grid.z > 1) NoteKSplits(static_cast<int>(grid.z));
  }
  // Always after a kernel (GEMM1 after permute, GEMM2 after GEMM1): a
  // dependent when JAX_MOE_DEPENDENT_LAUNCH=1 (the kernel waits either way).
  return LaunchDependent(true, kKernel, grid, dim3(kThreads), smem, stream, args);
}

}  // namespace jax_moe::cuda
