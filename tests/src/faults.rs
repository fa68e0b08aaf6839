//! A TCP fault proxy for the tests: it stands between a client (an admiral) and a server
//! (Redis, discord-mock) on loopback and, on the test's word, passes the bytes on, holds them
//! back (a blackhole: the connections stay open, nothing arrives either way, as behind a
//! partition), delays them, or resets every connection. No privileges needed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does with the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Passes them on.
    Pass,
    /// Holds them back, as a partition does: connections stay open (and new ones are accepted)
    /// but nothing arrives either way; once the fault ends, what was held arrives (as TCP
    /// retransmits it), unless it ends in a reset.
    Blackhole,
    /// Passes them on this long late.
    Delay(Duration),
    /// Closes every connection, and each new one at once.
    Reset,
}

/// A proxy to one server; dropped, it stops and closes every connection.
#[derive(Debug)]
pub struct FaultProxy {
    port: u16,
    fault: watch::Sender<Fault>,
    task: tokio::task::JoinHandle<()>,
    held: Arc<AtomicU64>,
}

impl FaultProxy {
    /// A proxy on a free loopback port to `upstream` (`127.0.0.1:port`), passing bytes on.
    ///
    /// # Panics
    /// If no loopback port is free.
    pub async fn start(upstream: std::net::SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a free port");
        let port = listener.local_addr().expect("bound").port();
        let (fault, watching) = watch::channel(Fault::Pass);
        let held = Arc::new(AtomicU64::new(0));
        let counted = held.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let fault = watching.clone();
                let counted = counted.clone();
                tokio::spawn(async move {
                    if *fault.borrow() == Fault::Reset {
                        return;
                    }
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    tokio::select! {
                        () = pump(client_read, server_write, fault.clone(), counted.clone()) => {}
                        () = pump(server_read, client_write, fault, counted) => {}
                    }
                });
            }
        });
        Self {
            port,
            fault,
            task,
            held,
        }
    }

    /// Sets what it does from now on.
    pub fn set(&self, fault: Fault) {
        self.fault.send_replace(fault);
    }

    /// Its address, for the client.
    #[must_use]
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Bytes it held back so far.
    #[must_use]
    pub fn held(&self) -> u64 {
        self.held.load(Ordering::Relaxed)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
        self.fault.send_replace(Fault::Reset);
    }
}

/// Copies one direction until either side closes or a reset.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut fault: watch::Receiver<Fault>,
    held: Arc<AtomicU64>,
) {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let read = tokio::select! {
            read = from.read(&mut buffer) => read,
            _ = fault.wait_for(|f| *f == Fault::Reset) => return,
        };
        let n = match read {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let now = *fault.borrow();
        match now {
            Fault::Pass => {}
            Fault::Blackhole => {
                held.fetch_add(n as u64, Ordering::Relaxed);
                let after = fault.wait_for(|f| *f != Fault::Blackhole).await.map(|f| *f);
                match after {
                    Ok(Fault::Delay(by)) => tokio::time::sleep(by).await,
                    Ok(Fault::Pass) => {}
                    _ => return,
                }
            }
            Fault::Delay(by) => tokio::time::sleep(by).await,
            Fault::Reset => return,
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}
