//! The IPC wire protocol: plain data, no I/O.
//!
//! Every frame (see [`frame`](super::frame)) holds one [`Up`] (worker → admiral) or [`Down`]
//! (admiral → worker) message, MessagePack-encoded with named fields; enums are externally tagged
//! (`{"Request": {...}}`), unit variants are strings. A worker in any language can join a fleet:
//!
//! 1. Connect to the Unix socket named by `FLEET_IPC_SOCKET` and send
//!    `Up::Hello { secret: $FLEET_IPC_SECRET, process: $FLEET_PROCESS }`.
//! 2. Receive `Down::Welcome` with the worker's [`Assignment`]; a wrong secret or unknown process
//!    is disconnected.
//! 3. Send `Up::Status(Ready)` when ready to serve (or `StartFailed`).
//! 4. Send `Up::Request { id, timeout_ms, request }` and match `Down::Reply { id, reply }`; answer
//!    each `Down::Command { id, .. }` with `Up::Reply { id, outcome }` within its `timeout_ms`,
//!    and each `Down::Fetch { id, .. }` (clusters) the same way with the cached object as JSON,
//!    and each `Down::CountGuilds { id }` (clusters) with the number of guilds cached;
//!    handle `Down::Message` (broadcasts and direct messages) and `Down::Shutdown`.
//!
//! User payloads are opaque bytes ([`Payload`]); the admiral forwards them without decoding.
//!
//! A `timeout_ms` above [`MAX_TIMEOUT`] (one day) is treated as [`MAX_TIMEOUT`].

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The longest timeout a request may ask for; longer ones are cut to it. A timeout is input
/// from another process, and no input may make the admiral's timers overflow.
pub const MAX_TIMEOUT: Duration = Duration::from_hours(24);

/// A request's timeout as the admiral applies it: `timeout_ms`, at most [`MAX_TIMEOUT`].
#[must_use]
pub fn clamp_timeout(timeout_ms: u64) -> Duration {
    Duration::from_millis(timeout_ms).min(MAX_TIMEOUT)
}

/// Opaque user bytes carried by commands, replies and messages. [`Payload::encode`] and
/// [`Payload::decode`] use `MessagePack` with named fields; any other encoding works as well.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payload(pub Bytes);

impl Payload {
    /// An empty payload.
    #[must_use]
    pub const fn empty() -> Self {
        Self(Bytes::new())
    }

    /// Encodes a value with `MessagePack` (named fields).
    pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Self, PayloadError> {
        Ok(Self(Bytes::from(
            rmp_serde::to_vec_named(value).map_err(|e| PayloadError(e.to_string()))?,
        )))
    }

    /// Decodes a value encoded with [`Payload::encode`].
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, PayloadError> {
        rmp_serde::from_slice(&self.0).map_err(|e| PayloadError(e.to_string()))
    }

    /// The raw bytes.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl From<Vec<u8>> for Payload {
    fn from(bytes: Vec<u8>) -> Self {
        Self(Bytes::from(bytes))
    }
}

impl From<&'static str> for Payload {
    fn from(text: &'static str) -> Self {
        Self(Bytes::from_static(text.as_bytes()))
    }
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Payload({} bytes)", self.0.len())
    }
}

/// A payload could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("payload codec: {0}")]
pub struct PayloadError(pub String);

/// Who sends or receives: the admiral, a cluster by id, or a service by name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Target {
    /// The admiral process.
    Admiral,
    /// A cluster.
    Cluster(u32),
    /// A service.
    Service(String),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Admiral => f.write_str("admiral"),
            Self::Cluster(id) => write!(f, "cluster {id}"),
            Self::Service(name) => write!(f, "service {name:?}"),
        }
    }
}

/// Which workers a fan-out reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Group {
    /// Every cluster.
    Clusters,
    /// Every service.
    Services,
}

/// The result of a command on one target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Outcome {
    /// The handler answered.
    Ok(Payload),
    /// The handler failed with this message.
    Error(String),
    /// No answer within the timeout.
    TimedOut,
    /// The target is not running (dead, failed, not started, or shutting down).
    Unavailable,
}

/// A worker's log record sent with [`Up::Log`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRecord {
    /// Severity.
    pub level: LogLevel,
    /// The message.
    pub message: String,
}

