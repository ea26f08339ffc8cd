//! Prefill and decode throughput of the engine on a checkpoint.
//!
//! cargo bench -p ghostline-engine --bench throughput -- --model DIR [--prompt 512] [--decode 64]
//!     [--batches 1,8] [--reps 3]
//!
//! Prints one JSON object per measurement (tokens/s) and the process's peak RSS. Token ids are
//! drawn deterministically from the vocabulary, so no tokenizer work is timed.

use std::path::PathBuf;
use std::time::Instant;

use ghostline_engine::{argmax, BatchItem, Checkpoint, Logits, SeqKv};

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(|l| l.to_string()))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|k| k.parse::<f64>().ok()))
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn tokens(n: usize, vocab: usize, seed: usize) -> Vec<u32> {
    (0..n).map(|i| ((i * 7919 + seed * 104729 + 13) % (vocab - 1)) as u32 + 1).collect()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let Some(model) = arg(&args, "--model") else {
        eprintln!("usage: throughput --model DIR [--prompt N] [--decode N] [--batches 1,8] [--reps N]");
        return;
    };
    let prompt: usize = arg(&args, "--prompt").and_then(|s| s.parse().ok()).unwrap_or(512);
    let decode: usize = arg(&args, "--decode").and_then(|s| s.parse().ok()).unwrap_or(64);
    let reps: usize = arg(&args, "--reps").and_then(|s| s.parse().ok()).unwrap_or(3);
    let batches: Vec<usize> = arg(&args, "--batches")
        .unwrap_or_else(|| "1,8".into())
        .split(',')
        .filter_map(|s| s.parse().ok())
        .collect();
    let ckpt = Checkpoint::load(&PathBuf::from(&model)).unwrap_or_else(|e| panic!("{e}"));
    let m = &ckpt.model;
    let vocab = m.config.vocab_size;
    let mut pool = ckpt.kv_pool(1 << 30);
    eprintln!(
        "model {model}: {:.2}M params, threads {}",
        m.num_params() as f64 / 1e6,
        rayon::current_num_threads()
    );

    // Prefill: one prompt of `prompt` tokens, best of `reps`.
    let p = tokens(prompt, vocab, 0);
    let mut best = f64::INFINITY;
    for _ in 0..reps {
        let mut s = SeqKv::default();
        let t = Instant::now();
        m.forward(&mut pool, &mut [BatchItem { kv: &mut s, tokens: &p, logits: Logits::Last }]).unwrap();
        best = best.min(t.elapsed().as_secs_f64());
        pool.release(&mut s);
    }
    println!(
        "{{\"engine\":\"ghostline\",\"phase\":\"prefill\",\"batch\":1,\"tokens\":{prompt},\"seconds\":{best:.4},\"tok_per_s\":{:.1}}}",
        prompt as f64 / best
    );

    // Decode: `b` sequences with 128-token prompts, then `decode` batched greedy steps.
    for &b in &batches {
        let mut best = f64::INFINITY;
        for _ in 0..reps {
            let prompts: Vec<Vec<u32>> = (0..b).map(|i| tokens(128, vocab, i + 1)).collect();
            let mut seqs: Vec<SeqKv> = (0..b).map(|_| SeqKv::default()).collect();
            let mut items: Vec<BatchItem> = seqs
                .iter_mut()
                .zip(&prompts)
                .map(|(s, p)| BatchItem { kv: s, tokens: p, logits: Logits::Last })
                .collect();
            let logits = m.forward(&mut pool, &mut items).unwrap();
            let mut next: Vec<[u32; 1]> = logits.iter().map(|l| [argmax(l)]).collect();
            let t = Instant::now();
            for _ in 0..decode {
                let mut items: Vec<BatchItem> = seqs
                    .iter_mut()
                    .zip(&next)
                    .map(|(s, n)| BatchItem { kv: s, tokens: n, logits: Logits::Last })
                    .collect();
                let logits = m.forward(&mut pool, &mut items).unwrap();
                next = logits.iter().map(|l| [argmax(l)]).collect();
            }
            best = best.min(t.elapsed().as_secs_f64());
            for s in seqs.iter_mut() {
                pool.release(s);
            }
        }
        println!(
            "{{\"engine\":\"ghostline\",\"phase\":\"decode\",\"batch\":{b},\"tokens\":{},\"seconds\":{best:.4},\"tok_per_s\":{:.1}}}",
            b * decode,
            (b * decode) as f64 / best
        );
    }
    println!("{{\"engine\":\"ghostline\",\"peak_rss_mib\":{:.1}}}", peak_rss_mib());
}
