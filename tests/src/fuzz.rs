//! Fuzzing of everything that decodes input from another process: IPC frames and messages (both
//! directions, and a raw byte stream through the frame reader), discord-mock's gateway frames
//! and REST requests, and the REST proxy's request handling over real HTTP.
//!
//! Inputs are valid seeds (real encoded messages, real requests) with a few random mutations
//! each: bit flips, bytes set to values that decoders treat specially, inserts, deletes,
//! truncations and repeats. A [`proptest`] runner generates them from a seed and, when a check
//! fails, shrinks the mutations to a minimal failing input. A check fails when decoding panics,
//! or when what was decoded breaks a property (a re-encoded message decodes differently, a frame
//! exceeds the size limit, the mock sends a close code no peer may receive, the proxy does not
//! answer in time).
//!
//! The CI test (`tests/fuzz.rs`) runs each target a bounded number of times; `cargo xtask fuzz`
//! runs millions and prints inputs per second.

use std::time::{Duration, Instant};

use carrier::ipc::frame;
use carrier::ipc::proto::{
    Assignment, ClusterAssignment, Down, Fetch, Group, LogLevel, LogRecord, Outcome, Payload,
    Reply, Request, RestartMode, ShardEvent, ShardSession, Status, StoreRequest, Target, Topic, Up,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner};

/// One mutation of a seed.
#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Set(usize, u8),
    Special(usize, usize),
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
    Truncate(usize),
    Repeat(usize, usize, u8),
}

/// Bytes decoders treat specially: `MessagePack` markers (never-used `0xc1`, the 16- and
/// 32-bit array, map, string and binary headers, 64-bit integers), ASCII structure (`{`, `"`,
/// `\`, `:`), and the edges of a byte.
const SPECIAL: [u8; 20] = [
    0x00, 0x01, 0x7f, 0x80, 0xff, 0xc0, 0xc1, 0xc4, 0xcf, 0xd3, 0xd9, 0xdb, 0xdc, 0xdd, 0xde, 0xdf,
    b'{', b'"', b'\\', b':',
];

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Mutation::Flip(at, bit)),
        (any::<usize>(), any::<u8>()).prop_map(|(at, b)| Mutation::Set(at, b)),
        (any::<usize>(), 0..SPECIAL.len()).prop_map(|(at, i)| Mutation::Special(at, i)),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(at, bytes)| Mutation::Insert(at, bytes)),
        (any::<usize>(), 1usize..16).prop_map(|(at, len)| Mutation::Delete(at, len)),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), 1usize..8, 1u8..64).prop_map(|(at, len, n)| Mutation::Repeat(at, len, n)),
    ]
}

fn apply(seed: &[u8], mutations: &[Mutation]) -> Vec<u8> {
    let mut bytes = seed.to_vec();
    for mutation in mutations {
        let len = bytes.len();
        let at = |i: usize| if len == 0 { 0 } else { i % len };
        match mutation {
            Mutation::Flip(i, bit) if len > 0 => bytes[at(*i)] ^= 1 << bit,
            Mutation::Set(i, b) if len > 0 => bytes[at(*i)] = *b,
            Mutation::Special(i, s) if len > 0 => bytes[at(*i)] = SPECIAL[*s],
            Mutation::Insert(i, new) => {
                let at = if len == 0 { 0 } else { i % (len + 1) };
                bytes.splice(at..at, new.iter().copied());
            }
            Mutation::Delete(i, n) if len > 0 => {
                let start = at(*i);
                bytes.drain(start..(start + n).min(len));
            }
            Mutation::Truncate(i) => bytes.truncate(if len == 0 { 0 } else { i % len }),
            Mutation::Repeat(i, n, times) if len > 0 => {
                let start = at(*i);
                let piece: Vec<u8> = bytes[start..(start + n).min(len)].to_vec();
                let repeated = piece.repeat(usize::from(*times));
                bytes.splice(start..start, repeated);
            }
            _ => {}
        }
    }
    bytes
}

/// Mutated seeds.
fn inputs(seeds: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    let count = seeds.len();
    (0..count, prop::collection::vec(mutation(), 0..6))
        .prop_map(move |(seed, mutations)| apply(&seeds[seed], &mutations))
}

/// What one fuzz target run found.
#[derive(Debug, Clone)]
pub struct FuzzReport {
    /// The target.
    pub target: &'static str,
    /// Inputs tried (shrinking included).
    pub inputs: u64,
    /// Of those, inputs taken as valid (decoded, answered with a success): mutations that got
    /// past the first checks and into the code behind them.
    pub accepted: u64,
    /// How long it took.
    pub elapsed: Duration,
    /// The failure, if any: why, and the minimised input.
    pub failure: Option<(String, Vec<u8>)>,
}

