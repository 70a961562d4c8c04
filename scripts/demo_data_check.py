"""Check that the demo dataset shows the problem EADER solves.

Trains the CPU demo CAMNet (random init) on the demo train split with plain multilabel soft-margin loss
(SGD momentum 0.9, poly lr, batch 16, random rescale / flip / crop), then on val:
  1. classification mAP vs chance - the classifier has learned;
  2. CAM mIoU at a threshold vs trivial answers (all background; CAM = 1 for every present class);
  3. strong-part vs weak-part recall of the CAMs (want: strong high, weak clearly lower);
  4. the weak part is still evidence: the localizer's score for a class on val images whose heads of
     that class are painted with the background colour, vs the whole object painted over and vs absent
     classes; with --adv-epochs, a fresh classifier trained only on head-erased images (what EADER's
     adversary sees) is scored on head-erased val images, with whole objects erased as the control.
CAMs are computed at --scales (default 2.0 + flip: this narrow, dilated net spreads a CAM over ~3 cells
of stride 8, i.e. most of a ~100 px image at scale 1) and also at 1.0 and at PSA's 1.0 0.5 1.5 2.0.
Use --threads 1 when other jobs load the machine (2 threads then run several times slower).

    .venv/bin/python -m scripts.demo_data_check --adv-epochs 20 --threads 1
    (writes work/demo-check/{data/, check.json, localizer.pth, cams_*/})
"""
import argparse
import json
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from psa_baseline import evaluation
from psa_baseline.cam_net import CAMNet
from psa_baseline.constants import CLASS_NAMES, IGNORE, IMAGENET_MEAN, IMAGENET_STD, NUM_CLASSES
from demo.data import (DEFAULT_SIZE, STRONG, cams_to_labels, generate, load_cls_labels,
                                    load_png, part_recall_from_cams, read_ids, read_meta)
from psa_baseline.fileio import save_npy, write_json
from psa_baseline.resnet38 import Res38Spec

MEAN = np.array(IMAGENET_MEAN, np.float32) * 255
STD = np.array(IMAGENET_STD, np.float32) * 255


def load_split(root, split):
    ids = read_ids(root, split)
    labels = load_cls_labels(root)
    imgs = [cv2.cvtColor(cv2.imread(str(Path(root) / "JPEGImages" / f"{i}.jpg")), cv2.COLOR_BGR2RGB) for i in ids]
    gts = [load_png(Path(root) / "SegmentationClass" / f"{i}.png") for i in ids]
    parts = [load_png(Path(root) / "PartMasks" / f"{i}.png") for i in ids]
    return ids, imgs, np.stack([labels[i] for i in ids]), gts, parts


def norm(img):
    return (img.astype(np.float32) - MEAN) / STD


def augment(img, rng, crop, resize_long):
    """Random rescale (long side), flip, random crop padded with zeros (= mean colour after norm)."""
    h, w = img.shape[:2]
    s = rng.uniform(*resize_long) / max(h, w)
    img = cv2.resize(img, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_LINEAR)
    if rng.uniform() < 0.5:
        img = img[:, ::-1]
    x = norm(img)
    h, w = x.shape[:2]
    out = np.zeros((crop, crop, 3), np.float32)
    ch, cw = min(crop, h), min(crop, w)
    sy, sx = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)     # source offset
    dy, dx = rng.integers(0, crop - ch + 1), rng.integers(0, crop - cw + 1)  # destination offset
    out[dy:dy + ch, dx:dx + cw] = x[sy:sy + ch, sx:sx + cw]
    return out


def make_net():
    return CAMNet(Res38Spec(width=0.125, blocks=(2, 2, 5, 2), frozen_bn=False, frozen_stem=False))


