"""Why do the pseudo labels beat (or not) the CAMs? Labels, affinity quality, and the walk's beta and t.

For one finished pipeline run (make-cam and train-aff done) it walks the val CAMs in several ways and
scores each against the ground truth (mIoU, precision, recall, the demo's part recall when present):
  - no walk: argmax over [(1 - max CAM)^alpha, CAMs] (t = 0), for each rw alpha given;
  - the trained AffinityNet's affinities, for each t given (beta from --beta);
  - oracle affinities from the ground truth (1 within a segment, 0 across; void pixels take the label
    of the nearest non-void pixel), same t values: how far the walk could go with perfect affinities;
  - the AffinityNet again with PSA's border crop of the pair origins off (--no-psa-crop compares it).
Also scores the la/ha CRF labels' confident regions against the ground truth (what AffinityNet learns):
pixel precision of la's foreground and ha's background, the share of object pixels inside ha's trusted
background, and the precision of the positive / negative pairs of the training labels (PSA's
make_seg_label on the whole image) against ground-truth pairs. And how well the AffinityNet separates
pairs: the mean affinity of ground-truth same / different pairs and the AUC (the chance that a same pair
scores above a different pair; 0.5 = no separation, 1 = perfect).

    .venv/bin/python -m scripts.rw_diagnose --config demo --work-dir work/d4/sweep/psa/alpha0.05/seed0 \\
        --voc-root work/d4/data --variant eader --out work/d4/rw_diagnose.json
"""
import json
import sys
from pathlib import Path

import numpy as np
import torch

from psa_baseline.affinity import feature_affinities, make_seg_label
from psa_baseline.affinity_quality import (label_pair_precision, oracle_affinities, separation,
                                            split_pairs)
from demo.data import PartRecall, load_png
from psa_baseline.evaluation import confusion, load_cam_dict, scores
from psa_baseline.fileio import write_json
from psa_baseline.random_walk import propagate_cams
from stages.builders import labels_for, split_ids, voc_root
from scripts.run_args import run_config, run_parser
from stages.make_crf import HA, LA
from stages.make_pseudo import load_aff_net, padded_input
from stages.train_aff import load_crf_dict


class Scorer:
    def __init__(self, root_dir):
        self.conf, self.parts, self.root_dir = 0, PartRecall(), Path(root_dir)

    def add(self, i, pred, gt):
        self.conf = self.conf + confusion(gt, pred)
        pm = self.root_dir / "PartMasks" / f"{i}.png"
        if pm.is_file():
            self.parts.add(pred, load_png(pm), gt)

    def result(self):
        s = scores(self.conf)
        out = {k: round(s[k], 2) for k in ("miou", "precision", "recall")}
        pr = self.parts.result()
        if pr.get("strong") is not None:
            out.update(strong=pr["strong"], weak=pr["weak"])
        return out


def walked_ts(name, ts, rw_t):
    """The t values walked for an affinity source: every t for the AffinityNet; the oracle and the no-crop walks
    cost as much again, so only PSA's 32 and 256 and the config's own rw.t among those asked for."""
    return list(ts) if name == "affinitynet" else [t for t in ts if t in (32, 256, rw_t)]


