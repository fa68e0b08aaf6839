//! Cache: what one guild costs a cluster's cache, by cache setting, by models (twilight's own and
//! fleet's lean ones) and by whether every member comes (`GUILD_MEMBERS`) or only the bot's own.
//! Each figure is measured in a fresh process (this binary with `cache-cost`): the growth of its
//! resident memory while the mock's `GUILD_CREATE` payloads for 50,000 guilds fill a cache, over
//! the guilds. The mock's guild has three channels, two roles and five members.

use std::fmt::Write as _;
use std::process::ExitCode;

use anyhow::{Context as _, Result, bail};
use discord_mock::MockConfig;
use discord_mock::world::World;
use fleet_examples::rss_mib;
use fleet_twilight::ResourceType;
use twilight_model::gateway::event::Event;
use twilight_model::gateway::payload::incoming::GuildCreate;

/// Guilds each measurement fills its cache with.
const GUILDS: usize = 50_000;

/// Guilds filled: [`GUILDS`], or `FLEET_BENCH_CACHE_GUILDS` (a cluster of a million-guild fleet
/// holds some 63,000; hash tables cost more per entry at some sizes than at others).
fn guilds() -> usize {
    super::env_count("FLEET_BENCH_CACHE_GUILDS").unwrap_or(GUILDS)
}

/// The settings measured: name, what the cache keeps.
fn settings() -> [(&'static str, ResourceType); 3] {
    let lean = ResourceType::GUILD | ResourceType::CHANNEL | ResourceType::ROLE;
    [
        ("default", lean | ResourceType::MEMBER | ResourceType::USER),
        ("lean", lean),
        ("off", ResourceType::empty()),
    ]
}

/// Prints the table.
pub async fn figures() -> Result<()> {
    println!(
        "cache: bytes per guild ({} of the mock's guilds: 3 channels, 2 roles, 5 members)",
        guilds()
    );
    for members in ["every member", "the bot only"] {
        for (setting, _) in settings() {
            let mut line = format!("  {setting:>7}, {members}:");
            for models in ["twilight", "fleet"] {
                let bytes = measure(models, setting, members == "every member").await?;
                write!(line, " {models} models {bytes:>6.0}")?;
            }
            println!("{line}");
        }
    }
    Ok(())
}

async fn measure(models: &str, setting: &str, members: bool) -> Result<f64> {
    let output = tokio::process::Command::new(std::env::current_exe()?)
        .args([
            "cache-cost",
            models,
            setting,
            if members { "all" } else { "bot" },
        ])
        .output()
        .await?;
    if !output.status.success() {
        bail!(
            "cache-cost failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    String::from_utf8(output.stdout)?
        .trim()
        .parse()
        .context("cache-cost prints bytes per guild")
}

/// The measuring process: `cache-cost MODELS SETTING MEMBERS`; prints bytes per guild.
pub fn serve(args: &[String]) -> Result<ExitCode> {
    let [models, setting, members] = args else {
        bail!("cache-cost twilight|fleet default|lean|off all|bot");
    };
    let kinds = settings()
        .into_iter()
        .find(|(name, _)| name == setting)
        .context("unknown setting")?
        .1;
    let guilds = guilds();
    let world = World::new(&MockConfig::builder().guilds(guilds).build());
    let every = members == "all";
    let payloads = world.guilds().map(|g| world.create_payload(&g, every));
    let rss = || rss_mib(std::process::id()).map_or(f64::NAN, |m| m * 1024.0 * 1024.0);
    let before = rss();
    let after = match models.as_str() {
        "twilight" => fill::<twilight_cache_inmemory::DefaultCacheModels>(kinds, payloads, rss)?,
        "fleet" => fill::<fleet_twilight::cache::Models>(kinds, payloads, rss)?,
        other => bail!("unknown models {other:?}"),
    };
    println!("{}", (after - before) / guilds as f64);
    Ok(ExitCode::SUCCESS)
}

/// Fills a cache over models `M` with `payloads`; the resident memory then.
fn fill<M: twilight_cache_inmemory::CacheableModels>(
    kinds: ResourceType,
    payloads: impl Iterator<Item = Box<serde_json::value::RawValue>>,
    rss: impl Fn() -> f64,
) -> Result<f64> {
    let cache = twilight_cache_inmemory::InMemoryCache::<M>::builder()
        .resource_types(kinds)
        .build();
    for payload in payloads {
        cache.update(&Event::GuildCreate(Box::new(GuildCreate::Available(
            serde_json::from_str(payload.get())?,
        ))));
    }
    let after = rss();
    drop(std::hint::black_box(cache));
    Ok(after)
}
