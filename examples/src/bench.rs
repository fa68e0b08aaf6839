//! `cargo xtask bench`: fleet's figures on this machine, against discord-mock. Compare ratios
//! within one run; absolute times vary with the machine's load.
//!
//! The reference scenario of DESIGN.md: 16 shards in 4 clusters, 100 guilds per shard, one echo
//! service. discord-mock runs as a process of its own (this binary with `serve-mock`), so the
//! admiral's memory is the admiral's alone.
//!
//! 1. Startup (twilight clusters, and serenity clusters once) against the identify limit, `(ceil(S / max_concurrency) - 1)` intervals plus the
//!    first READY, at `max_concurrency` 16 (Discord's 5 s interval), 4 and 1 (shorter intervals, so
//!    the run stays short; the ratio is what counts).
//! 2. Service command round trips: sequential p50/p99, and throughput with 100 in flight.
//! 3. Broadcasts from the admiral to every worker, 100 in flight: messages delivered per second.
//! 4. Resident memory of the admiral and of each worker.
//! 5. Events from the mock's source through the shards to the clusters' handlers, per second.
//! 6. Restarting a cluster with each strategy while events flow: per-shard unavailability,
//!    identifies spent, events lost or handled twice; then the same for a `SIGKILL` of a cluster
//!    (crash resume), a deploy of every worker onto a new build, and a reshard ([`restart`]).
//!    In a section of its own, `admiral`: the admiral itself killed with `SIGKILL` and adopted by
//!    the next one, then re-executed in place with `SIGHUP` ([`admiral`]).
//! 7. REST through the central proxy: added latency, throughput, and 429s saved when three
//!    clusters share one channel's limit ([`rest`]).
//!
//! `cargo xtask bench [SECTION...]` runs only the named sections: `startup` (1), `ipc` (2, 3,
//! with eris-fleet's path, cluster → admiral → service, and the floor of [`floor`] beside them),
//! `memory` (4), `events` (5), `restart` (6), `admiral` (6, the admiral's own), `hosts` (one bot
//! on three hosts sharing a Redis, [`hosts`]), `rest` (7), `stats` (8: what a stats round costs
//! the admiral and the workers, at the reference scenario and at 200 shards), `cache` (what a
//! guild costs a cluster's cache, by setting and models, [`cache`]). With none, all of
//! them but `scale` (9: 1,000 guilds per shard at 100 and 300 shards, [`scale`]), which runs only
//! when named: it takes minutes and gigabytes.

#[path = "bench/admiral.rs"]
mod admiral;
#[path = "bench/cache.rs"]
mod cache;
#[path = "bench/floor.rs"]
mod floor;
#[path = "bench/hosts.rs"]
mod hosts;
#[path = "bench/rest.rs"]
mod rest;
#[path = "bench/restart.rs"]
mod restart;
#[path = "bench/scale.rs"]
mod scale;
#[path = "bench/stats.rs"]
mod stats;

/// Discord's identify interval, which the reference scenario (`max_concurrency` 16) runs with.
const IDENTIFY_INTERVAL: Duration = Duration::from_secs(5);

/// The bench mock's gateway heartbeat interval.
const MOCK_HEARTBEAT: Duration = Duration::from_secs(5);

/// The soft-kill notice of the bench's fleet: one mock heartbeat and a second, so an old
/// process's sessions confirm every event they handled before it goes.
const NOTICE: Duration = Duration::from_secs(6);

use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use carrier::admiral::WorkerCommand;
use carrier::admiral::{LifecycleEvent, RestartMode};
use carrier::{AdmiralHandle, FleetEvent, FleetOptions, Payload, ShardEvent};
use clap::Parser;
use discord_mock::{MockConfig, MockDiscord};
use fleet_examples::{LIB_ENV, Lib, pss_mib, rss_mib};
use tokio::io::AsyncBufReadExt as _;

const SHARDS: u32 = 16;
const CLUSTERS: u32 = 4;
const GUILDS_PER_SHARD: usize = 100;

/// The sections `cargo xtask bench SECTION...` can name.
const SECTIONS: [&str; 11] = [
    "startup", "ipc", "memory", "cache", "events", "restart", "admiral", "hosts", "rest", "stats",
    "scale",
];

/// The large scenario of the stats section.
const LARGE_SHARDS: u32 = 200;
const LARGE_CLUSTERS: u32 = 10;

