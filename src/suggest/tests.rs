//! The decisions `suggest` makes, against a scripted completion source (no HTTP): debounce and
//! supersession, the cache and typed-ahead, in-flight reuse, health gating on 401 / 429 /
//! unreachable, notices once per change, model discovery within the deadline, the request
//! itself (snapshots), and that a panic in one handler leaves later suggestions working.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::*;
use crate::source::script::{one_model, Models, Reply, Script};

pub(super) const URI: &str = "file:///project/sizes.py";
/// A fixture with the cursor at `|`.
pub(super) const PY: &str = "import os\n\n\ndef total_size(paths):\n    sizes = []\n    for p in paths:\n        size = |\n        sizes.append(size)\n    return sum(sizes)\n";

const INVOKED: Ask = Ask { invoked: true, n: 1, debounce: false };
pub(super) const TYPING: Ask = Ask { invoked: false, n: 1, debounce: true };

/// A fixed 50 ms debounce: the decisions these tests pin do not depend on the typist's rhythm
/// (`trigger_tests` covers the adaptive wait).
pub(super) fn settings() -> Settings {
    Settings {
        telemetry: false,
        trigger: Trigger::Debounce,
        debounce_ms: 50,
        request_timeout_ms: 2000,
        ..Settings::default()
    }
}

/// A core over `script` with `text` open (`|` marks the cursor, returned as a position).
pub(super) fn core_with(script: &Arc<Script>, s: Settings, text: &str) -> (Arc<Core>, Position) {
    let core = Core::with_source(s, script.clone());
    let at = text.find('|').expect("a | marks the cursor");
    let before = &text[..at];
    let line = before.matches('\n').count() as u32;
    let col = before.rsplit('\n').next().unwrap_or("").encode_utf16().count() as u32;
    core.open(URI, "python", 1, &text.replacen('|', "", 1));
    (core, Position::new(line, col))
}

fn notices(core: &Core) -> mpsc::UnboundedReceiver<Notice> {
    let (tx, rx) = mpsc::unbounded_channel();
    core.set_notices(tx);
    rx
}

fn drain(rx: &mut mpsc::UnboundedReceiver<Notice>) -> Vec<&'static str> {
    let mut v = vec![];
    while let Ok(n) = rx.try_recv() {
        v.push(n.state);
    }
    v
}

pub(super) fn type_at(core: &Core, version: i32, pos: Position, text: &str) -> Position {
    assert!(core.change(URI, version, &[(Some((pos, pos)), text.to_string())]));
    Position::new(pos.line, pos.character + text.encode_utf16().count() as u32)
}

pub(super) fn texts(s: &Option<Suggestion>) -> Vec<&str> {
    s.as_ref().map(|s| s.items.iter().map(|(_, t)| t.as_str()).collect()).unwrap_or_default()
}

