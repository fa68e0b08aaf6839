//! The admiral's actor: one task that owns the connections, the routing table, calls in flight
//! and their deadlines, the central store, identify grants and the [`Lifecycle`]. Socket reader
//! tasks, process watchers and the admiral's own [`Ipc`] feed it through channels ([`Inbox`]);
//! it never blocks on a worker (each connection has a bounded queue, and a full queue is
//! answered with [`Refusal::Overloaded`] rather than waited on).
//!
//! This file is the loop and the dispatch. Each concern has a file of its own:
//! - `connections`: the connection and process tables, and the one way out to a worker;
//! - `calls`: call correlation (forwards, fan-outs, searches, deadlines), a plain table;
//! - `supervision`: hellos, closes, exits, heartbeats, and carrying out the lifecycle's commands;
//! - `adoption`: taking over the workers a lost admiral left;
//! - `hosts`: this host's part of a fleet on several hosts (ranges taken, lost and fenced);
//! - `remote`: calls and broadcasts to the clusters of the bot's other hosts, over the bus;
//! - `split`: a reshard of a bot split across hosts, readied on every host and live at once;
//! - one file per request family: `messaging`, `commands`, `fetch`, `store`, `identify`,
//!   `stats` (the admiral's shard and process records, and stats rounds), `control` (stop,
//!   restart, rolling restarts, reshards and what their waiters hear), `services` (services
//!   created at runtime), and `subscriptions`
//!   (every event the router publishes, and the workers subscribed to them).

mod adoption;
mod calls;
mod commands;
mod connections;
mod control;
mod deploy;
mod fetch;
mod hosts;
mod identify;
pub(crate) mod inbox;
mod messaging;
mod remote;
mod services;
mod split;
mod stats;
mod store;
mod subscriptions;
mod supervision;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use tokio::sync::{broadcast, mpsc, watch};
use tokio_util::time::{DelayQueue, delay_queue};

use self::calls::{Answer, Calls, Waiter};
use self::connections::Connections;
use self::inbox::{ConnId, Inbox};
use self::store::{MemoryStore, Store};
use super::lifecycle::{Input, Lifecycle, ProcessId};
use super::{AdmiralConfig, FleetEvent, ShardPlan, WorkerStatus};
use crate::identify::IdentifyQueue;
use crate::ipc::client::{Ipc, LocalRequest};
use crate::ipc::proto::{Down, MAX_TIMEOUT, Refusal, Reply, Request, Target, Up, clamp_timeout};

/// Inbox messages handled in one turn at most, so the frames they make are not held back long.
const BATCH: usize = 256;

/// The router's own timers (forward deadlines live in [`Calls`], the workers' in the
/// [`Lifecycle`]).
#[derive(Debug, Clone, Copy)]
enum Timer {
    ExitDrain(ProcessId),
    Heartbeat,
    Stats,
    Adoption,
    StoreSnapshot,
    HandOff,
    FencedGrants,
    /// The other hosts' stats snapshots are due.
    StatsGather,
    /// A cluster being handed on to another host is due to have handed its sessions over.
    Give(u32),
    /// The reshard of the split bot under way is due to have gone live.
    SplitReshard,
}

