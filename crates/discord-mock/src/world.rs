//! The bot's world: its user, its guilds with channels, roles and members, and the payloads built
//! from them. Nothing of it is stored but the figures of the configuration and the users the event
//! source adds: every id follows from a guild's index, and every payload is made when it is sent,
//! so a million guilds cost no more memory than ten.
//!
//! Ids are real snowflakes. Guild `k` has the timestamp `GUILD_BASE + k`, and `GUILD_BASE` is a
//! multiple of 720 720 (divisible by every number up to 16), so guild `k` lives on shard
//! `k % num_shards` for every shard total that divides 720 720 and spreads evenly for all others.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::value::RawValue;
use serde_json::{Value, json};

use crate::config::MockConfig;

/// Discord's epoch (2015-01-01) in Unix milliseconds.
pub const DISCORD_EPOCH_MS: u64 = 1_420_070_400_000;
/// Snowflake timestamp of guild 0 (ms after Discord's epoch; early 2024).
const GUILD_BASE: u64 = 720_720 * 400_000;
/// Channel snowflakes start here.
const CHANNEL_BASE: u64 = GUILD_BASE + 10_000_000_000;
/// Member user snowflakes start here.
const USER_BASE: u64 = GUILD_BASE + 20_000_000_000;

/// The bot's own user id (and application id).
pub const BOT_USER_ID: u64 = (GUILD_BASE - 1_000_000) << 22;

/// Id of the `k`-th guild.
#[must_use]
pub const fn guild_id(k: usize) -> u64 {
    (GUILD_BASE + k as u64) << 22
}

/// The shard that owns a guild: `(guild_id >> 22) % num_shards` (Gateway › Sharding).
#[must_use]
pub const fn shard_for_guild(guild_id: u64, num_shards: u32) -> u32 {
    ((guild_id >> 22) % num_shards as u64) as u32
}

/// A snowflake made `ms` after Discord's epoch, with `low` in its low 22 bits (worker, process,
/// increment).
#[must_use]
pub const fn snowflake(ms: u64, low: u64) -> u64 {
    (ms << 22) | (low & 0x3F_FFFF)
}

/// One guild of the world: a view computed from its index. The world stores no guild: ids,
/// channels and members follow from the index, so a million guilds cost no memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Guild {
    /// Guild id.
    pub id: u64,
    /// Its place in the world, from 0.
    pub index: usize,
    /// Text channels; a voice channel follows them.
    pub text_channels: usize,
    /// Members besides the bot.
    others: usize,
}

impl Guild {
    /// Text and voice channels.
    #[must_use]
    pub const fn channel_count(&self) -> usize {
        self.text_channels + 1
    }

    /// The `j`-th channel's id (text channels first).
    #[must_use]
    pub const fn channel(&self, j: usize) -> u64 {
        (CHANNEL_BASE + (self.index * self.channel_count() + j) as u64) << 22
    }

    /// Every channel id, text channels first.
    pub fn channel_ids(&self) -> impl Iterator<Item = u64> + use<> {
        let guild = *self;
        (0..guild.channel_count()).map(move |j| guild.channel(j))
    }

    /// Members, the bot included.
    #[must_use]
    pub const fn member_count(&self) -> usize {
        self.others + 1
    }

    /// The `i`-th member's user id: the bot first.
    #[must_use]
    pub const fn member(&self, i: usize) -> u64 {
        if i == 0 {
            BOT_USER_ID
        } else {
            (USER_BASE + (self.index * self.others + i - 1) as u64) << 22
        }
    }

    /// Every member's user id, the bot first.
    pub fn member_ids(&self) -> impl Iterator<Item = u64> + use<> {
        let guild = *self;
        (0..guild.member_count()).map(move |i| guild.member(i))
    }

    /// Whether `user` is a member.
    #[must_use]
    pub fn has_member(&self, user: u64) -> bool {
        user == BOT_USER_ID || static_user(user, self.others).is_some_and(|(k, _)| k == self.index)
    }
}

