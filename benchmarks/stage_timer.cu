// Per-stage device times of the CUDA pipeline, without JAX: the model shapes
// of DESIGN.md section 8 on random device-filled data, each stage bracketed
// by CUDA events, L2 flushed (a 256 MiB write) before every repetition so the
// weights come from HBM as they do in a model, median of --reps. Also the
// pipeline alone (events only around all five stages), which is what the
// layer costs on the device. ncu works on this binary (it does not on JAX
// processes reliably), so it is also the profiling driver.
//
//   nvcc -std=c++17 -arch=sm_90a -O3 --expt-relaxed-constexpr -isystem <jaxlib>/include -Iffi_src \
//     benchmarks/stage_timer.cu ffi_src/cuda/{routing,permute,gemm1,gemm2,finalize}.cu \
//     ffi_src/common/{problem,tactics}.cc -o stage_timer
//   ./stage_timer [--models a,b] [--tokens 1,8] [--tactics default,name] [--weights nvfp4]
//                 [--acts bf16|mxfp8] [--reps 30]    # MXFP8 rows are labelled <tactic>@mxfp8
//   ./stage_timer --pattern [--reps 30]    # the weight access-pattern probe alone
//   ./stage_timer --finalize --tokens 256,512,4096   # also each finalize kernel alone per row
//
// JAX_MOE_MAX_K_SPLITS applies as in the op (the staged family's split-K).
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "common/ffi_glue.h"
#include "common/problem.h"
#include "common/tactics.h"
#include "common/workspace.h"
#include "cuda/rs_stamps.cuh"
#include "cuda/split_k.cuh"
#include "cuda/stages.cuh"
#include "../tests/cuda/driver_check.h"

using namespace jax_moe;

