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


def all_classes_cam(net, img, label, scales, bf16):
    """multiscale_cam as it was first written: every class upsampled and fused, NCHW input (the reference)."""
    from psa_baseline.cam_infer import fuse_cams, to_cam_dict
    h, w = img.shape[:2]
    cams, flips = [], []
    amp = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else torch.autocast("cpu", enabled=False)
    with torch.inference_mode():
        for s in scales:
            im = resize_image(img, s)
            with amp:
                out = net.forward_cam(normalise_batch(np.stack([im, im[:, ::-1]]), "cpu"))
            out = F.interpolate(out.float(), (h, w), mode="bilinear", align_corners=False)
            cams += [out[0], out[1]]
            flips += [False, True]
    return to_cam_dict(fuse_cams(cams, torch.as_tensor(label), flips), label)


def test_present_classes_and_channels_last_give_the_same_cams_as_before():
    """make-cam's path (present classes only, either layout) against the all-classes NCHW path. The same
    layout runs the same convolution kernels, so NCHW must give the very numbers; NHWC runs other kernels
    (which ones depends on the CPU: oneDNN's AVX2, AVX-512 and AMX kernels sum in different orders), so it
    may differ by rounding: float noise in float32, a few bf16 ulps (2^-8 relative) under bf16 autocast."""
    from psa_baseline.cam_net import CAMNet
    from conftest import tiny_spec
    torch.manual_seed(0)
    net = CAMNet(tiny_spec()).eval()
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (37, 45, 3), dtype=np.uint8)
    label = np.zeros(20, np.float32)
    label[[2, 9, 14]] = 1
    for bf16 in (False, True):
        want = all_classes_cam(net.to(memory_format=torch.contiguous_format), img, label, (1.0, 0.5), bf16)
        for cl in (False, True):
            # Module.to converts in place: the reference above was made before this
            n = net.to(memory_format=torch.channels_last if cl else torch.contiguous_format)
            got = multiscale_cam(n, img, label, scales=(1.0, 0.5), flip=True, bf16=bf16, channels_last=cl)
            assert sorted(got) == sorted(want) == [2, 9, 14]
            for c in got:
                assert got[c].dtype == np.float32, c
                if not cl:
                    assert np.array_equal(got[c], want[c]), (bf16, cl, c)
                else:  # maps in [0, 1]: absolute tolerance of float noise or of a few bf16 roundings
                    tol = 2e-2 if bf16 else 1e-5
                    assert np.abs(got[c] - want[c]).max() < tol, (bf16, c, np.abs(got[c] - want[c]).max())
    assert multiscale_cam(net, img, np.zeros(20, np.float32), scales=(1.0,)) == {}


def test_a_read_only_batch_is_copied_not_wrapped():
    """A loader may hand over read-only arrays: torch must not wrap memory it cannot write (it warns and
    calls that undefined behaviour); the values are the same."""
    import warnings
    from psa_baseline.cam_infer import normalise_batch
    a = np.random.default_rng(0).integers(0, 255, (2, 8, 8, 3), dtype=np.uint8)
    r = a.copy()
    r.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = normalise_batch(r, "cpu")
    assert torch.equal(got, normalise_batch(a, "cpu")) and got.is_contiguous()
