//! Fleet statistics: one typed snapshot of the whole fleet ([`FleetStats`]), made by the admiral
//! from its own records and from what only the workers know.
//!
//! # Theory of operation
//!
//! The admiral already sees most of what a snapshot holds: every shard's progress (reported by
//! the adapters as it happens), every identify it granted, every process it spawned and how
//! often, the identify queue and the REST proxy. It measures each process's memory and CPU
//! itself, from the operating system ([`meter`]), so a busy worker spends nothing on it.
//!
//! What only a worker knows (its library's cache counts, each shard's gateway latency and
//! events, the user's own fields) it sends when asked: one [`WorkerReport`] per worker and
//! round, answering `Down::Stats`. A round asks every worker at once with a deadline; a worker
//! that misses it, or whose report fails, is listed in [`FleetStats::missing`] and the snapshot
//! comes back without it: partial, never late.
//!
//! Rounds run every `stats_interval` (published as `FleetEvent::Stats`, and to workers that
//! asked for them) and whenever the admiral or a worker asks (`AdmiralHandle::stats`,
//! `Ipc::stats`). Rates (events per second) are measured between the rounds.

pub(crate) mod assemble;
pub(crate) mod board;
pub(crate) mod meter;

use serde::{Deserialize, Serialize};

use crate::ipc::proto::{Payload, Target};
use crate::rest::ProxyStats;

/// Makes a worker's own stats fields (a [`WorkerReport::custom`]) from a value; `()` and `None`
/// encode as nil and add no fields.
///
/// # Errors
/// When the value does not encode.
pub fn encode_fields<T: Serialize + ?Sized>(fields: &T) -> Result<Option<Payload>, String> {
    let payload = Payload::encode(fields).map_err(|e| e.to_string())?;
    Ok((payload.as_bytes() != [0xc0]).then_some(payload))
}

/// The broadcast event name under which workers that asked for them receive each interval's
/// snapshot (as a [`FleetStats`] payload).
pub const STATS_EVENT: &str = "fleet:stats";

/// The [`ShardStats::busy`] share from which a shard counts as falling behind (and the admiral
/// logs a warning): its event loop had under a tenth of its time to spare.
pub const BEHIND: f64 = 0.9;

/// One snapshot of the fleet.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct FleetStats {
    /// When the round began, in milliseconds since the Unix epoch.
    pub taken_at_ms: u64,
    /// How long the round took, in microseconds.
    pub collected_in_us: u64,
    /// Guilds in every cluster's cache.
    pub guilds: u64,
    /// Users in every cluster's cache.
    pub users: u64,
    /// Members in every cluster's cache (per guild, so a user in two guilds counts twice).
    pub members: u64,
    /// Guilds Discord marks large.
    pub large_guilds: u64,
    /// Voice connections, where the library keeps them.
    pub voice_connections: Option<u64>,
    /// Shards this admiral runs.
    pub shard_count: u32,
    /// Of those, ready now.
    pub shards_ready: u32,
    /// Of those, falling behind: [`ShardStats::busy`] at [`BEHIND`] or more.
    pub shards_behind: u32,
    /// The shard total of the bot.
    pub shard_total: u32,
    /// The admiral's own process.
    pub admiral: ProcessUsage,
    /// Memory of every cluster process, in bytes.
    pub clusters_ram_bytes: u64,
    /// Memory of every service process, in bytes.
    pub services_ram_bytes: u64,
    /// Memory of the admiral and every worker, in bytes.
    pub total_ram_bytes: u64,
    /// Every cluster of the plan.
    pub clusters: Vec<ClusterStats>,
    /// Every service.
    pub services: Vec<ServiceStats>,
    /// Workers whose report is not in this snapshot, and why.
    pub missing: Vec<Missing>,
    /// The identify queue.
    pub identify: IdentifyStats,
    /// The central REST proxy, when it runs.
    pub rest: Option<ProxyStats>,
    /// On a bot split across hosts, asked for (`Ipc::stats`, `AdmiralHandle::stats`): the hosts
    /// whose snapshots this one sums up, the answering host first. Empty on one host.
    pub hosts: Vec<String>,
    /// The bot's other hosts whose snapshot did not arrive by the deadline (this snapshot is
    /// partial without them).
    pub missing_hosts: Vec<String>,
}

