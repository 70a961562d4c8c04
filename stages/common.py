"""What every stage shares: work-dir layout, logging, the finished-stage record, seeding, devices.

Layout under the work dir:
    <variant>/<stage>/        a stage's artefacts, with DONE.json once it has finished
    logs/<variant>.<stage>.log
    results.json, report.md   summaries across variants
A stage is skipped when its DONE.json carries the same fingerprint (the config sections it depends on
plus its inputs' fingerprints), unless forced. An unfinished stage's folder carries PARTIAL.json with the
fingerprint its files were made under; a rerun under another fingerprint clears them. One run at a time
per variant of a work dir: the first holds <work>/.psa-eader.<variant>.lock (flock, released when the
process ends, crash included); the baseline and EADER write folders of their own, so they may run side by
side (`pipeline --jobs`), and the summaries they share are updated under a lock of their own (report.py).
Under torchrun (several ranks) only rank 0 writes the shared files (DONE.json, PARTIAL.json,
checkpoints, weights, logs) and holds the lock for all ranks; in inference stages each rank writes its
own images (my_share). A `--shard i/n` job holds its own lock, .psa-eader.<variant>.shard-i-of-n.lock.
"""
import contextlib
import datetime
import fcntl
import gc
import json
import logging
import os
import random
import re
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from psa_baseline import hardware
from psa_baseline.errors import InputError
from psa_baseline.fileio import write_json
from . import demo_module
from .config import BF16_KEYS, PROJECT_DIR, fingerprint, variant_name


_solo = []  # non-empty while this rank works alone (see solo())


def _dist():
    return not _solo and torch.distributed.is_available() and torch.distributed.is_initialized()


@contextlib.contextmanager
def solo():
    """Rank 0 alone does the block as a one-process run (rank 0 of world 1); the other ranks skip it and
    all meet after it. For the pipeline's steps that need no sharing out (demo data, scoring)."""
    lead = rank() == 0
    if lead:
        _solo.append(True)
    try:
        yield lead
    finally:
        if lead:
            _solo.pop()
        barrier()


def rank():
    return torch.distributed.get_rank() if _dist() else 0


def world_size():
    return torch.distributed.get_world_size() if _dist() else 1


def barrier():
    if _dist():
        torch.distributed.barrier()


def launched_world_size():
    """WORLD_SIZE as torchrun sets it (1 when not launched by torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


BACKEND_ENV = "PSA_EADER_DIST_BACKEND"


def dist_backend(cuda):
    """NCCL on CUDA, gloo on the CPU; PSA_EADER_DIST_BACKEND=gloo puts CUDA ranks on gloo, which lets several
    ranks share one GPU (NCCL refuses that: "Duplicate GPU detected"): slower, for checking the multi-process
    path on a one-GPU machine."""
    name = os.environ.get(BACKEND_ENV, "").strip().lower() or ("nccl" if cuda else "gloo")
    if name not in ("nccl", "gloo"):
        raise InputError(f"{BACKEND_ENV}={name!r}: use nccl or gloo (or leave it unset)")
    if name == "nccl" and not cuda:
        raise InputError(f"{BACKEND_ENV}=nccl needs --device cuda: unset it for a CPU run")
    return name


def local_gpu():
    """This rank's GPU: torchrun's LOCAL_RANK. With more ranks than GPUs only gloo can share them."""
    local, count = int(os.environ.get("LOCAL_RANK", "0")), torch.cuda.device_count()
    if local < count:
        return local
    if dist_backend(True) == "gloo":
        return local % count
    raise InputError(f"process {local} of this machine has no GPU of its own ({count} here): start at most "
                     f"{count} processes per machine (--nproc {count}), or set {BACKEND_ENV}=gloo to share "
                     "GPUs (slow; NCCL refuses two ranks on one GPU)")


def init_distributed(device_name):
    """Join torchrun's process group once per process: NCCL on CUDA (each rank on cuda:LOCAL_RANK),
    gloo on CPU (dist_backend). Nothing to do outside torchrun or with one process. NCCL with two GPUs has
    not run yet: the CI runs gloo on the CPU, a one-GPU machine ran gloo on CUDA (docs/notes/gpu.md)."""
    if launched_world_size() <= 1 or _dist():
        return
    cuda = str(device_name).startswith("cuda")
    backend = dist_backend(cuda)
    if cuda:
        if not torch.cuda.is_available():
            raise InputError(f"device '{device_name}' asked for, but CUDA is not available here: use --device cpu")
        torch.cuda.set_device(local_gpu())
    # long: the other ranks wait at a barrier while rank 0 alone scores (eval-cam on VOC val takes
    # minutes) and NCCL's default would give up after 10
    torch.distributed.init_process_group(backend, timeout=datetime.timedelta(hours=2))


def end_distributed(wait=False):
    """Leave the process group. wait (a clean end): every rank first waits for the others, because a gloo
    rank that tears the group down while another still talks to it can abort that one (SIGABRT, "terminate
    called without an active exception", seen in CI). Never wait after an error: the others may not come."""
    if _dist():
        # DDP models of the finished stages sit in reference cycles until a collection: one still alive when
        # its gloo group is destroyed aborted the process at exit now and then (2-3 in 40-60 two-process runs)
        gc.collect()
        if wait:
            torch.distributed.barrier()
        torch.distributed.destroy_process_group()


@contextlib.contextmanager
def process_group(device_name):
    """torchrun's process group (init_distributed) for the body; left with a wait (end_distributed) only if
    the body ended cleanly or with an error that every rank raised (agree)."""
    init_distributed(device_name)
    clean = False
    try:
        yield
        clean = True
    except InputError as e:
        clean = getattr(e, "on_every_rank", False)
        raise
    finally:
        end_distributed(wait=clean)


def resolve_device(name):
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"device '{name}' asked for, but CUDA is not available here: use --device cpu")
    if name == "cuda" and _dist():  # one GPU per rank: torchrun's LOCAL_RANK picks it
        return torch.device("cuda", local_gpu())
    return torch.device(name)


