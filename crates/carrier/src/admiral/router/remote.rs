//! Calls across hosts, on a bot whose ranges Redis assigns: a forward to a cluster another host
//! runs goes to that host's admiral over the bus ([`crate::hosts::bus`]), which asks its cluster
//! and publishes the outcome back. The asking router tracks the forward in its call table like
//! any other, under a process number that stands for the other host, so a remote target ends
//! the same ways a local one does: ok, error, timed out at the deadline, or unavailable (no
//! host listens, the host gave the range up, or it does not run the cluster).
//!
//! Broadcasts go to every host on `bus:all`; each delivers to its own workers. Services run on
//! every host, so a service is asked on this host; except one run once per bot, which Redis
//! assigns to one host like a range and is reached there the same way as a cluster.
//!
//! Restarts and stops of one cluster (or service run once per bot) are relayed whole to its host, and its reply comes back
//! as it is. Requests about the whole bot (a rolling restart of every cluster, the workers
//! list) ask each other host's admiral for its own part and merge the parts ([`Merge`]); stats
//! gather each host's own snapshot and sum them ([`Gather`]). A host asked for its part never
//! asks on.
//!
//! The bus also carries a reshard of the whole bot between its hosts (`Body::Reshard`,
//! `ReshardReady`, `ReshardOff`); their meaning is in `split`.
//!
//! A frame from the bus is hostile until proven otherwise: it must decode, name this bot's
//! version of the bus and a known cluster; a host may have only [`MAX_ASKS_PER_HOST`] asks open
//! here; answers count only from the host that was asked.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Router;
use super::calls::{Route, Waiter};
use super::commands::Ask;
use crate::admiral::WorkerId;
use crate::admiral::lifecycle::ProcessId;
use crate::hosts::bus::Channel;
use crate::ipc::client::Message;
use crate::ipc::proto::{Down, Outcome, Payload, Reply, Request, Target, clamp_timeout};

/// The bus's wire version: a frame of another is dropped.
const BUS_VERSION: u8 = 1;
/// Asks one host may have open at this host; more are answered "overloaded" at once.
pub(super) const MAX_ASKS_PER_HOST: usize = 4096;
/// Process numbers from here up stand for other hosts in the call table (local processes count
/// up from 1 and never get near).
const REMOTE_PROCESS_BASE: ProcessId = 1 << 62;
/// Time kept back from a forward's deadline for the way across Redis and back.
const TRANSIT: Duration = Duration::from_millis(50);

/// One message on the bus.
#[derive(Debug, Serialize, Deserialize)]
struct Frame {
    v: u8,
    /// The sending host.
    host: String,
    body: Body,
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) enum Body {
    /// Ask your cluster `target` and answer [`Body::Answer`] with `id`.
    Ask {
        id: u64,
        from: Target,
        target: Target,
        timeout_ms: u64,
        ask: Ask,
    },
    /// The outcome of the sender's ask `id`.
    Answer { id: u64, outcome: Outcome },
    /// Make a stats snapshot of your own (workers within `deadline_ms`) and answer
    /// [`Body::Answer`] with `id`.
    Stats {
        id: u64,
        deadline_ms: u64,
        timeout_ms: u64,
    },
    /// Deliver to every worker of yours, and the admiral's handlers.
    Broadcast {
        from: Target,
        event: String,
        payload: Payload,
    },
    /// Ready your part of reshard `id` (the ranges `assign` names you for, of `total` shards in
    /// `ranges`) in standby, and say so ([`Body::ReshardReady`]) within `within_ms`.
    Reshard {
        id: String,
        total: u32,
        ranges: u32,
        assign: Vec<(u32, String)>,
        within_ms: u64,
    },
    /// The sender's part of reshard `id` is ready.
    ReshardReady { id: String },
    /// Reshard `id` is called off (by the coordinator), or the sender's part failed.
    ReshardOff { id: String, reason: String },
}

