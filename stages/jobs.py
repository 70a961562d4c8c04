"""Runs side by side: several pipelines (variants, seeds) at once, each in its own process.

On a CPU two single-thread processes do more work than one process with two threads: the demo's train-cam,
93 steps of two seeds, took 18.7 s side by side at one thread each against 27.9 s one after the other at two
threads (this 2-core machine). So the machine's threads are shared out among the processes rather than each
taking them all. The processes share the terminal, so they print log lines instead of progress bars; each
line names its variant (the stage loggers are psa.<variant>.<stage>).
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
    return threads
