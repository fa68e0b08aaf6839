//! REST (`/api/v10`), sans I/O: routes, authentication and Discord's rate limits.
//!
//! [`handle`] takes a request's method, path, authorization and body, the time, and the gateway (for
//! the world and the counters), and returns a [`Response`] for the server layer to write. Limits are
//! fixed windows: a bucket opens on its first request and resets `window` later, as Discord's
//! `X-RateLimit-Reset-After` describes; the global limit works the same way over every authorised
//! request.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Value, json};

use crate::config::RouteLimit;
use crate::gateway::Gateway;
use crate::protocol::intents;
use crate::stats::Violation;
use crate::world::{self, World};

/// A REST response for the server layer to write.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    /// HTTP status.
    pub status: u16,
    /// Extra headers (`X-RateLimit-*`, `Retry-After`).
    pub headers: Vec<(&'static str, String)>,
    /// JSON body.
    pub body: Value,
}

impl Response {
    fn json(status: u16, body: Value) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body,
        }
    }

    fn error(status: u16, message: &str, code: u32) -> Self {
        Self::json(status, json!({"message": message, "code": code}))
    }
}

/// One fixed rate-limit window.
#[derive(Debug, Clone, Copy)]
struct Window {
    limit: RouteLimit,
    used: u32,
    resets_at: Duration,
}

impl Window {
    fn new(limit: RouteLimit) -> Self {
        Self {
            limit,
            used: 0,
            resets_at: Duration::ZERO,
        }
    }

    fn roll(&mut self, now: Duration) {
        if now >= self.resets_at {
            self.used = 0;
            self.resets_at = now + self.limit.window;
        }
    }

    fn full(&self) -> bool {
        self.used >= self.limit.limit
    }

    fn reset_after(&self, now: Duration) -> Duration {
        self.resets_at.saturating_sub(now)
    }
}

/// Rate-limit state of every bucket and of the global limit.
#[derive(Debug)]
pub struct RestLimiter {
    global: Window,
    buckets: HashMap<String, Window>,
}

/// The verdict on one request.
#[derive(Debug, Clone, PartialEq)]
enum Verdict {
    Allowed,
    Global(Duration),
    Route(Duration),
}

impl RestLimiter {
    /// A limiter with this global limit.
    #[must_use]
    pub fn new(global: RouteLimit) -> Self {
        Self {
            global: Window::new(global),
            buckets: HashMap::new(),
        }
    }

    fn check(&mut self, now: Duration, key: &str, limit: RouteLimit) -> Verdict {
        self.global.roll(now);
        if self.global.full() {
            return Verdict::Global(self.global.reset_after(now));
        }
        let bucket = self
            .buckets
            .entry(key.to_owned())
            .or_insert_with(|| Window::new(limit));
        bucket.roll(now);
        if bucket.full() {
            return Verdict::Route(bucket.reset_after(now));
        }
        bucket.used += 1;
        self.global.used += 1;
        Verdict::Allowed
    }

    fn bucket(&self, key: &str) -> Option<&Window> {
        self.buckets.get(key)
    }
}

/// A matched route: its bucket and what it does.
enum Route {
    Gateway,
    GatewayBot,
    CurrentUser,
    CurrentApplication,
    CurrentUserGuilds,
    CurrentUserChannels,
    User(u64),
    Guild(u64),
    GuildChannels(u64),
    GuildRoles(u64),
    GuildMembers(u64),
    Channel(u64),
    Member(u64, u64),
    ChannelMessages(u64),
    CreateMessage(u64),
}

