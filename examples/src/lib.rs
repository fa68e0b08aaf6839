//! The example bot, shared by `fleet-example` and `fleet-bench`: both binaries are admiral and
//! worker at once, so both must build the very same fleet.
//!
//! Clusters ([`ExampleBot`]) count guilds and events, answer `status` with a [`ClusterReport`],
//! count `tick` messages, and answer a `hello` message by sending `ack` (their id) to the admiral.
//! The `echo` service ([`Echo`]) answers every command with its payload.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use carrier::worker::BoxError;
use carrier::{Fleet, FleetOptions, Payload, Service, ServiceContext, Target};
use fleet_twilight::{ClusterContext, ClusterWorker, Settings};
use serde::{Deserialize, Serialize};
use twilight_gateway::{Event, Intents, ShardId};

/// Which Discord library the clusters run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lib {
    /// twilight 0.18.
    Twilight,
    /// serenity 0.12.
    Serenity,
}

impl std::str::FromStr for Lib {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        match name {
            "twilight" => Ok(Self::Twilight),
            "serenity" => Ok(Self::Serenity),
            other => Err(format!(
                "unknown library {other:?}; expected twilight or serenity"
            )),
        }
    }
}

/// Environment variable naming the library, for workers started without the admiral's arguments.
pub const LIB_ENV: &str = "FLEET_EXAMPLE_LIB";

/// Environment variable that, set to `0`, drops the `GUILD_MEMBERS` intent: each guild then
/// arrives with the bot's member only, as it does for most large bots.
pub const MEMBERS_ENV: &str = "FLEET_EXAMPLE_MEMBERS";

/// Whether the example asks for `GUILD_MEMBERS` ([`MEMBERS_ENV`] is not `0`).
#[must_use]
pub fn wants_members() -> bool {
    std::env::var(MEMBERS_ENV).map_or(true, |v| v.trim() != "0")
}

/// The example fleet for the library named in [`LIB_ENV`] (twilight when unset).
#[must_use]
pub fn fleet_from_env(options: FleetOptions) -> Fleet {
    let lib = std::env::var(LIB_ENV)
        .ok()
        .and_then(|l| l.parse().ok())
        .unwrap_or(Lib::Twilight);
    fleet_for(lib, options)
}

/// The example fleet on either library.
#[must_use]
pub fn fleet_for(lib: Lib, options: FleetOptions) -> Fleet {
    match lib {
        Lib::Twilight => fleet(options),
        Lib::Serenity => serenity_fleet(options),
    }
}

/// The example fleet with serenity clusters.
#[must_use]
pub fn serenity_fleet(options: FleetOptions) -> Fleet {
    use serenity::all::GatewayIntents;
    let mut intents = GatewayIntents::GUILDS | GatewayIntents::GUILD_MESSAGES;
    if wants_members() {
        intents |= GatewayIntents::GUILD_MEMBERS;
    }
    fleet_serenity::fleet::<SerenityBot>(options, fleet_serenity::Settings::new(intents))
        .service::<Echo>("echo")
}

/// The example fleet with twilight clusters.
#[must_use]
pub fn fleet(options: FleetOptions) -> Fleet {
    let mut intents = Intents::GUILDS | Intents::GUILD_MESSAGES;
    if wants_members() {
        intents |= Intents::GUILD_MEMBERS;
    }
    fleet_twilight::fleet::<ExampleBot>(options, Settings::new(intents)).service::<Echo>("echo")
}

/// Answers every command with its payload; counts `tick` messages.
#[derive(Debug)]
pub struct Echo {
    ticks: Arc<AtomicU64>,
}

impl Service for Echo {
    async fn start(context: ServiceContext) -> Result<Self, BoxError> {
        let ticks = Arc::new(AtomicU64::new(0));
        let counter = ticks.clone();
        context.ipc.register("tick", move |_| {
            counter.fetch_add(1, Ordering::Relaxed);
        });
        Ok(Self { ticks })
    }

    async fn handle_command(&self, _: Target, payload: Payload) -> Result<Payload, String> {
        if payload.as_bytes() == b"ticks" {
            return Payload::encode(&self.ticks.load(Ordering::Relaxed)).map_err(|e| e.to_string());
        }
        Ok(payload)
    }
}

/// What a cluster reports for `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterReport {
    /// Cluster id.
    pub id: u32,
    /// First and last shard.
    pub shards: (u32, u32),
    /// Guilds received.
    pub guilds: u64,
    /// Messages and member joins handled.
    pub events: u64,
    /// `tick` messages received.
    pub ticks: u64,
}

