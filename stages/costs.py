"""Measured costs per training step and per image, and the wall time they give a planned run.

Only settings that were measured have costs; a stage without one is named as such, not guessed.
  demo on the CPU: docs/performance.md, `time ./run_pipeline.sh --eader both` on idle 2-core CPUs, the demo at
    its shipped sizes. bf16 (Intel with AMX): train-cam 121 s / 930 steps (EADER 330 s: 2.73x, its localizer trains in
    both turns), make-cam 36 s / 650 images, make-crf 21 s / 500 images (2 workers), train-aff 72 s / 496
    steps, make-pseudo 24 s / 650 images, train-seg 149 s / 500 steps, make-seg 6 s / 150 images. float32 (an
    AVX2-only AMD EPYC, Zen 3, where bf16: auto resolves to float32): train-cam 497 s (EADER 650 s: 1.31x), make-cam
    79.5 s, make-crf 27.3 s, train-aff 122 s, make-pseudo 31.1 s, train-seg 307 s, make-seg 7 s. An AVX-512 CPU capped
    to AVX2 kernels ran 1.35x faster (28 min 49 s against 38 min 59 s) and is not what AVX2 users have. Side by side
    (`--jobs 2`) in SIDE_BY_SIDE_COSTS below
  voc on one H200 (docs/notes/gpu.md, scripts/gpu_check.sh: the paper's networks at random init on VOCmini's 200
    real VOC images, 16 CPU cores): a train-cam step (batch 16, crop 448) 0.175 s float32 / 0.088 s bf16, an
    EADER 200/200 cycle 0.83x / 1.00x of that; make-cam 0.088 s per image float32 / 0.071 s bf16 with 4 loader
    workers (first pass over 56 image sizes; 0.072 / 0.039 s once every size was seen); make-crf 12.1
    images/s with 8 workers (CPU); train-aff 0.121 s per step (batch 8, crop 448); make-pseudo 0.033 s per
    image (walk on the GPU); train-seg 0.088 s per step (batch 16, crop 512); make-seg 0.040 s per image.
    An H100 took 10-50% longer (docs/notes/gpu.md); the H200's costs are kept.
Under torchrun with N processes the training and inference stages take about 1/N of this (not measured:
NCCL with two GPUs has not run; docs/notes/gpu.md).
"""
from psa_baseline import hardware

from .registry import SPECS


