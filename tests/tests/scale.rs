//! The scale run, short for CI: 64 shards in 8 cluster processes with events flowing, held to
//! the invariants `cargo xtask bench scale` holds its thousand shards to. Every shard ready with
//! no identify violation; every event handled once, none lost, through a steady window, a
//! rolling restart of every cluster (no identify spent) and the drain after it; every shard's
//! event loop timed and none behind; a stats round that covers them all.

mod common;

use std::time::Duration;

use carrier::admiral::LifecycleEvent;
use carrier::{FleetEvent, Group, Outcome, Payload, RestartMode};
use common::{WAIT, launch, mock_builder, options, until};
use discord_mock::MockDiscord;

const SHARDS: u32 = 64;
const CLUSTERS: u32 = 8;
const GUILDS_PER_SHARD: usize = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_shards_start_serve_and_restart_without_losing_an_event() {
    let guilds = SHARDS as usize * GUILDS_PER_SHARD;
    // Heartbeats as far apart as the tests' identify pacing allows: on a loaded machine a
    // cluster busy with its guilds' burst may see an acknowledgement late, take its
    // connection for a zombie and identify again, which is no violation but no scale either.
    let config = mock_builder(guilds, SHARDS, 16)
        .heartbeat_interval(Duration::from_secs(5))
        .build();
    let mock = MockDiscord::start(config).await.unwrap();
    let mut options = options(&mock, CLUSTERS);
    options.stats_interval = Duration::from_millis(500);
    let (admiral, mut events) = launch(fleet_tests::fleet(options)).await;
    admiral.wait_ready(WAIT * 2).await.unwrap();
    until(&mut events, |e| {
        matches!(e, FleetEvent::Lifecycle(LifecycleEvent::AllReady { .. }))
    })
    .await;
    let started = mock.stats();
    assert!(started.identifies >= u64::from(SHARDS), "{started:?}");
    assert_eq!(started.total_violations(), 0, "{started:?}");

    // About a thousand events a second over the fleet.
    mock.start_events(Some(1000.0 / guilds as f64)).unwrap();
    let before = mock.event_report().produced;
    mock.wait_until(WAIT, "events flowing", |m| {
        m.event_report().produced >= before + 2000
    })
    .await
    .unwrap();
    let stats = admiral.stats().await.unwrap();
    assert_eq!((stats.shard_count, stats.shards_ready), (SHARDS, SHARDS));
    assert_eq!(stats.guilds, guilds as u64);
    // The test fleet's `broken` service never starts; every cluster reports.
    assert!(
        stats
            .missing
            .iter()
            .all(|m| matches!(m.worker, carrier::Target::Service(_))),
        "{:?}",
        stats.missing
    );
    assert!(
        stats.shards().all(|s| s.busy.is_some()),
        "every event loop is timed"
    );
    assert_eq!(stats.shards_behind, 0);

    // Every cluster replaced by handover, two at a time, while the events go on.
    let outcomes = admiral
        .restart_all(Group::Clusters, RestartMode::Handover, 2)
        .await
        .unwrap();
    assert_eq!(outcomes.len(), CLUSTERS as usize);
    for (target, outcome) in &outcomes {
        assert_eq!(*outcome, Outcome::Ok(Payload::empty()), "{target}");
    }

    let report = common::settle(&mock).await;
    assert!(report.produced > 2000, "{report:?}");
    assert_eq!(
        (report.lost, report.duplicates),
        (0, 0),
        "every event handled once: {report:?}"
    );
    let after = mock.stats();
    assert_eq!(
        after.identifies, started.identifies,
        "the rolling restart resumed every session: {after:?}"
    );
    assert!(after.resumes >= u64::from(SHARDS), "{after:?}");
    assert_eq!(after.total_violations(), 0, "{after:?}");
    let stats = admiral.stats().await.unwrap();
    assert_eq!(stats.shards_ready, SHARDS);
    assert!(stats.clusters.iter().all(|c| c.restarts == 1), "{stats:?}");
    admiral.shutdown().await;
}
