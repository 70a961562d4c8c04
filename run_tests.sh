#!/usr/bin/env bash
# The test command: makes .venv if needed, then runs the test suite (extra args go to pytest).
set -euo pipefail
cd "$(dirname "$0")"
scripts/ensure_venv.sh
# what decides precision and layout here, so a failure can be read against the machine
.venv/bin/python -c "from psa_baseline.hardware import summary; print('[tests]', summary())"
# lint first (ruff.toml): a syntax error or an undefined name fails here, named, in a second
.venv/bin/ruff check --quiet .
exec .venv/bin/python -m pytest -q "$@" tests
