// The CUDA routing stage alone, without JAX: checked against the CPU's
// RouteToken (common/routing_math.h) on random logits for every method, lane
// width (E from 2 to 512), both DeepSeek-V3 grouping paths, biases, ties, and
// T = 1 / odd T; at T <= 8 also the fused routing + permute kernel
// (JAX_MOE_FUSED_ROUTING=1: the same ids and weights bit for bit, and the
// permute outputs against a host permute of those ids, all experts local and
// a local range); then timed per model shape (events, L2 flushed before each
// repetition, median; fused vs separate kernels at T <= 8). Seconds to build and run, so a routing change can be
// checked on a device without the whole extension (benchmarks/gpu_check.sh
// routing).
//
//   nvcc -std=c++17 -arch=sm_90a -O3 --expt-relaxed-constexpr -isystem <jaxlib>/include -Iffi_src \
//     tests/cuda/routing_check.cu ffi_src/cuda/{routing,permute}.cu ffi_src/common/problem.cc \
//     -o routing_check && ./routing_check
//   ./routing_check --no-check --models deepseek-v3 --tokens 1 --reps 1    # e.g. under ncu
//
// With -DROUTING_BASELINE and another routing.cu compiled with
// -DLaunchRouting=LaunchRoutingBaseline, it also checks that the two kernels
// pick the same experts and times both in the same run.
//
// Expert ids must equal the CPU's, except at near-ties of DeepSeek-V3 and
// softmax scores (the CPU and CUDA expf differ by an ulp or two, which can
// swap two experts whose scores differ by less than that): those are counted
// and printed, and fail only when the scores involved are not within 1e-6.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "common/problem.h"
#include "common/routing_math.h"
#include "common/workspace.h"
#include "cuda/stages.cuh"
#include "driver_check.h"

using namespace jax_moe;

#ifdef ROUTING_BASELINE
namespace jax_moe::cuda {
ffi::Error LaunchRoutingBaseline(const MoeProblem& p, const MoeBuffers& b, cudaStream_t stream);
}
#endif

