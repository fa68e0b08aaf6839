//! `discord-mock`: serve a local Discord until stopped. Prints the bound address on the first line
//! of stdout.

use std::io::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use discord_mock::{CloseCode, MockConfig, MockDiscord};

/// A faithful local Discord (gateway v10 and v9, JSON or ETF, compressed or not, and REST) on loopback. Defaults are Discord's real
/// figures; shrink the intervals for tests.
#[derive(Debug, Parser)]
#[command(name = "discord-mock", version)]
struct Args {
    /// Address to bind (loopback only).
    #[arg(long, default_value = "127.0.0.1:0")]
    addr: SocketAddr,
    /// Guilds the bot is in.
    #[arg(long, default_value_t = 1)]
    guilds: usize,
    /// Shard count `/gateway/bot` recommends [default: ceil(guilds / 1000)].
    #[arg(long)]
    recommended_shards: Option<u32>,
    /// Identify buckets (`max_concurrency`).
    #[arg(long, default_value_t = 1)]
    max_concurrency: u32,
    /// One identify per bucket per this many milliseconds.
    #[arg(long, default_value_t = 5000)]
    identify_interval_ms: u64,
    /// Heartbeat interval sent in Hello, in milliseconds.
    #[arg(long, default_value_t = 41_250)]
    heartbeat_interval_ms: u64,
    /// The token the mock accepts.
    #[arg(
        long,
        env = "DISCORD_MOCK_TOKEN",
        default_value = "mock-token",
        hide_env_values = true
    )]
    token: String,
    /// Identifies allowed per day.
    #[arg(long, default_value_t = 1000)]
    session_limit: u32,
    /// How long a disconnected session stays resumable, in milliseconds.
    #[arg(long, default_value_t = 90_000)]
    resume_timeout_ms: u64,
    /// Guilds one shard may hold before identify fails with 4011.
    #[arg(long, default_value_t = 2500)]
    max_guilds_per_shard: usize,
    /// Enforce the large-bot rule: shard totals must be a multiple of --max-concurrency.
    #[arg(long)]
    large_bot: bool,
    /// Deny the privileged intents (identify with them fails with 4014).
    #[arg(long)]
    no_privileged_intents: bool,
    /// Send X-RateLimit-Scope on 429 responses only, as Discord documents it (twilight-http 0.18
    /// then learns no bucket from successful responses).
    #[arg(long)]
    scope_on_429_only: bool,
    /// Members per guild besides the bot.
    #[arg(long, default_value_t = 4)]
    members_per_guild: usize,
    /// Start the event source at this many events per guild per second.
    #[arg(long)]
    events_per_guild_per_sec: Option<f64>,
    /// Payloads per connection per 60 s before 4008 [default: 120, plus room for heartbeats
    /// faster than Discord's].
    #[arg(long)]
    send_limit: Option<usize>,
    /// Close code for connections that stop heartbeating.
    #[arg(long, default_value_t = 4000)]
    zombie_close_code: u16,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "discord_mock=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let zombie_close_code = CloseCode::from_u16(args.zombie_close_code).ok_or_else(|| {
        format!(
            "--zombie-close-code {} is not a gateway close code",
            args.zombie_close_code
        )
    })?;
    let mut builder = MockConfig::builder()
        .guilds(args.guilds)
        .max_concurrency(args.max_concurrency)
        .identify_interval(Duration::from_millis(args.identify_interval_ms))
        .heartbeat_interval(Duration::from_millis(args.heartbeat_interval_ms))
        .token(args.token)
        .session_limit(args.session_limit)
        .resume_timeout(Duration::from_millis(args.resume_timeout_ms))
        .max_guilds_per_shard(args.max_guilds_per_shard)
        .large_bot_sharding(args.large_bot)
        // Nothing outside this process could read them: a mock left running keeps no history.
        .keep_event_ids(false)
        .scope_on_every_response(!args.scope_on_429_only)
        .members_per_guild(args.members_per_guild)
        .zombie_close_code(zombie_close_code);
    if let Some(shards) = args.recommended_shards {
        builder = builder.recommended_shards(shards);
    }
    if let Some(limit) = args.send_limit {
        builder = builder.send_limit(limit);
    }
    if args.no_privileged_intents {
        builder = builder.privileged_intents(0);
    }
    if let Some(rate) = args.events_per_guild_per_sec {
        builder = builder.event_rate(rate).events_running(true);
    }
    let mut mock = MockDiscord::bind(args.addr, builder.build()).await?;
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{}", mock.addr())?;
        stdout.flush()?;
    }
    tokio::select! {
        () = mock.stopped() => {}
        () = shutdown_signal() => tracing::info!("stopping"),
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler installs");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
