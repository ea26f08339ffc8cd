//! Paged KV cache: fixed-size blocks of keys and values, shared by reference count.
//!
//! A sequence owns a list of block ids (its block table); token `i` of the sequence lives in
//! block `table[i / block_size]`, slot `i % block_size`. Blocks are reference-counted so that
//! sequences can share a common prefix (a fork, or a prefix cache above the engine); a shared
//! block that must be written is copied first. One pool serves every sequence of a model, up
//! to a fixed number of blocks (the memory budget).
//!
//! The bookkeeping (block tables, reference counts, copy-on-write) is the same whichever
//! backend runs the model; only where the blocks live differs: host memory (f16 or f32,
//! allocated lazily) for the CPU backend, one device allocation (bf16 / f16) for the CUDA backend.

use half::f16;

use crate::error::{EngineError, Result};

/// How host KV blocks store keys and values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KvDtype {
    /// f16: half the memory and the memory traffic of attention; 11 significant bits.
    #[default]
    F16,
    /// f32: the reference.
    F32,
}

impl KvDtype {
    pub fn name(self) -> &'static str {
        match self {
            KvDtype::F16 => "f16",
            KvDtype::F32 => "f32",
        }
    }
    pub fn bytes(self) -> usize {
        match self {
            KvDtype::F16 => 2,
            KvDtype::F32 => 4,
        }
    }
}

impl std::fmt::Display for KvDtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for KvDtype {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "f16" | "fp16" | "float16" => Ok(KvDtype::F16),
            "f32" | "fp32" | "float32" => Ok(KvDtype::F32),
            other => Err(format!("unknown KV cache type {other:?}; use f16 or f32")),
        }
    }
}

/// One host block's keys and values, in the pool's [`KvDtype`].
#[derive(Clone, Copy)]
pub(crate) enum KvBlock<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
}

/// The element types of host blocks, to read a [`KvBlock`] as a typed slice.
pub(crate) trait HostElem: crate::ops::KvElem {
    /// The block's elements when it holds this type (an empty slice otherwise).
    fn of(b: KvBlock<'_>) -> &[Self];
}

impl HostElem for f32 {
    fn of(b: KvBlock<'_>) -> &[f32] {
        match b {
            KvBlock::F32(s) => s,
            KvBlock::F16(_) => &[],
        }
    }
}

impl HostElem for f16 {
    fn of(b: KvBlock<'_>) -> &[f16] {
        match b {
            KvBlock::F16(s) => s,
            KvBlock::F32(_) => &[],
        }
    }
}

/// Index of a block in the pool.
pub type BlockId = u32;

/// Geometry of one block: `[layer][k|v][kv_head][slot][head_dim]` floats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvShape {
    pub layers: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub block_size: usize,
}

impl KvShape {
    /// Elements (keys and values, every layer) of one block.
    pub fn block_floats(&self) -> usize {
        self.layers * 2 * self.kv_heads * self.block_size * self.head_dim
    }
    /// Bytes of one block stored as f32.
    pub fn block_bytes(&self) -> usize {
        self.block_floats() * std::mem::size_of::<f32>()
    }
    /// Offset of `(layer, k_or_v, head)`'s `[slot][head_dim]` slab inside a block.
    #[inline]
    pub fn slab(&self, layer: usize, kv: usize, head: usize) -> usize {
        ((layer * 2 + kv) * self.kv_heads + head) * self.block_size * self.head_dim
    }
}

/// The KV blocks of one sequence: which blocks, and how many tokens are stored.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SeqKv {
    pub blocks: Vec<BlockId>,
    pub len: usize,
}

/// A device backend's storage of all of a pool's blocks in one allocation (the CUDA backend
/// implements it; the pool only hands out block ids and asks for copies).
#[cfg(feature = "cuda")]
pub(crate) trait DeviceBlocks: Send + Sync {
    /// Blocks the allocation holds.
    fn max_blocks(&self) -> usize;
    /// Device address of the first block.
    fn base(&self) -> u64;
    /// Copies one block (copy-on-write of a shared partial block), in stream order.
    fn copy_block(&mut self, src: BlockId, dst: BlockId) -> Result<()>;
}

/// Where the blocks' keys and values are stored.
enum Storage {
    /// f32 blocks in host memory, allocated as they are first handed out.
    Host(Vec<Box<[f32]>>),
    /// f16 blocks in host memory, likewise.
    HostF16(Vec<Box<[f16]>>),
    /// All `max_blocks` blocks in one device allocation.
    #[cfg(feature = "cuda")]
    Device(Box<dyn DeviceBlocks>),
}

/// All KV blocks of a model, allocated lazily up to `max_blocks`.
pub struct KvPool {
    shape: KvShape,
    storage: Storage,
    /// Blocks handed out at least once (ids `0..allocated`).
    allocated: usize,
    refs: Vec<u32>,
    free: Vec<BlockId>,
    max_blocks: usize,
}

