//! carrier: the library-agnostic core of fleet.
//!
//! # Theory of operation
//!
//! One binary is both admiral and worker. The user's `main` builds a [`Fleet`] (options, an
//! adapter's [`ClusterRunner`], services) and calls [`Fleet::run`]. In the process the user
//! started, that is the admiral: it asks Discord for `/gateway/bot`, plans shards
//! ([`admiral::plan`]), and spawns copies of the executable with their role in the environment.
//! In those copies the same call joins the fleet over IPC and runs the assigned worker: a service
//! (user code through [`Service`]) or a cluster (a range of shards run by the adapter).
//!
//! The admiral is one actor that owns the worker lifecycle ([`admiral::lifecycle`], a pure state
//! machine), the IPC router, the central store and the identify queue ([`identify`]). Workers talk
//! through an [`Ipc`] handle: every request has a random correlation id and a timeout, fan-outs
//! return one [`Outcome`] per target, and a dead worker fails its pending requests at once. IPC
//! frames are length-prefixed `MessagePack` over a Unix socket in a private directory; user
//! payloads are opaque bytes the router forwards without decoding ([`ipc::proto`] documents the
//! wire protocol). The router and its connections run on a thread of their own; a frame goes
//! from a connection's reader task to the router and straight into the target connection's
//! outbox, which writes it with a non-blocking write (the frames of one router turn in one
//! write), so a round trip wakes as few threads as the processes it crosses.
//!
//! The admiral also runs the central REST proxy ([`rest::proxy`]): one loopback endpoint with one
//! rate-limit state that every cluster's HTTP client goes through. Clusters answer cache lookups
//! for each other ([`Ipc::fetch_guild`] and friends), routed to the cluster owning the guild.
//!
//! Workers are replaced without dropping events: the lifecycle ([`admiral::lifecycle`]) starts a
//! replacement beside the old process and swaps only once it is ready. A cluster hands its
//! gateway sessions and cached guilds to its replacement (no identify, no event lost or handled
//! twice); a reshard starts a whole new generation in standby and switches over once all of it is
//! ready, the old generation's user code stopping a moment later. A worker that stops
//! answering application heartbeats is treated as crashed.
//!
//! Nothing is lost when a process dies either. A crashed cluster's replacement resumes the
//! sessions it checkpointed to the admiral. With [`FleetOptions::admiral_grace`], workers also
//! outlive the admiral: they serve on, queue what they send, and rejoin the next admiral on the
//! fleet's stable directory once it proves it knows the secret; that admiral adopts them
//! (`admiral/router/adoption.rs`) and launches only what nobody adopted, which is also how the
//! admiral re-executes itself in place ([`AdmiralHandle::restart_self`]).
//!
//! Everything another process sends is hostile until proven otherwise: a connection reads small
//! frames only until its hello is accepted, unproven connections are capped, timeouts, request
//! counts, the store and reshards are bounded, and the REST proxy serves only keyed fleet
//! processes. Panics in user code are caught where they happen and reported ([`panics`]).
//!
//! carrier knows no Discord library: `fleet-twilight` and `fleet-serenity` plug one in, and
//! any other adapter can implement [`ClusterRunner`]. The cluster protocol is carrier's
//! ([`cluster`]): an adapter starts its user's worker and implements [`cluster::Shards`] over its
//! library's shards (start them, resuming given sessions; close them resumably and return their
//! sessions; close them for good), and carrier drives the rest.
//!
//! # Example
//!
//! ```no_run
//! use carrier::{Fleet, FleetOptions, Payload, Service, ServiceContext, Target};
//! use carrier::worker::BoxError;
//!
//! struct Echo;
//!
//! impl Service for Echo {
//!     async fn start(_: ServiceContext) -> Result<Self, BoxError> {
//!         Ok(Echo)
//!     }
//!     async fn handle_command(&self, _: Target, payload: Payload) -> Result<Payload, String> {
//!         Ok(payload)
//!     }
//! }
//!
//! # async fn demo(runner: std::sync::Arc<dyn carrier::ClusterRunner>) -> Result<(), carrier::FleetError> {
//! let fleet = Fleet::new(FleetOptions::new("token"), runner).service::<Echo>("echo");
//! if let Some(admiral) = fleet.run().await? {
//!     let answer = admiral.ipc().service_command("echo", Payload::from("hi")).await;
//!     admiral.shutdown().await;
//! }
//! # Ok(()) }
//! ```

pub mod admiral;
pub mod cluster;
mod fleet;
pub mod hosts;
pub mod identify;
mod ids;
pub mod ipc;
pub mod logging;
pub mod panics;
pub mod progress;
pub mod rest;
mod secret;
pub mod stats;
pub mod worker;

pub use admiral::{AdmiralHandle, FleetEvent, WorkerId};
pub use fleet::{DISCORD_REST_URL, Fleet, FleetError, FleetOptions, identify_spacing};
pub use ipc::client::FetchHandler;
pub use ipc::proto::{
    ClusterAssignment, DeployPlan, DeployReport, Fetch, Group, LogLevel, Outcome, Payload,
    RestartMode, ShardEvent, Status, Target, Topology,
};
pub use ipc::{AdmiralEvent, AdmiralEvents, EventsError, Ipc, IpcError, Message, Topic};
pub use secret::Secret;
pub use stats::FleetStats;
pub use worker::{
    BotGateway, ClusterContext, ClusterRunner, Service, ServiceContext, ServiceOptions,
};

/// A boxed error from user or adapter code.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Whether this process was started by an admiral as one of its workers. Code before
/// [`Fleet::run`] runs in every process; use this to do admiral-only setup.
#[must_use]
pub fn is_worker() -> bool {
    std::env::var_os(ipc::link::ENV_SOCKET).is_some()
}
