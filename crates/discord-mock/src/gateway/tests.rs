//! Every gateway rule, driven with fake time and no sockets.

use super::*;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

const TOKEN: &str = "mock-token";

/// The intents every event of the event source needs, and the content of messages.
const ALL: u64 =
    intents::GUILDS | intents::GUILD_MEMBERS | intents::GUILD_MESSAGES | intents::MESSAGE_CONTENT;

struct Harness {
    g: Gateway,
    out: Vec<Action>,
}

impl Harness {
    fn new(config: MockConfig) -> Self {
        Self {
            g: Gateway::new(config, "ws://127.0.0.1:1".to_owned()),
            out: Vec::new(),
        }
    }

    fn with(
        build: impl FnOnce(crate::config::MockConfigBuilder) -> crate::config::MockConfigBuilder,
    ) -> Self {
        Self::new(
            build(
                MockConfig::builder()
                    .guilds(4)
                    .identify_interval(ms(1000))
                    .heartbeat_interval(ms(1000)),
            )
            .build(),
        )
    }

    fn open(&mut self, now: Duration) -> ConnId {
        let conn = self.g.open(
            now,
            Some("v=10&encoding=json&compress=zstd-stream"),
            &mut self.out,
        );
        let hello = self.frames(conn);
        assert_eq!(hello[0]["op"], 10, "Hello comes first");
        conn
    }

    fn send(&mut self, conn: ConnId, now: Duration, payload: &Value) {
        self.g
            .receive_text(conn, now, &payload.to_string(), &mut self.out);
    }

    /// Frames sent to `conn` since the last look, parsed; other connections' frames stay queued.
    fn frames(&mut self, conn: ConnId) -> Vec<Value> {
        let mut frames = Vec::new();
        self.out.retain(|a| match a {
            Action::Send { conn: c, text } if *c == conn => {
                frames.push(serde_json::from_str(text).unwrap());
                false
            }
            _ => true,
        });
        frames
    }

    /// The close code sent to `conn`, if any.
    fn closed(&mut self, conn: ConnId) -> Option<u16> {
        let mut code = None;
        self.out.retain(|a| match a {
            Action::Close {
                conn: c, code: k, ..
            } if *c == conn => {
                code = Some(*k);
                false
            }
            _ => true,
        });
        code
    }

    /// Identifies with every intent the event source's events need ([`ALL`]).
    fn identify(&mut self, conn: ConnId, now: Duration, shard: [u32; 2]) -> Vec<Value> {
        self.identify_with(conn, now, shard, ALL)
    }

    fn identify_with(
        &mut self,
        conn: ConnId,
        now: Duration,
        shard: [u32; 2],
        intents: u64,
    ) -> Vec<Value> {
        let payload = json!({"op": 2, "d": {"token": TOKEN, "intents": intents, "shard": shard, "properties": {}}});
        self.send(conn, now, &payload);
        self.frames(conn)
    }

    /// Opens a connection and identifies; returns the connection and session id.
    fn session(&mut self, now: Duration, shard: [u32; 2]) -> (ConnId, String) {
        self.session_with(now, shard, ALL)
    }

    fn session_with(&mut self, now: Duration, shard: [u32; 2], intents: u64) -> (ConnId, String) {
        let conn = self.open(now);
        let frames = self.identify_with(conn, now, shard, intents);
        assert_eq!(frames[0]["t"], "READY", "{frames:?}");
        (
            conn,
            frames[0]["d"]["session_id"].as_str().unwrap().to_owned(),
        )
    }

    fn resume(&mut self, conn: ConnId, now: Duration, session: &str, seq: u64) -> Vec<Value> {
        let payload = json!({"op": 6, "d": {"token": TOKEN, "session_id": session, "seq": seq}});
        self.send(conn, now, &payload);
        self.frames(conn)
    }

    fn heartbeat(&mut self, conn: ConnId, now: Duration, seq: Option<u64>) -> Vec<Value> {
        self.send(conn, now, &json!({"op": 1, "d": seq}));
        self.frames(conn)
    }

    fn violations(&self, kind: Violation) -> u64 {
        self.g.stats(Duration::ZERO).violations_of(kind)
    }
}

fn last_seq(frames: &[Value]) -> u64 {
    frames.iter().filter_map(|f| f["s"].as_u64()).max().unwrap()
}

#[test]
fn hello_carries_the_interval_in_discords_key_order() {
    let mut h = Harness::with(|b| b);
    let conn =
        h.g.open(Duration::ZERO, Some("v=10&encoding=json"), &mut h.out);
    let Action::Send { text, .. } = &h.out[0] else {
        panic!()
    };
    assert!(
        text.starts_with(r#"{"t":null,"s":null,"op":10,"d":{"#),
        "{text}"
    );
    let frames = h.frames(conn);
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0]["d"]["heartbeat_interval"], 1000);
}

#[test]
fn bad_version_closes_4012_and_unknown_encodings_4002() {
    let mut h = Harness::with(|b| b);
    for bad in ["v=8&encoding=json", "v=11", "v=x"] {
        let conn = h.g.open(Duration::ZERO, Some(bad), &mut h.out);
        assert_eq!(h.closed(conn), Some(4012), "{bad}");
    }
    // The deprecated v9 is still served, as Discord does, and its READY says so.
    let conn =
        h.g.open(Duration::ZERO, Some("v=9&encoding=json"), &mut h.out);
    assert_eq!(h.closed(conn), None);
    h.frames(conn);
    let frames = h.identify(conn, Duration::ZERO, [0, 1]);
    assert_eq!(frames[0]["t"], "READY", "{frames:?}");
    assert_eq!(frames[0]["d"]["v"], 9);
    // ETF and both transport compressions are spoken (by the I/O layer); others close 4002.
    for good in [
        "v=10&encoding=etf",
        "compress=zlib-stream",
        "compress=zstd-stream",
    ] {
        let conn = h.g.open(Duration::ZERO, Some(good), &mut h.out);
        assert_eq!(h.closed(conn), None, "{good}");
    }
    for bad in ["v=10&encoding=xml", "v=10&compress=gzip"] {
        let conn = h.g.open(Duration::ZERO, Some(bad), &mut h.out);
        assert_eq!(h.closed(conn), Some(4002), "{bad}");
    }
    // serenity sends only `v=10`; no query at all is accepted too.
    let conn = h.g.open(Duration::ZERO, None, &mut h.out);
    assert_eq!(h.closed(conn), None);
}

