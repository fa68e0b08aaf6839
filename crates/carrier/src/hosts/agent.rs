//! The admiral's one Redis client on a fleet of several hosts ([`HostAgent`]): it renews the
//! host's lease, fences the host when the lease may lapse, claims ranges and writes the
//! checkpoints of the ranges it owns.
//!
//! Fencing is by time, on this host's monotonic clock: once `ttl − margin` has passed since the
//! *send* time of the last renewal Redis confirmed, the host may be about to lose its lease, so
//! it fences itself ([`HostEvent::Fence`]: every cluster closes its shards resumably and hands
//! the sessions to the admiral). Another host takes the ranges only at the lease deadline plus
//! a grace, on Redis's clock, so the fence always comes first (by at least margin + grace). Once
//! a renewal and a claim succeed again, the ranges still this host's are resumed
//! ([`HostEvent::Unfence`]) and the others dropped ([`HostEvent::Lose`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::HostLease;
use super::assign::{Assignment, ClaimError, Owners, Replanned, ReshardCommit};
use crate::ipc::proto::ShardSession;

/// How long before its lease's end (on its own clock) a host fences itself: a fifth of the
/// lease (3 s of the default 15).
#[must_use]
pub fn fence_margin(ttl: Duration) -> Duration {
    ttl / 5
}

/// How long after a dead host's lease deadline (on Redis's clock) its ranges may be taken:
/// two fifteenths of the lease (2 s of the default 15).
#[must_use]
pub fn takeover_grace(ttl: Duration) -> Duration {
    ttl * 2 / 15
}

/// How often the host writes the checkpoints that changed.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);
/// The longest one Redis call may take before the connection is given up: a second, or a sixth
/// of a short lease (so a stalled Redis delays the fence by less than its margin).
fn call_timeout(ttl: Duration) -> Duration {
    (ttl / 6).min(Duration::from_secs(1))
}

/// What the agent tells the router.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HostEvent {
    /// Start cluster `cluster`, resuming these sessions.
    Take {
        /// The cluster (range).
        cluster: u32,
        /// Its shards' last checkpointed sessions.
        resume: Vec<ShardSession>,
    },
    /// Close every shard resumably and hold the sessions.
    Fence,
    /// Resume the held sessions.
    Unfence,
    /// Cluster `cluster` is another host's now.
    Lose(u32),
    /// Start service `name`, run once per bot: Redis assigns it to this host.
    TakeService(String),
    /// Service `name`, run once per bot, is another host's now.
    LoseService(String),
    /// Hand cluster `cluster` on to a host with room (a planned move): close its shards
    /// resumably, record their sessions, then say so ([`Checkpoints::given`]).
    Give(u32),
    /// Every range was handed on ([`Checkpoints::drain`]).
    Drained,
    /// The lease was renewed: the clusters may run their shards this long from now (until the
    /// fence would come up).
    Renewed(Duration),
    /// Which host each range's and each service's owner entry names, when it changed.
    Owners(Owners),
    /// The hosts of the bot with a live lease (those running no range too) and the most ranges
    /// each has room for, when they changed.
    Hosts(BTreeMap<String, u32>),
    /// A message from another host's admiral, on the bus (at most the frame limit).
    Bus(Vec<u8>),
    /// The bus publish with this token reached no host.
    Undelivered(u64),
    /// A reshard of the split bot went live in Redis: this host runs its new plan from now,
    /// owning these ranges of it.
    Replanned {
        /// The new plan, and the switch time.
        plan: Replanned,
        /// This host's ranges of the new plan.
        owned: Vec<u32>,
    },
    /// The reshard this host asked to put live ([`Checkpoints::commit_reshard`]) could not be.
    CommitFailed {
        /// The reshard's id.
        id: String,
        /// Why.
        reason: String,
    },
}

