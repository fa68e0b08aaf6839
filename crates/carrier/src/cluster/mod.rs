//! The cluster protocol, the same for every Discord library: carrier drives a cluster's life
//! (prepare, serve, hand over, stop or take back), and an adapter only implements [`Shards`]
//! over its library's shards.
//!
//! # Theory of operation
//!
//! [`serve`] runs a cluster after the adapter started the user's worker:
//!
//! 1. A replacement for a session handover reports [`Status::Prepared`] and waits for the
//!    sessions of the process it replaces (a library that cannot resume someone else's session
//!    says so with [`Shards::resumes_sessions`], and the replacement fails at once, leaving the old
//!    process serving).
//! 2. [`Shards::start`] connects every shard, resuming the sessions it was given.
//! 3. It serves until the admiral asks for something: a standby cluster (a reshard's new
//!    generation) is activated ([`ShardReporter::is_live`] turns true, then the worker's
//!    [`Shards::activate`] hook runs), and an old generation's cluster is deactivated a moment
//!    after the new one went live (no more events reach its worker); a handover closes every
//!    shard resumably
//!    ([`Shards::hand_over`]), sends the sessions, and either stops or, when the replacement
//!    failed, takes them back and starts again at 2; a shutdown runs the worker's
//!    [`Shards::shutdown`] hook within the grace period, then [`Shards::close`].
//!
//! The adapter's shards report what happens to them through a [`ShardReporter`]: each shard's
//! connection, READY, RESUMED and close, and, once every shard has been ready, the cluster's
//! [`Status::Ready`]. What only an adapter may ask of the admiral (permission to identify, the
//! cache lookup handler) is on its [`ClusterLink`], not on the user's [`Ipc`].
//!
//! During a reshard both generations receive every event; what reaches user code is decided per
//! event by [`ShardReporter::placement`]: what creates something (a message, an interaction)
//! goes to the generation its snowflake's time belongs to, and a standby cluster keeps such
//! events in a [`Held`] queue until it knows the switch time and is live, so none is left to
//! neither generation when the admiral's word comes late.
//!
//! Crash resume: the shards also record each session and the sequence of every event the worker
//! handled ([`ShardReporter::opened`], [`ShardReporter::handled`]); `serve` checkpoints those to
//! the admiral every `checkpoint_ms` (and at once when a session opens). If the process
//! crashes, its replacement is started with them ([`ClusterAssignment::resume`]) and resumes
//! instead of identifying; what arrives before each shard's RESUMED may have been handled by the
//! dead process ([`Replay`]).

mod checkpoint;

use std::collections::HashSet;
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::future::BoxFuture;

use crate::BoxError;
use crate::ipc::Ipc;
use crate::ipc::link::{Handoff, Stop, WorkerControl};
use crate::ipc::proto::{ClusterAssignment, ShardEvent, ShardSession, Status};
use crate::stats::board::ShardBoard;
use checkpoint::SessionLog;
pub use checkpoint::{MAX_CHECKPOINT_STATE, Replay};

/// How long a cluster whose admiral is gone gives its shards to close.
const DISCONNECTED_GRACE: Duration = Duration::from_secs(5);

/// What an adapter does with its library's shards. Every method is called from [`serve`], one at
/// a time.
pub trait Shards: Send {
    /// Whether the library can resume a session another process opened (a handover).
    fn resumes_sessions(&self) -> bool {
        true
    }

    /// Connects every shard of the cluster; a shard named in `sessions` resumes that session
    /// instead of identifying. Shards report through the [`ShardReporter`] they were built with.
    fn start(&mut self, sessions: Vec<ShardSession>) -> BoxFuture<'_, Result<(), BoxError>>;

    /// Closes every shard resumably, after the worker has handled every event the shard
    /// received, and returns their sessions (a shard that had none yet is left out: the
    /// replacement identifies it).
    fn hand_over(&mut self) -> BoxFuture<'_, Vec<ShardSession>>;

