// Tests that need no server: generated types, close codes, backoff, frame checks.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { backoffDelay, checkFrame, closePolicy, ParleyClient, type WebSocketLike } from "../src/index.js";

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

test("frames that do not match the schema are reported, not thrown", () => {
  assert.equal(checkFrame({ type: "message.new", room: "r", seq: 1, message: {} }), undefined);
  assert.match(checkFrame({ type: "message.new", room: "r" })!, /lacks seq/);
  assert.match(checkFrame({ type: "nope" })!, /unknown frame type/);
  assert.match(checkFrame([1])!, /not a JSON object/);
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
      // a malformed frame first: reported, and the connection goes on
      setTimeout(() => this.onmessage?.({ data: "{\"type\":\"message.new\"}" }));
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
  await assert.rejects(client.listRooms(), (e: any) => e.code === "timeout");
  assert.deepEqual(errors, ["message.new frame lacks room"]);
  assert.equal(client.state, "connected");
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
