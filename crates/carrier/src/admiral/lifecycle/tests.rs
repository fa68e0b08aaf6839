//! Every lifecycle transition, without processes.

use super::*;

const TIMEOUTS: Timeouts = Timeouts {
    service_ready: Duration::from_secs(10),
    cluster_ready: Duration::from_mins(1),
    kill: Duration::from_secs(5),
};

fn fleet(services: &[&str], clusters: u32) -> Lifecycle {
    Lifecycle::new(
        services.iter().map(|s| (*s).to_owned()),
        0..clusters,
        TIMEOUTS,
    )
}

fn spawned(commands: &[Command]) -> Vec<(WorkerId, ProcessId)> {
    commands
        .iter()
        .filter_map(|c| match c {
            Command::Spawn { worker, process } => Some((worker.clone(), *process)),
            _ => None,
        })
        .collect()
}

fn events(commands: &[Command]) -> Vec<LifecycleEvent> {
    commands
        .iter()
        .filter_map(|c| match c {
            Command::Emit(e) => Some(e.clone()),
            _ => None,
        })
        .collect()
}

fn service(name: &str) -> WorkerId {
    WorkerId::Service(name.to_owned())
}

/// Feeds `input`; its commands, and the deadlines it set with how far away each is.
fn handle_timed(l: &mut Lifecycle, input: Input) -> (Vec<Command>, Vec<(Timeout, Duration)>) {
    let before = l.timers.clone();
    let out = l.handle(input);
    let now = l.now;
    let set = l.timers.difference(&before);
    let set = set.map(|(at, _, t)| (t.clone(), at.saturating_sub(now)));
    (out, set.collect())
}

#[test]
fn deadlines_are_kept_by_the_lifecycle_and_handled_in_order_when_due() {
    let mut l = fleet(&["cache", "jobs"], 0);
    let started = spawned(&l.handle(Input::Launch));
    assert_eq!(l.poll_timeout(), Some(TIMEOUTS.service_ready));
    // One is ready in time: its deadline passes harmlessly. The other is not.
    l.handle(Input::Ready(started[0].1));
    assert!(
        l.handle_timeout(TIMEOUTS.service_ready / 2).is_empty(),
        "not due yet"
    );
    let out = l.handle_timeout(TIMEOUTS.service_ready);
    assert!(out.contains(&Command::Kill(started[1].1)));
    assert!(matches!(
        events(&out)[..],
        [LifecycleEvent::Failed { ref worker, .. }, ..] if *worker == service("jobs")
    ));
    // A stop sets its kill deadline: the process is killed once its grace is over.
    l.handle(Input::Shutdown);
    let due = l.poll_timeout().expect("a kill deadline");
    assert_eq!(due, TIMEOUTS.service_ready + TIMEOUTS.kill);
    let out = l.handle_timeout(due);
    assert!(out.contains(&Command::Kill(started[0].1)), "{out:?}");
    assert_eq!(l.poll_timeout(), None);
}

#[test]
fn services_launch_first_then_clusters() {
    let mut l = fleet(&["cache", "jobs"], 2);
    let (out, timed) = handle_timed(&mut l, Input::Launch);
    let first = spawned(&out);
    assert_eq!(
        first.iter().map(|(w, _)| w.clone()).collect::<Vec<_>>(),
        [service("cache"), service("jobs")]
    );
    assert!(timed.contains(&(Timeout::Start(first[0].1), TIMEOUTS.service_ready)));
    assert_eq!(
        l.worker(&WorkerId::Cluster(0)).unwrap().state,
        State::Pending
    );

    l.handle(Input::Hello(first[0].1));
    assert_eq!(l.worker(&service("cache")).unwrap().state, State::Starting);
    let out = l.handle(Input::Ready(first[0].1));
    assert_eq!(events(&out), [LifecycleEvent::Ready(service("cache"))]);
    assert!(spawned(&out).is_empty(), "clusters wait for every service");

    let (out, timed) = handle_timed(&mut l, Input::Ready(first[1].1));
    assert_eq!(
        events(&out),
        [
            LifecycleEvent::Ready(service("jobs")),
            LifecycleEvent::ServicesLaunched
        ]
    );
    let clusters = spawned(&out);
    assert_eq!(
        clusters.iter().map(|(w, _)| w.clone()).collect::<Vec<_>>(),
        [WorkerId::Cluster(0), WorkerId::Cluster(1)]
    );
    assert!(timed.contains(&(Timeout::Start(clusters[0].1), TIMEOUTS.cluster_ready)));
    assert_eq!(
        l.live_process(&WorkerId::Cluster(0)),
        None,
        "not live until ready"
    );

    l.handle(Input::Ready(clusters[0].1));
    assert_eq!(l.live_process(&WorkerId::Cluster(0)), Some(clusters[0].1));
    let out = l.handle(Input::Ready(clusters[1].1));
    assert_eq!(
        events(&out),
        [
            LifecycleEvent::Ready(WorkerId::Cluster(1)),
            LifecycleEvent::AllReady { live: 4, failed: 0 }
        ]
    );
}

#[test]
fn without_services_clusters_launch_at_once() {
    let mut l = fleet(&[], 3);
    let out = l.handle(Input::Launch);
    assert_eq!(events(&out), [LifecycleEvent::ServicesLaunched]);
    assert_eq!(spawned(&out).len(), 3);
}

#[test]
fn a_service_that_fails_to_start_is_marked_failed_and_the_launch_goes_on() {
    let mut l = fleet(&["bad"], 1);
    let p = spawned(&l.handle(Input::Launch))[0].1;
    l.handle(Input::Hello(p));
    let (out, timed) = handle_timed(&mut l, Input::StartFailed(p, "no database".into()));
    assert!(
        timed.contains(&(Timeout::Kill(p), TIMEOUTS.kill)),
        "it may exit by itself first"
    );
    assert!(!out.contains(&Command::Kill(p)));
    assert_eq!(
        events(&out)[0],
        LifecycleEvent::Failed {
            worker: service("bad"),
            reason: "failed to start: no database".into()
        }
    );
    assert_eq!(spawned(&out).len(), 1, "the cluster launches anyway");
    assert!(matches!(
        l.worker(&service("bad")).unwrap().state,
        State::Failed(_)
    ));
    assert_eq!(l.live_process(&service("bad")), None);
    assert_eq!(
        l.handle(Input::KillTimedOut(p)),
        [Command::Kill(p)],
        "killed if it lingers"
    );
}

#[test]
fn a_start_timeout_kills_and_fails_the_worker() {
    let mut l = fleet(&["slow"], 0);
    let p = spawned(&l.handle(Input::Launch))[0].1;
    let out = l.handle(Input::StartTimedOut(p));
    assert!(out.contains(&Command::Kill(p)));
    assert_eq!(
        events(&out),
        [
            LifecycleEvent::Failed {
                worker: service("slow"),
                reason: "not ready within 10s".into()
            },
            LifecycleEvent::ServicesLaunched,
            LifecycleEvent::AllReady { live: 0, failed: 1 },
        ]
    );
    // A timer that fires after the worker became ready does nothing.
    let mut l = fleet(&["ok"], 0);
    let p = spawned(&l.handle(Input::Launch))[0].1;
    l.handle(Input::Ready(p));
    assert!(l.handle(Input::StartTimedOut(p)).is_empty());
}

#[test]
fn a_crash_during_launch_does_not_stall_it() {
    let mut l = fleet(&[], 2);
    let ps = spawned(&l.handle(Input::Launch));
    l.handle(Input::Ready(ps[0].1));
    let out = l.handle(Input::Exited(ps[1].1, Some(101)));
    assert_eq!(
        events(&out),
        [
            LifecycleEvent::Failed {
                worker: WorkerId::Cluster(1),
                reason: "process exited with code 101".into()
            },
            LifecycleEvent::AllReady { live: 1, failed: 1 },
        ]
    );
}

