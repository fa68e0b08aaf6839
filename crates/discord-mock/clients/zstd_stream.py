"""A gateway client by hand over compress=zstd-stream, decoded by the zstandard package's
streaming decompressor (one per connection, as Discord's documentation asks): two shards, READY,
GUILD_CREATE, MESSAGE_CREATE, heartbeats that confirm sequences, and a resume on op 7. Prints one
line per observation for the test that drives it; exits when stdin closes."""

import asyncio
import json
import os
import sys

import aiohttp
import zstandard

HTTP = os.environ["MOCK_HTTP"]
TOKEN = os.environ["MOCK_TOKEN"]
INTENTS = 1 | 1 << 1 | 1 << 9 | 1 << 15
QUERY = "?v=10&encoding=json&compress=zstd-stream"
guilds = {}
channels = set()


def say(line):
    print(line, flush=True)


class Shard:
    def __init__(self, session, shard, total, url):
        self.http, self.shard, self.total, self.url = session, shard, total, url
        self.session_id = None
        self.seq = None
        self.ready = asyncio.Event()

    async def run(self):
        resume_url = None
        while True:
            url = (resume_url or self.url) + QUERY
            async with self.http.ws_connect(url) as ws:
                inflate = zstandard.ZstdDecompressor().decompressobj()
                again = await self.connection(ws, inflate)
            if not again:
                return
            resume_url = self.resume_url

    async def connection(self, ws, inflate):
        heartbeat = None
        try:
            async for frame in ws:
                if frame.type != aiohttp.WSMsgType.BINARY:
                    raise RuntimeError(f"expected a binary zstd frame, got {frame.type}")
                payload = json.loads(inflate.decompress(frame.data))
                op, data = payload["op"], payload["d"]
                if payload.get("s") is not None:
                    self.seq = payload["s"]
                if op == 10:
                    interval = data["heartbeat_interval"] / 1000
                    heartbeat = asyncio.create_task(self.heartbeat(ws, interval))
                    if self.session_id:
                        d = {"token": TOKEN, "session_id": self.session_id, "seq": self.seq}
                        await ws.send_str(json.dumps({"op": 6, "d": d}))
                    else:
                        d = {"token": TOKEN, "intents": INTENTS, "shard": [self.shard, self.total],
                             "properties": {"os": "linux", "browser": "zstd", "device": "zstd"}}
                        await ws.send_str(json.dumps({"op": 2, "d": d}))
                elif op == 7:
                    # Any close code but 1000 and 1001 keeps the session resumable.
                    await ws.close(code=4000)
                    return True
                elif op == 0:
                    self.dispatch(payload["t"], data)
            return False
        finally:
            if heartbeat:
                heartbeat.cancel()

    def dispatch(self, event, data):
        if event == "READY":
            self.session_id = data["session_id"]
            self.resume_url = data["resume_gateway_url"]
            self.pending = {g["id"] for g in data["guilds"]}
            if not self.pending:
                self.ready.set()
        elif event == "GUILD_CREATE":
            guilds[data["id"]] = len(data["members"])
            channels.update(c["id"] for c in data["channels"] if c["type"] == 0)
            self.pending.discard(data["id"])
            if not self.pending:
                self.ready.set()
        elif event == "RESUMED":
            say(f"resumed {self.shard}")
        elif event == "MESSAGE_CREATE":
            say(f"message {data['id']} {data['content']}")

    async def heartbeat(self, ws, interval):
        while True:
            await asyncio.sleep(interval)
            await ws.send_str(json.dumps({"op": 1, "d": self.seq}))


async def main():
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    headers = {"Authorization": f"Bot {TOKEN}"}
    async with aiohttp.ClientSession(headers=headers) as http:
        async with http.get(f"{HTTP}/api/v10/gateway/bot") as response:
            url = (await response.json())["url"]
        shards = [Shard(http, s, 2, url) for s in range(2)]
        runners = [asyncio.create_task(s.run()) for s in shards]
        await asyncio.wait_for(asyncio.gather(*(s.ready.wait() for s in shards)), 30)
        say(f"ready 2 {len(guilds)} {len(channels)} {sum(guilds.values())}")
        channel = sorted(channels)[0]
        body = {"content": "hello from a zstd-stream client"}
        async with http.post(f"{HTTP}/api/v10/channels/{channel}/messages", json=body) as response:
            say(f"sent {(await response.json())['id']}")
        await reader.read()
        for runner in runners:
            runner.cancel()


asyncio.run(main())
