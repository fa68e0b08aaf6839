//! What a worker answers: commands sent to it (the user's handler), cache lookups, guild
//! counts and stats rounds (the adapter's handlers and the user's stats fields), and the adapter's own reports to the admiral (identify
//! permission, status, sessions handed over).

use std::sync::{Arc, PoisonError};
use std::time::Duration;

use futures::future::BoxFuture;
use serde::Serialize;

use super::client::{
    CacheCounter, CommandHandler, FetchHandler, GuildCounter, Ipc, IpcError, RunningCommand,
    StatsFields, unexpected,
};
use super::client::{IDENTIFY_TIMEOUT, Transport};
use super::proto::{Fetch, Outcome, Payload, Reply, Request, ShardSession, Status, Target, Up};
use crate::stats::WorkerReport;
use crate::stats::board::ShardBoard;

impl Ipc {
    /// Sets what answers commands sent to this process (adapters and worker runtimes do this).
    pub fn set_command_handler(&self, handler: CommandHandler) {
        *self
            .inner
            .commands
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(handler);
    }

    /// Counts an incoming command as running until the guard drops.
    pub(crate) fn command_running(&self) -> RunningCommand {
        // Only reaching zero is news: waiters look for that alone.
        self.inner.running.send_if_modified(|n| {
            *n += 1;
            false
        });
        RunningCommand(self.inner.clone())
    }

    /// Waits until every incoming command has been answered, for at most `timeout`.
    pub async fn commands_done(&self, timeout: Duration) {
        let mut running = self.inner.running.subscribe();
        let _ = tokio::time::timeout(timeout, running.wait_for(|n| *n == 0)).await;
    }

