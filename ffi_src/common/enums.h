// Enumerations shared by the C++ handlers and the Python package.
//
// This header is the single source of truth: each enum is written once as an
// X-macro list so that the C++ enum, its name table (exported to Python through
// the nanobind module) and the Python mirror test all come from the same lines.
#pragma once

#include <cstdint>

// clang-format off
#define JAX_MOE_ROUTING_METHODS(X) \
  X(DEFAULT, 0)      /* softmax over E, top-k of probabilities, no renormalisation */ \
  X(RENORMALIZE, 1)  /* top-k of logits, softmax over the k selected */ \
  X(DEEPSEEK_V3, 2)  /* sigmoid + correction bias, grouped top-k, scaled weights */ \
  X(LLAMA4, 3)       /* top-1 of logits, weight = sigmoid(logit) */ \
  X(TOPK, 4)         /* top-k of logits, weights = raw logits */

#define JAX_MOE_ACTIVATIONS(X) \
  X(SWIGLU, 0)       /* silu(gate) * up */ \
  X(GEGLU, 1)        /* gelu_erf(gate) * up */ \
  X(SWIGLU_OAI, 2)   /* gpt-oss clamped SwiGLU with alpha, beta, limit */

#define JAX_MOE_FORMATS(X) \
  X(BF16, 0)         /* plain bf16 */ \
  X(NVFP4, 1)        /* e2m1, e4m3 scale per 16, fp32 global encode scale */ \
  X(MXFP4, 2)        /* e2m1, ue8m0 scale per 32 */ \
  X(MXFP8, 3)        /* e4m3, ue8m0 scale per 32 */
// clang-format on

namespace jax_moe {

#define JAX_MOE_ENUM_ENTRY(name, value) k##name = value,
enum class RoutingMethod : int64_t { JAX_MOE_ROUTING_METHODS(JAX_MOE_ENUM_ENTRY) };
enum class Activation : int64_t { JAX_MOE_ACTIVATIONS(JAX_MOE_ENUM_ENTRY) };
enum class Format : int64_t { JAX_MOE_FORMATS(JAX_MOE_ENUM_ENTRY) };
#undef JAX_MOE_ENUM_ENTRY

// Elements per scale block along K (0 for unquantized bf16).
constexpr int BlockSize(Format f) {
  return f == Format::kNVFP4 ? 16 : (f == Format::kMXFP4 || f == Format::kMXFP8) ? 32 : 0;
}
constexpr bool IsFp4(Format f) { return f == Format::kNVFP4 || f == Format::kMXFP4; }
constexpr bool HasGlobalScale(Format f) { return f == Format::kNVFP4; }

// Limits the handlers support; Python reads them through the module and
// rejects larger problems at trace time.
constexpr int kMaxExperts = 512;
constexpr int kMaxTopK = 16;
constexpr int kMaxTopKDeepSeek = 8;
constexpr int kMaxGroups = 32;

}  // namespace jax_moe
