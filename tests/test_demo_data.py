"""The built-in demo dataset: layout, determinism, label consistency, and part recall."""
import re

import cv2

import numpy as np
import pytest
from PIL import Image

from psa_baseline.constants import CLASS_NAMES, IGNORE, voc_palette
from demo.data import (DEFAULT_SIZE, PartRecall, cams_to_labels, generate, load_cls_labels, load_png,
                                    make_groups, part_recall_from_cams, read_ids, read_meta)
from psa_baseline.errors import InputError
from psa_baseline.fileio import save_npy

PARAMS = dict(n_train=8, n_val=4)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    r = tmp_path_factory.mktemp("demo") / "data"
    s = generate(r, seed=3, **PARAMS)
    assert s["generated"] and s["splits"] == {"train": 8, "val": 4, "trainval": 12}
    return r


def all_ids(root):
    return read_ids(root, "trainval")


def test_layout(root):
    train, val, both = (read_ids(root, s) for s in ("train", "val", "trainval"))
    assert both == train + val and len(set(both)) == 12
    assert all(re.fullmatch(r"demo_\d{6}", i) for i in both)
    for i in both:
        for sub, ext in (("JPEGImages", "jpg"), ("SegmentationClass", "png"), ("PartMasks", "png")):
            assert (root / sub / f"{i}.{ext}").is_file()
    meta = read_meta(root)
    assert meta["seed"] == 3 and meta["params"]["n_train"] == 8
    assert all(2 <= len(g) <= 3 for g in meta["groups"])
    # Built in a temporary sibling and renamed: nothing left over next to root.
    assert [p.name for p in root.parent.iterdir()] == ["data"]


def test_palette_png_and_values(root):
    allowed = set(range(21)) | {IGNORE}
    subset = {CLASS_NAMES.index(n) + 1 for n in read_meta(root)["classes"]}
    for i in all_ids(root):
        im = Image.open(root / "SegmentationClass" / f"{i}.png")
        assert im.mode == "P"
        pal = np.array(im.getpalette()[:256 * 3], np.uint8).reshape(-1, 3)
        assert (pal[:21] == voc_palette()[:21]).all()
        seg = np.array(im)
        assert set(np.unique(seg)) <= allowed
        assert set(np.unique(seg)) - {0, IGNORE} <= subset
        rgb = np.array(Image.open(root / "JPEGImages" / f"{i}.jpg"))
        lo, hi = DEFAULT_SIZE
        assert rgb.shape == seg.shape + (3,) and lo <= seg.shape[0] <= hi and lo <= seg.shape[1] <= hi


def test_cls_labels_match_gt(root):
    labels = load_cls_labels(root)
    assert sorted(labels) == sorted(all_ids(root))
    for i, lab in labels.items():
        assert lab.dtype == np.float32 and lab.shape == (20,)
        seg = load_png(root / "SegmentationClass" / f"{i}.png")
        present = set(np.unique(seg)) - {0, IGNORE}
        assert set(np.flatnonzero(lab) + 1) == present
        assert present, f"{i} has no object"


def test_part_masks_consistent(root):
    with_head = 0
    for i in all_ids(root):
        seg = load_png(root / "SegmentationClass" / f"{i}.png")
        part = load_png(root / "PartMasks" / f"{i}.png")
        assert set(np.unique(part)) <= {0, 1, 2, IGNORE}
        obj = (seg >= 1) & (seg <= 20)
        assert ((part == 1) | (part == 2)).tolist() == obj.tolist()
        assert ((part == IGNORE) == (seg == IGNORE)).all() and ((part == 0) == (seg == 0)).all()
        assert (part == 2).sum() > (part == 1).sum()  # strong part is the small one
        with_head += bool((part == 1).any())  # only images whose objects are all headless have none
        # Void border: an object pixel never touches background or another class directly.
        for a, b in ((seg[1:], seg[:-1]), (seg[:, 1:], seg[:, :-1])):
            touch = (a != b) & (a != IGNORE) & (b != IGNORE)
            assert not touch.any()
    assert with_head >= 0.6 * len(all_ids(root))


