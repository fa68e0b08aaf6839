//! fleet-serenity: runs a fleet's clusters with serenity 0.12.
//!
//! # Theory of operation
//!
//! The bot author implements [`ClusterWorker`]: it starts with the cluster's HTTP client, cache,
//! `TypeMap` and IPC handle, and hands back the serenity [`EventHandler`]s it already knows how to
//! write (every handler gets serenity's usual `Context`; the fleet's [`Ipc`] is in `ctx.data`
//! under [`FleetIpc`]). In each cluster process the adapter:
//!
//! 1. builds serenity's `Http` on the fleet's REST base and a shared `Cache` with the user's
//!    settings;
//! 2. starts an identify gate (`relay`): a websocket relay on loopback that every shard connects
//!    through. It forwards frames both ways but holds each IDENTIFY until the admiral's identify
//!    queue allows it. serenity 0.12 decides on its own when to identify (its shard queuer waits a
//!    fixed 5 s between boots and ignores `max_concurrency`, and re-identifies happen deep in its
//!    shard runners, with no hook), so the gate sits on the wire, where it sees every identify,
//!    first or repeated, and nothing else needs to change;
//! 3. runs one serenity `ShardManager` per shard (so serenity's 5 s wait between boots never
//!    applies across shards), all sharing the handlers, cache, data and HTTP client; the gate
//!    paces them, so serenity clusters start at the same identify limit as twilight clusters;
//! 4. reports READY, RESUMED and disconnects through carrier's `ShardReporter`, which reports
//!    the cluster ready once every shard is; on shutdown runs [`ClusterWorker::shutdown`] and
//!    closes every shard with 1000.
//!
//! The cluster's life (start, serve, stop) is carrier's cluster protocol (`carrier::cluster`):
//! this adapter implements `carrier::cluster::Shards` over serenity's shard managers and nothing
//! else.
//!
//! serenity resumes to its `ws_url` (the gate), never to `resume_gateway_url`; the gate reconnects
//! to the configured gateway, where Discord accepts the resume.
//!
//! The cluster's `Cache` answers other workers' `Ipc::fetch_*`, and the `Http` client goes
//! through the admiral's REST proxy when it is on (serenity only honours a custom base with its
//! own rate limiter off, which is what the proxy wants).
//!
//! serenity 0.12 cannot start from a session it did not open, so a session handover goes through
//! the gate: the old process's gate stops each shard's connection at a dispatch and hands the
//! session over with its READY and the shard's cached guilds; the replacement's gate resumes it
//! upstream in place of serenity's IDENTIFY and shows serenity the READY and the guilds, then
//! Discord's replay. User code handles each event once.
//!
//! A reshard's new generation has no standby of its own, because serenity's handlers are fixed
//! when the client is built; the gate stands in. Until the switch it holds back the dispatches
//! that create something (messages, interactions, channels, threads, roles), which the old
//! generation handles; at the switch both generations' gates split those by creation time, and
//! the old one's stops all other dispatches `SWITCH_GUARD` later. Updates and member events
//! reach the new generation's handlers from its first READY.

mod relay;

use std::future::Future;
use std::marker::PhantomData;
use std::ops::RangeInclusive;
use std::sync::Arc;

use carrier::cluster::{ShardReporter, Shards};
use carrier::ipc::proto::ShardSession;
pub use carrier::worker::BoxError;
use carrier::worker::start_cluster_worker;
pub use carrier::{
    AdmiralHandle, Fleet, FleetEvent, FleetOptions, Group, Ipc, Payload, RestartMode, Service,
    ServiceContext, Target,
};
use carrier::{ClusterContext as CarrierContext, ClusterRunner, Fetch, ShardEvent};
use futures::StreamExt as _;
use futures::future::BoxFuture;
use serenity::all::{
    ConnectionStage, Context, EventHandler, GatewayIntents, RawEventHandler, Ready, ResumedEvent,
    ShardStageUpdateEvent,
};
use serenity::cache::{Cache, Settings as CacheSettings};
use serenity::gateway::{PresenceData, ShardManager, ShardManagerOptions};
use serenity::http::{Http, HttpBuilder};
use serenity::prelude::{TypeMap, TypeMapKey};
use tokio::sync::{Mutex, RwLock};

