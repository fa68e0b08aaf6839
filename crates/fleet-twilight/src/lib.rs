//! fleet-twilight: runs a fleet's clusters with twilight.
//!
//! # Theory of operation
//!
//! The bot author implements [`ClusterWorker`] (and any carrier [`Service`]s) and builds a fleet
//! with [`fleet`]. In each cluster process, the adapter:
//!
//! 1. builds a `twilight_http::Client` on the fleet's REST base and the cluster's shards with
//!    twilight-gateway, all sharing an identify queue ([`IpcQueue`]) that asks the admiral for
//!    every identify, so shards of every cluster together keep Discord's pacing;
//! 2. starts the user's worker with the HTTP client, the shards' message senders and its IPC
//!    handle, before any shard connects, so no event arrives before user code is there;
//! 3. drives each shard on its own task, passing every event to
//!    [`ClusterWorker::handle_event`] in order, and reports READY, RESUMED and closes to the
//!    admiral; once every shard is READY it reports the cluster ready;
//! 4. on shutdown, runs [`ClusterWorker::shutdown`], closes every shard with 1000 and drains what
//!    is left of their events.
//!
//! Every event updates the cluster's cache (twilight-cache-inmemory, [`Settings::cache`]) before
//! the worker sees it; the cache answers other workers' `Ipc::fetch_*`.
//!
//! Session handover (`RestartMode::Handover`): a replacement process starts the worker, reports
//! prepared and waits; the old process keeps handing events to its worker until each shard's
//! resumable close (4000) comes back, so a shard's session sequence is exactly the last event
//! its worker handled, and passes `session_id`, sequence and resume URL over. The replacement
//! builds its shards with `ConfigBuilder::session` and `resume_url` and resumes: Discord replays
//! whatever came in between. Each shard's cached guilds go along with its session (`handed`)
//! and fill the replacement's cache before it resumes. If the replacement fails, the sessions
//! come back and the old process resumes them itself.
//!
//! Crash resume: each session's checkpoint (carrier's) carries the ids of its guilds from its
//! READY. The replacement of a cluster that crashed resumes the sessions (Discord replays what
//! came after the checkpoint, and sends no `GUILD_CREATE`), and fetches those guilds and their
//! channels into its cache over REST, ten requests a second at most.
//!
//! Standby (a reshard's new generation): shards connect and fill the cache, but events reach the
//! worker only after [`ClusterWorker::activate`].
//!
//! Everything that is not twilight-specific lives in carrier: the cluster's life (prepare,
//! serve, hand over, stop or take back, readiness, the standby gate, the shutdown grace) is
//! carrier's cluster protocol (`carrier::cluster::serve`), and this adapter implements
//! `carrier::cluster::Shards` over twilight's shards.
//!
//! # Example
//!
//! ```no_run
//! use fleet_twilight::{ClusterContext, ClusterWorker, FleetOptions, Settings, BoxError};
//! use twilight_gateway::{Event, Intents, ShardId};
//!
//! struct Bot;
//!
//! impl ClusterWorker for Bot {
//!     async fn start(_: ClusterContext) -> Result<Self, BoxError> {
//!         Ok(Bot)
//!     }
//!     async fn handle_event(&self, shard: ShardId, event: Event) {
//!         if let Event::MessageCreate(message) = event {
//!             println!("shard {shard}: {}", message.content);
//!         }
//!     }
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let options = FleetOptions::new(std::env::var("DISCORD_TOKEN").unwrap_or_default());
//!     let fleet = fleet_twilight::fleet::<Bot>(options, Settings::new(Intents::GUILDS | Intents::GUILD_MESSAGES));
//!     if let Some(admiral) = fleet.run().await? {
//!         admiral.wait_ready(std::time::Duration::from_secs(600)).await?;
//!         tokio::signal::ctrl_c().await?;
//!         admiral.shutdown().await;
//!     }
//!     Ok(())
//! }
//! ```

pub mod cache;
mod handed;

use std::collections::BTreeMap;
use std::future::Future;
use std::marker::PhantomData;
use std::ops::RangeInclusive;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

pub use cache::Cache;
use carrier::cluster::{ClusterLink, Held, Placement, ShardReporter, Shards};
use carrier::ipc::proto::ShardSession;
pub use carrier::worker::BoxError;
use carrier::worker::start_cluster_worker;
pub use carrier::{
    AdmiralHandle, Fleet, FleetEvent, FleetOptions, Group, Ipc, Payload, RestartMode, Service,
    ServiceContext, Target,
};
use carrier::{ClusterContext as CarrierContext, ClusterRunner, Fetch, ShardEvent};
use futures::future::BoxFuture;
use tokio::sync::{oneshot, watch};
pub use twilight_cache_inmemory::ResourceType;
use twilight_gateway::queue::Queue;
use twilight_gateway::{
    CloseFrame, ConfigBuilder, Event, EventTypeFlags, Intents, MessageSender, Session, Shard,
    ShardId, StreamExt as _,
};
use twilight_model::gateway::payload::outgoing::update_presence::UpdatePresencePayload;
use twilight_model::gateway::presence::{ActivityType, MinimalActivity, Status};
use twilight_model::id::Id;

