"""Small read functions over the schema, shared by `engram-ff status`, the daemon and the benchmarks.

Message ids only grow, so `text_since(db, last_id)` is the cursor an incremental update resumes from.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator

import sqlite_utils

from engram_ff.state.text import conversation, message_line

_DAY_ROWS = """
    SELECT m.id, m.day, m.session, m.sender, m.text FROM messages m
    JOIN (SELECT session, min(id) AS first FROM messages WHERE day = :day AND split = :split GROUP BY session) s
      ON s.session = m.session
    WHERE m.day = :day AND m.split = :split
    ORDER BY s.first, m.id
"""


def days(db: sqlite_utils.Database) -> list[str]:
    """Days that have messages, oldest first."""
    return [row[0] for row in db.execute("SELECT DISTINCT day FROM messages ORDER BY day")]


def day_rows(db: sqlite_utils.Database, day: str, split: str = "train") -> Iterator[dict]:
    """A day's messages of one split, each session together, sessions in order of their first message."""
    return db.query(_DAY_ROWS, {"day": day, "split": split})


def day_text(db: sqlite_utils.Database, day: str, split: str = "train", max_bytes: int | None = None) -> bytes:
    """The positives byte stream of a day (`sender: text` lines), cut to max_bytes if given."""
    return _take(day_rows(db, day, split), max_bytes)[0]


def text_since(
    db: sqlite_utils.Database, message_id: int, split: str = "train", max_bytes: int | None = None
) -> tuple[bytes, int]:
    """Messages after message_id as one stream, grouped by day and session; and the last id included.

    With max_bytes, stops at the message that reaches it, so the returned id is exactly what the
    bytes cover and the next call continues from there.
    """
    rows = db.query(
        "SELECT id, day, session, sender, text FROM messages WHERE id > ? AND split = ? ORDER BY id",
        [message_id, split],
    )
    included = _take(rows, max_bytes, whole_messages=True)[1]
    last_id = max((row["id"] for row in included), default=message_id)
    return _grouped(included), last_id


def text_between(db: sqlite_utils.Database, first_id: int, last_id: int, split: str = "train") -> bytes:
    """Messages with first_id < id <= last_id: what an update that recorded those bounds trains on."""
    rows = db.query(
        "SELECT id, day, session, sender, text FROM messages WHERE id > ? AND id <= ? AND split = ? ORDER BY id",
        [first_id, last_id, split],
    )
    return _grouped(list(rows))


def sample_text(
    db: sqlite_utils.Database, n_bytes: int, *, max_id: int, split: str = "train", seed: int = 0, span_bytes: int = 4096
) -> bytes:
    """About n_bytes of runs of consecutive messages with id <= max_id, from random places (replay)."""
    first = db.execute("SELECT min(id) FROM messages WHERE split = ? AND id <= ?", [split, max_id]).fetchone()[0]
    if first is None or n_bytes <= 0:
        return b""
    rng = random.Random(seed)
    spans, size = [], 0
    while size < n_bytes:
        start = rng.randint(first, max_id)
        rows = db.query(
            "SELECT id, day, session, sender, text FROM messages WHERE id >= ? AND id <= ? AND split = ? ORDER BY id",
            [start, max_id, split],
        )
        span = _take(rows, min(span_bytes, n_bytes - size), whole_messages=True)[0]
        if not span:  # start fell after the last message of the split: wrap to the first
            continue
        spans.append(span)
        size += len(span)
    return b"\n".join(spans)[:n_bytes]


def max_message_id(db: sqlite_utils.Database, split: str | None = None) -> int:
    """The newest message id (0 for none): an update trains on ids up to this."""
    where, params = ("WHERE split = ?", [split]) if split else ("", [])
    return db.execute(f"SELECT coalesce(max(id), 0) FROM messages {where}", params).fetchone()[0]


def day_splits(db: sqlite_utils.Database) -> list[dict]:
    """Messages and bytes per day and split, from the counts ingest keeps (state/schema.py 0200), so this
    costs one row a day and split, not a read of every message."""
    return list(db.query("SELECT day, split, messages, bytes FROM day_counts ORDER BY day, split"))


FILES_SHOWN = 50  # `status` lists this many files; file_totals covers the rest


def files(db: sqlite_utils.Database, limit: int | None = None) -> list[dict]:
    """Files seen, most recently read first (all of them without a limit), with the messages stored from
    each and the bytes still waiting for a newline. Costs O(files) at most: no count over messages."""
    return list(
        db.query(
            """
        SELECT f.path, f.size, f.committed_offset, max(f.size - f.committed_offset, 0) AS pending, f.generation,
               f.first_seen, f.last_seen, coalesce(f.error, '') AS error, f.messages
        FROM files f ORDER BY f.last_seen DESC, f.path LIMIT ?""",
            [-1 if limit is None else limit],
        )
    )


def file_totals(db: sqlite_utils.Database) -> dict[str, int]:
    """What a bounded file listing leaves out: how many files, their bytes read and waiting, messages, errors."""
    row = db.execute(
        """SELECT count(*), coalesce(sum(committed_offset), 0), coalesce(sum(max(size - committed_offset, 0)), 0),
                  coalesce(sum(messages), 0), count(error) FROM files"""
    ).fetchone()
    return dict(zip(("files", "committed", "pending", "messages", "errors"), row))


def quarantine(db: sqlite_utils.Database, limit: int = 20) -> list[dict]:
    """The most recent quarantined lines."""
    return list(
        db.query(
            """
        SELECT f.path, q.line_offset, q.length, q.reason, q.excerpt, q.quarantined_at
        FROM quarantine q JOIN files f ON f.id = q.file_id ORDER BY q.id DESC LIMIT ?""",
            [limit],
        )
    )


def counts(db: sqlite_utils.Database) -> dict[str, int]:
    """Row counts of the ingest tables; messages from the kept day counts, not a count of ten million rows."""
    found = {
        table: db.execute(f"SELECT count(*) FROM {table}").fetchone()[0] for table in ("files", "events", "quarantine")
    }
    found["messages"] = db.execute("SELECT coalesce(sum(messages), 0) FROM day_counts").fetchone()[0]
    return found


def event_counts(db: sqlite_utils.Database) -> list[dict]:
    return list(db.query("SELECT * FROM event_counts ORDER BY day, type, action"))


def _take(rows: Iterable[dict], max_bytes: int | None, whole_messages: bool = False) -> tuple[bytes, list[dict]]:
    """Rows until their lines reach max_bytes; cut the bytes there unless whole_messages."""
    taken, size = [], 0
    for row in rows:
        taken.append(row)
        size += len(message_line(row["sender"], row["text"]))
        if max_bytes is not None and size >= max_bytes:
            break
    data = conversation(taken)
    return (data if whole_messages or max_bytes is None else data[:max_bytes]), taken


def _grouped(rows: list[dict]) -> bytes:
    """rows in id order -> the conversation, days in order, each day's sessions together in the order
    of their first message (as day_text has them)."""
    first: dict[tuple[str, str], int] = {}
    for row in rows:
        first.setdefault((row["day"], row["session"]), row["id"])
    return conversation(sorted(rows, key=lambda row: (row["day"], first[row["day"], row["session"]], row["id"])))
