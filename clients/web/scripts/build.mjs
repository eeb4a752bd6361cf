#!/usr/bin/env node
// Builds dist/ (committed: the edge embeds it, so `cargo build` needs no npm):
// the SDK compiled from ../typescript/src, the type-checked app, HTML and CSS.
// `--check` builds into a temporary folder and fails if dist/ differs.
import { execFileSync } from "node:child_process";
import { cpSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import ts from "typescript";

const web = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const check = process.argv.includes("--check");
const out = check ? mkdtempSync(join(tmpdir(), "parley-web-")) : join(web, "dist");
const tsc = join(web, "node_modules/typescript/bin/tsc");

rmSync(out, { recursive: true, force: true });
// The SDK, as browser ES modules.
execFileSync(process.execPath, [tsc, "-p", join(web, "../typescript/tsconfig.json"), "--outDir", join(out, "sdk"), "--declaration", "false"], { stdio: "inherit" });
// The app: type-checked against the SDK's source, then emitted on its own.
execFileSync(process.execPath, [tsc, "-p", join(web, "tsconfig.json")], { stdio: "inherit" });
const source = readFileSync(join(web, "src/app.ts"), "utf8");
const { outputText } = ts.transpileModule(source, {
  compilerOptions: { target: ts.ScriptTarget.ES2022, module: ts.ModuleKind.ESNext },
});
writeFileSync(join(out, "app.js"), outputText.replace('from "@parley/client"', 'from "./sdk/index.js"'));
cpSync(join(web, "public"), out, { recursive: true });

if (check) {
  const files = (d) => readdirSync(d, { recursive: true }).filter((f) => statSync(join(d, f)).isFile()).sort();
  const built = files(out);
  let have = [];
  try { have = files(join(web, "dist")); } catch {}
  const stale = [...new Set([...built, ...have])].filter(
    (f) => !built.includes(f) || !have.includes(f) || readFileSync(join(out, f), "utf8") !== readFileSync(join(web, "dist", f), "utf8"),
  );
  rmSync(out, { recursive: true, force: true });
  if (stale.length) {
    console.error(`clients/web/dist is stale (${stale.join(", ")}): run \`npm run build\` in clients/web`);
    process.exit(1);
  }
}
