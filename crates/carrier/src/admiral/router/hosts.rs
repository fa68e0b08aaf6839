//! This host's part of a fleet on several hosts: what the host agent decides (ranges taken and
//! lost, the fence) reaches the lifecycle here, and the sessions the clusters checkpoint go to
//! the agent, which writes them to Redis for whichever host runs the range next.
//!
//! A service run once per bot ([`ServiceSpec::once_per_bot`]) runs on the host Redis assigns
//! it to: started when taken, stopped when lost or when the host fences itself (its lease may
//! have lapsed, so another host may take it), and started again when the fence lifts while it
//! is still this host's.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::Router;
use super::calls::Waiter;
use crate::admiral::WorkerId;
use crate::admiral::lifecycle::{Input, ProcessId, RestartMode, ServiceSpec, State};
use crate::hosts::agent::HostEvent;
use crate::ipc::proto::{Refusal, Reply, ShardSession};

/// How long a host that stops waits for its clusters' sessions and the agent's hand-off before
/// it stops anyway.
pub(super) const HAND_OFF_WITHIN: Duration = Duration::from_secs(5);

/// How often identifies held while fenced are looked at again.
const GRANTS_CHECKED_EVERY: Duration = Duration::from_millis(250);

/// The services run once per bot, on a host of a bot split across hosts.
#[derive(Debug, Default)]
pub(super) struct Singletons {
    /// Their specs, by name.
    specs: BTreeMap<String, ServiceSpec>,
    /// Those Redis assigns to this host.
    owned: BTreeSet<String>,
    /// Those of `owned` to start (again) once this host may run them and they are stopped.
    wanted: BTreeSet<String>,
}

impl Singletons {
    /// Splits `services` into those run once per bot, started when Redis assigns them here
    /// (with `assigned`: on several hosts, with ranges assigned in Redis), and those the
    /// lifecycle launches: every other, and the ones `adopted` (the last admiral of this host
    /// ran them, and Redis still names this host).
    pub(super) fn split(
        services: &[ServiceSpec],
        assigned: bool,
        adopted: &[String],
    ) -> (Self, Vec<ServiceSpec>) {
        let mut singletons = Self::default();
        let mut launched = Vec::new();
        for spec in services {
            if assigned && spec.once_per_bot {
                if adopted.contains(&spec.name) {
                    singletons.owned.insert(spec.name.clone());
                    launched.push(spec.clone());
                }
                singletons.specs.insert(spec.name.clone(), spec.clone());
            } else {
                launched.push(spec.clone());
            }
        }
        (singletons, launched)
    }

    /// Whether `name` is a service run once per bot.
    pub(super) fn is_singleton(&self, name: &str) -> bool {
        self.specs.contains_key(name)
    }