/// Discord's REST base; serenity's default.
const DISCORD_REST: &str = "https://discord.com";

/// The key of the fleet's [`Ipc`] handle in serenity's `ctx.data`.
#[derive(Debug)]
pub struct FleetIpc;

impl TypeMapKey for FleetIpc {
    type Value = Ipc;
}

/// What a cluster's worker gets when it starts.
#[derive(Clone)]
pub struct ClusterContext {
    /// Its IPC handle (also in `ctx.data` under [`FleetIpc`]).
    pub ipc: Ipc,
    /// Cluster id.
    pub id: u32,
    /// Its shards.
    pub shards: RangeInclusive<u32>,
    /// Shards in the whole bot.
    pub shard_total: u32,
    /// The fleet's layout: every cluster's shards, this process, its generation; maps a guild
    /// to its shard and cluster without asking.
    pub topology: carrier::Topology,
    /// This cluster's own data from `Fleet::cluster_data` (empty without it); read it with
    /// `cluster_data.decode::<T>()`.
    pub cluster_data: carrier::Payload,
    /// serenity's HTTP client on the fleet's REST base.
    pub http: Arc<Http>,
    /// The cache every shard of the cluster fills.
    pub cache: Arc<Cache>,
    /// serenity's `ctx.data`, shared by every shard.
    pub data: Arc<RwLock<TypeMap>>,
    /// Whether a shard is replaying what a crashed process of this cluster may have handled
    /// already: after a crash the replacement resumes each session from its last checkpoint
    /// (`FleetOptions::checkpoint_interval`), and until the shard's RESUMED the events it gets
    /// may be ones the dead process handled. `replay.is_replaying(ctx.shard_id.0)`.
    pub replay: carrier::cluster::Replay,
}

impl std::fmt::Debug for ClusterContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterContext")
            .field("id", &self.id)
            .field("shards", &self.shards)
            .field("shard_total", &self.shard_total)
            .finish_non_exhaustive()
    }
}

/// The user's code in a cluster process.
pub trait ClusterWorker: Send + Sync + Sized + 'static {
    /// Starts the worker, before the shards connect. An error fails the cluster's start.
    fn start(context: ClusterContext) -> impl Future<Output = Result<Self, BoxError>> + Send;

    /// The serenity event handlers of this cluster.
    fn event_handlers(&self) -> Vec<Arc<dyn EventHandler>>;

    /// serenity raw event handlers. Default none.
    fn raw_event_handlers(&self) -> Vec<Arc<dyn RawEventHandler>> {
        Vec::new()
    }

    /// Answers a command sent to this cluster. The default refuses.
    ///
    /// It runs on the worker's IPC reader until it first waits, so a quick answer costs no task;
    /// hand long synchronous work to `tokio::task::spawn_blocking` (the reader reads nothing,
    /// heartbeats included, until the handler yields).
    fn handle_command(
        &self,
        from: Target,
        payload: Payload,
    ) -> impl Future<Output = Result<Payload, String>> + Send {
        let _ = (from, payload);
        async { Err("this cluster takes no commands".to_owned()) }
    }

    /// Runs on a graceful shutdown, before the shards close.
    fn shutdown(&self) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// This cluster's own fields for each stats snapshot, under it in
    /// `FleetStats::clusters`. Runs on the IPC reader once per round: read what is at hand, do
    /// not wait. The default, `()`, adds nothing.
    fn stats(&self) -> impl serde::Serialize {}
}

/// serenity settings of every cluster.
#[derive(Clone)]
pub struct Settings {
    /// Gateway intents.
    pub intents: GatewayIntents,
    /// Presence set when identifying.
    pub presence: Option<PresenceData>,
    /// Cache settings.
    pub cache: CacheSettings,
    /// Each shard's own presence, in place of [`presence`](Self::presence)
    /// ([`presence_per_shard`](Self::presence_per_shard),
    /// [`activity_per_shard`](Self::activity_per_shard)).
    pub shard_presence: Option<PresenceFn>,
    /// Adjusts serenity's HTTP client ([`configure_http`](Self::configure_http)).
    pub configure_http: Option<HttpHook>,
}

