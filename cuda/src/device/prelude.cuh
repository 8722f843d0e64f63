#define MG_FULL 0xffffffffu
#define MG_NEG_INF __int_as_float(0xff800000)
// exp(x) = exp2(x log2(e)): the samplers take their exponentials as exp2f. (Attention scores come
// out in base 2 without it: the query weights are uploaded times log2(e) / sqrt(head_dim), see
// `arrange`.)
#define MG_LOG2E 1.4426950408889634f
// Warp code visits element i = lane + 32 k of an N-vector for k < MG_LANE_STEPS(N): unrolled and
// predicated, no loop.
#define MG_LANE_STEPS(N) (((N) + 31) / 32)

__device__ __forceinline__ unsigned mg_xorshift32(unsigned x) {
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    return x;
}

// The canonical draw: the top 24 bits as a float in [0, 1).
__device__ __forceinline__ float mg_uniform24(unsigned x) {
    return (float)(x >> 8) * (1.0f / 16777216.0f);
}

__device__ __forceinline__ float mg_warp_sum(float v) {
    #pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(MG_FULL, v, o);
    return v;
}

__device__ __forceinline__ float mg_warp_max(float v) {
    #pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(MG_FULL, v, o));
    return v;
}

// The canonical draw (softmax(logits / T), then the first i < vocab - 1 whose running sum exceeds
// r, else BOS) without a division: the exponentials exp((l_i - max) / T), with 1/T as a factor,
// summed left to right, and their running sum compared with r times that total instead of each
// normalised. The same draw as the reference's unless r lies within rounding (~1e-7) of a
// boundary of the distribution, as with any other exp. The running sums never decrease, so the
// first i whose sum exceeds r is the count of those that do not.
__device__ float mg_inv_temperature = 2.0f;

__device__ __forceinline__ int mg_sample(const float* logits, float r) {
    const float it = mg_inv_temperature;
    float m = logits[0];
    #pragma unroll
    for (int i = 1; i < MG_VOCAB; i++) m = fmaxf(m, logits[i]);
    float e[MG_VOCAB];
    float total = 0.0f;
    #pragma unroll
    for (int i = 0; i < MG_VOCAB; i++) {
        e[i] = expf((logits[i] - m) * it);
        total += e[i];
    }
    const float rt = r * total;
    float run = 0.0f;
    int chosen = 0;
    #pragma unroll
    for (int i = 0; i < MG_VOCAB - 1; i++) {
        run += e[i];
        chosen += run <= rt ? 1 : 0;
    }
    return chosen;
}

// dst[0..N) = src[0..N), src 16-byte aligned: four at a time.
template <int N>
__device__ __forceinline__ void mg_l_read(const float* src, float* dst) {
    #pragma unroll
    for (int j = 0; j < N / 4; j++) {
        const float4 q = reinterpret_cast<const float4*>(src)[j];
        dst[4 * j] = q.x;
        dst[4 * j + 1] = q.y;
        dst[4 * j + 2] = q.z;
        dst[4 * j + 3] = q.w;
    }
    #pragma unroll
    for (int i = N / 4 * 4; i < N; i++) dst[i] = src[i];
}

// The same draw by a warp, with the same result bit for bit. The lane owning logit i (i = lane +
// 32 k) takes its exponential; the vectors go through `draw` (a scratch of MG_VOCAB floats,
// 16-byte aligned) so that every lane reads them whole, as broadcasts, for the maximum, the total
// and the running sum, which it takes left to right as mg_sample does.
//
// mg_w_share: lane-owned v (element lane + 32 k in v[k]) into `all`, whole, in every lane,
// through `buf` (MG_VOCAB floats, 16-byte aligned). The caller syncs the warp before a second
// share through the same buffer.
__device__ __forceinline__ void mg_w_share(float* buf, const float* v, float* all) {
    #pragma unroll
    for (int k = 0; k < MG_LANE_STEPS(MG_VOCAB); k++) {
        const int i = (threadIdx.x & 31) + 32 * k;
        if (i < MG_VOCAB) buf[i] = v[k];
    }
    __syncwarp();
    mg_l_read<MG_VOCAB>(buf, all);
}

