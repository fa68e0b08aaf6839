//! Chaos: a real fleet on discord-mock while cluster processes are killed (`SIGKILL`) at random, gateway
//! faults hit its shards on a schedule, events flow and commands are in flight. The CI test runs
//! it for about half a minute; `cargo xtask chaos --minutes N` runs it for as long as asked and
//! prints the admiral's memory over time.
//!
//! What must hold, whatever the schedule: no identify breaks Discord's pacing, every worker comes
//! back, every command resolves (an answer, an error, "unavailable" or a timeout; none hangs),
//! and no event is lost except those a killed process's sessions held unconfirmed (the mock
//! counts those apart: `lost_abandoned`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use carrier::admiral::{State, WorkerCommand};
use carrier::{AdmiralHandle, FleetOptions, IpcError, Payload, Target, WorkerId};
use discord_mock::{EventReport, MockConfig, MockDiscord};

/// What a chaos run does.
#[derive(Debug, Clone)]
pub struct ChaosConfig {
    /// How long the chaos lasts (recovery and settling come after).
    pub duration: Duration,
    /// The schedule's seed; the same seed gives the same choices (timings stay real).
    pub seed: u64,
    /// Cluster processes.
    pub clusters: u32,
    /// Shards (spread over the clusters).
    pub shards: u32,
    /// Guilds per shard in the mock's world.
    pub guilds_per_shard: usize,
    /// Events per guild per second from the mock's source.
    pub event_rate: f64,
    /// A cluster is killed (`SIGKILL`) every this long, give or take half.
    pub kill_every: Duration,
    /// A gateway fault hits a shard every this long, give or take half.
    pub fault_every: Duration,
    /// Commands kept in flight.
    pub commands_in_flight: usize,
    /// How often the admiral's memory is sampled.
    pub sample_every: Duration,
    /// The worker executable (a binary whose `main` runs `fleet_tests::fleet_from_env`).
    pub worker: std::path::PathBuf,
}

impl ChaosConfig {
    /// A run of `duration` with workers from `worker`, at the CI scale: 3 clusters, 6 shards,
    /// 4 guilds each, 5 events per guild per second, a kill every 3 s and a fault every second.
    #[must_use]
    pub fn new(duration: Duration, worker: impl Into<std::path::PathBuf>) -> Self {
        Self {
            duration,
            seed: fastrand::u64(..),
            clusters: 3,
            shards: 6,
            guilds_per_shard: 4,
            event_rate: 5.0,
            kill_every: Duration::from_secs(3),
            fault_every: Duration::from_secs(1),
            commands_in_flight: 16,
            sample_every: Duration::from_secs(1),
            worker: worker.into(),
        }
    }
}

/// How commands sent during the chaos ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommandTally {
    /// Sent.
    pub sent: u64,
    /// Answered.
    pub answered: u64,
    /// Refused at once: the target was down (killed, restarting).
    pub unavailable: u64,
    /// The target did not answer within the command's timeout.
    pub timed_out: u64,
    /// Any other error.
    pub other_errors: u64,
    /// Not resolved even a few seconds past its timeout: must be zero.
    pub hung: u64,
}

/// What a chaos run measured.
#[derive(Debug, Clone)]
pub struct ChaosReport {
    /// The schedule's seed.
    pub seed: u64,
    /// How long the chaos lasted.
    pub duration: Duration,
    /// Clusters killed with `SIGKILL`.
    pub kills: u64,
    /// Gateway faults, by kind.
    pub faults: BTreeMap<&'static str, u64>,
    /// Commands.
    pub commands: CommandTally,
    /// Violations of Discord's rules the mock counted (identify pacing among them).
    pub violations: u64,
    /// Identifies and resumes the mock served.
    pub identifies: u64,
    /// Of those, the identifies after the launch: what the kills cost (a killed cluster's
    /// replacement resumes the sessions it checkpointed, so 0 is the target).
    pub identifies_after_launch: u64,
    /// Resumes the mock refused (op 9): sessions that could not be taken over.
    pub resumes_refused: u64,
    /// Resumes the mock served.
    pub resumes: u64,
    /// The mock's event report after settling.
    pub events: EventReport,
    /// Whether every worker was live again, and every shard connected, after the chaos.
    pub recovered: bool,
    /// How long that took once the chaos stopped.
    pub recovery: Duration,
    /// The admiral's resident memory over time: `(seconds since start, MiB)`.
    pub memory: Vec<(f64, f64)>,
}

