"""Loading ademxapp / PSA / our own weight files into tiny WideResNet-38s."""
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from psa_baseline.cam_net import CAMNet
from psa_baseline.errors import InputError
from psa_baseline.mxnet_params import write_params
from psa_baseline.resnet38 import Res38Spec, WideResNet38
from psa_baseline.weights import (DROPPED, ademxapp_to_psa, convert_mxnet_to_torch, load_weights, main,
                                  read_weight_file)

TINY = dict(width=0.0625, blocks=(1, 1, 1, 1))
GENUINE = Path("/work/shared/data/mxnet-params/insightface_mtcnn_det1-0001.params")
BN_INV = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_var"}


def tiny_backbone(seed):
    torch.manual_seed(seed)
    net = WideResNet38(Res38Spec(**TINY))
    with torch.no_grad():  # non-trivial BN statistics, so a swapped mean/var would show
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5), m.bias.normal_(), m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
    return net


def psa_to_ademxapp(key):
    """Inverse of PSA's converter, written independently of the code under test."""
    if key == "conv1a.weight":
        return "arg:conv1a_weight"
    module, param = key.rsplit(".", 1)
    prefix = "aux:" if param.startswith("running") else "arg:"
    if module == "bn7":
        return f"{prefix}bn7_{BN_INV[param]}"
    block, layer = module.split(".")
    level, _, sub = block[1:].partition("_")
    name = level + (f"b{sub}" if sub else "a")
    kind, branch = layer.split("_branch")
    if kind == "conv":
        return f"arg:res{name}_branch{branch}_weight"
    return f"{prefix}bn{name}_branch{branch}_{BN_INV[param]}"


def ademxapp_file(net, path, layout="legacy", classes=1000):
    arrays = {psa_to_ademxapp(k): v.numpy() for k, v in net.state_dict().items()
              if not k.endswith("num_batches_tracked")}
    width = net.out_channels["conv6"]
    arrays[f"arg:linear{classes}_weight"] = np.ones((classes, width), np.float32)
    arrays[f"arg:linear{classes}_bias"] = np.zeros(classes, np.float32)
    write_params(path, arrays, layout=layout)
    return arrays


def assert_same(a: dict, b: dict, keys):
    for k in keys:
        assert torch.equal(a[k], b[k]), k


def test_name_scheme_examples():
    # PSA's convert_mxnet_to_torch on ademxapp names (network/resnet38d.py)
    assert ademxapp_to_psa("arg:conv1a_weight") == "conv1a.weight"
    assert ademxapp_to_psa("arg:res2a_branch1_weight") == "b2.conv_branch1.weight"
    assert ademxapp_to_psa("arg:res2b1_branch2a_weight") == "b2_1.conv_branch2a.weight"
    assert ademxapp_to_psa("arg:bn2a_branch2a_gamma") == "b2.bn_branch2a.weight"
    assert ademxapp_to_psa("arg:bn3b2_branch2b1_beta") == "b3_2.bn_branch2b1.bias"
    assert ademxapp_to_psa("aux:bn4b5_branch2b1_moving_var") == "b4_5.bn_branch2b1.running_var"
    assert ademxapp_to_psa("aux:bn6a_branch2b2_moving_mean") == "b6.bn_branch2b2.running_mean"
    assert ademxapp_to_psa("arg:res7a_branch2b2_weight") == "b7.conv_branch2b2.weight"
    assert ademxapp_to_psa("arg:bn7_beta") == "bn7.bias"
    assert ademxapp_to_psa("bn7_moving_var") == "bn7.running_var"
    assert ademxapp_to_psa("arg:linear1000_weight") is DROPPED
    assert ademxapp_to_psa("arg:linear1000_bias") is DROPPED
    for other in ("arg:fc1_weight", "arg:res2a_branch1_gamma", "arg:bn2a_branch1_gamma", "conv1a.weight"):
        assert ademxapp_to_psa(other) is None, other


def test_full_ademxapp_scheme_covers_full_network():
    # ademxapp model A1 (util/symbol/resnet_v2.py): levels 2-5 have blocks a, b1.. (3, 3, 6, 3 blocks),
    # levels 6 and 7 one bottleneck each; every first block has a projection shortcut (branch1).
    names = ["arg:conv1a_weight", "arg:linear1000_weight", "arg:linear1000_bias"]
    names += [f"{'aux' if p.startswith('moving') else 'arg'}:bn7_{p}" for p in BN_INV.values()]
    for level, nblocks, bottleneck in ((2, 3, 0), (3, 3, 0), (4, 6, 0), (5, 3, 0), (6, 1, 1), (7, 1, 1)):
        for i in range(nblocks):
            blk = f"{level}a" if i == 0 else f"{level}b{i}"
            branches = ["2a", "2b1"] + (["2b2"] if bottleneck else [])
            names += [f"arg:res{blk}_branch{b}_weight" for b in branches + (["1"] if i == 0 else [])]
            names += [f"{'aux' if p.startswith('moving') else 'arg'}:bn{blk}_branch{b}_{p}"
                      for b in branches for p in BN_INV.values()]
    mapped = [ademxapp_to_psa(n) for n in names]
    assert mapped.count(DROPPED) == 2 and None not in mapped
    with torch.device("meta"):  # the 105 M-parameter network, without allocating it
        keys = [k for k in WideResNet38().state_dict() if not k.endswith("num_batches_tracked")]
    kept = [m for m in mapped if m is not DROPPED]
    assert len(kept) == len(set(kept))
    assert sorted(kept) == sorted(keys)


