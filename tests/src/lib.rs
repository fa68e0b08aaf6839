//! The test bot: worker types shared by the integration tests (which run the admiral in the test
//! process) and the `testbot` binary (which the admiral spawns as its workers).
//!
//! Commands are plain text payloads:
//! - services and clusters: `trace-info:TEXT` and `trace-warn:TEXT` (a tracing line at that
//!   level), `sleep` (never answers in time; a cluster first sends `sleeping` with
//!   its id to the admiral), `fail` (answers with an error), `slow` (answers after 300 ms),
//!   `panic` (the handler panics), `spawn-panic` (a task it spawns panics; answers at once),
//!   anything else is echoed back;
//! - clusters also: `status` ([`ClusterStatus`]), `store-get:KEY` (reads the central store),
//!   `log:TEXT` (logs through IPC), `post:CHANNEL:N` (creates N messages at once through the
//!   cluster's HTTP client; answers [`Posted`]), `fetch:KIND:ID[:USER]` (`Ipc::fetch` of a
//!   `user`, `guild`, `channel` or `member`; answers the JSON, or `none`), `far:PAYLOAD` (sends
//!   `PAYLOAD` to the `echo` service with a timeout of three years; answers its answer), `debug`
//!   (the `Debug` text of its `ClusterContext`).
//!
//! - clusters also: `panic-events:N` (the next N `MESSAGE_CREATE` handlers panic),
//!   `fleet-stats` (asks for a stats snapshot; answers the shards it saw ready), `fleet-workers`
//!   (answers `Ipc::workers`), `total-shutdown` (shuts the fleet down), `topology:GUILD` (where
//!   the guild lives, from the cluster's own topology), `lock:NAME` (takes the store's `lock` key
//!   if free; answers whether it did), `late-subscribe` (subscribes to the admiral's lifecycle
//!   events now; answers the first it hears), `create-service:NAME:KIND[:DEPENDENCY]` (creates
//!   a service at runtime; answers `created` or the error), `hold-on:ID` (cluster ID answers
//!   `released` once it gets a `release` message, the others `quick` at once), `cluster-data`
//!   (answers the cluster's own data as it got it; serenity clusters too), `http-hooked` (how
//!   many times the process's HTTP configuration hook ran; serenity clusters too).
//!
//! Both libraries' shards show the activity [`PRESENCE_TEMPLATE`] (serenity as idle, twilight
//! as online); twilight's identify with [`LARGE_THRESHOLD`].
//!
//! Clusters send `got-stats` with `(id, shard_count)` to the admiral for every stats snapshot
//! broadcast to them. `echo` answers `stats-panic` and its stats fields panic from then on, and
//! `stats-calls` with how many times its stats fields were asked for, and `admiral-events` with
//! the admiral events it heard since it started.
//!
//! Clusters answer a `hello` broadcast or message by sending `ack` with their id to the admiral,
//! and panic on an `explode` message.

pub mod chaos;
pub mod faults;
pub mod fuzz;
pub mod raw;
pub mod redis;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use carrier::worker::BoxError;
use carrier::{Fleet, FleetOptions, LogLevel, Payload, Service, ServiceContext, Target};
use fleet_twilight::{ClusterContext, ClusterWorker, Settings};
use serde::{Deserialize, Serialize};
use twilight_gateway::{Event, Intents, ShardId};

/// Environment variable naming the clusters' library for the testbot: `serenity`, `raw` (no
/// library: [`raw`]) or (default) `twilight`.
pub const LIB_ENV: &str = "TESTBOT_LIB";

/// With this variable set to a number of milliseconds, a twilight test cluster's process exits
/// (code 3) that long after all its shards were ready: a build that crashes once it serves.
pub const CRASH_AFTER_MS_ENV: &str = "TESTBOT_CRASH_AFTER_MS";

/// With this variable set to a number of milliseconds, a twilight test cluster's handler takes
/// that long over each message: a bot slower than its gateway, which falls behind.
pub const MESSAGE_DELAY_MS_ENV: &str = "TESTBOT_MESSAGE_DELAY_MS";

/// With this variable set, the test fleet also runs [`LEDGER`], an echo service run once per
/// bot ([`with_ledger`]).
pub const LEDGER_ENV: &str = "TESTBOT_LEDGER";

