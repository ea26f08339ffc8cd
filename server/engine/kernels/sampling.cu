// Token choice on the device, so that only token ids come back to the host. One block of
// SAMPLE_THREADS threads per pick. The semantics are the host sampler's (`sampling.rs`):
// greedy is the first maximum, NaNs never win; otherwise logits / temperature, sorted
// descending (ties by id), cut to top_k, softmax in f64, cut to the top_p nucleus, renormalised,
// and the token where the cumulative probability first exceeds the uniform draw `u` (drawn on
// the host from the request's seeded generator).
//
// Sorting the whole vocabulary is not needed: the pick always lies in the set of the largest
// values that holds top_k tokens (top_k > 0), or the top_p mass (top_p < 1), or more than u of
// the mass. A bisection on the threshold finds such a set of at most SAMPLE_THREADS tokens,
// which is sorted in shared memory. When none exists (a flat distribution, top_k above
// SAMPLE_THREADS) the pick is -1 and the host samples that row from its logits instead.

#define SAMPLE_THREADS 1024

struct Pair {
    float v;
    int i;
};

// a comes first in the descending order (larger value, then smaller id).
__device__ __forceinline__ bool before(float av, int ai, float bv, int bi) {
    return av > bv || (av == bv && ai < bi);
}

__device__ Pair block_argmax(Pair p, Pair* red) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        float ov = __shfl_xor_sync(FULL_MASK, p.v, o);
        int oi = __shfl_xor_sync(FULL_MASK, p.i, o);
        if (before(ov, oi, p.v, p.i)) {
            p.v = ov;
            p.i = oi;
        }
    }
    __syncthreads();
    if (lane == 0) red[warp] = p;
    __syncthreads();
    Pair best = red[0];
    for (int w = 1; w < (int)(blockDim.x >> 5); w++)
        if (before(red[w].v, red[w].i, best.v, best.i)) best = red[w];
    return best;
}

__device__ double block_sum_f64(double v, double* red) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    __syncthreads();
    if (lane == 0) red[warp] = v;
    __syncthreads();
    double t = 0.0;
    for (int w = 0; w < (int)(blockDim.x >> 5); w++) t += red[w];
    return t;
}

__device__ int block_count(int c, int* red) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) c += __shfl_xor_sync(FULL_MASK, c, o);
    __syncthreads();
    if (lane == 0) red[warp] = c;
    __syncthreads();
    int t = 0;
    for (int w = 0; w < (int)(blockDim.x >> 5); w++) t += red[w];
    return t;
}

