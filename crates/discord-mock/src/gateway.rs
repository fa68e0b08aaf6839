//! The gateway, sans I/O: connections, sessions, identify pacing, the session budget, the event
//! source and the evidence, fed `(now, input)` and returning [`Action`]s.
//!
//! It holds no socket and reads no clock: `now` is the time since the mock started, given by the
//! caller, so every close-code rule is unit-tested with fake time. The server layer
//! (the private `server` module) turns websocket messages into calls here and carries out the actions.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::{Duration, SystemTime};

use serde_json::value::RawValue;
use serde_json::{Value, json};

use crate::config::MockConfig;
use crate::protocol::{
    API_VERSION, API_VERSIONS, CloseCode, Envelope, MAX_CLIENT_PAYLOAD, OpCode, SEND_WINDOW,
    intents, raw,
};
use crate::stats::{EventReport, SessionReport, Stats, Violation};
use crate::transport::{QueryError, WireOptions};
use crate::world::{self, BOT_USER_ID, World};

/// Identifies one websocket connection.
pub type ConnId = u64;

/// The most events per second the event source produces over all guilds together.
pub const MAX_EVENTS_PER_SECOND: f64 = 1_000_000.0;

/// Whether a websocket peer may receive `code` in a close frame (RFC 6455 § 7.4): 1000-1003,
/// 1007-1014 and 3000-4999. 1004-1006 and 1015 are reserved and never sent; 1016-2999 are
/// unassigned; below 1000 and above 4999 are not close codes at all.
#[must_use]
pub fn sendable_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// A control request (fault injection, the event source) with a value out of range.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// The event rate is not a finite, non-negative number within the source's limit.
    #[error(
        "rate {rate} is out of range: give events per guild per second, a finite number in 0..={max} (at most {MAX_EVENTS_PER_SECOND} events/s over the {guilds} guilds)"
    )]
    EventRate {
        /// What was asked for.
        rate: f64,
        /// The largest rate allowed for this world.
        max: f64,
        /// Guilds in the world.
        guilds: usize,
    },
    /// The close code cannot be sent to a websocket peer.
    #[error(
        "close code {0} cannot be sent to a websocket peer: use 1000-1003, 1007-1014 or 3000-4999"
    )]
    CloseCode(i64),
}

/// What the I/O layer must do for the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send a text frame.
    Send {
        /// Connection.
        conn: ConnId,
        /// Frame text.
        text: String,
    },
    /// Send a close frame with this code, then end the connection.
    Close {
        /// Connection.
        conn: ConnId,
        /// Close code.
        code: u16,
        /// Close reason.
        reason: String,
    },
    /// End the TCP connection without a close frame.
    Drop {
        /// Connection.
        conn: ConnId,
    },
    /// IDENTIFY asked for `compress: true`: compress each later payload on its own
    /// ([`Transport::compress_payloads`](crate::transport::Transport::compress_payloads)).
    CompressPayloads {
        /// Connection.
        conn: ConnId,
    },
}

/// Whether a connection has identified or resumed.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Auth {
    /// Only heartbeats, identify and resume are allowed.
    Pending,
    /// Holds this session.
    Session(String),
    /// Held a session that the mock invalidated; the client must reconnect.
    Invalidated,
}

#[derive(Debug, Clone)]
struct Conn {
    auth: Auth,
    /// The API version its URL asked for.
    version: u8,
    last_heartbeat: Duration,
    received: VecDeque<Duration>,
    close_at: Option<Duration>,
}

#[derive(Debug, Clone)]
struct Session {
    id: String,
    shard: [u32; 2],
    intents: u64,
    seq: u64,
    acked: u64,
    conn: Option<ConnId>,
    detached_at: Duration,
    /// Dispatches kept for replay, oldest first.
    replay: VecDeque<(u64, Replay)>,
    /// Event-source events sent and not yet confirmed: `(seq, event number)`.
    unconfirmed: VecDeque<(u64, u64)>,
    resumes: u64,
    events_sent: u64,
    events_acked: u64,
    presence: Option<Value>,
    large_threshold: Option<u64>,
}

/// The event source's state.
#[derive(Debug, Clone)]
struct EventSource {
    running: bool,
    rate: f64,
    last: Duration,
    carry: f64,
    cursor: usize,
}

/// A dispatch kept for replay: its frame, or for a `GUILD_CREATE` only which guild it was, so a
/// session's burst of a thousand guilds costs bytes, not megabytes, until it is replayed.
#[derive(Debug, Clone)]
enum Replay {
    Frame(String),
    /// Guild index, and whether every member was listed.
    GuildCreate(usize, bool),
    /// An event-source message, and whether its content was blanked: some 32 bytes where its
    /// frame takes near a kilobyte, so a full replay buffer on a thousand sessions stays small.
    Message(EventMessage, bool),
}

/// What an event-source message is made again from.
#[derive(Debug, Clone, Copy)]
struct EventMessage {
    /// Its number in the event source.
    n: u64,
    id: u64,
    /// Its guild's index.
    guild: usize,
}

impl EventMessage {
    /// Its channel and its author in `guild`, which follow from its number.
    fn place(self, guild: &world::Guild) -> (u64, u64) {
        let n = self.n as usize;
        let channel = guild.channel(n % guild.text_channels.max(1));
        let author = guild.member(1 + n % (guild.member_count() - 1).max(1));
        (channel, author)
    }
}

/// A client payload before its opcode is known.
#[derive(serde::Deserialize)]
struct Incoming<'a> {
    op: Value,
    #[serde(borrow, default)]
    d: Option<&'a RawValue>,
}

/// Messages kept for `GET /channels/{id}/messages`, over all channels together: the newest
/// ones, so memory stays bounded however many channels the world has.
pub const MESSAGE_HISTORY: usize = 100_000;

/// A message kept for `GET /channels/{id}/messages`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// Message id.
    pub id: u64,
    /// Its channel.
    pub channel: u64,
    /// Author's user id.
    pub author: u64,
    /// Content.
    pub content: String,
}

/// Most events one tick may produce, so a long pause cannot build an unbounded burst, and a mock
/// asked for more than it can make holds its state a few milliseconds at a time (heartbeats and
/// resumes still get their turn; what it could not make is not made). With the server's 10 ms
/// ticks: up to 500,000 events a second.
const MAX_EVENTS_PER_TICK: usize = 5_000;

