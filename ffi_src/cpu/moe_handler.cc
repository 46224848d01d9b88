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
    PreparedCall call;
    ffi::Error prepared = PrepareCall(target, kRouted, Platform::kCpu, args, rets, attrs, &call);
    if (prepared.failure()) return prepared;
    const MoeProblem& p = call.problem;
    const MoeBuffers& b = call.buffers;
    const Workspace ws = ViewWorkspace(call.layout, b.workspace);
    if (PoisonOutputs()) {
      // Test mode: anything a stage forgets to write stays NaN / garbage.
      std::fill(b.out, b.out + p.output_elements(), uint16_t{0x7fc0});
      std::fill(b.topk_weights, b.topk_weights + p.expanded(), std::nanf(""));
      std::fill(b.topk_ids, b.topk_ids + p.expanded(), -7);
      std::fill(b.workspace, b.workspace + call.layout.total, uint8_t{0xff});
    }
    Route(p, b);
    Permute(p, b.topk_ids, ws);
    Gemm1Activation(p, b, ws, call.tactic->tile_n);
    Gemm2(p, b, ws, call.gemm2_tactic->tile_n);
    Finalize(p, b, ws);
    return ffi::Error::Success();
  });
}

}  // namespace
}  // namespace jax_moe::cpu

namespace jax_moe::cpu {
namespace {
// Both CPU targets: the 14 operands and 4 results, the attributes.
auto MoeBinding() {
  return xla::ffi::Ffi::Bind().RemainingArgs().RemainingRets().Attrs<MoeAttrs>();
}
}  // namespace
}  // namespace jax_moe::cpu

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxMoeFp4MoeCpu, jax_moe::cpu::MoeCpu<false>, jax_moe::cpu::MoeBinding());
XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxMoeFp4MoeRoutedCpu, jax_moe::cpu::MoeCpu<true>,
                              jax_moe::cpu::MoeBinding());
