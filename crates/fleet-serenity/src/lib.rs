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
//! 2. starts an identify gate ([`relay`]): a websocket relay on loopback that every shard connects
//!    through. It forwards frames both ways but holds each IDENTIFY until the admiral's identify
//!    queue allows it. serenity 0.12 decides on its own when to identify (its shard queuer waits a
//!    fixed 5 s between boots and ignores `max_concurrency`, and re-identifies happen deep in its
//!    shard runners, with no hook), so the gate sits on the wire, where it sees every identify,
//!    first or repeated, and nothing else needs to change;
//! 3. runs one serenity `ShardManager` per shard (so serenity's 5 s wait between boots never
//!    applies across shards), all sharing the handlers, cache, data and HTTP client; the gate
//!    paces them, so serenity clusters start at the same identify limit as twilight clusters;
//! 4. reports READY, RESUMED and disconnects to the admiral, and the cluster ready once every
//!    shard is; on shutdown runs [`ClusterWorker::shutdown`] and closes every shard with 1000.
//!
//! serenity resumes to its `ws_url` (the gate), never to `resume_gateway_url`; the gate reconnects
//! to the configured gateway, where Discord accepts the resume.
//!
//! The cluster's `Cache` answers other workers' `Ipc::fetch_*`, and the `Http` client goes
//! through the admiral's REST proxy when it is on (serenity only honours a custom base with its
//! own rate limiter off, which is what the proxy wants).
//!
//! What serenity 0.12 cannot do: resume a session it did not open (its shards take no session to
//! start from), so a session handover is refused with a clear error and serenity clusters restart
//! with `RestartMode::Overlap`; and a reshard's new generation has no standby, because serenity's
//! handlers are fixed when the client is built: they handle events from their first READY, beside
//! the old generation until it drains.

mod relay;

use std::collections::HashSet;
use std::future::Future;
use std::marker::PhantomData;
use std::ops::RangeInclusive;
use std::sync::{Arc, Mutex as StdMutex, PoisonError};

use carrier::ipc::link::Stop;
pub use carrier::worker::BoxError;
use carrier::worker::start_cluster_worker;
pub use carrier::{
    AdmiralHandle, Fleet, FleetEvent, FleetOptions, Group, Ipc, Payload, RestartMode, Service,
    ServiceContext, Target,
};
use carrier::{
    BotGateway, ClusterContext as CarrierContext, ClusterRunner, Fetch, ShardEvent, Status,
};
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
    /// serenity's HTTP client on the fleet's REST base.
    pub http: Arc<Http>,
    /// The cache every shard of the cluster fills.
    pub cache: Arc<Cache>,
    /// serenity's `ctx.data`, shared by every shard.
    pub data: Arc<RwLock<TypeMap>>,
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
}

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
        }
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

fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// serenity's HTTP client on a REST base: Discord's, or another such as the admiral's REST proxy
/// or a local Discord. serenity honours a custom base only with its own rate limiter off, which
/// is right for the proxy (it keeps the limits for the whole fleet); against any other custom
/// base nothing limits the client. With a `proxy_key` (the fleet's REST proxy), every request
/// carries it.
#[must_use]
pub fn http_client(token: &str, rest_url: &str, proxy_key: Option<&carrier::Secret>) -> Http {
    install_crypto();
    let rest_url = rest_url.trim_end_matches('/');
    if rest_url == DISCORD_REST {
        return Http::new(token);
    }
    let mut builder = HttpBuilder::new(token)
        .proxy(rest_url)
        .ratelimiter_disabled(true);
    if let Some(key) = proxy_key {
        let client = reqwest::Client::builder()
            .use_rustls_tls()
            .default_headers(carrier::proxy::key_headers(key))
            .build();
        match client {
            Ok(client) => builder = builder.client(client),
            Err(error) => {
                tracing::error!(target: "fleet::proxy", %error, "cannot build an HTTP client with the proxy key");
            }
        }
    }
    builder.build()
}

impl<W: ClusterWorker> ClusterRunner for SerenityRunner<W> {
    fn bot_gateway(
        &self,
        token: &str,
        rest_url: &str,
    ) -> BoxFuture<'static, Result<BotGateway, BoxError>> {
        let http = http_client(token, rest_url, None);
        Box::pin(async move {
            let info = http.get_bot_gateway().await?;
            let limit = info.session_start_limit;
            Ok(BotGateway {
                url: info.url,
                shards: info.shards,
                max_concurrency: u32::try_from(limit.max_concurrency).unwrap_or(1),
                total: u32::try_from(limit.total).unwrap_or(u32::MAX),
                remaining: u32::try_from(limit.remaining).unwrap_or(u32::MAX),
                reset_after_ms: limit.reset_after,
            })
        })
    }

    fn run(&self, context: CarrierContext) -> BoxFuture<'static, Result<(), BoxError>> {
        Box::pin(run_cluster::<W>(self.settings.clone(), context))
    }
}

