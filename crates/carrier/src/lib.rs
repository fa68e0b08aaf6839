//! carrier: the library-agnostic core of fleet.
//!
//! # Theory of operation
//!
//! One process, the admiral, plans shards ([`admiral::plan`]), spawns worker processes (clusters
//! that run gateway shards with a Discord library through an adapter, and services that run none),
//! routes IPC between them ([`ipc`]), paces every identify in the fleet through one queue
//! ([`identify`]), and supervises their lifecycle ([`admiral::lifecycle`]). It knows no Discord
//! library: adapters such as `fleet-twilight` and `fleet-serenity` plug one in.

pub mod admiral;
pub mod identify;
pub mod ipc;
