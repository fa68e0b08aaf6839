//! The central REST proxy: one rate-limit state for every process of the fleet.
//!
//! # Theory of operation
//!
//! Each cluster running its own HTTP client with its own rate limiter races the others into 429s:
//! none of them knows what the rest spent. The admiral therefore serves one HTTP endpoint on
//! loopback ([`RestProxy`]) and the adapters point their clients at it with their own limiters
//! off. Every request waits for a permit from one [`twilight_http_ratelimiting::RateLimiter`]
//! (per-route buckets learnt from `X-RateLimit-*` headers, the global limit, one request in
//! flight per unknown bucket), then goes to Discord with its method, headers, query and body
//! (files included) unchanged; the response comes back whole.
//!
//! On top of the bucket logic the proxy
//! - honours 429s: a global one holds every request until `retry_after` has passed, others wait
//!   their `retry_after`; the request is retried up to [`ProxyConfig::max_retries`] times before
//!   the 429 is handed to the caller;
//! - keeps Discord's invalid-request budget (401, 403 and non-shared 429 answers, 10,000 per
//!   10 minutes before Discord bans the IP): at the budget it refuses locally with a 503 instead
//!   of spending more;
//! - adds `Authorization: Bot <token>` to requests that carry none, so a worker needs no token
//!   for REST;
//! - serves only the fleet: every request must carry a key the admiral gave its process
//!   ([`RestProxy::admit`], sent as [`KEY_HEADER`]). Any other local user on the loopback port
//!   gets a 401 from the proxy itself: it can neither act as the bot nor spend the fleet's
//!   invalid-request budget. Requests and invalid requests are counted per caller
//!   ([`ProxyStats::callers`]), so one misbehaving worker is visible;
//! - counts what it does ([`ProxyStats`], also served as JSON at `GET /_fleet/stats`).
//!
//! Errors of the proxy itself (upstream unreachable, upstream timeout, refused) answer with a
//! Discord-shaped JSON body (`{"message": ..., "code": 0}`) and an `x-fleet-proxy` header naming
//! the cause, so a client never hangs and can tell them from Discord's own answers.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::watch;
use tokio::time::Instant;
use twilight_http_ratelimiting::{Endpoint, RateLimitHeaders, RateLimiter};

use super::client::{Connector, connector};
use super::discord::{limiter_method, ratelimit_headers, retry_after, route_path};
pub use super::stats::{CallerStats, ProxyStats};
use super::stats::{Counters, Samples};
use crate::Secret;

/// How long Discord counts invalid requests.
pub const INVALID_REQUEST_WINDOW: Duration = Duration::from_mins(10);

/// The request header that proves a request comes from a process of the fleet: the key
/// [`RestProxy::admit`] gave it. The proxy removes it before forwarding.
pub const KEY_HEADER: &str = "x-fleet-proxy-key";

/// The headers an HTTP client sends on every request to prove itself to the proxy: [`KEY_HEADER`]
/// with `key`, marked sensitive so the client's `Debug` does not show it.
///
/// # Panics
/// Never for keys from [`RestProxy::admit`] (hex digits).
#[must_use]
pub fn key_headers(key: &Secret) -> HeaderMap {
    let mut value = HeaderValue::from_str(key.expose()).expect("proxy keys are hex digits");
    value.set_sensitive(true);
    let mut headers = HeaderMap::new();
    headers.insert(HeaderName::from_static(KEY_HEADER), value);
    headers
}

/// Settings of the central REST proxy.
#[derive(Clone)]
pub struct ProxyConfig {
    /// Where requests go: `https://discord.com` or a mock's `http://127.0.0.1:PORT`, without
    /// `/api/v10`.
    pub upstream: String,
    /// The bot token, added to requests that carry no `Authorization`.
    pub token: String,
    /// Requests per second across all routes (Discord's default is 50; interactions are exempt).
    pub global_limit: u16,
    /// Invalid requests (401, 403, non-shared 429) allowed per [`INVALID_REQUEST_WINDOW`];
    /// Discord bans at 10,000.
    pub invalid_request_limit: u32,
    /// How often a 429 is retried before the caller gets it.
    pub max_retries: u32,
    /// How long one upstream request may take.
    pub request_timeout: Duration,
    /// Largest request body accepted (files included).
    pub max_body: usize,
}