impl KvPool {
    /// A pool of at most `max_blocks` f32 blocks of the given shape, in host memory.
    pub fn new(shape: KvShape, max_blocks: usize) -> Self {
        KvPool::new_as(shape, max_blocks, KvDtype::F32)
    }

    /// A pool of at most `max_blocks` blocks of the given shape and type, in host memory.
    pub fn new_as(shape: KvShape, max_blocks: usize, dtype: KvDtype) -> Self {
        let storage = match dtype {
            KvDtype::F32 => Storage::Host(Vec::new()),
            KvDtype::F16 => Storage::HostF16(Vec::new()),
        };
        KvPool::with_storage(shape, max_blocks, storage)
    }

    fn with_storage(shape: KvShape, max_blocks: usize, storage: Storage) -> Self {
        KvPool { shape, storage, allocated: 0, refs: Vec::new(), free: Vec::new(), max_blocks }
    }

    /// A pool whose blocks live on a CUDA device (made by the CUDA backend).
    #[cfg(feature = "cuda")]
    pub(crate) fn on_device(shape: KvShape, storage: Box<dyn DeviceBlocks>) -> Self {
        let max_blocks = storage.max_blocks();
        KvPool::with_storage(shape, max_blocks, Storage::Device(storage))
    }

    /// The device storage, when the blocks live on a CUDA device.
    #[cfg(feature = "cuda")]
    pub(crate) fn device(&self) -> Option<&dyn DeviceBlocks> {
        match &self.storage {
            Storage::Device(d) => Some(d.as_ref()),
            Storage::Host(_) | Storage::HostF16(_) => None,
        }
    }

    /// Whether the blocks live in host memory (the CPU backend's pools).
    pub fn is_host(&self) -> bool {
        self.host_dtype().is_some()
    }

    /// How host blocks store keys and values (`None` for a device pool).
    pub fn host_dtype(&self) -> Option<KvDtype> {
        match self.storage {
            Storage::Host(_) => Some(KvDtype::F32),
            Storage::HostF16(_) => Some(KvDtype::F16),
            #[cfg(feature = "cuda")]
            Storage::Device(_) => None,
        }
    }

    /// An f32 pool sized by a memory budget in bytes (at least one block).
    pub fn with_budget(shape: KvShape, bytes: usize) -> Self {
        Self::with_budget_as(shape, bytes, KvDtype::F32)
    }

    /// A host pool of the given type sized by a memory budget in bytes (at least one block).
    pub fn with_budget_as(shape: KvShape, bytes: usize, dtype: KvDtype) -> Self {
        Self::new_as(shape, (bytes / (shape.block_floats() * dtype.bytes()).max(1)).max(1), dtype)
    }

    pub fn shape(&self) -> KvShape {
        self.shape
    }
    pub fn max_blocks(&self) -> usize {
        self.max_blocks
    }
    /// Blocks referenced by at least one sequence.
    pub fn used_blocks(&self) -> usize {
        self.allocated - self.free.len()
    }
    /// Blocks that can still be handed out.
    pub fn free_blocks(&self) -> usize {
        self.max_blocks - self.used_blocks()
    }

    fn alloc(&mut self) -> Option<BlockId> {
        if let Some(id) = self.free.pop() {
            self.refs[id as usize] = 1;
            return Some(id);
        }
        if self.allocated < self.max_blocks {
            match &mut self.storage {
                Storage::Host(blocks) => blocks.push(vec![0f32; self.shape.block_floats()].into_boxed_slice()),
                Storage::HostF16(blocks) => blocks.push(vec![f16::ZERO; self.shape.block_floats()].into_boxed_slice()),
                #[cfg(feature = "cuda")]
                Storage::Device(_) => {} // allocated up front
            }
            self.refs.push(1);
            self.allocated += 1;
            return Some((self.allocated - 1) as BlockId);
        }
        None
    }

    /// Copies block `src`'s keys and values into block `dst`.
    fn copy_block(&mut self, src: BlockId, dst: BlockId) -> Result<()> {
        match &mut self.storage {
            Storage::Host(blocks) => {
                copy_host_block(blocks, src as usize, dst as usize);
                Ok(())
            }
            Storage::HostF16(blocks) => {
                copy_host_block(blocks, src as usize, dst as usize);
                Ok(())
            }
            #[cfg(feature = "cuda")]
            Storage::Device(d) => d.copy_block(src, dst),
        }
    }

