//! [`Fleet`]: the one entry point. The same binary is admiral and worker: `run` launches the fleet
//! in the process started by the user, and runs the assigned worker in the processes the admiral
//! spawns.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::admiral::lifecycle::ServiceSpec;
use crate::admiral::plan::{self, PlanInput, ShardCount};
use crate::admiral::{
    self, AdmiralConfig, AdmiralHandle, AutoReshard, Heartbeat, RestartPolicy, Timeouts,
    WorkerCommand,
};
use crate::identify::{IDENTIFY_INTERVAL, LocalIdentifyQueue};
use crate::ipc::frame::DEFAULT_MAX_FRAME;
use crate::ipc::link::WorkerEnv;
use crate::rest::{ProxyConfig, ProxyStartError, RestProxy};
use crate::worker::{self, BoxError, ClusterRunner, Service, ServiceFactory, ServiceOptions};

/// Discord's REST base.
pub const DISCORD_REST_URL: &str = "https://discord.com";

/// Options of a fleet. Every field has a documented default; see [`FleetOptions::new`].
#[derive(Clone)]
#[allow(
    clippy::struct_excessive_bools,
    reason = "plain switches, set by name, as eris-fleet's options are"
)]
pub struct FleetOptions {
    /// The bot token. Required.
    pub token: String,
    /// How many shards. Default: Discord's recommendation.
    pub shards: ShardCount,
    /// How many cluster processes. Default: the machine's CPU count (fewer if there are fewer
    /// shards).
    pub clusters: Option<u32>,
    /// First shard this host runs, for splitting a bot over machines. Default 0.
    pub first_shard: Option<u32>,
    /// Last shard this host runs. Default: the last one.
    pub last_shard: Option<u32>,
    /// Identify buckets. Default: `max_concurrency` from `/gateway/bot`.
    pub max_concurrency: Option<u32>,
    /// One identify per bucket per this interval. Default 5 s, Discord's; a local Discord may
    /// use less. The admiral spaces a bucket's identifies a little further apart
    /// ([`identify_spacing`]), so that the time a grant takes to become an IDENTIFY on the wire
    /// never brings two of them under the interval.
    pub identify_interval: Duration,
    /// A service must be ready within this. Default 30 s.
    pub service_ready_timeout: Duration,
    /// A cluster must be ready within this. Default: the identify queue's time for every shard
    /// plus 60 s.
    pub cluster_ready_timeout: Option<Duration>,
    /// Default timeout of IPC requests (commands, store, sends). Default 10 s.
    pub request_timeout: Duration,
    /// A worker asked to stop is killed after this. Default 10 s.
    pub kill_timeout: Duration,
    /// A crashed worker (or one that fails to start) is restarted at most this many times within
    /// [`restart_window`](Self::restart_window), then marked failed. Default 5; 0 never restarts.
    pub max_restarts: u32,
    /// The window restarts are counted in. Default 10 minutes.
    pub restart_window: Duration,
    /// Backoff before the first restart, doubling for each further one within the window (at
    /// most a minute). Default 1 s. A cluster with checkpointed sessions to resume
    /// ([`checkpoint_interval`](Self::checkpoint_interval)) restarts at once the first time.
    pub restart_backoff: Duration,
    /// How often the admiral pings each worker (application heartbeats). Default 5 s.
    pub heartbeat_interval: Duration,
    /// A worker that answers no ping for this long is hung: it is
    /// killed and restarted like a crashed one. Default 30 s; zero turns heartbeats off.
    pub heartbeat_timeout: Duration,
    /// How often each cluster checkpoints its shards' sessions to the admiral, so that when a
    /// cluster process crashes (or hangs and is killed) its replacement resumes every session
    /// instead of identifying: no identify spent, no event lost while Discord keeps the
    /// session. Events handled after the last checkpoint are replayed to the replacement, so a
    /// crash hands a handler at most about this long of events a second time (it can tell them:
    /// `carrier::cluster::Replay`). Default 1 s (at least 50 ms); zero turns crash resume off:
    /// a crashed cluster's replacement identifies every shard again.
    pub checkpoint_interval: Duration,
    /// A requested restart warns the worker's old process this long before taking it away
    /// (the IPC event `fleet:soft-kill`, and `LifecycleEvent::SoftKillPending`), so it can warn
    /// its users (voice, long commands). With a handover the warning comes before the sessions
    /// move; with overlap, after the replacement is ready. Default zero: no warning.
    pub soft_kill_notice: Duration,
    /// Reshard on its own when the guilds per shard outgrow a threshold (see
    /// [`AutoReshard`]). Default off.
    pub auto_reshard: Option<AutoReshard>,
    /// REST base, without `/api/v10`. Default `https://discord.com`.
    pub rest_url: String,
    /// Route every cluster's REST calls through the admiral's central proxy, which keeps one
    /// rate-limit state for the whole fleet (see [`crate::rest`]). Default on; off, each
    /// cluster's HTTP client limits itself and clusters can race each other into 429s.
    pub rest_proxy: bool,
    /// Requests per second the proxy allows across all routes. Default 50, Discord's global
    /// limit; raise it only if Discord raised yours.
    pub rest_global_limit: u16,
    /// Gateway URL. Default: the one `/gateway/bot` returns.
    pub gateway_url: Option<String>,
    /// Maximum IPC frame size. Default 16 MiB.
    pub max_frame: usize,
    /// How workers are started. Default: this executable with its arguments.
    pub worker_command: Option<WorkerCommand>,
    /// Echo worker output to the admiral's stderr as `[cluster-0] line`. Default on.
    pub echo_output: bool,
    /// SIGINT and SIGTERM on the admiral start a graceful total shutdown (then
    /// `AdmiralHandle::wait_stopped` returns). Default on.
    pub handle_signals: bool,
    /// Where the admiral makes its private IPC directory (`fleet-<random>`, mode 0700, holding
    /// the socket and the admiral's pid). At start the admiral removes the directories that
    /// admirals which died there without cleaning up (SIGKILL, OOM) left behind. Default: the
    /// system's temporary directory.
    pub run_dir: PathBuf,
    /// The most bytes (keys and values together) the central store holds; a write past it is
    /// refused with a clear error. Default 256 MiB.
    pub store_limit: usize,
    /// How often the admiral makes a stats snapshot and publishes it as `FleetEvent::Stats`
    /// (eris-fleet's `statsInterval`). Default 60 s; zero turns the interval off (snapshots on
    /// demand still work).
    pub stats_interval: Duration,
    /// Whether each interval's snapshot is also broadcast to every worker, as the IPC event
    /// [`crate::stats::STATS_EVENT`]. Default off.
    pub broadcast_stats: bool,
    /// Where the admiral serves `/metrics` (Prometheus), `/stats` (JSON), `/health` and
    /// `/ready`; `None` turns it off. Default `127.0.0.1:0`, a free port on loopback (the
    /// address is logged and in `AdmiralHandle::http_url`); give a fixed port for Prometheus to
    /// scrape. An address that cannot be bound fails the start.
    pub http: Option<std::net::SocketAddr>,
    /// How the admiral's workers log: the admiral hands this and [`log_filter`](Self::log_filter)
    /// to every worker it spawns, for [`crate::logging::init`], and echoes their lines in it.
    /// Default text.
    pub log_format: crate::logging::LogFormat,
    /// The workers' log filter in `RUST_LOG` syntax (`info,fleet::shard=debug`). Default `None`:
    /// each worker reads `RUST_LOG`, which it inherits from the admiral.
    pub log_filter: Option<String>,
    /// What SIGUSR2 deploys (with [`handle_signals`](Self::handle_signals)): an operator copies a
    /// new build over the bot's binary and signals the admiral, which rolls every worker onto it
    /// (see `AdmiralHandle::deploy`; the outcome is a `FleetEvent::Deployed` and a log line).
    /// Default `None`: the worker command as it is (its program, arguments and environment),
    /// with a plan's defaults; with [`admiral_grace`](Self::admiral_grace) set, the admiral then
    /// re-executes itself onto the new build too (`DeployPlan::restart_admiral`).
    pub deploy_on_signal: Option<crate::DeployPlan>,
    /// This binary's build, as workers and admiral tell each other in their hello (and name in
    /// the error when their IPC protocols do not match). Default carrier's version; set your
    /// bot's (`env!("CARGO_PKG_VERSION")`, a commit) to tell deploys apart.
    pub build: String,
    /// How long workers outlive their admiral. When the admiral exits unexpectedly (a crash,
    /// SIGKILL, the OOM killer) or re-executes itself (`AdmiralHandle::restart_self`, SIGHUP),
    /// every worker keeps its shards, sessions and cache, queues what it would send, and waits
    /// this long for the next admiral on the same stable directory (`fleet-<fleet_id>` in
    /// [`run_dir`](Self::run_dir)), which proves it knows the fleet's secret and adopts them:
    /// no identify, no event lost. Past it, they close their shards and exit: no orphans.
    /// Default zero: workers stop the moment their admiral is gone, and the directory is
    /// private to one admiral.
    pub admiral_grace: Duration,
    /// Names the fleet's stable directory (with [`admiral_grace`](Self::admiral_grace)): 1 to
    /// 64 ASCII letters, digits, `-` or `_`. Default: 16 hex digits of the token's SHA-256, so
    /// an admiral started again with the same token finds its workers.
    pub fleet_id: Option<String>,
    /// A Redis shared by every host that runs this bot (`redis://host:port/db`, credentials
    /// allowed; never logged). With it, several admirals started with the same token form one
    /// fleet:
    /// - identifies are paced for the whole fleet (never two of one bucket within Discord's
    ///   interval, one daily session budget);
    /// - each cluster of the bot's plan is a range of shards that Redis assigns to one host: a
    ///   host takes its share of the ranges nobody runs (at most
    ///   [`host_capacity`](Self::host_capacity)), and the ranges of a host whose lease lapsed,
    ///   resuming their shards' sessions from the checkpoints the last owner wrote there;
    /// - a host that cannot renew its lease fences itself before anyone may take over: its
    ///   clusters close their shards resumably and wait, and resume them if the lease holds
    ///   again and the ranges are still its own;
    /// - calls reach the clusters of every host (commands, by shard or guild, fan-outs, guild
    ///   counts, fetches, messages, broadcasts, the workers list, restarts and stops of one
    ///   cluster, rolling restarts of all), with the same outcomes as on one host; services run
    ///   on every host, and are asked on this one, except those run once per bot
    ///   ([`ServiceOptions::once_per_bot`](crate::ServiceOptions::once_per_bot)), which Redis
    ///   assigns to one host like a range and every host's calls reach there; stats are the
    ///   whole bot's;
    /// - a host that joins gets its fair share by planned moves
    ///   ([`host_rebalance`](Self::host_rebalance));
    /// - the central store is one for every host, in Redis ([`store_limit`](Self::store_limit)
    ///   for the whole bot, time to live on Redis's clock); with pinned shards too.
    ///
    /// Every host must plan the same shards and clusters (a host that does not is refused). With
    /// `first_shard`/`last_shard` set, the host runs just those (pinned, as in a Kubernetes stateful set) and
    /// Redis paces its identifies only. An unreachable Redis fails the start with a clear error;
    /// there is no silent fallback to running alone. Default `None`: one host, nothing else to
    /// run.
    pub redis_url: Option<String>,
    /// This host's id among the bot's hosts (with [`redis_url`](Self::redis_url)): 1 to 64 ASCII
    /// letters, digits, `-` or `_`. The admiral holds it as a lease in Redis while it runs, and a
    /// second admiral given the same id while the first runs refuses to start. Default: the
    /// machine's hostname.
    pub host_id: Option<String>,
    /// The most clusters (ranges) this host runs when Redis assigns them (with
    /// [`redis_url`](Self::redis_url)). A host takes at most its fair share (the ranges over the
    /// live hosts) and never more than this (more than the fair share only when the other hosts
    /// have no room for the rest); leave room on each host for the ranges of one that dies.
    /// Default `None`: the fair share.
    pub host_capacity: Option<u32>,
    /// Whether a host running more than its fair share hands ranges on to a host with room (one
    /// that joined, or came back after a restart), one planned move each: the cluster's shards
    /// close resumably and resume on the other host, with no identify and no event lost.
    /// Default `true`; without it a host gets ranges only as they come free.
    pub host_rebalance: bool,
    /// How long this host's lease in Redis lasts unless renewed (with
    /// [`redis_url`](Self::redis_url); default 15 s, from 3 s to 10 min). It is renewed every sixth
    /// of it; a host that could not renew it for four fifths of it fences itself, and its ranges
    /// may be taken two fifteenths of it after it ran out: with the default, a dead host's
    /// shards resume elsewhere about 17 s after its last renewal.
    pub host_lease_ttl: Duration,
}

