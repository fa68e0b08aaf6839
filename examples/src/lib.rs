//! Pieces the example and the benchmark share: a bucketed identify queue and a shard loop that
//! reports what each shard sees.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, mpsc, oneshot};
use twilight_gateway::queue::Queue;
use twilight_gateway::{Event, EventTypeFlags, Shard, StreamExt as _};

/// One identify per bucket (`shard_id % max_concurrency`) per interval: Discord's limit.
#[derive(Clone, Debug)]
pub struct BucketQueue {
    next: Arc<Mutex<BTreeMap<u32, tokio::time::Instant>>>,
    buckets: u32,
    interval: Duration,
}

impl Queue for BucketQueue {
    fn enqueue(&self, shard: u32) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        let (next, bucket, interval) = (self.next.clone(), shard % self.buckets, self.interval);
        tokio::spawn(async move {
            let slot = {
                let mut next = next.lock().await;
                let now = tokio::time::Instant::now();
                let slot = next.get(&bucket).copied().unwrap_or(now).max(now);
                next.insert(bucket, slot + interval);
                slot
            };
            tokio::time::sleep_until(slot).await;
            let _ = tx.send(());
        });
        rx
    }
}

impl BucketQueue {
    /// A queue for `buckets` identify buckets, one identify each per `interval`.
    #[must_use]
    pub fn new(buckets: u32, interval: Duration) -> Self {
        Self {
            next: Arc::default(),
            buckets: buckets.max(1),
            interval,
        }
    }
}

/// What a shard saw.
#[derive(Debug)]
pub enum Seen {
    /// READY with this many guilds.
    Ready {
        /// Shard id.
        shard: u32,
        /// Guilds listed in READY.
        guilds: usize,
    },
    /// A guild became available.
    Guild {
        /// Shard id.
        shard: u32,
    },
    /// An event-source event (message or member join) with its id.
    Event {
        /// Shard id.
        shard: u32,
        /// Message id or joining user id.
        id: u64,
    },
    /// The session was resumed.
    Resumed {
        /// Shard id.
        shard: u32,
    },
    /// The shard reported an error.
    Error {
        /// Shard id.
        shard: u32,
        /// The error.
        error: String,
    },
}

/// Drives a shard and reports what it sees until the receiver goes away or the shard ends.
pub async fn run_shard(
    mut shard: Shard<impl Queue + Send + Sync + Unpin + 'static>,
    tx: mpsc::UnboundedSender<Seen>,
) {
    let id = shard.id().number();
    while let Some(item) = shard.next_event(EventTypeFlags::all()).await {
        let seen = match item {
            Ok(Event::Ready(ready)) => Seen::Ready {
                shard: id,
                guilds: ready.guilds.len(),
            },
            Ok(Event::GuildCreate(_)) => Seen::Guild { shard: id },
            Ok(Event::MessageCreate(m)) => Seen::Event {
                shard: id,
                id: m.id.get(),
            },
            Ok(Event::MemberAdd(m)) => Seen::Event {
                shard: id,
                id: m.user.id.get(),
            },
            Ok(Event::Resumed) => Seen::Resumed { shard: id },
            Ok(_) => continue,
            Err(error) => Seen::Error {
                shard: id,
                error: error.to_string(),
            },
        };
        if tx.send(seen).is_err() {
            break;
        }
    }
}
