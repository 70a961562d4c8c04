"""Standalone EADER (Table 1) stage, the alpha sweep and the attention figure: tiny CPU runs."""
import json

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from psa_baseline.evaluation import CamSweep, cam_dict_to_label
from psa_eader.standalone import segment_from_attention
from stages import alpha_sweep, train_standalone
from stages.cli import main as cli_main
from stages.config import load_config

TINY = ["standalone.arch=resnet18", "standalone.width=0.125", "standalone.batch_size=4", "standalone.epochs=2",
        "standalone.crop=64", "standalone.resize_long=[56,80]", "standalone.checkpoint_every=2",
        "standalone.log_every=2", "standalone.num_workers=0", "standalone.infer_scales=[1.0]",
        "standalone.sweep=[0.1,0.3,0.1]", "standalone.phase_steps=2", "standalone.adv_width=0.125",
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

def test_figure_script_layout(demo_root, tmp_path):
    from scripts import figure_attention as fig
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
    """--pseudo adds two label columns (image, CAM, CAM, pseudo, pseudo, gt): the qualitative figure."""
    from psa_baseline import voc
    from scripts import figure_attention as fig
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


# ---------------------------------------------------------------------------- the authors' standalone setting

class FixedAttention:
    """A stand-in localizer: Grad-CAM = 2 + a ramp (minimum above 0), recording its input shapes."""

    def __init__(self):
        self.shapes = []

    def forward_with_attention(self, x, labels, create_graph=True):
        self.shapes.append(tuple(x.shape))
        h, w = x.shape[-2] // 4, x.shape[-1] // 4
        ramp = torch.arange(h * w, dtype=torch.float32).view(1, 1, h, w)
        return None, (2.0 + ramp).expand(x.shape[0], labels.shape[1], h, w) * labels[:, :, None, None]


def test_paper_standalone_defaults_are_the_authors():
    s = load_config("voc")["standalone"]
    assert (s["augment"], s["gradcam_norm"], s["infer_flip"], s["infer_scales"]) == ("authors", "minmax", False, [1.0])
    assert load_config("voc", ["standalone.augment=psa", "standalone.gradcam_norm=max",
                               "standalone.infer_flip=true"])["standalone"]["augment"] == "psa"  # options kept


def test_evaluation_is_one_forward_at_the_original_size_min_max_normalised(tmp_path):
    """With the paper config: one forward of the unflipped image at its size (no TTA), and each map
    min-max normalised (the stand-in's maps have their minimum at 2, so dividing by the max alone
    would leave it at ~0.2 of the max)."""
    s = load_config("voc")["standalone"]
    img = np.zeros((40, 48, 3), np.uint8)
    label = np.zeros(20, np.float32)
    label[[3, 7]] = 1
    loc = FixedAttention()
    cam = train_standalone.attention_dict(loc, img, label, s["infer_scales"], s["infer_flip"], "cpu",
                                          s["gradcam_norm"])
    assert loc.shapes == [(1, 3, 40, 48)]
    assert sorted(cam) == [3, 7]
    for m in cam.values():
        assert m.shape == (40, 48) and m.min() == pytest.approx(0.0, abs=1e-6) and m.max() == pytest.approx(1.0, abs=1e-4)
    # the stage's evaluation passes the config's choices on
    class Root:
        def read_image(self, i):
            return img

        def read_seg(self, i):
            return np.zeros((40, 48), np.uint8)

    loc = FixedAttention()
    loc.eval = lambda: None
    cfg = load_config("voc")
    train_standalone.evaluate_localizer(cfg, loc, ["a"], Root(), {"a": label}, "cpu", cam_dir=tmp_path)
    assert loc.shapes == [(1, 3, 40, 48)]
    saved = np.load(tmp_path / "a.npy", allow_pickle=True).item()
    assert all(m.min() == pytest.approx(0.0, abs=1e-6) for m in saved.values())
    # the options: max normalisation (10 x 12 cells: 2 + ramp 0..119, min / max = 2 / 121) and PSA's flip
    # TTA (the image and its mirror in one batch)
    cam = train_standalone.attention_dict(FixedAttention(), img, label, [1.0], False, "cpu", "max")
    assert cam[3].min() == pytest.approx(2 / 121, rel=1e-3)
    loc = FixedAttention()
    train_standalone.attention_dict(loc, img, label, [1.0], True, "cpu", "max")
    assert loc.shapes == [(2, 3, 40, 48)]


def test_min_max_normalisation_by_hand():
    from psa_eader.masks import normalise_attention
    att = torch.tensor([[1.0, 2.0], [3.0, 5.0]])
    assert torch.allclose(normalise_attention(att, norm="minmax"), torch.tensor([[0.0, 0.25], [0.5, 1.0]]), atol=1e-5)
    assert torch.allclose(normalise_attention(att, norm="max"), torch.tensor([[0.2, 0.4], [0.6, 1.0]]), atol=1e-5)
    assert torch.equal(normalise_attention(torch.zeros(2, 2), norm="minmax"), torch.zeros(2, 2))
    with pytest.raises(ValueError):
        normalise_attention(att, norm="other")


def test_authors_augmentation_is_random_resized_crop_and_flip():
    from psa_eader.standalone import AuthorsAugment
    from psa_baseline.voc import normalize
    aug = AuthorsAugment(32)
    h, w = 60, 90
    for seed in range(50):
        top, left, bh, bw = aug.box(h, w, np.random.default_rng(seed))
        assert 0 <= top and top + bh <= h and 0 <= left and left + bw <= w
        assert 0.08 * h * w * 0.8 <= bh * bw <= h * w
        assert 3 / 4 * 0.8 <= bw / bh <= 4 / 3 * 1.25
    # a left-dark / right-bright image: no colour jitter (only the two colours, resampled at their border),
    # output crop x crop, and about half the crops mirrored
    img = np.zeros((h, w, 3), np.uint8)
    img[:, w // 2:] = 200
    dark, bright = normalize(img[:1, :1])[:, 0, 0], normalize(img[:1, -1:])[:, 0, 0]
    mirrored = 0
    for seed in range(40):
        x = aug(img, np.random.default_rng(seed))
        assert x.shape == (3, 32, 32)
        corners = [x[:, 0, 0], x[:, 0, -1]]
        for c in corners:
            assert torch.allclose(c, dark, atol=1e-4) or torch.allclose(c, bright, atol=1e-4)
        mirrored += bool(torch.allclose(corners[0], bright, atol=1e-4) and torch.allclose(corners[1], dark, atol=1e-4))
    assert 5 <= mirrored <= 35
    assert torch.equal(aug(img, np.random.default_rng(7)), aug(img, np.random.default_rng(7)))  # reproducible


def test_stage_trains_with_the_configured_augmentation_and_gradcam_norm(demo_root, tmp_path, monkeypatch):
    """standalone.augment=authors puts AuthorsAugment in the training set; the hook normalises the
    Grad-CAM for its masks and L_reg as standalone.gradcam_norm says."""
    from psa_eader.standalone import AuthorsAugment
    calls, hooks = [], []

    class Spy(AuthorsAugment):
        def __call__(self, img, rng):
            calls.append(self.crop)
            return super().__call__(img, rng)

    build = train_standalone.build_eader
    monkeypatch.setattr(train_standalone, "AuthorsAugment", Spy)
    monkeypatch.setattr(train_standalone, "build_eader", lambda *a, **k: hooks.append(build(*a, **k)) or hooks[-1])
    cfg = tiny_standalone_cfg(demo_root, tmp_path, "eader.enabled=true", "standalone.augment=authors",
                              "standalone.gradcam_norm=minmax")
    assert train_standalone.run_train(cfg, stop_after=1) is None
    assert calls and set(calls) == {64}
    assert hooks[0].cfg.att_norm == "minmax"

    calls.clear(), hooks.clear()
    cfg = tiny_standalone_cfg(demo_root, tmp_path / "psa", "eader.enabled=true", "standalone.augment=psa",
                              "standalone.gradcam_norm=max")
    assert train_standalone.run_train(cfg, stop_after=1) is None
    assert calls == [] and hooks[0].cfg.att_norm == "max"


def test_hook_uses_min_max_normalised_attention_for_l_reg_when_asked():
    from psa_eader.hook import EADER, EaderConfig
    y = torch.zeros(1, 20)
    y[0, 4] = 1
    att = torch.zeros(1, 20, 2, 2)
    att[0, 4] = torch.tensor([[1.0, 2.0], [3.0, 5.0]])
    stats = {}
    for norm in ("minmax", "max"):
        eader = EADER(EaderConfig(enabled=True, alpha=0.0, beta=1.0, att_norm=norm), adversary=torch.nn.Linear(1, 1))
        stats[norm] = eader.localizer_loss(torch.zeros(1, 3, 8, 8), y, att, torch.tensor(0.0))[1]["l_reg"]
    assert stats["minmax"] == pytest.approx(1.75 / 4, abs=1e-4) and stats["max"] == pytest.approx(2.2 / 4, abs=1e-4)
    with pytest.raises(ValueError):
        EADER(EaderConfig(att_norm="other"))


def test_standalone_checkpoint_carries_the_stage_fingerprint(demo_root, tmp_path):
    """The standalone stage checkpoints through the stages' resumable_training: its checkpoint holds the
    stage's fingerprint, and a checkpoint saved under another one is discarded, not resumed."""
    from psa_baseline.training import save_checkpoint
    cfg = tiny_standalone_cfg(demo_root, tmp_path, "eader.enabled=true")
    assert train_standalone.run_train(cfg, stop_after=2) is None
    d = tmp_path / "eader" / "standalone_train"
    ck = torch.load(d / "checkpoint.pth", weights_only=True)
    fp = json.loads((d / "PARTIAL.json").read_text())["fingerprint"]
    assert ck["fingerprint"] == fp and ck["step"] == 2 and ck["eader"]["step"] == 2
    save_checkpoint(d / "checkpoint.pth", **{**{k: v for k, v in ck.items() if k != "rng"}, "fingerprint": "other"})
    assert train_standalone.run_train(cfg, stop_after=1) is None
    log = (tmp_path / "logs" / "eader.standalone_train.log").read_text()
    assert "saved under another config or inputs (fingerprint other" in log
    assert torch.load(d / "checkpoint.pth", weights_only=True)["step"] == 1  # started over at step 0
