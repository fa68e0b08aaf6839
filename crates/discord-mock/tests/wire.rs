//! The wire formats over a real socket: ETF both ways inside one zlib stream, and per-payload
//! zlib, decoded here by hand so no client library's leniency hides a fault.

use std::io::Read as _;
use std::time::Duration;

use discord_mock::{MockConfig, MockDiscord, etf};
use futures::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(15);

async fn next_binary<S>(ws: &mut S) -> Vec<u8>
where
    S: futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a frame in time")
        {
            Some(Ok(Message::Binary(bytes))) => return bytes.to_vec(),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            other => panic!("expected a binary frame, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn an_etf_client_in_a_zlib_stream_identifies_and_receives_events() {
    let mock = MockDiscord::start(MockConfig::builder().guilds(2).build())
        .await
        .unwrap();
    let url = format!(
        "{}/?v=10&encoding=etf&compress=zlib-stream",
        mock.gateway_url()
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let mut inflater = flate2::Decompress::new(true);
    let mut next = async |ws: &mut _| -> Value {
        let frame = next_binary(ws).await;
        assert_eq!(
            &frame[frame.len() - 4..],
            &[0, 0, 0xff, 0xff],
            "a sync flush ends each message"
        );
        let mut out = Vec::with_capacity(1 << 20);
        inflater
            .decompress_vec(&frame, &mut out, flate2::FlushDecompress::Sync)
            .expect("one inflater reads the whole stream");
        etf::decode(&out).expect("an ETF term")
    };
    let hello = next(&mut ws).await;
    assert_eq!(hello["op"], 10);
    assert!(hello["d"]["heartbeat_interval"].as_u64().is_some());
    let identify = json!({"op": 2, "d": {"token": "mock-token", "intents": 1 | 1 << 9 | 1 << 15,
        "properties": {"os": "linux", "browser": "etf", "device": "etf"}}});
    ws.send(Message::binary(etf::encode(&identify)))
        .await
        .unwrap();
    let ready = next(&mut ws).await;
    assert_eq!(
        (ready["t"].as_str(), ready["s"].as_u64()),
        (Some("READY"), Some(1))
    );
    assert!(ready["d"]["session_id"].is_string());
    for _ in 0..2 {
        assert_eq!(next(&mut ws).await["t"], "GUILD_CREATE");
    }
    let id = mock.produce_event(0);
    let message = next(&mut ws).await;
    assert_eq!(message["t"], "MESSAGE_CREATE");
    assert_eq!(message["d"]["id"], id.to_string());
    assert_eq!(message["d"]["content"], "event 0");
    ws.send(Message::binary(etf::encode(&json!({"op": 1, "d": 4}))))
        .await
        .unwrap();
    assert_eq!(next(&mut ws).await["op"], 11);
    mock.wait_until(WAIT, "the event confirmed", |m| {
        m.event_report().delivered == 1
    })
    .await
    .unwrap();
    // A text frame on an ETF connection does not decode.
    ws.send(Message::text(r#"{"op":1,"d":4}"#)).await.unwrap();
    let closed = tokio::time::timeout(WAIT, async {
        loop {
            if let Some(Ok(Message::Close(frame))) = ws.next().await {
                return frame.map(|f| u16::from(f.code));
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(closed, Some(4002));
}

#[tokio::test]
async fn compress_true_in_identify_zlibs_every_payload_after_it() {
    let mock = MockDiscord::start(MockConfig::builder().guilds(1).build())
        .await
        .unwrap();
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("{}/?v=10", mock.gateway_url()))
        .await
        .unwrap();
    let Some(Ok(Message::Text(hello))) = ws.next().await else {
        panic!("Hello comes as text: nothing was asked for yet")
    };
    assert!(hello.contains("heartbeat_interval"));
    let identify = json!({"op": 2, "d": {"token": "mock-token", "intents": 1, "compress": true,
        "properties": {"os": "linux", "browser": "zlib", "device": "zlib"}}});
    ws.send(Message::text(identify.to_string())).await.unwrap();
    for expected in ["READY", "GUILD_CREATE"] {
        let frame = next_binary(&mut ws).await;
        let mut text = String::new();
        flate2::read::ZlibDecoder::new(&frame[..])
            .read_to_string(&mut text)
            .expect("each payload is a whole zlib stream");
        let payload: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(payload["t"], expected);
    }
}
