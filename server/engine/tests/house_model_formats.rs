//! What each weight format costs on the house model (a trained 5M-parameter code model, where
//! the fixtures are random): against its f32 weights, the last-position logits of a few code
//! prompts and how many greedy tokens agree before the first difference.
//!
//! `cargo test -p ghostline-engine --test house_model_formats -- --nocapture` prints the table.

use std::path::Path;

use ghostline_engine::{BatchItem, Checkpoint, GenerateParams, KvDtype, Logits, SamplingParams, SeqKv, WeightFormat};

const PROMPTS: &[&str] = &[
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return ",
    "import os\n\n\ndef read_lines(path):\n    with open(path) as f:\n",
    "fn main() {\n    let args: Vec<String> = std::env::args().collect();\n    ",
    "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, item):\n",
    "pub fn parse(s: &str) -> Result<u32, String> {\n    s.trim().parse::<u32>()",
];

#[test]
fn every_format_stays_close_to_f32_on_the_house_model() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/ghostline-tiny");
    let run = |format: WeightFormat| {
        let ckpt = Checkpoint::load_as(&dir, Some(format)).unwrap();
        let mut pool = ckpt.kv_pool_as(64 << 20, KvDtype::F16);
        PROMPTS
            .iter()
            .map(|p| {
                let ids = ckpt.tokenizer.encode(p, true).unwrap();
                let mut s = SeqKv::default();
                let logits = ckpt
                    .model
                    .forward(&mut pool, &mut [BatchItem { kv: &mut s, tokens: &ids, logits: Logits::Last }])
                    .unwrap()
                    .remove(0);
                pool.release(&mut s);
                let params = GenerateParams {
                    max_tokens: 32,
                    sampling: SamplingParams::default(),
                    stop: vec![],
                    stop_ids: vec![],
                };
                let g = ghostline_engine::generate(&ckpt.model, &ckpt.tokenizer, &mut pool, &ids, &params, |_| true)
                    .unwrap();
                (logits, g.tokens)
            })
            .collect::<Vec<_>>()
    };
    let reference = run(WeightFormat::F32);
    println!("| weights | max logit error (relative) | greedy tokens agreeing with f32 (up to the first difference) |");
    println!("| --- | ---: | ---: |");
    for (format, bound) in
        [(WeightFormat::Bf16, 0.05), (WeightFormat::Q8, 0.1), (WeightFormat::Q4_1, 0.3), (WeightFormat::Q4, 0.3)]
    {
        let (mut worst, mut same, mut total) = (0f32, 0, 0);
        for ((logits, tokens), (want, want_tokens)) in run(format).iter().zip(&reference) {
            let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
            worst = worst.max(logits.iter().zip(want).fold(0f32, |m, (a, b)| m.max((a - b).abs())) / scale);
            same += tokens.iter().zip(want_tokens).take_while(|(a, b)| a == b).count();
            total += want_tokens.len();
        }
        println!("| {format} | {worst:.3} | {same} / {total} |");
        assert!(worst < bound, "{format}: logits off by {worst} (relative) of f32's");
    }
}
