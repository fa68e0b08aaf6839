//! Control: stopping and restarting workers, rolling restarts, reshards, and what everyone who
//! waits on one of them hears when the lifecycle reports how it went.

use std::collections::{BTreeMap, HashMap, VecDeque};

use super::calls::Waiter;
use super::{Inbox, Router};
use crate::admiral::lifecycle::{Input, LifecycleEvent, RestartMode, WorkerId};
use crate::admiral::plan::{self, PlanInput, ShardCount};
use crate::admiral::{FleetEvent, SOFT_KILL_EVENT};
use crate::ipc::proto::{Down, Group, Outcome, Payload, Refusal, Reply, Target};

/// The most shards a reshard may ask for (Discord's largest bots run a few thousand).
pub(super) const MAX_SHARDS: u32 = 65_536;

/// The most clusters a reshard may ask for: each is a process the admiral starts.
pub(super) const MAX_CLUSTERS: u32 = 1024;

/// A rolling restart of several workers.
#[derive(Debug)]
struct Rolling {
    waiter: Waiter,
    mode: RestartMode,
    at_once: usize,
    queue: VecDeque<WorkerId>,
    running: Vec<WorkerId>,
    outcomes: BTreeMap<Target, Outcome>,
}

/// Who waits for which control operation to end.
#[derive(Debug, Default)]
pub(super) struct Waiting {
    restarts: HashMap<WorkerId, Vec<Waiter>>,
    stops: HashMap<WorkerId, Vec<Waiter>>,
    pub(super) reshard: Option<Waiter>,
    rollings: HashMap<u64, Rolling>,
    /// Services being created, and who asked.
    pub(super) creates: HashMap<WorkerId, Vec<Waiter>>,
}

/// The worker a control request names; the admiral itself is refused with `why`.
fn worker_named(target: Target, why: &str) -> Result<WorkerId, Refusal> {
    match target {
        Target::Cluster(id) => Ok(WorkerId::Cluster(id)),
        Target::Service(name) => Ok(WorkerId::Service(name)),
        Target::Admiral => Err(Refusal::Invalid(why.into())),
    }
}

impl Router {
    /// Stops one worker: gracefully, or (`now`) by killing its process at once.
    pub(super) fn stop(&mut self, waiter: Waiter, worker: Target, now: bool) {
        let id = match worker_named(worker, "stop the admiral with a shutdown") {
            Ok(id) => id,
            Err(refusal) => return self.reply(waiter, Reply::Refused(refusal)),
        };
        if let Err(reason) = self.lifecycle.can_stop(&id) {
            return self.reply(waiter, Reply::Refused(Refusal::Invalid(reason)));
        }
        self.control
            .stops
            .entry(id.clone())
            .or_default()
            .push(waiter);
        let input = if now {
            Input::StopNow(id)
        } else {
            Input::Stop(id)
        };
        self.lifecycle_input(input);
    }

    /// A total shutdown, asked for by the admiral's handle, a signal, or any worker.
    pub(super) fn total_shutdown(&mut self) {
        if self.handing_off {
            return;
        }
        tracing::info!(target: "fleet::shutdown", "total shutdown");
        self.publish(FleetEvent::ShuttingDown);
        if self.config.host_checkpoints.is_some() && !self.lifecycle.is_stopping() {
            // On several hosts, the ranges go to the other hosts first, resumably: every shard
            // closes and hands its session over, the agent writes them and gives the ranges up.
            self.handing_off = true;
            self.lifecycle_input(Input::Fence);
            // A service run once per bot stops before it is given up: the host that takes it
            // over never runs it beside this one.
            self.park_singletons();
            self.arm(super::Timer::HandOff, super::hosts::HAND_OFF_WITHIN);
            self.hand_off_if_fenced();
            return;
        }
        self.lifecycle_input(Input::Shutdown);
    }

    pub(super) fn restart(&mut self, waiter: Waiter, worker: Target, mode: RestartMode) {
        let id = match worker_named(worker, "the admiral cannot be restarted") {
            Ok(id) => id,
            Err(refusal) => return self.reply(waiter, Reply::Refused(refusal)),
        };
        if let Err(reason) = self.lifecycle.can_restart(&id, mode) {
            return self.reply(waiter, Reply::Refused(Refusal::RestartFailed(reason)));
        }
        let waiters = self.control.restarts.entry(id.clone()).or_default();
        waiters.push(waiter);
        self.lifecycle_input(Input::Restart(id, mode));
    }

