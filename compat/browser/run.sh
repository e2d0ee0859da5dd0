#!/usr/bin/env bash
# Runs the web UI's browser tests with Node's test runner: Debian's headless
# Chromium (apt package `chromium`, driven by playwright-core, which never
# downloads a browser) against fresh brokers the tests start themselves.
# The broker is $BROKER_BIN (default target/debug/sluice; build it with
# `cargo build -p sluice`). Installs the pinned packages from
# package-lock.json when node_modules is missing or stale.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"
if [[ ! -x "${CHROMIUM_BIN:-/usr/bin/chromium}" ]]; then
    echo "compat/browser: no Chromium at ${CHROMIUM_BIN:-/usr/bin/chromium} (apt-get install chromium)" >&2
    exit 1
fi
stamp=node_modules/.installed-lock-hash
want=$(sha256sum package-lock.json | cut -d' ' -f1)
if [[ ! -f "$stamp" || $(cat "$stamp") != "$want" ]]; then
    PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error
    printf '%s\n' "$want" >"$stamp"
fi
# --test-force-exit: a broker or browser left behind by a failed hook
# cannot keep the runner (and CI) waiting forever.
exec node --test --test-concurrency=1 --test-force-exit test/