impl ChaosReport {
    /// Events lost other than those killed sessions held unconfirmed.
    #[must_use]
    pub fn unexplained_losses(&self) -> u64 {
        self.events.lost - self.events.lost_abandoned
    }

    /// The admiral's memory trend, in MiB per minute (least squares over the samples).
    #[must_use]
    pub fn memory_slope_mib_per_min(&self) -> f64 {
        let n = self.memory.len() as f64;
        if n < 2.0 {
            return 0.0;
        }
        let (sx, sy) = self
            .memory
            .iter()
            .fold((0.0, 0.0), |(sx, sy), (x, y)| (sx + x, sy + y));
        let (mx, my) = (sx / n, sy / n);
        let (num, den) = self.memory.iter().fold((0.0, 0.0), |(num, den), (x, y)| {
            (num + (x - mx) * (y - my), den + (x - mx) * (x - mx))
        });
        if den == 0.0 { 0.0 } else { num / den * 60.0 }
    }
}

impl std::fmt::Display for ChaosReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let c = &self.commands;
        let e = &self.events;
        writeln!(
            f,
            "chaos for {:.0?} (seed {}): {} SIGKILLs, faults {:?}",
            self.duration, self.seed, self.kills, self.faults
        )?;
        writeln!(
            f,
            "  identify violations and other rule breaks: {}; identifies {} ({} after the launch, {:.2} per SIGKILL), resumes {} ({} refused)",
            self.violations,
            self.identifies,
            self.identifies_after_launch,
            self.identifies_after_launch as f64 / self.kills.max(1) as f64,
            self.resumes,
            self.resumes_refused
        )?;
        writeln!(
            f,
            "  commands: {} sent, {} answered, {} unavailable, {} timed out, {} other errors, {} hung",
            c.sent, c.answered, c.unavailable, c.timed_out, c.other_errors, c.hung
        )?;
        writeln!(
            f,
            "  events: {} produced, {} delivered, {} with no session to go to, {} lost ({} held unconfirmed by killed sessions, {} otherwise), {} handled twice",
            e.produced,
            e.delivered,
            e.no_session,
            e.lost,
            e.lost_abandoned,
            e.lost - e.lost_abandoned,
            e.duplicates
        )?;
        writeln!(
            f,
            "  every worker back and every shard connected: {} ({:.2?} after the chaos stopped)",
            self.recovered, self.recovery
        )?;
        let first = self.memory.first().map_or(0.0, |m| m.1);
        let last = self.memory.last().map_or(0.0, |m| m.1);
        let peak = self.memory.iter().map(|m| m.1).fold(0.0, f64::max);
        write!(
            f,
            "  admiral RSS: {first:.1} MiB at start, {last:.1} MiB at the end, peak {peak:.1} MiB; slope {:+.3} MiB/min over {} samples",
            self.memory_slope_mib_per_min(),
            self.memory.len()
        )
    }
}

/// This process's resident memory in MiB.
fn own_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

/// A duration of `every` give or take half, from the schedule.
fn jitter(rng: &mut fastrand::Rng, every: Duration) -> Duration {
    every.mul_f64(0.5 + rng.f64())
}