#[test]
fn a_crash_of_a_live_worker_makes_it_unavailable() {
    let mut l = fleet(&[], 1);
    let p = spawned(&l.handle(Input::Launch))[0].1;
    l.handle(Input::Ready(p));
    let out = l.handle(Input::Exited(p, None));
    assert_eq!(
        events(&out),
        [LifecycleEvent::Failed {
            worker: WorkerId::Cluster(0),
            reason: "process killed by a signal".into()
        }]
    );
    assert_eq!(l.live_process(&WorkerId::Cluster(0)), None);
    assert_eq!(l.worker_of(p), Some(&WorkerId::Cluster(0)));
}

#[test]
fn spawn_failures_fail_the_worker() {
    let mut l = fleet(&["svc"], 0);
    let p = spawned(&l.handle(Input::Launch))[0].1;
    let out = l.handle(Input::SpawnFailed(p, "ENOENT".into()));
    assert!(
        matches!(&events(&out)[0], LifecycleEvent::Failed { reason, .. } if reason == "could not spawn: ENOENT")
    );
}

#[test]
fn shutdown_drains_clusters_then_services_and_kills_stragglers() {
    let mut l = fleet(&["svc"], 2);
    let svc = spawned(&l.handle(Input::Launch))[0].1;
    let clusters = spawned(&l.handle(Input::Ready(svc)));
    l.handle(Input::Ready(clusters[0].1));
    l.handle(Input::Ready(clusters[1].1));

    let out = l.handle(Input::Shutdown);
    let stops: Vec<&Command> = out
        .iter()
        .filter(|c| matches!(c, Command::Stop { .. }))
        .collect();
    assert_eq!(stops.len(), 2, "clusters first: {out:?}");
    assert!(out.contains(&Command::Stop {
        process: clusters[0].1,
        grace: TIMEOUTS.kill
    }));
    assert_eq!(l.worker(&service("svc")).unwrap().state, State::Live);
    assert!(
        l.handle(Input::Shutdown).is_empty(),
        "a second shutdown is a no-op"
    );

    l.handle(Input::Exited(clusters[0].1, Some(0)));
    assert_eq!(
        l.handle(Input::KillTimedOut(clusters[1].1)),
        [Command::Kill(clusters[1].1)]
    );
    assert!(
        l.handle(Input::KillTimedOut(svc)).is_empty(),
        "a live worker is never killed by a stale timer"
    );
    let out = l.handle(Input::Exited(clusters[1].1, None));
    assert_eq!(
        out,
        [
            Command::Emit(LifecycleEvent::WorkerStopped(clusters[1].0.clone())),
            Command::Stop {
                process: svc,
                grace: TIMEOUTS.kill
            }
        ]
    );
    let out = l.handle(Input::Exited(svc, Some(0)));
    assert_eq!(
        events(&out),
        [
            LifecycleEvent::WorkerStopped(service("svc")),
            LifecycleEvent::Stopped
        ]
    );
    assert!(l.is_stopped());
    assert_eq!(
        l.worker(&WorkerId::Cluster(1)).unwrap().state,
        State::Stopped
    );
}

#[test]
fn shutdown_before_launch_finishes_stops_what_runs_and_spawns_nothing_more() {
    let mut l = fleet(&["svc"], 2);
    let svc = spawned(&l.handle(Input::Launch))[0].1;
    let out = l.handle(Input::Shutdown);
    assert!(spawned(&out).is_empty());
    assert!(out.contains(&Command::Stop {
        process: svc,
        grace: TIMEOUTS.kill
    }));
    let out = l.handle(Input::Ready(svc));
    assert!(
        spawned(&out).is_empty(),
        "no cluster launches during shutdown"
    );
    let out = l.handle(Input::Exited(svc, Some(0)));
    assert_eq!(
        events(&out),
        [
            LifecycleEvent::WorkerStopped(service("svc")),
            LifecycleEvent::Stopped
        ]
    );
}

#[test]
fn inputs_for_unknown_or_stale_processes_are_ignored() {
    let mut l = fleet(&[], 1);
    l.handle(Input::Launch);
    assert!(l.handle(Input::Ready(999)).is_empty());
    assert!(l.handle(Input::Exited(999, Some(1))).is_empty());
}

const POLICY: RestartPolicy = RestartPolicy {
    max_restarts: 3,
    window: Duration::from_mins(1),
    backoff: Duration::from_secs(1),
    max_backoff: Duration::from_secs(3),
};

fn restart_timer(timed: &[(Timeout, Duration)]) -> Option<Duration> {
    timed
        .iter()
        .find_map(|(t, after)| matches!(t, Timeout::Restart(_)).then_some(*after))
}

#[test]
fn a_crashed_worker_is_restarted_with_a_doubling_backoff_then_given_up() {
    let mut l = fleet(&[], 1).with_restarts(POLICY);
    let mut p = spawned(&l.handle(Input::Launch))[0].1;
    l.handle(Input::Ready(p));
    let cluster = WorkerId::Cluster(0);
    for (attempt, backoff) in [(1, 1), (2, 2), (3, 3)] {
        let (out, timed) = handle_timed(&mut l, Input::Exited(p, Some(101)));
        assert_eq!(
            restart_timer(&timed),
            Some(Duration::from_secs(backoff)),
            "attempt {attempt}"
        );
        assert!(
            matches!(&events(&out)[0], LifecycleEvent::Restarting { attempt: a, .. } if *a == attempt)
        );
        assert_eq!(l.worker(&cluster).unwrap().state, State::Backoff);
        assert_eq!(l.live_process(&cluster), None, "unavailable while it waits");
        let out = l.handle(Input::RestartDue(cluster.clone()));
        let respawned = spawned(&out);
        assert_eq!(respawned.len(), 1);
        assert_ne!(respawned[0].1, p, "a new process");
        p = respawned[0].1;
        let out = l.handle(Input::Ready(p));
        assert_eq!(events(&out), [LifecycleEvent::Ready(cluster.clone())]);
        assert_eq!(l.live_process(&cluster), Some(p));
    }
    let (out, timed) = handle_timed(&mut l, Input::Exited(p, Some(101)));
    assert!(restart_timer(&timed).is_none());
    assert!(
        matches!(&events(&out)[0], LifecycleEvent::Failed { reason, .. } if reason.contains("gave up after 3 restarts"))
    );
}

#[test]
fn restarts_older_than_the_window_are_forgotten() {
    let mut l = fleet(&[], 1).with_restarts(RestartPolicy {
        max_restarts: 1,
        ..POLICY
    });
    let mut p = spawned(&l.handle(Input::Launch))[0].1;
    for minute in 1..=3 {
        l.advance_clock(Duration::from_secs(61 * minute));
        let (_, timed) = handle_timed(&mut l, Input::Exited(p, None));
        assert_eq!(
            restart_timer(&timed),
            Some(Duration::from_secs(1)),
            "crash {minute} is the first in its window"
        );
        p = spawned(&l.handle(Input::RestartDue(WorkerId::Cluster(0))))[0].1;
    }
}

#[test]
fn a_service_that_crashes_during_launch_is_restarted_and_clusters_wait_for_it() {
    let mut l = fleet(&["cache"], 1).with_restarts(POLICY);
    let p = spawned(&l.handle(Input::Launch))[0].1;
    let (out, timed) = handle_timed(&mut l, Input::StartFailed(p, "database down".into()));
    assert_eq!(restart_timer(&timed), Some(Duration::from_secs(1)));
    assert!(spawned(&out).is_empty(), "clusters wait for the service");
    let p = spawned(&l.handle(Input::RestartDue(service("cache"))))[0].1;
    let out = l.handle(Input::Ready(p));
    assert_eq!(
        events(&out)[..2],
        [
            LifecycleEvent::Ready(service("cache")),
            LifecycleEvent::ServicesLaunched
        ]
    );
    assert_eq!(spawned(&out).len(), 1);
}

