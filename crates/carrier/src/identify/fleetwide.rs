//! One identify queue for every host of a fleet, kept in Redis ([`RedisIdentifyQueue`]).
//!
//! Each bucket has a key holding the Redis time (ms) of its next free identify slot. A Lua script
//! reserves one: `now = TIME; at = max(now, next); next = at + window`, takes one identify off
//! the daily session budget, and returns how long to wait (`at - now`). The caller sleeps that
//! long on its own monotonic clock: host clocks are never compared, no lock is held in Redis (a
//! host that dies after reserving wastes one slot and blocks nobody), and nobody polls. On each
//! host a fair lock per bucket lets only the head of the local queue ask Redis, so the order
//! within a host is its arrival order.
//!
//! When Redis cannot be reached, identifies wait (and are retried every second); nothing else of
//! the fleet needs Redis to go on.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::Mutex;

use super::{IdentifyQueue, IdentifyStats, SessionBudget};

/// How long an identify waits before it asks a Redis that failed again.
const RETRY: Duration = Duration::from_secs(1);

/// The longest wait the script may return that is believed (a day): anything longer is a broken
/// key, and the wait is cut to it.
const MAX_WAIT: Duration = Duration::from_hours(24);

/// A Lua script that starts with `now`: Redis's time in milliseconds, the one clock every host
/// of a fleet goes by.
macro_rules! redis_time {
    ($body:literal) => {
        concat!(
            "local t = redis.call('TIME')\n",
            "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)",
            $body
        )
    };
}
pub(crate) use redis_time;

/// Reserves a bucket's next identify slot and one identify of the budget.
///
/// KEYS: the bucket's next-slot key, the budget key. ARGV: the window (ms), the budget's total,
/// its period (ms). Returns `{wait_ms, remaining}`, or `{-1, ms_until_refill}` when the budget is
/// spent.
const RESERVE: &str = redis_time!(
    r"
local window = tonumber(ARGV[1])
local left = redis.call('GET', KEYS[2])
if left then
  left = tonumber(left)
  if left <= 0 then
    local ttl = redis.call('PTTL', KEYS[2])
    if ttl < 0 then ttl = 1000 end
    return {-1, ttl}
  end
  left = redis.call('DECR', KEYS[2])
else
  left = tonumber(ARGV[2]) - 1
  redis.call('SET', KEYS[2], left, 'PX', ARGV[3])
end
local next = tonumber(redis.call('GET', KEYS[1]) or '0')
local at = math.max(now, next)
redis.call('SET', KEYS[1], at + window, 'PX', at - now + window)
return {at - now, left}
"
);

/// Lets a reserved slot's holder go, once it is due: the bucket's previous grant must have
/// been confirmed (its READY seen) a window ago, or have gone unconfirmed for two windows (a
/// shard whose IDENTIFY is sent late must not bring the next one closer than the window at
/// Discord). KEYS: the bucket's pending grant (`shard:granted_ms`), its last confirmation (ms).
/// ARGV: the window (ms), this shard. Returns 0 (go: it is the bucket's pending grant now) or how
/// long to wait before asking again.
const GRANT: &str = redis_time!(
    r"
local window = tonumber(ARGV[1])
local pending = redis.call('GET', KEYS[1])
if pending then
  local shard, at = string.match(pending, '^(%d+):(%d+)$')
  if shard and shard ~= ARGV[2] and now < tonumber(at) + 2 * window then
    return math.min(100, tonumber(at) + 2 * window - now)
  end
end
local ready = redis.call('GET', KEYS[2])
if ready and tonumber(ready) + window > now then
  return tonumber(ready) + window - now
end
redis.call('SET', KEYS[1], ARGV[2] .. ':' .. now, 'PX', 2 * window)
return 0
"
);

