//! The admiral: plans shards, spawns and supervises workers, routes IPC.

pub mod lifecycle;
pub mod plan;
