// Starts a real `parley` binary for the tests: free ports, a SQLite file
// that survives restarts, a fixed signing key so issued tokens do too.

import { spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import WebSocket from "ws";
import { ParleyClient, type ClientOptions, type WebSocketConstructor } from "../src/index.js";

const repo = resolve(fileURLToPath(import.meta.url), "../../../../..");

/** The `parley` binary: $PARLEY_BIN, else $CARGO_TARGET_DIR/debug/parley, else target/debug/parley. */
export function parleyBin(): string {
  const candidates = [
    process.env.PARLEY_BIN,
    process.env.CARGO_TARGET_DIR && join(process.env.CARGO_TARGET_DIR, "debug/parley"),
    join(repo, "target/debug/parley"),
  ].filter((p): p is string => !!p);
  const found = candidates.find((p) => existsSync(p));
  if (!found) throw new Error(`parley binary not found (tried ${candidates.join(", ")}); run \`cargo build --bin parley\``);
  return found;
}

export class Server {
  readonly dir = mkdtempSync(join(tmpdir(), "parley-sdk-"));
  private readonly secret = randomBytes(32).toString("hex");
  private child?: ChildProcess;
  /** `ws://127.0.0.1:PORT/ws` once started; the same port after restarts. */
  url = "";
  private listen = "127.0.0.1:0";
  log = "";

  constructor(private readonly extraEnv: Record<string, string> = {}) {}

  async start(): Promise<void> {
    const env: Record<string, string> = {
      PATH: process.env.PATH ?? "",
      PARLEY_EDGE_LISTEN: this.listen,
      PARLEY_AUTH_LISTEN: "127.0.0.1:0",
      PARLEY_CHAT_LISTEN: "127.0.0.1:0",
      PARLEY_AI_LISTEN: "127.0.0.1:0",
      PARLEY_PRESENCE_LISTEN: "127.0.0.1:0",
      PARLEY_CHAT_DATABASE_URL: `sqlite://${join(this.dir, "parley.db")}?mode=rwc`,
      PARLEY_AUTH_HS256_SECRET: this.secret,
      PARLEY_EDGE_RATE_IP_CONNECTS_PER_MIN: "0",
      PARLEY_EDGE_RATE_USER_PER_MIN: "0",
      PARLEY_EDGE_RATE_ANONYMOUS_PER_MIN: "0",
      PARLEY_EDGE_RATE_IP_MESSAGES_PER_MIN: "0",
      PARLEY_EDGE_DRAIN_MS: "100",
      PARLEY_EDGE_SHUTDOWN_GRACE_MS: "1000",
      ...this.extraEnv,
    };
    const child = spawn(parleyBin(), [], { env, stdio: ["ignore", "pipe", "pipe"] });
    this.child = child;
    child.stderr!.on("data", (d) => (this.log += d));
    this.url = await new Promise<string>((resolve, reject) => {
      let out = "";
      const timer = setTimeout(() => reject(new Error(`parley did not start:\n${out}\n${this.log}`)), 30_000);
      child.stdout!.on("data", (d) => {
        out += d;
        const m = /edge\s+(ws:\/\/\S+\/ws)/.exec(out);
        if (m) {
          clearTimeout(timer);
          resolve(m[1]!);
        }
      });
      child.on("exit", (code) => {
        clearTimeout(timer);
        reject(new Error(`parley exited with ${code}:\n${out}\n${this.log}`));
      });
    });
    this.listen = new URL(this.url).host;
  }

  /** Kills the process at once (SIGKILL: no drain, as in a crash). */
  async kill(): Promise<void> {
    const child = this.child;
    if (!child || child.exitCode !== null) return;
    const exited = new Promise((r) => child.once("exit", r));
    child.kill("SIGKILL");
    await exited;
    this.child = undefined;
  }

  async stop(): Promise<void> {
    await this.kill();
    rmSync(this.dir, { recursive: true, force: true });
  }

  /** Every `protocol.error` the clients made by `client()` raised: the real server's frames should all match the schema. */
  readonly protocolErrors: string[] = [];

  client(options: Partial<ClientOptions>): ParleyClient {
    const c = new ParleyClient({
      url: this.url,
      WebSocket: WebSocket as unknown as WebSocketConstructor,
      minReconnectDelayMs: 100,
      maxReconnectDelayMs: 1000,
      ...options,
    });
    c.on("protocol.error", (e) => this.protocolErrors.push(`${e.message}: ${JSON.stringify(e.frame)}`));
    return c;
  }
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Waits until `cond()` holds (polling), or fails after `ms`. */
export async function until(cond: () => boolean, ms = 10_000, what = "condition"): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}
