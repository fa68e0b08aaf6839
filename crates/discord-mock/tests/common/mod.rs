//! Helpers shared by the mock's integration tests: a raw websocket client and a tiny HTTP client,
//! so the mock is checked by something that is not one of the client libraries.

#![allow(dead_code, missing_docs)]

use std::time::Duration;

use futures::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const WAIT: Duration = Duration::from_secs(15);
pub const TOKEN: &str = "mock-token";

/// What a raw connection received next.
#[derive(Debug)]
pub enum Received {
    Frame(Value),
    Closed(Option<u16>),
}

/// A websocket client speaking the gateway protocol by hand.
pub struct RawClient {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl RawClient {
    /// Connects to `url` (`ws://127.0.0.1:PORT` plus a path and query) and returns it with Hello.
    pub async fn connect(url: &str) -> (Self, Value) {
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("connect to the mock gateway");
        let mut client = Self { ws };
        let hello = client.frame().await;
        assert_eq!(hello["op"], 10, "first frame is Hello: {hello}");
        (client, hello)
    }

    pub async fn send(&mut self, payload: &Value) {
        self.ws
            .send(Message::text(payload.to_string()))
            .await
            .expect("send a frame");
    }

    pub async fn send_text(&mut self, text: String) {
        self.ws
            .send(Message::text(text))
            .await
            .expect("send a frame");
    }

    /// The next text frame or the close, within [`WAIT`].
    pub async fn next(&mut self) -> Received {
        loop {
            let message = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a frame within the wait");
            match message {
                Some(Ok(Message::Text(text))) => {
                    return Received::Frame(serde_json::from_str(&text).expect("JSON frame"));
                }
                Some(Ok(Message::Close(frame))) => {
                    return Received::Closed(frame.map(|f| u16::from(f.code)));
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return Received::Closed(None),
            }
        }
    }

    pub async fn frame(&mut self) -> Value {
        match self.next().await {
            Received::Frame(frame) => frame,
            Received::Closed(code) => {
                panic!("expected a frame, the connection closed with {code:?}")
            }
        }
    }

    pub async fn close_code(&mut self) -> Option<u16> {
        loop {
            if let Received::Closed(code) = self.next().await {
                return code;
            }
        }
    }

    /// The next dispatch named `t`, skipping others.
    pub async fn dispatch(&mut self, t: &str) -> Value {
        loop {
            let frame = self.frame().await;
            if frame["t"] == t {
                return frame;
            }
        }
    }

    pub async fn identify(&mut self, shard: [u32; 2]) {
        self.send(
            &json!({"op": 2, "d": {"token": TOKEN, "intents": 1 | 1 << 1 | 1 << 9 | 1 << 15, "shard": shard,
            "properties": {"os": "linux", "browser": "raw", "device": "raw"}}}),
        )
        .await;
    }

    pub async fn close(mut self, code: u16) {
        let frame = CloseFrame {
            code: WsCloseCode::from(code),
            reason: "".into(),
        };
        let _ = self.ws.close(Some(frame)).await;
    }
}

/// A plain HTTP/1.1 response.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Value,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Sends one HTTP/1.1 request to `addr` and reads the whole response.
pub async fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: Option<&Value>,
) -> HttpResponse {
    let mut stream = TcpStream::connect(addr).await.expect("connect to the mock");
    let body = body.map(Value::to_string).unwrap_or_default();
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(auth) = auth {
        request.push_str("Authorization: ");
        request.push_str(auth);
        request.push_str("\r\n");
    }
    if !body.is_empty() {
        request.push_str("Content-Type: application/json\r\n");
    }
    request.push_str("\r\n");
    request.push_str(&body);
    stream
        .write_all(request.as_bytes())
        .await
        .expect("write the request");
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut raw))
        .await
        .expect("a response in time")
        .expect("read");
    let text = String::from_utf8(raw).expect("UTF-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("a header block");
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let body = serde_json::from_str(body).unwrap_or(Value::Null);
    HttpResponse {
        status,
        headers,
        body,
    }
}
