// Shared definitions of ghostline's CUDA kernels. Compiled at run time with NVRTC, with the
// model's shape as macros (see `src/cuda/kernels.rs`):
//   HEAD_DIM, N_HEADS, N_KV_HEADS, BLOCK_SIZE (tokens per KV block), USE_F16 (0: bf16, 1: f16).
// No CUDA headers are included, so the kernels build with nothing but libnvrtc.

typedef unsigned short w16;  // one bf16 (or f16 when USE_F16) value, as raw bits
typedef unsigned int u32;
typedef unsigned long long u64;

#define GROUP (N_HEADS / N_KV_HEADS)
#define Q_DIM (N_HEADS * HEAD_DIM)
#define KV_DIM (N_KV_HEADS * HEAD_DIM)
#define QKV_DIM (Q_DIM + 2 * KV_DIM)
#define HALF_DIM (HEAD_DIM / 2)
// Head-dimension elements each lane of a warp holds (dims lane, lane + 32, ...).
#define HD_LANE ((HEAD_DIM + 31) / 32)
#define NEG_INF (__uint_as_float(0xff800000u))
#define FULL_MASK 0xffffffffu

__device__ __forceinline__ float to_f32(w16 x) {
#if USE_F16
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(x));
    return f;
#else
    return __uint_as_float(((u32)x) << 16);
#endif
}

__device__ __forceinline__ w16 from_f32(float f) {
#if USE_F16
    w16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
#else
    u32 u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (w16)((u >> 16) | 0x40u);  // NaN stays NaN
    u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even
    return (w16)(u >> 16);
#endif
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, o));
    return v;
}

// Sum over the block; every thread gets the result. `red` holds at least 32 floats.
__device__ float block_sum(float v, float* red) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = (blockDim.x + 31) >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) red[warp] = v;
    __syncthreads();
    float t = lane < nwarps ? red[lane] : 0.0f;
    return warp_sum(t);
}

// Element offset of (block, layer, k|v, kv head, slot) in the KV pool:
// blocks are [layer][k|v][kv_head][slot][head_dim], as in the CPU backend's `KvShape`.
__device__ __forceinline__ u64 kv_offset(int block, int layer, int n_layers, int kv, int head, int slot) {
    u64 block_elems = (u64)n_layers * 2 * N_KV_HEADS * BLOCK_SIZE * HEAD_DIM;
    return (u64)block * block_elems + ((u64)((layer * 2 + kv) * N_KV_HEADS + head) * BLOCK_SIZE + slot) * HEAD_DIM;
}
