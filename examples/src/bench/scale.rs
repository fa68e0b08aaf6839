//! Scale: 1,000 guilds per shard in 16 clusters at growing shard counts (100 and 300 by default;
//! `FLEET_BENCH_SCALE=100,300,1000` for more), with events flowing. Per count: time to all ready
//! against the identify limit, the admiral's CPU (share of a core) and RSS at steady state, the
//! clusters' RSS and RSS per thousand guilds with the default cache, memory at the start and the
//! end of the steady window (`FLEET_BENCH_SCALE_STEADY_S`, 10 s by default; 300 for the
//! five-minute flatness check), events per second through the clusters' handlers at the steady
//! rate and at the ceiling (the mock asked for far more than the fleet takes) with the shards
//! that fell behind, discord-mock's own RSS and CPU, what a stats round costs, and a rolling
//! restart of every cluster, four at a time, by handover. The mock's counters close each row:
//! events lost or handled twice, identify violations. Read the growth from one count to the
//! next: linear, or worse. `FLEET_EXAMPLE_MEMBERS=0` runs it without `GUILD_MEMBERS`, the
//! intents most large bots have: each guild then arrives with the bot's member only.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use carrier::admiral::WorkerId;
use carrier::{AdmiralHandle, Group, Outcome, RestartMode};
use fleet_examples::{Lib, pss_mib, rss_mib};

use super::restart::{diff, settle};
use super::stats::{cpu_ns, worker_pids};
use super::{MockProcess, control, handled, launch, start_mock_resumable};

/// Guilds per shard: Discord's guidance for a full shard.
pub const GUILDS_PER_SHARD: usize = 1000;
/// Clusters at every count, unless `FLEET_BENCH_SCALE_CLUSTERS` says otherwise.
const CLUSTERS: u32 = 16;

/// The clusters to run: [`CLUSTERS`] or `FLEET_BENCH_SCALE_CLUSTERS`.
fn clusters() -> u32 {
    super::env_count("FLEET_BENCH_SCALE_CLUSTERS").unwrap_or(CLUSTERS)
}
/// Identify buckets of the scenario (Discord's for bots this size).
const MAX_CONCURRENCY: u32 = 16;
/// The identify interval, shortened from Discord's 5 s so a run takes minutes.
const INTERVAL: Duration = Duration::from_millis(1500);
/// Events per second over the whole fleet at steady state.
const STEADY_EVENTS: f64 = 20_000.0;
/// Events per second asked of the mock for the ceiling: more than the fleet can take here.
const CEILING_EVENTS: f64 = 400_000.0;
/// The window the ceiling is measured over.
const CEILING: Duration = Duration::from_secs(8);
/// Clusters a rolling restart moves at once.
const AT_ONCE: u32 = 4;

/// The steady-state window the CPU and memory figures are taken over: 10 s, or
/// `FLEET_BENCH_SCALE_STEADY_S` seconds.
fn steady() -> Duration {
    Duration::from_secs(super::env_count("FLEET_BENCH_SCALE_STEADY_S").unwrap_or(10))
}

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
        clean &= Box::pin(row(shards)).await?;
    }
    Ok(clean)
}

