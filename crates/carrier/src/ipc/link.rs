//! A worker's link to the admiral: connect, prove membership, receive the assignment, then run
//! the reader and writer tasks behind an [`Ipc`] handle.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, watch};

use super::client::{Ipc, Message, Transport, Uplink};
use super::frame::{DEFAULT_MAX_FRAME, FrameError, FrameReader, FrameWriter};
use super::outbox::Outbox;
use super::proto::{
    Assignment, ClusterAssignment, Down, Rejoin, ShardSession, Target, Up, check_admiral_proof,
};

/// Environment variable: path of the admiral's IPC socket.
pub const ENV_SOCKET: &str = "FLEET_IPC_SOCKET";
/// Environment variable: the per-fleet secret.
pub const ENV_SECRET: &str = "FLEET_IPC_SECRET";
/// Environment variable: this worker's process number.
pub const ENV_PROCESS: &str = "FLEET_PROCESS";
/// Environment variable: maximum IPC frame size in bytes.
pub const ENV_MAX_FRAME: &str = "FLEET_MAX_FRAME";
/// Environment variable: default request timeout in milliseconds.
pub const ENV_TIMEOUT: &str = "FLEET_REQUEST_TIMEOUT_MS";
/// Environment variable: the worker's name (`cluster-0`, `service-echo`), for the user's own
/// use; what the worker runs comes with its assignment over IPC.
pub const ENV_WORKER: &str = "FLEET_WORKER";

/// Environment variable: how long, in milliseconds, a worker that lost its admiral keeps serving
/// and waits for the next one on the same socket (0 or unset: it stops at once).
pub const ENV_GRACE: &str = "FLEET_ADMIRAL_GRACE_MS";

/// How often a worker that lost its admiral tries the socket again.
const REJOIN_EVERY: Duration = Duration::from_millis(250);

/// How long a returning worker waits for each answer of the admiral it found.
const REJOIN_ANSWER: Duration = Duration::from_secs(10);

/// Bytes a worker may have queued for the admiral beyond one frame; past it, senders wait.
const OUTBOX_LIMIT: usize = 16 << 20;

/// How long the admiral has to answer the hello.
const WELCOME_TIMEOUT: Duration = Duration::from_secs(30);

/// Where and how a worker joins its fleet, read from the environment the admiral set.
#[derive(Clone)]
pub struct WorkerEnv {
    /// The admiral's socket.
    pub socket: PathBuf,
    /// The per-fleet secret.
    pub secret: crate::Secret,
    /// This worker's process number.
    pub process: u64,
    /// Maximum frame size.
    pub max_frame: usize,
    /// Default request timeout.
    pub timeout: Duration,
    /// This worker's build, told to the admiral in its hello (not an environment variable:
    /// the worker's own binary names it).
    pub build: String,
    /// How long it waits for a new admiral after losing its own (zero: it stops at once).
    pub grace: Duration,
}

impl std::fmt::Debug for WorkerEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerEnv")
            .field("socket", &self.socket)
            .field("secret", &"<redacted>")
            .field("process", &self.process)
            .field("grace", &self.grace)
            .finish_non_exhaustive()
    }
}

impl WorkerEnv {
    /// The variables that carry this environment to a worker process: what
    /// [`from_env`](Self::from_env) reads there. The secret is among them: they go to the child's
    /// environment only, never to a command line or a log.
    #[must_use]
    pub fn vars(&self) -> Vec<(&'static str, String)> {
        vec![
            (ENV_SOCKET, self.socket.display().to_string()),
            (ENV_SECRET, self.secret.expose().to_owned()),
            (ENV_PROCESS, self.process.to_string()),
            (ENV_MAX_FRAME, self.max_frame.to_string()),
            (ENV_TIMEOUT, self.timeout.as_millis().to_string()),
            (ENV_GRACE, self.grace.as_millis().to_string()),
        ]
    }

    /// The environment of a worker process, or `None` in the admiral (no socket variable).
    ///
    /// # Panics
    /// If the socket variable is set but the others are missing or malformed: the process was
    /// started wrongly and cannot join.
    #[must_use]
    pub fn from_env() -> Option<Self> {
        Self::from_lookup(|name| std::env::var_os(name).map(|v| v.to_string_lossy().into_owned()))
    }

