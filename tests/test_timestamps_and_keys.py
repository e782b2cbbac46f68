"""Migrations 0400 and 0401 on a real database written before them: one timestamp format, and the
checkpoint columns of runs as foreign keys, with every row kept."""

import re
import sqlite3

import pytest
from sqlite_utils.migrations import Migrations

from engram_ff.state import runs, schema
from engram_ff.state.db import connect, open_db

ONE_FORMAT = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def database_before_0400(path):
    """What a database looked like before these migrations: the older ones applied, timestamps as runs.now()
    wrote them then (seconds and +00:00)."""
    import sqlite_utils

    db = sqlite_utils.Database(connect(path))
    older = Migrations("engram-ff")
    older._migrations = [m for m in schema.migrations._migrations if m.name < "0400"]
    older.apply(db)
    with db.conn:
        db.execute(
            "INSERT INTO runs (id, kind, started_at, ended_at, status) VALUES "
            "(1, 'update', '2026-11-27T06:27:08+00:00', '2026-11-27T06:30:00+00:00', 'ok'),"
            "(2, 'update', '2026-11-28T01:00:00+01:00', NULL, 'running')"
        )
        db.execute(
            "INSERT INTO checkpoints (id, run_id, path, sha256, kind, steps, status, created_at) "
            "VALUES (1, 1, 'c.pt', 'x', 'final', 3, 'good', '2026-11-27T06:29:59+00:00')"
        )
        db.execute("UPDATE runs SET checkpoint_id = 1 WHERE id = 1")
        db.execute(
            "INSERT INTO probe_scores (run_id, checkpoint_id, probe, kind, metric, value, recorded_at) "
            "VALUES (1, 1, 'f', 'fact', 'answer_rank', 1, '2026-11-27T06:31:00+00:00')"
        )
    db.close()


def test_old_rows_get_the_one_format_and_keep_their_moment(tmp_path):
    database_before_0400(tmp_path / "x.db")
    db = open_db(tmp_path / "x.db")
    stamps = db.execute(
        "SELECT started_at, ended_at FROM runs UNION ALL SELECT created_at, NULL FROM checkpoints "
        "UNION ALL SELECT recorded_at, NULL FROM probe_scores"
    ).fetchall()
    values = [v for row in stamps for v in row if v is not None]
    assert len(values) == 5 and all(ONE_FORMAT.match(v) for v in values), values
    # +01:00 is converted to UTC, not relabelled
    assert db.execute("SELECT started_at FROM runs WHERE id = 2").fetchone()[0] == "2026-11-28T00:00:00.000Z"
    assert db.execute("SELECT started_at FROM runs WHERE id = 1").fetchone()[0] == "2026-11-27T06:27:08.000Z"
    assert ONE_FORMAT.match(runs.now())
    ingest_default = db.execute("SELECT strftime('%Y-%m-%dT%H:%M:%fZ', 'now')").fetchone()[0]
    assert ONE_FORMAT.match(ingest_default)


def test_checkpoint_columns_of_runs_are_foreign_keys(tmp_path):
    database_before_0400(tmp_path / "x.db")
    db = open_db(tmp_path / "x.db")
    keys = {(row[3], row[2]) for row in db.execute("PRAGMA foreign_key_list(runs)")}
    assert {("checkpoint_id", "checkpoints"), ("parent_checkpoint_id", "checkpoints")} <= keys
    assert db.execute("SELECT checkpoint_id FROM runs WHERE id = 1").fetchone()[0] == 1  # rows kept
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"), db.conn:
        db.execute("UPDATE runs SET parent_checkpoint_id = 99 WHERE id = 1")
    # the CHECK on status survives the edit of the table's definition
    with pytest.raises(sqlite3.IntegrityError, match="CHECK"), db.conn:
        db.execute("UPDATE runs SET status = 'nonsense' WHERE id = 1")


def test_a_fresh_database_has_them_too(tmp_path):
    db = open_db(tmp_path / "fresh.db")
    keys = {row[3] for row in db.execute("PRAGMA foreign_key_list(runs)")}
    assert {"checkpoint_id", "parent_checkpoint_id"} <= keys
