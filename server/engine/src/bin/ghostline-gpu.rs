//! `ghostline-gpu`: the CUDA backend checked against the CPU backend and against transformers'
//! reference outputs, and its throughput measured. Driven by `tests/gpu/run.sh` on a GPU machine.
//!
//! ```text
//! ghostline-gpu parity DIR...                    CUDA vs CPU on each checkpoint (JSON on stdout)
//! ghostline-gpu hf DIR EXPECTED.json             CUDA vs transformers' logits and greedy tokens
//! ghostline-gpu bench DIR [--batches 1,8,32,64] [--prompt 128] [--gen 64] [--prefill 512,2048]
//! ```
//! Exit status 1 when a check fails.

use std::path::{Path, PathBuf};
use std::time::Instant;

use ghostline_engine::sampling::Rng;
use ghostline_engine::{
    Backend, BatchItem, Device, EngineError, KvPool, Logits, Pick, Picker, Sampler, SamplingParams, SeqKv, Tokenizer,
};
use serde_json::{json, Value};

type Res<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// CUDA logits may differ from the f32 CPU logits by bf16 rounding: this much, relative to the
/// largest reference logit.
const LOGITS_TOL: f32 = 1e-2;

const CODE_PROMPTS: &[&str] = &[
    "def fibonacci(n):\n    ",
    "import os\nimport sys\n\ndef main():\n    args = sys.argv[1:]\n    ",
    "fn add(a: i32, b: i32) -> i32 {\n    ",
    "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, item):\n        ",
    "for i in range(10):\n    if i % 2 == 0:\n        ",
    "#include <stdio.h>\n\nint main(void) {\n    ",
];

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("parity") => parity(&args[1..]),
        Some("hf") if args.len() == 3 => hf(Path::new(&args[1]), Path::new(&args[2])),
        Some("bench") if args.len() >= 2 => bench(&args[1..]),
        _ => Err("usage: ghostline-gpu parity DIR... | hf DIR EXPECTED.json | bench DIR [--batches 1,8,32,64] \
                  [--prompt 128] [--gen 64] [--prefill 512,2048]"
            .into()),
    };
    match result {
        Ok((report, pass)) => {
            println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
            std::process::exit(if pass { 0 } else { 1 });
        }
        Err(e) => {
            eprintln!("ghostline-gpu: {e}");
            std::process::exit(2);
        }
    }
}

/// Largest absolute difference relative to the largest reference magnitude.
fn rel_err(got: &[f32], want: &[f32]) -> f32 {
    if got.len() != want.len() || got.iter().any(|x| !x.is_finite()) {
        return f32::INFINITY;
    }
    let scale = want.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-6);
    got.iter().zip(want).fold(0f32, |m, (a, b)| m.max((a - b).abs())) / scale
}

/// The prompts of a checkpoint: its fixture's token ids when it has `expected.json`, else code
/// snippets through its tokenizer.
fn prompts(dir: &Path, backend: &Backend) -> Res<Vec<Vec<u32>>> {
    let expected = dir.join("expected.json");
    if expected.exists() {
        let v: Value = serde_json::from_str(&std::fs::read_to_string(&expected)?)?;
        return Ok(v["cases"]
            .as_array()
            .ok_or("expected.json has no cases")?
            .iter()
            .map(|c| token_list(&c["input_ids"]))
            .collect());
    }
    let tok = Tokenizer::load(dir, &backend.config().eos_token_ids)?;
    CODE_PROMPTS.iter().map(|p| Ok(tok.encode(p, true)?)).collect()
}

fn token_list(v: &Value) -> Vec<u32> {
    v.as_array().map(|a| a.iter().filter_map(|x| x.as_u64()).map(|x| x as u32).collect()).unwrap_or_default()
}

fn one(
    b: &Backend,
    pool: &mut KvPool,
    seq: &mut SeqKv,
    tokens: &[u32],
    logits: Logits,
) -> Result<Vec<f32>, EngineError> {
    Ok(b.forward(pool, &mut [BatchItem { kv: seq, tokens, logits }])?.remove(0))
}

