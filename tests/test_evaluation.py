"""Scores against hand-computed numbers, the CAM threshold sweep, and CAM/label directories."""
import json
from pathlib import Path

import numpy as np
import pytest

from psa_baseline.constants import SEG_CLASS_NAMES
from psa_baseline.errors import InputError
from psa_baseline.evaluation import (CamSweep, cam_dict_to_label, classes_note, confusion, evaluate_cam_dir,
                                     evaluate_label_dir, load_cam_dict, load_per_image, markdown_table,
                                     save_per_image, scores)
from psa_baseline.voc import VOCRoot, load_cls_labels, save_label_png

VOC = Path("/work/shared/data/VOCmini")
CLS_LABELS = Path("/work/shared/data/voc12/cls_labels.npy")
IDS = ["2007_000039", "2007_000241", "2007_000243"]


def test_confusion_and_scores_by_hand():
    gt = np.array([0, 0, 0, 1, 1, 2, 255])
    pred = np.array([0, 0, 1, 1, 2, 2, 0])  # the last pixel is ignored
    conf = confusion(gt, pred, n=3)
    np.testing.assert_array_equal(conf, [[2, 1, 0], [0, 1, 1], [0, 0, 1]])
    s = scores(conf, names=("a", "b", "c"))
    # IoU: a 2/3, b 1/3, c 1/2; precision: 1, 1/2, 1/2; recall: 2/3, 1/2, 1.
    # mIoU over all three; precision and recall over b and c only ("a", index 0, is the background).
    assert s["miou"] == pytest.approx(50.0)
    assert s["precision"] == pytest.approx(50.0)
    assert s["recall"] == pytest.approx(75.0)
    assert s["per_class"] == pytest.approx({"a": 200 / 3, "b": 100 / 3, "c": 50.0})
    assert s["per_class_recall"]["c"] == pytest.approx(100.0)
    assert s["per_class_precision"]["a"] == pytest.approx(100.0)  # still reported per class
    assert (s["n_classes"], s["n_object_classes"]) == (3, 2)
    # With background averaged in (the old definition), both means differ.
    every = scores(conf, names=("a", "b", "c"), background=None)
    assert every["precision"] == pytest.approx(100 * 2 / 3) and every["recall"] == pytest.approx(100 * 13 / 18)
    assert every["miou"] == s["miou"]


def test_precision_recall_leave_background_out_on_21_classes():
    # Background is predicted perfectly (1000 pixels); of cat's (8) 10 pixels 5 are found and 5 are
    # predicted as dog (12), which is absent from the ground truth.
    conf = np.zeros((21, 21), np.int64)
    conf[0, 0] = 1000
    conf[8, 8], conf[8, 12] = 5, 5
    s = scores(conf)
    # objects present: cat (P 1, R 1/2) and dog (P 0, R 0: predicted, never in the ground truth)
    assert s["precision"] == pytest.approx(50.0) and s["recall"] == pytest.approx(25.0)
    # background (P 1, R 1) would lift both: (1 + 1 + 0) / 3 and (1 + 1/2 + 0) / 3
    every = scores(conf, background=None)
    assert every["precision"] == pytest.approx(200 / 3) and every["recall"] == pytest.approx(50.0)
    # mIoU over background, cat and dog: (1 + 1/2 + 0) / 3; the 18 absent classes are dropped
    assert s["miou"] == pytest.approx(50.0) and (s["n_classes"], s["n_object_classes"]) == (3, 2)
    assert classes_note(s).startswith("mIoU over the 3 classes present, precision and recall over the 2 "
                                      "object classes present")
    assert "dropped" in classes_note(s)


def test_scores_absent_and_unpredicted_classes():
    # Class 3 appears nowhere: no score, out of the means. Class 2 is in gt but never predicted: zeros.
    conf = np.zeros((4, 4), np.int64)
    conf[0, 0], conf[1, 1], conf[2, 0] = 5, 5, 5
    s = scores(conf, names=("a", "b", "c", "d"))
    assert s["per_class"]["d"] is None and s["per_class_precision"]["d"] is None
    assert s["per_class_precision"]["c"] == 0.0 and s["per_class"]["c"] == 0.0
    assert s["precision"] == pytest.approx((100 + 0) / 2)  # b and c; a is the background
    assert s["recall"] == pytest.approx((100 + 0) / 2)
    assert s["miou"] == pytest.approx((50 + 100 + 0) / 3)


