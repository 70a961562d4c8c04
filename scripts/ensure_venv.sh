#!/usr/bin/env bash
# Create .venv with pip when it is missing or when requirements.txt / pyproject.toml changed since it was made.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
stamp=$(cat requirements.txt pyproject.toml | sha256sum | cut -c1-16)
if [ -f .venv/.ready ] && [ "$(cat .venv/.ready)" = "$stamp" ]; then
  exit 0
fi
echo "[psa-eader] setting up .venv (torch, torchvision, pydensecrf2, ...); takes a few minutes once" >&2
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q -r requirements.txt >&2
.venv/bin/pip install -q --no-deps -e . >&2
echo "$stamp" > .venv/.ready
