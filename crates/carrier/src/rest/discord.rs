//! What the proxy reads of Discord's REST conventions: a request's rate-limit route and method,
//! and, in Discord's answers, the rate-limit headers and how long a 429 asks to wait.

use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, Method, header};
use serde::Deserialize;
use twilight_http_ratelimiting::RateLimitHeaders;

/// The rate-limit route of a request path: `/api/v10/channels/1/messages` → `channels/1/messages`.
pub(super) fn route_path(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/api/")?;
    let rest = match rest.split_once('/') {
        Some((version, rest)) if version.starts_with('v') && version[1..].parse::<u8>().is_ok() => {
            rest
        }
        _ => rest,
    };
    let rest = rest.trim_end_matches('/');
    (!rest.is_empty()).then_some(rest)
}

pub(super) fn limiter_method(method: &Method) -> Option<twilight_http_ratelimiting::Method> {
    use twilight_http_ratelimiting::Method as M;
    Some(match *method {
        Method::GET => M::Get,
        Method::POST => M::Post,
        Method::PUT => M::Put,
        Method::PATCH => M::Patch,
        Method::DELETE => M::Delete,
        _ => return None,
    })
}

/// How long a 429 asks to wait: the body's `retry_after` (seconds, fractional), else the
/// `Retry-After` header, else one second.
pub(super) fn retry_after(headers: &HeaderMap, body: &[u8]) -> Duration {
    #[derive(Deserialize)]
    struct Limited {
        retry_after: f64,
    }
    let seconds = serde_json::from_slice::<Limited>(body)
        .ok()
        .map(|l| l.retry_after)
        .or_else(|| {
            headers
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<f64>().ok())
        })
        .unwrap_or(1.0);
    Duration::from_secs_f64(seconds.clamp(0.0, 3600.0))
}

/// Parses Discord's rate-limit headers the way twilight-http does: a user bucket, a shared
/// resource (treated as exhausted until `Retry-After`), or nothing to learn (global or absent).
pub(super) fn ratelimit_headers(headers: &HeaderMap) -> Option<RateLimitHeaders> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let bucket = || {
        headers
            .get(RateLimitHeaders::BUCKET)
            .map(|v| v.as_bytes().to_vec())
    };
    match headers
        .get(RateLimitHeaders::SCOPE)
        .map(HeaderValue::as_bytes)
    {
        Some(b"shared") => {
            let retry = text(header::RETRY_AFTER.as_str())?.parse().ok()?;
            Some(RateLimitHeaders::shared(bucket()?, retry))
        }
        Some(b"user") => {
            let reset_after: f64 = text(RateLimitHeaders::RESET_AFTER)?.parse().ok()?;
            Some(RateLimitHeaders {
                bucket: bucket()?,
                limit: text(RateLimitHeaders::LIMIT)?.parse().ok()?,
                remaining: text(RateLimitHeaders::REMAINING)?.parse().ok()?,
                reset_at: std::time::Instant::now()
                    + Duration::from_secs_f64(reset_after.clamp(0.0, 3600.0)),
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_paths_drop_the_api_prefix_and_version() {
        assert_eq!(
            route_path("/api/v10/channels/1/messages"),
            Some("channels/1/messages")
        );
        assert_eq!(route_path("/api/v9/users/@me/"), Some("users/@me"));
        assert_eq!(route_path("/api/gateway/bot"), Some("gateway/bot"));
        assert_eq!(route_path("/api/v10/"), None);
        assert_eq!(route_path("/channels/1"), None);
    }

    #[test]
    fn user_bucket_headers_parse_and_others_teach_nothing() {
        let mut headers = HeaderMap::new();
        headers.insert("x-ratelimit-scope", HeaderValue::from_static("user"));
        headers.insert("x-ratelimit-bucket", HeaderValue::from_static("abc"));
        headers.insert("x-ratelimit-limit", HeaderValue::from_static("5"));
        headers.insert("x-ratelimit-remaining", HeaderValue::from_static("4"));
        headers.insert("x-ratelimit-reset-after", HeaderValue::from_static("2.5"));
        let parsed = ratelimit_headers(&headers).unwrap();
        assert_eq!((parsed.limit, parsed.remaining), (5, 4));
        assert_eq!(parsed.bucket, b"abc");
        headers.insert("x-ratelimit-scope", HeaderValue::from_static("global"));
        assert!(ratelimit_headers(&headers).is_none());
        headers.remove("x-ratelimit-scope");
        assert!(ratelimit_headers(&headers).is_none());
    }

    #[test]
    fn retry_after_prefers_the_precise_body() {
        let mut headers = HeaderMap::new();
        headers.insert(header::RETRY_AFTER, HeaderValue::from_static("3"));
        let body =
            br#"{"message":"You are being rate limited.","retry_after":0.25,"global":false}"#;
        assert_eq!(retry_after(&headers, body), Duration::from_millis(250));
        assert_eq!(retry_after(&headers, b"{}"), Duration::from_secs(3));
        assert_eq!(retry_after(&HeaderMap::new(), b""), Duration::from_secs(1));
    }
}
