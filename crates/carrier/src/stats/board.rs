//! What a cluster's shards count as they go, for the next stats round: events received, the
//! last gateway latency and the time spent on events, a few atomics per shard, so counting an
//! event costs a relaxed add or two and no lock.

use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use super::ShardReport;

/// Latency not measured yet.
const UNKNOWN: u64 = u64::MAX;

/// One shard's counters.
#[derive(Debug)]
struct Slot {
    events: AtomicU64,
    latency_us: AtomicU64,
    busy_us: AtomicU64,
}

/// Per-shard counters of one cluster process.
#[derive(Debug)]
pub(crate) struct ShardBoard {
    first: u32,
    shards: Vec<Slot>,
    /// Whether the adapter times its event loop ([`busy`](Self::busy) was called).
    timed: AtomicBool,
}

impl ShardBoard {
    pub fn new(shards: RangeInclusive<u32>) -> Self {
        let first = *shards.start();
        let shards = shards
            .map(|_| Slot {
                events: AtomicU64::new(0),
                latency_us: AtomicU64::new(UNKNOWN),
                busy_us: AtomicU64::new(0),
            })
            .collect();
        Self {
            first,
            shards,
            timed: AtomicBool::new(false),
        }
    }

    fn slot(&self, shard: u32) -> Option<&Slot> {
        self.shards
            .get(usize::try_from(shard.checked_sub(self.first)?).ok()?)
    }

    /// One gateway event of `shard` (a shard outside the cluster is ignored).
    pub fn event(&self, shard: u32) {
        if let Some(slot) = self.slot(shard) {
            slot.events.fetch_add(1, Relaxed);
        }
    }

    /// Time `shard`'s event loop spent on one event (cache update and handler).
    pub fn busy(&self, shard: u32, took: Duration) {
        if let Some(slot) = self.slot(shard) {
            let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
            slot.busy_us.fetch_add(us, Relaxed);
            if !self.timed.load(Relaxed) {
                self.timed.store(true, Relaxed);
            }
        }
    }

    /// `shard`'s latest heartbeat round trip.
    pub fn latency(&self, shard: u32, latency: Duration) {
        if let Some(slot) = self.slot(shard) {
            let us = u64::try_from(latency.as_micros()).unwrap_or(UNKNOWN - 1);
            slot.latency_us.store(us.min(UNKNOWN - 1), Relaxed);
        }
    }

    /// Every shard's figures now.
    pub fn read(&self) -> Vec<ShardReport> {
        let timed = self.timed.load(Relaxed);
        (self.first..)
            .zip(&self.shards)
            .map(|(id, slot)| {
                let latency = slot.latency_us.load(Relaxed);
                ShardReport {
                    id,
                    events: slot.events.load(Relaxed),
                    latency_us: (latency != UNKNOWN).then_some(latency),
                    busy_us: timed.then(|| slot.busy_us.load(Relaxed)),
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
        assert_eq!(
            read[0].busy_us, None,
            "an untimed loop reports no busy time"
        );
    }

    #[test]
    fn busy_time_adds_up_per_shard_once_timed() {
        let board = ShardBoard::new(0..=1);
        board.busy(1, Duration::from_micros(300));
        board.busy(1, Duration::from_micros(200));
        board.busy(9, Duration::from_secs(1));
        let read = board.read();
        assert_eq!(read[0].busy_us, Some(0));
        assert_eq!(read[1].busy_us, Some(500));
    }
}
