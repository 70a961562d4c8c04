"""results.json (all variants, machine-readable) and report.md (the paper's tables) in the work dir."""
import fcntl
import json
from contextlib import contextmanager
from pathlib import Path

from psa_baseline.constants import SEG_CLASS_NAMES
from psa_baseline.evaluation import classes_note, markdown_table
from psa_baseline.fileio import write_json, write_text
from .registry import GROUPS, RENAMED
from .workdir import REPLACED_SUFFIX

# Published numbers (Pascal VOC 2012 val), from docs/reference.md.
PAPER_TABLE2 = {
    "PSA (paper)": {"cam": {"miou": 46.8, "precision": 60.3, "recall": 66.7}, "pseudo": {"miou": 58.7},
                    "seg": {"miou": 60.7}},
    "PSA w/ EADER (paper)": {"cam": {"miou": 48.6, "precision": 61.3, "recall": 68.7}, "pseudo": {"miou": 60.1},
                             "seg": {"miou": 62.8}},
}
# Table 2's dagger: the PSA numbers the EADER authors reproduced themselves (46.8 and 58.7 are PSA's own)
REPRODUCED = {("PSA (paper)", "cam", "precision"), ("PSA (paper)", "cam", "recall"), ("PSA (paper)", "seg", "miou")}
# PSA w/ EADER's DeepLabV3+ per backbone (the paper's Table 4, val); Tables 2 and 3's 62.8 is Xception-65's.
# The baseline's 60.7 names no backbone.
PAPER_EADER_SEG = {"xception65": PAPER_TABLE2["PSA w/ EADER (paper)"]["seg"]["miou"], "resnet101": 62.5}
BACKBONES = {"xception65": "Xception-65", "resnet101": "ResNet-101"}

# EADER Table 3 (DeepLabV3+ per-class IoU on VOC val): docs/reference.md gives these classes only.
PAPER_TABLE3 = {  # class: (PSA reproduced, PSA w/ EADER)
    "bird": (76.7, 84.1), "cat": (71.7, 82.1), "dog": (72.2, 80.7), "horse": (68.2, 76.4),
    "diningtable": (40.9, 35.8), "pottedplant": (37.8, 15.4),
}
PAPER_TABLE3_MIOU = tuple(r["seg"]["miou"] for r in PAPER_TABLE2.values())  # Table 2's DeepLabV3+ column
# the paper's row labels in report.md (Table 2's EADER DeepLabV3+ number is its Xception-65 run)
PAPER_LABELS = {"PSA (paper)": "PSA (paper; † reproduced by EADER's authors)",
                "PSA w/ EADER (paper)": "PSA w/ EADER (paper; DeepLabV3+ Xception-65)"}


def paper_cell(row, stage, metric):
    """A published number as the paper prints it: with its dagger where the EADER authors reproduced it."""
    v = PAPER_TABLE2[row][stage][metric]
    return f"{v:.1f} †" if (row, stage, metric) in REPRODUCED else f"{v:.1f}"


def paper_table2_rows():
    """Table 2's published rows for report.md, labelled as the paper labels them, with the EADER DeepLabV3+
    number of each backbone on its own row."""
    rows = {PAPER_LABELS[row]: {stage: {m: paper_cell(row, stage, m) for m in ms} for stage, ms in r.items()}
            for row, r in PAPER_TABLE2.items()}
    rows["PSA w/ EADER (paper Table 4; DeepLabV3+ ResNet-101)"] = {"seg": {"miou": f"{PAPER_EADER_SEG['resnet101']:.1f}"}}
    return rows


def backbone_note(variants):
    """Which paper number each of our DeepLabV3+ rows compares with: the one of its backbone."""
    encs = sorted({r.get("meta", {}).get("seg_encoder") for r in variants.values()
                   if "seg" in r and r.get("meta", {}).get("seg_encoder")})
    if not encs:
        return ""
    parts = []
    for e in encs:
        if e in PAPER_EADER_SEG:
            parts.append(f"{e}: compare with PSA w/ EADER's {PAPER_EADER_SEG[e]:.1f} ({BACKBONES[e]})")
        else:
            known = ", ".join(f"{BACKBONES[b]} {v:.1f}" for b, v in sorted(PAPER_EADER_SEG.items()))
            parts.append(f"{e}: the paper has no DeepLabV3+ number for this backbone ({known})")
    return ("\nDeepLabV3+ backbone of our rows: " + "; ".join(parts) +
            ". The baseline's published 60.7 names no backbone.\n")


def results_path(work_dir):
    return Path(work_dir) / "results.json"


def load_results(work_dir):
    p = results_path(work_dir)
    return renamed_entries(json.loads(p.read_text())) if p.exists() else {}


