//! The fleet under attack: hostile input from workers, strangers on the IPC socket and local
//! users on the REST proxy's port, and panics in user code. Each test fails without its fix.

mod common;

use std::time::Duration;

use carrier::{Payload, Target};
use common::{WAIT, launch, mock_config, options};
use discord_mock::MockDiscord;

const THREE_YEARS: Duration = Duration::from_hours(3 * 365 * 24);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_of_years_is_clamped_and_the_admiral_lives() {
    let mock = MockDiscord::start(mock_config(4, 1, 1)).await.unwrap();
    let (admiral, _events) = launch(fleet_tests::fleet(options(&mock, 1))).await;
    admiral.wait_ready(WAIT).await.unwrap();
    let ipc = admiral.ipc();

    // From the admiral's own handle.
    let answer = ipc
        .command_within(
            Target::Service("echo".into()),
            Payload::from("slow"),
            THREE_YEARS,
        )
        .await
        .unwrap();
    assert_eq!(answer, Payload::from("slow done"));

    // From a worker: the cluster asks the service with the same timeout, through the router.
    let answer = ipc
        .cluster_command(0, Payload::from("far:slow"))
        .await
        .unwrap();
    assert_eq!(answer, Payload::from("slow done"));

    // The router still routes.
    assert_eq!(
        ipc.service_command("echo", Payload::from("alive"))
            .await
            .unwrap(),
        Payload::from("alive")
    );
    admiral.shutdown().await;
}

