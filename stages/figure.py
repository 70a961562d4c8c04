"""Draw the qualitative figure of a work dir: for a fixed set of images of data.eval_list, one row each with
the image, every variant's CAMs, pseudo labels and DeepLabV3+ prediction, and the ground truth.

    psa-eader figure --work-dir work/demo --voc-root work/demo-data       # the first 6 ids of data.eval_list
    psa-eader figure --work-dir W --voc-root D --ids 2007_000129 2007_000033

Writes <work>/figures/qualitative.png (report.md shows it); `pipeline` draws it after its last stage. The ids
are the list's first ones, so reruns and both variants show the same images. CAMs are drawn as the max over
the image's classes (jet, over the image); labels in the VOC palette, 255 (ignored) white. A stage that has not
run (e.g. `--until cam`) leaves its column out; a missing file is a grey tile.
"""
from pathlib import Path

import numpy as np

from psa_baseline.constants import voc_palette
from psa_baseline.fileio import write_bytes
from .builders import split_ids, voc_root

TILE = 120  # pixels, each side
HEADER = 22
N_DEFAULT = 6
# (column title, folder under <work>/<variant>/, file suffix)
STAGE_COLUMNS = (("CAM", "make_cam/cams", ".npy"), ("pseudo labels", "make_pseudo/pseudo", ".png"),
                 ("DeepLabV3+", "make_seg/pred", ".png"))


def add_arguments(p):
    p.add_argument("--ids", nargs="+", help="image ids to show (default: the first --n of data.eval_list)")
    p.add_argument("--n", type=int, default=N_DEFAULT, help=f"how many of the list's first ids (default {N_DEFAULT})")


def figure_path(work_dir):
    return Path(work_dir) / "figures" / "qualitative.png"


def _fit(img, fill=255):
    """img (h, w, 3) uint8 scaled to fit TILE x TILE, centred on `fill`."""
    import cv2
    h, w = img.shape[:2]
    s = TILE / max(h, w)
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    out = np.full((TILE, TILE, 3), fill, np.uint8)
    y, x = (TILE - nh) // 2, (TILE - nw) // 2
    out[y:y + nh, x:x + nw] = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_NEAREST)
    return out


def label_palette():
    """The VOC colours of background and the 20 classes, 255 (ignored) white, anything else black."""
    pal = np.vstack([voc_palette()[:21], np.zeros((235, 3), np.uint8)])
    pal[255] = 255
    return pal


def _cam(path, img):
    import cv2
    from psa_baseline.evaluation import load_cam_dict
    cams = load_cam_dict(path, expect_shape=img.shape[:2])
    peak = np.max(np.stack(list(cams.values())), 0) if cams else np.zeros(img.shape[:2], np.float32)
    heat = cv2.applyColorMap((np.clip(peak, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
    return (0.5 * img + 0.5 * heat).astype(np.uint8)


def columns(work_dir):
    """[(title, variant, folder, suffix)] of the stages that have run, variants in a fixed order."""
    work = Path(work_dir)
    if not work.is_dir():  # no run there yet: nothing to draw (main says so)
        return []
    variants = sorted((p.name for p in work.iterdir() if p.is_dir() and (p / "make_cam").is_dir()),
                      key=lambda v: (v != "baseline", v != "eader", v))
    return [(f"{v}: {title}", v, folder, suffix) for title, folder, suffix in STAGE_COLUMNS
            for v in variants if (work / v / folder).is_dir()]


def draw(cfg, ids=None, n=N_DEFAULT):
    """Write the figure; returns its path (None when no variant has CAMs yet)."""
    import cv2
    from psa_baseline import voc
    work = Path(cfg["work_dir"])
    cols = columns(work)
    if not cols:
        return None
    root = voc.VOCRoot(voc_root(cfg).root, seg_dir=cfg["data"]["eval_seg_dir"])
    ids = list(ids or split_ids(cfg, cfg["data"]["eval_list"])[:n])
    titles = ["image"] + [c[0] for c in cols] + ["ground truth"]
    pal = label_palette()
    rows = []
    for i in ids:
        img = root.read_image(i)
        tiles = [_fit(img)]
        for _, v, folder, suffix in cols:
            path = work / v / folder / f"{i}{suffix}"
            if not path.is_file():
                tiles.append(np.full((TILE, TILE, 3), 160, np.uint8))
            elif suffix == ".npy":
                tiles.append(_fit(_cam(path, img)))
            else:
                tiles.append(_fit(pal[voc.read_label_png(path, i)]))
        gt = root.seg_path(i)
        tiles.append(_fit(pal[voc.read_label_png(gt, i)]) if gt.is_file()
                     else np.full((TILE, TILE, 3), 160, np.uint8))
        rows.append(np.concatenate(tiles, 1))
    header = np.full((HEADER, TILE * len(titles), 3), 255, np.uint8)
    for k, t in enumerate(titles):
        cv2.putText(header, t[:22], (k * TILE + 3, HEADER - 7), cv2.FONT_HERSHEY_SIMPLEX, 0.33, (0, 0, 0), 1,
                    cv2.LINE_AA)
    grid = np.concatenate([header] + rows, 0)
    ok, png = cv2.imencode(".png", grid[..., ::-1])
    out = figure_path(work)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_bytes(out, png.tobytes())
    return out


def main(args):
    from .cli import config_from_args
    from .report import refresh_report
    from psa_baseline.errors import InputError
    if args.n < 1:
        raise InputError(f"--n {args.n}: at least one image")
    cfg = config_from_args(args)
    out = draw(cfg, args.ids, args.n)
    if out is None:
        raise InputError(f"nothing to draw under {cfg['work_dir']}: no <variant>/make_cam yet; pass the --work-dir "
                         f"of a run that has made its CAMs")
    refresh_report(cfg["work_dir"])
    print(f"written: {out} (report.md shows it)")