/// A shard's presence when it identifies, from its id, the shard total and its cluster's id.
pub type PresenceFn = Arc<dyn Fn(u32, u32, u32) -> PresenceData + Send + Sync>;

/// Adjusts serenity's `HttpBuilder` (an application id, a `reqwest` client of your own, ...).
/// fleet sets the REST base, no client-side ratelimiter and, with the REST proxy, its key after
/// it (a client given here then loses to the one carrying the key).
pub type HttpHook = Arc<dyn Fn(HttpBuilder) -> HttpBuilder + Send + Sync>;

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("intents", &self.intents)
            .finish_non_exhaustive()
    }
}

impl Settings {
    /// Settings with these intents, no presence and serenity's default cache settings.
    #[must_use]
    pub fn new(intents: GatewayIntents) -> Self {
        Self {
            intents,
            presence: None,
            cache: CacheSettings::default(),
            shard_presence: None,
            configure_http: None,
        }
    }

    /// Gives each shard its own presence when it identifies, made from the shard's id, the
    /// shard total and its cluster's id.
    #[must_use]
    pub fn presence_per_shard(
        mut self,
        presence: impl Fn(u32, u32, u32) -> PresenceData + Send + Sync + 'static,
    ) -> Self {
        self.shard_presence = Some(Arc::new(presence));
        self
    }

    /// Each shard shows `status` and the activity `activity` makes from `template`, where
    /// `{shard}`, `{shard_total}` and `{cluster}` become the shard's numbers
    /// ([`carrier::cluster::render_template`]): `activity_per_shard(OnlineStatus::Online,
    /// ActivityData::playing, "Shard {shard} of {shard_total}")`.
    #[must_use]
    pub fn activity_per_shard(
        self,
        status: serenity::all::OnlineStatus,
        activity: impl Fn(String) -> serenity::all::ActivityData + Send + Sync + 'static,
        template: &str,
    ) -> Self {
        let template = template.to_owned();
        self.presence_per_shard(move |shard, total, cluster| PresenceData {
            activity: Some(activity(carrier::cluster::render_template(
                &template, shard, total, cluster,
            ))),
            status,
        })
    }

    /// Adjusts serenity's HTTP client before it is built (see [`HttpHook`]).
    #[must_use]
    pub fn configure_http(
        mut self,
        hook: impl Fn(HttpBuilder) -> HttpBuilder + Send + Sync + 'static,
    ) -> Self {
        self.configure_http = Some(Arc::new(hook));
        self
    }
}

/// Builds a fleet whose clusters run `W` with serenity.
#[must_use]
pub fn fleet<W: ClusterWorker>(options: FleetOptions, settings: Settings) -> Fleet {
    Fleet::new(options, Arc::new(SerenityRunner::<W>::new(settings)))
}

/// The [`ClusterRunner`] for serenity clusters running `W`.
pub struct SerenityRunner<W> {
    settings: Settings,
    worker: PhantomData<fn() -> W>,
}

impl<W> std::fmt::Debug for SerenityRunner<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SerenityRunner")
            .field("settings", &self.settings)
            .finish()
    }
}

impl<W: ClusterWorker> SerenityRunner<W> {
    /// A runner with these settings.
    #[must_use]
    pub fn new(settings: Settings) -> Self {
        Self {
            settings,
            worker: PhantomData,
        }
    }
}

/// serenity's HTTP client on a REST base: Discord's, or another such as the admiral's REST proxy
/// or a local Discord. serenity honours a custom base only with its own rate limiter off, which
/// is right for the proxy (it keeps the limits for the whole fleet); against any other custom
/// base nothing limits the client. With a `proxy_key` (the fleet's REST proxy), every request
/// carries it.
#[must_use]
pub fn http_client(token: &str, rest_url: &str, proxy_key: Option<&carrier::Secret>) -> Http {
    configured_http_client(token, rest_url, proxy_key, None).0
}

