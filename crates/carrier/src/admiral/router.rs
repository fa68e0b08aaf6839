//! The admiral's actor: one task that owns the connections, the routing table, pending commands
//! and their deadlines, the central store, identify grants and the [`Lifecycle`]. Socket reader
//! tasks, process watchers and the admiral's own [`Ipc`] feed it through channels; it never blocks
//! on a worker (each connection has a bounded queue, and a full queue is answered with
//! [`Refusal::Overloaded`] rather than waited on).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt as _;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::AbortHandle;
use tokio_util::time::{DelayQueue, delay_queue};

use super::lifecycle::{
    Command, Input, Lifecycle, LifecycleEvent, ProcessId, RestartMode, State, WorkerId,
};
use super::plan::ShardCount;
use super::process::{self, SpawnRequest};
use super::{AdmiralConfig, FleetEvent, ShardPlan, WorkerStatus};
use crate::identify::IdentifyQueue;
use crate::ipc::client::{Ipc, LocalRequest, Message};
use crate::ipc::frame;
use crate::ipc::link::WorkerEnv;
use crate::ipc::proto::{
    Assignment, ClusterAssignment, Down, Fetch, Group, MAX_TIMEOUT, Outcome, Payload, Refusal,
    Reply, Request, ShardSession, Status, StoreRequest, Target, Up, clamp_timeout,
};
use crate::proxy::RestProxy;

/// Frames queued per connection before the admiral answers "overloaded".
pub const CONNECTION_QUEUE: usize = 8192;

/// Requests one connection may have unanswered; more are refused as overloaded. A worker's own
/// handle allows [`MAX_IN_FLIGHT`](crate::ipc::client::MAX_IN_FLIGHT), half of this.
const MAX_REQUESTS_PER_CONN: usize = 8192;

/// The most shards a reshard may ask for (Discord's largest bots run a few thousand).
const MAX_SHARDS: u32 = 65_536;

/// The most clusters a reshard may ask for: each is a process the admiral starts.
const MAX_CLUSTERS: u32 = 1024;

/// Process number standing for the admiral itself when it answers commands.
const ADMIRAL_PROCESS: ProcessId = 0;

pub(crate) type ConnId = u64;

/// Everything that reaches the actor.
#[derive(Debug)]
pub(crate) enum Inbox {
    Connected {
        conn: ConnId,
        writer: mpsc::Sender<Bytes>,
    },
    Hello {
        conn: ConnId,
        secret: crate::Secret,
        process: ProcessId,
        /// Told whether the connection is admitted; its reader waits for this.
        admitted: oneshot::Sender<bool>,
    },
    Up {
        conn: ConnId,
        up: Up,
    },
    Closed {
        conn: ConnId,
        error: Option<String>,
    },
    Granted {
        waiter: Waiter,
    },
    Answer {
        forward: u64,
        outcome: Outcome,
    },
    Spawned {
        process: ProcessId,
        pid: Option<u32>,
        kill: oneshot::Sender<()>,
    },
    Exited {
        process: ProcessId,
        code: Option<i32>,
    },
    Shutdown,
    Workers(oneshot::Sender<Vec<WorkerStatus>>),
    /// Discord's recommended shard count arrived for a reshard.
    Recommended {
        waiter: Waiter,
        count: ShardCount,
        clusters: Option<u32>,
        recommended: Result<u32, String>,
    },
}

/// Who waits for a reply.
#[derive(Debug)]
pub(crate) enum Waiter {
    Conn(ConnId, u64),
    Local(oneshot::Sender<Reply>),
}

/// How long an exited process's connection may take to drain before the exit is handled anyway.
const EXIT_DRAIN: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
enum Timer {
    Restart(WorkerId),
    ExitDrain(ProcessId),
    Forward(u64),
    Start(ProcessId),
    Kill(ProcessId),
    Heartbeat,
    Notice(WorkerId),
    Drain,
}

#[derive(Debug)]
struct Conn {
    process: Option<ProcessId>,
    writer: mpsc::Sender<Bytes>,
    identifies: Vec<AbortHandle>,
    /// Its requests not answered yet.
    requests: usize,
}

#[derive(Debug)]
enum Route {
    Single(Waiter),
    Part(u64),
    Search(u64),
}

/// What a forward asks of its target.
#[derive(Debug)]
enum Ask {
    Command(Payload),
    Fetch(Fetch),
}

/// A rolling restart of several workers.
#[derive(Debug)]
struct Rolling {
    waiter: Waiter,
    mode: RestartMode,
    at_once: usize,
    queue: std::collections::VecDeque<WorkerId>,
    running: Vec<WorkerId>,
    outcomes: BTreeMap<Target, Outcome>,
}

/// A fetch waiting for the first hit among its targets.
#[derive(Debug)]
struct Search {
    waiter: Waiter,
    remaining: usize,
    /// The one cluster that can know (guild-scoped lookups): its being down is an error, not a
    /// miss.
    owner: Option<Target>,
}

#[derive(Debug)]
struct Forward {
    process: ProcessId,
    target: Target,
    route: Route,
    timer: delay_queue::Key,
}

#[derive(Debug)]
struct Fanout {
    waiter: Waiter,
    remaining: usize,
    outcomes: BTreeMap<Target, Outcome>,
}

/// A process's exit code (`None`: killed by a signal).
#[derive(Debug, Clone, Copy)]
struct Exit(Option<i32>);

#[derive(Debug, Default)]
struct ProcessInfo {
    pid: Option<u32>,
    kill: Option<oneshot::Sender<()>>,
    conn: Option<ConnId>,
    /// The process exited while its connection still had frames to read.
    exited: Option<Exit>,
    /// When it last answered a ping (or said hello).
    last_seen: Option<tokio::time::Instant>,
    /// Its key to the REST proxy, revoked when it exits.
    rest_key: Option<crate::Secret>,
}