#[test]
fn shutdown_cancels_pending_restarts_and_never_restarts() {
    let mut l = fleet(&[], 2).with_restarts(POLICY);
    let ps = spawned(&l.handle(Input::Launch));
    l.handle(Input::Ready(ps[0].1));
    l.handle(Input::Ready(ps[1].1));
    l.handle(Input::Exited(ps[0].1, Some(1)));
    l.handle(Input::Shutdown);
    assert_eq!(
        l.worker(&WorkerId::Cluster(0)).unwrap().state,
        State::Stopped
    );
    assert!(spawned(&l.handle(Input::RestartDue(WorkerId::Cluster(0)))).is_empty());
    // A worker that dies while draining is stopped, not restarted.
    let (_, timed) = handle_timed(&mut l, Input::Exited(ps[1].1, Some(1)));
    assert!(restart_timer(&timed).is_none());
    assert!(l.is_stopped());
}

#[test]
fn backoff_doubles_up_to_its_ceiling() {
    assert_eq!(POLICY.backoff_for(1), Duration::from_secs(1));
    assert_eq!(POLICY.backoff_for(2), Duration::from_secs(2));
    assert_eq!(POLICY.backoff_for(3), Duration::from_secs(3));
    assert_eq!(POLICY.backoff_for(40), Duration::from_secs(3));
}

// ---- requested restarts ----------------------------------------------------------------------

/// A fleet of one live cluster; returns it and the cluster's process.
fn live_cluster() -> (Lifecycle, ProcessId) {
    let mut l = fleet(&[], 1);
    let p = spawned(&l.handle(Input::Launch))[0].1;
    l.handle(Input::Hello(p));
    l.handle(Input::Ready(p));
    (l, p)
}

const C0: WorkerId = WorkerId::Cluster(0);

#[test]
fn a_handover_restart_swaps_only_once_the_replacement_resumed() {
    let (mut l, old) = live_cluster();
    let out = l.handle(Input::Restart(C0, RestartMode::Handover));
    let new = spawned(&out)[0].1;
    assert_ne!(new, old);
    assert_eq!(
        events(&out),
        [LifecycleEvent::RestartPending {
            worker: C0,
            mode: RestartMode::Handover
        }]
    );
    assert_eq!(
        l.can_soft_restart(&C0),
        Err("cluster-0 is already being restarted".into())
    );
    // The old process serves throughout.
    l.handle(Input::Hello(new));
    assert_eq!(l.live_process(&C0), Some(old));
    let out = l.handle(Input::Prepared(new));
    assert_eq!(out, [Command::RequestSessions { from: old, to: new }]);
    assert!(l.handle(Input::Prepared(new)).is_empty(), "asked once");
    assert_eq!(l.live_process(&C0), Some(old));
    let out = l.handle(Input::Ready(new));
    assert!(out.contains(&Command::Stop {
        process: old,
        grace: TIMEOUTS.kill
    }));
    assert_eq!(
        events(&out),
        [LifecycleEvent::Replaced {
            worker: C0,
            old,
            new
        }]
    );
    assert_eq!(l.live_process(&C0), Some(new));
    // The old process's exit is not a crash.
    assert!(l.handle(Input::Exited(old, Some(0))).is_empty());
    assert_eq!(l.live_process(&C0), Some(new));
    assert_eq!(l.can_soft_restart(&C0), Ok(()));
}

fn sessions(shards: std::ops::Range<u32>) -> Vec<ShardSession> {
    shards
        .map(|shard| ShardSession::new(shard, format!("session-{shard}"), None))
        .collect()
}

#[test]
fn a_handover_passes_the_sessions_on_once_and_keeps_them_until_the_swap() {
    let (mut l, old) = live_cluster();
    let new = spawned(&l.handle(Input::Restart(C0, RestartMode::Handover)))[0].1;
    assert_eq!(
        l.admit(new),
        Ok((
            C0,
            Admission::Replacement {
                handover: true,
                standby: false
            }
        ))
    );
    assert_eq!(
        l.admit(old),
        Err("stale process"),
        "the old one is connected already"
    );
    assert_eq!(l.admit(999), Err("unknown process"));
    assert_eq!(
        l.worker(&C0).unwrap().replacement.as_ref().unwrap().step,
        Step::Starting
    );
    l.handle(Input::Prepared(new));
    let step = |l: &Lifecycle| {
        l.worker(&C0)
            .unwrap()
            .replacement
            .as_ref()
            .unwrap()
            .step
            .clone()
    };
    assert_eq!(step(&l), Step::HandingOver { sessions: None });
    // Only the worker's current process hands over, and only once.
    assert!(
        l.handle(Input::SessionsHandedOver(new, sessions(0..2)))
            .is_empty()
    );
    let out = l.handle(Input::SessionsHandedOver(old, sessions(0..2)));
    assert_eq!(
        out,
        [Command::SendSessions {
            to: new,
            sessions: sessions(0..2)
        }]
    );
    assert_eq!(
        step(&l),
        Step::HandingOver {
            sessions: Some(sessions(0..2))
        }
    );
    assert!(
        l.handle(Input::SessionsHandedOver(old, sessions(0..2)))
            .is_empty()
    );
    l.handle(Input::Ready(new));
    assert_eq!(l.worker(&C0).unwrap().replacement, None);
    assert!(
        l.handle(Input::SessionsHandedOver(old, sessions(0..2)))
            .is_empty(),
        "a process of the past resumes nothing"
    );
}

#[test]
fn sessions_that_arrive_after_the_replacement_failed_go_straight_back() {
    let (mut l, old) = live_cluster();
    let new = spawned(&l.handle(Input::Restart(C0, RestartMode::Handover)))[0].1;
    l.handle(Input::Prepared(new));
    let out = l.handle(Input::StartTimedOut(new));
    assert!(
        !out.iter()
            .any(|c| matches!(c, Command::SendSessions { .. }))
    );
    let out = l.handle(Input::SessionsHandedOver(old, sessions(0..2)));
    assert_eq!(
        out,
        [Command::SendSessions {
            to: old,
            sessions: sessions(0..2)
        }]
    );
    assert_eq!(l.live_process(&C0), Some(old));
}

#[test]
fn an_old_process_dying_before_it_hands_over_lets_the_replacement_start_fresh() {
    let (mut l, old) = live_cluster();
    let new = spawned(&l.handle(Input::Restart(C0, RestartMode::Handover)))[0].1;
    l.handle(Input::Prepared(new));
    let out = l.handle(Input::Exited(old, None));
    assert!(out.contains(&Command::SendSessions {
        to: new,
        sessions: Vec::new()
    }));
    l.handle(Input::Ready(new));
    assert_eq!(l.live_process(&C0), Some(new));
}

#[test]
fn a_replacement_failing_after_the_handover_gives_the_sessions_back() {
    let (mut l, old) = live_cluster();
    let new = spawned(&l.handle(Input::Restart(C0, RestartMode::Handover)))[0].1;
    l.handle(Input::Hello(new));
    l.handle(Input::Prepared(new));
    l.handle(Input::SessionsHandedOver(old, sessions(0..2)));
    let out = l.handle(Input::Exited(new, Some(101)));
    assert!(out.contains(&Command::SendSessions {
        to: old,
        sessions: sessions(0..2)
    }));
    assert_eq!(
        events(&out),
        [LifecycleEvent::RestartFailed {
            worker: C0,
            reason: "process exited with code 101".into()
        }]
    );
    assert_eq!(l.live_process(&C0), Some(old), "the old process stays");
    assert_eq!(l.worker(&C0).unwrap().replacement, None);
}

#[test]
fn a_replacement_failing_before_the_handover_leaves_the_old_untouched() {
    let (mut l, old) = live_cluster();
    let new = spawned(&l.handle(Input::Restart(C0, RestartMode::Handover)))[0].1;
    let (out, timed) = handle_timed(&mut l, Input::StartFailed(new, "bad config".into()));
    assert!(
        !out.iter()
            .any(|c| matches!(c, Command::SendSessions { .. }))
    );
    assert!(timed.contains(&(Timeout::Kill(new), TIMEOUTS.kill)));
    assert_eq!(l.live_process(&C0), Some(old));
    // A late ready from the failed replacement changes nothing.
    assert!(l.handle(Input::Ready(new)).is_empty());
    assert_eq!(l.live_process(&C0), Some(old));
    let new = spawned(&l.handle(Input::Restart(C0, RestartMode::Overlap)))[0].1;
    let out = l.handle(Input::StartTimedOut(new));
    assert!(out.contains(&Command::Kill(new)));
    assert_eq!(l.live_process(&C0), Some(old));
}

