"""`engram-ff reset`: remove a data directory's state (the database and the checkpoints), after asking.

Safe by construction: it removes only the files engram-ff itself names (the database and its WAL and
shared-memory files, the day's learning beside it, the checkpoint files by the names engram-ff gives
them, their digests, marks and temp files, the lock), never a folder's other contents, never a folder
engram-ff did not make (the checkpoint folder goes only if it holds engram-ff's marker and nothing
else), never through a symlink, and never the Engram logs, even when the watched folder is inside the
data directory: a later run reads them all again. A folder with no engram-ff database and no engram-ff
marker is refused as a whole: a mistyped --data must not cost a user their own `a.pt` (issue #20). The
command holds the data directory's lock while it removes, so a running daemon makes it refuse.
"""

from __future__ import annotations

import os
import re
import sqlite3
import stat
from dataclasses import dataclass, field
from pathlib import Path

from engram_ff.daemon import layout
from engram_ff.daemon.config import Config
from engram_ff.daemon.output import plural, size
from engram_ff.state import queries
from engram_ff.state.db import open_existing

DATABASE_SUFFIXES = ("", "-wal", "-shm", "-journal")
SQLITE_MAGIC = b"SQLite format 3\x00"


@dataclass
class Plan:
    files: list[Path] = field(default_factory=list)
    database: str = "no database"  # what it holds, for the question
    checkpoints: int = 0
    ours: bool = False  # an engram-ff database, or engram-ff's marker, is there
    marked_folder: bool = False  # the checkpoint folder is one engram-ff made

    @property
    def bytes(self) -> int:
        return sum(p.lstat().st_size for p in self.files if p.exists() or p.is_symlink())


def plan(config: Config) -> Plan:
    """What reset would remove (the lock file is removed last, by `remove`)."""
    found = Plan()
    if is_sqlite(config.db_path):
        found.ours = True
        for suffix in DATABASE_SUFFIXES:
            path = config.db_path.with_name(config.db_path.name + suffix)
            if path.is_file() or path.is_symlink():
                found.files.append(path)
        found.database = _describe(config.db_path)
        day = sorted(p for p in config.data_dir.iterdir() if layout.TODAY_NAME.match(p.name))
        found.files += [p for p in day if p.is_file() or p.is_symlink()]  # what the memory learned by day
    folder = config.checkpoint_dir
    if folder.is_dir() and not folder.is_symlink():
        marker = folder / layout.FOLDER_MARKER
        found.marked_folder = marker.is_file() and not marker.is_symlink()
        found.ours = found.ours or found.marked_folder
        names = sorted(p for p in folder.iterdir() if layout.CHECKPOINT_NAME.match(p.name))
        found.files += [p for p in names if p.is_file() or p.is_symlink()]
        found.checkpoints = sum(1 for p in found.files if p.suffix == ".pt")
        found.ours = found.ours or any(_digest_names(p) for p in found.files if p.suffix == ".pt")
    return found


def _digest_names(checkpoint: Path) -> bool:
    """The `.sha256` beside a checkpoint is engram-ff's own marker (of a folder made before the folder
    marker was): `HEX64  NAME`, naming the checkpoint beside it. Read only if it is a small regular file."""
    digest = checkpoint.with_name(checkpoint.name + ".sha256")
    try:
        fd = os.open(digest, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        words = os.read(fd, 256).decode("ascii", "replace").split()
    finally:
        os.close(fd)
    return len(words) == 2 and re.fullmatch(r"[0-9a-f]{64}", words[0]) is not None and words[1] == checkpoint.name


def is_sqlite(path: Path) -> bool:
    """A regular file that starts as every SQLite database does (a damaged one too: a reason to reset)."""
    try:
        if not path.is_file() or path.is_symlink():
            return False
        with path.open("rb") as f:
            return f.read(len(SQLITE_MAGIC)) == SQLITE_MAGIC
    except OSError:
        return False


def _describe(db_path: Path) -> str:
    try:
        db = open_existing(db_path)
        try:
            counts = queries.counts(db)
        finally:
            db.close()
    except sqlite3.DatabaseError as exc:  # a damaged database is a reason to reset: say so, go on
        return f"the database (unreadable: {exc})"
    messages, files = plural(counts["messages"], "message"), plural(counts["files"], "file")
    return f"the database ({messages} from {files}, {size(db_path.stat().st_size)})"


def question(config: Config, found: Plan) -> str:
    watch = config.watch
    return (
        f"This removes from {config.data_dir}: {found.database} and {plural(found.checkpoints, 'checkpoint file')} "
        f"({size(found.bytes)} in all). The model and its history are lost.\n"
        f"The Engram logs in {watch} are not touched; a later run reads them all again."
    )


def remove(config: Config, found: Plan) -> None:
    """unlink never follows a symlink: a link named like our file goes, its target stays."""
    for path in found.files:
        path.unlink(missing_ok=True)
    folder = config.checkpoint_dir
    if found.marked_folder and folder.is_dir() and not folder.is_symlink():
        marker = folder / layout.FOLDER_MARKER
        if [p.name for p in folder.iterdir()] == [marker.name]:  # nothing of anyone else's in it
            marker.unlink()
            folder.rmdir()
    config.lock_path.unlink(missing_ok=True)