impl FuzzReport {
    /// Inputs per second.
    #[must_use]
    pub fn rate(&self) -> f64 {
        self.inputs as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

impl std::fmt::Display for FuzzReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} inputs ({} taken as valid) in {:.2?} ({:.0} inputs/s)",
            self.target,
            self.inputs,
            self.accepted,
            self.elapsed,
            self.rate()
        )?;
        match &self.failure {
            None => write!(f, ", no failure"),
            Some((why, input)) => write!(
                f,
                "\n  FAILED: {why}\n  minimised input ({} bytes): {}\n  as text: {:?}",
                input.len(),
                hex(input),
                String::from_utf8_lossy(input)
            ),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// A check of one input: whether the input was taken as valid (decoded, answered with a
/// success), or `Err` with what broke.
type Check<'a> = dyn FnMut(&[u8]) -> Result<bool, String> + 'a;

/// Runs `check` on `cases` mutated seeds (deterministic for a `seed`), shrinking a failure.
fn fuzz(
    target: &'static str,
    seeds: Vec<Vec<u8>>,
    cases: u32,
    seed: u64,
    check: &mut Check<'_>,
) -> FuzzReport {
    let config = Config {
        cases,
        failure_persistence: None,
        max_shrink_iters: 20_000,
        ..Config::default()
    };
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    let mut runner =
        TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &key));
    let counted = std::cell::Cell::new(0u64);
    let accepted = std::cell::Cell::new(0u64);
    let check = std::cell::RefCell::new(check);
    let started = Instant::now();
    let outcome = runner.run(&inputs(seeds), |input| {
        counted.set(counted.get() + 1);
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            (check.borrow_mut())(&input)
        }));
        match result {
            Ok(Ok(valid)) => {
                accepted.set(accepted.get() + u64::from(valid));
                Ok(())
            }
            Ok(Err(why)) => Err(TestCaseError::fail(why)),
            Err(payload) => {
                let message = payload
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                Err(TestCaseError::fail(format!("panicked: {message}")))
            }
        }
    });
    let failure = match outcome {
        Ok(()) => None,
        Err(TestError::Fail(why, input)) => Some((why.to_string(), input)),
        Err(TestError::Abort(why)) => Some((format!("aborted: {why}"), Vec::new())),
    };
    FuzzReport {
        target,
        inputs: counted.get(),
        accepted: accepted.get(),
        elapsed: started.elapsed(),
        failure,
    }
}

/// Runs `f` with the panic hook silenced (a fuzzer's failing inputs would print a trace each).
fn quietly<T>(f: impl FnOnce() -> T) -> T {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = f();
    std::panic::set_hook(hook);
    result
}

fn encoded<T: serde::Serialize>(values: &[T]) -> Vec<Vec<u8>> {
    values
        .iter()
        .map(|v| {
            frame::encode(v, frame::DEFAULT_MAX_FRAME)
                .expect("seeds encode")
                .to_vec()
        })
        .collect()
}