#[test]
fn heartbeats_before_identify_are_acked() {
    let mut h = Harness::with(|b| b);
    let conn = h.open(Duration::ZERO);
    let frames = h.heartbeat(conn, ms(10), None);
    assert_eq!(frames[0]["op"], 11);
    assert_eq!(h.closed(conn), None);
}

#[test]
fn payloads_before_identify_close_4003() {
    let mut h = Harness::with(|b| b);
    let conn = h.open(Duration::ZERO);
    h.send(
        conn,
        ms(1),
        &json!({"op": 3, "d": {"status": "online", "since": null, "activities": [], "afk": false}}),
    );
    assert_eq!(h.closed(conn), Some(4003));
    assert_eq!(h.violations(Violation::NotAuthenticated), 1);
}

#[test]
fn unknown_and_server_only_opcodes_close_4001() {
    for op in [5, 10, 11, 99] {
        let mut h = Harness::with(|b| b);
        let conn = h.open(Duration::ZERO);
        h.send(conn, ms(1), &json!({"op": op, "d": null}));
        assert_eq!(h.closed(conn), Some(4001), "op {op}");
    }
}

#[test]
fn undecodable_and_oversized_payloads_close_4002() {
    let mut h = Harness::with(|b| b);
    let conn = h.open(Duration::ZERO);
    h.g.receive_text(conn, ms(1), "{not json", &mut h.out);
    assert_eq!(h.closed(conn), Some(4002));
    let conn = h.open(Duration::ZERO);
    let big = json!({"op": 1, "d": null, "pad": "x".repeat(4096)});
    h.send(conn, ms(1), &big);
    assert_eq!(h.closed(conn), Some(4002));
    let conn = h.open(Duration::ZERO);
    h.g.receive_binary(conn, ms(1), &mut h.out);
    assert_eq!(h.closed(conn), Some(4002));
    assert_eq!(h.violations(Violation::PayloadTooLarge), 1);
    assert_eq!(h.violations(Violation::DecodeError), 2);
}

#[test]
fn identify_validation_codes() {
    let cases: [(Value, u16); 8] = [
        (json!({"token": "wrong", "intents": 1}), 4004),
        (json!({"intents": 1}), 4004),
        (json!({"token": TOKEN}), 4013),
        (json!({"token": TOKEN, "intents": 1u64 << 17}), 4013),
        (json!({"token": TOKEN, "intents": 1, "shard": [4, 4]}), 4010),
        (json!({"token": TOKEN, "intents": 1, "shard": [0, 0]}), 4010),
        (json!({"token": TOKEN, "intents": 1, "shard": [0]}), 4010),
        (json!("not an object"), 4001),
    ];
    for (d, code) in cases {
        let mut h = Harness::with(|b| b);
        let conn = h.open(Duration::ZERO);
        h.send(conn, ms(1), &json!({"op": 2, "d": d}));
        assert_eq!(h.closed(conn), Some(code), "{d}");
        assert_eq!(h.g.stats(ms(1)).identifies, 0);
    }
}

#[test]
fn privileged_intents_need_to_be_enabled() {
    let mut h = Harness::with(|b| b.privileged_intents(intents::GUILD_MEMBERS));
    let conn = h.open(Duration::ZERO);
    h.send(
        conn,
        ms(1),
        &json!({"op": 2, "d": {"token": TOKEN, "intents": intents::GUILD_MEMBERS}}),
    );
    assert_eq!(h.closed(conn), None);
    let conn = h.open(ms(2000));
    h.send(
        conn,
        ms(2000),
        &json!({"op": 2, "d": {"token": TOKEN, "intents": intents::MESSAGE_CONTENT}}),
    );
    assert_eq!(h.closed(conn), Some(4014));
}

#[test]
fn large_bot_totals_must_be_a_multiple_of_max_concurrency() {
    let mut h = Harness::with(|b| b.max_concurrency(2).large_bot_sharding(true));
    let conn = h.open(Duration::ZERO);
    h.identify(conn, ms(1), [0, 3]);
    assert_eq!(h.closed(conn), Some(4010));
    let conn = h.open(Duration::ZERO);
    assert_eq!(h.identify(conn, ms(1), [0, 4])[0]["t"], "READY");
}

#[test]
fn too_many_guilds_on_a_shard_closes_4011() {
    let mut h = Harness::with(|b| b.guilds(5).max_guilds_per_shard(2));
    let conn = h.open(Duration::ZERO);
    h.identify(conn, ms(1), [0, 2]);
    assert_eq!(h.closed(conn), Some(4011));
    let conn = h.open(Duration::ZERO);
    assert_eq!(h.identify(conn, ms(1), [0, 3])[0]["t"], "READY");
}

