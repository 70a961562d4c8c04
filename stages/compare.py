"""Stage compare: two variants over several seeds, paired by seed: mean +- sd and B - A with 95% intervals.

    psa-eader compare --config demo --voc-root work/v5/data --work-dir work/cmp --seeds 0 1 2 3 4 --until cam
    psa-eader compare --config demo ... --b-set eader.psi=0.3 --b-name psi0.3     # a factor vs the same baseline
    psa-eader compare --a-dirs W0 W1 W2 --b-dirs V0 V1 V2                          # finished work dirs, paired in order

Sides: A is the baseline (eader.enabled=false) and B EADER (eader.enabled=true) unless --a-set/--b-set say
otherwise; --a-set/--b-set take key=value overrides for one side (every value up to the next option),
plain key=value overrides apply to both. Each (side, seed) is an ordinary pipeline run
(stages.pipeline.run_variants, --until cam|pseudo) in
    <work>/runs/<label>/seed<S>/
where <label> comes from the side's own overrides (not its name), so comparisons that share a side share
its runs, and stages already finished with the same config are skipped. --collect-only only reads finished
runs. With --until cam, `data.infer_lists=[ImageSets/Segmentation/val.txt]` makes CAMs for val only.

Per metric (CAM mIoU / precision / recall, strong / weak part recall on the demo data, the same for the
pseudo labels, DeepLabV3+ under results key `seg`; a row appears when the runs have it): each side's mean
+- sample sd over the seeds; the difference B - A of each seed; its mean with the 95% t-interval over the
seed pairs (training randomness) and a paired bootstrap 95% interval over the val images (evaluation
images; only when the runs wrote per_image.npz: eval-cam, eval-seg); a verdict, where a difference whose
interval includes 0 is "no difference shown". Writes <work>/compare/<A>_vs_<B>.{md,json}; prints the table.
"""
import fcntl
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from psa_baseline.errors import InputError
from psa_baseline.evaluation import PER_IMAGE_FILE, classes_note, load_per_image
from psa_baseline.fileio import write_json, write_text
from psa_baseline.stats import (BOOT_SEED, N_BOOT, bootstrap_paired, fmt_pm, mean_std, per_image_features,
                                t_interval, verdict)
from .alpha_sweep import metric
from .registry import GROUPS, group_name
from .report import renamed_entries, stage_warnings

METRICS = [("cam", "miou", "CAM mIoU"), ("cam", "precision", "CAM precision"), ("cam", "recall", "CAM recall"),
           ("cam", "strong_recall", "CAM recall strong part"), ("cam", "weak_recall", "CAM recall weak part"),
           ("pseudo", "miou", "pseudo-label mIoU"), ("pseudo", "precision", "pseudo-label precision"),
           ("pseudo", "recall", "pseudo-label recall"), ("pseudo", "strong_recall", "pseudo-label recall strong part"),
           ("pseudo", "weak_recall", "pseudo-label recall weak part"),
           ("seg", "miou", "DeepLabV3+ mIoU"), ("seg", "precision", "DeepLabV3+ precision"),
           ("seg", "recall", "DeepLabV3+ recall")]
# results key -> the stage folder whose per_image.npz holds that stage's per-image counts
PER_IMAGE_AT = {"cam": "eval_cam", "pseudo": "eval_seg", "seg": "eval_deeplab"}
STAGE_NAMES = {"cam": "CAMs", "pseudo": "pseudo labels", "seg": "DeepLabV3+"}
LEVEL = 0.95


def add_arguments(p):
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="seeds (default %(default)s)")
    p.add_argument("--until", type=group_name, choices=GROUPS, default="pseudo", help="last stage group each run "
                   "goes to, as in `pipeline` (default %(default)s)")
    p.add_argument("--a-set", nargs="+", default=[], metavar="key=value", help="overrides for side A only")
    p.add_argument("--b-set", nargs="+", default=[], metavar="key=value", help="overrides for side B only")
    p.add_argument("--a-name", help="label of side A (default: from its overrides, e.g. baseline)")
    p.add_argument("--b-name", help="label of side B (default: from its overrides, e.g. eader)")
    p.add_argument("--collect-only", action="store_true", help="only read runs that already finished")
    p.add_argument("--jobs", type=int, default=1,
                   help="runs at a time, each in its own process with its share of the threads (default 1)")
    p.add_argument("--a-dirs", nargs="+", help="instead of running: finished work dirs of side A")
    p.add_argument("--b-dirs", nargs="+", help="finished work dirs of side B, paired with --a-dirs in order")
    p.add_argument("--a-variant", help="with --a-dirs: which variant of results.json (default: the only one, "
                   "else baseline)")
    p.add_argument("--b-variant", help="with --b-dirs: which variant (default: the only one, else eader)")
    p.add_argument("--resamples", type=int, default=N_BOOT, help="bootstrap resamples (default %(default)s)")