/// The router's records of the other hosts.
#[derive(Debug, Default)]
pub(super) struct Remote {
    /// Which host runs each range, as Redis last said.
    owners: BTreeMap<u32, String>,
    /// Which host runs each service run once per bot, as Redis last said.
    service_owners: BTreeMap<String, String>,
    /// The hosts with a live lease, as Redis last said (those running no range too), and the
    /// most ranges each has room for.
    hosts: BTreeMap<String, u32>,
    /// The process number standing for each host asked so far.
    processes: HashMap<String, ProcessId>,
    /// Asks each other host has open here.
    open: HashMap<String, usize>,
    /// Fleet-wide stats being gathered from the other hosts.
    gather: Option<Gather>,
    /// Replies being merged from every host's part (a rolling restart of the whole bot).
    merges: HashMap<u64, Merge>,
    /// All of them.
    open_total: usize,
}

/// One reply made of every host's part.
#[derive(Debug)]
pub(super) struct Merge {
    waiter: Waiter,
    /// Parts not in yet.
    remaining: usize,
    /// A rolling restart's: one outcome per worker.
    outcomes: Vec<(Target, Outcome)>,
    /// A workers listing's (`Some`): every host's workers.
    workers: Option<Vec<crate::ipc::proto::WorkerInfo>>,
}

/// The other hosts' stats snapshots for the askers of the whole bot's.
#[derive(Debug)]
pub(super) struct Gather {
    /// Snapshots asked for and not in yet: by ask id, the host.
    asks: HashMap<u64, String>,
    /// Snapshots in.
    got: Vec<(String, crate::stats::FleetStats)>,
    /// Hosts that failed to answer.
    missing: Vec<String>,
    /// This host's, once its round ended.
    here: Option<Result<std::sync::Arc<crate::stats::FleetStats>, String>>,
    /// The askers' forwards.
    waiters: Vec<u64>,
    timer: tokio_util::time::delay_queue::Key,
}

impl Remote {
    fn process(&mut self, host: &str) -> ProcessId {
        let next = REMOTE_PROCESS_BASE + self.processes.len() as u64;
        *self.processes.entry(host.to_owned()).or_insert(next)
    }
}

impl Router {
    /// The other host that runs `target` now, when it is a cluster or a service run once per
    /// bot that this host does not run.
    pub(super) fn remote_owner(&self, target: &Target) -> Option<String> {
        let bus = self.config.host_bus.as_ref()?;
        let host = match target {
            Target::Cluster(cluster) => {
                let here = self
                    .lifecycle
                    .worker(&WorkerId::Cluster(*cluster))
                    .is_some_and(|w| !w.retired && !w.state.is_terminal());
                if here {
                    return None;
                }
                self.remote.owners.get(cluster)?
            }
            Target::Service(name) if self.singletons.is_singleton(name) => {
                let here = self
                    .lifecycle
                    .worker(&WorkerId::Service(name.clone()))
                    .is_some_and(|w| !w.state.is_terminal());
                if here {
                    return None;
                }
                self.remote.service_owners.get(name)?
            }
            _ => return None,
        };
        (host != bus.host()).then(|| host.clone())
    }

    /// Sends `ask` for `target` to `host`'s admiral, tracked like a local forward.
    pub(super) fn forward_remote(
        &mut self,
        host: &str,
        from: &Target,
        target: Target,
        ask: Ask,
        deadline: Duration,
        route: Route,
    ) {
        let id = self.calls.next_id();
        let frame = self.frame(Body::Ask {
            id,
            from: from.clone(),
            target: target.clone(),
            timeout_ms: u64::try_from(deadline.saturating_sub(TRANSIT).as_millis())
                .unwrap_or(u64::MAX),
            ask,
        });
        let queued = frame.is_some_and(|body| {
            self.config
                .host_bus
                .as_ref()
                .is_some_and(|bus| bus.publish(Channel::Host(host.to_owned()), body, Some(id)))
        });
        if !queued {
            tracing::warn!(target: "fleet::ipc", %target, host, "request to another host not sent");
            self.undelivered(route, target);
            return;
        }
        let process = self.remote.process(host);
        self.calls.track(id, process, target, route, deadline);
    }

    /// Runs `request` about `worker` (a restart or stop) on the host that runs it.
    pub(super) fn relay(
        &mut self,
        from: &Target,
        waiter: Waiter,
        worker: Target,
        request: crate::ipc::proto::Request,
        timeout: Duration,
    ) {
        let Some(host) = self.remote_owner(&worker) else {
            self.reply(
                waiter,
                Reply::Refused(crate::ipc::proto::Refusal::Unavailable(worker)),
            );
            return;
        };
        let deadline = timeout.saturating_sub(timeout / 20);
        let ask = Ask::Relay(Box::new(request));
        self.forward_remote(&host, from, worker, ask, deadline, Route::Relay(waiter));
    }

