//! A real fleet: the admiral in this process, worker processes of the `testbot` binary, twilight
//! shards against discord-mock on loopback.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use carrier::admiral::{LifecycleEvent, State};
use carrier::ipc::proto::Refusal;
use carrier::{FleetEvent, IpcError, Outcome, Payload, ShardEvent, WorkerId};
use common::{WAIT, kill, launch, mock_config, options, ready_shards, signal, status, until};
use discord_mock::MockDiscord;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_and_three_clusters_answer_every_ipc_call() {
    let mock = MockDiscord::start(mock_config(24, 6, 1)).await.unwrap();
    let (admiral, mut events) = launch(fleet_tests::fleet(options(&mock, 3))).await;
    let launched = admiral.wait_ready(WAIT).await.unwrap();
    assert_eq!(
        (launched.live, launched.failed),
        (4, 1),
        "echo and three clusters live, broken failed"
    );
    let plan = admiral.plan();
    assert_eq!((plan.shard_total, plan.clusters.len()), (6, 3));

    // Lifecycle and shard events were published.
    let seen = until(&mut events, |e| {
        matches!(e, FleetEvent::Lifecycle(LifecycleEvent::AllReady { .. }))
    })
    .await;
    assert_eq!(ready_shards(&seen), (0..6).collect());
    assert!(seen.iter().any(|e| matches!(e, FleetEvent::Lifecycle(LifecycleEvent::Failed { worker: WorkerId::Service(name), reason }) if name == "broken" && reason.contains("broken on purpose"))));

    // A worker's stderr reaches the admiral, tagged with the worker.
    let failed_line = |e: &FleetEvent| {
        matches!(e, FleetEvent::Output { worker: WorkerId::Service(name), stream: carrier::admiral::OutputStream::Stderr, line, .. }
            if name == "broken" && line.contains("worker failed: broken on purpose"))
    };
    if !seen.iter().any(failed_line) {
        until(&mut events, failed_line).await;
    }

    let ipc = admiral.ipc();
    // Service commands: echo, handler error, timeout, unknown and failed services.
    assert_eq!(
        ipc.service_command("echo", Payload::from("ping"))
            .await
            .unwrap(),
        Payload::from("ping")
    );
    assert!(
        matches!(ipc.service_command("echo", Payload::from("fail")).await, Err(IpcError::Remote { message, .. }) if message == "failed on request")
    );
    let slow = ipc
        .command_within(
            carrier::Target::Service("echo".into()),
            Payload::from("sleep"),
            Duration::from_millis(400),
        )
        .await;
    assert!(matches!(slow, Err(IpcError::TargetTimedOut(_))), "{slow:?}");
    assert!(matches!(
        ipc.service_command("nope", Payload::empty()).await,
        Err(IpcError::Refused(Refusal::UnknownTarget(_)))
    ));
    assert!(matches!(
        ipc.service_command("broken", Payload::empty()).await,
        Err(IpcError::Refused(Refusal::Unavailable(_)))
    ));
    assert!(matches!(
        ipc.cluster_command(9, Payload::empty()).await,
        Err(IpcError::Refused(Refusal::UnknownTarget(_)))
    ));

    // Cluster commands: each cluster runs two shards of 4 guilds each.
    let one = status(
        &ipc.cluster_command(1, Payload::from("status"))
            .await
            .unwrap(),
    );
    assert_eq!((one.id, one.shards.clone(), one.guilds), (1, vec![2, 3], 8));
    let all = ipc
        .all_clusters_command(Payload::from("status"))
        .await
        .unwrap();
    assert_eq!(all.keys().copied().collect::<Vec<_>>(), [0, 1, 2]);
    for (id, outcome) in &all {
        let Outcome::Ok(payload) = outcome else {
            panic!("cluster {id}: {outcome:?}")
        };
        assert_eq!(status(payload).guilds, 8);
    }
    let services = ipc
        .all_services_command(Payload::from("ping"))
        .await
        .unwrap();
    assert_eq!(
        services.get("echo"),
        Some(&Outcome::Ok(Payload::from("ping")))
    );
    assert_eq!(services.get("broken"), Some(&Outcome::Unavailable));

    // Broadcast reaches every cluster (and the admiral itself); send_to reaches one.
    let (ack_tx, mut acks) = tokio::sync::mpsc::unbounded_channel();
    ipc.register("ack", move |m| {
        let _ = ack_tx.send(m.payload.decode::<u32>().unwrap());
    });
    let (self_tx, mut own) = tokio::sync::mpsc::unbounded_channel();
    ipc.register("hello", move |m| {
        let _ = self_tx.send(m.from.clone());
    });
    ipc.broadcast("hello", Payload::empty()).await.unwrap();
    let mut acked = BTreeSet::new();
    while acked.len() < 3 {
        acked.insert(
            tokio::time::timeout(WAIT, acks.recv())
                .await
                .unwrap()
                .unwrap(),
        );
    }
    assert_eq!(acked, BTreeSet::from([0, 1, 2]));
    assert_eq!(
        tokio::time::timeout(WAIT, own.recv()).await.unwrap(),
        Some(carrier::Target::Admiral)
    );
    ipc.send_to_cluster(2, "hello", Payload::empty())
        .await
        .unwrap();
    assert_eq!(
        tokio::time::timeout(WAIT, acks.recv()).await.unwrap(),
        Some(2)
    );
    assert!(matches!(
        ipc.send_to_cluster(7, "hello", Payload::empty()).await,
        Err(IpcError::Refused(Refusal::UnknownTarget(_)))
    ));
    assert_eq!(ipc.unregister("ack"), 1);

    // The central store, seen from the admiral and from a cluster.
    ipc.store_set("answer", Payload::from("42")).await.unwrap();
    assert!(ipc.store_has("answer").await.unwrap());
    assert_eq!(
        ipc.cluster_command(0, Payload::from("store-get:answer"))
            .await
            .unwrap(),
        Payload::from("42")
    );
    assert!(ipc.store_delete("answer").await.unwrap());
    assert!(!ipc.store_delete("answer").await.unwrap());
    ipc.store_set("a", Payload::from("1")).await.unwrap();
    ipc.store_clear().await.unwrap();
    assert_eq!(ipc.store_get("a").await.unwrap(), None);

    // Worker logs reach the admiral tagged with the worker.
    ipc.cluster_command(2, Payload::from("log:hello from a cluster"))
        .await
        .unwrap();
    until(&mut events, |e| matches!(e, FleetEvent::Log { worker: WorkerId::Cluster(2), record, process, at } if record.message == "hello from a cluster" && *process > 0 && *at <= std::time::SystemTime::now())).await;

    // Discord's rules held: one identify per shard, no violation.
    let stats = mock.stats();
    assert_eq!(stats.identifies, 6);
    assert_eq!(stats.total_violations(), 0, "{:?}", stats.violations);

    admiral.shutdown().await;
    for worker in admiral.workers().await.unwrap_or_default() {
        assert!(worker.state.is_terminal(), "{worker:?}");
    }
    mock.wait_until(WAIT, "every session closed", |m| {
        m.stats().open_connections == 0
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_cluster_answers_unavailable_and_nothing_hangs() {
    let mock = MockDiscord::start(mock_config(12, 3, 1)).await.unwrap();
    let (admiral, mut events) = launch(fleet_tests::fleet(options(&mock, 3))).await;
    admiral.wait_ready(WAIT).await.unwrap();
    let ipc = admiral.ipc().clone();

    // A command in flight to a cluster that dies fails at once, not at its timeout.
    let (sleeping_tx, mut sleeping) = tokio::sync::mpsc::unbounded_channel();
    ipc.register("sleeping", move |m| {
        let _ = sleeping_tx.send(m.payload.decode::<u32>().unwrap());
    });
    let pending = tokio::spawn({
        let ipc = ipc.clone();
        async move {
            let started = tokio::time::Instant::now();
            let result = ipc
                .command_within(
                    carrier::Target::Cluster(1),
                    Payload::from("sleep"),
                    Duration::from_secs(30),
                )
                .await;
            (result, started.elapsed())
        }
    });
    assert_eq!(
        tokio::time::timeout(WAIT, sleeping.recv()).await.unwrap(),
        Some(1)
    );
    kill(&admiral, &WorkerId::Cluster(1)).await;
    let (result, took) = pending.await.unwrap();
    assert!(
        matches!(result, Err(IpcError::Refused(Refusal::Unavailable(_)))),
        "{result:?}"
    );
    assert!(
        took < Duration::from_secs(20),
        "failed at once, not at the timeout: {took:?}"
    );
    until(&mut events, |e| {
        matches!(
            e,
            FleetEvent::Lifecycle(LifecycleEvent::Failed {
                worker: WorkerId::Cluster(1),
                ..
            })
        )
    })
    .await;

    let all = ipc
        .all_clusters_command(Payload::from("status"))
        .await
        .unwrap();
    assert!(matches!(all[&0], Outcome::Ok(_)));
    assert_eq!(all[&1], Outcome::Unavailable);
    assert!(matches!(all[&2], Outcome::Ok(_)));
    assert!(matches!(
        ipc.cluster_command(1, Payload::empty()).await,
        Err(IpcError::Refused(Refusal::Unavailable(_)))
    ));

    admiral.shutdown().await;
    let workers = admiral.workers().await.unwrap_or_default();
    assert!(workers.iter().all(|w| w.state.is_terminal()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_frame_disconnects_only_its_sender() {
    let mock = MockDiscord::start(mock_config(4, 1, 1)).await.unwrap();
    let fleet = fleet_tests::fleet(options(&mock, 1)).service::<fleet_tests::Echo>("rogue");
    let (admiral, mut events) = launch(fleet).await;
    let seen = until(&mut events, |e| {
        matches!(e, FleetEvent::ProtocolError { .. })
    })
    .await;
    let error = seen.iter().find_map(|e| match e {
        FleetEvent::ProtocolError { worker, error } => Some((worker.clone(), error.clone())),
        _ => None,
    });
    let (worker, error) = error.unwrap();
    assert_eq!(worker, Some(WorkerId::Service("rogue".into())));
    assert!(error.contains("malformed frame"), "{error}");
    until(&mut events, |e| matches!(e, FleetEvent::Exited { worker: WorkerId::Service(name), code: Some(7), .. } if name == "rogue")).await;

    let launched = admiral.wait_ready(WAIT).await.unwrap();
    assert_eq!(
        (launched.live, launched.failed),
        (2, 2),
        "echo and the cluster live; broken and rogue failed"
    );
    assert_eq!(
        admiral
            .ipc()
            .service_command("echo", Payload::from("still here"))
            .await
            .unwrap(),
        Payload::from("still here")
    );
    let workers = admiral.workers().await.unwrap();
    let rogue = workers
        .iter()
        .find(|w| w.id == WorkerId::Service("rogue".into()))
        .unwrap();
    assert!(matches!(rogue.state, State::Failed(_)));
    admiral.shutdown().await;
}

/// Whether a process is still running (zombies, awaiting their parent, count as gone).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        let state = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .chars()
            .next();
        state != Some('Z')
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_never_see_the_token_in_argv_or_env_and_exit_when_the_admiral_dies() {
    let mock = MockDiscord::start(mock_config(8, 2, 1)).await.unwrap();
    let (admiral, _events) = launch(fleet_tests::fleet(options(&mock, 2))).await;
    admiral.wait_ready(WAIT).await.unwrap();
    let running: Vec<u32> = admiral
        .workers()
        .await
        .unwrap()
        .iter()
        .filter(|w| w.state == State::Live)
        .filter_map(|w| w.pid)
        .collect();
    assert_eq!(running.len(), 3, "echo and two clusters");
    assert!(running.iter().all(|p| alive(*p)));
    for pid in &running {
        for file in ["cmdline", "environ"] {
            let bytes = std::fs::read(format!("/proc/{pid}/{file}")).unwrap();
            let text = String::from_utf8_lossy(&bytes);
            assert!(
                !text.contains("mock-token"),
                "the token is in /proc/{pid}/{file}"
            );
        }
    }

    // The admiral vanishes without a word: every worker notices and exits by itself.
    admiral.abort();
    let deadline = tokio::time::Instant::now() + WAIT;
    while running.iter().any(|p| alive(*p)) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "workers outlived their admiral"
        );
        // Waiting on other processes' exits has no event to await here; poll /proc.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    mock.wait_until(WAIT, "every session closed", |m| {
        m.stats().open_connections == 0
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identifies_keep_discords_pace_at_max_concurrency_4() {
    let mock = MockDiscord::start(mock_config(32, 8, 4)).await.unwrap();
    let (admiral, _events) = launch(fleet_tests::fleet(options(&mock, 2))).await;
    let launched = admiral.wait_ready(WAIT).await.unwrap();
    assert_eq!(launched.live, 3);
    let stats = mock.stats();
    assert_eq!(stats.identifies, 8);
    assert_eq!(stats.total_violations(), 0, "{:?}", stats.violations);
    admiral.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serenity_clusters_obey_the_identify_queue_and_their_handlers_fire() {
    let mock = MockDiscord::start(mock_config(16, 4, 1)).await.unwrap();
    let mut options = options(&mock, 2);
    if let Some(command) = options.worker_command.as_mut() {
        command
            .env
            .push((fleet_tests::LIB_ENV.into(), "serenity".into()));
    }
    let (admiral, mut events) = launch(fleet_tests::serenity_fleet(options)).await;
    let launched = admiral.wait_ready(WAIT).await.unwrap();
    assert_eq!(
        (launched.live, launched.failed),
        (3, 1),
        "echo and two serenity clusters live"
    );
    let seen = until(&mut events, |e| {
        matches!(e, FleetEvent::Lifecycle(LifecycleEvent::AllReady { .. }))
    })
    .await;
    let ready = ready_shards(&seen);
    assert_eq!(ready, (0..4).collect());
    // Every identify went through the fleet's queue: one per shard, none early.
    let stats = mock.stats();
    assert_eq!(stats.identifies, 4);
    assert_eq!(stats.total_violations(), 0, "{:?}", stats.violations);

    // serenity's own handlers fire: guilds cached and events handled. Clusters report cumulative
    // counts as they change; one status query covers what happened before we listened.
    let ipc = admiral.ipc();
    let (counted_tx, mut counted) = tokio::sync::mpsc::unbounded_channel();
    ipc.register("counted", move |m| {
        let _ = counted_tx.send(m.payload.decode::<(u32, u64, u64)>().unwrap());
    });
    let mut totals: std::collections::BTreeMap<u32, (u64, u64)> = std::collections::BTreeMap::new();
    for (id, outcome) in ipc
        .all_clusters_command(Payload::from("status"))
        .await
        .unwrap()
    {
        let Outcome::Ok(payload) = outcome else {
            panic!("{outcome:?}")
        };
        let report = status(&payload);
        totals.insert(id, (report.guilds, report.events));
    }
    let sum = |totals: &std::collections::BTreeMap<u32, (u64, u64)>| {
        totals
            .values()
            .fold((0, 0), |(g, e), (tg, te)| (g + tg, e + te))
    };
    let mut wait_for =
        async |want: (u64, u64), totals: &mut std::collections::BTreeMap<u32, (u64, u64)>| {
            while sum(totals) != want {
                let (id, guilds, events) = tokio::time::timeout(WAIT, counted.recv())
                    .await
                    .expect("handlers fire")
                    .unwrap();
                let entry = totals.entry(id).or_default();
                *entry = (entry.0.max(guilds), entry.1.max(events));
            }
        };
    wait_for((16, 0), &mut totals).await;
    for guild in 0..4 {
        mock.produce_event(guild);
    }
    wait_for((16, 4), &mut totals).await;
    admiral.shutdown().await;
    mock.wait_until(WAIT, "every session closed", |m| {
        m.stats().open_connections == 0
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_crash_resume_a_killed_cluster_is_restarted_and_identifies_its_shard_again() {
    let mock = MockDiscord::start(mock_config(12, 3, 1)).await.unwrap();
    let mut options = options(&mock, 3);
    options.max_restarts = 3;
    options.restart_backoff = Duration::from_millis(100);
    // No checkpoints: the replacement starts afresh, its cache filled by a new READY.
    options.checkpoint_interval = Duration::ZERO;
    let (admiral, mut events) = launch(fleet_tests::fleet(options)).await;
    admiral.wait_ready(WAIT).await.unwrap();
    until(&mut events, |e| {
        matches!(e, FleetEvent::Lifecycle(LifecycleEvent::AllReady { .. }))
    })
    .await;
    kill(&admiral, &WorkerId::Cluster(1)).await;
    let seen = until(&mut events, |e| {
        matches!(
            e,
            FleetEvent::Lifecycle(LifecycleEvent::Ready(WorkerId::Cluster(1)))
        )
    })
    .await;
    assert!(seen.iter().any(|e| matches!(
        e,
        FleetEvent::Lifecycle(LifecycleEvent::Restarting {
            worker: WorkerId::Cluster(1),
            attempt: 1,
            ..
        })
    )));
    assert!(seen.iter().any(|e| matches!(
        e,
        FleetEvent::Shard {
            cluster: 1,
            shard: 1,
            event: ShardEvent::Ready,
            generation: 0,
            ..
        }
    )));
    let back = status(
        &admiral
            .ipc()
            .cluster_command(1, Payload::from("status"))
            .await
            .unwrap(),
    );
    assert_eq!((back.shards, back.guilds), (vec![1], 4));
    // The replacement identified once more, through the queue.
    let stats = mock.stats();
    assert_eq!(stats.identifies, 4);
    assert_eq!(stats.total_violations(), 0, "{:?}", stats.violations);
    admiral.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_on_the_admiral_shuts_the_fleet_down_and_leaves_no_process() {
    let mock = MockDiscord::start(mock_config(8, 2, 1)).await.unwrap();
    let (mut admiral, ready, mut lines) = common::spawn_admiral(&mock, 2, None).await;
    let workers: Vec<u32> = ready
        .strip_prefix("ready ")
        .expect("a ready line")
        .split(' ')
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(workers.len(), 3, "echo and two clusters");
    assert!(workers.iter().all(|p| alive(*p)));

    let pid = admiral.id().unwrap().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
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
        "no worker outlives a graceful shutdown"
    );
    // Clusters closed their sessions (1000), so Discord sees them go.
    mock.wait_until(WAIT, "every session ended", |m| {
        m.sessions().is_empty() && m.stats().open_connections == 0
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_cluster_misses_heartbeats_and_is_killed_and_restarted() {
    let mock = MockDiscord::start(mock_config(4, 2, 1)).await.unwrap();
    let mut options = options(&mock, 2);
    options.max_restarts = 1;
    options.restart_backoff = Duration::from_millis(100);
    options.heartbeat_interval = Duration::from_millis(100);
    options.heartbeat_timeout = Duration::from_secs(1);
    let (admiral, mut events) = launch(fleet_tests::fleet(options)).await;
    admiral.wait_ready(WAIT).await.unwrap();
    let hung = WorkerId::Cluster(0);
    let before = admiral.workers().await.unwrap();
    let old = before.iter().find(|w| w.id == hung).unwrap().process;

    // Stopped, not dead: its socket stays open, it just answers nothing.
    signal(&admiral, &hung, "-STOP").await;
    let seen = until(&mut events, |e| {
        matches!(e, FleetEvent::Unresponsive { .. })
    })
    .await;
    let Some(FleetEvent::Unresponsive {
        worker,
        process,
        silent_for,
    }) = seen.last()
    else {
        unreachable!()
    };
    assert_eq!((worker, *process), (&hung, old.unwrap()));
    assert!(*silent_for > Duration::from_secs(1), "{silent_for:?}");
    // Serving again: its replacement's shards are ready and the worker is live.
    let seen = until(
        &mut events,
        |e| matches!(e, FleetEvent::Lifecycle(LifecycleEvent::Ready(w)) if *w == hung),
    )
    .await;
    assert!(
        seen.iter()
            .any(|e| matches!(e, FleetEvent::Exited { worker, code: None, .. } if *worker == hung)),
        "killed by a signal: {seen:#?}"
    );
    assert!(seen.iter().any(|e| matches!(
        e,
        FleetEvent::Lifecycle(LifecycleEvent::Restarting { worker, .. }) if *worker == hung
    )));
    let answer = admiral
        .ipc()
        .cluster_command(0, Payload::from("status"))
        .await
        .unwrap();
    assert_eq!(status(&answer).id, 0);
    let after = admiral.workers().await.unwrap();
    let new = after.iter().find(|w| w.id == hung).unwrap();
    assert_eq!(new.state, State::Live);
    assert_ne!(new.process, old, "a new process serves it");
    // The other cluster never missed a beat.
    assert!(
        !seen
            .iter()
            .any(|e| matches!(e, FleetEvent::Unresponsive { .. }))
    );
    admiral.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replacement_of_another_ipc_protocol_is_refused_and_the_old_process_serves_on() {
    let mock = MockDiscord::start(mock_config(4, 1, 1)).await.unwrap();
    let old_build = std::env::temp_dir().join(format!(
        "fleet-old-build-{}-{}",
        std::process::id(),
        fastrand::u64(..)
    ));
    let mut options = options(&mock, 1);
    if let Some(command) = options.worker_command.as_mut() {
        command
            .env
            .push(("TESTBOT_OLD_BUILD".into(), old_build.clone().into()));
    }
    options.build = "testbot new".into();
    let (admiral, _) = launch(fleet_tests::fleet(options)).await;
    admiral.wait_ready(WAIT).await.unwrap();
    let cluster = WorkerId::Cluster(0);
    let before = admiral.workers().await.unwrap();
    let process = |workers: &[carrier::admiral::WorkerStatus]| {
        workers.iter().find(|w| w.id == cluster).unwrap().process
    };
    // From now on, new worker processes are an old build.
    std::fs::write(&old_build, b"").unwrap();
    let mut events = admiral.events();
    let refused = admiral
        .restart(&cluster, carrier::admiral::RestartMode::Handover)
        .await
        .unwrap_err();
    assert!(
        matches!(refused, IpcError::Refused(Refusal::RestartFailed(_))),
        "{refused}"
    );
    let seen = until(&mut events, |e| {
        matches!(e, FleetEvent::ProtocolError { .. })
    })
    .await;
    let Some(FleetEvent::ProtocolError { error, .. }) = seen.last() else {
        unreachable!()
    };
    assert!(
        error.contains("protocol 0")
            && error.contains(&carrier::ipc::proto::PROTOCOL_VERSION.to_string())
            && error.contains("testbot old")
            && error.contains("testbot new"),
        "{error}"
    );
    println!("refused: {error}");
    // The old process still serves, and a compatible build restarts fine.
    let answer = admiral
        .ipc()
        .cluster_command(0, Payload::from("status"))
        .await
        .unwrap();
    assert_eq!(status(&answer).shards, vec![0]);
    assert_eq!(process(&admiral.workers().await.unwrap()), process(&before));
    std::fs::remove_file(&old_build).unwrap();
    admiral
        .restart(&cluster, carrier::admiral::RestartMode::Handover)
        .await
        .unwrap();
    assert_ne!(process(&admiral.workers().await.unwrap()), process(&before));
    admiral.shutdown().await;
}
