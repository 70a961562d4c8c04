"""Stage eval-cam: score PSA-format CAM dicts against ground truth (threshold sweep + fixed threshold).

Pipeline use reads <work>/<variant>/make_cam/cams and data.eval_list; writes
<work>/<variant>/eval_cam/{cam_eval.json, per_image.npz, DONE.json} and updates <work>/results.json and
report.md. per_image.npz holds each image's 21x21 confusion at the fixed threshold (and on demo data its
strong/weak part hits and totals), for `psa-eader compare`'s bootstrap over images.
Standalone use scores any folder of `<id>.npy` CAM dicts (PSA, SEAM, OC-CSE, ...):
    psa-eader eval-cam --cam-dir DIR --voc-root DIR --split val --threshold 0.2 --out FILE.json
(--out also writes FILE.per_image.npz beside it).
"""
import json
from pathlib import Path

import numpy as np

from psa_baseline import voc
from psa_baseline.errors import InputError
from psa_baseline.evaluation import (METRICS_VERSION, PER_IMAGE_FILE, cam_dict_to_label, classes_note, confusion,
                                     evaluate_cam_dir, load_cam_dict, markdown_table, save_per_image, scores)
from psa_baseline.fileio import write_json
from . import demo_module
from .builders import inputs_identity, labels_for, split_ids, voc_root
from .config import resolve_data_path
from .stage import Stage, upstream_fp
from .report import update_results

NAME = "eval_cam"


def add_arguments(p):
    p.add_argument("--cam-dir", help="score this folder of <id>.npy CAM dicts instead of the pipeline's")
    p.add_argument("--split", help="split name (val, train, ... looked up under the VOC root's "
                   "ImageSets/Segmentation, then voc12/) or a list file; default data.eval_list")
    p.add_argument("--threshold", type=float, help="fixed background threshold (default cam_eval.threshold)")
    p.add_argument("--out", help="write the metrics JSON here (standalone use)")


def sweep_values(cfg):
    a, b, s = cfg["cam_eval"]["sweep"]
    return [round(float(v), 6) for v in np.arange(a, b + s / 2, s)]


def trivial_scores(root, ids, labels):
    """mIoU of two answers that need no CAM: all background, and every pixel = a present class."""
    conf_bg, conf_one = 0, 0
    for i in ids:
        gt = root.read_seg(i)
        conf_bg = conf_bg + confusion(gt, np.zeros_like(gt))
        first = int(np.nonzero(labels[i])[0][0]) + 1 if labels[i].any() else 0
        conf_one = conf_one + confusion(gt, np.full_like(gt, first))
    return {"all_background": scores(conf_bg)["miou"], "cam_one_everywhere": scores(conf_one)["miou"]}


def split_list(cfg, split):
    if split is None:
        return cfg["data"]["eval_list"]
    if Path(split).suffix == ".txt" or "/" in split:
        return split
    for rel in (f"ImageSets/Segmentation/{split}.txt", f"voc12/{split}.txt"):
        try:
            resolve_data_path(cfg, rel, "split")
            return rel
        except InputError:
            pass
    raise InputError(f"split '{split}': no ImageSets/Segmentation/{split}.txt under the VOC root "
                     f"and no voc12/{split}.txt; pass a list file")


def add_part_counts(acc, pred, parts, gt, img_id, part_counts):
    """Add one image to the PartRecall `acc`; part_counts (a dict or None) receives its own
    (hits, totals) of the strong and weak parts."""
    one = type(acc)()
    one.add(pred, parts, gt)
    acc.hits += one.hits
    acc.total += one.total
    if part_counts is not None:
        part_counts[img_id] = (one.hits.sum(1), one.total.sum(1))


def part_recall_from_cams(cfg, cam_dir, root, ids, threshold, part_counts=None):
    """Demo data: recall of the objects' strong and weak parts by the CAMs at `threshold`."""
    demo_data = demo_module("data")
    PartRecall, load_png = demo_data.PartRecall, demo_data.load_png
    acc = PartRecall()
    for i in ids:
        gt = load_png(Path(root) / "SegmentationClass" / f"{i}.png")
        pred = cam_dict_to_label(load_cam_dict(Path(cam_dir) / f"{i}.npy", gt.shape), gt.shape, threshold)
        add_part_counts(acc, pred, load_png(Path(root) / cfg["data"]["part_masks"] / f"{i}.png"), gt, i,
                        part_counts)
    return acc.result()


