//! Requested restarts with real cluster processes against discord-mock, its event source on.

mod common;

use std::time::{Duration, Instant};

use carrier::admiral::{LifecycleEvent, RestartMode, ShardCount, State};
use carrier::ipc::proto::Refusal;
use carrier::{AdmiralHandle, Fleet, FleetEvent, FleetOptions, IpcError, Payload, WorkerId};
use common::{WAIT, launch, mock_config, options, settle, status, until};
use discord_mock::MockDiscord;

/// Asks every cluster of the current plan for its status; each runs exactly its planned shards.
async fn clusters_serve_the_plan(admiral: &AdmiralHandle) -> Vec<fleet_tests::ClusterStatus> {
    let mut statuses = Vec::new();
    for cluster in &admiral.plan().clusters {
        let ask = Payload::from("status");
        let answer = admiral
            .ipc()
            .cluster_command(cluster.id, ask)
            .await
            .unwrap();
        let report = status(&answer);
        let planned: Vec<u32> = (cluster.first_shard..=cluster.last_shard).collect();
        assert_eq!(report.shards, planned, "cluster {}", cluster.id);
        statuses.push(report);
    }
    statuses
}

/// Starts the mock's events, then reshards to `shards` shards; the mock's figures before.
async fn reshard_while_events_flow(
    admiral: &AdmiralHandle,
    mock: &MockDiscord,
    shards: u32,
) -> discord_mock::Stats {
    mock.start_events(Some(20.0)).unwrap();
    let before = mock.stats();
    let total = ShardCount::Exact(shards);
    admiral
        .reshard(total, None)
        .await
        .expect("the reshard completes");
    before
}

/// After a reshard to `shards` shards: every event confirmed, none lost, one identify per new
/// shard since `before`, no protocol violation.
async fn settle_reshard(mock: &MockDiscord, before: &discord_mock::Stats, shards: u64) {
    let report = settle(mock).await;
    let after = mock.stats();
    let identifies = after.identifies - before.identifies;
    assert_eq!(identifies, shards, "one identify per new shard");
    assert_eq!(report.lost, 0, "{report:?}");
    assert_eq!(after.total_violations(), 0, "{:?}", after.violations);
}

/// Waits until `n` more events than now have been delivered.
async fn more_events_delivered(mock: &MockDiscord, n: u64) {
    let now = mock.event_report().delivered;
    mock.wait_until(WAIT, "more events delivered", |m| {
        m.event_report().delivered >= now + n
    })
    .await
    .unwrap();
}

