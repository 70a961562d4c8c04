"""Paired statistics (t-interval, bootstrap over images) and `psa-eader compare` on fake and tiny real runs."""
import json
import math

import numpy as np
import pytest

from psa_baseline.evaluation import save_per_image, scores
from psa_baseline.stats import (bootstrap_paired, confusion_metrics, mean_std, per_image_features, t_interval,
                                verdict)
from stages.cli import main as cli_main
from stages.compare import side_label

# ---------------------------------------------------------------------------------- statistics


def test_t_interval_by_hand():
    low, high = t_interval([1, 2, 3, 4, 5])
    half = 2.7764 * math.sqrt(2.5) / math.sqrt(5)  # t(0.975, 4) * sd / sqrt(n)
    assert low == pytest.approx(3 - half, abs=1e-4) and high == pytest.approx(3 + half, abs=1e-4)
    assert t_interval([1, None, 2, 3, 4, 5, float("nan")]) == (low, high)  # missing pairs left out
    assert t_interval([2.0]) == (None, None)
    assert mean_std([1, 2, 3, 4, 5]) == (3.0, pytest.approx(math.sqrt(2.5)))


def test_verdict_in_words():
    assert verdict((-0.5, 1.0), (0.2, 0.8), "eader") == "no difference shown"
    assert verdict((0.1, 1.0), (0.2, 0.8), "eader") == "eader higher"
    assert verdict((-2.0, -0.1), (None, None), "eader") == "eader lower"
    assert verdict((0.1, 1.0), (-0.1, 0.8), "eader") == "no difference shown"  # the images do not show it
    assert verdict((None, None), (None, None)).startswith("no interval")


def test_confusion_metrics_equal_scores():
    rng = np.random.default_rng(1)
    confs = rng.integers(0, 5, (6, 21, 21)) * (rng.random((6, 21, 21)) < 0.1)
    confs[0] = 0
    confs[0, 0, 0], confs[0, 3, 3] = 7, 2     # two classes only
    confs[1, :, 5] = confs[1, 5, :] = 0       # class 5 absent
    got = confusion_metrics(confs)
    for k, c in enumerate(confs):
        want = scores(c)
        for m in ("miou", "precision", "recall"):
            assert got[m][k] == pytest.approx(want[m]), (k, m)


def _conf(tp_bg, tp, fn, fp, c=1, n=3):
    """A 3-class confusion: background right tp_bg, class c right tp, missed fn (as bg), fp bg pixels as c."""
    m = np.zeros((n, n), np.int64)
    m[0, 0], m[c, c], m[c, 0], m[0, c] = tp_bg, tp, fn, fp
    return m


def _features(confs, hits=None, totals=None):
    x = {"confusion": np.stack(confs)}
    if hits is not None:
        x["part_hits"], x["part_totals"] = np.array(hits), np.array(totals)
    return per_image_features(x)


def test_bootstrap_on_a_tiny_hand_made_set():
    a = [_features([_conf(90, 5, 5, 0), _conf(80, 8, 2, 2, c=2), _conf(95, 3, 7, 1), _conf(70, 10, 0, 5, c=2)],
                   [[1, 2]] * 4, [[2, 4]] * 4)]
    b = [_features([_conf(90, 8, 2, 0), _conf(80, 9, 1, 2, c=2), _conf(95, 6, 4, 1), _conf(70, 10, 0, 5, c=2)],
                   [[2, 2]] * 4, [[2, 4]] * 4)]
    res = bootstrap_paired(a, b, n_classes=3, n_boot=1000)
    assert res == bootstrap_paired(a, b, n_classes=3, n_boot=1000)  # fixed rng seed: deterministic
    full_a, full_b = scores(a[0][:, :9].sum(0).reshape(3, 3)), scores(b[0][:, :9].sum(0).reshape(3, 3))
    assert res["recall"]["estimate"] == pytest.approx(full_b["recall"] - full_a["recall"])
    for m in ("miou", "precision", "recall", "strong_recall"):
        r = res[m]
        assert r["low"] <= r["estimate"] <= r["high"], m
    assert res["recall"]["low"] > 0               # B finds more of the objects in every image but one
    # strong part: 1/2 -> 2/2 in every image, so every resample gives exactly +50; weak unchanged
    assert res["strong_recall"] == {"estimate": 50.0, "low": 50.0, "high": 50.0}
    assert res["weak_recall"] == {"estimate": 0.0, "low": 0.0, "high": 0.0}
    same = bootstrap_paired(a, a, n_classes=3, n_boot=1000)
    assert all(v == {"estimate": 0.0, "low": 0.0, "high": 0.0} for v in same.values())
    # two seeds: the differences are averaged over the seeds in every resample
    two = bootstrap_paired(a + a, b + a, n_classes=3, n_boot=1000)
    assert two["strong_recall"]["estimate"] == 25.0 and two["strong_recall"]["low"] == 25.0


