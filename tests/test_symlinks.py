"""Nothing outside the watched folder is read: symlinks out of it (to a file, to a folder, to `/`) are
skipped with one log line each, unless follow_outside_symlinks allows them; no walk goes round a loop."""

from __future__ import annotations

import logging
import os
import time

import orjson

from engram_ff.ingest.reader import Limits, catch_up
from engram_ff.ingest.watcher import Watcher
from engram_ff.state.db import open_db


def line(text: str) -> bytes:
    return orjson.dumps({"timestamp": "2026-11-27T10:00:00Z", "session_key": "s", "content": text}) + b"\n"


def setup(tmp_path):
    watch, outside = tmp_path / "engram", tmp_path / "elsewhere"
    (watch / "raw").mkdir(parents=True)
    outside.mkdir()
    (watch / "raw" / "2026-11-27.jsonl").write_bytes(line("inside"))
    (outside / "2026-11-01.jsonl").write_bytes(line("private"))
    return watch, outside, open_db(tmp_path / "state.db")


def everything(db) -> list:
    return [r[0] for r in db.execute("SELECT text FROM messages")] + [
        r[0] for r in db.execute("SELECT excerpt FROM quarantine")
    ]


def test_a_symlink_to_a_file_outside_such_as_etc_passwd_is_not_read(tmp_path, caplog):
    watch, _, db = setup(tmp_path)
    os.symlink("/etc/passwd", watch / "raw" / "x.jsonl")
    with caplog.at_level(logging.INFO, logger="engram_ff.ingest"):
        stats = catch_up(db, watch)
    assert everything(db) == ["inside"] and stats.errors == 0
    assert f"{watch / 'raw' / 'x.jsonl'}: skipped: a symlink to /etc/passwd, outside the watched folder" in caplog.text


def test_a_symlinked_folder_outside_is_not_walked_unless_allowed(tmp_path, caplog):
    watch, outside, db = setup(tmp_path)
    os.symlink(outside, watch / "raw" / "more")
    with caplog.at_level(logging.INFO, logger="engram_ff.ingest"):
        catch_up(db, watch)
    assert everything(db) == ["inside"]
    assert caplog.text.count("more: skipped: a symlink to") == 1
    catch_up(db, watch, limits=Limits(follow_outside=True))  # follow_outside_symlinks = true
    assert sorted(everything(db)) == ["inside", "private"]


def test_a_symlink_to_the_root_of_the_file_system_is_a_loop_and_never_walked(tmp_path, caplog, monkeypatch):
    """`ln -s / W/raw/root`: once 2.25 M foreign messages in 50 s. Even with outside symlinks allowed, a
    target that holds the watched folder is a loop: nothing below it is even listed."""
    watch, _, db = setup(tmp_path)
    os.symlink("/", watch / "raw" / "root")
    os.symlink("..", watch / "raw" / "up")
    listed = []
    scandir = os.scandir
    monkeypatch.setattr(os, "scandir", lambda path: listed.append(os.fspath(path)) or scandir(path))
    for follow in (False, True):
        with caplog.at_level(logging.INFO, logger="engram_ff.ingest"):
            stats = catch_up(db, watch, limits=Limits(follow_outside=follow))
        assert stats.files == 1 and everything(db) == ["inside"]
    assert sorted(set(listed)) == [str(watch), str(watch / "raw")]
    assert "root: skipped: a symlink loop (it leads to /, which holds the watched folder)" in caplog.text
    assert "up: skipped: a symlink loop" in caplog.text


def test_symlinks_inside_the_folder_are_followed_and_lines_stored_once(tmp_path):
    watch, _, db = setup(tmp_path)
    os.symlink(watch / "raw" / "2026-11-27.jsonl", watch / "raw" / "latest.jsonl")
    (watch / "archive").mkdir()
    (watch / "archive" / "2026-10-01.jsonl").write_bytes(line("archived"))
    os.symlink(watch / "archive", watch / "raw" / "old")
    stats = catch_up(db, watch)
    assert sorted(everything(db)) == ["archived", "inside"]
    assert stats.duplicates == 1  # the second name of the daily file; archive/, reached twice, is walked once


def test_the_running_watcher_logs_each_outside_symlink_once_and_reads_none(tmp_path, caplog):
    watch, outside, db = setup(tmp_path)
    os.symlink(outside / "2026-11-01.jsonl", watch / "raw" / "before-start.jsonl")
    w = Watcher(tmp_path / "state.db", watch, debounce_s=0.02, rescan_s=0.05)
    with caplog.at_level(logging.INFO, logger="engram_ff.ingest"):
        w.start()
        try:
            os.symlink(outside / "2026-11-01.jsonl", watch / "raw" / "after-start.jsonl")  # an event, then rescans
            deadline = time.monotonic() + 10
            while w.stats.scans < 5 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert w.stats.scans >= 5
        finally:
            w.stop()
    assert everything(db) == ["inside"]
    assert caplog.text.count("before-start.jsonl: skipped: a symlink to") == 1
    assert 1 <= caplog.text.count("after-start.jsonl: skipped:") <= 2  # the event's read, and the walk's
