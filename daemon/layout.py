"""The names engram-ff gives what it writes in a data directory, kept apart from the modules that write
them so that `reset` can recognise them without importing torch."""

from __future__ import annotations

import re

FOLDER_MARKER = ".engram-ff-checkpoints"  # in a checkpoint folder engram-ff made: `reset` may remove only such a one
# What engram-ff names the files it writes there: run000012-final-0000300-1a2b3c4d.pt (the random part since
# the files outlive a database; older ones lack it), their digest and the gate's marks, and the temp files
# of an atomic write (.NAME.RANDOM.tmp). `reset` removes nothing else.
CHECKPOINT_NAME = re.compile(
    r"^(?:run\d{6}-(?:final|partial)-\d{7}(?:-[0-9a-f]{8})?\.pt(?:\.sha256|\.candidate|\.rejected)?"
    r"|\.run\d{6}-(?:final|partial)-\d{7}(?:-[0-9a-f]{8})?\.pt(?:\.sha256)?\.[A-Za-z0-9_]+\.tmp)$"
)
# The day's learning (daemon/today.py) beside the database: today.pt, its digest, and their temp files.
TODAY_NAME = re.compile(r"^(?:today\.pt(?:\.sha256)?|\.today\.pt(?:\.sha256)?\.[A-Za-z0-9_]+\.tmp)$")
