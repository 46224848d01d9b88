// The register-A, cp.async-fed wgmma grouped GEMM (KernelFamily::kCudaWgmmaRs):
// the prefill family, for both GEMM1 (+ activation) and GEMM2, with the
// staged family's epilogue.
//
// Why: the warp-specialised family (gemm_wgmma_ws.cuh) decodes every FP4
// weight once per block in one producer warpgroup and writes it to shared
// memory as bf16; profiled, its consumers waited on that producer (v3: 46%
// of their time), and it reached 17-28% of the bf16 matmul rate. Here the
// bytes are moved and the weights decoded where they are used:
//   - warpgroup 0 (producer) issues cp.async: each 64-element K stage
//     of the block's 256 weight rows in their packed form (32 bytes a row,
//     4x fewer than decoded) and of the token tile as raw bf16 (gathered by
//     token for GEMM1, the permuted h rows for GEMM2) into a ring of kStages
//     shared-memory stages; kStages - 3 stages are in flight while the
//     consumers work on the two oldest (the one they multiply and the one
//     whose last MMAs are still queued). It also converts each stage's block
//     scales into bf16x2 pairs beside them (one thread a row, against every
//     consumer thread of a row converting its own before: NOTES v15);
//   - warpgroups 1 and 2 (consumers) each own 128 weight rows: per k16 step
//     they read their packed rows from shared memory (8 bytes a row), decode
//     the A fragments in registers (DecodeE2m1Byte + the block scale: one
//     bf16 multiply) and issue wgmma m64n128k16 with A in registers and the
//     128 tokens from shared memory (the 128-byte-swizzled layout the raw
//     16-byte copies land in). Each k16 step of a stage has its own set of A
//     fragment registers: step s is decoded while steps s - 3 .. s - 1 are
//     still queued on the tensor cores (wait_group 3).
// So the decode is paid once per 128 tokens, by the warps that multiply, and
// overlaps the tensor cores; nothing decoded goes through shared memory.
//
// K order: the token tile sits in shared memory in natural K order (raw
// copies), so the weights are decoded in natural order too: lane q takes
// byte q of each 4-byte word (elements 2q, 2q + 1 of each 8-element chunk),
// which is the m64nNk16 A fragment's (k = 2q, 2q + 1 | 2q + 8, 2q + 9).
//
// Work item: 128 tokens x 256 weight rows of feature block fb. GEMM1:
// consumer c, m-tile 0 = gate rows of features F + 64c .. + 63 (F = 128 fb),
// m-tile 1 = their up rows, so a thread holds gate and up of the same
// (feature, token) and GemmEpilogue's one-pair layout (kMT = 2) applies.
// GEMM2: consumer c, m-tile mt = output features F + 128c + 64mt .. + 63
// (F = 256 fb). The 256-token tile (TT = 256) keeps the 128 accumulators a
// thread with one m-tile a consumer (128 weight rows a block, wgmma
// m64n256k16): each decoded A fragment feeds twice the tokens, so the FP4
// decode per multiply halves (the decode was a third of the main loop: the
// loop ran 2060-2270 cycles a stage with it, 1360-1530 without, NOTES v14).
// GEMM1 then holds gate and up of one feature in rows g / g + 8 of each
// warp (BlockWeightRow). A tile whose second 128 tokens are padding runs
// the m64n128k16 loop on its first half (the main loop exists for both N,
// chosen once per item: RsTileHalves), so padding costs what it costs the
// 128-token tile. kPersistent = false: one item per block (x = tile, y = fb);
// true (KernelFamily::kCudaWgmmaRsPersistent): one block per SM walks the
// items, and its producer runs on into the next item's stages while the
// consumers run the epilogue, so the ring is full again when the epilogue
// ends (the epilogue itself still leaves the tensor cores idle); with the
// feature block fastest the token tiles stay in L2 across feature blocks
// (measured: gpt-oss-120b GEMM1 at T = 16384 11.3 -> 9.3 ms, NOTES v12).
//
// Scope: bf16 (and, 128-token tile, MXFP8) activations, K % 64 == 0 in both
// GEMMs (whole stages, 16-byte aligned rows and aligned scale words).
// LaunchWgmmaRsGemm runs the warp-specialised kernel of the same token tile
// for any other problem, so the 128-token rows serve every problem like
// every other row; the 256-token row has no such kernel and is an invalid
// tactic outside its scope (TacticInvalidReason).
#pragma once

#include <algorithm>
#include <string_view>
#include <type_traits>

#include "cuda/cp_async.cuh"
#include "cuda/dynamic_smem.cuh"
#include "cuda/gemm_common.cuh"
#include "cuda/gemm_rs_epilogue.cuh"
#include "cuda/gemm_wgmma_ws.cuh"
#include "cuda/launch_counters.h"
#include "cuda/rs_stamps.cuh"
#include "cuda/split_k.cuh"
#include "cuda/wgmma.cuh"

