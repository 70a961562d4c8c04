"""Measured costs per training step and per image, and the wall time they give a planned run.

Only settings that were measured have costs; a stage without one is named as such, not guessed.
  demo on the CPU: README, `time ./run_pipeline.sh --eader both` on the idle 2-core CPU (bf16 as
    configs/demo.yaml, work/timing8): train-cam 100.1 s / 930 steps (EADER 279.4 s: 2.79x, its localizer
    trains in both turns), make-cam 31.5 s / 650 images, make-crf 17.4 s / 500 images (2 workers),
    train-aff 37.5 s / 186 steps, make-pseudo 28.0 s / 650 images, train-seg 136.1 s / 500 steps, make-seg
    5.3 s / 150 images
  voc on one H200 (docs/gpu.md, scripts/gpu_check.sh: the paper's networks at random init on VOCmini's 200
    real VOC images, 16 CPU cores): a train-cam step (batch 16, crop 448) 0.175 s float32 / 0.088 s bf16, an
    EADER 200/200 cycle 0.83x / 1.00x of that; make-cam 0.088 s per image float32 / 0.071 s bf16 with 4 loader
    workers (first pass over 56 image sizes; 0.072 / 0.039 s once every size was seen); make-crf 12.1
    images/s with 8 workers (CPU); train-aff 0.121 s per step (batch 8, crop 448); make-pseudo 0.033 s per
    image (walk on the GPU); train-seg 0.088 s per step (batch 16, crop 512); make-seg 0.040 s per image.
    (An H100, issue 12 before this work: train-cam 0.187 / 0.096 s, make-cam 0.128 s, make-pseudo 0.19 s.)
Under torchrun with N processes the training and inference stages take about 1/N of this (not measured:
NCCL with two GPUs has not run; docs/gpu.md).
"""

# (config name, device type) -> {stage: (seconds, per, bf16 or None)}; per is "step" or "image";
# bf16 None: the cost does not depend on it; cycle: EADER's train-cam factor by bf16
COSTS = {
    ("demo", "cpu"): {"train-cam": {True: 100.1 / 930}, "make-cam": {True: 31.5 / 650},
                      "make-crf": {None: 17.4 / 500}, "train-aff": {True: 37.5 / 186},
                      "make-pseudo": {None: 28.0 / 650},
                      "train-seg": {True: 136.1 / 500}, "make-seg": {True: 5.3 / 150}},
    ("voc", "cuda"): {"train-cam": {False: 0.175, True: 0.088}, "make-cam": {False: 0.088, True: 0.071},
                      "make-crf": {None: 1 / 12.1}, "train-aff": {False: 0.121}, "make-pseudo": {None: 0.033},
                      "train-seg": {False: 0.088}, "make-seg": {False: 0.040}},
}
# voc: docs/gpu.md (200/200 cycle / baseline step); demo bf16: the README's pipeline run (EADER / baseline
# train-cam seconds); demo float32: scripts/bench_eader.py --settings demo, cycle ratio before NHWC training
EADER_CYCLE = {("voc", "cuda"): {False: 0.83, True: 1.00}, ("demo", "cpu"): {True: 2.79, False: 1.59}}
MEASURED_CRF_WORKERS = {("demo", "cpu"): 2, ("voc", "cuda"): 8}
TRAINING = {"train-cam": "cam_train", "train-aff": "aff_train", "train-adv": "adv_pretrain"}
BF16_KEY = {"train-cam": ("cam_train", "bf16"), "make-cam": ("cam_infer", "bf16"), "train-aff": ("aff_train", "bf16"),
            "train-seg": ("seg_train", "bf16"), "make-seg": ("seg_train", "bf16")}


def stage_seconds(cfg, vcfg, stage, images):
    """Estimated seconds of `stage` over `images` images, or None when its cost was not measured here."""
    key = (cfg["name"], str(cfg["device"]).split(":")[0])
    by_bf16 = COSTS.get(key, {}).get(stage)
    if not by_bf16:
        return None
    bf16 = bool(vcfg[BF16_KEY[stage][0]][BF16_KEY[stage][1]]) if stage in BF16_KEY else None
    cost = by_bf16.get(bf16, by_bf16.get(None))
    if cost is None:
        return None
    if stage == "train-seg":  # a number of iterations, not epochs
        return vcfg["seg_train"]["iterations"] * cost
    if stage in TRAINING:
        t = vcfg[TRAINING[stage]]
        steps = images // t["batch_size"] * t["epochs"]
        if stage == "train-cam" and vcfg["eader"]["enabled"]:
            factor = EADER_CYCLE.get(key, {}).get(bf16)
            if factor is None:
                return None
            cost *= factor
        return steps * cost
    if stage == "make-crf":
        cost *= MEASURED_CRF_WORKERS[key] / max(1, vcfg["crf"]["workers"])
    return images * cost


def human_seconds(s):
    return f"{s / 3600:.1f} h" if s >= 5400 else f"{s / 60:.0f} min" if s >= 90 else f"{s:.0f} s"


def wall_time_lines(cfg, plan, rows):
    """Lines for the check's output: estimated time per planned stage from the measured costs.
    plan: [(variant config, stage, module)]; rows: [(variant, stage, images, bytes)] in the same order."""
    known, unknown = [], []
    for (vcfg, name, _), (variant, _, images, _) in zip(plan, rows):
        s = stage_seconds(cfg, vcfg, name, images)
        if s is None:
            if not name.startswith("eval-"):  # scoring takes seconds to minutes
                unknown.append(f"{variant} {name}")
        else:
            known.append((variant, name, s))
    if not known:
        return [f"estimated wall time: no measured costs for config {cfg['name']} on {cfg['device']} "
                "(stages/costs.py lists the measured settings)"]
    lines = [f"estimated wall time on {cfg['device']} from measured costs (stages/costs.py; one process):"]
    lines += [f"  {variant:<10} {name:<12} {human_seconds(s):>8}" for variant, name, s in known]
    total = sum(s for _, _, s in known)
    lines.append(f"  total {human_seconds(total)}" + (f"; not measured: {', '.join(unknown)}" if unknown else ""))
    return lines
