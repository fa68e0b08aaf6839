//! Resharding a bot whose ranges Redis assigns across hosts: a new generation is planned for
//! the whole bot, each host readies its part in standby, and all go live together.
//!
//! The host asked (the coordinator) plans the new generation (every host plans the same: the
//! new total in the new number of ranges), assigns each new range to the host of the old range
//! it comes from (new range `j` of `R'` comes from old range `j·R/R'`), and tells every host on
//! the bus ([`Body::Reshard`]). Each host with a part starts it as a held generation
//! ([`Input::ReshardTogether`]): its clusters identify in standby, and once all are ready it
//! says so ([`Body::ReshardReady`]) and waits. When every part is ready the coordinator's agent
//! puts the new plan live in Redis in one script (the plan in `meta`, the new assignment under
//! each host's owner entry, the switch time a second ahead on Redis's clock) and hints every
//! host. Each agent, claiming, finds the new plan and runs it ([`HostEvent::Replanned`]): its
//! router switches its generation at that one time ([`Input::GoLive`]), so the events around
//! the switch are cut between the generations by their snowflakes the same way on every host.
//!
//! Anything that fails before the commit calls the whole reshard off ([`Body::ReshardOff`]):
//! a part that fails or is fenced, a host not ready in time, a host that leaves, the commit
//! refused. The old generation serves on everywhere. A host that learns of the new plan
//! without a part ready for it (it missed the reshard, or called its part off after waiting
//! longer than the coordinator would) stops what it ran and starts its new ranges afresh.
//!
//! [`HostEvent::Replanned`]: crate::hosts::agent::HostEvent::Replanned

use std::collections::BTreeSet;
use std::time::Duration;

use super::Router;
use super::calls::Waiter;
use super::remote::Body;
use crate::admiral::lifecycle::{Input, LifecycleEvent};
use crate::admiral::{ShardCount, WorkerId, plan};
use crate::hosts::assign::{Replanned, ReshardCommit};
use crate::hosts::bus::Channel;
use crate::ipc::proto::{Refusal, Reply};

/// How much longer than the coordinator a host waits before it calls its part off: the
/// coordinator never commits after its own deadline, so a part is never called off here while
/// the reshard may still go live.
const PART_SLACK: Duration = Duration::from_secs(30);

/// A new range, the old range it comes from, and the host that readies it.
type Move = (u32, u32, String);

/// A reshard of the split bot under way on this host.
#[derive(Debug)]
pub(super) struct SplitReshard {
    id: String,
    /// The host that planned it and puts it live.
    coordinator: String,
    total: u32,
    ranges: u32,
    moves: Vec<Move>,
    /// The coordinator's: hosts whose part is not ready yet.
    waiting: BTreeSet<String>,
    /// This host readies a part.
    runs_part: bool,
    /// Asked to go live (the coordinator's agent commits it), or live in Redis: it can no
    /// longer be called off here.
    committing: bool,
    /// Its deadline, until it fires or is no longer needed.
    timer: Option<tokio_util::time::delay_queue::Key>,
}

impl SplitReshard {
    /// Reshard `id`, planned by `coordinator`, to `total` shards in `ranges`, due by `timer`.
    fn new(
        id: String,
        coordinator: String,
        (total, ranges): (u32, u32),
        timer: tokio_util::time::delay_queue::Key,
    ) -> Self {
        Self {
            id,
            coordinator,
            total,
            ranges,
            moves: Vec::new(),
            waiting: BTreeSet::new(),
            runs_part: false,
            committing: false,
            timer: Some(timer),
        }
    }
}

impl Router {
    /// This host's id on the bus.
    fn me(&self) -> Option<String> {
        self.config.host_bus.as_ref().map(|b| b.host().to_owned())
    }