/// A guild's JSON with the places where ids and names go: made of guild 0's, filled for any.
#[derive(Debug, Clone, Default)]
struct Template(Vec<Piece>);

#[derive(Debug, Clone)]
enum Piece {
    Text(String),
    /// The guild id plus this (its roles' ids: `id` and `id + 1`).
    Guild(u64),
    Channel(usize),
    Member(usize),
    GuildName,
    UserName(usize),
}

impl Template {
    /// Splits `json`, guild `model`'s (index 0), at every quoted id and name of the guild.
    fn of(json: &str, model: &Guild) -> Self {
        let quoted = |text: String| format!("\"{text}\"");
        let mut tokens: Vec<(String, Piece)> = vec![
            (quoted(model.id.to_string()), Piece::Guild(0)),
            (quoted((model.id + 1).to_string()), Piece::Guild(1)),
            (quoted("Mock Guild 0".to_owned()), Piece::GuildName),
        ];
        for j in 0..model.channel_count() {
            tokens.push((quoted(model.channel(j).to_string()), Piece::Channel(j)));
        }
        for i in 1..model.member_count() {
            tokens.push((quoted(model.member(i).to_string()), Piece::Member(i)));
            tokens.push((quoted(format!("user-0-{}", i - 1)), Piece::UserName(i - 1)));
        }
        Self(split_at(json, &tokens, Piece::Text))
    }

    fn render(&self, guild: &Guild) -> String {
        use std::fmt::Write as _;
        let mut out = String::with_capacity(4096);
        for piece in &self.0 {
            // Writing to a String cannot fail.
            let _ = match piece {
                Piece::Text(text) => {
                    out.push_str(text);
                    Ok(())
                }
                Piece::Guild(plus) => write!(out, "\"{}\"", guild.id + plus),
                Piece::Channel(j) => write!(out, "\"{}\"", guild.channel(*j)),
                Piece::Member(i) => write!(out, "\"{}\"", guild.member(*i)),
                Piece::GuildName => write!(out, "\"Mock Guild {}\"", guild.index),
                Piece::UserName(m) => write!(out, "\"user-{}-{m}\"", guild.index),
            };
        }
        out
    }
}

/// Splits `json` at every occurrence of a token, into the text between and each token's piece;
/// at one place the longest token wins.
fn split_at<P: Clone>(json: &str, tokens: &[(String, P)], text: impl Fn(String) -> P) -> Vec<P> {
    let mut pieces = Vec::new();
    let mut rest = json;
    loop {
        let next = tokens
            .iter()
            .filter_map(|(token, piece)| rest.find(token.as_str()).map(|at| (at, token, piece)))
            .min_by_key(|(at, token, _)| (*at, std::cmp::Reverse(token.len())));
        let Some((at, token, piece)) = next else {
            pieces.push(text(rest.to_owned()));
            break;
        };
        pieces.push(text(rest[..at].to_owned()));
        pieces.push(piece.clone());
        rest = &rest[at + token.len()..];
    }
    pieces
}

/// What an event-source message's JSON is filled with.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MessageFields<'a> {
    pub id: u64,
    pub guild: u64,
    pub channel: u64,
    /// The author's user object, as JSON text.
    pub author: &'a str,
    pub content: &'a str,
}

/// A guild message's JSON made of a model's with every varying place marked, so a message is
/// written as text between fixed pieces, with no JSON value built: the event source's hot path.
#[derive(Debug, Clone, Default)]
struct MessageTemplate(Vec<MessagePiece>);

#[derive(Debug, Clone)]
enum MessagePiece {
    Text(String),
    Id,
    Guild,
    Channel,
    Author,
    Content,
    Timestamp,
}

