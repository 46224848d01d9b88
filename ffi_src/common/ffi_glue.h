// What the CPU and CUDA handlers share at the FFI boundary: the operand order,
// the attribute struct, turning buffers + attributes into a MoeProblem, and
// the guard that turns C++ exceptions into FFI errors.
//
// Operands (both targets; the routed target passes ids/weights in 3 and 4):
//   0 hidden        bf16 [T,H] | f8e4m3fn [T,H] (MXFP8) | u8 [T,H/2] (NVFP4)
//   1 hidden_scale  u8 [T,H/block] (empty for bf16)
//   2 hidden_global f32 [1] (NVFP4 activations; 1 otherwise)
//   3 logits        f32 [T,E]        | routed: topk_ids     i32 [T,K]
//   4 routing_bias  f32 [E] or empty | routed: topk_weights f32 [T,K]
//   5 w13 u8 [El,2I,H/2]   6 w13_scale u8 [El,2I,H/bw]   7 w13_global f32 [El] or [1]
//   8 b13 f32 [El,2I] or empty
//   9 w2  u8 [El,H,I/2]    10 w2_scale u8 [El,H,I/bw]    11 w2_global f32 [El] or [1]
//   12 b2 f32 [El,H] or empty
//   13 h_global f32 [1]   encode scale of h when activations are NVFP4
// Results:
//   0 out          bf16 [T,H] (do_finalize) | bf16 [T,K,H] (per-(token,k) rows)
//   1 topk_ids     i32 [T,K]
//   2 topk_weights f32 [T,K]
//   3 workspace    u8 [PlanWorkspace(...).total]
#pragma once

#include <cstdlib>
#include <exception>
#include <string>

#include "common/problem.h"
#include "common/tactics.h"
#include "xla/ffi/api/ffi.h"

namespace jax_moe {

namespace ffi = ::xla::ffi;

enum Operand : size_t {
  kHidden = 0,
  kHiddenScale,
  kHiddenGlobal,
  kLogitsOrIds,
  kBiasOrWeights,
  kW13,
  kW13Scale,
  kW13Global,
  kB13,
  kW2,
  kW2Scale,
  kW2Global,
  kB2,
  kHGlobal,
  kNumOperands
};
enum Result : size_t { kOut = 0, kTopkIds, kTopkWeights, kWorkspace, kNumResults };

// Static attributes of both targets, decoded by name.
struct MoeAttrs {
  int64_t routing_method;
  int64_t top_k;
  int64_t n_group;
  int64_t topk_group;
  float routed_scaling_factor;
  int64_t activation;
  float swiglu_alpha;
  float swiglu_beta;
  float swiglu_limit;
  int64_t weight_format;
  int64_t act_format;
  int64_t num_experts;
  int64_t local_expert_offset;
  bool routing_weight_on_input;
  bool do_finalize;
  int64_t tactic;
  int64_t gemm2_tactic;  // -1: GEMM2 runs `tactic` too
};

// Raw pointers of every operand, resolved once by the handler.
struct MoeBuffers {
  const void* hidden;
  const uint8_t* hidden_scale;
  const float* hidden_global;
  const float* logits;        // null when routed
  const float* routing_bias;  // null when absent
  const int32_t* in_ids;      // routed only
  const float* in_weights;    // routed only
  const uint8_t* w13;
  const uint8_t* w13_scale;
  const float* w13_global;
  const float* b13;  // null when absent
  const uint8_t* w2;
  const uint8_t* w2_scale;
  const float* w2_global;
  const float* b2;  // null when absent
  const float* h_global;
  uint16_t* out;  // bf16 bits
  int32_t* topk_ids;
  float* topk_weights;
  uint8_t* workspace;
  size_t workspace_bytes;
};

// Checks every operand's rank, shape and dtype against the attributes and
// fills `problem` and `buffers`. Returns an InvalidArgument error on mismatch.
ffi::Error DecodeCall(bool routed, ffi::RemainingArgs args, ffi::RemainingRets rets,
                      const MoeAttrs& attrs, MoeProblem* problem, MoeBuffers* buffers);

// What every handler does before its stages: DecodeCall, then check that the
// tactic belongs to `platform` and fits the problem, plan the workspace and
// check that the workspace output is large enough. Errors name `target`.
struct PreparedCall {
  MoeProblem problem;
  MoeBuffers buffers;
  const Tactic* tactic = nullptr;        // GEMM1's row (and the token tile)
  const Tactic* gemm2_tactic = nullptr;  // GEMM2's row
  WorkspaceLayout layout;
};
ffi::Error PrepareCall(const char* target, bool routed, Platform platform, ffi::RemainingArgs args,
                       ffi::RemainingRets rets, const MoeAttrs& attrs, PreparedCall* call);

// A per-call switch from the environment (host-side, no device data
// involved): unset or empty gives `default_on`; otherwise a switch that is
// off by default is on only for a leading '1', one that is on by default
// off only for a leading '0'.
inline bool EnvFlag(const char* name, bool default_on) {
  const char* v = std::getenv(name);
  if (v == nullptr || v[0] == '\0') return default_on;
  return default_on ? v[0] != '0' : v[0] == '1';
}

// True when JAX_MOE_POISON_OUTPUTS=1: handlers then fill every output and the
// workspace with NaN/garbage before the stages run, so a test sees any element
// that no stage wrote. Read per call.
inline bool PoisonOutputs() { return EnvFlag("JAX_MOE_POISON_OUTPUTS", false); }

// Runs `body`, converting any escaping C++ exception into an FFI error: an
// exception must never cross the C boundary into XLA.
template <typename Body>
ffi::Error GuardHandler(const char* target, Body&& body) {
  try {
    return body();
  } catch (const std::exception& e) {
    return ffi::Error::Internal(std::string(target) + ": " + e.what());
  } catch (...) {
    return ffi::Error::Internal(std::string(target) + ": unknown C++ exception");
  }
}

}  // namespace jax_moe

// Must live at global scope (the macro opens namespace xla::ffi).
XLA_FFI_REGISTER_STRUCT_ATTR_DECODING(
    ::jax_moe::MoeAttrs, ::xla::ffi::StructMember<int64_t>("routing_method"),
    ::xla::ffi::StructMember<int64_t>("top_k"), ::xla::ffi::StructMember<int64_t>("n_group"),
    ::xla::ffi::StructMember<int64_t>("topk_group"),
    ::xla::ffi::StructMember<float>("routed_scaling_factor"),
    ::xla::ffi::StructMember<int64_t>("activation"),
    ::xla::ffi::StructMember<float>("swiglu_alpha"),
    ::xla::ffi::StructMember<float>("swiglu_beta"),
    ::xla::ffi::StructMember<float>("swiglu_limit"),
    ::xla::ffi::StructMember<int64_t>("weight_format"),
    ::xla::ffi::StructMember<int64_t>("act_format"),
    ::xla::ffi::StructMember<int64_t>("num_experts"),
    ::xla::ffi::StructMember<int64_t>("local_expert_offset"),
    ::xla::ffi::StructMember<bool>("routing_weight_on_input"),
    ::xla::ffi::StructMember<bool>("do_finalize"), ::xla::ffi::StructMember<int64_t>("tactic"),
    ::xla::ffi::StructMember<int64_t>("gemm2_tactic"));