#[derive(Debug, Parser)]
enum Mode {
    /// Serve a discord-mock for the benchmark and print its address.
    ServeMock {
        #[arg(long)]
        max_concurrency: u32,
        #[arg(long)]
        interval_ms: u64,
        #[arg(long, default_value_t = SHARDS)]
        shards: u32,
        #[arg(long, default_value_t = GUILDS_PER_SHARD)]
        guilds_per_shard: usize,
        /// How long a disconnected session stays resumable.
        #[arg(long, default_value_t = 15_000)]
        resume_timeout_ms: u64,
        /// One `GUILD_MEMBER_ADD` every this many events (0: none); the mock's default if unset.
        #[arg(long)]
        member_add_every: Option<u32>,
    },
}

#[tokio::main]
async fn main() -> Result<ExitCode> {
    carrier::logging::init(carrier::logging::LogFormat::Text, "warn");
    if carrier::is_worker() {
        fleet_examples::fleet_from_env(FleetOptions::new(""))
            .run()
            .await?;
        return Ok(ExitCode::SUCCESS);
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("serve-mock") => {
            let Mode::ServeMock {
                max_concurrency,
                interval_ms,
                shards,
                guilds_per_shard,
                resume_timeout_ms,
                member_add_every,
            } = Mode::parse();
            let resume_timeout = Duration::from_millis(resume_timeout_ms);
            serve_mock(
                max_concurrency,
                interval_ms,
                shards,
                guilds_per_shard,
                resume_timeout,
                member_add_every,
            )
            .await
        }
        Some("admiral-process") => admiral::serve(&args[1..]).await,
        Some("host-process") => hosts::serve(&args[1..]).await,
        Some("cache-cost") => cache::serve(&args[1..]),
        Some("floor-server") => {
            let path = args.get(1).context("floor-server PATH RESPONSE_BYTES")?;
            let response = args.get(2).context("floor-server PATH RESPONSE_BYTES")?;
            floor::serve(path.as_ref(), response.parse()?).await?;
            Ok(ExitCode::SUCCESS)
        }
        Some("floor-relay") => {
            let listen = args.get(1).context("floor-relay LISTEN UPSTREAM")?;
            let upstream = args.get(2).context("floor-relay LISTEN UPSTREAM")?;
            floor::relay(listen.as_ref(), upstream.as_ref()).await?;
            Ok(ExitCode::SUCCESS)
        }
        _ => {
            for section in &args {
                if !SECTIONS.contains(&section.as_str()) {
                    bail!("unknown section {section:?}; expected any of {SECTIONS:?}");
                }
            }
            run(&args).await
        }
    }
}