/// The value of `name` in a process's environment.
fn environ_var(pid: u32, name: &str) -> Option<String> {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    environ.split(|b| *b == 0).find_map(|entry| {
        let entry = std::str::from_utf8(entry).ok()?;
        entry
            .strip_prefix(name)?
            .strip_prefix('=')
            .map(str::to_owned)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_debug_output_shows_the_token_or_the_ipc_secret() {
    const TOKEN: &str = "hardening-token-7f3a9c";
    let mut config = mock_config(4, 1, 1);
    config.token = TOKEN.into();
    let mock = MockDiscord::start(config).await.unwrap();
    let mut options = options(&mock, 1);
    options.token = TOKEN.into();
    let options_debug = format!("{options:?}");
    let fleet = fleet_tests::fleet(options);
    let fleet_debug = format!("{fleet:?}");
    let (admiral, _events) = launch(fleet).await;
    admiral.wait_ready(WAIT).await.unwrap();

    let workers = admiral.workers().await.unwrap();
    let pid = workers
        .iter()
        .find_map(|w| w.pid.filter(|_| w.id == carrier::WorkerId::Cluster(0)))
        .unwrap();
    let secret = environ_var(pid, carrier::ipc::link::ENV_SECRET).expect("a worker has the secret");

    let proxy =
        carrier::proxy::RestProxy::start(carrier::proxy::ProxyConfig::new(mock.http_url(), TOKEN))
            .await
            .unwrap();
    let hello = carrier::ipc::proto::Up::Hello {
        secret: carrier::Secret::new(secret.clone()),
        process: 1,
    };
    let env = carrier::ipc::link::WorkerEnv {
        socket: "/tmp/x".into(),
        secret: carrier::Secret::new(secret.clone()),
        process: 1,
        max_frame: 1024,
        timeout: Duration::from_secs(1),
    };
    // The cluster prints its own context: its IPC handle, HTTP client, senders and cache.
    let cluster_context = admiral
        .ipc()
        .cluster_command(0, Payload::from("debug"))
        .await
        .unwrap();
    let printed = [
        ("FleetOptions", options_debug),
        ("Fleet", fleet_debug),
        ("AdmiralHandle", format!("{admiral:?}")),
        ("RestProxy", format!("{proxy:?}")),
        ("ProxyStatsHandle", format!("{:?}", proxy.stats_handle())),
        ("Up::Hello", format!("{hello:?}")),
        ("WorkerEnv", format!("{env:?}")),
        (
            "twilight ClusterContext",
            String::from_utf8(cluster_context.as_bytes().to_vec()).unwrap(),
        ),
    ];
    for (name, text) in &printed {
        assert!(!text.is_empty(), "{name} prints something");
        assert!(!text.contains(TOKEN), "{name} shows the token: {text}");
        assert!(
            !text.contains(&secret),
            "{name} shows the IPC secret: {text}"
        );
    }
    admiral.shutdown().await;
}

/// One HTTP/1.1 request on a fresh connection: `(status, head)`.
async fn raw_http(url: &str, request: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let addr = url.strip_prefix("http://").unwrap();
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut text = String::new();
    tokio::time::timeout(WAIT, stream.read_to_string(&mut text))
        .await
        .expect("the proxy answers")
        .unwrap();
    let head = text.split("\r\n\r\n").next().unwrap().to_ascii_lowercase();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head)
}

fn request(path: &str, key: Option<&str>, authorization: Option<&str>) -> String {
    let key = key.map_or(String::new(), |key| {
        format!("{}: {key}\r\n", carrier::proxy::KEY_HEADER)
    });
    let auth = authorization.map_or(String::new(), |auth| format!("authorization: {auth}\r\n"));
    let extra = key + &auth;
    format!("GET {path} HTTP/1.1\r\nhost: x\r\n{extra}connection: close\r\n\r\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rest_proxy_serves_only_the_fleet_and_counts_invalid_requests_per_caller() {
    let mock = MockDiscord::start(mock_config(4, 2, 1)).await.unwrap();
    let (admiral, _events) = launch(fleet_tests::fleet(options(&mock, 2))).await;
    admiral.wait_ready(WAIT).await.unwrap();
    let url = admiral.rest_proxy_url().unwrap().to_owned();
    let upstream_before = mock.stats().rest_requests;

    // A local user without a key, with a made-up key, or with its own token: refused by the
    // proxy, Discord never asked, nothing spent from the fleet's invalid-request budget.
    let refused = [
        request("/api/v10/users/@me", None, None),
        request("/api/v10/users/@me", Some("0123456789abcdef"), None),
        request("/api/v10/users/@me", None, Some("Bot mock-token")),
        request("/_fleet/stats", None, None),
    ];
    for attempt in &refused {
        let (status, head) = raw_http(&url, attempt).await;
        assert_eq!(status, 401, "{head}");
        assert!(head.contains("x-fleet-proxy: unauthenticated"), "{head}");
    }
    let figures = admiral.rest_proxy_stats().unwrap();
    assert_eq!(figures.unauthenticated, 4, "{figures:?}");
    assert_eq!(
        (figures.requests, figures.invalid_requests),
        (0, 0),
        "{figures:?}"
    );
    assert_eq!(mock.stats().rest_requests, upstream_before);

    // The clusters' own clients carry their keys: their requests go through.
    let posted = admiral
        .ipc()
        .cluster_command(
            1,
            Payload::from(format!("post:{}:3", channel(&mock)).into_bytes()),
        )
        .await
        .unwrap();
    let posted: fleet_tests::Posted = posted.decode().unwrap();
    assert_eq!((posted.created, posted.failed), (3, 0));

    // The admiral's own key works; a request with a bad token is invalid and charged to its
    // caller.
    let key = admiral.rest_proxy_key().unwrap().expose().to_owned();
    let (status, _) = raw_http(&url, &request("/api/v10/users/@me", Some(&key), None)).await;
    assert_eq!(status, 200);
    let bad = request("/api/v10/users/@me", Some(&key), Some("Bot wrong"));
    let (status, _) = raw_http(&url, &bad).await;
    assert_eq!(status, 401, "Discord's own 401, passed through");
    let figures = admiral.rest_proxy_stats().unwrap();
    assert_eq!(figures.invalid_requests, 1);
    assert_eq!(figures.callers["admiral"].requests, 2, "{figures:?}");
    assert_eq!(
        figures.callers["admiral"].invalid_requests, 1,
        "{figures:?}"
    );
    assert_eq!(figures.callers["cluster-1"].requests, 3, "{figures:?}");
    assert_eq!(
        figures.callers["cluster-1"].invalid_requests, 0,
        "{figures:?}"
    );
    admiral.shutdown().await;
}

/// The first text channel of the mock's first guild.
fn channel(mock: &MockDiscord) -> u64 {
    mock.guild(mock.guild_ids()[0]).unwrap().text_channels[0]
}