/// A granted shard's READY came: its bucket's next grant is spaced from now. KEYS: the pending
/// grant, the last confirmation. ARGV: the window (ms), the shard.
const CONFIRM: &str = redis_time!(
    r"
local pending = redis.call('GET', KEYS[1])
if pending and string.match(pending, '^(%d+):') == ARGV[2] then
  redis.call('DEL', KEYS[1])
  redis.call('SET', KEYS[2], now, 'PX', ARGV[1])
  return 1
end
return 0
"
);

/// Where a fleet's identify keys live in Redis, and how it paces.
#[derive(Debug, Clone)]
pub struct RedisIdentifyConfig {
    /// The fleet's id: keys go under `fleet:{<id>}:` (one hash slot, for Redis Cluster).
    pub fleet_id: String,
    /// Buckets (`max_concurrency`).
    pub max_concurrency: u32,
    /// One identify per bucket per this long, Discord's interval and a margin.
    pub window: Duration,
    /// The budget as `/gateway/bot` gave it at this host's start: written to Redis only if no
    /// other host has written it yet.
    pub budget: SessionBudget,
}

/// A Redis connection made when first needed and made again after it failed.
struct Link {
    client: redis::Client,
    connection: Mutex<Option<redis::aio::MultiplexedConnection>>,
}

impl Link {
    /// Runs a script on the connection, connecting first if there is none; a failure drops the
    /// connection, so the next call reconnects.
    async fn invoke<T: redis::FromRedisValue>(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> redis::RedisResult<T> {
        let mut slot = self.connection.lock().await;
        let connection = match slot.as_mut() {
            Some(connection) => connection,
            None => slot.insert(self.client.get_multiplexed_async_connection().await?),
        };
        let answer = invocation.invoke_async(connection).await;
        if answer.is_err() {
            *slot = None;
        }
        answer
    }
}

/// An identify queue shared by every host of a fleet through Redis (see the module's
/// documentation). Build it with [`RedisIdentifyQueue::connect`].
pub struct RedisIdentifyQueue {
    config: RedisIdentifyConfig,
    link: Arc<Link>,
    script: Arc<redis::Script>,
    grant: Arc<redis::Script>,
    confirm: Arc<redis::Script>,
    buckets: std::sync::Mutex<HashMap<u32, Arc<Mutex<()>>>>,
    waiting: Arc<AtomicU32>,
    /// The budget left, as the last reservation saw it (-1: not known yet).
    remaining: Arc<AtomicI64>,
}

impl std::fmt::Debug for RedisIdentifyQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisIdentifyQueue")
            .field("fleet_id", &self.config.fleet_id)
            .field("max_concurrency", &self.config.max_concurrency)
            .field("window", &self.config.window)
            .finish_non_exhaustive()
    }
}

/// Why the queue could not reach Redis at the start. It names the server by host and port only:
/// a URL's password never reaches a log.
#[derive(Debug, thiserror::Error)]
#[error("cannot reach Redis at {server}: {reason}")]
pub struct RedisError {
    server: String,
    reason: String,
}

impl RedisError {
    /// `error`, from the Redis at `server` (host and port).
    pub(crate) fn new(server: &str, error: &redis::RedisError) -> Self {
        Self {
            server: server.to_owned(),
            reason: error.to_string(),
        }
    }

    /// The Redis at `server` failed: `reason` says how.
    pub(crate) fn other(server: &str, reason: &str) -> Self {
        Self {
            server: server.to_owned(),
            reason: reason.to_owned(),
        }
    }

    /// The Redis at `server` did not answer in time.
    pub(crate) fn timed_out(server: &str) -> Self {
        Self {
            server: server.to_owned(),
            reason: "no answer within 10 s".to_owned(),
        }
    }
}

/// A Redis URL's host and port, without its credentials, for errors and logs.
#[must_use]
pub fn redis_server(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    rest.split(['/', '?']).next().unwrap_or_default().to_owned()
}

