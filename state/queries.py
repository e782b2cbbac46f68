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


# The order _grouped makes in Python, made by SQLite, so that rows stream out instead of being held:
# days in order, each day's sessions in the order of their first message in the range, ids within.
# Each session's first id by a window over the range, not a join of the range with its sessions: for the join
# SQLite looked each session up through the only index that has `day` (day, hash) and so read the whole day
# once per session, and the year benchmark's burst day (50,000 messages in 2,000 sessions) took 71.6 s to
# read, where this takes 0.16 s. A night read it for its text, its held-out text and its rereads.
_BETWEEN = """
    SELECT m.day, m.session, m.sender, m.text FROM (
        SELECT id, day, session, sender, text, min(id) OVER (PARTITION BY day, session) AS first FROM messages
        WHERE id > :first AND id <= :last AND split = :split
    ) m
    WHERE 1 {unseen}
    ORDER BY m.day, m.first, m.id
"""
_UNSEEN = """AND m.text NOT IN (SELECT text FROM messages WHERE id > :first AND id <= :last AND split = 'train'
                               UNION ALL
                               SELECT text FROM messages WHERE id > :dfirst AND id <= :dlast AND split = 'probe')"""


def text_between(db: sqlite_utils.Database, first_id: int, last_id: int, split: str = "train") -> bytes:
    """Messages with first_id < id <= last_id: what an update that recorded those bounds trains on.
    Streamed: the rows are never all in memory at once, only the text they make."""
    return conversation(db.query(_BETWEEN.format(unseen=""), {"first": first_id, "last": last_id, "split": split}))


def held_out_between(
    db: sqlite_utils.Database, first_id: int, last_id: int, deferred_first: int, deferred_last: int
) -> bytes:
    """The night's held-out text: its probe-split messages (first_id < id <= last_id) but those whose text the
    night trains in another copy, a train-split message of the same range or a held-out one deferred to
    it (deferred_first < id <= deferred_last). The split is drawn per line (ingest/reader.py split_of), so
    "thanks" said twice may land in both splits; scoring the candidate on that copy would score text it
    trained on. The candidate trained nothing else of what is left, and the current model none of it."""
    params = {"first": first_id, "last": last_id, "dfirst": deferred_first, "dlast": deferred_last, "split": "probe"}
    return conversation(db.query(_BETWEEN.format(unseen=_UNSEEN), params))


# the bytes of a message's `sender: text` line, as state/text.py's message_line makes it
_LINE_BYTES = "length(CAST(sender AS BLOB)) + length(CAST(text AS BLOB)) + 3"


def end_of_night(
    db: sqlite_utils.Database, after_id: int, max_bytes: int, split: str = "train", through_id: int | None = None
) -> int:
    """The id of the message whose line brings the text after `after_id` to max_bytes (or the last one, if
    there is less): the night trains on (after_id, that id], the rest waits. Reads only ids and sizes.
    With through_id, only messages up to it count, and through_id itself is returned when all of them fit.
    No room (max_bytes <= 0) takes nothing: after_id."""
    if max_bytes <= 0:
        return after_id
    upper, params = ("AND id <= ?", [through_id]) if through_id is not None else ("", [])
    last_id, size = after_id, 0
    for message_id, line_bytes in db.execute(
        f"SELECT id, {_LINE_BYTES} FROM messages WHERE id > ? AND split = ? {upper} ORDER BY id",
        [after_id, split, *params],
    ):
        last_id, size = message_id, size + line_bytes
        if size >= max_bytes:
            return last_id
    return last_id if through_id is None else max(through_id, after_id)


def held_out_through(db: sqlite_utils.Database, last_id: int) -> int:
    """The id before the first train-split message after last_id, or the newest message's id if none: a night
    that trains through last_id holds out the probe-split messages right after it too (it costs them nothing),
    rather than leaving them for a night that has a train message after them (the answer that ends a day)."""
    return db.execute(
        "SELECT max(?, coalesce((SELECT min(id) - 1 FROM messages WHERE id > ? AND split = 'train'),"
        " (SELECT max(id) FROM messages), 0))",
        [last_id, last_id],
    ).fetchone()[0]


def bytes_between(db: sqlite_utils.Database, first_id: int, last_id: int, split: str = "train") -> int:
    """The bytes of the lines of one split's messages with first_id < id <= last_id (no blank lines)."""
    return db.execute(
        f"SELECT coalesce(sum({_LINE_BYTES}), 0) FROM messages WHERE id > ? AND id <= ? AND split = ?",
        [first_id, last_id, split],
    ).fetchone()[0]


