"""The running watcher with the real watchdog observer: start-up scan, appends, new folders, rescans."""

import os
import time

import orjson
import pytest

from engram_ff.ingest import watcher as watcher_module
from engram_ff.ingest.watcher import Watcher
from engram_ff.state.db import open_db


def line(text: str) -> bytes:
    return (
        orjson.dumps(
            {
                "timestamp": "2026-11-27T10:00:00Z",
                "session_key": "s",
                "direction": "in",
                "sender": "alice",
                "content": text,
            }
        )
        + b"\n"
    )


def append(path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as f:
        f.write(data)


def wait_for(db, n: int, timeout: float = 10.0) -> list[str]:
    """Poll the database until it holds n messages (fails after timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        texts = [r[0] for r in db.execute("SELECT text FROM messages ORDER BY id")]
        if len(texts) >= n or time.monotonic() > deadline:
            assert len(texts) == n, f"expected {n} messages, have {texts}"
            return texts
        time.sleep(0.01)


def eventually(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


@pytest.fixture
def setup(tmp_path):
    folder = tmp_path / "engram"
    db_path = tmp_path / "state.db"
    started = []

    def start(**options):
        options = {"debounce_s": 0.02, "rescan_s": 60.0, **options}
        w = Watcher(db_path, folder, **options)
        w.start()
        started.append(w)
        return w

    yield folder, open_db(db_path), start
    for w in started:
        w.stop()


def test_existing_files_then_appends_then_new_folders(setup):
    folder, db, start = setup
    daily = folder / "raw" / "2026-11-26.jsonl"
    append(daily, line("already there"))
    w = start()
    assert wait_for(db, 1) == ["already there"]
    append(daily, line("appended"))
    wait_for(db, 2)
    append(daily, line("half")[:10])
    time.sleep(0.2)
    assert len(wait_for(db, 2)) == 2  # the half line waits
    append(daily, line("half")[10:])
    wait_for(db, 3)
    append(folder / "raw" / "2026" / "11" / "2026-11-27.jsonl", line("new folder"))
    assert wait_for(db, 4)[-1] == "new folder"
    assert w.healthy()
    eventually(lambda: w.stats.messages == 4)  # the stats follow the commit
    assert w.stats.scans >= 1
    assert "ingested 4 messages" in w.status_line()


def test_a_burst_of_appends_is_stored_exactly_once(setup):
    folder, db, start = setup
    start()
    daily = folder / "raw" / "2026-11-27.jsonl"
    for i in range(300):
        append(daily, line(f"burst {i}"))
    texts = wait_for(db, 300)
    assert texts == [f"burst {i}" for i in range(300)]


def test_polling_mode(setup):
    folder, db, start = setup
    start(polling=True)
    append(folder / "raw" / "2026-11-27.jsonl", line("seen by polling"))
    assert wait_for(db, 1, timeout=10) == ["seen by polling"]


def test_the_periodic_rescan_covers_lost_events(setup, monkeypatch):
    folder, db, start = setup
    monkeypatch.setattr(watcher_module._Handler, "on_any_event", lambda self, event: None)  # inotify lost all
    start(rescan_s=0.2)
    append(folder / "raw" / "2026-11-27.jsonl", line("found by rescan"))
    assert wait_for(db, 1, timeout=5) == ["found by rescan"]


def test_unhealthy_while_the_database_keeps_refusing_then_recovers(setup, monkeypatch):
    folder, db, start = setup
    monkeypatch.setattr(watcher_module, "RETRY_BASE_S", 0.01)
    w = start()
    db.execute("CREATE TRIGGER refuse BEFORE INSERT ON messages BEGIN SELECT RAISE(ABORT, 'refused'); END")
    db.conn.commit()
    append(folder / "raw" / "2026-11-27.jsonl", line("x0") + line("x1"))
    eventually(lambda: w.stats.failures >= watcher_module.UNHEALTHY_AFTER_FAILURES)
    assert not w.healthy() and "refused" in w.status_line()
    db.execute("DROP TRIGGER refuse")
    db.conn.commit()
    assert wait_for(db, 2) == ["x0", "x1"]  # retried on its own, stored once
    eventually(w.healthy)


def test_stop_ends_both_threads_and_start_fails_clearly(tmp_path):
    w = Watcher(tmp_path / "state.db", tmp_path / "engram", debounce_s=0.02)
    w.start()
    assert w.healthy()
    w.stop()
    assert not w.healthy()
    (tmp_path / "not-a-folder").write_text("")
    bad = Watcher(tmp_path / "not-a-folder" / "state.db", tmp_path / "engram2")
    with pytest.raises(RuntimeError, match="could not open"):
        bad.start(timeout=10)
    assert not os.path.exists(tmp_path / "engram2" / "state.db")


def test_stop_during_a_backlog_returns_promptly_and_loses_nothing(tmp_path, monkeypatch):
    from engram_ff.ingest import reader

    monkeypatch.setattr(reader, "BATCH_LINES", 500)
    folder, db_path = tmp_path / "engram", tmp_path / "state.db"
    for day in range(4):
        append(folder / "raw" / f"2026-11-2{day}.jsonl", b"".join(line(f"{day}/{i}") for i in range(20_000)))
    w = Watcher(db_path, folder, debounce_s=0.02)
    w.start()
    db = open_db(db_path)
    eventually(lambda: db.execute("SELECT count(*) FROM messages").fetchone()[0] > 0)
    started = time.monotonic()
    w.stop()
    assert time.monotonic() - started < 2.0
    stored = db.execute("SELECT count(*) FROM messages").fetchone()[0]
    assert 0 < stored < 80_000
    assert w.stats.scans == 0  # the start-up scan did not finish, and does not count
    again = Watcher(db_path, folder, debounce_s=0.02)
    again.start()
    try:
        wait_for_count(db, 80_000)
        eventually(lambda: again.stats.scans == 1)
    finally:
        again.stop()
    assert db.execute("SELECT count(DISTINCT text) FROM messages").fetchone()[0] == 80_000


def wait_for_count(db, n: int, timeout: float = 60.0) -> None:
    eventually(lambda: db.execute("SELECT count(*) FROM messages").fetchone()[0] >= n, timeout)
    assert db.execute("SELECT count(*) FROM messages").fetchone()[0] == n


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_a_database_deleted_or_replaced_under_the_watcher_is_opened_again_and_refilled(setup, caplog, how):
    """Issue #20.12: with its database file deleted, a running daemon logged `no such table: files` and
    retried for ever. Now the next event opens it again, migrated, and every file is read into it."""
    folder, db, start = setup
    db_path = db.conn.execute("PRAGMA database_list").fetchone()[2]
    db.close()
    daily = folder / "raw" / "2026-11-26.jsonl"
    append(daily, line("before"))
    start()
    first = open_db(db_path)
    wait_for(first, 1)
    first.close()
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(db_path + suffix):
            os.unlink(db_path + suffix)
    if how == "replaced":
        open(db_path, "wb").close()  # an empty file at the name: no tables at all
    append(daily, line("after"))
    eventually(lambda: os.path.getsize(db_path) if os.path.exists(db_path) else 0, 30)  # the watcher's, not ours
    again = open_db(db_path, migrate=False)
    eventually(lambda: again.conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'messages'").fetchone(), 30)
    assert wait_for(again, 2, timeout=30) == ["before", "after"]  # nothing lost, nothing twice
    assert caplog.text.count(f"was {how}: opening it again") == 1 and "no such table" not in caplog.text
    again.close()
