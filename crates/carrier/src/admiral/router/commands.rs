//! Commands: one target's handler answers (or the admiral's own), or every worker of a group
//! answers and the asker gets one outcome per target. Each forward is tracked in the call table
//! with a deadline a little before the asker's own.

use std::time::Duration;

use super::calls::{Route, Waiter};
use super::{Inbox, Router};
use crate::admiral::lifecycle::{ProcessId, WorkerId};
use crate::ipc::proto::{Down, Fetch, Group, Outcome, Payload, Refusal, Reply, Target};

/// Process number standing for the admiral itself when it answers commands.
pub(super) const ADMIRAL_PROCESS: ProcessId = 0;

/// What a forward asks of its target (also across hosts, on the bus).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(super) enum Ask {
    Command(Payload),
    Fetch(Fetch),
    CountGuilds,
    Stats,
    /// Deliver a message (answered once it is queued to the target).
    Message {
        event: String,
        payload: Payload,
    },
    /// Run a request about the target (a restart or stop) on the host that runs it; its whole
    /// reply comes back. Only ever sent across hosts.
    Relay(Box<crate::ipc::proto::Request>),
}

impl Router {
    pub(super) fn command(
        &mut self,
        from: &Target,
        waiter: Waiter,
        target: Target,
        payload: Payload,
        timeout: Duration,
    ) {
        if let Err(refusal) = self.known(&target) {
            self.reply(waiter, Reply::Refused(refusal));
            return;
        }
        let ask = Ask::Command(payload);
        self.forward(from, target, ask, timeout, Route::Single(waiter));
    }

    pub(super) fn command_all(
        &mut self,
        from: &Target,
        waiter: Waiter,
        group: Group,
        payload: &Payload,
        timeout: Duration,
    ) {
        let targets: Vec<Target> = if group == Group::Clusters && self.config.host_bus.is_some() {
            // A bot split across hosts: every cluster of the plan, wherever it runs.
            self.plan
                .clusters
                .iter()
                .map(|c| Target::Cluster(c.id))
                .collect()
        } else if group == Group::Services && self.config.host_bus.is_some() {
            // This host's services, and those run once per bot wherever they run.
            let mut targets: Vec<Target> = self
                .lifecycle
                .workers()
                .filter_map(|w| match &w.id {
                    WorkerId::Service(name) if !self.singletons.is_singleton(name) => {
                        Some(w.id.target())
                    }
                    _ => None,
                })
                .collect();
            targets.extend(self.singletons.names().cloned().map(Target::Service));
            targets
        } else {
            self.lifecycle
                .workers()
                .filter(|w| match group {
                    Group::Clusters => matches!(w.id, WorkerId::Cluster(_)),
                    Group::Services => matches!(w.id, WorkerId::Service(_)),
                })
                .map(|w| w.id.target())
                .collect()
        };
        self.fan_out(from, waiter, targets, timeout, || {
            Ask::Command(payload.clone())
        });
    }

    /// A command to the cluster that runs `shard` now, answered as a one-target fan-out (so
    /// the asker learns which cluster answered).
    pub(super) fn command_shard(
        &mut self,
        from: &Target,
        waiter: Waiter,
        shard: u32,
        payload: &Payload,
        timeout: Duration,
    ) {
        let owner = self
            .plan
            .clusters
            .iter()
            .find(|c| (c.first_shard..=c.last_shard).contains(&shard));
        if let Some(cluster) = owner {
            let targets = vec![Target::Cluster(cluster.id)];
            self.fan_out(from, waiter, targets, timeout, || {
                Ask::Command(payload.clone())
            });
        } else {
            let refusal = Refusal::Invalid(format!("shard {shard} is not run by this fleet"));
            self.reply(waiter, Reply::Refused(refusal));
        }
    }

    /// A command to the cluster that runs `guild`'s shard now.
    pub(super) fn command_guild(
        &mut self,
        from: &Target,
        waiter: Waiter,
        guild: u64,
        payload: &Payload,
        timeout: Duration,
    ) {
        let shard = super::fetch::guild_shard(guild, self.plan.shard_total);
        self.command_shard(from, waiter, shard, payload, timeout);
    }

