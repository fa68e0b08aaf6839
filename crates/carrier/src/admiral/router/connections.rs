//! The connection and process tables, and the one way out to a worker: every frame the router
//! sends goes through [`Connections::send_body`], and every target is found through
//! [`Router::live_conn`]. That is the seam another host's workers would plug in at.
//!
//! Frames go straight into each connection's [`Outbox`]. While the router works through a batch
//! of what it read ([`Connections::begin_batch`] to [`Connections::end_batch`]), the outboxes it
//! writes to are corked, so each connection gets one write per batch however many frames the
//! batch made for it.

use crate::ids::IdMap;

use bytes::Bytes;
use tokio::sync::oneshot;
use tokio::task::AbortHandle;

use super::Router;
use super::inbox::ConnId;
use crate::admiral::lifecycle::{ProcessId, State, WorkerId};
use crate::ipc::frame;
use crate::ipc::outbox::{Outbox, Refused};
use crate::ipc::proto::{Down, Refusal, Target, Topic, Topics};

/// Requests one connection may have unanswered; more are refused as overloaded. A worker's own
/// handle allows [`MAX_IN_FLIGHT`](crate::ipc::client::MAX_IN_FLIGHT), half of this.
pub(crate) const MAX_REQUESTS_PER_CONN: usize = 8192;

#[derive(Debug)]
pub(crate) struct Conn {
    /// Its process and the target it serves, once its hello was admitted.
    pub process: Option<(ProcessId, Target)>,
    outbox: Outbox,
    /// Corked in the current batch.
    corked: bool,
    /// Identify waits it started, ended with it.
    pub identifies: Vec<AbortHandle>,
    /// Its requests not answered yet.
    requests: usize,
    /// The admiral events it subscribed to.
    pub topics: Topics,
}

/// A process's exit code (`None`: killed by a signal).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Exit(pub Option<i32>);

#[derive(Debug, Default)]
pub(crate) struct ProcessInfo {
    pub pid: Option<u32>,
    pub kill: Option<oneshot::Sender<()>>,
    pub conn: Option<ConnId>,
    /// The process exited while its connection still had frames to read.
    pub exited: Option<Exit>,
    /// When it last answered a ping (or said hello).
    pub last_seen: Option<tokio::time::Instant>,
    /// Its key to the REST proxy, revoked when it exits.
    pub rest_key: Option<crate::Secret>,
    /// When it was spawned.
    pub started: Option<tokio::time::Instant>,
    /// Round trip of its last answered ping.
    pub ipc_latency: Option<std::time::Duration>,
    /// The plan generation it runs (a reshard's new generation is one more than the live one).
    pub generation: u32,
    /// The build it said it runs in its hello.
    pub build: String,
}

/// Connections by number and processes by number.
#[derive(Debug)]
pub(crate) struct Connections {
    conns: IdMap<ConnId, Conn>,
    pub processes: IdMap<ProcessId, ProcessInfo>,
    max_frame: usize,
    /// A batch is under way; `corked` lists the connections it wrote to.
    batching: bool,
    corked: Vec<ConnId>,
}

impl Connections {
    /// Empty tables; frames are encoded up to `max_frame` bytes.
    pub fn new(max_frame: usize) -> Self {
        Self {
            conns: IdMap::default(),
            processes: IdMap::default(),
            max_frame,
            batching: false,
            corked: Vec::new(),
        }
    }

    /// A connection was accepted; it serves nobody until its hello is admitted.
    pub fn connected(&mut self, conn: ConnId, outbox: Outbox) {
        let state = Conn {
            process: None,
            outbox,
            corked: false,
            identifies: Vec::new(),
            requests: 0,
            topics: Topics::NONE,
        };
        self.conns.insert(conn, state);
    }

