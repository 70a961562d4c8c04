"""How good AffinityNet's affinities and its training labels are, measured against the ground truth: the
pair-level measures behind scripts/rw_diagnose.py and scripts/aff_probe.py (docs/notes), importable so that
tests and other code use the same definitions.

Pairs are PSA's: origins on the stride-8 feature grid, partners within `radius` (psa_baseline.affinity).
"""
import cv2
import numpy as np
import torch
from scipy.stats import mannwhitneyu

from .affinity import AffinityLabels, pair_indices


def gt_grid(gt):
    """(h, w) majority ground-truth label of each 8 x 8 cell of the zero-padded image; void pixels take the
    label of the nearest non-void pixel first."""
    lab = gt.copy()
    void = lab == 255
    if void.any() and (~void).any():
        _, idx = cv2.distanceTransformWithLabels(void.astype(np.uint8), cv2.DIST_L2, 5,
                                                 labelType=cv2.DIST_LABEL_PIXEL)
        ys, xs = np.nonzero(~void)
        src = np.zeros(idx.max() + 1, np.uint8)
        src[idx[~void]] = lab[ys, xs]
        lab = src[idx]
    H, W = lab.shape
    h, w = -(-H // 8), -(-W // 8)
    pad = np.full((h * 8, w * 8), 254, np.uint8)
    pad[:H, :W] = lab
    cells = pad.reshape(h, 8, w, 8).transpose(0, 2, 1, 3).reshape(h * w, 64)
    return np.array([np.bincount(c, minlength=256).argmax() for c in cells], np.int64).reshape(h, w)


def oracle_affinities(gt, psa_crop=True, radius=5):
    """(P, N) affinities on the stride-8 grid of gt: 1 where both ends have the same (majority) label."""
    h, w = -(-gt.shape[0] // 8), -(-gt.shape[1] // 8)
    to_idx, valid = pair_indices(h, w, radius, psa_crop)
    g = torch.from_numpy(gt_grid(gt).reshape(-1))
    return ((g[to_idx] == g[None, :]) & valid).float()


def pair_auc(same, diff):
    """Chance that a same-segment pair has a higher affinity than a different-segment pair (ties count
    half): the Mann-Whitney U statistic over n_same * n_diff. None if either set is empty."""
    same, diff = np.asarray(same, np.float64).ravel(), np.asarray(diff, np.float64).ravel()
    if not len(same) or not len(diff):
        return None
    return float(mannwhitneyu(same, diff).statistic / (len(same) * len(diff)))


def split_pairs(aff, gt, radius=5, oracle=None):
    """One image's (P, N) affinities over PSA's pairs (border crop on), split by the ground truth into
    (same-segment, cross-segment) arrays. oracle: oracle_affinities(gt, True, radius) when already made."""
    if oracle is None:
        oracle = oracle_affinities(gt, True, radius)
    valid = pair_indices(-(-gt.shape[0] // 8), -(-gt.shape[1] // 8), radius, True)[1]
    same = oracle > 0
    return aff[valid & same].numpy(), aff[valid & ~same].numpy()


def separation(same, diff, beta=8):
    """Pair separation over images from split_pairs' lists: AUC, mean affinities, pair counts, and the
    mean of affinity ** beta (the walk's weights before normalising) of each kind with their ratio: the AUC
    is blind to scale, the walk is not (its leak across a border grows with the cross-segment weight)."""
    same, diff = np.concatenate(same), np.concatenate(diff)
    sb, db = float((same.astype(np.float64) ** beta).mean()), float((diff.astype(np.float64) ** beta).mean())
    return {"auc": round(pair_auc(same, diff), 4), "mean_same": round(float(same.mean()), 4),
            "mean_different": round(float(diff.mean()), 4), "pairs_same": len(same), "pairs_different": len(diff),
            "beta": beta, "mean_same_beta": round(sb, 6), "mean_different_beta": round(db, 6),
            "beta_ratio": round(sb / db, 3) if db > 0 else None}


def label_pair_precision(label, gt, radius=5):
    """Training label (make_seg_label, on the image's stride-8 grid) against the ground truth: counts of
    (positive pairs, of them ground-truth same, negative pairs, of them ground-truth different)."""
    bg, fg, neg = AffinityLabels(radius, True)(label)
    same = oracle_affinities(gt, True, radius) > 0
    pos = (bg + fg) > 0
    neg = neg > 0
    return int(pos.sum()), int((pos & same).sum()), int(neg.sum()), int((neg & ~same).sum())
