// Against a real `parley`: chat, a crash and restart mid-conversation, a send
// during the outage, recovery with `since`.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import type { ParleyClient, RoomEvent } from "../src/index.js";
import { Server, sleep, until } from "./server.js";

const server = new Server();
const clients: ParleyClient[] = [];
before(() => server.start());
after(async () => {
  for (const c of clients) c.close();
  await server.stop();
});

function client(devUser: string) {
  const c = server.client({ devUser, pingIntervalMs: 1000 });
  clients.push(c);
  return c;
}

/** Records a client's message.new events for one room, in delivery order. */
function record(c: ParleyClient, room: string) {
  const seqs: number[] = [];
  const texts: string[] = [];
  c.on("message.new", (e) => {
    if (e.room !== room) return;
    seqs.push(e.seq);
    texts.push(e.message.text);
  });
  return { seqs, texts };
}

test("two clients chat", async () => {
  const ada = client("ada");
  const bob = client("bob");
  await Promise.all([ada.connect(), bob.connect()]);
  const room = await ada.createRoom(`general-${Date.now()}`);
  await ada.join(room.id);
  await bob.join(room.id);
  const got = record(bob, room.id);
  const sent = await ada.send(room.id, "hello bob");
  assert.equal(sent.text, "hello bob");
  await until(() => got.texts.includes("hello bob"), 5000, "bob sees the message");
  await bob.send(room.id, "hi ada");
  const page = await ada.history(room.id);
  assert.deepEqual(
    page.messages.map((m) => m.text),
    ["hello bob", "hi ada"],
  );
});

test("a crash and restart mid-conversation loses and duplicates nothing; a send during the outage arrives once", async () => {
  const ada = client("ada2");
  const bob = client("bob2");
  await Promise.all([ada.connect(), bob.connect()]);
  const room = await ada.createRoom(`restart-${Date.now()}`);
  await ada.join(room.id);
  await bob.join(room.id);
  const atBob = record(bob, room.id);
  const atAda = record(ada, room.id);
  const states: string[] = [];
  bob.on("state", (s) => states.push(s.recovered === undefined ? s.state : `${s.state}(recovered=${s.recovered})`));

  const expected: string[] = [];
  for (let i = 0; i < 5; i++) {
    const text = `before ${i}`;
    expected.push(text);
    await ada.send(room.id, text);
  }

  await server.kill();
  await until(() => ada.state !== "connected" && bob.state !== "connected", 5000, "both notice the crash");
  // Sent while the server is down: queued, then stored exactly once.
  const during = ada.send(room.id, "during the outage");
  const during2 = bob.send(room.id, "bob during the outage");
  expected.push("during the outage", "bob during the outage");
  await sleep(300);
  await server.start();

  const [m1, m2] = await Promise.all([during, during2]);
  assert.equal(m1.text, "during the outage");
  assert.equal(m2.text, "bob during the outage");
  for (let i = 0; i < 5; i++) {
    const text = `after ${i}`;
    expected.push(text);
    await (i % 2 ? bob : ada).send(room.id, text);
  }

  const want = [...expected].sort();
  await until(() => atBob.texts.length >= expected.length && atAda.texts.length >= expected.length, 10_000, "everything delivered");
  await sleep(300); // would-be duplicates have time to arrive
  for (const seen of [atBob, atAda]) {
    assert.deepEqual([...seen.texts].sort(), want, "each message exactly once");
    assert.deepEqual(seen.seqs, [...seen.seqs].sort((a, b) => a - b), "in seq order");
    assert.equal(new Set(seen.seqs).size, seen.seqs.length, "no seq twice");
  }
  const stored = await ada.history(room.id, { limit: 100 });
  assert.deepEqual(stored.messages.map((m) => m.text).sort(), want, "stored exactly once");
  assert.ok(states.includes("connected(recovered=true)"), `bob recovered: ${states.join(", ")}`);
});

test("events missed while disconnected are recovered with since, in order", async () => {
  const ada = client("ada3");
  const bob = client("bob3");
  await Promise.all([ada.connect(), bob.connect()]);
  const room = await ada.createRoom(`since-${Date.now()}`);
  await ada.join(room.id);
  await bob.join(room.id);
  const atBob: RoomEvent[] = [];
  for (const t of ["message.new", "message.updated", "reaction.added"] as const) {
    bob.on(t, (e) => e.room === room.id && atBob.push(e));
  }
  const first = await ada.send(room.id, "one");
  await until(() => atBob.length === 1);
  const synced = bob.next("room.synced", (s) => s.room === room.id);
  bob.reconnect();
  // while bob is away (the reconnect takes at least the backoff minimum)
  await ada.edit(room.id, first.id, "one (edited)");
  await ada.react(room.id, first.id, "👍");
  await ada.send(room.id, "two");
  const s = await synced;
  assert.equal(s.recovered, true);
  await until(() => atBob.length >= 4, 5000, "bob caught up");
  assert.deepEqual(
    atBob.map((e) => e.type),
    ["message.new", "message.updated", "reaction.added", "message.new"],
  );
  assert.deepEqual(atBob.map((e) => e.seq), [...atBob.map((e) => e.seq)].sort((a, b) => a - b));
});

test("every frame the real server sent matched the schema", () => {
  // Each client checks every frame and reply (checkFrame, checkReply); none was refused.
  assert.deepEqual(server.protocolErrors, []);
});