# (config name, device type) -> {stage: (seconds, per, bf16 or None)}; per is "step" or "image";
# bf16 None: the cost does not depend on it; cycle: EADER's train-cam factor by bf16
COSTS = {
    # the baseline's stages of the two timed runs above: bf16 (True) on AMX, float32 (False) on the AVX2-only CPU;
    # make-crf and make-pseudo run no network, so True / False there name the CPU kind (native bf16 or not)
    ("demo", "cpu"): {"train-cam": {True: 121 / 930, False: 497 / 930}, "make-cam": {True: 36 / 650, False: 79.5 / 650},
                      "make-crf": {True: 21 / 500, False: 27.3 / 500}, "train-aff": {True: 72 / 496, False: 122 / 496},
                      "make-pseudo": {True: 24 / 650, False: 31.1 / 650},
                      "train-seg": {True: 149 / 500, False: 307 / 500},
                      "make-seg": {True: 6 / 150, False: 7 / 150}},
    ("voc", "cuda"): {"train-cam": {False: 0.175, True: 0.088}, "make-cam": {False: 0.088, True: 0.071},
                      "make-crf": {None: 1 / 12.1}, "train-aff": {False: 0.121}, "make-pseudo": {None: 0.033},
                      "train-seg": {False: 0.088}, "make-seg": {False: 0.040}},
}
# The demo on the CPU with the two variants side by side, one thread each (pipeline --jobs 2; docs/performance.md,
# `time ./run_pipeline.sh --eader both --jobs 2`): the baseline's stages. bf16: AMX, on the earlier demo data (v6,
# radius 5, t 256; EADER's train-cam 427.9 s, 2.84x); float32: the AVX2-only Zen 3, the shipped sizes (EADER's
# train-cam 1247.9 s, 1.52x; its other stages within 17% of these)
SIDE_BY_SIDE_COSTS = {
    ("demo", "cpu"): {"train-cam": {True: 150.7 / 930, False: 821.2 / 930},
                      "make-cam": {True: 39.1 / 650, False: 137.4 / 650},
                      "make-crf": {True: 26.2 / 500, False: 39.8 / 500},
                      "train-aff": {True: 140.7 / 496, False: 158.4 / 496},
                      "make-pseudo": {True: 37.2 / 650, False: 33.8 / 650},
                      "train-seg": {True: 229.8 / 500, False: 561.1 / 500},
                      "make-seg": {True: 7.5 / 150, False: 12.6 / 150}},
}
SIDE_BY_SIDE_EADER_CYCLE = {("demo", "cpu"): {True: 427.9 / 150.7, False: 1247.9 / 821.2}}
# voc: docs/notes/gpu.md (200/200 cycle / baseline step); demo: the timed runs above (EADER / baseline train-cam seconds)
EADER_CYCLE = {("voc", "cuda"): {False: 0.83, True: 1.00}, ("demo", "cpu"): {True: 330 / 121, False: 650 / 497}}
MEASURED_CRF_WORKERS = {("demo", "cpu"): 2, ("voc", "cuda"): 8}
# the batch each training stage's per-step cost was measured at: a step's work is its images (compute-bound on
# both devices), so another batch size scales the cost per step rather than keeping it
MEASURED_BATCH = {("demo", "cpu"): {"train-cam": 16, "train-aff": 8, "train-seg": 8},
                  ("voc", "cuda"): {"train-cam": 16, "train-aff": 8, "train-seg": 16}}
# the DeepLabV3+ encoder the train-seg / make-seg costs were measured with; another one is not guessed from them
MEASURED_ENCODER = {("demo", "cpu"): "resnet18", ("voc", "cuda"): "resnet101"}
# where the costs were measured: the check says so, as another machine's times differ
MEASURED_ON = {("demo", "cpu"): "2-core x86 CPUs (bf16: Intel with AMX; float32: an AVX2-only AMD EPYC, Zen 3)",
               ("voc", "cuda"): "one H200; an H100 took 10-50% longer (docs/notes/gpu.md)"}
# bf16 autocast emulated on a CPU without bf16 instructions, against float32, the demo's train-cam step
# (docs/performance.md): the factor applied to float32 costs when bf16 is forced on such a CPU
EMULATED_BF16_SLOWDOWN = 14.0
TRAINING = {name: s.training for name, s in SPECS.items() if s.training}  # stage -> its config section
BATCH_SECTION = {**TRAINING, "train-seg": "seg_train"}  # train-seg counts iterations, not epochs
BF16_KEY = {"train-cam": ("cam_train", "bf16"), "make-cam": ("cam_infer", "bf16"), "train-aff": ("aff_train", "bf16"),
            "train-seg": ("seg_train", "bf16"), "make-seg": ("seg_train", "bf16")}


def cost_key(cfg):
    """(config name, device type): the setting the costs were measured in."""
    return cfg["name"], str(cfg["device"]).split(":")[0]


