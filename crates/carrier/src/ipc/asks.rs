//! What a worker (or the admiral) asks of the fleet through its [`Ipc`]: commands to one target
//! or a group, the central store, cache lookups in the clusters, control of workers, and logs.
//! Every call is one request ([`Ipc::request`]) with a timeout.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::de::DeserializeOwned;

use super::client::Transport;
use crate::stats::FleetStats;

/// How long workers have to report for [`Ipc::stats`].
pub const STATS_DEADLINE: Duration = Duration::from_secs(2);

/// How much longer than its timeout a fan-out's caller waits for the admiral's answer, which
/// comes at the timeout (the targets that missed it marked timed out) and must still travel.
const FAN_OUT_GRACE: Duration = Duration::from_secs(1);
use super::client::{Ipc, IpcError, outcome_result, unexpected};
use super::proto::{
    Fetch, Group, LogLevel, LogRecord, Outcome, Payload, Reply, Request, RestartMode, ShardCount,
    StoreRequest, Target,
};
use super::proto::{PayloadError, Up};

impl Ipc {
    /// Runs `target`'s command handler and returns its answer, within the default timeout.
    pub async fn command(&self, target: Target, payload: Payload) -> Result<Payload, IpcError> {
        self.command_within(target, payload, self.inner.timeout)
            .await
    }

    /// [`command`](Self::command) with its own timeout.
    pub async fn command_within(
        &self,
        target: Target,
        payload: Payload,
        timeout: Duration,
    ) -> Result<Payload, IpcError> {
        let reply = self
            .request(
                Request::Command {
                    target: target.clone(),
                    payload,
                },
                timeout,
            )
            .await?;
        match reply {
            Reply::Outcome(outcome) => outcome_result(target, outcome),
            other => Err(unexpected(other)),
        }
    }

    /// Runs a service's command handler.
    pub async fn service_command(
        &self,
        service: &str,
        payload: Payload,
    ) -> Result<Payload, IpcError> {
        self.command(Target::Service(service.to_owned()), payload)
            .await
    }

    /// Runs a cluster's command handler.
    pub async fn cluster_command(
        &self,
        cluster: u32,
        payload: Payload,
    ) -> Result<Payload, IpcError> {
        self.command(Target::Cluster(cluster), payload).await
    }

    /// Runs the command handler of the cluster that runs shard `shard` now.
    ///
    /// # Errors
    /// As [`command`](Self::command); refused when this fleet runs no such shard.
    pub async fn shard_command(&self, shard: u32, payload: Payload) -> Result<Payload, IpcError> {
        self.owner_command(Request::CommandShard { shard, payload })
            .await
    }

    /// Runs the command handler of the cluster that runs guild `guild`'s shard now
    /// (discord-hybrid-sharding's `broadcastEval({ guildId })`).
    ///
    /// # Errors
    /// As [`shard_command`](Self::shard_command).
    pub async fn guild_command(&self, guild: u64, payload: Payload) -> Result<Payload, IpcError> {
        self.owner_command(Request::CommandGuild { guild, payload })
            .await
    }

    async fn owner_command(&self, request: Request) -> Result<Payload, IpcError> {
        match self.request(request, self.inner.timeout).await? {
            // The one outcome of the cluster the admiral chose, named.
            Reply::Outcomes(mut outcomes) if outcomes.len() == 1 => {
                let (target, outcome) = outcomes.remove(0);
                outcome_result(target, outcome)
            }
            other => Err(unexpected(other)),
        }
    }

    /// Runs every cluster's command handler: one outcome per cluster (ok, error, timed out, or
    /// unavailable), never failing because one cluster did.
    pub async fn all_clusters_command(
        &self,
        payload: Payload,
    ) -> Result<BTreeMap<u32, Outcome>, IpcError> {
        self.all_clusters_command_within(payload, self.inner.timeout)
            .await
    }

