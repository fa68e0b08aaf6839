//! Management calls from any worker and the admiral: the list of workers, a worker stopped
//! gracefully or killed at once, a total shutdown asked for by a worker, and the admiral's
//! events heard by subscribed workers.

mod common;

use carrier::admiral::State;
use carrier::admiral::plan::ShardCount;
use carrier::ipc::proto::WorkerInfo;
use carrier::{
    AdmiralEvent, FleetEvent, Payload, RestartMode, ShardEvent, Target, Topic, WorkerId,
};
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

/// What the echo service heard of the admiral's events since it started.
async fn heard_by_echo(ipc: &carrier::Ipc) -> Vec<AdmiralEvent> {
    ipc.service_command("echo", Payload::from("admiral-events"))
        .await
        .unwrap()
        .decode()
        .unwrap()
}

/// Waits on a subscription for an event `done` accepts.
async fn hear(events: &mut carrier::AdmiralEvents, done: impl Fn(&AdmiralEvent) -> bool) {
    let waited = tokio::time::timeout(WAIT, async {
        loop {
            if let Ok(event) = events.recv().await
                && done(&event)
            {
                return;
            }
        }
    })
    .await;
    assert!(waited.is_ok(), "no such admiral event within {WAIT:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_hear_the_admirals_events_and_tell_old_processes_and_generations_apart() {
    let mock = MockDiscord::start(mock_config(8, 2, 1)).await.unwrap();
    let (admiral, _events) = launch(fleet_tests::fleet(options(&mock, 2))).await;
    admiral.wait_ready(WAIT).await.unwrap();
    let ipc = admiral.ipc();
    let process_of = |workers: &[carrier::admiral::WorkerStatus], id: u32| {
        workers
            .iter()
            .find(|w| w.id == WorkerId::Cluster(id))
            .and_then(|w| w.process)
            .unwrap()
    };
    let workers = admiral.workers().await.unwrap();
    let (first0, first1) = (process_of(&workers, 0), process_of(&workers, 1));

    // Subscribed late, the admiral's handle and a cluster both hear the launch's outcome first:
    // echo and two clusters live, `broken` failed.
    let mut mine = ipc
        .subscribe(&[Topic::Lifecycle, Topic::Shards])
        .await
        .unwrap();
    let launched = AdmiralEvent::AllReady { live: 3, failed: 1 };
    assert_eq!(*mine.try_recv().unwrap().unwrap(), launched);
    let late: AdmiralEvent = ipc
        .cluster_command(1, Payload::from("late-subscribe"))
        .await
        .unwrap()
        .decode()
        .unwrap();
    assert_eq!(late, launched);

    // The echo service subscribed before the clusters started (services start together, so it
    // may or may not have heard `broken` fail): it heard every cluster's steps.
    let heard = heard_by_echo(ipc).await;
    for (cluster, process) in [(0, first0), (1, first1)] {
        assert!(
            heard.contains(&AdmiralEvent::WorkerReady {
                worker: Target::Cluster(cluster),
                process: Some(process),
            }),
            "{heard:?}"
        );
        assert!(
            heard.contains(&AdmiralEvent::Shard {
                cluster,
                shard: cluster,
                process,
                generation: 0,
                event: ShardEvent::Ready,
            }),
            "{heard:?}"
        );
    }
    assert_eq!(heard.last(), Some(&launched), "{heard:?}");

    // A handover: the replacement's shard resumes under its own process, then the old process
    // is told apart and goes.
    admiral
        .restart(&WorkerId::Cluster(0), RestartMode::Handover)
        .await
        .unwrap();
    hear(
        &mut mine,
        |e| matches!(e, AdmiralEvent::WorkerExited { process, .. } if *process == first0),
    )
    .await;
    let second0 = process_of(&admiral.workers().await.unwrap(), 0);
    assert_ne!(second0, first0);
    let heard = heard_by_echo(ipc).await;
    let after: Vec<_> = heard
        .iter()
        .skip_while(|e| !matches!(e, AdmiralEvent::RestartPending { .. }))
        .collect();
    assert_eq!(
        after.first(),
        Some(&&AdmiralEvent::RestartPending {
            worker: Target::Cluster(0),
            mode: RestartMode::Handover,
        }),
        "{heard:?}"
    );
    for wanted in [
        AdmiralEvent::Shard {
            cluster: 0,
            shard: 0,
            process: second0,
            generation: 0,
            event: ShardEvent::Resumed,
        },
        AdmiralEvent::Restarted {
            worker: Target::Cluster(0),
            old: first0,
            new: second0,
        },
        AdmiralEvent::WorkerExited {
            worker: Target::Cluster(0),
            process: first0,
            code: Some(0),
        },
    ] {
        assert!(after.contains(&&wanted), "{wanted:?} not in {after:?}");
    }

    // A reshard: the new generation's shards are generation 1, and the switch is announced.
    admiral
        .reshard(ShardCount::Exact(4), Some(2))
        .await
        .unwrap();
    hear(&mut mine, |e| matches!(e, AdmiralEvent::Resharded { .. })).await;
    let heard = heard_by_echo(ipc).await;
    assert!(
        heard.contains(&AdmiralEvent::Resharded {
            generation: 1,
            shard_total: 4,
            clusters: 2,
        }),
        "{heard:?}"
    );
    let new_ready: std::collections::BTreeSet<u32> = heard
        .iter()
        .filter_map(|e| match e {
            AdmiralEvent::Shard {
                shard,
                generation: 1,
                event: ShardEvent::Ready,
                ..
            } => Some(*shard),
            _ => None,
        })
        .collect();
    assert_eq!(new_ready, (0..4).collect());
    assert!(heard.contains(&AdmiralEvent::ReshardProgress { ready: 2, total: 2 }));
    admiral.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_created_at_runtime_is_routed_supervised_and_shut_down_like_the_others() {
    let mock = MockDiscord::start(mock_config(4, 1, 1)).await.unwrap();
    let mut options = options(&mock, 1);
    options.max_restarts = 1;
    options.restart_backoff = std::time::Duration::from_millis(50);
    let (admiral, _events) = launch(fleet_tests::fleet(options)).await;
    admiral.wait_ready(WAIT).await.unwrap();
    let ipc = admiral.ipc();
    let create = |what: &str| {
        ipc.cluster_command(
            0,
            Payload::from(format!("create-service:{what}").into_bytes()),
        )
    };

    // From a cluster: a second echo, after the first; it answers at once.
    assert_eq!(
        create("echo-2:echo:echo").await.unwrap().as_bytes(),
        b"created"
    );
    let answer = ipc
        .service_command("echo-2", Payload::from("hi"))
        .await
        .unwrap();
    assert_eq!(answer.as_bytes(), b"hi");
    let listed = ipc.workers().await.unwrap();
    let info = listed
        .iter()
        .find(|w| w.worker == Target::Service("echo-2".into()))
        .expect("listed");
    assert_eq!(info.state, "live");

    // Refused, each with why, and nothing started for them.
    for (what, why) in [
        ("echo:echo", "already exists"),
        (
            "echo-3:nothing",
            "no service type is registered as \"nothing\"",
        ),
        ("bad name!:echo", "is not a service name"),
        ("echo-4:echo:ghost", "\"ghost\", which does not exist"),
        ("doomed:echo:broken", "\"broken\", which is not running"),
    ] {
        let error = create(what).await.unwrap_err().to_string();
        assert!(error.contains(why), "{what}: {error}");
    }
    // Its own start timeout: a service that never gets ready is failed after it.
    let error = admiral
        .create_service(
            "stuck",
            "sluggish",
            carrier::ServiceOptions::new().start_timeout(std::time::Duration::from_millis(300)),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("not ready within 300ms"), "{error}");

    // Supervised: killed, it is restarted like any service, and serves again.
    let mut events = admiral.events();
    common::kill(&admiral, &WorkerId::Service("echo-2".into())).await;
    until(&mut events, |e| {
        matches!(
            e,
            FleetEvent::Lifecycle(carrier::admiral::LifecycleEvent::Restarting { worker: WorkerId::Service(name), .. })
                if name == "echo-2"
        )
    })
    .await;
    until(&mut events, |e| {
        matches!(
            e,
            FleetEvent::Lifecycle(carrier::admiral::LifecycleEvent::Ready(WorkerId::Service(name)))
                if name == "echo-2"
        )
    })
    .await;
    let answer = ipc
        .service_command("echo-2", Payload::from("again"))
        .await
        .unwrap();
    assert_eq!(answer.as_bytes(), b"again");

    // Shut down with the rest: it stops before `echo`, which it depends on.
    let mut stopped = admiral.events();
    admiral.shutdown().await;
    let mut order = Vec::new();
    while let Ok(event) = stopped.try_recv() {
        if let FleetEvent::Lifecycle(carrier::admiral::LifecycleEvent::WorkerStopped(
            WorkerId::Service(name),
        )) = event
        {
            order.push(name);
        }
    }
    let position = |name: &str| order.iter().position(|n| n == name);
    assert!(
        position("echo-2").unwrap() < position("echo").unwrap(),
        "{order:?}"
    );
}

#[tokio::test]
async fn services_that_depend_on_unknown_services_or_on_themselves_are_refused_at_launch() {
    let mock = MockDiscord::start(mock_config(1, 1, 1)).await.unwrap();
    let unknown = fleet_tests::fleet(options(&mock, 1)).service_with::<fleet_tests::Echo>(
        "after",
        carrier::ServiceOptions::new().depends_on("ghost"),
    );
    let error = unknown.run().await.unwrap_err().to_string();
    assert!(
        error.contains("\"ghost\", which is not declared"),
        "{error}"
    );
    let circle = fleet_tests::fleet(options(&mock, 1))
        .service_with::<fleet_tests::Echo>("a", carrier::ServiceOptions::new().depends_on("b"))
        .service_with::<fleet_tests::Echo>("b", carrier::ServiceOptions::new().depends_on("a"));
    let error = circle.run().await.unwrap_err().to_string();
    assert!(error.contains("depends on itself"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_fan_out_hands_over_each_answer_as_it_arrives() {
    let mock = MockDiscord::start(mock_config(6, 3, 1)).await.unwrap();
    let (admiral, _events) = launch(fleet_tests::fleet(options(&mock, 3))).await;
    admiral.wait_ready(WAIT).await.unwrap();
    let ipc = admiral.ipc();
    let mut answers = ipc
        .command_all_streamed(
            carrier::Group::Clusters,
            Payload::from("hold-on:1"),
            std::time::Duration::from_secs(20),
        )
        .await
        .unwrap();
    assert_eq!(answers.targets().len(), 3);
    // Clusters 0 and 2 answer while cluster 1 still holds its answer back.
    let mut quick = Vec::new();
    for _ in 0..2 {
        let (target, outcome) = tokio::time::timeout(WAIT, answers.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(outcome, carrier::Outcome::Ok(Payload::from("quick")));
        quick.push(target);
    }
    quick.sort();
    assert_eq!(quick, [Target::Cluster(0), Target::Cluster(2)]);
    assert_eq!(answers.waiting(), 1);
    ipc.send_to_cluster(1, "release", Payload::empty())
        .await
        .unwrap();
    let last = tokio::time::timeout(WAIT, answers.next()).await.unwrap();
    assert_eq!(
        last,
        Some((
            Target::Cluster(1),
            carrier::Outcome::Ok(Payload::from("released"))
        ))
    );
    assert_eq!(answers.next().await, None);

    // With a short deadline: a target that does not answer in time is timed out, and the rest
    // still arrive.
    let mut answers = ipc
        .command_all_streamed(
            carrier::Group::Clusters,
            Payload::from("hold-on:2"),
            std::time::Duration::from_millis(500),
        )
        .await
        .unwrap();
    let mut outcomes = std::collections::BTreeMap::new();
    while let Some((target, outcome)) = answers.next().await {
        outcomes.insert(target, outcome);
    }
    assert_eq!(outcomes[&Target::Cluster(2)], carrier::Outcome::TimedOut);
    assert_eq!(
        outcomes[&Target::Cluster(0)],
        carrier::Outcome::Ok(Payload::from("quick"))
    );
    ipc.send_to_cluster(2, "release", Payload::empty())
        .await
        .unwrap();
    admiral.shutdown().await;
}
