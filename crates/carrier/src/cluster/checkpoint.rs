//! Session checkpoints: where each shard's gateway session stands, sent to the admiral about
//! once a second so that the replacement of a cluster that crashes resumes its sessions instead
//! of identifying them again.
//!
//! The adapter's shards record into a [`SessionLog`] as they go: the session when it opens
//! (READY) and the sequence of every event the worker has handled (one relaxed atomic store).
//! [`run`] wakes every checkpoint interval, and at once when a session opens, and sends what
//! changed since it last did in one [`Up::Checkpoint`](crate::ipc::proto::Up::Checkpoint).
//! Delivery across a crash is at-least-once: what the worker handled after the last checkpoint
//! is replayed to the replacement, and [`Replay`] tells its handlers which events those may be.

use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::ipc::Ipc;
use crate::ipc::proto::{Payload, ShardSession};

/// The most bytes of opaque state one shard's checkpoint carries (a library's READY, say); more
/// is left out, and that shard's replacement identifies.
pub const MAX_CHECKPOINT_STATE: usize = 64 << 10;

/// Every shard's session as the cluster's worker has handled it.
#[derive(Debug)]
pub(crate) struct SessionLog {
    first: u32,
    slots: Box<[Slot]>,
    /// A session opened: checkpoint it now rather than at the next tick.
    opened: tokio::sync::Notify,
    /// The library hands events to user code without waiting for them, so "handled" is only
    /// "handed over": checkpoints trail one interval behind.
    trailing: AtomicBool,
}

#[derive(Debug, Default)]
struct Slot {
    handled: AtomicU64,
    session: Mutex<Option<Open>>,
    /// Resuming a crashed process's session: what arrives before RESUMED may have been handled
    /// by that process already.
    replaying: AtomicBool,
}

#[derive(Debug, Clone)]
struct Open {
    id: String,
    resume_url: Option<String>,
    state: Payload,
    /// Which opening of this shard's session this is, to tell two sessions apart cheaply.
    number: u64,
}

impl SessionLog {
    pub(crate) fn new(shards: &RangeInclusive<u32>) -> Self {
        let count = shards.clone().count();
        Self {
            first: *shards.start(),
            slots: (0..count).map(|_| Slot::default()).collect(),
            opened: tokio::sync::Notify::new(),
            trailing: AtomicBool::new(false),
        }
    }

    fn slot(&self, shard: u32) -> Option<&Slot> {
        self.slots.get(shard.checked_sub(self.first)? as usize)
    }

    /// `shard` opened (READY) or took over (a resume) session `id`.
    pub(crate) fn open(&self, shard: u32, id: &str, resume_url: Option<&str>, state: Payload) {
        let Some(slot) = self.slot(shard) else { return };
        if state.as_bytes().len() > MAX_CHECKPOINT_STATE {
            tracing::warn!(target: "fleet::shard", shard, bytes = state.as_bytes().len(), "the session's state is too large to checkpoint; a crash would make this shard identify");
            self.ended(shard);
            return;
        }
        {
            let mut session = slot.session.lock().unwrap_or_else(PoisonError::into_inner);
            if session
                .as_ref()
                .is_some_and(|s| s.id == id && s.resume_url.as_deref() == resume_url)
            {
                return;
            }
            let number = session.as_ref().map_or(1, |s| s.number + 1);
            *session = Some(Open {
                id: id.to_owned(),
                resume_url: resume_url.map(str::to_owned),
                state,
                number,
            });
        }
        self.opened.notify_one();
    }

    /// The worker has handled `shard`'s events up to `sequence`.
    pub(crate) fn handled(&self, shard: u32, sequence: u64) {
        if let Some(slot) = self.slot(shard) {
            slot.handled.store(sequence, Ordering::Relaxed);
        }
    }

    /// `shard`'s session ended for good (closed normally, or invalidated).
    pub(crate) fn ended(&self, shard: u32) {
        if let Some(slot) = self.slot(shard) {
            *slot.session.lock().unwrap_or_else(PoisonError::into_inner) = None;
            slot.handled.store(0, Ordering::Relaxed);
        }
    }

