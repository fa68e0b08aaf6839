//! The test bot's worker processes. The integration tests run the admiral in the test process and
//! point its worker command here. A worker started as `service-rogue` breaks the IPC protocol on
//! purpose; one started as `service-fuzzer` sends the admiral thousands of hostile but decodable
//! messages (`fleet_tests::fuzz::hostile_messages`, `$FUZZ_MESSAGES` of them, seed
//! `$FUZZ_SEED`), checking between batches that it still answers; one started as
//! `service-flood` sends 10,000 requests that will not be answered soon and counts how many the
//! admiral refuses as overloaded. While the file named by `$TESTBOT_OLD_BUILD` exists, a worker
//! says hello as a build of IPC protocol 0 would, and reports the admiral's refusal.

use std::process::ExitCode;

use carrier::FleetOptions;
use carrier::ipc::frame::FrameWriter;
use carrier::ipc::link::WorkerEnv;
use carrier::ipc::proto::Up;
use tokio::io::AsyncWriteExt as _;

#[tokio::main]
async fn main() -> ExitCode {
    carrier::logging::init(carrier::logging::LogFormat::Text, "warn");
    match std::env::var("FLEET_WORKER").as_deref() {
        Ok("service-rogue") => return rogue().await,
        Ok("service-fuzzer") => return fuzzer().await,
        Ok("service-flood") => return flood().await,
        _ => {}
    }
    if carrier::is_worker()
        && std::env::var_os(OLD_BUILD).is_some_and(|p| std::path::Path::new(&p).exists())
    {
        return old_build().await;
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !carrier::is_worker() && args.first().map(String::as_str) == Some("admiral") {
        return admiral(&args[1..]).await;
    }
    let mut options = FleetOptions::new("");
    options.build = std::env::var("TESTBOT_BUILD").unwrap_or_else(|_| "testbot 1".to_owned());
    match fleet_tests::fleet_from_env(options).run().await {
        Ok(None) => ExitCode::SUCCESS,
        Ok(Some(_)) => {
            eprintln!("testbot runs only as a worker of a test's admiral");
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("worker failed: {error}");
            ExitCode::FAILURE
        }
    }
}

/// `testbot admiral REST_URL IDENTIFY_INTERVAL_MS CLUSTERS`: an admiral process of its own, for
/// tests of signals. Prints `ready PID...` once launched and `stopped` at the end. Its IPC
/// directory goes under `$TESTBOT_RUN_DIR` when that is set; `$TESTBOT_ADMIRAL_GRACE_MS` is how
/// long its workers outlive it; with `$TESTBOT_REPORT_EVENTS` set, its clusters report every
/// message they handle ([`fleet_tests::REPORT_EVENTS`]). With `$TESTBOT_REDIS_URL` it is one host
/// of a fleet on several (see below for the rest of that family).
async fn admiral(args: &[String]) -> ExitCode {
    let [rest_url, interval_ms, clusters] = args else {
        eprintln!("usage: testbot admiral REST_URL IDENTIFY_INTERVAL_MS CLUSTERS");
        return ExitCode::FAILURE;
    };
    let mut options = FleetOptions::new("mock-token");
    options.rest_url.clone_from(rest_url);
    options.identify_interval =
        std::time::Duration::from_millis(interval_ms.parse().unwrap_or(300));
    options.clusters = clusters.parse().ok();
    options.echo_output = false;
    if let Some(run_dir) = std::env::var_os("TESTBOT_RUN_DIR") {
        options.run_dir = run_dir.into();
    }
    if let Some(grace) = std::env::var("TESTBOT_ADMIRAL_GRACE_MS")
        .ok()
        .and_then(|g| g.parse().ok())
    {
        options.admiral_grace = std::time::Duration::from_millis(grace);
    }
    // One host of a fleet on several: `$TESTBOT_REDIS_URL`, `$TESTBOT_FLEET_ID`,
    // `$TESTBOT_HOST_ID`, `$TESTBOT_HOST_CAPACITY` (ranges), `$TESTBOT_HOST_LEASE_MS`,
    // `$TESTBOT_HOST_REBALANCE`.
    options.redis_url = std::env::var("TESTBOT_REDIS_URL").ok();
    options.fleet_id = std::env::var("TESTBOT_FLEET_ID").ok();
    options.host_id = std::env::var("TESTBOT_HOST_ID").ok();
    options.host_capacity = std::env::var("TESTBOT_HOST_CAPACITY")
        .ok()
        .and_then(|c| c.parse().ok());
    // `$TESTBOT_HOST_REBALANCE=0`: no planned moves onto a host with room.
    options.host_rebalance = std::env::var("TESTBOT_HOST_REBALANCE").map_or(true, |r| r != "0");
    if let Some(ttl) = std::env::var("TESTBOT_HOST_LEASE_MS")
        .ok()
        .and_then(|t| t.parse().ok())
    {
        options.host_lease_ttl = std::time::Duration::from_millis(ttl);
    }
    // The `broken` service never starts; failing it at once keeps the launch short.
    options.max_restarts = 0;
    options.worker_command = Some(carrier::admiral::WorkerCommand {
        program: std::env::current_exe().expect("own path"),
        args: Vec::new(),
        env: Vec::new(),
    });
    // SIGUSR2 deploys this build of the test bot.
    if let Ok(build) = std::env::var("TESTBOT_DEPLOY_BUILD") {
        let mut plan = carrier::DeployPlan::new(std::env::current_exe().expect("own path"))
            .env("TESTBOT_BUILD", build)
            .canary_bake(std::time::Duration::from_millis(200));
        // With workers that outlive it, the admiral follows them onto the new build.
        plan.restart_admiral = !options.admiral_grace.is_zero();
        options.deploy_on_signal = Some(plan);
    }
    let admiral = match fleet_tests::fleet(options).run().await {
        Ok(Some(admiral)) => admiral,
        Ok(None) => return ExitCode::FAILURE,
        Err(error) => {
            eprintln!("{error}");
            return ExitCode::FAILURE;
        }
    };
    let admiral = std::sync::Arc::new(admiral);
    if admiral
        .wait_ready(std::time::Duration::from_mins(1))
        .await
        .is_err()
    {
        return ExitCode::FAILURE;
    }
    if std::env::var_os("TESTBOT_REPORT_EVENTS").is_some() {
        let ipc = admiral.ipc();
        let empty = carrier::Payload::empty;
        if ipc
            .store_set(fleet_tests::REPORT_EVENTS, empty())
            .await
            .is_err()
            || ipc
                .broadcast(fleet_tests::REPORT_EVENTS, empty())
                .await
                .is_err()
        {
            return ExitCode::FAILURE;
        }
    }
    let pids = live_pids(&admiral).await;
    println!("ready {}", pids.join(" "));
    // Each deploy's outcome, and the live workers' pids after it.
    let mut events = admiral.events();
    let deploys = admiral.clone();
    tokio::spawn(async move {
        while let Ok(event) = events.recv().await {
            if let carrier::FleetEvent::Deployed(report) = event {
                let pids = live_pids(&deploys).await;
                println!("deployed {} {}", report.succeeded(), pids.join(" "));
            }
        }
    });
    admiral.wait_stopped().await;
    println!("stopped");
    ExitCode::SUCCESS
}

/// The pids of the live workers.
async fn live_pids(admiral: &carrier::AdmiralHandle) -> Vec<String> {
    admiral
        .workers()
        .await
        .unwrap_or_default()
        .iter()
        .filter(|w| w.state == carrier::admiral::State::Live)
        .filter_map(|w| w.pid)
        .map(|p| p.to_string())
        .collect()
}

/// Names the file whose presence makes workers start as an old build.
const OLD_BUILD: &str = "TESTBOT_OLD_BUILD";

/// Says hello as a build of IPC protocol 0, and prints the admiral's answer.
async fn old_build() -> ExitCode {
    use carrier::ipc::proto::Down;
    let env = WorkerEnv::from_env().expect("started by an admiral");
    let Some((mut reader, _writer)) = hello(&env, 0, "testbot old").await else {
        eprintln!("old build: the admiral is not there");
        return ExitCode::FAILURE;
    };
    match reader.next::<Down>().await {
        Ok(Down::Refused { reason }) => {
            eprintln!("old build refused: {reason}");
            ExitCode::from(8)
        }
        other => {
            eprintln!("old build: unexpected answer {other:?}");
            ExitCode::FAILURE
        }
    }
}

/// Says a proper hello, then sends a frame that is not a message.
async fn rogue() -> ExitCode {
    let env = WorkerEnv::from_env().expect("started by an admiral");
    let stream = tokio::net::UnixStream::connect(&env.socket)
        .await
        .expect("admiral socket");
    let (mut read, write) = stream.into_split();
    let mut writer = FrameWriter::new(write, env.max_frame);
    writer
        .send(&Up::Hello {
            secret: env.secret.clone(),
            process: env.process,
            protocol: carrier::ipc::proto::PROTOCOL_VERSION,
            build: "test".into(),
        })
        .await
        .expect("hello");
    let mut raw = writer.into_inner();
    let garbage = [0xc1u8; 8];
    raw.write_all(&(garbage.len() as u32).to_be_bytes())
        .await
        .expect("length");
    raw.write_all(&garbage).await.expect("garbage");
    // Wait until the admiral hangs up on us.
    let mut sink = Vec::new();
    let _ = tokio::io::AsyncReadExt::read_to_end(&mut read, &mut sink).await;
    eprintln!("rogue worker: the admiral hung up");
    ExitCode::from(7)
}

/// Says a proper hello and reports ready, then sends hostile messages in batches, each followed
/// by a store read it must get an answer to. Exits 0 if the admiral answered after every batch,
/// 3 if it stopped answering, 4 if it hung up.
async fn fuzzer() -> ExitCode {
    /// Ids of the probes: far above any the hostile messages use.
    const PROBE: u64 = u64::MAX - 1_000_000;
    use carrier::ipc::proto::{Down, Request, StoreRequest};
    let env = WorkerEnv::from_env().expect("started by an admiral");
    let count = std::env::var("FUZZ_MESSAGES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(2000);
    let seed = std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1);
    let Some((mut reader, mut writer)) = join_ready(&env).await else {
        eprintln!("fuzzer: not welcome");
        return ExitCode::from(4);
    };
    let messages = fleet_tests::fuzz::hostile_messages(seed, count);
    // Replies to hostile requests come back too; read them off as they come, and note the
    // answer to each probe.
    let (probe_tx, mut probes) = tokio::sync::mpsc::unbounded_channel();
    let pump = tokio::spawn(async move {
        loop {
            match reader.next::<Down>().await {
                Ok(Down::Reply { id, .. }) if id >= PROBE => {
                    let _ = probe_tx.send(id);
                }
                Ok(_) => {}
                Err(error) => {
                    eprintln!("fuzzer: the admiral hung up: {error}");
                    return;
                }
            }
        }
    });
    for (batch, chunk) in messages.chunks(100).enumerate() {
        for up in chunk {
            if writer.send(up).await.is_err() {
                eprintln!("fuzzer: the admiral hung up");
                return ExitCode::from(4);
            }
        }
        let id = PROBE + batch as u64;
        let probe = Up::Request {
            id,
            timeout_ms: 5000,
            request: Request::Store(StoreRequest::Get("fuzz-alive".into())),
        };
        if writer.send(&probe).await.is_err() {
            return ExitCode::from(4);
        }
        let answered = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            while let Some(got) = probes.recv().await {
                if got == id {
                    return true;
                }
            }
            false
        })
        .await;
        if answered != Ok(true) {
            eprintln!("fuzzer: no answer to probe {batch}");
            return ExitCode::from(if pump.is_finished() { 4 } else { 3 });
        }
    }
    eprintln!("fuzzer: {count} hostile messages sent, every probe answered");
    ExitCode::SUCCESS
}

