//! A shard's cached guilds, handed over with its session: the old process writes each guild of
//! the shard as a `GUILD_CREATE` payload (the cached guild with its channels, roles, emojis and
//! members), and the replacement feeds them to its cache before it resumes, so lookups answer
//! from the first moment. Voice states, presences, stickers and threads are not carried: they
//! fill again from events.

use twilight_model::gateway::payload::incoming::GuildCreate;
use twilight_model::guild::{Emoji, Guild};
use twilight_model::id::Id;
use twilight_model::id::marker::GuildMarker;

use crate::cache::Cache;

/// The cached guilds of shard `shard` of `shard_total`, each as Discord's JSON.
pub(crate) fn cached_guilds(cache: &Cache, shard: u32, shard_total: u32) -> Vec<String> {
    let total = u64::from(shard_total.max(1));
    let ids: Vec<Id<GuildMarker>> = cache
        .iter()
        .guilds()
        .map(|g| g.id)
        .filter(|id| (id.get() >> 22) % total == u64::from(shard))
        .collect();
    ids.into_iter()
        .filter_map(|id| serde_json::to_string(&guild_model(cache, id)?).ok())
        .collect()
}

/// Feeds handed-over guilds to the cache; returns how many it took.
pub(crate) fn restore(cache: &Cache, guilds: &[String]) -> usize {
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

/// A cached guild as twilight's model, with its cached channels, roles, emojis and members.
pub(crate) fn guild_model(cache: &Cache, id: Id<GuildMarker>) -> Option<Guild> {
    let guild = cache.guild(id)?.value().clone();
    let channels = cache.guild_channels(id).map_or_else(Vec::new, |ids| {
        ids.iter()
            .filter_map(|c| Some(cache.channel(*c)?.to_model()))
            .collect()
    });
    let roles = cache.guild_roles(id).map_or_else(Vec::new, |ids| {
        ids.iter()
            .filter_map(|r| Some(cache.role(*r)?.resource().to_model()))
            .collect()
    });
    let members = cache.guild_members(id).map_or_else(Vec::new, |ids| {
        ids.iter()
            .filter_map(|user| {
                let member = cache.member(id, *user)?;
                Some(member.to_model(cache.user(*user)?.to_model()))
            })
            .collect()
    });
    let emojis: Vec<Emoji> = cache.guild_emojis(id).map_or_else(Vec::new, |ids| {
        ids.iter()
            .filter_map(|e| {
                let mut emoji = serde_json::to_value(cache.emoji(*e)?.resource()).ok()?;
                emoji.as_object_mut()?.remove("user_id");
                serde_json::from_value(emoji).ok()
            })
            .collect()
    });
    let mut model = guild.to_model(channels, roles, members);
    model.emojis = emojis;
    Some(model)
}
