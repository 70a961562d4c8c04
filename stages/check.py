"""Subcommand check: the pre-flight check of a pipeline run, in seconds, before hours of training.

    psa-eader check --config voc --voc-root /data/VOCdevkit/VOC2012 --eader both \\
        net.weights=/models/ilsvrc-cls_rna-a1_cls1000_ep-0001.params eader.adv_weights=/models/resnet18-f37072fd.pth

Runs nothing long. Checks the config (every stage's own checks, the device, weights keys the training
stages need), the VOC root (JPEGImages holds every listed id; image-level labels cover them; the
segmentation folder, SegmentationClassAug with SBD, covers the train list; SegmentationClass covers the
evaluation list), the weight files (readable, and they load into the configured networks, built on the
meta device: shapes only, no memory), and the free disk space for the planned outputs. Prints the plan:
stages per variant, images per stage, the estimated size of each stage's outputs.
Exit 0 when all is ready; exit 2 listing every problem, each with its fix. `pipeline --check` runs the same.
"""
import os
import shutil
import warnings
from pathlib import Path

import torch

from psa_baseline import voc
from psa_baseline.errors import InputError
from . import demo_module
from .builders import (RANDOM, needed_weights, null_weights_message, res38_spec, split_ids, weights_file,
                       weights_value)
from .config import BF16_KEYS, merge, variant_name
from .costs import EMULATED_BF16_SLOWDOWN
from .registry import SPECS

VARIANTS = {"off": [False], "on": [True], "both": [False, True]}
TRAINING = tuple(name for name, s in SPECS.items() if s.training)
TYPICAL_PIXELS = 500 * 375   # a VOC image, when no image can be measured
TYPICAL_CLASSES = 1.5        # classes per VOC image, when no labels can be read
SIZE_SAMPLE = 32             # images whose size is read to estimate the outputs
PNG_BYTES_PER_PIXEL = 0.05   # palette label PNGs compress to about this
EVAL_BYTES_PER_IMAGE = 4096  # per-image confusion matrices and part counts
LOG_BYTES = 1 << 20


def add_arguments(p):
    p.add_argument("--eader", choices=tuple(VARIANTS), default=None,
                   help="variants to check: baseline (off), EADER (on) or both, as for pipeline (default as "
                        "there: both, or what an eader.enabled override says)")
    from .registry import DEFAULT_UNTIL, GROUPS, group_name
    p.add_argument("--until", type=group_name, choices=GROUPS, default=DEFAULT_UNTIL,
                   help=f"last stage group of the planned run, as for pipeline (default {DEFAULT_UNTIL})")
    p.add_argument("--jobs", type=int, default=1,
                   help="variants side by side in the planned run, as for pipeline (default %(default)s)")


class Findings:
    """Problems (each says what is wrong and how to fix it) and notes, collected rather than raised."""

    def __init__(self):
        self.problems, self.notes = [], []

    def problem(self, text):
        if text not in self.problems:
            self.problems.append(text)

    def attempt(self, fn, *args):
        """fn(*args), or None with its InputError recorded as a problem."""
        try:
            return fn(*args)
        except InputError as e:
            self.problem(str(e))
            return None


def few(ids, n=5):
    ids = list(ids)
    return ", ".join(ids[:n]) + (f" (and {len(ids) - n} more)" if len(ids) > n else "")


def human(nbytes):
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(nbytes) < 1000 or unit == "TB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1000


# ------------------------------------------------------------------------------------------ the plan

def planned_stages(cfg, eader, until):
    """[(variant cfg, stage name, registry.Step)] in the order the pipeline runs them."""
    from .registry import steps
    out = []
    for enabled in VARIANTS[eader]:
        vcfg = merge(cfg, {"eader": {"enabled": enabled}})
        for step in steps(until):
            if step.runs_for(vcfg):
                out.append((vcfg, step.stage, step))
    return out


