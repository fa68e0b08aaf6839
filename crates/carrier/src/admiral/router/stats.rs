//! Stats rounds: the admiral's own records of every shard and process (kept as things happen),
//! and the rounds that ask every worker for what only it knows and make a snapshot of it all
//! (see [`crate::stats`]). The router only starts a round and hears its end; asking the workers
//! goes through the call table, and measuring processes and assembling the snapshot run off the
//! router's task.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use tokio::sync::oneshot;

use super::calls::{Route, Waiter};
use super::commands::{ADMIRAL_PROCESS, Ask};
use super::{Inbox, Router, Timer};
use crate::admiral::FleetEvent;
use crate::admiral::lifecycle::{ProcessId, State, WorkerId};
use crate::ipc::proto::{Outcome, Payload, Reply, ShardEvent, Target, WorkerInfo};
use crate::stats::assemble::{Facts, Previous, WorkerFacts, assemble};
use crate::stats::meter::Meter;
use crate::stats::{FleetStats, STATS_EVENT, ShardStats, ShardStatus};

/// How long workers have to report in an interval's round (at most half the interval).
const INTERVAL_DEADLINE: Duration = Duration::from_secs(2);

/// The longest any round waits for workers, whatever the asker wants: later askers join a
/// round under way, so one asking for a day must not hold everyone's snapshot that long.
const MAX_DEADLINE: Duration = Duration::from_secs(30);

/// The admiral's record of one shard, over the fleet's life.
#[derive(Debug, Clone, Copy)]
struct ShardRecord {
    cluster: u32,
    process: ProcessId,
    status: ShardStatus,
    identifies: u32,
    resumes: u32,
    disconnects: u32,
    last_close_code: Option<u16>,
}

/// What the measuring and assembling half of a round keeps between rounds.
#[derive(Debug, Default)]
struct Collector {
    meter: Meter,
    previous: Previous,
}

/// The router's stats records.
#[derive(Debug, Default)]
pub(super) struct StatsBook {
    shards: BTreeMap<u32, ShardRecord>,
    /// Identifies granted to shards not reported yet.
    granted: BTreeMap<u32, u32>,
    /// Processes started per worker.
    spawns: BTreeMap<WorkerId, u32>,
    collector: Arc<Mutex<Collector>>,
    /// The last ping sent: its number and when.
    ping: Option<(u64, tokio::time::Instant)>,
    /// While a round asked for is under way: the forwards waiting for it. Others asking
    /// meanwhile join it instead of starting rounds of their own, so no worker can make the
    /// admiral ask every worker more than once at a time.
    /// With each, whether it asked for the whole bot (several hosts) or this host only.
    joined: Option<Vec<(u64, bool)>>,
}

impl StatsBook {
    /// A shard's progress, as `process` of `cluster` reported it. Counts go to the shard
    /// whoever reports; its status follows the newest process that runs it.
    pub fn shard(&mut self, cluster: u32, shard: u32, process: ProcessId, event: &ShardEvent) {
        let granted = self.granted.remove(&shard).unwrap_or(0);
        let record = self.shards.entry(shard).or_insert(ShardRecord {
            cluster,
            process,
            status: ShardStatus::Pending,
            identifies: 0,
            resumes: 0,
            disconnects: 0,
            last_close_code: None,
        });
        record.identifies += granted;
        let newest = process >= record.process;
        match event {
            ShardEvent::Resumed => record.resumes += 1,
            ShardEvent::Disconnected(code) => {
                record.disconnects += 1;
                if code.is_some() {
                    record.last_close_code = *code;
                }
            }
            _ => {}
        }
        if newest {
            record.cluster = cluster;
            record.process = process;
            record.status = match event {
                ShardEvent::Connecting => ShardStatus::Connecting,
                ShardEvent::Ready | ShardEvent::Resumed => ShardStatus::Ready,
                ShardEvent::Disconnected(_) => ShardStatus::Disconnected,
            };
        }
    }

