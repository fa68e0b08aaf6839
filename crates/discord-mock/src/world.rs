//! The bot's world: its user, its guilds with channels, roles and members, and the payloads built
//! from them. Generated once from the configuration; immutable afterwards except for users that the
//! event source adds.
//!
//! Ids are real snowflakes. Guild `k` has the timestamp `GUILD_BASE + k`, and `GUILD_BASE` is a
//! multiple of 720 720 (divisible by every number up to 16), so guild `k` lives on shard
//! `k % num_shards` for every shard total that divides 720 720 and spreads evenly for all others.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

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

/// One guild of the world.
#[derive(Debug, Clone)]
pub struct Guild {
    /// Guild id.
    pub id: u64,
    /// Text and voice channel ids; text channels first.
    pub channels: Vec<u64>,
    /// Text channels among [`channels`](Self::channels).
    pub text_channels: usize,
    /// Member user ids, the bot first.
    pub members: Vec<u64>,
    /// The full `GUILD_CREATE` payload.
    pub create_payload: Box<serde_json::value::RawValue>,
    /// `GUILD_CREATE` as a session without `GUILD_MEMBERS` gets it: the bot is the only member
    /// listed (`member_count` still counts everyone).
    pub lean_create_payload: Box<serde_json::value::RawValue>,
}

/// Everything the mock knows about the bot's guilds and users.
#[derive(Debug, Clone)]
pub struct World {
    /// Guilds in id order.
    pub guilds: Vec<Guild>,
    guild_index: HashMap<u64, usize>,
    channel_index: HashMap<u64, (usize, usize)>,
    user_index: HashMap<u64, String>,
}

impl World {
    /// Builds the world a configuration describes.
    #[must_use]
    pub fn new(config: &MockConfig) -> Self {
        let mut world = Self {
            guilds: Vec::with_capacity(config.guilds),
            guild_index: HashMap::new(),
            channel_index: HashMap::new(),
            user_index: HashMap::new(),
        };
        world
            .user_index
            .insert(BOT_USER_ID, "fleet-mock-bot".to_owned());
        let joined_at = iso8601(SystemTime::now());
        for k in 0..config.guilds {
            let id = guild_id(k);
            let text = config.channels_per_guild;
            let channels: Vec<u64> = (0..=text)
                .map(|j| (CHANNEL_BASE + (k * (text + 1) + j) as u64) << 22)
                .collect();
            let mut members = vec![BOT_USER_ID];
            for m in 0..config.members_per_guild {
                let user = (USER_BASE + (k * config.members_per_guild + m) as u64) << 22;
                world.user_index.insert(user, format!("user-{k}-{m}"));
                members.push(user);
            }
            for (j, channel) in channels.iter().enumerate() {
                world.channel_index.insert(*channel, (k, j));
            }
            world.guild_index.insert(id, k);
            let mut guild = Guild {
                id,
                channels,
                text_channels: text,
                members,
                create_payload: crate::protocol::raw(&Value::Null),
                lean_create_payload: crate::protocol::raw(&Value::Null),
            };
            let mut create = world.guild_create(&guild, &joined_at);
            guild.create_payload = crate::protocol::raw(&create);
            create["members"] = json!([world.member_json(&guild, BOT_USER_ID, &joined_at)]);
            guild.lean_create_payload = crate::protocol::raw(&create);
            world.guilds.push(guild);
        }
        world
    }

    /// The guild with this id.
    #[must_use]
    pub fn guild(&self, id: u64) -> Option<&Guild> {
        self.guild_index.get(&id).map(|k| &self.guilds[*k])
    }

    /// Guilds a shard `[id, total]` owns.
    pub fn guilds_of_shard(&self, shard: u32, total: u32) -> impl Iterator<Item = &Guild> {
        self.guilds
            .iter()
            .filter(move |g| shard_for_guild(g.id, total) == shard)
    }

    /// Username of a known user.
    #[must_use]
    pub fn username(&self, id: u64) -> Option<&str> {
        self.user_index.get(&id).map(String::as_str)
    }