    /// [`from_env`](Self::from_env) over any lookup of variables.
    fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Option<Self> {
        let socket = get(ENV_SOCKET)?;
        let secret =
            crate::Secret::new(get(ENV_SECRET).expect("FLEET_IPC_SECRET is set for workers"));
        let process = get(ENV_PROCESS)
            .and_then(|p| p.parse().ok())
            .expect("FLEET_PROCESS is a number for workers");
        let max_frame = get(ENV_MAX_FRAME)
            .and_then(|v| v.parse().ok())
            .unwrap_or(DEFAULT_MAX_FRAME);
        let timeout = get(ENV_TIMEOUT)
            .and_then(|v| v.parse().ok())
            .map_or(super::client::DEFAULT_TIMEOUT, Duration::from_millis);
        let grace = get(ENV_GRACE)
            .and_then(|v| v.parse().ok())
            .map_or(Duration::ZERO, Duration::from_millis);
        Some(Self {
            socket: socket.into(),
            secret,
            process,
            max_frame,
            timeout,
            build: String::new(),
            grace,
        })
    }
}

/// Why a worker could not join its fleet.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// The socket could not be reached.
    #[error("cannot reach the admiral at {path}: {source}")]
    Connect {
        /// Socket path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The handshake failed.
    #[error("handshake with the admiral failed: {0}")]
    Handshake(#[from] FrameError),
    /// The admiral did not welcome this worker.
    #[error("the admiral did not welcome this worker: {0}")]
    NotWelcome(String),
}

/// What the admiral asks of the worker's lifetime.
#[derive(Debug, Clone)]
pub struct WorkerControl {
    stop: watch::Receiver<Option<Stop>>,
    handoffs: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<Handoff>>>,
}

/// A step of a session handover, for cluster adapters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handoff {
    /// Close every shard resumably and hand their sessions over ([`cluster::serve`] does).
    ///
    /// [`cluster::serve`]: crate::cluster::serve
    CloseResumably,
    /// Connect (or reconnect) the shards, resuming these sessions.
    Sessions(Vec<ShardSession>),
    /// A standby cluster goes live.
    Activate,
    /// An old generation's cluster hands no more events to user code.
    Deactivate,
    /// A reshard's switch time (see [`Down::Cut`](super::proto::Down::Cut)).
    Cut {
        /// Milliseconds since the Unix epoch.
        at_ms: u64,
        /// Whether this cluster belongs to the old generation.
        old: bool,
    },
}

/// Why a worker must stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// The admiral asked for a graceful shutdown within this grace period.
    Shutdown(Duration),
    /// The link to the admiral broke: the admiral is gone or disconnected this worker.
    Disconnected,
}

impl WorkerControl {
    /// The next handover step the admiral asks for; `None` once the link is gone. Only a
    /// cluster adapter should take these.
    pub async fn handoff(&self) -> Option<Handoff> {
        self.handoffs.lock().await.recv().await
    }

    /// Resolves when the worker must stop.
    pub async fn stopped(&mut self) -> Stop {
        loop {
            if let Some(stop) = *self.stop.borrow_and_update() {
                return stop;
            }
            if self.stop.changed().await.is_err() {
                return Stop::Disconnected;
            }
        }
    }
}

/// A joined worker: its handle, its assignment and its lifetime control.
#[derive(Debug)]
pub struct WorkerLink {
    /// The IPC handle.
    pub ipc: Ipc,
    /// What to run.
    pub assignment: Assignment,
    /// When to stop.
    pub control: WorkerControl,
}