fn up_seeds() -> Vec<Vec<u8>> {
    let payload = || Payload::from("ping");
    let request = |request| Up::Request {
        id: 7,
        timeout_ms: 5000,
        request,
    };
    encoded(&[
        Up::Hello {
            secret: carrier::Secret::new("0123456789abcdef"),
            process: 3,
            protocol: carrier::ipc::proto::PROTOCOL_VERSION,
            build: "test".into(),
        },
        request(Request::Broadcast {
            event: "hello".into(),
            payload: payload(),
        }),
        request(Request::SendTo {
            target: Target::Cluster(1),
            event: "e".into(),
            payload: payload(),
        }),
        request(Request::Command {
            target: Target::Service("echo".into()),
            payload: payload(),
        }),
        request(Request::CommandAll {
            group: Group::Clusters,
            payload: payload(),
        }),
        request(Request::Store(StoreRequest::Set("key".into(), payload()))),
        request(Request::Store(StoreRequest::Get("key".into()))),
        request(Request::Identify { shard: 2 }),
        request(Request::Fetch(Fetch::Member { guild: 1, user: 2 })),
        request(Request::Restart {
            worker: Target::Cluster(0),
            mode: RestartMode::Handover,
        }),
        request(Request::Reshard {
            count: carrier::admiral::ShardCount::Exact(8),
            clusters: Some(2),
        }),
        request(Request::RestartAll {
            group: Group::Services,
            mode: RestartMode::Overlap,
            at_once: 2,
        }),
        request(Request::Stats { deadline_ms: 300 }),
        request(Request::Workers),
        request(Request::Store(StoreRequest::CompareAndSet {
            key: "k".into(),
            expected: None,
            value: Some(payload()),
        })),
        request(Request::Store(StoreRequest::SetFor(
            "t".into(),
            payload(),
            u64::MAX,
        ))),
        request(Request::Store(StoreRequest::Entries(String::new()))),
        request(Request::CommandGuild {
            guild: u64::MAX,
            payload: payload(),
        }),
        request(Request::Subscribe {
            topics: vec![Topic::Lifecycle, Topic::Shards, Topic::Stats, Topic::Shards],
        }),
        request(Request::Deploy(Box::new(
            carrier::DeployPlan::new("/nonexistent/build")
                .env("A", "b")
                .canary_bake(std::time::Duration::from_secs(1))
                .dry_run(),
        ))),
        request(Request::CreateService {
            name: "fuzzed".into(),
            kind: "no-such-kind".into(),
            depends_on: vec!["echo".into(); 3],
            start_timeout_ms: Some(u64::MAX),
        }),
        Up::Reply {
            id: 9,
            outcome: Outcome::Ok(payload()),
        },
        Up::Status(Status::Shard {
            shard: 1,
            event: ShardEvent::Disconnected(Some(4000)),
        }),
        Up::Status(Status::StartFailed("why".into())),
        Up::Sessions(vec![ShardSession {
            shard: 0,
            session_id: "abc".into(),
            sequence: 42,
            resume_url: Some("ws://127.0.0.1:1".into()),
            state: Payload::from("library state"),
        }]),
        Up::Checkpoint(vec![ShardSession {
            shard: 2,
            session_id: "abc".into(),
            sequence: 7,
            resume_url: None,
            state: Payload::empty(),
        }]),
        Up::Pong { seq: 3 },
        Up::Log(LogRecord {
            level: LogLevel::Warn,
            message: "text".into(),
        }),
    ])
}

fn down_seeds() -> Vec<Vec<u8>> {
    encoded(&[
        Down::Welcome(Assignment::Cluster(ClusterAssignment {
            id: 1,
            first_shard: 2,
            last_shard: 3,
            shard_total: 4,
            max_concurrency: 1,
            token: "t".into(),
            gateway_url: "ws://127.0.0.1:1".into(),
            handover: true,
            standby: false,
            rest_url: "http://127.0.0.1:2".into(),
            rest_proxied: true,
            rest_key: Some(carrier::Secret::new("k")),
            topology: carrier::ipc::proto::Topology::new(4, vec![(0, 0, 1), (1, 2, 3)], 9, 1),
            data: Payload::from("settings"),
            resume: vec![ShardSession::new(2, "s".into(), None)],
            checkpoint_ms: 1000,
            licence_ms: None,
        })),
        Down::Event(carrier::AdmiralEvent::Shard {
            cluster: 1,
            shard: 3,
            process: 7,
            generation: 2,
            event: ShardEvent::Disconnected(Some(4009)),
        }),
        Down::Welcome(Assignment::Service {
            name: "echo-2".into(),
            kind: "echo".into(),
        }),
        Down::Reply {
            id: 1,
            reply: Reply::Outcomes(vec![
                (Target::Cluster(0), Outcome::TimedOut),
                (Target::Service("a".into()), Outcome::Unavailable),
            ]),
        },
        Down::Command {
            id: 2,
            from: Target::Admiral,
            payload: Payload::from("x"),
            timeout_ms: 100,
        },
        Down::Message {
            from: Target::Cluster(3),
            event: "e".into(),
            payload: Payload::empty(),
        },
        Down::Fetch {
            id: 3,
            query: Fetch::Guild(5),
        },
        Down::HandOver,
        Down::CountGuilds { id: 6 },
        Down::Stats { id: 7 },
        Down::Ping { seq: 4 },
        Down::Shutdown { grace_ms: 1000 },
    ])
}

