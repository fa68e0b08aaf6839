//! The gate: a websocket relay between serenity's shards and the gateway, which paces identifies
//! and hands sessions over.
//!
//! serenity 0.12 decides on its own when to identify (its shard queuer waits a fixed 5 s between
//! boots and ignores `max_concurrency`, and re-identifies happen inside its shard runners), and it
//! cannot start from a session it did not open. So the adapter points serenity's `ws_url` at this
//! relay on loopback. For each shard connection the relay opens the same connection to the real
//! gateway and forwards every frame both ways, except:
//!
//! - an IDENTIFY (op 2) waits for the fleet's identify queue; heartbeats sent meanwhile pass it,
//!   everything else queues behind it. It asks for no payload compression, so every frame the
//!   gateway sends is text the relay can read. Resumes (op 6) pass at once.
//! - the relay follows each session: its id, shard, READY and the sequence of the last dispatch
//!   it handed serenity. [`Gate::cut_all`] (a handover) stops each connection right there: the
//!   upstream connection closes resumably (4000), and the serenity shard is kept quiet (its
//!   heartbeats acknowledged, nothing else) until the process shuts down. No connection reaches
//!   the gateway after that. Every dispatch the old process received it handles; the
//!   replacement resumes after the last one, so each event reaches user code once.
//! - a shard given a session to take over ([`Gate::seed`]) resumes it upstream in place of its
//!   first IDENTIFY, and serenity is shown the session's READY (at the handed-over sequence) and
//!   a `GUILD_CREATE` for each guild the old process had cached; then Discord's replay follows.
//! - in a reshard, the dispatches that create something (a message, an interaction, a channel, a
//!   thread, a role) reach serenity by the generation their creation time belongs to
//!   ([`Gate::cut`]): a new generation's gate holds them back until the switch time is known,
//!   and an old generation's passes only those made before it. After [`Gate::deactivate`] an
//!   old generation's gate passes no other dispatch.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use carrier::IpcError;
use carrier::cluster::{ClusterLink, ShardReporter};
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt as _, StreamExt as _};
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The heartbeat interval a quiet connection is told (Discord's usual).
const QUIET_HEARTBEAT_MS: u64 = 41_250;

/// A shard's session handed over to this process, resumed in place of its next IDENTIFY.
#[derive(Debug, Clone)]
pub(crate) struct Seed {
    pub session_id: String,
    pub seq: u64,
    /// The session's READY dispatch, as the gateway sent it.
    pub ready: String,
    /// The shard's cached guilds, each a `GUILD_CREATE` payload.
    pub guilds: Vec<String>,
}

/// Where a cut connection's session stood: what the replacement resumes.
#[derive(Debug, Clone)]
pub(crate) struct Cut {
    pub shard: u32,
    pub session_id: String,
    pub seq: u64,
    pub resume_url: Option<String>,
    pub ready: String,
}

/// A session as the relay saw it open.
#[derive(Debug, Clone)]
struct Known {
    shard: u32,
    id: String,
    ready: Arc<str>,
    resume_url: Option<String>,
}

/// What a live connection is told to do with its upstream session.
enum CutRequest {
    /// Cut it where it stands and answer where it stood (a handover).
    Cut(oneshot::Sender<Option<Cut>>),
    /// End it at the gateway with 1000 (a retiring cluster whose client did not close it).
    End,
}

#[derive(Debug, Default)]
struct State {
    seeds: HashMap<u32, Seed>,
    /// The connection holding each shard's session now, to cut it.
    live: HashMap<u32, (u64, mpsc::UnboundedSender<CutRequest>)>,
    /// Sessions seen, by id: a client's own RESUME names only the session.
    known: HashMap<String, Known>,
    /// After a handover no connection reaches the gateway.
    handed_over: bool,
    /// The cluster is retiring: a connection that ends now ends its session at the gateway.
    retiring: bool,
    /// Connections relayed to the gateway that have not finished closing.
    open: usize,
    /// Shards whose handed-over session was resumed and whose READY serenity was shown.
    took_over: std::collections::HashSet<u32>,
    next_conn: u64,
}

#[derive(Debug)]
struct Shared {
    upstream: String,
    link: ClusterLink,
    /// Records each session and the last dispatch handed to serenity, for checkpoints.
    reporter: ShardReporter,
    state: Mutex<State>,
    /// An old generation's cluster after a reshard: dispatches no longer reach serenity.
    deactivated: std::sync::atomic::AtomicBool,
    /// A reshard's new generation: until the switch time is known, what creates something is
    /// the old generation's to handle.
    standby: bool,
    /// A reshard's switch time, once told.
    cut: carrier::cluster::SwitchTime,
    /// Rung when a relayed connection has finished closing.
    closed: tokio::sync::Notify,
}

impl Shared {
    /// Whether a dispatch reaches serenity; `created` is the snowflake of what it creates.
    fn admits(&self, created: Option<u64>) -> bool {
        match (created, created.and_then(|id| self.cut.ours(id))) {
            (_, Some(ours)) => ours,
            (Some(_), None) if self.standby => false,
            _ => !self.deactivated.load(std::sync::atomic::Ordering::SeqCst),
        }
    }

    /// Whether a dispatch that creates something, and is not admitted, waits for the switch
    /// time: a standby generation's, before the time is known.
    fn holds(&self) -> bool {
        self.standby && self.cut.ours(0).is_none()
    }

    /// Whether dispatches need reading for what they create.
    fn splitting(&self) -> bool {
        self.standby || self.cut.ours(0).is_some()
    }
}

impl Shared {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The relay of one cluster process.
#[derive(Debug, Clone)]
pub(crate) struct Gate {
    url: String,
    shared: Arc<Shared>,
}

impl Gate {
    /// Starts a relay to `upstream` (a gateway URL without query) on `127.0.0.1`.
    pub(crate) async fn start(
        upstream: String,
        link: ClusterLink,
        reporter: ShardReporter,
        standby: bool,
    ) -> std::io::Result<Self> {
        // serenity runs its handlers on tasks of their own: a dispatch handed over may still be
        // in a handler when the process dies, so checkpoints trail a round behind.
        reporter.checkpoints_trail();
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let url = format!("ws://{}", listener.local_addr()?);
        let shared = Arc::new(Shared {
            upstream,
            link,
            reporter,
            state: Mutex::default(),
            deactivated: std::sync::atomic::AtomicBool::new(false),
            standby,
            cut: carrier::cluster::SwitchTime::default(),
            closed: tokio::sync::Notify::new(),
        });
        let accepting = shared.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(relay(stream, accepting.clone()));
            }
        });
        Ok(Self { url, shared })
    }

    /// Its `ws://` URL, serenity's `ws_url`.
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// Sessions to take over: each shard's next IDENTIFY resumes its session instead. Connections
    /// reach the gateway again (after a handover whose replacement failed).
    pub(crate) fn seed(&self, seeds: impl IntoIterator<Item = (u32, Seed)>) {
        let mut state = self.shared.state();
        state.handed_over = false;
        state.seeds.extend(seeds);
    }

    /// A reshard's switch time: what creates something reaches serenity by the generation its
    /// creation time belongs to (see `carrier::cluster::ShardReporter::admits`).
    pub(crate) fn cut(&self, at_ms: u64, old: bool) {
        self.shared.cut.set(at_ms, old);
    }

    /// From now on no dispatch reaches serenity (its heartbeats and their acknowledgements go
    /// on): the cluster belongs to a reshard's old generation, and the new one handles events.
    pub(crate) fn deactivate(&self) {
        self.shared
            .deactivated
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether shard `shard`'s latest READY was a handed-over session's (shown by the relay, not
    /// sent by Discord); asking forgets it.
    pub(crate) fn took_over(&self, shard: u32) -> bool {
        self.shared.state().took_over.remove(&shard)
    }

    /// The cluster retires: from now on a connection that ends (serenity closing a shard, or
    /// dropping it) ends its session at the gateway with 1000, instead of leaving it resumable
    /// for a resume that will never come.
    pub(crate) fn retire(&self) {
        self.shared.state().retiring = true;
    }

    /// Waits, for at most `within`, until every relayed connection has finished closing, so a
    /// process that exits next leaves none of its close frames unsent. Returns whether they all
    /// finished.
    pub(crate) async fn settled(&self, within: Duration) -> bool {
        tokio::time::timeout(within, async {
            loop {
                let closed = self.shared.closed.notified();
                if self.shared.state().open == 0 {
                    return;
                }
                closed.await;
            }
        })
        .await
        .is_ok()
    }

    /// Ends, with 1000 at the gateway, every session a connection still holds: for a cluster that
    /// retires and whose serenity shards did not close in time, so the gateway keeps no session
    /// of it resumable (and routes it no events) after it exits. Returns how many were told.
    pub(crate) fn end_all(&self) -> usize {
        let orders: Vec<_> = {
            let mut state = self.shared.state();
            state.retiring = true;
            state.live.drain().map(|(_, (_, tx))| tx).collect()
        };
        orders
            .into_iter()
            .filter(|tx| tx.send(CutRequest::End).is_ok())
            .count()
    }

    /// Cuts every shard's connection where it stands (see the module's docs) and returns where
    /// each session stood; a connection that does not answer within `within` is left out.
    pub(crate) async fn cut_all(&self, within: Duration) -> Vec<Cut> {
        let requests: Vec<_> = {
            let mut state = self.shared.state();
            state.handed_over = true;
            state.live.drain().map(|(_, (_, tx))| tx).collect()
        };
        let answers = requests.into_iter().map(|tx| async move {
            let (reply, answer) = oneshot::channel();
            tx.send(CutRequest::Cut(reply)).ok()?;
            tokio::time::timeout(within, answer).await.ok()?.ok()?
        });
        futures::future::join_all(answers)
            .await
            .into_iter()
            .flatten()
            .collect()
    }
}

type Grant = Pin<Box<dyn Future<Output = Result<(), IpcError>> + Send>>;
type ClientTx = SplitSink<WebSocketStream<TcpStream>, Message>;
type ClientRx = SplitStream<WebSocketStream<TcpStream>>;
type ServerTx = SplitSink<WebSocketStream<MaybeTlsStream<TcpStream>>, Message>;

/// How often a shard waiting for this host's licence looks again.
const LICENCE_CHECKED_EVERY: Duration = Duration::from_millis(100);

async fn relay(stream: TcpStream, shared: Arc<Shared>) {
    let mut query = String::new();
    #[allow(
        clippy::result_large_err,
        reason = "the callback's type is tungstenite's"
    )]
    let remember_query = |request: &Request, response: Response| {
        request.uri().query().unwrap_or("").clone_into(&mut query);
        Ok(response)
    };
    let accepted = tokio_tungstenite::accept_hdr_async(stream, remember_query).await;
    let Ok(client) = accepted else { return };
    let (mut client_tx, client_rx) = client.split();
    if shared.state().handed_over {
        // This process handed its sessions over: nothing of it reaches the gateway again.
        let hello = format!(r#"{{"op":10,"d":{{"heartbeat_interval":{QUIET_HEARTBEAT_MS}}}}}"#);
        if client_tx.send(Message::text(hello)).await.is_ok() {
            keep_quiet(client_tx, client_rx).await;
        }
        return;
    }
    // On several hosts: no gateway connection while this host's licence has run out (another
    // host may be resuming the session); the shard waits until the admiral renews it.
    if !shared.reporter.licensed() {
        tracing::warn!(target: "fleet::shard", "this host's licence ran out: not connecting until the admiral renews it");
        while !shared.reporter.licensed() {
            if shared.state().handed_over {
                return;
            }
            tokio::time::sleep(LICENCE_CHECKED_EVERY).await;
        }
    }
    let upstream = &shared.upstream;
    let target = if query.is_empty() {
        format!("{upstream}/")
    } else {
        format!("{upstream}/?{query}")
    };
    let server = match tokio_tungstenite::connect_async(target.as_str()).await {
        Ok((server, _)) => server,
        Err(error) => {
            tracing::warn!(target: "fleet::shard", %error, "the gateway is unreachable");
            let frame = CloseFrame {
                code: CloseCode::Library(4000),
                reason: "gateway unreachable".into(),
            };
            let _ = client_tx.send(Message::Close(Some(frame))).await;
            return;
        }
    };
    let (cut_tx, cut_rx) = mpsc::unbounded_channel();
    let conn = {
        let mut state = shared.state();
        state.next_conn += 1;
        state.open += 1;
        state.next_conn
    };
    let mut connection = Connection {
        shared: shared.clone(),
        conn,
        cut_tx,
        session: None,
        seq: 0,
    };
    connection.run(server, client_tx, client_rx, cut_rx).await;
    let mut state = shared.state();
    if let Some(known) = &connection.session
        && state
            .live
            .get(&known.shard)
            .is_some_and(|(c, _)| *c == conn)
    {
        state.live.remove(&known.shard);
    }
    state.open -= 1;
    drop(state);
    shared.closed.notify_waiters();
}