impl std::fmt::Debug for FleetOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetOptions")
            .field("token", &"<redacted>")
            .field("shards", &self.shards)
            .field("clusters", &self.clusters)
            .field("first_shard", &self.first_shard)
            .field("last_shard", &self.last_shard)
            .field("max_concurrency", &self.max_concurrency)
            .field("identify_interval", &self.identify_interval)
            .field("rest_url", &self.rest_url)
            .field("gateway_url", &self.gateway_url)
            .finish_non_exhaustive()
    }
}

impl FleetOptions {
    /// Options with every default and this token.
    #[must_use]
    pub fn new(token: impl Into<String>) -> Self {
        Self {
            token: token.into(),
            shards: ShardCount::Auto,
            clusters: None,
            first_shard: None,
            last_shard: None,
            max_concurrency: None,
            identify_interval: IDENTIFY_INTERVAL,
            service_ready_timeout: Duration::from_secs(30),
            cluster_ready_timeout: None,
            request_timeout: Duration::from_secs(10),
            kill_timeout: Duration::from_secs(10),
            max_restarts: 5,
            restart_window: Duration::from_mins(10),
            restart_backoff: Duration::from_secs(1),
            soft_kill_notice: Duration::ZERO,
            checkpoint_interval: Duration::from_secs(1),
            auto_reshard: None,
            heartbeat_interval: Duration::from_secs(5),
            heartbeat_timeout: Duration::from_secs(30),
            rest_url: DISCORD_REST_URL.to_owned(),
            rest_proxy: true,
            rest_global_limit: 50,
            gateway_url: None,
            max_frame: DEFAULT_MAX_FRAME,
            worker_command: None,
            echo_output: true,
            handle_signals: true,
            run_dir: std::env::temp_dir(),
            store_limit: 256 << 20,
            stats_interval: Duration::from_mins(1),
            broadcast_stats: false,
            http: Some(std::net::SocketAddr::from((
                std::net::Ipv4Addr::LOCALHOST,
                0,
            ))),
            log_format: crate::logging::LogFormat::Text,
            log_filter: None,
            build: format!("carrier {}", env!("CARGO_PKG_VERSION")),
            deploy_on_signal: None,
            admiral_grace: Duration::ZERO,
            fleet_id: None,
            redis_url: None,
            host_id: None,
            host_capacity: None,
            host_rebalance: true,
            host_lease_ttl: crate::hosts::HOST_LEASE_TTL,
        }
    }
}

