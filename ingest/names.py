"""File names: which ones hold Engram lines, the live name a rotated one came from, and how a name is
written into a log line.

Read: `X.jsonl` (Engram writes `raw/YYYY-MM-DD.jsonl`), `X.jsonl.gz`, and the names logrotate gives
`X.jsonl` when it rotates it: `X.jsonl.1` (numbered), `X.jsonl-20261127` (`dateext`, any dateformat
of digits and separators), each optionally `.gz` (`compress`), and `X.jsonl-YYYYMMDDHH.backup`: with
`create`, logrotate (3.10 on) renames `X.jsonl` away, then creates it with O_EXCL, and renames a file
it finds there to that name first. A writer that reopened with O_CREAT in between (a loaded machine
lets it) put that file there, so the lines it appended before it noticed and reopened again are in
that file alone. A rotated file is the same file under another name, or a copy of it (copytruncate,
compress): reading it is how lines that arrived just before a rotation still get in, and the day and
session a line falls back to come from its live name.

Shown: a name reaches a log line with every character that could forge a line or drive a terminal
(newline, ESC, any non-printable) escaped as Python would write it, a backslash doubled, and a byte
that is not UTF-8 as \\xNN: the journal gets one line per event, and the name reads as itself.
"""

from __future__ import annotations

import os
import re

_LOG_NAME = re.compile(
    r"(?P<live>.+\.jsonl)(?:(?P<rotated>\.\d+|-\d[-_.\d]*)?(?P<compressed>\.gz)?|-\d{10}\.backup)", re.S
)


def is_log_name(name: str) -> bool:
    return _LOG_NAME.fullmatch(name) is not None


def live_name(name: str) -> str:
    """`2026-11-27.jsonl.1.gz` -> `2026-11-27.jsonl`; a name that is not a log name comes back as it is."""
    match = _LOG_NAME.fullmatch(name)
    return match["live"] if match else name


def is_compressed(name: str) -> bool:
    match = _LOG_NAME.fullmatch(name)
    return bool(match and match["compressed"])


def shown(path: str | bytes | os.PathLike) -> str:
    """The name as a log line carries it (see the module docstring)."""
    text = os.fsdecode(path)
    if text.isprintable() and "\\" not in text:
        return text
    out = []
    for ch in text:
        if 0xDC80 <= ord(ch) <= 0xDCFF:  # a byte os.fsdecode could not decode (surrogateescape)
            out.append(f"\\x{ord(ch) - 0xDC00:02x}")
        elif ch == "\\":
            out.append("\\\\")
        elif ch.isprintable():
            out.append(ch)
        else:
            out.append(repr(ch)[1:-1])
    return "".join(out)
