// Lets the numeric helpers in common/ compile for both the CPU handlers and
// CUDA kernels, so both paths share one definition of the math.
#pragma once

#if defined(__CUDACC__)
#define JM_HD __host__ __device__ __forceinline__
#else
#define JM_HD inline
#endif