/// Sends 10,000 commands that the echo service answers only after an hour, then counts the
/// admiral's "overloaded" refusals: every request past the admiral's per-worker cap must get
/// one at once. Prints what it counted and exits 0.
async fn flood() -> ExitCode {
    use carrier::ipc::proto::{Down, Refusal, Reply, Request};
    let env = WorkerEnv::from_env().expect("started by an admiral");
    let Some((mut reader, mut writer)) = join_ready(&env).await else {
        return ExitCode::from(4);
    };
    let sent = 10_000u64;
    for id in 1..=sent {
        let up = Up::Request {
            id,
            timeout_ms: 600_000,
            request: Request::Command {
                target: carrier::Target::Service("echo".into()),
                payload: carrier::Payload::from("sleep"),
            },
        };
        if writer.send(&up).await.is_err() {
            return ExitCode::from(4);
        }
    }
    // Whatever is answered at once (the admiral's refusals, and the echo service's own queue
    // overflowing) leaves at most the cap unanswered.
    let (mut refused, mut answered) = (0u64, 0u64);
    let counting = async {
        while let Ok(down) = reader.next::<Down>().await {
            if let Down::Reply { reply, .. } = down {
                answered += 1;
                if reply == Reply::Refused(Refusal::Overloaded(carrier::Target::Admiral)) {
                    refused += 1;
                }
                if answered == sent - 8192 {
                    break;
                }
            }
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(20), counting).await;
    eprintln!(
        "flood: {sent} sent, {answered} answered at once, {refused} of them refused by the admiral"
    );
    ExitCode::SUCCESS
}

/// A raw connection to the admiral that has said hello as a build of `protocol`.
async fn hello(
    env: &WorkerEnv,
    protocol: u32,
    build: &str,
) -> Option<(
    carrier::ipc::frame::FrameReader<tokio::net::unix::OwnedReadHalf>,
    FrameWriter<tokio::net::unix::OwnedWriteHalf>,
)> {
    let stream = tokio::net::UnixStream::connect(&env.socket).await.ok()?;
    let (read, write) = stream.into_split();
    let reader = carrier::ipc::frame::FrameReader::new(read, env.max_frame);
    let mut writer = FrameWriter::new(write, env.max_frame);
    let hello = Up::Hello {
        secret: env.secret.clone(),
        process: env.process,
        protocol,
        build: build.to_owned(),
    };
    writer.send(&hello).await.ok()?;
    Some((reader, writer))
}

/// A raw connection to the admiral: hello, welcome, then `Ready`, so the admiral counts this
/// worker as serving. `None` if it was not welcomed.
async fn join_ready(
    env: &WorkerEnv,
) -> Option<(
    carrier::ipc::frame::FrameReader<tokio::net::unix::OwnedReadHalf>,
    FrameWriter<tokio::net::unix::OwnedWriteHalf>,
)> {
    use carrier::ipc::proto::{Down, Status};
    let protocol = carrier::ipc::proto::PROTOCOL_VERSION;
    let (mut reader, mut writer) = hello(env, protocol, "test").await?;
    if !matches!(reader.next::<Down>().await, Ok(Down::Welcome(_))) {
        return None;
    }
    writer.send(&Up::Status(Status::Ready)).await.ok()?;
    Some((reader, writer))
}
