"""The update child: `python -m engram_ff.daemon.child DAEMON_PID`, started by the service for each
night, so the idle daemon never holds torch's memory and a crash in training cannot take the watcher
down. Its configuration arrives as ENGRAM_FF_* variables; its exit code is update.EXIT_CODES'."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys

from engram_ff.daemon.config import load_config
from engram_ff.daemon.errors import UserError, database_errors
from engram_ff.daemon.logs import setup_logging
from engram_ff.daemon.sandbox import adapt_torch
from engram_ff.daemon.update import EXIT_CODES, update_and_probe

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1


def stop_with_parent(parent_pid: int) -> bool:
    """SIGTERM this update when the daemon that started it dies (SIGKILL, OOM, a crash), so that it saves a
    partial checkpoint and exits instead of training on unsupervised beside the next daemon's update.
    The daemon's thread that started us waits on us, so the signal comes only when the process dies.
    False if the daemon is already gone."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    return os.getppid() == parent_pid


def main() -> int:
    config = load_config()
    setup_logging(config.log_level)
    adapt_torch()
    stop = {"requested": False}

    def on_term(signum, frame):
        log.info("stop requested: saving a checkpoint")
        stop["requested"] = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    if len(sys.argv) > 1 and not stop_with_parent(int(sys.argv[1])):
        log.warning("the daemon that started this update is gone: not starting")
        return EXIT_CODES["interrupted"]
    try:
        with database_errors(config.db_path):
            row = update_and_probe(config, should_stop=lambda: stop["requested"])
    except UserError as exc:
        log.error("%s", exc)
        return 1
    return EXIT_CODES.get(row["status"], 1)


if __name__ == "__main__":
    raise SystemExit(main())