/// The latest session of each shard this host runs, waiting to be written to Redis; and the
/// router's word that the host stops and hands its ranges on.
#[derive(Debug)]
pub(crate) struct Checkpoints {
    inner: Mutex<CheckpointsInner>,
    drain: watch::Sender<bool>,
    /// When the fence comes up unless the lease is renewed first: the router checks it itself
    /// before it lets a shard identify, so no message from the agent can come too late.
    fence_at: Mutex<Option<Instant>>,
    /// Ranges being handed on whose sessions are recorded: the agent writes them and gives
    /// the ranges up.
    given: Mutex<Vec<u32>>,
    gifts: tokio::sync::Notify,
    /// The shard total of the plan the agent writes for: a session of another is not recorded
    /// (the old generation of a reshard, once the new one is live). 0 before the agent runs.
    total: std::sync::atomic::AtomicU32,
    /// A reshard ready on every host, for the agent to put live.
    commit: Mutex<Option<ReshardCommit>>,
    commits: tokio::sync::Notify,
}

impl Default for Checkpoints {
    fn default() -> Self {
        Self {
            inner: Mutex::default(),
            drain: watch::channel(false).0,
            fence_at: Mutex::new(None),
            given: Mutex::new(Vec::new()),
            gifts: tokio::sync::Notify::new(),
            total: std::sync::atomic::AtomicU32::new(0),
            commit: Mutex::new(None),
            commits: tokio::sync::Notify::new(),
        }
    }
}

#[derive(Debug, Default)]
struct CheckpointsInner {
    /// Every shard's latest session (its state kept when a later checkpoint leaves it out).
    known: HashMap<u32, (u32, ShardSession)>,
    /// Shards changed since the last write.
    dirty: std::collections::BTreeSet<u32>,
}

impl Checkpoints {
    /// Records what cluster `range` of a plan of `total` shards checkpointed (or handed over):
    /// nothing, unless that is the plan the agent writes for.
    pub(crate) fn record(&self, range: u32, total: u32, sessions: &[ShardSession]) {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let writes_for = self.total.load(std::sync::atomic::Ordering::Acquire);
        if writes_for != 0 && writes_for != total {
            return;
        }
        for session in sessions {
            let mut session = session.clone();
            if let Some((_, old)) = inner.known.get(&session.shard)
                && old.session_id == session.session_id
                && session.state.0.is_empty()
            {
                session.state = old.state.clone();
            }
            inner.dirty.insert(session.shard);
            inner.known.insert(session.shard, (range, session));
        }
    }

    /// Asks the agent to hand every range on, once the sessions the clusters handed over are
    /// recorded: it writes them, gives the ranges up, and answers [`HostEvent::Drained`].
    pub(crate) fn drain(&self) {
        self.drain.send_replace(true);
    }

    /// Range `range`, being handed on ([`HostEvent::Give`]), has its sessions recorded (or its
    /// process is gone): the agent writes them and gives the range up.
    pub(crate) fn given(&self, range: u32) {
        self.given
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(range);
        self.gifts.notify_one();
    }

    /// Asks the agent to put `commit` live in Redis: it answers [`HostEvent::Replanned`] (as
    /// every host's agent does) or [`HostEvent::CommitFailed`].
    pub(crate) fn commit_reshard(&self, commit: ReshardCommit) {
        *self.commit.lock().unwrap_or_else(PoisonError::into_inner) = Some(commit);
        self.commits.notify_one();
    }

    /// The agent writes for a plan of `total` shards from now: the sessions of the last are
    /// dropped (their keys are gone with it).
    fn write_for(&self, total: u32) {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if self.total.swap(total, std::sync::atomic::Ordering::AcqRel) != total {
            inner.known.clear();
            inner.dirty.clear();
        }
    }

    /// Whether this host's lease may have lapsed by now (its fence is due).
    pub(crate) fn fence_due(&self) -> bool {
        self.fence_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some_and(|at| Instant::now() >= at)
    }

    fn set_fence_at(&self, at: Instant) {
        *self.fence_at.lock().unwrap_or_else(PoisonError::into_inner) = Some(at);
    }

    /// The changed sessions, taken.
    fn take_dirty(&self) -> Vec<(u32, ShardSession)> {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let dirty = std::mem::take(&mut inner.dirty);
        dirty
            .into_iter()
            .filter_map(|shard| inner.known.get(&shard).cloned())
            .collect()
    }

