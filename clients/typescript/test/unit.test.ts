// Tests that need no server: generated types, close codes, backoff, frame checks.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { backoffDelay, checkFrame, checkReply, closePolicy, ParleyClient, type WebSocketLike } from "../src/index.js";

const pkg = resolve(fileURLToPath(import.meta.url), "../../..");
const repo = resolve(pkg, "../..");

test("src/protocol.ts is what the generator makes of docs/protocol.schema.json", () => {
  // Fails when the schema changed and `npm run generate` was not run.
  execFileSync(process.execPath, [resolve(pkg, "scripts/gen-protocol.mjs"), "--check"], { stdio: "pipe" });
});

test("close policies follow the close-code table in docs/protocol.md", () => {
  const doc = readFileSync(resolve(repo, "docs/protocol.md"), "utf8");
  const section = doc.slice(doc.indexOf("## Close codes"));
  const rows = [...section.matchAll(/^\| (\d{4}) \|[^\n]*\| ([^|\n]+) \|$/gm)];
  assert.ok(rows.length >= 10, "the table was found");
  for (const [, code, reconnect] of rows) {
    const want = reconnect!.trim();
    const expected =
      want === "no" ? "stop" : want === "with a new token" ? "new-token" : want.includes("longer backoff") ? "slow" : "reconnect";
    assert.equal(closePolicy(Number(code)), expected, `close code ${code} (${want})`);
  }
});

test("backoff is full-jitter exponential within [min, max]", () => {
  assert.equal(backoffDelay(0, 500, 20_000, () => 0), 500);
  assert.equal(backoffDelay(1, 500, 20_000, () => 0.999), 999);
  assert.equal(backoffDelay(3, 500, 20_000, () => 0.5), 2000);
  assert.equal(backoffDelay(30, 500, 20_000, () => 0.99), 19_800);
  for (let a = 0; a < 50; a++) {
    const d = backoffDelay(a, 500, 20_000);
    assert.ok(d >= 500 && d <= 20_000, `${d}`);
  }
});

const goodMessage = {
  id: "m1", room: "r", seq: 1, sender: { id: "u", name: "u" }, text: "hi", thread: null,
  created_at: 1, deleted: false, client_msg_id: "c", reactions: { "👍": ["u"] }, metadata: { x: [1] },
};

test("frames that do not match the schema are reported, not thrown", () => {
  assert.equal(checkFrame({ type: "message.new", room: "r", seq: 1, message: goodMessage }), undefined);
  assert.equal(checkFrame({ type: "message.new", room: "r", seq: 1, message: goodMessage, added_later: 1 }), undefined, "unknown fields are allowed");
  assert.match(checkFrame({ type: "message.new", room: "r" })!, /lacks seq/);
  assert.match(checkFrame({ type: "nope" })!, /unknown frame type/);
  assert.match(checkFrame([1])!, /not a JSON object/);
  // Field types, nested objects, arrays, maps, enums and bounds, from the schema.
  const bad: [unknown, RegExp][] = [
    [{ type: "message.new", room: "r", seq: "1", message: goodMessage }, /^message\.new frame: seq is a string, not integer$/],
    [{ type: "message.new", room: "r", seq: 1.5, message: goodMessage }, /seq is a fraction, not integer/],
    [{ type: "message.new", room: "r", seq: 1, message: { ...goodMessage, sender: { id: "u" } } }, /message\.sender lacks name/],
    [{ type: "message.new", room: "r", seq: 1, message: { ...goodMessage, thread: 7 } }, /message\.thread is a number, not string or null/],
    [{ type: "message.new", room: "r", seq: 1, message: { ...goodMessage, reactions: { "👍": [1] } } }, /message\.reactions\.👍\[0\] is a number, not string/],
    [{ type: "receipt", room: "r", user: "u", kind: "seen", seq: 3 }, /kind is "seen", not one of "read", "delivered"/],
    [{ type: "ai.delta", room: "r", stream_id: "s", index: -1, text: "" }, /index is below 0/],
    [{ type: "room.join", room: "r" }, /unknown frame type/],
    [{ type: "reply", id: 1, ok: "yes" }, /ok is a string, not boolean/],
    [{ type: "typing", room: "r", user: "u", typing: null }, /typing is null, not boolean/],
  ];
  for (const [frame, want] of bad) assert.match(checkFrame(frame) ?? "(accepted)", want, JSON.stringify(frame));
});

