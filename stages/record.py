"""What each run was: the merged config, the command line and overrides, the code and library versions.

Every subcommand that works in a work dir writes <work_dir>/logs/runs/<UTC time>-<subcommand>-<pid>/ with
- config.yaml: the merged config after the YAML chain and every override, bf16 `auto` resolved;
- command.yaml: argv, the config named, the overrides as given, the seed and the working directory;
- versions.yaml: psa-eader's version and git commit (with a dirty flag), Python, the libraries the stages
  use, and the machine (CPU, precision capability, GPUs).
A finished run can be reproduced from these files alone: `psa-eader <stage> --config config.yaml`.
"""
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import yaml

from psa_baseline.fileio import write_text

# distribution names whose versions decide what the stages compute
LIBRARIES = ("torch", "torchvision", "numpy", "opencv-python-headless", "opencv-python", "pydensecrf2", "scipy",
             "imageio", "segmentation-models-pytorch", "timm", "Pillow", "PyYAML")
REPO = Path(__file__).resolve().parent.parent


def dump_config(cfg):
    """The config as YAML, in the schema's key order."""
    return yaml.safe_dump(cfg, sort_keys=False, default_flow_style=None, width=120)


def git_state(root=REPO):
    """{'commit', 'describe', 'dirty'} of the source tree when it is a git checkout, else None."""
    if not (Path(root) / ".git").exists():  # an installed wheel inside some other checkout (a venv in it) is not it
        return None
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10)
        if commit.returncode != 0:
            return None
        status = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10)
        describe = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty", "--tags"],
                                  capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit.stdout.strip(), "describe": describe.stdout.strip() or None,
            "dirty": bool(status.stdout.strip())}


def versions():
    from importlib.metadata import PackageNotFoundError, version
    libs = {}
    for name in LIBRARIES:
        try:
            libs[name] = version(name)
        except PackageNotFoundError:
            continue
    try:
        own = version("psa-eader")
    except PackageNotFoundError:
        own = None
    from psa_baseline.hardware import summary
    return {"psa-eader": own, "git": git_state(), "python": platform.python_version(),
            "platform": platform.platform(), "libraries": libs, "machine": summary()}


def write_run_record(cfg, stage, args, argv):
    """Write this invocation's record under cfg's work dir; returns its folder."""
    from .workdir import prepare_work_dir
    prepare_work_dir(cfg["work_dir"])  # a work dir that cannot be is named with its fix, as the stages do
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    d = Path(cfg["work_dir"]) / "logs" / "runs" / f"{stamp}-{stage}-{os.getpid()}"
    d.mkdir(parents=True, exist_ok=True)
    command = {"argv": ["psa-eader"] + list(argv), "subcommand": stage, "config": getattr(args, "config", None),
               "overrides": [str(o) for o in getattr(args, "set", [])],
               "options": {k: getattr(args, k) for k in ("voc_root", "work_dir", "device", "seed", "force", "eader",
                                                          "until", "jobs") if getattr(args, k, None) is not None},
               "cwd": os.getcwd(), "executable": sys.executable}
    write_text(d / "command.yaml", yaml.safe_dump(command, sort_keys=False))
    write_text(d / "versions.yaml", yaml.safe_dump(versions(), sort_keys=False))
    write_text(d / "config.yaml", dump_config(cfg))  # last: its presence says the record is whole
    return d