def needed_lists(cfg, stage_names):
    """{list path: role} of the split lists the planned stages read."""
    d, roles = cfg["data"], []
    if any(s in stage_names for s in ("train-adv", "train-cam")):
        roles.append((d["train_list"], "data.train_list"))
    roles += [(rel, "data.infer_lists") for rel in d["infer_lists"]]
    roles.append((d["eval_list"], "data.eval_list"))
    if "make-crf" in stage_names:
        roles.append((cfg["crf"]["list"], "crf.list"))
    if "train-seg" in stage_names:
        roles.append((cfg["seg_train"]["list"], "seg_train.list"))
    lists = {}
    for rel, key in roles:
        lists[rel] = f"{lists[rel]}, {key}" if rel in lists else key
    return lists


# ------------------------------------------------------------------------------------------ the config

def check_config(cfg, plan, f):
    for stage in dict.fromkeys(name for _, name, _ in plan):  # each stage's own refusals, once
        if SPECS[stage].check_config:
            f.attempt(SPECS[stage].load().check_config, cfg)
    dev = str(cfg["device"])
    if dev.startswith("cuda") and not torch.cuda.is_available():
        f.problem(f"device is {dev} but PyTorch sees no CUDA GPU here: run on the GPU machine, or pass "
                  f"--device cpu (hours become weeks at paper scale)")
    stages_by_key = {}  # one problem per null key, naming every stage that needs it
    for vcfg, name, _ in plan:
        for key in needed_weights(vcfg, name):
            if weights_value(vcfg, key) is None and name not in stages_by_key.setdefault(key, []):
                stages_by_key[key].append(name)
    for key, names in stages_by_key.items():
        if names:
            f.problem(null_weights_message(key, " and ".join(names), cfg))


# ------------------------------------------------------------------------------------------ the VOC root

def read_lists(cfg, lists, f):
    """{list path: ids} for the lists that can be read."""
    out = {}
    for rel in lists:
        ids = f.attempt(split_ids, cfg, rel)
        if ids is not None:
            out[rel] = ids
    return out


def open_root(cfg, f):
    if cfg["name"] == "demo" and cfg["voc_root"] and _demo_data_to_be_written(cfg["voc_root"]):
        f.notes.append(f"no demo dataset of this version at {cfg['voc_root']} yet: `pipeline` writes it first "
                       f"(or `psa-eader demo-data`); its images are checked once it exists")
        return None
    if not cfg["voc_root"]:
        demo = " (the demo: `psa-eader demo-data` makes it)" if cfg["name"] == "demo" else ""
        f.problem(f"no VOC root given: pass --voc-root DIR, the VOC2012 folder holding JPEGImages{demo}")
        return None
    try:
        return voc.VOCRoot(cfg["voc_root"], cfg["data"]["seg_dir"])
    except InputError as e:
        demo = "; the demo dataset is made by `psa-eader demo-data` (the pipeline runs it first)"
        f.problem(f"{e}{demo if cfg['name'] == 'demo' else ''}")
        return None


def _demo_data_to_be_written(root):
    """Whether `pipeline --config demo` would write the demo dataset at root: nothing there yet, or a demo
    dataset of an older generator version (stages.demo_data.ensure)."""
    demo_data = demo_module("data")
    is_current, read_meta = demo_data.is_current, demo_data.read_meta
    root = Path(root)
    if not root.exists() or (root.is_dir() and not any(root.iterdir())):
        return True
    meta = read_meta(root)
    return meta is not None and not is_current(meta)


def check_images(root, ids_by_list, lists, f):
    for rel, ids in ids_by_list.items():
        missing = [i for i in ids if not root.image_path(i).is_file()]
        if missing:
            f.problem(f"{len(missing)} of the {len(ids)} ids of {rel} ({lists[rel]}) have no image in "
                      f"{root.image_dir}: {few(missing)}; use the full VOC2012 JPEGImages (it holds every "
                      f"train_aug image) or a list of the ids you have")


