"""Stage eval-seg: score label PNGs (pseudo labels, segmentation outputs) against ground truth.

Pipeline use scores <work>/<variant>/make_pseudo/pseudo on data.eval_list (the Table 2 "AffinityNet" number)
and on every other list of data.infer_lists whose images all have ground truth (e.g. train); writes
<work>/<variant>/eval_seg/{aff_eval.json, per_image.npz, DONE.json} and results[variant]["pseudo"] in
<work>/results.json and report.md. per_image.npz holds each data.eval_list image's 21x21 confusion (and on
demo data its strong/weak part hits and totals), for `psa-eader compare`'s bootstrap over images.
With --target seg (pipeline `--until seg`) it scores make-seg's DeepLabV3+ predictions on data.eval_list
instead: <work>/<variant>/eval_deeplab/{seg_eval.json, per_image.npz, DONE.json}, results[variant]["seg"].
Standalone use scores any folder of <id>.png label maps (VOC palette or greyscale indices):
    psa-eader eval-seg --pred-dir DIR --voc-root DIR --split val --out FILE.json
(--out also writes FILE.per_image.npz beside it).
"""
import functools
import json
from pathlib import Path

from psa_baseline import voc
from psa_baseline.evaluation import METRICS_VERSION, PER_IMAGE_FILE, classes_note, evaluate_label_dir, save_per_image
from psa_baseline.errors import InputError
from psa_baseline.fileio import write_json
from . import demo_module
from .registry import group_name
from .builders import inputs_identity, labels_for, split_ids, voc_root
from .stage import Stage, upstream_fp
from .eval_cam import add_part_counts, folder_main, trivial_scores
from .report import update_results

NAME = "eval_seg"
SUMMARY = ("miou", "precision", "recall", "n_images")
# target -> (stage folder, upstream stage, its label folder, metrics file, results key, what is scored)
TARGETS = {
    "pseudo": (NAME, "make_pseudo", "pseudo", "aff_eval.json", "pseudo", "pseudo-label"),
    "seg": ("eval_deeplab", "make_seg", "pred", "seg_eval.json", "seg", "DeepLabV3+"),
}


def add_arguments(p):
    p.add_argument("--pred-dir", help="score this folder of <id>.png label maps instead of the pipeline's "
                   "pseudo labels")
    p.add_argument("--split", help="split name (val, train, ... looked up under the VOC root's "
                   "ImageSets/Segmentation, then voc12/) or a list file; default data.eval_list")
    p.add_argument("--out", help="write the metrics JSON here (standalone use)")
    p.add_argument("--target", type=group_name, choices=tuple(TARGETS), default="pseudo", help="pipeline use: "
                   "score the pseudo labels (pseudo, default) or make-seg's DeepLabV3+ predictions (seg)")


def part_recall_from_labels(cfg, pred_dir, root, ids, part_counts=None):
    """Demo data: recall of the objects' strong and weak parts by the label maps."""
    demo_data = demo_module("data")
    PartRecall, load_png = demo_data.PartRecall, demo_data.load_png
    acc = PartRecall()
    for i in ids:
        gt = load_png(Path(root) / "SegmentationClass" / f"{i}.png")
        add_part_counts(acc, load_png(Path(pred_dir) / f"{i}.png"),
                        load_png(Path(root) / cfg["data"]["part_masks"] / f"{i}.png"), gt, i, part_counts)
    return acc.result()


def evaluate(cfg, pred_dir, list_rel, log=None, confusions=None, part_counts=None):
    """Metrics of the label maps on list_rel; confusions / part_counts (dicts or None) receive each image's own."""
    root = voc.VOCRoot(voc_root(cfg).root, seg_dir=cfg["data"]["eval_seg_dir"])
    ids = split_ids(cfg, list_rel)
    labels = labels_for(cfg, root, ids, log)
    voc.check_dataset(root, ids, need_seg=True, labels=labels)
    res = evaluate_label_dir(pred_dir, root, ids, per_image=confusions)
    res["split"] = str(list_rel)
    res["trivial"] = trivial_scores(root, ids, labels)
    if cfg["data"]["part_masks"]:
        pr = part_recall_from_labels(cfg, pred_dir, root.root, ids, part_counts)
        res["part_recall"] = {"strong": pr["strong"], "weak": pr["weak"]}
    return res