#[test]
fn overlap_never_hands_over_and_services_always_overlap() {
    let (mut l, old) = live_cluster();
    let new = spawned(&l.handle(Input::Restart(C0, RestartMode::Overlap)))[0].1;
    assert!(l.handle(Input::Prepared(new)).is_empty());
    l.handle(Input::Ready(new));
    assert_eq!(l.live_process(&C0), Some(new));
    assert!(l.worker_of(old).is_some());

    let mut l = fleet(&["cache"], 0);
    let p = spawned(&l.handle(Input::Launch))[0].1;
    l.handle(Input::Ready(p));
    let cache = service("cache");
    l.handle(Input::Restart(cache.clone(), RestartMode::Handover));
    let replacement = l.worker(&cache).unwrap().replacement.clone().unwrap();
    assert_eq!(replacement.mode, RestartMode::Overlap);
}

#[test]
fn a_hard_restart_kills_first_and_is_unavailable_until_ready() {
    let (mut l, old) = live_cluster();
    let out = l.handle(Input::Restart(C0, RestartMode::Hard));
    assert!(out.contains(&Command::Kill(old)));
    let new = spawned(&out)[0].1;
    assert_eq!(l.live_process(&C0), None);
    assert!(
        l.handle(Input::Exited(old, None)).is_empty(),
        "expected exit"
    );
    l.handle(Input::Hello(new));
    let out = l.handle(Input::Ready(new));
    assert_eq!(events(&out), [LifecycleEvent::Ready(C0)]);
    assert_eq!(l.live_process(&C0), Some(new));
}

#[test]
fn restarts_are_refused_unless_live_and_shutdown_cancels_a_replacement() {
    let mut l = fleet(&[], 1);
    assert!(l.can_soft_restart(&C0).is_err(), "pending");
    assert!(l.handle(Input::Restart(C0, RestartMode::Hard)).is_empty());
    assert!(l.can_soft_restart(&WorkerId::Cluster(7)).is_err());
    let (mut l, old) = live_cluster();
    let new = spawned(&l.handle(Input::Restart(C0, RestartMode::Overlap)))[0].1;
    let out = l.handle(Input::Shutdown);
    assert!(out.contains(&Command::Stop {
        process: new,
        grace: TIMEOUTS.kill
    }));
    assert!(out.contains(&Command::Stop {
        process: old,
        grace: TIMEOUTS.kill
    }));
    assert!(events(&out).contains(&LifecycleEvent::RestartFailed {
        worker: C0,
        reason: "the fleet is shutting down".into()
    }));
    assert!(l.can_soft_restart(&C0).is_err());
}

#[test]
fn an_old_process_crashing_mid_restart_is_rescued_by_its_replacement() {
    let (mut l, old) = live_cluster();
    let new = spawned(&l.handle(Input::Restart(C0, RestartMode::Overlap)))[0].1;
    let out = l.handle(Input::Exited(old, None));
    assert!(matches!(events(&out)[..], [LifecycleEvent::Failed { .. }]));
    l.handle(Input::Ready(new));
    assert_eq!(l.live_process(&C0), Some(new));
}

#[test]
fn a_soft_kill_notice_comes_before_the_handover_and_before_an_overlap_swap() {
    let notice = Duration::from_secs(3);
    let (l, old) = live_cluster();
    let mut l = l.with_soft_kill_notice(notice);
    let new = spawned(&l.handle(Input::Restart(C0, RestartMode::Handover)))[0].1;
    let (out, timed) = handle_timed(&mut l, Input::Prepared(new));
    assert_eq!(
        out,
        [Command::Emit(LifecycleEvent::SoftKillPending {
            worker: C0,
            process: old,
            notice
        })]
    );
    assert_eq!(timed, [(Timeout::Notice(C0), notice)]);
    assert_eq!(
        l.handle(Input::NoticeOver(C0)),
        [Command::RequestSessions { from: old, to: new }]
    );
    l.handle(Input::Ready(new));
    assert_eq!(l.live_process(&C0), Some(new));

    let old = new;
    let new = spawned(&l.handle(Input::Restart(C0, RestartMode::Overlap)))[0].1;
    let out = l.handle(Input::Ready(new));
    assert!(matches!(
        events(&out)[..],
        [LifecycleEvent::SoftKillPending { process, .. }] if process == old
    ));
    assert_eq!(
        l.live_process(&C0),
        Some(old),
        "the old one serves out its notice"
    );
    let out = l.handle(Input::NoticeOver(C0));
    assert!(out.contains(&Command::Stop {
        process: old,
        grace: TIMEOUTS.kill
    }));
    assert_eq!(l.live_process(&C0), Some(new));
    assert!(
        l.handle(Input::NoticeOver(C0)).is_empty(),
        "a stale notice does nothing"
    );
}

#[test]
fn a_replacement_failing_during_the_notice_leaves_the_old_serving() {
    let (l, old) = live_cluster();
    let mut l = l.with_soft_kill_notice(Duration::from_secs(1));
    let new = spawned(&l.handle(Input::Restart(C0, RestartMode::Handover)))[0].1;
    l.handle(Input::Prepared(new));
    let out = l.handle(Input::Exited(new, None));
    assert!(
        !out.iter()
            .any(|c| matches!(c, Command::SendSessions { .. }))
    );
    assert!(l.handle(Input::NoticeOver(C0)).is_empty());
    assert_eq!(l.live_process(&C0), Some(old));
}

// ---- resharding ------------------------------------------------------------------------------

/// A fleet of `clusters` live clusters; returns it and their processes.
fn live_clusters(clusters: u32) -> (Lifecycle, Vec<ProcessId>) {
    let mut l = fleet(&[], clusters);
    let processes: Vec<ProcessId> = spawned(&l.handle(Input::Launch))
        .into_iter()
        .map(|(_, p)| p)
        .collect();
    for p in &processes {
        l.handle(Input::Ready(*p));
    }
    (l, processes)
}

#[test]
fn a_new_generation_goes_live_only_when_all_of_it_is_ready() {
    let (mut l, old) = live_clusters(2);
    assert_eq!(l.can_reshard(), Ok(()));
    let out = l.handle(Input::Reshard(vec![0, 1, 2]));
    let new: Vec<ProcessId> = spawned(&out).into_iter().map(|(_, p)| p).collect();
    assert_eq!(new.len(), 3);
    assert!(l.can_reshard().is_err(), "one reshard at a time");
    assert!(
        l.can_soft_restart(&C0).is_err(),
        "no restart during a reshard"
    );
    assert_eq!(
        events(&l.handle(Input::Ready(new[0]))),
        [LifecycleEvent::ReshardProgress { ready: 1, total: 3 }]
    );
    l.handle(Input::Ready(new[1]));
    assert_eq!(
        l.live_process(&C0),
        Some(old[0]),
        "the old generation serves"
    );
    assert_eq!(l.live_process(&WorkerId::Cluster(2)), None);
    let out = l.handle(Input::Ready(new[2]));
    let activated: Vec<ProcessId> = out
        .iter()
        .filter_map(|c| match c {
            Command::Activate(p) => Some(*p),
            _ => None,
        })
        .collect();
    assert_eq!(activated, new);
    let first_stop = out
        .iter()
        .position(|c| matches!(c, Command::Stop { .. }))
        .unwrap();
    let last_activate = out
        .iter()
        .rposition(|c| matches!(c, Command::Activate(_)))
        .unwrap();
    assert!(
        last_activate < first_stop,
        "activate all before stopping any"
    );
    assert!(events(&out).contains(&LifecycleEvent::Resharded { clusters: 3 }));
    assert!(events(&out).contains(&LifecycleEvent::Ready(WorkerId::Cluster(2))));
    for (i, p) in new.iter().enumerate() {
        assert_eq!(l.live_process(&WorkerId::Cluster(i as u32)), Some(*p));
    }
    assert_eq!(l.can_reshard(), Ok(()));
}

