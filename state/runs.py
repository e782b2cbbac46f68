"""Updates, checkpoints and probe scores: the rows the nightly job writes and users query with sqlite3."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import orjson
import sqlite_utils


def now() -> str:
    """UTC with milliseconds and a Z: the format SQLite's defaults write in the ingest tables (migration 0400)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


_NEXT_NUMBER = "(SELECT coalesce(max(number), 0) + 1 FROM runs WHERE kind = ?)"  # runs.number (migration 0601)


def start_run(db: sqlite_utils.Database, kind: str = "update", resumed_from: int | None = None) -> int:
    with db.conn:
        cursor = db.execute(
            "INSERT INTO runs (kind, number, started_at, status, pid, resumed_from) VALUES (?, "
            f"{_NEXT_NUMBER}, ?, 'running', ?, ?)",
            [kind, kind, now(), os.getpid(), resumed_from],
        )
    assert cursor.lastrowid is not None, "an INSERT sets lastrowid"
    return cursor.lastrowid


def finish_run(db: sqlite_utils.Database, run_id: int, status: str, **fields: object) -> None:
    """Close a run; `layer_losses` and other lists are stored as JSON text."""
    values = _as_columns(fields)
    values.update(status=status, ended_at=now())
    columns = ", ".join(f"{k} = ?" for k in values)
    with db.conn:
        db.execute(f"UPDATE runs SET {columns} WHERE id = ?", [*values.values(), run_id])


def _as_columns(fields: dict) -> dict:
    """Lists and dicts as JSON text (inf and NaN become null)."""
    return {k: (orjson.dumps(v).decode() if isinstance(v, (list, dict)) else v) for k, v in fields.items()}


JSON_COLUMNS = ("gate", "layer_losses")  # runs' columns that hold JSON text


def decoded(row: dict | None) -> dict | None:
    """A runs row with its JSON columns as the objects they hold, for `--json`: a script reads
    `"gate": {"decision": ...}`, not a string it must parse again."""
    if row is None:
        return None
    out = dict(row)
    for column in JSON_COLUMNS:
        if isinstance(out.get(column), str):
            with contextlib.suppress(orjson.JSONDecodeError):  # not JSON after all: shown as stored
                out[column] = orjson.loads(out[column])
    return out


def interrupt_own_runs(db: sqlite_utils.Database, error: str) -> list[int]:
    """Mark this process's running runs interrupted (an update given up at once by a second Ctrl-C)."""
    ids = [r["id"] for r in db.query("SELECT id FROM runs WHERE status = 'running' AND pid = ?", [os.getpid()])]
    with db.conn:
        for run_id in ids:
            db.execute(
                "UPDATE runs SET status = 'interrupted', ended_at = ?, error = ? WHERE id = ?", [now(), error, run_id]
            )
    return ids


def mark_dead_runs_interrupted(db: sqlite_utils.Database) -> list[int]:
    """A run still 'running' whose process is gone was killed (power loss, SIGKILL): say so."""
    dead = [
        row["id"]
        for row in db.query("SELECT id, pid, started_at FROM runs WHERE status = 'running'")
        if not _alive(row["pid"], row["started_at"])
    ]
    with db.conn:
        for run_id in dead:
            db.execute(
                "UPDATE runs SET status = 'interrupted', ended_at = ?, error = ? WHERE id = ?",
                [now(), "the process died before the run finished", run_id],
            )
    return dead


def _alive(pid: int | None, started_at: str) -> bool:
    """Is the process that started the run still running? Not if it is a zombie (killed, not yet reaped),
    nor if the pid now belongs to a process started after the run: after a reboot pids are reused."""
    if not pid or pid == os.getpid():
        return pid == os.getpid()
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    if fields[0] in ("Z", "X"):
        return False
    age = time.clock_gettime(time.CLOCK_BOOTTIME) - int(fields[19]) / os.sysconf("SC_CLK_TCK")
    return time.time() - age <= datetime.fromisoformat(started_at).timestamp() + 1.0


def get_run(db: sqlite_utils.Database, run_id: int) -> dict:
    return next(db.query("SELECT * FROM runs WHERE id = ?", [run_id]))


def update_runs_newest_first(db: sqlite_utils.Database) -> Iterator[dict]:
    return db.query("SELECT id, status FROM runs WHERE kind = 'update' ORDER BY id DESC")


