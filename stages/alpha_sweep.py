"""Stage alpha-sweep: EADER's Table 1 (alpha x seeds) or Table 2's CAM columns (variants x seeds).

    psa-eader alpha-sweep --config demo --model standalone --alphas 0 0.01 0.05 0.1 --seeds 0 1 2
    psa-eader alpha-sweep --config voc --voc-root DIR --model psa --variants baseline eader --seeds 0 1 2

Every (alpha, seed) is an ordinary run of the stage functions (standalone: train + evaluate the Grad-CAM
localizer; psa: train-cam, make-cam, eval-cam) with a modified config: seed = s, eader.alpha = alpha,
eader.enabled = alpha > 0 (alpha 0 is the plain classifier / PSA baseline, hook off), in its own work dir
    <work>/sweep/<model>/alpha<alpha>/seed<s>/
so finished runs are skipped and an interrupted sweep resumes where it stopped. The variants mode maps
baseline -> alpha0 and eader -> alpha<eader.alpha>, so it shares runs with the alpha sweep.
For --model psa only data.eval_list gets CAMs (data.infer_lists is set to it) unless --keep-infer-lists.

Writes <work>/sweep/<model>/table1.{md,json} (alpha mode) or table2.{md,json} (variants mode): mIoU,
precision, recall as mean +- sample std (ddof 1) over the seeds, next to the paper's numbers.
--collect-only builds the tables from the runs already finished, without training anything.
"""
import json
from pathlib import Path

from psa_baseline.errors import InputError
from psa_baseline.fileio import write_json, write_text
from psa_baseline.stats import fmt_pm, mean_std
from .config import merge, variant_name
from .report import PAPER_TABLE2, paper_cell, refresh_report

# EADER Table 1 (standalone, Pascal VOC 2012 val, mean +- std over 6 runs), from docs/reference.md
PAPER_TABLE1 = {
    0.0: {"miou": (41.37, 0.26), "precision": (58.26, 0.50), "recall": (58.18, 0.66)},
    0.01: {"miou": (42.51, 0.41), "precision": (57.79, 0.72), "recall": (60.88, 0.52)},
    0.05: {"miou": (43.89, 0.40), "precision": (54.78, 1.03), "recall": (68.13, 1.51)},
    0.1: {"miou": (42.88, 0.99), "precision": (52.68, 2.30), "recall": (69.31, 1.84)},
}
METRICS = ("miou", "precision", "recall", "best_miou", "strong_recall", "weak_recall")


def metric(r, m):
    """Metric m of one run's metrics dict; the part recalls (demo data only) sit in r['part_recall']."""
    if m in ("strong_recall", "weak_recall"):
        return (r.get("part_recall") or {}).get(m.split("_")[0])
    return r.get(m)
MODELS = ("standalone", "psa")


def add_arguments(p):
    p.add_argument("--model", choices=MODELS, default="standalone",
                   help="standalone Grad-CAM localizer (Table 1) or PSA's CAM stage (default %(default)s)")
    p.add_argument("--alphas", type=float, nargs="+", default=[0.0, 0.01, 0.05, 0.1],
                   help="EADER alpha values; 0 = hook off (default %(default)s)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (default %(default)s)")
    p.add_argument("--variants", nargs="+", choices=("baseline", "eader"),
                   help="instead of --alphas: these variants (Table 2's CAM columns); eader uses eader.alpha")
    p.add_argument("--keep-infer-lists", action="store_true",
                   help="psa: CAMs for all of data.infer_lists (default: data.eval_list only)")
    p.add_argument("--collect-only", action="store_true", help="only tabulate the runs already finished")


def alpha_key(alpha):
    return f"alpha{float(alpha):g}"


def sweep_dir(cfg, model):
    return Path(cfg["work_dir"]) / "sweep" / model