# The probe-split messages with first < id <= last (held out of an earlier night, trained now), each with
# the message before and after it in its session (of the same day) as context, so that an answer is learned
# after its question and a question before its answer. A probe message after `last` is never context: it is
# held out of tonight. Gaps and islands: rows kept one after another in a session make one block, and each
# block stands apart (a blank line), in order of its first message, so no two messages that were not
# said one after the other are joined. Costs one read of the days that hold such messages.
_DEFERRED = """
    WITH d AS (SELECT DISTINCT day FROM messages WHERE id > :first AND id <= :last AND split = 'probe'),
    s AS (SELECT m.id, m.day, m.session, m.sender, m.text, m.split,
                 (m.split = 'probe' AND m.id > :first AND m.id <= :last) AS deferred,
                 row_number() OVER (PARTITION BY m.day, m.session ORDER BY m.id) AS n
          FROM messages m WHERE m.day IN d),
    k AS (SELECT *, lag(deferred, 1, 0) OVER w AS after_one, lead(deferred, 1, 0) OVER w AS before_one
          FROM s WINDOW w AS (PARTITION BY day, session ORDER BY id)),
    kept AS (SELECT id, day, session, sender, text,
                    n - row_number() OVER (PARTITION BY day, session ORDER BY id) AS island
             FROM k WHERE deferred OR ((after_one OR before_one) AND NOT (split = 'probe' AND id > :last))),
    blocks AS (SELECT *, min(id) OVER (PARTITION BY day, session, island) AS first FROM kept)
    SELECT day, session, island, sender, text FROM blocks ORDER BY day, first, id
"""


def deferred_text(db: sqlite_utils.Database, first_id: int, last_id: int) -> bytes:
    """What an update that recorded deferred bounds (first_id, last_id] trains of the probe split: each such
    message in its conversation, between its neighbours (see _DEFERRED). The neighbours were trained on
    their own night (or are trained tonight): like replay, context, not new text."""
    if last_id <= first_id:
        return b""
    rows = db.query(_DEFERRED, {"first": first_id, "last": last_id})
    return conversation({**row, "session": (row["session"], row["island"])} for row in rows)


def night_text(db: sqlite_utils.Database, run: dict) -> bytes:
    """What an update (a `runs` row, or anything with its four bounds) trains on: the probe-split messages held
    out of earlier nights, in their conversations, then its new train-split messages."""
    deferred = deferred_text(db, run.get("deferred_first_id") or 0, run.get("deferred_last_id") or 0)
    new = text_between(db, run["first_message_id"], run["last_message_id"], split="train")
    return deferred + b"\n" + new if deferred and new else deferred or new


def bytes_after(db: sqlite_utils.Database, after_id: int, split: str = "train") -> int:
    """About how many bytes of text the messages after `after_id` make (their lines, without the blank
    lines between sessions): what is waiting for the next nights."""
    return db.execute(
        f"SELECT coalesce(sum({_LINE_BYTES}), 0) FROM messages WHERE id > ? AND split = ?", [after_id, split]
    ).fetchone()[0]


def sample_text(
    db: sqlite_utils.Database, n_bytes: int, *, max_id: int, split: str = "train", seed: int = 0, span_bytes: int = 4096
) -> bytes:
    """About n_bytes of runs of consecutive messages with id <= max_id, from random places (replay)."""
    first = db.execute("SELECT min(id) FROM messages WHERE split = ? AND id <= ?", [split, max_id]).fetchone()[0]
    if first is None or n_bytes <= 0:
        return b""
    rng = random.Random(seed)
    spans, size = bytearray(), 0  # joined as they come: never held twice, as a list and joined
    while size < n_bytes:
        start = rng.randint(first, max_id)
        rows = db.query(
            "SELECT id, day, session, sender, text FROM messages WHERE id >= ? AND id <= ? AND split = ? ORDER BY id",
            [start, max_id, split],
        )
        span = _take(rows, min(span_bytes, n_bytes - size), whole_messages=True)[0]
        if not span:  # start fell after the last message of the split: wrap to the first
            continue
        spans += b"\n" + span if spans else span
        size += len(span)
    del spans[n_bytes:]
    return bytes(spans)


def newest_text_after(db: sqlite_utils.Database, after_id: int, max_bytes: int) -> tuple[bytes, int]:
    """The messages of both splits after `after_id`, the newest whose lines fit in max_bytes (at least one), as
    one stream grouped as day_text groups them; and the newest id (after_id if there is none). Read newest
    first, so a backlog of a year costs what its last max_bytes do: what the day's learning reads
    (daemon/today.py)."""
    rows = db.query("SELECT id, day, session, sender, text FROM messages WHERE id > ? ORDER BY id DESC", [after_id])
    taken = list(reversed(_take(rows, max_bytes, whole_messages=True)[1]))
    return _grouped(taken), max((row["id"] for row in taken), default=after_id)


def message_key(db: sqlite_utils.Database, through_id: int, split: str = "train") -> dict | None:
    """The (day, hash) of the newest message of `split` with id <= through_id: a name for "trained up to here"
    that survives the database (a message is unique on day, split and the hash of its raw line, and
    reading the same files again gives the same keys, with new ids)."""
    rows = list(
        db.query(
            "SELECT day, hash FROM messages WHERE id <= ? AND split = ? ORDER BY id DESC LIMIT 1", [through_id, split]
        )
    )
    return rows[0] if rows else None


