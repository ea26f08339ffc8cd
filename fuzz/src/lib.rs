//! A small mutation fuzzer that runs on stable Rust, for the fuzz tests of the parsers that
//! untrusted bytes reach (request and telemetry JSON, the SSE stream, LSP edits, checkpoint
//! headers). No coverage feedback: inputs are the target's corpus (`corpus/<target>/`, seeds
//! and every regression found, replayed first on every run) mutated by stacked byte-level and
//! dictionary mutations, so structure comes from the corpus and the dictionary.
//!
//! `GHOSTLINE_FUZZ_ITERS` sets the number of mutated inputs (the tests' default is small, so
//! that `tests/run` replays the corpus and a short run in seconds); `GHOSTLINE_FUZZ_SEED` the
//! seed (default fixed, so a failing run repeats). An input that panics is written to
//! `GHOSTLINE_FUZZ_CRASHES` (default: a directory under the system temp dir) and the test fails
//! naming it; copy it into `corpus/<target>/` once fixed, so that it is replayed from then on.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What a run did.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub target: String,
    /// Corpus entries replayed.
    pub replayed: usize,
    /// Mutated inputs run.
    pub mutated: u64,
    pub secs: f64,
}

impl Report {
    pub fn per_sec(&self) -> f64 {
        (self.replayed as u64 + self.mutated) as f64 / self.secs.max(1e-9)
    }
}

/// The corpus directory of a target.
pub fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus").join(target)
}

/// The corpus files of a target, sorted by name (missing directory: none).
pub fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(corpus_dir(target))
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_file()).collect())
        .unwrap_or_default();
    files.sort();
    files.into_iter().filter_map(|p| std::fs::read(&p).ok().map(|b| (p, b))).collect()
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok()?.replace('_', "").parse().ok()
}

/// xorshift64*: fast, seedable, good enough to choose mutations.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }
    pub fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
}

const INTERESTING_BYTES: &[u8] = &[
    0, 1, 0x7f, 0x80, 0xff, 0xc3, 0xe2, 0xf0, 0xed, b'"', b'\\', b'{', b'}', b'[', b']', b',', b':', b'\n', b'\r', b' ',
];
const INTERESTING_INTS: &[u64] =
    &[0, 1, 2, 7, 8, 16, 31, 32, 255, 256, 4096, 65535, 1 << 31, u32::MAX as u64, 1 << 32, 1 << 62, u64::MAX];

/// Largest input a mutation makes.
pub const MAX_LEN: usize = 1 << 16;

