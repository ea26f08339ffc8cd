//! The one interface above the engine's two backends: the CPU [`Model`] and, with the `cuda`
//! feature, the CUDA model. The scheduler and the server hold a [`Backend`] and never know which
//! one runs: both take the same [`BatchItem`]s over a [`KvPool`] with the same block layout, so
//! prefix reuse, forks and supersession work unchanged.
//!
//! Token choice goes through [`Backend::step`]: the CPU backend samples on the host from the
//! logits with each request's seeded [`Sampler`], exactly as before; the CUDA backend chooses on
//! the device and brings back only token ids.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use crate::config::ModelConfig;
use crate::error::{EngineError, Result};
use crate::kv::{KvDtype, KvPool, KvShape};
use crate::model::Weights;
use crate::model::{BatchItem, Logits, Model};
use crate::sampling::{Rng, Sampler, SamplingParams};
use crate::tokenizer::Tokenizer;

/// Where the model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    Cpu,
    /// A CUDA device by ordinal (`cuda` is `cuda:0`).
    Cuda(usize),
}

impl Device {
    /// Parses `cpu`, `cuda` or `cuda:N`.
    pub fn parse(s: &str) -> std::result::Result<Device, String> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => Ok(Device::Cuda(n)),
                _ => Err(format!("--device {s} is not known; use cpu, cuda or cuda:N")),
            },
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// A request's token chooser: the seeded host [`Sampler`] and its twin generator, seeded alike,
/// which gives the device the same uniform draws the host sampler would use.
#[derive(Debug, Clone)]
pub struct Picker {
    sampler: Sampler,
    draws: Rng,
    /// Token ids the next choice is limited to (once), if any.
    next_only: Option<Arc<[u32]>>,
}

impl Picker {
    /// A chooser for `params`; a missing seed is drawn from the clock once, for both generators.
    pub fn new(mut params: SamplingParams) -> Picker {
        let seed = params.seed.unwrap_or_else(|| {
            let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            t.as_nanos() as u64 ^ (std::process::id() as u64).rotate_left(32)
        });
        params.seed = Some(seed);
        Picker { sampler: Sampler::new(params), draws: Rng::new(seed), next_only: None }
    }

    /// Limits the next choice (only that one) to the token ids in `allowed`, e.g. for token
    /// healing, where the first token must begin with the text taken off the prompt's end. An
    /// empty set limits nothing.
    pub fn restrict_next(&mut self, allowed: Arc<[u32]>) {
        self.next_only = (!allowed.is_empty()).then_some(allowed);
    }

    /// Whether the next choice is limited (such a choice is made on the host).
    pub fn is_restricted(&self) -> bool {
        self.next_only.is_some()
    }

    pub fn params(&self) -> &SamplingParams {
        self.sampler.params()
    }

    /// Chooses from logits on the host.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        match self.next_only.take() {
            Some(allowed) => {
                let mut masked = vec![f32::NEG_INFINITY; logits.len()];
                for &id in allowed.iter() {
                    if let Some(&l) = logits.get(id as usize) {
                        masked[id as usize] = l;
                    }
                }
                self.sampler.sample(&masked)
            }
            None => self.sampler.sample(logits),
        }
    }

    /// The next uniform draw for a device-side choice (greedy choices draw nothing, as on the host).
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    fn uniform(&mut self) -> f64 {
        if self.params().is_greedy() {
            0.0
        } else {
            self.draws.next_f64()
        }
    }
}

/// One token to choose in a [`Backend::step`]: from the last position of batch item `item`,
/// which must ask for logits.
pub struct Pick<'a> {
    pub item: usize,
    pub picker: &'a mut Picker,
}

enum Inner {
    Cpu(Box<Model>),
    #[cfg(feature = "cuda")]
    Cuda(Box<crate::cuda::CudaModel>),
}

/// A loaded model on the device it runs on.
pub struct Backend {
    inner: Inner,
    device: Device,
}

