#!/usr/bin/env bash
# One prepared GPU session: the CUDA-only tests and the paper-scale figures, on the 200 real VOC images of
# VOCmini, each part under its own time limit so one failure does not lose the rest. Run from the checkout's root.
#   .gpu/ (gitignored) holds: VOCmini/ (a copy of ../shared/data/VOCmini), pydensecrf2-1.1.tar.gz and
#   segmentation_models_pytorch-0.6.0-py3-none-any.whl (`pip download --no-deps`).
# Usage: OUT=dir scripts/gpu_check.sh   (DEV=cpu and EXTRA="key=value ..." for a dry run on a CPU; PARTS picks
# parts by name: tests dist cam pipeline makecam pseudo eader eader_autocast seg nccl; UNTIL=cam stops the
# pipeline at the CAMs). docs/notes/gpu.md has each part's time on the lent machines; on a machine with two GPUs
# or more, part dist runs NCCL with one GPU per rank (else both ranks share one GPU over gloo).
set -u
OUT=${OUT:-work/gpu_check}; DEV=${DEV:-cuda}; EXTRA=${EXTRA:-}; PY=${PY:-python3}
PARTS=${PARTS:-"tests dist cam pipeline makecam pseudo eader eader_autocast seg nccl"}
N_CAM=${N_CAM:-40}; N_PSEUDO=${N_PSEUDO:-30}; UNTIL=${UNTIL:-seg}
mkdir -p "$OUT"
# logs and data outside OUT (the device tool returns at most 8 files): OUT gets logs.tgz after every part
G=$PWD/.gpu; T=$(mktemp -d); L=$T/logs; V=$T/VOCmini; W=$T/work
mkdir -p "$L"
pack() { cp "$W"/logs/*.log "$L"/ 2>/dev/null; tar czf "$OUT/logs.tgz" -C "$L" .; }
export PYTHONUNBUFFERED=1
source "$(dirname "$0")/gpu_deps.sh"
rm -rf "$V" && cp -r "$G/VOCmini" "$V" && chmod -R u+w "$V"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null; nproc
  $PY -c "import torch; print('torch', torch.__version__, torch.cuda.is_available())"; } | tee "$L/env.txt"

part() {  # name, seconds, command...
    local name=$1 secs=$2; shift 2
    case " $PARTS " in *" $name "*) ;; *) return ;; esac
    echo "=== $name (limit $secs s) $(date +%T)"
    local t0=$SECONDS
    if declare -F "$1" > /dev/null; then "$@" > "$L/$name.log" 2>&1; else timeout "$secs" "$@" > "$L/$name.log" 2>&1; fi
    local rc=$?
    tail -n 25 "$L/$name.log"
    echo "=== $name rc $rc, $((SECONDS - t0)) s"
    pack
}

LISTS=(data.train_list=ImageSets/Segmentation/train.txt
       "data.infer_lists=[ImageSets/Segmentation/train.txt,ImageSets/Segmentation/val.txt]"
       data.eval_list=ImageSets/Segmentation/val.txt crf.list=ImageSets/Segmentation/train.txt
       seg_train.list=ImageSets/Segmentation/train.txt)
RANDOM_INIT=(net.weights=random eader.adv_weights=random seg_train.encoder_weights=random)
SHORT=(cam_train.epochs=2 cam_train.log_every=4 eader.phase_steps=4 aff_train.epochs=1 aff_train.log_every=4
       seg_train.iterations=30 seg_train.log_every=10 crf.workers=8)

part tests 120 $PY -m pytest -q -p no:cacheprovider tests/test_random_walk.py tests/test_distributed.py \
    -k "gpu or sync_batchnorm_replaces"
# the multi-process tests with two ranks on this device (on one GPU over gloo: NCCL refuses to share it)
part dist 240 env PSA_TEST_DEVICE="$DEV" $PY -m pytest -q -p no:cacheprovider tests/test_distributed.py
part cam 150 $PY -m scripts.bench_make_cam layouts --config voc --voc-root "$V" --model random --device "$DEV" \
    --images "$N_CAM" --rounds 2 --threads 8 --set $EXTRA
# the paper's config, shortened (random init: the figures are times and a working CUDA path, not mIoU)
part pipeline 300 $PY -m stages.cli pipeline --config voc --voc-root "$V" --work-dir "$W" --device "$DEV" \
    --eader on --until "$UNTIL" "${LISTS[@]}" "${RANDOM_INIT[@]}" "${SHORT[@]}" $EXTRA
# make-cam again on the pipeline's CAM net: float32 / bf16, loader workers 0 / 4 (the run above: float32, 4)
makecam() {
    local C=$W/eader/make_cam/cams
    cp -r "$C" "$T/cams_fp32_w4"
    for s in "fp32 0" "bf16 0" "bf16 4"; do
        set -- $s
        $PY -m stages.cli make-cam --config voc --voc-root "$V" --work-dir "$W" --device "$DEV" --force \
            "${LISTS[@]}" "${RANDOM_INIT[@]}" "${SHORT[@]}" eader.enabled=true cam_infer.bf16=$([ $1 = bf16 ] && echo true || echo false) \
            cam_infer.num_workers=$2 $EXTRA 2>&1 | grep "CAMs in"
        cp -r "$C" "$T/cams_$1_w$2"
    done
    for d in fp32 bf16; do
        [ -d "$T/cams_${d}_w4" ] && diff -rq "$T/cams_${d}_w0" "$T/cams_${d}_w4" > /dev/null \
            && echo "$d: workers 0 and 4 wrote byte-identical CAM files" || echo "$d: CAM files DIFFER"
    done
}
part makecam 200 makecam  # a shell function: no time limit of its own
part pseudo 120 $PY -m scripts.bench_pseudo --config voc --voc-root "$V" --cam-dir "$W/eader/make_cam/cams" \
    --model "$W/eader/train_aff/aff_net.pth" --device "$DEV" --images "$N_PSEUDO" --cpu-images 10 --set $EXTRA
part eader 200 $PY -m scripts.bench_eader --settings full --dtypes fp32 bf16 --batch 16 --rounds 3 \
    --device "$DEV" --no-memory --out "$L/bench_eader"
part eader_autocast 120 $PY -m scripts.bench_eader --settings full --dtypes bf16 --batch 16 --rounds 3 \
    --device "$DEV" --no-memory --out "$L/bench_eader_autocast" --set eader.autocast=true
part seg 120 $PY -m scripts.bench_seg --config voc --device "$DEV" --steps 10 --images 10 --image-size 500 375 \
    seg_train.encoder_weights=random
# NCCL with two ranks needs two GPUs; on one, this records what NCCL says when both ranks share it
cat > "$T/nccl_probe.py" <<'EOF'
import os, socket, torch, torch.distributed as dist, torch.multiprocessing as mp
def work(rank, world, port):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.cuda.set_device(rank % torch.cuda.device_count())
    dist.init_process_group("nccl", rank=rank, world_size=world)
    t = torch.full((4,), float(rank + 1), device="cuda")
    dist.all_reduce(t)
    print(f"rank {rank} on cuda:{torch.cuda.current_device()}: all_reduce {t.tolist()} (expect {world * (world + 1) / 2})")
    dist.destroy_process_group()
if __name__ == "__main__":
    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
    mp.spawn(work, args=(2, port), nprocs=2, join=True)
EOF
part nccl 60 $PY "$T/nccl_probe.py"
pack
rm -rf "$T"
