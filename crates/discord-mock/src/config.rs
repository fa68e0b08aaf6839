//! What the mock Discord looks like and how strict it is. Defaults are Discord's real figures; tests
//! shrink the intervals.

use std::time::Duration;

use crate::protocol::{CloseCode, MAX_GUILDS_PER_SHARD, SEND_LIMIT, intents};

/// A fixed-window REST limit: `limit` requests per `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteLimit {
    /// Requests allowed per window.
    pub limit: u32,
    /// Window length.
    pub window: Duration,
}

/// Configuration of a [`MockDiscord`](crate::MockDiscord). Build it with [`MockConfig::builder`].
#[derive(Debug, Clone)]
#[allow(
    clippy::struct_excessive_bools,
    reason = "independent switches of Discord's behaviour, each set on its own"
)]
pub struct MockConfig {
    /// The one token the mock accepts (with or without a `Bot ` prefix). Default `mock-token`.
    pub token: String,
    /// Guilds the bot is in. Default 1.
    pub guilds: usize,
    /// Shard count `/gateway/bot` recommends. Default `max(1, ceil(guilds / 1000))`.
    pub recommended_shards: u32,
    /// Identify buckets (`session_start_limit.max_concurrency`). Default 1.
    pub max_concurrency: u32,
    /// One identify per bucket per this interval. Default 5 s.
    pub identify_interval: Duration,
    /// An identify this much earlier than `identify_interval` after the previous one is still
    /// accepted, as network jitter would make it on Discord. Default 5 % of `identify_interval`.
    pub identify_tolerance: Duration,
    /// `heartbeat_interval` sent in Hello. Default 41.25 s, the value Discord sends.
    pub heartbeat_interval: Duration,
    /// Payloads one connection may send per 60 s before it is closed with 4008. Default 120,
    /// Discord's limit, plus room for the extra heartbeats a `heartbeat_interval` shorter than
    /// Discord's brings (`max(0, ceil(60 s / heartbeat_interval) - 2)`), so that clients keep
    /// Discord's budget for everything else.
    pub send_limit: usize,
    /// A connection that sends no heartbeat for this long is closed as a zombie.
    /// Default `1.5 × heartbeat_interval + 1 s`.
    pub heartbeat_timeout: Duration,
    /// Close code for zombie connections. Default 4000 (resumable); Discord does not document it.
    pub zombie_close_code: CloseCode,
    /// Identifies allowed per [`session_limit_reset`](Self::session_limit_reset). Default 1000.
    pub session_limit: u32,
    /// Period of the session budget. Default 24 h.
    pub session_limit_reset: Duration,
    /// How long a disconnected session stays resumable. Default 90 s (as measured on Discord).
    pub resume_timeout: Duration,
    /// After op 7, the mock closes the connection itself (4000) if the client has not within this
    /// time. Default 5 s.
    pub reconnect_grace: Duration,
    /// Dispatches kept per session for replay on resume. Default 10 000; older ones make a resume
    /// fail with op 9.
    pub replay_capacity: usize,
    /// Guilds one shard may hold before identify closes with 4011. Default 2500.
    pub max_guilds_per_shard: usize,
    /// Large-bot sharding: the shard total must be a multiple of `max_concurrency` (else 4010).
    /// Default off.
    pub large_bot_sharding: bool,
    /// Privileged intents enabled for the application; others close identify with 4014.
    /// Default all three.
    pub privileged_intents: u64,
    /// Members in each guild besides the bot. Default 4.
    pub members_per_guild: usize,
    /// Text channels in each guild (plus one voice channel). Default 2.
    pub channels_per_guild: usize,
    /// Events the event source produces per guild per second once started. Default 1.0.
    pub event_rate: f64,
    /// Whether the event source runs from the start. Default off.
    pub events_running: bool,
    /// Every n-th produced event is a `GUILD_MEMBER_ADD` instead of a `MESSAGE_CREATE`; 0 never.
    /// Default 10.
    pub member_add_every: u32,
    /// Whether every produced event's snowflake is kept ([`MockDiscord::event_ids`], for
    /// checking that each was handled): 8 bytes an event for as long as the mock runs. Off, the
    /// evidence kept per event is bounded by what the sessions hold. Default on.
    ///
    /// [`MockDiscord::event_ids`]: crate::MockDiscord::event_ids
    pub keep_event_ids: bool,
    /// Global REST limit (per bot). Default 50 per second.
    pub global_limit: RouteLimit,
    /// `POST /channels/{id}/messages` limit per channel. Default 5 per 5 s.
    pub message_limit: RouteLimit,
    /// Limit of every other REST route per top-level resource. Default 30 per second.
    pub route_limit: RouteLimit,
    /// Whether every bucketed REST response carries `X-RateLimit-Scope: user`, not only 429s.
    /// Default on.
    ///
    /// Discord documents the header on 429 responses only. twilight-http 0.18 reads a response's
    /// bucket headers only when the scope header is there (`parse_ratelimit_headers` matches on
    /// it and ignores the others without it): it relies on Discord sending the header on
    /// successful responses too. Against a server that sends it only on 429s, twilight never
    /// learns a bucket and meets every limit as a 429. Turn this off to serve exactly what the
    /// documentation says (a test shows twilight's 429s then).
    pub scope_on_every_response: bool,
}

