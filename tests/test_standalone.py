"""Standalone EADER (Table 1) stage, the alpha sweep and the attention figure: tiny CPU runs."""
import importlib.util
import json

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ROOT
from psa_baseline.evaluation import CamSweep, cam_dict_to_label
from psa_eader.standalone import segment_from_attention
from stages import alpha_sweep, train_standalone
from stages.cli import main as cli_main
from stages.config import load_config

TINY = ["standalone.arch=resnet18", "standalone.width=0.0625", "standalone.batch_size=4", "standalone.epochs=2",
        "standalone.crop=64", "standalone.resize_long=[56,80]", "standalone.checkpoint_every=2",
        "standalone.log_every=2", "standalone.num_workers=0", "standalone.infer_scales=[1.0]",
        "standalone.sweep=[0.1,0.3,0.1]", "standalone.phase_steps=2", "standalone.adv_width=0.0625",
        "standalone.weights=random", "eader.adv_weights=random"]  # random init said explicitly


def tiny_standalone_cfg(voc_root, work_dir, *extra):
    return load_config("demo", [("voc_root", str(voc_root)), ("work_dir", str(work_dir))] + TINY + list(extra))


def test_standalone_end_to_end_resume_and_skip(demo_root, tmp_path):
    # uninterrupted EADER run (8 steps: turns of 2) with the attention saved
    cfg = tiny_standalone_cfg(demo_root, tmp_path / "a", "eader.enabled=true", "standalone.save_cams=true")
    res = train_standalone.run(cfg)
    for k in ("miou", "precision", "recall", "per_class", "rho", "sweep", "best_miou", "best_rho", "n_images"):
        assert k in res
    assert 0 <= res["miou"] <= 100 and res["rho"] == 0.3 and res["n_images"] == 8
    assert set(res["sweep"]) == {"0.1", "0.2", "0.3"}
    d = tmp_path / "a" / "eader"
    assert (d / "standalone_train" / "DONE.json").exists() and (d / "standalone_eval" / "DONE.json").exists()
    assert json.loads((d / "standalone_eval" / "metrics.json").read_text())["miou"] == res["miou"]
    log = (tmp_path / "a" / "logs" / "eader.standalone_train.log").read_text()
    assert "l_am" in log and "adv_loss" in log  # both turns ran

    # the saved attention is PSA's CAM format: present classes, image size, max ~1
    labels = np.load(demo_root / "cls_labels.npy", allow_pickle=True).item()
    cams = sorted((d / "standalone_eval" / "cams").glob("*.npy"))
    assert len(cams) == 8
    for p in cams[:3]:
        cam = np.load(p, allow_pickle=True).item()
        assert sorted(cam) == np.nonzero(labels[p.stem])[0].tolist()
        hw = np.array(Image.open(demo_root / "SegmentationClass" / f"{p.stem}.png")).shape
        for m in cam.values():
            assert m.dtype == np.float32 and m.shape == hw and 0 <= m.min() and m.max() <= 1.0

    # killed after step 3 (mid adversary turn), then resumed: the same weights as the unbroken run
    cfg_b = tiny_standalone_cfg(demo_root, tmp_path / "b", "eader.enabled=true")
    assert train_standalone.run(cfg_b, stop_after=3) is None
    ck = torch.load(tmp_path / "b" / "eader" / "standalone_train" / "checkpoint.pth", weights_only=False)
    assert ck["step"] == 3 and ck["eader"]["step"] == 3
    train_standalone.run(cfg_b)
    a = torch.load(d / "standalone_train" / "localizer.pth", weights_only=True)
    b = torch.load(tmp_path / "b" / "eader" / "standalone_train" / "localizer.pth", weights_only=True)
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-6), k

    # rerun through the CLI: both stages skipped, nothing rewritten
    mtime = (d / "standalone_train" / "localizer.pth").stat().st_mtime_ns
    rc = cli_main(["standalone", "--config", "demo", "--voc-root", str(demo_root), "--work-dir", str(tmp_path / "a"),
                   *TINY, "eader.enabled=true", "standalone.save_cams=true"])
    assert rc == 0
    assert (d / "standalone_train" / "localizer.pth").stat().st_mtime_ns == mtime
    # an evaluation-only change (rho) keeps the trained localizer
    res2 = train_standalone.run(tiny_standalone_cfg(demo_root, tmp_path / "a", "eader.enabled=true",
                                                    "standalone.rho=0.2"))
    assert res2["rho"] == 0.2 and res2["miou"] == pytest.approx(res["sweep"]["0.2"])
    assert (d / "standalone_train" / "localizer.pth").stat().st_mtime_ns == mtime


