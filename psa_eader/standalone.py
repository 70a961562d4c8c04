"""The paper's standalone setting (section 4.2, Table 1): a torchvision ResNet localizer with Grad-CAM
on layer4, and segmentation from the attention alone with a constant background score rho.

For CPU runs pick arch='resnet18' and/or width < 1 (same topology, fewer channels).
"""
import math

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

from psa_baseline.voc import normalize
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


class AuthorsAugment:
    """The authors' standalone training augmentation: torchvision's RandomResizedCrop(crop) (a box of
    8-100% of the image's area, aspect ratio 3/4-4/3, resized bilinearly to crop x crop) and a horizontal
    flip, then ImageNet normalisation; no colour jitter.

    Called like voc.ClsAugment with a HxWx3 uint8 image and a np.random.Generator (or an int seed):
    all randomness comes from that generator, so runs are reproducible whatever the number of workers
    (torchvision's own transform draws from torch's global RNG).
    """

    def __init__(self, crop=448, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
        self.crop, self.scale, self.ratio = crop, scale, ratio

    def box(self, h, w, rng):
        """(top, left, height, width): torchvision's RandomResizedCrop.get_params, drawn from rng."""
        area = h * w
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target = area * rng.uniform(*self.scale)
            aspect = math.exp(rng.uniform(*log_ratio))
            bw, bh = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
            if 0 < bw <= w and 0 < bh <= h:
                return int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1)), bh, bw
        # fallback: the central crop with the aspect ratio clamped to the range
        if w / h < min(self.ratio):
            bw, bh = w, round(w / min(self.ratio))
        elif w / h > max(self.ratio):
            bw, bh = round(h * max(self.ratio)), h
        else:
            bw, bh = w, h
        return (h - bh) // 2, (w - bw) // 2, bh, bw

    def __call__(self, img_uint8, rng) -> torch.Tensor:
        rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        im = Image.fromarray(np.asarray(img_uint8, dtype=np.uint8))
        top, left, bh, bw = self.box(im.height, im.width, rng)
        im = im.crop((left, top, left + bw, top + bh)).resize((self.crop, self.crop), Image.Resampling.BILINEAR)
        if rng.random() < 0.5:
            im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return normalize(np.asarray(im))
