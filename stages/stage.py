"""The Stage: one stage run's folder, log, fingerprint, resume and DONE record; the contract every stage follows.

Layout under the work dir:
    <variant>/<stage>/        a stage's artefacts, with DONE.json once it has finished
    logs/<variant>.<stage>.log
    results.json, report.md   summaries across variants
A stage is skipped when its DONE.json carries the same fingerprint (the config sections it depends on
plus its inputs' fingerprints), unless forced. An unfinished stage's folder carries PARTIAL.json with the
fingerprint its files were made under; a rerun under another fingerprint clears them. Under torchrun (several
ranks) only rank 0 writes the shared files (DONE.json, PARTIAL.json, checkpoints, weights, logs) and holds the
work dir's lock (workdir.py) for all ranks; in inference stages each rank writes its own images (my_share).
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

from psa_baseline import hardware
from psa_baseline.errors import InputError
from psa_baseline.fileio import write_json
from .config import BF16_KEYS, fingerprint, variant_name
from .distributed import agree, barrier, rank, resolve_device, world_size
from .registry import dataset_identity
from .workdir import REPLACED_SUFFIX, lock_name, lock_work_dir, prepare_work_dir


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Stage:
    """One stage run: its folder, log, fingerprint and DONE record."""

    def __init__(self, cfg, name, depends=(), force=False, shard=None):
        self.cfg, self.name, self.force = cfg, name, force
        self.variant = variant_name(cfg)
        self.work_dir = Path(cfg["work_dir"])
        self.dir = self.folder(cfg, name)
        # config.validate refuses a variant that is not a plain name; this holds whatever builds the name
        if not self.dir.resolve().is_relative_to(self.work_dir.resolve()) or self.dir.parent.parent != self.work_dir:
            raise InputError(f"stage folder {self.dir} is not inside the work dir {self.work_dir}: give `variant` as a "
                             f"plain name (letters, digits, . _ + = -)")
        error = None
        if rank() == 0:  # one lock per run: the other ranks of a torchrun share rank 0's
            try:
                prepare_work_dir(self.work_dir)
                lock_work_dir(self.work_dir, lock_name(shard, self.variant))
            except InputError as e:
                error = e
        agree(error)  # every rank stops when rank 0 cannot have the work dir
        # a generated dataset's identity (registry.dataset_identity), so regenerated data is not taken for
        # the data a finished stage used; None (left out) for other datasets
        ident = dataset_identity(cfg["voc_root"])
        self.fp = fingerprint(name, *depends, *([ident] if ident else []))
        self.log = self._logger()
        self.log.info("machine: %s", hardware.summary())
        self.log.info("world size %d%s", world_size(), f", shard {shard[0]}/{shard[1]}" if shard else "")

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
        from psa_baseline.progress import BarSafeHandler
        sh = BarSafeHandler(sys.stderr)  # log lines never print over a progress bar
        sh.setFormatter(fmt)
        if rank() != 0:  # rank 0 tells the story; the others speak only of trouble
            sh.setLevel(logging.WARNING)
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

    @property
    def partial_file(self):
        return self.dir / "PARTIAL.json"

    @property
    def replaced_dir(self):
        """Where finished results made under another config wait while this run redoes the stage: deleted
        when it finishes, restored when a later run asks for them again (so a run that fails on its inputs
        never costs the results it would have replaced)."""
        return self.dir.with_name(self.dir.name + REPLACED_SUFFIX)

    def is_done(self):
        """True when finished with the same fingerprint. A stale or forced run sets the finished results
        aside (replaced_dir) rather than deleting them; partial work (files of an interrupted run, a
        checkpoint) made under another fingerprint is cleared. The device is checked before anything moves."""
        if rank() == 0 and not self.force:
            self._restore_replaced()
        barrier()  # every rank reads the record after rank 0 may have restored it
        rec = self.record()
        if rec and rec.get("fingerprint") == self.fp and not self.force:
            self.log.info("already done (%s); skipping. Use --force to redo.", self.done_file)
            return True
        resolve_device(str(self.cfg["device"]))  # an unusable device stops here, with nothing touched
        if rank() == 0:
            if rec:
                why = "forced" if self.force else "config or inputs changed"
                shutil.rmtree(self.replaced_dir, ignore_errors=True)
                os.replace(self.dir, self.replaced_dir)
                self.log.info("%s: the finished results in %s are set aside as %s until this run finishes "
                              "(then deleted; a rerun under their config restores them)", why, self.dir,
                              self.replaced_dir.name)
            elif self.force and self.dir.exists():
                self.log.info("forced: clearing the unfinished %s", self.dir)
                shutil.rmtree(self.dir, ignore_errors=True)
            elif self.dir.exists():
                self._keep_partial_if_same_fingerprint()
            self.dir.mkdir(parents=True, exist_ok=True)
            if not self.partial_file.exists():
                write_json(self.partial_file, {"stage": self.name, "fingerprint": self.fp,
                                               "started": time.strftime("%Y-%m-%d %H:%M:%S")})
        barrier()
        return False

    def _restore_replaced(self):
        """Bring back results set aside by a run under another config that did not finish, when this run
        has their fingerprint (the user went back to the config that made them)."""
        try:
            old = json.loads((self.replaced_dir / "DONE.json").read_text()).get("fingerprint")
        except (OSError, ValueError, AttributeError):
            return
        rec = self.record()
        if old != self.fp or (rec and rec.get("fingerprint") == self.fp):
            return
        self.log.info("restoring the finished results of this config from %s (a run under another config "
                      "set them aside and did not finish)", self.replaced_dir)
        shutil.rmtree(self.dir, ignore_errors=True)
        os.replace(self.replaced_dir, self.dir)

    def _keep_partial_if_same_fingerprint(self):
        if not any(self.dir.iterdir()):
            return
        try:
            made_under = json.loads(self.partial_file.read_text()).get("fingerprint")
        except (OSError, ValueError, AttributeError):
            made_under = None
        if made_under == self.fp:
            self.log.info("continuing the partial work in %s (same fingerprint %s)", self.dir, self.fp)
            return
        self.log.info("partial work in %s was made under another config or inputs (fingerprint %s, now %s); "
                      "clearing it", self.dir, made_under or "unknown", self.fp)
        shutil.rmtree(self.dir, ignore_errors=True)

    def train(self, loader, sampler, dataset, step_fn, step, total, steps_per_epoch, section, checkpoint, lr,
              output, weights, stop_after=None, show=("loss",), batch_size=None, health=None):
        """The training loop (psa_baseline.training.run_steps) with this stage's settings: batch size, log and
        checkpoint periods from the config `section` dict (batch_size may differ: train-adv's own), progress
        and metrics.csv on rank 0. Then, once every step has run, `weights()` (the trained state dict) saved
        as `output` and DONE.json; returns its path, or None when stopped early (stop_after, for tests).
        health(last metrics row) -> a warning or None: a failure the loss cannot show as non-finite (an
        AffinityNet that collapsed); the warning is logged and kept in DONE.json's "warnings"."""
        from psa_baseline.training import run_steps
        t0 = time.time()
        lead = rank() == 0
        step = run_steps(loader, sampler, dataset, step_fn, step=step, total=total, steps_per_epoch=steps_per_epoch,
                         batch_size=batch_size or section["batch_size"], checkpoint=checkpoint, log=self.log,
                         log_every=section["log_every"], checkpoint_every=section["checkpoint_every"], lr=lr,
                         desc=f"{self.name.replace('_', '-')}[{self.variant}]", stop_after=stop_after, show=show,
                         progress=lead, metrics=self.dir / "metrics.csv" if lead else None)
        if step < total:
            return None
        warnings = []
        if health is not None and lead:
            from .curves import read_curves
            path = self.dir / "metrics.csv"
            curves = read_curves(path) if path.is_file() else None
            msg = health({k: float(v[-1]) for k, v in curves.items()}) if curves else None
            if msg:
                self.log.warning(msg)
                warnings.append(msg)
        return self.finish_training(output, weights(), total, t0, **({"warnings": warnings} if warnings else {}))

    def finish_training(self, filename, state_dict, steps, t0, **extra):
        """Save the trained weights (rank 0), log the time and write DONE.json (with `extra`); returns the
        weights' path."""
        if rank() == 0:
            from psa_baseline.fileio import save_torch
            save_torch(self.dir / filename, state_dict)
        self.log.info("trained in %.1f s", time.time() - t0)
        self.finish(model=filename, steps=steps, seconds=round(time.time() - t0, 1), **extra)
        return self.dir / filename

    def finish(self, **outputs):
        """DONE.json, by rank 0; every rank of a run calls it and waits there, so that the next stage,
        on any rank, finds the record."""
        if rank() != 0:
            barrier()
            return
        rec = {"stage": self.name, "variant": self.variant, "fingerprint": self.fp,
               "finished": time.strftime("%Y-%m-%d %H:%M:%S"), **outputs,
               # what ran: the resolved bf16 switches (in the fingerprint too) and the machine that chose them
               "bf16": {k: self.cfg[k.split(".")[0]][k.split(".")[1]] for k in BF16_KEYS},
               "machine": hardware.describe()}
        write_json(self.done_file, rec)
        self.partial_file.unlink(missing_ok=True)
        shutil.rmtree(self.replaced_dir, ignore_errors=True)  # the results this run replaced
        self.log.info("finished; record in %s", self.done_file)
        barrier()


def resumable_training(st, net, opt, total, extra=None, sync_bn=False):
    """Resume `net` and `opt` from <stage dir>/checkpoint.pth if it exists, and wrap net for DDP (with
    SyncBatchNorm when sync_bn and more than one process).

    Returns (step, checkpoint dict or None, model, checkpoint): checkpoint(step) saves the model, the
    optimiser, extra() (e.g. {"eader": ...}) and the step, on rank 0 only.
    """
    from psa_baseline.training import ddp_wrap, resume, save_checkpoint, unwrap
    path = st.dir / "checkpoint.pth"
    step, ck = resume(path, net, opt, st.log, total, fingerprint=st.fp)
    model = ddp_wrap(net, sync_bn)

    def checkpoint(step):
        if rank() == 0:
            save_checkpoint(path, model=unwrap(model).state_dict(), optimizer=opt.state_dict(),
                            **(extra() if extra else {}), step=step, fingerprint=st.fp)
    return step, ck, model, checkpoint


def upstream_fp(cfg, name):
    """Fingerprint recorded by a finished upstream stage, or an error saying to run it first."""
    done = Stage.folder(cfg, name) / "DONE.json"
    if not done.exists():
        raise InputError(f"stage '{name}' has not finished for variant '{variant_name(cfg)}' "
                         f"(no {done}); run `psa-eader {name.replace('_', '-')}` first")
    return json.loads(done.read_text())["fingerprint"]
