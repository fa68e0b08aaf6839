//! One bot on several hosts, the first part: identifies paced for the whole fleet through a real
//! Redis. Two hosts that each run half of a bot's shards, started together against one
//! discord-mock, never identify two shards of one bucket closer than Discord's interval.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use carrier::admiral::ShardCount;
use carrier::identify::fleetwide::{RedisIdentifyConfig, RedisIdentifyQueue};
use carrier::identify::{IdentifyQueue, SessionBudget};
use common::{WAIT, launch, mock_config, options};
use discord_mock::MockDiscord;
use fleet_tests::redis::RedisServer;

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
