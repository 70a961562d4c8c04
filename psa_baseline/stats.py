"""Statistics over seeds and images: mean +- sample sd, paired t-intervals, a paired bootstrap over images.

A comparison of two variants A and B runs both with the same seeds; the difference B - A of one seed is
one pair. Two intervals for the mean difference:
- the t-interval over the seed pairs covers training randomness (what changes from seed to seed);
- the bootstrap over images covers the choice of evaluation images: the val images are resampled with
  replacement, each metric is recomputed from the summed per-image confusion matrices for both variants
  of every seed, the differences are averaged over the seeds; the interval is the percentile range.
"""
import math

import numpy as np
from scipy import stats as st

N_BOOT = 2000
BOOT_SEED = 0


def finite(values):
    """The values that are numbers (None and NaN dropped), as floats."""
    return [float(x) for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))]


def mean_std(values):
    """(mean, sample std with ddof 1), std None for a single value; None, None for no values."""
    v = finite(values)
    if not v:
        return None, None
    return float(np.mean(v)), (float(np.std(v, ddof=1)) if len(v) > 1 else None)


def fmt_pm(mean, std, digits=2, pm="+-"):
    """'41.37 +- 0.26'; without std (one run) just '41.37'; '-' for nothing."""
    if mean is None:
        return "-"
    return f"{mean:.{digits}f}" + ("" if std is None else f" {pm} {std:.{digits}f}")


def t_interval(diffs, level=0.95):
    """(low, high) of the t-interval for the mean of the paired differences; (None, None) below 2 pairs."""
    d = finite(diffs)
    if len(d) < 2:
        return None, None
    mean, sd = float(np.mean(d)), float(np.std(d, ddof=1))
    half = float(st.t.ppf(0.5 + level / 2, len(d) - 1)) * sd / math.sqrt(len(d))
    return mean - half, mean + half


# ------------------------------------------------------------------------ metrics from summed counts

def confusion_metrics(conf, background=0):
    """mIoU, precision, recall (%) of confusion matrices (..., n, n), vectorised over the leading axes.

    The same definitions as evaluation.scores: classes absent from both ground truth and prediction are
    dropped; precision and recall leave `background` out. NaN where no class is left to average.
    """
    conf = np.asarray(conf, dtype=np.float64)
    tp = np.diagonal(conf, axis1=-2, axis2=-1)
    fp = conf.sum(-2) - tp
    fn = conf.sum(-1) - tp
    present = (tp + fp + fn) > 0
    objects = present.copy()
    objects[..., background] = False

    def mean_over(num, den, selected):
        ratio = np.divide(num, den, out=np.zeros_like(num), where=den > 0)
        count = selected.sum(-1)
        total = np.where(selected, ratio, 0.0).sum(-1)
        return np.divide(100 * total, count, out=np.full(count.shape, np.nan), where=count > 0)

    return {"miou": mean_over(tp, tp + fp + fn, present), "precision": mean_over(tp, tp + fp, objects),
            "recall": mean_over(tp, tp + fn, objects)}


def part_metrics(hits, totals):
    """Pooled pixel recall (%) of the strong and weak parts from summed (..., 2) hits and totals."""
    hits, totals = np.asarray(hits, np.float64), np.asarray(totals, np.float64)
    rec = np.divide(100 * hits, totals, out=np.full(hits.shape, np.nan), where=totals > 0)
    return {"strong_recall": rec[..., 0], "weak_recall": rec[..., 1]}


def per_image_features(per_image):
    """One row per image: the flattened confusion, then part hits and totals when present (N x F)."""
    conf = per_image["confusion"]
    cols = [conf.reshape(len(conf), -1)]
    if "part_hits" in per_image and "part_totals" in per_image:
        cols += [per_image["part_hits"], per_image["part_totals"]]
    return np.concatenate(cols, axis=1).astype(np.float64)


def features_metrics(summed, n_classes):
    """Every metric of summed per_image_features rows (..., F): {name: array (...)}."""
    k = n_classes * n_classes
    out = confusion_metrics(summed[..., :k].reshape(summed.shape[:-1] + (n_classes, n_classes)))
    if summed.shape[-1] == k + 4:
        out.update(part_metrics(summed[..., k:k + 2], summed[..., k + 2:k + 4]))
    return out


# ------------------------------------------------------------------------ paired bootstrap over images

def resample_weights(n_images, n_boot=N_BOOT, seed=BOOT_SEED):
    """(n_boot, n_images): how often each image is drawn in each resample (n_images draws with replacement)."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_images, np.full(n_images, 1.0 / n_images), size=n_boot).astype(np.float64)


def bootstrap_paired(a_runs, b_runs, n_classes, n_boot=N_BOOT, seed=BOOT_SEED, level=0.95):
    """Paired bootstrap of the mean (over seeds) difference B - A of every metric.

    a_runs, b_runs: per seed (paired in order), per_image_features arrays N x F over the same images in
    the same order. Every resample draws the same images for all runs. Returns {metric: {'estimate':
    the difference on all images, 'low', 'high'}}; low/high None when a metric is undefined everywhere.
    """
    if len(a_runs) != len(b_runs) or not a_runs:
        raise ValueError("give the same number (>= 1) of A and B runs, paired by seed")
    n = a_runs[0].shape[0]
    if any(r.shape != a_runs[0].shape for r in list(a_runs) + list(b_runs)):
        raise ValueError("every run needs the same images and columns")
    w = resample_weights(n, n_boot, seed)
    diffs, estimate = {}, {}
    for a, b in zip(a_runs, b_runs):
        boot_a, boot_b = features_metrics(w @ a, n_classes), features_metrics(w @ b, n_classes)
        full_a, full_b = features_metrics(a.sum(0), n_classes), features_metrics(b.sum(0), n_classes)
        for m in boot_a:
            diffs[m] = diffs.get(m, 0) + (boot_b[m] - boot_a[m]) / len(a_runs)
            estimate[m] = estimate.get(m, 0) + float(full_b[m] - full_a[m]) / len(a_runs)
    out = {}
    for m, d in diffs.items():
        # a resample can leave a metric undefined (e.g. no part pixels drawn): those resamples are skipped
        lo, hi = (None, None) if np.isnan(d).all() else np.nanpercentile(d, [50 - 50 * level, 50 + 50 * level])
        out[m] = {"estimate": estimate[m], "low": None if lo is None else float(lo),
                  "high": None if hi is None else float(hi)}
    return out


# ------------------------------------------------------------------------ verdicts

def includes_zero(interval):
    low, high = interval
    return low is not None and low <= 0 <= high


def verdict(t_iv, boot_iv, b_name="B"):
    """In words: a difference whose interval includes 0 is 'no difference shown'."""
    have = [iv for iv in (t_iv, boot_iv) if iv and iv[0] is not None]
    if not have:
        return "no interval (one seed, no per-image files)"
    if any(includes_zero(iv) for iv in have):
        return "no difference shown"
    if all(iv[0] > 0 for iv in have):
        return f"{b_name} higher"
    if all(iv[1] < 0 for iv in have):
        return f"{b_name} lower"
    return "no difference shown"
