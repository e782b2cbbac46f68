"""Failures a user can act on: the command line prints their message as one line and exits with
their code, never with a traceback."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from engram_ff.state.db import BUSY_TIMEOUT_MS


class UserError(Exception):
    """Something the user asked for cannot be done as asked; the message says what to do instead."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


def database_problem(exc: sqlite3.Error, path: Path | None = None) -> str:
    """SQLite's own words, and what the user can do about them. Its messages are fixed strings: a file
    it cannot write is "attempt to write a readonly database", a full disk "database or disk is full"
    (a write past RLIMIT_FSIZE "disk I/O error"), another writer past the busy timeout "database is
    locked"."""
    name = f"the database {path}" if path else "the database"
    said = str(exc)
    if "readonly" in said or "read-only" in said:
        return (
            f"{name} is read-only ({said}): check its permissions, `lsattr` (chattr +i) and whether its file "
            "system is mounted read-only"
        )
    if "unable to open" in said:
        return (
            f"{name} cannot be opened ({said}): SQLite must be able to write the folder it is in, for its -wal "
            "and -shm files; is that folder read-only or missing?"
        )
    if "locked" in said or "busy" in said:
        return (
            f"{name} stayed locked by another program for over {BUSY_TIMEOUT_MS // 1000} s ({said}); "
            "try again once it is done (a `sqlite3` shell left inside a transaction holds it)"
        )
    if "full" in said or "I/O error" in said:
        return f"{name} refused a write ({said}): is the disk full? Nothing stored before is lost"
    return f"{name} failed: {said}"


@contextmanager
def database_errors(path: Path) -> Iterator[None]:
    """Turn a database failure inside into a UserError that names the database and the remedy."""
    try:
        yield
    except sqlite3.Error as exc:
        raise UserError(database_problem(exc, path)) from None
