//! The fleet example: twilight shards on an embedded discord-mock (or on Discord when
//! `DISCORD_TOKEN` is set), paced by one identify queue, with events flowing and a resume shown.
//!
//! `cargo xtask example` runs it until Ctrl-C; `cargo xtask example --once` exits after the tour,
//! 0 if every step held (no rule broken, no event lost) and 1 otherwise.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use clap::Parser;
use discord_mock::{MockConfig, MockDiscord};
use fleet_examples::{BucketQueue, Seen, run_shard};
use tokio::sync::mpsc;
use twilight_gateway::{CloseFrame, ConfigBuilder, Intents, Shard, ShardId};

/// Run a small fleet of shards against discord-mock (or Discord with `DISCORD_TOKEN`).
#[derive(Debug, Parser)]
struct Args {
    /// Exit after the tour: 0 if every step held, 1 otherwise.
    #[arg(long)]
    once: bool,
    /// Discord library to run the shards with.
    #[arg(long, default_value = "twilight", value_parser = ["twilight"])]
    lib: String,
    /// Shards to run on the mock.
    #[arg(long, default_value_t = 4)]
    shards: u32,
    /// The mock's identify buckets (`max_concurrency`).
    #[arg(long, default_value_t = 2)]
    max_concurrency: u32,
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let args = Args::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ok = match std::env::var("DISCORD_TOKEN") {
        Ok(token) => run_on_discord(token, &args).await?,
        Err(_) => run_on_mock(&args).await?,
    };
    if args.once && !ok {
        std::process::exit(1);
    }
    Ok(())
}

async fn run_on_mock(args: &Args) -> Result<bool> {
    let interval = Duration::from_millis(500);
    let mock = MockDiscord::start(
        MockConfig::builder()
            .guilds(10 * args.shards as usize)
            .recommended_shards(args.shards)
            .max_concurrency(args.max_concurrency)
            .identify_interval(interval)
            .heartbeat_interval(Duration::from_secs(1))
            .event_rate(2.0)
            .build(),
    )
    .await?;
    println!("discord-mock on {} (no token needed)", mock.addr());
    let http = twilight_http::Client::builder()
        .proxy(mock.addr().to_string(), true)
        .token("Bot mock-token".to_owned())
        .build();
    let info = http.gateway().authed().await?.model().await?;
    let buckets = u32::from(info.session_start_limit.max_concurrency);
    println!(
        "/gateway/bot: {} shards, max_concurrency {buckets}; identify limit: {} intervals of {interval:?}",
        info.shards,
        info.shards.div_ceil(buckets)
    );
    let queue = BucketQueue::new(buckets, interval);
    let config = ConfigBuilder::new(
        "mock-token".to_owned(),
        Intents::GUILDS | Intents::GUILD_MESSAGES,
    )
    .proxy_url(info.url.clone())
    .queue(queue)
    .build();
    let (tx, mut seen) = mpsc::unbounded_channel();
    let mut closers = Vec::new();
    let started = tokio::time::Instant::now();
    for id in 0..info.shards {
        let shard = Shard::with_config(ShardId::new(id, info.shards), config.clone());
        closers.push(shard.sender());
        tokio::spawn(run_shard(shard, tx.clone()));
    }

    let mut ready = 0;
    let mut events: BTreeMap<u32, u64> = BTreeMap::new();
    while ready < info.shards {
        match recv(&mut seen).await? {
            Seen::Ready { shard, guilds } => {
                ready += 1;
                println!(
                    "  shard {shard} ready with {guilds} guilds ({ready}/{} ready, {:.2?})",
                    info.shards,
                    started.elapsed()
                );
            }
            Seen::Error { shard, error } => bail!("shard {shard}: {error}"),
            _ => {}
        }
    }
    println!(
        "all {} shards ready in {:.2?}",
        info.shards,
        started.elapsed()
    );

    mock.start_events(None);
    let until = tokio::time::Instant::now() + Duration::from_secs(2);
    while tokio::time::Instant::now() < until {
        if let Ok(Some(Seen::Event { shard, .. })) =
            tokio::time::timeout_at(until, seen.recv()).await
        {
            *events.entry(shard).or_default() += 1;
        }
    }
    println!("events in 2 s per shard: {events:?}");

    println!("closing shard 0's connection with 4000: it must resume, not identify");
    mock.close_shard(0, 4000);
    loop {
        match recv(&mut seen).await? {
            Seen::Resumed { shard: 0 } => break,
            Seen::Error { shard, error } => bail!("shard {shard}: {error}"),
            _ => {}
        }
    }
    println!("shard 0 resumed");

    if !args.once {
        println!("running; Ctrl-C to stop");
        let mut status = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break,
                _ = status.tick() => {
                    let report = mock.event_report();
                    println!("status: {} events produced, {} delivered, {} lost", report.produced, report.delivered, report.lost);
                }
                Some(_) = seen.recv() => {}
            }
        }
    }
    mock.stop_events();
    let confirmed = mock
        .wait_until(Duration::from_secs(10), "events confirmed", |m| {
            m.event_report().in_flight == 0
        })
        .await;
    for closer in &closers {
        let _ = closer.close(CloseFrame::NORMAL);
    }
    let stats = mock.stats();
    let report = mock.event_report();
    println!(
        "mock counters: identifies {}, resumes {}, violations {}, events produced {}, delivered {}, lost {}, duplicates {}",
        stats.identifies,
        stats.resumes,
        stats.total_violations(),
        report.produced,
        report.delivered,
        report.lost,
        report.duplicates
    );
    let ok = confirmed.is_ok()
        && stats.total_violations() == 0
        && report.lost == 0
        && stats.identifies == u64::from(info.shards);
    println!("{}", if ok { "tour passed" } else { "tour FAILED" });
    Ok(ok)
}

async fn run_on_discord(token: String, args: &Args) -> Result<bool> {
    let http = twilight_http::Client::new(token.clone());
    let info = http
        .gateway()
        .authed()
        .await
        .context("GET /gateway/bot")?
        .model()
        .await?;
    println!(
        "Discord recommends {} shards (max_concurrency {})",
        info.shards, info.session_start_limit.max_concurrency
    );
    let config = ConfigBuilder::new(token, Intents::GUILDS).build();
    let (tx, mut seen) = mpsc::unbounded_channel();
    let mut closers = Vec::new();
    for id in 0..info.shards {
        let shard = Shard::with_config(ShardId::new(id, info.shards), config.clone());
        closers.push(shard.sender());
        tokio::spawn(run_shard(shard, tx.clone()));
    }
    let mut ready = 0;
    while ready < info.shards {
        if let Seen::Ready { shard, guilds } = recv(&mut seen).await? {
            ready += 1;
            println!(
                "  shard {shard} ready with {guilds} guilds ({ready}/{})",
                info.shards
            );
        }
    }
    if !args.once {
        tokio::signal::ctrl_c().await?;
    }
    for closer in &closers {
        let _ = closer.close(CloseFrame::NORMAL);
    }
    Ok(true)
}

async fn recv(seen: &mut mpsc::UnboundedReceiver<Seen>) -> Result<Seen> {
    tokio::time::timeout(Duration::from_mins(1), seen.recv())
        .await
        .context("no shard reported anything for 60 s")?
        .context("every shard stopped")
}
