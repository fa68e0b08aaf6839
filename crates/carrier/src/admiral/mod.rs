//! The admiral: plans shards ([`plan`]), spawns and supervises workers ([`lifecycle`],
//! `process`), and routes IPC between them (`router`). It may not know any Discord library.

mod admission;
mod deploy;
mod events;
mod http;
pub mod lifecycle;
pub mod plan;
pub(crate) mod process;
pub(crate) mod router;
mod run_dir;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, oneshot, watch};

pub use self::events::{FleetEvent, OutputStream, WorkerStatus};
pub use self::lifecycle::{
    LifecycleEvent, ProcessId, RestartMode, RestartPolicy, State, Timeouts, WorkerId,
};
pub use self::plan::{ShardCount, ShardPlan};
pub use self::process::WorkerCommand;
use self::run_dir::{DirGuard, SOCKET_FILE, private_dir, remove_stale_dirs};
use crate::identify::IdentifyQueue;
use crate::ipc::client::{Ipc, IpcError, Transport};
use crate::ipc::proto::{Group, Outcome, Payload, Target};
use crate::rest::{ProxyStats, ProxyStatsHandle, RestProxy};

/// Everything the admiral runs with. Built by `Fleet`.
pub struct AdmiralConfig {
    /// The shard plan.
    pub plan: ShardPlan,
    /// The services launched with the fleet.
    pub services: Vec<lifecycle::ServiceSpec>,
    /// Every registered service type, for services created at runtime.
    pub service_kinds: Vec<String>,
    /// Makes each cluster's own data (`Fleet::cluster_data`).
    pub cluster_data: Option<ClusterData>,
    /// The bot token.
    pub token: String,
    /// Gateway URL handed to clusters.
    pub gateway_url: String,
    /// REST base: Discord's, or the upstream of `rest_proxy`.
    pub rest_url: String,
    /// The central REST proxy, if on: clusters get its URL instead of `rest_url`. It runs until
    /// the admiral stops.
    pub rest_proxy: Option<RestProxy>,
    /// Lifecycle timeouts.
    pub timeouts: Timeouts,
    /// How crashed workers are restarted.
    pub restart: RestartPolicy,
    /// Default IPC request timeout.
    pub request_timeout: Duration,
    /// Maximum IPC frame size.
    pub max_frame: usize,
    /// The identify queue every shard goes through.
    pub identify: Arc<dyn IdentifyQueue>,
    /// How worker processes are started.
    pub worker_command: WorkerCommand,
    /// Whether worker output lines are echoed to the admiral's stderr as `[worker] line`.
    pub echo_output: bool,
    /// Whether SIGINT and SIGTERM start a graceful total shutdown.
    pub handle_signals: bool,
    /// Application heartbeats, if on.
    pub heartbeat: Option<Heartbeat>,
    /// How long a worker's old process is warned before a requested restart takes it away.
    pub soft_kill_notice: Duration,
    /// How often clusters checkpoint their sessions (zero: never, and crashes are not resumed).
    pub checkpoint_interval: Duration,
    /// Reshard on its own when guilds outgrow the shards, if set.
    pub auto_reshard: Option<AutoReshard>,
    /// Discord's recommended shard count (`/gateway/bot`), for reshards that ask for it.
    pub recommend: Recommender,
    /// Where the private IPC directory is made (and dead admirals' leftovers are removed).
    pub run_dir: PathBuf,
    /// The most bytes (keys and values) the central store holds.
    pub store_limit: usize,
    /// How often a stats snapshot is made and published; zero: never on its own.
    pub stats_interval: Duration,
    /// Where the admiral's HTTP endpoint (metrics, health) listens, if anywhere.
    pub http: Option<std::net::SocketAddr>,
    /// How workers log, and how their lines are echoed.
    pub log_format: crate::logging::LogFormat,
    /// The workers' log filter, if set.
    pub log_filter: Option<String>,
    /// Whether interval snapshots are broadcast to the workers too.
    pub broadcast_stats: bool,
    /// This binary's build ([`FleetOptions::build`](crate::FleetOptions::build)).
    pub build: String,
    /// What SIGUSR2 deploys.
    pub deploy_on_signal: crate::ipc::proto::DeployPlan,
    /// How long workers that lose this admiral serve on and wait for the next one on the same
    /// stable directory (zero: they stop at once, and the directory is private to this admiral).
    pub admiral_grace: Duration,
    /// The fleet's id: it names the stable directory (`fleet-<id>` in `run_dir`).
    pub fleet_id: String,
    /// This host's lease in Redis, when the bot runs on several hosts: renewed while the admiral
    /// runs, given up when it stops; with its ranges, when Redis assigns them.
    pub host: Option<crate::hosts::HostPart>,
    /// Where the clusters' checkpoints go to be written to Redis (with `host`'s ranges).
    pub(crate) host_checkpoints: Option<Arc<crate::hosts::agent::Checkpoints>>,
    /// The router's end of the bus to the bot's other hosts (with `host`'s ranges).
    pub(crate) host_bus: Option<crate::hosts::bus::BusOut>,
    /// The central store in Redis, shared by the bot's hosts (with `host`).
    pub(crate) host_store: Option<crate::hosts::store::SharedStore>,
    /// With ranges assigned in Redis: those this host's last admiral ran, whose clusters it
    /// may adopt.
    pub(crate) host_adoptable: Vec<u32>,
    /// The services run once per bot that the last admiral of this host left running.
    pub(crate) host_adoptable_services: Vec<String>,
    /// How long before this host's lease could lapse it fences itself (on several hosts).
    pub(crate) host_fence_margin: Duration,
}