impl Route {
    fn parse(method: &str, path: &str) -> Result<Self, Response> {
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let id = |s: &str| s.parse::<u64>().map_err(|_| not_found());
        let route = match segments.as_slice() {
            ["gateway"] => Self::Gateway,
            ["gateway", "bot"] => Self::GatewayBot,
            ["users", "@me"] => Self::CurrentUser,
            ["applications" | "oauth2", "@me"] | ["oauth2", "applications", "@me"] => {
                Self::CurrentApplication
            }
            ["users", "@me", "guilds"] => Self::CurrentUserGuilds,
            ["users", "@me", "channels"] => Self::CurrentUserChannels,
            ["users", user] => Self::User(id(user)?),
            ["guilds", guild] => Self::Guild(id(guild)?),
            ["guilds", guild, "channels"] => Self::GuildChannels(id(guild)?),
            ["guilds", guild, "roles"] => Self::GuildRoles(id(guild)?),
            ["guilds", guild, "members"] => Self::GuildMembers(id(guild)?),
            ["channels", channel] => Self::Channel(id(channel)?),
            ["guilds", guild, "members", user] => Self::Member(id(guild)?, id(user)?),
            ["channels", channel, "messages"] if method == "GET" => {
                Self::ChannelMessages(id(channel)?)
            }
            ["channels", channel, "messages"] => Self::CreateMessage(id(channel)?),
            _ => return Err(not_found()),
        };
        let expected = if matches!(route, Self::CreateMessage(_)) {
            "POST"
        } else {
            "GET"
        };
        if method == expected {
            Ok(route)
        } else {
            Err(Response::error(405, "405: Method Not Allowed", 0))
        }
    }

    /// `(bucket key, bucket id)`: per route and top-level resource, as Discord groups them.
    fn bucket(&self) -> (String, &'static str) {
        match self {
            Self::Gateway | Self::GatewayBot => ("gateway".to_owned(), "b6d5f5e0c1a1"),
            Self::CurrentUser => ("users/@me".to_owned(), "a4d2c1f0e9b8"),
            Self::CurrentApplication => ("applications/@me".to_owned(), "c3b2a1f0e9d8"),
            Self::CurrentUserGuilds => ("users/@me/guilds".to_owned(), "d4c3b2a1f0e9"),
            Self::CurrentUserChannels => ("users/@me/channels".to_owned(), "e5d4c3b2a1f0"),
            Self::User(_) => ("users/{id}".to_owned(), "d2e1f0a9b8c7"),
            Self::Guild(g) => (format!("guilds/{g}"), "e1f0a9b8c7d6"),
            Self::GuildChannels(g) => (format!("guilds/{g}/channels"), "b7c6d5e4f3a2"),
            Self::GuildRoles(g) => (format!("guilds/{g}/roles"), "c8d7e6f5a4b3"),
            Self::Channel(c) => (format!("channels/{c}"), "f0a9b8c7d6e5"),
            Self::ChannelMessages(c) => (format!("channels/{c}/messages GET"), "a1b2c3d4e5f6"),
            // Listing members and getting one share Discord's bucket.
            Self::GuildMembers(g) | Self::Member(g, _) => {
                (format!("guilds/{g}/members"), "a9b8c7d6e5f4")
            }
            Self::CreateMessage(c) => (
                format!("channels/{c}/messages"),
                "80c17d2f203122d936070c88c8d10f33",
            ),
        }
    }
}

/// A list route's `limit` (1 to `max`, `default` when absent or unreadable) and `after` (0 when
/// absent) from its query.
fn page(query: Option<&str>, default: usize, max: usize) -> (usize, u64) {
    let (mut limit, mut after) = (default, 0);
    for pair in query.unwrap_or("").split('&') {
        match pair.split_once('=') {
            Some(("limit", n)) => limit = n.parse().unwrap_or(default),
            Some(("after", id)) => after = id.parse().unwrap_or(0),
            _ => {}
        }
    }
    (limit.clamp(1, max), after)
}

fn not_found() -> Response {
    Response::error(404, "404: Not Found", 0)
}

/// A REST request.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// HTTP method (`GET`, `POST`).
    pub method: &'a str,
    /// Path after `/api/v10`.
    pub path: &'a str,
    /// The query string, without `?` (`limit=100&after=5`).
    pub query: Option<&'a str>,
    /// The `Authorization` header.
    pub authorization: Option<&'a str>,
    /// Request body.
    pub body: &'a [u8],
}