namespace jax_moe::cuda {

namespace gemm_rs_detail {

using namespace gemm_detail;

constexpr int kKStage = 64;  // K elements per stage: one 128-byte swizzled token row
constexpr int kWarpgroup = 128;
constexpr int kThreads = 3 * kWarpgroup;  // producer + 2 consumers
// Weight rows of a block: two consumers x RsMTiles<TT> m64 tiles (256 for
// TT = 128, 128 for TT = 256).
template <int TT>
constexpr int kRows = 2 * RsMTiles<TT>() * 64;
constexpr int kRowBytes = kKStage / 2;    // packed FP4 bytes of one row per stage
constexpr int kScaleSlotBytes = 8;        // a row's converted scales per stage (2 x bf16x2)
// setmaxnreg: the block starts with 65536 / 384 -> 168 registers a thread;
// the producer keeps 56 and the consumers take the rest of the pool:
// (384 * 168 - 128 * 56) / 256 = 224.
constexpr int kProducerRegs = 56;
constexpr int kConsumerRegs = 224;
static_assert(kThreads * 168 >= kWarpgroup * kProducerRegs + 2 * kWarpgroup * kConsumerRegs,
              "setmaxnreg: the consumers cannot take more than the producer gave back");

template <int TT>
struct RsShape {
  static_assert(TT == 128 || TT == 256, "one consumer's wgmma N is the whole token tile");
  static constexpr int kABytes = kRows<TT> * kRowBytes;  // 8 / 4 KB of packed weights
  static constexpr int kBBytes = TT * kKStage * 2;       // 16 / 32 KB of bf16 tokens
  // The stage's block scales of every row, converted by the producer
  // (RsProduce): two bf16x2 words a row (StageScalePairs).
  static constexpr int kScaleBytes = kRows<TT> * kScaleSlotBytes;
  static constexpr int kStageBytes = kABytes + kBBytes + kScaleBytes;
  static_assert(kABytes % 1024 == 0 && kStageBytes % 1024 == 0, "swizzle atoms are 1024-byte aligned");
  // MXFP8 activations: each stage's token rows arrive raw (64 e4m3 bytes a
  // row) with their two ue8m0 scale bytes in a second ring, and the producer
  // converts them into the bf16 stage (RsConvertMxfp8Row).
  static constexpr int kRawRowBytes = kKStage;
  static constexpr int kRawBytes = TT * kRawRowBytes + TT * 2;
  // GEMM1 with MXFP8 h: per consumer, [4 warps][TT tokens] amaxes (GemmEpilogue's MxAmaxExchange).
  static constexpr int kAmaxBytes = 2 * 4 * TT * 4;
};

// Named barriers: 0 (__syncthreads), FULL 1 .. kStages, EMPTY kStages + 1 .. 2 kStages, then the
// producer's own (MXFP8 conversion) and one per consumer (MXFP8 h amaxes).
template <int kStages>
constexpr int kProducerBarrier = 2 * kStages + 1;
template <int kStages>
constexpr int kConsumerBarrier0 = 2 * kStages + 2;

// The ring (1024-byte aligned: up to 1023 bytes of slack ahead of it), then
// MXFP8: the raw ring and the amaxes; bf16: the two consumers' output staging
// (gemm_rs_epilogue.cuh).
template <int TT, int kStages, GemmStage ST>
constexpr int RsSmemBytes(bool raw_activations) {
  return 1024 + kStages * RsShape<TT>::kStageBytes +
         (raw_activations ? kStages * RsShape<TT>::kRawBytes + RsShape<TT>::kAmaxBytes : 2 * OutStageBytes<TT, ST>());
}

// Byte offset of 16-byte chunk h (0, 1) of block row r in a stage's weight
// area. Rows are 32 bytes; flipping the chunk on every other group of 4 rows
// puts the 8 rows one LDS.64 of a warp reads on distinct banks.
__device__ __forceinline__ uint32_t ARowOffset(int r, int h) {
  return static_cast<uint32_t>(r) * kRowBytes + (static_cast<uint32_t>(h ^ ((r >> 2) & 1)) << 4);
}

// One work item: a token tile and a feature block. The plain grid runs one
// per block (x = tile, y = feature block); the persistent grid walks items
// w = blockIdx.x, + gridDim.x, ... with the feature block fastest (tile =
// w / blocks, fb = w % blocks), so the items running at once share few
// token tiles (read from L2 by every feature block) and the tiles of one
// expert are neighbours (its weights are re-read from L2).
template <int TT, bool kPersistent, GemmStage ST>
struct RsWork {
  int count, n_fb;
  __device__ __forceinline__ explicit RsWork(const GemmArgs& a) {
    n_fb = FeatureBlocks<TT, ST>(a.n_dim);
    const int tiles = *a.num_tiles;  // the live tiles (device-side count)
    if constexpr (kPersistent) {
      const int work = tiles * n_fb;
      count = static_cast<int>(blockIdx.x) < work ? (work - 1 - static_cast<int>(blockIdx.x)) / gridDim.x + 1 : 0;
    } else {
      count = static_cast<int>(blockIdx.x) < tiles ? 1 : 0;
    }
  }
  __device__ __forceinline__ void Item(int i, int& tile, int& fb) const {
    if constexpr (kPersistent) {
      const int w = blockIdx.x + i * gridDim.x;
      tile = w / n_fb;
      fb = w % n_fb;
    } else {
      tile = blockIdx.x;
      fb = blockIdx.y;
    }
  }
};

// The 128-token halves of tile `tile` that hold tokens: a tile's rows are
// filled from its start (permute), so a 256-token tile whose row 128 is
// padding needs only its first half: the consumers multiply it with N = 128
// (the decode per multiply of the 128-token tile, but its padding too).
template <int TT>
__device__ __forceinline__ int RsTileHalves(const GemmArgs& a, int tile) {
  if constexpr (TT == 128) {
    return 1;
  } else {
    return a.permuted_to_expanded[static_cast<int64_t>(tile) * TT + 128] >= 0 ? 2 : 1;
  }
}

// Expert-local weight row of block row r (0 .. kRows - 1) of feature block
// fb and whether it exists. Two m-tiles a consumer (TT = 128): GEMM1's
// m-tile 0 holds gate rows, m-tile 1 the up rows of the same features.
// One m-tile (TT = 256): GEMM1's rows g (0..7) and g + 8 of each warp's 16
// are the gate and the up row of one feature, so a thread's accumulator
// rows g / g + 8 pair up in the epilogue.
template <int TT, GemmStage ST>
__device__ __forceinline__ int BlockWeightRow(const GemmArgs& a, int fb, int r, bool& valid) {
  if constexpr (RsMTiles<TT>() == 2) {
    const int c = r >> 7, mt = (r >> 6) & 1, R = r & 63;
    if constexpr (ST == GemmStage::kGemm1) {
      const int feature = fb * 128 + 64 * c + R;
      valid = feature < a.n_dim;
      return valid ? (mt == 0 ? feature : a.n_dim + feature) : 0;
    } else {
      const int feature = fb * 256 + 128 * c + 64 * mt + R;
      valid = feature < a.n_dim;
      return valid ? feature : 0;
    }
  } else {
    const int c = r >> 6, R = r & 63;
    if constexpr (ST == GemmStage::kGemm1) {
      const int feature = fb * 64 + 32 * c + 8 * (R >> 4) + (R & 7);
      valid = feature < a.n_dim;
      return valid ? ((R & 8) == 0 ? feature : a.n_dim + feature) : 0;
    } else {
      const int feature = fb * 128 + 64 * c + R;
      valid = feature < a.n_dim;
      return valid ? feature : 0;
    }
  }
}

// Token t's raw MXFP8 row of stage slot s -> its bf16 row of the stage, in
// natural K order and the token tile's swizzle. Pairs of e4m3 bytes become
// bf16x2 through E4m3PairToFoldedBf16x2 (value * 2^119, exact), times 2^-119
// and the block's 2^(e - 127): both exact (products of at most 4
// significant bits and powers of two; 2^-9 is the smallest e4m3 value).
template <int TT>
__device__ __forceinline__ void RsConvertMxfp8Row(uint32_t raw_st, uint32_t b_st, int t) {
  using S = RsShape<TT>;
  uint16_t sc;
  asm volatile("ld.shared.u16 %0, [%1];\n" : "=h"(sc) : "r"(raw_st + TT * S::kRawRowBytes + 2u * t));
  const uint32_t scales = static_cast<uint32_t>(Ue8m0ToBf16Bits(sc & 0xffu)) |
                          (static_cast<uint32_t>(Ue8m0ToBf16Bits(static_cast<uint32_t>(sc) >> 8)) << 16);
  constexpr uint32_t kPow2Minus119 = 0x04000400u;  // (2^-119, 2^-119)
#pragma unroll
  for (int c = 0; c < 8; ++c) {  // 8 e4m3 values (two words) -> one 16-byte bf16 chunk
    uint32_t w0, w1;
    asm volatile("ld.shared.v2.b32 {%0, %1}, [%2];\n" : "=r"(w0), "=r"(w1) : "r"(raw_st + t * S::kRawRowBytes + 8u * c));
    uint32_t o[4];
#pragma unroll
    for (int p = 0; p < 4; ++p) {
      const uint32_t w = p < 2 ? w0 : w1;
      const uint32_t v = MulBf16x2(E4m3PairToFoldedBf16x2(Prmt(w, 0u, Nvfp4ScaleSelector(2 * (p & 1)))), kPow2Minus119);
      o[p] = c < 4 ? MulBf16x2ByHalf<0>(v, scales) : MulBf16x2ByHalf<1>(v, scales);
    }
    const uint32_t dst = b_st + static_cast<uint32_t>(t) * 128u + (static_cast<uint32_t>(c ^ (t & 7)) << 4);
    asm volatile("st.shared.v4.b32 [%0], {%1, %2, %3, %4};\n" ::"r"(dst), "r"(o[0]), "r"(o[1]), "r"(o[2]), "r"(o[3])
                 : "memory");
  }
}

// The scale bytes of one row for one stage: NVFP4 4 e4m3 bytes (one per
// k16 step), MXFP4 2 ue8m0 bytes (one per two steps), aligned because
// K % 64 == 0. Read from global (L1/L2) by the producer one stage ahead.
template <Format WF>
__device__ __forceinline__ uint32_t LoadStageScales(const uint8_t* row_scales, int it) {
  if constexpr (WF == Format::kNVFP4) {
    return __ldg(reinterpret_cast<const uint32_t*>(row_scales) + it);
  } else {
    return __ldg(reinterpret_cast<const uint16_t*>(row_scales) + it);
  }
}

// A stage's scales of one row as two bf16x2 words: NVFP4 (s0, s1), (s2, s3)
// folded by 2^kNvfp4ScaleFold; MXFP4 (s0, s1) as plain bf16 in both words.
template <Format WF>
__device__ __forceinline__ void StageScalePairs(uint32_t raw, uint32_t (&out)[2]) {
  if constexpr (WF == Format::kNVFP4) {
    out[0] = E4m3PairToFoldedBf16x2(Prmt(raw, 0u, Nvfp4ScaleSelector(0)));
    out[1] = E4m3PairToFoldedBf16x2(Prmt(raw, 0u, Nvfp4ScaleSelector(2)));
  } else {
    out[0] = static_cast<uint32_t>(Ue8m0ToBf16Bits(raw & 0xffu)) |
             (static_cast<uint32_t>(Ue8m0ToBf16Bits((raw >> 8) & 0xffu)) << 16);
    out[1] = out[0];
  }
}

// A stage whose copies this thread has waited for goes to the consumers:
// bf16 needs only the proxy fence; MXFP8 first waits for every producer
// thread's copies (producer barrier) and converts token t's row.
template <int TT, int kStages, Format AF>
__device__ __forceinline__ void RsFinishStage(uint32_t ring, uint32_t raw_ring, int s) {
  using S = RsShape<TT>;
  if constexpr (AF == Format::kMXFP8) {
    wgmma::BarrierSync(kProducerBarrier<kStages>, kWarpgroup);
    RsConvertMxfp8Row<TT>(raw_ring + s * S::kRawBytes, ring + s * S::kStageBytes + S::kABytes, threadIdx.x);
  }
  wgmma::FenceSharedForAsync();  // cp.async / st.shared wrote through the generic proxy; wgmma reads the async one
  wgmma::BarrierArrive(1 + s, kThreads);  // FULL
}

// The producer warpgroup: cp.async only. Per stage a thread copies kRows / 64
// weight chunks (block rows (t >> 1) + 64 i, chunk t & 1) and TT / 16 token
// chunks (tokens (t >> 3) + 16 j, chunk t & 7: a warp reads 4 whole 128-byte
// rows per instruction; a 256-token tile with an empty second half copies
// only the first), then signals the stage kStages - 3 behind once its own
// copies of it have landed (cp.async groups count per thread; the FULL
// barrier waits for every producer thread). Stages are counted across the
// block's work items, so the next item's first stages are copied while the
// consumers run the epilogue of the last one.
// MXFP8 (AF): the stage's token rows are copied raw into the second ring
// (thread t: chunk t & 3 of rows (t >> 2) + 32 j) and their scale bytes
// loaded and stored by thread t for token t; when the stage has landed
// (every producer thread's copies: a producer barrier), thread t converts
// token t's row into the bf16 stage before FULL.
template <int TT, int kStages, bool kPersistent, Format AF, Format WF, GemmStage ST>
__device__ __forceinline__ void RsProduce(const GemmArgs& a, const RsWork<TT, kPersistent, ST>& work, uint32_t ring,
                                          uint32_t raw_ring, int n_stages) {
  using S = RsShape<TT>;
  static_assert(AF == Format::kBF16 || AF == Format::kMXFP8, "register-A wgmma: bf16 or MXFP8 activations");
  constexpr bool kRaw = AF == Format::kMXFP8;
  // The consumers hold two stages (the one they decode and the previous, whose
  // last MMAs may still be queued), so a stage can be signalled only kStages - 3
  // issues after its own without the consumers waiting for the next release.
  constexpr int kLag = kStages - 3;
  const int t = threadIdx.x;
  const int64_t k_bytes = a.k_dim / 2;
  const uint32_t wdst0 = ARowOffset(t >> 1, t & 1);  // + 64 rows per i: the same swizzle phase
  // Token n, chunk c sits at n * 128 + 16 * (c ^ (n & 7)); n & 7 is the same for every j.
  const uint32_t adst0 = static_cast<uint32_t>(t >> 3) * 128u + (static_cast<uint32_t>((t & 7) ^ ((t >> 3) & 7)) << 4);
  int gs = 0;  // stages issued so far (ring slot gs % kStages)
  for (int item = 0; item < work.count; ++item) {
    int tile, fb;
    work.Item(item, tile, fb);
    JAX_MOE_RS_STAMP(long long empty_wait = 0;)
    const int expert = a.tile_expert[tile];
    const uint8_t* w = a.w + static_cast<int64_t>(expert) * a.w_rows_per_expert * k_bytes;
    constexpr int kWCopies = kRows<TT> / 64;  // 16-byte weight chunks a thread per stage
    // Weight sources as 32-bit offsets from a per-stage 64-bit base (an expert's weights stay
    // below 4 GB: WgmmaRsSupports) and token rows as 32-bit indices times the row's bytes, so a
    // copy's address costs one add or one wide multiply-add, not a 64-bit multiply.
    uint32_t woff[kWCopies];
    int wbytes[kWCopies];
#pragma unroll
    for (int i = 0; i < kWCopies; ++i) {
      bool valid;
      const int row = BlockWeightRow<TT, ST>(a, fb, (t >> 1) + 64 * i, valid);
      woff[i] = static_cast<uint32_t>(row) * static_cast<uint32_t>(k_bytes) + 16u * (t & 1);
      wbytes[i] = valid ? 16 : 0;  // rows past n_dim are zero-filled
    }
    // bf16: TT / 16 token chunks a thread (tokens (t >> 3) + 16 j, chunk t & 7); MXFP8: 4 raw
    // chunks (tokens (t >> 2) + 32 j, chunk t & 3) and token t's scale row. Each chunk's source
    // row is kept as a 32-bit index (-1: a padding row, zero-filled), not a pointer: 16 chunks
    // (TT = 256) fit the producer's registers that way.
    constexpr int kCopies = kRaw ? TT / 32 : TT / 16;
    const int halves = RsTileHalves<TT>(a, tile);
    const uint8_t* const abase = a.a_data + 16 * (kRaw ? (t & 3) : (t & 7));
    const uint32_t a_row_bytes = static_cast<uint32_t>(a.a_row_bytes);
    int32_t asrc[kCopies];
#pragma unroll
    for (int j = 0; j < kCopies; ++j) {
      const int n = kRaw ? (t >> 2) + 32 * j : (t >> 3) + 16 * j;
      const int ex = a.permuted_to_expanded[static_cast<int64_t>(tile) * TT + n];
      asrc[j] = ex < 0 ? -1 : (a.gather_tokens ? ex / a.top_k : tile * TT + n);
    }
    // Chunk j's source at K byte offset koff: row asrc[j] (a padding row reads row 0, 0 bytes).
    auto asrc_at = [&](int j, int64_t koff) {
      return abase + koff + static_cast<uint64_t>(static_cast<uint32_t>(max(asrc[j], 0))) * a_row_bytes;
    };
    // Block scales: thread t converts those of block rows t + 128 i (kSRows of them) into the
    // stage, from words loaded one stage ahead (32-bit offsets into the expert's scale rows; a
    // row past n_dim reads row 0's: its codes are zero-filled, any finite scale will do).
    constexpr int kSRows = kRows<TT> / kWarpgroup;
    const int scale_cols = a.k_dim / BlockSize(WF);
    const uint8_t* const sbase = a.w_scale + static_cast<int64_t>(expert) * a.w_rows_per_expert * scale_cols;
    int32_t srow[kSRows];
    uint32_t snext[kSRows];
#pragma unroll
    for (int i = 0; i < kSRows; ++i) {
      bool valid;
      srow[i] = BlockWeightRow<TT, ST>(a, fb, t + kWarpgroup * i, valid) * scale_cols;
      snext[i] = LoadStageScales<WF>(sbase + srow[i], 0);
    }
    const uint16_t* my_scales = nullptr;  // MXFP8: token t's scale bytes (null: a padding row)
    if constexpr (kRaw) {
      const int ex = a.permuted_to_expanded[static_cast<int64_t>(tile) * TT + t];
      const int64_t src = a.gather_tokens ? ex / a.top_k : static_cast<int64_t>(tile) * TT + t;
      if (ex >= 0) my_scales = reinterpret_cast<const uint16_t*>(a.a_scale + src * a.a_scale_row_bytes);
    }
    for (int st = 0; st < n_stages; ++st, ++gs) {
      const int s = gs % kStages;
      JAX_MOE_RS_STAMP(const long long w0 = clock64();)
      if (gs >= kStages) wgmma::BarrierSync(1 + kStages + s, kThreads);  // EMPTY[s]
      JAX_MOE_RS_STAMP(empty_wait += clock64() - w0;)
      const uint32_t a_st = ring + s * S::kStageBytes, b_st = a_st + S::kABytes;
      const uint8_t* const w_k = w + static_cast<int64_t>(st) * kRowBytes;
#pragma unroll
      for (int i = 0; i < kWCopies; ++i) CpAsync16Shared(a_st + wdst0 + 64u * kRowBytes * i, w_k + woff[i], wbytes[i]);
      if constexpr (kRaw) {
        const uint32_t raw_st = raw_ring + s * S::kRawBytes;
#pragma unroll
        for (int j = 0; j < kCopies; ++j)
          CpAsync16Shared(raw_st + static_cast<uint32_t>((t >> 2) + 32 * j) * S::kRawRowBytes + 16u * (t & 3),
                          asrc_at(j, S::kRawRowBytes * static_cast<int64_t>(st)), asrc[j] < 0 ? 0 : 16);
        // The stage's two scale bytes of token t (0: a padding row, whose codes are zero-filled).
        const uint32_t sc = my_scales != nullptr ? __ldg(my_scales + st) : 0u;
        asm volatile("st.shared.u16 [%0], %1;\n" ::"r"(raw_st + TT * S::kRawRowBytes + 2u * t), "h"(static_cast<uint16_t>(sc))
                     : "memory");
      } else {
#pragma unroll
        for (int j = 0; j < kCopies; ++j)
          if (j < 8 || halves == 2)  // a 256-token tile with an empty second half: its MMAs skip it
            CpAsync16Shared(b_st + adst0 + 2048u * j, asrc_at(j, 2 * kKStage * static_cast<int64_t>(st)),
                            asrc[j] < 0 ? 0 : 16);
      }
      // The stage's block scales, converted once here instead of by every consumer thread of
      // their rows (4 scattered loads and ~60 integer instructions a stage each, NOTES v15).
#pragma unroll
      for (int i = 0; i < kSRows; ++i) {
        uint32_t sp[2];
        StageScalePairs<WF>(snext[i], sp);
        if (st + 1 < n_stages) snext[i] = LoadStageScales<WF>(sbase + srow[i], st + 1);
        asm volatile("st.shared.v2.b32 [%0], {%1, %2};\n" ::"r"(b_st + S::kBBytes + kScaleSlotBytes * (t + kWarpgroup * i)),
                     "r"(sp[0]), "r"(sp[1]) : "memory");
      }
      CpAsyncCommit();
      if (gs >= kLag) {
        CpAsyncWait<kLag>();
        RsFinishStage<TT, kStages, AF>(ring, raw_ring, (gs - kLag) % kStages);
      }
    }
    JAX_MOE_RS_STAMP(if (t == 0) { if (RsStamp* slot = RsStampSlot(item)) slot->empty_wait = empty_wait; })
  }
  CpAsyncWait<0>();
  if constexpr (kRaw) {
    for (int g = gs > kLag ? gs - kLag : 0; g < gs; ++g) RsFinishStage<TT, kStages, AF>(ring, raw_ring, g % kStages);
  } else {  // one fence for the last stages (the bf16 kernels as measured in v12)
    wgmma::FenceSharedForAsync();
    for (int g = gs > kLag ? gs - kLag : 0; g < gs; ++g) wgmma::BarrierArrive(1 + g % kStages, kThreads);
  }
}

// One consumer thread's weight rows: rows g and g + 8 of its warp's 16 in
// each of its kMT m-tiles (block rows 64 kMT c + 64mt + 16warp + g + 8r).
// Their shared-memory offsets differ by constants from `base`, and all
// share the chunk swizzle (bit 2 of the block row is bit 2 of g).
template <int TT, Format WF, GemmStage ST>
struct RsLaneRows {
  static constexpr int kMT = RsMTiles<TT>();
  uint32_t base;  // ARowOffset(64 kMT c + 16warp + g, 0) without the swizzle
  uint32_t flip;  // 16 when the rows' two chunks are swapped