def test_determinism(root, tmp_path):
    again = tmp_path / "again"
    generate(again, seed=3, **PARAMS)
    for i in all_ids(root):
        for sub in ("SegmentationClass", "PartMasks"):
            assert (again / sub / f"{i}.png").read_bytes() == (root / sub / f"{i}.png").read_bytes()
        a = np.array(Image.open(again / "JPEGImages" / f"{i}.jpg"), np.int16)
        b = np.array(Image.open(root / "JPEGImages" / f"{i}.jpg"), np.int16)
        assert np.abs(a - b).max() <= 2
    la, lb = load_cls_labels(again), load_cls_labels(root)
    assert all((la[k] == lb[k]).all() for k in lb)

    other = tmp_path / "other"
    generate(other, seed=4, **PARAMS)
    i = all_ids(root)[0]
    assert (other / "SegmentationClass" / f"{i}.png").read_bytes() != (root / "SegmentationClass" / f"{i}.png").read_bytes()


def test_skip_and_refuse(root, tmp_path):
    assert generate(root, seed=3, **PARAMS)["generated"] is False
    with pytest.raises(InputError):
        generate(root, seed=5, **PARAMS)
    copy = tmp_path / "copy"
    generate(copy, seed=3, n_train=3, n_val=1)
    s = generate(copy, seed=3, n_train=4, n_val=1, overwrite=True)
    assert s["generated"] and len(read_ids(copy, "trainval")) == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy"]


def test_params_checked(tmp_path):
    with pytest.raises(InputError):
        generate(tmp_path / "x", classes=("cat", "unicorn"))
    with pytest.raises(InputError):
        generate(tmp_path / "x", size=(16, 8))
    assert not (tmp_path / "x").exists()


def test_groups():
    for n in range(2, 21):
        g = make_groups(n)
        sizes = np.bincount(g)
        assert len(g) == n and sizes.min() >= 2 and sizes.max() <= 3


def test_cams_to_labels():
    cams = {7: np.array([[0.9, 0.1], [0.5, 0.0]], np.float32), 11: np.array([[0.2, 0.15], [0.6, 0.0]], np.float32)}
    assert cams_to_labels(cams, (2, 2), 0.2).tolist() == [[8, 0], [12, 0]]
    assert cams_to_labels({}, (2, 3), 0.2).tolist() == [[0] * 3] * 2
    with pytest.raises(InputError):
        cams_to_labels({7: np.zeros((3, 3))}, (2, 2), 0.2)


def test_part_recall_hand_made():
    gt = np.array([[8, 8, 8, 0], [8, 8, 255, 0], [10, 10, 10, 10]], np.uint8)
    part = np.array([[1, 2, 2, 0], [2, 2, 255, 0], [1, 1, 2, 2]], np.uint8)
    pred = np.array([[8, 8, 0, 0], [0, 3, 8, 8], [10, 0, 0, 0]], np.uint8)
    acc = PartRecall()
    acc.add(pred, part, gt)
    r = acc.result()
    # strong: cat 1/1, cow 1/2 -> 2/3; weak: cat 1/4, cow 0/2 -> 1/6
    assert r["strong"] == pytest.approx(66.67) and r["weak"] == pytest.approx(16.67)
    assert r["per_class"]["cat"] == {"strong": 100.0, "weak": 25.0, "strong_pixels": 1, "weak_pixels": 4}
    assert r["per_class"]["cow"]["strong"] == 50.0 and r["per_class"]["cow"]["weak"] == 0.0
    assert r["strong_class_mean"] == pytest.approx(75.0) and r["weak_class_mean"] == pytest.approx(12.5)
    acc.add(pred, part, gt)  # accumulates: percentages unchanged, counts doubled
    assert acc.result()["per_class"]["cat"]["weak_pixels"] == 8
    with pytest.raises(InputError):
        acc.add(pred[:2], part, gt)