pub(crate) struct Router {
    config: Arc<AdmiralConfig>,
    socket: PathBuf,
    secret: crate::Secret,
    lifecycle: Lifecycle,
    conns: HashMap<ConnId, Conn>,
    processes: HashMap<ProcessId, ProcessInfo>,
    forwards: HashMap<u64, Forward>,
    fanouts: HashMap<u64, Fanout>,
    searches: HashMap<u64, Search>,
    /// Handovers under way: old process → replacement.
    handovers: HashMap<ProcessId, ProcessId>,
    /// Sessions an old process handed over, kept until its replacement serves.
    held_sessions: HashMap<ProcessId, Vec<ShardSession>>,
    restart_waiters: HashMap<WorkerId, Vec<Waiter>>,
    stop_waiters: HashMap<WorkerId, Vec<Waiter>>,
    /// The shard plan clusters serve now.
    plan: ShardPlan,
    /// The plan of the generation a reshard is starting.
    next_plan: Option<ShardPlan>,
    reshard_waiter: Option<Waiter>,
    plan_tx: watch::Sender<ShardPlan>,
    rollings: HashMap<u64, Rolling>,
    next_id: u64,
    timers: DelayQueue<Timer>,
    store: HashMap<String, Payload>,
    /// Bytes of keys and values in `store`.
    store_bytes: usize,
    identify: Arc<dyn IdentifyQueue>,
    ipc: Ipc,
    inbox: mpsc::Sender<Inbox>,
    events: broadcast::Sender<FleetEvent>,
    ready: watch::Sender<Option<(usize, usize)>>,
    started: tokio::time::Instant,
}

impl Router {
    #[allow(clippy::too_many_arguments, reason = "wired once, by `admiral::start`")]
    pub(crate) fn new(
        config: Arc<AdmiralConfig>,
        socket: PathBuf,
        secret: crate::Secret,
        ipc: Ipc,
        inbox: mpsc::Sender<Inbox>,
        events: broadcast::Sender<FleetEvent>,
        ready: watch::Sender<Option<(usize, usize)>>,
        plan_tx: watch::Sender<ShardPlan>,
    ) -> Self {
        let lifecycle_plan = config.plan.clone();
        let lifecycle = Lifecycle::new(
            config.services.iter().cloned(),
            config.plan.clusters.iter().map(|c| c.id),
            config.timeouts,
        )
        .with_restarts(config.restart)
        .with_soft_kill_notice(config.soft_kill_notice);
        Self {
            identify: config.identify.clone(),
            config,
            socket,
            secret,
            lifecycle,
            conns: HashMap::new(),
            processes: HashMap::new(),
            forwards: HashMap::new(),
            fanouts: HashMap::new(),
            searches: HashMap::new(),
            handovers: HashMap::new(),
            held_sessions: HashMap::new(),
            restart_waiters: HashMap::new(),
            stop_waiters: HashMap::new(),
            plan: lifecycle_plan,
            next_plan: None,
            reshard_waiter: None,
            plan_tx,
            rollings: HashMap::new(),
            next_id: 1,
            timers: DelayQueue::new(),
            store: HashMap::new(),
            store_bytes: 0,
            ipc,
            inbox,
            events,
            ready,
            started: tokio::time::Instant::now(),
        }
    }

    /// Runs until every worker has stopped after a shutdown.
    pub(crate) async fn run(
        mut self,
        mut inbox: mpsc::Receiver<Inbox>,
        mut local: mpsc::Receiver<LocalRequest>,
    ) {
        self.lifecycle_input(Input::Launch);
        if let Some(heartbeat) = self.config.heartbeat {
            self.arm(Timer::Heartbeat, heartbeat.interval);
        }
        while !self.lifecycle.is_stopped() {
            tokio::select! {
                message = inbox.recv() => match message {
                    Some(message) => self.on_inbox(message),
                    None => break,
                },
                Some(request) = local.recv() => {
                    let me = Target::Admiral;
                    let timeout = request.timeout.min(MAX_TIMEOUT);
                    self.on_request(&me, Waiter::Local(request.reply), request.request, timeout);
                }
                Some(expired) = self.timers.next(), if !self.timers.is_empty() => self.on_timer(expired.into_inner()),
            }
        }
        tracing::info!(target: "fleet::admiral", "every worker has stopped");
    }

    fn on_inbox(&mut self, message: Inbox) {
        match message {
            Inbox::Connected { conn, writer } => {
                self.conns.insert(
                    conn,
                    Conn {
                        process: None,
                        writer,
                        identifies: Vec::new(),
                        requests: 0,
                    },
                );
            }
            Inbox::Hello {
                conn,
                secret,
                process,
                admitted,
            } => {
                let ok = self.on_hello(conn, &secret, process);
                let _ = admitted.send(ok);
            }
            Inbox::Up { conn, up } => self.on_up(conn, up),
            Inbox::Closed { conn, error } => self.on_closed(conn, error),
            Inbox::Granted { waiter } => self.answer(waiter, Reply::Done),
            Inbox::Answer { forward, outcome } => self.resolve(forward, outcome, false),
            Inbox::Spawned { process, pid, kill } => {
                let info = self.processes.entry(process).or_default();
                info.pid = pid;
                info.kill = Some(kill);
            }
            Inbox::Exited { process, code } => {
                // Read what the process sent before it died (a start failure, say) first: its
                // connection closes once the reader has drained it.
                match self.processes.get_mut(&process) {
                    Some(info) if info.conn.is_some() => {
                        info.exited = Some(Exit(code));
                        self.arm(Timer::ExitDrain(process), EXIT_DRAIN);
                    }
                    _ => self.exited(process, code),
                }
            }
            Inbox::Recommended {
                waiter,
                count,
                clusters,
                recommended,
            } => match recommended {
                Ok(recommended) => self.reshard(waiter, count, recommended, clusters),
                Err(error) => {
                    let reason = format!("GET /gateway/bot failed: {error}");
                    self.answer(waiter, Reply::Refused(Refusal::ReshardFailed(reason)));
                }
            },
            Inbox::Shutdown => {
                let _ = self.events.send(FleetEvent::ShuttingDown);
                self.lifecycle_input(Input::Shutdown);
            }
            Inbox::Workers(reply) => {
                let workers = self
                    .lifecycle
                    .workers()
                    .map(|w| WorkerStatus {
                        id: w.id.clone(),
                        state: w.state.clone(),
                        process: w.process,
                        pid: w
                            .process
                            .and_then(|p| self.processes.get(&p))
                            .and_then(|i| i.pid),
                    })
                    .collect();
                let _ = reply.send(workers);
            }
        }
    }

