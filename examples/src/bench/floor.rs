//! The IPC floor: what three processes can do over Unix sockets on this machine at all, in the
//! same run as fleet's figures. A minimal tokio client sends length-prefixed messages of fleet's
//! sizes to a relay process standing where the admiral stands (a plain byte pump: whatever it
//! reads, it forwards in one write), which passes them to a server process that answers each with
//! a message of fleet's reply size. Sequential round trips and 100 in flight, as fleet is
//! measured; fleet's figures are printed as ratios to these.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{UnixListener, UnixStream};

/// Sequential round trips and throughput with some in flight.
#[derive(Debug, Clone, Copy)]
pub struct Figures {
    /// Median sequential round trip.
    pub p50: Duration,
    /// 99th percentile of the same.
    pub p99: Duration,
    /// Round trips per second with `in_flight` at once.
    pub per_second: f64,
}

/// Serves at `path`: answers every `request`-byte frame with a `response`-byte frame, writing
/// all the answers to what one read brought in one write.
pub async fn serve(path: &Path, response: usize) -> Result<()> {
    let listener = UnixListener::bind(path)?;
    println!("ready");
    loop {
        let (mut stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            let mut answer = vec![0u8; 4 + response];
            answer[..4].copy_from_slice(&(response as u32).to_be_bytes());
            let mut buf = vec![0u8; 64 << 10];
            let mut pending = Vec::new();
            let mut out = Vec::new();
            loop {
                let Ok(n) = stream.read(&mut buf).await else {
                    return;
                };
                if n == 0 {
                    return;
                }
                pending.extend_from_slice(&buf[..n]);
                let mut at = 0;
                while pending.len() - at >= 4 {
                    let len = u32::from_be_bytes(pending[at..at + 4].try_into().expect("4 bytes"))
                        as usize;
                    if pending.len() - at < 4 + len {
                        break;
                    }
                    at += 4 + len;
                    out.extend_from_slice(&answer);
                }
                pending.drain(..at);
                if !out.is_empty() {
                    if stream.write_all(&out).await.is_err() {
                        return;
                    }
                    out.clear();
                }
            }
        });
    }
}

/// Relays every connection at `listen` to `upstream`, both ways, byte for byte.
pub async fn relay(listen: &Path, upstream: &Path) -> Result<()> {
    let listener = UnixListener::bind(listen)?;
    println!("ready");
    loop {
        let (client, _) = listener.accept().await?;
        let server = UnixStream::connect(upstream).await?;
        let (mut client_read, mut client_write) = client.into_split();
        let (mut server_read, mut server_write) = server.into_split();
        tokio::spawn(async move { pump(&mut client_read, &mut server_write).await });
        tokio::spawn(async move { pump(&mut server_read, &mut client_write).await });
    }
}

async fn pump(
    from: &mut tokio::net::unix::OwnedReadHalf,
    to: &mut tokio::net::unix::OwnedWriteHalf,
) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if to.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// A server and a relay in processes of their own (this binary in its floor modes).
pub struct Floor {
    _server: tokio::process::Child,
    _relay: tokio::process::Child,
    dir: PathBuf,
    /// Where clients connect: the relay.
    pub relay: PathBuf,
}

impl Drop for Floor {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn spawn_ready(args: &[&std::ffi::OsStr]) -> Result<tokio::process::Child> {
    use tokio::io::AsyncBufReadExt as _;
    let mut child = tokio::process::Command::new(std::env::current_exe()?)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = child.stdout.take().context("floor stdout")?;
    let ready = tokio::io::BufReader::new(stdout)
        .lines()
        .next_line()
        .await?;
    anyhow::ensure!(
        ready.as_deref() == Some("ready"),
        "floor process did not start"
    );
    Ok(child)
}

/// Starts the floor's server (answering `response`-byte frames) and relay.
pub async fn start(response: usize) -> Result<Floor> {
    let dir = std::env::temp_dir().join(format!("fleet-floor-{:016x}", fastrand_u64()));
    std::fs::create_dir(&dir)?;
    let server_path = dir.join("server.sock");
    let relay_path = dir.join("relay.sock");
    let response = response.to_string();
    let server = spawn_ready(&[
        "floor-server".as_ref(),
        server_path.as_os_str(),
        response.as_ref(),
    ])
    .await?;
    let relay = spawn_ready(&[
        "floor-relay".as_ref(),
        relay_path.as_os_str(),
        server_path.as_os_str(),
    ])
    .await?;
    Ok(Floor {
        _server: server,
        _relay: relay,
        dir,
        relay: relay_path,
    })
}

fn fastrand_u64() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ u64::from(std::process::id()) << 32
}

/// Reads one `response`-byte frame.
async fn read_answer(stream: &mut UnixStream, response: usize) -> Result<()> {
    let mut frame = vec![0u8; 4 + response];
    stream.read_exact(&mut frame).await?;
    Ok(())
}

/// The floor's figures: `rounds` sequential round trips of a `request`-byte message, then
/// `total` with `in_flight` at once on one connection (written `in_flight` at a time, as a
/// pipelining client does).
pub async fn measure(
    floor: &Floor,
    request: usize,
    response: usize,
    rounds: usize,
    total: usize,
    in_flight: usize,
) -> Result<Figures> {
    let mut frame = vec![0u8; 4 + request];
    frame[..4].copy_from_slice(&(request as u32).to_be_bytes());
    let mut stream = UnixStream::connect(&floor.relay).await?;
    for _ in 0..rounds / 10 {
        stream.write_all(&frame).await?;
        read_answer(&mut stream, response).await?;
    }
    let mut times = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let sent = Instant::now();
        stream.write_all(&frame).await?;
        read_answer(&mut stream, response).await?;
        times.push(sent.elapsed());
    }
    times.sort_unstable();
    let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];

    // Pipelined: at most `in_flight` outstanding; the writer sends whatever room there is in
    // one write (as fleet batches what its queues hold), the reader frees room per answer.
    let (mut read, mut write) = stream.into_split();
    let room = std::sync::Arc::new(tokio::sync::Semaphore::new(in_flight));
    let started = Instant::now();
    let writer = {
        let room = room.clone();
        tokio::spawn(async move {
            let mut sent = 0;
            while sent < total {
                room.acquire().await?.forget();
                let mut n = 1;
                while n < total - sent
                    && room.try_acquire().is_ok_and(|p| {
                        p.forget();
                        true
                    })
                {
                    n += 1;
                }
                write.write_all(&frame.repeat(n)).await?;
                sent += n;
            }
            anyhow::Ok(())
        })
    };
    let mut answer = vec![0u8; 4 + response];
    for _ in 0..total {
        read.read_exact(&mut answer).await?;
        room.add_permits(1);
    }
    let elapsed = started.elapsed();
    writer.await??;
    let answered = total;
    Ok(Figures {
        p50: at(0.5),
        p99: at(0.99),
        per_second: answered as f64 / elapsed.as_secs_f64(),
    })
}
