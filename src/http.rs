//! The HTTP endpoints: `/metrics` (OpenMetrics or Prometheus text, as the scraper asks),
//! `/healthz` (fails when a loop stalled or died), `/readyz` (after the first full scan),
//! `/scan` (the node report as JSON, the same document as `hotplug-watchdog scan --format
//! json`) and `/watch` (volume transitions as they happen, one JSON line each).
//!
//! Who may read what: `/metrics` and the probes are for anyone who reaches the port (the
//! scraper, the kubelet). `/scan` and `/watch` name every tenant's namespace, VMI, pod UIDs
//! and device numbers: they answer only connections from loopback, i.e. from inside the
//! agent's own pod (`kubectl port-forward`, `kubectl exec`) or, on a host install, the host.
//! Checking a bearer token with TokenReview and SubjectAccessReview instead would put the
//! API server on every request and need cluster-wide `create` on both reviews; loopback
//! needs neither.
//!
//! Limits, so that a client on the network cannot starve the agent: a connection must send
//! its request head within [`Limits::header_read_timeout`], at most
//! [`Limits::max_header_bytes`] of it; at most [`Limits::max_connections`] connections are
//! served at once, at most [`Limits::max_connections_per_peer`] from one address (more are
//! closed at once, counted: one client holding connections open cannot lock the scraper
//! out), and at most [`Limits::max_watch_streams`] of them may be `/watch` streams.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use axum::body::Body;
use futures::StreamExt;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::Semaphore;
use tower::ServiceExt;

use crate::feed::Feed;
use crate::metrics::{Exposition, Metrics};
use crate::report::Report;
use crate::snapshot::Snapshots;
use crate::sources::health::Health;

/// What one client can take of the agent.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_connections: usize,
    pub max_connections_per_peer: usize,
    pub max_watch_streams: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout: Duration::from_secs(5),
            max_header_bytes: 16 * 1024,
            max_connections: 256,
            max_connections_per_peer: 16,
            max_watch_streams: 8,
        }
    }
}

#[derive(Clone)]
pub struct AppState {
    pub metrics: Arc<Metrics>,
    pub snapshots: Snapshots,
    pub health: Arc<Health>,
    pub stall_after: Duration,
    pub feed: Feed,
    /// Turns true at shutdown.
    pub stopping: tokio::sync::watch::Receiver<bool>,
    /// Permits for `/watch` streams.
    pub watch_streams: Arc<Semaphore>,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/scan", get(scan))
        .route("/watch", get(watch))
        .with_state(state)
}

async fn metrics(State(s): State<AppState>, headers: HeaderMap) -> impl IntoResponse {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let format = Exposition::from_accept(accept);
    // Sent as it is made, a chunk at a time: a node of thousands of volumes never holds
    // its whole exposition in memory.
    let chunks = futures::stream::iter(s.metrics.scrape(format).map(Ok::<_, std::convert::Infallible>));
    ([(header::CONTENT_TYPE, format.content_type())], Body::from_stream(chunks))
}

async fn healthz(State(s): State<AppState>) -> impl IntoResponse {
    match s.health.check(s.stall_after) {
        Ok(()) => (StatusCode::OK, "ok\n".to_string()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("stalled: {why}\n")),
    }
}

