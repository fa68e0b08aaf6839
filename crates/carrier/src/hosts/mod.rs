//! A host's lease in Redis, for a bot that runs on several hosts ([`HostLease`]).
//!
//! Each host holds `fleet:{<fleet id>}:host:<host id>`, a key with a time to live whose value is
//! the host's incarnation (random per start), and its entry in the `hosts` sorted set (host id by
//! lease deadline, on Redis's clock). A Lua script renews both every sixth of the lease; it
//! refuses when another incarnation holds the key: two machines given one host id. A clean stop
//! deletes the key if it is still this incarnation's.
//!
//! With the lease come the ranges ([`assign`]): which host runs which of the bot's clusters
//! (and which runs each service run once per bot), claimed and handed on in Redis, and the
//! sessions their shards resume from on the next host.
//! The admiral's [`agent`] keeps all of it, and fences the host before its lease can lapse.
//! Between the hosts' admirals runs the [`bus`] (Redis Pub/Sub): calls to another host's
//! clusters, their answers, broadcasts, and the hint that the assignment changed. The central
//! [`store`] lives in Redis too, one for every host.

pub(crate) mod agent;
pub(crate) mod assign;
pub(crate) mod bus;
pub(crate) mod store;

pub use agent::{fence_margin, takeover_grace};

use std::time::Duration;

use crate::identify::fleetwide::{RedisError, redis_server, redis_time};

/// How long a host's lease lasts unless renewed.
pub const HOST_LEASE_TTL: Duration = Duration::from_secs(15);

/// Takes or renews the lease. KEYS: the host key, the hosts set. ARGV: incarnation, time to live
/// (ms), host id. Returns the lease deadline (Redis ms), or the error `FENCED` when another
/// incarnation holds it.
const RENEW: &str = redis_time!(
    r"
local held = redis.call('GET', KEYS[1])
if held and held ~= ARGV[1] then
  return redis.error_reply('FENCED')
end
local deadline = now + tonumber(ARGV[2])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('ZADD', KEYS[2], deadline, ARGV[3])
return deadline
"
);

/// Gives the lease up if this incarnation still holds it. KEYS: the host key, the hosts set.
/// ARGV: incarnation, host id.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[2], ARGV[2])
  return 1
end
return 0
";

/// This host's part of a fleet on several hosts, as the admiral runs it: its lease and, when
/// Redis assigns the ranges, its share of them.
pub struct HostPart {
    pub(crate) agent: agent::HostAgent,
    /// Runs the shared store's operations against Redis.
    pub(crate) store: store::StoreTask,
}

impl std::fmt::Debug for HostPart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostPart").finish_non_exhaustive()
    }
}

/// Why a host could not take its lease.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LeaseError {
    /// Redis could not be reached.
    #[error(transparent)]
    Redis(#[from] RedisError),
    /// A running admiral holds this host id.
    #[error(
        "host id {0:?} is held by another running admiral of this bot (two machines with one host id?); give each host its own FleetOptions::host_id"
    )]
    Taken(String),
    /// This host plans other shards than the bot's other hosts.
    #[error(
        "this host plans other shards than the bot's other hosts (Redis holds shard total and clusters {0}): give every host the same shards and clusters options"
    )]
    Plan(String),
}

/// This host's lease in Redis: taken at start, renewed by [`HostLease::keep`], given up by
/// [`HostLease::release`].
pub struct HostLease {
    pub(crate) client: redis::Client,
    pub(crate) host: String,
    keys: [String; 2],
    /// Every key of this fleet starts with it: `fleet:{<fleet id>}:`.
    prefix: String,
    incarnation: String,
    pub(crate) ttl: Duration,
    server: String,
    /// When the request that took the lease was sent.
    pub(crate) taken_at: tokio::time::Instant,
}

