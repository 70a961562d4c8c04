"""Where make-cam's time per image goes on a device, and what two changes would give: the steps of
psa_baseline.cam_infer.multiscale_cam (channels_last, present classes) timed apart, with the device
synchronised at each clock read, per option set:
  dtype          float32 or bf16 autocast
  cudnn.benchmark  off (torch's default) or on (VOC images come in few sizes, so its search pays off)
  resize         PIL bicubic on the CPU (PSA, today) or torch bicubic with antialias on the device
Parts: resize (CPU or device), to_device (normalise + copy), forward (net.forward_cam per scale),
upsample (bilinear to image size, present classes), fuse (sum, normalise, copy back). Medians over images,
after one warm-up image per option set. The largest |difference| to multiscale_cam's CAMs is printed
per option set (device resize changes the input pixels, so it changes the CAMs slightly).

    python scripts/bench_cam_parts.py --config voc --voc-root VOCmini --device cuda --images 20
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="voc")
    p.add_argument("--voc-root", required=True)
    p.add_argument("--list", default="ImageSets/Segmentation/val.txt")
    p.add_argument("--images", type=int, default=20)
    p.add_argument("--device", default="cuda")
    p.add_argument("--set", nargs="*", default=[], metavar="key=value", help="config overrides")
    args = p.parse_args(argv)

    import numpy as np
    import torch
    import torch.nn.functional as F
    from psa_baseline import cam_infer
    from psa_baseline.constants import IMAGENET_MEAN, IMAGENET_STD
    from psa_baseline.voc import VOCRoot
    from stages.builders import build_cam_net, labels_for
    from stages.config import load_config
    cfg = load_config(args.config, [("voc_root", args.voc_root), *args.set])
    dev = torch.device(args.device)
    torch.manual_seed(0)
    net = build_cam_net(cfg, pretrained=False).to(dev).eval()
    net.to(memory_format=torch.channels_last)
    root = VOCRoot(args.voc_root)
    ids = (Path(args.voc_root) / args.list).read_text().split()[:args.images + 1]
    labels = labels_for(cfg, root, ids)
    scales, flip = cfg["cam_infer"]["scales"], cfg["cam_infer"]["flip"]
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    mean = torch.tensor(IMAGENET_MEAN, device=dev).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=dev).view(1, 3, 1, 1)

    @torch.inference_mode()
    def cams(img, label, bf16, device_resize, clock):
        h, w = img.shape[:2]
        present = np.nonzero(np.asarray(label) > 0)[0]
        keep = torch.as_tensor(present, device=dev)
        lab = torch.as_tensor(np.asarray(label, np.float32)[present], device=dev)
        amp = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16)
        outs = []
        if device_resize:
            full = torch.as_tensor(img.copy(), device=dev).permute(2, 0, 1)[None].float()
            clock("to_device")
        for s in scales:
            if device_resize:
                x = full if s == 1.0 else F.interpolate(full, (max(1, round(h * s)), max(1, round(w * s))),
                                                        mode="bicubic", align_corners=False, antialias=True)
                x = x.clamp(0, 255).round()  # PIL returns uint8
                x = torch.cat([x, x.flip(-1)]) if flip else x
                x = ((x / 255 - mean) / std).contiguous(memory_format=torch.channels_last)
                clock("resize")
            else:
                im = cam_infer.resize_image(img, s)
                batch = np.stack([im, im[:, ::-1]]) if flip else im[None]
                clock("resize")
                x = cam_infer.normalise_batch(batch, dev).contiguous(memory_format=torch.channels_last)
                clock("to_device")
            with amp:
                out = net.forward_cam(x)
            clock("forward")
            out = F.interpolate(out.float().contiguous(), (h, w), mode="bilinear", align_corners=False)[:, keep]
            outs += [(out[i], i == 1) for i in range(out.shape[0])]
            clock("upsample")
        norm = cam_infer.fuse_cams([o for o, _ in outs], lab, [f for _, f in outs])
        clock("fuse")
        return {int(c): norm[k] for k, c in enumerate(present)}

    parts = ("resize", "to_device", "forward", "upsample", "fuse")
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    print(f"{args.images} images of {args.list}, scales {scales} flip {flip}, {name}, random-init net")
    print("| dtype | cudnn.benchmark | resize | ms/image | " + " | ".join(parts) + " | max diff to make-cam |")
    print("|" + "---|" * (len(parts) + 5))
    for bf16 in (False, True):
        for bench in (False, True):
            torch.backends.cudnn.benchmark = bench
            for device_resize in (False, True):
                times = {k: [] for k in parts}
                totals, diff = [], 0.0
                for n, i in enumerate(ids):
                    img, label = root.read_image(i), labels[i]
                    acc = dict.fromkeys(parts, 0.0)
                    sync()
                    last = [time.perf_counter()]

                    def clock(part):
                        sync()
                        t = time.perf_counter()
                        acc[part] += t - last[0]
                        last[0] = t
                    got = cams(img, label, bf16, device_resize, clock)
                    if n == 0:
                        continue  # warm-up (and cudnn's search for this size)
                    for k in parts:
                        times[k].append(acc[k])
                    totals.append(sum(acc.values()))
                    ref = cam_infer.multiscale_cam(net, img, label, scales, flip, dev, bf16, channels_last=True)
                    diff = max([diff] + [float(np.abs(ref[c] - got[c]).max()) for c in ref])
                row = " | ".join(f"{1000 * statistics.median(times[k]):.1f}" for k in parts)
                print(f"| {'bf16' if bf16 else 'fp32'} | {'on' if bench else 'off'} | "
                      f"{'device' if device_resize else 'PIL'} | {1000 * statistics.median(totals):.1f} | {row} | "
                      f"{diff:.3g} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
