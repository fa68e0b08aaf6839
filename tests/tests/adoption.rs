//! Workers that outlive their admiral (`FleetOptions::admiral_grace`): an admiral process is
//! killed with `SIGKILL` while its clusters serve and Discord keeps sending; the workers serve on,
//! and the next admiral on the same run directory adopts them: the same processes, no identify,
//! every message handled. With no admiral coming back, the workers leave once the grace is over.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use carrier::WorkerId;
use carrier::admiral::State;
use common::{WAIT, launch, mock_config, options};
use discord_mock::MockDiscord;

/// A run directory of this test's own.
fn run_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("fleet-adopt-{:016x}", fastrand::u64(..)));
    std::fs::create_dir(&dir).unwrap();
    dir
}

/// The pids an admiral process printed in its `ready` line.
fn pids(ready: &str) -> BTreeSet<u32> {
    ready
        .strip_prefix("ready ")
        .expect("a ready line")
        .split(' ')
        .map(|p| p.parse().unwrap())
        .collect()
}

/// Whether a process is still running (a zombie counts as gone).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}

/// Sends `signal` (`-HUP`, `-TERM`) to process `pid`.
fn signal(pid: &str, signal: &str) {
    let sent = std::process::Command::new("kill")
        .args([signal, pid])
        .status()
        .unwrap();
    assert!(sent.success(), "kill {signal} {pid}");
}

