//! The clients bot authors use, in JavaScript and Python, against the mock: discord.js 14,
//! discord.py 2, eris 0.16 (API v9, ETF through erlpack, zlib-stream through pako) and a
//! zstd-stream client built on the zstandard package. Each logs in with two shards, fills its
//! caches, handles messages, sends one, and survives a forced resume with nothing lost or doubled,
//! judged by the mock's own report.
//!
//! The clients are installed at pinned versions by `crates/discord-mock/clients/install.sh`
//! (`.ci/run` runs it); without them these tests fail and say so.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use discord_mock::{MockConfig, MockDiscord};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(40);
const TOKEN: &str = "mock-token";

fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("clients")
}

/// One client process and the lines it printed.
struct Client {
    name: &'static str,
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    seen: Arc<Mutex<Vec<String>>>,
}

impl Client {
    fn spawn(name: &'static str, program: &str, script: &str, mock: &MockDiscord) -> Self {
        let mut child = Command::new(program)
            .arg(script)
            .current_dir(clients_dir())
            .env("MOCK_HTTP", mock.http_url())
            .env("MOCK_TOKEN", TOKEN)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("{program} runs: {e}"));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (tx, lines) = mpsc::unbounded_channel();
        let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let log = seen.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = stdout.next_line().await {
                log.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
        let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
        let log = seen.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = stderr.next_line().await {
                log.lock().unwrap().push(format!("stderr: {line}"));
            }
        });
        Self {
            name,
            child,
            lines,
            seen,
        }
    }

    /// The next line that starts with `prefix`, within [`WAIT`]; a line starting `error` fails.
    async fn line(&mut self, prefix: &str) -> String {
        let found = tokio::time::timeout(WAIT, async {
            while let Some(line) = self.lines.recv().await {
                assert!(
                    !line.starts_with("error"),
                    "{} failed: {line}\n{}",
                    self.name,
                    self.transcript()
                );
                if let Some(rest) = line.strip_prefix(prefix) {
                    return Some(rest.trim().to_owned());
                }
            }
            None
        })
        .await;
        match found {
            Ok(Some(rest)) => rest,
            _ => panic!(
                "{} printed no {prefix:?} line within {WAIT:?}\n{}",
                self.name,
                self.transcript()
            ),
        }
    }

    fn transcript(&self) -> String {
        let seen = self.seen.lock().unwrap();
        let start = seen.len().saturating_sub(60);
        seen[start..].join("\n")
    }

    /// Closes its stdin, which asks it to log out, and waits for it to exit.
    async fn stop(mut self) {
        drop(self.child.stdin.take());
        if tokio::time::timeout(WAIT, self.child.wait()).await.is_err() {
            let _ = self.child.kill().await;
            panic!(
                "{} did not exit when asked\n{}",
                self.name,
                self.transcript()
            );
        }
    }
}

fn node_client(name: &'static str, script: &str, mock: &MockDiscord) -> Client {
    assert!(
        clients_dir().join("node_modules/discord.js").exists()
            && clients_dir().join("node_modules/erlpack/build").exists(),
        "the JavaScript clients are not installed: run crates/discord-mock/clients/install.sh (.ci/run does)"
    );
    Client::spawn(name, "node", script, mock)
}