    /// How many new blocks `seq` needs to grow to `new_len` tokens (including a copy of a
    /// shared last block that must be written).
    pub fn blocks_needed(&self, seq: &SeqKv, new_len: usize) -> usize {
        let bs = self.shape.block_size;
        let have = seq.blocks.len();
        let want = new_len.div_ceil(bs);
        let mut n = want.saturating_sub(have);
        if new_len > seq.len && !seq.len.is_multiple_of(bs) {
            if let Some(&last) = seq.blocks.get(seq.len / bs) {
                if self.refs[last as usize] > 1 {
                    n += 1;
                }
            }
        }
        n
    }

    /// Makes room for `seq` to hold `new_len` tokens: appends blocks and un-shares the partly
    /// filled block that the new tokens will be written into. All or nothing.
    pub fn reserve(&mut self, seq: &mut SeqKv, new_len: usize) -> Result<()> {
        let needed = self.blocks_needed(seq, new_len);
        if needed > self.free_blocks() {
            return Err(EngineError::KvFull { needed, free: self.free_blocks() });
        }
        let bs = self.shape.block_size;
        if new_len > seq.len && !seq.len.is_multiple_of(bs) {
            let idx = seq.len / bs;
            if let Some(&last) = seq.blocks.get(idx) {
                if self.refs[last as usize] > 1 {
                    let copy = self.alloc().expect("counted above");
                    if let Err(e) = self.copy_block(last, copy) {
                        self.release_block(copy);
                        return Err(e);
                    }
                    self.refs[last as usize] -= 1;
                    seq.blocks[idx] = copy;
                }
            }
        }
        while seq.blocks.len() < new_len.div_ceil(bs) {
            let id = self.alloc().expect("counted above");
            seq.blocks.push(id);
        }
        Ok(())
    }

    /// Releases every block of `seq` (shared blocks stay alive for their other owners).
    pub fn release(&mut self, seq: &mut SeqKv) {
        for id in seq.blocks.drain(..) {
            self.release_block(id);
        }
        seq.len = 0;
    }

    /// Drops one reference to a block.
    pub fn release_block(&mut self, id: BlockId) {
        let r = &mut self.refs[id as usize];
        debug_assert!(*r > 0, "double release of block {id}");
        *r = r.saturating_sub(1);
        if *r == 0 {
            self.free.push(id);
        }
    }

    /// Frees every block at once, for an owner that has dropped all its sequences (the server's
    /// engine loop after a panic left some unaccounted for). Block contents are kept; any
    /// `SeqKv` still naming a block must not be used again.
    pub fn reclaim_all(&mut self) {
        self.refs.iter_mut().for_each(|r| *r = 0);
        self.free = (0..self.allocated as BlockId).rev().collect();
    }

    /// Adds one reference to a block (for a prefix cache or a fork that shares it).
    pub fn retain_block(&mut self, id: BlockId) {
        self.refs[id as usize] += 1;
    }

    pub fn ref_count(&self, id: BlockId) -> u32 {
        self.refs[id as usize]
    }

    /// A new sequence that shares the first `len` tokens of `seq`.
    pub fn fork(&mut self, seq: &SeqKv, len: usize) -> SeqKv {
        let len = len.min(seq.len);
        let blocks: Vec<BlockId> = seq.blocks[..len.div_ceil(self.shape.block_size)].to_vec();
        for &b in &blocks {
            self.retain_block(b);
        }
        SeqKv { blocks, len }
    }

    /// Shortens `seq` to `len` tokens, releasing blocks past the end.
    pub fn truncate(&mut self, seq: &mut SeqKv, len: usize) {
        if len >= seq.len {
            return;
        }
        let keep = len.div_ceil(self.shape.block_size);
        for id in seq.blocks.drain(keep..) {
            self.release_block(id);
        }
        seq.len = len;
    }

    /// A host block's keys and values. A device pool has none (the backends never hand a
    /// device pool to the CPU model): it answers an empty slice.
    pub(crate) fn block(&self, id: BlockId) -> KvBlock<'_> {
        match &self.storage {
            Storage::Host(blocks) => KvBlock::F32(&blocks[id as usize]),
            Storage::HostF16(blocks) => KvBlock::F16(&blocks[id as usize]),
            #[cfg(feature = "cuda")]
            Storage::Device(_) => KvBlock::F32(&[]),
        }
    }

    /// Writes `src` into a host block from element `at` on, rounded to the pool's type.
    pub(crate) fn write(&mut self, id: BlockId, at: usize, src: &[f32]) {
        match &mut self.storage {
            Storage::Host(blocks) => blocks[id as usize][at..at + src.len()].copy_from_slice(src),
            // F16C where the CPU has it, else a portable rounding.
            Storage::HostF16(blocks) => crate::ops::narrow_f16(src, &mut blocks[id as usize][at..at + src.len()]),
            #[cfg(feature = "cuda")]
            Storage::Device(_) => {}
        }
    }

    /// Reads element `at` of a host block as f32 (tests and tools).
    pub fn read(&self, id: BlockId, at: usize) -> f32 {
        match self.block(id) {
            KvBlock::F32(b) => b[at],
            KvBlock::F16(b) => b[at].to_f32(),
        }
    }
}