def main(argv=None):
    p = run_parser(__doc__, "config overrides the run was made with that matter here, e.g. aff_train.radius=3")
    p.add_argument("--split", default="ImageSets/Segmentation/val.txt")
    p.add_argument("--n", type=int, default=150)
    p.add_argument("--ts", type=int, nargs="+", default=[8, 32, 64, 256])
    p.add_argument("--alphas", type=float, nargs="+", default=[4, 8, 16])
    p.add_argument("--beta", type=float, default=8)
    p.add_argument("--cam-dir", help="walk these CAMs (<id>.npy) instead of the variant's own make_cam/cams, e.g. "
                   "another variant's, to tell the CAMs' share of a difference from the AffinityNet's")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    cfg = run_config(args)
    root = voc_root(cfg)
    ids = split_ids(cfg, args.split)[:args.n]
    labels = labels_for(cfg, root, ids)
    run = Path(args.work_dir) / args.variant
    cam_dir = Path(args.cam_dir) if args.cam_dir else run / "make_cam" / "cams"
    net = load_aff_net(cfg, run / "train_aff" / "aff_net.pth", "cpu")
    rw_alpha = cfg["rw"]["alpha"]
    rows = {}
    same_aff, diff_aff = [], []

    def score(name, pred, i, gt):
        rows.setdefault(name, Scorer(root.root)).add(i, pred, gt)

    for i in ids:
        img, gt = root.read_image(i), root.read_seg(i)
        cams = load_cam_dict(cam_dir / f"{i}.npy", img.shape[:2], labels[i])
        keys = sorted(cams)
        ident = np.asarray([0] + [k + 1 for k in keys], np.uint8)
        stack = np.stack([cams[k] for k in keys])
        for a in args.alphas:
            score(f"no walk, alpha {a:g}", ident[np.concatenate([(1 - stack.max(0))[None] ** a, stack]).argmax(0)],
                  i, gt)
        with torch.no_grad():
            feats = net(padded_input(img))
        r = net.radius  # the config's aff_train.radius (PSA: 5)
        affs = {"affinitynet": feature_affinities(feats, r, True)[0],
                "affinitynet, no border crop": feature_affinities(feats, r, False)[0],
                "oracle (ground truth)": oracle_affinities(gt, radius=r)}
        same, diff = split_pairs(affs["affinitynet"], gt, r, oracle=affs["oracle (ground truth)"])
        same_aff.append(same)
        diff_aff.append(diff)
        for name, aff in affs.items():
            crop = "no border crop" not in name
            for t in walked_ts(name, args.ts, cfg["rw"]["t"]):
                pred = propagate_cams(cams, aff, img.shape[:2], alpha_bg=rw_alpha, beta=args.beta, t=t,
                                      radius=r, psa_crop=crop, name=i)
                score(f"{name}, t {t}", pred, i, gt)
    report = {"run": str(run), "cams": str(cam_dir), "n_images": len(ids), "rw_alpha": rw_alpha, "beta": args.beta,
              "rows": {k: v.result() for k, v in rows.items()},
              "affinity_separation": separation(same_aff, diff_aff, args.beta)}
    crf = run / "make_crf"
    if crf.is_dir():  # confident regions of the CRF labels on train images (AffinityNet's training labels)
        tr = split_ids(cfg, cfg["crf"]["list"])[:args.n]
        fg_ok = fg_n = bg_ok = bg_n = obj_n = obj_in_bg = 0
        pairs = np.zeros(4, np.int64)
        for i in tr:
            gt = root.read_seg(i)
            la = load_crf_dict(crf / LA / f"{i}.npy", gt.shape, i)
            ha = load_crf_dict(crf / HA / f"{i}.npy", gt.shape, i)
            k = sorted(la)
            la_l = np.asarray(k)[np.stack([la[c] for c in k]).argmax(0)]
            ha_l = np.asarray(k)[np.stack([ha[c] for c in k]).argmax(0)]
            ok = gt != 255
            fg = (la_l > 0) & ok
            fg_ok += int((la_l[fg] == gt[fg]).sum())
            fg_n += int(fg.sum())
            bg = (ha_l == 0) & ok
            bg_ok += int((gt[bg] == 0).sum())
            bg_n += int(bg.sum())
            obj = ok & (gt > 0)
            obj_n += int(obj.sum())
            obj_in_bg += int((obj & (ha_l == 0)).sum())
            pairs += label_pair_precision(make_seg_label(la, ha), gt, net.radius)
        report["crf_labels"] = {"la_foreground_precision": round(100 * fg_ok / max(fg_n, 1), 2),
                                "ha_background_precision": round(100 * bg_ok / max(bg_n, 1), 2),
                                "object_pixels_in_ha_background": round(100 * obj_in_bg / max(obj_n, 1), 2),
                                "positive_pair_precision": round(100 * pairs[1] / max(pairs[0], 1), 2),
                                "negative_pair_precision": round(100 * pairs[3] / max(pairs[2], 1), 2),
                                # of the labelled pairs, the share AffinityNet is taught to pull apart
                                "negative_pair_share": round(100 * pairs[2] / max(pairs[0] + pairs[2], 1), 2),
                                "images": len(tr)}
    write_json(args.out, report)
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
