"""make-cam's loop (stages.make_cam.scaled_images + multiscale_cam + save_npy) over the same images twice in
one process: the first pass pays the device's one-off cost per new input shape (kernel choice and loading
for each image size x scale), the second shows the steady cost per image. VOC images come in hundreds of
sizes, so a short list (VOCmini: 56 sizes in 200 images) overstates what a full run pays per image.

    python scripts/bench_cam_shapes.py --config voc --voc-root VOCmini --device cuda --workers 4 cam_infer.bf16=true
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="voc")
    p.add_argument("--voc-root", required=True)
    p.add_argument("--list", default="ImageSets/Segmentation/trainval.txt")
    p.add_argument("--device", default="cuda")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("set", nargs="*", metavar="key=value", help="config overrides")
    args = p.parse_args(argv)

    import torch
    from psa_baseline.cam_infer import multiscale_cam
    from psa_baseline.fileio import save_npy
    from psa_baseline.voc import VOCRoot
    from stages.builders import build_cam_net, labels_for
    from stages.config import load_config
    from stages.make_cam import scaled_images
    cfg = load_config(args.config, [("voc_root", args.voc_root), *args.set])
    c, dev = cfg["cam_infer"], torch.device(args.device)
    torch.manual_seed(0)
    net = build_cam_net(cfg, pretrained=False).to(dev, memory_format=torch.channels_last).eval()
    root = VOCRoot(args.voc_root)
    ids = (Path(args.voc_root) / args.list).read_text().split()
    labels = labels_for(cfg, root, ids)
    out = Path(tempfile.mkdtemp())
    shapes = len({root.read_image(i).shape for i in ids})
    print(f"{len(ids)} images ({shapes} sizes) of {args.list}, scales {c['scales']} flip {c['flip']}, bf16 "
          f"{c['bf16']}, {args.workers} loader workers, {torch.cuda.get_device_name(dev) if dev.type == 'cuda' else 'cpu'}")
    for n in (1, 2):
        t0 = time.perf_counter()
        for i, img, batches in scaled_images(root, ids, c["scales"], c["flip"], args.workers):
            save_npy(out / f"{i}.npy", multiscale_cam(net, img, labels[i], c["scales"], c["flip"], dev, c["bf16"],
                                                      channels_last=True, batches=batches))
        dt = time.perf_counter() - t0
        print(f"pass {n}: {dt:.1f} s, {1000 * dt / len(ids):.1f} ms/image", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
