#!/usr/bin/env bash
# Runs the MQTT suite: paho-mqtt (3.1.1 and 5.0), mosquitto's command-line
# clients, and pika and confluent-kafka for the cross-protocol paths,
# against fresh brokers started by the tests. Builds nothing: the broker is
# $BROKER_BIN (default target/debug/sluice; build it with `cargo build -p
# sluice`). Python is $PYTHON (default target/venv/bin/python, which
# scripts/test creates with compat/mqtt/requirements.txt among others).
#
# Usage: compat/mqtt/run.sh [pytest args...], e.g. -k retained, -x, -v.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

for tool in mosquitto_pub mosquitto_sub; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "compat/mqtt: $tool not installed (apt-get install mosquitto-clients)" >&2
        exit 1
    fi
done

exec "$here/../common/run-pytest.sh" mqtt "$@"