def last_update(db: sqlite_utils.Database) -> dict | None:
    """The newest update run, whatever its status."""
    rows = list(db.query("SELECT * FROM runs WHERE kind = 'update' ORDER BY id DESC LIMIT 1"))
    return rows[0] if rows else None


def last_successful_update(db: sqlite_utils.Database) -> dict | None:
    rows = list(db.query("SELECT * FROM runs WHERE kind = 'update' AND status = 'ok' ORDER BY id DESC LIMIT 1"))
    return rows[0] if rows else None


def trained_through(db: sqlite_utils.Database) -> int:
    """The highest message id any successful (promoted) update trained on, or that an adopted checkpoint
    counts as trained (an 'adopt' run, see adopt_checkpoints): the next update starts after it, so the
    messages of a rejected night are trained on again by the next one."""
    return db.execute(
        "SELECT coalesce(max(last_message_id), 0) FROM runs WHERE kind IN ('update', 'adopt') AND status = 'ok'"
    ).fetchone()[0]


def deferred_through(db: sqlite_utils.Database) -> int:
    """How far the probe split has been trained: every probe-split message with an id up to this was trained
    by a promoted update, or by an adopted checkpoint (0 before any, and for runs older than migration 0602,
    which trained none). The next update trains those after it, up to its own first id; a rejected night's
    are trained again by the next one, as its new text is."""
    return db.execute(
        "SELECT coalesce(max(deferred_last_id), 0) FROM runs WHERE kind IN ('update', 'adopt') AND status = 'ok'"
    ).fetchone()[0]


def begin_checkpoint_write(db: sqlite_utils.Database, path: str, run_id: int) -> None:
    """Name a checkpoint file before writing it, so that if the write is killed the file is known as ours."""
    with db.conn:
        db.execute("INSERT INTO checkpoint_writes (path, run_id, started_at) VALUES (?, ?, ?)", [path, run_id, now()])


def unfinished_checkpoint_writes(db: sqlite_utils.Database) -> list[str]:
    return [path for (path,) in db.execute("SELECT path FROM checkpoint_writes")]


def forget_checkpoint_write(db: sqlite_utils.Database, path: str) -> None:
    with db.conn:
        db.execute("DELETE FROM checkpoint_writes WHERE path = ?", [path])


def add_checkpoint(
    db: sqlite_utils.Database,
    *,
    run_id: int,
    path: str,
    sha256: str,
    kind: str,
    parent_id: int | None,
    steps: int,
    status: str = "good",
) -> int:
    """The row of a complete checkpoint file; it replaces the file's begin_checkpoint_write in one transaction."""
    with db.conn:
        cursor = db.execute(
            "INSERT INTO checkpoints (run_id, path, sha256, kind, parent_id, steps, status, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [run_id, path, sha256, kind, parent_id, steps, status, now()],
        )
        db.execute("DELETE FROM checkpoint_writes WHERE path = ?", [path])
    assert cursor.lastrowid is not None, "an INSERT sets lastrowid"
    return cursor.lastrowid


def knows_checkpoints(db: sqlite_utils.Database) -> bool:
    """Has this database ever recorded a checkpoint, whatever became of it?"""
    return db.execute("SELECT EXISTS (SELECT 1 FROM checkpoints)").fetchone()[0] == 1


def adopt_checkpoints(
    db: sqlite_utils.Database, files: list[dict], trained_through_id: int, deferred_through_id: int = 0
) -> int:
    """Record checkpoint files an earlier database wrote (`files`: path, sha256, kind, steps; oldest first,
    so the newest final gets the highest id and is current) under one 'adopt' run, which counts train-split
    messages up to trained_through_id, and probe-split ones up to deferred_through_id, as trained. One
    transaction: a crash leaves all of it or none. Returns the run id."""
    stamp = now()
    with db.conn:
        run_id = db.execute(
            "INSERT INTO runs (kind, number, started_at, ended_at, status, pid, first_message_id, last_message_id, "
            f"deferred_first_id, deferred_last_id) VALUES ('adopt', {_NEXT_NUMBER}, ?, ?, 'ok', ?, 0, ?, 0, ?)",
            ["adopt", stamp, stamp, os.getpid(), trained_through_id, deferred_through_id],
        ).lastrowid
        for f in files:
            checkpoint_id = db.execute(
                "INSERT INTO checkpoints (run_id, path, sha256, kind, parent_id, steps, status, created_at) "
                "VALUES (?, ?, ?, ?, NULL, ?, 'good', ?)",
                [run_id, f["path"], f["sha256"], f["kind"], f["steps"], stamp],
            ).lastrowid
            if f["kind"] == "final":
                db.execute("UPDATE runs SET checkpoint_id = ? WHERE id = ?", [checkpoint_id, run_id])
    assert run_id is not None, "an INSERT sets lastrowid"
    return run_id