def renamed_entries(res):
    """results.json as this version names its entries: older versions called the pseudo labels' entry (and
    its fingerprint) 'aff'; the next update writes the new name."""
    for entry in res.values():
        if not isinstance(entry, dict):
            continue
        for d in (entry, (entry.get("meta") or {}).get("fingerprints") or {}):
            for old, new in RENAMED.items():
                if old in d and new not in d:
                    d[new] = d.pop(old)
    return res


# an entry stands on the ones before it: when an entry is remade under another fingerprint, the later ones
# (made from its predecessor's outputs) are dropped until their own stages run again
DOWNSTREAM = {"cam": ("pseudo", "seg"), "pseudo": ("seg",)}


def update_results(work_dir, variant, key, metrics, meta=None, fingerprint=None):
    """Set results[variant][key] = metrics and rewrite report.md. Under a lock (<work>/.results.lock):
    variants that run side by side both update these files, and neither may drop the other's entry.
    fingerprint: the scoring stage's; a new one drops the variant's DOWNSTREAM entries (stale now)."""
    with results_lock(work_dir):
        res = load_results(work_dir)
        entry = res.setdefault(variant, {})
        fps = entry.setdefault("meta", {}).setdefault("fingerprints", {}) if fingerprint is not None else {}
        if fingerprint is not None and fps.get(key) != fingerprint:
            for later in DOWNSTREAM.get(key, ()):
                entry.pop(later, None)
                fps.pop(later, None)
            fps[key] = fingerprint
        entry[key] = metrics
        if meta:
            res[variant].setdefault("meta", {}).update(meta)
        write_json(results_path(work_dir), res)
        write_report(work_dir, res)
    return res


