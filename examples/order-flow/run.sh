#!/usr/bin/env bash
# Runs the order flow (order_flow.py) against a running broker and prints
# its counts; exits 0 only if every count matched, 2 if the setup failed.
#
# Usage: examples/order-flow/run.sh [--kafka 127.0.0.1:9092]
#            [--amqp amqp://guest:guest@127.0.0.1:5672/%2f] [--orders 200]
#            [--rate 20] [--work-ms 10] [--timeout S] [--summary-json FILE]
#
# Python is $PYTHON if set, else the repository's venv target/venv (the one
# scripts/test creates), created here if missing; the pinned clients of
# requirements.txt are installed into it when they are not there.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"

if [[ -n "${PYTHON:-}" ]]; then
    python="$PYTHON"
else
    venv="$root/target/venv"
    python="$venv/bin/python"
    if [[ ! -x "$python" ]]; then
        echo "order-flow: creating the venv $venv" >&2
        python3 -m venv "$venv"
    fi
    # The pins of requirements.txt, checked without pip (fast on every run).
    if ! "$python" - "$here/requirements.txt" <<'PY'
import sys
from importlib.metadata import PackageNotFoundError, version
for line in open(sys.argv[1]):
    line = line.split("#")[0].strip()
    if not line:
        continue
    name, pinned = line.split("==")
    try:
        if version(name) != pinned:
            sys.exit(1)
    except PackageNotFoundError:
        sys.exit(1)
PY
    then
        echo "order-flow: installing $here/requirements.txt into $venv" >&2
        "$python" -m pip install --quiet --disable-pip-version-check -r "$here/requirements.txt"
    fi
fi

export PYTHONDONTWRITEBYTECODE=1
exec "$python" "$here/order_flow.py" "$@"
