// Just enough of CUDA to run the generated kernels on the CPU, for tests on machines without a
// GPU: every CUDA thread of a block is an OS thread, warp shuffles and __syncwarp are barriers of
// the 32 threads of a warp, __syncthreads one of the whole block; blocks run one after another.
// It checks what the kernels compute (indexing, reductions, the sampler, the stream loop), not
// how fast or how a real GPU schedules them.
#pragma once

#include <barrier>
#include <cmath>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __shared__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __align__(n) __attribute__((aligned(n)))
#define __launch_bounds__(...)

struct __align__(16) float4 {
    float x, y, z, w;
};

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};

thread_local dim3 threadIdx;
dim3 blockIdx, blockDim, gridDim;

// Dynamic shared memory of the running block (`extern __shared__ __align__(16) float smem[]`).
float smem[1 << 20] __align__(16);

struct Warp {
    std::barrier<> sync{32};
    float xf[32];
    int xi[32];
};

struct Block {
    std::unique_ptr<std::barrier<>> sync;
    std::vector<std::unique_ptr<Warp>> warps;
};

Block block;

inline Warp& my_warp() { return *block.warps[threadIdx.x / 32]; }

inline void __syncthreads() { block.sync->arrive_and_wait(); }
inline void __syncwarp(unsigned = 0xffffffffu) { my_warp().sync.arrive_and_wait(); }

template <typename T>
inline T* slots(Warp& w);
template <>
inline float* slots<float>(Warp& w) { return w.xf; }
template <>
inline int* slots<int>(Warp& w) { return w.xi; }

template <typename T>
inline T exchange(T v, int from) {
    Warp& w = my_warp();
    const int lane = threadIdx.x & 31;
    w.sync.arrive_and_wait();
    slots<T>(w)[lane] = v;
    w.sync.arrive_and_wait();
    T r = slots<T>(w)[from & 31];
    w.sync.arrive_and_wait();
    return r;
}

template <typename T>
inline T __shfl_xor_sync(unsigned, T v, int mask) { return exchange(v, (threadIdx.x & 31) ^ mask); }
template <typename T>
inline T __shfl_sync(unsigned, T v, int src) { return exchange(v, src); }

// Bit i set when lane i's predicate holds.
inline unsigned __ballot_sync(unsigned, bool pred) {
    unsigned bits = 0;
    for (int i = 0; i < 32; i++) bits |= (unsigned)exchange((int)pred, i) << i;
    return bits;
}

inline bool __any_sync(unsigned mask, bool pred) { return __ballot_sync(mask, pred) != 0; }

inline int __ffs(unsigned x) { return __builtin_ffs((int)x); }

inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline float __fdividef(float a, float b) { return a / b; }

inline float __int_as_float(unsigned bits) {
    float f;
    std::memcpy(&f, &bits, sizeof f);
    return f;
}

// Runs `kernel` over a grid of `blocks` blocks of `threads` threads (threads a multiple of 32,
// or 1).
template <typename F>
void launch(unsigned blocks, unsigned threads, F kernel) {
    gridDim.x = blocks;
    blockDim.x = threads;
    for (unsigned b = 0; b < blocks; b++) {
        blockIdx.x = b;
        block.sync = std::make_unique<std::barrier<>>(threads);
        block.warps.clear();
        for (unsigned w = 0; w < (threads + 31) / 32; w++) block.warps.push_back(std::make_unique<Warp>());
        std::vector<std::thread> pool;
        for (unsigned t = 0; t < threads; t++) {
            pool.emplace_back([t, &kernel] {
                threadIdx.x = t;
                kernel();
            });
        }
        for (auto& p : pool) p.join();
    }
}
