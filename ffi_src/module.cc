// The nanobind module `jax_moe._ffi`: handler capsules for registration, the
// enum and tactic tables (so Python mirrors C++ rather than restating it), and
// the static planning functions Python needs at trace time.
#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <string>

#include "common/enums.h"
#include "common/problem.h"
#include "common/tactics.h"
#include "handlers.h"

namespace nb = nanobind;

namespace jax_moe {
namespace {

template <typename Fn>
nb::capsule Capsule(Fn* fn) {
  return nb::capsule(reinterpret_cast<void*>(fn));
}

nb::dict Registrations() {
  nb::dict cpu, out;
  cpu["jax_moe_fp4_moe"] = Capsule(JaxMoeFp4MoeCpu);
  cpu["jax_moe_fp4_moe_routed"] = Capsule(JaxMoeFp4MoeRoutedCpu);
  out["cpu"] = cpu;
#ifdef JAX_MOE_WITH_CUDA
  nb::dict cuda;
  cuda["jax_moe_fp4_moe"] = Capsule(JaxMoeFp4MoeCuda);
  cuda["jax_moe_fp4_moe_routed"] = Capsule(JaxMoeFp4MoeRoutedCuda);
  cuda["jax_moe_finalize"] = Capsule(JaxMoeFinalizeCuda);
  out["CUDA"] = cuda;
#endif
  return out;
}

nb::dict Enums() {
  nb::dict out, routing, activation, format;
#define JAX_MOE_ADD(dict) [&](const char* name, int64_t v) { dict[name] = v; }
  auto add_routing = JAX_MOE_ADD(routing);
  auto add_activation = JAX_MOE_ADD(activation);
  auto add_format = JAX_MOE_ADD(format);
#undef JAX_MOE_ADD
#define JAX_MOE_ROUTING_ENTRY(name, value) add_routing(#name, value);
#define JAX_MOE_ACTIVATION_ENTRY(name, value) add_activation(#name, value);
#define JAX_MOE_FORMAT_ENTRY(name, value) add_format(#name, value);
  JAX_MOE_ROUTING_METHODS(JAX_MOE_ROUTING_ENTRY)
  JAX_MOE_ACTIVATIONS(JAX_MOE_ACTIVATION_ENTRY)
  JAX_MOE_FORMATS(JAX_MOE_FORMAT_ENTRY)
#undef JAX_MOE_ROUTING_ENTRY
#undef JAX_MOE_ACTIVATION_ENTRY
#undef JAX_MOE_FORMAT_ENTRY
  out["RoutingMethod"] = routing;
  out["Activation"] = activation;
  out["Format"] = format;
  nb::dict family;
  for (KernelFamily f : {KernelFamily::kCpuBlocked, KernelFamily::kCudaMmaSwapAB, KernelFamily::kCudaStreamSplitK,
                         KernelFamily::kCudaWgmmaSwapAB, KernelFamily::kCudaWgmmaWarpSpecialized,
                         KernelFamily::kCudaWgmmaWsTwoProducers, KernelFamily::kCudaWgmmaRs,
                         KernelFamily::kCudaWgmmaRsPersistent})
    family[FamilyName(f)] = static_cast<int64_t>(f);
  out["KernelFamily"] = family;
  return out;
}

nb::dict Limits() {
  nb::dict d;
  d["max_experts"] = kMaxExperts;
  d["max_top_k"] = kMaxTopK;
  d["max_top_k_deepseek"] = kMaxTopKDeepSeek;
  d["max_groups"] = kMaxGroups;
  return d;
}

// Python describes a problem as a flat dict of ints and bools (see
// jax_moe/tactics.py: MoEProblem.to_dict); missing keys keep their defaults.
MoeProblem ProblemFromDict(const nb::dict& d) {
  auto get = [&d](const char* key, int64_t fallback) {
    return d.contains(key) ? nb::cast<int64_t>(d[key]) : fallback;
  };
  MoeProblem p;
  p.num_tokens = get("num_tokens", 0);
  p.hidden_size = get("hidden_size", 0);
  p.intermediate_size = get("intermediate_size", 0);
  p.num_local_experts = get("num_local_experts", 0);
  p.local_expert_offset = get("local_expert_offset", 0);
  p.weight_format = static_cast<Format>(get("weight_format", 1));
  p.act_format = static_cast<Format>(get("act_format", 0));
  p.routing = RoutingParams{static_cast<RoutingMethod>(get("routing_method", 1)),
                            static_cast<int>(get("num_experts", 0)),
                            static_cast<int>(get("top_k", 0)),
                            static_cast<int>(get("n_group", 0)),
                            static_cast<int>(get("topk_group", 0)),
                            1.0f};
  p.activation = ActivationParams{static_cast<Activation>(get("activation", 0)), 1.0f, 0.0f, 0.0f};
  p.routed = get("routed", 0) != 0;
  p.has_routing_bias = get("has_routing_bias", 0) != 0;
  p.has_b13 = get("has_b13", 0) != 0;
  p.has_b2 = get("has_b2", 0) != 0;
  p.routing_weight_on_input = get("routing_weight_on_input", 0) != 0;
  p.do_finalize = get("do_finalize", 1) != 0;
  return p;
}

nb::list TacticRows() {
  nb::list rows;
  const auto& table = TacticTable();
  for (size_t i = 0; i < table.size(); ++i) {
    const Tactic& t = table[i];
    nb::dict row;
    row["id"] = static_cast<int64_t>(i);
    row["name"] = std::string(t.name);
    row["platform"] = t.platform == Platform::kCpu ? "cpu" : "cuda";
    row["family"] = static_cast<int64_t>(t.family);
    row["tile_tokens"] = t.tile_tokens;
    row["tile_n"] = t.tile_n;
    row["tokens_per_warp"] = t.tokens_per_warp;
    row["k_chunk"] = t.k_chunk;
    row["weight_stages"] = t.weight_stages;
    row["warps_k"] = t.warps_k;
    row["experimental"] = IsExperimental(t.family);
    rows.append(row);
  }
  return rows;
}

Platform ParsePlatform(const std::string& name) {
  if (name == "cpu") return Platform::kCpu;
  if (name == "cuda" || name == "gpu") return Platform::kCuda;
  throw nb::value_error(("unknown platform '" + name + "' (expected 'cpu' or 'cuda')").c_str());
}

}  // namespace
}  // namespace jax_moe