/// The name of the echo service run once per bot.
pub const LEDGER: &str = "ledger";

/// The fleet for the library named in [`LIB_ENV`] (with [`LEDGER`] when [`LEDGER_ENV`] is set).
#[must_use]
pub fn fleet_from_env(options: FleetOptions) -> Fleet {
    let ledger = std::env::var_os(LEDGER_ENV).is_some();
    let fleet = match std::env::var(LIB_ENV).as_deref() {
        Ok("serenity") => serenity_fleet(options),
        Ok("raw") => raw::raw_fleet(options),
        _ => fleet(options),
    };
    if ledger { add_ledger(fleet) } else { fleet }
}

/// [`fleet`], with [`LEDGER`]: an [`Echo`] service run once per bot. A worker command given
/// in `options` gets [`LEDGER_ENV`] set (to the fleet's id, so a test can tell its workers
/// from another's), so the spawned testbot workers know it too.
#[must_use]
pub fn with_ledger(mut options: FleetOptions) -> Fleet {
    let tag = options.fleet_id.clone().unwrap_or_default();
    if let Some(command) = options.worker_command.as_mut() {
        command.env.push((LEDGER_ENV.into(), tag.into()));
    }
    add_ledger(fleet(options))
}

fn add_ledger(fleet: Fleet) -> Fleet {
    let once = carrier::ServiceOptions::new().once_per_bot();
    fleet.service_with::<Echo>(LEDGER, once)
}

/// Like [`fleet`], with serenity clusters running [`SerenityCluster`]. A worker command given in
/// `options` gets [`LIB_ENV`] set, so the spawned testbot workers run serenity too.
#[must_use]
pub fn serenity_fleet(mut options: FleetOptions) -> Fleet {
    use serenity::all::GatewayIntents;
    if let Some(command) = options.worker_command.as_mut()
        && !command.env.iter().any(|(key, _)| key == LIB_ENV)
    {
        command.env.push((LIB_ENV.into(), "serenity".into()));
    }
    let intents =
        GatewayIntents::GUILDS | GatewayIntents::GUILD_MESSAGES | GatewayIntents::GUILD_MEMBERS;
    let settings = fleet_serenity::Settings::new(intents)
        .activity_per_shard(
            serenity::all::OnlineStatus::Idle,
            |name| {
                if name.starts_with("shard 1 of") {
                    may_panic(1);
                }
                serenity::all::ActivityData::watching(name)
            },
            PRESENCE_TEMPLATE,
        )
        .configure_http(|builder| {
            HTTP_HOOKED.fetch_add(1, Ordering::SeqCst);
            builder
        });
    fleet_serenity::fleet::<SerenityCluster>(options, settings)
        .service::<Echo>("echo")
        .service::<Broken>("broken")
        .service_kind::<Sluggish>("sluggish")
}

/// The fleet every test and the testbot build: services `echo` and `broken`, twilight clusters
/// running [`TestCluster`].
#[must_use]
pub fn fleet(options: FleetOptions) -> Fleet {
    use twilight_model::gateway::presence::{ActivityType, Status};
    let settings =
        Settings::new(Intents::GUILDS | Intents::GUILD_MESSAGES | Intents::GUILD_MEMBERS)
            .activity_per_shard(Status::Online, ActivityType::Playing, PRESENCE_TEMPLATE)
            .configure_shard(|shard, config| {
                may_panic(shard.number());
                config.large_threshold(LARGE_THRESHOLD)
            })
            .configure_http(|builder| {
                HTTP_HOOKED.fetch_add(1, Ordering::SeqCst);
                builder
            });
    fleet_twilight::fleet::<TestCluster>(options, settings)
        .service::<Echo>("echo")
        .service::<Broken>("broken")
        .service_kind::<Sluggish>("sluggish")
}

/// Every shard's activity: `shard 1 of 4 in cluster 0`.
pub const PRESENCE_TEMPLATE: &str = "shard {shard} of {shard_total} in cluster {cluster}";

/// The `large_threshold` twilight shards identify with (set by a shard configuration hook).
pub const LARGE_THRESHOLD: u64 = 77;

