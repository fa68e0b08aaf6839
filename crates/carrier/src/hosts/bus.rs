//! The cross-host bus: bytes between the admirals of one bot, over Redis Pub/Sub.
//!
//! Each admiral subscribes to `bus:h:<host>` (what is meant for it) and `bus:all` (broadcasts,
//! and the "assign" hint that another host changed the assignment). It publishes on a
//! connection of its own, in pipelined batches, in the order the router queued them. `PUBLISH`
//! answering 0 receivers means nobody listens on that host's channel (its admiral is gone, or
//! cut from Redis): a publish that carries a token is then reported undelivered at once, so its
//! call ends as unavailable instead of waiting out its deadline.
//!
//! This file moves bytes only; what they mean (requests, answers, broadcasts) is the router's.
//! Nothing here trusts them: a message over the frame limit is dropped with a warning before
//! it reaches the router.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use tokio::sync::{Notify, mpsc};

use super::agent::HostEvent;

/// Publishes queued on the bus before the router hears "overloaded".
const QUEUE: usize = 4096;
/// Publishes sent in one pipeline at most.
const BATCH: usize = 256;
/// How long one pipeline of publishes may take before its publishes count as undelivered.
const PUBLISH_WITHIN: Duration = Duration::from_secs(2);
/// The message on `bus:all` that says the assignment changed.
pub(crate) const ASSIGN_HINT: &[u8] = b"assign";

/// Where a publish goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Channel {
    /// One host's channel.
    Host(String),
    /// Every host's.
    All,
}

/// One publish the router queued.
#[derive(Debug)]
pub(crate) struct Outgoing {
    channel: Channel,
    body: Vec<u8>,
    /// Reported back ([`HostEvent::Undelivered`]) when no host received it.
    token: Option<u64>,
}

/// The router's end of the bus: queues publishes, never waits.
#[derive(Debug, Clone)]
pub(crate) struct BusOut {
    tx: mpsc::Sender<Outgoing>,
    host: String,
}

/// The agent's end: what the router queued, and the largest message it takes in.
#[derive(Debug)]
pub(crate) struct BusIn {
    rx: mpsc::Receiver<Outgoing>,
    max_frame: usize,
}

impl BusOut {
    /// A bus for host `host`, taking in messages of at most `max_frame` bytes.
    pub(crate) fn new(host: &str, max_frame: usize) -> (Self, BusIn) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let out = Self {
            tx,
            host: host.to_owned(),
        };
        (out, BusIn { rx, max_frame })
    }

    /// This host's id.
    pub(crate) fn host(&self) -> &str {
        &self.host
    }

    /// Queues `body` for `channel`; `token` is reported back if nobody receives it. `false`
    /// when the queue is full or the bus is gone (the router answers for the target itself).
    pub(crate) fn publish(&self, channel: Channel, body: Vec<u8>, token: Option<u64>) -> bool {
        self.tx
            .try_send(Outgoing {
                channel,
                body,
                token,
            })
            .is_ok()
    }
}

impl BusIn {
    /// Runs the bus for `host` of the fleet whose keys start with `prefix`: publishes what the
    /// router queues, hands what arrives to `events`, and wakes `hints` at each "assign" hint.
    /// Reconnects as needed; ends when the router's end is dropped.
    pub(crate) async fn run(
        self,
        client: redis::Client,
        prefix: String,
        host: String,
        events: mpsc::Sender<HostEvent>,
        hints: Arc<Notify>,
    ) {
        let all = format!("{prefix}bus:all");
        let mine = format!("{prefix}bus:h:{host}");
        let listen = listen(
            client.clone(),
            [all.clone(), mine],
            all.clone(),
            self.max_frame,
            events.clone(),
            hints,
        );
        let publish = publish(client, prefix, self.rx, events);
        tokio::select! {
            () = listen => {}
            () = publish => {}
        }
    }
}

/// Subscribes to `channels` and passes each message on, resubscribing after any loss.
async fn listen(
    client: redis::Client,
    channels: [String; 2],
    all: String,
    max_frame: usize,
    events: mpsc::Sender<HostEvent>,
    hints: Arc<Notify>,
) {
    loop {
        let subscribed = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&channels[..]).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        if let Ok(Ok(mut pubsub)) = tokio::time::timeout(Duration::from_secs(5), subscribed).await {
            let mut messages = pubsub.on_message();
            while let Some(message) = messages.next().await {
                let body = message.get_payload_bytes();
                if message.get_channel_name() == all && body == ASSIGN_HINT {
                    hints.notify_one();
                } else if body.len() > max_frame {
                    tracing::warn!(target: "fleet::hosts", bytes = body.len(), max_frame, "dropped a bus message over the frame limit");
                } else if events.send(HostEvent::Bus(body.to_vec())).await.is_err() {
                    return;
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Publishes what the router queued, a pipeline at a time, in order.
async fn publish(
    client: redis::Client,
    prefix: String,
    mut rx: mpsc::Receiver<Outgoing>,
    events: mpsc::Sender<HostEvent>,
) {
    let mut connection: Option<redis::aio::MultiplexedConnection> = None;
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        let receivers = publish_batch(&client, &mut connection, &prefix, &batch).await;
        if receivers.is_none() {
            connection = None;
        }
        for (n, outgoing) in batch.drain(..).enumerate() {
            let delivered = receivers
                .as_ref()
                .and_then(|r| r.get(n))
                .is_some_and(|&count| count > 0);
            if let (Some(token), false) = (outgoing.token, delivered)
                && events.send(HostEvent::Undelivered(token)).await.is_err()
            {
                return;
            }
        }
    }
}

/// One pipeline of publishes: each one's receiver count, or `None` when Redis failed.
async fn publish_batch(
    client: &redis::Client,
    connection: &mut Option<redis::aio::MultiplexedConnection>,
    prefix: &str,
    batch: &[Outgoing],
) -> Option<Vec<i64>> {
    let sent = async {
        if connection.is_none() {
            *connection = Some(client.get_multiplexed_async_connection().await.ok()?);
        }
        let open = connection.as_mut()?;
        let mut pipe = redis::pipe();
        for outgoing in batch {
            let channel = match &outgoing.channel {
                Channel::Host(host) => format!("{prefix}bus:h:{host}"),
                Channel::All => format!("{prefix}bus:all"),
            };
            pipe.cmd("PUBLISH").arg(channel).arg(&outgoing.body[..]);
        }
        pipe.query_async::<Vec<i64>>(open).await.ok()
    };
    tokio::time::timeout(PUBLISH_WITHIN, sent).await.ok()?
}
