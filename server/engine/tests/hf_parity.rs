//! The engine against Hugging Face transformers: the fixtures in `tests/fixtures/` hold tiny
//! random checkpoints and what transformers computed for them (made by `make_fixtures.py`).

use std::path::{Path, PathBuf};

use ghostline_engine::{generate, BatchItem, Checkpoint, GenerateParams, KvPool, Logits, SamplingParams, SeqKv};
use serde_json::Value;

const FIXTURES: &[&str] = &["llama-gqa-f32", "llama-bias-f16", "qwen2-tied-bf16", "qwen2-mha-f32"];

fn fixture_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

struct Case {
    prompt: String,
    input_ids: Vec<u32>,
    last_logits: Vec<f32>,
    greedy: Vec<u32>,
    greedy_text: String,
}

fn load(name: &str) -> (Checkpoint, Vec<Case>) {
    let dir = fixture_dir(name);
    let ckpt = Checkpoint::load(&dir).unwrap_or_else(|e| panic!("{name}: {e}"));
    let v: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let ids = |v: &Value| -> Vec<u32> { v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect() };
    let cases = v["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| Case {
            prompt: c["prompt"].as_str().unwrap().to_string(),
            input_ids: ids(&c["input_ids"]),
            last_logits: c["last_logits"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect(),
            greedy: ids(&c["greedy"]),
            greedy_text: c["greedy_text"].as_str().unwrap().to_string(),
        })
        .collect();
    (ckpt, cases)
}

fn pool(ckpt: &Checkpoint) -> KvPool {
    ckpt.kv_pool(64 << 20)
}

/// Largest absolute difference relative to the largest reference magnitude.
fn rel_err(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-6);
    got.iter().zip(want).fold(0f32, |m, (a, b)| m.max((a - b).abs())) / scale
}

#[test]
fn tokenization_matches_transformers() {
    for name in FIXTURES {
        let (ckpt, cases) = load(name);
        for c in &cases {
            let ids = ckpt.tokenizer.encode(&c.prompt, true).unwrap();
            assert_eq!(ids, c.input_ids, "{name}: {:?}", c.prompt);
        }
    }
}

#[test]
fn last_position_logits_match_transformers() {
    for name in FIXTURES {
        let (ckpt, cases) = load(name);
        let mut pool = pool(&ckpt);
        for c in &cases {
            let mut seq = SeqKv::default();
            let out = ckpt
                .model
                .forward(&mut pool, &mut [BatchItem { kv: &mut seq, tokens: &c.input_ids, logits: Logits::Last }])
                .unwrap();
            let err = rel_err(&out[0], &c.last_logits);
            assert!(err < 1e-4, "{name} {:?}: relative error {err}", c.prompt);
            pool.release(&mut seq);
        }
        assert_eq!(pool.used_blocks(), 0);
    }
}

#[test]
fn greedy_continuations_are_identical_to_transformers() {
    for name in FIXTURES {
        let (ckpt, cases) = load(name);
        let mut pool = pool(&ckpt);
        let params =
            GenerateParams { max_tokens: 12, sampling: SamplingParams::default(), stop: vec![], stop_ids: vec![] };
        for c in &cases {
            let mut streamed = String::new();
            let g = generate(&ckpt.model, &ckpt.tokenizer, &mut pool, &c.input_ids, &params, |p| {
                streamed.push_str(p);
                true
            })
            .unwrap();
            assert_eq!(g.tokens, c.greedy, "{name} {:?}", c.prompt);
            assert_eq!(g.text, streamed);
            assert_eq!(g.text, c.greedy_text, "{name} {:?}", c.prompt);
        }
    }
}