/// Set in a worker's environment, shard 1's configuration hook (twilight) or presence
/// (serenity) panics.
pub const PANIC_SHARD_1_ENV: &str = "TESTBOT_PANIC_SHARD_1";

/// Times this process's HTTP configuration hook ran (`http-hooked` answers it).
static HTTP_HOOKED: AtomicU64 = AtomicU64::new(0);

/// Panics for shard 1 when the environment asks for it ([`PANIC_SHARD_1_ENV`]).
fn may_panic(shard: u32) {
    assert!(
        shard != 1 || std::env::var_os(PANIC_SHARD_1_ENV).is_none(),
        "shard 1's hook panicked on purpose"
    );
}

/// What a cluster answers to `post:CHANNEL:N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Posted {
    /// Messages created.
    pub created: u32,
    /// Requests that failed.
    pub failed: u32,
}

/// Parses `post:CHANNEL:N`.
fn post_command(text: &str) -> Option<Result<(u64, u32), String>> {
    let rest = text.strip_prefix("post:")?;
    let parsed = rest
        .split_once(':')
        .and_then(|(channel, n)| Some((channel.parse().ok()?, n.parse().ok()?)));
    Some(parsed.ok_or_else(|| format!("bad post command {text:?}")))
}

/// Runs `posts` at once and counts the outcomes.
async fn post_all<E: std::fmt::Display>(
    posts: impl IntoIterator<Item = impl Future<Output = Result<(), E>>>,
) -> Result<Payload, String> {
    let results = futures::future::join_all(posts).await;
    let mut posted = Posted {
        created: 0,
        failed: 0,
    };
    for result in results {
        match result {
            Ok(()) => posted.created += 1,
            Err(error) => {
                eprintln!("message not created: {error}");
                posted.failed += 1;
            }
        }
    }
    Payload::encode(&posted).map_err(|e| e.to_string())
}

/// Runs `fetch:KIND:ID[:USER]` through the fleet.
async fn fetch_command(ipc: &carrier::Ipc, text: &str) -> Option<Result<Payload, String>> {
    let rest = text.strip_prefix("fetch:")?;
    let parts: Vec<&str> = rest.split(':').collect();
    let id = |i: usize| parts.get(i).and_then(|p| p.parse::<u64>().ok());
    let query = match (parts[0], id(1), id(2)) {
        ("user", Some(id), None) => carrier::Fetch::User(id),
        ("guild", Some(id), None) => carrier::Fetch::Guild(id),
        ("channel", Some(id), None) => carrier::Fetch::Channel(id),
        ("member", Some(guild), Some(user)) => carrier::Fetch::Member { guild, user },
        _ => return Some(Err(format!("bad fetch command {text:?}"))),
    };
    Some(match ipc.fetch(query).await {
        Ok(Some(json)) => Ok(json),
        Ok(None) => Ok(Payload::from("none")),
        Err(error) => Err(error.to_string()),
    })
}

async fn common_command(payload: &Payload) -> Option<Result<Payload, String>> {
    match payload.as_bytes() {
        b"sleep" => {
            tokio::time::sleep(Duration::from_hours(1)).await;
            Some(Ok(Payload::empty()))
        }
        b"fail" => Some(Err("failed on request".to_owned())),
        b"panic" => panic!("the command handler panicked on purpose"),
        b"spawn-panic" => {
            tokio::spawn(async { panic!("a spawned task panicked on purpose") });
            Some(Ok(Payload::from("spawned")))
        }
        b"slow" => {
            tokio::time::sleep(Duration::from_millis(300)).await;
            Some(Ok(Payload::from("slow done")))
        }
        bytes => {
            // `trace-info:TEXT` and `trace-warn:TEXT`: a tracing line of this process.
            let text = std::str::from_utf8(bytes).ok()?;
            if let Some(text) = text.strip_prefix("trace-info:") {
                tracing::info!(target: "fleet_tests", "{text}");
            } else if let Some(text) = text.strip_prefix("trace-warn:") {
                tracing::warn!(target: "fleet_tests", "{text}");
            } else {
                return None;
            }
            Some(Ok(Payload::from("traced")))
        }
    }
}

