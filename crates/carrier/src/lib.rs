//! carrier: the library-agnostic core of fleet.
//!
//! # Theory of operation
//!
//! One process, the admiral, plans shards, spawns worker processes (clusters that run gateway
//! shards with a Discord library through an adapter, and services that run none), routes IPC
//! between them, paces every identify in the fleet through one queue, and supervises restarts,
//! reshards and shutdown. It knows no Discord library: adapters such as `fleet-twilight` and
//! `fleet-serenity` plug one in. See the repository's `DESIGN.md` summary in the README.
//!
//! This crate is being built up issue by issue; it currently holds no public items.
