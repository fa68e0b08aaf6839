//! The I/O layer: an axum server on loopback that carries websocket frames and HTTP requests to
//! the sans-IO [`Gateway`] and [`rest`](crate::rest) core, carries out their actions, and exposes
//! the control routes under `/_mock/`.
//!
//! One mutex guards the core; it is never held across an `.await`. Each websocket connection is one
//! task that reads client frames and writes what the core queued for it, so a slow client delays
//! only itself. A ticker advances the core's clock every [`TICK`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use futures::SinkExt as _;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::MockConfig;
use crate::gateway::{Action, ConnId, ControlError, Gateway};
use crate::protocol::MAX_CLIENT_PAYLOAD;
use crate::rest::{self, RestLimiter};
use crate::stats::{EventReport, SessionReport, Stats};
use crate::transport::{Frame, Transport, WireOptions};

/// How often the core's clock advances (zombies, expiries, the event source).
pub const TICK: Duration = Duration::from_millis(10);

/// Errors of the mock.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MockError {
    /// The listening socket could not be bound.
    #[error("could not bind {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The mock would serve on an address other than loopback.
    #[error("discord-mock serves on loopback only, not {0}")]
    NotLoopback(SocketAddr),
    /// A [`MockDiscord::wait_until`] condition did not hold in time.
    #[error("timed out after {0:?} waiting for: {1}")]
    Timeout(Duration, String),
}

enum Outbound {
    Text(String),
    Close(u16, String),
    Drop,
    CompressPayloads,
}

struct Core {
    gateway: Gateway,
    limiter: RestLimiter,
    outlets: HashMap<ConnId, mpsc::UnboundedSender<Outbound>>,
}

impl Core {
    fn apply(&mut self, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Send { conn, text } => {
                    if let Some(outlet) = self.outlets.get(&conn) {
                        let _ = outlet.send(Outbound::Text(text));
                    }
                }
                Action::Close { conn, code, reason } => {
                    if let Some(outlet) = self.outlets.remove(&conn) {
                        let _ = outlet.send(Outbound::Close(code, reason));
                    }
                }
                Action::Drop { conn } => {
                    if let Some(outlet) = self.outlets.remove(&conn) {
                        let _ = outlet.send(Outbound::Drop);
                    }
                }
                Action::CompressPayloads { conn } => {
                    if let Some(outlet) = self.outlets.get(&conn) {
                        let _ = outlet.send(Outbound::CompressPayloads);
                    }
                }
            }
        }
    }
}

struct Shared {
    core: Mutex<Core>,
    start: Instant,
    changed: Notify,
    gateway_url: String,
}

impl Shared {
    fn now(&self) -> Duration {
        self.start.elapsed()
    }

    fn lock(&self) -> MutexGuard<'_, Core> {
        self.core
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs `f` on the gateway with the current time, carries out its actions and wakes waiters.
    fn with_gateway<R>(&self, f: impl FnOnce(&mut Gateway, Duration, &mut Vec<Action>) -> R) -> R {
        let now = self.now();
        let mut out = Vec::new();
        let result = {
            let mut core = self.lock();
            let result = f(&mut core.gateway, now, &mut out);
            core.apply(out);
            result
        };
        self.changed.notify_waiters();
        result
    }
}

/// What a test needs to know of one fixture guild ([`MockDiscord::guild`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuildFixture {
    /// Guild id.
    pub id: u64,
    /// Every channel id, text channels first.
    pub channels: Vec<u64>,
    /// The text channels (messages can be created in them).
    pub text_channels: Vec<u64>,
    /// Member user ids, the bot first.
    pub members: Vec<u64>,
}

/// A running mock Discord. Dropping it stops the server and closes every connection.
///
/// ```no_run
/// # async fn demo() -> Result<(), discord_mock::MockError> {
/// let mock = discord_mock::MockDiscord::start(discord_mock::MockConfig::builder().guilds(10).build()).await?;
/// println!("gateway at {}, REST at {}/api/v10", mock.gateway_url(), mock.http_url());
/// # Ok(()) }
/// ```
pub struct MockDiscord {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for MockDiscord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockDiscord")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl MockDiscord {
    /// Starts a mock on `127.0.0.1` with an ephemeral port.
    pub async fn start(config: MockConfig) -> Result<Self, MockError> {
        Self::bind(SocketAddr::from(([127, 0, 0, 1], 0)), config).await
    }

