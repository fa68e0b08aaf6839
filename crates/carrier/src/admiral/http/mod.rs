//! The admiral's HTTP endpoint, for operators and their tools (127.0.0.1 by default):
//!
//! - `GET /`: the status page, one self-contained HTML file ([`STATUS_PAGE`]): the shard grid,
//!   a "find my shard" box, clusters and services, the identify queue and the latest events,
//!   kept live from `GET /events`;
//! - `GET /events`: server-sent events: `stats` with each interval's snapshot as JSON, and
//!   `fleet` with a line for each lifecycle step, exit, hang or panic;
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

/// The status page: no build step, no outside assets.
const STATUS_PAGE: &str = include_str!("status.html");

/// Event streams open at once; more are refused (each holds a subscription to the events).
const MAX_STREAMS: usize = 32;

/// Event lines a page gets when it connects.
const RECENT_LINES: usize = 30;

/// How long a health check waits for the router.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

/// A readiness check uses no snapshot older than this.
const READY_MAX_AGE: Duration = Duration::from_secs(10);

/// How long a scrape lets workers report when it has to make a snapshot itself.
const SCRAPE_DEADLINE: Duration = Duration::from_secs(2);

struct Shared {
    ipc: Ipc,
    inbox: mpsc::Sender<Inbox>,
    events: broadcast::Sender<FleetEvent>,
    /// Turns true once the admiral has stopped: event streams end then.
    stopped: tokio::sync::watch::Receiver<bool>,
    /// Event streams open now.
    streams: std::sync::atomic::AtomicUsize,
    /// The latest event lines, oldest first, for a page that connects later.
    recent: Mutex<std::collections::VecDeque<String>>,
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

/// Serves the endpoint until the admiral has stopped.
pub(crate) async fn serve(
    listener: std::net::TcpListener,
    ipc: Ipc,
    inbox: mpsc::Sender<Inbox>,
    events: broadcast::Sender<FleetEvent>,
    stats_interval: Duration,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    let mut latest = events.subscribe();
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
        events,
        stopped: stopped.clone(),
        streams: std::sync::atomic::AtomicUsize::new(0),
        recent: Mutex::default(),
        latest: Mutex::new(None),
        fresh_for: (!stats_interval.is_zero()).then(|| stats_interval * 2),
    });
    let keeper = shared.clone();
    let keep_latest = async move {
        loop {
            match latest.recv().await {
                Ok(FleetEvent::Stats(stats)) => {
                    *keeper.latest.lock().unwrap_or_else(PoisonError::into_inner) =
                        Some((Instant::now(), stats));
                }
                Ok(event) => {
                    if let Some(line) = describe(&event) {
                        let mut recent =
                            keeper.recent.lock().unwrap_or_else(PoisonError::into_inner);
                        if recent.len() == RECENT_LINES {
                            recent.pop_front();
                        }
                        recent.push_back(line);
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    };
    let app = axum::Router::new()
        .route("/", get(page_route))
        .route("/events", get(events_route))
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
        _ = stopped.wait_for(|s| *s) => {}
    }
}

type Shareds = State<Arc<Shared>>;

fn unavailable(error: &str) -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, format!("{error}\n")).into_response()
}

async fn page_route() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        STATUS_PAGE,
    )
        .into_response()
}

/// One open event stream, counted until dropped.
struct Stream(Arc<Shared>);

