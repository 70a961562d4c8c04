"""Stage make-cam: multi-scale + flip CAMs for every id of data.infer_lists, in PSA's format.

Reads: <work>/<variant>/train_cam/cam_net.pth, images and labels under the VOC root.
Writes: <work>/<variant>/make_cam/cams/<id>.npy (dict {class: HxW float32}), DONE.json.
Each CAM file is written atomically, so a rerun after a crash only computes the missing ones.
"""
import time

import torch

from psa_baseline import voc
from psa_baseline.cam_infer import multiscale_cam
from psa_baseline.fileio import save_npy
from psa_baseline.progress import with_progress
from .builders import build_cam_net, labels_for, split_ids, voc_root
from .common import (Stage, add_shard_argument, finish_when_complete, my_share, parse_shard, rank, resolve_device,
                     upstream_fp)

NAME = "make_cam"


def infer_ids(cfg):
    ids, seen = [], set()
    for rel in cfg["data"]["infer_lists"]:
        for i in split_ids(cfg, rel):
            if i not in seen:
                seen.add(i)
                ids.append(i)
    return ids


def add_arguments(p):
    add_shard_argument(p)


def run(cfg, force=False, shard=None):
    """shard (i, n): only shard i of n of the images (separate jobs); see common.my_share."""
    deps = [upstream_fp(cfg, "train_cam"), cfg["cam_infer"], cfg["data"]["infer_lists"]]
    st = Stage(cfg, NAME, deps, force, shard)
    cam_dir = st.dir / "cams"
    if st.is_done():
        return cam_dir
    device = resolve_device(cfg["device"])
    root = voc_root(cfg)
    ids = infer_ids(cfg)
    labels = labels_for(cfg, root, ids, st.log)
    voc.check_dataset(root, ids, need_seg=False, labels=labels)

    net = build_cam_net({**cfg, "net": {**cfg["net"], "weights": None}})
    model_path = st.work_dir / st.variant / "train_cam" / "cam_net.pth"
    net.load_state_dict(torch.load(model_path, map_location="cpu", weights_only=True))
    net = net.to(device, memory_format=torch.channels_last).eval()  # NHWC: faster, same CAMs (cam_infer)

    mine = my_share(ids, shard)  # each rank (and --shard job) takes its share; files are per image
    todo = [i for i in mine if not (cam_dir / f"{i}.npy").exists()]
    st.log.info("CAMs for %d images (%d already on disk), scales %s, flip %s -> %s", len(mine),
                len(mine) - len(todo), cfg["cam_infer"]["scales"], cfg["cam_infer"]["flip"], cam_dir)
    t0 = time.time()
    for i in with_progress(todo, f"make-cam[{st.variant}]", enabled=rank() == 0):
        cams = multiscale_cam(net, root.read_image(i), labels[i], scales=cfg["cam_infer"]["scales"],
                              flip=cfg["cam_infer"]["flip"], device=device, bf16=cfg["cam_infer"]["bf16"],
                              channels_last=True)
        save_npy(cam_dir / f"{i}.npy", cams)
    dt = time.time() - t0
    st.log.info("%d CAMs in %.1f s (%.3f s/image)", len(todo), dt, dt / max(1, len(todo)))
    finish_when_complete(st, lambda: [i for i in ids if not (cam_dir / f"{i}.npy").exists()],
                         cam_dir="cams", n_images=len(ids), seconds=round(dt, 1))
    return cam_dir


def main(args):
    from .cli import config_from_args
    return run(config_from_args(args), force=args.force, shard=parse_shard(args.shard))


if __name__ == "__main__":
    from .cli import stage_main
    stage_main("make-cam")
