//! Scale: 1,000 guilds per shard in 16 clusters at growing shard counts (100 and 300 by default;
//! `FLEET_BENCH_SCALE=100,300,1000` for more), with events flowing. Per count: time to all ready
//! against the identify limit, the admiral's CPU (share of a core) and RSS at steady state, the
//! clusters' RSS and RSS per thousand guilds with the default cache, events per second through
//! the clusters' handlers, discord-mock's own RSS and CPU, and what a stats round costs. Read the
//! growth from one count to the next: linear, or worse.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use fleet_examples::{Lib, pss_mib, rss_mib};

use super::stats::{cpu_ns, worker_pids};
use super::{control, handled, launch, start_mock_with};

/// Guilds per shard: Discord's guidance for a full shard.
pub const GUILDS_PER_SHARD: usize = 1000;
/// Clusters at every count.
const CLUSTERS: u32 = 16;
/// Identify buckets of the scenario (Discord's for bots this size).
const MAX_CONCURRENCY: u32 = 16;
/// The identify interval, shortened from Discord's 5 s so a run takes minutes.
const INTERVAL: Duration = Duration::from_millis(1500);
/// Events per second over the whole fleet at steady state.
const STEADY_EVENTS: f64 = 20_000.0;
/// The steady-state window the CPU figures are taken over.
const STEADY: Duration = Duration::from_secs(10);

/// The shard counts to run, from `FLEET_BENCH_SCALE` or 100 and 300.
fn counts() -> Vec<u32> {
    std::env::var("FLEET_BENCH_SCALE")
        .ok()
        .map(|v| {
            v.split(',')
                .filter_map(|n| n.trim().parse().ok())
                .collect::<Vec<u32>>()
        })
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| vec![100, 300])
}

/// Runs the scale rows.
pub async fn figures() -> Result<bool> {
    let mut clean = true;
    for shards in counts() {
        clean &= row(shards).await?;
    }
    Ok(clean)
}

async fn row(shards: u32) -> Result<bool> {
    let guilds = shards as usize * GUILDS_PER_SHARD;
    let mock = start_mock_with(MAX_CONCURRENCY, INTERVAL, shards, GUILDS_PER_SHARD).await?;
    let (admiral, startup, first_ready) = launch(&mock, INTERVAL, Lib::Twilight, CLUSTERS).await?;
    let waits = shards.div_ceil(MAX_CONCURRENCY) - 1;
    let limit = INTERVAL * waits + first_ready;
    println!(
        "scale, {shards} shards, {guilds} guilds, {CLUSTERS} clusters: ready in {startup:.2?}; limit {waits} x {INTERVAL:.2?} + first READY {first_ready:.2?} = {limit:.2?}; ratio {:.3}",
        startup.as_secs_f64() / limit.as_secs_f64()
    );
    let workers = worker_pids(&admiral).await?;
    let mock_pid = mock.pid().context("mock pid")?;

    // Steady state: events at a fixed rate over the fleet, CPU over a window.
    let rate = STEADY_EVENTS / guilds as f64;
    control(&mock, "POST", &format!("/_mock/events/start?rate={rate}")).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let handled_before = handled(&admiral).await?;
    let (admiral_before, mock_before) = (cpu_ns(std::process::id()), cpu_ns(mock_pid));
    let workers_before: u64 = workers.iter().map(|&p| cpu_ns(p)).sum();
    let started = Instant::now();
    tokio::time::sleep(STEADY).await;
    let elapsed = started.elapsed().as_secs_f64();
    let share = |after: u64, before: u64| after.saturating_sub(before) as f64 / 1e9 / elapsed;
    let admiral_cpu = share(cpu_ns(std::process::id()), admiral_before);
    let mock_cpu = share(cpu_ns(mock_pid), mock_before);
    let workers_cpu = share(workers.iter().map(|&p| cpu_ns(p)).sum(), workers_before);
    let rate_handled = (handled(&admiral).await? - handled_before) as f64 / elapsed;
    control(&mock, "POST", "/_mock/events/stop").await?;

    let admiral_rss = rss_mib(std::process::id()).unwrap_or(f64::NAN);
    let cluster_rss: Vec<f64> = admiral
        .workers()
        .await?
        .iter()
        .filter(|w| matches!(w.id, carrier::admiral::WorkerId::Cluster(_)))
        .filter_map(|w| w.pid.and_then(rss_mib))
        .collect();
    let clusters_total: f64 = cluster_rss.iter().sum();
    let cluster_max = cluster_rss.iter().copied().fold(0.0, f64::max);
    let pss: f64 = std::iter::once(std::process::id())
        .chain(workers.iter().copied())
        .filter_map(pss_mib)
        .sum();
    let mock_rss = rss_mib(mock_pid).unwrap_or(f64::NAN);
    println!(
        "  steady, {STEADY_EVENTS:.0} events/s asked: handled {rate_handled:.0}/s; CPU (cores): admiral {admiral_cpu:.3}, all clusters and services {workers_cpu:.2} ({:.0} events/s per core), discord-mock {mock_cpu:.2}",
        rate_handled / workers_cpu.max(1e-9)
    );
    println!(
        "  memory (RSS): admiral {admiral_rss:.1} MiB; clusters {clusters_total:.0} MiB in all, at most {cluster_max:.1} MiB each, {:.2} MiB per thousand guilds; fleet {pss:.0} MiB PSS; discord-mock {mock_rss:.1} MiB",
        clusters_total / (guilds as f64 / 1000.0)
    );
    super::stats::figures(&admiral, &format!("{shards} shards")).await?;
    let report = control(&mock, "GET", "/_mock/events").await?;
    println!(
        "  events: lost {}, handled twice {}",
        report["lost"], report["duplicates"]
    );
    admiral.shutdown().await;
    mock.stop().await
}
