"""Faults that must stop a run cleanly: hostile checkpoints, variant names that escape the work dir,
non-finite or out-of-range numbers, diverging training, and config changes that would cost finished results."""
import json
import math
import re

import numpy as np
import pytest
import torch

from conftest import tiny_cfg
from psa_baseline.errors import InputError
from stages import make_cam, train_cam
from stages.cli import main as cli_main

TINY_CLI = ["net.width=0.125", "net.blocks=[1,1,1,1]", "cam_train.batch_size=4", "cam_train.epochs=1",
            "cam_train.crop=48", "cam_train.resize_long=[48,64]", "net.weights=random", "cam_infer.scales=[1.0]"]


def hostile_object(marker):
    class Boom:
        def __reduce__(self):
            return (exec, (f"open({str(marker)!r}, 'w').write('ran')",))
    return Boom()


def test_a_hostile_checkpoint_is_refused_not_run(demo_root, tmp_path, capsys):
    """The audit's case: a pickled payload as the checkpoint's fingerprint, and a PARTIAL.json with the
    config's (public) fingerprint, so that resume reads the file. The payload must not run; exit 2 names it."""
    from stages.cli import config_from_args, parse_args
    from stages.stage import Stage
    work, marker = tmp_path / "w", tmp_path / "payload-ran"
    argv = ["train-cam", "--config", "demo", "--voc-root", str(demo_root), "--work-dir", str(work)]
    over = TINY_CLI + ["cam_train.checkpoint_every=2"]
    cfg = config_from_args(parse_args(argv + over))
    st = Stage(cfg, train_cam.NAME, train_cam.depends(cfg))  # the fingerprint the audit read off a log
    st.dir.mkdir(parents=True)
    (st.dir / "PARTIAL.json").write_text(json.dumps({"stage": "train_cam", "fingerprint": st.fp}))
    torch.save({"fingerprint": hostile_object(marker), "step": 1, "model": {}, "optimizer": {}},
               st.dir / "checkpoint.pth")
    assert cli_main(argv + over) == 2
    err = capsys.readouterr().err
    assert not marker.exists(), "the checkpoint's payload ran"
    assert str(st.dir / "checkpoint.pth") in err and "not loaded" in err, err
    assert not (st.dir / "DONE.json").exists()


def test_checkpoints_hold_only_restricted_types(tmp_path):
    """What save_checkpoint writes loads with weights_only=True and restores every RNG exactly."""
    import random
    from psa_baseline.training import load_checkpoint, resume, save_checkpoint
    net = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net(torch.ones(1, 2)).sum().backward()
    opt.step()
    np.random.seed(3), random.seed(4), torch.manual_seed(5)
    np.random.standard_normal()  # a cached gaussian in numpy's state
    path = tmp_path / "checkpoint.pth"
    save_checkpoint(path, model=net.state_dict(), optimizer=opt.state_dict(), step=7, fingerprint="abc")
    want = (np.random.standard_normal(3), random.random(), torch.rand(2))
    torch.load(path, weights_only=True)  # raises on anything outside the restricted set
    np.random.seed(0), random.seed(0), torch.manual_seed(0)
    assert resume(path, torch.nn.Linear(2, 2), torch.optim.SGD(net.parameters(), lr=0.1), fingerprint="abc")[0] == 7
    got = (np.random.standard_normal(3), random.random(), torch.rand(2))
    assert np.array_equal(want[0], got[0]) and want[1] == got[1] and torch.equal(want[2], got[2])
    (tmp_path / "torn.pth").write_bytes(path.read_bytes()[:100])
    with pytest.raises(InputError, match="torn.pth cannot be read"):
        load_checkpoint(tmp_path / "torn.pth")


@pytest.mark.parametrize("variant", ["../../X", "/tmp/abs-variant", "..", ".hidden", "a/b"])
def test_a_variant_that_is_not_a_plain_name_is_refused(demo_root, tmp_path, capsys, variant):
    work = tmp_path / "w"
    outside = tmp_path / "X" / "train_cam"
    outside.mkdir(parents=True)
    (outside / "keep.txt").write_text("mine")
    (outside / "DONE.json").write_text(json.dumps({"fingerprint": "foreign"}))
    rc = cli_main(["train-cam", "--config", "demo", "--voc-root", str(demo_root), "--work-dir", str(work),
                   f"variant={variant}"] + TINY_CLI)
    assert rc == 2 and "not a plain folder name" in capsys.readouterr().err
    assert (outside / "keep.txt").read_text() == "mine" and not work.exists()


@pytest.mark.parametrize("override, message", [
    ("cam_train.lr=.nan", "not a finite number"), ("cam_train.lr=-0.1", "must be positive"),
    ("cam_train.lr=.inf", "not a finite number"), ("eader.adv_momentum=1.0", r"in \[0, 1\)"),
    ("seg_train.weight_decay=-0.0001", "zero or positive"), ("cam_infer.scales=[1.0,.nan]", "not a finite number"),
])
def test_non_finite_or_out_of_range_numbers_stop_before_anything_is_touched(demo_root, tmp_path, capsys,
                                                                             override, message):
    work = tmp_path / "w"
    rc = cli_main(["train-cam", "--config", "demo", "--voc-root", str(demo_root), "--work-dir", str(work)]
                  + TINY_CLI + [override])
    assert rc == 2 and re.search(message, capsys.readouterr().err) and not work.exists()


