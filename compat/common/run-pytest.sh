#!/usr/bin/env bash
# Runs one Python compatibility suite, compat/SUITE, with pytest against
# fresh brokers started by its tests; compat/kafka/run.sh and
# compat/amqp/run.sh call it. Builds nothing: the broker is $BROKER_BIN
# (default target/debug/sluice; build it with `cargo build -p sluice`).
# Python is $PYTHON (default target/venv/bin/python, which scripts/test
# creates with compat/kafka/requirements.txt and compat/amqp/requirements.txt).
#
# Usage: compat/common/run-pytest.sh SUITE [pytest args...]
# SUITE is a folder under compat/ (`kafka`) or a path to a test folder
# elsewhere (examples/order-flow/test.sh passes its own folder).
set -euo pipefail

suite="${1:?usage: compat/common/run-pytest.sh SUITE [pytest args...]}"
shift
compat="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
root="$(cd "$compat/.." && pwd)"
if [[ "$suite" == */* ]]; then
    dir="$(cd "$suite" && pwd)"
    suite="${dir#"$root"/}"
else
    dir="$compat/$suite"
    suite="compat/$suite"
fi

export BROKER_BIN="${BROKER_BIN:-$root/target/debug/sluice}"
case "$BROKER_BIN" in /*) ;; *) BROKER_BIN="$root/$BROKER_BIN" ;; esac
python="${PYTHON:-$root/target/venv/bin/python}"

if [[ ! -x "$BROKER_BIN" ]]; then
    echo "$suite: broker binary $BROKER_BIN not found; run cargo build -p sluice" >&2
    exit 1
fi

# No __pycache__ in the source tree (the suites import support.py and
# compat/common; the AMQP suite's Celery worker imports celery_app.py).
export PYTHONDONTWRITEBYTECODE=1
cd "$dir"
status=0
"$python" -m pytest -q "$@" || status=$?
if [[ $status -eq 5 ]]; then
    echo "$suite: pytest collected no tests; treating that as a failure" >&2
    exit 1
fi
exit "$status"
