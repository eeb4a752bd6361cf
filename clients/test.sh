#!/usr/bin/env bash
# The clients' tests: the TypeScript SDK against a real `parley`, the web app
# in Debian's Chromium, and parley-cli. Installs what is missing (npm packages
# from the lockfiles, chromium). Uses $PARLEY_BIN and $PARLEY_CLI_BIN, else
# builds them with cargo.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${PARLEY_BIN:-}" ]; then
    cargo build --bin parley --locked
    PARLEY_BIN="${CARGO_TARGET_DIR:-$PWD/target}/debug/parley"
fi
if [ -z "${PARLEY_CLI_BIN:-}" ]; then
    cargo build -p parley-cli --locked
    PARLEY_CLI_BIN="${CARGO_TARGET_DIR:-$PWD/target}/debug/parley-cli"
fi
export PARLEY_BIN PARLEY_CLI_BIN

if [ ! -x /usr/bin/chromium ] && [ -z "${CHROMIUM:-}" ]; then
    echo "chromium missing; installing it"
    if [ "$(id -u)" = 0 ]; then apt_get=(apt-get); else apt_get=(sudo apt-get); fi
    "${apt_get[@]}" update -qq
    DEBIAN_FRONTEND=noninteractive "${apt_get[@]}" install -y -qq chromium >/dev/null
fi

echo "== clients/typescript (SDK: generated types up to date, unit and end-to-end tests)"
(cd clients/typescript && npm ci --no-audit --no-fund && npm run build && npm test)

echo "== clients/web (dist/ up to date, browser test)"
(cd clients/web && npm ci --no-audit --no-fund && PARLEY_SCREENSHOT=0 npm test)

echo "== parley-cli driven against a real parley"
node --test clients/cli-test/cli.test.mjs
