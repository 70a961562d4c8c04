"""What EADER's two networks do to each other, measured on demo images.

Loads a finished (or interrupted) EADER train-cam checkpoint (localizer + adversary) and, on val images
resized to the training crop (both networks in eval mode), reports:
  - the soft masks: mean fraction of the erased class's head (strong part), body (weak part) and of the
    background that the mask sigmoid(omega * (A - psi)) removes;
  - the adversary: sigmoid score of the erased class on its erased image, on the clean image, with its
    whole ground-truth object erased, with only its body erased and with only its head erased, and of
    the absent classes; how often it still finds the erased class (score > 0.5); ROC AUC erased vs absent;
  - the loss scales: L_cls, L_am, L_reg and the gradient norms of L_cls and alpha * L_am on the
    localizer's parameters (and their ratio), with the share of the L_am gradient that reaches the
    backbone (not only the classifier head);
  - with --localizer PATH (e.g. the baseline's cam_net.pth): the same adversary on the masks of that
    localizer, i.e. how much class evidence its CAMs leave outside the erased region.
Demo data only (it needs PartMasks/). Writes JSON.

    .venv/bin/python -m scripts.eader_diagnose --config demo --work-dir work/d4 --voc-root work/d4/data \\
        --localizer work/d4/baseline/train_cam/cam_net.pth --out work/d4/eader_diagnose.json
"""
import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from psa_baseline.cam_infer import normalise_batch
from demo.data import STRONG, WEAK, load_png
from psa_baseline.errors import InputError
from psa_baseline.fileio import write_json
from psa_baseline.training import load_checkpoint
from psa_eader.losses import attention_mining_loss, regularisation_loss
from psa_eader.masks import normalise_attention, pair_masks
from stages.builders import build_cam_net, labels_for, split_ids, voc_root
from stages.config import load_config
from stages.train_cam import build_eader


def auc(pos, neg):
    """P(pos > neg) + 0.5 P(tie): ROC AUC of two score samples."""
    pos, neg = np.asarray(pos)[:, None], np.asarray(neg)[None, :]
    return float(((pos > neg) + 0.5 * (pos == neg)).mean()) if pos.size and neg.size else float("nan")


def load_batch(root, ids, labels, size):
    imgs, ys, segs, parts = [], [], [], []
    for i in ids:
        imgs.append(cv2.resize(root.read_image(i), (size, size), interpolation=cv2.INTER_LINEAR))
        segs.append(cv2.resize(root.read_seg(i), (size, size), interpolation=cv2.INTER_NEAREST))
        parts.append(cv2.resize(load_png(Path(root.root) / "PartMasks" / f"{i}.png"), (size, size),
                                interpolation=cv2.INTER_NEAREST))
        ys.append(np.asarray(labels[i], np.float32))
    return np.stack(imgs), torch.from_numpy(np.stack(ys)), np.stack(segs), np.stack(parts)


def grad_norm(loss, params):
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return float(torch.sqrt(sum((g.float() ** 2).sum() for g in grads if g is not None)))


def measure(net, eader, x, y, segs, parts, acc, with_grads, data_classes):
    cfg = eader.cfg
    logits, cams = net(x, with_cam=True)
    mask, img_idx, cls_idx = pair_masks(y, cams, x.shape[-2:], cfg.omega, cfg.psi)  # erase_pairs' masks
    erased = x[img_idx] * (1 - mask[:, None])
    adv_erased = eader.adversary(erased)
    with torch.no_grad():
        adv_clean = torch.sigmoid(eader.adversary(x))
    m = mask.detach().numpy()
    for k, (b, c) in enumerate(zip(img_idx.tolist(), cls_idx.tolist())):
        cls_px = segs[b] == c + 1
        for name, sel in (("head", cls_px & (parts[b] == STRONG)), ("body", cls_px & (parts[b] == WEAK)),
                          ("background", segs[b] == 0)):
            if sel.any():
                acc["erased_" + name].append(float(m[k][sel].mean()))
    # Controls: the erased class's whole object (head and body) removed by its ground truth, only its
    # body removed (head kept) and only its head removed (body kept: can the adversary use bodies?).
    # If the first scores above absent classes, the hole itself is a cue.
    obj, body, head = (torch.zeros_like(mask) for _ in range(3))
    for k, (b, c) in enumerate(zip(img_idx.tolist(), cls_idx.tolist())):
        cls_px = segs[b] == c + 1
        obj[k] = torch.from_numpy(cls_px.astype(np.float32))
        body[k] = torch.from_numpy((cls_px & (parts[b] == WEAK)).astype(np.float32))
        head[k] = torch.from_numpy((cls_px & (parts[b] == STRONG)).astype(np.float32))
    with torch.no_grad():
        for name, m_ in (("score_object_erased", obj), ("score_body_erased", body),
                         ("score_head_erased", head)):
            sc = torch.sigmoid(eader.adversary(x[img_idx] * (1 - m_[:, None])))
            acc[name] += sc.gather(1, cls_idx[:, None]).squeeze(1).tolist()
    s = torch.sigmoid(adv_erased.detach())
    acc["score_erased_class"] += s.gather(1, cls_idx[:, None]).squeeze(1).tolist()
    acc["score_clean_class"] += adv_clean[img_idx, cls_idx].tolist()
    absent = (y < 0.5) & data_classes[None]  # the dataset's classes that the image does not have
    acc["score_absent"] += adv_clean[absent].tolist()
    if with_grads:
        params = [p for p in net.parameters() if p.requires_grad]
        head = [p for n, p in net.named_parameters() if p.requires_grad and n.startswith("fc8")]
        l_cls = F.multilabel_soft_margin_loss(logits, y)
        l_am = attention_mining_loss(adv_erased, cls_idx, cfg.am_form, cfg.num_classes, x.shape[0])
        l_reg = regularisation_loss(normalise_attention(cams), y)
        g_cls, g_am = grad_norm(l_cls, params), grad_norm(cfg.alpha * l_am, params)
        g_am_head = grad_norm(cfg.alpha * l_am, head) if head else float("nan")
        acc["l_cls"].append(float(l_cls.detach()))
        acc["l_am"].append(float(l_am.detach()))
        acc["l_reg"].append(float(l_reg.detach()))
        acc["grad_cls"].append(g_cls)
        acc["grad_alpha_am"].append(g_am)
        acc["grad_alpha_am_backbone_share"].append(1 - (g_am_head / max(g_am, 1e-12)) ** 2)


