// The five pipeline stages of the CPU handler, one file each, mirroring the
// CUDA stages: routing -> permute -> gemm1 (+activation) -> gemm2 -> finalize.
#pragma once

#include "common/ffi_glue.h"
#include "common/problem.h"
#include "common/workspace.h"

namespace jax_moe::cpu {

// routing.cc: top-k ids and weights per token (or a copy of the given ones).
void Route(const MoeProblem& p, const MoeBuffers& b);

// permute.cc: per-expert counts, padded offsets, index maps, tile -> expert.
void Permute(const MoeProblem& p, const int32_t* topk_ids, const Workspace& ws);

// gemm.cc: h = act(x @ W13^T + b13) (re-quantized to the activation format),
// then y = h @ W2^T + b2 into ws.y (do_finalize) or the per-(token,k) output.
void Gemm1Activation(const MoeProblem& p, const MoeBuffers& b, const Workspace& ws,
                     int64_t tile_n);
void Gemm2(const MoeProblem& p, const MoeBuffers& b, const Workspace& ws, int64_t tile_n);

// finalize.cc: out[t] = sum_k w[t,k] * y[perm(t,k)] in fp32, or zero rows of
// non-local experts in the per-(token,k) output.
void Finalize(const MoeProblem& p, const MoeBuffers& b, const Workspace& ws);

}  // namespace jax_moe::cpu
