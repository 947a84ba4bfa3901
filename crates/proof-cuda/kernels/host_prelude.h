// What prover.cu needs from CUDA, for compiling it as C++ on the host: thread and block
// indices set by the launcher in host_check.cpp, shared memory as statics (one block runs at
// a time), and __syncthreads as a barrier among the block's threads.
#pragma once
#include <cstdint>

struct dim3 {
    unsigned x, y, z;
};
struct uint4 {
    unsigned x, y, z, w;
};

extern thread_local dim3 threadIdx;
extern thread_local dim3 blockIdx;
extern thread_local dim3 blockDim;
void host_syncthreads();

#define __global__
#define __device__
#define __forceinline__ inline
#define __noinline__
#define __constant__ static const
#define __shared__ static
#define __restrict__
#define __align__(n) __attribute__((aligned(n)))
#define __launch_bounds__(n)
#define __syncthreads() host_syncthreads()

// PTX dp4a.u32.s32: four unsigned bytes of x times four signed bytes of a, summed onto acc.
inline int host_dp4a_u32_s32(unsigned x, unsigned a, int acc) {
    for (int b = 0; b < 4; b++) {
        const int xb = (int)((x >> (8 * b)) & 0xff);
        const int ab = (int)(signed char)((a >> (8 * b)) & 0xff);
        acc += xb * ab;
    }
    return acc;
}