    /// A rolling restart of every cluster of the bot: each host restarts its own (this one
    /// here, the others asked over the bus), and the asker hears every cluster's outcome once
    /// all hosts are done; a host that cannot be asked has its clusters' outcomes unavailable.
    pub(super) fn restart_all_hosts(
        &mut self,
        from: &Target,
        waiter: Waiter,
        mode: crate::ipc::proto::RestartMode,
        at_once: u32,
        timeout: Duration,
    ) {
        let me = self.config.host_bus.as_ref().map(|b| b.host().to_owned());
        let mut by_host: BTreeMap<String, Vec<Target>> = BTreeMap::new();
        for (range, host) in &self.remote.owners {
            if Some(host) != me.as_ref() && self.remote_owner(&Target::Cluster(*range)).is_some() {
                by_host
                    .entry(host.clone())
                    .or_default()
                    .push(Target::Cluster(*range));
            }
        }
        let id = self.open_merge(waiter, by_host.len() + 1, false);
        let deadline = timeout.saturating_sub(timeout / 20);
        let group = crate::ipc::proto::Group::Clusters;
        for (host, covers) in by_host {
            let request = Request::RestartAll {
                group,
                mode,
                at_once,
            };
            self.ask_part(&host, from, (id, covers), request, deadline);
        }
        let here = Waiter::Merge {
            id,
            covers: Vec::new(),
        };
        self.restart_all(here, group, mode, at_once);
    }

    /// Every worker of the bot: this host's, and each other host's asked over the bus.
    pub(super) fn workers_of_hosts(&mut self, from: &Target, waiter: Waiter, timeout: Duration) {
        let hosts = self.other_hosts();
        let id = self.open_merge(waiter, hosts.len() + 1, true);
        let deadline = timeout.saturating_sub(timeout / 20);
        for host in hosts {
            self.ask_part(&host, from, (id, Vec::new()), Request::Workers, deadline);
        }
        let mine = Payload::encode(&self.workers_info())
            .map_or_else(|e| Outcome::Error(e.to_string()), Outcome::Ok);
        self.merge_part(id, &[], Reply::Outcome(mine));
    }

    /// Asks `host`'s admiral for its own part of a merged reply (the merge's number, and the
    /// targets the part stands for should it fail): `request`, run there for that host only.
    fn ask_part(
        &mut self,
        host: &str,
        from: &Target,
        (id, covers): (u64, Vec<Target>),
        request: Request,
        deadline: Duration,
    ) {
        let part = Route::Relay(Waiter::Merge { id, covers });
        let ask = Ask::Relay(Box::new(request));
        self.forward_remote(host, from, Target::Admiral, ask, deadline, part);
    }

    /// The other hosts of the bot (those that run ranges, and those with a live lease that
    /// run services only), by Redis's last word.
    fn other_hosts(&self) -> Vec<String> {
        let me = self.config.host_bus.as_ref().map(|b| b.host().to_owned());
        let mut hosts: Vec<String> = self.remote.owners.values().cloned().collect();
        hosts.extend(self.remote.hosts.keys().cloned());
        hosts.sort_unstable();
        hosts.dedup();
        hosts.retain(|h| Some(h) != me.as_ref());
        hosts
    }

    /// Opens a reply of `parts` hosts' parts (`workers`: a workers listing); its number.
    fn open_merge(&mut self, waiter: Waiter, parts: usize, workers: bool) -> u64 {
        let id = self.calls.next_id();
        let merge = Merge {
            waiter,
            remaining: parts,
            outcomes: Vec::new(),
            workers: workers.then(Vec::new),
        };
        self.remote.merges.insert(id, merge);
        id
    }

