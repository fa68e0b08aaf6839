//! The admiral's worker lifecycle, sans I/O: every worker's state in one place, moved by
//! [`Input`]s (a hello, a ready report, an exit) and answering with [`Command`]s (spawn, stop,
//! kill, emit an event) that the admiral carries out. Its deadlines are its own, in the style of
//! quinn-proto: [`Lifecycle::poll_timeout`] says when the next one passes and
//! [`Lifecycle::handle_timeout`] handles what is due, so the router keeps no copy of them.
//!
//! Launch: services first, each as soon as the services it depends on ([`ServiceSpec`]) are
//! live; each must report ready or fail within its own timeout, and a service whose dependency
//! failed fails too. Then the clusters, all at once (the identify queue paces their shards). A
//! failure never stalls the launch: the worker is marked failed, routing answers "unavailable"
//! for it, and an event says so. A service added later ([`Input::AddService`]) starts the same
//! way. Shutdown: clusters drain first, then services, each only once nothing that depends on it
//! runs; each is killed if it outlives its grace period.
//!
//! Crash recovery: a worker that exits unexpectedly, fails to start or times out waits in
//! [`State::Backoff`] and is started again after an exponential backoff, up to
//! [`RestartPolicy::max_restarts`] restarts within [`RestartPolicy::window`]; past that it is
//! failed for good. A crash during the launch is recovered the same way, and the launch waits for
//! it. A cluster process checkpoints its shards' sessions as it serves ([`Input::Checkpoint`]);
//! when it crashes, its last checkpoints become the worker's [`Worker::resume`], and the next
//! process resumes those sessions instead of identifying (a requested stop or a hard restart
//! leaves nothing to resume). Such a worker's first restart within the window is not delayed:
//! its shards are without a session until it is back.
//!
//! Each worker incarnation has its own [`ProcessId`], so an old process and its replacement of the
//! same worker can coexist. A requested restart ([`Input::Restart`]) uses that:
//! - [`RestartMode::Handover`]: the replacement starts its user code and says it is prepared;
//!   then the old process hands its gateway sessions over ([`Command::RequestSessions`]) and the
//!   replacement resumes them. Once the replacement is ready it takes the traffic and the old
//!   process drains.
//! - [`RestartMode::Overlap`]: the replacement connects fresh sessions beside the old one; once it
//!   is ready it takes the traffic and the old one drains.
//! - [`RestartMode::Hard`]: the old process is killed first, then the worker starts afresh.
//!
//! Until the swap, the old process keeps serving. If the replacement fails, it is killed and the
//! old process stays (after a handover it is given its sessions back, [`Command::SendSessions`]).
//!
//! The sessions of a handover pass through here ([`Input::SessionsHandedOver`], then
//! [`Command::SendSessions`]), so one state machine knows every step of it ([`Step`]).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use crate::ipc::proto::RestartMode;
use crate::ipc::proto::{ShardSession, Target};

/// Number of one worker process incarnation, unique within a fleet run.
pub type ProcessId = u64;

/// A worker the admiral supervises: a cluster by id or a service by name. Unlike a [`Target`],
/// it can never be the admiral itself, so the lifecycle needs no case for it;
/// [`WorkerId::target`] gives the address of one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum WorkerId {
    /// A cluster.
    Cluster(u32),
    /// A service.
    Service(String),
}

impl WorkerId {
    /// The IPC target of this worker.
    #[must_use]
    pub fn target(&self) -> Target {
        match self {
            Self::Cluster(id) => Target::Cluster(*id),
            Self::Service(name) => Target::Service(name.clone()),
        }
    }
}

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cluster(id) => write!(f, "cluster-{id}"),
            Self::Service(name) => write!(f, "service-{name}"),
        }
    }
}

/// Where a worker is in its life.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum State {
    /// Not spawned yet (waiting for its launch phase).
    Pending,
    /// Process spawned; waiting for its IPC hello.
    Spawned,
    /// Connected and assigned; starting (a service initialising, a cluster's shards connecting).
    Starting,
    /// Ready and serving.
    Live,
    /// Crashed; waiting to be started again.
    Backoff,
    /// Asked to stop; waiting for the process to exit.
    Draining,
    /// Exited after a requested stop.
    Stopped,
    /// Failed to start, crashed, or timed out; unavailable.
    Failed(String),
}

impl State {
    /// Whether the worker is done (stopped or failed).
    #[must_use]
    pub fn is_terminal(&self) -> bool {
        matches!(self, Self::Stopped | Self::Failed(_))
    }
}

/// A replacement process on its way in.
#[allow(
    clippy::struct_excessive_bools,
    reason = "independent facts of one replacement, each set once and read by the next step"
)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replacement {
    /// Its process.
    pub process: ProcessId,
    /// How it replaces the current one.
    pub mode: RestartMode,
    /// How far it has come.
    pub step: Step,
    /// Part of a new generation (a reshard): it connects in standby and goes live only with
    /// the whole generation.
    pub generation: bool,
}

/// How far a replacement has come.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Spawned; neither prepared (handover) nor ready yet.
    Starting,
    /// The old process has been warned and serves out its notice. `ready`: the replacement is
    /// ready and takes over when the notice ends (overlap); otherwise the old process is asked
    /// for its sessions then (handover).
    Notice {
        /// Whether the replacement is ready.
        ready: bool,
    },
    /// The old process was asked to hand its sessions over; `sessions` once it has, kept until
    /// the replacement serves (they go back to the old process if it fails).
    HandingOver {
        /// What the old process handed over.
        sessions: Option<Vec<ShardSession>>,
    },
    /// Ready in standby (a new generation's member), waiting for the rest of its generation.
    Ready,
}

/// What a connecting process is to its worker ([`Lifecycle::admit`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// The worker's own process, just spawned.
    Current,
    /// A replacement being started beside the current process.
    Replacement {
        /// It resumes sessions handed over by the old process.
        handover: bool,
        /// It belongs to a new generation and connects in standby.
        standby: bool,
    },
}

/// A worker and its current process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Worker {
    /// Which worker.
    pub id: WorkerId,
    /// Its state.
    pub state: State,
    /// Its current process, once spawned.
    pub process: Option<ProcessId>,
    /// A replacement being started by a requested restart or a reshard.
    pub replacement: Option<Replacement>,
    /// Left out of the plan by a reshard: it drains and leaves the fleet.
    pub retired: bool,
    /// The sessions its crashed process left (its last checkpoints), for the next process to
    /// resume ([`Lifecycle::take_resume`]).
    pub resume: Vec<ShardSession>,
}

impl Worker {
    /// A worker not spawned yet.
    fn pending(id: WorkerId) -> Self {
        Self {
            id,
            state: State::Pending,
            process: None,
            replacement: None,
            retired: false,
            resume: Vec::new(),
        }
    }
}

/// Something that happened to a worker process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// Start launching.
    Launch,
    /// Before the launch: take over a process a lost admiral had started for `worker`, which
    /// outlived it and came back (check [`Lifecycle::can_adopt`] first). It is live at once if
    /// it had reported ready, or starting (within its start timeout) if not; the launch spawns
    /// only the workers nobody adopted.
    Adopt {
        /// The worker it serves.
        worker: WorkerId,
        /// Its process number, as the lost admiral gave it.
        process: ProcessId,
        /// It had reported ready.
        ready: bool,
    },
    /// The process could not be spawned.
    SpawnFailed(ProcessId, String),
    /// The process proved itself over IPC.
    Hello(ProcessId),
    /// The process reported ready.
    Ready(ProcessId),
    /// The process reported that it could not start.
    StartFailed(ProcessId, String),
    /// The process did not become ready in time.
    StartTimedOut(ProcessId),
    /// The process exited (with its code, if it had one).
    Exited(ProcessId, Option<i32>),
    /// Shut everything down.
    Shutdown,
    /// A draining process outlived its grace period.
    KillTimedOut(ProcessId),
    /// A worker's restart backoff is over.
    RestartDue(WorkerId),
    /// Restart a worker (check [`Lifecycle::can_restart`] first).
    Restart(WorkerId, RestartMode),
    /// A handover replacement started its user code and waits for the sessions.
    Prepared(ProcessId),
    /// The soft-kill notice of a worker's old process is over.
    NoticeOver(WorkerId),
    /// Stop one worker gracefully (check [`Lifecycle::can_stop`] first); it stays stopped until
    /// a hard restart starts it again.
    Stop(WorkerId),
    /// As [`Input::Stop`], but kill its process now: no shutdown hook, no grace.
    StopNow(WorkerId),
    /// As [`Input::Stop`], killing its process if it outlives this grace (at most the kill
    /// timeout): a fenced host stops a service run once per bot before its lease can lapse.
    StopWithin(WorkerId, Duration),
    /// Add a service (check [`Lifecycle::can_add_service`] first): it starts once its
    /// dependencies are live, and is supervised, restarted and stopped like the others.
    AddService(ServiceSpec),
    /// Start a new generation of clusters with these ids (check [`Lifecycle::can_reshard`]):
    /// each connects in standby; once all are ready they go live together and the old
    /// generation (clusters not in the list included) drains.
    Reshard(Vec<u32>),
    /// As [`Input::Reshard`], for one host's part of a bot split across hosts: once all are
    /// ready the generation waits for [`Input::GoLive`] (every host's part is ready).
    ReshardTogether(Vec<u32>),
    /// The held generation goes live with the switch time `at_ms` (milliseconds since the Unix
    /// epoch, chosen for every host of the bot), `ahead` from now. The old generation's notice
    /// and its deactivation count from the switch time, so it handles every event created
    /// before it. Ignored unless a held generation is all ready.
    GoLive {
        /// The switch time.
        at_ms: u64,
        /// How far ahead of now it is.
        ahead: Duration,
    },
    /// The reshard under way is called off: its generation stops, the old one stays.
    AbortReshard(String),
    /// The old generation's notice is over: it drains now.
    DrainDue,
    /// The new generation has been live for [`SWITCH_GUARD`]: the old one stops handling events.
    DeactivateDue,
    /// A process handed over the sessions of its shards (closed resumably), as asked by
    /// [`Command::RequestSessions`]; empty if it could not.
    SessionsHandedOver(ProcessId, Vec<ShardSession>),
    /// A cluster process's checkpoint of its shards' sessions (checked by the router: its own
    /// shards only). An empty session id forgets that shard's session; an empty state keeps
    /// the one the same session had.
    Checkpoint(ProcessId, Vec<ShardSession>),
    /// On several hosts: this host was given cluster `cluster` (a range of the bot's shards) and
    /// starts it, resuming `resume` (the last owner's checkpoints). Ignored when it already runs
    /// the cluster or the fleet is stopping.
    Take {
        /// The cluster.
        cluster: u32,
        /// The sessions its first process resumes.
        resume: Vec<ShardSession>,
    },
    /// On several hosts: this host's lease may lapse. Every serving cluster closes its shards
    /// resumably and hands the sessions here, where they are held; no cluster starts, restarts
    /// or reshards until [`Input::Unfence`].
    Fence,
    /// The lease holds again: each fenced cluster gets its sessions back and resumes them.
    Unfence,
    /// On several hosts: cluster `cluster` is another host's now. It stops, and leaves this
    /// host's fleet; the sessions it held are not resumed here.
    Lose(u32),
}