def test_confusion_ignore_and_errors():
    gt = np.full((2, 2), 255, np.uint8)
    assert confusion(gt, np.zeros((2, 2), np.uint8)).sum() == 0
    with pytest.raises(ValueError):
        confusion(np.zeros((2, 2), np.uint8), np.full((2, 2), 21, np.uint8))
    with pytest.raises(ValueError):
        confusion(np.zeros((2, 2), np.uint8), np.zeros((2, 3), np.uint8))


def test_cam_dict_to_label_by_hand():
    cams = {0: np.array([[0.9, 0.1, 0.5], [0.2, 0.2, 0.0]], np.float32),
            4: np.array([[0.5, 0.3, 0.6], [0.1, 0.25, 0.4]], np.float32)}
    # 0.25 equals the threshold: the tie goes to background.
    np.testing.assert_array_equal(cam_dict_to_label(cams, (2, 3), 0.25), [[1, 5, 5], [0, 0, 5]])
    np.testing.assert_array_equal(cam_dict_to_label({}, (2, 3), 0.25), np.zeros((2, 3)))


def test_cam_sweep_equals_direct():
    rng = np.random.default_rng(0)
    thresholds = [0.0, 0.1, 0.25, 0.5, 0.75, 0.99, 1.0]
    sweep = CamSweep(thresholds)
    direct = {t: np.zeros((21, 21), np.int64) for t in thresholds}
    for k in range(4):
        shape = (30 + k, 40)
        gt = rng.integers(0, 21, shape).astype(np.uint8)
        gt[rng.random(shape) < 0.1] = 255
        keys = rng.choice(20, size=k, replace=False)  # k = 0 gives an empty dict
        cams = {int(c): np.round(rng.random(shape), 2).astype(np.float32) for c in keys}  # ties happen
        sweep.add(gt, cams)
        for t in thresholds:
            direct[t] += confusion(gt, cam_dict_to_label(cams, shape, t))
    for t in thresholds:
        np.testing.assert_array_equal(sweep.confusions[t], direct[t])
    assert sweep.results()[0.5] == scores(direct[0.5])


def _write_cams_from_gt(cam_dir, ids):
    """Like another program would: plain np.save of {class: HxW float32} for the present classes."""
    cam_dir.mkdir(exist_ok=True)
    root = VOCRoot(VOC)
    for i in ids:
        gt = root.read_seg(i)
        cams = {int(c) - 1: (gt == c).astype(np.float32) * 0.8 for c in np.unique(gt) if 0 < c < 255}
        np.save(cam_dir / f"{i}.npy", cams)


def test_evaluate_cam_dir(tmp_path):
    _write_cams_from_gt(tmp_path / "cams", IDS)
    labels = load_cls_labels(CLS_LABELS)
    res = evaluate_cam_dir(tmp_path / "cams", VOC, IDS, threshold=0.5,
                           sweep_thresholds=[0.1, 0.5, 0.9], labels=labels, progress=False)
    assert {"miou", "precision", "recall", "threshold", "per_class", "sweep", "best_threshold",
            "best_miou", "n_images"} <= set(res)
    assert res["miou"] == pytest.approx(100.0) and res["precision"] == pytest.approx(100.0)
    assert list(res["per_class"]) == list(SEG_CLASS_NAMES)
    assert res["per_class"]["tvmonitor"] == pytest.approx(100.0) and res["per_class"]["cat"] is None
    assert list(res["sweep"]) == ["0.1", "0.5", "0.9"]
    assert res["sweep"]["0.9"] < 100  # every pixel background
    assert res["best_threshold"] == 0.1 and res["best_miou"] == pytest.approx(100.0)
    assert res["n_images"] == 3 and res["threshold"] == 0.5
    json.dumps(res)  # plain JSON, no NaN


def test_evaluate_cam_dir_missing_files(tmp_path):
    _write_cams_from_gt(tmp_path / "cams", IDS[:1])
    with pytest.raises(InputError) as e:
        evaluate_cam_dir(tmp_path / "cams", VOC, IDS, 0.5, [], progress=False)
    assert IDS[1] in str(e.value) and IDS[2] in str(e.value)