/// Decoding is total and stable: any bytes decode or fail cleanly, and what decodes re-encodes
/// to bytes that decode to the same message.
fn round_trip<T>(bytes: &[u8]) -> Result<bool, String>
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let Ok(decoded) = frame::decode::<T>(bytes) else {
        return Ok(false);
    };
    let again = frame::encode(&decoded, usize::MAX).map_err(|e| e.to_string())?;
    let twice = frame::decode::<T>(&again).map_err(|e| format!("re-encoded form fails: {e}"))?;
    if twice == decoded {
        Ok(true)
    } else {
        Err(format!("{decoded:?} re-encoded decodes as {twice:?}"))
    }
}

/// A byte stream through the frame reader: frames over the limit are refused, none is returned.
fn stream(runtime: &tokio::runtime::Runtime, bytes: &[u8]) -> Result<bool, String> {
    const MAX: usize = 512;
    runtime.block_on(async {
        let mut reader = frame::FrameReader::new(bytes, MAX);
        let mut frames = 0;
        for _ in 0..=bytes.len() {
            match reader.next::<Up>().await {
                Ok(up) => {
                    let size = frame::encode(&up, usize::MAX).map_or(0, |b| b.len());
                    if size > 4 * MAX {
                        return Err(format!(
                            "a {size}-byte message came through a {MAX}-byte reader"
                        ));
                    }
                    frames += 1;
                }
                Err(_) => return Ok(frames > 0),
            }
        }
        Err("the reader returned more frames than there were bytes".to_owned())
    })
}

fn frame_seeds() -> Vec<Vec<u8>> {
    up_seeds()
        .into_iter()
        .take(6)
        .map(|body| {
            let mut framed = (body.len() as u32).to_be_bytes().to_vec();
            framed.extend_from_slice(&body);
            framed.extend_from_slice(&framed.clone());
            framed
        })
        .collect()
}