    /// The admitted connections subscribed to `topic`.
    pub fn subscribers(&self, topic: Topic) -> impl Iterator<Item = ConnId> + '_ {
        self.conns
            .iter()
            .filter(move |(_, c)| c.process.is_some() && c.topics.contains(topic))
            .map(|(conn, _)| *conn)
    }

    /// Ties an admitted connection to its process.
    pub fn attach(&mut self, conn: ConnId, process: ProcessId, target: Target) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.process = Some((process, target));
        }
        let info = self.processes.entry(process).or_default();
        info.conn = Some(conn);
        info.last_seen = Some(tokio::time::Instant::now());
    }

    /// Forgets a connection; its state, if it was known.
    pub fn remove(&mut self, conn: ConnId) -> Option<Conn> {
        let state = self.conns.remove(&conn)?;
        if let Some((process, _)) = state.process
            && let Some(info) = self.processes.get_mut(&process)
        {
            info.conn = None;
        }
        Some(state)
    }

    pub fn get_mut(&mut self, conn: ConnId) -> Option<&mut Conn> {
        self.conns.get_mut(&conn)
    }

    /// The process an admitted connection belongs to and the target it serves.
    pub fn admitted(&self, conn: ConnId) -> Option<(ProcessId, Target)> {
        self.conns.get(&conn)?.process.clone()
    }

    /// The process an admitted connection belongs to.
    pub fn process_of(&self, conn: ConnId) -> Option<ProcessId> {
        self.conns.get(&conn)?.process.as_ref().map(|(p, _)| *p)
    }

    /// The connection of a process, if it has one.
    pub fn conn_of(&self, process: ProcessId) -> Option<ConnId> {
        self.processes.get(&process)?.conn
    }

    /// Counts a request from `conn`; `false` when it already has as many unanswered as allowed.
    pub fn begin_request(&mut self, conn: ConnId) -> bool {
        let Some(c) = self.conns.get_mut(&conn) else {
            return false;
        };
        if c.requests >= MAX_REQUESTS_PER_CONN {
            return false;
        }
        c.requests += 1;
        true
    }

    /// One of `conn`'s requests was answered.
    pub fn end_request(&mut self, conn: ConnId) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.requests = c.requests.saturating_sub(1);
        }
    }

    pub fn encode(&self, down: &Down) -> Result<Bytes, Refusal> {
        frame::encode(down, self.max_frame).map_err(|e| Refusal::Invalid(e.to_string()))
    }

    /// Sends a frame, logging what stops it.
    pub fn send(&mut self, conn: ConnId, down: &Down) {
        match self.encode(down) {
            Ok(body) => {
                if let Err(refusal) = self.send_body(conn, &body) {
                    tracing::warn!(target: "fleet::ipc", conn, %refusal, "frame not delivered");
                }
            }
            Err(refusal) => {
                tracing::error!(target: "fleet::ipc", conn, %refusal, "frame not encodable");
            }
        }
    }

    /// Sends a frame to `process`'s connection, if it has one; whether it had.
    pub fn send_to_process(&mut self, process: ProcessId, down: &Down) -> bool {
        let Some(conn) = self.conn_of(process) else {
            return false;
        };
        self.send(conn, down);
        true
    }

    /// Queues an encoded frame on a connection, never waiting: a full outbox is refused as
    /// overloaded.
    pub fn send_body(&mut self, conn: ConnId, body: &[u8]) -> Result<(), Refusal> {
        let Some(c) = self.conns.get_mut(&conn) else {
            return Ok(()); // Gone: its process's exit is handled separately.
        };
        if self.batching && !c.corked {
            c.outbox.cork();
            c.corked = true;
            self.corked.push(conn);
        }
        c.outbox.push(body).map_err(|refused| match refused {
            Refused::Full => {
                let target = c
                    .process
                    .as_ref()
                    .map_or(Target::Admiral, |(_, t)| t.clone());
                Refusal::Overloaded(target)
            }
            Refused::Closed => Refusal::Invalid("connection closing".into()),
        })
    }

    /// Frames sent from now on wait for [`end_batch`](Self::end_batch).
    pub fn begin_batch(&mut self) {
        self.batching = true;
    }

    /// Writes out what the batch queued, one write per connection.
    pub fn end_batch(&mut self) {
        self.batching = false;
        for conn in self.corked.drain(..) {
            if let Some(c) = self.conns.get_mut(&conn) {
                c.corked = false;
                c.outbox.uncork();
            }
        }
    }

    /// Kills a process (once; later calls do nothing).
    pub fn kill(&mut self, process: ProcessId) {
        if let Some(kill) = self.processes.get_mut(&process).and_then(|i| i.kill.take()) {
            let _ = kill.send(());
        }
    }
}