impl MessageTemplate {
    /// The marks the model is made with, each a JSON string of its own.
    const MARKS: [(&'static str, MessagePiece); 6] = [
        ("\u{1}id", MessagePiece::Id),
        ("\u{1}guild", MessagePiece::Guild),
        ("\u{1}channel", MessagePiece::Channel),
        ("\u{1}author", MessagePiece::Author),
        ("\u{1}content", MessagePiece::Content),
        ("\u{1}timestamp", MessagePiece::Timestamp),
    ];

    /// Both templates: with content, and blanked as a session without `MESSAGE_CONTENT` gets it.
    fn pair(joined_at: &str) -> (Self, Self) {
        let [id, guild, channel, author, content, timestamp] = Self::MARKS.map(|(mark, _)| mark);
        let model = message_value(
            id,
            Some(guild),
            channel,
            &Value::String(author.to_owned()),
            content,
            timestamp,
            joined_at,
        );
        let blank = crate::gateway::without_content(&model);
        (Self::of(&model), Self::of(&blank))
    }

    fn of(model: &Value) -> Self {
        let tokens: Vec<(String, MessagePiece)> = Self::MARKS
            .iter()
            .map(|(mark, piece)| (Value::String((*mark).to_owned()).to_string(), piece.clone()))
            .collect();
        Self(split_at(&model.to_string(), &tokens, MessagePiece::Text))
    }

    fn render(&self, fields: &MessageFields<'_>) -> String {
        use std::fmt::Write as _;
        let mut out = String::with_capacity(1024);
        for piece in &self.0 {
            // Writing to a String cannot fail.
            let _ = match piece {
                MessagePiece::Text(text) => {
                    out.push_str(text);
                    Ok(())
                }
                MessagePiece::Id => write!(out, "\"{}\"", fields.id),
                MessagePiece::Guild => write!(out, "\"{}\"", fields.guild),
                MessagePiece::Channel => write!(out, "\"{}\"", fields.channel),
                MessagePiece::Author => {
                    out.push_str(fields.author);
                    Ok(())
                }
                MessagePiece::Content => {
                    out.push_str(&serde_json::to_string(fields.content).unwrap_or_default());
                    Ok(())
                }
                MessagePiece::Timestamp => write!(out, "\"{}\"", snowflake_time(fields.id)),
            };
        }
        out
    }
}

/// When a snowflake was made, as Discord's ISO 8601 timestamps: a message's `timestamp` is its
/// id's time.
#[must_use]
pub fn snowflake_time(id: u64) -> String {
    iso8601(UNIX_EPOCH + std::time::Duration::from_millis((id >> 22) + DISCORD_EPOCH_MS))
}

/// `(guild index, member index)` of a generated member's user id, when `per_guild` members are
/// generated per guild.
fn static_user(user: u64, per_guild: usize) -> Option<(usize, usize)> {
    let n = (user >> 22).checked_sub(USER_BASE)?;
    if user.trailing_zeros() < 22 || per_guild == 0 {
        return None;
    }
    let n = usize::try_from(n).ok()?;
    Some((n / per_guild, n % per_guild))
}

/// Users who joined through the event source that the world remembers (for `GET /users/{id}`
/// and member lookups): the newest ones.
pub const JOINED_KEPT: usize = 100_000;

/// Everything the mock knows about the bot's guilds and users.
#[derive(Debug, Clone)]
pub struct World {
    guilds: usize,
    channels_per_guild: usize,
    members_per_guild: usize,
    /// Users the event source added, by id: the newest [`JOINED_KEPT`].
    joined: HashMap<u64, String>,
    /// Their ids, oldest first.
    joined_order: std::collections::VecDeque<u64>,
    /// When every generated member joined.
    joined_at: String,
    /// `GUILD_CREATE` templates: with every member, and with the bot only.
    templates: Arc<(Template, Template)>,
    /// Event-source message templates: with content, and blanked.
    messages: Arc<(MessageTemplate, MessageTemplate)>,
}

impl World {
    /// Builds the world a configuration describes.
    #[must_use]
    pub fn new(config: &MockConfig) -> Self {
        let mut world = Self {
            guilds: config.guilds,
            channels_per_guild: config.channels_per_guild,
            members_per_guild: config.members_per_guild,
            joined: HashMap::new(),
            joined_order: std::collections::VecDeque::new(),
            joined_at: iso8601(SystemTime::now()),
            templates: Arc::default(),
            messages: Arc::default(),
        };
        let model = Guild {
            id: guild_id(0),
            index: 0,
            text_channels: world.channels_per_guild,
            others: world.members_per_guild,
        };
        let full = world.build_create_payload(&model, true).to_string();
        let lean = world.build_create_payload(&model, false).to_string();
        world.templates = Arc::new((Template::of(&full, &model), Template::of(&lean, &model)));
        world.messages = Arc::new(MessageTemplate::pair(&world.joined_at));
        world
    }