#[test]
fn batched_forward_equals_one_sequence_at_a_time() {
    for name in FIXTURES {
        let (ckpt, cases) = load(name);
        let mut pool = pool(&ckpt);
        let mut alone = Vec::new();
        for c in &cases {
            let mut seq = SeqKv::default();
            let out = ckpt
                .model
                .forward(&mut pool, &mut [BatchItem { kv: &mut seq, tokens: &c.input_ids, logits: Logits::Last }])
                .unwrap();
            alone.push(out.into_iter().next().unwrap());
            pool.release(&mut seq);
        }
        // Prefill all prompts together, then one batched decode step with each case's first
        // greedy token, compared with the same step done alone.
        let mut seqs: Vec<SeqKv> = cases.iter().map(|_| SeqKv::default()).collect();
        let mut items: Vec<BatchItem> = seqs
            .iter_mut()
            .zip(&cases)
            .map(|(s, c)| BatchItem { kv: s, tokens: &c.input_ids, logits: Logits::Last })
            .collect();
        let batched = ckpt.model.forward(&mut pool, &mut items).unwrap();
        for (i, (b, a)) in batched.iter().zip(&alone).enumerate() {
            assert!(rel_err(b, a) < 1e-5, "{name} case {i}: prefill batched differs");
        }
        let steps: Vec<[u32; 1]> = cases.iter().map(|c| [c.greedy[0]]).collect();
        let mut items: Vec<BatchItem> =
            seqs.iter_mut().zip(&steps).map(|(s, t)| BatchItem { kv: s, tokens: t, logits: Logits::Last }).collect();
        let step = ckpt.model.forward(&mut pool, &mut items).unwrap();
        for (i, c) in cases.iter().enumerate() {
            let mut seq = SeqKv::default();
            let mut toks = c.input_ids.clone();
            toks.push(c.greedy[0]);
            let one = ckpt
                .model
                .forward(&mut pool, &mut [BatchItem { kv: &mut seq, tokens: &toks, logits: Logits::Last }])
                .unwrap();
            assert!(rel_err(&step[i], &one[0]) < 1e-5, "{name} case {i}: decode step batched differs");
            pool.release(&mut seq);
        }
        for s in seqs.iter_mut() {
            pool.release(s);
        }
        assert_eq!(pool.used_blocks(), 0);
    }
}

#[test]
fn incremental_decode_and_chunked_prefill_equal_full_recompute() {
    for name in FIXTURES {
        let (ckpt, cases) = load(name);
        let mut pool = pool(&ckpt);
        let c = cases.iter().max_by_key(|c| c.input_ids.len()).unwrap();
        let mut all = c.input_ids.clone();
        all.extend(&c.greedy);
        let mut full_seq = SeqKv::default();
        let full = ckpt
            .model
            .forward(&mut pool, &mut [BatchItem { kv: &mut full_seq, tokens: &all, logits: Logits::All }])
            .unwrap()
            .remove(0);
        let v = ckpt.model.config.vocab_size;
        assert_eq!(full.len(), all.len() * v);

        // Prefill in uneven chunks, then one token at a time.
        let mut seq = SeqKv::default();
        let split = c.input_ids.len() / 3;
        ckpt.model
            .forward(&mut pool, &mut [BatchItem { kv: &mut seq, tokens: &all[..split], logits: Logits::None }])
            .unwrap();
        let mut pos = split;
        let n = c.input_ids.len() - split;
        let out = ckpt
            .model
            .forward(&mut pool, &mut [BatchItem { kv: &mut seq, tokens: &all[pos..pos + n], logits: Logits::Last }])
            .unwrap();
        pos += n;
        assert!(rel_err(&out[0], &full[(pos - 1) * v..pos * v]) < 1e-5, "{name}: chunked prefill differs");
        while pos < all.len() {
            let out = ckpt
                .model
                .forward(&mut pool, &mut [BatchItem { kv: &mut seq, tokens: &all[pos..pos + 1], logits: Logits::Last }])
                .unwrap();
            pos += 1;
            assert!(rel_err(&out[0], &full[(pos - 1) * v..pos * v]) < 1e-5, "{name}: decode at {pos} differs");
        }
        pool.release(&mut seq);
        pool.release(&mut full_seq);
    }
}

#[test]
fn a_forked_prefix_gives_the_same_logits() {
    let (ckpt, cases) = load("qwen2-tied-bf16");
    let mut pool = pool(&ckpt);
    let c = cases.iter().max_by_key(|c| c.input_ids.len()).unwrap();
    let mut base = SeqKv::default();
    ckpt.model
        .forward(&mut pool, &mut [BatchItem { kv: &mut base, tokens: &c.input_ids, logits: Logits::None }])
        .unwrap();
    // Share all but the last 3 prompt tokens, then compute just those on the fork.
    let keep = c.input_ids.len() - 3;
    let mut fork = pool.fork(&base, keep);
    let out = ckpt
        .model
        .forward(&mut pool, &mut [BatchItem { kv: &mut fork, tokens: &c.input_ids[keep..], logits: Logits::Last }])
        .unwrap();
    assert!(rel_err(&out[0], &c.last_logits) < 1e-4);
    pool.release(&mut fork);
    pool.release(&mut base);
    assert_eq!(pool.used_blocks(), 0);
}

