"""Multi-scale + flip CAM inference, fused and normalised as PSA's infer_cls does.

For each scale s the image is resized (bicubic) to round(s*H) x round(s*W); the image and its mirror go
through `forward_cam` as one batch of two. Every CAM is upsampled (bilinear) to H x W, multiplied by the
label vector, un-flipped, and all are summed; each class is then divided by its own max (+1e-5). Only
present classes are kept: the result is PSA's on-disk dict {class_index: HxW float32 in [0, 1]}.

Only the present classes' maps are fused (the others would be multiplied by 0 and dropped). With
channels_last the input goes in NHWC, the layout the GPU's tensor cores and an AVX-512 oneDNN prefer
(hardware.channels_last_ok says where it is safe); its CAMs agree with NCHW's to float and bf16 rounding
(another convolution kernel may run for each layout).
"""
import contextlib

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .constants import IMAGENET_MEAN, IMAGENET_STD
from .hardware import resolve_bf16


def normalise_batch(imgs_uint8, device):
    """(B,H,W,3) uint8 -> (B,3,H,W) float, ImageNet mean/std on pixels / 255.

    Returned contiguous (NCHW) whatever the caller then chooses: the permuted view would be channels_last,
    which on a CPU must be chosen by hardware.channels_last_ok, not by accident."""
    # a read-only array (a loader's or a memory map's) is copied: torch may not wrap memory it cannot write
    x = torch.as_tensor(np.require(imgs_uint8, requirements=("C", "W")), device=device).permute(0, 3, 1, 2).contiguous()
    x = x.float() / 255
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    return (x - mean) / std


def resize_image(img, scale):
    h, w = img.shape[:2]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    # PIL bicubic as PSA (it antialiases when shrinking, unlike cv2)
    return img if scale == 1.0 else np.asarray(Image.fromarray(img).resize(size, Image.Resampling.BICUBIC))


def fuse_cams(cams, label, flips):
    """cams: list of (C,H,W) tensors already at image size; flips: whether each one is mirrored.
    Returns normalised (C,H,W) numpy array (zeros for absent classes)."""
    total = 0
    for cam, flipped in zip(cams, flips):
        cam = cam * label.view(-1, 1, 1)
        total = total + (cam.flip(-1) if flipped else cam)
    total = total.float().cpu().numpy()
    return total / (total.max(axis=(1, 2), keepdims=True) + 1e-5)


def to_cam_dict(norm_cam, label):
    return {int(c): norm_cam[c].astype(np.float32) for c in np.nonzero(np.asarray(label) > 0)[0]}


def scale_batches(img, scales, flip=True):
    """The network's input at each scale, before normalising: (2, h_s, w_s, 3) uint8 (the image and its
    mirror) or (1, h_s, w_s, 3). CPU work (PIL), which make-cam runs in loader workers on a GPU."""
    out = []
    for s in scales:
        im = resize_image(img, s)
        out.append(np.stack([im, im[:, ::-1]]) if flip else im[None])
    return out


@torch.inference_mode()
def multiscale_cam(net, img, label, scales=(1.0, 0.5, 1.5, 2.0), flip=True, device="cpu", bf16=False,
                   channels_last=False, batches=None):
    """img: HxWx3 uint8 RGB; label: float[20]. Returns PSA's CAM dict for the present classes.
    channels_last: feed NHWC input (give the net in channels_last too). batches: scale_batches(img, scales,
    flip) when already made (by a loader worker)."""
    device = torch.device(device)
    h, w = img.shape[:2]
    label = np.asarray(label, dtype=np.float32)
    present = np.nonzero(label > 0)[0]
    if not len(present):
        return {}
    keep = torch.as_tensor(present, device=device)
    label_t = torch.as_tensor(label[present], device=device)
    cams, flips = [], []
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if resolve_bf16(bf16, device) else contextlib.nullcontext()
    for batch in scale_batches(img, scales, flip) if batches is None else batches:
        x = normalise_batch(batch, device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with amp:
            out = net.forward_cam(x)
        # all classes, NCHW, then the present ones: the upsampling kernel vectorises over channels and
        # layout, so another channel count or NHWC would change the last bit of some pixels
        out = F.interpolate(out.float().contiguous(), (h, w), mode="bilinear", align_corners=False)[:, keep]
        for i in range(out.shape[0]):
            cams.append(out[i])
            flips.append(i == 1)
    norm = fuse_cams(cams, label_t, flips)
    return {int(c): norm[k].astype(np.float32) for k, c in enumerate(present)}
