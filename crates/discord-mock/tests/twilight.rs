//! Stock twilight 0.18 clients against the mock: they must not tell it from Discord.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use common::{TOKEN, WAIT};
use discord_mock::{MockConfig, MockDiscord, RouteLimit, Violation};
use tokio::sync::{Mutex, mpsc, oneshot};
use twilight_gateway::queue::{InMemoryQueue, Queue};
use twilight_gateway::{
    ConfigBuilder, Event, EventTypeFlags, Intents, Shard, ShardId, StreamExt as _,
};
use twilight_model::gateway::payload::incoming::GuildCreate;
use twilight_model::id::Id;

fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A queue that lets one shard identify per `interval` (one bucket), as a shard manager must.
#[derive(Clone, Debug)]
struct PacedQueue {
    next: Arc<Mutex<tokio::time::Instant>>,
    interval: Duration,
}

impl PacedQueue {
    fn new(interval: Duration) -> Self {
        Self {
            next: Arc::new(Mutex::new(tokio::time::Instant::now())),
            interval,
        }
    }
}

impl Queue for PacedQueue {
    fn enqueue(&self, _shard: u32) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        let (next, interval) = (self.next.clone(), self.interval);
        tokio::spawn(async move {
            let slot = {
                let mut next = next.lock().await;
                let slot = (*next).max(tokio::time::Instant::now());
                *next = slot + interval;
                slot
            };
            tokio::time::sleep_until(slot).await;
            let _ = tx.send(());
        });
        rx
    }
}

/// What a shard saw.
#[derive(Debug)]
enum Seen {
    Ready { shard: u32, guilds: usize },
    Guild { channels: usize, members: usize },
    Event { id: u64 },
    Resumed { shard: u32 },
    HeartbeatAck,
    Error(#[allow(dead_code, reason = "read through Debug in panics")] String),
}

fn run_shard<Q: Queue + Send + Sync + Unpin + 'static>(
    mut shard: Shard<Q>,
    seen: mpsc::UnboundedSender<Seen>,
) {
    tokio::spawn(async move {
        let id = shard.id().number();
        while let Some(item) = shard.next_event(EventTypeFlags::all()).await {
            let observed = match item {
                Ok(Event::Ready(ready)) => Seen::Ready {
                    shard: id,
                    guilds: ready.guilds.len(),
                },
                Ok(Event::GuildCreate(guild)) => match *guild {
                    GuildCreate::Available(g) => Seen::Guild {
                        channels: g.channels.len(),
                        members: g.members.len(),
                    },
                    GuildCreate::Unavailable(g) => {
                        Seen::Error(format!("guild {} unavailable", g.id))
                    }
                },
                Ok(Event::MessageCreate(m)) => Seen::Event { id: m.id.get() },
                Ok(Event::MemberAdd(m)) => Seen::Event {
                    id: m.user.id.get(),
                },
                Ok(Event::Resumed) => Seen::Resumed { shard: id },
                Ok(Event::GatewayHeartbeatAck) => Seen::HeartbeatAck,
                Ok(_) => continue,
                Err(error) => Seen::Error(error.to_string()),
            };
            if seen.send(observed).is_err() {
                break;
            }
        }
    });
}

async fn next(seen: &mut mpsc::UnboundedReceiver<Seen>) -> Seen {
    tokio::time::timeout(WAIT, seen.recv())
        .await
        .expect("the shards saw something in time")
        .expect("shards running")
}