/// A measurement of commands from a cluster to the `echo` service, through the admiral (the path
/// eris-fleet measures): asked of a cluster as `ipc-run:ROUNDS:TOTAL:IN_FLIGHT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpcRun {
    /// Sequential round trips timed.
    pub rounds: u32,
    /// Commands sent for the throughput figure.
    pub total: u32,
    /// Of those, in flight at once.
    pub in_flight: u32,
}

/// What an [`IpcRun`] measured.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct IpcFigures {
    /// Sequential round trip, median, in nanoseconds.
    pub p50_ns: u64,
    /// Sequential round trip, 99th percentile, in nanoseconds.
    pub p99_ns: u64,
    /// Commands answered per second with `in_flight` at once.
    pub per_second: f64,
}

impl IpcRun {
    /// The command that asks a cluster for this run.
    #[must_use]
    pub fn command(&self) -> Payload {
        Payload::from(
            format!("ipc-run:{}:{}:{}", self.rounds, self.total, self.in_flight).into_bytes(),
        )
    }

    fn parse(bytes: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(bytes).ok()?.strip_prefix("ipc-run:")?;
        let mut parts = text.split(':').map(str::parse::<u32>);
        Some(Self {
            rounds: parts.next()?.ok()?,
            total: parts.next()?.ok()?,
            in_flight: parts.next()?.ok()?.max(1),
        })
    }

    async fn measure(self, ipc: &carrier::Ipc) -> Result<IpcFigures, String> {
        let ping = Payload::from("ping");
        let ask = |ipc: carrier::Ipc, ping: Payload| async move {
            ipc.service_command("echo", ping)
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        };
        for _ in 0..self.rounds / 10 {
            ask(ipc.clone(), ping.clone()).await?;
        }
        let mut times = Vec::with_capacity(self.rounds as usize);
        for _ in 0..self.rounds {
            let sent = std::time::Instant::now();
            ask(ipc.clone(), ping.clone()).await?;
            times.push(sent.elapsed());
        }
        times.sort_unstable();
        let at = |q: f64| {
            times
                .get(((times.len().max(1) - 1) as f64 * q).round() as usize)
                .map_or(0, |d| d.as_nanos() as u64)
        };
        let started = std::time::Instant::now();
        let each = self.total / self.in_flight;
        let tasks: Vec<_> = (0..self.in_flight)
            .map(|_| {
                let (ipc, ping) = (ipc.clone(), ping.clone());
                tokio::spawn(async move {
                    for _ in 0..each {
                        ask(ipc.clone(), ping.clone()).await?;
                    }
                    Ok::<(), String>(())
                })
            })
            .collect();
        for task in tasks {
            task.await.map_err(|e| e.to_string())??;
        }
        Ok(IpcFigures {
            p50_ns: at(0.5),
            p99_ns: at(0.99),
            per_second: f64::from(each * self.in_flight) / started.elapsed().as_secs_f64(),
        })
    }
}

/// What every example cluster does with messages: answer `hello` with `ack` (its id) to the
/// admiral, and count `tick`s (the returned counter).
fn register_handlers(ipc: &carrier::Ipc, id: u32) -> Arc<AtomicU64> {
    let answer = ipc.clone();
    ipc.register("hello", move |_| {
        let ipc = answer.clone();
        tokio::spawn(async move {
            let _ = ipc
                .send_to_admiral("ack", Payload::encode(&id).expect("u32 encodes"))
                .await;
        });
    });
    // A restart will take this process away: a real bot would warn its voice users here.
    let warned = ipc.clone();
    ipc.register(carrier::admiral::SOFT_KILL_EVENT, move |message| {
        let notice_ms = message.payload.decode::<u64>().unwrap_or_default();
        let ipc = warned.clone();
        tokio::spawn(async move {
            let heard = Payload::encode(&(id, notice_ms)).expect("numbers encode");
            let _ = ipc.send_to_admiral("soft-kill-heard", heard).await;
        });
    });
    let ticks = Arc::new(AtomicU64::new(0));
    let counter = ticks.clone();
    ipc.register("tick", move |_| {
        counter.fetch_add(1, Ordering::Relaxed);
    });
    ticks
}

/// The example's cluster worker.
#[derive(Debug)]
pub struct ExampleBot {
    context: ClusterContext,
    guilds: AtomicU64,
    events: AtomicU64,
    ticks: Arc<AtomicU64>,
}

