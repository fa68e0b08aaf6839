//! Plain HTTP to Discord from carrier itself: the HTTPS connector the proxy and the admiral
//! use, the TLS provider the adapters' libraries need, and `GET /gateway/bot`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper::header::{AUTHORIZATION, USER_AGENT};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;

use crate::worker::{BotGateway, BoxError};

/// The HTTPS (or plain HTTP, for a local Discord) connector of carrier's clients.
pub(crate) type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// A connector that speaks HTTP/1 over TLS (ring, webpki roots) or in the clear.
pub(crate) fn connector() -> Connector {
    use hyper_rustls::ConfigBuilderExt as _;
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("ring supports the default protocol versions")
    .with_webpki_roots()
    .with_no_client_auth();
    hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http)
}

/// Makes ring the process's default TLS provider, once (later calls do nothing). Discord
/// libraries built on rustls without a provider of their own (twilight's gateway and HTTP
/// client, serenity's) need one installed before they connect.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// How long `GET /gateway/bot` may take.
const GATEWAY_BOT_TIMEOUT: Duration = Duration::from_secs(30);

/// The most of an answer to `GET /gateway/bot` read.
const GATEWAY_BOT_MAX: usize = 64 * 1024;

#[derive(Deserialize)]
struct GatewayBot {
    url: String,
    shards: u32,
    session_start_limit: SessionStartLimit,
}

#[derive(Deserialize)]
struct SessionStartLimit {
    total: u32,
    remaining: u32,
    reset_after: u64,
    max_concurrency: u32,
}

/// Asks Discord (or whatever `rest_url` is: a local Discord, say) for `GET /api/v10/gateway/bot`
/// with `token`: the gateway URL, the recommended shard count, the identify buckets and the
/// session budget. A non-2xx answer is an error with its status and Discord's message.
pub async fn bot_gateway(token: &str, rest_url: &str) -> Result<BotGateway, BoxError> {
    let url = format!("{}/api/v10/gateway/bot", rest_url.trim_end_matches('/'));
    let mut auth =
        hyper::header::HeaderValue::try_from(format!("Bot {}", token.trim_start_matches("Bot ")))
            .map_err(|_| "the token cannot be sent as a header")?;
    auth.set_sensitive(true);
    let request = hyper::Request::get(&url)
        .header(AUTHORIZATION, auth)
        .header(USER_AGENT, "DiscordBot (fleet, 0.1)")
        .body(Empty::<Bytes>::new())?;
    let client = Client::builder(TokioExecutor::new()).build(connector());
    let answer = async {
        let response = client.request(request).await?;
        let status = response.status();
        let body = http_body_util::Limited::new(response.into_body(), GATEWAY_BOT_MAX)
            .collect()
            .await?
            .to_bytes();
        Ok::<_, BoxError>((status, body))
    };
    let (status, body) = tokio::time::timeout(GATEWAY_BOT_TIMEOUT, answer)
        .await
        .map_err(|_| format!("GET {url}: no answer within {GATEWAY_BOT_TIMEOUT:?}"))??;
    if !status.is_success() {
        let text = String::from_utf8_lossy(&body);
        return Err(format!("GET {url}: {status}: {}", text.trim()).into());
    }
    let bot: GatewayBot =
        serde_json::from_slice(&body).map_err(|e| format!("GET {url}: unreadable answer: {e}"))?;
    let limit = bot.session_start_limit;
    Ok(BotGateway {
        url: bot.url,
        shards: bot.shards,
        max_concurrency: limit.max_concurrency.max(1),
        total: limit.total,
        remaining: limit.remaining,
        reset_after_ms: limit.reset_after,
    })
}