/// Why a fleet could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FleetError {
    /// No token was given.
    #[error("no bot token given")]
    NoToken,
    /// `/gateway/bot` failed (often a bad token).
    #[error("GET /gateway/bot failed (is the token right?): {0}")]
    Gateway(BoxError),
    /// No shard plan could be made.
    #[error(transparent)]
    Plan(#[from] plan::PlanError),
    /// Two services (or service kinds) share a name.
    #[error("two services or service kinds are named {0:?}")]
    DuplicateService(String),
    /// A service has a bad name, or depends on one that is not declared, or on itself.
    #[error("bad services: {0}")]
    Services(String),
    /// The admiral could not start.
    #[error(transparent)]
    Admiral(#[from] admiral::AdmiralError),
    /// The central REST proxy could not start.
    #[error("cannot start the REST proxy: {0}")]
    RestProxy(#[from] ProxyStartError),
    /// The worker command could not be determined.
    #[error("cannot find this executable to start workers: {0}")]
    WorkerCommand(std::io::Error),
    /// [`FleetOptions::fleet_id`] cannot name a directory.
    #[error("bad fleet id: {0}")]
    FleetId(String),
    /// [`FleetOptions::redis_url`] names a Redis that cannot be reached.
    #[error(transparent)]
    Redis(#[from] crate::identify::fleetwide::RedisError),
    /// This host's lease could not be taken (its id is another running admiral's, say).
    #[error(transparent)]
    Lease(#[from] crate::hosts::LeaseError),
    /// This process ran as a worker and failed.
    #[error(transparent)]
    Worker(#[from] worker::WorkerError),
}

/// A fleet: options, a cluster runner from an adapter, and services.
pub struct Fleet {
    options: FleetOptions,
    cluster: Arc<dyn ClusterRunner>,
    /// Service types by the name they are registered under.
    kinds: Vec<(String, ServiceFactory)>,
    /// Services launched with the fleet.
    services: Vec<ServiceSpec>,
    cluster_data: Option<admiral::ClusterData>,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("options", &self.options)
            .field(
                "services",
                &self.services.iter().map(|s| &s.name).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl Fleet {
    /// A fleet whose clusters run with `cluster` (an adapter's runner).
    #[must_use]
    pub fn new(options: FleetOptions, cluster: Arc<dyn ClusterRunner>) -> Self {
        Self {
            options,
            cluster,
            kinds: Vec::new(),
            services: Vec::new(),
            cluster_data: None,
        }
    }

    /// Gives every cluster data of its own (discord-hybrid-sharding's `clusterData`): `make`
    /// runs in the admiral each time a cluster process starts, with the cluster's id, and its
    /// answer reaches the cluster in its context (`ClusterContext::data`, decoded with
    /// `Payload::decode`). It must be quick; one that panics or makes more than 1 MiB is
    /// reported, and that cluster gets empty data.
    #[must_use]
    pub fn cluster_data<T: serde::Serialize>(
        mut self,
        make: impl Fn(u32) -> T + Send + Sync + 'static,
    ) -> Self {
        self.cluster_data = Some(Arc::new(move |id| {
            crate::Payload::encode(&make(id)).map_err(|e| e.to_string())
        }));
        self
    }

    /// Adds a service of type `S` named `name`, launched with the fleet. The type is also
    /// registered as kind `name`, so more services of it can be created at runtime.
    #[must_use]
    pub fn service<S: Service>(self, name: impl Into<String>) -> Self {
        self.service_with::<S>(name, ServiceOptions::new())
    }

    /// [`service`](Self::service), started after the services it depends on, with its own start
    /// timeout.
    #[must_use]
    pub fn service_with<S: Service>(
        mut self,
        name: impl Into<String>,
        options: ServiceOptions,
    ) -> Self {
        let name = name.into();
        self.kinds
            .push((name.clone(), worker::service_factory::<S>()));
        self.services.push(ServiceSpec {
            kind: name.clone(),
            name,
            depends_on: options.depends_on,
            start_timeout: options.start_timeout,
            once_per_bot: options.once_per_bot,
        });
        self
    }

    /// Registers service type `S` as `kind` without launching it: services of it are created at
    /// runtime with [`Ipc::create_service`](crate::Ipc::create_service) (eris-fleet's
    /// `createService`).
    #[must_use]
    pub fn service_kind<S: Service>(mut self, kind: impl Into<String>) -> Self {
        self.kinds
            .push((kind.into(), worker::service_factory::<S>()));
        self
    }

    /// The options.
    #[must_use]
    pub fn options(&self) -> &FleetOptions {
        &self.options
    }

    /// In the admiral (the process the user started): plans the shards, launches every worker
    /// and returns `Some(handle)`. In a worker process: runs the worker until it must stop and
    /// returns `None`; the caller should then return from `main`.
    pub async fn run(self) -> Result<Option<AdmiralHandle>, FleetError> {
        let mut names = std::collections::HashSet::new();
        for (name, _) in &self.kinds {
            if !names.insert(name.clone()) {
                return Err(FleetError::DuplicateService(name.clone()));
            }
        }
        ServiceSpec::check_all(&self.services).map_err(FleetError::Services)?;
        if let Some(mut env) = WorkerEnv::from_env() {
            env.build = self.options.build;
            let services: HashMap<String, ServiceFactory> = self.kinds.into_iter().collect();
            worker::run(&env, &services, &self.cluster).await?;
            return Ok(None);
        }
        self.launch().await.map(Some)
    }

    async fn launch(self) -> Result<AdmiralHandle, FleetError> {
        let options = self.options;
        if options.token.is_empty() {
            return Err(FleetError::NoToken);
        }
        let gateway = self
            .cluster
            .bot_gateway(&options.token, &options.rest_url)
            .await
            .map_err(FleetError::Gateway)?;
        let max_concurrency = options
            .max_concurrency
            .unwrap_or(gateway.max_concurrency)
            .max(1);
        let clusters = options
            .clusters
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() as u32));
        let mut plan = plan::plan(PlanInput {
            count: options.shards,
            recommended: gateway.shards,
            max_concurrency,
            clusters,
            first_shard: options.first_shard,
            last_shard: options.last_shard,
        })?;
        let spacing = identify_spacing(options.identify_interval);
        let fleet_id = match &options.fleet_id {
            Some(id) => {
                admiral::check_fleet_id(id).map_err(FleetError::FleetId)?;
                id.clone()
            }
            None => token_id(&options.token),
        };
        let identify = LocalIdentifyQueue::new(max_concurrency, spacing)
            .with_budget(gateway.budget())
            .with_confirmations();
        // The last admiral's workers run on: it may have let a shard identify a moment ago.
        let adopting =
            !options.admiral_grace.is_zero() && admiral::workers_left(&options.run_dir, &fleet_id);
        let identify = if adopting {
            identify.with_recent_grants()
        } else {
            identify
        };
        // Redis assigns the ranges unless this host's shards are pinned.
        let assigned = options.first_shard.is_none() && options.last_shard.is_none();
        // The ranges whose clusters the last admiral of this host left running, and the
        // services run once per bot it ran.
        let mut adoptable = Vec::new();
        let mut adoptable_services = Vec::new();
        let singletons: Vec<String> = self
            .services
            .iter()
            .filter(|s| s.once_per_bot)
            .map(|s| s.name.clone())
            .collect();
        // This host's lease in Redis lasts this long unless renewed.
        let host_lease_ttl = options
            .host_lease_ttl
            .clamp(Duration::from_secs(3), Duration::from_mins(10));
        let (host, host_checkpoints, host_bus, host_store) = match &options.redis_url {
            Some(url) => {
                let host = match &options.host_id {
                    Some(host) => host.clone(),
                    None => hostname(),
                };
                admiral::check_fleet_id(&host)
                    .map_err(|e| FleetError::FleetId(format!("host id: {e}")))?;
                let ttl = host_lease_ttl;
                // Adopting the workers of an admiral of this host that was re-executed (or
                // died): its lease and ranges go on as this one's.
                let incarnation = adopting
                    .then(|| admiral::host_incarnation(&options.run_dir, &fleet_id))
                    .flatten();
                let lease =
                    crate::hosts::HostLease::take_as(url, &fleet_id, &host, ttl, incarnation)
                        .await?;
                let assignment = if assigned {
                    let capacity = options.host_capacity.unwrap_or(u32::MAX);
                    let assign = |plan: &plan::ShardPlan| {
                        crate::hosts::assign::Assignment::new(
                            &fleet_id,
                            &host,
                            lease.incarnation(),
                            plan.clone(),
                            capacity,
                            ttl,
                        )
                        .with_services(singletons.clone())
                    };
                    let mut assignment = assign(&plan);
                    let mut joined = lease.join(&assignment).await;
                    // The bot was resharded since these options were written: its running plan
                    // wins.
                    if let Err(crate::hosts::LeaseError::Plan(theirs)) = &joined
                        && let Some(resharded) = resharded_plan(theirs, plan.max_concurrency)
                    {
                        tracing::warn!(target: "fleet::hosts", shards = resharded.shard_total, clusters = resharded.clusters.len(), "the bot was resharded since it started: this host runs its plan, not the one its options make");
                        plan = resharded;
                        assignment = assign(&plan);
                        joined = lease.join(&assignment).await;
                    }
                    if let Err(error) = joined {
                        // Refused: the host id is free for the next try at once.
                        lease.release().await;
                        return Err(error.into());
                    }
                    if adopting && let Ok(mut open) = lease.connect().await {
                        adoptable = assignment.owned(&mut open).await.unwrap_or_default();
                        adoptable_services = assignment
                            .owned_services(&mut open)
                            .await
                            .unwrap_or_default();
                    }
                    Some(assignment)
                } else {
                    None
                };
                let checkpoints = assignment.as_ref().map(|_| Arc::default());
                let assigned = assignment.is_some();
                if !assigned && !singletons.is_empty() {
                    tracing::warn!(target: "fleet::hosts", services = ?singletons, "this host's shards are pinned, so nothing assigns the services run once per bot: they run on this host as on every other");
                }
                let mut agent = crate::hosts::agent::HostAgent::new(lease, assignment)
                    .rebalancing(options.host_rebalance);
                // Requests, answers and broadcasts between the hosts of a split bot.
                let mut bus = None;
                if assigned {
                    let (out, bus_in) = crate::hosts::bus::BusOut::new(&host, options.max_frame);
                    agent = agent.with_bus(bus_in);
                    bus = Some(out);
                }
                // One central store for every host.
                let (store, task) = crate::hosts::store::SharedStore::new(
                    agent.client(),
                    &fleet_id,
                    options.store_limit,
                    options.max_frame.saturating_sub(1024),
                );
                let part = crate::hosts::HostPart { agent, store: task };
                (Some(part), checkpoints, bus, Some(store))
            }
            None => (None, None, None, None),
        };
        let identify: Arc<dyn crate::identify::IdentifyQueue> = match &options.redis_url {
            Some(url) => {
                let config = crate::identify::fleetwide::RedisIdentifyConfig {
                    fleet_id: fleet_id.clone(),
                    max_concurrency,
                    window: spacing,
                    budget: gateway.budget(),
                };
                Arc::new(
                    crate::identify::fleetwide::RedisIdentifyQueue::connect(url, config).await?,
                )
            }
            None => Arc::new(identify),
        };
        let startup = spacing * plan.shard_count().div_ceil(max_concurrency);
        let timeouts = Timeouts {
            service_ready: options.service_ready_timeout,
            cluster_ready: options
                .cluster_ready_timeout
                .unwrap_or(startup + Duration::from_mins(1)),
            kill: options.kill_timeout,
        };
        let worker_command = match options.worker_command {
            Some(command) => command,
            None => WorkerCommand::current().map_err(FleetError::WorkerCommand)?,
        };
        let deploy_on_signal = options.deploy_on_signal.clone().unwrap_or_else(|| {
            let mut plan = crate::DeployPlan::new(worker_command.program.clone());
            // With workers that outlive it, the admiral follows them onto the new build.
            plan.restart_admiral = !options.admiral_grace.is_zero();
            plan.args = worker_command
                .args
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect();
            plan.env = worker_command
                .env
                .iter()
                .map(|(k, v)| {
                    (
                        k.to_string_lossy().into_owned(),
                        v.to_string_lossy().into_owned(),
                    )
                })
                .collect();
            plan
        });
        tracing::info!(
            target: "fleet::launch",
            shards = plan.shard_total,
            clusters = plan.clusters.len(),
            max_concurrency,
            services = self.services.len(),
            "launching"
        );
        let rest_proxy = if options.rest_proxy {
            let mut proxy = ProxyConfig::new(&options.rest_url, &options.token);
            proxy.global_limit = options.rest_global_limit;
            // Workers that outlive their admiral send their requests to the port they were
            // given: the next admiral's proxy listens there again if it can.
            let port = if options.admiral_grace.is_zero() {
                0
            } else {
                admiral::last_proxy_port(&options.run_dir, &fleet_id)
            };
            match RestProxy::start_on(proxy.clone(), port).await {
                Ok(proxy) => Some(proxy),
                Err(error) if port != 0 => {
                    tracing::warn!(target: "fleet::proxy", port, %error, "cannot listen on the last admiral's REST proxy port; adopted workers lose the proxy");
                    Some(RestProxy::start(proxy).await?)
                }
                Err(error) => return Err(error.into()),
            }
        } else {
            None
        };
        let recommend: admiral::Recommender = {
            let (runner, token, rest_url) = (
                self.cluster.clone(),
                options.token.clone(),
                options.rest_url.clone(),
            );
            Arc::new(move || {
                let gateway = runner.bot_gateway(&token, &rest_url);
                Box::pin(async move {
                    gateway
                        .await
                        .map(|g| g.shards)
                        .map_err(|error| error.to_string())
                })
            })
        };
        let config = AdmiralConfig {
            plan,
            services: self.services,
            service_kinds: self.kinds.into_iter().map(|(kind, _)| kind).collect(),
            cluster_data: self.cluster_data,
            token: options.token,
            gateway_url: options.gateway_url.unwrap_or(gateway.url),
            rest_url: options.rest_url,
            rest_proxy,
            timeouts,
            restart: RestartPolicy {
                max_restarts: options.max_restarts,
                window: options.restart_window,
                backoff: options.restart_backoff,
                max_backoff: Duration::from_mins(1).max(options.restart_backoff),
            },
            request_timeout: options.request_timeout,
            max_frame: options.max_frame,
            identify,
            worker_command,
            echo_output: options.echo_output,
            handle_signals: options.handle_signals,
            run_dir: options.run_dir,
            store_limit: options.store_limit,
            stats_interval: options.stats_interval,
            broadcast_stats: options.broadcast_stats,
            http: options.http,
            log_format: options.log_format,
            log_filter: options.log_filter,
            build: options.build,
            deploy_on_signal,
            admiral_grace: options.admiral_grace,
            fleet_id,
            host,
            host_checkpoints,
            host_bus,
            host_store,
            host_adoptable: adoptable,
            host_adoptable_services: adoptable_services,
            host_fence_margin: crate::hosts::fence_margin(host_lease_ttl),
            soft_kill_notice: options.soft_kill_notice,
            checkpoint_interval: if options.checkpoint_interval.is_zero() {
                Duration::ZERO
            } else {
                options.checkpoint_interval.max(Duration::from_millis(50))
            },
            auto_reshard: options.auto_reshard,
            recommend,
            heartbeat: (!options.heartbeat_timeout.is_zero()).then(|| Heartbeat {
                interval: options
                    .heartbeat_interval
                    .clamp(Duration::from_millis(10), options.heartbeat_timeout),
                timeout: options.heartbeat_timeout,
            }),
        };
        Ok(admiral::start(config).await?)
    }
}

/// How far apart the admiral grants a bucket's identifies for Discord's `interval`: 2% more, at
/// least 20 ms more. A grant reaches Discord as an IDENTIFY after an IPC reply, a task wake-up
/// and a websocket write, and that delay varies: without the margin, a fast second identify
/// could arrive a few milliseconds inside the interval of a slow first one.
#[must_use]
pub fn identify_spacing(interval: Duration) -> Duration {
    interval + (interval / 50).max(Duration::from_millis(20))
}

/// This machine's hostname, as a host id (its characters outside a host id's are dropped).
fn hostname() -> String {
    let name: String = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap_or_default()
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
        .take(64)
        .collect();
    if name.is_empty() {
        "host".to_owned()
    } else {
        name
    }
}

/// A fleet's default id: 16 hex digits of its token's SHA-256 (the token itself is never shown).
fn token_id(token: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let head: [u8; 8] = digest.as_ref()[..8]
        .try_into()
        .expect("a SHA-256 has 32 bytes");
    format!("{:016x}", u64::from_be_bytes(head))
}

/// The plan Redis holds for a bot resharded across its hosts, from a refused join's
/// `<total> <ranges> resharded`; `None` for any other refusal.
fn resharded_plan(theirs: &str, max_concurrency: u32) -> Option<plan::ShardPlan> {
    let mut words = theirs
        .trim_start_matches(|c: char| !c.is_ascii_digit())
        .split_whitespace();
    let total = words.next()?.parse().ok()?;
    let ranges = words.next()?.parse().ok()?;
    words
        .next()
        .is_some_and(|w| w.starts_with("resharded"))
        .then(|| plan::whole(total, ranges, max_concurrency).ok())
        .flatten()
        .filter(|plan| plan.clusters.len() == ranges as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_follows_only_a_plan_a_reshard_made() {
        let plan = resharded_plan("\": 8 3 resharded", 1).unwrap();
        assert_eq!((plan.shard_total, plan.clusters.len()), (8, 3));
        assert!(
            resharded_plan("8 3", 1).is_none(),
            "another host's own options"
        );
        assert!(
            resharded_plan("8 9 resharded", 1).is_none(),
            "not plannable as stored"
        );
        assert!(resharded_plan("x resharded", 1).is_none());
    }

    #[test]
    fn identifies_are_spaced_with_a_margin_for_delivery() {
        assert_eq!(
            identify_spacing(Duration::from_secs(5)),
            Duration::from_millis(5100)
        );
        assert_eq!(
            identify_spacing(Duration::from_millis(300)),
            Duration::from_millis(320)
        );
        assert_eq!(identify_spacing(Duration::ZERO), Duration::from_millis(20));
    }
}