    /// Admits a connection's process, or refuses it (and forgets the connection); says which.
    fn on_hello(&mut self, conn: ConnId, secret: &crate::Secret, process: ProcessId) -> bool {
        let worker = self
            .lifecycle
            .worker_of(process)
            .and_then(|id| self.lifecycle.worker(id))
            .cloned();
        let taken = self
            .processes
            .get(&process)
            .is_some_and(|i| i.conn.is_some());
        let problem = if !self.secret.matches(secret.expose()) {
            Some("wrong secret")
        } else if worker.as_ref().is_none_or(|w| {
            (w.process != Some(process) || w.state != State::Spawned)
                && w.replacement.as_ref().is_none_or(|r| r.process != process)
        }) {
            Some("unknown or stale process")
        } else if taken {
            Some("process already connected")
        } else {
            None
        };
        if let Some(problem) = problem {
            tracing::error!(target: "fleet::ipc", conn, process, problem, "refusing an IPC connection");
            let _ = self.events.send(FleetEvent::ProtocolError {
                worker: None,
                error: format!("refused a connection claiming process {process}: {problem}"),
            });
            self.conns.remove(&conn);
            return false;
        }
        let worker = worker.expect("checked above");
        let handover = worker
            .replacement
            .as_ref()
            .is_some_and(|r| r.process == process && r.mode == RestartMode::Handover);
        let standby = worker
            .replacement
            .as_ref()
            .is_some_and(|r| r.process == process && r.generation);
        let worker = worker.id;
        // A process of a new generation runs the next plan; every other one the current plan.
        let plan = match (&self.next_plan, standby) {
            (Some(next), true) => next,
            _ => &self.plan,
        };
        let mut rest_key = None;
        let assignment = match &worker {
            WorkerId::Service(name) => Assignment::Service { name: name.clone() },
            WorkerId::Cluster(id) => {
                let Some(cluster) = plan.clusters.iter().find(|c| c.id == *id) else {
                    tracing::error!(target: "fleet::ipc", %worker, "no plan for this cluster");
                    self.conns.remove(&conn);
                    return false;
                };
                rest_key = self
                    .config
                    .rest_proxy
                    .as_ref()
                    .map(|proxy| proxy.admit(&worker.to_string()));
                Assignment::Cluster(ClusterAssignment {
                    id: *id,
                    first_shard: cluster.first_shard,
                    last_shard: cluster.last_shard,
                    shard_total: plan.shard_total,
                    max_concurrency: plan.max_concurrency,
                    token: self.config.token.clone(),
                    gateway_url: self.config.gateway_url.clone(),
                    rest_url: self
                        .config
                        .rest_proxy
                        .as_ref()
                        .map_or_else(|| self.config.rest_url.clone(), RestProxy::url),
                    rest_proxied: self.config.rest_proxy.is_some(),
                    rest_key: rest_key.clone(),
                    handover,
                    standby,
                })
            }
        };
        if let Some(c) = self.conns.get_mut(&conn) {
            c.process = Some(process);
        }
        let info = self.processes.entry(process).or_default();
        info.conn = Some(conn);
        info.last_seen = Some(tokio::time::Instant::now());
        info.rest_key = rest_key;
        self.send(conn, &Down::Welcome(assignment));
        tracing::debug!(target: "fleet::ipc", %worker, process, "worker connected");
        self.lifecycle_input(Input::Hello(process));
        true
    }

    fn on_up(&mut self, conn: ConnId, up: Up) {
        let Some(process) = self.conns.get(&conn).and_then(|c| c.process) else {
            return;
        };
        let Some(worker) = self.lifecycle.worker_of(process).cloned() else {
            return;
        };
        match up {
            Up::Pong { .. } => {
                if let Some(info) = self.processes.get_mut(&process) {
                    info.last_seen = Some(tokio::time::Instant::now());
                }
            }
            Up::Hello { .. } => {
                tracing::warn!(target: "fleet::ipc", %worker, "ignoring a second hello");
            }
            Up::Request {
                id,
                timeout_ms,
                request,
            } => {
                let timeout = clamp_timeout(timeout_ms);
                // A worker's requests in flight are capped (its own handle allows far fewer), so
                // no worker can make the admiral hold unbounded state for it.
                let Some(state) = self.conns.get_mut(&conn) else {
                    return;
                };
                if state.requests >= MAX_REQUESTS_PER_CONN {
                    let refusal = Refusal::Overloaded(Target::Admiral);
                    let reply = Reply::Refused(refusal);
                    self.send(conn, &Down::Reply { id, reply });
                    return;
                }
                state.requests += 1;
                self.on_request(&worker.target(), Waiter::Conn(conn, id), request, timeout);
            }
            Up::Reply { id, outcome } => {
                if self.forwards.get(&id).is_some_and(|f| f.process == process) {
                    self.resolve(id, outcome, false);
                }
            }
            Up::Status(Status::Ready) => self.lifecycle_input(Input::Ready(process)),
            Up::Status(Status::Prepared) => self.lifecycle_input(Input::Prepared(process)),
            Up::Sessions(sessions) => {
                let Some(to) = self.handovers.get(&process).copied() else {
                    tracing::warn!(target: "fleet::admiral", %worker, "sessions nobody asked for");
                    return;
                };
                tracing::info!(target: "fleet::admiral", %worker, from = process, to, shards = sessions.len(), "handing sessions over");
                if let Some(conn) = self.processes.get(&to).and_then(|i| i.conn) {
                    self.send(conn, &Down::Sessions(sessions.clone()));
                }
                self.held_sessions.insert(process, sessions);
            }
            Up::Status(Status::StartFailed(reason)) => {
                self.lifecycle_input(Input::StartFailed(process, reason));
            }
            Up::Status(Status::Shard { shard, event }) => {
                if let WorkerId::Cluster(cluster) = worker {
                    tracing::debug!(target: "fleet::shard", cluster, shard, ?event);
                    let _ = self.events.send(FleetEvent::Shard {
                        cluster,
                        shard,
                        event,
                    });
                }
            }
            Up::Status(Status::Panic(report)) => {
                tracing::error!(target: "fleet::worker", %worker, process, %report, "user code panicked");
                let _ = self.events.send(FleetEvent::Panic {
                    worker,
                    process,
                    report,
                });
            }
            Up::Log(record) => {
                record.emit(&worker.target());
                let _ = self.events.send(FleetEvent::Log { worker, record });
            }
        }
    }

    fn exited(&mut self, process: ProcessId, code: Option<i32>) {
        if let Some(worker) = self.lifecycle.worker_of(process).cloned() {
            tracing::info!(target: "fleet::admiral", %worker, process, ?code, "worker process exited");
            let _ = self.events.send(FleetEvent::Exited {
                worker,
                process,
                code,
            });
        }
        if let Some(key) = self.processes.remove(&process).and_then(|i| i.rest_key)
            && let Some(proxy) = &self.config.rest_proxy
        {
            proxy.revoke(&key);
        }
        self.lifecycle_input(Input::Exited(process, code));
    }