/// Makes a cluster's own data from its id (`Fleet::cluster_data`), encoded.
pub type ClusterData = Arc<dyn Fn(u32) -> Result<Payload, String> + Send + Sync>;

/// The most bytes one cluster's data may have; more is not sent.
pub const MAX_CLUSTER_DATA: usize = 1 << 20;

/// Fetches Discord's recommended shard count; built by `Fleet` from its adapter.
pub type Recommender =
    Arc<dyn Fn() -> futures::future::BoxFuture<'static, Result<u32, String>> + Send + Sync>;

/// The IPC event a worker's old process receives when a requested restart will take it away
/// (register a handler with `Ipc::register`): the payload is the notice in milliseconds
/// (`u64`, [`Payload::decode`](crate::Payload::decode)). Only sent when
/// `FleetOptions::soft_kill_notice` is not zero.
pub const SOFT_KILL_EVENT: &str = "fleet:soft-kill";

/// When the admiral reshards on its own: it counts the guilds in the clusters' caches every
/// `check_every`, and once the guilds per shard pass `max_guilds_per_shard` it reshards to
/// enough shards for `target_guilds_per_shard` each (rounded up to a multiple of
/// `max_concurrency`). Discord refuses shards above 2,500 guilds (close code 4011).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AutoReshard {
    /// Reshard once the guilds per shard pass this.
    pub max_guilds_per_shard: u32,
    /// Guilds per shard the new total is made for.
    pub target_guilds_per_shard: u32,
    /// How often to count.
    pub check_every: Duration,
}

impl AutoReshard {
    /// The shard total to reshard to for `guilds`, if the current `shards` are too few.
    #[must_use]
    pub fn wanted(&self, guilds: u64, shards: u32, max_concurrency: u32) -> Option<u32> {
        let per_shard = guilds / u64::from(shards.max(1));
        if per_shard <= u64::from(self.max_guilds_per_shard) {
            return None;
        }
        let target = u64::from(self.target_guilds_per_shard.max(1));
        let needed = guilds.div_ceil(target) as u32;
        let mc = max_concurrency.max(1);
        let total = needed.div_ceil(mc) * mc;
        (total > shards).then_some(total)
    }
}

/// Application heartbeats between the admiral and its workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heartbeat {
    /// How often each connected worker is pinged.
    pub interval: Duration,
    /// A worker that answered no ping for this long is killed and treated as crashed.
    pub timeout: Duration,
}

impl std::fmt::Debug for AdmiralConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdmiralConfig")
            .field("plan", &self.plan)
            .field("services", &self.services)
            .field("token", &"<redacted>")
            .field("gateway_url", &self.gateway_url)
            .field("rest_url", &self.rest_url)
            .field("timeouts", &self.timeouts)
            .finish_non_exhaustive()
    }
}