namespace {

#ifdef JAX_MOE_RS_STAMPS
// The diagnostic build (-DJAX_MOE_RS_STAMPS, build_drivers.sh stage_timer_stamps): where a
// register-A GEMM's work items spend their SM cycles, from the last launch's stamps.
void PrintRsStamps(const char* gemm, cudaError_t (*fetch)(cuda::RsStamp*), double gemm_us) {
  std::vector<cuda::RsStamp> st(static_cast<size_t>(cuda::kRsStampBlocks) * cuda::kRsStampItems);
  CHECK_CUDA(fetch(st.data()));
  double ramp = 0, loop = 0, full = 0, epi = 0, gap = 0, empty = 0, stages = 0, span = 0, span_max = 0;
  long long items = 0, gaps = 0, blocks = 0;
  for (int b = 0; b < cuda::kRsStampBlocks; ++b) {
    const cuda::RsStamp* row = &st[static_cast<size_t>(b) * cuda::kRsStampItems];
    int n = 0;
    while (n < cuda::kRsStampItems && row[n].epi_end != 0) ++n;
    if (n == 0) continue;
    ++blocks;
    for (int i = 0; i < n; ++i) {
      const cuda::RsStamp& x = row[i];
      ramp += x.first_full - x.start;
      loop += x.main_end - x.first_full;
      full += x.full_wait;
      epi += x.epi_end - x.main_end;
      empty += x.empty_wait;
      stages += x.stages;
      if (i > 0) { gap += x.start - row[i - 1].epi_end; ++gaps; }
    }
    items += n;
    const double s = static_cast<double>(row[n - 1].epi_end - row[0].start);
    span += s;
    span_max = std::max(span_max, s);
  }
  if (items == 0) { std::printf("  stamps %s: none (not a register-A launch)\n", gemm); return; }
  const double ni = static_cast<double>(items);
  std::printf("  stamps %s: %lld blocks, %lld items (%.1f a block), %.1f stages an item; cycles an item: "
              "first stage %.0f | main loop %.0f (%.0f a stage; FULL waits %.0f incl. the first) | epilogue %.0f | "
              "between items %.0f | producer EMPTY waits %.0f; block span mean %.0f max %.0f cycles, GEMM %.1f us "
              "(-> %.2f GHz at the max span)\n",
              gemm, static_cast<long long>(blocks), items, ni / blocks, stages / ni, ramp / ni, loop / ni,
              loop / std::max(1.0, stages - ni), full / ni, epi / ni, gaps ? gap / gaps : 0.0, empty / ni,
              span / blocks, span_max, gemm_us, span_max / (gemm_us * 1e3));
}
#endif


struct Model {
  const char* name;
  int64_t E, K, H, I;
  RoutingMethod method;
  Activation activation;
  bool biases;
};
const Model kModels[] = {
    {"qwen3-30b-a3b", 128, 8, 2048, 768, RoutingMethod::kRENORMALIZE, Activation::kSWIGLU, false},
    {"gpt-oss-120b", 128, 4, 2880, 2880, RoutingMethod::kRENORMALIZE, Activation::kSWIGLU_OAI, true},
    {"deepseek-v3", 256, 8, 7168, 2048, RoutingMethod::kDEEPSEEK_V3, Activation::kSWIGLU, false},
    {"mixtral-8x7b", 8, 2, 4096, 14336, RoutingMethod::kRENORMALIZE, Activation::kSWIGLU, false},
};

// Hash-based fills (device side: gigabytes of weights in milliseconds).
__device__ uint32_t Mix(uint64_t i, uint32_t seed) {
  uint64_t z = i * 0x9e3779b97f4a7c15ull + seed;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return static_cast<uint32_t>(z ^ (z >> 31));
}
__global__ void FillBytes(uint8_t* p, size_t n, uint32_t seed, int lo, int hi) {
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < n; i += size_t{gridDim.x} * blockDim.x)
    p[i] = static_cast<uint8_t>(lo + Mix(i, seed) % static_cast<uint32_t>(hi - lo + 1));
}
__global__ void FillFloats(float* p, size_t n, uint32_t seed, float scale) {
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < n; i += size_t{gridDim.x} * blockDim.x)
    p[i] = scale * (static_cast<float>(Mix(i, seed) >> 8) * 0x1p-23f - 1.0f);
}
__global__ void FillBf16(uint16_t* p, size_t n, uint32_t seed) {
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < n; i += size_t{gridDim.x} * blockDim.x) {
    const float v = 2.0f * (static_cast<float>(Mix(i, seed) >> 8) * 0x1p-23f - 1.0f);
    p[i] = static_cast<uint16_t>(__float_as_uint(v) >> 16);
  }
}

std::vector<void*> g_allocs;
template <typename T>
T* Alloc(size_t n) {
  void* d = nullptr;
  CHECK_CUDA(cudaMalloc(&d, n * sizeof(T) + 16));
  g_allocs.push_back(d);
  return static_cast<T*>(d);
}
uint32_t g_seed = 1;
uint8_t* RandomBytes(size_t n, int lo, int hi) {
  uint8_t* d = Alloc<uint8_t>(n);
  FillBytes<<<1024, 256>>>(d, n, g_seed++, lo, hi);
  return d;
}
float* RandomFloats(size_t n, float scale) {
  float* d = Alloc<float>(n);
  FillFloats<<<1024, 256>>>(d, n, g_seed++, scale);
  return d;
}
float* Constant(size_t n, float v) {
  std::vector<float> h(n, v);
  float* d = Alloc<float>(n);
  CHECK_CUDA(cudaMemcpy(d, h.data(), n * sizeof(float), cudaMemcpyHostToDevice));
  return d;
}

std::vector<std::string> Split(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  for (std::string item; std::getline(ss, item, ',');)
    if (!item.empty()) out.push_back(item);
  return out;
}

double Median(std::vector<float> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : 1e3 * v[v.size() / 2];  // ms -> us
}

