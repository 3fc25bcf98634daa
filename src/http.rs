//! The HTTP endpoints: `/metrics` (OpenMetrics or Prometheus text, as the scraper asks),
//! `/healthz` (fails when a loop stalled or died), `/readyz` (after the first full scan),
//! `/scan` (the node report as JSON, the same document as `hotplug-watchdog scan --format
//! json`) and `/watch` (volume transitions as they happen, one JSON line each).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use axum::body::Body;
use futures::StreamExt;
use tokio::sync::broadcast::error::RecvError;

use crate::feed::Feed;
use crate::metrics::{Exposition, Metrics, SharedPublished};
use crate::report::Report;
use crate::sources::health::Health;

#[derive(Clone)]
pub struct AppState {
    pub metrics: Arc<Metrics>,
    pub published: SharedPublished,
    pub health: Arc<Health>,
    pub stall_after: Duration,
    pub feed: Feed,
    /// Turns true at shutdown.
    pub stopping: tokio::sync::watch::Receiver<bool>,
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
    ([(header::CONTENT_TYPE, format.content_type())], s.metrics.encode(format))
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

async fn scan(State(s): State<AppState>) -> impl IntoResponse {
    let p = s.published.read().unwrap_or_else(|e| e.into_inner());
    let report = Report::new(&p.verdicts, &p.names, &p.skipped, &p.io_errors);
    ([(header::CONTENT_TYPE, "application/json")], report.to_json())
}

async fn watch(State(s): State<AppState>) -> impl IntoResponse {
    let lines = futures::stream::unfold(s.feed.subscribe(), |mut rx| async move {
        let line = match rx.recv().await {
            Ok(line) => format!("{line}\n"),
            Err(RecvError::Lagged(n)) => format!("{{\"lagged\":{n}}}\n"),
            Err(RecvError::Closed) => return None,
        };
        Some((Ok::<_, std::convert::Infallible>(line), rx))
    });
    let mut stopping = s.stopping.clone();
    let lines = lines.take_until(async move {
        let _ = stopping.wait_for(|stop| *stop).await;
    });
    ([(header::CONTENT_TYPE, "application/x-ndjson")], Body::from_stream(lines))
}

pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state)).with_graceful_shutdown(shutdown).await
}

pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}
