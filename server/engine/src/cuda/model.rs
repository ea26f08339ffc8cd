//! The decoder-only transformer on the GPU: the same forward as `crate::model::Model`, step by
//! step (embedding, per layer `input_layernorm → qkv → rope → attention → o_proj → residual →
//! post_attention_layernorm → SwiGLU MLP → residual`, final norm, `lm_head`), with every row of
//! a step (decode tokens and prefill chunks of all sequences) in each cuBLAS product.
//!
//! Numerics: projection weights and embeddings in bf16 (f16 for f16 checkpoints), products
//! accumulated in f32 and written in f32; the residual stream, norms, rope and softmax in f32;
//! what feeds a product (normed rows, attention output, SwiGLU output) rounded once to the
//! weights' type; KV cache in the weights' type.

use std::ffi::c_void;
use std::path::Path;
use std::sync::{Arc, Mutex};

use cudarc::cublas::result as blas_result;
use cudarc::cublas::sys::{cublasComputeType_t, cublasGemmAlgo_t, cublasOperation_t, cudaDataType};
use cudarc::driver::{CudaSlice, DeviceRepr, LaunchConfig, PushKernelArg};
use half::{bf16, f16};

use super::kernels::{KernelShape, Kernels, DEC_PART, DEC_WARPS, PF_TILE_ROWS, PF_WARPS, SAMPLE_THREADS};
use super::{addr, blas_err, dev_err, DeviceKv, Gpu};
use crate::config::ModelConfig;
use crate::error::{EngineError, Result};
use crate::kv::{KvPool, KvShape};
use crate::model::{BatchItem, Logits};
use crate::sampling::SamplingParams;
use crate::weights::{DType, WeightFiles};

/// New tokens of one sequence at or above which attention runs as tiled prefill (below: the
/// split-K decode kernel, one query row at a time), as in the CPU backend.
const PREFILL_MIN: usize = 8;

/// A 16-bit weight matrix `[out, in]` on the device.
struct DevLinear {
    w: CudaSlice<u16>,
    b: Option<CudaSlice<f32>>,
}

struct DevLayer {
    input_layernorm: CudaSlice<f32>,
    qkv_proj: DevLinear,
    o_proj: DevLinear,
    post_attention_layernorm: CudaSlice<f32>,
    gate_up_proj: DevLinear,
    down_proj: DevLinear,
}

/// One token to choose on the device from the last logits row of batch item `item`.
pub(crate) struct DevicePick<'a> {
    pub item: usize,
    pub params: &'a SamplingParams,
    /// The uniform draw in [0, 1) for temperature sampling (unused when greedy).
    pub uniform: f64,
}

/// What a step brings back to the host.
pub(crate) enum StepOutput {
    /// Per item, the logits it asked for.
    Logits(Vec<Vec<f32>>),
    /// Per pick, the token id, or `None` where the host must sample from `row` (see
    /// `sample_tokens`): then the row's logits come along.
    Tokens(Vec<Result<u32, Vec<f32>>>),
}

/// A device buffer that grows to the largest step seen.
struct Buf<T: DeviceRepr> {
    s: Option<CudaSlice<T>>,
    cap: usize,
}

impl<T: DeviceRepr> Buf<T> {
    fn new() -> Self {
        Buf { s: None, cap: 0 }
    }
    fn ensure(&mut self, gpu: &Gpu, n: usize, what: &str) -> Result<u64> {
        if self.s.is_none() || self.cap < n {
            self.s = None; // free first, so the old and new buffers never coexist
            let cap = n.max(1).next_power_of_two();
            self.s = Some(gpu.alloc::<T>(cap, what)?);
            self.cap = cap;
        }
        Ok(self.ptr(gpu))
    }
    fn ptr(&self, gpu: &Gpu) -> u64 {
        self.s.as_ref().map_or(0, |s| addr(s, &gpu.stream))
    }
}

/// Scratch of the forward pass, sized by the largest step so far.
struct Work {
    x: Buf<f32>,
    xn: Buf<u16>,
    qkv: Buf<f32>,
    attn: Buf<u16>,
    proj: Buf<f32>,
    gu: Buf<f32>,
    act: Buf<u16>,
    xs: Buf<u16>,
    logits: Buf<f32>,
    meta: Buf<u32>,
    part_ml: Buf<f32>,
    part_acc: Buf<f32>,
    tokens: Buf<i32>,
}