NB_MODULE(_ffi, m) {
  using namespace jax_moe;
  m.doc() = "jax_moe FFI handlers (CPU always; CUDA when built with a CUDA compiler).";
  m.def("registrations", &Registrations, "Handler capsules keyed by platform, then target.");
  m.def("enums", &Enums, "Name -> value of every enum in ffi_src/common/enums.h.");
  m.def("limits", &Limits, "Size limits the handlers support.");
  m.def("tactic_table", &TacticRows, "Every row of the C++ tactic table.");
  m.def("tactic_table_hash", [] { return TacticTableHash(); });
  m.def(
      "validate_problem", [](const nb::dict& d) { return ValidateProblem(ProblemFromDict(d)); },
      "'' if the handlers support the problem, else the reason.");
  m.def(
      "tactic_invalid_reason",
      [](const nb::dict& d, const std::string& platform, int64_t id) {
        return TacticInvalidReason(ProblemFromDict(d), ParsePlatform(platform), id);
      },
      "'' if the tactic can run the problem on the platform, else why not.");
  m.def("default_tactic", [](const nb::dict& d, const std::string& platform) {
    return DefaultTactic(ProblemFromDict(d), ParsePlatform(platform));
  });
  m.def(
      "gemm2_tactic_invalid_reason",
      [](const nb::dict& d, const std::string& platform, int64_t gemm1, int64_t gemm2) {
        MoeProblem p = ProblemFromDict(d);
        const Platform plat = ParsePlatform(platform);
        const std::string bad = TacticInvalidReason(p, plat, gemm1);
        if (!bad.empty()) return "tactic: " + bad;
        p.tactic = gemm1;
        p.gemm2_tactic = gemm2;
        return Gemm2TacticInvalidReason(p, plat);
      },
      "'' if GEMM2 can run the second row after GEMM1 ran the first, else why not.");
  m.def(
      "tuning_candidates",
      [](const nb::dict& d, const std::string& platform, bool exhaustive) {
        return TuningCandidates(ProblemFromDict(d), ParsePlatform(platform), exhaustive);
      },
      "Tactic ids the autotuner times: the default first, then the kept candidates.");
  m.def("k_splits", &KSplits, nb::arg("blocks"), nb::arg("sms"), nb::arg("limit"), nb::arg("num_k_blocks"),
        "K splits the staged CUDA family launches for a grid (see KSplits in tactics.h).");
  m.def(
      "workspace_bytes",
      [](const nb::dict& d, int64_t id, int64_t gemm2) {
        const auto& table = TacticTable();
        const int64_t n = static_cast<int64_t>(table.size());
        if (id < 0 || id >= n || gemm2 >= n) throw nb::value_error("tactic id out of range");
        return static_cast<int64_t>(
            PlanWorkspaceFor(ProblemFromDict(d), table[id], table[gemm2 < 0 ? id : gemm2]).total);
      },
      nb::arg("problem"), nb::arg("tactic"), nb::arg("gemm2_tactic") = -1,
      "Bytes of the workspace output for the problem under a tactic (GEMM2 under gemm2_tactic, -1: the same).");
#ifdef JAX_MOE_WITH_CUDA
  m.def(
      "cuda_handler_stats",
      [] {
        const cuda::HandlerStats s = cuda::GetHandlerStats();
        nb::dict d;
        d["calls"] = s.calls;
        d["captured_calls"] = s.captured_calls;
        d["split_k_launches"] = s.split_k_launches;
        d["max_k_splits"] = s.max_k_splits;
        d["wgmma_rs_launches"] = s.wgmma_rs_launches;
        return d;
      },
      "Calls of the CUDA handlers, how many ran under CUDA-graph capture, and the GEMM launches "
      "that split K across blocks (with the most splits one used).");
#endif
  nb::dict info;
#ifdef JAX_MOE_WITH_CUDA
  info["cuda"] = true;
  info["cuda_arch"] = JAX_MOE_CUDA_ARCH;
#else
  info["cuda"] = false;
  info["cuda_arch"] = "";
#endif
  info["ffi_api"] = std::to_string(XLA_FFI_API_MAJOR) + "." + std::to_string(XLA_FFI_API_MINOR);
  m.attr("build_info") = info;
}