def train(imgs, labels, epochs, args, seed, tag):
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = make_net()
    # The new classifier layer gets a larger lr, as PSA's param groups give it (10x).
    fc = list(net.fc8.parameters())
    rest = [p for p in net.parameters() if all(p is not q for q in fc)]
    opt = torch.optim.SGD([{"params": rest}, {"params": fc, "lr": args.lr * args.fc_mult}],
                          lr=args.lr, momentum=0.9, weight_decay=5e-4)
    steps_per_epoch = len(imgs) // args.batch
    total = steps_per_epoch * epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (1 - s / total) ** 0.9)
    net.train()
    t0 = time.time()
    for ep in range(epochs):
        order = rng.permutation(len(imgs))
        run = 0.0
        for b in range(steps_per_epoch):
            idx = order[b * args.batch:(b + 1) * args.batch]
            x = torch.from_numpy(np.stack([augment(imgs[i], rng, args.crop, args.resize_long) for i in idx]))
            x = x.permute(0, 3, 1, 2).contiguous()
            y = torch.from_numpy(labels[idx])
            loss = F.multilabel_soft_margin_loss(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            run += loss.item()
        print(f"[{tag}] epoch {ep + 1}/{epochs} loss {run / steps_per_epoch:.4f} ({time.time() - t0:.0f}s)",
              flush=True)
    net.eval()
    return net


@torch.no_grad()
def predict(net, img, scales=(1.0,)):
    """Logits (20,) at scale 1 and CAMs (20, H, W) upsampled to the image; with several scales, PSA's
    inference: each scale and its flip, upsampled and summed."""
    x = torch.from_numpy(norm(img)).permute(2, 0, 1)[None]
    logits, cams = net(x, with_cam=True)
    cams = F.interpolate(cams, size=img.shape[:2], mode="bilinear", align_corners=False)[0]
    if tuple(scales) == (1.0,):
        return logits[0].numpy(), cams.numpy()
    h, w = img.shape[:2]
    total = 0
    for s in scales:
        xs = F.interpolate(x, size=(max(8, round(h * s)), max(8, round(w * s))), mode="bilinear",
                           align_corners=False)
        c = net.forward_cam(torch.cat([xs, xs.flip(-1)]))
        c = F.interpolate(c, size=(h, w), mode="bilinear", align_corners=False)
        total = total + c[0] + c[1].flip(-1)
    return logits[0].numpy(), total.numpy()


def average_precision(scores, targets):
    """psa_baseline.evaluation's AP, NaN (not None) without positives, so that a mean over classes shows it."""
    ap = evaluation.average_precision(scores, targets)
    return float("nan") if ap is None else ap


def auc(pos, neg):
    """P(score of a positive > score of a negative), ties half: chance = 0.5."""
    pos, neg = np.asarray(pos)[:, None], np.asarray(neg)[None, :]
    if pos.size == 0 or neg.size == 0:
        return float("nan")
    return float((pos > neg).mean() + 0.5 * (pos == neg).mean())


def miou(preds, gts):
    conf = np.zeros((NUM_CLASSES + 1, NUM_CLASSES + 1), np.int64)
    for p, g in zip(preds, gts):
        m = g != IGNORE
        conf += np.bincount(g[m].astype(np.int64) * (NUM_CLASSES + 1) + p[m],
                            minlength=(NUM_CLASSES + 1) ** 2).reshape(NUM_CLASSES + 1, NUM_CLASSES + 1)
    inter = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - inter
    valid = conf.sum(1) > 0   # classes present in the GT
    return float(100 * np.mean(inter[valid] / union[valid]))


def erase(img, mask, gt):
    """Paint `mask` (grown by 3 px to cover the void border and JPEG fringe) with the mean background colour."""
    m = cv2.dilate(mask.astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool)
    bg = img[gt == 0].mean(0) if (gt == 0).any() else MEAN
    out = img.copy()
    out[m] = np.round(bg).astype(np.uint8)
    return out


def erase_heads(img, gt, parts, classes=None):
    head = (parts == STRONG) & ((gt >= 1) & (gt <= NUM_CLASSES) if classes is None else np.isin(gt, classes))
    return erase(img, head, gt)


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default="work/demo-check/data")
    ap.add_argument("--out", default="work/demo-check/check.json")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-train", type=int, default=500)
    ap.add_argument("--n-val", type=int, default=150)
    ap.add_argument("--size", type=int, nargs=2, default=DEFAULT_SIZE, help="image side range (lo hi)")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--adv-epochs", type=int, default=0, help="train a classifier on head-erased images too")
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--fc-mult", type=float, default=1.0, help="lr multiplier of fc8")
    ap.add_argument("--crop", type=int, default=112)
    ap.add_argument("--resize-long", type=float, nargs=2, default=(80, 128))
    ap.add_argument("--threshold", type=float, default=0.2)
    ap.add_argument("--scales", type=float, nargs="+", default=[2.0],
                    help="main CAM inference scales (other than 1.0 adds flips, as PSA); scale 1 and PSA's "
                         "1.0 0.5 1.5 2.0 are reported too")
    ap.add_argument("--load-model", help="evaluate this localizer state dict instead of training")
    ap.add_argument("--threads", type=int, default=2,
                    help="torch threads; 1 is much faster when other jobs load the 2 cores")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.time()

    summary = generate(args.root, seed=args.seed, n_train=args.n_train, n_val=args.n_val, size=args.size)
    print(f"dataset {args.root}: {summary['splits']}, generated={summary['generated']} "
          f"({time.time() - t0:.1f}s)", flush=True)
    meta = read_meta(args.root)
    cls_idx = np.array(meta["class_indices"])
    group_of = {CLASS_NAMES.index(n): g for g, names in enumerate(meta["groups"]) for n in names}

    _, tr_imgs, tr_labels, tr_gts, tr_parts = load_split(args.root, "train")
    va_ids, va_imgs, va_labels, va_gts, va_parts = load_split(args.root, "val")
    if args.load_model:
        net = make_net()
        net.load_state_dict(torch.load(args.load_model, weights_only=True))
        net.eval()
    else:
        net = train(tr_imgs, tr_labels, args.epochs, args, args.seed, "localizer")
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        torch.save(net.state_dict(), Path(args.out).parent / "localizer.pth")
    report = {"dataset": summary, "args": vars(args)}

    # 1. classification (logits at scale 1).
    logits = np.stack([predict(net, img)[0] for img in va_imgs])
    aps = {CLASS_NAMES[c]: average_precision(logits[:, c], va_labels[:, c]) for c in cls_idx}
    report["classification"] = {
        "mAP": round(100 * float(np.nanmean(list(aps.values()))), 2),
        "mAP_chance": round(100 * float(va_labels[:, cls_idx].mean()), 2),
        "label_accuracy": round(100 * float(((logits[:, cls_idx] > 0) == (va_labels[:, cls_idx] > 0)).mean()), 2),
        "exact_match": round(100 * float(((logits[:, cls_idx] > 0) == (va_labels[:, cls_idx] > 0)).all(1).mean()), 2),
        "AP": {k: round(100 * v, 1) for k, v in aps.items()}}

    # 2./3. CAMs (PSA format, through part_recall_from_cams), mIoU and part recall, per scale set.
    thr = args.threshold
    ones = [cams_to_labels({int(c): np.ones(g.shape, np.float32) for c in np.flatnonzero(l)}, g.shape, thr)
            for l, g in zip(va_labels, va_gts)]
    report["cam"] = {"threshold": thr,
                     "mIoU_all_background": round(miou([np.zeros_like(g) for g in va_gts], va_gts), 2),
                     "mIoU_cam_one_for_present": round(miou(ones, va_gts), 2), "by_scales": {}}
    scale_sets = [tuple(args.scales)] + [s for s in ((1.0,), (1.0, 0.5, 1.5, 2.0)) if s != tuple(args.scales)]
    for scales in scale_sets:
        cam_dir = Path(args.out).parent / ("cams_" + "_".join(f"{x:g}" for x in scales))
        cams_all = []
        for id_, img, lab in zip(va_ids, va_imgs, va_labels):
            cams = predict(net, img, scales)[1]
            d = {}
            for c in np.flatnonzero(lab):
                cam = np.maximum(cams[c], 0)
                d[int(c)] = (cam / (cam.max() + 1e-5)).astype(np.float32)
            save_npy(cam_dir / f"{id_}.npy", d)
            cams_all.append(d)
        sweep = {}
        for t in sorted({0.1, 0.15, 0.2, 0.25, 0.3, 0.4, thr}):
            preds = [cams_to_labels(d, g.shape, t) for d, g in zip(cams_all, va_gts)]
            pr = part_recall_from_cams(cam_dir, args.root, va_ids, t)
            sweep[t] = {"mIoU": round(miou(preds, va_gts), 2), "strong": pr["strong"], "weak": pr["weak"]}
            if t == thr:
                main_pr = pr
        report["cam"]["by_scales"][" ".join(f"{x:g}" for x in scales)] = {
            "mIoU": sweep[thr]["mIoU"], "strong_recall": main_pr["strong"], "weak_recall": main_pr["weak"],
            "strong_recall_class_mean": main_pr["strong_class_mean"],
            "weak_recall_class_mean": main_pr["weak_class_mean"],
            "per_class": {k: {"strong": v["strong"], "weak": v["weak"]} for k, v in main_pr["per_class"].items()},
            "sweep": sweep}

    # 4. the weak part is evidence: erase the heads of one present class at a time.
    head_s, obj_s, clean_s, absent_s = [], [], [], []
    per_sample = []   # (erased class, image labels, sigmoid scores) of the head-erased images
    for img, lab, gt, parts, lg in zip(va_imgs, va_labels, va_gts, va_parts, logits):
        p_clean = sigmoid(lg)
        for c in cls_idx:
            if lab[c] == 0:
                absent_s.append(p_clean[c])
        for c in np.flatnonzero(lab):
            p_head = sigmoid(predict(net, erase_heads(img, gt, parts, [c + 1]))[0])
            p_obj = sigmoid(predict(net, erase(img, gt == c + 1, gt))[0])
            head_s.append(p_head[c])
            obj_s.append(p_obj[c])
            clean_s.append(p_clean[c])
            per_sample.append((c, lab, p_head))
    # Within-group: score of c on images with c's heads erased vs on images with a group-mate's heads
    # erased (c absent) - measures the subtle class cue of the body beyond the group.
    pos, neg = [], []
    for c in cls_idx:
        mates = [m for m in cls_idx if group_of[m] == group_of[c] and m != c]
        pos += [p[c] for e, l, p in per_sample if e == c]
        neg += [p[c] for e, l, p in per_sample if e in mates and l[c] == 0]
    report["erased"] = {
        "pairs": len(head_s),
        "score_clean": round(float(np.mean(clean_s)), 3),
        "score_heads_erased": round(float(np.mean(head_s)), 3),
        "score_object_erased": round(float(np.mean(obj_s)), 3),
        "score_absent_class": round(float(np.mean(absent_s)), 3),
        "acc_heads_erased": round(100 * float(np.mean(np.array(head_s) > 0.5)), 1),
        "acc_object_erased": round(100 * float(np.mean(np.array(obj_s) > 0.5)), 1),
        "fp_rate_absent": round(100 * float(np.mean(np.array(absent_s) > 0.5)), 1),
        "auc_heads_erased_vs_absent": round(auc(head_s, absent_s), 3),
        "auc_object_erased_vs_absent": round(auc(obj_s, absent_s), 3),
        "auc_within_group": round(auc(pos, neg), 3)}

    # Optional: an adversary-like classifier that only ever sees head-erased images.
    if args.adv_epochs > 0:
        tr_erased = [erase_heads(i, g, p) for i, g, p in zip(tr_imgs, tr_gts, tr_parts)]
        adv = train(tr_erased, tr_labels, args.adv_epochs, args, args.seed + 1, "head-erased classifier")
        lg = np.stack([predict(adv, erase_heads(i, g, p))[0] for i, g, p in zip(va_imgs, va_gts, va_parts)])
        lg_clean = np.stack([predict(adv, i)[0] for i in va_imgs])
        # Control: whole objects painted over (the erased patches stay): the body, not the hole, is the cue.
        lg_obj = np.stack([predict(adv, erase(i, (g >= 1) & (g <= NUM_CLASSES), g))[0] for i, g in zip(va_imgs, va_gts)])
        report["head_erased_classifier"] = {
            "mAP_on_head_erased_val": round(100 * float(np.nanmean(
                [average_precision(lg[:, c], va_labels[:, c]) for c in cls_idx])), 2),
            "mAP_on_clean_val": round(100 * float(np.nanmean(
                [average_precision(lg_clean[:, c], va_labels[:, c]) for c in cls_idx])), 2),
            "mAP_on_objects_erased_val": round(100 * float(np.nanmean(
                [average_precision(lg_obj[:, c], va_labels[:, c]) for c in cls_idx])), 2),
            "mAP_chance": round(100 * float(va_labels[:, cls_idx].mean()), 2)}

    report["seconds"] = round(time.time() - t0, 1)
    write_json(args.out, report)
    show = {k: v for k, v in report.items() if k not in ("dataset", "args", "cam")}
    print(json.dumps(show, indent=1))
    cam = report["cam"]
    print(f"CAM at threshold {thr}: trivial mIoU all-background {cam['mIoU_all_background']}, "
          f"CAM=1-for-present {cam['mIoU_cam_one_for_present']}")
    for key, v in cam["by_scales"].items():
        print(f"  scales {key:>14}: mIoU {v['mIoU']:5.2f}  strong recall {v['strong_recall']:5.2f}  "
              f"weak recall {v['weak_recall']:5.2f}   per class (strong/weak): " + ", ".join(
                  f"{k} {c['strong']:.0f}/{c['weak']:.0f}" for k, c in v["per_class"].items()))
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
