"""Safe inputs and no stale results: pickles from outside, partial work under another config,
two runs on one work dir, file modes, progress output, paths."""
import os
import stat

import pytest
import torch

from conftest import ROOT


def test_outputs_get_the_umask_mode_not_0600(tmp_path):
    from psa_baseline.fileio import save_npy, write_json
    old = os.umask(0o027)
    try:
        write_json(tmp_path / "a.json", {"x": 1})
        save_npy(tmp_path / "b.npy", {0: [1.0]})
    finally:
        os.umask(old)
    for name in ("a.json", "b.npy"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o640, name
    old = os.umask(0o022)
    try:
        write_json(tmp_path / "c.json", {})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "c.json").stat().st_mode) == 0o644


def test_bench_crf_default_data_path_is_repository_relative():
    from scripts import bench_crf as mod
    assert mod.DEFAULT_VOC == ROOT.parent / "shared" / "data" / "VOCmini"
    assert "/work/shared" not in (ROOT / "scripts" / "bench_crf.py").read_text()


# ------------------------------------------------------------------ 1. pickles from outside run no code

class _Evil:
    """Unpickling this would create a file (any shell command would do)."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.mknod, (self.target,))


def _save_evil(path, target, wrap_in_dict=True):
    import numpy as np
    obj = {0: np.zeros((4, 5), np.float32), 1: _Evil(str(target))} if wrap_in_dict else _Evil(str(target))
    np.save(path, obj, allow_pickle=True)


def test_malicious_cam_file_is_refused_and_runs_nothing(tmp_path):
    import numpy as np
    import pytest
    from psa_baseline.errors import InputError
    from psa_baseline.evaluation import load_cam_dict
    target = tmp_path / "pwned"
    for i, wrap in enumerate((True, False)):
        p = tmp_path / f"evil{i}.npy"
        _save_evil(p, target, wrap)
        with pytest.raises(InputError, match="posix.mknod|os.mknod") as e:
            load_cam_dict(p)
        assert str(p) in str(e.value) and "refused" in str(e.value)
        assert not target.exists()
    # the danger is real: numpy's own loader creates the file
    np.load(tmp_path / "evil1.npy", allow_pickle=True)
    assert target.exists()


def test_every_psa_dict_reader_refuses_a_malicious_pickle(tmp_path, capsys):
    import pytest
    from demo import data as demo_data
    from psa_baseline.errors import InputError
    from psa_baseline.voc import load_cls_labels
    from stages.train_aff import load_crf_dict
    target = tmp_path / "pwned"
    p = tmp_path / "evil.npy"
    _save_evil(p, target)
    (tmp_path / "cls_labels.npy").write_bytes(p.read_bytes())
    readers = [lambda: load_cls_labels(p), lambda: load_crf_dict(p, (4, 5), "x"),
               lambda: demo_data.load_cls_labels(tmp_path),
               lambda: demo_data.part_recall_from_cams(tmp_path, tmp_path, ["evil"])]
    for read in readers:
        with pytest.raises(InputError, match="refused"):
            read()
    assert not target.exists()


def test_eval_cam_cli_exits_2_on_a_malicious_cam_folder(tmp_path, demo_root, capsys):
    from stages.cli import main
    ids = (demo_root / "ImageSets/Segmentation/val.txt").read_text().split()
    cams = tmp_path / "cams"
    cams.mkdir()
    import numpy as np
    from PIL import Image
    for i in ids:  # genuine CAMs, except the first one
        gt = np.array(Image.open(demo_root / "SegmentationClass" / f"{i}.png"))
        np.save(cams / f"{i}.npy", {int(c - 1): (gt == c).astype(np.float32) for c in np.unique(gt) if 0 < c < 255})
    target = tmp_path / "pwned"
    _save_evil(cams / f"{ids[0]}.npy", target)
    rc = main(["eval-cam", "--config", "demo", "--cam-dir", str(cams), "--voc-root", str(demo_root),
               "--split", "val", "--out", str(tmp_path / "m.json")])
    err = capsys.readouterr().err
    assert rc == 2 and f"{ids[0]}.npy" in err and "refused" in err, err
    assert not target.exists()


def test_genuine_psa_dicts_load(tmp_path):
    import numpy as np
    from psa_baseline.evaluation import load_cam_dict
    from psa_baseline.safe_npy import load_dict
    cams = {3: np.random.rand(4, 5).astype(np.float32), np.int64(7): np.ones((4, 5), np.float64)}
    np.save(tmp_path / "a.npy", cams)
    d = load_cam_dict(tmp_path / "a.npy", expect_shape=(4, 5))
    assert set(d) == {3, 7} and all(type(k) is int for k in d)
    assert np.array_equal(d[3], cams[3]) and d[7].dtype == np.float32
    np.save(tmp_path / "b.npy", {"2007_000032": np.array([1, 0], np.uint8)})
    assert load_dict(tmp_path / "b.npy", "labels", str, "{id: labels}")["2007_000032"].tolist() == [1, 0]


def test_psas_own_cls_labels_file_loads():
    import numpy as np
    import pytest
    from conftest import SHARED
    from psa_baseline.voc import load_cls_labels
    path = SHARED / "voc12" / "cls_labels.npy"  # PSA's file as published (a protocol-2 pickle)
    if not path.exists():
        pytest.skip(f"{path} not present")
    labels = load_cls_labels(path)
    reference = np.load(path, allow_pickle=True).item()
    assert len(labels) == len(reference) > 10000
    for k in list(reference)[:50]:
        assert np.array_equal(labels[k], reference[k])
    # the copy shipped in voc12/ too
    assert len(load_cls_labels(ROOT / "voc12" / "cls_labels.npy")) == len(reference)


def test_dict_values_must_be_numeric_arrays(tmp_path):
    import numpy as np
    import pytest
    from psa_baseline.errors import InputError
    from psa_baseline.safe_npy import load_dict
    np.save(tmp_path / "a.npy", {0: "text"})
    with pytest.raises(InputError, match="value of key 0 is a str"):
        load_dict(tmp_path / "a.npy", "CAM file", int, "{class: map}")
    np.save(tmp_path / "b.npy", {0: np.array([None, 1], dtype=object)})
    with pytest.raises(InputError, match="not a numeric array"):
        load_dict(tmp_path / "b.npy", "CAM file", int, "{class: map}")
    np.save(tmp_path / "c.npy", {True: np.zeros(2)})
    with pytest.raises(InputError, match="key True"):
        load_dict(tmp_path / "c.npy", "CAM file", int, "{class: map}")


# ------------------------------------------------------ 2. partial work carries its fingerprint

def _log_text(work, variant, stage):
    return (work / "logs" / f"{variant}.{stage}.log").read_text()


def test_interrupted_training_rerun_under_another_config_starts_at_step_0(demo_root, tmp_path):
    import torch
    from conftest import tiny_cfg
    from stages import train_cam
    work = tmp_path / "work"
    ck = work / "baseline" / "train_cam" / "checkpoint.pth"
    assert train_cam.run(tiny_cfg(demo_root, work), stop_after=3) is None
    assert torch.load(ck, weights_only=False)["step"] == 3
    # same config: resumes (and goes one step further)
    train_cam.run(tiny_cfg(demo_root, work), stop_after=4)
    assert torch.load(ck, weights_only=False)["step"] == 4
    assert "resumed from" in _log_text(work, "baseline", "train_cam")
    # another number of epochs: the old checkpoint must not be resumed (it was at step 4)
    train_cam.run(tiny_cfg(demo_root, work, **{"cam_train.epochs": 3}), stop_after=1)
    assert torch.load(ck, weights_only=False)["step"] == 1
    log = _log_text(work, "baseline", "train_cam")
    assert "made under another config or inputs" in log.split("stopped after step 4")[-1]
    assert "resumed from" not in log.split("stopped after step 4")[-1]


def test_checkpoint_under_another_fingerprint_is_not_resumed(tmp_path):
    import logging
    import torch
    from psa_baseline.training import resume, save_checkpoint
    net = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    path = tmp_path / "checkpoint.pth"
    save_checkpoint(path, model=net.state_dict(), optimizer=opt.state_dict(), step=5, fingerprint="aaa")
    assert resume(path, net, opt, fingerprint="aaa")[0] == 5
    log = logging.getLogger("test.resume")
    records = []
    log.addHandler(type("H", (logging.Handler,), {"emit": lambda self, r: records.append(r.getMessage())})())
    log.setLevel(logging.INFO)
    assert resume(path, net, opt, log, 10, fingerprint="bbb") == (0, None)
    assert not path.exists() and "another config" in records[-1]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_training_on_a_gpu_resumes_its_weights_optimiser_and_random_state(tmp_path):
    """The checkpoint is read onto the CPU: read onto the GPU, torch.set_rng_state refused its RNG state."""
    from psa_baseline.training import resume, save_checkpoint
    net = torch.nn.Linear(2, 2).cuda()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net(torch.ones(1, 2, device="cuda")).sum().backward()
    opt.step()
    path = tmp_path / "checkpoint.pth"
    save_checkpoint(path, model=net.state_dict(), optimizer=opt.state_dict(), step=1)
    expected = torch.rand(3)
    net2 = torch.nn.Linear(2, 2).cuda()
    opt2 = torch.optim.SGD(net2.parameters(), lr=0.1, momentum=0.9)
    assert resume(path, net2, opt2)[0] == 1
    assert torch.equal(torch.rand(3), expected)  # the RNG state of the save, restored
    assert torch.equal(net2.weight, net.weight)
    buf = opt2.state[net2.weight]["momentum_buffer"]
    assert buf.device.type == "cuda" and torch.equal(buf, opt.state[net.weight]["momentum_buffer"])


def test_a_resume_that_sees_fewer_gpus_than_the_save_restores_those_it_has(monkeypatch):
    """A checkpoint saved with 4 GPUs visible, resumed where one is (CUDA_VISIBLE_DEVICES, another machine):
    set_rng_state_all would ask for devices 1-3 and fail."""
    from psa_baseline import training
    state = training.rng_state()
    state["cuda"] = [torch.full((4,), i, dtype=torch.uint8) for i in range(4)]
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, i: restored.append((int(s[0]), i)))
    training.set_rng_state(state)
    assert restored == [(0, 0)]


def test_partial_make_cam_output_from_another_fingerprint_is_cleared(demo_root, tmp_path, capsys):
    import json
    import numpy as np
    from conftest import tiny_cfg
    from stages import make_cam, train_cam
    work = tmp_path / "work"
    cfg = tiny_cfg(demo_root, work)
    train_cam.run(cfg)
    make_cam.run(cfg)
    st_dir = work / "baseline" / "make_cam"
    fp = json.loads((st_dir / "DONE.json").read_text())["fingerprint"]
    cam = sorted((st_dir / "cams").glob("*.npy"))[0]
    sentinel = {0: np.full((2, 2), 7.0, np.float32)}

    def interrupted(made_under):  # what an interrupted run leaves: some CAMs, PARTIAL.json, no DONE.json
        (st_dir / "DONE.json").unlink()
        (st_dir / "PARTIAL.json").write_text(json.dumps({"fingerprint": made_under}))
        np.save(cam, sentinel)

    interrupted(fp)  # same fingerprint: the CAM on disk is kept, only missing ones would be made
    make_cam.run(cfg)
    assert np.load(cam, allow_pickle=True).item()[0][0, 0] == 7.0
    interrupted("0123456789abcdef")  # made under another config: redone
    make_cam.run(cfg)
    assert all(v.shape != (2, 2) for v in np.load(cam, allow_pickle=True).item().values())
    assert "made under another config or inputs (fingerprint 0123456789abcdef" in \
        _log_text(work, "baseline", "make_cam")
    assert not (st_dir / "PARTIAL.json").exists() and (st_dir / "DONE.json").exists()
    # 10: stderr is not a terminal here: progress as log lines, no bar
    assert "make-cam[baseline]: 24/24 (100%)" in _log_text(work, "baseline", "make_cam")
    err = capsys.readouterr().err
    assert "it/s" not in err and "\r" not in err


# ------------------------------------------------------------------ 3. one run per work dir

def _train_cam_cli(demo_root, work, *extra):
    from stages.cli import main
    return main(["train-cam", "--config", "demo", "--voc-root", str(demo_root), "--work-dir", str(work),
                 "net.width=0.125", "net.blocks=[1,1,1,1]", "cam_train.epochs=1", "cam_train.crop=48",
                 "cam_train.batch_size=4", "net.weights=random", *extra])


def _hold_lock(work, variant):
    """Another process holding `variant`'s lock on `work` until killed (returns once it holds it)."""
    import subprocess
    import sys
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from stages.workdir import "
         "lock_name, lock_work_dir; lock_work_dir(sys.argv[1], lock_name(variant=sys.argv[3])); "
         "print('held', flush=True); sys.stdin.read()",
         str(work), "", variant], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_second_run_on_a_locked_work_dir_stops_at_once(demo_root, tmp_path, capsys):
    from stages.workdir import lock_name
    work = tmp_path / "work"
    work.mkdir()
    holder = _hold_lock(work, "baseline")
    try:
        rc = _train_cam_cli(demo_root, work)
        err = capsys.readouterr().err
        assert rc == 2 and "in use by another psa-eader run" in err and f"pid {holder.pid}" in err, err
        assert not (work / "baseline").exists()  # stopped before doing anything
    finally:
        holder.kill()  # like a crash: the kernel releases the lock
        holder.wait()
    assert _train_cam_cli(demo_root, work) == 0
    assert f"pid {os.getpid()}" in (work / lock_name(variant="baseline")).read_text()


