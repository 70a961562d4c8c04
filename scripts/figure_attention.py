"""A figure like EADER's Figures 1 and 4: per image a row of (image, baseline CAM, EADER CAM[, baseline
pseudo label, EADER pseudo label][, ground truth]).

Reads two folders of PSA-format CAM dicts (`<id>.npy` = {class 0..19: HxW in [0,1]}, as written by
make-cam, by `standalone` with standalone.save_cams=true, or by PSA/SEAM/OC-CSE) and a VOC root. Each CAM
cell is the image overlaid with a JET heatmap of the max over the present classes' maps (maps of another
size than the image are resized bilinearly); the ground truth is drawn in the VOC palette (255 white).
Cells are letterboxed into a fixed size; a header row names the columns. cv2/numpy only.

    .venv/bin/python -m scripts.figure_attention --voc-root work/demo-data \\
        --baseline work/demo/baseline/make_cam/cams --eader work/demo/eader/make_cam/cams \\
        --split val --n 8 --out work/demo/figure_attention.png
With --pseudo BASE_DIR EADER_DIR (folders of label PNGs, e.g. <work>/<variant>/make_pseudo/pseudo) the two
pseudo-label columns are added, drawn like the ground truth.
"""
import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

from psa_baseline import voc
from psa_baseline.constants import IGNORE, voc_palette
from psa_baseline.errors import InputError
from psa_baseline.evaluation import load_cam_dict
from psa_baseline.fileio import write_bytes

BG = (255, 255, 255)  # canvas colour (RGB)
PAD = 4               # pixels between cells and around the figure
HEADER = 24           # height of the column-title row


def heat_overlay(img, cam, weight=0.5):
    """img HxWx3 uint8 RGB, cam HxW in [0,1] -> the image blended with a JET heatmap of cam."""
    h, w = img.shape[:2]
    cam = np.asarray(cam, np.float32)
    if cam.shape != (h, w):
        cam = cv2.resize(cam, (w, h), interpolation=cv2.INTER_LINEAR)
    heat = cv2.applyColorMap(np.uint8(np.clip(cam, 0, 1) * 255), cv2.COLORMAP_JET)[..., ::-1]  # BGR -> RGB
    return np.uint8(np.clip((1 - weight) * img.astype(np.float32) + weight * heat, 0, 255))


