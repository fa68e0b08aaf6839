//! `cargo xtask bench`: figures measured against discord-mock on this machine. Ratios within one
//! run are what to compare; absolute times vary with the machine's load.
//!
//! Scenarios (the DESIGN reference: 16 shards, 100 guilds per shard):
//! 1. Startup of 16 twilight shards behind one bucketed identify queue, against the identify limit
//!    `(ceil(S / max_concurrency) - 1) × interval` plus one READY.
//! 2. Event throughput: the mock's event source pushed to those shards; produced and received per
//!    second, and how many were lost.
//! 3. Memory of this process.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use discord_mock::{MockConfig, MockDiscord};
use fleet_examples::{BucketQueue, Seen, run_shard};
use tokio::sync::mpsc;
use twilight_gateway::{CloseFrame, ConfigBuilder, Intents, Shard, ShardId};

const SHARDS: u32 = 16;
const GUILDS_PER_SHARD: usize = 100;

#[tokio::main]
async fn main() -> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    println!("fleet bench (discord-mock, {SHARDS} shards x {GUILDS_PER_SHARD} guilds)");
    for (max_concurrency, interval) in [(16, Duration::from_secs(5)), (4, Duration::from_secs(1))] {
        startup(max_concurrency, interval).await?;
    }
    throughput().await?;
    println!("process RSS: {:.1} MiB", rss_mib().unwrap_or(f64::NAN));
    Ok(())
}

struct Fleet {
    mock: MockDiscord,
    seen: mpsc::UnboundedReceiver<Seen>,
    closers: Vec<twilight_gateway::MessageSender>,
}

async fn launch(config: MockConfig, interval: Duration) -> Result<(Fleet, Duration, Duration)> {
    let max_concurrency = config.max_concurrency;
    let mock = MockDiscord::start(config).await?;
    let queue = BucketQueue::new(max_concurrency, interval);
    let gateway = ConfigBuilder::new(
        "mock-token".to_owned(),
        Intents::GUILDS | Intents::GUILD_MESSAGES,
    )
    .proxy_url(mock.gateway_url())
    .queue(queue)
    .build();
    let (tx, mut seen) = mpsc::unbounded_channel();
    let started = Instant::now();
    let mut closers = Vec::new();
    for id in 0..SHARDS {
        let shard = Shard::with_config(ShardId::new(id, SHARDS), gateway.clone());
        closers.push(shard.sender());
        tokio::spawn(run_shard(shard, tx.clone()));
    }
    let (mut guilds, mut first_ready) = (0, None);
    while guilds < SHARDS as usize * GUILDS_PER_SHARD {
        match tokio::time::timeout(Duration::from_mins(2), seen.recv())
            .await
            .context("startup stalled")?
        {
            Some(Seen::Ready { .. }) => {
                first_ready.get_or_insert_with(|| started.elapsed());
            }
            Some(Seen::Guild { .. }) => guilds += 1,
            Some(Seen::Error { shard, error }) => bail!("shard {shard}: {error}"),
            Some(_) => {}
            None => bail!("shards stopped"),
        }
    }
    let elapsed = started.elapsed();
    Ok((
        Fleet {
            mock,
            seen,
            closers,
        },
        elapsed,
        first_ready.unwrap_or_default(),
    ))
}

fn reference(max_concurrency: u32, interval: Duration) -> MockConfig {
    MockConfig::builder()
        .guilds(SHARDS as usize * GUILDS_PER_SHARD)
        .recommended_shards(SHARDS)
        .max_concurrency(max_concurrency)
        .identify_interval(interval)
        .heartbeat_interval(Duration::from_secs(1))
        .build()
}

async fn startup(max_concurrency: u32, interval: Duration) -> Result<()> {
    let (fleet, elapsed, first_ready) =
        launch(reference(max_concurrency, interval), interval).await?;
    let waits = SHARDS.div_ceil(max_concurrency) - 1;
    let limit = interval * waits + first_ready;
    let stats = fleet.mock.stats();
    println!(
        "startup, max_concurrency {max_concurrency}, interval {interval:?}: all guilds in {elapsed:.3?}; \
         identify limit {waits} x {interval:?} + first READY {first_ready:.3?} = {limit:.3?}; ratio {:.3}; \
         identifies {}, violations {}",
        elapsed.as_secs_f64() / limit.as_secs_f64(),
        stats.identifies,
        stats.total_violations()
    );
    close(&fleet);
    Ok(())
}

async fn throughput() -> Result<()> {
    let interval = Duration::from_millis(50);
    let (mut fleet, _, _) = launch(reference(16, interval), interval).await?;
    let rate = 20.0; // per guild per second: 32 000 events/s over 1600 guilds
    let window = Duration::from_secs(3);
    fleet.mock.start_events(Some(rate));
    let started = Instant::now();
    let mut received = HashSet::new();
    while started.elapsed() < window {
        if let Ok(Some(Seen::Event { id, .. })) =
            tokio::time::timeout(Duration::from_millis(100), fleet.seen.recv()).await
        {
            received.insert(id);
        }
    }
    fleet.mock.stop_events();
    let produced_in_window = fleet.mock.event_report().produced;
    let drained = Instant::now();
    while (received.len() as u64) < produced_in_window
        && drained.elapsed() < Duration::from_secs(30)
    {
        if let Ok(Some(Seen::Event { id, .. })) =
            tokio::time::timeout(Duration::from_millis(100), fleet.seen.recv()).await
        {
            received.insert(id);
        }
    }
    let total = started.elapsed();
    let report = fleet.mock.event_report();
    println!(
        "events: asked {:.0}/s; produced {} in {window:?} ({:.0}/s); all received after {total:.2?} ({:.0}/s end to end); missing {}",
        rate * (SHARDS as usize * GUILDS_PER_SHARD) as f64,
        report.produced,
        report.produced as f64 / window.as_secs_f64(),
        received.len() as f64 / total.as_secs_f64(),
        report.produced.saturating_sub(received.len() as u64)
    );
    close(&fleet);
    Ok(())
}

fn close(fleet: &Fleet) {
    for closer in &fleet.closers {
        let _ = closer.close(CloseFrame::NORMAL);
    }
}

fn rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}
