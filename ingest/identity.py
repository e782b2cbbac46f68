"""Which row of `files` an open file continues. A file is its device and inode, not its name, as in
Filebeat, Fluent Bit and Vector: a rename (logrotate's `create`, `mv`) keeps its row and its offset, and
the file that takes over the old name gets a row of its own.

- The name's row still holds this file (same device and inode): that row; the reader then checks
  that the file was only appended to (ingest/reader.py).
- Another row holds this device and inode, with the fingerprint of the same first bytes (an inode
  number can be used again by another file once the first is deleted), under a name that no longer
  holds it: the file was renamed here; its row moves to this name and the read goes on at its offset.
  If that name still holds it, this is a second name for one file (a hard link): a row of its own,
  whose lines are found already stored.
- Otherwise a new file: a new row. If the name's row held an earlier file with bytes read, that row
  is detached (files.detach): it keeps its offset for when its file turns up under a rotated name,
  or for a descriptor the watcher still holds on it after a rename or a delete.
A descriptor held open across a rename or delete (name None) is matched on device and inode alone:
while it is open, its inode cannot be given to another file.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass

from engram_ff.state import files


@dataclass
class Found:
    row: dict
    replaced: dict | None = None  # the row of the earlier file at this name (now detached)
    moved_from: str | None = None  # the name this file's row had before this read
    wrote: bool = False  # a row was added, renamed or detached: the read's transaction must commit it


def find_row(
    conn: sqlite3.Connection, key: str | None, st: os.stat_result, head_matches: Callable[[dict], bool]
) -> Found | None:
    """The row this file continues (see the module docstring); None for a held descriptor of a file no
    row knows. Writes happen in the read's transaction, begun here if needed."""
    at_name = files.by_path(conn, key) if key is not None else None
    if at_name is not None and (at_name["inode"] is None or _same(at_name, st)):
        return Found(at_name)
    for row in files.by_identity(conn, st.st_dev, st.st_ino):
        if key is None:
            return Found(row)
        if not head_matches(row) or names_it(row["path"], st):
            continue
        if at_name is not None:
            files.detach(conn, at_name)
        return Found(files.rename(conn, row["id"], key), moved_from=row["path"], wrote=True)
    if key is None:
        return None
    if at_name is None:
        return Found(files.add(conn, key), wrote=True)
    if at_name["committed_offset"] == 0:
        return Found(at_name)  # nothing was read from the earlier file: the row starts over with this one
    files.detach(conn, at_name)
    return Found(files.add(conn, key), replaced=at_name, wrote=True)


def names_it(path: str, st: os.stat_result) -> bool:
    """Does path (still) hold the file st describes?"""
    try:
        other = os.stat(path)
    except (OSError, ValueError):
        return False
    return (other.st_dev, other.st_ino) == (st.st_dev, st.st_ino)


def _same(row: dict, st: os.stat_result) -> bool:
    return (row["device"], row["inode"]) == (st.st_dev, st.st_ino)