def cam_max(cam_dict, shape):
    """Max over the classes of a CAM dict, at `shape` (zeros for an empty dict)."""
    out = np.zeros(shape, np.float32)
    for m in cam_dict.values():
        m = np.asarray(m, np.float32)
        if m.shape != tuple(shape):
            m = cv2.resize(m, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
        out = np.maximum(out, m)
    return out


def colour_labels(seg):
    pal = voc_palette().copy()
    pal[IGNORE] = 255
    return pal[np.asarray(seg, np.uint8)]


def letterbox(img, cell_w, cell_h):
    """Scale to fit (keeping the aspect ratio) and centre in a cell_h x cell_w canvas."""
    h, w = img.shape[:2]
    s = min(cell_w / w, cell_h / h)
    nw, nh = max(1, round(w * s)), max(1, round(h * s))
    interp = cv2.INTER_AREA if s < 1 else cv2.INTER_NEAREST
    small = cv2.resize(img, (nw, nh), interpolation=interp)
    out = np.full((cell_h, cell_w, 3), BG, np.uint8)
    y, x = (cell_h - nh) // 2, (cell_w - nw) // 2
    out[y:y + nh, x:x + nw] = small
    return out


def layout(n_rows, n_cols, cell_w, cell_h):
    """(height, width) of the figure and the top-left corner of cell (r, c)."""
    height = PAD + HEADER + n_rows * (cell_h + PAD)
    width = PAD + n_cols * (cell_w + PAD)
    return (height, width), (lambda r, c: (PAD + HEADER + r * (cell_h + PAD), PAD + c * (cell_w + PAD)))


def put_text(canvas, text, x, y, scale=0.45, colour=(0, 0, 0)):
    cv2.putText(canvas, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, colour, 1, cv2.LINE_AA)


def compose(rows, titles, cell_w, cell_h, row_names=None):
    """rows: list of lists of HxWx3 uint8 RGB cells -> one RGB figure with a title row."""
    n_cols = len(titles)
    (H, W), corner = layout(len(rows), n_cols, cell_w, cell_h)
    canvas = np.full((H, W, 3), BG, np.uint8)
    for c, t in enumerate(titles):
        put_text(canvas, t, PAD + c * (cell_w + PAD) + 2, PAD + HEADER - 8)
    for r, cells in enumerate(rows):
        if len(cells) != n_cols:
            raise ValueError(f"row {r} has {len(cells)} cells, expected {n_cols}")
        for c, cell in enumerate(cells):
            y, x = corner(r, c)
            canvas[y:y + cell_h, x:x + cell_w] = letterbox(cell, cell_w, cell_h)
        if row_names:  # white on a dark box, readable on any image or margin
            y, x = corner(r, 0)
            (tw, th), _ = cv2.getTextSize(row_names[r], cv2.FONT_HERSHEY_SIMPLEX, 0.4, 1)
            canvas[y:y + th + 6, x:x + min(tw + 6, cell_w)] = (40, 40, 40)
            put_text(canvas, row_names[r], x + 3, y + th + 2, 0.4, (255, 255, 255))
    return canvas


def figure(voc_root, cam_dirs, ids, titles=("image", "baseline CAM", "EADER CAM", "ground truth"),
           gt=True, cell_w=200, cell_h=150, seg_dir="SegmentationClass", label_dirs=(), label_titles=()):
    """The figure as an RGB array: one row per id, columns image, one CAM overlay per folder, one label
    map per label folder (PNGs), [ground truth]."""
    root = voc.VOCRoot(voc_root, seg_dir=seg_dir)
    if not ids:
        raise InputError("no image ids to draw")
    rows = []
    for i in ids:
        img = root.read_image(i)
        row = [img]
        for d in cam_dirs:
            row.append(heat_overlay(img, cam_max(load_cam_dict(Path(d) / f"{i}.npy"), img.shape[:2])))
        for d in label_dirs:
            path = Path(d) / f"{i}.png"
            if not path.is_file():
                raise InputError(f"no label PNG for id {i}: {path} is missing")
            row.append(colour_labels(voc.read_label_png(path, i)))
        if gt:
            row.append(colour_labels(root.read_seg(i)))
        rows.append(row)
    n_cols = 1 + len(cam_dirs) + len(label_dirs) + int(gt)
    titles = list(titles)[:1 + len(cam_dirs)] + list(label_titles) + (["ground truth"] if gt else [])
    if len(titles) != n_cols:
        raise InputError(f"{n_cols} columns need {n_cols} titles, got {titles}")
    return compose(rows, titles, cell_w, cell_h, row_names=list(ids))


def save_figure(prog, build, out):
    """build() -> (ids, RGB figure), written to `out` as a PNG; the exit status (2 on an InputError, which
    is printed as `prog: error: ...`)."""
    try:
        ids, fig = build()
        ok, png = cv2.imencode(".png", fig[..., ::-1])
        if not ok:
            raise InputError("PNG encoding failed")
        write_bytes(out, png.tobytes())
    except InputError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    print(f"{len(ids)} rows x {fig.shape[1]}x{fig.shape[0]} px -> {out}")
    return 0


def pick_ids(args):
    if args.ids:
        return args.ids
    ids = voc.read_split(args.split, args.voc_root)
    have = [i for i in ids if all((Path(d) / f"{i}.npy").is_file() for d in (args.baseline, args.eader))]
    if not have:
        raise InputError(f"no id of {args.split} has a CAM file in both {args.baseline} and {args.eader}")
    return have[:args.n]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--voc-root", required=True, help="VOC2012 folder (JPEGImages, SegmentationClass)")
    p.add_argument("--baseline", required=True, help="folder of baseline <id>.npy CAM dicts")
    p.add_argument("--eader", required=True, help="folder of EADER <id>.npy CAM dicts")
    p.add_argument("--ids", nargs="+", help="image ids (default: the first --n of --split with both CAMs)")
    p.add_argument("--split", default="val", help="split name or list file (default %(default)s)")
    p.add_argument("--n", type=int, default=6, help="number of images (default %(default)s)")
    p.add_argument("--no-gt", action="store_true", help="leave out the ground-truth column")
    p.add_argument("--seg-dir", default="SegmentationClass", help="label folder (default %(default)s)")
    p.add_argument("--titles", nargs=2, default=["baseline CAM", "EADER CAM"], metavar=("BASE", "EADER"),
                   help="titles of the two CAM columns")
    p.add_argument("--pseudo", nargs=2, metavar=("BASE", "EADER"),
                   help="also draw these two folders of <id>.png pseudo labels (make_pseudo/pseudo)")
    p.add_argument("--cell", type=int, nargs=2, default=[200, 150], metavar=("W", "H"), help="cell size")
    p.add_argument("--out", required=True, help="PNG to write")
    args = p.parse_args(argv)

    def build():
        ids = pick_ids(args)
        return ids, figure(args.voc_root, [args.baseline, args.eader], ids, ["image", *args.titles],
                           gt=not args.no_gt, cell_w=args.cell[0], cell_h=args.cell[1], seg_dir=args.seg_dir,
                           label_dirs=args.pseudo or (),
                           label_titles=["baseline pseudo", "EADER pseudo"] if args.pseudo else ())
    return save_figure("figure_attention", build, args.out)


if __name__ == "__main__":
    sys.exit(main())
