"""Several processes (torch.distributed, gloo on the CPU), as `torchrun --nproc_per_node 2` runs them.

Each test spawns its processes with torch.multiprocessing and joins torchrun's environment variables
(MASTER_ADDR/PORT, RANK, WORLD_SIZE, LOCAL_RANK) through stages.distributed.init_distributed, the same call
`psa-eader` makes under torchrun. Runs on the tiny config of the stage tests.

Equality with one process needs the same arithmetic in both: BatchNorm frozen (net.frozen_bn=true; a
trained BN normalises each rank's half batch by its own statistics) and dropout off (its masks come from
each process's RNG, drawn for a half batch). Everything else - data order, augmentation, the global
batch, the lr schedule, gradient averaging - is what the tests compare.

PSA_TEST_DEVICE=cuda runs the stage tests on GPUs instead, with TF32 off and cuDNN deterministic so that one
and two processes compute alike (scripts/gpu_check.sh, part dist): over NCCL with one GPU per rank where the
machine has two or more, else with both ranks on one GPU over gloo (PSA_EADER_DIST_BACKEND=gloo, set here;
NCCL refuses two ranks on one GPU).
"""
import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from conftest import tiny_cfg

pytestmark = pytest.mark.dist  # several processes: slow, and skipped by the fast subset

DEVICE = os.environ.get("PSA_TEST_DEVICE", "cpu")
CUDA = DEVICE.startswith("cuda")
if CUDA and torch.cuda.device_count() < 2:  # two GPUs or more: NCCL, one GPU per rank, as a real run
    os.environ.setdefault("PSA_EADER_DIST_BACKEND", "gloo")  # inherited by the spawned ranks and by torchrun's

# bf16 inference off: its rounding turns the float-noise differences of the weights into 1e-2 ones; on a GPU
# bf16 training off too (its kernels depend on the batch size, which is halved per rank)
EQUAL_OVER = {"net.frozen_bn": True, "cam_train.epochs": 2, "cam_infer.bf16": False,
              **({"cam_train.bf16": False} if CUDA else {})}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def join_group(rank, world, port):
    """What torchrun gives a worker, then the process group as `psa-eader` sets it up (a context: left with
    a wait for the other rank on a clean end, as the command line leaves it)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    if CUDA:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    from stages.distributed import process_group
    return process_group(DEVICE)


def cfg_here(root, work, **over):
    """tiny_cfg on this run's device (PSA_TEST_DEVICE)."""
    return tiny_cfg(root, work, device=DEVICE, **over)


def spawn(fn, world, *args):
    mp.spawn(fn, args=(world, free_port(), *args), nprocs=world, join=True)


def _train_and_infer(rank, world, port, root, work, over, stop_after, out):
    torch.nn.Dropout2d.forward = lambda self, x: x  # see the module's docstring
    from stages import make_cam, train_cam
    with join_group(rank, world, port):
        cfg = cfg_here(root, work, **over)
        if train_cam.run(cfg, stop_after=stop_after) is None or out is None:
            return
        written = []
        save = make_cam.save_npy
        make_cam.save_npy = lambda path, obj: (written.append(Path(path).name), save(path, obj))
        make_cam.run(cfg)
        Path(out, f"written.{rank}.json").write_text(json.dumps(written))


def weights(work, variant="baseline"):
    return torch.load(Path(work) / variant / "train_cam" / "cam_net.pth", weights_only=True)


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6, msg=k)


