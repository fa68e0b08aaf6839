//! Which host runs which range of the bot's shards, in Redis ([`Assignment`]), and the sessions
//! each range's shards had when their owner last wrote them (`shard:<id>`).
//!
//! A range is one cluster of the bot's plan (every host plans the same clusters; `meta` holds
//! the shard total and the range count, and a host whose plan differs is refused). `assign`
//! maps a range to its owner, `host|incarnation|epoch` (the epoch is Redis's time in µs when the
//! range was claimed, so it survives Redis losing its last writes). Only the claim script
//! changes it, by compare-and-set inside Lua: a host takes a range that nobody owns, that a past
//! incarnation of itself owned, or whose owner's lease is gone and whose lease deadline is
//! `grace` behind Redis's clock. It never takes a range from a live host. Checkpoints are
//! written by a script that checks the writer still owns the range: a host that lost a range
//! cannot overwrite its new owner's sessions.

use std::collections::BTreeMap;

use crate::admiral::ShardPlan;
use crate::identify::fleetwide::{RedisError, redis_time};
use crate::ipc::proto::ShardSession;

/// The largest checkpoint written for one shard (a serenity session carries its READY and
/// cached guilds).
const MAX_SESSION_BYTES: usize = 8 << 20;

/// Sets `meta` if no host did, or checks this host's plan against it. KEYS: meta, recovery,
/// hosts, assign, assign:ver. ARGV: shard total, range count, Redis's run id, recovery window
/// (ms), the fleet's key prefix. Returns `OK`, or the error `PLAN <total> <ranges>` while
/// another host runs another plan (`PLAN <total> <ranges> resharded` when a reshard made it); with none running, the new plan replaces the old (a bot
/// restarted with another shard count) and the old assignment goes, with the checkpoints of
/// an old shard total. A Redis that restarted since a host last wrote its run id opens the
/// recovery window (see [`CLAIM`]).
const JOIN: &str = redis_time!(
    r"
local total = redis.call('HGET', KEYS[1], 'shard_total')
local ranges = redis.call('HGET', KEYS[1], 'ranges')
if not total or not ranges then
  redis.call('HSET', KEYS[1], 'shard_total', ARGV[1], 'ranges', ARGV[2], 'run_id', ARGV[3])
  return 'OK'
end
if total ~= ARGV[1] or ranges ~= ARGV[2] then
  -- This host's own lease is live: any other makes two.
  if redis.call('ZCOUNT', KEYS[3], now, '+inf') > 1 then
    -- A reshard's plan: the host follows it (its options still name the plan it started with).
    local resharded = redis.call('HEXISTS', KEYS[1], 'reshard') == 1 and ' resharded' or ''
    return redis.error_reply('PLAN ' .. total .. ' ' .. ranges .. resharded)
  end
  redis.call('DEL', KEYS[4])
  redis.call('INCR', KEYS[5])
  -- Another shard total: the old one's checkpoints are never resumed (their keys name it).
  if total ~= ARGV[1] then
    for shard = 0, tonumber(total) - 1 do
      redis.call('DEL', ARGV[5] .. 'shard:' .. total .. ':' .. shard)
    end
  end
  redis.call('HSET', KEYS[1], 'shard_total', ARGV[1], 'ranges', ARGV[2], 'run_id', ARGV[3])
  redis.call('HDEL', KEYS[1], 'reshard', 'switch_at')
  return 'OK'
end
if redis.call('HGET', KEYS[1], 'run_id') ~= ARGV[3] then
  redis.call('HSET', KEYS[1], 'run_id', ARGV[3])
  redis.call('SET', KEYS[2], '1', 'PX', ARGV[4])
end
return 'OK'
"
);