/// Greedy continuation of `n` tokens, one sequence, through `Backend::step` (device choice on CUDA).
fn greedy(b: &Backend, pool: &mut KvPool, prompt: &[u32], n: usize) -> Result<Vec<u32>, EngineError> {
    let mut seq = SeqKv::default();
    let mut picker = Picker::new(SamplingParams::default());
    let mut out = Vec::new();
    let mut next = prompt.to_vec();
    let room = b.config().max_position_embeddings.saturating_sub(prompt.len());
    for _ in 0..n.min(room) {
        let mut items = [BatchItem { kv: &mut seq, tokens: &next, logits: Logits::Last }];
        let t = b.step(pool, &mut items, &mut [Pick { item: 0, picker: &mut picker }])?[0];
        out.push(t);
        next = vec![t];
    }
    pool.release(&mut seq);
    Ok(out)
}

/// One batched step: every sequence appends its input and picks its next token, which becomes
/// its next input.
fn batch_step(
    b: &Backend,
    pool: &mut KvPool,
    seqs: &mut [SeqKv],
    pickers: &mut [Picker],
    inputs: &mut [Vec<u32>],
) -> Result<Vec<u32>, EngineError> {
    let mut items: Vec<BatchItem> =
        seqs.iter_mut().zip(inputs.iter()).map(|(kv, t)| BatchItem { kv, tokens: t, logits: Logits::Last }).collect();
    let mut picks: Vec<Pick> = pickers.iter_mut().enumerate().map(|(item, picker)| Pick { item, picker }).collect();
    let toks = b.step(pool, &mut items, &mut picks)?;
    for (inp, &t) in inputs.iter_mut().zip(&toks) {
        *inp = vec![t];
    }
    Ok(toks)
}

