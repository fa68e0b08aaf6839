//! The central data store every worker reads and writes through the admiral
//! ([`Request::Store`](crate::ipc::proto::Request::Store)), behind a [`Store`] trait so a shared
//! one (several hosts) can stand where the in-admiral map stands.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use tokio::time::Instant;

use crate::ipc::proto::{Payload, Refusal, Reply, StoreRequest};

impl super::Router {
    /// One store operation: answered by the admiral's own store, or (on several hosts) by the
    /// one in Redis, whose answer comes back through the inbox.
    pub(super) fn store(&mut self, waiter: super::Waiter, operation: StoreRequest) {
        let Some(shared) = &self.config.host_store else {
            let reply = self.store.handle(operation);
            self.reply(waiter, reply);
            return;
        };
        match shared.handle(operation) {
            Ok(answer) => {
                let inbox = self.inbox.clone();
                tokio::spawn(async move {
                    let reply = answer.await.unwrap_or_else(|_| {
                        Reply::Refused(Refusal::Invalid("the shared store stopped".into()))
                    });
                    let _ = inbox.send(super::Inbox::Stored { waiter, reply }).await;
                });
            }
            Err(reply) => self.reply(waiter, reply),
        }
    }
}

/// Answers store operations. The router calls it on its own task: an implementation must not
/// block.
pub(crate) trait Store: Send + std::fmt::Debug {
    /// Carries out one operation and says how it went.
    fn handle(&mut self, request: StoreRequest) -> Reply;

    /// Everything it holds, encoded, if it changed since the last snapshot (or `always`): what
    /// the next admiral of a fleet whose workers outlive it starts from. `None` by default.
    fn snapshot(&mut self, always: bool) -> Option<Vec<u8>> {
        let _ = always;
        None
    }

    /// Takes back what a [`snapshot`](Self::snapshot) held; how many keys. Nothing by default.
    fn restore(&mut self, snapshot: &[u8]) -> Result<usize, String> {
        let _ = snapshot;
        Ok(0)
    }
}

/// What a [`MemoryStore`] snapshot holds: each key, its value, and the milliseconds left of its
/// time to live, if it has one.
type Snapshot = Vec<(String, Payload, Option<u64>)>;

/// The default store: a map in the admiral's memory, holding at most `limit` bytes of keys and
/// values.
#[derive(Debug)]
pub(crate) struct MemoryStore {
    entries: HashMap<String, Payload>,
    /// Bytes of keys and values in `entries`.
    bytes: usize,
    limit: usize,
    /// When keys written with a time to live expire, soonest first (a key rewritten since has a
    /// stale entry here, recognised by `expiries`).
    deadlines: BTreeSet<(Instant, String)>,
    expiries: HashMap<String, Instant>,
    /// The most bytes one answer may carry (a frame's limit).
    max_answer: usize,
    /// Something changed since the last snapshot.
    dirty: bool,
}

/// The longest time to live a key gets.
const MAX_TTL: Duration = Duration::from_hours(24);

impl MemoryStore {
    /// An empty store that refuses writes past `limit` bytes and answers of more than
    /// `max_answer` bytes.
    pub fn new(limit: usize, max_answer: usize) -> Self {
        Self {
            entries: HashMap::new(),
            bytes: 0,
            limit,
            deadlines: BTreeSet::new(),
            expiries: HashMap::new(),
            max_answer,
            dirty: false,
        }
    }

    /// Forgets the keys whose time to live ran out.
    fn expire(&mut self, now: Instant) {
        while let Some((at, key)) = self.deadlines.first().cloned() {
            if at > now {
                break;
            }
            self.deadlines.pop_first();
            if self.expiries.get(&key) == Some(&at) {
                self.expiries.remove(&key);
                self.remove(&key);
            }
        }
    }

    fn remove(&mut self, key: &str) -> Option<Payload> {
        let removed = self.entries.remove(key)?;
        self.dirty = true;
        self.bytes -= key.len() + removed.0.len();
        if let Some(at) = self.expiries.remove(key) {
            self.deadlines.remove(&(at, key.to_owned()));
        }
        Some(removed)
    }

    /// Writes `key`, within the limit; with `ttl`, it expires then (without, it never does).
    fn write(&mut self, key: String, value: Payload, ttl: Option<Duration>, now: Instant) -> Reply {
        let old = self.entries.get(&key).map_or(0, |v| key.len() + v.0.len());
        let after = self.bytes - old + key.len() + value.0.len();
        if after > self.limit {
            return crate::hosts::store::over_limit(self.bytes as u64, self.limit);
        }
        if let Some(at) = self.expiries.remove(&key) {
            self.deadlines.remove(&(at, key.clone()));
        }
        if let Some(ttl) = ttl {
            let at = now + ttl.min(MAX_TTL);
            self.deadlines.insert((at, key.clone()));
            self.expiries.insert(key.clone(), at);
        }
        self.bytes = after;
        self.entries.insert(key, value);
        self.dirty = true;
        Reply::Done
    }

    fn answer<T: serde::Serialize>(&self, value: &T) -> Reply {
        crate::hosts::store::answer_within(value, self.max_answer)
    }
}