impl FleetStats {
    /// This host's snapshot (`host`) with the other hosts' (`others`) added in: counts summed,
    /// clusters and services listed with their host, the ones of `missing` hosts named.
    #[must_use]
    pub(crate) fn with_hosts(
        mut self,
        host: &str,
        others: Vec<(String, FleetStats)>,
        missing: Vec<String>,
    ) -> Self {
        for cluster in &mut self.clusters {
            cluster.host = Some(host.to_owned());
        }
        for service in &mut self.services {
            service.host = Some(host.to_owned());
        }
        self.hosts = vec![host.to_owned()];
        for (name, other) in others {
            self.collected_in_us = self.collected_in_us.max(other.collected_in_us);
            self.guilds += other.guilds;
            self.users += other.users;
            self.members += other.members;
            self.large_guilds += other.large_guilds;
            if let Some(voice) = other.voice_connections {
                *self.voice_connections.get_or_insert(0) += voice;
            }
            self.shard_count += other.shard_count;
            self.shards_ready += other.shards_ready;
            self.shards_behind += other.shards_behind;
            self.clusters_ram_bytes += other.clusters_ram_bytes;
            self.services_ram_bytes += other.services_ram_bytes;
            self.total_ram_bytes += other.total_ram_bytes;
            self.identify.waiting += other.identify.waiting;
            self.identify.eta_ms = self.identify.eta_ms.max(other.identify.eta_ms);
            self.clusters
                .extend(other.clusters.into_iter().map(|mut c| {
                    c.host = Some(name.clone());
                    c
                }));
            self.services
                .extend(other.services.into_iter().map(|mut s| {
                    s.host = Some(name.clone());
                    s
                }));
            self.missing.extend(other.missing);
            self.hosts.push(name);
        }
        self.clusters.sort_by_key(|c| c.id);
        self.missing_hosts = missing;
        self
    }

    /// Every shard of every cluster, in shard order.
    pub fn shards(&self) -> impl Iterator<Item = &ShardStats> {
        self.clusters.iter().flat_map(|c| c.shards.iter())
    }

    /// The shard with this id.
    #[must_use]
    pub fn shard(&self, id: u32) -> Option<&ShardStats> {
        self.shards().find(|s| s.id == id)
    }
}

/// A worker missing from a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Missing {
    /// Which worker.
    pub worker: Target,
    /// Timed out, not running, or the error its report failed with.
    pub reason: String,
}

/// A process's use of the machine, as the operating system reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcessUsage {
    /// Operating-system process id.
    pub pid: Option<u32>,
    /// Resident memory, in bytes.
    pub ram_bytes: u64,
    /// CPU used since the previous round (since the process started, on the first), in percent
    /// of one core: a process busy on two cores shows 200.
    pub cpu_percent: f32,
}

/// One cluster.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ClusterStats {
    /// Cluster id.
    pub id: u32,
    /// The host that runs it, in a snapshot of a bot split across hosts.
    pub host: Option<String>,
    /// The process serving it now (fleet's process number) and its generation: how many
    /// processes have run this cluster before it.
    pub process: Option<u64>,
    /// Processes started for it before the current one (crashes and requested restarts).
    pub restarts: u32,
    /// Its lifecycle state.
    pub state: String,
    /// Guilds in its cache.
    pub guilds: u64,
    /// Users in its cache.
    pub users: u64,
    /// Members in its cache.
    pub members: u64,
    /// Large guilds in its cache.
    pub large_guilds: u64,
    /// Voice connections, where the library keeps them.
    pub voice_connections: Option<u64>,
    /// Time since its current process started, in milliseconds.
    pub uptime_ms: u64,
    /// Memory and CPU of its process.
    pub usage: ProcessUsage,
    /// Round trip of the admiral's last heartbeat to it, in microseconds.
    pub ipc_latency_us: Option<u64>,
    /// Its shards.
    pub shards: Vec<ShardStats>,
    /// The fields its worker adds ([`crate::worker::Service::stats`] and the adapters' equivalents), as JSON.
    pub custom: Option<serde_json::Value>,
}

/// Where a shard is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ShardStatus {
    /// Not heard of yet (its cluster is starting).
    #[default]
    Pending,
    /// Connecting to the gateway (or waiting to identify).
    Connecting,
    /// READY or RESUMED: receiving events.
    Ready,
    /// Its connection closed; the library reconnects.
    Disconnected,
}