fn parity(dirs: &[String]) -> Res<(Value, bool)> {
    let mut reports = Vec::new();
    let mut all_pass = true;
    for dir in dirs.iter().map(PathBuf::from) {
        let cpu = Backend::load(&dir, Device::Cpu)?;
        let gpu = Backend::load(&dir, Device::Cuda(0))?;
        let mut cpool = cpu.kv_pool(256 << 20)?;
        let mut gpool = gpu.kv_pool(256 << 20)?;
        let prompts = prompts(&dir, &cpu)?;
        let v = cpu.config().vocab_size;
        let mut worst = 0f32;
        let mut greedy_equal = 0;
        let mut cases = Vec::new();
        let mut gpu_last = Vec::new();
        for p in &prompts {
            let (mut cs, mut gs) = (SeqKv::default(), SeqKv::default());
            let want = one(&cpu, &mut cpool, &mut cs, p, Logits::Last)?;
            let got = one(&gpu, &mut gpool, &mut gs, p, Logits::Last)?;
            cpool.release(&mut cs);
            gpool.release(&mut gs);
            let err = rel_err(&got, &want);
            worst = worst.max(err);
            let (gc, gg) = (greedy(&cpu, &mut cpool, p, 24)?, greedy(&gpu, &mut gpool, p, 24)?);
            greedy_equal += usize::from(gc == gg);
            cases.push(
                json!({"prompt_tokens": p.len(), "last_logits_rel_err": err, "greedy_cpu": gc, "greedy_cuda": gg}),
            );
            gpu_last.push(got);
        }

        // All prompts at once: one batched prefill, then batched greedy decode steps.
        let n_steps = 12;
        let mut seqs: Vec<SeqKv> = prompts.iter().map(|_| SeqKv::default()).collect();
        let mut pickers: Vec<Picker> = prompts.iter().map(|_| Picker::new(SamplingParams::default())).collect();
        let mut batched: Vec<Vec<u32>> = prompts.iter().map(|_| Vec::new()).collect();
        let mut inputs: Vec<Vec<u32>> = prompts.clone();
        let steps = n_steps
            .min(cpu.config().max_position_embeddings.saturating_sub(prompts.iter().map(Vec::len).max().unwrap_or(0)));
        for _ in 0..steps {
            let toks = batch_step(&gpu, &mut gpool, &mut seqs, &mut pickers, &mut inputs)?;
            for (b, t) in batched.iter_mut().zip(toks) {
                b.push(t);
            }
        }
        for s in seqs.iter_mut() {
            gpool.release(s);
        }
        let batched_equal =
            batched.iter().zip(&cases).filter(|(b, c)| token_list(&c["greedy_cpu"]).starts_with(b)).count();

        // Every position of the longest prompt, in uneven chunks, and a fork that copies a
        // shared partial block before writing to it.
        let longest = prompts.iter().max_by_key(|p| p.len()).cloned().unwrap_or_default();
        let (mut cs, mut gs) = (SeqKv::default(), SeqKv::default());
        let all_cpu = one(&cpu, &mut cpool, &mut cs, &longest, Logits::All)?;
        let split = longest.len() / 3;
        one(&gpu, &mut gpool, &mut gs, &longest[..split], Logits::None)?;
        let rest = one(&gpu, &mut gpool, &mut gs, &longest[split..], Logits::All)?;
        let mut chunk_err = 0f32;
        for (j, row) in rest.chunks_exact(v).enumerate() {
            let pos = split + j;
            chunk_err = chunk_err.max(rel_err(row, &all_cpu[pos * v..(pos + 1) * v]));
        }
        let fork_at = longest.len().saturating_sub(1).max(1);
        let extra = [longest[0]];
        let mut cfork = cpool.fork(&cs, fork_at);
        let mut gfork = gpool.fork(&gs, fork_at);
        let want = one(&cpu, &mut cpool, &mut cfork, &extra, Logits::Last)?;
        let got = one(&gpu, &mut gpool, &mut gfork, &extra, Logits::Last)?;
        let fork_err = rel_err(&got, &want);
        // The original sequence still sees its own last token after the fork's copy.
        let want = one(&cpu, &mut cpool, &mut cs, &extra, Logits::Last)?;
        let got = one(&gpu, &mut gpool, &mut gs, &extra, Logits::Last)?;
        let after_fork_err = rel_err(&got, &want);
        for s in [&mut cs, &mut cfork] {
            cpool.release(s);
        }
        for s in [&mut gs, &mut gfork] {
            gpool.release(s);
        }

        let sampling = sampling_check(&gpu, &gpu_last)?;
        let pass = worst < LOGITS_TOL
            && greedy_equal == prompts.len()
            && batched_equal == prompts.len()
            && chunk_err < LOGITS_TOL
            && fork_err < LOGITS_TOL
            && after_fork_err < LOGITS_TOL
            && sampling["pass"].as_bool().unwrap_or(false)
            && gpool.used_blocks() == 0;
        all_pass &= pass;
        reports.push(json!({
            "model": dir.display().to_string(),
            "device": gpu.describe(),
            "pass": pass,
            "last_logits_worst_rel_err": worst,
            "greedy_equal": format!("{greedy_equal}/{}", prompts.len()),
            "batched_greedy_equal": format!("{batched_equal}/{}", prompts.len()),
            "chunked_prefill_all_positions_rel_err": chunk_err,
            "fork_rel_err": fork_err,
            "after_fork_rel_err": after_fork_err,
            "sampling": sampling,
            "cases": cases,
        }));
    }
    Ok((json!({"check": "cuda vs cpu", "tolerance": LOGITS_TOL, "pass": all_pass, "models": reports}), all_pass))
}