def lists_with_gt(cfg):
    """data.eval_list first, then each other list of data.infer_lists whose ids all have ground truth."""
    root = voc.VOCRoot(voc_root(cfg).root, seg_dir=cfg["data"]["eval_seg_dir"])
    out = [cfg["data"]["eval_list"]]
    for rel in cfg["data"]["infer_lists"]:
        if rel not in out and all(root.seg_path(i).is_file() for i in split_ids(cfg, rel)):
            out.append(rel)
    return out


def run(cfg, force=False, target="pseudo"):
    """Score the pseudo labels (target pseudo: data.eval_list and the other infer lists with ground truth) or
    the DeepLabV3+ predictions (target seg: data.eval_list, which make-seg predicts)."""
    folder, upstream, sub, metrics_file, key, what = TARGETS[target]
    d = cfg["data"]
    lists_dep = d["infer_lists"] if target == "pseudo" else None  # seg scores data.eval_list only
    scored = [i for rel in (lists_with_gt(cfg) if target == "pseudo" else [d["eval_list"]]) for i in split_ids(cfg, rel)]
    deps = [upstream_fp(cfg, upstream), d["eval_list"], lists_dep, d["eval_seg_dir"], cfg["voc_root"],
            METRICS_VERSION, inputs_identity(cfg, scored, seg_dir=d["eval_seg_dir"], part_masks=True)]
    st = Stage(cfg, folder, deps, force)
    out = st.dir / metrics_file
    pred_dir = st.work_dir / st.variant / upstream / sub
    if not st.is_done():
        lists = lists_with_gt(cfg) if target == "pseudo" else [d["eval_list"]]
        confusions, part_counts = {}, {}
        res = evaluate(cfg, pred_dir, lists[0], st.log, confusions, part_counts)
        save_per_image(st.dir / PER_IMAGE_FILE, confusions, part_counts or None)
        res["splits"] = {lists[0]: {k: res[k] for k in SUMMARY}}
        for rel in lists[1:]:
            other = evaluate(cfg, pred_dir, rel, st.log)
            res["splits"][rel] = {k: other[k] for k in SUMMARY}
        write_json(out, res)
        st.finish(metrics=metrics_file, splits=lists, per_image=PER_IMAGE_FILE)
    res = json.loads(out.read_text())
    # the backbone decides which published DeepLabV3+ number a row compares with (report.backbone_note)
    meta = {"seg_encoder": cfg["seg_train"]["encoder"]} if key == "seg" else None
    update_results(st.work_dir, st.variant, key, res, meta=meta, fingerprint=st.fp)
    st.log.info(what + " mIoU %.2f precision %.2f recall %.2f on %s; %s; %s", res["miou"], res["precision"],
                res["recall"], res["split"], ", ".join(f"{k}: {v['miou']:.2f}" for k, v in res["splits"].items()),
                classes_note(res))
    return res


def main(args):
    if args.pred_dir and args.target != "pseudo":
        raise InputError("--target is for the pipeline's folders; --pred-dir scores the folder given")
    return folder_main(args, args.pred_dir, "--pred-dir", "<id>.png label maps",
                       functools.partial(run, target=args.target), evaluate, "label",
                       lambda r: f"mIoU {r['miou']:.2f} precision {r['precision']:.2f} recall {r['recall']:.2f} "
                                 f"on {r['n_images']} images")


if __name__ == "__main__":
    from .cli import stage_main
    stage_main("eval-seg")