# ---------------------------------------------------------------------------------- compare, fake runs

IDS = [f"img{k}" for k in range(8)]


def _fake_run(run_dir, variant, seed, quality):
    """A finished run: per-image confusions (class k % 3 + 1 found with `quality`), results.json from them."""
    rng = np.random.default_rng(100 * seed + int(quality * 10))
    confs = {}
    for k, i in enumerate(IDS):
        c = k % 3 + 1
        tp = int(rng.binomial(40, quality))
        m = np.zeros((21, 21), np.int64)
        m[0, 0], m[c, c], m[c, 0], m[0, c] = 200, tp, 40 - tp, int(rng.integers(0, 6))
        confs[i] = m
    parts = {i: (np.array([8, 5]), np.array([10, 20])) for i in IDS}  # the same for both variants
    save_per_image(run_dir / variant / "eval_cam" / "per_image.npz", confs, parts)
    cam = scores(sum(confs.values()))
    cam["part_recall"] = {"strong": 80.0, "weak": 25.0}
    (run_dir / "results.json").write_text(json.dumps({variant: {"cam": cam}}))
    return cam


def test_compare_collect_only_over_fake_finished_runs(tmp_path, capsys):
    work = tmp_path / "work"
    base, eader = {}, {}
    for s in (0, 1, 2):
        base[s] = _fake_run(work / "runs" / "baseline" / f"seed{s}", "baseline", s, 0.5)
        eader[s] = _fake_run(work / "runs" / "eader" / f"seed{s}", "eader", s, 0.8)
    _fake_run(work / "runs" / "baseline" / "seed3", "baseline", 3, 0.5)  # its pair never finished
    rc = cli_main(["compare", "--config", "demo", "--work-dir", str(work), "--seeds", "0", "1", "2", "3",
                   "--collect-only", "--resamples", "500"])
    assert rc == 0
    out = capsys.readouterr().out
    c = json.loads((work / "compare" / "baseline_vs_eader.json").read_text())
    assert (work / "compare" / "baseline_vs_eader.md").read_text() in out
    assert c["pairs"] == ["s0", "s1", "s2"] and any("not finished" in n and "eader seed 3" in n for n in c["notes"])
    rows = {r["metric"]: r for r in c["metrics"]}
    assert set(rows) == {"miou", "precision", "recall", "strong_recall", "weak_recall"}  # CAM rows only
    diffs = [eader[s]["recall"] - base[s]["recall"] for s in (0, 1, 2)]
    rec = rows["recall"]
    assert rec["diff"]["values"] == pytest.approx(diffs)
    assert rec["diff"]["mean"] == pytest.approx(np.mean(diffs))
    assert rec["a"]["sd"] == pytest.approx(np.std([base[s]["recall"] for s in (0, 1, 2)], ddof=1))
    assert rec["diff"]["t_interval"] == pytest.approx(list(t_interval(diffs)))
    assert rec["diff"]["bootstrap_estimate"] == pytest.approx(rec["diff"]["mean"])  # same counts, same number
    low, high = rec["diff"]["bootstrap_interval"]
    assert 0 < low < rec["diff"]["mean"] < high
    assert rec["verdict"] == "eader higher"
    assert rows["weak_recall"]["diff"]["t_interval"] == [0.0, 0.0]
    assert rows["weak_recall"]["verdict"] == "no difference shown"
    md_line = next(line for line in out.splitlines() if line.startswith("| CAM recall weak part"))
    assert "no difference shown" in md_line and "s0 +0.00" in md_line
    assert "mIoU over the 4 classes present" in out  # background + 3 classes of 21
    # the same runs named as work dirs, paired in order
    rc = cli_main(["compare", "--work-dir", str(work), "--a-dirs", *[str(work / "runs" / "baseline" / f"seed{s}")
                   for s in (0, 1, 2)], "--b-dirs", *[str(work / "runs" / "eader" / f"seed{s}") for s in (0, 1, 2)],
                   "--resamples", "500", "--a-name", "A", "--b-name", "B"])
    assert rc == 0
    c2 = json.loads((work / "compare" / "A_vs_B.json").read_text())
    assert c2["pairs"] == ["#1", "#2", "#3"]
    assert [r["diff"] for r in c2["metrics"]] == [r["diff"] for r in c["metrics"]]