    /// Closes every shard for good (close code 1000), within `grace`.
    fn close(&mut self, grace: Duration) -> BoxFuture<'_, ()>;

    /// The worker's hook when a standby cluster goes live. Default: nothing.
    fn activate(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }

    /// A reshard's switch time reached this cluster (see [`ShardReporter::admits`]); an adapter
    /// whose library hands events to user code past the reporter applies it here. Default:
    /// nothing.
    fn cut(&mut self, _at_ms: u64, _old: bool) {}

    /// An old generation's cluster stops handing events to the worker (the reporter's standby
    /// gate is closed already); an adapter whose library hands events to user code past that
    /// gate stops them here. Default: nothing.
    fn deactivate(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }

    /// The worker's hook on a graceful shutdown, before the shards close. Default: nothing.
    fn shutdown(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

/// What only a cluster's adapter asks of the admiral; the user's code gets the [`Ipc`] alone.
#[derive(Debug, Clone)]
pub struct ClusterLink {
    ipc: Ipc,
}

impl ClusterLink {
    pub(crate) fn new(ipc: Ipc) -> Self {
        Self { ipc }
    }

    /// The cluster's IPC handle, as the user's code gets it.
    #[must_use]
    pub fn ipc(&self) -> &Ipc {
        &self.ipc
    }

    /// Waits until the admiral's identify queue lets `shard` identify.
    ///
    /// # Errors
    /// When the admiral refuses (a shard outside the plan) or is gone, or the wait outlasts
    /// [`IDENTIFY_TIMEOUT`](crate::ipc::client::IDENTIFY_TIMEOUT).
    pub async fn identify(&self, shard: u32) -> Result<(), crate::IpcError> {
        self.ipc.identify(shard).await
    }

    /// Sets what answers the cache lookups other workers send to this cluster.
    pub fn set_fetch_handler(&self, handler: crate::FetchHandler) {
        self.ipc.set_fetch_handler(handler);
    }

    /// Sets what counts this cluster's guilds, for [`Ipc::guild_count`].
    pub fn set_guild_counter(&self, counter: crate::ipc::client::GuildCounter) {
        self.ipc.set_guild_counter(counter);
    }

    /// Sets what reads this cluster's cache counts (guilds, users, members, by shard) for each
    /// stats round. It runs on the IPC reader: it should count what the cache holds, quickly.
    pub fn set_cache_counter(&self, counter: crate::ipc::client::CacheCounter) {
        self.ipc.set_cache_counter(counter);
    }

    /// Sets what makes the user's own stats fields each round, encoded with
    /// [`stats::encode_fields`](crate::stats::encode_fields) (an adapter calls its worker
    /// trait's `stats` method here).
    pub fn set_stats_fields(
        &self,
        fields: Arc<dyn Fn() -> Result<Option<crate::Payload>, String> + Send + Sync>,
    ) {
        self.ipc.set_stats_encoder(fields);
    }
}

/// How a cluster's shards tell the admiral what happens to them; cheap to clone, one per shard
/// task if need be.
#[derive(Debug, Clone)]
pub struct ShardReporter {
    ipc: Ipc,
    shards: RangeInclusive<u32>,
    /// Shards that have been ready since the last start.
    ready: Arc<Mutex<HashSet<u32>>>,
    /// Whether events reach the worker (false while in standby).
    live: Arc<AtomicBool>,
    /// A reshard's switch time, once told.
    cut: Arc<SwitchTime>,
    /// Events and latency per shard, for stats rounds.
    board: Arc<ShardBoard>,
    /// Each shard's session and how far the worker handled it, for checkpoints.
    sessions: Arc<SessionLog>,
    /// Whether the fleet checkpoints sessions at all.
    checkpoints: bool,
}

impl ShardReporter {
    /// Whether this cluster's host may run shards now. On several hosts the admiral renews a
    /// licence with every renewal of the host's lease; once it runs out (the admiral could not
    /// renew, or was frozen with the whole host), an adapter must not reconnect a shard whose
    /// connection closed (another host may resume that session) until it holds again or the
    /// admiral says what to do. Always true on one host.
    #[must_use]
    pub fn licensed(&self) -> bool {
        self.ipc.licensed()
    }

    /// A reporter for the cluster `assignment` describes.
    #[must_use]
    pub fn new(link: &ClusterLink, assignment: &ClusterAssignment) -> Self {
        let shards = assignment.first_shard..=assignment.last_shard;
        let board = Arc::new(ShardBoard::new(shards.clone()));
        link.ipc.set_shard_board(board.clone());
        Self {
            ipc: link.ipc.clone(),
            shards,
            ready: Arc::default(),
            live: Arc::new(AtomicBool::new(!assignment.standby)),
            cut: Arc::default(),
            board,
            sessions: Arc::new(SessionLog::new(
                &(assignment.first_shard..=assignment.last_shard),
            )),
            checkpoints: assignment.checkpoint_ms > 0,
        }
    }

    /// `shard` opened session `session_id` (its READY), or took one over: checkpointed at once.
    /// `state` is whatever else the library needs to resume it in another process (at most
    /// [`MAX_CHECKPOINT_STATE`] bytes; empty for most).
    pub fn opened(
        &self,
        shard: u32,
        session_id: &str,
        resume_url: Option<&str>,
        state: crate::Payload,
    ) {
        self.sessions.open(shard, session_id, resume_url, state);
    }

    /// The worker has handled `shard`'s events up to gateway sequence `sequence`. One relaxed
    /// atomic store: call it after every event.
    pub fn handled(&self, shard: u32, sequence: u64) {
        self.sessions.handled(shard, sequence);
    }

    /// `shard`'s session ended for good (Discord invalidated it): nothing to resume.
    pub fn session_ended(&self, shard: u32) {
        self.sessions.ended(shard);
    }

    /// The library hands events to user code without waiting for it to finish, so what
    /// [`handled`](Self::handled) records is only handed over: checkpoints then trail one
    /// interval behind, so a crash replays rather than loses what was still being handled.
    pub fn checkpoints_trail(&self) {
        self.sessions.set_trailing();
    }

    /// What tells the worker's handlers which events a crash may make them see twice.
    #[must_use]
    pub fn replay(&self) -> Replay {
        Replay(self.sessions.clone())
    }

    /// Counts one gateway event `shard` received (for its events per second in stats). One
    /// relaxed atomic add: call it for every event.
    pub fn event(&self, shard: u32) {
        self.board.event(shard);
    }

    /// Adds the time `shard`'s event loop spent on one event (cache update and handler): its
    /// share of the time is the shard's [`busy`](crate::stats::ShardStats::busy) in stats, how
    /// a shard that falls behind shows. An adapter whose event loop is not sequential leaves it
    /// uncalled.
    pub fn busy(&self, shard: u32, took: Duration) {
        self.board.busy(shard, took);
    }

    /// Records `shard`'s latest gateway heartbeat round trip.
    pub fn latency(&self, shard: u32, latency: Duration) {
        self.board.latency(shard, latency);
    }

    /// Reports `event` of `shard`; READY and RESUMED count towards the cluster being ready,
    /// which is reported once, when the last of its shards gets there.
    pub async fn report(&self, shard: u32, event: ShardEvent) {
        let counts = matches!(event, ShardEvent::Ready | ShardEvent::Resumed);
        if counts {
            // A resumed session has replayed what it missed; a new one replays nothing.
            self.sessions.set_replaying(shard, false);
            // Checkpointed before it counts as ready: once the admiral sees a cluster ready, a
            // crash of it resumes every shard.
            if let Some(session) = self.sessions.current(shard).filter(|_| self.checkpoints) {
                let _ = self.ipc.checkpoint(vec![session]).await;
            }
        }
        let _ = self.ipc.report(Status::Shard { shard, event }).await;
        if counts && self.shards.contains(&shard) {
            let all_ready = {
                let mut ready = self.ready.lock().unwrap_or_else(PoisonError::into_inner);
                ready.insert(shard) && ready.len() == self.shards.clone().count()
            };
            if all_ready {
                let _ = self.ipc.report(Status::Ready).await;
            }
        }
    }

    /// Whether events should reach the worker now (a standby cluster's shards fill their cache
    /// only).
    #[must_use]
    pub fn is_live(&self) -> bool {
        self.live.load(Ordering::SeqCst)
    }

    /// Whether an event should reach the worker now. `created` is the snowflake id of what the
    /// event creates (a message, an interaction, a channel, a role), if it creates something:
    /// during a reshard's switch such an event goes to the generation its creation time belongs
    /// to ([`Down::Cut`](crate::ipc::proto::Down::Cut)), so each is handled exactly once; every
    /// other event follows [`is_live`](Self::is_live).
    #[must_use]
    pub fn admits(&self, created: Option<u64>) -> bool {
        admitted(&self.cut, self.is_live(), created)
    }

    /// Where an event goes now: to the worker, nowhere, or held ([`Placement`]). Like
    /// [`admits`](Self::admits), except that a standby cluster holds what creates something
    /// until it knows the switch time and is live, instead of dropping it: the switch time is
    /// chosen a moment ahead, but the admiral's word may reach this process after the events it
    /// splits do, and dropping them then would leave them to neither generation.
    #[must_use]
    pub fn placement(&self, created: Option<u64>) -> Placement {
        placed(&self.cut, self.is_live(), created)
    }

    /// Sets a reshard's switch time.
    pub fn cut(&self, at_ms: u64, old: bool) {
        self.cut.set(at_ms, old);
    }

    /// Reports a panic caught in user code (`context`: where; `shard` and `event` if known).
    pub async fn panicked(
        &self,
        panicked: crate::panics::Panicked,
        context: &str,
        shard: Option<u32>,
        event: Option<String>,
    ) {
        let report = panicked.report(context, shard, event);
        let _ = self.ipc.report(Status::Panic(report)).await;
    }

    /// Goes live; whether it was not already.
    fn go_live(&self) -> bool {
        !self.live.swap(true, Ordering::SeqCst)
    }

    /// Stops handing events to the worker; whether it was live.
    fn go_standby(&self) -> bool {
        self.live.swap(false, Ordering::SeqCst)
    }

    /// A new start: readiness is counted afresh.
    fn restart(&self) {
        self.ready
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }
}

/// [`ShardReporter::admits`] for a cluster whose switch time is `cut` and that is `live` or not.
fn admitted(cut: &SwitchTime, live: bool, created: Option<u64>) -> bool {
    match created.and_then(|id| cut.ours(id)) {
        // The new generation takes its share only once live.
        Some(ours) => ours && (cut.is_old() || live),
        None => live,
    }
}

/// [`ShardReporter::placement`], likewise.
fn placed(cut: &SwitchTime, live: bool, created: Option<u64>) -> Placement {
    if admitted(cut, live, created) {
        return Placement::Handle;
    }
    let waiting = created.is_some()
        && !cut.is_old()
        && !live
        && created.and_then(|id| cut.ours(id)) != Some(false);
    if waiting {
        Placement::Hold
    } else {
        Placement::Skip
    }
}

/// Where an event goes ([`ShardReporter::placement`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// To the worker now.
    Handle,
    /// Nowhere: another generation handles it, or a standby cluster only caches it.
    Skip,
    /// Into a [`Held`] queue until the cluster is live and knows the switch time.
    Hold,
}

/// What a standby cluster holds back ([`Placement::Hold`]) until it can tell which generation's
/// it is: the events of the last [`Held::WINDOW`], at most [`Held::CAP`] of them, oldest
/// dropped first (an event older than that was the old generation's anyway). One per shard
/// task; `T` is whatever the adapter handles (a parsed event, a raw frame).
#[derive(Debug)]
pub struct Held<T> {
    items: std::collections::VecDeque<(std::time::Instant, u64, T)>,
}

impl<T> Default for Held<T> {
    fn default() -> Self {
        Self {
            items: std::collections::VecDeque::new(),
        }
    }
}

impl<T> Held<T> {
    /// How long an event is held at most.
    pub const WINDOW: Duration = Duration::from_secs(5);
    /// How many events one queue holds at most.
    pub const CAP: usize = 10_000;