/// One serenity shard connection and the gateway connection it is relayed to.
struct Connection {
    shared: Arc<Shared>,
    conn: u64,
    cut_tx: mpsc::UnboundedSender<CutRequest>,
    /// The session this connection holds, once known.
    session: Option<Known>,
    /// The sequence of the last dispatch handed to serenity.
    seq: u64,
}

impl Connection {
    async fn run(
        &mut self,
        server: WebSocketStream<MaybeTlsStream<TcpStream>>,
        mut client_tx: ClientTx,
        mut client_rx: ClientRx,
        mut cut_rx: mpsc::UnboundedReceiver<CutRequest>,
    ) {
        let (mut server_tx, mut server_rx) = server.split();
        let mut grant: Option<Grant> = None;
        let mut held: VecDeque<Message> = VecDeque::new();
        // A standby generation's dispatches that create something, until the switch time is
        // known (see `ShardReporter::placement`).
        let mut held_for_cut: carrier::cluster::Held<Message> = carrier::cluster::Held::default();
        'relay: loop {
            tokio::select! {
                from_server = server_rx.next() => {
                    let Some(Ok(message)) = from_server else { break };
                    let closing = message.is_close();
                    let frame = match &message {
                        Message::Text(text) => self.follow(text),
                        _ => Frame::Other,
                    };
                    // What was held for the switch time goes first, once it is known.
                    if !held_for_cut.is_empty() && self.shared.cut.ours(0).is_some() {
                        for message in held_for_cut.release_with(|id| self.shared.admits(Some(id))) {
                            if client_tx.send(message).await.is_err() {
                                break 'relay;
                            }
                        }
                    }
                    if let Frame::Dispatch { created } = frame
                        && !self.shared.admits(created)
                    {
                        if let Some(created) = created.filter(|_| self.shared.holds()) {
                            held_for_cut.hold(created, message);
                        }
                        continue;
                    }
                    if client_tx.send(message).await.is_err() || closing {
                        break;
                    }
                }
                from_client = client_rx.next() => {
                    let Some(Ok(message)) = from_client else { break };
                    let closing = message.is_close();
                    let waiting = grant.is_some();
                    if !waiting && let Some(identify) = Identify::parse(&message) {
                        if let Some(seed) = self.take_seed(identify.shard) {
                            if self.resume_seed(&identify, seed, &mut server_tx, &mut client_tx).await.is_err() {
                                break;
                            }
                            continue;
                        }
                        let link = self.shared.link.clone();
                        let shard = identify.shard;
                        grant = Some(Box::pin(async move { link.identify(shard).await }));
                        held.push_back(identify.message);
                        continue;
                    }
                    if !waiting && let Some(session_id) = resume_session(&message) {
                        self.resumed_by_client(&session_id);
                    }
                    if waiting && !closing && !is_heartbeat(&message) {
                        held.push_back(message);
                        continue;
                    }
                    if server_tx.send(message).await.is_err() || closing {
                        break;
                    }
                }
                granted = async { grant.as_mut().expect("guarded").await }, if grant.is_some() => {
                    grant = None;
                    if let Err(error) = granted {
                        tracing::warn!(target: "fleet::identify", %error, "no identify permission; dropping the connection");
                        break;
                    }
                    if self.shared.state().handed_over {
                        // The sessions went to a replacement meanwhile: identify nothing here.
                        let _ = server_tx.close().await;
                        keep_quiet(client_tx, client_rx).await;
                        return;
                    }
                    while let Some(message) = held.pop_front() {
                        if server_tx.send(message).await.is_err() {
                            return;
                        }
                    }
                }
                Some(order) = cut_rx.recv() => {
                    let CutRequest::Cut(reply) = order else {
                        let frame = CloseFrame {
                            code: CloseCode::Normal,
                            reason: "retired".into(),
                        };
                        let _ = server_tx.send(Message::Close(Some(frame))).await;
                        let _ = client_tx.close().await;
                        return;
                    };
                    let cut = self.session.as_ref().map(|known| Cut {
                        shard: known.shard,
                        session_id: known.id.clone(),
                        seq: self.seq,
                        resume_url: known.resume_url.clone(),
                        ready: known.ready.to_string(),
                    });
                    let frame = CloseFrame {
                        code: CloseCode::Library(4000),
                        reason: "handed over".into(),
                    };
                    let _ = server_tx.send(Message::Close(Some(frame))).await;
                    drop(server_tx);
                    drop(server_rx);
                    let _ = reply.send(cut);
                    keep_quiet(client_tx, client_rx).await;
                    return;
                }
            }
        }
        if self.shared.state().retiring {
            let frame = CloseFrame {
                code: CloseCode::Normal,
                reason: "retired".into(),
            };
            let _ = server_tx.send(Message::Close(Some(frame))).await;
        }
        let _ = server_tx.close().await;
        let _ = client_tx.close().await;
    }

    /// Follows a gateway frame on its way to serenity: a dispatch's sequence, and a READY's
    /// session. What it is: a dispatch (with the snowflake of what it creates, read only while
    /// a reshard splits such events) or anything else.
    fn follow(&mut self, text: &str) -> Frame {
        let Ok(head) = serde_json::from_str::<Head>(text) else {
            return Frame::Other;
        };
        if head.op != 0 {
            return Frame::Other;
        }
        let created = match head.t {
            Some(t) if self.shared.splitting() && CREATING.contains(&t) => {
                serde_json::from_str::<Value>(text).ok().and_then(|frame| {
                    let d = &frame["d"];
                    let id = if t == "GUILD_ROLE_CREATE" {
                        &d["role"]["id"]
                    } else {
                        &d["id"]
                    };
                    id.as_str()?.parse().ok()
                })
            }
            _ => None,
        };
        if let Some(s) = head.s {
            self.seq = s;
        }
        if head.t == Some("READY")
            && let Ok(ready) = serde_json::from_str::<Value>(text)
        {
            let d = &ready["d"];
            let (Some(id), Some(shard)) = (d["session_id"].as_str(), d["shard"][0].as_u64()) else {
                return Frame::Dispatch { created };
            };
            let known = Known {
                shard: u32::try_from(shard).unwrap_or(u32::MAX),
                id: id.to_owned(),
                ready: Arc::from(text),
                resume_url: d["resume_gateway_url"].as_str().map(str::to_owned),
            };
            let url = known.resume_url.as_deref();
            let state = checkpoint_state(&ready);
            self.shared
                .reporter
                .opened(known.shard, &known.id, url, state);
            self.hold(known);
        }
        if let (Some(s), Some(known)) = (head.s, &self.session) {
            self.shared.reporter.handled(known.shard, s);
        }
        Frame::Dispatch { created }
    }

    /// This connection holds `known`'s session now.
    fn hold(&mut self, known: Known) {
        let mut state = self.shared.state();
        state
            .live
            .insert(known.shard, (self.conn, self.cut_tx.clone()));
        state.known.insert(known.id.clone(), known.clone());
        // Sessions of this shard that are gone are forgotten.
        state
            .known
            .retain(|id, k| k.shard != known.shard || *id == known.id);
        drop(state);
        self.session = Some(known);
    }

    /// serenity resumed a session of its own over this connection.
    fn resumed_by_client(&mut self, session_id: &str) {
        let known = self.shared.state().known.get(session_id).cloned();
        if let Some(known) = known {
            self.hold(known);
        }
    }

    fn take_seed(&self, shard: u32) -> Option<Seed> {
        self.shared.state().seeds.remove(&shard)
    }

    /// Takes a handed-over session over in place of an IDENTIFY: resumes it upstream, and shows
    /// serenity its READY and the cached guilds; Discord's replay follows.
    async fn resume_seed(
        &mut self,
        identify: &Identify,
        seed: Seed,
        server_tx: &mut ServerTx,
        client_tx: &mut ClientTx,
    ) -> Result<(), ()> {
        let resume = serde_json::json!({
            "op": 6,
            "d": {"token": identify.token, "session_id": seed.session_id, "seq": seed.seq},
        });
        server_tx
            .send(Message::text(resume.to_string()))
            .await
            .map_err(drop)?;
        let mut ready: Value = serde_json::from_str(&seed.ready).map_err(drop)?;
        ready["s"] = Value::from(seed.seq);
        self.shared.state().took_over.insert(identify.shard);
        client_tx
            .send(Message::text(ready.to_string()))
            .await
            .map_err(drop)?;
        for guild in &seed.guilds {
            let dispatch = format!(
                r#"{{"t":"GUILD_CREATE","s":{},"op":0,"d":{guild}}}"#,
                seed.seq
            );
            client_tx
                .send(Message::text(dispatch))
                .await
                .map_err(drop)?;
        }
        self.seq = seed.seq;
        let resume_url = ready["d"]["resume_gateway_url"].as_str().map(str::to_owned);
        let reporter = &self.shared.reporter;
        let state = checkpoint_state(&ready);
        reporter.opened(
            identify.shard,
            &seed.session_id,
            resume_url.as_deref(),
            state,
        );
        reporter.handled(identify.shard, seed.seq);
        self.hold(Known {
            shard: identify.shard,
            id: seed.session_id,
            ready: Arc::from(seed.ready.as_str()),
            resume_url,
        });
        Ok(())
    }
}

