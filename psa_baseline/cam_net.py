"""PSA's classification network: WideResNet-38 + Dropout2d(0.5) + GAP + 1x1 conv fc8 (no bias)."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from .constants import NUM_CLASSES
from .resnet38 import Res38Spec, WideResNet38, param_groups


class CAMNet(nn.Module):
    def __init__(self, spec: Res38Spec = None, num_classes=NUM_CLASSES):
        super().__init__()
        self.backbone = WideResNet38(spec)
        self.dropout7 = nn.Dropout2d(0.5)
        self.fc8 = nn.Conv2d(self.backbone.out_channels["conv6"], num_classes, 1, bias=False)
        nn.init.xavier_uniform_(self.fc8.weight)
        self.new_layers = [self.fc8]

    def forward(self, x):
        """Logits (B, C)."""
        return self.forward_with_cam(x)[0]

    def forward_with_cam(self, x):
        """Logits (B, C) and CAMs (B, C, h, w) from one backbone pass.

        The logits follow PSA (dropout on conv6, GAP, fc8); the CAMs are ReLU(fc8 * conv6) without
        dropout, as PSA's forward_cam computes them, so a localizer hook (EADER) gets both without a
        second forward pass.
        """
        conv6 = self.backbone(x)["conv6"]
        pooled = F.adaptive_avg_pool2d(self.dropout7(conv6), 1)
        logits = self.fc8(pooled).flatten(1)
        cams = F.relu(F.conv2d(conv6, self.fc8.weight))
        return logits, cams

    def forward_cam(self, x):
        """CAMs (B, C, h, w) as PSA's inference computes them."""
        return F.relu(F.conv2d(self.backbone(x)["conv6"], self.fc8.weight))

    def train(self, mode=True):
        super().train(mode)
        self.backbone.train(mode)  # re-apply frozen BN / stem
        return self

    def param_groups(self):
        return param_groups(self, self.new_layers)