// Picks one token per entry. Grid: picks; block: SAMPLE_THREADS.
extern "C" __global__ void __launch_bounds__(SAMPLE_THREADS) sample_tokens(const float* __restrict__ logits, int vocab,
                                         const int* __restrict__ pick_row, const float* __restrict__ pick_temp,
                                         const int* __restrict__ pick_top_k, const float* __restrict__ pick_top_p,
                                         const double* __restrict__ pick_u, int* __restrict__ out) {
    __shared__ Pair red_p[32];
    __shared__ double red_d[32];
    __shared__ int red_i[32];
    __shared__ float s_val[SAMPLE_THREADS];
    __shared__ int s_idx[SAMPLE_THREADS];
    __shared__ double s_e[SAMPLE_THREADS];
    __shared__ int s_fill;
    int pk = blockIdx.x, tid = threadIdx.x;
    const float* row = logits + (u64)pick_row[pk] * vocab;
    float temp = pick_temp[pk];

    // Greedy, and the maximum for everything else.
    Pair best = {NEG_INF, vocab};
    float lo = __uint_as_float(0x7f800000u);
    int valid = 0;
    for (int i = tid; i < vocab; i += blockDim.x) {
        float v = row[i];
        if (v > best.v) {
            best.v = v;
            best.i = i;
        }
        if (v == v) {
            lo = fminf(lo, v);
            valid++;
        }
    }
    best = block_argmax(best, red_p);
    if (!(temp > 0.0f)) {
        if (tid == 0) out[pk] = best.i < vocab ? best.i : 0;
        return;
    }
    valid = block_count(valid, red_i);
    if (valid == 0 || best.i >= vocab) {  // only NaNs (or -inf): as the host sampler
        if (tid == 0) out[pk] = best.i < vocab ? best.i : 0;
        return;
    }
    // The smallest value (for the bisection's lower end): reuse the argmax reduction on -v.
    Pair low = block_argmax(Pair{-lo, 0}, red_p);
    float mx = best.v / temp;
    float lo_t = -low.v / temp;
    int top_k = pick_top_k[pk];
    float top_p = pick_top_p[pk];
    double u = pick_u[pk];

    // Z = sum of exp(v / T - max) over every valid token (the host's normaliser without top_k).
    double z = 0.0;
    for (int i = tid; i < vocab; i += blockDim.x) {
        float v = row[i];
        if (v == v) z += exp((double)(v / temp - mx));
    }
    z = block_sum_f64(z, red_d);
    int need_count = top_k > 0 ? min(top_k, valid) : 0;
    double need_mass = 0.0;
    if (top_k == 0) {
        double target = top_p < 1.0f ? (double)top_p : u;
        need_mass = fmin(fmax(target * z * (1.0 + 1e-6), 1e-300), z);
    }

    // Bisection on the threshold t: cond(t) = the tokens with v / T >= t hold what is needed.
    // cond(lo) holds (every token); cond(hi) does not. Stop at a set of at most SAMPLE_THREADS.
    float t_lo = lo_t, t_hi = mx + fmaxf(1.0f, fabsf(mx));
    int count_lo = valid;
    for (int iter = 0; iter < 64 && count_lo > SAMPLE_THREADS; iter++) {
        float mid = t_lo + 0.5f * (t_hi - t_lo);
        if (!(mid > t_lo && mid < t_hi)) break;
        int c = 0;
        double mass = 0.0;
        for (int i = tid; i < vocab; i += blockDim.x) {
            float s = row[i] / temp;
            if (s >= mid) {
                c++;
                if (top_k == 0) mass += exp((double)(s - mx));
            }
        }
        c = block_count(c, red_i);
        bool ok;
        if (top_k > 0) {
            ok = c >= need_count;
        } else {
            mass = block_sum_f64(mass, red_d);
            ok = mass >= need_mass;
        }
        if (ok) {
            t_lo = mid;
            count_lo = c;
        } else {
            t_hi = mid;
        }
    }
    if (count_lo > SAMPLE_THREADS) {
        if (tid == 0) out[pk] = -1;  // the host samples this row
        return;
    }

    // Gather the candidate set, pad, and sort it descending (bitonic, SAMPLE_THREADS wide).
    if (tid == 0) s_fill = 0;
    s_val[tid] = NEG_INF;
    s_idx[tid] = 0x7fffffff;
    __syncthreads();
    for (int i = tid; i < vocab; i += blockDim.x) {
        float s = row[i] / temp;
        if (s >= t_lo) {
            int at = atomicAdd(&s_fill, 1);
            s_val[at] = s;
            s_idx[at] = i;
        }
    }
    __syncthreads();
    int n = s_fill;
    for (int size = 2; size <= SAMPLE_THREADS; size <<= 1) {
        for (int stride = size >> 1; stride > 0; stride >>= 1) {
            int partner = tid ^ stride;
            if (partner > tid) {
                bool desc = (tid & size) == 0;
                float av = s_val[tid], bv = s_val[partner];
                int ai = s_idx[tid], bi = s_idx[partner];
                bool swap = desc ? before(bv, bi, av, ai) : before(av, ai, bv, bi);
                if (swap) {
                    s_val[tid] = bv;
                    s_idx[tid] = bi;
                    s_val[partner] = av;
                    s_idx[partner] = ai;
                }
            }
            __syncthreads();
        }
    }
    int kept = (top_k > 0 && top_k < n) ? top_k : n;
    s_e[tid] = tid < kept ? exp((double)(s_val[tid] - s_val[0])) : 0.0;
    double sum = top_k > 0 ? block_sum_f64(s_e[tid], red_d) : z;
    __syncthreads();
    if (tid != 0) return;
    int keep = kept;
    double renorm = 1.0;
    if (top_p < 1.0f) {
        double acc = 0.0;
        for (int i = 0; i < kept; i++) {
            acc += s_e[i] / sum;
            if (acc >= (double)top_p) {
                keep = i + 1;
                break;
            }
        }
        renorm = 0.0;
        for (int i = 0; i < keep; i++) renorm += s_e[i] / sum;
    }
    double acc = 0.0;
    int pick = s_idx[keep - 1];
    for (int i = 0; i < keep; i++) {
        acc += s_e[i] / sum / renorm;
        if (u < acc) {
            pick = s_idx[i];
            break;
        }
    }
    out[pk] = pick;
}
