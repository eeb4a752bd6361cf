// Against a real `parley` whose tokens live 4 s: getToken() is called again
// on `token.expiring` and `refresh` swaps the token without reconnecting.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";
import { Server, sleep } from "./server.js";

const server = new Server({ PARLEY_AUTH_ANONYMOUS_TTL_S: "4", PARLEY_EDGE_TOKEN_EXPIRING_LEAD_MS: "2500" });
before(() => server.start());
after(() => server.stop());

test("a token about to expire is refreshed in place with getToken()", async () => {
  // Tokens live 4 s here; `token.expiring` comes 2.5 s before exp.
  let issued = 0;
  const getToken = () =>
    new Promise<string>((resolve, reject) => {
      const ws = new WebSocket(server.url);
      ws.on("message", (d) => {
        const f = JSON.parse(String(d));
        if (f.type === "hello") ws.send(JSON.stringify({ type: "auth", id: 1, dev_user: "carol" }));
        if (f.type === "reply") {
          ws.close();
          if (f.ok) {
            issued += 1;
            resolve(f.token);
          } else reject(new Error(f.error.message));
        }
      });
      ws.on("error", reject);
    });
  const carol = server.client({ getToken, pingIntervalMs: 0 });
  const expiring: number[] = [];
  carol.on("token.expiring", (e) => expiring.push(e.expires_in_ms));
  const states: string[] = [];
  await carol.connect();
  carol.on("state", (s) => states.push(s.state));
  const room = await carol.createRoom(`refresh-${Date.now()}`);
  await sleep(6000); // past the first token's exp
  assert.ok(expiring.length >= 1, "token.expiring arrived");
  assert.ok(issued >= 2, `getToken was called again (${issued})`);
  assert.deepEqual(states, [], "the connection stayed up");
  const m = await carol.send(room.id, "still here");
  assert.equal(m.sender.name, "carol");
  carol.close();
});
