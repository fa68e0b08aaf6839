//! The [`Ipc`] handle: what workers and the admiral use to talk to the fleet.
//!
//! Every request carries a random correlation id and a timeout, and resolves or fails: an answer,
//! a refusal, a timeout, or [`IpcError::Disconnected`] the moment the admiral is gone. In a worker
//! the handle speaks over the Unix socket; in the admiral it talks to the router directly.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use futures::future::BoxFuture;
use serde::de::DeserializeOwned;

use tokio::sync::{Semaphore, mpsc, oneshot};

use super::frame::FrameError;
use super::outbox::{Outbox, Refused};
use super::proto::{
    Fetch, Group, LogLevel, LogRecord, Outcome, Payload, PayloadError, Refusal, Reply, Request,
    RestartMode, ShardCount, ShardSession, Status, StoreRequest, Target, Up,
};

/// Requests one handle may have in flight; more wait (back-pressure).
pub const MAX_IN_FLIGHT: usize = 4096;

/// Default request timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a worker waits for an identify slot before giving up (a full startup of a large bot).
pub const IDENTIFY_TIMEOUT: Duration = Duration::from_hours(1);

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IpcError {
    /// No answer within the timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The admiral refused the request.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The target's command handler returned an error.
    #[error("{target} answered with an error: {message}")]
    Remote {
        /// Who answered.
        target: Target,
        /// Its error.
        message: String,
    },
    /// The target did not answer in time.
    #[error("{0} did not answer in time")]
    TargetTimedOut(Target),
    /// The connection to the admiral is gone.
    #[error("the connection to the admiral is gone")]
    Disconnected,
    /// The answer was not of the expected kind.
    #[error("unexpected reply: {0:?}")]
    Unexpected(Box<Reply>),
    /// A payload could not be encoded or decoded.
    #[error(transparent)]
    Payload(#[from] PayloadError),
    /// A frame could not be written.
    #[error(transparent)]
    Frame(#[from] FrameError),
}

/// A message delivered to registered handlers: a broadcast or a direct send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Who sent it.
    pub from: Target,
    /// Event name.
    pub event: String,
    /// Payload.
    pub payload: Payload,
}

/// Identifies one registered handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HandlerId(u64);

type Handler = Arc<dyn Fn(&Message) + Send + Sync>;

/// Runs incoming commands: `(from, payload) -> answer or error message`.
pub type CommandHandler =
    Arc<dyn Fn(Target, Payload) -> BoxFuture<'static, Result<Payload, String>> + Send + Sync>;

/// Answers cache lookups in a cluster (adapters set it): the object as JSON with Discord's field
/// names, or `None` for a miss. Runs on the IPC reader, so it must only read memory.
pub type FetchHandler = Arc<dyn Fn(Fetch) -> Option<Vec<u8>> + Send + Sync>;

/// Counts the guilds in a cluster's cache (adapters set it). Runs on the IPC reader, so it must
/// only read memory.
pub type GuildCounter = Arc<dyn Fn() -> u64 + Send + Sync>;

/// A request for the admiral's router from its own process.
#[derive(Debug)]
pub(crate) struct LocalRequest {
    pub request: Request,
    pub timeout: Duration,
    pub reply: oneshot::Sender<Reply>,
}

/// A worker's socket to the admiral: frames are encoded by the sender and written through the
/// connection's [`Outbox`], with no task between.
#[derive(Debug)]
pub(crate) struct Uplink {
    outbox: Outbox,
    max_frame: usize,
}

impl Uplink {
    pub(crate) fn new(outbox: Outbox, max_frame: usize) -> Self {
        Self { outbox, max_frame }
    }

    /// Sends one frame, waiting while the outbox is full (back-pressure from a slow admiral).
    async fn send(&self, up: &Up) -> Result<(), IpcError> {
        self.send_soon(up, false).await
    }

    /// [`send`](Self::send), deferred to the flusher when `batch` (other tasks are about to
    /// send too).
    async fn send_soon(&self, up: &Up, batch: bool) -> Result<(), IpcError> {
        let body = super::frame::encode(up, self.max_frame)?;
        loop {
            let queued = if batch {
                self.outbox.defer(&body)
            } else {
                self.outbox.push(&body)
            };
            match queued {
                Ok(()) => return Ok(()),
                Err(Refused::Closed) => return Err(IpcError::Disconnected),
                Err(Refused::Full) => self.outbox.flushed().await,
            }
        }
    }

    /// Sends one frame if it fits now; whether it was queued.
    fn try_send(&self, up: &Up) -> bool {
        super::frame::encode(up, self.max_frame).is_ok_and(|body| self.outbox.push(&body).is_ok())
    }
}

#[derive(Debug)]
pub(crate) enum Transport {
    /// Frames to a worker's socket.
    Socket(Uplink),
    /// Requests straight to the admiral's router; logs and status are local.
    Local(mpsc::Sender<LocalRequest>),
}

struct Inner {
    me: Target,
    transport: Transport,
    pending: Mutex<HashMap<u64, oneshot::Sender<Reply>>>,
    handlers: RwLock<HashMap<String, Vec<(HandlerId, Handler)>>>,
    next_handler: AtomicU64,
    commands: RwLock<Option<CommandHandler>>,
    fetcher: RwLock<Option<FetchHandler>>,
    guilds: RwLock<Option<GuildCounter>>,
    /// Incoming commands being run now.
    running: tokio::sync::watch::Sender<usize>,
    timeout: Duration,
    in_flight: Semaphore,
}

/// A handle on the fleet's IPC. Cheap to clone.
#[derive(Clone)]
pub struct Ipc {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Ipc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ipc")
            .field("me", &self.inner.me)
            .finish_non_exhaustive()
    }
}