impl std::fmt::Debug for HostLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostLease")
            .field("host", &self.host)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl HostLease {
    /// Takes host `host`'s lease of fleet `fleet_id` for `ttl`, or says why not.
    pub async fn take(
        url: &str,
        fleet_id: &str,
        host: &str,
        ttl: Duration,
    ) -> Result<Self, LeaseError> {
        Self::take_as(url, fleet_id, host, ttl, None).await
    }

    /// [`take`](Self::take), going on as incarnation `incarnation` when given: the admiral that
    /// held the lease was re-executed in place (or died) and this one adopts its workers, so
    /// its lease and ranges are this one's.
    pub(crate) async fn take_as(
        url: &str,
        fleet_id: &str,
        host: &str,
        ttl: Duration,
        incarnation: Option<String>,
    ) -> Result<Self, LeaseError> {
        let server = redis_server(url);
        let client = redis::Client::open(url).map_err(|e| RedisError::new(&server, &e))?;
        let lease = Self {
            client,
            host: host.to_owned(),
            keys: [
                format!("fleet:{{{fleet_id}}}:host:{host}"),
                format!("fleet:{{{fleet_id}}}:hosts"),
            ],
            prefix: format!("fleet:{{{fleet_id}}}:"),
            incarnation: incarnation
                .filter(|i| i.len() == 32 && i.bytes().all(|b| b.is_ascii_alphanumeric()))
                .unwrap_or_else(|| crate::Secret::random().expose()[..32].to_owned()),
            ttl,
            server,
            taken_at: tokio::time::Instant::now(),
        };
        let mut connection = lease.connect().await?;
        lease.renew(&mut connection).await?;
        tracing::info!(target: "fleet::admiral", host, ttl = ?ttl, "took this host's lease in Redis");
        Ok(lease)
    }

    /// Checks this host's plan against the bot's other hosts' (or records it, as the first).
    pub(crate) async fn join(&self, assignment: &assign::Assignment) -> Result<(), LeaseError> {
        let mut connection = self.connect().await?;
        match assignment.join(&mut connection).await {
            Ok(()) => Ok(()),
            Err(assign::ClaimError::Plan(theirs)) => Err(LeaseError::Plan(theirs)),
            Err(error) => Err(LeaseError::Redis(RedisError::other(
                &self.server,
                &format!("{error:?}"),
            ))),
        }
    }

    /// Key `name` of this fleet.
    pub(crate) fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// This start's incarnation (random).
    pub(crate) fn incarnation(&self) -> &str {
        &self.incarnation
    }

    /// A new connection to the lease's Redis.
    pub(crate) async fn connect(&self) -> Result<redis::aio::MultiplexedConnection, LeaseError> {
        tokio::time::timeout(
            Duration::from_secs(10),
            self.client.get_multiplexed_async_connection(),
        )
        .await
        .map_err(|_| RedisError::timed_out(&self.server))?
        .map_err(|e| RedisError::new(&self.server, &e).into())
    }

    /// Renews the lease once, or says why not.
    pub(crate) async fn renew(
        &self,
        connection: &mut redis::aio::MultiplexedConnection,
    ) -> Result<(), LeaseError> {
        let ttl = u64::try_from(self.ttl.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let renewed: redis::RedisResult<i64> = redis::Script::new(RENEW)
            .key(&self.keys[0])
            .key(&self.keys[1])
            .arg(&self.incarnation)
            .arg(ttl)
            .arg(&self.host)
            .invoke_async(connection)
            .await;
        match renewed {
            Ok(_) => Ok(()),
            Err(error) if error.to_string().contains("FENCED") => {
                Err(LeaseError::Taken(self.host.clone()))
            }
            Err(error) => Err(RedisError::new(&self.server, &error).into()),
        }
    }

    /// Gives the lease up, if this incarnation still holds it.
    pub async fn release(&self) {
        let Ok(mut connection) = self.connect().await else {
            return;
        };
        self.release_on(&mut connection).await;
    }

    /// [`release`](Self::release), on an open connection.
    pub(crate) async fn release_on(&self, connection: &mut redis::aio::MultiplexedConnection) {
        let released: redis::RedisResult<i64> = redis::Script::new(RELEASE)
            .key(&self.keys[0])
            .key(&self.keys[1])
            .arg(&self.incarnation)
            .arg(&self.host)
            .invoke_async(connection)
            .await;
        if released.is_ok_and(|r| r == 1) {
            tracing::info!(target: "fleet::admiral", host = %self.host, "gave this host's lease up");
        }
    }
}
