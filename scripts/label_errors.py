"""Where the object pixels of scored label maps go on demo data: right, background, or another class, and how
much of the wrong-class share stays within the object's class family (the demo's groups of 2-3 classes that
share a body style or hue). Reads eval-seg's per_image.npz (pseudo labels: <variant>/eval_seg, DeepLabV3+:
<variant>/eval_deeplab) and the dataset's demo_meta.json.

    .venv/bin/python -m scripts.label_errors --data DATA RUN/baseline/eval_seg/per_image.npz \\
        RUN/baseline/eval_deeplab/per_image.npz

--bodies DIR (a folder of <id>.png label maps: make_pseudo/pseudo, make_seg/pred) splits the val objects' body
pixels by whether the object has a head: another class / background on bodies with and without one, to see
whether a network reads the body's class from the head or from the body itself.
"""
import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np

from demo.data import STRONG, WEAK, load_png, read_ids
from psa_baseline.constants import IGNORE, SEG_CLASS_NAMES
from psa_baseline.evaluation import load_per_image


def error_shares(confusion, family):
    """Percent of ground-truth object pixels predicted right, as background, as another class; and the percent
    of the wrong-class pixels whose prediction is in the same family. confusion: (21, 21), ground truth rows.
    family: {class index: family index}."""
    conf = confusion.astype(float)
    obj = [c for c in range(1, len(conf)) if conf[c].sum() > 0]
    n = conf[obj].sum()
    right, bg = sum(conf[c, c] for c in obj), conf[obj, 0].sum()
    other = n - right - bg  # object pixels given another object class
    within = sum(conf[a, b] for a in obj for b in range(1, len(conf))
                 if a != b and a in family and family[a] == family.get(b))
    return {"right": 100 * right / n, "background": 100 * bg / n, "other_class": 100 * other / n,
            "within_family": 100 * within / other if other else None}


def body_errors(data, pred_dir, ids):
    """{has_head: (body pixels, % another class, % background)} over the objects (connected regions of one
    ground-truth class) of `ids`; head and body as PartMasks marks them (STRONG, WEAK)."""
    acc = {True: [0, 0, 0], False: [0, 0, 0]}
    for i in ids:
        gt = load_png(data / "SegmentationClass" / f"{i}.png")
        part = load_png(data / "PartMasks" / f"{i}.png")
        pred = load_png(Path(pred_dir) / f"{i}.png")
        for c in np.unique(gt):
            if c in (0, IGNORE):
                continue
            n, comp = cv2.connectedComponents((gt == c).astype(np.uint8))
            for k in range(1, n):
                obj = comp == k
                body = obj & (part == WEAK)
                a = acc[bool((obj & (part == STRONG)).any())]
                a[0] += int(body.sum())
                a[1] += int((body & (pred != c) & (pred != 0)).sum())
                a[2] += int((body & (pred == 0)).sum())
    return {h: (n, 100 * o / max(n, 1), 100 * b / max(n, 1)) for h, (n, o, b) in acc.items()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="the demo dataset (its demo_meta.json names the families)")
    p.add_argument("per_image", nargs="*", help="per_image.npz files of eval-seg")
    p.add_argument("--bodies", nargs="+", default=[], metavar="DIR", help="label folders whose body pixels to split "
                   "by objects with and without a head (val ids)")
    args = p.parse_args(argv)
    groups = json.loads((Path(args.data) / "demo_meta.json").read_text())["groups"]
    family = {SEG_CLASS_NAMES.index(c): g for g, grp in enumerate(groups) for c in grp}
    for f in args.per_image:
        s = error_shares(load_per_image(f)["confusion"].sum(0), family)
        fam = "-" if s["within_family"] is None else f"{s['within_family']:.0f}%"
        print(f"{f}: object pixels right {s['right']:.1f}%, background {s['background']:.1f}%, another class "
              f"{s['other_class']:.1f}% (of which within the family {fam})")
    ids = read_ids(args.data, "val") if args.bodies else []
    for d in args.bodies:
        for has_head, (n, other, bg) in sorted(body_errors(Path(args.data), d, ids).items(), reverse=True):
            print(f"{d}: bodies of objects {'with' if has_head else 'without'} a head ({n} px): another class "
                  f"{other:.1f}%, background {bg:.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