    fn on_closed(&mut self, conn: ConnId, error: Option<String>) {
        let Some(state) = self.conns.remove(&conn) else {
            return;
        };
        for task in state.identifies {
            task.abort();
        }
        let Some(process) = state.process else { return };
        let mut exited = None;
        if let Some(info) = self.processes.get_mut(&process) {
            info.conn = None;
            exited = info.exited.take();
        }
        let worker = self.lifecycle.worker_of(process).cloned();
        if let Some(error) = error {
            tracing::error!(target: "fleet::ipc", worker = ?worker, process, %error, "disconnected a worker over a protocol error");
            let _ = self
                .events
                .send(FleetEvent::ProtocolError { worker, error });
        }
        let orphaned: Vec<u64> = self
            .forwards
            .iter()
            .filter(|(_, f)| f.process == process)
            .map(|(id, _)| *id)
            .collect();
        for id in orphaned {
            self.resolve(id, Outcome::Unavailable, false);
        }
        if let Some(Exit(code)) = exited {
            self.exited(process, code);
        }
    }

    fn on_timer(&mut self, timer: Timer) {
        match timer {
            Timer::Restart(worker) => self.lifecycle_input(Input::RestartDue(worker)),
            Timer::ExitDrain(process) => {
                // The connection of a dead process did not close (something inherited its
                // socket): handle the exit now.
                if let Some(conn) = self.processes.get(&process).and_then(|i| i.conn) {
                    tracing::warn!(target: "fleet::ipc", process, "a dead worker's connection stayed open; closing it");
                    self.on_closed(conn, None);
                }
            }
            Timer::Forward(id) => self.resolve(id, Outcome::TimedOut, true),
            Timer::Start(process) => self.lifecycle_input(Input::StartTimedOut(process)),
            Timer::Kill(process) => self.lifecycle_input(Input::KillTimedOut(process)),
            Timer::Heartbeat => self.heartbeat(),
            Timer::Notice(worker) => self.lifecycle_input(Input::NoticeOver(worker)),
            Timer::Drain => self.lifecycle_input(Input::DrainDue),
        }
    }

    /// Pings every serving worker and kills those silent for longer than the timeout.
    fn heartbeat(&mut self) {
        let Some(heartbeat) = self.config.heartbeat else {
            return;
        };
        self.arm(Timer::Heartbeat, heartbeat.interval);
        let now = tokio::time::Instant::now();
        let serving: Vec<(WorkerId, ProcessId)> = self
            .lifecycle
            .workers()
            .filter(|w| matches!(w.state, State::Starting | State::Live))
            .filter_map(|w| Some((w.id.clone(), w.process?)))
            .collect();
        let seq = self.next_id();
        for (worker, process) in serving {
            let Some(info) = self.processes.get(&process) else {
                continue;
            };
            let (Some(conn), Some(last_seen)) = (info.conn, info.last_seen) else {
                continue;
            };
            let silent_for = now.duration_since(last_seen);
            if silent_for > heartbeat.timeout {
                tracing::error!(target: "fleet::admiral", %worker, process, ?silent_for, "worker unresponsive; killing it");
                let _ = self.events.send(FleetEvent::Unresponsive {
                    worker,
                    process,
                    silent_for,
                });
                if let Some(info) = self.processes.get_mut(&process) {
                    info.last_seen = None;
                }
                self.kill(process);
            } else {
                self.send(conn, &Down::Ping { seq });
            }
        }
    }

    // ---- requests ----------------------------------------------------------------------------