def test_a_diverging_training_stops_naming_the_step_and_keeps_its_last_checkpoint(demo_root, tmp_path, monkeypatch):
    step = train_cam.train_step
    calls = []

    def diverging(*a):
        calls.append(1)
        stats = step(*a)
        return {**stats, "loss": math.nan} if len(calls) == 3 else stats

    monkeypatch.setattr(train_cam, "train_step", diverging)
    cfg = tiny_cfg(demo_root, tmp_path / "w")  # checkpoint every 2 steps
    with pytest.raises(InputError, match=r"loss nan at step 3/\d+: training diverged.*Lower the lr"):
        train_cam.run(cfg)
    d = tmp_path / "w" / "baseline" / "train_cam"
    assert torch.load(d / "checkpoint.pth", weights_only=True)["step"] == 2 and not (d / "DONE.json").exists()


def _finished_make_cam(demo_root, work):
    cfg = tiny_cfg(demo_root, work, **{"cam_train.epochs": 1})
    train_cam.run(cfg)
    make_cam.run(cfg)
    return cfg, work / "baseline" / "make_cam"


def test_a_config_change_never_costs_finished_results_when_the_run_then_fails(demo_root, tmp_path, monkeypatch):
    """The first-hour report's case: make-cam under a changed config on a copy of a finished run, and a device
    that is not there: nothing may be deleted. A later failure (after the old results were set aside) keeps
    them too, and the old config gets them back."""
    work = tmp_path / "w"
    cfg, d = _finished_make_cam(demo_root, work)
    before = sorted(p.name for p in (d / "cams").iterdir())
    assert before
    changed = {**cfg, "cam_infer": {**cfg["cam_infer"], "flip": False}}
    with pytest.raises(InputError, match="CUDA is not available"):
        make_cam.run({**changed, "device": "cuda"} if not torch.cuda.is_available() else {**changed, "device": "cuda:99"})
    assert sorted(p.name for p in (d / "cams").iterdir()) == before and (d / "DONE.json").exists()

    def broken(*a, **k):  # a failure after the old results were set aside
        raise InputError("the CAM net went away")
    monkeypatch.setattr(make_cam, "load_cam_net", broken)
    with pytest.raises(InputError, match="went away"):
        make_cam.run(changed)
    aside = d.with_name("make_cam.replaced")
    assert sorted(p.name for p in (aside / "cams").iterdir()) == before
    monkeypatch.undo()
    assert make_cam.run(cfg) == d / "cams"  # the old config: its results are restored, not remade
    assert sorted(p.name for p in (d / "cams").iterdir()) == before and not aside.exists()
    log = (work / "logs" / "baseline.make_cam.log").read_text()
    assert "restoring the finished results" in log and log.rstrip().endswith("already done (%s); skipping. Use --force to redo." % (d / "DONE.json"))

    make_cam.run(changed)  # a change that finishes replaces them for good
    assert json.loads((d / "DONE.json").read_text())["fingerprint"] != "" and not aside.exists()


@pytest.mark.slow
def test_sigterm_is_handled_as_ctrl_c(demo_root, tmp_path):
    """SIGTERM (a scheduler's stop) gives the resume hint and exit 143, as SIGINT gives 130; the rerun resumes."""
    import signal
    import subprocess
    import sys
    import time
    from conftest import ROOT
    cmd = [sys.executable, "-m", "stages.cli", "train-cam", "--config", "demo", "--voc-root", str(demo_root),
           "--work-dir", str(tmp_path / "w"), *TINY_CLI, "cam_train.epochs=200", "cam_train.log_every=2",
           "cam_train.checkpoint_every=2"]
    out = open(tmp_path / "out.txt", "w")
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 300
        while "train_cam] step 4/" not in (tmp_path / "out.txt").read_text():
            assert p.poll() is None and time.time() < deadline, (tmp_path / "out.txt").read_text()[-3000:]
            time.sleep(0.2)
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=60) == 143
    finally:
        if p.poll() is None:
            p.kill()
    assert "terminated (SIGTERM); rerun the same command to resume" in (tmp_path / "out.txt").read_text()
    assert (tmp_path / "w" / "baseline" / "train_cam" / "checkpoint.pth").exists()


def test_a_full_disk_is_exit_2_with_the_path_and_the_fix(demo_root, tmp_path, monkeypatch, capsys):
    import errno
    from psa_baseline import fileio

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))
    cfg = ["--config", "demo", "--voc-root", str(demo_root), "--work-dir", str(tmp_path / "w")] + TINY_CLI
    assert cli_main(["train-cam"] + cfg) == 0
    monkeypatch.setattr(fileio, "write_bytes", full)
    assert cli_main(["make-cam"] + cfg) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and str(tmp_path / "w") in err and "free space" in err, err
    assert "Traceback" not in err


