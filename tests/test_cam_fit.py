"""scripts/cam_fit.py: the classifier's fit per class (AP: psa_baseline.evaluation), ha's cut, and the objects
a class's CAM misses."""
import json

import numpy as np
import pytest
import torch

from scripts import cam_fit
from stages.cli import main as cli_main


@pytest.mark.parametrize("alpha", [4, 24, 32])
def test_ha_cut_solves_the_background_equation(alpha):
    m = cam_fit.ha_cut(alpha)
    assert (1 - m) ** alpha == pytest.approx(m, abs=1e-12)
    assert 0 < m < 0.5


def test_a_larger_alpha_trusts_background_only_under_a_lower_cam():
    assert cam_fit.ha_cut(32) < cam_fit.ha_cut(24) < cam_fit.ha_cut(4)


def test_average_precision_by_hand():
    from psa_baseline.evaluation import average_precision as ap
    assert ap([0.9, 0.1, 0.5], [1, 0, 1]) == 1.0
    # ranks 1 and 3 hold the positives: (1/1 + 2/3) / 2
    assert ap([0.9, 0.8, 0.7], [1, 0, 1]) == pytest.approx(5 / 6)
    assert ap([0.2, 0.9], [0, 1]) == 1.0 and ap([0.9, 0.2], [0, 1]) == 0.5
    assert ap([0.3, 0.4], [0, 0]) is None


def test_classifier_fit_counts_positives_above_zero_and_skips_absent_classes():
    logits = np.array([[2.0, -1.0, 0.5], [-0.5, -2.0, 0.1], [1.0, 3.0, -0.2]])
    labels = np.array([[1, 0, 0], [1, 0, 0], [0, 1, 0]])
    fit = cam_fit.classifier_fit(logits, labels)
    assert set(fit) == {0, 1}  # class 2 is in no image
    # class 0 ranks pos (2.0), neg (1.0), pos (-0.5): AP (1 + 2/3) / 2
    assert fit[0] == {"ap": pytest.approx(5 / 6), "tpr": 0.5, "images": 2}
    assert fit[1] == {"ap": 1.0, "tpr": 1.0, "images": 1}


def test_misses_count_pixels_under_the_cut_and_objects_missed():
    gt = np.zeros((4, 6), np.uint8)
    gt[:, :3] = 4   # class index 3: 12 pixels, 8 of them (columns 1-2) under the cut -> missed
    gt[:, 3:5] = 8  # class index 7: 8 pixels, 2 under -> not missed
    cam3 = np.where(np.arange(6)[None, :] == 0, 0.9, 0.01) * np.ones((4, 1))
    cam7 = np.full((4, 6), 0.5)
    cam7[0:2, 3] = 0.05
    m = cam_fit.Misses(cut=0.077)
    m.add({3: cam3, 7: cam7, 11: np.zeros((4, 6))}, gt)  # class 11 has no object here: not counted
    m.add({3: np.ones((4, 6))}, gt)
    got = m.result()
    assert set(got) == {3, 7}
    assert got[3] == {"under_cut": round(100 * 8 / 24, 1), "missed_images": 1, "images": 2}
    assert got[7] == {"under_cut": 25.0, "missed_images": 0, "images": 1}


TINY = ["net.width=0.125", "net.blocks=[1,1,1,1]", "cam_train.batch_size=4", "cam_train.epochs=1",
        "cam_train.crop=64", "cam_train.resize_long=[56,80]", "cam_infer.scales=[1.0]", "net.weights=random",
        "adv_pretrain.epochs=0"]


@pytest.mark.slow
def test_a_class_the_classifier_never_scores_is_reported_dead(demo_root, tmp_path):
    """A trained tiny CAM net whose fc8 row of one present class is made non-positive: conv6 is a ReLU's
    output, so that class's logit is <= 0 and its CAM zero everywhere. cam_fit must report the class with no
    image above logit 0, all its pixels under the cut and every object missed; the other classes not so."""
    work = tmp_path / "work"
    base = ["--config", "demo", "--voc-root", str(demo_root), "--work-dir", str(work), *TINY]
    assert cli_main(["train-cam", *base]) == 0
    net_path = work / "baseline" / "train_cam" / "cam_net.pth"
    sd = torch.load(net_path, weights_only=True)
    labels = np.load(demo_root / "cls_labels.npy", allow_pickle=True).item()
    present = np.nonzero(np.stack(list(labels.values())).sum(0))[0]
    dead = int(present[0])
    sd["fc8.weight"][dead] = -sd["fc8.weight"][dead].abs()
    torch.save(sd, net_path)
    assert cli_main(["make-cam", *base]) == 0
    out = tmp_path / "fit.json"
    assert cam_fit.main(["--work-dir", str(work), "--voc-root", str(demo_root), "--out", str(out),
                         *[a for kv in TINY for a in ("--set", kv)]]) == 0
    from psa_baseline.constants import SEG_CLASS_NAMES
    got = json.loads(out.read_text())
    assert got["ha_cut"] == pytest.approx(cam_fit.ha_cut(32), abs=1e-4)
    checked = 0
    for name in ("train", "val"):
        classes = got["lists"][name]["classes"]
        r = classes.get(SEG_CLASS_NAMES[dead + 1])
        if r is None:
            continue  # the class is in no image of this list
        assert r["tpr"] == 0.0 and r["under_cut"] == 100.0 and r["missed_images"] == r["images"] > 0
        others = [v for k, v in classes.items() if k != SEG_CLASS_NAMES[dead + 1]]
        assert others and min(v["under_cut"] for v in others) < 100.0
        checked += 1
    assert checked  # the class is in the demo's train list by construction of `present`