/// [`http_client`], adjusted by the user's hook before fleet sets what it must; and the hook's
/// panic, if it panicked (the client is then built without it).
fn configured_http_client(
    token: &str,
    rest_url: &str,
    proxy_key: Option<&carrier::Secret>,
    hook: Option<&HttpHook>,
) -> (Http, Option<carrier::panics::Panicked>) {
    carrier::rest::install_crypto_provider();
    let rest_url = rest_url.trim_end_matches('/');
    let (builder, panicked) = match hook {
        Some(hook) => {
            carrier::panics::adjust(HttpBuilder::new(token), &**hook, || HttpBuilder::new(token))
        }
        None => (HttpBuilder::new(token), None),
    };
    if rest_url == DISCORD_REST {
        return (builder.build(), panicked);
    }
    let mut builder = builder.proxy(rest_url).ratelimiter_disabled(true);
    if let Some(key) = proxy_key {
        let client = reqwest::Client::builder()
            .use_rustls_tls()
            .default_headers(carrier::rest::key_headers(key))
            .build();
        match client {
            Ok(client) => builder = builder.client(client),
            Err(error) => {
                tracing::error!(target: "fleet::proxy", %error, "cannot build an HTTP client with the proxy key");
            }
        }
    }
    (builder.build(), panicked)
}

impl<W: ClusterWorker> ClusterRunner for SerenityRunner<W> {
    fn run(&self, context: CarrierContext) -> BoxFuture<'static, Result<(), BoxError>> {
        Box::pin(run_cluster::<W>(self.settings.clone(), context))
    }
}

/// Passes shard progress to carrier's [`ShardReporter`].
struct Reporter(ShardReporter, relay::Gate);

#[serenity::async_trait]
impl EventHandler for Reporter {
    async fn ready(&self, ctx: Context, _: Ready) {
        // A handed-over session's READY is shown before its cached guilds: the shard is ready
        // at its RESUMED, once serenity has cached them.
        if !self.1.took_over(ctx.shard_id.0) {
            self.0.report(ctx.shard_id.0, ShardEvent::Ready).await;
        }
    }

    async fn resume(&self, ctx: Context, _: ResumedEvent) {
        self.0.report(ctx.shard_id.0, ShardEvent::Resumed).await;
    }

    async fn shard_stage_update(&self, _: Context, update: ShardStageUpdateEvent) {
        let event = match update.new {
            ConnectionStage::Disconnected => ShardEvent::Disconnected(None),
            ConnectionStage::Connecting => ShardEvent::Connecting,
            _ => return,
        };
        self.0.report(update.shard_id.0, event).await;
    }
}

#[serenity::async_trait]
impl RawEventHandler for Reporter {
    async fn raw_event(&self, ctx: Context, _: serenity::all::Event) {
        self.0.event(ctx.shard_id.0);
    }
}

/// The cache's counts for a stats round: totals, and guilds and members by shard.
fn cache_counts(cache: &Cache, shard_total: u32) -> carrier::stats::CacheCounts {
    let mut by_shard = std::collections::BTreeMap::<u32, (u64, u64)>::new();
    let (mut members, mut large, mut voice) = (0, 0, 0);
    for id in cache.guilds() {
        let Some(guild) = cache.guild(id) else {
            continue;
        };
        let shard = ((id.get() >> 22) % u64::from(shard_total.max(1))) as u32;
        let entry = by_shard.entry(shard).or_default();
        entry.0 += 1;
        entry.1 += guild.member_count;
        members += guild.member_count;
        large += u64::from(guild.large);
        voice += guild.voice_states.len() as u64;
    }
    carrier::stats::CacheCounts {
        guilds: cache.guild_count() as u64,
        users: cache.user_count() as u64,
        members,
        large_guilds: large,
        voice_connections: Some(voice),
        by_shard: by_shard.into_iter().map(|(s, (g, m))| (s, g, m)).collect(),
    }
}