/// Claims this host's share of the ranges nobody serves, and lists the ranges it owns.
///
/// KEYS: assign, hosts, meta, assign:ver, recovery. ARGV: host id, incarnation, host key
/// prefix, takeover grace (ms), range count, capacity, shard total, Redis's run id, recovery
/// window (ms), the number n of services run once per bot, their n names, then `field, owner
/// entry` of each range (its number) and service (`svc:<name>`) this host runs and may keep
/// (its lease cannot have lapsed). KEYS also: caps (each host's capacity). Returns how many
/// ranges this host should hand to others, then a flat list `field, owner, ...` of this
/// incarnation's ranges and services; or the error `NOLEASE` (this host holds no lease) or
/// `PLAN`.
///
/// A service run once per bot is an `svc:<name>` entry in `assign`, taken by the same rules
/// as a range. A host takes a free one while it runs no more of them than the live host
/// running fewest, so they spread over the hosts; one is never moved from a live host.
///
/// A host takes its fair share, `ceil(ranges / live hosts)` (at most its capacity), and more
/// when the other live hosts could not take what would be left (their capacity); it hands on
/// what it runs beyond its fair share while another live host has room for it (a host that
/// joins a full fleet gets its share by planned moves).
///
/// Redis that lost its data (`meta` gone) or restarted (another run id) opens a recovery window:
/// for its length no range is claimed or taken over, only put back by the hosts that run them,
/// so that a host whose lease Redis forgot is not taken for dead.
const CLAIM: &str = redis_time!(
    r"
local me, incarnation, prefix = ARGV[1], ARGV[2], ARGV[3]
if redis.call('GET', prefix .. me) ~= incarnation then
  return redis.error_reply('NOLEASE')
end
local total = redis.call('HGET', KEYS[3], 'shard_total')
local planned = redis.call('HGET', KEYS[3], 'ranges')
if total and (total ~= ARGV[7] or (planned and planned ~= ARGV[5])) then
  return redis.error_reply('PLAN ' .. total .. ' ' .. tostring(planned))
end
if not total or redis.call('HGET', KEYS[3], 'run_id') ~= ARGV[8] then
  redis.call('HSET', KEYS[3], 'shard_total', ARGV[7], 'ranges', ARGV[5], 'run_id', ARGV[8])
  redis.call('SET', KEYS[5], '1', 'PX', ARGV[9])
end
local recovering = redis.call('EXISTS', KEYS[5]) == 1
local services = tonumber(ARGV[10])
for i = 11 + services, #ARGV, 2 do
  if not redis.call('HGET', KEYS[1], ARGV[i]) then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  end
end
local grace, ranges, capacity = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
redis.call('HSET', KEYS[6], me, capacity)
local live = math.max(redis.call('ZCOUNT', KEYS[2], now, '+inf'), 1)
local fair = math.ceil(ranges / live)
-- Whose an owner entry is: 'mine' (this incarnation's), 'past' (a past life of this host's:
-- this incarnation holds the lease now), 'live' (another host's, under its live lease, with
-- that host), 'free' (nobody's, or another host's whose lease is another incarnation's or gone
-- with its deadline a grace behind), or 'dying' (gone, within the grace).
local function whose(entry)
  if not entry then return 'free' end
  local host, inc = string.match(entry, '^([^|]*)|([^|]*)|')
  if host == me and inc == incarnation then return 'mine' end
  if host == me then return 'past' end
  local holder = redis.call('GET', prefix .. host)
  if holder == inc then return 'live', host end
  local deadline = redis.call('ZSCORE', KEYS[2], host)
  if holder or not deadline or tonumber(deadline) + grace <= now then return 'free' end
  return 'dying'
end
-- Ranges each other host runs under its live lease.
local counts = {}
local mine, free = {}, {}
for r = 0, ranges - 1 do
  local state, host = whose(redis.call('HGET', KEYS[1], r))
  if state == 'mine' then
    table.insert(mine, r)
  elseif state == 'past' then
    table.insert(free, 1, r)
  elseif state == 'free' then
    table.insert(free, r)
  elseif state == 'live' then
    counts[host] = (counts[host] or 0) + 1
  end
end
local epoch = tostring(tonumber(t[1]) * 1000000 + tonumber(t[2]))
local owner = me .. '|' .. incarnation .. '|' .. epoch
local out = {}
for _, r in ipairs(mine) do
  table.insert(out, r)
  table.insert(out, redis.call('HGET', KEYS[1], r))
end
-- Room the other live hosts have for ranges, each up to its fair share and capacity.
local spare = 0
for _, h in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], now, '+inf')) do
  if h ~= me then
    local cap = tonumber(redis.call('HGET', KEYS[6], h) or ranges)
    spare = spare + math.max(0, math.min(cap, fair) - (counts[h] or 0))
  end
