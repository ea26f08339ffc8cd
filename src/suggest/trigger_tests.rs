//! Adaptive triggering against the scripted source on tokio's paused clock (the typist's gaps
//! are scripted, nothing is timed for real): steady typing sends a fraction of the requests a
//! fixed debounce sends, the pause at the end of the line still gets its answer, and a context
//! that promises a pause is asked early while the end of a word waits until the next keystroke
//! is overdue.

use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::tests::{core_with, settings, texts, type_at, PY, TYPING, URI};
use super::*;
use crate::pacing::EARLY_WAIT_MS;
use crate::source::script::{Reply, Script};

const LINE: &str = "sizes_total = os.path.getsize(p)";
const GAP: Duration = Duration::from_millis(130);

fn script() -> Arc<Script> {
    Script::new((0..64).map(|_| Reply::Texts(vec![" + 1"])).collect())
}

fn adaptive() -> Settings {
    Settings { trigger: Trigger::Adaptive, ..settings() }
}

type Pending = JoinHandle<Result<Option<Suggestion>, ApiError>>;

/// One keystroke and the automatic request that follows it (as VS Code sends them).
fn key(core: &Arc<Core>, version: &mut i32, pos: Position, c: char) -> (Pending, Position) {
    *version += 1;
    let pos = type_at(core, *version, pos, &c.to_string());
    let core = core.clone();
    (tokio::spawn(async move { core.suggest(URI, pos, TYPING).await }), pos)
}

/// Types `text` one character per `GAP`; returns the last keystroke's request and the cursor.
async fn type_text(core: &Arc<Core>, version: &mut i32, mut pos: Position, text: &str) -> (Pending, Position) {
    let mut last = None;
    for c in text.chars() {
        let (pending, at) = key(core, version, pos, c);
        pos = at;
        last = Some(pending);
        tokio::time::sleep(GAP).await;
    }
    (last.expect("some text to type"), pos)
}

/// How long after now the script receives its next request.
async fn next_request_after(script: &Script) -> Duration {
    let (before, t) = (script.sent().len(), Instant::now());
    for _ in 0..2000 {
        if script.sent().len() > before {
            return t.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("no request within 2 s");
}

#[tokio::test(start_paused = true)]
async fn steady_typing_sends_a_fraction_of_the_requests_and_the_pause_is_answered() {
    let keys = LINE.chars().count();
    let mut sent = vec![];
    for trigger in [Trigger::Debounce, Trigger::Adaptive] {
        let script = script();
        let (core, pos) = core_with(&script, Settings { trigger, debounce_ms: 75, ..settings() }, PY);
        let (last, _) = type_text(&core, &mut 1, pos, LINE).await;
        // The typist pauses at the end of the line.
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let s = last.await.unwrap().unwrap();
        assert_eq!(texts(&s), [" + 1"], "{trigger:?}: the pause gets its suggestion");
        assert_eq!(s.map(|s| s.source), Some(Source::Fetched));
        let stats = &core.pacer.stats;
        assert_eq!(stats.sent.load(Ordering::Relaxed) as usize, script.sent().len());
        let skipped = stats.skipped_for(if trigger == Trigger::Debounce { "debounce" } else { "typing" }) as usize;
        let from_cache = core.counters.cache_hits.load(Ordering::Relaxed) as usize;
        assert_eq!(script.sent().len() + skipped + from_cache, keys, "{trigger:?}: every keystroke accounted for");
        sent.push(script.sent().len());
    }
    assert!(sent[0] + 3 >= keys, "a debounce shorter than the typist's gap asks at almost every key: {sent:?}");
    assert!(sent[1] * 3 <= keys, "adaptive asks at a third of the keys or fewer: {sent:?} of {keys}");
}

#[tokio::test(start_paused = true)]
async fn a_closer_is_asked_early_and_the_end_of_a_word_once_the_next_key_is_overdue() {
    let script = script();
    let (core, pos) = core_with(&script, adaptive(), PY);
    let mut v = 1;
    // The rhythm is learnt (130 ms a key).
    let (_, pos) = type_text(&core, &mut v, pos, "sizes_total").await;
    let sent = core.pacer.stats.sent.load(Ordering::Relaxed);
    let overdue = core.pacer.stats.sent_overdue.load(Ordering::Relaxed);
    // The end of a word: no request until the typist's usual gap has passed.
    let (_, pos) = key(&core, &mut v, pos, 'x');
    let after = next_request_after(&script).await;
    assert!(after > GAP && after < GAP + Duration::from_millis(20), "{after:?}");
    assert_eq!(core.pacer.stats.sent_overdue.load(Ordering::Relaxed), overdue + 1);
    // A closing parenthesis (a pause is likely): asked at once.
    let (_, pos) = type_text(&core, &mut v, pos, " = len(p").await;
    let (pending, _) = key(&core, &mut v, pos, ')');
    let after = next_request_after(&script).await;
    assert!(after <= Duration::from_millis(EARLY_WAIT_MS + 1), "{after:?}");
    assert_eq!(core.pacer.stats.sent_early.load(Ordering::Relaxed), 1);
    assert_eq!(texts(&pending.await.unwrap().unwrap()), [" + 1"]);
    assert!(core.pacer.stats.sent.load(Ordering::Relaxed) > sent);
}