def test_two_processes_train_the_weights_of_one_and_write_every_cam_once(demo_root, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    spawn(_train_and_infer, 1, str(demo_root), str(one), EQUAL_OVER, None, str(tmp_path))
    spawn(_train_and_infer, 2, str(demo_root), str(two), EQUAL_OVER, None, str(tmp_path))
    assert_same_weights(weights(one), weights(two))
    log = (two / "logs" / "baseline.train_cam.log").read_text()
    assert "world size 2" in log and "step 8/8" in log  # 16 images, global batch 4: 4 steps x 2 epochs
    written = [json.loads((tmp_path / f"written.{r}.json").read_text()) for r in (0, 1)]
    cams = sorted(p.name for p in (two / "baseline" / "make_cam" / "cams").glob("*.npy"))
    assert sorted(written[0] + written[1]) == cams and not set(written[0]) & set(written[1])
    assert written[0] and written[1] and (two / "baseline" / "make_cam" / "DONE.json").exists()
    from psa_baseline.safe_npy import load_dict
    for name in cams:  # same weights, same CAMs
        a = load_dict(one / "baseline" / "make_cam" / "cams" / name, "cam", int, "", "")
        b = load_dict(two / "baseline" / "make_cam" / "cams" / name, "cam", int, "", "")
        assert a.keys() == b.keys() and all(abs(a[k] - b[k]).max() < 1e-4 for k in a)


def test_one_process_run_resumed_by_two_ends_with_the_same_weights(demo_root, tmp_path):
    ref, mixed = tmp_path / "ref", tmp_path / "mixed"
    spawn(_train_and_infer, 1, str(demo_root), str(ref), EQUAL_OVER, None, None)
    spawn(_train_and_infer, 1, str(demo_root), str(mixed), EQUAL_OVER, 3, None)  # stops mid-epoch
    spawn(_train_and_infer, 2, str(demo_root), str(mixed), EQUAL_OVER, None, None)
    assert "resumed from" in (mixed / "logs" / "baseline.train_cam.log").read_text()
    assert_same_weights(weights(ref), weights(mixed))


def test_a_global_batch_that_does_not_split_is_refused():
    from psa_baseline.errors import InputError
    from psa_baseline.training import per_rank_batch
    assert per_rank_batch(16, 4) == 4
    with pytest.raises(InputError, match="multiple of 2"):
        per_rank_batch(5, 2, "aff_train")


def _eader_run(rank, world, port, root, work, stop_after, out):
    from stages import train_adv, train_cam
    built = []
    build = train_cam.build_eader
    train_cam.build_eader = lambda *a, **k: built.append(build(*a, **k)) or built[-1]
    with join_group(rank, world, port):
        over = {"eader.enabled": True, "eader.phase_steps": 2, "eader.adv_width": 0.25, "adv_pretrain.epochs": 1,
                "adv_pretrain.batch_size": 4}
        cfg = cfg_here(root, work, **over)
        train_adv.run(cfg)  # the adversary's pre-training, DDP too (done in the first run, skipped after)
        train_cam.run(cfg, stop_after=stop_after)
        torch.save(built[0].adversary.state_dict(), Path(out, f"adv.rank{rank}.pth"))


def _hook_batch(case):
    """4 images with 7 (image, class) pairs; case 'none': image 0 (rank 0's share) has no class."""
    torch.manual_seed(0)
    x = torch.randn(4, 3, 16, 16)
    y = torch.zeros(4, 20)
    y[1, 4] = y[2, [5, 6]] = y[3, 7] = 1
    if case == "uneven":
        y[0, [1, 2, 3]] = 1
    att = torch.rand(4, 20, 4, 4)
    adv = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(8, 20))  # no BatchNorm: exact comparison
    return x, y, att, adv


def _hook_steps(rank, world, port, out):
    """Both turns of the hook on one batch split over the ranks (rank 0: image 0, rank 1: images 1-3),
    against one process on the whole batch: the adversary after its step, and the gradient that the
    localizer's EADER losses (L_am 'authors' and L_reg, means over pairs) send into the attention."""
    from psa_eader.hook import EADER, EaderConfig
    mine = slice(0, 4) if world == 1 else slice(0, 1) if rank == 0 else slice(1, 4)
    with join_group(rank, world, port):
        for case in ("uneven", "none"):
            x, y, att, adv = _hook_batch(case)
            e = EADER(EaderConfig(enabled=True, phase_steps=1, beta=0.01), adv,
                      torch.optim.SGD(adv.parameters(), lr=0.5))
            a = att[mine].clone().requires_grad_()
            loss, _ = e.localizer_loss(x[mine], y[mine], a, torch.zeros(()))
            loss.backward()
            torch.save(a.grad / world, Path(out, f"att_grad.{world}.{rank}.{case}.pth"))  # / world: DDP's mean
            if world == 1:
                torch.save(adv.state_dict(), Path(out, f"adv.init.{case}.pth"))
            e.advance()  # the adversary's turn
            e.adversary_step(x[mine], y[mine], att[mine])
            torch.save(adv.state_dict(), Path(out, f"adv.{world}.{rank}.{case}.pth"))