int TimeOne(const Model& m, int64_t T, const std::string& tactic_name, Format wf, Format af, int reps,
            uint8_t* flush, size_t flush_bytes, bool finalize_kinds) {
  MoeProblem p;
  p.num_tokens = T; p.hidden_size = m.H; p.intermediate_size = m.I;
  p.num_local_experts = m.E; p.local_expert_offset = 0;
  p.weight_format = wf; p.act_format = af;
  const bool ds = m.method == RoutingMethod::kDEEPSEEK_V3;
  p.routing = RoutingParams{m.method, static_cast<int>(m.E), static_cast<int>(m.K), ds ? 8 : 0, ds ? 4 : 0,
                            ds ? 2.5f : 1.0f};
  p.activation = ActivationParams{m.activation, 1.702f, 1.0f, 7.0f};
  p.has_b13 = p.has_b2 = m.biases;
  p.has_routing_bias = ds;
  p.per_expert_w13_global = p.per_expert_w2_global = true;
  p.do_finalize = true;
  // "default": the default row for both GEMMs; "a": row a for both;
  // "a+b": GEMM1 runs a, GEMM2 b.
  auto find = [](const std::string& name) {
    for (size_t i = 0; i < TacticTable().size(); ++i)
      if (name == TacticTable()[i].name) return static_cast<int64_t>(i);
    return int64_t{-1};
  };
  if (tactic_name == "default") {
    p.tactic = DefaultTactic(p, Platform::kCuda);
  } else {
    const size_t plus = tactic_name.find('+');
    p.tactic = find(tactic_name.substr(0, plus));
    p.gemm2_tactic = plus == std::string::npos ? p.tactic : find(tactic_name.substr(plus + 1));
    if (p.tactic < 0 || p.gemm2_tactic < 0) { std::printf("unknown tactic %s\n", tactic_name.c_str()); return 1; }
  }
  const std::string invalid = ValidateProblem(p) + TacticInvalidReason(p, Platform::kCuda, p.tactic) +
                              Gemm2TacticInvalidReason(p, Platform::kCuda);
  if (!invalid.empty()) { std::printf("invalid: %s\n", invalid.c_str()); return 1; }
  const Tactic& tactic = TacticTable()[p.tactic];
  const Tactic& tactic2 = TacticTable()[Gemm2Tactic(p)];
  // (MXFP8 activations: the label carries "@mxfp8", so rows of both kinds stay apart.)
  const std::string label = (Gemm2Tactic(p) == p.tactic ? std::string(tactic.name)
                                                        : std::string(tactic.name) + "+" + tactic2.name) +
                            (af == Format::kMXFP8 ? "@mxfp8" : "");
  const WorkspaceLayout layout = PlanWorkspaceFor(p, tactic, tactic2);
  const int64_t H = m.H, I = m.I, E = m.E;
  const int wb = BlockSize(wf);
  const bool nv = wf == Format::kNVFP4;
  MoeBuffers b{};
  if (af == Format::kMXFP8) {
    // Positive e4m3 codes 0x00..0x7e (no NaN), ue8m0 scales 2^-7 .. 1.
    b.hidden = RandomBytes(T * H, 0, 0x7e);
    b.hidden_scale = RandomBytes(T * H / 32, 120, 127);
  } else {
    uint16_t* x = Alloc<uint16_t>(T * H);
    FillBf16<<<1024, 256>>>(x, T * H, g_seed++);
    b.hidden = x;
  }
  b.hidden_global = Constant(1, 1.0f);
  b.logits = RandomFloats(T * E, 4.0f);
  if (ds) b.routing_bias = RandomFloats(E, 0.1f);
  auto scales = [&](size_t n) { return nv ? RandomBytes(n, 0x28, 0x38) : RandomBytes(n, 118, 124); };
  b.w13 = RandomBytes(E * 2 * I * H / 2, 0, 255);
  b.w13_scale = scales(E * 2 * I * H / wb);
  b.w13_global = Constant(E, nv ? 2.0f : 1.0f);
  b.w2 = RandomBytes(E * H * I / 2, 0, 255);
  b.w2_scale = scales(E * H * I / wb);
  b.w2_global = Constant(E, nv ? 2.0f : 1.0f);
  if (m.biases) {
    b.b13 = RandomFloats(E * 2 * I, 0.1f);
    b.b2 = RandomFloats(E * H, 0.1f);
  }
  b.h_global = Constant(1, 50.0f);
  b.out = Alloc<uint16_t>(T * H);
  b.topk_ids = Alloc<int32_t>(T * m.K);
  b.topk_weights = Alloc<float>(T * m.K);
  b.workspace = Alloc<uint8_t>(layout.total);
  b.workspace_bytes = layout.total;
  const Workspace ws = ViewWorkspace(layout, b.workspace);
  CHECK_CUDA(cudaDeviceSynchronize());

  cudaStream_t s;
  CHECK_CUDA(cudaStreamCreate(&s));
  cudaEvent_t ev[6];
  for (auto& e : ev) CHECK_CUDA(cudaEventCreate(&e));
  const char* names[5] = {"routing", "permute", "gemm1", "gemm2", "finalize"};
  const bool fused = cuda::RoutingFusesPermute(p);
  auto stage = [&](int i) -> ffi::Error {
    switch (i) {
      // Fused routing (the default at T <= 8; JAX_MOE_FUSED_ROUTING=0 turns it off): one kernel, timed as "routing" (permute ~0).
      case 0: return fused ? cuda::LaunchRoutingAndPermute(p, b, ws, s) : cuda::LaunchRouting(p, b, s);
      case 1: return fused ? ffi::Error::Success() : cuda::LaunchPermute(p, b.topk_ids, ws, s);
      case 2: return cuda::LaunchGemm1(p, b, ws, p.tactic, s);
      case 3: return cuda::LaunchGemm2(p, b, ws, Gemm2Tactic(p), s);
      default: return cuda::LaunchFinalize(p, b, ws, s);
    }
  };
  std::vector<float> per[5], whole;
  cuda::g_max_k_splits.store(1);
#ifdef JAX_MOE_RS_STAMPS
  CHECK_CUDA(cuda::RsStampsGemm1(nullptr));
  CHECK_CUDA(cuda::RsStampsGemm2(nullptr));
#endif
  for (int rep = -2; rep < reps; ++rep) {  // two warm-ups
    for (int pass = 0; pass < 2; ++pass) {  // pass 0: events between stages; pass 1: around the pipeline
      CHECK_CUDA(cudaMemsetAsync(flush, rep & 0xff, flush_bytes, s));
      CHECK_CUDA(cudaEventRecord(ev[0], s));
      for (int i = 0; i < 5; ++i) {
        const ffi::Error err = stage(i);
        if (err.failure()) { std::printf("%s failed: %s\n", names[i], err.message().c_str()); return 1; }
        if (pass == 0 || i == 4) CHECK_CUDA(cudaEventRecord(ev[pass == 0 ? i + 1 : 5], s));
      }
      CHECK_CUDA(cudaEventSynchronize(ev[5]));
      if (rep < 0) continue;
      float ms = 0;
      if (pass == 0) {
        for (int i = 0; i < 5; ++i) {
          CHECK_CUDA(cudaEventElapsedTime(&ms, ev[i], ev[i + 1]));
          per[i].push_back(ms);
        }
      } else {
        CHECK_CUDA(cudaEventElapsedTime(&ms, ev[0], ev[5]));
        whole.push_back(ms);
      }
    }
  }
  std::printf("%-14s %s T=%-6lld %-22s splits<=%d pipeline %9.1f us |", m.name, nv ? "nvfp4" : "mxfp4",
              static_cast<long long>(T), label.c_str(), cuda::g_max_k_splits.load(), Median(whole));
  for (int i = 0; i < 5; ++i) std::printf(" %s %8.1f", names[i], Median(per[i]));
  std::printf("\n");
#ifdef JAX_MOE_RS_STAMPS
  PrintRsStamps("gemm1", cuda::RsStampsGemm1, Median(per[2]));
  PrintRsStamps("gemm2", cuda::RsStampsGemm2, Median(per[3]));
#endif
  if (finalize_kinds) {
    // The finalize kernels alone on this run's y and maps (the issue's finalize
    // target: share of HBM bandwidth on its own bytes, vectorized vs scalar):
    // bytes = the K bf16 rows read per token + the output row written.
    const double bytes = static_cast<double>(T) * H * 2 * (m.K + 1);
    std::printf("finalize %-14s T=%-6lld K=%lld H=%lld %.2f MB |", m.name, static_cast<long long>(T),
                static_cast<long long>(m.K), static_cast<long long>(H), bytes / 1e6);
    const std::pair<const char*, cuda::FinalizeKernel> kinds[2] = {{"vectorized", cuda::FinalizeKernel::kVectorized},
                                                                   {"scalar", cuda::FinalizeKernel::kScalar}};
    for (const auto& [kind_name, kind] : kinds) {
      std::vector<float> t;
      for (int rep = -2; rep < reps; ++rep) {
        CHECK_CUDA(cudaMemsetAsync(flush, rep & 0xff, flush_bytes, s));
        CHECK_CUDA(cudaEventRecord(ev[0], s));
        const ffi::Error err = cuda::LaunchFinalizeKernel(p, b, ws, kind, s);
        if (err.failure()) { std::printf("finalize failed: %s\n", err.message().c_str()); return 1; }
        CHECK_CUDA(cudaEventRecord(ev[1], s));
        CHECK_CUDA(cudaEventSynchronize(ev[1]));
        float ms = 0;
        CHECK_CUDA(cudaEventElapsedTime(&ms, ev[0], ev[1]));
        if (rep >= 0) t.push_back(ms);
      }
      const double us = Median(t);
      std::printf(" %s %8.1f us %6.0f GB/s", kind_name, us, bytes / (us * 1e3));
    }
    std::printf("\n");
  }
  std::fflush(stdout);
  for (auto& e : ev) CHECK_CUDA(cudaEventDestroy(e));
  CHECK_CUDA(cudaStreamDestroy(s));
  for (void* d : g_allocs) CHECK_CUDA(cudaFree(d));
  g_allocs.clear();
  return 0;
}

