//! What reaches the router: from admission (connections and their frames), from process
//! watchers (spawns and exits), from tasks the router started (identify grants, the admiral's own
//! command answers, Discord's recommendation) and from the admiral's handle.

use tokio::sync::oneshot;

use crate::admiral::WorkerStatus;
use crate::admiral::lifecycle::ProcessId;
use crate::ipc::outbox::Outbox;
use crate::ipc::proto::{Outcome, Reply, ShardCount, Up};

/// A connection's number, given by admission.
pub(crate) type ConnId = u64;

/// Bytes queued for one connection (beyond one frame) before the admiral answers "overloaded".
pub const CONNECTION_BUFFER: usize = 16 << 20;

/// Who waits for a reply.
#[derive(Debug)]
pub(crate) enum Waiter {
    /// Request `id` of a worker's connection.
    Conn(ConnId, u64),
    /// The admiral's own handle.
    Local(oneshot::Sender<Reply>),
    /// Ask `id` of another host's admiral, over the bus; `whole`: it wants the reply itself
    /// (a relayed request), not an outcome.
    Remote { host: String, id: u64, whole: bool },
    /// One host's part of reply `id`, made of every host's (covering these targets, should the
    /// part fail).
    Merge {
        id: u64,
        covers: Vec<crate::ipc::proto::Target>,
    },
}

/// Everything that reaches the router's task.
#[derive(Debug)]
pub(crate) enum Inbox {
    /// What this host's agent decided, on several hosts.
    Host(crate::hosts::agent::HostEvent),
    /// A connection was accepted; `outbox` writes to its socket.
    Connected { conn: ConnId, outbox: Outbox },
    /// A connection's first frame.
    Hello {
        conn: ConnId,
        secret: crate::Secret,
        process: ProcessId,
        /// The IPC protocol it speaks.
        protocol: u32,
        /// Its build.
        build: String,
        /// Told whether the connection is admitted; its reader waits for this.
        admitted: oneshot::Sender<bool>,
    },
    /// A returning worker's challenge: the router answers with its proof.
    Challenge { conn: ConnId, nonce: Vec<u8> },
    /// A returning worker's rejoin, after the proof.
    Rejoin {
        conn: ConnId,
        rejoin: Box<crate::ipc::proto::Rejoin>,
        /// The pid at the other end of the connection, as the kernel says.
        peer: Option<u32>,
        /// Told whether the worker is adopted; its reader waits for this.
        admitted: oneshot::Sender<bool>,
    },
    /// A frame from an admitted connection.
    Up { conn: ConnId, up: Up },
    /// A connection ended; `error` if over a protocol error.
    Closed { conn: ConnId, error: Option<String> },
    /// The identify queue let `shard` go.
    Granted { waiter: Waiter, shard: u32 },
    /// A stats round ended: one asked for (its askers wait), or the interval's. `Err`: the
    /// snapshot could not be made.
    Stats {
        asked_for: bool,
        stats: Result<std::sync::Arc<crate::stats::FleetStats>, String>,
    },
    /// The admiral's own command handler answered forward `forward` (or a bus publish for it
    /// reached no host: unavailable).
    Answer { forward: u64, outcome: Outcome },
    /// The shared store (Redis) answered an operation.
    Stored { waiter: Waiter, reply: Reply },
    /// A worker process started.
    Spawned {
        process: ProcessId,
        pid: Option<u32>,
        kill: oneshot::Sender<()>,
    },
    /// A worker process ended (`code`: `None` when killed by a signal).
    Exited {
        process: ProcessId,
        code: Option<i32>,
    },
    /// Shut the fleet down.
    Shutdown,
    /// Write the central store for the next admiral now (before a re-execution); `done` once
    /// it is on disk.
    SaveStore(oneshot::Sender<()>),
    /// A deploy names the build `worker`'s next process runs (`None`: the fleet's); `done`
    /// once the router has it.
    Build {
        worker: crate::admiral::WorkerId,
        build: Option<std::sync::Arc<crate::admiral::WorkerCommand>>,
        done: oneshot::Sender<()>,
    },
    /// A deploy's rollout is over.
    Deployed {
        waiter: Waiter,
        report: crate::ipc::proto::DeployReport,
    },
    /// The workers and their state.
    Workers(oneshot::Sender<Vec<WorkerStatus>>),
    /// Discord's recommended shard count arrived for a reshard.
    Recommended {
        waiter: Waiter,
        count: ShardCount,
        clusters: Option<u32>,
        recommended: Result<u32, String>,
    },
}