def test_hook_gradients_are_those_of_the_whole_batch_however_pairs_fall_on_the_ranks(tmp_path):
    spawn(_hook_steps, 1, str(tmp_path))
    spawn(_hook_steps, 2, str(tmp_path))
    for case in ("uneven", "none"):  # rank 0 has 3 of 7 pairs; rank 0 has none
        def load(name):
            return torch.load(tmp_path / name, weights_only=True)
        one = load(f"att_grad.1.0.{case}.pth")
        two = torch.cat([load(f"att_grad.2.0.{case}.pth"), load(f"att_grad.2.1.{case}.pth")])
        assert one.abs().max() > 0
        torch.testing.assert_close(two, one, rtol=1e-5, atol=1e-9)
        for r in (0, 1):  # the adversary moved, identically on both ranks and as one process moves it
            assert_same_weights(load(f"adv.1.0.{case}.pth"), load(f"adv.2.{r}.{case}.pth"))
        assert not torch.equal(load(f"adv.1.0.{case}.pth")["4.weight"], load(f"adv.init.{case}.pth")["4.weight"])


class _Scaled(torch.nn.Module):
    """A buffer that the forward saves for its backward, as cuDNN's batch norm saves its running statistics."""
    def __init__(self, rank):
        super().__init__()
        self.register_buffer("scale", torch.full((3,), float(rank + 2)))

    def forward(self, x):
        return x * self.scale


def _buffers_mid_step(rank, world, port, out):
    from psa_eader.hook import sync_buffers
    with join_group(rank, world, port):
        m = _Scaled(rank)
        x = torch.ones(3, requires_grad=True)
        y = m(x).sum()
        sync_buffers(m)  # between the forward and the backward, as in the localizer's turn
        y.backward()
        torch.save({"grad": x.grad, "scale": m.scale}, Path(out, f"buf.{rank}.pth"))


def test_adversary_buffers_are_synchronised_without_breaking_the_backward_to_come(tmp_path):
    """The localizer's turn takes rank 0's adversary buffers after the adversary's forward and before the
    backward; an in-place broadcast broke that backward on a GPU (cuDNN saves the BN running statistics)."""
    spawn(_buffers_mid_step, 2, str(tmp_path))
    for r in (0, 1):
        got = torch.load(tmp_path / f"buf.{r}.pth", weights_only=True)
        assert torch.equal(got["scale"], torch.full((3,), 2.0))  # rank 0's buffer on both
        assert torch.equal(got["grad"], torch.full((3,), float(r + 2)))  # the backward of each rank's own forward


def test_eader_trains_under_two_processes_and_resumes(demo_root, tmp_path):
    work = tmp_path / "w"
    spawn(_eader_run, 2, str(demo_root), str(work), 3, str(tmp_path))  # stops in the adversary's turn
    spawn(_eader_run, 2, str(demo_root), str(work), 6, str(tmp_path))  # resumes: adversary, localizer turns
    ranks = [torch.load(tmp_path / f"adv.rank{r}.pth", weights_only=True) for r in (0, 1)]
    ck = torch.load(work / "eader" / "train_cam" / "checkpoint.pth", weights_only=False)
    assert ck["step"] == 6 and ck["eader"]["step"] == 6
    for k in ranks[0]:  # the ranks' adversaries stay identical (gradients and BN buffers synchronised)
        assert torch.equal(ranks[0][k], ranks[1][k]) and torch.equal(ranks[0][k], ck["eader"]["adversary"][k]), k
    log = (work / "logs" / "eader.train_cam.log").read_text()
    assert "world size 2" in log and "resumed from" in log and "at step 3/8" in log
    assert "world size 2" in (work / "logs" / "eader.train_adv.log").read_text()
    assert (work / "eader" / "train_adv" / "DONE.json").exists()