    /// A guild message of the event source's, as [`message_json`] makes it (its member joined
    /// when every generated member did), `blank` as a session without `MESSAGE_CONTENT` gets
    /// it; written from a template.
    ///
    /// # Panics
    /// Never: a template of valid JSON filled with valid JSON is valid JSON (a test checks it).
    pub(crate) fn event_message(&self, fields: &MessageFields<'_>, blank: bool) -> Box<RawValue> {
        let template = if blank {
            &self.messages.1
        } else {
            &self.messages.0
        };
        RawValue::from_string(template.render(fields))
            .expect("a template of valid JSON renders valid JSON")
    }

    /// How many guilds there are.
    #[must_use]
    pub const fn guild_count(&self) -> usize {
        self.guilds
    }

    /// The `k`-th guild.
    ///
    /// # Panics
    /// If there is no such guild.
    #[must_use]
    pub fn guild_at(&self, k: usize) -> Guild {
        assert!(k < self.guilds, "guild {k} of {}", self.guilds);
        Guild {
            id: guild_id(k),
            index: k,
            text_channels: self.channels_per_guild,
            others: self.members_per_guild,
        }
    }

    /// Every guild, in id order.
    pub fn guilds(&self) -> impl Iterator<Item = Guild> + '_ {
        (0..self.guilds).map(|k| self.guild_at(k))
    }

    /// The guild with this id.
    #[must_use]
    pub fn guild(&self, id: u64) -> Option<Guild> {
        let k = (id >> 22).checked_sub(GUILD_BASE)?;
        let k = usize::try_from(k).ok()?;
        (id.trailing_zeros() >= 22 && k < self.guilds).then(|| self.guild_at(k))
    }

