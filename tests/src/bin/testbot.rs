//! The test bot's worker processes. The integration tests run the admiral in the test process and
//! point its worker command here. A worker started as `service-rogue` breaks the IPC protocol on
//! purpose.

use std::process::ExitCode;

use carrier::FleetOptions;
use carrier::ipc::frame::FrameWriter;
use carrier::ipc::link::WorkerEnv;
use carrier::ipc::proto::Up;
use tokio::io::AsyncWriteExt as _;

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    if std::env::var("FLEET_WORKER").as_deref() == Ok("service-rogue") {
        return rogue().await;
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !carrier::is_worker() && args.first().map(String::as_str) == Some("admiral") {
        return admiral(&args[1..]).await;
    }
    match fleet_tests::fleet_from_env(FleetOptions::new(""))
        .run()
        .await
    {
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
/// directory goes under `$TESTBOT_RUN_DIR` when that is set.
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
    // The `broken` service never starts; failing it at once keeps the launch short.
    options.max_restarts = 0;
    options.worker_command = Some(carrier::admiral::WorkerCommand {
        program: std::env::current_exe().expect("own path"),
        args: Vec::new(),
        env: Vec::new(),
    });
    let admiral = match fleet_tests::fleet(options).run().await {
        Ok(Some(admiral)) => admiral,
        Ok(None) => return ExitCode::FAILURE,
        Err(error) => {
            eprintln!("{error}");
            return ExitCode::FAILURE;
        }
    };
    if admiral
        .wait_ready(std::time::Duration::from_mins(1))
        .await
        .is_err()
    {
        return ExitCode::FAILURE;
    }
    let pids: Vec<String> = admiral
        .workers()
        .await
        .unwrap_or_default()
        .iter()
        .filter(|w| w.state == carrier::admiral::State::Live)
        .filter_map(|w| w.pid)
        .map(|p| p.to_string())
        .collect();
    println!("ready {}", pids.join(" "));
    admiral.wait_stopped().await;
    println!("stopped");
    ExitCode::SUCCESS
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