#[tokio::test]
async fn a_fetched_suggestion_is_post_processed_and_typing_it_is_answered_from_the_cache() {
    let script = Script::new(vec![Reply::Texts(vec!["os.path.getsize(p)\n        print(size)\n"])]);
    let (core, pos) = core_with(&script, settings(), PY);
    let s = core.suggest(URI, pos, INVOKED).await.unwrap();
    assert_eq!(texts(&s), ["os.path.getsize(p)"], "one line, cut at its end");
    assert_eq!(s.as_ref().map(|s| s.source), Some(Source::Fetched));
    // Typing the suggestion's start: the rest from the cache, no new request.
    let pos = type_at(&core, 2, pos, "os.");
    let s = core.suggest(URI, pos, TYPING).await.unwrap();
    assert_eq!(texts(&s), ["path.getsize(p)"]);
    assert_eq!(s.map(|s| s.source), Some(Source::Cache));
    assert_eq!(script.sent().len(), 1);
    // Typing something else: a new request.
    script.push(Reply::Texts(vec!["stat(p).st_size"]));
    let pos = type_at(&core, 3, pos, "x");
    assert_eq!(texts(&core.suggest(URI, pos, INVOKED).await.unwrap()), ["stat(p).st_size"]);
    assert_eq!(script.sent().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_newer_keystroke_during_the_debounce_supersedes_without_a_request() {
    let script = Script::new(vec![Reply::Texts(vec!["len(p)"])]);
    let (core, pos) = core_with(&script, settings(), PY);
    let waiting = {
        let core = core.clone();
        tokio::spawn(async move { core.suggest(URI, pos, TYPING).await })
    };
    tokio::time::sleep(Duration::from_millis(10)).await;
    let pos = type_at(&core, 2, pos, "l");
    assert!(waiting.await.unwrap().unwrap().is_none(), "superseded");
    assert!(script.sent().is_empty(), "a superseded request never reaches the server");
    assert_eq!(core.counters.superseded.load(Ordering::Relaxed), 1);
    // The newer keystroke's own request waits its debounce out and is answered.
    assert_eq!(texts(&core.suggest(URI, pos, TYPING).await.unwrap()), ["len(p)"]);
    assert_eq!(script.sent().len(), 1);
}

/// Yields (and sleeps a little) until `cond` holds; fails the test after a few seconds.
async fn until(what: &str, cond: impl Fn() -> bool) {
    for _ in 0..2000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    panic!("never: {what}");
}

#[tokio::test]
async fn a_stream_in_flight_serves_the_next_keystroke_that_continues_it() {
    let script = Script::new(vec![Reply::Held(vec!["os.path", ".getsize(p)"])]);
    let (core, pos) = core_with(&script, settings(), PY);
    let first = {
        let core = core.clone();
        tokio::spawn(async move { core.suggest(URI, pos, INVOKED).await })
    };
    until("the stream holds", || {
        core.reuse.in_flight(URI)
            && script.sent().len() == 1
            && core.reuse.serving(URI, &ropey::Rope::new(), 0).is_none()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let pos = type_at(&core, 2, pos, "os.");
    assert!(core.reuse.in_flight(URI), "the typed text continues the stream");
    let second = {
        let core = core.clone();
        tokio::spawn(async move { core.suggest(URI, pos, INVOKED).await })
    };
    until("the second request waits on the stream", || core.counters.reused.load(Ordering::Relaxed) == 1).await;
    script.release();
    assert!(first.await.unwrap().unwrap().is_none(), "the older request is superseded");
    let s = second.await.unwrap().unwrap();
    assert_eq!(texts(&s), ["path.getsize(p)"]);
    assert_eq!(s.map(|s| s.source), Some(Source::Reused));
    assert_eq!(script.sent().len(), 1, "one stream for both keystrokes");
    // Typing against a stream drops it: the next request is a new one.
    core.reuse.forget(URI);
    script.push(Reply::Held(vec!["path.join"]));
    let third = {
        let core = core.clone();
        tokio::spawn(async move { core.suggest(URI, pos, INVOKED).await })
    };
    until("the second stream holds", || core.reuse.in_flight(URI) && script.sent().len() == 2).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    type_at(&core, 3, pos, "z");
    assert!(!core.reuse.in_flight(URI), "a stream the text no longer matches is dropped");
    assert!(third.await.unwrap().unwrap().is_none());
    script.release();
}

#[tokio::test]
async fn a_401_stops_requests_until_the_settings_change_with_one_notice() {
    let unauthorized = ApiError::Status { code: 401, message: "bad key".into(), param: None, retry_after: None };
    let script = Script::new(vec![Reply::Fail(unauthorized.clone())]);
    let (core, pos) = core_with(&script, settings(), PY);
    let mut rx = notices(&core);
    assert_eq!(core.suggest(URI, pos, INVOKED).await.unwrap_err(), unauthorized);
    for _ in 0..3 {
        assert!(core.suggest(URI, pos, INVOKED).await.unwrap().is_none());
    }
    assert_eq!(script.sent().len(), 1, "nothing asked after the 401");
    assert_eq!(drain(&mut rx), ["unauthorized"]);
    // A new key: asked again, and the recovery is told.
    script.push(Reply::Texts(vec!["len(p)"]));
    core.update_settings(&serde_json::json!({"apiKey": "new"}));
    assert_eq!(texts(&core.suggest(URI, pos, INVOKED).await.unwrap()), ["len(p)"]);
    assert_eq!(drain(&mut rx), Vec::<&str>::new(), "a clean slate: nothing to recover from");
}

#[tokio::test(start_paused = true)]
async fn a_429_waits_out_retry_after_and_an_unreachable_server_backs_off() {
    let limited = ApiError::Status { code: 429, message: "slow down".into(), param: None, retry_after: Some(2) };
    let down = ApiError::Unreachable("connection refused".into());
    let script = Script::new(vec![
        Reply::Fail(limited),
        Reply::Texts(vec!["len(p)"]),
        Reply::Fail(down.clone()),
        Reply::Fail(down),
        Reply::Texts(vec!["len(p)"]),
    ]);
    let (core, pos) = core_with(&script, settings(), PY);
    let mut rx = notices(&core);
    assert!(core.suggest(URI, pos, INVOKED).await.is_err());
    assert!(core.suggest(URI, pos, INVOKED).await.unwrap().is_none(), "within Retry-After");
    assert_eq!(script.sent().len(), 1);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(texts(&core.suggest(URI, pos, INVOKED).await.unwrap()), ["len(p)"]);
    assert_eq!(drain(&mut rx), ["limited", "ready"]);
    // Unreachable: 1 s without requests, then 2 s; told once, and once when it is back.
    core.reuse.forget(URI);
    assert!(core.suggest(URI, pos, INVOKED).await.is_err());
    assert!(core.suggest(URI, pos, INVOKED).await.unwrap().is_none());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(core.suggest(URI, pos, INVOKED).await.is_err());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(core.suggest(URI, pos, INVOKED).await.unwrap().is_none(), "the backoff doubled");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(texts(&core.suggest(URI, pos, INVOKED).await.unwrap()), ["len(p)"]);
    assert_eq!(script.sent().len(), 5);
    assert_eq!(drain(&mut rx), ["error", "ready"]);
}

#[tokio::test(start_paused = true)]
async fn a_server_that_never_answers_costs_the_deadline_per_request_and_one_notice() {
    // Accepts the connection and never answers /v1/models.
    let script = Script::new(vec![]);
    script.set_models(Models::Hang);
    let s = Settings { request_timeout_ms: 300, ..settings() };
    let (core, pos) = core_with(&script, s, PY);
    let mut rx = notices(&core);
    for _ in 0..3 {
        let t = tokio::time::Instant::now();
        let e = core.suggest(URI, pos, INVOKED).await.unwrap_err();
        assert!(e.to_string().contains("no answer within 300 ms"), "{e}");
        assert_eq!(t.elapsed(), Duration::from_millis(300));
        tokio::time::sleep(Duration::from_secs(31)).await;
    }
    assert_eq!(drain(&mut rx), ["error"]);
    // Discovery answers, the stream never does: the same bound.
    script.set_models(Models::List(one_model(2048, Some("qwen"))));
    script.push(Reply::Hang);
    let t = tokio::time::Instant::now();
    assert!(core.suggest(URI, pos, INVOKED).await.is_err());
    assert_eq!(t.elapsed(), Duration::from_millis(300));
    assert!(drain(&mut rx).is_empty());
}

#[tokio::test]
async fn a_server_without_v1_models_is_asked_once_and_still_completes() {
    let script = Script::new(vec![Reply::Texts(vec!["len(p)"]), Reply::Texts(vec!["len(p)"])]);
    script.set_models(Models::Fail(ApiError::Status {
        code: 404,
        message: "no".into(),
        param: None,
        retry_after: None,
    }));
    let (core, pos) = core_with(&script, settings(), PY);
    assert_eq!(texts(&core.suggest(URI, pos, INVOKED).await.unwrap()), ["len(p)"]);
    core.reuse.forget(URI);
    assert_eq!(texts(&core.suggest(URI, pos, INVOKED).await.unwrap()), ["len(p)"]);
    assert_eq!(*script.model_calls.lock(), 1);
    assert_eq!(script.sent()[0].suffix.as_deref().map(|s| s.starts_with('\n')), Some(true), "FIM by default");
}

#[tokio::test]
async fn a_panic_in_one_handler_does_not_empty_later_suggestions() {
    let script = Script::new(vec![Reply::Texts(vec!["len(p)"])]);
    let (core, pos) = core_with(&script, settings(), PY);
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _docs = core.documents.docs.lock();
        panic!("a bug while the documents are locked");
    }));
    assert!(r.is_err());
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _s = core.settings.write();
        panic!("a bug while the settings are locked");
    }));
    assert!(r.is_err());
    assert_eq!(texts(&core.suggest(URI, pos, INVOKED).await.unwrap()), ["len(p)"]);
}

