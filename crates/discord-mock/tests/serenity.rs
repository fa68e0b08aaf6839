//! A stock serenity 0.12 client against the mock. Serenity turns any payload it cannot parse into
//! `Event::Unknown` without a word, so these tests prove the handlers really fire.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{TOKEN, WAIT};
use discord_mock::{MockConfig, MockDiscord};
use serenity::all::{
    Context, EventHandler, GatewayIntents, Guild, GuildId, Member, Message, Ready, ResumedEvent,
    ShardId,
};
use serenity::http::HttpBuilder;
use tokio::sync::mpsc;

#[derive(Debug)]
enum Seen {
    Ready {
        guilds: usize,
        shard: Option<u32>,
    },
    Guild {
        channels: usize,
        members: usize,
        cached: bool,
    },
    Event {
        id: u64,
    },
    Resumed,
}

struct Handler(mpsc::UnboundedSender<Seen>);

#[serenity::async_trait]
impl EventHandler for Handler {
    async fn ready(&self, _: Context, ready: Ready) {
        let _ = self.0.send(Seen::Ready {
            guilds: ready.guilds.len(),
            shard: ready.shard.map(|s| s.id.0),
        });
    }

    async fn guild_create(&self, ctx: Context, guild: Guild, _: Option<bool>) {
        let cached = ctx
            .cache
            .guild(guild.id)
            .is_some_and(|g| g.members.len() == guild.members.len());
        let _ = self.0.send(Seen::Guild {
            channels: guild.channels.len(),
            members: guild.members.len(),
            cached,
        });
    }

    async fn message(&self, _: Context, message: Message) {
        let _ = self.0.send(Seen::Event {
            id: message.id.get(),
        });
    }

    async fn guild_member_addition(&self, _: Context, member: Member) {
        let _ = self.0.send(Seen::Event {
            id: member.user.id.get(),
        });
    }

    async fn resume(&self, _: Context, _: ResumedEvent) {
        let _ = self.0.send(Seen::Resumed);
    }
}

async fn next(seen: &mut mpsc::UnboundedReceiver<Seen>) -> Seen {
    tokio::time::timeout(WAIT, seen.recv())
        .await
        .expect("serenity saw something in time")
        .expect("client running")
}

#[tokio::test]
async fn serenity_handlers_fire_caches_fill_and_a_resume_loses_nothing() {
    let mock = MockDiscord::start(
        MockConfig::builder()
            .guilds(4)
            .identify_interval(Duration::from_millis(200))
            .heartbeat_interval(Duration::from_millis(300))
            .build(),
    )
    .await
    .unwrap();
    let http = HttpBuilder::new(TOKEN)
        .proxy(mock.http_url())
        .ratelimiter_disabled(true)
        .build();
    let (tx, mut seen) = mpsc::unbounded_channel();
    let intents = GatewayIntents::GUILDS
        | GatewayIntents::GUILD_MESSAGES
        | GatewayIntents::GUILD_MEMBERS
        | GatewayIntents::MESSAGE_CONTENT;
    let mut client = serenity::client::ClientBuilder::new_with_http(http, intents)
        .event_handler(Handler(tx))
        .await
        .expect("serenity client builds against the mock");
    let manager = client.shard_manager.clone();
    let cache = client.cache.clone();
    tokio::spawn(async move { client.start_shard(0, 1).await });

    let (mut ready, mut guilds) = (false, 0);
    while !ready || guilds < 4 {
        match next(&mut seen).await {
            Seen::Ready { guilds, shard } => {
                assert_eq!((guilds, shard), (4, Some(0)));
                ready = true;
            }
            Seen::Guild {
                channels,
                members,
                cached,
            } => {
                assert_eq!((channels, members, cached), (3, 5, true));
                guilds += 1;
            }
            other => panic!("unexpected before events start: {other:?}"),
        }
    }
    assert_eq!(cache.guild_count(), 4);
    let guild = GuildId::new(mock.guild_ids()[0]);
    assert_eq!(cache.guild(guild).map(|g| g.channels.len()), Some(3));

    // Heartbeats are acknowledged: the shard runner records a latency.
    let acked = async {
        loop {
            if manager
                .runners
                .lock()
                .await
                .get(&ShardId(0))
                .is_some_and(|r| r.latency.is_some())
            {
                return;
            }
            mock.wait_until(WAIT, "another heartbeat", {
                let beats = mock.stats().heartbeats;
                move |m| m.stats().heartbeats > beats
            })
            .await
            .unwrap();
        }
    };
    tokio::time::timeout(WAIT, acked)
        .await
        .expect("serenity records a heartbeat latency");

    mock.start_events(Some(5.0)).unwrap();
    let mut ids = Vec::new();
    while ids.len() < 20 {
        match next(&mut seen).await {
            Seen::Event { id } => ids.push(id),
            other => panic!("unexpected: {other:?}"),
        }
    }
    assert_eq!(mock.close_shard(0, 4000), Ok(1));
    let mut resumed = false;
    while !resumed || ids.len() < 50 {
        match next(&mut seen).await {
            Seen::Event { id } => ids.push(id),
            Seen::Resumed => resumed = true,
            other => panic!("unexpected: {other:?}"),
        }
    }
    mock.stop_events();
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
    assert_eq!(unique.len(), ids.len(), "serenity saw no event twice");
    let produced: HashSet<u64> = mock.event_ids().into_iter().collect();
    assert_eq!(unique, produced);
    assert_eq!((report.lost, report.duplicates), (0, 0));

    let stats = mock.stats();
    assert_eq!((stats.identifies, stats.resumes), (1, 1));
    assert_eq!(stats.total_violations(), 0, "{:?}", stats.violations);

    manager.shutdown_all().await;
    mock.wait_until(WAIT, "session ended by close 1000", |m| {
        m.sessions().is_empty()
    })
    .await
    .unwrap();
}
