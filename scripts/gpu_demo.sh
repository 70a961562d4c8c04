#!/usr/bin/env bash
# Many seeds of the demo on a lent GPU: `psa-eader compare` of baseline vs EADER, paired by seed, up
# to DeepLabV3+, on the demo data the generator writes by default. Every run goes on at once (one GPU, one CPU
# thread each); what comes back is the comparison and each run's metrics, logs and per-image counts, not the
# maps or weights.
#   .gpu/ (gitignored) holds pydensecrf2-1.1.tar.gz and segmentation_models_pytorch-0.6.0-py3-none-any.whl
#   (`pip download --no-deps`), as for scripts/gpu_check.sh.
# Usage: OUT=dir scripts/gpu_demo.sh
#   DEV=cpu SEEDS="0" UNTIL=cam EXTRA="cam_train.epochs=1 ..." for a dry run on a CPU; DATA_ARGS for demo-data
#   (e.g. "--headless-share 0.3"); LIMIT seconds for the runs (what finished by then is still compared).
set -u
OUT=${OUT:-work/gpu_demo}; DEV=${DEV:-cuda}; SEEDS=${SEEDS:-"0 1 2 3 4"}; UNTIL=${UNTIL:-seg}
JOBS=${JOBS:-10}; LIMIT=${LIMIT:-480}; EXTRA=${EXTRA:-}; DATA_ARGS=${DATA_ARGS:-}; PY=${PY:-python3}
mkdir -p "$OUT"; OUT=$(cd "$OUT" && pwd)
G=$PWD/.gpu; T=$(mktemp -d); L=$T/logs; D=$T/data; W=$T/work
mkdir -p "$L"
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
source "$(dirname "$0")/gpu_deps.sh"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null; nproc; git log --oneline -1
  $PY -c "import torch; print('torch', torch.__version__, torch.cuda.is_available())"; } | tee "$L/env.txt"

# the metrics, logs and per-image counts of every run, and the comparison (small files only)
pack() {
    (cd "$T" && find work logs data/demo_meta.json \( -name '*.json' -o -name '*.md' -o -name '*.log' \
        -o -name '*.txt' -o -name 'per_image.npz' \) -size -5M -print 2>/dev/null | tar czf "$OUT/demo_runs.tgz" -T -)
}
t0=$SECONDS
$PY -m stages.cli demo-data --voc-root "$D" $DATA_ARGS 2>&1 | tee "$L/demo_data.log" | tail -1
echo "=== compare, seeds $SEEDS, until $UNTIL, $JOBS jobs, limit $LIMIT s $(date +%T)"
# timeout signals its whole process group, so the pool's run processes stop with it
timeout -k 10 "$LIMIT" $PY -m stages.cli compare --config demo --voc-root "$D" --work-dir "$W" --device "$DEV" \
    --seeds $SEEDS --until "$UNTIL" --jobs "$JOBS" $EXTRA > "$L/compare.log" 2>&1
rc=$?
echo "=== compare rc $rc, $((SECONDS - t0)) s"
tail -n 40 "$L/compare.log"
# per-stage seconds of every run (from DONE.json), to size the next call
$PY - "$W" <<'EOF' | tee "$L/stage_seconds.txt"
import json, sys
from pathlib import Path
for f in sorted(Path(sys.argv[1]).glob("runs/*/seed*/*/*/DONE.json")):
    d = json.loads(f.read_text())
    s = d.get("seconds", d.get("wall_seconds"))
    print(f.parent.relative_to(sys.argv[1]), s if s is None else round(float(s), 1))
EOF
pack
echo "=== done $((SECONDS - t0)) s"