fn python_client(name: &'static str, script: &str, mock: &MockDiscord) -> Client {
    let installed = std::process::Command::new("python3")
        .args(["-c", "import discord, zstandard"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        installed,
        "the Python clients are not installed: run crates/discord-mock/clients/install.sh (.ci/run does)"
    );
    Client::spawn(name, "python3", script, mock)
}

async fn mock() -> MockDiscord {
    MockDiscord::start(
        MockConfig::builder()
            .guilds(4)
            .recommended_shards(2)
            .max_concurrency(2)
            .heartbeat_interval(Duration::from_secs(1))
            .member_add_every(0)
            .build(),
    )
    .await
    .expect("the mock starts")
}

/// Produces two messages per guild and waits until the client printed each, with its content.
async fn messages_are_handled(client: &mut Client, mock: &MockDiscord) {
    let guilds = mock.guild_ids().len();
    let mut expected: Vec<u64> = (0..guilds * 2)
        .map(|n| mock.produce_event(n % guilds))
        .collect();
    while !expected.is_empty() {
        let line = client.line("message").await;
        let (id, content) = line.split_once(' ').unwrap_or((&line, ""));
        let id: u64 = id.parse().expect("a snowflake");
        assert!(
            content.starts_with("event "),
            "{}: content {content:?} (MESSAGE_CONTENT was asked for)",
            client.name
        );
        expected.retain(|e| *e != id);
    }
}

/// What every client goes through; `members` is how many members its caches must hold at READY.
async fn exercise(mut client: Client, mock: &MockDiscord, members: usize) {
    let ready = client.line("ready").await;
    let counts: Vec<usize> = ready.split(' ').map(|n| n.parse().unwrap()).collect();
    let guilds = mock.guild_ids().len();
    let text_channels = guilds * mock.config().channels_per_guild;
    assert_eq!(
        counts,
        vec![2, guilds, text_channels, members],
        "{}: shards, guilds, text channels and members cached at READY",
        client.name
    );
    let sent: u64 = client.line("sent").await.parse().unwrap();
    assert!(sent > 0);
    assert_eq!(mock.stats().messages_created, 1, "{}", client.name);

    messages_are_handled(&mut client, mock).await;
    // A forced resume: op 7 on shard 0.
    assert_eq!(mock.reconnect_shard(0), 1);
    assert_eq!(client.line("resumed").await, "0");
    messages_are_handled(&mut client, mock).await;

    let produced = mock.event_report().produced;
    let confirmed = mock
        .wait_until(WAIT, "every event confirmed", |m| {
            let r = m.event_report();
            r.delivered == produced && r.in_flight == 0
        })
        .await;
    let report = mock.event_report();
    assert!(confirmed.is_ok(), "{}: {report:?}", client.name);
    assert_eq!(
        (report.lost, report.duplicates, report.no_session),
        (0, 0, 0),
        "{}: {report:?}",
        client.name
    );
    let stats = mock.stats();
    assert_eq!((stats.identifies, stats.resumes), (2, 1), "{}", client.name);
    assert_eq!(stats.total_violations(), 0, "{}: {stats:?}", client.name);
    client.stop().await;
}

fn all_members(mock: &MockDiscord) -> usize {
    let ids = mock.guild_ids();
    ids.iter()
        .map(|g| mock.guild(*g).unwrap().members.len())
        .sum()
}

#[tokio::test]
async fn discord_js_logs_in_handles_sends_and_resumes() {
    let mock = mock().await;
    let client = node_client("discord.js", "discordjs.js", &mock);
    let members = all_members(&mock);
    exercise(client, &mock, members).await;
}

#[tokio::test]
async fn discord_py_logs_in_handles_sends_and_resumes() {
    let mock = mock().await;
    let client = python_client("discord.py", "discordpy.py", &mock);
    let members = all_members(&mock);
    exercise(client, &mock, members).await;
}

#[tokio::test]
async fn eris_speaks_v9_etf_and_zlib_stream() {
    let mock = mock().await;
    let mut client = node_client("eris", "eris.js", &mock);
    let wire = client.line("wire").await;
    assert!(
        wire.contains("v=9")
            && wire.contains("encoding=etf")
            && wire.contains("compress=zlib-stream"),
        "eris asked for {wire}"
    );
    let members = all_members(&mock);
    exercise(client, &mock, members).await;
}

#[tokio::test]
async fn a_zstd_stream_client_decodes_every_frame() {
    let mock = mock().await;
    let client = python_client("zstd-stream", "zstd_stream.py", &mock);
    let members = all_members(&mock);
    exercise(client, &mock, members).await;
}
