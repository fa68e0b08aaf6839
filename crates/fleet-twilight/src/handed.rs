//! A shard's cached guilds, handed over with its session: the old process writes each guild of
//! the shard as a `GUILD_CREATE` payload (the cached guild with its channels, roles, emojis and
//! members), and the replacement feeds them to its cache before it resumes, so lookups answer
//! from the first moment. Voice states, presences, stickers and threads are not carried: they
//! fill again from events.

use serde_json::Value;
use twilight_cache_inmemory::DefaultInMemoryCache;
use twilight_model::gateway::payload::incoming::GuildCreate;
use twilight_model::guild::Guild;
use twilight_model::id::Id;

/// The cached guilds of shard `shard` of `shard_total`, each as Discord's JSON.
pub(crate) fn cached_guilds(
    cache: &DefaultInMemoryCache,
    shard: u32,
    shard_total: u32,
) -> Vec<String> {
    let total = u64::from(shard_total.max(1));
    cache
        .iter()
        .guilds()
        .map(|g| g.id())
        .filter(|id| (id.get() >> 22) % total == u64::from(shard))
        .filter_map(|id| guild_json(cache, id).and_then(|v| serde_json::to_string(&v).ok()))
        .collect()
}

/// Feeds handed-over guilds to the cache; returns how many it took.
pub(crate) fn restore(cache: &DefaultInMemoryCache, guilds: &[String]) -> usize {
    let mut restored = 0;
    for json in guilds {
        match serde_json::from_str::<Guild>(json) {
            Ok(guild) => {
                cache.update(&GuildCreate::Available(guild));
                restored += 1;
            }
            Err(error) => {
                tracing::warn!(target: "fleet::restart", %error, "a handed-over guild did not decode; it fills from events");
            }
        }
    }
    restored
}

fn guild_json(
    cache: &DefaultInMemoryCache,
    id: Id<twilight_model::id::marker::GuildMarker>,
) -> Option<Value> {
    let mut guild = serde_json::to_value(cache.guild(id)?.value()).ok()?;
    let object = guild.as_object_mut()?;
    let channels = cache.guild_channels(id).map_or_else(Vec::new, |ids| {
        ids.iter()
            .filter_map(|c| serde_json::to_value(cache.channel(*c)?.value()).ok())
            .collect()
    });
    let roles = cache.guild_roles(id).map_or_else(Vec::new, |ids| {
        ids.iter()
            .filter_map(|r| serde_json::to_value(cache.role(*r)?.resource()).ok())
            .collect()
    });
    let emojis = cache.guild_emojis(id).map_or_else(Vec::new, |ids| {
        ids.iter()
            .filter_map(|e| {
                let mut emoji = serde_json::to_value(cache.emoji(*e)?.resource()).ok()?;
                emoji.as_object_mut()?.remove("user_id");
                Some(emoji)
            })
            .collect()
    });
    let members = cache.guild_members(id).map_or_else(Vec::new, |ids| {
        ids.iter()
            .filter_map(|user| {
                let mut member = serde_json::to_value(cache.member(id, *user)?.value()).ok()?;
                let fields = member.as_object_mut()?;
                fields.remove("user_id");
                fields.insert(
                    "user".into(),
                    serde_json::to_value(cache.user(*user)?.value()).ok()?,
                );
                for flag in ["deaf", "mute"] {
                    if fields.get(flag).is_none_or(Value::is_null) {
                        fields.insert(flag.into(), Value::Bool(false));
                    }
                }
                Some(member)
            })
            .collect()
    });
    object.insert("channels".into(), Value::Array(channels));
    object.insert("roles".into(), Value::Array(roles));
    object.insert("emojis".into(), Value::Array(emojis));
    object.insert("members".into(), Value::Array(members));
    for empty in [
        "presences",
        "stickers",
        "stage_instances",
        "threads",
        "voice_states",
    ] {
        object.insert(empty.into(), Value::Array(Vec::new()));
    }
    Some(guild)
}