def check_labels(cfg, root, ids_by_list, lists, f):
    """Image-level labels for every listed id; returns the label table (None when derived or unreadable)."""
    rel = cfg["data"]["cls_labels"]
    if rel is None:
        for lst, ids in ids_by_list.items():
            missing = [i for i in ids if not root.seg_path(i).is_file()] if root.seg_dir.is_dir() else ids
            if missing:
                f.problem(f"data.cls_labels is null, so image labels come from the label PNGs in "
                          f"{root.seg_dir}, but {len(missing)} ids of {lst} have none: {few(missing)}; set "
                          f"data.cls_labels=voc12/cls_labels.npy (PSA's labels) or add the PNGs (SBD)")
        return None
    from .config import resolve_data_path
    path = f.attempt(resolve_data_path, cfg, rel, "data.cls_labels file")
    table = f.attempt(voc.load_cls_labels, path) if path is not None else None
    if table is None:
        return None
    for lst, ids in ids_by_list.items():
        missing = [i for i in ids if i not in table]
        if missing:
            f.problem(f"{len(missing)} ids of {lst} ({lists[lst]}) have no image-level labels in {path}: "
                      f"{few(missing)}; use PSA's voc12/cls_labels.npy (train_aug + val) or a list "
                      f"of labelled ids")
    return table


def check_segmentation(cfg, root, ids_by_list, f):
    """SegmentationClassAug for the train list (needed when labels are derived from it) and
    SegmentationClass (data.eval_seg_dir) for the evaluation list."""
    d = cfg["data"]
    train = ids_by_list.get(d["train_list"])
    if train is not None and d["cls_labels"] is not None:
        have = root.seg_dir.is_dir()
        missing = [i for i in train if not (root.seg_dir / f"{i}.png").is_file()] if have else train
        if missing:
            f.notes.append(f"{root.seg_dir.name} has no PNG for {len(missing)} of the {len(train)} training "
                           f"ids ({few(missing, 3)}); not needed for this run (image labels come from "
                           f"data.cls_labels), but SBD's SegmentationClassAug is the usual train_aug setup")
    ev = ids_by_list.get(d["eval_list"])
    if ev is None:
        return
    gt_dir = root.root / d["eval_seg_dir"]
    if not gt_dir.is_dir():
        f.problem(f"{gt_dir} does not exist: evaluation (eval-cam, eval-seg) needs the ground-truth PNGs of "
                  f"{d['eval_list']}; use VOC2012's SegmentationClass or set data.eval_seg_dir")
        return
    missing = [i for i in ev if not (gt_dir / f"{i}.png").is_file()]
    if missing:
        f.problem(f"{len(missing)} of the {len(ev)} evaluation ids ({d['eval_list']}) have no ground truth in "
                  f"{gt_dir}: {few(missing)}; use VOC2012's SegmentationClass or an evaluation list of ids "
                  f"that have it (data.eval_list)")


def check_inferred_list(cfg, section, outputs, ids_by_list, f):
    """The ids of <section>.list must be in data.infer_lists, the only ids make-cam and make-pseudo write
    `outputs` for (make-crf reads crf.list's CAMs, train-seg seg_train.list's pseudo labels)."""
    rel = cfg[section]["list"]
    ids = ids_by_list.get(rel)
    if ids is None:
        return
    inferred = {i for r in cfg["data"]["infer_lists"] for i in ids_by_list.get(r, [])}
    missing = [i for i in ids if i not in inferred]
    if missing:
        f.problem(f"{len(missing)} ids of {section}.list {rel} get no {outputs} (not in data.infer_lists): "
                  f"{few(missing)}; add {section}.list to data.infer_lists")


def check_part_masks(cfg, root, f):
    pm = cfg["data"]["part_masks"]
    if pm and not (root.root / pm).is_dir():
        f.problem(f"data.part_masks: {root.root / pm} does not exist; set data.part_masks=null (demo data only)")


