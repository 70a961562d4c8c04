"""Stage make-crf: PSA's la/ha dense-CRF labels from CAM dicts (AffinityNet's training labels).

Reads: CAM dicts <id>.npy for the ids of crf.list (default <work>/<variant>/make_cam/cams; --cam-dir DIR
takes CAMs made by other code bases, PSA/SEAM/OC-CSE: float16/32/64 maps, int or numpy-int keys), the
original RGB images and the image-level labels (a CAM of a class the image does not have is an error).
Writes: <work>/<variant>/make_crf/{crf_la,crf_ha}/<id>.npy (PSA's {0: bg, c+1: class c} float32 HxW dicts),
DONE.json. Background score (1 - max CAM)^alpha: crf.alpha_la (4, strong background: its foreground is
confident) and crf.alpha_ha (32, PSA's code default and its README's published alphas 4/16/32; 24 is the
documented alternative; weak background: its background is confident).
crf.workers processes (one image at a time each); every file is written atomically and a rerun only
computes the missing ones.
    psa-eader make-crf --cam-dir DIR --voc-root DIR --workers 2
"""
import multiprocessing as mp
import time
from pathlib import Path


from psa_baseline import voc
from psa_baseline.crf import cam_dict_to_crf
from psa_baseline.errors import InputError
from psa_baseline.evaluation import load_cam_dict
from psa_baseline.progress import with_progress
from psa_baseline.fileio import looks_complete, save_npy
from .builders import labels_for, split_ids, voc_root
from .config import resolve_data_path
from .distributed import add_shard_argument, finish_when_complete, my_share, parse_shard, rank
from .stage import Stage, upstream_fp
from .config import variant_name

NAME = "make_crf"
LA, HA = "crf_la", "crf_ha"


def add_arguments(p):
    p.add_argument("--cam-dir", help="read <id>.npy CAM dicts from this folder (CAMs of PSA, SEAM, OC-CSE, ...) "
                   "instead of this variant's make-cam output (the folder counts by its path: after changing "
                   "its files, rerun with --force)")
    p.add_argument("--workers", type=int, help="CRF processes (default crf.workers)")
    add_shard_argument(p)


def check_config(cfg):
    c = cfg["crf"]
    for k in ("alpha_la", "alpha_ha"):
        if not c[k] > 0:
            raise InputError(f"config key 'crf.{k}': must be positive, got {c[k]!r}")
    if not c["scale_factor"] > 0:
        raise InputError(f"config key 'crf.scale_factor': must be positive, got {c['scale_factor']!r}")
    if c["workers"] < 1:
        raise InputError(f"config key 'crf.workers': must be at least 1, got {c['workers']!r}")


def cam_source(cfg, cam_dir=None):
    """(folder of CAM dicts, its fingerprint part): this variant's make-cam output, or a given folder."""
    if cam_dir is None:
        return Path(cfg["work_dir"]) / variant_name(cfg) / "make_cam" / "cams", upstream_fp(cfg, "make_cam")
    cam_dir = Path(cam_dir).resolve()
    if not cam_dir.is_dir():
        raise InputError(f"--cam-dir {cam_dir} is not a folder of <id>.npy CAM dicts")
    return cam_dir, {"cam_dir": str(cam_dir)}


def require_cams(cam_dir, ids, list_name, default):
    missing = [i for i in ids if not (Path(cam_dir) / f"{i}.npy").is_file()]
    if missing:
        hint = (f"add {list_name} to data.infer_lists and rerun make-cam, or pass --cam-dir" if default
                else "make CAMs for every id of the list, or pass a shorter list")
        raise InputError(f"{len(missing)} of {len(ids)} ids of {list_name} have no CAM dict in {cam_dir}: "
                         f"{voc._list_ids(missing)}; {hint}")