    /// [`all_clusters_command`](Self::all_clusters_command) with its own timeout: a cluster that
    /// has not answered by then is `TimedOut`, and the others' outcomes still arrive.
    pub async fn all_clusters_command_within(
        &self,
        payload: Payload,
        timeout: Duration,
    ) -> Result<BTreeMap<u32, Outcome>, IpcError> {
        let outcomes = self.command_all(Group::Clusters, payload, timeout).await?;
        Ok(outcomes
            .into_iter()
            .filter_map(|(t, o)| match t {
                Target::Cluster(id) => Some((id, o)),
                _ => None,
            })
            .collect())
    }

    /// Runs every service's command handler: one outcome per service.
    pub async fn all_services_command(
        &self,
        payload: Payload,
    ) -> Result<BTreeMap<String, Outcome>, IpcError> {
        self.all_services_command_within(payload, self.inner.timeout)
            .await
    }

    /// [`all_services_command`](Self::all_services_command) with its own timeout.
    pub async fn all_services_command_within(
        &self,
        payload: Payload,
        timeout: Duration,
    ) -> Result<BTreeMap<String, Outcome>, IpcError> {
        let outcomes = self.command_all(Group::Services, payload, timeout).await?;
        Ok(outcomes
            .into_iter()
            .filter_map(|(t, o)| match t {
                Target::Service(name) => Some((name, o)),
                _ => None,
            })
            .collect())
    }

    async fn command_all(
        &self,
        group: Group,
        payload: Payload,
        timeout: Duration,
    ) -> Result<Vec<(Target, Outcome)>, IpcError> {
        // The admiral answers at the deadline with every target that missed it timed out.
        match self
            .request_answered_by(
                Request::CommandAll { group, payload },
                timeout,
                FAN_OUT_GRACE,
            )
            .await?
        {
            Reply::Outcomes(outcomes) => Ok(outcomes),
            other => Err(unexpected(other)),
        }
    }

    /// Reads a key of the central store.
    pub async fn store_get(&self, key: &str) -> Result<Option<Payload>, IpcError> {
        match self
            .request(
                Request::Store(StoreRequest::Get(key.to_owned())),
                self.inner.timeout,
            )
            .await?
        {
            Reply::Value(value) => Ok(value),
            other => Err(unexpected(other)),
        }
    }

    /// Writes a key of the central store.
    pub async fn store_set(&self, key: &str, value: Payload) -> Result<(), IpcError> {
        self.expect_done(Request::Store(StoreRequest::Set(key.to_owned(), value)))
            .await
    }

    /// Whether the central store holds a key.
    pub async fn store_has(&self, key: &str) -> Result<bool, IpcError> {
        self.expect_flag(Request::Store(StoreRequest::Has(key.to_owned())))
            .await
    }

    /// Removes a key; returns whether it was there.
    pub async fn store_delete(&self, key: &str) -> Result<bool, IpcError> {
        self.expect_flag(Request::Store(StoreRequest::Delete(key.to_owned())))
            .await
    }

    /// Removes every key.
    pub async fn store_clear(&self) -> Result<(), IpcError> {
        self.expect_done(Request::Store(StoreRequest::Clear)).await
    }

    /// Writes `value` (`None`: removes the key) only if the key holds `expected` now (`None`:
    /// absent), atomically; returns whether it did. A lock is `store_compare_and_set(key, None,
    /// Some(me))`, its release `store_compare_and_set(key, Some(me), None)`.
    pub async fn store_compare_and_set(
        &self,
        key: &str,
        expected: Option<Payload>,
        value: Option<Payload>,
    ) -> Result<bool, IpcError> {
        let key = key.to_owned();
        self.expect_flag(Request::Store(StoreRequest::CompareAndSet {
            key,
            expected,
            value,
        }))
        .await
    }

    /// Writes a key that expires after `ttl` (at most a day).
    pub async fn store_set_for(
        &self,
        key: &str,
        value: Payload,
        ttl: Duration,
    ) -> Result<(), IpcError> {
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        self.expect_done(Request::Store(StoreRequest::SetFor(
            key.to_owned(),
            value,
            ttl_ms,
        )))
        .await
    }