def test_segmentation_from_attention_with_rho_by_hand():
    att = torch.zeros(3, 2, 3)
    att[0] = torch.tensor([[0.9, 0.2, 0.35], [0.5, 0.1, 0.3]])
    att[1] = torch.tensor([[0.5, 0.25, 0.1], [0.8, 0.0, 0.3]])
    att[2] = 1.0  # absent class: never wins
    labels = torch.tensor([1.0, 1.0, 0.0])
    assert segment_from_attention(att, labels, rho=0.3).tolist() == [[1, 0, 1], [2, 0, 0]]  # tie 0.3 -> bg
    assert segment_from_attention(att, labels, rho=0.6).tolist() == [[1, 0, 0], [2, 0, 0]]
    assert segment_from_attention(att, labels, rho=0.0).tolist() == [[1, 2, 1], [2, 1, 1]]
    # the evaluation's rule (CamSweep / cam_dict_to_label on the CAM dict) is the same segmentation
    cam = {0: att[0].numpy(), 1: att[1].numpy()}
    for rho in (0.0, 0.3, 0.6):
        expect = segment_from_attention(att, labels, rho).numpy()
        assert (cam_dict_to_label(cam, (2, 3), rho) == expect).all()
        sweep = CamSweep([rho])
        sweep.add(expect.astype(np.uint8), cam)
        assert sweep.results()[rho]["miou"] == pytest.approx(100.0)


def test_sweep_aggregation_and_formatting():
    runs = {"alpha0": {0: {"miou": 41.0, "precision": 58.0, "recall": 58.0, "best_miou": 42.0},
                       1: {"miou": 41.5, "precision": 58.5, "recall": 59.0, "best_miou": 42.0},
                       2: {"miou": 41.6, "precision": 58.3, "recall": 57.5, "best_miou": 42.0}},
            "alpha0.05": {0: {"miou": 44.0, "precision": 55.0, "recall": 68.0, "best_miou": 45.0,
                              "part_recall": {"strong": 90.0, "weak": 61.5}}}}
    agg = alpha_sweep.aggregate(runs)
    a0 = agg["alpha0"]
    assert a0["n"] == 3 and a0["seeds"] == [0, 1, 2]
    assert a0["miou"]["mean"] == pytest.approx(41.366666, abs=1e-5)
    assert a0["miou"]["std"] == pytest.approx(np.std([41.0, 41.5, 41.6], ddof=1))
    assert alpha_sweep.fmt_pm(a0["miou"]["mean"], a0["miou"]["std"]) == "41.37 +- 0.32"
    assert agg["alpha0.05"]["miou"]["std"] is None  # one run: no spread
    assert alpha_sweep.fmt_pm(44.0, None) == "44.00" and alpha_sweep.fmt_pm(None, None) == "-"
    assert alpha_sweep.mean_std([1.0, float("nan"), 3.0]) == (2.0, pytest.approx(2 ** 0.5))
    md = alpha_sweep.table1_markdown(agg, [0.0, 0.01, 0.05], "standalone")
    assert "| 0 | 3 | 41.37 +- 0.32 | 58.27 +- 0.25 | 58.17 +- 0.76 | 42.00 +- 0.00 | - | - | 41.37 +- 0.26 |" in md
    assert "| 0.05 | 1 | 44.00 | 55.00 | 68.00 | 45.00 | 90.00 | 61.50 | 43.89 +- 0.40 |" in md  # demo part recall
    assert "| 0.01 | 0 | - | - | - | - | - | - | 42.51 +- 0.41 |" in md