  __device__ __forceinline__ RsLaneRows(int c, int warp, int g) {
    base = static_cast<uint32_t>(64 * kMT * c + 16 * warp + g) * kRowBytes;
    flip = static_cast<uint32_t>((g >> 2) & 1) << 4;
  }
  // Offset of row (mt, r)'s converted scales in a stage's scale area (written by RsProduce).
  template <int mt, int r>
  __device__ __forceinline__ uint32_t ScaleOffset() const {
    return (base / kRowBytes + 64 * mt + 8 * r) * kScaleSlotBytes;
  }
  // Offset of the 8 bytes of k16 step kk (words 2kk, 2kk + 1) of row (mt, r).
  template <int mt, int r, int kk>
  __device__ __forceinline__ uint32_t StepOffset() const {
    return base + (64 * mt + 8 * r) * kRowBytes + ((static_cast<uint32_t>(kk >> 1) << 4) ^ flip) + 8u * (kk & 1);
  }
  // Offset of lane q's prepared word of k16 steps kk, kk + 1 (kk even) of row (mt, r): word q of
  // the 16-byte chunk kk / 2 (the 32 lanes of a warp read 32 distinct banks).
  template <int mt, int r, int kk>
  __device__ __forceinline__ uint32_t PreparedOffset() const {
    return base + (64 * mt + 8 * r) * kRowBytes + ((static_cast<uint32_t>(kk >> 1) << 4) ^ flip) + 4u * (threadIdx.x & 3);
  }
};

// A decoded bf16x2 pair (value * 2^-126) block-scaled for k16 step kk (0..3).
template <Format WF, int kk>
__device__ __forceinline__ uint32_t ScaleFragmentWord(uint32_t v, const uint32_t (&sp)[2]) {
  if constexpr (WF == Format::kNVFP4) {
    return MulBf16x2ByHalf<(kk & 1)>(v, sp[kk >> 1]);
  } else {
    // MXFP4 keeps the 2^126 multiply (2^126 * 2^(e - 127) overflows bf16 for e > 128).
    return MulBf16x2ByHalf<(kk >> 1)>(MulBf16x2(v, kBf16x2Pow2_126), sp[0]);
  }
}

// Byte q of `word`, decoded and block-scaled for k16 step kk (0..3).
template <Format WF, int kk>
__device__ __forceinline__ uint32_t DecodeFragmentWord(uint32_t word, uint32_t sel, const uint32_t (&sp)[2]) {
  return ScaleFragmentWord<WF, kk>(DecodeE2m1Byte(word, sel), sp);
}

// Row (mt, r)'s A fragment words of k16 step kk: a[r] = k 2q, 2q + 1 (word
// 2kk), a[2 + r] = k 2q + 8, 2q + 9 (word 2kk + 1), i.e. the MmaRs order
// (row g, row g + 8, row g, row g + 8).
// `pw`: the prepared-layout proxy's words, kept from the even step to the odd.
template <Format WF, int mt, int r, int kk, int TT, GemmStage ST, int kMT>
__device__ __forceinline__ void DecodeStep(const RsLaneRows<TT, WF, ST>& rows, uint32_t a_st, uint32_t sel,
                                           const uint32_t (&sp)[kMT][2][2], uint32_t (&af)[kMT][4],
                                           uint32_t (&pw)[kMT][2]) {
#ifdef JAX_MOE_RS_PREPARED_PROXY
  // Diagnostic builds only: the decode the prepared layout would run (DecodePreparedEven / Odd,
  // one 4-byte LDS a row per two steps) applied to today's linear bytes (wrong results), which
  // measures what that layout would buy before any format carries it.
  uint32_t v0, v1;
  if constexpr ((kk & 1) == 0) {
    asm volatile("ld.shared.b32 %0, [%1];\n" : "=r"(pw[mt][r]) : "r"(a_st + rows.template PreparedOffset<mt, r, kk>()));
    DecodePreparedEven(pw[mt][r], v0, v1);
  } else {
    DecodePreparedOdd(pw[mt][r], v0, v1);
  }
  af[mt][r] = ScaleFragmentWord<WF, kk>(v0, sp[mt][r]);
  af[mt][2 + r] = ScaleFragmentWord<WF, kk>(v1, sp[mt][r]);
#else
  uint32_t w0, w1;
  asm volatile("ld.shared.v2.b32 {%0, %1}, [%2];\n" : "=r"(w0), "=r"(w1) : "r"(a_st + rows.template StepOffset<mt, r, kk>()));
#ifdef JAX_MOE_RS_SKIP_DECODE
  // Diagnostic builds only (build_drivers.sh, STAMPS_FLAGS): the packed codes go to the tensor
  // cores undecoded (wrong results), which bounds this loop's rate without the decode.
  af[mt][r] = w0;
  af[mt][2 + r] = w1;
#else
  af[mt][r] = DecodeFragmentWord<WF, kk>(w0, sel, sp[mt][r]);
  af[mt][2 + r] = DecodeFragmentWord<WF, kk>(w1, sel, sp[mt][r]);
#endif
#endif
}

}  // namespace gemm_rs_detail

// kMx: MXFP8 activations (the producer converts the token tile, GEMM1
// re-quantizes h across warp pairs); a separate instantiation, so the bf16
// kernels carry none of it.
template <int TT, int kStages, bool kPersistent, bool kMx, Format WF, GemmStage ST>
__global__ void __launch_bounds__(gemm_rs_detail::kThreads, 1) WgmmaRsGemmKernel(const GemmArgs a) {
  using namespace gemm_detail;
  using namespace gemm_rs_detail;
  using S = RsShape<TT>;
  static_assert(kStages >= 4, "the consumers hold two stages and the producer keeps kStages - 3 in flight");
  static_assert(kConsumerBarrier0<kStages> + 1 <= 15, "named barriers: 16 per block");
  extern __shared__ __align__(1024) uint8_t rs_smem[];
  const uint32_t raw_base = wgmma::SmemAddress(rs_smem);
  const uint32_t ring = (raw_base + 1023u) & ~1023u;
  const uint32_t raw_ring = ring + kStages * S::kStageBytes;  // MXFP8 only (RsSmemBytes)
  float* const s_amax = reinterpret_cast<float*>(rs_smem + (ring - raw_base) + kStages * S::kStageBytes +
                                                 kStages * S::kRawBytes);
  const uint32_t out_stage = ring + kStages * S::kStageBytes;  // bf16 outputs only (RsSmemBytes)

  const RsWork<TT, kPersistent, ST> work(a);
  if (work.count == 0) return;  // whole block
  const int n_stages = a.k_dim / kKStage;
  const int wg = threadIdx.x / kWarpgroup;
  if (wg == 0) {
    wgmma::SetMaxRegisters<false, kProducerRegs>();
    RsProduce<TT, kStages, kPersistent, kMx ? Format::kMXFP8 : Format::kBF16, WF, ST>(a, work, ring, raw_ring, n_stages);
    return;
  }
  wgmma::SetMaxRegisters<true, kConsumerRegs>();

  const int c = wg - 1, warp = (threadIdx.x / 32) % 4, lane = threadIdx.x % 32, g = lane / 4, q = lane % 4;
  const uint32_t sel = E2m1ByteSelector(q);
  const int total = work.count * n_stages;  // stages of every item of this block
  int gs = 0;                               // stages consumed so far (ring slot gs % kStages)
  for (int item = 0; item < work.count; ++item) {
    int tile, fb;
    work.Item(item, tile, fb);
    JAX_MOE_RS_STAMP(const long long t_start = clock64(); long long t_first = 0, full_wait = 0;)
    const int expert = a.tile_expert[tile];
    const RsLaneRows<TT, WF, ST> rows(c, warp, g);
    constexpr int kMT = RsMTiles<TT>();
    const int halves = RsTileHalves<TT>(a, tile);  // (uniform over the item)

    float acc[kMT][TT / 8][4];
    ZeroAccumulators(acc);
    // A fragments, one set per k16 step of a stage: step kk decodes into
    // af[kk] while up to three earlier steps are still multiplying, so each
    // warpgroup keeps three MMA groups queued behind its decode (two sets
    // and one group in flight left the tensor cores idle about half of each
    // stage, NOTES v13).
    constexpr int kFragSets = 4;
    uint32_t af[kFragSets][kMT][4];
    // The item's stages with wgmma N = kN (TT, or 128 for a 256-token tile
    // whose second half is padding): one loop per N, chosen once per item,
    // since a branch between the MMAs would make ptxas serialize them (C7520).
    auto main_loop = [&](auto n_constant) {
      constexpr int kN = decltype(n_constant)::value;
      for (int st = 0; st < n_stages; ++st, ++gs) {
        const int s = gs % kStages;
        JAX_MOE_RS_STAMP(const long long w0 = clock64();)
        wgmma::BarrierSync(1 + s, kThreads);  // FULL[s]
        JAX_MOE_RS_STAMP(const long long w1 = clock64(); full_wait += w1 - w0; if (st == 0) t_first = w1;)
        const uint32_t a_st = ring + s * S::kStageBytes, b_st = a_st + S::kABytes;
        uint32_t pw[kMT][2];  // (the prepared-layout proxy only)
        // The stage's block scales of the thread's rows, as the producer converted them.
        uint32_t sp[kMT][2][2];
        auto load_scales = [&](auto mt_constant, auto r_constant) {
          constexpr int mt = decltype(mt_constant)::value, r = decltype(r_constant)::value;
          asm volatile("ld.shared.v2.b32 {%0, %1}, [%2];\n"
                       : "=r"(sp[mt][r][0]), "=r"(sp[mt][r][1])
                       : "r"(b_st + S::kBBytes + rows.template ScaleOffset<mt, r>()));
        };
        load_scales(std::integral_constant<int, 0>{}, std::integral_constant<int, 0>{});
        load_scales(std::integral_constant<int, 0>{}, std::integral_constant<int, 1>{});
        if constexpr (kMT > 1) load_scales(std::integral_constant<int, 1 % kMT>{}, std::integral_constant<int, 0>{});
        if constexpr (kMT > 1) load_scales(std::integral_constant<int, 1 % kMT>{}, std::integral_constant<int, 1>{});
        // One k16 step (kk is a template constant: the fragments' registers and
        // the scale halves are then fixed at compile time).
        auto step = [&](auto kk_constant) {
          constexpr int kk = decltype(kk_constant)::value;
          uint32_t(&frag)[kMT][4] = af[kk];
          // Step kk of the previous stage, the last reader of af[kk], is done (at most three
          // groups pending); at kk = 3 that is the previous stage's last step, so its shared
          // memory goes back to the producer if it will refill it.
          wgmma::Wait<kFragSets - 1>();
          if (kk == 3 && st >= 1 && gs - 1 + kStages < total)
            wgmma::BarrierArrive(1 + kStages + (gs - 1) % kStages, kThreads);  // EMPTY
          DecodeStep<WF, 0, 0, kk>(rows, a_st, sel, sp, frag, pw);
          DecodeStep<WF, 0, 1, kk>(rows, a_st, sel, sp, frag, pw);
          if constexpr (kMT > 1) DecodeStep<WF, 1 % kMT, 0, kk>(rows, a_st, sel, sp, frag, pw);
          if constexpr (kMT > 1) DecodeStep<WF, 1 % kMT, 1, kk>(rows, a_st, sel, sp, frag, pw);
          const uint64_t db = wgmma::DescriptorSw128(b_st + 32u * kk);
          wgmma::Fence();
#pragma unroll
          for (int mt = 0; mt < kMT; ++mt)
            wgmma::MmaRs<kN>(acc[mt], frag[mt][0], frag[mt][1], frag[mt][2], frag[mt][3], db);
          wgmma::Commit();
        };
        static_assert(kKStage / 16 == 4, "four k16 steps a stage");
        step(std::integral_constant<int, 0>{});
        step(std::integral_constant<int, 1>{});
        step(std::integral_constant<int, 2>{});
        step(std::integral_constant<int, 3>{});
      }
    };
    if (TT == 128 || halves == 2) {
      main_loop(std::integral_constant<int, TT>{});
    } else {
      main_loop(std::integral_constant<int, 128>{});
    }
    wgmma::Wait<0>();
    JAX_MOE_RS_STAMP(const long long t_main = clock64();)
    // The item's last stage is free before the epilogue: the producer fills
    // the ring for the next item meanwhile.
    if (gs - 1 + kStages < total) wgmma::BarrierArrive(1 + kStages + (gs - 1) % kStages, kThreads);

    if constexpr (!kMx) {  // bf16 h / y: staged rows and bulk copies (gemm_rs_epilogue.cuh)
      const uint32_t my_stage = out_stage + static_cast<uint32_t>(c * OutStageBytes<TT, ST>());
      float* const s_rw =
          reinterpret_cast<float*>(rs_smem + (my_stage - raw_base) + kStagedRows * StagePitch<TT, ST>());
      RsStagedEpilogue<TT, WF, ST, kMT>(a, acc, tile, fb, c, expert, my_stage, s_rw, kConsumerBarrier0<kStages> + c,
                                        halves);
    } else {  // MXFP8 h (GEMM1) re-quantized across warp pairs; GEMM2's y as the other families write it
      static_assert(!kMx || TT == 128, "MXFP8 activations: the 128-token tile only");
      const int feat0 = fb * FeaturesPerBlock<TT, ST>() + ConsumerFeatures<TT, ST>() * c + 16 * warp;
      // MXFP8 h: every warp of the warpgroup meets the amax barrier, so warps
      // past n_dim run the epilogue too (their stores are masked by mt_valid).
      constexpr bool mx_h = ST == GemmStage::kGemm1;
      if (feat0 < a.n_dim || mx_h) {
        bool mt_valid[kMT];
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt)
          mt_valid[mt] = ST == GemmStage::kGemm1 ? feat0 < a.n_dim : feat0 + 64 * mt < a.n_dim;
        const MxAmaxExchange mx{s_amax + c * 4 * TT, kConsumerBarrier0<kStages> + c, warp};
        // The tile's expanded indices straight from global memory (L1/L2): a
        // shared copy would need double-buffering against the producer.
        GemmEpilogue<kMT, TT / 8, WF, ST, 64, mx_h>(a, acc, mt_valid,
                                                    a.permuted_to_expanded + static_cast<int64_t>(tile) * TT, 0,
                                                    static_cast<int64_t>(tile) * TT, feat0, expert, mx);
      }
    }
    JAX_MOE_RS_STAMP(if (threadIdx.x == kWarpgroup) {
      if (RsStamp* slot = RsStampSlot(item)) {
        slot->start = t_start;
        slot->first_full = t_first;
        slot->main_end = t_main;
        slot->epi_end = clock64();
        slot->full_wait = full_wait;
        slot->stages = n_stages;
      }
    })
  }
  if constexpr (!kMx) BulkWaitAll();  // the staged rows stay in shared memory until their copies are done
}

