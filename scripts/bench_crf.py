"""Throughput of the make-crf stage's work (la + ha dense CRF per image) on real VOC images (VOCmini).

CAM-like inputs are made from the ground truth (stride-8 block mean, bilinear, Gaussian blur, max 1), so
the timing is that of the stage's own code path (make_crf.crf_many: read JPEG, check and load the CAM
dict, two CRFs, two atomic np.save) with 1 and 2 worker processes. Outputs go to a temporary folder.

    .venv/bin/python -m scripts.bench_crf [--images 24] [--workers 1 2] [--voc ../shared/data/VOCmini]
"""
import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from psa_baseline import voc
from psa_baseline.voc import labels_from_seg
from stages.make_crf import crf_many, make_tasks

# the repository's sibling shared/ folder, wherever the checkout lives
DEFAULT_VOC = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "VOCmini"


def cam_like(gt, sigma=24.0, stride=8):
    H, W = gt.shape
    h, w = -(-H // stride), -(-W // stride)
    out = {}
    for c in sorted(set(np.unique(gt).tolist()) - {0, 255}):
        pad = np.zeros((h * stride, w * stride), np.float32)
        pad[:H, :W] = gt == c
        up = cv2.resize(pad.reshape(h, stride, w, stride).mean((1, 3)), (w * stride, h * stride),
                        interpolation=cv2.INTER_LINEAR)[:H, :W]
        b = cv2.GaussianBlur(up, (0, 0), sigma)
        out[c - 1] = (b / max(b.max(), 1e-5)).astype(np.float32)
    return out


def cpu_seconds():
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--voc", default=str(DEFAULT_VOC), help="VOCmini folder (default: ../shared/data/VOCmini next to the repository)")
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--alphas", type=float, nargs=2, default=[4, 24])
    args = ap.parse_args()
    torch.set_num_threads(1)
    root = voc.VOCRoot(args.voc, seg_dir="SegmentationClass")
    ids = voc.read_split(root.root / "ImageSets/Segmentation/train.txt")[:args.images]
    sizes = [root.image_size(i) for i in ids]
    print(f"{len(ids)} VOC images from {root.root} (mean {np.mean([h * w for h, w in sizes]) / 1e3:.0f} k pixels), "
          f"la+ha CRF (alphas {args.alphas[0]:g}/{args.alphas[1]:g}, 10 iterations) per image, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        cam_dir = Path(tmp) / "cams"
        labels = {}
        for i in ids:
            gt = np.array(Image.open(root.seg_path(i)))
            labels[i] = labels_from_seg(gt)
            cam_dir.mkdir(exist_ok=True)
            np.save(cam_dir / f"{i}.npy", cam_like(gt))
        print(f"{'workers':>7} {'images':>6} {'seconds':>8} {'images/s':>9} {'speed-up':>8} {'CPU s/image':>11}")
        base = None
        for w in args.workers:
            out = Path(tmp) / f"out{w}"
            tasks = make_tasks(root, ids, labels, cam_dir, out, tuple(args.alphas))
            c0 = cpu_seconds()
            t0 = time.perf_counter()
            crf_many(tasks, w, progress=False)
            dt = time.perf_counter() - t0
            cpu = (cpu_seconds() - c0) / len(tasks)
            base = base or dt
            print(f"{w:>7} {len(tasks):>6} {dt:>8.2f} {len(tasks) / dt:>9.2f} {base / dt:>7.2f}x {cpu:>11.3f}")
    print("CPU s/image: user+system time of this process and its (finished) workers per image; on a busy "
          "machine 1 / it is the throughput one free core would give")


if __name__ == "__main__":
    main()