/// One shard.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ShardStats {
    /// Shard id.
    pub id: u32,
    /// The cluster that runs it.
    pub cluster: u32,
    /// The process whose session it is (eris-fleet's `liveCluster`, by process).
    pub process: Option<u64>,
    /// Where it is.
    pub status: ShardStatus,
    /// Gateway heartbeat round trip, in milliseconds, once measured.
    pub latency_ms: Option<u64>,
    /// Guilds of this shard in the cache.
    pub guilds: u64,
    /// Members of this shard's guilds in the cache.
    pub members: u64,
    /// Gateway events its current process received.
    pub events: u64,
    /// Events per second since the previous round (since its process started, on the first).
    pub events_per_second: f64,
    /// Share of the time since the previous round (since its process started, on the first;
    /// over a second at least: rounds closer together repeat the last share) that its event
    /// loop spent on events, cache and handler, from 0 to 1, where the adapter measures it
    /// (twilight's does). Near 1 the shard is falling behind: the gateway sends
    /// faster than it handles, and events wait in the socket (back-pressure, not a queue in
    /// the process); the admiral logs a warning at [`BEHIND`] or more.
    pub busy: Option<f64>,
    /// Time its event loop spent on events in its current process, in milliseconds.
    pub busy_ms: Option<u64>,
    /// Identifies the admiral granted it, over the fleet's life.
    pub identifies: u32,
    /// Sessions it resumed.
    pub resumes: u32,
    /// Times its connection closed.
    pub disconnects: u32,
    /// The close code of its last close, if it had one.
    pub last_close_code: Option<u16>,
}

/// One service.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ServiceStats {
    /// Its name.
    pub name: String,
    /// The host that runs it, in a snapshot of a bot split across hosts (each runs every
    /// service).
    pub host: Option<String>,
    /// The process serving it now.
    pub process: Option<u64>,
    /// Processes started for it before the current one.
    pub restarts: u32,
    /// Its lifecycle state.
    pub state: String,
    /// Time since its current process started, in milliseconds.
    pub uptime_ms: u64,
    /// Memory and CPU of its process.
    pub usage: ProcessUsage,
    /// Round trip of the admiral's last heartbeat to it, in microseconds.
    pub ipc_latency_us: Option<u64>,
    /// The fields its worker adds, as JSON.
    pub custom: Option<serde_json::Value>,
}

/// The identify queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentifyStats {
    /// Identifies waiting for their turn.
    pub waiting: u32,
    /// When the last of them is expected to be granted, in milliseconds from now.
    pub eta_ms: u64,
    /// Sessions left in the daily budget, when the queue knows it.
    pub sessions_remaining: Option<u32>,
    /// The daily budget.
    pub sessions_total: Option<u32>,
}

/// What a worker sends for one round: what only it knows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct WorkerReport {
    /// Its library's cache counts (clusters whose adapter keeps them).
    pub cache: Option<CacheCounts>,
    /// Its shards, as its library sees them.
    pub shards: Vec<ShardReport>,
    /// The worker's own fields, encoded.
    pub custom: Option<Payload>,
    /// Why the worker's own fields are missing, if its stats method failed.
    pub custom_error: Option<String>,
}

/// A cluster's cache counts, as the adapter reads them from its library.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheCounts {
    /// Guilds.
    pub guilds: u64,
    /// Users.
    pub users: u64,
    /// Members, per guild.
    pub members: u64,
    /// Large guilds.
    pub large_guilds: u64,
    /// Voice connections, where the library keeps them.
    pub voice_connections: Option<u64>,
    /// Guilds and members by shard: `(shard, guilds, members)`.
    pub by_shard: Vec<(u32, u64, u64)>,
}

/// One shard as its cluster sees it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardReport {
    /// Shard id.
    pub id: u32,
    /// Gateway events received by this process.
    pub events: u64,
    /// Last gateway heartbeat round trip, in microseconds.
    pub latency_us: Option<u64>,
    /// Time its event loop spent on events (cache and handler), in microseconds, where the
    /// adapter measures it.
    #[serde(default)]
    pub busy_us: Option<u64>,
}