    /// Starts a mock on `addr`, which must be a loopback address.
    pub async fn bind(addr: SocketAddr, config: MockConfig) -> Result<Self, MockError> {
        if !addr.ip().is_loopback() {
            return Err(MockError::NotLoopback(addr));
        }
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| MockError::Bind { addr, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| MockError::Bind { addr, source })?;
        let gateway_url = format!("ws://{addr}");
        let shared = Arc::new(Shared {
            core: Mutex::new(Core {
                limiter: RestLimiter::new(config.global_limit),
                gateway: Gateway::new(config, gateway_url.clone()),
                outlets: HashMap::new(),
            }),
            start: Instant::now(),
            changed: Notify::new(),
            gateway_url,
        });
        let (shutdown, stop) = watch::channel(false);
        let app = router(shared.clone(), stop.clone());
        let ticker = {
            let shared = shared.clone();
            let mut stop = stop.clone();
            async move {
                let mut interval = tokio::time::interval(TICK);
                interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = interval.tick() => shared.with_gateway(Gateway::tick),
                        _ = stop.changed() => break,
                    }
                }
            }
        };
        let mut stop_server = stop;
        let task = tokio::spawn(async move {
            tokio::spawn(ticker);
            let server = axum::serve(listener, app).with_graceful_shutdown(async move {
                let _ = stop_server.changed().await;
            });
            if let Err(error) = server.await {
                tracing::error!(%error, "discord-mock server failed");
            }
        });
        tracing::info!(%addr, "discord-mock listening");
        Ok(Self {
            addr,
            shared,
            shutdown,
            task: Some(task),
        })
    }

    /// The bound address.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `ws://127.0.0.1:PORT`: the gateway URL (no trailing slash), as `/gateway` returns it.
    #[must_use]
    pub fn gateway_url(&self) -> String {
        self.shared.gateway_url.clone()
    }

    /// `http://127.0.0.1:PORT`: the REST base without `/api/v10` (serenity's `proxy` form).
    #[must_use]
    pub fn http_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The configuration in force.
    #[must_use]
    pub fn config(&self) -> MockConfig {
        self.shared.lock().gateway.config().clone()
    }

    /// Counters now.
    #[must_use]
    pub fn stats(&self) -> Stats {
        let now = self.shared.now();
        self.shared.lock().gateway.stats(now)
    }

    /// Every live session.
    #[must_use]
    pub fn sessions(&self) -> Vec<SessionReport> {
        self.shared.lock().gateway.sessions()
    }

    /// Delivery of the event source's events.
    #[must_use]
    pub fn event_report(&self) -> EventReport {
        self.shared.lock().gateway.event_report()
    }

    /// Guild ids, in order.
    #[must_use]
    pub fn guild_ids(&self) -> Vec<u64> {
        self.shared
            .lock()
            .gateway
            .world()
            .guilds()
            .map(|g| g.id)
            .collect()
    }

    /// One guild's fixture: its id, channel ids (text first) and member ids (the bot first).
    #[must_use]
    pub fn guild(&self, id: u64) -> Option<GuildFixture> {
        let core = self.shared.lock();
        let guild = core.gateway.world().guild(id)?;
        Some(GuildFixture {
            id: guild.id,
            text_channels: guild.channel_ids().take(guild.text_channels).collect(),
            channels: guild.channel_ids().collect(),
            members: guild.member_ids().collect(),
        })
    }

    /// Closes every connection of shard `shard` with `code`; returns how many. A code no
    /// websocket peer may receive is refused.
    pub fn close_shard(&self, shard: u32, code: u16) -> Result<usize, ControlError> {
        self.shared
            .with_gateway(|g, now, out| g.close_shard(now, shard, code, out))
    }

    /// Drops the TCP connection of every connection of shard `shard`; returns how many.
    pub fn drop_shard(&self, shard: u32) -> usize {
        self.shared
            .with_gateway(|g, now, out| g.drop_shard(now, shard, out))
    }

    /// Sends op 7 (reconnect) to shard `shard`'s connections; returns how many.
    pub fn reconnect_shard(&self, shard: u32) -> usize {
        self.shared
            .with_gateway(|g, now, out| g.reconnect_shard(now, shard, out))
    }

    /// Sends op 9 to shard `shard`'s connections, ending their sessions unless `resumable`.
    pub fn invalidate_shard(&self, shard: u32, resumable: bool) -> usize {
        self.shared
            .with_gateway(|g, _, out| g.invalidate_shard(shard, resumable, out))
    }

    /// Withholds (or restores) heartbeat ACKs for shard `shard`.
    pub fn withhold_acks(&self, shard: u32, withhold: bool) {
        self.shared
            .with_gateway(|g, _, _| g.withhold_acks(shard, withhold));
    }

    /// Starts the event source, optionally at a new rate (events per guild per second). A rate
    /// that is not finite, is negative or exceeds
    /// [`MAX_EVENTS_PER_SECOND`](crate::gateway::MAX_EVENTS_PER_SECOND) over all guilds is
    /// refused.
    pub fn start_events(&self, rate: Option<f64>) -> Result<(), ControlError> {
        self.shared
            .with_gateway(|g, now, _| g.start_events(now, rate))
    }

    /// Stops the event source.
    pub fn stop_events(&self) {
        self.shared.with_gateway(|g, _, _| g.stop_events());
    }

    /// Every produced event's id (its message id, or the joining user's id), in the order they
    /// were produced (none without [`MockConfig::keep_event_ids`]). Ids are snowflakes of the
    /// time they were made, as Discord's are.
    ///
    /// [`MockConfig::keep_event_ids`]: crate::MockConfig::keep_event_ids
    #[must_use]
    pub fn event_ids(&self) -> Vec<u64> {
        self.shared.with_gateway(|g, _, _| g.event_ids().to_vec())
    }

    /// Produces one event in the `guild_index`-th guild now; returns its id.
    ///
    /// # Panics
    /// If there is no such guild.
    pub fn produce_event(&self, guild_index: usize) -> u64 {
        self.shared.with_gateway(|g, now, out| {
            g.advance(now);
            g.produce_event(guild_index, out)
        })
    }

    /// Leaves token-reset mode and refills the session budget.
    pub fn restore_token(&self) {
        self.shared.with_gateway(|g, _, _| g.restore_token());
    }

    /// Waits until `condition` holds, re-checking after every change of state, for at most
    /// `timeout`. `what` names the condition in the error.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        what: &str,
        mut condition: impl FnMut(&Self) -> bool,
    ) -> Result<(), MockError> {
        let deadline = Instant::now() + timeout;
        loop {
            let changed = self.shared.changed.notified();
            if condition(self) {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return if condition(self) {
                    Ok(())
                } else {
                    Err(MockError::Timeout(timeout, what.to_owned()))
                };
            }
        }
    }

    /// Stops the server and waits for it to finish.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    /// Resolves when the server stops (after [`shutdown`](Self::shutdown) elsewhere, or a
    /// failure).
    pub async fn stopped(&mut self) {
        if let Some(task) = self.task.as_mut() {
            let _ = task.await;
        }
    }
}

