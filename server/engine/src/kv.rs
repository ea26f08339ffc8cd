//! Paged KV cache: fixed-size blocks of keys and values, shared by reference count.
//!
//! A sequence owns a list of block ids (its block table); token `i` of the sequence lives in
//! block `table[i / block_size]`, slot `i % block_size`. Blocks are reference-counted so that
//! sequences can share a common prefix (a fork, or a prefix cache above the engine); a shared
//! block that must be written is copied first. One pool serves every sequence of a model, up
//! to a fixed number of blocks (the memory budget).
//!
//! The bookkeeping (block tables, reference counts, copy-on-write) is the same whichever
//! backend runs the model; only where the blocks live differs: host memory (f32, allocated
//! lazily) for the CPU backend, one device allocation (bf16 / f16) for the CUDA backend.

use crate::error::{EngineError, Result};

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

/// Where the blocks' keys and values are stored.
enum Storage {
    /// f32 blocks in host memory, allocated as they are first handed out.
    Host(Vec<Box<[f32]>>),
    /// All `max_blocks` blocks in one device allocation.
    #[cfg(feature = "cuda")]
    Device(crate::cuda::DeviceKv),
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
    /// A pool of at most `max_blocks` blocks of the given shape, in host memory.
    pub fn new(shape: KvShape, max_blocks: usize) -> Self {
        KvPool::with_storage(shape, max_blocks, Storage::Host(Vec::new()))
    }

    fn with_storage(shape: KvShape, max_blocks: usize, storage: Storage) -> Self {
        KvPool { shape, storage, allocated: 0, refs: Vec::new(), free: Vec::new(), max_blocks }
    }

    /// A pool whose blocks live on a CUDA device (made by the CUDA backend).
    #[cfg(feature = "cuda")]
    pub(crate) fn on_device(shape: KvShape, storage: crate::cuda::DeviceKv) -> Self {
        let max_blocks = storage.max_blocks();
        KvPool::with_storage(shape, max_blocks, Storage::Device(storage))
    }

    /// The device storage, when the blocks live on a CUDA device.
    #[cfg(feature = "cuda")]
    pub(crate) fn device(&self) -> Option<&crate::cuda::DeviceKv> {
        match &self.storage {
            Storage::Device(d) => Some(d),
            Storage::Host(_) => None,
        }
    }

    /// Whether the blocks live in host memory (the CPU backend's pools).
    pub fn is_host(&self) -> bool {
        matches!(self.storage, Storage::Host(_))
    }

    /// A pool sized by a memory budget in bytes (at least one block).
    pub fn with_budget(shape: KvShape, bytes: usize) -> Self {
        Self::new(shape, (bytes / shape.block_bytes().max(1)).max(1))
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
                let data = blocks[src as usize].clone();
                blocks[dst as usize].copy_from_slice(&data);
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

    /// A host block's floats. A device pool has none (the backends never hand a device pool to
    /// the CPU model): it answers an empty slice.
    pub(crate) fn block(&self, id: BlockId) -> &[f32] {
        match &self.storage {
            Storage::Host(blocks) => &blocks[id as usize],
            #[cfg(feature = "cuda")]
            Storage::Device(_) => &[],
        }
    }
    pub(crate) fn block_mut(&mut self, id: BlockId) -> &mut [f32] {
        match &mut self.storage {
            Storage::Host(blocks) => &mut blocks[id as usize],
            #[cfg(feature = "cuda")]
            Storage::Device(_) => &mut [],
        }
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
    fn writing_into_a_shared_block_copies_it() {
        let mut p = pool(8);
        let mut a = SeqKv::default();
        p.reserve(&mut a, 6).unwrap();
        a.len = 6;
        p.block_mut(a.blocks[1])[0] = 7.0;
        let mut b = p.fork(&a, 6);
        assert_eq!(p.ref_count(a.blocks[1]), 2);
        assert_eq!(p.blocks_needed(&b, 7), 1);
        p.reserve(&mut b, 7).unwrap();
        assert_ne!(a.blocks[1], b.blocks[1]);
        assert_eq!(a.blocks[0], b.blocks[0]);
        assert_eq!(p.block(b.blocks[1])[0], 7.0);
        p.release(&mut a);
        p.release(&mut b);
        assert_eq!(p.used_blocks(), 0);
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
