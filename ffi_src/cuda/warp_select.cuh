// Warp-wide top-k in registers, for the routing kernel (one warp per token).
//
// Each lane holds S candidates (score, expert index) packed into one 64-bit
// word whose unsigned order is the routing tie rule: a higher score first, and
// on equal scores the smaller index (the CPU's TopKList). A lane sorts its S
// words once; then each of k rounds takes the warp's best head with two
// redux.sync (max of the score keys, then max of the index words among the
// lanes holding that key) and the winning lane pops its head. No shared
// memory, no dynamic register indices (those go to local memory).
#pragma once

#include <cstdint>

namespace jax_moe::cuda {

// An order-preserving key of a float: a > b as floats iff key(a) > key(b).
// -0 and +0 share a key (they compare equal, so the index must decide).
// NaN has no rule in routing; here it sorts above +inf (sign clear) or
// below -inf (sign set).
__device__ __forceinline__ uint32_t ScoreKey(float s) {
  uint32_t b = __float_as_uint(s);
  if ((b << 1) == 0) b = 0;
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}
// The inverse of ScoreKey (a -0 comes back as +0).
__device__ __forceinline__ float KeyScore(uint32_t k) {
  return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

// The candidate word: key high, ~index low (a smaller index is a larger word).
// 0 is an empty slot: below every real candidate of a smaller index.
__device__ __forceinline__ uint64_t Candidate(float score, int index) {
  return (uint64_t{ScoreKey(score)} << 32) | static_cast<uint32_t>(~index);
}
__device__ __forceinline__ int CandidateIndex(uint64_t c) { return static_cast<int>(~static_cast<uint32_t>(c)); }
__device__ __forceinline__ float CandidateScore(uint64_t c) { return KeyScore(static_cast<uint32_t>(c >> 32)); }

// Sorts a lane's S words, largest first (a bitonic network: static indices,
// so the words stay in registers).
template <int S>
__device__ __forceinline__ void SortLargestFirst(uint64_t (&c)[S]) {
  static_assert(S > 0 && (S & (S - 1)) == 0, "S must be a power of two");
#pragma unroll
  for (int k = 2; k <= S; k <<= 1) {
#pragma unroll
    for (int j = k >> 1; j > 0; j >>= 1) {
#pragma unroll
      for (int i = 0; i < S; ++i) {
        const int l = i ^ j;
        if (l > i) {
          const uint64_t a = c[i], b = c[l];
          const bool swap = (i & k) == 0 ? a < b : a > b;  // descending runs where i & k == 0
          c[i] = swap ? b : a;
          c[l] = swap ? a : b;
        }
      }
    }
  }
}

// k (<= 32) rounds over sorted lanes: returns, in lane r < k, the r-th best
// candidate of the warp (0 in the other lanes). Every lane must call it.
template <int S>
__device__ __forceinline__ uint64_t WarpSelectTopK(uint64_t (&c)[S], int k, int lane) {
  uint64_t mine = 0;
  for (int r = 0; r < k; ++r) {
    const uint32_t hi = static_cast<uint32_t>(c[0] >> 32), lo = static_cast<uint32_t>(c[0]);
    const uint32_t best_hi = __reduce_max_sync(0xffffffffu, hi);
    const uint32_t best_lo = __reduce_max_sync(0xffffffffu, hi == best_hi ? lo : 0u);
    if (lane == r) mine = (uint64_t{best_hi} << 32) | best_lo;
    const bool won = hi == best_hi && lo == best_lo;  // one lane: indices are distinct
#pragma unroll
    for (int j = 0; j + 1 < S; ++j) c[j] = won ? c[j + 1] : c[j];
    c[S - 1] = won ? 0 : c[S - 1];
  }
  return mine;
}

}  // namespace jax_moe::cuda
