"""The adversary F: a ResNet-18 with a 20-way head (ImageNet init in the paper).

`width < 1` gives the same topology with fewer channels, for CPU configurations. Module names follow
torchvision's ResNet (conv1, bn1, layer1..layer4, fc), so torchvision's ImageNet state dicts load into
the full-width model without renaming.
"""
import logging
from pathlib import Path

import torch
import torch.nn as nn
from torchvision.models import resnet as tv

from psa_baseline.errors import InputError
from psa_baseline.weights import read_state_dict

log = logging.getLogger(__name__)

ARCHS = {  # block type and blocks per stage, as torchvision defines them
    "resnet18": (tv.BasicBlock, (2, 2, 2, 2)),
    "resnet50": (tv.Bottleneck, (3, 4, 6, 3)),
    "resnet101": (tv.Bottleneck, (3, 4, 23, 3)),
}


def stage_widths(width):
    """Channels of a ResNet's four stages (before the block expansion) at `width` times torchvision's."""
    return [max(4, int(round(c * width))) for c in (64, 128, 256, 512)]


class ScaledResNet(nn.Module):
    """torchvision's ResNet topology with every stage width multiplied by `width` (min 4 channels).

    torchvision hard-codes the widths 64/128/256/512, hence this small class; it reuses torchvision's
    BasicBlock / Bottleneck and its initialisation.
    """

    def __init__(self, block, layers, width=1.0, num_classes=20):
        super().__init__()
        planes = stage_widths(width)
        self.inplanes = planes[0]
        self.conv1 = nn.Conv2d(3, planes[0], 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(planes[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        for i, (p, n) in enumerate(zip(planes, layers)):
            self.add_module(f"layer{i + 1}", self._make_layer(block, p, n, stride=1 if i == 0 else 2))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(planes[3] * block.expansion, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(self, block, planes, n, stride):
        out = planes * block.expansion
        down = None
        if stride != 1 or self.inplanes != out:
            down = nn.Sequential(nn.Conv2d(self.inplanes, out, 1, stride, bias=False), nn.BatchNorm2d(out))
        blocks = [block(self.inplanes, planes, stride, down)]
        self.inplanes = out
        blocks += [block(out, planes) for _ in range(1, n)]
        return nn.Sequential(*blocks)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def build_resnet(arch="resnet18", width=1.0, num_classes=20):
    """torchvision's own model at width 1, the scaled copy otherwise."""
    if arch not in ARCHS:
        raise InputError(f"unknown architecture {arch!r}; choose one of {sorted(ARCHS)}")
    if width == 1.0:
        return getattr(tv, arch)(num_classes=num_classes)
    block, layers = ARCHS[arch]
    return ScaledResNet(block, layers, width, num_classes)


def load_backbone_weights(model, path, skip_prefixes=("fc.",), rename=None):
    """Load a local (ImageNet) state dict, dropping the classifier; returns a report dict. rename: a function
    from the file's key names to the model's (after a `module.` prefix is dropped).

    Keys whose shape does not fit (e.g. full-width weights into a narrow model) count as mismatched.
    A file from which nothing loads is refused: it is surely the wrong file.
    """
    path = Path(path)
    sd = read_state_dict(path, missing=f"adversary/localizer weights not found: {path}",
                         fix="give the ImageNet file of this network (`psa-eader weights list`)")
    sd = {k[7:] if k.startswith("module.") else k: v for k, v in sd.items()}
    if rename is not None:
        sd = {k if k.startswith(skip_prefixes) else rename(k): v for k, v in sd.items()}
    own = model.state_dict()
    keep, mismatched, unexpected = {}, [], []
    for k, v in sd.items():
        if k.startswith(skip_prefixes):
            continue
        if k not in own:
            unexpected.append(k)
        elif not torch.is_tensor(v) or v.shape != own[k].shape:
            mismatched.append(k)
        else:
            keep[k] = v
    if not any(not k.endswith("num_batches_tracked") for k in keep):  # BN counters fit anything
        raise InputError(f"no tensor in {path} matches the model (wrong file, or width != 1?)")
    model.load_state_dict(keep, strict=False)
    missing = [k for k in own if k not in keep and not k.startswith(skip_prefixes)]
    report = {"loaded": len(keep), "missing": missing, "unexpected": unexpected, "mismatched": mismatched}
    if missing or unexpected or mismatched:
        log.warning("weights %s: %d loaded, %d missing %s, %d unexpected %s, %d mismatched %s", path,
                    len(keep), len(missing), missing[:5], len(unexpected), unexpected[:5],
                    len(mismatched), mismatched[:5])
    return report


def build_adversary(num_classes=20, width=1.0, weights=None, keep_head=False):
    """ResNet-18 with a `num_classes`-way head; optional ImageNet weights from a local state dict
    (the classifier `fc` dropped unless keep_head, for weights trained on these same classes).

    The load report (loaded / missing / unexpected / mismatched keys) is kept as `model.weights_report`.
    """
    model = build_resnet("resnet18", width, num_classes)
    skip = () if keep_head else ("fc.",)
    model.weights_report = load_backbone_weights(model, weights, skip) if weights else None
    return model


def adversary_optimizer(model, lr=0.01, momentum=0.9, weight_decay=1e-4):
    """SGD for the adversary. lr 0.01 is the PSA-integration value (docs/reference.md); momentum 0.9 and weight
    decay 1e-4 are the authors' standalone settings (their `load_optimizer`), used for both networks.

    All parameters are registered (EADER switches requires_grad off only while the localizer trains).
    """
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
