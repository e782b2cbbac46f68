"""Progress of a running update, where a person looks for it: a bar on a terminal, a log line every
30 s (the journal keeps it), and a short status line for systemd's STATUS= (`systemctl status`).

Written by hand rather than with a progress-bar library: one line redrawn with a carriage return is
all a bar is here, and the same numbers feed the log and the status line, which no bar library
writes. It is fed by the training loop's `on_step(step, losses, result)` hook (model/train.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TextIO

from engram_ff.daemon.output import duration, size

log = logging.getLogger(__name__)

LOG_EVERY_S = 30.0
STATUS_EVERY_S = 2.0  # cheap for systemd; `systemctl status` stays current to a step or two
BAR_EVERY_S = 0.2
BAR_WIDTH = 24


class Progress:
    def __init__(
        self,
        *,
        terminal: TextIO | None = None,
        status: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.terminal = terminal  # a tty to draw the bar on, or None
        self.status = status  # receives "training: step 120/900, 3 min left"
        self.clock = clock
        self.run_id = 0
        self.name = "update 0"
        self.total = 0
        self.budget_s = 0.0
        self._next = {"log": 0.0, "status": 0.0, "bar": 0.0}
        self._drawn = False

    def start(self, run_id: int, total_steps: int, budget_s: float, name: str | None = None) -> None:
        """`name` is how the log names the update ('update 3 (run 5)'); 'update RUN_ID' without one."""
        self.run_id, self.total, self.budget_s = run_id, total_steps, budget_s
        self.name = name or f"update {run_id}"
        now = self.clock()
        self._next = {"log": now + LOG_EVERY_S, "status": now, "bar": now}

    def step(self, step: int, losses: list[float], result) -> None:
        """The on_step hook: result.seconds is training time, result.bytes the positions trained."""
        now = self.clock()
        rate = step / result.seconds if result.seconds > 0 else 0.0
        left = self.budget_s - result.seconds
        if rate > 0:
            left = min(left, (self.total - step) / rate)
        loss = losses[-1] if losses else float("nan")  # the top layer's logits are the whole model's
        speed = result.bytes / result.seconds if result.seconds > 0 else 0.0
        if now >= self._next["log"]:
            self._next["log"] = now + LOG_EVERY_S
            self.finish()  # the log line gets a line of its own; the bar is drawn again below it
            self._next["bar"] = now
            log.info(
                "%s: step %d/%d, loss %.3f, %s/s, %s left",
                self.name,
                step,
                self.total,
                loss,
                size(speed),
                duration(left),
            )
        if self.status is not None and now >= self._next["status"]:
            self._next["status"] = now + STATUS_EVERY_S
            self.status(f"training: step {step}/{self.total}, {_minutes(left)} left")
        if self.terminal is not None and (now >= self._next["bar"] or step >= self.total):
            self._next["bar"] = now + BAR_EVERY_S
            # the nearer of the two limits ends training (model/train.py), so it measures how far along it is
            done = min(1.0, max(step / max(self.total, 1), result.seconds / max(self.budget_s, 1e-9)))
            filled = round(done * BAR_WIDTH)
            bar = "#" * filled + "." * (BAR_WIDTH - filled)
            line = (
                f"training [{bar}] {step}/{self.total} steps  loss {loss:.3f}  {size(speed)}/s  {duration(left)} left"
            )
            self.terminal.write("\r" + line + "\x1b[K")
            self.terminal.flush()
            self._drawn = True

    def phase(self, text: str) -> None:
        """Between training and the next thing the update does (probing): the status line only."""
        self.finish()
        if self.status is not None:
            self.status(text)

    def finish(self) -> None:
        """Clear the bar, so whatever is printed next starts on a clean line."""
        if self._drawn and self.terminal is not None:
            self.terminal.write("\r\x1b[K")
            self.terminal.flush()
            self._drawn = False


def _minutes(seconds: float) -> str:
    """Status lines say minutes, as a person glancing at `systemctl status` wants: "3 min", "< 1 min"."""
    return "< 1 min" if seconds < 60 else f"{round(seconds / 60)} min"


def for_this_process(status: Callable[[str], None] | None = None) -> Progress:
    """A bar only when stderr is a terminal; under systemd or into a pipe the log lines serve."""
    import sys

    return Progress(terminal=sys.stderr if sys.stderr.isatty() else None, status=status)
