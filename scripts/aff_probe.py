"""Can AffinityNet learn here, and what holds it back? Train one in memory, score its affinities and walk.

For a finished run (make-cam and make-crf done) it trains an AffinityNet exactly as the train-aff stage does
(its dataset, label rule, loss and optimiser; config overrides with --set KEY=VALUE), optionally
  --labels gt      with la = ha = one-hot ground truth instead of the CRF labels (the labels' ceiling),
  --labels crf-bg-fixed / crf-fg-fixed  the CRF labels with one kind of error taken out using the ground
                   truth: ha's background on object pixels (bg-fixed: ha's background score set to 0 there,
                   so those pixels follow la, mostly ignored), or la's foreground where the ground truth is
                   not that class (fg-fixed: la's class scores set to 0 there, so la says background and
                   the pixel is ignored unless ha trusts it as background): which error costs the walk more,
  --optimizer adam with Adam (same lrs, poly decay) instead of PSA's SGD (the optimiser's share),
  --la-from / --ha-from DIR  la (or ha) from another run's make_crf folder, e.g. the other variant's, to
                   tell which of the two label sets makes a difference between two AffinityNets,
then scores it on the val images as scripts/rw_diagnose.py does: pair separation against ground-truth
pairs (AUC, mean affinity of same / different pairs) and walk mIoU / recall for each t. Nothing is written
to the run; the result goes to --out.

    .venv/bin/python -m scripts.aff_probe --work-dir work/timing7 --voc-root work/timing7/data \\
        --out work/ap/gt_adam.json --labels gt --optimizer adam --set aff_train.lr=0.001 --set aff_train.epochs=15

The walk's no-walk reference (CAMs alone) is in rw_diagnose.py's report. The sample order is the stage's
(EpochSampler, seeded crops) and the network's head is drawn after torch.manual_seed(seed). At the stage's
thread count a probe with the stage's settings gave the stage's network (walk scores equal to the digit on
the demo, docs/notes/demo_v6.md 4.1); at another thread count float sums differ, and a short training drifts.
"""
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from psa_baseline.affinity import AffinityLabels, feature_affinities
from psa_baseline.evaluation import load_cam_dict
from psa_baseline.fileio import write_json
from psa_baseline.random_walk import propagate_cams
from psa_baseline.training import PolyOptimizer
from psa_baseline.training import EpochSampler, autocast
from psa_baseline.affinity_quality import separation, split_pairs
from scripts.rw_diagnose import Scorer
from stages import train_aff
from stages.builders import labels_for, split_ids, voc_root
from scripts.run_args import run_config, run_parser
from stages.make_crf import HA, LA
from stages.make_pseudo import padded_input


def gt_crf_dict(root):
    """A stand-in for train_aff.load_crf_dict: la = ha = the one-hot ground truth ({0: bg, c+1: class c};
    void pixels get no score, so make_seg_label ignores them)."""
    def load(path, shape, img_id):
        gt = root.read_seg(img_id)
        keys = [0] + sorted(int(v) for v in np.unique(gt) if v not in (0, 255))
        return {k: (gt == k).astype(np.float32) for k in keys}
    return load


def fixed_crf_dict(root, which):
    """train_aff.load_crf_dict with one kind of CRF-label error removed by the ground truth (see --labels)."""
    load = train_aff.load_crf_dict

    def fixed(path, shape, img_id):
        d = load(path, shape, img_id)
        gt = root.read_seg(img_id)
        keys = sorted(d)
        arg = np.asarray(keys)[np.stack([d[k] for k in keys]).argmax(0)]
        if which == "bg" and Path(path).parent.name == HA:
            d[0] = np.where((arg == 0) & (gt > 0) & (gt != 255), 0, d[0]).astype(np.float32)
        if which == "fg" and Path(path).parent.name == LA:
            wrong = (arg > 0) & (arg != gt)
            for k in keys[1:]:
                d[k] = np.where(wrong, 0, d[k]).astype(np.float32)
        return d
    return fixed


def crf_from(la_from, ha_from):
    """train_aff.load_crf_dict reading la and/or ha from other make_crf folders (same ids, same images)."""
    load = train_aff.load_crf_dict

    def other(path, shape, img_id):
        src = {LA: la_from, HA: ha_from}.get(Path(path).parent.name)
        return load(Path(src) / Path(path).parent.name / Path(path).name if src else path, shape, img_id)
    return other