end
local share = math.min(fair, capacity)
local left = #free - math.max(0, share - #mine)
if left > spare then share = math.min(capacity, share + left - spare) end
local give = 0
if not recovering and #mine > fair and #free == 0 then give = math.min(#mine - fair, spare) end
table.insert(out, 1, give)
local claimed = false
for _, r in ipairs(free) do
  if recovering or (#out - 1) / 2 >= share then break end
  redis.call('HSET', KEYS[1], r, owner)
  table.insert(out, r)
  table.insert(out, owner)
  claimed = true
end
-- Services run once per bot: each host's count, and those free to take.
local ran, open = {}, {}
for _, h in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], now, '+inf')) do ran[h] = 0 end
ran[me] = 0
for i = 11, 10 + services do
  local field = 'svc:' .. ARGV[i]
  local entry = redis.call('HGET', KEYS[1], field)
  local state, host = whose(entry)
  if state == 'mine' then
    ran[me] = ran[me] + 1
    table.insert(out, field)
    table.insert(out, entry)
  elseif state == 'past' then
    table.insert(open, 1, field)
  elseif state == 'free' then
    table.insert(open, field)
  elseif state == 'live' then
    ran[host] = (ran[host] or 0) + 1
  end
end
for _, field in ipairs(open) do
  if recovering then break end
  local fewest = ran[me]
  for _, n in pairs(ran) do fewest = math.min(fewest, n) end
  if ran[me] > fewest then break end
  redis.call('HSET', KEYS[1], field, owner)
  ran[me] = ran[me] + 1
  table.insert(out, field)
  table.insert(out, owner)
  claimed = true
end
if claimed then redis.call('INCR', KEYS[4]) end
return out
"
);

/// Writes checkpoints its writer still owns. KEYS: assign, then one `shard:<id>` key per
/// checkpoint. ARGV: per checkpoint, its range, the writer's owner entry and the session (an
/// empty one deletes the key). Returns how many were written.
const CHECKPOINT: &str = r"
local written = 0
for i = 2, #KEYS do
  local at = (i - 2) * 3
  if redis.call('HGET', KEYS[1], ARGV[at + 1]) == ARGV[at + 2] then
    if ARGV[at + 3] == '' then
      redis.call('DEL', KEYS[i])
    else
      redis.call('SET', KEYS[i], ARGV[at + 3])
    end
    written = written + 1
  end
end
return written
";

