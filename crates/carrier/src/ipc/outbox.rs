//! The sending side of a connection, without a task hop: a sender appends its frame to the
//! connection's buffer and writes the buffer straight to the socket with a non-blocking write.
//! Only what the socket does not take at once is left to a flusher task, which waits until the
//! socket is writable; while it owns the buffer, senders only append.
//!
//! A sender may also *cork* the outbox: frames are appended but not written until
//! [`Outbox::uncork`], so a batch of frames (the router's replies to everything it read in one
//! turn) goes out in one write. And a sender that knows more frames are coming from other tasks
//! (a request while others are in flight) can [`defer`](Outbox::defer) its frame: the flusher
//! writes it once the tasks ready to run have run, together with what they pushed.
//!
//! The buffer is bounded in bytes: a frame that does not fit is refused with [`Refused::Full`], never
//! waited for, so a peer that stops reading cannot make its sender hold unbounded memory.

use std::sync::{Arc, Mutex, PoisonError};

use bytes::{Buf as _, BufMut as _, BytesMut};
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::Notify;

/// Why a frame was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The buffer is at its limit.
    Full,
    /// The connection is closed.
    Closed,
}

#[derive(Debug)]
struct State {
    buf: BytesMut,
    /// The flusher owns writing until the buffer is empty.
    flushing: bool,
    /// Frames wait for [`Outbox::uncork`].
    corked: bool,
    /// The socket failed or the outbox was dropped.
    closed: bool,
    /// Callers of [`Outbox::flushed`] waiting: only they need to hear that the buffer emptied.
    waiting: usize,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// Set once: at the start, or by [`Outbox::attach`] for a parked outbox.
    socket: std::sync::OnceLock<OwnedWriteHalf>,
    /// Wakes the flusher.
    wake: Notify,
    /// Tells waiters the buffer emptied (or the connection closed).
    drained: Notify,
    limit: usize,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes what the socket takes now; hands the rest to the flusher.
    fn write_through(&self, state: &mut State) {
        let Some(socket) = self.socket.get() else {
            return;
        };
        while !state.buf.is_empty() {
            match socket.try_write(&state.buf) {
                Ok(0) => {
                    state.closed = true;
                    break;
                }
                Ok(n) => state.buf.advance(n),
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                    state.flushing = true;
                    self.wake.notify_one();
                    return;
                }
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => {
                    state.closed = true;
                    break;
                }
            }
        }
        if state.closed {
            state.buf.clear();
        }
        if state.waiting > 0 {
            self.drained.notify_waiters();
        }
    }
}

/// One connection's outgoing frames.
#[derive(Debug)]
pub(crate) struct Outbox {
    shared: Arc<Shared>,
}

impl Outbox {
    /// An outbox over `socket` holding at most `limit` bytes unsent, and the flusher task to
    /// spawn beside it. The socket's write side shuts down once the outbox is dropped and what it
    /// held is written.
    pub fn new(
        socket: OwnedWriteHalf,
        limit: usize,
    ) -> (Self, impl Future<Output = ()> + Send + 'static) {
        let (outbox, flusher) = Self::parked(limit);
        let _ = outbox.shared.socket.set(socket);
        (outbox, flusher)
    }

