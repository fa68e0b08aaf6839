"""discord.py 2 against discord-mock: two shards (zlib-stream, as discord.py always asks), caches
filled by GUILD_CREATE and member chunks, a message handler, one message sent. Prints one line per
observation for the test that drives it; exits when stdin closes."""

import asyncio
import os
import sys

import discord
from discord.http import Route

Route.BASE = os.environ["MOCK_HTTP"] + "/api/v10"
discord.utils.setup_logging(level=os.environ.get("CLIENT_LOG", "WARNING"))

intents = discord.Intents.default()
intents.members = True
intents.message_content = True
# No shard_count: discord.py asks /gateway/bot for the count and the URL (with a count it
# connects to the default gateway).
client = discord.AutoShardedClient(intents=intents)


def say(line):
    print(line, flush=True)


@client.event
async def on_ready():
    channels = sum(len(g.text_channels) for g in client.guilds)
    members = sum(len(g.members) for g in client.guilds)
    say(f"ready {len(client.shards)} {len(client.guilds)} {channels} {members}")
    channel = client.guilds[0].text_channels[0]
    sent = await channel.send("hello from discord.py")
    say(f"sent {sent.id}")


@client.event
async def on_shard_resumed(shard):
    say(f"resumed {shard}")


@client.event
async def on_message(message):
    if message.author.id != client.user.id:
        say(f"message {message.id} {message.content}")


async def main():
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    runner = asyncio.create_task(client.start(os.environ["MOCK_TOKEN"]))
    stdin_closed = asyncio.create_task(reader.read())
    done, _ = await asyncio.wait({runner, stdin_closed}, return_when=asyncio.FIRST_COMPLETED)
    if runner in done:
        say(f"error {runner.exception()!r}")
        sys.exit(1)
    await client.close()


asyncio.run(main())