def evaluate(cfg, cam_dir, list_rel, threshold, log=None, confusions=None, part_counts=None):
    """Metrics of the CAMs on list_rel; confusions / part_counts (dicts or None) receive each image's own."""
    root = voc.VOCRoot(voc_root(cfg).root, seg_dir=cfg["data"]["eval_seg_dir"])
    ids = split_ids(cfg, list_rel)
    labels = labels_for(cfg, root, ids, log)
    voc.check_dataset(root, ids, need_seg=True, labels=labels)
    res = evaluate_cam_dir(cam_dir, root, ids, threshold, sweep_values(cfg), labels=labels, per_image=confusions)
    res["split"] = str(list_rel)
    res["trivial"] = trivial_scores(root, ids, labels)
    if cfg["data"]["part_masks"]:
        pr = part_recall_from_cams(cfg, cam_dir, root.root, ids, threshold, part_counts)
        res["part_recall"] = {"strong": pr["strong"], "weak": pr["weak"]}
    return res


def run(cfg, force=False):
    d = cfg["data"]
    gt = inputs_identity(cfg, split_ids(cfg, d["eval_list"]), seg_dir=d["eval_seg_dir"], part_masks=True)
    st = Stage(cfg, NAME, [upstream_fp(cfg, "make_cam"), cfg["cam_eval"], d["eval_list"], METRICS_VERSION, gt], force)
    out = st.dir / "cam_eval.json"
    if not st.is_done():
        confusions, part_counts = {}, {}
        res = evaluate(cfg, st.work_dir / st.variant / "make_cam" / "cams", cfg["data"]["eval_list"],
                       cfg["cam_eval"]["threshold"], st.log, confusions, part_counts)
        save_per_image(st.dir / PER_IMAGE_FILE, confusions, part_counts or None)
        write_json(out, res)
        st.finish(metrics="cam_eval.json", per_image=PER_IMAGE_FILE)
    res = json.loads(out.read_text())
    update_results(st.work_dir, st.variant, "cam", res, fingerprint=st.fp)
    st.log.info("CAM mIoU %.2f precision %.2f recall %.2f at threshold %.2f (best %.2f at %.2f); "
                "trivial: all-bg %.2f, CAM=1 %.2f; %s", res["miou"], res["precision"], res["recall"],
                res["threshold"], res["best_miou"], res["best_threshold"], res["trivial"]["all_background"],
                res["trivial"]["cam_one_everywhere"], classes_note(res))
    return res


def folder_main(args, folder, flag, what, run_stage, evaluate_folder, kind, summary):
    """Shared main of eval-cam / eval-seg: without `folder`, the stage of the run; with it, score that
    folder (config voc unless given) on --split, print the table and write --out."""
    from .cli import config_from_args
    if args.config is None and folder:
        args.config = "voc"
    cfg = config_from_args(args)
    if not folder:
        if args.split or args.out:
            raise InputError(f"--split/--out are for scoring a folder given with {flag}")
        return run_stage(cfg, force=args.force)
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{flag} {folder} is not a folder of {what}")
    confusions, part_counts = {}, {}
    res = evaluate_folder(cfg, folder, split_list(cfg, args.split), confusions=confusions,
                          part_counts=part_counts)
    if args.out:
        write_json(args.out, res)
        save_per_image(per_image_beside(args.out), confusions, part_counts or None)
    print(markdown_table({str(folder): res}, kind))
    print(f"{summary(res)}; {classes_note(res)}" + (f"; written to {args.out} and {per_image_beside(args.out)}"
                                                    if args.out else ""))
    return res


def per_image_beside(out):
    """m.json -> m.per_image.npz"""
    out = Path(out)
    return out.with_name(out.stem + ".per_image.npz")


def main(args):
    if args.threshold is not None:
        args.set = list(args.set) + [("cam_eval.threshold", args.threshold)]
    return folder_main(args, args.cam_dir, "--cam-dir", "<id>.npy CAM dicts", run,
                       lambda cfg, d, ids, **kw: evaluate(cfg, d, ids, cfg["cam_eval"]["threshold"], **kw), "cam",
                       lambda r: f"mIoU {r['miou']:.2f} at threshold {r['threshold']}; best {r['best_miou']:.2f} "
                                 f"at {r['best_threshold']}")


if __name__ == "__main__":
    from .cli import stage_main
    stage_main("eval-cam")
