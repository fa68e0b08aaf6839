//! One bot on three hosts sharing one Redis (Debian's `redis-server`, started here on a free
//! loopback port), 48 shards at `max_concurrency` 16 and Discord's 5 s interval.
//!
//! 1. Pinned: three admirals in this process, each running a third of the shards
//!    (`first_shard`/`last_shard`), pace their identifies together. Startup against the identify
//!    limit of the whole bot, `(ceil(48 / 16) - 1)` intervals plus the first READY, with the
//!    mock's count of identifies too early.
//! 2. Assigned: three host processes (this binary with `host-process`) over six ranges, with
//!    the default lease, while the mock's events flow. Startup (the first claim waits one
//!    renewal, so hosts started together see each other); Redis commands per second in steady
//!    state; a planned move (`SIGTERM` of one host: its ranges go to the others); a takeover
//!    (`SIGKILL` of a host and its workers: the design expects about lease + grace + resume,
//!    about 18 s). Before the move, a reshard of the split bot to twice the shards, asked of one
//!    host. Each with identifies, resumes, events lost and confirmed twice.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use carrier::FleetOptions;
use carrier::admiral::{ShardCount, WorkerCommand};
use tokio::io::AsyncBufReadExt as _;

use super::restart::{diff, settle};
use super::{
    IDENTIFY_INTERVAL, Lib, MockProcess, control, launch_with, start_mock_resumable,
    start_mock_with,
};

const SHARDS: u32 = 48;
const HOSTS: u32 = 3;
const MAX_CONCURRENCY: u32 = 16;

/// Ranges (clusters) of the assigned run: two a host.
const RANGES: u32 = 6;

/// `host-process REST_URL INTERVAL_MS REDIS_URL HOST_ID`: one host of the assigned run. Prints
/// `ready` once launched (its ranges start as it claims them) and `stopped` at the end.
pub async fn serve(args: &[String]) -> Result<std::process::ExitCode> {
    let [rest_url, interval_ms, redis_url, host] = args else {
        bail!("host-process REST_URL INTERVAL_MS REDIS_URL HOST_ID");
    };
    let mut options = FleetOptions::new("mock-token");
    options.rest_url.clone_from(rest_url);
    options.identify_interval = Duration::from_millis(interval_ms.parse()?);
    options.shards = ShardCount::Exact(SHARDS);
    options.clusters = Some(RANGES);
    options.echo_output = false;
    // As in the other sections: the old generation of a reshard serves out a notice longer
    // than the mock's heartbeat, so the mock sees it confirm every event it handled.
    options.soft_kill_notice = super::NOTICE;
    options.redis_url = Some(redis_url.clone());
    options.host_id = Some(host.clone());
    options.worker_command = Some(WorkerCommand::current()?);
    let admiral = fleet_examples::fleet(options)
        .run()
        .await?
        .context("admiral")?;
    admiral.wait_ready(Duration::from_mins(5)).await?;
    println!("ready");
    let admiral = std::sync::Arc::new(admiral);
    // `rtt N` on stdin: N commands to the clusters other hosts run, and N to this host's.
    let asks = {
        let admiral = admiral.clone();
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(n) = line.strip_prefix("reshard ").and_then(|n| n.parse().ok()) {
                    let started = Instant::now();
                    match admiral.reshard(ShardCount::Exact(n), None).await {
                        Ok(()) => println!("reshard {}", started.elapsed().as_millis()),
                        Err(error) => println!("reshard failed: {error}"),
                    }
                    continue;
                }
                let Some(n) = line.strip_prefix("rtt ").and_then(|n| n.parse().ok()) else {
                    continue;
                };
                match round_trips(&admiral, n).await {
                    Ok(figures) => println!("rtt {figures}"),
                    Err(error) => println!("rtt failed: {error:#}"),
                }
            }
        })
    };
    admiral.wait_stopped().await;
    asks.abort();
    println!("stopped");
    Ok(std::process::ExitCode::SUCCESS)
}

/// `n` sequential commands to the clusters of other hosts and `n` to this host's own, from the
/// admiral's handle: `p50 p99` of each, in µs.
async fn round_trips(admiral: &carrier::AdmiralHandle, n: usize) -> Result<String> {
    let here: Vec<u32> = admiral
        .workers()
        .await?
        .iter()
        .filter_map(|w| match w.id {
            carrier::WorkerId::Cluster(c) if w.state == carrier::admiral::State::Live => Some(c),
            _ => None,
        })
        .collect();
    let there: Vec<u32> = (0..RANGES).filter(|c| !here.contains(c)).collect();
    anyhow::ensure!(
        !here.is_empty() && !there.is_empty(),
        "runs {here:?} of {RANGES}"
    );
    let mut figures = Vec::new();
    for clusters in [there, here] {
        let mut times = Vec::with_capacity(n);
        for i in 0..n {
            let cluster = clusters[i % clusters.len()];
            let started = Instant::now();
            admiral
                .ipc()
                .cluster_command(cluster, carrier::Payload::from("ping"))
                .await?;
            times.push(started.elapsed());
        }
        times.sort_unstable();
        for p in [0.5, 0.99] {
            figures.push(super::percentile(&times, p).as_micros().to_string());
        }
    }
    Ok(figures.join(" "))
}

