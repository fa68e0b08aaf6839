//! Deploys: every worker rolled onto a new build with the restarts fleet already has, canary
//! first, and rolled back if anything goes wrong.
//!
//! The router checks a [`DeployPlan`] ([`check`]), works out the order and what it costs
//! ([`plan`]: the canary cluster, the other clusters, the services), and answers a dry run with
//! that. A real deploy runs here, on a task of the admiral's runtime ([`roll`]), through the
//! admiral's own [`Ipc`]: for each worker it names the new build as the one the worker's next
//! process runs ([`Inbox::Build`]) and restarts it (a handover for clusters). The canary then
//! serves for its bake time while this watches the admiral's events for it: a crash, a missed
//! heartbeat or a panic fails the deploy. After a failure every worker that moved is given its
//! old build back and restarted onto it. When all moved, the new build becomes the fleet's for
//! every process started from then on.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, mpsc, oneshot};

use super::FleetEvent;
use super::lifecycle::{LifecycleEvent, RestartMode, WorkerId};
use super::process::WorkerCommand;
use super::router::inbox::Inbox;
use crate::ipc::Ipc;
use crate::ipc::proto::{DeployPlan, DeployReport, Target};

/// The most arguments, and the most environment variables, a deploy's command may have.
const MAX_ITEMS: usize = 256;

/// The longest argument or variable (name and value) a deploy's command may have.
const MAX_ITEM: usize = 4096;

/// The longest canary bake a deploy may ask for.
const MAX_BAKE: Duration = Duration::from_hours(1);

/// How long one step's restarts may take before the deploy gives up on them.
const STEP_TIMEOUT: Duration = Duration::from_mins(10);

/// What one restart is expected to take besides the soft-kill notice, for the estimate.
const RESTART_ESTIMATE: Duration = Duration::from_secs(2);

/// Checks what a deploy asks for; the new build's command if it is sound.
///
/// # Errors
/// A program that is not an absolute path to an executable file, too many or too long
/// arguments or variables, a mode other than handover or overlap, no clusters at once.
pub(crate) fn check(plan: &DeployPlan) -> Result<WorkerCommand, String> {
    use std::os::unix::fs::PermissionsExt as _;
    if !plan.program.is_absolute() {
        return Err(format!(
            "{} is not an absolute path",
            plan.program.display()
        ));
    }
    let meta =
        std::fs::metadata(&plan.program).map_err(|e| format!("{}: {e}", plan.program.display()))?;
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        return Err(format!(
            "{} is not an executable file",
            plan.program.display()
        ));
    }
    let items = plan.args.len().max(plan.env.len());
    let longest = plan
        .args
        .iter()
        .map(String::len)
        .chain(plan.env.iter().map(|(k, v)| k.len() + v.len()))
        .max()
        .unwrap_or(0);
    if items > MAX_ITEMS || longest > MAX_ITEM {
        return Err(format!(
            "at most {MAX_ITEMS} arguments and variables of {MAX_ITEM} bytes each"
        ));
    }
    if plan
        .env
        .iter()
        .any(|(k, _)| k.is_empty() || k.contains('='))
    {
        return Err("an environment variable's name is empty or holds '='".to_owned());
    }
    if !matches!(plan.mode, RestartMode::Handover | RestartMode::Overlap) {
        return Err("a deploy moves clusters by handover or overlap".to_owned());
    }
    if plan.at_once == 0 {
        return Err("at_once must be at least 1".to_owned());
    }
    if Duration::from_millis(plan.canary_bake_ms) > MAX_BAKE {
        return Err(format!("a canary bakes at most {MAX_BAKE:?}"));
    }
    Ok(WorkerCommand {
        program: plan.program.clone(),
        args: plan.args.iter().map(Into::into).collect(),
        env: plan.env.iter().map(|(k, v)| (k.into(), v.into())).collect(),
    })
}