def test_part_recall_from_cams(root, tmp_path):
    ids = all_ids(root)
    for name, make in (("gt", lambda seg, part, c: seg == c + 1),
                       ("strong", lambda seg, part, c: (seg == c + 1) & (part == 1)),
                       ("none", None)):
        d = tmp_path / name
        for i in ids:
            seg = load_png(root / "SegmentationClass" / f"{i}.png")
            part = load_png(root / "PartMasks" / f"{i}.png")
            cams = {} if make is None else {int(c) - 1: make(seg, part, int(c) - 1).astype(np.float32)
                                            for c in set(np.unique(seg)) - {0, IGNORE}}
            save_npy(d / f"{i}.npy", cams)
        r = part_recall_from_cams(d, root, ids, threshold=0.2)
        expect = {"gt": (100, 100), "strong": (100, 0), "none": (0, 0)}[name]
        assert (r["strong"], r["weak"]) == expect
    with pytest.raises(InputError):
        part_recall_from_cams(tmp_path / "missing", root, ids)


def test_older_generator_version_is_replaced_and_changes_the_fingerprint(tmp_path, monkeypatch):
    """A dataset made by an older generator version (same seed and params) is regenerated, not refused,
    and stages see the change in their fingerprint; a different dataset is still refused."""
    import demo.data as dd
    from stages import train_cam
    from stages.stage import Stage
    from stages.config import load_config
    root = tmp_path / "data"
    monkeypatch.setattr(dd, "VERSION", dd.VERSION - 1)
    generate(root, seed=1, n_train=4, n_val=2, size=(64, 72), style="hue")
    cfg = load_config("demo", [("voc_root", str(root)), ("work_dir", str(tmp_path / "w"))])
    fp_old = Stage(cfg, "train_cam", train_cam.depends(cfg)).fp
    monkeypatch.setattr(dd, "VERSION", dd.VERSION + 1)
    assert generate(root, seed=1, n_train=4, n_val=2, size=(64, 72), style="hue")["generated"]
    assert read_meta(root)["params"]["version"] == dd.VERSION
    assert Stage(cfg, "train_cam", train_cam.depends(cfg)).fp != fp_old
    with pytest.raises(InputError, match="--force"):
        generate(root, seed=2, n_train=4, n_val=2, size=(64, 72))


def test_pipeline_uses_a_demo_dataset_of_other_sizes_as_it_is(tmp_path, monkeypatch):
    """`pipeline --config demo` on a folder holding a demo dataset of this generator version made with other
    sizes (`demo-data --n-train ...`) uses it instead of refusing it, with a note when its style is not the
    default; an older version's is still refused."""
    import demo.data as dd
    from stages import demo_data
    from stages.config import load_config
    root = tmp_path / "data"
    generate(root, seed=1, n_train=4, n_val=2, size=(64, 72), style="hue")
    cfg = load_config("demo", [("voc_root", str(root))])
    before = (root / "demo_meta.json").stat().st_mtime_ns
    said = []
    demo_data.ensure(cfg, log=said.append)
    assert (root / "demo_meta.json").stat().st_mtime_ns == before
    assert "using it as it is" in said[0] and "4 train / 2 val" in said[0] and "64-72 px" in said[0]
    # a style other than the default (here "hue") is kept, with a note saying how to get the default
    assert "style hue is not the demo's default (tone)" in said[1] and "demo-data --force" in said[1]
    tone = tmp_path / "tone"
    generate(tone, seed=1, n_train=4, n_val=2, size=(64, 72))
    told = []
    demo_data.ensure(load_config("demo", [("voc_root", str(tone))]), log=told.append)
    assert len(told) == 1 and "style tone" in told[0]
    monkeypatch.setattr(dd, "VERSION", dd.VERSION + 1)
    with pytest.raises(InputError, match="--force"):
        demo_data.ensure(cfg, log=said.append)


