// eris 0.16 (gateway and REST v9) against discord-mock, speaking ETF through erlpack inside a
// zlib stream inflated by pako. Prints one line per observation; exits when stdin closes.
"use strict";
const https = require("https");
const http = require("http");

// eris always speaks HTTPS to Discord; the mock serves plain HTTP on loopback.
const rest = new URL(process.env.MOCK_HTTP);
https.request = (options, callback) =>
  http.request({ ...options, host: rest.hostname, port: rest.port, agent: undefined }, callback);

const Eris = require("eris");
const bot = new Eris(`Bot ${process.env.MOCK_TOKEN}`, {
  // GUILDS, GUILD_MEMBERS, GUILD_MESSAGES, MESSAGE_CONTENT: eris 0.16 has no name for the last.
  intents: 1 | (1 << 1) | (1 << 9) | (1 << 15),
  maxShards: 2,
  compress: true,
  restMode: true,
});
const say = (line) => process.stdout.write(`${line}\n`);

bot.on("rawWS", (packet, shard) => {
  // eris reports what it decoded: prove the wire was ETF (snowflakes come as strings) once.
  if (packet.t === "READY") say(`wire ${shard} ${bot.shards.get(shard).ws.url}`);
});
bot.on("shardResume", (shard) => say(`resumed ${shard}`));
bot.on("messageCreate", (message) => {
  if (message.author.id !== bot.user.id) say(`message ${message.id} ${message.content}`);
});
bot.once("ready", async () => {
  const channels = bot.guilds.reduce((n, g) => n + g.channels.filter((c) => c.type === 0).length, 0);
  const members = bot.guilds.reduce((n, g) => n + g.members.size, 0);
  say(`ready ${bot.shards.size} ${bot.guilds.size} ${channels} ${members}`);
  const channel = bot.guilds.map((g) => g.channels.find((c) => c.type === 0))[0];
  const sent = await bot.createMessage(channel.id, "hello from eris");
  say(`sent ${sent.id}`);
});
if (process.env.CLIENT_LOG) bot.on("debug", (message, shard) => say(`debug ${shard} ${message}`));
bot.on("error", (error) => say(`error ${error.stack}`.replace(/\n/g, " | ")));

process.stdin.on("end", () => {
  bot.disconnect({ reconnect: false });
  process.exit(0);
});
process.stdin.resume();
bot.connect().catch((error) => {
  say(`error ${error.message}`);
  process.exit(1);
});