/// Discord's gateway; twilight's default when no other URL is configured.
const DISCORD_GATEWAY: &str = "wss://gateway.discord.gg";

/// What a cluster's worker gets when it starts.
#[derive(Debug, Clone)]
pub struct ClusterContext {
    /// Its IPC handle.
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
    /// An HTTP client on the fleet's REST base.
    pub http: Arc<twilight_http::Client>,
    /// A sender per shard, for gateway commands (presence, member requests).
    pub senders: ShardSenders,
    /// The cluster's cache, filled from every shard's events before the worker sees them (the
    /// kinds in [`Settings::cache`]). Other workers read it through `Ipc::fetch_*`.
    pub cache: Arc<Cache>,
    /// Whether a shard is replaying what a crashed process of this cluster may have handled
    /// already: after a crash the replacement resumes each session from its last checkpoint
    /// (`FleetOptions::checkpoint_interval`), and until the shard's RESUMED the events it gets
    /// may be ones the dead process handled. `replay.is_replaying(shard.number())`.
    pub replay: carrier::cluster::Replay,
}

/// The user's code in a cluster process.
pub trait ClusterWorker: Send + Sync + Sized + 'static {
    /// Starts the worker, before the shards connect. An error fails the cluster's start.
    fn start(context: ClusterContext) -> impl Future<Output = Result<Self, BoxError>> + Send;

    /// Handles one gateway event. Events of one shard arrive in order, one at a time: hand long
    /// work to a task.
    fn handle_event(&self, shard: ShardId, event: Event) -> impl Future<Output = ()> + Send;

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

    /// Runs when a standby cluster goes live: a reshard's new generation connects in standby
    /// (events fill the cache but do not reach [`handle_event`](Self::handle_event)) and is
    /// activated once all of it is ready. Clusters started otherwise are live from the start
    /// and never see this.
    fn activate(&self) -> impl Future<Output = ()> + Send {
        async {}
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

/// Adjusts one shard's twilight configuration (large threshold, identify properties, TLS,
/// ratelimiting of gateway commands, ...). fleet sets the token, intents, queue, gateway URL and
/// the presence first, and the session to resume after; the queue's type keeps identifies
/// going through the admiral.
pub type ShardConfigHook =
    Arc<dyn Fn(ShardId, ConfigBuilder<IpcQueue>) -> ConfigBuilder<IpcQueue> + Send + Sync>;

/// Adjusts the cluster's twilight HTTP client (timeout, default headers, ...). fleet sets the
/// REST base, and with the REST proxy its key and no client-side ratelimiter, after it.
pub type HttpHook = Arc<
    dyn Fn(twilight_http::client::ClientBuilder) -> twilight_http::client::ClientBuilder
        + Send
        + Sync,
>;

/// A shard's presence when it identifies, from the shard and its cluster's id.
pub type PresenceFn = Arc<dyn Fn(ShardId, u32) -> UpdatePresencePayload + Send + Sync>;

/// twilight settings of every cluster.
#[derive(Clone)]
pub struct Settings {
    /// Gateway intents.
    pub intents: Intents,
    /// Events the shards deserialize (others are skipped cheaply). Default: all.
    pub event_types: EventTypeFlags,
    /// Presence set when identifying.
    pub presence: Option<UpdatePresencePayload>,
    /// What the cluster's cache keeps. Default: guilds, channels, members, roles and users,
    /// what `Ipc::fetch_*` answers from. Empty turns the cache off.
    pub cache: ResourceType,
    /// Each shard's own presence, in place of [`presence`](Self::presence)
    /// ([`presence_per_shard`](Self::presence_per_shard),
    /// [`activity_per_shard`](Self::activity_per_shard)).
    pub shard_presence: Option<PresenceFn>,
    /// Adjusts each shard's configuration ([`configure_shard`](Self::configure_shard)).
    pub configure_shard: Option<ShardConfigHook>,
    /// Adjusts the HTTP client ([`configure_http`](Self::configure_http)).
    pub configure_http: Option<HttpHook>,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("intents", &self.intents)
            .field("event_types", &self.event_types)
            .field("presence", &self.presence)
            .field("cache", &self.cache)
            .field("shard_presence", &self.shard_presence.is_some())
            .field("configure_shard", &self.configure_shard.is_some())
            .field("configure_http", &self.configure_http.is_some())
            .finish()
    }
}

