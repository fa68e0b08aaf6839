//! Deploys with real worker processes against discord-mock, its event source on: two builds of
//! the test bot that differ in the build they report, the second one sound or crashing.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use carrier::admiral::{RestartMode, WorkerStatus};
use carrier::{AdmiralHandle, DeployPlan, IpcError, Target, WorkerId};
use common::{WAIT, launch, mock_config, options, settle};
use discord_mock::MockDiscord;

/// Each live worker's build, as its process said in its hello (the fleet's `broken` service
/// never starts).
async fn builds(admiral: &AdmiralHandle) -> BTreeMap<WorkerId, Option<String>> {
    let workers: Vec<WorkerStatus> = admiral.workers().await.unwrap();
    workers
        .into_iter()
        .filter(|w| w.state == carrier::admiral::State::Live)
        .map(|w| (w.id, w.build))
        .collect()
}

/// A ready fleet of two twilight clusters (4 shards) and the echo service, crashes restarted.
async fn two_clusters() -> (MockDiscord, AdmiralHandle) {
    let mock = MockDiscord::start(mock_config(8, 4, 4)).await.unwrap();
    let mut options = options(&mock, 2);
    options.max_restarts = 3;
    options.restart_backoff = Duration::from_millis(100);
    let (admiral, _) = launch(fleet_tests::fleet(options)).await;
    admiral.wait_ready(WAIT).await.unwrap();
    (mock, admiral)
}

