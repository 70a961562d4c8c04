"""The orchestrator behind ./run_pipeline.sh: the stages in order, for each variant.

No arguments: the CPU demo (demo config: builds the demo dataset, then the CAM stage, the affinity stage
(make-crf, train-aff, make-pseudo, eval-seg) and DeepLabV3+ on the pseudo labels (train-seg, make-seg,
eval-seg of its predictions)). `--until cam` stops after the CAM stage, `--until pseudo` after the pseudo labels.
With --config voc --voc-root DIR --device cuda: the paper's setting. Every stage is skipped when it has
already finished with the same config, so a rerun resumes where the last one stopped.
"""
import time
from pathlib import Path

from psa_baseline.errors import InputError

from . import demo_module
from .distributed import launched_world_size, rank, solo
from .registry import DEFAULT_UNTIL, GROUPS, group_name, steps
from .report import results_path


def add_arguments(p):
    p.add_argument("--eader", choices=("off", "on", "both"), default=None,
                   help="baseline PSA (off), PSA with EADER (on), or both with the same seed and data (default: "
                        "both, or what an eader.enabled=true/false override says; the two must not disagree)")
    p.add_argument("--until", type=group_name, choices=GROUPS, default=DEFAULT_UNTIL,
                   help="last stage group to run: cam (train-cam .. eval-cam), pseudo (also make-crf, "
                        "train-aff, make-pseudo, eval-seg) or seg (also DeepLabV3+: train-seg, "
                        "make-seg, eval-seg of its predictions; default: the whole pipeline)")
    p.add_argument("--jobs", type=int, default=1,
                   help="with --eader both: 2 runs the two variants side by side, each in a process of its own "
                        "with half the threads (a CPU option: faster, but a variant's numbers then come from "
                        "fewer threads than when it runs alone; stages/jobs.py); default 1, one after the other")
    p.add_argument("--check", action="store_true",
                   help="only the pre-flight check (psa-eader check): print the plan, exit 2 listing every problem")
    p.add_argument("--skip-check", action="store_true",
                   help="start the stages without the pre-flight check that otherwise runs first (it reads every "
                        "image header and weights file once, and stops before any stage on any problem)")


def variants_asked(flag, overrides):
    """--eader's value: the flag, else an eader.enabled override's, else both. A flag and an override that
    disagree are refused (the flag used to overwrite the key without a word)."""
    from .config import parse_override
    key = None
    for o in overrides:
        node = parse_override(o)
        if isinstance(node.get("eader"), dict) and "enabled" in node["eader"]:
            key = node["eader"]["enabled"]
    if key is not None and not isinstance(key, bool):
        raise InputError(f"eader.enabled={key!r}: expected true or false")
    from_key = None if key is None else ("on" if key else "off")
    if flag is not None and from_key is not None and flag != from_key:
        raise InputError(f"--eader {flag} and eader.enabled={str(key).lower()} disagree: give one of them "
                         f"(--eader off|on|both chooses the variants; eader.enabled=true is --eader on)")
    return flag or from_key or "both"


def variant_configs(cfg, eader):
    from .config import merge
    return [merge(cfg, {"eader": {"enabled": on}}) for on in {"off": [False], "on": [True], "both": [False, True]}[eader]]


def prepare(cfg, vcfgs, until, log=print):
    """Before any stage runs: every planned stage's config check and weights keys (errors of late stages
    or of the EADER variant show now, not hours later), then the demo's pre-trained weights."""
    from .builders import require_weights
    for step in steps(until):
        step.check_config(cfg)
    for vcfg in vcfgs:  # e.g. a null seg_train.encoder_weights stops now, not after the baseline
        for step in steps(until):
            require_weights(vcfg, step.stage)
    pretrain = demo_module("pretrain")
    if pretrain.named_in(cfg):  # the demo's stand-in for ImageNet: verified, made once if absent
        with solo() as lead:
            if lead:
                pretrain.ensure(say=log)


def run_variant(vcfg, until=DEFAULT_UNTIL, force=False, log=print):
    """Every stage up to `until` for one variant's config."""
    for step in steps(until):
        if not step.runs_for(vcfg):  # e.g. train-adv: EADER only, optional
            continue
        log(f"== {step.stage} [{'eader' if vcfg['eader']['enabled'] else 'baseline'}] ==")
        if step.spec.alone:  # under torchrun: rank 0 scores alone; training and inference share the work
            with solo() as lead:
                if lead:
                    step.run(vcfg, force=force)
        else:
            step.run(vcfg, force=force)