impl Settings {
    /// Settings with these intents and every event type.
    #[must_use]
    pub fn new(intents: Intents) -> Self {
        Self {
            intents,
            event_types: EventTypeFlags::all(),
            presence: None,
            cache: ResourceType::GUILD
                | ResourceType::CHANNEL
                | ResourceType::MEMBER
                | ResourceType::ROLE
                | ResourceType::USER,
            shard_presence: None,
            configure_shard: None,
            configure_http: None,
        }
    }

    /// Gives each shard its own presence when it identifies, made from the shard and its
    /// cluster's id.
    #[must_use]
    pub fn presence_per_shard(
        mut self,
        presence: impl Fn(ShardId, u32) -> UpdatePresencePayload + Send + Sync + 'static,
    ) -> Self {
        self.shard_presence = Some(Arc::new(presence));
        self
    }

    /// Each shard shows `status` and one activity of `kind` named by `template`, where
    /// `{shard}`, `{shard_total}` and `{cluster}` become the shard's numbers
    /// ([`carrier::cluster::render_template`]): `"Shard {shard} of {shard_total}"`.
    #[must_use]
    pub fn activity_per_shard(self, status: Status, kind: ActivityType, template: &str) -> Self {
        let template = template.to_owned();
        self.presence_per_shard(move |shard, cluster| {
            let name = carrier::cluster::render_template(
                &template,
                shard.number(),
                shard.total(),
                cluster,
            );
            let activity = MinimalActivity {
                kind,
                name,
                url: None,
            };
            UpdatePresencePayload {
                activities: vec![activity.into()],
                afk: false,
                since: None,
                status,
            }
        })
    }

    /// Adjusts each shard's twilight configuration before it connects (see
    /// [`ShardConfigHook`]).
    #[must_use]
    pub fn configure_shard(
        mut self,
        hook: impl Fn(ShardId, ConfigBuilder<IpcQueue>) -> ConfigBuilder<IpcQueue>
        + Send
        + Sync
        + 'static,
    ) -> Self {
        self.configure_shard = Some(Arc::new(hook));
        self
    }

    /// Adjusts the cluster's HTTP client before it is built (see [`HttpHook`]).
    #[must_use]
    pub fn configure_http(
        mut self,
        hook: impl Fn(twilight_http::client::ClientBuilder) -> twilight_http::client::ClientBuilder
        + Send
        + Sync
        + 'static,
    ) -> Self {
        self.configure_http = Some(Arc::new(hook));
        self
    }
}

/// Builds a fleet whose clusters run `W` with twilight.
#[must_use]
pub fn fleet<W: ClusterWorker>(options: FleetOptions, settings: Settings) -> Fleet {
    Fleet::new(options, Arc::new(TwilightRunner::<W>::new(settings)))
}

/// The [`ClusterRunner`] for twilight clusters running `W`.
pub struct TwilightRunner<W> {
    settings: Settings,
    worker: PhantomData<fn() -> W>,
}

impl<W> std::fmt::Debug for TwilightRunner<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TwilightRunner")
            .field("settings", &self.settings)
            .finish()
    }
}

impl<W: ClusterWorker> TwilightRunner<W> {
    /// A runner with these settings.
    #[must_use]
    pub fn new(settings: Settings) -> Self {
        Self {
            settings,
            worker: PhantomData,
        }
    }
}

/// The most bytes of cached guilds a handover carries, for all shards together (the sessions
/// travel in one IPC frame).
const MAX_HANDED_STATE: usize = 8 << 20;

/// twilight's identify queue for fleet shards: every identify waits for the admiral's queue.
#[derive(Debug, Clone)]
pub struct IpcQueue {
    link: ClusterLink,
}

impl IpcQueue {
    /// A queue that asks the admiral through the cluster's `link`.
    #[must_use]
    pub fn new(link: ClusterLink) -> Self {
        Self { link }
    }
}

impl Queue for IpcQueue {
    fn enqueue(&self, shard: u32) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        let link = self.link.clone();
        tokio::spawn(async move {
            match link.identify(shard).await {
                Ok(()) => {
                    let _ = tx.send(());
                }
                // Dropping `tx` makes the shard ask again.
                Err(error) => {
                    tracing::warn!(target: "fleet::identify", shard, %error, "identify permission failed");
                }
            }
        });
        rx
    }
}

/// An HTTP client on a REST base: Discord's (`https://discord.com`) or a plain-HTTP one such as
/// the admiral's REST proxy or a local Discord (`http://127.0.0.1:PORT`). With a `proxy_key`,
/// the base is the fleet's REST proxy: the client proves itself with the key on every request,
/// the proxy keeps the rate limits for the whole fleet, and the client's own limiter is off.
#[must_use]
pub fn http_client(
    token: &str,
    rest_url: &str,
    proxy_key: Option<&carrier::Secret>,
) -> twilight_http::Client {
    configured_http_client(token, rest_url, proxy_key, None).0
}