/// The gateway state machine. See the module docs. A clone is an independent copy of the whole
/// state (handy to replay one state against many inputs).
#[derive(Debug, Clone)]
#[allow(
    clippy::struct_field_names,
    reason = "`gateway_url` is the URL of this gateway"
)]
pub struct Gateway {
    config: MockConfig,
    world: World,
    gateway_url: String,
    resume_url: String,
    next_conn: ConnId,
    conns: HashMap<ConnId, Conn>,
    sessions: HashMap<String, Session>,
    /// Sessions by `num_shards`, then shard id.
    routes: BTreeMap<u32, BTreeMap<u32, Vec<String>>>,
    /// Last accepted identify per bucket.
    buckets: HashMap<u32, Duration>,
    budget_remaining: u32,
    budget_resets_at: Duration,
    acks_withheld: HashSet<u32>,
    member_requests: HashMap<u64, Duration>,
    events: EventSource,
    /// Confirmations per unsettled event, indexed by event number less `settled_below`.
    confirmations: Vec<u32>,
    /// What became of each unsettled event besides confirmations ([`ROUTED`], [`ABANDONED`]).
    fates: Vec<u8>,
    /// Each unsettled event's snowflake.
    window_ids: Vec<u64>,
    /// Events below this number are settled (no session holds them unconfirmed, so nothing
    /// can change what became of them): they are counted in `settled`, not kept one by one.
    settled_below: u64,
    /// The report of the settled events.
    settled: EventReport,
    /// Every produced event's snowflake, by event number (kept only with
    /// [`MockConfig::keep_event_ids`]).
    event_ids: Vec<u64>,
    /// Milliseconds since Discord's epoch when this gateway's clock read zero: snowflakes made
    /// now carry the time, as Discord's do.
    wall_base_ms: u64,
    /// The latest time the gateway was told.
    clock: Duration,
    /// The last snowflake [`Gateway::mint`] made.
    last_snowflake: u64,
    /// The newest messages of every channel together, oldest first.
    history: VecDeque<StoredMessage>,
    stats: Stats,
}

/// Unsettled events kept before the gateway looks for ones to settle.
const SETTLE_EVERY: usize = if cfg!(test) { 256 } else { 1 << 16 };

/// An event's fate: at least one session received it when it was produced.
const ROUTED: u8 = 1;
/// An event's fate: a session held it unconfirmed when its client vanished and never came back
/// (the session expired without a resume: a killed process, say).
const ABANDONED: u8 = 2;
/// An event's fate: sessions of its shard existed, none with the intent it needs.
const FILTERED: u8 = 4;

impl Gateway {
    /// A gateway served at `gateway_url` (`ws://127.0.0.1:PORT`); `READY` advertises
    /// `{gateway_url}/resume` as `resume_gateway_url`.
    #[must_use]
    pub fn new(config: MockConfig, gateway_url: String) -> Self {
        let world = World::new(&config);
        Self {
            budget_remaining: config.session_limit,
            budget_resets_at: config.session_limit_reset,
            events: EventSource {
                running: config.events_running,
                rate: config.event_rate,
                last: Duration::ZERO,
                carry: 0.0,
                cursor: 0,
            },
            world,
            resume_url: format!("{gateway_url}/resume"),
            gateway_url,
            next_conn: 1,
            conns: HashMap::new(),
            sessions: HashMap::new(),
            routes: BTreeMap::new(),
            buckets: HashMap::new(),
            acks_withheld: HashSet::new(),
            member_requests: HashMap::new(),
            confirmations: Vec::new(),
            fates: Vec::new(),
            window_ids: Vec::new(),
            settled_below: 0,
            settled: EventReport::default(),
            event_ids: Vec::new(),
            wall_base_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
                .saturating_sub(world::DISCORD_EPOCH_MS),
            clock: Duration::ZERO,
            last_snowflake: 0,
            history: VecDeque::new(),
            stats: Stats::default(),
            config,
        }
    }

    /// Moves the gateway's clock to `now` (it never goes back).
    pub fn advance(&mut self, now: Duration) {
        self.clock = self.clock.max(now);
    }

