import pytest
import torch

from conftest import tiny_spec
from psa_baseline.cam_net import CAMNet
from psa_baseline.resnet38 import Res38Spec, WideResNet38
from psa_baseline.training import PolyOptimizer


def test_full_network_shapes_and_parameter_count():
    net = CAMNet()  # full width, frozen BN: the paper's network
    n = sum(p.numel() for p in net.parameters())
    assert 104e6 < n < 106e6, n  # "about 105 M parameters with the head"
    assert n == 105_152_832
    assert net.backbone.out_channels == {"conv4": 512, "conv5": 1024, "conv6": 4096}
    names = [k for k, _ in net.backbone.named_children()]
    assert names[:4] == ["conv1a", "b2", "b3", "b4"]
    for k in ["b2_1", "b2_2", "b3_2", "b4_5", "b5_2", "b6", "b7", "bn7"]:
        assert hasattr(net.backbone, k)
    assert not hasattr(net.backbone, "b4_6")
    # dilations: b5 2, b6/b7 4; dropout rates 0.3 / 0.5
    assert net.backbone.b5.conv_branch2b1.dilation == (2, 2)
    assert net.backbone.b6.conv_branch2b1.dilation == (4, 4)
    assert net.backbone.b6.dropout_2b1.p == 0.3 and net.backbone.b7.dropout_2b2.p == 0.5
    assert net.fc8.bias is None and net.fc8.weight.shape == (20, 4096, 1, 1)
    net.eval()
    with torch.inference_mode():
        f = net.backbone(torch.randn(1, 3, 64, 80))
    assert f["conv4"].shape == (1, 512, 8, 10)
    assert f["conv5"].shape == (1, 1024, 8, 10)
    assert f["conv6"].shape == (1, 4096, 8, 10)


def test_every_conv_dilation_and_stride_is_psas():
    """Every 3x3 conv of the backbone (PSA's resnet38d): b5's first conv dilation 1 then 2, b5_* 2,
    b6 and b7 4, everything else 1; padding = dilation (size kept); stride 2 only in b2, b3, b4."""
    net = WideResNet38(Res38Spec(width=0.125))  # PSA's block counts (2, 2, 5, 2); width does not matter
    expected = {"b5.conv_branch2a": 1, "b5.conv_branch2b1": 2, "b6.conv_branch2b1": 4, "b7.conv_branch2b1": 4}
    for i in (1, 2):
        expected[f"b5_{i}.conv_branch2a"] = expected[f"b5_{i}.conv_branch2b1"] = 2
    seen = {}
    for name, m in net.named_modules():
        if isinstance(m, torch.nn.Conv2d):
            seen[name] = (m.dilation, m.padding, m.stride)
    assert "b7.conv_branch2b1" in seen and "b5_2.conv_branch2b1" in seen and "b4_5.conv_branch2b1" in seen
    for name, (dil, pad, stride) in seen.items():
        k = net.get_submodule(name).kernel_size
        d = expected.get(name, 1)
        assert dil == (d, d), (name, dil, d)
        assert pad == ((d, d) if k == (3, 3) else (0, 0)), (name, pad)
        strided = name in ("b2.conv_branch2a", "b2.conv_branch1", "b3.conv_branch2a", "b3.conv_branch1",
                           "b4.conv_branch2a", "b4.conv_branch1")
        assert stride == ((2, 2) if strided else (1, 1)), (name, stride)
    assert {n for n, v in seen.items() if v[0] != (1, 1)} == {n for n, d in expected.items() if d != 1}


def test_output_stride_8_at_448():
    net = WideResNet38(tiny_spec()).eval()
    with torch.inference_mode():
        f = net(torch.randn(1, 3, 448, 448))
    assert f["conv6"].shape[-2:] == (56, 56)


