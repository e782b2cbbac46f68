"""`engram-ff reset`: remove a data directory's state (the database and the checkpoints), after asking.

Safe by construction: it removes only the files engram-ff itself names (the database and its WAL and
shared-memory files, the checkpoint files and their digests and temp files, the lock), never a folder's
other contents, never through a symlink, and never the Engram logs, even when the watched folder is
inside the data directory: a later run reads them all again. The command holds the data directory's
lock while it removes, so a running daemon makes it refuse.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from engram_ff.daemon.config import Config
from engram_ff.daemon.output import plural, size
from engram_ff.state import queries
from engram_ff.state.db import open_existing

DATABASE_SUFFIXES = ("", "-wal", "-shm", "-journal")
CHECKPOINT_PATTERNS = ("*.pt", "*.pt.sha256", "*.tmp")


@dataclass
class Plan:
    files: list[Path] = field(default_factory=list)
    database: str = "no database"  # what it holds, for the question
    checkpoints: int = 0

    @property
    def bytes(self) -> int:
        return sum(p.lstat().st_size for p in self.files if p.exists() or p.is_symlink())


def plan(config: Config) -> Plan:
    """What reset would remove (the lock file is removed last, by `remove`)."""
    found = Plan()
    for suffix in DATABASE_SUFFIXES:
        path = config.db_path.with_name(config.db_path.name + suffix)
        if path.is_file() or path.is_symlink():
            found.files.append(path)
    if config.db_path.is_file():
        found.database = _describe(config.db_path)
    folder = config.checkpoint_dir
    if folder.is_dir() and not folder.is_symlink():
        for pattern in CHECKPOINT_PATTERNS:
            found.files += sorted(p for p in folder.glob(pattern) if p.is_file() or p.is_symlink())
        found.checkpoints = sum(1 for p in found.files if p.suffix == ".pt")
    return found


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
    if folder.is_dir() and not folder.is_symlink() and not any(folder.iterdir()):
        folder.rmdir()
    config.lock_path.unlink(missing_ok=True)