impl Backend {
    /// Loads the checkpoint in `dir` (Hugging Face layout) onto `device`.
    pub fn load(dir: &Path, device: Device) -> Result<Backend> {
        Self::load_as(dir, device, Weights::Stored)
    }

    /// As [`Backend::load`], with the CPU backend's weights held as `weights` asks (see
    /// [`Weights`]). The GPU keeps bf16 / f16.
    /// `dir` may also be a `.gguf` file (CPU only).
    pub fn load_as(dir: &Path, device: Device, weights: impl Into<Weights>) -> Result<Backend> {
        let format = weights.into();
        if crate::gguf::is_gguf(dir) && !dir.is_dir() {
            return match device {
                Device::Cpu => Ok(Backend::cpu(Model::load_as(dir, format)?)),
                _ => Err(EngineError::Device(format!(
                    "--device {device}: GGUF files run on the CPU only so far; use --device cpu or a checkpoint directory"
                ))),
            };
        }
        if !dir.is_dir() {
            return Err(EngineError::Io {
                path: dir.to_path_buf(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "checkpoint directory not found"),
            });
        }
        match device {
            Device::Cpu => Ok(Backend::cpu(Model::load_as(dir, format)?)),
            #[cfg(feature = "cuda")]
            Device::Cuda(n) => {
                let gpu = std::sync::Arc::new(crate::cuda::Gpu::open(n)?);
                Ok(Backend { inner: Inner::Cuda(Box::new(crate::cuda::CudaModel::load(dir, gpu)?)), device })
            }
            #[cfg(not(feature = "cuda"))]
            Device::Cuda(_) => Err(EngineError::Device(format!(
                "--device {device}: this build has no CUDA backend; rebuild with `--features cuda` or use --device cpu"
            ))),
        }
    }

    /// [`Backend::load_as`] and the checkpoint's [`Tokenizer`] together: a GGUF file's header
    /// and metadata are then read once, for both.
    pub fn load_with_tokenizer(
        dir: &Path,
        device: Device,
        weights: impl Into<Weights>,
    ) -> Result<(Backend, Tokenizer)> {
        if device == Device::Cpu {
            let (model, tokenizer) = Model::load_with_tokenizer(dir, weights)?;
            crate::release_freed_heap();
            return Ok((Backend::cpu(model), tokenizer));
        }
        let backend = Backend::load_as(dir, device, weights)?;
        let tokenizer = Tokenizer::load(dir, &backend.config().eos_token_ids)?;
        crate::release_freed_heap();
        Ok((backend, tokenizer))
    }

    /// The CPU backend around an already loaded model.
    pub fn cpu(model: Model) -> Backend {
        Backend { inner: Inner::Cpu(Box::new(model)), device: Device::Cpu }
    }

