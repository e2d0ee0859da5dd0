#!/usr/bin/env bash
# Runs the Kafka compatibility suite (kcat, confluent-kafka, kafka-python)
# against fresh brokers started by the tests. Builds nothing: the broker is
# $BROKER_BIN (default target/debug/sluice; build it with
# `cargo build -p sluice`). Python is $PYTHON (default target/venv/bin/python,
# which scripts/test creates with compat/kafka/requirements.txt).
#
# Usage: compat/kafka/run.sh [pytest args...], e.g. -k kcat, -x, -v.
# SLUICE_LOG=debug makes the brokers log every request with its API version.
# Never export other SLUICE_* variables: the broker rejects unknown ones (the
# tests strip them from the broker's environment anyway).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

if ! command -v kcat >/dev/null 2>&1; then
    echo "compat/kafka: kcat not installed (apt-get install kcat)" >&2
    exit 1
fi

exec "$here/../common/run-pytest.sh" kafka "$@"