/// Joins the fleet described by `env`.
pub async fn connect(env: &WorkerEnv) -> Result<WorkerLink, LinkError> {
    let stream = UnixStream::connect(&env.socket)
        .await
        .map_err(|source| LinkError::Connect {
            path: env.socket.clone(),
            source,
        })?;
    let (read, write) = stream.into_split();
    let mut reader = FrameReader::new(read, env.max_frame);
    let mut writer = FrameWriter::new(write, env.max_frame);
    writer
        .send(&Up::Hello {
            secret: env.secret.clone(),
            process: env.process,
            protocol: super::proto::PROTOCOL_VERSION,
            build: env.build.clone(),
        })
        .await?;
    let welcome = tokio::time::timeout(WELCOME_TIMEOUT, reader.next::<Down>())
        .await
        .map_err(|_| LinkError::NotWelcome(format!("no answer within {WELCOME_TIMEOUT:?}")))?;
    let assignment = match welcome {
        Ok(Down::Welcome(assignment)) => assignment,
        Ok(Down::Refused { reason }) => {
            return Err(LinkError::NotWelcome(format!(
                "the admiral refused: {reason}"
            )));
        }
        Ok(other) => {
            return Err(LinkError::NotWelcome(format!(
                "unexpected first message {other:?}"
            )));
        }
        Err(FrameError::Closed) => {
            return Err(LinkError::NotWelcome(
                "the admiral closed the connection".into(),
            ));
        }
        Err(error) => return Err(error.into()),
    };
    let me = match &assignment {
        Assignment::Cluster(c) => Target::Cluster(c.id),
        Assignment::Service { name, .. } => Target::Service(name.clone()),
    };
    let (outbox, flusher) = Outbox::new(writer.into_inner(), OUTBOX_LIMIT);
    tokio::spawn(flusher);
    let uplink = Uplink::new(outbox, env.max_frame);
    let ipc = Ipc::new(me.clone(), Transport::Socket(uplink), env.timeout);
    // Licensed (or not) before any shard starts.
    if let Assignment::Cluster(ClusterAssignment {
        licence_ms: Some(valid_ms),
        ..
    }) = &assignment
    {
        ipc.set_licence(Duration::from_millis(*valid_ms));
    }
    let (stop_tx, stop) = watch::channel(None);
    let (handoff_tx, handoffs) = mpsc::unbounded_channel();

    let rejoining = Rejoining {
        target: me,
        shards: match &assignment {
            Assignment::Cluster(c) => Some((c.first_shard, c.last_shard, c.shard_total)),
            Assignment::Service { .. } => None,
        },
        rest_key: match &assignment {
            Assignment::Cluster(c) => c.rest_key.clone(),
            Assignment::Service { .. } => None,
        },
    };
    let reader_ipc = ipc.clone();
    let env = env.clone();
    tokio::spawn(async move {
        let mut reader = reader;
        loop {
            let error = read_frames(&mut reader, &reader_ipc, &stop_tx, &handoff_tx).await;
            if !matches!(error, FrameError::Closed) {
                tracing::error!(target: "fleet::ipc", %error, "IPC link to the admiral failed");
            }
            let shutting_down = stop_tx.borrow().is_some();
            let next = if env.grace.is_zero() || shutting_down {
                None
            } else {
                rejoin(&env, &reader_ipc, &rejoining).await
            };
            let Some(next) = next else {
                reader_ipc.disconnect();
                let _ = stop_tx.send(Some(Stop::Disconnected));
                return;
            };
            reader = next;
        }
    });

    Ok(WorkerLink {
        ipc,
        assignment,
        control: WorkerControl {
            stop,
            handoffs: Arc::new(tokio::sync::Mutex::new(handoffs)),
        },
    })
}

/// Reads the admiral's frames and acts on them until the link fails; returns why.
async fn read_frames(
    reader: &mut FrameReader<OwnedReadHalf>,
    reader_ipc: &Ipc,
    stop_tx: &watch::Sender<Option<Stop>>,
    handoff_tx: &mpsc::UnboundedSender<Handoff>,
) -> FrameError {
    let mut corked = false;
    loop {
        let down = reader.next::<Down>().await;
        // While more frames wait in the read buffer, the answers they make are held back and
        // written together once the buffer is empty.
        let more = reader.frame_buffered();
        if more != corked {
            corked = more;
            reader_ipc.cork(more);
        }
        match down {
            Ok(Down::Reply { id, reply }) => reader_ipc.resolve(id, reply),
            Ok(Down::Message {
                from,
                event,
                payload,
            }) => {
                reader_ipc.deliver(&Message {
                    from,
                    event,
                    payload,
                });
            }
            Ok(Down::Command {
                id,
                from,
                payload,
                timeout_ms,
            }) => {
                let running = reader_ipc.command_running();
                let run = reader_ipc.run_command(from, payload, Duration::from_millis(timeout_ms));
                let ipc = reader_ipc.clone();
                answer_soon(async move {
                    let outcome = run.await;
                    let _ = ipc.send_up(Up::Reply { id, outcome }).await;
                    drop(running);
                })
                .await;
            }
            Ok(Down::HandOver) => {
                let _ = handoff_tx.send(Handoff::CloseResumably);
            }
            Ok(Down::Activate) => {
                let _ = handoff_tx.send(Handoff::Activate);
            }
            Ok(Down::Deactivate) => {
                let _ = handoff_tx.send(Handoff::Deactivate);
            }
            Ok(Down::Cut { at_ms, old }) => {
                let _ = handoff_tx.send(Handoff::Cut { at_ms, old });
            }
            Ok(Down::Sessions(sessions)) => {
                let _ = handoff_tx.send(Handoff::Sessions(sessions));
            }
            Ok(Down::Licence { valid_ms }) => {
                reader_ipc.set_licence(Duration::from_millis(valid_ms));
            }
            Ok(Down::Ping { seq }) => {
                // From a task, not the reader: a stuck runtime must not answer.
                let ipc = reader_ipc.clone();
                tokio::spawn(async move {
                    let _ = ipc.send_up(Up::Pong { seq }).await;
                });
            }
            // The adapter's quick answers, made on the reader.
            Ok(Down::Fetch { id, query }) => {
                reply_soon(reader_ipc, id, reader_ipc.run_fetch(query)).await;
            }
            Ok(Down::Stats { id }) => {
                reply_soon(reader_ipc, id, reader_ipc.report_stats()).await;
            }
            Ok(Down::CountGuilds { id }) => {
                reply_soon(reader_ipc, id, reader_ipc.count_guilds()).await;
            }
            Ok(Down::Shutdown { grace_ms }) => {
                let _ = stop_tx.send(Some(Stop::Shutdown(Duration::from_millis(grace_ms))));
            }
            Ok(Down::Event(event)) => reader_ipc.deliver_event(event),
            Ok(Down::Welcome(_) | Down::Refused { .. } | Down::Proof { .. } | Down::Adopted) => {
                tracing::warn!(target: "fleet::ipc", "ignoring a second answer to the hello");
            }
            Err(error) => return error,
        }
    }
}

