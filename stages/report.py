"""results.json (all variants, machine-readable) and report.md (the paper's tables) in the work dir."""
import json
from pathlib import Path

from psa_baseline.evaluation import markdown_table
from psa_baseline.fileio import write_json, write_text

# Published numbers (Pascal VOC 2012 val), from REFERENCE.md.
PAPER_TABLE2 = {
    "PSA (paper, reproduced by EADER)": {"cam": {"miou": 46.8, "precision": 60.3, "recall": 66.7},
                                         "aff": {"miou": 58.7}, "seg": {"miou": 60.7}},
    "PSA w/ EADER (paper)": {"cam": {"miou": 48.6, "precision": 61.3, "recall": 68.7},
                             "aff": {"miou": 60.1}, "seg": {"miou": 62.8}},
}


def results_path(work_dir):
    return Path(work_dir) / "results.json"


def load_results(work_dir):
    p = results_path(work_dir)
    return json.loads(p.read_text()) if p.exists() else {}


def update_results(work_dir, variant, key, metrics, meta=None):
    """Set results[variant][key] = metrics and rewrite report.md."""
    res = load_results(work_dir)
    res.setdefault(variant, {})[key] = metrics
    if meta:
        res[variant].setdefault("meta", {}).update(meta)
    write_json(results_path(work_dir), res)
    write_report(work_dir, res)
    return res


def write_report(work_dir, res):
    variants = {v: r for v, r in res.items() if isinstance(r, dict)}
    parts = ["# Results\n", f"Work dir: `{Path(work_dir)}`. Percentages. Our rows come from `results.json`; "
             "paper rows are the published Pascal VOC 2012 val numbers, for reference only when our "
             "rows are not on VOC val.\n"]
    parts.append("\n## Table 2: CAM (and later stages) per variant\n\n")
    parts.append(markdown_table(variants, "table2", reference=PAPER_TABLE2))
    cam = {v: r["cam"] for v, r in variants.items() if "cam" in r}
    if cam:
        parts.append("\n## CAM details\n\n| model | threshold | best threshold (sweep) | best mIoU | images |\n"
                     "|---|---|---|---|---|\n")
        for v, c in cam.items():
            parts.append(f"| {v} | {c.get('threshold')} | {c.get('best_threshold')} | "
                         f"{c.get('best_miou', float('nan')):.1f} | {c.get('n_images')} |\n")
        pr = {v: c["part_recall"] for v, c in cam.items() if c.get("part_recall")}
        if pr:
            parts.append("\n## CAM recall on the demo objects' parts\n\n| model | strong part | weak part |\n"
                         "|---|---|---|\n")
            for v, p in pr.items():
                parts.append(f"| {v} | {p['strong']:.1f} | {p['weak']:.1f} |\n")
        parts.append("\n## CAM per-class IoU\n\n")
        parts.append(markdown_table(cam, "per_class"))
    write_text(Path(work_dir) / "report.md", "".join(parts))
