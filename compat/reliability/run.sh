#!/usr/bin/env bash
# Runs the reliability suite (compat/reliability): limits, disk full on a
# small tmpfs, graceful shutdown under load and backpressure, against fresh
# brokers started by the tests, driven with confluent-kafka and pika. The
# disk-full tests mount a tmpfs and need root (CI runs as root; elsewhere
# they skip). Builds nothing: the broker is $BROKER_BIN (default
# target/debug/sluice; build it with `cargo build -p sluice`).
#
# Usage: compat/reliability/run.sh [pytest args...], e.g. -k disk, -x, -v -s.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

exec "$here/../common/run-pytest.sh" reliability "$@"
