//! The IPC wire protocol: plain data, no I/O.
//!
//! Every frame (see [`frame`](super::frame)) holds one [`Up`] (worker → admiral) or [`Down`]
//! (admiral → worker) message, MessagePack-encoded with named fields; enums are externally tagged
//! (`{"Request": {...}}`), unit variants are strings. A worker in any language can join a fleet:
//!
//! 1. Connect to the Unix socket named by `FLEET_IPC_SOCKET` and send
//!    `Up::Hello { secret: $FLEET_IPC_SECRET, process: $FLEET_PROCESS, protocol, build }`
//!    ([`PROTOCOL_VERSION`], and any name for the worker's build).
//! 2. Receive `Down::Welcome` with the worker's [`Assignment`]; a wrong secret is disconnected,
//!    and a worker of another protocol (or an unknown process) receives `Down::Refused` with why.
//! 3. A cluster sends `Up::Checkpoint` with its shards' sessions as they move (optional: without
//!    it a crashed cluster's replacement identifies again).
//! 4. Send `Up::Status(Ready)` when ready to serve (or `StartFailed`).
//! 5. Send `Up::Request { id, timeout_ms, request }` and match `Down::Reply { id, reply }`; answer
//!    each `Down::Command { id, .. }` with `Up::Reply { id, outcome }` within its `timeout_ms`,
//!    and each `Down::Fetch { id, .. }` (clusters) the same way with the cached object as JSON,
//!    and each `Down::CountGuilds { id }` (clusters) with the number of guilds cached, and each
//!    `Down::Stats { id }` with a `WorkerReport` (an empty one will do);
//!    handle `Down::Message` (broadcasts and direct messages) and `Down::Shutdown`, and, once it
//!    sent `Request::Subscribe`, `Down::Event`.
//!
//! A worker that lost its admiral (`FLEET_ADMIRAL_GRACE_MS` above zero) reconnects to the same
//! socket with `Up::Challenge { nonce }`, checks the `Down::Proof` (HMAC-SHA256 of
//! [`PROOF_CONTEXT`] and the nonce under the secret), then sends `Up::Rejoin` and waits for
//! `Down::Adopted` (or `Down::Refused`).
//!
//! User payloads are opaque bytes ([`Payload`]); the admiral forwards them without decoding.
//!
//! A `timeout_ms` above [`MAX_TIMEOUT`] (one day) is treated as [`MAX_TIMEOUT`].

use std::time::Duration;

use serde::{Deserialize, Serialize};

mod deploy;
mod events;
mod values;
mod worker;

pub use deploy::{DeployPlan, DeployReport};
pub use events::{AdmiralEvent, Topic, Topics};
pub use values::{Group, LogLevel, LogRecord, Outcome, Payload, PayloadError, Target};
pub use worker::{
    Assignment, ClusterAssignment, Fetch, PanicReport, RestartMode, ShardCount, ShardEvent,
    ShardSession, Status, StoreRequest, Topology, WorkerInfo,
};

/// The longest timeout a request may ask for; longer ones are cut to it. A timeout is input
/// from another process, and no input may make the admiral's timers overflow.
pub const MAX_TIMEOUT: Duration = Duration::from_hours(24);

/// The IPC protocol this build speaks, sent in every worker's [`Up::Hello`]. Frames are named
/// maps, so adding a field with a default keeps older peers working; what older peers cannot
/// read (a changed meaning, a required field) bumps this, and an admiral refuses a worker of
/// another protocol with [`Down::Refused`] naming both, so a deploy of an incompatible build fails
/// its first replacement and the old processes go on serving. Version 0 is any build from before
/// the version was sent.
pub const PROTOCOL_VERSION: u32 = 1;