/// A checkpoint loaded onto one GPU.
pub struct CudaModel {
    gpu: Arc<Gpu>,
    kernels: Kernels,
    shape: KernelShape,
    pub config: ModelConfig,
    embed_tokens: CudaSlice<u16>,
    lm_head: Option<CudaSlice<u16>>,
    norm: CudaSlice<f32>,
    layers: Vec<DevLayer>,
    inv_freq: CudaSlice<f32>,
    num_params: usize,
    weight_bytes: usize,
    work: Mutex<Work>,
}

/// Offsets (in 32-bit words) of the per-step index arrays inside the one uploaded `meta` buffer.
#[derive(Default)]
struct Meta {
    words: Vec<u32>,
}

impl Meta {
    fn push_i32(&mut self, v: impl IntoIterator<Item = usize>) -> usize {
        let at = self.words.len();
        self.words.extend(v.into_iter().map(|x| x as u32));
        at
    }
    fn push_f32(&mut self, v: impl IntoIterator<Item = f32>) -> usize {
        let at = self.words.len();
        self.words.extend(v.into_iter().map(f32::to_bits));
        at
    }
    fn push_f64(&mut self, v: impl IntoIterator<Item = f64>) -> usize {
        if self.words.len() % 2 == 1 {
            self.words.push(0);
        }
        let at = self.words.len();
        for x in v {
            let b = x.to_bits();
            self.words.extend([b as u32, (b >> 32) as u32]);
        }
        at
    }
}

macro_rules! launch {
    ($gpu:expr, $func:expr, $cfg:expr; $($arg:expr),* $(,)?) => {{
        let mut b = $gpu.stream.launch_builder(&$func);
        $( let a = $arg; b.arg(&a); )*
        // SAFETY: the arguments match the kernel's C signature (pointers as u64, int as i32,
        // float as f32) and every pointer is inside a live allocation sized for this step.
        unsafe { b.launch($cfg) }.map(|_| ()).map_err(dev_err("launching a kernel"))
    }};
}

fn cfg(grid: (u32, u32, u32), block: u32, smem: u32) -> LaunchConfig {
    LaunchConfig { grid_dim: grid, block_dim: (block, 1, 1), shared_mem_bytes: smem }
}

impl CudaModel {
    /// Loads `config.json` and the safetensors weights of a checkpoint onto `gpu`.
    pub fn load(dir: &Path, gpu: Arc<Gpu>) -> Result<CudaModel> {
        let config = ModelConfig::from_file(&dir.join("config.json"))?;
        let weights = WeightFiles::open_dir(dir)?;
        Self::from_weights(config, &weights, gpu)
    }

