"""The files table, and what one read of one file stores: its new rows and its committed offset.

The reader (ingest/reader.py) decides what to read; every statement it needs is here. A read's rows
and the offset just past them are written in one transaction (`begin`, `insert_*`, `commit_read`), so
the database always sits at a line boundary of every file: see ingest/reader.py for the argument.
"""

from __future__ import annotations

import re
import sqlite3

_MESSAGES = (
    "INSERT OR IGNORE INTO messages (file_id, line_offset, day, ts, session, role, sender, text, hash, split, shape)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_EVENTS = (
    "INSERT OR IGNORE INTO events (file_id, line_offset, day, ts, type, action, session, hash)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_QUARANTINE = (
    "INSERT OR IGNORE INTO quarantine (file_id, line_offset, length, reason, excerpt, hash) VALUES (?, ?, ?, ?, ?, ?)"
)
_DETACHED = re.compile(r" \(earlier file, row \d+\)$")
_COUNT_DAYS = """
    INSERT INTO day_counts (day, split, messages, bytes)
    SELECT day, split, count(*), sum(length(CAST(text AS BLOB))) FROM messages NOT INDEXED WHERE id > ?
    GROUP BY day, split
    ON CONFLICT (day, split) DO UPDATE SET messages = messages + excluded.messages, bytes = bytes + excluded.bytes
"""


def _one(conn: sqlite3.Connection, where: str, *params) -> dict | None:
    cursor = conn.execute(f"SELECT * FROM files WHERE {where}", params)
    values = cursor.fetchone()
    return None if values is None else dict(zip([c[0] for c in cursor.description], values))


def by_path(conn: sqlite3.Connection, key: str) -> dict | None:
    return _one(conn, "path = ?", key)


def by_id(conn: sqlite3.Connection, file_id: int) -> dict | None:
    return _one(conn, "id = ?", file_id)


def by_identity(conn: sqlite3.Connection, device: int, inode: int) -> list[dict]:
    """Files already read whose device and inode these are (a rename keeps both), newest row first.
    More than one when a file has two names (a hard link) or an inode number was used again."""
    cursor = conn.execute(
        "SELECT * FROM files WHERE device = ? AND inode = ? AND committed_offset > 0 ORDER BY id DESC", (device, inode)
    )
    names = [c[0] for c in cursor.description]
    return [dict(zip(names, values)) for values in cursor.fetchall()]


def add(conn: sqlite3.Connection, key: str) -> dict:
    """A new row, in the read's transaction (begun here if none is): one fsync a new file, not two."""
    begin(conn)
    conn.execute("INSERT INTO files (path) VALUES (?)", (key,))
    row = by_path(conn, key)
    assert row is not None, "inserted just above, in this transaction"
    return row


def rename(conn: sqlite3.Connection, file_id: int, key: str) -> dict:
    begin(conn)
    conn.execute("UPDATE files SET path = ? WHERE id = ?", (key, file_id))
    row = by_id(conn, file_id)
    assert row is not None, "the caller read this row in this transaction, and no files row is ever deleted"
    return row


def name_before_detach(path: str) -> str:
    """The name a detached row's file had (see detach); any other name as it is."""
    return _DETACHED.sub("", path)


def detach(conn: sqlite3.Connection, row: dict) -> str:
    """Free a name that now holds another file: its earlier file keeps its row (its offset, should it turn
    up again under a rotated name, and its messages) under a name no real file has; returns that name."""
    begin(conn)
    name = f"{row['path']} (earlier file, row {row['id']})"
    conn.execute("UPDATE files SET path = ? WHERE id = ?", (name, row["id"]))
    return name


def note_error(conn: sqlite3.Connection, key: str, error: str) -> None:
    """An unreadable file keeps its row and offset, with the reason, so `status` shows why it is not growing."""
    with conn:
        conn.execute(
            "INSERT INTO files (path, error) VALUES (?, ?) ON CONFLICT (path) DO UPDATE SET error = excluded.error",
            (key, error),
        )


def begin(conn: sqlite3.Connection) -> None:
    """The write lock now, not at the first insert: a read never fails half-way on a busy database."""
    if not conn.in_transaction:
        conn.execute("BEGIN IMMEDIATE")


def last_message_id(conn: sqlite3.Connection) -> int:
    """Rows inserted from here on have larger ids (AUTOINCREMENT, and one writer holds the lock)."""
    return conn.execute("SELECT coalesce(max(id), 0) FROM messages").fetchone()[0]


def _insert_new(conn: sqlite3.Connection, sql: str, rows: list[tuple]) -> int:
    before = conn.total_changes
    conn.executemany(sql, rows)
    return conn.total_changes - before


def insert_messages(conn: sqlite3.Connection, rows: list[tuple]) -> int:
    """Rows not stored yet (unique on day, split and the line's hash); returns how many were new."""
    return _insert_new(conn, _MESSAGES, rows)


def insert_events(conn: sqlite3.Connection, rows: list[tuple]) -> int:
    return _insert_new(conn, _EVENTS, rows)


def insert_quarantine(conn: sqlite3.Connection, rows: list[tuple]) -> int:
    return _insert_new(conn, _QUARANTINE, rows)


def commit_read(
    conn: sqlite3.Connection,
    file_id: int,
    *,
    offset: int,
    skipping: bool,
    size: int,
    device: int,
    inode: int,
    generation: int,
    head_len: int,
    head_hash: bytes | None,
    new_messages: int = 0,
    messages_after: int = 0,
    commit: bool = True,
) -> None:
    """The file's new committed offset, in the transaction that holds the rows before it; commits it
    unless the transaction goes on with other files' reads (commit=False: the caller commits).

    The counters `status` reads move in the same transaction: files.messages by the new_messages this
    read stored, day_counts by the messages with ids above messages_after (the rows it stored)."""
    begin(conn)
    if new_messages:
        conn.execute(_COUNT_DAYS, (messages_after,))
    conn.execute(
        "UPDATE files SET committed_offset = ?, skipping = ?, size = ?, device = ?, inode = ?, generation = ?,"
        " head_len = ?, head_hash = ?, messages = messages + ?, error = NULL,"
        " last_seen = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE id = ?",
        (offset, int(skipping), size, device, inode, generation, head_len, head_hash, new_messages, file_id),
    )
    if commit:
        conn.commit()


def commit(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        conn.commit()


def rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        conn.rollback()
