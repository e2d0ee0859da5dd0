#!/usr/bin/env bash
# Runs the AMQP 0-9-1 compatibility suite (pika, kombu, Celery) against
# fresh brokers started by the tests. Builds nothing: the broker is
# $BROKER_BIN (default target/debug/sluice; build it with
# `cargo build -p sluice`). Python is $PYTHON (default target/venv/bin/python,
# which scripts/test creates with compat/kafka/requirements.txt and
# compat/amqp/requirements.txt).
#
# Usage: compat/amqp/run.sh [pytest args...], e.g. -k celery, -x, -v.
# COMPAT_AMQP_EXTERNAL=127.0.0.1:PORT runs every test it can against that
# broker instead (e.g. a RabbitMQ node, to check what the tests expect);
# the tests that kill or restart the broker skip then.
# SLUICE_LOG=debug makes the brokers log more. Never export other SLUICE_*
# variables: the broker rejects unknown ones (the tests strip them from the
# broker's environment anyway).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

exec "$here/../common/run-pytest.sh" amqp "$@"