async fn readyz(State(s): State<AppState>) -> impl IntoResponse {
    match s.health.readiness() {
        Ok(()) => (StatusCode::OK, "ready\n".to_string()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n")),
    }
}

/// `/scan` and `/watch` answer loopback peers only (see the module documentation): the
/// refusal, or `None` for a local peer.
fn refuse_remote(peer: &SocketAddr) -> Option<Response> {
    if peer.ip().to_canonical().is_loopback() {
        return None;
    }
    let body = "forbidden: /scan and /watch answer only from inside the agent's pod or host (kubectl port-forward)\n";
    Some((StatusCode::FORBIDDEN, body).into_response())
}

async fn scan(State(s): State<AppState>, ConnectInfo(peer): ConnectInfo<SocketAddr>) -> Response {
    if let Some(refused) = refuse_remote(&peer) {
        return refused;
    }
    let p = s.snapshots.borrow().clone();
    let report = Report::new(&p.verdicts, &p.names, &p.skipped, &p.io_errors);
    ([(header::CONTENT_TYPE, "application/json")], report.to_json()).into_response()
}

async fn watch(State(s): State<AppState>, ConnectInfo(peer): ConnectInfo<SocketAddr>) -> Response {
    if let Some(refused) = refuse_remote(&peer) {
        return refused;
    }
    let Ok(permit) = s.watch_streams.clone().try_acquire_owned() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "too many /watch streams\n").into_response();
    };
    let lines = futures::stream::unfold(s.feed.subscribe(), |mut rx| async move {
        let line = match rx.recv().await {
            Ok(line) => format!("{line}\n"),
            Err(RecvError::Lagged(n)) => format!("{{\"lagged\":{n}}}\n"),
            Err(RecvError::Closed) => return None,
        };
        Some((Ok::<_, std::convert::Infallible>(line), rx))
    });
    let mut stopping = s.stopping.clone();
    // The permit lives as long as the stream.
    let lines = lines
        .take_until(async move {
            let _ = stopping.wait_for(|stop| *stop).await;
        })
        .map(move |line| {
            let _held = &permit;
            line
        });
    ([(header::CONTENT_TYPE, "application/x-ndjson")], Body::from_stream(lines)).into_response()
}

/// Open connections by peer address.
struct Peers {
    open: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
    max: usize,
}

/// One open connection of a peer; closing it gives the slot back.
struct PeerPermit(Arc<Peers>, std::net::IpAddr);

impl Peers {
    fn acquire(self: &Arc<Self>, ip: std::net::IpAddr) -> Option<PeerPermit> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(ip).or_default();
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(PeerPermit(self.clone(), ip))
    }
}

impl Drop for PeerPermit {
    fn drop(&mut self) {
        let mut open = self.0.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.1);
            }
        }
    }
}

/// Serves until `shutdown`, then lets open requests finish (a `/watch` stream ends at
/// shutdown by itself).
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    limits: Limits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let refused = state.metrics.http_connections_refused_total.clone();
    let app = router(state);
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let peers = Arc::new(Peers { open: Default::default(), max: limits.max_connections_per_peer });
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192));
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of descriptors (EMFILE) and the like: wait rather than spin;
                    // the node side does not depend on HTTP.
                    tracing::warn!(error = %e, "cannot accept an HTTP connection");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let (Ok(permit), Some(peer_permit)) = (connections.clone().try_acquire_owned(), peers.acquire(peer.ip()))
        else {
            refused.inc();
            drop(stream);
            continue;
        };
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut req: Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            app.clone().oneshot(req.map(Body::new))
        });
        let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            // Errors here are the client's (a reset, a header read timeout).
            let _ = conn.await;
            drop((permit, peer_permit));
        });
    }
    drop(listener);
    // Requests under way get a moment; a client that keeps a connection open does not
    // hold the shutdown.
    let _ = tokio::time::timeout(Duration::from_secs(5), graceful.shutdown()).await;
    Ok(())
}

/// Listens on `addr` now, so that a port in use stops the agent at start.
pub fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Serves on a thread of its own, with a runtime of its own, until `state.stopping` turns
/// true; the returned channel says how serving ended. Why a thread: the cluster side's
/// tasks (the condition writers above all, whose work a removal wakes at the same moment
/// as a `/watch` line) run on the main runtime; sharing its one thread, they delayed the
/// lines (`/watch` p99 3.8 ms at 5,000 volumes before, 2.7 after: BENCHMARKS.md, the second
/// pass on issue #16).
pub fn spawn(
    listener: std::net::TcpListener,
    state: AppState,
    limits: Limits,
) -> std::io::Result<tokio::sync::oneshot::Receiver<std::io::Result<()>>> {
    let (done_tx, done) = tokio::sync::oneshot::channel();
    std::thread::Builder::new().name("http".into()).spawn(move || {
        crate::sched::prefer_prompt_wakeups("http");
        let served = (|| {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(async {
                let listener = tokio::net::TcpListener::from_std(listener)?;
                let mut stopping = state.stopping.clone();
                serve(listener, state, limits, async move {
                    let _ = stopping.wait_for(|stop| *stop).await;
                })
                .await
            })
        })();
        let _ = done_tx.send(served);
    })?;
    Ok(done)
}
