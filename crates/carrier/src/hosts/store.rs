//! The central store of a bot on several hosts: one hash in Redis that every host's admiral
//! reads and writes, so a key set through one host is what every other host's workers read.
//!
//! Each operation is one Lua script call, atomic in Redis: it first forgets the keys whose time
//! to live ran out (on Redis's clock, so hosts agree), then does the work. Keys live in the
//! hash `store`; their deadlines in the sorted set `store:ttl`; the bytes of keys and values in
//! `store:bytes`, checked against the fleet's store limit before each write. Operations run in
//! the order the router hands them in, a pipeline at a time; each ends in a reply within
//! [`STORE_WITHIN`], or a clear refusal when Redis does not answer.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::identify::fleetwide::redis_time;
use crate::ipc::proto::{Outcome, Payload, Refusal, Reply, StoreRequest};

/// How long one pipeline of operations may take before each is refused.
const STORE_WITHIN: Duration = Duration::from_secs(5);
/// Operations sent in one pipeline at most.
const BATCH: usize = 64;
/// Operations waiting before the router hears "overloaded".
const QUEUE: usize = 4096;
/// The longest time to live a key gets (as in the admiral's own store).
const MAX_TTL: Duration = Duration::from_hours(24);

/// KEYS: the hash, the deadlines, the byte count. ARGV: operation, byte limit, key, then per
/// operation: `set` value, ttl (ms, 0: none); `cas` value, has expected (`1`/`0`), expected,
/// has value. Returns the value (`get`), 1/0 (`set`, `has`, `del`, `cas`, `clear`), a flat
/// list (`keys`: keys; `entries`: key, value, ...), or `{'limit', bytes}` for a write past the
/// limit.
const STORE: &str = redis_time!(
    r"
local h, z, b = KEYS[1], KEYS[2], KEYS[3]
local function size(k)
  local v = redis.call('HGET', h, k)
  if v then return #k + #v end
  return 0
end
for _, k in ipairs(redis.call('ZRANGEBYSCORE', z, '-inf', now, 'LIMIT', 0, 1000)) do
  redis.call('DECRBY', b, size(k))
  redis.call('HDEL', h, k)
  redis.call('ZREM', z, k)
end
local op, limit, key = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local function write(value, ttl)
  local bytes = tonumber(redis.call('GET', b) or '0')
  local after = bytes - size(key) + #key + #value
  if after > limit then return {'limit', bytes} end
  redis.call('HSET', h, key, value)
  redis.call('SET', b, after)
  if ttl > 0 then redis.call('ZADD', z, now + ttl, key) else redis.call('ZREM', z, key) end
  return 1
end
local function remove()
  local s = size(key)
  if s == 0 then return 0 end
  redis.call('DECRBY', b, s)
  redis.call('HDEL', h, key)
  redis.call('ZREM', z, key)
  return 1
end
if op == 'get' then
  return redis.call('HGET', h, key)
elseif op == 'set' then
  return write(ARGV[4], tonumber(ARGV[5]))
elseif op == 'has' then
  return redis.call('HEXISTS', h, key)
elseif op == 'del' then
  return remove()
elseif op == 'clear' then
  redis.call('DEL', h, z, b)
  return 1
elseif op == 'cas' then
  local current = redis.call('HGET', h, key)
  if ARGV[5] == '1' then
    if current ~= ARGV[6] then return 0 end
  elseif current then
    return 0
  end
  if ARGV[7] == '1' then return write(ARGV[4], 0) end
  if remove() == 1 or ARGV[5] == '0' then return 1 end
  return 0
else
  local out = {}
  local all = redis.call('HGETALL', h)
  for i = 1, #all, 2 do
    if string.sub(all[i], 1, #key) == key then
      table.insert(out, all[i])
      if op == 'entries' then table.insert(out, all[i + 1]) end
    end
  end
  return out
end
"
);

/// One operation and who waits for its reply.
type Job = (StoreRequest, oneshot::Sender<Reply>);

/// The router's end of the shared store: queues operations, never waits.
#[derive(Debug, Clone)]
pub(crate) struct SharedStore {
    tx: mpsc::Sender<Job>,
}

/// The task's end: runs the operations against Redis.
pub(crate) struct StoreTask {
    rx: mpsc::Receiver<Job>,
    client: redis::Client,
    keys: [String; 3],
    limit: usize,
    max_answer: usize,
}

impl std::fmt::Debug for StoreTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreTask")
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

impl SharedStore {
    /// The store of fleet `fleet_id` in the Redis of `client`: at most `limit` bytes of keys and
    /// values, answers of at most `max_answer` bytes.
    pub(crate) fn new(
        client: redis::Client,
        fleet_id: &str,
        limit: usize,
        max_answer: usize,
    ) -> (Self, StoreTask) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let key = |name: &str| format!("fleet:{{{fleet_id}}}:{name}");
        let task = StoreTask {
            rx,
            client,
            keys: [key("store"), key("store:ttl"), key("store:bytes")],
            limit,
            max_answer,
        };
        (Self { tx }, task)
    }

    /// Queues `request`; its reply comes on the returned receiver (an error there: the store's
    /// task is gone). `Err` with the reply when the queue is full.
    pub(crate) fn handle(&self, request: StoreRequest) -> Result<oneshot::Receiver<Reply>, Reply> {
        let (tx, rx) = oneshot::channel();
        self.tx.try_send((request, tx)).map_err(|_| {
            Reply::Refused(Refusal::Invalid(
                "the shared store has too many operations waiting; try again".into(),
            ))
        })?;
        Ok(rx)
    }
}

