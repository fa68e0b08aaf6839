//! What a cluster's shards count as they go, for the next stats round: events received and the
//! last gateway latency, one pair of atomics per shard, so counting an event costs one relaxed
//! add and no lock.

use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use super::ShardReport;

/// Latency not measured yet.
const UNKNOWN: u64 = u64::MAX;

/// Per-shard counters of one cluster process.
#[derive(Debug)]
pub(crate) struct ShardBoard {
    first: u32,
    shards: Vec<(AtomicU64, AtomicU64)>,
}

impl ShardBoard {
    pub fn new(shards: RangeInclusive<u32>) -> Self {
        let first = *shards.start();
        let shards = shards
            .map(|_| (AtomicU64::new(0), AtomicU64::new(UNKNOWN)))
            .collect();
        Self { first, shards }
    }

    fn slot(&self, shard: u32) -> Option<&(AtomicU64, AtomicU64)> {
        self.shards
            .get(usize::try_from(shard.checked_sub(self.first)?).ok()?)
    }

    /// One gateway event of `shard` (a shard outside the cluster is ignored).
    pub fn event(&self, shard: u32) {
        if let Some((events, _)) = self.slot(shard) {
            events.fetch_add(1, Relaxed);
        }
    }

    /// `shard`'s latest heartbeat round trip.
    pub fn latency(&self, shard: u32, latency: Duration) {
        if let Some((_, slot)) = self.slot(shard) {
            let us = u64::try_from(latency.as_micros()).unwrap_or(UNKNOWN - 1);
            slot.store(us.min(UNKNOWN - 1), Relaxed);
        }
    }

    /// Every shard's figures now.
    pub fn read(&self) -> Vec<ShardReport> {
        (self.first..)
            .zip(&self.shards)
            .map(|(id, (events, latency))| {
                let latency = latency.load(Relaxed);
                ShardReport {
                    id,
                    events: events.load(Relaxed),
                    latency_us: (latency != UNKNOWN).then_some(latency),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_shard_and_ignores_strangers() {
        let board = ShardBoard::new(4..=6);
        board.event(4);
        board.event(6);
        board.event(6);
        board.event(7);
        board.event(3);
        board.latency(5, Duration::from_millis(42));
        let read = board.read();
        let events: Vec<_> = read.iter().map(|s| (s.id, s.events)).collect();
        assert_eq!(events, [(4, 1), (5, 0), (6, 2)]);
        assert_eq!(read[0].latency_us, None);
        assert_eq!(read[1].latency_us, Some(42_000));
    }
}
