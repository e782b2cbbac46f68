"""The database schema, as one ordered set of migrations; later issues append theirs to `migrations`.

The schema is a public interface (the README shows `sqlite3` queries against it):

files       one row per file ever read (a device and inode; a rename or rotation keeps the row), its
            path (the last name it had; a file another one replaced at its name keeps its row as
            `NAME (earlier file, row N)`), size at the last read, committed_offset (every byte before
            it is stored or quarantined; for a .gz file, bytes of its decompressed text), generation
            (times read again from the start after a truncation or replacement), messages (stored from
            it), first and last seen times, the last read error.
messages    one row per conversation message: source file and line offset, day (YYYY-MM-DD),
            timestamp, session, role, sender, text, hash of the raw line (unique within a day: the
            same line is stored once however often it is read), split 'train' or 'probe', shape.
            Ids only grow (AUTOINCREMENT), so "everything after id N" is a stable cursor.
events      hook event lines (command, agent:bootstrap, gateway:startup...): counted, no text.
quarantine  lines that could not be used: file, offset, length, reason, an excerpt; once per file (0201).
day_counts  messages and text bytes per day and split, kept by ingest in the transactions that store
            the messages (0200), so `status` never counts millions of rows.
Views: event_counts (day, type, action, count), day_splits (day, split, messages, bytes; counted
from messages, the exact definition that day_counts keeps).

0101 rebuilt messages for ingest speed (bench/ingest.py), with the same rows and ids:
- CHECKs written as OR chains: `x IN ('a', 'b')` builds a lookup table each time a statement runs, and
  executemany runs the INSERT once a row: it cost 2 us a row;
- one index instead of two: UNIQUE (day, split, hash) both finds a day's messages of a split and
  keeps a line from being stored twice. A hash unique over the whole table was a random insert into
  an ever larger index, 3 us a row at a million rows; per day, the index region stays a day long.
  So the same raw line is stored once per day (a line with a timestamp has one day; a timestamp-less
  line in two daily files is two messages, as it should be), and the split, a function of the text,
  adds nothing to the key but lets the index serve the day queries.

Migrations run each in a transaction (sqlite-utils), never with executescript, which would commit.
"""

from __future__ import annotations

from sqlite_utils.migrations import Migrations

migrations = Migrations("engram-ff")

_NOW = "(strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))"


def _run(db, statements: list[str]) -> None:
    for sql in statements:
        db.execute(sql)


@migrations(name="0001_ingest")
def _ingest_tables(db) -> None:
    _run(
        db,
        [
            f"""CREATE TABLE files (
            id INTEGER PRIMARY KEY,
            path TEXT NOT NULL UNIQUE,
            device INTEGER,
            inode INTEGER,
            size INTEGER NOT NULL DEFAULT 0,
            committed_offset INTEGER NOT NULL DEFAULT 0,
            skipping INTEGER NOT NULL DEFAULT 0,  -- 1: bytes at the offset continue a quarantined over-size line
            generation INTEGER NOT NULL DEFAULT 0,
            head_hash BLOB,  -- blake2b of the first head_len bytes: tells a rewritten file from an appended one
            head_len INTEGER NOT NULL DEFAULT 0,
            first_seen TEXT NOT NULL DEFAULT {_NOW},
            last_seen TEXT NOT NULL DEFAULT {_NOW},
            error TEXT
        )""",
            """CREATE TABLE messages (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            file_id INTEGER NOT NULL REFERENCES files(id),
            line_offset INTEGER NOT NULL,
            day TEXT NOT NULL,
            ts TEXT,
            session TEXT NOT NULL,
            role TEXT NOT NULL,
            sender TEXT NOT NULL,
            text TEXT NOT NULL,
            hash INTEGER NOT NULL UNIQUE,  -- 64-bit blake2b of the raw line
            split TEXT NOT NULL CHECK (split IN ('train', 'probe')),
            shape TEXT NOT NULL CHECK (shape IN ('recorder', 'transcript', 'chat'))
        )""",
            "CREATE INDEX messages_day_split ON messages (day, split, id)",
            """CREATE TABLE events (
            id INTEGER PRIMARY KEY,
            file_id INTEGER NOT NULL REFERENCES files(id),
            line_offset INTEGER NOT NULL,
            day TEXT NOT NULL,
            ts TEXT,
            type TEXT NOT NULL,
            action TEXT NOT NULL,
            session TEXT,
            hash INTEGER NOT NULL UNIQUE
        )""",
            "CREATE INDEX events_day ON events (day, type, action)",
            f"""CREATE TABLE quarantine (
            id INTEGER PRIMARY KEY,
            file_id INTEGER NOT NULL REFERENCES files(id),
            line_offset INTEGER NOT NULL,
            length INTEGER NOT NULL,  -- bytes; for an over-size line, what was seen when it was cut
            reason TEXT NOT NULL,
            excerpt TEXT NOT NULL,
            hash INTEGER NOT NULL UNIQUE,
            quarantined_at TEXT NOT NULL DEFAULT {_NOW}
        )""",
            "CREATE INDEX quarantine_file ON quarantine (file_id, line_offset)",
            """CREATE VIEW event_counts AS
            SELECT day, type, action, count(*) AS count FROM events GROUP BY day, type, action""",
            """CREATE VIEW day_splits AS
            SELECT day, split, count(*) AS messages, sum(length(CAST(text AS BLOB))) AS bytes
            FROM messages GROUP BY day, split""",
        ],
    )


