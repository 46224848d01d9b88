// The warp-specialised wgmma grouped GEMM (KernelFamily::kCudaWgmmaWarpSpecialized):
// the prefill family, for both GEMM1 (+ activation) and GEMM2, with the
// staged family's epilogue.
//
// Why not the register-A wgmma family (gemm_wgmma.cuh): there every
// consumer warp decodes its own FP4 weights between MMAs, waits for each
// k16 step's MMAs (registers), and stalls on its own global loads; measured
// on the H200 it reached 14% of the bf16 matmul rate at T = 4096. Here the
// roles are split:
//   - warpgroup 0 (producer) loads one K stage (64 elements) of the block's
//     weight rows (16-byte FP4 loads) and token rows one stage ahead in
//     registers, decodes FP4 -> bf16 once (DecodeWord) and the activations
//     (DecodeActGroup), and stores both operands into a ring of kStages
//     shared-memory stages in the 128-byte swizzled layout (wgmma.cuh: one
//     64-element stage of K is exactly one 128-byte row);
//   - warpgroups 1.. (consumers, one per kN tokens) issue wgmma with both
//     operands in shared memory (MmaSs), keep one stage's MMAs in flight
//     (wait_group 1) and release a stage as soon as its MMAs are done.
// The hand-off is two named barriers per stage: FULL (producer arrives,
// consumers sync) and EMPTY (consumers arrive, producer syncs), each over
// every thread of the block. Both operands carry the same K order inside an
// 8-element group (pairs (i, i+4): what DecodeE2m1x8 and DecodeActGroup
// produce), which the MMA's sum does not see.
// Work split: blockIdx.x = token tile, blockIdx.y = 128 output features.
// A consumer's accumulators are the staged family's acc[m-tile][n8][4] for
// its warp's 32 features (GEMM1: m-tiles 0, 1 gate, 2, 3 up; GEMM2: 2
// m-tiles), so GemmEpilogue applies unchanged; shared-memory A row R of
// m-tile mt is feature 32 * (R / 16) + 16 * sub(mt) + R % 16 of the block.
// (A first version used the unswizzled core-matrix layout; swizzling did not
// change the measured time, the producer did: benchmarks/NOTES.md, v3
// outcome. The swizzled layout stays as the one the MMA is built for.)
//
// Two producers (kProducers = 2, KernelFamily::kCudaWgmmaWsTwoProducers):
// profiled at T = 4096 the consumers waited 46% of their time on FULL, i.e.
// one producer warpgroup decodes a stage slower than two consumers multiply
// it. With two, each decodes half of every stage (GEMM1: m-tiles p and p + 2,
// GEMM2: m-tile p; half of the token groups), both arrive on FULL and both
// wait on EMPTY. 512 threads leave 128 registers each, so the block moves
// registers from the producers to the consumers with setmaxnreg (GEMM1 t128:
// producers 96, consumers 160; 2 x 128 x (96 + 160) = 65536).
#pragma once

#include <string_view>

#include "cuda/dynamic_smem.cuh"
#include "cuda/gemm_common.cuh"
#include "cuda/wgmma.cuh"