async fn row(asked: u32) -> Result<bool> {
    // Discord has bots this size run a multiple of their max_concurrency.
    let shards = asked.div_ceil(MAX_CONCURRENCY) * MAX_CONCURRENCY;
    let guilds = shards as usize * GUILDS_PER_SHARD;
    // Messages only: a member that joins is cached for good, and would hide in the memory
    // figures a queue that grows.
    let resumable = Duration::from_secs(15);
    let mock = start_mock_resumable(
        MAX_CONCURRENCY,
        INTERVAL,
        shards,
        GUILDS_PER_SHARD,
        resumable,
        Some(0),
    )
    .await?;
    let clusters = clusters();
    let (admiral, startup, first_ready) = launch(&mock, INTERVAL, Lib::Twilight, clusters).await?;
    let waits = shards.div_ceil(MAX_CONCURRENCY) - 1;
    let limit = INTERVAL * waits + first_ready;
    let intents = if fleet_examples::wants_members() {
        "GUILDS | GUILD_MESSAGES | GUILD_MEMBERS, every member cached"
    } else {
        "GUILDS | GUILD_MESSAGES, the bot's member only"
    };
    println!(
        "scale, {shards} shards ({asked} asked, a multiple of max_concurrency {MAX_CONCURRENCY}), {guilds} guilds, {clusters} clusters ({intents}): ready in {startup:.2?}; limit {waits} x {INTERVAL:.2?} + first READY {first_ready:.2?} = {limit:.2?}; ratio {:.3}",
        startup.as_secs_f64() / limit.as_secs_f64()
    );
    let workers = worker_pids(&admiral).await?;
    let mock_pid = mock.pid().context("mock pid")?;
    let fleet_pss = || -> f64 {
        std::iter::once(std::process::id())
            .chain(workers.iter().copied())
            .filter_map(pss_mib)
            .sum()
    };
    // What holding the guilds costs, before any event: the cache learns every message's author
    // (a member and a user) from then on.
    let ready = Memory::now(&admiral).await?;
    let cached = admiral.stats().await?;
    println!(
        "  memory once ready: fleet {:.0} MiB PSS; clusters {:.0} MiB RSS in all, {:.2} MiB per thousand guilds; cached: {} guilds, {} members, {} users",
        fleet_pss(),
        ready.clusters,
        ready.clusters / (guilds as f64 / 1000.0),
        cached.guilds,
        cached.members,
        cached.users,
    );

    // Steady state: events at a fixed rate over the fleet; CPU over the window, memory at its
    // start and its end.
    let window = steady();
    let rate = STEADY_EVENTS / guilds as f64;
    control(&mock, "POST", &format!("/_mock/events/start?rate={rate}")).await?;
    // Warm up until the caches have learnt every message author there is (they stop growing),
    // so memory over the window reads what else grows.
    let warming = Instant::now();
    let mut cached = admiral.stats().await?;
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let now = admiral.stats().await?;
        let learnt = now.users > cached.users;
        cached = now;
        if !learnt || warming.elapsed() > Duration::from_mins(3) {
            break;
        }
    }
    println!(
        "  warm-up: {:.0?} until the caches learnt every message author ({} users)",
        warming.elapsed(),
        cached.users
    );
    let memory_before = Memory::now(&admiral).await?;
    let measured = Window::start(&admiral, &workers, &mock).await?;
    tokio::time::sleep(window).await;
    let steady = measured.end(&admiral, &workers, &mock).await?;
    let memory = Memory::now(&admiral).await?;
    let round = admiral.stats().await?;
    let pss = fleet_pss();
    let mock_rss = rss_mib(mock_pid).unwrap_or(f64::NAN);
    println!(
        "  steady {window:.0?}, {STEADY_EVENTS:.0} events/s asked: handled {:.0}/s; CPU (cores): admiral {:.3}, all clusters and services {:.2} ({:.0} events/s per core), discord-mock {:.2}; shards behind {}, busiest event loop {:.1}%",
        steady.handled,
        steady.admiral,
        steady.workers,
        steady.handled / steady.workers.max(1e-9),
        steady.mock,
        round.shards_behind,
        busiest(&round) * 100.0,
    );
    println!(
        "  memory (RSS): admiral {:.1} MiB; clusters {:.0} MiB in all, at most {:.1} MiB each, {:.2} MiB per thousand guilds; fleet {pss:.0} MiB PSS; discord-mock {mock_rss:.1} MiB",
        memory.admiral,
        memory.clusters,
        memory.cluster_max,
        memory.clusters / (guilds as f64 / 1000.0)
    );
    println!(
        "  memory over the window: admiral {:.1} -> {:.1} MiB, clusters {:.1} -> {:.1} MiB ({:+.2}%) while the caches learnt {}",
        memory_before.admiral,
        memory.admiral,
        memory_before.clusters,
        memory.clusters,
        (memory.clusters / memory_before.clusters - 1.0) * 100.0,
        match round.users.saturating_sub(cached.users) {
            0 => "no user".to_owned(),
            learnt => format!(
                "{learnt} users ({:.0} bytes each, if nothing else grew)",
                (memory.clusters - memory_before.clusters) * 1024.0 * 1024.0 / learnt as f64
            ),
        },
    );
    super::stats::figures(&admiral, &format!("{shards} shards")).await?;

    // The ceiling: the mock asked for more than the fleet takes; the shards that cannot keep up
    // show it in their busy share, and the memory must not follow.
    let max = CEILING_EVENTS / guilds as f64;
    control(&mock, "POST", &format!("/_mock/events/start?rate={max}")).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    admiral.stats().await?;
    let measured = Window::start(&admiral, &workers, &mock).await?;
    tokio::time::sleep(CEILING).await;
    let ceiling = measured.end(&admiral, &workers, &mock).await?;
    let round = admiral.stats().await?;
    let after = Memory::now(&admiral).await?;
    println!(
        "  ceiling, {CEILING_EVENTS:.0} events/s asked, {:.0}/s made: handled {:.0}/s; CPU (cores): clusters and services {:.2} ({:.0} events/s per core), admiral {:.3}, discord-mock {:.2}; shards behind {}, busiest event loop {:.1}%; clusters {:.0} MiB RSS",
        ceiling.produced,
        ceiling.handled,
        ceiling.workers,
        ceiling.handled / ceiling.workers.max(1e-9),
        ceiling.admiral,
        ceiling.mock,
        round.shards_behind,
        busiest(&round) * 100.0,
        after.clusters,
    );
    let (report, mock_stats) = settle(&mock).await?;
    println!(
        "  events until now: produced {}, lost {}, handled twice {}; identifies {}, identify violations {}",
        report["produced"],
        report["lost"],
        report["duplicates"],
        mock_stats["identifies"],
        violations(&mock_stats),
    );

    rolling_restart(&admiral, &mock, rate).await?;
    admiral.shutdown().await;
    mock.stop().await
}