    /// A process ended: the shards whose session it held are down until another reports them.
    pub fn process_gone(&mut self, process: ProcessId) {
        for record in self.shards.values_mut().filter(|r| r.process == process) {
            if record.status != ShardStatus::Disconnected {
                record.status = ShardStatus::Disconnected;
                record.disconnects += 1;
            }
        }
    }

    /// The admiral let `shard` identify.
    pub fn identified(&mut self, shard: u32) {
        match self.shards.get_mut(&shard) {
            Some(record) => record.identifies += 1,
            None => *self.granted.entry(shard).or_default() += 1,
        }
    }

    /// A process of `worker` was spawned.
    pub fn spawned(&mut self, worker: &WorkerId) {
        *self.spawns.entry(worker.clone()).or_default() += 1;
    }

    /// A ping went out to every serving worker.
    pub fn pinged(&mut self, seq: u64) {
        self.ping = Some((seq, tokio::time::Instant::now()));
    }

    /// How long ago ping `seq` went out, if it is the last one.
    pub fn pong(&self, seq: u64) -> Option<Duration> {
        let (sent, at) = self.ping?;
        (sent == seq).then(|| at.elapsed())
    }

    fn shard_stats(&self, id: u32, cluster: u32) -> ShardStats {
        let mut stats = ShardStats {
            id,
            cluster,
            identifies: self.granted.get(&id).copied().unwrap_or(0),
            ..ShardStats::default()
        };
        if let Some(r) = self.shards.get(&id) {
            stats.process = Some(r.process);
            stats.status = r.status;
            stats.identifies = r.identifies;
            stats.resumes = r.resumes;
            stats.disconnects = r.disconnects;
            stats.last_close_code = r.last_close_code;
        }
        stats
    }
}

/// A worker's state as snapshots show it.
fn state_name(state: &State) -> String {
    match state {
        State::Pending => "pending".to_owned(),
        State::Spawned => "spawned".to_owned(),
        State::Starting => "starting".to_owned(),
        State::Live => "live".to_owned(),
        State::Backoff => "backoff".to_owned(),
        State::Draining => "draining".to_owned(),
        State::Stopped => "stopped".to_owned(),
        State::Failed(why) => format!("failed: {why}"),
    }
}

impl Router {
    /// Starts the interval's rounds, if any.
    pub(super) fn arm_stats(&mut self) {
        if !self.config.stats_interval.is_zero() {
            self.arm(Timer::Stats, self.config.stats_interval);
        }
    }

    /// An interval's round: its snapshot is published when done.
    pub(super) fn stats_interval(&mut self) {
        let deadline = INTERVAL_DEADLINE.min(self.config.stats_interval / 2);
        self.stats_round(false, deadline);
        self.arm_stats();
    }

    /// A round asked for by `waiter`: workers get `deadline` (at most 80% of `timeout`). The
    /// asker is answered through the call table, so it hears "timed out" rather than nothing if
    /// the round never ends; while one round is under way, later askers join it.
    /// `fleet_wide`: on a bot split across hosts, the other hosts' snapshots are asked for
    /// too and summed into this one's ([`FleetStats::hosts`]).
    pub(super) fn stats(
        &mut self,
        waiter: Waiter,
        deadline: Duration,
        timeout: Duration,
        fleet_wide: bool,
    ) {
        let id = self.calls.next_id();
        let due = timeout.saturating_sub(timeout / 20);
        let route = Route::Single(waiter);
        self.calls
            .track(id, ADMIRAL_PROCESS, Target::Admiral, route, due);
        let deadline = deadline.min(timeout.mul_f64(0.8)).min(MAX_DEADLINE);
        if fleet_wide {
            // Half way between the workers' deadline and the asker's: the hosts that have not
            // answered by then are named missing.
            self.gather_stats(deadline, deadline + due.saturating_sub(deadline) / 2);
        }
        if let Some(joined) = &mut self.stats.joined {
            joined.push((id, fleet_wide));
            return;
        }
        self.stats.joined = Some(vec![(id, fleet_wide)]);
        self.stats_round(true, deadline);
    }