/// Copies each shard's heartbeat latency from serenity's runner info into the stats board,
/// every few seconds, until the managers are gone.
async fn watch_latency(managers: Vec<std::sync::Weak<ShardManager>>, reporter: ShardReporter) {
    let mut every = tokio::time::interval(std::time::Duration::from_secs(5));
    loop {
        every.tick().await;
        let mut alive = false;
        for manager in managers.iter().filter_map(std::sync::Weak::upgrade) {
            alive = true;
            for (id, info) in manager.runners.lock().await.iter() {
                if let Some(latency) = info.latency {
                    reporter.latency(id.0, latency);
                }
            }
        }
        if !alive {
            return;
        }
    }
}

/// Answers other workers' `Ipc::fetch_*` from the cluster's cache: serenity's models serialised
/// in Discord's JSON shape (a guild with its channels, members and roles).
fn fetch_handler(cache: Arc<Cache>) -> carrier::FetchHandler {
    use serenity::all::{ChannelId, GuildId, UserId};
    Arc::new(move |query| {
        let json = match query {
            Fetch::User(id) => serde_json::to_vec(&*cache.user(UserId::new(nonzero(id)?))?),
            // Deprecated in 0.12 in favour of a walk over every guild; this is the one lookup
            // by channel id that costs no walk.
            #[allow(deprecated)]
            Fetch::Channel(id) => {
                serde_json::to_vec(&*cache.channel(ChannelId::new(nonzero(id)?))?)
            }
            Fetch::Guild(id) => serde_json::to_vec(&*cache.guild(GuildId::new(nonzero(id)?))?),
            Fetch::Member { guild, user } => {
                let guild = cache.guild(GuildId::new(nonzero(guild)?))?;
                serde_json::to_vec(guild.members.get(&UserId::new(nonzero(user)?))?)
            }
            // A lookup this version does not know: a miss.
            _ => return None,
        };
        json.ok()
    })
}

/// serenity's ids panic on zero.
fn nonzero(id: u64) -> Option<u64> {
    (id != 0).then_some(id)
}

async fn run_cluster<W: ClusterWorker>(
    settings: Settings,
    context: CarrierContext,
) -> Result<(), BoxError> {
    carrier::rest::install_crypto_provider();
    let CarrierContext {
        ipc,
        link,
        assignment,
        control,
    } = context;
    let reporter = ShardReporter::new(&link, &assignment);
    let (http, http_panicked) = configured_http_client(
        &assignment.token,
        &assignment.rest_url,
        assignment.rest_key.as_ref(),
        settings.configure_http.as_ref(),
    );
    if let Some(panicked) = http_panicked {
        reporter
            .panicked(panicked, "HTTP configuration", None, None)
            .await;
    }
    let http = Arc::new(http);
    let cache = Arc::new(Cache::new_with_settings(settings.cache.clone()));
    link.set_fetch_handler(fetch_handler(cache.clone()));
    let counted = cache.clone();
    link.set_guild_counter(Arc::new(move || counted.guild_count() as u64));
    let counted = cache.clone();
    let shard_total = assignment.shard_total;
    link.set_cache_counter(Arc::new(move || cache_counts(&counted, shard_total)));
    let data = Arc::new(RwLock::new(TypeMap::new()));
    data.write().await.insert::<FleetIpc>(ipc.clone());
    let shards = assignment.first_shard..=assignment.last_shard;
    let user_context = ClusterContext {
        replay: reporter.replay(),
        ipc: ipc.clone(),
        topology: assignment.topology.clone(),
        cluster_data: assignment.data.clone(),
        id: assignment.id,
        shards: shards.clone(),
        shard_total: assignment.shard_total,
        http: http.clone(),
        cache: cache.clone(),
        data: data.clone(),
    };
    let worker = start_cluster_worker(
        &ipc,
        W::start(user_context),
        |worker: Arc<W>, from, payload| async move { worker.handle_command(from, payload).await },
    )
    .await?;
    let for_stats = worker.clone();
    link.set_stats_fields(Arc::new(move || {
        carrier::stats::encode_fields(&for_stats.stats())
    }));
    let gate = relay::Gate::start(
        assignment.gateway_url.trim_end_matches('/').to_owned(),
        link.clone(),
        reporter.clone(),
        assignment.standby,
    )
    .await?;
    let mut handlers = worker.event_handlers();
    handlers.push(Arc::new(Reporter(reporter.clone(), gate.clone())));
    let mut raw_handlers = worker.raw_event_handlers();
    raw_handlers.push(Arc::new(Reporter(reporter.clone(), gate.clone())));
    let options = ManagerOptions {
        data,
        handlers,
        raw_handlers,
        gate,
        cache,
        http,
        intents: settings.intents,
        presence: settings.presence,
        shard_presence: settings.shard_presence,
        cluster: assignment.id,
        shards,
        shard_total: assignment.shard_total,
    };
    let shards = SerenityShards {
        options: Some(options),
        worker: Some(worker),
        reporter: reporter.clone(),
        managers: Vec::new(),
    };
    carrier::cluster::serve(&link, &assignment, control, &reporter, shards).await
}

