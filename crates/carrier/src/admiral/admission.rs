//! Connections and admission: the IPC listener, each connection's reader task and outbox, and
//! the rules a peer meets before it has proved itself (a small first frame, a hello within
//! [`HELLO_TIMEOUT`], a cap on connections without one: past it the oldest is closed, so idle
//! strangers cannot keep a worker that is just starting from getting in). The router decides who
//! is admitted; a connection's reader reads nothing more until it has.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::AbortHandle;

use super::router::inbox::{CONNECTION_BUFFER, ConnId, Inbox};
use crate::ipc::frame::{FrameError, FrameReader};
use crate::ipc::outbox::Outbox;
use crate::ipc::proto::Up;

/// How long a new connection has to say hello.
pub(crate) const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest frame read before a connection has proved itself (a hello is well under 1 KiB).
pub(crate) const HELLO_MAX_FRAME: usize = 4096;

/// Connections that have not said hello yet, at most; a new one past this closes the oldest.
pub(crate) const MAX_UNPROVEN: usize = 64;

/// How long the listener pauses after a failed accept.
pub(crate) const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// Where the admiral's connections come from: its Unix listener, or a test's fake.
pub(crate) trait Listener: Send + 'static {
    /// The next connection.
    fn accept(&mut self) -> impl Future<Output = std::io::Result<UnixStream>> + Send;
}

impl Listener for UnixListener {
    async fn accept(&mut self) -> std::io::Result<UnixStream> {
        UnixListener::accept(self).await.map(|(stream, _)| stream)
    }
}

/// Accepts worker connections and runs a reader task and an outbox for each, until the router is
/// gone. A failed accept (a brief shortage of file descriptors, say) is logged and retried after
/// [`ACCEPT_RETRY`]; it never ends the listener.
pub(crate) async fn accept(
    mut listener: impl Listener,
    inbox: mpsc::Sender<Inbox>,
    max_frame: usize,
) {
    let mut next_conn: ConnId = 0;
    let unproven = Unproven::default();
    let mut saturated = false;
    loop {
        let stream = match listener.accept().await {
            Ok(stream) => stream,
            Err(error) => {
                tracing::warn!(target: "fleet::ipc", %error, "accepting an IPC connection failed; retrying");
                tokio::time::sleep(ACCEPT_RETRY).await;
                continue;
            }
        };
        if inbox.is_closed() {
            return;
        }
        // Connections that have not said hello yet are capped: a stranger cannot hold the
        // admiral's memory or tasks with idle or half-sent connections. The oldest goes, not the
        // newest: a worker says hello within milliseconds of connecting, an idle stranger never.
        if let Some(oldest) = unproven.evict_past(MAX_UNPROVEN - 1) {
            if !saturated {
                tracing::warn!(target: "fleet::ipc", limit = MAX_UNPROVEN, "too many IPC connections without a hello; closing the oldest");
            }
            saturated = true;
            let error = Some("closed: too many connections without a hello".to_owned());
            let _ = inbox
                .send(Inbox::Closed {
                    conn: oldest,
                    error,
                })
                .await;
        } else {
            saturated = false;
        }
        next_conn += 1;
        connection(next_conn, stream, &unproven, inbox.clone(), max_frame).await;
    }
}

/// The readers of connections that have not said hello yet, oldest first.
#[derive(Debug, Clone, Default)]
struct Unproven(Arc<Mutex<VecDeque<(ConnId, AbortHandle)>>>);