// --- Access-pattern probe (--pattern): is the decode GEMMs' weight stream
// limited by how it touches HBM? Each warp reads what a staged-family warp
// reads per K block of 128 (64 weight rows x 64 bytes), either from rows
// `row_bytes` apart (the linear [rows, K/2] layout: every 64 bytes is a new
// DRAM page) or as one contiguous 4 KiB chunk (a K-block-major tiled
// layout), with 4 K blocks of loads in flight per lane; same bytes, same
// warps, same grid. `spin` > 0 paces it like the kernel: the K blocks are
// requested one at a time, `spin` dependent ALU ops (the decode's cost) apart,
// 4 in flight; spin = 0 requests 4 K blocks at once (a row's 256 bytes together).
template <bool kTiled>
__global__ void __launch_bounds__(128) ReadWeightsLike(const uint8_t* w, int64_t row_bytes, int k_blocks,
                                                       int spin, uint32_t* sink) {
  const int lane = threadIdx.x % 32, g = lane / 4, q = lane % 4;
  const int64_t warp = (blockIdx.x * int64_t{blockDim.x} + threadIdx.x) / 32;
  const uint8_t* base = w + warp * 64 * row_bytes;  // this warp's 64 rows (= 64 * row_bytes bytes either way)
  auto at = [&](int kb, int r) {
    const int64_t off = kTiled ? int64_t{kb} * 4096 + (r * 32 + lane) * 16
                               : (g + 8 * r) * row_bytes + int64_t{kb} * 64 + q * 16;
    return __ldg(reinterpret_cast<const uint4*>(base + off));
  };
  uint32_t acc = 0;
  if (spin > 0) {
    uint4 v[4][8];
#pragma unroll
    for (int d = 0; d < 3; ++d)
#pragma unroll
      for (int r = 0; r < 8; ++r) v[d][r] = at(min(d, k_blocks - 1), r);
    for (int kb = 0; kb < k_blocks; kb += 4) {
#pragma unroll
      for (int d = 0; d < 4; ++d) {  // slot d holds K block kb + d; refill slot (d + 3) % 4
#pragma unroll
        for (int r = 0; r < 8; ++r) v[(d + 3) % 4][r] = at(min(kb + d + 3, k_blocks - 1), r);
        uint32_t x = acc;
#pragma unroll
        for (int r = 0; r < 8; ++r) x ^= v[d][r].x ^ v[d][r].y ^ v[d][r].z ^ v[d][r].w;
        for (int s = 0; s < spin; ++s) x = x * 1664525u + 1013904223u;  // the decode's ALU time
        acc = x;
      }
    }
    if (acc == 0x12345678u) sink[0] = acc;
    return;
  }
  for (int kb0 = 0; kb0 < k_blocks; kb0 += 4) {
    uint4 v[4][8];
#pragma unroll
    for (int d = 0; d < 4; ++d)
#pragma unroll
      for (int r = 0; r < 8; ++r) {
        v[d][r] = at(min(kb0 + d, k_blocks - 1), r);
      }
#pragma unroll
    for (int d = 0; d < 4; ++d)
#pragma unroll
      for (int r = 0; r < 8; ++r) acc ^= v[d][r].x ^ v[d][r].y ^ v[d][r].z ^ v[d][r].w;
  }
  if (acc == 0x12345678u) sink[0] = acc;  // keeps the loads
}