/// Gives this incarnation's ranges up (a clean stop). KEYS: assign, assign:ver. ARGV: host id,
/// incarnation.
const RELEASE: &str = r"
local prefix = ARGV[1] .. '|' .. ARGV[2] .. '|'
local released = 0
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  if string.sub(all[i + 1], 1, #prefix) == prefix then
    redis.call('HDEL', KEYS[1], all[i])
    released = released + 1
  end
end
if released > 0 then redis.call('INCR', KEYS[2]) end
return released
";

/// Gives one range of this incarnation up (a planned move). KEYS: assign, assign:ver. ARGV:
/// host id, incarnation, range.
const RELEASE_ONE: &str = r"
local prefix = ARGV[1] .. '|' .. ARGV[2] .. '|'
local owner = redis.call('HGET', KEYS[1], ARGV[3])
if owner and string.sub(owner, 1, #prefix) == prefix then
  redis.call('HDEL', KEYS[1], ARGV[3])
  redis.call('INCR', KEYS[2])
  return 1
end
return 0
";

/// A reshard of a bot split across hosts goes live in Redis: the plan in `meta` becomes the
/// new one and each new range is assigned to the host that readied it, under the owner entry
/// that host had for the old range it comes from. KEYS: meta, assign, assign:ver. ARGV: old
/// shard total, old range count, new total, new range count, the reshard's id, the host key
/// prefix, the fleet's key prefix, then per new range `range, old range, host`. Each old range
/// must still be its host's, under that host's live lease: the error `CHANGED <range>` if not,
/// `PLAN` if the plan changed. Returns the switch time (ms since the Unix epoch, a second from
/// now on Redis's clock), also kept in `meta` for a host that missed the hint.
const RESHARD: &str = redis_time!(
    r"
if redis.call('HGET', KEYS[1], 'shard_total') ~= ARGV[1] or redis.call('HGET', KEYS[1], 'ranges') ~= ARGV[2] then
  return redis.error_reply('PLAN')
end
local entries = {}
for i = 8, #ARGV, 3 do
  local entry = redis.call('HGET', KEYS[2], ARGV[i + 1])
  if not entry then return redis.error_reply('CHANGED ' .. ARGV[i + 1]) end
  local host, inc = string.match(entry, '^([^|]*)|([^|]*)|')
  if host ~= ARGV[i + 2] or redis.call('GET', ARGV[6] .. host) ~= inc then
    return redis.error_reply('CHANGED ' .. ARGV[i + 1])
  end
  table.insert(entries, ARGV[i])
  table.insert(entries, entry)
end
-- The services run once per bot stay where they run.
local all = redis.call('HGETALL', KEYS[2])
for i = 1, #all, 2 do
  if string.sub(all[i], 1, 4) == 'svc:' then
    table.insert(entries, all[i])
    table.insert(entries, all[i + 1])
  end
end
redis.call('DEL', KEYS[2])
for i = 1, #entries, 2 do
  redis.call('HSET', KEYS[2], entries[i], entries[i + 1])
end
redis.call('INCR', KEYS[3])
local at = now + 1000
redis.call('HSET', KEYS[1], 'shard_total', ARGV[3], 'ranges', ARGV[4], 'reshard', ARGV[5], 'switch_at', at)
for shard = 0, tonumber(ARGV[1]) - 1 do
  redis.call('DEL', ARGV[7] .. 'shard:' .. ARGV[1] .. ':' .. shard)
end
return at
"
);

/// The hosts whose lease deadline is ahead of Redis's clock, each with the capacity its last
/// claim recorded (`''` if none). KEYS: hosts, caps.
const LIVE_HOSTS: &str = redis_time!(
    r"
local out = {}
for _, host in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf')) do
  table.insert(out, host)
  table.insert(out, redis.call('HGET', KEYS[2], host) or '')
end
return out
"
);

/// A reshard of the split bot, ready on every host, to go live in Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ReshardCommit {
    /// The reshard's id.
    pub id: String,
    /// The shard total and range count it replaces.
    pub from: (u32, u32),
    /// The new shard total and range count.
    pub to: (u32, u32),
    /// Per new range: the old range it comes from, and the host that readied it.
    pub moves: Vec<(u32, u32, String)>,
}

/// The plan in Redis, when a reshard replaced this host's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Replanned {
    /// The reshard's id.
    pub id: String,
    /// The new shard total.
    pub total: u32,
    /// The new range count.
    pub ranges: u32,
    /// The switch time every host uses.
    pub at_ms: u64,
}

/// Which host each range and each service run once per bot is assigned to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Owners {
    /// By range.
    pub ranges: BTreeMap<u32, String>,
    /// By service name.
    pub services: BTreeMap<String, String>,
}

/// The prefix of a service's field in `assign`.
const SERVICE_FIELD: &str = "svc:";

/// What a claim left this host with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Claimed {
    /// The ranges it owns, with their owner entries.
    pub ranges: BTreeMap<u32, String>,
    /// The services run once per bot that it owns, with their owner entries.
    pub services: BTreeMap<String, String>,
    /// How many of them it should hand to hosts with room.
    pub give: usize,
}

