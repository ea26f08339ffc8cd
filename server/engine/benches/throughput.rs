//! Prefill and decode throughput of the engine on a checkpoint.
//!
//! cargo bench -p ghostline-engine --bench throughput -- --model DIR [--prompts 128,512,1500]
//!     [--decode 32] [--batches 1,8,32] [--context 128] [--reps 5] [--weights auto|stored|f32|bf16|q8|q4|q4_1]
//!     [--kv f16|f32] [--latency]
//!
//! Prints one JSON object per measurement: tokens/s as min / median / max over `--reps`
//! repeats, and at the end the process's peak RSS. `--latency` adds the suggestion-latency
//! figures: time to the first token of a cold 1500-token prompt, of a warm one (8 new tokens
//! after a cached 1500-token prefix, as the prefix cache serves a keystroke), and 32 decode
//! steps (`--warm-new` adds warm figures for other numbers of new tokens). Decode runs `--batches` sequences of `--context` prompt tokens each (prefilled, not
//! timed); `--prompts 0` skips the prefill figures. Token ids are drawn deterministically from
//! the vocabulary, so no tokenizer work is timed. The KV cache is f16 unless `--kv f32`, as
//! the server's. The engine's CPU options come from `GHOSTLINE_THREADS`, `GHOSTLINE_KERNELS`
//! (auto, avx512, avx2, portable) and `GHOSTLINE_BF16_NATIVE=1`, as for the server.

use std::path::PathBuf;
use std::time::Instant;

use ghostline_engine::{
    argmax, cpu, BatchItem, Checkpoint, CpuOptions, KvDtype, KvPool, Logits, Model, SeqKv, Weights,
};

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}

fn list(args: &[String], name: &str, default: &str) -> Vec<usize> {
    arg(args, name).unwrap_or_else(|| default.into()).split(',').filter_map(|s| s.parse().ok()).collect()
}

fn peak_rss_mib() -> f64 {
    status_mib("VmHWM:")
}

/// A memory figure of /proc/self/status (`VmHWM:`, `VmRSS:`, `RssFile:`...), in MiB.
fn status_mib(key: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with(key)).map(|l| l.to_string()))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|k| k.parse::<f64>().ok()))
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn tokens(n: usize, vocab: usize, seed: usize) -> Vec<u32> {
    (0..n).map(|i| ((i * 7919 + seed * 104729 + 13) % (vocab - 1)) as u32 + 1).collect()
}

/// min / median / max of per-repeat rates.
fn stats(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[0], v[v.len() / 2], v[v.len() - 1])
}

fn prefill(m: &Model, pool: &mut KvPool, s: &mut SeqKv, p: &[u32]) {
    m.forward(pool, &mut [BatchItem { kv: s, tokens: p, logits: Logits::Last }]).unwrap();
}