    /// A reshard asked of this host on a split bot: it plans the new generation, tells every
    /// host, and readies its own part. The asker hears once the new generation is live here.
    pub(super) fn begin_split_reshard(
        &mut self,
        waiter: Waiter,
        count: ShardCount,
        recommended: u32,
        clusters: Option<u32>,
    ) {
        // A part readied for a host after this one by name gives way (see
        // [`Router::on_split_reshard`]).
        if let (Some(current), Some(me)) = (&self.split, self.me())
            && !current.committing
            && me < current.coordinator
        {
            self.split_failed_here(&format!("host {me} reshards the bot at the same time"));
        }
        match self.plan_split(count, recommended, clusters) {
            Ok((total, ranges, moves)) => self.start_split(waiter, total, ranges, moves),
            Err(reason) => self.reply(waiter, Reply::Refused(Refusal::ReshardFailed(reason))),
        }
    }

    /// The new generation's shard total, range count and moves, or why there is none.
    fn plan_split(
        &self,
        count: ShardCount,
        recommended: u32,
        clusters: Option<u32>,
    ) -> Result<(u32, u32, Vec<Move>), String> {
        if let Some(current) = &self.split {
            return Err(format!(
                "a reshard of the bot asked of host {} is under way",
                current.coordinator
            ));
        }
        if self.handing_off {
            return Err("this host is stopping".to_owned());
        }
        if self.fenced_now() {
            return Err("this host is fenced: its lease in Redis may have lapsed".to_owned());
        }
        self.lifecycle.can_reshard()?;
        let max_concurrency = self.plan.max_concurrency;
        let total = plan::shard_total(count, recommended, max_concurrency)
            .map_err(|error| error.to_string())?;
        if total > super::control::MAX_SHARDS {
            return Err(format!(
                "{total} shards asked for; at most {}",
                super::control::MAX_SHARDS
            ));
        }
        if total == self.plan.shard_total {
            return Err(format!(
                "the bot runs {total} shards already (to move clusters, restart them)"
            ));
        }
        let wanted = clusters.unwrap_or(self.plan.clusters.len() as u32);
        if wanted > super::control::MAX_CLUSTERS {
            return Err(format!(
                "{wanted} clusters asked for; at most {}",
                super::control::MAX_CLUSTERS
            ));
        }
        let next = plan::whole(total, wanted, max_concurrency).map_err(|e| e.to_string())?;
        let (old, new) = (self.plan.clusters.len(), next.clusters.len());
        let owners = self.remote_owners();
        let mut moves = Vec::with_capacity(new);
        for range in 0..new {
            let from = (range * old / new) as u32;
            let Some(host) = owners.get(&from) else {
                return Err(format!("range {from} runs on no host now"));
            };
            moves.push((range as u32, from, host.clone()));
        }
        // No host is given more than it has room for (`host_capacity`).
        for host in owners.values() {
            let given = moves.iter().filter(|(_, _, h)| h == host).count();
            let room = self.room_of(host);
            if given > room as usize {
                return Err(format!(
                    "{new} clusters would give host {host} {given}, and it has room for {room}: ask for fewer clusters"
                ));
            }
        }
        // A host that runs a range now keeps one: it would otherwise run nothing of the bot.
        if let Some(left) = owners
            .values()
            .find(|host| !moves.iter().any(|(_, _, h)| h == *host))
        {
            return Err(format!(
                "{new} clusters would leave host {left} without one: ask for more clusters"
            ));
        }
        Ok((total, new as u32, moves))
    }

    /// Tells every host of the reshard and readies this host's part.
    fn start_split(&mut self, waiter: Waiter, total: u32, ranges: u32, moves: Vec<Move>) {
        let Some(me) = self.me() else {
            let reason = "this host has no bus to the others".to_owned();
            return self.reply(waiter, Reply::Refused(Refusal::ReshardFailed(reason)));
        };
        let id = format!("{me}/{}", self.calls.next_id());
        let within = self.config.timeouts.cluster_ready * 2;
        let body = Body::Reshard {
            id: id.clone(),
            total,
            ranges,
            assign: moves.iter().map(|(r, _, h)| (*r, h.clone())).collect(),
            within_ms: u64::try_from((within + PART_SLACK).as_millis()).unwrap_or(u64::MAX),
        };
        if !self.publish_bus(Channel::All, body) {
            let reason = "the bus to the other hosts is full or gone".to_owned();
            return self.reply(waiter, Reply::Refused(Refusal::ReshardFailed(reason)));
        }
        tracing::info!(target: "fleet::reshard", %id, from = self.plan.shard_total, to = total, ranges, "resharding the bot across its hosts");
        let waiting = moves.iter().map(|(_, _, h)| h.clone()).collect();
        self.control.reshard = Some(waiter);
        let mine = moves
            .iter()
            .filter(|(_, _, h)| *h == me)
            .map(|(r, _, _)| *r)
            .collect();
        let timer = self.arm(super::Timer::SplitReshard, within);
        let mut split = SplitReshard::new(id, me, (total, ranges), timer);
        split.moves = moves;
        split.waiting = waiting;
        self.split = Some(split);
        self.ready_part(mine);
    }