@pytest.mark.parametrize("layout", ["legacy", "v2"])
def test_ademxapp_params_into_backbone(layout, tmp_path, caplog):
    src = tiny_backbone(1)
    p = tmp_path / "ilsvrc-cls_rna-a1_cls1000_ep-0001.params"
    ademxapp_file(src, p, layout)
    dst = tiny_backbone(2)
    with caplog.at_level(logging.INFO, logger="psa_baseline.weights"):
        rep = load_weights(dst, p)
    keys = [k for k in src.state_dict() if not k.endswith("num_batches_tracked")]
    assert rep.kind == "mxnet"
    assert sorted(rep.loaded) == sorted(keys)
    assert rep.missing == [] and rep.unexpected == [] and rep.shape_mismatch == []
    assert sorted(rep.dropped) == ["arg:linear1000_bias", "arg:linear1000_weight"]
    assert_same(src.state_dict(), dst.state_dict(), keys)
    assert "loaded %d tensors" % len(keys) in caplog.text and "linear1000" in caplog.text
    src.eval(), dst.eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(src(x)["conv6"], dst(x)["conv6"])


def test_ademxapp_params_into_camnet_and_converted(tmp_path):
    src = tiny_backbone(1)
    p = tmp_path / "imagenet.params"
    ademxapp_file(src, p)
    net = CAMNet(Res38Spec(**TINY))
    fc8 = net.fc8.weight.clone()
    rep = load_weights(net, p, kind="mxnet")
    keys = [k for k in src.state_dict() if not k.endswith("num_batches_tracked")]
    assert sorted(rep.loaded) == sorted("backbone." + k for k in keys)
    assert rep.missing == ["fc8.weight"]
    assert torch.equal(net.fc8.weight, fc8)
    assert_same(src.state_dict(), net.backbone.state_dict(), keys)

    # (b) the converted PyTorch state dict, PSA names without `backbone.`
    out = tmp_path / "res38_imagenet.pth"
    sd = convert_mxnet_to_torch(p, out)
    on_disk = torch.load(out, weights_only=True)
    assert sorted(on_disk) == sorted(sd) == sorted(keys)
    assert_same(src.state_dict(), on_disk, keys)
    net2 = CAMNet(Res38Spec(**TINY))
    rep = load_weights(net2, out)
    assert rep.kind == "torch" and len(rep.loaded) == len(keys) and rep.missing == ["fc8.weight"]
    assert_same(src.state_dict(), net2.backbone.state_dict(), keys)


def test_cli_convert(tmp_path, capsys):
    p = tmp_path / "imagenet.params"
    ademxapp_file(tiny_backbone(1), p)
    out = tmp_path / "sub" / "out.pth"
    assert main(["convert", str(p), str(out)]) == 0
    assert "wrote" in capsys.readouterr().out and out.is_file()
    assert main(["info", str(p)]) == 0
    assert "arg:res2a_branch1_weight" in capsys.readouterr().out
    # a genuine but non-ademxapp MXNet file is refused, nothing written
    bad = tmp_path / "bad.pth"
    assert main(["convert", str(GENUINE), str(bad)]) == 2
    assert "not an ademxapp" in capsys.readouterr().err and not bad.exists()


def test_psa_res38_cls_into_camnet(tmp_path):
    src = CAMNet(Res38Spec(**TINY))
    # PSA's file: top-level backbone keys + fc8, no num_batches_tracked (PyTorch 0.4)
    sd = {k.replace("backbone.", "", 1): v for k, v in src.state_dict().items()
          if not k.endswith("num_batches_tracked")}
    assert "conv1a.weight" in sd and "fc8.weight" in sd
    p = tmp_path / "res38_cls.pth"
    torch.save(sd, p)
    dst = CAMNet(Res38Spec(**TINY))
    rep = load_weights(dst, p, strict=True)
    assert rep.missing == [] and rep.unexpected == [] and rep.dropped == []
    assert len(rep.loaded) == len(sd)
    keys = [k for k in src.state_dict() if not k.endswith("num_batches_tracked")]
    assert_same(src.state_dict(), dst.state_dict(), keys)