impl Ipc {
    pub(crate) fn new(me: Target, transport: Transport, timeout: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                me,
                transport,
                pending: Mutex::default(),
                handlers: RwLock::default(),
                commands: RwLock::default(),
                fetcher: RwLock::default(),
                guilds: RwLock::default(),
                running: tokio::sync::watch::Sender::new(0),
                next_handler: AtomicU64::new(1),
                timeout,
                in_flight: Semaphore::new(MAX_IN_FLIGHT),
            }),
        }
    }

    /// Who this handle speaks for.
    #[must_use]
    pub fn me(&self) -> &Target {
        &self.inner.me
    }

    /// The default request timeout.
    #[must_use]
    pub fn default_timeout(&self) -> Duration {
        self.inner.timeout
    }

    // ---- messaging ---------------------------------------------------------------------------

    /// Delivers `event` to every worker and the admiral, this sender included.
    pub async fn broadcast(&self, event: &str, payload: Payload) -> Result<(), IpcError> {
        let request = Request::Broadcast {
            event: event.to_owned(),
            payload,
        };
        self.expect_done(request).await
    }

    /// Delivers `event` to one target (a cluster, a service or the admiral).
    pub async fn send_to(
        &self,
        target: Target,
        event: &str,
        payload: Payload,
    ) -> Result<(), IpcError> {
        let request = Request::SendTo {
            target,
            event: event.to_owned(),
            payload,
        };
        self.expect_done(request).await
    }

    /// Delivers `event` to one cluster.
    pub async fn send_to_cluster(
        &self,
        cluster: u32,
        event: &str,
        payload: Payload,
    ) -> Result<(), IpcError> {
        self.send_to(Target::Cluster(cluster), event, payload).await
    }

    /// Delivers `event` to the admiral.
    pub async fn send_to_admiral(&self, event: &str, payload: Payload) -> Result<(), IpcError> {
        self.send_to(Target::Admiral, event, payload).await
    }

    /// Calls `handler` for every message named `event` this process receives. Handlers run on the
    /// IPC reader: hand heavy work to a task.
    pub fn register(
        &self,
        event: &str,
        handler: impl Fn(&Message) + Send + Sync + 'static,
    ) -> HandlerId {
        let id = HandlerId(self.inner.next_handler.fetch_add(1, Ordering::Relaxed));
        self.inner
            .handlers
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(event.to_owned())
            .or_default()
            .push((id, Arc::new(handler)));
        id
    }

    /// Removes every handler of `event`; returns how many there were.
    pub fn unregister(&self, event: &str) -> usize {
        self.inner
            .handlers
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(event)
            .map_or(0, |h| h.len())
    }

    /// Removes one handler; returns whether it was registered.
    pub fn unregister_handler(&self, id: HandlerId) -> bool {
        let mut handlers = self
            .inner
            .handlers
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let mut found = false;
        handlers.retain(|_, list| {
            let before = list.len();
            list.retain(|(h, _)| *h != id);
            found |= list.len() != before;
            !list.is_empty()
        });
        found
    }

    /// Runs the handlers registered for a message's event; returns how many ran.
    pub(crate) fn deliver(&self, message: &Message) -> usize {
        let handlers: Vec<Handler> = self
            .inner
            .handlers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&message.event)
            .map(|list| list.iter().map(|(_, h)| h.clone()).collect())
            .unwrap_or_default();
        for handler in &handlers {
            if let Err(panicked) = crate::panics::catch_sync(|| handler(message)) {
                self.report_panic(panicked.report(
                    "message handler",
                    None,
                    Some(message.event.clone()),
                ));
            }
        }
        handlers.len()
    }

    /// Reports a caught panic in user code to the admiral (in the admiral: logs it), without
    /// waiting.
    pub(crate) fn report_panic(&self, report: crate::panics::PanicReport) {
        match &self.inner.transport {
            Transport::Socket(up) => {
                if !up.try_send(&Up::Status(Status::Panic(report))) {
                    tracing::warn!(target: "fleet::ipc", "a panic report could not be queued");
                }
            }
            Transport::Local(_) => {
                tracing::error!(target: "fleet::admiral", %report, "user code in the admiral panicked");
            }
        }
    }

    // ---- commands ----------------------------------------------------------------------------

    /// Sets what answers commands sent to this process (adapters and worker runtimes do this).
    pub fn set_command_handler(&self, handler: CommandHandler) {
        *self
            .inner
            .commands
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(handler);
    }

    /// Counts an incoming command as running until the guard drops.
    pub(crate) fn command_running(&self) -> RunningCommand {
        // Only reaching zero is news: waiters look for that alone.
        self.inner.running.send_if_modified(|n| {
            *n += 1;
            false
        });
        RunningCommand(self.inner.clone())
    }

    /// Waits until every incoming command has been answered, for at most `timeout`.
    pub async fn commands_done(&self, timeout: Duration) {
        let mut running = self.inner.running.subscribe();
        let _ = tokio::time::timeout(timeout, running.wait_for(|n| *n == 0)).await;
    }

    /// Runs this process's command handler on an incoming command, within `timeout`.
    pub(crate) fn run_command(
        &self,
        from: Target,
        payload: Payload,
        timeout: Duration,
    ) -> BoxFuture<'static, Outcome> {
        let handler = self
            .inner
            .commands
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let ipc = self.clone();
        Box::pin(async move {
            let Some(handler) = handler else {
                return Outcome::Error("this worker has no command handler".to_owned());
            };
            // Kept for a panic report only: a clone, not a formatted string, on every command.
            let asked = from.clone();
            let run = crate::panics::catch(handler(from, payload));
            match tokio::time::timeout(timeout, run).await {
                Ok(Ok(Ok(payload))) => Outcome::Ok(payload),
                Ok(Ok(Err(message))) => Outcome::Error(message),
                Ok(Err(panicked)) => {
                    let answer = format!("the command handler panicked: {}", panicked.message);
                    let asked = Some(format!("from {asked}"));
                    ipc.report_panic(panicked.report("command", None, asked));
                    Outcome::Error(answer)
                }
                Err(_) => Outcome::TimedOut,
            }
        })
    }

    /// Runs `target`'s command handler and returns its answer, within the default timeout.
    pub async fn command(&self, target: Target, payload: Payload) -> Result<Payload, IpcError> {
        self.command_within(target, payload, self.inner.timeout)
            .await
    }

    /// [`command`](Self::command) with its own timeout.
    pub async fn command_within(
        &self,
        target: Target,
        payload: Payload,
        timeout: Duration,
    ) -> Result<Payload, IpcError> {
        let reply = self
            .request(
                Request::Command {
                    target: target.clone(),
                    payload,
                },
                timeout,
            )
            .await?;
        match reply {
            Reply::Outcome(outcome) => outcome_result(target, outcome),
            other => Err(unexpected(other)),
        }
    }

    /// Runs a service's command handler.
    pub async fn service_command(
        &self,
        service: &str,
        payload: Payload,
    ) -> Result<Payload, IpcError> {
        self.command(Target::Service(service.to_owned()), payload)
            .await
    }

    /// Runs a cluster's command handler.
    pub async fn cluster_command(
        &self,
        cluster: u32,
        payload: Payload,
    ) -> Result<Payload, IpcError> {
        self.command(Target::Cluster(cluster), payload).await
    }

    /// Runs every cluster's command handler: one outcome per cluster (ok, error, timed out, or
    /// unavailable), never failing because one cluster did.
    pub async fn all_clusters_command(
        &self,
        payload: Payload,
    ) -> Result<BTreeMap<u32, Outcome>, IpcError> {
        let outcomes = self.command_all(Group::Clusters, payload).await?;
        Ok(outcomes
            .into_iter()
            .filter_map(|(t, o)| match t {
                Target::Cluster(id) => Some((id, o)),
                _ => None,
            })
            .collect())
    }

    /// Runs every service's command handler: one outcome per service.
    pub async fn all_services_command(
        &self,
        payload: Payload,
    ) -> Result<BTreeMap<String, Outcome>, IpcError> {
        let outcomes = self.command_all(Group::Services, payload).await?;
        Ok(outcomes
            .into_iter()
            .filter_map(|(t, o)| match t {
                Target::Service(name) => Some((name, o)),
                _ => None,
            })
            .collect())
    }

    async fn command_all(
        &self,
        group: Group,
        payload: Payload,
    ) -> Result<Vec<(Target, Outcome)>, IpcError> {
        match self
            .request(Request::CommandAll { group, payload }, self.inner.timeout)
            .await?
        {
            Reply::Outcomes(outcomes) => Ok(outcomes),
            other => Err(unexpected(other)),
        }
    }

    // ---- store -------------------------------------------------------------------------------

    /// Reads a key of the central store.
    pub async fn store_get(&self, key: &str) -> Result<Option<Payload>, IpcError> {
        match self
            .request(
                Request::Store(StoreRequest::Get(key.to_owned())),
                self.inner.timeout,
            )
            .await?
        {
            Reply::Value(value) => Ok(value),
            other => Err(unexpected(other)),
        }
    }

    /// Writes a key of the central store.
    pub async fn store_set(&self, key: &str, value: Payload) -> Result<(), IpcError> {
        self.expect_done(Request::Store(StoreRequest::Set(key.to_owned(), value)))
            .await
    }

    /// Whether the central store holds a key.
    pub async fn store_has(&self, key: &str) -> Result<bool, IpcError> {
        self.expect_flag(Request::Store(StoreRequest::Has(key.to_owned())))
            .await
    }

    /// Removes a key; returns whether it was there.
    pub async fn store_delete(&self, key: &str) -> Result<bool, IpcError> {
        self.expect_flag(Request::Store(StoreRequest::Delete(key.to_owned())))
            .await
    }

    /// Removes every key.
    pub async fn store_clear(&self) -> Result<(), IpcError> {
        self.expect_done(Request::Store(StoreRequest::Clear)).await
    }

    // ---- fetches -----------------------------------------------------------------------------

    /// Looks an object up in the clusters' caches: a guild or member in the cluster that owns the
    /// guild's shard, a user or channel in every cluster (the first hit wins). `None` when no
    /// cache holds it; clusters that are down are skipped, but a guild-scoped lookup whose owner
    /// is down fails with [`Refusal::Unavailable`]. Resolves within the default timeout.
    ///
    /// The answer is the object as the owning cluster's library serialises it: Discord's JSON
    /// shape, ids as strings, so they stay exact.
    pub async fn fetch(&self, query: Fetch) -> Result<Option<Payload>, IpcError> {
        match self
            .request(Request::Fetch(query), self.inner.timeout)
            .await?
        {
            Reply::Found(found) => Ok(found),
            Reply::Outcomes(mut outcomes) if outcomes.len() == 1 => {
                let (owner, outcome) = outcomes.remove(0);
                outcome_result(owner, outcome).map(|_| None)
            }
            other => Err(unexpected(other)),
        }
    }

    /// [`fetch`](Self::fetch), decoded from JSON into `T` (a library's model type, or
    /// `serde_json::Value`).
    pub async fn fetch_as<T: DeserializeOwned>(&self, query: Fetch) -> Result<Option<T>, IpcError> {
        let Some(found) = self.fetch(query).await? else {
            return Ok(None);
        };
        serde_json::from_slice(found.as_bytes())
            .map(Some)
            .map_err(|e| IpcError::Payload(PayloadError(format!("fetched JSON: {e}"))))
    }

    /// A user from any cluster's cache.
    pub async fn fetch_user<T: DeserializeOwned>(&self, user: u64) -> Result<Option<T>, IpcError> {
        self.fetch_as(Fetch::User(user)).await
    }

    /// A guild from the cache of the cluster that owns it.
    pub async fn fetch_guild<T: DeserializeOwned>(
        &self,
        guild: u64,
    ) -> Result<Option<T>, IpcError> {
        self.fetch_as(Fetch::Guild(guild)).await
    }

    /// A channel from any cluster's cache.
    pub async fn fetch_channel<T: DeserializeOwned>(
        &self,
        channel: u64,
    ) -> Result<Option<T>, IpcError> {
        self.fetch_as(Fetch::Channel(channel)).await
    }

    /// A guild member from the cache of the cluster that owns the guild.
    pub async fn fetch_member<T: DeserializeOwned>(
        &self,
        guild: u64,
        user: u64,
    ) -> Result<Option<T>, IpcError> {
        self.fetch_as(Fetch::Member { guild, user }).await
    }

    /// Guilds in every cluster's cache: the total, and the clusters that could not say (down or
    /// too slow), whose guilds the total lacks.
    pub async fn guild_count(&self) -> Result<(u64, Vec<Target>), IpcError> {
        let outcomes = match self
            .request(Request::CountGuilds, self.inner.timeout)
            .await?
        {
            Reply::Outcomes(outcomes) => outcomes,
            other => return Err(unexpected(other)),
        };
        let mut total = 0;
        let mut missing = Vec::new();
        for (target, outcome) in outcomes {
            let count = match outcome {
                Outcome::Ok(count) => count.decode::<u64>().ok(),
                _ => None,
            };
            match count {
                Some(count) => total += count,
                None => missing.push(target),
            }
        }
        Ok((total, missing))
    }

    /// Sets what answers cache lookups sent to this cluster (adapters do this).
    pub(crate) fn set_fetch_handler(&self, handler: FetchHandler) {
        *self
            .inner
            .fetcher
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(handler);
    }

    /// Answers a lookup from this process's cache: the JSON, or an empty payload for a miss.
    pub(crate) fn run_fetch(&self, query: Fetch) -> Outcome {
        let handler = self
            .inner
            .fetcher
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let Some(handler) = handler else {
            return Outcome::Ok(Payload::default());
        };
        match crate::panics::catch_sync(|| handler(query)) {
            Ok(found) => Outcome::Ok(found.map(Payload::from).unwrap_or_default()),
            Err(panicked) => {
                let answer = format!("the fetch handler panicked: {}", panicked.message);
                self.report_panic(panicked.report("fetch", None, Some(format!("{query:?}"))));
                Outcome::Error(answer)
            }
        }
    }

    /// Sets what counts the guilds of this cluster (adapters do this).
    pub(crate) fn set_guild_counter(&self, counter: GuildCounter) {
        *self
            .inner
            .guilds
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(counter);
    }

    /// Answers a guild count with the adapter's counter.
    pub(crate) fn count_guilds(&self) -> Outcome {
        let counter = self
            .inner
            .guilds
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let Some(counter) = counter else {
            return Outcome::Error("this cluster counts no guilds".to_owned());
        };
        match crate::panics::catch_sync(|| counter()) {
            Ok(count) => Payload::encode(&count)
                .map_or_else(|error| Outcome::Error(error.to_string()), Outcome::Ok),
            Err(panicked) => {
                let answer = format!("the guild counter panicked: {}", panicked.message);
                self.report_panic(panicked.report("count guilds", None, None));
                Outcome::Error(answer)
            }
        }
    }

    // ---- adapters, through `cluster::ClusterLink` ---------------------------------------------

    /// Waits until the admiral's identify queue lets `shard` identify.
    pub(crate) async fn identify(&self, shard: u32) -> Result<(), IpcError> {
        match self
            .request(Request::Identify { shard }, IDENTIFY_TIMEOUT)
            .await?
        {
            Reply::Done => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Hands the sessions of this cluster's shards (closed resumably after a handover request)
    /// to the admiral, which passes them to the replacement.
    pub(crate) async fn hand_over(&self, sessions: Vec<ShardSession>) -> Result<(), IpcError> {
        match &self.inner.transport {
            Transport::Socket(up) => up.send(&Up::Sessions(sessions)).await,
            Transport::Local(_) => Ok(()),
        }
    }

    /// Restarts a worker and resolves once the replacement serves (or the restart failed, in
    /// which case the old process still serves unless the mode was hard). Waits at most
    /// `timeout`.
    pub async fn restart(
        &self,
        worker: Target,
        mode: RestartMode,
        timeout: Duration,
    ) -> Result<(), IpcError> {
        match self
            .request(Request::Restart { worker, mode }, timeout)
            .await?
        {
            Reply::Done => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Stops one worker gracefully and resolves once its process has exited, within `timeout`;
    /// routing then answers "unavailable" for it until a hard restart starts it again.
    pub async fn stop(&self, worker: Target, timeout: Duration) -> Result<(), IpcError> {
        match self.request(Request::Stop { worker }, timeout).await? {
            Reply::Done => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Reshards the fleet to the total `count` gives (exact, Discord's recommendation, or
    /// guilds per shard; in `clusters` clusters, default as many as now) and resolves when the
    /// new generation is live, within `timeout`.
    pub async fn reshard(
        &self,
        count: ShardCount,
        clusters: Option<u32>,
        timeout: Duration,
    ) -> Result<(), IpcError> {
        match self
            .request(Request::Reshard { count, clusters }, timeout)
            .await?
        {
            Reply::Done => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Restarts every worker of `group`, `at_once` at a time, and resolves once all are done
    /// with one outcome per worker (`Ok` or `Error` with why; a failed soft restart leaves that
    /// worker's old process serving). Waits at most `timeout` in all.
    pub async fn restart_all(
        &self,
        group: Group,
        mode: RestartMode,
        at_once: u32,
        timeout: Duration,
    ) -> Result<BTreeMap<Target, Outcome>, IpcError> {
        let request = Request::RestartAll {
            group,
            mode,
            at_once,
        };
        match self.request(request, timeout).await? {
            Reply::Outcomes(outcomes) => Ok(outcomes.into_iter().collect()),
            other => Err(unexpected(other)),
        }
    }

    /// Reports a lifecycle status to the admiral (ready, start failure, shard progress).
    pub(crate) async fn report(&self, status: Status) -> Result<(), IpcError> {
        match &self.inner.transport {
            Transport::Socket(up) => up.send(&Up::Status(status)).await,
            Transport::Local(_) => Ok(()),
        }
    }

    /// Sends a log record to the admiral, which logs it tagged with this worker.
    pub async fn log(&self, level: LogLevel, message: impl Into<String>) -> Result<(), IpcError> {
        let record = LogRecord {
            level,
            message: message.into(),
        };
        match &self.inner.transport {
            Transport::Socket(up) => up.send(&Up::Log(record)).await,
            Transport::Local(_) => {
                record.emit(&self.inner.me);
                Ok(())
            }
        }
    }

    // ---- plumbing ----------------------------------------------------------------------------

    async fn expect_done(&self, request: Request) -> Result<(), IpcError> {
        match self.request(request, self.inner.timeout).await? {
            Reply::Done => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    async fn expect_flag(&self, request: Request) -> Result<bool, IpcError> {
        match self.request(request, self.inner.timeout).await? {
            Reply::Flag(flag) => Ok(flag),
            other => Err(unexpected(other)),
        }
    }

    /// Sends a request and waits for its reply within `timeout`. Refusals become errors.
    pub(crate) async fn request(
        &self,
        request: Request,
        timeout: Duration,
    ) -> Result<Reply, IpcError> {
        let timeout = timeout.min(super::proto::MAX_TIMEOUT);
        let _permit = self
            .inner
            .in_flight
            .acquire()
            .await
            .map_err(|_| IpcError::Disconnected)?;
        let (tx, rx) = oneshot::channel();
        let id = match &self.inner.transport {
            Transport::Socket(out) => {
                let (id, others) = {
                    let mut pending = self
                        .inner
                        .pending
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner);
                    let mut id = fastrand::u64(1..);
                    while pending.contains_key(&id) {
                        id = fastrand::u64(1..);
                    }
                    pending.insert(id, tx);
                    (id, pending.len() - 1)
                };
                let up = Up::Request {
                    id,
                    timeout_ms: timeout.as_millis() as u64,
                    request,
                };
                // Alone, the request goes out at once; with others in flight, their answers are
                // waking tasks that will ask again, and all of it goes out in one write.
                if let Err(error) = out.send_soon(&up, others > 0).await {
                    self.forget(id);
                    return Err(error);
                }
                Some(id)
            }
            Transport::Local(router) => {
                let local = LocalRequest {
                    request,
                    timeout,
                    reply: tx,
                };
                router
                    .send(local)
                    .await
                    .map_err(|_| IpcError::Disconnected)?;
                None
            }
        };
        let reply = match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(_)) => return Err(IpcError::Disconnected),
            Err(_) => {
                if let Some(id) = id {
                    self.forget(id);
                }
                return Err(IpcError::Timeout(timeout));
            }
        };
        match reply {
            Reply::Refused(refusal) => Err(IpcError::Refused(refusal)),
            reply => Ok(reply),
        }
    }

    fn forget(&self, id: u64) {
        self.inner
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
    }

    /// Hands a reply from the admiral to its waiting request.
    pub(crate) fn resolve(&self, id: u64, reply: Reply) {
        let waiter = self
            .inner
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
        if let Some(waiter) = waiter {
            let _ = waiter.send(reply);
        }
    }

    /// Fails every waiting request at once (the admiral is gone).
    pub(crate) fn disconnect(&self) {
        self.inner
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    /// Sends a frame to the admiral (worker side only).
    pub(crate) async fn send_up(&self, up: Up) -> Result<(), IpcError> {
        match &self.inner.transport {
            Transport::Socket(socket) => socket.send(&up).await,
            Transport::Local(_) => Ok(()),
        }
    }

    /// Holds frames back (`true`) until released (`false`), to write a batch at once (worker
    /// side only).
    pub(crate) fn cork(&self, cork: bool) {
        if let Transport::Socket(up) = &self.inner.transport {
            if cork {
                up.outbox.cork();
            } else {
                up.outbox.uncork();
            }
        }
    }

    /// Waits until everything sent so far is written to the socket (call before exiting, so a
    /// last report is not lost). Gives up after two seconds.
    pub async fn flush(&self) {
        if let Transport::Socket(up) = &self.inner.transport {
            let _ = tokio::time::timeout(Duration::from_secs(2), up.outbox.flushed()).await;
        }
    }
}

/// An incoming command being run; see [`Ipc::command_running`].
pub(crate) struct RunningCommand(Arc<Inner>);

impl Drop for RunningCommand {
    fn drop(&mut self) {
        self.0.running.send_if_modified(|n| {
            *n = n.saturating_sub(1);
            *n == 0
        });
    }
}

fn unexpected(reply: Reply) -> IpcError {
    match reply {
        Reply::Refused(refusal) => IpcError::Refused(refusal),
        other => IpcError::Unexpected(Box::new(other)),
    }
}

fn outcome_result(target: Target, outcome: Outcome) -> Result<Payload, IpcError> {
    match outcome {
        Outcome::Ok(payload) => Ok(payload),
        Outcome::Error(message) => Err(IpcError::Remote { target, message }),
        Outcome::TimedOut => Err(IpcError::TargetTimedOut(target)),
        Outcome::Unavailable => Err(IpcError::Refused(Refusal::Unavailable(target))),
    }
}
