//! Stats snapshots of real fleets on discord-mock: what the admiral records and measures, what
//! each worker adds, rates between rounds, interval events and broadcasts, and snapshots that
//! come back partial, in time, when a worker hangs or its stats method panics.

#![allow(
    clippy::float_cmp,
    reason = "the metric samples compared exactly are whole numbers, exact in f64"
)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use carrier::stats::ShardStatus;
use carrier::{FleetEvent, FleetStats, Payload, Target, WorkerId};
use common::{WAIT, launch, mock_builder, mock_config, options, signal, until};
use discord_mock::MockDiscord;
use fleet_tests::{ClusterFields, EchoStats};

/// Waits for an interval snapshot that satisfies `done`.
async fn snapshot_where(
    events: &mut tokio::sync::broadcast::Receiver<FleetEvent>,
    mut done: impl FnMut(&FleetStats) -> bool,
) -> Arc<FleetStats> {
    let seen = until(events, |e| matches!(e, FleetEvent::Stats(s) if done(s))).await;
    match seen.last() {
        Some(FleetEvent::Stats(stats)) => stats.clone(),
        _ => unreachable!("until returns the matching event last"),
    }
}

fn custom<T: serde::de::DeserializeOwned>(value: Option<&serde_json::Value>) -> T {
    serde_json::from_value(value.expect("the worker added its fields").clone()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_holds_every_figure_of_a_twilight_fleet() {
    let mock = MockDiscord::start(mock_config(24, 4, 2)).await.unwrap();
    let mut options = options(&mock, 2);
    options.heartbeat_interval = Duration::from_millis(100);
    options.stats_interval = Duration::from_millis(200);
    let (admiral, mut events) = launch(fleet_tests::fleet(options)).await;
    admiral.wait_ready(WAIT).await.unwrap();

    // Every guild cached, every worker's IPC latency measured, every event loop timed (over a
    // second at least).
    let stats = snapshot_where(&mut events, |s| {
        s.guilds == 24
            && s.clusters.iter().all(|c| c.ipc_latency_us.is_some())
            && s.shards()
                .all(|s| s.latency_ms.is_some() && s.busy.is_some())
    })
    .await;
    assert_eq!(
        (stats.shard_count, stats.shards_ready, stats.shard_total),
        (4, 4, 4)
    );
    assert!(stats.taken_at_ms > 1_700_000_000_000);
    assert_eq!(stats.clusters.len(), 2);
    let plan = admiral.plan();
    for (cluster, planned) in stats.clusters.iter().zip(&plan.clusters) {
        assert_eq!(cluster.id, planned.id);
        assert_eq!(cluster.state, "live");
        assert_eq!(cluster.restarts, 0);
        assert!(cluster.usage.pid.is_some() && cluster.usage.ram_bytes > 1 << 20);
        assert!(cluster.uptime_ms > 0);
        let ids: Vec<u32> = cluster.shards.iter().map(|s| s.id).collect();
        assert_eq!(
            ids,
            (planned.first_shard..=planned.last_shard).collect::<Vec<_>>()
        );
        let fields: ClusterFields = custom(cluster.custom.as_ref());
        assert_eq!(fields.cluster, cluster.id);
        assert_eq!(
            cluster.guilds,
            cluster.shards.iter().map(|s| s.guilds).sum::<u64>()
        );
    }
    for shard in stats.shards() {
        assert_eq!(shard.status, ShardStatus::Ready);
        assert_eq!(shard.identifies, 1, "{shard:?}");
        assert_eq!((shard.resumes, shard.disconnects), (0, 0));
        assert!(shard.process.is_some());
        // Each shard's guilds are the ones Discord routes to it.
        let expected = mock
            .guild_ids()
            .iter()
            .filter(|&&g| (g >> 22) % 4 == u64::from(shard.id))
            .count() as u64;
        assert_eq!(shard.guilds, expected, "{shard:?}");
        assert!(
            shard.events >= shard.guilds,
            "GUILD_CREATEs count: {shard:?}"
        );
        // twilight's event loop is timed: a share, and far from falling behind.
        assert!(shard.busy.is_some_and(|b| b < 0.9), "{shard:?}");
    }
    assert_eq!(stats.shards_behind, 0);
    assert_eq!(stats.shards().map(|s| s.guilds).sum::<u64>(), 24);
    assert!(stats.members > 0 && stats.users > 0);
    assert!(stats.admiral.ram_bytes > 1 << 20);
    assert_eq!(
        stats.total_ram_bytes,
        stats.admiral.ram_bytes + stats.clusters_ram_bytes + stats.services_ram_bytes
    );
    assert_eq!(stats.identify.waiting, 0);
    assert!(stats.rest.is_some(), "the REST proxy is on by default");
    let echo = stats.services.iter().find(|s| s.name == "echo").unwrap();
    assert_eq!(echo.state, "live");
    assert!(echo.usage.ram_bytes > 0 && echo.ipc_latency_us.is_some());
    // Only the service that failed to start is missing.
    let missing: Vec<_> = stats.missing.iter().map(|m| &m.worker).collect();
    assert_eq!(missing, [&Target::Service("broken".into())]);

    // A service's own fields, on demand.
    let ipc = admiral.ipc();
    ipc.service_command("echo", Payload::from("ping"))
        .await
        .unwrap();
    let now = admiral.stats().await.unwrap();
    let echo = now.services.iter().find(|s| s.name == "echo").unwrap();
    let fields: EchoStats = custom(echo.custom.as_ref());
    assert!(fields.answered >= 1);

    // Events per second, measured between rounds: 40 messages into shard 0's guilds.
    let guild_on_0 = mock
        .guild_ids()
        .iter()
        .position(|&g| (g >> 22) % 4 == 0)
        .unwrap();
    let before = admiral.stats().await.unwrap().shard(0).unwrap().events;
    for _ in 0..40 {
        mock.produce_event(guild_on_0);
    }
    let stats = snapshot_where(&mut events, |s| {
        s.shard(0).is_some_and(|s| s.events >= before + 40)
    })
    .await;
    let shard = stats.shard(0).unwrap();
    assert!(shard.events_per_second > 0.0, "{shard:?}");

    // A close is counted, with its code, and the shard resumes.
    mock.close_shard(1, 4000).unwrap();
    let stats = snapshot_where(&mut events, |s| {
        s.shard(1)
            .is_some_and(|s| s.resumes == 1 && s.status == ShardStatus::Ready)
    })
    .await;
    let shard = stats.shard(1).unwrap();
    assert_eq!(shard.disconnects, 1);
    assert_eq!(shard.last_close_code, Some(4000));
    assert_eq!(shard.identifies, 1, "a resume spends no identify");

    // A worker asks too.
    let ready = ipc
        .cluster_command(0, Payload::from("fleet-stats"))
        .await
        .unwrap();
    assert_eq!(ready.decode::<u32>().unwrap(), 4);
    // Any deadline is taken, the largest too: healthy workers answer at once.
    let stats = ipc.stats_within(Duration::MAX).await.unwrap();
    assert!(
        stats
            .missing
            .iter()
            .all(|m| m.worker == Target::Service("broken".into()))
    );
    admiral.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_or_failing_worker_makes_the_snapshot_partial_never_late() {
    let mock = MockDiscord::start(mock_config(8, 2, 1)).await.unwrap();
    let mut options = options(&mock, 2);
    options.stats_interval = Duration::ZERO;
    let (admiral, mut events) = launch(fleet_tests::fleet(options)).await;
    admiral.wait_ready(WAIT).await.unwrap();
    let ipc = admiral.ipc();

    // A stats method that panics: that worker's fields are missing, its panic reported, and
    // everything else arrives.
    ipc.service_command("echo", Payload::from("stats-panic"))
        .await
        .unwrap();
    let stats = admiral.stats().await.unwrap();
    let echo = stats.services.iter().find(|s| s.name == "echo").unwrap();
    assert_eq!(echo.custom, None);
    assert!(echo.usage.ram_bytes > 0);
    let reason = &stats
        .missing
        .iter()
        .find(|m| m.worker == Target::Service("echo".into()))
        .expect("echo is listed")
        .reason;
    assert!(reason.contains("stats panicked on purpose"), "{reason}");
    until(&mut events, |e| {
        matches!(e, FleetEvent::Panic { worker: WorkerId::Service(name), report, .. }
            if name == "echo" && report.message.contains("stats panicked on purpose"))
    })
    .await;

    // A cluster that stopped answering: listed as timed out, the snapshot comes by its deadline.
    let hung = WorkerId::Cluster(1);
    signal(&admiral, &hung, "-STOP").await;
    // While a round waits on it, others asking join that round: the workers are asked once.
    let calls = || async {
        ipc.service_command("echo", Payload::from("stats-calls"))
            .await
            .unwrap()
            .decode::<u64>()
            .unwrap()
    };
    let before = calls().await;
    let asks: Vec<_> = (0..20)
        .map(|_| ipc.stats_within(Duration::from_secs(2)))
        .collect();
    let snapshots = futures::future::join_all(asks).await;
    assert!(snapshots.iter().all(Result::is_ok), "{snapshots:?}");
    assert_eq!(calls().await - before, 1, "20 askers, one round");
    // Answered (not a timeout error): the snapshot came within the request's own timeout.
    let stats = ipc.stats_within(Duration::from_millis(400)).await.unwrap();
    signal(&admiral, &hung, "-CONT").await;
    let missing: Vec<_> = stats
        .missing
        .iter()
        .filter(|m| m.worker == Target::Cluster(1))
        .collect();
    assert_eq!(missing.len(), 1, "{:?}", stats.missing);
    assert_eq!(missing[0].reason, "timed out");
    // What the admiral knows of it is still there; cluster 0 reported in full.
    assert_eq!(stats.shard_count, 2);
    let hung_cluster = stats.clusters.iter().find(|c| c.id == 1).unwrap();
    assert!(hung_cluster.usage.ram_bytes > 0);
    assert_eq!(hung_cluster.shards[0].status, ShardStatus::Ready);
    let cluster0 = stats.clusters.iter().find(|c| c.id == 0).unwrap();
    assert!(cluster0.custom.is_some() && cluster0.guilds > 0);
    admiral.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interval_snapshots_reach_the_workers_and_restarts_are_counted() {
    let mock = MockDiscord::start(mock_config(8, 2, 1)).await.unwrap();
    let mut options = options(&mock, 2);
    options.stats_interval = Duration::from_millis(200);
    options.broadcast_stats = true;
    options.max_restarts = 3;
    options.restart_backoff = Duration::from_millis(50);
    let (admiral, mut events) = launch(fleet_tests::fleet(options)).await;
    admiral.wait_ready(WAIT).await.unwrap();
    let ipc = admiral.ipc();
    let (got_tx, mut got) = tokio::sync::mpsc::unbounded_channel();
    ipc.register("got-stats", move |m| {
        let _ = got_tx.send(m.payload.decode::<(u32, u32)>().unwrap());
    });
    let mut heard = std::collections::BTreeSet::new();
    while heard.len() < 2 {
        let (cluster, shards) = tokio::time::timeout(WAIT, got.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(shards, 2);
        heard.insert(cluster);
    }
    // A subscriber to the stats topic hears the snapshots, typed, and nothing else.
    let mut snapshots = ipc.subscribe(&[carrier::Topic::Stats]).await.unwrap();
    for _ in 0..2 {
        let event = tokio::time::timeout(WAIT, snapshots.recv())
            .await
            .unwrap()
            .unwrap();
        let carrier::AdmiralEvent::Stats(stats) = &*event else {
            panic!("a stats subscriber heard {event:?}");
        };
        assert_eq!(stats.shard_count, 2);
    }

    // A killed cluster comes back: one restart, and its shard resumed the session it left.
    common::kill(&admiral, &WorkerId::Cluster(1)).await;
    let stats = snapshot_where(&mut events, |s| {
        s.clusters
            .iter()
            .any(|c| c.id == 1 && c.restarts == 1 && c.state == "live")
            && s.shard(1).is_some_and(|s| s.status == ShardStatus::Ready)
    })
    .await;
    let shard = stats.shard(1).unwrap();
    assert_eq!((shard.identifies, shard.resumes), (1, 1), "{shard:?}");
    assert_eq!(stats.clusters[0].restarts, 0);
    admiral.shutdown().await;
}

/// A handler slower than its gateway: the shards show it in their busy share, the snapshot
/// counts them behind and the metrics carry the share; the backlog waits in the sockets and
/// drains once the gateway slows, with no event lost, and the shards are no longer behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_slower_than_its_gateway_shows_back_pressure_and_recovers() {
    // Heartbeats far apart: the acknowledgements queue behind the backlog, and a shard that
    // saw none for a whole interval would take its connection for a zombie and resume.
    let config = mock_builder(4, 2, 1)
        .heartbeat_interval(Duration::from_secs(10))
        .build();
    let mock = MockDiscord::start(config).await.unwrap();
    let mut options = options(&mock, 1);
    options.stats_interval = Duration::from_millis(300);
    if let Some(command) = options.worker_command.as_mut() {
        // 20 ms a message: at most 50 a second per shard.
        command
            .env
            .push((fleet_tests::MESSAGE_DELAY_MS_ENV.into(), "20".into()));
    }
    let (admiral, mut events) = launch(fleet_tests::fleet(options)).await;
    admiral.wait_ready(WAIT).await.unwrap();
    // 2 guilds a shard at 30 messages a second each: 60 a second asked of each shard.
    mock.start_events(Some(30.0)).unwrap();
    let stats = snapshot_where(&mut events, |s| s.shards_behind == 2).await;
    for shard in stats.shards() {
        assert!(shard.busy.is_some_and(|b| b >= 0.9), "{shard:?}");
    }
    let url = admiral.http_url().unwrap();
    let request = "GET /metrics HTTP/1.1\r\nhost: fleet\r\nconnection: close\r\n\r\n";
    let (code, _, text) = common::raw_http(url, request).await;
    assert_eq!(code, 200);
    assert!(text.contains("fleet_shard_busy_ratio{"), "{text}");
    // The gateway stops: the backlog drains, every event is handled once.
    let report = common::settle(&mock).await;
    assert_eq!((report.lost, report.duplicates), (0, 0), "{report:?}");
    assert!(report.produced > 0);
    let stats = snapshot_where(&mut events, |s| {
        s.shards_behind == 0 && s.shards().all(|s| s.busy.is_some_and(|b| b < 0.5))
    })
    .await;
    assert_eq!(stats.shards_ready, 2);
    admiral.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_serenity_fleet_reports_its_cache_and_fields() {
    let mock = MockDiscord::start(mock_config(8, 2, 1)).await.unwrap();
    let mut options = options(&mock, 1);
    options.stats_interval = Duration::from_millis(200);
    let (admiral, mut events) = launch(fleet_tests::serenity_fleet(options)).await;
    admiral.wait_ready(WAIT).await.unwrap();
    let stats = snapshot_where(&mut events, |s| s.guilds == 8 && s.shards_ready == 2).await;
    let cluster = &stats.clusters[0];
    let fields: ClusterFields = custom(cluster.custom.as_ref());
    assert_eq!(fields.cluster, 0);
    assert_eq!(cluster.shards.iter().map(|s| s.guilds).sum::<u64>(), 8);
    assert!(stats.shards().all(|s| s.events > 0 && s.identifies == 1));
    // serenity runs each handler on a task of its own: no event loop to time.
    assert!(stats.shards().all(|s| s.busy.is_none()));
    assert!(cluster.usage.ram_bytes > 0);
    // Its metrics parse and hold every shard.
    let url = admiral.http_url().unwrap();
    let request = "GET /metrics HTTP/1.1\r\nhost: fleet\r\nconnection: close\r\n\r\n";
    let (code, _, text) = common::raw_http(url, request).await;
    assert_eq!(code, 200);
    let families = parse_openmetrics(&text);
    for shard in ["0", "1"] {
        let labels = [("cluster_id", "0"), ("shard_id", shard)];
        assert_eq!(sample(&families, "fleet_shard_up", &labels), 1.0);
    }
    assert_eq!(sample(&families, "fleet_guilds", &[]), 8.0);
    admiral.shutdown().await;
}

/// Parses an exposition with the Prometheus project's own `OpenMetrics` parser (Python's
/// `prometheus_client`): `{family: [type, [[sample, labels, value], ...]]}`.
fn parse_openmetrics(text: &str) -> serde_json::Value {
    use std::io::Write as _;
    const PARSE: &str = r"import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = {}
for f in text_string_to_metric_families(sys.stdin.read()):
    out[f.name] = [f.type, [[s.name, s.labels, s.value] for s in f.samples]]
print(json.dumps(out))
";
    let mut child = std::process::Command::new("python3")
        .args(["-c", PARSE])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs (.ci/run installs prometheus-client)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "the exposition does not parse: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

fn sample(families: &serde_json::Value, family: &str, labels: &[(&str, &str)]) -> f64 {
    let samples = families[family][1]
        .as_array()
        .unwrap_or_else(|| panic!("no family {family}"));
    let found = samples
        .iter()
        .find(|s| labels.iter().all(|(k, v)| s[1][*k].as_str() == Some(*v)));
    found.unwrap_or_else(|| panic!("no {family} sample with {labels:?}: {samples:?}"))[2]
        .as_f64()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_health_and_readiness_are_served_from_the_snapshots() {
    let mock = MockDiscord::start(mock_config(12, 3, 1)).await.unwrap();
    let mut options = options(&mock, 2);
    options.heartbeat_interval = Duration::from_millis(100);
    options.heartbeat_timeout = Duration::from_secs(2);
    options.stats_interval = Duration::from_millis(200);
    let (admiral, mut events) = launch(fleet_tests::fleet(options)).await;
    let url = admiral.http_url().expect("on by default").to_owned();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    let get = |path: &str| {
        let url = url.clone();
        let request = format!("GET {path} HTTP/1.1\r\nhost: fleet\r\nconnection: close\r\n\r\n");
        async move { common::raw_http(&url, &request).await }
    };
    let (code, _, body) = get("/health").await;
    assert_eq!(code, 200, "{body}");
    admiral.wait_ready(WAIT).await.unwrap();
    let stats = snapshot_where(&mut events, |s| {
        s.guilds == 12 && s.shards().all(|s| s.latency_ms.is_some())
    })
    .await;

    let (code, head, text) = get("/metrics").await;
    assert_eq!(code, 200);
    assert!(
        head.contains("content-type: application/openmetrics-text"),
        "{head}"
    );
    let families = parse_openmetrics(&text);
    assert_eq!(families["fleet_guilds"][0], "gauge");
    assert_eq!(sample(&families, "fleet_guilds", &[]), 12.0);
    assert_eq!(sample(&families, "fleet_shards_ready", &[]), 3.0);
    assert_eq!(families["fleet_shard_events"][0], "counter");
    assert_eq!(families["fleet_worker_restarts"][0], "counter");
    for shard in stats.shards() {
        let (cluster, id) = (shard.cluster.to_string(), shard.id.to_string());
        let labels = [("cluster_id", cluster.as_str()), ("shard_id", id.as_str())];
        assert_eq!(sample(&families, "fleet_shard_up", &labels), 1.0);
        assert!(sample(&families, "fleet_shard_latency_seconds", &labels) >= 0.0);
        assert!(sample(&families, "fleet_shard_events", &labels) >= shard.guilds as f64);
    }
    assert_eq!(
        sample(
            &families,
            "fleet_cluster_identifies",
            &[("cluster_id", "0")]
        ),
        stats.clusters[0].shards.len() as f64
    );
    assert!(
        sample(
            &families,
            "fleet_process_resident_memory_bytes",
            &[("process", "admiral")]
        ) > 1e6
    );
    assert!(
        sample(
            &families,
            "fleet_process_resident_memory_bytes",
            &[("process", "service-echo")]
        ) > 0.0
    );
    assert_eq!(
        sample(&families, "fleet_worker_up", &[("service", "echo")]),
        1.0
    );
    assert_eq!(
        sample(&families, "fleet_worker_up", &[("service", "broken")]),
        0.0
    );
    // Counters only end in _total; no guild id is a label anywhere.
    for (name, family) in families.as_object().unwrap() {
        let kind = family[0].as_str().unwrap();
        assert!(name.starts_with("fleet_"), "{name}");
        for s in family[1].as_array().unwrap() {
            let sample_name = s[0].as_str().unwrap();
            assert_eq!(
                sample_name.ends_with("_total"),
                kind == "counter",
                "{sample_name} is a {kind}"
            );
            assert!(s[1].get("guild_id").is_none());
        }
    }

    let (code, _, body) = get("/stats").await;
    assert_eq!(code, 200);
    let json: FleetStats = serde_json::from_str(&body).unwrap();
    assert_eq!(json.shard_count, 3);
    let (code, _, body) = get("/ready").await;
    assert_eq!(code, 200, "{body}");

    // A cluster that hangs is killed as unresponsive and, with no restarts, stays down: the
    // fleet is not ready, and its worker is down in the metrics.
    signal(&admiral, &WorkerId::Cluster(1), "-STOP").await;
    until(&mut events, |e| {
        matches!(
            e,
            FleetEvent::Unresponsive {
                worker: WorkerId::Cluster(1),
                ..
            }
        )
    })
    .await;
    snapshot_where(&mut events, |s| {
        s.clusters.iter().any(|c| c.id == 1 && c.state != "live")
    })
    .await;
    let (code, _, body) = get("/ready").await;
    assert_eq!(code, 503, "{body}");
    let (_, _, text) = get("/metrics").await;
    let families = parse_openmetrics(&text);
    assert_eq!(
        sample(&families, "fleet_worker_up", &[("cluster_id", "1")]),
        0.0
    );
    assert_eq!(
        sample(&families, "fleet_worker_up", &[("cluster_id", "0")]),
        1.0
    );

    let (code, _, _) = get("/nope").await;
    assert_eq!(code, 404);
    admiral.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_that_cannot_be_bound_fails_the_start_clearly() {
    let mock = MockDiscord::start(mock_config(2, 1, 1)).await.unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut options = options(&mock, 1);
    options.http = Some(taken.local_addr().unwrap());
    let error = fleet_tests::fleet(options)
        .run()
        .await
        .expect_err("the port is taken");
    let text = error.to_string();
    assert!(
        text.contains("HTTP endpoint") && text.contains(&taken.local_addr().unwrap().to_string()),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_log_in_the_admirals_format_and_filter_with_their_own_timestamps() {
    use carrier::admiral::OutputStream;
    let mock = MockDiscord::start(mock_config(2, 1, 1)).await.unwrap();
    let mut options = options(&mock, 1);
    options.log_format = carrier::logging::LogFormat::Json;
    options.log_filter = Some("warn".into());
    let (admiral, mut events) = launch(fleet_tests::fleet(options)).await;
    admiral.wait_ready(WAIT).await.unwrap();
    let ipc = admiral.ipc();
    // Below the filter, then at it: only the second reaches the admiral, as JSON.
    for command in ["trace-info:quiet line", "trace-warn:loud line"] {
        ipc.service_command("echo", Payload::from(command))
            .await
            .unwrap();
    }
    let seen = until(
        &mut events,
        |e| matches!(e, FleetEvent::Output { line, .. } if line.contains("loud line")),
    )
    .await;
    let lines: Vec<_> = seen
        .iter()
        .filter_map(|e| match e {
            FleetEvent::Output {
                worker: WorkerId::Service(name),
                stream: OutputStream::Stderr,
                line,
                process,
                ..
            } if name == "echo" => Some((line.clone(), *process)),
            _ => None,
        })
        .collect();
    assert!(
        lines.iter().all(|(l, _)| !l.contains("quiet line")),
        "{lines:?}"
    );
    let (loud, process) = lines.last().unwrap();
    assert!(*process > 0);
    let json: serde_json::Value = serde_json::from_str(loud).expect("a JSON line");
    assert_eq!(json["level"], "WARN");
    assert_eq!(json["target"], "fleet_tests");
    assert_eq!(json["message"], "loud line");
    assert!(
        json["timestamp"].as_str().unwrap().starts_with("20"),
        "{json}"
    );
    admiral.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_progress_reports_the_launch_and_ends_with_a_summary() {
    let mock = MockDiscord::start(mock_config(8, 4, 1)).await.unwrap();
    let (admiral, _events) = launch(fleet_tests::fleet(options(&mock, 2))).await;
    let mut out = Vec::new();
    let launched = carrier::progress::show_to(&admiral, &mut out, false)
        .await
        .unwrap();
    assert_eq!((launched.live, launched.failed), (3, 1));
    let text = String::from_utf8(out).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("fleet: ") && lines[0].contains("/4 shards ready"),
        "{text}"
    );
    let last = lines.last().unwrap();
    assert!(last.starts_with("fleet launched in "), "{text}");
    assert!(
        last.contains("3 workers live, 1 failed, 4/4 shards ready"),
        "{text}"
    );
    // Asked again once launched, it answers at once with the summary.
    let mut again = Vec::new();
    carrier::progress::show_to(&admiral, &mut again, false)
        .await
        .unwrap();
    assert!(
        String::from_utf8(again)
            .unwrap()
            .contains("4/4 shards ready")
    );
    admiral.shutdown().await;
}