    fn on_request(&mut self, from: &Target, waiter: Waiter, request: Request, timeout: Duration) {
        match request {
            Request::Broadcast { event, payload } => {
                let down = Down::Message {
                    from: from.clone(),
                    event,
                    payload,
                };
                let reply = match self.encode(&down) {
                    Ok(body) => {
                        let targets: Vec<ConnId> = self.serving_conns().collect();
                        let mut refused = None;
                        for conn in targets {
                            if let Err(refusal) = self.send_body(conn, body.clone()) {
                                refused.get_or_insert(refusal);
                            }
                        }
                        if let Down::Message {
                            from,
                            event,
                            payload,
                        } = down
                        {
                            self.ipc.deliver(&Message {
                                from,
                                event,
                                payload,
                            });
                        }
                        refused.map_or(Reply::Done, Reply::Refused)
                    }
                    Err(refusal) => Reply::Refused(refusal),
                };
                self.answer(waiter, reply);
            }
            Request::SendTo {
                target,
                event,
                payload,
            } => {
                let reply = if target == Target::Admiral {
                    self.ipc.deliver(&Message {
                        from: from.clone(),
                        event,
                        payload,
                    });
                    Reply::Done
                } else {
                    match self.live_conn(&target) {
                        Ok(conn) => {
                            let down = Down::Message {
                                from: from.clone(),
                                event,
                                payload,
                            };
                            match self
                                .encode(&down)
                                .and_then(|body| self.send_body(conn, body))
                            {
                                Ok(()) => Reply::Done,
                                Err(refusal) => Reply::Refused(refusal),
                            }
                        }
                        Err(refusal) => Reply::Refused(refusal),
                    }
                };
                self.answer(waiter, reply);
            }
            Request::Command { target, payload } => {
                if let Err(refusal) = self.known(&target) {
                    self.answer(waiter, Reply::Refused(refusal));
                    return;
                }
                let ask = Ask::Command(payload);
                self.forward(from, target, ask, timeout, Route::Single(waiter));
            }
            Request::CommandAll { group, payload } => {
                let targets: Vec<Target> = self
                    .lifecycle
                    .workers()
                    .filter(|w| match group {
                        Group::Clusters => matches!(w.id, WorkerId::Cluster(_)),
                        Group::Services => matches!(w.id, WorkerId::Service(_)),
                    })
                    .map(|w| w.id.target())
                    .collect();
                self.fan_out(from, waiter, targets, timeout, || {
                    Ask::Command(payload.clone())
                });
            }
            Request::Store(operation) => {
                let reply = match operation {
                    StoreRequest::Get(key) => Reply::Value(self.store.get(&key).cloned()),
                    StoreRequest::Set(key, value) => {
                        let old = self.store.get(&key).map_or(0, |v| key.len() + v.0.len());
                        let new = key.len() + value.0.len();
                        let after = self.store_bytes - old + new;
                        if after > self.config.store_limit {
                            Reply::Refused(Refusal::Invalid(format!(
                                "the store holds {} bytes; this write would take it past its limit of {} (FleetOptions::store_limit)",
                                self.store_bytes, self.config.store_limit
                            )))
                        } else {
                            self.store_bytes = after;
                            self.store.insert(key, value);
                            Reply::Done
                        }
                    }
                    StoreRequest::Has(key) => Reply::Flag(self.store.contains_key(&key)),
                    StoreRequest::Delete(key) => {
                        let removed = self.store.remove(&key);
                        if let Some(value) = &removed {
                            self.store_bytes -= key.len() + value.0.len();
                        }
                        Reply::Flag(removed.is_some())
                    }
                    StoreRequest::Clear => {
                        self.store.clear();
                        self.store_bytes = 0;
                        Reply::Done
                    }
                };
                self.answer(waiter, reply);
            }
            Request::Fetch(Fetch::GuildCount) => {
                let refusal = Refusal::Invalid("count guilds with Request::CountGuilds".into());
                self.answer(waiter, Reply::Refused(refusal));
            }
            Request::Fetch(query) => self.fetch(from, waiter, query, timeout),
            Request::Stop { worker } => {
                let id = match worker {
                    Target::Cluster(id) => WorkerId::Cluster(id),
                    Target::Service(name) => WorkerId::Service(name),
                    Target::Admiral => {
                        let refusal = Refusal::Invalid("stop the admiral with a shutdown".into());
                        self.answer(waiter, Reply::Refused(refusal));
                        return;
                    }
                };
                if let Err(reason) = self.lifecycle.can_stop(&id) {
                    self.answer(waiter, Reply::Refused(Refusal::Invalid(reason)));
                    return;
                }
                self.stop_waiters
                    .entry(id.clone())
                    .or_default()
                    .push(waiter);
                self.lifecycle_input(Input::Stop(id));
            }
            Request::CountGuilds => {
                let targets: Vec<Target> = self
                    .plan
                    .clusters
                    .iter()
                    .map(|c| Target::Cluster(c.id))
                    .collect();
                self.fan_out(from, waiter, targets, timeout, || {
                    Ask::Fetch(Fetch::GuildCount)
                });
            }
            Request::Restart { worker, mode } => {
                let id = match worker {
                    Target::Cluster(id) => WorkerId::Cluster(id),
                    Target::Service(name) => WorkerId::Service(name),
                    Target::Admiral => {
                        let refusal = Refusal::Invalid("the admiral cannot be restarted".into());
                        self.answer(waiter, Reply::Refused(refusal));
                        return;
                    }
                };
                if let Err(reason) = self.lifecycle.check_restart(&id, mode) {
                    self.answer(waiter, Reply::Refused(Refusal::RestartFailed(reason)));
                    return;
                }
                self.restart_waiters
                    .entry(id.clone())
                    .or_default()
                    .push(waiter);
                self.lifecycle_input(Input::Restart(id, mode));
            }
            Request::Reshard { count, clusters } => {
                if let Err(reason) = self.lifecycle.can_reshard() {
                    self.answer(waiter, Reply::Refused(Refusal::ReshardFailed(reason)));
                    return;
                }
                if let ShardCount::Exact(_) = count {
                    self.reshard(waiter, count, 0, clusters);
                    return;
                }
                // Discord's recommendation first, off the actor.
                let recommend = (self.config.recommend)();
                let inbox = self.inbox.clone();
                tokio::spawn(async move {
                    let recommended = recommend.await;
                    let _ = inbox
                        .send(Inbox::Recommended {
                            waiter,
                            count,
                            clusters,
                            recommended,
                        })
                        .await;
                });
            }
            Request::RestartAll {
                group,
                mode,
                at_once,
            } => {
                let queue = self
                    .lifecycle
                    .workers()
                    .filter(|w| match group {
                        Group::Clusters => matches!(w.id, WorkerId::Cluster(_)),
                        Group::Services => matches!(w.id, WorkerId::Service(_)),
                    })
                    .map(|w| w.id.clone())
                    .collect();
                let rolling = self.next_id();
                self.rollings.insert(
                    rolling,
                    Rolling {
                        waiter,
                        mode,
                        at_once: at_once.max(1) as usize,
                        queue,
                        running: Vec::new(),
                        outcomes: BTreeMap::new(),
                    },
                );
                self.roll(rolling);
            }
            Request::Identify { shard } => {
                // Services run no shards: a slot one of them took would be one a cluster waits
                // for.
                if let Target::Service(name) = from {
                    let refusal =
                        Refusal::Invalid(format!("service {name} runs no shards to identify"));
                    self.answer(waiter, Reply::Refused(refusal));
                    return;
                }
                let total = self
                    .next_plan
                    .as_ref()
                    .map_or(self.plan.shard_total, |next| {
                        next.shard_total.max(self.plan.shard_total)
                    });
                if shard >= total {
                    let refusal =
                        Refusal::Invalid(format!("shard {shard} is not below the total {total}"));
                    self.answer(waiter, Reply::Refused(refusal));
                    return;
                }
                let conn = match &waiter {
                    Waiter::Conn(conn, _) => Some(*conn),
                    Waiter::Local(_) => None,
                };
                let grant = self.identify.acquire(shard);
                let inbox = self.inbox.clone();
                let task = tokio::spawn(async move {
                    grant.await;
                    let _ = inbox.send(Inbox::Granted { waiter }).await;
                });
                if let Some(c) = conn.and_then(|c| self.conns.get_mut(&c)) {
                    c.identifies.retain(|t| !t.is_finished());
                    c.identifies.push(task.abort_handle());
                }
            }
        }
    }

