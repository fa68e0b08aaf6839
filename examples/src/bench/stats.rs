//! What a stats round costs: rounds asked back to back, the CPU time the admiral and the
//! workers spent over them (each process's threads' scheduler time, from `/proc`), less what
//! they spend in an idle window of the same length, per round.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use carrier::AdmiralHandle;

/// Rounds measured.
const ROUNDS: u32 = 100;

/// CPU time of every thread of `pid` so far (Linux `schedstat`, in nanoseconds).
pub fn cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(Result::ok)
        .filter_map(|task| std::fs::read_to_string(task.path().join("schedstat")).ok())
        .filter_map(|line| line.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// CPU time of the admiral (this process) and of the workers, over a window.
fn cpu_of(workers: &[u32]) -> (u64, u64) {
    let admiral = cpu_ns(std::process::id());
    let workers = workers.iter().map(|&pid| cpu_ns(pid)).sum();
    (admiral, workers)
}

/// Every worker's pid.
pub async fn worker_pids(admiral: &AdmiralHandle) -> Result<Vec<u32>> {
    Ok(admiral
        .workers()
        .await?
        .iter()
        .filter_map(|w| w.pid)
        .collect())
}

/// Runs the measure for the fleet `admiral` runs; `label` names the scenario.
pub async fn figures(admiral: &AdmiralHandle, label: &str) -> Result<()> {
    let workers = worker_pids(admiral).await?;
    for _ in 0..3 {
        admiral.stats().await?;
    }
    let mut collected = Vec::with_capacity(ROUNDS as usize);
    let before = cpu_of(&workers);
    let started = Instant::now();
    let mut last = None;
    for _ in 0..ROUNDS {
        let stats = admiral.stats().await?;
        collected.push(Duration::from_micros(stats.collected_in_us));
        last = Some(stats);
    }
    let busy = started.elapsed();
    let after = cpu_of(&workers);
    // The same length of time with no rounds: what the fleet spends anyway.
    tokio::time::sleep(busy).await;
    let idle = cpu_of(&workers);
    let stats = last.context("a round ran")?;
    let per_round = |during: u64, baseline: u64| {
        Duration::from_nanos(during.saturating_sub(baseline) / u64::from(ROUNDS))
    };
    let admiral_cpu = per_round(after.0 - before.0, idle.0 - after.0);
    let workers_cpu = per_round(after.1 - before.1, idle.1 - after.1);
    collected.sort_unstable();
    let json = serde_json::to_vec(&stats)?.len();
    let packed = carrier::Payload::encode(&stats)?.as_bytes().len();
    println!(
        "stats round, {label}: {} shards, {} workers; {ROUNDS} rounds back to back, each p50 {:.2?} (p99 {:.2?}); CPU per round: admiral {admiral_cpu:.2?}, all workers {workers_cpu:.2?} ({:.2?} each); snapshot {json} bytes as JSON, {packed} on the wire",
        stats.shard_count,
        workers.len(),
        collected[collected.len() / 2],
        collected[collected.len() * 99 / 100],
        workers_cpu / u32::try_from(workers.len().max(1)).unwrap_or(1),
    );
    Ok(())
}