# ------------------------------------------------------------------------------------------ runs

@dataclass
class Run:
    """One finished run of one side: its work dir, variant and results[variant]."""
    work_dir: Path
    variant: str
    results: dict
    seed: int = None

    def value(self, stage, key):
        entry = self.results.get(stage)
        return metric(entry, key) if isinstance(entry, dict) else None

    def per_image(self, stage):
        if stage not in PER_IMAGE_AT:
            return None
        path = self.work_dir / self.variant / PER_IMAGE_AT[stage] / PER_IMAGE_FILE
        return load_per_image(path) if path.is_file() else None


def load_run(work_dir, variant=None, default_variant=None, seed=None):
    """The Run in work_dir/results.json: `variant`, else the only one, else `default_variant`."""
    work_dir = Path(work_dir)
    f = work_dir / "results.json"
    if not f.is_file():
        raise InputError(f"{work_dir} has no results.json: no evaluation stage has finished there")
    try:
        res = renamed_entries(json.loads(f.read_text()))
    except ValueError as e:
        raise InputError(f"{f} is not valid JSON ({e}); rerun its evaluation stages") from e
    variants = [k for k, v in res.items() if isinstance(v, dict)]
    if variant is None:
        variant = variants[0] if len(variants) == 1 else default_variant
    if variant not in variants:
        raise InputError(f"{f} has no variant '{variant}' (it has {variants}); name one with --a-variant/--b-variant")
    return Run(work_dir, variant, res[variant], seed)


@dataclass
class Side:
    name: str
    runs: list                                     # Run or None (not finished) per seed / dir
    overrides: list = field(default_factory=list)
    label: str = None
    seeds: list = None                             # of the runs, when they were run by seed


def override_text(o):
    return f"{o[0]}={o[1]}" if isinstance(o, tuple) else str(o).strip()


def side_label(eader_on, overrides):
    """Folder name of a side's runs from its effective overrides (eader.enabled aside)."""
    own = sorted(o for o in overrides if not o.startswith("eader.enabled="))
    # '+' joins the overrides and is replaced inside them, so two different lists never share a label
    label = ("eader" if eader_on else "baseline") + "".join("+" + slug(o) for o in own)
    if len(label) > 80:  # readable when short; a hash otherwise (overrides.json in the folder says what)
        label = label[:60] + "_" + hashlib.sha256(json.dumps(own).encode()).hexdigest()[:10]
    return label


def side_config(config, common, side_sets, eader_default, where=()):
    """(cfg, label, name, overrides) of one side; its own overrides come last, so they may switch EADER.
    The label (its runs' folder) covers every override; the default name only the side's own. where:
    (key, value) pairs such as the data root and device, applied at load (bf16 auto resolves for the
    device) but not part of the label."""
    from .config import load_config
    own = [override_text(o) for o in side_sets]
    overrides = [override_text(o) for o in common] + own
    cfg = load_config(config, [f"eader.enabled={'true' if eader_default else 'false'}"] + overrides + list(where))
    on = cfg["eader"]["enabled"]
    return cfg, side_label(on, overrides), side_label(on, own), overrides


def run_dir(work_dir, label, seed):
    return Path(work_dir) / "runs" / label / f"seed{seed}"


def run_pipeline(cfg, until, force=False):
    """One (side, seed) run; top-level so that a process pool can call it."""
    from .pipeline import run_variants
    run_variants(cfg, "on" if cfg["eader"]["enabled"] else "off", force=force,
                 log=lambda m: print(m, flush=True), until=until)


def run_all(jobs_by_dir, until, jobs=1, force=False):
    """Run every {work dir: cfg} (identical dirs once), sequentially or `jobs` processes at a time."""
    if jobs <= 1:
        for d, cfg in jobs_by_dir.items():
            print(f"== compare: run {d} ==", flush=True)
            run_pipeline(cfg, until, force)
        return
    from .jobs import run_side_by_side, threads_each
    print(f"== compare: {len(jobs_by_dir)} runs, {jobs} at a time, {threads_each(jobs)} thread(s) each ==",
          flush=True)
    run_side_by_side(run_pipeline, [(cfg, until, force) for cfg in jobs_by_dir.values()], jobs)


