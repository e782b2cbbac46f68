"""The database: pragmas, migrations applied once, and the read functions the daemon builds on."""

import random
import sqlite3
import threading

import orjson
import pytest

from engram_ff.ingest.reader import Limits, catch_up
from engram_ff.state import queries
from engram_ff.state.db import open_db
from engram_ff.state.schema import migrations


def line_of(day, session, sender, text):
    record = {"timestamp": f"{day}T10:00:00Z", "session_key": session, "direction": "in", "sender": sender}
    return orjson.dumps({**record, "content": text}) + b"\n"


def write_day(folder, day, lines):
    path = folder / "raw" / f"{day}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as f:
        for session, sender, text in lines:
            f.write(line_of(day, session, sender, text))
    return path


def test_open_creates_folder_and_sets_pragmas(tmp_path):
    db = open_db(tmp_path / "a" / "b" / "state.db")
    pragma = lambda name: db.execute(f"PRAGMA {name}").fetchone()[0]  # noqa: E731
    assert pragma("journal_mode") == "wal"
    assert pragma("synchronous") == 2  # FULL: see state/db.py for why
    assert pragma("foreign_keys") == 1
    assert pragma("busy_timeout") >= 10_000
    assert {"files", "messages", "events", "quarantine"} <= set(db.table_names())
    assert {"event_counts", "day_splits"} <= set(db.view_names())