/// Serves one REST request. `unix_now` is the wall clock in seconds (for `X-RateLimit-Reset`);
/// `gateway_url` is what `/gateway` returns.
pub fn handle(
    gateway: &mut Gateway,
    limiter: &mut RestLimiter,
    now: Duration,
    unix_now: f64,
    gateway_url: &str,
    request: Request<'_>,
) -> Response {
    gateway.record(|s| s.rest_requests += 1);
    let route = match Route::parse(request.method, request.path) {
        Ok(route) => route,
        Err(response) => return response,
    };
    if let Route::Gateway = route {
        return Response::json(200, json!({"url": gateway_url}));
    }
    let authorised = request
        .authorization
        .is_some_and(|a| a.starts_with("Bot ") && gateway.config().token_matches(a))
        && !gateway.token_reset();
    if !authorised {
        gateway.record(|s| *s.violations.entry(Violation::RestUnauthorized).or_default() += 1);
        return Response::error(401, "401: Unauthorized", 0);
    }
    let limit = if matches!(route, Route::CreateMessage(_)) {
        gateway.config().message_limit
    } else {
        gateway.config().route_limit
    };
    let (key, bucket_id) = route.bucket();
    match limiter.check(now, &key, limit) {
        Verdict::Allowed => {}
        Verdict::Global(retry) => {
            let mut response = rate_limited(gateway, retry, true);
            response
                .headers
                .push(("x-ratelimit-global", "true".to_owned()));
            response
                .headers
                .push(("x-ratelimit-scope", "global".to_owned()));
            return response;
        }
        Verdict::Route(retry) => {
            let mut response = rate_limited(gateway, retry, false);
            response
                .headers
                .extend(bucket_headers(limiter, &key, bucket_id, now, unix_now));
            response
                .headers
                .push(("x-ratelimit-scope", "user".to_owned()));
            return response;
        }
    }
    let mut response = serve(gateway, now, &route, &request);
    response.headers = bucket_headers(limiter, &key, bucket_id, now, unix_now);
    if gateway.config().scope_on_every_response && !response.headers.is_empty() {
        response
            .headers
            .push(("x-ratelimit-scope", "user".to_owned()));
    }
    response
}

/// A 429, counted: `retry_after` in the body, `Retry-After` in whole seconds.
fn rate_limited(gateway: &mut Gateway, retry: Duration, global: bool) -> Response {
    let kind = if global {
        Violation::RestGlobalRateLimit
    } else {
        Violation::RestRouteRateLimit
    };
    gateway.record(|s| {
        s.rest_429s += 1;
        *s.violations.entry(kind).or_default() += 1;
    });
    let mut response = Response::json(
        429,
        json!({"message": "You are being rate limited.", "retry_after": round3(retry), "global": global}),
    );
    response.headers.push((
        "retry-after",
        retry.as_secs_f64().ceil().max(1.0).to_string(),
    ));
    response
}

fn round3(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).ceil() / 1000.0
}

fn bucket_headers(
    limiter: &RestLimiter,
    key: &str,
    bucket_id: &'static str,
    now: Duration,
    unix_now: f64,
) -> Vec<(&'static str, String)> {
    let Some(window) = limiter.bucket(key) else {
        return Vec::new();
    };
    let reset_after = round3(window.reset_after(now));
    vec![
        ("x-ratelimit-limit", window.limit.limit.to_string()),
        (
            "x-ratelimit-remaining",
            window.limit.limit.saturating_sub(window.used).to_string(),
        ),
        (
            "x-ratelimit-reset",
            format!("{:.3}", unix_now + reset_after),
        ),
        ("x-ratelimit-reset-after", format!("{reset_after:.3}")),
        ("x-ratelimit-bucket", bucket_id.to_owned()),
    ]
}

