"""`psa-eader check` and `pipeline --check`: the pre-flight check on real VOC images (VOCmini) and on
copies of it with problems; every problem is listed, each with its fix, and nothing runs."""
import shutil

import pytest
import torch

from conftest import VOCMINI
from psa_baseline.cam_net import CAMNet
from psa_eader.adversary import build_resnet
from stages import check
from stages.cli import main as cli_main
from stages.config import load_config

pytestmark = pytest.mark.skipif(not VOCMINI.is_dir(), reason="../shared/data/VOCmini not available")

LISTS = ["data.train_list=ImageSets/Segmentation/train.txt",
         "data.infer_lists=[ImageSets/Segmentation/train.txt,ImageSets/Segmentation/val.txt]",
         "data.eval_list=ImageSets/Segmentation/val.txt", "crf.list=ImageSets/Segmentation/train.txt",
         "seg_train.list=ImageSets/Segmentation/train.txt", "seg_train.encoder_weights=random"]
TINY_NETS = ["net.width=0.0625", "net.blocks=[1,1,1,1]", "eader.adv_width=0.0625"]


@pytest.fixture(scope="module")
def weight_files(tmp_path_factory):
    """ImageNet-like files for the tiny networks: a WideResNet-38 backbone and a ResNet-18 with fc 1000."""
    from stages.builders import res38_spec
    d = tmp_path_factory.mktemp("weights")
    cfg = load_config("voc", TINY_NETS)
    torch.save({k: v for k, v in CAMNet(res38_spec(cfg)).state_dict().items() if k.startswith("backbone.")},
               d / "wrn.pth")
    torch.save(build_resnet("resnet18", 0.0625, num_classes=1000).state_dict(), d / "r18.pth")
    torch.save(build_resnet("resnet18", 0.125, num_classes=1000).state_dict(), d / "r18_wide.pth")
    (d / "garbage.params").write_bytes(b"this is not a weights file")
    return d


def _check(root, work, weights, *extra, cmd=("check",)):
    return cli_main([*cmd, "--config", "voc", "--voc-root", str(root), "--work-dir", str(work), "--device", "cpu",
                     *LISTS, *TINY_NETS, f"net.weights={weights / 'wrn.pth'}",
                     f"eader.adv_weights={weights / 'r18.pth'}", *extra])


def _copy_root(tmp_path, drop=(), seg=True):
    """VOCmini as links (JPEGImages without `drop`), with or without SegmentationClass."""
    root = tmp_path / "VOC2012"
    shutil.copytree(VOCMINI / "ImageSets", root / "ImageSets")
    (root / "JPEGImages").mkdir(parents=True)
    for jpg in (VOCMINI / "JPEGImages").iterdir():
        if jpg.stem not in drop:
            (root / "JPEGImages" / jpg.name).symlink_to(jpg)
    if seg:
        (root / "SegmentationClass").symlink_to(VOCMINI / "SegmentationClass")
    return root


def _train_ids(n):
    return (VOCMINI / "ImageSets/Segmentation/train.txt").read_text().split()[:n]


def test_ready_on_vocmini_prints_the_plan(weight_files, tmp_path, capsys):
    assert _check(VOCMINI, tmp_path / "work", weight_files, "--eader", "both") == 0
    out = capsys.readouterr().out
    assert "ready: every check passed" in out
    for variant in ("baseline", "eader"):
        for stage, n in (("train-cam", 100), ("make-cam", 200), ("eval-cam", 100), ("make-crf", 100),
                         ("train-aff", 100), ("make-pseudo", 200), ("eval-seg", 100), ("train-seg", 100),
                         ("make-seg", 100)):  # the whole pipeline, its default
            assert any(line.split()[:3] == [variant, stage, str(n)] for line in out.splitlines()), (variant, stage)
    assert "estimated outputs" in out
    assert not (tmp_path / "work").exists()  # a check writes nothing


def test_pipeline_check_runs_nothing(weight_files, tmp_path, capsys):
    assert _check(VOCMINI, tmp_path / "work", weight_files, "--until", "cam", cmd=("pipeline", "--check")) == 0
    out = capsys.readouterr().out
    assert "ready" in out and "train-cam" in out and "make-crf" not in out
    assert not (tmp_path / "work").exists()


def test_every_problem_is_listed_with_its_fix(weight_files, tmp_path, capsys):
    dropped = _train_ids(2)
    root = _copy_root(tmp_path, drop=dropped, seg=False)
    rc = _check(root, tmp_path / "work", weight_files, "--eader", "both", "eader.adv_weights=null",
                f"net.weights={weight_files / 'garbage.params'}")
    assert rc == 2
    err = capsys.readouterr().err
    assert "not ready, 4 problem(s)" in err
    assert "2 of the 100 ids of ImageSets/Segmentation/train.txt" in err and dropped[0] in err  # images
    assert "SegmentationClass does not exist" in err and "eval-cam" in err                     # folder
    assert "garbage.params" in err                                                              # bad file
    assert "'eader.adv_weights' is null" in err and "psa-eader weights download resnet18" in err


def test_missing_jpegimages_folder(weight_files, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert _check(tmp_path / "empty", tmp_path / "work", weight_files) == 2
    assert "has no JPEGImages directory" in capsys.readouterr().err


def test_weights_of_the_wrong_shape_or_width(weight_files, tmp_path, capsys):
    assert _check(VOCMINI, tmp_path / "work", weight_files, "--eader", "on", "net.width=0.125",
                  f"eader.adv_weights={weight_files / 'r18_wide.pth'}") == 2
    err = capsys.readouterr().err
    assert "wrn.pth: " in err and "wrong shape" in err   # WideResNet file of width 0.0625 for width 0.125
    assert "r18_wide.pth" in err                         # ResNet-18 of width 0.125 for the 0.0625 adversary


def test_missing_label_pngs_when_labels_come_from_them(weight_files, tmp_path, capsys):
    root = _copy_root(tmp_path)
    (root / "SegmentationClass").unlink()
    (root / "SegmentationClass").mkdir()  # present but empty
    assert _check(root, tmp_path / "work", weight_files, "data.cls_labels=null") == 2
    err = capsys.readouterr().err
    assert "data.cls_labels is null" in err and "no ground truth" in err


def test_not_enough_disk_space(weight_files, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(check.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9, 1000))
    assert _check(VOCMINI, tmp_path / "work", weight_files) == 2
    err = capsys.readouterr().err
    assert "1.0 KB free" in err and "--work-dir" in err


def test_output_estimates_follow_image_counts():
    cfg = load_config("voc", TINY_NETS + ["data.infer_lists=[a]", "data.eval_list=b", "data.train_list=a", "crf.list=a"])
    plan = check.planned_stages(cfg, "off", "pseudo")
    rows = {r[1]: r for r in check.stage_estimates(cfg, plan, {"a": [f"x{k}" for k in range(10)], "b": ["y1", "y2", "y3", "y4"]}, 1000, 2.0)}
    assert rows["make-cam"][2:] == (10, 10 * 2 * 1000 * 4 + check.LOG_BYTES)
    assert rows["make-crf"][2:] == (10, 10 * 2 * 3 * 1000 * 4 + check.LOG_BYTES)
    assert rows["eval-cam"][2] == 4 and "train-adv" not in rows
