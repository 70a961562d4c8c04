"""`psa-eader <stage>`: one subcommand per pipeline stage, with the common options."""
import argparse
import sys

from psa_baseline.errors import InputError

from .registry import SPECS


def default_config(stage):
    """The CPU demo for the subcommands that make or run it, else voc (the paper's setting)."""
    return "demo" if stage in SPECS and SPECS[stage].demo_default else "voc"


def common_options(p, stage=None):
    what = "the CPU demo" if default_config(stage) == "demo" else "the paper's setting"
    p.add_argument("--config", default=None, help="config name in configs/ (voc, demo, ...) or a YAML file "
                   f"(default: {default_config(stage)}, {what})")
    p.add_argument("--voc-root", help="VOC 2012 folder holding JPEGImages, SegmentationClass[Aug]")
    p.add_argument("--work-dir", help="where artefacts, logs and results go")
    p.add_argument("--device", help="cpu or cuda (cuda:N)")
    p.add_argument("--seed", type=int, help="random seed")
    p.add_argument("--force", action="store_true", help="redo the stage even if it finished before")
    p.add_argument("set", nargs="*", metavar="key=value",
                   help="dotted config overrides, e.g. cam_train.epochs=2 eader.enabled=true")


def config_from_args(args):
    from .config import load_config
    over = list(args.set)
    for key, opt in (("voc_root", "voc_root"), ("work_dir", "work_dir"), ("device", "device"), ("seed", "seed")):
        v = getattr(args, opt, None)
        if v is not None:
            over.append((key, v))
    return load_config(args.config or default_config(getattr(args, "stage", None)), over)


def module_doc(mod):
    """A stage module's docstring read from its source: importing the module would pull in torch and the
    other heavy libraries, seconds before `psa-eader --help` could answer."""
    import ast
    from pathlib import Path
    return ast.get_docstring(ast.parse((Path(__file__).parent / f"{mod}.py").read_text())) or ""


def build_parser(full=None):
    """The parser; `full`: the subcommands given their own options (each imports its module), default all.
    The others get their one-line help only."""
    parser = argparse.ArgumentParser(prog="psa-eader", description="PSA + EADER weakly-supervised "
                                     "semantic segmentation pipeline; one subcommand per stage.")
    from importlib.metadata import PackageNotFoundError, version
    try:
        ver = version("psa-eader")
    except PackageNotFoundError:  # run from a source tree that was never installed
        ver = "unknown (not installed)"
    parser.add_argument("--version", action="version", version=f"psa-eader {ver}")
    sub = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
    parser.stage_parsers = {}
    for name, spec in SPECS.items():
        doc = module_doc(spec.module)
        # help strings are %-formatted by argparse: a literal % (compare's "95%") must be doubled
        p = sub.add_parser(name, help=doc.splitlines()[0].replace("%", "%%"), description=doc,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        if full is not None and name not in full:
            continue
        common_options(p, name)
        if spec.options:
            spec.load().add_arguments(p)
        parser.stage_parsers[name] = p
    return parser


def parse_args(argv):
    """The stage's own parser with intermixed parsing, so key=value overrides may stand anywhere on
    the line (`pipeline a=1 --eader off b=2`); plain parsing only for help and unknown stages."""
    parser = build_parser(full=argv[:1])  # only the subcommand asked for imports its module
    if argv and argv[0] in parser.stage_parsers:
        args = parser.stage_parsers[argv[0]].parse_intermixed_args(argv[1:])
        args.stage = argv[0]
        return args
    return parser.parse_args(argv)


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's or `kill`'s stop), handled as Ctrl-C is: the same unwinding and resume hint."""


def _on_sigterm(signum, frame):
    raise Terminated()


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    from .distributed import launched_world_size, process_group
    import signal
    import threading
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        # under torchrun: join its process group first (the config names the device: NCCL or gloo)
        device = config_from_args(args)["device"] if launched_world_size() > 1 else "cpu"
        with process_group(device):
            spec = SPECS[args.stage]
            m = spec.load()
            if spec.recorded and not getattr(args, "check", False):
                from .distributed import rank
                from .record import write_run_record
                cfg = config_from_args(args)
                if rank() == 0 and cfg["work_dir"]:
                    args.record_dir = write_run_record(cfg, args.stage, args, argv)
            m.main(args) if spec.entry == "main" else m.run(config_from_args(args), force=args.force)
    except InputError as e:
        print(f"psa-eader {args.stage}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        what = "terminated (SIGTERM)" if isinstance(e, Terminated) else "interrupted"
        print(f"psa-eader {args.stage}: {what}; rerun the same command to resume", file=sys.stderr)
        return 143 if isinstance(e, Terminated) else 130
    except OSError as e:  # a full disk, a vanished or read-only folder: what and where, not a traceback
        import errno
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        fix = ("free space on that disk, or pass --work-dir on another one; then rerun the same command to resume"
               if e.errno in (errno.ENOSPC, errno.EDQUOT) else
               "check that path and its permissions (or pass --work-dir elsewhere); then rerun the same command")
        print(f"psa-eader {args.stage}: error: {e.strerror or e}{where}: {fix}", file=sys.stderr)
        return 2
    return 0


def stage_main(name):
    """Entry for `python -m stages.<module>`."""
    sys.exit(main([name] + sys.argv[1:]))


if __name__ == "__main__":
    sys.exit(main())
