// Gated activations (DESIGN.md section 4), shared by CPU and CUDA epilogues.
#pragma once

#include <cmath>

#include "common/enums.h"
#include "common/host_device.h"
#include "common/routing_math.h"  // Sigmoid

namespace jax_moe {

struct ActivationParams {
  Activation kind;
  float alpha;  // SWIGLU_OAI only
  float beta;
  float limit;
};

// h = act(gate, up) in fp32, for an activation known at compile time (the
// register-A wgmma epilogue picks it once per item, not once per value).
template <Activation kKind>
JM_HD float GatedActivationOf(float gate, float up, const ActivationParams& a) {
  if constexpr (kKind == Activation::kSWIGLU) {
    return gate * Sigmoid(gate) * up;
  } else if constexpr (kKind == Activation::kGEGLU) {
    return 0.5f * gate * (1.0f + erff(gate * 0.70710678118654752f)) * up;
  } else {
    static_assert(kKind == Activation::kSWIGLU_OAI, "one of the gated activations");
    const float g = fminf(gate, a.limit);
    const float u = fminf(fmaxf(up, -a.limit), a.limit);
    return g * Sigmoid(a.alpha * g) * (u + a.beta);
  }
}

// h = act(gate, up) in fp32.
JM_HD float GatedActivation(float gate, float up, const ActivationParams& a) {
  switch (a.kind) {
    case Activation::kSWIGLU:
      return GatedActivationOf<Activation::kSWIGLU>(gate, up, a);
    case Activation::kGEGLU:
      return GatedActivationOf<Activation::kGEGLU>(gate, up, a);
    case Activation::kSWIGLU_OAI:
      return GatedActivationOf<Activation::kSWIGLU_OAI>(gate, up, a);
  }
  return NAN;
}

}  // namespace jax_moe