fn gateway_seeds() -> Vec<Vec<u8>> {
    [
        r#"{"op":1,"d":2}"#,
        r#"{"op":1,"d":null}"#,
        r#"{"op":2,"d":{"token":"Bot mock-token","intents":513,"properties":{"os":"linux","browser":"x","device":"x"},"shard":[0,1]}}"#,
        r#"{"op":6,"d":{"token":"mock-token","session_id":"00000000000000000000000000000000","seq":1}}"#,
        r#"{"op":3,"d":{"since":null,"activities":[],"status":"online","afk":false}}"#,
        r#"{"op":8,"d":{"guild_id":"1","query":"","limit":0}}"#,
        r#"{"op":4,"d":{"guild_id":"1","channel_id":null,"self_mute":false,"self_deaf":false}}"#,
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}

/// A fresh mock gateway with one identified connection.
fn identified_gateway() -> (discord_mock::gateway::Gateway, u64) {
    use discord_mock::gateway::Gateway;
    let config = discord_mock::MockConfig::builder().guilds(2).build();
    let mut gateway = Gateway::new(config, "ws://127.0.0.1:1".into());
    let mut out = Vec::new();
    let conn = gateway.open(Duration::ZERO, Some("v=10&encoding=json"), &mut out);
    let identify = String::from_utf8(gateway_seeds()[2].clone()).expect("UTF-8 seed");
    gateway.receive_text(conn, Duration::from_millis(10), &identify, &mut out);
    (gateway, conn)
}

/// Whatever a client sends, identified or not, the mock only ever answers with frames a client
/// can receive. Each input runs against a copy of `template` (one identified connection).
fn gateway_frame(
    template: &(discord_mock::gateway::Gateway, u64),
    bytes: &[u8],
) -> Result<bool, String> {
    use discord_mock::gateway::{Action, sendable_close_code};
    let text = String::from_utf8_lossy(bytes);
    let mut out = Vec::new();
    let (mut gateway, identified) = (template.0.clone(), template.1);
    gateway.receive_text(identified, Duration::from_millis(20), &text, &mut out);
    let kept = !out
        .iter()
        .any(|a| matches!(a, Action::Close { conn, .. } if *conn == identified));
    let fresh = gateway.open(Duration::from_millis(30), Some("v=10"), &mut out);
    gateway.receive_text(fresh, Duration::from_millis(40), &text, &mut out);
    gateway.tick(Duration::from_secs(1), &mut out);
    for action in &out {
        match action {
            Action::Close { code, .. } if !sendable_close_code(*code) => {
                return Err(format!("the mock closed with {code}"));
            }
            Action::Send { text, .. }
                if serde_json::from_str::<serde_json::Value>(text).is_err() =>
            {
                return Err(format!("the mock sent invalid JSON: {text}"));
            }
            _ => {}
        }
    }
    Ok(kept)
}

fn rest_seeds() -> Vec<Vec<u8>> {
    [
        "GET /gateway/bot\n",
        "GET /users/@me\n",
        "GET /guilds/4194304\n",
        "GET /guilds/4194304/members/4194305\n",
        "GET /channels/4194306\n",
        "POST /channels/4194306/messages\n{\"content\":\"hi\"}",
        "POST /channels/4194306/messages\n{\"content\":\"\",\"embeds\":[{\"title\":\"t\"}]}",
        "GET /applications/@me\n",
        "GET /guilds/4194304/members?limit=5&after=4194305\n",
        "GET /users/@me/guilds?limit=2\n",
        "GET /guilds/4194304/channels\n",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}

/// Whatever a request says, the mock's REST core answers with a real status and a JSON body.
fn rest_request(
    gateway: &mut discord_mock::gateway::Gateway,
    limiter: &mut discord_mock::rest::RestLimiter,
    bytes: &[u8],
) -> Result<bool, String> {
    let text = String::from_utf8_lossy(bytes);
    let (head, body) = text.split_once('\n').unwrap_or((&text, ""));
    let (method, path) = head.split_once(' ').unwrap_or((head, "/"));
    let response = discord_mock::rest::handle(
        gateway,
        limiter,
        Duration::from_secs(1),
        1.0e9,
        "ws://127.0.0.1:1",
        discord_mock::rest::Request {
            method,
            path: path.split_once('?').map_or(path, |(p, _)| p),
            query: path.split_once('?').map(|(_, q)| q),
            authorization: Some("Bot mock-token"),
            body: body.as_bytes(),
        },
    );
    if !(100..600).contains(&response.status) {
        return Err(format!("status {}", response.status));
    }
    Ok(response.status < 400)
}

fn proxy_seeds(key: &str) -> Vec<Vec<u8>> {
    let key = format!("{}: {key}\r\n", carrier::rest::KEY_HEADER);
    [
        format!("GET /api/v10/users/@me HTTP/1.1\r\nhost: x\r\n{key}connection: close\r\n\r\n"),
        format!(
            "POST /api/v10/channels/4194306/messages HTTP/1.1\r\nhost: x\r\n{key}content-type: application/json\r\ncontent-length: 16\r\nconnection: close\r\n\r\n{{\"content\":\"hi\"}}"
        ),
        format!("DELETE /api/v9/guilds/1/members/2?reason=x HTTP/1.1\r\nhost: x\r\n{key}authorization: Bot other\r\nconnection: close\r\n\r\n"),
        format!("GET /_fleet/stats HTTP/1.1\r\nhost: x\r\n{key}connection: close\r\n\r\n"),
        format!("PATCH /api/v10/ HTTP/1.1\r\nhost: x\r\n{key}transfer-encoding: chunked\r\nconnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
    ]
    .into_iter()
    .map(String::into_bytes)
    .collect()
}

/// Sends raw request bytes to the proxy: it must answer or close within `deadline`.
async fn proxy_request(addr: &str, bytes: &[u8], deadline: Duration) -> Result<bool, String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("the proxy is gone: {e}"))?;
    let _ = stream.write_all(bytes).await;
    let _ = stream.shutdown().await;
    let mut sink = Vec::new();
    match tokio::time::timeout(deadline, stream.read_to_end(&mut sink)).await {
        Ok(_) => Ok(sink.starts_with(b"HTTP/1.1 2")),
        Err(_) => Err(format!("no answer within {deadline:?}")),
    }
}

/// How many inputs each target gets, and the schedule's seed.
#[derive(Debug, Clone, Copy)]
pub struct FuzzPlan {
    /// Inputs for each decoder of IPC and discord-mock input.
    pub decoder_inputs: u32,
    /// Inputs for the REST proxy (each is an HTTP request over loopback).
    pub proxy_inputs: u32,
    /// The seed.
    pub seed: u64,
}

/// Runs every target; a report per target. Call it outside any async runtime (it runs its own).
///
/// # Panics
/// If the proxy's upstream mock or the proxy cannot start.
pub fn run(plan: FuzzPlan) -> Vec<FuzzReport> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let n = plan.decoder_inputs;
    let mut reports = quietly(|| {
        let mut reports = vec![
            fuzz(
                "ipc: Up (worker → admiral)",
                up_seeds(),
                n,
                plan.seed,
                &mut round_trip::<Up>,
            ),
            fuzz(
                "ipc: Down (admiral → worker)",
                down_seeds(),
                n,
                plan.seed,
                &mut round_trip::<Down>,
            ),
            fuzz("ipc: frame stream", frame_seeds(), n, plan.seed, &mut |b| {
                stream(&runtime, b)
            }),
        ];
        let template = identified_gateway();
        reports.push(fuzz(
            "discord-mock: gateway frames",
            gateway_seeds(),
            n,
            plan.seed,
            &mut |b| gateway_frame(&template, b),
        ));
        let (mut gateway, _) = identified_gateway();
        let mut limiter = discord_mock::rest::RestLimiter::new(discord_mock::RouteLimit {
            limit: u32::MAX,
            window: Duration::from_secs(1),
        });
        reports.push(fuzz(
            "discord-mock: REST requests",
            rest_seeds(),
            n,
            plan.seed,
            &mut |b| rest_request(&mut gateway, &mut limiter, b),
        ));
        reports
    });
    reports.push(fuzz_proxy(plan));
    reports
}

