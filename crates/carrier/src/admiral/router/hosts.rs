//! This host's part of a fleet on several hosts: what the host agent decides (ranges taken and
//! lost, the fence) reaches the lifecycle here, and the sessions the clusters checkpoint go to
//! the agent, which writes them to Redis for whichever host runs the range next.

use std::time::Duration;

use super::Router;
use crate::admiral::lifecycle::Input;
use crate::hosts::agent::HostEvent;
use crate::ipc::proto::ShardSession;

/// How long a host that stops waits for its clusters' sessions and the agent's hand-off before
/// it stops anyway.
pub(super) const HAND_OFF_WITHIN: Duration = Duration::from_secs(5);

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
                for (waiter, shard) in std::mem::take(&mut self.fenced_grants) {
                    self.stats.identified(shard);
                    self.identifies_granted += 1;
                    self.reply(waiter, crate::ipc::proto::Reply::Done);
                }
            }
            HostEvent::Lose(cluster) => self.lifecycle_input(Input::Lose(cluster)),
            HostEvent::Drained => self.handed_off(),
        }
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