/// [`http_client`], adjusted by the user's hook before fleet sets what it must; and the hook's
/// panic, if it panicked (the client is then built without it).
fn configured_http_client(
    token: &str,
    rest_url: &str,
    proxy_key: Option<&carrier::Secret>,
    hook: Option<&HttpHook>,
) -> (twilight_http::Client, Option<carrier::panics::Panicked>) {
    carrier::rest::install_crypto_provider();
    let token = format!("Bot {}", token.trim_start_matches("Bot "));
    let fresh = || twilight_http::Client::builder().token(token.clone());
    let (mut builder, panicked) = match hook {
        Some(hook) => carrier::panics::adjust(fresh(), &**hook, fresh),
        None => (fresh(), None),
    };
    if let Some(host) = rest_url.strip_prefix("http://") {
        builder = builder.proxy(host.trim_end_matches('/').to_owned(), true);
    } else if let Some(host) = rest_url.strip_prefix("https://")
        && host.trim_end_matches('/') != "discord.com"
    {
        builder = builder.proxy(host.trim_end_matches('/').to_owned(), false);
    }
    if let Some(key) = proxy_key {
        builder = builder
            .ratelimiter(None)
            .default_headers(carrier::rest::key_headers(key));
    }
    (builder.build(), panicked)
}

impl<W: ClusterWorker> ClusterRunner for TwilightRunner<W> {
    fn run(&self, context: CarrierContext) -> BoxFuture<'static, Result<(), BoxError>> {
        let settings = self.settings.clone();
        Box::pin(run_cluster::<W>(settings, context))
    }
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
    let (http, http_panicked) = configured_http_client(
        &assignment.token,
        &assignment.rest_url,
        assignment.rest_key.as_ref(),
        settings.configure_http.as_ref(),
    );
    let http = Arc::new(http);
    let refill_http = http.clone();
    let mut config = ConfigBuilder::new(assignment.token.clone(), settings.intents)
        .queue(IpcQueue::new(link.clone()));
    let gateway_url = assignment.gateway_url.trim_end_matches('/');
    if gateway_url != DISCORD_GATEWAY {
        config = config.proxy_url(gateway_url.to_owned());
    }
    if let Some(presence) = settings.presence.clone() {
        config = config.presence(presence);
    }
    let shard_ids = assignment.first_shard..=assignment.last_shard;
    let senders = ShardSenders::default();
    let cache = Arc::new(Cache::builder().resource_types(settings.cache).build());
    link.set_fetch_handler(fetch_handler(cache.clone()));
    let counted = cache.clone();
    link.set_guild_counter(Arc::new(move || counted.stats().guilds() as u64));
    let counted = cache.clone();
    let shard_total = assignment.shard_total;
    link.set_cache_counter(Arc::new(move || cache_counts(&counted, shard_total)));
    let reporter = ShardReporter::new(&link, &assignment);
    let user_context = ClusterContext {
        replay: reporter.replay(),
        ipc: ipc.clone(),
        topology: assignment.topology.clone(),
        cluster_data: assignment.data.clone(),
        id: assignment.id,
        shards: shard_ids.clone(),
        shard_total: assignment.shard_total,
        http,
        senders: senders.clone(),
        cache: cache.clone(),
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
    if let Some(panicked) = http_panicked {
        reporter
            .panicked(panicked, "HTTP configuration", None, None)
            .await;
    }
    let shards = TwilightShards {
        config: config.build(),
        cluster: assignment.id,
        presence: settings.shard_presence.clone(),
        configure: settings.configure_shard.clone(),
        shard_ids,
        shard_total: assignment.shard_total,
        event_types: settings.event_types,
        cache,
        http: refill_http,
        worker,
        reporter: reporter.clone(),
        senders,
        drive: None,
        tasks: Vec::new(),
    };
    carrier::cluster::serve(&link, &assignment, control, &reporter, shards).await
}

/// A twilight cluster's shards: one task each, driving its shard and handing its events to the
/// worker.
struct TwilightShards<W> {
    config: twilight_gateway::Config<IpcQueue>,
    cluster: u32,
    presence: Option<PresenceFn>,
    configure: Option<ShardConfigHook>,
    shard_ids: RangeInclusive<u32>,
    shard_total: u32,
    event_types: EventTypeFlags,
    cache: Arc<Cache>,
    /// Refills the cache over REST after a crash resume.
    http: Arc<twilight_http::Client>,
    worker: Arc<W>,
    reporter: ShardReporter,
    senders: ShardSenders,
    /// Tells the running generation's tasks what to do.
    drive: Option<watch::Sender<Drive>>,
    tasks: Vec<tokio::task::JoinHandle<Option<ShardSession>>>,
}

