//! Restart figures: each strategy restarts cluster 0 while the mock's event source runs, and the
//! mock counts what it cost: identifies spent, events lost or handled twice, and how long each of
//! the cluster's shards was without a session.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Result;
use carrier::admiral::{LifecycleEvent, RestartMode};
use carrier::{AdmiralHandle, FleetEvent, ShardEvent, WorkerId};

use super::{MockProcess, control};

/// When each of cluster 0's shards lost its session and got one again, from the fleet's events.
#[derive(Debug, Default)]
struct Gaps {
    /// A hard restart kills first: every shard is down from the start.
    hard: bool,
    down: BTreeMap<u32, Instant>,
    gap: BTreeMap<u32, Duration>,
}

impl Gaps {
    fn record(&mut self, shard: u32, event: &ShardEvent, started: Instant) {
        let now = Instant::now();
        match event {
            // Already up again in the replacement (overlap): no gap.
            ShardEvent::Disconnected(_) if !self.gap.contains_key(&shard) => {
                self.down.entry(shard).or_insert(now);
            }
            ShardEvent::Ready | ShardEvent::Resumed => {
                // Up before the old session closed (overlap): no gap.
                let down = match self.down.remove(&shard) {
                    Some(down) => down,
                    None if self.hard => started,
                    None => now,
                };
                self.gap
                    .entry(shard)
                    .or_insert_with(|| now.saturating_duration_since(down));
            }
            _ => {}
        }
    }
}

/// `a[key] - b[key]` of two mock reports.
pub(super) fn diff(a: &serde_json::Value, b: &serde_json::Value, key: &str) -> u64 {
    a[key].as_u64().unwrap_or(0) - b[key].as_u64().unwrap_or(0)
}

/// Stops the event source and waits (30 s at most) until every event is confirmed or lost;
/// returns the mock's event report and stats then.
pub(super) async fn settle(mock: &MockProcess) -> Result<(serde_json::Value, serde_json::Value)> {
    control(mock, "POST", "/_mock/events/stop").await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut report = control(mock, "GET", "/_mock/events").await?;
    while report["in_flight"].as_u64() != Some(0) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        report = control(mock, "GET", "/_mock/events").await?;
    }
    Ok((report, control(mock, "GET", "/_mock/stats").await?))
}

/// Restarts cluster 0 once with each strategy and prints what each cost, then reshards.
pub async fn figures(
    admiral: &AdmiralHandle,
    mock: &MockProcess,
    notice: Duration,
    interval: Duration,
    modes: &[RestartMode],
    lib: &str,
) -> Result<()> {
    let shards = {
        let c = &admiral.plan().clusters[0];
        c.last_shard - c.first_shard + 1
    };
    for &mode in modes {
        control(mock, "POST", "/_mock/events/start?rate=2").await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before_stats = control(mock, "GET", "/_mock/stats").await?;
        let before = control(mock, "GET", "/_mock/events").await?;
        // Shard events are timed as they arrive, on a task of their own.
        let mut events = admiral.events();
        let started = Instant::now();
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let collector = tokio::spawn(async move {
            let mut gaps = Gaps {
                hard: mode == RestartMode::Hard,
                ..Gaps::default()
            };
            loop {
                tokio::select! {
                    event = events.recv() => match event {
                        Ok(FleetEvent::Shard { cluster: 0, shard, event, .. }) => {
                            gaps.record(shard, &event, started);
                        }
                        Ok(FleetEvent::Lifecycle(LifecycleEvent::RestartFailed { reason, .. })) => {
                            println!("  restart failed: {reason}");
                        }
                        Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                    },
                    _ = &mut stopped => break,
                }
            }
            gaps
        });
        admiral.restart(&WorkerId::Cluster(0), mode).await?;
        let took = started.elapsed();
        // The old process's shard events may trail the swap a little.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let _ = stop.send(());
        let gaps = collector.await?;
        let (after, after_stats) = settle(mock).await?;
        let max = gaps.gap.values().max().copied().unwrap_or_default();
        let mean = gaps.gap.values().sum::<Duration>() / (gaps.gap.len().max(1) as u32);
        println!(
            "restart cluster 0 ({shards} shards), {mode:?}: done in {took:.2?} ({:.1?} soft-kill notice included{}); per-shard unavailability max {max:.1?}, mean {mean:.1?}; identifies spent {}; resumes {}; events lost {}, held unconfirmed by dead sessions {}, handled twice {} (of {} produced)",
            if mode == RestartMode::Hard {
                Duration::ZERO
            } else {
                notice
            },
            if gaps.gap.len() == shards as usize {
                String::new()
            } else {
                format!("; only {} shards reported back", gaps.gap.len())
            },
            diff(&after_stats, &before_stats, "identifies"),
            diff(&after_stats, &before_stats, "resumes"),
            diff(&after, &before, "lost"),
            after["in_flight"].as_u64().unwrap_or(0),
            diff(&after, &before, "duplicates"),
            diff(&after, &before, "produced"),
        );
    }
    crash(admiral, mock, shards).await?;
    deploy(admiral, mock, lib).await?;
    reshard(admiral, mock, notice, interval).await
}

