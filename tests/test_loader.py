"""Training loaders: persistent workers see each epoch's augmentation seed (EpochIndex)."""
import os

import numpy as np
import torch

from psa_baseline.training import EpochIndex, EpochSampler, make_loader, run_steps
from psa_baseline.voc import EpochSeededDataset


class Draws(EpochSeededDataset):
    """Item i of epoch e: (index, a draw of its generator, the worker's pid)."""

    def __init__(self, n, seed):
        self.ids, self.seed = list(range(n)), seed

    def __getitem__(self, index):
        return int(index), float(self.item_rng(index).random()), os.getpid()


def _epochs(num_workers, epochs=3, resume_at=None):
    """{(epoch, index): draw} over `epochs` epochs of run_steps with a loader of `num_workers` workers,
    and the set of worker pids that produced them. resume_at: stop after that step and resume with a new
    loader, as a killed run does."""
    data = Draws(8, seed=5)
    seen, pids = {}, set()

    def go(step, stop_after=None):
        sampler = EpochSampler(len(data), seed=3)
        loader = make_loader(data, sampler, 2, num_workers, torch.device("cpu"), seed=3)
        assert loader.persistent_workers == (num_workers > 0)

        def step_fn(batch):
            idx, draw, pid = batch
            for i, d in zip(idx.tolist(), draw.tolist()):
                seen[(state["epoch"], i)] = d
            state["epoch"] = (state["step"] + 1) // 4
            state["step"] += 1
            pids.update(pid.tolist())
            return {}
        state = {"step": step, "epoch": step // 4}
        return run_steps(loader, sampler, data, step_fn, step=step, total=4 * epochs, steps_per_epoch=4,
                         batch_size=2, checkpoint=lambda s: None, log=_Quiet(), log_every=100,
                         checkpoint_every=100, lr=lambda: 0.1, desc="t", stop_after=stop_after, progress=False)
    if resume_at is None:
        go(0)
    else:
        go(go(0, stop_after=resume_at))
    return seen, pids


class _Quiet:
    def info(self, *a):
        pass


def test_persistent_workers_draw_each_epochs_augmentation_as_no_workers_do():
    ref, _ = _epochs(0)
    got, pids = _epochs(2)
    assert len(ref) == 24 and got == ref  # every (epoch, image) drawn alike
    assert len(pids) == 2 and os.getpid() not in pids  # two workers, kept for all three epochs
    per_epoch = [sorted(d for (e, _), d in ref.items() if e == k) for k in range(3)]
    assert per_epoch[0] != per_epoch[1] != per_epoch[2]  # the epochs differ: the seed moved on
    resumed, _ = _epochs(2, resume_at=6)  # killed mid-epoch 1, resumed with fresh workers
    assert resumed == ref


def test_the_epoch_travels_with_the_index_to_a_worker():
    import pickle
    i = pickle.loads(pickle.dumps(EpochIndex(7, 3)))
    assert i == 7 and i.epoch == 3 and [10, 11, 12, 13, 14, 15, 16, 17][i] == 17
    d = Draws(8, seed=5)  # an old copy of the dataset (epoch 0) still draws epoch 3's item
    assert d.item_rng(i).random() == np.random.default_rng([5, 3, 7]).random()