impl<W: ClusterWorker> Shards for TwilightShards<W> {
    fn start(&mut self, sessions: Vec<ShardSession>) -> BoxFuture<'_, Result<(), BoxError>> {
        // Handed-over guilds fill the cache while the shards connect and resume; no shard
        // handles an event before they are in.
        let handed: Vec<Vec<String>> = sessions
            .iter()
            .filter_map(|s| s.state.decode::<Vec<String>>().ok())
            .filter(|guilds| !guilds.is_empty())
            .collect();
        let (restored_tx, restored) = watch::channel(handed.is_empty());
        if !handed.is_empty() {
            let cache = self.cache.clone();
            tokio::task::spawn_blocking(move || {
                for guilds in &handed {
                    handed::restore(&cache, guilds);
                }
                let _ = restored_tx.send(true);
            });
        }
        // After a crash the cache starts empty (a resume brings no GUILD_CREATE): the guilds the
        // dead process's sessions had are fetched again, slowly, through the REST proxy.
        let refill: Vec<u64> = sessions
            .iter()
            .filter_map(|s| s.state.decode::<GuildIds>().ok())
            .flat_map(|ids| ids.guild_ids)
            .collect();
        if !refill.is_empty() && !self.cache.config().resource_types().is_empty() {
            tokio::spawn(refill_cache(self.http.clone(), self.cache.clone(), refill));
        }
        let (drive_tx, drive) = watch::channel(Drive::Run);
        let mut generation = BTreeMap::new();
        let mut panics = Vec::new();
        for id in self.shard_ids.clone() {
            let shard_id = ShardId::new(id, self.shard_total);
            let presence = self.presence.as_ref().and_then(|presence| {
                carrier::panics::catch_sync(|| presence(shard_id, self.cluster))
                    .map_err(|panicked| panics.push((panicked, "shard presence", id)))
                    .ok()
            });
            let base = || {
                let config = ConfigBuilder::from(self.config.clone());
                match presence.clone() {
                    Some(presence) => config.presence(presence),
                    None => config,
                }
            };
            let mut config = base();
            if let Some(configure) = &self.configure {
                let panicked;
                (config, panicked) =
                    carrier::panics::adjust(config, |c| configure(shard_id, c), base);
                if let Some(panicked) = panicked {
                    panics.push((panicked, "shard configuration", id));
                }
            }
            if let Some(session) = sessions.iter().find(|s| s.shard == id) {
                config = config.session(Session::new(session.sequence, session.session_id.clone()));
                if let Some(url) = &session.resume_url {
                    config = config.resume_url(url.clone());
                }
                // Checkpointed from the start: a crash before RESUMED still resumes it.
                let url = session.resume_url.as_deref();
                let state = checkpoint_state(&session.state);
                self.reporter.opened(id, &session.session_id, url, state);
                self.reporter.handled(id, session.sequence);
            }
            let shard = Shard::with_config(shard_id, config.build());
            generation.insert(id, shard.sender());
            let cluster = ClusterShared {
                event_types: self.event_types,
                cache: self.cache.clone(),
                worker: self.worker.clone(),
                reporter: self.reporter.clone(),
                restored: restored.clone(),
            };
            let task = tokio::spawn(drive_shard(shard, cluster, drive.clone()));
            self.tasks.push(task);
        }
        self.senders.replace(generation);
        self.drive = Some(drive_tx);
        // A hook that panicked is reported; its shard connects as if it had none.
        let reporter = self.reporter.clone();
        Box::pin(async move {
            for (panicked, context, shard) in panics {
                reporter
                    .panicked(panicked, context, Some(shard), None)
                    .await;
            }
            Ok(())
        })
    }

    fn hand_over(&mut self) -> BoxFuture<'_, Vec<ShardSession>> {
        Box::pin(async move {
            // Close every shard resumably; each task returns its session once closed.
            if let Some(drive) = self.drive.take() {
                let _ = drive.send(Drive::CloseResumably);
            }
            for sender in self.senders.all().values() {
                let _ = sender.close(CloseFrame::RESUME);
            }
            // Each shard that closes in time hands its session over. One still waiting to
            // identify has no session to close, and one that does not close in time (it is
            // reconnecting, say) is stopped without: the next process identifies those, or
            // resumes them from an older checkpoint.
            let deadline = tokio::time::Instant::now() + HANDOVER_CLOSE;
            let closing = futures::future::join_all(
                self.tasks
                    .iter_mut()
                    .map(|task| tokio::time::timeout_at(deadline, task)),
            );
            let mut handed: Vec<ShardSession> = closing
                .await
                .into_iter()
                .filter_map(|closed| closed.ok()?.ok().flatten())
                .collect();
            for task in self.tasks.drain(..) {
                task.abort();
            }
            // Each shard's cached guilds go along, within its share of one IPC frame.
            let budget = MAX_HANDED_STATE / handed.len().max(1);
            for session in &mut handed {
                let mut guilds =
                    handed::cached_guilds(&self.cache, session.shard, self.shard_total);
                if guilds.iter().map(String::len).sum::<usize>() > budget {
                    tracing::warn!(target: "fleet::restart", shard = session.shard, guilds = guilds.len(), "the shard's cached guilds are too large to hand over; the replacement's cache fills from events");
                    guilds.clear();
                }
                session.state = carrier::Payload::encode(&guilds).unwrap_or_default();
            }
            handed
        })
    }

    fn close(&mut self, grace: Duration) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Some(drive) = self.drive.take() {
                let _ = drive.send(Drive::Stop);
            }
            for sender in self.senders.all().values() {
                let _ = sender.close(CloseFrame::NORMAL);
            }
            let tasks = std::mem::take(&mut self.tasks);
            let _ = tokio::time::timeout(grace, futures::future::join_all(tasks)).await;
        })
    }

    fn activate(&mut self) -> BoxFuture<'_, ()> {
        let worker = self.worker.clone();
        Box::pin(async move { worker.activate().await })
    }

    fn shutdown(&mut self) -> BoxFuture<'_, ()> {
        let worker = self.worker.clone();
        Box::pin(async move { worker.shutdown().await })
    }
}

