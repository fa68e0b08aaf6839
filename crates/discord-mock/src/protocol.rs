//! Gateway wire vocabulary: opcodes, close codes, intents and the payload envelope.
//!
//! Plain data with no I/O. Every constant names the part of Discord's documentation it comes from.

use serde::Serialize;
use serde_json::value::RawValue;

/// Gateway opcodes (Gateway › Opcodes and Status Codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum OpCode {
    /// 0: an event was dispatched (server → client).
    Dispatch,
    /// 1: heartbeat, both directions.
    Heartbeat,
    /// 2: start a new session.
    Identify,
    /// 3: update the client's presence.
    PresenceUpdate,
    /// 4: join, move or leave voice channels.
    VoiceStateUpdate,
    /// 6: resume a previous session.
    Resume,
    /// 7: the client should reconnect and resume (server → client).
    Reconnect,
    /// 8: request members of a guild.
    RequestGuildMembers,
    /// 9: the session was invalidated (server → client); `d` says whether it may be resumed.
    InvalidSession,
    /// 10: first frame of every connection (server → client).
    Hello,
    /// 11: heartbeat acknowledged (server → client).
    HeartbeatAck,
    /// 31: request the soundboard sounds of guilds.
    RequestSoundboardSounds,
    /// 43: request channel info (status, voice start time).
    RequestChannelInfo,
}

impl OpCode {
    /// The opcode for a number, if Discord documents it.
    #[must_use]
    pub const fn from_u8(op: u8) -> Option<Self> {
        Some(match op {
            0 => Self::Dispatch,
            1 => Self::Heartbeat,
            2 => Self::Identify,
            3 => Self::PresenceUpdate,
            4 => Self::VoiceStateUpdate,
            6 => Self::Resume,
            7 => Self::Reconnect,
            8 => Self::RequestGuildMembers,
            9 => Self::InvalidSession,
            10 => Self::Hello,
            11 => Self::HeartbeatAck,
            31 => Self::RequestSoundboardSounds,
            43 => Self::RequestChannelInfo,
            _ => return None,
        })
    }

    /// The opcode's number on the wire.
    #[must_use]
    pub const fn as_u8(self) -> u8 {
        match self {
            Self::Dispatch => 0,
            Self::Heartbeat => 1,
            Self::Identify => 2,
            Self::PresenceUpdate => 3,
            Self::VoiceStateUpdate => 4,
            Self::Resume => 6,
            Self::Reconnect => 7,
            Self::RequestGuildMembers => 8,
            Self::InvalidSession => 9,
            Self::Hello => 10,
            Self::HeartbeatAck => 11,
            Self::RequestSoundboardSounds => 31,
            Self::RequestChannelInfo => 43,
        }
    }

    /// Whether a client may send this opcode.
    #[must_use]
    pub const fn is_client_op(self) -> bool {
        matches!(
            self,
            Self::Heartbeat
                | Self::Identify
                | Self::PresenceUpdate
                | Self::VoiceStateUpdate
                | Self::Resume
                | Self::RequestGuildMembers
                | Self::RequestSoundboardSounds
                | Self::RequestChannelInfo
        )
    }
}

/// Gateway close codes (Gateway › Opcodes and Status Codes › Gateway Close Event Codes), plus the
/// two websocket codes a client uses to end its session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(into = "u16", try_from = "u16")]
#[non_exhaustive]
pub enum CloseCode {
    /// 1000: normal closure; from a client it ends the session.
    Normal,
    /// 1001: going away; from a client it ends the session.
    GoingAway,
    /// 4000: unknown error; reconnect and resume.
    UnknownError,
    /// 4001: unknown opcode, or a payload invalid for its opcode.
    UnknownOpcode,
    /// 4002: undecodable payload, or one over 4096 bytes.
    DecodeError,
    /// 4003: a payload other than a heartbeat before identifying.
    NotAuthenticated,
    /// 4004: the token is wrong (fatal).
    AuthenticationFailed,
    /// 4005: a second identify or resume on one connection.
    AlreadyAuthenticated,
    /// 4007: resume with a sequence the session never sent.
    InvalidSeq,
    /// 4008: more than 120 payloads in 60 s on one connection.
    RateLimited,
    /// 4009: the session timed out.
    SessionTimedOut,
    /// 4010: invalid shard array (fatal).
    InvalidShard,
    /// 4011: the shard would hold too many guilds (fatal).
    ShardingRequired,
    /// 4012: invalid API version (fatal).
    InvalidApiVersion,
    /// 4013: invalid intents (fatal).
    InvalidIntents,
    /// 4014: privileged intents not enabled for the application (fatal).
    DisallowedIntents,
}