    /// One host's part of a merged reply arrived (for the targets it `covers`, if it failed).
    pub(super) fn merge_part(&mut self, id: u64, covers: &[Target], reply: Reply) {
        let Some(merge) = self.remote.merges.get_mut(&id) else {
            return;
        };
        if let Some(workers) = &mut merge.workers {
            // A host that cannot answer lists nothing; its workers are missing from the list.
            if let Reply::Outcome(Outcome::Ok(payload)) = reply
                && let Ok(theirs) = payload.decode::<Vec<crate::ipc::proto::WorkerInfo>>()
            {
                workers.extend(theirs);
            }
            merge.remaining -= 1;
            if merge.remaining == 0
                && let Some(merge) = self.remote.merges.remove(&id)
            {
                let mut workers = merge.workers.unwrap_or_default();
                workers.sort_by(|a, b| a.worker.cmp(&b.worker).then(a.host.cmp(&b.host)));
                let outcome = Payload::encode(&workers)
                    .map_or_else(|e| Outcome::Error(e.to_string()), Outcome::Ok);
                self.reply(merge.waiter, Reply::Outcome(outcome));
            }
            return;
        }
        match reply {
            Reply::Outcomes(outcomes) => merge.outcomes.extend(outcomes),
            Reply::Refused(crate::ipc::proto::Refusal::Unavailable(_)) => merge
                .outcomes
                .extend(covers.iter().map(|t| (t.clone(), Outcome::Unavailable))),
            other => {
                let error = match other {
                    Reply::Refused(refusal) => refusal.to_string(),
                    other => format!("unexpected reply: {other:?}"),
                };
                merge.outcomes.extend(
                    covers
                        .iter()
                        .map(|t| (t.clone(), Outcome::Error(error.clone()))),
                );
            }
        }
        merge.remaining -= 1;
        if merge.remaining > 0 {
            return;
        }
        if let Some(mut merge) = self.remote.merges.remove(&id) {
            merge.outcomes.sort_by(|a, b| a.0.cmp(&b.0));
            self.reply(merge.waiter, Reply::Outcomes(merge.outcomes));
        }
    }

    /// Which host runs each range, as Redis last said.
    pub(super) fn remote_owners(&self) -> &BTreeMap<u32, String> {
        &self.remote.owners
    }

    /// Publishes `body` on `channel`; whether it was queued.
    pub(super) fn publish_bus(&self, channel: Channel, body: Body) -> bool {
        let Some(bus) = &self.config.host_bus else {
            return false;
        };
        self.frame(body)
            .is_some_and(|frame| bus.publish(channel, frame, None))
    }

    /// Delivers a broadcast to the bot's other hosts.
    pub(super) fn broadcast_remote(&self, from: &Target, event: &str, payload: &Payload) {
        let Some(bus) = &self.config.host_bus else {
            return;
        };
        let body = Body::Broadcast {
            from: from.clone(),
            event: event.to_owned(),
            payload: payload.clone(),
        };
        if let Some(frame) = self.frame(body)
            && !bus.publish(Channel::All, frame, None)
        {
            tracing::warn!(target: "fleet::ipc", event, "broadcast not sent to the other hosts: the bus is full");
        }
    }

    /// Which host runs which range and which service run once per bot now (from Redis):
    /// forwards to hosts that run nothing any more end as unavailable.
    pub(super) fn on_owners(&mut self, owners: crate::hosts::assign::Owners) {
        let gone: Vec<ProcessId> = self
            .remote
            .processes
            .iter()
            .filter(|(host, _)| {
                !owners.ranges.values().any(|h| h == *host)
                    && !owners.services.values().any(|h| h == *host)
            })
            .map(|(_, process)| *process)
            .collect();
        self.remote.owners = owners.ranges;
        self.remote.service_owners = owners.services;
        for process in gone {
            for answer in self.calls.orphaned(process) {
                self.answer(answer);
            }
        }
        self.split_owners_changed();
    }

    /// The hosts with a live lease now, and their room.
    pub(super) fn on_hosts(&mut self, hosts: BTreeMap<String, u32>) {
        self.remote.hosts = hosts;
    }

    /// The most ranges host `host` has room for, as Redis last said (unbounded if unknown).
    pub(super) fn room_of(&self, host: &str) -> u32 {
        self.remote.hosts.get(host).copied().unwrap_or(u32::MAX)
    }

    /// A bus publish reached no host: its forward ends as unavailable.
    pub(super) fn on_undelivered(&mut self, forward: u64) {
        if let Some(gather) = &mut self.remote.gather
            && let Some(host) = gather.asks.remove(&forward)
        {
            // Nobody listens on that host's channel: it is missing, at once.
            gather.missing.push(host);
            self.stats_gathered(false);
            return;
        }
        if let Some(answer) = self.calls.answered(forward, None, Outcome::Unavailable) {
            self.answer(answer);
        }
    }

