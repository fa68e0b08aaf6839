//! The admiral's events as subscribed workers receive them ([`Down::Event`](super::Down::Event)),
//! eris-fleet's `broadcastAdmiralEvents` typed: a worker sends [`Request::Subscribe`](super::Request::Subscribe)
//! with the [`Topic`]s it wants, and hears each matching event from then on, for as long as its
//! connection lives.

use serde::{Deserialize, Serialize};

use super::{RestartMode, ShardEvent, Target};

/// A family of admiral events a worker can subscribe to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Topic {
    /// Workers ready, failed, crashed, gone, stopped or hung; restarts and reshards in progress
    /// and done; every cluster ready; the shutdown beginning.
    Lifecycle,
    /// Each shard connecting, ready, resumed or disconnected, with the process and generation
    /// that runs it.
    Shards,
    /// Each stats interval's snapshot (`FleetOptions::stats_interval`).
    Stats,
}

impl Topic {
    /// Every topic.
    pub const ALL: [Self; 3] = [Self::Lifecycle, Self::Shards, Self::Stats];

    /// This topic's bit in a [`Topics`] set.
    #[must_use]
    pub const fn bit(self) -> u8 {
        match self {
            Self::Lifecycle => 1,
            Self::Shards => 2,
            Self::Stats => 4,
        }
    }
}

/// A set of [`Topic`]s.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Topics(u8);

impl Topics {
    /// No topic.
    pub const NONE: Self = Self(0);

    /// The set of these topics.
    #[must_use]
    pub fn of(topics: &[Topic]) -> Self {
        Self(topics.iter().fold(0, |bits, t| bits | t.bit()))
    }

    /// Whether `topic` is in the set.
    #[must_use]
    pub const fn contains(self, topic: Topic) -> bool {
        self.0 & topic.bit() != 0
    }

    /// Both sets together.
    #[must_use]
    pub const fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    /// Whether the set is empty.
    #[must_use]
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The topics in the set.
    pub fn iter(self) -> impl Iterator<Item = Topic> {
        Topic::ALL.into_iter().filter(move |t| self.contains(*t))
    }
}

/// An admiral event, as a subscribed worker hears it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum AdmiralEvent {
    /// A worker is ready (started, or its replacement took over).
    WorkerReady {
        /// Which worker.
        worker: Target,
        /// The process serving it.
        process: Option<u64>,
    },
    /// A worker failed: it is not restarted again, and routing answers "unavailable" for it.
    WorkerFailed {
        /// Which worker.
        worker: Target,
        /// Why.
        reason: String,
    },
    /// A worker crashed and is started again after a backoff.
    WorkerRestarting {
        /// Which worker.
        worker: Target,
        /// Restarts within the window, this one included.
        attempt: u32,
        /// The backoff, in milliseconds.
        after_ms: u64,
        /// Why.
        reason: String,
    },
    /// A worker's process exited.
    WorkerExited {
        /// Which worker.
        worker: Target,
        /// Which process of it.
        process: u64,
        /// Its exit code; `None` when killed by a signal.
        code: Option<i32>,
    },
    /// A worker stopped answering heartbeats and is killed.
    WorkerUnresponsive {
        /// Which worker.
        worker: Target,
        /// Which process of it.
        process: u64,
    },
    /// A worker stopped on request (or in a shutdown).
    WorkerStopped {
        /// Which worker.
        worker: Target,
    },
    /// A requested restart began.
    RestartPending {
        /// Which worker.
        worker: Target,
        /// How.
        mode: RestartMode,
    },
    /// The old process of a worker being restarted goes in `notice_ms`.
    SoftKillPending {
        /// Which worker.
        worker: Target,
        /// Its old process.
        process: u64,
        /// How long it has, in milliseconds.
        notice_ms: u64,
    },
    /// A restart is done: `new` serves, `old` drains.
    Restarted {
        /// Which worker.
        worker: Target,
        /// The old process.
        old: u64,
        /// The process serving now.
        new: u64,
    },
    /// A requested restart failed; the old process still serves (unless it was hard).
    RestartFailed {
        /// Which worker.
        worker: Target,
        /// Why.
        reason: String,
    },
    /// A cluster of the new generation is ready in standby.
    ReshardProgress {
        /// Clusters of the new generation ready.
        ready: u32,
        /// Clusters in the new generation.
        total: u32,
    },
    /// The new generation is live; the old one drains.
    Resharded {
        /// Its generation number.
        generation: u32,
        /// Its shard total.
        shard_total: u32,
        /// Its clusters.
        clusters: u32,
    },
    /// A reshard failed; the old generation still serves.
    ReshardFailed {
        /// Why.
        reason: String,
    },
    /// Every service has started or failed.
    ServicesLaunched,
    /// Every worker of the launch has started or failed (megane's `allClustersReady`). A worker
    /// that subscribes after it hears it at once.
    AllReady {
        /// Workers live.
        live: u32,
        /// Workers failed.
        failed: u32,
    },
    /// A total shutdown began.
    ShuttingDown,
    /// A deploy ended: every worker moved, or those that had were rolled back (its `failure`).
    Deployed(Box<super::DeployReport>),
    /// A shard's progress.
    Shard {
        /// The cluster that runs it.
        cluster: u32,
        /// Shard id.
        shard: u32,
        /// The process that runs it: during a restart, old and new processes are told apart.
        process: u64,
        /// The plan generation of that process (a reshard's new generation is one more).
        generation: u32,
        /// What happened.
        event: ShardEvent,
    },
    /// An interval's stats snapshot.
    Stats(Box<crate::stats::FleetStats>),
}

impl AdmiralEvent {
    /// The topic this event belongs to.
    #[must_use]
    pub const fn topic(&self) -> Topic {
        match self {
            Self::Shard { .. } => Topic::Shards,
            Self::Stats(_) => Topic::Stats,
            _ => Topic::Lifecycle,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_sets_hold_what_they_were_made_of() {
        let set = Topics::of(&[Topic::Shards, Topic::Stats, Topic::Shards]);
        assert!(set.contains(Topic::Shards) && set.contains(Topic::Stats));
        assert!(!set.contains(Topic::Lifecycle));
        assert_eq!(
            set.iter().collect::<Vec<_>>(),
            [Topic::Shards, Topic::Stats]
        );
        assert!(Topics::NONE.is_empty());
        assert_eq!(
            set.union(Topics::of(&[Topic::Lifecycle])),
            Topics::of(&Topic::ALL)
        );
    }
}
