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
            same line is stored once however often it is read), split 'train' or 'probe' (held out
            of the first night that sees it, for its gate, and trained by the next: 0602), shape.
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

0400 writes every timestamp of runs, checkpoints and probe_scores in the one format the ingest tables
always had, UTC with milliseconds and a Z (`2026-11-27T06:27:08.000Z`), which sorts as text in time order.
0401 makes runs.checkpoint_id and runs.parent_checkpoint_id foreign keys of checkpoints(id).
0602 makes the hold-out roll: runs.deferred_first_id and deferred_last_id bound the probe-split messages an
update trained (held out of an earlier night), runs.prequential_bpb is its test-then-train score.
0700 draws the split from the whole line, so the unique index becomes (day, hash): a line is stored once
per day whichever split either rule gives it.
0701 adds by_day: one row each time the context memory learned new messages between nights
(daemon/today.py): when, over which checkpoint, through which message, how many bytes, and the bits per
byte it gave them before learning them (a prequential score of the day as it came).
0702 adds by_day.refused: why a call's learning was not kept (the gate's canary or facts check, held against
the checkpoint's own scores), NULL where it was kept.

Migrations run each in a transaction (sqlite-utils), never with executescript, which would commit.
"""

from __future__ import annotations

import re

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


def _allow_values(db, table: str, column: str, values: list[str]) -> None:
    """Add `values` to a `CHECK (column IN (...))` of `table`, in place. SQLite cannot alter a CHECK, and
    rebuilding a table that others reference fails under foreign_keys = ON inside the migration's
    transaction, so this is SQLite's own procedure for a change that leaves every stored row valid
    (sqlite.org/lang_altertable.html, "otheralter"): edit the schema text, bump schema_version, check."""
    (sql,) = db.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", [table]).fetchone()
    pattern = re.compile(rf"CHECK \(\s*{column} IN \(([^)]*)\)\s*\)")
    match = pattern.search(sql)
    if match is None:
        raise RuntimeError(f"migration: no CHECK ({column} IN (...)) in table {table}")
    allowed = [v.strip() for v in match.group(1).split(",")]
    allowed += [f"'{v}'" for v in values if f"'{v}'" not in allowed]
    new_sql = sql[: match.start(1)] + ", ".join(allowed) + sql[match.end(1) :]
    (version,) = db.execute("PRAGMA schema_version").fetchone()
    db.execute("PRAGMA writable_schema = ON")
    db.execute("UPDATE sqlite_master SET sql = ? WHERE type = 'table' AND name = ?", [new_sql, table])
    db.execute(f"PRAGMA schema_version = {version + 1}")
    db.execute("PRAGMA writable_schema = OFF")
    (check,) = db.execute(f"PRAGMA integrity_check({table})").fetchone()  # that table only: a big database
    # would take minutes to check whole, at a start-up that must answer within seconds
    if check != "ok":
        raise RuntimeError(f"migration: integrity check after widening {table}.{column}: {check}")


@migrations(name="0300_promotion_gate")
def _promotion_gate(db) -> None:
    """The promotion gate (daemon/gate.py). An update's final checkpoint is a 'candidate' until the gate
    decides: 'good' (promoted: the current model is still the newest good final checkpoint) or 'rejected'
    (kept for inspection until pruned). Its run ends 'ok' or 'rejected', with the decision, its reason and
    scores as JSON in runs.gate; an update that will not start because the database names a model and none
    of its checkpoints loads ends 'refused'. probe_scores.text_hash identifies the text a score was taken
    on, so the gate compares two models only on the same text. probe_history shows each checkpoint's
    newest probe pass, so probing a checkpoint again does not repeat its rows (probe_scores keeps all), and
    says whether the gate promoted the checkpoint (1) or not (0: rejected, or not judged yet)."""
    _allow_values(db, "runs", "status", ["rejected", "refused"])
    _allow_values(db, "checkpoints", "status", ["candidate", "rejected"])
    _run(
        db,
        [
            "ALTER TABLE runs ADD COLUMN gate TEXT",  # JSON: decision, reason, checks (daemon/gate.py)
            "ALTER TABLE probe_scores ADD COLUMN text_hash INTEGER",
            "CREATE INDEX probe_scores_checkpoint_run ON probe_scores (checkpoint_id, run_id)",
            "DROP VIEW probe_history",
            """CREATE VIEW probe_history AS
            SELECT s.recorded_at, s.run_id AS run, s.checkpoint_id AS checkpoint, s.probe, s.kind,
                   s.day, s.metric, round(s.value, 4) AS value,
                   coalesce((SELECT r.status = 'ok' FROM checkpoints c JOIN runs r ON r.id = c.run_id
                             WHERE c.id = s.checkpoint_id), 0) AS promoted
            FROM probe_scores s
            WHERE s.run_id = (SELECT max(p.run_id) FROM probe_scores p WHERE p.checkpoint_id IS s.checkpoint_id)
            ORDER BY s.id""",
        ],
    )


_TIMESTAMPS = {"runs": ("started_at", "ended_at"), "checkpoints": ("created_at",), "probe_scores": ("recorded_at",)}


@migrations(name="0400_one_timestamp_format")
def _one_timestamp_format(db) -> None:
    """Rows written as `…T06:27:08+00:00` become `…T06:27:08.000Z`; SQLite's strftime reads the offset,
    so a value in any other zone is converted to UTC, not relabelled."""
    for table, columns in _TIMESTAMPS.items():
        for column in columns:
            db.execute(
                f"UPDATE {table} SET {column} = strftime('%Y-%m-%dT%H:%M:%fZ', {column})"
                f" WHERE {column} IS NOT NULL AND {column} NOT LIKE '%Z'"
            )


@migrations(name="0401_runs_checkpoint_foreign_keys")
def _runs_checkpoint_foreign_keys(db) -> None:
    """Add REFERENCES checkpoints(id) to the two columns by editing the table's stored definition.

    Why not rebuild the table: dropping `runs`, which checkpoints and probe_scores reference, counts a
    foreign-key violation per child row that no later insert takes back, and foreign_keys cannot be
    turned off inside the transaction a migration runs in. A REFERENCES clause changes no stored
    record, so SQLite's documented procedure for such changes applies: rewrite the CREATE statement in
    sqlite_schema and bump schema_version. Whatever else the table holds (columns, CHECKs that later
    migrations added) is kept as it is. A reference to no checkpoint, which no code path writes, is
    cleared first, so every row satisfies the new keys."""
    for column in ("checkpoint_id", "parent_checkpoint_id"):
        db.execute(f"UPDATE runs SET {column} = NULL WHERE {column} NOT IN (SELECT id FROM checkpoints)")
    (sql,) = db.execute("SELECT sql FROM sqlite_schema WHERE type = 'table' AND name = 'runs'").fetchone()
    new_sql, added = re.subn(
        r"\b((?:parent_)?checkpoint_id INTEGER)(?! REFERENCES)", r"\1 REFERENCES checkpoints(id)", sql
    )
    if added != 2:
        raise RuntimeError(f"runs: expected two checkpoint columns to give keys to, found {added}: {sql}")
    (version,) = db.execute("PRAGMA schema_version").fetchone()
    db.execute("PRAGMA writable_schema = ON")
    try:
        db.execute("UPDATE sqlite_schema SET sql = ? WHERE type = 'table' AND name = 'runs'", [new_sql])
        db.execute(f"PRAGMA schema_version = {version + 1}")
    finally:
        db.execute("PRAGMA writable_schema = OFF")
    violations = db.execute("PRAGMA foreign_key_check(runs)").fetchall()
    if violations:
        raise RuntimeError(f"runs: rows break the new foreign keys: {violations[:5]}")


@migrations(name="0500_checkpoint_writes")
def _checkpoint_writes(db) -> None:
    """A checkpoint file's name is committed here before the file is written, and replaced by its
    `checkpoints` row in one transaction once it is complete. So a file that no row names is either a
    write killed half-way (named here: the next prune removes it) or one this database never made (an
    earlier database's, kept: a file is never deleted because a database does not know it)."""
    _run(
        db,
        [
            """CREATE TABLE checkpoint_writes (
            path TEXT PRIMARY KEY,
            run_id INTEGER NOT NULL REFERENCES runs(id),
            started_at TEXT NOT NULL
        )"""
        ],
    )


@migrations(name="0501_runs_waiting_bytes")
def _waiting_bytes(db) -> None:
    """How much newer train text an update left for the next nights (update_max_new_mib caps a night)."""
    db.execute("ALTER TABLE runs ADD COLUMN waiting_bytes INTEGER")


@migrations(name="0600_data_dir_settings")
def _data_dir_settings(db) -> None:
    """What a data directory remembers of how it was used, so that a later command without the flags
    acts on the same things: 'watch_dir', the folder last watched or ingested (`status --data D` names
    the daemon's folder, `reset` the right logs, `update` ingests from it), and 'facts', 'bundled' in
    the demo's data directory (only there are the bundled facts probed)."""
    db.execute(
        """CREATE TABLE settings (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL,
        set_at TEXT NOT NULL
    )"""
    )


@migrations(name="0601_runs_number")
def _runs_number(db) -> None:
    """runs.number: the n-th run of its kind in this data directory (update 1, 2, 3), which people read,
    beside runs.id, which probe passes share and so skips (updates 1, 3, 5). Numbered for the rows there."""
    db.execute("ALTER TABLE runs ADD COLUMN number INTEGER")
    db.execute("UPDATE runs SET number = (SELECT count(*) FROM runs r WHERE r.kind = runs.kind AND r.id <= runs.id)")
    db.execute("CREATE UNIQUE INDEX runs_kind_number ON runs (kind, number)")


@migrations(name="0602_rolling_hold_out")
def _rolling_hold_out(db) -> None:
    """The hold-out rolls instead of being permanent (issue 22, "every message is learned").

    A message whose hash falls in the probe slice (messages.split = 'probe') is held out of the night
    that first sees it, whose gate scores both models on it (text neither trained on), and is trained by
    the next promoted night; before, no update ever trained it, so a fact whose answer hashed to 'probe'
    was never learned. An update records which probe-split messages it trained as ids in
    (deferred_first_id, deferred_last_id]; the highest deferred_last_id of a promoted update (or an
    adopted checkpoint) is how far they have been trained, so a rejected night's are trained again by
    the next one, and none twice by two promoted nights. prequential_bpb is the bits per byte the model
    an update started from gave the night's new text before training on it (test-then-train).

    An existing database's runs get NULL: nothing of the probe split counts as trained, so the next
    nights train every old probe message, oldest first, within update_max_new_mib a night (the rest
    waits, as a backlog of new text does). No row is rewritten."""
    _run(
        db,
        [
            "ALTER TABLE runs ADD COLUMN deferred_first_id INTEGER",  # probe-split messages trained: (first, last]
            "ALTER TABLE runs ADD COLUMN deferred_last_id INTEGER",
            "ALTER TABLE runs ADD COLUMN prequential_bpb REAL",
        ],
    )


@migrations(name="0700_split_per_line")
def _split_per_line(db) -> None:
    """A message's split is drawn from its whole line now, not from its text (ingest/reader.py split_of), so
    a line stored by the old rule may be drawn into the other split when a copy of it is read again (a
    rotated file). The key that keeps a line from being stored twice becomes (day, hash) alone: the split,
    no longer the same for a line under both rules, must not be part of it. No two stored rows share a day
    and a hash (under the old rule one line had one split), so the new unique index always builds; a day's
    messages of one split are found through its day prefix. Stored splits are kept: no row is rewritten."""
    _run(
        db,
        [
            "DROP INDEX messages_day_split_hash",
            "CREATE UNIQUE INDEX messages_day_hash ON messages (day, hash)",
        ],
    )


@migrations(name="0701_by_day")
def _by_day(db) -> None:
    """What the memory learned by day, a row per call that read something (daemon/today.py): `through_id`
    the newest message read, `bytes` what it read, `bpb` their cost before it learned them, `rebuilt` 1
    where the overlay was built afresh over checkpoint_id (after a night: the held-out slice first). The
    overlay itself is a file (today.pt); these rows are its history, for `status` and for sqlite3."""
    db.execute(
        f"""CREATE TABLE by_day (
        id INTEGER PRIMARY KEY,
        at TEXT NOT NULL DEFAULT {_NOW},
        checkpoint_id INTEGER NOT NULL,
        through_id INTEGER NOT NULL,
        bytes INTEGER NOT NULL,
        bpb REAL,
        rebuilt INTEGER NOT NULL CHECK (rebuilt = 0 OR rebuilt = 1)
    )"""
    )


@migrations(name="0702_by_day_refused")
def _by_day_refused(db) -> None:
    """by_day.refused: NULL where the call's learning was kept; else the failed checks, as the gate words them
    (daemon/today.py: what it learned made the canary or the facts worse than the checkpoint alone)."""
    db.execute("ALTER TABLE by_day ADD COLUMN refused TEXT")
