#!/usr/bin/env bash
# The whole pipeline. No arguments: the CPU demo (builds the demo dataset, then every stage to DeepLabV3+).
# Paper setting: ./run_pipeline.sh --config voc --voc-root DIR --device cuda [--eader on|off|both]
# Extra key=value arguments override config keys. --nproc N: N processes (torchrun). See README.md and docs/architecture.md.
set -euo pipefail
cd "$(dirname "$0")"
scripts/ensure_venv.sh
# --nproc N (N > 1): N processes under torchrun on this machine (one GPU each with --device cuda, gloo on
# the CPU); training stages split each global batch over them, inference stages split the images
nproc=1
args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --nproc) nproc="$2"; shift 2 ;;
        --nproc=*) nproc="${1#--nproc=}"; shift ;;
        *) args+=("$1"); shift ;;
    esac
done
if [ "$nproc" -gt 1 ]; then
    exec .venv/bin/torchrun --standalone --nproc_per_node "$nproc" -m stages.cli pipeline ${args[@]+"${args[@]}"}
fi
exec .venv/bin/psa-eader pipeline ${args[@]+"${args[@]}"}