impl ProxyConfig {
    /// Discord's defaults for `upstream` with `token`.
    pub fn new(upstream: impl Into<String>, token: impl Into<String>) -> Self {
        Self {
            upstream: upstream.into(),
            token: token.into(),
            global_limit: 50,
            invalid_request_limit: 9_000,
            max_retries: 3,
            request_timeout: Duration::from_secs(30),
            max_body: 64 * 1024 * 1024,
        }
    }
}

impl std::fmt::Debug for ProxyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyConfig")
            .field("upstream", &self.upstream)
            .field("token", &"<redacted>")
            .field("global_limit", &self.global_limit)
            .field("invalid_request_limit", &self.invalid_request_limit)
            .field("max_retries", &self.max_retries)
            .field("request_timeout", &self.request_timeout)
            .field("max_body", &self.max_body)
            .finish()
    }
}

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyStartError {
    /// The upstream URL is not `http(s)://host[:port]`.
    #[error("upstream {0:?} is not an http(s) URL")]
    BadUpstream(String),
    /// The token cannot be a header value.
    #[error("the token cannot be sent as a header")]
    BadToken,
    /// The loopback listener could not be bound.
    #[error("cannot listen on loopback: {0}")]
    Bind(#[from] std::io::Error),
}

/// A running proxy. Dropping it stops the server.
#[derive(Debug)]
pub struct RestProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
}

impl RestProxy {
    /// Starts the proxy on `127.0.0.1` with a free port.
    pub async fn start(config: ProxyConfig) -> Result<Self, ProxyStartError> {
        Self::start_on(config, 0).await
    }

    /// Starts the proxy on `127.0.0.1:port` (0: a free port).
    pub async fn start_on(config: ProxyConfig, port: u16) -> Result<Self, ProxyStartError> {
        let upstream = config.upstream.trim_end_matches('/').to_owned();
        let valid = upstream
            .parse::<Uri>()
            .is_ok_and(|u| matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some());
        if !valid {
            return Err(ProxyStartError::BadUpstream(config.upstream));
        }
        let mut auth = HeaderValue::try_from(format!("Bot {}", config.token))
            .map_err(|_| ProxyStartError::BadToken)?;
        auth.set_sensitive(true);
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            limiter: RateLimiter::new(config.global_limit.max(1)),
            client: Client::builder(TokioExecutor::new()).build(connector()),
            upstream,
            auth,
            counters: Counters::default(),
            latencies: Mutex::new(Samples::default()),
            queue_waits: Mutex::new(Samples::default()),
            invalid: Mutex::new(VecDeque::new()),
            global_until: Mutex::new(None),
            keys: RwLock::default(),
            callers: Mutex::default(),
            config,
        });
        let (shutdown, mut stop) = watch::channel(false);
        let app = axum::Router::new()
            .route("/_fleet/stats", axum::routing::get(serve_stats))
            .fallback(handle)
            .with_state(shared.clone());
        tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await;
            if let Err(error) = served {
                tracing::error!(target: "fleet::proxy", %error, "the REST proxy stopped");
            }
        });
        tracing::debug!(target: "fleet::proxy", %addr, upstream = %shared.upstream, "REST proxy listening");
        Ok(Self {
            addr,
            shared,
            shutdown,
        })
    }

    /// Where the proxy listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The proxy's base URL (`http://127.0.0.1:PORT`), to use in place of `https://discord.com`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// What the proxy has done so far.
    pub fn stats(&self) -> ProxyStats {
        self.shared.stats()
    }

    /// A cheap handle that reads the stats while the proxy runs.
    pub fn stats_handle(&self) -> ProxyStatsHandle {
        ProxyStatsHandle(self.shared.clone())
    }

    /// Lets one more caller in: returns the key it must send as [`KEY_HEADER`]. `caller` names
    /// it in [`ProxyStats::callers`]; several keys may share a name (a worker's processes).
    pub fn admit(&self, caller: &str) -> Secret {
        let key = Secret::random();
        self.admit_key(caller, &key);
        key
    }

    /// Lets a caller in again with the key it already has: a worker a new admiral adopted,
    /// whose key the last admiral's proxy gave it.
    pub fn admit_key(&self, caller: &str, key: &Secret) {
        self.shared
            .keys
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key.expose().to_owned(), caller.to_owned());
        self.shared
            .callers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(caller.to_owned())
            .or_default();
    }

    /// Refuses a key from now on (its process is gone).
    pub fn revoke(&self, key: &Secret) {
        self.shared
            .keys
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(key.expose());
    }
}

