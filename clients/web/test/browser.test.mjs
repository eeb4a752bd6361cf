// The web app in real Chromium (Debian's, driven by playwright-core) against
// a real `parley`: two people chat, HTML in messages and names stays text,
// one goes offline and sees what it missed, the assistant's reply streams;
// edits, deletes, replies in a thread and read receipts reach the other side.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { createServer, connect } from "node:net";
import { chromium } from "playwright-core";
import { Server } from "../../typescript/build/test/server.js";

const repo = resolve(dirname(fileURLToPath(import.meta.url)), "../../..");
const executablePath = process.env.CHROMIUM ?? "/usr/bin/chromium";
const server = new Server();
let browser;
let base;

before(async () => {
  assert.ok(existsSync(executablePath), `${executablePath} missing: apt-get install -y chromium`);
  await server.start();
  base = server.url.replace(/^ws:/, "http:").replace(/\/ws$/, "/");
  browser = await chromium.launch({
    executablePath,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
});
after(async () => {
  await browser?.close();
  await server.stop();
});

/** A TCP proxy to the server that can cut its connections: Bob's network. */
async function cable(target) {
  const sockets = new Set();
  let up = true;
  const proxy = createServer((inbound) => {
    if (!up) return inbound.destroy();
    const outbound = connect(target.port, target.hostname);
    for (const s of [inbound, outbound]) {
      sockets.add(s);
      s.on("close", () => sockets.delete(s));
      s.on("error", () => {});
    }
    inbound.pipe(outbound).pipe(inbound);
  });
  await new Promise((r) => proxy.listen(0, "127.0.0.1", r));
  return {
    url: `http://127.0.0.1:${proxy.address().port}/`,
    unplug() {
      up = false;
      for (const s of sockets) s.destroy();
    },
    plug() {
      up = true;
    },
    close: () => proxy.close(),
  };
}

async function signIn(context, name, how, hash = "", origin = base) {
  const page = await context.newPage();
  const problems = [];
  page.on("pageerror", (e) => problems.push(String(e)));
  page.on("console", (m) => m.type() === "error" && problems.push(m.text()));
  await page.goto(origin + hash);
  await page.fill("#name", name);
  await page.check(`input[name="how"][value="${how}"]`);
  await page.click("#signin-button");
  await page.waitForSelector("#chat:not([hidden])");
  return { page, problems };
}

const texts = (page) => page.$$eval("#messages li:not(.streaming) .text", (els) => els.map((e) => e.textContent));
const pwned = (page) => page.evaluate(() => window.__pwned ?? null);
/** The message item whose text is `text`. */
const item = (text) => `#messages li:has(.text:text-is(${JSON.stringify(text)}))`;
async function say(page, text) {
  await page.fill("#text", text);
  await page.press("#text", "Enter");
  await page.waitForSelector(item(text));
}

test("two browsers chat; HTML stays text; offline catches up; the assistant streams", async () => {
  const hostile = `<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script>`;
  const ctxA = await browser.newContext({ viewport: { width: 1100, height: 640 } });
  const ctxB = await browser.newContext({ viewport: { width: 1100, height: 640 } });
  const a = await signIn(ctxA, "ada", "dev");
  await a.page.fill("#room-name", `general ${hostile}`);
  await a.page.click("#create-form button");
  await a.page.waitForSelector("#room:not([hidden])");
  const link = await a.page.textContent("#room-link");
  const roomId = new URL(link).hash.replace("#room=", "");

  const bobName = "<img src=x onerror=window.__pwned=3>";
  const bobNet = await cable(new URL(base));
  const b = await signIn(ctxB, bobName, "anonymous", `#room=${roomId}`, bobNet.url);
  await b.page.waitForSelector("#room:not([hidden])");
  assert.equal(await b.page.textContent("#room-title"), `general ${hostile}`);

  await a.page.fill("#text", "hello bob");
  await a.page.press("#text", "Enter");
  await b.page.waitForFunction(() => [...document.querySelectorAll("#messages .text")].some((e) => e.textContent === "hello bob"));

  await b.page.fill("#text", hostile);
  await b.page.press("#text", "Enter");
  await a.page.waitForFunction((h) => [...document.querySelectorAll("#messages .text")].some((e) => e.textContent === h), hostile);
  assert.equal(await a.page.$$eval("#messages img, #messages script", (e) => e.length), 0, "no element made from a message");
  assert.equal(await a.page.textContent("#messages li:last-child .who"), bobName);

  // Bob goes offline; Ada talks; Bob comes back and sees what he missed.
  bobNet.unplug();
  await b.page.waitForSelector('#conn:not([data-state="connected"])');
  for (const t of ["while you were out 1", "while you were out 2"]) {
    await a.page.fill("#text", t);
    await a.page.press("#text", "Enter");
  }
  await a.page.waitForFunction(() => [...document.querySelectorAll("#messages .text")].some((e) => e.textContent === "while you were out 2"));
  assert.equal((await texts(b.page)).includes("while you were out 1"), false, "bob is really cut off");
  bobNet.plug();
  await b.page.evaluate(() => window.dispatchEvent(new Event("online")));
  await b.page.waitForSelector('#conn[data-state="connected"]', { timeout: 30_000 });
  await b.page.waitForFunction(() => [...document.querySelectorAll("#messages .text")].some((e) => e.textContent === "while you were out 2"));
  assert.deepEqual(await texts(b.page), ["hello bob", hostile, "while you were out 1", "while you were out 2"]);
  assert.match(await b.page.textContent("#conn"), /recovered/);

  // The assistant: deltas render as they come, then the stored reply replaces them.
  await b.page.evaluate(() => {
    window.__streamed = false;
    new MutationObserver(() => {
      if (document.querySelector("#messages li.streaming")) window.__streamed = true;
    }).observe(document.getElementById("messages"), { childList: true, subtree: true });
  });
  await a.page.fill("#text", "/ask tell me a story about streams");
  await a.page.press("#text", "Enter");
  await b.page.waitForSelector("#messages li.assistant:not(.streaming)", { timeout: 30_000 });
  assert.equal(await b.page.evaluate(() => window.__streamed), true, "the reply streamed in");
  await a.page.waitForSelector("#messages li.assistant:not(.streaming)");
  assert.equal(await a.page.$$eval("#messages li.streaming", (e) => e.length), 0);

  // Edit and delete: Ada changes her messages, Bob sees the changes.
  await say(a.page, "edit me");
  await say(a.page, "delete me");
  await b.page.waitForSelector(item("delete me"));
  a.page.once("dialog", (d) => d.accept("edited by ada"));
  await a.page.click(`${item("edit me")} button.edit`);
  await b.page.waitForSelector(`${item("edited by ada")} .meta:text-is("(edited)")`);
  await a.page.click(`${item("delete me")} button.delete`);
  await b.page.waitForSelector(`#messages li.deleted:has(.text:text-is("message deleted"))`);
  assert.equal((await texts(b.page)).includes("delete me"), false, "deleted text is gone");
  assert.equal(await b.page.$$eval(`#messages li.deleted button`, (e) => e.length), 0, "no actions on a tombstone");

  // A reply: Bob answers "hello bob" (older than the messages since); both
  // show it in the root's thread, right after the root, not at the bottom.
  const rootId = await b.page.getAttribute(item("hello bob"), "data-id");
  await b.page.click(`${item("hello bob")} button.reply`);
  assert.match(await b.page.textContent("#replying"), /Replying to ada: hello bob/);
  await b.page.fill("#text", "a reply from bob");
  await b.page.press("#text", "Enter");
  assert.equal(await b.page.isHidden("#replying"), true, "the reply bar closes after sending");
  for (const page of [a.page, b.page]) {
    await page.waitForSelector(`${item("a reply from bob")}.reply[data-thread="${rootId}"]`);
    const order = await texts(page);
    assert.equal(order[order.indexOf("hello bob") + 1], "a reply from bob", `reply follows its root: ${order}`);
  }
  // A reply to the reply joins the root's thread (the server resolves it).
  await a.page.click(`${item("a reply from bob")} button.reply`);
  await a.page.fill("#text", "ada answers in the thread");
  await a.page.press("#text", "Enter");
  await b.page.waitForSelector(`${item("ada answers in the thread")}.reply[data-thread="${rootId}"]`);
  const order = await texts(b.page);
  assert.deepEqual(order.slice(order.indexOf("hello bob"), order.indexOf("hello bob") + 3), ["hello bob", "a reply from bob", "ada answers in the thread"]);

  // Read receipts: Bob's app reads what arrives; Ada sees where Bob has read up to.
  await say(a.page, "did you see this?");
  await b.page.waitForSelector(item("did you see this?"));
  await a.page.waitForSelector(`${item("did you see this?")} .seen`);
  assert.equal(await a.page.textContent(`${item("did you see this?")} .seen`), `✓ seen by ${bobName}`);
  assert.equal(await a.page.$$eval("#messages .seen", (e) => e.length), 1, "one mark per reader, at the last message read");
  // A page opened later shows the marks as they stand (from `room.join`).
  const ctxC = await browser.newContext({ viewport: { width: 1100, height: 640 } });
  const c = await signIn(ctxC, "cleo", "dev", `#room=${roomId}`);
  await c.page.waitForSelector(`${item("did you see this?")} .seen`);
  assert.match(await c.page.textContent(`${item("did you see this?")} .seen`), new RegExp(bobName));
  await ctxC.close();

  assert.equal(await pwned(a.page), null);
  assert.equal(await pwned(b.page), null);
  assert.deepEqual([...a.problems, ...b.problems].filter((p) => !/ERR_INTERNET_DISCONNECTED|WebSocket/.test(p)), []);

  await ctxA.close();
  await ctxB.close();
  bobNet.close();
});

test("a plain conversation with a thread, a reaction and read marks (the screenshots in docs/)", async () => {
  const ctxA = await browser.newContext({ viewport: { width: 1000, height: 560 } });
  const ctxB = await browser.newContext({ viewport: { width: 1000, height: 560 } });
  const a = await signIn(ctxA, "grace", "dev");
  await a.page.fill("#room-name", "design review");
  await a.page.click("#create-form button");
  await a.page.waitForSelector("#room:not([hidden])");
  const roomId = new URL(await a.page.textContent("#room-link")).hash.replace("#room=", "");
  const b = await signIn(ctxB, "linus", "dev", `#room=${roomId}`);
  await b.page.waitForSelector("#room:not([hidden])");

  await say(a.page, "Morning! The new onboarding flow is up on staging.");
  await b.page.waitForSelector(item("Morning! The new onboarding flow is up on staging."));
  await say(b.page, "Nice, I'll have a look after standup.");
  await say(a.page, "Can someone check the copy on step 3?");
  await b.page.waitForSelector(item("Can someone check the copy on step 3?"));
  await b.page.click(`${item("Can someone check the copy on step 3?")} button.reply`);
  await b.page.fill("#text", "Looks good, one typo: \"recieve\"");
  await b.page.press("#text", "Enter");
  await a.page.waitForSelector(`${item("Looks good, one typo: \"recieve\"")}.reply`);
  await a.page.click(`${item("Looks good, one typo: \"recieve\"")} button.reply`);
  await a.page.fill("#text", "Fixed, thanks!");
  await a.page.press("#text", "Enter");
  await b.page.waitForSelector(`${item("Fixed, thanks!")}.reply`);
  await b.page.click(`${item("Morning! The new onboarding flow is up on staging.")} button:text-is("like")`);
  await a.page.waitForSelector(`${item("Morning! The new onboarding flow is up on staging.")} .meta:text-is("👍 1")`);
  await say(a.page, "Shipping it at 3pm then.");
  await a.page.waitForSelector(`${item("Shipping it at 3pm then.")} .seen:text-is("✓ seen by linus")`);
  // Replies sit under their root: the thread comes before the newer message.
  assert.deepEqual(await texts(a.page), [
    "Morning! The new onboarding flow is up on staging.",
    "Nice, I'll have a look after standup.",
    "Can someone check the copy on step 3?",
    "Looks good, one typo: \"recieve\"",
    "Fixed, thanks!",
    "Shipping it at 3pm then.",
  ]);
  await b.page.click(`${item("Shipping it at 3pm then.")} button.reply`);
  await b.page.fill("#text", "👍 I'll tell support");
  if (process.env.PARLEY_SCREENSHOT !== "0") {
    await a.page.screenshot({ path: join(repo, "docs/web-app.png") });
    await b.page.screenshot({ path: join(repo, "docs/web-app-reply.png") });
  }
  assert.deepEqual([...a.problems, ...b.problems], []);
  await ctxA.close();
  await ctxB.close();
});