/// Why a host may not run its part of the bot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ClaimError {
    /// Redis did not answer, or failed.
    Redis(String),
    /// This host holds no lease (it lapsed): it claims nothing until renewed.
    NoLease,
    /// The bot's hosts plan different shards: the message says what Redis holds.
    Plan(String),
}

/// This host's view of the range table in Redis.
pub(crate) struct Assignment {
    host: String,
    incarnation: String,
    prefix: String,
    /// The bot's whole plan: one range per cluster.
    plan: ShardPlan,
    /// The services run once per bot that this host can run.
    services: Vec<String>,
    /// The most ranges this host runs.
    capacity: u32,
    /// How long after a dead host's lease deadline its ranges may be taken.
    grace: std::time::Duration,
    /// How long, after Redis lost its data or restarted, only the hosts that run a range may
    /// claim it.
    recovery: std::time::Duration,
}

impl std::fmt::Debug for Assignment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Assignment")
            .field("host", &self.host)
            .field("ranges", &self.plan.clusters.len())
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

impl Assignment {
    /// Host `host` (incarnation `incarnation`, with a lease of `ttl`) of fleet `fleet_id`,
    /// running at most `capacity` of `plan`'s clusters.
    pub(crate) fn new(
        fleet_id: &str,
        host: &str,
        incarnation: &str,
        plan: ShardPlan,
        capacity: u32,
        ttl: std::time::Duration,
    ) -> Self {
        Self {
            host: host.to_owned(),
            incarnation: incarnation.to_owned(),
            prefix: format!("fleet:{{{fleet_id}}}:"),
            plan,
            services: Vec::new(),
            capacity: capacity.max(1),
            grace: super::agent::takeover_grace(ttl),
            recovery: ttl * 2,
        }
    }

    /// Also claims these services run once per bot.
    pub(crate) fn with_services(mut self, services: Vec<String>) -> Self {
        self.services = services;
        self
    }

    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// The key of shard `shard`'s checkpoint. The shard total is part of it: a session of
    /// another plan is never resumed.
    fn shard_key(&self, shard: u32) -> String {
        self.key(&format!("shard:{}:{shard}", self.plan.shard_total))
    }

    /// Checks this host's plan against the one the bot's other hosts run (or records it).
    pub(crate) async fn join(
        &self,
        connection: &mut redis::aio::MultiplexedConnection,
    ) -> Result<(), ClaimError> {
        let run_id = run_id(connection).await?;
        let joined: redis::RedisResult<String> = redis::Script::new(JOIN)
            .key(self.key("meta"))
            .key(self.key("recovery"))
            .key(self.key("hosts"))
            .key(self.key("assign"))
            .key(self.key("assign:ver"))
            .arg(self.plan.shard_total)
            .arg(self.plan.clusters.len())
            .arg(run_id)
            .arg(millis(self.recovery))
            .arg(&self.prefix)
            .invoke_async(connection)
            .await;
        joined.map(drop).map_err(|e| claim_error(&e))
    }