/// What the admiral must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Spawn a process for a worker.
    Spawn {
        /// The worker.
        worker: WorkerId,
        /// The process number to give it.
        process: ProcessId,
    },
    /// Ask a process to shut down gracefully (it is killed if it outlives `grace`).
    Stop {
        /// The process.
        process: ProcessId,
        /// Grace period.
        grace: Duration,
    },
    /// Kill a process.
    Kill(ProcessId),
    /// Ask `from` to close its shards resumably and hand their sessions over, for `to`
    /// ([`Input::SessionsHandedOver`] once it has).
    RequestSessions {
        /// The old process.
        from: ProcessId,
        /// The replacement.
        to: ProcessId,
    },
    /// Give a process sessions to resume: the replacement those handed over to it (empty:
    /// identify afresh), or the old process its own back after the replacement failed.
    SendSessions {
        /// The process.
        to: ProcessId,
        /// The sessions.
        sessions: Vec<ShardSession>,
    },
    /// A reshard's switch, just before the new generation goes live: both generations learn
    /// the moment that splits the events that create something between them (the admiral sets
    /// it [`SWITCH_GUARD`] / 2 from now).
    Switch {
        /// The old generation's live processes.
        old: Vec<ProcessId>,
        /// The new generation's processes.
        new: Vec<ProcessId>,
        /// The switch time every host of the bot agreed on, if it is split across hosts.
        at_ms: Option<u64>,
    },
    /// A process of the new generation goes live: its user code starts receiving events.
    Activate(ProcessId),
    /// A process of the old generation, once the new one has been live for [`SWITCH_GUARD`]:
    /// its user code receives no more events (its shards stay connected until it is stopped).
    Deactivate(ProcessId),
    /// Tell the user.
    Emit(LifecycleEvent),
}

/// Lifecycle events for the admiral's event stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum LifecycleEvent {
    /// A worker became ready.
    Ready(WorkerId),
    /// A worker failed; routing answers "unavailable" for it.
    Failed {
        /// Which worker.
        worker: WorkerId,
        /// Why.
        reason: String,
    },
    /// A worker crashed and will be started again after a backoff.
    Restarting {
        /// Which worker.
        worker: WorkerId,
        /// Restarts within the window, this one included.
        attempt: u32,
        /// The backoff before it starts again.
        after: Duration,
        /// Why it is restarted.
        reason: String,
    },
    /// A worker stopped after a requested stop (or a shutdown) and its process exited.
    WorkerStopped(WorkerId),
    /// A requested restart began: a replacement process is starting.
    RestartPending {
        /// Which worker.
        worker: WorkerId,
        /// How.
        mode: RestartMode,
    },
    /// The old process of a worker being restarted goes when `notice` is over: before its
    /// sessions are handed over, or (overlap) before it is stopped. The old process is sent the
    /// same news as the IPC event [`SOFT_KILL_EVENT`](crate::admiral::SOFT_KILL_EVENT).
    SoftKillPending {
        /// Which worker.
        worker: WorkerId,
        /// Its old process.
        process: ProcessId,
        /// How long it has.
        notice: Duration,
    },
    /// The replacement is ready and took over; the old process drains.
    Replaced {
        /// Which worker.
        worker: WorkerId,
        /// The old process.
        old: ProcessId,
        /// The process serving now.
        new: ProcessId,
    },
    /// A requested restart failed; the old process still serves (unless it was a hard restart).
    RestartFailed {
        /// Which worker.
        worker: WorkerId,
        /// Why.
        reason: String,
    },
    /// A cluster of the new generation is ready in standby.
    ReshardProgress {
        /// Clusters of the new generation ready.
        ready: usize,
        /// Clusters in the new generation.
        total: usize,
    },
    /// The new generation is live; the old one drains.
    Resharded {
        /// Clusters of the new generation.
        clusters: usize,
    },
    /// The reshard failed; the old generation still serves and the new one is stopped.
    ReshardFailed {
        /// Why.
        reason: String,
    },
    /// Every service has started or failed; clusters launch next.
    ServicesLaunched,
    /// Every worker has started or failed.
    AllReady {
        /// Workers live.
        live: usize,
        /// Workers failed.
        failed: usize,
    },
    /// Every process has exited after a shutdown.
    Stopped,
}

/// A service: its name, the kind of service it runs (the name its type was registered under),
/// the services it starts after, and its own start timeout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    /// Its name: the worker's address.
    pub name: String,
    /// The registered service type it runs.
    pub kind: String,
    /// Services that must be live before it starts.
    pub depends_on: Vec<String>,
    /// How long it has to become ready; `None`: [`Timeouts::service_ready`].
    pub start_timeout: Option<Duration>,
    /// On a bot split across hosts, it runs on one host only, the one Redis assigns it to
    /// (another takes it over when that host dies); on one host it runs as any other.
    pub once_per_bot: bool,
}

impl ServiceSpec {
    /// A service of kind `name`, named the same, with no dependencies and the default timeout.
    #[must_use]
    pub fn named(name: impl Into<String>) -> Self {
        let name = name.into();
        Self {
            kind: name.clone(),
            name,
            depends_on: Vec::new(),
            start_timeout: None,
            once_per_bot: false,
        }
    }
}

/// How long after a reshard's new generation goes live the old one stops handing events to user
/// code: long enough that an event the two generations' sessions receive at slightly different
/// times is handled by at least one of them.
pub const SWITCH_GUARD: Duration = Duration::from_millis(250);

/// The largest process number an adopted process may bring: a fleet numbers its processes from
/// 1 up, and a number past this one (from a hostile peer) would leave no room for the next.
pub const MAX_ADOPTED_PROCESS: ProcessId = 1 << 48;

/// Services a fleet may hold at most, declared and created together.
pub const MAX_SERVICES: usize = 256;

impl ServiceSpec {
    /// Whether `name` may name a service: 1 to 64 ASCII letters, digits, `-`, `_` or `.` (it
    /// becomes an address, a log tag and a metric label).
    pub fn check_name(name: &str) -> Result<(), String> {
        let fits = (1..=64).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if fits {
            Ok(())
        } else {
            Err(format!(
                "{name:?} is not a service name (1 to 64 ASCII letters, digits, '-', '_' or '.')"
            ))
        }
    }

    /// Whether these services can launch together: each name valid, every dependency one of
    /// them, and no service depending on itself, directly or through others.
    pub fn check_all(specs: &[Self]) -> Result<(), String> {
        if specs.len() > MAX_SERVICES {
            return Err(format!("more than {MAX_SERVICES} services"));
        }
        let timeouts = Timeouts {
            service_ready: Duration::ZERO,
            cluster_ready: Duration::ZERO,
            kill: Duration::ZERO,
        };
        let all = Lifecycle::new(specs.iter().cloned(), [], timeouts);
        for spec in specs {
            Self::check_name(&spec.name)?;
            for dependency in &spec.depends_on {
                if all.service(dependency).is_none() {
                    return Err(format!(
                        "service {:?} depends on {dependency:?}, which is not declared",
                        spec.name
                    ));
                }
                if dependency == &spec.name || all.depends_on(dependency, &spec.name) {
                    return Err(format!(
                        "service {:?} depends on itself through {dependency:?}",
                        spec.name
                    ));
                }
                // On several hosts it would wait on the hosts that do not run the other.
                if !spec.once_per_bot && all.service(dependency).is_some_and(|d| d.once_per_bot) {
                    return Err(format!(
                        "service {:?} runs on every host but depends on {dependency:?}, which runs once per bot",
                        spec.name
                    ));
                }
            }
        }
        Ok(())
    }
}

