//! REST: the central proxy every process of the fleet sends Discord requests through
//! ([`proxy`], its figures in [`stats`]), and carrier's own few requests to Discord
//! ([`client`]: `GET /gateway/bot`, the TLS setup adapters need).

pub mod client;
mod discord;
pub mod proxy;
pub mod stats;

pub use client::{bot_gateway, install_crypto_provider};
pub use proxy::{
    KEY_HEADER, ProxyConfig, ProxyStartError, ProxyStatsHandle, RestProxy, key_headers,
};
pub use stats::{CallerStats, ProxyStats};