impl ClusterWorker for ExampleBot {
    async fn start(context: ClusterContext) -> Result<Self, BoxError> {
        let ticks = register_handlers(&context.ipc, context.id);
        Ok(Self {
            context,
            guilds: AtomicU64::new(0),
            events: AtomicU64::new(0),
            ticks,
        })
    }

    async fn handle_event(&self, _: ShardId, event: Event) {
        match event {
            Event::GuildCreate(_) => {
                self.guilds.fetch_add(1, Ordering::Relaxed);
            }
            Event::MessageCreate(_) | Event::MemberAdd(_) => {
                self.events.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }

    async fn handle_command(&self, _: Target, payload: Payload) -> Result<Payload, String> {
        if let Some(ask) = IpcRun::parse(payload.as_bytes()) {
            let measured = ask.measure(&self.context.ipc).await?;
            return Payload::encode(&measured).map_err(|e| e.to_string());
        }
        if payload.as_bytes() == b"status" {
            let report = ClusterReport {
                id: self.context.id,
                shards: (*self.context.shards.start(), *self.context.shards.end()),
                guilds: self.guilds.load(Ordering::Relaxed),
                events: self.events.load(Ordering::Relaxed),
                ticks: self.ticks.load(Ordering::Relaxed),
            };
            return Payload::encode(&report).map_err(|e| e.to_string());
        }
        Ok(payload)
    }
}

/// Counts what serenity's handlers see.
#[derive(Debug, Default)]
struct Counts {
    guilds: AtomicU64,
    events: AtomicU64,
}

#[serenity::async_trait]
impl serenity::all::EventHandler for Counts {
    async fn guild_create(
        &self,
        _: serenity::all::Context,
        _: serenity::all::Guild,
        _: Option<bool>,
    ) {
        self.guilds.fetch_add(1, Ordering::Relaxed);
    }

    async fn message(&self, _: serenity::all::Context, _: serenity::all::Message) {
        self.events.fetch_add(1, Ordering::Relaxed);
    }

    async fn guild_member_addition(&self, _: serenity::all::Context, _: serenity::all::Member) {
        self.events.fetch_add(1, Ordering::Relaxed);
    }
}

/// The example's cluster worker on serenity: the same behaviour as [`ExampleBot`], through
/// serenity's event handlers.
#[derive(Debug)]
pub struct SerenityBot {
    context: fleet_serenity::ClusterContext,
    counts: Arc<Counts>,
    ticks: Arc<AtomicU64>,
}

impl fleet_serenity::ClusterWorker for SerenityBot {
    async fn start(context: fleet_serenity::ClusterContext) -> Result<Self, BoxError> {
        let ticks = register_handlers(&context.ipc, context.id);
        Ok(Self {
            context,
            counts: Arc::default(),
            ticks,
        })
    }

    fn event_handlers(&self) -> Vec<Arc<dyn serenity::all::EventHandler>> {
        vec![self.counts.clone()]
    }

    async fn handle_command(&self, _: Target, payload: Payload) -> Result<Payload, String> {
        if payload.as_bytes() == b"status" {
            let report = ClusterReport {
                id: self.context.id,
                shards: (*self.context.shards.start(), *self.context.shards.end()),
                guilds: self.counts.guilds.load(Ordering::Relaxed),
                events: self.counts.events.load(Ordering::Relaxed),
                ticks: self.ticks.load(Ordering::Relaxed),
            };
            return Payload::encode(&report).map_err(|e| e.to_string());
        }
        Ok(payload)
    }
}

/// Resident memory of a process in MiB, from `/proc` (Linux).
#[must_use]
pub fn rss_mib(pid: u32) -> Option<f64> {
    proc_kib(&format!("/proc/{pid}/status"), "VmRSS:").map(|kib| kib / 1024.0)
}

/// Proportional memory of a process in MiB (Linux): its private pages plus its share of pages
/// it shares with others, such as the executable every fleet process runs. Summed over the
/// fleet's processes it counts each page once, which summed RSS does not.
#[must_use]
pub fn pss_mib(pid: u32) -> Option<f64> {
    proc_kib(&format!("/proc/{pid}/smaps_rollup"), "Pss:").map(|kib| kib / 1024.0)
}

fn proc_kib(path: &str, key: &str) -> Option<f64> {
    let text = std::fs::read_to_string(path).ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