// Whether the register-A kernel runs this GEMM (else its fallback does).
// MXFP8 activations (the producer converts the token tile; GEMM1 quantizes
// h across warp pairs) unless JAX_MOE_RS_MXFP8=0: 1.2-1.4x faster than the
// fallback on the stage timer (NOTES v13).
inline bool WgmmaRsSupports(const GemmArgs& a) {
  const bool acts = a.act_format == Format::kBF16 || (a.act_format == Format::kMXFP8 && a.rs_mxfp8);
  // bf16 h / y rows leave through 16-byte-aligned bulk copies (gemm_rs_epilogue.cuh).
  const bool aligned = (reinterpret_cast<uintptr_t>(a.h) | reinterpret_cast<uintptr_t>(a.y) |
                        static_cast<uintptr_t>(a.h_row_bytes)) % 16 == 0;
  // The producer's 32-bit offsets: an expert's packed weights below 4 GB (token rows are
  // addressed with a wide multiply of a 32-bit row index by the row's bytes).
  const bool offsets32 = a.w_rows_per_expert * (a.k_dim / 2) < (int64_t{1} << 32) && a.a_row_bytes < (int64_t{1} << 32);
  return acts && aligned && offsets32 && a.k_dim % gemm_rs_detail::kKStage == 0 && a.k_dim > 0;
}