    /// The keys of the central store that start with `prefix`, sorted.
    pub async fn store_keys(&self, prefix: &str) -> Result<Vec<String>, IpcError> {
        self.store_listing(StoreRequest::Keys(prefix.to_owned()))
            .await
    }

    /// The keys that start with `prefix` and their values, sorted by key (eris-fleet's
    /// `copyMap` with an empty prefix). Refused when the answer would not fit one frame.
    pub async fn store_entries(&self, prefix: &str) -> Result<Vec<(String, Payload)>, IpcError> {
        self.store_listing(StoreRequest::Entries(prefix.to_owned()))
            .await
    }

    async fn store_listing<T: DeserializeOwned>(
        &self,
        request: StoreRequest,
    ) -> Result<T, IpcError> {
        match self
            .request(Request::Store(request), self.inner.timeout)
            .await?
        {
            Reply::Outcome(outcome) => Ok(outcome_result(Target::Admiral, outcome)?.decode()?),
            other => Err(unexpected(other)),
        }
    }

    /// Looks an object up in the clusters' caches: a guild or member in the cluster that owns the
    /// guild's shard, a user or channel in every cluster (the first hit wins). `None` when no
    /// cache holds it; clusters that are down are skipped, but a guild-scoped lookup whose owner
    /// is down fails with [`Refusal::Unavailable`](super::proto::Refusal::Unavailable). Resolves within the default timeout.
    ///
    /// The answer is the object as the owning cluster's library serialises it: Discord's JSON
    /// shape, ids as strings, so they stay exact.
    pub async fn fetch(&self, query: Fetch) -> Result<Option<Payload>, IpcError> {
        match self
            .request(Request::Fetch(query), self.inner.timeout)
            .await?
        {
            Reply::Found(found) => Ok(found),
            Reply::Outcomes(mut outcomes) if outcomes.len() == 1 => {
                let (owner, outcome) = outcomes.remove(0);
                outcome_result(owner, outcome).map(|_| None)
            }
            other => Err(unexpected(other)),
        }
    }

    /// [`fetch`](Self::fetch), decoded from JSON into `T` (a library's model type, or
    /// `serde_json::Value`).
    pub async fn fetch_as<T: DeserializeOwned>(&self, query: Fetch) -> Result<Option<T>, IpcError> {
        let Some(found) = self.fetch(query).await? else {
            return Ok(None);
        };
        serde_json::from_slice(found.as_bytes())
            .map(Some)
            .map_err(|e| IpcError::Payload(PayloadError(format!("fetched JSON: {e}"))))
    }

    /// A user from any cluster's cache.
    pub async fn fetch_user<T: DeserializeOwned>(&self, user: u64) -> Result<Option<T>, IpcError> {
        self.fetch_as(Fetch::User(user)).await
    }

    /// A guild from the cache of the cluster that owns it.
    pub async fn fetch_guild<T: DeserializeOwned>(
        &self,
        guild: u64,
    ) -> Result<Option<T>, IpcError> {
        self.fetch_as(Fetch::Guild(guild)).await
    }

    /// A channel from any cluster's cache.
    pub async fn fetch_channel<T: DeserializeOwned>(
        &self,
        channel: u64,
    ) -> Result<Option<T>, IpcError> {
        self.fetch_as(Fetch::Channel(channel)).await
    }

    /// A guild member from the cache of the cluster that owns the guild.
    pub async fn fetch_member<T: DeserializeOwned>(
        &self,
        guild: u64,
        user: u64,
    ) -> Result<Option<T>, IpcError> {
        self.fetch_as(Fetch::Member { guild, user }).await
    }

    /// A stats snapshot of the whole fleet, with workers given [`STATS_DEADLINE`] to report;
    /// those that miss it are listed in [`FleetStats::missing`].
    ///
    /// # Errors
    /// When the admiral is gone or does not answer within the request timeout.
    pub async fn stats(&self) -> Result<FleetStats, IpcError> {
        self.stats_within(STATS_DEADLINE).await
    }

