"""Progress of an update: a bar on a terminal, a log line every 30 s, a status line for systemd.
A fake clock stands in for the minutes an update takes; the bar is written to a real text stream."""

import io
import logging

from engram_ff.daemon.progress import Progress
from engram_ff.model.train import TrainResult


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_log_every_30_s_status_every_2_s_and_a_bar_that_clears(caplog):
    clock, terminal, statuses = Clock(), io.StringIO(), []
    progress = Progress(terminal=terminal, status=statuses.append, clock=clock)
    progress.start(7, total_steps=900, budget_s=720.0)
    with caplog.at_level(logging.INFO, logger="engram_ff.daemon.progress"):
        for step in range(1, 121):  # 120 steps, one a second: 780 steps (13 min) to go, capped by 600 s of budget
            clock.now += 1.0
            progress.step(step, [2.5, 2.25], TrainResult(steps=step, bytes=step * 4096, seconds=float(step)))
    logged = [r.getMessage() for r in caplog.records]
    assert len(logged) == 4  # at 30, 60, 90 and 120 s
    assert logged[-1] == "update 7: step 120/900, loss 2.250, 4.1 kB/s, 10 min left"
    assert statuses[0] == "training: step 1/900, 12 min left" and len(statuses) == 60
    assert statuses[-1] == "training: step 119/900, 10 min left"
    bar = terminal.getvalue().split("\r")[-1]
    assert bar.startswith("training [###") and "120/900 steps" in bar and "10 min left" in bar
    progress.phase("probing the new model")
    assert terminal.getvalue().endswith("\r\x1b[K") and statuses[-1] == "probing the new model"