/// A request's timeout as the admiral applies it: `timeout_ms`, at most [`MAX_TIMEOUT`].
#[must_use]
pub fn clamp_timeout(timeout_ms: u64) -> Duration {
    Duration::from_millis(timeout_ms).min(MAX_TIMEOUT)
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
    /// Run the command handler of the cluster that runs shard `shard` (in the current plan);
    /// answered with `Reply::Outcomes` holding that cluster's one outcome.
    CommandShard {
        /// Shard id.
        shard: u32,
        /// Payload.
        payload: Payload,
    },
    /// Run the command handler of the cluster that runs guild `guild`'s shard
    /// (`(guild_id >> 22) % shard_total`).
    CommandGuild {
        /// Guild id.
        guild: u64,
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
    /// Kill one worker's process now (no shutdown hook, no grace); answered with `Done` once it
    /// has exited. A hard [`Request::Restart`] starts it again.
    StopNow {
        /// The worker.
        worker: Target,
    },
    /// Shut the whole fleet down gracefully (eris-fleet's `totalShutdown`); answered with
    /// `Done` as the shutdown begins.
    Shutdown,
    /// Every worker with its state, shards and uptime: `Reply::Outcome` with a payload of
    /// [`WorkerInfo`]s.
    Workers,
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
    /// A stats snapshot of the whole fleet ([`crate::stats::FleetStats`] payload, in
    /// `Reply::Outcome`). Workers are given `deadline_ms` (capped below the request's own
    /// timeout) to report; those that miss it are listed as missing.
    Stats {
        /// How long workers have to report.
        deadline_ms: u64,
    },
    /// Start a new service named `name`, running the service type registered as `kind`
    /// (eris-fleet's `createService`). It starts once the services in `depends_on` are live, has
    /// `start_timeout_ms` (default: the fleet's service timeout) to become ready, and from then
    /// on is routed to, supervised, restarted and shut down like a service declared at launch.
    /// Answered with `Done` once it is ready, or refused: a name in use (a stopped or failed
    /// service's may be taken again), an unknown kind or dependency, or the start failing.
    CreateService {
        /// Its name: 1 to 64 ASCII letters, digits, `-`, `_` or `.`.
        name: String,
        /// The registered service type.
        kind: String,
        /// Services that must be live before it starts.
        depends_on: Vec<String>,
        /// How long it has to become ready.
        start_timeout_ms: Option<u64>,
    },
    /// Roll every worker onto a new build (see [`DeployPlan`]); answered with
    /// `Reply::Outcome(Ok)` holding the [`DeployReport`] once it is over (moved, or rolled back
    /// with why), or at once for a dry run; refused when another deploy, a restart or a reshard
    /// is under way, the program is not an executable file, or the plan needs more of the
    /// session budget than it allows.
    Deploy(Box<DeployPlan>),
    /// Hear the admiral's events of these topics as [`Down::Event`] from now on, in place of
    /// whatever this connection subscribed to before (none: unsubscribe). Answered with `Done`;
    /// a subscriber that arrives after the launch finished hears [`AdmiralEvent::AllReady`] at
    /// once. An event that finds the subscriber's queue full is dropped for it.
    Subscribe {
        /// The topics.
        topics: Vec<Topic>,
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
    /// A service could not be created, or did not start.
    #[error("service not created: {0}")]
    CreateFailed(String),
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
        /// The IPC protocol the worker speaks ([`PROTOCOL_VERSION`]; 0 from builds before it was
        /// sent).
        #[serde(default)]
        protocol: u32,
        /// The worker's build, as its binary names it (`FleetOptions::build`, by default the
        /// fleet crate's version), for the admiral's records and deploys.
        #[serde(default)]
        build: String,
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
    /// Where the sessions of some of a cluster's shards stand now (those that changed since the
    /// last checkpoint): the session and the last sequence the worker handled. If the process
    /// crashes, its replacement resumes from the last of these. `state` is sent once per session
    /// and kept by the admiral until the session changes.
    Checkpoint(Vec<ShardSession>),
    /// The answer to a [`Down::Ping`].
    Pong {
        /// The ping's number.
        seq: u64,
    },
    /// First frame of a worker that lost its admiral and found one on the same socket: before it
    /// says anything that proves it, the admiral must prove it knows the fleet's secret
    /// ([`Down::Proof`]). `nonce` is 32 random bytes.
    Challenge {
        /// Random bytes for the admiral to sign.
        nonce: Vec<u8>,
    },
    /// Second frame of a returning worker, once the admiral's proof checked out: who it is and
    /// what it runs, for the admiral to adopt it ([`Down::Adopted`]) or refuse it. After it, a
    /// cluster sends its every session again ([`Up::Checkpoint`]).
    Rejoin(Box<Rejoin>),
}

/// What a worker that outlived its admiral tells the next one ([`Up::Rejoin`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejoin {
    /// The per-fleet secret.
    pub secret: crate::Secret,
    /// Its process number, as the lost admiral gave it.
    pub process: u64,
    /// The IPC protocol it speaks.
    pub protocol: u32,
    /// Its build.
    pub build: String,
    /// Its operating-system process id, for the admiral to watch and signal.
    pub pid: u32,
    /// The worker it serves.
    pub target: Target,
    /// A cluster's shards: first, last and the fleet's total.
    pub shards: Option<(u32, u32, u32)>,
    /// Whether it had reported itself ready.
    pub ready: bool,
    /// Its key to the REST proxy, which the new admiral's proxy accepts again.
    pub rest_key: Option<crate::Secret>,
    /// The admiral events it had subscribed to.
    pub topics: Vec<Topic>,
}

/// The domain an admiral's proof ([`Down::Proof`]) is made in, so it can be taken for nothing
/// else.
pub const PROOF_CONTEXT: &[u8] = b"fleet admiral proof v1";

/// The proof that answers `nonce`: HMAC-SHA256 under the secret of [`PROOF_CONTEXT`] and the
/// nonce.
#[must_use]
pub fn admiral_proof(secret: &crate::Secret, nonce: &[u8]) -> Vec<u8> {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.expose().as_bytes());
    let mut context = ring::hmac::Context::with_key(&key);
    context.update(PROOF_CONTEXT);
    context.update(nonce);
    context.sign().as_ref().to_vec()
}