impl Drop for MockDiscord {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

type AppState = (Arc<Shared>, watch::Receiver<bool>);

fn router(shared: Arc<Shared>, stop: watch::Receiver<bool>) -> Router {
    Router::new()
        .route("/", get(gateway))
        .route("/gateway", get(gateway))
        .route("/gateway/", get(gateway))
        .route("/resume", get(gateway))
        .route("/resume/", get(gateway))
        .route("/api/v10/{*path}", any(rest_route))
        // Deprecated, not removed: eris 0.16 speaks only v9.
        .route("/api/v9/{*path}", any(rest_route))
        .route("/_mock/stats", get(|State((s, _)): State<AppState>| async move { axum::Json(s.lock().gateway.stats(s.now())) }))
        .route("/_mock/sessions", get(|State((s, _)): State<AppState>| async move { axum::Json(s.lock().gateway.sessions()) }))
        .route("/_mock/events", get(|State((s, _)): State<AppState>| async move { axum::Json(s.lock().gateway.event_report()) }))
        .route("/_mock/events/start", post(events_start))
        .route(
            "/_mock/events/stop",
            post(|State((s, _)): State<AppState>| async move {
                s.with_gateway(|g, _, _| g.stop_events());
                axum::Json(json!({"running": false}))
            }),
        )
        .route("/_mock/events/produce", post(events_produce))
        .route(
            "/_mock/token/restore",
            post(|State((s, _)): State<AppState>| async move {
                s.with_gateway(|g, _, _| g.restore_token());
                axum::Json(json!({"token_reset": false}))
            }),
        )
        .route("/_mock/shards/{shard}/{fault}", post(shard_fault))
        .fallback(|| async { (StatusCode::NOT_FOUND, axum::Json(json!({"message": "404: Not Found", "code": 0}))) })
        .with_state((shared, stop))
}

/// Bytes a connection reads from its client at a time.
const READ_BUFFER: usize = 4096;

async fn gateway(
    State((shared, stop)): State<AppState>,
    RawQuery(query): RawQuery,
    upgrade: WebSocketUpgrade,
) -> Response {
    upgrade
        .max_message_size(1 << 20)
        // Clients send heartbeats and the odd identify: a small read buffer, which is zeroed on
        // every read, costs a thousand connections neither memory nor time (128 KiB each by
        // default).
        .read_buffer_size(READ_BUFFER)
        .on_upgrade(move |socket| connection(shared, socket, query, stop))
}

/// One websocket connection: client frames in, queued frames out.
async fn connection(
    shared: Arc<Shared>,
    mut socket: WebSocket,
    query: Option<String>,
    mut stop: watch::Receiver<bool>,
) {
    let (outlet, mut queue) = mpsc::unbounded_channel();
    // An unreadable query gets the plain wire: the core closes the connection with 4002 at once.
    let mut transport =
        Transport::new(WireOptions::from_query(query.as_deref()).unwrap_or_default());
    let conn = {
        let now = shared.now();
        let mut out = Vec::new();
        let mut core = shared.lock();
        let conn = core.gateway.open(now, query.as_deref(), &mut out);
        core.outlets.insert(conn, outlet);
        core.apply(out);
        conn
    };
    shared.changed.notify_waiters();
    tracing::debug!(
        conn,
        query = query.as_deref().unwrap_or(""),
        "gateway connection opened"
    );
    loop {
        tokio::select! {
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Text(text))) => match transport.decode_text(text.as_str()) {
                    Ok(json) => shared.with_gateway(|g, now, out| g.receive_text(conn, now, &json, out)),
                    Err(error) => {
                        tracing::debug!(conn, %error, "undecodable frame");
                        shared.with_gateway(|g, now, out| g.receive_binary(conn, now, out));
                    }
                },
                // The size limit applies to what the client sent, not to its JSON rendering.
                Some(Ok(Message::Binary(bytes))) if bytes.len() > MAX_CLIENT_PAYLOAD => {
                    shared.with_gateway(|g, now, out| g.receive_too_large(conn, now, out));
                }
                Some(Ok(Message::Binary(bytes))) => match transport.decode_binary(&bytes) {
                    Ok(json) => shared.with_gateway(|g, now, out| g.receive_decoded(conn, now, &json, out)),
                    Err(error) => {
                        tracing::debug!(conn, %error, "undecodable frame");
                        shared.with_gateway(|g, now, out| g.receive_binary(conn, now, out));
                    }
                },
                Some(Ok(Message::Close(frame))) => {
                    let code = frame.map(|f| f.code);
                    tracing::debug!(conn, ?code, "client closed");
                    shared.with_gateway(|g, now, _| g.client_closed(conn, now, code));
                    // Let the websocket library answer the close frame.
                    let _ = tokio::time::timeout(Duration::from_secs(1), async { while socket.recv().await.is_some() {} }).await;
                    break;
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Err(_)) | None => break,
            },
            outbound = queue.recv() => {
                let Some(outbound) = outbound else { break };
                if !write(&mut socket, &mut transport, outbound, &mut queue).await {
                    break;
                }
            }
            _ = stop.changed() => break,
        }
    }
    shared.with_gateway(|g, now, _| g.client_closed(conn, now, None));
    shared.lock().outlets.remove(&conn);
    tracing::debug!(conn, "gateway connection ended");
}