#[test]
fn a_held_generation_waits_for_go_live_and_switches_at_the_time_it_is_given() {
    let (mut l, old) = live_clusters(1);
    let new: Vec<ProcessId> = spawned(&l.handle(Input::ReshardTogether(vec![1, 2])))
        .into_iter()
        .map(|(_, p)| p)
        .collect();
    assert_eq!(new.len(), 2);
    assert!(!l.generation_held(), "not all ready");
    let early = Input::GoLive {
        at_ms: 5,
        ahead: Duration::ZERO,
    };
    assert!(l.handle(early).is_empty(), "too early");
    l.handle(Input::Ready(new[0]));
    let out = l.handle(Input::Ready(new[1]));
    assert_eq!(
        events(&out),
        [LifecycleEvent::ReshardProgress { ready: 2, total: 2 }],
        "ready, and held: nothing switches"
    );
    assert!(l.generation_held());
    assert_eq!(
        l.live_process(&C0),
        Some(old[0]),
        "the old generation serves"
    );
    // The switch time is 800 ms ahead: the old generation handles what is created before it,
    // and retires only after it.
    let ahead = Duration::from_millis(800);
    let out = l.handle(Input::GoLive { at_ms: 1234, ahead });
    assert!(out.contains(&Command::Switch {
        old: old.clone(),
        new: new.clone(),
        at_ms: Some(1234),
    }));
    assert!(out.contains(&Command::Activate(new[0])));
    assert!(events(&out).is_empty(), "{out:?}");
    assert_eq!(l.poll_timeout(), Some(ahead + SWITCH_GUARD));
    let out = l.handle_timeout(ahead + SWITCH_GUARD);
    assert!(events(&out).contains(&LifecycleEvent::Resharded { clusters: 2 }));
    assert!(out.contains(&Command::Stop {
        process: old[0],
        grace: TIMEOUTS.kill
    }));
    assert_eq!(l.live_process(&WorkerId::Cluster(2)), Some(new[1]));
    assert!(!l.generation_held());
    l.handle(Input::Exited(old[0], Some(0)));
    assert!(
        l.worker(&C0).is_none(),
        "left out of the new plan: gone once exited"
    );
    assert_eq!(l.can_reshard(), Ok(()));
}

#[test]
fn a_held_generation_called_off_stops_and_the_old_one_serves_on() {
    let (mut l, old) = live_clusters(2);
    let new: Vec<ProcessId> = spawned(&l.handle(Input::ReshardTogether(vec![0])))
        .into_iter()
        .map(|(_, p)| p)
        .collect();
    l.handle(Input::Ready(new[0]));
    assert!(l.generation_held());
    let out = l.handle(Input::AbortReshard("host b failed".into()));
    assert!(out.contains(&Command::Stop {
        process: new[0],
        grace: TIMEOUTS.kill
    }));
    assert!(matches!(
        &events(&out)[..],
        [LifecycleEvent::ReshardFailed { reason }] if reason == "host b failed"
    ));
    assert!(
        l.handle(Input::GoLive {
            at_ms: 1,
            ahead: Duration::ZERO
        })
        .is_empty(),
        "nothing left to go live"
    );
    assert_eq!(l.live_process(&C0), Some(old[0]));
    assert_eq!(
        l.live_process(&WorkerId::Cluster(1)),
        Some(old[1]),
        "not retired"
    );
    assert_eq!(l.can_reshard(), Ok(()));
    assert!(
        l.handle(Input::AbortReshard("again".into())).is_empty(),
        "nothing to call off"
    );
}

#[test]
fn a_smaller_generation_retires_the_clusters_it_leaves_out() {
    let (mut l, old) = live_clusters(3);
    let new: Vec<ProcessId> = spawned(&l.handle(Input::Reshard(vec![0])))
        .into_iter()
        .map(|(_, p)| p)
        .collect();
    let out = l.handle(Input::Ready(new[0]));
    for p in &old {
        assert!(out.contains(&Command::Stop {
            process: *p,
            grace: TIMEOUTS.kill
        }));
    }
    let retired = WorkerId::Cluster(2);
    assert_eq!(l.worker(&retired).unwrap().state, State::Draining);
    l.handle(Input::Exited(old[2], Some(0)));
    assert!(
        l.worker(&retired).is_none(),
        "gone from the fleet once exited"
    );
    assert_eq!(l.workers().count(), 2, "cluster 1 still draining");
}

#[test]
fn a_failure_in_the_new_generation_keeps_the_old_one_serving() {
    let (mut l, old) = live_clusters(1);
    let new: Vec<ProcessId> = spawned(&l.handle(Input::Reshard(vec![0, 1])))
        .into_iter()
        .map(|(_, p)| p)
        .collect();
    l.handle(Input::Ready(new[0]));
    let out = l.handle(Input::StartFailed(new[1], "boom".into()));
    assert!(out.contains(&Command::Stop {
        process: new[0],
        grace: TIMEOUTS.kill
    }));
    assert!(matches!(
        &events(&out)[..],
        [LifecycleEvent::ReshardFailed { reason }] if reason.contains("boom")
    ));
    assert_eq!(l.live_process(&C0), Some(old[0]));
    assert!(
        l.worker(&WorkerId::Cluster(1)).is_none(),
        "the new-only cluster is gone"
    );
    assert_eq!(l.can_reshard(), Ok(()));
}

#[test]
fn with_a_notice_the_old_generation_serves_it_out_after_activation() {
    let (l, old) = live_clusters(1);
    let mut l = l.with_soft_kill_notice(Duration::from_secs(2));
    let new = spawned(&l.handle(Input::Reshard(vec![0])))[0].1;
    let (out, timed) = handle_timed(&mut l, Input::Ready(new));
    assert!(out.contains(&Command::Activate(new)));
    assert!(timed.contains(&(Timeout::Drain, Duration::from_secs(2))));
    assert!(!out.iter().any(|c| matches!(c, Command::Stop { .. })));
    assert_eq!(l.live_process(&C0), Some(old[0]));
    let out = l.handle(Input::DrainDue);
    assert!(out.contains(&Command::Stop {
        process: old[0],
        grace: TIMEOUTS.kill
    }));
    assert_eq!(l.live_process(&C0), Some(new));
}

#[test]
fn shutdown_during_a_reshard_fails_it_and_stops_both_generations() {
    let (mut l, old) = live_clusters(1);
    let new = spawned(&l.handle(Input::Reshard(vec![0])))[0].1;
    let out = l.handle(Input::Shutdown);
    assert!(out.contains(&Command::Stop {
        process: new,
        grace: TIMEOUTS.kill
    }));
    assert!(out.contains(&Command::Stop {
        process: old[0],
        grace: TIMEOUTS.kill
    }));
    assert!(
        events(&out)
            .iter()
            .any(|e| matches!(e, LifecycleEvent::ReshardFailed { .. }))
    );
}

#[test]
fn a_stopped_worker_stays_stopped_until_a_hard_restart_starts_it() {
    let (mut l, old) = live_cluster();
    assert_eq!(
        l.handle(Input::Stop(C0)),
        [Command::Stop {
            process: old,
            grace: TIMEOUTS.kill
        }]
    );
    assert_eq!(l.live_process(&C0), None, "unavailable while it drains");
    let out = l.handle(Input::Exited(old, Some(0)));
    assert_eq!(events(&out), [LifecycleEvent::WorkerStopped(C0)]);
    assert_eq!(l.worker(&C0).unwrap().state, State::Stopped);
    assert!(l.can_stop(&C0).is_err());
    assert!(
        l.can_restart(&C0, RestartMode::Handover).is_err(),
        "nothing to hand over"
    );
    let out = l.handle(Input::Restart(C0, RestartMode::Hard));
    let new = spawned(&out)[0].1;
    l.handle(Input::Ready(new));
    assert_eq!(l.live_process(&C0), Some(new));
}

