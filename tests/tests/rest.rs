//! The central REST proxy and cross-cluster fetches, with real cluster processes against
//! discord-mock.

mod common;

use std::time::Duration;

use carrier::ipc::proto::Refusal;
use carrier::{AdmiralHandle, Fetch, IpcError, Outcome, Payload, Target, WorkerId};
use common::{WAIT, kill, launch, options, raw_http, until};
use discord_mock::{MockConfig, MockDiscord, RouteLimit};
use fleet_tests::Posted;
use serde_json::Value;

/// A mock whose message bucket is small enough that three clusters overrun it at once.
fn busy_mock_config(guilds: usize, shards: u32) -> MockConfig {
    MockConfig::builder()
        .guilds(guilds)
        .recommended_shards(shards)
        .max_concurrency(shards)
        .identify_interval(Duration::from_millis(300))
        .heartbeat_interval(Duration::from_millis(500))
        .message_limit(RouteLimit {
            limit: 5,
            window: Duration::from_millis(500),
        })
        .build()
}

/// The test bot's fleet with three clusters of twilight or serenity.
fn test_fleet(mock: &MockDiscord, serenity: bool) -> carrier::Fleet {
    let options = options(mock, 3);
    if serenity {
        fleet_tests::serenity_fleet(options)
    } else {
        fleet_tests::fleet(options)
    }
}

/// Every cluster creates `each` messages in `channel` at once; returns what each reported.
async fn post_from_every_cluster(admiral: &AdmiralHandle, channel: u64, each: u32) -> Vec<Posted> {
    let command = Payload::from(format!("post:{channel}:{each}").into_bytes());
    let outcomes = admiral
        .ipc()
        .all_clusters_command(command)
        .await
        .expect("the fan-out resolves");
    outcomes
        .into_iter()
        .map(|(target, outcome)| match outcome {
            Outcome::Ok(payload) => payload.decode().expect("a Posted"),
            other => panic!("{target} did not post: {other:?}"),
        })
        .collect()
}