    /// Claims what this host should take and returns every range and service it owns, with
    /// its owner entry. `keep` are the ranges and `keep_services` the services it runs (with
    /// their owner entries) that Redis should know as its own: put back if Redis forgot them.
    pub(crate) async fn claim(
        &self,
        connection: &mut redis::aio::MultiplexedConnection,
        run_id: &str,
        keep: &BTreeMap<u32, String>,
        keep_services: &BTreeMap<String, String>,
    ) -> Result<Claimed, ClaimError> {
        let script = redis::Script::new(CLAIM);
        let mut claim = script.prepare_invoke();
        claim
            .key(self.key("assign"))
            .key(self.key("hosts"))
            .key(self.key("meta"))
            .key(self.key("assign:ver"))
            .key(self.key("recovery"))
            .key(self.key("caps"))
            .arg(&self.host)
            .arg(&self.incarnation)
            .arg(self.key("host:"))
            .arg(millis(self.grace))
            .arg(self.plan.clusters.len())
            .arg(self.capacity)
            .arg(self.plan.shard_total)
            .arg(run_id)
            .arg(millis(self.recovery))
            .arg(self.services.len())
            .arg(&self.services);
        for (range, entry) in keep {
            claim.arg(range).arg(entry);
        }
        for (service, entry) in keep_services {
            claim.arg(format!("{SERVICE_FIELD}{service}")).arg(entry);
        }
        let claimed: redis::RedisResult<Vec<redis::Value>> = claim.invoke_async(connection).await;
        let flat = claimed.map_err(|e| claim_error(&e))?;
        let give = flat
            .first()
            .and_then(|g| redis::from_redis_value_ref::<usize>(g).ok())
            .unwrap_or(0);
        let mut ranges = BTreeMap::new();
        let mut services = BTreeMap::new();
        for pair in flat.get(1..).unwrap_or_default().chunks(2) {
            let [field, entry] = pair else { continue };
            let Ok(entry) = redis::from_redis_value_ref::<String>(entry) else {
                continue;
            };
            if let Ok(range) = redis::from_redis_value_ref::<u32>(field) {
                if (range as usize) < self.plan.clusters.len() {
                    ranges.insert(range, entry);
                }
            } else if let Ok(field) = redis::from_redis_value_ref::<String>(field)
                && let Some(service) = field.strip_prefix(SERVICE_FIELD)
                && self.services.iter().any(|s| s == service)
            {
                services.insert(service.to_owned(), entry);
            }
        }
        Ok(Claimed {
            ranges,
            services,
            give,
        })
    }

    /// The ranges Redis names this incarnation the owner of (an admiral adopting the workers of
    /// the one it follows finds their clusters here).
    pub(crate) async fn owned(
        &self,
        connection: &mut redis::aio::MultiplexedConnection,
    ) -> Result<Vec<u32>, ClaimError> {
        Ok(self.owned_entries(connection).await?.into_keys().collect())
    }

    /// The services run once per bot that Redis names this incarnation the owner of.
    pub(crate) async fn owned_services(
        &self,
        connection: &mut redis::aio::MultiplexedConnection,
    ) -> Result<Vec<String>, ClaimError> {
        let entries: redis::RedisResult<BTreeMap<String, String>> = redis::cmd("HGETALL")
            .arg(self.key("assign"))
            .query_async(connection)
            .await;
        let prefix = format!("{}|{}|", self.host, self.incarnation);
        Ok(entries
            .map_err(|e| claim_error(&e))?
            .into_iter()
            .filter(|(_, owner)| owner.starts_with(&prefix))
            .filter_map(|(field, _)| Some(field.strip_prefix(SERVICE_FIELD)?.to_owned()))
            .filter(|service| self.services.contains(service))
            .collect())
    }

    /// [`Assignment::owned`], with each range's owner entry.
    pub(crate) async fn owned_entries(
        &self,
        connection: &mut redis::aio::MultiplexedConnection,
    ) -> Result<BTreeMap<u32, String>, ClaimError> {
        let entries: redis::RedisResult<BTreeMap<String, String>> = redis::cmd("HGETALL")
            .arg(self.key("assign"))
            .query_async(connection)
            .await;
        let prefix = format!("{}|{}|", self.host, self.incarnation);
        Ok(entries
            .map_err(|e| claim_error(&e))?
            .into_iter()
            .filter(|(_, owner)| owner.starts_with(&prefix))
            .filter_map(|(range, owner)| Some((range.parse().ok()?, owner)))
            .filter(|(range, _)| (*range as usize) < self.plan.clusters.len())
            .collect())
    }

    /// The plan this host runs.
    pub(crate) fn plan(&self) -> &ShardPlan {
        &self.plan
    }

    /// Runs `plan` from now on (a reshard of the split bot went live).
    pub(crate) fn replan(&mut self, plan: ShardPlan) {
        self.plan = plan;
    }