def agree(error):
    """Raise on every rank if rank 0 found `error` (an InputError or None): the other ranks of a run
    would otherwise wait forever for a rank 0 that has stopped."""
    if _dist():
        box = [error]
        torch.distributed.broadcast_object_list(box, src=0)
        error = box[0]
    if error is not None:
        e = InputError(str(error))
        e.on_every_rank = True  # process_group may wait for the others: they raise it too
        raise e


def from_rank0(value):
    """Rank 0's `value` on every rank (an object broadcast); `value` itself with one process."""
    if not _dist():
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def add_shard_argument(p):
    p.add_argument("--shard", metavar="I/N", help="do only shard I of N of the images (0 <= I < N): for N "
                   "separate jobs (other machines) sharing one work dir; each skips what is on disk, and "
                   "the last to finish writes DONE.json")


def finish_when_complete(st, missing, **outputs):
    """After this process's share of an inference stage: DONE.json if no output is missing any more
    (missing() -> the ids without output); otherwise another --shard job still has images to do and
    the last one to finish writes it. Returns whether the stage is done."""
    barrier()
    left = from_rank0(missing() if rank() == 0 else None)  # one answer for all ranks of this run
    if left:
        st.log.info("this share is done; %d images of other shards are still missing (e.g. %s): the last "
                    "shard to finish writes %s", len(left), left[0], st.done_file.name)
        return False
    st.finish(**outputs)
    return True


def parse_shard(text):
    """'i/n' (0 <= i < n) -> (i, n); None -> None. For separate jobs that split one stage's images."""
    if text is None:
        return None
    try:
        i, n = (int(v) for v in str(text).split("/"))
    except ValueError:
        i, n = -1, 0
    if not 0 <= i < n:
        raise InputError(f"--shard {text}: expected i/n with 0 <= i < n, e.g. 0/4")
    return i, n


def my_share(ids, shard=None):
    """This process's part of `ids`: shard i of n (separate jobs), split again over the ranks of a
    torchrun. Every id belongs to exactly one (shard, rank)."""
    i, n = shard or (0, 1)
    parts = n * world_size()
    return list(ids)[i * world_size() + rank()::parts]


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_data_path(cfg, rel, what, fix="set --voc-root or the config key to an existing path"):
    """Absolute as given; relative: under voc_root, then the project folder. `fix`: what the error tells the
    user to do when no candidate exists."""
    p = Path(rel)
    if p.is_absolute():
        cands = [p]
    else:
        cands = ([Path(cfg["voc_root"]) / p] if cfg["voc_root"] else []) + [PROJECT_DIR / p]
    for c in cands:
        if c.exists():
            return c
    raise InputError(f"{what} not found: tried {', '.join(str(c) for c in cands)}; {fix}")


