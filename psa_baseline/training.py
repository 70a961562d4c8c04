"""Training-loop pieces shared by the CAM and affinity stages: a resumable sampler and checkpoints."""
import random

import numpy as np
import torch

from .fileio import save_torch


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
        return iter(self._order()[self.start:])

    def __len__(self):
        return self.n // self.world - self.start


def rng_state():
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state):
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path, **parts):
    """Atomic: a crash while saving leaves the previous checkpoint intact."""
    save_torch(path, {**parts, "rng": rng_state()})


def load_checkpoint(path, map_location="cpu"):
    return torch.load(path, map_location=map_location, weights_only=False)


def unwrap(model):
    """The module inside DistributedDataParallel, if any."""
    return model.module if hasattr(model, "module") else model