pub(crate) struct Router {
    config: Arc<AdmiralConfig>,
    socket: PathBuf,
    secret: crate::Secret,
    lifecycle: Lifecycle,
    links: Connections,
    calls: Calls,
    control: control::Waiting,
    /// The shard plan clusters serve now.
    plan: ShardPlan,
    /// The plan of the generation a reshard is starting.
    next_plan: Option<ShardPlan>,
    /// Reshards that went live: the current plan's generation.
    generation: u32,
    plan_tx: watch::Sender<ShardPlan>,
    timers: DelayQueue<Timer>,
    store: Box<dyn Store>,
    stats: stats::StatsBook,
    identify: Arc<dyn IdentifyQueue>,
    ipc: Ipc,
    inbox: mpsc::Sender<Inbox>,
    events: broadcast::Sender<FleetEvent>,
    /// The admiral events the admiral's own handle subscribed to.
    admiral_topics: crate::ipc::proto::Topics,
    ready: watch::Sender<Option<(usize, usize)>>,
    started: tokio::time::Instant,
    /// The runtime the admiral was started on: user code (the admiral's command handler,
    /// Discord's recommendation) runs there, never on the router's thread.
    user: tokio::runtime::Handle,
    /// The build worker processes run (`FleetOptions::worker_command`, then each deploy's).
    command: Arc<super::WorkerCommand>,
    /// Workers whose next process runs another build, while a deploy moves them.
    builds: std::collections::HashMap<super::WorkerId, Arc<super::WorkerCommand>>,
    /// The deploy under way.
    deploying: Option<deploy::Deploying>,
    /// Identifies granted since the start.
    identifies_granted: u64,
    /// The stable directory, when workers outlive their admiral.
    adoption: Option<adoption::Adoption>,
    /// The admiral's own program, to re-execute it after a deploy.
    own: Option<super::OwnCommand>,
    /// Identifies granted while this host was fenced: answered once the fence lifts.
    fenced_grants: Vec<(Waiter, u32)>,
    /// Stopping on several hosts: the ranges are being handed to the other hosts first.
    handing_off: bool,
    /// The bot's other hosts, on several hosts: who runs which range, asks open.
    remote: remote::Remote,
    /// Until when this host's clusters may run their shards (the last lease renewal's
    /// licence), on several hosts.
    licence_until: Option<tokio::time::Instant>,
    /// Clusters being handed on to another host (a planned move), and their processes.
    giving: std::collections::BTreeMap<u32, ProcessId>,
    /// A reshard of the bot split across hosts under way.
    split: Option<split::SplitReshard>,
    /// The services run once per bot, on several hosts: which this host runs.
    singletons: hosts::Singletons,
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
        user: tokio::runtime::Handle,
    ) -> Self {
        // On several hosts with ranges assigned in Redis, clusters start as they are taken.
        let clusters = if config.host_checkpoints.is_some() {
            // Unless this admiral adopts the clusters of the ranges its last one ran.
            config.host_adoptable.clone()
        } else {
            config.plan.clusters.iter().map(|c| c.id).collect()
        };
        // On several hosts, a service run once per bot starts when Redis assigns it here
        // (unless this admiral adopts it from the last one).
        let (singletons, services) = hosts::Singletons::split(
            &config.services,
            config.host_checkpoints.is_some(),
            &config.host_adoptable_services,
        );
        let lifecycle = Lifecycle::new(services, clusters, config.timeouts)
            .with_restarts(config.restart)
            .with_soft_kill_notice(config.soft_kill_notice);
        let command = Arc::new(config.worker_command.clone());
        Self {
            identify: config.identify.clone(),
            links: Connections::new(config.max_frame),
            store: Box::new(MemoryStore::new(
                config.store_limit,
                config.max_frame.saturating_sub(1024),
            )),
            stats: stats::StatsBook::default(),
            plan: config.plan.clone(),
            config,
            socket,
            secret,
            lifecycle,
            calls: Calls::default(),
            control: control::Waiting::default(),
            next_plan: None,
            generation: 0,
            plan_tx,
            timers: DelayQueue::new(),
            ipc,
            inbox,
            events,
            admiral_topics: crate::ipc::proto::Topics::NONE,
            ready,
            started: tokio::time::Instant::now(),
            user,
            command,
            builds: std::collections::HashMap::new(),
            deploying: None,
            identifies_granted: 0,
            adoption: None,
            own: None,
            fenced_grants: Vec::new(),
            handing_off: false,
            remote: remote::Remote::default(),
            licence_until: None,
            giving: std::collections::BTreeMap::new(),
            split: None,
            singletons,
        }
    }

    /// Re-executes `own` when a deploy asks it to.
    pub(crate) fn restarts_as(mut self, own: Option<super::OwnCommand>) -> Self {
        self.own = own;
        self
    }

    /// Records its workers in stable directory `dir`, and waits for the last admiral's workers
    /// (`waiting`, their pids) to rejoin before it launches.
    pub(crate) fn with_stable_dir(mut self, dir: PathBuf, waiting: Vec<u32>) -> Self {
        self.adoption = Some(adoption::Adoption::new(dir, waiting));
        self
    }

    /// Runs until every worker has stopped after a shutdown.
    pub(crate) async fn run(
        mut self,
        mut inbox: mpsc::Receiver<Inbox>,
        mut local: mpsc::Receiver<LocalRequest>,
    ) {
        // Wakes the router at the lifecycle's next deadline ([`Lifecycle::poll_timeout`]). Made
        // here, so it runs on the router's own runtime.
        let mut deadline = Box::pin(tokio::time::sleep(Duration::ZERO));
        let mut deadline_at = None;
        self.restore_store();
        if self.adoption.is_some() {
            self.arm(Timer::StoreSnapshot, adoption::STORE_EVERY);
        }
        self.launch_or_adopt();
        if let Some(heartbeat) = self.config.heartbeat {
            self.arm(Timer::Heartbeat, heartbeat.interval);
        }
        self.arm_stats();
        while !self.lifecycle.is_stopped() {
            // What one turn sends is written at its end, one write per connection.
            self.links.begin_batch();
            let lifecycle_due = self.lifecycle.poll_timeout();
            if lifecycle_due != deadline_at {
                deadline_at = lifecycle_due;
                if let Some(at) = lifecycle_due {
                    deadline.as_mut().reset(self.started + at);
                }
            }
            tokio::select! {
                message = inbox.recv() => match message {
                    Some(message) => self.on_inbox(message),
                    None => break,
                },
                Some(request) = local.recv() => self.on_local(request),
                Some(expired) = self.timers.next(), if !self.timers.is_empty() => {
                    self.on_timer(expired.into_inner());
                }
                () = &mut deadline, if deadline_at.is_some() => {
                    deadline_at = None;
                    let commands = self.lifecycle.handle_timeout(self.started.elapsed());
                    for command in commands {
                        self.execute(command);
                    }
                }
                Some(due) = self.calls.next_expired(), if self.calls.has_deadlines() => {
                    if let Some(answer) = due {
                        self.answer(answer);
                    }
                }
            }
            // What arrived meanwhile joins the batch.
            for _ in 0..BATCH {
                if let Ok(message) = inbox.try_recv() {
                    self.on_inbox(message);
                } else if let Ok(request) = local.try_recv() {
                    self.on_local(request);
                } else {
                    break;
                }
            }
            self.links.end_batch();
        }
        tracing::info!(target: "fleet::shutdown", "every worker has stopped");
    }

    /// A request from the admiral's own handle.
    fn on_local(&mut self, request: LocalRequest) {
        let timeout = request.timeout.min(MAX_TIMEOUT);
        let waiter = Waiter::Local(request.reply);
        self.on_request(&Target::Admiral, waiter, request.request, timeout);
    }

    fn on_inbox(&mut self, message: Inbox) {
        match message {
            Inbox::Connected { conn, outbox } => self.links.connected(conn, outbox),
            Inbox::Hello {
                conn,
                secret,
                process,
                protocol,
                build,
                admitted,
            } => {
                let ok = self.on_hello(conn, &secret, process, protocol, &build);
                let _ = admitted.send(ok);
            }
            Inbox::Challenge { conn, nonce } => self.on_challenge(conn, &nonce),
            Inbox::Rejoin {
                conn,
                rejoin,
                peer,
                admitted,
            } => {
                let ok = self.on_rejoin(conn, &rejoin, peer);
                let _ = admitted.send(ok);
            }
            Inbox::Up { conn, up } => self.on_up(conn, up),
            Inbox::Closed { conn, error } => self.on_closed(conn, error),
            Inbox::Granted { waiter, shard } if self.fenced_now() => {
                // No shard of a fenced host connects: the grant waits for the fence to lift.
                self.hold_grant(waiter, shard);
            }
            Inbox::Granted { waiter, shard } => {
                self.stats.identified(shard);
                self.identifies_granted += 1;
                self.reply(waiter, Reply::Done);
            }
            Inbox::Stats { asked_for, stats } => self.stats_done(asked_for, stats),
            Inbox::Stored { waiter, reply } => self.reply(waiter, reply),
            Inbox::Answer { forward, outcome } => {
                if let Some(answer) = self.calls.answered(forward, None, outcome) {
                    self.answer(answer);
                }
            }
            Inbox::Spawned { process, pid, kill } => {
                let info = self.links.processes.entry(process).or_default();
                info.pid = pid;
                info.kill = Some(kill);
                info.started.get_or_insert_with(tokio::time::Instant::now);
                self.record_workers();
            }
            Inbox::Exited { process, code } => self.on_exited(process, code),
            Inbox::Recommended {
                waiter,
                count,
                clusters,
                recommended,
            } => match recommended {
                Ok(recommended) => self.reshard(waiter, count, recommended, clusters),
                Err(error) => {
                    let reason = format!("GET /gateway/bot failed: {error}");
                    self.reply(waiter, Reply::Refused(Refusal::ReshardFailed(reason)));
                }
            },
            Inbox::Shutdown => self.total_shutdown(),
            Inbox::Host(event) => self.on_host(event),
            Inbox::SaveStore(done) => self.save_store(true, Some(done)),
            Inbox::Build {
                worker,
                build,
                done,
            } => {
                self.set_build(worker, build);
                let _ = done.send(());
            }
            Inbox::Deployed { waiter, report } => self.deployed(waiter, report),
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
                            .and_then(|p| self.links.processes.get(&p))
                            .and_then(|i| i.pid),
                        checkpointed: w.process.map_or(0, |p| self.lifecycle.checkpointed(p)),
                        build: w
                            .process
                            .and_then(|p| self.links.processes.get(&p))
                            .map(|i| i.build.clone())
                            .filter(|b| !b.is_empty()),
                    })
                    .collect();
                let _ = reply.send(workers);
            }
        }
    }

    /// A frame from an admitted connection.
    fn on_up(&mut self, conn: ConnId, up: Up) {
        let Some(process) = self.links.process_of(conn) else {
            return;
        };
        match up {
            Up::Request {
                id,
                timeout_ms,
                request,
            } => {
                // A worker's requests in flight are capped (its own handle allows far fewer), so
                // no worker can make the admiral hold unbounded state for it.
                if !self.links.begin_request(conn) {
                    let reply = Reply::Refused(Refusal::Overloaded(Target::Admiral));
                    self.links.send(conn, &Down::Reply { id, reply });
                    return;
                }
                let Some((_, from)) = self.links.admitted(conn) else {
                    return;
                };
                let timeout = clamp_timeout(timeout_ms);
                self.on_request(&from, Waiter::Conn(conn, id), request, timeout);
            }
            Up::Reply { id, outcome } => {
                if let Some(answer) = self.calls.answered(id, Some(process), outcome) {
                    self.answer(answer);
                }
            }
            other => {
                if let Some(worker) = self.lifecycle.worker_of(process).cloned() {
                    self.on_report(&worker, process, other);
                }
            }
        }
    }

    /// One request, from a worker or the admiral's own handle, to the handler of its family.
    fn on_request(&mut self, from: &Target, waiter: Waiter, request: Request, timeout: Duration) {
        match request {
            Request::Broadcast { event, payload } => self.broadcast(from, waiter, event, payload),
            Request::SendTo {
                target,
                event,
                payload,
            } => self.send_to(from, waiter, target, event, payload, timeout),
            Request::Command { target, payload } => {
                self.command(from, waiter, target, payload, timeout);
            }
            Request::CommandShard { shard, payload } => {
                self.command_shard(from, waiter, shard, &payload, timeout);
            }
            Request::CommandGuild { guild, payload } => {
                self.command_guild(from, waiter, guild, &payload, timeout);
            }
            Request::CommandAll { group, payload } => {
                self.command_all(from, waiter, group, &payload, timeout);
            }
            Request::CountGuilds => self.count_guilds(from, waiter, timeout),
            Request::Fetch(query) => self.fetch(from, waiter, query, timeout),
            Request::Store(operation) => self.store(waiter, operation),
            Request::Identify { shard } => self.identify(from, waiter, shard),
            Request::Stop { ref worker }
            | Request::StopNow { ref worker }
            | Request::Restart { ref worker, .. }
                if self.remote_owner(worker).is_some() =>
            {
                let worker = worker.clone();
                self.relay(from, waiter, worker, request, timeout);
            }
            Request::Stop { worker } => self.stop(waiter, worker, false),
            Request::StopNow { worker } => self.stop(waiter, worker, true),
            Request::Shutdown => {
                // Answered first: the asker is shut down with everyone else.
                self.reply(waiter, Reply::Done);
                self.total_shutdown();
            }
            Request::Workers if self.config.host_bus.is_some() => {
                self.workers_of_hosts(from, waiter, timeout);
            }
            Request::Workers => self.workers(waiter),
            Request::Restart { worker, mode } => self.restart(waiter, worker, mode),
            Request::RestartAll {
                group: crate::ipc::proto::Group::Clusters,
                mode,
                at_once,
            } if self.config.host_bus.is_some() => {
                self.restart_all_hosts(from, waiter, mode, at_once, timeout);
            }
            Request::RestartAll {
                group,
                mode,
                at_once,
            } => self.restart_all(waiter, group, mode, at_once),
            Request::Reshard { count, clusters } => self.request_reshard(waiter, count, clusters),
            Request::Subscribe { topics } => self.subscribe(waiter, &topics),
            Request::Deploy(plan) => self.deploy(waiter, *plan),
            Request::CreateService {
                name,
                kind,
                depends_on,
                start_timeout_ms,
            } => {
                let spec = services::spec(name, kind, depends_on, start_timeout_ms);
                self.create_service(waiter, spec);
            }
            Request::Stats { deadline_ms } => {
                self.stats(waiter, Duration::from_millis(deadline_ms), timeout, true);
            }
        }
    }

    /// Answers whoever waits.
    fn reply(&mut self, waiter: Waiter, reply: Reply) {
        match waiter {
            Waiter::Local(tx) => {
                let _ = tx.send(reply);
            }
            Waiter::Conn(conn, id) => {
                self.links.end_request(conn);
                self.links.send(conn, &Down::Reply { id, reply });
            }
            Waiter::Remote { host, id, whole } => self.reply_remote(host, id, whole, reply),
            Waiter::Merge { id, covers } => self.merge_part(id, &covers, reply),
        }
    }

    fn answer(&mut self, answer: Answer) {
        self.reply(answer.waiter, answer.reply);
    }

    fn on_timer(&mut self, timer: Timer) {
        match timer {
            Timer::ExitDrain(process) => self.exit_drained(process),
            Timer::Heartbeat => self.heartbeat(),
            Timer::Stats => self.stats_interval(),
            Timer::Adoption => self.check_adoption(),
            Timer::HandOff => self.handed_off(),
            Timer::FencedGrants => self.release_fenced_grants(),
            Timer::StatsGather => self.stats_gathered(true),
            Timer::Give(cluster) => self.give_due(cluster),
            Timer::SplitReshard => self.split_due(),
            Timer::StoreSnapshot => {
                self.save_store(false, None);
                self.arm(Timer::StoreSnapshot, adoption::STORE_EVERY);
            }
        }
    }

    /// Feeds the lifecycle and carries out what it decides.
    fn lifecycle_input(&mut self, input: Input) {
        self.lifecycle.advance_clock(self.started.elapsed());
        let commands = self.lifecycle.handle(input);
        for command in commands {
            self.execute(command);
        }
    }

    /// Sets a timer, never further out than [`MAX_TIMEOUT`] (the timer wheel panics past about
    /// two years, and durations come from options and other processes).
    fn arm(&mut self, timer: Timer, after: Duration) -> delay_queue::Key {
        self.timers.insert(timer, after.min(MAX_TIMEOUT))
    }
}
