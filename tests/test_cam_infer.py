import numpy as np
import torch
import torch.nn.functional as F

from psa_baseline.cam_infer import multiscale_cam, normalise_batch, resize_image


class FakeNet(torch.nn.Module):
    """forward_cam = a fixed, position-dependent function of the input, at stride 2."""

    def forward_cam(self, x):
        b, _, h, w = x.shape
        base = x[:, :1, ::2, ::2]
        return torch.cat([base * (c + 1) + c for c in range(20)], 1).relu()


def hand_cam(img, label, scales):
    h, w = img.shape[:2]
    net = FakeNet()
    total = np.zeros((20, h, w))
    for s in scales:
        im = resize_image(img, s)
        for flip in (False, True):
            x = normalise_batch((im[:, ::-1] if flip else im)[None].copy(), "cpu")
            cam = F.interpolate(net.forward_cam(x), (h, w), mode="bilinear", align_corners=False)[0].numpy()
            cam = cam * label[:, None, None]
            if flip:
                cam = cam[:, :, ::-1]
            total += cam
    total = total / (total.max(axis=(1, 2), keepdims=True) + 1e-5)
    return {c: total[c] for c in np.nonzero(label)[0]}


def test_fusion_matches_hand_computation_with_flip():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (30, 42, 3), dtype=np.uint8)
    label = np.zeros(20, np.float32)
    label[[3, 11]] = 1
    got = multiscale_cam(FakeNet(), img, label, scales=(1.0, 0.5, 1.5, 2.0), flip=True)
    want = hand_cam(img, label, (1.0, 0.5, 1.5, 2.0))
    assert sorted(got) == [3, 11]
    for c in got:
        assert got[c].dtype == np.float32 and got[c].shape == (30, 42)
        assert np.allclose(got[c], want[c], atol=1e-5)
        assert abs(got[c].max() - 1) < 1e-4
    # the flip matters: a flip-less fusion differs on this asymmetric image
    noflip = multiscale_cam(FakeNet(), img, label, scales=(1.0,), flip=False)
    assert not np.allclose(noflip[3], got[3], atol=1e-3)
