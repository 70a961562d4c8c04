"""Dense CRF with PSA's settings on real VOC images (read-only VOCmini)."""
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from psa_baseline.crf import cam_dict_to_crf, crf_inference
from psa_baseline.errors import InputError

VOC = Path("/work/shared/data/VOCmini")
pytestmark = pytest.mark.skipif(not VOC.is_dir(), reason="VOCmini not available")


def _load(image_id):
    img = np.array(Image.open(VOC / "JPEGImages" / f"{image_id}.jpg").convert("RGB"))
    gt = np.array(Image.open(VOC / "SegmentationClass" / f"{image_id}.png"))
    return img, gt


def _miou(pred, gt, classes):
    ok = gt != 255
    return np.mean([((pred == c) & (gt == c) & ok).sum() / (((pred == c) | (gt == c)) & ok).sum()
                    for c in classes])


def _degraded_scores(gt, classes, stride=8, dilate=10, sigma=8):
    """CAM-like scores from the true mask: dilated objects, stride-8 block average, bilinear, blur."""
    lab = np.where(gt == 255, 0, gt)
    onehot = np.stack([(lab == c).astype(np.float32) for c in classes])
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * dilate + 1, 2 * dilate + 1))
    onehot[1:] = np.stack([cv2.dilate(o, k) for o in onehot[1:]])
    onehot[0] = 1 - onehot[1:].max(0)
    H, W = gt.shape
    h, w = -(-H // stride), -(-W // stride)
    pad = np.zeros((len(classes), h * stride, w * stride), np.float32)
    pad[:, :H, :W] = onehot
    small = pad.reshape(len(classes), h, stride, w, stride).mean((2, 4))
    up = [cv2.resize(s, (w * stride, h * stride), interpolation=cv2.INTER_LINEAR)[:H, :W] for s in small]
    p = np.stack([cv2.GaussianBlur(u, (0, 0), sigma) for u in up])
    return np.clip(p / p.sum(0, keepdims=True), 0.05, 1)


# objects that stand out from their background (aeroplane in sky, boat on water), where a colour CRF
# must help; PSA's strong bilateral term (compat 10, sxy 80) can also hurt on cluttered scenes.
@pytest.mark.parametrize("image_id", ["2007_000243", "2007_000363"])
def test_crf_sharpens_degraded_mask(image_id):
    img, gt = _load(image_id)
    classes = sorted(set(np.unique(gt).tolist()) - {255})
    probs = _degraded_scores(gt, classes)
    q = crf_inference(img, probs)
    assert q.shape == probs.shape and q.dtype == np.float32
    assert np.allclose(q.sum(0), 1, atol=1e-4) and q.min() >= 0
    ids = np.asarray(classes)
    before = _miou(ids[probs.argmax(0)], gt, classes)
    after = _miou(ids[q.argmax(0)], gt, classes)
    assert after > before + 0.03, (before, after)


def test_cam_dict_to_crf_format_and_alpha():
    img, gt = _load("2007_000243")
    cam = cv2.GaussianBlur((gt == 1).astype(np.float32), (0, 0), 12)
    cam /= cam.max()
    la = cam_dict_to_crf(img, {0: cam}, 4)
    ha = cam_dict_to_crf(img, {0: cam}, 32)
    for d in (la, ha):
        assert list(d) == [0, 1]  # {0: bg, c + 1: class c}
        assert all(v.dtype == np.float32 and v.shape == gt.shape for v in d.values())
        assert np.allclose(d[0] + d[1], 1, atol=1e-4)
    # low alpha amplifies the background: la's foreground is the smaller, confident one
    assert (la[1] > la[0]).sum() < (ha[1] > ha[0]).sum()


def test_bad_inputs():
    img = np.zeros((20, 30, 3), np.uint8)
    ok = np.full((2, 20, 30), 0.5, np.float32)
    assert crf_inference(img, ok, t=2).shape == (2, 20, 30)
    with pytest.raises(InputError):
        crf_inference(img, ok[:, :19])
    bad = ok.copy()
    bad[0, 3, 3] = np.nan
    with pytest.raises(InputError):
        crf_inference(img, bad)
    with pytest.raises(InputError):
        crf_inference(img.astype(np.float32), ok)
    with pytest.raises(InputError):
        crf_inference(img, ok, labels=3)
    cam = np.full((20, 30), 0.5, np.float32)
    with pytest.raises(InputError, match="class 4"):
        cam_dict_to_crf(img, {4: cam[:, :29]}, 4)
    with pytest.raises(InputError):
        cam_dict_to_crf(img, {4: np.where(cam > 0, np.inf, 0)}, 4)
    with pytest.raises(InputError):
        cam_dict_to_crf(img, {4: cam * 3}, 4)
    with pytest.raises(InputError):
        cam_dict_to_crf(img, {}, 4)


def test_scale_factor_for_small_images():
    """crf.scale_factor (PSA's knob) shrinks the pairwise ranges for small images: on an image 4x
    smaller than VOC's, the published sxy=80 reaches across the whole image; scale_factor=4 restores
    the published range relative to the objects, and the CRF then sharpens like at full size."""
    img, gt = _load("2007_000243")
    small = cv2.resize(img, (img.shape[1] // 4, img.shape[0] // 4), interpolation=cv2.INTER_AREA)
    gts = cv2.resize(gt, (small.shape[1], small.shape[0]), interpolation=cv2.INTER_NEAREST)
    classes = sorted(set(np.unique(gts).tolist()) - {255})
    probs = _degraded_scores(gts, classes, stride=2, dilate=3, sigma=2)
    ids = np.asarray(classes)
    before = _miou(ids[probs.argmax(0)], gts, classes)
    scaled = crf_inference(small, probs, scale_factor=4)
    after = _miou(ids[scaled.argmax(0)], gts, classes)
    assert after > before + 0.03, (before, after)
    plain = crf_inference(small, probs)
    assert not np.allclose(plain, scaled, atol=1e-3)  # the factor reaches pydensecrf
