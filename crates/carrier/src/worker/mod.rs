//! The worker side: join the fleet, then run the assigned service (user code through [`Service`])
//! or cluster (an adapter through [`ClusterRunner`]) until told to stop. It may not spawn
//! processes or route messages.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::identify::SessionBudget;
use crate::ipc::client::{CommandHandler, Ipc};
use crate::ipc::link::{self, Stop, WorkerControl, WorkerEnv};
use crate::ipc::proto::{Assignment, ClusterAssignment, Payload, Status, Target};

pub use crate::BoxError;

/// What a service gets when it starts.
#[derive(Debug, Clone)]
pub struct ServiceContext {
    /// Its IPC handle.
    pub ipc: Ipc,
    /// Its name.
    pub name: String,
    /// The service type it runs, as registered (its name, unless it was created at runtime
    /// from a [`Fleet::service_kind`](crate::Fleet::service_kind)).
    pub kind: String,
}

/// How a service starts: after which other services, and within how long
/// ([`Fleet::service_with`](crate::Fleet::service_with), [`Ipc::create_service`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServiceOptions {
    /// Services that must be live before this one starts; if one fails, so does this one.
    pub depends_on: Vec<String>,
    /// How long it has to become ready. Default `None`: the fleet's `service_ready_timeout`.
    pub start_timeout: Option<std::time::Duration>,
    /// On a bot split across hosts, it runs once for the whole bot (on the host Redis assigns
    /// it to) rather than on every host. Default `false`.
    pub once_per_bot: bool,
}

impl ServiceOptions {
    /// No dependencies, the fleet's start timeout.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts after service `name` is live.
    #[must_use]
    pub fn depends_on(mut self, name: impl Into<String>) -> Self {
        self.depends_on.push(name.into());
        self
    }

    /// Must be ready within `timeout`.
    #[must_use]
    pub fn start_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.start_timeout = Some(timeout);
        self
    }

    /// Runs once for the whole bot when it is split across hosts (a poster of guild counts,
    /// a scheduler): Redis assigns it to one host, a call from any host reaches it there, and
    /// when that host dies or fences itself another host starts it. Services that run on every
    /// host may not depend on it. On one host it runs as any service; so does a service created
    /// at runtime ([`Ipc::create_service`]), on the host that created it.
    #[must_use]
    pub fn once_per_bot(mut self) -> Self {
        self.once_per_bot = true;
        self
    }
}

/// A service: a worker process that runs no shards and answers commands (a central cache, a job
/// runner, an API).
pub trait Service: Send + Sync + Sized + 'static {
    /// Starts the service. Returning an error fails its start: the admiral marks it failed and
    /// routes nothing to it.
    fn start(context: ServiceContext) -> impl Future<Output = Result<Self, BoxError>> + Send;

    /// Answers a command from `from`. The default refuses.
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
        async { Err("this service takes no commands".to_owned()) }
    }

    /// Runs on a graceful shutdown, before the process exits (bounded by the kill timeout).
    fn shutdown(&self) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// This service's own fields for each stats snapshot (a queue's length, a cache's hit
    /// rate), under its name in [`FleetStats::services`](crate::FleetStats::services). Runs on
    /// the IPC reader once per round: read what is at hand, do not wait. The default, `()`,
    /// adds nothing.
    fn stats(&self) -> impl serde::Serialize {}
}

/// A started service, type-erased.
pub(crate) struct RunningService {
    commands: CommandHandler,
    shutdown: Box<dyn FnOnce() -> BoxFuture<'static, ()> + Send>,
}

/// Starts a service of some type.
pub(crate) type ServiceFactory = Arc<
    dyn Fn(ServiceContext) -> BoxFuture<'static, Result<RunningService, BoxError>> + Send + Sync,
>;

/// How long a stopped cluster waits for the commands it is still answering.
const CLUSTER_DRAIN: std::time::Duration = std::time::Duration::from_secs(5);

pub(crate) fn service_factory<S: Service>() -> ServiceFactory {
    Arc::new(|context| {
        Box::pin(async move {
            let ipc = context.ipc.clone();
            let service = Arc::new(S::start(context).await?);
            let for_stats = service.clone();
            ipc.set_stats_encoder(Arc::new(move || {
                crate::stats::encode_fields(&for_stats.stats())
            }));
            let for_commands = service.clone();
            let commands: CommandHandler = Arc::new(move |from, payload| {
                let service = for_commands.clone();
                Box::pin(async move { service.handle_command(from, payload).await })
            });
            let shutdown: Box<dyn FnOnce() -> BoxFuture<'static, ()> + Send> =
                Box::new(move || Box::pin(async move { service.shutdown().await }));
            Ok(RunningService { commands, shutdown })
        })
    })
}

/// Discord's answer to `GET /gateway/bot`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BotGateway {
    /// Gateway URL.
    pub url: String,
    /// Recommended shard total.
    pub shards: u32,
    /// Identify buckets.
    pub max_concurrency: u32,
    /// The daily session budget.
    pub total: u32,
    /// Identifies left today.
    pub remaining: u32,
    /// Milliseconds until the budget refills.
    pub reset_after_ms: u64,
}

impl BotGateway {
    /// The session budget part.
    #[must_use]
    pub fn budget(&self) -> SessionBudget {
        SessionBudget {
            total: self.total,
            remaining: self.remaining,
            reset_after: std::time::Duration::from_millis(self.reset_after_ms),
        }
    }
}