@migrations(name="0100_runs_checkpoints_probes")
def _run_tables(db) -> None:
    """Nightly updates, the checkpoints they write and the probe scores measured on them."""
    _run(
        db,
        [
            """CREATE TABLE runs (
            id INTEGER PRIMARY KEY,
            kind TEXT NOT NULL,  -- 'update' or 'probe'
            started_at TEXT NOT NULL,
            ended_at TEXT,
            status TEXT NOT NULL CHECK (status IN ('running', 'ok', 'failed', 'interrupted', 'skipped')),
            pid INTEGER,
            resumed_from INTEGER REFERENCES runs(id),
            first_message_id INTEGER,  -- the new train messages of an update: ids in (first, last]
            last_message_id INTEGER,
            new_bytes INTEGER,
            replay_bytes INTEGER,
            steps INTEGER,
            layer_losses TEXT,  -- JSON list: the final local loss of each layer
            wall_seconds REAL,
            peak_rss_mb REAL,
            checkpoint_id INTEGER,
            parent_checkpoint_id INTEGER,
            error TEXT
        )""",
            """CREATE TABLE checkpoints (
            id INTEGER PRIMARY KEY,
            run_id INTEGER NOT NULL REFERENCES runs(id),
            path TEXT NOT NULL,
            sha256 TEXT NOT NULL,
            kind TEXT NOT NULL CHECK (kind IN ('partial', 'final')),
            parent_id INTEGER REFERENCES checkpoints(id),
            steps INTEGER NOT NULL,
            status TEXT NOT NULL CHECK (status IN ('good', 'corrupt', 'pruned')),
            created_at TEXT NOT NULL
        )""",
            """CREATE TABLE probe_scores (
            id INTEGER PRIMARY KEY,
            run_id INTEGER NOT NULL REFERENCES runs(id),
            checkpoint_id INTEGER REFERENCES checkpoints(id),
            probe TEXT NOT NULL,   -- 'retention', 'forgetting', 'summary' or a fact's name
            kind TEXT NOT NULL,    -- 'probe' (held out), 'trained', 'forgetting', 'summary', 'fact'
            day TEXT,              -- the day a retention or forgetting score is about; NULL otherwise
            metric TEXT NOT NULL,  -- e.g. probe_bpb, trained_bpb, forgetting_bpb, answer_bpb, answer_rank
            value REAL NOT NULL,
            recorded_at TEXT NOT NULL
        )""",
            "CREATE INDEX probe_scores_metric_day ON probe_scores (metric, day, checkpoint_id)",
            "CREATE INDEX probe_scores_run ON probe_scores (run_id)",
            """CREATE VIEW probe_history AS
            SELECT s.recorded_at, s.run_id AS run, s.checkpoint_id AS checkpoint, s.probe, s.kind,
                   s.day, s.metric, round(s.value, 4) AS value
            FROM probe_scores s ORDER BY s.id""",
        ],
    )


