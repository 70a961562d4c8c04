"""The CAM stage end to end on a tiny demo dataset, resume after a kill, and bad input via the CLI."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ROOT, tiny_cfg
from stages import eval_cam, make_cam, train_cam
from stages.cli import main as cli_main


def run_cam_stage(cfg):
    train_cam.run(cfg)
    make_cam.run(cfg)
    return eval_cam.run(cfg)


def test_tiny_cam_stage_end_to_end_and_skip_on_rerun(demo_root, tmp_path):
    cfg = tiny_cfg(demo_root, tmp_path / "work")
    res = run_cam_stage(cfg)
    results = json.loads((tmp_path / "work" / "results.json").read_text())
    cam = results["baseline"]["cam"]
    assert res["miou"] == pytest.approx(cam["miou"])  # the stage returns what results.json records
    for k in ("miou", "precision", "recall", "threshold", "per_class", "sweep", "part_recall", "trivial"):
        assert k in cam
    assert set(cam["per_class"]) >= {"background", "cat", "aeroplane"}
    assert 0 <= cam["miou"] <= 100 and cam["threshold"] == 0.2
    assert cam["sweep"].keys() == {"0.1", "0.2", "0.3"}
    assert (tmp_path / "work" / "report.md").read_text().count("| baseline |") >= 1
    cams = sorted((tmp_path / "work" / "baseline" / "make_cam" / "cams").glob("*.npy"))
    assert len(cams) == 24
    d = np.load(cams[0], allow_pickle=True).item()
    assert all(isinstance(k, int) and 0 <= k < 20 and v.dtype == np.float32 for k, v in d.items())
    # second run: every stage skipped (files untouched)
    mtime = (tmp_path / "work" / "baseline" / "train_cam" / "cam_net.pth").stat().st_mtime_ns
    run_cam_stage(cfg)
    assert (tmp_path / "work" / "baseline" / "train_cam" / "cam_net.pth").stat().st_mtime_ns == mtime
    # a changed config invalidates the stage and what follows it
    eval_done = tmp_path / "work" / "baseline" / "eval_cam" / "DONE.json"
    fp_before = json.loads(eval_done.read_text())["fingerprint"]
    cfg2 = tiny_cfg(demo_root, tmp_path / "work", **{"cam_infer.scales": [1.0]})
    make_cam.run(cfg2)
    eval_cam.run(cfg2)
    assert json.loads(eval_done.read_text())["fingerprint"] != fp_before
    assert (tmp_path / "work" / "baseline" / "train_cam" / "cam_net.pth").stat().st_mtime_ns == mtime
    # which images later stages infer does not retrain; which images train does
    fp = train_cam.depends(cfg)
    assert train_cam.depends(tiny_cfg(demo_root, tmp_path / "work", **{"data.infer_lists": ["x.txt"]})) == fp
    assert train_cam.depends(tiny_cfg(demo_root, tmp_path / "work", **{"data.train_list": "x.txt"})) != fp


def test_make_cam_loader_workers_write_the_same_cams_and_keep_the_stage_done(demo_root, tmp_path):
    """cam_infer.num_workers moves image reading and PIL resizing into loader processes (for GPUs): the CAMs
    must be bit-identical, and changing the key must not make the finished stage look stale."""
    cfg = tiny_cfg(demo_root, tmp_path / "work")
    train_cam.run(cfg)
    cam_dir = make_cam.run(cfg)
    ref = {p.name: np.load(p, allow_pickle=True).item() for p in sorted(cam_dir.glob("*.npy"))}
    done = cam_dir.parent / "DONE.json"
    record = done.read_text()
    two = tiny_cfg(demo_root, tmp_path / "work", **{"cam_infer.num_workers": 2})
    make_cam.run(two)
    assert done.read_text() == record  # not redone
    shutil.rmtree(cam_dir.parent)
    make_cam.run(two)
    got = {p.name: np.load(p, allow_pickle=True).item() for p in sorted(cam_dir.glob("*.npy"))}
    assert got.keys() == ref.keys() and len(got) == 24
    for name in ref:
        assert ref[name].keys() == got[name].keys()
        assert all(np.array_equal(ref[name][c], got[name][c]) for c in ref[name]), name
    with pytest.raises(Exception, match="cam_infer.num_workers"):
        tiny_cfg(demo_root, tmp_path / "work", **{"cam_infer.num_workers": -1})


def test_eval_cam_cli_scores_a_foreign_cam_folder(demo_root, tmp_path):
    # CAMs written by "another program": perfect maps from the ground truth
    cam_dir = tmp_path / "foreign"
    cam_dir.mkdir()
    ids = (demo_root / "ImageSets/Segmentation/val.txt").read_text().split()
    for i in ids:
        gt = np.array(Image.open(demo_root / "SegmentationClass" / f"{i}.png"))
        classes = [c for c in np.unique(gt) if 0 < c < 255]
        np.save(cam_dir / f"{i}.npy", {int(c - 1): (gt == c).astype(np.float32) for c in classes})
    out = tmp_path / "m.json"
    rc = cli_main(["eval-cam", "--config", "demo", "--cam-dir", str(cam_dir), "--voc-root", str(demo_root),
                   "--split", "val", "--threshold", "0.2", "--out", str(out)])
    assert rc == 0
    m = json.loads(out.read_text())
    assert m["miou"] == pytest.approx(100.0) and m["threshold"] == 0.2
    assert set(m) >= {"miou", "precision", "recall", "threshold", "per_class", "sweep"}


def _train_cmd(cfg_file, work):
    return [sys.executable, "-m", "stages.train_cam", "--config", str(cfg_file), "--work-dir", str(work)]


@pytest.mark.slow
def test_resume_after_kill_gives_the_same_weights(demo_root, tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(f"""base: demo
voc_root: {demo_root}
net: {{width: 0.125, blocks: [1, 1, 1, 1], weights: random}}
cam_train: {{batch_size: 4, epochs: 30, crop: 48, resize_long: [48, 64], checkpoint_every: 3}}
""")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    # uninterrupted reference
    subprocess.run(_train_cmd(cfg_file, tmp_path / "a"), check=True, cwd=ROOT, env=env, capture_output=True)
    # killed once a checkpoint past step 3 exists, then rerun
    proc = subprocess.Popen(_train_cmd(cfg_file, tmp_path / "b"), cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ck = tmp_path / "b" / "baseline" / "train_cam" / "checkpoint.pth"
    t0 = time.time()
    while time.time() - t0 < 600 and proc.poll() is None:
        if ck.exists() and torch.load(ck, weights_only=False)["step"] >= 6:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = tmp_path / "b" / "baseline" / "train_cam" / "DONE.json"
    assert not done.exists(), "run finished before the kill; make it longer"
    assert not (tmp_path / "b" / "baseline" / "train_cam" / "cam_net.pth").exists()
    killed_at = torch.load(ck, weights_only=False)["step"]
    assert 0 < killed_at < 120
    r = subprocess.run(_train_cmd(cfg_file, tmp_path / "b"), cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert f"resumed from {ck} at step {killed_at}/120" in r.stderr
    assert done.exists()
    a = torch.load(tmp_path / "a" / "baseline" / "train_cam" / "cam_net.pth", weights_only=True)
    b = torch.load(tmp_path / "b" / "baseline" / "train_cam" / "cam_net.pth", weights_only=True)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-6), k


# ---------------------------------------------------------------------------- bad input via the CLI

def _copy_root(demo_root, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(demo_root, root)
    return root


def _cli(root, work, *extra, stage="train-cam"):
    return cli_main([stage, "--config", "demo", "--voc-root", str(root), "--work-dir", str(work),
                     "net.width=0.125", "net.blocks=[1,1,1,1]", "cam_train.epochs=1", "cam_train.crop=48",
                     "cam_train.batch_size=4", "net.weights=random", "eader.adv_weights=random", *extra])


def _assert_refused(capsys, root, work, words, stage="train-cam", extra=()):
    rc = _cli(root, work, *extra, stage=stage)
    err = capsys.readouterr().err
    assert rc == 2, err
    for w in words:
        assert w in err, err
    # nothing that looks finished
    assert not list(Path(work).rglob("DONE.json"))
    assert not list(Path(work).rglob("*.pth"))


def test_missing_voc_folder(demo_root, tmp_path, capsys):
    _assert_refused(capsys, tmp_path / "nowhere", tmp_path / "w", ["nowhere"])


def test_id_without_image(demo_root, tmp_path, capsys):
    root = _copy_root(demo_root, tmp_path)
    victim = (root / "ImageSets/Segmentation/train.txt").read_text().split()[2]
    (root / "JPEGImages" / f"{victim}.jpg").unlink()
    _assert_refused(capsys, root, tmp_path / "w", [victim])


def test_corrupt_and_truncated_jpeg(demo_root, tmp_path, capsys):
    root = _copy_root(demo_root, tmp_path)
    ids = (root / "ImageSets/Segmentation/val.txt").read_text().split()
    p = root / "JPEGImages" / f"{ids[0]}.jpg"
    p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])
    # make-cam reads every image of the inference lists: needs a trained model first
    _cli(root, tmp_path / "w", "cam_train.epochs=1")
    capsys.readouterr()
    rc = _cli(root, tmp_path / "w", stage="make-cam")
    err = capsys.readouterr().err
    assert rc == 2 and ids[0] in err, err
    assert not (tmp_path / "w" / "baseline" / "make_cam" / "DONE.json").exists()
    q = root / "JPEGImages" / f"{ids[1]}.jpg"
    q.write_bytes(b"not a jpeg at all" * 20)
    (root / "JPEGImages" / f"{ids[0]}.jpg").write_bytes((demo_root / "JPEGImages" / f"{ids[0]}.jpg").read_bytes())
    rc = _cli(root, tmp_path / "w", stage="make-cam")
    err = capsys.readouterr().err
    assert rc == 2 and ids[1] in err, err


def test_bad_label_values_and_size(demo_root, tmp_path, capsys):
    root = _copy_root(demo_root, tmp_path)
    cams = tmp_path / "w" / "baseline" / "make_cam" / "cams"
    cams.mkdir(parents=True)
    ids = (root / "ImageSets/Segmentation/val.txt").read_text().split()
    labels = np.load(root / "cls_labels.npy", allow_pickle=True).item()
    for i in ids:
        h, w = np.array(Image.open(root / "SegmentationClass" / f"{i}.png")).shape
        np.save(cams / f"{i}.npy", {int(c): np.zeros((h, w), np.float32) for c in np.nonzero(labels[i])[0]})
    p = root / "SegmentationClass" / f"{ids[0]}.png"
    im = Image.open(p)
    a = np.array(im)
    a[0, 0] = 37
    out = Image.fromarray(a, mode="P")
    out.putpalette(im.getpalette())
    out.save(p)
    rc = cli_main(["eval-cam", "--config", "demo", "--voc-root", str(root), "--cam-dir",
                   str(tmp_path / "w" / "baseline" / "make_cam" / "cams"), "--split", "val"])
    err = capsys.readouterr().err
    assert rc == 2 and ids[0] in err and "37" in err, err
    Image.fromarray(a[:-3].clip(0, 20), mode="P").save(p)
    rc = cli_main(["eval-cam", "--config", "demo", "--voc-root", str(root), "--cam-dir",
                   str(tmp_path / "w" / "baseline" / "make_cam" / "cams"), "--split", "val"])
    err = capsys.readouterr().err
    assert rc == 2 and ids[0] in err, err


def test_id_missing_from_cls_labels(demo_root, tmp_path, capsys):
    root = _copy_root(demo_root, tmp_path)
    labels = np.load(root / "cls_labels.npy", allow_pickle=True).item()
    victim = sorted(labels)[1]
    del labels[victim]
    np.save(root / "cls_labels.npy", labels)
    _assert_refused(capsys, root, tmp_path / "w", [victim, "cls_labels.npy"])


def test_unknown_config_key_and_wrong_type(demo_root, tmp_path, capsys):
    _assert_refused(capsys, demo_root, tmp_path / "w", ["cam_train.epoks"], extra=("cam_train.epoks=2",))
    _assert_refused(capsys, demo_root, tmp_path / "w", ["cam_train.lr"], extra=("cam_train.lr=fast",))


def test_make_cam_before_train_says_what_to_run(demo_root, tmp_path, capsys):
    _assert_refused(capsys, demo_root, tmp_path / "w", ["train-cam"], stage="make-cam")


def test_eader_variant_end_to_end_and_both_variants_in_results(demo_root, tmp_path):
    over = {"eader.enabled": True, "eader.phase_steps": 2, "eader.adv_width": 0.25}
    cfg = tiny_cfg(demo_root, tmp_path / "work", **over)
    train_cam.run(cfg, stop_after=3)  # mid adversary turn
    ck = torch.load(tmp_path / "work" / "eader" / "train_cam" / "checkpoint.pth", weights_only=False)
    assert ck["step"] == 3 and ck["eader"] is not None
    run_cam_stage(cfg)
    run_cam_stage(tiny_cfg(demo_root, tmp_path / "work"))
    results = json.loads((tmp_path / "work" / "results.json").read_text())
    assert {"baseline", "eader"} <= set(results)
    log = (tmp_path / "work" / "logs" / "eader.train_cam.log").read_text()
    assert "resumed from" in log and "adv_acc" in log and "l_am" in log


def test_adversary_pretraining_resumes_and_starts_train_cams_adversary(demo_root, tmp_path):
    from psa_baseline.errors import InputError
    from stages import train_adv
    over = {"eader.enabled": True, "eader.phase_steps": 2, "eader.adv_width": 0.25, "adv_pretrain.epochs": 2,
            "adv_pretrain.batch_size": 4}
    cfg = tiny_cfg(demo_root, tmp_path / "work", **over)
    with pytest.raises(InputError, match="train-adv"):  # train-cam first says what to run
        train_cam.run(cfg)
    assert train_adv.run(cfg, stop_after=1) is None
    path = train_adv.run(cfg)
    log = (tmp_path / "work" / "logs" / "eader.train_adv.log").read_text()
    assert "resumed from" in log and "step 8/8" in log
    sd = torch.load(path, weights_only=True)
    adv = train_cam.build_eader(cfg, torch.device("cpu"), path).adversary.state_dict()
    assert sd.keys() == adv.keys() and all(torch.equal(sd[k], adv[k]) for k in sd)  # head included
    fresh = train_cam.build_eader(cfg, torch.device("cpu")).adversary.state_dict()
    assert not torch.equal(fresh["fc.weight"], adv["fc.weight"])
    train_cam.run(cfg, stop_after=1)
    ck = torch.load(tmp_path / "work" / "eader" / "train_cam" / "checkpoint.pth", weights_only=False)
    assert ck["step"] == 1 and torch.equal(ck["eader"]["adversary"]["layer1.0.conv1.weight"],
                                           sd["layer1.0.conv1.weight"])  # localizer turn: not moved
    # the stage is off for the baseline and with epochs 0; train-cam's fingerprint follows train-adv's
    assert train_adv.run(tiny_cfg(demo_root, tmp_path / "work", **{"adv_pretrain.epochs": 2})) is None
    assert train_adv.run(tiny_cfg(demo_root, tmp_path / "work", **{**over, "adv_pretrain.epochs": 0})) is None
    fp = train_cam.depends(cfg)
    train_adv.run(tiny_cfg(demo_root, tmp_path / "work", **{**over, "adv_pretrain.lr": 0.01}))
    assert train_cam.depends(cfg) != fp


def test_eader_with_zero_weights_is_the_baseline_step():
    from conftest import tiny_spec
    from psa_baseline.cam_net import CAMNet
    from psa_baseline.training import PolyOptimizer
    from psa_eader.hook import EADER, EaderConfig
    torch.manual_seed(0)
    x, y = torch.randn(2, 3, 48, 48), torch.tensor([[1.0] + [0] * 19, [0, 1.0] + [0] * 18])
    nets = []
    for eader in (None, EADER(EaderConfig(enabled=True, alpha=0.0, beta=0.0, adv_width=0.25, adv_weights="random"))):
        torch.manual_seed(1)
        net = CAMNet(tiny_spec()).train()
        opt = PolyOptimizer(net.param_groups(), 0.1, 5e-4, 10)
        torch.manual_seed(2)  # same dropout masks
        train_cam.train_step(net, opt, eader, x, y, __import__("contextlib").nullcontext)
        nets.append(net.state_dict())
    for k in nets[0]:
        assert torch.equal(nets[0][k], nets[1][k]), k


@pytest.mark.parametrize("bf16", [False, True])
def test_train_cam_layout_follows_what_the_cpu_runs_safely(demo_root, tmp_path, monkeypatch, bf16):
    """train-cam picks the layout by hardware.memory_format: on a CPU NHWC only under bf16 autocast, float32
    NCHW (the CPU's float32 NHWC conv backward is broken on narrow layers); net and input agree."""
    seen = []
    step = train_cam.train_step

    def spy(model, opt, eader, x, y, amp):
        conv = model.backbone.conv1a.weight
        seen.append((x.is_contiguous(memory_format=torch.channels_last),
                     conv.is_contiguous(memory_format=torch.channels_last)))
        return step(model, opt, eader, x, y, amp)

    monkeypatch.setattr(train_cam, "train_step", spy)
    train_cam.run(tiny_cfg(demo_root, tmp_path / "work", **{"cam_train.bf16": bf16, "cam_train.epochs": 1}))
    assert seen and all(s == (bf16, bf16) for s in seen), seen
    log = (tmp_path / "work" / "logs" / "baseline.train_cam.log").read_text()
    assert f"precision {'bf16 autocast' if bf16 else 'float32'}, layout {'NHWC' if bf16 else 'NCHW'}" in log


def test_train_cam_nhwc_weights_match_nchw():
    """With frozen BN (the paper's and the demo's) NHWC training under bf16 autocast (the CPU's NHWC case)
    gives NCHW's weights to bf16 rounding, so a layout slip that scrambled channels would show here."""
    from conftest import tiny_spec
    from psa_baseline.cam_net import CAMNet
    from psa_baseline.training import PolyOptimizer, autocast
    step = train_cam.train_step
    torch.manual_seed(0)
    x, y = torch.randn(4, 3, 56, 48), torch.zeros(4, 20)
    y[[0, 1, 2, 3], [0, 5, 5, 11]] = 1
    weights = []
    torch.manual_seed(1)
    start = CAMNet(tiny_spec(frozen_bn=True)).state_dict()
    for layout in (torch.contiguous_format, torch.channels_last):
        torch.manual_seed(1)
        net = CAMNet(tiny_spec(frozen_bn=True)).train().to(memory_format=layout)
        opt = PolyOptimizer(net.param_groups(), 0.1, 5e-4, 10)
        torch.manual_seed(2)  # same dropout masks
        for _ in range(3):
            step(net, opt, None, x.contiguous(memory_format=layout), y, autocast(torch.device("cpu"), True))
        weights.append(net.state_dict())
    moved = 0
    for k, a in weights[0].items():
        b = weights[1][k]
        # the two runs' steps agree to a few percent of the step itself (bf16 rounding of the gradients)
        assert (a - b).abs().max() <= 0.05 * (a - start[k]).abs().max(), (k, (a - b).abs().max())
    for k in weights[0]:  # and training did move the weights, so the comparison compares something
        moved += int(not torch.equal(weights[0][k], start[k]))
    assert moved > 10