def id_of_key(db: sqlite_utils.Database, key: dict, split: str = "train") -> int:
    """This database's id of the message of `split` that `key` names; if it has no such message (its file is
    gone), the newest message of that split of that day or before (0 for none)."""
    row = db.execute(
        "SELECT id FROM messages WHERE day = ? AND split = ? AND hash = ?", [key["day"], split, key["hash"]]
    ).fetchone()
    if row is not None:
        return row[0]
    return db.execute(
        "SELECT coalesce(max(id), 0) FROM messages WHERE day <= ? AND split = ?", [key["day"], split]
    ).fetchone()[0]


def text_bytes_through(db: sqlite_utils.Database, max_id: int, cap: int, split: str = "train") -> int:
    """Bytes of message text with id <= max_id, counted newest first up to `cap`: what a replay floor of
    `cap` bytes can draw on, found without reading a long history whole."""
    total = 0
    rows = db.execute(
        "SELECT length(CAST(text AS BLOB)) FROM messages WHERE id <= ? AND split = ? ORDER BY id DESC",
        [max_id, split],
    )
    for (size,) in rows:
        if total >= cap:
            break
        total += size
    return min(total, cap)


def max_message_id(db: sqlite_utils.Database, split: str | None = None) -> int:
    """The newest message id (0 for none): an update trains on ids up to this."""
    where, params = ("WHERE split = ?", [split]) if split else ("", [])
    return db.execute(f"SELECT coalesce(max(id), 0) FROM messages {where}", params).fetchone()[0]


def day_splits(db: sqlite_utils.Database) -> list[dict]:
    """Messages and bytes per day and split, from the counts ingest keeps (state/schema.py 0200), so this
    costs one row a day and split, not a read of every message."""
    return list(db.query("SELECT day, split, messages, bytes FROM day_counts ORDER BY day, split"))


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


def recent_senders(db: sqlite_utils.Database, limit: int = 10_000) -> list[dict]:
    """role, sender and count over the newest `limit` messages, most frequent first: who speaks lately."""
    return list(
        db.query(
            "SELECT role, sender, count(*) AS messages"
            " FROM (SELECT role, sender FROM messages ORDER BY id DESC LIMIT ?)"
            " GROUP BY role, sender ORDER BY messages DESC, sender",
            [limit],
        )
    )


def unreadable_files(db: sqlite_utils.Database, limit: int) -> list[dict]:
    return list(
        db.query("SELECT path, last_seen, error FROM files WHERE error IS NOT NULL ORDER BY path LIMIT ?", [limit])
    )


def message_summary(db: sqlite_utils.Database) -> dict:
    """Messages per split, and the days they cover, from the counts ingest keeps (one row a day and split)."""
    splits = {
        row["split"]: row["messages"]
        for row in db.query("SELECT split, sum(messages) AS messages FROM day_counts GROUP BY split")
    }
    days = next(
        db.query("SELECT count(DISTINCT day) AS days, min(day) AS first_day, max(day) AS last_day FROM day_counts")
    )
    return {"train": splits.get("train", 0), "probe": splits.get("probe", 0), **days}


def day_splits_since(db: sqlite_utils.Database, first_day: str) -> list[dict]:
    """Messages and bytes per day and split, for the days from first_day on (the index finds them)."""
    return list(
        db.query("SELECT day, split, messages, bytes FROM day_counts WHERE day >= ? ORDER BY day, split", [first_day])
    )


def event_counts_since(db: sqlite_utils.Database, first_day: str) -> list[dict]:
    return list(db.query("SELECT * FROM event_counts WHERE day >= ? ORDER BY day, type, action", [first_day]))


def new_days(db: sqlite_utils.Database, first_id: int, last_id: int, split: str = "train") -> list[dict]:
    """The days of the messages with first_id < id <= last_id: what an update with those bounds learned."""
    return list(
        db.query(
            "SELECT day, count(*) AS messages, sum(length(CAST(text AS BLOB))) AS bytes FROM messages"
            " WHERE id > ? AND id <= ? AND split = ? GROUP BY day ORDER BY day",
            [first_id, last_id, split],
        )
    )


def remember(db: sqlite_utils.Database, key: str, value: str) -> None:
    """Record one of the data directory's settings (migration 0600), replacing its earlier value."""
    with db.conn:
        db.execute(
            "INSERT INTO settings (key, value, set_at) VALUES (?, ?, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value, set_at = excluded.set_at",
            [key, value],
        )


def remembered(db: sqlite_utils.Database) -> dict[str, str]:
    """The data directory's settings, key -> value ({} before any was recorded)."""
    return {key: value for key, value in db.execute("SELECT key, value FROM settings")}


def newest_days_from(db: sqlite_utils.Database, n: int) -> str:
    """The oldest of the n newest days that hold messages ('9999-12-31' if none does): `status` shows
    the days that have something in them, however long ago the one before the newest was."""
    row = db.execute(
        "SELECT min(day) FROM (SELECT DISTINCT day FROM day_counts WHERE messages > 0 ORDER BY day DESC LIMIT ?)", [n]
    ).fetchone()
    return row[0] or "9999-12-31"
