//! This host's part of a fleet on several hosts: what the host agent decides (ranges taken and
//! lost, the fence) reaches the lifecycle here, and the sessions the clusters checkpoint go to
//! the agent, which writes them to Redis for whichever host runs the range next.

use std::time::Duration;

use super::Router;
use super::calls::Waiter;
use crate::admiral::lifecycle::Input;
use crate::hosts::agent::HostEvent;
use crate::ipc::proto::{Refusal, Reply, ShardSession};

/// How long a host that stops waits for its clusters' sessions and the agent's hand-off before
/// it stops anyway.
pub(super) const HAND_OFF_WITHIN: Duration = Duration::from_secs(5);

/// How often identifies held while fenced are looked at again.
const GRANTS_CHECKED_EVERY: Duration = Duration::from_millis(250);

impl Router {
    /// What the host agent decided.
    pub(super) fn on_host(&mut self, event: HostEvent) {
        match event {
            HostEvent::Take { cluster, resume } => {
                let Some(shards) = self
                    .plan
                    .clusters
                    .iter()
                    .find(|c| c.id == cluster)
                    .map(crate::admiral::plan::ClusterPlan::shards)
                else {
                    tracing::warn!(target: "fleet::hosts", cluster, "took a range this plan does not have");
                    return;
                };
                let resume: Vec<ShardSession> = resume
                    .into_iter()
                    .filter(|s| shards.contains(&s.shard))
                    .collect();
                tracing::info!(target: "fleet::hosts", cluster, resumes = resume.len(), "starting a range this host took");
                self.lifecycle_input(Input::Take { cluster, resume });
            }
            HostEvent::Fence => self.lifecycle_input(Input::Fence),
            HostEvent::Unfence => {
                self.lifecycle_input(Input::Unfence);
                self.release_fenced_grants();
            }
            HostEvent::Lose(cluster) => self.lifecycle_input(Input::Lose(cluster)),
            HostEvent::Drained => self.handed_off(),
            HostEvent::Renewed(valid) => self.license(valid),
            HostEvent::Owners(owners) => self.on_owners(owners),
            HostEvent::Bus(bytes) => self.on_bus(&bytes),
            HostEvent::Undelivered(forward) => self.on_undelivered(forward),
        }
    }

    /// How long a cluster process that starts now may run its shards: what is left of the
    /// last renewal's licence (0 while fenced), on a bot split across hosts; `None` on one.
    pub(super) fn licence_ms(&self) -> Option<u64> {
        self.config.host_checkpoints.as_ref()?;
        if self.fenced_now() {
            return Some(0);
        }
        let left = self.licence_until.map_or(Duration::ZERO, |until| {
            until.saturating_duration_since(tokio::time::Instant::now())
        });
        Some(u64::try_from(left.as_millis()).unwrap_or(u64::MAX))
    }

    /// Tells every cluster process how long its shards may run ([`HostEvent::Renewed`]).
    fn license(&mut self, valid: Duration) {
        self.licence_until = Some(tokio::time::Instant::now() + valid);
        let valid_ms = u64::try_from(valid.as_millis()).unwrap_or(u64::MAX);
        let processes: Vec<_> = self
            .lifecycle
            .workers()
            .filter(|w| matches!(w.id, crate::admiral::WorkerId::Cluster(_)))
            .flat_map(|w| {
                w.process
                    .into_iter()
                    .chain(w.replacement.as_ref().map(|r| r.process))
            })
            .collect();
        for process in processes {
            self.links
                .send_to_process(process, &crate::ipc::proto::Down::Licence { valid_ms });
        }
    }

    /// Holds an identify granted while this host's lease may have lapsed, until it holds again.
    pub(super) fn hold_grant(&mut self, waiter: Waiter, shard: u32) {
        if self.fenced_grants.is_empty() {
            self.arm(super::Timer::FencedGrants, GRANTS_CHECKED_EVERY);
        }
        self.fenced_grants.push((waiter, shard));
    }

    /// Answers the identifies held while fenced, once the lease holds: granted to a process that
    /// still runs the shard, refused to any other. Checked again later while still fenced.
    pub(super) fn release_fenced_grants(&mut self) {
        if self.fenced_grants.is_empty() {
            return;
        }
        if self.fenced_now() {
            self.arm(super::Timer::FencedGrants, GRANTS_CHECKED_EVERY);
            return;
        }
        for (waiter, shard) in std::mem::take(&mut self.fenced_grants) {
            if self.still_runs(&waiter, shard) {
                self.stats.identified(shard);
                self.identifies_granted += 1;
                self.reply(waiter, Reply::Done);
            } else {
                let refusal = Refusal::Invalid(format!("shard {shard} runs on another host now"));
                self.reply(waiter, Reply::Refused(refusal));
            }
        }
    }

    /// Whether this host's lease may have lapsed: fenced, or the fence is due (checked here,
    /// not only when the agent's word arrives, so no identify slips through the gap).
    pub(super) fn fenced_now(&self) -> bool {
        self.lifecycle.is_fenced()
            || self
                .config
                .host_checkpoints
                .as_ref()
                .is_some_and(|c| c.fence_due())
    }

    /// Whether the process that asked (through `waiter`) to identify `shard` is still the
    /// current process of a cluster this host runs, with that shard.
    fn still_runs(&self, waiter: &Waiter, shard: u32) -> bool {
        let Waiter::Conn(conn, _) = waiter else {
            return true;
        };
        let Some(process) = self.links.process_of(*conn) else {
            return false;
        };
        let Some(crate::admiral::WorkerId::Cluster(cluster)) =
            self.lifecycle.worker_of(process).cloned()
        else {
            return false;
        };
        let current = self
            .lifecycle
            .worker(&crate::admiral::WorkerId::Cluster(cluster))
            .is_some_and(|w| w.process == Some(process) && !w.retired);
        current
            && self
                .plan
                .clusters
                .iter()
                .any(|c| c.id == cluster && c.shards().contains(&shard))
    }

    /// A stopping host whose clusters all handed their sessions over asks the agent to hand
    /// the ranges on.
    pub(super) fn hand_off_if_fenced(&self) {
        if self.handing_off
            && self.lifecycle.fence_complete()
            && let Some(checkpoints) = &self.config.host_checkpoints
        {
            checkpoints.drain();
        }
    }

    /// The ranges are handed on (or the wait is over): the host stops.
    pub(super) fn handed_off(&mut self) {
        if self.handing_off && !self.lifecycle.is_stopping() {
            tracing::info!(target: "fleet::shutdown", "ranges handed on; stopping");
            self.lifecycle_input(Input::Shutdown);
        }
    }

    /// Passes sessions cluster `cluster` checkpointed or handed over (its own shards only) on
    /// to Redis, on several hosts.
    pub(super) fn checkpoint_to_redis(&self, cluster: u32, sessions: &[ShardSession]) {
        let Some(checkpoints) = &self.config.host_checkpoints else {
            return;
        };
        let Some(plan) = self.plan.clusters.iter().find(|c| c.id == cluster) else {
            return;
        };
        if sessions.iter().all(|s| plan.shards().contains(&s.shard)) {
            checkpoints.record(cluster, sessions);
        }
    }
}