/// Why the admiral could not start or wait.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdmiralError {
    /// The private IPC directory or socket could not be made.
    #[error("cannot set up IPC at {path}: {source}")]
    Ipc {
        /// Where.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The fleet was not ready in time.
    #[error("the fleet was not ready within {0:?}")]
    NotReady(Duration),
    /// The admiral stopped.
    #[error("the admiral has stopped")]
    Stopped,
    /// The HTTP endpoint could not listen where it was told to.
    #[error("cannot serve the admiral's HTTP endpoint on {addr}: {source}")]
    Http {
        /// Where.
        addr: std::net::SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// The admiral could not re-execute itself ([`AdmiralHandle::restart_self`]).
    #[error("the admiral cannot restart itself: {0}")]
    RestartSelf(String),
}

/// The admiral's own program and arguments, found at its start, to re-execute it in place.
#[derive(Debug, Clone)]
pub(crate) struct OwnCommand {
    program: PathBuf,
    args: Vec<std::ffi::OsString>,
}

impl OwnCommand {
    fn current() -> Option<Self> {
        Some(Self {
            program: std::env::current_exe().ok()?,
            args: std::env::args_os().skip(1).collect(),
        })
    }
}

/// Replaces this process's image with the admiral's program (`own`), the same pid, arguments
/// and environment: its workers lose their connection, wait (`grace`), and the new image adopts
/// them. Returns only why it could not.
pub(crate) fn exec_self(grace: Duration, own: Option<&OwnCommand>) -> AdmiralError {
    use std::io::Write as _;
    use std::os::unix::process::CommandExt as _;
    if grace.is_zero() {
        return AdmiralError::RestartSelf(
            "its workers would stop with it: set FleetOptions::admiral_grace".into(),
        );
    }
    let Some(own) = own else {
        return AdmiralError::RestartSelf("its own program could not be found".into());
    };
    tracing::info!(target: "fleet::admiral", program = %own.program.display(), "re-executing the admiral in place; its workers wait for it");
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    let error = std::process::Command::new(&own.program)
        .args(&own.args)
        .exec();
    AdmiralError::RestartSelf(format!("cannot execute {}: {error}", own.program.display()))
}

/// Has the router write the central store for the next admiral, and waits (5 s at most) until
/// it is on disk.
async fn save_store(inbox: &mpsc::Sender<router::inbox::Inbox>) {
    let (done, saved) = oneshot::channel();
    if inbox
        .send(router::inbox::Inbox::SaveStore(done))
        .await
        .is_ok()
    {
        let _ = tokio::time::timeout(Duration::from_secs(5), saved).await;
    }
}

/// Re-executes the admiral on each SIGHUP (logged when it cannot).
async fn restart_on_signal(
    grace: Duration,
    own: Option<OwnCommand>,
    inbox: mpsc::Sender<router::inbox::Inbox>,
) {
    let Ok(mut hangups) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
    else {
        return;
    };
    while hangups.recv().await.is_some() {
        save_store(&inbox).await;
        let error = exec_self(grace, own.as_ref());
        tracing::error!(target: "fleet::admiral", %error, "SIGHUP: not restarted");
    }
}

/// The admiral's handle: its own IPC, its events, and control of the fleet.
#[derive(Debug)]
pub struct AdmiralHandle {
    ipc: Ipc,
    inbox: mpsc::Sender<router::inbox::Inbox>,
    events: broadcast::Sender<FleetEvent>,
    first_events: Mutex<Option<broadcast::Receiver<FleetEvent>>>,
    ready: watch::Receiver<Option<(usize, usize)>>,
    stopped: watch::Receiver<bool>,
    plan: watch::Receiver<ShardPlan>,
    proxy: Option<ProxyStatsHandle>,
    proxy_url: Option<String>,
    proxy_key: Option<crate::Secret>,
    socket: PathBuf,
    http_url: Option<String>,
    restart_timeout: Duration,
    services: usize,
    tasks: Vec<tokio::task::AbortHandle>,
    grace: Duration,
    own: Option<OwnCommand>,
    /// Turns true once this host's lease in Redis is given up, after the stop.
    lease_released: Option<watch::Receiver<bool>>,
}

/// How a launch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Launched {
    /// Workers live.
    pub live: usize,
    /// Workers that failed.
    pub failed: usize,
}