def test_frozen_bn_and_stem_really_frozen():
    torch.manual_seed(0)
    net = CAMNet(Res38Spec(width=0.125, blocks=(1, 1, 1, 1)))  # frozen_bn, frozen_stem defaults
    net.train()
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(not m.training for m in bns)
    assert all(not p.requires_grad for m in bns for p in m.parameters())
    assert all(not p.requires_grad for p in net.backbone.conv1a.parameters())
    assert all(not p.requires_grad for p in net.backbone.b2_1.parameters())
    assert net.backbone.b3.conv_branch2a.weight.requires_grad
    before = {k: v.clone() for k, v in net.state_dict().items()}
    opt = PolyOptimizer(net.param_groups(), 0.1, 5e-4, max_step=10)
    for _ in range(2):
        loss = net(torch.randn(2, 3, 32, 32)).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = net.state_dict()
    for k, v in before.items():
        frozen = "bn" in k.split(".")[-2] or k.startswith("backbone.conv1a") or k.startswith("backbone.b2")
        if frozen:
            assert torch.equal(v, after[k]), k  # running stats and frozen weights unchanged
    assert not torch.equal(before["fc8.weight"], after["fc8.weight"])
    assert not torch.equal(before["backbone.b3.conv_branch2a.weight"], after["backbone.b3.conv_branch2a.weight"])
    # dropout stays active in training mode
    x = torch.randn(1, 3, 32, 32)
    assert not torch.equal(net(x), net(x))


def test_trainable_bn_option_updates_statistics():
    net = CAMNet(tiny_spec()).train()
    bn = net.backbone.b3.bn_branch2a
    mean0 = bn.running_mean.clone()
    net(torch.randn(2, 3, 32, 32))
    assert bn.training and bn.weight.requires_grad
    assert not torch.equal(mean0, bn.running_mean)


def test_param_groups_and_poly_schedule_with_momentum_quirk():
    net = CAMNet(Res38Spec(width=0.125, blocks=(1, 1, 1, 1)))
    groups = net.param_groups()
    assert len(groups[2]) == 1 and groups[2][0] is net.fc8.weight and groups[3] == []
    assert len(groups[0]) > 0 and len(groups[1]) == 0  # frozen BN: no pretrained biases train
    opt = PolyOptimizer(groups, 0.1, 5e-4, max_step=100)
    assert [g["lr"] for g in opt.param_groups] == [0.1, 1.0]
    assert [g["weight_decay"] for g in opt.param_groups] == [5e-4, 5e-4]
    assert all(g["momentum"] == 5e-4 for g in opt.param_groups)  # PSA's quirk
    opt2 = PolyOptimizer(groups, 0.1, 5e-4, max_step=100, momentum_quirk=False)
    assert all(g["momentum"] == 0.9 for g in opt2.param_groups)
    for _ in range(51):
        opt.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * (1 - 50 / 100) ** 0.9)
    assert opt.param_groups[1]["lr"] == pytest.approx(1.0 * (1 - 50 / 100) ** 0.9)
    sd = opt.state_dict()
    opt3 = PolyOptimizer(groups, 0.1, 5e-4, max_step=100)
    opt3.load_state_dict(sd)
    assert opt3.global_step == 51


def test_trainable_bn_goes_into_groups():
    net = CAMNet(tiny_spec())
    g = net.param_groups()
    n_train = sum(p.numel() for p in net.parameters() if p.requires_grad)
    assert sum(p.numel() for grp in g for p in grp) == n_train
    assert len(g[1]) > 0  # BN biases with the pretrained biases (2x lr, no decay)


def test_forward_with_cam_matches_forward_cam_in_eval():
    net = CAMNet(tiny_spec()).eval()
    x = torch.randn(2, 3, 40, 48)
    with torch.inference_mode():
        logits, cams = net(x, with_cam=True)
        assert torch.allclose(cams, net.forward_cam(x))
        assert torch.allclose(logits, net(x))
        # GAP of the pre-ReLU CAM equals the logits (fc8 is linear, no bias)
        pre = torch.nn.functional.conv2d(net.backbone(x)["conv6"], net.fc8.weight)
        assert torch.allclose(pre.mean((2, 3)), logits, atol=1e-5)