namespace jax_moe::cuda {

namespace gemm_ws_detail {

using namespace gemm_detail;

constexpr int kKStage = 64;          // K elements per shared-memory stage (4 k16 steps)
constexpr int kWarpgroup = 128;
constexpr int kProducerRegs = 96;  // per producer thread in the two-producer block (setmaxnreg)

template <int TT, int kProducers, GemmStage ST>
struct WsShape {
  static constexpr int kN = WgmmaN<TT, ST>();  // tokens per consumer
  static constexpr int kConsumers = TT / kN;
  static constexpr int kProducerThreads = kWarpgroup * kProducers;
  static constexpr int kThreads = kProducerThreads + kWarpgroup * kConsumers;
  static constexpr int kMT = WarpMTiles<ST>();
  static constexpr int kATileBytes = 64 * kKStage * 2;         // one m-tile (64 rows) of bf16
  static constexpr int kABytes = kMT * kATileBytes;
  static constexpr int kBBytes = TT * kKStage * 2;
  static constexpr int kStageBytes = kABytes + kBBytes;
  // Per producer thread and stage: FP4 quads (32 elements; producer p takes
  // m-tiles p, p + kProducers, ...) and activation groups (8 elements).
  static constexpr int kQuads = kMT / kProducers;
  static constexpr int kGroups = TT * (kKStage / 8) / kProducerThreads;
  static_assert(kMT % kProducers == 0 && TT % kN == 0 && kProducerThreads % TT == 0 &&
                    kGroups * kProducerThreads == TT * (kKStage / 8),
                "bad warp-specialised wgmma shape");
  // Registers per thread at launch (__launch_bounds__(kThreads, 1); ptxas
  // gives a kernel with setmaxnreg the full count, the block's pool) and what
  // the consumers take once the producers have given theirs back: the rest
  // of that pool, in multiples of 8, at most 240. Taking more than the pool
  // holds would block the consumers forever.
  static constexpr int kEntryRegs = (65536 / kThreads) / 8 * 8;
  static constexpr int kConsumerRegsRaw =
      (kThreads * kEntryRegs - kProducerThreads * kProducerRegs) / (kWarpgroup * kConsumers) / 8 * 8;
  static constexpr int kConsumerRegs = kConsumerRegsRaw > 240 ? 240 : kConsumerRegsRaw;
  static_assert(kProducers == 1 || (kProducerRegs <= kEntryRegs && kConsumerRegs >= kEntryRegs),
                "setmaxnreg: producers give registers back, consumers take them");
};

// The ring (1024-byte aligned for the swizzle atoms: up to 1023 bytes of
// slack ahead of it), then the tile's expanded indices.
template <int TT, int kStages, GemmStage ST>
constexpr int WsSmemBytes() {
  return 1024 + kStages * WsShape<TT, 1, ST>::kStageBytes + TT * 4;
}
static_assert(kKStage * 2 == 128, "one K stage is one 128-byte swizzled row");

__device__ __forceinline__ void StoreShared16(uint32_t addr, const uint4& v) {
  asm volatile("st.shared.v4.b32 [%0], {%1, %2, %3, %4};\n" ::"r"(addr), "r"(v.x), "r"(v.y), "r"(v.z), "r"(v.w)
               : "memory");
}

// The producer warpgroup: every stage's operands, decoded, into the ring.
// The activation format is a template parameter here (the kernel branches
// once): profiled on the H200, a runtime switch per group plus per-stage row
// arithmetic made this loop ~1500 instructions per stage and the consumers
// spent 46% of their time waiting for it. Full stages (all of K in range,
// 16-byte aligned rows) take a branch-free path; the K tail the generic
// loaders.
template <int TT, int kStages, int kProducers, Format WF, Format AF, GemmStage ST>
__device__ __forceinline__ void WsProduce(const GemmArgs& a, int tile, int expert, const int32_t* s_expanded,
                                          uint32_t smem_base, int n_stages) {
  using S = WsShape<TT, kProducers, ST>;
  const int tp = threadIdx.x;  // 0 .. kProducerThreads - 1
  // (Spelled out for one producer, where the compiler cannot see tp < 128:
  // the single-producer kernels keep their code.)
  const int t = kProducers == 1 ? tp : tp % kWarpgroup, p = kProducers == 1 ? 0 : tp / kWarpgroup;
  // Weight quads: m-tile mt = p + kProducers * i, A row R = t / 2, K half t % 2 of the stage.
  const int arow = t >> 1, ahalf = t & 1;
  const int k_bytes = a.k_dim / 2, scale_cols = a.k_dim / BlockSize(WF);
  const bool aligned16 = (k_bytes % 16) == 0, scale_pairs = (scale_cols % 2) == 0;
  const uint8_t* w = a.w + static_cast<int64_t>(expert) * a.w_rows_per_expert * k_bytes;
  const uint8_t* ws = a.w_scale + static_cast<int64_t>(expert) * a.w_rows_per_expert * scale_cols;
  const uint8_t* wptr[S::kQuads];  // this thread's weight rows (and scale rows) at its K half
  const uint8_t* sptr[S::kQuads];
  bool wvalid[S::kQuads];
#pragma unroll
  for (int i = 0; i < S::kQuads; ++i) {
    const int mt = p + kProducers * i;
    const int feature = MTileFeature<ST>(blockIdx.y * 128 + 32 * (arow >> 4), mt) + (arow & 15);
    wvalid[i] = feature < a.n_dim;
    const int row = wvalid[i] ? MTileWeightRow<ST>(feature, mt, a.n_dim) : 0;
    wptr[i] = w + static_cast<int64_t>(row) * k_bytes;
    sptr[i] = ws + static_cast<int64_t>(row) * scale_cols;
  }
  // Activation groups: one token per thread (n = tp % TT), K groups kcg0 + step * i.
  const int n_tok = tp % TT, kcg0 = tp / TT;
  constexpr int kKcgStep = S::kProducerThreads / TT;
  const int ex = s_expanded[n_tok];
  const int64_t src = ex < 0 ? 0 : (a.gather_tokens ? ex / a.top_k : static_cast<int64_t>(tile) * TT + n_tok);
  const uint8_t* arow_ptr = a.a_data + src * a.a_row_bytes;
  const uint8_t* asrow_ptr = AF == Format::kBF16 ? nullptr : a.a_scale + src * a.a_scale_row_bytes;
  const bool fast_rows = aligned16 && (WF != Format::kNVFP4 || scale_pairs);

  auto load = [&](int it, WeightQuad (&wq)[S::kQuads], RawActGroup (&ra)[S::kGroups]) {
    const int k0 = it * kKStage;
    const int kq = k0 + 32 * ahalf;  // this thread's quad
    if (fast_rows && k0 + kKStage <= a.k_dim) {
#pragma unroll
      for (int mt = 0; mt < S::kQuads; ++mt) {
        wq[mt] = WeightQuad{make_uint4(0, 0, 0, 0), 0u};
        if (wvalid[mt]) {
          wq[mt].codes = __ldg(reinterpret_cast<const uint4*>(wptr[mt] + kq / 2));
          wq[mt].scales = WF == Format::kNVFP4 ? __ldg(reinterpret_cast<const uint16_t*>(sptr[mt] + kq / 16))
                                               : __ldg(sptr[mt] + kq / 32);
        }
      }
#pragma unroll
      for (int i = 0; i < S::kGroups; ++i) {
        ra[i] = RawActGroup{make_uint4(0, 0, 0, 0), 0u};
        if (ex >= 0) ra[i] = LoadRawActGroupAt<AF>(arow_ptr, asrow_ptr, k0 + 8 * (kcg0 + kKcgStep * i));
      }
      return;
    }
#pragma unroll
    for (int mt = 0; mt < S::kQuads; ++mt)
      wq[mt] = wvalid[mt] ? LoadWeightQuad<WF>(wptr[mt], sptr[mt], kq, a.k_dim, aligned16, scale_pairs)
                          : WeightQuad{make_uint4(0, 0, 0, 0), 0u};
#pragma unroll
    for (int i = 0; i < S::kGroups; ++i) {
      const int k = k0 + 8 * (kcg0 + kKcgStep * i);
      ra[i] = (ex >= 0 && k < a.k_dim) ? LoadRawActGroupAt<AF>(arow_ptr, asrow_ptr, k)
                                       : RawActGroup{make_uint4(0, 0, 0, 0), 0u};
    }
  };

  WeightQuad wq[2][S::kQuads];  // register double buffer: stage it + 1 loads while stage it is decoded
  RawActGroup ra[2][S::kGroups];
  load(0, wq[0], ra[0]);
  auto produce = [&](int it, WeightQuad (&cur_w)[S::kQuads], RawActGroup (&cur_a)[S::kGroups],
                     WeightQuad (&next_w)[S::kQuads], RawActGroup (&next_a)[S::kGroups]) {
    const int s = it % kStages;
    if (it + 1 < n_stages) load(it + 1, next_w, next_a);
    if (it >= kStages) wgmma::BarrierSync(1 + kStages + s, S::kThreads);  // EMPTY[s]
    const uint32_t a_st = smem_base + s * S::kStageBytes, b_st = a_st + S::kABytes;
#pragma unroll
    for (int i = 0; i < S::kQuads; ++i) {
      const int mt = p + kProducers * i;
      const uint32_t scale = QuadScalePair<WF>(cur_w[i]);
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        uint32_t d[4];
        DecodeWord<WF>(cur_w[i], j, scale, d);
        StoreShared16(a_st + mt * S::kATileBytes + wgmma::Sw128Offset(arow, 4 * ahalf + j),
                      make_uint4(d[0], d[1], d[2], d[3]));
      }
    }
#pragma unroll
    for (int i = 0; i < S::kGroups; ++i)
      StoreShared16(b_st + wgmma::Sw128Offset(n_tok, kcg0 + kKcgStep * i), DecodeActGroupAs<AF>(cur_a[i]));
    wgmma::FenceSharedForAsync();
    wgmma::BarrierArrive(1 + s, S::kThreads);  // FULL[s]
  };
  // Unrolled by two so the double buffer is two named register sets, not copies.
  for (int it = 0; it < n_stages; it += 2) {
    produce(it, wq[0], ra[0], wq[1], ra[1]);
    if (it + 1 < n_stages) produce(it + 1, wq[1], ra[1], wq[0], ra[0]);
  }
}

}  // namespace gemm_ws_detail