/// One mutation of `data`, in place.
fn mutate_once(rng: &mut Rng, data: &mut Vec<u8>, dict: &[&[u8]], pool: &[Vec<u8>]) {
    let len = data.len();
    match rng.below(12) {
        0 if len > 0 => {
            let i = rng.below(len);
            data[i] ^= 1 << rng.below(8);
        }
        1 if len > 0 => {
            let i = rng.below(len);
            data[i] = rng.next_u64() as u8;
        }
        2 if len > 0 => {
            let i = rng.below(len);
            data[i] = INTERESTING_BYTES[rng.below(INTERESTING_BYTES.len())];
        }
        3 => {
            let at = rng.below(len + 1);
            let n = 1 + rng.below(8);
            let bytes: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
            data.splice(at..at, bytes);
        }
        4 if len > 0 => {
            let a = rng.below(len);
            let b = (a + 1 + rng.below(16.min(len - a))).min(len);
            data.drain(a..b);
        }
        5 if len > 0 => {
            // Repeat a range (long strings, deep nesting, huge edits).
            let a = rng.below(len);
            let b = (a + 1 + rng.below(64.min(len - a))).min(len);
            let piece = data[a..b].to_vec();
            let most = if rng.chance(8) { 512 } else { 4 };
            let times = 1 + rng.below(most);
            let at = rng.below(data.len() + 1);
            let rep: Vec<u8> = piece.iter().copied().cycle().take(piece.len() * times).collect();
            data.splice(at..at, rep);
        }
        6 | 7 if !dict.is_empty() => {
            let word = dict[rng.below(dict.len())];
            let at = rng.below(len + 1);
            if rng.chance(2) && len > 0 {
                // Replace a short range by the word.
                let end = (at + rng.below(8)).min(len);
                data.splice(at..end, word.iter().copied());
            } else {
                data.splice(at..at, word.iter().copied());
            }
        }
        8 if !pool.is_empty() => {
            // Splice: a piece of another input.
            let other = &pool[rng.below(pool.len())];
            if !other.is_empty() {
                let a = rng.below(other.len());
                let b = (a + 1 + rng.below(other.len() - a)).min(other.len());
                let at = rng.below(len + 1);
                let end = (at + rng.below(b - a + 1)).min(len);
                data.splice(at..end, other[a..b].iter().copied());
            }
        }
        9 if len >= 4 => {
            // An interesting integer, little-endian, 4 or 8 bytes wide.
            let v = INTERESTING_INTS[rng.below(INTERESTING_INTS.len())];
            let w = if len >= 8 && rng.chance(2) { 8 } else { 4 };
            let at = rng.below(len - w + 1);
            data[at..at + w].copy_from_slice(&v.to_le_bytes()[..w]);
        }
        10 if len > 0 => data.truncate(rng.below(len)),
        11 if len > 0 => {
            // A decimal number for text formats.
            let v = INTERESTING_INTS[rng.below(INTERESTING_INTS.len())];
            let s = match rng.below(4) {
                0 => format!("-{v}"),
                1 => format!("{v}e{}", rng.below(400)),
                2 => format!("{v}.5"),
                _ => v.to_string(),
            };
            let at = rng.below(len + 1);
            data.splice(at..at, s.into_bytes());
        }
        _ => {
            let at = rng.below(len + 1);
            data.insert(at, INTERESTING_BYTES[rng.below(INTERESTING_BYTES.len())]);
        }
    }
    data.truncate(MAX_LEN);
}

/// How a run goes.
#[derive(Debug, Clone)]
pub struct Options {
    /// Mutated inputs to run.
    pub iters: u64,
    pub seed: u64,
    /// Where an input that panics is saved (under the target's name).
    pub crashes: PathBuf,
}

impl Options {
    /// From `GHOSTLINE_FUZZ_ITERS`, `GHOSTLINE_FUZZ_SEED` and `GHOSTLINE_FUZZ_CRASHES`.
    pub fn from_env(default_iters: u64) -> Options {
        Options {
            iters: env_u64("GHOSTLINE_FUZZ_ITERS").unwrap_or(default_iters),
            seed: env_u64("GHOSTLINE_FUZZ_SEED").unwrap_or(1),
            crashes: std::env::var_os("GHOSTLINE_FUZZ_CRASHES")
                .map(PathBuf::from)
                .unwrap_or_else(|| std::env::temp_dir().join("ghostline-fuzz-crashes")),
        }
    }
}

/// Runs `f` on every corpus entry of `target` and on `seeds`, then on mutated inputs (options
/// from the environment); fails (panics) naming the saved input when `f` panics on one.
pub fn run(target: &str, seeds: &[&[u8]], dict: &[&[u8]], default_iters: u64, f: impl FnMut(&[u8])) -> Report {
    run_with(&Options::from_env(default_iters), target, seeds, dict, f)
}