/// Greedy decode of `steps` tokens for every sequence of `seqs`, one batched forward a step.
fn decode(m: &Model, pool: &mut KvPool, seqs: &mut [SeqKv], first: Vec<u32>, steps: usize) {
    let mut next: Vec<[u32; 1]> = first.into_iter().map(|t| [t]).collect();
    for _ in 0..steps {
        let mut items: Vec<BatchItem> =
            seqs.iter_mut().zip(&next).map(|(s, n)| BatchItem { kv: s, tokens: n, logits: Logits::Last }).collect();
        let logits = m.forward(pool, &mut items).unwrap();
        next = logits.iter().map(|l| [argmax(l)]).collect();
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let Some(model) = arg(&args, "--model") else {
        eprintln!(
            "usage: throughput --model DIR [--prompts 128,512,1500] [--decode 32] [--batches 1,8,32] [--context 128] [--reps 5] \
             [--weights auto|stored|f32|bf16|q8|q4|q4_1] [--kv f16|f32] [--latency]"
        );
        return;
    };
    let env = |name: &str| std::env::var(name).ok();
    let options = CpuOptions {
        threads: env("GHOSTLINE_THREADS").map(|v| v.parse().unwrap_or_else(|e| panic!("GHOSTLINE_THREADS: {e}"))),
        kernels: env("GHOSTLINE_KERNELS").unwrap_or_default().parse().unwrap_or_else(|e: String| panic!("{e}")),
        bf16_native: env("GHOSTLINE_BF16_NATIVE").is_some_and(|v| v == "1"),
    };
    cpu::configure(options).unwrap_or_else(|e| panic!("{e}"));
    let prompts = list(&args, "--prompts", "512");
    let steps: usize = arg(&args, "--decode").and_then(|s| s.parse().ok()).unwrap_or(32);
    let reps: usize = arg(&args, "--reps").and_then(|s| s.parse().ok()).unwrap_or(5).max(1);
    let batches = list(&args, "--batches", "1,8");
    let context: usize = arg(&args, "--context").and_then(|s| s.parse().ok()).unwrap_or(128).max(1);
    let weights: Weights =
        arg(&args, "--weights").map_or(Ok(Weights::Auto), |s| s.parse()).unwrap_or_else(|e: String| panic!("{e}"));
    let ckpt = Checkpoint::load_as(&PathBuf::from(&model), weights).unwrap_or_else(|e| panic!("{e}"));
    let m = &ckpt.model;
    let fmt = m.format;
    let vocab = m.config.vocab_size;
    let kv: KvDtype =
        arg(&args, "--kv").map_or(Ok(KvDtype::default()), |s| s.parse()).unwrap_or_else(|e| panic!("{e}"));
    let mut pool = ckpt.kv_pool_as(1 << 30, kv);
    eprintln!(
        "model {model}: {:.2}M params, weights {} ({:.1} MB), {kv} KV cache, {}; loaded: RSS {:.1} MiB \
         (anonymous {:.1}, file {:.1}), peak {:.1} MiB",
        m.num_params() as f64 / 1e6,
        m.describe_weights(),
        m.weight_bytes() as f64 / 1e6,
        cpu::describe(),
        status_mib("VmRSS:"),
        status_mib("RssAnon:"),
        status_mib("RssFile:"),
        peak_rss_mib()
    );
    let report = |phase: &str, batch: usize, tokens: usize, rates: Vec<f64>| {
        let (lo, med, hi) = stats(rates);
        println!(
            "{{\"engine\":\"ghostline\",\"weights\":\"{fmt}\",\"kv\":\"{kv}\",\"phase\":\"{phase}\",\"batch\":{batch},\"tokens\":{tokens},\
             \"tok_per_s_min\":{lo:.1},\"tok_per_s\":{med:.1},\"tok_per_s_max\":{hi:.1}}}"
        );
    };

    // Warm-up: page the weights in and let the thread pool start.
    let mut s = SeqKv::default();
    prefill(m, &mut pool, &mut s, &tokens(64, vocab, 99));
    pool.release(&mut s);

    // Prefill: one prompt of each length (time to the last position's logits).
    for &n in prompts.iter().filter(|&&n| n > 0) {
        let p = tokens(n, vocab, 0);
        let rates = (0..reps)
            .map(|_| {
                let mut s = SeqKv::default();
                let t = Instant::now();
                prefill(m, &mut pool, &mut s, &p);
                let dt = t.elapsed().as_secs_f64();
                pool.release(&mut s);
                n as f64 / dt
            })
            .collect();
        report("prefill", 1, n, rates);
    }

    // Decode: `b` sequences with `context`-token prompts, then `steps` batched greedy steps.
    for &b in &batches {
        let rates = (0..reps)
            .map(|_| {
                let mut seqs: Vec<SeqKv> = (0..b).map(|_| SeqKv::default()).collect();
                for (i, s) in seqs.iter_mut().enumerate() {
                    prefill(m, &mut pool, s, &tokens(context, vocab, i + 1));
                }
                let t = Instant::now();
                decode(m, &mut pool, &mut seqs, (0..b).map(|i| (i as u32 * 31 + 7) % vocab as u32).collect(), steps);
                let dt = t.elapsed().as_secs_f64();
                seqs.iter_mut().for_each(|s| pool.release(s));
                (b * steps) as f64 / dt
            })
            .collect();
        report("decode", b, b * steps, rates);
    }

    if args.iter().any(|a| a == "--latency") {
        // What one suggestion costs: cold 1500-token prompt, warm prompt (8 new tokens after a
        // cached 1500-token prefix), and 32 decode steps. Milliseconds, min / median / max.
        let p = tokens(1508, vocab, 5);
        let mut cold = Vec::new();
        let mut warm = Vec::new();
        let mut dec = Vec::new();
        // `--warm-new 1,4,16`: the warm figure for other numbers of new tokens too.
        let extra = list(&args, "--warm-new", "");
        let mut warm_n: Vec<Vec<f64>> = vec![Vec::new(); extra.len()];
        for _ in 0..reps {
            let mut base = SeqKv::default();
            let t = Instant::now();
            prefill(m, &mut pool, &mut base, &p[..1500]);
            cold.push(t.elapsed().as_secs_f64() * 1e3);
            for (i, &n) in extra.iter().enumerate() {
                let q = tokens(n, vocab, 9);
                let mut s = pool.fork(&base, 1500);
                let t = Instant::now();
                prefill(m, &mut pool, &mut s, &q);
                warm_n[i].push(t.elapsed().as_secs_f64() * 1e3);
                pool.release(&mut s);
            }
            let mut s = pool.fork(&base, 1500);
            let t = Instant::now();
            prefill(m, &mut pool, &mut s, &p[1500..]);
            warm.push(t.elapsed().as_secs_f64() * 1e3);
            let t = Instant::now();
            decode(m, &mut pool, std::slice::from_mut(&mut s), vec![1], 32);
            dec.push(t.elapsed().as_secs_f64() * 1e3);
            pool.release(&mut s);
            pool.release(&mut base);
        }
        for (&n, v) in extra.iter().zip(warm_n) {
            let (lo, med, hi) = stats(v);
            println!(
                "{{\"engine\":\"ghostline\",\"weights\":\"{fmt}\",\"kv\":\"{kv}\",\"phase\":\"ttft_warm_1500_plus_{n}\",\"ms_min\":{lo:.2},\"ms\":{med:.2},\"ms_max\":{hi:.2}}}"
            );
        }
        for (what, v) in [("ttft_cold_1500", cold), ("ttft_warm_1500_plus_8", warm), ("decode_32", dec)] {
            let (lo, med, hi) = stats(v);
            println!(
                "{{\"engine\":\"ghostline\",\"weights\":\"{fmt}\",\"kv\":\"{kv}\",\"phase\":\"{what}\",\"ms_min\":{lo:.2},\"ms\":{med:.2},\"ms_max\":{hi:.2}}}"
            );
        }
    }
    println!(
        "{{\"engine\":\"ghostline\",\"weights\":\"{fmt}\",\"kv\":\"{kv}\",\"peak_rss_mib\":{:.1}}}",
        peak_rss_mib()
    );
    // After the peak: what the tokenizer's copy for untrusted text would add, which is made only
    // once some text spells a special token.
    if let Some(special) = ckpt.tokenizer.special_tokens().keys().next() {
        let before = status_mib("RssAnon:");
        let _ = ckpt.tokenizer.encode_text(special, false);
        eprintln!(
            "the tokenizer's copy for text that spells a special token ({special:?}): +{:.1} MiB anonymous",
            status_mib("RssAnon:") - before
        );
    }
}