#[test]
fn sampling_with_a_seed_is_reproducible_and_stop_strings_end_generation() {
    let (ckpt, cases) = load("llama-gqa-f32");
    let mut pool = pool(&ckpt);
    let mut params = ckpt.default_params(16);
    params.sampling = SamplingParams { temperature: 0.8, top_k: 40, top_p: 0.95, seed: Some(42) };
    let a = generate(&ckpt.model, &ckpt.tokenizer, &mut pool, &cases[0].input_ids, &params, |_| true).unwrap();
    let b = generate(&ckpt.model, &ckpt.tokenizer, &mut pool, &cases[0].input_ids, &params, |_| true).unwrap();
    assert_eq!(a, b);

    // A stop string taken from the middle of the greedy text cuts it exactly there.
    let c = &cases[0];
    let text = &c.greedy_text;
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let (at, _) = chars[chars.len() / 2];
    let stop: String = text[at..].chars().take(2).collect();
    let mut params = ckpt.default_params(12);
    params.stop_ids.clear();
    params.stop = vec![stop.clone()];
    let g = generate(&ckpt.model, &ckpt.tokenizer, &mut pool, &c.input_ids, &params, |_| true).unwrap();
    let first = text.find(&stop).unwrap();
    assert_eq!(g.text, text[..first], "stop {stop:?}");
    assert_eq!(g.finish, ghostline_engine::Finish::Stop);

    // Cancelling from the callback stops at once.
    let mut calls = 0;
    let g = generate(&ckpt.model, &ckpt.tokenizer, &mut pool, &c.input_ids, &ckpt.default_params(12), |_| {
        calls += 1;
        false
    })
    .unwrap();
    assert_eq!(calls, 1);
    assert_eq!(g.finish, ghostline_engine::Finish::Cancelled);
    assert_eq!(pool.used_blocks(), 0);
}

#[test]
fn eos_ids_come_from_the_checkpoint() {
    let (ckpt, _) = load("llama-gqa-f32");
    assert_eq!(ckpt.tokenizer.eos_ids, vec![1]);
    assert_eq!(ckpt.tokenizer.bos_id, Some(0));
    let (ckpt, _) = load("qwen2-tied-bf16");
    let eot = ckpt.tokenizer.special_id("<|endoftext|>").unwrap();
    assert_eq!(ckpt.tokenizer.eos_ids, vec![eot]);
    assert_eq!(
        ckpt.tokenizer.encode("<|fim_prefix|>a<|fim_suffix|>", true).unwrap()[0],
        ckpt.tokenizer.special_id("<|fim_prefix|>").unwrap()
    );
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let (ckpt, _) = load("qwen2-mha-f32");
    let mut pool = pool(&ckpt);
    let mut seq = SeqKv::default();
    let v = ckpt.model.config.vocab_size as u32;
    let e = ckpt
        .model
        .forward(&mut pool, &mut [BatchItem { kv: &mut seq, tokens: &[1, v], logits: Logits::Last }])
        .unwrap_err();
    assert!(e.to_string().contains("outside the vocabulary"), "{e}");
    assert_eq!(seq.len, 0);
    let long = vec![1u32; ckpt.model.config.max_position_embeddings + 1];
    let e = ckpt
        .model
        .forward(&mut pool, &mut [BatchItem { kv: &mut seq, tokens: &long, logits: Logits::Last }])
        .unwrap_err();
    assert!(e.to_string().contains("context"), "{e}");
    // A pool too small for the prompt refuses without changing anything.
    let mut tiny = KvPool::new(ckpt.model.kv_shape(16), 1);
    let e = ckpt
        .model
        .forward(&mut tiny, &mut [BatchItem { kv: &mut seq, tokens: &[1u32; 40], logits: Logits::Last }])
        .unwrap_err();
    assert!(e.to_string().contains("KV cache is full"), "{e}");
    assert_eq!((seq.len, tiny.used_blocks()), (0, 0));
}