/// The test bot as build 2 (and whatever else `env` adds).
fn build_two() -> DeployPlan {
    DeployPlan::new(env!("CARGO_BIN_EXE_testbot"))
        .env("TESTBOT_BUILD", "testbot 2")
        .canary_bake(Duration::from_millis(500))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_moves_every_worker_onto_the_new_build_without_an_identify_or_a_lost_event() {
    let (mock, admiral) = two_clusters().await;
    let first = builds(&admiral).await;
    assert!(
        first.values().all(|b| b.as_deref() == Some("testbot 1")),
        "{first:?}"
    );
    let handled = common::HandledLog::start(&admiral).await;
    mock.start_events(Some(20.0)).unwrap();
    let before = mock.stats();

    // A dry run says what it would do, and moves nothing.
    let dry = admiral.deploy(build_two().dry_run()).await.unwrap();
    println!("{dry}");
    let order = vec![
        Target::Cluster(0),
        Target::Cluster(1),
        Target::Service("echo".into()),
    ];
    assert_eq!(dry.order, order);
    assert!(dry.moved.is_empty() && dry.dry_run);
    assert_eq!(dry.identifies_planned, 0, "handovers spend no identify");
    assert!(dry.estimate_ms >= 500, "the canary's bake at least");
    assert!(
        builds(&admiral)
            .await
            .values()
            .all(|b| b.as_deref() == Some("testbot 1"))
    );
    // A cluster asks for one over its own IPC socket.
    let answer = admiral
        .ipc()
        .cluster_command(1, carrier::Payload::from("deploy-dry-run"))
        .await
        .unwrap();
    let asked: Vec<String> = answer.decode().unwrap();
    assert_eq!(asked, ["cluster 0", "cluster 1", "service \"echo\""]);

    let mut heard = admiral
        .ipc()
        .subscribe(&[carrier::Topic::Lifecycle])
        .await
        .unwrap();
    let report = admiral.deploy(build_two()).await.unwrap();
    println!("{report}");
    assert!(report.succeeded(), "{report}");
    // Subscribers hear how it ended.
    let told = tokio::time::timeout(WAIT, async {
        loop {
            if let carrier::AdmiralEvent::Deployed(told) = &*heard.recv().await.unwrap() {
                return (**told).clone();
            }
        }
    })
    .await
    .expect("a Deployed event");
    assert_eq!(told, report);
    assert_eq!(report.moved, order);
    assert_eq!(report.identifies_spent, 0);
    assert!(
        builds(&admiral)
            .await
            .values()
            .all(|b| b.as_deref() == Some("testbot 2")),
        "{:?}",
        builds(&admiral).await
    );
    // Every message was handled exactly once, across the deploy.
    let report = settle(&mock).await;
    let after = mock.stats();
    assert_eq!(after.identifies, before.identifies, "no identify spent");
    assert_eq!(report.lost, 0, "{report:?}");
    assert_eq!(after.total_violations(), 0, "{:?}", after.violations);
    assert!(
        handled.all_handled(&mock).await,
        "a message reached no user code"
    );
    let entries = handled.entries();
    let mut ids: Vec<u64> = entries.iter().map(|(_, id, _)| *id).collect();
    ids.sort_unstable();
    let total = ids.len();
    ids.dedup();
    println!("deploy: {} messages handled, {total} times", ids.len());
    assert_eq!(total, ids.len(), "a message was handled twice");
    admiral.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_that_crashes_is_rolled_back_and_the_rest_never_move() {
    let (_mock, admiral) = two_clusters().await;
    let broken = build_two()
        .env(fleet_tests::CRASH_AFTER_MS_ENV, "300")
        .canary_bake(Duration::from_secs(20));
    let report = admiral.deploy(broken).await.unwrap();
    println!("{report}");
    assert!(!report.succeeded());
    let failure = report.failure.as_deref().unwrap_or_default();
    assert!(failure.contains("cluster 0 crashed"), "{failure}");
    assert_eq!(report.rolled_back, vec![Target::Cluster(0)]);
    assert!(report.moved.is_empty());
    // The canary is back on the old build once its crash restart is done; the rest never left it.
    admiral.wait_ready(WAIT).await.unwrap();
    let back = tokio::time::timeout(WAIT, async {
        loop {
            let all = builds(&admiral).await;
            if all.len() == 3 && all.values().all(|b| b.as_deref() == Some("testbot 1")) {
                return all;
            }
            let _ = tokio::time::timeout(Duration::from_millis(100), admiral.events().recv()).await;
        }
    })
    .await;
    assert!(back.is_ok(), "every worker back on build 1");

    // Refused before anything moves: a program that is not there, a plan that spends more of
    // the session budget than allowed, an admiral restart without a grace, and a second deploy
    // at once.
    let missing = admiral
        .deploy(DeployPlan::new("/nonexistent/bot"))
        .await
        .unwrap_err();
    assert!(matches!(missing, IpcError::Refused(_)), "{missing}");
    let costly = build_two().mode(RestartMode::Overlap).max_budget_percent(0);
    let refused = admiral.deploy(costly).await.unwrap_err();
    assert!(refused.to_string().contains("identifies"), "{refused}");
    // The admiral cannot follow its workers onto the new build if they would not outlive it.
    let alone = admiral
        .deploy(build_two().restart_admiral())
        .await
        .unwrap_err();
    assert!(alone.to_string().contains("admiral_grace"), "{alone}");
    // From a worker's IPC as from the admiral; while one runs, another is refused.
    let mut events = admiral.events();
    let from_a_worker = admiral.ipc().clone();
    let first = tokio::spawn(async move {
        from_a_worker
            .deploy(build_two().canary_bake(Duration::from_millis(200)), WAIT)
            .await
    });
    common::until(&mut events, |e| {
        matches!(
            e,
            carrier::FleetEvent::Lifecycle(carrier::admiral::LifecycleEvent::RestartPending { worker, .. })
                if *worker == WorkerId::Cluster(0)
        )
    })
    .await;
    let second = admiral.deploy(build_two().dry_run()).await.unwrap_err();
    assert!(second.to_string().contains("under way"), "{second}");
    let first = first.await.unwrap().unwrap();
    assert!(first.succeeded(), "{first}");
    // A crash after the deploy comes back on the new build.
    let mut events = admiral.events();
    common::kill(&admiral, &WorkerId::Cluster(1)).await;
    common::until(&mut events, |e| {
        matches!(e, carrier::FleetEvent::Lifecycle(carrier::admiral::LifecycleEvent::Ready(w)) if *w == WorkerId::Cluster(1))
    })
    .await;
    let back = builds(&admiral).await;
    assert_eq!(back[&WorkerId::Cluster(1)].as_deref(), Some("testbot 2"));

    admiral.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr2_deploys_the_new_build_an_operator_put_in_place() {
    let mock = MockDiscord::start(mock_config(4, 2, 2)).await.unwrap();
    let (admiral, ready, mut lines) =
        common::spawn_admiral_with(&mock, 2, None, &[("TESTBOT_DEPLOY_BUILD", "testbot 2")]).await;
    let before: Vec<u32> = ready
        .strip_prefix("ready ")
        .unwrap()
        .split(' ')
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(before.len(), 3, "two clusters and echo");
    let identifies = mock.stats().identifies;
    let pid = admiral.id().unwrap().to_string();
    let sent = std::process::Command::new("kill")
        .args(["-USR2", &pid])
        .status()
        .unwrap();
    assert!(sent.success());
    let line = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .expect("the deploy ends")
        .unwrap()
        .expect("a line");
    let after: Vec<u32> = line
        .strip_prefix("deployed true ")
        .unwrap_or_else(|| panic!("{line}"))
        .split(' ')
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(after.len(), 3);
    assert!(
        after.iter().all(|p| !before.contains(p)),
        "every worker runs a new process: {before:?} -> {after:?}"
    );
    assert_eq!(mock.stats().identifies, identifies, "no identify spent");
    let stop = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(stop.success());
    let stopped = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stopped.as_deref(), Some("stopped"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_onto_an_incompatible_build_fails_its_canary_and_crashes_come_back_on_the_old_one()
{
    let (_mock, admiral) = two_clusters().await;
    // The new build speaks IPC protocol 0 (the test bot does while this file exists).
    let old_protocol = std::env::temp_dir().join(format!(
        "fleet-old-protocol-{}-{}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::write(&old_protocol, b"").unwrap();
    let incompatible = build_two().env("TESTBOT_OLD_BUILD", old_protocol.display().to_string());
    let report = admiral.deploy(incompatible).await.unwrap();
    std::fs::remove_file(&old_protocol).unwrap();
    println!("{report}");
    assert!(!report.succeeded());
    assert!(
        report.moved.is_empty() && report.rolled_back.is_empty(),
        "{report}"
    );
    assert!(
        report
            .failure
            .as_deref()
            .unwrap_or_default()
            .contains("cluster 0"),
        "{report}"
    );
    // A crash of the canary afterwards restarts it on the build it runs, not the refused one.
    let mut events = admiral.events();
    common::kill(&admiral, &WorkerId::Cluster(0)).await;
    common::until(&mut events, |e| {
        matches!(e, carrier::FleetEvent::Lifecycle(carrier::admiral::LifecycleEvent::Ready(w)) if *w == WorkerId::Cluster(0))
    })
    .await;
    assert_eq!(
        builds(&admiral).await[&WorkerId::Cluster(0)].as_deref(),
        Some("testbot 1")
    );
    admiral.shutdown().await;
}