/// The fleet as a deploy starts: live clusters with their shard counts, live services, the
/// session budget and the soft-kill notice.
#[derive(Debug, Clone, Default)]
pub(crate) struct Fleet {
    pub clusters: Vec<(u32, u64)>,
    pub services: Vec<String>,
    /// Sessions left in the daily budget, and the budget, when the identify queue knows them.
    pub budget: Option<(u32, u32)>,
    pub notice: Duration,
}

/// What `plan` would do to `fleet`: the order, the identifies and budget, the time.
///
/// # Errors
/// When nothing would move, or the identifies planned exceed the share of the budget allowed.
pub(crate) fn plan(plan: &DeployPlan, fleet: &Fleet) -> Result<DeployReport, String> {
    let mut clusters = fleet.clusters.clone();
    clusters.sort_unstable();
    let mut services = fleet.services.clone();
    services.sort_unstable();
    let order: Vec<Target> = clusters
        .iter()
        .map(|(id, _)| Target::Cluster(*id))
        .chain(services.into_iter().map(Target::Service))
        .collect();
    if order.is_empty() {
        return Err("no live worker to move".to_owned());
    }
    let identifies_planned = match plan.mode {
        RestartMode::Handover => 0,
        _ => clusters.iter().map(|(_, shards)| shards).sum(),
    };
    let remaining = fleet.budget.map(|(left, _)| left);
    if let Some(left) = remaining {
        let allowed = u64::from(left) * u64::from(plan.max_budget_percent.min(100)) / 100;
        if identifies_planned > allowed {
            return Err(format!(
                "the deploy would spend {identifies_planned} identifies, more than {}% of the {left} left today ({allowed})",
                plan.max_budget_percent
            ));
        }
    }
    // The canary, then the other clusters `at_once` at a time, then each service.
    let steps = 1
        + (clusters.len().saturating_sub(1)).div_ceil(plan.at_once.max(1) as usize)
        + order.len().saturating_sub(clusters.len().max(1));
    let per_step = fleet.notice + RESTART_ESTIMATE;
    let estimate = per_step * u32::try_from(steps).unwrap_or(u32::MAX)
        + Duration::from_millis(plan.canary_bake_ms);
    Ok(DeployReport {
        dry_run: plan.dry_run,
        order,
        identifies_planned,
        budget_remaining: remaining,
        budget_total: fleet.budget.map(|(_, total)| total),
        budget_after: remaining
            .map(|left| left.saturating_sub(u32::try_from(identifies_planned).unwrap_or(u32::MAX))),
        estimate_ms: u64::try_from(estimate.as_millis()).unwrap_or(u64::MAX),
        ..DeployReport::default()
    })
}

fn worker_of(target: &Target) -> Option<WorkerId> {
    match target {
        Target::Cluster(id) => Some(WorkerId::Cluster(*id)),
        Target::Service(name) => Some(WorkerId::Service(name.clone())),
        Target::Admiral => None,
    }
}

/// What [`roll`] works with.
pub(crate) struct Rollout {
    pub ipc: Ipc,
    pub events: broadcast::Receiver<FleetEvent>,
    pub inbox: mpsc::Sender<Inbox>,
    pub build: Arc<WorkerCommand>,
    pub plan: DeployPlan,
    pub report: DeployReport,
}

/// Names `build` (`None`: the fleet's) as the one `worker`'s next process runs, and waits until
/// the router has it.
async fn set_build(
    inbox: &mpsc::Sender<Inbox>,
    worker: WorkerId,
    build: Option<Arc<WorkerCommand>>,
) -> bool {
    let (done, applied) = oneshot::channel();
    let sent = inbox
        .send(Inbox::Build {
            worker,
            build,
            done,
        })
        .await;
    sent.is_ok() && applied.await.is_ok()
}

