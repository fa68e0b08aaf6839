//! The [`Ipc`] handle: what workers and the admiral use to talk to the fleet.
//!
//! Every request carries a random correlation id and a timeout, and resolves or fails: an answer,
//! a refusal, a timeout, or [`IpcError::Disconnected`] the moment the admiral is gone. In a worker
//! the handle speaks over the Unix socket; in the admiral it talks to the router directly.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use futures::future::BoxFuture;

use tokio::sync::{Semaphore, mpsc, oneshot};

use super::frame::FrameError;
use super::outbox::{Outbox, Refused};
use super::proto::{
    Fetch, Outcome, Payload, PayloadError, Refusal, Reply, Request, Status, Target, Up,
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
/// The future is polled on the IPC reader until it first waits, then on a task of its own.
pub type CommandHandler =
    Arc<dyn Fn(Target, Payload) -> BoxFuture<'static, Result<Payload, String>> + Send + Sync>;

/// Answers cache lookups in a cluster (adapters set it): the object as JSON with Discord's field
/// names, or `None` for a miss. Runs on the IPC reader, so it must only read memory.
pub type FetchHandler = Arc<dyn Fn(Fetch) -> Option<Vec<u8>> + Send + Sync>;

/// Counts the guilds in a cluster's cache (adapters set it). Runs on the IPC reader, so it must
/// only read memory.
pub type GuildCounter = Arc<dyn Fn() -> u64 + Send + Sync>;

/// Reads a cluster's cache counts for a stats round (adapters set one).
pub type CacheCounter = Arc<dyn Fn() -> crate::stats::CacheCounts + Send + Sync>;

/// Makes a worker's own stats fields, encoded (`None`: it adds none).
pub(crate) type StatsFields = Arc<dyn Fn() -> Result<Option<Payload>, String> + Send + Sync>;

/// A request for the admiral's router from its own process.
#[derive(Debug)]
pub(crate) struct LocalRequest {
    pub request: Request,
    pub timeout: Duration,
    pub reply: oneshot::Sender<Reply>,
}

/// A worker's socket to the admiral: frames are encoded by the sender and written through the
/// connection's [`Outbox`], with no task between. The outbox is swapped for a parked one when the
/// admiral is lost, and that one is given the next admiral's socket.
#[derive(Debug)]
pub(crate) struct Uplink {
    outbox: RwLock<Arc<Outbox>>,
    max_frame: usize,
}

impl Uplink {
    pub(crate) fn new(outbox: Outbox, max_frame: usize) -> Self {
        Self {
            outbox: RwLock::new(Arc::new(outbox)),
            max_frame,
        }
    }

    /// The outbox frames go to now.
    pub(crate) fn outbox(&self) -> Arc<Outbox> {
        self.outbox
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Runs `f` on the outbox frames go to now, without taking a reference to it (the common
    /// path of every send: one uncontended read lock).
    fn with_outbox<T>(&self, f: impl FnOnce(&Outbox) -> T) -> T {
        f(&self.outbox.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Sends into `outbox` from now on; the one before is dropped (its socket closes once what
    /// it held is written).
    pub(crate) fn replace(&self, outbox: Arc<Outbox>) {
        *self.outbox.write().unwrap_or_else(PoisonError::into_inner) = outbox;
    }

    /// Sends one frame, waiting while the outbox is full (back-pressure from a slow admiral).
    pub(super) async fn send(&self, up: &Up) -> Result<(), IpcError> {
        self.send_soon(up, false).await
    }

    /// [`send`](Self::send), deferred to the flusher when `batch` (other tasks are about to
    /// send too).
    pub(super) async fn send_soon(&self, up: &Up, batch: bool) -> Result<(), IpcError> {
        let body = super::frame::encode(up, self.max_frame)?;
        loop {
            let queued = self.with_outbox(|outbox| {
                if batch {
                    outbox.defer(&body)
                } else {
                    outbox.push(&body)
                }
            });
            match queued {
                Ok(()) => return Ok(()),
                Err(Refused::Closed) => return Err(IpcError::Disconnected),
                Err(Refused::Full) => self.outbox().flushed().await,
            }
        }
    }

    /// Sends one frame if it fits now; whether it was queued.
    pub(super) fn try_send(&self, up: &Up) -> bool {
        super::frame::encode(up, self.max_frame)
            .is_ok_and(|body| self.with_outbox(|outbox| outbox.push(&body).is_ok()))
    }
}

#[derive(Debug)]
pub(crate) enum Transport {
    /// Frames to a worker's socket.
    Socket(Uplink),
    /// Requests straight to the admiral's router; logs and status are local.
    Local(mpsc::Sender<LocalRequest>),
}

pub(super) struct Inner {
    pub(super) me: Target,
    pub(super) transport: Transport,
    pub(super) pending: Mutex<crate::ids::IdMap<u64, oneshot::Sender<Reply>>>,
    pub(super) handlers: RwLock<HashMap<String, Vec<(HandlerId, Handler)>>>,
    pub(super) next_handler: AtomicU64,
    pub(super) commands: RwLock<Option<CommandHandler>>,
    pub(super) fetcher: RwLock<Option<FetchHandler>>,
    pub(super) guilds: RwLock<Option<GuildCounter>>,
    /// What a stats round asks of this worker: its library's counts, its shards' figures and
    /// the user's own fields.
    pub(super) cache_counts: RwLock<Option<CacheCounter>>,
    pub(super) shard_board: RwLock<Option<Arc<crate::stats::board::ShardBoard>>>,
    pub(super) stats_fields: RwLock<Option<StatsFields>>,
    /// Incoming commands being run now.
    pub(super) running: tokio::sync::watch::Sender<usize>,
    pub(super) timeout: Duration,
    pub(super) in_flight: Semaphore,
    /// Subscriptions to the admiral's events.
    pub(super) subscriptions: super::subscribe::Subscriptions,
    /// It reported itself ready.
    pub(super) ready: std::sync::atomic::AtomicBool,
    /// How many times it rejoined an admiral after losing one.
    pub(super) rejoins: tokio::sync::watch::Sender<u64>,
    /// Until when this host may run shards ([`Down::Licence`](super::proto::Down::Licence));
    /// `None`: no limit (one host, or none told yet).
    pub(super) licence: Mutex<Option<tokio::time::Instant>>,
}

/// A handle on the fleet's IPC. Cheap to clone.
#[derive(Clone)]
pub struct Ipc {
    pub(super) inner: Arc<Inner>,
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
                cache_counts: RwLock::default(),
                shard_board: RwLock::default(),
                licence: Mutex::new(None),
                stats_fields: RwLock::default(),
                running: tokio::sync::watch::Sender::new(0),
                next_handler: AtomicU64::new(1),
                timeout,
                in_flight: Semaphore::new(MAX_IN_FLIGHT),
                subscriptions: super::subscribe::Subscriptions::default(),
                ready: std::sync::atomic::AtomicBool::new(false),
                rejoins: tokio::sync::watch::Sender::new(0),
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

    /// Sends a request and waits for its reply within `timeout`. Refusals become errors.
    pub(crate) async fn request(
        &self,
        request: Request,
        timeout: Duration,
    ) -> Result<Reply, IpcError> {
        self.request_answered_by(request, timeout, Duration::ZERO)
            .await
    }

    /// A request the admiral answers *at* its `timeout` (a fan-out tells each target that
    /// missed it as timed out): the reply is waited for `grace` longer, so it is not lost to
    /// the time it takes to travel.
    pub(crate) async fn request_answered_by(
        &self,
        request: Request,
        timeout: Duration,
        grace: Duration,
    ) -> Result<Reply, IpcError> {
        let timeout = timeout.min(super::proto::MAX_TIMEOUT);
        // Every wait of the request (a place in flight, room in the outbox, the answer) ends by
        // this deadline.
        let deadline = tokio::time::Instant::now() + timeout + grace;
        let _permit = tokio::time::timeout_at(deadline, self.inner.in_flight.acquire())
            .await
            .map_err(|_| IpcError::Timeout(timeout))?
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
                // A full outbox (an admiral that stopped reading) waits, but not past the
                // request's own deadline.
                let sent = tokio::time::timeout_at(deadline, out.send_soon(&up, others > 0)).await;
                if let Err(error) = sent.unwrap_or(Err(IpcError::Timeout(timeout))) {
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
                tokio::time::timeout_at(deadline, router.send(local))
                    .await
                    .map_err(|_| IpcError::Timeout(timeout))?
                    .map_err(|_| IpcError::Disconnected)?;
                None
            }
        };
        let reply = match tokio::time::timeout_at(deadline, rx).await {
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
        self.fail_pending();
        self.close_events();
    }

    /// Fails every request waiting for an answer (the admiral that was to answer is gone; a
    /// worker that waits for the next one keeps its subscriptions).
    pub(crate) fn fail_pending(&self) {
        self.inner
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    /// Whether this worker reported itself ready.
    pub(crate) fn reported_ready(&self) -> bool {
        self.inner.ready.load(Ordering::Relaxed)
    }

    /// Changes each time this worker rejoins an admiral after losing one: what it reported
    /// (its sessions) must be reported again.
    pub(crate) fn rejoins(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.rejoins.subscribe()
    }

    /// Counts a rejoin (see [`rejoins`](Self::rejoins)).
    pub(crate) fn rejoined(&self) {
        self.inner.rejoins.send_modify(|n| *n += 1);
    }

    /// The admiral events this handle subscribed to.
    pub(crate) async fn topics(&self) -> super::proto::Topics {
        *self.inner.subscriptions.topics.lock().await
    }

    /// The uplink, in a worker.
    pub(crate) fn uplink(&self) -> Option<&Uplink> {
        match &self.inner.transport {
            Transport::Socket(uplink) => Some(uplink),
            Transport::Local(_) => None,
        }
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
            up.with_outbox(|outbox| {
                if cork {
                    outbox.cork();
                } else {
                    outbox.uncork();
                }
            });
        }
    }

    /// Waits until everything sent so far is written to the socket (call before exiting, so a
    /// last report is not lost). Gives up after two seconds.
    pub async fn flush(&self) {
        if let Transport::Socket(up) = &self.inner.transport {
            let outbox = up.outbox();
            let _ = tokio::time::timeout(Duration::from_secs(2), outbox.flushed()).await;
        }
    }
}

/// An incoming command being run; see [`Ipc::command_running`].
pub(crate) struct RunningCommand(pub(super) Arc<Inner>);

impl Drop for RunningCommand {
    fn drop(&mut self) {
        self.0.running.send_if_modified(|n| {
            *n = n.saturating_sub(1);
            *n == 0
        });
    }
}

pub(super) fn unexpected(reply: Reply) -> IpcError {
    match reply {
        Reply::Refused(refusal) => IpcError::Refused(refusal),
        other => IpcError::Unexpected(Box::new(other)),
    }
}

pub(super) fn outcome_result(target: Target, outcome: Outcome) -> Result<Payload, IpcError> {
    match outcome {
        Outcome::Ok(payload) => Ok(payload),
        Outcome::Error(message) => Err(IpcError::Remote { target, message }),
        Outcome::TimedOut => Err(IpcError::TargetTimedOut(target)),
        Outcome::Unavailable => Err(IpcError::Refused(Refusal::Unavailable(target))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipc::proto::StoreRequest;

    #[tokio::test(start_paused = true)]
    async fn a_request_that_cannot_be_sent_times_out_instead_of_waiting_for_room() {
        let (ours, _peer) = tokio::net::UnixStream::pair().unwrap();
        let (_read, write) = ours.into_split();
        let (outbox, flusher) = Outbox::new(write, 16);
        tokio::spawn(flusher);
        // Nothing leaves and the first frame fills it: the second finds no room.
        outbox.cork();
        let transport = Transport::Socket(Uplink::new(outbox, 1 << 20));
        let ipc = Ipc::new(Target::Cluster(0), transport, Duration::from_secs(1));
        let ask = || Request::Store(StoreRequest::Has("key".into()));
        let first = ipc.request(ask(), Duration::from_secs(1));
        let second = ipc.request(ask(), Duration::from_secs(1));
        let both =
            tokio::time::timeout(Duration::from_mins(1), futures::future::join(first, second));
        let (first, second) = both.await.expect("neither request hangs");
        assert!(matches!(first, Err(IpcError::Timeout(_))), "{first:?}");
        assert!(matches!(second, Err(IpcError::Timeout(_))), "{second:?}");
    }
}
