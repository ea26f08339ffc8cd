//! The decoder-only transformer (Llama / Qwen2) and its batched forward pass.
//!
//! `Model::forward` reads top to bottom like transformers' `LlamaModel.forward`: embedding,
//! then per layer `input_layernorm → q/k/v → rope → attention → o_proj → residual →
//! post_attention_layernorm → SwiGLU MLP → residual`, then the final norm and `lm_head`.
//! Several sequences of different lengths go through in one call: their new tokens are
//! stacked into one matrix for every projection, and only attention is done per sequence,
//! over that sequence's KV blocks.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::config::ModelConfig;
use crate::error::{EngineError, Result};
use half::f16;

use crate::cpu::pool as threads;
use crate::kv::{HostElem, KvDtype, KvPool, KvShape, SeqKv};
use crate::matrix::{Matrix, Rounding, WeightFormat};
use crate::ops;
use crate::pool::SendPtr;
use crate::tokenizer::Tokenizer;
use crate::weight_choice::sample_ids;
pub use crate::weight_choice::{default_format, Agreement, Weights, Q8_AUTO_BUDGET};
use crate::weights::{DType, TensorSource, WeightFiles};

/// A linear layer, weights in the PyTorch `[out, in]` layout, stored in the model's format.
pub struct Linear {
    pub w: Matrix,
    pub b: Option<Vec<f32>>,
}

impl Linear {
    fn forward(&self, x: &[f32], m: usize, y: &mut [f32]) {
        self.w.matmul_t(x, self.b.as_deref(), y, m);
    }
}

/// One transformer block. q, k and v are fused into one projection, as are gate and up.
pub struct Layer {
    pub input_layernorm: Vec<f32>,
    pub qkv_proj: Linear,
    pub o_proj: Linear,
    pub post_attention_layernorm: Vec<f32>,
    pub gate_up_proj: Linear,
    pub down_proj: Linear,
}

/// A loaded checkpoint, ready to run.
pub struct Model {
    pub config: ModelConfig,
    pub embed_tokens: Matrix,
    pub layers: Vec<Layer>,
    pub norm: Vec<f32>,
    /// `None` when tied to `embed_tokens`.
    pub lm_head: Option<Matrix>,
    inv_freq: Vec<f32>,
    /// The dtype the checkpoint stores its weights in.
    pub stored_dtype: Option<DType>,
    /// The format the weight matrices are held in.
    pub format: WeightFormat,
    /// How far converting the checkpoint's matrices to `format` moved their weights, all
    /// together, and the matrix it moved most (its first tensor's name and relative RMS
    /// change; `None` when nothing was converted).
    pub rounding: Rounding,
    pub worst_rounding: Option<(String, f64)>,
    /// Why the weights are held in `format` (for the load log).
    pub format_reason: String,
    /// How q8 compared with the checkpoint's own precision on [`SAMPLE`](crate::weight_choice::SAMPLE), where
    /// [`Weights::Auto`] measured it.
    pub agreement: Option<Agreement>,
    /// Activation buffers kept between forwards of up to `SCRATCH_KEEP_ROWS` tokens, so that a
    /// decode step allocates nothing but the logits it returns.
    scratch: Mutex<Scratch>,
}

/// The buffers of one forward pass (see `Model::forward_reserved`).
#[derive(Default)]
struct Scratch {
    positions: Vec<usize>,
    starts: Vec<usize>,
    cos: Vec<f32>,
    sin: Vec<f32>,
    x: Vec<f32>,
    xn: Vec<f32>,
    qkv: Vec<f32>,
    attn: Vec<f32>,
    proj: Vec<f32>,
    gu: Vec<f32>,
    act: Vec<f32>,
    tasks: Vec<(usize, usize, usize)>,
    /// Prompts' KV heads widened to f32 for their attention, where each prompt's part starts,
    /// and the widening's tasks (sequence, KV head, keys or values).
    kvw: Vec<f32>,
    kv_at: Vec<Option<usize>>,
    widen_tasks: Vec<(usize, usize, usize)>,
    rows: Vec<usize>,
    sel: Vec<f32>,
    seln: Vec<f32>,
    logits: Vec<f32>,
}

/// Forwards of more new tokens than this free their buffers afterwards (a prompt's activations
/// are not worth keeping; a decode step's are).
const SCRATCH_KEEP_ROWS: usize = 64;
/// Most floats of widened KV kept after a forward (4 MiB: a keystroke's few new tokens after
/// about 2,700 earlier ones, for a model with 3 KV heads of 64).
const KVW_KEEP: usize = 1 << 20;

