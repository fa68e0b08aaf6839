//! One bot on several hosts, through a real Redis: identifies paced for the whole fleet (two
//! hosts started together never identify two shards of one bucket closer than Discord's
//! interval), ranges assigned in Redis, a killed host's ranges resumed on another, and a host
//! cut from Redis fencing itself before anyone takes its shards over.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use carrier::admiral::ShardCount;
use carrier::identify::fleetwide::{RedisIdentifyConfig, RedisIdentifyQueue};
use carrier::identify::{IdentifyQueue, SessionBudget};
use common::{WAIT, launch, mock_builder, options};
use discord_mock::MockDiscord;
use fleet_tests::redis::RedisServer;

/// The tests' gateway, with heartbeats every 2 s rather than every 500 ms. The shards of a
/// cluster handle their events in order, and twilight sends a heartbeat only while polled; a
/// cluster of a host that was just stopped or killed replays a backlog through user code that
/// makes REST calls, and on a loaded machine that took more than 500 ms now and then. twilight
/// then took the connection for a zombie and resumed once more, which these tests, counting
/// every resume, must not mistake for a shard resumed twice by two hosts.
fn mock_config(guilds: usize, shards: u32, max_concurrency: u32) -> discord_mock::MockConfig {
    mock_builder(guilds, shards, max_concurrency)
        .heartbeat_interval(Duration::from_secs(2))
        .build()
}

const WINDOW: Duration = Duration::from_millis(300);

