//! IPC between the admiral and its workers: a star over a Unix socket in a private directory.
//!
//! [`frame`] is the framing, [`proto`] the messages, [`client`] the [`Ipc`] handle both sides use,
//! [`link`] a worker's connection. This module owns the wire; it may not know about processes or
//! the lifecycle.

mod answers;
mod asks;
pub mod client;
mod fan_out;
pub mod frame;
pub mod link;
pub(crate) mod outbox;
pub mod proto;
mod subscribe;

pub use asks::STATS_DEADLINE;
pub use client::{CommandHandler, HandlerId, Ipc, IpcError, Message};
pub use fan_out::FanOut;
pub use proto::{AdmiralEvent, Outcome, Payload, Target, Topic, Topics};
pub use subscribe::{AdmiralEvents, EVENT_BUFFER, EventsError};
