"""Training-loop pieces shared by the CAM and affinity stages: a resumable sampler and checkpoints."""
import contextlib
import pickle
import random
import time
from pathlib import Path

import numpy as np
import torch

from .errors import InputError
from .fileio import save_torch
from .hardware import resolve_bf16


class EpochIndex(int):
    """A dataset index that carries its epoch (EpochSampler yields these). Persistent loader workers keep
    the copy of the dataset they started with, so the epoch that seeds an item's augmentation must travel
    with the index (EpochSeededDataset.item_rng reads it), not sit on the main process's dataset."""

    def __new__(cls, index, epoch):
        obj = super().__new__(cls, index)
        obj.epoch = int(epoch)
        return obj

    def __reduce__(self):  # to the workers as (index, epoch)
        return EpochIndex, (int(self), self.epoch)


class EpochSampler(torch.utils.data.Sampler):
    """Shuffled order fixed by (seed, epoch), sharded over ranks, able to start mid-epoch.

    The same (seed, epoch) always gives the same order, so a run resumed at batch k of an epoch sees
    exactly the batches an uninterrupted run would have seen. With world > 1 it plays the role of
    DistributedSampler (each rank takes every world-th index; the tail is dropped to keep ranks equal).
    """

    def __init__(self, n, seed=0, shuffle=True, rank=0, world=1):
        self.n, self.seed, self.shuffle, self.rank, self.world = n, seed, shuffle, rank, world
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch, start=0):
        """start: number of samples of this rank's share to skip (resume)."""
        self.epoch, self.start = epoch, start

    def _order(self):
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        per_rank = self.n // self.world
        return order[self.rank:per_rank * self.world:self.world]

    def __iter__(self):
        return (EpochIndex(i, self.epoch) for i in self._order()[self.start:])

    def __len__(self):
        return self.n // self.world - self.start