/// Echoes commands. `stats-panic` makes its stats fields panic from then on. It subscribes to
/// the admiral's lifecycle and shard events as it starts, and answers `admiral-events` with
/// every one it heard (a `Vec<AdmiralEvent>`).
#[derive(Debug, Default)]
pub struct Echo {
    events: std::sync::Mutex<Option<carrier::AdmiralEvents>>,
    heard: std::sync::Mutex<Vec<carrier::AdmiralEvent>>,
    answered: AtomicU64,
    stats_panic: std::sync::atomic::AtomicBool,
    /// Times its stats fields were asked for (`stats-calls` answers it).
    stats_calls: AtomicU64,
}

/// The echo service's own stats fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EchoStats {
    /// Commands answered.
    pub answered: u64,
}

impl Service for Echo {
    async fn start(context: ServiceContext) -> Result<Self, BoxError> {
        let events = context
            .ipc
            .subscribe(&[carrier::Topic::Lifecycle, carrier::Topic::Shards])
            .await?;
        let echo = Self {
            events: std::sync::Mutex::new(Some(events)),
            ..Self::default()
        };
        Ok(echo)
    }

    async fn handle_command(&self, _: Target, payload: Payload) -> Result<Payload, String> {
        self.answered.fetch_add(1, Ordering::Relaxed);
        if payload.as_bytes() == b"stats-panic" {
            self.stats_panic.store(true, Ordering::Relaxed);
            return Ok(payload);
        }
        if payload.as_bytes() == b"admiral-events" {
            // Drained here, so every event that arrived before this command is in.
            let mut heard = self
                .heard
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let mut events = self
                .events
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(events) = events.as_mut() {
                while let Ok(Some(event)) = events.try_recv() {
                    heard.push((*event).clone());
                }
            }
            let heard = heard.clone();
            return Payload::encode(&heard).map_err(|e| e.to_string());
        }
        if payload.as_bytes() == b"stats-calls" {
            let calls = self.stats_calls.load(Ordering::Relaxed);
            return Payload::encode(&calls).map_err(|e| e.to_string());
        }
        match common_command(&payload).await {
            Some(answer) => answer,
            None => Ok(payload),
        }
    }

    fn stats(&self) -> impl Serialize {
        self.stats_calls.fetch_add(1, Ordering::Relaxed);
        assert!(
            !self.stats_panic.load(Ordering::Relaxed),
            "stats panicked on purpose"
        );
        EchoStats {
            answered: self.answered.load(Ordering::Relaxed),
        }
    }
}

/// A test cluster's own stats fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterFields {
    /// Its id.
    pub cluster: u32,
    /// Events its handler counted.
    pub events: u64,
}

/// Fails to start.
#[derive(Debug)]
pub struct Broken;

impl Service for Broken {
    async fn start(_: ServiceContext) -> Result<Self, BoxError> {
        Err("broken on purpose".into())
    }
}

/// Never becomes ready (registered as the kind `sluggish`, for services created at runtime).
#[derive(Debug)]
pub struct Sluggish;

impl Service for Sluggish {
    async fn start(_: ServiceContext) -> Result<Self, BoxError> {
        std::future::pending().await
    }
}

/// What a cluster reports for `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// Cluster id.
    pub id: u32,
    /// Its shard ids.
    pub shards: Vec<u32>,
    /// Guilds received in `GUILD_CREATE`.
    pub guilds: u64,
    /// `MESSAGE_CREATE` and `GUILD_MEMBER_ADD` events handled.
    pub events: u64,
}

/// A cluster that counts what it sees and answers test commands.
#[derive(Debug)]
pub struct TestCluster {
    context: ClusterContext,
    /// Shards that reached READY or RESUMED.
    ready_shards: AtomicU64,
    guilds: AtomicU64,
    events: AtomicU64,
    /// Set by a [`REPORT_EVENTS`] broadcast, or when the central store holds that key at start:
    /// each `MESSAGE_CREATE` handled is then reported to the admiral as [`Handled`].
    report: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// This process's tag in those reports.
    nonce: u64,
    /// `MESSAGE_CREATE` handlers still to panic (`panic-events:N`).
    panics: AtomicU64,
    /// Set free by a `release` message (`hold-on:ID`).
    release: std::sync::Arc<tokio::sync::Notify>,
    /// Where each `MESSAGE_CREATE` handled is written, a message id a line, when
    /// [`HANDLED_FILE`] names a file: a ledger that needs no admiral.
    ledger: Option<std::sync::Mutex<std::fs::File>>,
    /// How long each message takes ([`MESSAGE_DELAY_MS_ENV`]).
    delay: Option<Duration>,
}

