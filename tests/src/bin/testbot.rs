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