@pytest.mark.parametrize("round", range(10))  # the race is rare: SQLite once said "locked" to 1 open in 500
def test_migrations_apply_once_even_when_opened_concurrently(tmp_path, round):
    path = tmp_path / "state.db"
    errors = []

    def opener():
        try:
            open_db(path).close()
        except Exception as exc:  # pragma: no cover - what the test is looking for
            errors.append(exc)

    threads = [threading.Thread(target=opener) for _ in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert errors == []
    db = open_db(path)
    names = [m.name for m in migrations.applied(db)]
    assert names == [m.name for m in migrations._migrations] and len(set(names)) == len(names)
    assert migrations.pending(db) == []


def test_cheap_checks_migration_keeps_rows_ids_and_the_id_sequence(tmp_path):
    db = old_database(tmp_path / "state.db", "0101_messages_cheap_checks", messages=5)
    with db.conn:
        db.execute("DELETE FROM messages WHERE id = 5")  # the sequence stays at 5: id 5 is never reused
    before = list(db.execute("SELECT * FROM messages ORDER BY id"))
    db = open_db(tmp_path / "state.db")
    assert list(db.execute("SELECT * FROM messages ORDER BY id")) == before
    assert "split = 'train' OR split = 'probe'" in db["messages"].schema
    write_day(tmp_path, "2026-11-01", [("s", "alice", "new")])
    catch_up(db, tmp_path)
    assert db.execute("SELECT id FROM messages WHERE text = 'new'").fetchone()[0] == 6
    assert [row["messages"] for row in queries.day_splits(db)] != []
    with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
        db.execute(
            "INSERT INTO messages (file_id, line_offset, day, session, role, sender, text, hash, split,"
            " shape) VALUES (1, 0, 'd', 's', 'r', 's', 't', 7, 'test', 'chat')"
        )


def old_database(path, stop_before: str, messages: int):
    """A database migrated up to (not including) stop_before, holding `messages` messages of one file
    and one quarantined line, written as the ingest of that time wrote them (the reader of today needs
    today's schema)."""
    db = open_db(path, migrate=False)
    db.conn.execute("BEGIN IMMEDIATE")
    migrations.apply(db, stop_before=stop_before)
    db.conn.commit()
    with db.conn:
        db.execute("INSERT INTO files (path, committed_offset, size) VALUES ('/w/raw/2026-11-01.jsonl', 99, 99)")
        for i in range(messages):
            db.execute(
                "INSERT INTO messages (file_id, line_offset, day, session, role, sender, text, hash, split, shape)"
                " VALUES (1, ?, ?, 's', 'user', 'alice', ?, ?, ?, 'recorder')",
                [i, f"2026-11-0{1 + i % 2}", f"m{i}", i, "train" if i % 3 else "probe"],
            )
        db.execute(
            "INSERT INTO quarantine (file_id, line_offset, length, reason, excerpt, hash)"
            " VALUES (1, 7, 4, 'bad', 'junk', 42)"
        )
    return db


def test_counts_migration_fills_the_counters_from_the_rows(tmp_path):
    old = old_database(tmp_path / "state.db", "0200_ingest_counts_and_identity", messages=7)
    exact = list(old.execute("SELECT day, split, messages, bytes FROM day_splits ORDER BY day, split"))
    quarantine = list(old.execute("SELECT * FROM quarantine"))
    db = open_db(tmp_path / "state.db")
    assert [tuple(r.values()) for r in queries.day_splits(db)] == exact
    assert [r["messages"] for r in queries.files(db)] == [7]
    assert queries.counts(db)["messages"] == 7 == queries.file_totals(db)["messages"]
    assert list(db.execute("SELECT * FROM quarantine")) == quarantine  # same rows and ids
    write_day(tmp_path, "2026-11-01", [("s", "alice", "after the upgrade")])
    catch_up(db, tmp_path)
    assert queries.counts(db)["messages"] == 8
    assert sum(r["messages"] for r in queries.day_splits(db)) == 8
    assert [tuple(r.values()) for r in queries.day_splits(db)] == list(
        db.execute("SELECT day, split, messages, bytes FROM day_splits ORDER BY day, split")
    )


def test_foreign_keys_are_enforced(tmp_path):
    db = open_db(tmp_path / "state.db")
    with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"):
        db.execute(
            "INSERT INTO messages (file_id, line_offset, day, session, role, sender, text, hash, split,"
            " shape) VALUES (99, 0, 'd', 's', 'r', 's', 't', x'00', 'train', 'chat')"
        )


def test_day_text_groups_sessions_and_respects_max_bytes(tmp_path):
    write_day(tmp_path, "2026-11-27", [("s1", "alice", "one"), ("s2", "carol", "two"), ("s1", "bot", "three")])
    write_day(tmp_path, "2026-11-26", [("s9", "dave", "earlier")])
    db = open_db(tmp_path / "state.db")
    catch_up(db, tmp_path, limits=Limits(probe_fraction=0.0001))  # everything in train
    assert queries.days(db) == ["2026-11-26", "2026-11-27"]
    assert queries.day_text(db, "2026-11-27") == b"alice: one\nbot: three\n\ncarol: two\n"
    assert queries.day_text(db, "2026-11-27", max_bytes=7) == b"alice: "
    assert queries.day_text(db, "2026-11-27", "probe") == b""
    splits = {(r["day"], r["split"]): r["messages"] for r in queries.day_splits(db)}
    assert splits == {("2026-11-26", "train"): 1, ("2026-11-27", "train"): 3}


def test_text_since_orders_like_day_text(tmp_path):
    write_day(tmp_path, "2026-11-27", [("zeta", "z", "first"), ("alpha", "a", "second"), ("zeta", "z", "third")])
    write_day(tmp_path, "2026-11-26", [("s", "u", "the day before")])
    db = open_db(tmp_path / "state.db")
    catch_up(db, tmp_path, limits=Limits(probe_fraction=0.0001))
    since = queries.text_since(db, 0)[0]
    assert since == queries.day_text(db, "2026-11-26") + b"\n" + queries.day_text(db, "2026-11-27")
    assert queries.day_text(db, "2026-11-27") == b"z: first\nz: third\n\na: second\n"


def test_text_since_is_a_cursor_that_loses_nothing(tmp_path):
    write_day(tmp_path, "2026-11-27", [("s", "u", f"message {i}") for i in range(50)])
    db = open_db(tmp_path / "state.db")
    catch_up(db, tmp_path, limits=Limits(probe_fraction=0.0001))
    chunks, cursor = [], 0
    while True:
        data, cursor_next = queries.text_since(db, cursor, max_bytes=40)
        if cursor_next == cursor:
            break
        chunks.append(data)
        cursor = cursor_next
    assert b"".join(chunks) == queries.text_since(db, 0)[0]
    assert cursor == queries.max_message_id(db, "train") == 50
    assert queries.text_between(db, 10, 12) == b"u: message 10\nu: message 11\n"


def test_probe_split_is_about_the_fraction_and_never_in_train_text(tmp_path):
    write_day(tmp_path, "2026-11-27", [("s", "u", f"line number {i}") for i in range(2000)])
    db = open_db(tmp_path / "state.db")
    catch_up(db, tmp_path, limits=Limits(probe_fraction=0.10))
    probe = [r["text"] for r in db.query("SELECT text FROM messages WHERE split = 'probe'")]
    assert 150 < len(probe) < 250
    train_text = queries.text_since(db, 0)[0]
    assert not any(f"u: {t}\n".encode() in train_text for t in probe)
    again = open_db(tmp_path / "other.db")
    catch_up(again, tmp_path, limits=Limits(probe_fraction=0.10))
    assert [r["text"] for r in again.query("SELECT text FROM messages WHERE split = 'probe'")] == probe


def test_a_message_said_again_draws_its_split_again(tmp_path):
    """The split is drawn from the whole line, not the text: a question asked on forty days is held out on
    about four of them, never on all forty (issue 22: a fact's four identical questions were held out
    together), and each copy keeps its split on a re-read."""
    for n in range(40):
        write_day(tmp_path, f"2026-11-{n % 28 + 1:02d}", [(f"s{n}", "u", "What is the name of Victor's boat?")])
    splits = []
    for name in ("state.db", "again.db"):
        db = open_db(tmp_path / name)
        catch_up(db, tmp_path, limits=Limits(probe_fraction=0.10))
        splits.append([r["split"] for r in db.query("SELECT split FROM messages ORDER BY day, session")])
    assert len(splits[0]) == 40 and splits[0] == splits[1]
    assert 1 <= splits[0].count("probe") <= 12


def test_held_out_text_leaves_out_a_copy_the_night_trains(tmp_path):
    """The gate's fresh text (daemon/update.py _judge): a held-out "thanks" whose words the night also
    trains in a train-split copy, or in a held-out copy deferred to tonight, is left out; the rest stays."""
    from engram_ff.ingest.reader import split_of

    def said(day, text, split):
        sessions = (f"s{n}" for n in range(1000))
        return next(s for s in sessions if split_of(line_of(day, s, "u", text)[:-1], 0.10) == split), "u", text

    before, day = "2026-11-26", "2026-11-27"
    write_day(tmp_path, before, [said(before, "thanks", "probe"), said(before, "bye", "probe")])  # deferred to tonight
    tonight = [said(day, "thanks", "train"), said(day, "thanks", "probe"), said(day, "bye", "probe")]
    write_day(tmp_path, day, [*tonight, said(day, "unseen", "probe")])
    db = open_db(tmp_path / "state.db")
    catch_up(db, tmp_path, limits=Limits(probe_fraction=0.10))
    assert queries.text_between(db, 2, 6, split="probe") == b"u: thanks\n\nu: bye\n\nu: unseen\n"
    assert queries.held_out_between(db, 2, 6, 0, 2) == b"u: unseen\n"
    assert queries.held_out_between(db, 2, 6, 0, 0) == b"u: bye\n\nu: unseen\n"  # no bye deferred to tonight


def test_sample_text_is_seeded_and_sized(tmp_path):
    write_day(tmp_path, "2026-11-27", [("s", "u", f"replayed text {i}") for i in range(300)])
    db = open_db(tmp_path / "state.db")
    catch_up(db, tmp_path, limits=Limits(probe_fraction=0.0001))
    a = queries.sample_text(db, 500, max_id=100, seed=1)
    assert len(a) == 500 and a == queries.sample_text(db, 500, max_id=100, seed=1)
    assert a != queries.sample_text(db, 500, max_id=100, seed=2)
    assert b"replayed text 150" not in queries.sample_text(db, 5000, max_id=100, seed=3)
    assert queries.sample_text(db, 500, max_id=0, seed=1) == b""


def test_text_between_streams_the_order_text_since_holds_in_memory(tmp_path):
    """text_between sorts in SQLite what text_since sorts in Python: days in order (ingested out of
    order here), each day's sessions by their first message in the range, a blank line between."""
    write_day(tmp_path, "2026-11-28", [("zeta", "z", "late 1"), ("alpha", "a", "late 2"), ("zeta", "z", "late 3")])
    write_day(tmp_path, "2026-11-27", [("zeta", "z", "first"), ("alpha", "a", "second"), ("zeta", "z", "third")])
    write_day(tmp_path, "2026-11-26", [("s", "u", "the day before"), ("zeta", "z", "same session, other day")])
    db = open_db(tmp_path / "state.db")
    catch_up(db, tmp_path, limits=Limits(probe_fraction=0.0001))
    for first in range(0, 8):
        for last in range(first, 9):
            expected = queries._grouped(
                list(db.query("SELECT * FROM messages WHERE id > ? AND id <= ? ORDER BY id", [first, last]))
            )
            assert queries.text_between(db, first, last) == expected, (first, last)
    assert queries.text_between(db, 0, 8) == queries.text_since(db, 0)[0]
    # a day of many interleaved sessions, the shape of a backlog (each session's first id from a window now)
    rng = random.Random(0)
    write_day(tmp_path, "2026-11-29", [(f"s{rng.randrange(40)}", "u", f"burst {n}") for n in range(400)])
    catch_up(db, tmp_path, limits=Limits(probe_fraction=0.0001))
    rows = list(db.query("SELECT * FROM messages WHERE id > 8 ORDER BY id"))
    assert len(rows) == 400 and queries.text_between(db, 8, rows[-1]["id"]) == queries._grouped(rows)


def test_end_of_night_takes_whole_messages_up_to_the_cap_and_bytes_after_counts_the_rest(tmp_path):
    write_day(tmp_path, "2026-11-27", [("s", "u", f"message {i}") for i in range(50)])  # 13 or 14 bytes a line
    db = open_db(tmp_path / "state.db")
    catch_up(db, tmp_path, limits=Limits(probe_fraction=0.0001))
    assert queries.end_of_night(db, 0, 40) == 4  # 13 bytes a line: the fourth reaches 40, and is taken whole
    assert len(queries.text_between(db, 0, 4)) == 52
    assert queries.bytes_after(db, 4) == 6 * 13 + 40 * 14 == len(queries.text_between(db, 4, 50))
    assert queries.end_of_night(db, 4, 10_000) == 50  # less than the cap: all of it
    assert queries.end_of_night(db, 50, 40) == 50 and queries.bytes_after(db, 50) == 0  # nothing new


def test_the_wal_shrinks_back_after_a_reader_held_it_open(tmp_path, monkeypatch):
    """A reader's snapshot keeps SQLite from checkpointing past it, so the WAL grows while it is held
    (issue #16: 237 MB beside a 55 MB database); once it is gone, the next commits cut the file back to
    WAL_LIMIT_BYTES instead of leaving it at its largest for good."""
    from engram_ff.state import db as db_module

    monkeypatch.setattr(db_module, "WAL_LIMIT_BYTES", 1 << 20)
    db = open_db(tmp_path / "state.db")
    reader = sqlite3.connect(tmp_path / "state.db", isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM messages").fetchone()  # the snapshot is taken here
    for day in range(1, 6):
        write_day(tmp_path, f"2026-11-0{day}", [("s", "u", f"{day}: " + "text " * 40 + str(i)) for i in range(4000)])
    catch_up(db, tmp_path)
    wal = tmp_path / "state.db-wal"
    grown = wal.stat().st_size
    # past the limit, and past the 1,000 pages at which a commit checkpoints (SQLite's wal_autocheckpoint): a
    # WAL below those is left as it is, a checkpoint being what lets the next commit start it over and cut it
    page_size, autocheckpoint = (
        db.execute(f"PRAGMA {name}").fetchone()[0] for name in ("page_size", "wal_autocheckpoint")
    )
    assert grown > max(2 << 20, 1.5 * autocheckpoint * page_size)
    reader.execute("COMMIT")
    reader.close()
    for n in range(3):  # a commit checkpoints the WAL; the one after it starts the WAL over and cuts it
        write_day(tmp_path, "2026-11-04", [("s", "u", f"after {n}")])
        catch_up(db, tmp_path)
    assert wal.stat().st_size <= 1 << 20, (grown, wal.stat().st_size)


def test_the_counters_read_only_the_rows_a_commit_added(tmp_path):
    """day_counts is kept by an aggregate over the rows of each commit: it must find them by id range,
    never by scanning the (day, hash) index, or every commit would cost the whole table."""
    from engram_ff.state import files

    db = open_db(tmp_path / "state.db")
    plan = " ".join(row[3] for row in db.execute("EXPLAIN QUERY PLAN " + files._COUNT_DAYS, [0]))
    assert "INTEGER PRIMARY KEY (rowid>?)" in plan and "SCAN messages" not in plan
    identity = " ".join(
        row[3] for row in db.execute("EXPLAIN QUERY PLAN SELECT * FROM files WHERE device = 1 AND inode = 2")
    )
    assert "files_identity" in identity


def test_deferred_text_puts_each_held_out_message_between_its_neighbours(tmp_path):
    """What a night trains of the probe split (state/schema.py 0600): each message in (first, last] with the
    message before and after it in its session as context; a probe message after `last` (held out of
    tonight) is never context; rows not said one after the other stand apart, a blank line between."""
    from engram_ff.ingest.reader import split_of

    def texts(split, session):
        candidates = (f"{split} text {n}" for n in range(10_000))
        return (t for t in candidates if split_of(line_of(day, session, "al", t)[:-1], 0.10) == split)

    day = "2026-11-27"
    train, probe = texts("train", "s"), texts("probe", "s")
    a, c, d, e, f = (next(train) for _ in range(5))
    b = next(texts("train", "u"))
    p1, p2, p3 = (next(probe) for _ in range(3))
    said = [("s", a), ("s", p1), ("u", b), ("s", c), ("s", d), ("s", e), ("s", f), ("s", p2), ("s", p3)]
    write_day(tmp_path, day, [(session, "al", text) for session, text in said])
    db = open_db(tmp_path / "state.db")
    catch_up(db, tmp_path)
    ids = {row["text"]: row["id"] for row in db.query("SELECT id, text FROM messages")}
    assert queries.deferred_text(db, 0, ids[p2]) == f"al: {a}\nal: {p1}\nal: {c}\n\nal: {f}\nal: {p2}\n".encode()
    assert queries.deferred_text(db, ids[p1], ids[p3]) == f"al: {f}\nal: {p2}\nal: {p3}\n".encode()
    assert queries.deferred_text(db, ids[p3], ids[p3]) == b""
    assert queries.held_out_through(db, ids[f]) == ids[p3]  # the probe messages that end the day
    assert queries.held_out_through(db, ids[b]) == ids[c] - 1
