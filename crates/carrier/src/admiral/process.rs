//! Worker processes: spawn a copy of the program with its role in the environment, capture its
//! stdout and stderr line by line (bounded), report its exit, and kill it on request.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt as _, AsyncRead, BufReader};
use tokio::sync::{broadcast, mpsc, oneshot};

use super::lifecycle::{ProcessId, WorkerId};
use super::{FleetEvent, OutputStream};
use crate::admiral::router::inbox::Inbox;

/// Longest output line passed on; the rest of a longer line is cut.
pub const MAX_LINE: usize = 16 * 1024;

/// How worker processes are started.
#[derive(Debug, Clone)]
pub struct WorkerCommand {
    /// Program to run (default: this executable).
    pub program: PathBuf,
    /// Its arguments (default: this process's arguments).
    pub args: Vec<OsString>,
    /// Extra environment.
    pub env: Vec<(OsString, OsString)>,
}

impl WorkerCommand {
    /// This executable with this process's arguments: one binary is both admiral and worker.
    pub fn current() -> std::io::Result<Self> {
        Ok(Self {
            program: std::env::current_exe()?,
            args: std::env::args_os().skip(1).collect(),
            env: Vec::new(),
        })
    }
}

/// Everything needed to spawn one worker.
pub(crate) struct SpawnRequest<'a> {
    pub command: &'a WorkerCommand,
    pub worker: &'a WorkerId,
    pub process: ProcessId,
    pub env: Vec<(&'static str, String)>,
    /// Echo its output to the admiral's stderr, in this format.
    pub echo: Option<crate::logging::LogFormat>,
}

/// Spawns a worker; its output and exit are reported through `inbox` and `events`.
pub(crate) fn spawn(
    request: &SpawnRequest<'_>,
    inbox: mpsc::Sender<Inbox>,
    events: &broadcast::Sender<FleetEvent>,
) -> std::io::Result<()> {
    let mut command = tokio::process::Command::new(&request.command.program);
    command
        .args(&request.command.args)
        .envs(request.command.env.iter().map(|(k, v)| (k, v)))
        .envs(request.env.iter().map(|(k, v)| (k, v)))
        .env(crate::ipc::link::ENV_WORKER, request.worker.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // A group of its own: a terminal's Ctrl-C reaches only the admiral, which then shuts the
        // workers down gracefully instead of having them killed mid-flight.
        .process_group(0)
        .kill_on_drop(true);
    let mut child = command.spawn()?;
    let pid = child.id();
    let process = request.process;
    for (stream, pipe) in [
        (
            OutputStream::Stdout,
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn AsyncRead + Send + Unpin>),
        ),
        (
            OutputStream::Stderr,
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn AsyncRead + Send + Unpin>),
        ),
    ] {
        if let Some(pipe) = pipe {
            tokio::spawn(forward_output(
                pipe,
                (request.worker.clone(), process),
                stream,
                request.echo,
                events.clone(),
            ));
        }
    }
    let (kill, killed) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = inbox.send(Inbox::Spawned { process, pid, kill }).await;
        let status = tokio::select! {
            status = child.wait() => status,
            _ = killed => {
                let _ = child.start_kill();
                child.wait().await
            }
        };
        let code = status.ok().and_then(|s| s.code());
        let _ = inbox.send(Inbox::Exited { process, code }).await;
    });
    Ok(())
}

/// Watches a process this admiral did not spawn (adopted from a lost admiral): reports it as
/// [`Inbox::Spawned`] with a kill switch, and [`Inbox::Exited`] once it is gone (its exit code,
/// if it is this process's child, as after a re-exec; otherwise none). It is looked at every
/// 100 ms: there is no child handle to wait on.
pub(crate) fn watch_adopted(
    process: ProcessId,
    pid: u32,
    inbox: mpsc::Sender<Inbox>,
    output: AdoptedOutput,
) {
    let started = super::run_dir::started_at(pid);
    let (kill, mut killed) = oneshot::channel::<()>();
    let following = tokio::spawn(follow_output(output, process));
    tokio::spawn(async move {
        let _ = inbox
            .send(Inbox::Spawned {
                process,
                pid: Some(pid),
                kill,
            })
            .await;
        let target = i32::try_from(pid)
            .ok()
            .and_then(rustix::process::Pid::from_raw);
        let mut ticks = tokio::time::interval(std::time::Duration::from_millis(100));
        let code = loop {
            tokio::select! {
                _ = ticks.tick() => {}
                Ok(()) = &mut killed => {
                    if let Some(target) = target {
                        let _ = rustix::process::kill_process(target, rustix::process::Signal::KILL);
                    }
                }
            }
            // A child of this process (the workers of an admiral that re-executed itself) is
            // reaped here; any other is gone once it no longer runs.
            if let Some(target) = target
                && let Ok(Some((_, status))) =
                    rustix::process::waitpid(Some(target), rustix::process::WaitOptions::NOHANG)
            {
                break status.exit_status();
            }
            if !started.is_some_and(|started| super::run_dir::alive(pid, started)) {
                break None;
            }
        };
        following.abort();
        let _ = inbox.send(Inbox::Exited { process, code }).await;
    });
}