impl AdmiralHandle {
    /// The admiral's own IPC: the same calls a worker has.
    #[must_use]
    pub fn ipc(&self) -> &Ipc {
        &self.ipc
    }

    /// The shard plan the fleet serves now (a reshard changes it when the new generation goes
    /// live).
    #[must_use]
    pub fn plan(&self) -> ShardPlan {
        self.plan.borrow().clone()
    }

    /// Reshards to the total `count` gives (exact, Discord's recommendation from
    /// `/gateway/bot`, or guilds per shard; in `clusters` clusters, default as many as now): a
    /// new generation connects in standby beside the old one, goes live once all of it is
    /// ready, and the old one drains. Resolves when the new generation is live; a failure
    /// leaves the old generation serving.
    pub async fn reshard(&self, count: ShardCount, clusters: Option<u32>) -> Result<(), IpcError> {
        self.ipc
            .reshard(count, clusters, self.restart_timeout * 2)
            .await
    }

    /// The event stream. The first call gets every event since the launch began; later calls
    /// get events from then on. A receiver that falls more than 8192 events behind skips ahead.
    #[must_use]
    pub fn events(&self) -> broadcast::Receiver<FleetEvent> {
        self.first_events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .unwrap_or_else(|| self.events.subscribe())
    }

    /// A stats snapshot of the whole fleet now (see [`crate::stats`]); workers that do not
    /// report within [`STATS_DEADLINE`](crate::ipc::STATS_DEADLINE) are listed as missing.
    ///
    /// # Errors
    /// When the admiral has stopped.
    pub async fn stats(&self) -> Result<crate::FleetStats, IpcError> {
        self.ipc.stats().await
    }

    /// The admiral's HTTP endpoint (`/metrics`, `/stats`, `/health`, `/ready`), if on.
    #[must_use]
    pub fn http_url(&self) -> Option<&str> {
        self.http_url.as_deref()
    }

    /// The central REST proxy's figures, if the proxy is on.
    #[must_use]
    pub fn rest_proxy_stats(&self) -> Option<ProxyStats> {
        self.proxy.as_ref().map(ProxyStatsHandle::get)
    }

    /// The central REST proxy's address, if the proxy is on.
    #[must_use]
    pub fn rest_proxy_url(&self) -> Option<&str> {
        self.proxy_url.as_deref()
    }

    /// The admiral's own key to the central REST proxy, to send as
    /// [`rest::KEY_HEADER`](crate::rest::KEY_HEADER) from this process.
    #[must_use]
    pub fn rest_proxy_key(&self) -> Option<&crate::Secret> {
        self.proxy_key.as_ref()
    }

    /// The admiral's IPC socket (in its private directory), for diagnostics and for workers
    /// written in other languages.
    #[must_use]
    pub fn ipc_socket(&self) -> &std::path::Path {
        &self.socket
    }

