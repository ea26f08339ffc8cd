//! The response cache: finished deterministic completions by a hash of everything that decides
//! them.
//!
//! The key covers the model's identity (its name and a digest of its weights and tokenizer),
//! the fully templated prompt tokens and every generation parameter. Only greedy (temperature
//! 0), single-candidate requests are cached, and only completions that passed the output
//! filters. Entries live in an in-process LRU bounded by bytes and, with `--redis`, in Redis
//! with a TTL so replicas share them. A Redis failure only means a local answer or a miss.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ghostline_api::FinishReason;
use lru::LruCache;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::redis_link::RedisLink;

/// What a hit answers with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CachedAnswer {
    pub text: String,
    pub finish: FinishReason,
    pub completion_tokens: u32,
}

pub type Key = [u8; 32];

/// Digest of a checkpoint's weights, config and tokenizer files (sorted by name), so two
/// servers agree on a model exactly when they load the same bytes. A single-file checkpoint
/// (`.gguf`) is digested by its name and bytes.
pub fn model_digest(path: &Path) -> anyhow::Result<String> {
    use std::io::Read;
    let (dir, names) = match (path.is_file(), path.parent(), path.file_name()) {
        (true, Some(dir), Some(name)) => (dir, vec![name.to_string_lossy().into_owned()]),
        _ => {
            let mut names: Vec<_> = std::fs::read_dir(path)?
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".safetensors") || n.ends_with(".json"))
                .collect();
            names.sort();
            (path, names)
        }
    };
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    for n in names {
        h.update(n.as_bytes());
        h.update([0]);
        let mut f = std::fs::File::open(dir.join(&n))?;
        loop {
            let k = f.read(&mut buf)?;
            if k == 0 {
                break;
            }
            h.update(&buf[..k]);
        }
    }
    Ok(h.finalize().iter().take(16).map(|b| format!("{b:02x}")).collect())
}

/// Everything besides the prompt that decides a greedy completion.
pub struct KeyParts<'a> {
    pub model: &'a str,
    pub prompt_ids: &'a [u32],
    pub stop_ids: &'a [u32],
    pub max_tokens: usize,
    pub stop: &'a [String],
    pub top_k: usize,
    pub top_p: f32,
    /// The text a healed prompt's first token must begin with: prompts that differ only in
    /// it have the same ids (`x = ` and `x = os` both end at ` =`) but not the same answer.
    pub heal: Option<&'a str>,
}

pub fn key(p: &KeyParts) -> Key {
    let mut h = Sha256::new();
    h.update(b"ghostline-cache-v2\0");
    h.update(p.model.as_bytes());
    h.update([0]);
    h.update((p.prompt_ids.len() as u64).to_le_bytes());
    for id in p.prompt_ids {
        h.update(id.to_le_bytes());
    }
    h.update((p.stop_ids.len() as u64).to_le_bytes());
    for id in p.stop_ids {
        h.update(id.to_le_bytes());
    }
    h.update((p.max_tokens as u64).to_le_bytes());
    h.update((p.stop.len() as u64).to_le_bytes());
    for s in p.stop {
        h.update((s.len() as u64).to_le_bytes());
        h.update(s.as_bytes());
    }
    h.update((p.top_k as u64).to_le_bytes());
    h.update(p.top_p.to_bits().to_le_bytes());
    match p.heal {
        Some(t) => {
            h.update([1]);
            h.update((t.len() as u64).to_le_bytes());
            h.update(t.as_bytes());
        }
        None => h.update([0]),
    }
    h.finalize().into()
}

/// LRU bounded by the bytes of its entries.
struct Local {
    lru: LruCache<Key, Arc<CachedAnswer>>,
    bytes: usize,
    max_bytes: usize,
}

fn cost(e: &CachedAnswer) -> usize {
    e.text.len() + 32 + 64
}

impl Local {
    fn put(&mut self, k: Key, e: Arc<CachedAnswer>) {
        let c = cost(&e);
        if c > self.max_bytes {
            return;
        }
        if let Some(old) = self.lru.put(k, e) {
            self.bytes -= cost(&old);
        }
        self.bytes += c;
        while self.bytes > self.max_bytes {
            match self.lru.pop_lru() {
                Some((_, old)) => self.bytes -= cost(&old),
                None => break,
            }
        }
    }
}

pub struct ResponseCache {
    local: Mutex<Local>,
    redis: Option<Arc<RedisLink>>,
    ttl: Duration,
}

fn redis_key(k: &Key) -> String {
    let hex: String = k.iter().map(|b| format!("{b:02x}")).collect();
    format!("ghostline:cache:{hex}")
}

