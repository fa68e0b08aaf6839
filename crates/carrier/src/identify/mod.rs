//! The identify queue: one identify per bucket (`shard_id % max_concurrency`) per interval, for
//! every shard of every cluster, within the daily session budget.
//!
//! It owns only pacing. It knows nothing of processes or sockets: the admiral's IPC router calls
//! [`IdentifyQueue::acquire`] when a worker asks to identify a shard and answers when it resolves.
//! Other implementations plug in through the trait: [`fleetwide::RedisIdentifyQueue`] paces
//! every host of a fleet together through Redis.

pub mod fleetwide;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::Mutex;
use tokio::time::Instant;

pub use crate::stats::IdentifyStats;

/// Discord's identify interval per bucket: 5 s (Gateway › Identifying › Sharding).
pub const IDENTIFY_INTERVAL: Duration = Duration::from_secs(5);

/// Paces identifies. `acquire` resolves when `shard` may identify; dropping the future gives up the
/// place without spending a slot.
pub trait IdentifyQueue: Send + Sync + 'static {
    /// Waits for permission to identify `shard`.
    fn acquire(&self, shard: u32) -> BoxFuture<'static, ()>;

    /// `shard`'s session is open (its READY reached the admiral): the IDENTIFY it was granted
    /// has been sent. Default: nothing.
    fn confirmed(&self, shard: u32) {
        let _ = shard;
    }

    /// How many wait, how long until the last is let go, and the session budget, for stats.
    /// Default: nothing known.
    fn stats(&self) -> IdentifyStats {
        IdentifyStats::default()
    }
}

/// The daily session budget (`session_start_limit` of `/gateway/bot`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionBudget {
    /// Identifies per period.
    pub total: u32,
    /// Identifies left now.
    pub remaining: u32,
    /// Time until the budget refills.
    pub reset_after: Duration,
}

#[derive(Debug)]
struct Budget {
    total: u32,
    remaining: u32,
    resets_at: Instant,
    period: Duration,
}

/// One bucket: its last grant (when, and to which shard), behind a fair lock that orders its
/// waiters.
type Bucket = Arc<Mutex<Option<(Instant, u32)>>>;

/// Grants whose IDENTIFY is not known to be sent yet, and when the others were confirmed.
#[derive(Debug, Default)]
struct Confirmations {
    /// Shards granted and not confirmed.
    pending: std::collections::HashSet<u32>,
    /// When each confirmed shard's READY came, until its bucket's next grant.
    at: HashMap<u32, Instant>,
}

/// The in-admiral identify queue: a FIFO per bucket, spaced by `interval` measured between actual
/// grants (a late wake-up never squeezes the next grant closer), and, once a grant's session is
/// confirmed ([`IdentifyQueue::confirmed`]), from the confirmation: a cluster that sent its
/// IDENTIFY late after the grant (busy with another shard's burst) does not bring the next one
/// in its bucket closer than `interval` at Discord. A grant never confirmed holds its bucket for
/// at most two intervals.
#[derive(Debug, Clone)]
pub struct LocalIdentifyQueue {
    max_concurrency: u32,
    interval: Duration,
    buckets: Arc<std::sync::Mutex<HashMap<u32, Bucket>>>,
    confirmations: Arc<std::sync::Mutex<Confirmations>>,
    confirmed: Arc<tokio::sync::Notify>,
    /// Whether grants wait for the previous one's confirmation ([`Self::with_confirmations`]).
    confirming: bool,
    budget: Arc<Mutex<Option<Budget>>>,
    /// Acquires not granted (nor given up) yet.
    waiting: Arc<AtomicU32>,
}

/// One acquire waiting, until dropped.
struct Waiting(Arc<AtomicU32>);

