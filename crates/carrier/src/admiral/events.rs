//! What the admiral tells its user: the events of the fleet, and each worker's status.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::lifecycle::{LifecycleEvent, ProcessId, State, WorkerId};
use crate::ipc::proto::{LogRecord, ShardEvent};

/// Events the admiral publishes.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum FleetEvent {
    /// A lifecycle step: a worker ready or failed, all ready, stopped.
    Lifecycle(LifecycleEvent),
    /// A shard's progress in a cluster.
    Shard {
        /// Cluster id.
        cluster: u32,
        /// Shard id.
        shard: u32,
        /// The process that runs it (during a restart, old and new ones are told apart).
        process: ProcessId,
        /// The plan generation of that process: reshards that went live before it started,
        /// plus one for a reshard's standby generation.
        generation: u32,
        /// What happened.
        event: ShardEvent,
    },
    /// A log record a worker sent with `Ipc::log`.
    Log {
        /// Which worker.
        worker: WorkerId,
        /// Which process of it.
        process: ProcessId,
        /// The record.
        record: LogRecord,
        /// When the admiral received it.
        at: std::time::SystemTime,
    },
    /// A line a worker wrote to stdout or stderr (its tracing output, a panic message).
    Output {
        /// Which worker.
        worker: WorkerId,
        /// Which process of it.
        process: ProcessId,
        /// Which stream.
        stream: OutputStream,
        /// The line, without its newline, cut at 16 KiB.
        line: String,
        /// When the admiral read it.
        at: std::time::SystemTime,
    },
    /// A worker process exited.
    Exited {
        /// Which worker.
        worker: WorkerId,
        /// Which process of it.
        process: ProcessId,
        /// Exit code; `None` when killed by a signal.
        code: Option<i32>,
    },
    /// A worker broke the IPC protocol and was disconnected (or a stranger was refused).
    ProtocolError {
        /// The worker, if it had identified itself.
        worker: Option<WorkerId>,
        /// What went wrong.
        error: String,
    },
    /// A worker stopped answering application heartbeats; it is killed, and restarted like any
    /// crashed worker.
    Unresponsive {
        /// Which worker.
        worker: WorkerId,
        /// Which process of it.
        process: ProcessId,
        /// How long it had been silent.
        silent_for: Duration,
    },
    /// User code in a worker panicked. A caught panic cost one event, command or lookup (its
    /// caller got an error) and the worker went on; an uncaught one ended the task it ran in.
    Panic {
        /// Which worker.
        worker: WorkerId,
        /// Which process of it.
        process: ProcessId,
        /// Where and what.
        report: crate::panics::PanicReport,
    },
    /// A total shutdown began.
    ShuttingDown,
    /// A deploy ended: every worker moved, or the ones that had were rolled back (see its
    /// `failure`). Dry runs are not told.
    Deployed(Box<crate::ipc::proto::DeployReport>),
    /// The stats snapshot of an interval (`FleetOptions::stats_interval`).
    Stats(std::sync::Arc<crate::stats::FleetStats>),
}

/// Which output stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OutputStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// A worker as the admiral sees it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerStatus {
    /// Which worker.
    pub id: WorkerId,
    /// Its state.
    pub state: State,
    /// Its current process number.
    pub process: Option<ProcessId>,
    /// Its operating-system process id.
    pub pid: Option<u32>,
    /// A cluster's shards whose sessions its process has checkpointed: if it crashed now, its
    /// replacement would resume these and identify the rest.
    pub checkpointed: usize,
    /// The build its process said it runs (`FleetOptions::build` there).
    pub build: Option<String>,
}

/// Logs a lifecycle step at the target of its category (see [`crate::logging`]): failures as
/// warnings, the rest as information.
pub(crate) fn log(event: &LifecycleEvent) {
    use LifecycleEvent as L;
    match event {
        L::Ready(worker) => tracing::info!(target: "fleet::lifecycle", %worker, "ready"),
        L::Failed { worker, reason } => {
            tracing::warn!(target: "fleet::lifecycle", %worker, %reason, "failed");
        }
        L::Restarting {
            worker,
            attempt,
            after,
            reason,
        } => {
            tracing::warn!(target: "fleet::restart", %worker, attempt, ?after, %reason, "crashed; restarting");
        }
        L::RestartPending { worker, mode } => {
            tracing::info!(target: "fleet::restart", %worker, ?mode, "restart requested; the replacement is starting");
        }
        L::SoftKillPending { worker, notice, .. } => {
            tracing::info!(target: "fleet::restart", %worker, ?notice, "the old process goes after its notice");
        }
        L::Replaced { worker, old, new } => {
            tracing::info!(target: "fleet::restart", %worker, old, new, "restarted");
        }
        L::RestartFailed { worker, reason } => {
            tracing::warn!(target: "fleet::restart", %worker, %reason, "restart failed; the old process stays");
        }
        L::WorkerStopped(worker) => tracing::info!(target: "fleet::shutdown", %worker, "stopped"),
        L::ReshardProgress { ready, total } => {
            tracing::info!(target: "fleet::reshard", ready, total, "new generation cluster ready in standby");
        }
        L::Resharded { clusters } => {
            tracing::info!(target: "fleet::reshard", clusters, "the new generation is live; the old one drains");
        }
        L::ReshardFailed { reason } => {
            tracing::warn!(target: "fleet::reshard", %reason, "reshard failed; the old generation stays");
        }
        L::ServicesLaunched => tracing::info!(target: "fleet::launch", "every service launched"),
        L::AllReady { live, failed } => {
            tracing::info!(target: "fleet::launch", live, failed, "every worker launched");
        }
        L::Stopped => tracing::info!(target: "fleet::shutdown", "every process has exited"),
    }
}
