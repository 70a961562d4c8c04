"""What every stage shares: work-dir layout, logging, the finished-stage record, seeding, devices.

Layout under the work dir:
    <variant>/<stage>/        a stage's artefacts, with DONE.json once it has finished
    logs/<variant>.<stage>.log
    results.json, report.md   summaries across variants
A stage is skipped when its DONE.json carries the same fingerprint (the config sections it depends on
plus its inputs' fingerprints), unless forced. Only rank 0 writes.
"""
import json
import logging
import os
import random
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from psa_baseline.errors import InputError
from psa_baseline.fileio import write_json
from demo.data import dataset_identity
from .config import PROJECT_DIR, fingerprint, variant_name


def _dist():
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def rank():
    return torch.distributed.get_rank() if _dist() else 0


def world_size():
    return torch.distributed.get_world_size() if _dist() else 1


def barrier():
    if _dist():
        torch.distributed.barrier()


def resolve_device(name):
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"device '{name}' asked for, but CUDA is not available here: use --device cpu")
    return torch.device(name)


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_data_path(cfg, rel, what):
    """Absolute as given; relative: under voc_root, then the project folder."""
    p = Path(rel)
    if p.is_absolute():
        cands = [p]
    else:
        cands = ([Path(cfg["voc_root"]) / p] if cfg["voc_root"] else []) + [PROJECT_DIR / p]
    for c in cands:
        if c.exists():
            return c
    raise InputError(f"{what} not found: tried {', '.join(str(c) for c in cands)}; "
                     f"set --voc-root or the config key to an existing path")


class Stage:
    """One stage run: its folder, log, fingerprint and DONE record."""

    def __init__(self, cfg, name, depends=(), force=False):
        self.cfg, self.name, self.force = cfg, name, force
        self.variant = variant_name(cfg)
        self.work_dir = Path(cfg["work_dir"])
        self.dir = self.folder(cfg, name)
        # demo data: its identity (seed, params, generator version), so regenerated data is not taken
        # for the data a finished stage used; None (left out) for other datasets
        ident = dataset_identity(cfg["voc_root"])
        self.fp = fingerprint(name, *depends, *([ident] if ident else []))
        self.log = self._logger()

    @staticmethod
    def folder(cfg, name):
        """<work>/<variant>/<stage>: where stage `name` of this config's variant writes."""
        return Path(cfg["work_dir"]) / variant_name(cfg) / name

    def _logger(self):
        log = logging.getLogger(f"psa.{self.variant}.{self.name}")
        log.setLevel(logging.INFO)
        log.propagate = False
        for h in list(log.handlers):
            log.removeHandler(h)
            h.close()
        fmt = logging.Formatter("%(asctime)s %(levelname)s [%(name)s] %(message)s", "%H:%M:%S")
        if rank() == 0:
            log_dir = self.work_dir / "logs"
            log_dir.mkdir(parents=True, exist_ok=True)
            fh = logging.FileHandler(log_dir / f"{self.variant}.{self.name}.log")
            fh.setFormatter(fmt)
            log.addHandler(fh)
        sh = logging.StreamHandler(sys.stderr)
        sh.setFormatter(fmt)
        log.addHandler(sh)
        for lib in ("psa_baseline", "psa_eader"):  # library loggers go to the same places
            lg = logging.getLogger(lib)
            lg.handlers = list(log.handlers)
            lg.setLevel(logging.INFO)
            lg.propagate = False
        return log

    @property
    def done_file(self):
        return self.dir / "DONE.json"

    def record(self):
        if self.done_file.exists():
            try:
                return json.loads(self.done_file.read_text())
            except (OSError, ValueError):
                return None
        return None

    def is_done(self):
        """True when finished with the same fingerprint; a stale or forced run clears the folder."""
        rec = self.record()
        if rec and rec.get("fingerprint") == self.fp and not self.force:
            self.log.info("already done (%s); skipping. Use --force to redo.", self.done_file)
            return True
        if rec or (self.force and self.dir.exists()):
            why = "forced" if self.force else "config or inputs changed"
            self.log.info("%s: clearing %s", why, self.dir)
            shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True, exist_ok=True)
        return False

    def finish_training(self, filename, state_dict, steps, t0):
        """Save the trained weights (rank 0), log the time and write DONE.json; returns the weights' path."""
        if rank() == 0:
            from psa_baseline.fileio import save_torch
            save_torch(self.dir / filename, state_dict)
        self.log.info("trained in %.1f s", time.time() - t0)
        self.finish(model=filename, steps=steps, seconds=round(time.time() - t0, 1))
        return self.dir / filename

    def finish(self, **outputs):
        if rank() != 0:
            return
        rec = {"stage": self.name, "variant": self.variant, "fingerprint": self.fp,
               "finished": time.strftime("%Y-%m-%d %H:%M:%S"), **outputs}
        write_json(self.done_file, rec)
        self.log.info("finished; record in %s", self.done_file)


def resumable_training(st, device, net, opt, total, extra=None):
    """Resume `net` and `opt` from <stage dir>/checkpoint.pth if it exists, and wrap net for DDP.

    Returns (step, checkpoint dict or None, model, checkpoint): checkpoint(step) saves the model, the
    optimiser, extra() (e.g. {"eader": ...}) and the step, on rank 0 only.
    """
    from psa_baseline.training import ddp_wrap, resume, save_checkpoint, unwrap
    path = st.dir / "checkpoint.pth"
    step, ck = resume(path, device, net, opt, st.log, total)
    model = ddp_wrap(net)

    def checkpoint(step):
        if rank() == 0:
            save_checkpoint(path, model=unwrap(model).state_dict(), optimizer=opt.state_dict(),
                            **(extra() if extra else {}), step=step)
    return step, ck, model, checkpoint


def upstream_fp(cfg, name):
    """Fingerprint recorded by a finished upstream stage, or an error saying to run it first."""
    done = Stage.folder(cfg, name) / "DONE.json"
    if not done.exists():
        raise InputError(f"stage '{name}' has not finished for variant '{variant_name(cfg)}' "
                         f"(no {done}); run `psa-eader {name.replace('_', '-')}` first")
    return json.loads(done.read_text())["fingerprint"]


def env_info():
    return {"torch": torch.__version__, "python": sys.version.split()[0], "pid": os.getpid()}
