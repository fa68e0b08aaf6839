//! REST figures: what the central proxy adds to one call, how many calls it carries, and what it
//! saves when several clusters share one rate limit. The mock runs in this process with its
//! limits lifted for the first two, so the proxy, not the mock's limits, is what is measured.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use carrier::rest::{ProxyConfig, RestProxy};
use discord_mock::{MockConfig, MockDiscord, RouteLimit};
use twilight_model::id::Id;

use super::percentile;

/// A twilight client on `url`; `limited` turns its own rate limiter on, with the global limit
/// of `global` requests per second.
/// A client of `url`: through a proxy when given its key (its own limiter off), else direct with
/// its own limiter at `global` per second.
fn client(url: &str, proxy_key: Option<&carrier::Secret>, global: u16) -> twilight_http::Client {
    let host = url.trim_start_matches("http://").to_owned();
    let own = proxy_key
        .is_none()
        .then(|| twilight_http_ratelimiting::RateLimiter::new(global));
    let mut builder = twilight_http::Client::builder()
        .token("Bot mock-token".to_owned())
        .proxy(host, true)
        .ratelimiter(own);
    if let Some(key) = proxy_key {
        builder = builder.default_headers(carrier::rest::key_headers(key));
    }
    builder.build()
}

fn open_limits() -> RouteLimit {
    RouteLimit {
        limit: 60_000, // Discord's headers fit in u16; more would teach the limiter nothing.
        window: Duration::from_secs(1),
    }
}

/// Sequential `GET /users/@me`: `(p50, p99)`.
async fn latency(client: &twilight_http::Client, rounds: usize) -> Result<(Duration, Duration)> {
    for _ in 0..200 {
        client.current_user().await?;
    }
    let mut times = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let sent = Instant::now();
        client.current_user().await?;
        times.push(sent.elapsed());
    }
    times.sort_unstable();
    Ok((percentile(&times, 0.5), percentile(&times, 0.99)))
}

/// `GET /users/@me` from `in_flight` tasks for `window`: requests per second.
async fn throughput(client: Arc<twilight_http::Client>, in_flight: usize) -> Result<f64> {
    let window = Duration::from_secs(2);
    let started = Instant::now();
    let tasks: Vec<_> = (0..in_flight)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                let mut done = 0u64;
                while started.elapsed() < window {
                    client.current_user().await?;
                    done += 1;
                }
                anyhow::Ok(done)
            })
        })
        .collect();
    let mut total = 0;
    for task in tasks {
        total += task.await??;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

/// Runs every REST figure.
pub async fn figures() -> Result<()> {
    let config = MockConfig::builder()
        .guilds(1)
        .global_limit(open_limits())
        .route_limit(open_limits())
        .build();
    let mock = MockDiscord::start(config).await?;
    let mut proxy_config = ProxyConfig::new(mock.http_url(), "mock-token");
    proxy_config.global_limit = u16::MAX;
    let proxy = RestProxy::start(proxy_config).await?;
    // Direct: a cluster with the proxy off, its own limiter on. Through the proxy: its limiter
    // off, the proxy's on.
    let direct = client(&mock.http_url(), None, u16::MAX);
    let proxied = client(&proxy.url(), Some(&proxy.admit("bench")), u16::MAX);
    let rounds = 2000;
    let (direct_p50, direct_p99) = latency(&direct, rounds).await?;
    let (proxy_p50, proxy_p99) = latency(&proxied, rounds).await?;
    println!(
        "REST call GET /users/@me, {rounds} sequential: direct p50 {direct_p50:.1?} p99 {direct_p99:.1?}; through the proxy p50 {proxy_p50:.1?} p99 {proxy_p99:.1?}; added p50 {:.1?}",
        proxy_p50.saturating_sub(direct_p50)
    );
    let in_flight = 32;
    let direct_rate = throughput(Arc::new(direct), in_flight).await?;
    let proxy_rate = throughput(Arc::new(proxied), in_flight).await?;
    println!(
        "REST throughput, {in_flight} in flight: direct {direct_rate:.0} requests/s, through the proxy {proxy_rate:.0} requests/s (ratio {:.2})",
        proxy_rate / direct_rate
    );
    let stats = proxy.stats();
    println!(
        "  proxy stats: {} requests, p50 {} us, p99 {} us in the proxy (upstream included), permit wait p50 {} us",
        stats.requests, stats.latency_p50_us, stats.latency_p99_us, stats.queue_wait_p50_us
    );
    drop(proxy);
    mock.shutdown().await;

    contention(true).await?;
    contention(false).await?;
    Ok(())
}

/// Three clients (as three clusters) post 10 messages each into one channel at once, with
/// Discord's message limit (5 per 5 s, shortened to 5 per 500 ms): through one proxy, or each
/// with its own limiter.
async fn contention(through_proxy: bool) -> Result<()> {
    let config = MockConfig::builder()
        .guilds(1)
        .message_limit(RouteLimit {
            limit: 5,
            window: Duration::from_millis(500),
        })
        .build();
    let mock = MockDiscord::start(config).await?;
    let channel = mock
        .guild(mock.guild_ids()[0])
        .context("the mock has a guild")?
        .text_channels[0];
    let proxy = if through_proxy {
        Some(RestProxy::start(ProxyConfig::new(mock.http_url(), "mock-token")).await?)
    } else {
        None
    };
    let clients: Vec<_> = (0..3)
        .map(|_| match &proxy {
            Some(proxy) => client(&proxy.url(), Some(&proxy.admit("bench")), 50),
            None => client(&mock.http_url(), None, 50),
        })
        .collect();
    let started = Instant::now();
    let posts = clients.iter().flat_map(|client| {
        (0..10).map(move |i| async move {
            client
                .create_message(Id::new(channel))
                .content(&format!("message {i}"))
                .await
        })
    });
    let results = futures::future::join_all(posts).await;
    let elapsed = started.elapsed();
    let failed = results.iter().filter(|r| r.is_err()).count();
    let stats = mock.stats();
    println!(
        "REST contention, 3 clusters x 10 messages into one channel, {}: {} created, {failed} failed, {} 429s served by Discord, in {elapsed:.2?}",
        if through_proxy {
            "through the proxy"
        } else {
            "proxy off (a limiter per cluster)"
        },
        stats.messages_created,
        stats.rest_429s
    );
    drop(proxy);
    mock.shutdown().await;
    Ok(())
}
