//! Prefix reuse: KV blocks indexed by the chain hash of all tokens up to and including them, so
//! a prompt that begins like an earlier one finds that one's blocks and computes only what is
//! new. Reuse is to the token, as a keystroke needs it: past the last whole block that matches,
//! the cached block under the same parent that shares the most leading tokens with the rest of
//! the prompt is reused for those tokens (the sequence's first write into it copies it, as the
//! KV pool copies any shared block before writing), and the last, partly filled block of each
//! prompt is cached too. The cache holds one reference on each block it indexes; blocks that
//! only the cache holds are evicted least recently used first when the pool needs room.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};

use ghostline_engine::{BlockId, KvPool};

struct CachedBlock {
    block: BlockId,
    /// The block's tokens: `block_size` of them, or fewer for the last block of a prompt.
    tokens: Vec<u32>,
    parent: u64,
    last_used: u64,
}

/// What a lookup found: the blocks that hold the first `tokens` tokens of the prompt (the last
/// of them only partly reused where `tokens` is not a whole number of blocks).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Hit {
    pub blocks: Vec<BlockId>,
    pub tokens: usize,
}

/// Index from token-prefix hash to KV block.
pub struct PrefixCache {
    block_size: usize,
    map: HashMap<u64, CachedBlock>,
    /// Per parent hash, the hashes of the blocks cached under it.
    children: HashMap<u64, Vec<u64>>,
    clock: u64,
}

