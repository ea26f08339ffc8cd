//! Which format a checkpoint's weight matrices are held in (`--weights`), and the check behind
//! the default: [`Weights::Auto`] takes q8 on a CPU with the integer kernels when a code sample
//! ([`SAMPLE`]) run through q8 and through the checkpoint's own precision chooses the same next
//! tokens ([`Agreement`]) and no matrix moves by more than [`Q8_AUTO_BUDGET`]; otherwise the
//! checkpoint's own precision ([`default_format`]).

use crate::config::ModelConfig;
use crate::error::Result;
use crate::kv::{KvDtype, KvPool, SeqKv};
use crate::matrix::WeightFormat;
use crate::model::{BatchItem, Logits, Model};
use crate::tokenizer::Tokenizer;
use crate::weights::{DType, TensorSource};

impl Model {
    /// The model of a checkpoint's float weights, held as `weights` asks: see [`Weights::Auto`]
    /// for the default's choice, which runs `sample` (token ids of [`SAMPLE`]) through both
    /// formats where it has one.
    pub(crate) fn from_floats(
        config: ModelConfig,
        w: &impl TensorSource,
        weights: Weights,
        sample: Option<&[u32]>,
    ) -> Result<Self> {
        let lossless = default_format(w.main_dtype());
        let (format, reason) = match weights {
            Weights::Format(f) => (f, "asked".to_string()),
            Weights::Stored => (lossless, "the checkpoint's own precision".to_string()),
            Weights::Auto => {
                let cpu = crate::cpu::features();
                if cpu.level < crate::cpu::Level::Avx2 {
                    (lossless, format!("auto: the {} kernels run q8 slower than {lossless}", cpu.describe()))
                } else {
                    // The reference first, then q8, so that only one of them is held at a time.
                    let reference = match sample {
                        Some(ids) => Some(Self::from_weights(config.clone(), w, lossless)?.sample_logits(ids)?),
                        None => None,
                    };
                    let mut m = Self::from_weights(config.clone(), w, WeightFormat::Q8)?;
                    if let (Some(ids), Some(reference)) = (sample, &reference) {
                        let vocab = m.config.vocab_size;
                        m.agreement = Some(Agreement::of(&m.sample_logits(ids)?, reference, vocab, lossless));
                    }
                    let over = match (&m.worst_rounding, &m.agreement) {
                        (Some((name, rms)), _) if *rms > Q8_AUTO_BUDGET => Some(format!(
                            "q8 would change {name} by {:.2}% (RMS), over the {:.0}% budget",
                            rms * 100.0,
                            Q8_AUTO_BUDGET * 100.0
                        )),
                        (_, Some(a)) if !a.within_budget() => Some(format!("q8 {a}, outside the budget")),
                        _ => None,
                    };
                    match over {
                        Some(why) => {
                            drop(m);
                            (lossless, format!("auto: {why}"))
                        }
                        None => {
                            m.format_reason = format!("auto: fastest on {} kernels, within budget", cpu.describe());
                            return Ok(m);
                        }
                    }
                }
            }
        };
        let mut m = Self::from_weights(config, w, format)?;
        m.format_reason = reason;
        Ok(m)
    }

    /// Every position's logits for `ids` as one sequence, in a KV pool of its own (`ids.len()`
    /// rows of the vocabulary).
    fn sample_logits(&self, ids: &[u32]) -> Result<Vec<f32>> {
        let shape = self.kv_shape(crate::DEFAULT_BLOCK_SIZE);
        let blocks = ids.len().div_ceil(shape.block_size) + 1;
        let mut pool = KvPool::new_as(shape, blocks, KvDtype::default());
        let mut seq = SeqKv::default();
        let out = self.forward(&mut pool, &mut [BatchItem { kv: &mut seq, tokens: ids, logits: Logits::All }])?;
        pool.release(&mut seq);
        Ok(out.into_iter().next().unwrap_or_default())
    }

    /// The weights' format, why, and what converting to it changed, for the load log: e.g.
    /// `q8 (auto: fastest on avx2 kernels, …; changed 0.52% RMS, at most 0.61% in …)`.
    pub fn describe_weights(&self) -> String {
        let mut s = format!("{} ({}", self.format, self.format_reason);
        if let Some(a) = self.agreement.as_ref() {
            s += &format!("; {a}");
        }
        if let Some((name, worst)) = self.worst_rounding.as_ref().filter(|_| self.rounding.err2 > 0.0) {
            s += &format!(
                "; changed {:.2}% RMS, at most {:.2}% in {name}",
                self.rounding.relative_rms() * 100.0,
                worst * 100.0
            );
        }
        s + ")"
    }
}

/// How a checkpoint's weight matrices are to be held (`--weights`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Weights {
    /// The default, fast within an accuracy budget on this CPU. A checkpoint of floats is held
    /// in q8 where the CPU has the integer kernels (AVX2 or AVX-512), unless q8 misses the
    /// budget: on [`SAMPLE`] against the checkpoint's own precision
    /// ([`Agreement::within_budget`]), or a matrix changed by more than [`Q8_AUTO_BUDGET`]. In
    /// its own precision otherwise (the portable kernels run q8 slower than bf16 or f32). A
    /// GGUF file's quantized blocks are computed on as stored.
    #[default]
    Auto,
    /// The checkpoint's own precision ([`default_format`]); a GGUF file's blocks as stored.
    Stored,
    /// Every matrix converted to this format.
    Format(WeightFormat),
}