/// A host process.
struct Host {
    child: tokio::process::Child,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
}

impl Host {
    async fn start(mock: &MockProcess, redis: &str, host: &str) -> Result<Self> {
        let mut child = tokio::process::Command::new(std::env::current_exe()?)
            .arg("host-process")
            .arg(&mock.url)
            .arg(IDENTIFY_INTERVAL.as_millis().to_string())
            .arg(redis)
            .arg(host)
            .stdout(Stdio::piped())
            .stdin(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let mut lines = tokio::io::BufReader::new(child.stdout.take().context("stdout")?).lines();
        let line = tokio::time::timeout(Duration::from_mins(2), lines.next_line())
            .await
            .context("no ready line")??;
        anyhow::ensure!(line.as_deref() == Some("ready"), "host {host}: {line:?}");
        Ok(Self { child, lines })
    }

    /// Cross-host and local command round trips measured by this host (`n` of each): p50 and
    /// p99 of each, in µs.
    async fn round_trips(&mut self, n: usize) -> Result<[u64; 4]> {
        use tokio::io::AsyncWriteExt as _;
        let stdin = self.child.stdin.as_mut().context("stdin")?;
        stdin.write_all(format!("rtt {n}\n").as_bytes()).await?;
        stdin.flush().await?;
        let line = tokio::time::timeout(Duration::from_mins(2), self.lines.next_line())
            .await
            .context("no rtt line")??
            .unwrap_or_default();
        let figures: Vec<u64> = line
            .strip_prefix("rtt ")
            .unwrap_or_default()
            .split(' ')
            .filter_map(|f| f.parse().ok())
            .collect();
        figures
            .try_into()
            .map_err(|_| anyhow::anyhow!("round trips: {line}"))
    }

    /// Asks this host to reshard the bot to `shards` shards; how long until it answered done.
    async fn reshard(&mut self, shards: u32) -> Result<Duration> {
        use tokio::io::AsyncWriteExt as _;
        let stdin = self.child.stdin.as_mut().context("stdin")?;
        stdin
            .write_all(format!("reshard {shards}\n").as_bytes())
            .await?;
        stdin.flush().await?;
        let line = tokio::time::timeout(Duration::from_mins(5), self.lines.next_line())
            .await
            .context("no reshard line")??
            .unwrap_or_default();
        line.strip_prefix("reshard ")
            .and_then(|ms| ms.parse().ok())
            .map(Duration::from_millis)
            .ok_or_else(|| anyhow::anyhow!("{line}"))
    }

    fn pid(&self) -> Result<u32> {
        self.child.id().context("no pid")
    }
}

/// Sends `signal` to `pids`.
fn signal(pids: &[u32], signal: &str) -> Result<()> {
    for pid in pids {
        std::process::Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()?;
    }
    Ok(())
}

/// The pids of `pid`'s children.
fn children(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| {
            std::fs::read_to_string(format!("/proc/{child}/stat")).is_ok_and(|stat| {
                let after = stat.rsplit(')').next().unwrap_or("");
                after.split_whitespace().nth(1) == Some(&pid.to_string())
            })
        })
        .collect()
}