/// Deploys this same binary (as a new build) onto every worker while events flow: how long
/// the rollout takes against its canary bake and notices, and what it cost.
async fn deploy(admiral: &AdmiralHandle, mock: &MockProcess, lib: &str) -> Result<()> {
    let mut plan = carrier::DeployPlan::new(std::env::current_exe()?)
        .env(fleet_examples::LIB_ENV, lib)
        .canary_bake(Duration::from_secs(2))
        .at_once(2);
    plan.args = std::env::args().skip(1).collect();
    let dry = admiral.deploy(plan.clone().dry_run()).await?;
    control(mock, "POST", "/_mock/events/start?rate=2").await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before_stats = control(mock, "GET", "/_mock/stats").await?;
    let before = control(mock, "GET", "/_mock/events").await?;
    let report = admiral.deploy(plan).await?;
    let (after, after_stats) = settle(mock).await?;
    println!(
        "deploy onto a new build ({} workers, canary bake 2 s, 2 clusters at once): {}; estimated {:.1?}, took {:.2?}; identifies spent {}; resumes {}; events lost {}, confirmed twice {} (of {} produced)",
        report.order.len(),
        if report.succeeded() {
            "every worker moved".to_owned()
        } else {
            format!("failed: {}", report.failure.unwrap_or_default())
        },
        Duration::from_millis(dry.estimate_ms),
        Duration::from_millis(report.took_ms),
        diff(&after_stats, &before_stats, "identifies"),
        diff(&after_stats, &before_stats, "resumes"),
        diff(&after, &before, "lost"),
        diff(&after, &before, "duplicates"),
        diff(&after, &before, "produced"),
    );
    Ok(())
}

/// Kills cluster 0's process (`SIGKILL`) while events flow: its replacement resumes the sessions
/// it checkpointed. What that cost: identifies, events lost, how long each shard was without a
/// session (from the kill to its RESUMED).
async fn crash(admiral: &AdmiralHandle, mock: &MockProcess, shards: u32) -> Result<()> {
    let cluster = WorkerId::Cluster(0);
    let status = |workers: &[carrier::admiral::WorkerStatus]| {
        workers
            .iter()
            .find(|w| w.id == cluster)
            .map(|w| (w.process, w.pid, w.state.clone(), w.checkpointed))
    };
    control(mock, "POST", "/_mock/events/start?rate=2").await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let Some((old, Some(pid), _, checkpointed)) = status(&admiral.workers().await?) else {
        anyhow::bail!("cluster 0 has no process");
    };
    let before_stats = control(mock, "GET", "/_mock/stats").await?;
    let before = control(mock, "GET", "/_mock/events").await?;
    let mut events = admiral.events();
    let killed = Instant::now();
    std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()?;
    let mut gaps = Gaps {
        hard: true,
        ..Gaps::default()
    };
    let deadline = killed + Duration::from_mins(1);
    while gaps.gap.len() < shards as usize && Instant::now() < deadline {
        match tokio::time::timeout_at(deadline.into(), events.recv()).await {
            Ok(Ok(FleetEvent::Shard {
                cluster: 0,
                shard,
                event,
                process,
                ..
            })) if Some(process) != old => gaps.record(shard, &event, killed),
            Ok(Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {}
            _ => break,
        }
    }
    let back = killed.elapsed();
    let (after, after_stats) = settle(mock).await?;
    let max = gaps.gap.values().max().copied().unwrap_or_default();
    let mean = gaps.gap.values().sum::<Duration>() / (gaps.gap.len().max(1) as u32);
    println!(
        "SIGKILL cluster 0 ({shards} shards, {checkpointed} sessions checkpointed; the first crash restart is immediate): every shard back in {back:.2?}; per-shard time without a session max {max:.1?}, mean {mean:.1?}; identifies spent {}; resumes {}; resumes refused {}; events lost {}, confirmed twice {} (of {} produced)",
        diff(&after_stats, &before_stats, "identifies"),
        diff(&after_stats, &before_stats, "resumes"),
        diff(&after_stats, &before_stats, "resumes_refused"),
        diff(&after, &before, "lost"),
        diff(&after, &before, "duplicates"),
        diff(&after, &before, "produced"),
    );
    Ok(())
}

/// Reshards to twice the shards while events flow: how long the switch takes against the
/// identify limit for the new shards, and what it cost.
async fn reshard(
    admiral: &AdmiralHandle,
    mock: &MockProcess,
    notice: Duration,
    interval: Duration,
) -> Result<()> {
    let plan = admiral.plan();
    let shards = plan.shard_total * 2;
    control(mock, "POST", "/_mock/events/start?rate=2").await?;
    let before_stats = control(mock, "GET", "/_mock/stats").await?;
    let before = control(mock, "GET", "/_mock/events").await?;
    let started = Instant::now();
    admiral
        .reshard(carrier::admiral::ShardCount::Exact(shards), None)
        .await?;
    let took = started.elapsed();
    let (after, after_stats) = settle(mock).await?;
    let windows = shards.div_ceil(plan.max_concurrency) - 1;
    let limit = interval * windows;
    println!(
        "reshard {} -> {shards} shards at max_concurrency {}: live in {took:.2?}; identify limit {windows} x {:.1?} = {limit:.1?}, plus the old generation's {notice:.1?} notice; identifies {}; events lost {}, confirmed by sessions of both generations {} (of {} produced; user code stops in the old generation 250 ms after the new one goes live)",
        plan.shard_total,
        plan.max_concurrency,
        interval,
        diff(&after_stats, &before_stats, "identifies"),
        diff(&after, &before, "lost"),
        diff(&after, &before, "duplicates"),
        diff(&after, &before, "produced"),
    );
    Ok(())
}
