//! The fleet under attack: hostile input from workers, strangers on the IPC socket and local
//! users on the REST proxy's port, and panics in user code. Each test fails without its fix.

mod common;

use std::time::Duration;

use carrier::{Payload, Target};
use common::{WAIT, launch, mock_config, options, raw_http, settle, spawn_admiral};
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
    // A Redis URL's password is a secret too.
    let mut shared = carrier::FleetOptions::new(TOKEN);
    shared.redis_url = Some(format!("redis://fleet:{TOKEN}@127.0.0.1:6379/0"));
    let shared_debug = format!("{shared:?}");
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
        carrier::rest::RestProxy::start(carrier::rest::ProxyConfig::new(mock.http_url(), TOKEN))
            .await
            .unwrap();
    let hello = carrier::ipc::proto::Up::Hello {
        secret: carrier::Secret::new(secret.clone()),
        process: 1,
        protocol: carrier::ipc::proto::PROTOCOL_VERSION,
        build: "test".into(),
    };
    let env = carrier::ipc::link::WorkerEnv {
        socket: "/tmp/x".into(),
        secret: carrier::Secret::new(secret.clone()),
        process: 1,
        max_frame: 1024,
        timeout: Duration::from_secs(1),
        build: "test".into(),
        grace: Duration::from_mins(1),
    };
    // The cluster prints its own context: its IPC handle, HTTP client, senders and cache.
    let cluster_context = admiral
        .ipc()
        .cluster_command(0, Payload::from("debug"))
        .await
        .unwrap();
    let printed = [
        ("FleetOptions", options_debug),
        ("FleetOptions with Redis", shared_debug),
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

fn request(path: &str, key: Option<&str>, authorization: Option<&str>) -> String {
    let key = key.map_or(String::new(), |key| {
        format!("{}: {key}\r\n", carrier::rest::KEY_HEADER)
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
        let (status, head, _) = raw_http(&url, attempt).await;
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
    let (status, _, _) = raw_http(&url, &request("/api/v10/users/@me", Some(&key), None)).await;
    assert_eq!(status, 200);
    let bad = request("/api/v10/users/@me", Some(&key), Some("Bot wrong"));
    let (status, _, _) = raw_http(&url, &bad).await;
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

/// The `fleet-*` directories in `base`.
fn fleet_dirs(base: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut dirs: Vec<_> = std::fs::read_dir(base)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("fleet-"))
        })
        .collect();
    dirs.sort();
    dirs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_admiral_removes_what_a_sigkilled_one_left() {
    let base = std::env::temp_dir().join(format!("fleet-run-{:016x}", fastrand::u64(..)));
    std::fs::create_dir(&base).unwrap();
    let mock = MockDiscord::start(mock_config(4, 1, 1)).await.unwrap();
    let (mut dead, _, _) = spawn_admiral(&mock, 1, Some(&base)).await;
    let left = fleet_dirs(&base);
    assert_eq!(left.len(), 1, "the running admiral's directory");
    dead.start_kill().unwrap();
    dead.wait().await.unwrap();
    assert!(left[0].exists(), "SIGKILL leaves the directory behind");

    let mut options = options(&mock, 1);
    options.run_dir.clone_from(&base);
    let (admiral, _events) = launch(fleet_tests::fleet(options)).await;
    let now = fleet_dirs(&base);
    assert_eq!(now.len(), 1, "only the new admiral's directory: {now:?}");
    assert_ne!(now[0], left[0]);
    assert!(admiral.ipc_socket().starts_with(&now[0]));
    admiral.shutdown().await;
    assert!(fleet_dirs(&base).is_empty(), "a clean stop removes its own");
    std::fs::remove_dir_all(&base).unwrap();
}

/// A frame: length prefix and body.
fn frame(body: &[u8]) -> Vec<u8> {
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(body);
    frame
}

fn hello(secret: &str, process: u64) -> Vec<u8> {
    let hello = carrier::ipc::proto::Up::Hello {
        secret: carrier::Secret::new(secret),
        process,
        protocol: carrier::ipc::proto::PROTOCOL_VERSION,
        build: "test".into(),
    };
    frame(&carrier::ipc::frame::encode(&hello, 1 << 20).unwrap())
}

/// Writes `chunk` until the peer stops reading; returns the bytes written.
async fn pump(stream: &mut tokio::net::UnixStream, chunk: &[u8], limit: usize) -> usize {
    use tokio::io::AsyncWriteExt as _;
    let mut written = 0;
    while written < limit {
        match tokio::time::timeout(Duration::from_secs(2), stream.write_all(chunk)).await {
            Ok(Ok(())) => written += chunk.len(),
            // Closed by the admiral, or no longer read.
            Ok(Err(_)) | Err(_) => break,
        }
    }
    written
}

/// What the strangers of [`attack`] got out of the admiral.
#[derive(Debug)]
struct Attack {
    /// Bytes the wrong-secret connection wrote after its hello before the admiral stopped
    /// reading.
    read_after_refusal: usize,
    /// Idle connections (of 300) the admiral closed at once.
    idle_closed: usize,
}

/// Strangers on the admiral's IPC socket: a wrong secret followed by a flood, forty connections
/// announcing 16 MiB first frames and sending 8 MiB of them, 300 idle connections, and garbage
/// instead of a hello. Every oversized or garbage connection must be closed well before the
/// hello timeout (10 s).
async fn attack(socket: &std::path::Path) -> Attack {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::UnixStream;
    let prompt = Duration::from_secs(5);

    let mut wrong = UnixStream::connect(socket).await.unwrap();
    wrong.write_all(&hello("not-the-secret", 1)).await.unwrap();
    let flood = frame(&vec![0x90; 1 << 20]);
    let read_after_refusal = pump(&mut wrong, &flood, 64 << 20).await;

    let partial = (0..40).map(|_| async {
        let mut stream = UnixStream::connect(socket).await.unwrap();
        stream
            .write_all(&(16u32 << 20).to_be_bytes())
            .await
            .unwrap();
        pump(&mut stream, &vec![0u8; 1 << 20], 8 << 20).await;
        let mut sink = Vec::new();
        let read = tokio::time::timeout(prompt, stream.read_to_end(&mut sink)).await;
        assert!(read.is_ok(), "an oversized first frame is refused promptly");
    });
    futures::future::join_all(partial).await;

    let mut idle = Vec::new();
    for _ in 0..300 {
        idle.push(UnixStream::connect(socket).await.unwrap());
    }
    let closed = idle.iter_mut().map(|stream| async {
        let mut byte = [0u8; 1];
        matches!(
            tokio::time::timeout(Duration::from_millis(500), stream.read(&mut byte)).await,
            Ok(Ok(0))
        )
    });
    let idle_closed = futures::future::join_all(closed)
        .await
        .into_iter()
        .filter(|c| *c)
        .count();
    drop(idle);

    let mut garbage = UnixStream::connect(socket).await.unwrap();
    garbage.write_all(&frame(&[0xc1; 32])).await.unwrap();
    let mut sink = Vec::new();
    assert!(
        tokio::time::timeout(prompt, garbage.read_to_end(&mut sink))
            .await
            .is_ok(),
        "garbage instead of a hello is refused promptly"
    );
    Attack {
        read_after_refusal,
        idle_closed,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_on_the_ipc_socket_cost_only_their_connections() {
    let mock = MockDiscord::start(mock_config(4, 1, 1)).await.unwrap();
    let (admiral, mut events) = launch(fleet_tests::fleet(options(&mock, 1))).await;
    admiral.wait_ready(WAIT).await.unwrap();
    let ipc = admiral.ipc();
    let echo = || async {
        ipc.service_command("echo", Payload::from("still here"))
            .await
            .unwrap()
    };
    // The real workers are served while strangers attack, and afterwards.
    let serving = async {
        let mut answered = 0;
        for _ in 0..50 {
            assert_eq!(echo().await, Payload::from("still here"));
            answered += 1;
        }
        answered
    };
    let (attack, answered) = tokio::join!(attack(admiral.ipc_socket()), serving);
    assert_eq!(answered, 50);
    // A kernel socket buffer takes a little before writes stall; nowhere near what was offered.
    assert!(
        attack.read_after_refusal < 16 << 20,
        "the admiral read {} bytes after refusing",
        attack.read_after_refusal
    );
    assert!(
        attack.idle_closed >= 200,
        "only {} of 300 idle connections were closed",
        attack.idle_closed
    );
    common::until(&mut events, |e| {
        matches!(e, carrier::FleetEvent::ProtocolError { error, .. } if error.contains("wrong secret"))
    })
    .await;
    assert_eq!(echo().await, Payload::from("still here"));
    // A worker that starts while a hundred idle strangers hold connections still gets in: the
    // oldest unproven connections make way for it.
    let mut idle = Vec::new();
    for _ in 0..100 {
        idle.push(
            tokio::net::UnixStream::connect(admiral.ipc_socket())
                .await
                .unwrap(),
        );
    }
    admiral
        .restart(&carrier::WorkerId::Cluster(0), carrier::RestartMode::Hard)
        .await
        .expect("a new cluster process connects past the strangers");
    drop(idle);
    let cluster = admiral
        .ipc()
        .cluster_command(0, Payload::from("ping"))
        .await
        .unwrap();
    assert_eq!(cluster, Payload::from("ping"));
    admiral.shutdown().await;
}

/// A process's resident set now and at its peak, in KiB.
fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap()
    };
    (field("VmRSS:"), field("VmHWM:"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_cannot_grow_the_admirals_memory() {
    let base = std::env::temp_dir().join(format!("fleet-run-{:016x}", fastrand::u64(..)));
    std::fs::create_dir(&base).unwrap();
    let mock = MockDiscord::start(mock_config(4, 1, 1)).await.unwrap();
    let (mut admiral, _, _lines) = spawn_admiral(&mock, 1, Some(&base)).await;
    let pid = admiral.id().unwrap();
    let socket = fleet_dirs(&base)[0].join("admiral.sock");
    let (before, _) = rss_kib(pid);
    let attack = attack(&socket).await;
    let (after, peak) = rss_kib(pid);
    eprintln!("admiral RSS: {before} KiB before, {after} KiB after, peak {peak} KiB; {attack:?}");
    // 40 strangers offering 16 MiB frames would hold 640 MiB if frames were buffered before a
    // hello; the admiral's peak stays within a few MiB of where it started.
    assert!(
        peak.saturating_sub(before) < 32 << 10,
        "the admiral grew from {before} KiB to a peak of {peak} KiB"
    );
    assert!(attack.idle_closed >= 200, "{attack:?}");
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let status = tokio::time::timeout(WAIT, admiral.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(
        status.success(),
        "the admiral shuts down cleanly after the attack: {status:?}"
    );
    std::fs::remove_dir_all(&base).unwrap();
}

/// The next `n` panic reports on the event stream.
async fn panics(
    events: &mut tokio::sync::broadcast::Receiver<carrier::FleetEvent>,
    n: usize,
) -> Vec<(carrier::WorkerId, carrier::panics::PanicReport)> {
    let mut found = Vec::new();
    common::until(events, |e| {
        if let carrier::FleetEvent::Panic { worker, report, .. } = e {
            found.push((worker.clone(), report.clone()));
        }
        found.len() == n
    })
    .await;
    found
}

/// After panics in event handlers: 40 more events flow, then every event produced was confirmed
/// by the same sessions (no identify, no resume) and reached cluster 0's handler.
async fn assert_the_shards_went_on(mock: &MockDiscord, ipc: &carrier::Ipc, identifies: u64) {
    let after = mock.stats().events_produced + 40;
    mock.wait_until(WAIT, "40 more events", |m| {
        m.stats().events_produced >= after
    })
    .await
    .unwrap();
    let report = settle(mock).await;
    assert_eq!(report.lost, 0, "{report:?}");
    assert_eq!(report.delivered, report.produced);
    assert_eq!(
        mock.stats().identifies,
        identifies,
        "no shard dropped its session"
    );
    assert!(mock.sessions().iter().all(|s| s.attached && s.resumes == 0));
    let handled = common::status(
        &ipc.cluster_command(0, Payload::from("status"))
            .await
            .unwrap(),
    );
    assert_eq!(
        handled.events, report.produced,
        "every event reached the handler"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_event_handler_costs_one_event_and_the_shard_goes_on() {
    let mock = MockDiscord::start(mock_config(8, 2, 1)).await.unwrap();
    let (admiral, mut events) = launch(fleet_tests::fleet(options(&mock, 1))).await;
    admiral.wait_ready(WAIT).await.unwrap();
    let ipc = admiral.ipc();
    let identifies = mock.stats().identifies;
    ipc.cluster_command(0, Payload::from("panic-events:3"))
        .await
        .unwrap();
    mock.start_events(Some(5.0)).unwrap();
    let reports = panics(&mut events, 3).await;
    for (worker, report) in &reports {
        assert_eq!(*worker, carrier::WorkerId::Cluster(0));
        assert_eq!(report.context, "handle_event");
        assert!(report.shard.is_some_and(|s| s < 2), "{report:?}");
        assert_eq!(report.event.as_deref(), Some("MessageCreate"));
        assert!(report.caught);
        assert!(report.message.contains("panicked on purpose"), "{report:?}");
        let location = report.location.as_deref().unwrap_or_default();
        assert!(location.contains("tests/src/lib.rs"), "{report:?}");
    }
    assert_the_shards_went_on(&mock, ipc, identifies).await;
    admiral.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panicking_commands_and_message_handlers_answer_errors_and_are_reported() {
    let mock = MockDiscord::start(mock_config(4, 1, 1)).await.unwrap();
    let (admiral, mut events) = launch(fleet_tests::fleet(options(&mock, 1))).await;
    admiral.wait_ready(WAIT).await.unwrap();
    let ipc = admiral.ipc();

    // A command handler's panic: its caller gets an error at once, not a timeout.
    for target in [Target::Service("echo".into()), Target::Cluster(0)] {
        let started = tokio::time::Instant::now();
        let error = ipc
            .command(target.clone(), Payload::from("panic"))
            .await
            .unwrap_err();
        assert!(
            matches!(&error, carrier::IpcError::Remote { message, .. } if message.contains("panicked on purpose")),
            "{error}"
        );
        assert!(
            started.elapsed() < ipc.default_timeout(),
            "an answer, not a timeout"
        );
        let (worker, report) = panics(&mut events, 1).await.remove(0);
        assert_eq!(worker.target(), target);
        assert_eq!(report.context, "command");
        assert!(report.caught);
    }

    // A message handler's panic is reported; the worker's IPC reader goes on.
    ipc.broadcast("explode", Payload::empty()).await.unwrap();
    let (worker, report) = panics(&mut events, 1).await.remove(0);
    assert_eq!(worker, carrier::WorkerId::Cluster(0));
    assert_eq!(report.context, "message handler");
    assert_eq!(report.event.as_deref(), Some("explode"));

    // A panic in a task user code spawned is caught by nobody: the hook reports it.
    for target in [Target::Service("echo".into()), Target::Cluster(0)] {
        let answer = ipc
            .command(target.clone(), Payload::from("spawn-panic"))
            .await
            .unwrap();
        assert_eq!(answer, Payload::from("spawned"));
        let (worker, report) = panics(&mut events, 1).await.remove(0);
        assert_eq!(worker.target(), target);
        assert_eq!(report.context, "task");
        assert!(!report.caught);
        assert!(
            report.message.contains("spawned task panicked"),
            "{report:?}"
        );
    }

    // Every worker still serves.
    assert_eq!(
        ipc.service_command("echo", Payload::from("alive"))
            .await
            .unwrap(),
        Payload::from("alive")
    );
    assert_eq!(
        ipc.cluster_command(0, Payload::from("alive"))
            .await
            .unwrap(),
        Payload::from("alive")
    );
    let workers = admiral.workers().await.unwrap();
    assert!(
        workers
            .iter()
            .filter(|w| w.id != carrier::WorkerId::Service("broken".into()))
            .all(|w| w.state == carrier::admiral::State::Live),
        "{workers:?}"
    );
    admiral.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_serenity_handler_is_reported_and_the_shard_goes_on() {
    let mock = MockDiscord::start(mock_config(8, 2, 1)).await.unwrap();
    let (admiral, mut events) = launch(fleet_tests::serenity_fleet(options(&mock, 1))).await;
    admiral.wait_ready(WAIT).await.unwrap();
    let ipc = admiral.ipc();
    let identifies = mock.stats().identifies;
    ipc.cluster_command(0, Payload::from("panic-events:2"))
        .await
        .unwrap();
    mock.start_events(Some(5.0)).unwrap();
    for (worker, report) in panics(&mut events, 2).await {
        assert_eq!(worker, carrier::WorkerId::Cluster(0));
        assert!(
            report.message.contains("serenity event handler panicked"),
            "{report:?}"
        );
        assert!(report.location.is_some(), "{report:?}");
    }
    assert_the_shards_went_on(&mock, ipc, identifies).await;
    admiral.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_and_reshards_refuse_what_would_grow_the_admiral_without_bound() {
    use carrier::admiral::ShardCount;
    use carrier::ipc::proto::Refusal;
    let mock = MockDiscord::start(mock_config(4, 1, 1)).await.unwrap();
    let mut options = options(&mock, 1);
    options.store_limit = 4096;
    let (admiral, _events) = launch(fleet_tests::fleet(options)).await;
    admiral.wait_ready(WAIT).await.unwrap();
    let ipc = admiral.ipc();

    let big = Payload::from(vec![7u8; 3000]);
    ipc.store_set("a", big.clone()).await.unwrap();
    let refused = ipc.store_set("b", big.clone()).await.unwrap_err();
    assert!(
        matches!(&refused, carrier::IpcError::Refused(Refusal::Invalid(m)) if m.contains("store_limit")),
        "{refused}"
    );
    assert!(
        !ipc.store_has("b").await.unwrap(),
        "a refused write changes nothing"
    );
    // Overwriting a key counts its new size only; deleting frees its bytes.
    ipc.store_set("a", Payload::from(vec![1u8; 4000]))
        .await
        .unwrap();
    assert!(ipc.store_delete("a").await.unwrap());
    ipc.store_set("b", big).await.unwrap();
    ipc.store_clear().await.unwrap();
    ipc.store_set("c", Payload::from(vec![0u8; 4000]))
        .await
        .unwrap();

    // A reshard from any worker may not make the admiral start processes without bound.
    for (count, clusters, says) in [
        (ShardCount::Exact(1_000_000), None, "at most 65536"),
        (ShardCount::Exact(4), Some(100_000), "at most 1024"),
    ] {
        let error = admiral.reshard(count, clusters).await.unwrap_err();
        assert!(
            matches!(&error, carrier::IpcError::Refused(Refusal::ReshardFailed(m)) if m.contains(says)),
            "{error}"
        );
    }
    assert_eq!(admiral.plan().shard_total, 1, "nothing changed");
    admiral.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_sending_thousands_of_hostile_messages_cannot_break_the_router() {
    let mock = MockDiscord::start(mock_config(4, 2, 1)).await.unwrap();
    let mut options = options(&mock, 2);
    let seed = fastrand::u64(..);
    if let Some(command) = options.worker_command.as_mut() {
        command.env.push(("FUZZ_MESSAGES".into(), "3000".into()));
        command
            .env
            .push(("FUZZ_SEED".into(), seed.to_string().into()));
    }
    let fleet = fleet_tests::fleet(options).service::<fleet_tests::Echo>("fuzzer");
    let (admiral, mut events) = launch(fleet).await;
    // Its exit and its last line (stderr is read apart from the exit) both arrive.
    let (mut code, mut said) = (None, Vec::new());
    common::until(&mut events, |e| {
        match e {
            carrier::FleetEvent::Exited {
                worker: carrier::WorkerId::Service(name),
                code: exit,
                ..
            } if name == "fuzzer" => code = Some(*exit),
            carrier::FleetEvent::Output {
                worker: carrier::WorkerId::Service(name),
                line,
                ..
            } if name == "fuzzer" => said.push(line.clone()),
            _ => {}
        }
        code.is_some() && (code != Some(Some(0)) || said.iter().any(|l| l.contains("every probe")))
    })
    .await;
    assert_eq!(code, Some(Some(0)), "seed {seed}: the fuzzer said {said:?}");
    assert!(
        said.iter()
            .any(|l| l.contains("3000 hostile messages sent, every probe answered")),
        "{said:?}"
    );
    // The real workers are served as before.
    let ipc = admiral.ipc();
    admiral.wait_ready(WAIT).await.unwrap();
    assert_eq!(
        ipc.service_command("echo", Payload::from("alive"))
            .await
            .unwrap(),
        Payload::from("alive")
    );
    for cluster in 0..2 {
        assert_eq!(
            ipc.cluster_command(cluster, Payload::from("alive"))
                .await
                .unwrap(),
            Payload::from("alive")
        );
    }
    admiral.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_flooding_requests_is_refused_past_its_cap_and_others_are_served() {
    let mock = MockDiscord::start(mock_config(4, 1, 1)).await.unwrap();
    let fleet = fleet_tests::fleet(options(&mock, 1)).service::<fleet_tests::Echo>("flood");
    let (admiral, mut events) = launch(fleet).await;
    let mut said = None;
    common::until(&mut events, |e| {
        if let carrier::FleetEvent::Output {
            worker: carrier::WorkerId::Service(name),
            line,
            ..
        } = e
            && name == "flood"
            && line.starts_with("flood:")
        {
            said = Some(line.clone());
        }
        said.is_some()
    })
    .await;
    let said = said.unwrap();
    let numbers: Vec<u64> = said
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect();
    let [sent, answered, refused] = numbers[..] else {
        panic!("{said}");
    };
    assert_eq!(answered, sent - 8192, "at most 8192 held: {said}");
    assert!(
        refused > 1000,
        "the admiral refused what passed its cap: {said}"
    );
    // The echo service holds 8192 sleeping commands, and still answers everyone else.
    assert_eq!(
        admiral
            .ipc()
            .service_command("echo", Payload::from("alive"))
            .await
            .unwrap(),
        Payload::from("alive")
    );
    admiral.shutdown().await;
}

/// The admiral runs on a thread of its own, yet ends with the runtime it was started on, as a
/// task of it would: its IPC directory goes and its workers are left to exit.
#[test]
fn an_admiral_ends_with_the_runtime_it_was_started_on() {
    let outer = tokio::runtime::Runtime::new().unwrap();
    let mock = outer
        .block_on(MockDiscord::start(mock_config(2, 1, 1)))
        .unwrap();
    let inner = tokio::runtime::Runtime::new().unwrap();
    let admiral = inner.block_on(async {
        let (admiral, _events) = launch(fleet_tests::fleet(options(&mock, 1))).await;
        admiral.wait_ready(WAIT).await.unwrap();
        admiral
    });
    let dir = admiral.ipc_socket().parent().unwrap().to_owned();
    assert!(dir.exists());
    drop(inner);
    let stopped = async { tokio::time::timeout(WAIT, admiral.wait_stopped()).await };
    outer
        .block_on(stopped)
        .expect("the admiral stops with its runtime");
    assert!(!dir.exists(), "its IPC directory is removed");
}