def _locked_stage(rank, world, port, root, work, out):
    from psa_baseline.errors import InputError
    from stages.stage import Stage
    try:
        with join_group(rank, world, port):
            Stage(tiny_cfg(root, work), "make_cam")
    except InputError as e:
        Path(out, f"refused.{rank}").write_text(str(e))


def test_a_locked_work_dir_stops_every_rank(demo_root, tmp_path):
    from stages.workdir import lock_name, lock_work_dir
    work = tmp_path / "w"
    work.mkdir()
    lock_work_dir(work, lock_name(variant="baseline"))  # this test process is "another run" of the baseline
    spawn(_locked_stage, 2, str(demo_root), str(work), str(tmp_path))
    for r in (0, 1):
        assert "in use by another psa-eader run" in (tmp_path / f"refused.{r}").read_text()


# ---------------------------------------------------------------------------- the other stages

AFF = {"aff_train.batch_size": 4, "aff_train.epochs": 1, "aff_train.crop": 80, "crf.workers": 1,
       "cam_train.epochs": 1}
STANDALONE = {"standalone.arch": "resnet18", "standalone.width": 0.125, "standalone.batch_size": 4,
              "standalone.epochs": 1, "standalone.crop": 64, "standalone.resize_long": [56, 80],
              "standalone.num_workers": 0, "standalone.phase_steps": 2, "standalone.adv_width": 0.125,
              "standalone.sweep": [0.1, 0.3, 0.1],
              "eader.enabled": True}


def _aff_and_standalone(rank, world, port, root, work, out):
    from psa_baseline import voc
    from stages import make_cam, make_crf, make_pseudo, train_aff, train_cam, train_standalone
    written = []
    save = voc.save_label_png
    voc.save_label_png = lambda path, label: (written.append(Path(path).name), save(path, label))
    with join_group(rank, world, port):
        cfg = cfg_here(root, work, **AFF)
        for m in (train_cam, make_cam, make_crf, train_aff, make_pseudo):
            m.run(cfg)
        Path(out, f"pseudo.{rank}.json").write_text(json.dumps(written))
        train_standalone.run(cfg_here(root, work, **STANDALONE))  # trains with both ranks, scores on rank 0


def test_affinity_stages_and_standalone_run_under_two_processes(demo_root, tmp_path):
    work = tmp_path / "w"
    spawn(_aff_and_standalone, 2, str(demo_root), str(work), str(tmp_path))
    for stage in ("train_cam", "make_cam", "make_crf", "train_aff", "make_pseudo"):
        assert (work / "baseline" / stage / "DONE.json").exists(), stage
        assert "world size 2" in (work / "logs" / f"baseline.{stage}.log").read_text()
    assert (work / "eader" / "standalone_train" / "localizer.pth").exists()
    assert (work / "eader" / "standalone_eval" / "metrics.json").exists()
    assert "world size 2" in (work / "logs" / "eader.standalone_train.log").read_text()
    written = [json.loads((tmp_path / f"pseudo.{r}.json").read_text()) for r in (0, 1)]
    pngs = sorted(p.name for p in (work / "baseline" / "make_pseudo" / "pseudo").glob("*.png"))
    assert len(pngs) == 24 and sorted(written[0] + written[1]) == pngs  # each label written by one rank, once
    crf = sorted(p.name for p in (work / "baseline" / "make_crf" / "crf_la").glob("*.npy"))
    assert len(crf) == 16  # the train list