def test_a_stage_warning_reaches_the_comparison_and_the_report(tmp_path, capsys):
    from stages.report import refresh_report
    work = tmp_path / "work"
    for s in (0, 1):
        _fake_run(work / "runs" / "baseline" / f"seed{s}", "baseline", s, 0.5)
        _fake_run(work / "runs" / "eader" / f"seed{s}", "eader", s, 0.8)
    msg = "AffinityNet collapsed: every affinity at the floor"
    done = work / "runs" / "eader" / "seed1" / "eader" / "train_aff" / "DONE.json"
    done.parent.mkdir(parents=True)
    done.write_text(json.dumps({"stage": "train_aff", "warnings": [msg]}))
    healthy = work / "runs" / "baseline" / "seed1" / "baseline" / "train_aff" / "DONE.json"
    healthy.parent.mkdir(parents=True)
    healthy.write_text(json.dumps({"stage": "train_aff"}))
    damaged = work / "runs" / "baseline" / "seed0" / "baseline" / "make_crf" / "DONE.json"
    damaged.parent.mkdir(parents=True)
    damaged.write_text("{half a rec")  # the stage's own check reports it; the tables must still be written
    set_aside = work / "runs" / "baseline" / "seed1" / "baseline" / "train_aff.replaced" / "DONE.json"
    set_aside.parent.mkdir(parents=True)  # an earlier config's collapsed run, set aside while a rerun replaces it
    set_aside.write_text(json.dumps({"stage": "train_aff", "warnings": ["an earlier run's collapse"]}))
    rc = cli_main(["compare", "--config", "demo", "--work-dir", str(work), "--seeds", "0", "1", "--collect-only",
                   "--resamples", "200"])
    assert rc == 0
    notes = json.loads((work / "compare" / "baseline_vs_eader.json").read_text())["notes"]
    assert [n for n in notes if "train_aff" in n or "make_crf" in n or "earlier" in n] == [
        f"eader seed 1, train_aff: {msg}"]
    assert f"- eader seed 1, train_aff: {msg}" in (work / "compare" / "baseline_vs_eader.md").read_text()
    refresh_report(work / "runs" / "eader" / "seed1")
    md = (work / "runs" / "eader" / "seed1" / "report.md").read_text()
    assert "## Warnings from the stages" in md and f"- **eader**, train_aff: {msg}" in md
    for clean in (work / "runs" / "eader" / "seed0", work / "runs" / "baseline" / "seed0"):
        refresh_report(clean)
        assert "Warnings from the stages" not in (clean / "report.md").read_text()


def test_a_comparison_of_other_runs_is_kept_not_overwritten(tmp_path, capsys):
    """compare over seeds 3-4 in a work dir that holds the table of seeds 0-2 (the same side names) keeps that
    table as baseline_vs_eader.earlier-1; comparing the same runs again just rewrites their own files."""
    work = tmp_path / "work"
    for s in range(4):
        _fake_run(work / "runs" / "baseline" / f"seed{s}", "baseline", s, 0.5)
        _fake_run(work / "runs" / "eader" / f"seed{s}", "eader", s, 0.8)
    out = work / "compare"

    def compare(*seeds):
        assert cli_main(["compare", "--config", "demo", "--work-dir", str(work), "--seeds", *seeds,
                         "--collect-only", "--resamples", "200"]) == 0
        return capsys.readouterr().out
    compare("0", "1", "2")
    first = (out / "baseline_vs_eader.md").read_text()
    assert "kept as" not in compare("0", "1", "2") and not list(out.glob("*earlier*"))  # same runs: rewritten
    said = compare("2", "3")
    assert f"kept as {out / 'baseline_vs_eader.earlier-1.md'}" in said
    assert (out / "baseline_vs_eader.earlier-1.md").read_text() == first
    assert json.loads((out / "baseline_vs_eader.earlier-1.json").read_text())["pairs"] == ["s0", "s1", "s2"]
    assert json.loads((out / "baseline_vs_eader.json").read_text())["pairs"] == ["s2", "s3"]
    compare("0", "3")
    assert (out / "baseline_vs_eader.earlier-2.json").is_file()


