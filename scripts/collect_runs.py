"""Mean +- std over seeds of the `results.json` of several pipeline work dirs (Table 2 with both stages).

Each work dir holds results.json as written by the pipeline ({variant: {"cam": {...}, "aff": {...}}}).
Rows are the variants; columns CAM and pseudo-label (AffinityNet + random walk) mIoU, precision, recall,
and on the demo data the recall of the strong and weak parts. Then Table 3's layout (report.table3) with each
class's pseudo-label IoU averaged over the seeds.

    .venv/bin/python scripts/collect_runs.py work/d4/sweep/psa/alpha0/seed* work/d4/sweep/psa/alpha0.05/seed* \\
        --out work/d4/table2_aff.md
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from psa_baseline.fileio import write_text  # noqa: E402
from psa_baseline.stats import fmt_pm, mean_std  # noqa: E402
from stages.alpha_sweep import metric  # noqa: E402
from stages.report import table3  # noqa: E402

COLS = [("cam", "miou", "CAM mIoU"), ("cam", "precision", "CAM precision"), ("cam", "recall", "CAM recall"),
        ("cam", "strong_recall", "CAM recall strong part"), ("cam", "weak_recall", "CAM recall weak part"),
        ("aff", "miou", "pseudo mIoU"), ("aff", "precision", "pseudo precision"), ("aff", "recall", "pseudo recall"),
        ("aff", "strong_recall", "pseudo recall strong part"), ("aff", "weak_recall", "pseudo recall weak part")]


def value(entry, key):
    return None if entry is None else metric(entry, key)


def fmt(vals):
    return fmt_pm(*mean_std(vals), digits=1, pm="±")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("work_dirs", nargs="+")
    p.add_argument("--out", help="also write the table here")
    args = p.parse_args(argv)
    by_variant = {}
    for d in args.work_dirs:
        f = Path(d) / "results.json"
        if not f.is_file():
            print(f"skipped {d}: no results.json", file=sys.stderr)
            continue
        for variant, res in json.loads(f.read_text()).items():
            by_variant.setdefault(variant, []).append((d, res))
    lines = ["| model | runs | " + " | ".join(c[2] for c in COLS) + " |", "|---" * (len(COLS) + 2) + "|"]
    for variant, runs in by_variant.items():
        cells = [fmt([value(r.get(stage), key) for _, r in runs]) for stage, key, _ in COLS]
        lines.append(f"| {variant} | {len(runs)} | " + " | ".join(cells) + " |")
    per_run = ["", "Per run (CAM mIoU / pseudo mIoU):"] + [
        f"- {variant} {d}: {fmt([value(r.get('cam'), 'miou')])} / {fmt([value(r.get('aff'), 'miou')])}"
        for variant, runs in by_variant.items() for d, r in runs]
    mean_aff = {}
    for variant, runs in by_variant.items():
        affs = [r["aff"] for _, r in runs if r.get("aff")]
        if affs:
            classes = {c for a in affs for c, v in (a.get("per_class") or {}).items() if v is not None}
            mean_aff[variant] = {"aff": {
                "per_class": {c: float(np.mean([a["per_class"][c] for a in affs if a["per_class"].get(c) is not None]))
                              for c in classes},
                "miou": float(np.mean([a["miou"] for a in affs])),
                "split": f"{affs[0].get('split')}, mean of {len(affs)} seeds"}}
    text = "\n".join(lines + per_run) + "\n" + (table3(mean_aff) if mean_aff else "")
    print(text)
    if args.out:
        write_text(args.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