def test_object_shape_is_recorded_and_thick_objects_cover_more_pixels(tmp_path):
    """demo_meta records the object shape; v6's default (VOC-like thickness) covers more of each image than
    v5's thin objects, on the same scenes (same seed): the share the issue-9 experiments measured."""
    import demo.data as dd
    designs = dd.class_designs(list(dd.DEFAULT_CLASSES))
    share = {}
    for name, objects in (("v5", dd.V5_OBJECTS), ("v6", dd.DEFAULT_OBJECTS)):
        fg = tot = 0
        for i in range(30):
            _, seg, _, _ = dd.render_image(0, i, designs, dd.DEFAULT_SIZE, objects)
            fg += int(((seg > 0) & (seg != IGNORE)).sum())
            tot += seg.size
        share[name] = fg / tot
    assert share["v6"] > 1.4 * share["v5"], share
    root = tmp_path / "d"
    generate(root, seed=1, n_train=3, n_val=1, size=(64, 72))
    assert read_meta(root)["params"]["objects"] == {k: float(v) for k, v in dd.DEFAULT_OBJECTS.items()}


@pytest.mark.parametrize("style, step, share", [("v6", 40, 0.3), ("hue", 20, 0.3), ("spots", 20, 0.15),
                                                  ("tone", 20, 0.3)])
def test_headless_objects_keep_the_scene_and_lose_only_their_heads(tmp_path, style, step, share):
    """headless_share draws objects without a head from a stream of its own: the ground truth and labels stay
    those of the same scenes with heads, the headless objects' head pixels become weak part (body), and the
    image changes only on those objects (by less in the family styles, whose heads differ from the body only
    by their pattern: `step` and `share` are the changed pixels' RGB step and least share)."""
    import demo.data as dd
    a, b = tmp_path / "a", tmp_path / "b"
    generate(a, seed=2, n_train=12, n_val=0, size=(64, 80), style=style)
    generate(b, seed=2, n_train=12, n_val=0, size=(64, 80), style=style,
             objects=dict(dd.DEFAULT_OBJECTS, headless_share=0.5))
    assert read_meta(b)["params"]["objects"]["headless_share"] == 0.5
    la, lb = load_cls_labels(a), load_cls_labels(b)
    changed = 0
    for i in read_ids(a, "trainval"):
        sa, sb = (load_png(r / "SegmentationClass" / f"{i}.png") for r in (a, b))
        pa, pb = (load_png(r / "PartMasks" / f"{i}.png") for r in (a, b))
        assert (sa == sb).all() and (la[i] == lb[i]).all()
        lost = (pa == dd.STRONG) & (pb != dd.STRONG)
        assert (pb[lost] == dd.WEAK).all() and not ((pb == dd.STRONG) & (pa != dd.STRONG)).any()
        ia, ib = (np.asarray(Image.open(r / "JPEGImages" / f"{i}.jpg"), np.int16) for r in (a, b))
        if lost.any():
            changed += 1
            # most of the change is on the lost heads (JPEG blocks smear a little around them)
            diff = np.abs(ia - ib).max(2) > step
            assert diff[lost].mean() > share and diff[~lost].mean() < 0.05, (diff[lost].mean(), diff[~lost].mean())
        else:
            assert (ia == ib).all()
    assert changed >= 3


def test_a_v5_dataset_is_replaced_and_bad_object_shapes_are_refused(tmp_path, monkeypatch):
    """A dataset of generator v5 (no object shape in its params) at the root is an older version of the same
    dataset: replaced, not refused. Object shapes out of range name the key."""
    import json
    import demo.data as dd
    root = tmp_path / "d"
    generate(root, seed=1, n_train=3, n_val=1, size=(64, 72))
    meta = read_meta(root)
    meta["params"]["version"] = 5
    del meta["params"]["objects"]
    (root / "demo_meta.json").write_text(json.dumps(meta))
    assert generate(root, seed=1, n_train=3, n_val=1, size=(64, 72))["generated"]
    assert read_meta(root)["params"]["version"] == dd.style_version(dd.DEFAULT_STYLE)
    for bad in (dict(dd.DEFAULT_OBJECTS, headless_share=1.5), dict(dd.DEFAULT_OBJECTS, body_scale=0),
                {"body_scale": 1.0}):
        with pytest.raises(InputError, match="demo object shape"):
            generate(tmp_path / "e", seed=1, n_train=3, n_val=1, objects=bad)