    /// A stats snapshot, with workers given `deadline` to report (capped below this handle's
    /// request timeout, so the snapshot always arrives in time, partial if it must).
    ///
    /// # Errors
    /// As [`stats`](Self::stats).
    pub async fn stats_within(&self, deadline: Duration) -> Result<FleetStats, IpcError> {
        // Any deadline, however large, is fine: the admiral waits at most 30 s for workers.
        let deadline = deadline.min(super::proto::MAX_TIMEOUT);
        let timeout = self
            .inner
            .timeout
            .max(deadline.saturating_add(deadline / 2));
        let deadline_ms = u64::try_from(deadline.as_millis()).unwrap_or(u64::MAX);
        match self
            .request(Request::Stats { deadline_ms }, timeout)
            .await?
        {
            Reply::Outcome(outcome) => Ok(outcome_result(Target::Admiral, outcome)?.decode()?),
            other => Err(unexpected(other)),
        }
    }

    /// Guilds in every cluster's cache: the total, and the clusters that could not say (down or
    /// too slow), whose guilds the total lacks.
    pub async fn guild_count(&self) -> Result<(u64, Vec<Target>), IpcError> {
        let outcomes = match self
            .request(Request::CountGuilds, self.inner.timeout)
            .await?
        {
            Reply::Outcomes(outcomes) => outcomes,
            other => return Err(unexpected(other)),
        };
        let mut total = 0;
        let mut missing = Vec::new();
        for (target, outcome) in outcomes {
            let count = match outcome {
                Outcome::Ok(count) => count.decode::<u64>().ok(),
                _ => None,
            };
            match count {
                Some(count) => total += count,
                None => missing.push(target),
            }
        }
        Ok((total, missing))
    }