    fn stats_round(&mut self, asked_for: bool, deadline: Duration) {
        let facts = self.stats_facts();
        let asked: Vec<Target> = facts
            .workers
            .iter()
            .filter(|w| w.asked)
            .map(|w| w.target.clone())
            .collect();
        let (tx, reports) = oneshot::channel();
        self.fan_out(&Target::Admiral, Waiter::Local(tx), asked, deadline, || {
            Ask::Stats
        });
        let collector = self.stats.collector.clone();
        let inbox = self.inbox.clone();
        tokio::spawn(async move {
            let reports = match reports.await {
                Ok(Reply::Outcomes(outcomes)) => outcomes,
                _ => Vec::new(),
            };
            let made = tokio::task::spawn_blocking(move || {
                let mut collector = collector.lock().unwrap_or_else(PoisonError::into_inner);
                let Collector { meter, previous } = &mut *collector;
                let usage = meter.measure(&facts.pids());
                assemble(facts, reports, &usage, previous, std::time::Instant::now())
            })
            .await;
            let stats = made.map(Arc::new).map_err(|error| {
                tracing::error!(target: "fleet::stats", %error, "assembling a stats snapshot failed");
                error.to_string()
            });
            let _ = inbox.send(Inbox::Stats { asked_for, stats }).await;
        });
    }

    /// A round ended (or failed to assemble).
    pub(super) fn stats_done(&mut self, asked_for: bool, stats: Result<Arc<FleetStats>, String>) {
        if asked_for {
            let (whole_bot, here): (Vec<_>, Vec<_>) = self
                .stats
                .joined
                .take()
                .unwrap_or_default()
                .into_iter()
                .partition(|(_, fleet_wide)| *fleet_wide);
            let here: Vec<u64> = here.into_iter().map(|(forward, _)| forward).collect();
            self.answer_stats(&here, stats.as_deref());
            let whole_bot: Vec<u64> = whole_bot.into_iter().map(|(forward, _)| forward).collect();
            self.gathered_here(whole_bot, stats);
            return;
        }
        let Ok(stats) = stats else {
            return;
        };
        tracing::info!(target: "fleet::stats", guilds = stats.guilds, shards_ready = stats.shards_ready, missing = stats.missing.len(), "stats");
        if self.config.broadcast_stats {
            match Payload::encode(&*stats) {
                Ok(payload) => {
                    let (tx, _) = oneshot::channel();
                    let event = STATS_EVENT.to_owned();
                    self.broadcast(&Target::Admiral, Waiter::Local(tx), event, payload);
                }
                Err(error) => {
                    tracing::error!(target: "fleet::stats", %error, "a stats snapshot did not encode");
                }
            }
        }
        self.publish(FleetEvent::Stats(stats));
    }

    /// Answers the stats askers waiting as `forwards` with `stats`.
    pub(super) fn answer_stats(&mut self, forwards: &[u64], stats: Result<&FleetStats, &String>) {
        if forwards.is_empty() {
            return;
        }
        let outcome = stats
            .map_err(Clone::clone)
            .and_then(|s| Payload::encode(s).map_err(|e| e.to_string()));
        let outcome = outcome.map_or_else(Outcome::Error, Outcome::Ok);
        for forward in forwards {
            if let Some(answer) = self.calls.answered(*forward, None, outcome.clone()) {
                self.answer(answer);
            }
        }
    }

    /// Answers [`Request::Workers`](crate::ipc::proto::Request::Workers).
    pub(super) fn workers(&mut self, waiter: Waiter) {
        let outcome = Payload::encode(&self.workers_info())
            .map_or_else(|e| Outcome::Error(e.to_string()), Outcome::Ok);
        self.reply(waiter, Reply::Outcome(outcome));
    }