/// Runs the chaos and returns what it measured. The admiral runs in this process.
///
/// # Panics
/// If the mock or the fleet cannot start.
pub async fn run(config: ChaosConfig) -> ChaosReport {
    let started = Instant::now();
    let interval = Duration::from_millis(300);
    let mock = MockDiscord::start(
        MockConfig::builder()
            .guilds(config.shards as usize * config.guilds_per_shard)
            .recommended_shards(config.shards)
            .max_concurrency(1)
            .identify_interval(interval)
            .heartbeat_interval(Duration::from_millis(500))
            // Long enough that a killed cluster's sessions outlive its replacement's start, so
            // every event has a session to go to; short enough to settle quickly.
            .resume_timeout(Duration::from_secs(10))
            .build(),
    )
    .await
    .expect("the mock starts");
    let mut options = FleetOptions::new("mock-token");
    options.rest_url = mock.http_url();
    options.clusters = Some(config.clusters);
    options.identify_interval = interval;
    options.request_timeout = Duration::from_secs(5);
    options.kill_timeout = Duration::from_secs(5);
    options.echo_output = false;
    options.handle_signals = false;
    // Every kill is a first crash within its window, so the backoff stays at its minimum: the
    // run measures recovery, not the crash-loop policy (which doubles the backoff up to a minute).
    options.max_restarts = 100_000;
    options.restart_window = Duration::from_secs(1);
    options.restart_backoff = Duration::from_millis(50);
    options.worker_command = Some(WorkerCommand {
        program: config.worker.clone(),
        args: Vec::new(),
        env: Vec::new(),
    });
    let fleet = fleet_twilight::fleet::<crate::TestCluster>(
        options,
        fleet_twilight::Settings::new(
            twilight_gateway::Intents::GUILDS
                | twilight_gateway::Intents::GUILD_MESSAGES
                | twilight_gateway::Intents::GUILD_MEMBERS,
        ),
    )
    .service::<crate::Echo>("echo");
    let admiral = Arc::new(
        fleet
            .run()
            .await
            .expect("the fleet launches")
            .expect("this process is the admiral"),
    );
    admiral
        .wait_ready(Duration::from_mins(1))
        .await
        .expect("the fleet starts");
    mock.start_events(Some(config.event_rate))
        .expect("a rate in range");
    let launch_identifies = mock.stats().identifies;

    let stop = Arc::new(AtomicBool::new(false));
    let mut rng = fastrand::Rng::with_seed(config.seed);
    let memory = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sampler = {
        let (stop, memory, every) = (stop.clone(), memory.clone(), config.sample_every);
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let sample = (started.elapsed().as_secs_f64(), own_rss_mib());
                memory
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(sample);
                tokio::time::sleep(every).await;
            }
        })
    };
    let tally = Arc::new(Tally::default());
    let commanders: Vec<_> = (0..config.commands_in_flight)
        .map(|i| {
            let (admiral, stop, tally) = (admiral.clone(), stop.clone(), tally.clone());
            let clusters = config.clusters;
            let seed = config.seed.wrapping_add(i as u64 + 1);
            tokio::spawn(async move { command_loop(&admiral, &stop, &tally, clusters, seed).await })
        })
        .collect();

    let chaos_started = Instant::now();
    let mut kills = 0;
    let mut faults: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut next_kill = chaos_started + jitter(&mut rng, config.kill_every);
    let mut next_fault = chaos_started + jitter(&mut rng, config.fault_every);
    while chaos_started.elapsed() < config.duration {
        let now = Instant::now();
        if now >= next_kill {
            let cluster = rng.u32(..config.clusters);
            if kill_cluster(&admiral, cluster).await {
                kills += 1;
            }
            next_kill = now + jitter(&mut rng, config.kill_every);
        }
        if now >= next_fault {
            let shard = rng.u32(..config.shards);
            let kind = match rng.u8(..4) {
                0 => {
                    let _ = mock.close_shard(shard, 4000);
                    "close 4000"
                }
                1 => {
                    mock.drop_shard(shard);
                    "tcp drop"
                }
                2 => {
                    mock.reconnect_shard(shard);
                    "op 7"
                }
                _ => {
                    mock.invalidate_shard(shard, true);
                    "op 9 resumable"
                }
            };
            *faults.entry(kind).or_default() += 1;
            next_fault = now + jitter(&mut rng, config.fault_every);
        }
        let wake = next_kill.min(next_fault);
        tokio::time::sleep(wake.saturating_duration_since(Instant::now())).await;
    }
    let duration = chaos_started.elapsed();

    // Recovery: every worker live and every shard connected again.
    let recovering = Instant::now();
    let recovered = wait_recovered(&admiral, &mock, config.shards, Duration::from_mins(1)).await;
    let recovery = recovering.elapsed();
    stop.store(true, Ordering::SeqCst);
    for commander in commanders {
        let _ = commander.await;
    }
    let _ = sampler.await;
    // Settle: stop the source and wait until every event is confirmed or lost for good (a
    // killed session's events once its resume window has passed).
    mock.stop_events();
    let _ = mock
        .wait_until(Duration::from_mins(1), "every event settled", |m| {
            m.event_report().in_flight == 0
        })
        .await;
    let stats = mock.stats();
    let report = ChaosReport {
        seed: config.seed,
        duration,
        kills,
        faults,
        commands: tally.snapshot(),
        violations: stats.total_violations(),
        identifies: stats.identifies,
        identifies_after_launch: stats.identifies - launch_identifies,
        resumes_refused: stats.resumes_refused,
        resumes: stats.resumes,
        events: mock.event_report(),
        recovered,
        recovery,
        memory: memory
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone(),
    };
    admiral.shutdown().await;
    mock.shutdown().await;
    report
}