impl LogRecord {
    /// Logs the record through `tracing` (target `fleet::worker`), tagged with who sent it.
    pub(crate) fn emit(&self, worker: &Target) {
        let (worker, message) = (worker.to_string(), &self.message);
        match self.level {
            LogLevel::Debug => tracing::debug!(target: "fleet::worker", %worker, "{message}"),
            LogLevel::Info => tracing::info!(target: "fleet::worker", %worker, "{message}"),
            LogLevel::Warn => tracing::warn!(target: "fleet::worker", %worker, "{message}"),
            LogLevel::Error => tracing::error!(target: "fleet::worker", %worker, "{message}"),
        }
    }
}

/// Log severity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum LogLevel {
    /// Debug.
    Debug,
    /// Info.
    Info,
    /// Warning.
    Warn,
    /// Error.
    Error,
}

/// What the admiral assigns a worker in [`Down::Welcome`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Assignment {
    /// Run a cluster.
    Cluster(ClusterAssignment),
    /// Run a service.
    Service {
        /// The service's name.
        name: String,
    },
}

/// Everything a cluster needs to start its shards.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterAssignment {
    /// Cluster id.
    pub id: u32,
    /// First shard id (inclusive).
    pub first_shard: u32,
    /// Last shard id (inclusive).
    pub last_shard: u32,
    /// Shards in the whole bot.
    pub shard_total: u32,
    /// Identify buckets.
    pub max_concurrency: u32,
    /// The bot token (sent over IPC, never on a command line).
    pub token: String,
    /// Gateway URL (`wss://gateway.discord.gg` or a mock's `ws://127.0.0.1:PORT`).
    pub gateway_url: String,
    /// This process replaces a running one that will hand its gateway sessions over: start the
    /// user's code, report [`Status::Prepared`], and connect the shards only when
    /// [`Down::Sessions`] arrives, resuming the sessions it holds.
    pub handover: bool,
    /// This process belongs to a new generation (a reshard): connect and report ready as usual,
    /// but keep events from user code until [`Down::Activate`].
    pub standby: bool,
    /// REST base (`https://discord.com`, the admiral's REST proxy or a mock's
    /// `http://127.0.0.1:PORT`), without `/api/v10`.
    pub rest_url: String,
    /// `rest_url` is the admiral's REST proxy: it keeps the rate limits and adds the token, so
    /// the cluster's own HTTP client must not limit itself.
    pub rest_proxied: bool,
    /// The key this process sends to the REST proxy as `x-fleet-proxy-key`
    /// ([`rest::KEY_HEADER`](crate::rest::KEY_HEADER)); the proxy refuses requests without it.
    /// `None` when the proxy is off.
    #[serde(default)]
    pub rest_key: Option<crate::Secret>,
}

impl fmt::Debug for ClusterAssignment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterAssignment")
            .field("id", &self.id)
            .field("shards", &(self.first_shard..=self.last_shard))
            .field("shard_total", &self.shard_total)
            .field("max_concurrency", &self.max_concurrency)
            .field("token", &"<redacted>")
            .field("gateway_url", &self.gateway_url)
            .field("rest_url", &self.rest_url)
            .field("rest_proxied", &self.rest_proxied)
            .field("rest_key", &self.rest_key)
            .field("handover", &self.handover)
            .field("standby", &self.standby)
            .finish()
    }
}

/// What a shard went through, reported with [`Status::Shard`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ShardEvent {
    /// Connecting to the gateway.
    Connecting,
    /// READY received.
    Ready,
    /// RESUMED received.
    Resumed,
    /// The connection closed (with the close code, if any).
    Disconnected(Option<u16>),
}

/// Lifecycle reports from a worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Status {
    /// The worker is ready: a service started, or every shard of a cluster is READY.
    Ready,
    /// The worker could not start.
    StartFailed(String),
    /// A handover replacement started its user code and waits for [`Down::Sessions`].
    Prepared,
    /// A shard's progress.
    Shard {
        /// Shard id.
        shard: u32,
        /// What happened.
        event: ShardEvent,
    },
    /// User code panicked (see [`crate::panics`]).
    Panic(PanicReport),
}