    /// Starts this host's part (`mine`, ranges of the new plan) as a held generation.
    fn ready_part(&mut self, mut mine: Vec<u32>) {
        let Some(split) = &mut self.split else {
            return;
        };
        if mine.is_empty() {
            return;
        }
        match plan::whole(split.total, split.ranges, self.plan.max_concurrency) {
            Ok(next) => {
                // Named by another host: only clusters of the plan, each once, are started.
                mine.retain(|r| (*r as usize) < next.clusters.len());
                mine.sort_unstable();
                mine.dedup();
                if mine.is_empty() {
                    return self.split_failed_here("it was given no cluster of the new plan");
                }
                split.runs_part = true;
                self.next_plan = Some(next);
                self.lifecycle_input(Input::ReshardTogether(mine));
            }
            Err(error) => self.split_failed_here(&error.to_string()),
        }
    }

    /// Another host asks this one to ready its part of a reshard.
    pub(super) fn on_split_reshard(
        &mut self,
        from: String,
        id: String,
        (total, ranges): (u32, u32),
        assign: &[(u32, String)],
        within_ms: u64,
    ) {
        let Some(me) = self.me() else {
            return;
        };
        // Two hosts asked at once (each host's own auto-reshard, say): the reshard of the host
        // first by name wins on every host, unless the other is going live already.
        if let Some(current) = &self.split
            && current.id != id
            && !current.committing
            && from < current.coordinator
        {
            let reason = format!("host {from} reshards the bot at the same time");
            if current.coordinator == me {
                self.call_split_off(&reason);
            } else {
                self.split_failed_here(&reason);
            }
        }
        let mine: Vec<u32> = assign
            .iter()
            .filter(|(_, h)| *h == me)
            .map(|(r, _)| *r)
            .collect();
        if mine.is_empty() {
            return; // It follows once the new plan is live.
        }
        let refusal = if self.split.is_some() {
            Some("another reshard is under way there".to_owned())
        } else if self.fenced_now() || self.handing_off {
            Some("it is fenced or stopping".to_owned())
        } else if total > super::control::MAX_SHARDS || ranges > super::control::MAX_CLUSTERS {
            Some("it was asked for too many shards or clusters".to_owned())
        } else {
            self.lifecycle.can_reshard().err()
        };
        if let Some(reason) = refusal {
            tracing::warn!(target: "fleet::reshard", %id, coordinator = %from, %reason, "cannot ready this host's part of a reshard");
            self.publish_bus(Channel::Host(from), Body::ReshardOff { id, reason });
            return;
        }
        tracing::info!(target: "fleet::reshard", %id, coordinator = %from, total, ranges = mine.len(), "readying this host's part of a reshard");
        // Never longer than a day, whatever the other host asks.
        let within = Duration::from_millis(within_ms.min(86_400_000));
        let timer = self.arm(super::Timer::SplitReshard, within);
        self.split = Some(SplitReshard::new(id, from, (total, ranges), timer));
        self.ready_part(mine);
    }

