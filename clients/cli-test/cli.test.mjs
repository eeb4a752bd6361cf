// parley-cli driven against a real `parley`: send and history, tail as JSON
// lines across a server crash, and chat in line mode with a line typed
// during the outage stored once. The SDK (clients/typescript) plays the
// other person. Needs the SDK's test build (npm test in clients/typescript).
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFileSync } from "node:child_process";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { Server, sleep, until } from "../typescript/build/test/server.js";

const cliBin =
  process.env.PARLEY_CLI_BIN ??
  [process.env.CARGO_TARGET_DIR && join(process.env.CARGO_TARGET_DIR, "debug/parley-cli"), new URL("../../target/debug/parley-cli", import.meta.url).pathname].find(
    (p) => p && existsSync(p),
  );
const server = new Server();
let ada;
let room;

before(async () => {
  assert.ok(cliBin, "parley-cli not built: cargo build -p parley-cli");
  await server.start();
  ada = server.client({ devUser: "ada", pingIntervalMs: 1000 });
  await ada.connect();
  room = (await ada.createRoom(`cli-${Date.now()}`)).id;
  await ada.join(room);
});
after(async () => {
  ada?.close();
  await server.stop();
});

const env = () => ({ PATH: process.env.PATH, PARLEY_URL: server.url, PARLEY_DEV_USER: "cli" });

/** A long-running parley-cli whose stdout lines are collected. */
function run(args) {
  const child = spawn(cliBin, args, { env: env(), stdio: ["pipe", "pipe", "pipe"] });
  const lines = [];
  let buf = "";
  child.stdout.on("data", (d) => {
    buf += d;
    const parts = buf.split("\n");
    buf = parts.pop();
    lines.push(...parts);
  });
  let err = "";
  child.stderr.on("data", (d) => (err += d));
  return { child, lines, stderr: () => err };
}

test("send prints the stored message; history lists it", () => {
  const out = execFileSync(cliBin, ["send", room, "hello from the terminal"], { env: env() }).toString();
  const stored = JSON.parse(out);
  assert.equal(stored.text, "hello from the terminal");
  assert.equal(stored.sender.name, "cli");
  const history = execFileSync(cliBin, ["history", room], { env: env() }).toString().trim().split("\n").map((l) => JSON.parse(l));
  assert.ok(history.some((m) => m.id === stored.id));
});

test("tail prints events as JSON lines, once each and in order, across a crash", async () => {
  const tail = run(["tail", room, "--since", "0"]);
  try {
    await ada.send(room, "t1");
    await until(() => tail.lines.some((l) => l.includes('"t1"')), 10_000, "tail shows t1");
    await server.kill();
    await sleep(300);
    await server.start();
    const late = await ada.send(room, "t2");
    await until(() => tail.lines.some((l) => l.includes('"t2"')), 30_000, "tail shows t2 after the restart");
    await sleep(300);
    const seqs = tail.lines.map((l) => JSON.parse(l).seq);
    assert.deepEqual(seqs, [...seqs].sort((a, b) => a - b), "in order");
    assert.equal(new Set(seqs).size, seqs.length, "no seq twice");
    assert.equal(seqs[0], 1, "--since 0 starts at the beginning");
    assert.ok(seqs.includes(late.seq));
  } finally {
    tail.child.kill();
  }
});

test("chat: lines are sent, the room is printed, a line typed during an outage is stored once", async () => {
  const chat = run(["chat", room]);
  try {
    await until(() => /joined/.test(chat.stderr()), 10_000, "chat joined");
    chat.child.stdin.write("typed in the terminal\n");
    const seen = await ada.next("message.new", (e) => e.room === room && e.message.text === "typed in the terminal");
    assert.equal(seen.message.sender.name, "cli");
    await ada.send(room, "hello terminal");
    await until(() => chat.lines.some((l) => l.endsWith("ada: hello terminal")), 10_000, "chat prints ada's message");

    await server.kill();
    await until(() => /connection lost/.test(chat.stderr()), 10_000, "chat notices the crash");
    chat.child.stdin.write("typed during the outage\n");
    await sleep(300);
    await server.start();
    await until(() => chat.lines.some((l) => l.endsWith("cli: typed during the outage")), 30_000, "the outage line arrives");
    const page = await ada.history(room, { limit: 100 });
    assert.equal(page.messages.filter((m) => m.text === "typed during the outage").length, 1, "stored once");
    assert.equal(chat.lines.filter((l) => l.endsWith("typed during the outage")).length, 1, "printed once");
  } finally {
    chat.child.kill();
  }
});
