"""WideResNet-38 ("model A1", Wu et al.), output stride 8, as PSA uses it.

Module names follow PSA's code (conv1a, b2, b2_1, ..., bn7 and conv_branch*/bn_branch* inside blocks)
so that PSA's trained `res38_cls.pth` / `res38_aff.pth` and the converted ademxapp ImageNet weights
load without renaming. `width` scales every channel count and `blocks` sets how many extra blocks follow
the first block of B2..B5, for CPU-sized configurations; the defaults are the full network.
"""
from dataclasses import dataclass, field

import torch.nn as nn
import torch.nn.functional as F


FULL_BLOCKS = (2, 2, 5, 2)  # extra blocks after b2, b3, b4, b5


@dataclass
class Res38Spec:
    width: float = 1.0
    blocks: tuple = FULL_BLOCKS
    frozen_bn: bool = True       # BN in eval mode with fixed affine (right for ImageNet init)
    frozen_stem: bool = True     # conv1a and B2 not trained (PSA's `not_training`)
    bn_eps: float = 1e-5
    extra: dict = field(default_factory=dict)

    def ch(self, c):
        return max(4, int(round(c * self.width)))


class ResBlock(nn.Module):
    """Pre-activation basic block: BN-ReLU, 3x3 conv, BN-ReLU, 3x3 conv, plus shortcut."""

    def __init__(self, cin, cmid, cout, stride=1, first_dilation=None, dilation=1, eps=1e-5):
        super().__init__()
        first_dilation = dilation if first_dilation is None else first_dilation
        self.same_shape = cin == cout and stride == 1
        self.bn_branch2a = nn.BatchNorm2d(cin, eps=eps)
        self.conv_branch2a = nn.Conv2d(cin, cmid, 3, stride, padding=first_dilation,
                                       dilation=first_dilation, bias=False)
        self.bn_branch2b1 = nn.BatchNorm2d(cmid, eps=eps)
        self.conv_branch2b1 = nn.Conv2d(cmid, cout, 3, padding=dilation, dilation=dilation, bias=False)
        if not self.same_shape:
            self.conv_branch1 = nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x):
        """Returns (output, BN-ReLU of the input); the latter is PSA's 'conv' feature."""
        pre = F.relu(self.bn_branch2a(x))
        shortcut = x if self.same_shape else self.conv_branch1(pre)
        y = self.conv_branch2a(pre)
        y = F.relu(self.bn_branch2b1(y))
        y = self.conv_branch2b1(y)
        return shortcut + y, pre


class BottleneckBlock(nn.Module):
    """Pre-activation bottleneck (cin -> cout/4 -> cout/2 -> cout) with Dropout2d inside (B6, B7)."""

    def __init__(self, cin, cout, stride=1, dilation=1, dropout=0.0, eps=1e-5):
        super().__init__()
        self.same_shape = cin == cout and stride == 1
        self.bn_branch2a = nn.BatchNorm2d(cin, eps=eps)
        self.conv_branch2a = nn.Conv2d(cin, cout // 4, 1, stride, bias=False)
        self.bn_branch2b1 = nn.BatchNorm2d(cout // 4, eps=eps)
        self.dropout_2b1 = nn.Dropout2d(dropout)
        self.conv_branch2b1 = nn.Conv2d(cout // 4, cout // 2, 3, padding=dilation, dilation=dilation,
                                        bias=False)
        self.bn_branch2b2 = nn.BatchNorm2d(cout // 2, eps=eps)
        self.dropout_2b2 = nn.Dropout2d(dropout)
        self.conv_branch2b2 = nn.Conv2d(cout // 2, cout, 1, bias=False)
        if not self.same_shape:
            self.conv_branch1 = nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x):
        pre = F.relu(self.bn_branch2a(x))
        shortcut = x if self.same_shape else self.conv_branch1(pre)
        y = self.conv_branch2a(pre)
        y = self.dropout_2b1(F.relu(self.bn_branch2b1(y)))
        y = self.conv_branch2b1(y)
        y = self.dropout_2b2(F.relu(self.bn_branch2b2(y)))
        y = self.conv_branch2b2(y)
        return shortcut + y, pre


class WideResNet38(nn.Module):
    """Backbone. `forward` returns {'conv4', 'conv5', 'conv6'} at stride 8."""

    def __init__(self, spec: Res38Spec = None):
        super().__init__()
        self.spec = spec = spec or Res38Spec()
        c = spec.ch
        e = spec.bn_eps
        n2, n3, n4, n5 = spec.blocks
        self.conv1a = nn.Conv2d(3, c(64), 3, padding=1, bias=False)
        self.b2 = ResBlock(c(64), c(128), c(128), stride=2, eps=e)
        self.b3 = ResBlock(c(128), c(256), c(256), stride=2, eps=e)
        self.b4 = ResBlock(c(256), c(512), c(512), stride=2, eps=e)
        self.b5 = ResBlock(c(512), c(512), c(1024), first_dilation=1, dilation=2, eps=e)
        for name, n, cin, cmid, dil in (("b2", n2, c(128), c(128), 1), ("b3", n3, c(256), c(256), 1),
                                        ("b4", n4, c(512), c(512), 1), ("b5", n5, c(1024), c(512), 2)):
            for i in range(1, n + 1):
                self.add_module(f"{name}_{i}", ResBlock(cin, cmid, cin, dilation=dil, eps=e))
        self.b6 = BottleneckBlock(c(1024), c(2048), dilation=4, dropout=0.3, eps=e)
        self.b7 = BottleneckBlock(c(2048), c(4096), dilation=4, dropout=0.5, eps=e)
        self.bn7 = nn.BatchNorm2d(c(4096), eps=e)
        self.out_channels = {"conv4": c(512), "conv5": c(1024), "conv6": c(4096)}
        self.not_training = [self.conv1a, self.b2] + [getattr(self, f"b2_{i}") for i in range(1, n2 + 1)]
        self.train()

    def _stage(self, name, x):
        x, pre = getattr(self, name)(x)
        i = 1
        while hasattr(self, f"{name}_{i}"):
            x, _ = getattr(self, f"{name}_{i}")(x)
            i += 1
        return x, pre

    def forward(self, x):
        x = self.conv1a(x)
        x, _ = self._stage("b2", x)
        x, _ = self._stage("b3", x)
        x, _ = self._stage("b4", x)
        x, conv4 = self._stage("b5", x)
        x, conv5 = self.b6(x)
        x, _ = self.b7(x)
        conv6 = F.relu(self.bn7(x))
        return {"conv4": conv4, "conv5": conv5, "conv6": conv6}

    def train(self, mode=True):
        """PSA's training mode: frozen BN stays in eval; the stem and B2 never get gradients."""
        super().train(mode)
        if self.spec.frozen_stem:
            for m in self.not_training:
                for p in m.parameters():
                    p.requires_grad_(False)
        if self.spec.frozen_bn:
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.eval()
                    for p in m.parameters():
                        p.requires_grad_(False)
        return self


def param_groups(model: nn.Module, new_layers):
    """PSA's four groups: pretrained weights, pretrained biases, new weights, new biases.

    Only parameters that train are listed. BatchNorm weight/bias (when BN trains) go with the
    pretrained weights / biases respectively.
    """
    new_ids = {id(p) for m in new_layers for p in m.parameters()}
    groups = ([], [], [], [])
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_bias = name.endswith("bias")
        groups[(2 if id(p) in new_ids else 0) + (1 if is_bias else 0)].append(p)
    return groups
