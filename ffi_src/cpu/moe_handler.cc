// The CPU handler glue: decode and check the call, pick the tactic's blocking,
// run the five stages. Correct first (fp32 accumulation, the same rounding
// points as jax_moe.reference); multithreaded so the CPU test suite is fast.
#include <algorithm>
#include <cmath>
#include <string>

#include "common/ffi_glue.h"
#include "common/tactics.h"
#include "cpu/stages.h"
#include "handlers.h"

namespace jax_moe::cpu {
namespace {

template <bool kRouted>
ffi::Error MoeCpu(ffi::RemainingArgs args, ffi::RemainingRets rets, MoeAttrs attrs) {
  const char* target = kRouted ? "jax_moe_fp4_moe_routed (cpu)" : "jax_moe_fp4_moe (cpu)";
  return GuardHandler(target, [&]() -> ffi::Error {
    MoeProblem p;
    MoeBuffers b;
    ffi::Error decoded = DecodeCall(kRouted, args, rets, attrs, &p, &b);
    if (decoded.failure()) return decoded;
    const std::string bad_tactic = TacticInvalidReason(p, Platform::kCpu, p.tactic);
    if (!bad_tactic.empty()) return ffi::Error::InvalidArgument(std::string(target) + ": " + bad_tactic);
    const Tactic& tactic = TacticTable()[p.tactic];
    const WorkspaceLayout layout = PlanWorkspace(p, tactic.tile_tokens);
    if (b.workspace_bytes < layout.total)
      return ffi::Error::InvalidArgument(std::string(target) + ": workspace of " +
                                         std::to_string(b.workspace_bytes) + " bytes, need " +
                                         std::to_string(layout.total));
    const Workspace ws = ViewWorkspace(layout, b.workspace);
    if (PoisonOutputs()) {
      // Test mode: anything a stage forgets to write stays NaN / garbage.
      std::fill(b.out, b.out + p.expanded() * p.hidden_size / (p.do_finalize ? p.routing.top_k : 1),
                uint16_t{0x7fc0});
      std::fill(b.topk_weights, b.topk_weights + p.expanded(), std::nanf(""));
      std::fill(b.topk_ids, b.topk_ids + p.expanded(), -7);
      std::fill(b.workspace, b.workspace + layout.total, uint8_t{0xff});
    }
    Route(p, b);
    Permute(p, b.topk_ids, ws);
    Gemm1Activation(p, b, ws, tactic.tile_n);
    Gemm2(p, b, ws, tactic.tile_n);
    Finalize(p, b, ws);
    return ffi::Error::Success();
  });
}

}  // namespace
}  // namespace jax_moe::cpu

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxMoeFp4MoeCpu, jax_moe::cpu::MoeCpu<false>,
                              xla::ffi::Ffi::Bind()
                                  .RemainingArgs()
                                  .RemainingRets()
                                  .Attrs<jax_moe::MoeAttrs>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxMoeFp4MoeRoutedCpu, jax_moe::cpu::MoeCpu<true>,
                              xla::ffi::Ffi::Bind()
                                  .RemainingArgs()
                                  .RemainingRets()
                                  .Attrs<jax_moe::MoeAttrs>());