    /// Starts a reshard to the total `count` gives with `recommended` shards recommended.
    fn reshard(
        &mut self,
        waiter: Waiter,
        count: ShardCount,
        recommended: u32,
        clusters: Option<u32>,
    ) {
        let refuse = |router: &mut Self, waiter, reason: String| {
            router.answer(waiter, Reply::Refused(Refusal::ReshardFailed(reason)));
        };
        if let Err(reason) = self.lifecycle.can_reshard() {
            return refuse(self, waiter, reason);
        }
        let max_concurrency = self.plan.max_concurrency;
        let total = match super::plan::shard_total(count, recommended, max_concurrency) {
            Ok(total) => total,
            Err(error) => return refuse(self, waiter, error.to_string()),
        };
        // A reshard can come from any worker: it may not make the admiral start processes
        // without bound.
        if total > MAX_SHARDS {
            let reason = format!("{total} shards asked for; at most {MAX_SHARDS}");
            return refuse(self, waiter, reason);
        }
        let wanted = clusters.unwrap_or(self.plan.clusters.len() as u32);
        if wanted > MAX_CLUSTERS {
            let reason = format!("{wanted} clusters asked for; at most {MAX_CLUSTERS}");
            return refuse(self, waiter, reason);
        }
        // This host keeps its share of the bot: on a bot split over machines, the slice scales
        // with the total, so the hosts together still run every shard exactly once.
        let from_total = self.plan.shard_total;
        let (first, last) = self.plan.slice().unwrap_or((0, from_total - 1));
        let Some((new_first, new_last)) = super::plan::scale_slice(first, last, from_total, total)
        else {
            let reason = format!(
                "this host runs shards {first}..={last} of {from_total}; scaled to {total} shards its share is empty"
            );
            return refuse(self, waiter, reason);
        };
        let planned = super::plan::plan(super::plan::PlanInput {
            count: ShardCount::Exact(total),
            recommended,
            max_concurrency,
            clusters: wanted,
            first_shard: Some(new_first),
            last_shard: Some(new_last),
        });
        let next = match planned {
            Ok(next) => next,
            Err(error) => return refuse(self, waiter, error.to_string()),
        };
        tracing::info!(
            target: "fleet::admiral",
            from = from_total,
            to = total,
            clusters = next.clusters.len(),
            "resharding: this host's shards {first}..={last} of {from_total} become {new_first}..={new_last} of {total}"
        );
        let ids = next.clusters.iter().map(|c| c.id).collect();
        self.next_plan = Some(next);
        self.reshard_waiter = Some(waiter);
        self.lifecycle_input(Input::Reshard(ids));
    }

    /// Asks every target and answers with one outcome per target once all have answered.
    fn fan_out(
        &mut self,
        from: &Target,
        waiter: Waiter,
        targets: Vec<Target>,
        timeout: Duration,
        ask: impl Fn() -> Ask,
    ) {
        let fanout = self.next_id();
        self.fanouts.insert(
            fanout,
            Fanout {
                waiter,
                remaining: targets.len(),
                outcomes: BTreeMap::new(),
            },
        );
        if targets.is_empty() {
            self.finish_fanout(fanout);
        }
        for target in targets {
            self.forward(from, target, ask(), timeout, Route::Part(fanout));
        }
    }

    /// Starts a cache lookup: at the guild's owner, or at every cluster.
    fn fetch(&mut self, from: &Target, waiter: Waiter, query: Fetch, timeout: Duration) {
        let plan = &self.plan;
        let (targets, owner) = match query.guild() {
            Some(guild) => {
                let shard = plan_shard(guild, plan.shard_total);
                let Some(cluster) = plan
                    .clusters
                    .iter()
                    .find(|c| (c.first_shard..=c.last_shard).contains(&shard))
                else {
                    let refusal = Refusal::Invalid(format!(
                        "guild {guild} is on shard {shard}, which this fleet does not run"
                    ));
                    self.answer(waiter, Reply::Refused(refusal));
                    return;
                };
                let owner = Target::Cluster(cluster.id);
                (vec![owner.clone()], Some(owner))
            }
            None => (
                plan.clusters
                    .iter()
                    .map(|c| Target::Cluster(c.id))
                    .collect(),
                None,
            ),
        };
        if targets.is_empty() {
            self.answer(waiter, Reply::Found(None));
            return;
        }
        let search = self.next_id();
        self.searches.insert(
            search,
            Search {
                waiter,
                remaining: targets.len(),
                owner,
            },
        );
        for target in targets {
            self.forward(
                from,
                target,
                Ask::Fetch(query),
                timeout,
                Route::Search(search),
            );
        }
    }

    /// Sends a command or lookup to one target's live process (or runs the admiral's own
    /// command handler).
    fn forward(
        &mut self,
        from: &Target,
        target: Target,
        ask: Ask,
        timeout: Duration,
        route: Route,
    ) {
        let id = self.next_id();
        // Answer a little before the asker gives up, so it hears "timed out" from us.
        let deadline = timeout.saturating_sub(timeout / 20);
        if target == Target::Admiral {
            let Ask::Command(payload) = ask else {
                self.complete(route, target, Outcome::Unavailable);
                return;
            };
            let timer = self.arm(Timer::Forward(id), deadline);
            self.forwards.insert(
                id,
                Forward {
                    process: ADMIRAL_PROCESS,
                    target: target.clone(),
                    route,
                    timer,
                },
            );
            let run = self.ipc.run_command(from.clone(), payload, deadline);
            let inbox = self.inbox.clone();
            tokio::spawn(async move {
                let outcome = run.await;
                let _ = inbox
                    .send(Inbox::Answer {
                        forward: id,
                        outcome,
                    })
                    .await;
            });
            return;
        }
        let process = if let Ok(conn) = self.live_conn(&target) {
            self.conns[&conn]
                .process
                .expect("live connections have a process")
        } else {
            self.complete(route, target, Outcome::Unavailable);
            return;
        };
        let conn = self.processes[&process].conn.expect("live_conn found it");
        let down = match ask {
            Ask::Command(payload) => Down::Command {
                id,
                from: from.clone(),
                payload,
                timeout_ms: deadline.as_millis() as u64,
            },
            Ask::Fetch(query) => Down::Fetch { id, query },
        };
        if let Err(refusal) = self
            .encode(&down)
            .and_then(|body| self.send_body(conn, body))
        {
            tracing::warn!(target: "fleet::ipc", %target, %refusal, "command not delivered");
            self.complete(route, target, Outcome::Unavailable);
            return;
        }
        let timer = self.arm(Timer::Forward(id), deadline);
        self.forwards.insert(
            id,
            Forward {
                process,
                target,
                route,
                timer,
            },
        );
    }

    /// A forwarded command finished (answer, timeout, or its worker went away).
    fn resolve(&mut self, id: u64, outcome: Outcome, expired: bool) {
        let Some(forward) = self.forwards.remove(&id) else {
            return;
        };
        if !expired {
            self.timers.remove(&forward.timer);
        }
        self.complete(forward.route, forward.target, outcome);
    }

    fn complete(&mut self, route: Route, target: Target, outcome: Outcome) {
        match route {
            Route::Single(waiter) => self.answer(waiter, Reply::Outcome(outcome)),
            Route::Search(search) => self.searched(search, target, outcome),
            Route::Part(fanout) => {
                if let Some(f) = self.fanouts.get_mut(&fanout) {
                    f.outcomes.insert(target, outcome);
                    f.remaining -= 1;
                    if f.remaining == 0 {
                        self.finish_fanout(fanout);
                    }
                }
            }
        }
    }

