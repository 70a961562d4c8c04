"""Does the CAM classifier fit its labels, and which classes' CAMs miss whole objects?

A classifier that never learns a class gives that class a map that is zero, or nearly, on its objects (the CAM
is the ReLU of the class's map over conv6, and the logit its average), so its CAMs miss whole classes, not
only their bodies; PSA's ha CRF labels then trust those objects as background. For one finished run
(train-cam and make-cam done), per class present in the lists:
  - the classifier on whole images at scale 1: average precision, and the share of images holding the class
    whose logit is above 0 (the sigmoid's 0.5), on the train and on the val list;
  - the share of the class's object pixels whose own CAM is under ha's cut, the value m where (1 - m)^alpha_ha
    = m: there, before the CRF, ha's background score beats the class;
  - the images whose object of that class the CAM misses (over half of its pixels under the cut).

    .venv/bin/python -m scripts.cam_fit --config demo --work-dir RUN --voc-root DATA [--variant eader] \\
        [--set cam_train.lr=0.03] [--out fit.json]
"""
import json
import sys
from pathlib import Path

import numpy as np
import torch

from psa_baseline.cam_infer import normalise_batch
from psa_baseline.constants import SEG_CLASS_NAMES
from psa_baseline.evaluation import average_precision, load_cam_dict
from stages.builders import labels_for, split_ids, voc_root
from scripts.run_args import run_config, run_parser
from stages.make_cam import load_cam_net

MISSED = 0.5  # an object counts as missed when more than this share of its pixels is under the cut


def ha_cut(alpha):
    """The CAM value m with (1 - m)^alpha = m: below it ha's background score wins before the CRF."""
    lo, hi = 0.0, 1.0
    for _ in range(60):  # (1 - m)^alpha - m falls from 1 at m = 0 to -1 at m = 1
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if (1 - mid) ** alpha > mid else (lo, mid)
    return (lo + hi) / 2


def classifier_fit(logits, labels):
    """{class index: {"ap", "tpr", "images"}} over the classes some image holds; logits and labels (N, C)."""
    logits, labels = np.asarray(logits, float), np.asarray(labels) > 0
    return {int(c): {"ap": average_precision(logits[:, c], labels[:, c]),
                     "tpr": float(np.mean(logits[labels[:, c], c] > 0)), "images": int(labels[:, c].sum())}
            for c in np.nonzero(labels.any(0))[0]}


class Misses:
    """Per class: object pixels whose own CAM is under the cut, and images whose object the CAM misses."""

    def __init__(self, cut):
        self.cut, self.rows = cut, {}

    def add(self, cams, gt):
        for c, cam in cams.items():
            obj = gt == c + 1
            if not obj.any():
                continue
            under = int((cam[obj] < self.cut).sum())
            r = self.rows.setdefault(int(c), {"pixels": 0, "under": 0, "images": 0, "missed": 0})
            r["pixels"] += int(obj.sum())
            r["under"] += under
            r["images"] += 1
            r["missed"] += int(under > MISSED * obj.sum())

    def result(self):
        return {c: {"under_cut": round(100 * r["under"] / r["pixels"], 1), "missed_images": r["missed"],
                    "images": r["images"]} for c, r in sorted(self.rows.items())}


def logits_of(net, root, ids):
    with torch.no_grad():
        return np.stack([net(normalise_batch(root.read_image(i)[None], "cpu")).float().numpy()[0] for i in ids])


def main(argv=None):
    p = run_parser(__doc__, "config overrides the run was made with that matter here (network, crf.alpha_ha)")
    p.add_argument("--train-list", default="ImageSets/Segmentation/train.txt")
    p.add_argument("--val-list", default="ImageSets/Segmentation/val.txt")
    p.add_argument("--n", type=int, default=200, help="first N images of each list")
    p.add_argument("--out", help="also write the figures as JSON here")
    args = p.parse_args(argv)
    cfg = run_config(args)
    root, run = voc_root(cfg), Path(args.work_dir) / args.variant
    net = load_cam_net(cfg, run / "train_cam" / "cam_net.pth", "cpu")
    cut = ha_cut(cfg["crf"]["alpha_ha"])
    out = {"ha_cut": round(cut, 4), "lists": {}}
    for name, rel in (("train", args.train_list), ("val", args.val_list)):
        ids = split_ids(cfg, rel)[:args.n]
        labels = labels_for(cfg, root, ids)
        fit = classifier_fit(logits_of(net, root, ids), np.stack([labels[i] for i in ids]))
        misses = Misses(cut)
        for i in ids:
            gt = root.read_seg(i)
            misses.add(load_cam_dict(run / "make_cam" / "cams" / f"{i}.npy", gt.shape, labels[i]), gt)
        miss = misses.result()
        aps = [f["ap"] for f in fit.values()]
        out["lists"][name] = {"images": len(ids), "map": round(100 * float(np.mean(aps)), 1),
                              "classes": {SEG_CLASS_NAMES[c + 1]: {**{k: (round(v, 3) if isinstance(v, float)
                                                                       else v) for k, v in fit[c].items()},
                                                                  **miss.get(c, {})} for c in fit}}
        print(f"{name} ({len(ids)} images): classifier mAP {out['lists'][name]['map']}; per class: AP, share of "
              f"its images with logit > 0, % of its object pixels with CAM < {cut:.3f} (ha's cut), images whose "
              "object the CAM misses")
        for cls, r in out["lists"][name]["classes"].items():
            print(f"  {cls:<12} AP {r['ap']:.3f}  logit>0 {r['tpr']:.2f}  under cut {r.get('under_cut', '-')}%  "
                  f"missed {r.get('missed_images', '-')} of {r['images']}")
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