    /// A host's part is ready (`from`), or called off (`off`, with why).
    pub(super) fn on_split_part(&mut self, from: &str, id: &str, off: Option<String>) {
        let me = self.me().unwrap_or_default();
        let Some(split) = &mut self.split else {
            return;
        };
        if split.id != id || split.committing {
            return;
        }
        match off {
            // The coordinator hears of a part: ready, or called off.
            None if split.coordinator == me => self.part_ready(from),
            Some(reason) if split.coordinator == me => {
                self.call_split_off(&format!("host {from}: {reason}"));
            }
            // A host hears from the coordinator that it is off.
            Some(reason) if split.coordinator == from => {
                tracing::warn!(target: "fleet::reshard", id, %reason, "the reshard was called off");
                self.drop_split(&reason);
            }
            _ => {}
        }
    }

    /// Host `host`'s part is ready: once every part is, the coordinator's agent puts the new
    /// plan live.
    fn part_ready(&mut self, host: &str) {
        let Some(split) = &mut self.split else {
            return;
        };
        split.waiting.remove(host);
        if !split.waiting.is_empty() || split.committing {
            return;
        }
        let Some(checkpoints) = self.config.host_checkpoints.clone() else {
            return;
        };
        split.committing = true;
        tracing::info!(target: "fleet::reshard", id = %split.id, "every host's part is ready: putting the new plan live");
        checkpoints.commit_reshard(ReshardCommit {
            id: split.id.clone(),
            from: (self.plan.shard_total, self.plan.clusters.len() as u32),
            to: (split.total, split.ranges),
            moves: split.moves.clone(),
        });
    }

    /// What the lifecycle reports of this host's part.
    pub(super) fn split_on_lifecycle(&mut self, event: &LifecycleEvent) {
        let Some(split) = &self.split else {
            return;
        };
        match event {
            LifecycleEvent::ReshardProgress { ready, total }
                if ready == total && split.runs_part && self.lifecycle.generation_held() =>
            {
                let (id, coordinator) = (split.id.clone(), split.coordinator.clone());
                let me = self.me().unwrap_or_default();
                tracing::info!(target: "fleet::reshard", %id, "this host's part is ready in standby");
                if coordinator == me {
                    self.part_ready(&me);
                } else {
                    self.publish_bus(Channel::Host(coordinator), Body::ReshardReady { id });
                }
            }
            LifecycleEvent::ReshardFailed { reason } if !split.committing => {
                self.split_failed_here(reason);
            }
            LifecycleEvent::Resharded { .. } => {
                if let Some(mut split) = self.split.take()
                    && let Some(timer) = split.timer.take()
                {
                    self.timers.remove(&timer);
                }
            }
            _ => {}
        }
    }

    /// This host's part failed: the coordinator calls the reshard off everywhere; a host tells
    /// the coordinator.
    fn split_failed_here(&mut self, reason: &str) {
        let Some(split) = &self.split else {
            return;
        };
        let me = self.me().unwrap_or_default();
        if split.coordinator == me {
            self.call_split_off(reason);
        } else {
            let body = Body::ReshardOff {
                id: split.id.clone(),
                reason: reason.to_owned(),
            };
            let coordinator = split.coordinator.clone();
            self.publish_bus(Channel::Host(coordinator), body);
            self.drop_split(reason);
        }
    }

    /// The coordinator calls the reshard off: every host drops its part; the asker hears why.
    fn call_split_off(&mut self, reason: &str) {
        let Some(split) = &self.split else {
            return;
        };
        tracing::warn!(target: "fleet::reshard", id = %split.id, reason, "calling the reshard off");
        let body = Body::ReshardOff {
            id: split.id.clone(),
            reason: reason.to_owned(),
        };
        self.publish_bus(Channel::All, body);
        self.drop_split(reason);
        if let Some(waiter) = self.control.reshard.take() {
            let refusal = Refusal::ReshardFailed(reason.to_owned());
            self.reply(waiter, Reply::Refused(refusal));
        }
    }

    /// Drops this host's part of the reshard (its generation stops; the old one serves on).
    fn drop_split(&mut self, reason: &str) {
        let Some(mut split) = self.split.take() else {
            return;
        };
        if let Some(timer) = split.timer.take() {
            self.timers.remove(&timer);
        }
        if split.runs_part {
            // Its ReshardFailed event answers the asker, if this host is the coordinator.
            self.lifecycle_input(Input::AbortReshard(reason.to_owned()));
        }
        self.next_plan = None;
    }

