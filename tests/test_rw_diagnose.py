"""The affinity measures behind scripts/rw_diagnose.py (psa_baseline.affinity_quality): pair-separation AUC
and the training labels' pair precision; and scripts/aff_probe.py's label edits."""
import numpy as np
import pytest

from psa_baseline import affinity_quality
from psa_baseline.affinity import pair_offsets
from scripts import aff_probe as probe


def test_pair_auc_counts_ordered_pairs_and_half_ties():
    auc = affinity_quality.pair_auc
    assert auc([0.9, 0.8], [0.1, 0.2]) == 1.0
    assert auc([0.1], [0.9]) == 0.0
    assert auc([0.5], [0.5]) == 0.5
    # same 0.9 beats both, 0.3 beats 0.2 and ties 0.3: (2 + 1.5) / 4
    assert auc([0.9, 0.3], [0.2, 0.3]) == pytest.approx(3.5 / 4)
    assert auc([], [0.1]) is None


def test_separation_sees_the_scale_that_the_auc_does_not():
    """Two affinity sets with the same ranking (AUC 1) but another scale: the walk's weights (affinity **
    beta) separate the kinds by 2^8 in one and (1.5/1.25)^8 in the other."""
    sep = affinity_quality.separation
    a = sep([np.array([0.8, 0.8])], [np.array([0.4])], beta=8)
    b = sep([np.array([0.6, 0.6])], [np.array([0.5])], beta=8)
    assert a["auc"] == b["auc"] == 1.0
    assert a["beta_ratio"] == pytest.approx(2.0 ** 8) and b["beta_ratio"] == pytest.approx(1.2 ** 8, rel=1e-3)
    assert a["mean_same_beta"] == pytest.approx(0.8 ** 8, abs=1e-6) and a["pairs_same"] == 2


def _count_pairs(label_grid, gt_grid, radius=5):
    """Pair counts by brute force over PSA's pair set (origins not within radius - 1 of left/right/bottom)."""
    h, w = label_grid.shape
    pos = pos_ok = neg = neg_ok = 0
    for y in range(h - radius + 1):
        for x in range(radius - 1, w - radius + 1):
            for dy, dx in pair_offsets(radius):
                ty, tx = y + dy, x + dx
                if not (0 <= ty < h and 0 <= tx < w):
                    continue
                a, b = label_grid[y, x], label_grid[ty, tx]
                if 255 in (a, b):
                    continue
                same = gt_grid[y, x] == gt_grid[ty, tx]
                if a == b:
                    pos, pos_ok = pos + 1, pos_ok + same
                else:
                    neg, neg_ok = neg + 1, neg_ok + (not same)
    return pos, pos_ok, neg, neg_ok


def test_label_pair_precision_matches_a_brute_force_count():
    mod = affinity_quality
    gt = np.zeros((96, 88), np.uint8)  # 12 x 11 cells
    gt[:, :40] = 3                     # class 3 on cells 0-4 of every row
    gt[0:8, 80:88] = 255               # a void cell takes its neighbour's label
    truth = mod.gt_grid(gt)
    assert truth.shape == (12, 11) and (truth[:, :5] == 3).all() and (truth[:, 5:] == 0).all()
    exact = mod.label_pair_precision(truth.astype(np.uint8), gt)
    assert exact[1] == exact[0] > 0 and exact[3] == exact[2] > 0  # a perfect label: every pair right
    rng = np.random.default_rng(0)
    noisy = truth.astype(np.uint8).copy()
    noisy[rng.random(noisy.shape) < 0.3] = 0
    noisy[rng.random(noisy.shape) < 0.1] = 255
    got = mod.label_pair_precision(noisy, gt)
    assert got == _count_pairs(noisy, truth)
    assert got[1] < got[0]  # the noise made some positive pairs wrong


