//! The values every message carries: user payloads, who is addressed, outcomes and log records.

use std::fmt;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Opaque user bytes carried by commands, replies and messages. [`Payload::encode`] and
/// [`Payload::decode`] use `MessagePack` with named fields; any other encoding works as well.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payload(pub Bytes);

impl Payload {
    /// An empty payload.
    #[must_use]
    pub const fn empty() -> Self {
        Self(Bytes::new())
    }

    /// Encodes a value with `MessagePack` (named fields).
    pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Self, PayloadError> {
        Ok(Self(Bytes::from(
            rmp_serde::to_vec_named(value).map_err(|e| PayloadError(e.to_string()))?,
        )))
    }

    /// Decodes a value encoded with [`Payload::encode`].
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, PayloadError> {
        rmp_serde::from_slice(&self.0).map_err(|e| PayloadError(e.to_string()))
    }

    /// The raw bytes.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl From<Vec<u8>> for Payload {
    fn from(bytes: Vec<u8>) -> Self {
        Self(Bytes::from(bytes))
    }
}

impl From<&'static str> for Payload {
    fn from(text: &'static str) -> Self {
        Self(Bytes::from_static(text.as_bytes()))
    }
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Payload({} bytes)", self.0.len())
    }
}

/// A payload could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("payload codec: {0}")]
pub struct PayloadError(pub String);

/// Who sends or receives: the admiral, a cluster by id, or a service by name. The workers among
/// these are the admiral's `WorkerId`s.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Target {
    /// The admiral process.
    Admiral,
    /// A cluster.
    Cluster(u32),
    /// A service.
    Service(String),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Admiral => f.write_str("admiral"),
            Self::Cluster(id) => write!(f, "cluster {id}"),
            Self::Service(name) => write!(f, "service {name:?}"),
        }
    }
}

/// Which workers a fan-out reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Group {
    /// Every cluster.
    Clusters,
    /// Every service.
    Services,
}

/// The result of a command on one target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Outcome {
    /// The handler answered.
    Ok(Payload),
    /// The handler failed with this message.
    Error(String),
    /// No answer within the timeout.
    TimedOut,
    /// The target is not running (dead, failed, not started, or shutting down).
    Unavailable,
}

/// A worker's log record sent with [`Up::Log`](super::Up::Log).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRecord {
    /// Severity.
    pub level: LogLevel,
    /// The message.
    pub message: String,
}

impl LogRecord {
    /// Logs the record through `tracing` (target `fleet::worker`), tagged with who sent it.
    pub(crate) fn emit(&self, worker: &Target) {
        let (worker, message) = (worker.to_string(), &self.message);
        match self.level {
            LogLevel::Debug => tracing::debug!(target: "fleet::worker", %worker, "{message}"),
            LogLevel::Info => tracing::info!(target: "fleet::worker", %worker, "{message}"),
            LogLevel::Warn => tracing::warn!(target: "fleet::worker", %worker, "{message}"),
            LogLevel::Error => tracing::error!(target: "fleet::worker", %worker, "{message}"),
        }
    }
}

/// Log severity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum LogLevel {
    /// Debug.
    Debug,
    /// Info.
    Info,
    /// Warning.
    Warn,
    /// Error.
    Error,
}