#[tokio::test]
async fn telemetry_off_starts_nothing_and_on_starts_the_sender() {
    let core = Core::new(Settings { telemetry: false, ..Settings::default() });
    let o = Outcome {
        completion_id: "cmpl-1".into(),
        index: 0,
        kind: ghostline_api::TelemetryKind::Shown,
        accepted_chars: None,
        shown_ms: 0,
        language: "python".into(),
    };
    core.record(std::slice::from_ref(&o));
    assert!(!core.telemetry.started(), "telemetry: false must neither queue nor spool");
    core.update_settings(&serde_json::json!({"telemetry": true}));
    core.record(&[o]);
    assert!(core.telemetry.started());
}

/// The request as sent, with the per-process session id replaced.
fn sent_request(script: &Script, i: usize) -> CompletionRequest {
    let mut r = script.sent()[i].clone();
    assert!(r.user.as_deref().is_some_and(|u| u.starts_with("lsp-")));
    r.user = Some("[session]".into());
    r
}

#[tokio::test]
async fn the_request_for_a_fixture_document_with_another_file_open() {
    let script = Script::new(vec![Reply::Texts(vec!["os.path.getsize(p)"]), Reply::Texts(vec!["a", "b", "c"])]);
    let (core, pos) = core_with(&script, settings(), PY);
    core.telemetry.set_editor(Some("nvim".into()));
    core.open(
        "file:///project/util.py",
        "python",
        1,
        "def file_size(p):\n    return os.path.getsize(p)\n\n\ndef total(paths):\n    return sum(file_size(p) for p in paths)\n",
    );
    core.suggest(URI, pos, INVOKED).await.unwrap();
    insta::assert_json_snapshot!("single_line_request", sent_request(&script, 0));
    // Three candidates on a blank line in the loop's body, multi-line asked for: sampled, the
    // whole `max_tokens`, no stop.
    core.reuse.forget(URI);
    core.update_settings(&serde_json::json!({"multiline": "always"}));
    type_at(&core, 2, Position::new(7, 26), "\n        ");
    let blank = Position::new(8, 8);
    core.suggest(URI, blank, Ask { invoked: true, n: 3, debounce: false }).await.unwrap();
    insta::assert_json_snapshot!("multi_line_request", sent_request(&script, 1));
}