/// How long shards have to close for a handover.
const HANDOVER_CLOSE: Duration = Duration::from_secs(5);

/// What the shard tasks are told to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Drive {
    Run,
    Stop,
    CloseResumably,
}

/// The cluster's current shard senders, for gateway commands (presence, member requests). After
/// a failed handover the shards are rebuilt; this always names the live ones.
#[derive(Debug, Clone, Default)]
pub struct ShardSenders(Arc<Mutex<BTreeMap<u32, MessageSender>>>);

impl ShardSenders {
    /// The sender of shard `shard`, if this cluster runs it.
    #[must_use]
    pub fn get(&self, shard: u32) -> Option<MessageSender> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&shard)
            .cloned()
    }

    /// Every shard's sender.
    #[must_use]
    pub fn all(&self) -> BTreeMap<u32, MessageSender> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn replace(&self, senders: BTreeMap<u32, MessageSender>) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = senders;
    }
}

/// Answers other workers' `Ipc::fetch_*` from the cluster's cache, in Discord's JSON shape with
/// the fields the [`cache`] models keep: guilds without member or channel lists, members with
/// their user object embedded.
fn fetch_handler(cache: Arc<Cache>) -> carrier::FetchHandler {
    Arc::new(move |query| {
        let json = match query {
            Fetch::User(id) => serde_json::to_vec(cache.user(Id::new_checked(id)?)?.value()),
            Fetch::Channel(id) => serde_json::to_vec(cache.channel(Id::new_checked(id)?)?.value()),
            Fetch::Guild(id) => serde_json::to_vec(cache.guild(Id::new_checked(id)?)?.value()),
            Fetch::Member { guild, user } => {
                let user = Id::new_checked(user)?;
                let member = cache.member(Id::new_checked(guild)?, user)?;
                let mut value = serde_json::to_value(member.value()).ok()?;
                if let (Some(object), Some(user)) = (value.as_object_mut(), cache.user(user)) {
                    object.insert("user".to_owned(), serde_json::to_value(user.value()).ok()?);
                }
                serde_json::to_vec(&value)
            }
            // A lookup this version does not know: a miss.
            _ => return None,
        };
        json.ok()
    })
}

/// The cache's counts for a stats round: totals, and guilds and members by shard (members as
/// Discord counts them per guild, the cached members where it did not say).
fn cache_counts(cache: &Cache, shard_total: u32) -> carrier::stats::CacheCounts {
    let stats = cache.stats();
    let mut by_shard: BTreeMap<u32, (u64, u64)> = BTreeMap::new();
    let (mut members, mut large) = (0, 0);
    for guild in cache.iter().guilds() {
        let id = guild.id;
        let count = guild
            .member_count
            .or_else(|| stats.guild_members(id).map(|n| n as u64))
            .unwrap_or(0);
        let shard = ((id.get() >> 22) % u64::from(shard_total.max(1))) as u32;
        let entry = by_shard.entry(shard).or_default();
        entry.0 += 1;
        entry.1 += count;
        members += count;
        large += u64::from(guild.large);
    }
    carrier::stats::CacheCounts {
        guilds: stats.guilds() as u64,
        users: stats.users() as u64,
        members,
        large_guilds: large,
        voice_connections: Some(stats.voice_states() as u64),
        by_shard: by_shard.into_iter().map(|(s, (g, m))| (s, g, m)).collect(),
    }
}