/// Where an adopted worker writes its output, and what becomes of its lines.
pub(crate) struct AdoptedOutput {
    /// Its file (the worker moved its output there when it lost its admiral).
    pub path: PathBuf,
    /// The worker.
    pub worker: WorkerId,
    /// Echo its lines to the admiral's stderr, in this format.
    pub echo: Option<crate::logging::LogFormat>,
    /// Where its lines are published.
    pub events: broadcast::Sender<FleetEvent>,
}

/// Follows an adopted worker's output file from its end, as [`forward_output`] follows a pipe:
/// each new line is echoed and published. Looks for more every 250 ms.
async fn follow_output(output: AdoptedOutput, process: ProcessId) {
    use tokio::io::AsyncSeekExt as _;
    let Ok(mut file) = tokio::fs::File::open(&output.path).await else {
        return;
    };
    if file.seek(std::io::SeekFrom::End(0)).await.is_err() {
        return;
    }
    let name = output.worker.to_string();
    let mut reader = BufReader::new(Box::new(file) as Box<dyn AsyncRead + Send + Unpin>);
    let mut line = Vec::new();
    loop {
        line.clear();
        match read_line_bounded(&mut reader, &mut line).await {
            Ok(true) => {}
            Ok(false) => {
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                continue;
            }
            Err(_) => return,
        }
        let text = String::from_utf8_lossy(&line).trim_end().to_owned();
        if let Some(format) = output.echo {
            crate::logging::write_echo(&crate::logging::echo_line(format, &name, &text));
        }
        let _ = output.events.send(FleetEvent::Output {
            worker: output.worker.clone(),
            process,
            stream: OutputStream::Stderr,
            line: text,
            at: std::time::SystemTime::now(),
        });
    }
}

async fn forward_output(
    pipe: Box<dyn AsyncRead + Send + Unpin>,
    (worker, process): (WorkerId, ProcessId),
    stream: OutputStream,
    echo: Option<crate::logging::LogFormat>,
    events: broadcast::Sender<FleetEvent>,
) {
    let name = worker.to_string();
    let mut reader = BufReader::new(pipe);
    let mut line = Vec::new();
    loop {
        line.clear();
        match read_line_bounded(&mut reader, &mut line).await {
            Ok(false) | Err(_) => return,
            Ok(true) => {}
        }
        let text = String::from_utf8_lossy(&line).trim_end().to_owned();
        if let Some(format) = echo {
            crate::logging::write_echo(&crate::logging::echo_line(format, &name, &text));
        }
        let _ = events.send(FleetEvent::Output {
            worker: worker.clone(),
            process,
            stream,
            line: text,
            at: std::time::SystemTime::now(),
        });
    }
}

/// Reads one line into `line`, keeping at most [`MAX_LINE`] bytes of it. `Ok(false)` at the end.
async fn read_line_bounded(
    reader: &mut BufReader<Box<dyn AsyncRead + Send + Unpin>>,
    line: &mut Vec<u8>,
) -> std::io::Result<bool> {
    let mut read_any = false;
    loop {
        let buffer = reader.fill_buf().await?;
        if buffer.is_empty() {
            return Ok(read_any);
        }
        read_any = true;
        let (chunk, done) = match buffer.iter().position(|b| *b == b'\n') {
            Some(end) => (&buffer[..end], Some(end + 1)),
            None => (buffer, None),
        };
        let room = MAX_LINE.saturating_sub(line.len());
        line.extend_from_slice(&chunk[..chunk.len().min(room)]);
        let consumed = done.unwrap_or(buffer.len());
        reader.consume(consumed);
        if done.is_some() {
            return Ok(true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_are_split_and_bounded() {
        let long = "x".repeat(MAX_LINE + 100);
        let text = format!("one\n{long}\nthree");
        let pipe: Box<dyn AsyncRead + Send + Unpin> =
            Box::new(std::io::Cursor::new(text.into_bytes()));
        let mut reader = BufReader::with_capacity(64, pipe);
        let mut lines = Vec::new();
        let mut line = Vec::new();
        while read_line_bounded(&mut reader, &mut line).await.unwrap() {
            lines.push(String::from_utf8(std::mem::take(&mut line)).unwrap());
        }
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0], "one");
        assert_eq!(lines[1].len(), MAX_LINE);
        assert_eq!(lines[2], "three");
    }
}
