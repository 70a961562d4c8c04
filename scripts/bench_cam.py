"""make-cam's per-image work (read, multi-scale + flip CAMs, write the .npy), images/s: before and after.

"before" is psa_baseline/cam_infer.py at git revision --reference (loaded from `git show`, NCHW net and
input, every class upsampled); "after" is this tree's make-cam path (present classes, channels_last).
Each runs in float32 and under bf16 autocast, round-robin in one process, one warm-up image, order rotated
each round, so a busy machine slows all settings alike; images/s from each setting's median round. The CAM
net and scales come from the config and a trained cam_net.pth. With --save-dir, each setting's CAMs of the
last round go to SAVE_DIR/<setting>/ (score them with `psa-eader eval-cam --cam-dir`), and the largest
difference between before and after is printed per dtype.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_cam.py --config demo --voc-root /tmp/spd/data \\
        --model /tmp/spd/w2/baseline/train_cam/cam_net.pth --images 60 --rounds 3 --save-dir /tmp/spd/cams

`--fresh` times each setting in its own process per round, warmed up on a size not in the list, so every
image size is new to it, as in make-cam (on the CPU oneDNN builds kernels per input shape: a second pass
over the same 40 demo images took 48 ms per image against 63 on the first, bf16 after path, idle machine).
The default round-robin rounds came out close to it all the same (idle, 150 val images, 3 rounds, one
thread: after_bf16 2.21x before_fp32 by default, 2.01x with --fresh), so the four settings' rounds do not
measurably reuse each size's kernels.
"""
import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def module_at(rev, rel, src=None):
    """The module file `rel` as it was at git revision `rev` (or with source text `src`)."""
    if src is None:
        src = subprocess.run(["git", "show", f"{rev}:{rel}"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout
    path = Path(tempfile.mkdtemp()) / Path(rel).name
    path.write_text(src)
    package = str(Path(rel).parent).replace("/", ".")  # its relative imports resolve in this tree's package
    spec = importlib.util.spec_from_file_location(f"{package}.ref_{Path(rel).stem}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


SETTINGS = ("before_fp32", "before_bf16", "after_fp32", "after_bf16")


def fresh_rounds(args, argv):
    """--fresh: per round, each setting (order rotated) in its own process; images/s from the median round."""
    base = [a for a in argv if a != "--fresh"]
    times, n = {s: [] for s in SETTINGS}, 0
    for r in range(args.rounds):
        for s in SETTINGS[r % 4:] + SETTINGS[:r % 4]:
            res = subprocess.run([sys.executable, __file__, *base, "--only", s], capture_output=True, text=True)
            if res.returncode:
                sys.exit(f"{s}: {res.stderr[-2000:]}")
            out = json.loads(res.stdout.strip().splitlines()[-1])
            times[s].append(out["seconds"])
            n = out["n"]
    ref = n / statistics.median(times["before_fp32"])
    print(f"{n} images of {args.list}, every image size new to each process (--fresh), {args.rounds} rounds, "
          f"{args.threads} thread(s); model {args.model}")
    print("| setting | images/s | ms/image | vs before_fp32 |\n|---|---|---|---|")
    for s in SETTINGS:
        ips = n / statistics.median(times[s])
        print(f"| {s} | {ips:.2f} | {1000 / ips:.1f} | {ips / ref:.2f}x |")
    return 0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="demo")
    p.add_argument("--voc-root", required=True)
    p.add_argument("--model", required=True, help="a trained cam_net.pth of this config's network, or 'random': "
                   "random init, for timing only (the before/after difference is still checked)")
    p.add_argument("--list", default="ImageSets/Segmentation/val.txt", help="ids, under the VOC root")
    p.add_argument("--images", type=int, default=60)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--reference", default="a7b10a1", help="git revision of the 'before' cam_infer.py")
    p.add_argument("--reference-file", help="the 'before' cam_infer.py as a file (where there is no git history, "
                   "e.g. a copied tree: `git show a7b10a1:psa_baseline/cam_infer.py > FILE`)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default %(default)s)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--set", nargs="*", default=[], metavar="key=value", help="config overrides")
    p.add_argument("--fresh", action="store_true", help="time each setting in a fresh process per round, warmed up "
                   "on an image size not in the list, so every image size is met for the first time, as make-cam "
                   "meets them (oneDNN builds its kernels per input shape)")
    p.add_argument("--only", help=argparse.SUPPRESS)  # --fresh's child: one setting, one pass, JSON seconds out
    p.add_argument("--save-dir")
    args = p.parse_args(argv)

    if args.fresh:
        return fresh_rounds(args, argv if argv is not None else sys.argv[1:])
    import numpy as np
    import torch
    from psa_baseline import cam_infer
    from psa_baseline.fileio import save_npy
    from psa_baseline.voc import VOCRoot
    from stages.builders import build_cam_net, labels_for
    from stages.config import load_config
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config, [("voc_root", args.voc_root), *args.set])
    ref = module_at(args.reference, "psa_baseline/cam_infer.py",
                    Path(args.reference_file).read_text() if args.reference_file else None)
    dev = torch.device(args.device)
    torch.manual_seed(0)
    net = build_cam_net(cfg, pretrained=False)
    if args.model != "random":
        net.load_state_dict(torch.load(args.model, map_location="cpu", weights_only=True))
    net.to(dev).eval()
    root = VOCRoot(args.voc_root)
    ids = (Path(args.voc_root) / args.list).read_text().split()[:args.images]
    labels = labels_for(cfg, root, ids)
    scales, flip = cfg["cam_infer"]["scales"], cfg["cam_infer"]["flip"]
    out = Path(args.save_dir or tempfile.mkdtemp())

    def before(bf16):
        net.to(memory_format=torch.contiguous_format)
        return lambda img, lab: ref.multiscale_cam(net, img, lab, scales, flip, dev, bf16)

    def after(bf16):
        net.to(memory_format=torch.channels_last)
        return lambda img, lab: cam_infer.multiscale_cam(net, img, lab, scales, flip, dev, bf16,
                                                             channels_last=True)

    settings = {"before_fp32": (before, False), "before_bf16": (before, True),
                "after_fp32": (after, False), "after_bf16": (after, True)}
    if args.only:
        make, bf16 = settings[args.only]
        fn = make(bf16)
        fn(np.random.default_rng(0).integers(0, 256, (61, 67, 3), dtype=np.uint8), labels[ids[0]])  # warm-up
        t0 = time.perf_counter()
        for i in ids:
            save_npy(out / args.only / f"{i}.npy", fn(root.read_image(i), labels[i]))
        print(json.dumps({"setting": args.only, "seconds": time.perf_counter() - t0, "n": len(ids)}))
        return 0
    times = {s: [] for s in settings}
    names = list(settings)
    for r in range(args.rounds):
        for s in names[r % len(names):] + names[:r % len(names)]:
            make, bf16 = settings[s]
            fn = make(bf16)
            fn(root.read_image(ids[0]), labels[ids[0]])  # warm-up
            t0 = time.perf_counter()
            for i in ids:
                save_npy(out / s / f"{i}.npy", fn(root.read_image(i), labels[i]))
            times[s].append(time.perf_counter() - t0)
    base = len(ids) / statistics.median(times["before_fp32"])
    where = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu, {args.threads} thread(s)"
    print(f"{len(ids)} images of {args.list}, scales {scales} flip {flip}, {where}, {args.rounds} rounds; "
          f"before = cam_infer.py at {args.reference_file or args.reference}; model {args.model}")
    print("| setting | images/s | ms/image | vs before_fp32 |\n|---|---|---|---|")
    for s in names:
        ips = len(ids) / statistics.median(times[s])
        print(f"| {s} | {ips:.2f} | {1000 / ips:.1f} | {ips / base:.2f}x |")
    for d in ("fp32", "bf16"):
        diff = 0.0
        for i in ids:
            a = np.load(out / f"before_{d}" / f"{i}.npy", allow_pickle=True).item()
            b = np.load(out / f"after_{d}" / f"{i}.npy", allow_pickle=True).item()
            assert a.keys() == b.keys(), i
            diff = max([diff] + [float(np.abs(a[k] - b[k]).max()) for k in a])
        print(f"largest |before - after| over the CAMs, {d}: {diff:.3g}")
    if args.save_dir:
        print(f"CAMs in {out}/<setting>/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