def test_torchrun_runs_a_stage_with_two_processes(demo_root, tmp_path):
    """The command line of the README: torchrun ... -m stages.cli train-cam."""
    import subprocess
    import sys
    from conftest import ROOT
    over = ["net.width=0.125", "net.blocks=[1,1,1,1]", "cam_train.batch_size=4", "cam_train.epochs=1",
            "cam_train.crop=64", "cam_train.resize_long=[56,80]", "adv_pretrain.epochs=0", "net.weights=random"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
           "stages.cli", "train-cam", "--config", "demo", "--voc-root", str(demo_root), "--work-dir",
           str(tmp_path / "w"), "--device", DEVICE, *over]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    log = (tmp_path / "w" / "logs" / "baseline.train_cam.log").read_text()
    assert "world size 2" in log and "step 4/4" in log
    assert (tmp_path / "w" / "baseline" / "train_cam" / "DONE.json").exists()
    # a global batch that does not split over the processes is refused, by every rank, exit 2
    r = subprocess.run(cmd + ["cam_train.batch_size=3", "--force"], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode != 0 and "must divide evenly over 2 processes" in r.stderr


# ---------------------------------------------------------------------------- --shard i/n

def test_shards_split_make_cam_and_the_last_one_finishes(demo_root, tmp_path, monkeypatch):
    from stages import make_cam, train_cam
    from stages.distributed import my_share, parse_shard
    cfg = tiny_cfg(demo_root, tmp_path / "w", **{"cam_train.epochs": 1})
    train_cam.run(cfg)
    ids = make_cam.infer_ids(cfg)
    cam_dir = tmp_path / "w" / "baseline" / "make_cam" / "cams"
    assert parse_shard("1/2") == (1, 2) and sorted(my_share(ids, (0, 2)) + my_share(ids, (1, 2))) == sorted(ids)
    # shard 0 is killed after two images; its rerun does only the rest of its share
    calls = []
    save = make_cam.save_npy

    def dying(path, obj):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(Path(path).stem)
        save(path, obj)
    monkeypatch.setattr(make_cam, "save_npy", dying)
    with pytest.raises(KeyboardInterrupt):
        make_cam.run(cfg, shard=(0, 2))
    monkeypatch.setattr(make_cam, "save_npy", lambda path, obj: (calls.append(Path(path).stem), save(path, obj)))
    make_cam.run(cfg, shard=(0, 2))
    assert sorted(calls) == sorted(my_share(ids, (0, 2)))  # nothing done twice
    assert not (cam_dir.parent / "DONE.json").exists()  # shard 1's images are still missing
    make_cam.run(cfg, shard=(1, 2))
    assert sorted(calls) == sorted(ids) and (cam_dir.parent / "DONE.json").exists()
    log = (tmp_path / "w" / "logs" / "baseline.make_cam.log").read_text()
    assert "shard 0/2" in log and "(2 already on disk)" in log and "other shards are still missing" in log
    # make-crf the same way: shard 1 first, then shard 0 completes the stage
    from stages import make_crf
    crf = tmp_path / "w" / "baseline" / "make_crf"
    cfg = tiny_cfg(demo_root, tmp_path / "w", **{"cam_train.epochs": 1, "crf.workers": 1})
    make_crf.run(cfg, shard=(1, 2))
    train = (demo_root / "ImageSets/Segmentation/train.txt").read_text().split()
    assert sorted(p.stem for p in (crf / "crf_la").glob("*.npy")) == sorted(my_share(train, (1, 2)))
    assert not (crf / "DONE.json").exists()
    make_crf.run(cfg, shard=(0, 2))
    assert len(list((crf / "crf_ha").glob("*.npy"))) == len(train) and (crf / "DONE.json").exists()


def _sync_bn(rank, world, port, out):
    from psa_baseline.errors import InputError
    from psa_baseline.training import ddp_wrap
    with join_group(rank, world, port):
        net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4))
        try:
            ddp_wrap(net, sync_bn=True)
            result = "wrapped"
        except InputError as e:
            result = str(e)
        plain = ddp_wrap(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4)), sync_bn=False)
        Path(out, f"r{rank}.json").write_text(json.dumps({"sync": result, "plain_bn": type(plain.module[1]).__name__}))
        # a DDP that outlives its gloo group aborts the process at exit now and then ("terminate called without an
        # active exception"): leaving the group collects the unreachable ones (end_distributed), not this local
        del plain


def test_sync_batchnorm_is_refused_on_cpu_processes_with_the_fix(tmp_path):
    """seg_train.sync_bn asks for SyncBatchNorm, which torch runs on CUDA only: a CPU multi-process run must
    stop with the key to set, not fail inside the first forward."""
    spawn(_sync_bn, 2, str(tmp_path))
    for r in (0, 1):
        got = json.loads((tmp_path / f"r{r}.json").read_text())
        assert "sync_bn=false" in got["sync"] and "CUDA" in got["sync"]
        assert got["plain_bn"] == "BatchNorm2d"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="SyncBatchNorm needs CUDA")
