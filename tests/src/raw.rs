//! A third adapter, with no Discord library: each shard speaks the gateway over a raw websocket
//! (JSON, no compression). It shows what carrier's cluster protocol ([`carrier::cluster`]) asks
//! of an adapter and nothing more: start the shards (resuming the sessions given), close them
//! resumably and return their sessions, close them for good. Its clusters count guilds and
//! messages and answer `status` with a [`ClusterStatus`].

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use carrier::cluster::{ClusterLink, ShardReporter, Shards};
use carrier::ipc::proto::ShardSession;
use carrier::worker::{BoxError, start_cluster_worker};
use carrier::{ClusterAssignment, ClusterContext, ClusterRunner, Fleet, FleetOptions};
use carrier::{Payload, ShardEvent};
use futures::future::BoxFuture;
use futures::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

use crate::{ClusterStatus, Echo, LIB_ENV};

/// The test fleet with raw-websocket clusters; spawned testbot workers run them too.
#[must_use]
pub fn raw_fleet(mut options: FleetOptions) -> Fleet {
    if let Some(command) = options.worker_command.as_mut() {
        command.env.push((LIB_ENV.into(), "raw".into()));
    }
    Fleet::new(options, Arc::new(RawRunner)).service::<Echo>("echo")
}

/// The [`ClusterRunner`] of raw clusters.
#[derive(Debug)]
pub struct RawRunner;

/// What a cluster's shards share.
struct Cluster {
    link: ClusterLink,
    assignment: ClusterAssignment,
    reporter: ShardReporter,
    guilds: AtomicU64,
    events: AtomicU64,
}

impl Cluster {
    fn new(link: ClusterLink, assignment: ClusterAssignment, reporter: ShardReporter) -> Self {
        let (guilds, events) = (AtomicU64::new(0), AtomicU64::new(0));
        Self {
            link,
            assignment,
            reporter,
            guilds,
            events,
        }
    }

    fn status(&self) -> Result<Payload, String> {
        let a = &self.assignment;
        let (guilds, events) = (self.guilds.load(Relaxed), self.events.load(Relaxed));
        let (id, shards) = (a.id, (a.first_shard..=a.last_shard).collect());
        Payload::encode(&ClusterStatus {
            id,
            shards,
            guilds,
            events,
        })
        .map_err(|e| e.to_string())
    }
}

impl ClusterRunner for RawRunner {
    fn run(&self, context: ClusterContext) -> BoxFuture<'static, Result<(), BoxError>> {
        let (ipc, link, assignment) = (context.ipc, context.link, context.assignment);
        let reporter = ShardReporter::new(&link, &assignment);
        let (l, a, r) = (link.clone(), assignment.clone(), reporter.clone());
        let cluster = Cluster::new(l, a, r);
        Box::pin(async move {
            let cluster = start_cluster_worker(&ipc, async { Ok(cluster) }, |c, _, p| async move {
                if p.as_bytes() == b"status" {
                    c.status()
                } else {
                    Ok(p)
                }
            })
            .await?;
            let counted = cluster.clone();
            link.set_guild_counter(Arc::new(move || counted.guilds.load(Relaxed)));
            let (stop, tasks) = (watch::channel(None).0, Vec::new());
            let shards = RawShards {
                cluster,
                stop,
                tasks,
            };
            carrier::cluster::serve(&link, &assignment, context.control, &reporter, shards).await
        })
    }
}

struct RawShards {
    cluster: Arc<Cluster>,
    /// The close code every shard is to close with.
    stop: watch::Sender<Option<u16>>,
    tasks: Vec<tokio::task::JoinHandle<Option<ShardSession>>>,
}

impl RawShards {
    async fn close_all(&mut self, code: u16, within: Duration) -> Vec<ShardSession> {
        let _ = self.stop.send(Some(code));
        let closing = futures::future::join_all(self.tasks.drain(..));
        let closed = tokio::time::timeout(within, closing)
            .await
            .unwrap_or_default();
        closed
            .into_iter()
            .filter_map(|t| t.ok().flatten())
            .collect()
    }
}

impl Shards for RawShards {
    fn start(&mut self, sessions: Vec<ShardSession>) -> BoxFuture<'_, Result<(), BoxError>> {
        let _ = self.stop.send(None);
        let a = &self.cluster.assignment;
        for shard in a.first_shard..=a.last_shard {
            let session = sessions.iter().find(|s| s.shard == shard).cloned();
            if let Some(s) = &session {
                let url = s.resume_url.as_deref();
                let reporter = &self.cluster.reporter;
                reporter.opened(shard, &s.session_id, url, carrier::Payload::empty());
                reporter.handled(shard, s.sequence);
            }
            let run = run_shard(self.cluster.clone(), shard, session, self.stop.subscribe());
            self.tasks.push(tokio::spawn(run));
        }
        Box::pin(async { Ok(()) })
    }

    fn hand_over(&mut self) -> BoxFuture<'_, Vec<ShardSession>> {
        Box::pin(self.close_all(4000, Duration::from_secs(5)))
    }

    fn close(&mut self, grace: Duration) -> BoxFuture<'_, ()> {
        Box::pin(async move { drop(self.close_all(1000, grace).await) })
    }
}