    /// `shard`'s session as it stands, state included (for the checkpoint sent with its
    /// readiness).
    pub(crate) fn current(&self, shard: u32) -> Option<ShardSession> {
        let slot = self.slot(shard)?;
        let open = slot
            .session
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()?;
        let sequence = if self.trailing.load(Ordering::Relaxed) {
            0
        } else {
            slot.handled.load(Ordering::Relaxed)
        };
        Some(ShardSession {
            shard,
            session_id: open.id,
            sequence,
            resume_url: open.resume_url,
            state: open.state,
        })
    }

    pub(crate) fn set_trailing(&self) {
        self.trailing.store(true, Ordering::Relaxed);
    }

    pub(crate) fn set_replaying(&self, shard: u32, replaying: bool) {
        if let Some(slot) = self.slot(shard) {
            slot.replaying.store(replaying, Ordering::Relaxed);
        }
    }

    fn replaying(&self, shard: u32) -> bool {
        self.slot(shard)
            .is_some_and(|slot| slot.replaying.load(Ordering::Relaxed))
    }

    /// What changed since `sent`, which it updates: each shard's session and handled sequence
    /// (the one `seen` held, one round ago, when trailing). A session that ended is sent with an
    /// empty id: the admiral forgets it.
    fn changes(&self, sent: &mut [Sent], seen: &mut [u64]) -> Vec<ShardSession> {
        let trailing = self.trailing.load(Ordering::Relaxed);
        let mut out = Vec::new();
        for (index, slot) in self.slots.iter().enumerate() {
            let shard = self.first + index as u32;
            let open = slot
                .session
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            let now = slot.handled.load(Ordering::Relaxed);
            let sequence = if trailing {
                std::mem::replace(&mut seen[index], now).min(now)
            } else {
                now
            };
            let last = &mut sent[index];
            match open {
                None if last.number != 0 => {
                    *last = Sent::default();
                    out.push(ShardSession::new(shard, String::new(), None));
                }
                Some(open) if open.number != last.number => {
                    // A new session: its state goes along, once.
                    let sequence = if trailing { 0 } else { now };
                    *last = Sent {
                        number: open.number,
                        sequence,
                    };
                    seen[index] = now;
                    out.push(ShardSession {
                        shard,
                        session_id: open.id,
                        sequence,
                        resume_url: open.resume_url,
                        state: open.state,
                    });
                }
                Some(open) if sequence != last.sequence => {
                    last.sequence = sequence;
                    out.push(ShardSession {
                        shard,
                        session_id: open.id,
                        sequence,
                        resume_url: open.resume_url,
                        state: Payload::empty(),
                    });
                }
                None | Some(_) => {}
            }
        }
        out
    }
}

impl SessionLog {
    /// Every open session as the admiral last heard of it, its state included: what a cluster
    /// tells an admiral that adopts it.
    fn all(&self, sent: &[Sent]) -> Vec<ShardSession> {
        let mut out = Vec::new();
        for (index, slot) in self.slots.iter().enumerate() {
            let open = slot
                .session
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            if let Some(open) = open.filter(|o| o.number == sent[index].number) {
                out.push(ShardSession {
                    shard: self.first + index as u32,
                    session_id: open.id,
                    sequence: sent[index].sequence,
                    resume_url: open.resume_url,
                    state: open.state,
                });
            }
        }
        out
    }
}

/// What the admiral last heard of one shard.
#[derive(Debug, Clone, Copy, Default)]
struct Sent {
    /// [`Open::number`]; 0: no session.
    number: u64,
    sequence: u64,
}

/// Sends the log's changes to the admiral every `every`, and at once when a session opens, and
/// every session again when the worker rejoins a new admiral; it ends with the cluster.
pub(crate) async fn run(log: Arc<SessionLog>, ipc: Ipc, every: Duration) {
    let mut sent = vec![Sent::default(); log.slots.len()];
    let mut seen = vec![0; log.slots.len()];
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut rejoins = ipc.rejoins();
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = log.opened.notified() => {}
            Ok(()) = rejoins.changed() => {
                // A new admiral knows nothing yet: every session as the last one heard of it,
                // then what changed since.
                let all = log.all(&sent);
                if !all.is_empty() {
                    let _ = ipc.checkpoint(all).await;
                }
            }
        }
        let changes = log.changes(&mut sent, &mut seen);
        // One that cannot be sent (the admiral is gone) is not retried: a worker that rejoins
        // the next admiral sends every session again.
        if !changes.is_empty() {
            let _ = ipc.checkpoint(changes).await;
        }
    }
}