/// How a requested restart replaces a worker's process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RestartMode {
    /// The replacement resumes the old process's gateway sessions: no identify spent, no event
    /// lost. Services (no sessions) restart as with [`Overlap`](Self::Overlap).
    Handover,
    /// The replacement connects fresh sessions and takes over once ready.
    Overlap,
    /// Kill the old process first, then start afresh.
    Hard,
}

/// One shard's resumable gateway session, handed from an old cluster process to its replacement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardSession {
    /// Shard id.
    pub shard: u32,
    /// Discord's session id.
    pub session_id: String,
    /// The last sequence number the old process handled.
    pub sequence: u64,
    /// Where to resume, if Discord named a URL.
    pub resume_url: Option<String>,
}

impl ShardSession {
    /// A session just opened (READY): nothing handled yet.
    #[must_use]
    pub fn new(shard: u32, session_id: String, resume_url: Option<String>) -> Self {
        Self {
            shard,
            session_id,
            sequence: 0,
            resume_url,
        }
    }
}

/// What a worker reports about a panic in user code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PanicReport {
    /// Where in the worker it happened: `handle_event`, `command`, `fetch`, `message handler`,
    /// `activate`, `shutdown`, or `task` for one nobody caught.
    pub context: String,
    /// The shard whose event was being handled, if any.
    pub shard: Option<u32>,
    /// The kind of that event (`MessageCreate`, ...), or the message's event name.
    pub event: Option<String>,
    /// The panic's message.
    pub message: String,
    /// `file:line:column` of the panic, when the worker's hook saw it.
    pub location: Option<String>,
    /// Whether the panic was caught and the work went on (`false`: it ended the task it ran
    /// in).
    pub caught: bool,
    /// Reports dropped before this one because the queue was full.
    pub dropped_before: u64,
}

impl std::fmt::Display for PanicReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "panic in {}", self.context)?;
        if let Some(shard) = self.shard {
            write!(f, " (shard {shard}")?;
            if let Some(event) = &self.event {
                write!(f, ", {event}")?;
            }
            write!(f, ")")?;
        } else if let Some(event) = &self.event {
            write!(f, " ({event})")?;
        }
        write!(f, ": {}", self.message)?;
        if let Some(location) = &self.location {
            write!(f, " at {location}")?;
        }
        Ok(())
    }
}

/// Store operations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StoreRequest {
    /// Read a key.
    Get(String),
    /// Write a key.
    Set(String, Payload),
    /// Whether a key exists.
    Has(String),
    /// Remove a key.
    Delete(String),
    /// Remove every key.
    Clear,
}

/// How the shard total is chosen (at launch, and in [`Request::Reshard`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum ShardCount {
    /// Discord's recommendation from `/gateway/bot`.
    #[default]
    Auto,
    /// Exactly this many.
    Exact(u32),
    /// Enough shards for this many guilds each, from the recommendation (which assumes 1000).
    GuildsPerShard(u32),
}

/// A lookup in the clusters' caches ([`Request::Fetch`], [`Down::Fetch`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Fetch {
    /// A user by id.
    User(u64),
    /// A guild by id.
    Guild(u64),
    /// A channel by id.
    Channel(u64),
    /// A guild's member.
    Member {
        /// Guild id.
        guild: u64,
        /// User id.
        user: u64,
    },
}

impl Fetch {
    /// The guild whose shard holds the answer, if the lookup names one.
    #[must_use]
    pub const fn guild(&self) -> Option<u64> {
        match *self {
            Self::Guild(guild) | Self::Member { guild, .. } => Some(guild),
            Self::User(_) | Self::Channel(_) => None,
        }
    }
}