def prepare_work_dir(work_dir):
    """Create the work dir and check that it takes files; otherwise an InputError with the path and the fix."""
    p = Path(work_dir)
    fix = "choose another --work-dir (or work_dir=...)"
    try:
        p.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = next((q for q in [p, *p.parents] if q.exists() and not q.is_dir()), p)
        raise InputError(f"work dir {p}: {blocker} is a file, not a folder; {fix}") from None
    except OSError as e:
        raise InputError(f"work dir {p} cannot be created ({e.strerror}); {fix}, or create it with "
                         f"write permission for this user") from None
    try:  # an existing folder may still be read-only (permissions, read-only mount)
        fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=p)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise InputError(f"work dir {p} is not writable ({e.strerror}); {fix}, or give this user write "
                         f"permission on it") from None
    return p


LOCK_NAME = ".psa-eader.lock"
_locks = {}  # resolved lock file path -> open lock file; held until this process ends


def lock_name(shard=None, variant=None):
    """The run's lock file: one per variant (its stages write only <work>/<variant>/), and a `--shard i/n`
    job has its own, so the n jobs of one stage can run together (each writes only its own images)."""
    base = LOCK_NAME[:-len(".lock")] + (f".{re.sub(r'[^A-Za-z0-9_.+=-]', '_', variant)}" if variant else "")
    return f"{base}.lock" if shard is None else f"{base}.shard-{shard[0]}-of-{shard[1]}.lock"


def lock_work_dir(work_dir, name=LOCK_NAME):
    """Hold <work_dir>/<name> (lock_name) for the rest of this process, or stop at once if another process
    holds it: two runs of one variant on one work dir would run the same stages and resume each other's
    checkpoints."""
    path = Path(work_dir) / name
    key = str(Path(work_dir).resolve() / name)
    held = _locks.get(key)
    if held is not None:  # ours already, unless the folder was removed and made anew since
        try:
            if os.fstat(held.fileno()).st_ino == os.stat(path).st_ino:
                return
        except OSError:
            pass
        held.close()
    f = open(path, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        who = f.read().strip() or "another process"
        f.close()
        raise InputError(f"work dir {work_dir} is in use by another psa-eader run ({who}; lock file {path}); "
                         f"wait until it ends, or give this run another --work-dir") from None
    except OSError as e:  # e.g. a network file system without locks
        f.close()
        raise InputError(f"work dir {work_dir}: cannot lock {path} ({e.strerror}); use a work dir on a local "
                         f"file system") from None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    f.flush()
    _locks[key] = f


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
        # demo data: its identity (seed, params, generator version), so regenerated data is not taken
        # for the data a finished stage used; None (left out) for other datasets
        ident = demo_module("data").dataset_identity(cfg["voc_root"])
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
        return self.dir.with_name(self.dir.name + ".replaced")

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
              output, weights, stop_after=None, show=("loss",), batch_size=None):
        """The training loop (psa_baseline.training.run_steps) with this stage's settings: batch size, log and
        checkpoint periods from the config `section` dict (batch_size may differ: train-adv's own), progress
        and metrics.csv on rank 0. Then, once every step has run, `weights()` (the trained state dict) saved
        as `output` and DONE.json; returns its path, or None when stopped early (stop_after, for tests)."""
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
        return self.finish_training(output, weights(), total, t0)

    def finish_training(self, filename, state_dict, steps, t0):
        """Save the trained weights (rank 0), log the time and write DONE.json; returns the weights' path."""
        if rank() == 0:
            from psa_baseline.fileio import save_torch
            save_torch(self.dir / filename, state_dict)
        self.log.info("trained in %.1f s", time.time() - t0)
        self.finish(model=filename, steps=steps, seconds=round(time.time() - t0, 1))
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


def env_info():
    return {"torch": torch.__version__, "python": sys.version.split()[0], "pid": os.getpid()}