/// What a twilight session's checkpoint carries: the ids of the shard's guilds (from its READY),
/// so a crash's replacement can fetch them again.
#[derive(serde::Serialize, serde::Deserialize)]
struct GuildIds {
    guild_ids: Vec<u64>,
}

/// The most guild ids one checkpoint carries (within `carrier::cluster::MAX_CHECKPOINT_STATE`);
/// a shard with more is resumed without a refill.
const MAX_CHECKPOINTED_GUILDS: usize = 6000;

/// A checkpoint's state holding `ids` (empty past [`MAX_CHECKPOINTED_GUILDS`]).
fn guild_ids(ids: Vec<u64>) -> carrier::Payload {
    if ids.len() > MAX_CHECKPOINTED_GUILDS {
        return carrier::Payload::empty();
    }
    carrier::Payload::encode(&GuildIds { guild_ids: ids }).unwrap_or_default()
}

/// The checkpoint state of a session this process starts with: a crash's guild ids as they
/// were, or the ids of a handover's guilds.
fn checkpoint_state(state: &carrier::Payload) -> carrier::Payload {
    #[derive(serde::Deserialize)]
    struct IdOnly {
        id: Id<twilight_model::id::marker::GuildMarker>,
    }
    if state.decode::<GuildIds>().is_ok() {
        return state.clone();
    }
    let handed = state.decode::<Vec<String>>().unwrap_or_default();
    let ids = handed
        .iter()
        .filter_map(|g| serde_json::from_str::<IdOnly>(g).ok())
        .map(|g| g.id.get())
        .collect();
    guild_ids(ids)
}

/// REST requests a cache refill makes per second at most: it shares the fleet's REST budget with
/// the bot's own requests.
const REFILL_PER_SECOND: u64 = 10;

/// Fetches `guilds` and their channels into the cache, at [`REFILL_PER_SECOND`]; a guild an
/// event brought back meanwhile is skipped.
async fn refill_cache(http: Arc<twilight_http::Client>, cache: Arc<Cache>, guilds: Vec<u64>) {
    use twilight_model::gateway::payload::incoming::{ChannelCreate, GuildCreate};
    let mut pace = tokio::time::interval(Duration::from_millis(1000 / REFILL_PER_SECOND));
    let (mut filled, total) = (0, guilds.len());
    for id in guilds.into_iter().filter_map(Id::new_checked) {
        if cache.guild(id).is_some() {
            continue;
        }
        pace.tick().await;
        let guild = match http.guild(id).await {
            Ok(response) => response.model().await,
            Err(error) => {
                tracing::warn!(target: "fleet::shard", guild = id.get(), %error, "cache refill: the guild could not be fetched");
                continue;
            }
        };
        let Ok(guild) = guild else { continue };
        cache.update(&Event::GuildCreate(Box::new(GuildCreate::Available(guild))));
        pace.tick().await;
        if let Ok(response) = http.guild_channels(id).await
            && let Ok(channels) = response.models().await
        {
            for channel in channels {
                cache.update(&Event::ChannelCreate(Box::new(ChannelCreate(channel))));
            }
        }
        filled += 1;
    }
    tracing::info!(target: "fleet::shard", filled, total, "cache refilled after a crash resume");
}

/// The snowflake id of what an event creates, if it creates something: a reshard's switch splits
/// these between the generations by creation time ([`ShardReporter::admits`]).
fn created(event: &Event) -> Option<u64> {
    Some(match event {
        Event::MessageCreate(message) => message.id.get(),
        Event::InteractionCreate(interaction) => interaction.id.get(),
        Event::ChannelCreate(channel) => channel.id.get(),
        Event::ThreadCreate(thread) => thread.id.get(),
        Event::RoleCreate(role) => role.role.id.get(),
        _ => return None,
    })
}

/// What every shard task of a cluster shares.
struct ClusterShared<W> {
    event_types: EventTypeFlags,
    cache: Arc<Cache>,
    worker: Arc<W>,
    reporter: ShardReporter,
    /// True once handed-over guilds are in the cache (at once when there are none).
    restored: watch::Receiver<bool>,
}

