"""export: a variant's pseudo labels as a VOC-layout dataset that a public DeepLabV3+ trainer reads unchanged.

    psa-eader export --out DIR [--copy] [--pseudo-dir DIR] --voc-root VOC2012 --work-dir WORK [eader.enabled=true]

Reads: the ids of seg_train.list (training) and data.eval_list (validation), their images, the pseudo labels
<work>/<variant>/make_pseudo/pseudo/<id>.png (or --pseudo-dir), the official ground truth of the validation
ids (data.eval_seg_dir, SegmentationClass).
Writes, under --out (VainF/DeepLabV3Plus-Pytorch's `voc` dataset with --year 2012_aug and --data_root DIR):
    train_aug.txt                                 the training ids (that trainer reads it here)
    VOCdevkit/VOC2012/JPEGImages/<id>.jpg         symlinks to the images (copies with --copy)
    VOCdevkit/VOC2012/SegmentationClassAug/<id>.png   the pseudo labels, VOC palette PNGs
    VOCdevkit/VOC2012/SegmentationClass/<id>.png  the validation ids' official ground truth (links/copies)
    VOCdevkit/VOC2012/ImageSets/Segmentation/{train_aug,val}.txt
    EXPORT.json                                   what was exported from where; "complete" once done
An incomplete pseudo-label folder (an id of the list without its PNG, an unreadable PNG, values outside
0..20/255, a size other than its image's) is refused before anything is written, naming the ids.
"""
import os
import shutil
import time
from pathlib import Path

from psa_baseline import voc
from psa_baseline.errors import InputError
from psa_baseline.fileio import atomic_path, write_json, write_text
from psa_baseline.progress import with_progress
from .builders import split_ids, voc_root
from .stage import upstream_fp
from .config import variant_name

MARKER = "EXPORT.json"
BASE = Path("VOCdevkit") / "VOC2012"


def add_arguments(p):
    p.add_argument("--out", help="folder to write (new, empty, or an earlier export); required")
    p.add_argument("--copy", action="store_true", help="copy images and ground truth instead of symlinking them")
    p.add_argument("--pseudo-dir", help="export this folder of <id>.png label maps instead of the variant's "
                   "make-pseudo output")


def check_labels(pseudo, root, ids):
    """{id: label array} of every id, or an InputError naming each missing or bad PNG."""
    missing = [i for i in ids if not (pseudo / f"{i}.png").is_file()]
    if missing:
        raise InputError(f"{len(missing)} of {len(ids)} ids of the training list have no pseudo label in "
                         f"{pseudo}: {voc._list_ids(missing)}; rerun make-pseudo (its list must be in "
                         f"data.infer_lists) or set seg_train.list to ids that have labels")
    bad = []
    for i in with_progress(ids, "export: checking pseudo labels"):
        try:
            lab = voc.read_label_png(pseudo / f"{i}.png", i)
            if lab.shape != root.image_size(i):
                raise InputError(f"{i}.png is {lab.shape[1]}x{lab.shape[0]}, its image is "
                                 f"{root.image_size(i)[1]}x{root.image_size(i)[0]} (WxH)")
        except InputError as e:
            bad.append(f"{i} ({e})")
    if bad:
        raise InputError(f"{len(bad)} of {len(ids)} pseudo labels in {pseudo} cannot be used: "
                         f"{'; '.join(bad[:5])}{f' (and {len(bad) - 5} more)' if len(bad) > 5 else ''}; "
                         f"rerun make-pseudo --force")


def prepare_out(out):
    """An empty or new folder, or an earlier export (cleared); anything else is refused."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file; give a folder")
    if out.is_dir() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise InputError(f"--out {out} is not empty and holds no {MARKER} (not an earlier export); give a "
                             f"new or empty folder, so that nothing of yours is overwritten")
        for name in ("VOCdevkit", "train_aug.txt"):
            p = out / name
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    return out


def place(src, dest, copy):
    """dest -> src as an absolute symlink, or a copy; atomic (temp name, then rename)."""
    with atomic_path(dest) as tmp:
        if copy:
            shutil.copyfile(src, tmp)
        else:
            os.unlink(tmp)
            os.symlink(Path(src).resolve(), tmp)


def run(cfg, out, copy=False, pseudo_dir=None, say=print):
    variant = variant_name(cfg)
    if pseudo_dir is None:
        upstream_fp(cfg, "make_pseudo")  # the variant's pseudo labels must be finished
        pseudo = (Path(cfg["work_dir"]) / variant / "make_pseudo" / "pseudo").resolve()
    else:
        pseudo = Path(pseudo_dir).resolve()
        if not pseudo.is_dir():
            raise InputError(f"--pseudo-dir {pseudo} is not a folder of <id>.png label maps")
    root = voc_root(cfg)
    train_rel, val_rel = cfg["seg_train"]["list"], cfg["data"]["eval_list"]
    train, val = split_ids(cfg, train_rel), split_ids(cfg, val_rel)
    gt = voc.VOCRoot(root.root, seg_dir=cfg["data"]["eval_seg_dir"])
    voc.check_dataset(root, train + val, need_seg=False, labels=None)
    voc.check_dataset(gt, val, need_seg=True, labels=None)
    check_labels(pseudo, root, train)
    overlap = set(train) & set(val)
    if overlap:
        say(f"warning: {len(overlap)} ids are in both {train_rel} and {val_rel}: {voc._list_ids(sorted(overlap))}")

    out = prepare_out(out)
    record = {"variant": variant, "pseudo_labels": str(pseudo), "voc_root": str(root.root),
              "train_list": train_rel, "val_list": val_rel, "n_train": len(train), "n_val": len(val),
              "images": "copies" if copy else "symlinks", "complete": False,
              "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    write_json(out / MARKER, record)
    base = out / BASE
    for i in with_progress(list(dict.fromkeys(train + val)), "export: images"):
        place(root.image_path(i), base / "JPEGImages" / f"{i}.jpg", copy)
    for i in with_progress(train, "export: pseudo labels"):  # rewritten: always a VOC palette PNG
        voc.save_label_png(base / "SegmentationClassAug" / f"{i}.png", voc.read_label_png(pseudo / f"{i}.png", i))
    for i in val:
        place(gt.seg_path(i), base / "SegmentationClass" / f"{i}.png", copy)
    train_txt = "".join(f"{i}\n" for i in train)
    write_text(base / "ImageSets" / "Segmentation" / "train_aug.txt", train_txt)
    write_text(base / "ImageSets" / "Segmentation" / "val.txt", "".join(f"{i}\n" for i in val))
    write_text(out / "train_aug.txt", train_txt)
    write_json(out / MARKER, {**record, "complete": True, "finished": time.strftime("%Y-%m-%d %H:%M:%S")})
    say(f"exported {len(train)} pseudo labels of variant {variant} ({pseudo}) and {len(val)} validation ids to "
        f"{out}\ntrain with e.g. VainF/DeepLabV3Plus-Pytorch: python main.py --dataset voc --year 2012_aug "
        f"--data_root {out.resolve()} --model deeplabv3plus_resnet101 --output_stride 16 --lr 0.01 "
        f"--weight_decay 1e-4 --crop_size 513 --batch_size 16 --total_itrs 30000")
    return out


def main(args):
    from .cli import config_from_args
    if not args.out:  # checked here, not by argparse, so that errors keep psa-eader's form and exit 2
        raise InputError("--out DIR is required: the folder to write the dataset to")
    return run(config_from_args(args), args.out, copy=args.copy, pseudo_dir=args.pseudo_dir)


if __name__ == "__main__":
    from .cli import stage_main
    stage_main("export")