impl RedisIdentifyQueue {
    /// Connects to the Redis at `url` (`redis://host:port/db`, credentials allowed) and seeds the
    /// session budget there if no host has yet. Fails with a clear error if Redis cannot be
    /// reached: a fleet told to share its identifies never falls back to pacing alone.
    pub async fn connect(url: &str, config: RedisIdentifyConfig) -> Result<Self, RedisError> {
        let fail = |reason: String| RedisError {
            server: redis_server(url),
            reason,
        };
        let client = redis::Client::open(url).map_err(|e| fail(e.to_string()))?;
        let mut connection = tokio::time::timeout(
            Duration::from_secs(10),
            client.get_multiplexed_async_connection(),
        )
        .await
        .map_err(|_| fail("no answer within 10 s".into()))?
        .map_err(|e| fail(e.to_string()))?;
        let queue = Self {
            link: Arc::new(Link {
                client,
                connection: Mutex::new(None),
            }),
            script: Arc::new(redis::Script::new(RESERVE)),
            grant: Arc::new(redis::Script::new(GRANT)),
            confirm: Arc::new(redis::Script::new(CONFIRM)),
            buckets: std::sync::Mutex::default(),
            waiting: Arc::default(),
            remaining: Arc::new(AtomicI64::new(-1)),
            config,
        };
        let budget = queue.config.budget;
        let reset = u64::try_from(budget.reset_after.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let seeded: Option<String> = redis::cmd("SET")
            .arg(queue.key("identify:remaining"))
            .arg(budget.remaining)
            .arg("PX")
            .arg(reset)
            .arg("NX")
            .query_async(&mut connection)
            .await
            .map_err(|e| fail(e.to_string()))?;
        tracing::info!(target: "fleet::identify", server = %redis_server(url), seeded = seeded.is_some(), "identifies are paced for the whole fleet in Redis");
        *queue.link.connection.lock().await = Some(connection);
        Ok(queue)
    }

    fn key(&self, name: &str) -> String {
        format!("fleet:{{{}}}:{name}", self.config.fleet_id)
    }

    fn bucket(&self, shard: u32) -> (u32, Arc<Mutex<()>>) {
        let bucket = shard % self.config.max_concurrency.max(1);
        let lock = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(bucket)
            .or_default()
            .clone();
        (bucket, lock)
    }
}

/// What one reservation needs, cheap to move into the acquiring future.
struct Reserver {
    link: Arc<Link>,
    script: Arc<redis::Script>,
    grant: Arc<redis::Script>,
    keys: [String; 2],
    /// The bucket's pending grant and last confirmation.
    grant_keys: [String; 2],
    args: [u64; 3],
    shard: u32,
    remaining: Arc<AtomicI64>,
}

/// The bucket keys of a grant: its pending grant, its last confirmation.
fn grant_keys(queue: &RedisIdentifyQueue, bucket: u32) -> [String; 2] {
    [
        queue.key(&format!("identify:pending:{bucket}")),
        queue.key(&format!("identify:ready:{bucket}")),
    ]
}

impl Reserver {
    /// Once the reserved slot is due: zero when the shard may go, or how long to wait first.
    async fn may_go(&self) -> redis::RedisResult<Duration> {
        let mut invocation = self.grant.key(&self.grant_keys[0]);
        invocation
            .key(&self.grant_keys[1])
            .arg(self.args[0])
            .arg(self.shard);
        let wait: i64 = self.link.invoke(&invocation).await?;
        Ok(Duration::from_millis(u64::try_from(wait).unwrap_or(0)).min(MAX_WAIT))
    }

