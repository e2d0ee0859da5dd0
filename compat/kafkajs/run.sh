#!/usr/bin/env bash
# Runs the kafkajs compatibility tests with Node's test runner against fresh
# brokers they start themselves. The broker is $BROKER_BIN (default
# target/debug/sluice; build it with `cargo build -p sluice`). Installs the
# pinned kafkajs from package-lock.json when node_modules is missing or stale.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"
stamp=node_modules/.installed-lock-hash
want=$(sha256sum package-lock.json | cut -d' ' -f1)
if [[ ! -f "$stamp" || $(cat "$stamp") != "$want" ]]; then
    npm ci --no-audit --no-fund --loglevel=error
    printf '%s\n' "$want" >"$stamp"
fi
# --test-force-exit: a broker or browser left behind by a failed hook
# cannot keep the runner (and CI) waiting forever.
exec node --test --test-concurrency=1 --test-force-exit test/