/** A WebSocket stand-in that answers hello and auth, then goes silent. */
class SilentServer implements WebSocketLike {
  readyState = 0;
  onopen: ((ev: unknown) => void) | null = null;
  onmessage: ((ev: { data: unknown }) => void) | null = null;
  onclose: ((ev: { code: number; reason: string }) => void) | null = null;
  onerror: ((ev: unknown) => void) | null = null;
  sent: any[] = [];
  constructor() {
    setTimeout(() => {
      this.readyState = 1;
      this.onmessage?.({ data: JSON.stringify({ type: "hello", conn_id: "c", protocol: "parley.v1", server_time: 0, auth_timeout_ms: 1, heartbeat_ms: 1, limits: { max_message_bytes: 1 } }) });
    });
  }
  send(data: string) {
    const f = JSON.parse(data);
    this.sent.push(f);
    if (f.type === "auth") {
      setTimeout(() => this.onmessage?.({ data: JSON.stringify({ type: "reply", id: f.id, ok: true, user: { id: "u", name: "u", anonymous: false }, session_id: "s", expires_at: 0 }) }));
    }
    if (f.type === "room.list") {
      // malformed frames first: reported, and the connection goes on
      setTimeout(() => this.onmessage?.({ data: "{\"type\":\"message.new\"}" }));
      setTimeout(() => this.onmessage?.({ data: JSON.stringify({ type: "typing", room: "r", user: 42, typing: true }) }));
    }
    if (f.type === "room.join") {
      const event = (seq: number, text: unknown) => ({ type: "message.new", room: "r", seq, message: { ...goodMessage, id: `m${seq}`, seq, text } });
      const events = [event(1, "fine"), event(2, 5), event(3, "also fine")];
      setTimeout(() => this.onmessage?.({ data: JSON.stringify({ type: "reply", id: f.id, ok: true, room: null, last_seq: 3, events, recovered: true, has_more: false, streams: [], online: [], read_marks: [] }) }));
    }
    if (f.type === "notification.list") {
      // a reply whose result does not match the command's result definition
      setTimeout(() => this.onmessage?.({ data: JSON.stringify({ type: "reply", id: f.id, ok: true, notifications: [{ id: 7 }] }) }));
    }
    if (f.type === "ping") {
      setTimeout(() => this.onmessage?.({ data: JSON.stringify({ type: "reply", id: f.id, ok: true, server_time: 5 }) }));
    }
  }
  close() {
    this.readyState = 3;
  }
}

test("a server that never answers hits the request timeout; bad frames raise protocol.error", async () => {
  const client = new ParleyClient({ url: "ws://x", token: "t", WebSocket: SilentServer as any, requestTimeoutMs: 200, pingIntervalMs: 0 });
  const errors: string[] = [];
  client.on("protocol.error", (e) => errors.push(e.message));
  await client.connect();
  const typing: unknown[] = [];
  client.on("typing", (e) => typing.push(e));
  await assert.rejects(client.listRooms(), (e: any) => e.code === "timeout");
  assert.deepEqual(errors, ["message.new frame lacks room", "typing frame: user is a number, not string"]);
  assert.deepEqual(typing, [], "a frame with a wrong field type is not delivered");
  assert.equal(client.state, "connected");
  assert.deepEqual(await client.request("ping", {}), { server_time: 5 }, "the connection goes on");
  client.close();
});

test("events recovered by room.join are checked like live ones", async () => {
  const client = new ParleyClient({ url: "ws://x", token: "t", WebSocket: SilentServer as any, pingIntervalMs: 0 });
  const errors: string[] = [];
  const texts: string[] = [];
  client.on("protocol.error", (e) => errors.push(e.message));
  client.on("message.new", (e) => texts.push(e.message.text));
  await client.connect();
  await client.join("r");
  assert.deepEqual(texts, ["fine", "also fine"]);
  assert.deepEqual(errors, ["room.join: message.new frame: message.text is a number, not string"]);
  assert.equal(client.state, "connected");
  client.close();
});

test("a reply whose result does not match the command's definition rejects with bad_reply", async () => {
  const client = new ParleyClient({ url: "ws://x", token: "t", WebSocket: SilentServer as any, pingIntervalMs: 0 });
  const errors: string[] = [];
  client.on("protocol.error", (e) => errors.push(e.message));
  await client.connect();
  await assert.rejects(client.notifications(), (e: any) => e.code === "bad_reply" && /^notification\.list reply: notifications\[0\]/.test(e.message));
  assert.equal(errors.length, 1);
  assert.equal(checkReply("room.leave", {}), undefined);
  assert.match(checkReply("message.send", {})!, /^message\.send reply lacks message$/);
  assert.match(checkReply("message.history", { messages: [{ ...goodMessage, seq: "2" }], has_more: false })!, /messages\[0\]\.seq is a string, not integer/);
  // A union member is chosen by its type tag, so the problem named is that member's.
  assert.match(checkFrame({ type: "reply", id: 1, ok: true, error: { code: 5 } })!, /^reply frame: error lacks message$/);
  assert.match(checkFrame({ type: "reply", id: 1, ok: false, error: { code: "nope", message: "m", temporary: false } })!, /^reply frame: error\.code is "nope", not one of "bad_request"/);
  assert.deepEqual(await client.request("ping", {}), { server_time: 5 }, "the connection goes on");
  client.close();
});

test("the offline queue is bounded", async () => {
  const client = new ParleyClient({ url: "ws://127.0.0.1:9/ws", token: "t", WebSocket: class { readyState = 0; onclose: any; onmessage: any; onerror: any; onopen: any; send() {} close() {} } as any, maxQueue: 2, pingIntervalMs: 0 });
  client.connect().catch(() => {});
  const a = client.send("r", "1").catch((e) => e);
  const b = client.send("r", "2").catch((e) => e);
  await assert.rejects(client.send("r", "3"), (e: any) => e.code === "queue_full");
  client.close();
  assert.equal((await a).code, "closed");
  assert.equal((await b).code, "closed");
});