/// Restarts `target` onto `build`; why it failed, if it did.
async fn move_onto(
    rollout: &Rollout,
    target: &Target,
    build: Option<Arc<WorkerCommand>>,
) -> Result<(), String> {
    let worker = worker_of(target).ok_or("the admiral is not a worker")?;
    let onto_new = build.is_some();
    if !set_build(&rollout.inbox, worker.clone(), build).await {
        return Err("the admiral stopped".to_owned());
    }
    let restarted = rollout
        .ipc
        .restart(target.clone(), rollout.plan.mode, STEP_TIMEOUT)
        .await
        .map_err(|e| format!("{target}: {e}"));
    if restarted.is_err() && onto_new {
        // It still runs its old build: so does its next process, should it crash.
        set_build(&rollout.inbox, worker, None).await;
    }
    restarted
}

/// Whether `event` says `target` is in trouble: it crashed, failed, hung or panicked.
fn trouble(event: &FleetEvent, target: &Target) -> Option<String> {
    let worker = worker_of(target)?;
    match event {
        FleetEvent::Lifecycle(
            LifecycleEvent::Restarting {
                worker: w, reason, ..
            }
            | LifecycleEvent::Failed { worker: w, reason },
        ) if *w == worker => Some(format!("{target} crashed: {reason}")),
        FleetEvent::Unresponsive { worker: w, .. } if *w == worker => {
            Some(format!("{target} stopped answering heartbeats"))
        }
        FleetEvent::Panic {
            worker: w, report, ..
        } if *w == worker => Some(format!("{target}: {report}")),
        _ => None,
    }
}

/// Watches the canary for `bake`; why it failed, if it did.
async fn bake(
    events: &mut broadcast::Receiver<FleetEvent>,
    canary: &Target,
    bake: Duration,
) -> Option<String> {
    let until = tokio::time::Instant::now() + bake;
    loop {
        match tokio::time::timeout_at(until, events.recv()).await {
            Err(_) => return None,
            Ok(Ok(event)) => {
                if let Some(why) = trouble(&event, canary) {
                    return Some(why);
                }
            }
            Ok(Err(broadcast::error::RecvError::Lagged(_))) => {}
            Ok(Err(broadcast::error::RecvError::Closed)) => {
                return Some("the admiral stopped".to_owned());
            }
        }
    }
}