    /// Marks sessions changed again (their write failed).
    fn redo(&self, sessions: &[(u32, ShardSession)]) {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner.dirty.extend(sessions.iter().map(|(_, s)| s.shard));
    }
}

/// The fence: when it comes up, and whether it is up.
struct Fence<'a> {
    at: Instant,
    up: bool,
    events: &'a mpsc::Sender<HostEvent>,
    host: &'a str,
    shared: &'a Checkpoints,
}

impl Fence<'_> {
    /// The fence comes up at `at` unless the lease is renewed before.
    fn due_at(&mut self, at: Instant) {
        self.at = at;
        self.shared.set_fence_at(at);
    }

    async fn raise(&mut self) {
        if !self.up {
            self.up = true;
            tracing::warn!(target: "fleet::hosts", host = self.host, "this host's lease may lapse: fencing it (every shard closes resumably)");
            let _ = self.events.send(HostEvent::Fence).await;
        }
    }

    async fn lower(&mut self, ranges: usize) {
        if self.up {
            self.up = false;
            tracing::info!(target: "fleet::hosts", host = self.host, ranges, "this host's lease holds again: resuming its shards");
            let _ = self.events.send(HostEvent::Unfence).await;
        }
    }
}

/// Runs one Redis call for at most `limit`, raising the fence meanwhile if it comes due: a
/// stalled Redis never delays the fence. `None` when it timed out.
async fn guarded<T>(
    call: impl std::future::Future<Output = T>,
    limit: Duration,
    fence: &mut Fence<'_>,
) -> Option<T> {
    let call = tokio::time::timeout(limit, call);
    tokio::pin!(call);
    loop {
        tokio::select! {
            done = &mut call => return done.ok(),
            () = tokio::time::sleep_until(fence.at), if !fence.up => fence.raise().await,
        }
    }
}

/// This host's lease, its ranges and its checkpoints, kept in Redis.
pub(crate) struct HostAgent {
    lease: HostLease,
    assignment: Option<Assignment>,
    bus: Option<super::bus::BusIn>,
    /// Hands ranges beyond its fair share on to hosts with room.
    rebalance: bool,
}

/// What the agent keeps between turns.
struct State<'a> {
    fence: Fence<'a>,
    connection: Option<redis::aio::MultiplexedConnection>,
    /// The run id of the Redis the connection reached.
    run_id: String,
    /// When the last renewal Redis confirmed was sent.
    renewed: Instant,
    /// This host's ranges, with their owner entries, as the last claim saw them.
    owned: BTreeMap<u32, String>,
    /// Handed every range on (a clean stop): it claims nothing more.
    drained: bool,
    /// The services run once per bot that this host owns, with their owner entries.
    services: BTreeMap<String, String>,
    /// The owners the router last heard of.
    owners: Owners,
    /// The live hosts the router last heard of.
    hosts: BTreeMap<String, u32>,
    /// What the next claim puts back, when not `owned` (nothing, once the lease lapsed).
    keep: Option<BTreeMap<u32, String>>,
    /// The same, of the services.
    keep_services: Option<BTreeMap<String, String>>,
}

impl HostAgent {
    /// An agent for `lease`; with `assignment`, it also claims ranges (without, the host runs
    /// the shards its options pin).
    pub(crate) fn new(lease: HostLease, assignment: Option<Assignment>) -> Self {
        Self {
            lease,
            assignment,
            bus: None,
            rebalance: true,
        }
    }

    /// Whether it hands ranges beyond its fair share on (`FleetOptions::host_rebalance`).
    pub(crate) fn rebalancing(mut self, rebalance: bool) -> Self {
        self.rebalance = rebalance;
        self
    }

    /// The incarnation of this host's lease.
    pub(crate) fn incarnation(&self) -> &str {
        self.lease.incarnation()
    }

    /// A client of the agent's Redis.
    pub(crate) fn client(&self) -> redis::Client {
        self.lease.client.clone()
    }

    /// Also carries the cross-host bus.
    pub(crate) fn with_bus(mut self, bus: super::bus::BusIn) -> Self {
        self.bus = Some(bus);
        self
    }