def test_files_a_resume_would_skip_are_checked_whole(tmp_path):
    from psa_baseline.fileio import looks_complete, save_npy, write_bytes
    import io
    from PIL import Image
    save_npy(tmp_path / "cam.npy", {3: np.ones((4, 5), np.float32)})
    save_npy(tmp_path / "arr.npy", np.ones((4, 5), np.float32))
    buf = io.BytesIO()
    Image.fromarray(np.zeros((4, 5), np.uint8)).save(buf, format="PNG")
    write_bytes(tmp_path / "lab.png", buf.getvalue())
    for name in ("cam.npy", "arr.npy", "lab.png"):
        p = tmp_path / name
        assert looks_complete(p), name
        data = p.read_bytes()
        p.write_bytes(data[:-3])  # torn
        assert not looks_complete(p), name
        p.write_bytes(b"")  # emptied
        assert not looks_complete(p), name
    assert not looks_complete(tmp_path / "missing.npy")


def test_an_emptied_cam_is_made_again_on_resume(demo_root, tmp_path):
    """The audit's case: an emptied .npy in a partial make-cam folder was counted as done."""
    cfg, d = _finished_make_cam(demo_root, tmp_path / "w")
    first = sorted((d / "cams").iterdir())[0]
    whole = np.load(first, allow_pickle=True).item()
    first.write_bytes(b"")
    (d / "DONE.json").unlink()  # as if killed before finishing
    (d / "PARTIAL.json").write_text(json.dumps({"stage": "make_cam", "fingerprint": json.loads(
        (tmp_path / "w" / "baseline" / "train_cam" / "DONE.json").read_text())["fingerprint"]}))
    make_cam.run(cfg)
    again = np.load(first, allow_pickle=True).item()
    assert sorted(again) == sorted(whole) and all(np.array_equal(again[k], whole[k]) for k in whole)


def test_every_reader_of_the_demo_weights_checks_their_manifest(demo_root, tmp_path, monkeypatch):
    """Not only the pipeline: train-cam --config demo on a tampered file is refused."""
    import shutil
    from demo import pretrain
    from stages import builders
    copy = tmp_path / "weights"
    shutil.copytree(pretrain.WEIGHTS_DIR, copy)
    monkeypatch.setattr(pretrain, "WEIGHTS_DIR", copy)
    monkeypatch.setattr(builders, "_DEMO_VERIFIED", {})
    with open(copy / pretrain.WRN_FILE, "r+b") as f:
        f.seek(-10, 2)
        f.write(b"0123456789")
    cfg = tiny_cfg(demo_root, tmp_path / "w", **{"net.weights": str(copy / pretrain.WRN_FILE),
                                                 "net.width": 0.125, "net.blocks": [1, 1, 1, 1]})
    with pytest.raises(InputError, match="is corrupt"):
        train_cam.run(cfg)


def test_results_drop_entries_whose_upstream_changed(tmp_path):
    from stages.report import load_results, update_results
    update_results(tmp_path, "baseline", "cam", {"miou": 40.0}, fingerprint="c1")
    update_results(tmp_path, "baseline", "pseudo", {"miou": 45.0}, fingerprint="a1")
    update_results(tmp_path, "baseline", "seg", {"miou": 50.0}, fingerprint="s1")
    update_results(tmp_path, "eader", "seg", {"miou": 52.0}, fingerprint="s2")
    update_results(tmp_path, "baseline", "cam", {"miou": 40.0}, fingerprint="c1")  # the same scores again
    assert set(load_results(tmp_path)["baseline"]) >= {"cam", "pseudo", "seg"}
    update_results(tmp_path, "baseline", "cam", {"miou": 38.0}, fingerprint="c2")  # CAMs remade
    res = load_results(tmp_path)
    assert "pseudo" not in res["baseline"] and "seg" not in res["baseline"] and res["eader"]["seg"]["miou"] == 52.0
    assert "50.0" not in (tmp_path / "report.md").read_text()


def test_two_compares_writing_one_table_keep_every_earlier_one(tmp_path):
    """Under the lock, concurrent writers of one comparison each keep the previous table (none lost)."""
    import threading
    from stages import compare
    base = {"a": {"name": "baseline", "runs": []}, "b": {"name": "eader", "runs": []}}

    def comparison(k):
        return {"a": {**base["a"], "runs": [f"a{k}"]}, "b": {**base["b"], "runs": [f"b{k}"]}}
    real_markdown = compare.markdown
    compare.markdown = lambda c: f"table {c['a']['runs'][0]}\n"
    try:
        threads = [threading.Thread(target=compare.write_comparison, args=(tmp_path, comparison(k))) for k in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        compare.markdown = real_markdown
    out = tmp_path / "compare"
    tables = sorted(p.read_text() for p in out.glob("baseline_vs_eader*.md"))
    assert tables == sorted(f"table a{k}\n" for k in range(6))