    /// Waits until every worker has started or failed.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<Launched, AdmiralError> {
        let mut ready = self.ready.clone();
        let waited = tokio::time::timeout(timeout, ready.wait_for(Option::is_some)).await;
        match waited {
            Ok(Ok(value)) => {
                let (live, failed) = value.expect("waited for Some");
                Ok(Launched { live, failed })
            }
            Ok(Err(_)) => Err(AdmiralError::Stopped),
            Err(_) => Err(AdmiralError::NotReady(timeout)),
        }
    }

    /// Every worker's state now.
    pub async fn workers(&self) -> Result<Vec<WorkerStatus>, AdmiralError> {
        let (tx, rx) = oneshot::channel();
        self.inbox
            .send(router::inbox::Inbox::Workers(tx))
            .await
            .map_err(|_| AdmiralError::Stopped)?;
        rx.await.map_err(|_| AdmiralError::Stopped)
    }

    /// Rolls every worker onto a new build; see [`Ipc::deploy`]. Waits at most a day.
    ///
    /// # Errors
    /// As [`Ipc::deploy`].
    pub async fn deploy(
        &self,
        plan: crate::ipc::proto::DeployPlan,
    ) -> Result<crate::ipc::proto::DeployReport, IpcError> {
        self.ipc.deploy(plan, crate::ipc::proto::MAX_TIMEOUT).await
    }

    /// Restarts one worker and resolves once its replacement serves; see [`RestartMode`]. A
    /// failed soft restart leaves the old process serving and says why.
    pub async fn restart(&self, worker: &WorkerId, mode: RestartMode) -> Result<(), IpcError> {
        self.ipc
            .restart(worker.target(), mode, self.restart_timeout)
            .await
    }

    /// Stops one worker gracefully and resolves once its process has exited; a hard
    /// [`restart`](Self::restart) starts it again.
    pub async fn stop_worker(&self, worker: &WorkerId) -> Result<(), IpcError> {
        self.ipc.stop(worker.target(), self.restart_timeout).await
    }

    /// Creates a service at runtime; see [`Ipc::create_service`].
    pub async fn create_service(
        &self,
        name: &str,
        kind: &str,
        options: crate::worker::ServiceOptions,
    ) -> Result<(), IpcError> {
        self.ipc.create_service(name, kind, options).await
    }

    /// Kills one worker's process now (no shutdown hook, no grace) and resolves once it has
    /// exited; a hard [`restart`](Self::restart) starts it again.
    pub async fn stop_worker_now(&self, worker: &WorkerId) -> Result<(), IpcError> {
        self.ipc
            .stop_now(worker.target(), self.restart_timeout)
            .await
    }

    /// Restarts every worker of `group`, `at_once` at a time, and resolves once all are done
    /// with one outcome per worker; see [`Ipc::restart_all`].
    pub async fn restart_all(
        &self,
        group: Group,
        mode: RestartMode,
        at_once: u32,
    ) -> Result<std::collections::BTreeMap<Target, Outcome>, IpcError> {
        let workers = match group {
            Group::Clusters => self.plan.borrow().clusters.len(),
            Group::Services => self.workers().await.map_or(self.services, |workers| {
                workers
                    .iter()
                    .filter(|w| matches!(w.id, WorkerId::Service(_)))
                    .count()
            }),
        } as u32;
        let rounds = workers.div_ceil(at_once.max(1)).max(1);
        self.ipc
            .restart_all(group, mode, at_once, self.restart_timeout * rounds)
            .await
    }

    /// Shuts the whole fleet down gracefully and waits until every worker has exited.
    pub async fn shutdown(&self) {
        let _ = self.inbox.send(router::inbox::Inbox::Shutdown).await;
        self.wait_stopped().await;
    }

    /// Re-executes the admiral's program in place: the same pid, arguments and environment, and
    /// the program as it is on disk now (a new build copied over it runs). Every worker keeps
    /// serving through it and the new image adopts them, with no identify and no event lost
    /// (see [`FleetOptions::admiral_grace`](crate::FleetOptions::admiral_grace), which it needs).
    /// SIGHUP does the same when the admiral handles signals. Returns only if it could not.
    /// The central store goes along: it is written to the fleet's directory first, and the new
    /// image takes it back.
    pub async fn restart_self(&self) -> AdmiralError {
        save_store(&self.inbox).await;
        exec_self(self.grace, self.own.as_ref())
    }

    /// Stops the admiral at once, without a graceful shutdown, as if its process had died: the
    /// workers lose their connection and exit on their own.
    pub fn abort(&self) {
        for task in &self.tasks {
            task.abort();
        }
    }

    /// Waits until the fleet has stopped (and, on several hosts, this host's lease is given up:
    /// 5 s at most).
    pub async fn wait_stopped(&self) {
        let mut stopped = self.stopped.clone();
        let _ = stopped.wait_for(|s| *s).await;
        if let Some(released) = &self.lease_released {
            let mut released = released.clone();
            let _ = tokio::time::timeout(Duration::from_secs(5), released.wait_for(|r| *r)).await;
        }
    }
}

pub(crate) use self::run_dir::check_fleet_id;

/// The port the REST proxy of fleet `id`'s last admiral listened on, if its stable directory in
/// `run_dir` names one (0 otherwise).
pub(crate) fn last_proxy_port(run_dir: &std::path::Path, id: &str) -> u16 {
    std::fs::read_to_string(run_dir::stable_path(run_dir, id).join(run_dir::PROXY_PORT_FILE))
        .ok()
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or(0)
}

