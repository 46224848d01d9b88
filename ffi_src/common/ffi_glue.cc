#include "common/ffi_glue.h"

#include <initializer_list>
#include "common/str_cat.h"
#include <vector>

namespace jax_moe {
namespace {

template <typename Dims>
std::string DimsString(const Dims& dims) {
  std::string s = "[";
  bool first = true;
  for (int64_t d : dims) {
    s += StrCat(first ? "" : ", ", d);
    first = false;
  }
  return s + "]";
}

// Collects the first mismatch between operands and the expected signature.
class Checker {
 public:
  bool Check(const ffi::AnyBuffer& b, const char* name, ffi::DataType dtype,
             std::initializer_list<int64_t> dims, bool may_be_empty = false) {
    if (!error_.empty()) return false;
    if (may_be_empty && b.element_count() == 0) return false;
    const auto actual = b.dimensions();
    bool ok = b.element_type() == dtype && actual.size() == dims.size();
    size_t i = 0;
    for (int64_t d : dims) ok = ok && actual[i++] == d;
    if (!ok)
      error_ = StrCat(name, ": expected dtype ", static_cast<int>(dtype), " shape ",
                      DimsString(dims), ", got dtype ", static_cast<int>(b.element_type()),
                      " shape ", DimsString(actual));
    return ok;
  }
  void Fail(const std::string& msg) {
    if (error_.empty()) error_ = msg;
  }
  const std::string& error() const { return error_; }