impl Drop for RestProxy {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

/// Reads a running proxy's [`ProxyStats`].
#[derive(Debug, Clone)]
pub struct ProxyStatsHandle(Arc<Shared>);

impl ProxyStatsHandle {
    /// The proxy's stats now.
    pub fn get(&self) -> ProxyStats {
        self.0.stats()
    }
}

struct Shared {
    config: ProxyConfig,
    limiter: RateLimiter,
    client: Client<Connector, Full<Bytes>>,
    upstream: String,
    auth: HeaderValue,
    counters: Counters,
    latencies: Mutex<Samples>,
    queue_waits: Mutex<Samples>,
    invalid: Mutex<VecDeque<Instant>>,
    global_until: Mutex<Option<Instant>>,
    /// Admitted keys → caller names.
    keys: RwLock<HashMap<String, String>>,
    callers: Mutex<BTreeMap<String, CallerStats>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("config", &self.config)
            .field("upstream", &self.upstream)
            .field("auth", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl Shared {
    fn stats(&self) -> ProxyStats {
        let c = &self.counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let (latency_p50_us, latency_p99_us, latency_max_us) = self
            .latencies
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .summary();
        let (queue_wait_p50_us, _, _) = self
            .queue_waits
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .summary();
        ProxyStats {
            requests: load(&c.requests),
            completed: load(&c.completed),
            in_flight: load(&c.in_flight),
            queued: load(&c.queued),
            upstream_requests: load(&c.upstream_requests),
            rate_limited: load(&c.rate_limited),
            global_rate_limited: load(&c.global_rate_limited),
            shared_rate_limited: load(&c.shared_rate_limited),
            retries: load(&c.retries),
            upstream_errors: load(&c.upstream_errors),
            refused: load(&c.refused),
            invalid_requests: self.invalid_count(Instant::now()) as u64,
            latency_p50_us,
            latency_p99_us,
            latency_max_us,
            queue_wait_p50_us,
            unauthenticated: load(&c.unauthenticated),
            callers: self
                .callers
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        }
    }

    /// The caller a request's [`KEY_HEADER`] names, if it is admitted.
    fn caller(&self, headers: &HeaderMap) -> Option<String> {
        let key = headers.get(KEY_HEADER)?.to_str().ok()?;
        self.keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .cloned()
    }

    fn for_caller(&self, caller: &str, count: impl FnOnce(&mut CallerStats)) {
        if let Some(stats) = self
            .callers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_mut(caller)
        {
            count(stats);
        }
    }

    fn invalid_count(&self, now: Instant) -> usize {
        let mut invalid = self.invalid.lock().unwrap_or_else(PoisonError::into_inner);
        while invalid
            .front()
            .is_some_and(|t| now.duration_since(*t) >= INVALID_REQUEST_WINDOW)
        {
            invalid.pop_front();
        }
        invalid.len()
    }

    fn count_invalid(&self, now: Instant, caller: &str) {
        self.for_caller(caller, |stats| stats.invalid_requests += 1);
        let mut invalid = self.invalid.lock().unwrap_or_else(PoisonError::into_inner);
        invalid.push_back(now);
        // Never grows past the budget by more than the requests in flight.
        while invalid.len() > self.config.invalid_request_limit as usize + 1024 {
            invalid.pop_front();
        }
    }

    /// Waits out a global 429.
    async fn global_pause(&self) {
        loop {
            let until = *self
                .global_until
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            match until {
                Some(until) if until > Instant::now() => tokio::time::sleep_until(until).await,
                _ => return,
            }
        }
    }
}

/// Counts a request in a gauge for as long as it lives.
struct Gauge<'a>(&'a AtomicU64);

impl<'a> Gauge<'a> {
    fn enter(counter: &'a AtomicU64) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Self(counter)
    }
}

impl Drop for Gauge<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The proxy's own failures, answered in Discord's error shape.
#[derive(Debug, thiserror::Error)]
enum ProxyError {
    #[error("{0} is not proxied (Discord's API takes GET, POST, PUT, PATCH and DELETE)")]
    Method(Method),
    #[error("{0} is not a Discord API path (expected /api/v10/...)")]
    Path(String),
    #[error("request body larger than {0} bytes")]
    TooLarge(usize),
    #[error(
        "{0} invalid requests in the last ten minutes: refusing more to stay below Discord's ban"
    )]
    Budget(usize),
    #[error("no valid {KEY_HEADER} header: this proxy serves only its fleet's processes")]
    Unauthenticated,
    #[error("upstream unreachable: {0}")]
    Upstream(String),
    #[error("no upstream answer within {0:?}")]
    Timeout(Duration),
}