@migrations(name="0101_messages_cheap_checks")
def _cheap_checks(db) -> None:
    """The same table, rows and ids; cheap CHECKs and one index (see the module docstring)."""
    sequence = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'messages'").fetchone()
    _run(
        db,
        [
            "DROP VIEW day_splits",
            """CREATE TABLE messages_new (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            file_id INTEGER NOT NULL REFERENCES files(id),
            line_offset INTEGER NOT NULL,
            day TEXT NOT NULL,
            ts TEXT,
            session TEXT NOT NULL,
            role TEXT NOT NULL,
            sender TEXT NOT NULL,
            text TEXT NOT NULL,
            hash INTEGER NOT NULL,  -- 64-bit blake2b of the raw line; unique within a day (index below)
            split TEXT NOT NULL CHECK (split = 'train' OR split = 'probe'),
            shape TEXT NOT NULL CHECK (shape = 'recorder' OR shape = 'transcript' OR shape = 'chat')
        )""",
            "INSERT INTO messages_new SELECT id, file_id, line_offset, day, ts, session, role, sender, text, hash,"
            " split, shape FROM messages ORDER BY id",
            "DROP TABLE messages",
            "ALTER TABLE messages_new RENAME TO messages",
            "CREATE UNIQUE INDEX messages_day_split_hash ON messages (day, split, hash)",
            """CREATE VIEW day_splits AS
            SELECT day, split, count(*) AS messages, sum(length(CAST(text AS BLOB))) AS bytes
            FROM messages GROUP BY day, split""",
        ],
    )
    if sequence is not None:  # ids never go back, even past rows deleted at the end
        db.execute("UPDATE sqlite_sequence SET seq = max(seq, ?) WHERE name = 'messages'", [sequence[0]])


@migrations(name="0200_ingest_counts_and_identity")
def _counts_and_identity(db) -> None:
    """What `status` shows, kept up to date by ingest instead of counted at every call, and files found
    by identity in O(log n).

    - files.messages: the messages stored from each file, added in the transaction that stores them
      (state/files.py commit_read); a correlated count(*) per file scanned all of messages once a file;
    - day_counts: messages and text bytes per day and split, the same; the day_splits view, which reads
      every message's text, stays as the exact definition for `sqlite3` users;
    - files_identity: a renamed or rotated file is looked up by (device, inode) at every new name.
    Measured (bench/results/ingest-status.md): a trigger per inserted row cost 5-7 us a row, an index on
    messages(file_id) 1-3 us a row; these counters cost one aggregate over the rows of a commit.
    The backfill reads messages once, at the upgrade."""
    _run(
        db,
        [
            "ALTER TABLE files ADD COLUMN messages INTEGER NOT NULL DEFAULT 0",
            "UPDATE files SET messages = c.n FROM (SELECT file_id, count(*) AS n FROM messages GROUP BY file_id) AS c"
            " WHERE c.file_id = files.id",
            """CREATE TABLE day_counts (
            day TEXT NOT NULL,
            split TEXT NOT NULL,
            messages INTEGER NOT NULL,
            bytes INTEGER NOT NULL,
            PRIMARY KEY (day, split)
        ) WITHOUT ROWID""",
            "INSERT INTO day_counts (day, split, messages, bytes)"
            " SELECT day, split, count(*), sum(length(CAST(text AS BLOB))) FROM messages GROUP BY day, split",
            "CREATE INDEX files_identity ON files (device, inode)",
        ],
    )


@migrations(name="0201_quarantine_once_per_file")
def _quarantine_per_file(db) -> None:
    """A bad line is listed once in each file that holds it, not once in the whole table: a user asking
    what is wrong with a file must find its bad lines even if another file had the same ones first. A
    re-read of the same file (same row) still adds nothing. Same rows and ids."""
    _run(
        db,
        [
            f"""CREATE TABLE quarantine_new (
            id INTEGER PRIMARY KEY,
            file_id INTEGER NOT NULL REFERENCES files(id),
            line_offset INTEGER NOT NULL,
            length INTEGER NOT NULL,  -- bytes; for an over-size line, what was seen when it was cut
            reason TEXT NOT NULL,
            excerpt TEXT NOT NULL,
            hash INTEGER NOT NULL,  -- unique within a file (index below)
            quarantined_at TEXT NOT NULL DEFAULT {_NOW}
        )""",
            "INSERT INTO quarantine_new SELECT id, file_id, line_offset, length, reason, excerpt, hash, quarantined_at"
            " FROM quarantine ORDER BY id",
            "DROP TABLE quarantine",
            "ALTER TABLE quarantine_new RENAME TO quarantine",
            "CREATE INDEX quarantine_file ON quarantine (file_id, line_offset)",
            "CREATE UNIQUE INDEX quarantine_file_hash ON quarantine (file_id, hash)",
        ],
    )