impl ResponseCache {
    pub fn new(max_bytes: usize, redis: Option<Arc<RedisLink>>, ttl: Duration) -> ResponseCache {
        ResponseCache { local: Mutex::new(Local { lru: LruCache::unbounded(), bytes: 0, max_bytes }), redis, ttl }
    }

    fn local(&self) -> std::sync::MutexGuard<'_, Local> {
        self.local.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The entry for `k`: from this process, else from Redis (then kept here too).
    pub async fn get(&self, k: &Key) -> Option<Arc<CachedAnswer>> {
        if let Some(e) = self.local().lru.get(k) {
            return Some(e.clone());
        }
        let link = self.redis.as_ref()?;
        let rk = redis_key(k);
        let raw: Option<String> =
            link.run("cache_get", |mut c| async move { redis::cmd("GET").arg(rk).query_async(&mut c).await }).await?;
        let e: CachedAnswer = serde_json::from_str(&raw?).ok()?;
        let e = Arc::new(e);
        self.local().put(*k, e.clone());
        Some(e)
    }

    /// Stores an entry here and, in the background, in Redis.
    pub fn put(self: &Arc<Self>, k: Key, e: CachedAnswer) {
        let e = Arc::new(e);
        self.local().put(k, e.clone());
        if let Some(link) = self.redis.clone() {
            let (rk, ttl) = (redis_key(&k), self.ttl.as_secs().max(1));
            let Ok(v) = serde_json::to_string(&*e) else { return };
            tokio::spawn(async move {
                link.run("cache_put", |mut c| async move {
                    redis::cmd("SET").arg(rk).arg(v).arg("EX").arg(ttl).query_async::<()>(&mut c).await
                })
                .await;
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(text: &str) -> CachedAnswer {
        CachedAnswer { text: text.into(), finish: FinishReason::Stop, completion_tokens: 1 }
    }

    #[test]
    fn every_part_of_the_key_matters() {
        let stop = vec!["\n".to_string()];
        let base = KeyParts {
            model: "m@abc",
            prompt_ids: &[1, 2, 3],
            stop_ids: &[0],
            max_tokens: 8,
            stop: &stop,
            top_k: 0,
            top_p: 1.0,
            heal: None,
        };
        let k = key(&base);
        assert_eq!(k, key(&KeyParts { ..base }));
        let other_stop = vec!["\n\n".to_string()];
        for changed in [
            KeyParts { model: "m@abd", ..base },
            KeyParts { prompt_ids: &[1, 2], ..base },
            KeyParts { stop_ids: &[0, 7], ..base },
            KeyParts { max_tokens: 9, ..base },
            KeyParts { stop: &other_stop, ..base },
            KeyParts { top_k: 5, ..base },
            KeyParts { top_p: 0.9, ..base },
            KeyParts { heal: Some(" os"), ..base },
            KeyParts { heal: Some(" "), ..base },
        ] {
            assert_ne!(key(&changed), k);
        }
    }

    #[test]
    fn the_local_cache_is_bounded_by_bytes_and_evicts_least_recent() {
        let mut l = Local { lru: LruCache::unbounded(), bytes: 0, max_bytes: 3 * (100 + 96) };
        for i in 0..3u8 {
            l.put([i; 32], Arc::new(entry(&"x".repeat(100))));
        }
        assert!(l.lru.get(&[0; 32]).is_some()); // 0 is now the most recent
        l.put([9; 32], Arc::new(entry(&"y".repeat(100))));
        assert!(l.lru.peek(&[1; 32]).is_none(), "the least recent went");
        assert!(l.lru.peek(&[0; 32]).is_some());
        assert!(l.bytes <= l.max_bytes);
        l.put([8; 32], Arc::new(entry(&"z".repeat(10_000))));
        assert!(l.lru.peek(&[8; 32]).is_none(), "larger than the whole cache: not kept");
    }

    #[test]
    fn the_model_digest_follows_the_bytes() {
        let dir = std::env::temp_dir().join(format!("ghostline-digest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("config.json"), "{}").unwrap();
        std::fs::write(dir.join("model.safetensors"), "a").unwrap();
        let a = model_digest(&dir).unwrap();
        std::fs::write(dir.join("model.safetensors"), "b").unwrap();
        assert_ne!(a, model_digest(&dir).unwrap());
        // A .gguf file: its own bytes, not its directory's.
        let gguf = dir.join("model.gguf");
        std::fs::write(&gguf, "GGUF a").unwrap();
        let g = model_digest(&gguf).unwrap();
        std::fs::write(dir.join("model.safetensors"), "c").unwrap();
        assert_eq!(g, model_digest(&gguf).unwrap());
        std::fs::write(&gguf, "GGUF b").unwrap();
        assert_ne!(g, model_digest(&gguf).unwrap());
        std::fs::remove_dir_all(dir).ok();
    }
}
