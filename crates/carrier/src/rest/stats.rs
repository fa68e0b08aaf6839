//! What the proxy counts: its figures as served ([`ProxyStats`]) and the counters and samples
//! they are made from.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;

use serde::{Deserialize, Serialize};

/// Latency samples kept for percentiles (the most recent ones).
const LATENCY_SAMPLES: usize = 4096;

/// What the proxy has done since it started.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProxyStats {
    /// Requests received from the fleet.
    pub requests: u64,
    /// Requests answered (whatever the status).
    pub completed: u64,
    /// Requests being handled now.
    pub in_flight: u64,
    /// Requests waiting for a rate-limit permit now.
    pub queued: u64,
    /// Requests sent upstream (retries included).
    pub upstream_requests: u64,
    /// 429 answers seen from upstream, of every scope.
    pub rate_limited: u64,
    /// Of those, global ones.
    pub global_rate_limited: u64,
    /// Of those, shared-resource ones (they do not count as invalid).
    pub shared_rate_limited: u64,
    /// 429s retried by the proxy.
    pub retries: u64,
    /// Upstream failures: unreachable, broken or timed out.
    pub upstream_errors: u64,
    /// Requests refused by the proxy itself (bad method or path, body too large, budget spent).
    pub refused: u64,
    /// Invalid requests (401, 403, non-shared 429) within the last ten minutes.
    pub invalid_requests: u64,
    /// Median time from receipt to answer over the recent requests, in microseconds.
    pub latency_p50_us: u64,
    /// 99th percentile of the same.
    pub latency_p99_us: u64,
    /// Slowest of the same.
    pub latency_max_us: u64,
    /// Median time spent waiting for a rate-limit permit, in microseconds.
    pub queue_wait_p50_us: u64,
    /// Requests refused because they carried no valid [`KEY_HEADER`](super::KEY_HEADER) (not counted in
    /// `requests`, and never sent upstream).
    pub unauthenticated: u64,
    /// Per caller (the name given to [`RestProxy::admit`](super::RestProxy::admit), such as `cluster-2`): what it asked.
    pub callers: BTreeMap<String, CallerStats>,
}

/// What one caller of the proxy has asked since it was first admitted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallerStats {
    /// Requests received.
    pub requests: u64,
    /// Of their answers, invalid ones (401, 403, non-shared 429).
    pub invalid_requests: u64,
}

#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(super) requests: AtomicU64,
    pub(super) completed: AtomicU64,
    pub(super) in_flight: AtomicU64,
    pub(super) queued: AtomicU64,
    pub(super) upstream_requests: AtomicU64,
    pub(super) rate_limited: AtomicU64,
    pub(super) global_rate_limited: AtomicU64,
    pub(super) shared_rate_limited: AtomicU64,
    pub(super) retries: AtomicU64,
    pub(super) upstream_errors: AtomicU64,
    pub(super) refused: AtomicU64,
    pub(super) unauthenticated: AtomicU64,
}

/// The most recent samples, for percentiles.
#[derive(Debug, Default)]
pub(super) struct Samples {
    values: Vec<u64>,
    next: usize,
}

impl Samples {
    pub(super) fn push(&mut self, value: u64) {
        if self.values.len() < LATENCY_SAMPLES {
            self.values.push(value);
        } else {
            self.values[self.next] = value;
            self.next = (self.next + 1) % LATENCY_SAMPLES;
        }
    }

    /// `(p50, p99, max)`.
    pub(super) fn summary(&self) -> (u64, u64, u64) {
        if self.values.is_empty() {
            return (0, 0, 0);
        }
        let mut sorted = self.values.clone();
        sorted.sort_unstable();
        let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize];
        (at(0.5), at(0.99), sorted[sorted.len() - 1])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_give_percentiles_over_the_recent_window() {
        let mut samples = Samples::default();
        for v in 1..=100 {
            samples.push(v);
        }
        assert_eq!(samples.summary(), (51, 99, 100));
        for _ in 0..LATENCY_SAMPLES {
            samples.push(7);
        }
        assert_eq!(samples.summary(), (7, 7, 7));
    }
}