__device__ __forceinline__ int mg_w_sample(const float* logits, float* draw, float r) {
    constexpr int K = MG_LANE_STEPS(MG_VOCAB);
    const int lane = threadIdx.x & 31;
    const float it = mg_inv_temperature;
    float v[K], all[MG_VOCAB];
    #pragma unroll
    for (int k = 0; k < K; k++) {
        const int i = lane + 32 * k;
        v[k] = i < MG_VOCAB ? logits[i] : 0.0f;
    }
    mg_w_share(draw, v, all);
    float mq[4] = {MG_NEG_INF, MG_NEG_INF, MG_NEG_INF, MG_NEG_INF};
    #pragma unroll
    for (int i = 0; i < MG_VOCAB; i++) mq[i % 4] = fmaxf(mq[i % 4], all[i]);
    const float m = fmaxf(fmaxf(mq[0], mq[1]), fmaxf(mq[2], mq[3]));
    #pragma unroll
    for (int k = 0; k < K; k++) v[k] = expf((v[k] - m) * it);
    __syncwarp();  // every lane has read the logits out of draw
    mg_w_share(draw, v, all);
    float total = 0.0f;
    #pragma unroll
    for (int i = 0; i < MG_VOCAB; i++) total += all[i];
    const float rt = r * total;
    float run = 0.0f;
    int chosen = 0;
    #pragma unroll
    for (int i = 0; i < MG_VOCAB - 1; i++) {
        run += all[i];
        chosen += run <= rt ? 1 : 0;
    }
    return chosen;
}

template <int E>
__device__ __forceinline__ void mg_w_embed(const float* __restrict__ w, int tok, int pos, float* out) {
    #pragma unroll
    for (int k = 0; k < MG_LANE_STEPS(E); k++) {
        const int i = (threadIdx.x & 31) + 32 * k;
        if (i < E) out[i] = w[MG_W_WTE + tok * E + i] + w[MG_W_WPE + pos * E + i];
    }
    __syncwarp();
}