 private:
  std::string error_;
};

}  // namespace

ffi::Error DecodeCall(bool routed, ffi::RemainingArgs args, ffi::RemainingRets rets,
                      const MoeAttrs& a, MoeProblem* p, MoeBuffers* bufs) {
  if (args.size() != kNumOperands || rets.size() != kNumResults) {
    return ffi::Error::InvalidArgument(StrCat("expected ", kNumOperands, " operands and ",
                                              kNumResults, " results, got ", args.size(),
                                              " and ", rets.size()));
  }
  std::vector<ffi::AnyBuffer> in;
  for (size_t i = 0; i < kNumOperands; ++i) {
    auto b = args.get<ffi::AnyBuffer>(i);
    if (!b.has_value()) return ffi::Error::InvalidArgument("operand is not a buffer");
    in.push_back(*b);
  }
  std::vector<ffi::AnyBuffer> out;
  for (size_t i = 0; i < kNumResults; ++i) {
    auto r = rets.get<ffi::AnyBuffer>(i);
    if (!r.has_value()) return ffi::Error::InvalidArgument("result is not a buffer");
    out.push_back(**r);
  }

  // Sizes come from the weights; everything else is checked against them.
  const auto w13_dims = in[kW13].dimensions();
  if (w13_dims.size() != 3) return ffi::Error::InvalidArgument("w13 must have rank 3");
  p->routed = routed;
  p->num_local_experts = w13_dims[0];
  p->intermediate_size = w13_dims[1] / 2;
  p->hidden_size = w13_dims[2] * 2;
  p->num_tokens = in[kHidden].dimensions().size() == 2 ? in[kHidden].dimensions()[0] : -1;
  p->local_expert_offset = a.local_expert_offset;
  p->weight_format = static_cast<Format>(a.weight_format);
  p->act_format = static_cast<Format>(a.act_format);
  p->routing = RoutingParams{static_cast<RoutingMethod>(a.routing_method),
                             static_cast<int>(a.num_experts),
                             static_cast<int>(a.top_k),
                             static_cast<int>(a.n_group),
                             static_cast<int>(a.topk_group),
                             a.routed_scaling_factor};
  p->activation =
      ActivationParams{static_cast<Activation>(a.activation), a.swiglu_alpha, a.swiglu_beta,
                       a.swiglu_limit};
  p->routing_weight_on_input = a.routing_weight_on_input;
  p->do_finalize = a.do_finalize;
  p->tactic = a.tactic;
  p->gemm2_tactic = a.gemm2_tactic;
  p->has_routing_bias = !routed && in[kBiasOrWeights].element_count() > 0;
  p->has_b13 = in[kB13].element_count() > 0;
  p->has_b2 = in[kB2].element_count() > 0;
  const std::string invalid = ValidateProblem(*p);
  if (!invalid.empty()) return ffi::Error::InvalidArgument(invalid);

  const int64_t T = p->num_tokens, H = p->hidden_size, I = p->intermediate_size;
  const int64_t E = a.num_experts, El = p->num_local_experts, K = a.top_k;
  const int64_t wb = BlockSize(p->weight_format), ab = BlockSize(p->act_format);
  using DT = ffi::DataType;
  Checker c;
  switch (p->act_format) {
    case Format::kBF16:
      c.Check(in[kHidden], "hidden_states", DT::BF16, {T, H});
      break;
    case Format::kMXFP8:
      c.Check(in[kHidden], "hidden_states", DT::F8E4M3FN, {T, H});
      c.Check(in[kHiddenScale], "hidden_states scale", DT::U8, {T, H / ab});
      break;
    case Format::kNVFP4:
      c.Check(in[kHidden], "hidden_states", DT::U8, {T, H / 2});
      c.Check(in[kHiddenScale], "hidden_states scale", DT::U8, {T, H / ab});
      break;
    default:
      c.Fail("unsupported act_format");
  }
  c.Check(in[kHiddenGlobal], "hidden_states global scale", DT::F32, {1});
  if (routed) {
    c.Check(in[kLogitsOrIds], "topk_ids", DT::S32, {T, K});
    c.Check(in[kBiasOrWeights], "topk_weights", DT::F32, {T, K});
  } else {
    c.Check(in[kLogitsOrIds], "router_logits", DT::F32, {T, E});
    c.Check(in[kBiasOrWeights], "routing_bias", DT::F32, {E}, /*may_be_empty=*/true);
  }
  c.Check(in[kW13], "w13", DT::U8, {El, 2 * I, H / 2});
  c.Check(in[kW13Scale], "w13 scale", DT::U8, {El, 2 * I, H / wb});
  c.Check(in[kB13], "b13", DT::F32, {El, 2 * I}, /*may_be_empty=*/true);
  c.Check(in[kW2], "w2", DT::U8, {El, H, I / 2});
  c.Check(in[kW2Scale], "w2 scale", DT::U8, {El, H, I / wb});
  c.Check(in[kB2], "b2", DT::F32, {El, H}, /*may_be_empty=*/true);
  c.Check(in[kHGlobal], "h global scale", DT::F32, {1});
  for (auto [idx, name, flag] : {std::tuple{kW13Global, "w13 global scale", &p->per_expert_w13_global},
                                 std::tuple{kW2Global, "w2 global scale", &p->per_expert_w2_global}}) {
    const auto d = in[idx].dimensions();
    *flag = d.size() == 1 && d[0] == El;
    if (!(*flag || (d.size() == 1 && d[0] == 1))) c.Check(in[idx], name, DT::F32, {El});
    else c.Check(in[idx], name, DT::F32, {d[0]});
  }
  if (p->do_finalize) c.Check(out[kOut], "output", DT::BF16, {T, H});
  else c.Check(out[kOut], "output", DT::BF16, {T, K, H});
  c.Check(out[kTopkIds], "topk_ids output", DT::S32, {T, K});
  c.Check(out[kTopkWeights], "topk_weights output", DT::F32, {T, K});
  if (!c.error().empty()) return ffi::Error::InvalidArgument(c.error());
  if (out[kWorkspace].element_type() != DT::U8 || out[kWorkspace].dimensions().size() != 1)
    return ffi::Error::InvalidArgument("workspace must be a rank-1 uint8 buffer");

  auto f32 = [](const ffi::AnyBuffer& b) {
    return b.element_count() ? static_cast<const float*>(b.untyped_data()) : nullptr;
  };
  auto u8 = [](const ffi::AnyBuffer& b) { return static_cast<const uint8_t*>(b.untyped_data()); };
  bufs->hidden = in[kHidden].untyped_data();
  bufs->hidden_scale = u8(in[kHiddenScale]);
  bufs->hidden_global = f32(in[kHiddenGlobal]);
  bufs->logits = routed ? nullptr : f32(in[kLogitsOrIds]);
  bufs->routing_bias = routed ? nullptr : f32(in[kBiasOrWeights]);
  bufs->in_ids = routed ? static_cast<const int32_t*>(in[kLogitsOrIds].untyped_data()) : nullptr;
  bufs->in_weights = routed ? f32(in[kBiasOrWeights]) : nullptr;
  bufs->w13 = u8(in[kW13]);
  bufs->w13_scale = u8(in[kW13Scale]);
  bufs->w13_global = f32(in[kW13Global]);
  bufs->b13 = f32(in[kB13]);
  bufs->w2 = u8(in[kW2]);
  bufs->w2_scale = u8(in[kW2Scale]);
  bufs->w2_global = f32(in[kW2Global]);
  bufs->b2 = f32(in[kB2]);
  bufs->h_global = f32(in[kHGlobal]);
  bufs->out = static_cast<uint16_t*>(out[kOut].untyped_data());
  bufs->topk_ids = static_cast<int32_t*>(out[kTopkIds].untyped_data());
  bufs->topk_weights = static_cast<float*>(out[kTopkWeights].untyped_data());
  bufs->workspace = static_cast<uint8_t*>(out[kWorkspace].untyped_data());
  bufs->workspace_bytes = out[kWorkspace].element_count();
  return ffi::Error::Success();
}

ffi::Error PrepareCall(const char* target, bool routed, Platform platform, ffi::RemainingArgs args,
                       ffi::RemainingRets rets, const MoeAttrs& attrs, PreparedCall* call) {
  MoeProblem& p = call->problem;
  ffi::Error decoded = DecodeCall(routed, args, rets, attrs, &p, &call->buffers);
  if (decoded.failure()) return decoded;
  const std::string bad_tactic = TacticInvalidReason(p, platform, p.tactic);
  if (!bad_tactic.empty()) return ffi::Error::InvalidArgument(StrCat(target, ": ", bad_tactic));
  const std::string bad_gemm2 = Gemm2TacticInvalidReason(p, platform);
  if (!bad_gemm2.empty()) return ffi::Error::InvalidArgument(StrCat(target, ": ", bad_gemm2));
  call->tactic = &TacticTable()[p.tactic];
  call->gemm2_tactic = &TacticTable()[Gemm2Tactic(p)];
  call->layout = PlanWorkspaceFor(p, *call->tactic, *call->gemm2_tactic);
  if (call->buffers.workspace_bytes < call->layout.total)
    return ffi::Error::InvalidArgument(StrCat(target, ": workspace of ", call->buffers.workspace_bytes,
                                              " bytes, need ", call->layout.total));
  return ffi::Error::Success();
}

}  // namespace jax_moe
