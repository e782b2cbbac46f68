"""One log format for the daemon and its update child; journald adds its own timestamps."""

from __future__ import annotations

import logging
import os
import sys


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at each record, not the one it was made with: a command run in
    the same process as an earlier one (the tests, `main()` called twice) never logs to a closed stream."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):  # StreamHandler's __init__ and setStream assign it; sys.stderr always wins
        pass


# Libraries whose INFO lines say nothing a user can act on ("Adding job tentatively -- it will be properly
# scheduled when the scheduler starts", "Matplotlib is building the font cache"): their warnings still show,
# and log_level = "DEBUG" shows everything.
CHATTY = ("apscheduler", "matplotlib")


def setup_logging(level: str = "INFO") -> None:
    under_journal = bool(os.environ.get("JOURNAL_STREAM") or os.environ.get("INVOCATION_ID"))
    fmt = "%(name)s: %(message)s" if under_journal else "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=level.upper(), format=fmt, handlers=[_StderrHandler()], force=True)
    for name in CHATTY:
        logging.getLogger(name).setLevel(logging.DEBUG if level.upper() == "DEBUG" else logging.WARNING)
