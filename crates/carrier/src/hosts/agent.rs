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
use super::assign::{Assignment, ClaimError};
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
}

/// The latest session of each shard this host runs, waiting to be written to Redis.
#[derive(Debug, Default)]
pub(crate) struct Checkpoints {
    inner: Mutex<CheckpointsInner>,
}

#[derive(Debug, Default)]
struct CheckpointsInner {
    /// Every shard's latest session (its state kept when a later checkpoint leaves it out).
    known: HashMap<u32, (u32, ShardSession)>,
    /// Shards changed since the last write.
    dirty: std::collections::BTreeSet<u32>,
}

impl Checkpoints {
    /// Records what cluster `range`'s process checkpointed (or handed over).
    pub(crate) fn record(&self, range: u32, sessions: &[ShardSession]) {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
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
}

impl Fence<'_> {
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
}

impl HostAgent {
    /// An agent for `lease`; with `assignment`, it also claims ranges (without, the host runs
    /// the shards its options pin).
    pub(crate) fn new(lease: HostLease, assignment: Option<Assignment>) -> Self {
        Self { lease, assignment }
    }

    /// Runs until `stopped` turns true; then gives the ranges and the lease up and says so on
    /// `released`.
    pub(crate) async fn run(
        self,
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
        let mut fence = Fence {
            at: self.lease.taken_at + ttl.saturating_sub(fence_margin(ttl)),
            up: false,
            events: &events,
            host: &self.lease.host,
        };
        let limit = call_timeout(ttl);
        let mut connection = None;
        let mut run_id = String::new();
        let mut renewed = self.lease.taken_at;
        let mut owned: BTreeMap<u32, String> = BTreeMap::new();
        let stop = async move {
            while !*stopped.borrow_and_update() {
                if stopped.changed().await.is_err() {
                    break;
                }
            }
        };
        tokio::pin!(stop);
        loop {
            tokio::select! {
                () = &mut stop => break,
                () = tokio::time::sleep_until(fence.at), if !fence.up => fence.raise().await,
                _ = renewals.tick() => {
                    let fresh = connection.is_none();
                    let Some(open) = self.connection(&mut connection, &mut fence).await else {
                        continue;
                    };
                    if fresh || run_id.is_empty() {
                        // A Redis that restarted has another run id: the claim sees it.
                        let asked = guarded(super::assign::run_id(open), limit, &mut fence).await;
                        let Some(Ok(id)) = asked else {
                            connection = None;
                            continue;
                        };
                        run_id = id;
                    }
                    let sent = Instant::now();
                    // Whether the lease may have lapsed since the last renewal: then another
                    // host may run this host's ranges, and it keeps only those Redis still
                    // names it for.
                    let lapsed = sent.duration_since(renewed) >= ttl;
                    match guarded(self.lease.renew(open), limit, &mut fence).await {
                        Some(Ok(())) => {
                            renewed = sent;
                            fence.at = sent + ttl.saturating_sub(fence_margin(ttl));
                        }
                        Some(Err(super::LeaseError::Taken(host))) => {
                            tracing::error!(target: "fleet::hosts", host, "another admiral took this host's lease");
                            continue;
                        }
                        Some(Err(error)) => {
                            tracing::warn!(target: "fleet::hosts", %error, "renewing this host's lease failed");
                            connection = None;
                            continue;
                        }
                        None => {
                            tracing::warn!(target: "fleet::hosts", "Redis did not answer the lease renewal in time");
                            connection = None;
                            continue;
                        }
                    }
                    let Some(assignment) = &self.assignment else {
                        fence.lower(0).await;
                        continue;
                    };
                    let keep = if lapsed { BTreeMap::new() } else { owned.clone() };
                    let claim = assignment.claim(open, &run_id, &keep);
                    let now_owned = match guarded(claim, limit, &mut fence).await {
                        Some(Ok(now_owned)) => now_owned,
                        Some(Err(ClaimError::Plan(theirs))) => {
                            tracing::error!(target: "fleet::hosts", theirs, "this host plans other shards than the bot's other hosts (shard total, clusters): it runs none");
                            continue;
                        }
                        Some(Err(error)) => {
                            tracing::warn!(target: "fleet::hosts", ?error, "claiming ranges failed");
                            continue;
                        }
                        None => {
                            connection = None;
                            continue;
                        }
                    };
                    for range in owned.keys().filter(|r| !now_owned.contains_key(r)) {
                        tracing::warn!(target: "fleet::hosts", range, "another host runs this range now");
                        let _ = events.send(HostEvent::Lose(*range)).await;
                    }
                    for (range, owner) in &now_owned {
                        if owned.get(range) == Some(owner) {
                            continue;
                        }
                        let read = guarded(assignment.read_checkpoints(open, *range), limit, &mut fence);
                        let resume = match read.await {
                            Some(Ok(sessions)) => sessions,
                            _ => Vec::new(),
                        };
                        tracing::info!(target: "fleet::hosts", range, resumes = resume.len(), "took a range");
                        let _ = events
                            .send(HostEvent::Take { cluster: *range, resume })
                            .await;
                    }
                    owned = now_owned;
                    fence.lower(owned.len()).await;
                }
                _ = writes.tick(), if self.assignment.is_some() => {
                    let dirty = checkpoints.take_dirty();
                    if dirty.is_empty() {
                        continue;
                    }
                    let (Some(assignment), Some(open)) =
                        (&self.assignment, self.connection(&mut connection, &mut fence).await)
                    else {
                        checkpoints.redo(&dirty);
                        continue;
                    };
                    let write = assignment.write_checkpoints(open, &owned, &dirty);
                    if !matches!(guarded(write, limit, &mut fence).await, Some(Ok(_))) {
                        checkpoints.redo(&dirty);
                        connection = None;
                    }
                }
            }
        }
        // A clean stop: the ranges first (others take them at once), then the lease.
        if let (Some(assignment), Some(open)) = (
            &self.assignment,
            self.connection(&mut connection, &mut fence).await,
        ) {
            let _ = guarded(assignment.release(open), limit, &mut fence).await;
        }
        self.lease.release().await;
        let _ = released.send(true);
    }

    /// The open connection, or a new one (`None` when Redis cannot be reached now).
    async fn connection<'a>(
        &self,
        connection: &'a mut Option<redis::aio::MultiplexedConnection>,
        fence: &mut Fence<'_>,
    ) -> Option<&'a mut redis::aio::MultiplexedConnection> {
        if connection.is_none() {
            let limit = call_timeout(self.lease.ttl);
            match guarded(self.lease.connect(), limit, fence).await {
                Some(Ok(open)) => *connection = Some(open),
                _ => {
                    tracing::warn!(target: "fleet::hosts", host = %self.lease.host, "cannot reach Redis");
                }
            }
        }
        connection.as_mut()
    }
}