@contextmanager
def results_lock(work_dir):
    """<work>/.results.lock held for the block: variants running side by side share results.json and report.md."""
    with open(Path(work_dir) / ".results.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        yield


def refresh_report(work_dir):
    """Rewrite report.md from results.json (and the sweeps' tables), under the results lock."""
    if not Path(work_dir).is_dir():
        return
    with results_lock(work_dir):
        write_report(work_dir, load_results(work_dir))


def sweep_tables(work_dir):
    """The alpha-sweep's tables (Table 1, Table 2's CAM columns over seeds) written under <work>/sweep/, with
    their headings one level down."""
    out = []
    for path in sorted(Path(work_dir).glob("sweep/*/table[12].md")):
        text = path.read_text()
        out.append("\n" + "\n".join(("#" + line) if line.startswith("#") else line for line in text.splitlines())
                   + f"\n\n(from `{path.relative_to(work_dir)}`)\n")
    return "".join(out)


def stage_warnings(work_dir, variant):
    """[(stage, warning)] kept in the DONE.json of a variant's finished stages: failures a finite loss cannot
    show (an AffinityNet that collapsed), which a reader of the tables must see beside them."""
    out = []
    for done in sorted((Path(work_dir) / variant).glob("*/DONE.json")):
        if done.parent.name.endswith(REPLACED_SUFFIX):  # an earlier config's results, set aside by a rerun
            continue
        try:
            rec = json.loads(done.read_text())
        except (OSError, ValueError):  # a damaged record is the stage's own error to report, not the report's
            continue
        if isinstance(rec, dict):
            out += [(done.parent.name, str(w)) for w in rec.get("warnings") or []]
    return out


def warnings_section(work_dir, variants):
    found = [(v, s, w) for v in variants for s, w in stage_warnings(work_dir, v)]
    if not found:
        return ""
    return ("\n## Warnings from the stages\n\nRead the rows above with these (each stage's DONE.json and log "
            "say more):\n\n" + "".join(f"- **{v}**, {s}: {w}\n" for v, s, w in found))


def write_report(work_dir, res):
    variants = {v: r for v, r in res.items() if isinstance(r, dict)}
    parts = ["# Results\n", f"Work dir: `{Path(work_dir)}`. Percentages. Our rows come from `results.json`; "
             "paper rows are the published Pascal VOC 2012 val numbers, for reference only when our "
             "rows are not on VOC val.\n"]
    parts.append("\n## Table 2: CAM (and later stages) per variant\n\n")
    parts.append(markdown_table(variants, "table2", reference=paper_table2_rows()))
    parts.append(backbone_note(variants))
    parts.append(classes_scored(variants))
    parts.append(warnings_section(work_dir, variants))
    cam = {v: r["cam"] for v, r in variants.items() if "cam" in r}
    if cam:
        parts.append("\n## CAM details\n\n| model | threshold | best threshold (sweep) | best mIoU | images |\n"
                     "|---|---|---|---|---|\n")
        for v, c in cam.items():
            parts.append(f"| {v} | {c.get('threshold')} | {c.get('best_threshold')} | "
                         f"{c.get('best_miou', float('nan')):.1f} | {c.get('n_images')} |\n")
        parts.append(part_recall_table(cam, "CAM recall"))
        parts.append("\n## CAM per-class IoU\n\n")
        parts.append(markdown_table(cam, "per_class"))
    pseudo = {v: r["pseudo"] for v, r in variants.items() if "pseudo" in r}
    if pseudo:
        parts.append(pseudo_details(pseudo))
    parts.append(table3(variants))
    from .figure import figure_path
    fig = figure_path(work_dir)
    if fig.is_file():  # psa-eader figure (pipeline draws it)
        parts.append("\n## Qualitative: image, CAMs, pseudo labels, DeepLabV3+, ground truth\n\n"
                     f"![the first images of data.eval_list]({fig.relative_to(work_dir).as_posix()})\n")
    parts.append(sweep_tables(work_dir))
    write_text(Path(work_dir) / "report.md", "".join(parts))


def classes_scored(variants):
    """One line per variant and stage: which classes its means cover (a subset when classes are absent)."""
    lines = [f"- {v} {stage}: {classes_note(r[stage])}\n" for v, r in variants.items()
             for stage in GROUPS if isinstance(r.get(stage), dict) and "miou" in r[stage]]
    return "\nClasses in the means:\n\n" + "".join(lines) if lines else ""


def _f(v, digits=1):
    return "-" if v is None else f"{v:.{digits}f}"


def pseudo_details(pseudo):
    out = ["\n## Pseudo labels (AffinityNet + random walk) per split\n\n",
           "| model | split | mIoU | precision | recall | images |\n|---|---|---|---|---|---|\n"]
    for v, a in pseudo.items():
        for split, m in (a.get("splits") or {a.get("split"): a}).items():
            out.append(f"| {v} | {split} | {_f(m.get('miou'))} | {_f(m.get('precision'))} | "
                       f"{_f(m.get('recall'))} | {m.get('n_images')} |\n")
    out.append(part_recall_table(pseudo, "Pseudo-label recall"))
    return "".join(out)


def part_recall_table(metrics, title):
    """Demo data only: recall on the objects' strong and weak parts per variant ('' when absent)."""
    pr = {v: m["part_recall"] for v, m in metrics.items() if m.get("part_recall")}
    if not pr:
        return ""
    rows = "".join(f"| {v} | {_f(p['strong'])} | {_f(p['weak'])} |\n" for v, p in pr.items())
    return f"\n## {title} on the demo objects' parts\n\n| model | strong part | weak part |\n|---|---|---|\n{rows}"


def table3(variants):
    """EADER Table 3 layout: per class, our variants side by side (and EADER - baseline), the paper beside."""
    stage = next((k for k in ("seg", "pseudo") if any(k in r for r in variants.values())), None)
    if stage is None:
        return ""
    ours = {v: r[stage] for v, r in variants.items() if stage in r}
    names = sorted(ours, key=lambda v: (v != "baseline", v != "eader", v))
    delta = "baseline" in ours and "eader" in ours
    what = {"seg": "the segmentation network's predictions",
            "pseudo": "the pseudo labels (AffinityNet + random walk)"}[stage]
    out = ["\n## Table 3 layout: per-class IoU, baseline vs EADER\n\n",
           f"Ours: {what} on {', '.join(sorted({str(ours[v].get('split')) for v in names}))}. "
           "Paper: EADER's Table 3 is the per-class IoU of **DeepLabV3+** (stage 3, trained on the pseudo "
           "labels) on VOC 2012 val; docs/reference.md gives only the classes shown, '-' elsewhere, and the "
           "paper's mIoU row is Table 2's DeepLabV3+ column. So the paper columns are a reference for the "
           "direction of the per-class changes, not numbers to match with pseudo labels.\n\n"]
    header = ["class"] + names + (["EADER - baseline"] if delta else []) + \
        ["PSA (paper †, DeepLabV3+)", "PSA w/ EADER (paper, DeepLabV3+ Xception-65)", "paper difference"]
    out.append("| " + " | ".join(header) + " |\n|" + "---|" * len(header) + "\n")
    rows = [(c, [(ours[v].get("per_class") or {}).get(c) for v in names], PAPER_TABLE3.get(c))
            for c in SEG_CLASS_NAMES]
    rows.append(("mIoU", [ours[v].get("miou") for v in names], PAPER_TABLE3_MIOU))
    for c, vals, paper in rows:
        cells = [_f(x) for x in vals]
        if delta:
            b, e = vals[names.index("baseline")], vals[names.index("eader")]
            cells.append("-" if b is None or e is None else f"{e - b:+.1f}")
        cells += [_f(paper[0]), _f(paper[1]), f"{paper[1] - paper[0]:+.1f}"] if paper else ["-", "-", "-"]
        out.append("| " + " | ".join([c] + cells) + " |\n")
    return "".join(out)