fn serve(gateway: &mut Gateway, now: Duration, route: &Route, request: &Request<'_>) -> Response {
    let body = request.body;
    let world = gateway.world();
    match *route {
        Route::Gateway => unreachable!("answered before authorisation"),
        Route::GatewayBot => {
            let (total, remaining, reset_after) = gateway.session_budget(now);
            Response::json(
                200,
                json!({
                    "url": gateway.gateway_url(),
                    "shards": gateway.config().recommended_shards,
                    "session_start_limit": {
                        "total": total,
                        "remaining": remaining,
                        "reset_after": reset_after.as_millis() as u64,
                        "max_concurrency": gateway.config().max_concurrency,
                    },
                }),
            )
        }
        Route::CurrentUser => Response::json(200, World::bot_user()),
        Route::CurrentApplication => Response::json(
            200,
            json!({
                "id": world::BOT_USER_ID.to_string(),
                "name": "fleet-mock-bot",
                "icon": null,
                "description": "",
                "summary": "",
                "type": null,
                "bot_public": true,
                "bot_require_code_grant": false,
                "verify_key": "0".repeat(64),
                "flags": 0,
                "approximate_guild_count": world.guild_count(),
                "team": null,
                "owner": world::user_json(world::BOT_USER_ID + 1, "mock-owner"),
                "bot": World::bot_user(),
            }),
        ),
        Route::User(id) => world.user(id).map_or_else(
            || Response::error(404, "Unknown User", 10013),
            |u| Response::json(200, u),
        ),
        Route::Guild(id) => world.guild(id).map_or_else(
            || Response::error(404, "Unknown Guild", 10004),
            |g| Response::json(200, world.guild_json(&g)),
        ),
        Route::CurrentUserGuilds => {
            let (limit, after) = page(request.query, 200, 200);
            let guilds: Vec<Value> = world
                .guilds_after(after)
                .take(limit)
                .map(|g| {
                    let full = world.guild_json(&g);
                    json!({
                        "id": full["id"],
                        "name": full["name"],
                        "icon": null,
                        "banner": null,
                        "owner": false,
                        "permissions": "1071698660928",
                        "features": [],
                    })
                })
                .collect();
            Response::json(200, Value::Array(guilds))
        }
        // A bot's DM channels are not listed by Discord.
        Route::CurrentUserChannels => Response::json(200, json!([])),
        Route::GuildRoles(id) => world.guild(id).map_or_else(
            || Response::error(404, "Unknown Guild", 10004),
            |g| Response::json(200, world.guild_json(&g)["roles"].clone()),
        ),
        Route::GuildMembers(id) => match world.guild(id) {
            None => Response::error(404, "Unknown Guild", 10004),
            Some(g) => {
                let (limit, after) = page(request.query, 1, 1000);
                let mut users: Vec<u64> = g.member_ids().collect();
                users.sort_unstable();
                let members: Vec<Value> = users
                    .into_iter()
                    .filter(|u| *u > after)
                    .take(limit)
                    .filter_map(|u| world.member(&g, u))
                    .collect();
                Response::json(200, Value::Array(members))
            }
        },
        Route::GuildChannels(id) => world.guild(id).map_or_else(
            || Response::error(404, "Unknown Guild", 10004),
            |g| Response::json(200, world.guild_channels(&g)),
        ),
        Route::Channel(id) => world.channel(id).map_or_else(
            || Response::error(404, "Unknown Channel", 10003),
            |c| Response::json(200, c),
        ),
        Route::Member(guild, user) => match world.guild(guild) {
            None => Response::error(404, "Unknown Guild", 10004),
            Some(g) => world.member(&g, user).map_or_else(
                || Response::error(404, "Unknown Member", 10007),
                |m| Response::json(200, m),
            ),
        },
        Route::ChannelMessages(channel) => channel_messages(gateway, channel, request.query),
        Route::CreateMessage(channel) => create_message(gateway, channel, body),
    }
}

/// `GET /channels/{id}/messages`: newest first, `limit` 1 to 100 (50 when absent), and at most
/// one of `around`, `before` and `after` (Discord takes them in that order). Only the
/// [`MESSAGE_HISTORY`](crate::gateway::MESSAGE_HISTORY) newest messages of all channels are kept. Without
/// `MESSAGE_CONTENT` enabled for the application, content comes blank, as it does from Discord.
fn channel_messages(gateway: &Gateway, channel: u64, query: Option<&str>) -> Response {
    let world = gateway.world();
    let Some(guild) = world.guild_of_channel(channel).map(|g| g.id) else {
        return Response::error(404, "Unknown Channel", 10003);
    };
    let mut limit: usize = 50;
    let (mut around, mut before, mut after) = (None, None, None);
    for pair in query.unwrap_or("").split('&') {
        let Some((key, value)) = pair.split_once('=') else {
            continue;
        };
        let id = value.parse::<u64>().ok();
        match key {
            "limit" => limit = value.parse().unwrap_or(50),
            "around" => around = id,
            "before" => before = id,
            "after" => after = id,
            _ => {}
        }
    }
    if !(1..=100).contains(&limit) {
        return Response::json(
            400,
            json!({"message": "Invalid Form Body", "code": 50035, "errors": {"limit": {"_errors": [
                {"code": "NUMBER_TYPE_MAX", "message": "int value should be less than or equal to 100."}
            ]}}}),
        );
    }
    let kept: Vec<_> = gateway.history(channel).collect();
    let page: Vec<_> = if let Some(around) = around {
        // Half before (and the message itself), half after.
        let split = kept.partition_point(|m| m.id <= around);
        let start = split.saturating_sub(limit.div_ceil(2));
        let end = (start + limit).min(kept.len());
        kept[start..end].iter().rev().collect()
    } else if let Some(before) = before {
        kept.iter()
            .rev()
            .filter(|m| m.id < before)
            .take(limit)
            .collect()
    } else if let Some(after) = after {
        let mut page: Vec<_> = kept.iter().filter(|m| m.id > after).take(limit).collect();
        page.reverse();
        page
    } else {
        kept.iter().rev().take(limit).collect()
    };
    let content = gateway.config().privileged_intents & intents::MESSAGE_CONTENT != 0;
    let messages: Vec<Value> = page
        .into_iter()
        .map(|m| {
            let author = world.user(m.author).unwrap_or_else(World::bot_user);
            let message = world::message_json(m.id, Some(guild), channel, &author, &m.content);
            if content {
                message
            } else {
                crate::gateway::without_content(&message)
            }
        })
        .collect();
    Response::json(200, Value::Array(messages))
}

