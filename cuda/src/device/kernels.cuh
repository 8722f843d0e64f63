// The weights a block reads: copied into its shared memory when they fit (MG_WEIGHTS_SHARED),
// else the global copy. Every thread of the block must call it.
__device__ __forceinline__ const float* mg_block_weights(const float* __restrict__ wg, float* smem) {
    if (MG_WEIGHTS_SHARED > 0) {
        for (int i = threadIdx.x; i < MG_WEIGHTS; i += blockDim.x) smem[i] = wg[i];
    }
    __syncthreads();
    return MG_WEIGHTS_SHARED > 0 ? smem : wg;
}

// The stream loop's advance (Stream::advance): after drawing `next`, restart at BOS, position 0,
// when it is BOS or the block is full, else feed it back.
__device__ __forceinline__ void mg_advance(int next, int* tok, int* pos) {
    if (next == MG_BOS || *pos + 1 == MG_BLOCK) {
        *tok = MG_BOS;
        *pos = 0;
    } else {
        *tok = next;
        *pos += 1;
    }
}

// Sets the sampling temperature of every kernel of this module.
extern "C" __global__ void mg_set_temperature(float t) { mg_inv_temperature = 1.0f / t; }

// One teacher-forced step by one warp (launch <<<1, 32>>>); s: a global scratch of MG_SCRATCH
// floats that keeps the KV cache between launches. The logits stay at s + MG_S_LOGITS.
extern "C" __global__ void mg_warp_step(const float* __restrict__ w, float* s, int tok, int pos, float r, int* next) {
    const int drawn = mg_step_warp(w, s, tok, pos, r);
    if (threadIdx.x == 0) *next = drawn;
}

// The same step by the lane ops (mg_step_lanes): the teacher-forced checks of mg_persistent.
// s: a global scratch of MG_LANE_SCRATCH floats.
extern "C" __global__ void mg_lanes_step(const float* __restrict__ w, float* s, int tok, int pos, float r, int* next) {
    const int drawn = mg_step_lanes(w, s, tok, pos, r, s + MG_S_LOGITS);
    if (threadIdx.x == 0) *next = drawn;
}

// The same from the prefix table (mg_step_lanes_table): the checks of mg_persistent_table.
extern "C" __global__ void mg_lanes_table_step(const float* __restrict__ w, float* s, int tok, int pos, float r,
                                               int* next) {
    const int drawn = mg_step_lanes_table(w, s, tok, pos, r, s + MG_S_LOGITS);
    if (threadIdx.x == 0) *next = drawn;
}

// Whole benchmark streams, one per warp, `steps` steps each, by the lane ops (LANES) or the warp
// ops, the weights copied into shared memory where they fit, or (TABLE: the lane ops from the
// prefix table that follows the weights) weights and table read from global memory through the
// read-only data cache. state: (tok, pos, rng) per stream; kv: MG_KV floats per stream, loaded at
// the start and saved at the end so that consecutive launches continue the same streams.
// checksums: Stream::run's checksum of this launch.
template <bool LANES, bool TABLE = false>
__device__ __forceinline__ void mg_warp_streams(const float* __restrict__ wg, unsigned* state, float* kv, int streams,
                                                long long steps, unsigned long long* checksums) {
    static_assert(!TABLE || LANES, "the prefix table steps are lane steps");
    extern __shared__ __align__(16) float smem[];
    const float* w = TABLE ? wg : mg_block_weights(wg, smem);
    const int lane = threadIdx.x & 31;
    const int stream = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (stream >= streams) return;
    float* s = smem + (TABLE ? 0 : MG_WEIGHTS_SHARED) + (threadIdx.x >> 5) * (LANES ? MG_LANE_SCRATCH : MG_SCRATCH);
    for (int i = lane; i < MG_KV; i += 32) s[MG_S_KV + i] = kv[(long long)stream * MG_KV + i];
    __syncwarp();
    int tok = (int)state[3 * stream], pos = (int)state[3 * stream + 1];
    unsigned rng = state[3 * stream + 2];
    unsigned long long sum = 0;
    for (long long n = 0; n < steps; n++) {
        rng = mg_xorshift32(rng);
        const float u = mg_uniform24(rng);
        int next;
        if constexpr (LANES && TABLE) {
            next = mg_step_lanes_table(w, s, tok, pos, u, 0);
        } else if constexpr (LANES) {
            next = mg_step_lanes(w, s, tok, pos, u, 0);
        } else {
            next = mg_step_warp(w, s, tok, pos, u);
        }
        sum = sum * 31ull + (unsigned long long)next;
        mg_advance(next, &tok, &pos);
    }
    for (int i = lane; i < MG_KV; i += 32) kv[(long long)stream * MG_KV + i] = s[MG_S_KV + i];
    if (lane == 0) {
        state[3 * stream] = (unsigned)tok;
        state[3 * stream + 1] = (unsigned)pos;
        state[3 * stream + 2] = rng;
        checksums[stream] = sum;
    }
}