    /// Guilds whose id is greater than `after`, in id order (a page of `/users/@me/guilds`).
    pub fn guilds_after(&self, after: u64) -> impl Iterator<Item = Guild> + '_ {
        let first = ((after >> 22) + 1).saturating_sub(GUILD_BASE);
        (usize::try_from(first).unwrap_or(usize::MAX)..self.guilds).map(|k| self.guild_at(k))
    }

    /// Guilds a shard `[id, total]` owns: every `total`-th from the first it owns.
    pub fn guilds_of_shard(&self, shard: u32, total: u32) -> impl Iterator<Item = Guild> + '_ {
        let total = u64::from(total.max(1));
        let first = (u64::from(shard) + total - GUILD_BASE % total) % total;
        (usize::try_from(first).unwrap_or(usize::MAX)..self.guilds)
            .step_by(usize::try_from(total).unwrap_or(usize::MAX))
            .map(|k| self.guild_at(k))
    }

    /// Username of a known user.
    #[must_use]
    pub fn username(&self, id: u64) -> Option<String> {
        if id == BOT_USER_ID {
            return Some("fleet-mock-bot".to_owned());
        }
        if let Some(name) = self.joined.get(&id) {
            return Some(name.clone());
        }
        static_user(id, self.members_per_guild)
            .filter(|(k, _)| *k < self.guilds)
            .map(|(k, m)| format!("user-{k}-{m}"))
    }

    /// Records a user that joined through the event source; beyond [`JOINED_KEPT`] the oldest
    /// is forgotten, so a long run's memory stays bounded.
    pub fn add_user(&mut self, id: u64, name: String) {
        if self.joined.insert(id, name).is_none() {
            self.joined_order.push_back(id);
        }
        while self.joined_order.len() > JOINED_KEPT {
            if let Some(oldest) = self.joined_order.pop_front() {
                self.joined.remove(&oldest);
            }
        }
    }

    /// The bot's user object as `READY` and `/users/@me` carry it.
    #[must_use]
    pub fn bot_user() -> Value {
        json!({
            "id": BOT_USER_ID.to_string(),
            "username": "fleet-mock-bot",
            "discriminator": "0",
            "global_name": null,
            "avatar": null,
            "bot": true,
            "system": false,
            "mfa_enabled": false,
            "verified": true,
            "flags": 0,
            "public_flags": 0,
            "email": null,
        })
    }

    /// A user object, if the user is known.
    #[must_use]
    pub fn user(&self, id: u64) -> Option<Value> {
        if id == BOT_USER_ID {
            return Some(Self::bot_user());
        }
        self.username(id).map(|name| user_json(id, &name))
    }

    /// A guild object as `GET /guilds/{id}` returns it.
    #[must_use]
    pub fn guild_json(&self, guild: &Guild) -> Value {
        let k = guild.index;
        let owner = if guild.member_count() > 1 {
            guild.member(1)
        } else {
            BOT_USER_ID
        };
        json!({
            "id": guild.id.to_string(),
            "name": format!("Mock Guild {k}"),
            "icon": null,
            "icon_hash": null,
            "splash": null,
            "discovery_splash": null,
            "owner_id": owner.to_string(),
            "afk_channel_id": null,
            "afk_timeout": 300,
            "widget_enabled": false,
            "verification_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "roles": [
                role_json(guild.id, "@everyone", 0, "1049600"),
                role_json(guild.id + 1, "member", 1, "1071698660928"),
            ],
            "emojis": [],
            "stickers": [],
            "features": [],
            "mfa_level": 0,
            "application_id": null,
            "system_channel_id": guild.channel(0).to_string(),
            "system_channel_flags": 0,
            "rules_channel_id": null,
            "max_members": 500_000,
            "vanity_url_code": null,
            "description": null,
            "banner": null,
            "premium_tier": 0,
            "premium_subscription_count": 0,
            "preferred_locale": "en-US",
            "public_updates_channel_id": null,
            "nsfw_level": 0,
            "nsfw": false,
            "premium_progress_bar_enabled": false,
            "safety_alerts_channel_id": null,
        })
    }

    /// The `GUILD_CREATE` payload of a guild, made when it is sent: every member with
    /// `members`, else only the bot (a session without `GUILD_MEMBERS`); `member_count` counts
    /// everyone either way.
    ///
    /// It is rendered from a template made once of guild 0's payload (every guild's payload has
    /// the same shape; only ids and names differ), some nine times faster than building it.
    ///
    /// # Panics
    /// Never: a template of valid JSON renders valid JSON (a test renders and parses them).
    #[must_use]
    pub fn create_payload(&self, guild: &Guild, members: bool) -> Box<RawValue> {
        let template = if members {
            &self.templates.0
        } else {
            &self.templates.1
        };
        RawValue::from_string(template.render(guild))
            .expect("a template of valid JSON renders valid JSON")
    }

    /// [`create_payload`](Self::create_payload) built value by value: what the templates are
    /// made of, and checked against.
    fn build_create_payload(&self, guild: &Guild, members: bool) -> Value {
        let joined_at = &self.joined_at;
        let listed: Vec<Value> = if members {
            guild
                .member_ids()
                .map(|m| self.member_json(guild, m, joined_at))
                .collect()
        } else {
            vec![self.member_json(guild, BOT_USER_ID, joined_at)]
        };
        let mut value = self.guild_json(guild);
        let extra = json!({
            "joined_at": joined_at,
            "large": false,
            "unavailable": false,
            "member_count": guild.member_count(),
            "voice_states": [],
            "members": listed,
            "channels": (0..guild.channel_count()).map(|j| channel_json(guild, j, false)).collect::<Vec<_>>(),
            "threads": [],
            "presences": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
            "soundboard_sounds": [],
        });
        merge(&mut value, extra);
        value
    }

    /// Every channel of a guild, as `GET /guilds/{id}/channels` lists them.
    #[must_use]
    pub fn guild_channels(&self, guild: &Guild) -> Value {
        (0..guild.channel_count())
            .map(|j| channel_json(guild, j, true))
            .collect()
    }

    /// The guild that holds a channel, and the channel's place in it.
    fn locate_channel(&self, channel: u64) -> Option<(Guild, usize)> {
        let n = (channel >> 22).checked_sub(CHANNEL_BASE)?;
        let n = usize::try_from(n).ok()?;
        let per_guild = self.channels_per_guild + 1;
        let k = n / per_guild;
        (channel.trailing_zeros() >= 22 && k < self.guilds)
            .then(|| (self.guild_at(k), n % per_guild))
    }

    /// A channel object, if the channel is known.
    #[must_use]
    pub fn channel(&self, id: u64) -> Option<Value> {
        let (guild, j) = self.locate_channel(id)?;
        Some(channel_json(&guild, j, true))
    }

    /// The guild that holds a channel.
    #[must_use]
    pub fn guild_of_channel(&self, channel: u64) -> Option<Guild> {
        self.locate_channel(channel).map(|(guild, _)| guild)
    }

    /// A guild member object, if the user is a member of the guild.
    #[must_use]
    pub fn member(&self, guild: &Guild, user: u64) -> Option<Value> {
        guild
            .has_member(user)
            .then(|| self.member_json(guild, user, &self.joined_at))
    }

    /// A member object for a user of the guild.
    #[must_use]
    pub fn member_json(&self, guild: &Guild, user: u64, joined_at: &str) -> Value {
        let user_value = self
            .user(user)
            .unwrap_or_else(|| user_json(user, &format!("user-{user}")));
        json!({
            "user": user_value,
            "nick": null,
            "avatar": null,
            "roles": [(guild.id + 1).to_string()],
            "joined_at": joined_at,
            "premium_since": null,
            "deaf": false,
            "mute": false,
            "flags": 0,
            "pending": false,
        })
    }
}