/// Writes one queued item and whatever else is queued behind it, with a single flush. Returns
/// whether the connection goes on.
async fn write(
    socket: &mut WebSocket,
    transport: &mut Transport,
    first: Outbound,
    queue: &mut mpsc::UnboundedReceiver<Outbound>,
) -> bool {
    let mut next = Some(first);
    while let Some(outbound) = next.take() {
        match outbound {
            Outbound::Text(text) => {
                let message = match transport.encode(&text) {
                    Frame::Text(text) => Message::Text(text.into()),
                    Frame::Binary(bytes) => Message::Binary(bytes.into()),
                };
                if socket.feed(message).await.is_err() {
                    return false;
                }
            }
            Outbound::CompressPayloads => transport.compress_payloads(),
            Outbound::Close(code, reason) => {
                let frame = CloseFrame {
                    code,
                    reason: reason.into(),
                };
                if socket.send(Message::Close(Some(frame))).await.is_ok() {
                    // Wait briefly for the client's answering close frame.
                    let _ = tokio::time::timeout(Duration::from_secs(1), async {
                        while socket.recv().await.is_some() {}
                    })
                    .await;
                }
                return false;
            }
            Outbound::Drop => return false,
        }
        next = queue.try_recv().ok();
    }
    socket.flush().await.is_ok()
}