    /// Records a user that joined through the event source.
    pub fn add_user(&mut self, id: u64, name: String) {
        self.user_index.insert(id, name);
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
        self.username(id).map(|name| user_json(id, name))
    }

    /// A guild object as `GET /guilds/{id}` returns it.
    #[must_use]
    pub fn guild_json(&self, guild: &Guild) -> Value {
        let k = self.guild_index[&guild.id];
        json!({
            "id": guild.id.to_string(),
            "name": format!("Mock Guild {k}"),
            "icon": null,
            "icon_hash": null,
            "splash": null,
            "discovery_splash": null,
            "owner_id": guild.members.get(1).unwrap_or(&BOT_USER_ID).to_string(),
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
            "system_channel_id": guild.channels[0].to_string(),
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

    fn guild_create(&self, guild: &Guild, joined_at: &str) -> Value {
        let mut value = self.guild_json(guild);
        let extra = json!({
            "joined_at": joined_at,
            "large": false,
            "unavailable": false,
            "member_count": guild.members.len(),
            "voice_states": [],
            "members": guild.members.iter().map(|m| self.member_json(guild, *m, joined_at)).collect::<Vec<_>>(),
            "channels": guild.channels.iter().enumerate().map(|(j, c)| channel_json(guild, j, *c, false)).collect::<Vec<_>>(),
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
        guild
            .channels
            .iter()
            .enumerate()
            .map(|(j, c)| channel_json(guild, j, *c, true))
            .collect()
    }

    /// A channel object, if the channel is known.
    #[must_use]
    pub fn channel(&self, id: u64) -> Option<Value> {
        let (k, j) = *self.channel_index.get(&id)?;
        Some(channel_json(&self.guilds[k], j, id, true))
    }

    /// The guild that holds a channel.
    #[must_use]
    pub fn guild_of_channel(&self, channel: u64) -> Option<&Guild> {
        self.channel_index
            .get(&channel)
            .map(|(k, _)| &self.guilds[*k])
    }

    /// A guild member object, if the user is a member of the guild.
    #[must_use]
    pub fn member(&self, guild: &Guild, user: u64) -> Option<Value> {
        guild
            .members
            .contains(&user)
            .then(|| self.member_json(guild, user, &iso8601(SystemTime::now())))
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

fn channel_json(guild: &Guild, index: usize, id: u64, with_guild_id: bool) -> Value {
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

/// A message object as `MESSAGE_CREATE` and `POST /channels/{id}/messages` carry it.
#[must_use]
pub fn message_json(
    id: u64,
    guild: Option<u64>,
    channel: u64,
    author: &Value,
    content: &str,
) -> Value {
    let mut message = json!({
        "id": id.to_string(),
        "channel_id": channel.to_string(),
        "author": author,
        "content": content,
        "timestamp": iso8601(SystemTime::now()),
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
                "guild_id": guild.to_string(),
                "member": {
                    "roles": [], "joined_at": iso8601(SystemTime::now()), "premium_since": null,
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
            for g in &world.guilds {
                counts[shard_for_guild(g.id, total) as usize] += 1;
            }
            let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
            assert!(max - min <= 1, "total {total}: {counts:?}");
        }
    }

    #[test]
    fn ids_are_unique_and_indexed() {
        let world = World::new(&MockConfig::builder().guilds(20).build());
        let mut seen = std::collections::HashSet::new();
        for g in &world.guilds {
            assert!(seen.insert(g.id));
            for c in &g.channels {
                assert!(seen.insert(*c));
                assert_eq!(world.guild_of_channel(*c).unwrap().id, g.id);
            }
            for m in &g.members[1..] {
                assert!(seen.insert(*m));
                assert!(world.member(g, *m).is_some());
            }
        }
        assert!(!seen.contains(&BOT_USER_ID));
        assert!(world.user(BOT_USER_ID).is_some());
    }

    #[test]
    fn timestamps_are_iso8601() {
        let t = UNIX_EPOCH + Duration::from_millis(1_795_325_254_123);
        assert_eq!(iso8601(t), "2026-11-22T05:27:34.123000+00:00");
        assert_eq!(iso8601(UNIX_EPOCH), "1970-01-01T00:00:00.000000+00:00");
    }
}
