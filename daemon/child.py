"""The update child: `python -m engram_ff.daemon.child DAEMON_PID [STATUS_FD]`, started by the service
for each night, so the idle daemon never holds torch's memory and a crash in training cannot take the
watcher down. Its configuration arrives as ENGRAM_FF_* variables; its exit code is update.EXIT_CODES'.

Its progress goes to the log every 30 s, and as one line per status ("training: step 120/900, 3 min
left") to STATUS_FD, a pipe the daemon reads and relays as systemd's STATUS=. Relayed rather than sent
from here, so the unit keeps NotifyAccess=main (only the daemon may speak for the service) and the
daemon's own status line can carry the training's."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import sys

from engram_ff.daemon.config import load_config
from engram_ff.daemon.errors import UserError, database_errors
from engram_ff.daemon.idle import Conditions
from engram_ff.daemon.logs import setup_logging
from engram_ff.daemon.progress import for_this_process
from engram_ff.daemon.sandbox import adapt_torch
from engram_ff.daemon.update import EXIT_CODES, run_update

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1


def stop_with_parent(parent_pid: int) -> bool:
    """SIGTERM this update when the daemon that started it dies (SIGKILL, OOM, a crash), so that it saves a
    partial checkpoint and exits instead of training on unsupervised beside the next daemon's update.
    The daemon's thread that started us waits on us, so the signal comes only when the process dies.
    False if the daemon is already gone."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    return os.getppid() == parent_pid


class Stop:
    """The update's should_stop: a signal came, or the machine is no longer free (daemon/idle.py: on battery,
    busy with other work). `why` is what the run's row records, so that the daemon knows a paused night from
    a stopped one and resumes it."""

    def __init__(self, conditions: Conditions):
        self.conditions = conditions
        self.why: str | None = None

    def signal(self, signum, frame) -> None:
        log.info("stop requested: saving a checkpoint")
        self.why = self.why or "stopped by a signal"

    def __call__(self) -> bool:
        if self.why is None and (reason := self.conditions.why_not()):
            self.why = f"paused: {reason}"
            log.warning("pausing the update, %s: saving a checkpoint; the daemon resumes it when that ends", reason)
        return self.why is not None


def main() -> int:
    config = load_config()
    setup_logging(config.log_level)
    adapt_torch()
    stop = Stop(Conditions(config))

    signal.signal(signal.SIGTERM, stop.signal)
    signal.signal(signal.SIGINT, stop.signal)
    if len(sys.argv) > 1 and not stop_with_parent(int(sys.argv[1])):
        log.warning("the daemon that started this update is gone: not starting")
        return EXIT_CODES["interrupted"]
    status = _status_pipe(int(sys.argv[2])) if len(sys.argv) > 2 else None
    try:
        with database_errors(config.db_path):
            row = run_update(config, should_stop=stop, progress=for_this_process(status))
    except UserError as exc:
        log.error("%s", exc)
        return 1
    return EXIT_CODES.get(row["status"], 1)


def _status_pipe(fd: int):
    """Each status as one line on the daemon's pipe; a daemon that stopped reading costs nothing."""
    pipe = os.fdopen(fd, "w", buffering=1, encoding="utf-8", errors="replace")

    def send(text: str) -> None:
        with contextlib.suppress(OSError):  # EPIPE: the daemon is gone, and PR_SET_PDEATHSIG stops us
            pipe.write(text.replace("\n", " ") + "\n")

    return send


if __name__ == "__main__":
    raise SystemExit(main())