#[test]
fn stopping_a_worker_in_backoff_cancels_its_restart() {
    let (l, p) = live_cluster();
    let mut l = l.with_restarts(RestartPolicy {
        max_restarts: 3,
        window: Duration::from_mins(1),
        backoff: Duration::from_secs(1),
        max_backoff: Duration::from_secs(1),
    });
    l.handle(Input::Exited(p, None));
    assert_eq!(l.worker(&C0).unwrap().state, State::Backoff);
    assert_eq!(
        events(&l.handle(Input::Stop(C0))),
        [LifecycleEvent::WorkerStopped(C0)]
    );
    assert!(l.handle(Input::RestartDue(C0)).is_empty());
    assert_eq!(l.worker(&C0).unwrap().state, State::Stopped);
}

#[test]
fn a_worker_stopped_now_is_killed_at_once_and_stays_stopped() {
    let (mut l, old) = live_cluster();
    assert_eq!(l.handle(Input::StopNow(C0)), [Command::Kill(old)]);
    assert_eq!(l.live_process(&C0), None, "unavailable at once");
    // Killed by a signal: a stop, not a crash to restart.
    let out = l.handle(Input::Exited(old, None));
    assert_eq!(events(&out), [LifecycleEvent::WorkerStopped(C0)]);
    assert_eq!(l.worker(&C0).unwrap().state, State::Stopped);
    // Nothing to stop twice.
    assert!(l.handle(Input::StopNow(C0)).is_empty());
}

fn spec(name: &str, depends_on: &[&str], start_timeout: Option<Duration>) -> ServiceSpec {
    ServiceSpec {
        name: name.to_owned(),
        kind: "kind".to_owned(),
        depends_on: depends_on.iter().map(|d| (*d).to_owned()).collect(),
        start_timeout,
        once_per_bot: false,
    }
}

#[test]
fn a_service_starts_after_those_it_depends_on_with_its_own_timeout_and_stops_before_them() {
    let slow = Duration::from_secs(90);
    let mut l = Lifecycle::new(
        [
            spec("db", &[], None),
            spec("api", &["db", "cache"], Some(slow)),
            spec("cache", &["db"], None),
        ],
        0..1,
        TIMEOUTS,
    );
    let (out, timed) = handle_timed(&mut l, Input::Launch);
    let db = spawned(&out);
    assert_eq!(
        db.iter().map(|(w, _)| w.clone()).collect::<Vec<_>>(),
        [service("db")]
    );
    assert!(timed.contains(&(Timeout::Start(db[0].1), TIMEOUTS.service_ready)));
    let cache = spawned(&l.handle(Input::Ready(db[0].1)));
    assert_eq!(
        cache.iter().map(|(w, _)| w.clone()).collect::<Vec<_>>(),
        [service("cache")]
    );
    let (out, timed) = handle_timed(&mut l, Input::Ready(cache[0].1));
    let api = spawned(&out);
    assert_eq!(
        api.iter().map(|(w, _)| w.clone()).collect::<Vec<_>>(),
        [service("api")]
    );
    assert!(
        timed.contains(&(Timeout::Start(api[0].1), slow)),
        "its own start timeout: {timed:?}"
    );
    let out = l.handle(Input::Ready(api[0].1));
    let cluster = spawned(&out)[0].1;
    l.handle(Input::Ready(cluster));

    // Shutdown: the cluster, then api (nothing depends on it), then cache, then db.
    l.handle(Input::Shutdown);
    let stops = |out: &[Command]| -> Vec<ProcessId> {
        out.iter()
            .filter_map(|c| match c {
                Command::Stop { process, .. } => Some(*process),
                _ => None,
            })
            .collect()
    };
    assert_eq!(
        stops(&l.handle(Input::Exited(cluster, Some(0)))),
        [api[0].1]
    );
    assert_eq!(
        stops(&l.handle(Input::Exited(api[0].1, Some(0)))),
        [cache[0].1]
    );
    assert_eq!(
        stops(&l.handle(Input::Exited(cache[0].1, Some(0)))),
        [db[0].1]
    );
    let out = l.handle(Input::Exited(db[0].1, Some(0)));
    assert!(events(&out).contains(&LifecycleEvent::Stopped));
}

#[test]
fn a_service_whose_dependency_failed_fails_without_stalling_the_launch() {
    let mut l = Lifecycle::new(
        [spec("db", &[], None), spec("api", &["db"], None)],
        0..1,
        TIMEOUTS,
    );
    let db = spawned(&l.handle(Input::Launch))[0].1;
    let out = l.handle(Input::StartFailed(db, "no disk".into()));
    let failed: Vec<_> = events(&out)
        .into_iter()
        .filter_map(|e| match e {
            LifecycleEvent::Failed { worker, reason } => Some((worker, reason)),
            _ => None,
        })
        .collect();
    assert_eq!(failed.len(), 2, "{failed:?}");
    assert_eq!(failed[1].0, service("api"));
    assert!(failed[1].1.contains("\"db\""), "{failed:?}");
    assert!(events(&out).contains(&LifecycleEvent::ServicesLaunched));
    assert_eq!(spawned(&out).len(), 1, "the cluster starts");
}

#[test]
fn a_service_added_at_runtime_starts_once_its_dependency_is_live_and_names_stay_unique() {
    let mut l = Lifecycle::new([spec("db", &[], None)], 0..0, TIMEOUTS);
    let db = spawned(&l.handle(Input::Launch))[0].1;
    l.handle(Input::Ready(db));
    assert!(
        l.can_add_service(&spec("db", &[], None))
            .unwrap_err()
            .contains("already exists")
    );
    assert!(
        l.can_add_service(&spec("x", &["nope"], None))
            .unwrap_err()
            .contains("does not exist")
    );
    let late = spec("late", &["db"], None);
    l.can_add_service(&late).unwrap();
    let out = l.handle(Input::AddService(late));
    let started = spawned(&out);
    assert_eq!(
        started.iter().map(|(w, _)| w.clone()).collect::<Vec<_>>(),
        [service("late")]
    );
    let out = l.handle(Input::Ready(started[0].1));
    assert_eq!(events(&out), [LifecycleEvent::Ready(service("late"))]);
    assert_eq!(l.service("late").unwrap().kind, "kind");

    // A stopped service's name may be taken again, but not into a circle.
    l.handle(Input::Stop(service("db")));
    l.handle(Input::Exited(db, Some(0)));
    assert_eq!(l.worker(&service("db")).unwrap().state, State::Stopped);
    assert!(
        l.can_add_service(&spec("db", &["late"], None))
            .unwrap_err()
            .contains("depends on it")
    );
    let again = spec("db", &[], Some(Duration::from_secs(3)));
    l.can_add_service(&again).unwrap();
    let (out, timed) = handle_timed(&mut l, Input::AddService(again));
    let db2 = spawned(&out)[0].1;
    assert!(timed.contains(&(Timeout::Start(db2), Duration::from_secs(3))));
    // Shutting down: nothing more is added.
    l.handle(Input::Shutdown);
    assert!(l.can_add_service(&spec("other", &[], None)).is_err());
}