/// Whether workers of fleet `id`'s last admiral still run, for the next one to adopt.
pub(crate) fn workers_left(run_dir: &std::path::Path, id: &str) -> bool {
    !run_dir::live_workers(&run_dir::stable_path(run_dir, id)).is_empty()
}

/// The file in the stable directory that names the incarnation of this host's lease in Redis,
/// for the admiral that adopts the workers.
const HOST_INCARNATION_FILE: &str = "host-incarnation";

/// The incarnation of the lease this host's last admiral held, if it left one.
pub(crate) fn host_incarnation(run_dir: &std::path::Path, id: &str) -> Option<String> {
    let path = run_dir::stable_path(run_dir, id).join(HOST_INCARNATION_FILE);
    std::fs::read_to_string(path)
        .ok()
        .map(|i| i.trim().to_owned())
}

/// Starts an admiral: a private IPC socket, the router, and the launch of every worker.
#[allow(
    clippy::unused_async,
    reason = "it spawns the admiral's tasks, so it must run inside their runtime"
)]
pub async fn start(config: AdmiralConfig) -> Result<AdmiralHandle, AdmiralError> {
    let removed = remove_stale_dirs(&config.run_dir);
    if removed > 0 {
        tracing::info!(target: "fleet::admiral", removed, run_dir = %config.run_dir.display(), "removed IPC directories left by admirals that died");
    }
    let (dir, secret, waiting) = if config.admiral_grace.is_zero() {
        (private_dir(&config.run_dir)?, crate::Secret::random(), None)
    } else {
        let stable = run_dir::stable_dir(&config.run_dir, &config.fleet_id)?;
        if let Some(proxy) = &config.rest_proxy {
            let port = proxy.addr().port().to_string();
            let _ = std::fs::write(stable.dir.join(run_dir::PROXY_PORT_FILE), port);
        }
        if !stable.waiting.is_empty() {
            tracing::info!(target: "fleet::admiral", workers = stable.waiting.len(), dir = %stable.dir.display(), "the last admiral's workers still run; adopting them");
        }
        // The next admiral on this directory goes on with this host's lease (only this user
        // may read it: the directory is private).
        if let Some(host) = &config.host {
            let path = stable.dir.join(HOST_INCARNATION_FILE);
            if let Err(error) = std::fs::write(&path, host.agent.incarnation()) {
                tracing::warn!(target: "fleet::admiral", %error, "cannot record this host's lease for the next admiral");
            }
        }
        (stable.dir, stable.secret, Some(stable.waiting))
    };
    let socket = dir.join(SOCKET_FILE);
    let listener = std::os::unix::net::UnixListener::bind(&socket)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|source| AdmiralError::Ipc {
            path: socket.clone(),
            source,
        })?;
    let http = match config.http {
        Some(addr) => {
            let listener =
                http::bind(addr).map_err(|source| AdmiralError::Http { addr, source })?;
            let bound = listener
                .local_addr()
                .map_err(|source| AdmiralError::Http { addr, source })?;
            Some((listener, bound))
        }
        None => None,
    };
    let mut config = config;
    let host = config.host.take();
    let config = Arc::new(config);
    let own = OwnCommand::current();
    let (inbox_tx, inbox_rx) = mpsc::channel(65_536);
    let (local_tx, local_rx) = mpsc::channel(1024);
    let (events, first) = broadcast::channel(8192);
    let (ready_tx, ready) = watch::channel(None);
    let (stopped_tx, stopped) = watch::channel(false);
    let (plan_tx, plan) = watch::channel(config.plan.clone());
    let ipc = Ipc::new(
        Target::Admiral,
        Transport::Local(local_tx),
        config.request_timeout,
    );
    let router = router::Router::new(
        config.clone(),
        socket,
        secret,
        ipc.clone(),
        inbox_tx.clone(),
        events.clone(),
        ready_tx,
        plan_tx,
        tokio::runtime::Handle::current(),
    );
    let router = match waiting {
        Some(waiting) => router.with_stable_dir(dir.clone(), waiting),
        None => router,
    }
    .restarts_as(own.clone());
    let mut tasks = Vec::new();
    if config.handle_signals {
        let inbox = inbox_tx.clone();
        let signals = tokio::spawn(async move {
            let signal = shutdown_signal().await;
            tracing::info!(target: "fleet::admiral", signal, "shutting the fleet down");
            let _ = inbox.send(router::inbox::Inbox::Shutdown).await;
        });
        tasks.push(signals.abort_handle());
        let deploys = tokio::spawn(deploy_on_signal(
            ipc.clone(),
            config.deploy_on_signal.clone(),
        ));
        tasks.push(deploys.abort_handle());
        if !config.admiral_grace.is_zero() {
            let task = tokio::spawn(restart_on_signal(
                config.admiral_grace,
                own.clone(),
                inbox_tx.clone(),
            ));
            tasks.push(task.abort_handle());
        }
    }
    if let Some(policy) = config.auto_reshard {
        let task = tokio::spawn(auto_reshard(
            policy,
            ipc.clone(),
            plan.clone(),
            ready.clone(),
            config.timeouts.cluster_ready * 2 + config.timeouts.kill,
        ));
        tasks.push(task.abort_handle());
    }
    let lease_released = host.map(|host| {
        let (released, on_release) = watch::channel(false);
        let (events_tx, mut events_rx) = mpsc::channel(64);
        let checkpoints = config.host_checkpoints.clone().unwrap_or_default();
        tasks.push(tokio::spawn(host.store.run()).abort_handle());
        let agent = host
            .agent
            .run(stopped.clone(), released, events_tx, checkpoints);
        tasks.push(tokio::spawn(agent).abort_handle());
        let inbox = inbox_tx.clone();
        let forward = tokio::spawn(async move {
            while let Some(event) = events_rx.recv().await {
                if inbox.send(router::inbox::Inbox::Host(event)).await.is_err() {
                    break;
                }
            }
        });
        tasks.push(forward.abort_handle());
        on_release
    });
    let http_url = http.as_ref().map(|(_, bound)| http::url(*bound));
    if let Some((listener, bound)) = http {
        tracing::info!(target: "fleet::http", url = %http::url(bound), "status page at /, metrics at /metrics, health at /health");
        let task = tokio::spawn(http::serve(
            listener,
            ipc.clone(),
            inbox_tx.clone(),
            events.clone(),
            config.stats_interval,
            stopped.clone(),
        ));
        tasks.push(task.abort_handle());
    }
    let socket_path = dir.join(SOCKET_FILE);
    let cleanup = DirGuard(dir);
    // The router and every connection run on a thread of their own: a frame's way from a
    // reader task to the router and on to an outbox wakes no other thread.
    let (run_tx, run) = oneshot::channel();
    let inbox = inbox_tx.clone();
    let max_frame = config.max_frame;
    // The admiral lives as long as the runtime it was started on, as a task of it would.
    let (alive_tx, alive) = oneshot::channel::<()>();
    let keepalive = tokio::spawn(async move {
        let _alive = alive_tx;
        std::future::pending::<()>().await;
    });
    tasks.push(keepalive.abort_handle());
    std::thread::Builder::new()
        .name("fleet-admiral".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(error) => {
                    tracing::error!(target: "fleet::admiral", %error, "cannot start the admiral's runtime");
                    return;
                }
            };
            runtime.block_on(async move {
                let listener = match tokio::net::UnixListener::from_std(listener) {
                    Ok(listener) => listener,
                    Err(error) => {
                        tracing::error!(target: "fleet::admiral", %error, "cannot listen for workers");
                        return;
                    }
                };
                let accept = tokio::spawn(admission::accept(listener, inbox, max_frame));
                let mut routing = tokio::spawn(router.run(inbox_rx, local_rx));
                let _ = run_tx.send(routing.abort_handle());
                tokio::select! {
                    _ = &mut routing => {}
                    _ = alive => {
                        routing.abort();
                        let _ = routing.await;
                    }
                }
                accept.abort();
                drop(cleanup);
                let _ = stopped_tx.send(true);
            });
        })
        .map_err(|source| AdmiralError::Ipc {
            path: socket_path.clone(),
            source,
        })?;
    let run = run.await.map_err(|_| AdmiralError::Stopped)?;
    Ok(AdmiralHandle {
        ipc,
        inbox: inbox_tx,
        events,
        first_events: Mutex::new(Some(first)),
        ready,
        stopped,
        plan,
        proxy: config.rest_proxy.as_ref().map(RestProxy::stats_handle),
        proxy_url: config.rest_proxy.as_ref().map(RestProxy::url),
        proxy_key: config.rest_proxy.as_ref().map(|p| p.admit("admiral")),
        socket: socket_path,
        http_url,
        services: config.services.len(),
        grace: config.admiral_grace,
        own: own.clone(),
        lease_released,
        restart_timeout: config
            .timeouts
            .cluster_ready
            .max(config.timeouts.service_ready)
            + config.timeouts.kill,
        tasks: {
            tasks.push(run);
            tasks
        },
    })
}