impl Router {
    /// `Ok` if `target` names the admiral or a worker of this fleet.
    pub(super) fn known(&self, target: &Target) -> Result<(), Refusal> {
        let exists = match target {
            Target::Admiral => true,
            Target::Cluster(id) => {
                self.lifecycle.worker(&WorkerId::Cluster(*id)).is_some()
                    // A bot split across hosts: any cluster of the plan, wherever it runs.
                    || (self.config.host_bus.is_some()
                        && self.plan.clusters.iter().any(|c| c.id == *id))
            }
            Target::Service(name) => {
                self.lifecycle
                    .worker(&WorkerId::Service(name.clone()))
                    .is_some()
                    // Run once per bot: on whichever host Redis assigns it to.
                    || self.singletons.is_singleton(name)
            }
        };
        if exists {
            Ok(())
        } else {
            Err(Refusal::UnknownTarget(target.clone()))
        }
    }

    /// The connection serving a worker's traffic now, and its process.
    pub(super) fn live_conn(&self, target: &Target) -> Result<(ConnId, ProcessId), Refusal> {
        self.known(target)?;
        let id = match target {
            Target::Admiral => {
                return Err(Refusal::Invalid("the admiral has no connection".into()));
            }
            Target::Cluster(id) => WorkerId::Cluster(*id),
            Target::Service(name) => WorkerId::Service(name.clone()),
        };
        self.lifecycle
            .live_process(&id)
            .and_then(|p| Some((self.links.conn_of(p)?, p)))
            .ok_or_else(|| Refusal::Unavailable(target.clone()))
    }

    /// Connections of workers that receive broadcasts: the current process of each starting or
    /// live worker.
    pub(super) fn serving_conns(&self) -> impl Iterator<Item = ConnId> + '_ {
        self.lifecycle
            .workers()
            .filter(|w| matches!(w.state, State::Starting | State::Live))
            .filter_map(|w| w.process)
            .filter_map(|p| self.links.conn_of(p))
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt as _;
    use tokio::net::UnixStream;

    use super::*;

    fn connection(links: &mut Connections, conn: ConnId, limit: usize) -> UnixStream {
        let (ours, peer) = UnixStream::pair().unwrap();
        let (_read, write) = ours.into_split();
        let (outbox, flusher) = Outbox::new(write, limit);
        tokio::spawn(flusher);
        links.connected(conn, outbox);
        peer
    }

    #[tokio::test]
    async fn a_connection_may_have_only_so_many_requests_unanswered() {
        let mut links = Connections::new(1024);
        let _peer = connection(&mut links, 1, 1024);
        for _ in 0..MAX_REQUESTS_PER_CONN {
            assert!(links.begin_request(1));
        }
        assert!(!links.begin_request(1));
        links.end_request(1);
        assert!(links.begin_request(1));
        assert!(
            !links.begin_request(2),
            "an unknown connection asks nothing"
        );
    }

    #[tokio::test]
    async fn a_full_outbox_is_refused_as_overloaded_naming_the_worker() {
        let mut links = Connections::new(1024);
        let _peer = connection(&mut links, 1, 64);
        links.attach(1, 5, Target::Cluster(3));
        let ping = Down::Ping { seq: 1 };
        // Corked, nothing reaches the socket: the second frame past the limit is refused.
        links.begin_batch();
        let body = vec![0_u8; 40];
        assert!(links.send_body(1, &body).is_ok());
        assert!(matches!(
            links.send_body(1, &body),
            Err(Refusal::Overloaded(Target::Cluster(3)))
        ));
        links.end_batch();
        assert!(links.send_to_process(5, &ping));
        assert_eq!(links.process_of(1), Some(5));
        assert!(links.remove(1).is_some());
        assert_eq!(links.conn_of(5), None);
        assert!(!links.send_to_process(5, &ping));
    }

    #[tokio::test]
    async fn a_batch_goes_out_in_order_once_it_ends() {
        let mut links = Connections::new(1024);
        let mut peer = connection(&mut links, 1, 1 << 20);
        links.begin_batch();
        for seq in 0..3 {
            links.send(1, &Down::Ping { seq });
        }
        let mut byte = [0_u8; 1];
        let early = peer.try_read(&mut byte);
        assert!(
            matches!(&early, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "nothing is written before the batch ends: {early:?}"
        );
        links.end_batch();
        for seq in 0..3 {
            let len = peer.read_u32().await.unwrap() as usize;
            let mut body = vec![0; len];
            peer.read_exact(&mut body).await.unwrap();
            assert_eq!(frame::decode::<Down>(&body).unwrap(), Down::Ping { seq });
        }
    }
}