/// Environment variable naming the file cluster processes append each message id they handle to.
pub const HANDLED_FILE: &str = "TESTBOT_HANDLED_FILE";

/// The ledger file of [`HANDLED_FILE`], opened to append.
fn ledger() -> Option<std::sync::Mutex<std::fs::File>> {
    let path = std::env::var_os(HANDLED_FILE)?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .ok()?;
    Some(std::sync::Mutex::new(file))
}

/// Broadcast event and central-store key that make clusters report every message they handle
/// (running ones on the broadcast, later ones from the store).
pub const REPORT_EVENTS: &str = "report-events";

/// A message a cluster process handled: `(process nonce, message id)`, sent to the admiral as
/// the event `handled`.
pub type Handled = (u64, u64);

impl ClusterWorker for TestCluster {
    async fn start(context: ClusterContext) -> Result<Self, BoxError> {
        let ipc = context.ipc.clone();
        let id = context.id;
        context.ipc.register("hello", move |_| {
            let ipc = ipc.clone();
            tokio::spawn(async move {
                let _ = ipc
                    .send_to_admiral("ack", Payload::encode(&id).expect("u32 encodes"))
                    .await;
            });
        });
        let report = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(
            context.ipc.store_has(REPORT_EVENTS).await?,
        ));
        let flag = report.clone();
        context.ipc.register(REPORT_EVENTS, move |_| {
            flag.store(true, Ordering::SeqCst);
        });
        let release = std::sync::Arc::new(tokio::sync::Notify::new());
        let freed = release.clone();
        context.ipc.register("release", move |_| freed.notify_one());
        context.ipc.register("explode", |_| {
            panic!("a message handler panicked on purpose");
        });
        // Interval snapshots broadcast to workers: the admiral hears how many shards it held.
        let ipc = context.ipc.clone();
        context.ipc.register(carrier::stats::STATS_EVENT, move |m| {
            let Ok(stats) = m.payload.decode::<carrier::FleetStats>() else {
                return;
            };
            let ipc = ipc.clone();
            tokio::spawn(async move {
                let shards = Payload::encode(&(id, stats.shard_count)).expect("numbers encode");
                let _ = ipc.send_to_admiral("got-stats", shards).await;
            });
        });
        Ok(Self {
            context,
            ready_shards: AtomicU64::new(0),
            guilds: AtomicU64::new(0),
            events: AtomicU64::new(0),
            report,
            nonce: fastrand::u64(..),
            panics: AtomicU64::new(0),
            release,
            ledger: ledger(),
            delay: std::env::var(MESSAGE_DELAY_MS_ENV)
                .ok()
                .and_then(|ms| ms.parse().ok())
                .map(Duration::from_millis),
        })
    }

    async fn handle_event(&self, _: ShardId, event: Event) {
        if matches!(event, Event::Ready(_) | Event::Resumed) {
            let ready = self.ready_shards.fetch_add(1, Ordering::SeqCst) + 1;
            // A broken build: the process dies a moment after it went live.
            let crash = std::env::var(CRASH_AFTER_MS_ENV).ok();
            if ready == self.context.shards.clone().count() as u64
                && let Some(after) = crash.and_then(|ms| ms.parse().ok())
            {
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(after)).await;
                    std::process::exit(3);
                });
            }
        }
        match event {
            Event::GuildCreate(_) => {
                self.guilds.fetch_add(1, Ordering::Relaxed);
            }
            Event::MessageCreate(message) => {
                self.events.fetch_add(1, Ordering::Relaxed);
                let panic_now = self
                    .panics
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok();
                assert!(!panic_now, "the event handler panicked on purpose");
                if let Some(delay) = self.delay {
                    tokio::time::sleep(delay).await;
                }
                if let Some(ledger) = &self.ledger {
                    use std::io::Write as _;
                    let line = format!("{}\n", message.id.get());
                    let _ = ledger.lock().unwrap().write_all(line.as_bytes());
                }
                if self.report.load(Ordering::SeqCst) {
                    let handled: Handled = (self.nonce, message.id.get());
                    let payload = Payload::encode(&handled).expect("numbers encode");
                    let _ = self.context.ipc.send_to_admiral("handled", payload).await;
                }
            }
            Event::MemberAdd(_) => {
                self.events.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }

    fn stats(&self) -> impl Serialize {
        ClusterFields {
            cluster: self.context.id,
            events: self.events.load(Ordering::Relaxed),
        }
    }

    async fn handle_command(&self, _: Target, payload: Payload) -> Result<Payload, String> {
        if let Some(guild) = std::str::from_utf8(payload.as_bytes())
            .ok()
            .and_then(|t| t.strip_prefix("topology:"))
        {
            // Where a guild lives, worked out here without asking: (shard, cluster, clusters,
            // process, generation).
            let t = &self.context.topology;
            let guild: u64 = guild.parse().map_err(|_| "bad guild id".to_owned())?;
            let answer = (
                t.shard_of_guild(guild),
                t.cluster_of_guild(guild),
                t.cluster_count(),
                t.process,
                t.generation,
            );
            return Payload::encode(&answer).map_err(|e| e.to_string());
        }
        if let Some(name) = std::str::from_utf8(payload.as_bytes())
            .ok()
            .and_then(|t| t.strip_prefix("lock:"))
        {
            // Takes the central store's `lock` key if nobody holds it: answers whether it did.
            let me = Payload::from(name.as_bytes().to_vec());
            let took = self
                .context
                .ipc
                .store_compare_and_set("lock", None, Some(me))
                .await
                .map_err(|e| e.to_string())?;
            return Payload::encode(&took).map_err(|e| e.to_string());
        }
        if let Some(args) = std::str::from_utf8(payload.as_bytes())
            .ok()
            .and_then(|t| t.strip_prefix("create-service:"))
        {
            // `create-service:NAME:KIND[:DEPENDENCY]`: answers `created`, or the error.
            let mut args = args.split(':');
            let (name, kind) = (args.next().unwrap_or(""), args.next().unwrap_or(""));
            let mut options = carrier::ServiceOptions::new();
            if let Some(dependency) = args.next() {
                options = options.depends_on(dependency);
            }
            self.context
                .ipc
                .create_service(name, kind, options)
                .await
                .map_err(|e| e.to_string())?;
            return Ok(Payload::from("created"));
        }
        if let Some(held) = std::str::from_utf8(payload.as_bytes())
            .ok()
            .and_then(|t| t.strip_prefix("hold-on:"))
        {
            // `hold-on:ID`: cluster ID answers `released` once a `release` message came; the
            // others answer `quick` at once.
            if held.parse() != Ok(self.context.id) {
                return Ok(Payload::from("quick"));
            }
            tokio::time::timeout(Duration::from_secs(10), self.release.notified())
                .await
                .map_err(|_| "no release within 10 s".to_owned())?;
            return Ok(Payload::from("released"));
        }
        if payload.as_bytes() == b"cluster-data" {
            return Ok(self.context.cluster_data.clone());
        }
        if payload.as_bytes() == b"deploy-dry-run" {
            // A deploy asked from a worker's IPC: what it would move.
            let program = std::env::current_exe().map_err(|e| e.to_string())?;
            let plan = carrier::DeployPlan::new(program).dry_run();
            let report = self
                .context
                .ipc
                .deploy(plan, Duration::from_secs(10))
                .await
                .map_err(|e| e.to_string())?;
            let order: Vec<String> = report.order.iter().map(ToString::to_string).collect();
            return Payload::encode(&order).map_err(|e| e.to_string());
        }
        if payload.as_bytes() == b"http-hooked" {
            return Payload::encode(&HTTP_HOOKED.load(Ordering::SeqCst)).map_err(|e| e.to_string());
        }
        if payload.as_bytes() == b"late-subscribe" {
            // Subscribes now, after the launch: answers the first event heard (`AdmiralEvent`).
            let mut events = self
                .context
                .ipc
                .subscribe(&[carrier::Topic::Lifecycle])
                .await
                .map_err(|e| e.to_string())?;
            let first = tokio::time::timeout(Duration::from_secs(10), events.recv())
                .await
                .map_err(|_| "no admiral event within 10 s".to_owned())?
                .map_err(|e| e.to_string())?;
            return Payload::encode(&*first).map_err(|e| e.to_string());
        }
        if payload.as_bytes() == b"fleet-workers" {
            // The fleet's workers, as a worker sees them.
            let workers = self
                .context
                .ipc
                .workers()
                .await
                .map_err(|e| e.to_string())?;
            return Payload::encode(&workers).map_err(|e| e.to_string());
        }
        if payload.as_bytes() == b"total-shutdown" {
            self.context
                .ipc
                .total_shutdown()
                .await
                .map_err(|e| e.to_string())?;
            return Ok(Payload::from("shutting down"));
        }
        if payload.as_bytes() == b"fleet-stats" {
            // A snapshot asked for from a worker: how many shards it saw ready.
            let stats = self.context.ipc.stats().await.map_err(|e| e.to_string())?;
            return Payload::encode(&stats.shards_ready).map_err(|e| e.to_string());
        }
        if payload.as_bytes() == b"sleep" {
            // Say so first, so a test knows the command is in flight.
            let id = Payload::encode(&self.context.id).map_err(|e| e.to_string())?;
            self.context
                .ipc
                .send_to_admiral("sleeping", id)
                .await
                .map_err(|e| e.to_string())?;
        }
        if let Some(answer) = common_command(&payload).await {
            return answer;
        }
        let text = String::from_utf8_lossy(payload.as_bytes()).into_owned();
        if let Some(n) = text.strip_prefix("panic-events:") {
            let n = n.parse().map_err(|_| format!("bad count in {text:?}"))?;
            self.panics.store(n, Ordering::SeqCst);
            return Ok(Payload::empty());
        }
        if text == "debug" {
            return Ok(Payload::from(format!("{:?}", self.context).into_bytes()));
        }
        if text == "status" {
            let status = ClusterStatus {
                id: self.context.id,
                shards: self.context.shards.clone().collect(),
                guilds: self.guilds.load(Ordering::Relaxed),
                events: self.events.load(Ordering::Relaxed),
            };
            return Payload::encode(&status).map_err(|e| e.to_string());
        }
        if let Some(key) = text.strip_prefix("store-get:") {
            let value = self
                .context
                .ipc
                .store_get(key)
                .await
                .map_err(|e| e.to_string())?;
            return Ok(value.unwrap_or_default());
        }
        if let Some(post) = post_command(&text) {
            let (channel, n) = post?;
            let channel = twilight_model::id::Id::new_checked(channel).ok_or("channel 0")?;
            let http = &self.context.http;
            return post_all((0..n).map(|i| async move {
                http.create_message(channel)
                    .content(&format!("message {i}"))
                    .await
                    .map(drop)
            }))
            .await;
        }
        if let Some(answer) = fetch_command(&self.context.ipc, &text).await {
            return answer;
        }
        if let Some(inner) = text.strip_prefix("far:") {
            const THREE_YEARS: Duration = Duration::from_hours(3 * 365 * 24);
            return self
                .context
                .ipc
                .command_within(
                    Target::Service("echo".into()),
                    Payload::from(inner.as_bytes().to_vec()),
                    THREE_YEARS,
                )
                .await
                .map_err(|e| e.to_string());
        }
        if let Some(message) = text.strip_prefix("log:") {
            self.context
                .ipc
                .log(LogLevel::Info, message)
                .await
                .map_err(|e| e.to_string())?;
            return Ok(Payload::empty());
        }
        Ok(payload)
    }
}

