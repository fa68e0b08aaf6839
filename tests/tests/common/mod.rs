//! Helpers shared by the multi-process tests: a mock per test, fleet options pointing at it and
//! at the `testbot` binary, and event waits with a deadline.

#![allow(dead_code, reason = "each test file uses its own subset")]

use std::collections::BTreeSet;
use std::time::Duration;

use carrier::admiral::WorkerCommand;
use carrier::{AdmiralHandle, FleetEvent, FleetOptions, Payload, ShardEvent, WorkerId};
use discord_mock::{MockConfig, MockDiscord};
use fleet_tests::ClusterStatus;
use tokio::sync::broadcast;

pub const WAIT: Duration = Duration::from_mins(1);

pub fn mock_config(guilds: usize, shards: u32, max_concurrency: u32) -> MockConfig {
    mock_builder(guilds, shards, max_concurrency).build()
}

/// [`mock_config`] before it is built, for a test that changes more.
pub fn mock_builder(
    guilds: usize,
    shards: u32,
    max_concurrency: u32,
) -> discord_mock::MockConfigBuilder {
    MockConfig::builder()
        .guilds(guilds)
        .recommended_shards(shards)
        .max_concurrency(max_concurrency)
        .identify_interval(Duration::from_millis(300))
        // The fleet spaces a bucket's grants 320 ms apart; on a loaded two-core machine running
        // every test at once, one IDENTIFY can reach the mock later than the next by more than
        // those 20 ms (more since the gateway's frames are zlib-compressed and inflated, as
        // Discord's are: a cluster busy inflating a burst of GUILD_CREATEs sends its next
        // IDENTIFY late). 80 ms of slack keeps that from failing a test, and still catches any
        // pacing that is actually wrong (two grants of one bucket let go together are 300 ms
        // early).
        .identify_tolerance(Duration::from_millis(80))
        .heartbeat_interval(Duration::from_millis(500))
}

pub fn options(mock: &MockDiscord, clusters: u32) -> FleetOptions {
    let mut options = FleetOptions::new("mock-token");
    options.rest_url = mock.http_url();
    options.clusters = Some(clusters);
    options.identify_interval = mock.config().identify_interval;
    options.request_timeout = Duration::from_secs(5);
    options.kill_timeout = Duration::from_secs(5);
    options.echo_output = false;
    // Failures stay failures unless a test asks for restarts.
    options.max_restarts = 0;
    // The test process's signals are not the fleet's.
    options.handle_signals = false;
    options.worker_command = Some(WorkerCommand {
        program: env!("CARGO_BIN_EXE_testbot").into(),
        args: Vec::new(),
        env: Vec::new(),
    });
    options
}

pub async fn launch(fleet: carrier::Fleet) -> (AdmiralHandle, broadcast::Receiver<FleetEvent>) {
    let admiral = fleet
        .run()
        .await
        .expect("the fleet launches")
        .expect("this process is the admiral");
    let events = admiral.events();
    (admiral, events)
}

/// Collects events until `done` says so, failing after [`WAIT`].
pub async fn until(
    events: &mut broadcast::Receiver<FleetEvent>,
    mut done: impl FnMut(&FleetEvent) -> bool,
) -> Vec<FleetEvent> {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let event = tokio::time::timeout_at(deadline, events.recv())
            .await
            .unwrap_or_else(|_| panic!("event not seen within {WAIT:?}; saw {seen:#?}"))
            .expect("event stream open");
        let stop = done(&event);
        seen.push(event);
        if stop {
            return seen;
        }
    }
}

/// Shards whose READY an event list reports.
pub fn ready_shards(seen: &[FleetEvent]) -> BTreeSet<u32> {
    seen.iter()
        .filter_map(|e| match e {
            FleetEvent::Shard {
                shard,
                event: ShardEvent::Ready,
                ..
            } => Some(*shard),
            _ => None,
        })
        .collect()
}

pub fn status(payload: &Payload) -> ClusterStatus {
    payload.decode().expect("a cluster status")
}

/// `kill -9` a worker's process.
pub async fn kill(admiral: &AdmiralHandle, worker: &WorkerId) {
    signal(admiral, worker, "-9").await;
}

