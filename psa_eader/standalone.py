"""The paper's standalone setting (section 4.2, Table 1): a torchvision ResNet localizer with Grad-CAM
on layer4, and segmentation from the attention alone with a constant background score rho.

For CPU runs pick arch='resnet18' and/or width < 1 (same topology, fewer channels).
"""
import torch
import torch.nn as nn

from .adversary import build_resnet, load_backbone_weights
from .gradcam import grad_cam


class StandaloneLocalizer(nn.Module):
    def __init__(self, arch="resnet101", width=1.0, weights=None, num_classes=20):
        super().__init__()
        self.net = build_resnet(arch, width, num_classes)
        self.weights_report = load_backbone_weights(self.net, weights) if weights else None

    def forward(self, x):
        """Logits (B,C) and layer4 features (B,K,h,w) (stride 32)."""
        n = self.net
        f = n.maxpool(n.relu(n.bn1(n.conv1(x))))
        f = n.layer4(n.layer3(n.layer2(n.layer1(f))))
        return n.fc(torch.flatten(n.avgpool(f), 1)), f

    def forward_with_attention(self, x, labels, create_graph=True):
        """Logits and Grad-CAM (B,C,h,w) on layer4 for the labelled classes, in the graph.

        Runs with grad enabled even inside torch.no_grad(), since Grad-CAM needs gradients; detach
        the result where no training is wanted (the adversary's turn).
        """
        with torch.enable_grad():
            logits, feats = self(x)
            return logits, grad_cam(feats, logits, labels, create_graph)


def segment_from_attention(att, labels, rho=0.3):
    """Label map (H,W) long: argmax over [rho, A_1..A_C]; 0 = background, c+1 = class c.

    att (C,H,W): full-resolution attention normalised to max 1; labels (C,) 0/1: absent classes never
    win. rho = 0.3 is the authors' threshold (their code zeroes A < rho under a 1e-5 background,
    which is the same argmax).
    """
    present = (labels > 0.5).view(-1, 1, 1)
    scores = torch.where(present, att, torch.full_like(att, float("-inf")))
    bg = torch.full_like(att[:1], rho)
    return torch.cat([bg, scores]).argmax(0)


StandaloneLocalizer.segment_from_attention = staticmethod(segment_from_attention)