/// What serenity's shard managers are built from.
struct ManagerOptions {
    data: Arc<RwLock<TypeMap>>,
    handlers: Vec<Arc<dyn EventHandler>>,
    raw_handlers: Vec<Arc<dyn RawEventHandler>>,
    gate: relay::Gate,
    cache: Arc<Cache>,
    http: Arc<Http>,
    intents: GatewayIntents,
    presence: Option<PresenceData>,
    shard_presence: Option<PresenceFn>,
    cluster: u32,
    shards: RangeInclusive<u32>,
    shard_total: u32,
}

/// A serenity cluster's shards: one shard manager each (serenity's own runner), connected
/// through the relay that reports identifies to the admiral.
struct SerenityShards<W> {
    /// `None` for a handover's replacement, which never starts.
    options: Option<ManagerOptions>,
    worker: Option<Arc<W>>,
    reporter: ShardReporter,
    managers: Vec<Arc<ShardManager>>,
}

/// How long each shard's connection has to say where its session stands for a handover.
const HANDOVER_WITHIN: std::time::Duration = std::time::Duration::from_secs(5);

/// The most bytes of cached guilds a handover carries, for all shards together (the sessions
/// travel in one IPC frame).
const MAX_HANDED_STATE: usize = 8 << 20;

/// What a serenity replacement needs besides the session: the READY it shows serenity, and the
/// guilds the old process had cached, as `GUILD_CREATE` payloads.
#[derive(serde::Serialize, serde::Deserialize)]
struct SessionState {
    ready: String,
    guilds: Vec<String>,
}

/// The cached guilds of one shard, each as Discord's JSON.
fn cached_guilds(cache: &Cache, shard: u32, shard_total: u32) -> Vec<String> {
    cache
        .guilds()
        .into_iter()
        .filter(|id| (id.get() >> 22) % u64::from(shard_total.max(1)) == u64::from(shard))
        .filter_map(|id| serde_json::to_string(&*cache.guild(id)?).ok())
        .collect()
}

