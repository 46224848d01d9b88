// A standalone check (no JAX) of the wgmma building blocks in
// ffi_src/cuda/wgmma.cuh: the B-operand core-matrix layout (BWordOffset),
// the shared-memory descriptor (leading / stride byte offsets), the
// register A-fragment order and the accumulator order, for N = 64 and 128
// over 4 k16 steps (the descriptor start advancing by 2 * leading bytes per
// step, as the GEMM kernel does), and the same with A in shared memory in
// that layout and in the 128-byte swizzled one (the warp-specialised
// family's MmaSs). Random bf16 operands, fp32 reference on
// the host. If the wgmma GEMM family fails its tests, this tells in a few
// seconds whether the layout contract or the FP4 kernel around it is wrong.
//   nvcc -std=c++17 -arch=sm_90a -Iffi_src tests/cuda/wgmma_probe.cu -o wgmma_probe && ./wgmma_probe
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "cuda/wgmma.cuh"

using namespace jax_moe::cuda;

namespace {

constexpr int kM = 64, kSteps = 4, kK = 16 * kSteps;

#define CHECK_CUDA(x)                                                                        \
  do {                                                                                       \
    cudaError_t e_ = (x);                                                                    \
    if (e_ != cudaSuccess) {                                                                 \
      std::printf("CUDA error %s at %s:%d\n", cudaGetErrorString(e_), __FILE__, __LINE__); \
      return 2;                                                                              \
    }                                                                                        \
  } while (0)

uint16_t ToBf16(float f) {  // round to nearest even
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
float FromBf16(uint16_t b) {
  const uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// a: [kM][kK] bf16, b: [N][kK] bf16 (token rows, K contiguous), d: [kM][N] fp32.
// kRegA: A fragments in registers, B core-matrix layout; kSs: A and B in
// shared memory, core-matrix layout; kSsSw128: both in the 128-byte swizzled
// layout (one 64-element K atom: kK == 64).
enum Mode { kRegA, kSs, kSsSw128 };
constexpr const char* kModeName[] = {"A in registers", "A+B in shared memory", "A+B swizzled 128B"};
static_assert(kK == 64, "the swizzled case covers exactly one 128-byte atom of K");

template <int N, Mode kMode>
__global__ void Probe(const uint16_t* a, const uint16_t* b, float* d) {
  constexpr bool kSs = kMode != kRegA, kSw = kMode == kSsSw128;
  __shared__ __align__(1024) uint32_t s_b[N * kK / 2];
  __shared__ __align__(1024) uint32_t s_a[kM * kK / 2];  // SS modes: A in the same layout (kM rows)
  // Byte offset of pair c (K elements 2c, 2c+1) of row n in an operand of `rows` rows.
  auto offset = [](int rows, int n, int c) -> uint32_t {
    return kSw ? wgmma::Sw128Offset(n, c / 4) + (c % 4) * 4u : wgmma::BWordOffset(rows, n, c / 4, c % 4);
  };
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, q = lane % 4;
  auto pair = [](const uint16_t* row, int k) {
    return static_cast<uint32_t>(row[k]) | (static_cast<uint32_t>(row[k + 1]) << 16);
  };
  // Natural K order: pair c of token n (K elements 2c, 2c+1) -> core-matrix
  // column c / 4, slot pair c % 4.
  uint8_t* s_bytes = reinterpret_cast<uint8_t*>(s_b);
  for (int i = threadIdx.x; i < N * kK / 2; i += blockDim.x) {
    const int n = i / (kK / 2), c = i % (kK / 2);
    *reinterpret_cast<uint32_t*>(s_bytes + offset(N, n, c)) = pair(b + n * kK, 2 * c);
  }
  uint8_t* s_abytes = reinterpret_cast<uint8_t*>(s_a);
  for (int i = threadIdx.x; kSs && i < kM * kK / 2; i += blockDim.x) {
    const int m = i / (kK / 2), c = i % (kK / 2);
    *reinterpret_cast<uint32_t*>(s_abytes + offset(kM, m, c)) = pair(a + m * kK, 2 * c);
  }
  wgmma::FenceSharedForAsync();
  __syncthreads();

  float acc[N / 8][4];
  for (int i = 0; i < N / 8; ++i)
    for (int r = 0; r < 4; ++r) acc[i][r] = 0.0f;
  const uint32_t base = wgmma::SmemAddress(s_b);
  constexpr uint32_t kLead = wgmma::BLeadingBytes(N);
  const uint16_t* row_g = a + (16 * warp + g) * kK;
  const uint16_t* row_g8 = row_g + 8 * kK;
#pragma unroll
  for (int s = 0; s < kSteps; ++s) {
    const int k = 16 * s + 2 * q;
    const uint32_t a0 = pair(row_g, k), a1 = pair(row_g8, k), a2 = pair(row_g, k + 8), a3 = pair(row_g8, k + 8);
    wgmma::Fence();
    const uint64_t desc_b = wgmma::Descriptor(base + 2u * s * kLead, kLead, wgmma::kBStrideBytes);
    if constexpr (kSw) {  // k16 step s: 32 bytes into the atom
      wgmma::MmaSs<N>(acc, wgmma::DescriptorSw128(wgmma::SmemAddress(s_a) + 32u * s),
                      wgmma::DescriptorSw128(base + 32u * s));
    } else if constexpr (kSs) {
      constexpr uint32_t kALead = wgmma::BLeadingBytes(kM);
      wgmma::MmaSs<N>(acc, wgmma::Descriptor(wgmma::SmemAddress(s_a) + 2u * s * kALead, kALead, wgmma::kBStrideBytes),
                      desc_b);
    } else {
      wgmma::MmaRs<N>(acc, a0, a1, a2, a3, desc_b);
    }
    wgmma::Commit();
    wgmma::Wait<0>();
  }
  for (int i = 0; i < N / 8; ++i)
    for (int r = 0; r < 4; ++r) {
      const int row = 16 * warp + g + 8 * (r >> 1), col = 8 * i + 2 * q + (r & 1);
      d[row * N + col] = acc[i][r];
    }
}

template <int N, Mode kMode>
int Run(std::mt19937& rng) {
  std::normal_distribution<float> dist;
  std::vector<uint16_t> a(kM * kK), b(N * kK);
  for (auto& v : a) v = ToBf16(dist(rng));
  for (auto& v : b) v = ToBf16(dist(rng));
  std::vector<float> ref(kM * N, 0.0f), out(kM * N, NAN);
  for (int m = 0; m < kM; ++m)
    for (int n = 0; n < N; ++n) {
      double s = 0;
      for (int k = 0; k < kK; ++k) s += double(FromBf16(a[m * kK + k])) * FromBf16(b[n * kK + k]);
      ref[m * N + n] = static_cast<float>(s);
    }
  uint16_t *da, *db;
  float* dd;
  CHECK_CUDA(cudaMalloc(&da, a.size() * 2));
  CHECK_CUDA(cudaMalloc(&db, b.size() * 2));
  CHECK_CUDA(cudaMalloc(&dd, out.size() * 4));
  CHECK_CUDA(cudaMemcpy(da, a.data(), a.size() * 2, cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemcpy(db, b.data(), b.size() * 2, cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemset(dd, 0xff, out.size() * 4));  // NaN until written
  Probe<N, kMode><<<1, 128>>>(da, db, dd);
  CHECK_CUDA(cudaGetLastError());
  CHECK_CUDA(cudaDeviceSynchronize());
  CHECK_CUDA(cudaMemcpy(out.data(), dd, out.size() * 4, cudaMemcpyDeviceToHost));
  double worst = 0;
  int bad = 0;
  for (size_t i = 0; i < out.size(); ++i) {
    const double err = std::fabs(double(out[i]) - ref[i]);
    if (!(err <= 1e-3 * (1.0 + std::fabs(ref[i])))) ++bad;
    if (!(err <= worst)) worst = err;  // NaN propagates into `worst`
  }
  std::printf("wgmma probe m64n%dk16 %s x %d steps: %s (max abs error %.3g, %d of %zu wrong)\n", N,
              kModeName[kMode], kSteps, bad ? "FAIL" : "PASS", worst, bad, out.size());
  if (bad) {  // the first rows, to read the permutation off
    for (int m = 0; m < 2; ++m)
      for (int n = 0; n < 8; ++n)
        std::printf("  d[%d][%d] = %9.4f  ref %9.4f\n", m, n, out[m * N + n], ref[m * N + n]);
  }
  cudaFree(da);
  cudaFree(db);
  cudaFree(dd);
  return bad ? 1 : 0;
}

}  // namespace

int main() {
  std::mt19937 rng(7);
  const int rc = Run<64, kRegA>(rng) | Run<128, kRegA>(rng) | Run<64, kSs>(rng) | Run<128, kSs>(rng) |
                 Run<64, kSsSw128>(rng) | Run<128, kSsSw128>(rng);
  return rc;
}
