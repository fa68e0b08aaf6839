//! One bot on three hosts: three admirals, each running a third of 48 shards
//! (`first_shard`/`last_shard`), pace their identifies together through one Redis (Debian's
//! `redis-server`, started here on a free loopback port). The figure: startup against the identify
//! limit of the whole bot, `(ceil(48 / 16) - 1)` intervals plus the first READY, at
//! `max_concurrency` 16 and Discord's 5 s interval, with the mock's count of identifies too early.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use carrier::admiral::ShardCount;

use super::{IDENTIFY_INTERVAL, Lib, launch_with, start_mock_with};

const SHARDS: u32 = 48;
const HOSTS: u32 = 3;
const MAX_CONCURRENCY: u32 = 16;

/// A `redis-server` of the bench's own, stopped when dropped.
struct Redis(std::process::Child, u16);

impl Redis {
    async fn start() -> Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .context("redis-server (Debian's package) runs the hosts section")?;
        let redis = Self(child, port);
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            anyhow::ensure!(Instant::now() < deadline, "redis-server did not come up");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(redis)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Prints the figure; whether the mock saw no rule broken.
pub async fn figures() -> Result<bool> {
    let redis = Redis::start().await?;
    let url = format!("redis://127.0.0.1:{}/0", redis.1);
    let mock = start_mock_with(MAX_CONCURRENCY, IDENTIFY_INTERVAL, SHARDS, 100).await?;
    let per_host = SHARDS / HOSTS;
    let started = Instant::now();
    let launches = (0..HOSTS).map(|host| {
        let url = url.clone();
        launch_with(&mock, IDENTIFY_INTERVAL, Lib::Twilight, 2, move |options| {
            options.shards = ShardCount::Exact(SHARDS);
            options.first_shard = Some(host * per_host);
            options.last_shard = Some((host + 1) * per_host - 1);
            options.redis_url = Some(url);
            options.host_id = Some(format!("bench-{host}"));
        })
    });
    let admirals = futures::future::try_join_all(launches).await?;
    let took = started.elapsed();
    let first_ready = admirals
        .iter()
        .map(|(_, _, first)| *first)
        .min()
        .unwrap_or_default();
    let waits = SHARDS.div_ceil(MAX_CONCURRENCY) - 1;
    let limit = IDENTIFY_INTERVAL * waits + first_ready;
    for (admiral, _, _) in &admirals {
        admiral.shutdown().await;
    }
    let clean = mock.stop().await?;
    println!(
        "one bot on {HOSTS} hosts sharing Redis, {SHARDS} shards, max_concurrency {MAX_CONCURRENCY}, interval {IDENTIFY_INTERVAL:.2?}: every host ready in {took:.3?}; limit {waits} x {IDENTIFY_INTERVAL:.2?} + first READY {first_ready:.3?} = {limit:.3?}; ratio {:.3}; {}",
        took.as_secs_f64() / limit.as_secs_f64(),
        if clean {
            "no identify too early"
        } else {
            "discord-mock counted rule violations"
        }
    );
    Ok(clean)
}