impl Unproven {
    fn with<T>(&self, f: impl FnOnce(&mut VecDeque<(ConnId, AbortHandle)>) -> T) -> T {
        f(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Stops the oldest reader if more than `keep` are waiting; returns its connection.
    fn evict_past(&self, keep: usize) -> Option<ConnId> {
        let (conn, reader) = self.with(|q| (q.len() > keep).then(|| q.pop_front()).flatten())?;
        reader.abort();
        Some(conn)
    }

    fn add(&self, conn: ConnId, reader: AbortHandle) {
        self.with(|q| q.push_back((conn, reader)));
    }

    /// `conn` said hello, or failed to: it no longer counts.
    fn remove(&self, conn: ConnId) {
        self.with(|q| q.retain(|(c, _)| *c != conn));
    }
}

/// Runs one connection: registers its outbox with the router, then reads its hello (small frames
/// only, within [`HELLO_TIMEOUT`]), waits for the router's verdict, and only then reads the
/// worker's frames at full size. A refused connection is closed in both directions at once.
async fn connection(
    conn: ConnId,
    stream: UnixStream,
    unproven: &Unproven,
    inbox: mpsc::Sender<Inbox>,
    max_frame: usize,
) {
    // Who is on the other end, as the kernel says: a returning worker's pid must be its own.
    let peer = stream
        .peer_cred()
        .ok()
        .and_then(|c| c.pid())
        .and_then(|p| u32::try_from(p).ok());
    let (read, write) = stream.into_split();
    let (outbox, flusher) = Outbox::new(write, CONNECTION_BUFFER);
    tokio::spawn(flusher);
    if inbox.send(Inbox::Connected { conn, outbox }).await.is_err() {
        return;
    }
    let waiting = unproven.clone();
    let reader = tokio::spawn(async move {
        let mut reader = FrameReader::new(read, HELLO_MAX_FRAME);
        let verdict = match first_frames(conn, peer, &mut reader, &inbox).await {
            Ok(verdict) => verdict,
            Err(error) => {
                waiting.remove(conn);
                let _ = inbox
                    .send(Inbox::Closed {
                        conn,
                        error: Some(error),
                    })
                    .await;
                return;
            }
        };
        // It said who it is: no longer an idle stranger (a wrong secret is refused by the
        // router).
        waiting.remove(conn);
        let Some(verdict) = verdict else {
            return;
        };
        // Nothing more is read from a peer until the router has admitted it.
        if verdict.await != Ok(true) {
            return;
        }
        reader.set_max_frame(max_frame);
        loop {
            match reader.next::<Up>().await {
                Ok(up) => {
                    if inbox.send(Inbox::Up { conn, up }).await.is_err() {
                        return;
                    }
                }
                Err(error) => {
                    let error = match error {
                        // A peer that went away (killed, or exiting) broke no protocol.
                        FrameError::Closed => None,
                        FrameError::Io(io) if gone(&io) => None,
                        other => Some(format!("malformed frame: {other}")),
                    };
                    let _ = inbox.send(Inbox::Closed { conn, error }).await;
                    return;
                }
            }
        }
    });
    unproven.add(conn, reader.abort_handle());
}

/// The longest nonce a returning worker may send.
const MAX_NONCE: usize = 64;

/// Reads what a connection says before it is admitted, within [`HELLO_TIMEOUT`] all told: a
/// hello, or a returning worker's challenge (answered by the router) and rejoin. Hands it to
/// the router; returns the verdict to wait for (`None`: the router is gone), or why the
/// connection is closed.
async fn first_frames(
    conn: ConnId,
    peer: Option<u32>,
    reader: &mut FrameReader<tokio::net::unix::OwnedReadHalf>,
    inbox: &mpsc::Sender<Inbox>,
) -> Result<Option<oneshot::Receiver<bool>>, String> {
    let deadline = tokio::time::Instant::now() + HELLO_TIMEOUT;
    let mut next = async || match tokio::time::timeout_at(deadline, reader.next::<Up>()).await {
        Ok(Ok(up)) => Ok(up),
        Err(_) => Err("no hello in time".to_owned()),
        Ok(Err(e)) => Err(format!("bad hello: {e}")),
    };
    let (admitted, verdict) = oneshot::channel();
    let said = match next().await? {
        Up::Hello {
            secret,
            process,
            protocol,
            build,
        } => Inbox::Hello {
            conn,
            secret,
            process,
            protocol,
            build,
            admitted,
        },
        Up::Challenge { nonce } if (16..=MAX_NONCE).contains(&nonce.len()) => {
            if inbox.send(Inbox::Challenge { conn, nonce }).await.is_err() {
                return Ok(None);
            }
            match next().await? {
                Up::Rejoin(rejoin) => Inbox::Rejoin {
                    conn,
                    rejoin,
                    peer,
                    admitted,
                },
                _ => return Err("a challenge was not followed by a rejoin".to_owned()),
            }
        }
        Up::Challenge { .. } => return Err("a challenge's nonce must be 16 to 64 bytes".into()),
        _ => return Err("first frame was not a hello".to_owned()),
    };
    Ok(inbox.send(said).await.is_ok().then_some(verdict))
}

/// Whether a read failed because the peer went away rather than because of what it sent.
fn gone(error: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        error.kind(),
        ErrorKind::ConnectionReset
            | ErrorKind::ConnectionAborted
            | ErrorKind::BrokenPipe
            | ErrorKind::UnexpectedEof
    )
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;
    use crate::Secret;
    use crate::ipc::frame;

    /// A listener fed by the test: each item is what one `accept` returns.
    struct Fake(mpsc::UnboundedReceiver<std::io::Result<UnixStream>>);

    impl Listener for Fake {
        async fn accept(&mut self) -> std::io::Result<UnixStream> {
            match self.0.recv().await {
                Some(next) => next,
                None => std::future::pending().await,
            }
        }
    }

    struct Rig {
        connect: mpsc::UnboundedSender<std::io::Result<UnixStream>>,
        inbox: mpsc::Receiver<Inbox>,
    }

    fn rig() -> Rig {
        let (connect, incoming) = mpsc::unbounded_channel();
        let (inbox_tx, inbox) = mpsc::channel(1024);
        tokio::spawn(accept(Fake(incoming), inbox_tx, 1 << 20));
        Rig { connect, inbox }
    }

    impl Rig {
        /// A new connection; returns the peer's end.
        fn dial(&self) -> UnixStream {
            let (ours, theirs) = UnixStream::pair().unwrap();
            self.connect.send(Ok(ours)).unwrap();
            theirs
        }

        async fn next(&mut self) -> Inbox {
            tokio::time::timeout(Duration::from_secs(5), self.inbox.recv())
                .await
                .expect("the listener reports")
                .expect("the listener runs")
        }
    }

    fn framed(up: &Up) -> Vec<u8> {
        let body = frame::encode(up, 1 << 20).unwrap();
        let mut frame = (body.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&body);
        frame
    }

    fn hello_frame() -> Vec<u8> {
        framed(&Up::Hello {
            secret: Secret::new("s"),
            process: 1,
            protocol: crate::ipc::proto::PROTOCOL_VERSION,
            build: "test".into(),
        })
    }

    #[tokio::test]
    async fn a_returning_worker_is_challenged_before_its_rejoin_is_read_and_its_pid_is_known() {
        let mut rig = rig();
        let mut peer = rig.dial();
        assert!(matches!(rig.next().await, Inbox::Connected { .. }));
        let nonce = vec![5u8; 32];
        peer.write_all(&framed(&Up::Challenge {
            nonce: nonce.clone(),
        }))
        .await
        .unwrap();
        let Inbox::Challenge { nonce: got, .. } = rig.next().await else {
            panic!("expected the challenge");
        };
        assert_eq!(got, nonce);
        let rejoin = crate::ipc::proto::Rejoin {
            secret: Secret::new("s"),
            process: 3,
            protocol: crate::ipc::proto::PROTOCOL_VERSION,
            build: "test".into(),
            pid: std::process::id(),
            target: crate::ipc::proto::Target::Cluster(0),
            shards: Some((0, 1, 2)),
            ready: true,
            rest_key: None,
            topics: Vec::new(),
        };
        peer.write_all(&framed(&Up::Rejoin(Box::new(rejoin.clone()))))
            .await
            .unwrap();
        let Inbox::Rejoin {
            rejoin: got, peer, ..
        } = rig.next().await
        else {
            panic!("expected the rejoin");
        };
        assert_eq!(*got, rejoin);
        // The peer of a socket pair is this very process.
        assert_eq!(peer, Some(std::process::id()));
    }

    #[tokio::test]
    async fn a_challenge_needs_a_proper_nonce_and_a_rejoin_after_it() {
        let mut rig = rig();
        let mut short = rig.dial();
        assert!(matches!(rig.next().await, Inbox::Connected { .. }));
        short
            .write_all(&framed(&Up::Challenge { nonce: vec![1; 4] }))
            .await
            .unwrap();
        assert!(
            matches!(rig.next().await, Inbox::Closed { error: Some(e), .. } if e.contains("nonce"))
        );
        let mut hello_after = rig.dial();
        assert!(matches!(rig.next().await, Inbox::Connected { .. }));
        hello_after
            .write_all(&framed(&Up::Challenge { nonce: vec![1; 32] }))
            .await
            .unwrap();
        assert!(matches!(rig.next().await, Inbox::Challenge { .. }));
        hello_after.write_all(&hello_frame()).await.unwrap();
        assert!(
            matches!(rig.next().await, Inbox::Closed { error: Some(e), .. } if e.contains("rejoin"))
        );
    }

    #[tokio::test]
    async fn failed_accepts_are_retried_and_the_listener_goes_on() {
        let mut rig = rig();
        for _ in 0..3 {
            rig.connect
                .send(Err(std::io::Error::from_raw_os_error(24))) // EMFILE
                .unwrap();
        }
        let _peer = rig.dial();
        assert!(matches!(rig.next().await, Inbox::Connected { conn: 1, .. }));
    }

    #[tokio::test]
    async fn a_huge_first_frame_is_refused_without_reading_it() {
        let mut rig = rig();
        let mut peer = rig.dial();
        assert!(matches!(rig.next().await, Inbox::Connected { .. }));
        // A 1 MiB frame is allowed after a hello, but not as the first frame.
        peer.write_all(&(1u32 << 20).to_be_bytes()).await.unwrap();
        match rig.next().await {
            Inbox::Closed {
                error: Some(error), ..
            } => assert!(error.contains("bad hello"), "{error}"),
            other => panic!("expected a closed connection, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn connections_without_a_hello_are_capped() {
        let mut rig = rig();
        let mut idle = Vec::new();
        for _ in 0..MAX_UNPROVEN {
            idle.push(rig.dial());
            assert!(matches!(rig.next().await, Inbox::Connected { .. }));
        }
        // One more closes the oldest: the router hears so, and its peer reads the end.
        let mut newest = rig.dial();
        assert!(matches!(
            rig.next().await,
            Inbox::Closed {
                conn: 1,
                error: Some(_)
            }
        ));
        assert!(matches!(
            rig.next().await,
            Inbox::Connected { conn: 65, .. }
        ));
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), idle[0].read(&mut byte)).await;
        assert_eq!(read.expect("closed promptly").unwrap(), 0);
        // The newest, a worker that is just starting, still gets in.
        newest.write_all(&hello_frame()).await.unwrap();
        let Inbox::Hello { conn, admitted, .. } = rig.next().await else {
            panic!("expected a hello");
        };
        assert_eq!(conn, 65);
        admitted.send(true).unwrap();
        // Once it proved itself, a new connection evicts nobody.
        let _peer = rig.dial();
        assert!(matches!(
            rig.next().await,
            Inbox::Connected { conn: 66, .. }
        ));
    }

    #[tokio::test]
    async fn a_refused_peer_is_not_read_from_again_and_is_closed() {
        let mut rig = rig();
        let mut peer = rig.dial();
        let Inbox::Connected { outbox, .. } = rig.next().await else {
            panic!("expected a connection");
        };
        peer.write_all(&hello_frame()).await.unwrap();
        let Inbox::Hello { admitted, .. } = rig.next().await else {
            panic!("expected a hello");
        };
        // The router refuses: it drops the outbox and says no.
        drop(outbox);
        admitted.send(false).unwrap();
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), peer.read(&mut byte)).await;
        assert_eq!(
            read.expect("closed promptly").unwrap(),
            0,
            "no more to read"
        );
        // Whatever the peer sends now is never read: the socket is gone.
        let junk = vec![0u8; 1 << 16];
        let mut failed = false;
        for _ in 0..64 {
            if peer.write_all(&junk).await.is_err() {
                failed = true;
                break;
            }
        }
        assert!(failed, "writes to a refused connection fail");
        assert!(rig.inbox.try_recv().is_err(), "nothing reached the router");
    }
}
