"""The arguments every run-diagnosing script shares (which run, its data, the overrides it was made with) and
the CPU config they build: one place, so the scripts read a run the same way."""
import argparse

import torch

from stages.config import load_config


def run_parser(description, set_help):
    """An ArgumentParser with --config, --work-dir, --voc-root, --variant and --set (repeatable overrides)."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="demo")
    p.add_argument("--work-dir", required=True, help="the run's work dir (holding <variant>/<stage>)")
    p.add_argument("--voc-root", required=True)
    p.add_argument("--variant", default="baseline")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=set_help)
    return p


def run_config(args, extra=()):
    """The run's config on the CPU, one thread (diagnostics run beside training jobs); `extra`: (key, value)
    pairs applied before the --set overrides."""
    torch.set_num_threads(1)
    return load_config(args.config, [("voc_root", args.voc_root), ("work_dir", args.work_dir), ("device", "cpu"),
                                     *extra] + list(args.overrides))