#[test]
fn the_old_generation_stops_handling_events_a_moment_after_the_new_one_goes_live() {
    let notice = Duration::from_secs(1);
    let (l, old) = live_clusters(3);
    let mut l = l.with_soft_kill_notice(notice);
    let new: Vec<ProcessId> = spawned(&l.handle(Input::Reshard(vec![0, 1])))
        .into_iter()
        .map(|(_, p)| p)
        .collect();
    l.handle(Input::Ready(new[0]));
    let (out, timed) = handle_timed(&mut l, Input::Ready(new[1]));
    assert!(out.contains(&Command::Activate(new[0])) && out.contains(&Command::Activate(new[1])));
    let switch = out
        .iter()
        .position(|c| {
            *c == Command::Switch {
                old: old.clone(),
                new: new.clone(),
                at_ms: None,
            }
        })
        .expect("both generations hear the switch");
    assert!(
        switch
            < out
                .iter()
                .position(|c| matches!(c, Command::Activate(_)))
                .unwrap()
    );
    assert!(
        !out.iter().any(|c| matches!(c, Command::Deactivate(_))),
        "not at once"
    );
    assert!(
        timed.contains(&(Timeout::Deactivate, SWITCH_GUARD)),
        "{timed:?}"
    );
    assert!(timed.contains(&(Timeout::Drain, notice)), "{timed:?}");
    // After the guard: every old process, the retiring cluster 2's included, is deactivated.
    let out = l.handle_timeout(SWITCH_GUARD);
    let deactivated: Vec<ProcessId> = out
        .iter()
        .filter_map(|c| match c {
            Command::Deactivate(p) => Some(*p),
            _ => None,
        })
        .collect();
    assert_eq!(deactivated, old);
    assert!(
        !out.iter().any(|c| matches!(c, Command::Stop { .. })),
        "they stay connected"
    );
    // After the notice they drain.
    let out = l.handle_timeout(notice);
    for p in &old {
        assert!(out.contains(&Command::Stop {
            process: *p,
            grace: TIMEOUTS.kill
        }));
    }
}

// ---- crash resume ----------------------------------------------------------------------------

/// A checkpoint of `shards` at sequence `seq`, with `state` on the first shard.
fn checkpoint(shards: std::ops::Range<u32>, seq: u64, state: &str) -> Vec<ShardSession> {
    shards
        .map(|shard| ShardSession {
            sequence: seq,
            state: if state.is_empty() || shard > 0 {
                crate::Payload::empty()
            } else {
                crate::Payload::encode(&state).unwrap()
            },
            ..ShardSession::new(shard, format!("session-{shard}"), Some("ws://r".into()))
        })
        .collect()
}

#[test]
fn a_crashed_cluster_resumes_from_its_last_checkpoint() {
    let mut l = fleet(&[], 1).with_restarts(POLICY);
    let p = spawned(&l.handle(Input::Launch))[0].1;
    l.handle(Input::Hello(p));
    l.handle(Input::Checkpoint(p, checkpoint(0..2, 1, "ready")));
    l.handle(Input::Ready(p));
    // Later checkpoints move the sequence on and keep the state the session was opened with;
    // an empty session id forgets the shard.
    l.handle(Input::Checkpoint(p, checkpoint(0..2, 40, "")));
    l.handle(Input::Checkpoint(
        p,
        vec![ShardSession::new(1, String::new(), None)],
    ));
    assert_eq!(l.checkpointed(p), 1);
    let (_, timed) = handle_timed(&mut l, Input::Exited(p, None));
    assert_eq!(l.worker(&C0).unwrap().state, State::Backoff);
    assert_eq!(
        restart_timer(&timed),
        Some(Duration::ZERO),
        "sessions wait: no backoff for the first restart"
    );
    let next = spawned(&l.handle(Input::RestartDue(C0)))[0].1;
    let resume = l.take_resume(&C0);
    assert_eq!(resume.len(), 1);
    assert_eq!((resume[0].shard, resume[0].sequence), (0, 40));
    assert_eq!(resume[0].state.decode::<String>().unwrap(), "ready");
    assert!(l.take_resume(&C0).is_empty(), "a session is resumed once");
    // The dead process's checkpoints are gone; a late one from it is ignored.
    l.handle(Input::Checkpoint(p, checkpoint(0..2, 50, "")));
    assert_eq!(l.checkpointed(p), 0);
    l.handle(Input::Hello(next));
    l.handle(Input::Checkpoint(next, checkpoint(0..2, 3, "")));
    assert_eq!(l.checkpointed(next), 2);
    // A crash loop backs off from its second restart, sessions or not.
    l.handle(Input::Ready(next));
    let (_, timed) = handle_timed(&mut l, Input::Exited(next, None));
    assert_eq!(restart_timer(&timed), Some(POLICY.backoff_for(2)));
    assert_eq!(l.take_resume(&C0).len(), 2, "it still resumes");
}

#[test]
fn a_stopped_or_hard_restarted_cluster_resumes_nothing() {
    let (mut l, p) = live_cluster();
    l.handle(Input::Checkpoint(p, checkpoint(0..2, 9, "")));
    let out = l.handle(Input::Restart(C0, RestartMode::Hard));
    let next = spawned(&out)[0].1;
    l.handle(Input::Exited(p, None));
    assert!(
        l.take_resume(&C0).is_empty(),
        "a hard restart starts afresh"
    );
    l.handle(Input::Hello(next));
    l.handle(Input::Ready(next));
    l.handle(Input::Checkpoint(next, checkpoint(0..2, 9, "")));
    l.handle(Input::Stop(C0));
    l.handle(Input::Exited(next, Some(0)));
    assert!(l.take_resume(&C0).is_empty(), "a stop closes the sessions");
    assert_eq!(l.checkpointed(next), 0);
}

#[test]
fn an_old_process_dying_before_it_hands_over_passes_its_checkpoints_on() {
    let (mut l, old) = live_cluster();
    l.handle(Input::Checkpoint(old, checkpoint(0..2, 7, "")));
    let new = spawned(&l.handle(Input::Restart(C0, RestartMode::Handover)))[0].1;
    l.handle(Input::Prepared(new));
    let out = l.handle(Input::Exited(old, None));
    assert!(
        out.contains(&Command::SendSessions {
            to: new,
            sessions: checkpoint(0..2, 7, "")
        }),
        "{out:?}"
    );
}

#[test]
fn handed_over_sessions_are_no_longer_the_old_processes_to_resume() {
    let (mut l, old) = live_cluster();
    l.handle(Input::Checkpoint(old, checkpoint(0..2, 7, "")));
    let new = spawned(&l.handle(Input::Restart(C0, RestartMode::Handover)))[0].1;
    l.handle(Input::Prepared(new));
    l.handle(Input::SessionsHandedOver(old, sessions(0..2)));
    assert_eq!(l.checkpointed(old), 0);
}

#[test]
fn adopted_workers_are_live_and_the_launch_spawns_only_the_rest() {
    let mut l = fleet(&["db"], 3);
    // The lost admiral's processes: the service ready, cluster 0 ready, cluster 1 still starting.
    let out = l.handle(Input::Adopt {
        worker: service("db"),
        process: 7,
        ready: true,
    });
    assert_eq!(events(&out), [LifecycleEvent::Ready(service("db"))]);
    l.handle(Input::Adopt {
        worker: WorkerId::Cluster(0),
        process: 9,
        ready: true,
    });
    let (_, timed) = handle_timed(
        &mut l,
        Input::Adopt {
            worker: WorkerId::Cluster(1),
            process: 8,
            ready: false,
        },
    );
    assert_eq!(timed, [(Timeout::Start(8), TIMEOUTS.cluster_ready)]);
    assert_eq!(
        l.worker(&WorkerId::Cluster(1)).unwrap().state,
        State::Starting
    );
    // Taken: the same worker, or the same number, again.
    assert!(l.can_adopt(&WorkerId::Cluster(0), 10).is_err());
    assert!(l.can_adopt(&WorkerId::Cluster(2), 9).is_err());
    assert!(
        l.can_adopt(&WorkerId::Cluster(5), 11).is_err(),
        "not in the plan"
    );
    assert!(l.can_adopt(&WorkerId::Cluster(2), 0).is_err());
    assert!(
        l.can_adopt(&WorkerId::Cluster(2), u64::MAX).is_err(),
        "no number that leaves no room"
    );

    let out = l.handle(Input::Launch);
    // Only cluster 2 is spawned, numbered past every adopted process.
    assert_eq!(spawned(&out), [(WorkerId::Cluster(2), 10)]);
    l.handle(Input::Ready(8));
    let out = l.handle(Input::Ready(10));
    assert!(
        events(&out).contains(&LifecycleEvent::AllReady { live: 4, failed: 0 }),
        "{out:?}"
    );
    // Once launched, nobody more is adopted.
    assert!(l.can_adopt(&WorkerId::Cluster(2), 20).is_err());
    // An adopted process that dies is a crash like any other.
    let out = l.handle(Input::Exited(9, None));
    assert!(
        events(&out)
            .iter()
            .any(|e| matches!(e, LifecycleEvent::Failed { worker, .. } if *worker == WorkerId::Cluster(0))),
        "{out:?}"
    );
}

