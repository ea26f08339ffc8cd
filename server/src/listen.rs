//! The connection loop: accepts TCP connections up to `--max-connections`, serves each with
//! hyper's HTTP/1 connection (a client has `--header-timeout-secs` to send its headers, from the
//! connection's opening or from the end of its previous answer, which also bounds how long an idle
//! keep-alive connection is held), and drains on shutdown: connections accepted before it finish
//! their answers, connections accepted during it get one answer (a 503 from the handlers, which
//! read `Health`) and are closed, and the loop ends when the first have all closed or the grace
//! period is over. A connection accepted before the drain that has not begun a request yet is not
//! closed at once: its client may have sent one that is still on its way, so it too gets one
//! answer (or the header timeout). Slow or silent clients hold a connection slot for the header
//! timeout at most, so they cannot starve the others.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, Notify, Semaphore};
use tower_service::Service;

/// How connections are bounded.
#[derive(Debug, Clone)]
pub struct ConnLimits {
    /// Time to send a request's headers (from the opening, or from the end of the previous
    /// answer on a keep-alive connection).
    pub header_timeout: Duration,
    /// Connections open at once at most; further clients wait in the listen backlog.
    pub max_connections: usize,
}

/// Why the loop ended.
#[derive(Debug, PartialEq)]
pub enum Ended {
    /// Every connection accepted before the drain closed.
    Drained,
    /// The grace period ran out with answers still running (they are cut).
    GraceOver,
}

/// Serves `app` on `listener` until `stop` resolves and the drain ends. `on_drain` runs when
/// the drain begins (it marks the replica as draining, so handlers answer 503).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnLimits,
    stop: impl Future<Output = ()>,
    on_drain: impl FnOnce(),
    grace: Duration,
) -> Ended {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let (drain_tx, drain_rx) = watch::channel(false);
    // Each connection accepted before the drain holds a clone; `recv` ends when all are gone.
    let (live_tx, mut live_rx) = mpsc::channel::<()>(1);
    let mut live_tx = Some(live_tx);
    let mut on_drain = Some(on_drain);
    let mut stop = std::pin::pin!(stop);
    // Armed when the drain begins.
    let grace_over = tokio::time::sleep(Duration::MAX);
    let mut grace_over = std::pin::pin!(grace_over);
    loop {
        let draining = live_tx.is_none();
        let accepted = async {
            let permit = slots.clone().acquire_owned().await;
            (permit, listener.accept().await)
        };
        let (permit, accepted) = tokio::select! {
            a = accepted => a,
            _ = &mut stop, if !draining => {
                if let Some(f) = on_drain.take() {
                    f();
                }
                live_tx = None;
                let _ = drain_tx.send(true);
                grace_over.as_mut().reset(tokio::time::Instant::now() + grace);
                continue;
            }
            _ = live_rx.recv(), if draining => return Ended::Drained,
            _ = &mut grace_over, if draining => return Ended::GraceOver,
        };
        let Ok(permit) = permit else { continue };
        let tcp = match accepted {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                // Out of file descriptors or a connection reset before it was accepted: the
                // loop goes on, after a pause so that a persistent error does not spin.
                tracing::warn!("accepting a connection failed: {e}");
                drop(permit);
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Streamed chunks go out as they are written.
        let _ = tcp.set_nodelay(true);
        let mut builder = http1::Builder::new();
        builder.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout).keep_alive(!draining);
        let begun = Arc::new(Notify::new());
        let service = Noting { app: app.clone(), begun: begun.clone() };
        let conn = builder.serve_connection(TokioIo::new(tcp), TowerToHyperService::new(service));
        let live = live_tx.clone();
        let mut drain = drain_rx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _live = live;
            let mut conn = std::pin::pin!(conn);
            let result = if draining {
                conn.await
            } else {
                tokio::select! {
                    r = conn.as_mut() => r,
                    _ = drained(&mut drain) => {
                        // hyper closes a connection that has read nothing yet at once, but a
                        // client that connected before the drain may have its request on the
                        // way: that connection waits for its first request (the header timeout
                        // bounds the wait), which gets its answer, and then closes. Idle
                        // keep-alive connections close now; a running answer finishes first.
                        tokio::select! {
                            r = conn.as_mut() => r,
                            _ = begun.notified() => {
                                conn.as_mut().graceful_shutdown();
                                conn.await
                            }
                        }
                    }
                }
            };
            if let Err(e) = result {
                tracing::debug!("connection ended: {e}");
            }
        });
    }
}

/// The application as one connection serves it, telling `begun` when a request has begun (its
/// head has been read). `Notify` keeps the news for a wait that starts later.
#[derive(Clone)]
struct Noting {
    app: Router,
    begun: Arc<Notify>,
}

impl Service<Request<Incoming>> for Noting {
    type Response = <Router as Service<Request<Incoming>>>::Response;
    type Error = Infallible;
    type Future = <Router as Service<Request<Incoming>>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Service::<Request<Incoming>>::poll_ready(&mut self.app, cx)
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        self.begun.notify_one();
        self.app.call(req)
    }
}

/// Resolves when the drain begins (or the loop has ended).
async fn drained(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|d| *d).await;
}