/// Reports shard progress to the admiral, and the cluster ready once every shard is.
struct Reporter {
    ipc: Ipc,
    ready: StdMutex<HashSet<u32>>,
    all: usize,
}

#[serenity::async_trait]
impl EventHandler for Reporter {
    async fn ready(&self, ctx: Context, _: Ready) {
        let shard = ctx.shard_id.0;
        let _ = self
            .ipc
            .report(Status::Shard {
                shard,
                event: ShardEvent::Ready,
            })
            .await;
        let all_ready = {
            let mut ready = self.ready.lock().unwrap_or_else(PoisonError::into_inner);
            ready.insert(shard) && ready.len() == self.all
        };
        if all_ready {
            let _ = self.ipc.report(Status::Ready).await;
        }
    }

    async fn resume(&self, ctx: Context, _: ResumedEvent) {
        let _ = self
            .ipc
            .report(Status::Shard {
                shard: ctx.shard_id.0,
                event: ShardEvent::Resumed,
            })
            .await;
    }

    async fn shard_stage_update(&self, _: Context, update: ShardStageUpdateEvent) {
        let event = match update.new {
            ConnectionStage::Disconnected => ShardEvent::Disconnected(None),
            ConnectionStage::Connecting => ShardEvent::Connecting,
            _ => return,
        };
        let _ = self
            .ipc
            .report(Status::Shard {
                shard: update.shard_id.0,
                event,
            })
            .await;
    }
}

/// Answers other workers' `Ipc::fetch_*` from the cluster's cache: serenity's models serialised
/// in Discord's JSON shape (a guild with its channels, members and roles).
fn fetch_handler(cache: Arc<Cache>) -> carrier::FetchHandler {
    use serenity::all::{ChannelId, GuildId, UserId};
    Arc::new(move |query| {
        let json = match query {
            Fetch::GuildCount => serde_json::to_vec(&cache.guild_count()),
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
    install_crypto();
    let CarrierContext {
        ipc,
        assignment,
        mut control,
    } = context;
    if assignment.handover {
        // serenity 0.12 opens its sessions itself and offers no way to resume one it did not
        // open: refuse, and the old process keeps serving.
        let reason = "serenity clusters cannot resume handed-over sessions; restart them with RestartMode::Overlap";
        let _ = ipc.report(Status::StartFailed(reason.to_owned())).await;
        ipc.flush().await;
        return Err(reason.into());
    }
    let http = Arc::new(http_client(
        &assignment.token,
        &assignment.rest_url,
        assignment.rest_key.as_ref(),
    ));
    let cache = Arc::new(Cache::new_with_settings(settings.cache.clone()));
    ipc.set_fetch_handler(fetch_handler(cache.clone()));
    let data = Arc::new(RwLock::new(TypeMap::new()));
    data.write().await.insert::<FleetIpc>(ipc.clone());
    let shards = assignment.first_shard..=assignment.last_shard;
    let user_context = ClusterContext {
        ipc: ipc.clone(),
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

    let gate = relay::start(
        assignment.gateway_url.trim_end_matches('/').to_owned(),
        ipc.clone(),
    )
    .await?;
    let mut handlers = worker.event_handlers();
    handlers.push(Arc::new(Reporter {
        ipc: ipc.clone(),
        ready: StdMutex::default(),
        all: shards.clone().count(),
    }));
    let raw_handlers = worker.raw_event_handlers();
    let mut managers = Vec::new();
    for shard in shards {
        let (manager, mut failures) = ShardManager::new(ShardManagerOptions {
            data: data.clone(),
            event_handlers: handlers.clone(),
            raw_event_handlers: raw_handlers.clone(),
            shard_index: shard,
            shard_init: 1,
            shard_total: assignment.shard_total,
            ws_url: Arc::new(Mutex::new(gate.clone())),
            cache: cache.clone(),
            http: http.clone(),
            intents: settings.intents,
            presence: settings.presence.clone(),
        });
        tokio::spawn(async move {
            while let Some(result) = failures.next().await {
                if let Err(error) = result {
                    tracing::error!(target: "fleet::shard", shard, %error, "serenity shard manager failed");
                }
            }
        });
        let _ = ipc
            .report(Status::Shard {
                shard,
                event: ShardEvent::Connecting,
            })
            .await;
        manager.initialize()?;
        managers.push(manager);
    }

    let grace = match control.stopped().await {
        Stop::Shutdown(grace) => {
            let shutdown = carrier::panics::catch(tokio::time::timeout(grace, worker.shutdown()));
            if let Err(panicked) = shutdown.await {
                let _ = ipc
                    .report(Status::Panic(panicked.report("shutdown", None, None)))
                    .await;
            }
            grace
        }
        Stop::Disconnected => std::time::Duration::from_secs(5),
    };
    let closing = futures::future::join_all(managers.iter().map(|m| m.shutdown_all()));
    let _ = tokio::time::timeout(grace, closing).await;
    Ok(())
}
