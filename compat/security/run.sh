#!/usr/bin/env bash
# Runs the security suite (Kafka SASL and TLS listeners, AMQPS, HTTPS,
# users, certificate reloads) with real clients (confluent-kafka,
# kafka-python, kcat, pika, curl) against fresh brokers started by the
# tests. Builds nothing: the broker is $BROKER_BIN (default
# target/debug/sluice; build it with `cargo build -p sluice`). Python is
# $PYTHON (default target/venv/bin/python, which scripts/test creates with
# compat/security/requirements.txt among others). Certificates are made
# by the tests in a temporary directory; none is kept.
#
# Usage: compat/security/run.sh [pytest args...], e.g. -k reload, -x, -v.
# Never export SLUICE_* variables other than SLUICE_LOG: the broker rejects
# unknown ones (the tests strip them from the broker's environment anyway).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

for tool in kcat curl; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "compat/security: $tool not installed (apt-get install $tool)" >&2
        exit 1
    fi
done

exec "$here/../common/run-pytest.sh" security "$@"