/// Runs one shard until told to stop; after a handover close, returns its session.
async fn drive_shard<W: ClusterWorker>(
    mut shard: Shard<IpcQueue>,
    cluster: ClusterShared<W>,
    mut drive: watch::Receiver<Drive>,
) -> Option<ShardSession> {
    let ClusterShared {
        event_types,
        cache,
        worker,
        reporter,
        mut restored,
    } = cluster;
    let mut warm = *restored.borrow();
    let mut held: Held<Event> = Held::default();
    let id = shard.id();
    let number = id.number();
    // Hands one event to user code; a panic costs this event only: the shard goes on.
    let handle = async |event: Event| {
        let kind = event.kind();
        if let Err(panicked) = carrier::panics::catch(worker.handle_event(id, event)).await {
            let event = Some(format!("{kind:?}"));
            reporter
                .panicked(panicked, "handle_event", Some(number), event)
                .await;
        }
    };
    let flags = event_types
        | EventTypeFlags::READY
        | EventTypeFlags::RESUMED
        | EventTypeFlags::GATEWAY_HEARTBEAT_ACK;
    reporter.report(number, ShardEvent::Connecting).await;
    loop {
        let item = tokio::select! {
            item = shard.next_event(flags) => item,
            // Keep reading after a stop: the close frame is queued and events still drain.
            _ = drive.changed(), if *drive.borrow() == Drive::Run => continue,
        };
        let Some(item) = item else { break };
        let event = match item {
            Ok(event) => event,
            Err(error) => {
                tracing::warn!(target: "fleet::shard", shard = number, %error, "gateway error");
                continue;
            }
        };
        if !warm {
            // The first event waits for the handed-over cache; the connection did not.
            let _ = restored.wait_for(|done| *done).await;
            warm = true;
        }
        let began = Instant::now();
        // What a standby cluster held goes to user code first, once it may: on any event,
        // heartbeat acknowledgements too, so a quiet shard does not keep it.
        for event in held.release(&reporter) {
            handle(event).await;
        }
        if let Event::GatewayHeartbeatAck = event {
            if let Some(latency) = shard.latency().recent().first() {
                reporter.latency(number, *latency);
            }
            if !event_types.contains(EventTypeFlags::GATEWAY_HEARTBEAT_ACK) {
                continue;
            }
        } else {
            reporter.event(number);
        }
        let report = match &event {
            Event::Ready(ready) => {
                let url = Some(ready.resume_gateway_url.as_str());
                let ids = ready.guilds.iter().map(|g| g.id.get()).collect();
                reporter.opened(number, &ready.session_id, url, guild_ids(ids));
                Some(ShardEvent::Ready)
            }
            Event::Resumed => Some(ShardEvent::Resumed),
            Event::GatewayInvalidateSession(false) => {
                reporter.session_ended(number);
                None
            }
            Event::GatewayClose(frame) => {
                Some(ShardEvent::Disconnected(frame.as_ref().map(|f| f.code)))
            }
            _ => None,
        };
        if let Some(report) = report {
            reporter.report(number, report).await;
        }
        cache.update(&event);
        let closed = matches!(event, Event::GatewayClose(_));
        if event_types.contains(EventTypeFlags::from(event.kind())) {
            let created = created(&event);
            match (reporter.placement(created), created) {
                (Placement::Handle, _) => handle(event).await,
                (Placement::Hold, Some(created)) => held.hold(created, event),
                _ => {}
            }
        }
        // Every event received before the close was handled above, so the session's sequence
        // is exactly what this process handled: the replacement resumes right after it, and a
        // crash's replacement right after the last checkpoint of it.
        if let Some(session) = shard.session() {
            reporter.handled(number, session.sequence());
        }
        reporter.busy(number, began.elapsed());
        // On several hosts: a connection that closed is not opened again while this host's
        // licence has run out (another host may be resuming the session); the admiral says
        // what comes next (a renewed licence, a handover, a stop).
        if closed && !reporter.licensed() && *drive.borrow() == Drive::Run {
            tracing::warn!(target: "fleet::shard", shard = number, "this host's licence ran out: not reconnecting until the admiral renews it");
            while !reporter.licensed() && *drive.borrow() == Drive::Run {
                tokio::select! {
                    changed = drive.changed() => if changed.is_err() { return None },
                    () = tokio::time::sleep(LICENCE_CHECKED_EVERY) => {}
                }
            }
        }
        let now = *drive.borrow();
        match now {
            Drive::CloseResumably if closed => return closed_session(&shard, number),
            Drive::Stop if closed => break,
            _ => {}
        }
    }
    None
}

/// How often a shard waiting for its host's licence looks again.
const LICENCE_CHECKED_EVERY: Duration = Duration::from_millis(100);

/// The session of a shard closed resumably, as handed over.
fn closed_session(shard: &Shard<IpcQueue>, number: u32) -> Option<ShardSession> {
    let session = shard.session()?;
    Some(ShardSession {
        shard: number,
        session_id: session.id().to_owned(),
        sequence: session.sequence(),
        resume_url: shard.resume_url().map(str::to_owned),
        state: carrier::Payload::empty(),
    })
}