def train(cfg, run, labels, optimizer, log_every=25, la_from=None, ha_from=None):
    t = cfg["aff_train"]
    root = voc_root(cfg)
    if labels == "gt":
        train_aff.load_crf_dict = gt_crf_dict(root)
    elif labels.startswith("crf-"):
        train_aff.load_crf_dict = fixed_crf_dict(root, labels.split("-")[1])
    if la_from or ha_from:
        train_aff.load_crf_dict = crf_from(la_from, ha_from)
    ids = split_ids(cfg, cfg["crf"]["list"])
    ds = train_aff.AffTrainDataset(root, ids, run / "make_crf", t["crop"], jitter=t["color_jitter"],
                                   seed=cfg["seed"])
    sampler = EpochSampler(len(ds), cfg["seed"])
    steps = len(sampler) // t["batch_size"]
    total = steps * t["epochs"]
    torch.manual_seed(cfg["seed"])
    net = train_aff.build_aff_net(cfg)
    if optimizer == "psa":
        opt = PolyOptimizer(net.param_groups(), t["lr"], t["weight_decay"], total, momentum=t["momentum"],
                            momentum_quirk=t["momentum_quirk"], power=t["poly_power"])
        sched = None
    else:  # Adam with PSA's lr groups (10x for the new layers) and poly decay
        g = net.param_groups()
        opt = torch.optim.Adam([{"params": g[0] + g[1], "lr": t["lr"]}, {"params": g[2] + g[3], "lr": 10 * t["lr"]}])
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (1 - s / total) ** t["poly_power"])
    labeler = AffinityLabels(net.radius, net.psa_crop)
    amp = autocast(torch.device("cpu"), t["bf16"])
    net.train()
    losses, t0, step = [], time.time(), 0
    for epoch in range(t["epochs"]):
        sampler.set_epoch(epoch)
        ds.set_epoch(epoch)
        order = list(iter(sampler))
        for b in range(steps):
            items = [ds[i] for i in order[b * t["batch_size"]:(b + 1) * t["batch_size"]]]
            x = torch.stack([it[1] for it in items])
            label = torch.stack([it[2] for it in items])
            out = train_aff.train_step(net, opt, x, label, labeler, amp)
            if sched:
                sched.step()
            step += 1
            losses.append([out[k] for k in ("loss", "bg", "fg", "neg")])
            if step % log_every == 0 or step == total:
                m = np.mean(losses[-log_every:], 0)
                print(f"step {step}/{total} loss {m[0]:.3f} bg {m[1]:.3f} fg {m[2]:.3f} neg {m[3]:.3f} "
                      f"{time.time() - t0:.0f} s", flush=True)
    return net.eval(), total, np.mean(losses[-log_every:], 0), time.time() - t0


def score(cfg, net, run, ts, n, beta):
    root = voc_root(cfg)
    ids = split_ids(cfg, cfg["data"]["eval_list"])[:n]
    labels = labels_for(cfg, root, ids)
    rows, same, diff = {}, [], []
    for i in ids:
        img, gt = root.read_image(i), root.read_seg(i)
        with torch.no_grad():
            feats = net(padded_input(img))
        aff = feature_affinities(feats, net.radius, True)[0]
        s, d = split_pairs(aff, gt, net.radius)
        same.append(s)
        diff.append(d)
        cams = load_cam_dict(run / "make_cam" / "cams" / f"{i}.npy", img.shape[:2], labels[i])
        for t in ts:
            pred = propagate_cams(cams, aff, img.shape[:2], alpha_bg=cfg["rw"]["alpha"], beta=beta, t=t,
                                  radius=net.radius, name=i)
            rows.setdefault(f"t {t}", Scorer(root.root)).add(i, pred, gt)
    return {**separation(same, diff), "n_images": len(ids), "walk": {k: v.result() for k, v in rows.items()}}


def main(argv=None):
    p = run_parser(__doc__, "a config override, e.g. aff_train.epochs=8 (repeatable)")
    p.add_argument("--seed", type=int, default=None, help="the run's seed (default: the config's)")
    p.add_argument("--labels", choices=["crf", "gt", "crf-bg-fixed", "crf-fg-fixed"], default="crf")
    p.add_argument("--optimizer", choices=["psa", "adam"], default="psa")
    p.add_argument("--la-from", help="another run's make_crf folder to take la (crf_la/) from")
    p.add_argument("--ha-from", help="another run's make_crf folder to take ha (crf_ha/) from")
    p.add_argument("--ts", type=int, nargs="+", default=[8, 32, 256])
    p.add_argument("--beta", type=float, default=8)
    p.add_argument("--n", type=int, default=150, help="val images scored")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    cfg = run_config(args, [("seed", args.seed)] if args.seed is not None else [])
    train_aff.check_config(cfg)
    run = Path(args.work_dir) / args.variant
    if (args.la_from or args.ha_from) and args.labels != "crf":
        p.error("--la-from / --ha-from take the CRF labels of another run: use them with --labels crf")
    net, steps, last, secs = train(cfg, run, args.labels, args.optimizer, la_from=args.la_from, ha_from=args.ha_from)
    report = {"run": str(run), "labels": args.labels, "la_from": args.la_from, "ha_from": args.ha_from,
              "optimizer": args.optimizer, "overrides": args.overrides,
              "seed": cfg["seed"], "steps": steps, "train_seconds": round(secs),
              "last_loss": dict(zip(("loss", "bg", "fg", "neg"), np.round(last, 3).tolist())),
              **score(cfg, net, run, args.ts, args.n, args.beta)}
    write_json(args.out, report)
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