# ------------------------------------------------------------------------------------------ weight files

def meta_nets(cfg):
    """The networks as configured, on the meta device (shapes only)."""
    from psa_baseline.cam_net import CAMNet
    from psa_eader.adversary import build_resnet
    from .deeplab import build_deeplab
    with torch.device("meta"):
        return {"net.weights": CAMNet(res38_spec(cfg)),
                "eader.adv_weights": build_resnet("resnet18", cfg["eader"]["adv_width"]),
                "standalone.weights": build_resnet(cfg["standalone"]["arch"], cfg["standalone"]["width"]),
                "seg_train.encoder_weights": build_deeplab(cfg).encoder}


def load_report(key, net, path, cfg):
    """Load `path` into the meta network `net` with the loader training uses; [] or the problems."""
    from psa_baseline.weights import load_weights
    from psa_eader.adversary import load_backbone_weights
    from .deeplab import load_encoder_weights
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # copying into meta tensors is a no-op, and torch says so
        if key == "net.weights":
            missing = [k for k in load_weights(net, path).missing if k.startswith("backbone.")]
            mismatched, extra = [], []
        else:
            rep = (load_encoder_weights(net, path, cfg["seg_train"]["encoder"]) if key == "seg_train.encoder_weights"
                   else load_backbone_weights(net, path))
            missing, mismatched = rep["missing"], rep["mismatched"]
            # train-seg also refuses extra tensors: a deeper ResNet's file fits a shallower encoder's keys
            extra = rep["unexpected"] if key == "seg_train.encoder_weights" else []
    out = []
    if missing:
        out.append(f"{key}: {path} leaves {len(missing)} tensors of the network uninitialised "
                   f"({few(missing, 3)}): not the ImageNet file for this network; see `psa-eader weights list`")
    if mismatched:
        out.append(f"{key}: {path} has {len(mismatched)} tensors of the wrong shape ({few(mismatched, 3)}); "
                   f"the file is for another architecture or width")
    if extra:
        out.append(f"{key}: {path} has {len(extra)} tensors the network does not have ({few(extra, 3)}); the file "
                   f"is for another architecture")
    return out


def weight_keys_to_check(cfg, plan):
    keys = [k for vcfg, name, _ in plan for k in needed_weights(vcfg, name)]
    keys.append("standalone.weights")  # not a pipeline stage, but a file set there should fit too
    return list(dict.fromkeys(keys))


def check_weight_files(cfg, plan, f):
    nets = None
    for key in weight_keys_to_check(cfg, plan):
        value = weights_value(cfg, key)
        if value is None or value == RANDOM:
            if value == RANDOM and key != "standalone.weights":
                f.notes.append(f"{key}=random: that network starts from random weights (asked for explicitly)")
            continue
        path = f.attempt(weights_file, cfg, key)
        if path is None:
            continue
        if not os.access(path, os.R_OK):
            f.problem(f"{key}: {path} is not readable; fix its permissions")
            continue
        nets = nets or meta_nets(cfg)
        try:
            texts = load_report(key, nets[key], path, cfg)
        except InputError as e:
            texts = [f"{key}: {e} (`psa-eader weights list` shows the published files)"]
        for text in texts:
            f.problem(text)


# ------------------------------------------------------------------------------------------ disk space