namespace {

std::mt19937 rng(20261202);

struct Case {
  RoutingMethod method;
  int E, K, n_group, topk_group, T;
  bool bias;
  int ties;  // 0: normal logits; 1: logits on a 0.5 grid (many equal scores); 2: all equal
};

const char* MethodName(RoutingMethod m) {  // from the one list in common/enums.h
#define JAX_MOE_METHOD_NAME(name, value) \
  if (m == RoutingMethod::k##name) return #name;
  JAX_MOE_ROUTING_METHODS(JAX_MOE_METHOD_NAME)
#undef JAX_MOE_METHOD_NAME
  return "?";
}

MoeProblem Problem(const Case& c) {
  MoeProblem p;
  p.num_tokens = c.T;
  p.routing = RoutingParams{c.method, c.E, c.K, c.n_group, c.topk_group, 2.5f};
  p.has_routing_bias = c.bias;
  return p;
}

struct DeviceRouting {
  float *logits = nullptr, *bias = nullptr, *weights = nullptr;
  int32_t* ids = nullptr;
  DeviceRouting(const Case& c, const std::vector<float>& x, const std::vector<float>& b) {
    CHECK_CUDA(cudaMalloc(&logits, x.size() * sizeof(float)));
    CHECK_CUDA(cudaMemcpy(logits, x.data(), x.size() * sizeof(float), cudaMemcpyHostToDevice));
    if (c.bias) {
      CHECK_CUDA(cudaMalloc(&bias, b.size() * sizeof(float)));
      CHECK_CUDA(cudaMemcpy(bias, b.data(), b.size() * sizeof(float), cudaMemcpyHostToDevice));
    }
    CHECK_CUDA(cudaMalloc(&ids, size_t{1} * c.T * c.K * sizeof(int32_t)));
    CHECK_CUDA(cudaMalloc(&weights, size_t{1} * c.T * c.K * sizeof(float)));
  }
  ~DeviceRouting() {
    cudaFree(logits);
    cudaFree(bias);
    cudaFree(ids);
    cudaFree(weights);
  }
  MoeBuffers Buffers() const {
    MoeBuffers b{};
    b.logits = logits;
    b.routing_bias = bias;
    b.topk_ids = ids;
    b.topk_weights = weights;
    return b;
  }
};

using Launcher = ffi::Error (*)(const MoeProblem&, const MoeBuffers&, cudaStream_t);

// Runs `launch` with poisoned outputs (ids -1, weights NaN) and reads them back.
void RunGpu(Launcher launch, const Case& c, const DeviceRouting& d, std::vector<int32_t>* ids,
            std::vector<float>* w) {
  const size_t n = size_t{1} * c.T * c.K;
  CHECK_CUDA(cudaMemset(d.ids, 0xff, n * sizeof(int32_t)));
  CHECK_CUDA(cudaMemset(d.weights, 0xff, n * sizeof(float)));
  const ffi::Error e = launch(Problem(c), d.Buffers(), 0);
  if (e.failure()) {
    std::printf("routing launch failed: %s\n", e.message().c_str());
    std::exit(2);
  }
  CHECK_CUDA(cudaDeviceSynchronize());
  ids->resize(n);
  w->resize(n);
  CHECK_CUDA(cudaMemcpy(ids->data(), d.ids, n * sizeof(int32_t), cudaMemcpyDeviceToHost));
  CHECK_CUDA(cudaMemcpy(w->data(), d.weights, n * sizeof(float), cudaMemcpyDeviceToHost));
}

// The CPU's selection score of expert e (before group masking), for near-tie checks.
float SelectionScore(const Case& c, const float* x, const float* b, int e) {
  if (c.method == RoutingMethod::kDEEPSEEK_V3) return Sigmoid(x[e]) + (c.bias ? b[e] : 0.0f);
  if (c.method == RoutingMethod::kDEFAULT) {
    float m = -INFINITY, s = 0.0f;
    for (int i = 0; i < c.E; ++i) m = std::max(m, x[i]);
    for (int i = 0; i < c.E; ++i) s += std::exp(x[i] - m);
    return std::exp(x[e] - m) / s;
  }
  return x[e];
}

bool Close(float a, float b, float rtol) {
  return std::isfinite(a) && std::isfinite(b) && std::fabs(a - b) <= rtol * std::max(std::fabs(b), 1e-30f);
}

// The permute outputs for `ids` against a host permute: counts, offsets,
// live tiles and tile -> expert exactly; each local pair in its expert's
// rows, each row once (the order inside an expert is an atomic's).
int CheckPermute(const MoeProblem& p, const WorkspaceLayout& l, const std::vector<uint8_t>& host_ws,
                 const std::vector<int32_t>& ids, const char* what) {
  const Workspace ws = ViewWorkspace(l, const_cast<uint8_t*>(host_ws.data()));
  const int El = static_cast<int>(p.num_local_experts), off = static_cast<int>(p.local_expert_offset);
  const int64_t TK = p.expanded(), tile = l.tile;
  std::vector<int32_t> count(El, 0), offsets(El + 1, 0);
  for (int32_t id : ids)
    if (id - off >= 0 && id - off < El) ++count[id - off];
  for (int e = 0; e < El; ++e) offsets[e + 1] = offsets[e] + static_cast<int32_t>((count[e] + tile - 1) / tile * tile);
  const int32_t live = static_cast<int32_t>(offsets[El] / tile);
  int bad = 0;
  auto fail = [&](const char* field, int64_t i, int64_t got, int64_t want) {
    if (bad++ < 3) std::printf("  PERMUTE %s: %s[%lld] = %lld, want %lld\n", what, field, static_cast<long long>(i),
                               static_cast<long long>(got), static_cast<long long>(want));
  };
  for (int e = 0; e < El; ++e)
    if (ws.counts[e] != count[e]) fail("counts", e, ws.counts[e], count[e]);
  for (int e = 0; e <= El; ++e)
    if (ws.offsets[e] != offsets[e]) fail("offsets", e, ws.offsets[e], offsets[e]);
  if (*ws.num_tiles != live) fail("num_tiles", 0, *ws.num_tiles, live);
  for (int64_t t = 0; t < l.max_tiles; ++t) {
    int32_t want = -1;
    for (int e = 0; e < El && t < live; ++e)
      if (t * tile >= offsets[e] && t * tile < offsets[e + 1]) want = e;
    if (ws.tile_expert[t] != want) fail("tile_expert", t, ws.tile_expert[t], want);
  }
  std::vector<int> seen(l.max_rows, 0);
  for (int64_t ex = 0; ex < TK; ++ex) {
    const int e = ids[ex] - off;
    const int32_t row = ws.expanded_to_permuted[ex];
    if (e < 0 || e >= El) {
      if (row != -1) fail("expanded_to_permuted (non-local)", ex, row, -1);
      continue;
    }
    if (row < offsets[e] || row >= offsets[e] + count[e]) { fail("expanded_to_permuted", ex, row, offsets[e]); continue; }
    if (seen[row]++) fail("row used twice", row, row, -1);
    if (ws.permuted_to_expanded[row] != ex) fail("permuted_to_expanded", row, ws.permuted_to_expanded[row], ex);
  }
  for (int64_t r = 0; r < l.max_rows; ++r)
    if (!seen[r] && ws.permuted_to_expanded[r] != -1) fail("permuted_to_expanded (padding)", r, ws.permuted_to_expanded[r], -1);
  return bad;
}

// T <= 8: the fused kernel (JAX_MOE_FUSED_ROUTING=1) against the separate
// ones, for all experts local and for a local range (expert parallelism).
int CheckFused(const Case& c, const DeviceRouting& d, const std::vector<int32_t>& ids, const std::vector<float>& w) {
  int failures = 0;
  for (int ranged = 0; ranged < 2; ++ranged) {
    MoeProblem p = Problem(c);
    p.hidden_size = 64;
    p.intermediate_size = 64;
    p.num_local_experts = ranged && c.E >= 4 ? c.E / 2 : c.E;
    p.local_expert_offset = ranged && c.E >= 4 ? c.E / 4 : 0;
    const WorkspaceLayout l = PlanWorkspace(p, /*tile=*/8, /*split_k_limit=*/2);  // tickets zeroed too
    uint8_t* dws = nullptr;
    CHECK_CUDA(cudaMalloc(&dws, l.total));
    const Workspace ws = ViewWorkspace(l, dws);
    std::vector<uint8_t> host(l.total);
    for (int fused = 0; fused < 2; ++fused) {
      setenv("JAX_MOE_FUSED_ROUTING", fused ? "1" : "0", 1);
      if (cuda::RoutingFusesPermute(p) != (fused == 1)) {
        std::printf("  RoutingFusesPermute(T=%d) = %d with JAX_MOE_FUSED_ROUTING=%d\n", c.T, !fused, fused);
        ++failures;
      }
      const size_t n = size_t{1} * c.T * c.K;
      CHECK_CUDA(cudaMemset(d.ids, 0xff, n * sizeof(int32_t)));
      CHECK_CUDA(cudaMemset(d.weights, 0xff, n * sizeof(float)));
      CHECK_CUDA(cudaMemset(dws, 0x7b, l.total));  // poison: every field must be written
      const ffi::Error e = cuda::LaunchRoutingAndPermute(p, d.Buffers(), ws, 0);
      if (e.failure()) { std::printf("routing + permute failed: %s\n", e.message().c_str()); std::exit(2); }
      CHECK_CUDA(cudaDeviceSynchronize());
      std::vector<int32_t> got_ids(n);
      std::vector<float> got_w(n);
      CHECK_CUDA(cudaMemcpy(got_ids.data(), d.ids, n * sizeof(int32_t), cudaMemcpyDeviceToHost));
      CHECK_CUDA(cudaMemcpy(got_w.data(), d.weights, n * sizeof(float), cudaMemcpyDeviceToHost));
      CHECK_CUDA(cudaMemcpy(host.data(), dws, l.total, cudaMemcpyDeviceToHost));
      if (got_ids != ids || std::memcmp(got_w.data(), w.data(), n * sizeof(float)) != 0) {
        std::printf("  FUSED=%d ROUTING DIFFERS %s E=%d K=%d T=%d\n", fused, MethodName(c.method), c.E, c.K, c.T);
        ++failures;
      }
      const int bad = CheckPermute(p, l, host, got_ids, fused ? "fused" : "separate");
      for (int64_t i = 0; i < l.num_tickets && !bad; ++i)
        if (reinterpret_cast<const int32_t*>(host.data() + l.tickets)[i] != 0) {
          std::printf("  ticket %lld not zeroed (fused=%d)\n", static_cast<long long>(i), fused);
          ++failures;
          break;
        }
      failures += bad > 0;
    }
    unsetenv("JAX_MOE_FUSED_ROUTING");
    cudaFree(dws);
  }
  return failures;
}

// Returns the number of failures; counts near-ties in *near.
int CheckCase(const Case& c, int* near) {
  std::normal_distribution<float> normal(0.0f, 1.5f);
  std::vector<float> x(size_t{1} * c.T * c.E), b(c.E);
  for (auto& v : x) v = c.ties == 2 ? 0.25f : c.ties == 1 ? std::round(normal(rng) * 2.0f) / 2.0f : normal(rng);
  for (auto& v : b) v = c.ties ? std::round(normal(rng) * 4.0f) / 16.0f : 0.1f * normal(rng);
  DeviceRouting d(c, x, b);
  std::vector<int32_t> ids;
  std::vector<float> w;
  RunGpu(cuda::LaunchRouting, c, d, &ids, &w);
  int failures = 0;
  const bool fuzzy = c.method == RoutingMethod::kDEEPSEEK_V3 || c.method == RoutingMethod::kDEFAULT;
  for (int t = 0; t < c.T; ++t) {
    int32_t want_ids[kMaxTopK];
    float want_w[kMaxTopK];
    const float* xt = x.data() + size_t{1} * t * c.E;
    RouteToken(xt, c.bias ? b.data() : nullptr, Problem(c).routing, want_ids, want_w);
    const int32_t* got_ids = ids.data() + size_t{1} * t * c.K;
    const float* got_w = w.data() + size_t{1} * t * c.K;
    bool same_ids = std::equal(want_ids, want_ids + c.K, got_ids);
    if (!same_ids && fuzzy) {
      // A near-tie: every differing pair of choices has scores within 1e-6.
      bool all_near = true;
      for (int k = 0; k < c.K; ++k) {
        if (got_ids[k] == want_ids[k]) continue;
        if (got_ids[k] < 0 || got_ids[k] >= c.E) { all_near = false; break; }
        const float sg = SelectionScore(c, xt, b.data(), got_ids[k]);
        const float sw = SelectionScore(c, xt, b.data(), want_ids[k]);
        all_near = all_near && std::fabs(sg - sw) <= 1e-6f * std::max(std::fabs(sw), 1e-30f);
      }
      if (all_near) {
        ++*near;
        continue;
      }
    }
    bool ok = same_ids;
    for (int k = 0; k < c.K && ok; ++k) ok = Close(got_w[k], want_w[k], 1e-5f);
    if (!ok) {
      if (failures < 3) {
        std::printf("  MISMATCH %s E=%d K=%d groups=%d/%d T=%d bias=%d ties=%d token %d\n    gpu:", MethodName(c.method),
                    c.E, c.K, c.n_group, c.topk_group, c.T, c.bias, c.ties, t);
        for (int k = 0; k < c.K; ++k) std::printf(" %d:%.7g", got_ids[k], got_w[k]);
        std::printf("\n    cpu:");
        for (int k = 0; k < c.K; ++k) std::printf(" %d:%.7g", want_ids[k], want_w[k]);
        std::printf("\n");
      }
      ++failures;
    }
  }
  if (c.T <= 8) failures += CheckFused(c, d, ids, w);
#ifdef ROUTING_BASELINE
  // The baseline kernel uses the same CUDA expf: the same experts, always.
  std::vector<int32_t> base_ids;
  std::vector<float> base_w;
  RunGpu(cuda::LaunchRoutingBaseline, c, d, &base_ids, &base_w);
  if (base_ids != ids) {
    std::printf("  BASELINE DIFFERS %s E=%d K=%d groups=%d/%d T=%d ties=%d\n", MethodName(c.method), c.E, c.K,
                c.n_group, c.topk_group, c.T, c.ties);
    ++failures;
  }
#endif
  return failures;
}

std::vector<Case> Cases() {
  std::vector<Case> cases;
  const RoutingMethod plain[] = {RoutingMethod::kDEFAULT, RoutingMethod::kRENORMALIZE, RoutingMethod::kTOPK,
                                 RoutingMethod::kLLAMA4};
  for (RoutingMethod m : plain)
    for (int E : {2, 7, 8, 31, 32, 33, 64, 100, 128, 129, 256, 257, 384, 512})
      for (int K : {1, 2, 4, 8, 16})
        if (K <= E)
          for (int T : {1, 8, 37})
            for (int ties : {0, 1}) cases.push_back(Case{m, E, K, 0, 0, T, false, ties});
  // DeepSeek-V3: (E, groups, kept groups); lane widths 1-16, groups on lanes
  // (power-of-two lanes per group) and not (shared memory), no grouping.
  struct G { int E, n_group, topk_group; };
  for (G g : {G{256, 8, 4}, G{64, 4, 2}, G{40, 5, 2}, G{512, 32, 4}, G{32, 32, 8}, G{16, 4, 2}, G{128, 8, 3},
              G{96, 8, 3}, G{36, 4, 2}, G{160, 32, 5}, G{100, 10, 4}, G{256, 0, 0}, G{8, 0, 0}})
    for (int K : {1, 4, 8}) {
      const int per_group = g.n_group > 1 ? g.E / g.n_group : g.E;
      if (K > g.E || (g.n_group > 1 && K > g.topk_group * per_group)) continue;
      for (int T : {1, 5, 37})
        for (bool bias : {false, true})
          for (int ties : {0, 1, 2})
            cases.push_back(Case{RoutingMethod::kDEEPSEEK_V3, g.E, K, g.n_group, g.topk_group, T, bias, ties});
    }
  cases.push_back(Case{RoutingMethod::kRENORMALIZE, 128, 8, 0, 0, 4099, false, 0});  // many blocks
  cases.push_back(Case{RoutingMethod::kDEEPSEEK_V3, 256, 8, 8, 4, 4099, true, 0});
  return cases;
}

// The timed routing + permute call (a Launcher: the workspace comes from here).
MoeProblem g_time_problem;
Workspace g_time_ws;
ffi::Error TimedRoutingAndPermute(const MoeProblem&, const MoeBuffers& b, cudaStream_t s) {
  return cuda::LaunchRoutingAndPermute(g_time_problem, b, g_time_ws, s);
}

float MedianUs(Launcher launch, const Case& c, const DeviceRouting& d, int reps, void* flush, size_t flush_bytes) {
  cudaEvent_t a, b;
  CHECK_CUDA(cudaEventCreate(&a));
  CHECK_CUDA(cudaEventCreate(&b));
  std::vector<float> us;
  for (int r = 0; r < reps + 3; ++r) {
    CHECK_CUDA(cudaMemsetAsync(flush, r & 0xff, flush_bytes, 0));  // L2 flushed: logits and code from DRAM
    CHECK_CUDA(cudaEventRecord(a, 0));
    if (launch(Problem(c), d.Buffers(), 0).failure()) std::exit(2);
    CHECK_CUDA(cudaEventRecord(b, 0));
    CHECK_CUDA(cudaEventSynchronize(b));
    float ms = 0.0f;
    CHECK_CUDA(cudaEventElapsedTime(&ms, a, b));
    if (r >= 3) us.push_back(ms * 1000.0f);
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  std::nth_element(us.begin(), us.begin() + us.size() / 2, us.end());
  return us[us.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  int reps = 50;
  bool check = true;
  std::string models, tokens = "1,8,64,512,4096";
  for (int i = 1; i < argc; ++i) {
    const std::string k = argv[i], v = i + 1 < argc ? argv[i + 1] : "";
    if (k == "--no-check") check = false;
    else if (k == "--reps") reps = std::atoi(v.c_str()), ++i;
    else if (k == "--models") models = v, ++i;
    else if (k == "--tokens") tokens = v, ++i;
  }
  cudaDeviceProp prop;
  CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));
  std::printf("routing check on %s\n", prop.name);

  int failures = 0, near = 0, checked_tokens = 0;
  if (check) {
    const std::vector<Case> cases = Cases();
    for (const Case& c : cases) {
      failures += CheckCase(c, &near);
      checked_tokens += c.T;
    }
    std::printf("routing check: %zu cases, %d tokens, %d failures, %d near-ties (scores within 1e-6)\n",
                cases.size(), checked_tokens, failures, near);
  }

  // Times per model shape (DESIGN.md section 8).
  void* flush = nullptr;
  const size_t flush_bytes = size_t{256} << 20;
  CHECK_CUDA(cudaMalloc(&flush, flush_bytes));
  struct Shape { const char* name; Case c; };
  const Shape shapes[] = {
      {"qwen3-30b-a3b", {RoutingMethod::kRENORMALIZE, 128, 8, 0, 0, 1, false, 0}},
      {"gpt-oss-120b", {RoutingMethod::kRENORMALIZE, 128, 4, 0, 0, 1, false, 0}},
      {"deepseek-v3", {RoutingMethod::kDEEPSEEK_V3, 256, 8, 8, 4, 1, true, 0}},
      {"mixtral-8x7b", {RoutingMethod::kRENORMALIZE, 8, 2, 0, 0, 1, false, 0}},
      {"llama4-scout", {RoutingMethod::kLLAMA4, 16, 1, 0, 0, 1, false, 0}},
  };
  std::normal_distribution<float> normal(0.0f, 1.5f);
  std::vector<int> token_counts;
  for (size_t pos = 0; pos < tokens.size();) {
    const size_t comma = std::min(tokens.find(',', pos), tokens.size());
    token_counts.push_back(std::atoi(tokens.substr(pos, comma - pos).c_str()));
    pos = comma + 1;
  }
  for (const Shape& s : shapes)
    for (int T : token_counts) {
      if (!models.empty() && ("," + models + ",").find(std::string(",") + s.name + ",") == std::string::npos) continue;
      Case c = s.c;
      c.T = T;
      std::vector<float> x(size_t{1} * T * c.E), b(c.E);
      for (auto& v : x) v = normal(rng);
      for (auto& v : b) v = 0.1f * normal(rng);
      DeviceRouting d(c, x, b);
      std::printf("routing %-14s T=%-5d median of %d: %7.2f us", s.name, T, reps,
                  MedianUs(cuda::LaunchRouting, c, d, reps, flush, flush_bytes));
#ifdef ROUTING_BASELINE
      std::printf("  baseline %7.2f us", MedianUs(cuda::LaunchRoutingBaseline, c, d, reps, flush, flush_bytes));
#endif
      if (T <= 8) {  // routing + permute (the model's experts all local), separate vs fused
        g_time_problem = Problem(c);
        g_time_problem.hidden_size = g_time_problem.intermediate_size = 64;
        g_time_problem.num_local_experts = c.E;
        const WorkspaceLayout l = PlanWorkspace(g_time_problem, 8, 1);
        uint8_t* dws = nullptr;
        CHECK_CUDA(cudaMalloc(&dws, l.total));
        g_time_ws = ViewWorkspace(l, dws);
        for (int fused = 0; fused < 2; ++fused) {
          setenv("JAX_MOE_FUSED_ROUTING", fused ? "1" : "0", 1);
          std::printf("  %s %7.2f us", fused ? "fused routing+permute" : "routing+permute",
                      MedianUs(TimedRoutingAndPermute, c, d, reps, flush, flush_bytes));
        }
        unsetenv("JAX_MOE_FUSED_ROUTING");
        cudaFree(dws);
      }
      std::printf("\n");
    }
  cudaFree(flush);
  return failures == 0 ? 0 : 1;
}