/// Waits (up to [`WAIT`]) until process `pid` is gone; `why` says what that shows.
async fn gone(pid: u32, why: &str) {
    let waited = tokio::time::timeout(WAIT, async {
        while alive(pid) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "{why}");
}

/// Waits until the mock has delivered 20 more events (`what` names the wait), then stops its
/// event source.
async fn deliver_more_then_stop(mock: &MockDiscord, what: &str) {
    let delivered = mock.event_report().delivered;
    mock.wait_until(WAIT, what, |m| m.event_report().delivered > delivered + 20)
        .await
        .unwrap();
    mock.stop_events();
}

/// Kills an admiral process with SIGKILL and waits for it to be gone.
async fn kill_admiral(admiral: &mut tokio::process::Child) {
    admiral.start_kill().unwrap();
    tokio::time::timeout(WAIT, admiral.wait())
        .await
        .expect("the admiral dies")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_admirals_workers_are_adopted_by_the_next_one_with_no_identify_and_nothing_lost() {
    let mock = MockDiscord::start(mock_config(8, 4, 2)).await.unwrap();
    let base = run_dir();
    let env = [
        ("TESTBOT_ADMIRAL_GRACE_MS", "60000"),
        ("TESTBOT_REPORT_EVENTS", "1"),
    ];
    let (mut first, ready, _lines) = common::spawn_admiral_with(&mock, 2, Some(&base), &env).await;
    let workers = pids(&ready);
    assert_eq!(workers.len(), 3, "echo and two clusters");
    let before = mock.stats();
    assert_eq!(before.identifies, 4);
    // The admiral writes its central store (where it noted REPORT_EVENTS) for the next one.
    let fleet_dir = std::fs::read_dir(&base)
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("fleet-"))
        .expect("the fleet's directory")
        .path();
    tokio::time::timeout(WAIT, async {
        while !fleet_dir.join("store").exists() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the store is written within a second of changing");

    kill_admiral(&mut first).await;
    // Discord goes on sending while the fleet has no admiral. The clusters' handlers report each
    // message to the admiral and wait for its answer, so they wait for the next admiral.
    mock.start_events(Some(10.0)).unwrap();
    mock.wait_until(WAIT, "events sent with no admiral", |m| {
        m.event_report().produced > 40
    })
    .await
    .unwrap();
    assert!(workers.iter().all(|p| alive(*p)), "the workers serve on");

    // The next admiral of the same fleet, in this process.
    let mut options = options(&mock, 2);
    options.run_dir.clone_from(&base);
    options.admiral_grace = Duration::from_mins(1);
    let (admiral, _events) = launch(fleet_tests::fleet(options)).await;
    assert!(
        admiral
            .ipc()
            .store_has(fleet_tests::REPORT_EVENTS)
            .await
            .unwrap(),
        "the central store came along"
    );
    let handled = common::HandledLog::start(&admiral).await;
    admiral.wait_ready(WAIT).await.unwrap();
    let adopted: BTreeSet<u32> = admiral
        .workers()
        .await
        .unwrap()
        .iter()
        .filter(|w| w.state == State::Live)
        .filter_map(|w| w.pid)
        .collect();
    assert_eq!(adopted, workers, "the same processes serve on");
    // Each cluster told the new admiral its sessions: a crash now would resume them.
    let mut events = admiral.events();
    tokio::time::timeout(WAIT, async {
        loop {
            let workers = admiral.workers().await.unwrap();
            let clusters = workers
                .iter()
                .filter(|w| matches!(w.id, WorkerId::Cluster(_)));
            if clusters.clone().count() == 2 && clusters.into_iter().all(|w| w.checkpointed == 2) {
                return;
            }
            let _ = tokio::time::timeout(Duration::from_secs(1), events.recv()).await;
        }
    })
    .await
    .expect("every session checkpointed with the new admiral");
    // It routes to them: a command, and a stats round over every worker.
    let stats = admiral.stats().await.unwrap();
    assert_eq!(stats.guilds, 8, "{stats:?}");
    deliver_more_then_stop(&mock, "events delivered after the adoption").await;

    assert!(
        handled.all_handled(&mock).await,
        "every message reached user code, the ones sent while no admiral ran included"
    );
    let after = mock.stats();
    assert_eq!(
        after.identifies, before.identifies,
        "no shard identified again"
    );
    assert_eq!(after.resumes, before.resumes, "no session was even resumed");
    assert_eq!(after.total_violations(), 0, "{:?}", after.violations);
    let report = mock.event_report();
    assert_eq!((report.lost, report.duplicates), (0, 0), "{report:?}");

    admiral.shutdown().await;
    for pid in &workers {
        gone(*pid, "an adopted worker stops with the fleet").await;
    }
    mock.wait_until(WAIT, "every session closed", |m| {
        m.sessions().is_empty() && m.stats().open_connections == 0
    })
    .await
    .unwrap();
    let _ = std::fs::remove_dir_all(&base);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_leave_when_no_admiral_comes_back_within_the_grace() {
    let mock = MockDiscord::start(mock_config(4, 2, 1)).await.unwrap();
    let base = run_dir();
    let env = [("TESTBOT_ADMIRAL_GRACE_MS", "1000")];
    let (mut first, ready, _lines) = common::spawn_admiral_with(&mock, 2, Some(&base), &env).await;
    let workers = pids(&ready);
    kill_admiral(&mut first).await;
    let killed = std::time::Instant::now();
    for pid in &workers {
        gone(*pid, "no worker outlives its grace").await;
    }
    assert!(
        killed.elapsed() >= Duration::from_millis(900),
        "they waited for the grace first"
    );
    mock.wait_until(WAIT, "every session ended", |m| {
        m.stats().open_connections == 0
    })
    .await
    .unwrap();
    let _ = std::fs::remove_dir_all(&base);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_re_executes_the_admiral_in_place_and_it_adopts_its_own_workers() {
    let mock = MockDiscord::start(mock_config(8, 4, 2)).await.unwrap();
    let base = run_dir();
    let env = [("TESTBOT_ADMIRAL_GRACE_MS", "60000")];
    let (mut admiral, ready, mut lines) =
        common::spawn_admiral_with(&mock, 2, Some(&base), &env).await;
    let workers = pids(&ready);
    let before = mock.stats();
    mock.start_events(Some(10.0)).unwrap();

    let pid = admiral.id().unwrap().to_string();
    signal(&pid, "-HUP");
    // The new image prints its own `ready` once it has adopted every worker.
    let again = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .expect("the admiral comes back")
        .unwrap()
        .expect("a line");
    assert_eq!(pids(&again), workers, "the same workers serve on");
    assert!(
        admiral.try_wait().unwrap().is_none(),
        "the same admiral process"
    );
    deliver_more_then_stop(&mock, "events delivered after the restart").await;
    let after = mock.stats();
    assert_eq!(
        after.identifies, before.identifies,
        "no shard identified again"
    );
    assert_eq!(after.resumes, before.resumes, "no session was even resumed");
    assert_eq!(after.total_violations(), 0, "{:?}", after.violations);
    let report = mock.event_report();
    assert_eq!((report.lost, report.duplicates), (0, 0), "{report:?}");

    signal(&pid, "-TERM");
    let status = tokio::time::timeout(WAIT, admiral.wait())
        .await
        .expect("the admiral exits")
        .unwrap();
    assert!(status.success(), "{status:?}");
    assert_eq!(
        tokio::time::timeout(WAIT, lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .as_deref(),
        Some("stopped")
    );
    assert!(
        workers.iter().all(|p| !alive(*p)),
        "no adopted worker outlives a graceful shutdown"
    );
    mock.wait_until(WAIT, "every session closed", |m| {
        m.sessions().is_empty() && m.stats().open_connections == 0
    })
    .await
    .unwrap();
    let _ = std::fs::remove_dir_all(&base);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_moves_every_worker_then_the_admiral_restarts_itself_and_adopts_them() {
    let mock = MockDiscord::start(mock_config(8, 4, 2)).await.unwrap();
    let base = run_dir();
    let ledger = base.join("handled");
    let ledger_path = ledger.to_str().unwrap();
    let env = [
        ("TESTBOT_ADMIRAL_GRACE_MS", "60000"),
        ("TESTBOT_DEPLOY_BUILD", "testbot 2"),
        (fleet_tests::HANDLED_FILE, ledger_path),
    ];
    let (mut admiral, ready, mut lines) =
        common::spawn_admiral_with(&mock, 2, Some(&base), &env).await;
    let before = pids(&ready);
    let identifies = mock.stats().identifies;
    mock.start_events(Some(10.0)).unwrap();

    let pid = admiral.id().unwrap().to_string();
    signal(&pid, "-USR2");
    let mut next = async || {
        tokio::time::timeout(WAIT, lines.next_line())
            .await
            .expect("a line in time")
            .unwrap()
            .expect("a line")
    };
    let deployed = next().await;
    let moved: BTreeSet<u32> = deployed
        .strip_prefix("deployed true ")
        .unwrap_or_else(|| panic!("{deployed}"))
        .split(' ')
        .map(|p| p.parse().unwrap())
        .collect();
    assert!(moved.is_disjoint(&before), "{before:?} -> {moved:?}");
    // Then the admiral re-executes itself and adopts the workers the deploy started.
    let again = next().await;
    assert_eq!(pids(&again), moved, "the new build's workers serve on");
    assert!(
        admiral.try_wait().unwrap().is_none(),
        "the same admiral process"
    );
    deliver_more_then_stop(&mock, "events delivered after the restart").await;
    let after = mock.stats();
    assert_eq!(after.identifies, identifies, "no identify spent");
    assert_eq!(after.total_violations(), 0, "{:?}", after.violations);
    let report = mock.event_report();
    assert_eq!(report.lost, 0, "{report:?}");
    // Every message of the run reaches user code exactly once: across the deploy's handovers and
    // the admiral's restart.
    let messages = common::messages(&mock);
    assert!(messages.len() > 40, "{} messages", messages.len());
    let all_handled = tokio::time::timeout(WAIT, async {
        loop {
            let times = handled_times(&ledger);
            if messages.iter().all(|id| times.contains_key(id)) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(all_handled.is_ok(), "every message handled");

    signal(&pid, "-TERM");
    assert_eq!(next().await, "stopped");
    let _ = tokio::time::timeout(WAIT, admiral.wait()).await;
    let times = handled_times(&ledger);
    let missed = messages.iter().filter(|id| !times.contains_key(id)).count();
    let twice = times.values().filter(|n| **n > 1).count();
    assert_eq!((missed, twice), (0, 0), "of {} messages", messages.len());
    let _ = std::fs::remove_dir_all(&base);
}

/// How many times each message id was handled, from a ledger file ([`fleet_tests::HANDLED_FILE`]).
fn handled_times(ledger: &std::path::Path) -> BTreeMap<u64, usize> {
    let mut times = BTreeMap::new();
    for line in std::fs::read_to_string(ledger).unwrap_or_default().lines() {
        if let Ok(id) = line.parse() {
            *times.entry(id).or_default() += 1;
        }
    }
    times
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_that_do_not_fit_the_next_admirals_plan_are_refused_and_replaced() {
    let mock = MockDiscord::start(mock_config(8, 4, 2)).await.unwrap();
    let base = run_dir();
    let env = [("TESTBOT_ADMIRAL_GRACE_MS", "60000")];
    let (mut first, ready, _lines) = common::spawn_admiral_with(&mock, 2, Some(&base), &env).await;
    let old = pids(&ready);
    let identifies = mock.stats().identifies;
    kill_admiral(&mut first).await;

    // The next admiral splits the same shards over four clusters: the two old clusters run
    // shards it plans otherwise. The echo service has no shards, and is adopted.
    let mut options = options(&mock, 4);
    options.run_dir.clone_from(&base);
    options.admiral_grace = Duration::from_mins(1);
    let (admiral, _events) = launch(fleet_tests::fleet(options)).await;
    admiral.wait_ready(WAIT).await.unwrap();
    let workers = admiral.workers().await.unwrap();
    let pid_of = |id: &WorkerId| workers.iter().find(|w| &w.id == id).and_then(|w| w.pid);
    let echo = pid_of(&WorkerId::Service("echo".into())).unwrap();
    assert!(old.contains(&echo), "the service was adopted");
    for cluster in 0..4 {
        let pid = pid_of(&WorkerId::Cluster(cluster)).unwrap();
        assert!(!old.contains(&pid), "cluster {cluster} runs a new process");
    }
    for pid in old.iter().filter(|p| **p != echo) {
        gone(*pid, "a refused worker leaves").await;
    }
    let stats = mock.stats();
    assert_eq!(
        stats.identifies,
        identifies + 4,
        "the new clusters identified"
    );
    assert_eq!(stats.total_violations(), 0, "{:?}", stats.violations);
    admiral.shutdown().await;
    let _ = std::fs::remove_dir_all(&base);
}