#[tokio::test]
async fn twilight_gets_ready_fills_its_cache_and_resumes_without_losing_an_event() {
    install_crypto();
    let interval = Duration::from_millis(500);
    let mock = MockDiscord::start(
        MockConfig::builder()
            .guilds(8)
            .recommended_shards(2)
            .identify_interval(interval)
            .heartbeat_interval(Duration::from_millis(300))
            .build(),
    )
    .await
    .unwrap();
    let intents = Intents::GUILDS
        | Intents::GUILD_MESSAGES
        | Intents::GUILD_MEMBERS
        | Intents::MESSAGE_CONTENT;
    let config = ConfigBuilder::new(TOKEN.to_owned(), intents)
        .proxy_url(mock.gateway_url())
        .queue(PacedQueue::new(interval))
        .build();
    let (tx, mut seen) = mpsc::unbounded_channel();
    for id in 0..2 {
        run_shard(
            Shard::with_config(ShardId::new(id, 2), config.clone()),
            tx.clone(),
        );
    }

    let (mut ready, mut guilds, mut acks) = (HashSet::new(), 0, 0);
    while ready.len() < 2 || guilds < 8 || acks < 2 {
        match next(&mut seen).await {
            Seen::Ready { shard, guilds } => {
                assert_eq!(guilds, 4, "READY lists only the shard's guilds");
                ready.insert(shard);
            }
            Seen::Guild { channels, members } => {
                assert_eq!(
                    (channels, members),
                    (3, 5),
                    "GUILD_CREATE carries channels and members"
                );
                guilds += 1;
            }
            Seen::HeartbeatAck => acks += 1,
            other => panic!("unexpected before events start: {other:?}"),
        }
    }

    mock.start_events(Some(10.0)).unwrap();
    let mut ids = Vec::new();
    while ids.len() < 20 {
        match next(&mut seen).await {
            Seen::Event { id } => ids.push(id),
            Seen::HeartbeatAck => {}
            other => panic!("unexpected: {other:?}"),
        }
    }
    assert_eq!(mock.close_shard(0, 4000), Ok(1));
    let mut resumed = false;
    while !resumed || ids.len() < 60 {
        match next(&mut seen).await {
            Seen::Event { id } => ids.push(id),
            Seen::Resumed { shard } => {
                assert_eq!(shard, 0);
                resumed = true;
            }
            Seen::HeartbeatAck => {}
            other => panic!("unexpected: {other:?}"),
        }
    }
    mock.stop_events();
    // Every event the mock produced must reach the client: wait for the client to confirm them.
    mock.wait_until(WAIT, "every event confirmed", |m| {
        m.event_report().in_flight == 0
    })
    .await
    .unwrap();
    let report = mock.event_report();
    while (ids.len() as u64) < report.produced {
        if let Seen::Event { id } = next(&mut seen).await {
            ids.push(id);
        }
    }
    let unique: HashSet<u64> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "twilight saw no event twice");
    let produced: HashSet<u64> = mock.event_ids().into_iter().collect();
    assert_eq!(unique, produced, "twilight saw exactly the produced events");
    assert_eq!(
        (report.lost, report.duplicates, report.delivered),
        (0, 0, report.produced)
    );

    let stats = mock.stats();
    assert_eq!(stats.identifies, 2);
    assert_eq!(stats.resumes, 1);
    assert_eq!(stats.total_violations(), 0, "{:?}", stats.violations);
    assert!(stats.heartbeats >= 2);
}

#[tokio::test]
async fn a_too_early_identify_gets_op9_and_twilight_recovers() {
    install_crypto();
    let mock = MockDiscord::start(
        MockConfig::builder()
            .guilds(4)
            .recommended_shards(2)
            .identify_interval(Duration::from_millis(300))
            .heartbeat_interval(Duration::from_millis(300))
            .build(),
    )
    .await
    .unwrap();
    // max_concurrency 0 makes twilight's queue a no-op: both shards identify at once.
    let config = ConfigBuilder::new(TOKEN.to_owned(), Intents::GUILDS)
        .proxy_url(mock.gateway_url())
        .queue(InMemoryQueue::new(0, 0, Duration::ZERO, 0))
        .build();
    let (tx, mut seen) = mpsc::unbounded_channel();
    for id in 0..2 {
        run_shard(
            Shard::with_config(ShardId::new(id, 2), config.clone()),
            tx.clone(),
        );
    }
    let mut ready = HashSet::new();
    while ready.len() < 2 {
        if let Seen::Ready { shard, .. } = next(&mut seen).await {
            ready.insert(shard);
        }
    }
    let stats = mock.stats();
    assert!(
        stats.violations_of(Violation::IdentifyTooEarly) >= 1,
        "{:?}",
        stats.violations
    );
    assert_eq!(stats.identifies, 2);
}

