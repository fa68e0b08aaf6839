//! What concerns one worker: its assignment, its status reports, its shards' sessions, its
//! panics, and the store, shard-count and cache-lookup requests it can make.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::Payload;

/// What the admiral assigns a worker in [`Down::Welcome`](super::Down::Welcome).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Assignment {
    /// Run a cluster.
    Cluster(ClusterAssignment),
    /// Run a service.
    Service {
        /// The service's name.
        name: String,
        /// The registered service type it runs (`Fleet::service` registers the type under the
        /// service's own name, `Fleet::service_kind` under a name of its own).
        kind: String,
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
    /// [`Down::Sessions`](super::Down::Sessions) arrives, resuming the sessions it holds.
    pub handover: bool,
    /// This process belongs to a new generation (a reshard): connect and report ready as usual,
    /// but keep events from user code until [`Down::Activate`](super::Down::Activate).
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
    /// The fleet's layout as this cluster starts: every cluster's shards, this process, its
    /// generation.
    #[serde(default)]
    pub topology: Topology,
    /// What the fleet's `cluster_data` function made for this cluster (discord-hybrid-sharding's
    /// `clusterData`); empty when it has none.
    #[serde(default)]
    pub data: super::Payload,
    /// The sessions a crashed process of this cluster left, as its last checkpoints recorded
    /// them: shards named here resume instead of identifying (Discord replays what came after
    /// the recorded sequence). Empty for a first start and for handovers.
    #[serde(default)]
    pub resume: Vec<ShardSession>,
    /// How often to checkpoint the shards' sessions to the admiral
    /// ([`Up::Checkpoint`](super::Up::Checkpoint)), in milliseconds; 0: never.
    #[serde(default)]
    pub checkpoint_ms: u64,
    /// On a bot split across hosts: how long its shards may run from now (the host's lease
    /// licence, [`Down::Licence`](super::Down::Licence)); 0 while the host is fenced. `None`
    /// on one host: no limit.
    #[serde(default)]
    pub licence_ms: Option<u64>,
}

/// The fleet's layout, as a cluster knows it without asking: every cluster of its generation and
/// its shards, this process's number, and the generation (how many reshards came before it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Topology {
    /// Shards in the whole bot.
    pub shard_total: u32,
    /// Every cluster of this generation: `(id, first shard, last shard)`.
    pub clusters: Vec<(u32, u32, u32)>,
    /// This cluster's process number (a replacement gets a new one).
    pub process: u64,
    /// Reshards before this generation: 0 at launch.
    pub generation: u32,
}

impl Topology {
    /// The layout of `clusters` over `shard_total` shards, for `process` of `generation`.
    #[must_use]
    pub fn new(
        shard_total: u32,
        clusters: Vec<(u32, u32, u32)>,
        process: u64,
        generation: u32,
    ) -> Self {
        Self {
            shard_total,
            clusters,
            process,
            generation,
        }
    }

    /// The shard that receives `guild`'s events: `(guild_id >> 22) % shard_total`.
    #[must_use]
    pub fn shard_of_guild(&self, guild: u64) -> u32 {
        ((guild >> 22) % u64::from(self.shard_total.max(1))) as u32
    }

    /// The cluster that runs `shard`, if this fleet runs it.
    #[must_use]
    pub fn cluster_of_shard(&self, shard: u32) -> Option<u32> {
        self.clusters
            .iter()
            .find(|(_, first, last)| (*first..=*last).contains(&shard))
            .map(|(id, _, _)| *id)
    }

    /// The cluster that runs `guild`'s shard, if this fleet runs it.
    #[must_use]
    pub fn cluster_of_guild(&self, guild: u64) -> Option<u32> {
        self.cluster_of_shard(self.shard_of_guild(guild))
    }

    /// Clusters in this generation.
    #[must_use]
    pub fn cluster_count(&self) -> usize {
        self.clusters.len()
    }
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
            .field("topology", &self.topology)
            .field("data", &self.data)
            .field("resume", &self.resume.len())
            .field("checkpoint_ms", &self.checkpoint_ms)
            .field("licence_ms", &self.licence_ms)
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
    /// A handover replacement started its user code and waits for [`Down::Sessions`](super::Down::Sessions).
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

/// One shard's resumable gateway session: handed from an old cluster process to its replacement,
/// or checkpointed to the admiral for the replacement of a process that crashes.
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
    /// What else the library needs to take the session over, opaque to carrier (serenity's: the
    /// session's READY and the shard's cached guilds). Empty for twilight.
    #[serde(default)]
    pub state: super::Payload,
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
            state: super::Payload::empty(),
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
    /// Write `value` (`None`: remove the key) only if the key now holds `expected` (`None`:
    /// absent); answered with whether it did. Atomic: nothing runs between the check and the
    /// write.
    CompareAndSet {
        /// The key.
        key: String,
        /// What it must hold now.
        expected: Option<Payload>,
        /// What it holds after.
        value: Option<Payload>,
    },
    /// Write a key that expires after `ttl_ms` milliseconds (capped at a day).
    SetFor(String, Payload, u64),
    /// The keys that start with this prefix, sorted: `Reply::Outcome` with a `Vec<String>`
    /// payload.
    Keys(String),
    /// Every key that starts with this prefix and its value (eris-fleet's `copyMap` with an
    /// empty prefix): `Reply::Outcome` with a `Vec<(String, Payload)>` payload, refused when it
    /// would not fit one frame.
    Entries(String),
}

/// How the shard total is chosen (at launch, and in [`Request::Reshard`](super::Request::Reshard)).
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

/// A lookup in the clusters' caches ([`Request::Fetch`](super::Request::Fetch), [`Down::Fetch`](super::Down::Fetch)).
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

/// A worker as any process can list it ([`Request::Workers`](super::Request::Workers)).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct WorkerInfo {
    /// Which worker.
    pub worker: super::Target,
    /// Its lifecycle state (`live`, `starting`, `failed: why`, ...).
    pub state: String,
    /// Its current process number.
    pub process: Option<u64>,
    /// Its operating-system process id.
    pub pid: Option<u32>,
    /// A cluster's shards, first and last.
    pub shards: Option<(u32, u32)>,
    /// Time since its current process started, in milliseconds.
    pub uptime_ms: u64,
    /// Processes started for it before the current one.
    pub restarts: u32,
    /// The host that runs it, on a bot split across hosts.
    #[serde(default)]
    pub host: Option<String>,
}