/// A user object for a regular (non-bot) user.
#[must_use]
pub fn user_json(id: u64, name: &str) -> Value {
    json!({
        "id": id.to_string(),
        "username": name,
        "discriminator": "0",
        "global_name": name,
        "avatar": null,
        "bot": false,
        "public_flags": 0,
    })
}

fn role_json(id: u64, name: &str, position: i64, permissions: &str) -> Value {
    json!({
        "id": id.to_string(),
        "name": name,
        "color": 0,
        "colors": {"primary_color": 0, "secondary_color": null, "tertiary_color": null},
        "hoist": false,
        "icon": null,
        "unicode_emoji": null,
        "position": position,
        "permissions": permissions,
        "managed": false,
        "mentionable": false,
        "flags": 0,
    })
}

fn channel_json(guild: &Guild, index: usize, with_guild_id: bool) -> Value {
    let id = guild.channel(index);
    let voice = index >= guild.text_channels;
    let mut channel = if voice {
        json!({
            "id": id.to_string(),
            "type": 2,
            "name": "voice",
            "position": index,
            "permission_overwrites": [],
            "bitrate": 64_000,
            "user_limit": 0,
            "rtc_region": null,
            "parent_id": null,
            "nsfw": false,
            "rate_limit_per_user": 0,
        })
    } else {
        json!({
            "id": id.to_string(),
            "type": 0,
            "name": format!("text-{index}"),
            "position": index,
            "permission_overwrites": [],
            "topic": null,
            "nsfw": false,
            "last_message_id": null,
            "rate_limit_per_user": 0,
            "parent_id": null,
        })
    };
    if with_guild_id {
        merge(&mut channel, json!({"guild_id": guild.id.to_string()}));
    }
    channel
}

