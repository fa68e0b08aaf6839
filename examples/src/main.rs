//! The fleet example: an admiral, cluster processes running twilight shards, and an `echo`
//! service, on an embedded discord-mock (or on Discord when `DISCORD_TOKEN` is set).
//!
//! `cargo xtask example` tours the fleet and then runs until Ctrl-C, when it shuts down
//! gracefully; `cargo xtask example --once` exits after the tour: 0 if every step held (no rule of
//! Discord's broken, no event lost, every call answered), 1 otherwise.

use std::collections::BTreeSet;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use carrier::admiral::RestartMode;
use carrier::{AdmiralHandle, FleetOptions, Outcome, Payload, WorkerId};
use clap::Parser;
use discord_mock::{MockConfig, MockDiscord};
use fleet_examples::{ClusterReport, Lib};

/// Run a fleet on discord-mock (or on Discord with `DISCORD_TOKEN`).
#[derive(Debug, Parser)]
struct Args {
    /// Exit after the tour: 0 if every step held, 1 otherwise.
    #[arg(long)]
    once: bool,
    /// Discord library the clusters run: twilight or serenity.
    #[arg(long, default_value = "twilight")]
    lib: Lib,
    /// Shards the mock recommends.
    #[arg(long, default_value_t = 8)]
    shards: u32,
    /// Cluster processes.
    #[arg(long, default_value_t = 3)]
    clusters: u32,
    /// The mock's identify buckets (`max_concurrency`).
    #[arg(long, default_value_t = 2)]
    max_concurrency: u32,
    /// Run as one host of a bot on several, sharing this Redis (`redis://127.0.0.1:6379/0`):
    /// the host runs the ranges Redis gives it and shows them as they change, until Ctrl-C
    /// hands them to the other hosts.
    #[arg(long)]
    redis: Option<String>,
    /// This host's id among the bot's hosts (with `--redis`) [default: the hostname].
    #[arg(long)]
    host: Option<String>,
    /// A discord-mock (or other Discord) already running, shared by the hosts:
    /// `http://127.0.0.1:7878` (`cargo xtask mock -- --addr 127.0.0.1:7878`).
    #[arg(long)]
    rest_url: Option<String>,
    /// Its identify interval, in milliseconds.
    #[arg(long, default_value_t = 5000)]
    identify_interval_ms: u64,
}