def get_checkpoint(db: sqlite_utils.Database, checkpoint_id: int) -> dict:
    return next(db.query("SELECT * FROM checkpoints WHERE id = ?", [checkpoint_id]))


def good_checkpoints(db: sqlite_utils.Database, kind: str = "final") -> list[dict]:
    """Newest first: the first that loads is the current model."""
    return checkpoints_with_status(db, kind, "good")


def checkpoints_with_status(db: sqlite_utils.Database, kind: str, status: str) -> list[dict]:
    """Newest first."""
    return list(db.query("SELECT * FROM checkpoints WHERE kind = ? AND status = ? ORDER BY id DESC", [kind, status]))


# The final checkpoints that were ever the current model: their update ended 'ok' (promoted), whatever
# became of them since (pruned, corrupt). A candidate the gate rejected, or never judged, was not.
_PROMOTED = "SELECT c.id FROM checkpoints c JOIN runs r ON r.id = c.run_id WHERE c.kind = 'final' AND r.status = 'ok'"


def model_existed(db: sqlite_utils.Database) -> bool:
    """Has any update ever promoted a model (whatever became of its file since)?"""
    return db.execute(f"SELECT EXISTS ({_PROMOTED})").fetchone()[0] == 1


def settle_update(
    db: sqlite_utils.Database, run_id: int, *, promoted: bool, checkpoint_id: int, gate: dict, **fields: object
) -> None:
    """The gate's decision in one transaction: the run ends 'ok' or 'rejected' with the decision as JSON,
    and its candidate checkpoint becomes 'good' (the current model) or 'rejected'. A crash before the
    commit leaves the candidate unpromoted and the previous model current; after it, all of the decision."""
    values = _as_columns(dict(fields, checkpoint_id=checkpoint_id, gate=gate))
    values.update(status="ok" if promoted else "rejected", ended_at=now())
    columns = ", ".join(f"{k} = ?" for k in values)
    with db.conn:
        db.execute(f"UPDATE runs SET {columns} WHERE id = ?", [*values.values(), run_id])
        db.execute(
            "UPDATE checkpoints SET status = ? WHERE id = ?", ["good" if promoted else "rejected", checkpoint_id]
        )


def rejected_in_a_row(db: sqlite_utils.Database) -> int:
    """Updates rejected by the gate since the last promoted one (the backlog they leave grows)."""
    return db.execute(
        "SELECT count(*) FROM runs WHERE kind = 'update' AND status = 'rejected' AND id > "
        "(SELECT coalesce(max(id), 0) FROM runs WHERE kind = 'update' AND status = 'ok')"
    ).fetchone()[0]


def current_candidates(db: sqlite_utils.Database) -> list[dict]:
    """Final checkpoints newest first, the good and the promoted ones found corrupt (checked again, in case
    the file was restored; a candidate the gate never promoted stays out): the first that loads is the
    current model."""
    return list(
        db.query(
            "SELECT * FROM checkpoints WHERE kind = 'final' AND "
            f"(status = 'good' OR (status = 'corrupt' AND id IN ({_PROMOTED}))) ORDER BY id DESC"
        )
    )


def checkpoint_paths(db: sqlite_utils.Database) -> list[str]:
    """Every checkpoint file the database names, whatever its status."""
    return [path for (path,) in db.execute("SELECT path FROM checkpoints")]


def current_checkpoint(db: sqlite_utils.Database) -> dict | None:
    """The newest good final checkpoint's row (the current model, if its file loads)."""
    rows = good_checkpoints(db, "final")
    return rows[0] if rows else None


def set_checkpoint_status(db: sqlite_utils.Database, checkpoint_id: int, status: str) -> None:
    with db.conn:
        db.execute("UPDATE checkpoints SET status = ? WHERE id = ?", [status, checkpoint_id])