    /// One target of a fetch answered: the first hit answers the asker at once.
    fn searched(&mut self, search: u64, target: Target, outcome: Outcome) {
        let Some(s) = self.searches.get_mut(&search) else {
            return; // Already answered by an earlier hit.
        };
        s.remaining -= 1;
        let reply = match outcome {
            Outcome::Ok(found) if !found.as_bytes().is_empty() => Some(Reply::Found(Some(found))),
            Outcome::Unavailable if s.owner.is_some() => {
                Some(Reply::Refused(Refusal::Unavailable(target)))
            }
            Outcome::TimedOut if s.owner.is_some() => {
                Some(Reply::Outcomes(vec![(target, Outcome::TimedOut)]))
            }
            Outcome::Error(error) => {
                tracing::warn!(target: "fleet::ipc", %target, %error, "a cache lookup failed");
                (s.remaining == 0).then_some(Reply::Found(None))
            }
            _ => (s.remaining == 0).then_some(Reply::Found(None)),
        };
        if let Some(reply) = reply
            && let Some(s) = self.searches.remove(&search)
        {
            self.answer(s.waiter, reply);
        }
    }

    fn finish_fanout(&mut self, fanout: u64) {
        if let Some(f) = self.fanouts.remove(&fanout) {
            self.answer(f.waiter, Reply::Outcomes(f.outcomes.into_iter().collect()));
        }
    }

    fn answer(&mut self, waiter: Waiter, reply: Reply) {
        match waiter {
            Waiter::Local(tx) => {
                let _ = tx.send(reply);
            }
            Waiter::Conn(conn, id) => {
                if let Some(state) = self.conns.get_mut(&conn) {
                    state.requests = state.requests.saturating_sub(1);
                }
                self.send(conn, &Down::Reply { id, reply });
            }
        }
    }

    // ---- routing helpers ---------------------------------------------------------------------

    fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn known(&self, target: &Target) -> Result<(), Refusal> {
        let exists = match target {
            Target::Admiral => true,
            Target::Cluster(id) => self.lifecycle.worker(&WorkerId::Cluster(*id)).is_some(),
            Target::Service(name) => self
                .lifecycle
                .worker(&WorkerId::Service(name.clone()))
                .is_some(),
        };
        if exists {
            Ok(())
        } else {
            Err(Refusal::UnknownTarget(target.clone()))
        }
    }

    /// The connection serving a worker's traffic now.
    fn live_conn(&self, target: &Target) -> Result<ConnId, Refusal> {
        self.known(target)?;
        let id = match target {
            Target::Admiral => {
                return Err(Refusal::Invalid("the admiral has no connection".into()));
            }
            Target::Cluster(id) => WorkerId::Cluster(*id),
            Target::Service(name) => WorkerId::Service(name.clone()),
        };
        self.lifecycle
            .live_process(&id)
            .and_then(|p| self.processes.get(&p))
            .and_then(|i| i.conn)
            .ok_or_else(|| Refusal::Unavailable(target.clone()))
    }

