//! A decode step allocates nothing but the logits it returns: the model keeps its activation
//! buffers between steps, the attention tasks and the products theirs per thread. Counted with
//! a global allocator wrapper over every thread of the process (this file holds one test, so
//! nothing else runs meanwhile), with the engine on one thread: with more, which thread first
//! runs which kind of task (and so first sizes its buffers) depends on the machine's load. Checked for batches of up to 8 sequences (the streaming
//! kernels); 16 and more rows go to GEMMs, where f32 and bf16 products (and q8 ones without
//! AVX-512 VNNI) use the `gemm` crate, which allocates its packing buffers per product: those
//! counts are printed, not checked.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use ghostline_engine::{BatchItem, Checkpoint, KvDtype, Logits, SeqKv, WeightFormat};

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        System.realloc(ptr, layout, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn decode_steps_allocate_only_their_logits() {
    ghostline_engine::cpu::configure(ghostline_engine::CpuOptions { threads: Some(1), ..Default::default() }).unwrap();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/ghostline-tiny");
    let mut report = Vec::new();
    for format in [WeightFormat::F32, WeightFormat::Bf16, WeightFormat::Q8] {
        let ckpt = Checkpoint::load_as(&dir, Some(format)).unwrap();
        let m = &ckpt.model;
        let mut pool = ckpt.kv_pool_as(64 << 20, KvDtype::F16);
        for batch in [1usize, 3, 8, 16] {
            let checked = batch <= 8;
            // Prompts of 20 tokens, then decode steps; the measured ones stay inside the second
            // 16-slot KV block, so no step needs a new block either.
            let mut seqs: Vec<SeqKv> = (0..batch).map(|_| SeqKv::default()).collect();
            for (i, s) in seqs.iter_mut().enumerate() {
                let prompt: Vec<u32> = (0..20).map(|j| (i * 131 + j * 17) as u32 % 8000 + 10).collect();
                m.forward(&mut pool, &mut [BatchItem { kv: s, tokens: &prompt, logits: Logits::Last }]).unwrap();
            }
            let mut step = |seqs: &mut Vec<SeqKv>, t: u32| {
                let toks: Vec<[u32; 1]> = (0..seqs.len()).map(|i| [(t * 7 + i as u32) % 8000 + 10]).collect();
                let mut items: Vec<BatchItem> = seqs
                    .iter_mut()
                    .zip(&toks)
                    .map(|(s, t)| BatchItem { kv: s, tokens: t, logits: Logits::Last })
                    .collect();
                let before = ALLOCATIONS.load(Ordering::Relaxed);
                let out = m.forward(&mut pool, &mut items).unwrap();
                let n = ALLOCATIONS.load(Ordering::Relaxed) - before;
                assert_eq!(out.len(), items.len());
                n
            };
            // Warm-up: buffers grow to this batch's size.
            for t in 0..3 {
                step(&mut seqs, t);
            }
            let counts: Vec<usize> = (3..10).map(|t| step(&mut seqs, t)).collect();
            // The returned Vec of logits and one Vec per sequence.
            let allowed = batch + 1;
            report.push(format!("{format} batch {batch}: allocations per step {counts:?} (logits: {allowed})"));
            if checked {
                assert!(
                    counts.iter().all(|&n| n <= allowed),
                    "{format} batch {batch}: allocations per step {counts:?}, allowed {allowed}"
                );
            }
            for s in &mut seqs {
                pool.release(s);
            }
        }
    }
    println!("{}", report.join("\n"));
}
