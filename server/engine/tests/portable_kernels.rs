//! With the kernel cap at portable, the engine runs the portable code of every kernel family
//! (this file is a process of its own, so the cap holds for all of it), and its logits stay
//! within the f32 bound of transformers' on the fixtures, as the SIMD kernels' do.

use std::path::Path;

use ghostline_engine::cpu::{self, Features};
use ghostline_engine::{BatchItem, Checkpoint, CpuOptions, KernelCap, KvDtype, Logits, SeqKv, WeightFormat};
use serde_json::Value;

#[test]
fn a_portable_engine_runs_the_portable_kernels_and_matches_transformers() {
    let options = CpuOptions { threads: Some(2), kernels: KernelCap::Portable, bf16_native: true };
    cpu::configure(options).unwrap();
    assert_eq!(cpu::features(), Features::PORTABLE);
    // Native bf16 needs AVX-512 BF16, which the cap rules out.
    assert_eq!(cpu::describe(), "portable kernels, 2 threads");
    // The same options again are fine, others are refused (the kernels are chosen).
    cpu::configure(options).unwrap();
    let err = cpu::configure(CpuOptions::default()).unwrap_err().to_string();
    assert!(err.contains("already fixed"), "{err}");
    for name in ["qwen2-mha-f32", "llama-gqa-f32"] {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name);
        let expected: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
        let ckpt = Checkpoint::load_as(&dir, Some(WeightFormat::F32)).unwrap();
        let mut pool = ckpt.kv_pool_as(64 << 20, KvDtype::F32);
        for c in expected["cases"].as_array().unwrap() {
            let input: Vec<u32> =
                c["input_ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
            let want: Vec<f32> =
                c["last_logits"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
            let mut s = SeqKv::default();
            let got = ckpt
                .model
                .forward(&mut pool, &mut [BatchItem { kv: &mut s, tokens: &input, logits: Logits::Last }])
                .unwrap();
            pool.release(&mut s);
            let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
            let worst = got[0].iter().zip(&want).fold(0f32, |m, (a, b)| m.max((a - b).abs())) / scale;
            assert!(worst < 1e-4, "{name}: logits off by {worst} (relative)");
        }
    }
}