async fn process_of(admiral: &AdmiralHandle, worker: &WorkerId) -> (Option<u64>, State) {
    let workers = admiral.workers().await.unwrap();
    let w = workers.iter().find(|w| &w.id == worker).unwrap();
    (w.process, w.state.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handover_restart_resumes_every_session_loses_no_event_and_keeps_the_cache() {
    handover_restart(
        fleet_tests::fleet,
        Checks {
            cache_kept: true,
            user_code: true,
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handover_restart_on_raw_websockets_resumes_every_session_and_loses_no_event() {
    handover_restart(
        fleet_tests::raw::raw_fleet,
        Checks {
            cache_kept: false,
            user_code: false,
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_serenity_handover_restart_resumes_every_session_loses_no_event_and_keeps_the_cache() {
    handover_restart(
        fleet_tests::serenity_fleet,
        Checks {
            cache_kept: true,
            user_code: true,
        },
    )
    .await;
}

/// What a handover test can check of an adapter.
struct Checks {
    /// The adapter hands its cache over too, so the replacement answers lookups at once (both
    /// libraries' adapters do; the raw one keeps no cache).
    cache_kept: bool,
    /// Its user code reports each message it handles (the raw adapter has none).
    user_code: bool,
}

/// A handover restart of cluster 0 while events flow.
async fn handover_restart(fleet: fn(FleetOptions) -> Fleet, checks: Checks) {
    let mock = MockDiscord::start(mock_config(8, 4, 4)).await.unwrap();
    let (admiral, mut events) = launch(fleet(options(&mock, 2))).await;
    admiral.wait_ready(WAIT).await.unwrap();
    let cluster = WorkerId::Cluster(0);
    let (old, _) = process_of(&admiral, &cluster).await;
    // Every message user code handles, by which process.
    let handled = common::HandledLog::start(&admiral).await;
    mock.start_events(Some(20.0)).unwrap();
    let before = mock.stats();
    // Events flow before the handover and go on flowing after it.
    mock.wait_until(WAIT, "events delivered", |m| m.event_report().delivered > 0)
        .await
        .unwrap();

    admiral
        .restart(&cluster, RestartMode::Handover)
        .await
        .expect("the restart completes");
    more_events_delivered(&mock, 3).await;

    let (new, state) = process_of(&admiral, &cluster).await;
    assert_ne!(new, old);
    assert_eq!(state, State::Live);
    let answer = admiral
        .ipc()
        .cluster_command(0, Payload::from("status"))
        .await
        .unwrap();
    assert_eq!(status(&answer).shards, vec![0, 1]);
    // The replacement's cache holds the guilds of its shards.
    if checks.cache_kept {
        let guild = mock
            .guild_ids()
            .into_iter()
            .find(|id| (id >> 22) % 4 < 2)
            .expect("a guild of cluster 0");
        let found: Option<serde_json::Value> = admiral.ipc().fetch_guild(guild).await.unwrap();
        let found = found.expect("the guild is in cluster 0's cache after the handover");
        assert_eq!(found["id"], guild.to_string());
        // Its channels and members too (the channel lookup asks every cluster; cluster 1 never
        // had this guild's channels).
        let fixture = mock.guild(guild).expect("a mock guild");
        let ipc = admiral.ipc();
        let channel: Option<serde_json::Value> =
            ipc.fetch_channel(fixture.channels[0]).await.unwrap();
        assert!(channel.is_some(), "channel {} cached", fixture.channels[0]);
        let member: Option<serde_json::Value> =
            ipc.fetch_member(guild, fixture.members[1]).await.unwrap();
        let member = member.expect("a member cached");
        assert_eq!(member["user"]["id"], fixture.members[1].to_string());
    }
    let report = settle(&mock).await;
    let after = mock.stats();
    assert_eq!(after.identifies, before.identifies, "no identify spent");
    assert_eq!(after.resumes - before.resumes, 2, "both shards resumed");
    assert!(report.produced > 0);
    assert_eq!(report.lost, 0, "{report:?}");
    assert_eq!(report.duplicates, 0, "{report:?}");
    assert_eq!(mock.stats().total_violations(), 0);
    let seen = until(&mut events, |e| {
        matches!(e, FleetEvent::Lifecycle(LifecycleEvent::Replaced { .. }))
    })
    .await;
    assert!(seen.iter().any(|e| matches!(
        e,
        FleetEvent::Lifecycle(LifecycleEvent::RestartPending {
            mode: RestartMode::Handover,
            ..
        })
    )));
    if !checks.user_code {
        admiral.shutdown().await;
        return;
    }
    // User code handled each message once (its reports trail the restart: they are waited for).
    assert!(
        handled.all_handled(&mock).await,
        "a message reached no user code"
    );
    let handled = handled.entries();
    let mut ids: Vec<u64> = handled.iter().map(|(_, id, _)| *id).collect();
    let total = ids.len();
    ids.sort_unstable();
    ids.dedup();
    let processes: std::collections::BTreeSet<u64> = handled.iter().map(|(n, _, _)| *n).collect();
    assert_eq!(total, ids.len(), "a message was handled twice");
    println!(
        "handover: {total} messages handled by {} processes",
        processes.len()
    );
    admiral.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlap_and_hard_restarts_identify_anew() {
    let mock = MockDiscord::start(mock_config(4, 2, 2)).await.unwrap();
    let (admiral, _events) = launch(fleet_tests::serenity_fleet(options(&mock, 2))).await;
    admiral.wait_ready(WAIT).await.unwrap();
    let cluster = WorkerId::Cluster(1);
    let (old, _) = process_of(&admiral, &cluster).await;

    let before = mock.stats().identifies;
    admiral
        .restart(&cluster, RestartMode::Overlap)
        .await
        .unwrap();
    let (overlapped, state) = process_of(&admiral, &cluster).await;
    assert_ne!(overlapped, old);
    assert_eq!(state, State::Live);
    assert_eq!(mock.stats().identifies - before, 1, "one fresh session");

    admiral.restart(&cluster, RestartMode::Hard).await.unwrap();
    let (hard, state) = process_of(&admiral, &cluster).await;
    assert_ne!(hard, overlapped);
    assert_eq!(state, State::Live);
    assert_eq!(mock.stats().identifies - before, 2);

    // A restart of what is not there, or twice at once, is refused clearly.
    let missing = admiral
        .restart(&WorkerId::Cluster(9), RestartMode::Hard)
        .await
        .unwrap_err();
    assert!(
        matches!(missing, IpcError::Refused(Refusal::RestartFailed(_))),
        "{missing}"
    );
    assert_eq!(mock.stats().total_violations(), 0);
    admiral.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_replaces_one_cluster_at_a_time_without_identifying() {
    rolling_restart(fleet_tests::fleet).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_on_raw_websockets_replaces_one_cluster_at_a_time_without_identifying() {
    rolling_restart(fleet_tests::raw::raw_fleet).await;
}

async fn rolling_restart(fleet: fn(FleetOptions) -> Fleet) {
    let mock = MockDiscord::start(mock_config(12, 6, 2)).await.unwrap();
    let (admiral, mut events) = launch(fleet(options(&mock, 3))).await;
    admiral.wait_ready(WAIT).await.unwrap();
    until(&mut events, |e| {
        matches!(e, FleetEvent::Lifecycle(LifecycleEvent::AllReady { .. }))
    })
    .await;
    mock.start_events(Some(20.0)).unwrap();
    let before = mock.stats();

    let outcomes = admiral
        .restart_all(
            carrier::ipc::proto::Group::Clusters,
            RestartMode::Handover,
            1,
        )
        .await
        .unwrap();

    assert_eq!(outcomes.len(), 3);
    for (target, outcome) in &outcomes {
        assert_eq!(*outcome, carrier::Outcome::Ok(Payload::empty()), "{target}");
    }
    // One at a time: every replacement took over before the next began.
    let seen = until(&mut events, |e| {
        matches!(e, FleetEvent::Lifecycle(LifecycleEvent::Replaced { worker, .. }) if *worker == WorkerId::Cluster(2))
    })
    .await;
    let mut replacing = 0;
    for event in &seen {
        match event {
            FleetEvent::Lifecycle(LifecycleEvent::RestartPending { .. }) => {
                replacing += 1;
                assert_eq!(replacing, 1, "never two at once: {seen:#?}");
            }
            FleetEvent::Lifecycle(LifecycleEvent::Replaced { .. }) => replacing -= 1,
            _ => {}
        }
    }
    let report = settle(&mock).await;
    let after = mock.stats();
    assert_eq!(after.identifies, before.identifies, "no identify spent");
    assert_eq!(
        after.resumes - before.resumes,
        6,
        "every shard resumed once"
    );
    assert_eq!((report.lost, report.duplicates), (0, 0), "{report:?}");
    admiral.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reshard_from_4_to_8_shards_goes_live_at_once_and_loses_no_event() {
    reshard_4_to_8(fleet_tests::fleet, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_serenity_reshard_loses_no_event_and_its_old_generation_stops_handling_them_at_once() {
    reshard_4_to_8(fleet_tests::serenity_fleet, false).await;
}

/// Reshards 4 shards to 8 while events flow. User code handles no message twice (the switch time
/// splits what creates something by its snowflake); other events only between the moment the new
/// generation handles events (with `standby`, when it goes live; without, from its first READY)
/// and the moment the old one stops, `SWITCH_GUARD` after the new one went live.
async fn reshard_4_to_8(fleet: fn(FleetOptions) -> Fleet, standby: bool) {
    let mock = MockDiscord::start(mock_config(16, 4, 4)).await.unwrap();
    let mut options = options(&mock, 2);
    // Longer than the mock's heartbeat: the old generation's sessions confirm every event they
    // handled before they close, so the mock can tell none was lost.
    options.soft_kill_notice = Duration::from_secs(1);
    let (admiral, mut events) = launch(fleet(options)).await;
    admiral.wait_ready(WAIT).await.unwrap();
    assert_eq!(admiral.plan().shard_total, 4);
    let old: Vec<u64> = admiral
        .workers()
        .await
        .unwrap()
        .iter()
        .filter(|w| matches!(w.id, WorkerId::Cluster(_)))
        .filter_map(|w| w.process)
        .collect();
    // Every message each cluster process's user code handles, timed on arrival.
    let handled = common::HandledLog::start(&admiral).await;
    // When the new generation went live, and when the old one's processes exited.
    let mut timed = admiral.events();
    let watcher = tokio::spawn(async move {
        let (mut activated, mut exits) = (None, Vec::new());
        while exits.len() < old.len() {
            match tokio::time::timeout(WAIT, timed.recv()).await {
                Ok(Ok(FleetEvent::Lifecycle(LifecycleEvent::ReshardProgress { ready, total })))
                    if ready == total =>
                {
                    activated = Some(Instant::now());
                }
                Ok(Ok(FleetEvent::Exited { process, .. })) if old.contains(&process) => {
                    exits.push(Instant::now());
                }
                Ok(Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {}
                _ => break,
            }
        }
        (activated, exits.into_iter().max())
    });
    let started = Instant::now();
    let before = reshard_while_events_flow(&admiral, &mock, 8).await;
    let (activated, last_exit) = watcher.await.unwrap();
    // The switch window: the old generation stops handling events SWITCH_GUARD after the new one
    // goes live, long before its processes exit.
    let activated = activated.expect("activation seen");
    assert!(last_exit.expect("old generation gone") > activated + Duration::from_millis(900));
    let from = if standby { activated } else { started };
    let window = from..=activated + carrier::admiral::lifecycle::SWITCH_GUARD;

    let plan = admiral.plan();
    assert_eq!(plan.shard_total, 8);
    assert_eq!(plan.clusters.len(), 2);
    clusters_serve_the_plan(&admiral).await;
    settle_reshard(&mock, &before, 8).await;
    let seen = until(&mut events, |e| {
        matches!(e, FleetEvent::Lifecycle(LifecycleEvent::Resharded { .. }))
    })
    .await;
    let progress = seen
        .iter()
        .filter(|e| {
            matches!(
                e,
                FleetEvent::Lifecycle(LifecycleEvent::ReshardProgress { .. })
            )
        })
        .count();
    assert_eq!(progress, 2, "one progress event per new cluster");
    // User code handled every message the mock made: each arrives within WAIT.
    assert!(
        handled.all_handled(&mock).await,
        "a message reached no user code"
    );
    // User code: an event handled by two processes only inside the switch window.
    let handled = handled.entries();
    let mut by_id = std::collections::BTreeMap::<u64, Vec<(u64, Instant)>>::new();
    for (nonce, id, at) in handled {
        by_id.entry(id).or_default().push((nonce, at));
    }
    let slack = Duration::from_millis(200);
    let twice: Vec<&Vec<(u64, Instant)>> = by_id.values().filter(|h| h.len() > 1).collect();
    let outside = twice
        .iter()
        .filter(|h| {
            h.iter()
                .any(|(_, at)| *at + slack < *window.start() || *at > *window.end() + slack)
        })
        .count();
    println!(
        "reshard: {} messages handled, {} by both generations, {outside} of those outside the {:.2?} switch window",
        by_id.len(),
        twice.len(),
        window.end().duration_since(*window.start())
    );
    assert_eq!(
        outside, 0,
        "no message handled twice outside the switch window"
    );
    // Messages create something with a snowflake id: the switch time splits them exactly.
    assert!(twice.is_empty(), "{} messages handled twice", twice.len());
    let once_per_process = by_id.values().all(|h| {
        let processes: std::collections::BTreeSet<u64> = h.iter().map(|(n, _)| *n).collect();
        processes.len() == h.len()
    });
    assert!(once_per_process, "no process handled a message twice");
    // The old generation's connections are gone. Its sessions end with 1000 as its processes
    // retire; one whose close frame never went out (a process killed at its deadline on a
    // loaded machine, say) stays resumable on the gateway, held by no connection, until it
    // expires.
    mock.wait_until(WAIT, "old connections closed", |m| {
        m.sessions().iter().all(|s| s.shard[1] == 8 || !s.attached)
    })
    .await
    .unwrap();
    let lingering = mock.sessions().iter().filter(|s| s.shard[1] != 8).count();
    if lingering > 0 {
        println!("reshard: {lingering} old session(s) left resumable instead of closed with 1000");
    }
    // A second reshard while none runs is fine; the fleet keeps working afterwards.
    let answer = admiral
        .ipc()
        .service_command("echo", Payload::from("still here"))
        .await
        .unwrap();
    assert_eq!(answer, Payload::from("still here"));
    admiral.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_restart_loses_no_command_in_flight() {
    let mock = MockDiscord::start(mock_config(2, 1, 1)).await.unwrap();
    let (admiral, _events) = launch(fleet_tests::fleet(options(&mock, 1))).await;
    admiral.wait_ready(WAIT).await.unwrap();
    let echo = WorkerId::Service("echo".into());
    let (old, _) = process_of(&admiral, &echo).await;

    // Slow commands (300 ms each) keep arriving before, during and after the swap.
    let ipc = admiral.ipc().clone();
    let sender = tokio::spawn(async move {
        let mut calls = tokio::task::JoinSet::new();
        for _ in 0..40 {
            let ipc = ipc.clone();
            calls.spawn(async move { ipc.service_command("echo", Payload::from("slow")).await });
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        calls.join_all().await
    });
    // The restart (handover asked; services overlap) happens while they flow.
    admiral.restart(&echo, RestartMode::Handover).await.unwrap();
    let answers = sender.await.unwrap();

    assert_eq!(answers.len(), 40);
    for answer in answers {
        assert_eq!(answer.unwrap(), Payload::from("slow done"));
    }
    let (new, state) = process_of(&admiral, &echo).await;
    assert_ne!(new, old);
    assert_eq!(state, State::Live);
    admiral.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admiral_reshards_on_its_own_when_guilds_outgrow_the_shards() {
    // 16 guilds on 2 shards: 8 per shard, past the policy's 6.
    let mock = MockDiscord::start(mock_config(16, 2, 2)).await.unwrap();
    let mut options = options(&mock, 2);
    options.auto_reshard = Some(carrier::admiral::AutoReshard {
        max_guilds_per_shard: 6,
        target_guilds_per_shard: 4,
        check_every: Duration::from_millis(200),
    });
    let (admiral, mut events) = launch(fleet_tests::fleet(options)).await;
    admiral.wait_ready(WAIT).await.unwrap();
    let (_, missing) = admiral.ipc().guild_count().await.unwrap();
    assert!(missing.is_empty(), "every cluster answers a count");
    until(&mut events, |e| {
        matches!(e, FleetEvent::Lifecycle(LifecycleEvent::Resharded { .. }))
    })
    .await;
    assert_eq!(admiral.plan().shard_total, 4, "16 guilds at 4 per shard");
    // Every guild is served by the new generation's caches.
    mock.wait_until(WAIT, "old sessions closed", |m| {
        m.sessions().iter().all(|s| s.shard[1] == 4)
    })
    .await
    .unwrap();
    assert_eq!(mock.stats().total_violations(), 0);
    admiral.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_cluster_is_unavailable_until_a_hard_restart_starts_it() {
    stop_then_hard_restart(fleet_tests::fleet).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_raw_cluster_is_unavailable_until_a_hard_restart_starts_it() {
    stop_then_hard_restart(fleet_tests::raw::raw_fleet).await;
}

async fn stop_then_hard_restart(fleet: fn(FleetOptions) -> Fleet) {
    let mock = MockDiscord::start(mock_config(4, 2, 2)).await.unwrap();
    let (admiral, _events) = launch(fleet(options(&mock, 2))).await;
    admiral.wait_ready(WAIT).await.unwrap();
    let cluster = WorkerId::Cluster(1);

    admiral.stop_worker(&cluster).await.unwrap();
    assert_eq!(process_of(&admiral, &cluster).await.1, State::Stopped);
    let error = admiral
        .ipc()
        .cluster_command(1, Payload::from("status"))
        .await
        .unwrap_err();
    assert!(
        matches!(error, IpcError::Refused(Refusal::Unavailable(_))),
        "{error}"
    );
    // Its shard's session ended with the process.
    mock.wait_until(WAIT, "one session left", |m| m.sessions().len() == 1)
        .await
        .unwrap();

    admiral.restart(&cluster, RestartMode::Hard).await.unwrap();
    let answer = admiral
        .ipc()
        .cluster_command(1, Payload::from("status"))
        .await
        .unwrap();
    assert_eq!(status(&answer).id, 1);
    assert_eq!(mock.stats().total_violations(), 0);
    admiral.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reshard_by_guilds_per_shard_asks_discord_for_its_recommendation() {
    // The mock recommends 2 shards (for 1000 guilds each): 500 per shard makes 4.
    let mock = MockDiscord::start(mock_config(8, 2, 2)).await.unwrap();
    let (admiral, _events) = launch(fleet_tests::fleet(options(&mock, 2))).await;
    admiral.wait_ready(WAIT).await.unwrap();
    let asked = mock.stats().rest_requests;

    admiral
        .reshard(ShardCount::GuildsPerShard(500), None)
        .await
        .unwrap();

    assert_eq!(admiral.plan().shard_total, 4);
    assert!(mock.stats().rest_requests > asked, "GET /gateway/bot asked");
    let error = admiral
        .reshard(ShardCount::GuildsPerShard(0), None)
        .await
        .unwrap_err();
    assert!(
        matches!(error, IpcError::Refused(Refusal::ReshardFailed(_))),
        "{error}"
    );
    assert_eq!(
        admiral.plan().shard_total,
        4,
        "a refused reshard changes nothing"
    );
    admiral.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reshard_keeps_this_hosts_slice_of_a_bot_split_over_machines() {
    // This host runs shards 2-3 of 4; the other half runs elsewhere.
    let mock = MockDiscord::start(mock_config(16, 4, 1)).await.unwrap();
    let mut options = options(&mock, 2);
    options.shards = ShardCount::Exact(4);
    options.first_shard = Some(2);
    options.last_shard = Some(3);
    let (admiral, _events) = launch(fleet_tests::fleet(options)).await;
    admiral.wait_ready(WAIT).await.unwrap();
    let shards = |mock: &MockDiscord| {
        let mut shards: Vec<[u32; 2]> = mock
            .sessions()
            .iter()
            .filter(|s| s.attached)
            .map(|s| s.shard)
            .collect();
        shards.sort_unstable();
        shards
    };
    assert_eq!(shards(&mock), [[2, 4], [3, 4]]);

    admiral.reshard(ShardCount::Exact(8), None).await.unwrap();
    let plan = admiral.plan();
    assert_eq!((plan.shard_total, plan.slice()), (8, Some((4, 7))));
    mock.wait_until(WAIT, "only the new slice is connected", |m| {
        shards(m) == [[4, 8], [5, 8], [6, 8], [7, 8]]
    })
    .await
    .unwrap();

    admiral.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reshard_on_raw_websockets_goes_live_through_the_standby_gate_and_loses_no_event() {
    let mock = MockDiscord::start(mock_config(8, 4, 4)).await.unwrap();
    let mut options = options(&mock, 2);
    // As with twilight: the old generation confirms what it handled before it closes.
    options.soft_kill_notice = Duration::from_secs(1);
    let (admiral, _events) = launch(fleet_tests::raw::raw_fleet(options)).await;
    admiral.wait_ready(WAIT).await.unwrap();
    let before = reshard_while_events_flow(&admiral, &mock, 8).await;

    // Once live, the new generation's workers get the events.
    more_events_delivered(&mock, 5).await;
    assert_eq!(admiral.plan().shard_total, 8);
    let statuses = clusters_serve_the_plan(&admiral).await;
    let events: u64 = statuses.iter().map(|s| s.events).sum();
    assert!(events > 0, "the activated generation handles events");
    settle_reshard(&mock, &before, 8).await;
    admiral.shutdown().await;
}
