// Stage 5 (CUDA): out[t] = sum_k w[t,k] * y[perm(t,k)], fp32 accumulation in
// k order (deterministic, no atomics), stored bf16.
//
// Vectorized kernel (after FlashInfer's finalize optimisation): one block per
// token and group of 128 x 8 columns (grid.y splits H); the token's K
// permuted rows and weights are read once into shared memory; each thread
// owns 8 columns (one 16-byte load per row) and walks k in unrolled chunks of
// 4, 2 or 1 rows (the largest that divides K), so the loads of a chunk are in
// flight together. With the routing weight applied on the input every packed
// weight lane is 1 (not only the first).
// Why grid.y: with one block per token looping over H, T = 256 gave 256
// blocks (2 per SM, ~16 KB of loads in flight per SM) and reached 10-16% of
// the copy bandwidth on an H200 (benchmarks/NOTES.md v4); splitting H gives
// every thread exactly one column group, and T * ceil(H / 1024) blocks.
// Scalar kernel: one thread per output element, for grids too small to fill
// the GPU with one block per token.
#include "common/fp_formats.h"
#include "cuda/cuda_check.h"
#include "cuda/dependent_launch.cuh"
#include "cuda/stages.cuh"

namespace jax_moe::cuda {
namespace {

constexpr int kVecThreads = 128;

__device__ __forceinline__ void AccumulateRow(float (&acc)[8], const uint16_t* y, int row, int64_t H,
                                              int64_t v, float w) {
  if (row < 0) return;  // expert on another device: contributes 0
  const uint4 d = *reinterpret_cast<const uint4*>(y + static_cast<int64_t>(row) * H + 8 * v);
  const uint32_t words[4] = {d.x, d.y, d.z, d.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    acc[2 * i] += w * __uint_as_float(words[i] << 16);
    acc[2 * i + 1] += w * __uint_as_float(words[i] & 0xffff0000u);
  }
}

template <int kChunk>
__global__ void __launch_bounds__(kVecThreads)
    FinalizeVecKernel(const uint16_t* __restrict__ y, const int32_t* __restrict__ e2p,
                      const float* __restrict__ weights, bool weight_on_input, int K, int64_t H,
                      uint16_t* __restrict__ out) {
  __shared__ int s_row[kMaxTopK];
  __shared__ float s_w[kMaxTopK];
  WaitForPredecessor();  // y (GEMM2's output)
  const int64_t t = blockIdx.x;
  if (threadIdx.x < K) {
    s_row[threadIdx.x] = e2p[t * K + threadIdx.x];
    s_w[threadIdx.x] = weight_on_input ? 1.0f : weights[t * K + threadIdx.x];
  }
  __syncthreads();
  const int64_t v = static_cast<int64_t>(blockIdx.y) * kVecThreads + threadIdx.x;
  if (v < H / 8) {
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int k0 = 0; k0 < K; k0 += kChunk) {
#pragma unroll
      for (int c = 0; c < kChunk; ++c) AccumulateRow(acc, y, s_row[k0 + c], H, v, s_w[k0 + c]);
    }
    uint4 o;
    o.x = Bf16Bits(acc[0]) | (static_cast<uint32_t>(Bf16Bits(acc[1])) << 16);
    o.y = Bf16Bits(acc[2]) | (static_cast<uint32_t>(Bf16Bits(acc[3])) << 16);
    o.z = Bf16Bits(acc[4]) | (static_cast<uint32_t>(Bf16Bits(acc[5])) << 16);
    o.w = Bf16Bits(acc[6]) | (static_cast<uint32_t>(Bf16Bits(acc[7])) << 16);
    *reinterpret_cast<uint4*>(out + t * H + 8 * v) = o;
  }
}

__global__ void FinalizeScalarKernel(const uint16_t* __restrict__ y, const int32_t* __restrict__ e2p,
                                     const float* __restrict__ weights, bool weight_on_input, int K,
                                     int64_t H, int64_t total, uint16_t* __restrict__ out) {
  WaitForPredecessor();
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= total) return;
  const int64_t t = i / H, c = i % H;
  float acc = 0.0f;
  for (int k = 0; k < K; ++k) {
    const int row = e2p[t * K + k];
    if (row < 0) continue;
    const float w = weight_on_input ? 1.0f : weights[t * K + k];
    acc += w * Bf16ToFloat(y[static_cast<int64_t>(row) * H + c]);
  }
  out[i] = Bf16Bits(acc);
}

// do_finalize=False: rows of (t, k) pairs whose expert lives elsewhere are 0.
__global__ void ZeroNonLocalRowsKernel(const int32_t* __restrict__ e2p, int64_t H, uint16_t* out) {
  WaitForPredecessor();
  const int64_t ex = blockIdx.x;
  if (e2p[ex] >= 0) return;
  for (int64_t v = threadIdx.x; v < H / 8; v += blockDim.x)
    reinterpret_cast<uint4*>(out + ex * H)[v] = make_uint4(0, 0, 0, 0);
}

}  // namespace

// `dependent`: launched as a programmatic dependent of GEMM2 (the kernels
// wait for it first); the benchmarks' finalize-alone runs launch normally.
static ffi::Error LaunchFinalizeKernel(const MoeProblem& p, const MoeBuffers& b, const Workspace& ws,
                                       FinalizeKernel kind, bool dependent, cudaStream_t stream) {
  const int64_t T = p.num_tokens, H = p.hidden_size;
  const int K = static_cast<int>(p.routing.top_k);
  if (kind == FinalizeKernel::kAuto)  // one block per token needs enough tokens to fill the SMs
    kind = T >= 32 ? FinalizeKernel::kVectorized : FinalizeKernel::kScalar;
  if (kind == FinalizeKernel::kScalar) {
    const int64_t total = T * H;
    return CudaError(LaunchDependent(dependent, FinalizeScalarKernel, dim3(static_cast<unsigned>((total + 255) / 256)),
                                     dim3(256), 0, stream, ws.y, ws.expanded_to_permuted, b.topk_weights,
                                     p.routing_weight_on_input, K, H, total, b.out),
                     "finalize (scalar) kernel");
  }
  const dim3 grid(static_cast<unsigned>(T), static_cast<unsigned>((H / 8 + kVecThreads - 1) / kVecThreads));
  const auto kernel = K % 4 == 0 ? FinalizeVecKernel<4> : (K % 2 == 0 ? FinalizeVecKernel<2> : FinalizeVecKernel<1>);
  return CudaError(LaunchDependent(dependent, kernel, grid, dim3(kVecThreads), 0, stream, ws.y,
                                   ws.expanded_to_permuted, b.topk_weights, p.routing_weight_on_input, K, H,
                                   b.out),
                   "finalize (vectorized) kernel");
}

ffi::Error LaunchFinalizeKernel(const MoeProblem& p, const MoeBuffers& b, const Workspace& ws,
                                FinalizeKernel kind, cudaStream_t stream) {
  return LaunchFinalizeKernel(p, b, ws, kind, /*dependent=*/false, stream);
}

ffi::Error LaunchFinalize(const MoeProblem& p, const MoeBuffers& b, const Workspace& ws,
                          cudaStream_t stream) {
  if (!p.do_finalize)
    return CudaError(LaunchDependent(true, ZeroNonLocalRowsKernel, dim3(static_cast<unsigned>(p.expanded())),
                                     dim3(128), 0, stream, ws.expanded_to_permuted, p.hidden_size, b.out),
                     "zero non-local rows kernel");
  return LaunchFinalizeKernel(p, b, ws, FinalizeKernel::kAuto, /*dependent=*/true, stream);
}

}  // namespace jax_moe::cuda
