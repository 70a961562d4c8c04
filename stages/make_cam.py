"""Stage make-cam: multi-scale + flip CAMs for every id of data.infer_lists, in PSA's format.

Reads: <work>/<variant>/train_cam/cam_net.pth, images and labels under the VOC root.
Writes: <work>/<variant>/make_cam/cams/<id>.npy (dict {class: HxW float32}), DONE.json.
Each CAM file is written atomically, so a rerun after a crash only computes the missing ones.
"""
import time
from pathlib import Path

from torch.utils.data import DataLoader, Dataset

from psa_baseline import voc
from psa_baseline.cam_infer import multiscale_cam, scale_batches
from psa_baseline.fileio import looks_complete, save_npy
from psa_baseline.hardware import channels_last_ok, memory_format
from psa_baseline.progress import with_progress
from .builders import (build_cam_net, files_identity, inputs_identity, labels_for, load_stage_weights, split_ids,
                       voc_root)
from .distributed import add_shard_argument, finish_when_complete, my_share, parse_shard, rank, resolve_device
from .stage import Stage, upstream_fp
from .config import variant_name

NAME = "make_cam"


def infer_ids(cfg):
    ids, seen = [], set()
    for rel in cfg["data"]["infer_lists"]:
        for i in split_ids(cfg, rel):
            if i not in seen:
                seen.add(i)
                ids.append(i)
    return ids


class ScaledImages(Dataset):
    """(id, image, scale_batches) per id: the image reading and PIL resizing, run in loader workers."""

    def __init__(self, root, ids, scales, flip):
        self.root, self.ids, self.scales, self.flip = root, ids, scales, flip

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, k):
        img = self.root.read_image(self.ids[k])
        return self.ids[k], img, scale_batches(img, self.scales, self.flip)


def _as_is(item):
    return item


def scaled_images(root, ids, scales, flip, workers):
    """ScaledImages in ids' order; workers > 0: prepared in that many processes while the device computes
    (on a GPU PSA's PIL resizes take ~21 ms of a VOC image's ~50 ms in bf16, docs/notes/gpu.md)."""
    ds = ScaledImages(root, ids, scales, flip)
    if workers <= 0:
        return (ds[k] for k in range(len(ds)))
    return iter(DataLoader(ds, batch_size=None, num_workers=workers, collate_fn=_as_is, prefetch_factor=4))


def load_cam_net(cfg, path, device):
    """The trained CAM net at `path` (a cam_net.pth of this config's network), in eval mode and in the
    layout make-cam runs it in (NHWC where hardware.channels_last_ok: faster, the same CAMs to rounding)."""
    net = load_stage_weights(build_cam_net(cfg, pretrained=False), path,
                             "the CAM net", "net.*", "train-cam")
    return net.to(device, memory_format=memory_format(device, cfg["cam_infer"]["bf16"])).eval()


def add_arguments(p):
    add_shard_argument(p)


def run(cfg, force=False, shard=None):
    """shard (i, n): only shard i of n of the images (separate jobs); see common.my_share."""
    how = {k: v for k, v in cfg["cam_infer"].items() if k != "num_workers"}  # workers: same CAMs
    net_path = Path(cfg["work_dir"]) / variant_name(cfg) / "train_cam" / "cam_net.pth"
    # the CAM net and the images as they are on disk, not only the configs that made them
    deps = [upstream_fp(cfg, "train_cam"), how, cfg["data"]["infer_lists"], files_identity([net_path]),
            inputs_identity(cfg, infer_ids(cfg), images=True)]
    st = Stage(cfg, NAME, deps, force, shard)
    cam_dir = st.dir / "cams"
    if st.is_done():
        return cam_dir
    device = resolve_device(cfg["device"])
    root = voc_root(cfg)
    ids = infer_ids(cfg)
    labels = labels_for(cfg, root, ids, st.log)
    voc.check_dataset(root, ids, need_seg=False, labels=labels)

    net = load_cam_net(cfg, st.work_dir / st.variant / "train_cam" / "cam_net.pth", device)

    mine = my_share(ids, shard)  # each rank (and --shard job) takes its share; files are per image
    # a file left by an earlier run counts only when whole (an emptied or torn one is made again)
    todo = [i for i in mine if not looks_complete(cam_dir / f"{i}.npy")]
    st.log.info("CAMs for %d images (%d already on disk), scales %s, flip %s -> %s", len(mine),
                len(mine) - len(todo), cfg["cam_infer"]["scales"], cfg["cam_infer"]["flip"], cam_dir)
    t0 = time.time()
    c = cfg["cam_infer"]
    nhwc = channels_last_ok(device, c["bf16"])
    st.log.info("precision %s, layout %s", "bf16 autocast" if c["bf16"] else "float32", "NHWC" if nhwc else "NCHW")
    inputs = scaled_images(root, todo, c["scales"], c["flip"], c["num_workers"])
    for i, (j, img, batches) in zip(with_progress(todo, f"make-cam[{st.variant}]", enabled=rank() == 0), inputs):
        assert i == j, (i, j)
        cams = multiscale_cam(net, img, labels[i], scales=c["scales"], flip=c["flip"], device=device,
                              bf16=c["bf16"], channels_last=nhwc, batches=batches)
        save_npy(cam_dir / f"{i}.npy", cams)
    dt = time.time() - t0
    st.log.info("%d CAMs in %.1f s (%.3f s/image)", len(todo), dt, dt / max(1, len(todo)))
    finish_when_complete(st, lambda: [i for i in ids if not looks_complete(cam_dir / f"{i}.npy")],
                         cam_dir="cams", n_images=len(ids), seconds=round(dt, 1))
    return cam_dir


def main(args):
    from .cli import config_from_args
    return run(config_from_args(args), force=args.force, shard=parse_shard(args.shard))


if __name__ == "__main__":
    from .cli import stage_main
    stage_main("make-cam")