/// The device's token choice against the host sampler on the same logits and the same uniform
/// draws: greedy, temperature, top-k, top-p, over many seeds.
fn sampling_check(gpu: &Backend, rows: &[Vec<f32>]) -> Res<Value> {
    let Some(m) = gpu.cuda() else { return Err("not a CUDA backend".into()) };
    let settings = [(0.0, 0, 1.0), (0.7, 0, 1.0), (1.0, 40, 1.0), (0.8, 0, 0.9), (1.2, 5, 0.5), (0.2, 0, 0.95)];
    let logits: Vec<f32> = rows.concat();
    let mut picks = Vec::new();
    let mut want = Vec::new();
    for (row, logits_row) in rows.iter().enumerate() {
        for &(temperature, top_k, top_p) in &settings {
            for seed in 0..16u64 {
                let params = SamplingParams { temperature, top_k, top_p, seed: Some(seed) };
                want.push(Sampler::new(params.clone()).sample(logits_row));
                picks.push((row, params, Rng::new(seed).next_f64()));
            }
        }
    }
    let got = m.sample_rows(&logits, &picks)?;
    let to_host = got.iter().filter(|&&g| g < 0).count();
    let equal = got.iter().zip(&want).filter(|(&g, &w)| g == w as i32).count();
    let differ = got.len() - equal - to_host;
    Ok(json!({
        "picks": got.len(),
        "equal_to_host_sampler": equal,
        "left_to_host": to_host,
        "different": differ,
        // Float sums in another order may move a draw that sits on a boundary; no more than 1%.
        "pass": differ * 100 <= got.len(),
    }))
}

fn hf(dir: &Path, expected: &Path) -> Res<(Value, bool)> {
    let gpu = Backend::load(dir, Device::Cuda(0))?;
    let mut pool = gpu.kv_pool(1 << 30)?;
    let v: Value = serde_json::from_str(&std::fs::read_to_string(expected)?)?;
    let mut cases = Vec::new();
    let mut worst = 0f32;
    let mut agree = 0usize;
    let mut total = 0usize;
    for c in v["cases"].as_array().ok_or("no cases")? {
        let ids = token_list(&c["input_ids"]);
        let want: Vec<f32> = c["last_logits"]
            .as_array()
            .ok_or("no last_logits")?
            .iter()
            .map(|x| x.as_f64().unwrap_or(f64::NAN) as f32)
            .collect();
        let hf_greedy = token_list(&c["greedy"]);
        let mut seq = SeqKv::default();
        let got = one(&gpu, &mut pool, &mut seq, &ids, Logits::Last)?;
        pool.release(&mut seq);
        let err = rel_err(&got, &want);
        worst = worst.max(err);
        let ours = greedy(&gpu, &mut pool, &ids, hf_greedy.len())?;
        let prefix = ours.iter().zip(&hf_greedy).take_while(|(a, b)| a == b).count();
        agree += prefix;
        total += hf_greedy.len();
        cases.push(json!({"prompt_tokens": ids.len(), "last_logits_rel_err": err,
                          "greedy_agreeing_prefix": prefix, "greedy_tokens": hf_greedy.len()}));
    }
    // transformers' reference runs in f32 on bf16 weights; ours rounds activations to bf16 where
    // they feed a product, which on random weights moves logits by about 1%.
    let tol = 3e-2;
    let pass = worst < tol;
    Ok((
        json!({"check": "cuda vs transformers", "model": dir.display().to_string(), "device": gpu.describe(),
               "tolerance": tol, "pass": pass, "last_logits_worst_rel_err": worst,
               "greedy_agreeing_tokens": format!("{agree}/{total}"), "cases": cases}),
        pass,
    ))
}

fn list(args: &[String], flag: &str, default: &[usize]) -> Res<Vec<usize>> {
    match args.iter().position(|a| a == flag) {
        Some(i) => Ok(args
            .get(i + 1)
            .ok_or(format!("{flag} needs a value"))?
            .split(',')
            .map(|x| x.trim().parse::<usize>())
            .collect::<Result<_, _>>()?),
        None => Ok(default.to_vec()),
    }
}

fn random_tokens(rng: &mut Rng, n: usize, vocab: usize) -> Vec<u32> {
    (0..n).map(|_| (rng.next_u64() % vocab as u64) as u32).collect()
}

