#!/usr/bin/env bash
# The whole pipeline. No arguments: the CPU demo (builds the demo dataset, then the CAM stage).
# Paper setting: ./run_pipeline.sh --config voc --voc-root DIR --device cuda [--eader on|off|both]
# Extra key=value arguments override config keys. See README.md.
set -euo pipefail
cd "$(dirname "$0")"
scripts/ensure_venv.sh
exec .venv/bin/psa-eader pipeline "$@"
