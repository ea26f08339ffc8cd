//! Fuzz targets of what untrusted bytes reach on the server (driven by `ghostline-fuzz`): a
//! completion body through parsing, validation and the prompt builder (with a real tokenizer,
//! healing and mid-line modes), and a telemetry batch through parsing, deduplication ids and
//! the store. Each replays its corpus (`fuzz/corpus/<target>/`) and a short mutated run in
//! tests; `fuzz/run.sh` runs millions.

use std::path::Path;
use std::sync::Arc;

use ghostline_api::TelemetryEvent;
use ghostline_engine::Tokenizer;

use crate::ingest::{write_batch, EventRecord};
use crate::prompt::{self, MidLine, PromptBuilder};
use crate::store::{DbTarget, Store};
use crate::validate::{self, Limits, ModelFacts};

const JSON_WORDS: &[&[u8]] = &[
    b"null",
    b"true",
    b"false",
    b"\"\"",
    b"{}",
    b"[]",
    b"-0",
    b"1e309",
    b"\"\\ud800\"",
    b"\"\\u0000\"",
    b"\"<|fim_prefix|>\"",
    b"\"<|endoftext|>\"",
    b"\"\\r\\n\"",
    b"\"\xf0\x9f\x98\x80\"",
    b"\"prompt\"",
    b"\"suffix\"",
    b"\"max_tokens\"",
    b"\"temperature\"",
    b"\"top_p\"",
    b"\"top_k\"",
    b"\"n\"",
    b"\"stop\"",
    b"\"seed\"",
    b"\"stream\"",
    b"\"truncate\"",
    b"\"user\"",
    b"\"path\"",
    b"\"context\"",
    b"\"text\"",
    b"\"language\"",
    b"\"editor\"",
    b"\"model\"",
    b"\"events\"",
    b"\"event_id\"",
    b"\"completion_id\"",
    b"\"choice_index\"",
    b"\"kind\"",
    b"\"shown\"",
    b"\"accepted\"",
    b"\"partially_accepted\"",
    b"\"rejected\"",
    b"\"accepted_chars\"",
    b"\"shown_ms\"",
    b"\"client_ts\"",
    b"18446744073709551616",
    b"4294967296",
    b"-1",
    b"0.5",
];

fn qwen_tokenizer() -> Arc<Tokenizer> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("engine/tests/fixtures/qwen2-tied-bf16");
    Arc::new(Tokenizer::load(&dir, &[]).expect("the fixture's tokenizer"))
}

/// Seeds: real requests the editors send, and the table of bad ones.
const COMPLETION_SEEDS: &[&[u8]] = &[
    br#"{"prompt": "def add(a, b):\n    return ", "suffix": "\n\nprint(add(1, 2))\n", "max_tokens": 16}"#,
    br#"{"prompt": "import os\nx = os.", "suffix": "", "max_tokens": 8, "temperature": 0.8, "top_p": 0.9, "top_k": 40, "seed": 7, "n": 3, "stop": ["\n\n"], "stream": true}"#,
    br#"{"prompt": "fn main() {\r\n    let x = ", "suffix": "\r\n}\r\n", "truncate": true, "user": "u", "path": "src/main.rs", "language": "rust", "editor": "nvim", "context": [{"path": "src/lib.rs", "text": "pub fn f() {}\n"}]}"#,
    br#"{"model": "tiny", "prompt": "<|fim_prefix|>x<|fim_suffix|>", "max_tokens": 1}"#,
];

#[test]
fn fuzz_completion_requests() {
    let tok = qwen_tokenizer();
    let template = prompt::detect(&tok, None).expect("qwen template");
    let builders = [
        PromptBuilder::new(tok.clone(), template.clone(), true, MidLine::Fim),
        PromptBuilder::new(tok.clone(), template, true, MidLine::Plain),
        PromptBuilder::new(tok, None, false, MidLine::Fim),
    ];
    let models = [
        ModelFacts { name: "tiny".into(), context_length: 512, fim: Some("qwen") },
        ModelFacts { name: "tiny".into(), context_length: 64, fim: None },
    ];
    let lim = Limits::default();
    let mut i = 0usize;
    ghostline_fuzz::run("completion_request", COMPLETION_SEEDS, JSON_WORDS, 3_000, |body| {
        i += 1;
        let Ok(req) = validate::parse_completion(body) else { return };
        let model = &models[i % 2];
        let Ok(v) = validate::validate(req, model, &lim) else { return };
        assert!(v.max_tokens >= 1 && v.max_tokens <= lim.max_tokens as usize);
        assert!(v.n >= 1 && v.n <= lim.max_n as usize);
        let b = &builders[if model.fim.is_some() { i % 2 } else { 2 }];
        if let Ok(plan) = b.build(&v) {
            // The prompt fits the context beside max_tokens, as validation promised.
            assert!(
                plan.ids.len() <= model.context_length,
                "{} ids in a context of {}",
                plan.ids.len(),
                model.context_length
            );
        }
    });
}

const TELEMETRY_SEEDS: &[&[u8]] = &[
    br#"{"events": [{"event_id": "e1", "completion_id": "cmpl-1", "choice_index": 0, "kind": "shown", "shown_ms": 850, "client_ts": 1764201600000, "editor": "vscode", "language": "python"}]}"#,
    br#"{"events": [{"completion_id": "cmpl-2", "choice_index": 1, "kind": "partially_accepted", "accepted_chars": 12}, {"completion_id": "cmpl-2", "kind": "rejected"}]}"#,
    br#"{"events": []}"#,
];

#[test]
fn fuzz_telemetry_batches() {
    let dir = std::env::temp_dir().join(format!("ghostline-fuzz-tel-{}", std::process::id()));
    let mut store = Store::open(&DbTarget::Sqlite(dir.join("fuzz.db"))).expect("a SQLite store");
    let mut stored = 0usize;
    ghostline_fuzz::run("telemetry_batch", TELEMETRY_SEEDS, JSON_WORDS, 3_000, |body| {
        let Ok(events) = validate::parse_events(body) else { return };
        assert!(events.len() <= validate::MAX_EVENTS);
        let records: Vec<EventRecord> =
            events.into_iter().map(|event: TelemetryEvent| EventRecord { event, key_name: Some("k".into()) }).collect();
        // Every accepted batch is stored, twice: the retry is a no-op, never an error.
        write_batch(&mut store, &records, &[]).expect("an accepted batch is stored");
        write_batch(&mut store, &records, &[]).expect("a retried batch is stored once");
        stored += records.len();
    });
    let n = store.query("SELECT COUNT(*) FROM telemetry_events", &[]).unwrap()[0][0].int().unwrap_or(0);
    assert!(n as usize <= stored);
    let _ = std::fs::remove_dir_all(dir);
}