    /// Runs this process's command handler on an incoming command, within `timeout`.
    pub(crate) fn run_command(
        &self,
        from: Target,
        payload: Payload,
        timeout: Duration,
    ) -> BoxFuture<'static, Outcome> {
        let handler = self
            .inner
            .commands
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let ipc = self.clone();
        Box::pin(async move {
            let Some(handler) = handler else {
                return Outcome::Error("this worker has no command handler".to_owned());
            };
            // Kept for a panic report only: a clone, not a formatted string, on every command.
            let asked = from.clone();
            let run = crate::panics::catch(handler(from, payload));
            match tokio::time::timeout(timeout, run).await {
                Ok(Ok(Ok(payload))) => Outcome::Ok(payload),
                Ok(Ok(Err(message))) => Outcome::Error(message),
                Ok(Err(panicked)) => {
                    let answer = format!("the command handler panicked: {}", panicked.message);
                    let asked = Some(format!("from {asked}"));
                    ipc.report_panic(panicked.report("command", None, asked));
                    Outcome::Error(answer)
                }
                Err(_) => Outcome::TimedOut,
            }
        })
    }

    /// Sets what answers cache lookups sent to this cluster (adapters do this).
    pub(crate) fn set_fetch_handler(&self, handler: FetchHandler) {
        set(&self.inner.fetcher, handler);
    }

    /// Answers a lookup from this process's cache: the JSON, or an empty payload for a miss.
    pub(crate) fn run_fetch(&self, query: Fetch) -> Outcome {
        let Some(handler) = get(&self.inner.fetcher) else {
            return Outcome::Ok(Payload::default());
        };
        let event = || Some(format!("{query:?}"));
        self.run_handler("fetch", event, || handler(query))
            .map_or_else(
                |e| e,
                |found| Outcome::Ok(found.map(Payload::from).unwrap_or_default()),
            )
    }

    /// Sets what counts the guilds of this cluster (adapters do this).
    pub(crate) fn set_guild_counter(&self, counter: GuildCounter) {
        set(&self.inner.guilds, counter);
    }

    /// Sets what reads this cluster's cache counts for stats rounds (adapters do this).
    pub(crate) fn set_cache_counter(&self, counter: CacheCounter) {
        set(&self.inner.cache_counts, counter);
    }

    /// Sets the per-shard counters stats rounds read (the cluster's shard reporter does this).
    pub(crate) fn set_shard_board(&self, board: Arc<ShardBoard>) {
        set(&self.inner.shard_board, board);
    }

    /// Whether this host may run shards now: no licence was ever given (one host), or the last
    /// one holds ([`Down::Licence`](crate::ipc::proto::Down::Licence)).
    #[must_use]
    pub fn licensed(&self) -> bool {
        self.inner
            .licence
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_none_or(|until| tokio::time::Instant::now() < until)
    }

    /// The admiral's licence: shards may run `valid` from now.
    pub(crate) fn set_licence(&self, valid: std::time::Duration) {
        let until = tokio::time::Instant::now() + valid.min(crate::ipc::proto::MAX_TIMEOUT);
        *self
            .inner
            .licence
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(until);
    }

    /// Adds this worker's own fields to every stats snapshot, under this worker: `fields` runs
    /// once per round, on the worker's IPC reader, so it should only read what it has at hand.
    /// Returning `()` adds nothing. A panic in it, or a value that does not encode, shows in the
    /// snapshot's `missing` list, and the rest of this worker's report still arrives.
    pub fn set_stats_fields<T, F>(&self, fields: F)
    where
        T: Serialize,
        F: Fn() -> T + Send + Sync + 'static,
    {
        self.set_stats_encoder(Arc::new(move || crate::stats::encode_fields(&fields())));
    }

    /// As [`set_stats_fields`](Self::set_stats_fields), for a maker that encodes itself (with
    /// [`encode_stats_fields`]), so its value may borrow.
    pub(crate) fn set_stats_encoder(&self, fields: StatsFields) {
        set(&self.inner.stats_fields, fields);
    }

    /// Answers a stats round: what only this worker knows.
    pub(crate) fn report_stats(&self) -> Outcome {
        let mut report = WorkerReport::default();
        if let Some(counter) = get(&self.inner.cache_counts) {
            match self.run_handler("stats", || None, || counter()) {
                Ok(counts) => report.cache = Some(counts),
                Err(Outcome::Error(error)) => report.custom_error = Some(error),
                Err(_) => {}
            }
        }
        if let Some(board) = get(&self.inner.shard_board) {
            report.shards = board.read();
        }
        if let Some(fields) = get(&self.inner.stats_fields) {
            match self.run_handler("stats", || None, || fields()) {
                Ok(Ok(custom)) => report.custom = custom,
                Ok(Err(error)) | Err(Outcome::Error(error)) => report.custom_error = Some(error),
                Err(_) => {}
            }
        }
        Payload::encode(&report).map_or_else(|e| Outcome::Error(e.to_string()), Outcome::Ok)
    }

    /// Answers a guild count with the adapter's counter.
    pub(crate) fn count_guilds(&self) -> Outcome {
        let Some(counter) = get(&self.inner.guilds) else {
            return Outcome::Error("this cluster counts no guilds".to_owned());
        };
        let count = match self.run_handler("guild count", || None, || counter()) {
            Ok(count) => count,
            Err(error) => return error,
        };
        Payload::encode(&count).map_or_else(|e| Outcome::Error(e.to_string()), Outcome::Ok)
    }

    /// Runs an adapter's handler on the reader; a panic in it is reported (with `event`, made
    /// only then) and answered as an error.
    fn run_handler<T>(
        &self,
        context: &str,
        event: impl FnOnce() -> Option<String>,
        handler: impl FnOnce() -> T,
    ) -> Result<T, Outcome> {
        crate::panics::catch_sync(handler).map_err(|panicked| {
            let answer = format!("the {context} handler panicked: {}", panicked.message);
            self.report_panic(panicked.report(context, None, event()));
            Outcome::Error(answer)
        })
    }

    /// Waits until the admiral's identify queue lets `shard` identify.
    pub(crate) async fn identify(&self, shard: u32) -> Result<(), IpcError> {
        match self
            .request(Request::Identify { shard }, IDENTIFY_TIMEOUT)
            .await?
        {
            Reply::Done => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Hands the sessions of this cluster's shards (closed resumably after a handover request)
    /// to the admiral, which passes them to the replacement.
    pub(crate) async fn hand_over(&self, sessions: Vec<ShardSession>) -> Result<(), IpcError> {
        match &self.inner.transport {
            Transport::Socket(up) => up.send(&Up::Sessions(sessions)).await,
            Transport::Local(_) => Ok(()),
        }
    }

    /// Sends the admiral a checkpoint of some shards' sessions.
    pub(crate) async fn checkpoint(&self, sessions: Vec<ShardSession>) -> Result<(), IpcError> {
        match &self.inner.transport {
            Transport::Socket(up) => up.send(&Up::Checkpoint(sessions)).await,
            Transport::Local(_) => Ok(()),
        }
    }

    /// Reports a lifecycle status to the admiral (ready, start failure, shard progress).
    pub(crate) async fn report(&self, status: Status) -> Result<(), IpcError> {
        if status == Status::Ready {
            self.inner
                .ready
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        match &self.inner.transport {
            Transport::Socket(up) => up.send(&Up::Status(status)).await,
            Transport::Local(_) => Ok(()),
        }
    }
}

/// The handler in `slot`, if one is set.
fn get<T: Clone>(slot: &std::sync::RwLock<Option<T>>) -> Option<T> {
    slot.read().unwrap_or_else(PoisonError::into_inner).clone()
}

/// Sets the handler in `slot`.
fn set<T>(slot: &std::sync::RwLock<Option<T>>, handler: T) {
    *slot.write().unwrap_or_else(PoisonError::into_inner) = Some(handler);
}