/// Requests a worker (or the admiral's own handle) makes of the admiral.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Request {
    /// Deliver `event` to every worker and the admiral (the sender included).
    Broadcast {
        /// Event name.
        event: String,
        /// Payload.
        payload: Payload,
    },
    /// Deliver `event` to one target.
    SendTo {
        /// Receiver.
        target: Target,
        /// Event name.
        event: String,
        /// Payload.
        payload: Payload,
    },
    /// Run a target's command handler and return its answer.
    Command {
        /// Receiver.
        target: Target,
        /// Payload.
        payload: Payload,
    },
    /// Run the command handler of every worker of a group; one outcome per target.
    CommandAll {
        /// Receivers.
        group: Group,
        /// Payload.
        payload: Payload,
    },
    /// A central store operation.
    Store(StoreRequest),
    /// Wait for permission to identify shard `shard`.
    Identify {
        /// Shard id.
        shard: u32,
    },
    /// Look something up in the clusters' caches: a guild or member in the cluster that owns the
    /// guild's shard (`(guild_id >> 22) % shard_total`), a user or channel in every cluster,
    /// the first hit winning. Answered with [`Reply::Found`].
    Fetch(Fetch),
    /// Restart a worker (answered with `Done` once the replacement serves, or refused with why
    /// it failed).
    Restart {
        /// The worker.
        worker: Target,
        /// How.
        mode: RestartMode,
    },
    /// Reshard: start a new generation of clusters for the total `count` gives (in `clusters` clusters,
    /// default as many as now) in standby beside the old one; once all of it is ready it goes
    /// live and the old generation drains. Answered with `Done` then, or refused with why.
    Reshard {
        /// The new shard total: exact, Discord's recommendation, or guilds per shard.
        count: ShardCount,
        /// Clusters of the new generation.
        clusters: Option<u32>,
    },
    /// Stop one worker gracefully (its shutdown hook runs, then it is killed after the kill
    /// timeout if still there); answered with `Done` once its process has exited. A hard
    /// [`Request::Restart`] starts it again.
    Stop {
        /// The worker.
        worker: Target,
    },
    /// Count the guilds in every cluster's cache: one outcome per cluster, `Ok` with the count
    /// as a JSON number.
    CountGuilds,
    /// Restart every worker of a group, `at_once` at a time (a rolling restart, so memory
    /// never holds more than `at_once` extra processes). Answered with one outcome per worker
    /// once all are done: `Ok` (empty) or `Error` with why it failed.
    RestartAll {
        /// Which workers.
        group: Group,
        /// How.
        mode: RestartMode,
        /// How many restart at the same time (at least 1).
        at_once: u32,
    },
}

/// Answers to a [`Request`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Reply {
    /// Accepted (broadcast, send, identify granted, store write done).
    Done,
    /// The outcome of a single command.
    Outcome(Outcome),
    /// One outcome per target of a fan-out.
    Outcomes(Vec<(Target, Outcome)>),
    /// A store value (`None`: absent).
    Value(Option<Payload>),
    /// A store answer (has / delete).
    Flag(bool),
    /// A fetch's answer: the object as JSON (Discord's field names, ids as strings), or `None`
    /// when no cache holds it.
    Found(Option<Payload>),
    /// The request was refused.
    Refused(Refusal),
}

/// Why the admiral refused a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// No such target exists in the fleet.
    #[error("no {0} in this fleet")]
    UnknownTarget(Target),
    /// The target exists but is not running.
    #[error("{0} is unavailable")]
    Unavailable(Target),
    /// The target's queue is full.
    #[error("{0} is overloaded")]
    Overloaded(Target),
    /// The request is not valid here.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// A reshard was refused or failed (the old generation still serves).
    #[error("reshard failed: {0}")]
    ReshardFailed(String),
    /// A restart was refused or failed (the old process still serves, unless it was hard).
    #[error("restart failed: {0}")]
    RestartFailed(String),
}

/// Worker → admiral.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Up {
    /// First frame: proves the worker belongs to this fleet.
    Hello {
        /// The per-fleet secret.
        secret: crate::Secret,
        /// The process number the admiral gave this worker.
        process: u64,
    },
    /// A request; answered by [`Down::Reply`] with the same id.
    Request {
        /// Correlation id (random).
        id: u64,
        /// The requester gives up after this long.
        timeout_ms: u64,
        /// The request.
        request: Request,
    },
    /// The answer to a [`Down::Command`].
    Reply {
        /// The command's id.
        id: u64,
        /// Its outcome.
        outcome: Outcome,
    },
    /// A lifecycle report.
    Status(Status),
    /// A log record for the admiral.
    Log(LogRecord),
    /// The sessions of a cluster's shards, closed resumably after [`Down::HandOver`].
    Sessions(Vec<ShardSession>),
    /// The answer to a [`Down::Ping`].
    Pong {
        /// The ping's number.
        seq: u64,
    },
}