def test_sweep_orchestration(tmp_path, monkeypatch):
    """Run dirs, alpha 0 = hook off, variants share runs, skip/collect; the stage runs are faked."""
    cfg = load_config("demo", [("work_dir", str(tmp_path))])
    seen = []

    def fake_run(rcfg, model, force=False):
        seen.append((rcfg["work_dir"], rcfg["seed"], rcfg["eader"]["enabled"], rcfg["eader"]["alpha"],
                     rcfg["data"]["infer_lists"]))
        d = tmp_path / "fake" / rcfg["work_dir"].split("sweep/")[1]
        m = {"miou": 40 + 10 * rcfg["eader"]["alpha"] + rcfg["seed"], "precision": 50.0, "recall": 60.0,
             "best_miou": 45.0}
        d.mkdir(parents=True, exist_ok=True)
        return m

    monkeypatch.setattr(alpha_sweep, "run_one", fake_run)
    path, agg = alpha_sweep.sweep(cfg, "psa", alphas=[0, 0.05], seeds=[0, 1], log=lambda m: None)
    assert path == tmp_path / "sweep" / "psa" / "table1.md" and path.with_suffix(".json").exists()
    assert [s[:4] for s in seen] == [
        (str(tmp_path / "sweep/psa/alpha0/seed0"), 0, False, 0.0), (str(tmp_path / "sweep/psa/alpha0/seed1"), 1, False, 0.0),
        (str(tmp_path / "sweep/psa/alpha0.05/seed0"), 0, True, 0.05),
        (str(tmp_path / "sweep/psa/alpha0.05/seed1"), 1, True, 0.05)]
    assert all(s[4] == [cfg["data"]["eval_list"]] for s in seen)  # psa: CAMs of the eval list only
    assert agg["alpha0.05"]["miou"]["mean"] == pytest.approx(40.5 + 0.5)
    assert "| 0.05 | 2 | 41.00 +- 0.71 |" in path.read_text()
    table = json.loads(path.with_suffix(".json").read_text())
    assert table["runs"]["alpha0"]["1"]["miou"] == 41.0 and table["paper"]["0.05"]["miou"]["mean"] == 43.89

    seen.clear()
    path, agg = alpha_sweep.sweep(cfg, "psa", seeds=[0], variants=["baseline", "eader"], log=lambda m: None)
    assert [s[0] for s in seen] == [str(tmp_path / "sweep/psa/alpha0/seed0"), str(tmp_path / "sweep/psa/alpha0.05/seed0")]
    md = path.read_text()
    assert path.name == "table2.md" and "| baseline (alpha0) | 1 | 40.00 |" in md and "PSA w/ EADER (paper)" in md
    with pytest.raises(Exception, match="eader.alpha"):
        alpha_sweep.sweep(load_config("demo", [("work_dir", str(tmp_path)), "eader.alpha=0"]), "psa",
                          variants=["eader"], log=lambda m: None)


def test_real_tiny_standalone_sweep_via_cli(demo_root, tmp_path):
    args = ["alpha-sweep", "--config", "demo", "--voc-root", str(demo_root), "--work-dir", str(tmp_path),
            "--model", "standalone", "--alphas", "0", "0.05", "--seeds", "0"]
    assert cli_main(args[:1] + TINY + args[1:]) == 0  # overrides before the options (--seeds takes a list)
    table = json.loads((tmp_path / "sweep" / "standalone" / "table1.json").read_text())
    assert set(table["rows"]) == {"alpha0", "alpha0.05"} and table["missing"] == []
    assert (tmp_path / "sweep/standalone/alpha0/seed0/baseline/standalone_eval/DONE.json").exists()
    assert (tmp_path / "sweep/standalone/alpha0.05/seed0/eader/standalone_eval/DONE.json").exists()
    # collect-only with a seed never run: tabulates what exists, names what is missing
    assert cli_main(args[:1] + TINY + args[1:-1] + ["0", "7", "--collect-only"]) == 0
    table = json.loads((tmp_path / "sweep" / "standalone" / "table1.json").read_text())
    assert table["missing"] == ["alpha0/seed7", "alpha0.05/seed7"] and table["rows"]["alpha0"]["n"] == 1


# ---------------------------------------------------------------------------------------- the figure

