//! Whether this replica should get traffic: it drains after SIGTERM, it is unhealthy once the
//! engine has failed beyond recovery, and it is not ready while its inference upstream (when it
//! has one) does not answer its probe. `/ready` reads it, the handlers refuse new work by the
//! first two, and `main` stops the process (non-zero) when the engine fails.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use tokio::sync::watch;

/// The replica's state, shared by the engine thread, the handlers and the connection loop.
pub struct Health {
    draining: AtomicBool,
    /// Why the engine failed; the first failure is kept.
    failed: watch::Sender<Option<String>>,
    /// Why the inference upstream is not answering, while it is not (the last probe's answer).
    upstream_down: Mutex<Option<String>>,
}

impl Default for Health {
    fn default() -> Self {
        Health { draining: AtomicBool::new(false), failed: watch::Sender::new(None), upstream_down: Mutex::new(None) }
    }
}

impl Health {
    /// From now on new requests are refused with 503 and `/ready` answers 503.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// The engine cannot serve any more: `/ready` turns 503 and the process stops.
    pub fn engine_failed(&self, why: String) {
        self.failed.send_if_modified(|f| {
            if f.is_some() {
                return false;
            }
            *f = Some(why);
            true
        });
    }

    /// Why the engine failed, once it has.
    pub fn failure(&self) -> Option<String> {
        self.failed.borrow().clone()
    }

    /// The upstream's probe answered (`Ok`) or not (`Err(why)`); true when that changed the state.
    pub fn set_upstream(&self, probe: Result<(), String>) -> bool {
        let Ok(mut down) = self.upstream_down.lock() else { return false };
        let changed = down.is_some() != probe.is_err();
        *down = probe.err();
        changed
    }

    /// Why the upstream is not answering, while it is not.
    pub fn upstream_down(&self) -> Option<String> {
        self.upstream_down.lock().ok().and_then(|d| d.clone())
    }

    /// Resolves when the engine has failed beyond recovery, with why.
    pub async fn wait_engine_failure(&self) -> String {
        let mut rx = self.failed.subscribe();
        let why = rx.wait_for(Option::is_some).await.map(|v| v.clone().unwrap_or_default());
        match why {
            Ok(why) => why,
            // The sender lives in `self`, so this cannot end; never resolve if it did.
            Err(_) => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_failure_is_kept_and_draining_is_sticky() {
        let h = Health::default();
        assert!(!h.draining() && h.failure().is_none());
        h.engine_failed("first".into());
        h.engine_failed("second".into());
        assert_eq!(h.failure().as_deref(), Some("first"));
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        assert_eq!(rt.block_on(h.wait_engine_failure()), "first");
        h.start_draining();
        assert!(h.draining());
    }

    #[test]
    fn the_upstream_state_is_the_last_probe_s_and_changes_are_reported() {
        let h = Health::default();
        assert_eq!(h.upstream_down(), None);
        assert!(h.set_upstream(Err("refused".into())));
        assert!(!h.set_upstream(Err("timed out".into())), "still down");
        assert_eq!(h.upstream_down().as_deref(), Some("timed out"));
        assert!(h.set_upstream(Ok(())));
        assert!(!h.set_upstream(Ok(())));
        assert_eq!(h.upstream_down(), None);
    }
}
