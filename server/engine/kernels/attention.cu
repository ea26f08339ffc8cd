// Paged attention over the KV blocks. q comes from the rotated q/k/v rows (f32, QKV_DIM wide);
// keys and values from the pool; the output is one row of Q_DIM per token, in the weights' type,
// ready for o_proj. Grouped-query attention: a block serves all GROUP query heads of one KV
// head, so each key and value is read once per group.

#define DEC_WARPS 4
// Keys per decode partition (split-K over the context, "flash decoding").
#define DEC_PART 64

// Decode: one query token per row. Grid: (decode rows, N_KV_HEADS, partitions); DEC_WARPS warps.
// Each warp runs an online softmax over its keys of the partition; the block merges its warps
// and writes the partition's (max, sum, unnormalised output) per query head to `part_*`, which
// `attention_merge` combines.
extern "C" __global__ void attention_decode(const float* __restrict__ qkv, const w16* __restrict__ kv,
                                            const int* __restrict__ dec_rows, const int* __restrict__ row_pos,
                                            const int* __restrict__ row_item, const int* __restrict__ table_off,
                                            const int* __restrict__ tables, int layer, int n_layers, float scale,
                                            int n_parts, float* __restrict__ part_ml, float* __restrict__ part_acc) {
    __shared__ float s_m[DEC_WARPS][GROUP];
    __shared__ float s_l[DEC_WARPS][GROUP];
    __shared__ float s_acc[DEC_WARPS][GROUP][HEAD_DIM];
    int e = blockIdx.x, g = blockIdx.y, part = blockIdx.z;
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int r = dec_rows[e];
    int pos = row_pos[r];
    const int* table = tables + table_off[row_item[r]];
    int k0 = part * DEC_PART;
    int k1 = min(k0 + DEC_PART, pos + 1);

    float q[GROUP][HD_LANE], acc[GROUP][HD_LANE], m[GROUP], l[GROUP];
    const float* qrow = qkv + (u64)r * QKV_DIM + g * GROUP * HEAD_DIM;
#pragma unroll
    for (int h = 0; h < GROUP; h++) {
        m[h] = NEG_INF;
        l[h] = 0.0f;
#pragma unroll
        for (int i = 0; i < HD_LANE; i++) {
            int d = lane + 32 * i;
            q[h][i] = d < HEAD_DIM ? qrow[h * HEAD_DIM + d] * scale : 0.0f;
            acc[h][i] = 0.0f;
        }
    }
    for (int j = k0 + warp; j < k1; j += DEC_WARPS) {
        int block = table[j / BLOCK_SIZE], slot = j % BLOCK_SIZE;
        const w16* kp = kv + kv_offset(block, layer, n_layers, 0, g, slot);
        const w16* vp = kv + kv_offset(block, layer, n_layers, 1, g, slot);
        float k[HD_LANE], v[HD_LANE];
#pragma unroll
        for (int i = 0; i < HD_LANE; i++) {
            int d = lane + 32 * i;
            k[i] = d < HEAD_DIM ? to_f32(kp[d]) : 0.0f;
            v[i] = d < HEAD_DIM ? to_f32(vp[d]) : 0.0f;
        }
#pragma unroll
        for (int h = 0; h < GROUP; h++) {
            float s = 0.0f;
#pragma unroll
            for (int i = 0; i < HD_LANE; i++) s += q[h][i] * k[i];
            s = warp_sum(s);
            float mn = fmaxf(m[h], s);
            float corr = __expf(m[h] - mn), p = __expf(s - mn);
            l[h] = l[h] * corr + p;
#pragma unroll
            for (int i = 0; i < HD_LANE; i++) acc[h][i] = acc[h][i] * corr + p * v[i];
            m[h] = mn;
        }
    }
#pragma unroll
    for (int h = 0; h < GROUP; h++) {
        if (lane == 0) {
            s_m[warp][h] = m[h];
            s_l[warp][h] = l[h];
        }
#pragma unroll
        for (int i = 0; i < HD_LANE; i++) {
            int d = lane + 32 * i;
            if (d < HEAD_DIM) s_acc[warp][h][d] = acc[h][i];
        }
    }
    __syncthreads();
    // Merge the warps: thread t handles (head, dim) pairs t, t + blockDim, ...
    for (int t = threadIdx.x; t < GROUP * HEAD_DIM; t += blockDim.x) {
        int h = t / HEAD_DIM, d = t % HEAD_DIM;
        float mm = NEG_INF;
        for (int w = 0; w < DEC_WARPS; w++) mm = fmaxf(mm, s_m[w][h]);
        float ll = 0.0f, a = 0.0f;
        if (mm != NEG_INF) {
            for (int w = 0; w < DEC_WARPS; w++) {
                float c = s_m[w][h] == NEG_INF ? 0.0f : __expf(s_m[w][h] - mm);
                ll += s_l[w][h] * c;
                a += s_acc[w][h][d] * c;
            }
        }
        u64 slot = ((u64)e * N_HEADS + g * GROUP + h) * n_parts + part;
        part_acc[slot * HEAD_DIM + d] = a;
        if (d == 0) {
            part_ml[slot * 2] = mm;
            part_ml[slot * 2 + 1] = ll;
        }
    }
}