def test_pretraining_images_keep_generator_v5_objects():
    """The shipped pre-trained weights were made from aux images with v5's thin objects (demo/pretrain.py
    RECIPE); v6's thicker target objects must not change that set, or --verify/--force would drift."""
    import demo.data as dd
    from demo import pretrain
    designs = pretrain.aux_designs()
    images, _ = pretrain.render_aux(2, 0, designs)
    for i, img in enumerate(images):
        v5 = dd.render_image(pretrain.AUX_SEED, i, designs, dd.DEFAULT_SIZE, dd.V5_OBJECTS)[0]
        v6 = dd.render_image(pretrain.AUX_SEED, i, designs, dd.DEFAULT_SIZE, dd.DEFAULT_OBJECTS)[0]
        assert (img == v5).all() and not (img == v6).all()


def test_demo_data_command_takes_the_object_shape_and_names_a_bad_one(tmp_path, capsys):
    """`psa-eader demo-data --headless-share ...` writes that shape into demo_meta.json; a share outside [0, 1]
    is refused with the key named and exit code 2, and nothing is left at the root."""
    from stages.cli import main as cli_main
    root = tmp_path / "d"
    argv = ["demo-data", "--voc-root", str(root), "--n-train", "3", "--n-val", "1"]
    assert cli_main(argv + ["--headless-share", "0.5", "--body-scale", "1.2"]) == 0
    objects = read_meta(root)["params"]["objects"]
    assert objects["headless_share"] == 0.5 and objects["body_scale"] == 1.2
    bad = tmp_path / "bad"
    assert cli_main(["demo-data", "--voc-root", str(bad), "--n-train", "3", "--headless-share", "1.5"]) == 2
    assert "headless_share must lie in [0, 1]" in capsys.readouterr().err
    assert not bad.exists() or not any(bad.iterdir())


def _hue_sat(rgb):
    hsv = cv2.cvtColor(rgb.astype(np.float32) / 255, cv2.COLOR_RGB2HSV)
    return hsv[..., 0] / 360.0, hsv[..., 1]


def _hue_gap(a, b):
    """Distance between two hues in turns, around the circle."""
    return abs((a - b + 0.5) % 1.0 - 0.5)


def _circular_mean(turns):
    a = 2 * np.pi * turns
    return np.arctan2(np.sin(a).mean(), np.cos(a).mean()) / (2 * np.pi) % 1.0


@pytest.mark.parametrize("style", ["hue", "spots", "tone"])
def test_family_styles_share_the_hue_across_parts_and_differ_in_fine_structure(style):
    """"hue" / "spots" / "tone": in every single-object image the head's mean hue is the body's (the parts
    differ by fine pattern only, so colour is continuous across the seam), the body's hue is its class's design
    hue (its family's, offset per class in "tone"), and the head holds far more fine structure (Laplacian
    energy) than the body. In "hue" and "tone" the background is grey."""
    import demo.data as dd
    names = list(dd.DEFAULT_CLASSES)
    designs = dd.designs_for(names, style)
    checked = 0
    for i in range(40):
        rgb, seg, part, n = dd.render_image(5, i, designs, dd.DEFAULT_SIZE, dd.DEFAULT_OBJECTS, style)
        if n != 1 or not (part == dd.STRONG).sum() >= 40:
            continue
        hue, sat = _hue_sat(rgb)
        inner = cv2.erode(((part == dd.STRONG) | (part == dd.WEAK)).astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
        head, body = inner & (part == dd.STRONG), inner & (part == dd.WEAK)
        d = next(x for x in designs if x["index"] + 1 == int(np.unique(seg[(seg > 0) & (seg != IGNORE)])[0]))
        dh = _hue_gap(_circular_mean(hue[head]), _circular_mean(hue[body]))
        df = _hue_gap(_circular_mean(hue[body]), d["hue"])
        assert dh < 0.03 and df < 0.03, (i, dh, df)
        lap = np.abs(cv2.Laplacian(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32), cv2.CV_32F))
        assert lap[head].mean() > 3 * lap[body].mean(), (i, lap[head].mean(), lap[body].mean())
        if style in dd.STRIPED:
            assert np.median(sat[(part == 0)]) < 0.1 and np.median(sat[body]) > 0.35
        checked += 1
    assert checked >= 5