template <int TT, int kStages, bool kPersistent, bool kMx, Format WF, GemmStage ST>
cudaError_t LaunchWgmmaRsKernel(const GemmArgs& a, int64_t max_tiles, cudaStream_t stream);

// Plain grid: x = token tiles (worst case from static shapes), y = feature
// blocks of 128 (GEMM1) or 256 (GEMM2). Persistent grid: one block per SM
// (the ring takes most of its shared memory), at most one per work item.
template <int TT, int kStages, bool kPersistent, Format WF, GemmStage ST>
cudaError_t LaunchWgmmaRsGemm(const GemmArgs& a, int64_t max_tiles, cudaStream_t stream) {
#ifdef JAX_MOE_CUDA_ARCH
  // wgmma exists on sm_90a only; other builds compile the kernel as a trap.
  if (std::string_view(JAX_MOE_CUDA_ARCH) != "sm_90a") return cudaErrorNotSupported;
#endif
  if constexpr (TT == 256) {
    // No fallback kernel has this tile: TacticInvalidReason keeps the row from problems it
    // cannot run (activations other than bf16, K % 64 != 0); misaligned h / y rows end here.
    if (!WgmmaRsSupports(a) || a.act_format != Format::kBF16) return cudaErrorNotSupported;
    return LaunchWgmmaRsKernel<TT, kStages, kPersistent, false, WF, ST>(a, max_tiles, stream);
  } else {
    if (!WgmmaRsSupports(a)) return LaunchWgmmaWsGemm<TT, 4, 1, WF, ST>(a, max_tiles, stream);
    return a.act_format == Format::kMXFP8
               ? LaunchWgmmaRsKernel<TT, kStages, kPersistent, true, WF, ST>(a, max_tiles, stream)
               : LaunchWgmmaRsKernel<TT, kStages, kPersistent, false, WF, ST>(a, max_tiles, stream);
  }
}