#[tokio::test]
async fn twilight_http_reads_the_rest_routes_and_obeys_their_limits() {
    install_crypto();
    let mock = MockDiscord::start(
        MockConfig::builder()
            .guilds(3)
            .recommended_shards(3)
            .max_concurrency(2)
            .message_limit(RouteLimit {
                limit: 5,
                window: Duration::from_millis(300),
            })
            .build(),
    )
    .await
    .unwrap();
    let http = twilight_http::Client::builder()
        .proxy(mock.addr().to_string(), true)
        .token(format!("Bot {TOKEN}"))
        .build();
    let info = http
        .gateway()
        .authed()
        .await
        .unwrap()
        .model()
        .await
        .unwrap();
    assert_eq!(info.url, mock.gateway_url());
    assert_eq!(
        (info.shards, info.session_start_limit.max_concurrency),
        (3, 2)
    );
    assert_eq!(info.session_start_limit.remaining, 1000);
    let me = http.current_user().await.unwrap().model().await.unwrap();
    assert!(me.bot);

    let guild_id = mock.guild_ids()[1];
    let guild = http
        .guild(Id::new(guild_id))
        .await
        .unwrap()
        .model()
        .await
        .unwrap();
    assert_eq!(guild.id.get(), guild_id);
    let channel_id = guild.system_channel_id.unwrap();
    let channel = http
        .channel(channel_id)
        .await
        .unwrap()
        .model()
        .await
        .unwrap();
    assert_eq!(channel.guild_id.map(Id::get), Some(guild_id));
    let owner = http
        .guild_member(guild.id, guild.owner_id)
        .await
        .unwrap()
        .model()
        .await
        .unwrap();
    assert_eq!(owner.user.id, guild.owner_id);
    let user = http
        .user(guild.owner_id)
        .await
        .unwrap()
        .model()
        .await
        .unwrap();
    assert_eq!(user.id, guild.owner_id);
    let missing = http.guild(Id::new(12345)).await.unwrap_err();
    assert!(missing.to_string().contains("404"), "{missing}");

    // Twelve messages at five per window: twilight's ratelimiter must read the headers and wait.
    for i in 0..12 {
        let message = http
            .create_message(channel_id)
            .content(&format!("m{i}"))
            .await
            .unwrap()
            .model()
            .await
            .unwrap();
        assert_eq!(message.content, format!("m{i}"));
    }
    let stats = mock.stats();
    assert_eq!(stats.messages_created, 12);
    assert_eq!(stats.rest_429s, 0, "the headers announced every limit");
}

/// With `X-RateLimit-Scope` on 429s only, as Discord documents it, twilight-http 0.18 learns no
/// bucket from successful responses and runs into the limit (it waits and retries on the 429):
/// why the mock sends the header on every response by default.
#[tokio::test]
async fn twilight_http_needs_the_scope_header_on_successful_responses() {
    install_crypto();
    let mut rest_429s = Vec::new();
    for on_every_response in [true, false] {
        let mock = MockDiscord::start(
            MockConfig::builder()
                .guilds(1)
                .message_limit(RouteLimit {
                    limit: 2,
                    window: Duration::from_millis(500),
                })
                .scope_on_every_response(on_every_response)
                .build(),
        )
        .await
        .unwrap();
        let http = twilight_http::Client::builder()
            .proxy(mock.addr().to_string(), true)
            .token(format!("Bot {TOKEN}"))
            .build();
        let channel = Id::new(mock.guild(mock.guild_ids()[0]).unwrap().text_channels[0]);
        for _ in 0..3 {
            http.create_message(channel).content("m").await.unwrap();
        }
        assert_eq!(mock.stats().messages_created, 3);
        rest_429s.push(mock.stats().rest_429s);
    }
    assert_eq!(
        rest_429s,
        vec![0, 1],
        "429s with the header on every response, and without"
    );
}