    /// Puts a reshard ready on every host live ([`RESHARD`]); the switch time.
    pub(crate) async fn commit_reshard(
        &self,
        connection: &mut redis::aio::MultiplexedConnection,
        commit: &ReshardCommit,
    ) -> Result<u64, ClaimError> {
        let script = redis::Script::new(RESHARD);
        let mut invoke = script.prepare_invoke();
        invoke
            .key(self.key("meta"))
            .key(self.key("assign"))
            .key(self.key("assign:ver"))
            .arg(commit.from.0)
            .arg(commit.from.1)
            .arg(commit.to.0)
            .arg(commit.to.1)
            .arg(&commit.id)
            .arg(self.key("host:"))
            .arg(&self.prefix);
        for (range, old, host) in &commit.moves {
            invoke.arg(range).arg(old).arg(host);
        }
        let at: redis::RedisResult<u64> = invoke.invoke_async(connection).await;
        at.map_err(|e| claim_error(&e))
    }

    /// The plan in Redis, if a reshard made it and it is not the one this host runs.
    pub(crate) async fn replanned(
        &self,
        connection: &mut redis::aio::MultiplexedConnection,
    ) -> Result<Option<Replanned>, ClaimError> {
        type Fields = (Option<u32>, Option<u32>, Option<String>, Option<u64>);
        let fields: redis::RedisResult<Fields> = redis::cmd("HMGET")
            .arg(self.key("meta"))
            .arg("shard_total")
            .arg("ranges")
            .arg("reshard")
            .arg("switch_at")
            .query_async(connection)
            .await;
        let (total, ranges, id, at_ms) = fields.map_err(|e| claim_error(&e))?;
        let (Some(total), Some(ranges), Some(id), Some(at_ms)) = (total, ranges, id, at_ms) else {
            return Ok(None);
        };
        let same = total == self.plan.shard_total && ranges as usize == self.plan.clusters.len();
        Ok((!same).then_some(Replanned {
            id,
            total,
            ranges,
            at_ms,
        }))
    }

    /// Gives range `range` up, if this incarnation still owns it (a planned move to a host
    /// with room); whether it did.
    pub(crate) async fn release_range(
        &self,
        connection: &mut redis::aio::MultiplexedConnection,
        range: u32,
    ) -> Result<bool, ClaimError> {
        let released: redis::RedisResult<i64> = redis::Script::new(RELEASE_ONE)
            .key(self.key("assign"))
            .key(self.key("assign:ver"))
            .arg(&self.host)
            .arg(&self.incarnation)
            .arg(range)
            .invoke_async(connection)
            .await;
        released.map(|n| n == 1).map_err(|e| claim_error(&e))
    }

    /// Writes `sessions` (by range) for the ranges `ranges` names this host's owner entry of; returns
    /// how many Redis took.
    pub(crate) async fn write_checkpoints(
        &self,
        connection: &mut redis::aio::MultiplexedConnection,
        ranges: &BTreeMap<u32, String>,
        sessions: &[(u32, ShardSession)],
    ) -> Result<usize, ClaimError> {
        let checkpoint = redis::Script::new(CHECKPOINT);
        let mut script = checkpoint.prepare_invoke();
        script.key(self.key("assign"));
        let mut any = false;
        for (range, session) in sessions {
            let Some(entry) = ranges.get(range) else {
                continue;
            };
            let blob = if session.session_id.is_empty() {
                Vec::new()
            } else {
                match rmp_serde::to_vec_named(session) {
                    Ok(blob) if blob.len() <= MAX_SESSION_BYTES => blob,
                    _ => continue,
                }
            };
            script
                .key(self.shard_key(session.shard))
                .arg(range)
                .arg(entry)
                .arg(blob);
            any = true;
        }
        if !any {
            return Ok(0);
        }
        let written: redis::RedisResult<usize> = script.invoke_async(connection).await;
        written.map_err(|e| claim_error(&e))
    }