def test_the_variants_of_a_work_dir_lock_apart(tmp_path):
    """Baseline and EADER write folders of their own and may run side by side (pipeline --jobs 2); a
    second run of the same variant may not. A variant name cannot reach outside the work dir."""
    from psa_baseline.errors import InputError
    from stages.workdir import lock_name, lock_work_dir
    holder = _hold_lock(tmp_path, "baseline")
    try:
        lock_work_dir(tmp_path, lock_name(variant="eader"))  # the other variant: free
        with pytest.raises(InputError, match="in use by another psa-eader run"):
            lock_work_dir(tmp_path, lock_name(variant="baseline"))
    finally:
        holder.kill()
        holder.wait()
    assert lock_name((1, 2), "eader") == ".psa-eader.eader.shard-1-of-2.lock"
    assert "/" not in lock_name(variant="../x") and lock_name() == ".psa-eader.lock"


def test_stages_of_one_process_share_its_lock(demo_root, tmp_path):
    from stages.workdir import lock_work_dir
    lock_work_dir(tmp_path)
    lock_work_dir(tmp_path)  # again from the same process: fine (the pipeline runs many stages)


# ------------------------------------------------------------------ 5. messages, not tracebacks

def test_work_dir_under_a_file_is_an_input_error(demo_root, tmp_path, capsys):
    f = tmp_path / "afile"
    f.write_text("x")
    for work in (f, f / "sub" / "work"):
        assert _train_cam_cli(demo_root, work) == 2
        err = capsys.readouterr().err
        assert f"{f} is a file, not a folder" in err and "--work-dir" in err, err