/// Counts guilds every `policy.check_every` and reshards when they outgrow the shards.
async fn auto_reshard(
    policy: AutoReshard,
    ipc: Ipc,
    plan: watch::Receiver<ShardPlan>,
    mut ready: watch::Receiver<Option<(usize, usize)>>,
    timeout: Duration,
) {
    // Not before the launch is over.
    if ready.wait_for(Option::is_some).await.is_err() {
        return;
    }
    let mut every = tokio::time::interval(policy.check_every);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    every.tick().await;
    loop {
        every.tick().await;
        let (shards, max_concurrency, here) = {
            let plan = plan.borrow();
            (plan.shard_total, plan.max_concurrency, plan.shard_count())
        };
        let guilds = match ipc.guild_count().await {
            Ok((guilds, missing)) if missing.is_empty() => guilds,
            // A partial count would under-count: wait for a full one.
            Ok(_) => continue,
            Err(IpcError::Disconnected) => return,
            Err(error) => {
                tracing::warn!(target: "fleet::admiral", %error, "could not count guilds");
                continue;
            }
        };
        // On a bot split over machines this host counts only its own shards' guilds: judge the
        // whole bot by them.
        let guilds = guilds * u64::from(shards) / u64::from(here.max(1));
        let Some(wanted) = policy.wanted(guilds, shards, max_concurrency) else {
            continue;
        };
        tracing::info!(target: "fleet::admiral", guilds, shards, wanted, "guilds outgrew the shards; resharding");
        match ipc.reshard(ShardCount::Exact(wanted), None, timeout).await {
            Ok(()) => {}
            Err(IpcError::Disconnected) => return,
            Err(error) => {
                tracing::warn!(target: "fleet::admiral", %error, "automatic reshard failed");
            }
        }
    }
}

