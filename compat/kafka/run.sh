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
root="$(cd "$here/../.." && pwd)"

export BROKER_BIN="${BROKER_BIN:-$root/target/debug/sluice}"
case "$BROKER_BIN" in /*) ;; *) BROKER_BIN="$root/$BROKER_BIN" ;; esac
python="${PYTHON:-$root/target/venv/bin/python}"

if [[ ! -x "$BROKER_BIN" ]]; then
    echo "compat/kafka: broker binary $BROKER_BIN not found; run cargo build -p sluice" >&2
    exit 1
fi
if ! command -v kcat >/dev/null 2>&1; then
    echo "compat/kafka: kcat not installed (apt-get install kcat)" >&2
    exit 1
fi

cd "$here"
status=0
"$python" -m pytest -q "$@" || status=$?
if [[ $status -eq 5 ]]; then
    echo "compat/kafka: pytest collected no tests; treating that as a failure" >&2
    exit 1
fi
exit "$status"
