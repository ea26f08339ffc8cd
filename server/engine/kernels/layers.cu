// Per-token kernels of the forward pass: embedding gather, RMSNorm fused with the residual add,
// bias + rotary embedding + KV store, SwiGLU. One block per token row.

// x[r] = embed_tokens[tokens[r]] (f32 residual stream). Grid: rows.
extern "C" __global__ void embed(const u32* __restrict__ tokens, const w16* __restrict__ table,
                                 float* __restrict__ x, int hidden) {
    int r = blockIdx.x;
    const w16* src = table + (u64)tokens[r] * hidden;
    float* dst = x + (u64)r * hidden;
    for (int i = threadIdx.x; i < hidden; i += blockDim.x) dst[i] = to_f32(src[i]);
}

// The residual add and the RMSNorm that follows it, in one pass:
//   x[row] += delta[row] + bias            (when delta is not null)
//   out[b] = w * x[row] / sqrt(mean(x[row]^2) + eps)
// row = rows[b] when rows is not null (the final norm of the rows whose logits are wanted),
// else b. Grid: output rows; the norm is computed in f32 and rounded once, to the weights' type.
extern "C" __global__ void add_rms_norm(float* __restrict__ x, const float* __restrict__ delta,
                                        const float* __restrict__ bias, const float* __restrict__ w,
                                        w16* __restrict__ out, const int* __restrict__ rows,
                                        int hidden, float eps) {
    __shared__ float red[32];
    int b = blockIdx.x;
    int row = rows ? rows[b] : b;
    float* xr = x + (u64)row * hidden;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < hidden; i += blockDim.x) {
        float v = xr[i];
        if (delta) {
            v += delta[(u64)row * hidden + i] + (bias ? bias[i] : 0.0f);
            xr[i] = v;
        }
        ss += v * v;
    }
    float inv = rsqrtf(block_sum(ss, red) / (float)hidden + eps);
    w16* o = out + (u64)b * hidden;
    for (int i = threadIdx.x; i < hidden; i += blockDim.x) o[i] = from_f32(w[i] * (xr[i] * inv));
}

// After the fused q/k/v projection of row r (f32, QKV_DIM wide): adds the bias, rotates q and k
// (transformers' rotate-half layout, cos/sin of position * inv_freq in f32), leaves q in place
// and stores k and v into the row's KV slot. Grid: rows.
extern "C" __global__ void qkv_rope_store(float* __restrict__ qkv, const float* __restrict__ bias,
                                          const float* __restrict__ inv_freq,
                                          const int* __restrict__ row_pos, const int* __restrict__ row_item,
                                          const int* __restrict__ table_off, const int* __restrict__ tables,
                                          w16* __restrict__ kv, int layer, int n_layers) {
    int r = blockIdx.x;
    int pos = row_pos[r];
    int block = tables[table_off[row_item[r]] + pos / BLOCK_SIZE];
    int slot = pos % BLOCK_SIZE;
    float* row = qkv + (u64)r * QKV_DIM;
    for (int idx = threadIdx.x; idx < (N_HEADS + N_KV_HEADS) * HALF_DIM; idx += blockDim.x) {
        int head = idx / HALF_DIM, i = idx % HALF_DIM;
        int c = head * HEAD_DIM + i;
        float a = row[c], b = row[c + HALF_DIM];
        if (bias) {
            a += bias[c];
            b += bias[c + HALF_DIM];
        }
        float s, co;
        sincosf((float)pos * inv_freq[i], &s, &co);
        float ra = a * co - b * s, rb = b * co + a * s;
        if (head < N_HEADS) {
            row[c] = ra;
            row[c + HALF_DIM] = rb;
        } else {
            w16* k = kv + kv_offset(block, layer, n_layers, 0, head - N_HEADS, slot);
            k[i] = from_f32(ra);
            k[i + HALF_DIM] = from_f32(rb);
        }
    }
    for (int idx = threadIdx.x; idx < KV_DIM; idx += blockDim.x) {
        int c = Q_DIM + KV_DIM + idx;
        float v = row[c] + (bias ? bias[c] : 0.0f);
        kv[kv_offset(block, layer, n_layers, 1, idx / HEAD_DIM, slot) + idx % HEAD_DIM] = from_f32(v);
    }
}

// act[r][i] = silu(gate + bias) * (up + bias), from the fused gate/up product [r][2 * inter].
// Grid: (ceil(inter / blockDim), rows).
extern "C" __global__ void swiglu(const float* __restrict__ gu, const float* __restrict__ bias,
                                  w16* __restrict__ act, int inter) {
    int r = blockIdx.y;
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= inter) return;
    const float* row = gu + (u64)r * 2 * inter;
    float g = row[i], u = row[inter + i];
    if (bias) {
        g += bias[i];
        u += bias[inter + i];
    }
    act[(u64)r * inter + i] = from_f32(g / (1.0f + expf(-g)) * u);
}
