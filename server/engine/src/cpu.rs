//! The CPU the engine computes on: the options the caller chooses ([`CpuOptions`]: threads,
//! a cap on the kernel set, native bf16 products), the instruction set detected once under
//! that cap ([`Features`]), and the thread pool sized by them.
//!
//! Every kernel family (the weight products in [`crate::matrix`], the activation kernels in
//! [`crate::ops`]: dot products, softmax, SwiGLU, attention, RMSNorm) picks its variant from
//! [`features`], so a cap of `portable` runs the portable code everywhere. The engine reads
//! no environment variable: the binaries turn theirs (`GHOSTLINE_THREADS`,
//! `GHOSTLINE_KERNELS`, `GHOSTLINE_BF16_NATIVE`) into a [`CpuOptions`] and hand it to
//! [`configure`] before the first forward. Without a call, the defaults hold (every core,
//! the best kernels, native bf16 off).

use std::str::FromStr;
use std::sync::OnceLock;

use crate::error::{EngineError, Result};
use crate::pool::ThreadPool;

/// The best kernel set the engine may use (it uses the best the CPU has below this).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KernelCap {
    #[default]
    Auto,
    Avx512,
    Avx2,
    Portable,
}

impl FromStr for KernelCap {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "" | "auto" => Ok(KernelCap::Auto),
            "avx512" => Ok(KernelCap::Avx512),
            "avx2" => Ok(KernelCap::Avx2),
            "portable" => Ok(KernelCap::Portable),
            other => Err(format!("unknown kernel set {other:?}; use auto, avx512, avx2 or portable")),
        }
    }
}

/// How the engine uses the CPU, chosen by the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CpuOptions {
    /// Threads a parallel region runs on (`None`: one per available core).
    pub threads: Option<usize>,
    /// The best kernel set to use.
    pub kernels: KernelCap,
    /// bf16 weights meet inputs rounded to bf16 in native bf16 products where the CPU has them
    /// (AVX-512 BF16): faster, about 1e-2 relative off the f32 products of the same weights.
    pub bf16_native: bool,
}

/// A vector width the kernels are written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Plain Rust, any CPU.
    Portable,
    /// AVX2 + FMA + F16C.
    Avx2,
    /// AVX2's features plus AVX-512 F / BW / VL.
    Avx512,
}

/// The instruction set the kernels may use: a level, and the extensions of the AVX-512 level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Features {
    pub level: Level,
    /// AVX-512 VNNI (`vpdpbusd`), only with `level == Avx512`.
    pub vnni: bool,
    /// AVX-512 BF16 (`vdpbf16ps`), only with `level == Avx512`.
    pub bf16: bool,
}

impl Features {
    /// The portable kernels only.
    pub const PORTABLE: Features = Features { level: Level::Portable, vnni: false, bf16: false };

    /// What this CPU has, capped by `cap`.
    pub fn detect(cap: KernelCap) -> Features {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            let avx2 = has!("avx2") && has!("fma") && has!("f16c");
            let avx512 = avx2 && has!("avx512f") && has!("avx512bw") && has!("avx512vl");
            let level = match cap {
                KernelCap::Portable => Level::Portable,
                _ if !avx2 => Level::Portable,
                KernelCap::Avx2 => Level::Avx2,
                _ if avx512 => Level::Avx512,
                _ => Level::Avx2,
            };
            let ext = level == Level::Avx512;
            Features { level, vnni: ext && has!("avx512vnni"), bf16: ext && has!("avx512bf16") }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = cap;
            Features::PORTABLE
        }
    }

    /// For logs: `avx512 (vnni, bf16)`, `avx2`, `portable`.
    pub fn describe(&self) -> String {
        let level = match self.level {
            Level::Portable => "portable",
            Level::Avx2 => "avx2",
            Level::Avx512 => "avx512",
        };
        let ext: Vec<&str> = [("vnni", self.vnni), ("bf16", self.bf16)].iter().filter(|e| e.1).map(|e| e.0).collect();
        if ext.is_empty() {
            level.to_string()
        } else {
            format!("{level} ({})", ext.join(", "))
        }
    }
}

struct Cpu {
    options: CpuOptions,
    features: Features,
    pool: ThreadPool,
}

static CPU: OnceLock<Cpu> = OnceLock::new();

fn cpu_with(options: CpuOptions) -> &'static Cpu {
    CPU.get_or_init(|| {
        let threads = options.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        Cpu { options, features: Features::detect(options.kernels), pool: ThreadPool::new(threads.max(1)) }
    })
}

fn cpu() -> &'static Cpu {
    cpu_with(CpuOptions::default())
}

/// Fixes the engine's CPU options for the life of the process. Call it before the first
/// forward; calling it again with the same options is fine, with other ones an error (the
/// kernels and the pool are already chosen).
pub fn configure(options: CpuOptions) -> Result<()> {
    let cpu = cpu_with(options);
    if cpu.options == options {
        Ok(())
    } else {
        Err(EngineError::Invalid(format!(
            "the engine's CPU options are already fixed as {:?}; {options:?} cannot replace them",
            cpu.options
        )))
    }
}

/// The instruction set every kernel family dispatches on.
pub fn features() -> Features {
    cpu().features
}

/// Whether bf16 products run natively (switched on, and the CPU has AVX-512 BF16).
pub(crate) fn bf16_native() -> bool {
    let c = cpu();
    c.options.bf16_native && c.features.bf16
}

/// The engine's thread pool.
pub fn pool() -> &'static ThreadPool {
    &cpu().pool
}

/// For logs: the kernel set and threads, e.g. `avx512 (vnni, bf16) kernels, 2 threads`.
pub fn describe() -> String {
    let c = cpu();
    let bf16 = if bf16_native() { ", native bf16" } else { "" };
    format!("{} kernels{bf16}, {} threads", c.features.describe(), c.pool.threads())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_parse_and_bound_the_detected_set() {
        assert_eq!("AVX2".parse::<KernelCap>(), Ok(KernelCap::Avx2));
        assert_eq!("".parse::<KernelCap>(), Ok(KernelCap::Auto));
        assert!("sse".parse::<KernelCap>().unwrap_err().contains("sse"));
        assert_eq!(Features::detect(KernelCap::Portable), Features::PORTABLE);
        let best = Features::detect(KernelCap::Auto);
        assert!(Features::detect(KernelCap::Avx2).level <= Level::Avx2);
        assert!(Features::detect(KernelCap::Avx2).level <= best.level);
        let avx2 = Features::detect(KernelCap::Avx2);
        assert!(!avx2.vnni && !avx2.bf16, "the extensions belong to the AVX-512 level");
        assert_eq!(Features::detect(KernelCap::Avx512), best);
    }
}
