"""Soft erasing masks: M_c = sigmoid(omega * (A_c - psi)), x_c = x * (1 - M_c).

The images are ImageNet-normalised, so an erased pixel (value 0) is the dataset's mean colour, not
black; this matches the authors' code (they erase the normalised tensor) and PSA's zero padding.
"""
import torch
import torch.nn.functional as F

EPS = 1e-5  # PSA's max-normalisation epsilon
NORMS = ("max", "minmax")


def normalise_attention(att, eps=EPS, norm="max"):
    """Scale each map (..., h, w) so its max is ~1.

    norm 'max': divide by the map's max (+eps), as PSA normalises its CAMs.
    norm 'minmax': subtract the map's min first, as the authors' Grad-CAM code does; it differs from
    'max' only where a map's minimum is above 0 (Grad-CAM of a class spread over the whole image).
    Differentiable (also through the max and min), so the localizer is trained through it.
    """
    if norm not in NORMS:
        raise ValueError(f"attention normalisation must be one of {NORMS}, got {norm!r}")
    if norm == "minmax":
        att = att - att.flatten(-2).amin(-1)[..., None, None]
    peak = att.flatten(-2).amax(-1)[..., None, None]
    return att / (peak + eps)


def resize(att, size):
    """Bilinear resize of maps (..., h, w) to `size` (H, W); a no-op when already that size."""
    size = tuple(size)
    if tuple(att.shape[-2:]) == size:
        return att
    lead = att.shape[:-2]
    out = F.interpolate(att.reshape(-1, 1, *att.shape[-2:]), size=size, mode="bilinear",
                        align_corners=False)
    return out.reshape(*lead, *size)


def soft_mask(att, size, omega=100.0, psi=0.5):
    """sigmoid(omega * (A - psi)) after resizing A (..., h, w) to the input size (H, W).

    A = psi gives 0.5; omega = 100 makes it nearly binary while keeping a gradient near the threshold.
    """
    return torch.sigmoid(omega * (resize(att, size) - psi))


def pair_masks(labels, att, size, omega=100.0, psi=0.5, norm="max"):
    """Soft masks (K,H,W) of the K (image, present class) pairs, with img_idx (K,) and cls_idx (K,).

    Each selected map is resized to `size` (H, W), normalised to max 1 (as PSA's inference and the
    authors' code do, at full resolution; `norm` as in normalise_attention), then
    sigmoid(omega * (A - psi)).
    """
    img_idx, cls_idx = (labels > 0.5).nonzero(as_tuple=True)
    maps = normalise_attention(resize(att[img_idx, cls_idx], size), norm=norm)
    return soft_mask(maps, size, omega, psi), img_idx, cls_idx


def erase_pairs(images, labels, att, omega=100.0, psi=0.5, norm="max"):
    """One erased image per (image, present class).

    images (B,3,H,W) normalised; labels (B,C) 0/1; att (B,C,h,w) raw attention (ReLU'd CAM or
    Grad-CAM). Each selected map is resized to (H, W) and then normalised (as PSA's inference and
    the authors' code normalise at full resolution; `norm` as in normalise_attention) before masking.
    Returns erased (K,3,H,W), img_idx (K,), cls_idx (K,), K = number of positive labels (dynamic
    batch), pairs in (image, class) order. Gradient flows from `erased` into `att`.
    """
    mask, img_idx, cls_idx = pair_masks(labels, att.to(images.dtype), images.shape[-2:], omega, psi, norm)
    return images[img_idx] * (1 - mask[:, None]), img_idx, cls_idx