    /// A message from another host's admiral.
    pub(super) fn on_bus(&mut self, bytes: &[u8]) {
        let frame: Frame = match rmp_serde::from_slice(bytes) {
            Ok(frame) => frame,
            Err(error) => {
                tracing::warn!(target: "fleet::ipc", %error, "dropped a malformed bus message");
                return;
            }
        };
        let me = self
            .config
            .host_bus
            .as_ref()
            .map(crate::hosts::bus::BusOut::host);
        if frame.v != BUS_VERSION || me == Some(frame.host.as_str()) {
            return;
        }
        match frame.body {
            Body::Ask {
                id,
                from,
                target,
                timeout_ms,
                ask,
            } => self.remote_ask(frame.host, id, &from, target, timeout_ms, ask),
            Body::Answer { id, outcome } => {
                if self.gathered(&frame.host, id, &outcome).is_some() {
                    return;
                }
                let Some(&process) = self.remote.processes.get(&frame.host) else {
                    return;
                };
                if let Some(answer) = self.calls.answered(id, Some(process), outcome) {
                    self.answer(answer);
                }
            }
            Body::Broadcast {
                from,
                event,
                payload,
            } => self.deliver_here(from, event, payload),
            Body::Stats {
                id,
                deadline_ms,
                timeout_ms,
            } => {
                let waiter = Waiter::Remote {
                    host: frame.host,
                    id,
                    whole: false,
                };
                let (deadline, timeout) = (clamp_timeout(deadline_ms), clamp_timeout(timeout_ms));
                // This host's own snapshot only: asking on would go round in circles.
                self.stats(waiter, deadline, timeout, false);
            }
            Body::Reshard {
                id,
                total,
                ranges,
                assign,
                within_ms,
            } => self.on_split_reshard(frame.host, id, (total, ranges), &assign, within_ms),
            Body::ReshardReady { id } => self.on_split_part(&frame.host, &id, None),
            Body::ReshardOff { id, reason } => {
                self.on_split_part(&frame.host, &id, Some(reason));
            }
        }
    }

    /// Asks every other host of the bot for its stats snapshot (workers within
    /// `deadline`), unless a gathering is under way; the ones not in by `within` are missing.
    pub(super) fn gather_stats(&mut self, deadline: Duration, within: Duration) {
        let Some(bus) = self.config.host_bus.clone() else {
            return;
        };
        if self.remote.gather.is_some() {
            return;
        }
        let hosts = self.other_hosts();
        if hosts.is_empty() {
            return;
        }
        let mut asks = HashMap::new();
        for host in hosts {
            let id = self.calls.next_id();
            let body = Body::Stats {
                id,
                deadline_ms: u64::try_from(deadline.as_millis()).unwrap_or(u64::MAX),
                timeout_ms: u64::try_from(within.as_millis()).unwrap_or(u64::MAX),
            };
            if let Some(frame) = self.frame(body)
                && bus.publish(Channel::Host(host.clone()), frame, Some(id))
            {
                asks.insert(id, host);
            }
        }
        let timer = self.arm(super::Timer::StatsGather, within);
        self.remote.gather = Some(Gather {
            asks,
            got: Vec::new(),
            missing: Vec::new(),
            here: None,
            waiters: Vec::new(),
            timer,
        });
    }

    /// This host's round ended: the askers of the whole bot's wait for the other hosts (when
    /// a gathering runs), or hear this host's snapshot.
    pub(super) fn gathered_here(
        &mut self,
        waiters: Vec<u64>,
        stats: Result<std::sync::Arc<crate::stats::FleetStats>, String>,
    ) {
        if waiters.is_empty() {
            return;
        }
        let Some(gather) = &mut self.remote.gather else {
            // No other host: the bot's snapshot is this host's.
            let host = self.config.host_bus.as_ref().map(|b| b.host().to_owned());
            let stats = stats.map(|s| match host {
                Some(host) => {
                    std::sync::Arc::new((*s).clone().with_hosts(&host, Vec::new(), Vec::new()))
                }
                None => s,
            });
            self.answer_stats(&waiters, stats.as_deref());
            return;
        };
        gather.waiters.extend(waiters);
        gather.here = Some(stats);
        self.stats_gathered(false);
    }