    /// Every cluster of the current plan counts its guilds.
    pub(super) fn count_guilds(&mut self, from: &Target, waiter: Waiter, timeout: Duration) {
        let targets: Vec<Target> = self
            .plan
            .clusters
            .iter()
            .map(|c| Target::Cluster(c.id))
            .collect();
        self.fan_out(from, waiter, targets, timeout, || Ask::CountGuilds);
    }

    /// Asks every target and answers with one outcome per target once all have answered.
    pub(super) fn fan_out(
        &mut self,
        from: &Target,
        waiter: Waiter,
        targets: Vec<Target>,
        timeout: Duration,
        ask: impl Fn() -> Ask,
    ) {
        match self.calls.fan_out(waiter, targets.len()) {
            Ok(group) => {
                for target in targets {
                    self.forward(from, target, ask(), timeout, Route::Part(group));
                }
            }
            Err(answer) => self.answer(answer),
        }
    }

    /// Sends a command or lookup to one target, on this host or the host that runs it, tracked
    /// until it is answered, its process goes, or it times out.
    pub(super) fn forward(
        &mut self,
        from: &Target,
        target: Target,
        ask: Ask,
        timeout: Duration,
        route: Route,
    ) {
        if let Some(host) = self.remote_owner(&target) {
            // Answer a little before the asker gives up, so it hears "timed out" from us.
            let deadline = timeout.saturating_sub(timeout / 20);
            self.forward_remote(&host, from, target, ask, deadline, route);
        } else {
            self.forward_here(from, target, ask, timeout, route);
        }
    }

    /// Sends a command or lookup to one target's live process on this host (or runs the
    /// admiral's own command handler).
    pub(super) fn forward_here(
        &mut self,
        from: &Target,
        target: Target,
        ask: Ask,
        timeout: Duration,
        route: Route,
    ) {
        let id = self.calls.next_id();
        // Answer a little before the asker gives up, so it hears "timed out" from us.
        let deadline = timeout.saturating_sub(timeout / 20);
        if target == Target::Admiral {
            let Ask::Command(payload) = ask else {
                self.undelivered(route, target);
                return;
            };
            self.calls
                .track(id, ADMIRAL_PROCESS, target, route, deadline);
            let run = self.ipc.run_command(from.clone(), payload, deadline);
            let inbox = self.inbox.clone();
            self.user.spawn(async move {
                let outcome = run.await;
                let _ = inbox
                    .send(Inbox::Answer {
                        forward: id,
                        outcome,
                    })
                    .await;
            });
            return;
        }
        let Ok((conn, process)) = self.live_conn(&target) else {
            self.undelivered(route, target);
            return;
        };
        let message = matches!(ask, Ask::Message { .. });
        let down = match ask {
            Ask::Command(payload) => Down::Command {
                id,
                from: from.clone(),
                payload,
                timeout_ms: deadline.as_millis() as u64,
            },
            Ask::Fetch(query) => Down::Fetch { id, query },
            Ask::CountGuilds => Down::CountGuilds { id },
            Ask::Stats => Down::Stats { id },
            Ask::Message { event, payload } => Down::Message {
                from: from.clone(),
                event,
                payload,
            },
            Ask::Relay(_) => {
                self.undelivered(route, target);
                return;
            }
        };
        let sent = match self.links.encode(&down) {
            Ok(body) => self.links.send_body(conn, &body),
            Err(refusal) => Err(refusal),
        };
        if let Err(refusal) = sent {
            tracing::warn!(target: "fleet::ipc", %target, %refusal, "command not delivered");
            self.undelivered(route, target);
            return;
        }
        if message {
            // Nothing answers a message: it arrived once it is queued.
            if let Some(answer) = self
                .calls
                .settle(route, target, Outcome::Ok(Payload::empty()))
            {
                self.answer(answer);
            }
            return;
        }
        self.calls.track(id, process, target, route, deadline);
    }

    /// A forward that never left counts as its target being unavailable.
    pub(super) fn undelivered(&mut self, route: Route, target: Target) {
        if let Some(answer) = self.calls.settle(route, target, Outcome::Unavailable) {
            self.answer(answer);
        }
    }
}