impl Default for MockConfig {
    fn default() -> Self {
        MockConfigBuilder::default().build()
    }
}

impl MockConfig {
    /// A builder with Discord's defaults.
    pub fn builder() -> MockConfigBuilder {
        MockConfigBuilder::default()
    }

    /// Whether a token (with or without `Bot `) is the configured one.
    #[must_use]
    pub fn token_matches(&self, presented: &str) -> bool {
        let presented = presented.strip_prefix("Bot ").unwrap_or(presented);
        presented == self.token
    }
}

/// Builder of [`MockConfig`]; every setter documents its field on [`MockConfig`].
#[derive(Debug, Clone)]
#[must_use]
pub struct MockConfigBuilder {
    config: MockConfig,
    recommended_shards: Option<u32>,
    heartbeat_timeout: Option<Duration>,
    identify_tolerance: Option<Duration>,
    send_limit: Option<usize>,
}

impl Default for MockConfigBuilder {
    fn default() -> Self {
        let heartbeat_interval = Duration::from_millis(41_250);
        Self {
            config: MockConfig {
                token: "mock-token".to_owned(),
                guilds: 1,
                recommended_shards: 1,
                max_concurrency: 1,
                identify_interval: Duration::from_secs(5),
                identify_tolerance: Duration::ZERO,
                heartbeat_interval,
                heartbeat_timeout: Duration::ZERO,
                send_limit: 0,
                zombie_close_code: CloseCode::UnknownError,
                session_limit: 1000,
                session_limit_reset: Duration::from_hours(24),
                resume_timeout: Duration::from_secs(90),
                reconnect_grace: Duration::from_secs(5),
                replay_capacity: 10_000,
                max_guilds_per_shard: MAX_GUILDS_PER_SHARD,
                large_bot_sharding: false,
                privileged_intents: intents::PRIVILEGED,
                members_per_guild: 4,
                channels_per_guild: 2,
                event_rate: 1.0,
                events_running: false,
                member_add_every: 10,
                keep_event_ids: true,
                global_limit: RouteLimit {
                    limit: 50,
                    window: Duration::from_secs(1),
                },
                message_limit: RouteLimit {
                    limit: 5,
                    window: Duration::from_secs(5),
                },
                route_limit: RouteLimit {
                    limit: 30,
                    window: Duration::from_secs(1),
                },
                scope_on_every_response: true,
            },
            recommended_shards: None,
            heartbeat_timeout: None,
            identify_tolerance: None,
            send_limit: None,
        }
    }
}