/// Counts what serenity's handlers see and reports each count to the admiral as `counted`:
/// `(cluster, guilds, events)`, cumulative, so a late listener loses nothing.
#[derive(Debug)]
struct Counts {
    ipc: carrier::Ipc,
    cluster: u32,
    guilds: AtomicU64,
    events: AtomicU64,
    /// `message` handlers still to panic (`panic-events:N`).
    panics: AtomicU64,
    /// Report each message handled to the admiral as [`Handled`] (see [`REPORT_EVENTS`]).
    report: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// This process's tag in those reports.
    nonce: u64,
}

impl Counts {
    async fn report(&self) {
        let counts = (
            self.cluster,
            self.guilds.load(Ordering::Relaxed),
            self.events.load(Ordering::Relaxed),
        );
        let _ = self
            .ipc
            .send_to_admiral("counted", Payload::encode(&counts).expect("numbers encode"))
            .await;
    }
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
        self.report().await;
    }

    async fn message(&self, _: serenity::all::Context, message: serenity::all::Message) {
        self.events.fetch_add(1, Ordering::Relaxed);
        self.report().await;
        if self.report.load(Ordering::SeqCst) {
            let handled: Handled = (self.nonce, message.id.get());
            let payload = Payload::encode(&handled).expect("numbers encode");
            let _ = self.ipc.send_to_admiral("handled", payload).await;
        }
        let panic_now = self
            .panics
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        assert!(!panic_now, "a serenity event handler panicked on purpose");
    }

    async fn guild_member_addition(&self, _: serenity::all::Context, _: serenity::all::Member) {
        self.events.fetch_add(1, Ordering::Relaxed);
        self.report().await;
    }
}