    /// One reservation: how long to wait for the slot, or (`Err`) how long until the budget
    /// refills. A Redis that fails is reconnected on the next try.
    async fn reserve(&self) -> redis::RedisResult<Result<Duration, Duration>> {
        let mut invocation = self.script.key(&self.keys[0]);
        invocation.key(&self.keys[1]);
        for arg in self.args {
            invocation.arg(arg);
        }
        let (wait, second): (i64, i64) = self.link.invoke(&invocation).await?;
        let millis = |ms: i64| Duration::from_millis(u64::try_from(ms).unwrap_or(0)).min(MAX_WAIT);
        if wait < 0 {
            self.remaining.store(0, Ordering::Relaxed);
            return Ok(Err(millis(second)));
        }
        self.remaining.store(second, Ordering::Relaxed);
        Ok(Ok(millis(wait)))
    }
}

impl IdentifyQueue for RedisIdentifyQueue {
    fn acquire(&self, shard: u32) -> BoxFuture<'static, ()> {
        let (bucket, lock) = self.bucket(shard);
        let window = u64::try_from(self.config.window.as_millis()).unwrap_or(u64::MAX);
        let reserver = Reserver {
            link: self.link.clone(),
            script: self.script.clone(),
            keys: [
                self.key(&format!("identify:next:{bucket}")),
                self.key("identify:remaining"),
            ],
            args: [
                window.max(1),
                u64::from(self.config.budget.total.max(1)),
                // Discord's session budget refills a day after its first identify.
                86_400_000,
            ],
            grant: self.grant.clone(),
            grant_keys: grant_keys(self, bucket),
            shard,
            remaining: self.remaining.clone(),
        };
        let waiting = super::Waiting::new(&self.waiting);
        Box::pin(async move {
            let _waiting = waiting;
            // The head of this host's queue for the bucket asks Redis; the rest wait their turn.
            let _turn = lock.lock().await;
            loop {
                match reserver.reserve().await {
                    Ok(Ok(wait)) => {
                        tokio::time::sleep(wait).await;
                        break;
                    }
                    Ok(Err(refill)) => {
                        tracing::warn!(target: "fleet::identify", shard, wait = ?refill, "session budget spent; waiting for its reset");
                        tokio::time::sleep(refill).await;
                    }
                    Err(error) => {
                        tracing::warn!(target: "fleet::identify", shard, %error, "Redis did not reserve an identify; trying again");
                        tokio::time::sleep(RETRY).await;
                    }
                }
            }
            // The slot is due; the bucket's previous shard must have been seen READY a window
            // ago too (or be two windows late).
            loop {
                match reserver.may_go().await {
                    Ok(wait) if wait.is_zero() => return,
                    Ok(wait) => tokio::time::sleep(wait).await,
                    Err(error) => {
                        tracing::warn!(target: "fleet::identify", shard, %error, "Redis did not let an identify go; trying again");
                        tokio::time::sleep(RETRY).await;
                    }
                }
            }
        })
    }

    fn confirmed(&self, shard: u32) {
        let bucket = shard % self.config.max_concurrency.max(1);
        let keys = grant_keys(self, bucket);
        let window = u64::try_from(self.config.window.as_millis()).unwrap_or(u64::MAX);
        let (link, confirm) = (self.link.clone(), self.confirm.clone());
        tokio::spawn(async move {
            let mut invocation = confirm.key(&keys[0]);
            invocation.key(&keys[1]).arg(window.max(1)).arg(shard);
            // A confirmation that cannot be written costs the next grant its wait for this
            // READY (two windows at most); nothing waits on it.
            let _: redis::RedisResult<i64> = link.invoke(&invocation).await;
        });
    }

    fn stats(&self) -> IdentifyStats {
        let waiting = self.waiting.load(Ordering::Relaxed);
        let rounds = u64::from(waiting.div_ceil(self.config.max_concurrency.max(1)));
        let eta = self
            .config
            .window
            .saturating_mul(u32::try_from(rounds).unwrap_or(u32::MAX));
        let remaining = self.remaining.load(Ordering::Relaxed);
        IdentifyStats {
            waiting,
            eta_ms: u64::try_from(eta.as_millis()).unwrap_or(u64::MAX),
            sessions_remaining: u32::try_from(remaining).ok(),
            sessions_total: Some(self.config.budget.total),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_redis_url_is_named_without_its_credentials() {
        assert_eq!(
            redis_server("redis://user:hunter2@10.0.0.5:6380/2"),
            "10.0.0.5:6380"
        );
        assert_eq!(redis_server("redis://127.0.0.1:6379"), "127.0.0.1:6379");
        assert_eq!(redis_server("rediss://:pw@host?x=1"), "host");
    }
}
