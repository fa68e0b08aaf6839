//! The process side of the router: admitting a connection's hello, handling closes and exits,
//! heartbeats, what workers report about themselves, and carrying out the lifecycle's commands.

use std::time::Duration;

use super::connections::Exit;
use super::{Router, Timer};
use crate::admiral::lifecycle::{Admission, Command, Input, ProcessId, State, WorkerId};
use crate::admiral::process::{self, SpawnRequest};
use crate::admiral::{FleetEvent, MAX_CLUSTER_DATA};
use crate::ipc::link::WorkerEnv;
use crate::ipc::proto::{
    Assignment, ClusterAssignment, Down, PROTOCOL_VERSION, Payload, ShardSession, Status, Topology,
    Up,
};
use crate::rest::RestProxy;

/// How long an exited process's connection may take to drain before the exit is handled anyway.
const EXIT_DRAIN: Duration = Duration::from_secs(2);

/// The longest session id a checkpoint may carry (Discord's are 32 hex digits).
const MAX_SESSION_ID: usize = 256;

/// The longest resume URL a checkpoint may carry.
const MAX_RESUME_URL: usize = 2048;

impl Router {
    /// Admits a connection's process, or refuses it (and forgets the connection); says which.
    pub(super) fn on_hello(
        &mut self,
        conn: u64,
        secret: &crate::Secret,
        process: ProcessId,
        protocol: u32,
        build: &str,
    ) -> bool {
        let proven = self.secret.matches(secret.expose());
        let admitted = if !proven {
            Err("wrong secret".to_owned())
        } else if protocol != PROTOCOL_VERSION {
            Err(format!(
                "the worker (build {build:?}) speaks IPC protocol {protocol}, this admiral (build {:?}) speaks {PROTOCOL_VERSION}; run workers and admiral of compatible builds",
                self.config.build
            ))
        } else if self.links.conn_of(process).is_some() {
            Err("process already connected".to_owned())
        } else {
            self.lifecycle.admit(process).map_err(str::to_owned)
        };
        let (worker, admission) = match admitted {
            Ok(admitted) => admitted,
            Err(problem) => {
                // One of the fleet's own is told why before the connection closes.
                self.refuse(conn, process, proven, &problem);
                return false;
            }
        };
        let (handover, standby) = match admission {
            Admission::Replacement { handover, standby } => (handover, standby),
            Admission::Current => (false, false),
        };
        // The sessions a crashed process left, if this one follows it.
        let resume = match admission {
            Admission::Current => self.lifecycle.take_resume(&worker),
            Admission::Replacement { .. } => Vec::new(),
        };
        // A process of a new generation runs the next plan; every other one the current plan.
        let plan = match (&self.next_plan, standby) {
            (Some(next), true) => next,
            _ => &self.plan,
        };
        let generation = self.generation + u32::from(standby && self.next_plan.is_some());
        let mut rest_key = None;
        let assignment = match &worker {
            WorkerId::Service(name) => Assignment::Service {
                name: name.clone(),
                kind: self
                    .lifecycle
                    .service(name)
                    .map_or_else(|| name.clone(), |s| s.kind.clone()),
            },
            WorkerId::Cluster(id) => {
                let Some(cluster) = plan.clusters.iter().find(|c| c.id == *id) else {
                    tracing::error!(target: "fleet::ipc", %worker, "no plan for this cluster");
                    self.links.remove(conn);
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
                    topology: Topology::new(
                        plan.shard_total,
                        plan.clusters
                            .iter()
                            .map(|c| (c.id, c.first_shard, c.last_shard))
                            .collect(),
                        process,
                        generation,
                    ),
                    data: self.cluster_data(*id, process),
                    checkpoint_ms: u64::try_from(self.config.checkpoint_interval.as_millis())
                        .unwrap_or(u64::MAX),
                    licence_ms: self.licence_ms(),
                    resume,
                })
            }
        };
        self.links.attach(conn, process, worker.target());
        let info = self.links.processes.entry(process).or_default();
        info.rest_key = rest_key;
        info.generation = generation;
        build.clone_into(&mut info.build);
        if let Assignment::Cluster(cluster) = &assignment
            && !cluster.resume.is_empty()
        {
            tracing::info!(target: "fleet::restart", %worker, process, shards = cluster.resume.len(), "resuming the sessions the crashed process left");
        }
        self.links.send(conn, &Down::Welcome(assignment));
        tracing::info!(target: "fleet::lifecycle", %worker, process, "connected; starting");
        self.lifecycle_input(Input::Hello(process));
        true
    }

    /// What the user's `cluster_data` function makes for cluster `id`: empty without one, or
    /// when it panics (reported as the cluster's panic) or makes more than [`MAX_CLUSTER_DATA`].
    fn cluster_data(&self, id: u32, process: ProcessId) -> Payload {
        let Some(make) = &self.config.cluster_data else {
            return Payload::empty();
        };
        match crate::panics::catch_sync(|| make(id)) {
            Ok(Ok(data)) if data.as_bytes().len() <= MAX_CLUSTER_DATA => data,
            Ok(Ok(data)) => {
                tracing::error!(target: "fleet::lifecycle", cluster = id, bytes = data.as_bytes().len(), "cluster data is larger than {MAX_CLUSTER_DATA} bytes; the cluster gets none");
                Payload::empty()
            }
            Ok(Err(error)) => {
                tracing::error!(target: "fleet::lifecycle", cluster = id, %error, "cluster data did not encode; the cluster gets none");
                Payload::empty()
            }
            Err(panicked) => {
                let report = panicked.report("cluster data", None, None);
                tracing::error!(target: "fleet::lifecycle", cluster = id, %report, "cluster data panicked; the cluster gets none");
                let _ = self.events.send(FleetEvent::Panic {
                    worker: WorkerId::Cluster(id),
                    process,
                    report,
                });
                Payload::empty()
            }
        }
    }

    /// What a worker reports about itself (everything but requests and replies).
    pub(super) fn on_report(&mut self, worker: &WorkerId, process: ProcessId, up: Up) {
        match up {
            Up::Pong { seq } => {
                let latency = self.stats.pong(seq);
                if let Some(info) = self.links.processes.get_mut(&process) {
                    info.last_seen = Some(tokio::time::Instant::now());
                    info.ipc_latency = latency.or(info.ipc_latency);
                }
            }
            Up::Hello { .. } | Up::Challenge { .. } | Up::Rejoin(_) => {
                tracing::warn!(target: "fleet::ipc", %worker, "ignoring a second hello");
            }
            Up::Status(Status::Ready) => self.lifecycle_input(Input::Ready(process)),
            Up::Status(Status::Prepared) => self.lifecycle_input(Input::Prepared(process)),
            Up::Checkpoint(sessions) => self.on_checkpoint(worker, process, sessions),
            Up::Sessions(sessions) if self.gave(process, &sessions) => {}
            Up::Sessions(sessions) => {
                tracing::info!(target: "fleet::restart", %worker, process, shards = sessions.len(), "sessions handed over");
                if let WorkerId::Cluster(cluster) = *worker {
                    self.checkpoint_to_redis(cluster, process, &sessions);
                }
                self.lifecycle_input(Input::SessionsHandedOver(process, sessions));
                self.hand_off_if_fenced();
            }
            Up::Status(Status::StartFailed(reason)) => {
                self.lifecycle_input(Input::StartFailed(process, reason));
            }
            Up::Status(Status::Shard { shard, event }) => {
                if let WorkerId::Cluster(cluster) = *worker {
                    tracing::info!(target: "fleet::shard", cluster, shard, ?event);
                    // Its IDENTIFY went out: the next in its bucket is spaced from now. Only a
                    // cluster's own shards: another's READY is not this one's to confirm.
                    if event == crate::ShardEvent::Ready
                        && self
                            .shards_of(process, cluster)
                            .is_some_and(|shards| shards.contains(&shard))
                    {
                        self.identify.confirmed(shard);
                    }
                    self.stats.shard(cluster, shard, process, &event);
                    let generation = self
                        .links
                        .processes
                        .get(&process)
                        .map_or(self.generation, |p| p.generation);
                    self.publish(FleetEvent::Shard {
                        cluster,
                        shard,
                        process,
                        generation,
                        event,
                    });
                }
            }
            Up::Status(Status::Panic(report)) => {
                tracing::error!(target: "fleet::worker", %worker, process, %report, "user code panicked");
                let _ = self.events.send(FleetEvent::Panic {
                    worker: worker.clone(),
                    process,
                    report,
                });
            }
            Up::Log(record) => {
                record.emit(&worker.target());
                let _ = self.events.send(FleetEvent::Log {
                    worker: worker.clone(),
                    process,
                    record,
                    at: std::time::SystemTime::now(),
                });
            }
            Up::Request { .. } | Up::Reply { .. } => {
                unreachable!("requests and replies are routed, not reported")
            }
        }
    }

    /// A cluster's checkpoint: only its own shards, with sane sizes, reach the lifecycle.
    fn on_checkpoint(
        &mut self,
        worker: &WorkerId,
        process: ProcessId,
        sessions: Vec<ShardSession>,
    ) {
        let WorkerId::Cluster(cluster) = *worker else {
            return self.protocol_error(worker, "a service sent a session checkpoint");
        };
        if self.config.checkpoint_interval.is_zero() {
            return; // Crash resume is off: a crash identifies afresh.
        }
        let Some(shards) = self.shards_of(process, cluster) else {
            return;
        };
        match check_checkpoint(&shards, &sessions) {
            Ok(()) => {
                self.checkpoint_to_redis(cluster, process, &sessions);
                self.lifecycle_input(Input::Checkpoint(process, sessions));
            }
            Err(problem) => self.protocol_error(worker, &problem),
        }
    }

    /// The shards cluster `cluster`'s process `process` runs, by the plan of its generation.
    fn shards_of(&self, process: ProcessId, cluster: u32) -> Option<std::ops::RangeInclusive<u32>> {
        self.plan_of(process)
            .and_then(|plan| plan.clusters.iter().find(|c| c.id == cluster))
            .map(|c| c.first_shard..=c.last_shard)
    }

    /// The plan of `process`'s generation: the current one, a reshard's next one, or none (an
    /// old generation's, once the new one took over).
    pub(super) fn plan_of(&self, process: ProcessId) -> Option<&crate::admiral::ShardPlan> {
        let generation = self
            .links
            .processes
            .get(&process)
            .map_or(self.generation, |p| p.generation);
        if generation == self.generation {
            Some(&self.plan)
        } else if generation == self.generation + 1 {
            self.next_plan.as_ref()
        } else {
            None
        }
    }

    /// Tells of a worker's frame that made no sense (it is dropped; the connection stays).
    fn protocol_error(&self, worker: &WorkerId, error: &str) {
        tracing::warn!(target: "fleet::ipc", %worker, error, "dropping a frame");
        let _ = self.events.send(FleetEvent::ProtocolError {
            worker: Some(worker.clone()),
            error: error.to_owned(),
        });
    }

    /// A process ended. What it sent before it died (a start failure, say) is read first: its
    /// connection closes once the reader has drained it.
    pub(super) fn on_exited(&mut self, process: ProcessId, code: Option<i32>) {
        match self.links.processes.get_mut(&process) {
            Some(info) if info.conn.is_some() => {
                info.exited = Some(Exit(code));
                self.arm(Timer::ExitDrain(process), EXIT_DRAIN);
            }
            _ => self.exited(process, code),
        }
    }

    /// The connection of a dead process did not close (something inherited its socket): the
    /// exit is handled now.
    pub(super) fn exit_drained(&mut self, process: ProcessId) {
        if let Some(conn) = self.links.conn_of(process) {
            tracing::warn!(target: "fleet::ipc", process, "a dead worker's connection stayed open; closing it");
            self.on_closed(conn, None);
        }
    }

    fn exited(&mut self, process: ProcessId, code: Option<i32>) {
        self.stats.process_gone(process);
        if let Some(worker) = self.lifecycle.worker_of(process).cloned() {
            tracing::info!(target: "fleet::admiral", %worker, process, ?code, "worker process exited");
            self.publish(FleetEvent::Exited {
                worker,
                process,
                code,
            });
        }
        if let Some(key) = self
            .links
            .processes
            .remove(&process)
            .and_then(|i| i.rest_key)
            && let Some(proxy) = &self.config.rest_proxy
        {
            proxy.revoke(&key);
        }
        self.record_workers();
        self.lifecycle_input(Input::Exited(process, code));
        // A service run once per bot that was stopped here to start again, or to be given up.
        self.start_singletons();
        self.hand_off_if_fenced();
    }

    /// A connection ended: its identify waits are dropped, its forwards answered as
    /// unavailable, and a pending exit handled.
    pub(super) fn on_closed(&mut self, conn: u64, error: Option<String>) {
        let Some(state) = self.links.remove(conn) else {
            return;
        };
        for task in state.identifies {
            task.abort();
        }
        let Some((process, _)) = state.process else {
            return;
        };
        let exited = self
            .links
            .processes
            .get_mut(&process)
            .and_then(|info| info.exited.take());
        let worker = self.lifecycle.worker_of(process).cloned();
        if let Some(error) = error {
            tracing::error!(target: "fleet::ipc", worker = ?worker, process, %error, "disconnected a worker over a protocol error");
            let _ = self
                .events
                .send(FleetEvent::ProtocolError { worker, error });
        }
        for answer in self.calls.orphaned(process) {
            self.answer(answer);
        }
        if let Some(Exit(code)) = exited {
            self.exited(process, code);
        }
    }

    /// Pings every serving worker and kills those silent for longer than the timeout.
    pub(super) fn heartbeat(&mut self) {
        let Some(heartbeat) = self.config.heartbeat else {
            return;
        };
        self.arm(Timer::Heartbeat, heartbeat.interval);
        let now = tokio::time::Instant::now();
        // Replacements too (a reshard's standby generation, a handover's next process): one
        // that waited longer than the timeout unpinged would be taken for hung once it serves.
        let serving: Vec<(WorkerId, ProcessId)> = self
            .lifecycle
            .workers()
            .flat_map(|w| {
                let current = w
                    .process
                    .filter(|_| matches!(w.state, State::Starting | State::Live));
                let next = w.replacement.as_ref().map(|r| r.process);
                current
                    .into_iter()
                    .chain(next)
                    .map(|process| (w.id.clone(), process))
            })
            .collect();
        let seq = self.calls.next_id();
        self.stats.pinged(seq);
        for (worker, process) in serving {
            let Some(info) = self.links.processes.get_mut(&process) else {
                continue;
            };
            let (Some(conn), Some(last_seen)) = (info.conn, info.last_seen) else {
                continue;
            };
            let silent_for = now.duration_since(last_seen);
            if silent_for > heartbeat.timeout {
                tracing::error!(target: "fleet::admiral", %worker, process, ?silent_for, "worker unresponsive; killing it");
                info.last_seen = None;
                self.links.kill(process);
                self.publish(FleetEvent::Unresponsive {
                    worker,
                    process,
                    silent_for,
                });
            } else {
                self.links.send(conn, &Down::Ping { seq });
            }
        }
    }

    /// Carries out one of the lifecycle's commands.
    pub(super) fn execute(&mut self, command: Command) {
        match command {
            Command::Spawn { worker, process } => self.spawn(&worker, process),
            Command::Stop { process, grace } => {
                let grace_ms = grace.as_millis() as u64;
                if !self
                    .links
                    .send_to_process(process, &Down::Shutdown { grace_ms })
                {
                    self.links.kill(process);
                }
            }
            Command::Kill(process) => self.links.kill(process),
            Command::RequestSessions { from, .. } => {
                // Gone already: it hands over nothing, and the replacement starts fresh.
                if !self.links.send_to_process(from, &Down::HandOver) {
                    self.lifecycle_input(Input::SessionsHandedOver(from, Vec::new()));
                    self.hand_off_if_fenced();
                }
            }
            Command::Deactivate(process) => {
                self.links.send_to_process(process, &Down::Deactivate);
            }
            Command::Switch { old, new, at_ms } => {
                let at = std::time::SystemTime::now() + crate::admiral::lifecycle::SWITCH_GUARD / 2;
                let at_ms = at_ms.unwrap_or_else(|| {
                    at.duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
                });
                tracing::info!(target: "fleet::reshard", at_ms, "the generations switch");
                for (processes, old) in [(old, true), (new, false)] {
                    for process in processes {
                        self.links
                            .send_to_process(process, &Down::Cut { at_ms, old });
                    }
                }
            }
            Command::Activate(process) => {
                self.links.send_to_process(process, &Down::Activate);
            }
            Command::SendSessions { to, sessions } => {
                let shards = sessions.len();
                if self.links.send_to_process(to, &Down::Sessions(sessions)) {
                    tracing::info!(target: "fleet::restart", process = to, shards, "sessions sent");
                }
            }
            Command::Emit(event) => self.on_lifecycle_event(&event),
        }
    }

    fn spawn(&mut self, worker: &WorkerId, process: ProcessId) {
        let env = WorkerEnv {
            socket: self.socket.clone(),
            secret: self.secret.clone(),
            process,
            max_frame: self.config.max_frame,
            timeout: self.config.request_timeout,
            build: String::new(),
            grace: self.config.admiral_grace,
        }
        .vars();
        let mut env = env;
        env.extend(crate::logging::worker_env(
            self.config.log_format,
            self.config.log_filter.as_deref(),
        ));
        let command = self.builds.get(worker).unwrap_or(&self.command).clone();
        let request = SpawnRequest {
            command: &command,
            worker,
            process,
            env,
            echo: self.config.echo_output.then_some(self.config.log_format),
        };
        tracing::info!(target: "fleet::launch", %worker, process, "spawning");
        self.stats.spawned(worker);
        if let Err(error) = process::spawn(&request, self.inbox.clone(), &self.events) {
            self.lifecycle_input(Input::SpawnFailed(process, error.to_string()));
        }
    }
}

