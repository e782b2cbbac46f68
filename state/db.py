"""Open the daemon's SQLite database: one file, WAL, migrated on open.

Durability argument. Every ingest transaction stores a batch of lines *and* the file's new committed
offset together, so the database is always at a line boundary of every file it has read:
- a process crash (SIGKILL, OOM) at any instant: SQLite's journal either has the whole COMMIT or
  none of it; with WAL even synchronous=NORMAL keeps every committed transaction, because the WAL
  write happened before COMMIT returned and the OS page cache outlives the process;
- a power loss: with synchronous=NORMAL the last transactions before the loss may roll back. That
  alone would still be exactly-once for ingest (the offset rolls back with its lines, they are read
  again), but a checkpoint written to disk and fsynced *after* such a commit could then name
  message ids the database no longer has, and a new ingest could reuse them for other lines.
  synchronous=FULL fsyncs the WAL at every COMMIT, so whatever the daemon has acted on is on disk.
  Its cost is one fsync per batch of up to 20,000 lines, so we pay it.
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

import sqlite_utils

from engram_ff.state.schema import migrations

BUSY_TIMEOUT_MS = 30_000  # a training thread or a user's `sqlite3` may hold the lock for a while
CACHE_KIB = 32 * 1024  # keeps the hash index's hot pages in memory while a million lines go in
# The WAL cannot be checkpointed past a reader's snapshot, so a reader held open for long lets it grow
# (237 MB beside a 55 MB database in issue #16); SQLite reuses a WAL from its start afterwards but never
# shrinks the file unless told to: past this size it is cut back once a checkpoint has reset it. Above
# what one commit of BATCH_LINES lines writes (tests/test_state.py measures it), so steady ingest never
# truncates and regrows it.
WAL_LIMIT_BYTES = 32 << 20


def connect(path: str | os.PathLike) -> sqlite3.Connection:
    """A plain sqlite3 connection with the pragmas every connection to this database must have."""
    conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_MS / 1000)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    mode = _switch_to_wal(conn)
    if mode.lower() != "wal":
        raise sqlite3.OperationalError(f"{path}: cannot switch to WAL journal mode (got {mode!r})")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
    conn.execute(f"PRAGMA journal_size_limit = {WAL_LIMIT_BYTES}")
    return conn


def _switch_to_wal(conn: sqlite3.Connection) -> str:
    """SQLite answers "database is locked" at once, without its busy handler, when another connection
    is creating or switching the same new file; so wait here, up to the busy timeout."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            return conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def open_db(path: str | os.PathLike, *, migrate: bool = True) -> sqlite_utils.Database:
    """Open (creating its folder and file if needed) and bring the schema up to date.

    Migrations run under BEGIN IMMEDIATE, so two threads or processes opening a fresh database at
    the same time apply them once: the second waits for the write lock, then finds nothing pending.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite_utils.Database(connect(path))
    if migrate:
        db.conn.execute("BEGIN IMMEDIATE")
        try:
            migrations.apply(db)
        except BaseException:
            db.conn.rollback()
            raise
        db.conn.commit()
    return db


class NoDatabase(FileNotFoundError):
    """A command that only reads found no database where it was pointed."""


def open_existing(path: str | os.PathLike) -> sqlite_utils.Database:
    """open_db for commands that only read: a mistyped --data must not leave a new empty database (or
    folder) behind, so a missing file is NoDatabase and nothing is created."""
    if not Path(path).is_file():
        raise NoDatabase(str(path))
    return open_db(path)