def _load_script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_figure_script_layout(demo_root, tmp_path):
    fig = _load_script("figure_attention")
    ids = (demo_root / "ImageSets/Segmentation/val.txt").read_text().split()[:3]
    labels = np.load(demo_root / "cls_labels.npy", allow_pickle=True).item()
    base, ead = tmp_path / "base", tmp_path / "eader"
    base.mkdir()
    ead.mkdir()
    for i in ids:
        cs = np.nonzero(labels[i])[0]
        ramp = np.tile(np.linspace(0, 1, 80, dtype=np.float32), (64, 1))
        np.save(base / f"{i}.npy", {int(c): ramp * 0.5 for c in cs})
        np.save(ead / f"{i}.npy", {int(c): np.ones((8, 10), np.float32) for c in cs})  # other size: resized
    out = tmp_path / "fig.png"
    assert fig.main(["--voc-root", str(demo_root), "--baseline", str(base), "--eader", str(ead), "--split", "val",
                     "--n", "3", "--cell", "100", "80", "--out", str(out)]) == 0
    img = cv2.imread(str(out))
    (h, w), corner = fig.layout(3, 4, 100, 80)
    assert img.shape == (h, w, 3) and (h, w) == (fig.PAD + fig.HEADER + 3 * 84, fig.PAD + 4 * 104)
    # the EADER cell (all ones) is redder than the baseline cell (half ramp) in the same row
    y, x1 = corner(1, 1)
    _, x2 = corner(1, 2)
    cell = lambda x: img[y + 20:y + 60, x + 10:x + 90].astype(float)  # noqa: E731
    assert cell(x2)[..., 2].mean() > cell(x1)[..., 2].mean() + 20  # BGR: channel 2 = red
    # ground-truth column: drawn in the VOC palette
    _, xg = corner(0, 3)
    assert len(np.unique(img[corner(0, 3)[0]:corner(0, 3)[0] + 80, xg:xg + 100].reshape(-1, 3), axis=0)) >= 2
    # without ground truth: 3 columns; explicit ids
    out2 = tmp_path / "fig2.png"
    assert fig.main(["--voc-root", str(demo_root), "--baseline", str(base), "--eader", str(ead), "--ids", ids[0],
                     "--no-gt", "--cell", "100", "80", "--out", str(out2)]) == 0
    assert cv2.imread(str(out2)).shape[:2] == fig.layout(1, 3, 100, 80)[0]
    # a missing CAM file is an error naming it, not a traceback
    assert fig.main(["--voc-root", str(demo_root), "--baseline", str(base), "--eader", str(ead), "--ids", "nope",
                     "--out", str(tmp_path / "x.png")]) == 2


def test_figure_script_pseudo_label_columns(demo_root, tmp_path):
    """--pseudo adds two label columns (image, CAM, CAM, pseudo, pseudo, gt): issue 4's figure."""
    from psa_baseline import voc
    fig = _load_script("figure_attention")
    ids = (demo_root / "ImageSets/Segmentation/val.txt").read_text().split()[:2]
    labels = np.load(demo_root / "cls_labels.npy", allow_pickle=True).item()
    cams, pb, pe = tmp_path / "cams", tmp_path / "pb", tmp_path / "pe"
    cams.mkdir()
    for i in ids:
        np.save(cams / f"{i}.npy", {int(c): np.ones((8, 8), np.float32) for c in np.nonzero(labels[i])[0]})
        gt = voc.VOCRoot(demo_root).read_seg(i)
        voc.save_label_png(pb / f"{i}.png", np.zeros(gt.shape, np.uint8))              # all background
        voc.save_label_png(pe / f"{i}.png", np.where(gt == 255, 0, gt).astype(np.uint8))  # the truth
    out = tmp_path / "fig.png"
    assert fig.main(["--voc-root", str(demo_root), "--baseline", str(cams), "--eader", str(cams), "--ids", *ids,
                     "--pseudo", str(pb), str(pe), "--cell", "100", "80", "--out", str(out)]) == 0
    img = cv2.imread(str(out))
    (h, w), corner = fig.layout(2, 6, 100, 80)
    assert img.shape == (h, w, 3)
    y, xb = corner(0, 3)
    _, xe = corner(0, 4)
    _, xg = corner(0, 5)
    cell = lambda x: img[y + 12:y + 80, x:x + 100]  # noqa: E731  (below the row name)
    assert len(np.unique(cell(xb).reshape(-1, 3), axis=0)) <= 2  # background (and letterbox margin) only
    drawn = (cell(xg) != 255).any(-1)  # gt pixels that are not void (white) nor margin
    assert drawn.mean() > 0.3 and np.array_equal(cell(xe)[drawn], cell(xg)[drawn])  # the truth draws as the gt
    assert fig.main(["--voc-root", str(demo_root), "--baseline", str(cams), "--eader", str(cams), "--ids", ids[0],
                     "--pseudo", str(pb), str(tmp_path / "none"), "--out", str(tmp_path / "x.png")]) == 2