/// Whether a cluster's checkpoint names only its own `shards`, each once, within the sizes a
/// session has.
fn check_checkpoint(
    shards: &std::ops::RangeInclusive<u32>,
    sessions: &[ShardSession],
) -> Result<(), String> {
    let mut seen = std::collections::BTreeSet::new();
    for s in sessions {
        if !shards.contains(&s.shard) || !seen.insert(s.shard) {
            return Err(format!(
                "a session checkpoint named shard {} (twice, or not the cluster's {shards:?})",
                s.shard
            ));
        }
        let url = s.resume_url.as_ref().map_or(0, String::len);
        let state = s.state.as_bytes().len();
        if s.session_id.len() > MAX_SESSION_ID
            || url > MAX_RESUME_URL
            || state > crate::cluster::MAX_CHECKPOINT_STATE
        {
            return Err(format!(
                "a session checkpoint of shard {} is too large ({} bytes of id, {url} of URL, {state} of state)",
                s.shard,
                s.session_id.len()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_may_name_only_the_clusters_own_shards_within_sane_sizes() {
        let session = |shard| ShardSession::new(shard, "s".repeat(32), Some("wss://r".into()));
        let shards = 4..=7;
        assert!(check_checkpoint(&shards, &[session(4), session(7)]).is_ok());
        assert!(check_checkpoint(&shards, &[]).is_ok());
        let outside = check_checkpoint(&shards, &[session(8)]).unwrap_err();
        assert!(outside.contains("shard 8"), "{outside}");
        assert!(check_checkpoint(&shards, &[session(5), session(5)]).is_err());
        let mut long = session(5);
        long.session_id = "x".repeat(MAX_SESSION_ID + 1);
        assert!(check_checkpoint(&shards, &[long]).is_err());
        let mut far = session(5);
        far.resume_url = Some("w".repeat(MAX_RESUME_URL + 1));
        assert!(check_checkpoint(&shards, &[far]).is_err());
        let mut heavy = session(5);
        heavy.state = Payload::from(vec![0; crate::cluster::MAX_CHECKPOINT_STATE + 1]);
        assert!(check_checkpoint(&shards, &[heavy]).is_err());
    }
}
