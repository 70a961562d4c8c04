"""Draw the training curves of a work dir: every <variant>/<stage>/metrics.csv becomes curves.png beside it.

    psa-eader curves --work-dir work/demo            # every variant and training stage
    psa-eader curves --work-dir work/demo --variant eader

One panel per figure the stage logs (loss terms, lr, adversary accuracy, s/step) against the step; the
terminal gets each figure's first, last and lowest value. The CSVs are written by every training stage
(psa_baseline.training.MetricsCSV); TensorBoard logs sit beside them when tensorboard is installed.
"""
import csv
from pathlib import Path

import numpy as np

from psa_baseline.errors import InputError

PANEL = (220, 360)  # height, width in pixels


def add_arguments(p):
    p.add_argument("--variant", help="only this variant's folder (default: every folder with curves)")


def read_curves(path):
    """{column: float array} of a metrics.csv, rows in step order."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise InputError(f"{path} has no rows yet: the stage has not logged a step")
    return {k: np.array([float(r[k]) for r in rows]) for k in rows[0]}


def _panel(x, y, name):
    import cv2
    h, w = PANEL
    img = np.full((h, w, 3), 255, np.uint8)
    left, right, top, bottom = 50, 10, 22, 22
    lo, hi = float(np.min(y)), float(np.max(y))
    hi = hi if hi > lo else lo + 1.0
    xs = left + (x - x.min()) / max(float(x.max() - x.min()), 1.0) * (w - left - right)
    ys = h - bottom - (y - lo) / (hi - lo) * (h - top - bottom)
    cv2.rectangle(img, (left, top), (w - right, h - bottom), (200, 200, 200), 1)
    cv2.polylines(img, [np.stack([xs, ys], 1).round().astype(np.int32)], False, (180, 80, 20), 2, cv2.LINE_AA)
    text = dict(fontFace=cv2.FONT_HERSHEY_SIMPLEX, fontScale=0.4, color=(0, 0, 0), thickness=1, lineType=cv2.LINE_AA)
    cv2.putText(img, name, (left, 15), **text)
    cv2.putText(img, f"{hi:.3g}", (2, top + 8), **text)
    cv2.putText(img, f"{lo:.3g}", (2, h - bottom), **text)
    cv2.putText(img, f"step {int(x.min())}..{int(x.max())}", (left, h - 6), **text)
    return img


def draw(path, out):
    """curves.png of one metrics.csv: a grid of panels, three per row."""
    import cv2
    from psa_baseline.fileio import write_bytes
    c = read_curves(path)
    names = [k for k in c if k not in ("step", "epoch")]
    panels = [_panel(c["step"], c[k], k) for k in names]
    while len(panels) % 3:
        panels.append(np.full(PANEL + (3,), 255, np.uint8))
    grid = np.concatenate([np.concatenate(panels[i:i + 3], 1) for i in range(0, len(panels), 3)], 0)
    ok, png = cv2.imencode(".png", grid[..., ::-1])
    write_bytes(out, png.tobytes())
    return {k: (float(c[k][0]), float(c[k][-1]), float(c[k].min())) for k in names}


def main(args):
    from .cli import config_from_args
    cfg = config_from_args(args)
    work = Path(cfg["work_dir"])
    found = sorted(work.glob(f"{args.variant or '*'}/*/metrics.csv"))
    if not found:
        raise InputError(f"no training curves under {work} (<variant>/<stage>/metrics.csv): pass the --work-dir of a "
                         f"run whose training stages have logged at least one step")
    for path in found:
        out = path.with_name("curves.png")
        stats = draw(path, out)
        print(f"{out}:")
        for k, (first, last, low) in stats.items():
            print(f"  {k:12s} first {first:.4g}  last {last:.4g}  lowest {low:.4g}")
