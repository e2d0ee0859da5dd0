#!/usr/bin/env bash
# Runs the cluster suite (compat/cluster): three-node Sluice clusters on
# 127.0.0.1, each node its own process, data dir and ports, started and
# stopped by the tests (SIGTERM, SIGKILL by PID), driven with
# confluent-kafka (librdkafka), kafka-python and kcat. The Python clients
# are the Kafka suite's pins (compat/kafka/requirements.txt). Builds
# nothing: the broker is $BROKER_BIN (default target/debug/sluice).
#
# Usage: compat/cluster/run.sh [pytest args...], e.g. -k restart, -x, -v -s.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

exec "$here/../common/run-pytest.sh" cluster "$@"