impl ProxyError {
    fn status(&self) -> StatusCode {
        match self {
            Self::Unauthenticated => StatusCode::UNAUTHORIZED,
            Self::Method(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::Path(_) => StatusCode::NOT_FOUND,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Budget(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Upstream(_) => StatusCode::BAD_GATEWAY,
            Self::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Self::Unauthenticated => "unauthenticated",
            Self::Method(_) => "method",
            Self::Path(_) => "path",
            Self::TooLarge(_) => "too-large",
            Self::Budget(_) => "invalid-request-budget",
            Self::Upstream(_) => "upstream-unreachable",
            Self::Timeout(_) => "upstream-timeout",
        }
    }
}

impl IntoResponse for ProxyError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "message": self.to_string(), "code": 0 });
        let mut response = (self.status(), axum::Json(body)).into_response();
        response.headers_mut().insert(
            HeaderName::from_static("x-fleet-proxy"),
            HeaderValue::from_static(self.kind()),
        );
        response
    }
}

async fn serve_stats(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if shared.caller(&headers).is_none() {
        return unauthenticated(&shared);
    }
    axum::Json(shared.stats()).into_response()
}

/// A request without a valid key: refused before anything is counted against the fleet.
fn unauthenticated(shared: &Shared) -> Response {
    shared
        .counters
        .unauthenticated
        .fetch_add(1, Ordering::Relaxed);
    ProxyError::Unauthenticated.into_response()
}

async fn handle(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let Some(caller) = shared.caller(request.headers()) else {
        return unauthenticated(&shared);
    };
    let counters = &shared.counters;
    counters.requests.fetch_add(1, Ordering::Relaxed);
    shared.for_caller(&caller, |stats| stats.requests += 1);
    let _in_flight = Gauge::enter(&counters.in_flight);
    let started = Instant::now();
    let response = match forward(&shared, request, &caller).await {
        Ok(response) => response,
        Err(error) => {
            match error {
                ProxyError::Upstream(_) | ProxyError::Timeout(_) => {
                    counters.upstream_errors.fetch_add(1, Ordering::Relaxed);
                }
                _ => {
                    counters.refused.fetch_add(1, Ordering::Relaxed);
                }
            }
            tracing::warn!(target: "fleet::proxy", %error, "REST request failed in the proxy");
            error.into_response()
        }
    };
    shared
        .latencies
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(started.elapsed().as_micros() as u64);
    counters.completed.fetch_add(1, Ordering::Relaxed);
    response
}

/// Headers that describe one hop, not the message.
const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    header::HOST,
    header::TRANSFER_ENCODING,
    header::CONTENT_LENGTH,
    header::TE,
    header::UPGRADE,
];