def test_unwritable_work_dir_is_an_input_error(demo_root, tmp_path, capsys, monkeypatch):
    import errno
    import tempfile
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    if os.access(ro, os.W_OK):  # root ignores the mode: give the answer everyone else gets
        real_mkstemp, real_mkdir = tempfile.mkstemp, os.mkdir

        def denied(path):
            return str(path).startswith(str(ro))

        def mkstemp(*a, dir=None, **k):
            if dir is not None and denied(dir):
                raise PermissionError(errno.EACCES, "Permission denied", str(dir))
            return real_mkstemp(*a, dir=dir, **k)

        def mkdir(path, *a, **k):
            if denied(path):
                raise PermissionError(errno.EACCES, "Permission denied", str(path))
            return real_mkdir(path, *a, **k)
        monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
        monkeypatch.setattr(os, "mkdir", mkdir)
    try:
        assert _train_cam_cli(demo_root, ro) == 2
        err = capsys.readouterr().err
        assert f"work dir {ro} is not writable" in err and "--work-dir" in err, err
        assert _train_cam_cli(demo_root, ro / "new") == 2
        err = capsys.readouterr().err
        assert f"work dir {ro / 'new'} cannot be created" in err, err
    finally:
        ro.chmod(0o755)


def test_non_utf8_config_file_exits_2(demo_root, tmp_path, capsys):
    from stages.cli import main
    f = tmp_path / "c.yaml"
    f.write_bytes(b"base: demo\nvariant: caf\xe9\n")
    assert main(["train-cam", "--config", str(f), "--work-dir", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err
    assert str(f) in err and "UTF-8" in err, err


# ------------------------------------------------ 10. a progress bar on a terminal, log lines in a file

class _Terminal:
    def __init__(self):
        import io
        self.buf = io.StringIO()

    def isatty(self):
        return True

    def write(self, text):
        return self.buf.write(text)

    def flush(self):
        pass


def test_progress_is_a_bar_on_a_terminal_and_lines_in_a_file(monkeypatch, caplog):
    import logging
    import sys
    from psa_baseline.progress import with_progress
    caplog.set_level(logging.INFO, logger="psa_baseline.progress")
    assert list(with_progress(range(100), "job", total=100, quiet_below=0)) == list(range(100))
    lines = [r.getMessage() for r in caplog.records if r.name == "psa_baseline.progress"]
    assert len(lines) == 10 and lines[-1].startswith("job: 100/100 (100%)")
    caplog.clear()  # a loop done within quiet_below says it once: one line for a 0.1 s evaluation
    assert list(with_progress(range(100), "quick", total=100)) == list(range(100))
    quick = [r.getMessage() for r in caplog.records if r.name == "psa_baseline.progress"]
    assert len(quick) == 1 and quick[0].startswith("quick: 100/100 (100%)")
    term = _Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    caplog.clear()
    assert list(with_progress(range(7), "job")) == list(range(7))
    assert "job" in term.buf.getvalue() and "7/7" in term.buf.getvalue()
    assert not [r for r in caplog.records if r.name == "psa_baseline.progress"]
    assert list(with_progress(range(3), "quiet", enabled=False)) == [0, 1, 2]
    assert "quiet" not in term.buf.getvalue()
    # processes sharing one terminal (pipeline --jobs 2) print lines, not bars that overwrite each other
    from psa_baseline import progress
    monkeypatch.setattr(progress, "BARS", False)
    caplog.clear()
    assert list(with_progress(range(5), "shared", quiet_below=0)) == list(range(5))
    assert "\rshared" not in term.buf.getvalue()  # no bar (tqdm redraws start with \r and the description)
    assert [r for r in caplog.records if r.getMessage().startswith("shared: 5/5")]


def test_training_loop_draws_its_bar_only_on_a_terminal(monkeypatch, capsys):
    import logging
    import sys
    from psa_baseline.training import EpochSampler, run_steps

    class Data(list):
        def set_epoch(self, epoch):
            pass

    def train(total):
        data = Data(range(8))
        sampler = EpochSampler(len(data))
        loader = [[0, 1]] * 4
        lines = []
        log = logging.getLogger("test.run_steps")
        log.handlers = [type("H", (logging.Handler,), {"emit": lambda self, r: lines.append(r.getMessage())})()]
        log.setLevel(logging.INFO)
        log.propagate = False
        run_steps(loader, sampler, data, lambda b: {"loss": 1.0}, step=0, total=total, steps_per_epoch=4,
                  batch_size=2, checkpoint=lambda s: None, log=log, log_every=2, checkpoint_every=100,
                  lr=lambda: 0.1, desc="toy")
        return lines
    lines = train(8)
    assert len(lines) == 4 and lines[-1].startswith("step 8/8")
    err = capsys.readouterr().err
    assert "toy" not in err and "\r" not in err  # not a terminal: no bar
    term = _Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    train(8)
    assert "toy" in term.buf.getvalue()


def test_make_cam_names_a_missing_corrupt_or_foreign_cam_net(demo_root, tmp_path):
    import torch
    from psa_baseline.errors import InputError
    from stages.make_cam import load_cam_net
    from conftest import tiny_cfg
    cfg = tiny_cfg(demo_root, tmp_path / "w")
    path = tmp_path / "cam_net.pth"
    with pytest.raises(InputError, match="does not exist: run train-cam"):
        load_cam_net(cfg, path, "cpu")
    path.write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(InputError, match="cannot be read as weights.*--force"):
        load_cam_net(cfg, path, "cpu")
    torch.save({"conv.weight": torch.zeros(1)}, path)
    with pytest.raises(InputError, match="does not fit the CAM net of this config"):
        load_cam_net(cfg, path, "cpu")
    # make-pseudo's AffinityNet goes through the same loader (stages.builders.load_stage_weights)
    from stages.make_pseudo import load_aff_net
    with pytest.raises(InputError, match="does not fit the AffinityNet of this config"):
        load_aff_net(cfg, path, "cpu")
    path.write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(InputError, match="cannot be read as weights.*rerun train-aff with --force"):
        load_aff_net(cfg, path, "cpu")


def test_training_curves_go_to_a_csv_that_a_resume_keeps_unbroken(tmp_path):
    """run_steps(metrics=...) writes one CSV row per log line; a run resumed from step 4 (after a kill that
    left rows past its checkpoint and a torn last row) drops those rows first, so every step appears once
    and in order. Log lines carry the time left (ETA)."""
    import csv
    import logging
    from psa_baseline.training import EpochSampler, run_steps

    class Data(list):
        def set_epoch(self, epoch):
            pass

    lines = []
    log = logging.getLogger("test.curves")
    log.handlers = [type("H", (logging.Handler,), {"emit": lambda self, r: lines.append(r.getMessage())})()]
    log.setLevel(logging.INFO)
    log.propagate = False
    path = tmp_path / "metrics.csv"

    def train(step, total):
        data = Data(range(8))
        run_steps([[0, 1]] * 4, EpochSampler(len(data)), data, lambda b: {"loss": 0.5, "l_cls": 0.25}, step=step,
                  total=total, steps_per_epoch=4, batch_size=2, checkpoint=lambda s: None, log=log, log_every=2,
                  checkpoint_every=100, lr=lambda: 0.1, desc="toy", metrics=path)
    train(0, 6)
    with open(path, "a") as f:
        f.write("8,1,0.1,0.5,0.25,0.0\n6,1,0.1,0.")  # rows of a killed run past step 4, the last one torn
    train(4, 8)
    rows = list(csv.DictReader(open(path)))
    assert [int(r["step"]) for r in rows] == [2, 4, 6, 8]
    assert set(rows[0]) == {"step", "epoch", "lr", "loss", "l_cls", "s_per_step"} and float(rows[-1]["loss"]) == 0.5
    assert all(" ETA " in x for x in lines if x.startswith("step "))