impl From<String> for ServiceSpec {
    fn from(name: String) -> Self {
        Self::named(name)
    }
}

/// Timeouts the lifecycle applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// A service must be ready within this.
    pub service_ready: Duration,
    /// A cluster must be ready within this.
    pub cluster_ready: Duration,
    /// A stopping worker is killed after this.
    pub kill: Duration,
}

/// How crashed workers are restarted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartPolicy {
    /// Restarts allowed within [`window`](Self::window); 0 never restarts.
    pub max_restarts: u32,
    /// The window restarts are counted in.
    pub window: Duration,
    /// The first backoff; each further restart within the window doubles it.
    pub backoff: Duration,
    /// The longest backoff.
    pub max_backoff: Duration,
}

impl RestartPolicy {
    /// Never restart: a crash fails the worker.
    pub const NEVER: Self = Self {
        max_restarts: 0,
        window: Duration::ZERO,
        backoff: Duration::ZERO,
        max_backoff: Duration::ZERO,
    };

    /// The backoff before restart number `attempt` (1-based) within the window.
    #[must_use]
    pub fn backoff_for(&self, attempt: u32) -> Duration {
        let doubled = self.backoff.saturating_mul(
            1u32.checked_shl(attempt.saturating_sub(1))
                .unwrap_or(u32::MAX),
        );
        doubled.min(self.max_backoff)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Idle,
    Services,
    Clusters,
    Running,
    StoppingClusters,
    StoppingServices,
    Stopped,
}

/// A deadline the lifecycle keeps for itself; when it passes, the matching [`Input`] is fed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Timeout {
    /// [`Input::StartTimedOut`].
    Start(ProcessId),
    /// [`Input::KillTimedOut`].
    Kill(ProcessId),
    /// [`Input::RestartDue`].
    Restart(WorkerId),
    /// [`Input::NoticeOver`].
    Notice(WorkerId),
    /// [`Input::DrainDue`].
    Drain,
    /// [`Input::DeactivateDue`].
    Deactivate,
}

impl Timeout {
    fn input(self) -> Input {
        match self {
            Self::Start(process) => Input::StartTimedOut(process),
            Self::Kill(process) => Input::KillTimedOut(process),
            Self::Restart(worker) => Input::RestartDue(worker),
            Self::Notice(worker) => Input::NoticeOver(worker),
            Self::Drain => Input::DrainDue,
            Self::Deactivate => Input::DeactivateDue,
        }
    }
}

/// Why nothing restarts on a fenced host.
const FENCED: &str = "this host is fenced: its lease in Redis may have lapsed";

/// The lifecycle of every worker of a fleet.
#[derive(Debug)]
pub struct Lifecycle {
    workers: BTreeMap<WorkerId, Worker>,
    /// Every service's spec, by name.
    services: BTreeMap<String, ServiceSpec>,
    processes: BTreeMap<ProcessId, WorkerId>,
    next_process: ProcessId,
    phase: Phase,
    timeouts: Timeouts,
    restart: RestartPolicy,
    now: Duration,
    restarts: BTreeMap<WorkerId, std::collections::VecDeque<Duration>>,
    notice: Duration,
    /// Clusters the reshard under way leaves out.
    retiring: Vec<WorkerId>,
    /// Deadlines by time (since the fleet started), in the order they were set.
    timers: std::collections::BTreeSet<(Duration, u64, Timeout)>,
    timer_seq: u64,
    /// Each serving cluster process's last checkpointed sessions, by shard: what its
    /// replacement resumes if it crashes.
    checkpoints: BTreeMap<ProcessId, BTreeMap<u32, ShardSession>>,
    /// Fenced ([`Input::Fence`]): this host's lease in Redis may have lapsed.
    fenced: bool,
    /// The sessions each fenced cluster process handed over, until [`Input::Unfence`].
    held: BTreeMap<ProcessId, Vec<ShardSession>>,
    /// Workers whose restart came due while fenced: they start at [`Input::Unfence`].
    deferred: std::collections::BTreeSet<WorkerId>,
    /// The new generation waits for [`Input::GoLive`] once it is ready.
    held_switch: bool,
}

impl Lifecycle {
    /// A fleet of these services and clusters, not launched yet.
    pub fn new(
        services: impl IntoIterator<Item = impl Into<ServiceSpec>>,
        clusters: impl IntoIterator<Item = u32>,
        timeouts: Timeouts,
    ) -> Self {
        let services: BTreeMap<String, ServiceSpec> = services
            .into_iter()
            .map(|s| {
                let spec = s.into();
                (spec.name.clone(), spec)
            })
            .collect();
        let workers = services
            .keys()
            .cloned()
            .map(WorkerId::Service)
            .chain(clusters.into_iter().map(WorkerId::Cluster))
            .map(|id| (id.clone(), Worker::pending(id)))
            .collect();
        Self {
            workers,
            services,
            processes: BTreeMap::new(),
            next_process: 1,
            phase: Phase::Idle,
            timeouts,
            restart: RestartPolicy::NEVER,
            now: Duration::ZERO,
            restarts: BTreeMap::new(),
            notice: Duration::ZERO,
            retiring: Vec::new(),
            timers: std::collections::BTreeSet::new(),
            timer_seq: 0,
            checkpoints: BTreeMap::new(),
            fenced: false,
            held: BTreeMap::new(),
            deferred: std::collections::BTreeSet::new(),
            held_switch: false,
        }
    }

    /// Warns a worker's old process this long before a requested restart takes it away (zero,
    /// the default, warns nobody).
    #[must_use]
    pub fn with_soft_kill_notice(mut self, notice: Duration) -> Self {
        self.notice = notice;
        self
    }

    /// Restarts crashed workers by this policy (the default never restarts).
    #[must_use]
    pub fn with_restarts(mut self, policy: RestartPolicy) -> Self {
        self.restart = policy;
        self
    }

    /// Sets the time (since the fleet started) for the inputs that follow; restarts are counted
    /// within a window of it, and deadlines set from it.
    pub fn advance_clock(&mut self, now: Duration) {
        self.now = self.now.max(now);
    }