/// SIGKILLs a cluster's process, if it has one now.
async fn kill_cluster(admiral: &AdmiralHandle, cluster: u32) -> bool {
    let Ok(workers) = admiral.workers().await else {
        return false;
    };
    let Some(pid) = workers
        .iter()
        .find(|w| w.id == WorkerId::Cluster(cluster) && w.state == State::Live)
        .and_then(|w| w.pid)
    else {
        return false;
    };
    std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success())
}

async fn wait_recovered(
    admiral: &AdmiralHandle,
    mock: &MockDiscord,
    shards: u32,
    within: Duration,
) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        let live = admiral
            .workers()
            .await
            .is_ok_and(|w| w.iter().all(|w| w.state == State::Live));
        let mut connected: Vec<u32> = mock
            .sessions()
            .iter()
            .filter(|s| s.attached)
            .map(|s| s.shard[0])
            .collect();
        connected.sort_unstable();
        connected.dedup();
        if live && connected.len() == shards as usize {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[derive(Debug, Default)]
struct Tally {
    sent: AtomicU64,
    answered: AtomicU64,
    unavailable: AtomicU64,
    timed_out: AtomicU64,
    other_errors: AtomicU64,
    hung: AtomicU64,
}

impl Tally {
    fn snapshot(&self) -> CommandTally {
        let load = |a: &AtomicU64| a.load(Ordering::SeqCst);
        CommandTally {
            sent: load(&self.sent),
            answered: load(&self.answered),
            unavailable: load(&self.unavailable),
            timed_out: load(&self.timed_out),
            other_errors: load(&self.other_errors),
            hung: load(&self.hung),
        }
    }
}

/// The pause between one commander's commands.
const COMMAND_PAUSE: Duration = Duration::from_millis(2);

/// Sends commands one after another to random clusters and the echo service until stopped.
async fn command_loop(
    admiral: &AdmiralHandle,
    stop: &AtomicBool,
    tally: &Tally,
    clusters: u32,
    seed: u64,
) {
    use carrier::ipc::proto::Refusal;
    let mut rng = fastrand::Rng::with_seed(seed);
    let timeout = Duration::from_secs(2);
    while !stop.load(Ordering::SeqCst) {
        let target = match rng.u32(..=clusters) {
            n if n == clusters => Target::Service("echo".into()),
            n => Target::Cluster(n),
        };
        tally.sent.fetch_add(1, Ordering::SeqCst);
        let asked = admiral
            .ipc()
            .command_within(target, Payload::from("ping"), timeout);
        let counter = match tokio::time::timeout(timeout + Duration::from_secs(3), asked).await {
            Ok(Ok(_)) => &tally.answered,
            Ok(Err(IpcError::Refused(Refusal::Unavailable(_)))) => &tally.unavailable,
            Ok(Err(IpcError::Timeout(_) | IpcError::TargetTimedOut(_))) => &tally.timed_out,
            Ok(Err(_)) => &tally.other_errors,
            Err(_) => &tally.hung,
        };
        counter.fetch_add(1, Ordering::SeqCst);
        // A bot asks at a pace, not in a spin: without this, refusals from a dead target come
        // back so fast that the loop takes the cores the restarts need.
        tokio::time::sleep(COMMAND_PAUSE).await;
    }
}
