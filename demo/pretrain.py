"""The demo's "ImageNet": pre-trained starting weights for the narrow WideResNet-38 and the adversary.

At full scale both networks start from ImageNet weights, and PSA's recipe (frozen BatchNorm, frozen stem,
the momentum quirk, 10x head lr) depends on it. The demo does the same at its own scale: both networks
are first trained as plain multi-label classifiers on an *auxiliary* synthetic set that is not the demo's
target data:
- its own generator seed (AUX_SEED) and its own classes: N_CLASSES random designs drawn from the demo
  generator's whole design space (any saturated head colour, black or white second colour, any of the four
  head patterns; any dull body colour, any of five textures and texture scales), so the networks learn the
  visual vocabulary (colours, stripes, textures, shapes) but not the target classes;
- a design too close to a target class's head (same pattern, head colour within TARGET_MARGIN in RGB) is
  redrawn, so no target class appears under another name.
The weights are saved as files that the ordinary paths read exactly like ImageNet weights:
`net.weights` (WideResNet-38 backbone, classifier dropped, as ademxapp's file) and `eader.adv_weights`
(ResNet-18 state dict without `fc`, as torchvision's file). `aff_train.init: imagenet` reads net.weights.

Made once by `python -m demo.pretrain` (about RECIPE["steps"] steps per network) and shipped in
demo/weights/ with a manifest of SHA-256 sums; `ensure()` verifies them before use, refuses corrupt files
and never retrains silently: missing files are made with a log line saying so.
"""
import argparse
import hashlib
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

from psa_baseline.errors import InputError
from psa_baseline.fileio import save_torch, write_json
from psa_baseline.voc import EpochSeededDataset
from . import data as demo_data

log = logging.getLogger(__name__)

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
WRN_FILE, ADV_FILE, MANIFEST = "wrn38_demo.pth", "resnet18_demo.pth", "manifest.json"
AUX_SEED = 7919          # the target data uses demo-data's --data-seed (0): a different stream of images
N_CLASSES = 40
TARGET_MARGIN = 90.0     # RGB distance under which an aux head counts as a target head (with its pattern)
TEXTURES = ("mottled", "speckle", "banded", "spots", "plain")
# Bump "version" whenever anything below or the aux designs change: the manifest records it.
RECIPE = {
    "version": 1, "n_classes": N_CLASSES, "n_train": 4000, "n_val": 400, "aux_seed": AUX_SEED,
    "size": list(demo_data.DEFAULT_SIZE), "crop": 128, "resize_long": [112, 176],   # the demo's CAM training
    "batch_size": 16, "steps": 3000, "poly_power": 0.9, "momentum": 0.9, "bf16": True,
    "wrn": {"width": 0.125, "blocks": [2, 2, 5, 2], "lr": 0.1, "weight_decay": 5e-4},
    "adv": {"width": 0.5, "lr": 0.05, "weight_decay": 1e-4},
}


# ---------------------------------------------------------------------------------- aux designs

def _target_heads():
    return [(d["head"][0], d["pattern"]) for d in demo_data.class_designs(list(demo_data.DEFAULT_CLASSES))]


def aux_designs(n=N_CLASSES, seed=AUX_SEED):
    """n random class designs in demo.data's format (index = aux class 0..n-1), none like a target class."""
    rng = np.random.default_rng([seed, 1])
    targets = _target_heads()
    designs = []
    while len(designs) < n:
        head = np.array(demo_data._hsv(rng.uniform(), rng.uniform(0.65, 1.0), rng.uniform(0.7, 1.0)), float)
        pattern = demo_data.HEAD_PATTERNS[rng.integers(len(demo_data.HEAD_PATTERNS))]
        if any(p == pattern and np.linalg.norm(head - c) < TARGET_MARGIN for c, p in targets):
            continue
        second = np.array((15, 15, 15) if rng.uniform() < 0.7 else (245, 245, 245), float)
        body = np.array(demo_data._hsv(rng.uniform(), rng.uniform(0.05, 0.4), rng.uniform(0.3, 0.8)), float)
        designs.append({"name": f"aux{len(designs)}", "index": len(designs), "group": len(designs),
                        "body": body, "texture": TEXTURES[rng.integers(len(TEXTURES))],
                        "texture_scale": float(rng.uniform(0.6, 1.4)), "head": (head, second),
                        "pattern": pattern})
    return designs


def render_aux(n_images, offset, designs, seed=AUX_SEED, size=demo_data.DEFAULT_SIZE):
    """(list of HxWx3 uint8 images, float32 [n, len(designs)] labels) of aux images offset..offset+n-1."""
    images, labels = [], np.zeros((n_images, len(designs)), np.float32)
    for i in range(n_images):
        rgb, seg, _, _ = demo_data.render_image(seed, offset + i, designs, tuple(size), demo_data.V5_OBJECTS,
                                                  style="v6")
        present = np.unique(seg[(seg > 0) & (seg != demo_data.IGNORE)]) - 1
        labels[i, present] = 1
        images.append(rgb)
    return images, labels