    /// Connections of workers that receive broadcasts: the current process of each starting or
    /// live worker.
    fn serving_conns(&self) -> impl Iterator<Item = ConnId> + '_ {
        self.lifecycle
            .workers()
            .filter(|w| matches!(w.state, State::Starting | State::Live))
            .filter_map(|w| w.process)
            .filter_map(|p| self.processes.get(&p).and_then(|i| i.conn))
    }

    fn encode(&self, down: &Down) -> Result<Bytes, Refusal> {
        frame::encode(down, self.config.max_frame).map_err(|e| Refusal::Invalid(e.to_string()))
    }

    fn send(&mut self, conn: ConnId, down: &Down) {
        match self.encode(down) {
            Ok(body) => {
                if let Err(refusal) = self.send_body(conn, body) {
                    tracing::warn!(target: "fleet::ipc", conn, %refusal, "reply not delivered");
                }
            }
            Err(refusal) => {
                tracing::error!(target: "fleet::ipc", conn, %refusal, "reply not encodable");
            }
        }
    }

    fn send_body(&self, conn: ConnId, body: Bytes) -> Result<(), Refusal> {
        let Some(c) = self.conns.get(&conn) else {
            return Ok(()); // Gone: its process's exit is handled separately.
        };
        c.writer.try_send(body).map_err(|error| match error {
            mpsc::error::TrySendError::Full(_) => {
                let target = c
                    .process
                    .and_then(|p| self.lifecycle.worker_of(p))
                    .map_or(Target::Admiral, WorkerId::target);
                Refusal::Overloaded(target)
            }
            mpsc::error::TrySendError::Closed(_) => Refusal::Invalid("connection closing".into()),
        })
    }

    // ---- lifecycle ---------------------------------------------------------------------------

    fn lifecycle_input(&mut self, input: Input) {
        self.lifecycle.advance_clock(self.started.elapsed());
        let commands = self.lifecycle.handle(input);
        for command in commands {
            self.execute(command);
        }
    }

    fn execute(&mut self, command: Command) {
        match command {
            Command::Spawn { worker, process } => {
                let env = WorkerEnv {
                    socket: self.socket.clone(),
                    secret: self.secret.clone(),
                    process,
                    max_frame: self.config.max_frame,
                    timeout: self.config.request_timeout,
                }
                .vars();
                let request = SpawnRequest {
                    command: &self.config.worker_command,
                    worker: &worker,
                    process,
                    env,
                    echo: self.config.echo_output,
                };
                tracing::debug!(target: "fleet::admiral", %worker, process, "spawning");
                if let Err(error) = process::spawn(&request, self.inbox.clone(), &self.events) {
                    self.lifecycle_input(Input::SpawnFailed(process, error.to_string()));
                }
            }
            Command::ArmStartTimer { process, after } => {
                self.arm(Timer::Start(process), after);
            }
            Command::Stop { process, grace } => {
                match self.processes.get(&process).and_then(|i| i.conn) {
                    Some(conn) => self.send(
                        conn,
                        &Down::Shutdown {
                            grace_ms: grace.as_millis() as u64,
                        },
                    ),
                    None => self.kill(process),
                }
                self.arm(Timer::Kill(process), grace);
            }
            Command::Kill(process) => self.kill(process),
            Command::ArmRestartTimer { worker, after } => {
                self.arm(Timer::Restart(worker), after);
            }
            Command::KillAfter { process, after } => {
                self.arm(Timer::Kill(process), after);
            }
            Command::HandOver { from, to } => {
                self.handovers.insert(from, to);
                match self.processes.get(&from).and_then(|i| i.conn) {
                    Some(conn) => self.send(conn, &Down::HandOver),
                    // Gone already: its own exit fails the worker; the replacement starts fresh.
                    None => {
                        if let Some(conn) = self.processes.get(&to).and_then(|i| i.conn) {
                            self.send(conn, &Down::Sessions(Vec::new()));
                        }
                    }
                }
            }
            Command::ArmDrain { after } => {
                self.arm(Timer::Drain, after);
            }
            Command::Activate(process) => {
                if let Some(conn) = self.processes.get(&process).and_then(|i| i.conn) {
                    self.send(conn, &Down::Activate);
                }
            }
            Command::ArmNotice { worker, after } => {
                self.arm(Timer::Notice(worker), after);
            }
            Command::TakeBack { process } => {
                self.handovers.remove(&process);
                if let (Some(sessions), Some(conn)) = (
                    self.held_sessions.remove(&process),
                    self.processes.get(&process).and_then(|i| i.conn),
                ) {
                    tracing::info!(target: "fleet::admiral", process, "giving the sessions back");
                    self.send(conn, &Down::Sessions(sessions));
                }
            }
            Command::Emit(event) => {
                // The plan changes before anyone hears of the new generation.
                if matches!(event, LifecycleEvent::Resharded { .. })
                    && let Some(next) = self.next_plan.take()
                {
                    tracing::info!(target: "fleet::admiral", shards = next.shard_total, "the new generation is live");
                    self.plan = next.clone();
                    let _ = self.plan_tx.send(next);
                }
                // Published first: what it triggers (a next restart, say) comes after it.
                let _ = self.events.send(FleetEvent::Lifecycle(event.clone()));
                match &event {
                    LifecycleEvent::Replaced { worker, old, .. } => {
                        self.handovers.remove(old);
                        self.held_sessions.remove(old);
                        self.finish_restart(worker, Ok(()));
                    }
                    LifecycleEvent::SoftKillPending {
                        process, notice, ..
                    } => {
                        if let Some(conn) = self.processes.get(process).and_then(|i| i.conn) {
                            let notice_ms = notice.as_millis() as u64;
                            let down = Down::Message {
                                from: Target::Admiral,
                                event: super::SOFT_KILL_EVENT.to_owned(),
                                payload: Payload::encode(&notice_ms).unwrap_or_default(),
                            };
                            self.send(conn, &down);
                        }
                    }
                    LifecycleEvent::WorkerStopped(worker) => {
                        for waiter in self.stop_waiters.remove(worker).unwrap_or_default() {
                            self.answer(waiter, Reply::Done);
                        }
                    }
                    LifecycleEvent::Resharded { .. } => {
                        if let Some(waiter) = self.reshard_waiter.take() {
                            self.answer(waiter, Reply::Done);
                        }
                    }
                    LifecycleEvent::ReshardFailed { reason } => {
                        self.next_plan = None;
                        if let Some(waiter) = self.reshard_waiter.take() {
                            let refusal = Refusal::ReshardFailed(reason.clone());
                            self.answer(waiter, Reply::Refused(refusal));
                        }
                    }
                    LifecycleEvent::RestartFailed { worker, reason } => {
                        self.finish_restart(worker, Err(reason));
                    }
                    LifecycleEvent::AllReady { live, failed } => {
                        tracing::info!(target: "fleet::admiral", live, failed, "fleet launched");
                        let _ = self.ready.send(Some((*live, *failed)));
                    }
                    LifecycleEvent::Ready(worker) => {
                        tracing::info!(target: "fleet::admiral", %worker, "ready");
                        // The end of a hard restart.
                        self.finish_restart(worker, Ok(()));
                    }
                    LifecycleEvent::Failed { worker, reason } => {
                        tracing::warn!(target: "fleet::admiral", %worker, %reason, "failed");
                        self.finish_restart(worker, Err(reason));
                    }
                    _ => {}
                }
            }
        }
    }

    /// Starts the next restarts of a rolling restart, or answers it once all are done.
    fn roll(&mut self, rolling: u64) {
        loop {
            let Some(r) = self.rollings.get_mut(&rolling) else {
                return;
            };
            if r.running.len() >= r.at_once {
                return;
            }
            let Some(next) = r.queue.pop_front() else {
                if r.running.is_empty() {
                    let r = self.rollings.remove(&rolling).expect("present");
                    self.answer(r.waiter, Reply::Outcomes(r.outcomes.into_iter().collect()));
                }
                return;
            };
            let mode = r.mode;
            if let Err(reason) = self.lifecycle.can_restart(&next) {
                r.outcomes.insert(next.target(), Outcome::Error(reason));
                continue;
            }
            r.running.push(next.clone());
            tracing::info!(target: "fleet::admiral", worker = %next, ?mode, "rolling restart");
            self.lifecycle_input(Input::Restart(next, mode));
        }
    }

    /// Answers everyone waiting for a restart of `worker`.
    fn finish_restart(&mut self, worker: &WorkerId, result: Result<(), &str>) {
        let rolling = self
            .rollings
            .iter()
            .find(|(_, r)| r.running.contains(worker))
            .map(|(id, _)| *id);
        if let Some(rolling) = rolling
            && let Some(r) = self.rollings.get_mut(&rolling)
        {
            r.running.retain(|w| w != worker);
            let outcome = match result {
                Ok(()) => Outcome::Ok(Payload::empty()),
                Err(reason) => Outcome::Error(reason.to_owned()),
            };
            r.outcomes.insert(worker.target(), outcome);
            self.roll(rolling);
        }
        for waiter in self.restart_waiters.remove(worker).unwrap_or_default() {
            let reply = match &result {
                Ok(()) => Reply::Done,
                Err(reason) => Reply::Refused(Refusal::RestartFailed((*reason).to_owned())),
            };
            self.answer(waiter, reply);
        }
    }

    /// Sets a timer, never further out than [`MAX_TIMEOUT`] (the timer wheel panics past about
    /// two years, and durations come from options and other processes).
    fn arm(&mut self, timer: Timer, after: Duration) -> delay_queue::Key {
        self.timers.insert(timer, after.min(MAX_TIMEOUT))
    }

    fn kill(&mut self, process: ProcessId) {
        if let Some(kill) = self.processes.get_mut(&process).and_then(|i| i.kill.take()) {
            let _ = kill.send(());
        }
    }
}

/// The shard that holds `guild`: `(guild_id >> 22) % shard_total`.
fn plan_shard(guild: u64, shard_total: u32) -> u32 {
    ((guild >> 22) % u64::from(shard_total.max(1))) as u32
}