def stage_seconds(cfg, vcfg, stage, images, side_by_side=False):
    """Estimated seconds of `stage` over `images` images, or None when its cost was not measured here.
    side_by_side: the variants run at once, each process with its share of the threads (pipeline --jobs)."""
    key = cost_key(cfg)
    by_bf16 = (SIDE_BY_SIDE_COSTS if side_by_side else COSTS).get(key, {}).get(stage)
    if not by_bf16:
        return None
    t = vcfg["seg_train"]
    if stage in ("train-seg", "make-seg") and (t["encoder"] != MEASURED_ENCODER.get(key) or t["encoder_width"] != 1.0):
        return None  # costs were measured with one encoder at full width
    bf16 = bool(vcfg[BF16_KEY[stage][0]][BF16_KEY[stage][1]]) if stage in BF16_KEY else None
    if bf16 is None and key[1] == "cpu":  # a stage without a network: its cost follows the CPU kind it ran on
        bf16 = hardware.native_bf16_cpu()
    slowdown = 1.0
    if bf16 and key[1] == "cpu" and not hardware.native_bf16_cpu():  # measured bf16 costs are native ones
        bf16, slowdown = False, EMULATED_BF16_SLOWDOWN
    cost = by_bf16.get(bf16, by_bf16.get(None))
    if cost is None:
        return None
    cost *= slowdown
    if stage in MEASURED_BATCH[key]:
        cost *= vcfg[BATCH_SECTION[stage]]["batch_size"] / MEASURED_BATCH[key][stage]
    if stage == "train-seg":  # a number of iterations, not epochs
        return vcfg["seg_train"]["iterations"] * cost
    if stage in TRAINING:
        t = vcfg[TRAINING[stage]]
        steps = images // t["batch_size"] * t["epochs"]
        if stage == "train-cam" and vcfg["eader"]["enabled"]:
            factor = (SIDE_BY_SIDE_EADER_CYCLE if side_by_side else EADER_CYCLE).get(key, {}).get(bf16)
            if factor is None:
                return None
            cost *= factor
        return steps * cost
    if stage == "make-crf":
        cost *= MEASURED_CRF_WORKERS[key] / max(1, vcfg["crf"]["workers"])
    return images * cost


def human_seconds(s):
    return f"{s / 3600:.1f} h" if s >= 5400 else f"{s / 60:.0f} min" if s >= 90 else f"{s:.0f} s"


def wall_time_lines(cfg, plan, rows, jobs=1):
    """Lines for the check's output: estimated time per planned stage from the measured costs.
    plan: [(variant config, stage, module)]; rows: [(variant, stage, images, bytes)] in the same order.
    jobs > 1 with several variants: they run side by side, and the longest one sets the wall time."""
    key = cost_key(cfg)
    variants = list(dict.fromkeys(r[0] for r in rows))
    side = jobs > 1 and len(variants) > 1
    measured_side = side and key in SIDE_BY_SIDE_COSTS
    known, unknown = [], []
    for (vcfg, name, _), (variant, _, images, _) in zip(plan, rows):
        s = stage_seconds(cfg, vcfg, name, images, side_by_side=measured_side)
        if s is None:
            if not name.startswith("eval-"):  # scoring takes seconds to minutes
                unknown.append(f"{variant} {name}")
        else:
            known.append((variant, name, s))
    if not known:
        return [f"estimated wall time: no measured costs for config {cfg['name']} on {cfg['device']} "
                "(stages/costs.py lists the measured settings)"]
    how = ("variants side by side, a process each" if measured_side else
           "one process; side by side not measured here, so the sum is an upper bound" if side else "one process")
    lines = [f"estimated wall time on {cfg['device']} from costs measured on {MEASURED_ON[key]} "
             f"(stages/costs.py; {how}):"]
    lines += [f"  {variant:<10} {name:<12} {human_seconds(s):>8}" for variant, name, s in known]
    per = {v: sum(s for w, _, s in known if w == v) for v in variants}
    if measured_side:
        longest = max(per, key=per.get)
        total = f"total {human_seconds(per[longest])} (the longest variant, {longest}; " + \
                ", ".join(f"{v} {human_seconds(t)}" for v, t in per.items()) + ")"
    else:
        total = f"total {human_seconds(sum(per.values()))}"
    lines.append(f"  {total}" + (f"; not measured: {', '.join(unknown)}" if unknown else ""))
    return lines
