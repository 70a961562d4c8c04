"""Training loaders with and without persistent workers: the wall time per epoch and the share of it spent
waiting for data, with the step itself simulated by a sleep of --step-s seconds (the device's work).

The dataset is train-cam's (PSA's augmentation at the config's crop) on --voc-root's training list; both
settings see the same batches (EpochIndex carries the epoch to the workers). Without persistence the
loader starts its workers anew at every epoch, as before this change.

    .venv/bin/python -m scripts.bench_loader --config voc --voc-root ../shared/data/VOCmini --workers 2 \
        --batch 8 --epochs 4 --step-s 0.1
"""
import argparse
import time

import torch

from psa_baseline.training import EpochSampler
from stages.builders import cls_train_dataset
from stages.config import load_config


def epochs(dataset, batch, workers, persistent, n_epochs, step_s, steps):
    sampler = EpochSampler(len(dataset), seed=0)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, sampler=sampler, drop_last=True,
                                         num_workers=workers, persistent_workers=persistent)
    rows = []
    for e in range(n_epochs):
        sampler.set_epoch(e)
        dataset.set_epoch(e)
        wait, t0 = 0.0, time.perf_counter()
        it = iter(loader)
        for k in range(steps):
            w = time.perf_counter()
            next(it)
            wait += time.perf_counter() - w
            time.sleep(step_s)
        del it
        rows.append((time.perf_counter() - t0, wait))
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="voc")
    p.add_argument("--voc-root", required=True)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch", type=int, default=8, help="per-process batch")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--step-s", type=float, default=0.1, help="simulated device time per step")
    p.add_argument("--steps", type=int, default=None, help="steps per epoch (default: the whole list)")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds of the two settings")
    p.add_argument("set", nargs="*", metavar="key=value")
    args = p.parse_args(argv)
    cfg = load_config(args.config, [("voc_root", args.voc_root), *args.set])
    _, ids, dataset = cls_train_dataset(cfg, "cam_train")
    steps = args.steps or len(ids) // args.batch
    print(f"{len(ids)} images, batch {args.batch}, {steps} steps per epoch, {args.workers} workers, "
          f"crop {cfg['cam_train']['crop']}, simulated step {args.step_s} s, {args.epochs} epochs x {args.rounds} rounds")
    got = {False: [], True: []}
    for _ in range(args.rounds):
        for persistent in (False, True):
            got[persistent] += epochs(dataset, args.batch, args.workers, persistent, args.epochs, args.step_s, steps)
    print("| workers | s per epoch (first epoch / later, mean) | data wait (later epochs) |")
    print("|---|---|---|")
    for persistent in (False, True):
        rows = got[persistent]
        first = [r for i, r in enumerate(rows) if i % args.epochs == 0]
        later = [r for i, r in enumerate(rows) if i % args.epochs]
        mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
        print(f"| {'persistent' if persistent else 'restarted each epoch'} | {mean([r[0] for r in first]):.2f} / "
              f"{mean([r[0] for r in later]):.2f} | {100 * sum(r[1] for r in later) / sum(r[0] for r in later):.0f}% |")


if __name__ == "__main__":
    main()
