// Stage 4 (CUDA): GEMM2: y = h @ W2^T (+ b2), bf16, into the permuted rows
// of the workspace (finalize follows) or the per-(token, k) output.
#include "cuda/gemm_dispatch.cuh"
#include "cuda/stages.cuh"

namespace jax_moe::cuda {

ffi::Error LaunchGemm2(const MoeProblem& p, const MoeBuffers& b, const Workspace& ws,
                       int64_t tactic_id, cudaStream_t stream) {
  const int64_t H = p.hidden_size, I = p.intermediate_size;
  GemmArgs a = CommonGemmArgs(p, b, ws);
  a.k_dim = static_cast<int>(I);
  a.n_dim = static_cast<int>(H);
  a.gather_tokens = false;
  a.a_data = ws.h;
  a.a_scale = ws.h_scale;
  a.a_row_bytes = ws.layout.h_row_bytes;
  a.a_scale_row_bytes = ws.layout.h_scale_row_bytes;
  a.a_global = p.act_format == Format::kNVFP4 ? b.h_global : nullptr;
  a.w = b.w2;
  a.w_scale = b.w2_scale;
  a.w_rows_per_expert = H;
  a.w_global = p.weight_format == Format::kNVFP4 ? b.w2_global : nullptr;
  a.w_global_per_expert = p.per_expert_w2_global;
  a.bias = b.b2;
  a.weight_on_input = false;  // applied once, in GEMM1
  a.y = p.do_finalize ? ws.y : b.out;
  a.y_by_expanded = !p.do_finalize;
  return DispatchGemm<GemmStage::kGemm2>(a, p.weight_format, tactic_id, ws.layout.max_tiles, stream,
                                         "gemm2");
}

#ifdef JAX_MOE_RS_STAMPS
// The diagnostic build's per-item stamps of this unit's register-A kernels (rs_stamps.cuh).
cudaError_t RsStampsGemm2(RsStamp* host) { return RsStampsFetchAndClear(host); }
#endif

}  // namespace jax_moe::cuda