    /// The reshard's time ran out before it went live.
    pub(super) fn split_due(&mut self) {
        let me = self.me().unwrap_or_default();
        let Some(split) = &mut self.split else {
            return;
        };
        split.timer = None; // It fired: gone from the queue.
        if split.committing {
            return;
        }
        if split.coordinator == me {
            let waiting: Vec<&str> = split.waiting.iter().map(String::as_str).collect();
            let reason = format!("not every host was ready in time ({})", waiting.join(", "));
            self.call_split_off(&reason);
        } else {
            self.split_failed_here("the reshard did not go live in time");
        }
    }

    /// The coordinator's agent could not put the reshard live.
    pub(super) fn split_commit_failed(&mut self, id: &str, reason: &str) {
        if let Some(split) = &mut self.split
            && split.id == id
        {
            split.committing = false;
            self.call_split_off(reason);
        }
    }

    /// The hosts that run ranges changed: a host with a part that left calls the reshard off.
    pub(super) fn split_owners_changed(&mut self) {
        let Some(split) = &self.split else {
            return;
        };
        if split.committing || split.moves.is_empty() {
            return;
        }
        let owners = self.remote_owners();
        let gone = split
            .moves
            .iter()
            .map(|(_, _, h)| h)
            .find(|h| !owners.values().any(|o| o == *h))
            .cloned();
        if let Some(host) = gone {
            self.call_split_off(&format!("host {host} left the bot"));
        }
    }

    /// A reshard's plan went live in Redis (this host's agent runs it now, owning `owned`): the
    /// part ready here goes live at the agreed time; a host without one adopts the plan, stops
    /// what it ran and starts its new ranges afresh.
    pub(super) fn on_replanned(&mut self, replanned: &Replanned, owned: Vec<u32>) {
        let ours = self.split.as_ref().is_some_and(|s| s.id == replanned.id);
        if ours && self.lifecycle.generation_held() {
            // Live in Redis: nothing may call this host's part off any more.
            if let Some(split) = &mut self.split {
                split.committing = true;
                if let Some(timer) = split.timer.take() {
                    self.timers.remove(&timer);
                }
            }
            tracing::info!(target: "fleet::reshard", id = %replanned.id, at_ms = replanned.at_ms, "the new plan is live: switching generations");
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
            // Never more than the second Redis set it ahead, whatever this host's clock says.
            let ahead = Duration::from_millis(replanned.at_ms.saturating_sub(now_ms).min(1000));
            self.lifecycle_input(Input::GoLive {
                at_ms: replanned.at_ms,
                ahead,
            });
            return;
        }
        let next = match plan::whole(replanned.total, replanned.ranges, self.plan.max_concurrency) {
            Ok(next) => next,
            Err(error) => {
                tracing::error!(target: "fleet::reshard", %error, "the bot's new plan cannot be planned here");
                return;
            }
        };
        if self.split.is_some() {
            self.drop_split("the bot's new plan went live without this host's part");
        }
        let running: Vec<u32> = self
            .lifecycle
            .workers()
            .filter(|w| !w.retired && !w.state.is_terminal())
            .filter_map(|w| match w.id {
                WorkerId::Cluster(c) => Some(c),
                WorkerId::Service(_) => None,
            })
            .collect();
        if !running.is_empty() || !owned.is_empty() {
            tracing::warn!(target: "fleet::reshard", id = %replanned.id, stopped = running.len(), started = owned.len(), "the bot's new plan went live without this host's part: its clusters start afresh");
        }
        for cluster in running {
            self.lifecycle_input(Input::Lose(cluster));
        }
        self.plan = next.clone();
        self.generation += 1;
        let _ = self.plan_tx.send(next);
        for cluster in owned {
            let resume = Vec::new();
            self.lifecycle_input(Input::Take { cluster, resume });
        }
        if ours && let Some(waiter) = self.control.reshard.take() {
            self.reply(waiter, Reply::Done);
        }
    }
}