    pub(super) fn restart_all(
        &mut self,
        waiter: Waiter,
        group: Group,
        mode: RestartMode,
        at_once: u32,
    ) {
        let queue = self
            .lifecycle
            .workers()
            // A range another host runs now is restarted there.
            .filter(|w| !w.retired)
            .filter(|w| match group {
                Group::Clusters => matches!(w.id, WorkerId::Cluster(_)),
                Group::Services => matches!(w.id, WorkerId::Service(_)),
            })
            .map(|w| w.id.clone())
            .collect();
        let rolling = self.calls.next_id();
        let r = Rolling {
            waiter,
            mode,
            at_once: at_once.max(1) as usize,
            queue,
            running: Vec::new(),
            outcomes: BTreeMap::new(),
        };
        self.control.rollings.insert(rolling, r);
        self.roll(rolling);
    }

    /// A reshard asked for: an exact total starts now; otherwise Discord's recommendation is
    /// fetched first, off the actor.
    pub(super) fn request_reshard(
        &mut self,
        waiter: Waiter,
        count: ShardCount,
        clusters: Option<u32>,
    ) {
        // On a split bot this host may be readying another host's reshard, which this one may
        // win over: the split reshard checks for itself.
        let split = self.config.host_checkpoints.is_some();
        if !split && let Err(reason) = self.lifecycle.can_reshard() {
            return self.reply(waiter, Reply::Refused(Refusal::ReshardFailed(reason)));
        }
        if let ShardCount::Exact(_) = count {
            return self.reshard(waiter, count, 0, clusters);
        }
        let recommend = (self.config.recommend)();
        let inbox = self.inbox.clone();
        self.user.spawn(async move {
            let recommended = recommend.await;
            let message = Inbox::Recommended {
                waiter,
                count,
                clusters,
                recommended,
            };
            let _ = inbox.send(message).await;
        });
    }

    /// Starts a reshard to the total `count` gives with `recommended` shards recommended.
    pub(super) fn reshard(
        &mut self,
        waiter: Waiter,
        count: ShardCount,
        recommended: u32,
        clusters: Option<u32>,
    ) {
        if self.config.host_checkpoints.is_some() {
            // Every host plans the same ranges: the new plan goes live on all of them at once.
            return self.begin_split_reshard(waiter, count, recommended, clusters);
        }
        match self.plan_reshard(count, recommended, clusters) {
            Ok(next) => {
                let ids = next.clusters.iter().map(|c| c.id).collect();
                self.next_plan = Some(next);
                self.control.reshard = Some(waiter);
                self.lifecycle_input(Input::Reshard(ids));
            }
            Err(reason) => self.reply(waiter, Reply::Refused(Refusal::ReshardFailed(reason))),
        }
    }

    /// The plan of the generation a reshard would start, or why there is none.
    fn plan_reshard(
        &self,
        count: ShardCount,
        recommended: u32,
        clusters: Option<u32>,
    ) -> Result<crate::admiral::ShardPlan, String> {
        self.lifecycle.can_reshard()?;
        let max_concurrency = self.plan.max_concurrency;
        let total = plan::shard_total(count, recommended, max_concurrency)
            .map_err(|error| error.to_string())?;
        // A reshard can come from any worker: it may not make the admiral start processes
        // without bound.
        if total > MAX_SHARDS {
            return Err(format!("{total} shards asked for; at most {MAX_SHARDS}"));
        }
        let wanted = clusters.unwrap_or(self.plan.clusters.len() as u32);
        if wanted > MAX_CLUSTERS {
            return Err(format!(
                "{wanted} clusters asked for; at most {MAX_CLUSTERS}"
            ));
        }
        // This host keeps its share of the bot: on a bot split over machines, the slice scales
        // with the total, so the hosts together still run every shard exactly once.
        let from_total = self.plan.shard_total;
        let (first, last) = self.plan.slice().unwrap_or((0, from_total - 1));
        let Some((new_first, new_last)) = plan::scale_slice(first, last, from_total, total) else {
            return Err(format!(
                "this host runs shards {first}..={last} of {from_total}; scaled to {total} shards its share is empty"
            ));
        };
        let next = plan::plan(PlanInput {
            count: ShardCount::Exact(total),
            recommended,
            max_concurrency,
            clusters: wanted,
            first_shard: Some(new_first),
            last_shard: Some(new_last),
        })
        .map_err(|error| error.to_string())?;
        tracing::info!(
            target: "fleet::admiral",
            from = from_total,
            to = total,
            clusters = next.clusters.len(),
            "resharding: this host's shards {first}..={last} of {from_total} become {new_first}..={new_last} of {total}"
        );
        Ok(next)
    }