# ------------------------------------------------------------------------------------------ statistics

def fmt_diff(x):
    return "-" if x is None else f"{x:+.2f}"


def fmt_interval(iv):
    return "-" if iv is None or iv[0] is None else f"[{iv[0]:+.2f}, {iv[1]:+.2f}]"


def pair_names(a_runs, b_runs):
    return [f"s{a.seed}" if a.seed is not None else f"#{k + 1}" for k, (a, b) in enumerate(zip(a_runs, b_runs))]


def bootstrap_stage(stage, a_runs, b_runs, n_boot):
    """Paired bootstrap over images of one stage's metrics, or (None, reason) when it cannot be done."""
    data = [(r.per_image(stage), s.per_image(stage)) for r, s in zip(a_runs, b_runs)]
    if not data or any(a is None or b is None for a, b in data):
        return None, "no per_image.npz in every run"
    ids = sorted(data[0][0]["ids"])
    if any(sorted(x["ids"]) != ids for pair in data for x in pair):
        return None, "the runs' per-image files hold different images"
    with_parts = all("part_hits" in x for pair in data for x in pair)

    def rows(x):  # every run in the same image order; part columns only when every run has them
        order = np.argsort(x["ids"], kind="stable")
        x = {k: v[order] for k, v in x.items() if k != "ids" and (with_parts or not k.startswith("part_"))}
        return per_image_features(x)

    n_classes = data[0][0]["confusion"].shape[1]
    res = bootstrap_paired([rows(a) for a, _ in data], [rows(b) for _, b in data], n_classes, n_boot)
    return res, f"{len(ids)} images"


def metric_row(stage, key, label, a_runs, b_runs, boot):
    a_vals = [r.value(stage, key) for r in a_runs]
    b_vals = [r.value(stage, key) for r in b_runs]
    if all(v is None for v in a_vals + b_vals):
        return None
    diffs = [None if a is None or b is None else b - a for a, b in zip(a_vals, b_vals)]
    d_mean, _ = mean_std(diffs)
    t_iv = t_interval(diffs, LEVEL)
    b = (boot or {}).get(key)
    boot_iv = (b["low"], b["high"]) if b else (None, None)
    return {"stage": stage, "metric": key, "label": label,
            "a": dict(zip(("mean", "sd"), mean_std(a_vals)), values=a_vals),
            "b": dict(zip(("mean", "sd"), mean_std(b_vals)), values=b_vals),
            "diff": {"mean": d_mean, "values": diffs, "n_pairs": sum(d is not None for d in diffs),
                     "t_interval": list(t_iv), "bootstrap_interval": list(boot_iv),
                     "bootstrap_estimate": b["estimate"] if b else None}}


def row_verdict(row, a_name, b_name):
    """verdict() of a metric row; a metric that one side's runs lack (a stage they did not reach) says so."""
    d = row["diff"]
    if d["n_pairs"]:
        return verdict(d["t_interval"], d["bootstrap_interval"], b_name)
    lacking = [name for name, side in ((a_name, "a"), (b_name, "b")) if all(v is None for v in row[side]["values"])]
    return f"not in both variants' runs (no {row['label']} for {' or '.join(lacking)})"


def compare_runs(a, b, n_boot=N_BOOT):
    """The comparison of two Sides (paired runs; pairs with a missing run are left out) as a dict."""
    pairs = [(x, y) for x, y in zip(a.runs, b.runs) if x is not None and y is not None]
    a_runs, b_runs = [x for x, _ in pairs], [y for _, y in pairs]
    if not pairs:
        raise InputError(f"no finished pair of runs to compare ({a.name} vs {b.name}); run them first "
                         "(without --collect-only)")
    names = pair_names(a_runs, b_runs)
    notes, boots = [], {}
    for stage in STAGE_NAMES:
        if not any(r.value(stage, "miou") is not None for r in a_runs + b_runs):
            continue
        boots[stage], why = bootstrap_stage(stage, a_runs, b_runs, n_boot) if stage in PER_IMAGE_AT else \
            (None, "no per-image files for this stage")
        notes.append(f"{STAGE_NAMES[stage]}: bootstrap over images " +
                     (f"on {why}" if boots[stage] else f"not done ({why})") + "; " + stage_classes(stage, a_runs + b_runs))
    for side, runs in ((a, a_runs), (b, b_runs)):
        for r in runs:
            notes += [f"{side.name} " + (f"seed {r.seed}" if r.seed is not None else str(r.work_dir)) +
                      f", {stage}: {w}" for stage, w in stage_warnings(r.work_dir, r.variant)]
    rows = []
    for stage, key, label in METRICS:
        row = metric_row(stage, key, label, a_runs, b_runs, boots.get(stage))
        if row:
            row["pairs"] = names
            row["verdict"] = row_verdict(row, a.name, b.name)
            rows.append(row)
    missing = [f"{s.name} " + (f"seed {s.seeds[k]}" if s.seeds else f"#{k + 1}")
               for s in (a, b) for k, r in enumerate(s.runs) if r is None]
    if missing:
        notes.append("not finished, left out with its pair: " + ", ".join(missing))
    return {"a": side_json(a), "b": side_json(b), "pairs": names, "level": LEVEL,
            "bootstrap": {"resamples": n_boot, "rng_seed": BOOT_SEED}, "metrics": rows, "notes": notes}


