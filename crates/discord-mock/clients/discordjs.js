// discord.js 14 against discord-mock: two shards, caches, a message handler, one message sent.
// Prints one line per observation for the test that drives it; exits when stdin closes.
"use strict";
const { ChannelType, Client, Events, GatewayIntentBits } = require("discord.js");

const http = process.env.MOCK_HTTP;
const client = new Client({
  intents: [
    GatewayIntentBits.Guilds,
    GatewayIntentBits.GuildMembers,
    GatewayIntentBits.GuildMessages,
    GatewayIntentBits.MessageContent,
  ],
  shards: [0, 1],
  shardCount: 2,
  rest: { api: `${http}/api` },
});
const say = (line) => process.stdout.write(`${line}\n`);

client.on(Events.ShardResume, (shard) => say(`resumed ${shard}`));
client.on(Events.MessageCreate, (message) => {
  if (message.author.id !== client.user.id) say(`message ${message.id} ${message.content}`);
});
client.once(Events.ClientReady, async () => {
  const channels = client.channels.cache.filter((c) => c.type === ChannelType.GuildText).size;
  const members = client.guilds.cache.reduce((n, g) => n + g.members.cache.size, 0);
  say(`ready ${client.ws.shards.size} ${client.guilds.cache.size} ${channels} ${members}`);
  const channel = client.channels.cache.find((c) => c.type === ChannelType.GuildText);
  const sent = await channel.send("hello from discord.js");
  say(`sent ${sent.id}`);
});
client.on(Events.Error, (error) => say(`error ${error.message}`));

process.stdin.on("end", async () => {
  await client.destroy();
  process.exit(0);
});
process.stdin.resume();
client.login(process.env.MOCK_TOKEN).catch((error) => {
  say(`error ${error.message}`);
  process.exit(1);
});