    /// Answers the askers of the whole bot's stats once every host's snapshot is in (or,
    /// `due`, with those in by now).
    pub(super) fn stats_gathered(&mut self, due: bool) {
        let Some(gather) = &self.remote.gather else {
            return;
        };
        if gather.here.is_none() && !due {
            return;
        }
        if !gather.asks.is_empty() && !due {
            return;
        }
        let Some(gather) = self.remote.gather.take() else {
            return;
        };
        if !due {
            self.timers.remove(&gather.timer);
        }
        let Some(here) = gather.here else {
            // This host's round has not ended: its askers hear it alone when it does.
            return;
        };
        let host = self
            .config
            .host_bus
            .as_ref()
            .map(|b| b.host().to_owned())
            .unwrap_or_default();
        let mut missing = gather.missing;
        missing.extend(gather.asks.into_values());
        missing.sort_unstable();
        let merged = here.map(|stats| (*stats).clone().with_hosts(&host, gather.got, missing));
        self.answer_stats(&gather.waiters, merged.as_ref());
    }

    /// A host's stats snapshot (or its failure) arrived: `None` if `id` is no ask of the
    /// gathering from `host`.
    fn gathered(&mut self, host: &str, id: u64, outcome: &Outcome) -> Option<()> {
        let gather = self.remote.gather.as_mut()?;
        if gather.asks.get(&id).is_none_or(|h| h != host) {
            return None;
        }
        gather.asks.remove(&id);
        let stats = match outcome {
            Outcome::Ok(payload) => payload.decode().map_err(|e| e.to_string()),
            other => Err(format!("{other:?}")),
        };
        match stats {
            Ok(stats) => gather.got.push((host.to_owned(), stats)),
            Err(error) => {
                tracing::warn!(target: "fleet::stats", host, %error, "another host's stats snapshot failed");
                gather.missing.push(host.to_owned());
            }
        }
        self.stats_gathered(false);
        Some(())
    }

    /// Another host asks one of this host's clusters.
    fn remote_ask(
        &mut self,
        host: String,
        id: u64,
        from: &Target,
        target: Target,
        timeout_ms: u64,
        ask: Ask,
    ) {
        let open = self.remote.open.get(&host).copied().unwrap_or(0);
        let whole = matches!(ask, Ask::Relay(_));
        let waiter = Waiter::Remote { host, id, whole };
        // A rolling restart of the other host's clusters goes to its admiral.
        let rolling = target == Target::Admiral
            && matches!(&ask, Ask::Relay(r) if matches!(**r, Request::RestartAll { group: crate::ipc::proto::Group::Clusters, .. } | Request::Workers));
        let reachable = match &target {
            Target::Cluster(_) => true,
            Target::Service(name) => self.singletons.is_singleton(name),
            Target::Admiral => false,
        };
        if !reachable && !rolling {
            let error = format!("{target} is not reached across hosts");
            self.reply(waiter, Reply::Outcome(Outcome::Error(error)));
            return;
        }
        if open >= MAX_ASKS_PER_HOST || self.remote.open_total >= 4 * MAX_ASKS_PER_HOST {
            let error = format!("{target}'s host is overloaded with requests from other hosts");
            self.reply(waiter, Reply::Outcome(Outcome::Error(error)));
            return;
        }
        if let Waiter::Remote { host, .. } = &waiter {
            *self.remote.open.entry(host.clone()).or_default() += 1;
            self.remote.open_total += 1;
        }
        let timeout = clamp_timeout(timeout_ms);
        // Never passed on again: two hosts with different views of the owners must not bounce
        // a request between them.
        let here = self.remote_owner(&target).is_none() && self.live_conn(&target).is_ok();
        match ask {
            Ask::Relay(request) if rolling => match *request {
                // This host's own only: asking on would go round in circles.
                Request::RestartAll {
                    group,
                    mode,
                    at_once,
                } => self.restart_all(waiter, group, mode, at_once),
                _ => self.workers(waiter),
            },
            Ask::Relay(request) if here => {
                // Only a restart or stop of the target itself: anything else could send the
                // request on again.
                let about_target = matches!(
                    &*request,
                    Request::Restart { worker, .. } | Request::Stop { worker } | Request::StopNow { worker }
                        if *worker == target
                );
                if about_target {
                    self.on_request(from, waiter, *request, timeout);
                } else {
                    let error =
                        format!("only restarts and stops of {target} are relayed to its host");
                    self.reply(waiter, Reply::Outcome(Outcome::Error(error)));
                }
            }
            Ask::Relay(_) => self.reply(waiter, Reply::Outcome(Outcome::Unavailable)),
            ask => self.forward_here(from, target, ask, timeout, Route::Single(waiter)),
        }
    }