def stage_classes(stage, runs):
    """Which classes the means cover, e.g. 'mIoU over the 10 classes present, ...' (each distinct wording)."""
    notes = sorted({classes_note(r.results[stage]) for r in runs if isinstance(r.results.get(stage), dict)})
    return "; ".join(notes)


def side_json(s):
    return {"name": s.name, "label": s.label, "overrides": s.overrides,
            "runs": [None if r is None else {"work_dir": str(r.work_dir), "variant": r.variant, "seed": r.seed}
                     for r in s.runs]}


def markdown(c):
    a, b = c["a"]["name"], c["b"]["name"]
    head = [f"# {a} vs {b}\n",
            f"A = **{a}** ({side_words(c['a'])}); B = **{b}** ({side_words(c['b'])}).",
            f"Pairs (same seed): {', '.join(c['pairs'])}. Percentages; differences are B - A.",
            f"95% t-interval: over the seed pairs (Student's t, n - 1 degrees of freedom). Bootstrap 95% "
            f"interval: {c['bootstrap']['resamples']} resamples of the val images with replacement (rng seed "
            f"{c['bootstrap']['rng_seed']}), the same images for every run, each metric recomputed from the "
            "summed per-image counts of both variants of every seed and averaged over the seeds. A difference "
            "whose interval includes 0: no difference shown.", ""]
    cols = ["metric", f"{a} mean ± sd", f"{b} mean ± sd", f"{b} − {a} mean", "95% t-interval",
            "bootstrap 95% interval", "per-seed differences", "verdict"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in c["metrics"]:
        d = r["diff"]
        per_seed = ", ".join(f"{p} {fmt_diff(v)}" for p, v in zip(r["pairs"], d["values"]))
        cells = [r["label"], fmt_pm(r["a"]["mean"], r["a"]["sd"], 1, "±"), fmt_pm(r["b"]["mean"], r["b"]["sd"], 1, "±"),
                 fmt_diff(d["mean"]), fmt_interval(d["t_interval"]), fmt_interval(d["bootstrap_interval"]),
                 per_seed, r["verdict"]]
        lines.append("| " + " | ".join(cells) + " |")
    notes = [""] + [f"- {n}" for n in c["notes"]]
    return "\n".join(head + lines + notes) + "\n"


def side_words(s):
    if s["overrides"]:
        return "overrides " + " ".join(f"`{o}`" for o in s["overrides"])
    dirs = sorted({str(Path(r["work_dir"]).parent) for r in s["runs"] if r})
    return "runs in " + ", ".join(f"`{d}`" for d in dirs) if dirs else "no runs"


def slug(name, keep_plus=False):
    """A file-name-safe form of a name or (keep_plus False: '+' joins them in labels) an override."""
    return re.sub(r"[^A-Za-z0-9._=+-]" if keep_plus else r"[^A-Za-z0-9._=-]", "-", name)


def write_comparison(work_dir, c):
    """<work>/compare/<A>_vs_<B>.md and .json; returns (path of the .md, its text, where an earlier comparison
    of other runs was kept or None). That earlier pair (other seeds or dirs under the same names) is renamed
    <stem>.earlier-<n>.md/.json, not overwritten; the same runs compared again replace their own files."""
    stem = f"{slug(c['a']['name'], True)}_vs_{slug(c['b']['name'], True)}"
    out = Path(work_dir) / "compare"
    out.mkdir(parents=True, exist_ok=True)
    text = markdown(c)
    # one writer at a time: two compares finishing together must not both keep (or lose) the earlier table
    with open(out / f".{stem}.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        kept = keep_earlier(out, stem, (c["a"]["runs"], c["b"]["runs"]))
        write_json(out / f"{stem}.json", c)
        write_text(out / f"{stem}.md", text)
    return out / f"{stem}.md", text, kept


def keep_earlier(out, stem, runs):
    """Rename <stem>.json/.md to <stem>.earlier-<n>.* when they compare other runs than `runs`; their path."""
    old = out / f"{stem}.json"
    if not old.is_file():
        return None
    try:
        prev = json.loads(old.read_text())
        if (prev["a"]["runs"], prev["b"]["runs"]) == tuple(json.loads(json.dumps(runs))):
            return None
    except (ValueError, KeyError, TypeError):
        pass  # unreadable: kept too, rather than lost
    n = 1
    while (out / f"{stem}.earlier-{n}.json").exists():
        n += 1
    for ext in ("md", "json"):
        if (out / f"{stem}.{ext}").is_file():
            os.replace(out / f"{stem}.{ext}", out / f"{stem}.earlier-{n}.{ext}")
    return out / f"{stem}.earlier-{n}.md"


# ------------------------------------------------------------------------------------------ driver

def sides_from_dirs(args):
    if not args.b_dirs or len(args.a_dirs) != len(args.b_dirs):
        raise InputError("--a-dirs and --b-dirs pair runs in order: give both, with as many dirs each")
    a_runs = [load_run(d, args.a_variant, "baseline") for d in args.a_dirs]
    b_runs = [load_run(d, args.b_variant, "eader") for d in args.b_dirs]
    a_name, b_name = args.a_name or a_runs[0].variant, args.b_name or b_runs[0].variant
    if a_name == b_name:
        a_name, b_name = f"{a_name} (A)", f"{b_name} (B)"
    return Side(a_name, a_runs), Side(b_name, b_runs)


def sides_from_runs(args, log=print):
    """Run (unless --collect-only) and read every (side, seed) in <work>/runs/<label>/seed<S>."""
    from .cli import config_from_args, default_config
    from .config import merge
    base = config_from_args(args)  # checks the common overrides and gives the work dir
    config = args.config or default_config(args.stage)
    sides, todo = [], {}
    for sets, default, name in ((args.a_set, False, args.a_name), (args.b_set, True, args.b_name)):
        cfg, label, default_name, overrides = side_config(config, args.set, sets, default,
                                                          [(k, base[k]) for k in ("voc_root", "device")])
        side = Side(name or default_name, [], overrides, label, list(args.seeds))
        for s in args.seeds:
            d = run_dir(base["work_dir"], label, s)
            rcfg = merge(cfg, {"seed": int(s), "work_dir": str(d)})
            side.runs.append((d, rcfg))
            todo.setdefault(str(d), rcfg)
        sides.append(side)
    if sides[0].name == sides[1].name:
        raise InputError(f"both sides are called '{sides[0].name}'; name them with --a-name/--b-name")
    if not args.collect_only:
        for side in sides:  # says what a hashed label stands for
            write_json(Path(base["work_dir"]) / "runs" / side.label / "overrides.json",
                       {"eader.enabled": side.runs[0][1]["eader"]["enabled"], "overrides": side.overrides})
        run_all(todo, args.until, args.jobs, args.force)
    for side in sides:
        side.runs = [finished_run(d, rcfg) for d, rcfg in side.runs]
    return sides


def finished_run(d, rcfg):
    from .config import variant_name
    if not (d / "results.json").is_file():
        return None
    return load_run(d, variant_name(rcfg), seed=rcfg["seed"])


def main(args):
    from .cli import config_from_args
    if args.resamples < 100:
        raise InputError("--resamples: use at least 100 (1000-2000 for a 95% interval)")
    if args.jobs < 1:
        raise InputError("--jobs must be at least 1")
    a, b = sides_from_dirs(args) if args.a_dirs or args.b_dirs else sides_from_runs(args)
    path, text, kept = write_comparison(config_from_args(args)["work_dir"], compare_runs(a, b, args.resamples))
    print(text)
    print(f"written: {path} and its .json beside it")
    if kept:
        print(f"the comparison of other runs that was there is kept as {kept} (and its .json)")
    return path


if __name__ == "__main__":
    from .cli import stage_main
    stage_main("compare")