fn config(fleet_id: &str, remaining: u32, reset_after: Duration) -> RedisIdentifyConfig {
    RedisIdentifyConfig {
        fleet_id: fleet_id.to_owned(),
        max_concurrency: 2,
        window: WINDOW,
        budget: SessionBudget {
            total: 1000,
            remaining,
            reset_after,
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_sharing_redis_keep_each_buckets_pace_and_one_budget() {
    let redis = RedisServer::start().await;
    let day = Duration::from_hours(24);
    let a = RedisIdentifyQueue::connect(&redis.url(), config("pace", 1000, day))
        .await
        .unwrap();
    let b = RedisIdentifyQueue::connect(&redis.url(), config("pace", 1000, day))
        .await
        .unwrap();
    // Six shards a host, three in each bucket, all asking at once.
    let started = Instant::now();
    let grants = futures::future::join_all((0..12u32).map(|shard| {
        let acquire = if shard < 6 {
            a.acquire(shard)
        } else {
            b.acquire(shard)
        };
        async move {
            acquire.await;
            (shard % 2, started.elapsed())
        }
    }))
    .await;
    let mut by_bucket: BTreeMap<u32, Vec<Duration>> = BTreeMap::new();
    for (bucket, at) in grants {
        by_bucket.entry(bucket).or_default().push(at);
    }
    for (bucket, mut times) in by_bucket {
        times.sort();
        assert_eq!(times.len(), 6);
        for pair in times.windows(2) {
            // Each reservation's wait is measured on Redis's clock and slept on ours: a reply's
            // trip can bring two grants a few milliseconds closer than the window, never more.
            assert!(
                pair[1].saturating_sub(pair[0]) + Duration::from_millis(25) >= WINDOW,
                "bucket {bucket}: {times:?}"
            );
        }
    }
    // One budget for both hosts.
    let left = [a.stats(), b.stats()]
        .iter()
        .filter_map(|s| s.sessions_remaining)
        .min();
    assert_eq!(left, Some(1000 - 12));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_dies_holding_an_identify_reservation_blocks_nobody() {
    let redis = RedisServer::start().await;
    let day = Duration::from_hours(24);
    let dying = RedisIdentifyQueue::connect(&redis.url(), config("reserved", 1000, day))
        .await
        .unwrap();
    // Granted, and the host dies before its shard is READY: nothing ever confirms the grant.
    dying.acquire(0).await;
    let granted = Instant::now();
    drop(dying);
    let living = RedisIdentifyQueue::connect(&redis.url(), config("reserved", 1000, day))
        .await
        .unwrap();
    tokio::time::timeout(WAIT, living.acquire(2))
        .await
        .expect("the bucket's next shard goes without the dead host's READY");
    assert!(
        granted.elapsed() + Duration::from_millis(25) >= WINDOW,
        "a window after the dead host's grant, still: {:?}",
        granted.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_budget_makes_identifies_wait_for_its_refill() {
    let redis = RedisServer::start().await;
    let queue = RedisIdentifyQueue::connect(
        &redis.url(),
        config("budget", 1, Duration::from_millis(600)),
    )
    .await
    .unwrap();
    let started = Instant::now();
    queue.acquire(0).await;
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "one was left"
    );
    tokio::time::timeout(WAIT, queue.acquire(1)).await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(550),
        "the second waited for the refill: {:?}",
        started.elapsed()
    );
    // The refilled budget, less the one just spent.
    assert_eq!(queue.stats().sessions_remaining, Some(999));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_redis_fails_the_start_and_never_shows_its_password() {
    let mock = MockDiscord::start(mock_config(4, 2, 1)).await.unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut options = options(&mock, 1);
    options.redis_url = Some(format!("redis://fleet:hunter2@127.0.0.1:{closed}/0"));
    let error = fleet_tests::fleet(options)
        .run()
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains(&format!("127.0.0.1:{closed}")), "{error}");
    assert!(!error.contains("hunter2"), "{error}");
    assert_eq!(mock.stats().identifies, 0, "nothing started");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_each_running_half_the_shards_identify_within_discords_limit() {
    let mock = MockDiscord::start(mock_config(16, 8, 2)).await.unwrap();
    let redis = RedisServer::start().await;
    let host = |first: u32, last: u32| {
        let mut options = options(&mock, 2);
        options.shards = ShardCount::Exact(8);
        options.first_shard = Some(first);
        options.last_shard = Some(last);
        options.redis_url = Some(redis.url());
        options.host_id = Some(format!("host-{first}"));
        options
    };
    // Both hosts start at the same moment: each one's first shard of a bucket would identify
    // at once, together.
    let (a, b) = tokio::join!(
        launch(fleet_tests::fleet(host(0, 3))),
        launch(fleet_tests::fleet(host(4, 7)))
    );
    let (a, b) = (a.0, b.0);
    a.wait_ready(WAIT).await.unwrap();
    b.wait_ready(WAIT).await.unwrap();
    let stats = mock.stats();
    assert_eq!(stats.identifies, 8);
    assert_eq!(stats.total_violations(), 0, "{:?}", stats.violations);
    let (sa, sb) = (a.stats().await.unwrap(), b.stats().await.unwrap());
    assert_eq!(
        (sa.shard_count, sb.shard_count),
        (4, 4),
        "each host runs its half"
    );
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identifies_wait_while_redis_is_down_and_go_on_when_it_is_back() {
    let mut redis = RedisServer::start().await;
    let queue = RedisIdentifyQueue::connect(
        &redis.url(),
        config("outage", 1000, Duration::from_hours(24)),
    )
    .await
    .unwrap();
    queue.acquire(0).await;
    redis.kill();
    // Nothing paces identifies now: the next one waits rather than going alone.
    let mut waiting = queue.acquire(2);
    assert!(
        tokio::time::timeout(Duration::from_millis(1500), &mut waiting)
            .await
            .is_err(),
        "no identify without Redis"
    );
    assert_eq!(queue.stats().waiting, 1);
    // Back, empty (as after a crash without persistence): the waiting one goes, and the budget
    // is seeded again.
    let _redis = redis.restart_empty().await;
    tokio::time::timeout(WAIT, waiting)
        .await
        .expect("it goes once Redis is back");
    assert_eq!(queue.stats().waiting, 0);
    assert_eq!(queue.stats().sessions_remaining, Some(999));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_admiral_with_a_running_hosts_id_refuses_to_start() {
    let mock = MockDiscord::start(mock_config(4, 2, 1)).await.unwrap();
    let redis = RedisServer::start().await;
    let host = |id: &str| {
        let mut options = options(&mock, 1);
        options.redis_url = Some(redis.url());
        options.host_id = Some(id.to_owned());
        options
    };
    let (first, _) = launch(fleet_tests::fleet(host("east"))).await;
    first.wait_ready(WAIT).await.unwrap();
    attached(&mock, 2, "the first host runs the bot").await;
    let identifies = mock.stats().identifies;
    // Another machine given the same id: refused before it starts anything.
    let refused = fleet_tests::fleet(host("east"))
        .run()
        .await
        .unwrap_err()
        .to_string();
    assert!(refused.contains("\"east\" is held"), "{refused}");
    assert_eq!(mock.stats().identifies, identifies, "it identified nothing");
    // A clean stop gives the id up at once.
    first.shutdown().await;
    let (again, _) = launch(fleet_tests::fleet(host("east"))).await;
    again.wait_ready(WAIT).await.unwrap();
    again.shutdown().await;
}

/// Waits until the mock holds `sessions` sessions, each with a connection.
async fn attached(mock: &MockDiscord, sessions: usize, what: &str) {
    mock.wait_until(WAIT, what, |m| {
        let all = m.sessions();
        all.len() == sessions && all.iter().all(|s| s.attached)
    })
    .await
    .unwrap();
}

/// The Redis keys of shards `shards`' checkpoints (of a bot of 4 shards), in fleet `fleet`.
fn checkpoint_keys(fleet: &str, shards: std::ops::Range<u32>) -> Vec<String> {
    shards
        .map(|shard| format!("fleet:{{{fleet}}}:shard:4:{shard}"))
        .collect()
}

/// Waits until every shard of `shards` has a checkpoint in Redis.
async fn checkpointed(redis: &RedisServer, fleet: &str, shards: std::ops::Range<u32>) {
    let keys = checkpoint_keys(fleet, shards);
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    let written = tokio::time::timeout(WAIT, async {
        while redis.exists(&keys).await < keys.len() as u64 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(written.is_ok(), "every session checkpointed in Redis");
}

/// The pids of `pid`'s child processes.
fn children(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| {
            std::fs::read_to_string(format!("/proc/{child}/stat")).is_ok_and(|stat| {
                let after = stat.rsplit(')').next().unwrap_or("");
                after.split_whitespace().nth(1) == Some(&pid.to_string())
            })
        })
        .collect()
}

/// Which worker process `pid` is (its `FLEET_WORKER`), if it runs.
fn worker_name(pid: u32) -> Option<String> {
    worker_env(pid, "FLEET_WORKER")
}

/// The variable `key` of process `pid`'s environment, if it runs.
fn worker_env(pid: u32, key: &str) -> Option<String> {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    let prefix = format!("{key}=");
    environ
        .split(|b| *b == 0)
        .filter_map(|var| std::str::from_utf8(var).ok())
        .find_map(|var| var.strip_prefix(prefix.as_str()))
        .map(str::to_owned)
}

/// Sends `signal` (`-KILL`, `-STOP`) to each of `pids`.
fn signal_all(pids: &[u32], signal: &str) {
    for pid in pids {
        let _ = std::process::Command::new("kill")
            .args([signal, &pid.to_string()])
            .status();
    }
}

/// An admiral process and its output.
type HostProcess = (
    tokio::process::Child,
    tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
);

/// Spawns one host of fleet `fleet` as an admiral process.
async fn spawn_host(
    mock: &MockDiscord,
    redis: &str,
    fleet: &str,
    host: &str,
    capacity: u32,
) -> HostProcess {
    let capacity = capacity.to_string();
    let env = [
        ("TESTBOT_REDIS_URL", redis),
        ("TESTBOT_FLEET_ID", fleet),
        ("TESTBOT_HOST_ID", host),
        ("TESTBOT_HOST_CAPACITY", capacity.as_str()),
        ("TESTBOT_HOST_LEASE_MS", LEASE_MS),
        ("TESTBOT_HOST_REBALANCE", "0"),
    ];
    let (admiral, _, lines) = common::spawn_admiral_with(mock, 2, None, &env).await;
    (admiral, lines)
}

/// Host processes a (with room for one range) and b of fleet `fleet`, once they run the bot,
/// every session is checkpointed and Discord's events flow.
async fn two_host_processes(
    mock: &MockDiscord,
    redis: &RedisServer,
    fleet: &str,
) -> (HostProcess, HostProcess) {
    let a = spawn_host(mock, &redis.url(), fleet, "a", 1).await;
    attached(mock, 2, "host a runs its range").await;
    let b = spawn_host(mock, &redis.url(), fleet, "b", 2).await;
    attached(mock, 4, "host b runs the other range").await;
    checkpointed(redis, fleet, 0..4).await;
    events_flow(mock).await;
    (a, b)
}

/// Starts Discord's events and waits until some are delivered.
async fn events_flow(mock: &MockDiscord) {
    mock.start_events(Some(20.0)).unwrap();
    let delivered = mock.event_report().delivered;
    mock.wait_until(WAIT, "events flow", |m| {
        m.event_report().delivered > delivered + 20
    })
    .await
    .unwrap();
}

/// Options of one host of fleet `fleet` in this process, on the Redis at `url`.
fn host_options(
    mock: &MockDiscord,
    url: String,
    fleet: &str,
    host: &str,
    capacity: u32,
) -> carrier::FleetOptions {
    let mut options = options(mock, 2);
    options.redis_url = Some(url);
    options.fleet_id = Some(fleet.to_owned());
    options.host_id = Some(host.to_owned());
    options.host_capacity = Some(capacity);
    options.host_lease_ttl = Duration::from_millis(LEASE_MS.parse().unwrap());
    // The whole bot's central store (in Redis) holds a mebibyte.
    options.store_limit = 1 << 20;
    // The fault tests count each move: a host that comes back gets no range back.
    options.host_rebalance = false;
    options
}

/// Each live cluster of an admiral and its pid.
async fn cluster_pids(admiral: &carrier::AdmiralHandle) -> BTreeMap<u32, u32> {
    admiral
        .workers()
        .await
        .unwrap_or_default()
        .iter()
        .filter(|w| w.state == carrier::admiral::State::Live)
        .filter_map(|w| match w.id {
            carrier::WorkerId::Cluster(c) => Some((c, w.pid?)),
            carrier::WorkerId::Service(_) => None,
        })
        .collect()
}

/// Starts two hosts of fleet `fleet` in this process (a on `a_url` with room for one range, b
/// on `b_url`), waits until they run the bot and every session is checkpointed, and starts
/// Discord's events.
async fn two_hosts(
    mock: &MockDiscord,
    redis: &RedisServer,
    fleet: &str,
    a_url: String,
) -> (carrier::AdmiralHandle, carrier::AdmiralHandle) {
    two_hosts_of(mock, redis, fleet, a_url, fleet_tests::fleet).await
}

/// [`two_hosts`], each host's fleet made by `make`.
async fn two_hosts_of(
    mock: &MockDiscord,
    redis: &RedisServer,
    fleet: &str,
    a_url: String,
    make: fn(carrier::FleetOptions) -> carrier::Fleet,
) -> (carrier::AdmiralHandle, carrier::AdmiralHandle) {
    let (a, _) = launch(make(host_options(mock, a_url, fleet, "a", 1))).await;
    attached(mock, 2, "host a runs its range").await;
    let (b, _) = launch(make(host_options(mock, redis.url(), fleet, "b", 2))).await;
    attached(mock, 4, "host b runs the other range").await;
    checkpointed(redis, fleet, 0..4).await;
    events_flow(mock).await;
    (a, b)
}

/// Lets events flow a while longer, stops them, and waits until every one is confirmed.
async fn drain_events(mock: &MockDiscord, what: &str) {
    let delivered = mock.event_report().delivered;
    mock.wait_until(WAIT, what, |m| m.event_report().delivered > delivered + 20)
        .await
        .unwrap();
    mock.stop_events();
    mock.wait_until(WAIT, "every event confirmed", |m| {
        m.event_report().in_flight == 0
    })
    .await
    .unwrap();
}

/// Checks what the mock counted since `before`: no identify, `resumes` more resumes (each
/// moved session resumed once, none taken back), no rule broken, one live session a shard,
/// nothing lost, at most `duplicates` events confirmed twice.
fn assert_costs(mock: &MockDiscord, before: &discord_mock::Stats, resumes: u64, duplicates: u64) {
    let after = mock.stats();
    assert_eq!(
        after.identifies, before.identifies,
        "no shard identified again"
    );
    let sessions = mock.sessions();
    assert_eq!(
        after.resumes,
        before.resumes + resumes,
        "resumes; closes sent {:?} received {:?} (before: {:?} {:?}); sessions {sessions:?}",
        after.closes_sent,
        after.closes_received,
        before.closes_sent,
        before.closes_received,
    );
    assert_eq!(after.total_violations(), 0, "{:?}", after.violations);
    let shards: std::collections::BTreeSet<u32> = sessions.iter().map(|s| s.shard[0]).collect();
    assert!(
        shards.len() == sessions.len() && sessions.iter().all(|s| s.attached),
        "one live session a shard: {sessions:?}"
    );
    let report = mock.event_report();
    assert_eq!(report.lost, 0, "{report:?}");
    assert!(report.duplicates <= duplicates, "{report:?}");
}

/// Waits until a Redis key exists (`true`) or is gone (`false`).
async fn key_until(redis: &RedisServer, key: &str, exists: bool) {
    let waited = tokio::time::timeout(WAIT, async {
        while (redis.exists(&[key]).await == 1) != exists {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "{key} exists: {exists}");
}

/// Waits until a condition of the admiral's workers holds.
async fn workers_until(
    admiral: &carrier::AdmiralHandle,
    what: &str,
    done: impl Fn(&[carrier::admiral::WorkerStatus]) -> bool,
) {
    let waited = tokio::time::timeout(WAIT, async {
        loop {
            if done(&admiral.workers().await.unwrap_or_default()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "{what}");
}

/// The clusters among `workers`.
fn clusters(workers: &[carrier::admiral::WorkerStatus]) -> Vec<u32> {
    workers
        .iter()
        .filter_map(|w| match w.id {
            carrier::WorkerId::Cluster(c) => Some(c),
            carrier::WorkerId::Service(_) => None,
        })
        .collect()
}

/// The lease the fault tests give each host: a fence 4.8 s and a takeover 6.8 s after a host's
/// last renewal.
const LEASE_MS: &str = "6000";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_hosts_range_resumes_on_another_host_with_no_identify_and_nothing_lost() {
    let redis = RedisServer::start().await;
    let mock = MockDiscord::start(mock_config(8, 4, 1)).await.unwrap();
    let ((mut a, _a_lines), (mut b, _b_lines)) =
        two_host_processes(&mock, &redis, "takeover").await;
    let before = mock.stats();
    assert_eq!(before.identifies, 4);

    // Host a dies at once, workers and all, as in a power cut: frozen first, so that its
    // admiral restarts no worker and no worker closes its shards when it sees another go.
    let pid = a.id().unwrap();
    signal_all(&[pid], "-STOP");
    let workers = children(pid);
    assert!(
        workers.len() >= 2,
        "a cluster and the echo service: {workers:?}"
    );
    signal_all(&workers, "-STOP");
    signal_all(&workers, "-KILL");
    a.start_kill().unwrap();
    a.wait().await.unwrap();
    mock.wait_until(
        WAIT,
        "host a's sessions are left without a connection",
        |m| m.sessions().iter().filter(|s| !s.attached).count() == 2,
    )
    .await
    .unwrap();

    // Host b takes the range once a's lease is over, and resumes both sessions.
    mock.wait_until(WAIT, "host b resumes host a's sessions", |m| {
        m.stats().resumes >= before.resumes + 2 && m.sessions().iter().all(|s| s.attached)
    })
    .await
    .unwrap();
    drain_events(&mock, "events flow after the takeover").await;

    // A resume replays what came after the last checkpoint Redis holds: at most about two
    // checkpoint intervals (the cluster's and the host's write) of 20 events a second.
    assert_costs(&mock, &before, 2, 80);

    let b_pid = b.id().unwrap().to_string();
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &b_pid])
        .status();
    tokio::time::timeout(WAIT, b.wait()).await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_cut_from_redis_fences_itself_before_its_range_resumes_elsewhere_and_never_comes_back()
 {
    use fleet_tests::faults::{Fault, FaultProxy};
    let redis = RedisServer::start().await;
    let proxy = FaultProxy::start(redis.addr()).await;
    let mock = MockDiscord::start(mock_config(8, 4, 1)).await.unwrap();
    let through_proxy = format!("redis://{}/0", proxy.addr());
    let (a, b) = two_hosts(&mock, &redis, "fence", through_proxy).await;
    let a_range = clusters(&a.workers().await.unwrap());
    assert_eq!(a_range.len(), 1, "{a_range:?}");
    let before = mock.stats();

    // Host a loses Redis, not Discord: it fences itself (its shards close resumably) while its
    // lease still holds, so before b may take the range.
    proxy.set(Fault::Blackhole);
    // Stats asked on b meanwhile come without a's snapshot, saying so, and in time.
    let partial = tokio::spawn({
        let ipc = b.ipc().clone();
        async move { ipc.stats().await }
    });
    mock.wait_until(WAIT, "host a fences its shards", |m| {
        m.sessions().iter().filter(|s| !s.attached).count() == 2
    })
    .await
    .unwrap();
    assert_eq!(
        mock.stats().resumes,
        before.resumes,
        "nobody resumed a's sessions before it fenced them"
    );
    mock.wait_until(WAIT, "host b resumes a's sessions", |m| {
        m.stats().resumes >= before.resumes + 2 && m.sessions().iter().all(|s| s.attached)
    })
    .await
    .unwrap();
    workers_until(&b, "host b runs both ranges", |w| clusters(w).len() == 2).await;
    let partial = partial.await.unwrap().unwrap();
    assert_eq!(partial.hosts, vec!["b".to_owned()]);
    assert_eq!(partial.missing_hosts, vec!["a".to_owned()]);

    // Redis is back for a: it learns the range is b's and stops its cluster, resuming nothing.
    proxy.set(Fault::Pass);
    workers_until(&a, "host a lets its old range go", |w| {
        clusters(w).is_empty()
    })
    .await;
    drain_events(&mock, "events flow after the takeover").await;
    assert_costs(&mock, &before, 2, 80);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_stopped_past_its_lease_comes_back_fenced_and_never_takes_its_sessions_back() {
    let redis = RedisServer::start().await;
    let mock = MockDiscord::start(mock_config(8, 4, 1)).await.unwrap();
    let ((a, _a_lines), (mut b, _b_lines)) = two_host_processes(&mock, &redis, "paused").await;
    let before = mock.stats();

    // Host a stops dead (SIGSTOP of its admiral and workers) for longer than its lease: its
    // connections stay open but answer nothing, and b takes the range over.
    let pid = a.id().unwrap();
    let mut host = children(pid);
    let cluster: Vec<u32> = host
        .iter()
        .copied()
        .filter(|p| worker_name(*p).is_some_and(|w| w.starts_with("cluster-")))
        .collect();
    assert_eq!(cluster.len(), 1, "host a runs one cluster");
    host.push(pid);
    signal_all(&host, "-STOP");
    mock.wait_until(WAIT, "host b resumes a's sessions", |m| {
        m.stats().resumes >= before.resumes + 2 && m.sessions().iter().all(|s| s.attached)
    })
    .await
    .unwrap();

    // Host a goes on: its lease is over by its own clock, so it fences at once, learns the
    // range is b's, and its cluster leaves without resuming anything (the gateway closed its
    // old connections when b resumed; a library left alone would resume them right back).
    signal_all(&host, "-CONT");
    let left = tokio::time::timeout(WAIT, async {
        while worker_name(cluster[0]).is_some() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(left.is_ok(), "host a's cluster leaves");
    drain_events(&mock, "events flow after a is back").await;
    assert_costs(&mock, &before, 2, 80);
    for admiral in [&mut b] {
        let pid = admiral.id().unwrap();
        signal_all(&[pid], "-TERM");
        tokio::time::timeout(WAIT, admiral.wait())
            .await
            .unwrap()
            .unwrap();
    }
    drop(a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_empty_reassigns_nothing_while_the_hosts_put_their_ranges_back() {
    let redis = RedisServer::start().await;
    let mock = MockDiscord::start(mock_config(8, 4, 1)).await.unwrap();
    let (a, b) = two_hosts(&mock, &redis, "empty", redis.url()).await;
    let (a_runs, b_runs) = (cluster_pids(&a).await, cluster_pids(&b).await);
    assert_eq!((a_runs.len(), b_runs.len()), (1, 1));
    let before = mock.stats();

    // Redis crashes and comes back with nothing: no lease, no range, no checkpoint.
    let redis = redis.restart_empty().await;
    // The first host to claim sees that Redis forgot everything and opens the recovery window,
    // in which each host puts back the ranges it runs, and nobody claims another's.
    key_until(&redis, "fleet:{empty}:recovery", true).await;
    key_until(&redis, "fleet:{empty}:recovery", false).await;
    let owned = redis.integer(&["HLEN", "fleet:{empty}:assign"]).await;
    assert_eq!(owned, Some(2), "both ranges put back");
    checkpointed(&redis, "empty", 0..4).await;
    assert_eq!(
        cluster_pids(&a).await,
        a_runs,
        "a runs what it ran, in the same process"
    );
    assert_eq!(cluster_pids(&b).await, b_runs, "b too");
    drain_events(&mock, "events flow after the restart").await;
    assert_costs(&mock, &before, 0, 0);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_fenced_by_a_long_redis_outage_resume_their_own_ranges_when_it_returns_from_its_log()
{
    use fleet_tests::faults::{Fault, FaultProxy};
    let mut redis = RedisServer::start_with_aof().await;
    let proxy = FaultProxy::start(redis.addr()).await;
    let mock = MockDiscord::start(mock_config(8, 4, 1)).await.unwrap();
    let through_proxy = format!("redis://{}/0", proxy.addr());
    let (a, b) = two_hosts(&mock, &redis, "outage", through_proxy).await;
    let (a_runs, b_runs) = (cluster_pids(&a).await, cluster_pids(&b).await);
    let a_range = *a_runs.keys().next().unwrap();
    let a_key = a_range.to_string();
    let before = mock.stats();

    // Redis is down for longer than the hosts' leases: every host fences its shards.
    redis.kill();
    mock.wait_until(WAIT, "every host fences its shards", |m| {
        m.sessions().iter().all(|s| !s.attached)
    })
    .await
    .unwrap();
    // The outage itself: past every lease's end, so Redis comes back with none.
    tokio::time::sleep(Duration::from_millis(LEASE_MS.parse().unwrap())).await;
    // It comes back from its log, with the ranges but no lease; host a is still cut off.
    proxy.set(Fault::Blackhole);
    let redis = redis.restart().await;
    mock.wait_until(WAIT, "host b resumes its own sessions", |m| {
        m.stats().resumes >= before.resumes + 2
    })
    .await
    .unwrap();
    // b renews and claims every turn, and sees a's lease gone long ago; the recovery window
    // keeps it from taking a's range for dead. Two more of b's renewals, so at least one claim.
    let deadline = || redis.string(&["ZSCORE", "fleet:{outage}:hosts", "b"]);
    let first: f64 = deadline().await.unwrap().parse().unwrap();
    let waited = tokio::time::timeout(WAIT, async {
        loop {
            let now: f64 = deadline().await.unwrap_or_default().parse().unwrap_or(0.0);
            if now >= first + 1500.0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "b renews its lease");
    let owner = redis
        .string(&["HGET", "fleet:{outage}:assign", &a_key])
        .await;
    assert!(
        owner.as_deref().is_some_and(|o| o.starts_with("a|")),
        "{owner:?}"
    );
    assert_eq!(cluster_pids(&b).await, b_runs, "b runs its own range only");

    // a reaches Redis again within the window: it renews and resumes its own range.
    proxy.set(Fault::Pass);
    mock.wait_until(WAIT, "host a resumes its own sessions", |m| {
        m.stats().resumes >= before.resumes + 4 && m.sessions().iter().all(|s| s.attached)
    })
    .await
    .unwrap();
    assert_eq!(
        cluster_pids(&a).await,
        a_runs,
        "a resumed its range in the same process"
    );
    key_until(&redis, "fleet:{outage}:recovery", false).await;
    drain_events(&mock, "events flow after the outage").await;
    assert_costs(&mock, &before, 4, 0);
    assert_eq!(
        cluster_pids(&b).await,
        b_runs,
        "b still runs its own range only"
    );
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_stops_hands_its_range_on_with_no_identify_no_loss_and_no_duplicate() {
    let redis = RedisServer::start().await;
    let mock = MockDiscord::start(mock_config(8, 4, 1)).await.unwrap();
    let (a, b) = two_hosts(&mock, &redis, "drain", redis.url()).await;
    let b_runs = cluster_pids(&b).await;
    let before = mock.stats();

    // A clean stop (a deploy, a drained machine): a's shards close resumably, its final
    // sessions go to Redis, it gives the range up and says so; b takes it at once.
    a.shutdown().await;
    a.wait_stopped().await;
    mock.wait_until(WAIT, "host b resumes a's sessions", |m| {
        m.stats().resumes >= before.resumes + 2
            && m.sessions().len() == 4
            && m.sessions().iter().all(|s| s.attached)
    })
    .await
    .unwrap();
    workers_until(&b, "host b runs both ranges", |w| {
        w.iter()
            .filter(|w| w.state == carrier::admiral::State::Live)
            .filter(|w| matches!(w.id, carrier::WorkerId::Cluster(_)))
            .count()
            == 2
    })
    .await;
    let now_b = cluster_pids(&b).await;
    assert!(
        b_runs.iter().all(|(c, p)| now_b.get(c) == Some(p)),
        "b's own range ran on"
    );
    drain_events(&mock, "events flow after the hand-off").await;
    // The sessions a handed over carry the last event its clusters handled: b replays none.
    assert_costs(&mock, &before, 2, 0);
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_planning_other_ranges_is_refused_while_the_old_plan_runs_and_takes_over_after() {
    let redis = RedisServer::start().await;
    let mock = MockDiscord::start(mock_config(8, 4, 1)).await.unwrap();
    let (a, _) = launch(fleet_tests::fleet(host_options(
        &mock,
        redis.url(),
        "replan",
        "a",
        2,
    )))
    .await;
    attached(&mock, 4, "host a runs the bot in 2 ranges").await;
    let mut three = host_options(&mock, redis.url(), "replan", "b", 3);
    three.clusters = Some(3);
    let refused = fleet_tests::fleet(three.clone())
        .run()
        .await
        .unwrap_err()
        .to_string();
    assert!(refused.contains("plans other shards"), "{refused}");
    // Once no host runs the old plan, the new one replaces it.
    a.shutdown().await;
    a.wait_stopped().await;
    let (b, _) = launch(fleet_tests::fleet(three)).await;
    workers_until(&b, "host b runs the bot in 3 ranges", |w| {
        w.iter()
            .filter(|w| w.state == carrier::admiral::State::Live)
            .filter(|w| matches!(w.id, carrier::WorkerId::Cluster(_)))
            .count()
            == 3
    })
    .await;
    attached(&mock, 4, "every shard runs again").await;
    // The shards are the same: their checkpoints stay for whoever runs them next.
    checkpointed(&redis, "replan", 0..4).await;
    // A reshard of the bot (b is all of it now) puts its plan in Redis.
    b.reshard(ShardCount::Exact(8), None).await.unwrap();
    assert_eq!(b.plan().shard_total, 8);
    serve_alone(&mock, 8, "the new generation serves alone").await;
    // A host started from the options the bot started with follows the resharded plan.
    let (d, _) = launch(fleet_tests::fleet(host_options(
        &mock,
        redis.url(),
        "replan",
        "d",
        1,
    )))
    .await;
    assert_eq!(d.plan().shard_total, 8, "the running plan wins");
    assert_eq!(d.plan().clusters.len(), 3);
    d.shutdown().await;
    b.shutdown().await;
    b.wait_stopped().await;
    // A bot restarted with another shard total replaces the plan and drops the old total's
    // checkpoints: no session of it is resumed, and none is left in Redis.
    let mut eight = host_options(&mock, redis.url(), "replan", "c", 2);
    eight.shards = ShardCount::Exact(8);
    let (c, _) = launch(fleet_tests::fleet(eight)).await;
    let keys = checkpoint_keys("replan", 0..4);
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    assert_eq!(redis.exists(&keys).await, 0, "the old checkpoints are gone");
    c.shutdown().await;
}

/// Waits until one session of each of `shards` shards is attached, all of that shard total
/// (the other generation's are gone).
async fn serve_alone(mock: &MockDiscord, shards: u32, what: &str) {
    mock.wait_until(WAIT, what, |m| {
        let sessions = m.sessions();
        sessions.iter().filter(|s| s.attached).count() == shards as usize
            && sessions.iter().all(|s| s.shard[1] == shards || !s.attached)
    })
    .await
    .unwrap();
}

/// Fails unless `result` is "unavailable".
fn assert_unavailable<T: std::fmt::Debug>(result: &Result<T, carrier::IpcError>) {
    assert!(
        matches!(
            result,
            Err(carrier::IpcError::Refused(
                carrier::ipc::proto::Refusal::Unavailable(_)
            ))
        ),
        "{result:?}"
    );
}

/// Asks `admiral` for cluster `cluster`'s status until it answers (the other host's range may
/// not be routed to yet).
async fn status_of(admiral: &carrier::AdmiralHandle, cluster: u32) -> fleet_tests::ClusterStatus {
    let asked = tokio::time::timeout(WAIT, async {
        loop {
            match admiral
                .ipc()
                .cluster_command(cluster, carrier::Payload::from("status"))
                .await
            {
                Ok(status) => return status.decode().unwrap(),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    })
    .await;
    asked.unwrap_or_else(|_| panic!("cluster {cluster} never answered"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_reaches_the_clusters_of_the_other_host_with_the_same_outcomes() {
    use carrier::{Outcome, Payload};
    let redis = RedisServer::start().await;
    let mock = MockDiscord::start(mock_config(8, 4, 1)).await.unwrap();
    let (a, b) = two_hosts(&mock, &redis, "bus", redis.url()).await;
    assert_eq!(clusters(&a.workers().await.unwrap()), vec![0]);

    // Whoever can reach Redis can write on the bus: garbage, a frame of another version and
    // an answer to nothing are dropped, and a serves on.
    for junk in [
        &b"\xc1 not messagepack"[..],
        &b"\x83\xa1v\x09\xa4host\xa1b\xa4body\xc0"[..],
    ] {
        let junk = String::from_utf8_lossy(junk).into_owned();
        let published = redis
            .integer(&["PUBLISH", "fleet:{bus}:bus:h:a", &junk])
            .await;
        assert_eq!(published, Some(1), "a listens on its channel");
    }
    // A command to the cluster b runs, asked on a, is answered by that cluster.
    let status = status_of(&a, 1).await;
    assert_eq!((status.id, status.shards), (1, vec![2, 3]));
    // By shard and by guild: shard 3 and a guild on shard 2 are b's.
    let by_shard = a.ipc().shard_command(3, Payload::from("status")).await;
    let by_shard: fleet_tests::ClusterStatus = by_shard.unwrap().decode().unwrap();
    assert_eq!(by_shard.id, 1);
    let by_guild = a
        .ipc()
        .guild_command(2 << 22, Payload::from("status"))
        .await;
    let by_guild: fleet_tests::ClusterStatus = by_guild.unwrap().decode().unwrap();
    assert_eq!(by_guild.id, 1);

    // A fan-out asked on either host answers for every cluster of the bot, once each.
    for host in [&a, &b] {
        let outcomes = host
            .ipc()
            .all_clusters_command(Payload::from("status"))
            .await
            .unwrap();
        let ids: Vec<u32> = outcomes
            .values()
            .map(|o| match o {
                Outcome::Ok(status) => status.decode::<fleet_tests::ClusterStatus>().unwrap().id,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(ids, vec![0, 1]);
    }
    // The guild count is the whole bot's.
    let (guilds, missing) = a.ipc().guild_count().await.unwrap();
    assert_eq!((guilds, missing), (8, vec![]));
    // Stats asked on either host are the whole bot's, each cluster listed with its host.
    for (host, other) in [(&a, "b"), (&b, "a")] {
        let snapshot = host.ipc().stats().await.unwrap();
        assert_eq!(snapshot.hosts.len(), 2, "{:?}", snapshot.hosts);
        assert_eq!(snapshot.hosts[1], other);
        assert!(
            snapshot.missing_hosts.is_empty(),
            "{:?}",
            snapshot.missing_hosts
        );
        assert_eq!((snapshot.shard_count, snapshot.shards_ready), (4, 4));
        assert_eq!(snapshot.guilds, 8);
        let clusters: Vec<(u32, Option<&str>)> = snapshot
            .clusters
            .iter()
            .map(|c| (c.id, c.host.as_deref()))
            .collect();
        assert_eq!(clusters, vec![(0, Some("a")), (1, Some("b"))]);
        assert_eq!(snapshot.services.len(), 4, "each host runs both services");
    }
    // The workers asked on either host are the whole bot's, each named with its host.
    for host in [&a, &b] {
        let workers = host.ipc().workers().await.unwrap();
        let listed: Vec<(carrier::Target, Option<&str>)> = workers
            .iter()
            .filter(|w| w.state == "live")
            .map(|w| (w.worker.clone(), w.host.as_deref()))
            .collect();
        let echo = carrier::Target::Service("echo".into());
        assert_eq!(
            listed,
            vec![
                (carrier::Target::Cluster(0), Some("a")),
                (carrier::Target::Cluster(1), Some("b")),
                (echo.clone(), Some("a")),
                (echo, Some("b")),
            ]
        );
    }
    // A handler's error comes back as that cluster's error.
    let failed = a.ipc().cluster_command(1, Payload::from("fail")).await;
    assert!(
        matches!(&failed, Err(carrier::IpcError::Remote { target, message })
            if *target == carrier::Target::Cluster(1) && message.contains("failed on request")),
        "{failed:?}"
    );
    // A message to the other host's cluster arrives (it is queued there).
    a.ipc()
        .send_to_cluster(1, "hello", Payload::from("from a"))
        .await
        .unwrap();
    // A broadcast reaches the other host's admiral (and its workers), once.
    let (heard_tx, mut heard) = tokio::sync::mpsc::unbounded_channel();
    b.ipc().register("cross", move |message| {
        let _ = heard_tx.send((message.from.clone(), message.payload.clone()));
    });
    a.ipc()
        .broadcast("cross", Payload::from("to all"))
        .await
        .unwrap();
    let (from, payload) = tokio::time::timeout(WAIT, heard.recv())
        .await
        .expect("b hears a's broadcast")
        .unwrap();
    assert_eq!(
        (from, payload.as_bytes()),
        (carrier::Target::Admiral, &b"to all"[..])
    );

    // A restart of b's cluster, asked on a, runs on b: a handover, so no shard identifies.
    let b_before = cluster_pids(&b).await;
    let identifies = mock.stats().identifies;
    a.ipc()
        .restart(
            carrier::Target::Cluster(1),
            carrier::RestartMode::Handover,
            WAIT,
        )
        .await
        .unwrap();
    let b_after = cluster_pids(&b).await;
    assert_ne!(b_after.get(&1), b_before.get(&1), "b runs a new process");
    assert_eq!(mock.stats().identifies, identifies);
    // A rolling restart of every cluster, asked on a, restarts each on its own host: one
    // outcome per cluster of the bot, and still no identify.
    let a_before = cluster_pids(&a).await;
    let b_before = cluster_pids(&b).await;
    let rolled = a
        .ipc()
        .restart_all(
            carrier::Group::Clusters,
            carrier::RestartMode::Handover,
            1,
            WAIT,
        )
        .await
        .unwrap();
    let rolled: Vec<_> = rolled
        .iter()
        .map(|(t, o)| (t.clone(), matches!(o, Outcome::Ok(_))))
        .collect();
    assert_eq!(
        rolled,
        vec![
            (carrier::Target::Cluster(0), true),
            (carrier::Target::Cluster(1), true)
        ]
    );
    assert_ne!(cluster_pids(&a).await.get(&0), a_before.get(&0));
    assert_ne!(cluster_pids(&b).await.get(&1), b_before.get(&1));
    assert_eq!(mock.stats().identifies, identifies);
    // A restart of a cluster nobody has asked for by that name is refused as before.
    let unknown = a
        .ipc()
        .restart(
            carrier::Target::Cluster(9),
            carrier::RestartMode::Handover,
            WAIT,
        )
        .await;
    assert!(unknown.is_err(), "{unknown:?}");

    // A command that outlives its timeout times out on the asker's clock; nothing hangs. The
    // cluster tells its own admiral (b's) each time it sleeps on a command.
    let (asleep_tx, mut asleep) = tokio::sync::mpsc::unbounded_channel();
    b.ipc().register("sleeping", move |_| {
        let _ = asleep_tx.send(());
    });
    let started = Instant::now();
    let slow = a
        .ipc()
        .command_within(
            carrier::Target::Cluster(1),
            Payload::from("sleep"),
            Duration::from_secs(1),
        )
        .await;
    assert!(
        matches!(slow, Err(carrier::IpcError::TargetTimedOut(_))),
        "{slow:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    tokio::time::timeout(WAIT, asleep.recv())
        .await
        .expect("b's cluster slept on the first command");
    assert!(
        heard.try_recv().is_err(),
        "the broadcast was delivered once"
    );

    // b goes while a waits on one of its clusters: a hears "unavailable", long before its
    // timeout.
    let sleeping = tokio::spawn({
        let ipc = a.ipc().clone();
        async move {
            let started = Instant::now();
            let outcome = ipc
                .command_within(
                    carrier::Target::Cluster(1),
                    Payload::from("sleep"),
                    Duration::from_mins(1),
                )
                .await;
            (outcome, started.elapsed())
        }
    });
    tokio::time::timeout(WAIT, asleep.recv())
        .await
        .expect("b's cluster sleeps on a's command");
    b.shutdown().await;
    let (outcome, waited) = sleeping.await.unwrap();
    assert_unavailable(&outcome);
    assert!(waited < Duration::from_secs(30), "{waited:?}");
    b.wait_stopped().await;
    // a has room for one range: nobody runs b's now, and a says so at once.
    let started = Instant::now();
    let gone = a
        .ipc()
        .command_within(
            carrier::Target::Cluster(1),
            Payload::from("status"),
            Duration::from_mins(1),
        )
        .await;
    assert_unavailable(&gone);
    assert!(started.elapsed() < Duration::from_secs(30));
    let unsent = a
        .ipc()
        .send_to_cluster(1, "hello", Payload::from("nobody"))
        .await;
    assert_unavailable(&unsent);
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_central_store_is_one_for_every_host_keeps_its_limit_and_fails_clearly_without_redis() {
    use carrier::Payload;
    let mut redis = RedisServer::start().await;
    let mock = MockDiscord::start(mock_config(8, 4, 1)).await.unwrap();
    let (a, b) = two_hosts(&mock, &redis, "store", redis.url()).await;
    let (a, b) = (a.ipc().clone(), b.ipc().clone());

    // What one host writes, the other reads; compare-and-set decides between them.
    a.store_set("guild:1:prefix", Payload::from("!"))
        .await
        .unwrap();
    assert_eq!(
        b.store_get("guild:1:prefix").await.unwrap(),
        Some(Payload::from("!"))
    );
    assert!(b.store_has("guild:1:prefix").await.unwrap());
    let won = a
        .store_compare_and_set("lock", None, Some(Payload::from("a")))
        .await
        .unwrap();
    let lost = b
        .store_compare_and_set("lock", None, Some(Payload::from("b")))
        .await
        .unwrap();
    assert!(won && !lost, "one host takes the lock");
    assert!(
        b.store_compare_and_set("lock", Some(Payload::from("a")), None)
            .await
            .unwrap(),
        "the holder's value releases it"
    );
    assert!(!a.store_has("lock").await.unwrap());
    b.store_set("guild:2:prefix", Payload::from("?"))
        .await
        .unwrap();
    assert_eq!(
        a.store_keys("guild:").await.unwrap(),
        vec!["guild:1:prefix".to_owned(), "guild:2:prefix".to_owned()]
    );
    let entries = a.store_entries("guild:2").await.unwrap();
    assert_eq!(
        entries,
        vec![("guild:2:prefix".to_owned(), Payload::from("?"))]
    );
    assert!(a.store_delete("guild:2:prefix").await.unwrap());
    assert!(!b.store_delete("guild:2:prefix").await.unwrap());

    // A key with a time to live goes for every host at once (Redis's clock).
    a.store_set_for("cooldown", Payload::from("1"), Duration::from_millis(300))
        .await
        .unwrap();
    assert!(b.store_has("cooldown").await.unwrap());
    let gone = tokio::time::timeout(WAIT, async {
        while b.store_has("cooldown").await.unwrap() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(gone.is_ok(), "the key expired");

    // The store's limit holds for the whole bot: a write past it is refused and loses nothing.
    let big = Payload::from(vec![b'x'; 600 << 10]);
    a.store_set("big", big.clone()).await.unwrap();
    let refused = b.store_set("bigger", big).await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.to_string().contains("store_limit")),
        "{refused:?}"
    );
    assert_eq!(
        b.store_get("guild:1:prefix").await.unwrap(),
        Some(Payload::from("!"))
    );

    // Redis gone: every operation fails with a clear error, none hangs; back, the store serves.
    redis.kill();
    let started = Instant::now();
    let failed = a.store_get("guild:1:prefix").await;
    assert!(
        failed
            .as_ref()
            .is_err_and(|e| e.to_string().contains("shared store")),
        "{failed:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    let _redis = redis.restart().await;
    let back = tokio::time::timeout(WAIT, async {
        loop {
            if let Ok(value) = b.store_get("guild:1:prefix").await {
                return value;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(back.is_ok(), "the store serves again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_redis_fences_every_host_and_each_range_resumes_once_when_it_goes_on() {
    let redis = RedisServer::start().await;
    let mock = MockDiscord::start(mock_config(8, 4, 1)).await.unwrap();
    let (a, b) = two_hosts(&mock, &redis, "stall", redis.url()).await;
    let before = mock.stats();

    // Redis stops answering (connections open, nothing comes back): no host can renew, so
    // every host fences itself before its lease could lapse.
    redis.freeze();
    mock.wait_until(WAIT, "both hosts fence their shards", |m| {
        m.sessions().iter().filter(|s| !s.attached).count() == 4
    })
    .await
    .unwrap();
    assert_eq!(mock.stats().resumes, before.resumes, "nobody resumed");
    // The stall outlasts the leases on Redis's clock: when it goes on, every lease is gone
    // and each range is free to whichever host claims first.
    let lease = Duration::from_millis(LEASE_MS.parse().unwrap());
    tokio::time::sleep(lease).await;
    redis.thaw();

    // Each shard resumes exactly once, on one host, from its session: none identifies, none
    // is run twice.
    mock.wait_until(WAIT, "every shard resumed", |m| {
        m.stats().resumes >= before.resumes + 4 && m.sessions().iter().all(|s| s.attached)
    })
    .await
    .unwrap();
    let ranges = tokio::time::timeout(WAIT, async {
        loop {
            let mut both = clusters(&a.workers().await.unwrap_or_default());
            let on_b = clusters(&b.workers().await.unwrap_or_default());
            both.extend(&on_b);
            both.sort_unstable();
            if both == [0, 1] {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(ranges.is_ok(), "each range runs on one host");
    drain_events(&mock, "events flow after the stall").await;
    assert_costs(&mock, &before, 4, 80);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_joins_a_full_fleet_gets_its_share_by_planned_moves_with_no_identify_or_loss() {
    let redis = RedisServer::start().await;
    let mock = MockDiscord::start(mock_config(8, 4, 1)).await.unwrap();
    let mut a_options = host_options(&mock, redis.url(), "rebalance", "a", 2);
    a_options.host_rebalance = true;
    let (a, _) = launch(fleet_tests::fleet(a_options)).await;
    attached(&mock, 4, "host a runs the whole bot").await;
    checkpointed(&redis, "rebalance", 0..4).await;
    events_flow(&mock).await;
    let before = mock.stats();

    // b joins: a runs more than its fair share while b has room, so it hands a range on: the
    // cluster's shards close resumably and b resumes them.
    let mut b_options = host_options(&mock, redis.url(), "rebalance", "b", 2);
    b_options.host_rebalance = true;
    let (b, _) = launch(fleet_tests::fleet(b_options)).await;
    workers_until(&b, "host b runs a range", |w| {
        w.iter()
            .filter(|w| w.state == carrier::admiral::State::Live)
            .filter(|w| matches!(w.id, carrier::WorkerId::Cluster(_)))
            .count()
            == 1
    })
    .await;
    workers_until(&a, "host a runs one range", |w| {
        w.iter()
            .filter(|w| matches!(w.id, carrier::WorkerId::Cluster(_)))
            .filter(|w| !matches!(w.state, carrier::admiral::State::Stopped))
            .count()
            == 1
    })
    .await;
    mock.wait_until(WAIT, "b resumes the sessions a handed on", |m| {
        m.stats().resumes >= before.resumes + 2 && m.sessions().iter().all(|s| s.attached)
    })
    .await
    .unwrap();
    drain_events(&mock, "events flow after the move").await;
    // The handed-over sessions carry the last event a handled: b replays none.
    assert_costs(&mock, &before, 2, 0);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_on_a_host_re_executes_its_admiral_which_keeps_its_lease_its_ranges_and_its_workers()
{
    let redis = RedisServer::start().await;
    let mock = MockDiscord::start(mock_config(8, 4, 1)).await.unwrap();
    let base = std::env::temp_dir().join(format!("fleet-hosts-{:016x}", fastrand::u64(..)));
    std::fs::create_dir(&base).unwrap();
    let url = redis.url();
    let env = [
        ("TESTBOT_REDIS_URL", url.as_str()),
        ("TESTBOT_FLEET_ID", "sighup"),
        ("TESTBOT_HOST_ID", "a"),
        ("TESTBOT_HOST_CAPACITY", "2"),
        ("TESTBOT_HOST_LEASE_MS", LEASE_MS),
        ("TESTBOT_ADMIRAL_GRACE_MS", "60000"),
    ];
    let (admiral, _, mut lines) = common::spawn_admiral_with(&mock, 2, Some(&base), &env).await;
    attached(&mock, 4, "host a runs the bot").await;
    events_flow(&mock).await;
    let pid = admiral.id().unwrap();
    let workers: std::collections::BTreeSet<u32> = children(pid).into_iter().collect();
    assert_eq!(workers.len(), 3, "two clusters and echo: {workers:?}");
    let before = mock.stats();

    // SIGHUP: the admiral re-executes itself in place. The new image goes on with the lease it
    // held (another admiral of host a would be refused) and adopts the clusters of its ranges.
    signal_all(&[pid], "-HUP");
    let again = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .expect("the admiral comes back")
        .unwrap()
        .expect("a line");
    assert!(again.starts_with("ready"), "{again}");
    drain_events(&mock, "events flow after the restart").await;
    let now: std::collections::BTreeSet<u32> = children(pid).into_iter().collect();
    assert_eq!(now, workers, "the same workers serve on");
    assert_costs(&mock, &before, 0, 0);
    signal_all(&[pid], "-TERM");
    let _ = tokio::time::timeout(WAIT, lines.next_line()).await;
    let _ = std::fs::remove_dir_all(&base);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_with_room_runs_what_the_others_have_no_room_for_beyond_its_fair_share() {
    let redis = RedisServer::start().await;
    let mock = MockDiscord::start(mock_config(16, 8, 1)).await.unwrap();
    // Four ranges, two hosts: the fair share is two each, but a has room for one only.
    let mut small = host_options(&mock, redis.url(), "room", "a", 1);
    small.clusters = Some(4);
    let (a, _) = launch(fleet_tests::fleet(small)).await;
    attached(&mock, 2, "host a runs the one range it has room for").await;
    let mut large = host_options(&mock, redis.url(), "room", "b", 8);
    large.clusters = Some(4);
    let (b, _) = launch(fleet_tests::fleet(large)).await;
    // b takes the three others, one beyond its share, so no range is left unrun.
    attached(&mock, 8, "every shard of the bot runs").await;
    workers_until(&b, "host b runs three ranges", |w| clusters(w).len() == 3).await;
    assert_eq!(clusters(&a.workers().await.unwrap()).len(), 1);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_bot_reshards_across_its_hosts_together_with_one_identify_per_new_shard_and_nothing_lost()
 {
    let redis = RedisServer::start().await;
    let mock = MockDiscord::start(mock_config(16, 4, 1)).await.unwrap();
    let host = |name: &str, capacity: u32| {
        let mut options = host_options(&mock, redis.url(), "split-reshard", name, capacity);
        // Longer than the mock's heartbeat: the old generation confirms every event it handled
        // before it closes, so the mock can tell none was lost.
        options.soft_kill_notice = Duration::from_secs(1);
        options
    };
    // With a service run once per bot, which a reshard leaves where it runs.
    let (a, _) = launch(fleet_tests::with_ledger(host("a", 1))).await;
    attached(&mock, 2, "host a runs its range").await;
    let (b, _) = launch(fleet_tests::with_ledger(host("b", 2))).await;
    attached(&mock, 4, "host b runs the other range").await;
    ledger_until(
        &a,
        "host a runs the ledger",
        Some(carrier::admiral::State::Live),
    )
    .await;
    let handled = common::HandledLog::start_on(&[&a, &b]).await;
    events_flow(&mock).await;

    // Refused, with the reason, before anything starts: one cluster would leave a host idle.
    let refused = a.reshard(ShardCount::Exact(8), Some(1)).await;
    assert!(
        format!("{refused:?}").contains("without one"),
        "{refused:?}"
    );
    // And four would give a two, with room for one.
    let refused = a.reshard(ShardCount::Exact(8), Some(4)).await;
    assert!(
        format!("{refused:?}").contains("host a 2, and it has room for 1"),
        "{refused:?}"
    );
    // A part that fails calls the whole reshard off: b's new cluster is killed as it starts.
    let me = std::process::id();
    let running: std::collections::BTreeSet<u32> = children(me).into_iter().collect();
    let kill_part = async {
        tokio::time::timeout(WAIT, async {
            loop {
                let new = children(me).into_iter().find(|pid| {
                    !running.contains(pid) && worker_name(*pid).as_deref() == Some("cluster-1")
                });
                if let Some(pid) = new {
                    signal_all(&[pid], "-KILL");
                    return;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
    };
    let (asked, part_killed) = tokio::join!(a.reshard(ShardCount::Exact(8), None), kill_part);
    assert!(part_killed.is_ok(), "b starts its part");
    let failed = asked.unwrap_err().to_string();
    assert!(failed.contains("host b"), "{failed}");
    assert_eq!((a.plan().shard_total, b.plan().shard_total), (4, 4));
    serve_alone(&mock, 4, "the old generation serves on alone").await;
    checkpointed(&redis, "split-reshard", 0..4).await;
    let before = mock.stats();
    // Asked of a: both hosts ready their part in standby, and it goes live on both at once.
    let mut b_events = b.events();
    a.reshard(ShardCount::Exact(8), None)
        .await
        .expect("the reshard completes");
    assert_eq!(a.plan().shard_total, 8);
    let resharded = tokio::time::timeout(WAIT, async {
        loop {
            match b_events.recv().await {
                Ok(carrier::FleetEvent::Lifecycle(
                    carrier::admiral::LifecycleEvent::Resharded { clusters },
                )) => return clusters,
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(error) => panic!("{error}"),
            }
        }
    })
    .await
    .expect("host b's part goes live");
    assert_eq!(resharded, 1, "host b ran one cluster of the new generation");
    assert_eq!(b.plan().shard_total, 8);
    workers_until(&a, "a runs cluster 0 of the new plan", |w| {
        clusters(w) == [0]
    })
    .await;
    workers_until(&b, "b runs cluster 1 of the new plan", |w| {
        clusters(w) == [1]
    })
    .await;
    serve_alone(&mock, 8, "only the new generation's sessions are attached").await;
    // Redis holds the new plan, and the new sessions' checkpoints, for a takeover.
    let keys: Vec<String> = (0..8)
        .map(|shard| format!("fleet:{{split-reshard}}:shard:8:{shard}"))
        .collect();
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    let written = tokio::time::timeout(WAIT, async {
        while redis.exists(&keys).await < 8 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(
        written.is_ok(),
        "the new generation's sessions are checkpointed"
    );
    assert_eq!(
        redis.exists(&["fleet:{split-reshard}:shard:4:0"]).await,
        0,
        "the old plan's checkpoints are gone"
    );
    // Calls route by the new plan across hosts: a asks b's cluster.
    let status = status_of(&a, 1).await;
    assert_eq!(status.shards, vec![4, 5, 6, 7]);
    // The ledger is still a's, in Redis and on a, and b reaches it there.
    let entry = redis
        .string(&["HGET", "fleet:{split-reshard}:assign", "svc:ledger"])
        .await
        .unwrap_or_default();
    assert!(entry.starts_with("a|"), "{entry:?}");
    let echo = b
        .ipc()
        .service_command(fleet_tests::LEDGER, carrier::Payload::from("ping"))
        .await;
    assert_eq!(echo.unwrap().as_bytes(), b"ping");
    assert_eq!(ledger_state(&b).await, None);

    if !handled.all_handled(&mock).await {
        let seen: std::collections::BTreeSet<u64> =
            handled.entries().iter().map(|(_, id, _)| *id).collect();
        let switch: u64 = redis
            .string(&["HGET", "fleet:{split-reshard}:meta", "switch_at"])
            .await
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        // Created how long after the switch (ms; snowflakes count from Discord's epoch).
        let missing: Vec<i64> = common::messages(&mock)
            .difference(&seen)
            .map(|id| ((id >> 22) + 1_420_070_400_000).cast_signed() - switch.cast_signed())
            .collect();
        panic!("messages no user code handled, created this long after the switch: {missing:?}");
    }
    let mut by_id = BTreeMap::<u64, usize>::new();
    for (_, id, _) in handled.entries() {
        *by_id.entry(id).or_default() += 1;
    }
    let twice = by_id.values().filter(|n| **n > 1).count();
    assert_eq!(
        twice, 0,
        "the switch time splits the messages between generations"
    );
    let report = common::settle(&mock).await;
    let after = mock.stats();
    assert_eq!(
        after.identifies - before.identifies,
        8,
        "one identify per new shard"
    );
    assert_eq!(report.lost, 0, "{report:?}");
    assert_eq!(after.total_violations(), 0, "{:?}", after.violations);

    // Asked of both hosts at once: the reshard of the host first by name wins on both.
    let (from_a, from_b) = tokio::join!(
        a.reshard(ShardCount::Exact(16), None),
        b.reshard(ShardCount::Exact(16), None)
    );
    assert!(from_a.is_ok(), "{from_a:?}");
    let from_b = from_b.unwrap_err().to_string();
    assert!(from_b.contains("host a"), "{from_b}");
    assert_eq!(a.plan().shard_total, 16);
    serve_alone(&mock, 16, "16 shards serve").await;
    assert_eq!(b.plan().shard_total, 16);
    a.shutdown().await;
    b.shutdown().await;
}

/// The state of the ledger (the service run once per bot) on `admiral`'s host, if it has one.
async fn ledger_state(admiral: &carrier::AdmiralHandle) -> Option<carrier::admiral::State> {
    let ledger = carrier::WorkerId::Service(fleet_tests::LEDGER.to_owned());
    admiral
        .workers()
        .await
        .unwrap_or_default()
        .into_iter()
        .find(|w| w.id == ledger)
        .map(|w| w.state)
}

/// Waits until the ledger's state on `admiral`'s host is `state`.
async fn ledger_until(
    admiral: &carrier::AdmiralHandle,
    what: &str,
    state: Option<carrier::admiral::State>,
) {
    let deadline = Instant::now() + WAIT;
    loop {
        let now = ledger_state(admiral).await;
        if now == state {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: the ledger is {now:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Counts the ledger processes of fleet `fleet` (its admirals run in this test process) every
/// few milliseconds until stopped, noting each change of the count and when.
struct LedgerWatch {
    changes: std::sync::Arc<std::sync::Mutex<Vec<(Duration, usize)>>>,
    task: tokio::task::JoinHandle<()>,
    started: Instant,
}

impl LedgerWatch {
    fn start(fleet: &str) -> Self {
        let changes = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let fleet = fleet.to_owned();
        let task = tokio::task::spawn_blocking({
            let changes = changes.clone();
            move || {
                let name = format!("service-{}", fleet_tests::LEDGER);
                let started = Instant::now();
                let mut last = 0;
                while std::sync::Arc::strong_count(&changes) > 1 {
                    let running = children(std::process::id())
                        .into_iter()
                        .filter(|pid| {
                            worker_name(*pid).as_deref() == Some(name.as_str())
                                && worker_env(*pid, fleet_tests::LEDGER_ENV).as_ref()
                                    == Some(&fleet)
                        })
                        .count();
                    if running != last {
                        last = running;
                        changes.lock().unwrap().push((started.elapsed(), running));
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        });
        Self {
            changes,
            task,
            started: Instant::now(),
        }
    }

    /// How long it has watched.
    fn since(&self) -> Duration {
        self.started.elapsed()
    }

    /// Stops the watch: the most ledger processes seen at once, and each change of the count.
    async fn stop(self) -> (usize, Vec<(Duration, usize)>) {
        let changes = self.changes.lock().unwrap().clone();
        let Self {
            changes: counter,
            task,
            ..
        } = self;
        drop(counter);
        task.await.unwrap();
        let most = changes.iter().map(|(_, n)| *n).max().unwrap_or(0);
        (most, changes)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_run_once_per_bot_runs_on_one_host_answers_from_every_host_and_moves_when_its_host_is_cut_off()
 {
    use carrier::admiral::State;
    use carrier::{Outcome, Payload};
    use fleet_tests::LEDGER;
    use fleet_tests::faults::{Fault, FaultProxy};
    let redis = RedisServer::start().await;
    let proxy = FaultProxy::start(redis.addr()).await;
    let mock = MockDiscord::start(mock_config(8, 4, 1)).await.unwrap();
    let watch = LedgerWatch::start("once");
    let through_proxy = format!("redis://{}/0", proxy.addr());
    let (a, b) = two_hosts_of(
        &mock,
        &redis,
        "once",
        through_proxy,
        fleet_tests::with_ledger,
    )
    .await;

    // Host a claimed first: the ledger runs there, and b never starts one.
    ledger_until(&a, "host a runs the ledger", Some(State::Live)).await;
    assert_eq!(ledger_state(&b).await, None);
    let entry = redis
        .string(&["HGET", "fleet:{once}:assign", "svc:ledger"])
        .await
        .unwrap_or_default();
    assert!(entry.starts_with("a|"), "Redis assigns it to a: {entry:?}");
    // Asked on either host, it answers; a fan-out to every service covers it once.
    for host in [&a, &b] {
        let echo = host
            .ipc()
            .service_command(LEDGER, Payload::from("ping"))
            .await;
        assert_eq!(echo.unwrap().as_bytes(), b"ping");
        let outcomes = host
            .ipc()
            .all_services_command(Payload::from("ping"))
            .await
            .unwrap();
        match outcomes.get(LEDGER) {
            Some(Outcome::Ok(echo)) => assert_eq!(echo.as_bytes(), b"ping"),
            other => panic!("the ledger in a fan-out: {other:?} of {outcomes:?}"),
        }
        // Each host's own echo service answers too.
        assert!(matches!(outcomes.get("echo"), Some(Outcome::Ok(_))));
    }

    // Host a loses Redis: it fences itself and stops the ledger before its lease lapses; b
    // takes it over once the lease is gone.
    eprintln!("cut at {:?}", watch.since());
    proxy.set(Fault::Blackhole);
    ledger_until(&a, "host a stops the ledger", Some(State::Stopped)).await;
    ledger_until(&b, "host b runs the ledger", Some(State::Live)).await;
    let echo = b
        .ipc()
        .service_command(LEDGER, Payload::from("moved"))
        .await;
    assert_eq!(echo.unwrap().as_bytes(), b"moved");

    // Redis is back for a: it learns the ledger is b's, leaves its own stopped, and reaches
    // b's from then on.
    proxy.set(Fault::Pass);
    workers_until(&a, "host a lets its old range go", |w| {
        clusters(w).is_empty()
    })
    .await;
    let deadline = Instant::now() + WAIT;
    loop {
        let echo = a.ipc().service_command(LEDGER, Payload::from("back")).await;
        if let Ok(echo) = &echo {
            assert_eq!(echo.as_bytes(), b"back");
            break;
        }
        assert!(Instant::now() < deadline, "a reaches b's ledger: {echo:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(ledger_state(&a).await, Some(State::Stopped));

    // Host b stops: its ledger exits before b gives it up, and a starts it again.
    eprintln!("b stops at {:?}", watch.since());
    b.shutdown().await;
    ledger_until(&a, "host a runs the ledger again", Some(State::Live)).await;
    let echo = a
        .ipc()
        .service_command(LEDGER, Payload::from("again"))
        .await;
    assert_eq!(echo.unwrap().as_bytes(), b"again");
    let (most, changes) = watch.stop().await;
    assert_eq!(most, 1, "never two ledgers at once: {changes:?}");
    a.shutdown().await;
}