macro_rules! setters {
    ($($(#[$doc:meta])* $name:ident: $ty:ty),* $(,)?) => {
        $(
            $(#[$doc])*
            pub fn $name(mut self, value: $ty) -> Self {
                self.config.$name = value;
                self
            }
        )*
    };
}

impl MockConfigBuilder {
    setters! {
        /// See [`MockConfig::guilds`].
        guilds: usize,
        /// See [`MockConfig::max_concurrency`]; values below 1 are raised to 1 at build.
        max_concurrency: u32,
        /// See [`MockConfig::identify_interval`].
        identify_interval: Duration,
        /// See [`MockConfig::heartbeat_interval`].
        heartbeat_interval: Duration,
        /// See [`MockConfig::zombie_close_code`].
        zombie_close_code: CloseCode,
        /// See [`MockConfig::session_limit`].
        session_limit: u32,
        /// See [`MockConfig::session_limit_reset`].
        session_limit_reset: Duration,
        /// See [`MockConfig::resume_timeout`].
        resume_timeout: Duration,
        /// See [`MockConfig::reconnect_grace`].
        reconnect_grace: Duration,
        /// See [`MockConfig::replay_capacity`].
        replay_capacity: usize,
        /// See [`MockConfig::max_guilds_per_shard`].
        max_guilds_per_shard: usize,
        /// See [`MockConfig::large_bot_sharding`].
        large_bot_sharding: bool,
        /// See [`MockConfig::privileged_intents`].
        privileged_intents: u64,
        /// See [`MockConfig::members_per_guild`].
        members_per_guild: usize,
        /// See [`MockConfig::channels_per_guild`].
        channels_per_guild: usize,
        /// See [`MockConfig::event_rate`].
        event_rate: f64,
        /// See [`MockConfig::events_running`].
        events_running: bool,
        /// See [`MockConfig::member_add_every`].
        member_add_every: u32,
        /// See [`MockConfig::keep_event_ids`].
        keep_event_ids: bool,
        /// See [`MockConfig::global_limit`].
        global_limit: RouteLimit,
        /// See [`MockConfig::message_limit`].
        message_limit: RouteLimit,
        /// See [`MockConfig::route_limit`].
        route_limit: RouteLimit,
        /// See [`MockConfig::scope_on_every_response`].
        scope_on_every_response: bool,
    }

    /// See [`MockConfig::token`].
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.config.token = token.into();
        self
    }

    /// See [`MockConfig::recommended_shards`].
    pub fn recommended_shards(mut self, shards: u32) -> Self {
        self.recommended_shards = Some(shards);
        self
    }

    /// See [`MockConfig::identify_tolerance`].
    pub fn identify_tolerance(mut self, tolerance: Duration) -> Self {
        self.identify_tolerance = Some(tolerance);
        self
    }

    /// See [`MockConfig::send_limit`].
    pub fn send_limit(mut self, limit: usize) -> Self {
        self.send_limit = Some(limit);
        self
    }

    /// See [`MockConfig::heartbeat_timeout`].
    pub fn heartbeat_timeout(mut self, timeout: Duration) -> Self {
        self.heartbeat_timeout = Some(timeout);
        self
    }

    /// The configuration, with derived defaults filled in.
    #[must_use]
    pub fn build(self) -> MockConfig {
        let mut config = self.config;
        config.max_concurrency = config.max_concurrency.max(1);
        config.recommended_shards = self
            .recommended_shards
            .unwrap_or_else(|| config.guilds.div_ceil(1000).max(1) as u32)
            .max(1);
        let beats_per_window = crate::protocol::SEND_WINDOW
            .as_millis()
            .div_ceil(config.heartbeat_interval.as_millis().max(1))
            as usize;
        config.send_limit = self
            .send_limit
            .unwrap_or(SEND_LIMIT + beats_per_window.saturating_sub(2));
        config.identify_tolerance = self
            .identify_tolerance
            .unwrap_or(config.identify_interval / 20);
        config.heartbeat_timeout = self
            .heartbeat_timeout
            .unwrap_or(config.heartbeat_interval * 3 / 2 + Duration::from_secs(1));
        config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_discords_figures() {
        let c = MockConfig::default();
        assert_eq!(c.identify_interval, Duration::from_secs(5));
        assert_eq!(c.heartbeat_interval, Duration::from_millis(41_250));
        assert_eq!(c.session_limit, 1000);
        assert_eq!(c.max_concurrency, 1);
        assert_eq!(c.recommended_shards, 1);
        assert_eq!(c.global_limit.limit, 50);
        assert_eq!(c.send_limit, 120);
    }

    #[test]
    fn recommended_shards_follow_guild_count() {
        assert_eq!(
            MockConfig::builder()
                .guilds(2500)
                .build()
                .recommended_shards,
            3
        );
        assert_eq!(
            MockConfig::builder()
                .guilds(10)
                .recommended_shards(8)
                .build()
                .recommended_shards,
            8
        );
    }

    #[test]
    fn short_heartbeats_get_room_in_the_send_limit() {
        let c = MockConfig::builder()
            .heartbeat_interval(Duration::from_millis(500))
            .build();
        assert_eq!(c.send_limit, 120 + 118);
        let c = MockConfig::builder()
            .heartbeat_interval(Duration::from_secs(30))
            .build();
        assert_eq!(c.send_limit, 120);
        let c = MockConfig::builder().send_limit(10).build();
        assert_eq!(c.send_limit, 10);
    }

    #[test]
    fn token_accepts_bot_prefix() {
        let c = MockConfig::default();
        assert!(c.token_matches("mock-token"));
        assert!(c.token_matches("Bot mock-token"));
        assert!(!c.token_matches("Bot other"));
    }
}