async fn serve_mock(
    max_concurrency: u32,
    interval_ms: u64,
    shards: u32,
    guilds_per_shard: usize,
    resume_timeout: Duration,
    member_add_every: Option<u32>,
) -> Result<ExitCode> {
    let mut config = MockConfig::builder();
    if let Some(every) = member_add_every {
        config = config.member_add_every(every);
    }
    let mock = MockDiscord::start(
        config
            // Discord raises the daily identify budget of bots this large past its 1,000.
            .session_limit((shards * 4).max(1000))
            .guilds(shards as usize * guilds_per_shard)
            .recommended_shards(shards)
            .max_concurrency(max_concurrency)
            .identify_interval(Duration::from_millis(interval_ms))
            .heartbeat_interval(MOCK_HEARTBEAT)
            // By default a session nobody resumes expires within a restart row's settling
            // (30 s), so the events it held count as lost in that row, not in a later one.
            .resume_timeout(resume_timeout)
            // A long run at thousands of events a second keeps no history it never reads.
            .keep_event_ids(false)
            .build(),
    )
    .await?;
    println!("{}", mock.addr());
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while stdin.next_line().await?.is_some() {}
    let stats = mock.stats();
    eprintln!(
        "mock: identifies {}, violations {}{}",
        stats.identifies,
        stats.total_violations(),
        if stats.violations.is_empty() {
            String::new()
        } else {
            format!(" {:?}", stats.violations)
        }
    );
    Ok(if stats.total_violations() == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// A mock in its own process; closing its stdin stops it.
struct MockProcess {
    child: tokio::process::Child,
    url: String,
}

async fn start_mock(max_concurrency: u32, interval: Duration, shards: u32) -> Result<MockProcess> {
    start_mock_with(max_concurrency, interval, shards, GUILDS_PER_SHARD).await
}

/// [`start_mock`] with this many guilds per shard.
async fn start_mock_with(
    max_concurrency: u32,
    interval: Duration,
    shards: u32,
    guilds_per_shard: usize,
) -> Result<MockProcess> {
    start_mock_resumable(
        max_concurrency,
        interval,
        shards,
        guilds_per_shard,
        Duration::from_secs(15),
        None,
    )
    .await
}

/// [`start_mock_with`], its sessions resumable this long after a disconnect, and its event
/// source making one `GUILD_MEMBER_ADD` every `member_add_every` events (0: none; `None`: the
/// mock's default).
async fn start_mock_resumable(
    max_concurrency: u32,
    interval: Duration,
    shards: u32,
    guilds_per_shard: usize,
    resume_timeout: Duration,
    member_add_every: Option<u32>,
) -> Result<MockProcess> {
    let mut command = tokio::process::Command::new(std::env::current_exe()?);
    command.args([
        "serve-mock",
        "--max-concurrency",
        &max_concurrency.to_string(),
        "--interval-ms",
        &interval.as_millis().to_string(),
        "--shards",
        &shards.to_string(),
        "--guilds-per-shard",
        &guilds_per_shard.to_string(),
        "--resume-timeout-ms",
        &resume_timeout.as_millis().to_string(),
    ]);
    if let Some(every) = member_add_every {
        command.args(["--member-add-every", &every.to_string()]);
    }
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = child.stdout.take().context("mock stdout")?;
    let addr = tokio::io::BufReader::new(stdout)
        .lines()
        .next_line()
        .await?
        .context("mock address")?;
    Ok(MockProcess {
        child,
        url: format!("http://{addr}"),
    })
}

impl MockProcess {
    fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    async fn stop(mut self) -> Result<bool> {
        drop(self.child.stdin.take());
        Ok(self.child.wait().await?.success())
    }
}

async fn launch(
    mock: &MockProcess,
    interval: Duration,
    lib: Lib,
    clusters: u32,
) -> Result<(AdmiralHandle, Duration, Duration)> {
    launch_with(mock, interval, lib, clusters, |_| {}).await
}

/// [`launch`], with `tweak` applied to the fleet's options last.
async fn launch_with(
    mock: &MockProcess,
    interval: Duration,
    lib: Lib,
    clusters: u32,
    tweak: impl FnOnce(&mut FleetOptions),
) -> Result<(AdmiralHandle, Duration, Duration)> {
    let mut options = FleetOptions::new("mock-token");
    options.rest_url = mock.url.clone();
    options.clusters = Some(clusters);
    options.identify_interval = interval;
    options.echo_output = false;
    options.soft_kill_notice = NOTICE;
    let mut command = WorkerCommand::current()?;
    let name = if lib == Lib::Serenity {
        "serenity"
    } else {
        "twilight"
    };
    command.env.push((LIB_ENV.into(), name.into()));
    options.worker_command = Some(command);
    tweak(&mut options);
    let started = Instant::now();
    let admiral = fleet_examples::fleet_for(lib, options)
        .run()
        .await?
        .context("admiral")?;
    let mut events = admiral.events();
    let mut first_ready = None;
    loop {
        match tokio::time::timeout(Duration::from_mins(5), events.recv())
            .await
            .context("launch stalled")??
        {
            FleetEvent::Shard {
                event: ShardEvent::Ready,
                ..
            } => {
                first_ready.get_or_insert_with(|| started.elapsed());
            }
            FleetEvent::Lifecycle(LifecycleEvent::AllReady { failed, .. }) => {
                if failed > 0 {
                    bail!("{failed} workers failed to start");
                }
                break;
            }
            _ => {}
        }
    }
    Ok((admiral, started.elapsed(), first_ready.unwrap_or_default()))
}

async fn run(sections: &[String]) -> Result<ExitCode> {
    let asked = |section: &str| sections.is_empty() || sections.iter().any(|s| s == section);
    println!(
        "fleet bench: {SHARDS} shards in {CLUSTERS} clusters, {GUILDS_PER_SHARD} guilds per shard, one echo service"
    );
    let mut all_ok = true;
    let mut scenarios = vec![(Lib::Twilight, 16, IDENTIFY_INTERVAL)];
    if asked("startup") {
        scenarios.extend([
            (Lib::Twilight, 4, Duration::from_secs(1)),
            (Lib::Serenity, 4, Duration::from_secs(1)),
            (Lib::Twilight, 1, Duration::from_millis(250)),
        ]);
    } else if asked("restart") {
        scenarios.push((Lib::Serenity, 4, Duration::from_secs(1)));
    }
    if !asked("startup")
        && !["ipc", "memory", "events", "restart", "stats"]
            .iter()
            .any(|s| asked(s))
    {
        scenarios.clear();
    }
    for (lib, max_concurrency, interval) in scenarios {
        let mock = start_mock(max_concurrency, interval, SHARDS).await?;
        let (admiral, startup, first_ready) = launch(&mock, interval, lib, CLUSTERS).await?;
        let waits = SHARDS.div_ceil(max_concurrency) - 1;
        let limit = interval * waits + first_ready;
        if asked("startup") {
            println!(
                "startup, {lib:?}, max_concurrency {max_concurrency:>2}, interval {interval:>6.2?}: ready in {startup:>8.3?}; limit {waits:>2} x {interval:.2?} + first READY {first_ready:.3?} = {limit:>8.3?}; ratio {:.3}",
                startup.as_secs_f64() / limit.as_secs_f64()
            );
        }
        if max_concurrency == 16 {
            if asked("ipc") {
                ipc_figures(&admiral).await?;
            }
            if asked("memory") {
                memory(&admiral).await?;
            }
            if asked("events") {
                event_throughput(&admiral, &mock).await?;
            }
            if asked("stats") {
                stats::figures(&admiral, "reference scenario").await?;
            }
            if asked("restart") {
                let modes = [
                    RestartMode::Handover,
                    RestartMode::Overlap,
                    RestartMode::Hard,
                ];
                println!("restarts, twilight:");
                restart::figures(&admiral, &mock, NOTICE, interval, &modes, "twilight").await?;
            }
        } else if lib == Lib::Serenity && asked("restart") {
            println!("restarts, serenity:");
            let modes = [RestartMode::Handover, RestartMode::Overlap];
            restart::figures(&admiral, &mock, NOTICE, interval, &modes, "serenity").await?;
        }
        admiral.shutdown().await;
        let clean = mock.stop().await?;
        if !clean {
            println!("  discord-mock counted rule violations in this run");
            all_ok = false;
        }
    }
    if asked("stats") {
        // 200 shards: identifies 16 at a time, two seconds apart (with ten clusters starting at
        // once on a small machine, grants at a shorter interval reach the mock closer than its
        // interval allows).
        let interval = Duration::from_secs(2);
        let mock = start_mock(16, interval, LARGE_SHARDS).await?;
        let (admiral, _, _) = launch(&mock, interval, Lib::Twilight, LARGE_CLUSTERS).await?;
        stats::figures(&admiral, "large scenario").await?;
        admiral.shutdown().await;
        all_ok &= mock.stop().await?;
    }
    if asked("cache") {
        cache::figures().await?;
    }
    if asked("hosts") {
        all_ok &= hosts::figures().await?;
    }
    if asked("admiral") {
        // The admiral's own restarts, its fleet on a mock of its own.
        println!("admiral restarts, twilight:");
        let mock = start_mock(16, IDENTIFY_INTERVAL, SHARDS).await?;
        admiral::figures(&mock, IDENTIFY_INTERVAL).await?;
        all_ok &= mock.stop().await?;
    }
    // Only when named: it takes minutes and gigabytes.
    if sections.iter().any(|s| s == "scale") {
        all_ok &= scale::figures().await?;
    }
    // Last, so its in-process mock and clients leave the admiral's memory figure alone.
    if asked("rest") {
        rest::figures().await?;
    }
    Ok(if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// One plain HTTP/1.1 request to the mock's control routes; returns the body.
async fn control(mock: &MockProcess, method: &str, path: &str) -> Result<serde_json::Value> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let host = mock.url.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(host).await?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Ok(serde_json::from_str(body).unwrap_or(serde_json::Value::Null))
}

/// Events handled by every cluster's user code so far.
async fn handled(admiral: &AdmiralHandle) -> Result<u64> {
    let mut total = 0;
    for outcome in admiral
        .ipc()
        .all_clusters_command(Payload::from("status"))
        .await?
        .values()
    {
        if let carrier::Outcome::Ok(payload) = outcome {
            total += payload.decode::<fleet_examples::ClusterReport>()?.events;
        }
    }
    Ok(total)
}

/// Events from discord-mock's source through the shards to the clusters' handlers.
/// A positive number from the environment variable `name`, if it holds one.
fn env_count<T: std::str::FromStr + PartialOrd + Default>(name: &str) -> Option<T> {
    std::env::var(name)
        .ok()
        .and_then(|n| n.trim().parse().ok())
        .filter(|n| *n > T::default())
}

async fn event_throughput(admiral: &AdmiralHandle, mock: &MockProcess) -> Result<()> {
    let rate = 20; // per guild per second: 32 000 events/s over 1600 guilds
    let window = Duration::from_secs(3);
    let handled = async || handled(admiral).await;
    let before = handled().await?;
    let started = Instant::now();
    control(mock, "POST", &format!("/_mock/events/start?rate={rate}")).await?;
    tokio::time::sleep(window).await;
    control(mock, "POST", "/_mock/events/stop").await?;
    let produced = control(mock, "GET", "/_mock/events").await?["produced"]
        .as_u64()
        .unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut done = handled().await? - before;
    while done < produced && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        done = handled().await? - before;
    }
    let elapsed = started.elapsed();
    let report = control(mock, "GET", "/_mock/events").await?;
    println!(
        "events through the fleet: {produced} produced in {window:?} ({:.0}/s asked {}/s); {done} handled by the clusters after {elapsed:.2?} ({:.0}/s end to end); lost {}, handled twice {}",
        produced as f64 / window.as_secs_f64(),
        rate * SHARDS as usize * GUILDS_PER_SHARD,
        done as f64 / elapsed.as_secs_f64(),
        report["lost"],
        report["duplicates"]
    );
    Ok(())
}

pub(crate) fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

async fn ipc_figures(admiral: &AdmiralHandle) -> Result<()> {
    let ipc = admiral.ipc().clone();
    let payload = Payload::from("ping");
    for _ in 0..1000 {
        ipc.service_command("echo", payload.clone()).await?;
    }
    let rounds = 20_000;
    let mut times = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let sent = Instant::now();
        ipc.service_command("echo", payload.clone()).await?;
        times.push(sent.elapsed());
    }
    times.sort_unstable();
    let (admiral_p50, admiral_p99) = (percentile(&times, 0.50), percentile(&times, 0.99));
    println!(
        "service command round trip (admiral -> echo -> admiral), {rounds} sequential: p50 {admiral_p50:.1?}, p99 {admiral_p99:.1?}, max {:.1?}",
        times[times.len() - 1]
    );

    let total = 200_000usize;
    let in_flight = 100;
    let started = Instant::now();
    let tasks: Vec<_> = (0..in_flight)
        .map(|_| {
            let ipc = ipc.clone();
            let payload = payload.clone();
            tokio::spawn(async move {
                for _ in 0..total / in_flight {
                    ipc.service_command("echo", payload.clone()).await?;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    let elapsed = started.elapsed();
    let admiral_rate = total as f64 / elapsed.as_secs_f64();
    println!(
        "service command throughput, {in_flight} in flight: {total} in {elapsed:.2?} = {admiral_rate:.0} requests/s"
    );
    eris_path_and_floor(
        &ipc,
        rounds,
        total,
        in_flight,
        (admiral_p50, admiral_p99, admiral_rate),
    )
    .await?;

    // Broadcasts: every worker counts `tick`s; wait until all have them all.
    let receivers = u64::from(CLUSTERS) + 1;
    let broadcasts = 100_000u64;
    let started = Instant::now();
    let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let tasks: Vec<_> = (0..in_flight)
        .map(|_| {
            let ipc = ipc.clone();
            let sent = sent.clone();
            tokio::spawn(async move {
                while sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < broadcasts {
                    ipc.broadcast("tick", Payload::empty()).await?;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    let accepted = started.elapsed();
    let deadline = Instant::now() + Duration::from_mins(1);
    loop {
        let echo: u64 = ipc
            .service_command("echo", Payload::from("ticks"))
            .await?
            .decode()?;
        let clusters = ipc.all_clusters_command(Payload::from("status")).await?;
        let mut delivered = echo;
        for outcome in clusters.values() {
            if let carrier::Outcome::Ok(payload) = outcome {
                delivered += payload.decode::<fleet_examples::ClusterReport>()?.ticks;
            }
        }
        if delivered >= broadcasts * receivers || Instant::now() > deadline {
            let elapsed = started.elapsed();
            println!(
                "broadcast, {in_flight} in flight: {broadcasts} broadcasts accepted in {accepted:.2?}; {delivered} of {} deliveries done in {elapsed:.2?} = {:.0} messages/s",
                broadcasts * receivers,
                delivered as f64 / elapsed.as_secs_f64()
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// eris-fleet's path (a cluster asks the echo service through the admiral), and the floor of
/// three bare processes, with fleet's figures as ratios to the floor.
async fn eris_path_and_floor(
    ipc: &carrier::Ipc,
    rounds: usize,
    total: usize,
    in_flight: usize,
    admiral: (Duration, Duration, f64),
) -> Result<()> {
    let run = fleet_examples::IpcRun {
        rounds: rounds as u32,
        total: total as u32,
        in_flight: in_flight as u32,
    };
    let eris: fleet_examples::IpcFigures = ipc
        .command_within(
            carrier::Target::Cluster(0),
            run.command(),
            Duration::from_mins(5),
        )
        .await?
        .decode()?;
    let (eris_p50, eris_p99) = (
        Duration::from_nanos(eris.p50_ns),
        Duration::from_nanos(eris.p99_ns),
    );
    println!(
        "cluster -> admiral -> echo -> admiral -> cluster (eris-fleet's path), {rounds} sequential: p50 {eris_p50:.1?}, p99 {eris_p99:.1?}; {in_flight} in flight: {:.0} requests/s",
        eris.per_second
    );
    // The floor, with fleet's own message sizes on the wire.
    let (request, response) = message_sizes()?;
    let floor = floor::start(response).await?;
    let bare = floor::measure(&floor, request, response, rounds, total, in_flight).await?;
    println!(
        "floor (bare client -> byte-pump relay -> server over Unix sockets, {request}/{response}-byte messages): p50 {:.1?}, p99 {:.1?}; {in_flight} in flight: {:.0} round trips/s",
        bare.p50, bare.p99, bare.per_second
    );
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();
    println!(
        "  eris-fleet's path / floor: p50 {:.2}x, p99 {:.2}x (target within 1.3x); throughput {:.2} of the floor (target at least 0.5)",
        ratio(eris_p50, bare.p50),
        ratio(eris_p99, bare.p99),
        eris.per_second / bare.per_second
    );
    println!(
        "  admiral -> echo / floor: p50 {:.2}x, p99 {:.2}x; throughput {:.2} of the floor",
        ratio(admiral.0, bare.p50),
        ratio(admiral.1, bare.p99),
        admiral.2 / bare.per_second
    );
    Ok(())
}

/// The frame sizes of one command on eris-fleet's path: the request a cluster sends, and the
/// reply it gets back (length prefixes included).
fn message_sizes() -> Result<(usize, usize)> {
    use carrier::ipc::frame::{DEFAULT_MAX_FRAME, encode};
    use carrier::ipc::proto::{Down, Outcome, Reply, Request, Up};
    let request = Up::Request {
        id: u64::MAX / 3,
        timeout_ms: 10_000,
        request: Request::Command {
            target: carrier::Target::Service("echo".into()),
            payload: Payload::from("ping"),
        },
    };
    let reply = Down::Reply {
        id: u64::MAX / 3,
        reply: Reply::Outcome(Outcome::Ok(Payload::from("ping"))),
    };
    Ok((
        encode(&request, DEFAULT_MAX_FRAME)?.len(),
        encode(&reply, DEFAULT_MAX_FRAME)?.len(),
    ))
}

async fn memory(admiral: &AdmiralHandle) -> Result<()> {
    use std::fmt::Write as _;
    let me = std::process::id();
    let admiral_rss = rss_mib(me).unwrap_or(f64::NAN);
    let mut total = admiral_rss;
    let mut pss = pss_mib(me).unwrap_or(f64::NAN);
    let mut line = format!("memory (RSS): admiral {admiral_rss:.1} MiB");
    for worker in admiral.workers().await? {
        if let Some(rss) = worker.pid.and_then(rss_mib) {
            total += rss;
            pss += worker.pid.and_then(pss_mib).unwrap_or(f64::NAN);
            write!(line, ", {} {rss:.1}", worker.id)?;
        }
    }
    println!(
        "{line}; fleet total {total:.1} MiB RSS, {pss:.1} MiB PSS (shared pages counted once; discord-mock not included)"
    );
    Ok(())
}