/// `v[..n]`, grown (never shrunk) as needed; what it held before is not cleared.
fn grown<T: Copy + Default>(v: &mut Vec<T>, n: usize) -> &mut [T] {
    if v.len() < n {
        v.resize(n, T::default());
    }
    &mut v[..n]
}

/// Which logits a batch item wants back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// None (a chunk of a prompt that is still being prefilled).
    None,
    /// The last position only (generation).
    Last,
    /// Every new position.
    All,
}

/// One sequence's part of a batched forward: its KV state and the tokens to append.
pub struct BatchItem<'a> {
    pub kv: &'a mut SeqKv,
    pub tokens: &'a [u32],
    pub logits: Logits,
}

impl Model {
    /// Loads `config.json` and the safetensors weights of a checkpoint directory, in the
    /// format that loses nothing (see [`default_format`]).
    pub fn load(dir: &Path) -> Result<Self> {
        Self::load_as(dir, Weights::Stored)
    }

    /// Loads a checkpoint with its weight matrices held as `weights` asks ([`Weights`]; `None`
    /// is [`Weights::Stored`], a format is [`Weights::Format`]). A path to a `.gguf` file loads
    /// that file (see [`crate::gguf`]).
    pub fn load_as(dir: &Path, weights: impl Into<Weights>) -> Result<Self> {
        let (weights, opened) = (weights.into(), Opened::open(dir)?);
        // Only for the auto check's sample, which is skipped without one.
        let tokenizer = if opened.samples(weights) { opened.tokenizer().ok() } else { None };
        opened.into_model(weights, tokenizer.as_ref())
    }

    /// [`Model::load_as`] and the checkpoint's [`Tokenizer`], each read once: the tokenizer,
    /// read before any weight (a broken one fails the load at once), also encodes the sample
    /// that [`Weights::Auto`] checks, and a GGUF file's header and metadata serve both.
    pub fn load_with_tokenizer(dir: &Path, weights: impl Into<Weights>) -> Result<(Self, Tokenizer)> {
        let opened = Opened::open(dir)?;
        let tokenizer = opened.tokenizer()?;
        Ok((opened.into_model(weights.into(), Some(&tokenizer))?, tokenizer))
    }

    /// The model of an opened GGUF file ([`crate::gguf::open_model`]): unless a format is asked
    /// for, quantized blocks are computed on as stored, and a file of floats is treated like a
    /// safetensors checkpoint (`sample`: see [`Model::from_floats`]).
    fn from_gguf(
        file: &mut crate::gguf::GgufFile,
        config: ModelConfig,
        weights: Weights,
        sample: Option<&[u32]>,
    ) -> Result<Self> {
        match weights {
            Weights::Stored => {}
            Weights::Auto if file.is_quantized() => {}
            Weights::Auto | Weights::Format(_) => return Self::from_floats(config, &*file, weights, sample),
        }
        let format = file.keep_as_stored();
        let mut m = Self::from_weights(config, &*file, format)?;
        let converted = if m.rounding.err2 > 0.0 {
            ", except blocks of types the kernels lack, or stacked with other types, converted to q8"
        } else {
            ""
        };
        m.format_reason = match weights {
            Weights::Auto => format!("auto: the file's blocks as stored{converted}"),
            _ => format!("the file's blocks as stored{converted}"),
        };
        Ok(m)
    }