/// Whether `proof` answers `nonce` under `secret` (compared in constant time).
#[must_use]
pub fn check_admiral_proof(secret: &crate::Secret, nonce: &[u8], proof: &[u8]) -> bool {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.expose().as_bytes());
    let mut message = PROOF_CONTEXT.to_vec();
    message.extend_from_slice(nonce);
    ring::hmac::verify(&key, &message, proof).is_ok()
}

/// Admiral → worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    /// Report what only this worker knows for a stats round; answer with [`Up::Reply`]:
    /// `Outcome::Ok` with a [`crate::stats::WorkerReport`] payload.
    Stats {
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
    /// An old generation's cluster, once the new one has been live a moment: hand no more
    /// events to user code (the shards keep their sessions until the process is stopped).
    Deactivate,
    /// A reshard's switch: an event that creates something with a snowflake id (a message, an
    /// interaction, a channel, a role) reaches the old generation's user code if it was created
    /// before `at_ms` (milliseconds since the Unix epoch), and the new generation's if at or
    /// after it, so each is handled exactly once. Sent to both generations before `Activate`.
    Cut {
        /// The switch time.
        at_ms: u64,
        /// Whether this cluster belongs to the old generation.
        old: bool,
    },
    /// Application heartbeat: answer with [`Up::Pong`] from a task of the worker's runtime, so a
    /// worker whose runtime is stuck stops answering. A worker that answers no ping for longer
    /// than the fleet's heartbeat timeout is treated as crashed.
    Ping {
        /// A number to echo.
        seq: u64,
    },
    /// On several hosts: this host may run its shards for `valid_ms` from now, unless told
    /// again. A cluster whose licence ran out (its admiral could not renew the host's lease, or
    /// was frozen with it) reconnects no shard on its own until it is renewed.
    Licence {
        /// How long the licence holds, from its receipt.
        valid_ms: u64,
    },
    /// Shut down gracefully within `grace_ms`, then exit.
    Shutdown {
        /// Grace period.
        grace_ms: u64,
    },
    /// An admiral event of a topic this worker subscribed to ([`Request::Subscribe`]).
    Event(AdmiralEvent),
    /// The answer to a hello the admiral refuses from a worker that proved it belongs to the
    /// fleet (another protocol version, say); the connection closes after it.
    Refused {
        /// Why, in words for the worker's error.
        reason: String,
    },
    /// The answer to an [`Up::Challenge`]: [`admiral_proof`] of its nonce.
    Proof {
        /// HMAC-SHA256 of the nonce under the fleet's secret.
        mac: Vec<u8>,
    },
    /// The answer to an [`Up::Rejoin`]: this admiral serves the worker from now on.
    Adopted,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_admirals_proof_checks_only_under_its_secret_and_nonce() {
        let secret = crate::Secret::new("s3cret");
        let nonce = [7u8; 32];
        let proof = admiral_proof(&secret, &nonce);
        assert!(check_admiral_proof(&secret, &nonce, &proof));
        assert!(!check_admiral_proof(
            &crate::Secret::new("other"),
            &nonce,
            &proof
        ));
        assert!(!check_admiral_proof(&secret, &[8u8; 32], &proof));
        assert!(!check_admiral_proof(&secret, &nonce, &proof[..31]));
        assert!(!check_admiral_proof(&secret, &nonce, &[]));
    }

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
    fn a_topology_maps_guilds_to_shards_and_clusters() {
        let topology = Topology::new(4, vec![(0, 0, 1), (1, 2, 3)], 7, 2);
        // (81384788765712384 >> 22) % 4 = 2.
        assert_eq!(topology.shard_of_guild(81_384_788_765_712_384), 2);
        assert_eq!(topology.cluster_of_guild(81_384_788_765_712_384), Some(1));
        assert_eq!(topology.cluster_of_shard(1), Some(0));
        assert_eq!(topology.cluster_of_shard(4), None);
        assert_eq!(topology.cluster_count(), 2);
    }

    #[test]
    fn assignments_never_print_the_token() {
        let assignment = ClusterAssignment {
            resume: vec![ShardSession::new(0, "s".into(), None)],
            checkpoint_ms: 1000,
            licence_ms: None,
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
            topology: Topology::default(),
            data: Payload::empty(),
        };
        let printed = format!("{assignment:?}");
        assert!(!printed.contains("secret-token"));
        assert!(!printed.contains("secret-key"));
    }
}
