//! This host's part of a fleet on several hosts: what the host agent decides (ranges taken and
//! lost, the fence) reaches the lifecycle here, and the sessions the clusters checkpoint go to
//! the agent, which writes them to Redis for whichever host runs the range next.

use std::time::Duration;

use super::Router;
use super::calls::Waiter;
use crate::admiral::lifecycle::{Input, ProcessId};
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
                // Before the held sessions reach the clusters' shards, which resume them.
                self.send_licence();
                self.lifecycle_input(Input::Unfence);
                self.release_fenced_grants();
            }
            HostEvent::Lose(cluster) => self.lifecycle_input(Input::Lose(cluster)),
            HostEvent::Give(cluster) => self.give(cluster),
            HostEvent::Drained => self.handed_off(),
            HostEvent::Renewed(valid) => self.license(valid),
            HostEvent::Owners(owners) => self.on_owners(owners),
            HostEvent::Hosts(hosts) => self.on_hosts(hosts),
            HostEvent::Bus(bytes) => self.on_bus(&bytes),
            HostEvent::Undelivered(forward) => self.on_undelivered(forward),
            HostEvent::Replanned { plan, owned } => self.on_replanned(&plan, owned),
            HostEvent::CommitFailed { id, reason } => self.split_commit_failed(&id, &reason),
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

    /// Hands cluster `cluster` on to a host with room (a planned move): its process closes its
    /// shards resumably and hands the sessions over ([`Router::gave`]); then the agent writes
    /// them and gives the range up, and the process stops. A process that does not answer
    /// within [`HAND_OFF_WITHIN`] stops anyway (the range's last checkpoints stand).
    fn give(&mut self, cluster: u32) {
        let Some(checkpoints) = self.config.host_checkpoints.clone() else {
            return;
        };
        // Fenced, stopping, under way already, or being restarted: asked again at the next
        // claim.
        let restarting = self
            .lifecycle
            .worker(&crate::admiral::WorkerId::Cluster(cluster))
            .is_some_and(|w| w.replacement.is_some());
        if self.fenced_now() || self.handing_off || restarting || self.giving.contains_key(&cluster)
        {
            return;
        }
        let process = self
            .lifecycle
            .live_process(&crate::admiral::WorkerId::Cluster(cluster));
        let asked = process.is_some_and(|p| {
            self.links
                .send_to_process(p, &crate::ipc::proto::Down::HandOver)
        });
        match process {
            Some(process) if asked => {
                tracing::info!(target: "fleet::hosts", cluster, "handing a range on: closing its shards resumably");
                self.giving.insert(cluster, process);
                self.arm(super::Timer::Give(cluster), HAND_OFF_WITHIN);
            }
            _ => {
                checkpoints.given(cluster);
                self.lifecycle_input(Input::Lose(cluster));
            }
        }
    }

    /// The sessions `process` handed over, if it is a cluster being handed on: recorded for
    /// the range's next host, and the range given up. `false` when it is not.
    pub(super) fn gave(&mut self, process: ProcessId, sessions: &[ShardSession]) -> bool {
        let Some((&cluster, _)) = self.giving.iter().find(|(_, p)| **p == process) else {
            return false;
        };
        self.giving.remove(&cluster);
        self.checkpoint_to_redis(cluster, process, sessions);
        if let Some(checkpoints) = &self.config.host_checkpoints {
            checkpoints.given(cluster);
        }
        self.lifecycle_input(Input::Lose(cluster));
        true
    }

    /// A range being handed on took too long to hand its sessions over: it goes anyway.
    pub(super) fn give_due(&mut self, cluster: u32) {
        let Some(process) = self.giving.get(&cluster).copied() else {
            return;
        };
        tracing::warn!(target: "fleet::hosts", cluster, "a range being handed on did not hand its sessions over in time: it goes with its last checkpoints");
        self.gave(process, &[]);
    }

    /// The lease was renewed ([`HostEvent::Renewed`]): the clusters may run their shards until
    /// `valid` from now. A fenced host gives no licence until the claim after the renewal says
    /// which ranges are still its own ([`HostEvent::Unfence`]): a cluster of a range another
    /// host took meanwhile must not reconnect the sessions that host resumed.
    fn license(&mut self, valid: Duration) {
        self.licence_until = Some(tokio::time::Instant::now() + valid);
        if !self.lifecycle.is_fenced() {
            self.send_licence();
        }
    }

    /// Tells every cluster process this host still runs (not one of a range it lost, stopping)
    /// how long its shards may run: what is left of the last renewal's licence.
    fn send_licence(&mut self) {
        let left = self.licence_until.map_or(Duration::ZERO, |until| {
            until.saturating_duration_since(tokio::time::Instant::now())
        });
        let valid_ms = u64::try_from(left.as_millis()).unwrap_or(u64::MAX);
        let processes: Vec<_> = self
            .lifecycle
            .workers()
            .filter(|w| matches!(w.id, crate::admiral::WorkerId::Cluster(_)) && !w.retired)
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

    /// Passes sessions cluster `cluster`'s process `process` checkpointed or handed over (its
    /// own shards only, by the plan of its generation) on to Redis, on several hosts.
    pub(super) fn checkpoint_to_redis(
        &self,
        cluster: u32,
        process: ProcessId,
        sessions: &[ShardSession],
    ) {
        let Some(checkpoints) = &self.config.host_checkpoints else {
            return;
        };
        let Some(plan) = self.plan_of(process) else {
            return;
        };
        let Some(range) = plan.clusters.iter().find(|c| c.id == cluster) else {
            return;
        };
        if sessions.iter().all(|s| range.shards().contains(&s.shard)) {
            checkpoints.record(cluster, plan.shard_total, sessions);
        }
    }
}