    /// Their names.
    pub(super) fn names(&self) -> impl Iterator<Item = &String> {
        self.specs.keys()
    }
}

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
            HostEvent::Fence => {
                self.lifecycle_input(Input::Fence);
                self.park_singletons();
            }
            HostEvent::Unfence => {
                // Before the held sessions reach the clusters' shards, which resume them.
                self.send_licence();
                self.lifecycle_input(Input::Unfence);
                self.release_fenced_grants();
                self.start_singletons();
            }
            HostEvent::Lose(cluster) => self.lifecycle_input(Input::Lose(cluster)),
            HostEvent::TakeService(name) => self.take_singleton(name),
            HostEvent::LoseService(name) => self.lose_singleton(&name),
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

    /// Redis assigns service `name` (run once per bot) to this host: it starts, unless the
    /// host is fenced (then it starts when the fence lifts).
    fn take_singleton(&mut self, name: String) {
        if !self.singletons.is_singleton(&name) {
            return;
        }
        self.singletons.owned.insert(name.clone());
        self.singletons.wanted.insert(name);
        self.start_singletons();
    }

    /// Service `name` (run once per bot) is another host's now: it stops here.
    fn lose_singleton(&mut self, name: &str) {
        self.singletons.owned.remove(name);
        self.singletons.wanted.remove(name);
        let id = WorkerId::Service(name.to_owned());
        if self.lifecycle.can_stop(&id).is_ok() {
            // The other host may run it already: no grace.
            tracing::warn!(target: "fleet::hosts", service = name, "another host runs this service now: killing it here");
            self.lifecycle_input(Input::StopNow(id));
        }
    }

    /// The fence came up, or the host stops: every service run once per bot stops, killed if
    /// it outlives half the fence's margin (another host may take it once the lease lapses, a
    /// margin and a grace later), to start again when the fence lifts if it is still this
    /// host's.
    pub(super) fn park_singletons(&mut self) {
        let owned: Vec<String> = self.singletons.owned.iter().cloned().collect();
        let grace = self.config.host_fence_margin / 2;
        for name in owned {
            let id = WorkerId::Service(name.clone());
            if self.lifecycle.can_stop(&id).is_ok() {
                tracing::warn!(target: "fleet::hosts", service = %name, "this host is fenced or stops: stopping a service run once per bot");
                self.lifecycle_input(Input::StopWithin(id, grace));
            }
            self.singletons.wanted.insert(name);
        }
    }

    /// Starts each service run once per bot that Redis assigns to this host and that is not
    /// running (a stopped one once it has exited), unless the host is fenced or stopping.
    /// Called when one is taken, when the fence lifts and when a process exits.
    pub(super) fn start_singletons(&mut self) {
        if self.singletons.wanted.is_empty()
            || self.fenced_now()
            || self.handing_off
            || self.lifecycle.is_stopping()
        {
            return;
        }
        let wanted: Vec<String> = self.singletons.wanted.iter().cloned().collect();
        for name in wanted {
            let id = WorkerId::Service(name.clone());
            let state = self.lifecycle.worker(&id).map(|w| w.state.clone());
            match state {
                None => {
                    let Some(spec) = self.singletons.specs.get(&name).cloned() else {
                        continue;
                    };
                    match self.lifecycle.can_add_service(&spec) {
                        Ok(()) => {
                            tracing::info!(target: "fleet::hosts", service = %name, "starting a service run once per bot, assigned to this host");
                            self.lifecycle_input(Input::AddService(spec));
                        }
                        Err(why) => {
                            tracing::error!(target: "fleet::hosts", service = %name, why, "cannot start a service run once per bot");
                        }
                    }
                }
                Some(State::Stopped) => {
                    if self.lifecycle.can_restart(&id, RestartMode::Hard).is_err() {
                        continue;
                    }
                    tracing::info!(target: "fleet::hosts", service = %name, "starting a service run once per bot again");
                    self.lifecycle_input(Input::Restart(id, RestartMode::Hard));
                }
                // Stopping: started again once it has exited.
                Some(State::Draining) => continue,
                // Running (or failed for good, which only a restart asked for starts again).
                Some(_) => {}
            }
            self.singletons.wanted.remove(&name);
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

    /// A stopping host whose clusters all handed their sessions over, and whose services run
    /// once per bot have exited, asks the agent to hand the ranges and services on.
    pub(super) fn hand_off_if_fenced(&self) {
        let singletons_out = self.singletons.names().all(|name| {
            self.lifecycle
                .worker(&WorkerId::Service(name.clone()))
                .is_none_or(|w| w.state.is_terminal())
        });
        if self.handing_off
            && singletons_out
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

#[cfg(test)]
mod tests {
    use super::*;

    fn specs() -> Vec<ServiceSpec> {
        let mut once = ServiceSpec::named("poster");
        once.once_per_bot = true;
        let mut adopted = ServiceSpec::named("ticker");
        adopted.once_per_bot = true;
        vec![ServiceSpec::named("echo"), once, adopted]
    }

    fn names(specs: &[ServiceSpec]) -> Vec<&str> {
        specs.iter().map(|s| s.name.as_str()).collect()
    }

    #[test]
    fn services_run_once_per_bot_wait_for_redis_unless_adopted_and_run_as_any_on_one_host() {
        let (singletons, launched) = Singletons::split(&specs(), true, &["ticker".to_owned()]);
        assert_eq!(names(&launched), ["echo", "ticker"]);
        assert!(singletons.is_singleton("poster") && singletons.is_singleton("ticker"));
        assert!(!singletons.is_singleton("echo"));
        assert_eq!(
            singletons.owned.iter().collect::<Vec<_>>(),
            ["ticker"],
            "the adopted one is this host's until Redis says otherwise"
        );
        let (alone, launched) = Singletons::split(&specs(), false, &[]);
        assert_eq!(names(&launched), ["echo", "poster", "ticker"]);
        assert!(!alone.is_singleton("poster"));
    }
}
