//! A real `redis-server` for the tests (Debian's package; `.ci/run` installs it): started on a
//! free loopback port with its own empty directory and no persistence (or an append-only file,
//! when a test restarts it), stopped when dropped.

use std::time::Duration;

/// A `redis-server` process of a test's own.
#[derive(Debug)]
pub struct RedisServer {
    child: std::process::Child,
    port: u16,
    dir: std::path::PathBuf,
    /// Persisted in an append-only file, written on every change.
    aof: bool,
}

impl RedisServer {
    /// Starts one and waits (10 s at most) until it answers.
    ///
    /// # Panics
    /// If `redis-server` is not installed or does not come up.
    pub async fn start() -> Self {
        Self::start_new(false).await
    }

    /// Starts one that keeps its data in an append-only file (fsynced on every write), so
    /// [`restart`](Self::restart) brings it back as it was.
    ///
    /// # Panics
    /// As [`start`](Self::start).
    pub async fn start_with_aof() -> Self {
        Self::start_new(true).await
    }

    async fn start_new(aof: bool) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let dir = std::env::temp_dir().join(format!("fleet-redis-{:016x}", fastrand::u64(..)));
        std::fs::create_dir_all(&dir).unwrap();
        Self::start_on(port, dir, aof).await
    }

    /// Starts it again after [`kill`](Self::kill), on the same port and directory: with its
    /// data if it keeps an append-only file, empty if not.
    pub async fn restart(self) -> Self {
        let (port, dir, aof) = (self.port, self.dir.clone(), self.aof);
        let mut this = self;
        let _ = this.child.kill();
        let _ = this.child.wait();
        // Its directory is the new one's: forget it here without removing it.
        this.dir = std::path::PathBuf::new();
        drop(this);
        Self::start_on(port, dir, aof).await
    }

    /// Stops it (as a crash would: no save) and starts it again, empty, on the same port.
    pub async fn restart_empty(mut self) -> Self {
        let _ = std::fs::remove_dir_all(self.dir.join("appendonlydir"));
        self.aof = false;
        self.restart().await
    }

    /// Freezes it (`SIGSTOP`): connections stay open and nothing answers, as with a stalled
    /// server or a long pause of its machine. [`thaw`](Self::thaw) lets it go on.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// Lets a frozen server go on (`SIGCONT`).
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let sent = std::process::Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status();
        assert!(
            sent.is_ok_and(|s| s.success()),
            "kill {signal} redis-server"
        );
    }

    /// Stops it, as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    async fn start_on(port: u16, dir: std::path::PathBuf, aof: bool) -> Self {
        let appendonly: &[&str] = if aof {
            &["--appendonly", "yes", "--appendfsync", "always"]
        } else {
            &["--appendonly", "no"]
        };
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(appendonly)
            .args(["--daemonize", "no"])
            .arg("--dir")
            .arg(&dir)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server runs: install Debian's redis-server (.ci/run does)");
        let server = Self {
            child,
            port,
            dir,
            aof,
        };
        let answered = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if server.ping().await {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        assert!(
            answered.is_ok(),
            "redis-server did not come up on port {port}"
        );
        server
    }

    /// Whether it answers a `PING` now.
    async fn ping(&self) -> bool {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await else {
            return false;
        };
        let mut answer = [0u8; 7];
        stream.write_all(b"PING\r\n").await.is_ok()
            && stream.read_exact(&mut answer).await.is_ok()
            && &answer == b"+PONG\r\n"
    }

    /// How many of `keys` exist now (`EXISTS`); 0 when it does not answer.
    pub async fn exists(&self, keys: &[&str]) -> u64 {
        let mut command = vec!["EXISTS"];
        command.extend_from_slice(keys);
        self.integer(&command).await.unwrap_or(0)
    }

    /// The answer to a command whose answer is an integer (`EXISTS`, `HLEN`), if it answers.
    pub async fn integer(&self, command: &[&str]) -> Option<u64> {
        self.ask(command).await?.strip_prefix(':')?.parse().ok()
    }

    /// The answer to a command whose answer is a string (`GET`, `HGET`), if it has one.
    pub async fn string(&self, command: &[&str]) -> Option<String> {
        let answer = self.ask(command).await?;
        let (_, value) = answer.split_once('\n')?;
        Some(value.trim_end().to_owned())
    }

    /// The first line of the answer to `command` (two for a string), if it answers.
    async fn ask(&self, command: &[&str]) -> Option<String> {
        use std::fmt::Write as _;
        use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .ok()?;
        let mut stream = tokio::io::BufReader::new(stream);
        let mut request = format!("*{}\r\n", command.len());
        for word in command {
            let _ = write!(request, "${}\r\n{word}\r\n", word.len());
        }
        let mut answer = String::new();
        stream.get_mut().write_all(request.as_bytes()).await.ok()?;
        stream.read_line(&mut answer).await.ok()?;
        if answer.starts_with('$') && !answer.starts_with("$-1") {
            stream.read_line(&mut answer).await.ok()?;
        }
        Some(answer.trim_end().to_owned())
    }

    /// Its address.
    #[must_use]
    pub fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Its URL.
    #[must_use]
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !self.dir.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