impl StoreTask {
    /// Runs until the router's end is dropped.
    pub(crate) async fn run(mut self) {
        let mut connection = None;
        let mut batch = Vec::with_capacity(BATCH);
        while self.rx.recv_many(&mut batch, BATCH).await > 0 {
            let results =
                tokio::time::timeout(STORE_WITHIN, self.pipeline(&mut connection, &batch))
                    .await
                    .unwrap_or(Err("Redis did not answer in time".to_owned()));
            if results.is_err() {
                connection = None;
            }
            for (n, (request, done)) in batch.drain(..).enumerate() {
                let reply = match &results {
                    Ok(values) => values
                        .get(n)
                        .map_or_else(|| refused("no answer"), |v| self.reply(&request, v)),
                    Err(error) => refused(error),
                };
                let _ = done.send(reply);
            }
        }
    }

    /// One pipeline of operations: each one's answer.
    async fn pipeline(
        &self,
        connection: &mut Option<redis::aio::MultiplexedConnection>,
        batch: &[Job],
    ) -> Result<Vec<redis::Value>, String> {
        if connection.is_none() {
            let open = self.client.get_multiplexed_async_connection().await;
            *connection =
                Some(open.map_err(|e| format!("cannot reach Redis: {}", redis_error(&e)))?);
        }
        let open = connection.as_mut().ok_or("no connection")?;
        let mut pipe = redis::pipe();
        for (request, _) in batch {
            let eval = pipe.cmd("EVAL").arg(STORE).arg(3).arg(&self.keys[..]);
            let eval = eval.arg(op_name(request)).arg(self.limit);
            match request {
                StoreRequest::Get(key)
                | StoreRequest::Has(key)
                | StoreRequest::Delete(key)
                | StoreRequest::Keys(key)
                | StoreRequest::Entries(key) => eval.arg(key),
                StoreRequest::Clear => eval.arg(""),
                StoreRequest::Set(key, value) => eval.arg(key).arg(value.as_bytes()).arg(0),
                StoreRequest::SetFor(key, value, ttl_ms) => {
                    let ttl = Duration::from_millis(*ttl_ms).min(MAX_TTL).as_millis();
                    eval.arg(key).arg(value.as_bytes()).arg(ttl.max(1) as u64)
                }
                StoreRequest::CompareAndSet {
                    key,
                    expected,
                    value,
                } => eval
                    .arg(key)
                    .arg(value.as_ref().map_or(&[][..], Payload::as_bytes))
                    .arg(if expected.is_some() { "1" } else { "0" })
                    .arg(expected.as_ref().map_or(&[][..], Payload::as_bytes))
                    .arg(if value.is_some() { "1" } else { "0" }),
            };
        }
        pipe.query_async(open)
            .await
            .map_err(|e| format!("Redis failed: {}", redis_error(&e)))
    }