impl Store for MemoryStore {
    fn handle(&mut self, request: StoreRequest) -> Reply {
        let now = Instant::now();
        self.expire(now);
        match request {
            StoreRequest::Get(key) => Reply::Value(self.entries.get(&key).cloned()),
            StoreRequest::Set(key, value) => self.write(key, value, None, now),
            StoreRequest::SetFor(key, value, ttl_ms) => {
                self.write(key, value, Some(Duration::from_millis(ttl_ms)), now)
            }
            StoreRequest::Has(key) => Reply::Flag(self.entries.contains_key(&key)),
            StoreRequest::Delete(key) => Reply::Flag(self.remove(&key).is_some()),
            StoreRequest::Clear => {
                self.dirty = true;
                self.entries.clear();
                self.deadlines.clear();
                self.expiries.clear();
                self.bytes = 0;
                Reply::Done
            }
            StoreRequest::CompareAndSet {
                key,
                expected,
                value,
            } => {
                if self.entries.get(&key) != expected.as_ref() {
                    return Reply::Flag(false);
                }
                match value {
                    Some(value) => match self.write(key, value, None, now) {
                        Reply::Done => Reply::Flag(true),
                        refused => refused,
                    },
                    None => Reply::Flag(self.remove(&key).is_some() || expected.is_none()),
                }
            }
            StoreRequest::Keys(prefix) => {
                let mut keys: Vec<&String> = self
                    .entries
                    .keys()
                    .filter(|k| k.starts_with(&prefix))
                    .collect();
                keys.sort_unstable();
                self.answer(&keys)
            }
            StoreRequest::Entries(prefix) => {
                let mut entries: Vec<(&String, &Payload)> = self
                    .entries
                    .iter()
                    .filter(|(k, _)| k.starts_with(&prefix))
                    .collect();
                entries.sort_unstable_by_key(|(k, _)| *k);
                self.answer(&entries)
            }
        }
    }

