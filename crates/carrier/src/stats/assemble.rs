//! Making a snapshot: the admiral's facts at the start of a round, the workers' reports and the
//! processes' usage go in, one [`FleetStats`] comes out. A plain function, tested alone.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use super::{
    BEHIND, ClusterStats, FleetStats, IdentifyStats, Missing, ProcessUsage, ServiceStats,
    ShardStats, ShardStatus, WorkerReport,
};
use crate::ipc::proto::{Outcome, Target};
use crate::rest::ProxyStats;

/// What the admiral knows of one worker when a round starts.
#[derive(Debug, Clone)]
pub(crate) struct WorkerFacts {
    pub target: Target,
    pub state: String,
    pub process: Option<u64>,
    pub pid: Option<u32>,
    pub restarts: u32,
    pub uptime_ms: u64,
    pub ipc_latency_us: Option<u64>,
    /// Whether it is asked for a report (it has a live connection).
    pub asked: bool,
}

/// What the admiral knows when a round starts.
#[derive(Debug, Clone)]
pub(crate) struct Facts {
    pub started: Instant,
    pub taken_at_ms: u64,
    pub shard_total: u32,
    pub admiral_pid: u32,
    pub workers: Vec<WorkerFacts>,
    /// Every shard of the plan, as the admiral's records have it (cache and gateway figures
    /// still zero).
    pub shards: Vec<ShardStats>,
    pub identify: IdentifyStats,
    pub rest: Option<ProxyStats>,
}

impl Facts {
    /// The pids to measure: the admiral's and every worker's.
    pub fn pids(&self) -> Vec<u32> {
        std::iter::once(self.admiral_pid)
            .chain(self.workers.iter().filter_map(|w| w.pid))
            .collect()
    }
}

/// Each shard's event count at the previous round, and when: `(process, events)` by shard; and
/// the busy time each shard's share is measured from.
#[derive(Debug, Default)]
pub(crate) struct Previous {
    pub at: Option<Instant>,
    pub events: BTreeMap<u32, (Option<u64>, u64)>,
    pub busy: BTreeMap<u32, BusySince>,
}

/// The shortest window a busy share is measured over: rounds closer together than this (back
/// to back, on request) repeat the last share rather than read one event's time as a trend.
const BUSY_WINDOW: f64 = 1.0;

/// Where a shard's busy share is measured from.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BusySince {
    process: Option<u64>,
    busy_us: u64,
    at: Instant,
    /// The share measured when this baseline was taken.
    share: Option<f64>,
}

/// A shard's busy share now, from `base` (its process's previous baseline, if any); returns the
/// share and the baseline for the next round.
fn busy_share(
    base: Option<BusySince>,
    process: Option<u64>,
    busy_us: u64,
    uptime: f64,
    now: Instant,
) -> (Option<f64>, BusySince) {
    let share = |busy: u64, seconds: f64| (busy as f64 / 1e6 / seconds).min(1.0);
    let fresh = |share| BusySince {
        process,
        busy_us,
        at: now,
        share,
    };
    if let Some(base) = base.filter(|b| b.process == process) {
        let seconds = now.saturating_duration_since(base.at).as_secs_f64();
        if seconds < BUSY_WINDOW {
            return (base.share, base);
        }
        let measured = Some(share(busy_us.saturating_sub(base.busy_us), seconds));
        (measured, fresh(measured))
    } else {
        // Its first reading: since its process started, once that is long enough.
        let measured = (uptime >= BUSY_WINDOW).then(|| share(busy_us, uptime));
        (measured, fresh(measured))
    }
}

