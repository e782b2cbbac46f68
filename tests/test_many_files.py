"""Many files: READY does not wait for the start-up scan, rescans read only what changed, and a failing
database slows scans down instead of being hammered by them. The timings at 100,000 files (READY,
idle CPU) are measured by `engram-ff bench chaos` (bench/many_files.py), not here."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time

import orjson

from engram_ff.bench.chaos import check_state
from engram_ff.ingest import watcher as watcher_module
from engram_ff.ingest.watcher import Watcher
from engram_ff.state.db import open_db
from tests.daemon_helpers import NotifySocket, environment, query, wait_for


def one_line_files(raw, n: int, tag: str = "f") -> None:
    raw.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (raw / f"{tag}{i:05d}.jsonl").write_bytes(
            orjson.dumps({"timestamp": "2026-11-27T10:00:00Z", "session_key": "s", "content": f"{tag}{i}"}) + b"\n"
        )


def test_ready_comes_before_a_backlog_of_files_is_read_and_status_follows_the_catch_up(tmp_path):
    watch, data = tmp_path / "engram", tmp_path / "data"
    one_line_files(watch / "raw", 3000)
    notify = NotifySocket(tmp_path / "notify.sock")
    daemon = subprocess.Popen(
        [sys.executable, "-m", "engram_ff.daemon.cli", "run", "--watch", str(watch), "--data", str(data)],
        env=environment(NOTIFY_SOCKET=notify.path, ENGRAM_FF_SCHEDULE="03:00"),
        stderr=subprocess.DEVNULL,
    )
    try:
        notify.wait("READY", "1")
        at_ready = query(data / "engram-ff.db", "SELECT count(*) FROM messages")[0][0]
        assert at_ready < 3000, "the backlog was read before READY=1"
        ready = next(i for i, m in enumerate(notify.messages) if m.get("READY") == "1")
        notify.wait("STATUS", after=ready + 1)
        assert any("catching up: " in m.get("STATUS", "") for m in notify.messages)
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=60) == 0  # stops mid-catch-up, at a committed file
        notify.close()
    state = check_state(watch, data)
    assert state.ok and state.stored >= at_ready


def _quiet_watcher(tmp_path, monkeypatch, **options) -> Watcher:
    """A watcher whose only reads are scans (inotify events dropped), back to back."""
    monkeypatch.setattr(watcher_module._Handler, "on_any_event", lambda self, event: None)
    monkeypatch.setattr(watcher_module, "RESCAN_CPU_SHARE", 1.0)
    w = Watcher(tmp_path / "state.db", tmp_path / "engram", debounce_s=0.02, rescan_s=0.05, **options)
    w.start()
    return w


def eventually(condition, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_rescans_read_only_the_files_that_changed(tmp_path, monkeypatch):
    raw = tmp_path / "engram" / "raw"
    one_line_files(raw, 200)
    w = _quiet_watcher(tmp_path, monkeypatch)
    try:
        eventually(lambda: w.stats.scans >= 1)
        reads = w.stats.files
        assert reads == 200
        scans = w.stats.scans
        eventually(lambda: w.stats.scans >= scans + 5)
        assert w.stats.files == reads  # five more scans, not one file opened
        with open(raw / "f00007.jsonl", "ab") as f:
            f.write(orjson.dumps({"timestamp": "2026-11-27T11:00:00Z", "session_key": "s", "content": "new"}) + b"\n")
        eventually(lambda: w.stats.messages == 201)
        scans = w.stats.scans
        eventually(lambda: w.stats.scans >= scans + 3)
        assert w.stats.files == reads + 1
    finally:
        w.stop()


def test_scans_wait_out_the_back_off_while_the_database_refuses(tmp_path, monkeypatch, caplog):
    """Before: every rescan tried every file again, whatever the back-off of the failed write."""
    monkeypatch.setattr(watcher_module, "RETRY_BASE_S", 0.3)
    db = open_db(tmp_path / "state.db")
    db.execute("CREATE TRIGGER refuse BEFORE INSERT ON messages BEGIN SELECT RAISE(ABORT, 'refused'); END")
    db.conn.commit()
    one_line_files(tmp_path / "engram" / "raw", 50)
    with caplog.at_level(logging.ERROR, logger="engram_ff.ingest.watcher"):
        w = _quiet_watcher(tmp_path, monkeypatch)
        try:
            time.sleep(2.0)  # scans are due every 0.05 s: forty of them, were it not for the back-off
            failures = caplog.text.count("not stored, retrying in")
            assert 1 <= failures <= 8, failures
            db.execute("DROP TRIGGER refuse")
            db.conn.commit()
            eventually(lambda: db.execute("SELECT count(*) FROM messages").fetchone()[0] == 50)
        finally:
            w.stop()
    wait_for(lambda: w.healthy() is False, timeout=1)  # stopped
    assert query(tmp_path / "state.db", "SELECT count(DISTINCT text) FROM messages")[0][0] == 50
