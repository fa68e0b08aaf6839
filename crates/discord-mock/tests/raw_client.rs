//! The mock driven by an independent websocket client and plain HTTP: the binary as a user runs
//! it, and the library's handle and control routes.

mod common;

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use common::{RawClient, Received, TOKEN, http};
use discord_mock::{MockConfig, MockDiscord, Violation};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, BufReader};

const AUTH: Option<&str> = Some("Bot mock-token");

fn quick() -> discord_mock::MockConfigBuilder {
    MockConfig::builder()
        .guilds(4)
        .recommended_shards(2)
        .identify_interval(Duration::from_millis(300))
        .heartbeat_interval(Duration::from_millis(500))
}

#[tokio::test]
async fn the_binary_serves_gateway_rest_and_control_to_an_independent_client() {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_discord-mock"))
        .args([
            "--guilds",
            "4",
            "--recommended-shards",
            "2",
            "--identify-interval-ms",
            "60000",
            "--heartbeat-interval-ms",
            "500",
        ])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn discord-mock");
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(common::WAIT, stdout.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let addr: SocketAddr = first.parse().expect("first line is the bound address");
    assert!(addr.ip().is_loopback());

    let gateway = http(addr, "GET", "/api/v10/gateway", None, None).await;
    assert_eq!(gateway.body["url"], format!("ws://{addr}"));
    // The deprecated v9 routes answer the same.
    let v9 = http(addr, "GET", "/api/v9/gateway", None, None).await;
    assert_eq!(v9.body, gateway.body);
    let bot = http(addr, "GET", "/api/v10/gateway/bot", AUTH, None).await;
    assert_eq!(bot.status, 200);
    assert_eq!(bot.body["shards"], 2);
    assert_eq!(
        bot.body["session_start_limit"],
        json!({"total": 1000, "remaining": 1000, "reset_after": bot.body["session_start_limit"]["reset_after"], "max_concurrency": 1})
    );

    let (mut client, hello) = RawClient::connect(&format!("ws://{addr}/?v=10&encoding=json")).await;
    assert_eq!(hello["d"]["heartbeat_interval"], 500);
    assert_eq!(
        (hello["t"].clone(), hello["s"].clone()),
        (Value::Null, Value::Null)
    );
    client.send(&json!({"op": 1, "d": null})).await;
    assert_eq!(client.frame().await["op"], 11);
    client.identify([0, 2]).await;
    let ready = client.frame().await;
    assert_eq!(
        (ready["t"].as_str(), ready["s"].as_u64()),
        (Some("READY"), Some(1))
    );
    assert_eq!(ready["d"]["guilds"].as_array().unwrap().len(), 2);
    for seq in [2, 3] {
        let guild = client.frame().await;
        assert_eq!(
            (guild["t"].as_str(), guild["s"].as_u64()),
            (Some("GUILD_CREATE"), Some(seq))
        );
    }
    let bot = http(addr, "GET", "/api/v10/gateway/bot", AUTH, None).await;
    assert_eq!(bot.body["session_start_limit"]["remaining"], 999);

    // Shard 1 shares the only bucket and the interval is a minute: op 9, counted.
    let (mut early, _) = RawClient::connect(&format!("ws://{addr}/?v=10")).await;
    early.identify([1, 2]).await;
    let invalid = early.frame().await;
    assert_eq!(
        (invalid["op"].as_u64(), invalid["d"].as_bool()),
        (Some(9), Some(false))
    );
    let stats = http(addr, "GET", "/_mock/stats", None, None).await;
    assert_eq!(stats.body["violations"]["identify_too_early"], 1);
    assert_eq!(stats.body["identifies"], 1);

    // Events flow; the connection drops with 4000; the resume replays what was missed.
    http(addr, "POST", "/_mock/events/start?rate=20", None, None).await;
    let message = client.dispatch("MESSAGE_CREATE").await;
    let seen = message["s"].as_u64().unwrap();
    http(addr, "POST", "/_mock/events/stop", None, None).await;
    client.close(4000).await;
    // Two more events for shard 0 (guilds 0 and 2) while no connection holds the session.
    for guild in [0, 2] {
        let produced = http(
            addr,
            "POST",
            &format!("/_mock/events/produce?guild={guild}"),
            None,
            None,
        )
        .await;
        assert_eq!(produced.status, 200);
    }
    let session = ready["d"]["session_id"].as_str().unwrap();
    let (mut resumed, _) = RawClient::connect(&format!(
        "{}/?v=10&encoding=json",
        ready["d"]["resume_gateway_url"].as_str().unwrap()
    ))
    .await;
    resumed
        .send(&json!({"op": 6, "d": {"token": TOKEN, "session_id": session, "seq": seen}}))
        .await;
    let mut expected = seen + 1;
    loop {
        let frame = resumed.frame().await;
        assert_eq!(
            frame["s"].as_u64(),
            Some(expected),
            "replay keeps original numbers: {frame}"
        );
        expected += 1;
        if frame["t"] == "RESUMED" {
            break;
        }
    }
    assert!(expected > seen + 2, "something was replayed");
    let stats = http(addr, "GET", "/_mock/stats", None, None).await;
    assert_eq!(stats.body["resumes"], 1);
    assert_eq!(stats.body["identifies"], 1);
    child.kill().await.unwrap();
}

#[tokio::test]
async fn bad_tokens_are_refused_on_gateway_and_rest() {
    let mock = MockDiscord::start(quick().build()).await.unwrap();
    let (mut client, _) =
        RawClient::connect(&format!("{}/?v=10&encoding=json", mock.gateway_url())).await;
    client
        .send(&json!({"op": 2, "d": {"token": "stolen", "intents": 1, "properties": {}}}))
        .await;
    assert_eq!(client.close_code().await, Some(4004));
    let reply = http(
        mock.addr(),
        "GET",
        "/api/v10/users/@me",
        Some("Bot stolen"),
        None,
    )
    .await;
    assert_eq!(
        (reply.status, reply.body.clone()),
        (401, json!({"message": "401: Unauthorized", "code": 0}))
    );
    let stats = mock.stats();
    assert_eq!(stats.violations_of(Violation::AuthenticationFailed), 1);
    assert_eq!(stats.violations_of(Violation::RestUnauthorized), 1);
}

#[tokio::test]
async fn closing_with_1000_ends_the_session() {
    let mock = MockDiscord::start(quick().build()).await.unwrap();
    let (mut client, _) = RawClient::connect(&format!("{}/?v=10", mock.gateway_url())).await;
    client.identify([0, 1]).await;
    let ready = client.dispatch("READY").await;
    client.close(1000).await;
    mock.wait_until(common::WAIT, "session ended", |m| m.sessions().is_empty())
        .await
        .unwrap();
    let (mut again, _) = RawClient::connect(&format!("{}/resume/?v=10", mock.gateway_url())).await;
    again.send(&json!({"op": 6, "d": {"token": TOKEN, "session_id": ready["d"]["session_id"], "seq": 1}})).await;
    let frame = again.frame().await;
    assert_eq!(
        (frame["op"].as_u64(), frame["d"].as_bool()),
        (Some(9), Some(false))
    );
}

#[tokio::test]
async fn a_client_that_stops_heartbeating_is_closed_as_a_zombie() {
    let mock = MockDiscord::start(
        quick()
            .heartbeat_interval(Duration::from_millis(100))
            .heartbeat_timeout(Duration::from_millis(300))
            .build(),
    )
    .await
    .unwrap();
    let (mut client, _) = RawClient::connect(&format!("{}/?v=10", mock.gateway_url())).await;
    client.identify([0, 1]).await;
    client.dispatch("READY").await;
    assert_eq!(client.close_code().await, Some(4000));
    assert_eq!(
        mock.sessions().len(),
        1,
        "the zombie's session stays resumable"
    );
}

#[tokio::test]
async fn more_than_120_payloads_a_minute_close_4008() {
    // Discord's own heartbeat interval: the limit is exactly 120.
    let mock = MockDiscord::start(
        quick()
            .heartbeat_interval(Duration::from_millis(41_250))
            .build(),
    )
    .await
    .unwrap();
    let (mut client, _) = RawClient::connect(&format!("{}/?v=10", mock.gateway_url())).await;
    for _ in 0..121 {
        client.send(&json!({"op": 1, "d": null})).await;
    }
    assert_eq!(client.close_code().await, Some(4008));
    assert_eq!(mock.stats().violations_of(Violation::SendRateLimit), 1);
}

#[tokio::test]
async fn oversized_payloads_close_4002() {
    let mock = MockDiscord::start(quick().build()).await.unwrap();
    let (mut client, _) = RawClient::connect(&format!("{}/?v=10", mock.gateway_url())).await;
    client
        .send_text(format!(r#"{{"op":1,"d":null,"x":"{}"}}"#, "y".repeat(5000)))
        .await;
    assert_eq!(client.close_code().await, Some(4002));
}

#[tokio::test]
async fn control_routes_inject_faults() {
    let mock = MockDiscord::start(quick().build()).await.unwrap();
    let addr = mock.addr();
    let (mut client, _) = RawClient::connect(&format!("{}/?v=10", mock.gateway_url())).await;
    client.identify([0, 1]).await;
    client.dispatch("READY").await;
    while client.frame().await["s"] != 5 {} // then 4 GUILD_CREATE

    let acks = http(
        addr,
        "POST",
        "/_mock/shards/0/acks?withhold=true",
        None,
        None,
    )
    .await;
    assert_eq!(acks.body["acks_withheld"], true);
    client.send(&json!({"op": 1, "d": 5})).await;
    let invalid = http(
        addr,
        "POST",
        "/_mock/shards/0/invalidate?resumable=true",
        None,
        None,
    )
    .await;
    assert_eq!(invalid.body["affected"], 1);
    // The heartbeat got no ACK: the next frame is the op 9.
    assert_eq!(
        client.frame().await,
        json!({"t": null, "s": null, "op": 9, "d": true})
    );
    http(
        addr,
        "POST",
        "/_mock/shards/0/acks?withhold=false",
        None,
        None,
    )
    .await;
    client.send(&json!({"op": 1, "d": 5})).await;
    assert_eq!(client.frame().await["op"], 11);
    assert_eq!(mock.sessions()[0].acked_seq, 5);

    let reconnect = http(addr, "POST", "/_mock/shards/0/reconnect", None, None).await;
    assert_eq!(reconnect.body["affected"], 1);
    assert_eq!(client.frame().await["op"], 7);
    let close = http(addr, "POST", "/_mock/shards/0/close?code=4000", None, None).await;
    assert_eq!(close.body["affected"], 1);
    assert_eq!(client.close_code().await, Some(4000));

    let produce = http(addr, "POST", "/_mock/events/produce?guild=0", None, None).await;
    assert!(produce.body["id"].as_str().is_some());
    let sessions = http(addr, "GET", "/_mock/sessions", None, None).await;
    assert_eq!(sessions.body[0]["attached"], false);
    assert_eq!(sessions.body[0]["events_sent"], 1);
    let bad = http(addr, "POST", "/_mock/shards/0/explode", None, None).await;
    assert_eq!(bad.status, 404);
    let out_of_range = http(addr, "POST", "/_mock/events/produce?guild=99", None, None).await;
    assert_eq!(out_of_range.status, 400);
}

#[tokio::test]
async fn control_values_out_of_range_get_a_400_with_the_allowed_range() {
    let mock = MockDiscord::start(quick().build()).await.unwrap();
    let addr = mock.addr();
    let (mut client, _) = RawClient::connect(&format!("{}/?v=10", mock.gateway_url())).await;
    client.identify([0, 1]).await;
    client.dispatch("READY").await;
    for rate in ["1e9", "inf", "infinity", "NaN", "-1"] {
        let path = format!("/_mock/events/start?rate={rate}");
        let refused = http(addr, "POST", &path, None, None).await;
        assert_eq!(refused.status, 400, "rate={rate}");
        let message = refused.body["message"].as_str().unwrap();
        assert!(message.contains("0..="), "{message}");
    }
    for code in ["0", "999", "1005", "1006", "1015", "5000", "70000", "-1"] {
        let path = format!("/_mock/shards/0/close?code={code}");
        let refused = http(addr, "POST", &path, None, None).await;
        assert_eq!(refused.status, 400, "code={code}");
        let message = refused.body["message"].as_str().unwrap();
        assert!(message.contains("3000-4999"), "{message}");
    }
    // Nothing was started or closed, and the mock still answers.
    let stats = http(addr, "GET", "/_mock/stats", None, None).await;
    assert_eq!(stats.body["events_produced"], 0);
    assert!(mock.sessions()[0].attached, "the session was not closed");
    let started = http(addr, "POST", "/_mock/events/start?rate=2", None, None).await;
    assert_eq!(started.status, 200);
}

#[tokio::test]
async fn dropping_tcp_keeps_the_session_resumable() {
    let mock = MockDiscord::start(quick().build()).await.unwrap();
    let (mut client, _) = RawClient::connect(&format!("{}/?v=10", mock.gateway_url())).await;
    client.identify([0, 1]).await;
    let ready = client.dispatch("READY").await;
    assert_eq!(mock.drop_shard(0), 1);
    assert!(matches!(
        client.next().await,
        Received::Closed(None) | Received::Frame(_)
    ));
    mock.wait_until(common::WAIT, "session detached", |m| {
        m.sessions().first().is_some_and(|s| !s.attached)
    })
    .await
    .unwrap();
    let (mut again, _) = RawClient::connect(&format!("{}/resume?v=10", mock.gateway_url())).await;
    again.send(&json!({"op": 6, "d": {"token": TOKEN, "session_id": ready["d"]["session_id"], "seq": 1}})).await;
    again.dispatch("RESUMED").await;
}

#[tokio::test]
async fn rest_rate_limits_announce_themselves_then_429() {
    let mock = MockDiscord::start(quick().build()).await.unwrap();
    let channel = mock.guild_ids()[0];
    let channel = {
        let guild = http(
            mock.addr(),
            "GET",
            &format!("/api/v10/guilds/{channel}"),
            AUTH,
            None,
        )
        .await;
        guild.body["system_channel_id"].as_str().unwrap().to_owned()
    };
    let path = format!("/api/v10/channels/{channel}/messages");
    let body = json!({"content": "hello"});
    for remaining in (0..5).rev() {
        let reply = http(mock.addr(), "POST", &path, AUTH, Some(&body)).await;
        assert_eq!(reply.status, 200, "{:?}", reply.body);
        assert_eq!(
            reply.header("x-ratelimit-remaining"),
            Some(remaining.to_string().as_str())
        );
        assert!(reply.header("x-ratelimit-bucket").is_some());
        assert!(reply.header("x-ratelimit-reset-after").is_some());
    }
    let reply = http(mock.addr(), "POST", &path, AUTH, Some(&body)).await;
    assert_eq!(reply.status, 429);
    assert_eq!(reply.header("x-ratelimit-scope"), Some("user"));
    assert!(reply.body["retry_after"].as_f64().unwrap() > 0.0);
    assert!(reply.header("retry-after").is_some());
    let stats = mock.stats();
    assert_eq!((stats.rest_429s, stats.messages_created), (1, 5));
}