class AuxDataset(EpochSeededDataset):
    """(index, augmented image, labels) from in-memory aux images; PSA's stage-1 augmentation without colour
    jitter (as the demo's CAM training)."""

    def __init__(self, images, labels, crop, resize_long, seed):
        from psa_baseline.voc import ClsAugment
        self.images, self.labels, self.seed = images, labels, seed
        self.ids = range(len(images))
        self.augment = ClsAugment(crop, resize_long=tuple(resize_long), jitter=False, flip=True)

    def __getitem__(self, i):
        return i, self.augment(self.images[i], self.item_rng(i)), torch.from_numpy(self.labels[i])


# ------------------------------------------------------------------------------------- training

def _train(name, net, dataset, val, lr, weight_decay, out_dir, recipe):
    """Plain multi-label classifier training (SGD momentum, poly lr, bf16 autocast), resumable from
    <out_dir>/.partial/<name>.pth. Returns the trained net and its val mean average precision."""
    from psa_baseline.training import (EpochSampler, autocast, load_checkpoint, make_loader, poly_classifier_step,
                                       resume, run_steps, save_checkpoint)
    device = torch.device("cpu")
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=recipe["momentum"], weight_decay=weight_decay)
    total, bs = recipe["steps"], recipe["batch_size"]
    sampler = EpochSampler(len(dataset), recipe["aux_seed"])
    loader = make_loader(dataset, sampler, bs, 0, device, recipe["aux_seed"])
    ck_path = out_dir / ".partial" / f"{name}.pth"
    if ck_path.exists() and load_checkpoint(ck_path).get("recipe") != recipe:
        log.info("%s: checkpoint made under another recipe; starting from step 0", ck_path)
        ck_path.unlink()
    step, _ = resume(ck_path, net, opt, log, total)
    amp = autocast(device, recipe["bf16"])
    step_fn = poly_classifier_step(net, opt, amp, lr, total, recipe["poly_power"], step)
    net.train()
    run_steps(loader, sampler, dataset, step_fn, step=step, total=total, steps_per_epoch=len(dataset) // bs,
              batch_size=bs, log=log, log_every=100, checkpoint_every=250, lr=lambda: opt.param_groups[0]["lr"],
              desc=f"demo-pretrain[{name}]", progress=sys.stderr.isatty(),
              checkpoint=lambda s: save_checkpoint(ck_path, model=net.state_dict(), optimizer=opt.state_dict(),
                                                   step=s, recipe=recipe))
    return net, mean_ap(net, val, amp)


@torch.no_grad()
def mean_ap(net, val, amp):
    """Mean average precision (%) over the aux classes on held-out images at full size."""
    from psa_baseline.voc import normalize
    images, labels = val
    net.eval()
    scores = []
    for img in images:
        with amp():
            scores.append(net(normalize(img)[None]).float()[0].numpy())
    net.train()
    scores = np.array(scores)
    aps = []
    for c in range(labels.shape[1]):
        pos = labels[:, c] > 0
        if pos.any():
            order = np.argsort(-scores[:, c])
            hits = pos[order]
            prec = np.cumsum(hits) / np.arange(1, len(hits) + 1)
            aps.append(float(prec[hits].mean()))
    return round(100 * float(np.mean(aps)), 2)


class _WRN(torch.nn.Module):
    """CAMNet with an aux-class head; only its backbone is kept (as ademxapp's classifier is dropped)."""

    def __init__(self, width, blocks, n_classes):
        super().__init__()
        from psa_baseline.cam_net import CAMNet
        from psa_baseline.resnet38 import Res38Spec
        # BN and stem train here: this is the pre-training, as ImageNet's was
        self.net = CAMNet(Res38Spec(width=width, blocks=tuple(blocks), frozen_bn=False, frozen_stem=False),
                          num_classes=n_classes)

    def forward(self, x):
        return self.net(x)


class _Adv(torch.nn.Module):
    def __init__(self, width, n_classes):
        super().__init__()
        from psa_eader.adversary import build_resnet
        self.net = build_resnet("resnet18", width=width, num_classes=n_classes)

    def forward(self, x):
        return self.net(x)


