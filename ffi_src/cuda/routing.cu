// Stage 1 (CUDA): routing, one warp per token. Lanes score the experts
// (lane, lane+32, ...) into shared memory, then top-k is k rounds of a warp
// arg-max with the CPU's tie rule (higher score, then smaller index). The
// per-token weights come from RoutingWeights (routing_math.h), the CPU's own
// code, so CPU and GPU agree to the last few ulps.
#include <cmath>

#include "common/routing_math.h"
#include "cuda/cuda_check.h"
#include "cuda/dependent_launch.cuh"
#include "cuda/stages.cuh"

namespace jax_moe::cuda {
namespace {

constexpr int kWarpsPerBlock = 4;
constexpr int kSlots = kMaxExperts / 32;  // experts per lane, at most
static_assert(kSlots <= 32, "WarpTopK keeps a lane's taken slots in one 32-bit mask");

struct Best {
  float score;
  int index;
};

// Better = higher score; equal scores: smaller index. -inf entries are real
// candidates (masked DeepSeek groups), `taken` ones never are.
__device__ __forceinline__ bool Better(float s, int i, const Best& b) {
  return b.index < 0 || s > b.score || (s == b.score && i < b.index);
}

__device__ Best WarpArgMax(Best b) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    Best o{__shfl_xor_sync(0xffffffffu, b.score, off), __shfl_xor_sync(0xffffffffu, b.index, off)};
    if (o.index >= 0 && Better(o.score, o.index, b)) b = o;
  }
  return b;
}

__device__ float WarpSum(float v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}
__device__ float WarpMax(float v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, off));
  return v;
}

// k rounds of arg-max over score[0..n) (in shared memory); lane 0 writes the
// chosen indices and scores to idx/val (shared memory: an array indexed by
// the round would live in local memory). Each round scans only the
// ceil(n / 32) slots that exist: a round is a chain of dependent shared-memory
// loads and compares, and with all kSlots = 16 (512 experts) scanned the
// stage grew ~1.1 us per round whatever n was (stage_timer, H200, T = 1:
// 6.7 us Mixtral 8 experts top-2, 9.2 gpt-oss 128 top-4, 13.4 Qwen3 128
// top-8, 25 DeepSeek-V3 256 top-8 plus groups).
__device__ void WarpTopK(const float* score, int n, int k, int lane, int32_t* idx, float* val) {
  uint32_t taken = 0;  // bit s: expert lane + 32 s already chosen
  const int slots = (n + 31) / 32;  // <= kSlots
  for (int r = 0; r < k; ++r) {
    Best b{0.0f, -1};
    for (int s = 0; s < slots; ++s) {
      const int e = lane + 32 * s;
      if (e < n && !(taken >> s & 1u) && Better(score[e], e, b)) b = Best{score[e], e};
    }
    b = WarpArgMax(b);
    if ((b.index & 31) == lane) taken |= 1u << (b.index >> 5);
    if (lane == 0) {
      idx[r] = b.index;
      val[r] = b.score;
    }
  }
  __syncwarp();
}

// The sum of the two best scores of group g (one lane per group), with the
// CPU's TopKList(2) semantics: ties keep the earlier expert, and the sum is
// best + second in that order. Scalars, so nothing spills to local memory.
__device__ float GroupScore(const float* score, int g, int per_group) {
  float best = score[g * per_group], second = 0.0f;
  bool two = false;
  for (int j = 1; j < per_group; ++j) {
    const float s = score[g * per_group + j];
    if (!two) {
      if (s > best) {
        second = best;
        best = s;
      } else {
        second = s;
      }
      two = true;
    } else if (s > second) {
      if (s > best) {
        second = best;
        best = s;
      } else {
        second = s;
      }
    }
  }
  return two ? best + second : best;
}

// One warp's scratch. Everything indexed at run time lives here, not in
// per-thread arrays (which the compiler puts on the stack: 464 bytes of
// local memory and ~12 us at T = 1 before this layout).
struct WarpScratch {
  float score[kMaxExperts];
  float group[kMaxGroups];
  int32_t group_idx[kMaxGroups];
  float group_val[kMaxGroups];
  int32_t idx[kMaxTopK];
  float val[kMaxTopK];
  float w[kMaxTopK];
};