#[tokio::main]
async fn main() -> Result<ExitCode> {
    carrier::logging::init(carrier::logging::LogFormat::Text, "warn");
    let args = Args::parse();
    if carrier::is_worker() {
        // This process is one of the admiral's workers (started with the admiral's arguments):
        // run it and leave.
        fleet_examples::fleet_for(args.lib, FleetOptions::new(""))
            .run()
            .await?;
        return Ok(ExitCode::SUCCESS);
    }
    if args.redis.is_some() {
        return several_hosts(&args).await;
    }
    let token = std::env::var("DISCORD_TOKEN").ok();
    let mock = match token {
        Some(_) => None,
        None => Some(start_mock(&args).await?),
    };
    let mut options = FleetOptions::new(token.clone().unwrap_or_else(|| "mock-token".to_owned()));
    options.clusters = Some(args.clusters);
    // The old process of a restarted cluster is warned this long before it goes.
    options.soft_kill_notice = admiral_notice();
    if let Some(mock) = &mock {
        options.rest_url = mock.http_url();
        options.identify_interval = mock.config().identify_interval;
        println!("discord-mock on {} (no token needed)", mock.addr());
    } else {
        println!("DISCORD_TOKEN set: running on Discord");
    }
    let started = Instant::now();
    let admiral = fleet_examples::fleet(options)
        .run()
        .await?
        .context("this process is the admiral")?;
    let ok = tour(&admiral, mock.as_ref(), started, args.once).await;
    let ok = match ok {
        Ok(ok) => ok,
        Err(error) => {
            println!("tour failed: {error:#}");
            false
        }
    };
    if !args.once {
        println!("running; Ctrl-C to stop");
        tokio::signal::ctrl_c().await?;
    }
    println!("shutting down");
    admiral.shutdown().await;
    println!("every worker has stopped");
    Ok(if ok || !args.once {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// One host of a bot on several: runs what Redis assigns it and says what that is whenever it
/// changes, until Ctrl-C.
async fn several_hosts(args: &Args) -> Result<ExitCode> {
    let token = std::env::var("DISCORD_TOKEN").unwrap_or_else(|_| "mock-token".to_owned());
    let mut options = FleetOptions::new(token);
    options.clusters = Some(args.clusters);
    options.redis_url.clone_from(&args.redis);
    options.host_id.clone_from(&args.host);
    if let Some(url) = &args.rest_url {
        options.rest_url.clone_from(url);
    }
    options.identify_interval = Duration::from_millis(args.identify_interval_ms);
    let admiral = fleet_examples::fleet_for(args.lib, options)
        .run()
        .await?
        .context("this process is the admiral")?;
    let plan = admiral.plan().clone();
    println!(
        "one host of a bot on several: {} shards in {} ranges (clusters); this host runs the ones Redis gives it; Ctrl-C hands them on",
        plan.shard_total,
        plan.clusters.len()
    );
    let mut shown = None;
    let stop = tokio::signal::ctrl_c();
    tokio::pin!(stop);
    loop {
        let running: BTreeSet<u32> = admiral
            .workers()
            .await?
            .iter()
            .filter(|w| w.state == carrier::admiral::State::Live)
            .filter_map(|w| match w.id {
                WorkerId::Cluster(c) => Some(c),
                WorkerId::Service(_) => None,
            })
            .collect();
        if shown.as_ref() != Some(&running) {
            let ranges: Vec<String> = plan
                .clusters
                .iter()
                .filter(|c| running.contains(&c.id))
                .map(|c| {
                    format!(
                        "cluster {} (shards {}-{})",
                        c.id, c.first_shard, c.last_shard
                    )
                })
                .collect();
            println!(
                "this host runs {}",
                if ranges.is_empty() {
                    "nothing yet".to_owned()
                } else {
                    ranges.join(", ")
                }
            );
            shown = Some(running);
        }
        tokio::select! {
            _ = &mut stop => break,
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
    println!("handing this host's ranges on and shutting down");
    admiral.shutdown().await;
    admiral.wait_stopped().await;
    println!("every worker has stopped");
    Ok(ExitCode::SUCCESS)
}

async fn start_mock(args: &Args) -> Result<MockDiscord> {
    let mock = MockDiscord::start(
        MockConfig::builder()
            .guilds(25 * args.shards as usize)
            .recommended_shards(args.shards)
            .max_concurrency(args.max_concurrency)
            .identify_interval(Duration::from_millis(500))
            .heartbeat_interval(Duration::from_secs(1))
            .event_rate(1.0)
            .build(),
    )
    .await?;
    Ok(mock)
}

/// Shows launch progress, a service command, a broadcast and the fleet's status. Returns whether
/// every step held.
async fn tour(
    admiral: &AdmiralHandle,
    mock: Option<&MockDiscord>,
    started: Instant,
    once: bool,
) -> Result<bool> {
    let plan = admiral.plan().clone();
    let total = plan.shard_count();
    println!(
        "plan: {} shards in {} clusters (max_concurrency {}); identify limit about {:.1?}",
        plan.shard_total,
        plan.clusters.len(),
        plan.max_concurrency,
        Duration::from_millis(500) * (total.div_ceil(plan.max_concurrency) - 1)
    );
    // Shards ready out of the total and the identify queue's ETA: a bar on a terminal, a line
    // every few seconds elsewhere, then one summary line.
    let launched = carrier::progress::show(admiral).await?;
    let mut ok = launched.failed == 0;
    println!(
        "fleet ready in {:.2?}: {} workers live, {} failed",
        started.elapsed(),
        launched.live,
        launched.failed
    );
    if let Some(mock) = mock {
        mock.start_events(None)?;
    }
    let ipc = admiral.ipc();

    let sent = Instant::now();
    let answer = ipc.service_command("echo", Payload::from("ping")).await?;
    println!(
        "service command round trip: echo answered {:?} in {:.2?}",
        String::from_utf8_lossy(answer.as_bytes()),
        sent.elapsed()
    );
    ok &= answer == Payload::from("ping");

    let (ack_tx, mut acks) = tokio::sync::mpsc::unbounded_channel();
    ipc.register("ack", move |m| {
        let _ = ack_tx.send(m.payload.decode::<u32>().unwrap_or(u32::MAX));
    });
    let sent = Instant::now();
    ipc.broadcast("hello", Payload::empty()).await?;
    let mut acked = BTreeSet::new();
    while acked.len() < plan.clusters.len() {
        let Ok(Some(id)) = tokio::time::timeout(Duration::from_secs(10), acks.recv()).await else {
            println!("broadcast: only clusters {acked:?} answered");
            ok = false;
            break;
        };
        acked.insert(id);
    }
    println!(
        "broadcast: every cluster answered in {:.2?}",
        sent.elapsed()
    );

    tokio::time::sleep(Duration::from_secs(2)).await; // let events flow for the status below
    ok &= print_status(admiral).await?;

    if let Some(mock) = mock {
        ok &= fetch_step(admiral, mock).await?;
    }
    let launch_identifies = mock.map(|m| m.stats().identifies);
    let restart_identifies = soft_restart_step(admiral, mock, &mut ok).await?;
    if let Some(mock) = mock {
        // The replacement got the old process's cache with its sessions.
        print!("after the restart, ");
        ok &= fetch_step(admiral, mock).await?;
    }
    let reshard_identifies = reshard_step(admiral, mock, &mut ok).await?;
    let crash_identifies = crash_step(admiral, mock, &mut ok).await?;
    deploy_dry_run(admiral, &mut ok).await;

    if let Some(mock) = mock {
        if once {
            mock.stop_events();
        }
        let confirmed = mock
            .wait_until(Duration::from_secs(10), "events confirmed", |m| {
                m.event_report().in_flight == 0
            })
            .await
            .is_ok();
        let stats = mock.stats();
        let report = mock.event_report();
        println!(
            "discord-mock: {} identifies for {} shards, {} rule violations; events produced {}, delivered {}, lost {}",
            stats.identifies,
            total,
            stats.total_violations(),
            report.produced,
            report.delivered,
            report.lost
        );
        ok &= (!once || confirmed)
            && stats.total_violations() == 0
            && report.lost == 0
            && launch_identifies == Some(u64::from(total))
            && stats.identifies
                == u64::from(total) + restart_identifies + reshard_identifies + crash_identifies;
    }
    println!("{}", if ok { "tour passed" } else { "tour FAILED" });
    Ok(ok)
}

/// The soft-kill notice the example runs with.
const fn admiral_notice() -> Duration {
    Duration::from_millis(1500)
}

/// Looks a guild up from the admiral: the cluster that owns its shard answers from its cache.
async fn fetch_step(admiral: &AdmiralHandle, mock: &MockDiscord) -> Result<bool> {
    let guild = mock.guild_ids()[0];
    let sent = Instant::now();
    let found: Option<serde_json::Value> = admiral.ipc().fetch_guild(guild).await?;
    let shard = (guild >> 22) % u64::from(admiral.plan().shard_total);
    let Some(found) = found else {
        println!("fetch_guild({guild}): not cached");
        return Ok(false);
    };
    println!(
        "fetch_guild({guild}) from shard {shard}'s cluster cache: {:?} in {:.2?}",
        found["name"].as_str().unwrap_or("?"),
        sent.elapsed()
    );
    Ok(found["id"].as_str() == Some(guild.to_string().as_str()))
}

/// Restarts cluster 0 while events flow: both libraries hand their sessions over (no identify,
/// no event lost or handled twice). Returns the identifies the restart spent.
async fn soft_restart_step(
    admiral: &AdmiralHandle,
    mock: Option<&MockDiscord>,
    ok: &mut bool,
) -> Result<u64> {
    let mode = RestartMode::Handover;
    let before = mock.map(|m| (m.stats(), m.event_report()));
    let (heard_tx, mut heard) = tokio::sync::mpsc::unbounded_channel();
    admiral.ipc().register("soft-kill-heard", move |m| {
        let _ = heard_tx.send(m.payload.decode::<(u32, u64)>().unwrap_or_default());
    });
    let sent = Instant::now();
    let restarted = admiral.restart(&WorkerId::Cluster(0), mode).await;
    let took = sent.elapsed();
    if let Ok((cluster, notice_ms)) = heard.try_recv() {
        println!("  cluster {cluster}'s old process was warned {notice_ms} ms before it went");
    } else {
        println!("  the old process never heard its soft-kill notice");
        *ok = false;
    }
    if let Err(error) = restarted {
        println!("soft restart of cluster 0 ({mode:?}) FAILED: {error}");
        *ok = false;
        return Ok(0);
    }
    let Some((stats, report)) = before else {
        println!("soft restart of cluster 0 ({mode:?}) done in {took:.2?}");
        return Ok(0);
    };
    let mock = mock.expect("before is some only with a mock");
    let after = mock.stats();
    let identifies = after.identifies - stats.identifies;
    let shards = admiral.plan().clusters[0].last_shard - admiral.plan().clusters[0].first_shard + 1;
    let now = mock.event_report();
    println!(
        "soft restart of cluster 0 ({mode:?}, {shards} shards) in {took:.2?} (its {:.1?} notice included): {identifies} identifies spent, {} resumes, {} events lost so far, {} handled twice",
        admiral_notice(),
        after.resumes - stats.resumes,
        now.lost - report.lost,
        now.duplicates - report.duplicates
    );
    *ok &= identifies == 0 && now.duplicates == report.duplicates && now.lost == report.lost;
    Ok(identifies)
}

/// Kills cluster 1's process with `SIGKILL` while events flow: its replacement resumes the
/// sessions it checkpointed. Returns the identifies it spent (none).
async fn crash_step(
    admiral: &AdmiralHandle,
    mock: Option<&MockDiscord>,
    ok: &mut bool,
) -> Result<u64> {
    let cluster = carrier::WorkerId::Cluster(1);
    let workers = admiral.workers().await?;
    let Some((pid, checkpointed)) = workers
        .iter()
        .find(|w| w.id == cluster)
        .and_then(|w| Some((w.pid?, w.checkpointed)))
    else {
        println!("SIGKILL of cluster 1: it has no process");
        *ok = false;
        return Ok(0);
    };
    let before = mock.map(|m| (m.stats(), m.event_report()));
    let mut events = admiral.events();
    let killed = Instant::now();
    std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()?;
    // Ready again once it was restarting (a Ready of the reshard's may still be on its way).
    let mut restarting = false;
    let back = loop {
        use carrier::admiral::LifecycleEvent as L;
        match tokio::time::timeout(Duration::from_secs(30), events.recv()).await {
            Ok(Ok(carrier::FleetEvent::Lifecycle(L::Restarting { worker, .. })))
                if worker == cluster =>
            {
                restarting = true;
            }
            Ok(Ok(carrier::FleetEvent::Lifecycle(L::Ready(w)))) if w == cluster && restarting => {
                break Some(killed.elapsed());
            }
            Ok(Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {}
            _ => break None,
        }
    };
    let Some(back) = back else {
        println!("SIGKILL of cluster 1: it never came back");
        *ok = false;
        return Ok(0);
    };
    let (Some((stats, report)), Some(mock)) = (before, mock) else {
        println!("SIGKILL of cluster 1: back in {back:.2?}");
        return Ok(0);
    };
    let after = mock.stats();
    let identifies = after.identifies - stats.identifies;
    let now = mock.event_report();
    println!(
        "SIGKILL of cluster 1 ({checkpointed} sessions checkpointed): back in {back:.2?}, {identifies} identifies spent, {} resumes, {} events lost so far",
        after.resumes - stats.resumes,
        now.lost - report.lost,
    );
    *ok &= identifies == 0 && now.lost == report.lost;
    Ok(identifies)
}

/// What deploying this same binary as a new build would do: the order, the identifies and the
/// time (`cargo xtask bench restart` runs a real one).
async fn deploy_dry_run(admiral: &AdmiralHandle, ok: &mut bool) {
    let mut plan = carrier::DeployPlan::new(std::env::current_exe().unwrap_or_default())
        .canary_bake(Duration::from_secs(30))
        .dry_run();
    plan.args = std::env::args().skip(1).collect();
    match admiral.deploy(plan).await {
        Ok(report) => println!("deploy, {report}"),
        Err(error) => {
            println!("deploy dry run FAILED: {error}");
            *ok = false;
        }
    }
}

/// Reshards to half as many shards again while events flow: the new generation connects in
/// standby beside the old one and goes live once all of it is ready. Returns the identifies it
/// spent (one per new shard).
async fn reshard_step(
    admiral: &AdmiralHandle,
    mock: Option<&MockDiscord>,
    ok: &mut bool,
) -> Result<u64> {
    let plan = admiral.plan();
    let shards = plan.shard_total + plan.shard_total / 2;
    let before = mock.map(|m| (m.stats(), m.event_report()));
    let sent = Instant::now();
    let resharded = admiral
        .reshard(carrier::admiral::ShardCount::Exact(shards), None)
        .await;
    let took = sent.elapsed();
    if let Err(error) = resharded {
        println!(
            "reshard {} -> {shards} shards FAILED: {error}",
            plan.shard_total
        );
        *ok = false;
        return Ok(0);
    }
    let limit = Duration::from_millis(500) * (shards.div_ceil(plan.max_concurrency) - 1);
    let Some((stats, report)) = before else {
        println!(
            "reshard {} -> {shards} shards in {took:.2?}",
            plan.shard_total
        );
        return Ok(0);
    };
    let mock = mock.expect("before is some only with a mock");
    let after = mock.stats();
    let now = mock.event_report();
    let identifies = after.identifies - stats.identifies;
    println!(
        "reshard {} -> {shards} shards ({} clusters) in {took:.2?} (identify limit {limit:.1?}, {:.1?} notice): {identifies} identifies, {} events lost so far, {} confirmed by sessions of both generations while they overlapped (the old generation's user code stopped 250 ms after the new one went live)",
        plan.shard_total,
        admiral.plan().clusters.len(),
        admiral_notice(),
        now.lost - report.lost,
        now.duplicates - report.duplicates
    );
    *ok &= admiral.plan().shard_total == shards
        && identifies == u64::from(shards)
        && now.lost == report.lost;
    Ok(identifies)
}

async fn print_status(admiral: &AdmiralHandle) -> Result<bool> {
    let mut ok = true;
    println!("fleet status:");
    for worker in admiral.workers().await? {
        println!(
            "  {:<14} {:?} (pid {})",
            worker.id.to_string(),
            worker.state,
            worker.pid.map_or("-".into(), |p| p.to_string())
        );
    }
    for (id, outcome) in admiral
        .ipc()
        .all_clusters_command(Payload::from("status"))
        .await?
    {
        match outcome {
            Outcome::Ok(payload) => {
                let report: ClusterReport = payload.decode()?;
                println!(
                    "  cluster {id}: shards {}..={}, {} guilds, {} events handled",
                    report.shards.0, report.shards.1, report.guilds, report.events
                );
            }
            other => {
                println!("  cluster {id}: {other:?}");
                ok = false;
            }
        }
    }
    // The admiral's own snapshot: its records, its measure of every process, the workers' caches.
    let stats = admiral.stats().await?;
    let mib = |bytes: u64| bytes as f64 / f64::from(1 << 20);
    println!(
        "stats (in {:.1?}): {} guilds, {} members, {}/{} shards ready; RAM {:.0} MiB in all (admiral {:.0} MiB, CPU {:.0}%)",
        Duration::from_micros(stats.collected_in_us),
        stats.guilds,
        stats.members,
        stats.shards_ready,
        stats.shard_count,
        mib(stats.total_ram_bytes),
        mib(stats.admiral.ram_bytes),
        stats.admiral.cpu_percent,
    );
    for cluster in &stats.clusters {
        let latency: Vec<String> = cluster
            .shards
            .iter()
            .map(|s| s.latency_ms.map_or("-".into(), |ms| format!("{ms} ms")))
            .collect();
        println!(
            "  cluster {}: {:.0} MiB, CPU {:.1}%, up {:.1?}, {} restarts, shard latency [{}], {:.1} events/s",
            cluster.id,
            mib(cluster.usage.ram_bytes),
            cluster.usage.cpu_percent,
            Duration::from_millis(cluster.uptime_ms),
            cluster.restarts,
            latency.join(", "),
            cluster
                .shards
                .iter()
                .map(|s| s.events_per_second)
                .sum::<f64>(),
        );
    }
    for missing in &stats.missing {
        println!(
            "  missing from the snapshot: {} ({})",
            missing.worker, missing.reason
        );
    }
    ok &= stats.missing.is_empty() && stats.shards_ready == stats.shard_count;
    if let Some(url) = admiral.http_url() {
        println!(
            "status page: {url}/ · metrics: {url}/metrics · health: {url}/health · stats as JSON: {url}/stats"
        );
    }
    Ok(ok)
}