template <int TT, int kStages, int kProducers, Format WF, GemmStage ST>
__global__ void __launch_bounds__(gemm_ws_detail::WsShape<TT, kProducers, ST>::kThreads, 1)
    WgmmaWsGemmKernel(const GemmArgs a) {
  using namespace gemm_detail;
  using namespace gemm_ws_detail;
  using S = WsShape<TT, kProducers, ST>;
  static_assert(1 + 2 * kStages <= 16, "named barriers: 16 per block");
  extern __shared__ __align__(1024) uint8_t ws_smem[];
  const uint32_t raw_base = wgmma::SmemAddress(ws_smem);
  const uint32_t pad = ((raw_base + 1023u) & ~1023u) - raw_base;
  const uint32_t smem_base = raw_base + pad;  // the ring
  int32_t* s_expanded = reinterpret_cast<int32_t*>(ws_smem + pad + kStages * S::kStageBytes);

  const int tile = blockIdx.x;
  if (tile >= *a.num_tiles) return;  // beyond the live tiles (device-side count); whole block
  const int expert = a.tile_expert[tile];
  for (int i = threadIdx.x; i < TT; i += S::kThreads) s_expanded[i] = a.permuted_to_expanded[tile * TT + i];
  __syncthreads();

  const int n_stages = (a.k_dim + kKStage - 1) / kKStage;
  const int wg = threadIdx.x / kWarpgroup;
  if (wg < kProducers) {
    if constexpr (kProducers > 1) wgmma::SetMaxRegisters<false, kProducerRegs>();
    switch (a.act_format) {
      case Format::kMXFP8:
        WsProduce<TT, kStages, kProducers, WF, Format::kMXFP8, ST>(a, tile, expert, s_expanded, smem_base, n_stages);
        break;
      case Format::kNVFP4:
        WsProduce<TT, kStages, kProducers, WF, Format::kNVFP4, ST>(a, tile, expert, s_expanded, smem_base, n_stages);
        break;
      default:
        WsProduce<TT, kStages, kProducers, WF, Format::kBF16, ST>(a, tile, expert, s_expanded, smem_base, n_stages);
    }
    return;
  }
  if constexpr (kProducers > 1) wgmma::SetMaxRegisters<true, S::kConsumerRegs>();

  const int c = wg - kProducers;  // consumer: token columns c * kN ..
  const int warp = (threadIdx.x / 32) % 4;
  const int feat0 = blockIdx.y * 128 + 32 * warp;
  bool mt_valid[S::kMT];
#pragma unroll
  for (int mt = 0; mt < S::kMT; ++mt)
    mt_valid[mt] = MTileFeature<ST>(feat0, mt) < a.n_dim;

  float acc[S::kMT][S::kN / 8][4];
  ZeroAccumulators(acc);
  for (int it = 0; it < n_stages; ++it) {
    const int s = it % kStages;
    wgmma::BarrierSync(1 + s, S::kThreads);  // FULL[s]
    const uint32_t a_st = smem_base + s * S::kStageBytes;
    const uint32_t b_st = a_st + S::kABytes + c * S::kN * 128u;  // this consumer's token rows
    wgmma::Fence();
#pragma unroll
    for (int kk = 0; kk < kKStage / 16; ++kk) {  // k16 step: 32 bytes into each 128-byte row
      const uint64_t db = wgmma::DescriptorSw128(b_st + 32u * kk);
#pragma unroll
      for (int mt = 0; mt < S::kMT; ++mt)
        wgmma::MmaSs<S::kN>(acc[mt], wgmma::DescriptorSw128(a_st + mt * S::kATileBytes + 32u * kk), db);
    }
    wgmma::Commit();
    // One stage of MMAs stays in flight; the one before it is done, so its
    // stage goes back to the producer (if the producer will refill it).
    wgmma::Wait<1>();
    if (it >= 1 && it - 1 + kStages < n_stages) wgmma::BarrierArrive(1 + kStages + (it - 1) % kStages, S::kThreads);
  }
  wgmma::Wait<0>();
  if (feat0 >= a.n_dim) return;
  GemmEpilogue<S::kMT, S::kN / 8, WF, ST>(a, acc, mt_valid, s_expanded, c * S::kN,
                                          static_cast<int64_t>(tile) * TT, feat0, expert);
}

