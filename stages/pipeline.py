"""The orchestrator behind ./run_pipeline.sh: the stages in order, for each variant.

No arguments: the CPU demo (demo config: builds the demo dataset, then the CAM stage).
With --config voc --voc-root DIR --device cuda: the paper's setting. Every stage is skipped when it has
already finished with the same config, so a rerun resumes where the last one stopped.
"""
import time
from pathlib import Path

from . import eval_cam, make_cam, train_cam
from .report import results_path

CAM_STAGES = (("train-cam", train_cam), ("make-cam", make_cam), ("eval-cam", eval_cam))


def add_arguments(p):
    p.add_argument("--eader", choices=("off", "on", "both"), default="off",
                   help="baseline PSA (off), PSA with EADER (on), or both with the same seed and data")


def run_variants(cfg, eader="off", force=False, log=print):
    from .config import merge
    variants = {"off": [False], "on": [True], "both": [False, True]}[eader]
    for enabled in variants:
        vcfg = merge(cfg, {"eader": {"enabled": enabled}})
        for name, mod in CAM_STAGES:
            log(f"== {name} [{'eader' if enabled else 'baseline'}] ==")
            mod.run(vcfg, force=force)


def main(args):
    from .cli import config_from_args
    from . import demo_data
    if args.config is None:
        args.config = "demo"
    cfg = config_from_args(args)
    t0 = time.time()
    if cfg["name"] == "demo":
        print("== demo-data ==", flush=True)
        demo_data.run(cfg)
    run_variants(cfg, args.eader, force=args.force, log=lambda m: print(m, flush=True))
    report = Path(cfg["work_dir"]) / "report.md"
    print(report.read_text())
    print(f"results: {results_path(cfg['work_dir'])}\nreport:  {report}\n"
          f"wall time {time.time() - t0:.0f} s")