    /// Builds the model from an already parsed config and opened weight files.
    pub fn from_weights(config: ModelConfig, w: &impl TensorSource, format: WeightFormat) -> Result<Self> {
        let c = &config;
        let (h, hd) = (c.hidden_size, c.head_dim);
        let (q_dim, kv_dim) = (c.num_heads * hd, c.num_kv_heads * hd);
        let bias = |name: &str, n: usize, on: bool| -> Result<Option<Vec<f32>>> {
            if on {
                w.f32(name, &[n]).map(Some)
            } else {
                Ok(None)
            }
        };
        // q/k/v and gate/up are stacked into one matrix each.
        // Q4_0, Q4_1 and Q8_0 rows are interleaved for the products where the CPU has AVX2.
        // What each conversion changed adds up in `rounding`, the matrix changed most in `worst`.
        let rounding = std::cell::Cell::new(Rounding::default());
        let worst: RefCell<Option<(String, f64)>> = RefCell::new(None);
        let matrix = |parts: &[(String, usize)], in_dim: usize| -> Result<Matrix> {
            let (m, r) = w.stacked(parts, in_dim, format)?;
            let mut total = rounding.get();
            total.add(r);
            rounding.set(total);
            let rms = r.relative_rms();
            let mut worst = worst.borrow_mut();
            if r.err2 > 0.0 && worst.as_ref().is_none_or(|w| rms > w.1) {
                let name = match parts {
                    [one] => one.0.clone(),
                    [first, rest @ ..] => format!("{} (+{} stacked)", first.0, rest.len()),
                    [] => String::new(),
                };
                *worst = Some((name, rms));
            }
            Ok(m.interleaved())
        };
        let mut layers = Vec::with_capacity(c.num_layers);
        for i in 0..c.num_layers {
            let p = format!("model.layers.{i}");
            let inter = c.intermediate_size;
            let qkv = matrix(
                &[
                    (format!("{p}.self_attn.q_proj.weight"), q_dim),
                    (format!("{p}.self_attn.k_proj.weight"), kv_dim),
                    (format!("{p}.self_attn.v_proj.weight"), kv_dim),
                ],
                h,
            )?;
            let qkv_b = if c.qkv_bias {
                let mut b = w.f32(&format!("{p}.self_attn.q_proj.bias"), &[q_dim])?;
                b.extend(w.f32(&format!("{p}.self_attn.k_proj.bias"), &[kv_dim])?);
                b.extend(w.f32(&format!("{p}.self_attn.v_proj.bias"), &[kv_dim])?);
                Some(b)
            } else {
                None
            };
            let gate_up =
                matrix(&[(format!("{p}.mlp.gate_proj.weight"), inter), (format!("{p}.mlp.up_proj.weight"), inter)], h)?;
            let gate_up_b = if c.mlp_bias {
                let mut b = w.f32(&format!("{p}.mlp.gate_proj.bias"), &[inter])?;
                b.extend(w.f32(&format!("{p}.mlp.up_proj.bias"), &[inter])?);
                Some(b)
            } else {
                None
            };
            layers.push(Layer {
                input_layernorm: w.f32(&format!("{p}.input_layernorm.weight"), &[h])?,
                qkv_proj: Linear { w: qkv, b: qkv_b },
                o_proj: Linear {
                    w: matrix(&[(format!("{p}.self_attn.o_proj.weight"), h)], q_dim)?,
                    b: bias(&format!("{p}.self_attn.o_proj.bias"), h, c.o_bias)?,
                },
                post_attention_layernorm: w.f32(&format!("{p}.post_attention_layernorm.weight"), &[h])?,
                gate_up_proj: Linear { w: gate_up, b: gate_up_b },
                down_proj: Linear {
                    w: matrix(&[(format!("{p}.mlp.down_proj.weight"), h)], inter)?,
                    b: bias(&format!("{p}.mlp.down_proj.bias"), h, c.mlp_bias)?,
                },
            });
        }
        let embed_tokens = matrix(&[("model.embed_tokens.weight".to_string(), c.vocab_size)], h)?;
        let lm_head = if c.tie_word_embeddings {
            None
        } else {
            Some(matrix(&[("lm_head.weight".to_string(), c.vocab_size)], h)?)
        };
        Ok(Model {
            inv_freq: config.rope_inv_freq(),
            embed_tokens,
            norm: w.f32("model.norm.weight", &[h])?,
            lm_head,
            layers,
            stored_dtype: w.main_dtype(),
            format,
            rounding: rounding.get(),
            worst_rounding: worst.into_inner(),
            format_reason: "asked".into(),
            agreement: None,
            config,
            scratch: Mutex::new(Scratch::default()),
        })
    }

    /// The KV block geometry this model needs, for a given tokens-per-block.
    pub fn kv_shape(&self, block_size: usize) -> KvShape {
        KvShape {
            layers: self.config.num_layers,
            kv_heads: self.config.num_kv_heads,
            head_dim: self.config.head_dim,
            block_size,
        }
    }

    /// Number of parameters (tied embeddings counted once).
    pub fn num_params(&self) -> usize {
        self.count(|m| m.rows * m.cols, 1)
    }

    /// Bytes the weights take in memory (vectors in f32, matrices in their format).
    pub fn weight_bytes(&self) -> usize {
        self.count(Matrix::bytes, 4)
    }

    fn count(&self, matrix: impl Fn(&Matrix) -> usize, per_float: usize) -> usize {
        let mut n = matrix(&self.embed_tokens) + self.lm_head.as_ref().map_or(0, &matrix) + self.norm.len() * per_float;
        for l in &self.layers {
            n += (l.input_layernorm.len() + l.post_attention_layernorm.len()) * per_float;
            for lin in [&l.qkv_proj, &l.o_proj, &l.gate_up_proj, &l.down_proj] {
                n += matrix(&lin.w) + lin.b.as_ref().map_or(0, Vec::len) * per_float;
            }
        }
        n
    }