    /// Every worker with its state, shards and uptime, for any process that asks.
    pub(super) fn workers_info(&self) -> Vec<WorkerInfo> {
        let facts = self.stats_facts();
        facts
            .workers
            .into_iter()
            // On a bot split across hosts, a range another host runs now is listed there.
            .filter(|w| self.remote_owner(&w.target).is_none())
            .map(|w| {
                let shards = match w.target {
                    Target::Cluster(id) => self
                        .plan
                        .clusters
                        .iter()
                        .chain(self.next_plan.iter().flat_map(|p| p.clusters.iter()))
                        .find(|c| c.id == id)
                        .map(|c| (c.first_shard, c.last_shard)),
                    _ => None,
                };
                WorkerInfo {
                    worker: w.target,
                    state: w.state,
                    process: w.process,
                    pid: w.pid,
                    shards,
                    uptime_ms: w.uptime_ms,
                    restarts: w.restarts,
                    host: self.config.host_bus.as_ref().map(|b| b.host().to_owned()),
                }
            })
            .collect()
    }

    /// What the router knows now, for a round.
    fn stats_facts(&self) -> Facts {
        let now = tokio::time::Instant::now();
        let workers = self
            .lifecycle
            .workers()
            .map(|w| {
                let info = w.process.and_then(|p| self.links.processes.get(&p));
                let serving = matches!(w.state, State::Starting | State::Live);
                WorkerFacts {
                    target: w.id.target(),
                    state: state_name(&w.state),
                    process: w.process,
                    pid: info.and_then(|i| i.pid),
                    restarts: self
                        .stats
                        .spawns
                        .get(&w.id)
                        .map_or(0, |n| n.saturating_sub(1)),
                    uptime_ms: info
                        .and_then(|i| i.started)
                        .map_or(0, |at| duration_ms(now.duration_since(at))),
                    ipc_latency_us: info
                        .and_then(|i| i.ipc_latency)
                        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX)),
                    asked: serving && info.is_some_and(|i| i.conn.is_some()),
                }
            })
            .collect();
        // On a bot split across hosts, the shards of the ranges this host runs.
        let split = self.config.host_bus.is_some();
        let shards = self
            .plan
            .clusters
            .iter()
            .filter(|c| {
                !split
                    || self
                        .lifecycle
                        .worker(&WorkerId::Cluster(c.id))
                        .is_some_and(|w| !w.retired)
            })
            .flat_map(|c| (c.first_shard..=c.last_shard).map(|s| (s, c.id)))
            .map(|(shard, cluster)| self.stats.shard_stats(shard, cluster))
            .collect();
        Facts {
            started: std::time::Instant::now(),
            taken_at_ms: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, duration_ms),
            shard_total: self.plan.shard_total,
            admiral_pid: std::process::id(),
            workers,
            shards,
            identify: self.identify.stats(),
            rest: self
                .config
                .rest_proxy
                .as_ref()
                .map(crate::rest::RestProxy::stats),
        }
    }
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shards_status_follows_its_newest_process_and_counts_every_report() {
        let mut book = StatsBook::default();
        book.identified(3);
        book.shard(1, 3, 10, &ShardEvent::Connecting);
        book.shard(1, 3, 10, &ShardEvent::Ready);
        // A handover: the replacement resumes, then the old process's close arrives.
        book.shard(1, 3, 11, &ShardEvent::Connecting);
        book.shard(1, 3, 11, &ShardEvent::Resumed);
        book.shard(1, 3, 10, &ShardEvent::Disconnected(Some(4000)));
        let s = book.shard_stats(3, 1);
        assert_eq!(s.status, ShardStatus::Ready);
        assert_eq!(s.process, Some(11));
        assert_eq!((s.identifies, s.resumes, s.disconnects), (1, 1, 1));
        assert_eq!(s.last_close_code, Some(4000));
        // Its process dies: the shard is down, and a report of the old one changes nothing.
        book.process_gone(11);
        assert_eq!(book.shard_stats(3, 1).status, ShardStatus::Disconnected);
        assert_eq!(book.shard_stats(3, 1).disconnects, 2);
        book.shard(1, 3, 10, &ShardEvent::Ready);
        assert_eq!(book.shard_stats(3, 1).status, ShardStatus::Disconnected);
        // A shard nobody reported yet shows what was granted.
        book.identified(4);
        let s = book.shard_stats(4, 1);
        assert_eq!(
            (s.status, s.identifies, s.process),
            (ShardStatus::Pending, 1, None)
        );
    }
}