def run_config(cfg, model, alpha, seed, keep_infer_lists=False):
    """The config of one (alpha, seed) run: its own work dir, seed and EADER weight."""
    alpha = float(alpha)
    over = {"seed": int(seed), "work_dir": str(sweep_dir(cfg, model) / alpha_key(alpha) / f"seed{seed}"),
            "variant": None, "eader": {"enabled": alpha > 0, "alpha": alpha}}
    if model == "psa" and not keep_infer_lists:
        over["data"] = {"infer_lists": [cfg["data"]["eval_list"]]}
    return merge(cfg, over)


def run_one(rcfg, model, force=False):
    """Run (or skip, when finished) one configuration; returns its metrics dict."""
    if model == "standalone":
        from . import train_standalone
        return train_standalone.run(rcfg, force=force)
    from .registry import steps
    for step in steps("cam"):
        out = step.run(rcfg, force=force)
    return out


def finished_metrics(rcfg, model):
    """Metrics of a finished run, or None."""
    sub = ("standalone_eval", "metrics.json") if model == "standalone" else ("eval_cam", "cam_eval.json")
    d = Path(rcfg["work_dir"]) / variant_name(rcfg) / sub[0]
    if not (d / "DONE.json").exists() or not (d / sub[1]).exists():
        return None
    return json.loads((d / sub[1]).read_text())


# ------------------------------------------------------------------------------------------ aggregation

def aggregate(runs):
    """runs: {row: {seed: metrics dict}} -> {row: {'n', 'seeds', metric: {'mean', 'std', 'values'}}}."""
    out = {}
    for row, by_seed in runs.items():
        seeds = sorted(by_seed)
        entry = {"n": len(seeds), "seeds": seeds}
        for m in METRICS:
            vals = [metric(by_seed[s], m) for s in seeds]
            mean, std = mean_std(vals)
            entry[m] = {"mean": mean, "std": std, "values": vals}
        out[row] = entry
    return out


