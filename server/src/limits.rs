//! Per-key rate limits and fair admission.
//!
//! Two GCRA buckets per key: requests per minute, charged one at admission, and generated tokens
//! per minute, charged after the completion (its size is unknown before), so a key may end a
//! minute in debt and waits it out. A bucket holds `burst_secs` worth of its rate (a full
//! minute by default). The same arithmetic runs in process (this module) and, with `--redis`,
//! as one Lua script in Redis shared by every replica; when Redis cannot be reached the
//! in-process buckets take over. `InFlight` caps each key's queued + running sequences so one
//! key flooding the queue cannot starve the others.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::redis_link::RedisLink;

/// A key's rates and the window they are measured over.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rates {
    pub requests_per_minute: Option<u32>,
    pub tokens_per_minute: Option<u32>,
    /// Bucket size, in seconds of the rate.
    pub burst_secs: f64,
}

impl Rates {
    fn interval(per_minute: Option<u32>) -> f64 {
        per_minute.map_or(0.0, |r| 60_000.0 / r.max(1) as f64)
    }
    fn req_interval(&self) -> f64 {
        Self::interval(self.requests_per_minute)
    }
    fn tok_interval(&self) -> f64 {
        Self::interval(self.tokens_per_minute)
    }
    /// Bucket depth in ms: at least one unit of the slower bucket fits.
    fn window(&self) -> f64 {
        (self.burst_secs * 1000.0).max(self.req_interval()).max(self.tok_interval())
    }
    pub fn limited(&self) -> bool {
        self.requests_per_minute.is_some() || self.tokens_per_minute.is_some()
    }
}

/// The answer to an admission check.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    pub allowed: bool,
    /// When refused: ms until a retry can succeed.
    pub retry_ms: u64,
    pub remaining_requests: Option<u64>,
    pub remaining_tokens: Option<u64>,
    /// ms until each bucket is full again.
    pub reset_requests_ms: u64,
    pub reset_tokens_ms: u64,
}

/// GCRA state of one key: the theoretical arrival time of each bucket, in unix ms.
#[derive(Debug, Clone, Copy, Default)]
struct Tat {
    req: f64,
    tok: f64,
}

fn remaining(tat: f64, now: f64, interval: f64, window: f64) -> u64 {
    ((window - (tat - now).max(0.0)) / interval).floor().max(0.0) as u64
}

/// Admission: refuse while the token bucket is empty (less than one token of room) or the
/// request bucket has no room for one more request; else take one request.
fn admit(t: &mut Tat, now: f64, r: &Rates) -> Decision {
    let (ri, ti, w) = (r.req_interval(), r.tok_interval(), r.window());
    let rtat = t.req.max(now);
    let ttat = t.tok.max(now);
    let mut d = Decision {
        allowed: true,
        retry_ms: 0,
        remaining_requests: None,
        remaining_tokens: (ti > 0.0).then(|| remaining(ttat, now, ti, w)),
        reset_requests_ms: 0,
        reset_tokens_ms: if ti > 0.0 { (ttat - now).ceil() as u64 } else { 0 },
    };
    if ti > 0.0 && ttat + ti - now > w {
        d.allowed = false;
        d.retry_ms = (ttat + ti - w - now).ceil() as u64;
    }
    if ri > 0.0 {
        if rtat + ri - now > w {
            d.allowed = false;
            d.retry_ms = d.retry_ms.max((rtat + ri - w - now).ceil() as u64);
        } else if d.allowed {
            t.req = rtat + ri;
        }
        let tat = if d.allowed { t.req } else { rtat };
        d.remaining_requests = Some(remaining(tat, now, ri, w));
        d.reset_requests_ms = (tat - now).ceil().max(0.0) as u64;
    }
    d
}

/// Charges generated tokens (debt allowed, capped at ten windows).
fn charge(t: &mut Tat, now: f64, r: &Rates, tokens: u64) {
    let ti = r.tok_interval();
    if ti > 0.0 && tokens > 0 {
        t.tok = (t.tok.max(now) + tokens as f64 * ti).min(now + 10.0 * r.window());
    }
}

/// The same two operations for Redis, atomically. KEYS: request bucket, token bucket. ARGV:
/// request interval ms, token interval ms, window ms, "admit" | "charge", tokens to charge.
/// Returns {allowed, retry_ms, remaining_requests, remaining_tokens, reset_requests_ms,
/// reset_tokens_ms}; -1 stands for "no limit".
const SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ri, ti, w = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local rtat = math.max(tonumber(redis.call('GET', KEYS[1]) or '0'), now)
local ttat = math.max(tonumber(redis.call('GET', KEYS[2]) or '0'), now)
local function rem(tat, i) return math.max(0, math.floor((w - (tat - now)) / i)) end
if ARGV[4] == 'charge' then
  if ti > 0 then
    ttat = math.min(ttat + tonumber(ARGV[5]) * ti, now + 10 * w)
    redis.call('SET', KEYS[2], string.format('%.3f', ttat), 'PX', math.ceil(ttat - now) + 1)
  end
  return {1, 0, -1, -1, 0, 0}
end
local allowed, retry = 1, 0
local remt, resett, remr, resetr = -1, 0, -1, 0
if ti > 0 then
  remt, resett = rem(ttat, ti), math.ceil(ttat - now)
  if ttat + ti - now > w then allowed, retry = 0, math.ceil(ttat + ti - w - now) end
end
if ri > 0 then
  if rtat + ri - now > w then
    allowed, retry = 0, math.max(retry, math.ceil(rtat + ri - w - now))
  elseif allowed == 1 then
    rtat = rtat + ri
    redis.call('SET', KEYS[1], string.format('%.3f', rtat), 'PX', math.ceil(rtat - now) + 1)
  end
  remr, resetr = rem(rtat, ri), math.ceil(rtat - now)