def record_scores(db: sqlite_utils.Database, rows: list[dict]) -> None:
    """All of one probe pass in one transaction, so a reader never sees half of it."""
    stamp = now()
    with db.conn:
        db.conn.executemany(
            "INSERT INTO probe_scores (run_id, checkpoint_id, probe, kind, day, metric, value, text_hash, recorded_at) "
            "VALUES (:run_id, :checkpoint_id, :probe, :kind, :day, :metric, :value, :text_hash, :recorded_at)",
            [{"day": None, "text_hash": None, **row, "recorded_at": stamp} for row in rows],
        )


def record_by_day(db: sqlite_utils.Database, **row: object) -> None:
    """One call of the day's learning that read something (state/schema.py 0701)."""
    with db.conn:
        db.conn.execute(
            "INSERT INTO by_day (at, checkpoint_id, through_id, bytes, bpb, rebuilt, refused) "
            "VALUES (:at, :checkpoint_id, :through_id, :bytes, :bpb, :rebuilt, :refused)",
            {"refused": None, **row, "at": now()},
        )


def by_day_since(db: sqlite_utils.Database, checkpoint_id: int) -> dict | None:
    """What the memory has learned by day over a checkpoint: calls kept, their bytes and mean bits per byte
    before learning, the newest message read and when, and the calls refused with the newest one's reason;
    None if nothing yet."""
    kept = "CASE WHEN refused IS NULL THEN bytes END"
    row = db.execute(
        f"SELECT count(*), count(*) - count(refused), coalesce(sum({kept}), 0), sum({kept} * bpb) / sum({kept}),"
        " max(through_id), max(at), count(refused),"
        " (SELECT refused FROM by_day WHERE checkpoint_id = :c AND refused IS NOT NULL ORDER BY id DESC LIMIT 1)"
        " FROM by_day WHERE checkpoint_id = :c AND bytes > 0",
        {"c": checkpoint_id},
    ).fetchone()
    if not row[0]:
        return None
    names = ("calls", "bytes", "bpb", "through_id", "at", "refused", "refused_why")
    return dict(checkpoint_id=checkpoint_id, **dict(zip(names, row[1:])))


def latest_probe_pass(db: sqlite_utils.Database) -> list[dict]:
    """Every score of the newest probe pass."""
    return list(db.query("SELECT * FROM probe_scores WHERE run_id = (SELECT max(run_id) FROM probe_scores)"))


def newest_pass(db: sqlite_utils.Database, checkpoint_id: int) -> list[dict]:
    """Every score of the newest probe pass of one checkpoint (none if it was never probed)."""
    return list(
        db.query(
            "SELECT * FROM probe_scores WHERE checkpoint_id = ? AND run_id = "
            "(SELECT max(run_id) FROM probe_scores WHERE checkpoint_id = ?) ORDER BY id",
            [checkpoint_id, checkpoint_id],
        )
    )


def probe_passes(db: sqlite_utils.Database, limit: int) -> list[dict]:
    """The newest `limit` probe passes, newest first: run, checkpoint, when, and the status and number of the
    update that wrote the checkpoint ('ok': the gate promoted it, 'rejected', or 'running' while it judges) and
    its prequential score (the night's new text, scored by the model it started from before training)."""
    return list(
        db.query(
            "SELECT s.run_id, s.checkpoint_id, min(s.recorded_at) AS recorded_at, r.status AS update_status, "
            "CASE WHEN r.kind = 'update' THEN r.number END AS update_number, r.prequential_bpb "
            "FROM probe_scores s LEFT JOIN checkpoints c ON c.id = s.checkpoint_id LEFT JOIN runs r ON r.id = c.run_id "
            "GROUP BY s.run_id ORDER BY s.run_id DESC LIMIT ?",
            [limit],
        )
    )


def pass_scores(
    db: sqlite_utils.Database, run_id: int, *, kind: str | None = None, metric: str | None = None
) -> list[dict]:
    """One probe pass's scores, of one kind or metric if given."""
    where = "run_id = ?"
    params: list[object] = [run_id]
    if kind is not None:
        where, params = where + " AND kind = ?", params + [kind]
    if metric is not None:
        where, params = where + " AND metric = ?", params + [metric]
    return list(db.query(f"SELECT * FROM probe_scores WHERE {where} ORDER BY id", params))