/// The most [`Weights::Auto`] lets q8 change any one weight matrix: 2% (RMS of the change over
/// RMS of the weights). Q8_0 changes a matrix of roughly normal weights by about 0.5%; the
/// house model's matrices change by 0.5-0.6% and its FIM benchmark moves by less than a point
/// (BENCHMARKS.md). Rounding to 1/127 of a group's largest weight cannot by itself take a group
/// past about 2.2% (half a step over at least that weight / √32); what does is a group scale
/// too small for f16 (weights around 1e-5 and below), which rounds the whole group away. Outliers
/// in the activations are what the sample check ([`Agreement`]) is for.
pub const Q8_AUTO_BUDGET: f64 = 0.02;

/// A few lines of code in two languages that [`Weights::Auto`] runs through q8 and through the
/// checkpoint's own precision at load, teacher-forced, to compare their next-token choices.
pub const SAMPLE: &str = "import os\n\n\ndef read_lines(path):\n    with open(path) as f:\n        return [l.rstrip() for l in f]\n\n\
\nclass Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, item):\n        self.items.append(item)\n\n\
fn main() {\n    let args: Vec<String> = std::env::args().collect();\n    println!(\"{}\", args.len());\n}\n";

/// At most this many tokens of [`SAMPLE`] are run.
const SAMPLE_MAX_TOKENS: usize = 96;

/// The ids of [`SAMPLE`] under a checkpoint's tokenizer (`None` without one).
pub(crate) fn sample_ids(tokenizer: Option<&Tokenizer>) -> Option<Vec<u32>> {
    let mut ids = tokenizer?.encode(SAMPLE, true).ok()?;
    ids.truncate(SAMPLE_MAX_TOKENS);
    (ids.len() >= 2).then_some(ids)
}

/// q8 against the checkpoint's own precision (`reference`) on [`SAMPLE`]: at how many of its
/// positions the two choose the same next token, and the largest change of a logit relative
/// to the reference's largest logit at that position.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Agreement {
    pub same: usize,
    pub positions: usize,
    pub logit_error: f32,
    pub reference: WeightFormat,
}

impl Agreement {
    /// `logits` and `reference` hold one row of `vocab` per position.
    fn of(logits: &[f32], reference: &[f32], vocab: usize, format: WeightFormat) -> Agreement {
        let (mut same, mut logit_error) = (0, 0f32);
        let vocab = vocab.max(1);
        for (a, b) in logits.chunks_exact(vocab).zip(reference.chunks_exact(vocab)) {
            same += usize::from(crate::sampling::argmax(a) == crate::sampling::argmax(b));
            let scale = b.iter().fold(0f32, |m, x| m.max(x.abs())).max(f32::MIN_POSITIVE);
            logit_error = logit_error.max(a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale);
        }
        Agreement { same, positions: reference.len() / vocab, logit_error, reference: format }
    }

    /// The budget: the same next token at [`Q8_AUTO_MIN_AGREEMENT`] of the positions or more,
    /// and no logit moved by more than [`Q8_AUTO_MAX_LOGIT_ERROR`] of the largest.
    pub fn within_budget(&self) -> bool {
        self.same as f64 >= Q8_AUTO_MIN_AGREEMENT * self.positions as f64
            && f64::from(self.logit_error) <= Q8_AUTO_MAX_LOGIT_ERROR
    }
}

impl std::fmt::Display for Agreement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "chose {}'s next token at {} of {} positions of a code sample, logits within {:.1}%",
            self.reference,
            self.same,
            self.positions,
            self.logit_error * 100.0
        )
    }
}

/// See [`Agreement::within_budget`].
pub const Q8_AUTO_MIN_AGREEMENT: f64 = 0.9;
pub const Q8_AUTO_MAX_LOGIT_ERROR: f64 = 0.1;

impl std::str::FromStr for Weights {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "" | "auto" => Ok(Weights::Auto),
            "stored" => Ok(Weights::Stored),
            other => other
                .parse()
                .map(Weights::Format)
                .map_err(|_| format!("unknown weight format {other:?}; use auto, stored, f32, bf16, q8, q4 or q4_1")),
        }
    }
}

impl std::fmt::Display for Weights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Weights::Auto => f.write_str("auto"),
            Weights::Stored => f.write_str("stored"),
            Weights::Format(w) => w.fmt(f),
        }
    }
}

impl From<Option<WeightFormat>> for Weights {
    fn from(f: Option<WeightFormat>) -> Weights {
        f.map_or(Weights::Stored, Weights::Format)
    }
}

impl From<WeightFormat> for Weights {
    fn from(f: WeightFormat) -> Weights {
        Weights::Format(f)
    }
}

/// The format that holds a checkpoint's weights without loss: bf16 for bf16 checkpoints, f32
/// otherwise (f16 does not fit in bf16).
pub fn default_format(stored: Option<DType>) -> WeightFormat {
    match stored {
        Some(DType::BF16) => WeightFormat::Bf16,
        _ => WeightFormat::F32,
    }
}