#[test]
fn ready_lists_only_the_shards_guilds_then_one_guild_create_each() {
    let mut h = Harness::with(|b| b.guilds(4));
    let conn = h.open(Duration::ZERO);
    let frames = h.identify(conn, ms(1), [1, 2]);
    let ready = &frames[0];
    assert_eq!(
        (
            ready["t"].as_str(),
            ready["s"].as_u64(),
            ready["op"].as_u64()
        ),
        (Some("READY"), Some(1), Some(0))
    );
    let expected: Vec<String> = [1, 3]
        .iter()
        .map(|k| world::guild_id(*k).to_string())
        .collect();
    let listed: Vec<&str> = ready["d"]["guilds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, expected);
    assert_eq!(ready["d"]["shard"], json!([1, 2]));
    assert_eq!(ready["d"]["resume_gateway_url"], "ws://127.0.0.1:1/resume");
    assert_eq!(ready["d"]["session_id"].as_str().unwrap().len(), 32);
    assert_eq!(frames.len(), 3);
    for (i, frame) in frames[1..].iter().enumerate() {
        assert_eq!(frame["t"], "GUILD_CREATE");
        assert_eq!(frame["s"], i as u64 + 2);
        assert_eq!(frame["d"]["id"], expected[i]);
        assert_eq!(frame["d"]["members"].as_array().unwrap().len(), 5);
        assert_eq!(frame["d"]["channels"].as_array().unwrap().len(), 3);
    }
    assert_eq!(h.g.stats(ms(1)).identifies_per_shard.get(&1), Some(&1));
}

#[test]
fn second_identify_or_resume_closes_4005() {
    let mut h = Harness::with(|b| b);
    let (conn, session) = h.session(Duration::ZERO, [0, 1]);
    h.identify(conn, ms(2000), [0, 1]);
    assert_eq!(h.closed(conn), Some(4005));
    let (conn, _) = h.session(ms(4000), [0, 1]);
    h.resume(conn, ms(4001), &session, 1);
    assert_eq!(h.closed(conn), Some(4005));
}

#[test]
fn identify_is_paced_per_bucket() {
    let mut h = Harness::with(|b| {
        b.max_concurrency(2)
            .identify_interval(ms(5000))
            .identify_tolerance(ms(250))
    });
    let (_, _) = h.session(Duration::ZERO, [0, 4]);
    // Shard 2 shares bucket 0 with shard 0: too early.
    let conn = h.open(ms(1000));
    let frames = h.identify(conn, ms(1000), [2, 4]);
    assert_eq!(
        (frames[0]["op"].as_u64(), frames[0]["d"].as_bool()),
        (Some(9), Some(false))
    );
    assert_eq!(h.violations(Violation::IdentifyTooEarly), 1);
    // Shard 1 is in bucket 1: fine at the same moment.
    let (_, _) = h.session(ms(1000), [1, 4]);
    // Bucket 0 opens again 5 s after its last identify, less the tolerance for jitter.
    let conn = h.open(ms(4749));
    assert_eq!(h.identify(conn, ms(4749), [2, 4])[0]["op"], 9);
    let (_, _) = h.session(ms(4750), [2, 4]);
    assert_eq!(h.g.stats(ms(5000)).identifies, 3);
    assert_eq!(MockConfig::default().identify_tolerance, ms(250));
    assert_eq!(h.violations(Violation::IdentifyTooEarly), 2);
}

#[test]
fn more_than_120_payloads_a_minute_close_4008() {
    let mut h = Harness::with(|b| b.heartbeat_interval(ms(100_000)));
    let conn = h.open(Duration::ZERO);
    for i in 0..120 {
        h.heartbeat(conn, ms(i * 100), None);
    }
    assert_eq!(h.closed(conn), None);
    // The first payload left the window at 60 s, so one more fits; then the 121st in the window.
    h.heartbeat(conn, ms(60_000), None);
    assert_eq!(h.closed(conn), None);
    h.heartbeat(conn, ms(60_050), None);
    assert_eq!(h.closed(conn), Some(4008));
    assert_eq!(h.violations(Violation::SendRateLimit), 1);
}

#[test]
fn a_silent_connection_is_closed_as_a_zombie_and_stays_resumable() {
    let mut h = Harness::with(|b| b.heartbeat_timeout(ms(1500)));
    let (conn, session) = h.session(Duration::ZERO, [0, 1]);
    h.heartbeat(conn, ms(1000), Some(1));
    h.g.tick(ms(2500), &mut h.out);
    assert_eq!(h.closed(conn), None);
    h.g.tick(ms(2501), &mut h.out);
    assert_eq!(h.closed(conn), Some(4000));
    let conn = h.open(ms(3000));
    let frames = h.resume(conn, ms(3000), &session, 1);
    assert_eq!(frames.last().unwrap()["t"], "RESUMED");
}

#[test]
fn resume_replays_missed_dispatches_with_their_numbers_then_resumed() {
    let mut h = Harness::with(|b| b.guilds(2));
    let (conn, session) = h.session(Duration::ZERO, [0, 1]);
    let seen = 3; // READY + 2 GUILD_CREATE
    h.heartbeat(conn, ms(100), Some(seen));
    h.g.client_closed(conn, ms(200), Some(4000));
    // Two events arrive while no connection holds the session.
    let a = h.g.produce_event(0, &mut h.out);
    let b = h.g.produce_event(1, &mut h.out);
    assert_eq!(h.g.event_report().in_flight, 2);
    let conn = h.open(ms(300));
    let frames = h.resume(conn, ms(300), &session, seen);
    let seqs: Vec<u64> = frames.iter().map(|f| f["s"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [4, 5, 6]);
    assert_eq!(frames[0]["d"]["id"], a.to_string());
    assert_eq!(frames[1]["d"]["id"], b.to_string());
    assert_eq!(frames[2]["t"], "RESUMED");
    assert_eq!(h.g.stats(ms(300)).resumes, 1);
    // Identifies are not spent by resuming.
    assert_eq!(h.g.stats(ms(300)).identifies, 1);
    h.heartbeat(conn, ms(400), Some(6));
    let report = h.g.event_report();
    assert_eq!(
        (
            report.produced,
            report.delivered,
            report.lost,
            report.duplicates
        ),
        (2, 2, 0, 0)
    );
}

#[test]
fn a_replayed_message_is_the_one_first_sent_with_and_without_content() {
    for intents in [ALL, ALL & !intents::MESSAGE_CONTENT] {
        let mut h = Harness::with(|b| b.guilds(2));
        let (conn, session) = h.session_with(Duration::ZERO, [0, 1], intents);
        let seen = 3; // READY + 2 GUILD_CREATE
        h.heartbeat(conn, ms(100), Some(seen));
        let first = h.g.produce_event(0, &mut h.out);
        let second = h.g.produce_event(1, &mut h.out);
        let sent: Vec<Value> = h
            .frames(conn)
            .into_iter()
            .filter(|f| f["t"] == "MESSAGE_CREATE")
            .collect();
        assert_eq!(sent.len(), 2);
        h.g.client_closed(conn, ms(200), Some(4000));
        let conn = h.open(ms(300));
        let replayed = h.resume(conn, ms(300), &session, seen);
        assert_eq!(replayed[..2], sent[..], "the replay is what was sent");
        assert_eq!(sent[0]["d"]["id"], first.to_string());
        assert_eq!(sent[1]["d"]["id"], second.to_string());
        let content = sent[0]["d"]["content"].as_str().unwrap();
        if intents & intents::MESSAGE_CONTENT == 0 {
            assert_eq!(content, "");
        } else {
            assert!(content.starts_with("event "), "{content}");
        }
        // Its timestamp is its id's time, as Discord's are.
        assert_eq!(sent[0]["d"]["timestamp"], world::snowflake_time(first));
    }
}

#[test]
fn resume_can_start_from_an_older_sequence() {
    let mut h = Harness::with(|b| b.guilds(2));
    let (conn, session) = h.session(Duration::ZERO, [0, 1]);
    h.g.client_closed(conn, ms(10), None);
    let conn = h.open(ms(20));
    let frames = h.resume(conn, ms(20), &session, 1);
    let seqs: Vec<u64> = frames.iter().map(|f| f["s"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [2, 3, 4]);
}

#[test]
fn resume_of_an_unknown_session_gets_op9_false() {
    let mut h = Harness::with(|b| b);
    let conn = h.open(Duration::ZERO);
    let frames = h.resume(conn, ms(1), "0123456789abcdef0123456789abcdef", 1);
    assert_eq!(
        (frames[0]["op"].as_u64(), frames[0]["d"].as_bool()),
        (Some(9), Some(false))
    );
    assert_eq!(h.g.stats(ms(1)).resumes_refused, 1);
}

#[test]
fn resume_beyond_the_last_sequence_closes_4007_and_ends_the_session() {
    let mut h = Harness::with(|b| b.guilds(1));
    let (conn, session) = h.session(Duration::ZERO, [0, 1]);
    h.g.client_closed(conn, ms(10), Some(4000));
    let conn = h.open(ms(20));
    h.resume(conn, ms(20), &session, 99);
    assert_eq!(h.closed(conn), Some(4007));
    let conn = h.open(ms(30));
    assert_eq!(h.resume(conn, ms(30), &session, 1)[0]["op"], 9);
}

#[test]
fn client_close_1000_ends_the_session_other_codes_keep_it() {
    for (code, resumable) in [
        (Some(1000), false),
        (Some(1001), false),
        (Some(4000), true),
        (Some(4900), true),
        (None, true),
    ] {
        let mut h = Harness::with(|b| b);
        let (conn, session) = h.session(Duration::ZERO, [0, 1]);
        h.g.client_closed(conn, ms(10), code);
        let conn = h.open(ms(20));
        let frames = h.resume(conn, ms(20), &session, 1);
        assert_eq!(
            frames.last().unwrap()["t"] == "RESUMED",
            resumable,
            "{code:?}"
        );
    }
}

#[test]
fn detached_sessions_expire_after_the_resume_timeout() {
    let mut h = Harness::with(|b| b.resume_timeout(ms(5000)));
    let (conn, session) = h.session(Duration::ZERO, [0, 1]);
    h.g.client_closed(conn, ms(1000), None);
    h.g.tick(ms(6000), &mut h.out);
    assert_eq!(h.g.sessions().len(), 1);
    h.g.tick(ms(6001), &mut h.out);
    assert!(h.g.sessions().is_empty());
    let conn = h.open(ms(6002));
    assert_eq!(h.resume(conn, ms(6002), &session, 1)[0]["op"], 9);
}

#[test]
fn a_resume_takes_the_session_from_a_connection_still_holding_it() {
    let mut h = Harness::with(|b| b);
    let (old, session) = h.session(Duration::ZERO, [0, 1]);
    let new = h.open(ms(10));
    let frames = h.resume(new, ms(10), &session, 1);
    assert_eq!(frames.last().unwrap()["t"], "RESUMED");
    assert_eq!(h.closed(old), Some(4009));
    assert_eq!(h.g.sessions().len(), 1);
    assert!(h.g.sessions()[0].attached);
}

#[test]
fn resume_fails_once_the_replay_buffer_no_longer_reaches_back() {
    let mut h = Harness::with(|b| b.guilds(1).replay_capacity(3));
    let (conn, session) = h.session(Duration::ZERO, [0, 1]);
    h.g.client_closed(conn, ms(10), None);
    for _ in 0..3 {
        h.g.produce_event(0, &mut h.out);
    }
    // Buffer holds seqs 3..=5; resuming from 1 would need seq 2.
    let conn = h.open(ms(20));
    assert_eq!(h.resume(conn, ms(20), &session, 1)[0]["op"], 9);
}

#[test]
fn exhausting_the_session_budget_ends_every_session_and_resets_the_token() {
    let mut h = Harness::with(|b| {
        b.session_limit(2)
            .identify_interval(ms(10))
            .session_limit_reset(ms(60_000))
    });
    let (first, _) = h.session(Duration::ZERO, [0, 1]);
    let (second, _) = h.session(ms(100), [0, 1]);
    assert_eq!(h.g.session_budget(ms(100)).1, 0);
    let third = h.open(ms(200));
    h.identify(third, ms(200), [0, 1]);
    for conn in [first, second, third] {
        assert_eq!(h.closed(conn), Some(4004));
    }
    assert!(h.g.sessions().is_empty());
    assert!(h.g.token_reset());
    assert_eq!(h.violations(Violation::SessionLimitExhausted), 1);
    let fourth = h.open(ms(300));
    h.identify(fourth, ms(300), [0, 1]);
    assert_eq!(h.closed(fourth), Some(4004));
    h.g.restore_token();
    let (_, _) = h.session(ms(400), [0, 1]);
}

#[test]
fn the_session_budget_refills_when_its_period_ends() {
    let mut h = Harness::with(|b| {
        b.session_limit(1)
            .identify_interval(ms(10))
            .session_limit_reset(ms(10_000))
    });
    let (_, _) = h.session(Duration::ZERO, [0, 1]);
    assert_eq!(h.g.session_budget(ms(5000)), (1, 0, ms(5000)));
    assert_eq!(h.g.session_budget(ms(10_000)).1, 1);
    let (_, _) = h.session(ms(10_000), [0, 1]);
    assert!(!h.g.token_reset());
}

#[test]
fn events_reach_every_session_of_the_owning_shard_across_totals() {
    let mut h = Harness::with(|b| b.guilds(4).identify_interval(ms(1)));
    let (c0, _) = h.session(Duration::ZERO, [0, 2]);
    let (c1, _) = h.session(ms(10), [1, 2]);
    let (c_all, _) = h.session(ms(20), [0, 1]);
    let id = h.g.produce_event(1, &mut h.out); // guild 1 lives on [1, 2] and [0, 1]
    assert!(h.frames(c0).is_empty());
    let to_c1 = h.frames(c1);
    let to_all = h.frames(c_all);
    assert_eq!(to_c1[0]["d"]["id"], id.to_string());
    assert_eq!(to_all[0]["d"]["id"], id.to_string());
    assert_eq!(to_c1[0]["t"], "MESSAGE_CREATE");
    assert_eq!(to_c1[0]["d"]["guild_id"], world::guild_id(1).to_string());
    let report = h.g.event_report();
    assert_eq!((report.delivered, report.in_flight), (0, 1));
    h.heartbeat(c1, ms(30), Some(last_seq(&to_c1)));
    h.heartbeat(c_all, ms(30), Some(last_seq(&to_all)));
    let report = h.g.event_report();
    assert_eq!(
        (report.delivered, report.in_flight, report.duplicates),
        (1, 0, 1)
    );
}

#[test]
fn events_for_a_shard_without_sessions_go_nowhere_and_are_not_lost() {
    let mut h = Harness::with(|b| b.guilds(2));
    let (_, _) = h.session(Duration::ZERO, [0, 2]);
    h.g.produce_event(1, &mut h.out);
    let report = h.g.event_report();
    assert_eq!(
        (report.lost, report.no_session, report.delivered),
        (0, 1, 0)
    );
    assert!(report.lost_ids.is_empty());
}

#[test]
fn every_tenth_event_is_a_member_join() {
    let mut h = Harness::with(|b| b.guilds(1));
    let (conn, _) = h.session(Duration::ZERO, [0, 1]);
    for _ in 0..10 {
        h.g.produce_event(0, &mut h.out);
    }
    let frames = h.frames(conn);
    let kinds: Vec<&str> = frames.iter().map(|f| f["t"].as_str().unwrap()).collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == "GUILD_MEMBER_ADD").count(),
        1
    );
    assert_eq!(kinds[9], "GUILD_MEMBER_ADD");
    let joined: u64 = frames[9]["d"]["user"]["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(h.g.world().user(joined).is_some());
}

#[test]
fn the_event_source_runs_at_its_rate_per_guild() {
    let mut h = Harness::with(|b| b.guilds(5));
    h.g.start_events(Duration::ZERO, Some(2.0)).unwrap();
    for t in 1..=100 {
        h.g.tick(ms(t * 10), &mut h.out);
    }
    assert_eq!(h.g.stats(ms(1000)).events_produced, 10);
    h.g.stop_events();
    h.g.tick(ms(5000), &mut h.out);
    assert_eq!(h.g.stats(ms(5000)).events_produced, 10);
}

#[test]
fn a_tick_makes_a_bounded_burst_however_far_behind_it_is() {
    let mut h = Harness::with(|b| b.guilds(10));
    h.g.start_events(Duration::ZERO, Some(MAX_EVENTS_PER_SECOND / 10.0))
        .unwrap();
    // A second late: a million events were due; one tick's worth is made, the rest is not.
    h.g.tick(ms(1000), &mut h.out);
    assert_eq!(
        h.g.stats(ms(1000)).events_produced,
        MAX_EVENTS_PER_TICK as u64
    );
    h.g.tick(ms(1010), &mut h.out);
    assert_eq!(
        h.g.stats(ms(1010)).events_produced,
        2 * MAX_EVENTS_PER_TICK as u64
    );
}

#[test]
fn control_values_out_of_range_are_refused_and_change_nothing() {
    let mut h = Harness::with(|b| b.guilds(10));
    let max = MAX_EVENTS_PER_SECOND / 10.0;
    for rate in [f64::NAN, f64::INFINITY, -1.0, 1e9, max * 1.01] {
        let refused = h.g.start_events(Duration::ZERO, Some(rate));
        assert!(
            matches!(refused, Err(ControlError::EventRate { guilds: 10, .. })),
            "{rate}: {refused:?}"
        );
    }
    h.g.tick(ms(1000), &mut h.out);
    assert_eq!(
        h.g.stats(ms(1000)).events_produced,
        0,
        "a refused start starts nothing"
    );
    h.g.start_events(Duration::ZERO, Some(max)).unwrap();
    h.g.start_events(Duration::ZERO, Some(0.0)).unwrap();

    let (conn, _) = h.session(Duration::ZERO, [0, 1]);
    for code in [0, 999, 1004, 1005, 1006, 1015, 2000, 2999, 5000, u16::MAX] {
        assert_eq!(
            h.g.close_shard(ms(1), 0, code, &mut h.out),
            Err(ControlError::CloseCode(i64::from(code)))
        );
    }
    assert_eq!(h.closed(conn), None, "nothing was closed");
    for code in [1000, 1003, 1007, 1014, 3000, 4000, 4999] {
        assert!(sendable_close_code(code), "{code}");
    }
    let message = ControlError::CloseCode(1005).to_string();
    assert!(
        message.contains("1000-1003, 1007-1014 or 3000-4999"),
        "{message}"
    );
}

#[test]
fn faults_close_drop_reconnect_invalidate() {
    let mut h = Harness::with(|b| b.reconnect_grace(ms(500)));
    // close 4000 keeps the session, 4009 ends it.
    let (conn, session) = h.session(Duration::ZERO, [0, 1]);
    assert_eq!(h.g.close_shard(ms(1), 0, 4000, &mut h.out), Ok(1));
    assert_eq!(h.closed(conn), Some(4000));
    let conn = h.open(ms(2));
    assert_eq!(
        h.resume(conn, ms(2), &session, 1).last().unwrap()["t"],
        "RESUMED"
    );
    h.g.close_shard(ms(3), 0, 4009, &mut h.out).unwrap();
    assert_eq!(h.closed(conn), Some(4009));
    assert!(h.g.sessions().is_empty());

    // drop keeps it.
    let (conn, session) = h.session(ms(2000), [0, 1]);
    assert_eq!(h.g.drop_shard(ms(2001), 0, &mut h.out), 1);
    assert!(h.out.contains(&Action::Drop { conn }));
    h.out.clear();
    let conn = h.open(ms(2002));
    assert_eq!(
        h.resume(conn, ms(2002), &session, 1).last().unwrap()["t"],
        "RESUMED"
    );

    // op 7, then the mock closes after the grace period.
    h.g.reconnect_shard(ms(2003), 0, &mut h.out);
    assert_eq!(h.frames(conn)[0]["op"], 7);
    h.heartbeat(conn, ms(2400), None);
    h.g.tick(ms(2502), &mut h.out);
    assert_eq!(h.closed(conn), None);
    h.g.tick(ms(2503), &mut h.out);
    assert_eq!(h.closed(conn), Some(4000));

    // op 9 false ends the session; op 9 true keeps it.
    let conn = h.open(ms(2600));
    h.resume(conn, ms(2600), &session, 1);
    h.g.invalidate_shard(0, true, &mut h.out);
    assert_eq!(h.frames(conn)[0]["d"], true);
    assert_eq!(h.g.sessions().len(), 1);
    h.g.invalidate_shard(0, false, &mut h.out);
    assert_eq!(h.frames(conn)[0]["d"], false);
    assert!(h.g.sessions().is_empty());
    // The invalidated connection may not send anything but heartbeats.
    h.send(conn, ms(2700), &json!({"op": 3, "d": {}}));
    assert_eq!(h.closed(conn), Some(4003));
}

#[test]
fn withheld_acks_are_not_sent() {
    let mut h = Harness::with(|b| b);
    let (conn, _) = h.session(Duration::ZERO, [0, 1]);
    h.g.withhold_acks(0, true);
    assert!(h.heartbeat(conn, ms(10), Some(1)).is_empty());
    h.g.withhold_acks(0, false);
    assert_eq!(h.heartbeat(conn, ms(20), Some(1))[0]["op"], 11);
}

#[test]
fn guild_member_requests_are_answered_in_chunks() {
    let mut h = Harness::with(|b| b.guilds(1).members_per_guild(3));
    let conn = h.open(Duration::ZERO);
    let intents = intents::GUILD_MEMBERS | 1;
    h.send(
        conn,
        ms(1),
        &json!({"op": 2, "d": {"token": TOKEN, "intents": intents}}),
    );
    h.frames(conn);
    let guild = world::guild_id(0).to_string();
    h.send(
        conn,
        ms(2),
        &json!({"op": 8, "d": {"guild_id": guild, "query": "", "limit": 0, "nonce": "n1"}}),
    );
    let chunk = &h.frames(conn)[0];
    assert_eq!(chunk["t"], "GUILD_MEMBERS_CHUNK");
    assert_eq!(chunk["d"]["members"].as_array().unwrap().len(), 4);
    assert_eq!(
        (
            chunk["d"]["chunk_index"].as_u64(),
            chunk["d"]["chunk_count"].as_u64()
        ),
        (Some(0), Some(1))
    );
    assert_eq!(chunk["d"]["nonce"], "n1");
    // All members again within 30 s: RATE_LIMITED.
    h.send(
        conn,
        ms(3),
        &json!({"op": 8, "d": {"guild_id": guild, "query": "", "limit": 0}}),
    );
    let limited = &h.frames(conn)[0];
    assert_eq!(
        (limited["t"].as_str(), limited["d"]["opcode"].as_u64()),
        (Some("RATE_LIMITED"), Some(8))
    );
    // By id, with one unknown.
    let member = h.g.world().guild_at(0).member(1).to_string();
    h.send(
        conn,
        ms(4),
        &json!({"op": 8, "d": {"guild_id": guild, "user_ids": [member, "1"]}}),
    );
    let chunk = &h.frames(conn)[0];
    assert_eq!(chunk["d"]["members"].as_array().unwrap().len(), 1);
    assert_eq!(chunk["d"]["not_found"], json!(["1"]));
    // By prefix.
    h.send(
        conn,
        ms(5),
        &json!({"op": 8, "d": {"guild_id": guild, "query": "user-0-", "limit": 2}}),
    );
    assert_eq!(
        h.frames(conn)[0]["d"]["members"].as_array().unwrap().len(),
        2
    );
}

#[test]
fn member_requests_without_the_intent_go_unanswered() {
    let mut h = Harness::with(|b| b.guilds(1));
    let no_members = intents::GUILDS | intents::GUILD_MESSAGES;
    let (conn, _) = h.session_with(Duration::ZERO, [0, 1], no_members);
    let guild = world::guild_id(0).to_string();
    h.send(
        conn,
        ms(1),
        &json!({"op": 8, "d": {"guild_id": guild, "query": "", "limit": 0}}),
    );
    assert!(h.frames(conn).is_empty());
    assert_eq!(h.closed(conn), None);
}

#[test]
fn presence_updates_are_accepted_after_identify_and_each_session_keeps_its_presence() {
    let mut h = Harness::with(|b| b);
    let conn = h.open(Duration::ZERO);
    let presence = json!({"since": null, "activities": [{"name": "shard 0", "type": 0}], "status": "dnd", "afk": false});
    let identify = json!({"op": 2, "d": {"token": TOKEN, "intents": 513, "shard": [0, 1], "properties": {}, "presence": presence, "large_threshold": 77}});
    h.send(conn, Duration::ZERO, &identify);
    let session = &h.g.sessions()[0];
    assert_eq!(session.presence.as_ref(), Some(&presence));
    assert_eq!(session.large_threshold, Some(77));
    let idle = json!({"since": null, "activities": [], "status": "idle", "afk": false});
    h.send(conn, ms(1), &json!({"op": 3, "d": idle}));
    assert_eq!(h.closed(conn), None);
    assert_eq!(h.g.stats(ms(1)).presence_updates, 1);
    assert_eq!(h.g.sessions()[0].presence.as_ref(), Some(&idle));
}

#[test]
fn events_nobody_could_have_are_not_lost_and_a_vanished_clients_are() {
    let mut h = Harness::with(|b| b.guilds(1).resume_timeout(ms(1000)));
    // Nobody connected yet: these could reach no one.
    h.g.produce_event(0, &mut h.out);
    h.g.produce_event(0, &mut h.out);
    let (conn, _) = h.session(ms(10), [0, 1]);
    // Two events confirmed, three held unconfirmed when the client vanishes.
    for _ in 0..2 {
        h.g.produce_event(0, &mut h.out);
    }
    let seq = last_seq(&h.frames(conn));
    h.heartbeat(conn, ms(30), Some(seq));
    for _ in 0..3 {
        h.g.produce_event(0, &mut h.out);
    }
    h.g.client_closed(conn, ms(40), None);
    let report = h.g.event_report();
    assert_eq!((report.lost, report.in_flight), (0, 3), "{report:?}");
    assert_eq!(report.no_session, 2);
    // Nobody resumes it: the session expires, and its events were abandoned.
    h.g.tick(ms(2000), &mut h.out);
    let report = h.g.event_report();
    assert_eq!((report.produced, report.delivered), (7, 2));
    assert_eq!(
        (report.lost, report.no_session, report.lost_abandoned),
        (3, 2, 3)
    );
    assert_eq!(report.undelivered(), 5);
    // In JSON the lost ids are strings, read back either way.
    let json = serde_json::to_value(&report).unwrap();
    assert!(
        json["lost_ids"]
            .as_array()
            .unwrap()
            .iter()
            .all(serde_json::Value::is_string)
    );
    assert_eq!(
        serde_json::from_value::<crate::EventReport>(json).unwrap(),
        report
    );
    let numbers = serde_json::json!({"lost_ids": [5, "6"], "produced": 0, "delivered": 0, "in_flight": 0, "lost": 0, "no_session": 0, "lost_abandoned": 0, "duplicates": 0});
    assert_eq!(
        serde_json::from_value::<crate::EventReport>(numbers)
            .unwrap()
            .lost_ids,
        vec![5, 6]
    );
}

#[test]
fn sessions_get_only_the_events_their_intents_ask_for() {
    let mut h = Harness::with(|b| b.guilds(1));
    // Three generations of shard 0 that differ only in intents.
    let (all, _) = h.session_with(Duration::ZERO, [0, 1], ALL);
    let (no_members, _) = h.session_with(
        ms(6000),
        [0, 1],
        intents::GUILDS | intents::GUILD_MESSAGES | intents::MESSAGE_CONTENT,
    );
    let (no_content, _) = h.session_with(
        ms(12000),
        [0, 1],
        intents::GUILDS | intents::GUILD_MEMBERS | intents::GUILD_MESSAGES,
    );
    for _ in 0..10 {
        h.g.produce_event(0, &mut h.out);
    }
    let kinds = |frames: &[Value]| -> Vec<String> {
        frames
            .iter()
            .map(|f| f["t"].as_str().unwrap().to_owned())
            .collect()
    };
    let all = h.frames(all);
    assert_eq!(
        kinds(&all)
            .iter()
            .filter(|k| *k == "MESSAGE_CREATE")
            .count(),
        9
    );
    assert_eq!(kinds(&all)[9], "GUILD_MEMBER_ADD");
    assert_eq!(all[0]["d"]["content"], "event 0");

    let no_members = h.frames(no_members);
    assert_eq!(
        no_members.len(),
        9,
        "no GUILD_MEMBER_ADD without GUILD_MEMBERS"
    );
    assert!(kinds(&no_members).iter().all(|k| k == "MESSAGE_CREATE"));

    let no_content = h.frames(no_content);
    assert_eq!(no_content.len(), 10);
    let message = &no_content[0]["d"];
    assert_eq!(message["content"], "");
    assert_eq!(message["embeds"], json!([]));
    assert_eq!(message["attachments"], json!([]));
    assert_eq!(message["components"], json!([]));
    assert_eq!(
        message["id"], all[0]["d"]["id"],
        "only the content is blanked"
    );
}

#[test]
fn a_message_that_mentions_the_bot_keeps_its_content_without_the_intent() {
    let mut message =
        world::message_json(5 << 22, Some(1 << 22), 2 << 22, &World::bot_user(), "hi");
    assert_eq!(without_content(&message)["content"], "");
    message["mentions"] = json!([World::bot_user()]);
    assert_eq!(without_content(&message)["content"], "hi");
    let dm = world::message_json(5 << 22, None, 2 << 22, &World::bot_user(), "dm");
    assert_eq!(without_content(&dm)["content"], "dm");
}

#[test]
fn guild_create_needs_guilds_and_lists_only_the_bot_without_guild_members() {
    let mut h = Harness::with(|b| b.guilds(1));
    let conn = h.open(Duration::ZERO);
    let frames = h.identify_with(conn, Duration::ZERO, [0, 1], intents::GUILD_MESSAGES);
    assert_eq!(frames.len(), 1, "READY only: {frames:?}");
    assert_eq!(frames[0]["d"]["guilds"].as_array().unwrap().len(), 1);

    let conn = h.open(ms(6000));
    let frames = h.identify_with(conn, ms(6000), [0, 1], intents::GUILDS);
    assert_eq!(frames[1]["t"], "GUILD_CREATE");
    let members = frames[1]["d"]["members"].as_array().unwrap();
    assert_eq!(members.len(), 1);
    assert_eq!(members[0]["user"]["id"], BOT_USER_ID.to_string());
    assert_eq!(frames[1]["d"]["member_count"], 5);

    let conn = h.open(ms(12000));
    let frames = h.identify_with(conn, ms(12000), [0, 1], ALL);
    assert_eq!(frames[1]["d"]["members"].as_array().unwrap().len(), 5);
}

#[test]
fn events_no_session_subscribed_to_are_filtered_not_lost() {
    let mut h = Harness::with(|b| b.guilds(1));
    let (conn, _) = h.session_with(Duration::ZERO, [0, 1], intents::GUILDS);
    for _ in 0..10 {
        h.g.produce_event(0, &mut h.out);
    }
    assert!(h.frames(conn).is_empty());
    let report = h.g.event_report();
    assert_eq!(
        (
            report.produced,
            report.filtered,
            report.lost,
            report.no_session
        ),
        (10, 10, 0, 0)
    );
}

#[test]
fn the_size_limit_counts_the_wire_not_a_decoded_etf_frames_json() {
    let mut h = Harness::with(|b| b);
    let padded = json!({"op": 1, "d": null, "pad": "x".repeat(MAX_CLIENT_PAYLOAD)}).to_string();
    let conn = h.open(Duration::ZERO);
    h.g.receive_decoded(conn, ms(1), &padded, &mut h.out);
    assert_eq!(
        h.closed(conn),
        None,
        "decoded from a frame already checked on the wire"
    );
    assert_eq!(h.frames(conn)[0]["op"], 11);
    h.g.receive_text(conn, ms(2), &padded, &mut h.out);
    assert_eq!(h.closed(conn), Some(4002));
}

#[test]
fn settled_events_are_counted_not_kept_and_the_report_is_the_same() {
    let mut h = Harness::with(|b| b.guilds(1).keep_event_ids(false));
    // Before anyone connects: nobody could have these.
    for _ in 0..10 {
        h.g.produce_event(0, &mut h.out);
    }
    let (conn, _) = h.session(ms(10), [0, 1]);
    let total = 3 * super::SETTLE_EVERY + 5;
    let mut now = 20;
    for i in 0..total {
        h.g.produce_event(0, &mut h.out);
        // The client confirms in batches; the last few stay held.
        if i % 100 == 99 && i + 10 < total {
            now += 1000;
            let seq = last_seq(&h.frames(conn));
            h.heartbeat(conn, ms(now), Some(seq));
        }
    }
    assert!(
        h.g.confirmations.len() <= super::SETTLE_EVERY + 100,
        "{} kept",
        h.g.confirmations.len()
    );
    assert!(h.g.event_ids().is_empty(), "not kept when asked not to");
    let report = h.g.event_report();
    let held = report.in_flight;
    assert!(held > 0 && held < 110, "{report:?}");
    assert_eq!(report.produced, 10 + total as u64);
    assert_eq!(report.no_session, 10);
    assert_eq!(report.delivered + held, total as u64, "{report:?}");
    assert_eq!((report.lost, report.duplicates), (0, 0));
}