int ProbePatterns(int reps, uint8_t* flush, size_t flush_bytes) {
  struct Shape { const char* what; int64_t warps, row_bytes; };
  // Warps and row lengths of GEMM1 at T = 1 (8 / 4 experts x 2I / 64 row groups; K / 2 bytes per row).
  const Shape shapes[] = {{"deepseek-v3 gemm1 T=1", 8 * 4096 / 64, 3584},
                          {"gpt-oss-120b gemm1 T=1", 4 * 5760 / 64, 1440},
                          {"qwen3-30b-a3b gemm1 T=1", 8 * 1536 / 64, 1024},
                          {"4x more warps, deepseek rows", 4 * 8 * 4096 / 64, 3584 / 4}};
  for (const Shape& s : shapes) {
    const size_t bytes = static_cast<size_t>(s.warps * 64 * s.row_bytes);
    uint8_t* w = RandomBytes(bytes, 0, 255);
    uint32_t* sink = Alloc<uint32_t>(1);
    const int k_blocks = static_cast<int>(s.row_bytes / 64);
    cudaEvent_t e0, e1;
    CHECK_CUDA(cudaEventCreate(&e0));
    CHECK_CUDA(cudaEventCreate(&e1));
    for (int variant = 0; variant < 6; ++variant) {
      const int tiled = variant % 2, spin = (variant / 2) * 200;  // spin 0, 200, 400
      std::vector<float> t;
      for (int rep = -2; rep < reps; ++rep) {
        CHECK_CUDA(cudaMemsetAsync(flush, rep & 0xff, flush_bytes));
        CHECK_CUDA(cudaEventRecord(e0));
        const unsigned blocks = static_cast<unsigned>((s.warps + 3) / 4);
        if (tiled) ReadWeightsLike<true><<<blocks, 128>>>(w, s.row_bytes, k_blocks, spin, sink);
        else ReadWeightsLike<false><<<blocks, 128>>>(w, s.row_bytes, k_blocks, spin, sink);
        CHECK_CUDA(cudaGetLastError());
        CHECK_CUDA(cudaEventRecord(e1));
        CHECK_CUDA(cudaEventSynchronize(e1));
        float ms = 0;
        CHECK_CUDA(cudaEventElapsedTime(&ms, e0, e1));
        if (rep >= 0) t.push_back(ms);
      }
      const double us = Median(t);
      std::printf("pattern %-30s %-6s spin %3d %5lld warps %8.2f MB %8.1f us %7.0f GB/s\n", s.what,
                  tiled ? "tiled" : "linear", spin, static_cast<long long>(s.warps), bytes / 1e6, us, bytes / us / 1e3);
    }
    CHECK_CUDA(cudaEventDestroy(e0));
    CHECK_CUDA(cudaEventDestroy(e1));
    for (void* d : g_allocs) CHECK_CUDA(cudaFree(d));
    g_allocs.clear();
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::string models = "qwen3-30b-a3b,gpt-oss-120b,deepseek-v3,mixtral-8x7b", tokens = "1,8,64",
              tactics = "default", weights = "nvfp4", acts = "bf16";
  int reps = 30;
  bool pattern = false, finalize_kinds = false;
  for (int i = 1; i < argc; ++i) {
    if (std::string(argv[i]) == "--pattern") pattern = true;
    if (std::string(argv[i]) == "--finalize") finalize_kinds = true;
  }
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--pattern" || k == "--finalize") { --i; continue; }
    if (k == "--models") models = v;
    else if (k == "--tokens") tokens = v;
    else if (k == "--tactics") tactics = v;
    else if (k == "--weights") weights = v;
    else if (k == "--acts") acts = v;
    else if (k == "--reps") reps = std::atoi(v.c_str());
    else { std::printf("unknown option %s\n", k.c_str()); return 1; }
  }
  const size_t flush_bytes = size_t{256} << 20;
  uint8_t* flush = nullptr;
  CHECK_CUDA(cudaMalloc(&flush, flush_bytes));
  auto env = [](const char* name) {
    const char* v = std::getenv(name);
    return v ? v : "(unset)";
  };
  // The knobs the handlers read per call: split cap, L2 prefetch distance,
  // dependent launch, activation prefetch, fused routing (timer_report keys the rows on them).
  std::printf("stage_timer: median of %d, L2 flushed before each, JAX_MOE_MAX_K_SPLITS=%s "
              "JAX_MOE_L2_PREFETCH=%s JAX_MOE_DEPENDENT_LAUNCH=%s JAX_MOE_ACT_PREFETCH=%s JAX_MOE_FUSED_ROUTING=%s "
              "JAX_MOE_MIN_KB_PER_SPLIT=%s JAX_MOE_RS_MXFP8=%s\n",
              reps, env("JAX_MOE_MAX_K_SPLITS"), env("JAX_MOE_L2_PREFETCH"), env("JAX_MOE_DEPENDENT_LAUNCH"),
              env("JAX_MOE_ACT_PREFETCH"), env("JAX_MOE_FUSED_ROUTING"), env("JAX_MOE_MIN_KB_PER_SPLIT"),
              env("JAX_MOE_RS_MXFP8"));
  if (pattern) return ProbePatterns(reps, flush, flush_bytes);
  int failures = 0;
  for (const std::string& w : Split(weights))
    for (const std::string& name : Split(models)) {
      const Model* m = nullptr;
      for (const Model& c : kModels)
        if (name == c.name) m = &c;
      if (m == nullptr) { std::printf("unknown model %s\n", name.c_str()); return 1; }
      for (const std::string& t : Split(tokens))
        for (const std::string& tac : Split(tactics))
          failures += TimeOne(*m, std::atoll(t.c_str()), tac, w == "mxfp4" ? Format::kMXFP4 : Format::kNVFP4,
                              acts == "mxfp8" ? Format::kMXFP8 : Format::kBF16,
                              reps, flush, flush_bytes, finalize_kinds);
    }
  CHECK_CUDA(cudaFree(flush));
  return failures ? 1 : 0;
}
