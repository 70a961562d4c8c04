"""make-pseudo's per-image work on a device: AffinityNet forward and the random walk, timed apart, and the
walk's labels on the device against the same walk on the CPU (same affinities), per image.

Reads the CAMs that make-cam wrote (`--cam-dir`, PSA's <id>.npy dicts) and an AffinityNet (`--model`: a
trained aff_net.pth, or 'random' for timing: random init gives near-uniform affinities, so the labels still
test the walk's arithmetic but not a trained walk). Config keys rw.* as in make-pseudo. Times are medians
over images after one warm-up image; the device is synchronised before each clock read.

    python -m scripts.bench_pseudo --config voc --voc-root VOCmini --cam-dir W/eader/make_cam/cams \\
        --model W/eader/train_aff/aff_net.pth --device cuda --images 30 --cpu-images 10
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="voc")
    p.add_argument("--voc-root", required=True)
    p.add_argument("--cam-dir", required=True, help="make-cam's output folder (<id>.npy)")
    p.add_argument("--model", required=True, help="aff_net.pth of this config's network, or 'random'")
    p.add_argument("--list", default="ImageSets/Segmentation/val.txt", help="ids, under the VOC root")
    p.add_argument("--images", type=int, default=30)
    p.add_argument("--cpu-images", type=int, default=10, help="of these, how many also walk on the CPU")
    p.add_argument("--device", default="cuda")
    p.add_argument("--set", nargs="*", default=[], metavar="key=value", help="config overrides")
    p.add_argument("--bf16", action="store_true", help="AffinityNet forward under bf16 autocast (the walk "
                   "stays float32)")
    args = p.parse_args(argv)

    import numpy as np
    import torch
    from psa_baseline.affinity import AffinityNet
    from psa_baseline.evaluation import load_cam_dict
    from psa_baseline.random_walk import propagate_cams
    from psa_baseline.voc import VOCRoot
    from stages.builders import labels_for, res38_spec
    from stages.config import load_config
    from stages.make_pseudo import padded_input
    cfg = load_config(args.config, [("voc_root", args.voc_root), *args.set])
    r = cfg["rw"]
    dev = torch.device(args.device)
    torch.manual_seed(0)
    net = AffinityNet(res38_spec(cfg))
    if args.model != "random":
        net.load_state_dict(torch.load(args.model, map_location="cpu", weights_only=True))
    net = net.to(dev).eval()
    root = VOCRoot(args.voc_root)
    ids = (Path(args.voc_root) / args.list).read_text().split()[:args.images + 1]
    labels = labels_for(cfg, root, ids)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    amp = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=args.bf16)

    def walk(cams, aff, shape):
        return propagate_cams(cams, aff, shape, alpha_bg=r["alpha"], beta=r["beta"], t=r["t"])

    t_fwd, t_walk, t_cpu, same, pixels, differ = [], [], [], 0, 0, 0
    torch.set_num_threads(1)  # the CPU walk's fastest setting (random_walk_sparse)
    for n, i in enumerate(ids):
        img = root.read_image(i)
        cams = load_cam_dict(Path(args.cam_dir) / f"{i}.npy", img.shape[:2], labels[i])
        with torch.no_grad():
            sync()
            t0 = time.perf_counter()
            with amp:
                aff = net.affinities(net(padded_input(img).to(dev)))[0].float()
            sync()
            t1 = time.perf_counter()
            label = walk(cams, aff, img.shape[:2])
            sync()
            t2 = time.perf_counter()
            if n == 0:
                continue  # warm-up
            t_fwd.append(t1 - t0)
            t_walk.append(t2 - t1)
            if n <= args.cpu_images:
                t3 = time.perf_counter()
                ref = walk(cams, aff.cpu(), img.shape[:2])
                t_cpu.append(time.perf_counter() - t3)
                same += int(np.array_equal(label, ref))
                differ += int((label != ref).sum())
                pixels += label.size
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    ms = lambda v: 1000 * statistics.median(v)  # noqa: E731
    print(f"{len(t_fwd)} images of {args.list} on {name}; model {args.model}; rw beta {r['beta']} t {r['t']} "
          f"alpha {r['alpha']}; AffinityNet {'bf16' if args.bf16 else 'float32'}")
    print("| part | ms/image (median) |\n|---|---|")
    print(f"| AffinityNet forward ({args.device}) | {ms(t_fwd):.1f} |")
    print(f"| random walk ({args.device}) | {ms(t_walk):.1f} |")
    print(f"| both ({args.device}) | {1000 * statistics.median([a + b for a, b in zip(t_fwd, t_walk)]):.1f} |")
    if t_cpu:
        print(f"| random walk (CPU, 1 thread, same affinities) | {ms(t_cpu):.1f} |")
        print(f"labels identical to the CPU walk: {same} of {len(t_cpu)} images "
              f"({differ} of {pixels} pixels differ)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
