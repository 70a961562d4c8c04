"""pipeline --jobs: the baseline and EADER of one work dir side by side, each in a process of its own."""
import json
import multiprocessing

import pytest
import torch

from conftest import tiny_cfg

pytestmark = pytest.mark.dist  # several processes: slow, and skipped by the fast subset


def test_side_by_side_gives_the_results_of_one_after_the_other(demo_root, tmp_path):
    """Same weights and scores as the two variants run in turn at the same thread count; both land in the
    shared results.json (each update under its lock)."""
    from stages import pipeline
    from stages.jobs import threads_each
    threads = threads_each(2)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        pipeline.run_variants(tiny_cfg(demo_root, tmp_path / "seq"), "both", log=lambda m: None, until="cam", jobs=1)
    finally:
        torch.set_num_threads(old)
    said = []
    pipeline.run_variants(tiny_cfg(demo_root, tmp_path / "par"), "both", log=said.append, until="cam", jobs=2)
    assert any("side by side: 2 processes" in m for m in said)
    seq, par = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("seq", "par"))
    assert sorted(par) == ["baseline", "eader"]
    for v in ("baseline", "eader"):
        assert par[v]["cam"]["miou"] == seq[v]["cam"]["miou"], v
        a, b = (torch.load(tmp_path / d / v / "train_cam" / "cam_net.pth", weights_only=True) for d in ("seq", "par"))
        assert all(torch.equal(a[k], b[k]) for k in a), v
    for v in ("baseline", "eader"):  # the summary names both
        assert f"| {v} |" in (tmp_path / "par" / "report.md").read_text()


def test_a_failing_variant_stops_the_command_after_the_other_has_finished(demo_root, tmp_path):
    from psa_baseline.errors import InputError
    from stages import pipeline
    cfg = tiny_cfg(demo_root, tmp_path / "w", **{"eader.adv_weights": str(tmp_path / "missing.pth")})
    with pytest.raises(InputError, match="missing.pth"):
        pipeline.run_variants(cfg, "both", log=lambda m: None, until="cam", jobs=2)
    assert (tmp_path / "w" / "baseline" / "eval_cam" / "DONE.json").exists()


def _update(work, variant, n):
    from stages.report import update_results
    for k in range(n):
        update_results(work, variant, f"m{k}", {"miou": k})


def test_concurrent_result_updates_keep_every_entry(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_update, args=(str(tmp_path), v, 30)) for v in ("baseline", "eader")]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
        assert p.exitcode == 0
    res = json.loads((tmp_path / "results.json").read_text())
    assert all(sorted(res[v]) == sorted(f"m{k}" for k in range(30)) for v in ("baseline", "eader"))


def test_ctrl_c_stops_both_variants_with_the_resume_hint(demo_root, tmp_path):
    """Ctrl-C (SIGINT to the terminal's process group) while the two variants train side by side: the
    command ends with 130 and the resume hint, and no process of it is left."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from conftest import ROOT
    over = ["net.width=0.125", "net.blocks=[1,1,1,1]", "cam_train.batch_size=4", "cam_train.epochs=40",
            "cam_train.crop=64", "cam_train.resize_long=[56,80]", "adv_pretrain.epochs=0", "net.weights=random",
            "eader.adv_weights=random", "cam_train.log_every=5"]
    cmd = [sys.executable, "-m", "stages.cli", "pipeline", "--config", "demo", "--voc-root", str(demo_root),
           "--work-dir", str(tmp_path / "w"), "--eader", "both", "--jobs", "2", "--until", "cam", *over]
    out = open(tmp_path / "out.txt", "w")
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.time() + 120
        while not all(f"psa.{v}.train_cam] step" in (tmp_path / "out.txt").read_text() for v in ("baseline", "eader")):
            assert p.poll() is None and time.time() < deadline, (tmp_path / "out.txt").read_text()[-3000:]
            time.sleep(0.5)
        os.killpg(p.pid, signal.SIGINT)
        assert p.wait(timeout=60) == 130
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    text = (tmp_path / "out.txt").read_text()
    assert "interrupted; rerun the same command to resume" in text
    time.sleep(1)
    assert _live_in_group(p.pid) == []  # no variant process left behind (zombies aside: not ours to reap)


def _live_in_group(pgid):
    import os
    live = []
    for d in os.listdir("/proc"):
        try:
            fields = open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":  # after the name: state, ppid, pgrp
            live.append(int(d))
    return live
