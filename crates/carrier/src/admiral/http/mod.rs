//! The admiral's HTTP endpoint, for operators and their tools (127.0.0.1 by default):
//!
//! - `GET /metrics`: the latest stats snapshot as Prometheus metrics ([`metrics`]);
//! - `GET /stats`: the same snapshot as JSON;
//! - `GET /health`: liveness, 200 while the admiral's router answers, 503 when it does not;
//! - `GET /ready`: readiness, 200 once every cluster is live and every shard ready, else 503
//!   (from a snapshot at most 10 s old).
//!
//! Scrapes read the interval's latest snapshot, so they cost the workers nothing; only when
//! there is none fresh (the interval is off, or the snapshot is older than two intervals) does a
//! scrape make one.

pub(crate) mod metrics;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::sync::{broadcast, mpsc, oneshot};

use super::FleetEvent;
use super::router::inbox::Inbox;
use crate::ipc::Ipc;
use crate::stats::FleetStats;

/// How long a health check waits for the router.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

/// A readiness check uses no snapshot older than this.
const READY_MAX_AGE: Duration = Duration::from_secs(10);

/// How long a scrape lets workers report when it has to make a snapshot itself.
const SCRAPE_DEADLINE: Duration = Duration::from_secs(2);

struct Shared {
    ipc: Ipc,
    inbox: mpsc::Sender<Inbox>,
    /// The latest interval snapshot and when it arrived.
    latest: Mutex<Option<(Instant, Arc<FleetStats>)>>,
    /// A snapshot older than this is made afresh.
    fresh_for: Option<Duration>,
}

impl Shared {
    /// The latest snapshot if it is younger than `max_age` (and the interval's freshness),
    /// else a new one.
    async fn snapshot(&self, max_age: Option<Duration>) -> Result<Arc<FleetStats>, String> {
        let fresh_for = match (self.fresh_for, max_age) {
            (Some(fresh), Some(max)) => Some(fresh.min(max)),
            (fresh, None) => fresh,
            (None, Some(_)) => None,
        };
        if let Some(fresh_for) = fresh_for {
            let latest = self.latest.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some((at, stats)) = latest.as_ref()
                && at.elapsed() < fresh_for
            {
                return Ok(stats.clone());
            }
        }
        let stats = Arc::new(
            self.ipc
                .stats_within(SCRAPE_DEADLINE)
                .await
                .map_err(|e| e.to_string())?,
        );
        *self.latest.lock().unwrap_or_else(PoisonError::into_inner) =
            Some((Instant::now(), stats.clone()));
        Ok(stats)
    }
}

/// Binds the endpoint now (a bad address is a startup error), to be served by [`serve`].
pub(crate) fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Serves the endpoint until the admiral's events end.
pub(crate) async fn serve(
    listener: std::net::TcpListener,
    ipc: Ipc,
    inbox: mpsc::Sender<Inbox>,
    mut events: broadcast::Receiver<FleetEvent>,
    stats_interval: Duration,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(target: "fleet::http", %error, "cannot serve the admiral's HTTP endpoint");
            return;
        }
    };
    let shared = Arc::new(Shared {
        ipc,
        inbox,
        latest: Mutex::new(None),
        fresh_for: (!stats_interval.is_zero()).then(|| stats_interval * 2),
    });
    let keeper = shared.clone();
    let keep_latest = async move {
        loop {
            match events.recv().await {
                Ok(FleetEvent::Stats(stats)) => {
                    *keeper.latest.lock().unwrap_or_else(PoisonError::into_inner) =
                        Some((Instant::now(), stats));
                }
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    };
    let app = axum::Router::new()
        .route("/metrics", get(metrics_route))
        .route("/stats", get(stats_route))
        .route("/health", get(health_route))
        .route("/ready", get(ready_route))
        .with_state(shared);
    tokio::select! {
        served = axum::serve(listener, app) => {
            if let Err(error) = served {
                tracing::error!(target: "fleet::http", %error, "the admiral's HTTP endpoint failed");
            }
        }
        () = keep_latest => {}
    }
}

type Shareds = State<Arc<Shared>>;

fn unavailable(error: &str) -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, format!("{error}\n")).into_response()
}

async fn metrics_route(State(shared): Shareds) -> Response {
    match shared.snapshot(None).await {
        Ok(stats) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            metrics::render(&stats),
        )
            .into_response(),
        Err(error) => unavailable(&error),
    }
}

async fn stats_route(State(shared): Shareds) -> Response {
    match shared.snapshot(None).await {
        Ok(stats) => axum::Json(&*stats).into_response(),
        Err(error) => unavailable(&error),
    }
}

async fn health_route(State(shared): Shareds) -> Response {
    let (tx, rx) = oneshot::channel();
    let asked = shared.inbox.send(Inbox::Workers(tx)).await.is_ok();
    match tokio::time::timeout(HEALTH_TIMEOUT, rx).await {
        Ok(Ok(workers)) if asked => axum::Json(serde_json::json!({
            "status": "ok",
            "workers": workers.len(),
        }))
        .into_response(),
        _ => unavailable("the admiral does not answer"),
    }
}

async fn ready_route(State(shared): Shareds) -> Response {
    let stats = match shared.snapshot(Some(READY_MAX_AGE)).await {
        Ok(stats) => stats,
        Err(error) => return unavailable(&error),
    };
    let clusters_live = stats.clusters.iter().all(|c| c.state == "live");
    let ready = clusters_live && stats.shard_count > 0 && stats.shards_ready == stats.shard_count;
    let body = axum::Json(serde_json::json!({
        "ready": ready,
        "shards": stats.shard_count,
        "shards_ready": stats.shards_ready,
    }));
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, body).into_response()
}

/// Where the endpoint listens, as a URL.
pub(crate) fn url(addr: SocketAddr) -> String {
    format!("http://{addr}")
}