/// `run` with explicit options.
pub fn run_with(opts: &Options, target: &str, seeds: &[&[u8]], dict: &[&[u8]], mut f: impl FnMut(&[u8])) -> Report {
    let (iters, seed) = (opts.iters, opts.seed);
    let mut pool: Vec<Vec<u8>> = corpus(target).into_iter().map(|(_, b)| b).collect();
    pool.extend(seeds.iter().map(|s| s.to_vec()));
    if pool.is_empty() {
        pool.push(Vec::new());
    }
    let t0 = Instant::now();
    let check = |input: &[u8], f: &mut dyn FnMut(&[u8])| {
        if let Err(p) = catch_unwind(AssertUnwindSafe(|| f(input))) {
            let msg = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            let path = save_crash(&opts.crashes.join(target), input);
            panic!(
                "fuzz target {target} panicked ({msg}) on the input saved at {} ({} bytes: {:?})",
                path.display(),
                input.len(),
                String::from_utf8_lossy(&input[..input.len().min(200)])
            );
        }
    };
    for input in &pool {
        check(input, &mut f);
    }
    let replayed = pool.len();
    let corpus_len = pool.len();
    let mut rng = Rng::new(seed);
    for _ in 0..iters {
        let base = &pool[rng.below(pool.len())];
        let mut input = base.clone();
        for _ in 0..1 + rng.below(8) {
            mutate_once(&mut rng, &mut input, dict, &pool);
        }
        check(&input, &mut f);
        // Keep some inputs to mutate further (a walk away from the corpus), bounded.
        if rng.chance(64) {
            if pool.len() < corpus_len + 256 {
                pool.push(input);
            } else {
                let i = corpus_len + rng.below(256);
                pool[i] = input;
            }
        }
    }
    let report = Report { target: target.into(), replayed, mutated: iters, secs: t0.elapsed().as_secs_f64() };
    eprintln!(
        "fuzz {target}: {} corpus inputs and {} mutated inputs (seed {seed}) in {:.2} s, {:.0} inputs/s, 0 panics",
        report.replayed,
        report.mutated,
        report.secs,
        report.per_sec()
    );
    report
}

fn save_crash(dir: &Path, input: &[u8]) -> PathBuf {
    let _ = std::fs::create_dir_all(dir);
    // FNV-1a names the input by its content.
    let h = input.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3));
    let path = dir.join(format!("crash-{h:016x}"));
    let _ = std::fs::write(&path, input);
    path
}

/// Bytes read as a stream of choices, for targets that build structured inputs (edits).
pub struct Bytes<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Bytes<'a> {
    pub fn new(data: &'a [u8]) -> Bytes<'a> {
        Bytes { data, pos: 0 }
    }
    pub fn is_empty(&self) -> bool {
        self.pos >= self.data.len()
    }
    pub fn u8(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    /// Up to `max` raw bytes.
    pub fn take(&mut self, max: usize) -> &'a [u8] {
        let start = self.pos.min(self.data.len());
        let end = (start + max).min(self.data.len());
        self.pos = end;
        &self.data[start..end]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_replays_the_seeds_and_mutates_within_bounds() {
        let mut seen = 0u64;
        let mut longest = 0;
        let opts = Options { iters: 500, seed: 3, crashes: std::env::temp_dir() };
        let r = run_with(&opts, "driver-self-test", &[b"{\"a\": 1}"], &[b"null"], |b| {
            seen += 1;
            longest = longest.max(b.len());
        });
        assert_eq!((r.replayed, r.mutated), (1, 500));
        assert_eq!(seen, 501);
        assert!(longest <= MAX_LEN);
    }

    #[test]
    fn a_panicking_input_is_saved_and_named() {
        let dir = std::env::temp_dir().join(format!("ghostline-fuzz-self-{}", std::process::id()));
        let opts = Options { iters: 0, seed: 1, crashes: dir.clone() };
        let r =
            catch_unwind(|| run_with(&opts, "driver-panics", &[b"boom"], &[], |b| assert!(b != b"boom", "found it")));
        let msg = r.unwrap_err().downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(msg.contains("found it") && msg.contains("crash-"), "{msg}");
        let saved: Vec<_> = std::fs::read_dir(dir.join("driver-panics")).unwrap().collect();
        assert_eq!(saved.len(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