    /// When the next deadline passes (time since the fleet started), if one is set: call
    /// [`handle_timeout`](Self::handle_timeout) then.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Duration> {
        self.timers.first().map(|(at, _, _)| *at)
    }

    /// Moves the clock to `now` and handles every deadline that has passed (a start that took
    /// too long, a grace period outlived, a backoff or a notice over), in order.
    pub fn handle_timeout(&mut self, now: Duration) -> Vec<Command> {
        self.advance_clock(now);
        let mut out = Vec::new();
        while self
            .timers
            .first()
            .is_some_and(|(at, _, _)| *at <= self.now)
        {
            if let Some((_, _, timeout)) = self.timers.pop_first() {
                out.extend(self.handle(timeout.input()));
            }
        }
        out
    }

    /// Sets a deadline `after` from now (at most [`MAX_TIMEOUT`](crate::ipc::proto::MAX_TIMEOUT)
    /// away: durations come from options).
    fn arm(&mut self, timeout: Timeout, after: Duration) {
        let at = self.now + after.min(crate::ipc::proto::MAX_TIMEOUT);
        self.timer_seq += 1;
        self.timers.insert((at, self.timer_seq, timeout));
    }

    /// A worker's state.
    #[must_use]
    pub fn worker(&self, id: &WorkerId) -> Option<&Worker> {
        self.workers.get(id)
    }

    /// A service's spec.
    #[must_use]
    pub fn service(&self, name: &str) -> Option<&ServiceSpec> {
        self.services.get(name)
    }

    /// Whether `spec` can be added now ([`Input::AddService`]): the fleet not shutting down, its
    /// name not taken by a worker that runs or may run again (a stopped or failed one may be
    /// replaced), and every service it depends on known, none of them depending on it.
    pub fn can_add_service(&self, spec: &ServiceSpec) -> Result<(), String> {
        if self.stopping() {
            return Err("the fleet is shutting down".to_owned());
        }
        let id = WorkerId::Service(spec.name.clone());
        if let Some(worker) = self.workers.get(&id)
            && !(worker.state.is_terminal() && worker.replacement.is_none())
        {
            return Err(format!("{id} already exists ({:?})", worker.state));
        }
        for dependency in &spec.depends_on {
            if !self.services.contains_key(dependency) {
                return Err(format!(
                    "it depends on service {dependency:?}, which does not exist"
                ));
            }
            if self.depends_on(dependency, &spec.name) {
                return Err(format!(
                    "it depends on service {dependency:?}, which depends on it"
                ));
            }
        }
        Ok(())
    }

    /// Whether service `name` depends on service `on`, directly or not.
    fn depends_on(&self, name: &str, on: &str) -> bool {
        let mut seen = std::collections::BTreeSet::new();
        let mut todo = vec![name];
        while let Some(next) = todo.pop() {
            if !seen.insert(next) {
                continue;
            }
            for dependency in self.services.get(next).map_or(&[][..], |s| &s.depends_on) {
                if dependency == on {
                    return true;
                }
                todo.push(dependency);
            }
        }
        false
    }

    /// How long a process of `id` has to become ready.
    fn start_timeout(&self, id: &WorkerId) -> Duration {
        match id {
            WorkerId::Cluster(_) => self.timeouts.cluster_ready,
            WorkerId::Service(name) => self
                .services
                .get(name)
                .and_then(|s| s.start_timeout)
                .unwrap_or(self.timeouts.service_ready),
        }
    }

    /// Every worker.
    pub fn workers(&self) -> impl Iterator<Item = &Worker> {
        self.workers.values()
    }

    /// The worker a process belongs to (any incarnation).
    #[must_use]
    pub fn worker_of(&self, process: ProcessId) -> Option<&WorkerId> {
        self.processes.get(&process)
    }

    /// The process that serves a worker's traffic now: its current process, once live.
    #[must_use]
    pub fn live_process(&self, id: &WorkerId) -> Option<ProcessId> {
        self.workers
            .get(id)
            .filter(|w| w.state == State::Live)
            .and_then(|w| w.process)
    }

    /// The worker a process is the replacement of, if it is one.
    #[must_use]
    pub fn replacing(&self, process: ProcessId) -> Option<&Worker> {
        let id = self.processes.get(&process)?;
        self.workers
            .get(id)
            .filter(|w| w.replacement.as_ref().is_some_and(|r| r.process == process))
    }

    /// Whether a reshard can start now: the fleet running, every cluster live, no restart or
    /// reshard under way.
    pub fn can_reshard(&self) -> Result<(), String> {
        if self.fenced {
            return Err(FENCED.to_owned());
        }
        if self.phase != Phase::Running {
            return Err("the fleet is not running (launching or shutting down)".to_owned());
        }
        for worker in self.workers.values() {
            if worker.replacement.is_some() {
                return Err(format!("{} is being restarted or resharded", worker.id));
            }
            if matches!(worker.id, WorkerId::Cluster(_)) && worker.state != State::Live {
                return Err(format!("{} is not live ({:?})", worker.id, worker.state));
            }
        }
        Ok(())
    }

    /// Whether `id` can be restarted now: it must be live, with no restart under way, and the
    /// fleet not shutting down.
    pub fn can_soft_restart(&self, id: &WorkerId) -> Result<(), String> {
        let Some(worker) = self.workers.get(id) else {
            return Err(format!("no {id} in this fleet"));
        };
        if self.stopping() {
            return Err("the fleet is shutting down".to_owned());
        }
        if self.fenced {
            return Err(FENCED.to_owned());
        }
        if worker.replacement.is_some() {
            return Err(format!("{id} is already being restarted"));
        }
        if worker.state != State::Live {
            return Err(format!("{id} is not live ({:?})", worker.state));
        }
        Ok(())
    }

    /// Whether `id` can be restarted with `mode` now: soft modes need it live; a hard restart
    /// also starts a stopped or failed worker again.
    pub fn can_restart(&self, id: &WorkerId, mode: RestartMode) -> Result<(), String> {
        let again = self
            .workers
            .get(id)
            .is_some_and(|w| w.state.is_terminal() && w.replacement.is_none());
        if mode == RestartMode::Hard && again && !self.stopping() && !self.fenced {
            return Ok(());
        }
        self.can_soft_restart(id)
    }

    /// Whether `id` can be stopped now: running or waiting to restart, with no restart under
    /// way, and the fleet not shutting down.
    pub fn can_stop(&self, id: &WorkerId) -> Result<(), String> {
        let Some(worker) = self.workers.get(id) else {
            return Err(format!("no {id} in this fleet"));
        };
        if self.stopping() {
            return Err("the fleet is shutting down".to_owned());
        }
        if worker.replacement.is_some() {
            return Err(format!("{id} is being restarted"));
        }
        match worker.state {
            State::Spawned | State::Starting | State::Live | State::Backoff => Ok(()),
            ref other => Err(format!("{id} is not running ({other:?})")),
        }
    }

    /// Whether the fleet is shutting down (or has).
    #[must_use]
    pub fn is_stopping(&self) -> bool {
        self.stopping()
    }

    fn stopping(&self) -> bool {
        matches!(
            self.phase,
            Phase::StoppingClusters | Phase::StoppingServices | Phase::Stopped
        )
    }

    /// Whether the fleet finished shutting down.
    #[must_use]
    pub fn is_stopped(&self) -> bool {
        self.phase == Phase::Stopped
    }

    /// Feeds one input; returns what to do.
    pub fn handle(&mut self, input: Input) -> Vec<Command> {
        let out = self.step(input);
        // Every process asked to stop is killed if it outlives its grace.
        for command in &out {
            if let Command::Stop { process, grace } = command {
                self.arm(Timeout::Kill(*process), *grace);
            }
        }
        out
    }

    fn step(&mut self, input: Input) -> Vec<Command> {
        let mut out = Vec::new();
        match input {
            Input::Launch => {
                if self.phase == Phase::Idle {
                    self.phase = Phase::Services;
                    self.advance(&mut out);
                }
            }
            Input::Adopt {
                worker: id,
                process,
                ready,
            } => {
                if self.can_adopt(&id, process).is_ok() {
                    self.processes.insert(process, id.clone());
                    self.next_process = self.next_process.max(process.saturating_add(1));
                    let worker = self.workers.get_mut(&id).expect("checked by can_adopt");
                    worker.process = Some(process);
                    if ready {
                        worker.state = State::Live;
                        out.push(Command::Emit(LifecycleEvent::Ready(id)));
                    } else {
                        worker.state = State::Starting;
                        let after = self.start_timeout(&id);
                        self.arm(Timeout::Start(process), after);
                    }
                }
            }
            Input::AddService(spec) => {
                if self.can_add_service(&spec).is_ok() {
                    let id = WorkerId::Service(spec.name.clone());
                    self.restarts.remove(&id);
                    self.services.insert(spec.name.clone(), spec);
                    self.workers.insert(id.clone(), Worker::pending(id));
                    self.advance(&mut out);
                }
            }
            Input::Hello(process) if self.replacing(process).is_some() => {}
            Input::Ready(process)
                if self
                    .replacing(process)
                    .and_then(|w| w.replacement.as_ref())
                    .is_some_and(|r| r.generation) =>
            {
                self.generation_ready(process, &mut out);
            }
            Input::Ready(process) if self.replacing(process).is_some() => {
                let notice = self.notice;
                let warn = self
                    .replacing_mut(process)
                    .and_then(|w| w.replacement.as_mut())
                    .filter(|r| !notice.is_zero() && r.step == Step::Starting);
                if let Some(replacement) = warn {
                    // Overlap: the old process is warned, then stopped when the notice is over.
                    replacement.step = Step::Notice { ready: true };
                    self.notify(process, &mut out);
                } else {
                    self.swap(process, &mut out);
                }
            }
            Input::Prepared(process) => {
                let notice = self.notice;
                if let Some(worker) = self.replacing_mut(process)
                    && let Some(replacement) = worker.replacement.as_mut()
                    && replacement.mode == RestartMode::Handover
                    && replacement.step == Step::Starting
                {
                    if notice.is_zero() {
                        self.hand_over(process, &mut out);
                    } else {
                        replacement.step = Step::Notice { ready: false };
                        self.notify(process, &mut out);
                    }
                }
            }
            Input::NoticeOver(id) => {
                let Some(replacement) = self.workers.get(&id).and_then(|w| w.replacement.clone())
                else {
                    return out;
                };
                match replacement.step {
                    Step::Notice { ready: true } => self.swap(replacement.process, &mut out),
                    Step::Notice { ready: false } if replacement.mode == RestartMode::Handover => {
                        self.hand_over(replacement.process, &mut out);
                    }
                    _ => {}
                }
            }
            Input::StartFailed(process, reason) if self.replacing(process).is_some() => {
                self.arm(Timeout::Kill(process), self.timeouts.kill);
                self.replacement_failed(process, format!("failed to start: {reason}"), &mut out);
            }
            Input::StartTimedOut(process) if self.replacing(process).is_some() => {
                out.push(Command::Kill(process));
                self.replacement_failed(process, "not ready in time".to_owned(), &mut out);
            }
            Input::SpawnFailed(process, reason) if self.replacing(process).is_some() => {
                self.replacement_failed(process, format!("could not spawn: {reason}"), &mut out);
            }
            Input::Exited(process, code) if self.replacing(process).is_some() => {
                self.checkpoints.remove(&process);
                let reason = code.map_or_else(
                    || "killed by a signal".to_owned(),
                    |c| format!("exited with code {c}"),
                );
                self.replacement_failed(process, format!("process {reason}"), &mut out);
            }
            Input::SpawnFailed(process, reason) => {
                self.fail(process, format!("could not spawn: {reason}"), &mut out);
            }
            Input::DrainDue => self.finish_generation(&mut out),
            Input::DeactivateDue => self.deactivate_old_generation(&mut out),
            Input::SessionsHandedOver(from, sessions) => {
                // What it checkpointed is the replacement's now.
                self.checkpoints.remove(&from);
                self.sessions_handed_over(from, sessions, &mut out);
            }
            Input::Checkpoint(process, sessions) => self.checkpoint(process, sessions),
            Input::Reshard(clusters) => {
                if self.can_reshard().is_ok() {
                    self.reshard(&clusters, &mut out);
                }
            }
            Input::ReshardTogether(clusters) => {
                if self.can_reshard().is_ok() && !clusters.is_empty() {
                    self.held_switch = true;
                    self.reshard(&clusters, &mut out);
                }
            }
            Input::GoLive { at_ms, ahead } => {
                if self.generation_held() {
                    self.held_switch = false;
                    self.go_live(Some((at_ms, ahead)), &mut out);
                }
            }
            Input::AbortReshard(reason) => {
                if self
                    .workers
                    .values()
                    .any(|w| w.replacement.as_ref().is_some_and(|r| r.generation))
                {
                    self.abort_generation(&reason, &mut out);
                }
            }
            Input::Take { cluster, resume } => self.take(cluster, resume, &mut out),
            Input::Fence => self.fence(&mut out),
            Input::Unfence => self.unfence(&mut out),
            Input::Lose(cluster) => self.lose(cluster, &mut out),
            Input::Restart(id, mode) => {
                if self.can_restart(&id, mode).is_ok() {
                    self.restart(id, mode, &mut out);
                }
            }
            Input::StopNow(id) => {
                if self.can_stop(&id).is_ok()
                    && let Some(worker) = self.workers.get_mut(&id)
                {
                    match worker.process {
                        Some(process) if worker.state != State::Backoff => {
                            worker.state = State::Draining;
                            out.push(Command::Kill(process));
                        }
                        _ => {
                            worker.state = State::Stopped;
                            worker.resume.clear();
                            out.push(Command::Emit(LifecycleEvent::WorkerStopped(id)));
                        }
                    }
                }
            }
            Input::Stop(id) => self.stop_within(id, self.timeouts.kill, &mut out),
            Input::StopWithin(id, grace) => {
                self.stop_within(id, grace.min(self.timeouts.kill), &mut out);
            }
            Input::Hello(process) => {
                if let Some(worker) = self.current_mut(process)
                    && worker.state == State::Spawned
                {
                    worker.state = State::Starting;
                }
            }
            Input::Ready(process) => {
                if let Some(worker) = self.current_mut(process)
                    && matches!(worker.state, State::Spawned | State::Starting)
                {
                    worker.state = State::Live;
                    out.push(Command::Emit(LifecycleEvent::Ready(worker.id.clone())));
                    self.advance(&mut out);
                }
            }
            Input::StartFailed(process, reason) => {
                if self
                    .current(process)
                    .is_some_and(|w| matches!(w.state, State::Spawned | State::Starting))
                {
                    // It exits by itself; let it, so its last output reaches us.
                    self.arm(Timeout::Kill(process), self.timeouts.kill);
                    self.fail(process, format!("failed to start: {reason}"), &mut out);
                }
            }
            Input::StartTimedOut(process) => {
                if let Some(worker) = self.current(process)
                    && matches!(worker.state, State::Spawned | State::Starting)
                {
                    let limit = self.start_timeout(&worker.id);
                    out.push(Command::Kill(process));
                    self.fail(process, format!("not ready within {limit:?}"), &mut out);
                }
            }
            Input::Exited(process, code) => {
                if let Some(worker) = self.current_mut(process) {
                    if worker.retired {
                        let id = worker.id.clone();
                        self.workers.remove(&id);
                    } else if worker.state == State::Draining {
                        worker.state = State::Stopped;
                        out.push(Command::Emit(LifecycleEvent::WorkerStopped(
                            worker.id.clone(),
                        )));
                        self.advance(&mut out);
                    } else if !worker.state.is_terminal() {
                        let reason = code.map_or_else(
                            || "killed by a signal".to_owned(),
                            |c| format!("exited with code {c}"),
                        );
                        // Its checkpoints become the worker's `resume` there.
                        self.fail(process, format!("process {reason}"), &mut out);
                    }
                }
                // A stop leaves nothing to resume.
                self.checkpoints.remove(&process);
            }
            Input::Shutdown => {
                if !matches!(
                    self.phase,
                    Phase::StoppingClusters | Phase::StoppingServices | Phase::Stopped
                ) {
                    self.phase = Phase::StoppingClusters;
                    self.stop_all(|w| matches!(w, WorkerId::Cluster(_)), &mut out);
                    self.advance(&mut out);
                }
            }
            Input::RestartDue(worker) => {
                let stopping = matches!(
                    self.phase,
                    Phase::StoppingClusters | Phase::StoppingServices | Phase::Stopped
                );
                let backoff = self
                    .workers
                    .get(&worker)
                    .is_some_and(|w| w.state == State::Backoff);
                if !stopping && backoff && self.fenced && matches!(worker, WorkerId::Cluster(_)) {
                    // A cluster connects nothing while this host may not run its shards.
                    self.deferred.insert(worker);
                } else if !stopping && backoff {
                    self.restarts
                        .entry(worker.clone())
                        .or_default()
                        .push_back(self.now);
                    self.spawn_one(worker, &mut out);
                }
            }
            Input::KillTimedOut(process) => {
                let wanted = self.current(process).is_some_and(|w| {
                    matches!(w.state, State::Spawned | State::Starting | State::Live)
                });
                if self.processes.contains_key(&process) && !wanted {
                    out.push(Command::Kill(process));
                }
            }
        }
        out
    }

    /// [`Input::StopWithin`]: stops `id` gracefully, killing it if it outlives `grace`.
    fn stop_within(&mut self, id: WorkerId, grace: Duration, out: &mut Vec<Command>) {
        if self.can_stop(&id).is_err() {
            return;
        }
        let Some(worker) = self.workers.get_mut(&id) else {
            return;
        };
        match (worker.state.clone(), worker.process) {
            (State::Backoff, _) | (_, None) => {
                worker.state = State::Stopped;
                worker.resume.clear();
                out.push(Command::Emit(LifecycleEvent::WorkerStopped(id)));
            }
            (_, Some(process)) => {
                worker.state = State::Draining;
                out.push(Command::Stop { process, grace });
            }
        }
    }

    /// Asks the old process to hand its sessions to the replacement `to`.
    fn hand_over(&mut self, to: ProcessId, out: &mut Vec<Command>) {
        let Some(worker) = self.replacing_mut(to) else {
            return;
        };
        let from = worker.process;
        if let (Some(from), Some(replacement)) = (from, worker.replacement.as_mut()) {
            replacement.step = Step::HandingOver { sessions: None };
            out.push(Command::RequestSessions { from, to });
        }
    }

    /// The old process `from` handed its sessions over: to the replacement that waits for them,
    /// or, when none waits any more (it failed meanwhile), straight back to `from`.
    fn sessions_handed_over(
        &mut self,
        from: ProcessId,
        sessions: Vec<ShardSession>,
        out: &mut Vec<Command>,
    ) {
        let Some(worker) = self
            .processes
            .get(&from)
            .and_then(|id| self.workers.get_mut(id))
        else {
            return;
        };
        if worker.process != Some(from) {
            return; // A process of the past: nobody resumes its sessions.
        }
        match worker.replacement.as_mut() {
            Some(Replacement {
                process,
                step:
                    Step::HandingOver {
                        sessions: held @ None,
                    },
                ..
            }) => {
                *held = Some(sessions.clone());
                out.push(Command::SendSessions {
                    to: *process,
                    sessions,
                });
            }
            Some(_) => {
                tracing::warn!(target: "fleet::lifecycle", process = from, "sessions nobody asked for");
            }
            None if self.fenced => {
                self.held.insert(from, sessions);
            }
            // The range was lost while its sessions were on their way here (fenced, then
            // another host took it): they are that host's now, and the process stops.
            None if worker.retired => {
                tracing::info!(target: "fleet::lifecycle", process = from, "sessions of a range this host lost: dropped");
            }
            None => out.push(Command::SendSessions { to: from, sessions }),
        }
    }

    /// Whether `process` can be adopted for `worker` ([`Input::Adopt`]): only before the launch,
    /// for a worker of this fleet nobody serves yet, under a number no process has here.
    pub fn can_adopt(&self, worker: &WorkerId, process: ProcessId) -> Result<(), &'static str> {
        if self.phase != Phase::Idle {
            return Err("this admiral has launched the fleet without it");
        }
        if process == 0 || process > MAX_ADOPTED_PROCESS {
            return Err("not a process number this fleet gives");
        }
        if self.processes.contains_key(&process) {
            return Err("another process has its number");
        }
        match self.workers.get(worker) {
            None => Err("the fleet has no such worker"),
            Some(w) if w.state != State::Pending => Err("another process serves this worker"),
            Some(_) => Ok(()),
        }
    }

    /// What a process that says hello is to its worker, or why it may not connect (unknown, or
    /// neither the current process of a worker just spawned nor its replacement).
    ///
    /// # Errors
    /// When the process is no current process or replacement of any worker.
    pub fn admit(&self, process: ProcessId) -> Result<(WorkerId, Admission), &'static str> {
        let worker = self
            .processes
            .get(&process)
            .and_then(|id| self.workers.get(id))
            .ok_or("unknown process")?;
        if let Some(r) = worker.replacement.as_ref().filter(|r| r.process == process) {
            let handover = r.mode == RestartMode::Handover;
            let standby = r.generation;
            return Ok((
                worker.id.clone(),
                Admission::Replacement { handover, standby },
            ));
        }
        if worker.process == Some(process) && worker.state == State::Spawned {
            return Ok((worker.id.clone(), Admission::Current));
        }
        Err("stale process")
    }

    /// Warns the old process that it goes in [`Lifecycle::with_soft_kill_notice`]'s time.
    fn notify(&mut self, to: ProcessId, out: &mut Vec<Command>) {
        let notice = self.notice;
        let Some(worker) = self.replacing(to) else {
            return;
        };
        let id = worker.id.clone();
        if let Some(process) = worker.process {
            out.push(Command::Emit(LifecycleEvent::SoftKillPending {
                worker: id.clone(),
                process,
                notice,
            }));
        }
        self.arm(Timeout::Notice(id), notice);
    }

    fn replacing_mut(&mut self, process: ProcessId) -> Option<&mut Worker> {
        let id = self.processes.get(&process)?;
        self.workers
            .get_mut(id)
            .filter(|w| w.replacement.as_ref().is_some_and(|r| r.process == process))
    }

    /// Starts a requested restart of a live worker.
    fn restart(&mut self, id: WorkerId, mode: RestartMode, out: &mut Vec<Command>) {
        out.push(Command::Emit(LifecycleEvent::RestartPending {
            worker: id.clone(),
            mode,
        }));
        if mode == RestartMode::Hard {
            // A hard restart starts afresh: nothing is resumed.
            if let Some(worker) = self.workers.get_mut(&id) {
                worker.resume.clear();
            }
            let old = self.workers.get(&id).and_then(|w| w.process);
            if let Some(old) = old {
                out.push(Command::Kill(old));
            }
            // The old process's exit is no longer the worker's business.
            self.spawn_one(id, out);
            return;
        }
        let (process, after) = self.new_process(&id);
        let mode = if matches!(id, WorkerId::Service(_)) {
            RestartMode::Overlap
        } else {
            mode
        };
        let worker = self
            .workers
            .get_mut(&id)
            .expect("checked by can_soft_restart");
        worker.replacement = Some(Replacement {
            process,
            mode,
            step: Step::Starting,
            generation: false,
        });
        out.push(Command::Spawn {
            worker: id,
            process,
        });
        self.arm(Timeout::Start(process), after);
    }

    /// The replacement is ready: it becomes the worker's process; the old one drains.
    fn swap(&mut self, process: ProcessId, out: &mut Vec<Command>) {
        let grace = self.timeouts.kill;
        let Some(worker) = self.replacing_mut(process) else {
            return;
        };
        worker.replacement = None;
        let old = worker.process.replace(process);
        worker.state = State::Live;
        let id = worker.id.clone();
        if let Some(old) = old {
            out.push(Command::Stop {
                process: old,
                grace,
            });
            out.push(Command::Emit(LifecycleEvent::Replaced {
                worker: id,
                old,
                new: process,
            }));
        }
    }

    /// Starts a new generation: a standby replacement for every cluster id of the new plan.
    fn reshard(&mut self, clusters: &[u32], out: &mut Vec<Command>) {
        self.retiring = self
            .workers
            .keys()
            .filter_map(|id| match id {
                WorkerId::Cluster(c) if !clusters.contains(c) => Some(id.clone()),
                _ => None,
            })
            .collect();
        for &cluster in clusters {
            let id = WorkerId::Cluster(cluster);
            self.workers
                .entry(id.clone())
                .or_insert_with(|| Worker::pending(id.clone()));
            let (process, after) = self.new_process(&id);
            let worker = self.workers.get_mut(&id).expect("inserted above");
            worker.replacement = Some(Replacement {
                process,
                mode: RestartMode::Overlap,
                step: Step::Starting,
                generation: true,
            });
            out.push(Command::Spawn {
                worker: id,
                process,
            });
            self.arm(Timeout::Start(process), after);
        }
    }

    /// A process of the new generation is ready in standby; once all are, they go live.
    fn generation_ready(&mut self, process: ProcessId, out: &mut Vec<Command>) {
        if let Some(replacement) = self
            .replacing_mut(process)
            .and_then(|w| w.replacement.as_mut())
        {
            replacement.step = Step::Ready;
        }
        let generation: Vec<&Replacement> = self
            .workers
            .values()
            .filter_map(|w| w.replacement.as_ref())
            .filter(|r| r.generation)
            .collect();
        let ready = generation.iter().filter(|r| r.step == Step::Ready).count();
        let total = generation.len();
        out.push(Command::Emit(LifecycleEvent::ReshardProgress {
            ready,
            total,
        }));
        if ready < total || self.held_switch {
            return;
        }
        self.go_live(None, out);
    }

    /// Whether a generation held for [`Input::GoLive`] is all ready.
    #[must_use]
    pub fn generation_held(&self) -> bool {
        let mut generation = self
            .workers
            .values()
            .filter_map(|w| w.replacement.as_ref())
            .filter(|r| r.generation)
            .peekable();
        self.held_switch && generation.peek().is_some() && generation.all(|r| r.step == Step::Ready)
    }

    /// The new generation, all ready, goes live (at a switch time every host agreed on, and how
    /// far ahead it is, on a bot split across hosts).
    fn go_live(&mut self, agreed: Option<(u64, Duration)>, out: &mut Vec<Command>) {
        let (at_ms, ahead) = match agreed {
            Some((at_ms, ahead)) => (Some(at_ms), ahead),
            None => (None, Duration::ZERO),
        };
        let processes: Vec<ProcessId> = self
            .workers
            .values()
            .filter_map(|w| w.replacement.as_ref())
            .filter(|r| r.generation)
            .map(|r| r.process)
            .collect();
        out.push(Command::Switch {
            old: self.old_generation(),
            new: processes.clone(),
            at_ms,
        });
        // Every new process goes live before any old one stops: no event unhandled.
        for &process in &processes {
            out.push(Command::Activate(process));
        }
        if self.notice.is_zero() {
            if ahead.is_zero() {
                self.finish_generation(out);
            } else {
                // The old generation handles what is created before the switch time.
                self.arm(Timeout::Drain, ahead + SWITCH_GUARD);
            }
            return;
        }
        // The old generation is warned, and serves out its notice beside the new one; its user
        // code stops receiving events a moment after the new generation's starts, so an event
        // is handled twice only inside that moment, and none is left unhandled by both.
        let notice = self.notice;
        if notice > SWITCH_GUARD {
            let after = if ahead.is_zero() {
                SWITCH_GUARD
            } else {
                ahead + SWITCH_GUARD / 2
            };
            self.arm(Timeout::Deactivate, after);
        }
        for worker in self.workers.values() {
            if let (WorkerId::Cluster(_), Some(process)) = (&worker.id, worker.process) {
                out.push(Command::Emit(LifecycleEvent::SoftKillPending {
                    worker: worker.id.clone(),
                    process,
                    notice,
                }));
            }
        }
        self.arm(Timeout::Drain, ahead + notice);
    }

    /// The old generation's live processes stop handing events to user code.
    fn deactivate_old_generation(&mut self, out: &mut Vec<Command>) {
        out.extend(self.old_generation().into_iter().map(Command::Deactivate));
    }

    /// The live processes of the generation a reshard replaces.
    fn old_generation(&self) -> Vec<ProcessId> {
        self.workers
            .values()
            .filter(|w| {
                let replaced = w
                    .replacement
                    .as_ref()
                    .is_some_and(|r| r.generation && r.step == Step::Ready);
                replaced || self.retiring.contains(&w.id)
            })
            .filter(|w| w.state == State::Live)
            .filter_map(|w| w.process)
            .collect()
    }

    /// The new generation takes over; the old one drains.
    fn finish_generation(&mut self, out: &mut Vec<Command>) {
        let processes: Vec<ProcessId> = self
            .workers
            .values()
            .filter_map(|w| w.replacement.as_ref())
            .filter(|r| r.generation && r.step == Step::Ready)
            .map(|r| r.process)
            .collect();
        if processes.is_empty() {
            return;
        }
        let total = processes.len();
        for process in processes {
            let was_pending = self.replacing(process).is_some_and(|w| w.process.is_none());
            self.swap(process, out);
            if was_pending && let Some(id) = self.worker_of(process).cloned() {
                out.push(Command::Emit(LifecycleEvent::Ready(id)));
            }
        }
        let grace = self.timeouts.kill;
        for id in std::mem::take(&mut self.retiring) {
            let Some(worker) = self.workers.get_mut(&id) else {
                continue;
            };
            worker.retired = true;
            match (&worker.state, worker.process) {
                (State::Live | State::Starting | State::Spawned, Some(process)) => {
                    worker.state = State::Draining;
                    out.push(Command::Stop { process, grace });
                }
                _ => {
                    self.workers.remove(&id);
                }
            }
        }
        out.push(Command::Emit(LifecycleEvent::Resharded { clusters: total }));
    }

    /// A process of the new generation failed: the whole generation goes, the old one stays.
    fn abort_generation(&mut self, reason: &str, out: &mut Vec<Command>) {
        self.held_switch = false;
        let grace = self.timeouts.kill;
        let mut gone = Vec::new();
        for worker in self.workers.values_mut() {
            if let Some(replacement) = worker.replacement.take_if(|r| r.generation) {
                out.push(Command::Stop {
                    process: replacement.process,
                    grace,
                });
                if worker.process.is_none() {
                    gone.push(worker.id.clone());
                }
            }
        }
        for id in gone {
            self.workers.remove(&id);
        }
        self.retiring.clear();
        out.push(Command::Emit(LifecycleEvent::ReshardFailed {
            reason: reason.to_owned(),
        }));
    }

    /// The replacement failed: it goes, the old process stays (with its sessions back).
    fn replacement_failed(&mut self, process: ProcessId, reason: String, out: &mut Vec<Command>) {
        let Some(worker) = self.replacing_mut(process) else {
            return;
        };
        if worker.replacement.as_ref().is_some_and(|r| r.generation) {
            let reason = format!("{}: {reason}", worker.id);
            self.abort_generation(&reason, out);
            return;
        }
        let replacement = worker.replacement.take().expect("found as replacing");
        let id = worker.id.clone();
        let old = worker.process;
        // Sessions already handed over go back; any still on their way go back when they come
        // ([`Input::SessionsHandedOver`] with no replacement waiting).
        if let Step::HandingOver {
            sessions: Some(sessions),
        } = replacement.step
            && let Some(old) = old
        {
            out.push(Command::SendSessions { to: old, sessions });
        }
        self.arm(Timeout::Kill(process), self.timeouts.kill);
        out.push(Command::Emit(LifecycleEvent::RestartFailed {
            worker: id,
            reason,
        }));
    }

    fn current(&self, process: ProcessId) -> Option<&Worker> {
        let id = self.processes.get(&process)?;
        self.workers.get(id).filter(|w| w.process == Some(process))
    }

    fn current_mut(&mut self, process: ProcessId) -> Option<&mut Worker> {
        let id = self.processes.get(&process)?;
        self.workers
            .get_mut(id)
            .filter(|w| w.process == Some(process))
    }

    fn spawn_all(&mut self, which: impl Fn(&WorkerId) -> bool, out: &mut Vec<Command>) {
        let ids: Vec<WorkerId> = self
            .workers
            .values()
            .filter(|w| which(&w.id) && w.state == State::Pending)
            .map(|w| w.id.clone())
            .collect();
        for id in ids {
            self.spawn_one(id, out);
        }
    }

    /// Numbers a new process of `id`; returns it and how long it has to become ready.
    fn new_process(&mut self, id: &WorkerId) -> (ProcessId, Duration) {
        let process = self.next_process;
        self.next_process += 1;
        self.processes.insert(process, id.clone());
        (process, self.start_timeout(id))
    }

    fn spawn_one(&mut self, id: WorkerId, out: &mut Vec<Command>) {
        let (process, after) = self.new_process(&id);
        let worker = self.workers.get_mut(&id).expect("a known worker");
        worker.state = State::Spawned;
        worker.process = Some(process);
        out.push(Command::Spawn {
            worker: id,
            process,
        });
        self.arm(Timeout::Start(process), after);
    }

    fn stop_all(&mut self, which: impl Fn(&WorkerId) -> bool, out: &mut Vec<Command>) {
        let grace = self.timeouts.kill;
        let mut generation = false;
        for worker in self.workers.values_mut().filter(|w| which(&w.id)) {
            if let Some(replacement) = worker.replacement.take() {
                out.push(Command::Stop {
                    process: replacement.process,
                    grace,
                });
                if replacement.generation {
                    generation = true;
                } else {
                    out.push(Command::Emit(LifecycleEvent::RestartFailed {
                        worker: worker.id.clone(),
                        reason: "the fleet is shutting down".to_owned(),
                    }));
                }
            }
            match (&worker.state, worker.process) {
                (State::Spawned | State::Starting | State::Live, Some(process)) => {
                    worker.state = State::Draining;
                    out.push(Command::Stop { process, grace });
                }
                (State::Pending | State::Backoff, _) => worker.state = State::Stopped,
                _ => {}
            }
        }
        if generation {
            self.retiring.clear();
            out.push(Command::Emit(LifecycleEvent::ReshardFailed {
                reason: "the fleet is shutting down".to_owned(),
            }));
        }
    }

    /// A worker's current process crashed, failed to start or timed out: restart it after a
    /// backoff if the policy allows, else fail it for good.
    fn fail(&mut self, process: ProcessId, reason: String, out: &mut Vec<Command>) {
        let stopping = matches!(
            self.phase,
            Phase::StoppingClusters | Phase::StoppingServices | Phase::Stopped
        );
        let (now, policy) = (self.now, self.restart);
        let checkpointed = self.checkpoints.remove(&process);
        // A fenced process handed its sessions here: those are its last word.
        let left: Vec<ShardSession> = match self.held.remove(&process) {
            Some(held) if !held.is_empty() => held,
            _ => checkpointed
                .map(|sessions| sessions.into_values().collect())
                .unwrap_or_default(),
        };
        let Some(worker) = self.current_mut(process) else {
            return;
        };
        if let Some(Replacement {
            process: to,
            step: Step::HandingOver {
                sessions: held @ None,
            },
            ..
        }) = worker.replacement.as_mut()
        {
            // It died before handing its sessions over: the replacement resumes them from its
            // last checkpoints (identifies what they do not name).
            *held = Some(left.clone());
            out.push(Command::SendSessions {
                to: *to,
                sessions: left,
            });
            if worker.state.is_terminal() || worker.state == State::Backoff {
                return;
            }
        } else {
            if worker.state.is_terminal() || worker.state == State::Backoff {
                return;
            }
            worker.resume = left;
        }
        let id = worker.id.clone();
        let history = self.restarts.entry(id.clone()).or_default();
        while history
            .front()
            .is_some_and(|t| now.saturating_sub(*t) > policy.window)
        {
            history.pop_front();
        }
        let done = history.len() as u32;
        let worker = self.workers.get_mut(&id).expect("found above");
        if !stopping && done < policy.max_restarts {
            let attempt = done + 1;
            // Sessions wait to be resumed (and Discord holds their events): the first restart in
            // the window goes at once; a crash loop backs off from the second.
            let after = if attempt == 1 && !worker.resume.is_empty() {
                Duration::ZERO
            } else {
                policy.backoff_for(attempt)
            };
            worker.state = State::Backoff;
            self.arm(Timeout::Restart(id.clone()), after);
            out.push(Command::Emit(LifecycleEvent::Restarting {
                worker: id,
                attempt,
                after,
                reason,
            }));
            return;
        }
        let reason = if policy.max_restarts > 0 && !stopping {
            format!(
                "{reason} (gave up after {done} restarts within {:?})",
                policy.window
            )
        } else {
            reason
        };
        worker.state = State::Failed(reason.clone());
        worker.resume.clear();
        out.push(Command::Emit(LifecycleEvent::Failed { worker: id, reason }));
        self.advance(out);
    }

    /// Records a cluster process's checkpoint, if it still serves.
    fn checkpoint(&mut self, process: ProcessId, sessions: Vec<ShardSession>) {
        let serving = self.current(process).is_some_and(|w| {
            matches!(w.state, State::Starting | State::Live) && matches!(w.id, WorkerId::Cluster(_))
        }) || self.replacing(process).is_some();
        if !serving {
            return;
        }
        let held = self.checkpoints.entry(process).or_default();
        for session in sessions {
            if session.session_id.is_empty() {
                held.remove(&session.shard);
                continue;
            }
            match held.get_mut(&session.shard) {
                Some(old)
                    if old.session_id == session.session_id
                        && session.state.as_bytes().is_empty() =>
                {
                    old.sequence = session.sequence;
                    old.resume_url = session.resume_url;
                }
                _ => {
                    held.insert(session.shard, session);
                }
            }
        }
    }

    /// The sessions `worker`'s crashed process left, for its new process to resume (taken: a
    /// session is resumed once).
    pub fn take_resume(&mut self, worker: &WorkerId) -> Vec<ShardSession> {
        self.workers
            .get_mut(worker)
            .map(|w| std::mem::take(&mut w.resume))
            .unwrap_or_default()
    }

    /// How many sessions are checkpointed for `process`.
    #[must_use]
    pub fn checkpointed(&self, process: ProcessId) -> usize {
        self.checkpoints.get(&process).map_or(0, BTreeMap::len)
    }

    /// Starts every pending service whose dependencies are all live, and fails every pending
    /// service one of whose dependencies failed or stopped; until nothing changes.
    fn start_services(&mut self, out: &mut Vec<Command>) {
        loop {
            let mut start = Vec::new();
            let mut fail = Vec::new();
            for (name, spec) in &self.services {
                let id = WorkerId::Service(name.clone());
                if self
                    .workers
                    .get(&id)
                    .is_none_or(|w| w.state != State::Pending)
                {
                    continue;
                }
                let states = spec.depends_on.iter().map(|d| {
                    let state = self.workers.get(&WorkerId::Service(d.clone()));
                    (d, state.map(|w| &w.state))
                });
                let mut ready = true;
                for (dependency, state) in states {
                    match state {
                        Some(State::Live) => {}
                        Some(s) if s.is_terminal() => {
                            fail.push((id.clone(), dependency.clone()));
                            ready = false;
                            break;
                        }
                        _ => ready = false,
                    }
                }
                if ready {
                    start.push(id);
                }
            }
            if start.is_empty() && fail.is_empty() {
                return;
            }
            for id in start {
                self.spawn_one(id, out);
            }
            for (id, dependency) in fail {
                let reason = format!("it depends on service {dependency:?}, which is not running");
                if let Some(worker) = self.workers.get_mut(&id) {
                    worker.state = State::Failed(reason.clone());
                }
                out.push(Command::Emit(LifecycleEvent::Failed { worker: id, reason }));
            }
        }
    }

    /// Stops every service nothing running depends on (the rest wait for their dependents).
    fn stop_services(&mut self, out: &mut Vec<Command>) {
        let needed: std::collections::BTreeSet<String> = self
            .services
            .values()
            .filter(|s| {
                self.workers
                    .get(&WorkerId::Service(s.name.clone()))
                    .is_some_and(|w| !w.state.is_terminal())
            })
            .flat_map(|s| s.depends_on.iter().cloned())
            .collect();
        self.stop_all(
            |w| matches!(w, WorkerId::Service(name) if !needed.contains(name)),
            out,
        );
    }

    /// Moves to the next phase once the current one has settled.
    /// Whether this host is fenced ([`Input::Fence`]).
    #[must_use]
    pub fn is_fenced(&self) -> bool {
        self.fenced
    }

    /// Whether every cluster process of a fenced host has handed its sessions over.
    #[must_use]
    pub fn fence_complete(&self) -> bool {
        self.fenced
            && self.workers.values().all(|w| {
                !matches!(w.id, WorkerId::Cluster(_))
                    || !matches!(w.state, State::Spawned | State::Starting | State::Live)
                    || w.process.is_none_or(|p| self.held.contains_key(&p))
            })
    }

    /// [`Input::Take`].
    fn take(&mut self, cluster: u32, resume: Vec<ShardSession>, out: &mut Vec<Command>) {
        let id = WorkerId::Cluster(cluster);
        if self.stopping() {
            return;
        }
        if let Some(worker) = self.workers.get(&id) {
            if !worker.state.is_terminal() && !worker.retired {
                return; // Runs here already.
            }
            // Lost a moment ago and still leaving: the taken cluster starts afresh.
            if let Some(process) = worker.process {
                self.processes.remove(&process);
                self.held.remove(&process);
                self.checkpoints.remove(&process);
            }
        }
        let mut worker = Worker::pending(id.clone());
        worker.resume = resume;
        self.workers.insert(id.clone(), worker);
        if self.fenced {
            self.workers.get_mut(&id).expect("inserted").state = State::Backoff;
            self.deferred.insert(id);
        } else if matches!(self.phase, Phase::Clusters | Phase::Running) {
            self.spawn_one(id, out);
        }
    }

    /// [`Input::Fence`].
    fn fence(&mut self, out: &mut Vec<Command>) {
        if self.fenced {
            return;
        }
        self.fenced = true;
        // A restart, a reshard or a deploy under way could connect shards: it is called off.
        // Its replacements stop; the old processes stay and are fenced below (sessions already
        // handed to a replacement are held for the old process).
        let grace = self.timeouts.kill;
        let mut aborted = false;
        let mut handed = Vec::new();
        for worker in self.workers.values_mut() {
            let Some(replacement) = worker.replacement.take() else {
                continue;
            };
            aborted |= replacement.generation;
            out.push(Command::Stop {
                process: replacement.process,
                grace,
            });
            match (replacement.step, worker.process) {
                (
                    Step::HandingOver {
                        sessions: Some(sessions),
                    },
                    Some(old),
                ) => {
                    handed.push((old, Some(sessions)));
                }
                // The old process closes its shards and hands the sessions over: held then.
                (Step::HandingOver { sessions: None }, Some(old)) => handed.push((old, None)),
                _ => {}
            }
        }
        for (old, sessions) in handed {
            match sessions {
                Some(sessions) => {
                    self.held.insert(old, sessions);
                }
                None => {
                    self.held.entry(old).or_default();
                }
            }
        }
        if aborted {
            self.held_switch = false;
            self.workers
                .retain(|_, w| w.process.is_some() || !matches!(w.id, WorkerId::Cluster(_)));
            self.retiring.clear();
            out.push(Command::Emit(LifecycleEvent::ReshardFailed {
                reason: FENCED.to_owned(),
            }));
        }
        for worker in self.workers.values() {
            if let (WorkerId::Cluster(_), Some(process)) = (&worker.id, worker.process)
                && matches!(worker.state, State::Spawned | State::Starting | State::Live)
                && !self.held.contains_key(&process)
            {
                out.push(Command::RequestSessions {
                    from: process,
                    to: process,
                });
            }
        }
    }

    /// [`Input::Unfence`].
    fn unfence(&mut self, out: &mut Vec<Command>) {
        if !self.fenced {
            return;
        }
        self.fenced = false;
        for (process, sessions) in std::mem::take(&mut self.held) {
            if self.current(process).is_some() {
                out.push(Command::SendSessions {
                    to: process,
                    sessions,
                });
            }
        }
        for worker in std::mem::take(&mut self.deferred) {
            let pending = self
                .workers
                .get(&worker)
                .is_some_and(|w| w.state == State::Backoff);
            if pending && matches!(self.phase, Phase::Clusters | Phase::Running) {
                self.spawn_one(worker, out);
            } else if pending {
                self.workers.get_mut(&worker).expect("checked").state = State::Pending;
            }
        }
    }

    /// [`Input::Lose`].
    fn lose(&mut self, cluster: u32, out: &mut Vec<Command>) {
        let id = WorkerId::Cluster(cluster);
        self.deferred.remove(&id);
        let grace = self.timeouts.kill;
        let Some(worker) = self.workers.get_mut(&id) else {
            return;
        };
        worker.resume.clear();
        worker.retired = true;
        if let Some(replacement) = worker.replacement.take() {
            out.push(Command::Stop {
                process: replacement.process,
                grace,
            });
        }
        match (worker.process, &worker.state) {
            (Some(process), State::Spawned | State::Starting | State::Live | State::Draining) => {
                worker.state = State::Draining;
                self.held.remove(&process);
                self.checkpoints.remove(&process);
                out.push(Command::Stop { process, grace });
            }
            _ => {
                self.workers.remove(&id);
            }
        }
        out.push(Command::Emit(LifecycleEvent::WorkerStopped(id)));
        self.advance(out);
    }

    fn advance(&mut self, out: &mut Vec<Command>) {
        let settled = |which: fn(&WorkerId) -> bool, this: &Self, done: fn(&State) -> bool| {
            this.workers
                .values()
                .filter(|w| which(&w.id))
                .all(|w| done(&w.state))
        };
        let is_service = |w: &WorkerId| matches!(w, WorkerId::Service(_));
        let is_cluster = |w: &WorkerId| matches!(w, WorkerId::Cluster(_));
        let started = |s: &State| matches!(s, State::Live | State::Failed(_));
        if !matches!(self.phase, Phase::Idle) && !self.stopping() {
            self.start_services(out);
        }
        if self.phase == Phase::Services && settled(is_service, self, started) {
            self.phase = Phase::Clusters;
            out.push(Command::Emit(LifecycleEvent::ServicesLaunched));
            self.spawn_all(is_cluster, out);
        }
        if self.phase == Phase::Clusters && settled(is_cluster, self, started) {
            self.phase = Phase::Running;
            let live = self
                .workers
                .values()
                .filter(|w| w.state == State::Live)
                .count();
            out.push(Command::Emit(LifecycleEvent::AllReady {
                live,
                failed: self.workers.len() - live,
            }));
        }
        if self.phase == Phase::StoppingClusters && settled(is_cluster, self, State::is_terminal) {
            self.phase = Phase::StoppingServices;
        }
        if self.phase == Phase::StoppingServices {
            self.stop_services(out);
        }
        if self.phase == Phase::StoppingServices && settled(is_service, self, State::is_terminal) {
            self.phase = Phase::Stopped;
            out.push(Command::Emit(LifecycleEvent::Stopped));
        }
    }
}

#[cfg(test)]
mod tests;
