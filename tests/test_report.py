"""report.md's tables from a hand-made results.json: the paper's rows labelled as the paper labels them (the
dagger only on what EADER's authors reproduced), each DeepLabV3+ row beside the paper's number for its
backbone, Table 3 per class with the differences, and the alpha-sweep's Table 1 when it has run."""
import json

from stages.report import refresh_report


def entry(cam, aff, seg, classes, encoder):
    per_class = {c: v for c, v in classes.items()}
    return {"cam": {"miou": cam, "precision": 60.0, "recall": 70.0},
            "pseudo": {"miou": aff, "precision": 61.0, "recall": 71.0},
            "seg": {"miou": seg, "precision": 62.0, "recall": 72.0, "per_class": per_class, "split": "val.txt"},
            "meta": {"seg_encoder": encoder}}


def test_report_tables_from_results_json(tmp_path):
    res = {"baseline": entry(45.0, 55.0, 58.0, {"bird": 70.0, "pottedplant": 30.0}, "resnet101"),
           "eader": entry(47.5, 57.25, 60.0, {"bird": 75.0, "pottedplant": 20.0}, "resnet101")}
    (tmp_path / "results.json").write_text(json.dumps(res))
    sweep = tmp_path / "sweep" / "standalone"
    sweep.mkdir(parents=True)
    (sweep / "table1.md").write_text("# EADER Table 1: alpha sweep (standalone)\n\n| alpha | runs |\n|---|---|\n"
                                     "| 0.05 | 3 |\n")
    refresh_report(tmp_path)
    md = (tmp_path / "report.md").read_text()
    # Table 2: ours, then the paper's rows as printed
    assert "| baseline | 45.0 | 60.0 | 70.0 | 55.0 | 58.0 |" in md
    assert "| eader | 47.5 | 60.0 | 70.0 | 57.2 | 60.0 |" in md
    assert "| PSA (paper; † reproduced by EADER's authors) | 46.8 | 60.3 † | 66.7 † | 58.7 | 60.7 † |" in md
    assert "| PSA w/ EADER (paper; DeepLabV3+ Xception-65) | 48.6 | 61.3 | 68.7 | 60.1 | 62.8 |" in md
    assert "| PSA w/ EADER (paper Table 4; DeepLabV3+ ResNet-101) | - | - | - | - | 62.5 |" in md
    assert "reproduced by EADER)" not in md  # the old label put the dagger on the whole row
    assert "resnet101: compare with PSA w/ EADER's 62.5 (ResNet-101)" in md
    # Table 3: per class, ours side by side with EADER - baseline, the paper's rows and difference beside
    assert "| bird | 70.0 | 75.0 | +5.0 | 76.7 | 84.1 | +7.4 |" in md
    assert "| pottedplant | 30.0 | 20.0 | -10.0 | 37.8 | 15.4 | -22.4 |" in md
    assert "| aeroplane | - | - | - | - | - | - |" in md
    # Table 1 from the sweep, its heading one level down
    assert "## EADER Table 1: alpha sweep (standalone)" in md and "| 0.05 | 3 |" in md


