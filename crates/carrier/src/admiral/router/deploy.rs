//! Deploys, the router's part: checking and planning one, the build each worker's next process
//! runs, and the report once the rollout task is done (`admiral::deploy` runs it).

use std::sync::Arc;

use super::Router;
use super::calls::Waiter;
use crate::admiral::FleetEvent;
use crate::admiral::deploy::{self, Rollout};
use crate::admiral::lifecycle::{State, WorkerId};
use crate::admiral::process::WorkerCommand;
use crate::ipc::proto::{DeployPlan, DeployReport, Outcome, Payload, Refusal, Reply};

/// A deploy under way.
#[derive(Debug)]
pub(super) struct Deploying {
    /// Its build, the fleet's once every worker moved.
    build: Arc<WorkerCommand>,
    /// Identify grants when it started.
    granted_before: u64,
    /// The admiral re-executes itself once it succeeded.
    restart_admiral: bool,
}

impl Router {
    /// A deploy asked for: refused, answered (a dry run), or started on a task.
    pub(super) fn deploy(&mut self, waiter: Waiter, plan: DeployPlan) {
        let refuse = |router: &mut Self, waiter, why: String| {
            tracing::warn!(target: "fleet::restart", reason = %why, "deploy refused");
            router.reply(
                waiter,
                Reply::Refused(Refusal::Invalid(format!("deploy: {why}"))),
            );
        };
        if self.deploying.is_some() {
            return refuse(self, waiter, "another deploy is under way".to_owned());
        }
        if let Err(why) = self.lifecycle.can_reshard() {
            return refuse(self, waiter, why);
        }
        if plan.restart_admiral && self.config.admiral_grace.is_zero() {
            let why = "restart_admiral needs FleetOptions::admiral_grace: the workers would stop with the admiral";
            return refuse(self, waiter, why.to_owned());
        }
        let build = match deploy::check(&plan) {
            Ok(build) => Arc::new(build),
            Err(why) => return refuse(self, waiter, why),
        };
        let live = |w: &&crate::admiral::lifecycle::Worker| w.state == State::Live;
        let clusters = self
            .lifecycle
            .workers()
            .filter(live)
            .filter_map(|w| match w.id {
                WorkerId::Cluster(id) => {
                    let c = self.plan.clusters.iter().find(|c| c.id == id)?;
                    Some((id, u64::from(c.last_shard - c.first_shard + 1)))
                }
                WorkerId::Service(_) => None,
            })
            .collect();
        let services = self
            .lifecycle
            .workers()
            .filter(live)
            .filter_map(|w| match &w.id {
                WorkerId::Service(name) => Some(name.clone()),
                WorkerId::Cluster(_) => None,
            })
            .collect();
        let identify = self.identify.stats();
        let fleet = deploy::Fleet {
            clusters,
            services,
            budget: identify.sessions_remaining.zip(identify.sessions_total),
            notice: self.config.soft_kill_notice,
        };
        let report = match deploy::plan(&plan, &fleet) {
            Ok(report) => report,
            Err(why) => return refuse(self, waiter, why),
        };
        tracing::info!(target: "fleet::restart", %report, program = %plan.program.display(), "deploy");
        if plan.dry_run {
            return self.deployed(waiter, report);
        }
        self.deploying = Some(Deploying {
            build: build.clone(),
            granted_before: self.identifies_granted,
            restart_admiral: plan.restart_admiral,
        });
        let rollout = Rollout {
            ipc: self.ipc.clone(),
            events: self.events.subscribe(),
            inbox: self.inbox.clone(),
            build,
            plan,
            report,
        };
        let inbox = self.inbox.clone();
        self.user.spawn(async move {
            let report = deploy::roll(rollout).await;
            let _ = inbox.send(super::Inbox::Deployed { waiter, report }).await;
        });
    }

    /// Names the build `worker`'s next process runs (`None`: the fleet's).
    pub(super) fn set_build(&mut self, worker: WorkerId, build: Option<Arc<WorkerCommand>>) {
        match build {
            Some(build) => self.builds.insert(worker, build),
            None => self.builds.remove(&worker),
        };
    }

    /// A deploy is over: a full one makes its build the fleet's.
    pub(super) fn deployed(&mut self, waiter: Waiter, mut report: DeployReport) {
        let mut restart_admiral = false;
        if let Some(deploying) = self.deploying.take() {
            report.identifies_spent = self.identifies_granted - deploying.granted_before;
            if report.succeeded() {
                self.command = deploying.build;
                restart_admiral = deploying.restart_admiral;
            }
            // Every worker runs the fleet's build now: the new one, or the old one after a
            // rollback.
            self.builds.clear();
        }
        if !report.dry_run {
            if report.succeeded() {
                tracing::info!(target: "fleet::restart", %report, "deployed");
            } else {
                tracing::error!(target: "fleet::restart", %report, "deploy rolled back");
            }
            self.publish(FleetEvent::Deployed(Box::new(report.clone())));
        }
        let outcome =
            Payload::encode(&report).map_or_else(|e| Outcome::Error(e.to_string()), Outcome::Ok);
        self.reply(waiter, Reply::Outcome(outcome));
        if restart_admiral {
            self.restart_self_soon();
        }
    }

    /// Re-executes the admiral a quarter second from now: long enough for the deploy's answer
    /// and event to reach whoever waits for them.
    fn restart_self_soon(&mut self) {
        // What this turn sent goes out now.
        self.links.end_batch();
        self.links.begin_batch();
        let (grace, own) = (self.config.admiral_grace, self.own.clone());
        let (saved, on_disk) = tokio::sync::oneshot::channel();
        self.save_store(true, Some(saved));
        self.user.spawn(async move {
            let _ = on_disk.await;
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            let error = crate::admiral::exec_self(grace, own.as_ref());
            tracing::error!(target: "fleet::admiral", %error, "the deploy could not restart the admiral");
        });
    }
}