impl CloseCode {
    /// Every code, in numeric order.
    pub const ALL: [Self; 16] = [
        Self::Normal,
        Self::GoingAway,
        Self::UnknownError,
        Self::UnknownOpcode,
        Self::DecodeError,
        Self::NotAuthenticated,
        Self::AuthenticationFailed,
        Self::AlreadyAuthenticated,
        Self::InvalidSeq,
        Self::RateLimited,
        Self::SessionTimedOut,
        Self::InvalidShard,
        Self::ShardingRequired,
        Self::InvalidApiVersion,
        Self::InvalidIntents,
        Self::DisallowedIntents,
    ];

    /// The code on the wire.
    #[must_use]
    pub const fn as_u16(self) -> u16 {
        match self {
            Self::Normal => 1000,
            Self::GoingAway => 1001,
            Self::UnknownError => 4000,
            Self::UnknownOpcode => 4001,
            Self::DecodeError => 4002,
            Self::NotAuthenticated => 4003,
            Self::AuthenticationFailed => 4004,
            Self::AlreadyAuthenticated => 4005,
            Self::InvalidSeq => 4007,
            Self::RateLimited => 4008,
            Self::SessionTimedOut => 4009,
            Self::InvalidShard => 4010,
            Self::ShardingRequired => 4011,
            Self::InvalidApiVersion => 4012,
            Self::InvalidIntents => 4013,
            Self::DisallowedIntents => 4014,
        }
    }

    /// The code for a number, if it is one of ours.
    #[must_use]
    pub const fn from_u16(code: u16) -> Option<Self> {
        let mut i = 0;
        while i < Self::ALL.len() {
            if Self::ALL[i].as_u16() == code {
                return Some(Self::ALL[i]);
            }
            i += 1;
        }
        None
    }

    /// Whether Discord documents that a client may reconnect after this code ("Reconnect: true").
    #[must_use]
    pub const fn can_reconnect(self) -> bool {
        !matches!(
            self,
            Self::AuthenticationFailed
                | Self::InvalidShard
                | Self::ShardingRequired
                | Self::InvalidApiVersion
                | Self::InvalidIntents
                | Self::DisallowedIntents
        )
    }

    /// Whether the mock keeps the session resumable when *it* closes with this code.
    ///
    /// 4003, 4007 and 4009 tell the client to start a new session, and fatal codes end everything,
    /// so those delete the session; 4000, 4001, 4002, 4005 and 4008 keep it (Part 1b of the
    /// protocol notes), as do the websocket codes when the server sends them.
    #[must_use]
    pub const fn keeps_session(self) -> bool {
        self.can_reconnect()
            && !matches!(
                self,
                Self::NotAuthenticated | Self::InvalidSeq | Self::SessionTimedOut
            )
    }

    /// Short reason text sent in the close frame.
    #[must_use]
    pub const fn reason(self) -> &'static str {
        match self {
            Self::Normal => "Normal closure",
            Self::GoingAway => "Going away",
            Self::UnknownError => "Unknown error.",
            Self::UnknownOpcode => "Unknown opcode.",
            Self::DecodeError => "Error while decoding payload.",
            Self::NotAuthenticated => "Not authenticated.",
            Self::AuthenticationFailed => "Authentication failed.",
            Self::AlreadyAuthenticated => "Already authenticated.",
            Self::InvalidSeq => "Invalid seq.",
            Self::RateLimited => "Rate limited.",
            Self::SessionTimedOut => "Session timed out.",
            Self::InvalidShard => "Invalid shard.",
            Self::ShardingRequired => "Sharding required.",
            Self::InvalidApiVersion => "Invalid API version.",
            Self::InvalidIntents => "Invalid intent(s).",
            Self::DisallowedIntents => "Disallowed intent(s).",
        }
    }
}

impl From<CloseCode> for u16 {
    fn from(code: CloseCode) -> Self {
        code.as_u16()
    }
}

impl TryFrom<u16> for CloseCode {
    type Error = String;

    fn try_from(code: u16) -> Result<Self, Self::Error> {
        Self::from_u16(code).ok_or_else(|| format!("unknown close code {code}"))
    }
}

/// Gateway intents (Gateway › Gateway Intents).
///
/// The gateway filters what it sends by them, as Discord does: see
/// [`Gateway`](crate::gateway::Gateway).
pub mod intents {
    /// `GUILDS`: `GUILD_CREATE` and the other guild, channel and role events.
    pub const GUILDS: u64 = 1 << 0;
    /// `GUILD_MEMBERS` (privileged).
    pub const GUILD_MEMBERS: u64 = 1 << 1;
    /// `GUILD_MESSAGES`: `MESSAGE_CREATE` in guilds.
    pub const GUILD_MESSAGES: u64 = 1 << 9;
    /// `DIRECT_MESSAGES`: `MESSAGE_CREATE` in DMs.
    pub const DIRECT_MESSAGES: u64 = 1 << 12;
    /// `GUILD_PRESENCES` (privileged).
    pub const GUILD_PRESENCES: u64 = 1 << 8;
    /// `MESSAGE_CONTENT` (privileged).
    pub const MESSAGE_CONTENT: u64 = 1 << 15;
    /// The three privileged intents.
    pub const PRIVILEGED: u64 = GUILD_MEMBERS | GUILD_PRESENCES | MESSAGE_CONTENT;
    /// Every documented intent bit: 0–16, 20, 21, 24, 25. Any other bit is rejected with 4013.
    pub const KNOWN: u64 = 0x1_FFFF | (1 << 20) | (1 << 21) | (1 << 24) | (1 << 25);
}