    /// What one operation's answer means to its asker.
    fn reply(&self, request: &StoreRequest, value: &redis::Value) -> Reply {
        use redis::Value;
        if let Value::Array(items) = value
            && let [Value::BulkString(tag), bytes] = &items[..]
            && tag == b"limit"
            && !matches!(request, StoreRequest::Keys(_) | StoreRequest::Entries(_))
        {
            let bytes: u64 = redis::from_redis_value_ref(bytes).unwrap_or(0);
            return over_limit(bytes, self.limit);
        }
        let flag = || redis::from_redis_value_ref::<i64>(value).is_ok_and(|n| n == 1);
        match request {
            StoreRequest::Get(_) => match value {
                Value::BulkString(bytes) => Reply::Value(Some(Payload::from(bytes.clone()))),
                _ => Reply::Value(None),
            },
            StoreRequest::Set(..) | StoreRequest::SetFor(..) | StoreRequest::Clear => Reply::Done,
            StoreRequest::Has(_) | StoreRequest::Delete(_) | StoreRequest::CompareAndSet { .. } => {
                Reply::Flag(flag())
            }
            StoreRequest::Keys(_) => {
                let mut keys: Vec<String> = redis::from_redis_value_ref(value).unwrap_or_default();
                keys.sort_unstable();
                self.answer(&keys)
            }
            StoreRequest::Entries(_) => {
                let pairs: Vec<Vec<u8>> = redis::from_redis_value_ref(value).unwrap_or_default();
                let mut entries: Vec<(String, Payload)> = pairs
                    .chunks(2)
                    .filter_map(|pair| {
                        let [key, value] = pair else { return None };
                        let key = String::from_utf8(key.clone()).ok()?;
                        Some((key, Payload::from(value.clone())))
                    })
                    .collect();
                entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
                self.answer(&entries)
            }
        }
    }

    fn answer<T: serde::Serialize>(&self, value: &T) -> Reply {
        answer_within(value, self.max_answer)
    }
}

/// `value` as a store's answer, or a refusal when it is over `max_answer` bytes (a frame).
pub(crate) fn answer_within<T: serde::Serialize>(value: &T, max_answer: usize) -> Reply {
    match Payload::encode(value) {
        Ok(payload) if payload.0.len() <= max_answer => Reply::Outcome(Outcome::Ok(payload)),
        Ok(payload) => Reply::Refused(Refusal::Invalid(format!(
            "the answer would be {} bytes, more than one frame holds ({max_answer}); ask for a narrower prefix",
            payload.0.len(),
        ))),
        Err(error) => Reply::Refused(Refusal::Invalid(error.to_string())),
    }
}

/// The refusal of a write that would take a store holding `bytes` past `limit`.
pub(crate) fn over_limit(bytes: u64, limit: usize) -> Reply {
    Reply::Refused(Refusal::Invalid(format!(
        "the store holds {bytes} bytes; this write would take it past its limit of {limit} (FleetOptions::store_limit)"
    )))
}

/// The script's name for an operation.
fn op_name(request: &StoreRequest) -> &'static str {
    match request {
        StoreRequest::Get(_) => "get",
        StoreRequest::Set(..) | StoreRequest::SetFor(..) => "set",
        StoreRequest::Has(_) => "has",
        StoreRequest::Delete(_) => "del",
        StoreRequest::Clear => "clear",
        StoreRequest::CompareAndSet { .. } => "cas",
        StoreRequest::Keys(_) => "keys",
        StoreRequest::Entries(_) => "entries",
    }
}

/// A Redis error, as fleet words them (never with the URL's password).
fn redis_error(error: &redis::RedisError) -> String {
    crate::identify::fleetwide::RedisError::new("redis", error).to_string()
}

fn refused(why: &str) -> Reply {
    Reply::Refused(Refusal::Invalid(format!("the shared store: {why}")))
}
