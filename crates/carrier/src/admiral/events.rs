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
        /// What happened.
        event: ShardEvent,
    },
    /// A log record a worker sent with `Ipc::log`.
    Log {
        /// Which worker.
        worker: WorkerId,
        /// The record.
        record: LogRecord,
    },
    /// A line a worker wrote to stdout or stderr (its tracing output, a panic message).
    Output {
        /// Which worker.
        worker: WorkerId,
        /// Which stream.
        stream: OutputStream,
        /// The line, without its newline, cut at 16 KiB.
        line: String,
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
}