    /// Holds an event that creates snowflake `created`.
    pub fn hold(&mut self, created: u64, item: T) {
        let now = std::time::Instant::now();
        while self.items.len() >= Self::CAP
            || self
                .items
                .front()
                .is_some_and(|(at, _, _)| now.duration_since(*at) > Self::WINDOW)
        {
            self.items.pop_front();
        }
        self.items.push_back((now, created, item));
    }

    /// Whether nothing is held.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Once `reporter` no longer holds (live, or told it is the old generation): the held events
    /// it admits, oldest first; the others are dropped. Before that: nothing, and all stay held.
    pub fn release(&mut self, reporter: &ShardReporter) -> Vec<T> {
        if self.items.is_empty() || (!reporter.is_live() && !reporter.cut.is_old()) {
            return Vec::new();
        }
        self.release_with(|created| reporter.admits(Some(created)))
    }

    /// Every held event, oldest first, that `admits` the snowflake it creates; the others are
    /// dropped. For an adapter that decides by itself when holding ends.
    pub fn release_with(&mut self, admits: impl Fn(u64) -> bool) -> Vec<T> {
        self.items
            .drain(..)
            .filter(|(_, created, _)| admits(*created))
            .map(|(_, _, item)| item)
            .collect()
    }
}

/// A reshard's switch time as one cluster knows it ([`Down::Cut`](crate::ipc::proto::Down::Cut)):
/// what creates something before it is the old generation's to handle, at or after it the new
/// one's. Lock-free: it is read for every event.
#[derive(Debug, Default)]
pub struct SwitchTime(std::sync::atomic::AtomicU64);

impl SwitchTime {
    /// Sets the switch time (milliseconds since the Unix epoch) and this cluster's side.
    pub fn set(&self, at_ms: u64, old: bool) {
        self.0
            .store((at_ms << 1) | u64::from(old), Ordering::SeqCst);
    }

