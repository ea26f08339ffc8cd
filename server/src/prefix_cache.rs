//! Prefix reuse: full KV blocks indexed by the chain hash of all tokens up to and including
//! them, so a prompt that begins like an earlier one finds that one's blocks and computes only
//! what is new. The cache holds one reference on each block it indexes; blocks that only the
//! cache holds are evicted least recently used first when the pool needs room.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};

use ghostline_engine::{BlockId, KvPool};

struct CachedBlock {
    block: BlockId,
    tokens: Vec<u32>,
    parent: u64,
    last_used: u64,
}

/// Index from token-prefix hash to KV block.
pub struct PrefixCache {
    block_size: usize,
    map: HashMap<u64, CachedBlock>,
    clock: u64,
}

fn chain(parent: u64, tokens: &[u32]) -> u64 {
    let mut h = DefaultHasher::new();
    parent.hash(&mut h);
    tokens.hash(&mut h);
    h.finish()
}

impl PrefixCache {
    pub fn new(block_size: usize) -> Self {
        PrefixCache { block_size, map: HashMap::new(), clock: 0 }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// The blocks holding the longest cached prefix of `tokens`, at most `max_blocks` of them.
    /// The caller must `retain` the returned blocks to keep them.
    pub fn lookup(&mut self, tokens: &[u32], max_blocks: usize) -> Vec<BlockId> {
        self.clock += 1;
        let mut out = Vec::new();
        let mut parent = 0u64;
        for chunk in tokens.chunks_exact(self.block_size).take(max_blocks) {
            let h = chain(parent, chunk);
            match self.map.get_mut(&h) {
                Some(e) if e.parent == parent && e.tokens == chunk => {
                    e.last_used = self.clock;
                    out.push(e.block);
                    parent = h;
                }
                _ => break,
            }
        }
        out
    }

    /// Indexes the full blocks of a sequence whose first `tokens.len()` tokens are in `blocks`.
    pub fn insert(&mut self, pool: &mut KvPool, tokens: &[u32], blocks: &[BlockId]) {
        self.clock += 1;
        let mut parent = 0u64;
        for (chunk, &block) in tokens.chunks_exact(self.block_size).zip(blocks) {
            let h = chain(parent, chunk);
            let clock = self.clock;
            match self.map.get_mut(&h) {
                Some(e) if e.parent == parent && e.tokens == chunk => e.last_used = clock,
                Some(_) => return, // a hash collision: leave the older entry alone
                None => {
                    pool.retain_block(block);
                    self.map.insert(h, CachedBlock { block, tokens: chunk.to_vec(), parent, last_used: clock });
                }
            }
            parent = h;
        }
    }

    /// Releases least-recently-used blocks that no sequence holds until `need` blocks are
    /// free in the pool or nothing more can go. Returns the number of blocks freed.
    pub fn evict(&mut self, pool: &mut KvPool, need: usize) -> usize {
        if pool.free_blocks() >= need {
            return 0;
        }
        let mut candidates: Vec<(u64, u64)> =
            self.map.iter().filter(|(_, e)| pool.ref_count(e.block) == 1).map(|(&h, e)| (e.last_used, h)).collect();
        candidates.sort_unstable();
        let mut freed = 0;
        for (_, h) in candidates {
            if pool.free_blocks() >= need {
                break;
            }
            if let Some(e) = self.map.remove(&h) {
                pool.release_block(e.block);
                freed += 1;
            }
        }
        freed
    }

    /// Blocks that eviction could free right now.
    pub fn evictable(&self, pool: &KvPool) -> usize {
        self.map.values().filter(|e| pool.ref_count(e.block) == 1).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ghostline_engine::{KvShape, SeqKv};

    #[test]
    fn finds_the_longest_shared_prefix_and_evicts_only_unheld_blocks() {
        let mut pool = KvPool::new(KvShape { layers: 1, kv_heads: 1, head_dim: 2, block_size: 2 }, 8);
        let mut cache = PrefixCache::new(2);
        let mut s = SeqKv::default();
        pool.reserve(&mut s, 5).unwrap();
        s.len = 5;
        cache.insert(&mut pool, &[1, 2, 3, 4, 5], &s.blocks);
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.lookup(&[1, 2, 3, 4, 9, 9], 10), s.blocks[..2].to_vec());
        assert_eq!(cache.lookup(&[1, 2, 3, 9], 10), s.blocks[..1].to_vec());
        assert_eq!(cache.lookup(&[2, 1], 10), Vec::<BlockId>::new());
        assert_eq!(cache.lookup(&[1, 2, 3, 4], 1).len(), 1);
        // While the sequence holds them, nothing can be evicted.
        assert_eq!(cache.evictable(&pool), 0);
        pool.release(&mut s);
        assert_eq!(cache.evictable(&pool), 2);
        assert_eq!(pool.used_blocks(), 2);
        assert_eq!(cache.evict(&mut pool, 8), 2);
        assert_eq!(pool.used_blocks(), 0);
    }
}