    /// The CUDA model, when this backend runs on a GPU (for its checks and benchmarks).
    #[cfg(feature = "cuda")]
    pub fn cuda(&self) -> Option<&crate::cuda::CudaModel> {
        match &self.inner {
            Inner::Cuda(m) => Some(m),
            Inner::Cpu(_) => None,
        }
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// The device in words (the GPU's name on CUDA).
    pub fn describe(&self) -> String {
        match &self.inner {
            Inner::Cpu(m) => format!("cpu, weights {}", m.describe_weights()),
            #[cfg(feature = "cuda")]
            Inner::Cuda(m) => format!("{} ({})", self.device, m.gpu().name),
        }
    }

    pub fn config(&self) -> &ModelConfig {
        match &self.inner {
            Inner::Cpu(m) => &m.config,
            #[cfg(feature = "cuda")]
            Inner::Cuda(m) => &m.config,
        }
    }

    /// Number of parameters (tied embeddings counted once).
    pub fn num_params(&self) -> usize {
        match &self.inner {
            Inner::Cpu(m) => m.num_params(),
            #[cfg(feature = "cuda")]
            Inner::Cuda(m) => m.num_params(),
        }
    }

    /// The KV block geometry, `DEFAULT_BLOCK_SIZE` tokens per block.
    pub fn kv_shape(&self) -> KvShape {
        match &self.inner {
            Inner::Cpu(m) => m.kv_shape(crate::DEFAULT_BLOCK_SIZE),
            #[cfg(feature = "cuda")]
            Inner::Cuda(m) => m.kv_shape(),
        }
    }

    /// A KV budget that suits the device when none is configured: 512 MiB of host memory, or
    /// half the GPU memory left after the weights, at most 16 GiB.
    pub fn default_kv_bytes(&self) -> usize {
        match &self.inner {
            Inner::Cpu(_) => 512 << 20,
            #[cfg(feature = "cuda")]
            Inner::Cuda(m) => m.gpu().memory().map_or(1 << 30, |(free, _)| (free / 2).min(16 << 30)),
        }
    }

    /// A KV pool for this model, as many blocks as `budget_bytes` holds, where the model can use
    /// it: f16 blocks in host memory for the CPU backend ([`KvDtype::default`]).
    pub fn kv_pool(&self, budget_bytes: usize) -> Result<KvPool> {
        self.kv_pool_as(budget_bytes, KvDtype::default())
    }

    /// As [`Backend::kv_pool`], with host blocks of the given type (the CUDA backend keeps its
    /// own: the checkpoint's bf16 / f16).
    pub fn kv_pool_as(&self, budget_bytes: usize, dtype: KvDtype) -> Result<KvPool> {
        match &self.inner {
            Inner::Cpu(m) => Ok(KvPool::with_budget_as(m.kv_shape(crate::DEFAULT_BLOCK_SIZE), budget_bytes, dtype)),
            #[cfg(feature = "cuda")]
            Inner::Cuda(m) => {
                let _ = dtype;
                m.kv_pool(budget_bytes)
            }
        }
    }

    /// Appends each item's tokens to its sequence and returns the logits each asked for
    /// (`vocab_size` floats per returned position), as [`Model::forward`].
    pub fn forward(&self, pool: &mut KvPool, items: &mut [BatchItem<'_>]) -> Result<Vec<Vec<f32>>> {
        match &self.inner {
            Inner::Cpu(m) => {
                check_host_pool(pool)?;
                m.forward(pool, items)
            }
            #[cfg(feature = "cuda")]
            Inner::Cuda(m) => match m.step(pool, items, None)? {
                crate::cuda::StepOutput::Logits(l) => Ok(l),
                crate::cuda::StepOutput::Tokens(_) => Err(EngineError::Device("a logits step returned tokens".into())),
            },
        }
    }

    /// One step that chooses tokens: appends each item's tokens, then picks one token per
    /// [`Pick`] (in order) from its item's last position. Items that are only prefilled ask for
    /// [`Logits::None`]. Nothing changes when the step is refused.
    pub fn step(&self, pool: &mut KvPool, items: &mut [BatchItem<'_>], picks: &mut [Pick<'_>]) -> Result<Vec<u32>> {
        for p in picks.iter() {
            match items.get(p.item) {
                Some(it) if it.logits != Logits::None && !it.tokens.is_empty() => {}
                _ => return Err(EngineError::Invalid("a pick must name a batch item that computes logits".into())),
            }
        }
        match &self.inner {
            Inner::Cpu(m) => {
                check_host_pool(pool)?;
                let logits = m.forward(pool, items)?;
                Ok(pick_on_host(&logits, m.config.vocab_size, picks))
            }
            // A limited choice needs the whole row on the host: the step brings back logits.
            #[cfg(feature = "cuda")]
            Inner::Cuda(m) if picks.iter().any(|p| p.picker.is_restricted()) => {
                let logits = match m.step(pool, items, None)? {
                    crate::cuda::StepOutput::Logits(l) => l,
                    crate::cuda::StepOutput::Tokens(_) => {
                        return Err(EngineError::Device("a logits step returned tokens".into()))
                    }
                };
                Ok(pick_on_host(&logits, m.config.vocab_size, picks))
            }
            #[cfg(feature = "cuda")]
            Inner::Cuda(m) => {
                let uniforms: Vec<f64> = picks.iter_mut().map(|p| p.picker.uniform()).collect();
                let specs: Vec<crate::cuda::DevicePick> = picks
                    .iter()
                    .zip(&uniforms)
                    .map(|(p, &uniform)| crate::cuda::DevicePick { item: p.item, params: p.picker.params(), uniform })
                    .collect();
                let out = match m.step(pool, items, Some(&specs))? {
                    crate::cuda::StepOutput::Tokens(t) => t,
                    crate::cuda::StepOutput::Logits(_) => {
                        return Err(EngineError::Device("a token step returned logits".into()))
                    }
                };
                drop(specs);
                // Rows the device could not cut to a small candidate set are sampled here.
                Ok(out
                    .into_iter()
                    .zip(picks.iter_mut())
                    .map(|(o, p)| match o {
                        Ok(id) => id,
                        Err(row) => p.picker.sample(&row),
                    })
                    .collect())
            }
        }
    }
}

/// Each pick's token from the last `vocab` logits of its item, on the host.
fn pick_on_host(logits: &[Vec<f32>], vocab: usize, picks: &mut [Pick<'_>]) -> Vec<u32> {
    picks
        .iter_mut()
        .map(|p| {
            let l = &logits[p.item];
            p.picker.sample(&l[l.len() - vocab..])
        })
        .collect()
}

/// The CPU model reads its blocks from host memory; a device pool is refused, not indexed.
fn check_host_pool(pool: &KvPool) -> Result<()> {
    if pool.is_host() {
        Ok(())
    } else {
        Err(EngineError::Invalid("the CPU backend needs a KV pool in host memory".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_parse_and_print() {
        assert_eq!(Device::parse("cpu"), Ok(Device::Cpu));
        assert_eq!(Device::parse("cuda"), Ok(Device::Cuda(0)));
        assert_eq!(Device::parse("cuda:3"), Ok(Device::Cuda(3)));
        assert!(Device::parse("cuda:x").unwrap_err().contains("cuda:N"));
        assert!(Device::parse("tpu").is_err());
        assert_eq!(Device::Cuda(1).to_string(), "cuda:1");
    }

    #[test]
    fn a_restricted_choice_picks_among_the_allowed_tokens_once() {
        let mut p = Picker::new(SamplingParams::default());
        let logits = [0.0, 5.0, 1.0, 3.0, -2.0];
        p.restrict_next(Arc::from(vec![0u32, 3, 4, 99]));
        assert!(p.is_restricted());
        assert_eq!(p.sample(&logits), 3, "the best of the allowed ids");
        assert!(!p.is_restricted());
        assert_eq!(p.sample(&logits), 1, "the next choice is free again");
        p.restrict_next(Arc::from(Vec::<u32>::new()));
        assert!(!p.is_restricted(), "an empty set limits nothing");
        let mut t = Picker::new(SamplingParams { temperature: 1.0, top_k: 0, top_p: 1.0, seed: Some(5) });
        for _ in 0..50 {
            t.restrict_next(Arc::from(vec![2u32, 4]));
            assert!(matches!(t.sample(&logits), 2 | 4));
        }
    }

    #[test]
    fn the_twin_generator_draws_what_the_sampler_draws() {
        let params = SamplingParams { temperature: 0.7, top_k: 0, top_p: 1.0, seed: Some(11) };
        let mut a = Picker::new(params.clone());
        let mut b = Rng::new(11);
        assert_eq!(a.uniform(), b.next_f64());
        let greedy = Picker::new(SamplingParams { seed: None, ..SamplingParams::default() });
        assert!(greedy.params().seed.is_some());
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_is_an_error_that_says_what_to_do() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llama-gqa-f32");
        let e = Backend::load(&dir, Device::Cuda(0)).err().expect("no CUDA in this build").to_string();
        assert!(e.contains("--features cuda") && e.contains("--device cpu"), "{e}");
    }
}
