//! The evidence a test reads: counters, rule violations, sessions and event delivery.
//!
//! Plain serialisable data, returned by the handle and by `GET /_mock/stats`, `/_mock/sessions` and
//! `/_mock/events`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A rule of Discord's that a client broke. Real Discord punishes most of these; a fleet in good
/// order commits none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Violation {
    /// Identify before its bucket's interval passed (answered with op 9).
    IdentifyTooEarly,
    /// More than 120 payloads in 60 s on one connection (4008).
    SendRateLimit,
    /// Identify after the daily session budget was spent (all sessions end, token reset).
    SessionLimitExhausted,
    /// Payload over 4096 bytes (4002).
    PayloadTooLarge,
    /// Undecodable payload (4002).
    DecodeError,
    /// Unknown opcode or a payload invalid for its opcode (4001).
    UnknownOpcode,
    /// Payload other than a heartbeat before identify (4003).
    NotAuthenticated,
    /// Second identify or resume on one connection (4005).
    AlreadyAuthenticated,
    /// Resume with a sequence the session never sent (4007).
    InvalidSeq,
    /// Wrong token on the gateway (4004).
    AuthenticationFailed,
    /// Bad shard array, or a total that breaks the large-bot rule (4010).
    InvalidShard,
    /// Shard would hold too many guilds (4011).
    ShardingRequired,
    /// Bad API version (4012).
    InvalidApiVersion,
    /// Unknown or missing intents (4013).
    InvalidIntents,
    /// Privileged intents not enabled (4014).
    DisallowedIntents,
    /// A REST request over a route bucket's limit (429).
    RestRouteRateLimit,
    /// A REST request over the global limit (429).
    RestGlobalRateLimit,
    /// A REST request with a missing or wrong token (401).
    RestUnauthorized,
}

/// Counters since the mock started.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Websocket connections accepted.
    pub connections: u64,
    /// Connections open now.
    pub open_connections: u64,
    /// Identifies accepted (each starts a session and spends the session budget).
    pub identifies: u64,
    /// Identifies accepted per shard id.
    pub identifies_per_shard: BTreeMap<u32, u64>,
    /// Resumes accepted.
    pub resumes: u64,
    /// Resumes refused with op 9.
    pub resumes_refused: u64,
    /// Heartbeats received.
    pub heartbeats: u64,
    /// Rule violations by kind.
    pub violations: BTreeMap<Violation, u64>,
    /// Close codes the mock sent, by code.
    pub closes_sent: BTreeMap<u16, u64>,
    /// Close codes clients sent, by code.
    pub closes_received: BTreeMap<u16, u64>,
    /// Sessions alive now (attached or resumable) per shard id.
    pub sessions_per_shard: BTreeMap<u32, u64>,
    /// Session budget left (as `/gateway/bot` reports).
    pub session_budget_remaining: u32,
    /// Whether the session budget was exhausted and the token reset.
    pub token_reset: bool,
    /// Dispatches sent, replays included.
    pub dispatches_sent: u64,
    /// Events the event source produced.
    pub events_produced: u64,
    /// Presence updates received.
    pub presence_updates: u64,
    /// Guild member requests (op 8) answered.
    pub member_requests: u64,
    /// REST requests served, any status.
    pub rest_requests: u64,
    /// REST 429 responses served.
    pub rest_429s: u64,
    /// Messages created through `POST /channels/{id}/messages`.
    pub messages_created: u64,
    /// Messages created per channel id.
    pub messages_per_channel: BTreeMap<u64, u64>,
}

impl Stats {
    /// Violations of one kind.
    #[must_use]
    pub fn violations_of(&self, kind: Violation) -> u64 {
        self.violations.get(&kind).copied().unwrap_or(0)
    }

    /// Violations of every kind.
    #[must_use]
    pub fn total_violations(&self) -> u64 {
        self.violations.values().sum()
    }
}

/// One gateway session as the mock sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionReport {
    /// Session id (32 hex characters).
    pub session_id: String,
    /// `[shard_id, num_shards]` from identify.
    pub shard: [u32; 2],
    /// Last sequence number sent.
    pub seq: u64,
    /// Highest sequence the client confirmed (heartbeat `d` or resume `seq`).
    pub acked_seq: u64,
    /// Whether a connection holds the session now (otherwise it waits for a resume).
    pub attached: bool,
    /// Resumes of this session.
    pub resumes: u64,
    /// Event-source events sent to this session.
    pub events_sent: u64,
    /// Event-source events the client confirmed.
    pub events_acked: u64,
    /// The presence the client set: its identify's `presence`, replaced by each presence
    /// update (op 3) since.
    pub presence: Option<serde_json::Value>,
    /// The `large_threshold` its identify asked for.
    pub large_threshold: Option<u64>,
}

/// Delivery of the event source's events, judged by what clients confirmed.
///
/// A client confirms receipt of everything up to a sequence number when it heartbeats with that
/// number or resumes from it; an event counts as delivered once any session confirmed it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventReport {
    /// Events produced.
    pub produced: u64,
    /// Distinct events confirmed by at least one session.
    pub delivered: u64,
    /// Events not yet confirmed but still held by a live session, which may yet deliver them.
    pub in_flight: u64,
    /// Events some session was sent, that no live session holds and none confirmed: lost for
    /// good. A client that loses nothing shows 0 here, whenever the event source started.
    pub lost: u64,
    /// Events produced while no session of their shard existed: nobody could have received
    /// them, so they are not counted as lost (nor delivered).
    pub no_session: u64,
    /// Events produced while sessions of their shard existed, none of them with the intent the
    /// event needs (`GUILD_MESSAGES` for a message, `GUILD_MEMBERS` for a join): Discord sends
    /// them to nobody, so they are not counted as lost (nor delivered).
    #[serde(default)]
    pub filtered: u64,
    /// Of the lost, those a session held unconfirmed when its client vanished and never resumed
    /// it (the session expired: a killed process, say). A client that resumes loses none.
    pub lost_abandoned: u64,
    /// Confirmations beyond the first per event (one event handled by two sessions).
    pub duplicates: u64,
    /// Up to 20 ids of lost events, for diagnosis; as strings in JSON, as Discord writes
    /// snowflakes (numbers past 2^53 lose digits in JavaScript and most JSON tooling).
    #[serde(with = "snowflakes")]
    pub lost_ids: Vec<u64>,
}

/// Snowflakes as JSON strings; numbers are read too.
mod snowflakes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(ids: &[u64], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(ids.iter().map(u64::to_string))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<u64>, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Id {
            Text(String),
            Number(u64),
        }
        Vec::<Id>::deserialize(deserializer)?
            .into_iter()
            .map(|id| match id {
                Id::Number(n) => Ok(n),
                Id::Text(s) => s.parse().map_err(serde::de::Error::custom),
            })
            .collect()
    }
}

impl EventReport {
    /// Events produced but not confirmed (in flight, lost, or with no session to go to).
    #[must_use]
    pub fn undelivered(&self) -> u64 {
        self.produced - self.delivered
    }
}
