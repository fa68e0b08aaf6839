//! The central data store every worker reads and writes through the admiral
//! ([`Request::Store`](crate::ipc::proto::Request::Store)), behind a [`Store`] trait so a shared
//! one (several hosts) can stand where the in-admiral map stands.

use std::collections::HashMap;

use crate::ipc::proto::{Payload, Refusal, Reply, StoreRequest};

/// Answers store operations. The router calls it on its own task: an implementation must not
/// block.
pub(crate) trait Store: Send + std::fmt::Debug {
    /// Carries out one operation and says how it went.
    fn handle(&mut self, request: StoreRequest) -> Reply;
}

/// The default store: a map in the admiral's memory, holding at most `limit` bytes of keys and
/// values.
#[derive(Debug)]
pub(crate) struct MemoryStore {
    entries: HashMap<String, Payload>,
    /// Bytes of keys and values in `entries`.
    bytes: usize,
    limit: usize,
}

impl MemoryStore {
    /// An empty store that refuses writes past `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            entries: HashMap::new(),
            bytes: 0,
            limit,
        }
    }
}

impl Store for MemoryStore {
    fn handle(&mut self, request: StoreRequest) -> Reply {
        match request {
            StoreRequest::Get(key) => Reply::Value(self.entries.get(&key).cloned()),
            StoreRequest::Set(key, value) => {
                let old = self.entries.get(&key).map_or(0, |v| key.len() + v.0.len());
                let after = self.bytes - old + key.len() + value.0.len();
                if after > self.limit {
                    return Reply::Refused(Refusal::Invalid(format!(
                        "the store holds {} bytes; this write would take it past its limit of {} (FleetOptions::store_limit)",
                        self.bytes, self.limit
                    )));
                }
                self.bytes = after;
                self.entries.insert(key, value);
                Reply::Done
            }
            StoreRequest::Has(key) => Reply::Flag(self.entries.contains_key(&key)),
            StoreRequest::Delete(key) => {
                let removed = self.entries.remove(&key);
                if let Some(value) = &removed {
                    self.bytes -= key.len() + value.0.len();
                }
                Reply::Flag(removed.is_some())
            }
            StoreRequest::Clear => {
                self.entries.clear();
                self.bytes = 0;
                Reply::Done
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(store: &mut MemoryStore, key: &str, bytes: usize) -> Reply {
        let value = Payload(vec![0; bytes].into());
        store.handle(StoreRequest::Set(key.into(), value))
    }

    #[test]
    fn reads_what_was_written_and_forgets_what_was_deleted() {
        let mut store = MemoryStore::new(1024);
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
        let mut store = MemoryStore::new(10);
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
}
