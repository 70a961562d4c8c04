"""PSA's classification network: WideResNet-38 + Dropout2d(0.5) + GAP + 1x1 conv fc8 (no bias)."""
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

    def forward(self, x, with_cam=False):
        """Logits (B, C); with `with_cam` also the CAMs (B, C, h, w) from the same backbone pass.

        The logits follow PSA (dropout on conv6, GAP, fc8); the CAMs are ReLU(fc8 * conv6) without
        dropout, as PSA's forward_cam computes them, so a localizer hook (EADER) gets both without a
        second forward pass. Going through forward (not a side method) keeps DDP's gradient sync.
        """
        conv6 = self.backbone(x)["conv6"]
        logits = self.fc8(F.adaptive_avg_pool2d(self.dropout7(conv6), 1)).flatten(1)
        if not with_cam:
            return logits
        return logits, F.relu(F.conv2d(conv6, self.fc8.weight))

    def forward_cam(self, x):
        """CAMs (B, C, h, w) as PSA's inference computes them."""
        return F.relu(F.conv2d(self.backbone(x)["conv6"], self.fc8.weight))

    def train(self, mode=True):
        super().train(mode)
        self.backbone.train(mode)  # re-apply frozen BN / stem
        return self

    def param_groups(self):
        return param_groups(self, self.new_layers)
