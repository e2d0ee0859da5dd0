#!/usr/bin/env bash
# Runs the bridge compatibility suite (Kafka topics as AMQP streams,
# exchanges feeding topics, topics feeding exchanges; confluent-kafka,
# kafka-python and pika on the same broker) against fresh brokers started
# by the tests. Builds nothing: the broker is $BROKER_BIN (default
# target/debug/sluice; build it with `cargo build -p sluice`). Python is
# $PYTHON (default target/venv/bin/python, which scripts/test creates with
# the compat/*/requirements.txt files).
#
# Usage: compat/bridge/run.sh [pytest args...], e.g. -k crash, -x, -v.
# SLUICE_LOG=debug makes the brokers log more. Never export other SLUICE_*
# variables: the broker rejects unknown ones (the tests strip them from the
# broker's environment anyway).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

exec "$here/../common/run-pytest.sh" bridge "$@"