fn merge(into: &mut Value, extra: Value) {
    if let (Value::Object(into), Value::Object(extra)) = (into, extra) {
        into.extend(extra);
    }
}

/// A message object as `MESSAGE_CREATE` and `POST /channels/{id}/messages` carry it; its
/// `timestamp` is its id's time.
#[must_use]
pub fn message_json(
    id: u64,
    guild: Option<u64>,
    channel: u64,
    author: &Value,
    content: &str,
) -> Value {
    let guild = guild.map(|g| g.to_string());
    message_value(
        &id.to_string(),
        guild.as_deref(),
        &channel.to_string(),
        author,
        content,
        &snowflake_time(id),
        &iso8601(SystemTime::now()),
    )
}

/// [`message_json`] of its fields as text: what the event source's template is made of.
fn message_value(
    id: &str,
    guild: Option<&str>,
    channel: &str,
    author: &Value,
    content: &str,
    timestamp: &str,
    joined_at: &str,
) -> Value {
    let mut message = json!({
        "id": id,
        "channel_id": channel,
        "author": author,
        "content": content,
        "timestamp": timestamp,
        "edited_timestamp": null,
        "tts": false,
        "mention_everyone": false,
        "mentions": [],
        "mention_roles": [],
        "attachments": [],
        "embeds": [],
        "pinned": false,
        "type": 0,
        "flags": 0,
        "components": [],
    });
    if let Some(guild) = guild {
        merge(
            &mut message,
            json!({
                "guild_id": guild,
                "member": {
                    "roles": [], "joined_at": joined_at, "premium_since": null,
                    "deaf": false, "mute": false, "flags": 0, "pending": false, "nick": null, "avatar": null,
                },
            }),
        );
    }
    message
}

/// Formats a time as Discord's ISO 8601 timestamps (`2026-11-22T05:27:34.123000+00:00`).
#[must_use]
pub fn iso8601(time: SystemTime) -> String {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days.cast_signed());
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}+00:00",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_micros()
    )
}

/// Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn guilds_spread_evenly_over_any_small_shard_count() {
        let world = World::new(&MockConfig::builder().guilds(48).build());
        for total in 1..=16u32 {
            let mut counts = vec![0usize; total as usize];
            for g in world.guilds() {
                counts[shard_for_guild(g.id, total) as usize] += 1;
            }
            let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
            assert!(max - min <= 1, "total {total}: {counts:?}");
        }
    }

    #[test]
    fn a_shards_guilds_are_found_without_a_scan() {
        let world = World::new(&MockConfig::builder().guilds(100).build());
        for total in [1, 3, 7, 16, 1000] {
            for shard in 0..total.min(20) {
                let stepped: Vec<u64> = world.guilds_of_shard(shard, total).map(|g| g.id).collect();
                let scanned: Vec<u64> = world
                    .guilds()
                    .filter(|g| shard_for_guild(g.id, total) == shard)
                    .map(|g| g.id)
                    .collect();
                assert_eq!(stepped, scanned, "shard {shard} of {total}");
            }
        }
        let ids: Vec<u64> = world.guilds().map(|g| g.id).collect();
        let after: Vec<u64> = world.guilds_after(ids[41] + 1).map(|g| g.id).collect();
        assert_eq!(after, ids[42..]);
        assert_eq!(world.guilds_after(0).count(), 100);
    }

    #[test]
    fn ids_are_unique_and_indexed() {
        let world = World::new(&MockConfig::builder().guilds(20).build());
        let mut seen = std::collections::HashSet::new();
        for g in world.guilds() {
            assert!(seen.insert(g.id));
            assert_eq!(world.guild(g.id), Some(g));
            for c in g.channel_ids() {
                assert!(seen.insert(c));
                assert_eq!(world.guild_of_channel(c).unwrap().id, g.id);
                assert!(world.channel(c).is_some());
            }
            for m in g.member_ids().skip(1) {
                assert!(seen.insert(m));
                assert!(world.member(&g, m).is_some());
                assert!(world.username(m).is_some());
            }
        }
        assert!(!seen.contains(&BOT_USER_ID));
        assert!(world.user(BOT_USER_ID).is_some());
        // Ids next to the world's are nobody's.
        let last = world.guild_at(19);
        assert_eq!(world.guild(guild_id(20)), None);
        assert_eq!(
            world.guild_of_channel(last.channel(last.channel_count() - 1) + (1 << 22)),
            None
        );
        assert_eq!(world.guild(last.id + 1), None);
        assert!(!world.guild_at(0).has_member(last.member(1)));
    }

    #[test]
    fn rendered_guild_creates_are_the_built_ones() {
        for members in [0, 4, 12] {
            let config = MockConfig::builder()
                .guilds(30)
                .members_per_guild(members)
                .channels_per_guild(3)
                .build();
            let world = World::new(&config);
            for k in [0, 1, 7, 29] {
                let guild = world.guild_at(k);
                for all in [true, false] {
                    let rendered: Value =
                        serde_json::from_str(world.create_payload(&guild, all).get()).unwrap();
                    assert_eq!(
                        rendered,
                        world.build_create_payload(&guild, all),
                        "guild {k}"
                    );
                }
            }
        }
    }

    #[test]
    fn rendered_event_messages_are_the_built_ones() {
        let world = World::new(&MockConfig::builder().guilds(3).build());
        let guild = world.guild_at(2);
        let author = world.user(guild.member(1)).unwrap();
        let id = snowflake(1_000_000, 7);
        for content in ["event 12", "quote \" and \\ and \u{1} and é"] {
            let fields = MessageFields {
                id,
                guild: guild.id,
                channel: guild.channel(1),
                author: &author.to_string(),
                content,
            };
            let built = message_value(
                &id.to_string(),
                Some(&guild.id.to_string()),
                &guild.channel(1).to_string(),
                &author,
                content,
                &snowflake_time(id),
                &world.joined_at,
            );
            let full: Value =
                serde_json::from_str(world.event_message(&fields, false).get()).unwrap();
            assert_eq!(full, built);
            let blank: Value =
                serde_json::from_str(world.event_message(&fields, true).get()).unwrap();
            assert_eq!(blank, crate::gateway::without_content(&built));
        }
    }

    #[test]
    fn joined_users_beyond_the_newest_are_forgotten() {
        let mut world = World::new(&MockConfig::builder().guilds(1).build());
        for n in 0..=JOINED_KEPT as u64 {
            world.add_user(snowflake(2_000_000 + n, 0), format!("joined-{n}"));
        }
        assert_eq!(world.username(snowflake(2_000_000, 0)), None);
        assert_eq!(
            world.username(snowflake(2_000_001, 0)).as_deref(),
            Some("joined-1")
        );
        assert_eq!(world.joined.len(), JOINED_KEPT);
    }

    #[test]
    fn timestamps_are_iso8601() {
        let t = UNIX_EPOCH + Duration::from_millis(1_795_325_254_123);
        assert_eq!(iso8601(t), "2026-11-22T05:27:34.123000+00:00");
        assert_eq!(iso8601(UNIX_EPOCH), "1970-01-01T00:00:00.000000+00:00");
    }
}