    /// Whether what snowflake `id` created is this cluster's to handle; `None` before a switch
    /// time is known.
    #[must_use]
    pub fn ours(&self, id: u64) -> Option<bool> {
        let packed = self.0.load(Ordering::SeqCst);
        (packed != 0).then(|| (snowflake_ms(id) < packed >> 1) == (packed & 1 == 1))
    }

    /// Whether this cluster belongs to the old generation (false before a switch time is known).
    #[must_use]
    pub fn is_old(&self) -> bool {
        self.0.load(Ordering::SeqCst) & 1 == 1
    }
}

/// Milliseconds since the Unix epoch when a Discord snowflake was made.
#[must_use]
pub const fn snowflake_ms(id: u64) -> u64 {
    (id >> 22) + 1_420_070_400_000
}

/// Fills a per-shard text template (a presence per shard, say): `{shard}`, `{shard_total}`
/// and `{cluster}` become those numbers; everything else stays as written.
#[must_use]
pub fn render_template(template: &str, shard: u32, shard_total: u32, cluster: u32) -> String {
    template
        .replace("{shard}", &shard.to_string())
        .replace("{shard_total}", &shard_total.to_string())
        .replace("{cluster}", &cluster.to_string())
}

/// Runs a cluster whose worker has started, until it must stop (see the module's docs).
///
/// # Errors
/// When the shards cannot start, a handover's sessions cannot be sent, or the library cannot
/// take over a handover's sessions.
pub async fn serve(
    link: &ClusterLink,
    assignment: &ClusterAssignment,
    mut control: WorkerControl,
    reporter: &ShardReporter,
    mut shards: impl Shards,
) -> Result<(), BoxError> {
    let ipc = &link.ipc;
    let handoffs = control.clone();
    // After a crash: the dead process's sessions, from its last checkpoints.
    let mut sessions = assignment.resume.clone();
    for session in &sessions {
        reporter.sessions.set_replaying(session.shard, true);
    }
    let every = Duration::from_millis(assignment.checkpoint_ms);
    if assignment.handover {
        if !shards.resumes_sessions() {
            let reason = "this cluster's library cannot resume handed-over sessions; restart it with RestartMode::Overlap";
            let _ = ipc.report(Status::StartFailed(reason.to_owned())).await;
            ipc.flush().await;
            return Err(reason.into());
        }
        let _ = ipc.report(Status::Prepared).await;
        loop {
            tokio::select! {
                handoff = handoffs.handoff() => match handoff {
                    Some(Handoff::Sessions(handed)) => {
                        sessions = handed;
                        break;
                    }
                    Some(_) => {}
                    None => return Ok(()),
                },
                stop = control.stopped() => {
                    shut_down(ipc, &mut shards, stop).await;
                    return Ok(());
                }
            }
        }
    }
    loop {
        reporter.restart();
        shards.start(sessions).await?;
        let checkpoints = (!every.is_zero()).then(|| {
            AbortOnDrop(tokio::spawn(checkpoint::run(
                reporter.sessions.clone(),
                ipc.clone(),
                every,
            )))
        });
        // Serve until told to stop or to hand the sessions over.
        loop {
            tokio::select! {
                stop = control.stopped() => {
                    let grace = shut_down(ipc, &mut shards, stop).await;
                    shards.close(grace).await;
                    return Ok(());
                }
                handoff = handoffs.handoff() => match handoff {
                    Some(Handoff::Activate) => {
                        if reporter.go_live() {
                            tracing::info!(target: "fleet::shard", "activated: events reach the worker");
                            guarded(reporter, "activate", shards.activate()).await;
                        }
                    }
                    Some(Handoff::Cut { at_ms, old }) => {
                        tracing::info!(target: "fleet::shard", at_ms, old, "reshard switch time set");
                        reporter.cut(at_ms, old);
                        shards.cut(at_ms, old);
                    }
                    Some(Handoff::Deactivate) => {
                        if reporter.go_standby() {
                            tracing::info!(target: "fleet::shard", "deactivated: the new generation handles events now");
                            guarded(reporter, "deactivate", shards.deactivate()).await;
                        }
                    }
                    Some(Handoff::CloseResumably) => break,
                    Some(Handoff::Sessions(_)) => {}
                    None => return Ok(()),
                },
            }
        }
        // The sessions are the replacement's now: checkpoints stop here.
        drop(checkpoints);
        let handed = shards.hand_over().await;
        tracing::info!(target: "fleet::shard", shards = handed.len(), "handing sessions over");
        ipc.hand_over(handed).await?;
        // Now either the replacement serves and this process is told to stop, or it failed and
        // the sessions come back.
        loop {
            tokio::select! {
                stop = control.stopped() => {
                    shut_down(ipc, &mut shards, stop).await;
                    return Ok(());
                }
                handoff = handoffs.handoff() => match handoff {
                    Some(Handoff::Sessions(back)) => {
                        tracing::warn!(target: "fleet::shard", "the replacement failed; resuming the sessions here");
                        sessions = back;
                        break;
                    }
                    Some(_) => {}
                    None => return Ok(()),
                },
            }
        }
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs the worker's shutdown hook on a graceful stop, within its grace; the grace the shards
/// have left to close.
async fn shut_down(ipc: &Ipc, shards: &mut impl Shards, stop: Stop) -> Duration {
    match stop {
        Stop::Shutdown(grace) => {
            let hook = tokio::time::timeout(grace, shards.shutdown());
            if let Err(panicked) = crate::panics::catch(hook).await {
                let report = panicked.report("shutdown", None, None);
                let _ = ipc.report(Status::Panic(report)).await;
            }
            grace
        }
        Stop::Disconnected => DISCONNECTED_GRACE,
    }
}

/// Runs a hook of user code; a panic in it is reported and goes no further.
async fn guarded(reporter: &ShardReporter, context: &str, hook: BoxFuture<'_, ()>) {
    if let Err(panicked) = crate::panics::catch(hook).await {
        reporter.panicked(panicked, context, None, None).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A snowflake made `ms` after the Unix epoch.
    fn made_at(ms: u64) -> u64 {
        ((ms - 1_420_070_400_000) << 22) | 7
    }

    #[test]
    fn a_switch_time_gives_each_creation_to_exactly_one_generation() {
        let at = 1_800_000_000_000;
        let (old, new) = (SwitchTime::default(), SwitchTime::default());
        assert_eq!(old.ours(made_at(at)), None, "no switch yet");
        old.set(at, true);
        new.set(at, false);
        assert!(old.is_old() && !new.is_old());
        for ms in [at - 1_000, at - 1, at, at + 1, at + 60_000] {
            let id = made_at(ms);
            assert_eq!(snowflake_ms(id), ms);
            let (o, n) = (old.ours(id).unwrap(), new.ours(id).unwrap());
            assert!(
                o != n,
                "exactly one generation handles what was made at {ms}"
            );
            assert_eq!(o, ms < at);
        }
    }

    #[test]
    fn a_standby_generation_holds_what_it_cannot_place_yet() {
        let at = 1_800_000_000_000;
        let (before, after) = (Some(made_at(at - 1)), Some(made_at(at)));
        let new = SwitchTime::default();
        // Standby, no switch time yet: what creates something waits, the rest is cache only.
        assert_eq!(placed(&new, false, after), Placement::Hold);
        assert_eq!(placed(&new, false, None), Placement::Skip);
        // Told the time, not yet live: its share waits, the old generation's is dropped.
        new.set(at, false);
        assert_eq!(placed(&new, false, after), Placement::Hold);
        assert_eq!(placed(&new, false, before), Placement::Skip);
        // Live: its share goes to user code.
        assert_eq!(placed(&new, true, after), Placement::Handle);
        assert_eq!(placed(&new, true, before), Placement::Skip);
        // The old generation never holds: before the time it handles all, then its share.
        let old = SwitchTime::default();
        assert_eq!(placed(&old, true, after), Placement::Handle);
        old.set(at, true);
        assert_eq!(placed(&old, false, before), Placement::Handle);
        assert_eq!(placed(&old, false, after), Placement::Skip);
    }

    #[test]
    fn held_events_come_out_in_order_and_only_when_admitted() {
        let mut held = Held::default();
        for (id, item) in [(1, "a"), (2, "b"), (3, "c")] {
            held.hold(id, item);
        }
        assert!(!held.is_empty());
        assert_eq!(held.release_with(|id| id != 2), vec!["a", "c"]);
        assert!(held.is_empty(), "released or dropped, nothing stays");
        let mut full = Held::default();
        for id in 0..=Held::<u64>::CAP as u64 {
            full.hold(id, id);
        }
        let kept = full.release_with(|_| true);
        assert_eq!(kept.len(), Held::<u64>::CAP, "the oldest went first");
        assert_eq!(kept[0], 1);
    }

    #[test]
    fn templates_fill_in_the_shards_numbers() {
        assert_eq!(
            render_template("shard {shard}/{shard_total} on {cluster}", 3, 8, 1),
            "shard 3/8 on 1"
        );
    }
}