/// Who a cluster or service is, as it tells an admiral that adopts it.
struct Rejoining {
    target: Target,
    shards: Option<(u32, u32, u32)>,
    rest_key: Option<crate::Secret>,
}

/// Why one attempt to rejoin failed.
enum RejoinError {
    /// Nobody there yet, or not the fleet's admiral: try again.
    Retry(String),
    /// The fleet's admiral refused this worker: stop.
    Refused(String),
}

impl From<FrameError> for RejoinError {
    fn from(error: FrameError) -> Self {
        Self::Retry(error.to_string())
    }
}

/// A worker lost its admiral: it keeps serving, queues what it sends (up to [`OUTBOX_LIMIT`]),
/// moves its output to a file beside the socket (nobody reads its pipes any more), and tries the
/// socket every [`REJOIN_EVERY`] for an admiral that proves it is the fleet's, within its grace.
/// Returns the new admiral's reader, or `None` when the grace ran out or the admiral refused it.
async fn rejoin(
    env: &WorkerEnv,
    ipc: &Ipc,
    rejoining: &Rejoining,
) -> Option<FrameReader<OwnedReadHalf>> {
    let deadline = tokio::time::Instant::now() + env.grace;
    if let Some(output) = output_file(&env.socket) {
        move_output(&output);
    }
    let uplink = ipc.uplink()?;
    let (parked, flusher) = Outbox::parked(OUTBOX_LIMIT);
    tokio::spawn(flusher);
    let parked = Arc::new(parked);
    uplink.replace(parked.clone());
    // What was asked of the lost admiral will not be answered.
    ipc.fail_pending();
    tracing::warn!(target: "fleet::ipc", grace = ?env.grace, "lost the admiral; serving on and waiting for the next one");
    let mut attempts = 0u32;
    loop {
        let attempt = tokio::time::timeout_at(deadline, try_rejoin(env, ipc, rejoining)).await;
        match attempt {
            Ok(Ok((reader, writer))) => {
                if parked.attach(writer.into_inner()).is_err() {
                    return None;
                }
                ipc.rejoined();
                tracing::info!(target: "fleet::ipc", attempts, "rejoined the fleet's new admiral");
                return Some(reader);
            }
            Ok(Err(RejoinError::Refused(reason))) => {
                tracing::error!(target: "fleet::ipc", reason, "the new admiral refused this worker; stopping");
                return None;
            }
            Ok(Err(RejoinError::Retry(why))) => {
                attempts += 1;
                if attempts == 1 {
                    tracing::debug!(target: "fleet::ipc", why, "no admiral to rejoin yet");
                }
            }
            Err(_) => {}
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            tracing::error!(target: "fleet::ipc", grace = ?env.grace, "no admiral came back within the grace; stopping");
            return None;
        }
        tokio::time::sleep_until((now + REJOIN_EVERY).min(deadline)).await;
    }
}

