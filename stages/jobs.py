"""Runs side by side: several pipelines (variants, seeds) at once, each in its own process.

The machine's threads are shared out among the processes rather than each taking them all (which would
oversubscribe the cores). The processes share the terminal, so they print log lines instead of progress
bars; each line names its variant (the stage loggers are psa.<variant>.<stage>).

It gains little for the whole demo on a 2-core CPU: at one thread beside the other process each stage is
slower than at two threads alone, and EADER's train-cam, the longest, sets the pace. And a variant's numbers
come from the thread count it ran with (float sums in another order), which moves the demo's stage 2 far
more than its CAMs. So `pipeline --jobs` defaults to 1; docs/performance.md has the measurements.
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