def test_psa_res38_aff_into_camnet(tmp_path):
    src = tiny_backbone(3)
    sd = dict(src.state_dict())
    for name, cin, cout in (("f8_3", 32, 4), ("f8_4", 64, 8), ("f8_5", 256, 16), ("f9", 28, 28)):
        sd[f"{name}.weight"] = torch.randn(cout, cin, 1, 1)
    p = tmp_path / "res38_aff.pth"
    torch.save(sd, p)
    dst = CAMNet(Res38Spec(**TINY))
    rep = load_weights(dst, p)
    assert sorted(rep.unexpected) == ["f8_3.weight", "f8_4.weight", "f8_5.weight", "f9.weight"]
    assert rep.missing == ["fc8.weight"]
    assert_same(src.state_dict(), dst.backbone.state_dict(), src.state_dict())
    with pytest.raises(InputError, match="strict"):
        load_weights(CAMNet(Res38Spec(**TINY)), p, strict=True)


def test_our_checkpoint_with_ddp_prefix(tmp_path):
    src = CAMNet(Res38Spec(**TINY))
    ckpt = {"model": {"module." + k: v for k, v in src.state_dict().items()},
            "optimizer": {"state": {}, "param_groups": []}, "epoch": 3}
    p = tmp_path / "ckpt.pth"
    torch.save(ckpt, p)
    dst = CAMNet(Res38Spec(**TINY))
    rep = load_weights(dst, p, strict=True)
    assert len(rep.loaded) == len(src.state_dict())
    assert_same(src.state_dict(), dst.state_dict(), src.state_dict())
    # the same checkpoint fills a bare backbone; the head is reported, not forced in
    bare = WideResNet38(Res38Spec(**TINY))
    rep = load_weights(bare, p)
    assert rep.unexpected == ["module.fc8.weight"] and rep.missing == []
    assert_same(src.backbone.state_dict(), bare.state_dict(), bare.state_dict())


def test_no_matching_key_refused(tmp_path):
    net = CAMNet(Res38Spec(**TINY))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(InputError, match=r"none of its 13 tensors matches") as e:
        load_weights(net, GENUINE)  # a real MXNet file, but a face detector
    assert str(GENUINE) in str(e.value)
    p = tmp_path / "other.pth"
    torch.save({"encoder.layer1.weight": torch.zeros(3)}, p)
    with pytest.raises(InputError, match=r"other.pth: none of its 1 tensors"):
        load_weights(net, p)
    assert_same(before, net.state_dict(), before)


def test_wrong_width_refused(tmp_path):
    p = tmp_path / "wide.params"
    ademxapp_file(WideResNet38(Res38Spec(width=0.125, blocks=(1, 1, 1, 1))), p)
    net = WideResNet38(Res38Spec(**TINY))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(InputError, match=r"(?s)wrong shape.*conv1a.weight: file \(8, 3, 3, 3\) vs module "
                                         r"\(4, 3, 3, 3\).*factor of about 2.*width multiplier"):
        load_weights(net, p)
    assert_same(before, net.state_dict(), before)  # nothing half-loaded


def test_bad_files_refused(tmp_path):
    net = WideResNet38(Res38Spec(**TINY))
    with pytest.raises(InputError, match="does not exist"):
        load_weights(net, tmp_path / "missing.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"this is not a checkpoint" * 10)
    with pytest.raises(InputError, match=r"junk.pth cannot be read as weights"):
        load_weights(net, junk)
    p = tmp_path / "cut.params"
    ademxapp_file(tiny_backbone(1), p)
    p.write_bytes(p.read_bytes()[:-100])
    with pytest.raises(InputError, match=r"cut.params: truncated"):
        load_weights(net, p)
    t = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), t)
    with pytest.raises(InputError, match="expected a state dict"):
        read_weight_file(t)


class _RunsCode:
    """Unpickling this calls print: a file that carries code."""
    def __reduce__(self):
        return (print, ("code ran",))


@pytest.mark.parametrize("content", ["torn", "code", "list"])
def test_every_weights_loader_refuses_a_bad_file_alike(content, tmp_path, capsys):
    """One reader (psa_baseline.weights.read_state_dict) behind the ImageNet loaders of both libraries and the
    stages' trained-weights loader: a torn file, one that carries code (never run) and one that is no state
    dict all stop with an InputError naming the file."""
    from psa_eader.adversary import build_resnet, load_backbone_weights
    from psa_baseline.weights import read_weight_file
    from stages.builders import load_stage_weights
    path = tmp_path / "w.pth"
    if content == "torn":
        path.write_bytes(b"PK\x03\x04 torn")
    else:
        torch.save({"fc.weight": _RunsCode()} if content == "code" else [torch.zeros(1)], path)
    expect = "holds a list" if content == "list" else "cannot be read as weights"
    for load in (lambda: read_weight_file(path),
                 lambda: load_backbone_weights(build_resnet("resnet18", 0.125, 20), path),
                 lambda: load_stage_weights(torch.nn.Linear(1, 1), path, "the net", "net.*", "train-cam")):
        with pytest.raises(InputError, match=expect) as e:
            load()
        assert str(path) in str(e.value)
    assert "code ran" not in capsys.readouterr().out
    with pytest.raises(InputError, match="not found"):
        load_backbone_weights(build_resnet("resnet18", 0.125, 20), tmp_path / "none.pth")