/// One attempt: connect, have the admiral prove it knows the secret, then say who this worker
/// is and wait to be adopted.
async fn try_rejoin(
    env: &WorkerEnv,
    ipc: &Ipc,
    rejoining: &Rejoining,
) -> Result<(FrameReader<OwnedReadHalf>, FrameWriter<OwnedWriteHalf>), RejoinError> {
    use ring::rand::SecureRandom as _;
    let stream = UnixStream::connect(&env.socket)
        .await
        .map_err(|e| RejoinError::Retry(e.to_string()))?;
    let (read, write) = stream.into_split();
    let mut reader = FrameReader::new(read, env.max_frame);
    let mut writer = FrameWriter::new(write, env.max_frame);
    let mut nonce = vec![0; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut nonce)
        .map_err(|_| RejoinError::Retry("no randomness for a nonce".into()))?;
    writer
        .send(&Up::Challenge {
            nonce: nonce.clone(),
        })
        .await?;
    let answer = tokio::time::timeout(REJOIN_ANSWER, reader.next::<Down>()).await;
    match answer {
        Ok(Ok(Down::Proof { mac })) if check_admiral_proof(&env.secret, &nonce, &mac) => {}
        Ok(Ok(Down::Proof { .. })) => {
            return Err(RejoinError::Retry(
                "the process on the socket could not prove it is the fleet's admiral".into(),
            ));
        }
        other => return Err(RejoinError::Retry(format!("no proof: {other:?}"))),
    }
    let rejoin = Rejoin {
        secret: env.secret.clone(),
        process: env.process,
        protocol: super::proto::PROTOCOL_VERSION,
        build: env.build.clone(),
        pid: std::process::id(),
        target: rejoining.target.clone(),
        shards: rejoining.shards,
        ready: ipc.reported_ready(),
        rest_key: rejoining.rest_key.clone(),
        topics: ipc.topics().await.iter().collect(),
    };
    writer.send(&Up::Rejoin(Box::new(rejoin))).await?;
    match tokio::time::timeout(REJOIN_ANSWER, reader.next::<Down>()).await {
        Ok(Ok(Down::Adopted)) => Ok((reader, writer)),
        Ok(Ok(Down::Refused { reason })) => Err(RejoinError::Refused(reason)),
        other => Err(RejoinError::Retry(format!("not adopted: {other:?}"))),
    }
}

/// Where a worker that lost its admiral writes its output: `<worker>.log` beside the socket.
fn output_file(socket: &std::path::Path) -> Option<PathBuf> {
    let worker = std::env::var(ENV_WORKER).ok()?;
    let safe = !worker.is_empty()
        && worker
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    safe.then(|| socket.parent().map(|dir| dir.join(format!("{worker}.log"))))
        .flatten()
}

/// Points this process's standard output and error at `path` (appended, only this user may read
/// it): the admiral that read its pipes is gone, and a write to a pipe nobody reads fails.
fn move_output(path: &std::path::Path) {
    use std::os::unix::fs::OpenOptionsExt as _;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path);
    match file {
        Ok(file) => {
            let moved =
                rustix::stdio::dup2_stdout(&file).and_then(|()| rustix::stdio::dup2_stderr(&file));
            if let Err(error) = moved {
                tracing::warn!(target: "fleet::ipc", %error, "cannot move this worker's output to a file");
            }
        }
        Err(error) => {
            tracing::warn!(target: "fleet::ipc", %error, path = %path.display(), "cannot open a file for this worker's output");
        }
    }
}

/// Runs an answer's future on the reader until it first waits: a handler that answers at once
/// (an echo, a cache lookup) costs no task; one that waits goes on in a task of its own, so the
/// reader goes on reading.
/// Answers request `id` with `outcome`, as [`answer_soon`] does.
async fn reply_soon(ipc: &Ipc, id: u64, outcome: super::proto::Outcome) {
    let ipc = ipc.clone();
    answer_soon(async move {
        let _ = ipc.send_up(Up::Reply { id, outcome }).await;
    })
    .await;
}

async fn answer_soon(answer: impl Future<Output = ()> + Send + 'static) {
    let mut answer = Box::pin(answer);
    if futures::poll!(answer.as_mut()).is_pending() {
        tokio::spawn(answer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_environment_a_worker_is_given_is_the_one_it_reads() {
        let env = WorkerEnv {
            socket: "/run/fleet-1/admiral.sock".into(),
            secret: crate::Secret::new("s3cret"),
            process: 42,
            max_frame: 1 << 20,
            timeout: Duration::from_millis(2500),
            build: String::new(),
            grace: Duration::from_mins(1),
        };
        let vars: std::collections::HashMap<_, _> = env.vars().into_iter().collect();
        let read = WorkerEnv::from_lookup(|name| vars.get(name).cloned()).unwrap();
        assert_eq!(read.socket, env.socket);
        assert_eq!(read.secret, env.secret);
        assert_eq!(
            (read.process, read.max_frame, read.timeout, read.grace),
            (env.process, env.max_frame, env.timeout, env.grace)
        );
        assert!(
            WorkerEnv::from_lookup(|_| None).is_none(),
            "no socket: the admiral"
        );
    }
}
