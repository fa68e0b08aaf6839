//! A faithful local Discord: the gateway websocket (v10, and the deprecated v9 Discord still
//! serves) and the REST routes a bot and its shard manager use, on loopback, with Discord's rules
//! enforced and counted.
//!
//! # Theory of operation
//!
//! The protocol lives in two sans-IO cores. [`gateway::Gateway`] holds every connection and
//! session, the identify buckets, the daily session budget, the event source and the counters; it
//! is fed `(now, input)` (a client frame, a close, a tick of time, a fault to inject) and returns
//! [`gateway::Action`]s (send this text, close with that code, drop the TCP connection).
//! [`rest::handle`] does the same for one HTTP request against a fixed-window rate limiter. Neither
//! reads a clock nor touches a socket, so every close code and limit is unit-tested with fake time.
//!
//! [`MockDiscord`] is the thin I/O layer around them: an axum server on `127.0.0.1` that serves
//! the gateway at `/` (and `/resume`, the advertised `resume_gateway_url`), REST under `/api/v10`
//! (and `/api/v9`), and control routes under `/_mock/`. The core speaks JSON; each connection's
//! [`transport::Transport`] (also sans I/O) turns it into what the client asked for: ETF
//! ([`etf`]), zlib-stream, zstd-stream or per-payload zlib, and decodes the client's frames.
//!
//! Dispatches are filtered by the session's intents as Discord filters them, so a bot's intent
//! bugs show here as they would in production.
//!
//! The world is generated from [`MockConfig`]: `guilds` guilds whose snowflakes spread evenly over
//! any shard total, each with channels, roles and members, so client caches fill. `READY` lists
//! only the guilds of the identifying shard (`(guild_id >> 22) % num_shards`), followed by one
//! `GUILD_CREATE` each. The event source produces `MESSAGE_CREATE` and `GUILD_MEMBER_ADD` events at
//! a configurable rate per guild and routes each to every session of the owning shard.
//!
//! Evidence: [`Stats`] counts identifies, resumes, rule [`Violation`]s, closes and REST 429s;
//! [`EventReport`] tells, from the sequence numbers clients confirm in heartbeats and resumes,
//! how many events were delivered, are in flight, were lost, or were handled twice.
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use discord_mock::{MockConfig, MockDiscord};
//!
//! # async fn demo() -> Result<(), discord_mock::MockError> {
//! let mock = MockDiscord::start(
//!     MockConfig::builder()
//!         .guilds(40)
//!         .recommended_shards(4)
//!         .identify_interval(Duration::from_millis(200))
//!         .heartbeat_interval(Duration::from_millis(500))
//!         .build(),
//! )
//! .await?;
//! // Point a client at mock.gateway_url() and mock.http_url(), then:
//! mock.start_events(Some(2.0)).expect("a rate in range");
//! mock.wait_until(Duration::from_secs(10), "4 identifies", |m| m.stats().identifies == 4).await?;
//! assert_eq!(mock.stats().total_violations(), 0);
//! # Ok(()) }
//! ```

pub mod config;
pub mod etf;
pub mod gateway;
pub mod protocol;
pub mod rest;
mod server;
pub mod stats;
pub mod transport;
pub mod world;

pub use config::{MockConfig, MockConfigBuilder, RouteLimit};
pub use gateway::ControlError;
pub use protocol::CloseCode;
pub use server::{GuildFixture, MockDiscord, MockError, TICK};
pub use stats::{EventReport, SessionReport, Stats, Violation};