def summarise(acc):
    out = {k: round(float(np.mean(v)), 4) for k, v in acc.items() if v and not k.startswith("score")}
    e, a = np.asarray(acc["score_erased_class"]), np.asarray(acc["score_absent"])
    out.update({"score_erased_class": round(float(e.mean()), 4),
                "score_clean_class": round(float(np.mean(acc["score_clean_class"])), 4),
                "score_object_erased": round(float(np.mean(acc["score_object_erased"])), 4),
                "score_body_erased": round(float(np.mean(acc["score_body_erased"])), 4),
                "score_head_erased": round(float(np.mean(acc["score_head_erased"])), 4),
                "score_absent_class": round(float(a.mean()), 4),
                "finds_erased_class": round(float((e > 0.5).mean()), 4),
                "auc_erased_vs_absent": round(auc(e, a), 4), "pairs": int(e.size)})
    if acc["grad_cls"]:
        out["grad_ratio_alpha_am_over_cls"] = round(out["grad_alpha_am"] / max(out["grad_cls"], 1e-12), 4)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="demo")
    p.add_argument("--work-dir", required=True)
    p.add_argument("--voc-root", required=True)
    p.add_argument("--variant", default="eader", help="run whose train_cam/checkpoint.pth is read")
    p.add_argument("--localizer", help="also measure the adversary on the masks of this cam_net.pth")
    p.add_argument("--split", default="ImageSets/Segmentation/val.txt")
    p.add_argument("--n", type=int, default=96, help="images (default %(default)s)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--out", required=True)
    p.add_argument("overrides", nargs="*", help="dotted key=value config overrides")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    over = list(args.overrides) + [("voc_root", args.voc_root), ("work_dir", args.work_dir),
                                                          ("eader.enabled", True), ("device", "cpu")]
    cfg = load_config(args.config, over)
    ck_path = Path(args.work_dir) / args.variant / "train_cam" / "checkpoint.pth"
    if not ck_path.is_file():
        raise InputError(f"{ck_path} is missing: train the {args.variant} variant first")
    ck = load_checkpoint(ck_path)
    net = build_cam_net(cfg)
    net.load_state_dict(ck["model"])
    eader = build_eader(cfg, torch.device("cpu"))
    eader.load_state_dict(ck["eader"])
    net.eval()
    eader.adversary.eval()
    for q in eader.adversary.parameters():
        q.requires_grad_(False)
    root = voc_root(cfg)
    ids = split_ids(cfg, args.split)[:args.n]
    labels = labels_for(cfg, root, ids)
    size = cfg["cam_train"]["crop"]
    data_classes = torch.from_numpy(np.stack(list(labels.values())).max(0) > 0)
    report = {"checkpoint": str(ck_path), "step": ck["step"], "n_images": len(ids), "size": size,
              "alpha": eader.cfg.alpha}
    runs = [("eader_localizer", net, True)]
    if args.localizer:
        other = build_cam_net(cfg)
        other.load_state_dict(torch.load(args.localizer, map_location="cpu", weights_only=True))
        runs.append(("other_localizer", other.eval(), False))
    for name, loc, grads in runs:
        acc = {k: [] for k in ("erased_head", "erased_body", "erased_background", "score_erased_class",
                               "score_clean_class", "score_object_erased", "score_body_erased",
                               "score_head_erased", "score_absent", "l_cls", "l_am", "l_reg", "grad_cls",
                               "grad_alpha_am", "grad_alpha_am_backbone_share")}
        for s in range(0, len(ids), args.batch):
            imgs, y, segs, parts = load_batch(root, ids[s:s + args.batch], labels, size)
            x = normalise_batch(imgs, torch.device("cpu"))
            with torch.set_grad_enabled(grads):
                measure(loc, eader, x, y, segs, parts, acc, grads, data_classes)
        report[name] = summarise(acc)
    if args.localizer:
        report["other_localizer"]["path"] = args.localizer
    write_json(args.out, report)
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