/// Tells a cluster's event handlers which events a crash may have made them see twice: after a
/// cluster process crashes, its replacement resumes each shard's session from the last
/// checkpoint, and Discord replays what came after it, some of which the dead process had
/// handled. Cheap to clone and to ask (one atomic load).
#[derive(Debug, Clone)]
pub struct Replay(pub(crate) Arc<SessionLog>);

impl Replay {
    /// Whether `shard` is replaying a crashed process's session: the event being handled may
    /// have been handled before the crash (it came before the resume's RESUMED). Handlers with
    /// side effects that must not repeat check this, or keep the ids they have acted on.
    #[must_use]
    pub fn is_replaying(&self, shard: u32) -> bool {
        self.0.replaying(shard)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn changes(log: &SessionLog, sent: &mut [Sent], seen: &mut [u64]) -> Vec<(u32, String, u64)> {
        log.changes(sent, seen)
            .into_iter()
            .map(|s| (s.shard, s.session_id, s.sequence))
            .collect()
    }

    #[test]
    fn a_checkpoint_carries_only_what_changed() {
        let log = SessionLog::new(&(4..=6));
        let (mut sent, mut seen) = (vec![Sent::default(); 3], vec![0; 3]);
        assert!(changes(&log, &mut sent, &mut seen).is_empty());
        log.open(4, "a", Some("ws://x"), Payload::encode(&"ready").unwrap());
        log.handled(4, 1);
        log.open(5, "b", None, Payload::empty());
        let first = log.changes(&mut sent, &mut seen);
        assert_eq!(first.len(), 2);
        assert_eq!(first[0].session_id, "a");
        assert_eq!(first[0].sequence, 1);
        assert_eq!(first[0].resume_url.as_deref(), Some("ws://x"));
        assert_eq!(first[0].state.decode::<String>().unwrap(), "ready");
        assert!(
            changes(&log, &mut sent, &mut seen).is_empty(),
            "nothing new"
        );
        log.handled(4, 9);
        let later = log.changes(&mut sent, &mut seen);
        assert_eq!(later.len(), 1);
        assert_eq!((later[0].sequence, later[0].state.as_bytes().len()), (9, 0));
        // The same session opened again is no change; a new one is, and an ended one is sent
        // as forgotten.
        log.open(4, "a", Some("ws://x"), Payload::empty());
        log.open(5, "c", None, Payload::empty());
        log.ended(4);
        log.handled(7, 3); // not this cluster's: ignored
        assert_eq!(
            changes(&log, &mut sent, &mut seen),
            vec![(4, String::new(), 0), (5, "c".to_owned(), 0)]
        );
    }

    #[test]
    fn trailing_checkpoints_stay_one_round_behind() {
        let log = SessionLog::new(&(0..=0));
        log.set_trailing();
        let (mut sent, mut seen) = (vec![Sent::default(); 1], vec![0; 1]);
        log.open(0, "s", None, Payload::empty());
        log.handled(0, 5);
        assert_eq!(
            changes(&log, &mut sent, &mut seen),
            vec![(0, "s".to_owned(), 0)]
        );
        log.handled(0, 8);
        assert_eq!(
            changes(&log, &mut sent, &mut seen),
            vec![(0, "s".to_owned(), 5)]
        );
        assert_eq!(
            changes(&log, &mut sent, &mut seen),
            vec![(0, "s".to_owned(), 8)]
        );
        assert!(changes(&log, &mut sent, &mut seen).is_empty());
    }

    #[test]
    fn replay_is_told_per_shard() {
        let log = Arc::new(SessionLog::new(&(2..=3)));
        let replay = Replay(log.clone());
        log.set_replaying(3, true);
        assert!(replay.is_replaying(3) && !replay.is_replaying(2) && !replay.is_replaying(9));
        log.set_replaying(3, false);
        assert!(!replay.is_replaying(3));
    }
}
