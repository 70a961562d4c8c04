"""The demo's stand-in for ImageNet (demo/pretrain.py): aux data apart from the target classes, made once,
reused, refused when corrupt, and read by the same code paths as ImageNet weights."""
import copy
import json

import numpy as np
import pytest
import torch

from demo import data as demo_data
from demo import pretrain as P
from psa_baseline.errors import InputError


def tiny_recipe():
    r = copy.deepcopy(P.RECIPE)
    r.update(n_train=32, n_val=16, steps=2, batch_size=8, crop=64, resize_long=[56, 80], size=[64, 80])
    r["wrn"].update(width=0.125, blocks=[1, 1, 1, 1])
    r["adv"].update(width=0.125)
    return r


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    out = tmp_path_factory.mktemp("pre") / "weights"
    r = tiny_recipe()
    return out, r, P.make(out, r)


def test_aux_classes_are_not_the_target_classes():
    designs = P.aux_designs()
    assert len(designs) == P.N_CLASSES
    targets = [(d["head"][0], d["pattern"]) for d in demo_data.class_designs(list(demo_data.DEFAULT_CLASSES))]
    for d in designs:
        for colour, pattern in targets:
            assert pattern != d["pattern"] or np.linalg.norm(d["head"][0] - colour) >= P.TARGET_MARGIN
    # its own image stream: aux image 0 is not target image 0
    aux0, _ = P.render_aux(1, 0, designs)
    tgt0 = demo_data.render_image(0, 0, demo_data.class_designs(list(demo_data.DEFAULT_CLASSES)))[0]
    assert aux0[0].shape != tgt0.shape or not np.array_equal(aux0[0], tgt0)


def test_made_once_then_reused(made, monkeypatch):
    out, r, manifest = made
    assert set(manifest["files"]) == {P.WRN_FILE, P.ADV_FILE}
    assert P.verify(out, r)["files"] == manifest["files"]
    mtimes = {f: (out / f).stat().st_mtime_ns for f in (P.WRN_FILE, P.ADV_FILE)}

    def no_retraining(*a, **k):
        raise AssertionError("ensure() retrained verified weights")
    monkeypatch.setattr(P, "make", no_retraining)
    P.ensure(out, r)
    assert {f: (out / f).stat().st_mtime_ns for f in mtimes} == mtimes


def test_missing_weights_are_made_by_ensure(tmp_path):
    r = tiny_recipe()
    said = []
    P.ensure(tmp_path / "w", r, say=said.append)
    assert said and "making them once" in said[0]
    P.verify(tmp_path / "w", r)


def test_corrupt_or_foreign_weights_are_refused_not_retrained(made, tmp_path, monkeypatch):
    import shutil
    out, r, _ = made
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    monkeypatch.setattr(P, "make", lambda *a, **k: pytest.fail("retrained instead of refusing"))
    raw = bytearray((bad / P.ADV_FILE).read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (bad / P.ADV_FILE).write_bytes(bytes(raw))
    with pytest.raises(InputError, match="corrupt"):
        P.ensure(bad, r)
    other = copy.deepcopy(r)
    other["version"] += 1
    with pytest.raises(InputError, match="another recipe"):
        P.ensure(out, other)
    (bad / P.ADV_FILE).unlink()
    with pytest.raises(InputError, match="missing"):
        P.ensure(bad, r)


def test_weights_load_through_the_imagenet_paths(made):
    """net.weights -> build_cam_net (load_weights, as ademxapp/PSA files); eader.adv_weights ->
    build_adversary (as torchvision files): every backbone tensor filled, only the heads left new."""
    from psa_baseline.cam_net import CAMNet
    from psa_baseline.resnet38 import Res38Spec
    from psa_baseline.weights import load_weights
    from psa_eader.adversary import build_adversary
    out, r, _ = made
    w = r["wrn"]
    net = CAMNet(Res38Spec(width=w["width"], blocks=tuple(w["blocks"]), frozen_bn=True, frozen_stem=True))
    rep = load_weights(net, out / P.WRN_FILE)
    assert not rep.shape_mismatch and not rep.unexpected
    assert [k for k in rep.missing if not k.endswith("num_batches_tracked")] == ["fc8.weight"]
    sd = torch.load(out / P.WRN_FILE, weights_only=True)
    key = next(k for k in sd if k.endswith("running_mean"))
    assert torch.equal(net.state_dict()[key], sd[key].float())  # BN statistics arrive (frozen BN uses them)
    adv = build_adversary(width=r["adv"]["width"], weights=str(out / P.ADV_FILE))
    loaded = adv.weights_report
    assert loaded is not None
    sd = torch.load(out / P.ADV_FILE, weights_only=True)
    assert torch.equal(adv.state_dict()["conv1.weight"], sd["conv1.weight"].float())


def test_shipped_weights_verify_and_demo_config_points_at_them():
    from stages.config import load_config
    P.verify()  # the files in demo/weights match their manifest and this code's recipe
    cfg = load_config("demo")
    from pathlib import Path
    assert Path(cfg["net"]["weights"]).name == P.WRN_FILE
    assert Path(cfg["eader"]["adv_weights"]).name == P.ADV_FILE
    manifest = json.loads((P.WEIGHTS_DIR / P.MANIFEST).read_text())
    assert cfg["net"]["width"] == manifest["recipe"]["wrn"]["width"]
    assert cfg["eader"]["adv_width"] == manifest["recipe"]["adv"]["width"]


def test_pipeline_refuses_a_null_eader_weights_key_before_the_baseline_runs(tmp_path):
    """--eader both with eader.adv_weights null stops before any stage of the baseline starts."""
    from psa_baseline.errors import InputError as IE
    from stages.config import load_config
    from stages.pipeline import run_variants
    cfg = load_config("demo", [("voc_root", str(tmp_path / "none")), ("work_dir", str(tmp_path / "w")),
                               "eader.adv_weights=null"])
    ran = []
    with pytest.raises(IE, match="eader.adv_weights"):
        run_variants(cfg, "both", log=ran.append)
    assert ran == [] and not (tmp_path / "w").exists()