def image_stats(root, ids, table):
    """(mean pixels per image from a sample of headers, mean classes per image from the labels)."""
    step = max(1, len(ids) // SIZE_SAMPLE)
    sizes = []
    for i in ids[::step][:SIZE_SAMPLE]:
        try:
            h, w = root.image_size(i)
            sizes.append(h * w)
        except InputError:
            continue  # reported by check_images
    pixels = sum(sizes) / len(sizes) if sizes else TYPICAL_PIXELS
    counts = [float(table[i].sum()) for i in ids if table is not None and i in table]
    classes = sum(counts) / len(counts) if counts else TYPICAL_CLASSES
    return pixels, classes


def model_bytes(cfg):
    """float32 bytes of the CAM network, AffinityNet, the adversary and DeepLabV3+ as configured."""
    from psa_baseline.affinity import AffinityNet
    from psa_eader.adversary import build_resnet
    from .deeplab import build_deeplab
    with torch.device("meta"):
        nets = {"cam": meta_nets(cfg)["net.weights"], "aff": AffinityNet(res38_spec(cfg)),
                "adv": build_resnet("resnet18", cfg["eader"]["adv_width"]), "seg": build_deeplab(cfg)}
    return {k: 4 * sum(p.numel() for p in n.parameters()) for k, n in nets.items()}


def stage_estimates(cfg, plan, ids_by_list, pixels, classes):
    """[(variant, stage, images, bytes)]: the outputs each planned stage writes, estimated."""
    d = cfg["data"]
    infer = list(dict.fromkeys(i for rel in d["infer_lists"] for i in ids_by_list.get(rel, [])))
    n = {"train": len(ids_by_list.get(d["train_list"], [])), "infer": len(infer),
         "eval": len(ids_by_list.get(d["eval_list"], [])), "crf": len(ids_by_list.get(cfg["crf"]["list"], [])),
         "seg": len(ids_by_list.get(cfg["seg_train"]["list"], []))}
    m = model_bytes(cfg)
    rows = []
    for vcfg, name, _ in plan:
        eader_on = vcfg["eader"]["enabled"]
        # a training stage keeps the final weights and a checkpoint (weights + SGD momentum)
        images, size = {
            "train-adv": (n["train"], 3 * m["adv"]),
            "train-cam": (n["train"], 3 * m["cam"] + (3 * m["adv"] if eader_on else 0)),
            "make-cam": (n["infer"], n["infer"] * classes * pixels * 4),
            "eval-cam": (n["eval"], n["eval"] * EVAL_BYTES_PER_IMAGE),
            "make-crf": (n["crf"], n["crf"] * 2 * (1 + classes) * pixels * 4),
            "train-aff": (n["crf"], 3 * m["aff"]),
            "make-pseudo": (n["infer"], n["infer"] * pixels * (PNG_BYTES_PER_PIXEL + (
                (1 + classes) * 4 / 64 if vcfg["rw"]["save_scores"] else 0))),
            "eval-seg": (n["eval"], n["eval"] * EVAL_BYTES_PER_IMAGE),
            "train-seg": (n["seg"], 3 * m["seg"]),
            "make-seg": (n["eval"], n["eval"] * pixels * PNG_BYTES_PER_PIXEL),
        }[name]
        rows.append((variant_name(vcfg), name, images, int(size + LOG_BYTES)))
    return rows


def folder_bytes(path):
    total = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total


def existing_ancestor(path):
    path = Path(path).absolute()
    while not path.exists():
        path = path.parent
    return path


def check_disk(cfg, rows, f):
    """Free space on the work dir's disk against the outputs still to write; returns (need, free)."""
    work = Path(cfg["work_dir"])
    base = existing_ancestor(work)
    if not base.is_dir():
        f.problem(f"work dir {work}: {base} is a file, not a folder; pass --work-dir DIR")
        return 0, 0
    if not os.access(base, os.W_OK | os.X_OK):
        f.problem(f"work dir {work}: {base} is not writable; pass --work-dir DIR on a disk you can write")
    need = 0
    for variant, stage, _, size in rows:  # outputs already there (an earlier run) need no new space
        need += max(0, size - folder_bytes(work / variant / stage.replace("-", "_")))
    free = shutil.disk_usage(base).free
    if need > free:
        f.problem(f"work dir {work}: {human(free)} free on its disk, the planned outputs need about "
                  f"{human(need)}; free space or pass --work-dir DIR on a larger disk")
    return need, free


# ------------------------------------------------------------------------------------------ report

def plan_lines(cfg, rows, need, free):
    lines = [f"plan: config {cfg['name']}, device {cfg['device']}, work dir {cfg['work_dir']}",
             f"  {'variant':<10} {'stage':<12} {'images':>7}  {'outputs (est.)':>14}"]
    for variant, stage, images, size in rows:
        lines.append(f"  {variant:<10} {stage:<12} {images:>7}  {human(size):>14}")
    total = sum(r[3] for r in rows)
    lines.append(f"  estimated outputs {human(total)}; still to write {human(need)}; free {human(free)}")
    return lines


def precision_lines(cfg, f):
    """The machine and the precision each bf16 switch resolved to on it (config.BF16_KEYS); a note where
    bf16 would be emulated."""
    from psa_baseline import hardware
    on = [k for k in BF16_KEYS if cfg[k.split(".")[0]][k.split(".")[1]]]
    cpu = str(cfg["device"]) == "cpu"
    if on and cpu and not hardware.native_bf16_cpu():
        f.notes.append(f"{', '.join(on)} true on a CPU without native bf16: autocast emulates it, about "
                       f"{EMULATED_BF16_SLOWDOWN:.0f}x slower than float32; set them to auto or false")
    return [f"machine: {hardware.summary()}",
            f"precision on {cfg['device']}: bf16 autocast for {', '.join(on) if on else 'no stage'}, float32 "
            f"elsewhere{' (bf16: auto resolves by the CPU)' if cpu else ''}"]


def run_check(cfg, eader="off", until=None, out=print, jobs=1):
    """Check everything; print the plan and notes; raise InputError listing every problem. until: as for
    pipeline (None: its default); jobs: as pipeline --jobs, for the wall-time estimate."""
    from .registry import DEFAULT_UNTIL
    until = until or DEFAULT_UNTIL
    f = Findings()
    plan = planned_stages(cfg, eader, until)
    names = [name for _, name, _ in plan]
    check_config(cfg, plan, f)
    lists = needed_lists(cfg, names)
    root = open_root(cfg, f)
    ids_by_list, table = {}, None
    if root is not None:
        ids_by_list = read_lists(cfg, lists, f)
        check_images(root, ids_by_list, lists, f)
        table = check_labels(cfg, root, ids_by_list, lists, f)
        check_segmentation(cfg, root, ids_by_list, f)
        check_part_masks(cfg, root, f)
    if "make-crf" in names:
        check_inferred_list(cfg, "crf", "CAMs", ids_by_list, f)
    if "train-seg" in names:
        check_inferred_list(cfg, "seg_train", "pseudo labels", ids_by_list, f)
    check_weight_files(cfg, plan, f)
    every = list(dict.fromkeys(i for ids in ids_by_list.values() for i in ids))
    pixels, classes = image_stats(root, every, table) if root is not None else (TYPICAL_PIXELS, TYPICAL_CLASSES)
    rows = stage_estimates(cfg, plan, ids_by_list, pixels, classes)
    need, free = check_disk(cfg, rows, f)
    out("\n".join(plan_lines(cfg, rows, need, free)))
    out("\n".join(precision_lines(cfg, f)))
    from .costs import wall_time_lines
    out("\n".join(wall_time_lines(cfg, plan, rows, jobs)))
    for note in f.notes:
        out(f"note: {note}")
    if f.problems:
        raise InputError(f"not ready, {len(f.problems)} problem(s):\n" +
                         "\n".join(f"  {k}. {p}" for k, p in enumerate(f.problems, 1)))
    out("ready: every check passed")


def main(args):
    from .cli import config_from_args
    from .pipeline import variants_asked
    run_check(config_from_args(args), variants_asked(args.eader, args.set), args.until,
              out=lambda m: print(m, flush=True), jobs=args.jobs)


if __name__ == "__main__":
    from .cli import stage_main
    stage_main("check")
