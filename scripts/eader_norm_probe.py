"""How much the authors' exact-max normalisation and full-resolution L_reg change EADER's masks and L_reg
gradients, against the earlier approximation (max + 1e-5, L_reg at the CAM's own size), on given weights.

For a CAM network's weights (a train-cam cam_net.pth, or the demo's pre-trained start with --start) and the
first --n training images resized to the training crop, it reports: the per-pair CAM peaks; the largest and
mean difference of the soft masks; the share of mask pixels on the other side of 0.5; L_reg both ways; and
the relative difference and cosine of L_reg's gradients on the network's parameters. Writes JSON.

    .venv/bin/python scripts/eader_norm_probe.py --config demo --voc-root work/t30_native/data \\
        --weights work/t30_native/eader/train_cam/cam_net.pth --out work/eader_norm_trained.json
    .venv/bin/python scripts/eader_norm_probe.py --config demo --voc-root work/t30_native/data --start \\
        --out work/eader_norm_start.json
"""
import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from psa_baseline import voc  # noqa: E402
from psa_baseline.fileio import write_json  # noqa: E402
from psa_eader.losses import regularisation_loss  # noqa: E402
from psa_eader.masks import EPS, normalise_attention, resize, soft_mask  # noqa: E402
from stages.builders import build_cam_net, labels_for, load_stage_weights, split_ids, voc_root  # noqa: E402
from stages.config import load_config  # noqa: E402


def grads(net, loss):
    params = [p for p in net.parameters() if p.requires_grad]
    g = torch.autograd.grad(loss, params, allow_unused=True, retain_graph=True)
    return torch.cat([(x if x is not None else torch.zeros_like(p)).reshape(-1) for x, p in zip(g, params)])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="demo")
    ap.add_argument("--voc-root", required=True)
    ap.add_argument("--weights", help="a train-cam cam_net.pth")
    ap.add_argument("--start", action="store_true", help="the config's pre-trained start (net.weights) instead")
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    cfg = load_config(a.config, [("voc_root", a.voc_root)])
    if a.start:
        net = build_cam_net(cfg)
    else:
        net = load_stage_weights(build_cam_net(cfg, pretrained=False), a.weights,
                                 "the CAM network", "net.*", "train-cam")
    net.eval()
    root = voc_root(cfg)
    ids = split_ids(cfg, cfg["data"]["train_list"])[:a.n]
    labels = labels_for(cfg, root, ids)
    crop = cfg["cam_train"]["crop"]
    x = torch.stack([voc.normalize(cv2.resize(root.read_image(i), (crop, crop))) for i in ids])
    y = torch.stack([torch.as_tensor(labels[i], dtype=torch.float32) for i in ids])
    _, att = net(x, with_cam=True)
    img_idx, cls_idx = (y > 0.5).nonzero(as_tuple=True)
    pairs = resize(att[img_idx, cls_idx], (crop, crop))
    peaks = pairs.flatten(1).amax(1).detach()
    old_maps, new_maps = normalise_attention(pairs, eps=EPS), normalise_attention(pairs)
    m_old, m_new = soft_mask(old_maps, (crop, crop)), soft_mask(new_maps, (crop, crop))
    diff = (m_new - m_old).abs().detach()
    flipped = ((m_new > 0.5) != (m_old > 0.5)).float().mean().item()
    l_old = regularisation_loss(normalise_attention(att, eps=EPS), y)  # the approximation: CAM size, +1e-5
    l_new = new_maps.mean()                                             # the authors': image size, exact max
    g_old, g_new = grads(net, l_old), grads(net, l_new)
    res = {"weights": a.weights or "start (net.weights)", "images": len(ids), "pairs": int(cls_idx.numel()),
           "cam_peak": {"min": float(peaks.min()), "median": float(peaks.median()), "max": float(peaks.max())},
           "mask_abs_diff": {"max": float(diff.max()), "mean": float(diff.mean())},
           "mask_pixels_flipped": flipped,
           "l_reg": {"approximation": float(l_old.detach()), "authors": float(l_new.detach()),
                     "relative_diff": float((l_new - l_old) / l_old)},
           "l_reg_grad": {"relative_diff": float((g_new - g_old).norm() / g_old.norm()),
                          "cosine": float(torch.nn.functional.cosine_similarity(g_new, g_old, 0))}}
    write_json(Path(a.out), res)
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