template <int TT, int kStages, bool kPersistent, bool kMx, Format WF, GemmStage ST>
cudaError_t LaunchWgmmaRsKernel(const GemmArgs& a, int64_t max_tiles, cudaStream_t stream) {
  constexpr auto kKernel = WgmmaRsGemmKernel<TT, kStages, kPersistent, kMx, WF, ST>;
  constexpr int kSmem = gemm_rs_detail::RsSmemBytes<TT, kStages, ST>(kMx);
  static_assert(kSmem <= 227 * 1024, "shared memory: 227 KB a block on sm_90");
  if (const cudaError_t e = EnsureDynamicSmem<kKernel>(kSmem); e != cudaSuccess) return e;
  const int64_t n_fb = gemm_rs_detail::FeatureBlocks<TT, ST>(a.n_dim);
  dim3 grid(static_cast<unsigned>(max_tiles), static_cast<unsigned>(n_fb));
  if constexpr (kPersistent) {
    int sms = 0;
    if (const cudaError_t e = DeviceSms(&sms); e != cudaSuccess) return e;
    grid = dim3(static_cast<unsigned>(std::min<int64_t>(sms, max_tiles * n_fb)));
  }
  kKernel<<<grid, gemm_rs_detail::kThreads, kSmem, stream>>>(a);
  g_wgmma_rs_launches.fetch_add(1, std::memory_order_relaxed);
  return cudaGetLastError();
}

}  // namespace jax_moe::cuda
