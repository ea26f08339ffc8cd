//! The bounds of one request's waits: a newer keystroke for the same document (the document's
//! generation moved) ends every wait at once, and after the debounce every wait also ends at
//! the request deadline. Debounce, model discovery and the stream all wait through here.

use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

/// How a bounded wait ended.
#[derive(Debug, PartialEq)]
pub enum Waited<T> {
    Done(T),
    /// A newer keystroke (or the document closed).
    Superseded,
    /// The request deadline passed.
    Deadline,
}

pub struct Wait {
    generation: watch::Receiver<u64>,
    deadline: Option<Instant>,
}

impl Wait {
    /// A wait bounded by `generation` alone until `start_deadline`.
    pub fn new(generation: watch::Receiver<u64>) -> Wait {
        Wait { generation, deadline: None }
    }

    /// From now on every wait also ends after `timeout`.
    pub fn start_deadline(&mut self, timeout: Duration) {
        self.deadline = Some(Instant::now() + timeout);
    }

    /// Whether the deadline has passed.
    pub fn expired(&self) -> bool {
        self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// Waits for `f` within the bounds.
    pub async fn run<T>(&mut self, f: impl Future<Output = T>) -> Waited<T> {
        let deadline = self.deadline;
        let bounded = async move {
            match deadline {
                Some(d) => tokio::time::timeout_at(d, f).await.ok(),
                None => Some(f.await),
            }
        };
        tokio::select! {
            // A closed document drops the sender: that ends the wait too.
            _ = self.generation.changed() => Waited::Superseded,
            r = bounded => match r {
                Some(v) => Waited::Done(v),
                None => Waited::Deadline,
            },
        }
    }

    /// Sleeps `d` (the debounce); false when superseded first.
    pub async fn pause(&mut self, d: Duration) -> bool {
        matches!(self.run(tokio::time::sleep(d)).await, Waited::Done(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn waits_end_at_a_newer_keystroke_or_the_deadline() {
        let (tx, rx) = watch::channel(0u64);
        let mut w = Wait::new(rx);
        assert_eq!(w.run(async { 7 }).await, Waited::Done(7));
        // No deadline yet: only the generation ends a pending wait.
        let tx2 = tx.clone();
        let bump = async move {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            tx2.send_modify(|g| *g += 1);
        };
        let (r, ()) = tokio::join!(w.run(futures_util::future::pending::<()>()), bump);
        assert_eq!(r, Waited::Superseded);
        w.start_deadline(Duration::from_millis(500));
        let t = Instant::now();
        assert_eq!(w.run(futures_util::future::pending::<()>()).await, Waited::Deadline);
        assert_eq!(t.elapsed(), Duration::from_millis(500));
        assert!(w.expired());
        drop(tx);
        assert_eq!(w.run(futures_util::future::pending::<()>()).await, Waited::Superseded, "closed");
    }
}