def test_compare_refuses_unpaired_dirs(tmp_path, capsys):
    _fake_run(tmp_path / "a", "baseline", 0, 0.5)
    assert cli_main(["compare", "--work-dir", str(tmp_path), "--a-dirs", str(tmp_path / "a"),
                     "--b-dirs", str(tmp_path / "a"), str(tmp_path / "a")]) == 2
    assert "pair runs in order" in capsys.readouterr().err
    assert cli_main(["compare", "--work-dir", str(tmp_path), "--a-dirs", str(tmp_path / "nowhere"),
                     "--b-dirs", str(tmp_path / "a")]) == 2
    assert "results.json" in capsys.readouterr().err


def test_side_labels_come_from_overrides():
    assert side_label(False, []) == "baseline"
    assert side_label(True, ["eader.psi=0.3", "cam_train.epochs=2"]) == "eader+cam_train.epochs=2+eader.psi=0.3"
    assert side_label(True, ["eader.enabled=true"]) == "eader"
    long = side_label(False, ["data.infer_lists=[ImageSets/Segmentation/val.txt]"] * 3)
    assert len(long) <= 80 and "/" not in long


# ---------------------------------------------------------------------------------- compare, real tiny runs

# conftest.tiny_cfg's overrides as key=value text, random init, CAMs for val only
TINY = ["net.width=0.125", "net.blocks=[1,1,1,1]", "cam_train.batch_size=4", "cam_train.epochs=2",
        "cam_train.crop=64", "cam_train.resize_long=[56,80]", "cam_train.checkpoint_every=2",
        "cam_infer.scales=[1.0]", "cam_eval.sweep=[0.1,0.3,0.1]", "adv_pretrain.epochs=0",
        "net.weights=random", "data.infer_lists=[ImageSets/Segmentation/val.txt]"]


def test_compare_runs_two_seeds_of_a_tiny_config(demo_root, tmp_path, capsys):
    work = tmp_path / "work"
    argv = ["compare", "--config", "demo", "--voc-root", str(demo_root), "--work-dir", str(work),
            *TINY, "--seeds", "0", "1", "--until", "cam", "--resamples", "200",
            "--b-set", "eader.phase_steps=2", "eader.adv_width=0.25", "eader.adv_weights=random"]
    assert cli_main(argv) == 0, capsys.readouterr().err
    label_a = side_label(False, TINY)
    nets = sorted(work.glob("runs/*/seed*/*/train_cam/cam_net.pth"))
    assert len(nets) == 4 and {p.parts[-4] for p in nets} == {"seed0", "seed1"}
    seed1 = work / "runs" / label_a / "seed1"
    assert (seed1 / "baseline" / "eval_cam" / "per_image.npz").is_file()
    # eval-cam's own part-recall loop gives the demo module's numbers
    from demo.data import part_recall_from_cams, read_ids
    want = part_recall_from_cams(seed1 / "baseline" / "make_cam" / "cams", demo_root, read_ids(demo_root, "val"))
    got = json.loads((seed1 / "results.json").read_text())["baseline"]["cam"]["part_recall"]
    assert got == {"strong": want["strong"], "weak": want["weak"]}
    names = sorted((work / "compare").glob("*.json"))
    assert [n.name for n in names] == ["baseline_vs_eader+eader.adv_weights=random+eader.adv_width=0.25+"
                                       "eader.phase_steps=2.json"]  # named by the sides' own overrides
    c = json.loads(names[0].read_text())
    assert c["pairs"] == ["s0", "s1"]
    rows = {r["metric"]: r for r in c["metrics"]}
    assert {"miou", "precision", "recall", "strong_recall", "weak_recall"} <= set(rows)
    for r in rows.values():
        assert r["diff"]["n_pairs"] == 2 and r["diff"]["t_interval"][0] is not None
        assert r["diff"]["bootstrap_estimate"] == pytest.approx(r["diff"]["mean"], abs=0.02)  # parts: rounded
        assert r["diff"]["bootstrap_interval"][0] <= r["diff"]["bootstrap_interval"][1]
    # a second comparison sharing the baseline reuses its runs (nothing retrained)
    mtimes = {p: p.stat().st_mtime_ns for p in nets}
    assert cli_main(argv[:-4] + ["--b-set", "eader.enabled=false", "--b-name", "again"]) == 0
    assert {p: p.stat().st_mtime_ns for p in nets} == mtimes
    again = json.loads((work / "compare" / "baseline_vs_again.json").read_text())
    assert all(r["diff"]["values"] == [0.0, 0.0] and r["verdict"] == "no difference shown"
               for r in again["metrics"])