impl Drop for Stream {
    fn drop(&mut self) {
        self.0
            .streams
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

async fn events_route(State(shared): Shareds) -> Response {
    use axum::response::sse::{Event, KeepAlive, Sse};
    use std::sync::atomic::Ordering;
    if shared.streams.fetch_add(1, Ordering::Relaxed) >= MAX_STREAMS {
        shared.streams.fetch_sub(1, Ordering::Relaxed);
        return unavailable("too many event streams open");
    }
    let open = Stream(shared.clone());
    let events = shared.events.subscribe();
    let stopping = shared.stopped.clone();
    // What happened before it connected comes first.
    let earlier: Vec<_> = shared
        .recent
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .map(|line| Ok::<_, std::convert::Infallible>(Event::default().event("fleet").data(line)))
        .collect();
    let start = (events, stopping, open);
    let stream = futures::stream::unfold(start, |(mut events, mut stopped, open)| async move {
        loop {
            let received = tokio::select! {
                received = events.recv() => received,
                _ = stopped.wait_for(|s| *s) => return None,
            };
            let event = match received {
                Ok(FleetEvent::Stats(stats)) => match serde_json::to_string(&*stats) {
                    Ok(json) => Event::default().event("stats").data(json),
                    Err(_) => continue,
                },
                Ok(other) => match describe(&other) {
                    Some(line) => Event::default().event("fleet").data(line),
                    None => continue,
                },
                // A slow reader skips what it missed; the next snapshot is whole.
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            };
            let next = (events, stopped, open);
            return Some((Ok::<_, std::convert::Infallible>(event), next));
        }
    });
    Sse::new(futures::StreamExt::chain(
        futures::stream::iter(earlier),
        stream,
    ))
    .keep_alive(KeepAlive::default())
    .into_response()
}

/// A line for the status page's event list; `None` for what it does not list (shard progress,
/// output lines and logs, which the grid and the operator's log cover).
fn describe(event: &FleetEvent) -> Option<String> {
    let time = humantime_utc(std::time::SystemTime::now());
    describe_event(event).map(|line| format!("{time}  {line}"))
}

/// `HH:MM:SS` in UTC.
fn humantime_utc(at: std::time::SystemTime) -> String {
    let secs = at
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let day = secs % 86_400;
    format!(
        "{:02}:{:02}:{:02} UTC",
        day / 3600,
        day % 3600 / 60,
        day % 60
    )
}

fn describe_event(event: &FleetEvent) -> Option<String> {
    use super::LifecycleEvent as L;
    Some(match event {
        FleetEvent::Lifecycle(L::Ready(worker)) => format!("{worker} ready"),
        FleetEvent::Lifecycle(L::Failed { worker, reason }) => format!("{worker} failed: {reason}"),
        FleetEvent::Lifecycle(L::Restarting {
            worker,
            attempt,
            after,
            reason,
        }) => format!("{worker} restarting in {after:?} (attempt {attempt}): {reason}"),
        FleetEvent::Lifecycle(L::WorkerStopped(worker)) => format!("{worker} stopped"),
        FleetEvent::Lifecycle(L::AllReady { live, failed }) => {
            format!("fleet ready: {live} workers live, {failed} failed")
        }
        FleetEvent::Lifecycle(L::ServicesLaunched) => "every service launched".to_owned(),
        FleetEvent::Lifecycle(L::Resharded { clusters }) => {
            format!("reshard done: {clusters} clusters of the new generation live")
        }
        FleetEvent::Lifecycle(other) => format!("{other:?}"),
        FleetEvent::Exited {
            worker,
            process,
            code,
        } => match code {
            Some(code) => format!("{worker} process {process} exited with code {code}"),
            None => format!("{worker} process {process} was killed by a signal"),
        },
        FleetEvent::Unresponsive {
            worker, silent_for, ..
        } => format!("{worker} unresponsive for {silent_for:?}; killed"),
        FleetEvent::Panic { worker, report, .. } => format!("{worker} panicked: {report}"),
        FleetEvent::ProtocolError { worker, error } => {
            format!("protocol error from {worker:?}: {error}")
        }
        FleetEvent::ShuttingDown => "shutting down".to_owned(),
        FleetEvent::Deployed(report) => format!("deploy: {report}"),
        _ => return None,
    })
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
    // Asking and answering both count: a router whose inbox is full is not healthy either.
    let answered = tokio::time::timeout(HEALTH_TIMEOUT, async {
        shared.inbox.send(Inbox::Workers(tx)).await.ok()?;
        rx.await.ok()
    })
    .await;
    match answered {
        Ok(Some(workers)) => axum::Json(serde_json::json!({
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