/// What a cluster gets when it starts.
#[derive(Debug)]
pub struct ClusterContext {
    /// Its IPC handle, for the user's code.
    pub ipc: Ipc,
    /// What the adapter alone asks of the admiral: identify permission, the cache lookup
    /// handler. Shards report through a [`ShardReporter`](crate::cluster::ShardReporter) made
    /// from it.
    pub link: crate::cluster::ClusterLink,
    /// Its shards and credentials.
    pub assignment: ClusterAssignment,
    /// Resolves when the cluster must stop.
    pub control: WorkerControl,
}

/// What an adapter provides: how to run a cluster with one Discord library. Most adapters start
/// their user's worker ([`start_cluster_worker`]) and hand their shards to
/// [`cluster::serve`](crate::cluster::serve).
pub trait ClusterRunner: Send + Sync + 'static {
    /// Runs the cluster until `context.control` says stop, then closes its shards and returns.
    fn run(&self, context: ClusterContext) -> BoxFuture<'static, Result<(), BoxError>>;

    /// Fetches `GET /gateway/bot` (in the admiral, before planning). Default: carrier's own
    /// request ([`rest::bot_gateway`](crate::rest::bot_gateway)).
    fn bot_gateway(
        &self,
        token: &str,
        rest_url: &str,
    ) -> BoxFuture<'static, Result<BotGateway, BoxError>> {
        let (token, rest_url) = (token.to_owned(), rest_url.to_owned());
        Box::pin(async move { crate::rest::bot_gateway(&token, &rest_url).await })
    }
}

/// Starts an adapter's user worker: a failure is reported to the admiral (`StartFailed`) before
/// it is returned; once started, commands sent to this cluster go to `handle`.
///
/// Every adapter does this the same way; only the worker's type differs.
pub async fn start_cluster_worker<W, F, Fut>(
    ipc: &Ipc,
    start: impl Future<Output = Result<W, BoxError>>,
    handle: F,
) -> Result<Arc<W>, BoxError>
where
    W: Send + Sync + 'static,
    F: Fn(Arc<W>, Target, Payload) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Payload, String>> + Send + 'static,
{
    let worker = match crate::panics::catch(start).await {
        Ok(Ok(worker)) => Arc::new(worker),
        Ok(Err(error)) => {
            let _ = ipc.report(Status::StartFailed(error.to_string())).await;
            return Err(error);
        }
        Err(panicked) => {
            let reason = format!("start panicked: {}", panicked.message);
            ipc.report_panic(panicked.report("start", None, None));
            let _ = ipc.report(Status::StartFailed(reason.clone())).await;
            return Err(reason.into());
        }
    };
    let for_commands = worker.clone();
    ipc.set_command_handler(Arc::new(move |from, payload| {
        Box::pin(handle(for_commands.clone(), from, payload))
    }));
    Ok(worker)
}

/// Why a worker ended badly.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkerError {
    /// It could not join the fleet.
    #[error(transparent)]
    Link(#[from] link::LinkError),
    /// The admiral assigned a service type this binary does not have.
    #[error("this binary has no service type named {0:?}")]
    UnknownService(String),
    /// The service or cluster failed to start or run.
    #[error("{0}")]
    Failed(BoxError),
}

/// Runs this process as the worker `env` describes, until it must stop.
pub(crate) async fn run(
    env: &WorkerEnv,
    services: &HashMap<String, ServiceFactory>,
    cluster: &Arc<dyn ClusterRunner>,
) -> Result<(), WorkerError> {
    let link = link::connect(env).await?;
    let ipc = link.ipc;
    crate::panics::install_hook(&ipc);
    let mut control = link.control;
    match link.assignment {
        Assignment::Service { name, kind } => {
            let Some(factory) = services.get(&kind) else {
                let error = WorkerError::UnknownService(kind);
                let _ = ipc.report(Status::StartFailed(error.to_string())).await;
                ipc.flush().await;
                return Err(error);
            };
            let context = ServiceContext {
                ipc: ipc.clone(),
                name,
                kind,
            };
            let service = match crate::panics::catch(factory(context)).await {
                Ok(Ok(service)) => service,
                Ok(Err(error)) => {
                    let _ = ipc.report(Status::StartFailed(error.to_string())).await;
                    ipc.flush().await;
                    return Err(WorkerError::Failed(error));
                }
                Err(panicked) => {
                    let reason = format!("start panicked: {}", panicked.message);
                    ipc.report_panic(panicked.report("start", None, None));
                    let _ = ipc.report(Status::StartFailed(reason.clone())).await;
                    ipc.flush().await;
                    return Err(WorkerError::Failed(reason.into()));
                }
            };
            ipc.set_command_handler(service.commands);
            let _ = ipc.report(Status::Ready).await;
            if let Stop::Shutdown(grace) = control.stopped().await {
                let started = tokio::time::Instant::now();
                let shutdown = crate::panics::catch((service.shutdown)());
                if let Ok(Err(panicked)) = tokio::time::timeout(grace, shutdown).await {
                    ipc.report_panic(panicked.report("shutdown", None, None));
                }
                // Commands already here are answered before the process goes.
                ipc.commands_done(grace.saturating_sub(started.elapsed()))
                    .await;
            }
            ipc.flush().await;
            Ok(())
        }
        Assignment::Cluster(assignment) => {
            let context = ClusterContext {
                ipc: ipc.clone(),
                link: crate::cluster::ClusterLink::new(ipc.clone()),
                assignment,
                control,
            };
            let ran = cluster.run(context).await.map_err(WorkerError::Failed);
            // Commands already here are answered before the process goes.
            ipc.commands_done(CLUSTER_DRAIN).await;
            ipc.flush().await;
            ran
        }
    }
}