def test_eval_cam_out_writes_per_image_counts_beside_it(demo_root, tmp_path):
    from PIL import Image
    from psa_baseline.evaluation import load_per_image
    cam_dir = tmp_path / "cams"
    cam_dir.mkdir()
    ids = (demo_root / "ImageSets/Segmentation/val.txt").read_text().split()
    for i in ids:  # perfect CAMs: every object pixel found
        gt = np.array(Image.open(demo_root / "SegmentationClass" / f"{i}.png"))
        np.save(cam_dir / f"{i}.npy", {int(c - 1): (gt == c).astype(np.float32) for c in np.unique(gt) if 0 < c < 255})
    out = tmp_path / "m.json"
    assert cli_main(["eval-cam", "--config", "demo", "--cam-dir", str(cam_dir), "--voc-root", str(demo_root),
                     "--split", "val", "--out", str(out)]) == 0
    per = load_per_image(tmp_path / "m.per_image.npz")
    assert per["ids"] == ids and per["confusion"].shape == (len(ids), 21, 21)
    assert scores(per["confusion"].sum(0))["miou"] == pytest.approx(json.loads(out.read_text())["miou"])
    np.testing.assert_array_equal(per["part_hits"], per["part_totals"])
    assert per["part_totals"].sum() > 0


def test_eval_seg_out_writes_per_image_counts_beside_it(demo_root, tmp_path):
    from PIL import Image
    from psa_baseline.evaluation import load_per_image
    from psa_baseline.voc import save_label_png
    ids = (demo_root / "ImageSets/Segmentation/val.txt").read_text().split()
    for i in ids:  # everything background: no object pixel found
        gt = np.array(Image.open(demo_root / "SegmentationClass" / f"{i}.png"))
        save_label_png(tmp_path / "pred" / f"{i}.png", np.zeros_like(gt))
    out = tmp_path / "s.json"
    assert cli_main(["eval-seg", "--config", "demo", "--pred-dir", str(tmp_path / "pred"), "--voc-root",
                     str(demo_root), "--split", "val", "--out", str(out)]) == 0
    per = load_per_image(tmp_path / "s.per_image.npz")
    assert per["ids"] == ids and per["confusion"][:, :, 1:].sum() == 0
    assert per["part_hits"].sum() == 0 and per["part_totals"].sum() > 0
    assert json.loads(out.read_text())["recall"] == 0.0


def test_a_metric_only_one_variant_has_says_so(tmp_path, capsys):
    """A stage that only side A's runs reached (here pseudo labels) gets a row that names the side without
    it, not an 'interval' verdict."""
    work = tmp_path / "work"
    for s in (0, 1):
        _fake_run(work / "a" / f"seed{s}", "baseline", s, 0.5)
        _fake_run(work / "b" / f"seed{s}", "eader", s, 0.8)
        res = work / "a" / f"seed{s}" / "results.json"
        r = json.loads(res.read_text())
        r["baseline"]["pseudo"] = {"miou": 20.0 + s, "precision": 30.0, "recall": 40.0}
        res.write_text(json.dumps(r))
    assert cli_main(["compare", "--work-dir", str(work), "--a-dirs", *[str(work / "a" / f"seed{s}") for s in (0, 1)],
                     "--b-dirs", *[str(work / "b" / f"seed{s}") for s in (0, 1)], "--resamples", "200",
                     "--a-name", "A", "--b-name", "B"]) == 0
    rows = {(r["stage"], r["metric"]): r for r in json.loads((work / "compare" / "A_vs_B.json").read_text())["metrics"]}
    assert rows[("pseudo", "miou")]["verdict"] == "not in both variants' runs (no pseudo-label mIoU for B)"
    assert rows[("cam", "miou")]["verdict"] in ("B higher", "no difference shown")