    /// Every produced event's snowflake, in the order they were produced (none without
    /// [`MockConfig::keep_event_ids`]).
    #[must_use]
    pub fn event_ids(&self) -> &[u64] {
        &self.event_ids
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &MockConfig {
        &self.config
    }

    /// The bot's world.
    #[must_use]
    pub fn world(&self) -> &World {
        &self.world
    }

    /// The URL the gateway is served at.
    #[must_use]
    pub fn gateway_url(&self) -> &str {
        &self.gateway_url
    }

    /// Updates the counters (for the REST layer, which shares them).
    pub fn record<R>(&mut self, update: impl FnOnce(&mut Stats) -> R) -> R {
        update(&mut self.stats)
    }

    /// Session budget as `/gateway/bot` reports it: `(total, remaining, reset_after)`.
    #[must_use]
    pub fn session_budget(&self, now: Duration) -> (u32, u32, Duration) {
        let remaining = if now >= self.budget_resets_at {
            self.config.session_limit
        } else {
            self.budget_remaining
        };
        let reset_after = self.budget_resets_at.saturating_sub(now);
        (self.config.session_limit, remaining, reset_after)
    }

    /// Whether the token was reset because the session budget ran out.
    #[must_use]
    pub fn token_reset(&self) -> bool {
        self.stats.token_reset
    }

    /// A new connection. `query` is the URL query (`v=10&encoding=json...`): an unknown API
    /// version closes it with 4012, an unknown encoding or compression with 4002. Encoding and
    /// compression themselves are the I/O layer's ([`crate::transport`]): the core speaks JSON.
    pub fn open(&mut self, now: Duration, query: Option<&str>, out: &mut Vec<Action>) -> ConnId {
        self.advance(now);
        let conn = self.next_conn;
        self.next_conn += 1;
        self.stats.connections += 1;
        self.conns.insert(
            conn,
            Conn {
                auth: Auth::Pending,
                version: API_VERSION,
                last_heartbeat: now,
                received: VecDeque::new(),
                close_at: None,
            },
        );
        let options = WireOptions::from_query(query);
        let version_ok = match &options {
            Ok(WireOptions {
                version: Some(v), ..
            }) => API_VERSIONS.contains(v),
            Err(QueryError::Version(_)) => false,
            _ => true,
        };
        if let (
            Ok(WireOptions {
                version: Some(v), ..
            }),
            Some(c),
        ) = (&options, self.conns.get_mut(&conn))
        {
            c.version = *v;
        }
        let hello = raw(&json!({
            "heartbeat_interval": self.config.heartbeat_interval.as_millis() as u64,
            "_trace": ["[\"discord-mock\",{\"micros\":0.0}]"],
        }));
        out.push(Action::Send {
            conn,
            text: Envelope::control(OpCode::Hello, &hello),
        });
        if !version_ok {
            self.violate(
                conn,
                now,
                Violation::InvalidApiVersion,
                CloseCode::InvalidApiVersion,
                out,
            );
        } else if options.is_err() {
            // An encoding or compression the gateway does not speak.
            self.violate(
                conn,
                now,
                Violation::DecodeError,
                CloseCode::DecodeError,
                out,
            );
        }
        conn
    }

    /// A text frame from a client.
    pub fn receive_text(&mut self, conn: ConnId, now: Duration, text: &str, out: &mut Vec<Action>) {
        self.receive_json(conn, now, text, true, out);
    }

    /// A frame from a client that the I/O layer decoded to JSON (ETF) after checking its size on
    /// the wire: its JSON rendering may be longer than [`MAX_CLIENT_PAYLOAD`] and is still fine.
    pub fn receive_decoded(
        &mut self,
        conn: ConnId,
        now: Duration,
        json: &str,
        out: &mut Vec<Action>,
    ) {
        self.receive_json(conn, now, json, false, out);
    }

    fn receive_json(
        &mut self,
        conn: ConnId,
        now: Duration,
        text: &str,
        check_size: bool,
        out: &mut Vec<Action>,
    ) {
        self.advance(now);
        if !self.count_receive(conn, now, out) {
            return;
        }
        if check_size && text.len() > MAX_CLIENT_PAYLOAD {
            self.violate(
                conn,
                now,
                Violation::PayloadTooLarge,
                CloseCode::DecodeError,
                out,
            );
            return;
        }
        let Ok(incoming) = serde_json::from_str::<Incoming>(text) else {
            self.violate(
                conn,
                now,
                Violation::DecodeError,
                CloseCode::DecodeError,
                out,
            );
            return;
        };
        let op = incoming
            .op
            .as_u64()
            .and_then(|op| u8::try_from(op).ok())
            .and_then(OpCode::from_u8)
            .filter(|op| op.is_client_op());
        let Some(op) = op else {
            self.violate(
                conn,
                now,
                Violation::UnknownOpcode,
                CloseCode::UnknownOpcode,
                out,
            );
            return;
        };
        let d: Value = incoming.d.map_or(Value::Null, |d| {
            serde_json::from_str(d.get()).unwrap_or(Value::Null)
        });
        let auth = self.conns[&conn].auth.clone();
        match (op, &auth) {
            (OpCode::Heartbeat, _) => self.on_heartbeat(conn, now, &d, out),
            (OpCode::Identify, Auth::Pending) => self.on_identify(conn, now, &d, out),
            (OpCode::Resume, Auth::Pending) => self.on_resume(conn, now, &d, out),
            (OpCode::Identify | OpCode::Resume, _) => {
                self.violate(
                    conn,
                    now,
                    Violation::AlreadyAuthenticated,
                    CloseCode::AlreadyAuthenticated,
                    out,
                );
            }
            (_, Auth::Pending | Auth::Invalidated) => {
                self.violate(
                    conn,
                    now,
                    Violation::NotAuthenticated,
                    CloseCode::NotAuthenticated,
                    out,
                );
            }
            (OpCode::RequestGuildMembers, Auth::Session(session)) => {
                let session = session.clone();
                self.on_request_members(conn, now, &session, &d, out);
            }
            (OpCode::PresenceUpdate, Auth::Session(session)) => {
                if d.is_object() {
                    self.stats.presence_updates += 1;
                    let session = session.clone();
                    if let Some(s) = self.sessions.get_mut(&session) {
                        s.presence = Some(d.clone());
                    }
                } else {
                    self.violate(
                        conn,
                        now,
                        Violation::UnknownOpcode,
                        CloseCode::UnknownOpcode,
                        out,
                    );
                }
            }
            // Voice state, soundboard and channel info requests are accepted and not answered.
            (_, Auth::Session(_)) => {}
        }
    }

    /// A frame from a client larger than [`MAX_CLIENT_PAYLOAD`] on the wire, not decoded: 4002.
    pub fn receive_too_large(&mut self, conn: ConnId, now: Duration, out: &mut Vec<Action>) {
        self.refuse_frame(conn, now, Violation::PayloadTooLarge, out);
    }

    /// Counts a frame against the send limit, then closes with 4002 for `kind`.
    fn refuse_frame(
        &mut self,
        conn: ConnId,
        now: Duration,
        kind: Violation,
        out: &mut Vec<Action>,
    ) {
        if self.count_receive(conn, now, out) {
            self.violate(conn, now, kind, CloseCode::DecodeError, out);
        }
    }

    /// A frame from a client that does not decode on its connection (a binary frame on a JSON
    /// connection, bad ETF): a decode error, 4002.
    pub fn receive_binary(&mut self, conn: ConnId, now: Duration, out: &mut Vec<Action>) {
        self.refuse_frame(conn, now, Violation::DecodeError, out);
    }

    /// The client closed the connection with a close frame (`Some(code)`) or dropped it (`None`).
    ///
    /// 1000 and 1001 end the session; any other code, or a drop, keeps it resumable.
    pub fn client_closed(&mut self, conn: ConnId, now: Duration, code: Option<u16>) {
        let Some(state) = self.conns.remove(&conn) else {
            return;
        };
        if let Some(code) = code {
            *self.stats.closes_received.entry(code).or_default() += 1;
        }
        if let Auth::Session(session) = state.auth {
            if matches!(code, Some(1000 | 1001)) {
                self.end_session(&session);
            } else {
                self.detach(&session, now);
            }
        }
    }

    /// Advances time: zombie connections, op 7 deadlines, expired sessions, the session budget's
    /// reset and the event source.
    pub fn tick(&mut self, now: Duration, out: &mut Vec<Action>) {
        self.advance(now);
        let zombies: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| now.saturating_sub(c.last_heartbeat) > self.config.heartbeat_timeout)
            .map(|(id, _)| *id)
            .collect();
        for conn in zombies {
            self.close(conn, now, self.config.zombie_close_code.as_u16(), out);
        }
        let overdue: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.close_at.is_some_and(|at| now >= at))
            .map(|(id, _)| *id)
            .collect();
        for conn in overdue {
            self.close(conn, now, CloseCode::UnknownError.as_u16(), out);
        }
        let expired: Vec<String> = self
            .sessions
            .values()
            .filter(|s| {
                s.conn.is_none() && now.saturating_sub(s.detached_at) > self.config.resume_timeout
            })
            .map(|s| s.id.clone())
            .collect();
        for session in expired {
            if let Some(held) = self.sessions.get(&session) {
                for (_, n) in &held.unconfirmed {
                    self.fates[(*n - self.settled_below) as usize] |= ABANDONED;
                }
            }
            self.end_session(&session);
        }
        self.tick_budget(now);
        self.produce_due_events(now, out);
    }

    fn produce_due_events(&mut self, now: Duration, out: &mut Vec<Action>) {
        let elapsed = now.saturating_sub(self.events.last);
        self.events.last = now;
        if !self.events.running || self.world.guild_count() == 0 {
            return;
        }
        let due = self.events.carry
            + elapsed.as_secs_f64() * self.events.rate * self.world.guild_count() as f64;
        // The epsilon keeps float error from postponing an event that is due exactly now.
        let whole = (due + 1e-9).floor();
        self.events.carry = (due - whole).max(0.0);
        let whole = (whole as usize).min(MAX_EVENTS_PER_TICK);
        for _ in 0..whole {
            let guild = self.events.cursor % self.world.guild_count();
            self.events.cursor = self.events.cursor.wrapping_add(1);
            self.produce_event(guild, out);
        }
    }

    /// A new snowflake of the gateway's time, greater than every one minted before (event ids,
    /// messages created over REST), as Discord's ids grow with time.
    pub fn mint(&mut self) -> u64 {
        let now_ms = self.wall_base_ms + u64::try_from(self.clock.as_millis()).unwrap_or(0);
        let id = world::snowflake(now_ms, 0).max(self.last_snowflake + 1);
        self.last_snowflake = id;
        id
    }

    /// Keeps a message for `GET /channels/{id}/messages`: the newest [`MESSAGE_HISTORY`] of all
    /// channels together are kept.
    pub fn remember(&mut self, channel: u64, id: u64, author: u64, content: String) {
        if self.history.len() >= MESSAGE_HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(StoredMessage {
            id,
            channel,
            author,
            content,
        });
    }

    /// A channel's kept messages, oldest first.
    pub fn history(&self, channel: u64) -> impl DoubleEndedIterator<Item = &StoredMessage> {
        self.history.iter().filter(move |m| m.channel == channel)
    }

    /// Starts the event source, optionally at a new rate (events per guild per second).
    ///
    /// A rate that is not finite, is negative, or would make more than
    /// [`MAX_EVENTS_PER_SECOND`] over all guilds is refused, and nothing changes.
    pub fn start_events(&mut self, now: Duration, rate: Option<f64>) -> Result<(), ControlError> {
        if let Some(rate) = rate {
            let guilds = self.world.guild_count();
            let max = MAX_EVENTS_PER_SECOND / guilds.max(1) as f64;
            if !rate.is_finite() || !(0.0..=max).contains(&rate) {
                return Err(ControlError::EventRate { rate, max, guilds });
            }
            self.events.rate = rate;
        }
        if !self.events.running {
            self.events.running = true;
            self.events.last = now;
            self.events.carry = 0.0;
        }
        Ok(())
    }

    /// Stops the event source.
    pub fn stop_events(&mut self) {
        self.events.running = false;
    }

    /// Produces one event for the `guild_index`-th guild now and returns its id. Every session of
    /// the owning shard (any shard total) receives it.
    pub fn produce_event(&mut self, guild_index: usize, out: &mut Vec<Action>) -> u64 {
        if self.confirmations.len() >= SETTLE_EVERY {
            self.settle();
        }
        let n = self.settled_below + self.confirmations.len() as u64;
        self.confirmations.push(0);
        self.fates.push(0);
        self.stats.events_produced += 1;
        let id = self.mint();
        self.window_ids.push(id);
        if self.config.keep_event_ids {
            self.event_ids.push(id);
        }
        let every = u64::from(self.config.member_add_every);
        let guild = self.world.guild_at(guild_index);
        let guild_id = guild.id;
        let member_add = every > 0 && (n + 1).is_multiple_of(every);
        let needs = if member_add {
            intents::GUILD_MEMBERS
        } else {
            intents::GUILD_MESSAGES
        };
        let mut subscribed = self.sessions_for_guild(guild_id);
        let routed = subscribed.len();
        subscribed.retain(|s| {
            self.sessions
                .get(s)
                .is_some_and(|s| s.intents & needs == needs)
        });
        if !subscribed.is_empty() {
            self.fates[(n - self.settled_below) as usize] |= ROUTED;
        } else if routed > 0 {
            self.fates[(n - self.settled_below) as usize] |= FILTERED;
        }
        if !member_add {
            let message = EventMessage {
                n,
                id,
                guild: guild_index,
            };
            let (channel, author_id) = message.place(&guild);
            self.remember(channel, id, author_id, format!("event {n}"));
            let (mut full, mut blank) = (None, None);
            for session in subscribed {
                let intents = self.sessions.get(&session).map_or(0, |s| s.intents);
                // Without MESSAGE_CONTENT a guild message that does not mention the bot comes
                // with its content, embeds, attachments and components blanked.
                let blanked = intents & intents::MESSAGE_CONTENT == 0;
                let slot = if blanked { &mut blank } else { &mut full };
                let d =
                    slot.get_or_insert_with(|| Self::event_message(&self.world, message, blanked));
                let kept = Replay::Message(message, blanked);
                self.dispatch_kept(&session, "MESSAGE_CREATE", d, Some(n), Some(kept), out);
            }
            return id;
        }
        let (event, d) = {
            let name = format!("joined-{n}");
            let user = world::user_json(id, &name);
            self.world.add_user(id, name);
            let mut member = json!({
                "user": user, "nick": null, "avatar": null, "roles": [],
                "joined_at": world::iso8601(SystemTime::now()), "premium_since": null,
                "deaf": false, "mute": false, "flags": 0, "pending": false,
            });
            member["guild_id"] = Value::String(guild_id.to_string());
            ("GUILD_MEMBER_ADD", member)
        };
        let d = raw(&d);
        for session in subscribed {
            self.dispatch(&session, event, &d, Some(n), out);
        }
        id
    }

    /// An event-source message's payload, as [`world::message_json`] makes it, `blank` without
    /// its content: made again the same from its number, id and guild when it is replayed.
    fn event_message(world: &World, message: EventMessage, blank: bool) -> Box<RawValue> {
        let guild = world.guild_at(message.guild);
        let (channel, author_id) = message.place(&guild);
        let author = world
            .user(author_id)
            .unwrap_or_else(World::bot_user)
            .to_string();
        let content = format!("event {}", message.n);
        let fields = world::MessageFields {
            id: message.id,
            guild: guild.id,
            channel,
            author: &author,
            content: &content,
        };
        world.event_message(&fields, blank)
    }

    fn sessions_for_guild(&self, guild_id: u64) -> Vec<String> {
        let mut found = Vec::new();
        for (total, shards) in &self.routes {
            if let Some(ids) = shards.get(&world::shard_for_guild(guild_id, *total)) {
                found.extend(ids.iter().cloned());
            }
        }
        found
    }

    /// Closes every connection of shard `shard` with `code`. Returns how many were closed; a code
    /// no websocket peer may receive ([`sendable_close_code`]) is refused.
    pub fn close_shard(
        &mut self,
        now: Duration,
        shard: u32,
        code: u16,
        out: &mut Vec<Action>,
    ) -> Result<usize, ControlError> {
        if !sendable_close_code(code) {
            return Err(ControlError::CloseCode(i64::from(code)));
        }
        let conns = self.conns_of_shard(shard);
        for conn in &conns {
            self.close(*conn, now, code, out);
        }
        Ok(conns.len())
    }

    /// Drops the TCP connection of every connection of shard `shard`; their sessions stay
    /// resumable. Returns how many were dropped.
    pub fn drop_shard(&mut self, now: Duration, shard: u32, out: &mut Vec<Action>) -> usize {
        let conns = self.conns_of_shard(shard);
        for conn in &conns {
            self.client_closed(*conn, now, None);
            out.push(Action::Drop { conn: *conn });
        }
        conns.len()
    }

    /// Sends op 7 to every connection of shard `shard`; the mock closes them itself after
    /// `reconnect_grace`. Returns how many were told.
    pub fn reconnect_shard(&mut self, now: Duration, shard: u32, out: &mut Vec<Action>) -> usize {
        let conns = self.conns_of_shard(shard);
        let null = raw(&Value::Null);
        for conn in &conns {
            out.push(Action::Send {
                conn: *conn,
                text: Envelope::control(OpCode::Reconnect, &null),
            });
            if let Some(c) = self.conns.get_mut(conn) {
                c.close_at = Some(now + self.config.reconnect_grace);
            }
        }
        conns.len()
    }

    /// Sends op 9 to every connection of shard `shard`. Unless `resumable`, their sessions end.
    /// Returns how many were told.
    pub fn invalidate_shard(
        &mut self,
        shard: u32,
        resumable: bool,
        out: &mut Vec<Action>,
    ) -> usize {
        let conns = self.conns_of_shard(shard);
        let d = raw(&Value::Bool(resumable));
        for conn in &conns {
            out.push(Action::Send {
                conn: *conn,
                text: Envelope::control(OpCode::InvalidSession, &d),
            });
            if !resumable
                && let Some(c) = self.conns.get_mut(conn)
                && let Auth::Session(session) = std::mem::replace(&mut c.auth, Auth::Invalidated)
            {
                self.end_session(&session);
            }
        }
        conns.len()
    }

    /// Withholds (or restores) heartbeat ACKs on shard `shard`'s connections, now and later.
    pub fn withhold_acks(&mut self, shard: u32, withhold: bool) {
        if withhold {
            self.acks_withheld.insert(shard);
        } else {
            self.acks_withheld.remove(&shard);
        }
    }

    /// Leaves token-reset mode and refills the session budget.
    pub fn restore_token(&mut self) {
        self.stats.token_reset = false;
        self.budget_remaining = self.config.session_limit;
    }

    fn conns_of_shard(&self, shard: u32) -> Vec<ConnId> {
        let mut conns: Vec<ConnId> = self
            .sessions
            .values()
            .filter(|s| s.shard[0] == shard)
            .filter_map(|s| s.conn)
            .collect();
        conns.sort_unstable();
        conns
    }

    /// Counters now.
    #[must_use]
    pub fn stats(&self, now: Duration) -> Stats {
        let mut stats = self.stats.clone();
        stats.open_connections = self.conns.len() as u64;
        stats.session_budget_remaining = self.session_budget(now).1;
        for session in self.sessions.values() {
            *stats
                .sessions_per_shard
                .entry(session.shard[0])
                .or_default() += 1;
        }
        stats
    }

    /// Every live session (attached or resumable), ordered by shard.
    #[must_use]
    pub fn sessions(&self) -> Vec<SessionReport> {
        let mut reports: Vec<SessionReport> = self
            .sessions
            .values()
            .map(|s| SessionReport {
                session_id: s.id.clone(),
                shard: s.shard,
                seq: s.seq,
                acked_seq: s.acked,
                attached: s.conn.is_some(),
                resumes: s.resumes,
                events_sent: s.events_sent,
                events_acked: s.events_acked,
                presence: s.presence.clone(),
                large_threshold: s.large_threshold,
            })
            .collect();
        reports.sort_by(|a, b| {
            (a.shard[1], a.shard[0], &a.session_id).cmp(&(b.shard[1], b.shard[0], &b.session_id))
        });
        reports
    }

    /// How the event source's events were delivered. See [`EventReport`].
    #[must_use]
    pub fn event_report(&self) -> EventReport {
        let mut in_flight = vec![false; self.confirmations.len()];
        for session in self.sessions.values() {
            for (_, n) in &session.unconfirmed {
                in_flight[(*n - self.settled_below) as usize] = true;
            }
        }
        let mut report = self.settled.clone();
        self.tally(&mut report, self.confirmations.len(), |i| in_flight[i]);
        report
    }

    /// Adds the first `upto` unsettled events to `report` (`held(i)`: whether a session holds
    /// the `i`-th unconfirmed).
    fn tally(&self, report: &mut EventReport, upto: usize, held: impl Fn(usize) -> bool) {
        report.produced += upto as u64;
        for (i, confirmations) in self.confirmations[..upto].iter().enumerate() {
            let fate = self.fates[i];
            if *confirmations > 0 {
                report.delivered += 1;
                report.duplicates += u64::from(confirmations - 1);
            } else if held(i) {
                report.in_flight += 1;
            } else if fate & ROUTED == 0 {
                if fate & FILTERED == 0 {
                    report.no_session += 1;
                } else {
                    report.filtered += 1;
                }
            } else {
                report.lost += 1;
                if fate & ABANDONED != 0 {
                    report.lost_abandoned += 1;
                }
                if report.lost_ids.len() < 20 {
                    report.lost_ids.push(self.window_ids[i]);
                }
            }
        }
    }

    /// Folds the events no session holds unconfirmed any more (every one before the oldest
    /// held) into the settled report: the evidence kept per event stays bounded by what the
    /// sessions hold, however long the event source runs.
    fn settle(&mut self) {
        let oldest_held = self
            .sessions
            .values()
            .filter_map(|s| s.unconfirmed.front().map(|(_, n)| *n))
            .min()
            .unwrap_or(self.settled_below + self.confirmations.len() as u64);
        let upto = (oldest_held - self.settled_below) as usize;
        if upto == 0 {
            return;
        }
        let mut settled = std::mem::take(&mut self.settled);
        self.tally(&mut settled, upto, |_| false);
        self.settled = settled;
        self.confirmations.drain(..upto);
        self.fates.drain(..upto);
        self.window_ids.drain(..upto);
        self.settled_below += upto as u64;
    }

    // ---- protocol handlers ---------------------------------------------------------------

    /// Counts a received frame against the send limit; closes with 4008 past it.
    fn count_receive(&mut self, conn: ConnId, now: Duration, out: &mut Vec<Action>) -> bool {
        let Some(c) = self.conns.get_mut(&conn) else {
            return false;
        };
        while c
            .received
            .front()
            .is_some_and(|t| now.saturating_sub(*t) >= SEND_WINDOW)
        {
            c.received.pop_front();
        }
        c.received.push_back(now);
        if c.received.len() > self.config.send_limit {
            self.violate(
                conn,
                now,
                Violation::SendRateLimit,
                CloseCode::RateLimited,
                out,
            );
            return false;
        }
        true
    }

    fn on_heartbeat(&mut self, conn: ConnId, now: Duration, d: &Value, out: &mut Vec<Action>) {
        self.stats.heartbeats += 1;
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.last_heartbeat = now;
        let session = match &c.auth {
            Auth::Session(s) => Some(s.clone()),
            _ => None,
        };
        let mut withheld = false;
        if let Some(session) = session {
            if let Some(seq) = d.as_u64() {
                self.confirm(&session, seq);
            }
            withheld = self
                .sessions
                .get(&session)
                .is_some_and(|s| self.acks_withheld.contains(&s.shard[0]));
        }
        if !withheld {
            out.push(Action::Send {
                conn,
                text: Envelope::control(OpCode::HeartbeatAck, &raw(&Value::Null)),
            });
        }
    }

    /// Checks what identify and resume share: an object payload (else 4001) with the right token
    /// (else 4004). Returns whether the connection may go on.
    fn authenticate(
        &mut self,
        conn: ConnId,
        now: Duration,
        d: &Value,
        out: &mut Vec<Action>,
    ) -> bool {
        if !d.is_object() {
            self.violate(
                conn,
                now,
                Violation::UnknownOpcode,
                CloseCode::UnknownOpcode,
                out,
            );
            return false;
        }
        let token_ok = d["token"]
            .as_str()
            .is_some_and(|t| self.config.token_matches(t));
        if !token_ok || self.stats.token_reset {
            self.violate(
                conn,
                now,
                Violation::AuthenticationFailed,
                CloseCode::AuthenticationFailed,
                out,
            );
            return false;
        }
        true
    }

    fn on_identify(&mut self, conn: ConnId, now: Duration, d: &Value, out: &mut Vec<Action>) {
        if !self.authenticate(conn, now, d, out) {
            return;
        }
        let Some(intents) = d["intents"].as_u64() else {
            self.violate(
                conn,
                now,
                Violation::InvalidIntents,
                CloseCode::InvalidIntents,
                out,
            );
            return;
        };
        if intents & !intents::KNOWN != 0 {
            self.violate(
                conn,
                now,
                Violation::InvalidIntents,
                CloseCode::InvalidIntents,
                out,
            );
            return;
        }
        if intents & intents::PRIVILEGED & !self.config.privileged_intents != 0 {
            self.violate(
                conn,
                now,
                Violation::DisallowedIntents,
                CloseCode::DisallowedIntents,
                out,
            );
            return;
        }
        let Some([shard_id, total]) = parse_shard(&d["shard"]) else {
            self.violate(
                conn,
                now,
                Violation::InvalidShard,
                CloseCode::InvalidShard,
                out,
            );
            return;
        };
        if self.config.large_bot_sharding && total % self.config.max_concurrency != 0 {
            self.violate(
                conn,
                now,
                Violation::InvalidShard,
                CloseCode::InvalidShard,
                out,
            );
            return;
        }
        let guilds: Vec<u64> = self
            .world
            .guilds_of_shard(shard_id, total)
            .map(|g| g.id)
            .collect();
        if guilds.len() > self.config.max_guilds_per_shard {
            self.violate(
                conn,
                now,
                Violation::ShardingRequired,
                CloseCode::ShardingRequired,
                out,
            );
            return;
        }
        let bucket = shard_id % self.config.max_concurrency;
        if self.buckets.get(&bucket).is_some_and(|last| {
            now.saturating_sub(*last) + self.config.identify_tolerance
                < self.config.identify_interval
        }) {
            let gap = now.saturating_sub(self.buckets[&bucket]);
            tracing::warn!(target: "discord_mock", shard = shard_id, bucket, ?gap, interval = ?self.config.identify_interval, "identify too early: op 9");
            *self
                .stats
                .violations
                .entry(Violation::IdentifyTooEarly)
                .or_default() += 1;
            out.push(Action::Send {
                conn,
                text: Envelope::control(OpCode::InvalidSession, &raw(&Value::Bool(false))),
            });
            return;
        }
        self.tick_budget(now);
        if self.budget_remaining == 0 {
            self.exhaust_budget(now, out);
            return;
        }
        self.budget_remaining -= 1;
        self.buckets.insert(bucket, now);
        self.stats.identifies += 1;
        *self.stats.identifies_per_shard.entry(shard_id).or_default() += 1;

        let session_id = format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
        self.sessions.insert(
            session_id.clone(),
            Session {
                id: session_id.clone(),
                shard: [shard_id, total],
                intents,
                seq: 0,
                acked: 0,
                conn: Some(conn),
                detached_at: now,
                replay: VecDeque::new(),
                unconfirmed: VecDeque::new(),
                resumes: 0,
                events_sent: 0,
                events_acked: 0,
                presence: d.get("presence").filter(|p| p.is_object()).cloned(),
                large_threshold: d["large_threshold"].as_u64(),
            },
        );
        self.routes
            .entry(total)
            .or_default()
            .entry(shard_id)
            .or_default()
            .push(session_id.clone());
        if let Some(c) = self.conns.get_mut(&conn) {
            c.auth = Auth::Session(session_id.clone());
        }
        if d["compress"] == Value::Bool(true) {
            out.push(Action::CompressPayloads { conn });
        }
        let version = self.conns.get(&conn).map_or(API_VERSION, |c| c.version);
        let ready = raw(&self.ready_payload(&session_id, [shard_id, total], &guilds, version));
        self.dispatch(&session_id, "READY", &ready, None, out);
        // Without GUILDS no GUILD_CREATE comes; without GUILD_MEMBERS it lists only the bot.
        if intents & intents::GUILDS != 0 {
            for guild in guilds {
                let guild = self
                    .world
                    .guild(guild)
                    .expect("guild ids come from the world");
                let members = intents & intents::GUILD_MEMBERS != 0;
                self.dispatch_guild_create(&session_id, guild.index, members, out);
            }
        }
    }

    fn ready_payload(
        &self,
        session_id: &str,
        shard: [u32; 2],
        guilds: &[u64],
        version: u8,
    ) -> Value {
        let mut flags = 0u64;
        if self.config.privileged_intents & intents::GUILD_PRESENCES != 0 {
            flags |= 1 << 12;
        }
        if self.config.privileged_intents & intents::GUILD_MEMBERS != 0 {
            flags |= 1 << 14;
        }
        if self.config.privileged_intents & intents::MESSAGE_CONTENT != 0 {
            flags |= 1 << 18;
        }
        json!({
            "v": version,
            "user_settings": {},
            "user": World::bot_user(),
            "shard": shard,
            "session_type": "normal",
            "session_id": session_id,
            "resume_gateway_url": self.resume_url,
            "relationships": [],
            "private_channels": [],
            "presences": [],
            "guilds": guilds.iter().map(|g| json!({"id": g.to_string(), "unavailable": true})).collect::<Vec<_>>(),
            "guild_join_requests": [],
            "geo_ordered_rtc_regions": ["mock"],
            "game_relationships": [],
            "auth": {},
            "application": {"id": BOT_USER_ID.to_string(), "flags": flags},
            "_trace": ["[\"discord-mock\",{\"micros\":0.0}]"],
        })
    }

    fn on_resume(&mut self, conn: ConnId, now: Duration, d: &Value, out: &mut Vec<Action>) {
        if !self.authenticate(conn, now, d, out) {
            return;
        }
        let session_id = d["session_id"].as_str().unwrap_or_default().to_owned();
        let seq = d["seq"].as_u64();
        let refuse = |this: &mut Self, out: &mut Vec<Action>| {
            this.stats.resumes_refused += 1;
            out.push(Action::Send {
                conn,
                text: Envelope::control(OpCode::InvalidSession, &raw(&Value::Bool(false))),
            });
        };
        let Some(session) = self.sessions.get(&session_id) else {
            refuse(self, out);
            return;
        };
        let Some(seq) = seq.filter(|seq| *seq <= session.seq) else {
            self.end_session(&session_id);
            self.violate(conn, now, Violation::InvalidSeq, CloseCode::InvalidSeq, out);
            return;
        };
        let oldest = session.replay.front().map_or(session.seq + 1, |(s, _)| *s);
        if seq + 1 < oldest {
            // The replay buffer no longer reaches back to `seq`.
            self.end_session(&session_id);
            refuse(self, out);
            return;
        }
        // A connection still holding the session loses it to the resuming one.
        if let Some(old) = session.conn
            && old != conn
            && let Some(old_conn) = self.conns.remove(&old)
        {
            drop(old_conn);
            self.send_close(old, CloseCode::SessionTimedOut.as_u16(), out);
        }
        self.stats.resumes += 1;
        let session = self.sessions.get_mut(&session_id).expect("checked above");
        session.conn = Some(conn);
        session.resumes += 1;
        for (s, kept) in &session.replay {
            if *s > seq {
                let text = match kept {
                    Replay::Frame(frame) => frame.clone(),
                    Replay::GuildCreate(k, members) => {
                        let guild = self.world.guild_at(*k);
                        Envelope::dispatch(
                            "GUILD_CREATE",
                            *s,
                            &self.world.create_payload(&guild, *members),
                        )
                    }
                    Replay::Message(message, blank) => Envelope::dispatch(
                        "MESSAGE_CREATE",
                        *s,
                        &Self::event_message(&self.world, *message, *blank),
                    ),
                };
                out.push(Action::Send { conn, text });
                self.stats.dispatches_sent += 1;
            }
        }
        if let Some(c) = self.conns.get_mut(&conn) {
            c.auth = Auth::Session(session_id.clone());
        }
        self.confirm(&session_id, seq);
        let resumed = raw(&json!({"_trace": ["[\"discord-mock\",{\"micros\":0.0}]"]}));
        self.dispatch(&session_id, "RESUMED", &resumed, None, out);
    }

    fn on_request_members(
        &mut self,
        conn: ConnId,
        now: Duration,
        session_id: &str,
        d: &Value,
        out: &mut Vec<Action>,
    ) {
        let guild_id = d["guild_id"].as_str().and_then(|g| g.parse::<u64>().ok());
        let (Some(guild_id), Some(session)) = (guild_id, self.sessions.get(session_id)) else {
            self.violate(
                conn,
                now,
                Violation::UnknownOpcode,
                CloseCode::UnknownOpcode,
                out,
            );
            return;
        };
        let [shard_id, total] = session.shard;
        let intents = session.intents;
        let Some(guild) = self
            .world
            .guild(guild_id)
            .filter(|g| world::shard_for_guild(g.id, total) == shard_id)
        else {
            return; // Not this shard's guild: Discord does not answer.
        };
        let query = d["query"].as_str();
        let limit = d["limit"].as_u64().unwrap_or(0) as usize;
        let nonce = d["nonce"]
            .as_str()
            .filter(|n| n.len() <= 32)
            .map(str::to_owned);
        let user_ids: Option<Vec<u64>> = match &d["user_ids"] {
            Value::String(id) => Some(id.parse().ok().into_iter().collect()),
            Value::Array(ids) => Some(
                ids.iter()
                    .filter_map(|i| i.as_str()?.parse().ok())
                    .collect(),
            ),
            _ => None,
        };
        let all_members = query == Some("") && limit == 0 && user_ids.is_none();
        if all_members {
            if intents & intents::GUILD_MEMBERS == 0 {
                return; // Without the intent the gateway simply does not answer.
            }
            if let Some(last) = self.member_requests.get(&guild_id)
                && now.saturating_sub(*last) < Duration::from_secs(30)
            {
                let retry = 30.0 - now.saturating_sub(*last).as_secs_f64();
                let d = raw(
                    &json!({"opcode": 8, "retry_after": retry, "meta": {"guild_id": guild_id.to_string(), "nonce": nonce}}),
                );
                self.dispatch(session_id, "RATE_LIMITED", &d, None, out);
                return;
            }
            self.member_requests.insert(guild_id, now);
        }
        let joined_at = world::iso8601(SystemTime::now());
        let mut not_found = Vec::new();
        let members: Vec<Value> = if let Some(ids) = &user_ids {
            ids.iter()
                .take(100)
                .filter_map(|id| {
                    let m = guild
                        .has_member(*id)
                        .then(|| self.world.member_json(&guild, *id, &joined_at));
                    if m.is_none() {
                        not_found.push(id.to_string());
                    }
                    m
                })
                .collect()
        } else {
            let prefix = query.unwrap_or("");
            let cap = if all_members {
                usize::MAX
            } else {
                limit.clamp(1, 100)
            };
            guild
                .member_ids()
                .filter(|id| {
                    self.world
                        .username(*id)
                        .is_some_and(|n| n.starts_with(prefix))
                })
                .take(cap)
                .map(|id| self.world.member_json(&guild, id, &joined_at))
                .collect()
        };
        self.stats.member_requests += 1;
        let chunks: Vec<&[Value]> = if members.is_empty() {
            vec![&[]]
        } else {
            members.chunks(1000).collect()
        };
        let count = chunks.len();
        for (index, chunk) in chunks.into_iter().enumerate() {
            let mut d = json!({
                "guild_id": guild_id.to_string(),
                "members": chunk,
                "chunk_index": index,
                "chunk_count": count,
            });
            if index == 0 && !not_found.is_empty() {
                d["not_found"] = json!(not_found);
            }
            if let Some(nonce) = &nonce {
                d["nonce"] = Value::String(nonce.clone());
            }
            self.dispatch(session_id, "GUILD_MEMBERS_CHUNK", &raw(&d), None, out);
        }
    }

    // ---- session bookkeeping -------------------------------------------------------------

    /// Sends a dispatch on a session: next sequence, into the replay buffer, and to its connection
    /// if one holds it.
    fn dispatch(
        &mut self,
        session_id: &str,
        event: &str,
        d: &RawValue,
        event_n: Option<u64>,
        out: &mut Vec<Action>,
    ) {
        self.dispatch_kept(session_id, event, d, event_n, None, out);
    }

    /// [`dispatch`](Self::dispatch), keeping `kept` for replay instead of the frame when given.
    fn dispatch_kept(
        &mut self,
        session_id: &str,
        event: &str,
        d: &RawValue,
        event_n: Option<u64>,
        kept: Option<Replay>,
        out: &mut Vec<Action>,
    ) {
        let Some(session) = self.sessions.get_mut(session_id) else {
            return;
        };
        session.seq += 1;
        let seq = session.seq;
        if session.replay.len() >= self.config.replay_capacity {
            session.replay.pop_front();
        }
        if let Some(n) = event_n {
            session.unconfirmed.push_back((seq, n));
            session.events_sent += 1;
        }
        // The frame is written only for a connection to send it to or a replay that keeps it.
        let frame = || Envelope::dispatch(event, seq, d);
        let (sent, kept) = match (kept, session.conn) {
            (Some(kept), Some(_)) => (Some(frame()), kept),
            (Some(kept), None) => (None, kept),
            (None, Some(_)) => {
                let text = frame();
                (Some(text.clone()), Replay::Frame(text))
            }
            (None, None) => (None, Replay::Frame(frame())),
        };
        if let (Some(conn), Some(text)) = (session.conn, sent) {
            self.stats.dispatches_sent += 1;
            out.push(Action::Send { conn, text });
        }
        session.replay.push_back((seq, kept));
    }

    /// Sends guild `k`'s `GUILD_CREATE` on a session, as [`dispatch`](Self::dispatch) does, but
    /// keeps only which guild it was for replay.
    fn dispatch_guild_create(
        &mut self,
        session_id: &str,
        k: usize,
        members: bool,
        out: &mut Vec<Action>,
    ) {
        let Some(session) = self.sessions.get_mut(session_id) else {
            return;
        };
        session.seq += 1;
        if session.replay.len() >= self.config.replay_capacity {
            session.replay.pop_front();
        }
        if let Some(conn) = session.conn {
            let guild = self.world.guild_at(k);
            let payload = self.world.create_payload(&guild, members);
            self.stats.dispatches_sent += 1;
            out.push(Action::Send {
                conn,
                text: Envelope::dispatch("GUILD_CREATE", session.seq, &payload),
            });
        }
        session
            .replay
            .push_back((session.seq, Replay::GuildCreate(k, members)));
    }

    /// The client confirmed every dispatch up to `seq`.
    fn confirm(&mut self, session_id: &str, seq: u64) {
        let Some(session) = self.sessions.get_mut(session_id) else {
            return;
        };
        if seq <= session.acked || seq > session.seq {
            return;
        }
        session.acked = seq;
        while let Some((s, n)) = session.unconfirmed.front().copied() {
            if s > seq {
                break;
            }
            session.unconfirmed.pop_front();
            session.events_acked += 1;
            self.confirmations[(n - self.settled_below) as usize] += 1;
        }
    }

    fn detach(&mut self, session_id: &str, now: Duration) {
        if let Some(session) = self.sessions.get_mut(session_id) {
            session.conn = None;
            session.detached_at = now;
        }
    }

    fn end_session(&mut self, session_id: &str) {
        let Some(session) = self.sessions.remove(session_id) else {
            return;
        };
        let [shard_id, total] = session.shard;
        if let Some(shards) = self.routes.get_mut(&total) {
            if let Some(ids) = shards.get_mut(&shard_id) {
                ids.retain(|id| id != session_id);
                if ids.is_empty() {
                    shards.remove(&shard_id);
                }
            }
            if shards.is_empty() {
                self.routes.remove(&total);
            }
        }
        if let Some(conn) = session.conn
            && let Some(c) = self.conns.get_mut(&conn)
        {
            c.auth = Auth::Invalidated;
        }
    }

    fn tick_budget(&mut self, now: Duration) {
        while now >= self.budget_resets_at {
            self.budget_remaining = self.config.session_limit;
            self.budget_resets_at += self.config.session_limit_reset;
        }
    }

    /// Identify with no budget left: Discord ends every session and resets the token.
    fn exhaust_budget(&mut self, now: Duration, out: &mut Vec<Action>) {
        *self
            .stats
            .violations
            .entry(Violation::SessionLimitExhausted)
            .or_default() += 1;
        self.stats.token_reset = true;
        let conns: Vec<ConnId> = self.conns.keys().copied().collect();
        for conn in conns {
            self.close(conn, now, CloseCode::AuthenticationFailed.as_u16(), out);
        }
        let sessions: Vec<String> = self.sessions.keys().cloned().collect();
        for session in sessions {
            self.end_session(&session);
        }
    }

    fn violate(
        &mut self,
        conn: ConnId,
        now: Duration,
        kind: Violation,
        code: CloseCode,
        out: &mut Vec<Action>,
    ) {
        *self.stats.violations.entry(kind).or_default() += 1;
        self.close(conn, now, code.as_u16(), out);
    }

    /// The mock closes a connection. The session survives codes that keep it (see
    /// [`CloseCode::keeps_session`]; unknown codes keep it too) and ends otherwise.
    fn close(&mut self, conn: ConnId, now: Duration, code: u16, out: &mut Vec<Action>) {
        let Some(state) = self.conns.remove(&conn) else {
            return;
        };
        if let Auth::Session(session) = state.auth {
            if CloseCode::from_u16(code).is_none_or(CloseCode::keeps_session) {
                self.detach(&session, now);
            } else {
                self.end_session(&session);
            }
        }
        self.send_close(conn, code, out);
    }

    fn send_close(&mut self, conn: ConnId, code: u16, out: &mut Vec<Action>) {
        *self.stats.closes_sent.entry(code).or_default() += 1;
        let reason = CloseCode::from_u16(code)
            .map_or("", CloseCode::reason)
            .to_owned();
        out.push(Action::Close { conn, code, reason });
    }
}