def test_evaluate_label_dir(tmp_path):
    root = VOCRoot(VOC)
    for i in IDS:
        save_label_png(tmp_path / "pred" / f"{i}.png", np.where(root.read_seg(i) == 255, 0,
                                                                root.read_seg(i)).astype(np.uint8))
    res = evaluate_label_dir(tmp_path / "pred", VOC, IDS, progress=False)
    assert res["miou"] == pytest.approx(100.0) and res["n_images"] == 3 and "sweep" not in res
    save_label_png(tmp_path / "pred" / f"{IDS[0]}.png", np.zeros((375, 500), np.uint8))
    assert evaluate_label_dir(tmp_path / "pred", VOC, IDS, progress=False)["miou"] < 100
    (tmp_path / "pred" / f"{IDS[2]}.png").unlink()
    with pytest.raises(InputError, match=IDS[2]):
        evaluate_label_dir(tmp_path / "pred", VOC, IDS, progress=False)


@pytest.mark.parametrize("content, message", [
    (b"not a numpy file", "unreadable"),
    (np.zeros((20, 4, 5), np.float32), "not a dict"),
    ({20: np.zeros((4, 5))}, "key 20"),
    ({"cam": np.zeros((4, 5))}, "key 'cam'"),
    ({3: np.zeros((5, 4))}, "shape"),
    ({7: np.zeros((4, 5))}, "not among the image's labels"),
])
def test_bad_cam_dicts(tmp_path, content, message):
    p = tmp_path / "x.npy"
    if isinstance(content, bytes):
        p.write_bytes(content)
    else:
        np.save(p, content)
    labels = np.zeros(20, np.float32)
    labels[3] = 1
    with pytest.raises(InputError, match=message) as e:
        load_cam_dict(p, expect_shape=(4, 5), labels=labels)
    assert str(p) in str(e.value)


def test_load_cam_dict_ok(tmp_path):
    p = tmp_path / "x.npy"
    np.save(p, {np.int64(3): np.ones((4, 5), np.float64)})
    cams = load_cam_dict(p, expect_shape=(4, 5))
    assert list(cams) == [3] and cams[3].dtype == np.float32


def test_markdown_table():
    ours = {"miou": 46.81, "precision": 60.3, "recall": 66.7,
            "per_class": {n: 50.0 for n in SEG_CLASS_NAMES}}
    t = markdown_table({"PSA (ours)": ours}, "cam", reference={"PSA (paper)": {"miou": 46.8}})
    lines = t.strip().splitlines()
    assert lines[0] == "| model | CAM mIoU | CAM precision | CAM recall |"
    assert lines[2] == "| PSA (ours) | 46.8 | 60.3 | 66.7 |"
    assert lines[3] == "| PSA (paper) | 46.8 | - | - |"
    t2 = markdown_table({"PSA": {"cam": ours, "seg": {"miou": 60.7}}}, "table2")
    assert t2.splitlines()[2] == "| PSA | 46.8 | 60.3 | 66.7 | - | 60.7 |"
    t3 = markdown_table({"PSA": ours}, "per_class").splitlines()
    assert t3[0].startswith("| model | background | aeroplane |") and t3[0].endswith("| mIoU |")
    assert t3[2].count("50.0") == 21
    with pytest.raises(ValueError):
        markdown_table({}, "nope")


def test_per_image_confusions_sum_to_the_whole_and_round_trip(tmp_path):
    _write_cams_from_gt(tmp_path / "cams", IDS)
    per_image = {}
    res = evaluate_cam_dir(tmp_path / "cams", VOC, IDS, threshold=0.9, sweep_thresholds=[0.5],
                           labels=load_cls_labels(CLS_LABELS), progress=False, per_image=per_image)
    assert list(per_image) == IDS
    assert scores(sum(per_image.values()))["miou"] == pytest.approx(res["miou"])  # at 0.9, not 0.5
    parts = {i: (np.array([3, 1]), np.array([4, 2])) for i in IDS}
    save_per_image(tmp_path / "p.npz", per_image, parts)
    back = load_per_image(tmp_path / "p.npz")
    assert back["ids"] == IDS and back["confusion"].shape == (3, 21, 21)
    np.testing.assert_array_equal(back["confusion"][1], per_image[IDS[1]])
    np.testing.assert_array_equal(back["part_totals"], [[4, 2]] * 3)
    (tmp_path / "bad.npz").write_bytes(b"junk")
    with pytest.raises(InputError, match="bad.npz"):
        load_per_image(tmp_path / "bad.npz")