impl<W: ClusterWorker> Shards for SerenityShards<W> {
    fn start(&mut self, sessions: Vec<ShardSession>) -> BoxFuture<'_, Result<(), BoxError>> {
        Box::pin(async move {
            // Sessions coming back after a failed handover: the quiet shards make way.
            self.close(std::time::Duration::from_secs(5)).await;
            let Some(o) = &self.options else {
                return Err("this cluster cannot start".into());
            };
            o.gate.seed(sessions.into_iter().filter_map(|session| {
                let state: SessionState = session.state.decode().ok()?;
                let seed = relay::Seed {
                    session_id: session.session_id,
                    seq: session.sequence,
                    ready: state.ready,
                    guilds: state.guilds,
                };
                Some((session.shard, seed))
            }));
            for shard in o.shards.clone() {
                let presence = match &o.shard_presence {
                    Some(make) => {
                        match carrier::panics::catch_sync(|| make(shard, o.shard_total, o.cluster))
                        {
                            Ok(presence) => Some(presence),
                            Err(panicked) => {
                                let context = "shard presence";
                                self.reporter
                                    .panicked(panicked, context, Some(shard), None)
                                    .await;
                                o.presence.clone()
                            }
                        }
                    }
                    None => o.presence.clone(),
                };
                let (manager, mut failures) = ShardManager::new(ShardManagerOptions {
                    data: o.data.clone(),
                    event_handlers: o.handlers.clone(),
                    raw_event_handlers: o.raw_handlers.clone(),
                    shard_index: shard,
                    shard_init: 1,
                    shard_total: o.shard_total,
                    ws_url: Arc::new(Mutex::new(o.gate.url().to_owned())),
                    cache: o.cache.clone(),
                    http: o.http.clone(),
                    intents: o.intents,
                    presence,
                });
                tokio::spawn(async move {
                    while let Some(result) = failures.next().await {
                        if let Err(error) = result {
                            tracing::error!(target: "fleet::shard", shard, %error, "serenity shard manager failed");
                        }
                    }
                });
                self.reporter.report(shard, ShardEvent::Connecting).await;
                manager.initialize()?;
                self.managers.push(manager);
            }
            let watched = self.managers.iter().map(Arc::downgrade).collect();
            tokio::spawn(watch_latency(watched, self.reporter.clone()));
            Ok(())
        })
    }

    fn hand_over(&mut self) -> BoxFuture<'_, Vec<ShardSession>> {
        Box::pin(async move {
            let Some(o) = &self.options else {
                return Vec::new();
            };
            let cuts = o.gate.cut_all(HANDOVER_WITHIN).await;
            // Each session closed resumably at its cut, as a twilight shard's close is reported;
            // serenity itself, kept quiet by the gate, never sees it.
            for cut in &cuts {
                let closed = ShardEvent::Disconnected(Some(4000));
                self.reporter.report(cut.shard, closed).await;
            }
            // The cached guilds go along, each shard's within its share of one IPC frame.
            let budget = MAX_HANDED_STATE / cuts.len().max(1);
            cuts.into_iter()
                .map(|cut| {
                    let mut guilds = cached_guilds(&o.cache, cut.shard, o.shard_total);
                    if guilds.iter().map(String::len).sum::<usize>() > budget {
                        tracing::warn!(target: "fleet::restart", shard = cut.shard, guilds = guilds.len(), "the shard's cached guilds are too large to hand over; the replacement's cache starts without them");
                        guilds.clear();
                    }
                    let state = SessionState {
                        ready: cut.ready,
                        guilds,
                    };
                    ShardSession {
                        shard: cut.shard,
                        session_id: cut.session_id,
                        sequence: cut.seq,
                        resume_url: cut.resume_url,
                        state: Payload::encode(&state).unwrap_or_default(),
                    }
                })
                .collect()
        })
    }

    fn cut(&mut self, at_ms: u64, old: bool) {
        if let Some(o) = &self.options {
            o.gate.cut(at_ms, old);
        }
    }

    fn deactivate(&mut self) -> BoxFuture<'_, ()> {
        // serenity's handlers cannot be gated: the gate stops the dispatches instead.
        if let Some(o) = &self.options {
            o.gate.deactivate();
        }
        Box::pin(async {})
    }

    fn close(&mut self, grace: std::time::Duration) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let managers = std::mem::take(&mut self.managers);
            if let Some(o) = &self.options {
                o.gate.retire();
            }
            let closing = futures::future::join_all(managers.iter().map(|m| m.shutdown_all()));
            let _ = tokio::time::timeout(grace, closing).await;
            // What serenity did not close in time is ended at the gateway all the same.
            if let Some(o) = &self.options {
                let left = o.gate.end_all();
                if left > 0 {
                    tracing::warn!(target: "fleet::shard", sessions = left, "serenity did not close every shard in time; the relay ended them");
                }
                // The process may exit right after: let the relay's close frames go out first.
                if !o.gate.settled(std::time::Duration::from_secs(1)).await {
                    tracing::warn!(target: "fleet::shard", "the relay's gateway connections did not close within 1 s");
                }
            }
        })
    }

    fn shutdown(&mut self) -> BoxFuture<'_, ()> {
        let worker = self.worker.clone();
        Box::pin(async move {
            if let Some(worker) = worker {
                worker.shutdown().await;
            }
        })
    }
}