def test_sync_batchnorm_replaces_bn_in_place_and_keeps_state_dict_keys():
    from psa_baseline.training import ddp_wrap
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4)).cuda()
    keys = list(net.state_dict())
    converted = torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)
    assert isinstance(converted[1], torch.nn.SyncBatchNorm) and list(converted.state_dict()) == keys
    assert ddp_wrap(net, sync_bn=True) is net  # one process: untouched


def test_the_group_is_left_with_a_wait_only_when_every_rank_gets_there(monkeypatch):
    """A clean end (or an error every rank raised, agree) waits for the other ranks before the group goes (a
    gloo rank torn down early aborted its peer in CI); any other error must not wait for ranks that may
    never come."""
    from psa_baseline.errors import InputError
    from stages import distributed as common
    calls = []
    monkeypatch.setattr(common, "_dist", lambda: True)
    monkeypatch.setattr(common, "init_distributed", lambda device: calls.append("init"))
    monkeypatch.setattr(torch.distributed, "barrier", lambda: calls.append("barrier"))
    monkeypatch.setattr(torch.distributed, "destroy_process_group", lambda: calls.append("destroy"))
    monkeypatch.setattr(torch.distributed, "broadcast_object_list", lambda box, src: None)

    def leave(body):
        calls.clear()
        try:
            with common.process_group("cpu"):
                body()
        except (InputError, RuntimeError):
            pass
        return calls[:]
    assert leave(lambda: None) == ["init", "barrier", "destroy"]
    assert leave(lambda: common.agree(InputError("work dir in use"))) == ["init", "barrier", "destroy"]
    assert leave(lambda: common.agree(None)) == ["init", "barrier", "destroy"]

    def one_rank_only():
        raise InputError("corrupt image 2007_000032")
    assert leave(one_rank_only) == ["init", "destroy"]

    def crash():
        raise RuntimeError("out of memory")
    assert leave(crash) == ["init", "destroy"]


def test_the_backend_is_nccl_on_cuda_unless_gloo_is_asked_for_and_ranks_share_gpus_only_over_gloo(monkeypatch):
    from psa_baseline.errors import InputError
    from stages import distributed as common
    monkeypatch.delenv(common.BACKEND_ENV, raising=False)
    assert common.dist_backend(True) == "nccl" and common.dist_backend(False) == "gloo"
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert common.local_gpu() == 0
    monkeypatch.setenv("LOCAL_RANK", "1")  # two ranks, one GPU: NCCL would refuse ("Duplicate GPU detected")
    with pytest.raises(InputError, match=r"--nproc 1.*PSA_EADER_DIST_BACKEND=gloo"):
        common.local_gpu()
    monkeypatch.setenv(common.BACKEND_ENV, "GLOO")
    assert common.dist_backend(True) == "gloo" and common.local_gpu() == 0
    monkeypatch.setenv(common.BACKEND_ENV, "mpi")
    with pytest.raises(InputError, match="use nccl or gloo"):
        common.dist_backend(True)
    monkeypatch.setenv(common.BACKEND_ENV, "nccl")
    with pytest.raises(InputError, match="needs --device cuda"):
        common.dist_backend(False)


def test_sync_batchnorm_asks_for_nccl_on_gpus():
    """gloo cannot all-gather CUDA tensors (torch's backend table), which SyncBatchNorm needs: a run whose GPU
    ranks share gloo (PSA_EADER_DIST_BACKEND=gloo) must set sync_bn=false, and is told so."""
    from psa_baseline.training import sync_bn_problem
    assert sync_bn_problem("cuda", "nccl") is None
    assert "sync_bn=false" in sync_bn_problem("cuda", "gloo") and "PSA_EADER_DIST_BACKEND" in sync_bn_problem("cuda", "gloo")
    assert "CUDA only" in sync_bn_problem("cpu", "gloo")