fn bench(args: &[String]) -> Res<(Value, bool)> {
    let dir = PathBuf::from(&args[0]);
    let batches = list(args, "--batches", &[1, 8, 32, 64])?;
    let prompt = list(args, "--prompt", &[128])?[0];
    let gen = list(args, "--gen", &[64])?[0];
    let prefills = list(args, "--prefill", &[512, 2048])?;
    let t0 = Instant::now();
    let gpu = Backend::load(&dir, Device::Cuda(0))?;
    let load_s = t0.elapsed().as_secs_f64();
    let m = gpu.cuda().ok_or("not a CUDA backend")?;
    let vocab = gpu.config().vocab_size;
    let bandwidth = m.gpu().copy_bandwidth(1 << 30, 20)?;
    let weight_bytes = m.weight_bytes();
    let floor_tok_s = bandwidth / weight_bytes as f64;
    let max_b = batches.iter().copied().max().unwrap_or(1);
    let max_p = prefills.iter().copied().max().unwrap_or(0);
    let shape = gpu.kv_shape();
    // Every sequence of the largest batch (prompt, warm-up and timed steps) at once, or the
    // longest prefill, whichever is more.
    let blocks = (max_b * (prompt + gen + 8).div_ceil(shape.block_size)).max((max_p + 8).div_ceil(shape.block_size));
    let mut pool = gpu.kv_pool(blocks * shape.block_floats() * 2)?;
    let mut rng = Rng::new(7);

    let mut decode = Vec::new();
    for &b in &batches {
        let prompts: Vec<Vec<u32>> = (0..b).map(|_| random_tokens(&mut rng, prompt, vocab)).collect();
        let mut seqs: Vec<SeqKv> = (0..b).map(|_| SeqKv::default()).collect();
        let mut pickers: Vec<Picker> = (0..b).map(|_| Picker::new(SamplingParams::default())).collect();
        let mut inputs = prompts;
        let warmup = 4;
        let mut t = Instant::now();
        for step in 0..warmup + gen {
            if step == warmup {
                t = Instant::now();
            }
            batch_step(&gpu, &mut pool, &mut seqs, &mut pickers, &mut inputs)?;
        }
        let secs = t.elapsed().as_secs_f64();
        for s in seqs.iter_mut() {
            pool.release(s);
        }
        let tok_s = (b * gen) as f64 / secs;
        decode.push(json!({"batch": b, "prompt_tokens": prompt, "decode_tokens": gen, "seconds": secs,
                           "tok_per_s": tok_s, "ms_per_step": secs * 1000.0 / gen as f64}));
    }

    let mut prefill = Vec::new();
    for &n in &prefills {
        if n + 1 > gpu.config().max_position_embeddings {
            continue;
        }
        let mut times = Vec::new();
        for run in 0..4 {
            let toks = random_tokens(&mut rng, n, vocab);
            let mut seq = SeqKv::default();
            let mut picker = Picker::new(SamplingParams::default());
            let t = Instant::now();
            gpu.step(
                &mut pool,
                &mut [BatchItem { kv: &mut seq, tokens: &toks, logits: Logits::Last }],
                &mut [Pick { item: 0, picker: &mut picker }],
            )?;
            if run > 0 {
                times.push(t.elapsed().as_secs_f64());
            }
            pool.release(&mut seq);
        }
        times.sort_by(f64::total_cmp);
        let secs = times[times.len() / 2];
        prefill.push(json!({"prompt_tokens": n, "seconds": secs, "tok_per_s": n as f64 / secs}));
    }
    let b1 = decode.iter().find(|d| d["batch"] == 1).and_then(|d| d["tok_per_s"].as_f64());
    Ok((
        json!({
            "model": dir.display().to_string(),
            "device": gpu.describe(),
            "params": gpu.num_params(),
            "load_seconds": load_s,
            "weight_bytes": weight_bytes,
            "copy_bandwidth_bytes_per_s": bandwidth,
            "batch1_floor_tok_per_s": floor_tok_s,
            "batch1_fraction_of_floor": b1.map(|x| x / floor_tok_s),
            "decode": decode,
            "prefill": prefill,
        }),
        true,
    ))
}