/// Runs one shard until told to close; after a resumable close, returns its session.
async fn run_shard(
    c: Arc<Cluster>,
    shard: u32,
    mut session: Option<ShardSession>,
    mut stop: watch::Receiver<Option<u16>>,
) -> Option<ShardSession> {
    let a = &c.assignment;
    loop {
        let resume = session.as_ref().and_then(|s| s.resume_url.as_deref());
        let base = resume.unwrap_or(&a.gateway_url).to_owned();
        c.reporter.report(shard, ShardEvent::Connecting).await;
        let url = format!("{}/?v=10&encoding=json", base.trim_end_matches('/'));
        let Ok((mut ws, _)) = tokio_tungstenite::connect_async(url).await else {
            tokio::time::sleep(Duration::from_secs(1)).await; // Discord is down: try again.
            continue;
        };
        let (mut beat, mut closing) = (heartbeat_every(Duration::from_hours(1)), None);
        let mut beat_sent = tokio::time::Instant::now();
        let mut seq = session.as_ref().map(|s| s.sequence);
        loop {
            let frame = tokio::select! {
                frame = ws.next() => frame,
                _ = beat.tick() => {
                    beat_sent = tokio::time::Instant::now();
                    let _ = ws.send(Message::text(json!({"op": 1, "d": seq}).to_string())).await;
                    continue;
                }
                changed = stop.changed(), if closing.is_none() => {
                    // The sender gone: the cluster is over.
                    closing = changed.map_or(Some(1000), |()| *stop.borrow());
                    if let Some(code) = closing {
                        let frame = CloseFrame { code: code.into(), reason: "".into() };
                        let _ = ws.send(Message::Close(Some(frame))).await;
                    }
                    continue; // Events still arrive until the close comes back.
                }
            };
            let text = match frame {
                Some(Ok(Message::Text(text))) => text,
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                _ => break,
            };
            let payload: Value = serde_json::from_str(&text).unwrap_or_default();
            let d = &payload["d"];
            match payload["op"].as_u64() {
                Some(1) => beat.reset_immediately(), // Discord asks for a heartbeat now.
                Some(11) => c.reporter.latency(shard, beat_sent.elapsed()),
                Some(10) => {
                    beat =
                        heartbeat_every(Duration::from_millis(d["heartbeat_interval"].as_u64()?));
                    let hello = if let Some(s) = &session {
                        json!({"op": 6, "d": {"token": a.token, "session_id": s.session_id, "seq": s.sequence}})
                    } else {
                        c.link.identify(shard).await.ok()?;
                        let properties =
                            json!({"os": "linux", "browser": "fleet-raw", "device": "fleet-raw"});
                        // GUILDS, GUILD_MEMBERS, GUILD_MESSAGES.
                        json!({"op": 2, "d": {"token": a.token, "intents": 1 | 1 << 1 | 1 << 9, "shard": [shard, a.shard_total], "properties": properties}})
                    };
                    let _ = ws.send(Message::text(hello.to_string())).await;
                }
                Some(0) => {
                    c.reporter.event(shard);
                    seq = payload["s"].as_u64().or(seq);
                    let (report, counter) = match payload["t"].as_str() {
                        Some("READY") => {
                            let id = d["session_id"].as_str()?.to_owned();
                            let url = d["resume_gateway_url"].as_str().map(str::to_owned);
                            let state = carrier::Payload::empty();
                            c.reporter.opened(shard, &id, url.as_deref(), state);
                            session = Some(ShardSession::new(shard, id, url));
                            (Some(ShardEvent::Ready), None)
                        }
                        Some("RESUMED") => (Some(ShardEvent::Resumed), None),
                        Some("GUILD_CREATE") => (None, Some(&c.guilds)),
                        Some("MESSAGE_CREATE" | "GUILD_MEMBER_ADD") => (None, Some(&c.events)),
                        _ => (None, None),
                    };
                    if let Some(event) = report {
                        c.reporter.report(shard, event).await;
                    }
                    // A standby cluster's events do not reach its worker.
                    if let Some(counter) = counter.filter(|_| c.reporter.is_live()) {
                        counter.fetch_add(1, Relaxed);
                    }
                    if let Some(seq) = seq {
                        c.reporter.handled(shard, seq);
                    }
                }
                Some(7) => break, // Reconnect and resume.
                Some(9) if d != &Value::Bool(true) => {
                    c.reporter.session_ended(shard);
                    session = None; // Identify anew.
                }
                _ => {}
            }
        }
        let gone = ShardEvent::Disconnected(None);
        c.reporter.report(shard, gone).await;
        if let Some(s) = session.as_mut() {
            s.sequence = seq.unwrap_or(0);
        }
        match closing {
            Some(4000) => return session,
            Some(_) => return None,
            None => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// A heartbeat timer whose first beat is one period away.
fn heartbeat_every(period: Duration) -> tokio::time::Interval {
    tokio::time::interval_at(tokio::time::Instant::now() + period, period)
}