/// What a session's checkpoint carries for serenity: its READY without the guild list (a crash's
/// replacement shows serenity that READY, and its cache starts empty), small enough to keep.
fn checkpoint_state(ready: &Value) -> carrier::Payload {
    let mut lean = ready.clone();
    lean["d"]["guilds"] = Value::Array(Vec::new());
    let state = crate::SessionState {
        ready: lean.to_string(),
        guilds: Vec::new(),
    };
    carrier::Payload::encode(&state).unwrap_or_default()
}

/// Keeps a serenity shard whose session went elsewhere quiet until it closes: its heartbeats
/// are acknowledged, everything else is dropped.
async fn keep_quiet(mut client_tx: ClientTx, mut client_rx: ClientRx) {
    while let Some(Ok(message)) = client_rx.next().await {
        if message.is_close() {
            break;
        }
        if is_heartbeat(&message)
            && matches!(message, Message::Text(_))
            && client_tx.send(Message::text(r#"{"op":11}"#)).await.is_err()
        {
            break;
        }
    }
    let _ = client_tx.close().await;
}

/// A gateway frame, as the relay sees it.
enum Frame {
    /// A dispatch, with the snowflake of what it creates if that was read.
    Dispatch { created: Option<u64> },
    /// Anything else.
    Other,
}

/// Dispatches that create something with a snowflake id (`d.id`, a role's `d.role.id`).
const CREATING: [&str; 5] = [
    "MESSAGE_CREATE",
    "INTERACTION_CREATE",
    "CHANNEL_CREATE",
    "THREAD_CREATE",
    "GUILD_ROLE_CREATE",
];

/// The head of a gateway frame (read from every frame, so nothing is copied out of it).
#[derive(serde::Deserialize)]
struct Head<'a> {
    op: u8,
    #[serde(default)]
    s: Option<u64>,
    #[serde(default, borrow)]
    t: Option<&'a str>,
}

/// An IDENTIFY from serenity, rewritten to ask for no payload compression.
struct Identify {
    shard: u32,
    token: String,
    message: Message,
}

impl Identify {
    fn parse(message: &Message) -> Option<Self> {
        let Message::Text(text) = message else {
            return None;
        };
        if !text.contains("\"op\":2") && !text.contains("\"op\": 2") {
            return None;
        }
        let mut frame: Value = serde_json::from_str(text).ok()?;
        if frame["op"] != 2 {
            return None;
        }
        let d = &mut frame["d"];
        let shard = d["shard"][0]
            .as_u64()
            .map_or(0, |s| u32::try_from(s).unwrap_or(u32::MAX));
        let token = d["token"].as_str().unwrap_or_default().to_owned();
        if d.is_object() {
            d["compress"] = Value::Bool(false);
        }
        Some(Self {
            shard,
            token,
            message: Message::text(frame.to_string()),
        })
    }
}

/// The session a client's RESUME (op 6) names, if it is one.
fn resume_session(message: &Message) -> Option<String> {
    let Message::Text(text) = message else {
        return None;
    };
    if !text.contains("\"op\":6") && !text.contains("\"op\": 6") {
        return None;
    }
    let frame: Value = serde_json::from_str(text).ok()?;
    (frame["op"] == 6)
        .then(|| frame["d"]["session_id"].as_str().map(str::to_owned))
        .flatten()
}

fn is_heartbeat(message: &Message) -> bool {
    match message {
        Message::Text(text) => {
            serde_json::from_str::<serde_json::Value>(text).is_ok_and(|v| v["op"] == 1)
        }
        Message::Ping(_) | Message::Pong(_) => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identify_frames_are_recognised_with_their_shard_and_lose_compression() {
        let identify = Message::text(
            r#"{"op":2,"d":{"token":"t","shard":[3,8],"intents":1,"compress":true}}"#,
        );
        let parsed = Identify::parse(&identify).unwrap();
        assert_eq!((parsed.shard, parsed.token.as_str()), (3, "t"));
        let Message::Text(rewritten) = &parsed.message else {
            panic!("text")
        };
        let rewritten: Value = serde_json::from_str(rewritten).unwrap();
        assert_eq!(rewritten["d"]["compress"], false);
        assert_eq!(rewritten["d"]["intents"], 1);
        let no_shard = Message::text(r#"{"op":2,"d":{"token":"t","intents":1}}"#);
        assert_eq!(Identify::parse(&no_shard).unwrap().shard, 0);
        let resume = Message::text(r#"{"op":6,"d":{"token":"t","session_id":"s","seq":2}}"#);
        assert!(Identify::parse(&resume).is_none());
        assert_eq!(resume_session(&resume).as_deref(), Some("s"));
        // A nested "op":2 inside another payload is not an identify.
        let presence = Message::text(r#"{"op":3,"d":{"activities":[{"op":2}]}}"#);
        assert!(Identify::parse(&presence).is_none());
        assert!(is_heartbeat(&Message::text(r#"{"op":1,"d":5}"#)));
        assert!(!is_heartbeat(&Message::text(r#"{"op":3,"d":{}}"#)));
    }

    #[test]
    fn dispatch_heads_give_their_sequence_and_name() {
        let head: Head =
            serde_json::from_str(r#"{"t":"READY","s":1,"op":0,"d":{"x":[1,2]}}"#).unwrap();
        assert_eq!((head.op, head.s, head.t), (0, Some(1), Some("READY")));
        let ack: Head = serde_json::from_str(r#"{"op":11}"#).unwrap();
        assert_eq!((ack.op, ack.s), (11, None));
    }
}
