"""make-cam's speed, three ways (one subcommand each):

  layouts  images/s of make-cam's per-image work (read, multi-scale + flip CAMs, write the .npy) for the
           network in NCHW and NHWC (channels_last) memory layout, each in float32 and under bf16 autocast;
           round-robin in one process with the order rotated each round, so a busy machine slows all settings
           alike; images/s from each setting's median round, and the largest CAM difference between layouts.
  parts    where the time of one image goes on a device: resize, to_device, forward, upsample, fuse, timed
           apart with the device synchronised at each clock read, for float32 / bf16, cudnn.benchmark off /
           on, and PIL resizing on the CPU (make-cam's) against torch's on the device; the largest difference
           to make-cam's CAMs per option set (device resizing changes the input pixels a little).
  shapes   make-cam's loop over the same images twice in one process: the first pass pays the device's
           one-off cost per new input shape (kernels chosen and built per image size x scale), the second
           the steady cost; VOC images come in hundreds of sizes, so a short list overstates the first.

Run from the checkout's root:

    .venv/bin/python -m scripts.bench_make_cam layouts --config demo --voc-root DATA --model cam_net.pth \\
        --images 60 --rounds 3 --threads 1
    .venv/bin/python -m scripts.bench_make_cam parts --config voc --voc-root VOCmini --device cuda --images 20
    .venv/bin/python -m scripts.bench_make_cam shapes --config voc --voc-root VOCmini --device cuda --workers 4 \\
        --set cam_infer.bf16=true

--model: a trained cam_net.pth of the config's network, or `random` (random init; timing only).
"""
import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path


def load(args):
    """(cfg, net on the device in eval mode, VOCRoot, ids, labels, device)."""
    import torch
    from psa_baseline.voc import VOCRoot
    from stages.builders import build_cam_net, labels_for, load_stage_weights
    from stages.config import load_config
    cfg = load_config(args.config, [("voc_root", args.voc_root), *args.set])
    dev = torch.device(args.device)
    torch.manual_seed(0)
    net = build_cam_net(cfg, pretrained=False)
    if args.model != "random":
        net = load_stage_weights(net, args.model, "the CAM net", "net.*", "train-cam")
    root = VOCRoot(args.voc_root)
    ids = (Path(args.voc_root) / args.list).read_text().split()
    ids = ids[:args.images] if args.images else ids
    return cfg, net.to(dev).eval(), root, ids, labels_for(cfg, root, ids), dev


def where(dev, threads=None):
    import torch
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return "cpu" + (f", {threads} thread(s)" if threads else "")


def layouts(args):
    import numpy as np
    import torch
    from psa_baseline import cam_infer
    from psa_baseline.fileio import save_npy
    torch.set_num_threads(args.threads)
    cfg, net, root, ids, labels, dev = load(args)
    scales, flip = cfg["cam_infer"]["scales"], cfg["cam_infer"]["flip"]
    out = Path(args.save_dir or tempfile.mkdtemp())

    def setting(nhwc, bf16):
        net.to(memory_format=torch.channels_last if nhwc else torch.contiguous_format)
        return lambda img, lab: cam_infer.multiscale_cam(net, img, lab, scales, flip, dev, bf16, channels_last=nhwc)

    settings = {"nchw_fp32": (False, False), "nchw_bf16": (False, True),
                "nhwc_fp32": (True, False), "nhwc_bf16": (True, True)}
    names, times = list(settings), {s: [] for s in settings}
    for r in range(args.rounds):
        for s in names[r % len(names):] + names[:r % len(names)]:
            fn = setting(*settings[s])
            fn(root.read_image(ids[0]), labels[ids[0]])  # warm-up
            t0 = time.perf_counter()
            for i in ids:
                save_npy(out / s / f"{i}.npy", fn(root.read_image(i), labels[i]))
            times[s].append(time.perf_counter() - t0)
    base = len(ids) / statistics.median(times["nchw_fp32"])
    print(f"{len(ids)} images of {args.list}, scales {scales} flip {flip}, {where(dev, args.threads)}, "
          f"{args.rounds} rounds; model {args.model}")
    print("| setting | images/s | ms/image | vs nchw_fp32 |\n|---|---|---|---|")
    for s in names:
        ips = len(ids) / statistics.median(times[s])
        print(f"| {s} | {ips:.2f} | {1000 / ips:.1f} | {ips / base:.2f}x |")
    for d in ("fp32", "bf16"):
        diff = 0.0
        for i in ids:
            a = np.load(out / f"nchw_{d}" / f"{i}.npy", allow_pickle=True).item()
            b = np.load(out / f"nhwc_{d}" / f"{i}.npy", allow_pickle=True).item()
            diff = max([diff] + [float(np.abs(a[k] - b[k]).max()) for k in a])
        print(f"largest |NCHW - NHWC| over the CAMs, {d}: {diff:.3g}")
    if args.save_dir:
        print(f"CAMs in {out}/<setting>/ (score them with `psa-eader eval-cam --cam-dir`)")
    return 0