fn create_message(gateway: &mut Gateway, channel: u64, body: &[u8]) -> Response {
    let Some(guild) = gateway.world().guild_of_channel(channel).map(|g| g.id) else {
        return Response::error(404, "Unknown Channel", 10003);
    };
    let Ok(body) = serde_json::from_slice::<Value>(body) else {
        return Response::error(400, "The request body contains invalid JSON.", 50109);
    };
    let content = body["content"].as_str().unwrap_or("");
    let has_other = ["embeds", "components", "sticker_ids", "poll"]
        .iter()
        .any(|k| body[k].as_array().is_some_and(|a| !a.is_empty()) || body[k].is_object());
    if content.is_empty() && !has_other {
        return Response::error(400, "Cannot send an empty message", 50006);
    }
    if content.chars().count() > 2000 {
        return Response::json(
            400,
            json!({"message": "Invalid Form Body", "code": 50035, "errors": {"content": {"_errors": [
                {"code": "BASE_TYPE_MAX_LENGTH", "message": "Must be 2000 or fewer in length."}
            ]}}}),
        );
    }
    gateway.record(|s| {
        s.messages_created += 1;
        *s.messages_per_channel.entry(channel).or_default() += 1;
    });
    let id = gateway.mint();
    gateway.remember(channel, id, world::BOT_USER_ID, content.to_owned());
    let message = world::message_json(id, Some(guild), channel, &World::bot_user(), content);
    Response::json(200, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MockConfig;

    fn setup(config: MockConfig) -> (Gateway, RestLimiter) {
        let limiter = RestLimiter::new(config.global_limit);
        (Gateway::new(config, "ws://127.0.0.1:1".to_owned()), limiter)
    }

    fn get<'a>(path: &'a str, auth: Option<&'a str>) -> Request<'a> {
        Request {
            method: "GET",
            path,
            query: None,
            authorization: auth,
            body: b"",
        }
    }

    const AUTH: Option<&str> = Some("Bot mock-token");

    fn call(g: &mut Gateway, l: &mut RestLimiter, now: Duration, r: Request<'_>) -> Response {
        handle(g, l, now, 1_000.0, "ws://127.0.0.1:1", r)
    }

    #[test]
    fn gateway_needs_no_token_but_gateway_bot_does() {
        let (mut g, mut l) = setup(MockConfig::default());
        let r = call(&mut g, &mut l, Duration::ZERO, get("/gateway", None));
        assert_eq!(r.status, 200);
        assert_eq!(r.body["url"], "ws://127.0.0.1:1");
        let r = call(&mut g, &mut l, Duration::ZERO, get("/gateway/bot", None));
        assert_eq!(r.status, 401);
        assert_eq!(r.body, json!({"message": "401: Unauthorized", "code": 0}));
        let r = call(
            &mut g,
            &mut l,
            Duration::ZERO,
            get("/gateway/bot", Some("Bot wrong")),
        );
        assert_eq!(r.status, 401);
        let r = call(&mut g, &mut l, Duration::ZERO, get("/gateway/bot", AUTH));
        assert_eq!(r.status, 200);
        assert_eq!(r.body["session_start_limit"]["max_concurrency"], 1);
        assert_eq!(r.body["session_start_limit"]["remaining"], 1000);
        assert_eq!(
            g.stats(Duration::ZERO)
                .violations_of(Violation::RestUnauthorized),
            2
        );
    }

    #[test]
    fn lookups_find_world_objects_and_miss_with_discord_codes() {
        let (mut g, mut l) = setup(MockConfig::builder().guilds(3).build());
        let guild = g.world().guild_at(1).id;
        let channel = g.world().guild_at(1).channel(0);
        let member = g.world().guild_at(1).member(1);
        let now = Duration::ZERO;
        let r = call(&mut g, &mut l, now, get(&format!("/guilds/{guild}"), AUTH));
        assert_eq!(
            (r.status, r.body["id"].clone()),
            (200, json!(guild.to_string()))
        );
        let r = call(
            &mut g,
            &mut l,
            now,
            get(&format!("/channels/{channel}"), AUTH),
        );
        assert_eq!(r.body["guild_id"], json!(guild.to_string()));
        let r = call(
            &mut g,
            &mut l,
            now,
            get(&format!("/guilds/{guild}/members/{member}"), AUTH),
        );
        assert_eq!(r.body["user"]["id"], json!(member.to_string()));
        let r = call(
            &mut g,
            &mut l,
            now,
            get(&format!("/guilds/{guild}/channels"), AUTH),
        );
        let listed = r.body.as_array().expect("a channel list");
        assert_eq!(listed.len(), g.world().guild_at(1).channel_count());
        assert_eq!(listed[0]["id"], json!(channel.to_string()));
        assert_eq!(listed[0]["guild_id"], json!(guild.to_string()));
        let r = call(&mut g, &mut l, now, get("/guilds/1/channels", AUTH));
        assert_eq!((r.status, r.body["code"].clone()), (404, json!(10004)));
        let r = call(&mut g, &mut l, now, get(&format!("/users/{member}"), AUTH));
        assert_eq!(r.status, 200);
        let r = call(&mut g, &mut l, now, get("/users/1", AUTH));
        assert_eq!((r.status, r.body["code"].clone()), (404, json!(10013)));
        let r = call(&mut g, &mut l, now, get("/guilds/1", AUTH));
        assert_eq!(r.body["code"], 10004);
        let r = call(&mut g, &mut l, now, get("/nope", AUTH));
        assert_eq!(r.status, 404);
        let r = call(
            &mut g,
            &mut l,
            now,
            Request {
                method: "DELETE",
                ..get("/users/@me", AUTH)
            },
        );
        assert_eq!(r.status, 405);
    }

    #[test]
    fn the_read_routes_clients_call_at_startup_answer_as_discord_does() {
        fn with<'a>(path: &'a str, query: Option<&'a str>) -> Request<'a> {
            Request {
                query,
                ..get(path, AUTH)
            }
        }
        let (mut g, mut l) = setup(MockConfig::builder().guilds(5).build());
        let now = Duration::ZERO;
        // discord.py's login asks for the application first.
        let r = call(&mut g, &mut l, now, with("/oauth2/applications/@me", None));
        assert_eq!(
            (r.status, r.body["id"].clone()),
            (200, json!(world::BOT_USER_ID.to_string()))
        );
        // The bot's guilds, paged by id.
        let ids: Vec<u64> = g.world().guilds().map(|g| g.id).collect();
        let r = call(&mut g, &mut l, now, with("/users/@me/guilds", None));
        let listed = r.body.as_array().unwrap();
        assert_eq!(listed.len(), 5);
        assert_eq!(listed[0]["id"], json!(ids[0].to_string()));
        assert!(listed[0]["permissions"].is_string() && listed[0]["name"].is_string());
        let after = format!("limit=2&after={}", ids[1]);
        let r = call(&mut g, &mut l, now, with("/users/@me/guilds", Some(&after)));
        let page: Vec<Value> = r.body.as_array().unwrap().clone();
        assert_eq!(page.len(), 2);
        assert_eq!(page[0]["id"], json!(ids[2].to_string()));
        let r = call(&mut g, &mut l, now, with("/users/@me/channels", None));
        assert_eq!((r.status, r.body.clone()), (200, json!([])));
        // A guild's roles and members (members paged: 1 by default, at most 1000).
        let guild = ids[0];
        let roles = format!("/guilds/{guild}/roles");
        let r = call(&mut g, &mut l, now, with(&roles, None));
        assert_eq!(r.body.as_array().unwrap()[0]["name"], "@everyone");
        let members = format!("/guilds/{guild}/members");
        let r = call(&mut g, &mut l, now, with(&members, None));
        assert_eq!(r.body.as_array().unwrap().len(), 1);
        let everyone = g.world().guild_at(0).member_count();
        let r = call(&mut g, &mut l, now, with(&members, Some("limit=100000")));
        let all = r.body.as_array().unwrap().clone();
        assert_eq!(all.len(), everyone.min(1000));
        let first = all[0]["user"]["id"].as_str().unwrap().to_owned();
        let after = format!("limit=1000&after={first}");
        let r = call(&mut g, &mut l, now, with(&members, Some(&after)));
        assert_eq!(r.body.as_array().unwrap().len(), all.len() - 1);
        let r = call(&mut g, &mut l, now, with("/guilds/1/members", None));
        assert_eq!((r.status, r.body["code"].clone()), (404, json!(10004)));
        let r = call(&mut g, &mut l, now, with("/guilds/1/roles", None));
        assert_eq!(r.body["code"], 10004);
    }

    #[test]
    fn route_bucket_limits_with_headers_then_429_then_resets() {
        let (mut g, mut l) = setup(MockConfig::default());
        let channel = g.world().guild_at(0).channel(0);
        let path = format!("/channels/{channel}/messages");
        let post = Request {
            method: "POST",
            path: &path,
            query: None,
            authorization: AUTH,
            body: br#"{"content":"hi"}"#,
        };
        let mut now = Duration::ZERO;
        for remaining in (0..5).rev() {
            let r = call(&mut g, &mut l, now, post);
            assert_eq!(r.status, 200);
            let header = |name| {
                r.headers
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, v)| v.clone())
            };
            assert_eq!(header("x-ratelimit-remaining"), Some(remaining.to_string()));
            assert_eq!(header("x-ratelimit-limit"), Some("5".to_owned()));
            now += Duration::from_millis(100);
        }
        let r = call(&mut g, &mut l, now, post);
        assert_eq!(r.status, 429);
        assert_eq!(r.body["global"], false);
        assert!((r.body["retry_after"].as_f64().unwrap() - 4.5).abs() < 0.01);
        assert!(
            r.headers
                .contains(&("x-ratelimit-scope", "user".to_owned()))
        );
        now = Duration::from_secs(5);
        assert_eq!(call(&mut g, &mut l, now, post).status, 200);
        let stats = g.stats(now);
        assert_eq!((stats.rest_429s, stats.messages_created), (1, 6));
        assert_eq!(stats.violations_of(Violation::RestRouteRateLimit), 1);
    }

    #[test]
    fn global_limit_applies_across_routes() {
        let (mut g, mut l) = setup(MockConfig::builder().guilds(60).build());
        let ids: Vec<u64> = g.world().guilds().map(|g| g.id).collect();
        let now = Duration::from_millis(10);
        for id in &ids[..50] {
            assert_eq!(
                call(&mut g, &mut l, now, get(&format!("/guilds/{id}"), AUTH)).status,
                200
            );
        }
        let r = call(
            &mut g,
            &mut l,
            now,
            get(&format!("/guilds/{}", ids[50]), AUTH),
        );
        assert_eq!(r.status, 429);
        assert_eq!(r.body["global"], true);
        assert!(
            r.headers
                .contains(&("x-ratelimit-global", "true".to_owned()))
        );
        let later = now + Duration::from_secs(1);
        assert_eq!(
            call(
                &mut g,
                &mut l,
                later,
                get(&format!("/guilds/{}", ids[50]), AUTH)
            )
            .status,
            200
        );
        assert_eq!(
            g.stats(later).violations_of(Violation::RestGlobalRateLimit),
            1
        );
    }

    #[test]
    fn create_message_validates_its_body() {
        let (mut g, mut l) = setup(MockConfig::default());
        let channel = g.world().guild_at(0).channel(0);
        let path = format!("/channels/{channel}/messages");
        let post = |body: &'static [u8]| Request {
            method: "POST",
            path: "",
            query: None,
            authorization: AUTH,
            body,
        };
        let now = Duration::ZERO;
        let r = call(
            &mut g,
            &mut l,
            now,
            Request {
                path: &path,
                ..post(b"{")
            },
        );
        assert_eq!(r.body["code"], 50109);
        let r = call(
            &mut g,
            &mut l,
            now,
            Request {
                path: &path,
                ..post(br#"{"content":""}"#)
            },
        );
        assert_eq!(r.body["code"], 50006);
        let long = format!(r#"{{"content":"{}"}}"#, "x".repeat(2001));
        let r = call(
            &mut g,
            &mut l,
            now,
            Request {
                path: &path,
                body: long.as_bytes(),
                ..post(b"")
            },
        );
        assert_eq!(r.body["code"], 50035);
        let r = call(
            &mut g,
            &mut l,
            now,
            Request {
                path: &path,
                ..post(br#"{"content":"ok"}"#)
            },
        );
        assert_eq!(r.status, 200);
        assert_eq!(r.body["content"], "ok");
        assert_eq!(r.body["channel_id"], json!(channel.to_string()));
    }

    #[test]
    fn channel_messages_page_newest_first_around_before_and_after() {
        let config = MockConfig::builder()
            .guilds(1)
            .channels_per_guild(1)
            .member_add_every(0)
            .build();
        let (mut g, mut l) = setup(config);
        let channel = g.world().guild_at(0).channel(0);
        let mut out = Vec::new();
        let mut ids: Vec<u64> = (0..5).map(|_| g.produce_event(0, &mut out)).collect();
        let path = format!("/channels/{channel}/messages");
        let sent = call(
            &mut g,
            &mut l,
            Duration::ZERO,
            Request {
                method: "POST",
                path: &path,
                query: None,
                authorization: AUTH,
                body: br#"{"content":"mine"}"#,
            },
        );
        ids.push(sent.body["id"].as_str().unwrap().parse().unwrap());
        let list = |g: &mut Gateway, l: &mut RestLimiter, query: &str| -> Vec<u64> {
            let r = call(
                g,
                l,
                Duration::ZERO,
                Request {
                    query: Some(query),
                    ..get(&path, AUTH)
                },
            );
            assert_eq!(r.status, 200, "{query}: {}", r.body);
            r.body
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["id"].as_str().unwrap().parse().unwrap())
                .collect()
        };
        let newest_first: Vec<u64> = ids.iter().rev().copied().collect();
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "ids grow with time: {ids:?}"
        );
        assert_eq!(list(&mut g, &mut l, ""), newest_first);
        assert_eq!(list(&mut g, &mut l, "limit=2"), newest_first[..2]);
        let before = format!("before={}&limit=2", ids[3]);
        assert_eq!(list(&mut g, &mut l, &before), vec![ids[2], ids[1]]);
        let after = format!("after={}&limit=2", ids[1]);
        assert_eq!(list(&mut g, &mut l, &after), vec![ids[3], ids[2]]);
        let around = format!("around={}&limit=3", ids[2]);
        assert_eq!(list(&mut g, &mut l, &around), vec![ids[3], ids[2], ids[1]]);
        let r = call(
            &mut g,
            &mut l,
            Duration::ZERO,
            Request {
                query: Some("limit=101"),
                ..get(&path, AUTH)
            },
        );
        assert_eq!((r.status, &r.body["code"]), (400, &json!(50035)));
        let r = call(
            &mut g,
            &mut l,
            Duration::ZERO,
            get("/channels/42/messages", AUTH),
        );
        assert_eq!((r.status, &r.body["code"]), (404, &json!(10003)));
        let r = call(&mut g, &mut l, Duration::ZERO, get(&path, AUTH));
        assert_eq!(r.body[0]["content"], "mine");
        assert_eq!(r.body[1]["content"], "event 4");
    }

    #[test]
    fn channel_messages_come_blank_without_the_message_content_intent() {
        let config = MockConfig::builder()
            .guilds(1)
            .member_add_every(0)
            .privileged_intents(intents::GUILD_MEMBERS)
            .build();
        let (mut g, mut l) = setup(config);
        let channel = g.world().guild_at(0).channel(0);
        g.produce_event(0, &mut Vec::new());
        let path = format!("/channels/{channel}/messages");
        let r = call(&mut g, &mut l, Duration::ZERO, get(&path, AUTH));
        assert_eq!(r.body[0]["content"], "");
    }
}
