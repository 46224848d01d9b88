// Stage 3 (CUDA): GEMM1 + gated activation: h = act(x @ W13^T (+ b13)),
// stored in the activation format (bf16, or re-quantized MXFP8 / NVFP4).
#include "cuda/gemm_dispatch.cuh"
#include "cuda/stages.cuh"

namespace jax_moe::cuda {

ffi::Error LaunchGemm1(const MoeProblem& p, const MoeBuffers& b, const Workspace& ws,
                       int64_t tactic_id, cudaStream_t stream) {
  const int64_t H = p.hidden_size, I = p.intermediate_size;
  const int ab = BlockSize(p.act_format);
  GemmArgs a = CommonGemmArgs(p, b, ws);
  a.k_dim = static_cast<int>(H);
  a.n_dim = static_cast<int>(I);
  a.gather_tokens = true;
  a.a_data = static_cast<const uint8_t*>(b.hidden);
  a.a_scale = b.hidden_scale;
  a.a_row_bytes = p.act_format == Format::kBF16 ? 2 * H : (p.act_format == Format::kNVFP4 ? H / 2 : H);
  a.a_scale_row_bytes = ab ? H / ab : 0;
  a.a_global = p.act_format == Format::kNVFP4 ? b.hidden_global : nullptr;
  a.w = b.w13;
  a.w_scale = b.w13_scale;
  a.w_rows_per_expert = 2 * I;
  a.w_global = p.weight_format == Format::kNVFP4 ? b.w13_global : nullptr;
  a.w_global_per_expert = p.per_expert_w13_global;
  a.bias = b.b13;
  a.h = ws.h;
  a.h_scale = ws.h_scale;
  a.h_row_bytes = ws.layout.h_row_bytes;
  a.h_scale_row_bytes = ws.layout.h_scale_row_bytes;
  a.h_global = b.h_global;
  return DispatchGemm<GemmStage::kGemm1>(a, p.weight_format, tactic_id, ws.layout.max_tiles, stream,
                                         "gemm1");
}

#ifdef JAX_MOE_RS_STAMPS
// The diagnostic build's per-item stamps of this unit's register-A kernels (rs_stamps.cuh).
cudaError_t RsStampsGemm1(RsStamp* host) { return RsStampsFetchAndClear(host); }
#endif

}  // namespace jax_moe::cuda
