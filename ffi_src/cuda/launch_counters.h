// Host-side counters of which GEMM paths the launchers took (no device data;
// cuda_handler_stats() reports them): the tests use them to prove that a
// path they mean to exercise really ran, not a fallback.
#pragma once

#include <atomic>
#include <cstdint>

namespace jax_moe::cuda {

// GEMM launches that split K across blocks, and the most splits one used (split_k.cuh).
inline std::atomic<int64_t> g_split_k_launches{0};
inline std::atomic<int> g_max_k_splits{1};
// GEMM launches of the register-A wgmma kernel itself, not its fallback (gemm_wgmma_rs.cuh).
inline std::atomic<int64_t> g_wgmma_rs_launches{0};

}  // namespace jax_moe::cuda