def test_backbone_without_a_paper_number_is_said(tmp_path):
    res = {"baseline": entry(45.0, 55.0, 30.0, {}, "resnet18")}
    (tmp_path / "results.json").write_text(json.dumps(res))
    refresh_report(tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "resnet18: the paper has no DeepLabV3+ number for this backbone" in md


def test_qualitative_figure_rows_columns_and_report_link(demo_root, tmp_path):
    import cv2
    import numpy as np
    from conftest import tiny_cfg
    from psa_baseline import voc
    from stages import figure
    cfg = tiny_cfg(demo_root, tmp_path / "w")
    ids = voc.read_split(demo_root / cfg["data"]["eval_list"])[:2]
    work = tmp_path / "w"
    for v in ("baseline", "eader"):
        (work / v / "make_cam" / "cams").mkdir(parents=True)
        for i in ids:
            h, w = voc.VOCRoot(demo_root).read_image(i).shape[:2]
            np.save(work / v / "make_cam" / "cams" / f"{i}.npy", {3: np.ones((h, w), np.float32)})
    (work / "baseline" / "make_pseudo" / "pseudo").mkdir(parents=True)
    h, w = voc.VOCRoot(demo_root).read_image(ids[0]).shape[:2]
    voc.save_label_png(work / "baseline" / "make_pseudo" / "pseudo" / f"{ids[0]}.png", np.full((h, w), 3, np.uint8))
    out = figure.draw(cfg, n=2)
    assert out == work / "figures" / "qualitative.png"
    img = cv2.imread(str(out))[..., ::-1]
    # image | baseline CAM | eader CAM | baseline pseudo labels | ground truth; a header and one row per id
    assert img.shape == (figure.HEADER + 2 * figure.TILE, 5 * figure.TILE, 3)
    centre = figure.HEADER + figure.TILE // 2
    assert img[centre, 3 * figure.TILE + figure.TILE // 2].tolist() == voc_colour(3)  # class 3's palette colour
    assert img[centre + figure.TILE, 3 * figure.TILE + figure.TILE // 2].tolist() == [160, 160, 160]  # no file
    (work / "results.json").write_text("{}")
    from stages.report import refresh_report
    refresh_report(work)
    assert "![the first images of data.eval_list](figures/qualitative.png)" in (work / "report.md").read_text()


def voc_colour(c):
    from psa_baseline.constants import voc_palette
    return voc_palette()[c].tolist()


def test_figure_refuses_what_it_cannot_draw(demo_root, tmp_path):
    """A work dir without CAMs (or none at all) and --n 0 stop with exit 2 and the reason; nothing is written."""
    from stages.cli import main
    base = ["figure", "--config", "demo", "--voc-root", str(demo_root)]
    for work, extra in ((tmp_path / "none", []), (tmp_path, []), (tmp_path, ["--n", "0"])):
        assert main(base + ["--work-dir", str(work)] + extra) == 2
    assert not (tmp_path / "figures").exists() and not (tmp_path / "none").exists()


def test_old_names_of_the_pseudo_labels_are_read_with_a_notice(tmp_path, capsys):
    """The pseudo labels were 'aff' in --until, --target and results.json: old commands still run (a one-line
    notice says the new name), and an older results.json is read, reported and updated under 'pseudo'."""
    from stages.cli import parse_args
    from stages.registry import steps
    from stages.report import load_results, update_results
    for argv in (["pipeline", "--until", "aff"], ["check", "--until", "aff"], ["compare", "--until", "aff"]):
        assert parse_args(argv).until == "pseudo"
    assert parse_args(["eval-seg", "--target", "aff"]).target == "pseudo"
    assert capsys.readouterr().err.count("'aff' is deprecated, use 'pseudo'") == 4
    assert steps("aff") == steps("pseudo")
    old = entry(45.0, 55.0, 58.0, {}, "resnet101")
    old["aff"] = old.pop("pseudo")
    old["meta"]["fingerprints"] = {"cam": "c1", "aff": "a1"}
    (tmp_path / "results.json").write_text(json.dumps({"baseline": old}))
    assert load_results(tmp_path)["baseline"]["pseudo"]["miou"] == 55.0
    refresh_report(tmp_path)
    assert "| baseline | 45.0 | 60.0 | 70.0 | 55.0 | 58.0 |" in (tmp_path / "report.md").read_text()
    update_results(tmp_path, "baseline", "cam", {"miou": 45.0}, fingerprint="c1")  # same CAMs: nothing dropped
    res = json.loads((tmp_path / "results.json").read_text())["baseline"]
    assert "aff" not in res and res["pseudo"]["miou"] == 55.0 and res["meta"]["fingerprints"]["pseudo"] == "a1"
