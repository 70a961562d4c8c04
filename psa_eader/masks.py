"""Soft erasing masks: M_c = sigmoid(omega * (A_c - psi)), x_c = x * (1 - M_c).

The images are ImageNet-normalised, so an erased pixel (value 0) is the dataset's mean colour, not
black; this matches the authors' code (they erase the normalised tensor) and PSA's zero padding.
"""
import torch
import torch.nn.functional as F

EPS = 1e-5  # PSA's max-normalisation epsilon: its CAM inference only (psa_baseline), not EADER's maps
NORMS = ("max", "minmax")


def normalise_attention(att, eps=0.0, norm="max"):
    """Scale each map (..., h, w) so its max is 1.

    eps 0, the default: divide by the exact max, as the authors' attention_map_wrapper.py does (a map whose
    max is 0 is left as it is), so every map peaks at exactly 1 whatever its scale. eps > 0 divides by
    max + eps, as PSA normalises its CAMs: then a map with a small max (Grad-CAM early in training) peaks
    well under 1 and its soft mask erases less.
    norm 'max': divide by the map's max (the paper's Eq. 2, after the ReLU of a CAM).
    norm 'minmax': subtract the map's min first, as the authors' Grad-CAM code does; it differs from
    'max' only where a map's minimum is above 0 (Grad-CAM of a class spread over the whole image).
    Differentiable (also through the max and min), so the localizer is trained through it.
    """
    if norm not in NORMS:
        raise ValueError(f"attention normalisation must be one of {NORMS}, got {norm!r}")
    if norm == "minmax":
        att = att - att.flatten(-2).amin(-1)[..., None, None]
    peak = att.flatten(-2).amax(-1)[..., None, None]
    if eps:
        return att / (peak + eps)
    return att / torch.where(peak != 0, peak, torch.ones_like(peak))


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


def pair_maps(labels, att, size, norm="max"):
    """The K (image, present class) pairs' maps (K,H,W), each resized to `size` (H, W) and then normalised
    to max 1 (as the authors' code does, at full resolution; `norm` as in normalise_attention), with img_idx
    (K,) and cls_idx (K,) in (image, class) order."""
    img_idx, cls_idx = (labels > 0.5).nonzero(as_tuple=True)
    return normalise_attention(resize(att[img_idx, cls_idx], size), norm=norm), img_idx, cls_idx


def pair_masks(labels, att, size, omega=100.0, psi=0.5, norm="max"):
    """Soft masks (K,H,W) of the K (image, present class) pairs, with img_idx (K,) and cls_idx (K,):
    sigmoid(omega * (A - psi)) of pair_maps' full-resolution normalised maps A."""
    maps, img_idx, cls_idx = pair_maps(labels, att, size, norm)
    return soft_mask(maps, size, omega, psi), img_idx, cls_idx


def erase_maps(images, maps, img_idx, omega=100.0, psi=0.5):
    """images[img_idx] * (1 - sigmoid(omega * (maps - psi))): one erased image per map of pair_maps."""
    return images[img_idx] * (1 - soft_mask(maps, images.shape[-2:], omega, psi)[:, None])


def erase_pairs(images, labels, att, omega=100.0, psi=0.5, norm="max"):
    """One erased image per (image, present class).

    images (B,3,H,W) normalised; labels (B,C) 0/1; att (B,C,h,w) raw attention (ReLU'd CAM or
    Grad-CAM). Each selected map is resized to (H, W) and then normalised (as PSA's inference and
    the authors' code normalise at full resolution; `norm` as in normalise_attention) before masking.
    Returns erased (K,3,H,W), img_idx (K,), cls_idx (K,), K = number of positive labels (dynamic
    batch), pairs in (image, class) order. Gradient flows from `erased` into `att`.
    """
    maps, img_idx, cls_idx = pair_maps(labels, att.to(images.dtype), images.shape[-2:], norm)
    return erase_maps(images, maps, img_idx, omega, psi), img_idx, cls_idx