fn chain(parent: u64, tokens: &[u32]) -> u64 {
    let mut h = DefaultHasher::new();
    parent.hash(&mut h);
    tokens.hash(&mut h);
    h.finish()
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

impl PrefixCache {
    pub fn new(block_size: usize) -> Self {
        PrefixCache { block_size, map: HashMap::new(), children: HashMap::new(), clock: 0 }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// The blocks holding the longest cached prefix of `tokens`, at most `max_tokens` tokens
    /// of it. The caller must `retain` the returned blocks to keep them.
    pub fn lookup(&mut self, tokens: &[u32], max_tokens: usize) -> Hit {
        self.clock += 1;
        let bs = self.block_size;
        let max_tokens = max_tokens.min(tokens.len());
        let mut hit = Hit::default();
        let mut parent = 0u64;
        for chunk in tokens[..max_tokens].chunks_exact(bs) {
            let h = chain(parent, chunk);
            match self.map.get_mut(&h) {
                Some(e) if e.parent == parent && e.tokens == chunk => {
                    e.last_used = self.clock;
                    hit.blocks.push(e.block);
                    hit.tokens += bs;
                    parent = h;
                }
                _ => break,
            }
        }
        // Past the whole blocks: the block under `parent` that begins most like the rest.
        let rest = &tokens[hit.tokens..max_tokens.min(hit.tokens + bs)];
        if rest.is_empty() {
            return hit;
        }
        let best = self.children.get(&parent).and_then(|kids| {
            kids.iter()
                .filter_map(|h| self.map.get(h).map(|e| (common_prefix(&e.tokens, rest), *h)))
                .filter(|&(n, _)| n > 0)
                .max()
        });
        if let Some((n, h)) = best {
            let e = self.map.get_mut(&h).expect("listed children are cached");
            e.last_used = self.clock;
            hit.blocks.push(e.block);
            hit.tokens += n;
        }
        hit
    }

    /// Indexes the blocks of a sequence whose first `tokens.len()` tokens are in `blocks`: its
    /// whole blocks, and its last block when partly filled (unless a cached block under the
    /// same parent already begins with those tokens).
    pub fn insert(&mut self, pool: &mut KvPool, tokens: &[u32], blocks: &[BlockId]) {
        self.clock += 1;
        let mut parent = 0u64;
        for (chunk, &block) in tokens.chunks(self.block_size).zip(blocks) {
            let h = chain(parent, chunk);
            let clock = self.clock;
            match self.map.get_mut(&h) {
                Some(e) if e.parent == parent && e.tokens == chunk => e.last_used = clock,
                Some(_) => return, // a hash collision: leave the older entry alone
                None => {
                    let kids = self.children.get(&parent).map(Vec::as_slice).unwrap_or_default();
                    if chunk.len() < self.block_size
                        && kids.iter().any(|k| self.map.get(k).is_some_and(|e| e.tokens.starts_with(chunk)))
                    {
                        return; // a partly filled block another block already covers
                    }
                    // Partly filled blocks under this parent that this one extends go.
                    let covered: Vec<u64> = kids
                        .iter()
                        .copied()
                        .filter(|k| {
                            self.map
                                .get(k)
                                .is_some_and(|e| e.tokens.len() < chunk.len() && chunk.starts_with(&e.tokens))
                        })
                        .collect();
                    for k in covered {
                        self.remove(pool, k);
                    }
                    pool.retain_block(block);
                    self.map.insert(h, CachedBlock { block, tokens: chunk.to_vec(), parent, last_used: clock });
                    self.children.entry(parent).or_default().push(h);
                }
            }
            parent = h;
        }
    }

    /// Drops the entry `h` and the cache's reference on its block; false if it was not cached.
    fn remove(&mut self, pool: &mut KvPool, h: u64) -> bool {
        let Some(e) = self.map.remove(&h) else { return false };
        pool.release_block(e.block);
        if let Some(kids) = self.children.get_mut(&e.parent) {
            kids.retain(|&k| k != h);
            if kids.is_empty() {
                self.children.remove(&e.parent);
            }
        }
        true
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
            if self.remove(pool, h) {
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

    fn hit(blocks: &[BlockId], tokens: usize) -> Hit {
        Hit { blocks: blocks.to_vec(), tokens }
    }

    #[test]
    fn finds_the_longest_shared_prefix_and_evicts_only_unheld_blocks() {
        let mut pool = KvPool::new(KvShape { layers: 1, kv_heads: 1, head_dim: 2, block_size: 2 }, 8);
        let mut cache = PrefixCache::new(2);
        let mut s = SeqKv::default();
        pool.reserve(&mut s, 5).unwrap();
        s.len = 5;
        cache.insert(&mut pool, &[1, 2, 3, 4, 5], &s.blocks);
        // Two whole blocks and the partly filled third.
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.lookup(&[1, 2, 3, 4, 9, 9], 10), hit(&s.blocks[..2], 4));
        assert_eq!(cache.lookup(&[1, 2, 3, 4, 5, 6, 7], 10), hit(&s.blocks, 5));
        // Into a block: its leading tokens that match.
        assert_eq!(cache.lookup(&[1, 2, 3, 9], 10), hit(&s.blocks[..2], 3));
        assert_eq!(cache.lookup(&[2, 1], 10), hit(&[], 0));
        // Never past `max_tokens`, even inside a block.
        assert_eq!(cache.lookup(&[1, 2, 3, 4], 1), hit(&s.blocks[..1], 1));
        assert_eq!(cache.lookup(&[1, 2, 3, 4], 3), hit(&s.blocks[..2], 3));
        // While the sequence holds them, nothing can be evicted.
        assert_eq!(cache.evictable(&pool), 0);
        pool.release(&mut s);
        assert_eq!(cache.evictable(&pool), 3);
        assert_eq!(pool.used_blocks(), 3);
        assert_eq!(cache.evict(&mut pool, 8), 3);
        assert_eq!(pool.used_blocks(), 0);
        assert_eq!(cache.lookup(&[1, 2, 3, 4, 5], 4), hit(&[], 0));
    }

    #[test]
    fn a_partly_filled_block_is_replaced_by_one_that_extends_it_and_kept_when_covered() {
        let mut pool = KvPool::new(KvShape { layers: 1, kv_heads: 1, head_dim: 2, block_size: 4 }, 8);
        let mut cache = PrefixCache::new(4);
        let seq = |pool: &mut KvPool, n: usize| {
            let mut s = SeqKv::default();
            pool.reserve(&mut s, n).unwrap();
            s.len = n;
            s
        };
        let mut a = seq(&mut pool, 2);
        cache.insert(&mut pool, &[7, 8], &a.blocks);
        let mut b = seq(&mut pool, 3);
        cache.insert(&mut pool, &[7, 8, 9], &b.blocks);
        // [7, 8] is covered by [7, 8, 9]: one entry, holding b's block.
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.lookup(&[7, 8, 1], 3), hit(&b.blocks, 2));
        pool.release(&mut a);
        assert_eq!(pool.used_blocks(), 1);
        // A shorter one already covered is not added.
        let mut c = seq(&mut pool, 1);
        cache.insert(&mut pool, &[7], &c.blocks);
        assert_eq!(cache.len(), 1);
        pool.release(&mut c);
        pool.release(&mut b);
        assert_eq!(pool.used_blocks(), 1);
        // A different continuation under the same parent sits beside it; the longer match wins.
        let mut d = seq(&mut pool, 2);
        cache.insert(&mut pool, &[7, 5], &d.blocks);
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.lookup(&[7, 5, 5], 3), hit(&d.blocks, 2));
        assert_eq!(cache.lookup(&[7, 8, 5], 3).tokens, 2);
        pool.release(&mut d);
        assert_eq!(cache.evict(&mut pool, 8), 2);
        assert_eq!(pool.used_blocks(), 0);
        assert!(cache.children.is_empty());
    }
}