// One warp alone (launch <<<1, 32>>>), by the lane ops: as many registers as the compiler likes,
// to keep loads in flight along the one dependency chain.
extern "C" __global__ void __launch_bounds__(32, 1) mg_persistent(const float* __restrict__ wg, unsigned* state, float* kv,
                                                                  int streams, long long steps,
                                                                  unsigned long long* checksums) {
    mg_warp_streams<true>(wg, state, kv, streams, steps, checksums);
}

// The same from the prefix table that follows the weights (mg_step_lanes_table): each step
// starts after the ops that depend on (tok, pos) alone, from their results, read in one row.
// Weights and table are read from global memory (const __restrict__: the read-only data cache).
// Nothing in the loop writes them, so the compiler may load a lane's weights once, before the
// loop, and keep them in registers.
extern "C" __global__ void __launch_bounds__(32, 1) mg_persistent_table(const float* __restrict__ wg, unsigned* state,
                                                                        float* kv, int streams, long long steps,
                                                                        unsigned long long* checksums) {
    mg_warp_streams<true, true>(wg, state, kv, streams, steps, checksums);
}

// Many warps, MG_WARPS_PER_BLOCK per block: registers capped so that as many blocks fit on an SM
// as its shared memory allows (MG_WARP_BLOCKS_PER_SM).
extern "C" __global__ void __launch_bounds__(32 * MG_WARPS_PER_BLOCK, MG_WARP_BLOCKS_PER_SM)
    mg_streams_warp(const float* __restrict__ wg, unsigned* state, float* kv, int streams, long long steps,
                    unsigned long long* checksums) {
    mg_warp_streams<false>(wg, state, kv, streams, steps, checksums);
}

// One teacher-forced step by one thread (launch <<<1, 1>>>); kv: MG_KV floats kept between
// launches; logits: MG_VOCAB floats out.
extern "C" __global__ void mg_thread_step(const float* __restrict__ w, float* kv, int tok, int pos, float r,
                                          float* logits, int* next) {
    *next = mg_step_thread<1, 0>(w, kv, 0, tok, pos, r, logits);
}

// Not inlined into the token loop: inlined, the compiler hoists the step's weight loads out of the
// loop (they do not change from token to token) and runs out of registers.
__device__ __noinline__ int mg_step_thread_call(const float* __restrict__ w, float* kv, float* skv, int tok, int pos,
                                               float r) {
    return mg_step_thread<MG_STREAM_THREADS, MG_KV_SHARED_POSITIONS>(w, kv, skv, tok, pos, r, 0);
}

// Copies the first MG_KV_SHARED_POSITIONS positions of one thread's KV cache between global memory
// (kv) and the block's shared memory (skv), in mg_step_thread's layouts.
template <bool TO_SHARED>
__device__ __forceinline__ void mg_kv_shared_copy(float* kv, float* skv) {
    constexpr int N = MG_KV_SHARED_POSITIONS * MG_EMBD;
    if constexpr (N > 0) {
        #pragma unroll 1
        for (int j = 0; j < 2 * MG_LAYERS * N; j++) {
            float* g = kv + ((j / N) * MG_BLOCK * MG_EMBD + j % N) * MG_STREAM_THREADS;
            float* sh = skv + j * MG_STREAM_THREADS;
            if (TO_SHARED) {
                *sh = *g;
            } else {
                *g = *sh;
            }
        }
    }
}

// Whole benchmark streams, one per thread, in blocks of MG_STREAM_THREADS threads; kv: MG_KV
// floats per stream, interleaved within a block: element j of the stream of thread i of block b at
// [(b * MG_KV + j) * MG_STREAM_THREADS + i]. The first MG_KV_SHARED_POSITIONS positions, the most
// read, live in the block's shared memory during the launch (after the weights,
// interleaved the same way), copied in at the start and back at the end. state and checksums as
// mg_persistent's.
extern "C" __global__ void mg_streams(const float* __restrict__ wg, unsigned* state, float* kv, int streams,
                                      long long steps, unsigned long long* checksums) {
    extern __shared__ __align__(16) float smem[];
    const float* w = mg_block_weights(wg, smem);
    const int stream = blockIdx.x * MG_STREAM_THREADS + threadIdx.x;
    if (stream >= streams) return;
    float* my_kv = kv + (long long)blockIdx.x * MG_KV * MG_STREAM_THREADS + threadIdx.x;
    float* skv = smem + MG_WEIGHTS_SHARED + threadIdx.x;
    mg_kv_shared_copy<true>(my_kv, skv);
    int tok = (int)state[3 * stream], pos = (int)state[3 * stream + 1];
    unsigned rng = state[3 * stream + 2];
    unsigned long long sum = 0;
    for (long long n = 0; n < steps; n++) {
        rng = mg_xorshift32(rng);
        const int next = mg_step_thread_call(w, my_kv, skv, tok, pos, mg_uniform24(rng));
        sum = sum * 31ull + (unsigned long long)next;
        mg_advance(next, &tok, &pos);
    }
    mg_kv_shared_copy<false>(my_kv, skv);
    state[3 * stream] = (unsigned)tok;
    state[3 * stream + 1] = (unsigned)pos;
    state[3 * stream + 2] = rng;
    checksums[stream] = sum;
}