    /// Restarts a worker and resolves once the replacement serves (or the restart failed, in
    /// which case the old process still serves unless the mode was hard). Waits at most
    /// `timeout`.
    pub async fn restart(
        &self,
        worker: Target,
        mode: RestartMode,
        timeout: Duration,
    ) -> Result<(), IpcError> {
        match self
            .request(Request::Restart { worker, mode }, timeout)
            .await?
        {
            Reply::Done => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Stops one worker gracefully and resolves once its process has exited, within `timeout`;
    /// routing then answers "unavailable" for it until a hard restart starts it again.
    pub async fn stop(&self, worker: Target, timeout: Duration) -> Result<(), IpcError> {
        match self.request(Request::Stop { worker }, timeout).await? {
            Reply::Done => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Kills one worker's process now (no shutdown hook, no grace) and resolves once it has
    /// exited, within `timeout`; as after [`stop`](Self::stop), a hard restart starts it again.
    pub async fn stop_now(&self, worker: Target, timeout: Duration) -> Result<(), IpcError> {
        match self.request(Request::StopNow { worker }, timeout).await? {
            Reply::Done => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Creates a service at runtime (eris-fleet's `createService`) named `name`, running the
    /// service type registered as `kind` with [`Fleet::service_kind`](crate::Fleet::service_kind)
    /// (or [`Fleet::service`](crate::Fleet::service)). It starts once the services it depends on
    /// are live and from then on is routed to, supervised, restarted and shut down like the
    /// services declared at launch. Resolves once it is ready; refused
    /// ([`Refusal::CreateFailed`](crate::ipc::proto::Refusal::CreateFailed)) for a name in use
    /// (a stopped or failed service's may be taken again), an unknown kind or dependency, or a
    /// failed start. The wait is this handle's timeout plus the service's start timeout (30 s
    /// when the options give none).
    pub async fn create_service(
        &self,
        name: &str,
        kind: &str,
        options: crate::worker::ServiceOptions,
    ) -> Result<(), IpcError> {
        let start = options
            .start_timeout
            .unwrap_or(Duration::from_secs(30))
            .min(super::proto::MAX_TIMEOUT);
        let request = Request::CreateService {
            name: name.to_owned(),
            kind: kind.to_owned(),
            depends_on: options.depends_on,
            start_timeout_ms: options
                .start_timeout
                .map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
        };
        match self.request(request, self.inner.timeout + start).await? {
            Reply::Done => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Shuts the whole fleet down gracefully, this process included (eris-fleet's
    /// `totalShutdown`); resolves as the shutdown begins.
    pub async fn total_shutdown(&self) -> Result<(), IpcError> {
        match self.request(Request::Shutdown, self.inner.timeout).await? {
            Reply::Done => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Every worker of the fleet with its state, shards, process and uptime (eris-fleet's
    /// `getWorkers`), from any process.
    pub async fn workers(&self) -> Result<Vec<crate::ipc::proto::WorkerInfo>, IpcError> {
        match self.request(Request::Workers, self.inner.timeout).await? {
            Reply::Outcome(outcome) => Ok(outcome_result(Target::Admiral, outcome)?.decode()?),
            other => Err(unexpected(other)),
        }
    }

    /// Reshards the fleet to the total `count` gives (exact, Discord's recommendation, or
    /// guilds per shard; in `clusters` clusters, default as many as now) and resolves when the
    /// new generation is live, within `timeout`.
    pub async fn reshard(
        &self,
        count: ShardCount,
        clusters: Option<u32>,
        timeout: Duration,
    ) -> Result<(), IpcError> {
        match self
            .request(Request::Reshard { count, clusters }, timeout)
            .await?
        {
            Reply::Done => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Rolls every worker onto a new build (see [`DeployPlan`](super::proto::DeployPlan): the
    /// canary cluster first, then the others, then the services, rolled back on a failure), and
    /// resolves with what it did once it is over, or at once with what it would do for a dry
    /// run. A deploy that failed and rolled back is `Ok` too: its report's `failure` says why.
    ///
    /// # Errors
    /// A deploy refused before it began (another under way, a restart or reshard under way, a
    /// program that is not an executable file, too much of the session budget), or `timeout`.
    pub async fn deploy(
        &self,
        plan: super::proto::DeployPlan,
        timeout: Duration,
    ) -> Result<super::proto::DeployReport, IpcError> {
        match self
            .request(Request::Deploy(Box::new(plan)), timeout)
            .await?
        {
            Reply::Outcome(Outcome::Ok(report)) => Ok(report.decode()?),
            other => Err(unexpected(other)),
        }
    }

    /// Restarts every worker of `group`, `at_once` at a time, and resolves once all are done
    /// with one outcome per worker (`Ok` or `Error` with why; a failed soft restart leaves that
    /// worker's old process serving). Waits at most `timeout` in all.
    pub async fn restart_all(
        &self,
        group: Group,
        mode: RestartMode,
        at_once: u32,
        timeout: Duration,
    ) -> Result<BTreeMap<Target, Outcome>, IpcError> {
        let request = Request::RestartAll {
            group,
            mode,
            at_once,
        };
        match self.request(request, timeout).await? {
            Reply::Outcomes(outcomes) => Ok(outcomes.into_iter().collect()),
            other => Err(unexpected(other)),
        }
    }

    /// Sends a log record to the admiral, which logs it tagged with this worker.
    pub async fn log(&self, level: LogLevel, message: impl Into<String>) -> Result<(), IpcError> {
        let record = LogRecord {
            level,
            message: message.into(),
        };
        match &self.inner.transport {
            Transport::Socket(up) => up.send(&Up::Log(record)).await,
            Transport::Local(_) => {
                record.emit(&self.inner.me);
                Ok(())
            }
        }
    }

    pub(super) async fn expect_done(&self, request: Request) -> Result<(), IpcError> {
        match self.request(request, self.inner.timeout).await? {
            Reply::Done => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    pub(super) async fn expect_flag(&self, request: Request) -> Result<bool, IpcError> {
        match self.request(request, self.inner.timeout).await? {
            Reply::Flag(flag) => Ok(flag),
            other => Err(unexpected(other)),
        }
    }
}
