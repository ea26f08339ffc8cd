//! The owner of adaptive triggering on the keystroke path: each document's rhythm, the typist's
//! habits and the server's pace (the model of `pacing`, behind locks, on tokio's clock), and
//! the counts of trigger decisions that `ghostline/stats` reports.
//!
//! Invariant: locks are held only to read or update the model, never across an await.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use ropey::Rope;
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::pacing::{self, Context, Habits, Plan, Rhythm, ServerPace};

/// Documents whose rhythm is kept (the most recently typed in).
const RHYTHMS_KEPT: usize = 64;

/// What became of automatic and invoked requests.
#[derive(Default, Debug)]
pub struct TriggerStats {
    /// Requests sent to the server, in all.
    pub sent: AtomicU64,
    /// Of those, sent early on the context's promise of a pause (adaptive).
    pub sent_early: AtomicU64,
    /// Sent once the next keystroke was overdue (adaptive).
    pub sent_overdue: AtomicU64,
    /// Streams that delivered a first line (or their whole answer).
    pub answered: AtomicU64,
    /// Suggestions put on screen (from any source).
    pub shown: AtomicU64,
    /// Streams let go before they finished (a newer keystroke took over).
    pub superseded: AtomicU64,
    skipped: Mutex<BTreeMap<&'static str, u64>>,
}

pub fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

impl TriggerStats {
    /// A request that was not sent, and why.
    pub fn skipped(&self, reason: &'static str) {
        *self.skipped.lock().entry(reason).or_insert(0) += 1;
    }

    pub fn skipped_for(&self, reason: &str) -> u64 {
        self.skipped.lock().get(reason).copied().unwrap_or(0)
    }
}

/// Counts a request as skipped for `why` unless disarmed: a wait that ends at a newer keystroke,
/// and one the client cancels (its future dropped mid-wait), both count.
pub struct SkipUnlessSent<'a> {
    stats: &'a TriggerStats,
    why: &'static str,
    armed: bool,
}

impl<'a> SkipUnlessSent<'a> {
    pub fn new(stats: &'a TriggerStats, why: &'static str) -> Self {
        SkipUnlessSent { stats, why, armed: true }
    }

    /// The wait ended and the request goes on.
    pub fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for SkipUnlessSent<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.stats.skipped(self.why);
        }
    }
}

pub struct Pacer {
    origin: Instant,
    rhythms: Mutex<HashMap<String, (u64, Rhythm)>>,
    habits: Mutex<Habits>,
    server: Mutex<ServerPace>,
    pub stats: TriggerStats,
}

impl Default for Pacer {
    fn default() -> Self {
        Pacer {
            origin: Instant::now(),
            rhythms: Mutex::new(HashMap::new()),
            habits: Mutex::new(Habits::default()),
            server: Mutex::new(ServerPace::default()),
            stats: TriggerStats::default(),
        }
    }
}

impl Pacer {
    fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    /// A keystroke changed `uri`, leaving its last edit's end at char `end` of `rope`.
    pub fn key(&self, uri: &str, rope: &Rope, end: usize) {
        let ctx = Context::at(rope, end);
        let now = self.now_ms();
        let mut rhythms = self.rhythms.lock();
        if !rhythms.contains_key(uri) && rhythms.len() >= RHYTHMS_KEPT {
            let oldest = rhythms.iter().min_by_key(|(_, (t, _))| *t).map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                rhythms.remove(&k);
            }
        }
        let (last, rhythm) = rhythms.entry(uri.to_string()).or_default();
        *last = now;
        rhythm.key(now, ctx, &mut self.habits.lock());
    }

    /// When an automatic request at char `cursor` of `rope` is sent.
    pub fn plan(&self, uri: &str, rope: &Rope, cursor: usize) -> Plan {
        let ctx = Context::at(rope, cursor);
        let rhythm = self.rhythms.lock().get(uri).map(|(_, r)| r.clone()).unwrap_or_default();
        let habits = self.habits.lock().clone();
        let server = self.server.lock().clone();
        pacing::plan(&rhythm, &habits, &server, ctx)
    }

    /// A stream's first line arrived `d` after it was sent.
    pub fn first_line(&self, d: Duration) {
        bump(&self.stats.answered);
        self.server.lock().observe(d.as_secs_f64() * 1e3);
    }

    pub fn forget(&self, uri: &str) {
        self.rhythms.lock().remove(uri);
    }

    /// The trigger decisions and the model's current figures, for `ghostline/stats`.
    pub fn report(&self, adaptive: bool, reused: u64, cache_hits: u64) -> Value {
        let s = &self.stats;
        let server = self.server.lock().clone();
        let typical = {
            let rhythms = self.rhythms.lock();
            rhythms.values().max_by_key(|(t, _)| *t).and_then(|(_, r)| r.typical_gap_ms())
        };
        json!({
            "mode": if adaptive { "adaptive" } else { "debounce" },
            "sent": get(&s.sent),
            "sent_early": get(&s.sent_early),
            "sent_overdue": get(&s.sent_overdue),
            "skipped": s.skipped.lock().clone(),
            "answered": get(&s.answered),
            "shown": get(&s.shown),
            "superseded": get(&s.superseded),
            "reused": reused,
            "cache_hits": cache_hits,
            "typing_gap_ms": typical,
            "first_line_ms": (server.first_line_ms() * 10.0).round() / 10.0,
            "server_load": (server.load() * 100.0).round() / 100.0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn keystrokes_on_the_clock_shape_the_plan_and_the_report() {
        let p = Pacer::default();
        let rope = Rope::from_str("x = total\n");
        for _ in 0..12 {
            p.key("a", &rope, 9);
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        let plan = p.plan("a", &rope, 9);
        assert!(!plan.early);
        assert_eq!(plan.wait_ms, 151, "just after this typist's usual gap");
        // Another document has no rhythm yet.
        assert_eq!(p.plan("b", &rope, 9).wait_ms, 120);
        p.first_line(Duration::from_millis(80));
        p.stats.skipped("typing");
        drop(SkipUnlessSent::new(&p.stats, "typing"));
        SkipUnlessSent::new(&p.stats, "typing").disarm();
        let r = p.report(true, 3, 4);
        assert_eq!(r["typing_gap_ms"], 150);
        assert_eq!(r["first_line_ms"], 80.0);
        assert_eq!(r["answered"], 1);
        assert_eq!(r["skipped"]["typing"], 2);
        assert_eq!((r["reused"].as_u64(), r["cache_hits"].as_u64()), (Some(3), Some(4)));
        p.forget("a");
        assert_eq!(p.plan("a", &rope, 9).wait_ms, 120);
    }

    #[test]
    fn the_rhythms_kept_are_bounded() {
        let p = Pacer::default();
        let rope = Rope::from_str("x\n");
        for i in 0..(RHYTHMS_KEPT + 10) {
            p.key(&format!("file:///{i}"), &rope, 1);
        }
        assert_eq!(p.rhythms.lock().len(), RHYTHMS_KEPT);
    }
}