#[tokio::test]
async fn a_model_without_fim_is_asked_for_the_prefix_alone_and_its_answer_is_cut_at_the_suffix() {
    let script = Script::new(vec![
        Reply::Texts(vec!["os.path.getsize(p)\n        sizes.append(size)\n    return sum(sizes)\n"]),
        Reply::Texts(vec!["total = sum(sizes)\n        sizes.append(size)\n    return sum(sizes)\n"]),
    ]);
    script.set_models(Models::List(one_model(8192, None)));
    let (core, pos) = core_with(&script, settings(), PY);
    assert_eq!(texts(&core.suggest(URI, pos, INVOKED).await.unwrap()), ["os.path.getsize(p)"]);
    insta::assert_json_snapshot!("left_to_right_request", sent_request(&script, 0));
    // Multi-line on a blank line: the answer stops where the document's next line begins.
    core.update_settings(&serde_json::json!({"multiline": "always"}));
    type_at(&core, 2, Position::new(6, 15), "\n        ");
    let s = core.suggest(URI, Position::new(7, 8), INVOKED).await.unwrap();
    assert_eq!(texts(&s), ["total = sum(sizes)"]);
    assert!(script.sent().iter().all(|r| r.suffix.is_none()));
}

#[tokio::test]
async fn a_left_to_right_model_on_a_line_of_indentation_may_start_with_a_line_break() {
    // SmolLM2-like: left on `        |` it ends that line and writes the code on the next one.
    let script = Script::new(vec![Reply::Texts(vec!["\n        total = sum(sizes)\n        sizes.append(size)\n"])]);
    script.set_models(Models::List(one_model(8192, None)));
    let (core, _) = core_with(&script, settings(), PY);
    core.update_settings(&serde_json::json!({"multiline": "never"}));
    type_at(&core, 2, Position::new(6, 15), "\n        ");
    let s = core.suggest(URI, Position::new(7, 8), INVOKED).await.unwrap();
    assert_eq!(texts(&s), ["total = sum(sizes)"]);
    // No stop at the line's end, which would have ended the answer before it began.
    assert_eq!(script.sent()[0].stop, None);
}

#[tokio::test]
async fn a_refused_suffix_is_asked_again_left_to_right_and_remembered() {
    let refused = ApiError::Status {
        code: 400,
        message: "this model has no fill-in-the-middle tokens, so it cannot take a suffix".into(),
        param: Some("suffix".into()),
        retry_after: None,
    };
    let script =
        Script::new(vec![Reply::Fail(refused), Reply::Texts(vec!["len(p)\n"]), Reply::Texts(vec!["len(p) + 1\n"])]);
    // Another server's model list: nothing said about FIM.
    let foreign = ghostline_api::ModelList {
        object: "list".into(),
        data: vec![serde_json::from_value(serde_json::json!({"id": "chat"})).unwrap()],
    };
    script.set_models(Models::List(foreign));
    let (core, pos) = core_with(&script, settings(), PY);
    let mut rx = notices(&core);
    assert_eq!(texts(&core.suggest(URI, pos, INVOKED).await.unwrap()), ["len(p)"]);
    core.reuse.forget(URI);
    assert_eq!(texts(&core.suggest(URI, pos, INVOKED).await.unwrap()), ["len(p) + 1"]);
    let suffixes: Vec<bool> = script.sent().iter().map(|r| r.suffix.is_some()).collect();
    assert_eq!(suffixes, [true, false, false]);
    assert!(drain(&mut rx).is_empty(), "nothing for the user to act on");
}