def best_earlier(db: sqlite_utils.Database, metric: str, before_checkpoint: int) -> dict[str, float]:
    """Per day, the best (lowest) score any earlier promoted checkpoint had: the reference for forgetting (a
    candidate the gate rejected was never the user's model)."""
    return {
        row["day"]: row["best"]
        for row in db.query(
            "SELECT day, min(value) AS best FROM probe_scores WHERE metric = ? AND checkpoint_id < ? "
            f"AND day IS NOT NULL AND checkpoint_id IN ({_PROMOTED}) GROUP BY day",
            [metric, before_checkpoint],
        )
    }


def first_scores(db: sqlite_utils.Database, metric: str) -> dict[str, float]:
    """Per day, its score the first time a promoted model was probed on it, i.e. right after the update
    that learned it."""
    return {
        row["day"]: row["value"]
        for row in db.query(
            "SELECT day, value FROM probe_scores WHERE metric = ? AND day IS NOT NULL AND id IN "
            "(SELECT min(id) FROM probe_scores WHERE metric = ? AND day IS NOT NULL "
            f"AND checkpoint_id IN ({_PROMOTED}) GROUP BY day)",
            [metric, metric],
        )
    }


def last_trained_update(db: sqlite_utils.Database) -> dict | None:
    """The newest update that finished training: promoted ('ok') or, with a promotion gate, 'rejected'."""
    rows = list(
        db.query("SELECT * FROM runs WHERE kind = 'update' AND status IN ('ok', 'rejected') ORDER BY id DESC LIMIT 1")
    )
    return rows[0] if rows else None


def promoted_updates_before(db: sqlite_utils.Database, run_id: int, limit: int) -> list[dict]:
    """The `limit` newest promoted updates before `run_id`, newest first: the nights the current model holds."""
    return list(
        db.query(
            "SELECT * FROM runs WHERE kind = 'update' AND status = 'ok' AND id < ? ORDER BY id DESC LIMIT ?",
            [run_id, limit],
        )
    )


def updates_after(db: sqlite_utils.Database, run_id: int) -> list[dict]:
    return list(db.query("SELECT * FROM runs WHERE kind = 'update' AND id > ? ORDER BY id", [run_id]))


def checkpoint_scores(db: sqlite_utils.Database, checkpoint_id: int | None) -> list[dict]:
    """Every score of the newest probe pass on one checkpoint ([] if it was never probed)."""
    if checkpoint_id is None:
        return []
    return list(
        db.query(
            "SELECT * FROM probe_scores WHERE run_id = (SELECT max(run_id) FROM probe_scores WHERE checkpoint_id = ?)",
            [checkpoint_id],
        )
    )


def held_out_by_pass(db: sqlite_utils.Database) -> list[dict]:
    """Per probe pass, oldest first: when, the newest day's held-out bits per byte (what the update just
    learned) and the mean over the older days (what it had to keep)."""
    return list(
        db.query("""
        WITH p AS (SELECT run_id, recorded_at, day, value FROM probe_scores WHERE metric = 'probe_bpb'
                   AND day IS NOT NULL),
             n AS (SELECT run_id, max(day) AS newest FROM p GROUP BY run_id)
        SELECT p.run_id, min(p.recorded_at) AS recorded_at, n.newest AS newest_day,
               max(CASE WHEN p.day = n.newest THEN p.value END) AS new_day_bpb,
               avg(CASE WHEN p.day < n.newest THEN p.value END) AS old_days_bpb,
               count(*) - 1 AS old_days
        FROM p JOIN n USING (run_id) GROUP BY p.run_id ORDER BY p.run_id""")
    )


def fact_scores(db: sqlite_utils.Database) -> list[dict]:
    """Every fact probe's score, oldest pass first: run, when, fact, metric, value."""
    return list(
        db.query(
            "SELECT run_id, recorded_at, probe AS fact, metric, value FROM probe_scores WHERE kind = 'fact'"
            " ORDER BY run_id, id"
        )
    )


def finished_updates(db: sqlite_utils.Database) -> list[dict]:
    """Every update that ended, oldest first: what the history plot marks as a night's decision."""
    return list(db.query("SELECT * FROM runs WHERE kind = 'update' AND ended_at IS NOT NULL ORDER BY id"))


def running_runs(db: sqlite_utils.Database) -> list[dict]:
    """Runs still marked running, each with whether its process is still alive (read-only: nothing is
    marked; `mark_dead_runs_interrupted` does that when a writer opens the database)."""
    rows = list(db.query("SELECT * FROM runs WHERE status = 'running' ORDER BY id"))
    return [{**row, "alive": _alive(row["pid"], row["started_at"])} for row in rows]