// Combines the partitions of `attention_decode`. Grid: (decode rows, N_HEADS); threads over dims.
extern "C" __global__ void attention_merge(const int* __restrict__ dec_rows, const int* __restrict__ row_pos,
                                           int n_parts, const float* __restrict__ part_ml,
                                           const float* __restrict__ part_acc, w16* __restrict__ out) {
    int e = blockIdx.x, h = blockIdx.y;
    int r = dec_rows[e];
    int used = min(n_parts, row_pos[r] / DEC_PART + 1);
    u64 base = ((u64)e * N_HEADS + h) * n_parts;
    float mm = NEG_INF;
    for (int p = 0; p < used; p++) mm = fmaxf(mm, part_ml[(base + p) * 2]);
    for (int d = threadIdx.x; d < HEAD_DIM; d += blockDim.x) {
        float ll = 0.0f, a = 0.0f;
        for (int p = 0; p < used; p++) {
            float pm = part_ml[(base + p) * 2];
            float c = pm == NEG_INF ? 0.0f : __expf(pm - mm);
            ll += part_ml[(base + p) * 2 + 1] * c;
            a += part_acc[(base + p) * HEAD_DIM + d] * c;
        }
        out[(u64)r * Q_DIM + h * HEAD_DIM + d] = from_f32(ll > 0.0f ? a / ll : 0.0f);
    }
}

#define PF_WARPS 4
#define PF_ROWS 4            // (query, head) rows per warp
#define PF_TILE_ROWS (PF_WARPS * PF_ROWS)
#define PF_KEYS 32           // keys per shared-memory tile: one per lane
#define PF_KSTRIDE (HEAD_DIM + 1)

