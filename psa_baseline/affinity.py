"""PSA's AffinityNet: feature head, pairwise affinities within a radius, affinity labels and loss.

Facts from PSA's public code (network/resnet38_aff.py, voc12/data.py, train_aff.py, infer_aff.py):
- Head: f8_3 (conv4 -> 64), f8_4 (conv5 -> 128), f8_5 (conv6 -> 256), 1x1 convs without bias, each
  followed by ELU; concatenated (448) and f9 (1x1, 448 -> 448, no bias) followed by ELU. No
  normalisation layer: the public resnet38_aff has no GroupNorm (its get_parameter_groups merely
  tests for GroupNorm modules, of which there are none). Init: kaiming_normal for f8_*, xavier_uniform
  with gain 4 for f9.
- Pairs: offsets (dy, dx) of the half disc {(0, 1..r-1)} + {dy in 1..r-1, |dx| <= r-1, dx^2+dy^2 < r^2}
  (34 offsets for r = 5), so each unordered pair appears once. PSA only takes "from" pixels in the
  crop rows [0, h-r+1) x cols [r-1, w-r+1), which keeps every target inside the image but drops some
  pairs along the left/right/bottom borders. Here every (pixel, offset) slot exists and a boolean
  mask marks the valid pairs; `psa_crop=True` (default) reproduces PSA's pair set exactly, False uses
  every in-image pair.
- Affinity: exp(-mean_channels |f_i - f_j|).
"""
import math
from functools import lru_cache

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .constants import IGNORE
from .errors import InputError
from .resnet38 import Res38Spec, WideResNet38, param_groups

HEAD_NAMES = ("f8_3", "f8_4", "f8_5", "f9")


def pair_offsets(radius=5):
    """PSA's search_dist: the half disc of offsets (dy, dx), each unordered pair once."""
    offs = [(0, dx) for dx in range(1, radius)]
    offs += [(dy, dx) for dy in range(1, radius) for dx in range(-radius + 1, radius)
             if dx * dx + dy * dy < radius * radius]
    return offs


@lru_cache(maxsize=32)
def pair_indices(h, w, radius=5, psa_crop=True):
    """(to_index, valid) for every (offset p, pixel i) on an h x w grid, both (P, N), N = h * w.

    to_index[p, i] is the flat index of i + offset p (i itself where invalid, so gathers stay in
    range). Cached: treat the returned tensors as read-only.
    """
    ys, xs = np.mgrid[0:h, 0:w]
    ys, xs = ys.reshape(-1), xs.reshape(-1)
    r1 = radius - 1
    from_ok = (ys < h - r1) & (xs >= r1) & (xs < w - r1) if psa_crop else np.ones(h * w, bool)
    to_idx, valid = [], []
    for dy, dx in pair_offsets(radius):
        ty, tx = ys + dy, xs + dx
        ok = from_ok & (ty >= 0) & (ty < h) & (tx >= 0) & (tx < w)
        to_idx.append(np.where(ok, ty * w + tx, ys * w + xs))
        valid.append(ok)
    return torch.from_numpy(np.stack(to_idx)), torch.from_numpy(np.stack(valid))


def feature_affinities(features, radius=5, psa_crop=True):
    """(B, C, h, w) features -> (B, P, N) affinities exp(-mean_c |f_i - f_j|); invalid pairs are 0."""
    b, c, h, w = features.shape
    to_idx, valid = pair_indices(h, w, radius, psa_crop)
    to_idx, valid = to_idx.to(features.device), valid.to(features.device)
    f = features.reshape(b, c, h * w)
    out = []
    for p in range(to_idx.shape[0]):  # one offset at a time: peak memory B*C*N, not B*C*P*N
        ft = f.index_select(2, to_idx[p])
        out.append(torch.exp(-(f - ft).abs().mean(1)))
    return torch.stack(out, 1) * valid.to(features.dtype)


class AffinityNet(nn.Module):
    """WideResNet-38 + PSA's affinity head. `forward` gives the (B, 448, h, w) stride-8 features."""

    def __init__(self, spec: Res38Spec = None, radius=5, psa_crop=True):
        super().__init__()
        self.backbone = WideResNet38(spec)
        oc = self.backbone.out_channels
        self.f8_3 = nn.Conv2d(oc["conv4"], 64, 1, bias=False)
        self.f8_4 = nn.Conv2d(oc["conv5"], 128, 1, bias=False)
        self.f8_5 = nn.Conv2d(oc["conv6"], 256, 1, bias=False)
        self.f9 = nn.Conv2d(448, 448, 1, bias=False)
        for m in (self.f8_3, self.f8_4, self.f8_5):
            nn.init.kaiming_normal_(m.weight)
        nn.init.xavier_uniform_(self.f9.weight, gain=4)
        self.new_layers = [self.f8_3, self.f8_4, self.f8_5, self.f9]
        self.radius = radius
        self.psa_crop = psa_crop

    def forward(self, x):
        d = self.backbone(x)
        f = torch.cat([F.elu(self.f8_3(d["conv4"])), F.elu(self.f8_4(d["conv5"])),
                       F.elu(self.f8_5(d["conv6"]))], 1)
        return F.elu(self.f9(f))

    def affinities(self, features, radius=None):
        """(B, P, N) affinities for the pairs of `pair_indices` (invalid pairs 0)."""
        return feature_affinities(features, radius or self.radius, self.psa_crop)

    def train(self, mode=True):
        super().train(mode)
        self.backbone.train(mode)  # re-apply frozen BN / stem
        return self

    def param_groups(self):
        return param_groups(self, self.new_layers)

    def load_psa_state_dict(self, sd, strict=True):
        """Load PSA's flat `res38_aff.pth` keys (conv1a..., bn7..., f8_3...) into this module layout."""
        mapped = {(k if k.split(".")[0] in HEAD_NAMES else "backbone." + k): v for k, v in sd.items()}
        return self.load_state_dict(mapped, strict=strict)