// Grid: x = token tiles (worst case from static shapes), y = groups of 128 features.
template <int TT, int kStages, int kProducers, Format WF, GemmStage ST>
cudaError_t LaunchWgmmaWsGemm(const GemmArgs& a, int64_t max_tiles, cudaStream_t stream) {
#ifdef JAX_MOE_CUDA_ARCH
  // wgmma exists on sm_90a only; other builds compile the kernel as a trap.
  if (std::string_view(JAX_MOE_CUDA_ARCH) != "sm_90a") return cudaErrorNotSupported;
#endif
  constexpr int kSmem = gemm_ws_detail::WsSmemBytes<TT, kStages, ST>();
  if (const cudaError_t e = EnsureDynamicSmem<WgmmaWsGemmKernel<TT, kStages, kProducers, WF, ST>>(kSmem);
      e != cudaSuccess)
    return e;
  const dim3 grid(static_cast<unsigned>(max_tiles), static_cast<unsigned>((a.n_dim + 127) / 128));
  WgmmaWsGemmKernel<TT, kStages, kProducers, WF, ST>
      <<<grid, gemm_ws_detail::WsShape<TT, kProducers, ST>::kThreads, kSmem, stream>>>(a);
  return cudaGetLastError();
}

}  // namespace jax_moe::cuda