/// The REST proxy in front of a mock, fed mutated HTTP requests; afterwards it still serves.
fn fuzz_proxy(plan: FuzzPlan) -> FuzzReport {
    let servers = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let (mock, proxy) = servers.block_on(async {
        // Limits wide open on both sides: the run measures request handling, not waiting for
        // rate-limit permits.
        let open = discord_mock::RouteLimit {
            limit: 60_000,
            window: Duration::from_secs(1),
        };
        let mock = discord_mock::MockDiscord::start(
            discord_mock::MockConfig::builder()
                .guilds(1)
                .global_limit(open)
                .route_limit(open)
                .message_limit(open)
                .build(),
        )
        .await
        .expect("the mock starts");
        let mut config = carrier::rest::ProxyConfig::new(mock.http_url(), "mock-token");
        config.request_timeout = Duration::from_secs(2);
        config.global_limit = u16::MAX;
        let proxy = carrier::rest::RestProxy::start(config)
            .await
            .expect("the proxy starts");
        (mock, proxy)
    });
    let key = proxy.admit("fuzz");
    let addr = proxy.url().trim_start_matches("http://").to_owned();
    let seeds = proxy_seeds(key.expose());
    let valid = seeds[0].clone();
    let deadline = Duration::from_secs(5);
    let report = fuzz(
        "REST proxy: HTTP requests",
        seeds,
        plan.proxy_inputs,
        plan.seed,
        &mut |bytes| servers.block_on(proxy_request(&addr, bytes, deadline)),
    );
    let after = servers.block_on(proxy_request(&addr, &valid, deadline));
    drop(proxy);
    servers.block_on(mock.shutdown());
    match (report.failure.is_none(), after) {
        (true, Err(why)) => FuzzReport {
            failure: Some((format!("after the run: {why}"), valid)),
            ..report
        },
        _ => report,
    }
}

/// `n` messages a hostile worker could send once admitted: mutated seeds that still decode as
/// [`Up`], without those that ask for lifecycle changes (restarts, reshards, stops, a failed
/// start), so a run exercises routing, the store, lookups, identify grants, replies, sessions
/// and logs rather than tearing the fleet down.
#[must_use]
pub fn hostile_messages(seed: u64, n: usize) -> Vec<Up> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let seeds = up_seeds();
    let mut found = Vec::with_capacity(n);
    while found.len() < n {
        let base = &seeds[rng.usize(..seeds.len())];
        let mutations: Vec<Mutation> = (0..rng.usize(0..4))
            .map(|_| {
                let at = rng.usize(..);
                match rng.u8(..5) {
                    0 => Mutation::Flip(at, rng.u8(..8)),
                    1 => Mutation::Set(at, rng.u8(..)),
                    2 => Mutation::Special(at, rng.usize(..SPECIAL.len())),
                    3 => Mutation::Insert(at, vec![rng.u8(..); rng.usize(1..4)]),
                    _ => Mutation::Delete(at, rng.usize(1..4)),
                }
            })
            .collect();
        let Ok(up) = frame::decode::<Up>(&apply(base, &mutations)) else {
            continue;
        };
        let lifecycle = matches!(
            &up,
            Up::Status(Status::StartFailed(_))
                | Up::Request {
                    request: Request::Restart { .. }
                        | Request::RestartAll { .. }
                        | Request::Reshard { .. }
                        | Request::Stop { .. }
                        | Request::StopNow { .. }
                        | Request::CreateService { .. }
                        | Request::Deploy(_)
                        | Request::Shutdown,
                    ..
                }
        );
        if !lifecycle {
            found.push(up);
        }
    }
    found
}