    /// Answers an ask of another host's (`id`) with what its forward came to.
    pub(super) fn reply_remote(&mut self, host: String, id: u64, whole: bool, reply: Reply) {
        if let Some(open) = self.remote.open.get_mut(&host) {
            self.remote.open_total = self.remote.open_total.saturating_sub(1);
            *open = open.saturating_sub(1);
            if *open == 0 {
                self.remote.open.remove(&host);
            }
        }
        let outcome = match reply {
            // A relayed request's reply goes back whole.
            Reply::Outcome(Outcome::Unavailable) if whole => Outcome::Unavailable,
            reply if whole => match Payload::encode(&reply) {
                Ok(reply) => Outcome::Ok(reply),
                Err(error) => Outcome::Error(error.to_string()),
            },
            Reply::Outcome(outcome) => outcome,
            Reply::Done => Outcome::Ok(Payload::empty()),
            Reply::Refused(crate::ipc::proto::Refusal::Unavailable(_)) => Outcome::Unavailable,
            Reply::Refused(refusal) => Outcome::Error(refusal.to_string()),
            other => Outcome::Error(format!("unexpected reply across hosts: {other:?}")),
        };
        let Some(frame) = self.frame(Body::Answer { id, outcome }) else {
            return;
        };
        if let Some(bus) = &self.config.host_bus
            && !bus.publish(Channel::Host(host), frame, None)
        {
            tracing::warn!(target: "fleet::ipc", "an answer to another host was not sent: the bus is full");
        }
    }

    /// Delivers a message to every serving worker of this host and the admiral's handlers.
    pub(super) fn deliver_here(&mut self, from: Target, event: String, payload: Payload) {
        let down = Down::Message {
            from,
            event,
            payload,
        };
        let Ok(body) = self.links.encode(&down) else {
            return;
        };
        let conns: Vec<_> = self.serving_conns().collect();
        for conn in conns {
            let _ = self.links.send_body(conn, &body);
        }
        if let Down::Message {
            from,
            event,
            payload,
        } = down
        {
            self.ipc.deliver(&Message {
                from,
                event,
                payload,
            });
        }
    }

    /// `body` as a frame from this host, or `None` (logged) when it is over the frame limit.
    fn frame(&self, body: Body) -> Option<Vec<u8>> {
        let host = self.config.host_bus.as_ref()?.host().to_owned();
        let frame = Frame {
            v: BUS_VERSION,
            host,
            body,
        };
        match rmp_serde::to_vec_named(&frame) {
            Ok(bytes) if bytes.len() <= self.config.max_frame => Some(bytes),
            Ok(bytes) => {
                tracing::warn!(target: "fleet::ipc", bytes = bytes.len(), max_frame = self.config.max_frame, "a message for another host is over the frame limit");
                None
            }
            Err(error) => {
                tracing::warn!(target: "fleet::ipc", %error, "a message for another host could not be encoded");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_hosts_get_their_own_process_numbers() {
        let frame = Frame {
            v: BUS_VERSION,
            host: "a".into(),
            body: Body::Ask {
                id: 7,
                from: Target::Cluster(1),
                target: Target::Cluster(2),
                timeout_ms: 900,
                ask: Ask::Command(Payload::encode(&"ping").unwrap()),
            },
        };
        let bytes = rmp_serde::to_vec_named(&frame).unwrap();
        let back: Frame = rmp_serde::from_slice(&bytes).unwrap();
        assert!(matches!(
            back.body,
            Body::Ask {
                id: 7,
                target: Target::Cluster(2),
                timeout_ms: 900,
                ..
            }
        ));
        assert!(rmp_serde::from_slice::<Frame>(b"\xc1garbage").is_err());

        let mut remote = Remote::default();
        let a = remote.process("a");
        let b = remote.process("b");
        assert_ne!(a, b);
        assert_eq!(remote.process("a"), a);
        assert!(a >= REMOTE_PROCESS_BASE && b >= REMOTE_PROCESS_BASE);
    }
}
