//! IPC between the admiral and its workers: a star over a Unix socket in a private directory.
//!
//! [`frame`] is the framing, [`proto`] the messages. This module owns the wire; it may not know
//! about processes or the lifecycle.

pub mod frame;
pub mod proto;