def rng_state():
    """Every RNG's state in types torch.load(weights_only=True) reads back: tensors, numbers, strings,
    tuples; numpy's key array as a tensor, so a checkpoint never needs arbitrary unpickling."""
    kind, key, pos, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "numpy": (kind, torch.from_numpy(key.astype(np.int64)), int(pos), int(has_gauss), float(gauss)),
            "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state):
    torch.set_rng_state(state["torch"])
    kind, key, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(key, dtype=np.int64).astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        # one state per GPU visible at the save; a resume may see fewer (CUDA_VISIBLE_DEVICES, another machine)
        for i, s in enumerate(state["cuda"][:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(s, i)


def save_checkpoint(path, **parts):
    """Atomic: a crash while saving leaves the previous checkpoint intact."""
    save_torch(path, {**parts, "rng": rng_state()})


def load_checkpoint(path, map_location="cpu"):
    """A checkpoint written by save_checkpoint, read with torch's restricted unpickler (weights_only): a
    file that needs anything else (code, foreign objects) is refused, never run. A torn or foreign file
    is an InputError naming it and the fix."""
    fix = "delete it to restart the stage from step 0, or rerun with --force"
    try:
        ck = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise InputError(f"checkpoint {path} holds objects other than tensors, numbers and strings (made by an "
                         f"older psa-eader, or not by psa-eader at all), so it is not loaded: {fix} "
                         f"[{str(e).splitlines()[0][:200]}]") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise InputError(f"checkpoint {path} cannot be read ({type(e).__name__}: {str(e).splitlines()[0][:200]}): "
                         f"{fix}") from None
    if not isinstance(ck, dict) or "step" not in ck:
        raise InputError(f"checkpoint {path} is not a psa-eader training checkpoint: {fix}")
    return ck


def unwrap(model):
    """The module inside DistributedDataParallel, if any."""
    return model.module if hasattr(model, "module") else model


# --------------------------------------------------------------------------- the resumable step loop
# Shared by train-cam and train-aff: what they have in common is the data order (EpochSampler, able to
# start mid-epoch), the checkpoint/resume protocol and the logging; the step itself is theirs.

def make_loader(dataset, sampler, batch_size, num_workers, device, seed):
    """DataLoader over `sampler` (drop_last) with its own generator: iterators must not draw from the
    global RNG, or a resumed run's dropout would differ from an unbroken one. Its workers persist across
    epochs (not restarted, with the dataset reloaded, at each one); the epoch reaches them on each index
    (EpochIndex)."""
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=True,
                                       num_workers=num_workers, pin_memory=device.type == "cuda",
                                       persistent_workers=num_workers > 0,
                                       generator=torch.Generator().manual_seed(seed))


def rank_and_world():
    """(rank, world size) of torch.distributed, (0, 1) when no process group is up."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def per_rank_batch(batch_size, world, key="cam_train"):
    """The global batch split over `world` processes: each rank's batch is batch_size / world, so the
    global batch, the steps per epoch and the lr schedule are those of one process."""
    from .errors import InputError
    if batch_size % world:
        raise InputError(f"{key}.batch_size {batch_size} is the global batch and must divide evenly over "
                         f"{world} processes: choose a multiple of {world} (or another --nproc_per_node)")
    return batch_size // world


def epoch_loader(dataset, batch_size, num_workers, device, seed, sampler_factory=None, key="cam_train"):
    """(sampler, loader, steps per epoch) for a training stage; batch_size is the global batch.

    Under torch.distributed each rank takes every world-th image of the epoch's order (EpochSampler)
    in batches of batch_size / world: the ranks' batch k together are exactly one process's batch k.
    sampler_factory(n, seed) -> an EpochSampler-like sampler replaces that. `key` names the config
    section in errors."""
    from .errors import InputError
    r, world = rank_and_world()
    local = per_rank_batch(batch_size, world, key)
    sampler = sampler_factory(len(dataset), seed) if sampler_factory else EpochSampler(len(dataset), seed,
                                                                                         rank=r, world=world)
    steps_per_epoch = len(sampler) // local
    if steps_per_epoch == 0:
        raise InputError(f"{len(dataset)} training images are fewer than one batch of {batch_size}: "
                         f"lower {key}.batch_size")
    return sampler, make_loader(dataset, sampler, local, num_workers, device, seed), steps_per_epoch


def autocast(device, bf16):
    """Context factory for a training step: bfloat16 autocast on `device` when bf16, else a no-op.
    bf16 may be 'auto' (hardware.resolve_bf16)."""
    bf16 = resolve_bf16(bf16, device)
    return (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext


def sync_bn_problem(device_type, backend):
    """Why SyncBatchNorm cannot run here, with the fix, or None."""
    if device_type != "cuda":
        return ("SyncBatchNorm runs on CUDA only (torch refuses CPU tensors): set sync_bn=false for a "
                "multi-process CPU run (each process then normalises its own share)")
    if backend != "nccl":
        return (f"SyncBatchNorm all-gathers its statistics, which the {backend} backend cannot do with GPU "
                "tensors: set sync_bn=false for this run (each process then normalises its own share), or "
                "leave PSA_EADER_DIST_BACKEND unset (NCCL, one GPU per process)")
    return None


def ddp_wrap(net, sync_bn=False):
    """The model to train: net itself, or DDP around it when torch.distributed is initialised (DDP
    averages the gradients over the ranks; equal per-rank batches make that the global batch's mean).
    sync_bn: BatchNorm statistics over the global batch instead of each rank's share (SyncBatchNorm,
    CUDA only; the BN modules are replaced in place, so state-dict keys stay the same)."""
    if rank_and_world()[1] > 1:
        dev = next(net.parameters()).device
        if sync_bn:
            problem = sync_bn_problem(dev.type, torch.distributed.get_backend())
            if problem:
                from .errors import InputError
                raise InputError(problem)
            net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)
        return torch.nn.parallel.DistributedDataParallel(net, device_ids=[dev] if dev.type == "cuda" else None)
    return net


def resume(ckpt_path, model, optimizer, log=None, total=None, fingerprint=None):
    """Restore model, optimiser and RNG states from `ckpt_path` if it exists.

    The file is read onto the CPU: load_state_dict copies the weights to the model's device and the
    optimiser casts its state to its parameters' device, while torch.set_rng_state takes CPU tensors only
    (a checkpoint read straight onto a GPU could not resume: "RNG state must be a torch.ByteTensor").

    Returns (step, checkpoint dict) - (0, None) for a fresh start; the caller restores its extra parts
    (e.g. the EADER adversary) from the dict. With `fingerprint`, a checkpoint saved under another one
    (another config or inputs) is deleted and training starts at step 0.
    """
    from pathlib import Path
    if not Path(ckpt_path).exists():
        return 0, None
    ck = load_checkpoint(ckpt_path)
    if fingerprint is not None and ck.get("fingerprint") != fingerprint:
        if log is not None:
            log.info("checkpoint %s was saved under another config or inputs (fingerprint %s, now %s); "
                     "discarding it and starting at step 0", ckpt_path, ck.get("fingerprint") or "unknown",
                     fingerprint)
        if rank_and_world()[0] == 0:  # rank 0 writes (and removes); the others just start over too
            Path(ckpt_path).unlink(missing_ok=True)
        return 0, None
    model.load_state_dict(ck["model"])
    optimizer.load_state_dict(ck["optimizer"])
    set_rng_state(ck["rng"])
    if log is not None:
        log.info("resumed from %s at step %d/%d", ckpt_path, ck["step"], total)
    return ck["step"], ck


def timed(loader, clock):
    """The loader's batches; the seconds spent waiting for each are added to clock["wait"]."""
    it = iter(loader)
    while True:
        t0 = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            return
        clock["wait"] += time.perf_counter() - t0
        yield batch


def data_wait_share(clock):
    """Percent of the time since the last call spent waiting for data; restarts the count."""
    now = time.perf_counter()
    share = 100 * clock["wait"] / max(now - clock["since"], 1e-9)
    clock["wait"], clock["since"] = 0.0, now
    return share


def _board(folder, step):
    """A TensorBoard writer when the tensorboard package is installed (optional), else None."""
    import importlib.util
    if importlib.util.find_spec("tensorboard") is None:
        return None
    from torch.utils.tensorboard import SummaryWriter
    return SummaryWriter(str(folder), purge_step=step if step > 0 else None)


class MetricsCSV:
    """Training curves as CSV, one row per log line (the running means the log shows). A resumed run first
    drops the rows past the step it resumes from (written after its checkpoint, they will be redone), so
    the file reads as one unbroken run; a torn last row (a kill during a write) goes with them. Where the
    tensorboard package is installed, the same figures also go to <folder>/tensorboard/ (purged past `step`
    on a resume, for the same reason)."""

    def __init__(self, path, step):
        from .fileio import write_text
        self.path, self.header = Path(path), None
        self.board = _board(self.path.parent / "tensorboard", step)
        if not self.path.exists():
            return
        lines = self.path.read_text().splitlines()
        if not lines:
            return
        self.header = lines[0].split(",")
        keep = []
        for line in lines[1:]:
            fields = line.split(",")
            try:
                [float(x) for x in fields]  # every field a number: not a torn row
                if len(fields) == len(self.header) and int(fields[0]) <= step:
                    keep.append(line)
            except ValueError:
                continue
        write_text(self.path, "\n".join([lines[0]] + keep) + "\n")

    def add(self, row):
        from .fileio import write_text
        if self.board is not None:
            for k, v in row.items():
                if k != "step":
                    self.board.add_scalar(k, v, row["step"])
            self.board.flush()
        if list(row) != self.header:  # first row, or other figures than before: a new file
            self.header = list(row)
            write_text(self.path, ",".join(self.header) + "\n")
        with open(self.path, "a") as f:
            f.write(",".join(f"{row[k]:.6g}" if isinstance(row[k], float) else str(row[k]) for k in self.header) + "\n")


def run_steps(loader, sampler, dataset, step_fn, *, step, total, steps_per_epoch, batch_size, checkpoint,
              log, log_every, checkpoint_every, lr, desc, stop_after=None, show=("loss",), progress=True,
              metrics=None):
    """Train from `step` to `total`: step_fn(batch) -> {name: float} does one optimiser step.

    Epoch e, batch k is always the same data (sampler.set_epoch(e, k * the loader's batch),
    dataset.set_epoch(e)), so a resumed run continues exactly where an unbroken one would be, with any
    number of processes: batch_size is the global batch, the loader's the per-rank one. checkpoint(step) is called every
    `checkpoint_every` steps, at every epoch end and when stopping early; lr() gives the logged lr.
    stop_after: end (with a checkpoint) after this many steps. Returns the step reached (< total when
    stopped early). Each log line ends with the wall time per step since the last line (checkpoints
    included) and the share of that time spent waiting for the loader ("data wait"): above a few percent,
    more loader workers would keep the device busier, and the time left at this run's pace (ETA).
    metrics: a CSV file that gets each log line's figures as a row (training curves; see MetricsCSV).
    """
    from tqdm import tqdm
    from .progress import duration, on_terminal
    # a bar only on a terminal: a log file gets the log_every lines below, not the bar's redraws
    bar = tqdm(total=total, initial=step, desc=desc, disable=not (progress and on_terminal()), dynamic_ncols=True)
    running = {}
    clock = {"wait": 0.0, "since": time.perf_counter()}
    logged = step  # the step of the last log line
    start, t_start = step, time.perf_counter()
    curves = MetricsCSV(metrics, step) if metrics is not None else None
    while step < total:
        epoch, in_epoch = divmod(step, steps_per_epoch)
        sampler.set_epoch(epoch, in_epoch * (getattr(loader, "batch_size", None) or batch_size))
        dataset.set_epoch(epoch)
        for batch in timed(loader, clock):
            stats = step_fn(batch)
            bad = {k: v for k, v in stats.items() if ("loss" in k or k.startswith("l_")) and not np.isfinite(v)}
            if bad:  # diverged: the weights are spoilt, so stop before the next checkpoint could keep them
                bar.close()
                raise InputError(
                    f"{desc}: {', '.join(f'{k} {v}' for k, v in bad.items())} at step {step + 1}/{total}: training "
                    f"diverged (most often a learning rate too high for this network, batch or precision; "
                    f"else non-finite inputs or weights). Nothing of this step was saved; the last checkpoint "
                    f"(if any) is kept. Lower the lr (or set bf16 to false) and rerun.")
            for k, v in stats.items():
                running[k] = running.get(k, 0.0) * 0.9 + v * 0.1 if k in running else v
            step += 1
            bar.update(1)
            if step % log_every == 0 or step == total:
                bar.set_postfix({k: f"{v:.3g}" for k, v in running.items() if k in show})
                now = time.perf_counter()
                per_step = (now - clock["since"]) / max(1, step - logged)
                eta = (now - t_start) / (step - start) * (total - step)
                log.info("step %d/%d epoch %d lr %.5g %s %.3f s/step data wait %.0f%% ETA %s", step, total, epoch,
                         lr(), " ".join(f"{k} {v:.4g}" for k, v in running.items()), per_step,
                         data_wait_share(clock), duration(eta))
                if curves is not None:
                    curves.add({"step": step, "epoch": epoch, "lr": lr(), **running, "s_per_step": per_step})
                logged = step
            if step % checkpoint_every == 0 or step % steps_per_epoch == 0:
                checkpoint(step)
            if step >= total or (stop_after is not None and step >= stop_after):
                break
        if stop_after is not None and step >= stop_after and step < total:
            checkpoint(step)
            bar.close()
            log.info("stopped after step %d as asked (resume by rerunning)", step)
            return step
    bar.close()
    return step


class PolySGD(torch.optim.SGD):
    """SGD whose groups follow the poly schedule lr = initial_lr * (1 - step / max_step) ** power, where the
    step counts this optimiser's own steps (a loop that skips steps, as EADER's localizer in the adversary's
    turns, holds its lr meanwhile). The step is saved with the state, so a resumed run continues the schedule.
    groups: param groups, each with its initial "lr" (and its own "weight_decay" where it differs)."""

    def __init__(self, groups, max_step, momentum=0.9, weight_decay=0.0, power=0.9):
        for g in groups:
            g.setdefault("initial_lr", g["lr"])
        super().__init__(groups, lr=groups[0]["lr"], momentum=momentum, weight_decay=weight_decay)
        self.max_step, self.power, self.global_step = max_step, power, 0

    def step(self, closure=None):
        f = max(0.0, 1 - self.global_step / self.max_step) ** self.power
        for g in self.param_groups:
            g["lr"] = g["initial_lr"] * f
        out = super().step(closure)
        self.global_step += 1
        return out

    def state_dict(self):
        return {**super().state_dict(), "global_step": self.global_step}

    def load_state_dict(self, sd):
        sd = dict(sd)
        self.global_step = sd.pop("global_step", 0)
        super().load_state_dict(sd)


class PolyOptimizer(PolySGD):
    """PSA's optimiser: its four parameter groups on the poly schedule (training.PolySGD).

    `momentum_quirk=True` reproduces PSA's public code, which passed the weight decay into SGD's
    momentum slot: momentum is then equal to the weight decay (5e-4, i.e. plain SGD). The per-group
    weight decay is applied either way.
    """

    def __init__(self, groups, lr, weight_decay, max_step, momentum=0.9, momentum_quirk=True,
                 power=0.9, new_mult=10.0):
        # PSA: new layers get 10x (weights) and 20x (biases) the base learning rate
        mults = (1, 2, new_mult, 2 * new_mult)
        wds = (weight_decay, 0.0, weight_decay, 0.0)
        params = [{"params": g, "lr": lr * m, "weight_decay": wd} for g, m, wd in zip(groups, mults, wds) if g]
        super().__init__(params, max_step, momentum=weight_decay if momentum_quirk else momentum, power=power)


def poly_classifier_step(model, opt, amp, base_lr, total, power, start, device=None):
    """step_fn for run_steps: one step of a plain multi-label classifier (train-adv, the demo's pre-training),
    lr = base_lr * (1 - step / total) ** power recomputed from the step count, so a resume continues it."""
    import torch.nn.functional as F
    state = {"step": start}

    def step_fn(batch):
        _, x, y = batch
        if device is not None:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        for g in opt.param_groups:
            g["lr"] = base_lr * (1 - state["step"] / total) ** power
        with amp():
            logits = model(x)
        loss = F.multilabel_soft_margin_loss(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        state["step"] += 1
        return {"loss": loss.item()}
    return step_fn
