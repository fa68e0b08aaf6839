//! What reaches each library's client: per-cluster data, a presence per shard, and the hooks
//! that adjust twilight's shard configuration and either library's HTTP client, checked on
//! what discord-mock saw each session identify with.

mod common;

use carrier::{FleetEvent, Payload, WorkerId};
use common::{WAIT, launch, mock_config, options, until};
use discord_mock::MockDiscord;

/// Per-cluster settings as each cluster got them, on one library's fleet.
async fn cluster_data_reaches_each_cluster(fleet: carrier::Fleet) {
    let (admiral, mut events) = launch(fleet).await;
    admiral.wait_ready(WAIT).await.unwrap();
    let ipc = admiral.ipc();
    for id in [0, 2] {
        let data = ipc
            .cluster_command(id, Payload::from("cluster-data"))
            .await
            .unwrap();
        let settings: (u32, String) = data.decode().unwrap();
        assert_eq!(settings, (id, format!("region-{}", id % 2)));
    }
    // Its function panicked for cluster 1: reported, and the cluster runs with no data.
    let data = ipc
        .cluster_command(1, Payload::from("cluster-data"))
        .await
        .unwrap();
    assert!(data.as_bytes().is_empty());
    let seen = until(&mut events, |e| {
        matches!(e, FleetEvent::Panic { worker: WorkerId::Cluster(1), report, .. } if report.context == "cluster data")
    })
    .await;
    assert!(
        matches!(seen.last(), Some(FleetEvent::Panic { report, .. }) if report.message.contains("no settings for 1"))
    );
    admiral.shutdown().await;
}

fn settings(id: u32) -> (u32, String) {
    assert!(id != 1, "no settings for 1");
    (id, format!("region-{}", id % 2))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_twilight_cluster_gets_its_own_data() {
    let mock = MockDiscord::start(mock_config(6, 3, 1)).await.unwrap();
    let fleet = fleet_tests::fleet(options(&mock, 3)).cluster_data(settings);
    cluster_data_reaches_each_cluster(fleet).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_serenity_cluster_gets_its_own_data() {
    let mock = MockDiscord::start(mock_config(6, 3, 1)).await.unwrap();
    let fleet = fleet_tests::serenity_fleet(options(&mock, 3)).cluster_data(settings);
    cluster_data_reaches_each_cluster(fleet).await;
}

/// Each session's presence activity and status, and its large threshold, by shard.
fn presences(mock: &MockDiscord) -> Vec<(u32, String, String, Option<u64>)> {
    let mut seen: Vec<_> = mock
        .sessions()
        .into_iter()
        .map(|s| {
            let presence = s.presence.unwrap_or_default();
            (
                s.shard[0],
                presence["activities"][0]["name"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned(),
                presence["status"].as_str().unwrap_or("").to_owned(),
                s.large_threshold,
            )
        })
        .collect();
    seen.sort();
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twilight_shards_identify_with_their_own_presence_and_the_users_configuration() {
    let mock = MockDiscord::start(mock_config(6, 3, 1)).await.unwrap();
    let (admiral, _events) = launch(fleet_tests::fleet(options(&mock, 2))).await;
    admiral.wait_ready(WAIT).await.unwrap();
    let plan = admiral.plan();
    let cluster_of = |shard: u32| {
        plan.clusters
            .iter()
            .find(|c| (c.first_shard..=c.last_shard).contains(&shard))
            .unwrap()
            .id
    };
    let wanted: Vec<_> = (0..3)
        .map(|shard| {
            let name = format!("shard {shard} of 3 in cluster {}", cluster_of(shard));
            (
                shard,
                name,
                "online".to_owned(),
                Some(fleet_tests::LARGE_THRESHOLD),
            )
        })
        .collect();
    assert_eq!(presences(&mock), wanted);
    let hooked: u64 = admiral
        .ipc()
        .cluster_command(0, Payload::from("http-hooked"))
        .await
        .unwrap()
        .decode()
        .unwrap();
    assert_eq!(hooked, 1, "the HTTP hook ran once for the cluster's client");
    admiral.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serenity_shards_identify_with_their_own_presence() {
    let mock = MockDiscord::start(mock_config(4, 2, 1)).await.unwrap();
    let (admiral, _events) = launch(fleet_tests::serenity_fleet(options(&mock, 2))).await;
    admiral.wait_ready(WAIT).await.unwrap();
    let seen = presences(&mock);
    let names: Vec<_> = seen
        .iter()
        .map(|(s, n, st, _)| (*s, n.clone(), st.clone()))
        .collect();
    assert_eq!(
        names,
        [
            (0, "shard 0 of 2 in cluster 0".to_owned(), "idle".to_owned()),
            (1, "shard 1 of 2 in cluster 1".to_owned(), "idle".to_owned()),
        ]
    );
    let hooked: u64 = admiral
        .ipc()
        .cluster_command(1, Payload::from("http-hooked"))
        .await
        .unwrap()
        .decode()
        .unwrap();
    assert_eq!(hooked, 1);
    admiral.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_shard_hook_is_reported_and_its_shard_connects_without_it() {
    let mock = MockDiscord::start(mock_config(4, 2, 1)).await.unwrap();
    let mut options = options(&mock, 1);
    if let Some(command) = options.worker_command.as_mut() {
        command
            .env
            .push((fleet_tests::PANIC_SHARD_1_ENV.into(), "1".into()));
    }
    let (admiral, mut events) = launch(fleet_tests::fleet(options)).await;
    admiral.wait_ready(WAIT).await.unwrap();
    let seen = until(&mut events, |e| {
        matches!(e, FleetEvent::Panic { worker: WorkerId::Cluster(0), report, .. } if report.context == "shard configuration")
    })
    .await;
    let Some(FleetEvent::Panic { report, .. }) = seen.last() else {
        unreachable!()
    };
    assert_eq!(report.shard, Some(1));
    // Shard 0 got the hook's threshold; shard 1 connected with its presence and no threshold.
    let seen = presences(&mock);
    assert_eq!(seen[0].3, Some(fleet_tests::LARGE_THRESHOLD));
    assert_eq!(seen[1].0, 1);
    assert_eq!(seen[1].1, "shard 1 of 2 in cluster 0");
    assert_ne!(seen[1].3, Some(fleet_tests::LARGE_THRESHOLD));
    admiral.shutdown().await;
}