/// Client payloads larger than this close the connection with 4002 (Gateway › Sending Events).
pub const MAX_CLIENT_PAYLOAD: usize = 4096;

/// 120 payloads per connection per 60 s; the next one closes with 4008 (Gateway › Rate Limiting).
pub const SEND_LIMIT: usize = 120;

/// The window of [`SEND_LIMIT`].
pub const SEND_WINDOW: std::time::Duration = std::time::Duration::from_mins(1);

/// A shard may hold at most 2500 guilds before Discord requires more shards (Gateway › Sharding).
pub const MAX_GUILDS_PER_SHARD: usize = 2500;

/// The API version the mock speaks by default (a connection without `v`, and REST's own).
pub const API_VERSION: u8 = 10;

/// The API versions the gateway accepts in its `v` query (Discord still serves the deprecated 9:
/// eris 0.16 speaks only that); others close with 4012. A session's READY names its version.
pub const API_VERSIONS: [u8; 2] = [9, 10];

/// The envelope of every gateway payload, serialised as Discord does: `t`, `s`, `op` before `d`,
/// compact, with explicit nulls (twilight finds `op`, `s` and `t` by searching the text, so their
/// order matters).
#[derive(Debug, Serialize)]
pub struct Envelope<'a> {
    /// Event name for dispatches, `null` otherwise.
    pub t: Option<&'a str>,
    /// Sequence number for dispatches, `null` otherwise.
    pub s: Option<u64>,
    /// Opcode.
    pub op: u8,
    /// Payload data, already serialised.
    pub d: &'a RawValue,
}

impl Envelope<'_> {
    /// Serialises a non-dispatch payload.
    #[must_use]
    pub fn control(op: OpCode, d: &RawValue) -> String {
        Envelope {
            t: None,
            s: None,
            op: op.as_u8(),
            d,
        }
        .encode()
    }

    /// Serialises a dispatch payload.
    #[must_use]
    pub fn dispatch(event: &str, seq: u64, d: &RawValue) -> String {
        Envelope {
            t: Some(event),
            s: Some(seq),
            op: OpCode::Dispatch.as_u8(),
            d,
        }
        .encode()
    }

    fn encode(&self) -> String {
        serde_json::to_string(self).expect("an envelope of raw JSON always serialises")
    }
}

/// Parses already-valid JSON text into a raw value; for building payloads from `serde_json::json!`.
///
/// # Panics
/// Never: a `Value` always prints valid JSON.
#[must_use]
pub fn raw(value: &serde_json::Value) -> Box<RawValue> {
    RawValue::from_string(value.to_string()).expect("serde_json::Value always prints valid JSON")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_orders_t_s_op_before_d() {
        let d = raw(&serde_json::json!({"s": 5, "op": 3}));
        assert_eq!(
            Envelope::dispatch("READY", 1, &d),
            r#"{"t":"READY","s":1,"op":0,"d":{"op":3,"s":5}}"#
        );
        let null = raw(&serde_json::Value::Null);
        assert_eq!(
            Envelope::control(OpCode::HeartbeatAck, &null),
            r#"{"t":null,"s":null,"op":11,"d":null}"#
        );
    }

    #[test]
    fn close_codes_round_trip_and_classify() {
        for code in CloseCode::ALL {
            assert_eq!(CloseCode::from_u16(code.as_u16()), Some(code));
        }
        assert_eq!(CloseCode::from_u16(4006), None);
        assert!(!CloseCode::AuthenticationFailed.can_reconnect());
        assert!(CloseCode::UnknownError.keeps_session());
        assert!(CloseCode::RateLimited.keeps_session());
        assert!(!CloseCode::SessionTimedOut.keeps_session());
        assert!(!CloseCode::InvalidSeq.keeps_session());
        assert!(!CloseCode::InvalidShard.keeps_session());
    }

    #[test]
    fn opcodes_round_trip() {
        for n in 0..=50u8 {
            if let Some(op) = OpCode::from_u8(n) {
                assert_eq!(op.as_u8(), n);
            }
        }
        assert_eq!(OpCode::from_u8(5), None);
        assert!(OpCode::Identify.is_client_op());
        assert!(!OpCode::Hello.is_client_op());
    }

    #[test]
    fn intent_mask_matches_documented_bits() {
        assert_eq!(intents::KNOWN & (1 << 17), 0);
        assert_eq!(intents::KNOWN & (1 << 22), 0);
        assert_ne!(intents::KNOWN & (1 << 25), 0);
        assert_ne!(intents::KNOWN & (1 << 16), 0);
    }
}