    /// Appends each item's tokens to its sequence and returns the logits each asked for
    /// (`vocab_size` floats per returned position, positions in order).
    ///
    /// All KV blocks needed are reserved before anything is computed, so on error no
    /// sequence has changed.
    pub fn forward(&self, pool: &mut KvPool, items: &mut [BatchItem<'_>]) -> Result<Vec<Vec<f32>>> {
        let c = &self.config;
        if pool.shape() != self.kv_shape(pool.shape().block_size) {
            return Err(EngineError::Invalid("KV pool was made for another model shape".into()));
        }

        reserve_batch(c, pool, items)?;

        let total: usize = items.iter().map(|it| it.tokens.len()).sum();
        if total <= MICRO_BATCH {
            return self.forward_reserved(pool, items);
        }
        // A long batch (a cold prompt of thousands of tokens) goes through the layers in
        // micro-batches of at most MICRO_BATCH tokens, in order, so that activation memory stays
        // bounded; a later piece of a prompt attends to the KV the earlier pieces wrote.
        let mut out: Vec<Vec<f32>> = items.iter().map(|_| Vec::new()).collect();
        let mut done = vec![0usize; items.len()];
        loop {
            let mut budget = MICRO_BATCH;
            let mut which = Vec::new();
            let mut sub = Vec::new();
            for (i, it) in items.iter_mut().enumerate() {
                let left = it.tokens.len() - done[i];
                if left == 0 || budget == 0 {
                    continue;
                }
                let take = left.min(budget);
                let tokens: &[u32] = it.tokens;
                let last_piece = done[i] + take == tokens.len();
                let logits = match it.logits {
                    Logits::All => Logits::All,
                    Logits::Last if last_piece => Logits::Last,
                    _ => Logits::None,
                };
                sub.push(BatchItem { kv: &mut *it.kv, tokens: &tokens[done[i]..done[i] + take], logits });
                which.push(i);
                done[i] += take;
                budget -= take;
            }
            if sub.is_empty() {
                return Ok(out);
            }
            for (i, o) in which.into_iter().zip(self.forward_reserved(pool, &mut sub)?) {
                out[i].extend(o);
            }
        }
    }

    /// The forward of a batch whose KV blocks `reserve_batch` has reserved, in one pass.
    fn forward_reserved(&self, pool: &mut KvPool, items: &mut [BatchItem<'_>]) -> Result<Vec<Vec<f32>>> {
        let t: usize = items.iter().map(|it| it.tokens.len()).sum();
        if t == 0 {
            return Ok(items.iter().map(|_| Vec::new()).collect());
        }
        // The model's buffers, or (another thread in a forward of this model) fresh ones.
        let mut held = self.scratch.try_lock().ok();
        let mut own = Scratch::default();
        let s: &mut Scratch = held.as_deref_mut().unwrap_or(&mut own);
        let out = self.forward_in(s, pool, items, t);
        if t > SCRATCH_KEEP_ROWS {
            *s = Scratch::default();
        } else if s.kvw.len() > KVW_KEEP {
            s.kvw = Vec::new();
        }
        out
    }

    fn forward_in(
        &self,
        s: &mut Scratch,
        pool: &mut KvPool,
        items: &mut [BatchItem<'_>],
        t: usize,
    ) -> Result<Vec<Vec<f32>>> {
        let c = &self.config;
        let (h, hd, nh, nkv) = (c.hidden_size, c.head_dim, c.num_heads, c.num_kv_heads);
        let (q_dim, kv_dim) = (nh * hd, nkv * hd);
        let qkv_dim = c.qkv_dim();
        let inter = c.intermediate_size;

        // Row layout: item i's new tokens occupy rows starts[i]..starts[i] + n_i.
        let starts = &mut s.starts;
        starts.clear();
        let mut r = 0;
        for it in items.iter() {
            starts.push(r);
            r += it.tokens.len();
        }
        let starts: &[usize] = starts;
        let positions = &mut s.positions;
        positions.clear();
        positions.extend(items.iter().flat_map(|it| (0..it.tokens.len()).map(move |j| it.kv.len + j)));
        let positions: &[usize] = positions;

        // Rotary tables for every row: cos/sin of position · inv_freq, in f32 as transformers.
        let half = hd / 2;
        let cos = grown(&mut s.cos, t * half);
        let sin = grown(&mut s.sin, t * half);
        for (r, &p) in positions.iter().enumerate() {
            for i in 0..half {
                let f = p as f32 * self.inv_freq[i];
                cos[r * half + i] = f.cos();
                sin[r * half + i] = f.sin();
            }
        }
        let (cos, sin): (&[f32], &[f32]) = (cos, sin);

        let x = grown(&mut s.x, t * h);
        for (r, tok) in items.iter().flat_map(|it| it.tokens.iter()).enumerate() {
            let tok = *tok as usize;
            self.embed_tokens.rows_into(tok, &mut x[r * h..(r + 1) * h]);
        }
        // Every one of these is written in full before it is read, at every layer.
        let xn = grown(&mut s.xn, t * h);
        let qkv = grown(&mut s.qkv, t * qkv_dim);
        let attn = grown(&mut s.attn, t * q_dim);
        let proj = grown(&mut s.proj, t * h);
        let gu = grown(&mut s.gu, t * 2 * inter);
        let act = grown(&mut s.act, t * inter);
        let shape = pool.shape();
        let bs = shape.block_size;
        let scale = 1.0 / (hd as f32).sqrt();

        for (li, layer) in self.layers.iter().enumerate() {
            ops::rms_norm(x, &layer.input_layernorm, c.rms_norm_eps, xn, h);
            layer.qkv_proj.forward(xn, t, qkv);

            // Rotate q and k, then store k and v into the sequences' blocks.
            for r in 0..t {
                let (cr, sr) = (&cos[r * half..(r + 1) * half], &sin[r * half..(r + 1) * half]);
                let row = &mut qkv[r * qkv_dim..(r + 1) * qkv_dim];
                for head in row[..q_dim + kv_dim].chunks_exact_mut(hd) {
                    ops::rope(head, cr, sr);
                }
            }
            for (i, it) in items.iter().enumerate() {
                for j in 0..it.tokens.len() {
                    let r = starts[i] + j;
                    let pos = positions[r];
                    let bid = it.kv.blocks[pos / bs];
                    let slot = pos % bs;
                    let row = &qkv[r * qkv_dim..(r + 1) * qkv_dim];
                    for g in 0..nkv {
                        let k = &row[q_dim + g * hd..q_dim + (g + 1) * hd];
                        let v = &row[q_dim + kv_dim + g * hd..q_dim + kv_dim + (g + 1) * hd];
                        let ko = shape.slab(li, 0, g) + slot * hd;
                        let vo = shape.slab(li, 1, g) + slot * hd;
                        pool.write(bid, ko, k);
                        pool.write(bid, vo, v);
                    }
                }
            }

            // Causal attention. Prompts (`PREFILL_GEMM_MIN` new tokens or more): each KV head's
            // keys and values are widened to f32 once (a task per sequence, KV head and keys or
            // values), then a task per query head runs two matrix products on them. Decode
            // steps: a task per (sequence, KV head), whose query heads read each KV block once.
            let pool_ref: &KvPool = pool;
            let group = nh / nkv;
            let f16_kv = pool_ref.host_dtype() == Some(KvDtype::F16);
            // Where each prompt's widened KV starts in `kvw` (decode steps: none).
            let kv_at = &mut s.kv_at;
            kv_at.clear();
            let mut wide = 0;
            for it in items.iter() {
                let prompt = it.tokens.len() >= PREFILL_GEMM_MIN;
                kv_at.push(prompt.then_some(wide));
                if prompt {
                    wide += nkv * 2 * (it.kv.len + it.tokens.len()) * hd;
                }
            }
            let kv_at: &[Option<usize>] = kv_at;
            let items_ref: &[BatchItem<'_>] = items;
            if wide > 0 {
                let kvw = grown(&mut s.kvw, wide);
                let widen = &mut s.widen_tasks;
                widen.clear();
                widen.extend(
                    (0..items.len())
                        .filter(|&i| kv_at[i].is_some())
                        .flat_map(|i| (0..nkv).flat_map(move |g| [(i, g, 0), (i, g, 1)])),
                );
                let widen: &[(usize, usize, usize)] = widen;
                let dst = SendPtr(kvw.as_mut_ptr());
                threads().run(widen.len(), &|ti| {
                    let (i, g, kv) = widen[ti];
                    let it = &items_ref[i];
                    let total = it.kv.len + it.tokens.len();
                    let at = kv_at[i].unwrap_or_default() + (2 * g + kv) * total * hd;
                    // SAFETY: task (i, g, kv) alone writes these `total * hd` floats of `kvw`,
                    // which holds `wide` floats and outlives the region.
                    let out = unsafe { std::slice::from_raw_parts_mut(dst.at(at), total * hd) };
                    if f16_kv {
                        widen_kv::<f16>(pool_ref, &it.kv.blocks, li, kv, g, out);
                    } else {
                        widen_kv::<f32>(pool_ref, &it.kv.blocks, li, kv, g, out);
                    }
                });
            }
            let kvw: &[f32] = &s.kvw[..wide];
            let tasks = &mut s.tasks;
            tasks.clear();
            tasks.extend((0..items.len()).filter(|&i| !items[i].tokens.is_empty()).flat_map(|i| {
                let per = if kv_at[i].is_some() { 1 } else { group };
                (0..nh).step_by(per).map(move |h0| (i, h0, per))
            }));
            let tasks: &[(usize, usize, usize)] = tasks;
            let qkv_ref: &[f32] = qkv;
            let attn_out = SendPtr(attn.as_mut_ptr());
            threads().run(tasks.len(), &|ti| {
                let (i, h0, heads) = tasks[ti];
                let it = &items_ref[i];
                let a = Attn {
                    pool: pool_ref,
                    blocks: &it.kv.blocks,
                    li,
                    g: h0 / group,
                    qkv: qkv_ref,
                    row0: starts[i],
                    n: it.tokens.len(),
                    p0: it.kv.len,
                    h0,
                    heads,
                    qkv_dim,
                    scale,
                };
                // The task's heads, per head per token, into their rows and columns of `attn`.
                let put = |out: &[f32]| {
                    for k in 0..heads {
                        for j in 0..a.n {
                            let src = &out[(k * a.n + j) * hd..(k * a.n + j + 1) * hd];
                            // SAFETY: task (i, h0) alone writes heads h0..h0 + heads of item i's
                            // rows, inside the t x q_dim `attn`, which outlives the region.
                            unsafe {
                                let at = attn_out.at((starts[i] + j) * q_dim + (h0 + k) * hd);
                                std::ptr::copy_nonoverlapping(src.as_ptr(), at, hd);
                            }
                        }
                    }
                };
                thread_local! {
                    static BUFS: RefCell<[Vec<f32>; 3]> = const { RefCell::new([Vec::new(), Vec::new(), Vec::new()]) };
                }
                BUFS.with(|b| {
                    let [scores, out, q] = &mut *b.borrow_mut();
                    if let Some(at) = kv_at[i] {
                        let total = (a.p0 + a.n) * hd;
                        let kv = &kvw[at + 2 * a.g * total..at + 2 * (a.g + 1) * total];
                        let (k, v) = kv.split_at(total);
                        attend_prefill(&a, k, v, [scores, out, q]);
                    } else if f16_kv {
                        attend_decode::<f16>(&a, scores, out);
                    } else {
                        attend_decode::<f32>(&a, scores, out);
                    }
                    put(out);
                });
            });

            layer.o_proj.forward(attn, t, proj);
            x.iter_mut().zip(&*proj).for_each(|(a, b)| *a += b);

            ops::rms_norm(x, &layer.post_attention_layernorm, c.rms_norm_eps, xn, h);
            layer.gate_up_proj.forward(xn, t, gu);
            ops::swiglu(gu, act, inter);
            layer.down_proj.forward(act, t, proj);
            x.iter_mut().zip(&*proj).for_each(|(a, b)| *a += b);
        }

        for it in items.iter_mut() {
            it.kv.len += it.tokens.len();
        }

        // Final norm and lm_head, only for the rows whose logits are wanted.
        let rows = &mut s.rows;
        rows.clear();
        for (i, it) in items.iter().enumerate() {
            let n = it.tokens.len();
            match it.logits {
                Logits::None => {}
                Logits::Last if n > 0 => rows.push(starts[i] + n - 1),
                Logits::Last => {}
                Logits::All => rows.extend(starts[i]..starts[i] + n),
            }
        }
        let rows: &[usize] = rows;
        let sel = grown(&mut s.sel, rows.len() * h);
        for (k, &r) in rows.iter().enumerate() {
            sel[k * h..(k + 1) * h].copy_from_slice(&x[r * h..(r + 1) * h]);
        }
        let seln = grown(&mut s.seln, rows.len() * h);
        ops::rms_norm(sel, &self.norm, c.rms_norm_eps, seln, h);
        let head = self.lm_head.as_ref().unwrap_or(&self.embed_tokens);
        let v = c.vocab_size;
        let logits = grown(&mut s.logits, rows.len() * v);
        head.matmul_t(seln, None, logits, rows.len());

        let mut out = Vec::with_capacity(items.len());
        let mut k = 0;
        for it in items.iter() {
            let n = it.tokens.len();
            let take = match it.logits {
                Logits::None => 0,
                Logits::Last => usize::from(n > 0),
                Logits::All => n,
            };
            out.push(logits[k * v..(k + take) * v].to_vec());
            k += take;
        }
        Ok(out)
    }
}

/// Checks every item of a batch (token ids inside the vocabulary, lengths inside the context)
/// and reserves the KV blocks all of them need, before anything is computed: on error no
/// sequence has changed. Every backend's forward starts here.
pub(crate) fn reserve_batch(c: &ModelConfig, pool: &mut KvPool, items: &mut [BatchItem<'_>]) -> Result<()> {
    let mut needed = 0;
    for it in items.iter() {
        if let Some(&bad) = it.tokens.iter().find(|&&t| t as usize >= c.vocab_size) {
            return Err(EngineError::Invalid(format!("token id {bad} is outside the vocabulary of {}", c.vocab_size)));
        }
        let len = it.kv.len + it.tokens.len();
        if len > c.max_position_embeddings {
            return Err(EngineError::ContextOverflow { len, max: c.max_position_embeddings });
        }
        needed += pool.blocks_needed(it.kv, len);
    }
    if needed > pool.free_blocks() {
        return Err(EngineError::KvFull { needed, free: pool.free_blocks() });
    }
    for it in items.iter_mut() {
        let len = it.kv.len + it.tokens.len();
        pool.reserve(it.kv, len)?;
    }
    Ok(())
}

/// A checkpoint opened for loading: a GGUF file with its header and metadata read, or a
/// directory with its config (its weight files are opened when the model is built, after the
/// tokenizer).
enum Opened {
    Gguf(crate::gguf::GgufFile, ModelConfig),
    Dir(PathBuf, ModelConfig),
}

impl Opened {
    fn open(dir: &Path) -> Result<Opened> {
        if crate::gguf::is_gguf(dir) && !dir.is_dir() {
            let (file, config) = crate::gguf::open_model(dir)?;
            return Ok(Opened::Gguf(file, config));
        }
        if !dir.is_dir() {
            return Err(EngineError::Io {
                path: dir.to_path_buf(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "checkpoint directory not found"),
            });
        }
        Ok(Opened::Dir(dir.to_path_buf(), ModelConfig::from_file(&dir.join("config.json"))?))
    }

    /// Whether building the model as `weights` asks runs the auto check's sample.
    fn samples(&self, weights: Weights) -> bool {
        weights == Weights::Auto && !matches!(self, Opened::Gguf(f, _) if f.is_quantized())
    }

    /// The checkpoint's tokenizer.
    fn tokenizer(&self) -> Result<Tokenizer> {
        match self {
            Opened::Gguf(file, config) => Tokenizer::load_with(&file.path, &config.eos_token_ids, Some(file)),
            Opened::Dir(dir, config) => Tokenizer::load(dir, &config.eos_token_ids),
        }
    }

    /// The model, held as `weights` asks; `tokenizer` encodes the auto check's sample.
    fn into_model(self, weights: Weights, tokenizer: Option<&Tokenizer>) -> Result<Model> {
        let sample = if self.samples(weights) { sample_ids(tokenizer) } else { None };
        match self {
            Opened::Gguf(mut file, config) => Model::from_gguf(&mut file, config, weights, sample.as_deref()),
            Opened::Dir(dir, config) => {
                Model::from_floats(config, &WeightFiles::open_dir(&dir)?, weights, sample.as_deref())
            }
        }
    }
}

/// Most new tokens one pass through the layers takes (see `Model::forward`).
const MICRO_BATCH: usize = 512;

/// New tokens of one sequence at or above which attention uses matrix products.
const PREFILL_GEMM_MIN: usize = 8;

/// One KV head's first `total` positions in a sequence's blocks: per block, the position of its
/// first slot and its `[count][head_dim]` elements (`kv` 0 for keys, 1 for values).
fn kv_slabs<'a, T: HostElem>(
    pool: &'a KvPool,
    blocks: &'a [u32],
    li: usize,
    kv: usize,
    g: usize,
    total: usize,
) -> impl Iterator<Item = (usize, &'a [T])> + 'a {
    let shape = pool.shape();
    let (bs, hd, off) = (shape.block_size, shape.head_dim, shape.slab(li, kv, g));
    blocks
        .iter()
        .enumerate()
        .map(move |(b, &bid)| (b * bs, bid))
        .take_while(move |&(lo, _)| lo < total)
        .map(move |(lo, bid)| (lo, &T::of(pool.block(bid))[off..off + bs.min(total - lo) * hd]))
}

/// One attention task: query heads `h0..h0 + heads` (all reading KV head `g`) of one sequence
/// in layer `li`, for its `n` new tokens (QKV rows from `row0`) after `p0` earlier ones.
struct Attn<'a> {
    pool: &'a KvPool,
    blocks: &'a [u32],
    li: usize,
    g: usize,
    qkv: &'a [f32],
    row0: usize,
    n: usize,
    p0: usize,
    h0: usize,
    heads: usize,
    qkv_dim: usize,
    scale: f32,
}

/// Causal attention of a few new tokens (decode): dot products straight from the KV blocks, no
/// copies; the task's query heads take turns on each block while it is in L1. Output: per head,
/// per token, `head_dim` values.
fn attend_decode<T: HostElem>(a: &Attn<'_>, scores: &mut Vec<f32>, out: &mut Vec<f32>) {
    let (n, p0, heads) = (a.n, a.p0, a.heads);
    let hd = a.pool.shape().head_dim;
    let stride = p0 + n;
    // Sums accumulate into `out`: zeroed (within its capacity, no allocation once grown).
    out.clear();
    out.resize(heads * n * hd, 0.0);
    // Room for contexts up to the next power of two, so that the buffer grows a handful of
    // times in a sequence's life, not once per step.
    scores.reserve((heads * stride.next_power_of_two()).saturating_sub(scores.len()));
    let scores = grown(scores, heads * stride);
    for j in 0..n {
        let r = (a.row0 + j) * a.qkv_dim;
        let total = p0 + j + 1;
        for (lo, keys) in kv_slabs::<T>(a.pool, a.blocks, a.li, 0, a.g, total) {
            let cnt = keys.len() / hd;
            for k in 0..heads {
                let q = &a.qkv[r + (a.h0 + k) * hd..r + (a.h0 + k + 1) * hd];
                ops::attn_scores(q, keys, a.scale, &mut scores[k * stride + lo..k * stride + lo + cnt]);
            }
        }
        for k in 0..heads {
            ops::softmax(&mut scores[k * stride..k * stride + total]);
        }
        for (lo, values) in kv_slabs::<T>(a.pool, a.blocks, a.li, 1, a.g, total) {
            let cnt = values.len() / hd;
            for k in 0..heads {
                let o = &mut out[(k * n + j) * hd..(k * n + j + 1) * hd];
                ops::attn_weighted_sum(&scores[k * stride + lo..k * stride + lo + cnt], values, o);
            }
        }
    }
}

/// One KV head's keys (`kv` 0) or values (1) of a sequence's first `out.len() / head_dim`
/// positions, as f32.
fn widen_kv<T: HostElem>(pool: &KvPool, blocks: &[u32], li: usize, kv: usize, g: usize, out: &mut [f32]) {
    let hd = pool.shape().head_dim;
    for (lo, slab) in kv_slabs::<T>(pool, blocks, li, kv, g, out.len() / hd) {
        T::widen(slab, &mut out[lo * hd..lo * hd + slab.len()]);
    }
}

/// Causal attention of one query head for many new tokens (prefill) on its KV head's keys and
/// values widened to f32 (`k`, `v`: `p0 + n` rows each): `softmax(mask(Q·Kᵀ)·scale)·V` as two
/// matrix products. Output in `out` (per token, `head_dim` values); `scores` and `q` are its
/// scratch.
fn attend_prefill(a: &Attn<'_>, k: &[f32], v: &[f32], [scores, out, q]: [&mut Vec<f32>; 3]) {
    debug_assert_eq!(a.heads, 1);
    let (qkv, row0, n, p0, hh, qkv_dim, scale) = (a.qkv, a.row0, a.n, a.p0, a.h0, a.qkv_dim, a.scale);
    let hd = a.pool.shape().head_dim;
    let total = p0 + n;
    debug_assert!(k.len() == total * hd && v.len() == total * hd);
    let q = grown(q, n * hd);
    for j in 0..n {
        let r = (row0 + j) * qkv_dim + hh * hd;
        q[j * hd..(j + 1) * hd].copy_from_slice(&qkv[r..r + hd]);
    }
    // Tiles of query rows: a tile sees keys up to its last row only (the causal mask skips the
    // rest), and its scores stay small enough for the cache however long the prompt is.
    out.clear();
    out.resize(n * hd, 0.0);
    let scores = grown(scores, PREFILL_TILE.min(n) * total);
    for j0 in (0..n).step_by(PREFILL_TILE) {
        let j1 = (j0 + PREFILL_TILE).min(n);
        let (rows, vis) = (j1 - j0, p0 + j1);
        let sc = &mut scores[..rows * vis];
        ops::matmul_single(&q[j0 * hd..j1 * hd], &k[..vis * hd], sc, rows, hd, vis, true);
        for (j, row) in sc.chunks_exact_mut(vis).enumerate() {
            let visible = p0 + j0 + j + 1;
            row[..visible].iter_mut().for_each(|x| *x *= scale);
            ops::softmax(&mut row[..visible]);
            row[visible..].iter_mut().for_each(|x| *x = 0.0);
        }
        ops::matmul_single(sc, &v[..vis * hd], &mut out[j0 * hd..j1 * hd], rows, vis, hd, false);
    }
}

/// Query rows per tile of prefill attention.
const PREFILL_TILE: usize = 64;