/// Deploys `plan` on every SIGUSR2, one at a time.
async fn deploy_on_signal(ipc: Ipc, plan: crate::ipc::proto::DeployPlan) {
    let Ok(mut usr2) =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined2())
    else {
        return;
    };
    while usr2.recv().await.is_some() {
        tracing::info!(target: "fleet::restart", program = %plan.program.display(), "SIGUSR2: deploying");
        match ipc
            .deploy(plan.clone(), crate::ipc::proto::MAX_TIMEOUT)
            .await
        {
            // The router logs and publishes how it went.
            Ok(_) => {}
            Err(IpcError::Disconnected) => return,
            Err(error) => {
                tracing::error!(target: "fleet::restart", %error, "SIGUSR2: deploy refused");
            }
        }
    }
}

/// Resolves with the name of the first SIGINT or SIGTERM.
async fn shutdown_signal() -> &'static str {
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        () = async {
            match terminate.as_mut() {
                Some(term) => { term.recv().await; }
                None => std::future::pending::<()>().await,
            }
        } => "SIGTERM",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_reshard_waits_for_the_threshold_and_rounds_to_the_buckets() {
        let policy = AutoReshard {
            max_guilds_per_shard: 2000,
            target_guilds_per_shard: 1000,
            check_every: Duration::from_mins(1),
        };
        assert_eq!(policy.wanted(16_000, 8, 1), None, "2000 per shard is fine");
        assert_eq!(policy.wanted(16_008, 8, 1), Some(17));
        assert_eq!(
            policy.wanted(16_008, 8, 16),
            Some(32),
            "a multiple of max_concurrency"
        );
        assert_eq!(policy.wanted(5_000, 0, 1), Some(5), "no shards yet");
        let odd = AutoReshard {
            target_guilds_per_shard: 0,
            ..policy
        };
        assert_eq!(
            odd.wanted(2_001, 1, 1),
            Some(2_001),
            "a zero target counts as one"
        );
    }
}