    /// Builds the model from a parsed config and opened weight files, converting each matrix
    /// to the device type (exact for bf16 and f16 checkpoints; f32 ones are rounded to bf16).
    pub fn from_weights(config: ModelConfig, w: &WeightFiles, gpu: Arc<Gpu>) -> Result<CudaModel> {
        gpu.bind()?;
        let f16 = w.main_dtype() == Some(DType::F16);
        let c = &config;
        let (h, hd) = (c.hidden_size, c.head_dim);
        let (q_dim, kv_dim, inter) = (c.num_heads * hd, c.num_kv_heads * hd, c.intermediate_size);
        let mut num_params = 0usize;
        let mut weight_bytes = 0usize;
        let mut mat = |parts: &[(String, usize)], cols: usize| -> Result<CudaSlice<u16>> {
            let mut all = Vec::new();
            for (name, rows) in parts {
                all.extend(w.f32(name, &[*rows, cols])?);
            }
            num_params += all.len();
            weight_bytes += all.len() * 2;
            let bits: Vec<u16> = if f16 {
                all.iter().map(|&x| f16::from_f32(x).to_bits()).collect()
            } else {
                all.iter().map(|&x| bf16::from_f32(x).to_bits()).collect()
            };
            gpu.upload(&bits, "uploading the weights")
        };
        let mut vecs = 0usize;
        let mut vec = |parts: &[(String, usize)]| -> Result<CudaSlice<f32>> {
            let mut all = Vec::new();
            for (name, n) in parts {
                all.extend(w.f32(name, &[*n])?);
            }
            vecs += all.len();
            gpu.upload(&all, "uploading the weights")
        };
        let mut layers = Vec::with_capacity(c.num_layers);
        for i in 0..c.num_layers {
            let p = format!("model.layers.{i}");
            let n = |s: &str| format!("{p}.{s}");
            let qkv_w = mat(
                &[
                    (n("self_attn.q_proj.weight"), q_dim),
                    (n("self_attn.k_proj.weight"), kv_dim),
                    (n("self_attn.v_proj.weight"), kv_dim),
                ],
                h,
            )?;
            let qkv_b = c
                .qkv_bias
                .then(|| {
                    vec(&[
                        (n("self_attn.q_proj.bias"), q_dim),
                        (n("self_attn.k_proj.bias"), kv_dim),
                        (n("self_attn.v_proj.bias"), kv_dim),
                    ])
                })
                .transpose()?;
            let o_w = mat(&[(n("self_attn.o_proj.weight"), h)], q_dim)?;
            let o_b = c.o_bias.then(|| vec(&[(n("self_attn.o_proj.bias"), h)])).transpose()?;
            let gu_w = mat(&[(n("mlp.gate_proj.weight"), inter), (n("mlp.up_proj.weight"), inter)], h)?;
            let gu_b = c
                .mlp_bias
                .then(|| vec(&[(n("mlp.gate_proj.bias"), inter), (n("mlp.up_proj.bias"), inter)]))
                .transpose()?;
            let down_w = mat(&[(n("mlp.down_proj.weight"), h)], inter)?;
            let down_b = c.mlp_bias.then(|| vec(&[(n("mlp.down_proj.bias"), h)])).transpose()?;
            layers.push(DevLayer {
                input_layernorm: vec(&[(n("input_layernorm.weight"), h)])?,
                qkv_proj: DevLinear { w: qkv_w, b: qkv_b },
                o_proj: DevLinear { w: o_w, b: o_b },
                post_attention_layernorm: vec(&[(n("post_attention_layernorm.weight"), h)])?,
                gate_up_proj: DevLinear { w: gu_w, b: gu_b },
                down_proj: DevLinear { w: down_w, b: down_b },
            });
        }
        let embed_tokens = mat(&[("model.embed_tokens.weight".into(), c.vocab_size)], h)?;
        let lm_head =
            if c.tie_word_embeddings { None } else { Some(mat(&[("lm_head.weight".into(), c.vocab_size)], h)?) };
        let norm = vec(&[("model.norm.weight".into(), h)])?;
        let inv_freq = gpu.upload(&c.rope_inv_freq(), "uploading the rotary frequencies")?;
        let shape = KernelShape {
            head_dim: hd,
            heads: c.num_heads,
            kv_heads: c.num_kv_heads,
            block_size: crate::DEFAULT_BLOCK_SIZE,
            f16,
        };
        let kernels = Kernels::compile(&gpu, shape)?;
        gpu.sync()?;
        Ok(CudaModel {
            kernels,
            shape,
            embed_tokens,
            lm_head,
            norm,
            layers,
            inv_freq,
            num_params: num_params + vecs,
            weight_bytes: weight_bytes + 4 * vecs,
            work: Mutex::new(Work {
                x: Buf::new(),
                xn: Buf::new(),
                qkv: Buf::new(),
                attn: Buf::new(),
                proj: Buf::new(),
                gu: Buf::new(),
                act: Buf::new(),
                xs: Buf::new(),
                logits: Buf::new(),
                meta: Buf::new(),
                part_ml: Buf::new(),
                part_acc: Buf::new(),
                tokens: Buf::new(),
            }),
            config,
            gpu,
        })
    }