// Prefill: causal attention for many new tokens of one sequence. A tile is PF_TILE_ROWS
// consecutive (query token, head of the group) pairs of one item, flattened as
// j * GROUP + h; the block walks the keys 0..last position of the tile in shared-memory tiles of
// PF_KEYS, lane = key for the scores and lane = dimension for the weighted sum of values.
// Grid: (tiles, N_KV_HEADS). Dynamic shared memory: see `prefill_smem_bytes` on the host.
extern "C" __global__ void attention_prefill(const float* __restrict__ qkv, const w16* __restrict__ kv,
                                             const int* __restrict__ tile_item, const int* __restrict__ tile_f0,
                                             const int* __restrict__ item_row0, const int* __restrict__ item_n,
                                             const int* __restrict__ row_pos, const int* __restrict__ table_off,
                                             const int* __restrict__ tables, int layer, int n_layers, float scale,
                                             w16* __restrict__ out) {
    extern __shared__ float smem[];
    float* s_k = smem;                              // [PF_KEYS][PF_KSTRIDE]
    float* s_v = s_k + PF_KEYS * PF_KSTRIDE;         // [PF_KEYS][HEAD_DIM]
    float* s_q = s_v + PF_KEYS * HEAD_DIM;           // [PF_TILE_ROWS][HEAD_DIM], pre-scaled
    int tile = blockIdx.x, g = blockIdx.y;
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int it = tile_item[tile], f0 = tile_f0[tile];
    int r0 = item_row0[it], n = item_n[it];
    int p0 = row_pos[r0];
    const int* table = tables + table_off[it];
    int f_end = min(f0 + PF_TILE_ROWS, n * GROUP);
    int last_pos = p0 + (f_end - 1) / GROUP;

    for (int t = threadIdx.x; t < PF_TILE_ROWS * HEAD_DIM; t += blockDim.x) {
        int fr = t / HEAD_DIM, d = t % HEAD_DIM;
        int f = f0 + fr;
        float v = 0.0f;
        if (f < f_end) {
            int j = f / GROUP, h = g * GROUP + f % GROUP;
            v = qkv[(u64)(r0 + j) * QKV_DIM + h * HEAD_DIM + d] * scale;
        }
        s_q[t] = v;
    }

    int my_pos[PF_ROWS];
    float m[PF_ROWS], l[PF_ROWS], acc[PF_ROWS][HD_LANE];
#pragma unroll
    for (int i = 0; i < PF_ROWS; i++) {
        int f = f0 + warp * PF_ROWS + i;
        my_pos[i] = f < f_end ? p0 + f / GROUP : -1;
        m[i] = NEG_INF;
        l[i] = 0.0f;
#pragma unroll
        for (int c = 0; c < HD_LANE; c++) acc[i][c] = 0.0f;
    }

    for (int kt = 0; kt <= last_pos; kt += PF_KEYS) {
        __syncthreads();  // the previous tile is consumed (and s_q written, on the first pass)
        for (int t = threadIdx.x; t < PF_KEYS * HEAD_DIM; t += blockDim.x) {
            int jj = t / HEAD_DIM, d = t % HEAD_DIM;
            int key = kt + jj;
            float kvk = 0.0f, kvv = 0.0f;
            if (key <= last_pos) {
                int block = table[key / BLOCK_SIZE], slot = key % BLOCK_SIZE;
                kvk = to_f32(kv[kv_offset(block, layer, n_layers, 0, g, slot) + d]);
                kvv = to_f32(kv[kv_offset(block, layer, n_layers, 1, g, slot) + d]);
            }
            s_k[jj * PF_KSTRIDE + d] = kvk;
            s_v[jj * HEAD_DIM + d] = kvv;
        }
        __syncthreads();
        float s[PF_ROWS];
#pragma unroll
        for (int i = 0; i < PF_ROWS; i++) s[i] = 0.0f;
        const float* qw = s_q + warp * PF_ROWS * HEAD_DIM;
        for (int d = 0; d < HEAD_DIM; d++) {
            float k = s_k[lane * PF_KSTRIDE + d];
#pragma unroll
            for (int i = 0; i < PF_ROWS; i++) s[i] += qw[i * HEAD_DIM + d] * k;
        }
        int key = kt + lane;
#pragma unroll
        for (int i = 0; i < PF_ROWS; i++) {
            if (my_pos[i] < 0 || kt > my_pos[i]) continue;  // warp-uniform
            float si = key <= my_pos[i] ? s[i] : NEG_INF;
            float mn = fmaxf(m[i], warp_max(si));
            float corr = __expf(m[i] - mn);
            float p = si == NEG_INF ? 0.0f : __expf(si - mn);
            l[i] = l[i] * corr + warp_sum(p);
#pragma unroll
            for (int c = 0; c < HD_LANE; c++) acc[i][c] *= corr;
            for (int jj = 0; jj < PF_KEYS; jj++) {
                float pj = __shfl_sync(FULL_MASK, p, jj);
#pragma unroll
                for (int c = 0; c < HD_LANE; c++) {
                    int d = lane + 32 * c;
                    if (d < HEAD_DIM) acc[i][c] += pj * s_v[jj * HEAD_DIM + d];
                }
            }
            m[i] = mn;
        }
    }
#pragma unroll
    for (int i = 0; i < PF_ROWS; i++) {
        int f = f0 + warp * PF_ROWS + i;
        if (f >= f_end) continue;
        int j = f / GROUP, h = g * GROUP + f % GROUP;
        w16* o = out + (u64)(r0 + j) * Q_DIM + h * HEAD_DIM;
        float inv = l[i] > 0.0f ? 1.0f / l[i] : 0.0f;
#pragma unroll
        for (int c = 0; c < HD_LANE; c++) {
            int d = lane + 32 * c;
            if (d < HEAD_DIM) o[d] = from_f32(acc[i][c] * inv);
        }
    }
}
