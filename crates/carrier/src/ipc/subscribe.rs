//! Subscriptions to the admiral's events ([`Ipc::subscribe`]).
//!
//! A process keeps one subscription with the admiral: the union of the topics its subscribers
//! asked for. Events arrive on the IPC reader and go into one broadcast channel, and each
//! [`AdmiralEvents`] takes the ones of its own topics. A subscriber that falls more than
//! [`EVENT_BUFFER`] events behind is told how many it missed, and goes on with the next.

use std::sync::{Arc, PoisonError};

use tokio::sync::broadcast;

use super::client::{Ipc, IpcError};
use super::proto::{AdmiralEvent, Request, Topic, Topics};

/// Events a process buffers for its slowest subscriber.
pub const EVENT_BUFFER: usize = 1024;

/// The state [`Ipc`] keeps for subscriptions.
#[derive(Debug)]
pub(crate) struct Subscriptions {
    /// `None` once the link to the admiral is gone.
    events: std::sync::Mutex<Option<broadcast::Sender<Arc<AdmiralEvent>>>>,
    /// The topics the admiral sends; held across the request that changes them, so two
    /// subscribers never race each other's union.
    pub(super) topics: tokio::sync::Mutex<Topics>,
}

impl Default for Subscriptions {
    fn default() -> Self {
        Self {
            events: std::sync::Mutex::new(Some(broadcast::Sender::new(EVENT_BUFFER))),
            topics: tokio::sync::Mutex::new(Topics::NONE),
        }
    }
}

/// Why [`AdmiralEvents::recv`] returned no event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EventsError {
    /// This subscriber fell behind and missed this many events; the next call goes on.
    #[error("missed {0} admiral events")]
    Lagged(u64),
    /// The link to the admiral is gone: no more events come.
    #[error("the connection to the admiral is gone")]
    Closed,
}

/// A subscription to the admiral's events of some topics (see [`Ipc::subscribe`]).
#[derive(Debug)]
pub struct AdmiralEvents {
    rx: broadcast::Receiver<Arc<AdmiralEvent>>,
    topics: Topics,
}

impl AdmiralEvents {
    /// The next event of this subscription's topics.
    pub async fn recv(&mut self) -> Result<Arc<AdmiralEvent>, EventsError> {
        loop {
            match self.rx.recv().await {
                Ok(event) if self.topics.contains(event.topic()) => return Ok(event),
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    return Err(EventsError::Lagged(missed));
                }
                Err(broadcast::error::RecvError::Closed) => return Err(EventsError::Closed),
            }
        }
    }

    /// The next event of this subscription's topics if one is waiting, without waiting:
    /// `Ok(None)` when none is. Every event the reader took in before this call is seen.
    pub fn try_recv(&mut self) -> Result<Option<Arc<AdmiralEvent>>, EventsError> {
        loop {
            match self.rx.try_recv() {
                Ok(event) if self.topics.contains(event.topic()) => return Ok(Some(event)),
                Ok(_) => {}
                Err(broadcast::error::TryRecvError::Empty) => return Ok(None),
                Err(broadcast::error::TryRecvError::Lagged(missed)) => {
                    return Err(EventsError::Lagged(missed));
                }
                Err(broadcast::error::TryRecvError::Closed) => return Err(EventsError::Closed),
            }
        }
    }

    /// The topics this subscription hears.
    #[must_use]
    pub fn topics(&self) -> Topics {
        self.topics
    }
}

impl Ipc {
    /// Subscribes to the admiral's events of these topics (eris-fleet's
    /// `broadcastAdmiralEvents`, megane's `allClustersReady`): workers ready and gone, restarts
    /// and reshards, every worker launched, shard progress with the process and generation that
    /// runs the shard, stats snapshots. Events from the moment the admiral answers are heard; a
    /// subscription to [`Topic::Lifecycle`] made after the launch finished holds
    /// [`AdmiralEvent::AllReady`] already when this returns. In
    /// the admiral the same events come from its router directly.
    pub async fn subscribe(&self, topics: &[Topic]) -> Result<AdmiralEvents, IpcError> {
        let wanted = Topics::of(topics);
        let subscriptions = &self.inner.subscriptions;
        let mut current = subscriptions.topics.lock().await;
        // Made before the request, so nothing the admiral sends after answering is missed.
        let rx = subscriptions
            .events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(broadcast::Sender::subscribe)
            .ok_or(IpcError::Disconnected)?;
        let union = current.union(wanted);
        // Asked again even when the union is unchanged: a late subscriber is owed the launch's
        // outcome.
        self.expect_done(Request::Subscribe {
            topics: union.iter().collect(),
        })
        .await?;
        *current = union;
        Ok(AdmiralEvents { rx, topics: wanted })
    }

    /// Hands an admiral event to this process's subscribers.
    pub(crate) fn deliver_event(&self, event: AdmiralEvent) {
        if let Some(events) = self
            .inner
            .subscriptions
            .events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
        {
            let _ = events.send(Arc::new(event));
        }
    }

    /// Ends every subscription: the link is gone.
    pub(crate) fn close_events(&self) {
        self.inner
            .subscriptions
            .events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
    }
}