def crf_one(task):
    """One image: read it and its CAM dict (checked against the image size and labels), write la and ha.

    Module level so that worker processes can run it; returns the id.
    """
    img_id, image_path, cam_path, labels, alphas, outs, scale_factor = task
    img = voc.read_jpeg(image_path, img_id)
    cams = load_cam_dict(cam_path, img.shape[:2], labels)
    name = f"id {img_id} ({cam_path})"
    if not cams:
        raise InputError(f"{name}: the CAM dict is empty, but the image has classes "
                         f"{[int(c) for c in labels.nonzero()[0]]}; regenerate it")
    for alpha, out in zip(alphas, outs):
        save_npy(out, cam_dict_to_crf(img, cams, alpha, name=name, scale_factor=scale_factor))
    return img_id


def crf_many(tasks, workers, desc="make-crf", progress=True):
    """Run crf_one over `tasks` with `workers` processes (1: in this process). Errors stop everything."""
    tasks = list(tasks)
    if workers <= 1 or len(tasks) <= 1:
        for t in with_progress(tasks, desc, enabled=progress):
            crf_one(t)
        return len(tasks)
    # fork: workers need no re-import (torch is heavy) and run no torch code, so forking is safe
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    with ctx.Pool(min(workers, len(tasks))) as pool:  # leaving the block terminates the workers
        for _ in with_progress(pool.imap_unordered(crf_one, tasks), desc, total=len(tasks), enabled=progress):
            pass
    return len(tasks)


def make_tasks(root, ids, labels, cam_dir, out_dir, alphas, scale_factor=1.0):
    """Tasks for the ids whose la or ha file is missing (a crash between the two redoes the image)."""
    tasks = []
    for i in ids:
        outs = (Path(out_dir) / LA / f"{i}.npy", Path(out_dir) / HA / f"{i}.npy")
        if all(looks_complete(o) for o in outs):  # an emptied or torn file is made again
            continue
        tasks.append((i, root.image_path(i), Path(cam_dir) / f"{i}.npy", labels[i], alphas, outs, scale_factor))
    return tasks


def run(cfg, force=False, cam_dir=None, shard=None):
    check_config(cfg)
    c = cfg["crf"]
    src, src_fp = cam_source(cfg, cam_dir)
    deps = [src_fp, {k: c[k] for k in ("alpha_la", "alpha_ha", "scale_factor", "list")}, cfg["voc_root"],
            cfg["data"]["cls_labels"]]  # not workers: they do not change the output
    st = Stage(cfg, NAME, deps, force, shard)
    if st.is_done():
        return st.dir
    root = voc_root(cfg)
    resolve_data_path(cfg, c["list"], "crf.list")
    ids = split_ids(cfg, c["list"])
    labels = labels_for(cfg, root, ids, st.log)
    voc.check_dataset(root, ids, need_seg=False, labels=labels)
    require_cams(src, ids, c["list"], default=cam_dir is None)

    mine = my_share(ids, shard)
    tasks = make_tasks(root, mine, labels, src, st.dir, (c["alpha_la"], c["alpha_ha"]), c["scale_factor"])
    st.log.info("la/ha CRF (alphas %s/%s) for %d images (%d already on disk) from %s, %d workers",
                c["alpha_la"], c["alpha_ha"], len(mine), len(mine) - len(tasks), src, c["workers"])
    t0 = time.time()
    crf_many(tasks, c["workers"], desc=f"make-crf[{st.variant}]", progress=rank() == 0)
    dt = time.time() - t0
    st.log.info("%d images in %.1f s (%.2f images/s)", len(tasks), dt, len(tasks) / max(dt, 1e-9))
    finish_when_complete(st, lambda: [t[0] for t in make_tasks(root, ids, labels, src, st.dir, (0, 0))],
                         la_dir=LA, ha_dir=HA, cam_dir=str(src), n_images=len(ids), seconds=round(dt, 1))
    return st.dir


def main(args):
    from .cli import config_from_args
    if args.workers is not None:
        args.set = list(args.set) + [("crf.workers", args.workers)]
    return run(config_from_args(args), force=args.force, cam_dir=args.cam_dir, shard=parse_shard(args.shard))


if __name__ == "__main__":
    from .cli import stage_main
    stage_main("make-crf")
