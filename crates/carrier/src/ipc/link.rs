//! A worker's link to the admiral: connect, prove membership, receive the assignment, then run
//! the reader and writer tasks behind an [`Ipc`] handle.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UnixStream;
use tokio::sync::{mpsc, watch};

use super::client::{Ipc, Message, Transport, Uplink};
use super::frame::{DEFAULT_MAX_FRAME, FrameError, FrameReader, FrameWriter};
use super::outbox::Outbox;
use super::proto::{Assignment, Down, ShardSession, Target, Up};

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
}

impl std::fmt::Debug for WorkerEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerEnv")
            .field("socket", &self.socket)
            .field("secret", &"<redacted>")
            .field("process", &self.process)
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
        Some(Self {
            socket: socket.into(),
            secret,
            process,
            max_frame,
            timeout,
            build: String::new(),
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
    let ipc = Ipc::new(me, Transport::Socket(uplink), env.timeout);
    let (stop_tx, stop) = watch::channel(None);
    let (handoff_tx, handoffs) = mpsc::unbounded_channel();

    let reader_ipc = ipc.clone();
    tokio::spawn(async move {
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
                    let run =
                        reader_ipc.run_command(from, payload, Duration::from_millis(timeout_ms));
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
                Ok(Down::Ping { seq }) => {
                    // From a task, not the reader: a stuck runtime must not answer.
                    let ipc = reader_ipc.clone();
                    tokio::spawn(async move {
                        let _ = ipc.send_up(Up::Pong { seq }).await;
                    });
                }
                // The adapter's quick answers, made on the reader.
                Ok(Down::Fetch { id, query }) => {
                    reply_soon(&reader_ipc, id, reader_ipc.run_fetch(query)).await;
                }
                Ok(Down::Stats { id }) => {
                    reply_soon(&reader_ipc, id, reader_ipc.report_stats()).await;
                }
                Ok(Down::CountGuilds { id }) => {
                    reply_soon(&reader_ipc, id, reader_ipc.count_guilds()).await;
                }
                Ok(Down::Shutdown { grace_ms }) => {
                    let _ = stop_tx.send(Some(Stop::Shutdown(Duration::from_millis(grace_ms))));
                }
                Ok(Down::Event(event)) => reader_ipc.deliver_event(event),
                Ok(Down::Welcome(_) | Down::Refused { .. }) => {
                    tracing::warn!(target: "fleet::ipc", "ignoring a second answer to the hello");
                }
                Err(error) => {
                    if !matches!(error, FrameError::Closed) {
                        tracing::error!(target: "fleet::ipc", %error, "IPC link to the admiral failed");
                    }
                    reader_ipc.disconnect();
                    let _ = stop_tx.send(Some(Stop::Disconnected));
                    return;
                }
            }
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
        };
        let vars: std::collections::HashMap<_, _> = env.vars().into_iter().collect();
        let read = WorkerEnv::from_lookup(|name| vars.get(name).cloned()).unwrap();
        assert_eq!(read.socket, env.socket);
        assert_eq!(read.secret, env.secret);
        assert_eq!(
            (read.process, read.max_frame, read.timeout),
            (env.process, env.max_frame, env.timeout)
        );
        assert!(
            WorkerEnv::from_lookup(|_| None).is_none(),
            "no socket: the admiral"
        );
    }
}
