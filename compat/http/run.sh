#!/usr/bin/env bash
# Runs the admin API and metrics suite (compat/http) against fresh brokers
# started by the tests, driving traffic with confluent-kafka and pika and
# calling the API over HTTP. Builds nothing: the broker is $BROKER_BIN
# (default target/debug/sluice; build it with `cargo build -p sluice`).
#
# Usage: compat/http/run.sh [pytest args...], e.g. -k metrics, -x, -v.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

exec "$here/../common/run-pytest.sh" http "$@"
