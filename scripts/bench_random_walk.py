"""Time PSA's dense random walk (N x N matrix squared logt times) against the sparse neighbourhood walk.

Random smooth 448-channel features on the stride-8 grid, 21 CAM channels (as PSA's infer_aff),
beta 8, t = 256 (logt 8), float32 on CPU. The dense walk at a grid is skipped (with the reason) when
its estimated time, extrapolated as N^3 from the smallest grid, exceeds --dense-budget seconds (then
one of its logt squarings is timed instead and multiplied by logt, if that fits the budget), or its
memory (three N x N float32 matrices) exceeds --dense-mem-gb.

    .venv/bin/python -m scripts.bench_random_walk
"""
import argparse
import time

import torch
import torch.nn.functional as F

from psa_baseline.affinity import feature_affinities
from psa_baseline.random_walk import (dense_affinity_matrix, random_walk_dense,
                                      random_walk_sparse)

GRIDS = ((56, 56), (63, 47), (126, 94))


def make_inputs(h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    # piecewise-smooth features (upsampled coarse noise + a little fine noise), so affinities vary
    coarse = torch.randn(1, 448, max(2, h // 8), max(2, w // 8), generator=g)
    feats = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    feats = feats + 0.1 * torch.randn(1, 448, h, w, generator=g)
    cams = torch.rand(21, h, w, generator=g)
    return feature_affinities(feats)[0], cams


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--beta", type=int, default=8)
    ap.add_argument("--logt", type=int, default=8)
    ap.add_argument("--dense-budget", type=float, default=90.0, help="max estimated dense seconds")
    ap.add_argument("--dense-mem-gb", type=float, default=4.0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    t = 2 ** args.logt
    print(f"beta={args.beta} t={t} float32 CPU, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print(f"{'grid':>8} {'N':>6} {'dense s':>9} {'sparse s':>9} {'ratio':>8} {'max abs diff':>13}")
    sec_per_n3 = None
    with torch.no_grad():
        for h, w in GRIDS:
            n = h * w
            aff, cams = make_inputs(h, w)
            t0 = time.perf_counter()
            sp = random_walk_sparse(aff, cams, args.beta, t)
            ts = time.perf_counter() - t0
            mem_gb = 3 * n * n * 4 / 1e9
            est = sec_per_n3 * n ** 3 if sec_per_n3 else 0.0
            skip = None
            if mem_gb > args.dense_mem_gb:
                skip = f"dense needs ~{mem_gb:.1f} GB > --dense-mem-gb {args.dense_mem_gb}"
            elif est > args.dense_budget:
                skip = f"dense estimated ~{est:.0f} s (N^3 from the smallest grid) > --dense-budget " \
                       f"{args.dense_budget:.0f} s; needs ~{mem_gb:.1f} GB"
            if skip and mem_gb <= args.dense_mem_gb and est / args.logt <= args.dense_budget:
                # too slow to run in full: time one of the logt squarings of the real matrix instead
                a = dense_affinity_matrix(aff, h, w) ** args.beta
                trans = a / a.sum(0, keepdim=True)
                t0 = time.perf_counter()
                trans = trans @ trans
                one = time.perf_counter() - t0
                del a, trans
                est = one * args.logt
                skip = f"full dense skipped: one squaring measured {one:.1f} s, x{args.logt} = ~{est:.0f} s"
            if skip:
                print(f"{h:>3}x{w:<4} {n:>6} {'~%.0f' % est:>9} {ts:>9.3f} {'~%.0fx' % (est / ts):>8} "
                      f"{'-':>13}  ({skip})")
                continue
            t0 = time.perf_counter()
            dn = random_walk_dense(dense_affinity_matrix(aff, h, w), cams, args.beta, args.logt)
            td = time.perf_counter() - t0
            sec_per_n3 = sec_per_n3 or td / n ** 3
            diff = (dn - sp).abs().max().item()
            print(f"{h:>3}x{w:<4} {n:>6} {td:>9.2f} {ts:>9.3f} {td / ts:>7.1f}x {diff:>13.2e}")


if __name__ == "__main__":
    main()
