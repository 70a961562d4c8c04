"""Where a CAM folder's errors fall, on a demo dataset (val, PSA's argmax with a fixed background score):
wrong foreground on ground-truth background (by distance to the nearest object: a halo around objects or
far away), on another class's object (class confusion), on void; and object pixels missed as background or
given another class. Tells a too-wide CAM (halo) from a confused one.

    python -m scripts.cam_errors --voc-root work/data --cam-dir RUN/baseline/make_cam/cams
"""
import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

from demo.data import cams_to_labels, load_png
from psa_baseline.evaluation import load_cam_dict


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--voc-root", required=True)
    p.add_argument("--cam-dir", required=True)
    p.add_argument("--list", default="ImageSets/Segmentation/val.txt")
    p.add_argument("--threshold", type=float, default=0.2)
    p.add_argument("--near", type=int, nargs=2, default=(8, 24), metavar=("A", "B"),
                   help="distance bands (px) of background errors: <= A, A-B, > B")
    args = p.parse_args(argv)
    root, cams = Path(args.voc_root), Path(args.cam_dir)
    a, b = args.near
    n = dict.fromkeys(("fg", "correct", "bg", "bg_a", "bg_b", "bg_far", "other", "void", "obj", "miss_bg",
                       "miss_other"), 0)
    for i in (root / args.list).read_text().split():
        gt = load_png(root / "SegmentationClass" / f"{i}.png")
        pred = cams_to_labels(load_cam_dict(cams / f"{i}.npy", gt.shape), gt.shape, args.threshold)
        obj = (gt > 0) & (gt < 255)
        dist = cv2.distanceTransform((~obj).astype(np.uint8), cv2.DIST_L2, 3)  # px to the nearest object
        fg, bg_err = pred > 0, (pred > 0) & (gt == 0)
        n["fg"] += fg.sum()
        n["correct"] += (fg & (pred == gt)).sum()
        n["bg"] += bg_err.sum()
        n["bg_a"] += (bg_err & (dist <= a)).sum()
        n["bg_b"] += (bg_err & (dist > a) & (dist <= b)).sum()
        n["bg_far"] += (bg_err & (dist > b)).sum()
        n["other"] += (fg & obj & (pred != gt)).sum()
        n["void"] += (fg & (gt == 255)).sum()
        n["obj"] += obj.sum()
        n["miss_bg"] += (obj & (pred == 0)).sum()
        n["miss_other"] += (obj & fg & (pred != gt)).sum()
    f, o = max(1, n["fg"]), max(1, n["obj"])
    pc = lambda k, d: f"{100 * n[k] / d:.1f}%"  # noqa: E731
    print(f"{args.cam_dir}: {n['fg']} foreground pixels predicted for {n['obj']} object pixels "
          f"({n['fg'] / o:.2f}x)")
    print(f"predicted foreground: correct {pc('correct', f)}; on background {pc('bg', f)} (<= {a} px from an "
          f"object {pc('bg_a', f)}, {a}-{b} px {pc('bg_b', f)}, farther {pc('bg_far', f)}); on another class's "
          f"object {pc('other', f)}; on void {pc('void', f)}")
    print(f"object pixels: missed as background {pc('miss_bg', o)}, given another class {pc('miss_other', o)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
