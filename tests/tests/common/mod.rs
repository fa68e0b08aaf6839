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
    MockConfig::builder()
        .guilds(guilds)
        .recommended_shards(shards)
        .max_concurrency(max_concurrency)
        .identify_interval(Duration::from_millis(300))
        .heartbeat_interval(Duration::from_millis(500))
        .build()
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
