"""Speed of stage 3 (DeepLabV3+, train-seg / make-seg) for a config: training step time at seg_train's batch
and crop (with its bf16 setting), the estimated time of seg_train.iterations, and make-seg's time per image.

The network is the stage's own (stages.deeplab.build_deeplab, random init), trained by the stage's step
(stages.train_seg.seg_step, seg_optimizer) on random inputs and labels; inference is predict_probs at
seg_infer's scales and flip on a random image of --image-size. Nothing is written.

    .venv/bin/python -m scripts.bench_seg --config demo [--steps 10] [--image-size 160 128]
    .venv/bin/python -m scripts.bench_seg --config voc --device cuda --image-size 500 375   # the paper's setting
"""
import argparse
import time

import numpy as np
import torch

from psa_baseline.training import autocast
from stages.config import load_config
from stages.deeplab import N_OUT, build_deeplab, predict_probs, seg_optimizer
from stages.train_seg import seg_step


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="demo")
    p.add_argument("--device", default=None, help="cpu or cuda (default: the config's)")
    p.add_argument("--steps", type=int, default=10, help="timed training steps (after 2 warm-up steps)")
    p.add_argument("--images", type=int, default=10, help="timed inference images (after 1 warm-up)")
    p.add_argument("--image-size", type=int, nargs=2, default=(160, 128), metavar=("W", "H"))
    p.add_argument("set", nargs="*", metavar="key=value", help="config overrides, e.g. seg_train.batch_size=16")
    args = p.parse_args(argv)
    cfg = load_config(args.config, args.set)
    device = torch.device(args.device or cfg["device"])
    t, inf = cfg["seg_train"], cfg["seg_infer"]
    torch.manual_seed(0)
    net = build_deeplab(cfg).to(device).train()
    opt = seg_optimizer(cfg, net, t["iterations"])
    amp = autocast(device, t["bf16"])
    x = torch.randn(t["batch_size"], 3, t["crop"], t["crop"], device=device)
    y = torch.randint(0, N_OUT, (t["batch_size"], t["crop"], t["crop"]), device=device)
    times = []
    for i in range(args.steps + 2):
        sync(device)
        t0 = time.perf_counter()
        seg_step(net, opt, amp, x, y)
        sync(device)
        if i >= 2:
            times.append(time.perf_counter() - t0)
    step = float(np.median(times))
    print(f"config {cfg['name']}, device {device} ({torch.get_num_threads()} threads), encoder {t['encoder']}, "
          f"batch {t['batch_size']}, crop {t['crop']}, bf16 {t['bf16']}")
    print(f"train step: median {step:.3f} s over {len(times)} steps -> {t['iterations']} iterations in about "
          f"{step * t['iterations'] / 60:.1f} min")
    net.eval()
    w, h = args.image_size
    img = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    times = []
    for i in range(args.images + 1):
        sync(device)
        t0 = time.perf_counter()
        predict_probs(net, img, inf["scales"], inf["flip"], device, amp)
        sync(device)
        if i >= 1:
            times.append(time.perf_counter() - t0)
    print(f"inference ({w}x{h}, scales {inf['scales']}, flip {inf['flip']}, no CRF): median "
          f"{float(np.median(times)):.3f} s per image over {len(times)} images")


if __name__ == "__main__":
    main()
