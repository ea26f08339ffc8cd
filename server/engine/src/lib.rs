//! ghostline's inference engine.
//!
//! Loads a Hugging Face checkpoint of the Llama or Qwen2 family (config.json, safetensors,
//! tokenizer.json) and runs it on the CPU, matching transformers' logits. The pieces:
//!
//! - [`config`]: config.json into a validated [`ModelConfig`].
//! - [`weights`]: memory-mapped safetensors (single or sharded), f32/f16/bf16.
//! - [`gguf`]: llama.cpp's GGUF files (metadata, tokenizer, block-quantized tensors).
//! - [`matrix`]: weight matrices in their storage formats (f32, f16, bf16, ggml's Q8_0, Q4_0,
//!   Q4_1, Q4_K, Q5_K, Q6_K) and the products on them.
//! - [`tokenizer`]: encode/decode with the checkpoint's special tokens; streaming decode.
//! - [`model`]: the forward pass, batched over sequences of different lengths.
//! - [`weight_choice`]: which format the weights are held in (`--weights`, the default's check).
//! - [`kv`]: the paged KV cache (fixed-size, reference-counted blocks).
//! - [`sampling`], [`generate`](mod@generate): token choice, stop strings, one-sequence generation.
//! - [`backend`]: the one interface over the CPU model and (feature `cuda`) the CUDA model.
//! - [`cpu`]: the caller's CPU options, the instruction set every kernel dispatches on, the
//!   thread pool; [`matrix`], [`ops`]: the kernels.
//!
//! Invariant: the engine knows nothing about HTTP, requests or users; it turns token ids into
//! logits and logits into token ids, and reports every bad input as an [`EngineError`].

pub mod backend;
pub mod config;
pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod error;
#[cfg(test)]
mod fuzz;
pub mod generate;
pub mod gguf;
pub mod kv;
pub mod matrix;
pub mod model;
pub mod ops;
pub mod pool;
pub mod sampling;
pub mod tokenizer;
pub mod weight_choice;
pub mod weights;

use std::path::{Path, PathBuf};

pub use backend::{Backend, Device, Pick, Picker};
pub use config::{Arch, ModelConfig, RopeScaling};
pub use cpu::{CpuOptions, KernelCap};
pub use error::{EngineError, Result};
pub use generate::{generate, Finish, GenerateParams, Generation, StopMatcher};
pub use kv::{BlockId, KvDtype, KvPool, KvShape, SeqKv};
pub use matrix::{Matrix, Rounding, WeightFormat};
pub use model::{default_format, Agreement, BatchItem, Logits, Model, Weights, Q8_AUTO_BUDGET};
pub use sampling::{argmax, Sampler, SamplingParams};
pub use tokenizer::{StreamDecoder, Tokenizer};

/// Tokens per KV block unless the caller chooses otherwise.
pub const DEFAULT_BLOCK_SIZE: usize = 16;

/// A checkpoint loaded from disk: the model and its tokenizer.
pub struct Checkpoint {
    pub dir: PathBuf,
    pub model: Model,
    pub tokenizer: Tokenizer,
}

impl Checkpoint {
    /// Loads everything from a checkpoint directory in the Hugging Face layout.
    pub fn load(dir: &Path) -> Result<Self> {
        Self::load_as(dir, Weights::Stored)
    }

    /// Loads a checkpoint with its weight matrices held as `weights` asks (see [`Weights`]; a
    /// format, or `None` for the checkpoint's own precision). `dir` is a checkpoint directory
    /// or a `.gguf` file.
    pub fn load_as(dir: &Path, weights: impl Into<Weights>) -> Result<Self> {
        let (model, tokenizer) = Model::load_with_tokenizer(dir, weights)?;
        release_freed_heap();
        Ok(Checkpoint { dir: dir.to_path_buf(), model, tokenizer })
    }

    /// An f32 KV pool (the reference) for this model with the given memory budget in bytes.
    pub fn kv_pool(&self, budget_bytes: usize) -> KvPool {
        self.kv_pool_as(budget_bytes, KvDtype::F32)
    }

    /// A KV pool of the given type for this model with the given memory budget in bytes.
    pub fn kv_pool_as(&self, budget_bytes: usize, dtype: KvDtype) -> KvPool {
        KvPool::with_budget_as(self.model.kv_shape(DEFAULT_BLOCK_SIZE), budget_bytes, dtype)
    }

    /// Encodes `prompt` and generates a continuation (a convenience for tools and tests).
    pub fn complete(
        &self,
        pool: &mut KvPool,
        prompt: &str,
        params: &GenerateParams,
        on_text: impl FnMut(&str) -> bool,
    ) -> Result<Generation> {
        let ids = self.tokenizer.encode(prompt, true)?;
        generate(&self.model, &self.tokenizer, pool, &ids, params, on_text)
    }

    /// Default generation settings: greedy, stopping at the tokenizer's EOS ids.
    pub fn default_params(&self, max_tokens: usize) -> GenerateParams {
        GenerateParams {
            max_tokens,
            sampling: SamplingParams::default(),
            stop: Vec::new(),
            stop_ids: self.tokenizer.eos_ids.clone(),
        }
    }
}

/// Hands the heap that a load freed (GGUF metadata values, conversion buffers, the tokenizer's
/// JSON) back to the system. glibc keeps freed memory below its top in the process, and raises
/// its mmap threshold after large frees, so without this a loaded model's RSS carries the
/// loader's peak. Elsewhere a no-op.
pub fn release_freed_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages of the allocator's arenas to the system.
    unsafe {
        libc::malloc_trim(0);
    }
}
