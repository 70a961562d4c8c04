"""Dense CRF with PSA's published settings, and PSA's CAM -> la/ha CRF score dicts.

PSA (tool/imutils.crf_inference, infer_cls._crf_with_alpha): unary = -log(clip(scores, 1e-5, 1)) from
the stacked [background, CAMs] scores (not renormalised), Gaussian pairwise sxy=3 compat=3, bilateral
sxy=80 srgb=13 compat=10 on the original RGB image, 10 mean-field iterations.
"""
import numpy as np
import pydensecrf.densecrf as dcrf
from pydensecrf.utils import unary_from_softmax

from .errors import InputError


def _check_image(img, name):
    if not isinstance(img, np.ndarray) or img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        desc = f"{img.dtype} {img.shape}" if isinstance(img, np.ndarray) else type(img).__name__
        raise InputError(f"{name}: CRF needs the original RGB image as an H x W x 3 uint8 array, "
                         f"got {desc}; load it with PIL/cv2 (RGB order) without resizing")


def crf_inference(img_uint8_hwc, probs_chw, t=10, scale_factor=1, labels=None, name="image"):
    """Dense CRF over `probs_chw` (C x H x W scores in [0, 1]); returns C x H x W float32 marginals."""
    _check_image(img_uint8_hwc, name)
    probs = np.asarray(probs_chw, dtype=np.float32)
    h, w = img_uint8_hwc.shape[:2]
    if probs.ndim != 3 or probs.shape[1:] != (h, w):
        raise InputError(f"{name}: CRF scores have shape {probs.shape} but the image is {h} x {w}; "
                         "scores must be C x H x W at the original image size")
    if not np.isfinite(probs).all():
        raise InputError(f"{name}: CRF scores contain NaN or inf; regenerate the CAMs for this image")
    n = probs.shape[0] if labels is None else int(labels)
    if n != probs.shape[0] or n < 1:
        raise InputError(f"{name}: labels={labels} but the scores have {probs.shape[0]} channels")

    d = dcrf.DenseCRF2D(w, h, n)
    d.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(probs)))
    d.addPairwiseGaussian(sxy=3 / scale_factor, compat=3)
    d.addPairwiseBilateral(sxy=80 / scale_factor, srgb=13, rgbim=np.require(img_uint8_hwc, np.uint8, ["C", "W"]),
                           compat=10)
    q = d.inference(t)
    return np.asarray(q, dtype=np.float32).reshape(n, h, w)


def cam_dict_to_crf(img, cam_dict, alpha, name="image", scale_factor=1):
    """PSA's `_crf_with_alpha`: CAM dict {class c: HxW in [0,1]} -> CRF dict {0: bg, c+1: map}.

    Background score (1 - max_c cam) ** alpha: a low alpha (4) amplifies the background, so the
    foreground that survives is confident; a high alpha (24/32) shrinks it, so the background that
    survives is confident.
    """
    _check_image(img, name)
    if not cam_dict:
        raise InputError(f"{name}: the CAM dict is empty; every image needs at least one present class "
                         "(check its image-level label in cls_labels.npy)")
    keys = sorted(cam_dict)
    h, w = img.shape[:2]
    cams = []
    for k in keys:
        v = np.asarray(cam_dict[k], dtype=np.float32)
        if v.shape != (h, w):
            raise InputError(f"{name}: CAM of class {k} is {v.shape} but the image is {h} x {w}; "
                             "CAMs must be saved at the original image size")
        if not np.isfinite(v).all():
            raise InputError(f"{name}: CAM of class {k} contains NaN or inf; regenerate its CAM")
        if v.min() < 0 or v.max() > 1 + 1e-4:
            raise InputError(f"{name}: CAM of class {k} has values in [{v.min():.4g}, {v.max():.4g}]; "
                             "expected CAMs normalised to [0, 1] (divide each class by its max)")
        cams.append(v)
    cams = np.stack(cams)
    bg = np.power(1 - np.clip(cams.max(0, keepdims=True), 0, 1), alpha)
    q = crf_inference(img, np.concatenate([bg, cams]), scale_factor=scale_factor, name=name)
    out = {0: q[0]}
    for i, k in enumerate(keys):
        out[int(k) + 1] = q[i + 1]
    return out