class AffinityLabels:
    """PSA's ExtractAffinityLabelInRadius on a feature-grid label map (0 bg, 1..20 class, 255 ignore).

    Returns float32 (P, N) masks bg_pos (both 0), fg_pos (same class > 0), neg (different classes),
    all restricted to valid pairs whose two ends are not 255.
    """

    def __init__(self, radius=5, psa_crop=True):
        self.radius = radius
        self.psa_crop = psa_crop

    def __call__(self, label):
        lab = torch.as_tensor(np.asarray(label)).long()
        if lab.ndim != 2:
            raise InputError(f"affinity label map must be 2-D (h x w), got shape {tuple(lab.shape)}")
        h, w = lab.shape
        to_idx, valid = pair_indices(h, w, self.radius, self.psa_crop)
        lf = lab.reshape(1, -1)
        lt = lab.reshape(-1)[to_idx]
        ok = valid & (lf != IGNORE) & (lt != IGNORE)
        same = lf == lt
        bg_pos = ok & same & (lf == 0)
        fg_pos = ok & same & (lf != 0)
        neg = ok & ~same
        return bg_pos.float(), fg_pos.float(), neg.float()


def _stack_scores(d, what):
    keys = sorted(d)
    arrs = [np.asarray(d[k], dtype=np.float32) for k in keys]
    if not keys or any(a.shape != arrs[0].shape or a.ndim != 2 for a in arrs):
        raise InputError(f"{what} CRF dict must map class keys to HxW maps of one size; got "
                         f"{ {k: np.shape(d[k]) for k in keys} }; regenerate it with cam_dict_to_crf")
    return keys, np.stack(arrs)


def make_seg_label(la_dict, ha_dict, shape=None, stride=8):
    """PSA's affinity training label from la/ha CRF dicts ({0: bg, c+1: class c}, same keys).

    Follows voc12/data.py (VOC12AffDataset): score maps (already cropped/flipped by the caller, zeros
    outside the image) are average-pooled by `stride` (block mean, zero padded to `shape` * stride,
    or to the next multiple of stride); then label = argmax(la); where la says background -> 255
    (la = low alpha = amplified background, so only its foreground is trusted); where ha says
    background -> 0 (ha = high alpha = weak background, so its background is trusted); where every
    la and ha score is < 1e-5 (crop padding) -> 255. Returns uint8 (h, w) with class ids 0..20 / 255.
    """
    la_keys, la = _stack_scores(la_dict, "la")
    ha_keys, ha = _stack_scores(ha_dict, "ha")
    if la_keys != ha_keys or la.shape != ha.shape or la_keys[0] != 0:
        raise InputError(f"la/ha CRF dicts disagree (keys {la_keys} vs {ha_keys}, sizes {la.shape[1:]} "
                         f"vs {ha.shape[1:]}) or lack background key 0; make both from the same CAM file")
    H, W = la.shape[1:]
    h, w = shape if shape is not None else (-(-H // stride), -(-W // stride))
    if H > h * stride or W > w * stride:
        raise InputError(f"score maps {H} x {W} do not fit the {h} x {w} grid at stride {stride}")
    scores = np.zeros((la.shape[0] * 2, h * stride, w * stride), np.float32)
    scores[:, :H, :W] = np.concatenate([la, ha])
    pooled = scores.reshape(-1, h, stride, w, stride).mean((2, 4))
    no_score = pooled.max(0) < 1e-5
    la_arg = pooled[:len(la_keys)].argmax(0)
    ha_arg = pooled[len(la_keys):].argmax(0)
    label = np.asarray(la_keys, np.uint8)[la_arg]
    label[la_arg == 0] = IGNORE
    label[ha_arg == 0] = 0
    label[no_score] = IGNORE
    return label


# a positive pair's loss when its affinity is 0: PSA's -log(aff + 1e-5)
POS_LOSS_FLOOR = -math.log(1e-5)


def collapse_warning(bg, fg, tol=0.01):
    """A warning when both positive-pair losses sit at their floor, else None. Then every same-label pair's
    affinity is ~0: the network calls every pair different and the random walk leaves the CAMs almost as they
    are. The loss stays finite, so the divergence check of the training loop does not see it."""
    if min(bg, fg) < POS_LOSS_FLOOR * (1 - tol):
        return None
    return (f"AffinityNet collapsed: its positive-pair losses (bg {bg:.4g}, fg {fg:.4g}) sit at the floor "
            f"-ln(1e-5) = {POS_LOSS_FLOOR:.4g}, so every affinity is ~0 and the random walk will leave the CAMs "
            f"almost as they are. Rerun train-aff with --force and a lower aff_train.lr, or with another --seed")


def affinity_loss(aff, bg_pos, fg_pos, neg):
    """PSA's loss: count-normalised -log terms, total = bg/4 + fg/4 + neg/2. Returns (total, bg, fg, neg)."""
    bg_loss = torch.sum(-bg_pos * torch.log(aff + 1e-5)) / (bg_pos.sum() + 1e-5)
    fg_loss = torch.sum(-fg_pos * torch.log(aff + 1e-5)) / (fg_pos.sum() + 1e-5)
    neg_loss = torch.sum(-neg * torch.log(1. + 1e-5 - aff)) / (neg.sum() + 1e-5)
    return bg_loss / 4 + fg_loss / 4 + neg_loss / 2, bg_loss, fg_loss, neg_loss
