"""Progress: a bar on a terminal, periodic log lines everywhere else.

A log redirected to a file (nohup, a batch system, `2> run.log`) would fill with a bar's redraws, so the
bar is drawn only when stderr is a terminal; otherwise a line goes to the log about every tenth of the way.
"""
import logging
import sys
import time

log = logging.getLogger("psa_baseline.progress")  # a stage's logger sets this library's handlers
BARS = True  # False: log lines even on a terminal (several processes share it, e.g. variants side by side)


def on_terminal():
    if not BARS:
        return False
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


def with_progress(items, desc, total=None, enabled=True, lines=10, quiet_below=1.0):
    """Iterate over `items`; enabled=False (e.g. ranks other than 0) shows nothing. Off a terminal, about
    `lines` lines, none before `quiet_below` seconds but the last (a 0.1 s evaluation says it once)."""
    total = len(items) if total is None else total
    if not enabled:
        yield from items
        return
    if on_terminal():
        from tqdm import tqdm
        yield from tqdm(items, total=total, desc=desc, dynamic_ncols=True)
        return
    every = max(1, -(-total // lines)) if total else 0
    t0 = time.time()
    for n, item in enumerate(items, 1):
        yield item
        if every and (n == total or (n % every == 0 and time.time() - t0 >= quiet_below)):
            log.info("%s: %d/%d (%.0f%%) in %.1f s", desc, n, total, 100.0 * n / total, time.time() - t0)


class BarSafeHandler(logging.StreamHandler):
    """A stream handler that writes through tqdm.write: on a terminal a log line lifts the progress bar,
    prints whole and the bar is redrawn under it (a plain handler prints over a half-drawn bar)."""

    def emit(self, record):
        try:
            from tqdm import tqdm
            tqdm.write(self.format(record), file=self.stream)
        except Exception:
            self.handleError(record)


def duration(seconds):
    """'42 s', '3 min 05 s', '2 h 07 min'."""
    s = int(round(max(0.0, seconds)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"
