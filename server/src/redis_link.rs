//! The connection to Redis shared by the response cache and the rate limits.
//!
//! Redis is an accelerator, never a dependency of a request: every operation has a deadline,
//! failures are counted in `ghostline_redis_errors_total{op}` and answered with None (the
//! callers fall back to their in-process state), and after a failure Redis is left alone for a
//! short pause so a dead Redis costs at most one timed-out probe per pause. The connection
//! manager reconnects by itself once Redis is back.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

pub struct RedisLink {
    conn: ConnectionManager,
    timeout: Duration,
    /// Until when (ms since `epoch`) Redis is skipped after a failure.
    skip_until_ms: AtomicU64,
    epoch: Instant,
    pause: Duration,
}

impl RedisLink {
    /// Prepares the connection; it is made on first use, so a Redis that is down at start only
    /// means falling back until it is up.
    pub fn new(url: &str, timeout: Duration) -> anyhow::Result<RedisLink> {
        let client = redis::Client::open(url)
            .with_context(|| format!("--redis {url}: not a Redis URL (redis://HOST:PORT[/DB])"))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(200));
        let conn =
            ConnectionManager::new_lazy_with_config(client, config).context("setting up the Redis connection")?;
        Ok(RedisLink {
            conn,
            timeout,
            skip_until_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            pause: Duration::from_secs(1),
        })
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Runs `f` on the connection; None when Redis is down, slow or answered an error.
    pub async fn run<T, F, Fut>(&self, op: &'static str, f: F) -> Option<T>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        if self.now_ms() < self.skip_until_ms.load(Ordering::Relaxed) {
            metrics::counter!("ghostline_redis_skipped_total", "op" => op).increment(1);
            return None;
        }
        let err = match tokio::time::timeout(self.timeout, f(self.conn.clone())).await {
            Ok(Ok(v)) => return Some(v),
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {} ms", self.timeout.as_millis()),
        };
        metrics::counter!("ghostline_redis_errors_total", "op" => op).increment(1);
        tracing::warn!(op, "redis: {err}; using in-process state for {} ms", self.pause.as_millis());
        self.skip_until_ms.store(self.now_ms() + self.pause.as_millis() as u64, Ordering::Relaxed);
        None
    }
}