    /// Starts the next restarts of a rolling restart, or answers it once all are done.
    fn roll(&mut self, rolling: u64) {
        loop {
            let Some(r) = self.control.rollings.get_mut(&rolling) else {
                return;
            };
            if r.running.len() >= r.at_once {
                return;
            }
            let Some(next) = r.queue.pop_front() else {
                if r.running.is_empty() {
                    let r = self.control.rollings.remove(&rolling).expect("present");
                    self.reply(r.waiter, Reply::Outcomes(r.outcomes.into_iter().collect()));
                }
                return;
            };
            let mode = r.mode;
            if let Err(reason) = self.lifecycle.can_soft_restart(&next) {
                r.outcomes.insert(next.target(), Outcome::Error(reason));
                continue;
            }
            r.running.push(next.clone());
            tracing::info!(target: "fleet::restart", worker = %next, ?mode, "rolling restart");
            self.lifecycle_input(Input::Restart(next, mode));
        }
    }

    /// Answers everyone waiting for a restart of `worker`.
    fn finish_restart(&mut self, worker: &WorkerId, result: Result<(), &str>) {
        let rolling = self
            .control
            .rollings
            .iter()
            .find(|(_, r)| r.running.contains(worker))
            .map(|(id, _)| *id);
        if let Some(rolling) = rolling
            && let Some(r) = self.control.rollings.get_mut(&rolling)
        {
            r.running.retain(|w| w != worker);
            let outcome = match result {
                Ok(()) => Outcome::Ok(Payload::empty()),
                Err(reason) => Outcome::Error(reason.to_owned()),
            };
            r.outcomes.insert(worker.target(), outcome);
            self.roll(rolling);
        }
        for waiter in self.control.restarts.remove(worker).unwrap_or_default() {
            let reply = match &result {
                Ok(()) => Reply::Done,
                Err(reason) => Reply::Refused(Refusal::RestartFailed((*reason).to_owned())),
            };
            self.reply(waiter, reply);
        }
    }

    /// The lifecycle reports something: it is published, then those waiting on it hear.
    pub(super) fn on_lifecycle_event(&mut self, event: &LifecycleEvent) {
        // The plan changes before anyone hears of the new generation.
        if matches!(event, LifecycleEvent::Resharded { .. })
            && let Some(next) = self.next_plan.take()
        {
            self.plan = next.clone();
            self.generation += 1;
            let _ = self.plan_tx.send(next);
        }
        // Logged and published first: what it triggers (a next restart, say) comes after it.
        crate::admiral::events::log(event);
        self.publish(FleetEvent::Lifecycle(event.clone()));
        self.split_on_lifecycle(event);
        match event {
            LifecycleEvent::Replaced { worker, .. } => self.finish_restart(worker, Ok(())),
            LifecycleEvent::SoftKillPending {
                process, notice, ..
            } => {
                let notice_ms = notice.as_millis() as u64;
                let down = Down::Message {
                    from: Target::Admiral,
                    event: SOFT_KILL_EVENT.to_owned(),
                    payload: Payload::encode(&notice_ms).unwrap_or_default(),
                };
                self.links.send_to_process(*process, &down);
            }
            LifecycleEvent::WorkerStopped(worker) => {
                for waiter in self.control.stops.remove(worker).unwrap_or_default() {
                    self.reply(waiter, Reply::Done);
                }
                self.finish_create(worker, Err("it was stopped before it was ready"));
            }
            LifecycleEvent::Resharded { .. } => {
                if let Some(waiter) = self.control.reshard.take() {
                    self.reply(waiter, Reply::Done);
                }
            }
            LifecycleEvent::ReshardFailed { reason } => {
                self.next_plan = None;
                if let Some(waiter) = self.control.reshard.take() {
                    let refusal = Refusal::ReshardFailed(reason.clone());
                    self.reply(waiter, Reply::Refused(refusal));
                }
            }
            LifecycleEvent::RestartFailed { worker, reason }
            | LifecycleEvent::Failed { worker, reason } => {
                self.finish_restart(worker, Err(reason));
                self.finish_create(worker, Err(reason));
            }
            LifecycleEvent::AllReady { live, failed } => {
                let _ = self.ready.send(Some((*live, *failed)));
            }
            LifecycleEvent::Ready(worker) => {
                // The end of a hard restart, or of a creation.
                self.finish_restart(worker, Ok(()));
                self.finish_create(worker, Ok(()));
            }
            _ => {}
        }
    }
}