impl Waiting {
    fn new(count: &Arc<AtomicU32>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(count.clone())
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl LocalIdentifyQueue {
    /// A queue with `max_concurrency` buckets (at least 1), one identify each per `interval`.
    #[must_use]
    pub fn new(max_concurrency: u32, interval: Duration) -> Self {
        Self {
            max_concurrency: max_concurrency.max(1),
            interval,
            buckets: Arc::default(),
            confirmations: Arc::default(),
            confirmed: Arc::default(),
            confirming: false,
            budget: Arc::default(),
            waiting: Arc::default(),
        }
    }

    fn confirmations(&self) -> std::sync::MutexGuard<'_, Confirmations> {
        lock(&self.confirmations)
    }

    /// Also respects the daily session budget: when it is spent, grants wait for the reset
    /// instead of identifying (which would end every session and reset the token).
    #[must_use]
    pub fn with_budget(self, budget: SessionBudget) -> Self {
        let budget = Budget {
            total: budget.total,
            remaining: budget.remaining,
            resets_at: Instant::now() + budget.reset_after,
            period: Duration::from_hours(24),
        };
        Self {
            budget: Arc::new(Mutex::new(Some(budget))),
            ..self
        }
    }

    /// Spaces a bucket's grants from the previous grant's confirmation too, once it comes (at
    /// most two intervals after the grant): for a caller that reports every granted shard's
    /// READY through [`IdentifyQueue::confirmed`], as the admiral does.
    #[must_use]
    pub fn with_confirmations(self) -> Self {
        Self {
            confirming: true,
            ..self
        }
    }

    /// Starts as if every bucket had just let a shard go: the first grant of each waits one
    /// interval. For an admiral that takes over from one that died, which may have let shards go
    /// a moment ago.
    #[must_use]
    pub fn with_recent_grants(self) -> Self {
        let now = Instant::now();
        let buckets = (0..self.max_concurrency)
            .map(|bucket| (bucket, Arc::new(Mutex::new(Some((now, u32::MAX))))))
            .collect();
        Self {
            buckets: Arc::new(std::sync::Mutex::new(buckets)),
            ..self
        }
    }

    /// Buckets.
    #[must_use]
    pub fn max_concurrency(&self) -> u32 {
        self.max_concurrency
    }

    /// Interval per bucket.
    #[must_use]
    pub fn interval(&self) -> Duration {
        self.interval
    }

    fn bucket(&self, shard: u32) -> Bucket {
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        buckets
            .entry(shard % self.max_concurrency)
            .or_default()
            .clone()
    }
}

impl IdentifyQueue for LocalIdentifyQueue {
    fn stats(&self) -> IdentifyStats {
        let waiting = self.waiting.load(Ordering::Relaxed);
        // Spread over the buckets, each lets one go per interval.
        let rounds = u64::from(waiting.div_ceil(self.max_concurrency));
        let eta = self
            .interval
            .saturating_mul(u32::try_from(rounds).unwrap_or(u32::MAX));
        let (sessions_remaining, sessions_total) = match self.budget.try_lock() {
            Ok(budget) => budget
                .as_ref()
                .map_or((None, None), |b| (Some(b.remaining), Some(b.total))),
            Err(_) => (None, None),
        };
        IdentifyStats {
            waiting,
            eta_ms: u64::try_from(eta.as_millis()).unwrap_or(u64::MAX),
            sessions_remaining,
            sessions_total,
        }
    }

    fn confirmed(&self, shard: u32) {
        let mut confirmations = self.confirmations();
        if confirmations.pending.remove(&shard) {
            confirmations.at.insert(shard, Instant::now());
            drop(confirmations);
            self.confirmed.notify_waiters();
        }
    }