/// Admiral → worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Down {
    /// The handshake succeeded; here is the worker's assignment.
    Welcome(Assignment),
    /// The answer to an [`Up::Request`].
    Reply {
        /// The request's id.
        id: u64,
        /// Its answer.
        reply: Reply,
    },
    /// Run the command handler; answer with [`Up::Reply`].
    Command {
        /// Correlation id.
        id: u64,
        /// Who asked.
        from: Target,
        /// Payload.
        payload: Payload,
        /// The asker gives up after this long.
        timeout_ms: u64,
    },
    /// A broadcast or direct message.
    Message {
        /// Who sent it.
        from: Target,
        /// Event name.
        event: String,
        /// Payload.
        payload: Payload,
    },
    /// Look `query` up in this cluster's cache; answer with [`Up::Reply`]: `Outcome::Ok` with
    /// the object as JSON, or with an empty payload for a miss.
    Fetch {
        /// Correlation id.
        id: u64,
        /// What to look up.
        query: Fetch,
    },
    /// Count the guilds this cluster's cache holds; answer with [`Up::Reply`]: `Outcome::Ok`
    /// with the count (a `u64` payload). Asked of every cluster by [`Request::CountGuilds`].
    CountGuilds {
        /// Correlation id.
        id: u64,
    },
    /// Close every shard with a resumable close and send their sessions with [`Up::Sessions`];
    /// then wait: for [`Down::Shutdown`] once the replacement serves, or for the sessions back
    /// ([`Down::Sessions`]) if it failed.
    HandOver,
    /// Connect the shards, resuming these sessions (shards not listed identify).
    Sessions(Vec<ShardSession>),
    /// A standby cluster (a new generation) goes live: hand events to user code from now on.
    Activate,
    /// Application heartbeat: answer with [`Up::Pong`] from a task of the worker's runtime, so a
    /// worker whose runtime is stuck stops answering. A worker that answers no ping for longer
    /// than the fleet's heartbeat timeout is treated as crashed.
    Ping {
        /// A number to echo.
        seq: u64,
    },
    /// Shut down gracefully within `grace_ms`, then exit.
    Shutdown {
        /// Grace period.
        grace_ms: u64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip_typed_values_and_keep_u64_exact() {
        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        struct Echo {
            id: u64,
            text: String,
        }
        let value = Echo {
            id: u64::MAX - 1,
            text: "x".into(),
        };
        let payload = Payload::encode(&value).unwrap();
        assert_eq!(payload.decode::<Echo>().unwrap(), value);
        assert!(payload.decode::<Vec<String>>().is_err());
    }

    #[test]
    fn messages_round_trip_through_frames() {
        let up = Up::Request {
            id: 7,
            timeout_ms: 100,
            request: Request::CommandAll {
                group: Group::Clusters,
                payload: Payload::from("hi"),
            },
        };
        let body = super::super::frame::encode(&up, 1024).unwrap();
        assert_eq!(super::super::frame::decode::<Up>(&body).unwrap(), up);
        let down = Down::Reply {
            id: 7,
            reply: Reply::Outcomes(vec![
                (Target::Cluster(1), Outcome::TimedOut),
                (Target::Service("a".into()), Outcome::Unavailable),
            ]),
        };
        let body = super::super::frame::encode(&down, 1024).unwrap();
        assert_eq!(super::super::frame::decode::<Down>(&body).unwrap(), down);
    }

    #[test]
    fn assignments_never_print_the_token() {
        let assignment = ClusterAssignment {
            id: 0,
            first_shard: 0,
            last_shard: 1,
            shard_total: 2,
            max_concurrency: 1,
            token: "secret-token".into(),
            gateway_url: String::new(),
            rest_url: String::new(),
            rest_proxied: false,
            rest_key: Some(crate::Secret::new("secret-key")),
            handover: false,
            standby: false,
        };
        let printed = format!("{assignment:?}");
        assert!(!printed.contains("secret-token"));
        assert!(!printed.contains("secret-key"));
    }
}