def table1_markdown(agg, alphas, model, note=""):
    lines = [f"# EADER Table 1: alpha sweep ({model})\n",
             "Ours: mean +- sample std over the seeds (n runs); percentages on the config's data.eval_list. "
             "Paper: Pascal VOC 2012 val, ResNet-101 standalone, 6 runs (for reference only when our data "
             "is not VOC val). best mIoU: over the background-threshold sweep.\n" + note, "",
             "| alpha | runs | mIoU | precision | recall | best mIoU | recall strong part | recall weak part "
             "| paper mIoU | paper precision | paper recall |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for a in alphas:
        e = agg.get(alpha_key(a), {})
        p = PAPER_TABLE1.get(float(a), {})
        ours = [fmt_pm(e[m]["mean"], e[m]["std"]) if e else "-" for m in METRICS]
        paper = [fmt_pm(*p[m]) if m in p else "-" for m in ("miou", "precision", "recall")]
        lines.append(f"| {float(a):g} | {e.get('n', 0)} | " + " | ".join(ours + paper) + " |")
    return "\n".join(lines) + "\n"


def table2_markdown(agg, variants, rows, model, note=""):
    lines = [f"# EADER Table 2, CAM columns ({model})\n",
             "Ours: mean +- sample std over the seeds (n runs), percentages on the config's data.eval_list; "
             "paper rows: Pascal VOC 2012 val, single numbers († reproduced by EADER's authors).\n" + note, "",
             "| model | runs | CAM mIoU | CAM precision | CAM recall | best mIoU | recall strong part | recall weak part |",
             "|---|---|---|---|---|---|---|---|"]
    for v in variants:
        e = agg.get(rows[v], {})
        cells = [fmt_pm(e[m]["mean"], e[m]["std"]) if e else "-" for m in METRICS]
        lines.append(f"| {v} ({rows[v]}) | {e.get('n', 0)} | " + " | ".join(cells) + " |")
    for name in PAPER_TABLE2:  # † : reproduced by EADER's authors (docs/reference.md)
        lines.append(f"| {name} | - | " + " | ".join(paper_cell(name, "cam", m) for m in
                                                      ("miou", "precision", "recall")) + " | - | - | - |")
    return "\n".join(lines) + "\n"


def write_tables(out_dir, kind, model, runs, agg, markdown, extra):
    out_dir = Path(out_dir)
    slim = {row: {str(s): {m: metric(r, m) for m in METRICS + ("rho", "threshold", "best_rho", "best_threshold",
                                                               "n_images", "split") if metric(r, m) is not None}
                  for s, r in by_seed.items()} for row, by_seed in runs.items()}
    write_json(out_dir / f"{kind}.json", {"kind": kind, "model": model, "rows": agg, "runs": slim, **extra})
    write_text(out_dir / f"{kind}.md", markdown)
    return out_dir / f"{kind}.md"


# ------------------------------------------------------------------------------------------ driver

def sweep(cfg, model="standalone", alphas=(0.0, 0.01, 0.05, 0.1), seeds=(0, 1, 2), variants=None,
          keep_infer_lists=False, collect_only=False, force=False, log=print):
    """Run (or collect) every (row, seed) and write the table; returns (path of the .md, aggregate)."""
    if model not in MODELS:
        raise InputError(f"--model must be one of {MODELS}, got {model!r}")
    if not seeds:
        raise InputError("give at least one seed")
    if variants:
        ea = float(cfg["eader"]["alpha"])
        if "eader" in variants and ea <= 0:
            raise InputError("--variants eader needs eader.alpha > 0 (set eader.alpha=0.05)")
        row_alpha = {"baseline": 0.0, "eader": ea}
        rows = {v: alpha_key(row_alpha[v]) for v in variants}
        plan = [(row_alpha[v], rows[v]) for v in variants]
    else:
        if any(a < 0 for a in alphas):
            raise InputError("alphas must be >= 0")
        plan = [(float(a), alpha_key(a)) for a in dict.fromkeys(float(a) for a in alphas)]
    runs, missing = {}, []
    for alpha, row in plan:
        for s in seeds:
            rcfg = run_config(cfg, model, alpha, s, keep_infer_lists)
            if collect_only:
                m = finished_metrics(rcfg, model)
                if m is None:
                    missing.append(f"{row}/seed{s}")
                    continue
            else:
                log(f"== {model} {row} seed {s} -> {rcfg['work_dir']} ==")
                m = run_one(rcfg, model, force=force)
            runs.setdefault(row, {})[int(s)] = m
    agg = aggregate(runs)
    note = f"Config `{cfg['name']}`, eval list `{cfg['data']['eval_list']}`, seeds {list(seeds)}."
    if missing:
        note += f" Not finished (left out): {', '.join(missing)}."
    extra = {"config": cfg["name"], "eval_list": cfg["data"]["eval_list"], "seeds": list(seeds),
             "missing": missing}
    if variants:
        md = table2_markdown(agg, variants, rows, model, note)
        path = write_tables(sweep_dir(cfg, model), "table2", model, runs, agg, md,
                            {**extra, "variants": {v: rows[v] for v in variants},
                             "paper": {k: v["cam"] for k, v in PAPER_TABLE2.items()}})
    else:
        md = table1_markdown(agg, [a for a, _ in plan], model, note)
        path = write_tables(sweep_dir(cfg, model), "table1", model, runs, agg, md,
                            {**extra, "alphas": [a for a, _ in plan],
                             "paper": {format(a, "g"): {m: {"mean": v[0], "std": v[1]} for m, v in p.items()}
                                       for a, p in PAPER_TABLE1.items()}})
    refresh_report(cfg["work_dir"])  # report.md shows the new table
    return path, agg


def main(args):
    from .cli import config_from_args
    cfg = config_from_args(args)
    path, _ = sweep(cfg, args.model, args.alphas, args.seeds, args.variants, args.keep_infer_lists,
                    args.collect_only, args.force, log=lambda m: print(m, flush=True))
    print(path.read_text())
    print(f"written: {path} and {path.with_suffix('.json')}")


if __name__ == "__main__":
    from .cli import stage_main
    stage_main("alpha-sweep")
