#!/usr/bin/env bash
# The test command: makes .venv if needed, then runs the test suite (extra args go to pytest).
set -euo pipefail
cd "$(dirname "$0")"
scripts/ensure_venv.sh
exec .venv/bin/python -m pytest -q "$@" tests