def teller(summary=None):
    """print, and with `summary` (a file) also append there: the pipeline's own story (stage headers, check,
    tables, wall time) is kept beside the stages' logs."""
    def say(m):
        print(m, flush=True)
        if summary is not None:
            with open(summary, "a") as f:
                f.write(f"{m}\n")
    return say


def _run_variant_printing(vcfg, until, force, summary=None):  # top-level, for a process pool
    run_variant(vcfg, until, force, log=teller(summary))


def run_variants(cfg, eader="off", force=False, log=print, until=DEFAULT_UNTIL, jobs=1, summary=None):
    """The stages of each variant: one after the other, or (jobs > 1, several variants) side by side, those
    processes telling their story to stdout and `summary`."""
    vcfgs = variant_configs(cfg, eader)
    prepare(cfg, vcfgs, until, log)
    if jobs > 1 and len(vcfgs) > 1:
        from .jobs import run_side_by_side, threads_each
        log(f"== baseline and EADER side by side: {len(vcfgs)} processes, {threads_each(jobs)} thread(s) each "
            f"(--jobs 1 runs them one after the other) ==")
        run_side_by_side(_run_variant_printing, [(v, until, force, summary) for v in vcfgs], jobs)
        return
    for vcfg in vcfgs:
        run_variant(vcfg, until, force, log)


def main(args):
    from .cli import config_from_args
    from . import demo_data
    if args.config is None:
        args.config = "demo"
    cfg = config_from_args(args)
    args.eader = variants_asked(args.eader, args.set)
    jobs = args.jobs
    if jobs < 1:
        raise InputError(f"--jobs must be at least 1, got {jobs}")
    if jobs > 1 and launched_world_size() > 1:
        raise InputError("--jobs runs variants in processes of their own; under torchrun (--nproc) the ranks "
                         "already share each stage: leave --jobs out")
    if args.check:
        from .check import run_check
        return run_check(cfg, args.eader, args.until, out=lambda m: print(m, flush=True), jobs=jobs)
    t0 = time.time()
    lead = rank() == 0
    summary = None
    if lead:  # the story below is also kept in <work_dir>/logs/pipeline.log, one section per invocation
        summary = Path(cfg["work_dir"]) / "logs" / "pipeline.log"
        summary.parent.mkdir(parents=True, exist_ok=True)
    say = teller(summary) if lead else (lambda m: None)
    say(f"== psa-eader pipeline {time.strftime('%Y-%m-%d %H:%M:%S')}: config {cfg['name']}, seed {cfg['seed']}, "
        f"--eader {args.eader}, --until {args.until} ==")
    if cfg["name"] == "demo":
        with solo() as lead_:  # one rank writes the data; the others wait for it
            if lead_:
                say("== demo-data ==")
                demo_data.ensure(cfg, log=say)
    if not args.skip_check:  # every problem now, before hours of earlier stages (each rank: all stop alike)
        from .check import run_check
        say("== pre-flight check (psa-eader check; --skip-check skips it) ==")
        try:
            run_check(cfg, args.eader, args.until, out=say, jobs=jobs)
        except InputError as e:
            say(f"error: {e}")
            raise
    run_variants(cfg, args.eader, force=args.force, log=say, until=args.until, jobs=jobs, summary=summary)
    if not lead:
        return
    from . import figure
    from .report import refresh_report
    try:  # the same first images of data.eval_list for every variant (report.md shows the figure)
        fig = figure.draw(cfg)
        if fig:
            say(f"qualitative figure: {fig}")
            refresh_report(cfg["work_dir"])
    except InputError as e:  # a figure never fails a finished pipeline
        say(f"note: no qualitative figure ({e})")
    report = Path(cfg["work_dir"]) / "report.md"
    say(report.read_text())
    record = getattr(args, "record_dir", None)
    say(f"results: {results_path(cfg['work_dir'])}\nreport:  {report}\n"
        + (f"run record (config, command, versions): {record}\n" if record else "")
        + f"this summary: {summary}\nwall time {time.time() - t0:.0f} s")