    fn acquire(&self, shard: u32) -> BoxFuture<'static, ()> {
        let bucket = self.bucket(shard);
        let budget = self.budget.clone();
        let interval = self.interval;
        let waiting = Waiting::new(&self.waiting);
        let confirmations = self.confirmations.clone();
        let confirmed = self.confirmed.clone();
        let confirming = self.confirming;
        Box::pin(async move {
            let _waiting = waiting;
            // Tokio's mutex is fair: waiters of a bucket are served in arrival order.
            let mut last = bucket.lock().await;
            if let Some((granted, previous)) = *last {
                tokio::time::sleep_until(granted + interval).await;
                // Then `interval` after the previous grant's READY, once it comes (or after two
                // intervals, if it never does).
                if confirming {
                    let cap = granted + interval * 2;
                    loop {
                        let notified = confirmed.notified();
                        let (pending, at) = {
                            let c = lock(&confirmations);
                            (c.pending.contains(&previous), c.at.get(&previous).copied())
                        };
                        if let Some(at) = at {
                            tokio::time::sleep_until((at + interval).min(cap)).await;
                            break;
                        }
                        if !pending || tokio::time::timeout_at(cap, notified).await.is_err() {
                            break;
                        }
                    }
                }
                let mut c = lock(&confirmations);
                c.pending.remove(&previous);
                c.at.remove(&previous);
            }
            let mut budget = budget.lock().await;
            if let Some(budget) = budget.as_mut() {
                if Instant::now() >= budget.resets_at {
                    budget.remaining = budget.total;
                    budget.resets_at = Instant::now() + budget.period;
                }
                if budget.remaining == 0 {
                    tracing::warn!(target: "fleet::identify", shard, wait = ?budget.resets_at.saturating_duration_since(Instant::now()), "session budget spent; waiting for its reset");
                    tokio::time::sleep_until(budget.resets_at).await;
                    budget.remaining = budget.total;
                    budget.resets_at = Instant::now() + budget.period;
                }
                budget.remaining -= 1;
            }
            *last = Some((Instant::now(), shard));
            if confirming {
                lock(&confirmations).pending.insert(shard);
            }
            tracing::debug!(target: "fleet::identify", shard, "identify granted");
        })
    }
}

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn grant_times(
        queue: &LocalIdentifyQueue,
        shards: impl IntoIterator<Item = u32>,
    ) -> Vec<(u32, Duration)> {
        let start = Instant::now();
        let tasks: Vec<_> = shards
            .into_iter()
            .map(|shard| {
                let grant = queue.acquire(shard);
                tokio::spawn(async move {
                    grant.await;
                    (shard, start.elapsed())
                })
            })
            .collect();
        let mut times = Vec::new();
        for task in tasks {
            times.push(task.await.unwrap());
        }
        times
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_identify_pushes_the_next_grant_of_its_bucket() {
        let queue = LocalIdentifyQueue::new(2, IDENTIFY_INTERVAL).with_confirmations();
        let start = Instant::now();
        queue.acquire(0).await;
        // Shard 0's READY comes 1.5 s after its grant: its IDENTIFY left that late.
        let confirm = {
            let queue = queue.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(1500)).await;
                queue.confirmed(0);
            })
        };
        // Another bucket is not held up.
        queue.acquire(1).await;
        assert_eq!(start.elapsed(), Duration::ZERO);
        queue.acquire(2).await;
        assert_eq!(
            start.elapsed(),
            Duration::from_millis(6500),
            "5 s after the READY"
        );
        confirm.await.unwrap();
        // A grant never confirmed holds its bucket two intervals at most.
        queue.acquire(4).await;
        assert_eq!(start.elapsed(), Duration::from_millis(16_500));
        // A confirmation for a shard nobody was granted changes nothing.
        queue.confirmed(3);
        queue.confirmed(4);
        queue.acquire(3).await;
        assert_eq!(start.elapsed(), Duration::from_millis(16_500));
    }

    #[tokio::test(start_paused = true)]
    async fn one_bucket_grants_one_per_interval_in_order() {
        let queue = LocalIdentifyQueue::new(1, IDENTIFY_INTERVAL);
        let times = grant_times(&queue, 0..4).await;
        let secs: Vec<u64> = times.iter().map(|(_, t)| t.as_secs()).collect();
        assert_eq!(secs, [0, 5, 10, 15]);
    }

    #[tokio::test(start_paused = true)]
    async fn buckets_run_side_by_side() {
        let queue = LocalIdentifyQueue::new(4, IDENTIFY_INTERVAL);
        let times = grant_times(&queue, 0..16).await;
        for (shard, time) in times {
            assert_eq!(time.as_secs(), u64::from(shard / 4) * 5, "shard {shard}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn spacing_is_measured_from_the_last_grant() {
        let queue = LocalIdentifyQueue::new(1, IDENTIFY_INTERVAL);
        queue.acquire(0).await;
        tokio::time::advance(Duration::from_secs(3)).await;
        let start = Instant::now();
        queue.acquire(1).await;
        assert_eq!(start.elapsed(), Duration::from_secs(2));
        tokio::time::advance(Duration::from_mins(1)).await;
        let start = Instant::now();
        queue.acquire(2).await;
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_request_spends_no_slot() {
        let queue = LocalIdentifyQueue::new(1, IDENTIFY_INTERVAL);
        queue.acquire(0).await;
        let abandoned = queue.acquire(1);
        drop(abandoned);
        let start = Instant::now();
        queue.acquire(2).await;
        assert_eq!(start.elapsed(), IDENTIFY_INTERVAL);
    }

    #[tokio::test(start_paused = true)]
    async fn a_spent_budget_waits_for_its_reset() {
        let queue =
            LocalIdentifyQueue::new(1, Duration::from_millis(10)).with_budget(SessionBudget {
                total: 1000,
                remaining: 2,
                reset_after: Duration::from_mins(10),
            });
        let times = grant_times(&queue, 0..3).await;
        assert_eq!(times[1].1, Duration::from_millis(10));
        assert_eq!(times[2].1, Duration::from_mins(10));
    }

    #[tokio::test(start_paused = true)]
    async fn stats_count_the_waiting_and_the_budget_left() {
        let queue = LocalIdentifyQueue::new(2, IDENTIFY_INTERVAL).with_budget(SessionBudget {
            total: 1000,
            remaining: 900,
            reset_after: Duration::from_hours(1),
        });
        let waits: Vec<_> = (0..6)
            .map(|shard| tokio::spawn(queue.acquire(shard)))
            .collect();
        // Let each take its place: the first of each bucket is granted at once.
        tokio::task::yield_now().await;
        while queue.stats().waiting > 4 {
            tokio::task::yield_now().await;
        }
        let stats = queue.stats();
        // Four wait over two buckets: two more intervals.
        assert_eq!((stats.waiting, stats.eta_ms), (4, 10_000));
        assert_eq!(stats.sessions_total, Some(1000));
        assert_eq!(stats.sessions_remaining, Some(898));
        for wait in waits {
            wait.await.unwrap();
        }
        let stats = queue.stats();
        assert_eq!((stats.waiting, stats.eta_ms), (0, 0));
        assert_eq!(stats.sessions_remaining, Some(894));
        // A place given up is no longer counted.
        drop(queue.acquire(9));
        assert_eq!(queue.stats().waiting, 0);
    }
}