def test_aff_probe_removes_one_kind_of_crf_label_error():
    """aff_probe --labels crf-bg-fixed / crf-fg-fixed: ha's background on object pixels, or la's foreground
    off its class, is taken out using the ground truth; everything else is the CRF dict as loaded."""
    from stages import train_aff
    gt = np.array([[0, 0, 5, 5], [0, 0, 5, 255]], np.uint8)
    bg = np.array([[0.9, 0.9, 0.8, 0.1], [0.9, 0.1, 0.1, 0.9]], np.float32)  # background wins on 3 of 4 columns
    cls = 1 - bg

    class Root:
        def read_seg(self, img_id):
            return gt

    old = train_aff.load_crf_dict
    train_aff.load_crf_dict = lambda path, shape, img_id: {0: bg.copy(), 5: cls.copy()}
    try:
        ha = probe.fixed_crf_dict(Root(), "bg")("run/make_crf/crf_ha/x.npy", gt.shape, "x")
        la_untouched = probe.fixed_crf_dict(Root(), "bg")("run/make_crf/crf_la/x.npy", gt.shape, "x")
        la = probe.fixed_crf_dict(Root(), "fg")("run/make_crf/crf_la/x.npy", gt.shape, "x")
    finally:
        train_aff.load_crf_dict = old
    # bg-fixed: background score 0 where ha says background on an object pixel (0, 2); the void pixel and
    # true background keep theirs
    want_bg = bg.copy()
    want_bg[0, 2] = 0
    assert np.array_equal(ha[0], want_bg) and np.array_equal(ha[5], cls)
    assert np.array_equal(la_untouched[0], bg)  # bg-fixed leaves la alone
    # fg-fixed: la's class score 0 where it wins off its class: (1, 1) background, (0, 3) is class 5 (right)
    want_cls = cls.copy()
    want_cls[1, 1] = 0
    assert np.array_equal(la[5], want_cls) and np.array_equal(la[0], bg)


def test_aff_probe_takes_la_or_ha_from_another_run():
    from stages import train_aff
    seen = []
    old = train_aff.load_crf_dict
    train_aff.load_crf_dict = lambda path, shape, img_id: seen.append(str(path)) or {0: np.zeros(shape)}
    try:
        load = probe.crf_from("other/make_crf", None)  # la from the other run, ha from this one
        load("run/make_crf/crf_la/x.npy", (2, 2), "x")
        load("run/make_crf/crf_ha/x.npy", (2, 2), "x")
    finally:
        train_aff.load_crf_dict = old
    assert seen == ["other/make_crf/crf_la/x.npy", "run/make_crf/crf_ha/x.npy"]


def test_label_errors_splits_object_pixels_by_hand():
    """scripts.label_errors on a hand-made confusion: 10 object pixels of class 1 (family 0): 5 right, 2 as
    background, 2 as class 2 (same family), 1 as class 3 (another family)."""
    from scripts.label_errors import error_shares
    conf = np.zeros((21, 21), np.int64)
    conf[0, 0] = 50
    conf[1, 1], conf[1, 0], conf[1, 2], conf[1, 3] = 5, 2, 2, 1
    s = error_shares(conf, {1: 0, 2: 0, 3: 1})
    assert (s["right"], s["background"], s["other_class"]) == pytest.approx((50.0, 20.0, 30.0))
    assert s["within_family"] == pytest.approx(200 / 3)


def test_label_errors_splits_bodies_by_objects_with_and_without_a_head(tmp_path):
    """Two objects: class 3 with a head (2 px) and a 4 px body, 1 of it predicted class 5 and 1 background;
    class 5 headless, 4 px body, all right."""
    from psa_baseline import voc
    from scripts.label_errors import body_errors
    gt, part, pred = (np.zeros((4, 8), np.uint8) for _ in range(3))
    gt[0:2, 0:3] = 3
    part[0:2, 0:1], part[0:2, 1:3] = 1, 2
    gt[0:2, 5:7], part[0:2, 5:7] = 5, 2
    pred[:] = gt
    pred[0, 1], pred[0, 2] = 5, 0
    for folder, arr in (("SegmentationClass", gt), ("PartMasks", part), ("pred", pred)):
        voc.save_label_png(tmp_path / folder / "x.png", arr)
    got = body_errors(tmp_path, tmp_path / "pred", ["x"])
    assert got[True] == (4, 25.0, 25.0) and got[False] == (4, 0.0, 0.0)


def test_the_oracle_is_walked_at_the_configs_own_t():
    """--ts 8 21 64 on the demo (rw.t 21): the oracle and no-crop rows at t 21, which PSA's fixed 32 / 256 missed."""
    from scripts.rw_diagnose import walked_ts
    assert walked_ts("affinitynet", [8, 21, 64], 21) == [8, 21, 64]
    assert walked_ts("oracle (ground truth)", [8, 21, 64], 21) == [21]
    assert walked_ts("affinitynet, no border crop", [8, 32, 64, 256], 256) == [32, 256]