async fn rest_route(
    State((shared, _)): State<AppState>,
    method: Method,
    Path(path): Path<String>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let unix_now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let response = {
        let now = shared.now();
        let mut core = shared.lock();
        let Core {
            gateway, limiter, ..
        } = &mut *core;
        rest::handle(
            gateway,
            limiter,
            now,
            unix_now,
            &shared.gateway_url,
            rest::Request {
                method: method.as_str(),
                path: &path,
                query: query.as_deref(),
                authorization,
                body: &body,
            },
        )
    };
    shared.changed.notify_waiters();
    tracing::debug!(%method, path, status = response.status, "REST");
    let status = StatusCode::from_u16(response.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut reply = (status, axum::Json(response.body)).into_response();
    for (name, value) in response.headers {
        if let Ok(value) = value.parse() {
            reply.headers_mut().insert(name, value);
        }
    }
    reply
}

#[derive(Deserialize)]
struct FaultQuery {
    /// Wider than a close code, so a number out of range gets the range in its answer.
    code: Option<i64>,
    resumable: Option<bool>,
    withhold: Option<bool>,
}

async fn shard_fault(
    State((mock, _)): State<AppState>,
    Path((shard, kind)): Path<(u32, String)>,
    Query(query): Query<FaultQuery>,
) -> Response {
    let affected = match kind.as_str() {
        "close" => {
            let code = query.code.unwrap_or(4000);
            let Ok(code) = u16::try_from(code) else {
                return bad_request(&ControlError::CloseCode(code));
            };
            match mock.with_gateway(|g, now, out| g.close_shard(now, shard, code, out)) {
                Ok(affected) => affected,
                Err(error) => return bad_request(&error),
            }
        }
        "drop" => mock.with_gateway(|g, now, out| g.drop_shard(now, shard, out)),
        "reconnect" => mock.with_gateway(|g, now, out| g.reconnect_shard(now, shard, out)),
        "invalidate" => {
            let resumable = query.resumable.unwrap_or(false);
            mock.with_gateway(|g, _, out| g.invalidate_shard(shard, resumable, out))
        }
        "acks" => {
            let withhold = query.withhold.unwrap_or(true);
            mock.with_gateway(|g, _, _| g.withhold_acks(shard, withhold));
            return axum::Json(json!({"shard": shard, "acks_withheld": withhold})).into_response();
        }
        _ => {
            return (
                StatusCode::NOT_FOUND,
                axum::Json(json!({"message": format!("unknown fault {kind:?}; expected close, drop, reconnect, invalidate or acks"), "code": 0})),
            )
                .into_response();
        }
    };
    axum::Json(json!({"shard": shard, "affected": affected})).into_response()
}

#[derive(Deserialize)]
struct EventsQuery {
    rate: Option<f64>,
    guild: Option<usize>,
}

async fn events_start(
    State((shared, _)): State<AppState>,
    Query(query): Query<EventsQuery>,
) -> Response {
    match shared.with_gateway(|g, now, _| g.start_events(now, query.rate)) {
        Ok(()) => axum::Json(json!({"running": true})).into_response(),
        Err(error) => bad_request(&error),
    }
}

/// A 400 in Discord's error shape for a control request out of range.
fn bad_request(error: &ControlError) -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(json!({"message": error.to_string(), "code": 0})),
    )
        .into_response()
}

async fn events_produce(
    State((shared, _)): State<AppState>,
    Query(query): Query<EventsQuery>,
) -> Response {
    let guild = query.guild.unwrap_or(0);
    let guilds = shared.lock().gateway.world().guild_count();
    if guild >= guilds {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"message": format!("guild index {guild} out of range (0..{guilds})"), "code": 0})),
        )
            .into_response();
    }
    let id = shared.with_gateway(|g, now, out| {
        g.advance(now);
        g.produce_event(guild, out)
    });
    axum::Json(json!({"id": id.to_string()})).into_response()
}