/// A serenity cluster that counts what its handlers see and answers `status`.
#[derive(Debug)]
pub struct SerenityCluster {
    context: fleet_serenity::ClusterContext,
    counts: std::sync::Arc<Counts>,
}

impl fleet_serenity::ClusterWorker for SerenityCluster {
    async fn start(context: fleet_serenity::ClusterContext) -> Result<Self, BoxError> {
        let report = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(
            context.ipc.store_has(REPORT_EVENTS).await?,
        ));
        let flag = report.clone();
        context.ipc.register(REPORT_EVENTS, move |_| {
            flag.store(true, Ordering::SeqCst);
        });
        let counts = std::sync::Arc::new(Counts {
            ipc: context.ipc.clone(),
            cluster: context.id,
            guilds: AtomicU64::new(0),
            events: AtomicU64::new(0),
            panics: AtomicU64::new(0),
            report,
            nonce: fastrand::u64(..),
        });
        Ok(Self { context, counts })
    }

    fn event_handlers(&self) -> Vec<std::sync::Arc<dyn serenity::all::EventHandler>> {
        vec![self.counts.clone()]
    }

    fn stats(&self) -> impl Serialize {
        ClusterFields {
            cluster: self.context.id,
            events: self.counts.events.load(Ordering::Relaxed),
        }
    }

    async fn handle_command(&self, _: Target, payload: Payload) -> Result<Payload, String> {
        if payload.as_bytes() == b"cluster-data" {
            return Ok(self.context.cluster_data.clone());
        }
        if payload.as_bytes() == b"http-hooked" {
            return Payload::encode(&HTTP_HOOKED.load(Ordering::SeqCst)).map_err(|e| e.to_string());
        }
        if payload.as_bytes() == b"status" {
            let status = ClusterStatus {
                id: self.context.id,
                shards: self.context.shards.clone().collect(),
                guilds: self.counts.guilds.load(Ordering::Relaxed),
                events: self.counts.events.load(Ordering::Relaxed),
            };
            return Payload::encode(&status).map_err(|e| e.to_string());
        }
        let text = String::from_utf8_lossy(payload.as_bytes()).into_owned();
        if let Some(n) = text.strip_prefix("panic-events:") {
            let n = n.parse().map_err(|_| format!("bad count in {text:?}"))?;
            self.counts.panics.store(n, Ordering::SeqCst);
            return Ok(Payload::empty());
        }
        if let Some(answer) = common_command(&payload).await {
            return answer;
        }
        if let Some(post) = post_command(&text) {
            let (channel, n) = post?;
            let channel = serenity::all::ChannelId::new(channel.max(1));
            let http = &self.context.http;
            return post_all((0..n).map(|i| async move {
                channel.say(http, format!("message {i}")).await.map(drop)
            }))
            .await;
        }
        if let Some(answer) = fetch_command(&self.context.ipc, &text).await {
            return answer;
        }
        Ok(payload)
    }
}