    /// The sessions the last owner of range `range` checkpointed.
    pub(crate) async fn read_checkpoints(
        &self,
        connection: &mut redis::aio::MultiplexedConnection,
        range: u32,
    ) -> Result<Vec<ShardSession>, ClaimError> {
        let Some(cluster) = self.plan.clusters.iter().find(|c| c.id == range) else {
            return Ok(Vec::new());
        };
        let keys: Vec<String> = cluster
            .shards()
            .map(|shard| self.shard_key(shard))
            .collect();
        let blobs: redis::RedisResult<Vec<Option<Vec<u8>>>> =
            redis::cmd("MGET").arg(&keys).query_async(connection).await;
        let blobs = blobs.map_err(|e| claim_error(&e))?;
        Ok(cluster
            .shards()
            .zip(blobs)
            .filter_map(|(shard, blob)| {
                let session: ShardSession = rmp_serde::from_slice(&blob?).ok()?;
                (session.shard == shard && !session.session_id.is_empty()).then_some(session)
            })
            .collect())
    }

    /// Which host each range's and each service's owner entry names (the owner may be gone:
    /// its lease is not looked at). Ranges outside the plan, services this host does not know
    /// of and malformed entries are left out.
    pub(crate) async fn owners(
        &self,
        connection: &mut redis::aio::MultiplexedConnection,
    ) -> Result<Owners, ClaimError> {
        let entries: redis::RedisResult<BTreeMap<String, String>> = redis::cmd("HGETALL")
            .arg(self.key("assign"))
            .query_async(connection)
            .await;
        let entries = entries.map_err(|e| claim_error(&e))?;
        let mut owners = Owners::default();
        for (field, entry) in entries {
            let Some(host) = entry.split('|').next().filter(|h| !h.is_empty()) else {
                continue;
            };
            if let Ok(range) = field.parse::<u32>() {
                if (range as usize) < self.plan.clusters.len() {
                    owners.ranges.insert(range, host.to_owned());
                }
            } else if let Some(service) = field.strip_prefix(SERVICE_FIELD)
                && self.services.iter().any(|s| s == service)
            {
                owners.services.insert(service.to_owned(), host.to_owned());
            }
        }
        Ok(owners)
    }

    /// The hosts of the bot whose lease is live on Redis's clock (those that run no range
    /// included), with the most ranges each has room for.
    pub(crate) async fn live_hosts(
        &self,
        connection: &mut redis::aio::MultiplexedConnection,
    ) -> Result<BTreeMap<String, u32>, ClaimError> {
        let live: redis::RedisResult<Vec<String>> = redis::Script::new(LIVE_HOSTS)
            .key(self.key("hosts"))
            .key(self.key("caps"))
            .invoke_async(connection)
            .await;
        let live = live.map_err(|e| claim_error(&e))?;
        Ok(live
            .chunks(2)
            .filter_map(|pair| {
                let [host, capacity] = pair else { return None };
                Some((host.clone(), capacity.parse().unwrap_or(u32::MAX)))
            })
            .collect())
    }

    /// Gives every range of this incarnation up.
    pub(crate) async fn release(
        &self,
        connection: &mut redis::aio::MultiplexedConnection,
    ) -> Result<usize, ClaimError> {
        let released: redis::RedisResult<usize> = redis::Script::new(RELEASE)
            .key(self.key("assign"))
            .key(self.key("assign:ver"))
            .arg(&self.host)
            .arg(&self.incarnation)
            .invoke_async(connection)
            .await;
        released.map_err(|e| claim_error(&e))
    }
}

/// Milliseconds, for a script.
fn millis(duration: std::time::Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// The run id of the Redis behind `connection` (it changes when Redis restarts).
pub(crate) async fn run_id(
    connection: &mut redis::aio::MultiplexedConnection,
) -> Result<String, ClaimError> {
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(connection)
        .await
        .map_err(|e| claim_error(&e))?;
    Ok(info
        .lines()
        .find_map(|line| line.strip_prefix("run_id:"))
        .unwrap_or_default()
        .trim()
        .to_owned())
}

fn claim_error(error: &redis::RedisError) -> ClaimError {
    let text = error.to_string();
    if text.contains("NOLEASE") {
        ClaimError::NoLease
    } else if let Some(at) = text.find("PLAN") {
        ClaimError::Plan(text[at + 4..].trim().to_owned())
    } else {
        ClaimError::Redis(RedisError::new("redis", error).to_string())
    }
}
