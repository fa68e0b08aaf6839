//! A snapshot as Prometheus metrics (`OpenMetrics` text, rendered with `prometheus-client`).
//!
//! Names are `fleet_*` in base units (bytes, seconds, ratios); `_total` only on counters. The
//! cluster series carry `cluster_id`, the service series `service`; only five series carry a
//! shard label (`fleet_shard_up`, `fleet_shard_latency_seconds`, `fleet_shard_guilds`,
//! `fleet_shard_events_total`, `fleet_shard_busy_ratio`), and no series is labelled by guild.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::stats::{FleetStats, ProcessUsage, ShardStatus};

type Labels = Vec<(&'static str, String)>;
type Gauges = Family<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>;
type Counters = Family<Labels, Counter<u64>>;

/// Builds one registry per scrape from the snapshot.
struct Metrics {
    registry: Registry,
}

impl Metrics {
    fn gauge(&mut self, name: &str, help: &str) -> Gauges {
        let family = Gauges::default();
        self.registry.register(name, help, family.clone());
        family
    }

    fn counter(&mut self, name: &str, help: &str) -> Counters {
        let family = Counters::default();
        // prometheus-client adds the `_total` suffix of a counter itself.
        let name = name.strip_suffix("_total").unwrap_or(name);
        self.registry.register(name, help, family.clone());
        family
    }

    /// A gauge without labels, set once.
    fn value(&mut self, name: &str, help: &str, value: f64) {
        self.gauge(name, help).get_or_create(&Vec::new()).set(value);
    }
}

fn set(family: &Gauges, labels: &Labels, value: f64) {
    family.get_or_create(labels).set(value);
}

fn count(family: &Counters, labels: &Labels, value: u64) {
    family.get_or_create(labels).inc_by(value);
}

fn seconds_from_ms(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

fn seconds_from_us(us: u64) -> f64 {
    us as f64 / 1_000_000.0
}

/// The text a scrape gets.
pub(crate) fn render(stats: &FleetStats) -> String {
    let mut m = Metrics {
        registry: Registry::default(),
    };
    m.value(
        "fleet_guilds",
        "Guilds in every cluster's cache.",
        stats.guilds as f64,
    );
    m.value(
        "fleet_users",
        "Users in every cluster's cache.",
        stats.users as f64,
    );
    m.value(
        "fleet_members",
        "Members of every cached guild.",
        stats.members as f64,
    );
    m.value(
        "fleet_large_guilds",
        "Cached guilds Discord marks large.",
        stats.large_guilds as f64,
    );
    if let Some(voice) = stats.voice_connections {
        m.value(
            "fleet_voice_connections",
            "Voice connections.",
            voice as f64,
        );
    }
    m.value(
        "fleet_shards",
        "Shards this admiral runs.",
        f64::from(stats.shard_count),
    );
    m.value(
        "fleet_shards_ready",
        "Shards ready now.",
        f64::from(stats.shards_ready),
    );
    m.value(
        "fleet_bot_shards",
        "Shards of the whole bot (its shard total).",
        f64::from(stats.shard_total),
    );
    m.value(
        "fleet_stats_missing_workers",
        "Workers whose report is missing from the latest snapshot.",
        stats.missing.len() as f64,
    );
    m.value(
        "fleet_stats_collection_seconds",
        "How long the latest snapshot took to make.",
        seconds_from_us(stats.collected_in_us),
    );
    m.value(
        "fleet_stats_timestamp_seconds",
        "When the latest snapshot was taken, in seconds since the Unix epoch.",
        seconds_from_ms(stats.taken_at_ms),
    );

    // Processes: the admiral, each cluster, each service.
    let memory = m.gauge(
        "fleet_process_resident_memory_bytes",
        "Resident memory of a fleet process.",
    );
    let cpu = m.gauge(
        "fleet_process_cpu_usage_ratio",
        "CPU used since the previous snapshot, in cores.",
    );
    let uptime = m.gauge(
        "fleet_worker_uptime_seconds",
        "Time since a worker's current process started.",
    );
    let restarts = m.counter(
        "fleet_worker_restarts_total",
        "Processes started for a worker before its current one.",
    );
    let ipc = m.gauge(
        "fleet_worker_ipc_latency_seconds",
        "Round trip of the admiral's last heartbeat to a worker.",
    );
    let up = m.gauge("fleet_worker_up", "1 when a worker is live, else 0.");
    let usage = |labels: &Labels, usage: &ProcessUsage| {
        set(&memory, labels, usage.ram_bytes as f64);
        set(&cpu, labels, f64::from(usage.cpu_percent) / 100.0);
    };
    usage(&vec![("process", "admiral".to_owned())], &stats.admiral);
    let cluster_guilds = m.gauge("fleet_cluster_guilds", "Guilds in a cluster's cache.");
    let identifies = m.counter(
        "fleet_cluster_identifies_total",
        "Identifies the admiral granted a cluster's shards.",
    );
    let resumes = m.counter(
        "fleet_cluster_resumes_total",
        "Sessions a cluster's shards resumed.",
    );
    let disconnects = m.counter(
        "fleet_cluster_disconnects_total",
        "Times a cluster's shards' connections closed.",
    );
    let shard_up = m.gauge("fleet_shard_up", "1 when a shard is ready, else 0.");
    let shard_latency = m.gauge(
        "fleet_shard_latency_seconds",
        "A shard's gateway heartbeat round trip.",
    );
    let shard_guilds = m.gauge(
        "fleet_shard_guilds",
        "Guilds of a shard in its cluster's cache.",
    );
    let shard_events = m.counter(
        "fleet_shard_events_total",
        "Gateway events a shard's current process received.",
    );
    let shard_busy = m.gauge(
        "fleet_shard_busy_ratio",
        "Share of the time since the previous round a shard's event loop spent on events; near 1 it falls behind.",
    );
    for cluster in &stats.clusters {
        let id = cluster.id.to_string();
        let process = vec![("process", format!("cluster-{id}"))];
        usage(&process, &cluster.usage);
        let labels = vec![("cluster_id", id.clone())];
        set(&uptime, &labels, seconds_from_ms(cluster.uptime_ms));
        count(&restarts, &labels, u64::from(cluster.restarts));
        if let Some(us) = cluster.ipc_latency_us {
            set(&ipc, &labels, seconds_from_us(us));
        }
        set(&up, &labels, f64::from(u8::from(cluster.state == "live")));
        set(&cluster_guilds, &labels, cluster.guilds as f64);
        let sum = |f: fn(&crate::stats::ShardStats) -> u32| {
            cluster.shards.iter().map(|s| u64::from(f(s))).sum::<u64>()
        };
        count(&identifies, &labels, sum(|s| s.identifies));
        count(&resumes, &labels, sum(|s| s.resumes));
        count(&disconnects, &labels, sum(|s| s.disconnects));
        for shard in &cluster.shards {
            let labels = vec![
                ("cluster_id", id.clone()),
                ("shard_id", shard.id.to_string()),
            ];
            let ready = shard.status == ShardStatus::Ready;
            set(&shard_up, &labels, f64::from(u8::from(ready)));
            if let Some(ms) = shard.latency_ms {
                set(&shard_latency, &labels, seconds_from_ms(ms));
            }
            set(&shard_guilds, &labels, shard.guilds as f64);
            count(&shard_events, &labels, shard.events);
            if let Some(busy) = shard.busy {
                set(&shard_busy, &labels, busy);
            }
        }
    }
    for service in &stats.services {
        let labels = vec![("service", service.name.clone())];
        usage(
            &vec![("process", format!("service-{}", service.name))],
            &service.usage,
        );
        set(&uptime, &labels, seconds_from_ms(service.uptime_ms));
        count(&restarts, &labels, u64::from(service.restarts));
        if let Some(us) = service.ipc_latency_us {
            set(&ipc, &labels, seconds_from_us(us));
        }
        set(&up, &labels, f64::from(u8::from(service.state == "live")));
    }

    // The identify queue and the session budget.
    let identify = &stats.identify;
    m.value(
        "fleet_identify_queue_waiting",
        "Identifies waiting for their turn.",
        f64::from(identify.waiting),
    );
    m.value(
        "fleet_identify_queue_eta_seconds",
        "Until the last waiting identify is expected to go.",
        seconds_from_ms(identify.eta_ms),
    );
    if let (Some(remaining), Some(total)) = (identify.sessions_remaining, identify.sessions_total) {
        m.value(
            "fleet_session_budget_remaining",
            "Sessions left in the daily budget.",
            f64::from(remaining),
        );
        m.value(
            "fleet_session_budget_limit",
            "The daily session budget.",
            f64::from(total),
        );
    }

    // The central REST proxy.
    if let Some(rest) = &stats.rest {
        let requests = m.counter(
            "fleet_rest_requests_total",
            "Requests the REST proxy received.",
        );
        count(&requests, &Vec::new(), rest.requests);
        let limited = m.counter(
            "fleet_rest_rate_limited_total",
            "429 answers the REST proxy saw from Discord.",
        );
        count(&limited, &Vec::new(), rest.rate_limited);
        let errors = m.counter(
            "fleet_rest_upstream_errors_total",
            "Requests Discord did not answer.",
        );
        count(&errors, &Vec::new(), rest.upstream_errors);
        let refused = m.counter(
            "fleet_rest_refused_total",
            "Requests the REST proxy refused itself.",
        );
        count(&refused, &Vec::new(), rest.refused);
        m.value(
            "fleet_rest_in_flight",
            "Requests the REST proxy handles now.",
            rest.in_flight as f64,
        );
        m.value(
            "fleet_rest_queued",
            "Requests waiting for a rate-limit permit.",
            rest.queued as f64,
        );
        m.value(
            "fleet_rest_invalid_requests",
            "Invalid requests (401, 403, 429) in the last ten minutes; Discord bans at 10,000.",
            rest.invalid_requests as f64,
        );
        let latency = m.gauge(
            "fleet_rest_latency_seconds",
            "The REST proxy's time from receipt to answer over recent requests.",
        );
        set(
            &latency,
            &vec![("quantile", "0.5".to_owned())],
            seconds_from_us(rest.latency_p50_us),
        );
        set(
            &latency,
            &vec![("quantile", "0.99".to_owned())],
            seconds_from_us(rest.latency_p99_us),
        );
    }

    let mut text = String::new();
    // Writing to a String cannot fail.
    let _ = encode(&mut text, &m.registry);
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{ClusterStats, ShardStats};

    #[test]
    fn shards_and_clusters_get_their_labels_and_counters_their_suffix() {
        let mut stats = FleetStats::default();
        let shard = ShardStats {
            id: 7,
            cluster: 3,
            status: ShardStatus::Ready,
            latency_ms: Some(42),
            events: 900,
            identifies: 1,
            busy: Some(0.25),
            ..ShardStats::default()
        };
        let cluster = ClusterStats {
            id: 3,
            state: "live".into(),
            restarts: 2,
            shards: vec![shard],
            ..ClusterStats::default()
        };
        stats.clusters.push(cluster);
        let text = render(&stats);
        assert!(
            text.contains("fleet_shard_up{cluster_id=\"3\",shard_id=\"7\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("fleet_shard_latency_seconds{cluster_id=\"3\",shard_id=\"7\"} 0.042"),
            "{text}"
        );
        assert!(
            text.contains("fleet_shard_events_total{cluster_id=\"3\",shard_id=\"7\"} 900"),
            "{text}"
        );
        assert!(
            text.contains("fleet_shard_busy_ratio{cluster_id=\"3\",shard_id=\"7\"} 0.25"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE fleet_worker_restarts counter"),
            "{text}"
        );
        assert!(
            text.contains("fleet_worker_restarts_total{cluster_id=\"3\"} 2"),
            "{text}"
        );
        assert!(text.trim_end().ends_with("# EOF"));
    }
}
