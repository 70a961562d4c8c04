"""mIoU / precision / recall over the 21 VOC classes (background + 20), 255 ignored.

Conventions (all numbers are percentages):
- confusion[g, p] counts pixels of ground-truth class g predicted as p.
- Per class: IoU = TP/(TP+FP+FN), precision = TP/(TP+FP), recall = TP/(TP+FN).
- mIoU averages all 21 classes; precision and recall average the 20 object classes, background left out
  (as EADER's authors compute them, so our numbers compare with their Tables 1 and 2).
- A class absent from both ground truth and prediction has no score (None in per-class dicts) and is
  left out of the means; `n_classes` / `n_object_classes` say how many classes each mean covers. A class
  that occurs in only one of them scores 0 on every metric whose denominator is zero (e.g. never
  predicted -> precision 0).
"""
import io
from pathlib import Path

import numpy as np

from .constants import IGNORE, NUM_CLASSES, SEG_CLASS_NAMES
from .errors import InputError
from .fileio import write_bytes
from .progress import with_progress
from .safe_npy import load_dict
from .voc import VOCRoot, _list_ids, read_label_png

N_SEG = NUM_CLASSES + 1
# Bumped when a metric's definition changes, so that evaluation stages made under the old one rerun
# (2: precision and recall leave background out; per-image confusions written).
METRICS_VERSION = 2


def confusion(gt, pred, n=N_SEG) -> np.ndarray:
    """n x n int64 confusion matrix (rows ground truth, columns prediction); gt == 255 is skipped."""
    gt = np.asarray(gt)
    pred = np.asarray(pred)
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth {gt.shape} and prediction {pred.shape} differ in shape")
    valid = gt != IGNORE
    g = gt[valid].astype(np.int64)
    p = pred[valid].astype(np.int64)
    if g.size and (g.min() < 0 or g.max() >= n):
        raise ValueError(f"ground truth holds values outside 0..{n - 1} and {IGNORE}")
    if pred.size and (pred.min() < 0 or pred.max() >= n):
        raise ValueError(f"prediction holds values {np.unique(pred[(pred < 0) | (pred >= n)]).tolist()} "
                         f"outside 0..{n - 1}")
    return np.bincount(g * n + p, minlength=n * n).reshape(n, n)


