#!/usr/bin/env bash
# Runs the order-flow test (test_order_flow.py): a fresh broker on free
# ports, the example's run.sh against it, exact counts and the admin API's
# view checked. Builds nothing: the broker is $BROKER_BIN (default
# target/debug/sluice; build it with `cargo build -p sluice`). Python is
# $PYTHON (default target/venv/bin/python, which scripts/test creates).
#
# Usage: examples/order-flow/test.sh [pytest args...], e.g. -x, -v.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"

export BROKER_BIN="${BROKER_BIN:-$root/target/debug/sluice}"
case "$BROKER_BIN" in /*) ;; *) BROKER_BIN="$root/$BROKER_BIN" ;; esac
python="${PYTHON:-$root/target/venv/bin/python}"

if [[ ! -x "$BROKER_BIN" ]]; then
    echo "examples/order-flow: broker binary $BROKER_BIN not found; run cargo build -p sluice" >&2
    exit 1
fi
if [[ ! -x "$python" ]]; then
    echo "examples/order-flow: $python not found; run scripts/test once, or create target/venv" >&2
    exit 1
fi

# No __pycache__ in the source tree.
export PYTHONDONTWRITEBYTECODE=1
cd "$here"
status=0
"$python" -m pytest -q "$@" || status=$?
if [[ $status -eq 5 ]]; then
    echo "examples/order-flow: pytest collected no tests; treating that as a failure" >&2
    exit 1
fi
exit "$status"
