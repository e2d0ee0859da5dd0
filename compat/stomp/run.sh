#!/usr/bin/env bash
# Runs the STOMP suite: stomp.py (1.0, 1.1 and 1.2) and raw sockets, with
# pika beside for the cross-protocol paths, against fresh brokers started
# by the tests. Builds nothing: the broker is $BROKER_BIN (default
# target/debug/sluice). Python is $PYTHON (default target/venv/bin/python,
# which scripts/test creates with compat/stomp/requirements.txt among
# others).
#
# Usage: compat/stomp/run.sh [pytest args...], e.g. -k receipt, -x, -v.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

exec "$here/../common/run-pytest.sh" stomp "$@"