def test_family_designs_tell_the_class_by_the_head_within_a_family():
    """Classes of a family share the hue ("tone": within a band far narrower than the gap to the nearest other
    family); within a family each has its own head pattern and body step."""
    import demo.data as dd
    for style, key in (("hue", "orientation"), ("spots", "lattice"), ("tone", "orientation")):
        designs = dd.designs_for(list(dd.DEFAULT_CLASSES), style)
        for g in {d["group"] for d in designs}:
            fam = [d for d in designs if d["group"] == g]
            assert len({d[key] for d in fam}) == len(fam)
            assert len({(d["value"], d["sat"], d["texture_scale"]) for d in fam}) == len(fam)
            if style == "tone":
                assert len({d["hue"] for d in fam}) == len(fam)
                span = max(_hue_gap(a["hue"], b["hue"]) for a in fam for b in fam)
                apart = min(_hue_gap(a["hue"], b["hue"]) for a in fam for b in designs if b["group"] != g)
                assert span < apart / 3, (span, apart)
            else:
                assert len({d["hue"] for d in fam}) == 1
        if style != "tone":
            assert len({d["hue"] for d in designs}) == len({d["group"] for d in designs})


def test_tone_bodies_tell_their_class_within_the_family():
    """"tone": an object's body alone tells its class within the family: its mean hue, measured on the rendered
    image, is nearest its own class's design hue among its family's for nine bodies in ten or more."""
    import demo.data as dd
    designs = dd.designs_for(list(dd.DEFAULT_CLASSES), "tone")
    right = total = 0
    for i in range(30):
        rgb, seg, part, n = dd.render_image(7, i, designs, dd.DEFAULT_SIZE, dd.DEFAULT_OBJECTS, "tone")
        hue, _ = _hue_sat(rgb)
        body = cv2.erode((part == dd.WEAK).astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
        for c in np.unique(seg[(seg > 0) & (seg != IGNORE)]):
            m = body & (seg == c)
            if m.sum() < 40:
                continue
            d = next(x for x in designs if x["index"] + 1 == int(c))
            fam = [x for x in designs if x["group"] == d["group"]]
            h = _circular_mean(hue[m])
            right += min(fam, key=lambda x: _hue_gap(h, x["hue"]))["index"] == d["index"]
            total += 1
    assert total >= 20 and right >= 0.9 * total, (right, total)


def test_style_is_recorded_changes_the_fingerprint_and_is_checked(tmp_path):
    """The style is part of the dataset's identity: data of another style at the same seed and sizes is a
    different dataset for every stage's fingerprint (results made on v6 data are not reused on the "hue"
    data), the default style is "tone", and an unknown style is refused by name."""
    import demo.data as dd
    from stages import train_cam
    from stages.stage import Stage
    from stages.config import load_config
    fps = {}
    for style in ("v6", "hue"):
        root = tmp_path / style
        generate(root, seed=1, n_train=3, n_val=1, size=(64, 72), style=style)
        assert dd.style_of(read_meta(root)) == style
        cfg = load_config("demo", [("voc_root", str(root)), ("work_dir", str(tmp_path / "w"))])
        fps[style] = Stage(cfg, "train_cam", train_cam.depends(cfg)).fp
    assert fps["v6"] != fps["hue"]
    # v6 renders as generator v6 did: its params are v6's own (version 6, no style key), so a v6 dataset made
    # before styles existed is taken as the same dataset and no finished run on it is redone
    v6 = read_meta(tmp_path / "v6")["params"]
    assert v6["version"] == dd.V6_VERSION and "style" not in v6 and dd.is_current(read_meta(tmp_path / "v6"))
    generate(tmp_path / "default", seed=1, n_train=3, n_val=1, size=(64, 72))
    assert read_meta(tmp_path / "default")["params"]["style"] == dd.DEFAULT_STYLE == "tone"
    with pytest.raises(InputError, match="style 'stripes'"):
        generate(tmp_path / "bad", seed=1, n_train=3, n_val=1, style="stripes")
    assert not (tmp_path / "bad").exists()