// ---- several hosts: ranges taken, fenced and lost ---------------------------------------------

const POLICY_ONCE: RestartPolicy = RestartPolicy {
    max_restarts: 3,
    window: Duration::from_mins(1),
    backoff: Duration::from_secs(1),
    max_backoff: Duration::from_secs(4),
};

#[test]
fn a_host_with_no_cluster_yet_starts_each_one_it_takes_resuming_its_sessions() {
    let mut l = fleet(&["cache"], 0);
    let cache = spawned(&l.handle(Input::Launch))[0].1;
    // Taken during the launch: it waits for the services like any cluster.
    assert!(
        spawned(&l.handle(Input::Take {
            cluster: 3,
            resume: sessions(6..8)
        }))
        .is_empty()
    );
    let out = l.handle(Input::Ready(cache));
    let c3 = WorkerId::Cluster(3);
    assert_eq!(spawned(&out), [(c3.clone(), cache + 1)]);
    assert_eq!(
        l.take_resume(&c3),
        sessions(6..8),
        "the last owner's sessions"
    );
    l.handle(Input::Ready(cache + 1));
    // Taken while running: at once. Taken again: nothing.
    let out = l.handle(Input::Take {
        cluster: 5,
        resume: Vec::new(),
    });
    assert_eq!(spawned(&out), [(WorkerId::Cluster(5), cache + 2)]);
    assert!(
        l.handle(Input::Take {
            cluster: 5,
            resume: Vec::new()
        })
        .is_empty()
    );
    assert!(
        l.handle(Input::Take {
            cluster: 3,
            resume: Vec::new()
        })
        .is_empty()
    );
}

#[test]
fn a_fenced_host_holds_every_clusters_sessions_and_gives_them_back_when_unfenced() {
    let (mut l, ps) = live_clusters(2);
    let out = l.handle(Input::Fence);
    assert_eq!(
        out,
        [
            Command::RequestSessions {
                from: ps[0],
                to: ps[0]
            },
            Command::RequestSessions {
                from: ps[1],
                to: ps[1]
            },
        ]
    );
    assert!(l.is_fenced());
    assert!(l.handle(Input::Fence).is_empty(), "fenced once");
    // The sessions stay here: nothing resumes them while fenced.
    assert!(
        l.handle(Input::SessionsHandedOver(ps[0], sessions(0..2)))
            .is_empty()
    );
    assert!(
        l.handle(Input::SessionsHandedOver(ps[1], sessions(2..4)))
            .is_empty()
    );
    assert_eq!(l.can_soft_restart(&C0), Err(FENCED.into()));
    assert_eq!(l.can_reshard(), Err(FENCED.into()));
    let out = l.handle(Input::Unfence);
    assert_eq!(
        out,
        [
            Command::SendSessions {
                to: ps[0],
                sessions: sessions(0..2)
            },
            Command::SendSessions {
                to: ps[1],
                sessions: sessions(2..4)
            },
        ]
    );
    assert!(!l.is_fenced());
    assert!(l.handle(Input::Unfence).is_empty());
    assert_eq!(l.can_soft_restart(&C0), Ok(()));
}

#[test]
fn sessions_of_a_range_lost_while_fenced_never_go_back_to_its_process() {
    let (mut l, ps) = live_clusters(2);
    l.handle(Input::Fence);
    // The claim after the renewal: range 0 is another host's now, range 1 still this one's.
    let out = l.handle(Input::Lose(0));
    assert!(
        out.iter()
            .any(|c| matches!(c, Command::Stop { process, .. } if *process == ps[0])),
        "{out:?}"
    );
    assert!(l.handle(Input::Unfence).is_empty(), "nothing held yet");
    // The fence's handovers arrive only now: the lost range's sessions are the other host's.
    assert!(
        l.handle(Input::SessionsHandedOver(ps[0], sessions(0..2)))
            .is_empty()
    );
    assert_eq!(
        l.handle(Input::SessionsHandedOver(ps[1], sessions(2..4))),
        [Command::SendSessions {
            to: ps[1],
            sessions: sessions(2..4)
        }]
    );
}

#[test]
fn a_cluster_that_crashes_while_fenced_restarts_only_when_unfenced_with_the_held_sessions() {
    let (l, ps) = live_clusters(1);
    let mut l = l.with_restarts(POLICY_ONCE);
    l.handle(Input::Fence);
    l.handle(Input::SessionsHandedOver(ps[0], sessions(0..2)));
    let (_, timed) = handle_timed(&mut l, Input::Exited(ps[0], None));
    assert_eq!(restart_timer(&timed), Some(Duration::ZERO), "sessions wait");
    let out = l.handle_timeout(Duration::ZERO);
    assert!(spawned(&out).is_empty(), "no shard connects while fenced");
    // Taken while fenced: it waits too.
    assert!(
        spawned(&l.handle(Input::Take {
            cluster: 1,
            resume: Vec::new()
        }))
        .is_empty()
    );
    let out = l.handle(Input::Unfence);
    let started: Vec<WorkerId> = spawned(&out).into_iter().map(|(w, _)| w).collect();
    assert_eq!(started, [C0, WorkerId::Cluster(1)]);
    assert_eq!(l.take_resume(&C0), sessions(0..2), "what it handed over");
}

#[test]
fn fencing_calls_off_a_handover_and_holds_the_sessions_for_the_old_process() {
    let (mut l, old) = live_cluster();
    let new = spawned(&l.handle(Input::Restart(C0, RestartMode::Handover)))[0].1;
    l.handle(Input::Prepared(new));
    l.handle(Input::SessionsHandedOver(old, sessions(0..2)));
    let out = l.handle(Input::Fence);
    assert_eq!(
        out,
        [Command::Stop {
            process: new,
            grace: TIMEOUTS.kill
        }],
        "the replacement goes; the old process closed its shards already"
    );
    assert_eq!(l.live_process(&C0), Some(old));
    assert_eq!(
        l.handle(Input::Unfence),
        [Command::SendSessions {
            to: old,
            sessions: sessions(0..2)
        }]
    );
}

#[test]
fn a_lost_cluster_stops_and_leaves_the_fleet_without_resuming_anything() {
    let (mut l, ps) = live_clusters(2);
    l.handle(Input::Fence);
    l.handle(Input::SessionsHandedOver(ps[1], sessions(2..4)));
    let out = l.handle(Input::Lose(1));
    assert!(out.contains(&Command::Stop {
        process: ps[1],
        grace: TIMEOUTS.kill
    }));
    assert!(events(&out).contains(&LifecycleEvent::WorkerStopped(WorkerId::Cluster(1))));
    assert!(l.handle(Input::Exited(ps[1], Some(0))).is_empty());
    assert!(
        l.worker(&WorkerId::Cluster(1)).is_none(),
        "gone from this host"
    );
    let out = l.handle(Input::Unfence);
    assert!(
        out.iter()
            .all(|c| !matches!(c, Command::SendSessions { to, .. } if *to == ps[1])),
        "{out:?}"
    );
    // Taken back later: a fresh process.
    let out = l.handle(Input::Take {
        cluster: 1,
        resume: Vec::new(),
    });
    assert_eq!(spawned(&out).len(), 1);
}

#[test]
fn a_service_on_every_host_may_not_depend_on_one_run_once_per_bot() {
    let mut once = spec("poster", &[], None);
    once.once_per_bot = true;
    let every = spec("cache", &["poster"], None);
    let refused = ServiceSpec::check_all(&[once.clone(), every]).unwrap_err();
    assert!(refused.contains("runs once per bot"), "{refused}");
    // The other way round waits on a service every host runs: fine.
    let mut after = spec("after", &["cache"], None);
    after.once_per_bot = true;
    ServiceSpec::check_all(&[once, spec("cache", &[], None), after]).unwrap();
}