/// Makes the snapshot. `reports`: each asked worker's outcome; `usage`: by pid; `previous`:
/// updated for the next round.
pub(crate) fn assemble(
    facts: Facts,
    reports: Vec<(Target, Outcome)>,
    usage: &HashMap<u32, ProcessUsage>,
    previous: &mut Previous,
    now: Instant,
) -> FleetStats {
    let mut missing = Vec::new();
    let mut decoded: HashMap<Target, WorkerReport> = HashMap::new();
    for (target, outcome) in reports {
        let report = match outcome {
            Outcome::Ok(payload) => payload
                .decode::<WorkerReport>()
                .map_err(|e| format!("unreadable report: {e}")),
            Outcome::TimedOut => Err("timed out".to_owned()),
            Outcome::Unavailable => Err("not running".to_owned()),
            Outcome::Error(error) => Err(error),
        };
        match report {
            Ok(report) => {
                if let Some(error) = &report.custom_error {
                    missing.push(Missing {
                        worker: target.clone(),
                        reason: format!("part of its report failed: {error}"),
                    });
                }
                decoded.insert(target, report);
            }
            Err(reason) => missing.push(Missing {
                worker: target,
                reason,
            }),
        }
    }
    let usage_of = |pid: Option<u32>| pid.and_then(|p| usage.get(&p)).copied().unwrap_or_default();
    let elapsed = previous
        .at
        .map(|at| now.saturating_duration_since(at).as_secs_f64());
    let mut next_previous = BTreeMap::new();
    let mut next_busy = BTreeMap::new();
    let mut behind: Vec<(u32, f64)> = Vec::new();

    let mut shards_by_cluster: BTreeMap<u32, Vec<ShardStats>> = BTreeMap::new();
    for shard in facts.shards {
        shards_by_cluster
            .entry(shard.cluster)
            .or_default()
            .push(shard);
    }
    let mut stats = FleetStats {
        taken_at_ms: facts.taken_at_ms,
        shard_total: facts.shard_total,
        admiral: usage_of(Some(facts.admiral_pid)),
        identify: facts.identify,
        rest: facts.rest,
        ..FleetStats::default()
    };
    for worker in facts.workers {
        // A worker stopped on request is not missing: nobody expects its report.
        if !worker.asked && worker.state != "stopped" {
            missing.push(Missing {
                worker: worker.target.clone(),
                reason: format!("not running ({})", worker.state),
            });
        }
        let report = decoded.remove(&worker.target);
        let custom = report
            .as_ref()
            .and_then(|r| r.custom.as_ref())
            .and_then(|p| rmp_serde::from_slice::<serde_json::Value>(p.as_bytes()).ok());
        let usage = usage_of(worker.pid);
        match worker.target {
            Target::Cluster(id) => {
                stats.clusters_ram_bytes += usage.ram_bytes;
                let mut shards = shards_by_cluster.remove(&id).unwrap_or_default();
                let cache = report
                    .as_ref()
                    .and_then(|r| r.cache.clone())
                    .unwrap_or_default();
                let by_shard: HashMap<u32, (u64, u64)> = cache
                    .by_shard
                    .iter()
                    .map(|&(s, g, m)| (s, (g, m)))
                    .collect();
                let gateway: HashMap<u32, _> = report
                    .iter()
                    .flat_map(|r| r.shards.iter())
                    .map(|s| (s.id, *s))
                    .collect();
                for shard in &mut shards {
                    if let Some(&(guilds, members)) = by_shard.get(&shard.id) {
                        shard.guilds = guilds;
                        shard.members = members;
                    }
                    if let Some(seen) = gateway.get(&shard.id) {
                        shard.events = seen.events;
                        shard.latency_ms = seen.latency_us.map(|us| us / 1000);
                        // Between two readings of the same process; on its first, since it
                        // started.
                        let since_last = previous
                            .events
                            .get(&shard.id)
                            .filter(|(process, _)| *process == worker.process)
                            .zip(elapsed)
                            .map(|(&(_, before), seconds)| {
                                (seen.events - before.min(seen.events), seconds)
                            });
                        let uptime = worker.uptime_ms as f64 / 1000.0;
                        let (events, seconds) = since_last.unwrap_or((seen.events, uptime));
                        if seconds > 0.0 {
                            shard.events_per_second = events as f64 / seconds;
                        }
                        next_previous.insert(shard.id, (worker.process, seen.events));
                        if let Some(busy_us) = seen.busy_us {
                            let base = previous.busy.get(&shard.id).copied();
                            let (share, base) =
                                busy_share(base, worker.process, busy_us, uptime, now);
                            next_busy.insert(shard.id, base);
                            shard.busy_ms = Some(busy_us / 1000);
                            shard.busy = share;
                            if let Some(share) = share.filter(|&s| s >= BEHIND) {
                                behind.push((shard.id, share));
                            }
                        }
                    }
                    shard.process = shard.process.or(worker.process);
                    if shard.status == ShardStatus::Ready {
                        stats.shards_ready += 1;
                    }
                }
                stats.shard_count += u32::try_from(shards.len()).unwrap_or(u32::MAX);
                stats.guilds += cache.guilds;
                stats.users += cache.users;
                stats.members += cache.members;
                stats.large_guilds += cache.large_guilds;
                if let Some(voice) = cache.voice_connections {
                    *stats.voice_connections.get_or_insert(0) += voice;
                }
                stats.clusters.push(ClusterStats {
                    id,
                    host: None,
                    process: worker.process,
                    restarts: worker.restarts,
                    state: worker.state,
                    guilds: cache.guilds,
                    users: cache.users,
                    members: cache.members,
                    large_guilds: cache.large_guilds,
                    voice_connections: cache.voice_connections,
                    uptime_ms: worker.uptime_ms,
                    usage,
                    ipc_latency_us: worker.ipc_latency_us,
                    shards,
                    custom,
                });
            }
            Target::Service(name) => {
                stats.services_ram_bytes += usage.ram_bytes;
                stats.services.push(ServiceStats {
                    name,
                    host: None,
                    process: worker.process,
                    restarts: worker.restarts,
                    state: worker.state,
                    uptime_ms: worker.uptime_ms,
                    usage,
                    ipc_latency_us: worker.ipc_latency_us,
                    custom,
                });
            }
            Target::Admiral => {}
        }
    }
    // Shards of no known cluster (a plan being replaced) still show.
    for (cluster, shards) in shards_by_cluster {
        stats.shard_count += u32::try_from(shards.len()).unwrap_or(u32::MAX);
        stats.clusters.push(ClusterStats {
            id: cluster,
            state: "pending".to_owned(),
            shards,
            ..ClusterStats::default()
        });
    }
    stats.clusters.sort_by_key(|c| c.id);
    stats.total_ram_bytes =
        stats.admiral.ram_bytes + stats.clusters_ram_bytes + stats.services_ram_bytes;
    stats.missing = missing;
    previous.at = Some(now);
    previous.events = next_previous;
    previous.busy = next_busy;
    stats.shards_behind = u32::try_from(behind.len()).unwrap_or(u32::MAX);
    if !behind.is_empty() {
        behind.sort_by(|a, b| b.1.total_cmp(&a.1));
        let busiest: Vec<String> = behind
            .iter()
            .take(5)
            .map(|(shard, share)| format!("shard {shard} {:.0}%", share * 100.0))
            .collect();
        tracing::warn!(
            target: "fleet::stats",
            shards = behind.len(),
            busiest = %busiest.join(", "),
            "shards falling behind: their event loops are busy nearly all the time, and events wait in their sockets"
        );
    }
    stats.collected_in_us =
        u64::try_from(now.saturating_duration_since(facts.started).as_micros()).unwrap_or(u64::MAX);
    stats
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipc::proto::Payload;
    use crate::stats::{CacheCounts, ShardReport};
    use std::time::Duration;

    fn worker(target: Target, pid: u32, process: u64) -> WorkerFacts {
        WorkerFacts {
            target,
            state: "Live".to_owned(),
            process: Some(process),
            pid: Some(pid),
            restarts: 1,
            uptime_ms: 5_000,
            ipc_latency_us: Some(80),
            asked: true,
        }
    }

    fn shard(id: u32, cluster: u32, status: ShardStatus) -> ShardStats {
        ShardStats {
            id,
            cluster,
            status,
            identifies: 1,
            ..ShardStats::default()
        }
    }

    fn facts(started: Instant) -> Facts {
        Facts {
            started,
            taken_at_ms: 1_700_000_000_000,
            shard_total: 4,
            admiral_pid: 1,
            workers: vec![
                worker(Target::Cluster(0), 10, 3),
                worker(Target::Cluster(1), 11, 4),
                worker(Target::Service("cache".into()), 12, 5),
            ],
            shards: vec![
                shard(0, 0, ShardStatus::Ready),
                shard(1, 0, ShardStatus::Ready),
                shard(2, 1, ShardStatus::Ready),
                shard(3, 1, ShardStatus::Connecting),
            ],
            identify: IdentifyStats::default(),
            rest: None,
        }
    }

    fn report(first: u32, events: u64) -> Outcome {
        timed(first, events, None)
    }

    /// [`report`], the first shard's event loop busy `busy_us` so far.
    fn timed(first: u32, events: u64, busy_us: Option<u64>) -> Outcome {
        let report = WorkerReport {
            cache: Some(CacheCounts {
                guilds: 10,
                users: 30,
                members: 40,
                large_guilds: 1,
                voice_connections: None,
                by_shard: vec![(first, 6, 25), (first + 1, 4, 15)],
            }),
            shards: vec![
                ShardReport {
                    id: first,
                    events,
                    latency_us: Some(41_500),
                    busy_us,
                },
                ShardReport {
                    id: first + 1,
                    events: events * 2,
                    latency_us: None,
                    busy_us: None,
                },
            ],
            custom: Some(Payload::encode(&serde_json::json!({"queue": 3})).unwrap()),
            custom_error: None,
        };
        Outcome::Ok(Payload::encode(&report).unwrap())
    }

    fn usage() -> HashMap<u32, ProcessUsage> {
        [1, 10, 11, 12]
            .into_iter()
            .map(|pid| {
                let usage = ProcessUsage {
                    pid: Some(pid),
                    ram_bytes: u64::from(pid) << 20,
                    cpu_percent: 1.5,
                };
                (pid, usage)
            })
            .collect()
    }

    #[test]
    fn sums_the_clusters_and_places_every_figure() {
        let started = Instant::now();
        let mut previous = Previous::default();
        let reports = vec![
            (Target::Cluster(0), report(0, 100)),
            (Target::Cluster(1), report(2, 10)),
            (Target::Service("cache".into()), Outcome::TimedOut),
        ];
        let now = started + Duration::from_millis(3);
        let stats = assemble(facts(started), reports, &usage(), &mut previous, now);
        assert_eq!((stats.guilds, stats.users, stats.members), (20, 60, 80));
        assert_eq!((stats.shard_count, stats.shards_ready), (4, 3));
        assert_eq!(stats.large_guilds, 2);
        assert_eq!(stats.clusters_ram_bytes, (10 + 11) << 20);
        assert_eq!(stats.total_ram_bytes, (1 + 10 + 11 + 12) << 20);
        assert_eq!(stats.collected_in_us, 3_000);
        let s0 = stats.shard(0).unwrap();
        assert_eq!((s0.guilds, s0.members, s0.events), (6, 25, 100));
        assert_eq!(s0.latency_ms, Some(41));
        assert_eq!(s0.process, Some(3));
        assert_eq!(stats.shard(3).unwrap().events, 20);
        assert_eq!(
            stats.clusters[0].custom,
            Some(serde_json::json!({"queue": 3}))
        );
        // The service timed out: missing, but still listed with what the admiral knows.
        assert_eq!(
            stats.missing,
            [Missing {
                worker: Target::Service("cache".into()),
                reason: "timed out".into()
            }]
        );
        assert_eq!(stats.services[0].usage.ram_bytes, 12 << 20);
        assert_eq!(stats.services[0].custom, None);
    }

    #[test]
    fn rates_are_measured_between_rounds_of_the_same_process() {
        let started = Instant::now();
        let mut previous = Previous::default();
        let first = vec![
            (Target::Cluster(0), report(0, 100)),
            (Target::Cluster(1), report(2, 10)),
        ];
        let stats = assemble(facts(started), first, &usage(), &mut previous, started);
        // The first reading: since each process started (5 s ago).
        let rate = |stats: &FleetStats, id| stats.shard(id).unwrap().events_per_second;
        assert!((rate(&stats, 0) - 20.0).abs() < 1e-9, "{}", rate(&stats, 0));
        assert!((rate(&stats, 3) - 4.0).abs() < 1e-9, "{}", rate(&stats, 3));
        let later = started + Duration::from_secs(2);
        let second = vec![
            (Target::Cluster(0), report(0, 300)),
            (Target::Cluster(1), report(2, 30)),
        ];
        let mut facts = facts(later);
        // Cluster 1 was restarted between the rounds (up 1 s): its counts start over.
        facts.workers[1].process = Some(9);
        facts.workers[1].uptime_ms = 1_000;
        let stats = assemble(facts, second, &usage(), &mut previous, later);
        assert!(
            (rate(&stats, 0) - 100.0).abs() < 1e-9,
            "{}",
            rate(&stats, 0)
        );
        assert!(
            (rate(&stats, 1) - 200.0).abs() < 1e-9,
            "{}",
            rate(&stats, 1)
        );
        assert!((rate(&stats, 2) - 30.0).abs() < 1e-9, "{}", rate(&stats, 2));
    }

    #[test]
    fn a_shard_busy_nearly_all_the_time_counts_as_falling_behind() {
        let started = Instant::now();
        let mut previous = Previous::default();
        let round = |busy| {
            vec![
                (Target::Cluster(0), timed(0, 100, Some(busy))),
                (Target::Cluster(1), report(2, 10)),
            ]
        };
        // The first reading: 1 s busy of the 5 s since the process started.
        let stats = assemble(
            facts(started),
            round(1_000_000),
            &usage(),
            &mut previous,
            started,
        );
        let busy = |stats: &FleetStats, id| stats.shard(id).unwrap().busy;
        assert!((busy(&stats, 0).unwrap() - 0.2).abs() < 1e-9);
        assert_eq!(stats.shard(0).unwrap().busy_ms, Some(1_000));
        assert_eq!(busy(&stats, 1), None, "an untimed shard has no share");
        assert_eq!(stats.shards_behind, 0);
        // Then 1.9 s busy of the next 2 s: behind.
        let later = started + Duration::from_secs(2);
        let stats = assemble(
            facts(later),
            round(2_900_000),
            &usage(),
            &mut previous,
            later,
        );
        assert!((busy(&stats, 0).unwrap() - 0.95).abs() < 1e-9);
        assert_eq!(stats.shards_behind, 1);
        // A round right after: one event's time is no trend; the last share stands.
        let soon = later + Duration::from_millis(50);
        let stats = assemble(facts(soon), round(2_950_000), &usage(), &mut previous, soon);
        assert!((busy(&stats, 0).unwrap() - 0.95).abs() < 1e-9);
        // Measured again from the last baseline once a second has passed: 0.5 s of 1.5 s.
        let next = later + Duration::from_millis(1_500);
        let stats = assemble(facts(next), round(3_400_000), &usage(), &mut previous, next);
        assert!((busy(&stats, 0).unwrap() - 1.0 / 3.0).abs() < 1e-9);
        assert_eq!(stats.shards_behind, 0);
    }

    #[test]
    fn a_failed_report_or_custom_field_is_listed_and_the_rest_arrives() {
        let started = Instant::now();
        let mut previous = Previous::default();
        let broken = WorkerReport {
            custom_error: Some("the stats handler panicked: boom".into()),
            ..WorkerReport::default()
        };
        let reports = vec![
            (Target::Cluster(0), Outcome::Error("no".into())),
            (
                Target::Cluster(1),
                Outcome::Ok(Payload::encode(&broken).unwrap()),
            ),
            (
                Target::Service("cache".into()),
                Outcome::Ok(Payload::from("not msgpack of a report")),
            ),
        ];
        let mut facts = facts(started);
        // A worker stopped on request is listed, but not as missing; one in backoff is.
        let mut stopped = worker(Target::Service("stopped".into()), 13, 6);
        (stopped.state, stopped.asked) = ("stopped".into(), false);
        let mut backoff = worker(Target::Service("backoff".into()), 14, 7);
        (backoff.state, backoff.asked) = ("backoff".into(), false);
        facts.workers.extend([stopped, backoff]);
        let stats = assemble(facts, reports, &usage(), &mut previous, started);
        assert_eq!(stats.services.len(), 3);
        let reasons: Vec<_> = stats.missing.iter().map(|m| m.reason.as_str()).collect();
        assert_eq!(reasons.len(), 4, "{reasons:?}");
        assert!(reasons.contains(&"not running (backoff)"), "{reasons:?}");
        assert!(reasons.contains(&"no"));
        assert!(reasons.iter().any(|r| r.contains("boom")));
        assert!(reasons.iter().any(|r| r.starts_with("unreadable report")));
        // What the admiral knows is all still there.
        assert_eq!(stats.shard_count, 4);
        assert_eq!(stats.clusters.len(), 2);
    }
}