    /// An outbox with no socket yet: frames are queued (up to `limit` bytes) until
    /// [`attach`](Self::attach) gives it one. A worker that lost its admiral sends into one
    /// while it looks for the next.
    pub fn parked(limit: usize) -> (Self, impl Future<Output = ()> + Send + 'static) {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                buf: BytesMut::new(),
                flushing: false,
                corked: false,
                closed: false,
                waiting: 0,
            }),
            socket: std::sync::OnceLock::new(),
            wake: Notify::new(),
            drained: Notify::new(),
            limit,
        });
        let flusher = flush(shared.clone());
        (Self { shared }, flusher)
    }

    /// Queues one frame (`body` gets its 4-byte length prefix here) and, unless corked or a
    /// flush is under way, writes it through at once.
    pub fn push(&self, body: &[u8]) -> Result<(), Refused> {
        let mut state = self.shared.lock();
        Self::append(&mut state, body, self.shared.limit)?;
        if !state.corked && !state.flushing {
            self.shared.write_through(&mut state);
        }
        Ok(())
    }

    /// Queues one frame for the flusher to write after the tasks ready to run now have had their
    /// turn (they are likely to push frames of their own).
    pub fn defer(&self, body: &[u8]) -> Result<(), Refused> {
        let mut state = self.shared.lock();
        Self::append(&mut state, body, self.shared.limit)?;
        if !state.corked && !state.flushing {
            state.flushing = true;
            self.shared.wake.notify_one();
        }
        Ok(())
    }

    fn append(state: &mut State, body: &[u8], limit: usize) -> Result<(), Refused> {
        if state.closed {
            return Err(Refused::Closed);
        }
        // A frame larger than the limit is still taken into an empty buffer: the frame size
        // limit, not the queue's, bounds a single frame.
        if !state.buf.is_empty() && state.buf.len() + 4 + body.len() > limit {
            return Err(Refused::Full);
        }
        let len = u32::try_from(body.len()).map_err(|_| Refused::Full)?;
        state.buf.reserve(4 + body.len());
        state.buf.put_u32(len);
        state.buf.put_slice(body);
        Ok(())
    }

    /// Gives a parked outbox its socket and writes what it holds, in order. An outbox that
    /// already has one keeps it, and gets the socket back as the error.
    pub fn attach(&self, socket: OwnedWriteHalf) -> Result<(), OwnedWriteHalf> {
        self.shared.socket.set(socket)?;
        let mut state = self.shared.lock();
        if !state.corked && !state.flushing && !state.closed {
            self.shared.write_through(&mut state);
        }
        Ok(())
    }

    /// Frames pushed from now on wait for [`uncork`](Self::uncork).
    pub fn cork(&self) {
        self.shared.lock().corked = true;
    }

    /// Writes what corked frames are waiting, and writes through again from now on.
    pub fn uncork(&self) {
        let mut state = self.shared.lock();
        state.corked = false;
        if !state.flushing && !state.closed {
            self.shared.write_through(&mut state);
        }
    }

    /// Resolves once every frame pushed before the call has been handed to the socket (or the
    /// connection closed).
    pub async fn flushed(&self) {
        loop {
            let drained = self.shared.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            {
                let mut state = self.shared.lock();
                if state.buf.is_empty() || state.closed {
                    return;
                }
                state.waiting += 1;
            }
            // Counted out again however the wait ends (a caller's timeout drops it).
            let _waiting = Waiting(&self.shared);
            drained.await;
        }
    }
}

/// One caller of [`Outbox::flushed`] waiting, until dropped.
struct Waiting<'a>(&'a Shared);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.lock().waiting -= 1;
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.closed = true;
        state.corked = false;
        // The flusher writes out what is left (as a closing writer task would), then ends.
        self.shared.wake.notify_one();
    }
}

