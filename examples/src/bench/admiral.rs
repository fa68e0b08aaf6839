//! Admiral restarts: the reference fleet's admiral runs as a process of its own (this binary with
//! `admiral-process`) whose workers outlive it (`admiral_grace`). It is killed with `SIGKILL`
//! while the mock's event source runs and a second admiral on the same run directory adopts the
//! workers; then that one re-executes itself in place (`SIGHUP`). What each cost: how long the
//! fleet had no admiral, identifies, resumes, events lost or confirmed twice, and whether the same
//! worker processes serve on.

use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use carrier::FleetOptions;
use carrier::admiral::{State, WorkerCommand};
use tokio::io::AsyncBufReadExt as _;

use super::restart::{diff, settle};
use super::{MockProcess, control};

/// How long the bench's workers outlive their admiral.
const GRACE: Duration = Duration::from_mins(1);

/// `admiral-process REST_URL INTERVAL_MS CLUSTERS RUN_DIR`: the reference fleet's admiral, its
/// workers outliving it. Prints `ready PID...` (its live workers) once every worker is live,
/// again after each re-execution, and `stopped` at the end.
pub async fn serve(args: &[String]) -> Result<std::process::ExitCode> {
    let [rest_url, interval_ms, clusters, run_dir] = args else {
        bail!("admiral-process REST_URL INTERVAL_MS CLUSTERS RUN_DIR");
    };
    let mut options = FleetOptions::new("mock-token");
    options.rest_url.clone_from(rest_url);
    options.identify_interval = Duration::from_millis(interval_ms.parse()?);
    options.clusters = Some(clusters.parse()?);
    options.echo_output = false;
    options.run_dir = run_dir.into();
    options.admiral_grace = GRACE;
    options.worker_command = Some(WorkerCommand::current()?);
    let admiral = fleet_examples::fleet(options)
        .run()
        .await?
        .context("admiral")?;
    admiral.wait_ready(Duration::from_mins(5)).await?;
    let pids: Vec<String> = admiral
        .workers()
        .await?
        .iter()
        .filter(|w| w.state == State::Live)
        .filter_map(|w| w.pid)
        .map(|p| p.to_string())
        .collect();
    println!("ready {}", pids.join(" "));
    admiral.wait_stopped().await;
    println!("stopped");
    Ok(std::process::ExitCode::SUCCESS)
}

/// An admiral process and its stdout.
struct Admiral {
    child: tokio::process::Child,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
}

impl Admiral {
    fn start(mock: &MockProcess, interval: Duration, run_dir: &std::path::Path) -> Result<Self> {
        let mut child = tokio::process::Command::new(std::env::current_exe()?)
            .arg("admiral-process")
            .arg(&mock.url)
            .arg(interval.as_millis().to_string())
            .arg(super::CLUSTERS.to_string())
            .arg(run_dir)
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let lines = tokio::io::BufReader::new(child.stdout.take().context("stdout")?).lines();
        Ok(Self { child, lines })
    }

    /// The workers of its next `ready` line.
    async fn ready(&mut self) -> Result<BTreeSet<u32>> {
        let line = tokio::time::timeout(Duration::from_mins(5), self.lines.next_line())
            .await
            .context("no ready line")??
            .context("the admiral ended")?;
        let pids = line.strip_prefix("ready ").context("not a ready line")?;
        Ok(pids.split(' ').filter_map(|p| p.parse().ok()).collect())
    }

    fn signal(&self, signal: &str) -> Result<()> {
        let pid = self.child.id().context("no pid")?.to_string();
        std::process::Command::new("kill")
            .args([signal, &pid])
            .status()?;
        Ok(())
    }
}

/// Prints one row: what the mock counted between `before` and now.
fn row(
    what: &str,
    took: Duration,
    (workers, now): (&BTreeSet<u32>, &BTreeSet<u32>),
    (before, before_stats): &(serde_json::Value, serde_json::Value),
    (after, after_stats): &(serde_json::Value, serde_json::Value),
) {
    println!(
        "{what}: the fleet had no admiral for {took:.2?}; same worker processes: {}; identifies spent {}; resumes {}; events lost {}, confirmed twice {} (of {} produced)",
        if workers == now {
            "yes".to_owned()
        } else {
            format!("no ({workers:?} then {now:?})")
        },
        diff(after_stats, before_stats, "identifies"),
        diff(after_stats, before_stats, "resumes"),
        diff(after, before, "lost"),
        diff(after, before, "duplicates"),
        diff(after, before, "produced"),
    );
}

/// The mock's event report and stats now.
async fn counts(mock: &MockProcess) -> Result<(serde_json::Value, serde_json::Value)> {
    Ok((
        control(mock, "GET", "/_mock/events").await?,
        control(mock, "GET", "/_mock/stats").await?,
    ))
}

/// The two rows, on a mock of their own (`mock`, fresh).
pub async fn figures(mock: &MockProcess, interval: Duration) -> Result<()> {
    let run_dir = std::env::temp_dir().join(format!("fleet-bench-admiral-{}", std::process::id()));
    std::fs::create_dir_all(&run_dir)?;
    let mut first = Admiral::start(mock, interval, &run_dir)?;
    let workers = first.ready().await?;

    control(mock, "POST", "/_mock/events/start?rate=2").await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = counts(mock).await?;
    let killed = Instant::now();
    first.signal("-9")?;
    first.child.wait().await?;
    let mut second = Admiral::start(mock, interval, &run_dir)?;
    let adopted = second.ready().await?;
    let took = killed.elapsed();
    let after = settle(mock).await?;
    row(
        &format!(
            "admiral SIGKILL, the next admiral adopts its {} workers",
            workers.len()
        ),
        took,
        (&workers, &adopted),
        &before,
        &after,
    );

    control(mock, "POST", "/_mock/events/start?rate=2").await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = counts(mock).await?;
    let hung_up = Instant::now();
    second.signal("-HUP")?;
    let again = second.ready().await?;
    let took = hung_up.elapsed();
    let after = settle(mock).await?;
    row(
        "admiral SIGHUP, re-executed in place",
        took,
        (&workers, &again),
        &before,
        &after,
    );

    second.signal("-TERM")?;
    let _ = tokio::time::timeout(Duration::from_mins(1), second.child.wait()).await;
    let _ = std::fs::remove_dir_all(&run_dir);
    Ok(())
}