    fn snapshot(&mut self, always: bool) -> Option<Vec<u8>> {
        if !self.dirty && !always {
            return None;
        }
        let now = Instant::now();
        self.expire(now);
        self.dirty = false;
        let snapshot: Snapshot = self
            .entries
            .iter()
            .map(|(key, value)| {
                let left = self.expiries.get(key).map(|at| {
                    u64::try_from(at.saturating_duration_since(now).as_millis()).unwrap_or(u64::MAX)
                });
                (key.clone(), value.clone(), left)
            })
            .collect();
        rmp_serde::to_vec(&snapshot).ok()
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<usize, String> {
        let snapshot: Snapshot = rmp_serde::from_slice(snapshot).map_err(|e| e.to_string())?;
        let now = Instant::now();
        let mut restored = 0;
        for (key, value, left) in snapshot {
            let ttl = left.map(Duration::from_millis);
            if matches!(self.write(key, value, ttl, now), Reply::Done) {
                restored += 1;
            }
        }
        self.dirty = false;
        Ok(restored)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipc::proto::Outcome;

    fn set(store: &mut MemoryStore, key: &str, bytes: usize) -> Reply {
        let value = Payload(vec![0; bytes].into());
        store.handle(StoreRequest::Set(key.into(), value))
    }

    #[test]
    fn a_snapshot_is_taken_only_after_a_change_and_restores_keys_and_times_to_live() {
        let mut store = MemoryStore::new(1024, 1 << 20);
        assert!(store.snapshot(false).is_none(), "nothing changed");
        assert!(matches!(set(&mut store, "kept", 3), Reply::Done));
        let timed = StoreRequest::SetFor("timed".into(), Payload::from("x"), 60_000);
        assert!(matches!(store.handle(timed), Reply::Done));
        let snapshot = store.snapshot(false).expect("it changed");
        assert!(store.snapshot(false).is_none(), "taken already");
        assert!(store.snapshot(true).is_some(), "unless asked for anyway");

        let mut next = MemoryStore::new(1024, 1 << 20);
        assert_eq!(next.restore(&snapshot), Ok(2));
        assert!(matches!(
            next.handle(StoreRequest::Get("kept".into())),
            Reply::Value(Some(v)) if v.0.len() == 3
        ));
        let left = next.expiries.get("timed").expect("still timed");
        assert!(left.saturating_duration_since(Instant::now()) > Duration::from_secs(50));
        assert!(next.restore(b"not a snapshot").is_err());
    }

    #[test]
    fn reads_what_was_written_and_forgets_what_was_deleted() {
        let mut store = MemoryStore::new(1024, 1 << 20);
        assert!(matches!(set(&mut store, "a", 3), Reply::Done));
        let got = store.handle(StoreRequest::Get("a".into()));
        assert!(matches!(got, Reply::Value(Some(v)) if v.0.len() == 3));
        assert!(matches!(
            store.handle(StoreRequest::Has("a".into())),
            Reply::Flag(true)
        ));
        assert!(matches!(
            store.handle(StoreRequest::Delete("a".into())),
            Reply::Flag(true)
        ));
        assert!(matches!(
            store.handle(StoreRequest::Delete("a".into())),
            Reply::Flag(false)
        ));
        assert!(matches!(
            store.handle(StoreRequest::Get("a".into())),
            Reply::Value(None)
        ));
        assert_eq!(store.bytes, 0);
    }

    #[test]
    fn the_limit_counts_keys_and_values_and_overwrites_only_their_growth() {
        let mut store = MemoryStore::new(10, 1 << 20);
        assert!(matches!(set(&mut store, "k", 9), Reply::Done));
        // Replacing the value with one as large fits; one byte more does not.
        assert!(matches!(set(&mut store, "k", 9), Reply::Done));
        assert!(matches!(
            set(&mut store, "k", 10),
            Reply::Refused(Refusal::Invalid(_))
        ));
        assert!(matches!(
            set(&mut store, "j", 0),
            Reply::Refused(Refusal::Invalid(_))
        ));
        assert_eq!(store.bytes, 10);
        assert!(matches!(store.handle(StoreRequest::Clear), Reply::Done));
        assert_eq!(store.bytes, 0);
        assert!(matches!(set(&mut store, "j", 0), Reply::Done));
    }

    fn value(text: &str) -> Payload {
        Payload::from(text.as_bytes().to_vec())
    }

    #[test]
    fn compare_and_set_writes_only_over_what_was_expected() {
        let mut store = MemoryStore::new(1024, 1 << 20);
        let cas = |store: &mut MemoryStore, expected: Option<&str>, new: Option<&str>| {
            store.handle(StoreRequest::CompareAndSet {
                key: "lock".into(),
                expected: expected.map(value),
                value: new.map(value),
            })
        };
        // Absent expected: the first taker wins, the second does not.
        assert!(matches!(
            cas(&mut store, None, Some("a")),
            Reply::Flag(true)
        ));
        assert!(matches!(
            cas(&mut store, None, Some("b")),
            Reply::Flag(false)
        ));
        assert!(matches!(
            cas(&mut store, Some("b"), Some("c")),
            Reply::Flag(false)
        ));
        assert!(matches!(
            cas(&mut store, Some("a"), Some("c")),
            Reply::Flag(true)
        ));
        // Released only by who holds it.
        assert!(matches!(
            cas(&mut store, Some("a"), None),
            Reply::Flag(false)
        ));
        assert!(matches!(
            cas(&mut store, Some("c"), None),
            Reply::Flag(true)
        ));
        assert!(matches!(
            store.handle(StoreRequest::Has("lock".into())),
            Reply::Flag(false)
        ));
        assert_eq!(store.bytes, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_with_a_time_to_live_expires_then_and_a_rewrite_keeps_it() {
        let mut store = MemoryStore::new(1024, 1 << 20);
        let get = |store: &mut MemoryStore, key: &str| match store
            .handle(StoreRequest::Get(key.into()))
        {
            Reply::Value(v) => v,
            other => panic!("{other:?}"),
        };
        store.handle(StoreRequest::SetFor("a".into(), value("1"), 1_000));
        store.handle(StoreRequest::SetFor("b".into(), value("2"), 1_000));
        tokio::time::advance(Duration::from_millis(600)).await;
        // Rewritten without a time to live: it stays.
        store.handle(StoreRequest::Set("b".into(), value("3")));
        tokio::time::advance(Duration::from_millis(399)).await;
        assert_eq!(get(&mut store, "a"), Some(value("1")));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(get(&mut store, "a"), None);
        tokio::time::advance(Duration::from_hours(1)).await;
        assert_eq!(get(&mut store, "b"), Some(value("3")));
        assert_eq!(store.bytes, 2);
        // A time to live past a day is a day.
        store.handle(StoreRequest::SetFor("c".into(), value("4"), u64::MAX));
        tokio::time::advance(Duration::from_hours(24)).await;
        assert_eq!(get(&mut store, "c"), None);
    }

    #[test]
    fn keys_and_entries_by_prefix_come_sorted_and_never_past_a_frame() {
        let mut store = MemoryStore::new(1 << 20, 64);
        for key in ["user:2", "user:1", "guild:1"] {
            store.handle(StoreRequest::Set(key.into(), value("x")));
        }
        let Reply::Outcome(Outcome::Ok(keys)) = store.handle(StoreRequest::Keys("user:".into()))
        else {
            panic!("keys answered");
        };
        assert_eq!(keys.decode::<Vec<String>>().unwrap(), ["user:1", "user:2"]);
        let Reply::Outcome(Outcome::Ok(entries)) =
            store.handle(StoreRequest::Entries("guild:".into()))
        else {
            panic!("entries answered");
        };
        assert_eq!(
            entries.decode::<Vec<(String, Payload)>>().unwrap(),
            [("guild:1".to_owned(), value("x"))]
        );
        store.handle(StoreRequest::Set(
            "big".into(),
            Payload(vec![0; 100].into()),
        ));
        assert!(matches!(
            store.handle(StoreRequest::Entries(String::new())),
            Reply::Refused(Refusal::Invalid(m)) if m.contains("narrower prefix")
        ));
    }
}