/// Sends `signal` (`-9`, `-STOP`, ...) to a worker's process.
pub async fn signal(admiral: &AdmiralHandle, worker: &WorkerId, signal: &str) {
    let workers = admiral.workers().await.unwrap();
    let pid = workers
        .iter()
        .find(|w| &w.id == worker)
        .and_then(|w| w.pid)
        .expect("worker has a pid");
    let status = std::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Stops the event source and waits until every produced event is confirmed or lost.
pub async fn settle(mock: &MockDiscord) -> discord_mock::EventReport {
    mock.stop_events();
    mock.wait_until(WAIT, "every event confirmed", |m| {
        m.event_report().in_flight == 0
    })
    .await
    .unwrap();
    mock.event_report()
}

/// An admiral process of its own (`testbot admiral`, its IPC directory under `run_dir` if
/// given), once it has printed its ready line; returns it, that line and its stdout lines.
pub async fn spawn_admiral(
    mock: &MockDiscord,
    clusters: u32,
    run_dir: Option<&std::path::Path>,
) -> (
    tokio::process::Child,
    String,
    tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
) {
    spawn_admiral_with(mock, clusters, run_dir, &[]).await
}

/// [`spawn_admiral`] with more environment for the admiral process.
pub async fn spawn_admiral_with(
    mock: &MockDiscord,
    clusters: u32,
    run_dir: Option<&std::path::Path>,
    env: &[(&str, &str)],
) -> (
    tokio::process::Child,
    String,
    tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
) {
    use tokio::io::AsyncBufReadExt as _;
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_testbot"));
    command
        .args(["admiral", &mock.http_url(), "300", &clusters.to_string()])
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true);
    if let Some(run_dir) = run_dir {
        command.env("TESTBOT_RUN_DIR", run_dir);
    }
    let mut admiral = command.spawn().unwrap();
    let mut lines = tokio::io::BufReader::new(admiral.stdout.take().unwrap()).lines();
    let ready = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(ready.starts_with("ready "), "{ready}");
    (admiral, ready, lines)
}

/// One HTTP/1.1 request on a fresh connection: `(status, head in lower case, body)`.
pub async fn raw_http(url: &str, request: &str) -> (u16, String, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let addr = url.strip_prefix("http://").unwrap();
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut text = String::new();
    tokio::time::timeout(WAIT, stream.read_to_string(&mut text))
        .await
        .expect("the proxy answers")
        .unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head.to_ascii_lowercase(), body.to_owned())
}

/// The ids of the messages (not the member joins) the mock's event source has made.
pub fn messages(mock: &MockDiscord) -> BTreeSet<u64> {
    let every = u64::from(mock.config().member_add_every);
    mock.event_ids()
        .into_iter()
        .enumerate()
        .filter(|(n, _)| every == 0 || !(*n as u64 + 1).is_multiple_of(every))
        .map(|(_, id)| id)
        .collect()
}

/// Every message the cluster processes' user code handles, as each reports it to the admiral
/// ([`fleet_tests::REPORT_EVENTS`]): `(process nonce, message id, when it arrived)`.
#[derive(Clone, Default)]
pub struct HandledLog {
    entries: std::sync::Arc<std::sync::Mutex<Vec<(u64, u64, std::time::Instant)>>>,
    arrived: std::sync::Arc<tokio::sync::Notify>,
}

impl HandledLog {
    /// Turns the reports on in every cluster process, running or started later, and collects
    /// them.
    pub async fn start(admiral: &AdmiralHandle) -> Self {
        Self::start_on(&[admiral]).await
    }

    /// [`HandledLog::start`] for a bot split across hosts: each host's clusters report to their
    /// own admiral.
    pub async fn start_on(admirals: &[&AdmiralHandle]) -> Self {
        let log = Self::default();
        for admiral in admirals {
            let (sink, ring) = (log.entries.clone(), log.arrived.clone());
            admiral.ipc().register("handled", move |m| {
                let (nonce, id): fleet_tests::Handled = m.payload.decode().unwrap();
                sink.lock()
                    .unwrap()
                    .push((nonce, id, std::time::Instant::now()));
                ring.notify_one();
            });
        }
        let ipc = admirals[0].ipc();
        ipc.store_set(fleet_tests::REPORT_EVENTS, Payload::empty())
            .await
            .unwrap();
        ipc.broadcast(fleet_tests::REPORT_EVENTS, Payload::empty())
            .await
            .unwrap();
        log
    }

    /// What was reported so far.
    pub fn entries(&self) -> Vec<(u64, u64, std::time::Instant)> {
        self.entries.lock().unwrap().clone()
    }

    /// Waits (up to [`WAIT`]) until every message the mock's event source made has been
    /// handled at least once; whether they all were.
    pub async fn all_handled(&self, mock: &MockDiscord) -> bool {
        let messages = messages(mock);
        tokio::time::timeout(WAIT, async {
            loop {
                let seen: BTreeSet<u64> = self.entries().iter().map(|(_, id, _)| *id).collect();
                if messages.is_subset(&seen) {
                    return;
                }
                self.arrived.notified().await;
            }
        })
        .await
        .is_ok()
    }
}