/// Waits (`limit` at most) until the mock holds one attached session for each of the bot's
/// `shards` shards, and none attached of another shard total; how long that took.
async fn all_attached(mock: &MockProcess, shards: u32, limit: Duration) -> Result<Duration> {
    let started = Instant::now();
    loop {
        let sessions = control(mock, "GET", "/_mock/sessions").await?;
        let sessions = sessions.as_array().cloned().unwrap_or_default();
        let attached = |s: &&serde_json::Value| s["attached"].as_bool() == Some(true);
        let ours = |s: &&serde_json::Value| s["shard"][1].as_u64() == Some(u64::from(shards));
        let live = sessions.iter().filter(ours).filter(attached).count();
        let others = sessions.iter().filter(attached).count() - live;
        if live == shards as usize && sessions.iter().filter(ours).count() == live && others == 0 {
            return Ok(started.elapsed());
        }
        if started.elapsed() > limit {
            bail!("the bot's {shards} shards did not all have a session within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Redis's `INFO stats` field `name`.
async fn redis_stat(port: u16, name: &str) -> Result<u64> {
    use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let mut stream = tokio::io::BufReader::new(stream);
    stream.get_mut().write_all(b"INFO stats\r\n").await?;
    let mut head = String::new();
    stream.read_line(&mut head).await?;
    let length: usize = head
        .trim()
        .strip_prefix('$')
        .and_then(|l| l.parse().ok())
        .context("not a bulk reply")?;
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).await?;
    String::from_utf8_lossy(&body)
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")).map(str::to_owned))
        .and_then(|v| v.trim().parse().ok())
        .context("no such Redis stat")
}

/// The mock's event report and stats now.
async fn counts(mock: &MockProcess) -> Result<(serde_json::Value, serde_json::Value)> {
    Ok((
        control(mock, "GET", "/_mock/events").await?,
        control(mock, "GET", "/_mock/stats").await?,
    ))
}

/// Prints what the mock counted between `before` and `after`.
fn costs(
    (before, before_stats): &(serde_json::Value, serde_json::Value),
    (after, after_stats): &(serde_json::Value, serde_json::Value),
) -> String {
    format!(
        "identifies spent {}; resumes {}; resumes refused {}; events lost {}, confirmed twice {} (of {} produced); rule violations {}",
        diff(after_stats, before_stats, "identifies"),
        diff(after_stats, before_stats, "resumes"),
        diff(after_stats, before_stats, "resumes_refused"),
        diff(after, before, "lost"),
        diff(after, before, "duplicates"),
        diff(after, before, "produced"),
        after_stats["violations"].as_object().map_or(0, |v| v
            .values()
            .filter_map(serde_json::Value::as_u64)
            .sum::<u64>()),
    )
}

/// The assigned run's figures.
async fn assigned(redis: &Redis) -> Result<()> {
    let url = format!("redis://127.0.0.1:{}/0", redis.1);
    // Sessions stay resumable for 90 s after a disconnect, as measured on Discord: a takeover
    // waits out the dead host's lease first.
    let resumable = Duration::from_secs(90);
    let mock = start_mock_resumable(
        MAX_CONCURRENCY,
        IDENTIFY_INTERVAL,
        SHARDS,
        100,
        resumable,
        None,
    )
    .await?;
    let started = Instant::now();
    let names: Vec<String> = (0..HOSTS).map(|h| format!("host-{h}")).collect();
    let mut hosts =
        futures::future::try_join_all(names.iter().map(|h| Host::start(&mock, &url, h))).await?;
    all_attached(&mock, SHARDS, Duration::from_mins(3)).await?;
    let took = started.elapsed();
    let waits = SHARDS.div_ceil(MAX_CONCURRENCY) - 1;
    let limit = IDENTIFY_INTERVAL * waits;
    println!(
        "assigned ranges, {HOSTS} host processes over {RANGES} ranges: every shard READY {took:.2?} after the hosts started; identify limit {waits} x {IDENTIFY_INTERVAL:.2?} = {limit:.2?}, plus the first claim's wait of one renewal ({:.2?}) and the first READY",
        carrier::hosts::HOST_LEASE_TTL / 6
    );
    control(&mock, "POST", "/_mock/events/start?rate=0.5").await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let commands = redis_stat(redis.1, "total_commands_processed").await?;
    let window = Duration::from_secs(5);
    tokio::time::sleep(window).await;
    let per_second = (redis_stat(redis.1, "total_commands_processed").await? - commands) as f64
        / window.as_secs_f64();
    println!(
        "assigned ranges, steady state with 2,400 events a second (half an event per guild): {per_second:.1} Redis commands a second for the whole bot (leases, claims, checkpoints)"
    );

    let n = 2000;
    let [there_50, there_99, here_50, here_99] = hosts[0].round_trips(n).await?;
    println!(
        "command round trip from a host's admiral, {n} sequential commands each, events flowing: to another host's cluster p50 {there_50} µs, p99 {there_99} µs; to its own cluster p50 {here_50} µs, p99 {here_99} µs (across hosts / local, p50: {:.1}x)",
        there_50 as f64 / here_50.max(1) as f64
    );

    // A reshard of the split bot, asked of host 0: every host readies its part in standby and
    // all switch together.
    let shards = SHARDS * 2;
    let before = counts(&mock).await?;
    let took = hosts[0].reshard(shards).await?;
    let live = all_attached(&mock, shards, Duration::from_mins(1)).await?;
    let after = settle(&mock).await?;
    let standby = IDENTIFY_INTERVAL * (shards.div_ceil(MAX_CONCURRENCY) - 1);
    println!(
        "reshard of the split bot from {SHARDS} to {shards} shards in {RANGES} ranges, asked of one host: done {took:.2?} after the ask (the new generation's identifies alone take {standby:.2?}), old sessions gone {live:.2?} after; {}",
        costs(&before, &after),
    );
    let per_range = shards / RANGES;
    control(&mock, "POST", "/_mock/events/start?rate=0.5").await?;
    tokio::time::sleep(Duration::from_secs(2)).await;

    // A planned move: host 2 stops; its ranges go to hosts 0 and 1.
    let before = counts(&mock).await?;
    let moved = Instant::now();
    signal(&[hosts[2].pid()?], "-TERM")?;
    // Its sessions close resumably at once; wait until they are all resumed elsewhere.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let back =
        all_attached(&mock, shards, Duration::from_mins(1)).await? + Duration::from_millis(50);
    let (after_events, after_stats) = settle(&mock).await?;
    println!(
        "planned move (SIGTERM of a host running 2 ranges, {} shards): every shard resumed on another host {back:.2?} after the signal (an upper bound of each shard's time without a session; {:.2?} to settle); {}",
        2 * per_range,
        moved.elapsed(),
        costs(&before, &(after_events, after_stats)),
    );

    // A takeover: host 1 dies with its workers; host 0 takes its ranges after its lease.
    control(&mock, "POST", "/_mock/events/start?rate=0.5").await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = counts(&mock).await?;
    let pid = hosts[1].pid()?;
    // The whole host at once, as a power cut: frozen first, so that its admiral restarts no
    // worker and no worker closes its shards when it sees another go.
    signal(&[pid], "-STOP")?;
    let mut doomed = children(pid);
    signal(&doomed, "-STOP")?;
    doomed.push(pid);
    let killed = Instant::now();
    signal(&doomed, "-KILL")?;
    // The dead host's sessions wait without a connection until host 0 resumes them.
    loop {
        let sessions = control(&mock, "GET", "/_mock/sessions").await?;
        if sessions
            .as_array()
            .is_some_and(|s| s.iter().any(|s| s["attached"].as_bool() == Some(false)))
            || killed.elapsed() > Duration::from_secs(10)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let back = all_attached(&mock, shards, Duration::from_mins(1)).await?;
    let back = killed.elapsed().max(back);
    let after = settle(&mock).await?;
    let ttl = carrier::hosts::HOST_LEASE_TTL;
    println!(
        "takeover (SIGKILL of a host and its workers, 3 ranges, {} shards): every shard resumed on the last host {back:.2?} after the kill (lease {ttl:.0?} + grace {:.0?}, less the time since its last renewal, plus the resume); {}",
        3 * per_range,
        carrier::hosts::takeover_grace(ttl),
        costs(&before, &after),
    );
    signal(&[hosts[0].pid()?], "-TERM")?;
    drop(hosts);
    mock.stop().await?;
    Ok(())
}

/// A `redis-server` of the bench's own, stopped when dropped.
struct Redis(std::process::Child, u16);

impl Redis {
    async fn start() -> Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .context("redis-server (Debian's package) runs the hosts section")?;
        let redis = Self(child, port);
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            anyhow::ensure!(Instant::now() < deadline, "redis-server did not come up");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(redis)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Prints the figure; whether the mock saw no rule broken.
pub async fn figures() -> Result<bool> {
    let redis = Redis::start().await?;
    let url = format!("redis://127.0.0.1:{}/0", redis.1);
    let mock = start_mock_with(MAX_CONCURRENCY, IDENTIFY_INTERVAL, SHARDS, 100).await?;
    let per_host = SHARDS / HOSTS;
    let started = Instant::now();
    let launches = (0..HOSTS).map(|host| {
        let url = url.clone();
        launch_with(&mock, IDENTIFY_INTERVAL, Lib::Twilight, 2, move |options| {
            options.shards = ShardCount::Exact(SHARDS);
            options.first_shard = Some(host * per_host);
            options.last_shard = Some((host + 1) * per_host - 1);
            options.redis_url = Some(url);
            options.host_id = Some(format!("bench-{host}"));
        })
    });
    let admirals = futures::future::try_join_all(launches).await?;
    let took = started.elapsed();
    let first_ready = admirals
        .iter()
        .map(|(_, _, first)| *first)
        .min()
        .unwrap_or_default();
    let waits = SHARDS.div_ceil(MAX_CONCURRENCY) - 1;
    let limit = IDENTIFY_INTERVAL * waits + first_ready;
    for (admiral, _, _) in &admirals {
        admiral.shutdown().await;
    }
    let clean = mock.stop().await?;
    println!(
        "pinned slices, one bot on {HOSTS} hosts sharing Redis, {SHARDS} shards, max_concurrency {MAX_CONCURRENCY}, interval {IDENTIFY_INTERVAL:.2?}: every host ready in {took:.3?}; limit {waits} x {IDENTIFY_INTERVAL:.2?} + first READY {first_ready:.3?} = {limit:.3?}; ratio {:.3}; {}",
        took.as_secs_f64() / limit.as_secs_f64(),
        if clean {
            "no identify too early"
        } else {
            "discord-mock counted rule violations"
        }
    );
    assigned(&redis).await?;
    Ok(clean)
}