def make(out_dir=WEIGHTS_DIR, recipe=RECIPE, which=("wrn", "adv")):
    """Render the aux set, train both networks, write their weights and the manifest (atomically, the
    manifest last). Returns the manifest."""
    out_dir = Path(out_dir)
    (out_dir / ".partial").mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    torch.manual_seed(recipe["aux_seed"])
    designs = aux_designs(recipe["n_classes"], recipe["aux_seed"])
    train = render_aux(recipe["n_train"], 0, designs, recipe["aux_seed"], recipe["size"])
    val = render_aux(recipe["n_val"], recipe["n_train"], designs, recipe["aux_seed"], recipe["size"])
    log.info("aux set: %d train + %d val images of %d classes in %.0f s", recipe["n_train"], recipe["n_val"],
             recipe["n_classes"], time.time() - t0)
    dataset = AuxDataset(*train, recipe["crop"], recipe["resize_long"], recipe["aux_seed"])
    w, a = recipe["wrn"], recipe["adv"]
    nets = {  # key: (file, network, its lr and wd, classifier prefix left out of the file, what it is)
        "wrn": (WRN_FILE, lambda: _WRN(w["width"], w["blocks"], recipe["n_classes"]), w, "fc8.",
                "WideResNet-38 backbone (net.weights)"),
        "adv": (ADV_FILE, lambda: _Adv(a["width"], recipe["n_classes"]), a, "fc.",
                "ResNet-18 adversary without fc (eader.adv_weights)"),
    }
    files = {}
    for key in which:
        fname, build, hp, head, what = nets[key]
        t = time.time()
        net, ap = _train(key, build(), dataset, val, hp["lr"], hp["weight_decay"], out_dir, recipe)
        sd = {k: v.half() if v.is_floating_point() else v for k, v in net.net.state_dict().items()
              if not k.startswith(head)}
        save_torch(out_dir / fname, sd)
        files[fname] = {"network": what, "width": hp["width"], "aux_val_map": ap, "seconds": round(time.time() - t)}
        log.info("%s, width %g: aux val mAP %.1f, %.0f s", what, hp["width"], ap, time.time() - t)
    for name, info in files.items():
        info["sha256"] = sha256(out_dir / name)
    # one network per call is allowed (two processes in parallel): keep the other's entry of this recipe
    try:
        old = json.loads((out_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        old = {}
    if old.get("recipe") == recipe:
        files = {**old.get("files", {}), **files}
    manifest = {"recipe": recipe, "files": files, "torch": torch.__version__,
                "seconds": {n: f["seconds"] for n, f in files.items()}}
    write_json(out_dir / MANIFEST, manifest)
    return manifest


# ----------------------------------------------------------------------------------- verification

def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify(out_dir=WEIGHTS_DIR, recipe=RECIPE):
    """Check the manifest's recipe and every file's SHA-256; raises InputError naming the problem and the fix."""
    out_dir = Path(out_dir)
    fix = f"restore them (`git checkout -- {out_dir}`) or remake them: python -m demo.pretrain --out {out_dir}"
    mpath = out_dir / MANIFEST
    try:
        manifest = json.loads(mpath.read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"demo pre-trained weights: cannot read {mpath} ({e}); {fix}") from None
    if manifest.get("recipe") != recipe:
        raise InputError(f"demo pre-trained weights in {out_dir} were made by another recipe "
                         f"(version {manifest.get('recipe', {}).get('version')}, code {recipe['version']}); {fix}")
    for name in (WRN_FILE, ADV_FILE):
        info = manifest.get("files", {}).get(name)
        if info is None or not (out_dir / name).is_file():
            raise InputError(f"demo pre-trained weights: {out_dir / name} is missing; {fix}")
        if sha256(out_dir / name) != info["sha256"]:
            raise InputError(f"demo pre-trained weights: {out_dir / name} is corrupt (SHA-256 differs from "
                             f"{mpath}); {fix}")
    return manifest


def named_in(cfg):
    """Whether a config's weights keys point at this folder's files (the demo config does)."""
    for section, key in (("net", "weights"), ("eader", "adv_weights")):
        value = cfg[section][key]
        if value and value != "random":
            path = Path(value) if Path(value).is_absolute() else WEIGHTS_DIR.parent.parent / value
            if path.resolve().parent == WEIGHTS_DIR:
                return True
    return False


def ensure(out_dir=WEIGHTS_DIR, recipe=RECIPE, say=log.info):
    """Verified weights in out_dir: made once when there are none at all (said loudly); corrupt or
    other-recipe files are refused (never silently retrained)."""
    out_dir = Path(out_dir)
    if not (out_dir / MANIFEST).exists() and not (out_dir / WRN_FILE).exists():
        say(f"no demo pre-trained weights in {out_dir}: making them once (aux set + two classifiers, "
            f"{recipe['steps']} steps each; about 15 min on 2 CPU cores)")
        make(out_dir, recipe)
    return verify(out_dir, recipe)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m demo.pretrain", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(WEIGHTS_DIR), help="folder for the weights (default: demo/weights)")
    p.add_argument("--verify", action="store_true", help="only check the files against the manifest")
    p.add_argument("--force", action="store_true", help="remake even if verified weights are there")
    p.add_argument("--only", choices=("wrn", "adv"), help="train one network (two processes can share the work)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    try:
        if args.verify:
            print(json.dumps(verify(args.out)["files"], indent=2))
            return 0
        if not args.force:
            try:
                verify(args.out)
                print(f"verified weights already in {args.out}; --force remakes them")
                return 0
            except InputError:
                pass
        which = (args.only,) if args.only else ("wrn", "adv")
        print(json.dumps(make(args.out, which=which)["files"], indent=2))
    except InputError as e:
        print(f"demo.pretrain: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