// One instantiation per routing method (kMethod): a kernel holds only its
// own method's code. Tried because the one kernel with every method's code
// (and RoutingWeights' switch) spent much of its ~8 us at T = 1 with no
// instruction to issue (ncu: no_instruction and branch stalls, 11% issue
// active; NOTES v5), and after the L2 flush that streaming weights amount to
// its instructions come from DRAM. Measured (NOTES v7): no change (Qwen3
// 11.1 us, DeepSeek-V3 22.8 us at T = 1), so code size is not the cost either.
template <RoutingMethod kMethod>
__global__ void RoutingKernel(const float* __restrict__ logits, const float* __restrict__ bias,
                              RoutingParams rp, int num_tokens, int32_t* __restrict__ ids,
                              float* __restrict__ weights) {
  rp.method = kMethod;  // a constant from here on: RoutingWeights keeps one case
  __shared__ WarpScratch s_warp[kWarpsPerBlock];
  // Launched normally (after whatever XLA ran), so permute, launched as our
  // dependent, may become resident now and wait for us.
  AllowDependents();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int t = blockIdx.x * kWarpsPerBlock + warp;
  if (t >= num_tokens) return;
  const int E = rp.num_experts, K = rp.top_k;
  const float* x = logits + static_cast<int64_t>(t) * E;
  WarpScratch& ws = s_warp[warp];
  float* score = ws.score;

  switch (kMethod) {
    case RoutingMethod::kDEFAULT: {
      // The lane's logits are loaded once, all at once (one round trip), and
      // kept in registers (a fully unrolled loop: static indices).
      float xv[kSlots], m = -INFINITY;
#pragma unroll
      for (int j = 0; j < kSlots; ++j) {
        const int e = lane + 32 * j;
        xv[j] = e < E ? x[e] : -INFINITY;
        m = fmaxf(m, xv[j]);
      }
      m = WarpMax(m);
      float s = 0.0f;
#pragma unroll
      for (int j = 0; j < kSlots; ++j)
        if (lane + 32 * j < E) s += expf(xv[j] - m);
      s = WarpSum(s);
#pragma unroll
      for (int j = 0; j < kSlots; ++j)
        if (lane + 32 * j < E) score[lane + 32 * j] = expf(xv[j] - m) / s;
      __syncwarp();
      WarpTopK(score, E, K, lane, ws.idx, ws.val);
      break;
    }
    case RoutingMethod::kRENORMALIZE:
    case RoutingMethod::kTOPK:
    case RoutingMethod::kLLAMA4: {
      for (int e = lane; e < E; e += 32) score[e] = x[e];
      __syncwarp();
      WarpTopK(score, E, K, lane, ws.idx, ws.val);
      break;
    }
    case RoutingMethod::kDEEPSEEK_V3: {
      const int groups = rp.n_group > 1 ? rp.n_group : 1;
      const int per_group = E / groups;
      for (int e = lane; e < E; e += 32) score[e] = Sigmoid(x[e]) + (bias ? bias[e] : 0.0f);
      __syncwarp();
      if (groups > 1) {
        // Group score = sum of its two best biased scores (lane g scans group g).
        if (lane < groups) ws.group[lane] = GroupScore(score, lane, per_group);
        __syncwarp();
        WarpTopK(ws.group, groups, rp.topk_group, lane, ws.group_idx, ws.group_val);
        uint32_t kept = 0;
        for (int i = 0; i < rp.topk_group; ++i) kept |= 1u << ws.group_idx[i];
        for (int e = lane; e < E; e += 32)
          if (!(kept >> (e / per_group) & 1u)) score[e] = -INFINITY;
        __syncwarp();
      }
      WarpTopK(score, E, K, lane, ws.idx, ws.val);
      break;
    }
  }
  // The weights are a few k-ordered sums (the CPU's own RoutingWeights, same
  // order): one lane computes them into shared memory, lanes < K store.
  if (lane == 0) RoutingWeights(rp, x, ws.val, ws.idx, ws.w);
  __syncwarp();
  if (lane < K) {
    ids[static_cast<int64_t>(t) * K + lane] = ws.idx[lane];
    weights[static_cast<int64_t>(t) * K + lane] = ws.w[lane];
  }
}

}  // namespace

ffi::Error LaunchRouting(const MoeProblem& p, const MoeBuffers& b, cudaStream_t stream) {
  const int64_t TK = p.expanded();
  if (p.routed) {
    JM_RETURN_IF_ERROR(CudaError(cudaMemcpyAsync(b.topk_ids, b.in_ids, TK * sizeof(int32_t),
                                                 cudaMemcpyDeviceToDevice, stream),
                                 "routing: copy topk_ids"));
    return CudaError(cudaMemcpyAsync(b.topk_weights, b.in_weights, TK * sizeof(float),
                                     cudaMemcpyDeviceToDevice, stream),
                     "routing: copy topk_weights");
  }
  const int blocks = static_cast<int>((p.num_tokens + kWarpsPerBlock - 1) / kWarpsPerBlock);
  void (*kernel)(const float*, const float*, RoutingParams, int, int32_t*, float*) = nullptr;
  switch (p.routing.method) {
    case RoutingMethod::kDEFAULT: kernel = RoutingKernel<RoutingMethod::kDEFAULT>; break;
    case RoutingMethod::kRENORMALIZE: kernel = RoutingKernel<RoutingMethod::kRENORMALIZE>; break;
    case RoutingMethod::kTOPK: kernel = RoutingKernel<RoutingMethod::kTOPK>; break;
    case RoutingMethod::kLLAMA4: kernel = RoutingKernel<RoutingMethod::kLLAMA4>; break;
    case RoutingMethod::kDEEPSEEK_V3: kernel = RoutingKernel<RoutingMethod::kDEEPSEEK_V3>; break;
  }
  if (kernel == nullptr) return ffi::Error::InvalidArgument("routing: unknown routing method");
  kernel<<<blocks, 32 * kWarpsPerBlock, 0, stream>>>(b.logits, b.routing_bias, p.routing,
                                                     static_cast<int>(p.num_tokens), b.topk_ids, b.topk_weights);
  return LaunchError("routing kernel");
}

}  // namespace jax_moe::cuda