/// The flusher: writes whatever the socket did not take at once, as it becomes writable.
async fn flush(shared: Arc<Shared>) {
    loop {
        shared.wake.notified().await;
        // Let the tasks that are ready run first: what they push goes out in the same write.
        tokio::task::yield_now().await;
        loop {
            let finished = {
                let mut state = shared.lock();
                let socket = shared.socket.get();
                if let Some(socket) = socket.filter(|_| !state.buf.is_empty()) {
                    state.flushing = true;
                    match socket.try_write(&state.buf) {
                        Ok(n) if n > 0 => {
                            state.buf.advance(n);
                            false
                        }
                        Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => false,
                        Err(error) if error.kind() == std::io::ErrorKind::Interrupted => false,
                        _ => {
                            state.buf.clear();
                            state.flushing = false;
                            state.closed = true;
                            shared.drained.notify_waiters();
                            return;
                        }
                    }
                } else if socket.is_none() && !state.buf.is_empty() {
                    // Parked: what it holds waits for `attach`, which writes it.
                    state.flushing = false;
                    if state.closed {
                        shared.drained.notify_waiters();
                        return;
                    }
                    true
                } else {
                    state.flushing = false;
                    shared.drained.notify_waiters();
                    if state.closed {
                        return;
                    }
                    true
                }
            };
            if finished {
                break;
            }
            let writable = match shared.socket.get() {
                Some(socket) => socket.writable().await,
                None => Ok(()),
            };
            if writable.is_err() {
                let mut state = shared.lock();
                state.buf.clear();
                state.closed = true;
                shared.drained.notify_waiters();
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt as _;
    use tokio::net::UnixStream;

    use super::*;

    /// An outbox of `limit` bytes over one end of a socket pair, its flusher running; the
    /// other end.
    fn outbox(limit: usize) -> (Outbox, UnixStream) {
        let (ours, peer) = UnixStream::pair().unwrap();
        let (_read, write) = ours.into_split();
        let (outbox, flusher) = Outbox::new(write, limit);
        tokio::spawn(flusher);
        (outbox, peer)
    }

    async fn read_frames(peer: &mut UnixStream, count: usize) -> Vec<Vec<u8>> {
        let mut frames = Vec::new();
        for _ in 0..count {
            let len = peer.read_u32().await.unwrap() as usize;
            let mut body = vec![0; len];
            peer.read_exact(&mut body).await.unwrap();
            frames.push(body);
        }
        frames
    }

    #[tokio::test]
    async fn frames_are_written_through_in_order() {
        let (outbox, mut peer) = outbox(1 << 20);
        outbox.push(b"one").unwrap();
        outbox.cork();
        outbox.push(b"two").unwrap();
        outbox.push(b"three").unwrap();
        outbox.uncork();
        outbox.flushed().await;
        let frames = read_frames(&mut peer, 3).await;
        assert_eq!(frames, [&b"one"[..], b"two", b"three"]);
    }

    #[tokio::test]
    async fn deferred_frames_are_written_by_the_flusher_in_order() {
        let (outbox, mut peer) = outbox(1 << 20);
        outbox.defer(b"one").unwrap();
        outbox.push(b"two").unwrap();
        outbox.defer(b"three").unwrap();
        outbox.flushed().await;
        let frames = read_frames(&mut peer, 3).await;
        assert_eq!(frames, [&b"one"[..], b"two", b"three"]);
    }

    #[tokio::test]
    async fn a_peer_that_stops_reading_fills_the_outbox_and_nothing_is_lost_once_it_reads() {
        let (outbox, mut peer) = outbox(64 * 1024);
        let body = vec![7_u8; 1000];
        let mut queued = 0;
        // The socket's own buffer takes some; then the outbox; then it refuses.
        loop {
            match outbox.push(&body) {
                Ok(()) => queued += 1,
                Err(refused) => {
                    assert_eq!(refused, Refused::Full);
                    break;
                }
            }
            assert!(queued < 100_000, "the outbox never filled");
        }
        let reading = tokio::spawn(async move { read_frames(&mut peer, queued).await });
        outbox.flushed().await;
        let frames = reading.await.unwrap();
        assert_eq!(frames.len(), queued);
        assert!(frames.iter().all(|f| f == &body));
    }

    #[tokio::test]
    async fn a_dropped_outbox_writes_what_it_held_then_closes_the_socket() {
        let (ours, mut peer) = UnixStream::pair().unwrap();
        let (_read, write) = ours.into_split();
        let (outbox, flusher) = Outbox::new(write, 1 << 20);
        let flusher = tokio::spawn(flusher);
        outbox.cork();
        outbox.push(b"last words").unwrap();
        drop(outbox);
        flusher.await.unwrap();
        assert_eq!(read_frames(&mut peer, 1).await, [b"last words".to_vec()]);
        let mut rest = Vec::new();
        assert_eq!(peer.read_to_end(&mut rest).await.unwrap(), 0, "closed");
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_for_the_flush_given_up_is_no_longer_counted() {
        let (outbox, _peer) = outbox(1 << 20);
        outbox.cork();
        outbox.push(b"held").unwrap();
        let wait = tokio::time::timeout(std::time::Duration::from_secs(1), outbox.flushed());
        assert!(wait.await.is_err(), "corked: never flushed");
        assert_eq!(outbox.shared.lock().waiting, 0);
        outbox.uncork();
        outbox.flushed().await;
    }

    #[tokio::test]
    async fn a_closed_peer_is_reported_as_closed() {
        let (outbox, peer) = outbox(1 << 20);
        drop(peer);
        let mut result = Ok(());
        for _ in 0..4 {
            result = outbox.push(b"anyone?");
            if result.is_err() {
                break;
            }
        }
        assert_eq!(result, Err(Refused::Closed));
        outbox.flushed().await;
    }

    #[tokio::test]
    async fn a_parked_outbox_holds_its_frames_until_it_gets_a_socket_then_writes_them_in_order() {
        let (parked, flusher) = Outbox::parked(1 << 20);
        tokio::spawn(flusher);
        parked.push(b"one").unwrap();
        parked.defer(b"two").unwrap();
        tokio::task::yield_now().await;
        let (ours, mut peer) = UnixStream::pair().unwrap();
        let (_read, write) = ours.into_split();
        parked.attach(write).unwrap();
        parked.push(b"three").unwrap();
        parked.flushed().await;
        let frames = read_frames(&mut peer, 3).await;
        assert_eq!(frames, [&b"one"[..], b"two", b"three"]);
        // A second socket is refused: the first stays.
        let (other, _peer) = UnixStream::pair().unwrap();
        assert!(parked.attach(other.into_split().1).is_err());
    }
}