async fn forward(shared: &Shared, request: Request, caller: &str) -> Result<Response, ProxyError> {
    let (parts, body) = request.into_parts();
    let method = limiter_method(&parts.method).ok_or(ProxyError::Method(parts.method.clone()))?;
    let route = route_path(parts.uri.path())
        .ok_or_else(|| ProxyError::Path(parts.uri.path().to_owned()))?
        .to_owned();
    let path_and_query = parts
        .uri
        .path_and_query()
        .map_or(parts.uri.path(), |pq| pq.as_str());
    let uri: Uri = format!("{}{}", shared.upstream, path_and_query)
        .parse()
        .map_err(|_| ProxyError::Path(path_and_query.to_owned()))?;
    let body = axum::body::to_bytes(body, shared.config.max_body)
        .await
        .map_err(|_| ProxyError::TooLarge(shared.config.max_body))?;
    let mut headers = parts.headers;
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    headers.remove(KEY_HEADER);
    if !headers.contains_key(header::AUTHORIZATION) {
        headers.insert(header::AUTHORIZATION, shared.auth.clone());
    }
    let endpoint = Endpoint {
        method,
        path: route,
    };
    let counters = &shared.counters;
    let mut retries = 0;
    loop {
        let invalid = shared.invalid_count(Instant::now());
        if invalid >= shared.config.invalid_request_limit as usize {
            return Err(ProxyError::Budget(invalid));
        }
        let waiting = Instant::now();
        let permit = {
            let _queued = Gauge::enter(&counters.queued);
            shared.global_pause().await;
            shared.limiter.acquire(endpoint.clone()).await
        };
        shared
            .queue_waits
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(waiting.elapsed().as_micros() as u64);
        let mut upstream = hyper::Request::new(Full::new(body.clone()));
        *upstream.method_mut() = parts.method.clone();
        *upstream.uri_mut() = uri.clone();
        *upstream.headers_mut() = headers.clone();
        counters.upstream_requests.fetch_add(1, Ordering::Relaxed);
        let sent = tokio::time::timeout(
            shared.config.request_timeout,
            shared.client.request(upstream),
        )
        .await;
        let response = match sent {
            Ok(Ok(response)) => response,
            Ok(Err(error)) => {
                permit.complete(None);
                return Err(ProxyError::Upstream(error.to_string()));
            }
            Err(_) => {
                permit.complete(None);
                return Err(ProxyError::Timeout(shared.config.request_timeout));
            }
        };
        let (mut head, body) = response.into_parts();
        permit.complete(ratelimit_headers(&head.headers));
        let timeout = shared.config.request_timeout;
        let body = match tokio::time::timeout(timeout, body.collect()).await {
            Ok(Ok(collected)) => collected.to_bytes(),
            Ok(Err(error)) => return Err(ProxyError::Upstream(error.to_string())),
            Err(_) => return Err(ProxyError::Timeout(timeout)),
        };
        let now = Instant::now();
        match head.status {
            StatusCode::TOO_MANY_REQUESTS => {
                counters.rate_limited.fetch_add(1, Ordering::Relaxed);
                let scope = head
                    .headers
                    .get(RateLimitHeaders::SCOPE)
                    .map(HeaderValue::as_bytes);
                let global =
                    scope == Some(b"global") || head.headers.contains_key("x-ratelimit-global");
                let retry_after = retry_after(&head.headers, &body);
                if global {
                    counters.global_rate_limited.fetch_add(1, Ordering::Relaxed);
                    let mut until = shared
                        .global_until
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner);
                    let new = now + retry_after;
                    if until.is_none_or(|u| u < new) {
                        *until = Some(new);
                    }
                }
                if scope == Some(b"shared") {
                    counters.shared_rate_limited.fetch_add(1, Ordering::Relaxed);
                } else {
                    shared.count_invalid(now, caller);
                }
                tracing::warn!(target: "fleet::proxy", route = %endpoint.path, ?retry_after, global, "rate limited by upstream");
                if retries < shared.config.max_retries {
                    retries += 1;
                    counters.retries.fetch_add(1, Ordering::Relaxed);
                    if !global {
                        tokio::time::sleep(retry_after).await;
                    }
                    continue;
                }
            }
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => shared.count_invalid(now, caller),
            _ => {}
        }
        for name in &HOP_BY_HOP {
            head.headers.remove(name);
        }
        let mut response = Response::new(Body::from(body));
        *response.status_mut() = head.status;
        *response.headers_mut() = head.headers;
        return Ok(response);
    }
}
