// A standalone driver of the CUDA stages (no JAX, no XLA runtime) for
// compute-sanitizer: compute-sanitizer crashes when attached to a JAX
// process, so the memcheck / racecheck runs of benchmarks/gpu_check.sh use
// this binary instead. It runs routing -> permute -> gemm1 -> gemm2 ->
// finalize on random data for every CUDA tactic, both weight formats, the
// three activation formats, routed and grouped routing, local expert ranges,
// do_finalize=False, K tails (H = 1040 with NVFP4), split-K and both
// finalize kernels, checks every CUDA status and that the outputs are finite.
// Correctness against the reference is the pytest GPU suite's job.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "common/ffi_glue.h"
#include "common/fp_formats.h"
#include "common/problem.h"
#include "common/tactics.h"
#include "common/workspace.h"
#include "cuda/stages.cuh"
#include "driver_check.h"

using namespace jax_moe;

namespace {

std::mt19937 rng(1234);


std::vector<void*> g_allocs;

template <typename T>
T* Upload(const std::vector<T>& host) {
  void* d = nullptr;
  CHECK_CUDA(cudaMalloc(&d, host.size() * sizeof(T) + 1));  // exact size: memcheck sees overruns
  CHECK_CUDA(cudaMemcpy(d, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice));
  g_allocs.push_back(d);
  return static_cast<T*>(d);
}

std::vector<uint8_t> Bytes(size_t n, int lo, int hi) {
  std::uniform_int_distribution<int> d(lo, hi);
  std::vector<uint8_t> v(n);
  for (auto& b : v) b = static_cast<uint8_t>(d(rng));
  return v;
}
std::vector<uint8_t> Fp8Bytes(size_t n) {  // e4m3 codes avoiding NaN (0x7f, 0xff)
  auto v = Bytes(n, 0, 255);
  for (auto& b : v) if ((b & 0x7f) == 0x7f) b ^= 1;
  return v;
}
std::vector<float> Floats(size_t n, float scale) {
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

struct Run {
  Format wf, af;
  RoutingMethod method;
  int64_t T, H, I, E, El, offset, K;
  bool routed, do_finalize;
  int64_t tactic;
};

int RunOne(const Run& r) {
  MoeProblem p;
  p.num_tokens = r.T; p.hidden_size = r.H; p.intermediate_size = r.I;
  p.num_local_experts = r.El; p.local_expert_offset = r.offset;
  p.weight_format = r.wf; p.act_format = r.af;
  p.routing = RoutingParams{r.method, static_cast<int>(r.E), static_cast<int>(r.K),
                            r.method == RoutingMethod::kDEEPSEEK_V3 ? 4 : 0,
                            r.method == RoutingMethod::kDEEPSEEK_V3 ? 2 : 0, 2.5f};
  p.activation = ActivationParams{Activation::kSWIGLU_OAI, 1.702f, 1.0f, 7.0f};
  p.routed = r.routed; p.has_b13 = p.has_b2 = true;
  p.has_routing_bias = r.method == RoutingMethod::kDEEPSEEK_V3;
  p.per_expert_w13_global = p.per_expert_w2_global = true;
  p.do_finalize = r.do_finalize; p.tactic = r.tactic;
  const std::string invalid = ValidateProblem(p) + TacticInvalidReason(p, Platform::kCuda, r.tactic);
  if (!invalid.empty()) { std::printf("invalid run: %s\n", invalid.c_str()); return 1; }
  const Tactic& tactic = TacticTable()[r.tactic];
  const WorkspaceLayout layout = PlanWorkspaceFor(p, tactic);
  const int64_t T = r.T, H = r.H, I = r.I, El = r.El, K = r.K, E = r.E;
  const int wb = BlockSize(r.wf), ab = BlockSize(r.af);
  const bool w_nv = r.wf == Format::kNVFP4;
  MoeBuffers b{};
  if (r.af == Format::kBF16) {
    std::vector<uint16_t> x(T * H);
    for (auto& v : x) v = Bf16Bits(std::normal_distribution<float>(0, 1)(rng));
    b.hidden = Upload(x);
  } else {
    b.hidden = Upload(r.af == Format::kMXFP8 ? Fp8Bytes(T * H) : Bytes(T * H / 2, 0, 255));
    b.hidden_scale = Upload(r.af == Format::kMXFP8 ? Bytes(T * H / ab, 120, 130) : Bytes(T * H / ab, 0x30, 0x40));
  }
  b.hidden_global = Upload(std::vector<float>{r.af == Format::kNVFP4 ? 100.0f : 1.0f});
  if (r.routed) {
    std::vector<int32_t> ids(T * K);
    for (auto& v : ids) v = std::uniform_int_distribution<int>(0, static_cast<int>(E) - 1)(rng);
    b.in_ids = Upload(ids);
    b.in_weights = Upload(Floats(T * K, 1.0f));
  } else {
    b.logits = Upload(Floats(T * E, 2.0f));
    if (p.has_routing_bias) b.routing_bias = Upload(Floats(E, 0.1f));
  }
  auto scales = [&](size_t n) { return w_nv ? Bytes(n, 0x28, 0x38) : Bytes(n, 118, 124); };
  b.w13 = Upload(Bytes(El * 2 * I * H / 2, 0, 255));
  b.w13_scale = Upload(scales(El * 2 * I * H / wb));
  b.w13_global = Upload(std::vector<float>(El, w_nv ? 2.0f : 1.0f));
  b.b13 = Upload(Floats(El * 2 * I, 0.1f));
  b.w2 = Upload(Bytes(El * H * I / 2, 0, 255));
  b.w2_scale = Upload(scales(El * H * I / wb));
  b.w2_global = Upload(std::vector<float>(El, w_nv ? 2.0f : 1.0f));
  b.b2 = Upload(Floats(El * H, 0.1f));
  b.h_global = Upload(std::vector<float>{50.0f});
  const int64_t out_elems = p.output_elements();
  b.out = Upload(std::vector<uint16_t>(out_elems, 0x7fc0));
  b.topk_ids = Upload(std::vector<int32_t>(T * K, -7));
  b.topk_weights = Upload(std::vector<float>(T * K, NAN));
  b.workspace = Upload(std::vector<uint8_t>(layout.total, 0xff));
  b.workspace_bytes = layout.total;
  const Workspace ws = ViewWorkspace(layout, b.workspace);

  cudaStream_t s;
  CHECK_CUDA(cudaStreamCreate(&s));
  const char* stage = "";
  ffi::Error err = ffi::Error::Success();
  // Fused into one kernel at T <= 8 unless JAX_MOE_FUSED_ROUTING=0 (gpu_check runs both).
  if (!(err = (stage = "routing + permute", cuda::LaunchRoutingAndPermute(p, b, ws, s))).failure() &&
      !(err = (stage = "gemm1", cuda::LaunchGemm1(p, b, ws, r.tactic, s))).failure() &&
      !(err = (stage = "gemm2", cuda::LaunchGemm2(p, b, ws, r.tactic, s))).failure())
    err = (stage = "finalize", cuda::LaunchFinalize(p, b, ws, s));
  if (err.failure()) { std::printf("%s failed: %s\n", stage, err.message().c_str()); return 1; }
  CHECK_CUDA(cudaStreamSynchronize(s));
  CHECK_CUDA(cudaStreamDestroy(s));
  std::vector<uint16_t> out(out_elems);
  CHECK_CUDA(cudaMemcpy(out.data(), b.out, out_elems * 2, cudaMemcpyDeviceToHost));
  int64_t bad = 0;
  for (uint16_t v : out) bad += !std::isfinite(Bf16ToFloat(v));
  for (void* d : g_allocs) CHECK_CUDA(cudaFree(d));
  g_allocs.clear();
  std::printf("%-18s w%d a%d routing %d T=%lld H=%lld routed=%d finalize=%d: %s\n", tactic.name,
              static_cast<int>(r.wf), static_cast<int>(r.af), static_cast<int>(r.method),
              static_cast<long long>(T), static_cast<long long>(H), r.routed, r.do_finalize,
              bad ? "NON-FINITE OUTPUT" : "ok");
  return bad ? 1 : 0;
}

}  // namespace

int main() {
  int failures = 0;
  const auto R = RoutingMethod::kRENORMALIZE;
  for (int64_t t = FirstCudaTactic(); t < static_cast<int64_t>(TacticTable().size()); ++t)
    failures += RunOne({Format::kNVFP4, Format::kBF16, R, 37, 1040, 160, 12, 9, 2, 3, false, true, t});
  const int64_t t8 = FirstCudaTactic();
  for (Format wf : {Format::kNVFP4, Format::kMXFP4})
    for (Format af : {Format::kBF16, Format::kMXFP8, Format::kNVFP4})
      for (int64_t T : {5, 40})  // scalar / vectorized finalize
        failures += RunOne({wf, af, R, T, 1056, 192, 8, 8, 0, 2, false, true, t8 + 4});
  failures += RunOne({Format::kMXFP4, Format::kMXFP8, RoutingMethod::kDEEPSEEK_V3, 50, 512, 256, 32, 32, 0, 4, false, true, t8});
  failures += RunOne({Format::kNVFP4, Format::kBF16, R, 33, 512, 256, 16, 10, 3, 4, true, false, t8 + 2});
  failures += RunOne({Format::kNVFP4, Format::kNVFP4, RoutingMethod::kDEFAULT, 1, 256, 128, 64, 64, 0, 10, false, true, t8 + 6});
  // Split-K (GEMM1 K = 6144: 48 K blocks, two splits; the ring row and its ring-less twin).
  for (int64_t t : {t8, t8 + 7})
    failures += RunOne({Format::kMXFP4, Format::kBF16, R, 1, 6144, 256, 4, 4, 0, 2, false, true, t});
  std::printf("sanitizer harness: %d failure(s)\n", failures);
  return failures ? 1 : 0;
}
