#!/usr/bin/env bash
# Runs the order-flow test (test_order_flow.py): a fresh broker on free
# ports, the example's run.sh against it, exact counts and the admin API's
# view checked. Builds nothing: the broker is $BROKER_BIN (default
# target/debug/sluice; build it with `cargo build -p sluice`). Python is
# $PYTHON (default target/venv/bin/python, which scripts/test creates).
# The same runner as the compat suites (compat/common/run-pytest.sh).
#
# Usage: examples/order-flow/test.sh [pytest args...], e.g. -x, -v.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exec "$here/../../compat/common/run-pytest.sh" "$here" "$@"