/// The largest busy share of any shard in a round.
fn busiest(stats: &carrier::FleetStats) -> f64 {
    stats
        .clusters
        .iter()
        .flat_map(|c| &c.shards)
        .filter_map(|s| s.busy)
        .fold(0.0, f64::max)
}

/// Identify violations the mock counted (of every kind).
fn violations(stats: &serde_json::Value) -> u64 {
    stats["violations"].as_object().map_or(0, |v| {
        v.values().filter_map(serde_json::Value::as_u64).sum()
    })
}

/// Restarts every cluster by handover, [`AT_ONCE`] at a time, while events flow: how long it
/// takes and what it cost.
async fn rolling_restart(admiral: &AdmiralHandle, mock: &MockProcess, rate: f64) -> Result<()> {
    control(mock, "POST", &format!("/_mock/events/start?rate={rate}")).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before_stats = control(mock, "GET", "/_mock/stats").await?;
    let before = control(mock, "GET", "/_mock/events").await?;
    let started = Instant::now();
    let outcomes = admiral
        .restart_all(Group::Clusters, RestartMode::Handover, AT_ONCE)
        .await?;
    let took = started.elapsed();
    let failed: Vec<String> = outcomes
        .iter()
        .filter(|(_, outcome)| !matches!(outcome, Outcome::Ok(_)))
        .map(|(target, outcome)| format!("{target:?}: {outcome:?}"))
        .collect();
    let (after, after_stats) = settle(mock).await?;
    println!(
        "  rolling restart of {} clusters by handover, {AT_ONCE} at a time, events flowing: {} in {took:.2?}; identifies spent {}; resumes {}; events lost {}, handled twice {} (of {} produced); identify violations {}",
        outcomes.len(),
        if failed.is_empty() {
            "every cluster moved".to_owned()
        } else {
            format!("failed: {}", failed.join("; "))
        },
        diff(&after_stats, &before_stats, "identifies"),
        diff(&after_stats, &before_stats, "resumes"),
        diff(&after, &before, "lost"),
        diff(&after, &before, "duplicates"),
        diff(&after, &before, "produced"),
        violations(&after_stats).saturating_sub(violations(&before_stats)),
    );
    Ok(())
}

/// RSS of the admiral and the clusters now, in MiB.
struct Memory {
    admiral: f64,
    clusters: f64,
    cluster_max: f64,
}

impl Memory {
    async fn now(admiral: &AdmiralHandle) -> Result<Self> {
        let clusters: Vec<f64> = admiral
            .workers()
            .await?
            .iter()
            .filter(|w| matches!(w.id, WorkerId::Cluster(_)))
            .filter_map(|w| w.pid.and_then(rss_mib))
            .collect();
        Ok(Self {
            admiral: rss_mib(std::process::id()).unwrap_or(f64::NAN),
            clusters: clusters.iter().sum(),
            cluster_max: clusters.iter().copied().fold(0.0, f64::max),
        })
    }
}

/// CPU time and events made and handled at the start of a window.
struct Window {
    at: Instant,
    produced: u64,
    handled: u64,
    admiral: u64,
    workers: u64,
    mock: u64,
}

/// Rates over a window: events made by the mock and handled per second, and cores used by
/// each party.
struct Rates {
    produced: f64,
    handled: f64,
    admiral: f64,
    workers: f64,
    mock: f64,
}

impl Window {
    async fn start(admiral: &AdmiralHandle, workers: &[u32], mock: &MockProcess) -> Result<Self> {
        Ok(Self {
            produced: produced(mock).await?,
            handled: handled(admiral).await?,
            admiral: cpu_ns(std::process::id()),
            workers: workers.iter().map(|&p| cpu_ns(p)).sum(),
            mock: cpu_ns(mock.pid().context("mock pid")?),
            at: Instant::now(),
        })
    }

    async fn end(
        self,
        admiral: &AdmiralHandle,
        workers: &[u32],
        mock: &MockProcess,
    ) -> Result<Rates> {
        let elapsed = self.at.elapsed().as_secs_f64();
        let share = |after: u64, before: u64| after.saturating_sub(before) as f64 / 1e9 / elapsed;
        let per_second = |after: u64, before: u64| after.saturating_sub(before) as f64 / elapsed;
        Ok(Rates {
            admiral: share(cpu_ns(std::process::id()), self.admiral),
            workers: share(workers.iter().map(|&p| cpu_ns(p)).sum(), self.workers),
            mock: share(cpu_ns(mock.pid().context("mock pid")?), self.mock),
            produced: per_second(produced(mock).await?, self.produced),
            handled: per_second(handled(admiral).await?, self.handled),
        })
    }
}

/// Events the mock's source has made so far.
async fn produced(mock: &MockProcess) -> Result<u64> {
    let report = control(mock, "GET", "/_mock/events").await?;
    report["produced"]
        .as_u64()
        .context("the mock's event count")
}
