"""Stage make-pseudo: pseudo labels by the random walk of the CAMs over AffinityNet's affinities.

Reads: <work>/<variant>/train_aff/aff_net.pth, CAM dicts for every id of data.infer_lists (default
<work>/<variant>/make_cam/cams; --cam-dir DIR for CAMs of other code bases), images and labels.
Writes: <work>/<variant>/make_pseudo/pseudo/<id>.png (VOC palette PNG: 0 bg, c+1 class c), with
rw.save_scores also scores/<id>.npy (the walked scores on the stride-8 grid, {0: bg, c+1: class c}
float32 dicts), DONE.json. PSA's infer_aff: image zero-padded to a multiple of 8 (after normalisation),
background (1 - max CAM)^rw.alpha, affinities ** rw.beta, rw.t walk steps (sparse: the neighbour lists
within aff_train.radius, PSA: 5), bilinear upsampling, argmax. Files are written atomically; a rerun does the missing ones.
"""
import contextlib
import time

import numpy as np
import torch
import torch.nn.functional as F

from psa_baseline import voc
from psa_baseline.affinity import AffinityNet
from psa_baseline.errors import InputError
from psa_baseline.evaluation import load_cam_dict
from psa_baseline.progress import with_progress
from psa_baseline.fileio import looks_complete, save_npy
from psa_baseline.random_walk import propagate_cams, random_walk_sparse
from .builders import labels_for, load_stage_weights, res38_spec, voc_root
from .distributed import add_shard_argument, finish_when_complete, my_share, parse_shard, rank, resolve_device
from .stage import Stage, upstream_fp
from .make_cam import infer_ids
from .make_crf import cam_source, require_cams

NAME = "make_pseudo"


def add_arguments(p):
    p.add_argument("--cam-dir", help="walk the <id>.npy CAM dicts of this folder (PSA, SEAM, OC-CSE, ...) "
                   "instead of this variant's make-cam output")
    add_shard_argument(p)


def check_config(cfg):
    r = cfg["rw"]
    if not r["beta"] > 0:
        raise InputError(f"config key 'rw.beta': must be positive, got {r['beta']!r}")
    if not r["t"] >= 1:
        raise InputError(f"config key 'rw.t': at least 1 walk step, got {r['t']!r}")
    if not r["alpha"] > 0:
        raise InputError(f"config key 'rw.alpha': must be positive, got {r['alpha']!r}")


@contextlib.contextmanager
def torch_threads(n):
    """The walk is many small SpMMs: one thread is fastest (see random_walk_sparse)."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def padded_input(img):
    """Normalised image (1, 3, 8h, 8w), zero-padded at the bottom/right to a multiple of 8 (PSA)."""
    x = voc.normalize(img)[None]
    H, W = img.shape[:2]
    return F.pad(x, (0, -(-W // 8) * 8 - W, 0, -(-H // 8) * 8 - H))


def walk_scores(cam_dict, aff, shape, alpha, beta, t, radius=5):
    """propagate_cams with the walked scores kept: (label uint8 HxW, {0: bg, c+1: class c} on the grid).

    Same steps as psa_baseline.random_walk.propagate_cams (tests check that the labels agree).
    """
    H, W = shape
    h, w = -(-H // 8), -(-W // 8)
    keys = sorted(cam_dict)
    cams = np.zeros((len(keys) + 1, h * 8, w * 8), np.float32)
    for i, k in enumerate(keys):
        cams[i + 1, :H, :W] = cam_dict[k]
    cams[0, :H, :W] = (1 - cams[1:, :H, :W].max(0, initial=0)) ** alpha
    grid = F.avg_pool2d(torch.from_numpy(cams)[None], 8, 8)[0]
    rw = random_walk_sparse(aff, grid, beta, t, radius)
    up = F.interpolate(rw[None], size=(h * 8, w * 8), mode="bilinear", align_corners=False)[0]
    ids = np.asarray([0] + [int(k) + 1 for k in keys], np.uint8)
    label = ids[up.argmax(0)[:H, :W].cpu().numpy()]
    return label, {int(c): rw[i].cpu().numpy().astype(np.float32) for i, c in enumerate(ids)}


def load_aff_net(cfg, path, device):
    net = load_stage_weights(AffinityNet(res38_spec(cfg), radius=cfg["aff_train"]["radius"]), path, "the AffinityNet", "net.*", "train-aff")
    return net.to(device).eval()


def run(cfg, force=False, cam_dir=None, shard=None):
    check_config(cfg)
    src, src_fp = cam_source(cfg, cam_dir)
    r = cfg["rw"]
    deps = [src_fp, upstream_fp(cfg, "train_aff"), r, cfg["data"]["infer_lists"], cfg["voc_root"]]
    st = Stage(cfg, NAME, deps, force, shard)
    out_dir, score_dir = st.dir / "pseudo", st.dir / "scores"
    if st.is_done():
        return out_dir
    device = resolve_device(cfg["device"])
    root = voc_root(cfg)
    ids = infer_ids(cfg)
    labels = labels_for(cfg, root, ids, st.log)
    voc.check_dataset(root, ids, need_seg=False, labels=labels)
    require_cams(src, ids, "data.infer_lists", default=cam_dir is None)
    net = load_aff_net(cfg, st.work_dir / st.variant / "train_aff" / "aff_net.pth", device)

    def done(i):
        # whole files only: an emptied or torn one is made again
        return looks_complete(out_dir / f"{i}.png") and (not r["save_scores"] or looks_complete(score_dir / f"{i}.npy"))

    mine = my_share(ids, shard)
    todo = [i for i in mine if not done(i)]
    st.log.info("random walk (beta %s, t %s, alpha %s) for %d images (%d already on disk) -> %s", r["beta"],
                r["t"], r["alpha"], len(mine), len(mine) - len(todo), out_dir)
    t0 = time.time()
    for i in with_progress(todo, f"make-pseudo[{st.variant}]", enabled=rank() == 0):
        img = root.read_image(i)
        cams = load_cam_dict(src / f"{i}.npy", img.shape[:2], labels[i])
        with torch.no_grad():
            aff = net.affinities(net(padded_input(img).to(device)))[0]
            with torch_threads(1):
                if r["save_scores"]:
                    label, scores = walk_scores(cams, aff, img.shape[:2], r["alpha"], r["beta"], r["t"], net.radius)
                    save_npy(score_dir / f"{i}.npy", scores)
                else:
                    label = propagate_cams(cams, aff, img.shape[:2], alpha_bg=r["alpha"], beta=r["beta"],
                                           t=r["t"], radius=net.radius, name=f"id {i}")
        voc.save_label_png(out_dir / f"{i}.png", label)
    dt = time.time() - t0
    st.log.info("%d pseudo labels in %.1f s (%.3f s/image)", len(todo), dt, dt / max(1, len(todo)))
    finish_when_complete(st, lambda: [i for i in ids if not done(i)], pseudo_dir="pseudo",
                         scores_dir="scores" if r["save_scores"] else None, cam_dir=str(src),
                         n_images=len(ids), seconds=round(dt, 1))
    return out_dir


def main(args):
    from .cli import config_from_args
    return run(config_from_args(args), force=args.force, cam_dir=args.cam_dir, shard=parse_shard(args.shard))


if __name__ == "__main__":
    from .cli import stage_main
    stage_main("make-pseudo")