end
return {allowed, retry, remr, remt, resetr, resett}
"#;

fn now_ms() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

/// Per-key limits, in process or shared through Redis.
pub struct Limiter {
    local: Mutex<HashMap<String, Tat>>,
    redis: Option<Arc<RedisLink>>,
    script: redis::Script,
}

impl Limiter {
    pub fn new(redis: Option<Arc<RedisLink>>) -> Limiter {
        Limiter { local: Mutex::new(HashMap::new()), redis, script: redis::Script::new(SCRIPT) }
    }

    fn local<T>(&self, key: &str, f: impl FnOnce(&mut Tat) -> T) -> T {
        let mut m = self.local.lock().unwrap_or_else(|p| p.into_inner());
        f(m.entry(key.to_string()).or_default())
    }

    async fn shared(&self, key: &str, r: &Rates, op: &str, tokens: u64) -> Option<Vec<i64>> {
        let link = self.redis.as_ref()?;
        let mut inv = self.script.prepare_invoke();
        inv.key(format!("ghostline:rl:{key}:req"))
            .key(format!("ghostline:rl:{key}:tok"))
            .arg(r.req_interval())
            .arg(r.tok_interval())
            .arg(r.window())
            .arg(op)
            .arg(tokens);
        link.run("limits", |mut c| async move { inv.invoke_async::<Vec<i64>>(&mut c).await }).await
    }

    /// Admits one request of `key` or says when to retry.
    pub async fn admit(&self, key: &str, r: &Rates) -> Decision {
        if let Some(v) = self.shared(key, r, "admit", 0).await.filter(|v| v.len() == 6) {
            let opt = |x: i64| (x >= 0).then_some(x as u64);
            return Decision {
                allowed: v[0] == 1,
                retry_ms: v[1].max(0) as u64,
                remaining_requests: opt(v[2]),
                remaining_tokens: opt(v[3]),
                reset_requests_ms: v[4].max(0) as u64,
                reset_tokens_ms: v[5].max(0) as u64,
            };
        }
        self.local(key, |t| admit(t, now_ms(), r))
    }

    /// Charges the tokens a finished completion generated.
    pub async fn charge(&self, key: &str, r: &Rates, tokens: u64) {
        if r.tokens_per_minute.is_none() || tokens == 0 {
            return;
        }
        if self.shared(key, r, "charge", tokens).await.is_none() {
            self.local(key, |t| charge(t, now_ms(), r, tokens));
        }
    }
}

/// Sequences each key has queued or running.
#[derive(Default)]
pub struct InFlight {
    counts: Mutex<HashMap<String, usize>>,
}

/// Holds `n` of a key's slots until dropped.
pub struct Slot {
    owner: Arc<InFlight>,
    key: String,
    n: usize,
}

impl InFlight {
    /// Takes `n` slots of `key` unless that would pass `cap`.
    pub fn acquire(self: &Arc<Self>, key: &str, n: usize, cap: usize) -> Option<Slot> {
        let mut m = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let c = m.entry(key.to_string()).or_default();
        if *c + n > cap {
            return None;
        }
        *c += n;
        Some(Slot { owner: self.clone(), key: key.to_string(), n })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut m = self.owner.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = m.get_mut(&self.key) {
            *c = c.saturating_sub(self.n);
            if *c == 0 {
                m.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RPM2: Rates = Rates { requests_per_minute: Some(120), tokens_per_minute: None, burst_secs: 1.0 };

    #[test]
    fn requests_pass_up_to_the_burst_then_wait_one_interval() {
        // 120/min = one per 500 ms; a 1 s bucket holds two.
        let mut t = Tat::default();
        let now = 1_000_000.0;
        let a = admit(&mut t, now, &RPM2);
        assert!(a.allowed);
        assert_eq!(a.remaining_requests, Some(1));
        assert!(admit(&mut t, now, &RPM2).allowed);
        let c = admit(&mut t, now, &RPM2);
        assert!(!c.allowed);
        assert_eq!(c.retry_ms, 500);
        assert_eq!(c.remaining_requests, Some(0));
        assert!(!admit(&mut t, now + 499.0, &RPM2).allowed);
        assert!(admit(&mut t, now + 500.0, &RPM2).allowed);
    }

    #[test]
    fn tokens_are_charged_after_and_block_until_repaid() {
        // 600 tokens/min = one per 100 ms; the bucket holds 10.
        let r = Rates { requests_per_minute: None, tokens_per_minute: Some(600), burst_secs: 1.0 };
        let mut t = Tat::default();
        let now = 5_000.0;
        assert!(admit(&mut t, now, &r).allowed);
        charge(&mut t, now, &r, 25); // 15 tokens of debt
        let d = admit(&mut t, now, &r);
        assert!(!d.allowed);
        assert_eq!(d.retry_ms, 1600, "repay 15 tokens plus room for one");
        assert_eq!(d.remaining_tokens, Some(0));
        assert!(admit(&mut t, now + 1600.0, &r).allowed);
    }

    #[test]
    fn unlimited_rates_always_pass() {
        let r = Rates { requests_per_minute: None, tokens_per_minute: None, burst_secs: 60.0 };
        let mut t = Tat::default();
        for _ in 0..1000 {
            assert!(admit(&mut t, 0.0, &r).allowed);
        }
    }

    #[test]
    fn in_flight_slots_are_capped_per_key_and_freed_on_drop() {
        let f = Arc::new(InFlight::default());
        let a = f.acquire("a", 3, 4).unwrap();
        assert!(f.acquire("a", 2, 4).is_none());
        let b = f.acquire("b", 4, 4).unwrap();
        drop(a);
        assert!(f.acquire("a", 4, 4).is_some());
        drop(b);
    }
}
