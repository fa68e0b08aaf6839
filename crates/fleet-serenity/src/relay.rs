//! The identify gate: a websocket relay between serenity's shards and the gateway.
//!
//! serenity 0.12 decides on its own when to identify (its shard queuer waits a fixed 5 s between
//! boots and ignores `max_concurrency`, and re-identifies happen inside its shard runners), so the
//! adapter points serenity's `ws_url` at this relay on loopback. For each shard connection the
//! relay opens the same connection to the real gateway and forwards every frame both ways, except
//! that an IDENTIFY (op 2) waits for the fleet's identify queue; heartbeats sent meanwhile pass it,
//! everything else queues behind it. Resumes (op 6) pass at once. Server frames are forwarded
//! untouched, compressed or not.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;

use carrier::IpcError;
use carrier::cluster::ClusterLink;
use futures::{SinkExt as _, StreamExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// Starts a relay to `upstream` (a gateway URL without query) on `127.0.0.1`; returns its
/// `ws://` URL.
pub(crate) async fn start(upstream: String, link: ClusterLink) -> std::io::Result<String> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let url = format!("ws://{}", listener.local_addr()?);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(relay(stream, upstream.clone(), link.clone()));
        }
    });
    Ok(url)
}

type Grant = Pin<Box<dyn Future<Output = Result<(), IpcError>> + Send>>;

async fn relay(stream: TcpStream, upstream: String, link: ClusterLink) {
    let mut query = String::new();
    #[allow(
        clippy::result_large_err,
        reason = "the callback's type is tungstenite's"
    )]
    let remember_query = |request: &Request, response: Response| {
        request.uri().query().unwrap_or("").clone_into(&mut query);
        Ok(response)
    };
    let accepted = tokio_tungstenite::accept_hdr_async(stream, remember_query).await;
    let Ok(client) = accepted else { return };
    let target = if query.is_empty() {
        format!("{upstream}/")
    } else {
        format!("{upstream}/?{query}")
    };
    let (mut client_tx, mut client_rx) = client.split();
    let server = match tokio_tungstenite::connect_async(target.as_str()).await {
        Ok((server, _)) => server,
        Err(error) => {
            tracing::warn!(target: "fleet::shard", %error, "the gateway is unreachable");
            let frame = CloseFrame {
                code: CloseCode::Library(4000),
                reason: "gateway unreachable".into(),
            };
            let _ = client_tx.send(Message::Close(Some(frame))).await;
            return;
        }
    };
    let (mut server_tx, mut server_rx) = server.split();
    let mut grant: Option<Grant> = None;
    let mut held: VecDeque<Message> = VecDeque::new();
    loop {
        tokio::select! {
            from_server = server_rx.next() => {
                let Some(Ok(message)) = from_server else { break };
                let closing = message.is_close();
                if client_tx.send(message).await.is_err() || closing {
                    break;
                }
            }
            from_client = client_rx.next() => {
                let Some(Ok(message)) = from_client else { break };
                let closing = message.is_close();
                let waiting = grant.is_some();
                if !waiting && let Some(shard) = identify_shard(&message) {
                    let link = link.clone();
                    grant = Some(Box::pin(async move { link.identify(shard).await }));
                    held.push_back(message);
                    continue;
                }
                if waiting && !closing && !is_heartbeat(&message) {
                    held.push_back(message);
                    continue;
                }
                if server_tx.send(message).await.is_err() || closing {
                    break;
                }
            }
            granted = async { grant.as_mut().expect("guarded").await }, if grant.is_some() => {
                grant = None;
                if let Err(error) = granted {
                    tracing::warn!(target: "fleet::identify", %error, "no identify permission; dropping the connection");
                    break;
                }
                while let Some(message) = held.pop_front() {
                    if server_tx.send(message).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
    let _ = server_tx.close().await;
    let _ = client_tx.close().await;
}

#[derive(serde::Deserialize)]
struct Envelope {
    op: u8,
    #[serde(default)]
    d: Option<IdentifyData>,
}

#[derive(serde::Deserialize)]
struct IdentifyData {
    #[serde(default)]
    shard: Option<[u32; 2]>,
}

/// The shard an IDENTIFY frame is for, if it is one.
fn identify_shard(message: &Message) -> Option<u32> {
    let Message::Text(text) = message else {
        return None;
    };
    if !text.contains("\"op\":2") && !text.contains("\"op\": 2") {
        return None;
    }
    let envelope: Envelope = serde_json::from_str(text).ok()?;
    (envelope.op == 2).then(|| envelope.d.and_then(|d| d.shard).map_or(0, |[id, _]| id))
}

fn is_heartbeat(message: &Message) -> bool {
    match message {
        Message::Text(text) => {
            serde_json::from_str::<serde_json::Value>(text).is_ok_and(|v| v["op"] == 1)
        }
        Message::Ping(_) | Message::Pong(_) => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identify_frames_are_recognised_with_their_shard() {
        let identify = Message::text(r#"{"op":2,"d":{"token":"t","shard":[3,8],"intents":1}}"#);
        assert_eq!(identify_shard(&identify), Some(3));
        let no_shard = Message::text(r#"{"op":2,"d":{"token":"t","intents":1}}"#);
        assert_eq!(identify_shard(&no_shard), Some(0));
        let resume = Message::text(r#"{"op":6,"d":{"token":"t","session_id":"s","seq":2}}"#);
        assert_eq!(identify_shard(&resume), None);
        // A nested "op":2 inside another payload is not an identify.
        let presence = Message::text(r#"{"op":3,"d":{"activities":[{"op":2}]}}"#);
        assert_eq!(identify_shard(&presence), None);
        assert!(is_heartbeat(&Message::text(r#"{"op":1,"d":5}"#)));
        assert!(!is_heartbeat(&Message::text(r#"{"op":3,"d":{}}"#)));
    }
}