/// Copies host block `s` into block `d` (`s != d`) without a temporary.
fn copy_host_block<T: Copy>(blocks: &mut [Box<[T]>], s: usize, d: usize) {
    let (lo, hi) = blocks.split_at_mut(s.max(d));
    if s < d {
        hi[0].copy_from_slice(&lo[s]);
    } else {
        lo[d].copy_from_slice(&hi[0]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(max: usize) -> KvPool {
        KvPool::new(KvShape { layers: 1, kv_heads: 1, head_dim: 2, block_size: 4 }, max)
    }

    #[test]
    fn reserve_is_all_or_nothing() {
        let mut p = pool(2);
        let mut s = SeqKv::default();
        p.reserve(&mut s, 8).unwrap();
        assert_eq!(s.blocks.len(), 2);
        let mut t = SeqKv::default();
        let e = p.reserve(&mut t, 1).unwrap_err();
        assert!(matches!(e, EngineError::KvFull { needed: 1, free: 0 }));
        assert!(t.blocks.is_empty());
        p.release(&mut s);
        assert_eq!(p.free_blocks(), 2);
        p.reserve(&mut t, 5).unwrap();
    }

    #[test]
    fn reclaiming_all_frees_blocks_whose_sequences_were_lost() {
        let mut p = pool(3);
        let mut lost = SeqKv::default();
        p.reserve(&mut lost, 8).unwrap();
        let shared = p.fork(&lost, 4);
        drop((lost, shared));
        assert_eq!(p.free_blocks(), 1);
        p.reclaim_all();
        assert_eq!((p.free_blocks(), p.used_blocks()), (3, 0));
        let mut s = SeqKv::default();
        p.reserve(&mut s, 12).unwrap();
        assert_eq!(p.free_blocks(), 0);
    }

    #[test]
    fn writing_into_a_shared_block_copies_it() {
        let mut p = pool(8);
        let mut a = SeqKv::default();
        p.reserve(&mut a, 6).unwrap();
        a.len = 6;
        p.write(a.blocks[1], 0, &[7.0]);
        let mut b = p.fork(&a, 6);
        assert_eq!(p.ref_count(a.blocks[1]), 2);
        assert_eq!(p.blocks_needed(&b, 7), 1);
        p.reserve(&mut b, 7).unwrap();
        assert_ne!(a.blocks[1], b.blocks[1]);
        assert_eq!(a.blocks[0], b.blocks[0]);
        assert_eq!(p.read(b.blocks[1], 0), 7.0);
        p.release(&mut a);
        p.release(&mut b);
        assert_eq!(p.used_blocks(), 0);
    }

    #[test]
    fn f16_blocks_round_to_f16_copy_on_write_and_take_half_the_budget() {
        let shape = KvShape { layers: 1, kv_heads: 1, head_dim: 2, block_size: 4 };
        let p32 = KvPool::with_budget(shape, 8 * shape.block_bytes());
        let mut p = KvPool::with_budget_as(shape, 8 * shape.block_bytes(), KvDtype::F16);
        assert_eq!((p32.max_blocks(), p.max_blocks()), (8, 16));
        assert_eq!(p.host_dtype(), Some(KvDtype::F16));
        let mut a = SeqKv::default();
        p.reserve(&mut a, 6).unwrap();
        a.len = 6;
        p.write(a.blocks[1], 1, &[1.0 / 3.0, -65504.0, 7.0]);
        assert_eq!(p.read(a.blocks[1], 1), half::f16::from_f32(1.0 / 3.0).to_f32());
        assert_eq!(p.read(a.blocks[1], 2), -65504.0);
        let mut b = p.fork(&a, 6);
        p.reserve(&mut b, 7).unwrap();
        assert_ne!(a.blocks[1], b.blocks[1]);
        assert_eq!(p.read(b.blocks[1], 3), 7.0);
        p.write(b.blocks[1], 3, &[8.0]);
        assert_eq!(p.read(a.blocks[1], 3), 7.0);
        p.release(&mut a);
        p.release(&mut b);
        assert_eq!(p.used_blocks(), 0);
        assert_eq!("F16".parse::<KvDtype>(), Ok(KvDtype::F16));
        assert!("int4".parse::<KvDtype>().unwrap_err().contains("f16 or f32"));
    }

    #[test]
    fn full_shared_blocks_are_not_copied() {
        let mut p = pool(8);
        let mut a = SeqKv::default();
        p.reserve(&mut a, 4).unwrap();
        a.len = 4;
        let mut b = p.fork(&a, 4);
        p.reserve(&mut b, 5).unwrap();
        assert_eq!(a.blocks[0], b.blocks[0]);
        assert_eq!(p.used_blocks(), 2);
    }
}
