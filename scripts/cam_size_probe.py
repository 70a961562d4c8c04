"""Probe (issue 12): does make-cam get faster when the scaled image sizes repeat, and what does it cost?

On the CPU oneDNN builds its convolution kernels per input shape, and the demo's images nearly all have a
size of their own, so make-cam pays that build on every image. This probe rounds each scaled size to a
multiple of --multiple px (PSA: the exact round(s*H) x round(s*W), --multiple 1), so that sizes repeat,
and writes the CAMs of a split with make-cam's own function (psa_baseline.cam_infer.multiscale_cam) in one
fresh process, timed. Score them with eval-cam:

    OMP_NUM_THREADS=1 .venv/bin/python scripts/cam_size_probe.py --voc-root work/timing7/data \\
        --model work/timing7/baseline/train_cam/cam_net.pth --multiple 16 --out /tmp/cams16
    .venv/bin/psa-eader eval-cam --config demo --voc-root work/timing7/data --cam-dir /tmp/cams16 \\
        --split val --threshold 0.2 --out /tmp/cams16.json

Not a make-cam option: rounding changes the aspect ratio of the network's input, and on the demo it cost
more CAM mIoU than the issue allows (docs/performance.md, make-cam speed).
"""
import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="demo")
    p.add_argument("--voc-root", required=True)
    p.add_argument("--model", required=True, help="a trained cam_net.pth of this config's network")
    p.add_argument("--list", default="ImageSets/Segmentation/val.txt", help="ids, under the VOC root")
    p.add_argument("--images", type=int, default=0, help="only the first N ids (0: all)")
    p.add_argument("--multiple", type=int, default=1, help="round scaled sizes to this many px (1: PSA's sizes)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--passes", type=int, default=1, help="passes over the list in this process: from the second "
                   "on every size has been seen (its kernels built), which is what rounding tries to approach")
    p.add_argument("--out", required=True, help="folder for the <id>.npy CAM dicts")
    args = p.parse_args(argv)

    import numpy as np
    import torch
    from PIL import Image
    from psa_baseline import cam_infer
    from psa_baseline.fileio import save_npy
    from psa_baseline.voc import VOCRoot
    from stages.builders import labels_for
    from stages.config import load_config
    from stages.make_cam import load_cam_net
    torch.set_num_threads(args.threads)
    m = args.multiple
    if m > 1:
        def rounded(img, scale):
            h, w = img.shape[:2]
            size = (max(m, m * round(w * scale / m)), max(m, m * round(h * scale / m)))
            return np.asarray(Image.fromarray(img).resize(size, Image.Resampling.BICUBIC))
        cam_infer.resize_image = rounded  # this process only
    cfg = load_config(args.config, [("voc_root", args.voc_root)])
    net = load_cam_net(cfg, args.model, "cpu")
    root = VOCRoot(args.voc_root)
    ids = (Path(args.voc_root) / args.list).read_text().split()
    ids = ids[:args.images] if args.images else ids
    labels = labels_for(cfg, root, ids)
    c = cfg["cam_infer"]
    out = Path(args.out)

    def cams(img, label):
        return cam_infer.multiscale_cam(net, img, label, c["scales"], c["flip"], "cpu", c["bf16"],
                                        channels_last=True)

    cams(np.zeros((61, 67, 3), np.uint8), labels[ids[0]])  # warm-up on a size not in the list
    per_pass = []
    for _ in range(args.passes):
        t0 = time.perf_counter()
        for i in ids:
            save_npy(out / f"{i}.npy", cams(root.read_image(i), labels[i]))
        per_pass.append(f"{1000 * (time.perf_counter() - t0) / len(ids):.1f}")
    shapes = {cam_infer.resize_image(root.read_image(i), c["scales"][0]).shape for i in ids}
    print(f"multiple {m}: {len(ids)} images, {len(shapes)} input sizes at scale {c['scales'][0]}, "
          f"ms/image per pass {' / '.join(per_pass)}, {args.threads} thread(s), bf16 {c['bf16']}; CAMs in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
