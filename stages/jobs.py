"""Runs side by side: several pipelines (variants, seeds) at once, each in its own process.

The machine's threads are shared out among the processes rather than each taking them all (which would
oversubscribe the cores). The processes share the terminal, so they print log lines instead of progress
bars; each line names its variant (the stage loggers are psa.<variant>.<stage>).

What it gains, on this 2-core CPU: two seeds' demo train-cam (93 steps) took 18.7 s side by side at one
thread each against 27.9 s one after the other at two threads, but the whole demo (`./run_pipeline.sh --eader
both`) only 15 min 35 s against 16 min 47 s (1.08x): at one thread, next to the other process, each stage
takes 1.3-1.8x its two-thread time, and EADER's train-cam alone (2.7x the baseline's) sets the pace.
A variant's numbers come from the thread count it ran with: float sums in another order. On the demo,
seed 0: CAM mIoU the same for the baseline, 0.1 apart for EADER; stage 2 moved far more (baseline pseudo
labels 21.3 at one thread, 15.3 at two; EADER 29.4 and 26.3).
So `pipeline --jobs` defaults to 1.
"""
import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import torch


def threads_each(jobs, total=None):
    """The threads of each of `jobs` processes: this process's torch threads (OMP_NUM_THREADS when set)
    shared out, at least one."""
    total = torch.get_num_threads() if total is None else total
    return max(1, total // max(1, jobs))


def _child(threads):
    torch.set_num_threads(threads)
    from psa_baseline import progress
    progress.BARS = False


def run_side_by_side(fn, calls, jobs):
    """fn(*args) for every args in `calls`, `jobs` processes at a time (spawned; fn must be top-level).
    Every call runs to its end even when another fails; then the first failure is raised (an InputError
    keeps its message, so the command line prints it as its own)."""
    threads = threads_each(jobs)
    errors = []
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_child, initargs=(threads,)) as pool:
        for f in [pool.submit(fn, *args) for args in calls]:
            try:
                f.result()
            except Exception as e:  # noqa: BLE001 - re-raised below, after the others have finished
                errors.append(e)
    if errors:
        raise errors[0]