// Every lane takes the whole sum of squares itself (the vector read as broadcasts, four partial
// sums) where that is shorter than a warp reduction; longer vectors are reduced across lanes.
template <int N>
__device__ __forceinline__ void mg_w_rmsnorm(const float* x, float* out) {
    static_assert(N == MG_EMBD, "RMSNorm normalises embd values");
    const int lane = threadIdx.x & 31;
    float ss;
    if constexpr (N <= 64 && N % 4 == 0) {
        float a[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        #pragma unroll
        for (int i = 0; i < N; i += 4) {
            const float4 q = *reinterpret_cast<const float4*>(x + i);
            a[0] = fmaf(q.x, q.x, a[0]);
            a[1] = fmaf(q.y, q.y, a[1]);
            a[2] = fmaf(q.z, q.z, a[2]);
            a[3] = fmaf(q.w, q.w, a[3]);
        }
        ss = (a[0] + a[1]) + (a[2] + a[3]);
        __syncwarp();  // out may be x: every lane has read it
    } else {
        ss = 0.0f;
        #pragma unroll
        for (int k = 0; k < MG_LANE_STEPS(N); k++) {
            const int i = lane + 32 * k;
            if (i < N) ss = fmaf(x[i], x[i], ss);
        }
        ss = mg_warp_sum(ss);
    }
    const float scale = MG_RMS_FACTOR(ss);
    #pragma unroll
    for (int k = 0; k < MG_LANE_STEPS(N); k++) {
        const int i = lane + 32 * k;
        if (i < N) out[i] = x[i] * scale;
    }
    __syncwarp();
}

// Lanes per column group of a warp matvec with ROWS rows: a power of two, at least ROWS where
// ROWS <= 32 (32 / MG_ROW_LANES groups of lanes then split the columns).
#define MG_ROW_LANES(ROWS) ((ROWS) <= 1 ? 1 : (ROWS) <= 2 ? 2 : (ROWS) <= 4 ? 4 : (ROWS) <= 8 ? 8 : (ROWS) <= 16 ? 16 : 32)

// The rows of y = W x that this lane owns, W stored transposed ([COLS][ROWS]), x whole (shared
// memory or the lane's registers, read as broadcasts). Lane r owns rows r % RP, r % RP + 32, ...
// (RP = MG_ROW_LANES(ROWS)); when ROWS leaves lanes idle (ROWS <= 16), G = 32 / RP groups of lanes
// split the columns (group g takes c = g, g + G, ..., so that the groups read different banks)
// and shuffles add the groups' sums, so that every group ends with the whole rows: y[k] is row
// r % RP + 32 k (where that row is past the end, a value no caller may use). Each lane sums its
// columns into A interleaved partial sums, to shorten the dependency chain. Without SPLIT every
// lane takes all the columns (the idle lanes repeat rows): for an x in registers, which a lane
// cannot index by its group. With WHOLE (not SPLIT) x is in memory, 16-byte aligned, and every
// lane reads it whole into registers first, four floats at a time: for weights kept in registers,
// where a split costs a shuffle and a load a column while whole rows cost only registers. With
// RB < ROWS, W is ROWS / RB matrices of RB rows one after the other in memory (each transposed),
// read as one.
template <int ROWS, int COLS, bool SPLIT = true, int RB = ROWS, bool WHOLE = false>
__device__ __forceinline__ void mg_w_rows(const float* __restrict__ wt, const float* x, float (&y)[MG_LANE_STEPS(ROWS)]) {
    static_assert(!(SPLIT && WHOLE), "a vector read whole is not split");
    constexpr int RP = MG_ROW_LANES(ROWS);
    constexpr int G = SPLIT ? 32 / RP : 1;
    constexpr int K = MG_LANE_STEPS(ROWS);
    constexpr int CG = (COLS + G - 1) / G;
    constexpr int A = CG >= 16 ? 4 : CG >= 2 ? 2 : 1;
    const int lane = threadIdx.x & 31;
    const int row = lane % RP, g = SPLIT ? lane / RP : 0;
    static_assert(ROWS % RB == 0, "whole matrices of RB rows");
    float acc[K][A];
    float xw[WHOLE ? COLS : 1];
    if constexpr (WHOLE) mg_l_read<COLS>(x, xw);
    const float* wr[K];  // element (r, 0) of the lane's rows; element (r, c) at wr[k][c * RB]
    #pragma unroll
    for (int k = 0; k < K; k++) {
        #pragma unroll
        for (int a = 0; a < A; a++) acc[k][a] = 0.0f;
        // A row past the end reads the last row: the word the lane owning it reads in the same
        // step, a broadcast (no bank conflict, no extra sector).
        const int r = row + 32 * k < ROWS ? row + 32 * k : ROWS - 1;
        if constexpr (RB == ROWS) {
            wr[k] = wt + r;
        } else {
            wr[k] = wt + (r / RB) * (RB * COLS) + r % RB;
        }
    }
    #pragma unroll
    for (int j = 0; j < CG; j++) {
        const int c = j * G + g;
        if (c < COLS) {
            float xc;
            if constexpr (WHOLE) {
                xc = xw[c];
            } else {
                xc = x[c];
            }
            #pragma unroll
            for (int k = 0; k < K; k++) {
                // With MG_HOIST a row past the end sums the last row again and is never stored:
                // the loads depend on no condition, so a compiler may move them (out of a loop,
                // for weights that stay). Without it they are made for rows in range only.
                if (MG_HOIST || row + 32 * k < ROWS) acc[k][j % A] = fmaf(wr[k][c * RB], xc, acc[k][j % A]);
            }
        }
    }
    #pragma unroll
    for (int k = 0; k < K; k++) {
        float v = acc[k][0];
        #pragma unroll
        for (int a = 1; a < A; a++) v += acc[k][a];
        #pragma unroll
        for (int o = 32 / G; o < 32; o <<= 1) v += __shfl_xor_sync(MG_FULL, v, o);
        y[k] = v;
    }
}

// out = W (x * scale) (rectified when RELU), written to shared memory by the lanes owning the rows
// (mg_w_rows, SPLIT or WHOLE when x is in memory; W possibly several matrices of RB rows); the
// caller syncs the warp before any lane reads it.
template <int ROWS, int COLS, bool SPLIT, bool RELU, int RB = ROWS, bool WHOLE = false>
__device__ __forceinline__ void mg_l_matvec(const float* __restrict__ wt, const float* x, float scale, float* out) {
    float v[MG_LANE_STEPS(ROWS)];
    mg_w_rows<ROWS, COLS, SPLIT, RB, WHOLE>(wt, x, v);
    const int lane = threadIdx.x & 31;
    #pragma unroll
    for (int k = 0; k < MG_LANE_STEPS(ROWS); k++) {
        const int r = lane + 32 * k;
        if (lane < MG_ROW_LANES(ROWS) && r < ROWS) out[r] = RELU ? fmaxf(v[k] * scale, 0.0f) : v[k] * scale;
    }
}

// y = W x by a warp (mg_w_rows), stored by the lanes of column group 0, the warp synced.
template <int ROWS, int COLS>
__device__ __forceinline__ void mg_w_matvec(const float* __restrict__ wt, const float* x, float* y) {
    mg_l_matvec<ROWS, COLS, true, false>(wt, x, 1.0f, y);
    __syncwarp();
}

template <int N>
__device__ __forceinline__ void mg_w_add(const float* x, float* into) {
    #pragma unroll
    for (int k = 0; k < MG_LANE_STEPS(N); k++) {
        const int i = (threadIdx.x & 31) + 32 * k;
        if (i < N) into[i] += x[i];
    }
    __syncwarp();
}

template <int N>
__device__ __forceinline__ void mg_w_relu(float* b) {
    #pragma unroll
    for (int k = 0; k < MG_LANE_STEPS(N); k++) {
        const int i = (threadIdx.x & 31) + 32 * k;
        if (i < N) b[i] = fmaxf(b[i], 0.0f);
    }
    __syncwarp();
}

// Causal attention at `pos`: store k and v, then per head softmax(q.K[t] / sqrt(hd)) over t <= pos
// (in base 2: Wq carries log2(e), see arrange) and out = sum_t p_t V[t] (lanes own channels).
// keys/values: [T][E].
// When the heads divide the warp, each head gets 32 / H lanes (positions g, g + 32 / H, ...) and
// every head's maximum and sum are reduced at once; else the heads take turns, lanes owning
// positions.
template <int E, int H, int T>
__device__ __forceinline__ void mg_w_attention(float* keys, float* values, const float* q, const float* k,
                                               const float* v, float* out, float* probs, int pos) {
    constexpr int HD = E / H;
    const int lane = threadIdx.x & 31;
    #pragma unroll
    for (int j = 0; j < MG_LANE_STEPS(E); j++) {
        const int i = lane + 32 * j;
        if (i < E) {
            keys[pos * E + i] = k[i];
            values[pos * E + i] = v[i];
        }
    }
    __syncwarp();
    if constexpr (32 % H == 0) {
        constexpr int G = 32 / H;
        constexpr int K = (T + G - 1) / G;
        const int h = lane / G, g = lane % G;
        float d[K];
        float m = MG_NEG_INF;
        #pragma unroll
        for (int j = 0; j < K; j++) {
            const int t = g + j * G;
            d[j] = 0.0f;
            if (t <= pos) {
                float acc = 0.0f;
                #pragma unroll
                for (int c = 0; c < HD; c++) acc = fmaf(q[h * HD + c], keys[t * E + h * HD + c], acc);
                d[j] = acc;
                m = fmaxf(m, d[j]);
            }
        }
        #pragma unroll
        for (int o = G / 2; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(MG_FULL, m, o));
        float sum = 0.0f;
        #pragma unroll
        for (int j = 0; j < K; j++) {
            if (g + j * G <= pos) {
                d[j] = exp2f(d[j] - m);
                sum += d[j];
            }
        }
        #pragma unroll
        for (int o = G / 2; o > 0; o >>= 1) sum += __shfl_xor_sync(MG_FULL, sum, o);
        #pragma unroll
        for (int j = 0; j < K; j++) {
            const int t = g + j * G;
            if (t <= pos) probs[h * T + t] = d[j] / sum;
        }
    } else {
        #pragma unroll
        for (int h = 0; h < H; h++) {
            float m = MG_NEG_INF;
            for (int t = lane; t <= pos; t += 32) {
                float d = 0.0f;
                #pragma unroll
                for (int j = 0; j < HD; j++) d = fmaf(q[h * HD + j], keys[t * E + h * HD + j], d);
                probs[h * T + t] = d;
                m = fmaxf(m, d);
            }
            m = mg_warp_max(m);
            float sum = 0.0f;
            for (int t = lane; t <= pos; t += 32) {
                const float p = exp2f(probs[h * T + t] - m);
                probs[h * T + t] = p;
                sum += p;
            }
            sum = mg_warp_sum(sum);
            for (int t = lane; t <= pos; t += 32) probs[h * T + t] /= sum;
        }
    }
    __syncwarp();
    #pragma unroll
    for (int j = 0; j < MG_LANE_STEPS(E); j++) {
        const int i = lane + 32 * j;
        if (i < E) {
            const float* p = probs + (i / HD) * T;
            float acc[2] = {0.0f, 0.0f};  // even and odd positions: half the chain
            #pragma unroll
            for (int t = 0; t < T; t++) {
                if (t <= pos) acc[t % 2] = fmaf(p[t], values[t * E + i], acc[t % 2]);
            }
            out[i] = acc[0] + acc[1];
        }
    }
    __syncwarp();
}

// ---- Lane ops (mg_step_lanes): short vectors whole in every lane ----
// The residual stream lives in every lane's registers, and each lane computes the elementwise ops
// (embedding, RMSNorm, residual adds) on it itself; the rows of a matvec are split over the lanes
// (mg_w_rows) and the results go through shared memory, one __syncwarp, to every lane whole. The
// RMSNorm before a matvec is a factor applied to its sums, so that the matvec need not wait for
// the square root.

// Sums and maxima of N values as a balanced tree of pairs (a short chain, the same order in every
// lane).
template <int N>
__device__ __forceinline__ float mg_tree_sum(const float* a) {
    if constexpr (N == 1) {
        return a[0];
    } else {
        return mg_tree_sum<N / 2>(a) + mg_tree_sum<N - N / 2>(a + N / 2);
    }
}

template <int N>
__device__ __forceinline__ float mg_tree_max(const float* a) {
    if constexpr (N == 1) {
        return a[0];
    } else {
        return fmaxf(mg_tree_max<N / 2>(a), mg_tree_max<N - N / 2>(a + N / 2));
    }
}

// x = wte[tok] + wpe[pos], every lane. QUADS: E and both tables' offsets are multiples of 4.
template <int E, bool QUADS>
__device__ __forceinline__ void mg_l_embed(const float* __restrict__ w, int tok, int pos, float* x) {
    float p[E];
    if constexpr (QUADS) {
        mg_l_read<E>(w + MG_W_WTE + tok * E, x);
        mg_l_read<E>(w + MG_W_WPE + pos * E, p);
    } else {
        #pragma unroll
        for (int i = 0; i < E; i++) {
            x[i] = w[MG_W_WTE + tok * E + i];
            p[i] = w[MG_W_WPE + pos * E + i];
        }
    }
    #pragma unroll
    for (int i = 0; i < E; i++) x[i] += p[i];
}

// RMSNorm's factor 1 / sqrt(mean(x^2) + eps) of a vector in the lane's registers.
template <int N>
__device__ __forceinline__ float mg_l_rms_scale(const float* x) {
    static_assert(N == MG_EMBD, "RMSNorm normalises embd values");
    float a[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    #pragma unroll
    for (int i = 0; i < N; i++) a[i % 4] = fmaf(x[i], x[i], a[i % 4]);
    return MG_RMS_FACTOR((a[0] + a[1]) + (a[2] + a[3]));
}

template <int N>
__device__ __forceinline__ void mg_l_scale(const float* x, float scale, float* out) {
    #pragma unroll
    for (int i = 0; i < N; i++) out[i] = x[i] * scale;
}

// into += v, into in the lane's registers, v in shared memory (16-byte aligned).
template <int N>
__device__ __forceinline__ void mg_l_add(const float* v, float* into) {
    float t[N];
    mg_l_read<N>(v, t);
    #pragma unroll
    for (int i = 0; i < N; i++) into[i] += t[i];
}

// q . keys[0..HD), q in registers; with QUADS (HD and the offsets multiples of 4) four at a time.
template <int HD, bool QUADS>
__device__ __forceinline__ float mg_l_dot(const float* q, const float* keys) {
    float kt[HD];
    if constexpr (QUADS) {
        mg_l_read<HD>(keys, kt);
    } else {
        #pragma unroll
        for (int c = 0; c < HD; c++) kt[c] = keys[c];
    }
    float d = 0.0f;
    #pragma unroll
    for (int c = 0; c < HD; c++) d = fmaf(q[c], kt[c], d);
    return d;
}

// The softmax sums of mg_l_attention for the channels a lane owns (see there): l[j], the sum of
// the weights, and acc[j], the weighted value, each merged over the groups of lanes. ONLINE: the
// weights relative to the running maximum, rescaled when it grows (a second exponential a
// position, and the groups' maxima merged first); else relative to this position's own score, one
// exponential a position, which overflows where an older score exceeds it by more than 127 (in
// base 2).
template <int E, int H, bool ONLINE>
__device__ __forceinline__ void mg_l_softmax(const float* keys, const float* values, const float* q, const float* k,
                                             const float* v, int pos, float (&l)[E <= 32 && 32 % E == 0 ? 1 : MG_LANE_STEPS(E)],
                                             float (&acc)[E <= 32 && 32 % E == 0 ? 1 : MG_LANE_STEPS(E)]) {
    constexpr int HD = E / H;
    constexpr int G = E <= 32 && 32 % E == 0 ? 32 / E : 1;
    constexpr int D = G > 1 ? 1 : MG_LANE_STEPS(E);
    constexpr bool QUADS = HD % 4 == 0;
    const int lane = threadIdx.x & 31;
    const int g = G > 1 ? lane / E : 0;
    float m[D];
    #pragma unroll
    for (int j = 0; j < D; j++) {
        const int d = (G > 1 ? lane % E : lane) + 32 * j;
        m[j] = MG_NEG_INF;
        l[j] = 0.0f;
        acc[j] = 0.0f;
        if (d < E) {
            const int h = d / HD;
            float qh[HD];  // the head's query in registers for the whole loop
            #pragma unroll
            for (int c = 0; c < HD; c++) qh[c] = q[h * HD + c];
            const float own = mg_l_dot<HD, QUADS>(qh, k + h * HD);
            if (g == 0) {
                m[j] = own;
                l[j] = 1.0f;
                acc[j] = v[d];
            }
            #pragma unroll 2
            for (int t = g; t < pos; t += G) {
                const float s = mg_l_dot<HD, QUADS>(qh, keys + t * E + h * HD);
                if constexpr (ONLINE) {
                    const float mn = fmaxf(m[j], s);
                    const float c = exp2f(m[j] - mn);  // 0 while nothing is summed, 1 while the maximum holds
                    const float p = exp2f(s - mn);
                    l[j] = fmaf(l[j], c, p);
                    acc[j] = fmaf(acc[j], c, p * values[t * E + d]);
                    m[j] = mn;
                } else {
                    const float p = exp2f(s - own);
                    l[j] += p;
                    acc[j] = fmaf(p, values[t * E + d], acc[j]);
                }
            }
        }
    }
    #pragma unroll
    for (int j = 0; j < D; j++) {
        if constexpr (G > 1) {
            if constexpr (ONLINE) {
                float mt = m[j];
                #pragma unroll
                for (int o = E; o < 32; o <<= 1) mt = fmaxf(mt, __shfl_xor_sync(MG_FULL, mt, o));
                const float c = exp2f(m[j] - mt);  // group 0 always holds this position: mt is finite
                l[j] *= c;
                acc[j] *= c;
            }
            #pragma unroll
            for (int o = E; o < 32; o <<= 1) {
                l[j] += __shfl_xor_sync(MG_FULL, l[j], o);
                acc[j] += __shfl_xor_sync(MG_FULL, acc[j], o);
            }
        }
    }
}

// Causal attention at `pos` for the lane ops: q, k, v whole in shared memory, keys/values the
// layer's cache ([T][E]); this position's key and value are stored in it here. Lane l owns the
// channels d = l % E + 32 j (l + 32 j when E does not divide the warp) of head d / HD; when E
// divides the warp into G > 1 groups, group g = l / E visits the older positions t = g, g + G, ...
// and shuffles merge the groups' sums; group 0 writes out[d] (shared memory). The softmax weights
// are taken in base 2 relative to this position's own score (so that it weighs exactly 1 and no
// maximum is needed: one exponential a position); where a sum of weights reaches 2^64 (older
// scores about 64 above this one) larger ones could overflow, so the warp then takes them again
// relative to the running maximum (mg_l_softmax). The same quantities as the reference's,
// rounded differently; only positions 0..pos are visited.
template <int E, int H>
__device__ __forceinline__ void mg_l_attention(float* keys, float* values, const float* q, const float* k,
                                               const float* v, float* out, int pos) {
    constexpr int G = E <= 32 && 32 % E == 0 ? 32 / E : 1;
    constexpr int D = G > 1 ? 1 : MG_LANE_STEPS(E);
    const int lane = threadIdx.x & 31;
    const int g = G > 1 ? lane / E : 0;
    #pragma unroll
    for (int j = 0; j < D; j++) {
        const int d = (G > 1 ? lane % E : lane) + 32 * j;
        if (g == 0 && d < E) {
            keys[pos * E + d] = k[d];
            values[pos * E + d] = v[d];
        }
    }
    float l[D], acc[D];
    mg_l_softmax<E, H, false>(keys, values, q, k, v, pos, l, acc);
    bool big = false;
    #pragma unroll
    for (int j = 0; j < D; j++) big |= !(l[j] < 0x1p64f);  // NaN included
    if (__any_sync(MG_FULL, big)) mg_l_softmax<E, H, true>(keys, values, q, k, v, pos, l, acc);
    #pragma unroll
    for (int j = 0; j < D; j++) {
        const int d = (G > 1 ? lane % E : lane) + 32 * j;
        if (g == 0 && d < E) out[d] = __fdividef(acc[j], l[j]);  // 1 <= l < 2^126
    }
}

// The canonical draw by the lane ops, from lane-owned logits (logit lane + 32 k in lg[k]); a and b:
// shared memory for MG_VOCAB floats each, 16-byte aligned. The maximum of the logits read whole,
// each lane's exponentials exp((l_i - max) / T) (as exp2f), then every lane reads those whole and takes their
// total, and for each logit it owns the running sum up to it, both as trees of pairs (short
// chains); a ballot finds the first logit below BOS whose running sum exceeds r times the total
// (BOS when none does). The same draw as mg_sample's unless r lies within rounding of a boundary.
template <int V>
__device__ __forceinline__ int mg_l_sample(const float (&lg)[MG_LANE_STEPS(V)], float* a, float* b, float r) {
    constexpr int K = MG_LANE_STEPS(V);
    const int lane = threadIdx.x & 31;
    const float it2 = mg_inv_temperature * MG_LOG2E;  // exp(x / T) = exp2(x log2(e) / T)
    float all[V], e[K];
    mg_w_share(a, lg, all);
    const float m = mg_tree_max<V>(all);
    #pragma unroll
    for (int k = 0; k < K; k++) e[k] = exp2f((lg[k] - m) * it2);
    mg_w_share(b, e, all);
    const float rt = r * mg_tree_sum<V>(all);
    #pragma unroll
    for (int k = 0; k < K; k++) {
        const int i = lane + 32 * k;
        float upto[V];
        #pragma unroll
        for (int j = 0; j < V; j++) upto[j] = j <= i ? all[j] : 0.0f;
        const unsigned over = __ballot_sync(MG_FULL, i < V - 1 && mg_tree_sum<V>(upto) > rt);
        if (over != 0) return 32 * k + __ffs(over) - 1;
    }
    return V - 1;
}

// y = W x for one thread, W stored transposed ([COLS][ROWS]): column by column, so that with QUADS
// (ROWS and the offset multiples of 4) four rows come in one 16-byte load. Each y[r] still sums
// c = 0..COLS-1 in order, as the reference does.
template <int ROWS, int COLS, bool QUADS>
__device__ __forceinline__ void mg_t_matvec(const float* __restrict__ wt, const float* x, float* y) {
    #pragma unroll
    for (int r = 0; r < ROWS; r++) y[r] = 0.0f;
    #pragma unroll
    for (int c = 0; c < COLS; c++) {
        if constexpr (QUADS) {
            #pragma unroll
            for (int r = 0; r < ROWS; r += 4) {
                const float4 q = *reinterpret_cast<const float4*>(wt + c * ROWS + r);
                y[r] = fmaf(q.x, x[c], y[r]);
                y[r + 1] = fmaf(q.y, x[c], y[r + 1]);
                y[r + 2] = fmaf(q.z, x[c], y[r + 2]);
                y[r + 3] = fmaf(q.w, x[c], y[r + 3]);
            }
        } else {
            #pragma unroll
            for (int r = 0; r < ROWS; r++) y[r] = fmaf(wt[c * ROWS + r], x[c], y[r]);
        }
    }
}

// `up · x → h; relu(h); down · h → y` for one thread, four hidden units at a time, so that the
// hidden vector never lives in registers (it would not fit beside the rest at larger shapes).
// up: [COLS][HIDDEN], down: [HIDDEN][ROWS] (transposed). h_j sums c in order and y[r] sums j in
// order, as the reference does.
template <int ROWS, int COLS, int HIDDEN, bool QUADS>
__device__ __forceinline__ void mg_t_mlp(const float* __restrict__ up, const float* __restrict__ down,
                                         const float* x, float* y) {
    #pragma unroll
    for (int r = 0; r < ROWS; r++) y[r] = 0.0f;
    #pragma unroll 1
    for (int j = 0; j < HIDDEN; j += 4) {
        float h[4];
        #pragma unroll
        for (int k = 0; k < 4; k++) h[k] = 0.0f;
        #pragma unroll
        for (int c = 0; c < COLS; c++) {
            if constexpr (QUADS) {
                const float4 q = *reinterpret_cast<const float4*>(up + c * HIDDEN + j);
                h[0] = fmaf(q.x, x[c], h[0]);
                h[1] = fmaf(q.y, x[c], h[1]);
                h[2] = fmaf(q.z, x[c], h[2]);
                h[3] = fmaf(q.w, x[c], h[3]);
            } else {
                #pragma unroll
                for (int k = 0; k < 4; k++) {
                    if (j + k < HIDDEN) h[k] = fmaf(up[c * HIDDEN + j + k], x[c], h[k]);
                }
            }
        }
        #pragma unroll
        for (int k = 0; k < 4; k++) {
            if (QUADS || j + k < HIDDEN) {
                const float hk = fmaxf(h[k], 0.0f);
                const float* d = down + (j + k) * ROWS;
                if constexpr (QUADS) {
                    #pragma unroll
                    for (int r = 0; r < ROWS; r += 4) {
                        const float4 q = *reinterpret_cast<const float4*>(d + r);
                        y[r] = fmaf(q.x, hk, y[r]);
                        y[r + 1] = fmaf(q.y, hk, y[r + 1]);
                        y[r + 2] = fmaf(q.z, hk, y[r + 2]);
                        y[r + 3] = fmaf(q.w, hk, y[r + 3]);
                    }
                } else {
                    #pragma unroll
                    for (int r = 0; r < ROWS; r++) y[r] = fmaf(d[r], hk, y[r]);
                }
            }
        }
    }
}

// Stores one thread's key or value vector as position `pos` of a cache ([T][E], stride S), in
// shared memory (`shared`, [P][E]) when pos < P.
template <int E, int S, int P>
__device__ __forceinline__ void mg_t_cache_store(float* cache, float* shared, const float* x, int pos) {
    if (P > 0 && pos < P) {
        #pragma unroll
        for (int i = 0; i < E; i++) shared[(pos * E + i) * S] = x[i];
    } else {
        #pragma unroll
        for (int i = 0; i < E; i++) cache[(pos * E + i) * S] = x[i];
    }
}

// One position of mg_t_attention, from shared or global memory: keys/values point at element 0 of
// the position (stride S); the scores come out in base 2 (Wq carries log2(e), see arrange).
template <int E, int H, int S>
__device__ __forceinline__ void mg_t_attend(const float* keys, const float* values, const float* q, float* m, float* l,
                                            float* out) {
    constexpr int HD = E / H;
    float kt[E], vt[E];
    #pragma unroll
    for (int i = 0; i < E; i++) {
        kt[i] = keys[i * S];
        vt[i] = values[i * S];
    }
    #pragma unroll
    for (int h = 0; h < H; h++) {
        float d = 0.0f;
        #pragma unroll
        for (int j = 0; j < HD; j++) d = fmaf(q[h * HD + j], kt[h * HD + j], d);
        const float mn = fmaxf(m[h], d);
        const float c = exp2f(m[h] - mn);  // 0 at t = 0, 1 while the maximum holds
        const float p = exp2f(d - mn);
        l[h] = fmaf(l[h], c, p);
        #pragma unroll
        for (int j = 0; j < HD; j++) out[h * HD + j] = fmaf(out[h * HD + j], c, p * vt[h * HD + j]);
        m[h] = mn;
    }
}

// The same attention for one thread, with this position's key and value already stored
// (mg_t_cache_store); keys/values element (t, i) at [(t * E + i) * S] for positions t >= P,
// skeys/svalues (shared memory) at the same offsets for t < P. One pass over the positions (the
// shared ones unrolled, then a loop two at a time rather than code unrolled over the whole block)
// with every head's softmax taken online, in base 2: a running maximum, the sum and the weighted
// values rescaled whenever the maximum grows, divided by the sum at the end. The same quantities as
// the reference's, rounded differently; few registers (no scores kept), and only positions 0..pos
// are visited.
template <int E, int H, int S, int P>
__device__ __forceinline__ void mg_t_attention(const float* keys, const float* values, const float* skeys,
                                               const float* svalues, const float* q, float* out, int pos) {
    constexpr int HD = E / H;
    float m[H], l[H];
    #pragma unroll
    for (int h = 0; h < H; h++) {
        m[h] = MG_NEG_INF;
        l[h] = 0.0f;
    }
    #pragma unroll
    for (int i = 0; i < E; i++) out[i] = 0.0f;
    #pragma unroll
    for (int t = 0; t < P; t++) {
        if (t <= pos) mg_t_attend<E, H, S>(skeys + t * E * S, svalues + t * E * S, q, m, l, out);
    }
    #pragma unroll 2
    for (int t = P; t <= pos; t++) mg_t_attend<E, H, S>(keys + t * E * S, values + t * E * S, q, m, l, out);
    #pragma unroll
    for (int h = 0; h < H; h++) {
        #pragma unroll
        for (int j = 0; j < HD; j++) out[h * HD + j] = out[h * HD + j] / l[h];
    }
}

