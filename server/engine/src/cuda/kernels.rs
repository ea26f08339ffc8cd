//! The project's CUDA kernels (`kernels/*.cu`), compiled at load time with NVRTC for the model's
//! shape (head dim, heads, KV heads, block size and weight type are compile-time constants, so
//! loops over a head unroll and per-lane arrays stay in registers).

use std::sync::Arc;

use cudarc::driver::sys::CUfunction_attribute;
use cudarc::driver::CudaFunction;
use cudarc::nvrtc::{compile_ptx_with_opts, CompileOptions};

use super::{dev_err, Gpu};
use crate::error::{EngineError, Result};

const SOURCES: [&str; 4] = [
    include_str!("../../kernels/common.cuh"),
    include_str!("../../kernels/layers.cu"),
    include_str!("../../kernels/attention.cu"),
    include_str!("../../kernels/sampling.cu"),
];

/// Threads of `sample_tokens` (its `SAMPLE_THREADS`).
pub(crate) const SAMPLE_THREADS: u32 = 1024;
/// Keys per decode partition (`DEC_PART`) and warps per decode block (`DEC_WARPS`).
pub(crate) const DEC_PART: usize = 64;
pub(crate) const DEC_WARPS: u32 = 4;
/// (query, head) rows per prefill tile (`PF_TILE_ROWS`), warps per tile, keys per smem tile.
pub(crate) const PF_TILE_ROWS: usize = 16;
pub(crate) const PF_WARPS: u32 = 4;
const PF_KEYS: usize = 32;

/// The compile-time shape of the kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct KernelShape {
    pub head_dim: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub block_size: usize,
    pub f16: bool,
}

impl KernelShape {
    /// Dynamic shared memory of `attention_prefill`: K tile (padded), V tile, Q tile, in f32.
    pub(crate) fn prefill_smem_bytes(&self) -> usize {
        4 * (PF_KEYS * (self.head_dim + 1) + PF_KEYS * self.head_dim + PF_TILE_ROWS * self.head_dim)
    }
}

/// Every kernel of the forward pass, loaded for one model.
pub(crate) struct Kernels {
    pub embed: CudaFunction,
    pub add_rms_norm: CudaFunction,
    pub qkv_rope_store: CudaFunction,
    pub swiglu: CudaFunction,
    pub attention_decode: CudaFunction,
    pub attention_merge: CudaFunction,
    pub attention_prefill: CudaFunction,
    pub sample_tokens: CudaFunction,
}

impl Kernels {
    pub(crate) fn compile(gpu: &Arc<Gpu>, shape: KernelShape) -> Result<Kernels> {
        if !shape.head_dim.is_multiple_of(2)
            || shape.head_dim > 512
            || !shape.heads.is_multiple_of(shape.kv_heads.max(1))
        {
            return Err(EngineError::Device(format!(
                "the CUDA kernels need an even head_dim of at most 512 and heads divisible by KV heads \
                 (head_dim {}, {} heads, {} KV heads)",
                shape.head_dim, shape.heads, shape.kv_heads
            )));
        }
        let group = shape.heads / shape.kv_heads.max(1);
        if 4 * DEC_WARPS as usize * group * shape.head_dim > 48 * 1024 {
            return Err(EngineError::Device(format!(
                "the CUDA decode kernel holds at most 3072 (query heads per KV head x head_dim) values; this \
                 model has {group} x {}",
                shape.head_dim
            )));
        }
        let (major, minor) = gpu.ctx.compute_capability().map_err(dev_err("reading the compute capability"))?;
        if (major, minor) < (7, 5) {
            return Err(EngineError::Device(format!(
                "{} has compute capability {major}.{minor}; the CUDA backend (CUDA 13) needs 7.5 (Turing) or newer",
                gpu.name
            )));
        }
        let source = SOURCES.join("\n");
        let opts = CompileOptions {
            options: vec![
                format!("--gpu-architecture=compute_{major}{minor}"),
                format!("-DHEAD_DIM={}", shape.head_dim),
                format!("-DN_HEADS={}", shape.heads),
                format!("-DN_KV_HEADS={}", shape.kv_heads),
                format!("-DBLOCK_SIZE={}", shape.block_size),
                format!("-DUSE_F16={}", u8::from(shape.f16)),
            ],
            name: Some("ghostline_kernels.cu".into()),
            ..Default::default()
        };
        let ptx = compile_ptx_with_opts(source, opts).map_err(|e| {
            let log = match &e {
                cudarc::nvrtc::CompileError::CompileError { log, .. } => log.to_string_lossy().into_owned(),
                other => other.to_string(),
            };
            EngineError::Device(format!("NVRTC could not compile the kernels: {log}"))
        })?;
        let module = gpu.ctx.load_module(ptx).map_err(dev_err("loading the compiled kernels"))?;
        let f = |name: &str| module.load_function(name).map_err(dev_err("loading a kernel"));
        let k = Kernels {
            embed: f("embed")?,
            add_rms_norm: f("add_rms_norm")?,
            qkv_rope_store: f("qkv_rope_store")?,
            swiglu: f("swiglu")?,
            attention_decode: f("attention_decode")?,
            attention_merge: f("attention_merge")?,
            attention_prefill: f("attention_prefill")?,
            sample_tokens: f("sample_tokens")?,
        };
        let smem = shape.prefill_smem_bytes();
        if smem > 48 * 1024 {
            k.attention_prefill
                .set_attribute(CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, smem as i32)
                .map_err(dev_err("raising the prefill kernel's shared memory"))?;
        }
        Ok(k)
    }
}
