"""run_steps' log lines: wall time per step and the "data wait" share (time spent waiting for the loader)."""
import logging
import time

from psa_baseline.training import EpochSampler, run_steps


class SlowLoader:
    """Batches that take `delay` seconds each to arrive."""

    def __init__(self, n, delay):
        self.n, self.delay, self.batch_size = n, delay, 1

    def __iter__(self):
        for i in range(self.n):
            time.sleep(self.delay)
            yield [i]


class Data:
    def set_epoch(self, epoch):
        pass


def test_log_lines_give_the_share_of_time_spent_waiting_for_data(caplog):
    log = logging.getLogger("test.data_wait")
    caplog.set_level(logging.INFO, logger="test.data_wait")
    run_steps(SlowLoader(4, 0.06), EpochSampler(4), Data(), lambda b: time.sleep(0.02) or {"loss": 1.0},
              step=0, total=4, steps_per_epoch=4, batch_size=1, checkpoint=lambda s: None, log=log, log_every=4,
              checkpoint_every=100, lr=lambda: 0.1, desc="t", progress=False)
    line = [r.getMessage() for r in caplog.records if "step 4/4" in r.getMessage()][0]
    share = float(line.rsplit("data wait ", 1)[1].split("%")[0])
    assert 50 <= share <= 90, line  # 0.06 s of every 0.08 s: 75%
    per_step = float(line.rsplit(" s/step", 1)[0].rsplit(" ", 1)[1])
    assert 0.07 <= per_step <= 0.2, line  # 0.08 s a step