/// Runs a deploy (see the module's docs); what it did.
pub(crate) async fn roll(mut rollout: Rollout) -> DeployReport {
    let started = Instant::now();
    let order = rollout.report.order.clone();
    let clusters: Vec<Target> = order
        .iter()
        .filter(|t| matches!(t, Target::Cluster(_)))
        .cloned()
        .collect();
    let services: Vec<Target> = order
        .iter()
        .filter(|t| matches!(t, Target::Service(_)))
        .cloned()
        .collect();
    let new = Some(rollout.build.clone());
    let mut failure = None;
    // The canary.
    if let Some(canary) = clusters.first() {
        tracing::info!(target: "fleet::restart", %canary, "deploy: the canary moves");
        match move_onto(&rollout, canary, new.clone()).await {
            Ok(()) => {
                rollout.report.moved.push(canary.clone());
                let bake_for = Duration::from_millis(rollout.plan.canary_bake_ms);
                failure = bake(&mut rollout.events, canary, bake_for).await;
            }
            Err(why) => failure = Some(why),
        }
    }
    // The other clusters, a batch at a time, then the services one by one.
    let mut rest: Vec<Vec<Target>> = clusters
        .iter()
        .skip(1)
        .cloned()
        .collect::<Vec<_>>()
        .chunks(rollout.plan.at_once.max(1) as usize)
        .map(<[Target]>::to_vec)
        .collect();
    rest.extend(services.into_iter().map(|s| vec![s]));
    for batch in rest {
        if failure.is_some() {
            break;
        }
        let moves = batch.iter().map(|t| move_onto(&rollout, t, new.clone()));
        let results = futures::future::join_all(moves).await;
        for (target, result) in batch.iter().zip(results) {
            match result {
                Ok(()) => rollout.report.moved.push(target.clone()),
                Err(why) => {
                    failure.get_or_insert(why);
                }
            }
        }
    }
    if let Some(why) = &failure {
        tracing::error!(target: "fleet::restart", reason = %why, moved = rollout.report.moved.len(), "deploy failed; rolling back");
        for target in rollout.report.moved.clone().iter().rev() {
            // A worker waiting to restart after a crash comes back on its old build anyway.
            if let Err(e) = move_onto(&rollout, target, None).await {
                tracing::warn!(target: "fleet::restart", %target, error = %e, "not restarted onto the old build");
            }
            rollout.report.rolled_back.push(target.clone());
        }
        rollout.report.moved.clear();
    }
    rollout.report.failure = failure;
    rollout.report.took_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    rollout.report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fleet() -> Fleet {
        Fleet {
            clusters: vec![(2, 4), (0, 4), (1, 4)],
            services: vec!["echo".into(), "db".into()],
            budget: Some((100, 1000)),
            notice: Duration::from_secs(1),
        }
    }

    #[test]
    fn the_canary_goes_first_and_services_last_with_their_cost() {
        let deploy = DeployPlan::new("/bin/true")
            .canary_bake(Duration::from_secs(5))
            .at_once(2)
            .dry_run();
        let report = plan(&deploy, &fleet()).unwrap();
        assert_eq!(
            report.order,
            vec![
                Target::Cluster(0),
                Target::Cluster(1),
                Target::Cluster(2),
                Target::Service("db".into()),
                Target::Service("echo".into()),
            ]
        );
        assert_eq!(report.identifies_planned, 0, "handovers spend none");
        assert_eq!(
            (report.budget_remaining, report.budget_after),
            (Some(100), Some(100))
        );
        // Canary, one batch of two, two services: 4 steps of 3 s, and the 5 s bake.
        assert_eq!(report.estimate_ms, 17_000);
        assert!(report.dry_run && !report.succeeded());
    }

    #[test]
    fn a_plan_that_spends_too_much_of_the_budget_is_refused() {
        let overlap = DeployPlan::new("/bin/true").mode(RestartMode::Overlap);
        let refused = plan(&overlap, &fleet()).unwrap_err();
        assert!(
            refused.contains("12 identifies") && refused.contains("100 left"),
            "{refused}"
        );
        let allowed = plan(&overlap.max_budget_percent(20), &fleet()).unwrap();
        assert_eq!(
            (allowed.identifies_planned, allowed.budget_after),
            (12, Some(88))
        );
        assert!(plan(&DeployPlan::new("/bin/true"), &Fleet::default()).is_err());
    }

    #[test]
    fn only_a_sound_command_is_deployed() {
        let sh = DeployPlan::new("/bin/sh").arg("-c").env("BUILD", "2");
        let command = check(&sh).unwrap();
        assert_eq!(command.args, vec![std::ffi::OsString::from("-c")]);
        assert!(
            check(&DeployPlan::new("bin/sh"))
                .unwrap_err()
                .contains("absolute")
        );
        assert!(check(&DeployPlan::new("/nonexistent/bot")).is_err());
        assert!(
            check(&DeployPlan::new("/proc/self/status"))
                .unwrap_err()
                .contains("executable")
        );
        assert!(check(&DeployPlan::new("/bin/sh").env("A=B", "c")).is_err());
        assert!(check(&DeployPlan::new("/bin/sh").at_once(0)).is_err());
        assert!(check(&DeployPlan::new("/bin/sh").mode(RestartMode::Hard)).is_err());
        let long = "x".repeat(MAX_ITEM + 1);
        assert!(check(&DeployPlan::new("/bin/sh").arg(long)).is_err());
        let bake = DeployPlan::new("/bin/sh").canary_bake(Duration::from_hours(2));
        assert!(check(&bake).is_err());
    }
}