/// A message as a session without `MESSAGE_CONTENT` receives it, unless it mentions the bot or
/// is a DM (Gateway › Gateway Intents › Message Content Intent).
pub(crate) fn without_content(message: &Value) -> Value {
    let mentions_bot = message["mentions"].as_array().is_some_and(|m| {
        m.iter()
            .any(|u| u["id"].as_str() == Some(&BOT_USER_ID.to_string()))
    });
    if message.get("guild_id").is_none() || mentions_bot {
        return message.clone();
    }
    let mut message = message.clone();
    message["content"] = Value::String(String::new());
    for key in ["embeds", "attachments", "components"] {
        message[key] = json!([]);
    }
    if let Some(object) = message.as_object_mut() {
        object.remove("poll");
    }
    message
}

/// `[shard_id, num_shards]` from identify; absent means `[0, 1]`.
fn parse_shard(value: &Value) -> Option<[u32; 2]> {
    if value.is_null() {
        return Some([0, 1]);
    }
    let array = value.as_array().filter(|a| a.len() == 2)?;
    let id = u32::try_from(array[0].as_u64()?).ok()?;
    let total = u32::try_from(array[1].as_u64()?).ok()?;
    (total > 0 && id < total).then_some([id, total])
}

#[cfg(test)]
mod tests;
