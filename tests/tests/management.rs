//! Management calls from any worker and the admiral: the list of workers, a worker stopped
//! gracefully or killed at once, and a total shutdown asked for by a worker.

mod common;

use carrier::admiral::State;
use carrier::ipc::proto::WorkerInfo;
use carrier::{FleetEvent, Payload, Target, WorkerId};
use common::{WAIT, launch, mock_config, options, until};
use discord_mock::MockDiscord;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_lists_the_fleet_and_a_worker_is_stopped_gently_or_at_once() {
    let mock = MockDiscord::start(mock_config(12, 3, 1)).await.unwrap();
    let (admiral, mut events) = launch(fleet_tests::fleet(options(&mock, 3))).await;
    admiral.wait_ready(WAIT).await.unwrap();
    let ipc = admiral.ipc();

    // From a cluster: every worker, with its state, shards and uptime.
    let listed: Vec<WorkerInfo> = ipc
        .cluster_command(0, Payload::from("fleet-workers"))
        .await
        .unwrap()
        .decode()
        .unwrap();
    assert_eq!(listed.len(), 5, "{listed:?}");
    let plan = admiral.plan();
    for cluster in &plan.clusters {
        let info = listed
            .iter()
            .find(|w| w.worker == Target::Cluster(cluster.id))
            .unwrap();
        assert_eq!(info.state, "live");
        assert_eq!(info.shards, Some((cluster.first_shard, cluster.last_shard)));
        assert!(info.pid.is_some() && info.process.is_some());
        assert!(info.uptime_ms > 0);
    }
    let broken = listed
        .iter()
        .find(|w| w.worker == Target::Service("broken".into()))
        .unwrap();
    assert!(broken.state.starts_with("failed"), "{broken:?}");
    assert_eq!(
        ipc.workers().await.unwrap().len(),
        5,
        "the admiral lists the same"
    );

    // Killed at once: it exits by a signal, and stays stopped.
    admiral
        .stop_worker_now(&WorkerId::Cluster(2))
        .await
        .unwrap();
    let seen = until(&mut events, |e| {
        matches!(
            e,
            FleetEvent::Exited {
                worker: WorkerId::Cluster(2),
                ..
            }
        )
    })
    .await;
    assert!(matches!(
        seen.last(),
        Some(FleetEvent::Exited { code: None, .. })
    ));
    // Stopped gently: its shards close and it exits by itself.
    admiral.stop_worker(&WorkerId::Cluster(1)).await.unwrap();
    let seen = until(&mut events, |e| {
        matches!(
            e,
            FleetEvent::Exited {
                worker: WorkerId::Cluster(1),
                ..
            }
        )
    })
    .await;
    assert!(matches!(
        seen.last(),
        Some(FleetEvent::Exited { code: Some(0), .. })
    ));
    let states: Vec<(WorkerId, State)> = admiral
        .workers()
        .await
        .unwrap()
        .into_iter()
        .map(|w| (w.id, w.state))
        .collect();
    assert!(states.contains(&(WorkerId::Cluster(1), State::Stopped)));
    assert!(states.contains(&(WorkerId::Cluster(2), State::Stopped)));
    assert!(states.contains(&(WorkerId::Cluster(0), State::Live)));
    // Nothing to stop twice.
    assert!(
        admiral
            .stop_worker_now(&WorkerId::Cluster(2))
            .await
            .is_err()
    );

    // A total shutdown asked for by a worker ends the whole fleet.
    let answer = ipc
        .cluster_command(0, Payload::from("total-shutdown"))
        .await
        .unwrap();
    assert_eq!(answer, Payload::from("shutting down"));
    tokio::time::timeout(WAIT, admiral.wait_stopped())
        .await
        .expect("the fleet stops");
    assert!(
        tokio::time::timeout(WAIT, async {
            loop {
                if let Ok(FleetEvent::ShuttingDown) = events.recv().await {
                    return;
                }
            }
        })
        .await
        .is_ok()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_reach_the_cluster_of_a_guild_or_shard_and_fan_outs_keep_their_own_timeout() {
    use carrier::IpcError;
    use carrier::ipc::proto::Refusal;
    let mock = MockDiscord::start(mock_config(12, 3, 1)).await.unwrap();
    let (admiral, _events) = launch(fleet_tests::fleet(options(&mock, 3))).await;
    admiral.wait_ready(WAIT).await.unwrap();
    let ipc = admiral.ipc();
    let plan = admiral.plan();
    let owner = |shard: u32| {
        plan.clusters
            .iter()
            .find(|c| (c.first_shard..=c.last_shard).contains(&shard))
            .unwrap()
            .id
    };
    for guild in mock.guild_ids() {
        let shard = ((guild >> 22) % 3) as u32;
        let status = common::status(
            &ipc.guild_command(guild, Payload::from("status"))
                .await
                .unwrap(),
        );
        assert_eq!(status.id, owner(shard), "guild {guild} on shard {shard}");
        assert!(status.shards.contains(&shard));
    }
    let status = common::status(&ipc.shard_command(2, Payload::from("status")).await.unwrap());
    assert_eq!(status.id, owner(2));
    assert!(matches!(
        ipc.shard_command(7, Payload::empty()).await,
        Err(IpcError::Refused(Refusal::Invalid(_)))
    ));
    // The owner's own error names it.
    let failed = ipc.shard_command(0, Payload::from("fail")).await;
    assert!(
        matches!(&failed, Err(IpcError::Remote { target: Target::Cluster(c), .. }) if *c == owner(0)),
        "{failed:?}"
    );

    // A fan-out with its own short timeout: every cluster timed out, the call itself answered.
    let outcomes = ipc
        .all_clusters_command_within(Payload::from("slow"), std::time::Duration::from_millis(100))
        .await
        .unwrap();
    assert_eq!(outcomes.len(), 3);
    assert!(
        outcomes.values().all(|o| *o == carrier::Outcome::TimedOut),
        "{outcomes:?}"
    );
    admiral.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_bot_total_that_is_not_a_multiple_is_refused_before_anything_connects() {
    use carrier::admiral::ShardCount;
    // max_concurrency 2: a large bot, whose shard total must be a multiple of 2.
    let mock = MockDiscord::start(mock_config(8, 4, 2)).await.unwrap();
    let mut options = options(&mock, 1);
    options.shards = ShardCount::Exact(3);
    let error = fleet_tests::fleet(options)
        .run()
        .await
        .expect_err("3 shards on max_concurrency 2");
    assert!(
        error
            .to_string()
            .contains("not a multiple of max_concurrency 2"),
        "{error}"
    );
    assert_eq!(mock.stats().connections, 0, "nothing connected");

    // The same for a reshard: refused, the fleet goes on as it was.
    let mut options = self::options(&mock, 1);
    options.shards = ShardCount::Exact(4);
    let (admiral, _events) = launch(fleet_tests::fleet(options)).await;
    admiral.wait_ready(WAIT).await.unwrap();
    let refused = admiral.reshard(ShardCount::Exact(5), None).await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.to_string().contains("not a multiple")),
        "{refused:?}"
    );
    assert_eq!(admiral.plan().shard_total, 4);
    admiral.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_knows_the_fleets_layout_and_its_generation_without_asking() {
    use carrier::admiral::ShardCount;
    type Where = (u32, Option<u32>, usize, u64, u32);
    let mock = MockDiscord::start(mock_config(12, 2, 1)).await.unwrap();
    let (admiral, _events) = launch(fleet_tests::fleet(options(&mock, 2))).await;
    admiral.wait_ready(WAIT).await.unwrap();
    let ipc = admiral.ipc();
    let guild = mock.guild_ids()[3];
    let ask = |cluster: u32| {
        let command = Payload::from(format!("topology:{guild}").into_bytes());
        async move {
            ipc.cluster_command(cluster, command)
                .await
                .unwrap()
                .decode::<Where>()
                .unwrap()
        }
    };
    let admiral = &admiral;
    let process = |id: WorkerId| async move {
        admiral
            .workers()
            .await
            .unwrap()
            .into_iter()
            .find(|w| w.id == id)
            .and_then(|w| w.process)
            .unwrap()
    };
    let plan = admiral.plan();
    let shard = ((guild >> 22) % 2) as u32;
    let owner = plan
        .clusters
        .iter()
        .find(|c| (c.first_shard..=c.last_shard).contains(&shard))
        .map(|c| c.id);
    let (s, c, count, p, generation) = ask(1).await;
    assert_eq!((s, c, count, generation), (shard, owner, 2, 0));
    assert_eq!(p, process(WorkerId::Cluster(1)).await);

    // A reshard's new generation knows the new layout and that it is one generation on.
    admiral.reshard(ShardCount::Exact(4), None).await.unwrap();
    let shard = ((guild >> 22) % 4) as u32;
    let plan = admiral.plan();
    let owner = plan
        .clusters
        .iter()
        .find(|c| (c.first_shard..=c.last_shard).contains(&shard))
        .map(|c| c.id);
    let (s, c, count, p, generation) = ask(0).await;
    assert_eq!((s, c, count, generation), (shard, owner, 2, 1));
    assert_eq!(p, process(WorkerId::Cluster(0)).await);
    admiral.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_takes_a_lock_once_lists_by_prefix_and_copies_itself() {
    use std::time::Duration;
    let mock = MockDiscord::start(mock_config(4, 2, 1)).await.unwrap();
    let (admiral, _events) = launch(fleet_tests::fleet(options(&mock, 2))).await;
    admiral.wait_ready(WAIT).await.unwrap();
    let ipc = admiral.ipc();
    // Two clusters race for one lock: exactly one takes it.
    let (a, b) = tokio::join!(
        ipc.cluster_command(0, Payload::from("lock:zero")),
        ipc.cluster_command(1, Payload::from("lock:one")),
    );
    let took: Vec<bool> = [a, b]
        .into_iter()
        .map(|r| r.unwrap().decode().unwrap())
        .collect();
    assert_eq!(took.iter().filter(|t| **t).count(), 1, "{took:?}");
    let holder = ipc.store_get("lock").await.unwrap().unwrap();
    // Released by its holder only.
    let other = if holder == Payload::from("zero") {
        "one"
    } else {
        "zero"
    };
    let wrong = Some(Payload::from(other.as_bytes().to_vec()));
    assert!(
        !ipc.store_compare_and_set("lock", wrong, None)
            .await
            .unwrap()
    );
    assert!(
        ipc.store_compare_and_set("lock", Some(holder), None)
            .await
            .unwrap()
    );
    assert!(!ipc.store_has("lock").await.unwrap());

    for key in ["user:2", "user:1", "guild:9"] {
        ipc.store_set(key, Payload::from("v")).await.unwrap();
    }
    ipc.store_set_for("session:x", Payload::from("s"), Duration::from_mins(5))
        .await
        .unwrap();
    assert_eq!(ipc.store_keys("user:").await.unwrap(), ["user:1", "user:2"]);
    let all = ipc.store_entries("").await.unwrap();
    let keys: Vec<&str> = all.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["guild:9", "session:x", "user:1", "user:2"]);
    assert_eq!(all[1].1, Payload::from("s"));
    admiral.shutdown().await;
}