    pub fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }

    /// The KV block geometry; the CUDA kernels are compiled for `DEFAULT_BLOCK_SIZE`.
    pub fn kv_shape(&self) -> KvShape {
        KvShape {
            layers: self.config.num_layers,
            kv_heads: self.config.num_kv_heads,
            head_dim: self.config.head_dim,
            block_size: self.shape.block_size,
        }
    }

    /// Number of parameters (tied embeddings counted once).
    pub fn num_params(&self) -> usize {
        self.num_params
    }

    /// Bytes of weights resident on the device (what a batch-1 decode step must read).
    pub fn weight_bytes(&self) -> usize {
        self.weight_bytes
    }

    /// A KV pool on this device, as many blocks as `budget_bytes` holds (16-bit values).
    pub fn kv_pool(&self, budget_bytes: usize) -> Result<KvPool> {
        let shape = self.kv_shape();
        let block_elems = shape.block_floats();
        let max_blocks = (budget_bytes / (2 * block_elems).max(1)).max(1);
        let storage = DeviceKv::new(self.gpu.clone(), block_elems, max_blocks)?;
        Ok(KvPool::on_device(shape, Box::new(storage)))
    }

    /// Runs one batched step: appends each item's tokens to its sequence, then either returns
    /// the logits each item asked for (`picks` = None) or chooses one token per pick on the
    /// device. Blocks are reserved before anything runs, so on a refused step nothing changed.
    pub(crate) fn step(
        &self,
        pool: &mut KvPool,
        items: &mut [BatchItem<'_>],
        picks: Option<&[DevicePick<'_>]>,
    ) -> Result<StepOutput> {
        let c = &self.config;
        let (h, v, inter) = (c.hidden_size, c.vocab_size, c.intermediate_size);
        let (q_dim, qkv_dim) = (c.num_heads * c.head_dim, c.qkv_dim());
        let group = c.num_heads / c.num_kv_heads;
        let kv_base = match pool.device() {
            Some(d) if pool.shape() == self.kv_shape() => d.base(),
            _ => return Err(EngineError::Invalid("the KV pool was not made by this CUDA model".into())),
        };
        if let Some(picks) = picks {
            for p in picks {
                let it =
                    items.get(p.item).ok_or_else(|| EngineError::Invalid("pick of a missing batch item".into()))?;
                if it.logits == Logits::None || it.tokens.is_empty() {
                    return Err(EngineError::Invalid("pick from a batch item that computes no logits".into()));
                }
            }
        }

        crate::model::reserve_batch(c, pool, items)?;
        let t: usize = items.iter().map(|it| it.tokens.len()).sum();
        if t == 0 {
            return Ok(match picks {
                None => StepOutput::Logits(items.iter().map(|_| Vec::new()).collect()),
                Some(_) => StepOutput::Tokens(Vec::new()),
            });
        }

        // The step's index arrays, uploaded in one copy.
        let mut starts = Vec::with_capacity(items.len());
        let mut row_pos = Vec::with_capacity(t);
        let mut row_item = Vec::with_capacity(t);
        let mut tables = Vec::new();
        let mut table_off = Vec::with_capacity(items.len());
        let mut dec_rows = Vec::new();
        let (mut tile_item, mut tile_f0) = (Vec::new(), Vec::new());
        let mut sel_rows = Vec::new();
        let mut last_sel = vec![usize::MAX; items.len()];
        let mut max_pos = 0;
        for (i, it) in items.iter().enumerate() {
            let n = it.tokens.len();
            let r0 = row_pos.len();
            starts.push(r0);
            table_off.push(tables.len());
            tables.extend(it.kv.blocks.iter().map(|&b| b as usize));
            for j in 0..n {
                row_pos.push(it.kv.len + j);
                row_item.push(i);
            }
            max_pos = max_pos.max(it.kv.len + n);
            if n >= PREFILL_MIN {
                for f0 in (0..n * group).step_by(PF_TILE_ROWS) {
                    tile_item.push(i);
                    tile_f0.push(f0);
                }
            } else {
                dec_rows.extend(r0..r0 + n);
            }
            match it.logits {
                Logits::None => {}
                Logits::Last if n > 0 => sel_rows.push(r0 + n - 1),
                Logits::Last => {}
                Logits::All => sel_rows.extend(r0..r0 + n),
            }
            if n > 0 && it.logits != Logits::None {
                last_sel[i] = sel_rows.len() - 1;
            }
        }
        let n_parts = dec_rows.iter().map(|&r| row_pos[r] / DEC_PART + 1).max().unwrap_or(0);
        let mut meta = Meta::default();
        let o_tokens = meta.push_i32(items.iter().flat_map(|it| it.tokens.iter().map(|&x| x as usize)));
        let o_row_pos = meta.push_i32(row_pos.iter().copied());
        let o_row_item = meta.push_i32(row_item.iter().copied());
        let o_table_off = meta.push_i32(table_off.iter().copied());
        let o_tables = meta.push_i32(tables.iter().copied());
        let o_dec_rows = meta.push_i32(dec_rows.iter().copied());
        let o_tile_item = meta.push_i32(tile_item.iter().copied());
        let o_tile_f0 = meta.push_i32(tile_f0.iter().copied());
        let o_item_row0 = meta.push_i32(starts.iter().copied());
        let o_item_n = meta.push_i32(items.iter().map(|it| it.tokens.len()));
        let o_sel = meta.push_i32(sel_rows.iter().copied());
        let picks = picks.unwrap_or(&[]);
        let np = picks.len();
        let o_pick_row = meta.push_i32(picks.iter().map(|p| last_sel[p.item]));
        let o_pick_temp =
            meta.push_f32(picks.iter().map(|p| if p.params.is_greedy() { 0.0 } else { p.params.temperature }));
        let o_pick_top_k = meta.push_i32(picks.iter().map(|p| p.params.top_k.min(i32::MAX as usize)));
        let o_pick_top_p = meta.push_f32(picks.iter().map(|p| p.params.top_p));
        let o_pick_u = meta.push_f64(picks.iter().map(|p| p.uniform));

        let gpu = &*self.gpu;
        gpu.bind()?;
        let mut guard = self.work.lock().map_err(|_| EngineError::Device("a previous step panicked".into()))?;
        let w = &mut *guard;
        let r = sel_rows.len();
        let x = w.x.ensure(gpu, t * h, "allocating activations")?;
        let xn = w.xn.ensure(gpu, t * h, "allocating activations")?;
        let qkv = w.qkv.ensure(gpu, t * qkv_dim, "allocating activations")?;
        let attn = w.attn.ensure(gpu, t * q_dim, "allocating activations")?;
        let proj = w.proj.ensure(gpu, t * h, "allocating activations")?;
        let gu = w.gu.ensure(gpu, t * 2 * inter, "allocating activations")?;
        let act = w.act.ensure(gpu, t * inter, "allocating activations")?;
        let xs = w.xs.ensure(gpu, r * h, "allocating activations")?;
        let logits = w.logits.ensure(gpu, r * v, "allocating the logits")?;
        let dec = dec_rows.len();
        let part_ml = w.part_ml.ensure(gpu, dec * c.num_heads * n_parts * 2, "allocating attention scratch")?;
        let part_acc =
            w.part_acc.ensure(gpu, dec * c.num_heads * n_parts * c.head_dim, "allocating attention scratch")?;
        let toks = w.tokens.ensure(gpu, np, "allocating the token ids")?;
        let mb = w.meta.ensure(gpu, meta.words.len(), "allocating step metadata")?;
        if let Some(buf) = w.meta.s.as_mut() {
            gpu.stream.memcpy_htod(&meta.words, buf).map_err(dev_err("uploading step metadata"))?;
        }
        let m = |off: usize| mb + 4 * off as u64;

        let nl = c.num_layers as i32;
        let eps = c.rms_norm_eps;
        let scale = 1.0 / (c.head_dim as f32).sqrt();
        let ptr = |s: &CudaSlice<f32>| addr(s, &gpu.stream);
        let bias = |l: &DevLinear| l.b.as_ref().map_or(0, |b| addr(b, &gpu.stream));
        let norm_block = 256;
        let ti = t as u32;

        launch!(gpu, self.kernels.embed, cfg((ti, 1, 1), 256, 0); m(o_tokens), addr(&self.embed_tokens, &gpu.stream), x, h as i32)?;
        for (li, layer) in self.layers.iter().enumerate() {
            // input_layernorm, fused with the previous layer's MLP residual.
            let (delta, delta_b) = match li.checked_sub(1) {
                Some(p) => (proj, bias(&self.layers[p].down_proj)),
                None => (0, 0),
            };
            launch!(gpu, self.kernels.add_rms_norm, cfg((ti, 1, 1), norm_block, 0);
                x, delta, delta_b, ptr(&layer.input_layernorm), xn, 0u64, h as i32, eps)?;
            self.gemm(qkv, xn, &layer.qkv_proj, t, h, qkv_dim)?;
            launch!(gpu, self.kernels.qkv_rope_store, cfg((ti, 1, 1), 128, 0);
                qkv, bias(&layer.qkv_proj), ptr(&self.inv_freq), m(o_row_pos), m(o_row_item), m(o_table_off),
                m(o_tables), kv_base, li as i32, nl)?;
            if dec > 0 {
                launch!(gpu, self.kernels.attention_decode,
                    cfg((dec as u32, c.num_kv_heads as u32, n_parts as u32), 32 * DEC_WARPS, 0);
                    qkv, kv_base, m(o_dec_rows), m(o_row_pos), m(o_row_item), m(o_table_off), m(o_tables),
                    li as i32, nl, scale, n_parts as i32, part_ml, part_acc)?;
                let threads = (c.head_dim.div_ceil(32) * 32).min(1024) as u32;
                launch!(gpu, self.kernels.attention_merge, cfg((dec as u32, c.num_heads as u32, 1), threads, 0);
                    m(o_dec_rows), m(o_row_pos), n_parts as i32, part_ml, part_acc, attn)?;
            }
            if !tile_item.is_empty() {
                let smem = self.shape.prefill_smem_bytes() as u32;
                launch!(gpu, self.kernels.attention_prefill,
                    cfg((tile_item.len() as u32, c.num_kv_heads as u32, 1), 32 * PF_WARPS, smem);
                    qkv, kv_base, m(o_tile_item), m(o_tile_f0), m(o_item_row0), m(o_item_n), m(o_row_pos),
                    m(o_table_off), m(o_tables), li as i32, nl, scale, attn)?;
            }
            self.gemm(proj, attn, &layer.o_proj, t, q_dim, h)?;
            launch!(gpu, self.kernels.add_rms_norm, cfg((ti, 1, 1), norm_block, 0);
                x, proj, bias(&layer.o_proj), ptr(&layer.post_attention_layernorm), xn, 0u64, h as i32, eps)?;
            self.gemm(gu, xn, &layer.gate_up_proj, t, h, 2 * inter)?;
            launch!(gpu, self.kernels.swiglu, cfg((inter.div_ceil(256) as u32, ti, 1), 256, 0);
                gu, bias(&layer.gate_up_proj), act, inter as i32)?;
            self.gemm(proj, act, &layer.down_proj, t, inter, h)?;
        }
        for it in items.iter_mut() {
            it.kv.len += it.tokens.len();
        }
        if r > 0 {
            // The last residual and the final norm, only for the rows whose logits are wanted.
            let last_b = self.layers.last().map_or(0, |l| bias(&l.down_proj));
            launch!(gpu, self.kernels.add_rms_norm, cfg((r as u32, 1, 1), norm_block, 0);
                x, proj, last_b, ptr(&self.norm), xs, m(o_sel), h as i32, eps)?;
            let head = self.lm_head.as_ref().unwrap_or(&self.embed_tokens);
            self.gemm_raw(logits, xs, addr(head, &gpu.stream), r, h, v)?;
        }

        if np == 0 {
            let host: Vec<f32> = match w.logits.s.as_ref() {
                Some(buf) if r > 0 => {
                    let mut out = vec![0f32; r * v];
                    gpu.stream
                        .memcpy_dtoh(&buf.slice(..r * v), &mut out)
                        .map_err(dev_err("copying logits to the host"))?;
                    out
                }
                _ => Vec::new(),
            };
            gpu.sync()?;
            let mut out = Vec::with_capacity(items.len());
            let mut k = 0;
            for it in items.iter() {
                let n = it.tokens.len();
                let take = match it.logits {
                    Logits::None => 0,
                    Logits::Last => usize::from(n > 0),
                    Logits::All => n,
                };
                out.push(host[k * v..(k + take) * v].to_vec());
                k += take;
            }
            return Ok(StepOutput::Logits(out));
        }

        launch!(gpu, self.kernels.sample_tokens, cfg((np as u32, 1, 1), SAMPLE_THREADS, 0);
            logits, v as i32, m(o_pick_row), m(o_pick_temp), m(o_pick_top_k), m(o_pick_top_p), m(o_pick_u), toks)?;
        let mut ids = vec![0i32; np];
        if let Some(buf) = w.tokens.s.as_ref() {
            gpu.stream.memcpy_dtoh(&buf.slice(..np), &mut ids).map_err(dev_err("copying token ids"))?;
        }
        gpu.sync()?;
        let mut out = Vec::with_capacity(np);
        for (p, &id) in picks.iter().zip(&ids) {
            if id >= 0 {
                out.push(Ok(id as u32));
                continue;
            }
            let row = last_sel[p.item];
            let mut host = vec![0f32; v];
            if let Some(buf) = w.logits.s.as_ref() {
                gpu.stream
                    .memcpy_dtoh(&buf.slice(row * v..(row + 1) * v), &mut host)
                    .map_err(dev_err("copying logits to the host"))?;
            }
            gpu.sync()?;
            out.push(Err(host));
        }
        Ok(StepOutput::Tokens(out))
    }

    /// Runs only the device token choice on given logits rows (`vocab_size` floats each), one
    /// pick per (row, params, uniform): the sampling kernel checked against the host sampler.
    /// A pick the device leaves to the host is -1.
    pub fn sample_rows(&self, logits: &[f32], picks: &[(usize, SamplingParams, f64)]) -> Result<Vec<i32>> {
        let v = self.config.vocab_size;
        if !logits.len().is_multiple_of(v) || picks.iter().any(|p| p.0 >= logits.len() / v) {
            return Err(EngineError::Invalid("sample_rows: logits are not whole rows, or a pick names no row".into()));
        }
        let gpu = &*self.gpu;
        gpu.bind()?;
        let rows = gpu.upload(logits, "uploading logits")?;
        let mut meta = Meta::default();
        let o_row = meta.push_i32(picks.iter().map(|p| p.0));
        let o_temp = meta.push_f32(picks.iter().map(|p| if p.1.is_greedy() { 0.0 } else { p.1.temperature }));
        let o_top_k = meta.push_i32(picks.iter().map(|p| p.1.top_k.min(i32::MAX as usize)));
        let o_top_p = meta.push_f32(picks.iter().map(|p| p.1.top_p));
        let o_u = meta.push_f64(picks.iter().map(|p| p.2));
        let mb = gpu.upload(&meta.words, "uploading picks")?;
        let out = gpu.alloc::<i32>(picks.len(), "allocating token ids")?;
        let m = |off: usize| addr(&mb, &gpu.stream) + 4 * off as u64;
        if !picks.is_empty() {
            launch!(gpu, self.kernels.sample_tokens, cfg((picks.len() as u32, 1, 1), SAMPLE_THREADS, 0);
                addr(&rows, &gpu.stream), v as i32, m(o_row), m(o_temp), m(o_top_k), m(o_top_p), m(o_u),
                addr(&out, &gpu.stream))?;
        }
        let mut ids = gpu.stream.clone_dtoh(&out).map_err(dev_err("copying token ids"))?;
        gpu.sync()?;
        ids.truncate(picks.len());
        Ok(ids)
    }

    /// `y[rows, n] = x[rows, k] · Wᵀ` for a `[n, k]` weight (bias, if any, is added by the
    /// kernel that reads `y`).
    fn gemm(&self, y: u64, x: u64, lin: &DevLinear, rows: usize, k: usize, n: usize) -> Result<()> {
        self.gemm_raw(y, x, addr(&lin.w, &self.gpu.stream), rows, k, n)
    }

    fn gemm_raw(&self, y: u64, x: u64, w: u64, rows: usize, k: usize, n: usize) -> Result<()> {
        let dt = if self.shape.f16 { cudaDataType::CUDA_R_16F } else { cudaDataType::CUDA_R_16BF };
        let (alpha, beta) = (1f32, 0f32);
        let int = |x: usize| {
            i32::try_from(x).map_err(|_| EngineError::Device(format!("matrix dimension {x} is too large for cuBLAS")))
        };
        // Row-major y = x·Wᵀ is column-major yᵀ = W·xᵀ: W is k×n column-major, used transposed.
        // SAFETY: the three pointers are device buffers of at least rows·k, n·k and rows·n values.
        unsafe {
            blas_result::gemm_ex(
                *self.gpu.blas.handle(),
                cublasOperation_t::CUBLAS_OP_T,
                cublasOperation_t::CUBLAS_OP_N,
                int(n)?,
                int(rows)?,
                int(k)?,
                &alpha as *const f32 as *const c_void,
                w as *const c_void,
                dt,
                int(k)?,
                x as *const c_void,
                dt,
                int(k)?,
                &beta as *const f32 as *const c_void,
                y as *mut c_void,
                cudaDataType::CUDA_R_32F,
                int(n)?,
                cublasComputeType_t::CUBLAS_COMPUTE_32F,
                cublasGemmAlgo_t::CUBLAS_GEMM_DFALT,
            )
        }
        .map_err(blas_err("matrix product"))
    }
}