async fn hammer_through_the_proxy(serenity: bool) {
    let mock = MockDiscord::start(busy_mock_config(6, 3)).await.unwrap();
    let (admiral, _events) = launch(test_fleet(&mock, serenity)).await;
    admiral.wait_ready(WAIT).await.unwrap();
    let channel = mock.guild(mock.guild_ids()[0]).unwrap().text_channels[0];
    let before = mock.stats();

    let posted = post_from_every_cluster(&admiral, channel, 8).await;

    assert_eq!(posted.len(), 3);
    for p in &posted {
        assert_eq!(
            *p,
            Posted {
                created: 8,
                failed: 0
            },
            "every message lands"
        );
    }
    let after = mock.stats();
    assert_eq!(after.messages_created - before.messages_created, 24);
    assert_eq!(
        after.rest_429s - before.rest_429s,
        0,
        "one rate-limit state for three clusters: no 429 at all"
    );
    let proxy = admiral
        .rest_proxy_stats()
        .expect("the proxy is on by default");
    assert!(proxy.requests >= 24, "{proxy:?}");
    assert_eq!(proxy.rate_limited, 0, "{proxy:?}");
    assert_eq!(proxy.upstream_errors + proxy.refused, 0, "{proxy:?}");
    assert_eq!((proxy.in_flight, proxy.queued), (0, 0), "{proxy:?}");
    admiral.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_twilight_clusters_hammering_one_channel_meet_no_429() {
    hammer_through_the_proxy(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_serenity_clusters_hammering_one_channel_meet_no_429() {
    hammer_through_the_proxy(true).await;
}

/// `(guild >> 22) % shard_total`, the owning shard.
fn shard_of(guild: u64, total: u32) -> u32 {
    ((guild >> 22) % u64::from(total)) as u32
}

fn id_of(value: &Value) -> u64 {
    value["id"]
        .as_str()
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("an id as a string in {value}"))
}

/// A cluster's `fetch:` command: the JSON it got, or `None`.
async fn fetch_in_cluster(admiral: &AdmiralHandle, cluster: u32, what: &str) -> Option<Value> {
    let payload = admiral
        .ipc()
        .cluster_command(cluster, Payload::from(format!("fetch:{what}").into_bytes()))
        .await
        .unwrap_or_else(|e| panic!("cluster {cluster} fetch:{what}: {e}"));
    (payload.as_bytes() != b"none")
        .then(|| serde_json::from_slice(payload.as_bytes()).expect("fetched JSON"))
}

async fn fetch_across_clusters(serenity: bool) {
    let mock = MockDiscord::start(busy_mock_config(12, 6)).await.unwrap();
    let (admiral, mut events) = launch(test_fleet(&mock, serenity)).await;
    admiral.wait_ready(WAIT).await.unwrap();
    let plan = admiral.plan().clone();
    let owner = |guild: u64| {
        let shard = shard_of(guild, plan.shard_total);
        plan.clusters
            .iter()
            .find(|c| (c.first_shard..=c.last_shard).contains(&shard))
            .map(|c| c.id)
            .expect("every shard has a cluster")
    };
    let ipc = admiral.ipc();
    // Clusters report ready once their shards are READY; guilds arrive right after. Wait until
    // every guild is in its owner's cache.
    for guild in mock.guild_ids() {
        let deadline = tokio::time::Instant::now() + WAIT;
        while ipc.fetch_guild::<Value>(guild).await.unwrap().is_none() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "guild {guild} never cached"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    for guild in mock.guild_ids() {
        let fixture = mock.guild(guild).unwrap();
        let found: Value = ipc
            .fetch_guild(guild)
            .await
            .unwrap()
            .expect("a cached guild");
        assert_eq!(id_of(&found), guild, "ids survive exactly");
        assert!(found["name"].is_string());
        let user = fixture.members[1];
        let member: Value = ipc
            .fetch_member(guild, user)
            .await
            .unwrap()
            .expect("a member");
        assert_eq!(id_of(&member["user"]), user);
        let found: Value = ipc.fetch_user(user).await.unwrap().expect("a user");
        assert_eq!(id_of(&found), user);
        let channel = fixture.text_channels[0];
        let found: Value = ipc
            .fetch_channel(channel)
            .await
            .unwrap()
            .expect("a channel");
        assert_eq!(id_of(&found), channel);
        // From another cluster than the owner: routed to the owner.
        let asker = (owner(guild) + 1) % 3;
        let found = fetch_in_cluster(&admiral, asker, &format!("guild:{guild}")).await;
        assert_eq!(found.as_ref().map(id_of), Some(guild));
        let found = fetch_in_cluster(&admiral, asker, &format!("member:{guild}:{user}")).await;
        assert_eq!(found.map(|m| id_of(&m["user"])), Some(user));
    }
    // Misses are `None`, not errors.
    let stranger = 4_242_424_242_u64 << 22;
    assert!(ipc.fetch_user::<Value>(stranger).await.unwrap().is_none());
    assert!(
        ipc.fetch_channel::<Value>(stranger)
            .await
            .unwrap()
            .is_none()
    );
    assert!(ipc.fetch_guild::<Value>(stranger).await.unwrap().is_none());
    let guild = mock.guild_ids()[0];
    assert!(
        ipc.fetch_member::<Value>(guild, stranger)
            .await
            .unwrap()
            .is_none()
    );

    // A killed owner: its guilds fail fast with "unavailable", fan-outs skip it.
    let victim = owner(guild);
    kill(&admiral, &WorkerId::Cluster(victim)).await;
    until(&mut events, |e| {
        matches!(e, carrier::FleetEvent::Exited { worker: WorkerId::Cluster(c), .. } if *c == victim)
    })
    .await;
    let started = tokio::time::Instant::now();
    let error = ipc.fetch_guild::<Value>(guild).await.unwrap_err();
    assert!(
        matches!(error, IpcError::Refused(Refusal::Unavailable(Target::Cluster(c))) if c == victim),
        "{error}"
    );
    let only_there = mock.guild(guild).unwrap().members[1];
    assert!(ipc.fetch_user::<Value>(only_there).await.unwrap().is_none());
    let elsewhere = mock
        .guild_ids()
        .into_iter()
        .find(|g| owner(*g) != victim)
        .unwrap();
    let user = mock.guild(elsewhere).unwrap().members[1];
    assert!(ipc.fetch_user::<Value>(user).await.unwrap().is_some());
    assert!(
        started.elapsed() < ipc.default_timeout(),
        "a dead cluster blocks no fetch"
    );
    let raw = ipc.fetch(Fetch::Guild(elsewhere)).await.unwrap().unwrap();
    assert!(serde_json::from_slice::<Value>(raw.as_bytes()).is_ok());
    admiral.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twilight_clusters_answer_fetches_for_each_other() {
    fetch_across_clusters(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serenity_clusters_answer_fetches_for_each_other() {
    fetch_across_clusters(true).await;
}

/// A GET with the proxy `key` (if any) and an `authorization` header (if any).
fn get(path: &str, key: Option<&carrier::Secret>, authorization: Option<&str>) -> String {
    let auth = authorization.map_or(String::new(), |a| format!("authorization: {a}\r\n"));
    let key = key.map_or(String::new(), |k| {
        format!("{}: {}\r\n", carrier::rest::KEY_HEADER, k.expose())
    });
    format!("GET {path} HTTP/1.1\r\nhost: x\r\n{key}{auth}connection: close\r\n\r\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_adds_the_token_passes_errors_through_and_refuses_clearly() {
    use carrier::rest::{ProxyConfig, RestProxy};
    let mock = MockDiscord::start(busy_mock_config(2, 1)).await.unwrap();
    let mut config = ProxyConfig::new(mock.http_url(), "mock-token");
    config.invalid_request_limit = 2;
    let proxy = RestProxy::start(config).await.unwrap();
    let key = proxy.admit("test");

    // No token from the client: the proxy's is used.
    let (status, head, body) =
        raw_http(&proxy.url(), &get("/api/v10/users/@me", Some(&key), None)).await;
    assert_eq!(status, 200, "{head}{body}");
    assert!(
        head.contains("x-ratelimit-bucket"),
        "headers come back whole: {head}"
    );
    let me: Value = serde_json::from_str(&body).unwrap();
    assert!(me["id"].is_string());
    // A client's own (bad) token is kept, and Discord's 401 comes back as it was.
    let bad = get("/api/v10/users/@me", Some(&key), Some("Bot wrong"));
    let (status, _, body) = raw_http(&proxy.url(), &bad).await;
    assert_eq!(status, 401);
    assert!(body.contains("Unauthorized"));
    assert_eq!(proxy.stats().invalid_requests, 1);
    let (status, _, _) = raw_http(&proxy.url(), &bad).await;
    assert_eq!(status, 401);
    // The invalid-request budget (2 here) is spent: refused locally, upstream never asked.
    let upstream_before = mock.stats().rest_requests;
    let (status, head, body) =
        raw_http(&proxy.url(), &get("/api/v10/users/@me", Some(&key), None)).await;
    assert_eq!(status, 503);
    assert!(
        head.contains("x-fleet-proxy: invalid-request-budget"),
        "{head}"
    );
    assert!(body.contains("invalid requests"), "{body}");
    assert_eq!(mock.stats().rest_requests, upstream_before);

    // Not an API path, or a method Discord does not take: answered locally.
    let (status, head, _) = raw_http(&proxy.url(), &get("/users/@me", Some(&key), None)).await;
    assert_eq!(status, 404);
    assert!(head.contains("x-fleet-proxy: path"), "{head}");
    let options = format!(
        "OPTIONS /api/v10/users/@me HTTP/1.1\r\nhost: x\r\n{}: {}\r\nconnection: close\r\n\r\n",
        carrier::rest::KEY_HEADER,
        key.expose()
    );
    let (status, head, _) = raw_http(&proxy.url(), &options).await;
    assert_eq!(status, 405);
    assert!(head.contains("x-fleet-proxy: method"), "{head}");

    // Upstream gone: a prompt 502, no hang.
    let url = mock.http_url();
    mock.shutdown().await;
    let gone = RestProxy::start(ProxyConfig::new(url, "mock-token"))
        .await
        .unwrap();
    let gone_key = gone.admit("test");
    let (status, head, _) = raw_http(
        &gone.url(),
        &get("/api/v10/users/@me", Some(&gone_key), None),
    )
    .await;
    assert_eq!(status, 502);
    assert!(
        head.contains("x-fleet-proxy: upstream-unreachable"),
        "{head}"
    );
    let figures = gone.stats();
    assert_eq!(
        (figures.requests, figures.upstream_errors),
        (1, 1),
        "{figures:?}"
    );
    // The stats are also served as JSON.
    let (status, _, body) = raw_http(&proxy.url(), &get("/_fleet/stats", Some(&key), None)).await;
    assert_eq!(status, 200);
    let served: carrier::rest::ProxyStats = serde_json::from_str(&body).unwrap();
    assert_eq!(served.refused, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_global_429_holds_every_request_and_each_is_retried_until_it_lands() {
    use carrier::rest::{ProxyConfig, RestProxy};
    // Discord's global limit is lower than the proxy believes: the proxy learns it from 429s.
    let config = MockConfig::builder()
        .guilds(1)
        .global_limit(RouteLimit {
            limit: 4,
            window: Duration::from_millis(400),
        })
        .build();
    let mock = MockDiscord::start(config).await.unwrap();
    let mut config = ProxyConfig::new(mock.http_url(), "mock-token");
    config.max_retries = 10;
    let proxy = RestProxy::start(config).await.unwrap();
    let key = proxy.admit("test");
    let url = proxy.url();
    let request = get("/api/v10/applications/@me", Some(&key), None);
    let answers = futures::future::join_all((0..12).map(|_| raw_http(&url, &request))).await;
    for (status, head, body) in &answers {
        assert_eq!(*status, 200, "{head}{body}");
    }
    let stats = proxy.stats();
    let served_429s = mock.stats().rest_429s;
    assert!(served_429s > 0, "the mock's global limit was hit");
    assert_eq!(stats.global_rate_limited, served_429s, "{stats:?}");
    assert_eq!(
        stats.retries, served_429s,
        "every 429 was retried: {stats:?}"
    );
    assert_eq!(
        stats.invalid_requests, served_429s,
        "global 429s count as invalid"
    );
}