def parts(args):
    import numpy as np
    import torch
    import torch.nn.functional as F
    from psa_baseline import cam_infer
    from psa_baseline.constants import IMAGENET_MEAN, IMAGENET_STD
    args.images += 1  # the first image warms up each option set
    cfg, net, root, ids, labels, dev = load(args)
    net.to(memory_format=torch.channels_last)
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

    names = ("resize", "to_device", "forward", "upsample", "fuse")
    print(f"{len(ids) - 1} images of {args.list}, scales {scales} flip {flip}, {where(dev)}, model {args.model}")
    print("| dtype | cudnn.benchmark | resize | ms/image | " + " | ".join(names) + " | max diff to make-cam |")
    print("|" + "---|" * (len(names) + 5))
    for bf16 in (False, True):
        for bench in (False, True):
            torch.backends.cudnn.benchmark = bench
            for device_resize in (False, True):
                times = {k: [] for k in names}
                totals, diff = [], 0.0
                for n, i in enumerate(ids):
                    img, label = root.read_image(i), labels[i]
                    acc = dict.fromkeys(names, 0.0)
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
                    for k in names:
                        times[k].append(acc[k])
                    totals.append(sum(acc.values()))
                    ref = cam_infer.multiscale_cam(net, img, label, scales, flip, dev, bf16, channels_last=True)
                    diff = max([diff] + [float(np.abs(ref[c] - got[c]).max()) for c in ref])
                row = " | ".join(f"{1000 * statistics.median(times[k]):.1f}" for k in names)
                print(f"| {'bf16' if bf16 else 'fp32'} | {'on' if bench else 'off'} | "
                      f"{'device' if device_resize else 'PIL'} | {1000 * statistics.median(totals):.1f} | {row} | "
                      f"{diff:.3g} |", flush=True)
    return 0


def shapes(args):
    import torch
    from psa_baseline.cam_infer import multiscale_cam
    from psa_baseline.fileio import save_npy
    from stages.make_cam import scaled_images
    cfg, net, root, ids, labels, dev = load(args)
    net.to(memory_format=torch.channels_last)
    c, out = cfg["cam_infer"], Path(tempfile.mkdtemp())
    sizes = len({root.read_image(i).shape for i in ids})
    print(f"{len(ids)} images ({sizes} sizes) of {args.list}, scales {c['scales']} flip {c['flip']}, bf16 "
          f"{c['bf16']}, {args.workers} loader workers, {where(dev)}")
    for n in (1, 2):
        t0 = time.perf_counter()
        for i, img, batches in scaled_images(root, ids, c["scales"], c["flip"], args.workers):
            save_npy(out / f"{i}.npy", multiscale_cam(net, img, labels[i], c["scales"], c["flip"], dev, c["bf16"],
                                                      channels_last=True, batches=batches))
        dt = time.perf_counter() - t0
        print(f"pass {n}: {dt:.1f} s, {1000 * dt / len(ids):.1f} ms/image", flush=True)
    return 0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    for name, images, device, lst in (("layouts", 60, "cpu", "ImageSets/Segmentation/val.txt"),
                                      ("parts", 20, "cuda", "ImageSets/Segmentation/val.txt"),
                                      ("shapes", 0, "cuda", "ImageSets/Segmentation/trainval.txt")):
        s = sub.add_parser(name)
        s.add_argument("--config", default="demo" if name == "layouts" else "voc")
        s.add_argument("--voc-root", required=True)
        s.add_argument("--model", default="random", help="a trained cam_net.pth, or random (default)")
        s.add_argument("--list", default=lst, help="ids, under the VOC root (default %(default)s)")
        s.add_argument("--images", type=int, default=images, help="the list's first N ids (0: all; default %(default)s)")
        s.add_argument("--device", default=device, help="cpu or cuda (default %(default)s)")
        s.add_argument("--set", nargs="*", default=[], metavar="key=value", help="config overrides")
    sub.choices["layouts"].add_argument("--rounds", type=int, default=3)
    sub.choices["layouts"].add_argument("--threads", type=int, default=1)
    sub.choices["layouts"].add_argument("--save-dir", help="keep each setting's CAMs of the last round here")
    sub.choices["shapes"].add_argument("--workers", type=int, default=4)
    args = p.parse_args(argv)
    return {"layouts": layouts, "parts": parts, "shapes": shapes}[args.what](args)


if __name__ == "__main__":
    sys.exit(main())