    fn key(&self, name: &str) -> String {
        self.lease.key(name)
    }

    /// Runs until `stopped` turns true; then gives the ranges and the lease up and says so on
    /// `released`.
    pub(crate) async fn run(
        mut self,
        mut stopped: watch::Receiver<bool>,
        released: watch::Sender<bool>,
        events: mpsc::Sender<HostEvent>,
        checkpoints: Arc<Checkpoints>,
    ) {
        let ttl = self.lease.ttl;
        let mut renewals = tokio::time::interval(ttl / 6);
        renewals.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The lease was just taken: the first turn renews nothing, and lets the other hosts
        // started together take theirs before anyone claims.
        renewals.tick().await;
        let mut writes = tokio::time::interval(CHECKPOINT_EVERY);
        writes.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let host = self.lease.host.clone();
        let mut state = State {
            fence: Fence {
                at: self.lease.taken_at,
                up: false,
                events: &events,
                host: &host,
                shared: &checkpoints,
            },
            connection: None,
            run_id: String::new(),
            renewed: self.lease.taken_at,
            owned: BTreeMap::new(),
            drained: false,
            services: BTreeMap::new(),
            owners: Owners::default(),
            hosts: BTreeMap::new(),
            keep: None,
            keep_services: None,
        };
        let stop = async move {
            while !*stopped.borrow_and_update() {
                if stopped.changed().await.is_err() {
                    break;
                }
            }
        };
        tokio::pin!(stop);
        state
            .fence
            .due_at(self.lease.taken_at + ttl.saturating_sub(fence_margin(ttl)));
        if let Some(assignment) = &self.assignment {
            checkpoints.write_for(assignment.plan().shard_total);
        }
        let mut drain_asked = checkpoints.drain.subscribe();
        let drain = async move {
            while !*drain_asked.borrow_and_update() {
                if drain_asked.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::pin!(drain);
        // Another host changed the assignment (it drained, say): claim now, not at the next turn.
        let hints = Arc::new(tokio::sync::Notify::new());
        let listening = self.bus.take().map(|bus| {
            AbortOnDrop(tokio::spawn(bus.run(
                self.lease.client.clone(),
                self.key(""),
                self.lease.host.clone(),
                events.clone(),
                hints.clone(),
            )))
        });
        loop {
            tokio::select! {
                () = &mut stop => break,
                // A drained host runs no shard any more: nothing to fence.
                () = tokio::time::sleep_until(state.fence.at), if !state.fence.up && !state.drained => {
                    state.fence.raise().await;
                }
                _ = renewals.tick(), if !state.drained => {
                    if self.renew(&mut state).await {
                        self.claim_or_replan(&mut state, &events, &checkpoints).await;
                    }
                }
                () = hints.notified(), if self.assignment.is_some() && !state.fence.up => {
                    self.claim_or_replan(&mut state, &events, &checkpoints).await;
                }
                () = checkpoints.commits.notified(), if !state.drained => {
                    self.commit(&mut state, &events, &checkpoints).await;
                }
                () = checkpoints.gifts.notified(), if !state.drained => {
                    self.give_up(&mut state, &checkpoints).await;
                }
                () = &mut drain, if !state.drained => {
                    self.drain(&mut state, &checkpoints).await;
                    let _ = events.send(HostEvent::Drained).await;
                }
                _ = writes.tick(), if self.assignment.is_some() => {
                    self.write(&mut state, &checkpoints).await;
                }
            }
        }
        drop(listening);
        // A clean stop: the ranges first (others take them at once), then the lease.
        if !state.drained {
            self.drain(&mut state, &checkpoints).await;
        }
        self.lease.release().await;
        let _ = released.send(true);
    }

    /// Renews the lease; whether Redis confirmed it.
    async fn renew(&self, state: &mut State<'_>) -> bool {
        let ttl = self.lease.ttl;
        let limit = call_timeout(ttl);
        if !self.connect(state).await {
            return false;
        }
        let Some(open) = state.connection.as_mut() else {
            return false;
        };
        let sent = Instant::now();
        match guarded(self.lease.renew(open), limit, &mut state.fence).await {
            Some(Ok(())) => {
                // The lease may have lapsed since the last renewal: then another host may run
                // this host's ranges, and it keeps only those Redis still names it for.
                if sent.duration_since(state.renewed) >= ttl {
                    state.owned_lapsed();
                }
                state.renewed = sent;
                let fence_at = sent + ttl.saturating_sub(fence_margin(ttl));
                state.fence.due_at(fence_at);
                let valid = fence_at.saturating_duration_since(Instant::now());
                let _ = state.fence.events.send(HostEvent::Renewed(valid)).await;
                true
            }
            Some(Err(super::LeaseError::Taken(host))) => {
                tracing::error!(target: "fleet::hosts", host, "another admiral took this host's lease");
                false
            }
            Some(Err(error)) => {
                tracing::warn!(target: "fleet::hosts", %error, "renewing this host's lease failed");
                state.connection = None;
                false
            }
            None => {
                tracing::warn!(target: "fleet::hosts", "Redis did not answer the lease renewal in time");
                state.connection = None;
                false
            }
        }
    }

    /// Claims (see [`HostAgent::claim`]); when the plan in Redis is a reshard's that this host
    /// does not run yet, runs it ([`HostAgent::replan`]) and claims again.
    async fn claim_or_replan(
        &mut self,
        state: &mut State<'_>,
        events: &mpsc::Sender<HostEvent>,
        checkpoints: &Checkpoints,
    ) {
        if !self.claim(state, events).await {
            return;
        }
        if self.replan(state, events, checkpoints).await {
            self.claim(state, events).await;
        } else {
            tracing::error!(target: "fleet::hosts", "this host plans other shards than the bot's other hosts (shard total, clusters): it runs none");
        }
    }

    /// Puts the reshard the router asked for live in Redis, tells the other hosts, and runs
    /// its plan here.
    async fn commit(
        &mut self,
        state: &mut State<'_>,
        events: &mpsc::Sender<HostEvent>,
        checkpoints: &Checkpoints,
    ) {
        let Some(commit) = checkpoints
            .commit
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        else {
            return;
        };
        let limit = call_timeout(self.lease.ttl);
        let connected = self.connect(state).await;
        let result = match (&self.assignment, state.connection.as_mut(), connected) {
            (Some(assignment), Some(open), true) => {
                match guarded(
                    assignment.commit_reshard(open, &commit),
                    limit,
                    &mut state.fence,
                )
                .await
                {
                    Some(Ok(_)) => Ok(()),
                    Some(Err(ClaimError::Plan(_))) => {
                        Err("the bot's plan in Redis changed meanwhile".to_owned())
                    }
                    Some(Err(ClaimError::Redis(why))) if why.contains("CHANGED") => Err(
                        "a range changed hosts meanwhile (a host joined, left or died)".to_owned(),
                    ),
                    Some(Err(error)) => Err(format!("Redis: {error:?}")),
                    None => {
                        state.connection = None;
                        Err("Redis did not answer in time".to_owned())
                    }
                }
            }
            _ => Err("Redis cannot be reached".to_owned()),
        };
        match result {
            Ok(()) => {
                tracing::info!(target: "fleet::reshard", id = %commit.id, "the new plan is live in Redis");
                // The other hosts claim at once, find the new plan and run it.
                self.hint(state).await;
                self.replan(state, events, checkpoints).await;
            }
            Err(reason) => {
                let id = commit.id;
                let _ = events.send(HostEvent::CommitFailed { id, reason }).await;
            }
        }
    }

    /// Runs the plan a reshard put in Redis, if it is not this host's: the router hears which
    /// of its ranges this host owns ([`HostEvent::Replanned`]). Whether it did.
    async fn replan(
        &mut self,
        state: &mut State<'_>,
        events: &mpsc::Sender<HostEvent>,
        checkpoints: &Checkpoints,
    ) -> bool {
        let limit = call_timeout(self.lease.ttl);
        let (Some(assignment), Some(open)) = (&mut self.assignment, state.connection.as_mut())
        else {
            return false;
        };
        let Some(Ok(Some(replanned))) =
            guarded(assignment.replanned(open), limit, &mut state.fence).await
        else {
            return false;
        };
        let max_concurrency = assignment.plan().max_concurrency;
        let plan = match crate::admiral::plan::whole(
            replanned.total,
            replanned.ranges,
            max_concurrency,
        ) {
            Ok(plan) if plan.clusters.len() == replanned.ranges as usize => plan,
            _ => {
                tracing::error!(target: "fleet::hosts", total = replanned.total, ranges = replanned.ranges, "the plan a reshard put in Redis cannot be planned here");
                return false;
            }
        };
        assignment.replan(plan);
        checkpoints.write_for(replanned.total);
        let Some(Ok(owned)) =
            guarded(assignment.owned_entries(open), limit, &mut state.fence).await
        else {
            // Claimed afresh at the next turn: what Redis names this host's is taken then.
            state.owned.clear();
            state.owners = Owners::default();
            let owned = Vec::new();
            let _ = events
                .send(HostEvent::Replanned {
                    plan: replanned,
                    owned,
                })
                .await;
            return true;
        };
        tracing::info!(target: "fleet::reshard", total = replanned.total, ranges = replanned.ranges, owned = owned.len(), "running the plan a reshard put in Redis");
        let ranges = owned.keys().copied().collect();
        state.owned = owned;
        state.keep = None;
        state.owners = Owners::default();
        let _ = events
            .send(HostEvent::Replanned {
                plan: replanned,
                owned: ranges,
            })
            .await;
        true
    }

    /// Claims what this host should run; tells the router what it takes and what it lost, and
    /// lifts the fence. `true` when Redis holds another plan than this host's.
    async fn claim(&self, state: &mut State<'_>, events: &mpsc::Sender<HostEvent>) -> bool {
        let mut took = false;
        let Some(assignment) = &self.assignment else {
            state.fence.lower(0).await;
            return false;
        };
        if state.drained {
            return false;
        }
        let limit = call_timeout(self.lease.ttl);
        let Some(open) = state.connection.as_mut() else {
            return false;
        };
        let keep = state.keep.take().unwrap_or_else(|| state.owned.clone());
        let keep_services = state
            .keep_services
            .take()
            .unwrap_or_else(|| state.services.clone());
        let claim = assignment.claim(open, &state.run_id, &keep, &keep_services);
        let (now_owned, now_services, give) = match guarded(claim, limit, &mut state.fence).await {
            Some(Ok(claimed)) => (
                claimed.ranges,
                claimed.services,
                if self.rebalance { claimed.give } else { 0 },
            ),
            Some(Err(ClaimError::Plan(theirs))) => {
                tracing::info!(target: "fleet::hosts", theirs, "the bot's plan in Redis is not this host's (shard total, clusters)");
                return true;
            }
            Some(Err(error)) => {
                tracing::warn!(target: "fleet::hosts", ?error, "claiming ranges failed");
                return false;
            }
            None => {
                state.connection = None;
                return false;
            }
        };
        for range in state.owned.keys().filter(|r| !now_owned.contains_key(r)) {
            tracing::warn!(target: "fleet::hosts", range, "another host runs this range now");
            let _ = events.send(HostEvent::Lose(*range)).await;
        }
        for service in state
            .services
            .keys()
            .filter(|s| !now_services.contains_key(*s))
        {
            tracing::warn!(target: "fleet::hosts", service, "another host runs this service now");
            let _ = events.send(HostEvent::LoseService(service.clone())).await;
        }
        for (service, owner) in &now_services {
            if state.services.get(service) != Some(owner) {
                took = true;
                tracing::info!(target: "fleet::hosts", service, "took a service run once per bot");
                let _ = events.send(HostEvent::TakeService(service.clone())).await;
            }
        }
        state.services = now_services;
        let Some(open) = state.connection.as_mut() else {
            return false;
        };
        for (range, owner) in &now_owned {
            if state.owned.get(range) == Some(owner) {
                continue;
            }
            took = true;
            let read = guarded(
                assignment.read_checkpoints(open, *range),
                limit,
                &mut state.fence,
            );
            let resume = match read.await {
                Some(Ok(sessions)) => sessions,
                _ => Vec::new(),
            };
            tracing::info!(target: "fleet::hosts", range, resumes = resume.len(), "took a range");
            let _ = events
                .send(HostEvent::Take {
                    cluster: *range,
                    resume,
                })
                .await;
        }
        state.owned = now_owned;
        state.fence.lower(state.owned.len()).await;
        // More than a fair share while another host has room: hand the highest ranges on, one
        // planned move each (the router closes the cluster's shards resumably first). Asked
        // again at each claim until given up: the router carries out each once, and one it
        // could not start (fenced meanwhile) is asked for again.
        let gifts: Vec<u32> = state.owned.keys().rev().take(give).copied().collect();
        for range in gifts {
            let _ = events.send(HostEvent::Give(range)).await;
        }
        if took {
            // The other hosts learn at once where the ranges run now (their calls route by it).
            self.hint(state).await;
        }
        if let Some(open) = state.connection.as_mut()
            && let Some(Ok(owners)) =
                guarded(assignment.owners(open), limit, &mut state.fence).await
            && owners != state.owners
        {
            state.owners.clone_from(&owners);
            let _ = events.send(HostEvent::Owners(owners)).await;
        }
        if let Some(open) = state.connection.as_mut()
            && let Some(Ok(hosts)) =
                guarded(assignment.live_hosts(open), limit, &mut state.fence).await
            && hosts != state.hosts
        {
            state.hosts.clone_from(&hosts);
            let _ = events.send(HostEvent::Hosts(hosts)).await;
        }
        false
    }

    /// Gives up the ranges the router has handed on: their last sessions first, then the
    /// ranges, then a hint so the host with room claims them at once.
    async fn give_up(&self, state: &mut State<'_>, checkpoints: &Checkpoints) {
        let given: Vec<u32> = std::mem::take(
            &mut *checkpoints
                .given
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        self.write(state, checkpoints).await;
        let limit = call_timeout(self.lease.ttl);
        let Some(assignment) = &self.assignment else {
            return;
        };
        let mut released = false;
        for range in given {
            let Some(open) = state.connection.as_mut() else {
                break;
            };
            let release = assignment.release_range(open, range);
            if let Some(Ok(true)) = guarded(release, limit, &mut state.fence).await {
                tracing::info!(target: "fleet::hosts", range, "handed a range on");
                state.owned.remove(&range);
                released = true;
            }
        }
        if released {
            self.hint(state).await;
        }
    }

    /// Tells the other hosts that the assignment changed: they claim (and learn who runs what)
    /// at once, not at their next turn.
    async fn hint(&self, state: &mut State<'_>) {
        let Some(open) = state.connection.as_mut() else {
            return;
        };
        let mut publish = redis::cmd("PUBLISH");
        publish
            .arg(self.key("bus:all"))
            .arg(super::bus::ASSIGN_HINT);
        let hint = publish.query_async::<i64>(open);
        drop(guarded(hint, call_timeout(self.lease.ttl), &mut state.fence).await);
    }

    /// Writes the checkpoints that changed.
    async fn write(&self, state: &mut State<'_>, checkpoints: &Checkpoints) {
        let dirty = checkpoints.take_dirty();
        if dirty.is_empty() {
            return;
        }
        let limit = call_timeout(self.lease.ttl);
        let connected = self.connect(state).await;
        let (Some(assignment), Some(open), true) =
            (&self.assignment, state.connection.as_mut(), connected)
        else {
            checkpoints.redo(&dirty);
            return;
        };
        let write = assignment.write_checkpoints(open, &state.owned, &dirty);
        if !matches!(guarded(write, limit, &mut state.fence).await, Some(Ok(_))) {
            checkpoints.redo(&dirty);
            state.connection = None;
        }
    }

    /// Hands every range on: writes the last checkpoints (the sessions the clusters handed
    /// over), gives the ranges and the lease up and tells the other hosts, which take the
    /// ranges at once. The host renews and claims nothing after.
    async fn drain(&self, state: &mut State<'_>, checkpoints: &Checkpoints) {
        state.drained = true;
        let Some(assignment) = &self.assignment else {
            return;
        };
        self.write(state, checkpoints).await;
        let limit = call_timeout(self.lease.ttl);
        if !self.connect(state).await {
            return;
        }
        let Some(open) = state.connection.as_mut() else {
            return;
        };
        let released = guarded(assignment.release(open), limit, &mut state.fence).await;
        if let Some(Ok(ranges)) = released {
            tracing::info!(target: "fleet::hosts", ranges, "handed this host's ranges on");
            // The lease too: the other hosts' shares count the live hosts.
            let _ = guarded(self.lease.release_on(open), limit, &mut state.fence).await;
            let hint: redis::RedisResult<i64> = redis::cmd("PUBLISH")
                .arg(self.key("bus:all"))
                .arg(super::bus::ASSIGN_HINT)
                .query_async(open)
                .await;
            drop(hint);
        }
        state.owned.clear();
        state.services.clear();
    }

    /// Makes sure a connection is open (`false` when Redis cannot be reached now). A new one
    /// learns the run id of the Redis it reached (a Redis that restarted has another, and the
    /// claim opens the recovery window on it): the id always belongs to the connection.
    async fn connect(&self, state: &mut State<'_>) -> bool {
        if state.connection.is_none() {
            let limit = call_timeout(self.lease.ttl);
            let connected = guarded(self.lease.connect(), limit, &mut state.fence).await;
            let Some(Ok(mut open)) = connected else {
                tracing::warn!(target: "fleet::hosts", host = %self.lease.host, "cannot reach Redis");
                return false;
            };
            let asked = guarded(super::assign::run_id(&mut open), limit, &mut state.fence).await;
            let Some(Ok(id)) = asked else {
                return false;
            };
            state.run_id = id;
            state.connection = Some(open);
        }
        true
    }
}

impl State<'_> {
    /// The lease lapsed: the next claim puts nothing back.
    fn owned_lapsed(&mut self) {
        self.keep = Some(BTreeMap::new());
        self.keep_services = Some(BTreeMap::new());
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(shard: u32, id: &str, state: &[u8]) -> ShardSession {
        let mut session = ShardSession::new(shard, id.to_owned(), None);
        session.state = crate::Payload::from(state.to_vec());
        session
    }

    #[test]
    fn checkpoints_keep_each_shards_latest_session_and_its_state_until_written() {
        let checkpoints = Checkpoints::default();
        checkpoints.record(0, 4, &[session(0, "a", b"guilds"), session(1, "b", b"")]);
        // A later checkpoint of the same session without its state keeps the state.
        let mut later = session(0, "a", b"");
        later.sequence = 7;
        checkpoints.record(0, 4, &[later]);
        let dirty = checkpoints.take_dirty();
        assert_eq!(dirty.len(), 2);
        assert_eq!(dirty[0].1.sequence, 7);
        assert_eq!(dirty[0].1.state.0.as_ref(), b"guilds");
        assert!(checkpoints.take_dirty().is_empty(), "written once");
        // A write that failed is tried again; a new session replaces the old state.
        checkpoints.redo(&dirty[..1]);
        checkpoints.record(0, 4, &[session(1, "c", b"")]);
        let again = checkpoints.take_dirty();
        assert_eq!(again.len(), 2);
        assert_eq!(again[1].1.session_id, "c");
    }

    #[test]
    fn the_fence_comes_a_margin_before_the_lease_ends_and_the_takeover_a_grace_after() {
        let ttl = HOST_LEASE_DEFAULT;
        assert_eq!(fence_margin(ttl), Duration::from_secs(3));
        assert_eq!(takeover_grace(ttl), Duration::from_secs(2));
        assert!(call_timeout(ttl) < fence_margin(ttl));
        let short = Duration::from_secs(3);
        assert!(
            call_timeout(short) < fence_margin(short),
            "a stalled call never hides the fence"
        );
    }

    const HOST_LEASE_DEFAULT: Duration = crate::hosts::HOST_LEASE_TTL;
}