def _ratio(num, den, present):
    """num/den per class; 0 where den == 0 but the class occurs; nan where it does not occur at all."""
    out = np.zeros(num.shape, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    out[~present] = np.nan
    return out


def scores(conf, names=SEG_CLASS_NAMES, background=0) -> dict:
    """mIoU over the classes present; precision and recall over the present classes except `background`
    (its index; None averages every class)."""
    conf = np.asarray(conf, dtype=np.float64)
    tp = np.diag(conf)
    fp = conf.sum(0) - tp
    fn = conf.sum(1) - tp
    present = (tp + fp + fn) > 0
    objects = present.copy()
    if background is not None:
        objects[background] = False
    iou = _ratio(tp, tp + fp + fn, present)
    prec = _ratio(tp, tp + fp, present)
    rec = _ratio(tp, tp + fn, present)

    def mean(v, selected):
        return float(100 * v[selected].mean()) if selected.any() else float("nan")

    def per_class(v):
        return {name: (None if np.isnan(x) else float(100 * x)) for name, x in zip(names, v)}

    return {"miou": mean(iou, present), "precision": mean(prec, objects), "recall": mean(rec, objects),
            "n_classes": int(present.sum()), "n_object_classes": int(objects.sum()),
            "per_class": per_class(iou), "per_class_precision": per_class(prec),
            "per_class_recall": per_class(rec)}


def average_precision(score, positive):
    """A classifier's non-interpolated AP for one class: the mean precision at the rank of each positive
    (ties in input order); None when no image is positive."""
    positive = np.asarray(positive, bool)[np.argsort(-np.asarray(score, float), kind="stable")]
    if not positive.any():
        return None
    hits = np.cumsum(positive)
    return float(np.mean(hits[positive] / (np.nonzero(positive)[0] + 1)))


def classes_note(res, n_all=N_SEG) -> str:
    """Which classes the means of a scores() result cover, in words (for reports on subsets)."""
    n, n_obj = res.get("n_classes"), res.get("n_object_classes")
    if n is None or n_obj is None:
        return "precision and recall computed before they left background out; rerun the evaluation"
    miou = "mIoU over all 21 classes" if n == n_all else f"mIoU over the {n} classes present"
    pr = ("precision and recall over the 20 object classes" if n_obj == n_all - 1
          else f"precision and recall over the {n_obj} object classes present")
    dropped = "" if n == n_all else " (classes absent from both ground truth and prediction are dropped)"
    return f"{miou}, {pr}, background left out of precision and recall{dropped}"


# --------------------------------------------------------------------------- CAMs

def _cam_stack(cam_dict, shape):
    """(keys sorted, K x H x W float32) from a {class_idx: HxW} dict."""
    keys = sorted(int(k) for k in cam_dict)
    if not keys:
        return keys, np.zeros((0,) + tuple(shape), np.float32)
    stack = np.stack([np.asarray(cam_dict[k], dtype=np.float32) for k in keys])
    if stack.shape[1:] != tuple(shape):
        raise ValueError(f"CAM maps are {stack.shape[1:]}, expected {tuple(shape)}")
    return keys, stack


def cam_dict_to_label(cam_dict, shape, threshold) -> np.ndarray:
    """Argmax over [threshold, CAM_c ...] -> uint8 map with class c labelled c+1 (ties go to background)."""
    keys, stack = _cam_stack(cam_dict, shape)
    scores_ = np.concatenate([np.full((1,) + tuple(shape), threshold, np.float32), stack])
    lut = np.array([0] + [k + 1 for k in keys], dtype=np.uint8)
    return lut[np.argmax(scores_, axis=0)]


class CamSweep:
    """Confusions for many background thresholds from one look at each CAM.

    Per pixel the best class and its score are found once; for threshold t the prediction is that
    class where score > t, else background, which is exactly cam_dict_to_label(cam, shape, t).
    """

    def __init__(self, thresholds):
        self.thresholds = [float(t) for t in thresholds]
        self.confusions = {t: np.zeros((N_SEG, N_SEG), np.int64) for t in self.thresholds}

    def add(self, gt, cam_dict):
        """Add one image; returns its own confusions {threshold: n x n}."""
        gt = np.asarray(gt)
        keys, stack = _cam_stack(cam_dict, gt.shape)
        valid = gt != IGNORE
        g = gt[valid].astype(np.int64)
        if stack.shape[0]:
            best = stack.max(0)[valid]
            label = np.array([k + 1 for k in keys], np.int64)[stack.argmax(0)[valid]]
        else:
            best = np.zeros(g.shape, np.float32)
            label = np.zeros(g.shape, np.int64)
        own = {}
        for t in self.thresholds:
            pred = np.where(best > np.float32(t), label, 0)  # compare in float32, as the argmax does
            own[t] = np.bincount(g * N_SEG + pred, minlength=N_SEG * N_SEG).reshape(N_SEG, N_SEG)
            self.confusions[t] += own[t]
        return own

    def results(self) -> dict:
        """{threshold: scores(...)}"""
        return {t: scores(c) for t, c in self.confusions.items()}


def load_cam_dict(path, expect_shape=None, labels=None) -> dict:
    """Read `<id>.npy` holding {class_idx 0..19: HxW float} (PSA/SEAM format) -> {int: float32 HxW}."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"CAM file {path} does not exist")
    # restricted unpickling: a CAM folder from another code base must not be able to run code
    obj = load_dict(path, "CAM file", int, "{class_index 0..19: HxW map} as written by PSA (np.save of a dict)")
    if isinstance(obj, np.ndarray) and obj.dtype == object and obj.ndim == 0:
        obj = obj.item()
    if not isinstance(obj, dict):
        what = f"an array of shape {obj.shape}" if isinstance(obj, np.ndarray) else type(obj).__name__
        raise InputError(f"CAM file {path} holds {what}, not a dict {{class_index 0..19: HxW map}} "
                         f"as written by PSA (np.save of a dict)")
    out = {}
    for key, value in obj.items():
        is_index = isinstance(key, (int, np.integer)) and not isinstance(key, (bool, np.bool_))
        if not (is_index and 0 <= int(key) < NUM_CLASSES):
            raise InputError(f"CAM file {path} has key {key!r}; keys must be class indices 0..{NUM_CLASSES - 1} "
                             f"(aeroplane=0, background excluded)")
        cam = np.asarray(value, dtype=np.float32)
        if cam.ndim != 2 or (expect_shape is not None and cam.shape != tuple(expect_shape)):
            want = f"{tuple(expect_shape)} (the image's HxW)" if expect_shape is not None else "2-D"
            raise InputError(f"CAM file {path}: map of class {int(key)} has shape {cam.shape}, expected {want}")
        if labels is not None and labels[int(key)] == 0:
            raise InputError(f"CAM file {path} has a map for class {int(key)} ({SEG_CLASS_NAMES[int(key) + 1]}) "
                             f"which is not among the image's labels; CAMs must keep present classes only")
        out[int(key)] = cam
    return out


def _require_files(directory, ids, suffix, what):
    directory = Path(directory)
    if not directory.is_dir():
        raise InputError(f"{what} directory {directory} does not exist")
    missing = [i for i in ids if not (directory / f"{i}{suffix}").is_file()]
    if missing:
        raise InputError(f"{len(missing)} of {len(ids)} {what} files are missing from {directory}: "
                         f"{_list_ids(missing)}")


def _gt_root(root, seg_dir):
    # Official evaluation uses SegmentationClass; a VOCRoot keeps whatever it was given.
    return root if isinstance(root, VOCRoot) else VOCRoot(root, seg_dir=seg_dir)


def _threshold_key(t):
    return format(float(t), "g")


def evaluate_cam_dir(cam_dir, root, ids, threshold, sweep_thresholds, labels=None,
                     seg_dir="SegmentationClass", progress=True, per_image=None) -> dict:
    """Score `<cam_dir>/<id>.npy` CAM dicts against ground truth at `threshold` and over a sweep.
    per_image: a dict that receives {id: 21x21 confusion at `threshold`} (for a bootstrap over images)."""
    ids = list(ids)
    root = _gt_root(root, seg_dir)
    _require_files(cam_dir, ids, ".npy", "CAM")
    thresholds = sorted(set(float(t) for t in sweep_thresholds) | {float(threshold)})
    sweep = CamSweep(thresholds)
    for img_id in with_progress(ids, "CAM eval", enabled=progress):
        gt = root.read_seg(img_id)
        if labels is not None and img_id not in labels:
            raise InputError(f"id {img_id} has no image-level labels; pass labels covering the split")
        cam = load_cam_dict(Path(cam_dir) / f"{img_id}.npy", gt.shape,
                            None if labels is None else labels[img_id])
        own = sweep.add(gt, cam)
        if per_image is not None:
            per_image[img_id] = own[float(threshold)]
    by_t = sweep.results()
    result = dict(by_t[float(threshold)])
    result["threshold"] = float(threshold)
    result["sweep"] = {_threshold_key(t): by_t[float(t)]["miou"] for t in sorted(set(map(float, sweep_thresholds)))}
    best = max(result["sweep"].items(), key=lambda kv: kv[1]) if result["sweep"] else \
        (_threshold_key(threshold), result["miou"])
    result["best_threshold"] = float(best[0])
    result["best_miou"] = best[1]
    result["n_images"] = len(ids)
    return result


def evaluate_label_dir(pred_dir, root, ids, seg_dir="SegmentationClass", progress=True, per_image=None) -> dict:
    """Score `<pred_dir>/<id>.png` label maps (pseudo labels or segmentation outputs).
    per_image: a dict that receives {id: 21x21 confusion}."""
    ids = list(ids)
    root = _gt_root(root, seg_dir)
    _require_files(pred_dir, ids, ".png", "prediction PNG")
    conf = np.zeros((N_SEG, N_SEG), np.int64)
    for img_id in with_progress(ids, "label eval", enabled=progress):
        gt = root.read_seg(img_id)
        path = Path(pred_dir) / f"{img_id}.png"
        pred = read_label_png(path, img_id)
        if pred.shape != gt.shape:
            raise InputError(f"prediction {path} is {pred.shape} (HxW) but the ground truth is {gt.shape}")
        try:
            own = confusion(gt, pred)
        except ValueError as e:
            raise InputError(f"prediction {path}: {e}; predictions must be 0..{NUM_CLASSES}") from e
        conf += own
        if per_image is not None:
            per_image[img_id] = own
    result = scores(conf)
    result["n_images"] = len(ids)
    return result


# --------------------------------------------------------------------------- per-image statistics

PER_IMAGE_FILE = "per_image.npz"


def save_per_image(path, confusions, part_counts=None):
    """Write one image's numbers per row, atomically, as an .npz without pickles (for a bootstrap):
    `ids` (str), `confusion` (N x n x n), and with part_counts {id: (hits, totals)} of the demo's
    strong and weak parts, `part_hits` and `part_totals` (N x 2: strong, weak)."""
    ids = list(confusions)
    conf = np.stack([confusions[i] for i in ids]) if ids else np.zeros((0, N_SEG, N_SEG))
    arrays = {"ids": np.array(ids, dtype=str), "confusion": conf.astype(np.int64)}
    if part_counts is not None:
        arrays["part_hits"] = np.array([part_counts[i][0] for i in ids], np.int64).reshape(-1, 2)
        arrays["part_totals"] = np.array([part_counts[i][1] for i in ids], np.int64).reshape(-1, 2)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    write_bytes(path, buf.getvalue())


def load_per_image(path) -> dict:
    """What save_per_image wrote: {'ids': [str], 'confusion': N x n x n, ['part_hits', 'part_totals']}."""
    try:
        with np.load(path, allow_pickle=False) as z:
            out = {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise InputError(f"per-image file {path} is unreadable ({e}); rerun the evaluation stage") from e
    n = len(out.get("ids", ()))
    conf = out.get("confusion")
    if conf is None or conf.ndim != 3 or conf.shape[0] != n or conf.shape[1] != conf.shape[2]:
        raise InputError(f"per-image file {path} lacks ids or an N x n x n `confusion`; rerun the evaluation stage")
    for k in ("part_hits", "part_totals"):
        if k in out and out[k].shape != (n, 2):
            raise InputError(f"per-image file {path}: `{k}` is {out[k].shape}, expected ({n}, 2)")
    out["ids"] = [str(i) for i in out["ids"]]
    return out


# --------------------------------------------------------------------------- reports

def _fmt(v, digits):
    if isinstance(v, str):  # a cell given as the paper prints it (e.g. "60.3 †")
        return v
    return "-" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.{digits}f}"


def markdown_table(results_by_variant, kind, reference=None, digits=1) -> str:
    """A Markdown table in the paper's layout.

    kind:
      'cam'       model | CAM mIoU | CAM precision | CAM recall        (values: evaluate_cam_dir results)
      'label'     model | mIoU | precision | recall                    (values: evaluate_label_dir results)
      'table2'    EADER Table 2: values are {'cam': ..., 'pseudo': ..., 'seg': ...}, any part optional
      'per_class' EADER Table 3: model | background | aeroplane | ... | mIoU (values: any results dict)
    reference: optional {row name: dict of the same shape}, e.g. the paper's numbers
      ({'PSA (paper)': {'miou': 46.8, 'precision': 60.3, 'recall': 66.7}}); rendered after our rows.
    """
    def get(d, *keys):
        for k in keys:
            if not isinstance(d, dict) or d.get(k) is None:
                return None
            d = d[k]
        return d

    if kind == "cam":
        header = ["model", "CAM mIoU", "CAM precision", "CAM recall"]
        cells = lambda r: [get(r, "miou"), get(r, "precision"), get(r, "recall")]
    elif kind == "label":
        header = ["model", "mIoU", "precision", "recall"]
        cells = lambda r: [get(r, "miou"), get(r, "precision"), get(r, "recall")]
    elif kind == "table2":
        header = ["model", "CAM mIoU", "CAM precision", "CAM recall", "AffinityNet mIoU", "DeepLabV3+ mIoU"]
        cells = lambda r: [get(r, "cam", "miou"), get(r, "cam", "precision"), get(r, "cam", "recall"),
                           get(r, "pseudo", "miou"), get(r, "seg", "miou")]
    elif kind == "per_class":
        header = ["model"] + list(SEG_CLASS_NAMES) + ["mIoU"]
        cells = lambda r: [get(r, "per_class", n) for n in SEG_CLASS_NAMES] + [get(r, "miou")]
    else:
        raise ValueError(f"unknown table kind {kind!r}; use 'cam', 'label', 'table2' or 'per_class'")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    rows = list(results_by_variant.items()) + list((reference or {}).items())
    for name, r in rows:
        lines.append("| " + " | ".join([str(name)] + [_fmt(v, digits) for v in cells(r)]) + " |")
    return "\n".join(lines) + "\n"
