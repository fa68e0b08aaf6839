//! Crash resume with real cluster processes against discord-mock, its event source on: a cluster
//! killed with `SIGKILL` comes back on the sessions it checkpointed, spending no identify and
//! losing no event.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use carrier::admiral::{LifecycleEvent, State};
use carrier::{AdmiralHandle, Fleet, FleetEvent, FleetOptions, WorkerId};
use common::{WAIT, kill, launch, mock_config, options, settle, until};
use discord_mock::MockDiscord;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_twilight_cluster_resumes_its_sessions_and_loses_no_event() {
    crash_resume(fleet_tests::fleet, true, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_serenity_cluster_resumes_its_sessions_and_loses_no_event() {
    crash_resume(fleet_tests::serenity_fleet, true, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_raw_cluster_resumes_its_sessions_and_loses_no_event() {
    crash_resume(fleet_tests::raw::raw_fleet, false, false).await;
}

/// The worker's state and how many of its sessions the admiral holds checkpoints of.
async fn checkpointed(admiral: &AdmiralHandle, worker: &WorkerId) -> (Option<u64>, State, usize) {
    let workers = admiral.workers().await.unwrap();
    let w = workers.iter().find(|w| &w.id == worker).unwrap();
    (w.process, w.state.clone(), w.checkpointed)
}

/// Waits until `worker`'s process `not` is replaced by a live one with `sessions` checkpointed.
async fn live_with_checkpoints(
    admiral: &AdmiralHandle,
    worker: &WorkerId,
    not: Option<u64>,
    sessions: usize,
) -> Option<u64> {
    let mut events = admiral.events();
    loop {
        let (process, state, held) = checkpointed(admiral, worker).await;
        if process != not && state == State::Live && held == sessions {
            return process;
        }
        // Checkpoints arrive at least every second; shard and lifecycle events in between.
        let _ = tokio::time::timeout(Duration::from_secs(1), events.recv()).await;
    }
}

/// Kills cluster 0 of two while events flow; checks what its replacement did (`refills`: its
/// cache is fetched again).
async fn crash_resume(fleet: fn(FleetOptions) -> Fleet, user_code: bool, refills: bool) {
    let mock = MockDiscord::start(mock_config(8, 4, 4)).await.unwrap();
    let mut options = options(&mock, 2);
    options.max_restarts = 3;
    options.restart_backoff = Duration::from_millis(100);
    options.checkpoint_interval = Duration::from_millis(200);
    let (admiral, _) = launch(fleet(options)).await;
    admiral.wait_ready(WAIT).await.unwrap();
    let cluster = WorkerId::Cluster(0);
    // Every message user code handles, by which process.
    let handled = common::HandledLog::start(&admiral).await;
    mock.start_events(Some(20.0)).unwrap();
    let before = mock.stats();
    // Both of its shards' sessions are checkpointed, and events have flowed through them.
    let old = live_with_checkpoints(&admiral, &cluster, None, 2).await;
    let delivered = mock.event_report().delivered;
    mock.wait_until(WAIT, "events delivered", |m| {
        m.event_report().delivered > delivered + 10
    })
    .await
    .unwrap();

    let mut events = admiral.events();
    kill(&admiral, &cluster).await;
    let seen = until(
        &mut events,
        |e| matches!(e, FleetEvent::Lifecycle(LifecycleEvent::Ready(w)) if *w == cluster),
    )
    .await;
    assert!(
        seen.iter().any(|e| matches!(
            e,
            FleetEvent::Lifecycle(LifecycleEvent::Restarting { worker, .. }) if *worker == cluster
        )),
        "{seen:#?}"
    );
    let new = live_with_checkpoints(&admiral, &cluster, old, 2).await;
    assert_ne!(new, old);
    if refills {
        // The replacement's cache fills again over REST: a guild of its shards, and a channel.
        let guild = mock
            .guild_ids()
            .into_iter()
            .find(|id| (id >> 22) % 4 < 2)
            .expect("a guild of cluster 0");
        let channel = mock.guild(guild).expect("a mock guild").channels[0];
        let ipc = admiral.ipc();
        let refilled = tokio::time::timeout(WAIT, async {
            loop {
                let found: Option<serde_json::Value> = ipc.fetch_guild(guild).await.unwrap();
                let channel: Option<serde_json::Value> = ipc.fetch_channel(channel).await.unwrap();
                if found.is_some() && channel.is_some() {
                    return found;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .expect("the guild is cached again");
        assert_eq!(refilled.unwrap()["id"], guild.to_string());
    }
    let delivered = mock.event_report().delivered;
    mock.wait_until(WAIT, "events delivered after the crash", |m| {
        m.event_report().delivered > delivered + 10
    })
    .await
    .unwrap();

    let report = settle(&mock).await;
    let after = mock.stats();
    assert_eq!(
        after.identifies, before.identifies,
        "the replacement identified nothing"
    );
    assert_eq!(
        after.resumes - before.resumes,
        2,
        "both of its shards resumed"
    );
    assert_eq!(after.resumes_refused, before.resumes_refused);
    assert_eq!(report.lost, 0, "{report:?}");
    assert_eq!(after.total_violations(), 0, "{:?}", after.violations);
    if !user_code {
        admiral.shutdown().await;
        return;
    }
    // User code handled every message the mock made at least once; twice only those the dead
    // process handled after its last checkpoint.
    assert!(
        handled.all_handled(&mock).await,
        "a message reached no user code"
    );
    let handled = handled.entries();
    let mut by_id = BTreeMap::<u64, BTreeSet<u64>>::new();
    for (process, id, _) in &handled {
        by_id.entry(*id).or_default().insert(*process);
    }
    let pairs: usize = by_id.values().map(BTreeSet::len).sum();
    assert_eq!(pairs, handled.len(), "no process handled a message twice");
    let twice = by_id.values().filter(|p| p.len() > 1).count();
    println!(
        "crash resume: {} messages handled, {twice} of them again by the replacement",
        by_id.len()
    );
    admiral.shutdown().await;
}
